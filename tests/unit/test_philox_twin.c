/*
 * test_philox_twin.c - the code of the CUDA randn kernel (kernels/zi_philox.h, compiled
 * here for the host) against the host generator (pipeline/rng.c) and torch's numbers
 * (vectors/rng*.safetensors): thread layout, counters, key schedule and Box-Muller.
 * The kernel runs zi_philox_thread() once per thread of the canonical launch; this test
 * runs every thread in a loop. On the GPU only the fast intrinsics differ (~2e-6);
 * tests/gpu/test_kernels.c checks the device output itself.
 */
#include "zi_test.h"

#include "rng.h"
#include "safetensors.h"
#include "zi_err.h"
#include "zi_philox.h"

#include <math.h>
#include <stdlib.h>

/* The device twin, thread by thread, on the host. */
static void twin_randn(float *out, size_t n, uint64_t seed)
{
    size_t stride = (size_t)ZI_RNG_CUDA_BLOCK * zi_rng_cuda_grid(n);
    for (size_t idx = 0; idx < stride && idx < n; idx++)
        zi_philox_thread(out, n, seed, idx, stride);
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

static void test_matches_host_generator(void **state)
{
    (void)state;
    /* uncapped grid, a partial last block, the capped grid with several draws per thread */
    const size_t sizes[] = {1, 255, 1024, 16 * 48 * 48, 16 * 136 * 136, 16 * 256 * 256 + 3};
    const uint64_t seeds[] = {0, 42, 0x123456789abcdefull};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (size_t j = 0; j < sizeof seeds / sizeof seeds[0]; j++) {
            size_t n = sizes[i];
            float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
            assert_non_null(a);
            assert_non_null(b);
            for (size_t k = 0; k < n; k++)
                a[k] = NAN; /* every element must be written */
            twin_randn(a, n, seeds[j]);
            zi_randn_cuda(b, n, seeds[j]);
            double d = max_diff(a, b, n);
            if (!(d <= 1e-6))
                fail_msg("n %zu seed %llu: max diff %g", n, (unsigned long long)seeds[j], d);
            free(a);
            free(b);
        }
}

static void check_golden(const char *file, const char *name, uint64_t seed)
{
    zi_st *st = NULL;
    if (zi_st_open(zi_test_golden(file), &st) != ZI_OK)
        fail_msg("open %s: %s", file, zi_errmsg());
    size_t n;
    float *ref = zi_test_st_f32(st, name, &n);
    float *out = malloc(n * sizeof(float));
    assert_non_null(out);
    twin_randn(out, n, seed);
    double d = max_diff(out, ref, n);
    if (!(d <= 1e-5))
        fail_msg("%s: max diff %g from torch", name, d);
    free(ref);
    free(out);
    zi_st_close(st);
}

static void test_matches_torch(void **state)
{
    (void)state;
    check_golden("vectors/rng.safetensors", "cuda.seed42_1x16x8x8", 42);
    check_golden("vectors/rng.safetensors", "cuda.seed2026_1x16x48x48", 2026);
    check_golden("vectors/rng.safetensors", "cuda.seed0_1x16x128x128", 0);
    /* grid-capped: each thread loops */
    check_golden("vectors/rng_large.safetensors", "cuda.seed7_1x16x256x256", 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_host_generator),
        cmocka_unit_test(test_matches_torch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
