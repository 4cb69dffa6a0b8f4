/*
 * test_rng.c - torch-compatible randn against the golden vectors.
 *
 * Every cuda.* and cpu.* tensor of vectors/rng.safetensors (both generators must be there)
 * and every tensor of vectors/rng_large.safetensors (at least one a grid-capped CUDA size)
 * must match within 1e-5 absolute (golden README, "What matches means"); how many seeds and
 * shapes a set holds is its own business. Plus known answers for the building blocks:
 * Philox4x32-10 (Random123 KAT), mt19937 (10000th draw of the default seed) and torch's
 * scalar CPU path (n < 16) and its vectorised path at exactly n = 16, whose values for
 * seeds 0 and 42 are widely published.
 */
#include "zi_test.h"

#include "rng.h"
#include "safetensors.h"
#include "zi_err.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZI_RNG_TOL 1e-5

/* Parses "cuda.seed{S}_..." / "cpu.seed{S}_..." into kind and seed; 0 when not an rng name. */
static int parse_name(const char *name, zi_rng_kind *kind, uint64_t *seed)
{
    const char *p;
    if (strncmp(name, "cuda.seed", 9) == 0) {
        *kind = ZI_RNG_CUDA;
        p = name + 9;
    } else if (strncmp(name, "cpu.seed", 8) == 0) {
        *kind = ZI_RNG_CPU;
        p = name + 8;
    } else {
        return 0;
    }
    char *end = NULL;
    *seed = strtoull(p, &end, 10);
    return end != p && *end == '_';
}

/* Checks every rng tensor of one file; returns how many were checked. *capped (when not
 * NULL) is set to how many of them are CUDA sizes past the grid cap. */
static int check_file(const char *rel, int want_cpu, int *capped)
{
    zi_st *st = NULL;
    int rc = zi_st_open(zi_test_golden(rel), &st);
    if (rc != ZI_OK)
        fail_msg("open %s: %s", rel, zi_errmsg());
    int checked = 0, saw_cpu = 0, saw_cuda = 0, n_capped = 0;
    double worst = 0;
    for (size_t i = 0; i < zi_st_count(st); i++) {
        const zi_st_tensor *t = zi_st_at(st, i);
        zi_rng_kind kind;
        uint64_t seed;
        if (!parse_name(t->name, &kind, &seed))
            continue;
        size_t n;
        float *ref = zi_test_tensor_f32(t, &n);
        float *out = malloc(n * sizeof(float));
        assert_non_null(out);
        assert_int_equal(zi_randn(out, n, seed, kind), ZI_OK);
        double d = zi_max_abs_diff(out, ref, n);
        printf("  %-32s n=%-8zu max abs diff %.3g\n", t->name, n, d);
        if (d > ZI_RNG_TOL)
            fail_msg("%s: max abs diff %g > %g", t->name, d, ZI_RNG_TOL);
        if (d > worst)
            worst = d;
        saw_cpu += kind == ZI_RNG_CPU;
        saw_cuda += kind == ZI_RNG_CUDA;
        /* past 1056 blocks x 256 threads each thread loops: the capped grid */
        n_capped += kind == ZI_RNG_CUDA && n > (size_t)1056 * 256;
        checked++;
        free(ref);
        free(out);
    }
    printf("%s: %d tensors, worst max abs diff %.3g\n", rel, checked, worst);
    if (want_cpu)
        assert_true(saw_cpu > 0);
    assert_true(saw_cuda > 0); /* the latents' generator */
    if (capped)
        *capped = n_capped;
    zi_st_close(st);
    return checked;
}

static void test_rng_vectors(void **state)
{
    (void)state;
    /* seeds x shapes x 2 generators (3 x 3 x 2 = 18 in the public set) */
    assert_true(check_file("vectors/rng.safetensors", 1, NULL) >= 2);
}

static void test_rng_large_vectors(void **state)
{
    (void)state;
    int capped = 0;
    assert_true(check_file("vectors/rng_large.safetensors", 0, &capped) >= 1);
    assert_true(capped >= 1); /* the file exists for the grid-capped sizes */
}

/* Random123 known-answer vectors for philox4x32_10. */
static void test_philox_kat(void **state)
{
    (void)state;
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        uint32_t out[4];
        zi_philox4x32_10(out, kat[i].ctr, kat[i].key);
        for (int k = 0; k < 4; k++)
            assert_int_equal(out[k], kat[i].out[k]);
    }
}

static void test_mt19937_kat(void **state)
{
    (void)state;
    zi_mt19937 mt;
    zi_mt19937_seed(&mt, 5489);
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++)
        v = zi_mt19937_next(&mt);
    /* C++11 [rand.predef]: the 10000th output of a default-constructed mt19937 */
    assert_int_equal(v, 4123659995u);
}

/* torch.manual_seed(S); torch.randn(2, 3): the scalar path (6 < 16 numbers). */
static void test_cpu_scalar_path(void **state)
{
    (void)state;
    static const float seed0[6] = {1.5410f, -0.2934f, -2.1788f, 0.5684f, -1.0845f, -1.3986f};
    static const float seed42[6] = {0.3367f, 0.1288f, 0.2345f, 0.2303f, -1.1229f, -0.1863f};
    float out[6];
    assert_int_equal(zi_randn(out, 6, 0, ZI_RNG_CPU), ZI_OK);
    assert_true(zi_max_abs_diff(out, seed0, 6) < 1e-4);
    assert_int_equal(zi_randn(out, 6, 42, ZI_RNG_CPU), ZI_OK);
    assert_true(zi_max_abs_diff(out, seed42, 6) < 1e-4);
}

/* torch.manual_seed(S); torch.randn(4, 4): exactly 16 numbers already take the vectorised
 * path (one Box-Muller block of 16 float uniforms); the values are as widely published as
 * the scalar ones, and are also the first 16 of the longer cpu.* references of the seed. */
static void test_cpu_vector_path_16(void **state)
{
    (void)state;
    static const float seed0[16] = {-1.1258f, -1.1524f, -0.2506f, -0.4339f, 0.8487f, 0.6920f,
                                    -0.3160f, -2.1152f, 0.3223f,  -1.2633f, 0.3500f, 0.3081f,
                                    0.1198f,  1.2377f,  1.1168f,  -0.2473f};
    static const float seed42[16] = {1.9269f,  1.4873f,  0.9007f,  -2.1055f, 0.6784f,  -1.2345f,
                                     -0.0431f, -1.6047f, -0.7521f, 1.6487f,  -0.3925f, -1.4036f,
                                     -0.7279f, -0.5594f, -0.7688f, 0.7624f};
    float out[16];
    assert_int_equal(zi_randn(out, 16, 0, ZI_RNG_CPU), ZI_OK);
    assert_true(zi_max_abs_diff(out, seed0, 16) < 1e-4);
    assert_int_equal(zi_randn(out, 16, 42, ZI_RNG_CPU), ZI_OK);
    assert_true(zi_max_abs_diff(out, seed42, 16) < 1e-4);
}

/* The ragged tail of the vectorised CPU path: the last 16 numbers are redrawn, the
 * ones before stay as the whole-chunk pass made them. */
static void test_cpu_ragged_tail(void **state)
{
    (void)state;
    float a[40], b[32];
    assert_int_equal(zi_randn(a, 40, 7, ZI_RNG_CPU), ZI_OK);
    assert_int_equal(zi_randn(b, 32, 7, ZI_RNG_CPU), ZI_OK);
    /* elements 0..23 come from whole chunks made the same way in both */
    assert_true(zi_max_abs_diff(a, b, 24) == 0);
    for (int i = 0; i < 40; i++)
        assert_true(isfinite(a[i]) && fabsf(a[i]) < 8.0f);
    /* the tail [24, 40) was regenerated: it differs from the 32-number run's chunk 2 */
    assert_true(zi_max_abs_diff(a + 24, b + 16, 8) > 0);
}

static void test_cuda_grid(void **state)
{
    (void)state;
    assert_int_equal(zi_rng_cuda_grid(1), 1);
    assert_int_equal(zi_rng_cuda_grid(256), 1);
    assert_int_equal(zi_rng_cuda_grid(257), 2);
    assert_int_equal(zi_rng_cuda_grid(270336), 1056);
    assert_int_equal(zi_rng_cuda_grid(270337), 1056);
    assert_int_equal(zi_rng_cuda_grid(1u << 20), 1056);
}

static void test_bad_kind(void **state)
{
    (void)state;
    float x[4];
    assert_int_equal(zi_randn(x, 4, 1, (zi_rng_kind)7), ZI_EINVAL);
    assert_non_null(strstr(zi_errmsg(), "generator"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_philox_kat),         cmocka_unit_test(test_mt19937_kat),
        cmocka_unit_test(test_cuda_grid),          cmocka_unit_test(test_rng_vectors),
        cmocka_unit_test(test_rng_large_vectors),  cmocka_unit_test(test_cpu_scalar_path),
        cmocka_unit_test(test_cpu_vector_path_16), cmocka_unit_test(test_cpu_ragged_tail),
        cmocka_unit_test(test_bad_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
