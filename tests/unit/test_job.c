/*
 * test_job.c - job message validation (worker/job.c) against every rule of the contract
 * (docs/contract.md, "Job message"): ids, prompts, sizes, steps, guidance, seeds,
 * deadlines, message size, UTF-8, and that the id is kept for bad jobs when readable.
 */
#include "job.h"
#include "zi_err.h"
#include "zi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const zi_job_limits lim = {
    .def_width = 1024,
    .def_height = 1024,
    .def_steps = 8,
    .def_guidance = 0.0,
    .min_side = 64,
    .max_side = 4096,
    .max_pixels = 4194304,
    .max_steps = 50,
    .max_message_bytes = 1048576,
};

static int parse(const char *text, zi_job *job)
{
    return zi_job_parse(text, strlen(text), &lim, job);
}

/* Expects a bad job with `code`, the id `id` ("" = none) and `needle` in the error. */
static void expect_bad(const char *text, const char *code, const char *id, const char *needle)
{
    zi_job job = {0};
    int rc = parse(text, &job);
    if (rc != ZI_EINVAL)
        fail_msg("expected a bad job for %s, got rc %d", text, rc);
    assert_string_equal(job.error_code, code);
    assert_string_equal(job.job_id, id);
    if (!strstr(job.error, needle))
        fail_msg("error '%s' does not name '%s' (input %s)", job.error, needle, text);
    assert_null(job.prompt);
    zi_job_clear(&job);
}

/* A good job whose prompt reads back as `want`. */
static void expect_prompt(const char *text, const char *want)
{
    zi_job job = {0};
    if (parse(text, &job) != ZI_OK)
        fail_msg("expected a good job for %s: %s", text, zi_errmsg());
    assert_string_equal(job.prompt, want);
    zi_job_clear(&job);
}

/* expect_bad() for {"job_id":ID,"prompt":"p",FIELD}: invalid_job, keeping the id. */
static void expect_bad_field(const char *id, const char *field, const char *needle)
{
    char text[256];
    snprintf(text, sizeof text, "{\"job_id\":\"%s\",\"prompt\":\"p\",%s}", id, field);
    expect_bad(text, "invalid_job", id, needle);
}

static void test_job_defaults(void **state)
{
    (void)state;
    zi_job job = {0};
    assert_int_equal(parse("{\"job_id\":\"a1\",\"prompt\":\"a cat\",\"extra\":{\"x\":[1]}}", &job),
                     ZI_OK);
    assert_string_equal(job.job_id, "a1");
    assert_string_equal(job.prompt, "a cat");
    assert_string_equal(job.negative_prompt, "");
    assert_int_equal(job.width, 1024);
    assert_int_equal(job.height, 1024);
    assert_int_equal(job.steps, 8);
    assert_true(job.guidance == 0.0);
    assert_int_equal(job.has_seed, 0);
    assert_true(job.deadline_ms == -1);
    assert_string_equal(job.error_code, "");
    zi_job_clear(&job);
}

static void test_job_all_fields(void **state)
{
    (void)state;
    zi_job job = {0};
    const char *t = "{\"job_id\":\"Z-9._x\",\"prompt\":\"\",\"negative_prompt\":\"blurry\","
                    "\"width\":512,\"height\":768,\"steps\":4,\"guidance_scale\":3.5,"
                    "\"seed\":9007199254740991,\"deadline_ms\":1700000000000}";
    assert_int_equal(parse(t, &job), ZI_OK);
    assert_string_equal(job.prompt, "");
    assert_string_equal(job.negative_prompt, "blurry");
    assert_int_equal(job.width, 512);
    assert_int_equal(job.height, 768);
    assert_int_equal(job.steps, 4);
    assert_true(job.guidance == 3.5);
    assert_int_equal(job.has_seed, 1);
    assert_true(job.seed == 9007199254740991ull);
    assert_true(job.deadline_ms == 1700000000000ll);
    zi_job_clear(&job);

    assert_int_equal(
        parse("{\"job_id\":\"s\",\"prompt\":\"p\",\"seed\":\"18446744073709551615\"}", &job),
        ZI_OK);
    assert_true(job.seed == 18446744073709551615ull);
    zi_job_clear(&job);
    /* null means absent for optional fields; 64.0 is an integer */
    assert_int_equal(
        parse("{\"job_id\":\"n\",\"prompt\":\"p\",\"seed\":null,\"width\":64.0}", &job), ZI_OK);
    assert_int_equal(job.has_seed, 0);
    assert_int_equal(job.width, 64);
    zi_job_clear(&job);
}

static void test_job_ids(void **state)
{
    (void)state;
    assert_true(zi_job_id_valid("a"));
    assert_true(zi_job_id_valid("0abc-DEF_1.png"));
    assert_false(zi_job_id_valid(""));
    assert_false(zi_job_id_valid("-a"));
    assert_false(zi_job_id_valid(".a"));
    assert_false(zi_job_id_valid("a/b"));
    assert_false(zi_job_id_valid("a..b"));
    assert_false(zi_job_id_valid("a b"));
    assert_false(zi_job_id_valid("caf\xc3\xa9"));
    char id[130];
    memset(id, 'x', 128);
    id[128] = '\0';
    assert_true(zi_job_id_valid(id));
    id[128] = 'x';
    id[129] = '\0';
    assert_false(zi_job_id_valid(id));

    expect_bad("{\"prompt\":\"p\"}", "invalid_job", "", "job_id: missing");
    expect_bad("{\"job_id\":5,\"prompt\":\"p\"}", "invalid_job", "", "job_id");
    expect_bad("{\"job_id\":\"a/b\",\"prompt\":\"p\"}", "invalid_job", "", "job_id");
    expect_bad("{\"job_id\":\"a..b\",\"prompt\":\"p\"}", "invalid_job", "", "job_id");
    expect_bad("{\"job_id\":\"../etc\",\"prompt\":\"p\"}", "invalid_job", "", "job_id");
    /* cJSON would cut "a\u0000/.." to "a": never take such an id */
    expect_bad("{\"job_id\":\"a\\u0000/..\",\"prompt\":\"p\"}", "invalid_job", "", "NUL");
    /* an escaped backslash followed by u0000 text is not a NUL */
    zi_job job = {0};
    assert_int_equal(parse("{\"job_id\":\"b\",\"prompt\":\"\\\\u0000\"}", &job), ZI_OK);
    assert_string_equal(job.prompt, "\\u0000");
    zi_job_clear(&job);
}

/* Characters cJSON accepts that would cut a string short: an escaped NUL in a member the job
 * reads is a bad job under the (readable) id, naming the member; in the id itself, or in a
 * member name, there is no id; in a member the job does not read it is ignored with the
 * member. A raw control byte is not JSON wherever it is (cJSON would take a raw NUL as the
 * end of the prompt, or as whitespace). */
static void test_job_cut_strings(void **state)
{
    (void)state;
    expect_bad("{\"job_id\":\"k1\",\"prompt\":\"x\\u0000y\"}", "invalid_job", "k1",
               "prompt: contains an escaped NUL");
    expect_bad("{\"prompt\":\"x\\u0000y\",\"job_id\":\"k2\"}", "invalid_job", "k2", "prompt");
    expect_bad("{\"job_id\":\"k3\",\"prompt\":\"p\",\"negative_prompt\":\"\\u0000\"}",
               "invalid_job", "k3", "negative_prompt");
    expect_bad("{\"job_id\":\"k4\\u0000\",\"prompt\":\"p\"}", "invalid_job", "", "job_id");
    /* a member name holding the NUL ("job_id\u0000x" reads as job_id) */
    expect_bad("{\"job_id\\u0000x\":\"k5\",\"prompt\":\"p\"}", "invalid_job", "", "NUL");
    /* an escaped member name cannot be told from job_id: no id */
    expect_bad("{\"job\\u005fid\":\"k6\\u0000\",\"prompt\":\"p\"}", "invalid_job", "", "NUL");
    expect_prompt("{\"job_id\":\"k7\",\"prompt\":\"p\",\"meta\":{\"a\":[\"\\u0000\"]},"
                  "\"note\":\"\\u0000\"}",
                  "p");
    zi_job job = {0};
    /* an ignored member's NUL does not hide a later one in the prompt */
    expect_bad("{\"job_id\":\"k8\",\"note\":\"\\u0000\",\"prompt\":\"a\\u0000\"}", "invalid_job",
               "k8", "prompt");

    /* raw control bytes: in the prompt (with the id), between members, in the id */
    static const struct {
        const char *text;
        size_t len;
        const char *id, *needle;
    } raw[] = {
#define ZI_T(s) s, sizeof s - 1
        {ZI_T("{\"job_id\":\"r1\",\"prompt\":\"cat\0 rest\"}"), "r1", "raw control byte 0x00"},
        {ZI_T("{\"job_id\":\"r2\",\"prompt\":\"a\x01"
              "b\"}"),
         "r2", "prompt: not valid JSON"},
        {ZI_T("{\"job_id\":\"r3\",\x1f\"prompt\":\"p\"}"), "", "message: not valid JSON"},
        {ZI_T("{\"job_id\":\"r4\0x\",\"prompt\":\"p\"}"), "", "raw control byte 0x00"},
#undef ZI_T
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        assert_int_equal(zi_job_parse(raw[i].text, raw[i].len, &lim, &job), ZI_EINVAL);
        assert_string_equal(job.error_code, "invalid_job");
        assert_string_equal(job.job_id, raw[i].id);
        if (!strstr(job.error, raw[i].needle))
            fail_msg("case %zu: error '%s' does not name '%s'", i, job.error, raw[i].needle);
        zi_job_clear(&job);
    }
    /* raw tab, LF and CR stay accepted (whitespace, and inside strings as cJSON reads them) */
    const char ok[] = "{\"job_id\":\"t1\",\r\n\t\"prompt\":\"a\tb\"}";
    assert_int_equal(zi_job_parse(ok, sizeof ok - 1, &lim, &job), ZI_OK);
    assert_string_equal(job.prompt, "a\tb");
    zi_job_clear(&job);
}

static void test_job_not_json(void **state)
{
    (void)state;
    expect_bad("", "invalid_job", "", "empty");
    expect_bad("not json", "invalid_job", "", "not valid JSON");
    expect_bad("[1,2]", "invalid_job", "", "not an object");
    expect_bad("{\"job_id\":\"a\",\"prompt\":\"p\"} trailing", "invalid_job", "", "extra data");
    /* the first byte right after the object is checked too, not only the ones past it */
    expect_bad("{\"job_id\":\"a\",\"prompt\":\"p\"}x", "invalid_job", "", "extra data at byte 27");
    expect_bad("{\"job_id\":\"a\",\"prompt\":\"p\"", "invalid_job", "", "not valid JSON");
    zi_job job = {0};
    assert_int_equal(parse("  {\"job_id\":\"a\",\"prompt\":\"p\"}\n ", &job), ZI_OK);
    zi_job_clear(&job);
}

static void test_job_prompt(void **state)
{
    (void)state;
    expect_bad("{\"job_id\":\"k1\"}", "invalid_job", "k1", "prompt: missing");
    expect_bad("{\"job_id\":\"k1\",\"prompt\":null}", "invalid_job", "k1", "prompt: missing");
    expect_bad("{\"job_id\":\"k2\",\"prompt\":7}", "invalid_job", "k2", "prompt: must be a string");
    expect_bad("{\"job_id\":\"k3\",\"prompt\":\"ok\",\"negative_prompt\":[]}", "invalid_job", "k3",
               "negative_prompt");
    /* invalid UTF-8: a lone continuation byte, an overlong, a surrogate, a truncated seq */
    expect_bad("{\"job_id\":\"u1\",\"prompt\":\"a\x80\"}", "invalid_job", "u1", "UTF-8");
    expect_bad("{\"job_id\":\"u2\",\"prompt\":\"\xc0\xaf\"}", "invalid_job", "u2", "UTF-8");
    expect_bad("{\"job_id\":\"u3\",\"prompt\":\"\xed\xa0\x80\"}", "invalid_job", "u3", "UTF-8");
    expect_bad("{\"job_id\":\"u4\",\"prompt\":\"\xe2\x82\"}", "invalid_job", "u4", "UTF-8");
    /* invalid UTF-8 in an unknown field still makes the message bad */
    expect_bad_field("u5", "\"x\":\"\xff\"", "UTF-8");
    expect_prompt("{\"job_id\":\"u6\",\"prompt\":\"caf\xc3\xa9 \xf0\x9f\x90\x88 "
                  "\\u00e9\\ud83d\\udc08\"}",
                  "caf\xc3\xa9 \xf0\x9f\x90\x88 \xc3\xa9\xf0\x9f\x90\x88");
    zi_job job = {0};

    /* exactly 16384 bytes passes, one more fails */
    size_t cap = ZI_JOB_PROMPT_MAX + 64;
    char *t = malloc(cap);
    char *p = malloc(ZI_JOB_PROMPT_MAX + 2);
    assert_non_null(t);
    assert_non_null(p);
    memset(p, 'a', ZI_JOB_PROMPT_MAX);
    p[ZI_JOB_PROMPT_MAX] = '\0';
    snprintf(t, cap, "{\"job_id\":\"L\",\"prompt\":\"%s\"}", p);
    assert_int_equal(parse(t, &job), ZI_OK);
    assert_int_equal(strlen(job.prompt), ZI_JOB_PROMPT_MAX);
    zi_job_clear(&job);
    p[ZI_JOB_PROMPT_MAX] = 'a';
    p[ZI_JOB_PROMPT_MAX + 1] = '\0';
    snprintf(t, cap, "{\"job_id\":\"L\",\"prompt\":\"%s\"}", p);
    expect_bad(t, "invalid_job", "L", "16385 bytes");
    free(t);
    free(p);
}

static void test_job_sizes(void **state)
{
    (void)state;
    expect_bad_field("w", "\"width\":17", "width");
    expect_bad_field("w", "\"width\":48", "width");
    expect_bad_field("w", "\"height\":4112", "height");
    /* multiples of 8 that are not multiples of 16 */
    expect_bad_field("w", "\"width\":72", "width: 72 is not a multiple of 16");
    expect_bad_field("w", "\"height\":520", "height: 520 is not a multiple of 16");
    expect_bad_field("w", "\"width\":64.5", "width");
    expect_bad_field("w", "\"width\":\"64\"", "width");
    expect_bad_field("w", "\"width\":1e300", "width");
    /* an integer past int range still gets the rule, not "must be an integer" */
    expect_bad_field("w", "\"width\":4294967296",
                     "width: must be an integer multiple of 16 in [64, 4096]");
    expect_bad_field("w", "\"width\":4096,\"height\":2048", "pixels");
    zi_job job = {0};
    assert_int_equal(
        parse("{\"job_id\":\"w\",\"prompt\":\"p\",\"width\":4096,\"height\":1024}", &job), ZI_OK);
    assert_int_equal(job.width * job.height, 4194304);
    zi_job_clear(&job);
}

static void test_job_steps_guidance(void **state)
{
    (void)state;
    expect_bad_field("s", "\"steps\":0", "steps");
    expect_bad_field("s", "\"steps\":51", "steps");
    expect_bad_field("s", "\"steps\":2.5", "steps");
    expect_bad_field("g", "\"guidance_scale\":-0.1", "guidance_scale");
    expect_bad_field("g", "\"guidance_scale\":20.5", "guidance_scale");
    expect_bad_field("g", "\"guidance_scale\":true", "guidance_scale");
    zi_job job = {0};
    assert_int_equal(
        parse("{\"job_id\":\"g\",\"prompt\":\"p\",\"steps\":50,\"guidance_scale\":20}", &job),
        ZI_OK);
    assert_int_equal(job.steps, 50);
    assert_true(job.guidance == 20.0);
    zi_job_clear(&job);
}

static void test_job_seed_deadline(void **state)
{
    (void)state;
    expect_bad_field("s", "\"seed\":-1", "seed");
    expect_bad_field("s", "\"seed\":9007199254740992", "seed");
    expect_bad_field("s", "\"seed\":1.5", "seed");
    expect_bad_field("s", "\"seed\":\"18446744073709551616\"", "seed");
    expect_bad_field("s", "\"seed\":\"-5\"", "seed");
    expect_bad_field("s", "\"seed\":\"\"", "seed");
    expect_bad_field("s", "\"seed\":\"12a\"", "seed");
    expect_bad_field("s", "\"seed\":\"000000018446744073709551616\"", "2^64-1");
    expect_bad_field("s", "\"seed\":\"118446744073709551615\"", "2^64-1");
    expect_bad_field("d", "\"deadline_ms\":-3", "deadline_ms");
    expect_bad_field("d", "\"deadline_ms\":\"soon\"", "deadline_ms");
    expect_bad_field("d", "\"deadline_ms\":9007199254740992", "[0, 9007199254740991]");
    zi_job job = {0};
    assert_int_equal(
        parse("{\"job_id\":\"s\",\"prompt\":\"p\",\"seed\":0,\"deadline_ms\":0}", &job), ZI_OK);
    assert_int_equal(job.has_seed, 1);
    assert_true(job.seed == 0);
    assert_true(job.deadline_ms == 0);
    zi_job_clear(&job);
    /* leading zeros do not change the value: still a decimal string up to 2^64-1 */
    assert_int_equal(
        parse("{\"job_id\":\"s\",\"prompt\":\"p\",\"seed\":\"0000018446744073709551615\"}", &job),
        ZI_OK);
    assert_true(job.seed == UINT64_MAX);
    zi_job_clear(&job);
    assert_int_equal(parse("{\"job_id\":\"s\",\"prompt\":\"p\",\"seed\":\"00\"}", &job), ZI_OK);
    assert_true(job.has_seed && job.seed == 0);
    zi_job_clear(&job);
}

static void test_job_too_large(void **state)
{
    (void)state;
    zi_job_limits small = lim;
    small.max_message_bytes = 100;
    char t[256];
    char pad[120];
    memset(pad, 'x', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    snprintf(t, sizeof t, "{\"job_id\":\"big\",\"prompt\":\"p\",\"pad\":\"%s\"}", pad);
    zi_job job = {0};
    assert_int_equal(zi_job_parse(t, strlen(t), &small, &job), ZI_EINVAL);
    assert_string_equal(job.error_code, "too_large");
    assert_string_equal(job.job_id, "big");
    assert_non_null(strstr(job.error, "more than the 100 allowed"));
    zi_job_clear(&job);
    /* too large and not JSON: no id, still too_large */
    memset(t, 'z', 200);
    assert_int_equal(zi_job_parse(t, 200, &small, &job), ZI_EINVAL);
    assert_string_equal(job.job_id, "");
    assert_string_equal(job.error_code, "too_large");
    zi_job_clear(&job);
    /* too large whatever else is wrong: a bad id, a missing prompt (the id kept) */
    snprintf(t, sizeof t, "{\"job_id\":\"a/b\",\"prompt\":\"p\",\"pad\":\"%s\"}", pad);
    assert_int_equal(zi_job_parse(t, strlen(t), &small, &job), ZI_EINVAL);
    assert_string_equal(job.error_code, "too_large");
    assert_string_equal(job.job_id, "");
    zi_job_clear(&job);
    snprintf(t, sizeof t, "{\"job_id\":\"big2\",\"pad\":\"%s\"}", pad);
    assert_int_equal(zi_job_parse(t, strlen(t), &small, &job), ZI_EINVAL);
    assert_string_equal(job.error_code, "too_large");
    assert_string_equal(job.job_id, "big2");
    zi_job_clear(&job);
    /* exactly max_message_bytes is allowed, one byte more is too_large */
    snprintf(t, sizeof t, "{\"job_id\":\"edge\",\"prompt\":\"p\",\"pad\":\"%.*s\"}", 61, pad);
    assert_int_equal(strlen(t), 100);
    assert_int_equal(zi_job_parse(t, strlen(t), &small, &job), ZI_OK);
    assert_string_equal(job.job_id, "edge");
    zi_job_clear(&job);
    snprintf(t, sizeof t, "{\"job_id\":\"edge\",\"prompt\":\"p\",\"pad\":\"%.*s\"}", 62, pad);
    assert_int_equal(strlen(t), 101);
    assert_int_equal(zi_job_parse(t, strlen(t), &small, &job), ZI_EINVAL);
    assert_string_equal(job.error_code, "too_large");
    assert_string_equal(job.job_id, "edge");
    zi_job_clear(&job);
    /* past what any worker parses: the message names that limit, not a larger setting */
    zi_job_limits huge = lim;
    huge.max_message_bytes = 1000000000;
    assert_int_equal(zi_job_parse(t, (size_t)ZI_JOB_PARSE_MAX + 1, &huge, &job), ZI_EINVAL);
    assert_string_equal(job.error_code, "too_large");
    char want[64];
    snprintf(want, sizeof want, "more than the %u allowed", (unsigned)ZI_JOB_PARSE_MAX);
    assert_non_null(strstr(job.error, want));
    zi_job_clear(&job);
}

static void test_job_roundtrip(void **state)
{
    (void)state;
    zi_job job = {0};
    assert_int_equal(parse("{\"job_id\":\"r\",\"prompt\":\"line1\\nline2 \\\"q\\\"\","
                           "\"negative_prompt\":\"n\",\"width\":256,\"height\":128,\"steps\":3,"
                           "\"guidance_scale\":1.25,\"seed\":\"18446744073709551615\","
                           "\"deadline_ms\":99}",
                           &job),
                     ZI_OK);
    char *text = NULL;
    assert_int_equal(zi_job_to_json(&job, &text), ZI_OK);
    zi_job back = {0};
    assert_int_equal(zi_job_parse(text, strlen(text), &lim, &back), ZI_OK);
    assert_string_equal(back.job_id, "r");
    assert_string_equal(back.prompt, "line1\nline2 \"q\"");
    assert_string_equal(back.negative_prompt, "n");
    assert_int_equal(back.width, 256);
    assert_int_equal(back.height, 128);
    assert_int_equal(back.steps, 3);
    assert_true(back.guidance == 1.25);
    assert_true(back.seed == 18446744073709551615ull);
    assert_true(back.deadline_ms == 99);
    free(text);
    zi_job_clear(&job);
    zi_job_clear(&back);

    char id[33];
    char id2[33];
    assert_int_equal(zi_job_new_id(id), ZI_OK);
    assert_int_equal(zi_job_new_id(id2), ZI_OK);
    assert_int_equal(strlen(id), 32);
    assert_true(zi_job_id_valid(id));
    assert_string_not_equal(id, id2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_defaults),
        cmocka_unit_test(test_job_all_fields),
        cmocka_unit_test(test_job_ids),
        cmocka_unit_test(test_job_not_json),
        cmocka_unit_test(test_job_prompt),
        cmocka_unit_test(test_job_sizes),
        cmocka_unit_test(test_job_steps_guidance),
        cmocka_unit_test(test_job_seed_deadline),
        cmocka_unit_test(test_job_too_large),
        cmocka_unit_test(test_job_cut_strings),
        cmocka_unit_test(test_job_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
