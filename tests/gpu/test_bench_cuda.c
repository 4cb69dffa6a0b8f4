/*
 * test_bench_cuda.c - `zimage bench --backend cuda --random-weights` end to end (label gpu)
 * on the tiny config: the code path tests/gpu/run.sh measures the real shapes with, at a
 * size the CPU emulator of CUDA runs in CI. Every JSON key of the issue is there with a
 * sane value (component times, image times, peaks, the two device probes), the profile
 * has its three parts, and no weight is kept on the host when the model fits; with every
 * weight on the host the prefetch counters and the no-prefetch baseline are there.
 */
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char out[1 << 17];

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        fail_msg("bench JSON: %s is missing or not a number", key);
    return v->valuedouble;
}

static const char *bench_bin(void)
{
    const char *bin = getenv("ZI_BINARY");
    return bin && *bin ? bin : ZI_BINARY;
}

/* `zimage bench --backend cuda --random-weights --config <tiny> ARGS` with the variables
 * ENV (may be ""), parsed; the process must succeed and print one JSON object. */
static cJSON *bench_json(const char *env, const char *args)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "%s '%s' bench --backend cuda --random-weights --config '%s' %s 2>/dev/null", env,
             bench_bin(), zi_test_model(""), args);
    assert_int_equal(zi_test_run(cmd, out, sizeof out), 0);
    cJSON *j = cJSON_Parse(out);
    if (!j)
        fail_msg("bench printed no JSON: %.200s", out);
    return j;
}

static void test_bench_random_weights(void **state)
{
    (void)state;
    cJSON *j = bench_json("", "--size 64 --steps 2 --small-size 32 --small-steps 1 --runs 1 "
                              "--tokens 8 --gemm-size 256 --profile");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "backend")->valuestring, "cuda");
    const cJSON *gpu = cJSON_GetObjectItemCaseSensitive(j, "gpu");
    assert_true(cJSON_IsString(gpu) && gpu->valuestring[0]);
    const char *positive[] = {"text_encode_ms",   "dit_forward_64_ms",    "dit_forward_32_ms",
                              "vae_decode_64_ms", "image_64_2steps_s",    "image_32_1steps_s",
                              "step_64_ms",       "peak_allocated_bytes", "weights_bytes",
                              "gemm_bf16_tflops", "h2d_pinned_gbps"};
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
        if (!(num(j, positive[i]) > 0))
            fail_msg("bench JSON: %s = %g, expected > 0", positive[i], num(j, positive[i]));
    assert_true(num(j, "peak_reserved_bytes") >= num(j, "peak_allocated_bytes"));
    assert_true(num(j, "peak_allocated_bytes") >= num(j, "weights_bytes"));
    assert_true(num(j, "host_weights_bytes") == 0); /* the tiny model fits */
    const cJSON *prof = cJSON_GetObjectItemCaseSensitive(j, "profile");
    const char *parts[] = {"text_encode", "dit_forward_64", "vae_decode_64"};
    for (int i = 0; i < 3; i++) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(prof, parts[i]);
        if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) < 3)
            fail_msg("bench JSON: profile.%s missing or short", parts[i]);
    }
    cJSON_Delete(j);
}

/* Every weight kept on the host (ZI_CUDA_WEIGHT_BUDGET_MB=0) and prefetched (threshold
 * lowered to 4 KiB for the tiny model): the bench says so and times the small image again
 * without prefetch, the baseline of prefetch_speedup. */
static void test_bench_weights_on_host(void **state)
{
    (void)state;
    cJSON *j = bench_json("ZI_CUDA_WEIGHT_BUDGET_MB=0 ZI_CUDA_PREFETCH_MIN_KB=4",
                          "--size 32 --steps 1 --small-size 32 --small-steps 1 --runs 1 "
                          "--tokens 8 --gemm-size 64");
    assert_true(num(j, "host_weights_bytes") > 0);
    assert_true(num(j, "weights_bytes") == 0);
    assert_true(num(j, "weight_prefetch_hits") > 0);
    assert_true(num(j, "weight_prefetch_misses") > 0);
    assert_true(num(j, "image_32_1steps_no_prefetch_s") > 0);
    assert_true(num(j, "prefetch_speedup") > 0);
    cJSON_Delete(j);
    /* --size equals --small-size here: each figure is printed once */
    const char *first = strstr(out, "\"dit_forward_32_ms\"");
    assert_non_null(first);
    assert_null(strstr(first + 1, "\"dit_forward_32_ms\""));
    /* a bad threshold is refused when the backend is created */
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "ZI_CUDA_PREFETCH_MIN_KB=lots '%s' bench --backend cuda --random-weights "
             "--config '%s' --runs 1 2>&1",
             bench_bin(), zi_test_model(""));
    assert_int_not_equal(zi_test_run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "ZI_CUDA_PREFETCH_MIN_KB"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bench_random_weights),
        cmocka_unit_test(test_bench_weights_on_host),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
