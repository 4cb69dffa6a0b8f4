/*
 * test_generate_cli.c - `zimage generate` as a user runs it: usage errors exit 2 with one
 * "zimage: error:" line; a run on the tiny checkpoint writes a PNG of the right size whose
 * `parameters` chunk is exactly the contract's text and whose pixels match the reference
 * run (the first case of the golden manifest without guidance and the first with it,
 * >= 40 dB); a drawn seed is printed and recorded; --count N writes N images named by the
 * --output template, with seeds S..S+N-1 (mod 2^64), each the image of its seed alone;
 * --prompts-file: every prompt's images, named by {p}, each the image of its prompt alone,
 * and a bad line, name template or file stops it before anything is written.
 */
#include "backend.h"
#include "png.h"
#include "safetensors.h"
#include "zi_err.h"
#include "zi_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];
static char model[2048];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/zi_gen_cli_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(model, sizeof model, "%s", zi_test_model(""));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return zi_test_run(cmd, NULL, 0) == 0 ? 0 : -1;
}

static const char *binary(void)
{
    const char *b = getenv("ZI_BINARY");
    return b && *b ? b : ZI_BINARY;
}

/* Runs `zimage generate ARGS` with stderr folded into out; returns the exit status. */
static int gen(const char *args, char *out, size_t cap)
{
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' generate %s 2>&1", binary(), args);
    return zi_test_run(cmd, out, cap);
}

static void expect_usage_error(const char *args, const char *needle)
{
    char out[4096];
    int st = gen(args, out, sizeof out);
    if (st != 2)
        fail_msg("'%s': exit %d, want 2 (output: %s)", args, st, out);
    if (strncmp(out, "zimage: error:", 14) != 0 || !strstr(out, needle))
        fail_msg("'%s': output '%s' lacks '%s'", args, out, needle);
    /* one line */
    const char *nl = strchr(out, '\n');
    if (!nl || nl[1] != '\0')
        fail_msg("'%s': error is not one line: '%s'", args, out);
}

static void test_help(void **state)
{
    (void)state;
    char out[4096];
    assert_int_equal(gen("--help", out, sizeof out), 0);
    assert_non_null(strstr(out, "usage: zimage generate"));
    assert_non_null(strstr(out, "--negative-prompt"));
}

static void test_usage_errors(void **state)
{
    (void)state;
    char base[4096], args[8192];
    snprintf(base, sizeof base, "--model '%s' --output '%s/x.png'", model, tmpdir);
    expect_usage_error("--output /tmp/x.png --prompt a", "--model");
    snprintf(args, sizeof args, "--model '%s' --prompt a", model);
    expect_usage_error(args, "--output");
    expect_usage_error(base, "--prompt");
    struct {
        const char *extra, *needle;
    } bad[] = {
        {"--prompt a --width 72", "--width"},
        {"--prompt a --width 48", "--width"},
        {"--prompt a --height 4112", "--height"},
        {"--prompt a --height -64", "--height"},
        {"--prompt a --width 4096 --height 2048", "4194304"},
        {"--prompt a --steps 0", "--steps"},
        {"--prompt a --steps 51", "--steps"},
        {"--prompt a --steps 3x", "--steps"},
        {"--prompt a --guidance -1", "--guidance"},
        {"--prompt a --guidance nan", "--guidance"},
        {"--prompt a --seed -5", "--seed"},
        {"--prompt a --seed 18446744073709551616", "--seed"},
        {"--prompt a --backend tpu", "tpu"},
        {"--prompt a --rng gpu", "gpu"},
        {"--prompt a --frobnicate 1", "--frobnicate"},
        {"--prompt a --steps", "needs a value"},
        {"--prompt a --count 0", "--count"},
        {"--prompt a --count 1001", "--count"},
        {"--prompt a --count 2x", "--count"},
        {"--prompt \"$(printf '\\377\\376')\"", "UTF-8"},
        {"--prompt \"$(printf '\\340\\200\\257')\"", "UTF-8"}, /* '/' overlong in 3 bytes */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "%s %s", base, bad[i].extra);
        expect_usage_error(args, bad[i].needle);
    }
    snprintf(args, sizeof args, "--model '%s/none' --prompt a --output '%s/x.png'", tmpdir, tmpdir);
    expect_usage_error(args, "no such folder");
    /* 2048 x 2048 is exactly the pixel limit: allowed, so the missing model is the error */
    snprintf(args, sizeof args,
             "--model '%s/none' --prompt a --width 2048 --height 2048 --output '%s/x.png'", tmpdir,
             tmpdir);
    expect_usage_error(args, "no such folder");
    snprintf(args, sizeof args, "--model '%s' --prompt a --output '%s/no/dir/x.png'", model,
             tmpdir);
    expect_usage_error(args, "not writable");
    if (!zi_backend_cuda_available()) {
        char reason[256]; /* the error names why (here: the same reason as in this process) */
        snprintf(reason, sizeof reason, "(%s)", zi_errmsg());
        snprintf(args, sizeof args, "%s --prompt a --backend cuda", base);
        expect_usage_error(args, "--backend cuda");
        expect_usage_error(args, reason);
    }
}

/* `s` as one single-quoted shell word ('\'' for each quote) in out[cap]. */
static const char *shell_quote(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    out[n++] = '\'';
    for (; *s && n + 5 < cap; s++) {
        if (*s == '\'') {
            memcpy(out + n, "'\\''", 4);
            n += 4;
        } else {
            out[n++] = *s;
        }
    }
    assert_true(*s == '\0'); /* it fitted */
    out[n++] = '\'';
    out[n] = '\0';
    return out;
}

/* The checkpoint folder's base name: what the PNG records as "Model". */
static const char *model_name(void)
{
    const char *b = strrchr(model, '/');
    return b ? b + 1 : model;
}

/* Runs a generation, reads the PNG back and checks size, parameters and pixels (against
 * the case file `ref` when not NULL, >= 40 dB). */
static void check_run(const char *extra, const char *file, int want_w, int want_h,
                      const char *want_params, const cJSON *ref, char *stdout_buf, size_t cap)
{
    char args[40960], path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, file);
    snprintf(args, sizeof args, "--model '%s' --backend cpu --output '%s' %s", model, path, extra);
    char cmd[49152];
    snprintf(cmd, sizeof cmd, "'%s' generate %s", binary(), args);
    int st = zi_test_run(cmd, stdout_buf, cap);
    if (st != 0)
        fail_msg("generate %s: exit %d", extra, st);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    char *params = NULL;
    if (zi_png_read(path, &rgb, &w, &h, &params) != ZI_OK)
        fail_msg("read %s: %s", path, zi_errmsg());
    assert_int_equal(w, want_w);
    assert_int_equal(h, want_h);
    assert_non_null(params);
    if (want_params && strcmp(params, want_params) != 0)
        fail_msg("parameters:\n%s\nwant:\n%s", params, want_params);
    if (ref) {
        zi_st *vst = zi_test_case_open(ref);
        const zi_st_tensor *img = zi_st_find(vst, "image_u8");
        assert_non_null(img);
        assert_int_equal(img->nbytes, (size_t)w * (size_t)h * 3);
        double psnr = zi_psnr_u8(rgb, img->data, (size_t)w * (size_t)h * 3);
        printf("  %s: %.1f dB against %s\n", file, psnr, zi_test_case_str(ref, "file"));
        assert_true(psnr >= 40.0);
        zi_st_close(vst);
    }
    free(rgb);
    free(params);
}

/* A manifest case through the command line: the first case without guidance and the first
 * with it (a negative prompt, two DiT calls per step). The expected parameters text is
 * spelled out here from the contract (docs/contract.md, "S3 object"), not built by png.c. */
static void run_case(const cJSON *manifest, const cJSON *cs)
{
    const char *prompt = zi_test_case_str(cs, "prompt");
    const int w = (int)zi_test_case_num(cs, "width"), h = (int)zi_test_case_num(cs, "height");
    const int steps = (int)zi_test_case_num(cs, "steps");
    const double g = zi_test_case_num(cs, "guidance");
    const unsigned long long seed = (unsigned long long)zi_test_case_seed(cs);
    const char *rng = zi_test_case_rng(manifest, cs) == ZI_RNG_CPU ? "cpu" : "cuda";
    const cJSON *neg = cJSON_GetObjectItemCaseSensitive(cs, "negative");
    const char *negative = g > 0 && cJSON_IsString(neg) ? neg->valuestring : "";
    char qp[20480], qn[20480], extra[45056], gs[32], file[300];
    snprintf(gs, sizeof gs, g == floor(g) ? "%.1f" : "%g", g);
    snprintf(extra, sizeof extra,
             "--prompt %s --negative-prompt %s --width %d --height %d --steps %d --guidance %s "
             "--seed %llu --rng %s --quiet",
             shell_quote(prompt, qp, sizeof qp), shell_quote(negative, qn, sizeof qn), w, h, steps,
             gs, seed, rng);
    static char want[45056];
    int n = snprintf(want, sizeof want, "%s", prompt);
    if (*negative)
        n += snprintf(want + n, sizeof want - (size_t)n, "\nNegative prompt: %s", negative);
    snprintf(want + n, sizeof want - (size_t)n,
             "\nSteps: %d, Sampler: flow-euler, CFG scale: %s, Seed: %llu, Size: %dx%d, "
             "Model: %s, Version: %s",
             steps, gs, seed, w, h, model_name(), ZI_VERSION);
    snprintf(file, sizeof file, "%s.png", zi_test_case_str(cs, "name"));
    char out[1024];
    check_run(extra, file, w, h, want, cs, out, sizeof out);
    assert_string_equal(out, ""); /* seed given and --quiet: nothing on stdout */
}

static void test_generate_cases(void **state)
{
    (void)state;
    cJSON *manifest = zi_test_manifest();
    const cJSON *cs;
    int done[2] = {0, 0}; /* without / with guidance */
    cJSON_ArrayForEach(cs, zi_test_manifest_cases(manifest))
    {
        int k = zi_test_case_branches(cs) - 1;
        if (!done[k]) {
            run_case(manifest, cs);
            done[k] = 1;
        }
    }
    assert_true(done[0] || done[1]);
    cJSON_Delete(manifest);
}

static void test_generate_drawn_seed(void **state)
{
    (void)state;
    char out[1024];
    /* a negative prompt without guidance is not used, so it is not recorded */
    check_run("--prompt 'x' --negative-prompt blurry --width 64 --height 64 --steps 1 "
              "--rng cpu --quiet",
              "seed.png", 64, 64, NULL, NULL, out, sizeof out);
    unsigned long long seed = 0;
    assert_int_equal(sscanf(out, "seed: %llu", &seed), 1);
    char path[256], want[4096];
    snprintf(path, sizeof path, "%s/seed.png", tmpdir);
    uint8_t *rgb = NULL;
    int w, h;
    char *params = NULL;
    assert_int_equal(zi_png_read(path, &rgb, &w, &h, &params), ZI_OK);
    snprintf(want, sizeof want,
             "x\nSteps: 1, Sampler: flow-euler, CFG scale: 0.0, Seed: %llu, Size: 64x64, "
             "Model: %s, Version: %s",
             seed, model_name(), ZI_VERSION);
    assert_string_equal(params, want);
    free(rgb);
    free(params);
}

/* Reads `name` in tmpdir: its pixels (w*h*3) and the seed its parameters record. */
static uint8_t *read_seeded(const char *name, unsigned long long *seed)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    char *params = NULL;
    if (zi_png_read(path, &rgb, &w, &h, &params) != ZI_OK)
        fail_msg("read %s: %s", path, zi_errmsg());
    assert_int_equal(w, 64);
    assert_int_equal(h, 64);
    const char *sd = strstr(params, "Seed: ");
    assert_non_null(sd);
    assert_int_equal(sscanf(sd, "Seed: %llu", seed), 1);
    free(params);
    return rgb;
}

/* Runs `generate --backend cpu --output tmpdir/tmpl EXTRA`; stdout in out. */
static void run_many(const char *extra, const char *tmpl, char *out, size_t cap)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' generate --model '%s' --backend cpu --output '%s/%s' %s",
             binary(), model, tmpdir, tmpl, extra);
    int st = zi_test_run(cmd, out, cap);
    if (st != 0)
        fail_msg("generate %s: exit %d", extra, st);
}

static void test_generate_count(void **state)
{
    (void)state;
    const char *common = "--prompt 'a red cube' --width 64 --height 64 --steps 1 --rng cpu --quiet";
    char extra[512], out[1024];
    /* no placeholder: "-{n}" before .png, zero-padded to the width of 10 */
    snprintf(extra, sizeof extra, "%s --count 10 --seed 7", common);
    run_many(extra, "many.png", out, sizeof out);
    for (int i = 1; i <= 10; i++) {
        char name[64];
        snprintf(name, sizeof name, "many-%02d.png", i);
        unsigned long long seed = 0;
        free(read_seeded(name, &seed));
        assert_int_equal(seed, 7 + i - 1);
    }
    char probe[512];
    snprintf(probe, sizeof probe, "%s/many.png", tmpdir);
    assert_int_not_equal(access(probe, F_OK), 0); /* the template itself is not written */

    /* placeholders; the seeds wrap past 2^64-1; each image is its seed's image alone */
    snprintf(extra, sizeof extra, "%s --count 3 --seed 18446744073709551614", common);
    run_many(extra, "w-{seed}-{n}.png", out, sizeof out);
    snprintf(extra, sizeof extra, "%s --seed 0", common);
    check_run(extra, "alone0.png", 64, 64, NULL, NULL, out, sizeof out);
    const char *names[3] = {"w-18446744073709551614-1.png", "w-18446744073709551615-2.png",
                            "w-0-3.png"};
    const unsigned long long want[3] = {18446744073709551614ull, 18446744073709551615ull, 0};
    uint8_t *img[3];
    for (int i = 0; i < 3; i++) {
        unsigned long long seed = 1;
        img[i] = read_seeded(names[i], &seed);
        assert_true(seed == want[i]);
    }
    unsigned long long s0 = 1;
    uint8_t *alone = read_seeded("alone0.png", &s0);
    assert_true(s0 == 0);
    assert_memory_equal(img[2], alone, 64 * 64 * 3);
    assert_memory_not_equal(img[0], img[1], 64 * 64 * 3); /* other seed, other image */
    for (int i = 0; i < 3; i++)
        free(img[i]);
    free(alone);

    /* {seed} alone names the images apart: no "-{n}" is added */
    snprintf(extra, sizeof extra, "%s --count 2 --seed 5", common);
    run_many(extra, "s-{seed}.png", out, sizeof out);
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "s-%d.png", 5 + i);
        unsigned long long seed = 0;
        free(read_seeded(name, &seed));
        assert_true(seed == (unsigned long long)(5 + i));
    }
    snprintf(probe, sizeof probe, "%s/s-5-1.png", tmpdir);
    assert_int_not_equal(access(probe, F_OK), 0);

    /* a drawn seed: printed once, the images use it and the next ones */
    snprintf(extra, sizeof extra, "--prompt x --width 64 --height 64 --steps 1 --count 2 --quiet");
    run_many(extra, "d{n}.png", out, sizeof out);
    unsigned long long drawn = 0, s1 = 0, s2 = 0;
    assert_int_equal(sscanf(out, "seed: %llu", &drawn), 1);
    free(read_seeded("d1.png", &s1));
    free(read_seeded("d2.png", &s2));
    assert_true(s1 == drawn && s2 == drawn + 1);
}

/* Writes `text` to tmpdir/name; returns the path (static). */
static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

/* The prompt a PNG's parameters record (the text before "\nSteps: "), in out[cap]. */
static void recorded_prompt(const char *name, char *out, size_t cap)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    char *params = NULL;
    assert_int_equal(zi_png_read(path, &rgb, &w, &h, &params), ZI_OK);
    const char *end = strstr(params, "\nSteps: ");
    assert_non_null(end);
    snprintf(out, cap, "%.*s", (int)(end - params), params);
    free(rgb);
    free(params);
}

static void test_generate_prompts_file(void **state)
{
    (void)state;
    /* three prompts: plain, one with a newline and one in Chinese (JSON escapes) */
    const char *file = write_file("prompts.jsonl", "\"a cat\"\n\"a dog\\nwith a hat\"\n"
                                                   "\"\\u732b\"\n");
    const char *prompts[3] = {"a cat", "a dog\nwith a hat", "\xe7\x8c\xab"};
    char extra[1024], out[1024];
    snprintf(extra, sizeof extra,
             "--prompts-file '%s' --width 64 --height 64 --steps 1 --rng cpu --count 2 "
             "--seed 5 --quiet",
             file);
    run_many(extra, "pf.png", out, sizeof out);
    assert_string_equal(out, "");
    for (int k = 1; k <= 3; k++) {
        for (int i = 1; i <= 2; i++) {
            char name[64], got[256];
            snprintf(name, sizeof name, "pf-%d-%d.png", k, i);
            unsigned long long seed = 0;
            free(read_seeded(name, &seed));
            assert_true(seed == (unsigned long long)(5 + i - 1));
            recorded_prompt(name, got, sizeof got);
            assert_string_equal(got, prompts[k - 1]);
        }
    }
    /* prompt 2, image 2 is that prompt alone with seed 6; prompt 1 differs from it */
    char q[256];
    snprintf(extra, sizeof extra,
             "--prompt %s --width 64 --height 64 --steps 1 --rng cpu --seed 6 --quiet",
             shell_quote(prompts[1], q, sizeof q));
    run_many(extra, "alone-dog.png", out, sizeof out);
    unsigned long long s = 0;
    uint8_t *alone = read_seeded("alone-dog.png", &s);
    uint8_t *batch = read_seeded("pf-2-2.png", &s);
    uint8_t *other = read_seeded("pf-1-2.png", &s);
    assert_memory_equal(alone, batch, 64 * 64 * 3);
    assert_memory_not_equal(other, batch, 64 * 64 * 3);
    free(alone);
    free(batch);
    free(other);

    /* usage errors, before anything is written */
    char base[2200], args[8192];
    snprintf(base, sizeof base, "--model '%s' --width 64 --height 64 --steps 1", model);
    snprintf(args, sizeof args, "%s --prompts-file '%s' --prompt a --output '%s/e.png'", base, file,
             tmpdir);
    expect_usage_error(args, "one of --prompt and --prompts-file");
    snprintf(args, sizeof args, "%s --prompts-file '%s' --output '%s/e-{n}.png'", base, file,
             tmpdir);
    expect_usage_error(args, "has no {p}");
    snprintf(args, sizeof args, "%s --prompt a --count 2 --output '%s/e-{p}.png'", base, tmpdir);
    expect_usage_error(args, "has no {n} or {seed}");
    /* every image's folder is checked, not only the first one's */
    char dir1[512], want[600];
    snprintf(dir1, sizeof dir1, "%s/d1", tmpdir);
    assert_int_equal(mkdir(dir1, 0755), 0);
    snprintf(args, sizeof args, "%s --prompt a --count 2 --output '%s/d{n}/e.png'", base, tmpdir);
    snprintf(want, sizeof want, "'%s/d2/e.png': its folder does not exist", tmpdir);
    expect_usage_error(args, want);
    /* "-{n}" goes before an upper-case ".PNG" too (the missing folder names the first image) */
    snprintf(args, sizeof args, "%s --prompt a --count 2 --output '%s/none/OUT.PNG'", base, tmpdir);
    snprintf(want, sizeof want, "'%s/none/OUT-1.PNG': its folder does not exist", tmpdir);
    expect_usage_error(args, want);
    /* ten prompts: {p} is zero-padded to two digits (q01..q09 exist, q10 does not) */
    static char many[12 * 10001 + 1];
    size_t mn = 0;
    for (int k = 1; k <= 10; k++) {
        mn += (size_t)snprintf(many + mn, sizeof many - mn, "\"p%d\"\n", k);
        if (k < 10) {
            snprintf(dir1, sizeof dir1, "%s/q%02d", tmpdir, k);
            assert_int_equal(mkdir(dir1, 0755), 0);
        }
    }
    const char *ten = write_file("ten.jsonl", many);
    snprintf(args, sizeof args, "%s --prompts-file '%s' --output '%s/q{p}/e.png'", base, ten,
             tmpdir);
    snprintf(want, sizeof want, "'%s/q10/e.png': its folder does not exist", tmpdir);
    expect_usage_error(args, want);
    /* at most 10000 prompts: 10000 lines are read (then the missing folder stops the run),
     * the 10001st is refused, before the model loads */
    for (int k = 11; k <= 10000; k++)
        mn += (size_t)snprintf(many + mn, sizeof many - mn, "\"p%d\"\n", k);
    const char *full = write_file("full.jsonl", many);
    snprintf(args, sizeof args, "%s --prompts-file '%s' --output '%s/none/{p}.png'", base, full,
             tmpdir);
    expect_usage_error(args, "its folder does not exist");
    snprintf(many + mn, sizeof many - mn, "\"p10001\"\n");
    const char *over = write_file("over.jsonl", many);
    snprintf(args, sizeof args, "%s --prompts-file '%s' --output '%s/none/{p}.png'", base, over,
             tmpdir);
    expect_usage_error(args, "over.jsonl:10001: more than 10000 prompts");
    const char *bad = write_file("bad.jsonl", "\"fine\"\n\"\xff\xfe\"\n");
    snprintf(args, sizeof args, "%s --prompts-file '%s' --output '%s/e.png'", base, bad, tmpdir);
    expect_usage_error(args, "bad.jsonl:2: the prompt must be valid UTF-8");
    bad = write_file("bad2.jsonl", "\"fine\"\nnot json\n");
    snprintf(args, sizeof args, "%s --prompts-file '%s' --output '%s/e.png'", base, bad, tmpdir);
    expect_usage_error(args, "bad2.jsonl:2: not one JSON string");
    bad = write_file("empty.jsonl", "");
    snprintf(args, sizeof args, "%s --prompts-file '%s' --output '%s/e.png'", base, bad, tmpdir);
    expect_usage_error(args, "no prompts in it");
    char probe[512];
    snprintf(probe, sizeof probe, "%s/e-1.png", tmpdir);
    assert_int_not_equal(access(probe, F_OK), 0);
    snprintf(probe, sizeof probe, "%s/e.png", tmpdir);
    assert_int_not_equal(access(probe, F_OK), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help),           cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_generate_cases), cmocka_unit_test(test_generate_drawn_seed),
        cmocka_unit_test(test_generate_count), cmocka_unit_test(test_generate_prompts_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
