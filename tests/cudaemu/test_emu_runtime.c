/*
 * test_emu_runtime.c - the host half of the CUDA emulator (tests/cudaemu/emu_runtime.c)
 * against plain loops written from NVIDIA's definitions, and its rejection of what CUDA
 * documents as invalid or undefined.
 *
 * Covered: device queries and the thread's last error; cudaMalloc/cudaFree/cudaMemGetInfo
 * bookkeeping and out-of-memory; copy directions (cudaMemcpy: "dst and src pointers that do
 * not match the direction of the copy" must not copy); streams and event timing;
 * cudaFuncSetAttribute; cublasGemmEx (column-major C = alpha op(A) op(B) + beta C, every
 * N/T combination, ld > rows, bf16 and f32 C) and its documented argument rules; cuBLASLt
 * TN with the BIAS epilogue and beta = 1 in place, the heuristic's refusals and
 * cublasLtMatmul's layout checks; the driver VMM reached through
 * cudaGetDriverEntryPointByVersion (reserve, create, map, access, write, unmap, release, and
 * the misuse errors); ZI_EMU_NO_VMM.
 *
 * The process runs with ZI_EMU_DEVICE_MEMORY = 64 MiB (set in main before the first call)
 * so the out-of-memory paths are cheap to reach. Each test frees what it allocates and
 * checks that the device's free memory is back to the total.
 */
#include "emu.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "emu_test.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB ((size_t)1 << 20)
#define TEST_DEVICE_MEMORY (64 * MIB)

/* ---- helpers ---- */

/* Round to the nearer of the two neighbouring bf16 values, ties to the even one (written
 * from the definition, independently of the emulator's bit trick; finite inputs only). */
static uint16_t f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t lo = u & 0xffff0000u;
    uint16_t lo_h = (uint16_t)(lo >> 16), hi_h = (uint16_t)(lo_h + 1);
    double dlo = fabs((double)f - (double)zi_emu_test_bf2f(lo_h)),
           dhi = fabs((double)zi_emu_test_bf2f(hi_h) - (double)f);
    if (dlo < dhi)
        return lo_h;
    if (dhi < dlo)
        return hi_h;
    return (lo_h & 1) ? hi_h : lo_h;
}

/* Half the spacing of bf16 values around x (8 significant bits): the most a correctly
 * rounded result may differ from x. */
static double bf16_half_ulp(double x)
{
    int e = 0;
    frexp(x, &e); /* |x| = f 2^e, f in [0.5, 1) */
    return ldexp(1.0, e - 9);
}

static uint32_t rng_state = 12345;

/* A bf16 value in [-1, 1) from a fixed LCG. */
static uint16_t rnd_bf16(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    float v = (float)((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
    return f2bf(v);
}

/* Element i of an array of t (CUDA_R_32F or CUDA_R_16BF) values, as f32. */
static float elem_get(const void *x, cudaDataType t, size_t i)
{
    return t == CUDA_R_32F ? ((const float *)x)[i] : zi_emu_test_bf2f(((const uint16_t *)x)[i]);
}

/* Stores v (rounded to nearest for bf16) as element i of an array of t values. */
static void elem_set(void *x, cudaDataType t, size_t i, float v)
{
    if (t == CUDA_R_32F)
        ((float *)x)[i] = v;
    else
        ((uint16_t *)x)[i] = f2bf(v);
}

/* Work is queued (emu.h); these helpers wait for the whole device around their copy, so
 * that work on any stream (the tests' GEMM streams are non-blocking) is ordered with them. */
static void to_dev(void *d, const void *h, size_t bytes)
{
    assert_int_equal(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
}

static void to_host(void *h, const void *d, size_t bytes)
{
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
}

/* All device memory is free again (no leak in the test or in the emulator's books). */
static void assert_all_free(void)
{
    size_t fr = 0, tot = 0;
    assert_int_equal(cudaMemGetInfo(&fr, &tot), cudaSuccess);
    assert_int_equal(tot, TEST_DEVICE_MEMORY);
    assert_int_equal(fr, tot);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
}

/* ---- device, errors ---- */

static void test_device_queries(void **state)
{
    (void)state;
    int n = 0, v = 0;
    assert_int_equal(cudaGetDeviceCount(&n), cudaSuccess);
    assert_int_equal(n, 1);
    assert_int_equal(cudaSetDevice(0), cudaSuccess);
    assert_int_equal(cudaSetDevice(1), cudaErrorInvalidDevice);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidDevice);
    struct cudaDeviceProp prop;
    assert_int_equal(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
    assert_string_equal(prop.name, "zimage CUDA emulator (CPU)");
    assert_int_equal(prop.major, 9);
    assert_int_equal(prop.minor, 0);
    assert_int_equal(prop.multiProcessorCount, 132);
    assert_int_equal(prop.l2CacheSize, 50 << 20);
    assert_int_equal(prop.totalGlobalMem, TEST_DEVICE_MEMORY);
    assert_int_equal(prop.sharedMemPerBlockOptin, 227 << 10);
    assert_int_equal(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
    assert_int_equal(v, 9);
    assert_int_equal(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
    assert_int_equal(v, 132);
    assert_int_equal(cudaDeviceGetAttribute(&v, cudaDevAttrL2CacheSize, 0), cudaSuccess);
    assert_int_equal(v, 50 << 20);
    assert_int_equal(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0),
                     cudaSuccess);
    assert_int_equal(v, zi_emu_max_optin_smem());
    assert_int_equal(cudaDeviceGetAttribute(&v, cudaDevAttrL2CacheSize, 3), cudaErrorInvalidDevice);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidDevice);
    assert_all_free();
}

static void *other_thread(void *arg)
{
    cudaError_t *seen = arg;
    seen[0] = cudaPeekAtLastError(); /* the main thread's error is not visible here */
    cudaSetDevice(7);
    seen[1] = cudaPeekAtLastError();
    return NULL;
}

static void test_last_error(void **state)
{
    (void)state;
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    assert_int_equal(cudaFree((void *)&rng_state), cudaErrorInvalidValue);
    assert_int_equal(cudaSetDevice(0), cudaSuccess); /* a success does not clear it */
    assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidValue); /* peek does not reset */
    pthread_t t;
    cudaError_t seen[2] = {cudaErrorUnknown, cudaErrorUnknown};
    assert_int_equal(pthread_create(&t, NULL, other_thread, seen), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(seen[0], cudaSuccess);
    assert_int_equal(seen[1], cudaErrorInvalidDevice);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue); /* and get resets */
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    zi_emu_set_error(cudaErrorInvalidConfiguration); /* a launch error from the device half */
    zi_emu_set_error(cudaSuccess);                   /* does not hide it */
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaGetLastError(), cudaSuccess);

    assert_string_equal(cudaGetErrorString(cudaErrorInvalidValue), "invalid argument");
    assert_string_equal(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory");
    assert_string_equal(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation");
    assert_string_equal(cudaGetErrorString((cudaError_t)12345), "unrecognized error code");
    const cudaError_t codes[] = {cudaErrorInvalidDevice,          cudaErrorInvalidResourceHandle,
                                 cudaErrorInvalidMemcpyDirection, cudaErrorIllegalAddress,
                                 cudaErrorInvalidDeviceFunction,  cudaErrorLaunchOutOfResources};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_string_not_equal(cudaGetErrorString(codes[i]), "unrecognized error code");
        assert_string_not_equal(cudaGetErrorName(codes[i]), "unrecognized error code");
    }
    unsigned long long c0 = zi_emu_launch_count();
    zi_emu_count_launch();
    zi_emu_count_launch();
    assert_int_equal(zi_emu_launch_count(), c0 + 2);
}

/* ---- memory ---- */

static void test_malloc_free_info(void **state)
{
    (void)state;
    size_t fr0 = 0, fr1 = 0, tot = 0;
    assert_int_equal(cudaMemGetInfo(&fr0, &tot), cudaSuccess);
    char *p = zi_emu_test_dev_alloc(1000);
    assert_true((uintptr_t)p % 256 == 0);
    assert_int_equal(cudaMemGetInfo(&fr1, &tot), cudaSuccess);
    assert_int_equal(fr0 - fr1, 1024); /* 1000 bytes, charged in 256-byte units */
    assert_true(zi_emu_is_device_range(p, 1000));
    assert_true(zi_emu_is_device_range(p + 999, 1));
    assert_false(zi_emu_is_device_range(p, 1001)); /* one byte past the block */
    assert_false(zi_emu_is_device_range(p + 1000, 1));
    assert_false(zi_emu_is_device_range(&fr0, sizeof fr0));
    assert_false(zi_emu_is_device_range(NULL, 1));
    assert_int_equal(cudaFree(p + 16), cudaErrorInvalidValue); /* interior pointer */
    assert_int_equal(cudaFree(p), cudaSuccess);
    assert_int_equal(cudaFree(p), cudaErrorInvalidValue); /* double free */
    assert_false(zi_emu_is_device_range(p, 1));
    assert_int_equal(cudaFree(NULL), cudaSuccess);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    void *z = &fr0;
    assert_int_equal(cudaMalloc(&z, 0), cudaSuccess);
    assert_null(z);
    assert_int_equal(cudaMalloc(NULL, 16), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);

    /* pinned host memory: tracked, freed once, not device memory */
    void *h = NULL;
    assert_int_equal(cudaHostAlloc(&h, 4096, cudaHostAllocDefault), cudaSuccess);
    assert_false(zi_emu_is_device_range(h, 1));
    assert_int_equal(cudaHostAlloc(&h, 16, 0x100), cudaErrorInvalidValue);
    assert_int_equal(cudaFreeHost(h), cudaSuccess);
    assert_int_equal(cudaFreeHost(h), cudaErrorInvalidValue);
    void *m = malloc(64);
    assert_int_equal(cudaFreeHost(m), cudaErrorInvalidValue); /* not from cudaHostAlloc */
    free(m);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    assert_all_free();
}

static void test_out_of_memory(void **state)
{
    (void)state;
    void *p = NULL, *q = NULL;
    assert_int_equal(cudaMalloc(&p, TEST_DEVICE_MEMORY + 1), cudaErrorMemoryAllocation);
    assert_int_equal(cudaGetLastError(), cudaErrorMemoryAllocation);
    assert_int_equal(cudaMalloc(&p, 40 * MIB), cudaSuccess);
    size_t fr = 0, tot = 0;
    assert_int_equal(cudaMemGetInfo(&fr, &tot), cudaSuccess);
    assert_int_equal(fr, tot - 40 * MIB);
    assert_int_equal(cudaMalloc(&q, 30 * MIB), cudaErrorMemoryAllocation); /* 24 MiB free */
    assert_int_equal(cudaGetLastError(), cudaErrorMemoryAllocation);
    assert_int_equal(cudaMalloc(&q, 24 * MIB), cudaSuccess); /* exactly what is left */
    assert_int_equal(cudaMemGetInfo(&fr, &tot), cudaSuccess);
    assert_int_equal(fr, 0);
    assert_int_equal(cudaFree(q), cudaSuccess);
    assert_int_equal(cudaFree(p), cudaSuccess);
    assert_int_equal(cudaMalloc(&q, 30 * MIB), cudaSuccess); /* freed memory serves again */
    assert_int_equal(cudaFree(q), cudaSuccess);
    assert_all_free();
}

static void test_memcpy_directions(void **state)
{
    (void)state;
    enum { N = 256 };
    unsigned char host[N], back[N], pat[N];
    for (int i = 0; i < N; i++)
        host[i] = (unsigned char)(i * 7 + 1);
    unsigned char *d1 = zi_emu_test_dev_alloc(N), *d2 = zi_emu_test_dev_alloc(N);
    void *pinned = NULL;
    assert_int_equal(cudaHostAlloc(&pinned, N, cudaHostAllocDefault), cudaSuccess);

    /* the four directions and Default, each moving real data */
    assert_int_equal(cudaMemcpy(d1, host, N, cudaMemcpyHostToDevice), cudaSuccess);
    assert_int_equal(cudaMemcpy(d2, d1, N, cudaMemcpyDeviceToDevice), cudaSuccess);
    assert_int_equal(cudaMemcpy(pinned, d2, N, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_int_equal(cudaMemcpy(back, pinned, N, cudaMemcpyHostToHost), cudaSuccess);
    assert_memory_equal(back, host, N);
    memset(back, 0, N);
    assert_int_equal(cudaMemcpy(d1, d2, N, cudaMemcpyDefault), cudaSuccess);
    assert_int_equal(cudaMemcpy(back, d1, N, cudaMemcpyDefault), cudaSuccess);
    assert_memory_equal(back, host, N);

    /* direction misuse: cudaErrorInvalidValue and nothing copied */
    memset(pat, 0xab, N);
    memcpy(back, pat, N);
    assert_int_equal(cudaMemcpy(back, host, N, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    assert_memory_equal(back, pat, N);
    assert_int_equal(cudaMemcpy(back, host, N, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    assert_memory_equal(back, pat, N);
    assert_int_equal(cudaMemcpy(d1, host, N, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(d1, d2, N, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(d1, host, N, cudaMemcpyHostToHost), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(pinned, host, N, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    /* ranges must be wholly inside one block */
    assert_int_equal(cudaMemcpy(d1 + 1, host, N, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(back, d2 + 8, N, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(back, d2 + 8, N, cudaMemcpyDefault), cudaErrorInvalidValue);
    /* overlapping copies are undefined (memcpy semantics) */
    assert_int_equal(cudaMemcpy(d1 + 8, d1, 64, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
    /* unknown kind */
    assert_int_equal(cudaMemcpy(d1, host, N, (enum cudaMemcpyKind)7),
                     cudaErrorInvalidMemcpyDirection);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidMemcpyDirection);
    /* none of the rejected copies wrote device memory */
    to_host(back, d1, N);
    assert_memory_equal(back, host, N);

    /* memset: device memory only, whole range */
    assert_int_equal(cudaMemset(d1, 0x5a, N), cudaSuccess);
    to_host(back, d1, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(back[i], 0x5a);
    assert_int_equal(cudaMemset(back, 0, N), cudaErrorInvalidValue);
    assert_int_equal(cudaMemset(d1 + 1, 0, N), cudaErrorInvalidValue);
    assert_int_equal(cudaMemset(d1, 0, 0), cudaSuccess);

    /* async forms check their stream */
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    assert_int_equal(cudaMemcpyAsync(d2, host, N, cudaMemcpyHostToDevice, s), cudaSuccess);
    assert_int_equal(cudaMemsetAsync(d2, 1, N, s), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(d2, host, N, cudaMemcpyHostToDevice, s),
                     cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaMemsetAsync(d2, 1, N, s), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaMemcpyAsync(d2, host, N, cudaMemcpyHostToDevice, NULL), cudaSuccess);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);

    assert_int_equal(cudaFreeHost(pinned), cudaSuccess);
    assert_int_equal(cudaFree(d1), cudaSuccess);
    assert_int_equal(cudaFree(d2), cudaSuccess);
    assert_all_free();
}

/* ---- streams, events, function attributes ---- */

static void test_streams_events(void **state)
{
    (void)state;
    cudaStream_t s = NULL;
    assert_int_equal(cudaStreamCreateWithFlags(&s, 0x8), cudaErrorInvalidValue);
    s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(NULL), cudaSuccess);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);

    cudaEvent_t e0 = NULL, e1 = NULL, nt = NULL;
    assert_int_equal(cudaEventCreate(&e0), cudaSuccess);
    assert_int_equal(cudaEventCreate(&e1), cudaSuccess);
    assert_int_equal(cudaEventCreateWithFlags(&nt, cudaEventDisableTiming), cudaSuccess);
    float ms = -1.0f;
    /* "If cudaEventRecord() has not been called on either event ...
     * cudaErrorInvalidResourceHandle" */
    assert_int_equal(cudaEventElapsedTime(&ms, e0, e1), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaEventSynchronize(e0), cudaSuccess); /* nothing captured: done */
    assert_int_equal(cudaEventRecord(e0, s), cudaSuccess);
    assert_int_equal(cudaEventElapsedTime(&ms, e0, e1), cudaErrorInvalidResourceHandle);
    zi_emu_test_check_nap_timed(e0, e1, s);
    assert_int_equal(cudaEventElapsedTime(NULL, e0, e1), cudaErrorInvalidValue);
    /* DisableTiming events time nothing */
    assert_int_equal(cudaEventRecord(nt, s), cudaSuccess);
    assert_int_equal(cudaEventElapsedTime(&ms, e0, nt), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaEventCreateWithFlags(&e0, cudaEventInterprocess), cudaErrorInvalidValue);

    assert_int_equal(cudaEventDestroy(nt), cudaSuccess);
    assert_int_equal(cudaEventDestroy(nt), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaEventRecord(nt, s), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaEventDestroy(e0), cudaSuccess);
    assert_int_equal(cudaEventDestroy(e1), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(s), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaStreamDestroy(NULL), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
    assert_all_free();
}

static const char kernel_a, kernel_b; /* stand-ins for kernel addresses */

static void test_func_attributes(void **state)
{
    (void)state;
    assert_int_equal(zi_emu_max_optin_smem(), 227 * 1024);
    assert_int_equal(zi_emu_func_max_smem(&kernel_a), 48 * 1024); /* until raised */
    assert_int_equal(
        cudaFuncSetAttribute(&kernel_a, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024),
        cudaSuccess);
    assert_int_equal(zi_emu_func_max_smem(&kernel_a), 100 * 1024);
    assert_int_equal(zi_emu_func_max_smem(&kernel_b), 48 * 1024);
    assert_int_equal(cudaFuncSetAttribute(&kernel_a, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          227 * 1024 + 1),
                     cudaErrorInvalidValue);
    assert_int_equal(zi_emu_func_max_smem(&kernel_a), 100 * 1024); /* unchanged */
    assert_int_equal(
        cudaFuncSetAttribute(&kernel_b, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024),
        cudaSuccess);
    assert_int_equal(zi_emu_func_max_smem(&kernel_b), 227 * 1024);
    assert_int_equal(cudaFuncSetAttribute(NULL, cudaFuncAttributeMaxDynamicSharedMemorySize, 1),
                     cudaErrorInvalidDeviceFunction);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidDeviceFunction);
}

/* ---- cuBLAS ---- */

/* Column-major element (i, j) of op(X) where X is stored with leading dimension ld. */
static float op_at(const uint16_t *x, int ld, int trans, int i, int j)
{
    return trans ? zi_emu_test_bf2f(x[j + (size_t)i * ld])
                 : zi_emu_test_bf2f(x[i + (size_t)j * ld]);
}

/* One cublasGemmEx C = alpha op(A) op(B) + beta C against the definition (cuBLAS,
 * cublas<t>gemm: op(A) m x k, op(B) k x n, C m x n, all column-major). */
static void check_gemm_ex(cublasHandle_t h, int ta, int tb, cudaDataType ct)
{
    const int m = 5, n = 4, k = 7;
    const int lda = (ta ? k : m) + 3, ldb = (tb ? n : k) + 2, ldc = m + 4;
    const int acols = ta ? m : k, bcols = tb ? k : n;
    const float alpha = 0.75f, beta = -0.5f;
    size_t es = ct == CUDA_R_32F ? 4 : 2;
    uint16_t *A = calloc((size_t)lda * acols, 2), *B = calloc((size_t)ldb * bcols, 2);
    void *C0 = calloc((size_t)ldc * n, es), *C1 = calloc((size_t)ldc * n, es);
    assert_true(A && B && C0 && C1);
    for (int i = 0; i < lda * acols; i++)
        A[i] = rnd_bf16();
    for (int i = 0; i < ldb * bcols; i++)
        B[i] = rnd_bf16();
    for (int i = 0; i < ldc * n; i++)
        elem_set(C0, ct, (size_t)i, zi_emu_test_bf2f(rnd_bf16()));
    void *dA = zi_emu_test_dev_alloc((size_t)lda * acols * 2),
         *dB = zi_emu_test_dev_alloc((size_t)ldb * bcols * 2);
    void *dC = zi_emu_test_dev_alloc((size_t)ldc * n * es);
    to_dev(dA, A, (size_t)lda * acols * 2);
    to_dev(dB, B, (size_t)ldb * bcols * 2);
    to_dev(dC, C0, (size_t)ldc * n * es);
    assert_int_equal(cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  m, n, k, &alpha, dA, CUDA_R_16BF, lda, dB, CUDA_R_16BF, ldb,
                                  &beta, dC, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    to_host(C1, dC, (size_t)ldc * n * es);
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < ldc; i++) {
            size_t at = i + (size_t)j * ldc;
            float c0 = elem_get(C0, ct, at), c1 = elem_get(C1, ct, at);
            if (i >= m) { /* rows between m and ldc are not C's: untouched */
                assert_memory_equal((char *)C1 + at * es, (char *)C0 + at * es, es);
                continue;
            }
            double acc = 0, mag = 0;
            for (int p = 0; p < k; p++) {
                double t = (double)op_at(A, lda, ta, i, p) * op_at(B, ldb, tb, p, j);
                acc += t;
                mag += fabs(t);
            }
            double want = alpha * acc + beta * (double)c0;
            double tol = 1e-5 * (alpha * mag + fabs(beta * c0)) + 1e-7;
            if (ct == CUDA_R_16BF) /* one rounding of the fp32 result to the nearest bf16 */
                tol += bf16_half_ulp(want);
            if (fabs((double)c1 - want) > tol)
                fail_msg("GemmEx op %c%c C %s: C(%d,%d) = %g, want %g", ta ? 'T' : 'N',
                         tb ? 'T' : 'N', ct == CUDA_R_32F ? "f32" : "bf16", i, j, (double)c1, want);
        }
    }
    assert_int_equal(cudaFree(dA), cudaSuccess);
    assert_int_equal(cudaFree(dB), cudaSuccess);
    assert_int_equal(cudaFree(dC), cudaSuccess);
    free(A);
    free(B);
    free(C0);
    free(C1);
}

static void test_gemm_ex(void **state)
{
    (void)state;
    cublasHandle_t h = NULL;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    assert_int_equal(cublasSetStream(h, s), CUBLAS_STATUS_SUCCESS);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            check_gemm_ex(h, ta, tb, CUDA_R_32F);
            check_gemm_ex(h, ta, tb, CUDA_R_16BF);
        }
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_NOT_INITIALIZED);
    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    assert_all_free();
}

static void test_gemm_ex_rules(void **state)
{
    (void)state;
    cublasHandle_t h = NULL;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const int m = 8, n = 8, k = 8;
    float one = 1.0f, zero = 0.0f;
    uint16_t *A = zi_emu_test_dev_alloc(64 * 2), *B = zi_emu_test_dev_alloc(64 * 2);
    float *C = zi_emu_test_dev_alloc(64 * 4);
    uint16_t hb[64];
    for (int i = 0; i < 64; i++)
        hb[i] = f2bf((float)(i % 5));
    to_dev(A, hb, sizeof hb);
    to_dev(B, hb, sizeof hb);
    const cublasOperation_t N = CUBLAS_OP_N, T = CUBLAS_OP_T;
#define GEMM(ta, tb, mm, nn, kk, al, a, at, lda, b, ldb, be, c, ct, ldc, comp)                     \
    cublasGemmEx(h, ta, tb, mm, nn, kk, al, a, at, lda, b, CUDA_R_16BF, ldb, be, c, ct, ldc, comp, \
                 CUBLAS_GEMM_DEFAULT)
    /* argument rules (cublasGemmEx), with A and B bf16, beta = 0 */
    const cudaDataType BF = CUDA_R_16BF, F32 = CUDA_R_32F;
    const cublasComputeType_t C32 = CUBLAS_COMPUTE_32F;
    const cublasStatus_t OK = CUBLAS_STATUS_SUCCESS, INVAL = CUBLAS_STATUS_INVALID_VALUE,
                         UNSUP = CUBLAS_STATUS_NOT_SUPPORTED;
    const struct {
        cublasOperation_t ta, tb;
        int m, n, k;
        const float *alpha;
        cudaDataType at;
        int lda, ldb;
        cudaDataType ct;
        int ldc;
        cublasComputeType_t comp;
        cublasStatus_t want;
    } rules[] = {
        {N, N, m, n, k, &one, BF, 8, 8, F32, 8, C32, OK},
        /* "lda < max(1, m) if transa == CUBLAS_OP_N and lda < max(1, k) otherwise" */
        {N, N, m, 4, 4, &one, BF, 7, 8, F32, 8, C32, INVAL},
        {T, N, 4, 4, k, &one, BF, 7, 8, F32, 8, C32, INVAL},
        {T, N, 4, 4, 4, &one, BF, 4, 4, F32, 4, C32, OK}, /* lda = k < m is fine when transposed */
        /* "ldb < max(1, k) if transb == CUBLAS_OP_N and ldb < max(1, n) otherwise" */
        {N, N, 4, 4, k, &one, BF, 8, 7, F32, 8, C32, INVAL},
        {N, T, 4, n, 4, &one, BF, 8, 7, F32, 8, C32, INVAL},
        /* "ldc < max(1, m)", negative sizes, bad op, NULL scalars */
        {N, N, m, 4, 4, &one, BF, 8, 8, F32, 7, C32, INVAL},
        {N, N, -1, 4, 4, &one, BF, 8, 8, F32, 8, C32, INVAL},
        {(cublasOperation_t)9, N, 4, 4, 4, &one, BF, 8, 8, F32, 8, C32, INVAL},
        {N, N, 4, 4, 4, NULL, BF, 8, 8, F32, 8, C32, INVAL},
        /* type combinations and compute types the emulator does not have */
        {N, N, 4, 4, 4, &one, F32, 8, 8, F32, 8, C32, UNSUP},
        {N, N, 4, 4, 4, &one, BF, 8, 8, CUDA_R_16F, 8, C32, UNSUP},
        {N, N, 4, 4, 4, &one, BF, 8, 8, F32, 8, CUBLAS_COMPUTE_16F, UNSUP},
        /* m = 0: nothing to do, success */
        {N, N, 0, 4, 4, &one, BF, 8, 8, F32, 8, C32, OK},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        cublasStatus_t st = GEMM(rules[i].ta, rules[i].tb, rules[i].m, rules[i].n, rules[i].k,
                                 rules[i].alpha, A, rules[i].at, rules[i].lda, B, rules[i].ldb,
                                 &zero, C, rules[i].ct, rules[i].ldc, rules[i].comp);
        if (st != rules[i].want)
            fail_msg("GemmEx rule %zu: status %d, want %d", i, (int)st, (int)rules[i].want);
    }
    /* beta = 0: C is not read (NaN there does not leak), k = 0: C = beta C */
    float nanv[64];
    for (int i = 0; i < 64; i++)
        nanv[i] = NAN;
    to_dev(C, nanv, sizeof nanv);
    assert_int_equal(GEMM(N, N, m, n, k, &one, A, CUDA_R_16BF, 8, B, 8, &zero, C, CUDA_R_32F, 8,
                          CUBLAS_COMPUTE_32F),
                     CUBLAS_STATUS_SUCCESS);
    float got[64];
    to_host(got, C, sizeof got);
    for (int i = 0; i < 64; i++)
        assert_false(isnan(got[i]));
    float two = 2.0f;
    assert_int_equal(GEMM(N, N, m, n, 0, &one, A, CUDA_R_16BF, 8, B, 8, &two, C, CUDA_R_32F, 8,
                          CUBLAS_COMPUTE_32F),
                     CUBLAS_STATUS_SUCCESS);
    float got2[64];
    to_host(got2, C, sizeof got2);
    for (int i = 0; i < 64; i++)
        assert_true(got2[i] == 2.0f * got[i]);
    /* bf16 output rounds to nearest, ties to even: 1 + 2^-8 lies halfway between 1 and
     * 1 + 2^-7 (-> 1, even), 1 + 3 2^-8 halfway between 1 + 2^-7 and 1 + 2^-6 (-> 1 + 2^-6) */
    {
        const float tie_a[2][3] = {{1.0f, 1.0f, -1.0f}, {0x1p-8f, 0x3p-8f, -0x1p-8f}}; /* [k][m] */
        uint16_t ha[6], hb1[2] = {f2bf(1.0f), f2bf(1.0f)}, hc[3];
        for (int p = 0; p < 2; p++)
            for (int i = 0; i < 3; i++)
                ha[i + 3 * p] = f2bf(tie_a[p][i]); /* column-major A[3, 2], lda 3 */
        to_dev(A, ha, sizeof ha);
        to_dev(B, hb1, sizeof hb1);
        void *Cb = C; /* reused for bf16 output */
        assert_int_equal(GEMM(N, N, 3, 1, 2, &one, A, CUDA_R_16BF, 3, B, 2, &zero, Cb, CUDA_R_16BF,
                              3, CUBLAS_COMPUTE_32F),
                         CUBLAS_STATUS_SUCCESS);
        to_host(hc, Cb, sizeof hc);
        assert_true(zi_emu_test_bf2f(hc[0]) == 1.0f);
        assert_true(zi_emu_test_bf2f(hc[1]) == 1.0f + 0x1p-6f);
        assert_true(zi_emu_test_bf2f(hc[2]) == -1.0f);
        to_dev(A, hb, sizeof hb);
        to_dev(B, hb, sizeof hb);
    }
    /* operands outside device memory: the GPU would fault */
    assert_int_equal(GEMM(N, N, 4, 4, 4, &one, hb, CUDA_R_16BF, 8, B, 8, &zero, C, CUDA_R_32F, 8,
                          CUBLAS_COMPUTE_32F),
                     CUBLAS_STATUS_EXECUTION_FAILED);
    assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress);
    assert_int_equal(GEMM(N, N, m, n, k, &one, A + 1, CUDA_R_16BF, 8, B, 8, &zero, C, CUDA_R_32F, 8,
                          CUBLAS_COMPUTE_32F),
                     CUBLAS_STATUS_EXECUTION_FAILED); /* A one element past its block */
    assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress);
    /* C sharing memory with A is undefined: rejected; disjoint column blocks of one buffer
     * that interleave are not */
    uint16_t *big = zi_emu_test_dev_alloc(16 * 8 * 2);
    assert_int_equal(GEMM(N, N, 4, 4, 4, &one, big, CUDA_R_16BF, 16, B, 8, &zero, big + 2,
                          CUDA_R_16BF, 16, CUBLAS_COMPUTE_32F),
                     CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cudaMemset(big, 0, 16 * 8 * 2), cudaSuccess);
    assert_int_equal(GEMM(N, N, 4, 4, 4, &one, big, CUDA_R_16BF, 16, B, 8, &zero, big + 8,
                          CUDA_R_16BF, 16, CUBLAS_COMPUTE_32F),
                     CUBLAS_STATUS_SUCCESS);
    /* the handle's stream must be live when a routine runs on it */
    cudaStream_t gone = NULL;
    assert_int_equal(cudaStreamCreate(&gone), cudaSuccess);
    assert_int_equal(cublasSetStream(h, gone), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cudaStreamDestroy(gone), cudaSuccess);
    assert_int_equal(GEMM(N, N, 4, 4, 4, &one, A, CUDA_R_16BF, 8, B, 8, &zero, C, CUDA_R_32F, 8,
                          CUBLAS_COMPUTE_32F),
                     CUBLAS_STATUS_EXECUTION_FAILED);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
    assert_int_equal(cublasSetStream(h, NULL), CUBLAS_STATUS_SUCCESS);
#undef GEMM
    /* workspace: 256-byte aligned device memory */
    assert_int_equal(cublasSetWorkspace(h, (char *)C + 16, 128), CUBLAS_STATUS_INVALID_VALUE);
    void *pinned = NULL; /* 4 KiB aligned, but host memory */
    assert_int_equal(cudaHostAlloc(&pinned, 256, cudaHostAllocDefault), cudaSuccess);
    assert_int_equal(cublasSetWorkspace(h, pinned, 256), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cudaFreeHost(pinned), cudaSuccess);
    assert_int_equal(cublasSetWorkspace(h, C, 256), CUBLAS_STATUS_SUCCESS);
    assert_string_not_equal(cublasGetStatusString(CUBLAS_STATUS_INVALID_VALUE),
                            cublasGetStatusString(CUBLAS_STATUS_SUCCESS));
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasGemmEx(h, N, N, 4, 4, 4, &one, A, CUDA_R_16BF, 8, B, CUDA_R_16BF, 8,
                                  &zero, C, CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_INITIALIZED); /* destroyed handle */
    assert_int_equal(cudaFree(big), cudaSuccess);
    assert_int_equal(cudaFree(A), cudaSuccess);
    assert_int_equal(cudaFree(B), cudaSuccess);
    assert_int_equal(cudaFree(C), cudaSuccess);
    assert_all_free();
}

/* ---- cuBLASLt ---- */

typedef struct lt_plan {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
} lt_plan;

/* A TN plan as the backend builds it: A stored k x m (ld lda), B stored k x n (ld ldb),
 * C = D m x n (ld ldd); optional bias epilogue. */
static void lt_plan_make(lt_plan *p, int m, int n, int k, int lda, int ldb, int ldd,
                         cudaDataType dt, const void *bias)
{
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    assert_int_equal(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
        CUBLAS_STATUS_SUCCESS);
    assert_int_equal(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
        CUBLAS_STATUS_SUCCESS);
    assert_int_equal(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
        CUBLAS_STATUS_SUCCESS);
    if (bias)
        assert_int_equal(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                        &bias, sizeof bias),
                         CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, (uint64_t)k, (uint64_t)m, lda),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, (uint64_t)k, (uint64_t)n, ldb),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatrixLayoutCreate(&p->lc, dt, (uint64_t)m, (uint64_t)n, ldd),
                     CUBLAS_STATUS_SUCCESS);
}

static void lt_plan_free(lt_plan *p)
{
    assert_int_equal(cublasLtMatrixLayoutDestroy(p->la), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatrixLayoutDestroy(p->lb), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatrixLayoutDestroy(p->lc), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmulDescDestroy(p->desc), CUBLAS_STATUS_SUCCESS);
}

/* Heuristic results for a plan with the given guaranteed alignments; returns the count. */
static int lt_heuristic(cublasLtHandle_t lt, const lt_plan *p, uint32_t al_a, uint32_t al_b,
                        uint32_t al_cd, cublasLtMatmulHeuristicResult_t *res)
{
    cublasLtMatmulPreference_t pref = NULL;
    assert_int_equal(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
    uint64_t ws = 1 << 20;
    const struct {
        cublasLtMatmulPreferenceAttributes_t attr;
        const void *buf;
        size_t size;
    } set[] = {
        {CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_cd, sizeof al_cd},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_cd, sizeof al_cd},
    };
    for (size_t i = 0; i < sizeof set / sizeof set[0]; i++)
        assert_int_equal(
            cublasLtMatmulPreferenceSetAttribute(pref, set[i].attr, set[i].buf, set[i].size),
            CUBLAS_STATUS_SUCCESS);
    int nres = -1;
    memset(res, 0, sizeof *res);
    assert_int_equal(cublasLtMatmulAlgoGetHeuristic(lt, p->desc, p->la, p->lb, p->lc, p->lc, pref,
                                                    1, res, &nres),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmulPreferenceDestroy(pref), CUBLAS_STATUS_SUCCESS);
    assert_true(nres == 0 || nres == 1);
    return nres;
}

/* D = alpha A^T B + beta C + bias (BIAS epilogue, beta = 1, C == D in place) against the
 * definition: cublasLtMatmul "D = alpha * op(A) * op(B) + beta * C"; CUBLASLT_EPILOGUE_BIAS
 * "Bias vector length must match matrix D rows ... broadcasted to all columns". */
static void check_lt_tn_bias(cublasLtHandle_t lt, cudaStream_t s, cudaDataType dt)
{
    const int m = 16, n = 6, k = 24, lda = k + 8, ldb = k + 8, ldd = m + 8;
    const float alpha = 0.5f, beta = 1.0f;
    size_t es = dt == CUDA_R_32F ? 4 : 2;
    uint16_t *A = malloc((size_t)lda * m * 2), *B = malloc((size_t)ldb * n * 2);
    void *D0 = malloc((size_t)ldd * n * es), *D1 = malloc((size_t)ldd * n * es);
    void *bias = malloc((size_t)m * es);
    assert_true(A && B && D0 && D1 && bias);
    for (int i = 0; i < lda * m; i++)
        A[i] = rnd_bf16();
    for (int i = 0; i < ldb * n; i++)
        B[i] = rnd_bf16();
    for (int i = 0; i < ldd * n; i++)
        elem_set(D0, dt, (size_t)i, zi_emu_test_bf2f(rnd_bf16()));
    for (int i = 0; i < m; i++)
        elem_set(bias, dt, (size_t)i, (float)(i - 8));
    void *dA = zi_emu_test_dev_alloc((size_t)lda * m * 2),
         *dB = zi_emu_test_dev_alloc((size_t)ldb * n * 2);
    void *dD = zi_emu_test_dev_alloc((size_t)ldd * n * es),
         *dbias = zi_emu_test_dev_alloc((size_t)m * es);
    to_dev(dA, A, (size_t)lda * m * 2);
    to_dev(dB, B, (size_t)ldb * n * 2);
    to_dev(dD, D0, (size_t)ldd * n * es);
    to_dev(dbias, bias, (size_t)m * es);
    lt_plan p;
    lt_plan_make(&p, m, n, k, lda, ldb, ldd, dt, dbias);
    cublasLtMatmulHeuristicResult_t res;
    assert_int_equal(lt_heuristic(lt, &p, 256, 256, 256, &res), 1);
    assert_int_equal(res.state, CUBLAS_STATUS_SUCCESS);
    assert_true(res.workspaceSize <= (1 << 20));
    assert_int_equal(cublasLtMatmul(lt, p.desc, &alpha, dA, p.la, dB, p.lb, &beta, dD, p.lc, dD,
                                    p.lc, &res.algo, NULL, 0, s),
                     CUBLAS_STATUS_SUCCESS);
    to_host(D1, dD, (size_t)ldd * n * es);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < ldd; i++) {
            size_t at = i + (size_t)j * ldd;
            if (i >= m) {
                assert_memory_equal((char *)D1 + at * es, (char *)D0 + at * es, es);
                continue;
            }
            float d0 = elem_get(D0, dt, at), d1 = elem_get(D1, dt, at);
            float bi = elem_get(bias, dt, (size_t)i);
            double acc = 0, mag = 0;
            for (int q = 0; q < k; q++) { /* op(A) = A^T, op(B) = B */
                double t = (double)op_at(A, lda, 1, i, q) * op_at(B, ldb, 0, q, j);
                acc += t;
                mag += fabs(t);
            }
            double want = alpha * acc + beta * (double)d0 + bi;
            double tol = 1e-5 * (alpha * mag + fabs(d0) + fabs(bi)) + 1e-7;
            if (dt == CUDA_R_16BF) /* bias added before the one rounding of D */
                tol += bf16_half_ulp(want);
            if (fabs((double)d1 - want) > tol)
                fail_msg("Lt TN bias %s: D(%d,%d) = %g, want %g", dt == CUDA_R_32F ? "f32" : "bf16",
                         i, j, (double)d1, want);
        }
    /* algo NULL: the implicit heuristic; beta = 0 leaves C unread */
    const float zero = 0.0f;
    assert_int_equal(cublasLtMatmul(lt, p.desc, &alpha, dA, p.la, dB, p.lb, &zero, dD, p.lc, dD,
                                    p.lc, NULL, NULL, 0, s),
                     CUBLAS_STATUS_SUCCESS);
    to_host(D1, dD, (size_t)ldd * n * es);
    float d1 = elem_get(D1, dt, 0);
    double acc = 0;
    for (int q = 0; q < k; q++)
        acc += (double)op_at(A, lda, 1, 0, q) * op_at(B, ldb, 0, q, 0);
    double want = alpha * acc + elem_get(bias, dt, 0);
    assert_true(fabs((double)d1 - want) <= 1e-4 + fabs(want) / 128.0);
    lt_plan_free(&p);
    assert_int_equal(cudaFree(dA), cudaSuccess);
    assert_int_equal(cudaFree(dB), cudaSuccess);
    assert_int_equal(cudaFree(dD), cudaSuccess);
    assert_int_equal(cudaFree(dbias), cudaSuccess);
    free(A);
    free(B);
    free(D0);
    free(D1);
    free(bias);
}

static void test_lt_tn_bias(void **state)
{
    (void)state;
    cublasLtHandle_t lt = NULL;
    assert_int_equal(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    check_lt_tn_bias(lt, s, CUDA_R_32F);
    check_lt_tn_bias(lt, s, CUDA_R_16BF);
    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    assert_int_equal(cublasLtDestroy(lt), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtDestroy(lt), CUBLAS_STATUS_NOT_INITIALIZED);
    assert_all_free();
}

static void test_lt_rejections(void **state)
{
    (void)state;
    const int m = 16, n = 8, k = 16;
    const float one = 1.0f, zero = 0.0f;
    cublasLtHandle_t lt = NULL;
    assert_int_equal(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
    uint16_t *dA = zi_emu_test_dev_alloc((size_t)k * m * 2),
             *dB = zi_emu_test_dev_alloc((size_t)k * n * 2);
    uint16_t *dD = zi_emu_test_dev_alloc((size_t)m * n * 2),
             *dbias = zi_emu_test_dev_alloc((size_t)m * 2 + 16);
    assert_int_equal(cudaMemset(dA, 0, (size_t)k * m * 2), cudaSuccess);
    assert_int_equal(cudaMemset(dB, 0, (size_t)k * n * 2), cudaSuccess);
    uint16_t sentinel[16 * 8], back[16 * 8];
    for (int i = 0; i < m * n; i++)
        sentinel[i] = 0x3f80; /* 1.0 */
    to_dev(dD, sentinel, sizeof sentinel);
    cublasLtMatmulHeuristicResult_t res, good;
    lt_plan p;

    /* a good plan first: its algo is reused below against bad pointers */
    lt_plan_make(&p, m, n, k, k, k, m, CUDA_R_16BF, NULL);
    assert_int_equal(lt_heuristic(lt, &p, 256, 256, 256, &good), 1);
    /* requestedAlgoCount <= 0 */
    int nres = -1;
    cublasLtMatmulPreference_t pref = NULL;
    assert_int_equal(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(
        cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.la, p.lb, p.lc, p.lc, pref, 0, &res, &nres),
        CUBLAS_STATUS_INVALID_VALUE);
    uint32_t four = 4;
    assert_int_equal(cublasLtMatmulPreferenceSetAttribute(
                         pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &four, sizeof four),
                     CUBLAS_STATUS_INVALID_VALUE); /* uint64_t attribute given 4 bytes */
    /* attribute sizes and unknown attributes of the descriptor */
    int64_t wide = CUBLAS_OP_T;
    assert_int_equal(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof wide),
        CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, NULL, 4),
                     CUBLAS_STATUS_INVALID_VALUE);
    void *aux = dD;
    assert_int_equal(cublasLtMatmulDescSetAttribute(
                         p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    /* operands less aligned than the algorithm was chosen for */
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA + 4, p.la, dB, p.lb, &zero, dD, p.lc, dD,
                                    p.lc, &good.algo, NULL, 0, NULL),
                     CUBLAS_STATUS_INVALID_VALUE);
    /* an algo the library did not produce */
    cublasLtMatmulAlgo_t foreign;
    memset(&foreign, 0, sizeof foreign);
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, dB, p.lb, &zero, dD, p.lc, dD, p.lc,
                                    &foreign, NULL, 0, NULL),
                     CUBLAS_STATUS_INVALID_VALUE);
    /* D sharing memory with A */
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, dB, p.lb, &zero, dA, p.lc, dA, p.lc,
                                    &good.algo, NULL, 0, NULL),
                     CUBLAS_STATUS_INVALID_VALUE);
    /* a host operand: the GPU would fault */
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, sentinel, p.lb, &zero, dD, p.lc, dD,
                                    p.lc, &good.algo, NULL, 0, NULL),
                     CUBLAS_STATUS_EXECUTION_FAILED);
    assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress);
    /* guaranteed alignment below the algorithm's 16 bytes: no algorithm */
    assert_int_equal(lt_heuristic(lt, &p, 8, 256, 256, &res), 0);
    assert_int_equal(lt_heuristic(lt, &p, 256, 256, 4, &res), 0);
    lt_plan_free(&p);

    /* bias epilogue: misaligned bias, a bias of another type, no bias at all */
    lt_plan_make(&p, m, n, k, k, k, m, CUDA_R_16BF, dbias + 1);
    assert_int_equal(lt_heuristic(lt, &p, 256, 256, 256, &res), 0);
    lt_plan_free(&p);
    lt_plan_make(&p, m, n, k, k, k, m, CUDA_R_16BF, dbias);
    assert_int_equal(lt_heuristic(lt, &p, 256, 256, 256, &res), 1);
    int32_t f32 = CUDA_R_32F;
    assert_int_equal(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                    &f32, sizeof f32),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(lt_heuristic(lt, &p, 256, 256, 256, &res), 0);
    int32_t bf = CUDA_R_16BF;
    assert_int_equal(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bf, sizeof bf),
        CUBLAS_STATUS_SUCCESS);
    const void *nobias = NULL;
    assert_int_equal(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                    &nobias, sizeof nobias),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, dB, p.lb, &zero, dD, p.lc, dD, p.lc,
                                    NULL, NULL, 0, NULL),
                     CUBLAS_STATUS_INVALID_VALUE);
    lt_plan_free(&p);

    /* columns not 16-byte aligned (k = 12 bf16 = 24 bytes): no algorithm */
    lt_plan_make(&p, m, n, 12, 12, 12, m, CUDA_R_16BF, NULL);
    assert_int_equal(lt_heuristic(lt, &p, 256, 256, 256, &res), 0);
    lt_plan_free(&p);

    /* unsupported types: A in f32 - success, no algorithm; the matmul itself refuses */
    lt_plan_make(&p, m, n, k, k, k, m, CUDA_R_16BF, NULL);
    cublasLtMatrixLayout_t la32 = NULL;
    assert_int_equal(cublasLtMatrixLayoutCreate(&la32, CUDA_R_32F, (uint64_t)k, (uint64_t)m, k),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatrixLayoutDestroy(p.la), CUBLAS_STATUS_SUCCESS);
    p.la = la32;
    assert_int_equal(lt_heuristic(lt, &p, 256, 256, 256, &res), 0);
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, dB, p.lb, &zero, dD, p.lc, dD, p.lc,
                                    NULL, NULL, 0, NULL),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    lt_plan_free(&p);

    /* layouts that do not fit D = op(A) op(B) + C: INVALID_VALUE, D untouched */
    const int bad[4][6] = {
        /* A rows, A cols, B rows, B cols, D rows, lda */
        {k + 1, m, k, n, m, k + 1}, /* A's k differs from B's */
        {k, m + 1, k, n, m, k},     /* op(A) has m + 1 rows, D has m */
        {k, m, k, n + 1, m, k},     /* op(B) has n + 1 columns */
        {k, m, k, n, m, k - 1},     /* lda < rows */
    };
    for (int c = 0; c < 4; c++) {
        lt_plan q;
        lt_plan_make(&q, m, n, k, k, k, m, CUDA_R_16BF, NULL);
        assert_int_equal(cublasLtMatrixLayoutDestroy(q.la), CUBLAS_STATUS_SUCCESS);
        assert_int_equal(cublasLtMatrixLayoutDestroy(q.lb), CUBLAS_STATUS_SUCCESS);
        assert_int_equal(cublasLtMatrixLayoutCreate(&q.la, CUDA_R_16BF, (uint64_t)bad[c][0],
                                                    (uint64_t)bad[c][1], bad[c][5]),
                         CUBLAS_STATUS_SUCCESS);
        assert_int_equal(cublasLtMatrixLayoutCreate(&q.lb, CUDA_R_16BF, (uint64_t)bad[c][2],
                                                    (uint64_t)bad[c][3], bad[c][2]),
                         CUBLAS_STATUS_SUCCESS);
        nres = -1;
        assert_int_equal(cublasLtMatmulAlgoGetHeuristic(lt, q.desc, q.la, q.lb, q.lc, q.lc, pref, 1,
                                                        &res, &nres),
                         CUBLAS_STATUS_INVALID_VALUE);
        assert_int_equal(cublasLtMatmul(lt, q.desc, &one, dA, q.la, dB, q.lb, &zero, dD, q.lc, dD,
                                        q.lc, &good.algo, NULL, 0, NULL),
                         CUBLAS_STATUS_INVALID_VALUE);
        lt_plan_free(&q);
    }
    /* C and D of different shapes */
    lt_plan_make(&p, m, n, k, k, k, m, CUDA_R_16BF, NULL);
    cublasLtMatrixLayout_t lc2 = NULL;
    assert_int_equal(cublasLtMatrixLayoutCreate(&lc2, CUDA_R_16BF, (uint64_t)m, (uint64_t)n - 1, m),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, dB, p.lb, &zero, dD, lc2, dD, p.lc,
                                    NULL, NULL, 0, NULL),
                     CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasLtMatrixLayoutDestroy(lc2), CUBLAS_STATUS_SUCCESS);
    /* in place (C == D) needs C's layout to equal D's */
    assert_int_equal(cublasLtMatrixLayoutCreate(&lc2, CUDA_R_16BF, (uint64_t)m, (uint64_t)n, m + 8),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, dB, p.lb, &zero, dD, lc2, dD, p.lc,
                                    NULL, NULL, 0, NULL),
                     CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasLtMatrixLayoutDestroy(lc2), CUBLAS_STATUS_SUCCESS);
    /* a dead stream: the launch fails */
    cudaStream_t gone = NULL;
    assert_int_equal(cudaStreamCreate(&gone), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(gone), cudaSuccess);
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, dB, p.lb, &zero, dD, p.lc, dD, p.lc,
                                    NULL, NULL, 0, gone),
                     CUBLAS_STATUS_EXECUTION_FAILED);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
    to_host(back, dD, sizeof back);
    assert_memory_equal(back, sentinel, sizeof back); /* no rejected call wrote D */
    /* dead descriptors and handles */
    cublasLtMatrixLayout_t dead = p.lb;
    assert_int_equal(cublasLtMatrixLayoutDestroy(p.lb), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtMatrixLayoutDestroy(dead), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasLtMatmul(lt, p.desc, &one, dA, p.la, dB, dead, &zero, dD, p.lc, dD, p.lc,
                                    NULL, NULL, 0, NULL),
                     CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasLtMatrixLayoutCreate(&p.lb, CUDA_R_16BF, (uint64_t)k, (uint64_t)n, k),
                     CUBLAS_STATUS_SUCCESS);
    lt_plan_free(&p);
    assert_int_equal(cublasLtMatmulPreferenceDestroy(pref), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasLtDestroy(lt), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(
        cublasLtMatmulAlgoGetHeuristic(lt, NULL, NULL, NULL, NULL, NULL, NULL, 1, &res, &nres),
        CUBLAS_STATUS_NOT_INITIALIZED);
    assert_int_equal(cudaFree(dA), cudaSuccess);
    assert_int_equal(cudaFree(dB), cudaSuccess);
    assert_int_equal(cudaFree(dD), cudaSuccess);
    assert_int_equal(cudaFree(dbias), cudaSuccess);
    assert_all_free();
}

/* ---- driver VMM ---- */

typedef struct drv {
    PFN_cuDeviceGet_v2000 DeviceGet;
    PFN_cuDeviceGetAttribute_v2000 DeviceGetAttribute;
    PFN_cuMemGetAllocationGranularity_v10020 Granularity;
    PFN_cuMemAddressReserve_v10020 Reserve;
    PFN_cuMemAddressFree_v10020 AddressFree;
    PFN_cuMemCreate_v10020 Create;
    PFN_cuMemRelease_v10020 Release;
    PFN_cuMemMap_v10020 Map;
    PFN_cuMemUnmap_v10020 Unmap;
    PFN_cuMemSetAccess_v10020 SetAccess;
    PFN_cuGetErrorString_v6000 ErrorString;
} drv;

/* The entry point of `name` as cuda_vmm.c asks for it; NULL with *q when not found. */
static void *sym(const char *name, unsigned version, enum cudaDriverEntryPointQueryResult *q)
{
    void *fn = (void *)&rng_state; /* must be overwritten */
    assert_int_equal(cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, q),
                     cudaSuccess);
    return fn;
}

#define DRV_GET(d, field, name)                                                                    \
    do {                                                                                           \
        enum cudaDriverEntryPointQueryResult q_ = cudaDriverEntryPointSymbolNotFound;              \
        void *p_ = sym(name, 12000, &q_);                                                          \
        assert_int_equal(q_, cudaDriverEntryPointSuccess);                                         \
        assert_non_null(p_);                                                                       \
        memcpy(&(d)->field, &p_, sizeof p_);                                                       \
    } while (0)

static void drv_load(drv *d)
{
    DRV_GET(d, DeviceGet, "cuDeviceGet");
    DRV_GET(d, DeviceGetAttribute, "cuDeviceGetAttribute");
    DRV_GET(d, Granularity, "cuMemGetAllocationGranularity");
    DRV_GET(d, Reserve, "cuMemAddressReserve");
    DRV_GET(d, AddressFree, "cuMemAddressFree");
    DRV_GET(d, Create, "cuMemCreate");
    DRV_GET(d, Release, "cuMemRelease");
    DRV_GET(d, Map, "cuMemMap");
    DRV_GET(d, Unmap, "cuMemUnmap");
    DRV_GET(d, SetAccess, "cuMemSetAccess");
    DRV_GET(d, ErrorString, "cuGetErrorString");
}

static CUmemAllocationProp dev_prop(int id)
{
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = id;
    return p;
}

static CUmemAccessDesc rw_access(int id)
{
    CUmemAccessDesc a;
    memset(&a, 0, sizeof a);
    a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    a.location.id = id;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    return a;
}

static size_t free_bytes(void)
{
    size_t fr = 0, tot = 0;
    assert_int_equal(cudaMemGetInfo(&fr, &tot), cudaSuccess);
    return fr;
}

static void test_vmm_flow(void **state)
{
    (void)state;
    drv d;
    drv_load(&d);
    CUdevice dev = -1;
    int v = -1;
    assert_int_equal(d.DeviceGet(&dev, 0), CUDA_SUCCESS);
    assert_int_equal(dev, 0);
    assert_int_equal(d.DeviceGet(&dev, 1), CUDA_ERROR_INVALID_DEVICE);
    assert_int_equal(
        d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev),
        CUDA_SUCCESS);
    assert_int_equal(v, 1);
    CUmemAllocationProp prop = dev_prop(0);
    size_t g = 0, gr = 0;
    assert_int_equal(d.Granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
    assert_int_equal(d.Granularity(&gr, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED), CUDA_SUCCESS);
    assert_int_equal(g, 2 * MIB);
    assert_int_equal(gr, g);

    CUdeviceptr base = 0;
    assert_int_equal(d.Reserve(&base, 4 * g, 0, 0, 0), CUDA_SUCCESS);
    assert_true(base != 0 && base % g == 0);
    char *b = (char *)(uintptr_t)base;
    assert_false(zi_emu_is_device_range(b, 1)); /* reserved, nothing mapped */
    size_t fr0 = free_bytes();
    CUmemGenericAllocationHandle h1 = 0, h2 = 0;
    assert_int_equal(d.Create(&h1, g, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(free_bytes(), fr0 - g); /* physical memory counts against the device */
    assert_int_equal(d.Map(base + g, g, 0, h1, 0), CUDA_SUCCESS);
    /* "calling cuMemMap does not make the address accessible" */
    assert_false(zi_emu_is_device_range(b + g, 1));
    assert_int_equal(cudaMemset(b + g, 0, g), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    CUmemAccessDesc acc = rw_access(0);
    assert_int_equal(d.SetAccess(base + g, g, &acc, 1), CUDA_SUCCESS);
    assert_true(zi_emu_is_device_range(b + g, g));
    assert_false(zi_emu_is_device_range(b + g, g + 1));
    /* the memory is usable: runtime copies and direct access agree */
    assert_int_equal(cudaMemset(b + g, 0x5a, g), cudaSuccess);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess); /* the memset is queued */
    b[g + 100] = 7;
    unsigned char probe[128];
    assert_int_equal(cudaMemcpy(probe, b + g + 64, sizeof probe, cudaMemcpyDeviceToHost),
                     cudaSuccess);
    for (int i = 0; i < 128; i++)
        assert_int_equal(probe[i], i == 36 ? 7 : 0x5a);

    /* a second allocation right after the first: one contiguous device range */
    assert_int_equal(d.Create(&h2, g, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(d.Map(base + 2 * g, g, 0, h2, 0), CUDA_SUCCESS);
    assert_int_equal(d.SetAccess(base + g, 2 * g, &acc, 1), CUDA_SUCCESS); /* both mappings */
    assert_true(zi_emu_is_device_range(b + g, 2 * g));
    assert_false(zi_emu_is_device_range(b + 2 * g, 2 * g)); /* runs into unmapped space */
    assert_int_equal((unsigned char)b[2 * g + 5], 0xff);    /* new memory is not cleared */
    assert_int_equal(cudaMemcpy(b + 2 * g - 64, probe, sizeof probe, cudaMemcpyHostToDevice),
                     cudaSuccess);                          /* a copy across the two mappings */
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess); /* pageable: the write is queued */
    assert_memory_equal(b + 2 * g - 64, probe, sizeof probe);

    /* release while mapped: "The generic memory handle can be freed when there are still
     * outstanding mappings" - the memory stays until the unmap */
    assert_int_equal(d.Release(h1), CUDA_SUCCESS);
    assert_int_equal(free_bytes(), fr0 - 2 * g);
    assert_int_equal(b[g + 100], 7);
    assert_int_equal(d.Unmap(base + g, g), CUDA_SUCCESS);
    assert_int_equal(free_bytes(), fr0 - g); /* now freed */
    assert_false(zi_emu_is_device_range(b + g, 1));
    assert_true(zi_emu_is_device_range(b + 2 * g, g));
    /* unmap first, release second */
    assert_int_equal(d.Unmap(base + 2 * g, g), CUDA_SUCCESS);
    assert_int_equal(free_bytes(), fr0 - g);
    assert_int_equal(d.Release(h2), CUDA_SUCCESS);
    assert_int_equal(free_bytes(), fr0);
    /* the range is a reservation again: map a handle there anew */
    assert_int_equal(d.Create(&h1, 2 * g, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(d.Map(base, 2 * g, 0, h1, 0), CUDA_SUCCESS);
    assert_int_equal(d.SetAccess(base, 2 * g, &acc, 1), CUDA_SUCCESS);
    assert_int_equal(cudaMemset(b, 1, 2 * g), cudaSuccess);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess); /* the memset must be done first */
    assert_int_equal(d.Unmap(base, 2 * g), CUDA_SUCCESS);
    assert_int_equal(d.Release(h1), CUDA_SUCCESS);
    assert_int_equal(d.AddressFree(base, 4 * g), CUDA_SUCCESS);
    assert_all_free();
}

static void test_vmm_misuse(void **state)
{
    (void)state;
    drv d;
    drv_load(&d);
    const size_t g = 2 * MIB;
    CUmemAllocationProp prop = dev_prop(0), prop1 = dev_prop(1), badtype = dev_prop(0);
    badtype.type = CU_MEM_ALLOCATION_TYPE_INVALID;
    CUdeviceptr base = 0, other = 0;
    assert_int_equal(d.Reserve(&base, 0, 0, 0, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Reserve(&base, 4 * g + 1, 0, 0, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Reserve(&base, 4 * g, 3 * 4096, 0, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Reserve(&base, 4 * g, 0, 0, 1), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Reserve(&base, 4 * g, 0, 0, 0), CUDA_SUCCESS);
    assert_int_equal(d.Reserve(&other, 2 * g, 4 * g, 0, 0), CUDA_SUCCESS);
    assert_true(other % (4 * g) == 0);

    CUmemGenericAllocationHandle h = 0, h4 = 0, hx = 0;
    size_t fr0 = free_bytes();
    assert_int_equal(d.Create(&hx, g + g / 2, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Create(&hx, g, &prop, 1), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Create(&hx, g, &prop1, 0), CUDA_ERROR_INVALID_DEVICE);
    assert_int_equal(d.Create(&hx, g, &badtype, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Create(&hx, TEST_DEVICE_MEMORY + g, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    assert_int_equal(free_bytes(), fr0);
    assert_int_equal(d.Create(&h, g, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(d.Create(&h4, 2 * g, &prop, 0), CUDA_SUCCESS);
    /* cuMemMap: granularity multiples, offset 0, inside one reservation, not mapped yet */
    assert_int_equal(d.Map(base + 4096, g, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Map(base, g / 2, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Map(base, g, g, h4, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Map(base, g, 0, h, 1), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Map(base + 4 * g, g, 0, h, 0), CUDA_ERROR_INVALID_VALUE); /* past end */
    assert_int_equal(d.Map(base + 3 * g, 2 * g, 0, h4, 0),
                     CUDA_ERROR_INVALID_VALUE);                              /* straddles */
    assert_int_equal(d.Map(base, 2 * g, 0, h, 0), CUDA_ERROR_INVALID_VALUE); /* > allocation */
    assert_int_equal(d.Map(base, g, 0, 987654321ULL, 0), CUDA_ERROR_INVALID_VALUE);
    void *host = malloc(4 * g);
    assert_non_null(host);
    CUdeviceptr hostp = ((CUdeviceptr)(uintptr_t)host + g - 1) / g * g;
    assert_int_equal(d.Map(hostp, g, 0, h, 0), CUDA_ERROR_INVALID_VALUE); /* not reserved */
    free(host);
    assert_int_equal(d.Map(base, g, 0, h, 0), CUDA_SUCCESS);
    assert_int_equal(d.Map(base, g, 0, h, 0), CUDA_ERROR_INVALID_VALUE);      /* double map */
    assert_int_equal(d.Map(base, 2 * g, 0, h4, 0), CUDA_ERROR_INVALID_VALUE); /* overlaps */
    /* cuMemSetAccess: exactly whole mappings, device 0, known flags */
    CUmemAccessDesc acc = rw_access(0), acc1 = rw_access(1), badflags = rw_access(0);
    badflags.flags = (CUmemAccess_flags)2;
    assert_int_equal(d.SetAccess(base + g, g, &acc, 1), CUDA_ERROR_INVALID_VALUE); /* unmapped */
    assert_int_equal(d.SetAccess(base, 2 * g, &acc, 1), CUDA_ERROR_INVALID_VALUE); /* beyond */
    assert_int_equal(d.SetAccess(base, g / 2, &acc, 1), CUDA_ERROR_INVALID_VALUE); /* partial */
    assert_int_equal(d.SetAccess(base, g, &acc1, 1), CUDA_ERROR_INVALID_DEVICE);
    assert_int_equal(d.SetAccess(base, g, &badflags, 1), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.SetAccess(base, g, &acc, 0), CUDA_ERROR_INVALID_VALUE);
    assert_false(zi_emu_is_device_range((void *)(uintptr_t)base, 1));
    /* read-only access: a device range for reads, not a copy destination */
    CUmemAccessDesc ro = rw_access(0);
    ro.flags = CU_MEM_ACCESS_FLAGS_PROT_READ;
    assert_int_equal(d.SetAccess(base, g, &ro, 1), CUDA_SUCCESS);
    assert_true(zi_emu_is_device_range((void *)(uintptr_t)base, g));
    unsigned char byte = 0;
    assert_int_equal(cudaMemcpy((void *)(uintptr_t)base, &byte, 1, cudaMemcpyHostToDevice),
                     cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(&byte, (void *)(uintptr_t)base, 1, cudaMemcpyDeviceToHost),
                     cudaSuccess);
    assert_int_equal(byte, 0xff);
    /* reserved address space is not host memory either */
    assert_int_equal(cudaMemcpy((void *)(uintptr_t)(base + g), &byte, 1, cudaMemcpyHostToHost),
                     cudaErrorInvalidValue);
    /* cuMemUnmap: whole mappings only */
    assert_int_equal(d.Unmap(base, g / 2), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Unmap(base + g, g), CUDA_ERROR_INVALID_VALUE);
    /* cuMemAddressFree: the reserved size, and nothing mapped */
    assert_int_equal(d.AddressFree(base, 2 * g), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.AddressFree(base, 4 * g), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.AddressFree(base + g, 3 * g), CUDA_ERROR_INVALID_VALUE);
    /* cuMemRelease: once; a released handle cannot be mapped again */
    assert_int_equal(d.Release(h), CUDA_SUCCESS);
    assert_int_equal(d.Release(h), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Map(base + 2 * g, g, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(d.Unmap(base, g), CUDA_SUCCESS);
    assert_int_equal(d.Release(h4), CUDA_SUCCESS);
    assert_int_equal(d.AddressFree(base, 4 * g), CUDA_SUCCESS);
    assert_int_equal(d.AddressFree(base, 4 * g), CUDA_ERROR_INVALID_VALUE); /* freed already */
    assert_int_equal(d.AddressFree(other, 2 * g), CUDA_SUCCESS);

    /* error strings: known codes, and NULL for unknown ones */
    const char *str = NULL;
    assert_int_equal(d.ErrorString(CUDA_ERROR_INVALID_VALUE, &str), CUDA_SUCCESS);
    assert_string_equal(str, "invalid argument");
    assert_int_equal(d.ErrorString(CUDA_ERROR_OUT_OF_MEMORY, &str), CUDA_SUCCESS);
    assert_string_equal(str, "out of memory");
    assert_int_equal(d.ErrorString((CUresult)77777, &str), CUDA_ERROR_INVALID_VALUE);
    assert_null(str);

    /* entry points: versions and unknown names */
    enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSuccess;
    assert_null(sym("cuMemCreate", 10010, &q)); /* introduced in 10.2 */
    assert_int_equal(q, cudaDriverEntryPointVersionNotSufficent);
    assert_null(sym("cuNoSuchFunction", 12000, &q));
    assert_int_equal(q, cudaDriverEntryPointSymbolNotFound);
    void *fn = NULL;
    assert_int_equal(
        cudaGetDriverEntryPointByVersion("cuMemCreate", &fn, 99000, cudaEnableDefault, &q),
        cudaErrorInvalidValue); /* newer than the driver */
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    assert_all_free();
}

/* ZI_EMU_NO_VMM: the backend's cudaMalloc fallback must be reachable. */
static void test_no_vmm_env(void **state)
{
    (void)state;
    enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSuccess;
    setenv("ZI_EMU_NO_VMM", "1", 1);
    assert_null(sym("cuMemCreate", 12000, &q));
    assert_int_equal(q, cudaDriverEntryPointSymbolNotFound);
    assert_null(sym("cuMemAddressReserve", 12000, &q));
    assert_non_null(sym("cuGetErrorString", 12000, &q)); /* the rest of the driver is there */
    assert_int_equal(q, cudaDriverEntryPointSuccess);
    setenv("ZI_EMU_NO_VMM", "attr", 1);
    drv d;
    drv_load(&d);
    int v = -1;
    assert_int_equal(
        d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0),
        CUDA_SUCCESS);
    assert_int_equal(v, 0);
    unsetenv("ZI_EMU_NO_VMM");
    assert_int_equal(
        d.DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0),
        CUDA_SUCCESS);
    assert_int_equal(v, 1);
    assert_non_null(sym("cuMemCreate", 12000, &q));
    assert_int_equal(q, cudaDriverEntryPointSuccess);
}

/* A sticky fault (zi_emu_context_lost, what a faulting kernel calls): queued work no longer
 * runs, every call that touches the device returns the fault, cudaGetLastError does not
 * clear it; the driver's mappings fail too. zi_emu_context_revive() ends it (tests only). */
static void test_context_lost(void **state)
{
    (void)state;
    drv d;
    drv_load(&d);
    unsigned char *p = zi_emu_test_dev_alloc(4096), host[16] = {0};
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    cudaEvent_t ev;
    assert_int_equal(cudaEventCreate(&ev), cudaSuccess);
    assert_int_equal(cudaMemsetAsync(p, 1, 4096, s), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_int_equal(cudaMemsetAsync(p, 2, 4096, s), cudaSuccess); /* queued, not run */
    /* what teardown releases after the fault: memory, a stream, an event, pinned memory and
     * a VMM reservation with one mapping */
    unsigned char *p2 = zi_emu_test_dev_alloc(4096);
    cudaStream_t s2 = zi_emu_test_stream_new(cudaStreamNonBlocking);
    cudaEvent_t ev2;
    assert_int_equal(cudaEventCreate(&ev2), cudaSuccess);
    void *pinned = NULL;
    assert_int_equal(cudaMallocHost(&pinned, 4096), cudaSuccess);
    CUmemAllocationProp prop = dev_prop(0);
    CUdeviceptr base = 0;
    CUmemGenericAllocationHandle hm = 0;
    assert_int_equal(d.Reserve(&base, 2 * MIB, 0, 0, 0), CUDA_SUCCESS);
    assert_int_equal(d.Create(&hm, 2 * MIB, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(d.Map(base, 2 * MIB, 0, hm, 0), CUDA_SUCCESS);

    zi_emu_context_lost(cudaErrorIllegalAddress, "test_context_lost");
    assert_int_equal(cudaStreamSynchronize(s), cudaErrorIllegalAddress);
    assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress);
    assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress); /* sticky: not cleared */
    assert_int_equal(cudaPeekAtLastError(), cudaErrorIllegalAddress);
    assert_int_equal(cudaDeviceSynchronize(), cudaErrorIllegalAddress);
    assert_int_equal(cudaStreamQuery(s), cudaErrorIllegalAddress);
    assert_int_equal(cudaEventRecord(ev, s), cudaErrorIllegalAddress);
    assert_int_equal(cudaMemcpy(host, p, sizeof host, cudaMemcpyDeviceToHost),
                     cudaErrorIllegalAddress);
    assert_int_equal(host[0], 0); /* nothing copied */
    assert_int_equal(cudaMemsetAsync(p, 3, 16, s), cudaErrorIllegalAddress);
    void *q = NULL;
    assert_int_equal(cudaMalloc(&q, 256), cudaErrorIllegalAddress);
    size_t fr = 0, tot = 0;
    assert_int_equal(cudaMemGetInfo(&fr, &tot), cudaErrorIllegalAddress);
    CUmemGenericAllocationHandle h = 0;
    assert_int_equal(d.Create(&h, 2 * MIB, &prop, 0), CUDA_ERROR_ILLEGAL_ADDRESS);
    /* the releases report the fault, as a GPU's do (teardown must not count on success);
     * the emulator frees what they name all the same */
    assert_int_equal(cudaFree(p2), cudaErrorIllegalAddress);
    assert_int_equal(cudaStreamDestroy(s2), cudaErrorIllegalAddress);
    assert_int_equal(cudaEventDestroy(ev2), cudaErrorIllegalAddress);
    assert_int_equal(cudaFreeHost(pinned), cudaErrorIllegalAddress);
    assert_int_equal(d.Unmap(base, 2 * MIB), CUDA_ERROR_ILLEGAL_ADDRESS);
    assert_int_equal(d.Release(hm), CUDA_ERROR_ILLEGAL_ADDRESS);
    assert_int_equal(d.AddressFree(base, 2 * MIB), CUDA_ERROR_ILLEGAL_ADDRESS);
    /* released all the same: a second release is a misuse, not the fault */
    assert_int_equal(cudaFree(p2), cudaErrorInvalidValue);
    assert_int_equal(d.Release(hm), CUDA_ERROR_INVALID_VALUE);

    zi_emu_context_revive();
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    /* the memset queued before the fault never ran: the first one's bytes are there */
    assert_int_equal(cudaMemcpy(host, p, sizeof host, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_int_equal(host[0], 1);
    assert_int_equal(cudaEventDestroy(ev), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    assert_int_equal(cudaFree(p), cudaSuccess);
    assert_int_equal(free_bytes(), (size_t)TEST_DEVICE_MEMORY);
}

int main(void)
{
    /* before the emulator's first call: it reads the device size once */
    setenv("ZI_EMU_DEVICE_MEMORY", "67108864", 1);
    unsetenv("ZI_EMU_NO_VMM");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_queries),    cmocka_unit_test(test_last_error),
        cmocka_unit_test(test_malloc_free_info),  cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_memcpy_directions), cmocka_unit_test(test_streams_events),
        cmocka_unit_test(test_func_attributes),   cmocka_unit_test(test_gemm_ex),
        cmocka_unit_test(test_gemm_ex_rules),     cmocka_unit_test(test_lt_tn_bias),
        cmocka_unit_test(test_lt_rejections),     cmocka_unit_test(test_vmm_flow),
        cmocka_unit_test(test_vmm_misuse),        cmocka_unit_test(test_no_vmm_env),
        cmocka_unit_test(test_context_lost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
