/*
 * test_log.c - the worker log: JSON lines that always parse (escapes, invalid UTF-8, cut
 * lines), the text format, level filtering, the per-thread job id, and whole lines from
 * concurrent threads.
 */
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "zi_err.h"

/* Parses one JSON line (must end in exactly one '\n'). */
static cJSON *zi_parse_line(const char *line, size_t n)
{
    assert_true(n > 0);
    assert_int_equal(line[n - 1], '\n');
    assert_null(memchr(line, '\n', n - 1));
    cJSON *j = cJSON_ParseWithLength(line, n);
    if (!j)
        fail_msg("not JSON: %s", line);
    return j;
}

static const char *zi_get(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void test_json_line(void **state)
{
    (void)state;
    char buf[ZI_LOG_LINE_MAX];
    zi_log_field f[2] = {{"step", "3"}, {"s3_key", "a\"b"}};
    size_t n = zi_log_format_line(buf, sizeof buf, ZI_LOG_JSON, 1700000000123LL, ZI_LOG_WARN, "w-1",
                                  "job-9", f, 2, "hello \"x\"\n\ttab \x01 \xc3\xa9");
    cJSON *j = zi_parse_line(buf, n);
    assert_string_equal(zi_get(j, "ts"), "2023-11-14T22:13:20.123Z");
    assert_string_equal(zi_get(j, "level"), "warn");
    assert_string_equal(zi_get(j, "worker"), "w-1");
    assert_string_equal(zi_get(j, "job_id"), "job-9");
    assert_string_equal(zi_get(j, "msg"), "hello \"x\"\n\ttab \x01 \xc3\xa9");
    assert_string_equal(zi_get(j, "step"), "3");
    assert_string_equal(zi_get(j, "s3_key"), "a\"b");
    cJSON_Delete(j);

    /* no job: no job_id key at all */
    n = zi_log_format_line(buf, sizeof buf, ZI_LOG_JSON, 0, ZI_LOG_INFO, "w", NULL, NULL, 0, "m");
    j = zi_parse_line(buf, n);
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "job_id"));
    assert_string_equal(zi_get(j, "msg"), "m");
    cJSON_Delete(j);

    /* invalid UTF-8 becomes U+FFFD so the line stays valid JSON */
    n = zi_log_format_line(buf, sizeof buf, ZI_LOG_JSON, 0, ZI_LOG_INFO, "w", "\xff", NULL, 0,
                           "bad \xc3 \xed\xa0\x80 end");
    j = zi_parse_line(buf, n);
    assert_string_equal(zi_get(j, "msg"),
                        "bad \xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end");
    cJSON_Delete(j);
}

static void test_long_lines_are_cut_but_valid(void **state)
{
    (void)state;
    size_t big = 3 * ZI_LOG_LINE_MAX;
    char *msg = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        msg[i] = (i % 7 == 0) ? '"' : 'a'; /* escapes near the cut */
    msg[big] = '\0';
    char *longid = malloc(1000);
    memset(longid, 'j', 999);
    longid[999] = '\0';
    for (size_t cap = 64; cap <= ZI_LOG_LINE_MAX; cap = cap * 2 + 1) {
        char *buf = malloc(cap);
        size_t n =
            zi_log_format_line(buf, cap, ZI_LOG_JSON, 0, ZI_LOG_ERROR, "w", longid, NULL, 0, msg);
        assert_true(n < cap);
        assert_int_equal(strlen(buf), n);
        cJSON *j = zi_parse_line(buf, n);
        const char *id = zi_get(j, "job_id");
        if (id)
            assert_true(strlen(id) <= 128); /* ids are cut to 128 bytes */
        cJSON_Delete(j);
        free(buf);
    }
    free(msg);
    free(longid);
}

/* A backslash is escaped (a raw one would start a bogus escape such as \b). */
static void test_json_backslash(void **state)
{
    (void)state;
    char buf[512];
    size_t n = zi_log_format_line(buf, sizeof buf, ZI_LOG_JSON, 0, ZI_LOG_INFO, "w", NULL, NULL, 0,
                                  "C:\\bin\\x \\\\");
    assert_non_null(strstr(buf, "\"msg\":\"C:\\\\bin\\\\x \\\\\\\\\"}"));
    cJSON *j = zi_parse_line(buf, n);
    assert_string_equal(zi_get(j, "msg"), "C:\\bin\\x \\\\");
    cJSON_Delete(j);
}

/* Every control byte and DEL is escaped (cJSON would accept them raw, so look at the bytes
 * too) and round-trips. */
static void test_json_control_bytes(void **state)
{
    (void)state;
    char msg[40];
    size_t k = 0;
    for (int c = 0x01; c <= 0x1F; c++)
        msg[k++] = (char)c;
    msg[k++] = 0x7F;
    msg[k] = '\0';
    char buf[512];
    size_t n =
        zi_log_format_line(buf, sizeof buf, ZI_LOG_JSON, 0, ZI_LOG_INFO, "w", NULL, NULL, 0, msg);
    for (size_t i = 0; i + 1 < n; i++)
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7F)
            fail_msg("raw byte 0x%02x at %zu: %s", (unsigned char)buf[i], i, buf);
    assert_non_null(strstr(buf, "\\u0001"));
    assert_non_null(strstr(buf, "\\u001f"));
    assert_non_null(strstr(buf, "\\u007f"));
    cJSON *j = zi_parse_line(buf, n);
    assert_string_equal(zi_get(j, "msg"), msg);
    cJSON_Delete(j);
}

/* Overlong encodings (C0 80 is a disguised NUL) are invalid UTF-8: each byte that starts no
 * valid sequence becomes one U+FFFD, continuation bytes included. */
static void test_json_overlong_utf8(void **state)
{
    (void)state;
    char buf[512];
    size_t n = zi_log_format_line(buf, sizeof buf, ZI_LOG_JSON, 0, ZI_LOG_INFO, "w", NULL, NULL, 0,
                                  "a\xc0\x80"
                                  "b\xe0\x80\x80"
                                  "c\xf0\x80\x80\x80"
                                  "d");
    cJSON *j = zi_parse_line(buf, n);
    assert_string_equal(zi_get(j, "msg"), "a\xef\xbf\xbd\xef\xbf\xbd"
                                          "b\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                                          "c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                                          "d");
    cJSON_Delete(j);
}

/* A message of 6-byte \u00XX escapes cut at every buffer size: an escape that does not fit
 * whole is dropped, so the line still closes with "} within cap (exact-size heap buffers so
 * ASan sees a write past the end). */
static void test_cut_inside_u_escapes(void **state)
{
    (void)state;
    char msg[600];
    memset(msg, 0x01, sizeof msg - 1);
    msg[sizeof msg - 1] = '\0';
    for (size_t cap = 64; cap <= 200; cap++) {
        char *buf = malloc(cap);
        size_t n =
            zi_log_format_line(buf, cap, ZI_LOG_JSON, 0, ZI_LOG_INFO, NULL, NULL, NULL, 0, msg);
        assert_true(n < cap);
        assert_int_equal(strlen(buf), n);
        assert_true(n >= 3);
        assert_memory_equal(buf + n - 3, "\"}\n", 3);
        cJSON *j = zi_parse_line(buf, n);
        const char *m = zi_get(j, "msg");
        assert_non_null(m);
        for (const char *q = m; *q; q++)
            assert_int_equal(*q, 0x01);
        cJSON_Delete(j);
        free(buf);
    }
}

static void test_text_line(void **state)
{
    (void)state;
    char buf[512];
    zi_log_field f[1] = {{"k", "v"}};
    size_t n = zi_log_format_line(buf, sizeof buf, ZI_LOG_TEXT, 1700000000000LL, ZI_LOG_ERROR,
                                  "w-1", "j1", f, 1, "two\nlines");
    assert_string_equal(buf, "2023-11-14T22:13:20.000Z ERROR worker=w-1 job_id=j1 two lines k=v\n");
    assert_int_equal(n, strlen(buf));

    /* every control byte and DEL becomes a space: a raw \r would let a message overwrite
     * the line on a terminal, a raw \v or \f break it */
    char msg[40];
    size_t k = 0;
    msg[k++] = '[';
    for (int c = 0x01; c <= 0x1F; c++)
        msg[k++] = (char)c;
    msg[k++] = 0x7F;
    msg[k++] = ']';
    msg[k] = '\0';
    n = zi_log_format_line(buf, sizeof buf, ZI_LOG_TEXT, 0, ZI_LOG_INFO, NULL, NULL, NULL, 0, msg);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z INFO  ["
                             "                                "
                             "]\n");
    assert_int_equal(n, strlen(buf));
}

static void test_parse_names(void **state)
{
    (void)state;
    zi_log_format f;
    zi_log_level l;
    assert_int_equal(zi_log_format_parse("json", &f), ZI_OK);
    assert_int_equal(f, ZI_LOG_JSON);
    assert_int_equal(zi_log_format_parse("text", &f), ZI_OK);
    assert_int_equal(f, ZI_LOG_TEXT);
    assert_int_equal(zi_log_format_parse("xml", &f), ZI_EINVAL);
    assert_int_equal(zi_log_level_parse("warn", &l), ZI_OK);
    assert_int_equal(l, ZI_LOG_WARN);
    assert_int_equal(zi_log_level_parse("verbose", &l), ZI_EINVAL);
}

static char *zi_slurp(FILE *f, size_t *len)
{
    fflush(f);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static void test_levels_and_thread_job(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    zi_log_setup(ZI_LOG_JSON, ZI_LOG_INFO, "wk", f);
    zi_log_debug("hidden %d", 1);
    zi_log_set_job("job-a");
    zi_log_info("visible %d", 2);
    zi_log_set_job(NULL);
    zi_log_fields(ZI_LOG_ERROR, "job-b", NULL, 0, "explicit");
    zi_log_warn_cb(NULL, "from config");
    zi_log_setup(ZI_LOG_TEXT, ZI_LOG_INFO, NULL, NULL);
    size_t len;
    char *all = zi_slurp(f, &len);
    fclose(f);
    assert_null(strstr(all, "hidden"));
    char *l1 = all;
    char *l2 = strchr(l1, '\n') + 1;
    char *l3 = strchr(l2, '\n') + 1;
    assert_non_null(strstr(l1, "\"msg\":\"visible 2\""));
    assert_non_null(strstr(l1, "\"job_id\":\"job-a\""));
    assert_non_null(strstr(l1, "\"worker\":\"wk\""));
    assert_non_null(strstr(l2, "\"job_id\":\"job-b\""));
    assert_non_null(strstr(l2, "\"level\":\"error\""));
    assert_null(strstr(l3, "job_id"));
    assert_non_null(strstr(l3, "\"level\":\"warn\""));
    free(all);
}

static void *zi_log_thread(void *p)
{
    char id[32];
    snprintf(id, sizeof id, "job-%ld", (long)(intptr_t)p);
    zi_log_set_job(id);
    for (int i = 0; i < 500; i++)
        zi_log_info("line %d of %s with some padding to make it longer than a few bytes", i, id);
    return NULL;
}

static void test_threads_whole_lines(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    zi_log_setup(ZI_LOG_JSON, ZI_LOG_DEBUG, "wk", f);
    pthread_t t[4];
    for (intptr_t i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, zi_log_thread, (void *)i), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    zi_log_setup(ZI_LOG_TEXT, ZI_LOG_INFO, NULL, NULL);
    size_t len;
    char *all = zi_slurp(f, &len);
    fclose(f);
    int lines = 0;
    for (char *p = all; *p;) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        cJSON *j = zi_parse_line(p, (size_t)(nl - p + 1));
        const char *jid = zi_get(j, "job_id");
        const char *msg = zi_get(j, "msg");
        assert_non_null(jid);
        assert_non_null(strstr(msg, jid)); /* the thread's own job id on its own lines */
        cJSON_Delete(j);
        lines++;
        p = nl + 1;
    }
    assert_int_equal(lines, 2000);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_long_lines_are_cut_but_valid),
        cmocka_unit_test(test_json_backslash),
        cmocka_unit_test(test_json_control_bytes),
        cmocka_unit_test(test_json_overlong_utf8),
        cmocka_unit_test(test_cut_inside_u_escapes),
        cmocka_unit_test(test_text_line),
        cmocka_unit_test(test_parse_names),
        cmocka_unit_test(test_levels_and_thread_job),
        cmocka_unit_test(test_threads_whole_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
