/*
 * test_bench_cli.c - `zimage bench` on the CPU backend with the tiny checkpoint (the
 * code path the GPU benchmark uses, at a size CI can afford): usage errors, the
 * checkpoint mode with a same-run baseline, and the random-weights mode with the tiny
 * config. The JSON on stdout is parsed and its figures checked for sense.
 */
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char out[1 << 16];

static const char *bin(void)
{
    const char *b = getenv("ZI_BINARY");
    return b && *b ? b : ZI_BINARY;
}

/* Runs `zimage bench ARGS` (stderr dropped); returns the exit status. */
static int bench(const char *args)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' bench %s 2>/dev/null", bin(), args);
    return zi_test_run(cmd, out, sizeof out);
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("JSON key %s is missing or not a number", key);
    return v->valuedouble;
}

/* Runs `zimage bench` with ARGS_FMT's %s replaced by the tiny checkpoint's directory;
 * expects exit 0 and a JSON report of `mode`, returned for the caller to check and delete. */
static cJSON *bench_json(const char *args_fmt, const char *mode)
{
    char args[4096];
    snprintf(args, sizeof args, args_fmt, zi_test_model(""));
    assert_int_equal(bench(args), 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "mode")->valuestring, mode);
    return j;
}

static void test_usage(void **state)
{
    (void)state;
    assert_int_equal(bench("--help"), 0);
    assert_non_null(strstr(out, "--random-weights"));
    assert_int_equal(bench(""), 2);
    assert_int_equal(bench("--backend tpu --random-weights"), 2);
    assert_int_equal(bench("--model x --random-weights"), 2);
    assert_int_equal(bench("--random-weights --size 100"), 2); /* not a multiple of 16 */
    assert_int_equal(bench("--random-weights --runs 0"), 2);
    assert_int_equal(bench("--random-weights --bogus 1"), 2);
}

/* Both PNG settings timed on the last image: a 64x64 RGB8 PNG is at least its
 * signature, header and end chunks, and at most the raw pixels plus zlib's overhead. */
static void check_png_figures(const cJSON *j)
{
    assert_true(num(j, "png_encode_ms") > 0);
    assert_true(num(j, "png_small_encode_ms") > 0);
    assert_true(num(j, "png_fast_speedup") > 0);
    assert_true(num(j, "png_threads") >= 1 && num(j, "png_threads") <= 8);
    assert_true(num(j, "png_serial_encode_ms") > 0);
    assert_true(num(j, "png_threads_speedup") > 0);
    const char *keys[] = {"png_bytes", "png_small_bytes"};
    for (int i = 0; i < 2; i++) {
        double b = num(j, keys[i]);
        assert_true(b > 57 && b < 64 * (64 * 3 + 1) + 1024);
    }
}

static void test_checkpoint_cpu(void **state)
{
    (void)state;
    cJSON *j = bench_json("--backend cpu --model '%s' --steps 2 --runs 1 --width 64 --height 64 "
                          "--baseline cpu",
                          "checkpoint");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "backend")->valuestring, "cpu");
    double e2e = num(j, "end_to_end_s"), step = num(j, "step_ms");
    assert_true(e2e > 0 && step > 0);
    assert_true(step * 2 <= e2e * 1e3 + 1e-6); /* two steps fit in one generation */
    assert_true(num(j, "weights_bytes") > 0);
    assert_true(num(j, "peak_allocated_bytes") >= num(j, "weights_bytes"));
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(j, "baseline");
    assert_true(cJSON_IsObject(base));
    assert_true(num(base, "end_to_end_s") > 0);
    double sp = num(j, "speedup_end_to_end");
    assert_true(sp > 0.05 && sp < 20); /* same backend both times: near 1 */
    check_png_figures(j);
    cJSON_Delete(j);
}

static void test_random_weights_cpu(void **state)
{
    (void)state;
    cJSON *j = bench_json("--backend cpu --random-weights --config '%s' --size 64 --steps 2 "
                          "--small-size 32 --small-steps 1 --runs 1 --tokens 12",
                          "random-weights");
    assert_true(num(j, "dit_forward_64_ms") > 0);
    assert_true(num(j, "dit_forward_32_ms") > 0);
    assert_true(num(j, "image_64_2steps_s") > 0);
    assert_true(num(j, "image_32_1steps_s") > 0);
    assert_true(num(j, "peak_allocated_bytes") > 0);
    assert_true(num(j, "peak_reserved_bytes") >= num(j, "peak_allocated_bytes"));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "gemm_bf16_tflops")));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(j, "text_encode_ms"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(j, "vae_decode_64_ms"));
    assert_null(cJSON_GetObjectItemCaseSensitive(j, "profile")); /* only with --profile */
    check_png_figures(j);
    cJSON_Delete(j);
}

/* --profile: per-op breakdowns of the three components, largest first, shares summing to 1,
 * with the ops each component must use. */
static void test_profile_cpu(void **state)
{
    (void)state;
    assert_int_equal(bench("--profile --model x"), 2); /* random-weights runs only */
    cJSON *j = bench_json("--backend cpu --random-weights --config '%s' --size 64 --steps 1 "
                          "--small-size 32 --small-steps 1 --runs 1 --tokens 12 --profile",
                          "random-weights");
    const cJSON *prof = cJSON_GetObjectItemCaseSensitive(j, "profile");
    assert_true(cJSON_IsObject(prof));
    const char *parts[3] = {"text_encode", "dit_forward_64", "vae_decode_64"};
    const char *must[3] = {"attention", "linear", "conv2d"};
    for (int i = 0; i < 3; i++) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(prof, parts[i]);
        assert_true(cJSON_IsArray(arr));
        assert_true(cJSON_GetArraySize(arr) >= 3);
        double share = 0, prev = INFINITY;
        int found = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, arr)
        {
            double ms = num(e, "ms");
            assert_true(ms >= 0 && ms <= prev); /* sorted, largest first */
            prev = ms;
            assert_true(num(e, "calls") >= 1);
            share += num(e, "share");
            found |= strcmp(cJSON_GetObjectItemCaseSensitive(e, "op")->valuestring, must[i]) == 0;
        }
        assert_true(fabs(share - 1.0) < 1e-6);
        if (!found)
            fail_msg("%s: no %s in its profile", parts[i], must[i]);
    }
    cJSON_Delete(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_checkpoint_cpu),
        cmocka_unit_test(test_random_weights_cpu),
        cmocka_unit_test(test_profile_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
