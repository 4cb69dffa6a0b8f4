/*
 * test_profile.c - pipeline/profile.c on the CPU backend: ops counted and timed while
 * profiled, results unchanged, errors still sticky, the original table restored, misuse
 * refused.
 */
#include "zi_test.h"

#include "backend.h"
#include "profile.h"
#include "zi_err.h"

#include <stdlib.h>
#include <string.h>

static zi_tensor put(zi_backend *be, const float *h, int64_t n)
{
    zi_tensor t;
    assert_int_equal(be->alloc_f32(be, &t, 1, (int64_t[]){n}), ZI_OK);
    if (h)
        assert_int_equal(be->upload(be, &t, h, (size_t)n), ZI_OK);
    return t;
}

static const zi_profile_entry *find(const zi_profile_entry *e, int n, const char *op)
{
    for (int i = 0; i < n; i++)
        if (strcmp(e[i].op, op) == 0)
            return &e[i];
    return NULL;
}

static void test_counts_results_and_restore(void **state)
{
    (void)state;
    zi_backend *be = zi_backend_cpu_new(1);
    assert_non_null(be);
    zi_backend before = *be;
    enum { N = 4096 };
    float *a = malloc(N * sizeof(float)), *b = malloc(N * sizeof(float));
    float *plain = malloc(N * sizeof(float)), *prof = malloc(N * sizeof(float));
    assert_true(a && b && plain && prof);
    for (int i = 0; i < N; i++)
        a[i] = (float)i / N - 0.5f, b[i] = (float)(i % 7) - 3.0f;
    zi_tensor ta = put(be, a, N), tb = put(be, b, N), to = put(be, NULL, N);
    be->silu_mul(be, &to, &ta, &tb, N);
    assert_int_equal(be->download(be, plain, &to, N), ZI_OK);

    assert_int_equal(zi_profile_start(be), ZI_OK);
    assert_int_equal(zi_profile_start(be), ZI_EINVAL); /* already profiled */
    assert_true(be->silu_mul != before.silu_mul);      /* wrapped */
    for (int r = 0; r < 3; r++)
        be->silu_mul(be, &to, &ta, &tb, N);
    be->add(be, &to, &to, &ta, N);
    be->add(be, &to, &ta, &tb, 8); /* fine */
    assert_int_equal(zi_backend_check(be), ZI_OK);
    be->silu_mul(be, &to, &ta, &tb, N);
    assert_int_equal(be->download(be, prof, &to, N), ZI_OK);
    assert_memory_equal(prof, plain, N * sizeof(float)); /* same results while profiled */
    zi_tensor small = put(be, NULL, 8);
    be->add(be, &small, &ta, &tb, N); /* out too small: refused as without the profiler */
    assert_int_equal(zi_backend_check(be), ZI_EINVAL);
    zi_backend_clear_error(be);

    zi_profile_entry e[ZI_PROFILE_MAX_OPS];
    int n = -1;
    assert_int_equal(zi_profile_stop(be, e, ZI_PROFILE_MAX_OPS, &n), ZI_OK);
    assert_int_equal(n, 3); /* silu_mul, add, download */
    const zi_profile_entry *sm = find(e, n, "silu_mul"), *ad = find(e, n, "add");
    const zi_profile_entry *dl = find(e, n, "download");
    assert_non_null(sm);
    assert_non_null(ad);
    assert_non_null(dl);
    assert_int_equal(sm->calls, 4);
    assert_int_equal(ad->calls, 3);
    assert_int_equal(dl->calls, 1);
    for (int i = 0; i < n; i++) {
        assert_true(e[i].ms >= 0);
        if (i)
            assert_true(e[i - 1].ms >= e[i].ms); /* largest first */
    }
    /* the table is the backend's own again */
    assert_true(be->silu_mul == before.silu_mul);
    assert_true(be->linear == before.linear);
    assert_true(be->download == before.download);
    assert_true(be->conv2d == before.conv2d);
    assert_int_equal(zi_profile_stop(be, e, ZI_PROFILE_MAX_OPS, &n), ZI_EINVAL);
    assert_int_equal(n, 0);

    /* a short output array gets the largest entries */
    assert_int_equal(zi_profile_start(be), ZI_OK);
    be->silu_mul(be, &to, &ta, &tb, N);
    be->add(be, &to, &ta, &tb, N);
    assert_int_equal(zi_profile_stop(be, e, 1, &n), ZI_OK);
    assert_int_equal(n, 1);

    be->free(be, &ta), be->free(be, &tb), be->free(be, &to), be->free(be, &small);
    free(a), free(b), free(plain), free(prof);
    zi_backend_destroy(be);
}

static void test_several_backends(void **state)
{
    (void)state;
    zi_backend *x = zi_backend_cpu_new(1), *y = zi_backend_cpu_new(1);
    assert_true(x && y);
    assert_int_equal(zi_profile_start(x), ZI_OK);
    assert_int_equal(zi_profile_start(y), ZI_OK);
    zi_tensor t = put(y, NULL, 16);
    y->affine(y, &t, &t, 2.0f, 1.0f, 16);
    zi_profile_entry e[ZI_PROFILE_MAX_OPS];
    int n = 0;
    assert_int_equal(zi_profile_stop(x, e, ZI_PROFILE_MAX_OPS, &n), ZI_OK);
    assert_int_equal(n, 0); /* x ran nothing */
    assert_int_equal(zi_profile_stop(y, e, ZI_PROFILE_MAX_OPS, &n), ZI_OK);
    assert_int_equal(n, 1);
    assert_string_equal(e[0].op, "affine");
    assert_int_equal(zi_profile_start(NULL), ZI_EINVAL);
    y->free(y, &t);
    zi_backend_destroy(x);
    zi_backend_destroy(y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_results_and_restore),
        cmocka_unit_test(test_several_backends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
