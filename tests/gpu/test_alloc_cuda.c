/*
 * test_alloc_cuda.c - the allocator on the real driver (label gpu): the VMM provider maps
 * memory the GPU can use, a replayed job maps nothing new, trim gives memory back to the
 * device (cudaMemGetInfo sees it), and out-of-memory is a clear ZI_ENOMEM, both for the
 * ZI_CUDA_MEM_LIMIT_MB cap and for a request larger than the device; and growth and trim
 * from a thread that made no CUDA call before (the worker's job thread, which did not
 * create the backend); under the emulator, the cudaMalloc fallback when the driver has no
 * VMM or refuses it.
 */
#include "zi_test.h"

#ifdef ZI_HAVE_CUDA

#include "backend.h"
#include "zi_alloc.h"
#include "zi_cuda.h"
#include "zi_err.h"
#include "zi_vmm.h"

#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB ((uint64_t)1 << 20)
/* Tokens of the DiT-like job and the size of the trimmed block: the real sizes on a GPU,
 * smaller under the CPU emulator of CUDA (tests/cudaemu/), where every element is emulated. */
#ifdef ZI_CUDA_EMU
#define TOKENS 544
#define BIG_MIB 256
#else
#define TOKENS 4224
#define BIG_MIB 1024
#endif

static zi_backend *be;

static int setup(void **state)
{
    (void)state;
    if (!zi_backend_cuda_available()) {
        fprintf(stderr, "test_alloc_cuda: no GPU visible (%s)\n", zi_errmsg());
        return -1;
    }
    unsetenv("ZI_CUDA_MEM_LIMIT_MB");
    be = zi_backend_cuda_new(0);
    if (!be) {
        fprintf(stderr, "test_alloc_cuda: %s\n", zi_errmsg());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    zi_backend_destroy(be);
    return 0;
}

/* A VMM range of `bytes` queuing on `stream`: *g its granularity, *p its provider and -
 * when a is not NULL - an allocator over it (512-byte alignment). */
static zi_vmm *zt_vmm(uint64_t bytes, void *stream, uint64_t *g, zi_alloc_provider *p, zi_alloc **a)
{
    zi_vmm *v = NULL;
    assert_int_equal(zi_vmm_open(0, bytes, stream, &v), ZI_OK);
    *g = zi_vmm_granularity(v);
    *p = zi_vmm_provider(v);
    if (a) {
        zi_alloc_config cfg = {zi_vmm_reserve(v), *g, 0, 512, 0};
        *a = NULL;
        assert_int_equal(zi_alloc_new(&cfg, p, a), ZI_OK);
    }
    return v;
}

/* The provider alone: map, use, unmap. */
static void test_vmm_provider(void **state)
{
    (void)state;
    uint64_t g;
    zi_alloc_provider p;
    zi_alloc *a;
    zi_vmm *v = zt_vmm(1024 * MIB, zi_cuda_stream(be), &g, &p, &a);
    assert_true(g >= 4096 && (g & (g - 1)) == 0);
    uint64_t off = 0;
    assert_int_equal(zi_alloc_malloc(a, 3 * g + 100, 0, &off), ZI_OK);
    assert_int_equal(zi_vmm_handles(v), 1);
    char *ptr = (char *)zi_vmm_base(v) + off;
    /* the mapped memory is real device memory: write it, read it back */
    assert_int_equal(cudaMemset(ptr, 0x5a, 3 * g + 100), cudaSuccess);
    unsigned char probe[64];
    assert_int_equal(cudaMemcpy(probe, ptr + 3 * g + 36, 64, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int i = 0; i < 64; i++)
        assert_int_equal(probe[i], 0x5a);
    assert_int_equal(zi_alloc_free(a, off, NULL, NULL), ZI_OK);
    assert_int_equal(zi_alloc_trim(a), 4 * g);
    assert_int_equal(zi_vmm_handles(v), 0);
    assert_int_equal(zi_alloc_check(a), ZI_OK);
    zi_alloc_destroy(a);
    zi_vmm_close(v);
}

/* unmap must name the whole chunk a map call made: a wrong size (half of it) is refused
 * with ZI_EINVAL before the driver is asked, and the mapping stays as it was. */
static void test_vmm_unmap_wrong_size(void **state)
{
    (void)state;
    uint64_t g;
    zi_alloc_provider p;
    zi_vmm *v = zt_vmm(64 * MIB, zi_cuda_stream(be), &g, &p, NULL);
    assert_int_equal(p.map(p.ud, 0, 2 * g), ZI_OK);
    assert_int_equal(p.unmap(p.ud, 0, g), ZI_EINVAL);
    assert_int_equal(p.unmap(p.ud, 0, 4 * g), ZI_EINVAL);
    assert_int_equal(p.unmap(p.ud, g, g), ZI_EINVAL); /* not where a chunk starts */
    assert_int_equal(zi_vmm_handles(v), 1);
    /* the whole chunk is still mapped and usable */
    char *ptr = zi_vmm_base(v);
    assert_int_equal(cudaMemset(ptr, 0x3c, 2 * g), cudaSuccess);
    unsigned char probe[64];
    assert_int_equal(cudaMemcpy(probe, ptr + 2 * g - 64, 64, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int i = 0; i < 64; i++)
        assert_int_equal(probe[i], 0x3c);
    assert_int_equal(p.unmap(p.ud, 0, 2 * g), ZI_OK);
    assert_int_equal(zi_vmm_handles(v), 0);
    zi_vmm_close(v);
}

/* Work queued on the stream that still uses a block is waited for by the unmap of a trim:
 * no explicit synchronisation between the queued memset, the free and the trim. (Without
 * the wait the GPU faults on the unmapped range; the CUDA emulator aborts.) */
static void test_vmm_unmap_waits_for_stream(void **state)
{
    (void)state;
    cudaStream_t st = (cudaStream_t)zi_cuda_stream(be);
    uint64_t g;
    zi_alloc_provider p;
    zi_alloc *a;
    zi_vmm *v = zt_vmm(256 * MIB, st, &g, &p, &a);
    uint64_t off = 0, n = 32 * MIB;
    assert_int_equal(zi_alloc_malloc(a, n, 0, &off), ZI_OK);
    char *ptr = (char *)zi_vmm_base(v) + off;
    assert_int_equal(cudaMemsetAsync(ptr, 0x11, n, st), cudaSuccess);
    assert_int_equal(cudaMemsetAsync(ptr, 0x22, n, st), cudaSuccess);
    assert_int_equal(zi_alloc_free(a, off, NULL, NULL), ZI_OK);
    assert_true(zi_alloc_trim(a) >= n);
    assert_int_equal(zi_vmm_handles(v), 0);
    /* the queued work ran before the unmap: nothing is left to fail now */
    assert_int_equal(cudaStreamSynchronize(st), cudaSuccess);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    zi_alloc_destroy(a);
    zi_vmm_close(v);
}

/* Chunks mapped out of address order (a lower chunk trimmed and mapped again after a
 * higher one; or mapped in descending order) are still found by unmap. */
static void test_vmm_out_of_order_chunks(void **state)
{
    (void)state;
    uint64_t g;
    zi_alloc_provider p;
    zi_alloc *a;
    zi_vmm *v = zt_vmm(64 * MIB, zi_cuda_stream(be), &g, &p, &a);
    uint64_t offa = 0, offb = 0, offa2 = 0;
    assert_int_equal(zi_alloc_malloc(a, g, 0, &offa), ZI_OK);
    assert_int_equal(zi_alloc_malloc(a, g, 0, &offb), ZI_OK);
    assert_true(offb > offa);
    assert_int_equal(zi_vmm_handles(v), 2);
    assert_int_equal(zi_alloc_free(a, offa, NULL, NULL), ZI_OK);
    assert_int_equal(zi_alloc_trim(a), g); /* A's chunk goes, B's stays */
    assert_int_equal(zi_vmm_handles(v), 1);
    assert_int_equal(zi_alloc_malloc(a, g, 0, &offa2), ZI_OK); /* mapped again, below B */
    assert_int_equal(offa2, offa);
    assert_int_equal(zi_vmm_handles(v), 2);
    zi_alloc_stats s;
    zi_alloc_get_stats(a, &s);
    assert_int_equal(s.reserved, 2 * g);
    assert_int_equal(s.mapped_chunks, 2);
    assert_int_equal(zi_alloc_free(a, offb, NULL, NULL), ZI_OK);
    assert_int_equal(zi_alloc_trim(a), g); /* B, the higher chunk, first */
    assert_int_equal(zi_vmm_handles(v), 1);
    zi_alloc_get_stats(a, &s);
    assert_int_equal(s.reserved, g);
    assert_int_equal(s.mapped_chunks, 1);
    assert_int_equal(zi_alloc_free(a, offa2, NULL, NULL), ZI_OK);
    assert_int_equal(zi_alloc_trim(a), g);
    assert_int_equal(zi_vmm_handles(v), 0);
    zi_alloc_get_stats(a, &s);
    assert_int_equal(s.reserved, 0);
    assert_int_equal(s.mapped_chunks, 0);
    assert_int_equal(zi_alloc_check(a), ZI_OK);
    zi_alloc_destroy(a);

    /* the provider alone, chunks mapped in descending order, unmapped in ascending */
    for (uint64_t i = 4; i-- > 0;)
        assert_int_equal(p.map(p.ud, 2 * i * g, g), ZI_OK);
    assert_int_equal(zi_vmm_handles(v), 4);
    for (uint64_t i = 0; i < 4; i++) {
        assert_int_equal(p.unmap(p.ud, 2 * i * g, g), ZI_OK);
        assert_int_equal(zi_vmm_handles(v), 3 - i);
    }
    zi_vmm_close(v);
}

/* A DiT-like step: activations of the real sizes, dead intermediates freed early. */
static void run_job(zi_backend *b, int S)
{
    int64_t hid[2] = {S, 3840}, ffn[2] = {S, 10240}, qkv[3] = {S, 30, 128};
    for (int layer = 0; layer < 4; layer++) {
        zi_tensor x, q, k, v, o, g, u;
        assert_int_equal(b->alloc(b, &x, 2, hid), ZI_OK);
        assert_int_equal(b->alloc(b, &q, 3, qkv), ZI_OK);
        assert_int_equal(b->alloc(b, &k, 3, qkv), ZI_OK);
        assert_int_equal(b->alloc(b, &v, 3, qkv), ZI_OK);
        assert_int_equal(b->alloc(b, &o, 2, hid), ZI_OK);
        b->free(b, &q);
        b->free(b, &k);
        b->free(b, &v);
        assert_int_equal(b->alloc(b, &g, 2, ffn), ZI_OK);
        assert_int_equal(b->alloc(b, &u, 2, ffn), ZI_OK);
        b->silu_mul(b, &g, &g, &u, (size_t)S * 10240); /* the memory is usable */
        b->free(b, &u);
        b->free(b, &g);
        b->free(b, &o);
        b->free(b, &x);
    }
    b->sync(b);
    assert_int_equal(zi_backend_check(b), ZI_OK);
}

static void test_replay_maps_nothing(void **state)
{
    (void)state;
    zi_tensor w;
    int64_t ws[2] = {10240, 3840};
    assert_int_equal(be->alloc(be, &w, 2, ws), ZI_OK); /* something resident, like weights */
    run_job(be, TOKENS);
    zi_alloc_stats s1, s2;
    assert_int_equal(zi_cuda_alloc_stats(be, &s1), ZI_OK);
    zi_mem_stats m;
    be->mem_stats(be, &m);
    assert_true(m.reserved >= m.allocated);
    assert_true(m.peak >= m.allocated + 2 * TOKENS * 10240 * 2);
    assert_true(m.mapped_chunks >= 1);
    assert_true(m.device_total > 0 && m.device_free > 0 && m.device_free <= m.device_total);
    for (int rep = 0; rep < 2; rep++) {
        run_job(be, TOKENS);
        assert_int_equal(zi_cuda_alloc_stats(be, &s2), ZI_OK);
        assert_int_equal(s2.map_calls, s1.map_calls); /* a second identical job maps nothing */
        assert_int_equal(s2.reserved, s1.reserved);
    }
    printf("replay: reserved %llu in %llu chunks, peak %llu, map calls %llu\n",
           (unsigned long long)s2.reserved, (unsigned long long)s2.mapped_chunks,
           (unsigned long long)s2.peak, (unsigned long long)s2.map_calls);
    be->free(be, &w);
}

static void test_trim_returns_memory(void **state)
{
    (void)state;
    zi_tensor big;
    int64_t shape[1] = {(int64_t)(BIG_MIB * MIB / 2)}; /* 1 GiB of bf16 on a GPU */
    assert_int_equal(be->alloc(be, &big, 1, shape), ZI_OK);
    be->affine(be, &big, &big, 0.0f, 1.0f, (size_t)shape[0]); /* touch it */
    be->sync(be);
    be->free(be, &big);
    size_t free0 = 0, free1 = 0, total = 0;
    assert_int_equal(cudaMemGetInfo(&free0, &total), cudaSuccess);
    uint64_t released = zi_cuda_trim(be);
    assert_true(released >= BIG_MIB * MIB);
    assert_int_equal(cudaMemGetInfo(&free1, &total), cudaSuccess);
    /* the device sees the memory again (allow for other processes' noise) */
    assert_true(free1 >= free0 + released * 9 / 10);
    zi_mem_stats m;
    be->mem_stats(be, &m);
    zi_alloc_stats s;
    assert_int_equal(zi_cuda_alloc_stats(be, &s), ZI_OK);
    assert_int_equal(m.reserved, s.reserved);
    assert_true(m.reserved >= m.allocated);
}

/* What a job thread does first: map new memory, use it, free it, trim it. Meaningful on a
 * real driver, where a new thread has no current context until the backend binds one (the
 * CUDA emulator has no per-thread contexts: there it only checks the bookkeeping). */
typedef struct {
    int alloc_rc;
    uint64_t maps_before, maps_after, released;
    char err[256];
} zi_thread_job;

static void *zi_thread_job_main(void *arg)
{
    zi_thread_job *j = arg;
    zi_alloc_stats s;
    j->maps_before = zi_cuda_alloc_stats(be, &s) == ZI_OK ? s.map_calls : 0;
    zi_tensor big;
    int64_t shape[1] = {(int64_t)(BIG_MIB * MIB / 2)};
    j->alloc_rc = be->alloc(be, &big, 1, shape);
    if (j->alloc_rc != ZI_OK) {
        snprintf(j->err, sizeof j->err, "%s", zi_errmsg());
        return NULL;
    }
    j->maps_after = zi_cuda_alloc_stats(be, &s) == ZI_OK ? s.map_calls : 0;
    be->affine(be, &big, &big, 0.0f, 1.0f, (size_t)shape[0]);
    be->sync(be);
    be->free(be, &big);
    j->released = zi_cuda_trim(be);
    return NULL;
}

static void test_other_thread(void **state)
{
    (void)state;
    zi_cuda_trim(be); /* nothing mapped is free: the thread's allocation must map */
    zi_thread_job j;
    memset(&j, 0, sizeof j);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, zi_thread_job_main, &j), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    if (j.alloc_rc != ZI_OK)
        fail_msg("allocation on a new thread: %s", j.err);
    assert_true(j.maps_after > j.maps_before);
    assert_true(j.released >= BIG_MIB * MIB);
    assert_int_equal(zi_backend_check(be), ZI_OK);
}

static void test_oom_is_clear(void **state)
{
    (void)state;
    zi_mem_stats m;
    be->mem_stats(be, &m);
    zi_tensor t;
    int64_t too_big[1] = {(int64_t)(m.device_total / 2 + 64 * MIB)}; /* > device, in bf16 */
    assert_int_equal(be->alloc(be, &t, 1, too_big), ZI_ENOMEM);
    assert_non_null(strstr(zi_errmsg(), "out of device memory"));
    assert_null(t.data);
    /* the backend still works afterwards */
    zi_tensor ok;
    assert_int_equal(be->alloc(be, &ok, 1, (int64_t[]){1024}), ZI_OK);
    be->free(be, &ok);
    assert_int_equal(zi_backend_check(be), ZI_OK);

    /* the configured cap */
    setenv("ZI_CUDA_MEM_LIMIT_MB", "512", 1);
    zi_backend *capped = zi_backend_cuda_new(0);
    unsetenv("ZI_CUDA_MEM_LIMIT_MB");
    assert_non_null(capped);
    zi_tensor a, b;
    assert_int_equal(capped->alloc(capped, &a, 1, (int64_t[]){(int64_t)(200 * MIB)}), ZI_OK);
    assert_int_equal(capped->alloc(capped, &b, 1, (int64_t[]){(int64_t)(200 * MIB)}), ZI_ENOMEM);
    assert_non_null(strstr(zi_errmsg(), "limit"));
    capped->free(capped, &a);
    /* freed memory serves the request again without passing the cap */
    assert_int_equal(capped->alloc(capped, &b, 1, (int64_t[]){(int64_t)(200 * MIB)}), ZI_OK);
    capped->free(capped, &b);
    zi_backend_destroy(capped);
}

/* The checking allocator (one cudaMalloc per block) keeps the same books. */
static void test_cudamalloc_mode(void **state)
{
    (void)state;
    setenv("ZI_CUDA_ALLOCATOR", "cudamalloc", 1);
    zi_backend *b = zi_backend_cuda_new(0);
    unsetenv("ZI_CUDA_ALLOCATOR");
    assert_non_null(b);
    zi_mem_stats m0, m1;
    b->mem_stats(b, &m0);
    zi_tensor t, w;
    float host[1000];
    for (int i = 0; i < 1000; i++)
        host[i] = (float)i;
    assert_int_equal(b->alloc(b, &t, 1, (int64_t[]){1000}), ZI_OK);
    assert_int_equal(b->upload_weight(b, &w, host, ZI_F32, 1, (int64_t[]){1000}), ZI_OK);
    b->mem_stats(b, &m1);
    assert_int_equal(m1.allocated, m0.allocated + 2 * 2048); /* 2000 bytes -> 2048 each */
    assert_int_equal(m1.weights, 2048);
    b->copy(b, &t, &w, 1000);
    float back[1000];
    assert_int_equal(b->download(b, back, &t, 1000), ZI_OK);
    for (int i = 0; i < 1000; i++)
        assert_true(back[i] == (float)i || i > 256); /* integers <= 256 are exact in bf16 */
    b->free(b, &t);
    b->free(b, &w);
    b->mem_stats(b, &m1);
    assert_int_equal(m1.allocated, m0.allocated);
    assert_int_equal(m1.weights, 0);
    assert_int_equal(zi_backend_check(b), ZI_OK);
    zi_backend_destroy(b);
}

#ifdef ZI_CUDA_EMU
/* A driver without VMM - no entry points, the attribute 0, or support reported but
 * cuMemCreate refused (a sandboxed GPU) - leaves the backend in cudaMalloc mode (nothing
 * mapped, allocations work) unless ZI_CUDA_ALLOCATOR=vmm asks for VMM, which then fails
 * naming the cause. Emulator only: a real driver cannot be made to refuse. */
static void test_no_vmm_fallback(void **state)
{
    (void)state;
    zi_alloc_stats v; /* the usual backend (VMM) for contrast */
    assert_int_equal(zi_cuda_alloc_stats(be, &v), ZI_OK);
    assert_true(v.reserve > 0 && v.map_calls > 0);
    const char *modes[] = {"1", "attr", "create"};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        setenv("ZI_EMU_NO_VMM", modes[i], 1);
        zi_backend *b = zi_backend_cuda_new(0);
        if (!b)
            fail_msg("ZI_EMU_NO_VMM=%s: no backend: %s", modes[i], zi_errmsg());
        zi_tensor t;
        assert_int_equal(b->alloc(b, &t, 1, (int64_t[]){4096}), ZI_OK);
        zi_alloc_stats s; /* cudaMalloc mode: no range reserved, nothing mapped */
        assert_int_equal(zi_cuda_alloc_stats(b, &s), ZI_OK);
        assert_int_equal(s.reserve, 0);
        assert_int_equal(s.map_calls, 0);
        assert_true(s.allocated >= 4096 * 2);
        b->free(b, &t);
        assert_int_equal(zi_backend_check(b), ZI_OK);
        zi_backend_destroy(b);

        setenv("ZI_CUDA_ALLOCATOR", "vmm", 1);
        b = zi_backend_cuda_new(0);
        unsetenv("ZI_CUDA_ALLOCATOR");
        assert_null(b);
        if (strcmp(modes[i], "create") == 0 && !strstr(zi_errmsg(), "test mapping failed"))
            fail_msg("ZI_CUDA_ALLOCATOR=vmm, cuMemCreate refused: '%s'", zi_errmsg());
    }
    unsetenv("ZI_EMU_NO_VMM");
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cudamalloc_mode),
        cmocka_unit_test(test_vmm_provider),
        cmocka_unit_test(test_vmm_unmap_wrong_size),
        cmocka_unit_test(test_vmm_unmap_waits_for_stream),
        cmocka_unit_test(test_vmm_out_of_order_chunks),
        cmocka_unit_test(test_replay_maps_nothing),
        cmocka_unit_test(test_trim_returns_memory),
        cmocka_unit_test(test_oom_is_clear),
        cmocka_unit_test(test_other_thread),
#ifdef ZI_CUDA_EMU
        cmocka_unit_test(test_no_vmm_fallback),
#endif
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

#else /* !ZI_HAVE_CUDA */

#include <stdio.h>

int main(void)
{
    fprintf(stderr, "test_alloc_cuda: built without CUDA\n");
    return 1;
}

#endif
