/*
 * test_generate_cli.c - `zimage generate` as a user runs it: usage errors exit 2 with one
 * "zimage: error:" line; a run on the tiny checkpoint writes a PNG of the right size whose
 * `parameters` chunk is exactly the contract's text and whose pixels match the reference
 * run (p0 / p3 of the golden manifest, >= 40 dB); a drawn seed is printed and recorded.
 */
#include "backend.h"
#include "png.h"
#include "safetensors.h"
#include "zi_err.h"
#include "zi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char tmpdir[64];
static char model[2048];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/zi_gen_cli_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(model, sizeof model, "%s", zi_test_golden("tiny-zimage"));
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
        {"--prompt \"$(printf '\\377\\376')\"", "UTF-8"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "%s %s", base, bad[i].extra);
        expect_usage_error(args, bad[i].needle);
    }
    snprintf(args, sizeof args, "--model '%s/none' --prompt a --output '%s/x.png'", tmpdir, tmpdir);
    expect_usage_error(args, "no such folder");
    snprintf(args, sizeof args, "--model '%s' --prompt a --output '%s/no/dir/x.png'", model,
             tmpdir);
    expect_usage_error(args, "not writable");
    if (!zi_backend_cuda_available()) {
        snprintf(args, sizeof args, "%s --prompt a --backend cuda", base);
        expect_usage_error(args, "--backend cuda");
    }
}

/* Runs a generation, reads the PNG back and checks size, parameters and pixels. */
static void check_run(const char *extra, const char *file, const char *want_params,
                      const char *ref_vectors, char *stdout_buf, size_t cap)
{
    char args[8192], path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, file);
    snprintf(args, sizeof args, "--model '%s' --backend cpu --output '%s' %s", model, path, extra);
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' generate %s", binary(), args);
    int st = zi_test_run(cmd, stdout_buf, cap);
    if (st != 0)
        fail_msg("generate %s: exit %d", extra, st);
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    char *params = NULL;
    if (zi_png_read(path, &rgb, &w, &h, &params) != ZI_OK)
        fail_msg("read %s: %s", path, zi_errmsg());
    assert_int_equal(w, 64);
    assert_int_equal(h, 64);
    assert_non_null(params);
    if (want_params && strcmp(params, want_params) != 0)
        fail_msg("parameters:\n%s\nwant:\n%s", params, want_params);
    if (ref_vectors) {
        zi_st *vst = NULL;
        assert_int_equal(zi_st_open(zi_test_golden(ref_vectors), &vst), ZI_OK);
        const zi_st_tensor *ref = zi_st_find(vst, "image_u8");
        assert_non_null(ref);
        double psnr = zi_psnr_u8(rgb, ref->data, (size_t)w * (size_t)h * 3);
        printf("  %s: %.1f dB against %s\n", file, psnr, ref_vectors);
        assert_true(psnr >= 40.0);
        zi_st_close(vst);
    }
    free(rgb);
    free(params);
}

static void test_generate_p0(void **state)
{
    (void)state;
    char out[1024];
    check_run("--prompt 'a cat' --width 64 --height 64 --steps 8 --seed 42 --quiet", "p0.png",
              "a cat\nSteps: 8, Sampler: flow-euler, CFG scale: 0.0, Seed: 42, Size: 64x64, "
              "Model: tiny-zimage, Version: " ZI_VERSION,
              "vectors/p0_cat_64.safetensors", out, sizeof out);
    assert_string_equal(out, ""); /* seed given and --quiet: nothing on stdout */
}

static void test_generate_cfg_p3(void **state)
{
    (void)state;
    char out[1024];
    check_run("--prompt 'a red bicycle' --negative-prompt blurry --width 64 --height 64 "
              "--steps 3 --guidance 4 --seed 123 --rng cuda --quiet",
              "p3.png",
              "a red bicycle\nNegative prompt: blurry\nSteps: 3, Sampler: flow-euler, CFG scale: "
              "4.0, Seed: 123, Size: 64x64, Model: tiny-zimage, Version: " ZI_VERSION,
              "vectors/p3_cfg_64.safetensors", out, sizeof out);
}

static void test_generate_drawn_seed(void **state)
{
    (void)state;
    char out[1024];
    /* a negative prompt without guidance is not used, so it is not recorded */
    check_run("--prompt 'x' --negative-prompt blurry --width 64 --height 64 --steps 1 "
              "--rng cpu --quiet",
              "seed.png", NULL, NULL, out, sizeof out);
    unsigned long long seed = 0;
    assert_int_equal(sscanf(out, "seed: %llu", &seed), 1);
    char path[256], want[512];
    snprintf(path, sizeof path, "%s/seed.png", tmpdir);
    uint8_t *rgb = NULL;
    int w, h;
    char *params = NULL;
    assert_int_equal(zi_png_read(path, &rgb, &w, &h, &params), ZI_OK);
    snprintf(want, sizeof want,
             "x\nSteps: 1, Sampler: flow-euler, CFG scale: 0.0, Seed: %llu, Size: 64x64, "
             "Model: tiny-zimage, Version: %s",
             seed, ZI_VERSION);
    assert_string_equal(params, want);
    free(rgb);
    free(params);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_generate_p0),
        cmocka_unit_test(test_generate_cfg_p3),
        cmocka_unit_test(test_generate_drawn_seed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
