/*
 * test_emu_async.c - the CUDA emulator's stream queues (emu_runtime.c, "stream queues"):
 * work queued on a stream is not done until the host waits for it, as on a GPU, so the
 * backend's host/device ordering bugs show in CI.
 *
 * Covered: an async copy into pinned memory is not visible before cudaStreamSynchronize
 * and is after; a pinned source is read when the stream gets there (a host refill before
 * the wait is what gets copied) while a pageable one is read at the call; a device ->
 * pageable copy returns done; an event wait runs the stream up to the event only, queries
 * answer cudaErrorNotReady and make progress; cudaStreamWaitEvent orders one stream after
 * another's capture (not its later work); a kernel launch's effect shows only after a
 * wait (and pinned host memory is a valid kernel argument); cudaMemcpy waits for the legacy
 * stream and the blocking streams but not for a cudaStreamNonBlocking one, and its
 * pageable -> device write is queued there; cudaMemset is
 * queued; cudaFree waits for the device; a destroyed stream's work still runs; event times
 * measure the emulated device; queued work on memory unmapped meanwhile aborts with a
 * message; ZI_EMU_SYNC=1 (this program run again in a child) makes everything immediate
 * (when the whole program runs with ZI_EMU_SYNC=1, only that is checked). Order between
 * streams: by default a read that does not wait for another stream's write runs first (the
 * bug shows) while an overwrite that does not wait for another stream's read runs late (it
 * hides); ZI_EMU_ORDER=ahead (a child) runs the other streams first, so that one shows and
 * waits still order both; an unknown ZI_EMU_ORDER aborts.
 * Device memory is host memory in the emulator: the tests peek at it directly to see
 * whether queued work has run. Reference: CUDA Runtime API, "API synchronization
 * behavior" and "Stream synchronization behavior".
 */
#include "emu.h"
#include "tensor.h"
#include "zi_cuda_launch.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "emu_test.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define N 4096

static void *pinned_alloc(size_t bytes)
{
    void *p = NULL;
    assert_int_equal(cudaHostAlloc(&p, bytes, cudaHostAllocDefault), cudaSuccess);
    return p;
}

/* 1 when all n bytes of p are v. */
static int all_bytes(const void *p, int v, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)v)
            return 0;
    return 1;
}

/* d (device) = n bytes of v, done. */
static void dev_fill(void *d, int v, size_t n)
{
    assert_int_equal(cudaMemset(d, v, n), cudaSuccess);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_true(all_bytes(d, v, n));
}

static void test_copies(void **state)
{
    (void)state;
    unsigned char *d = zi_emu_test_dev_alloc(N), *pin = pinned_alloc(N), page[N];
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    dev_fill(d, 0xa1, N);

    /* device -> pinned: queued until the stream is waited for */
    memset(pin, 0x11, N);
    unsigned long long before = zi_emu_pending();
    assert_int_equal(cudaMemcpyAsync(pin, d, N, cudaMemcpyDeviceToHost, s), cudaSuccess);
    assert_true(zi_emu_pending() > before);
    assert_true(all_bytes(pin, 0x11, N));
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_true(all_bytes(pin, 0xa1, N));
    assert_int_equal(zi_emu_pending(), 0);

    /* pinned -> device: the GPU reads the buffer when it gets there, so a refill before
     * the wait is what arrives (the staging bug this catches) */
    memset(pin, 0x22, N);
    assert_int_equal(cudaMemcpyAsync(d, pin, N, cudaMemcpyHostToDevice, s), cudaSuccess);
    memset(pin, 0x33, N);
    assert_true(all_bytes(d, 0xa1, N));
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_true(all_bytes(d, 0x33, N));

    /* pageable -> device: staged at the call, so the caller may reuse its buffer at once */
    memset(page, 0x44, N);
    assert_int_equal(cudaMemcpyAsync(d, page, N, cudaMemcpyHostToDevice, s), cudaSuccess);
    memset(page, 0x55, N);
    assert_true(all_bytes(d, 0x33, N)); /* the device write itself is queued */
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_true(all_bytes(d, 0x44, N));

    /* device -> pageable: returns once done (after the stream's earlier work) */
    assert_int_equal(cudaMemsetAsync(d, 0x66, N, s), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(page, d, N, cudaMemcpyDeviceToHost, s), cudaSuccess);
    assert_true(all_bytes(page, 0x66, N));
    assert_int_equal(zi_emu_pending(), 0);

    /* argument errors are still reported at the call, nothing queued */
    assert_int_equal(cudaMemcpyAsync(d, page, N + 1, cudaMemcpyHostToDevice, s),
                     cudaErrorInvalidValue);
    assert_int_equal(zi_emu_pending(), 0);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);

    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    assert_int_equal(cudaFreeHost(pin), cudaSuccess);
    assert_int_equal(cudaFree(d), cudaSuccess);
}

static void test_events(void **state)
{
    (void)state;
    unsigned char *d = zi_emu_test_dev_alloc(N), *p1 = pinned_alloc(N), *p2 = pinned_alloc(N);
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    cudaEvent_t ev = NULL, e0 = NULL, e1 = NULL;
    assert_int_equal(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    assert_int_equal(cudaEventCreate(&e0), cudaSuccess);
    assert_int_equal(cudaEventCreate(&e1), cudaSuccess);
    dev_fill(d, 0x5c, N);
    memset(p1, 0, N);
    memset(p2, 0, N);

    /* an event wait runs the stream up to the event, not beyond */
    assert_int_equal(cudaEventRecord(e0, s), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(p1, d, N, cudaMemcpyDeviceToHost, s), cudaSuccess);
    assert_int_equal(cudaEventRecord(ev, s), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(p2, d, N, cudaMemcpyDeviceToHost, s), cudaSuccess);
    assert_int_equal(cudaEventRecord(e1, s), cudaSuccess);
    float ms = -1.0f;
    assert_int_equal(cudaEventElapsedTime(&ms, e0, e1), cudaErrorNotReady);
    assert_int_equal(cudaEventSynchronize(ev), cudaSuccess);
    assert_true(all_bytes(p1, 0x5c, N));
    assert_true(all_bytes(p2, 0, N));
    assert_int_equal(cudaEventQuery(ev), cudaSuccess);
    /* queries: "not ready" while work is queued, and each one makes progress */
    int polls = 0;
    while (cudaEventQuery(e1) == cudaErrorNotReady)
        assert_true(++polls < 10);
    assert_true(polls >= 1);
    assert_true(all_bytes(p2, 0x5c, N));
    assert_int_equal(cudaStreamQuery(s), cudaSuccess);
    assert_int_equal(cudaEventElapsedTime(&ms, e0, e1), cudaSuccess);
    assert_true(ms >= 0.0f);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* "not ready" is no error */

    /* event times are the emulated device's */
    assert_int_equal(cudaEventRecord(e0, s), cudaSuccess);
    zi_emu_test_check_nap_timed(e0, e1, s);

    /* a destroyed event or stream with work queued: the work still runs */
    memset(p1, 0, N);
    assert_int_equal(cudaMemcpyAsync(p1, d, N, cudaMemcpyDeviceToHost, s), cudaSuccess);
    assert_int_equal(cudaEventRecord(ev, s), cudaSuccess);
    assert_int_equal(cudaEventDestroy(ev), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    assert_true(all_bytes(p1, 0, N));
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_true(all_bytes(p1, 0x5c, N));
    assert_int_equal(zi_emu_pending(), 0);

    assert_int_equal(cudaEventDestroy(e0), cudaSuccess);
    assert_int_equal(cudaEventDestroy(e1), cudaSuccess);
    assert_int_equal(cudaFreeHost(p1), cudaSuccess);
    assert_int_equal(cudaFreeHost(p2), cudaSuccess);
    assert_int_equal(cudaFree(d), cudaSuccess);
}

/* cudaStreamWaitEvent: stream b's later work waits for a's work up to the capture at the
 * time of the call, not for a's later work nor a re-record; a never recorded event is no
 * wait. */
static void test_stream_wait_event(void **state)
{
    (void)state;
    unsigned char *d = zi_emu_test_dev_alloc(N), *p1 = pinned_alloc(N), *p2 = pinned_alloc(N);
    cudaStream_t a = zi_emu_test_stream_new(cudaStreamNonBlocking);
    cudaStream_t b = zi_emu_test_stream_new(cudaStreamNonBlocking);
    cudaEvent_t ev = NULL, never = NULL;
    assert_int_equal(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    assert_int_equal(cudaEventCreateWithFlags(&never, cudaEventDisableTiming), cudaSuccess);
    dev_fill(d, 0, N);
    memset(p1, 0, N);
    memset(p2, 0, N);

    assert_int_equal(cudaStreamWaitEvent(b, never, 0), cudaSuccess);
    assert_int_equal(cudaMemsetAsync(d, 0x11, N, a), cudaSuccess);
    assert_int_equal(cudaEventRecord(ev, a), cudaSuccess);
    assert_int_equal(cudaStreamWaitEvent(b, ev, 0), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(p1, d, N, cudaMemcpyDeviceToHost, b), cudaSuccess);
    assert_int_equal(cudaMemsetAsync(d, 0x22, N, a), cudaSuccess); /* after the capture */
    assert_int_equal(cudaEventRecord(ev, a), cudaSuccess);         /* a re-record */
    assert_true(all_bytes(p1, 0, N));                              /* nothing has run yet */
    assert_int_equal(cudaStreamSynchronize(b), cudaSuccess);
    assert_true(all_bytes(p1, 0x11, N)); /* a ran up to the first capture only */
    assert_true(all_bytes(d, 0x11, N));
    assert_int_equal(cudaEventQuery(ev), cudaErrorNotReady);
    assert_int_equal(cudaStreamSynchronize(a), cudaSuccess);
    assert_true(all_bytes(d, 0x22, N));

    /* the other way round: a waits for b's copy before overwriting its source */
    assert_int_equal(cudaMemcpyAsync(p2, d, N, cudaMemcpyDeviceToHost, b), cudaSuccess);
    assert_int_equal(cudaEventRecord(ev, b), cudaSuccess);
    assert_int_equal(cudaStreamWaitEvent(a, ev, 0), cudaSuccess);
    assert_int_equal(cudaMemsetAsync(d, 0x33, N, a), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(a), cudaSuccess);
    assert_true(all_bytes(p2, 0x22, N));
    assert_true(all_bytes(d, 0x33, N));

    /* flags other than cudaEventWaitDefault, dead handles */
    assert_int_equal(cudaStreamWaitEvent(b, ev, 1), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaEventDestroy(never), cudaSuccess);
    assert_int_equal(cudaStreamWaitEvent(b, never, 0), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);

    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(zi_emu_pending(), 0);
    assert_int_equal(cudaEventDestroy(ev), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(a), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(b), cudaSuccess);
    assert_int_equal(cudaFreeHost(p1), cudaSuccess);
    assert_int_equal(cudaFreeHost(p2), cudaSuccess);
    assert_int_equal(cudaFree(d), cudaSuccess);
}

/* out[n] = 2 a[n] + 1 (f32) on stream s, through a kernel of kernels/zi_cuda_ops.cu */
static void affine(float *out, const float *a, size_t n, cudaStream_t s)
{
    assert_int_equal(
        zi_cu_map(ZI_CU_AFFINE, out, ZI_F32, a, ZI_F32, NULL, ZI_F32, 2.0f, 1.0f, n, s),
        cudaSuccess);
}

static void test_kernels(void **state)
{
    (void)state;
    const size_t n = 1000;
    float *in = zi_emu_test_dev_alloc(n * sizeof(float)),
          *out = zi_emu_test_dev_alloc(n * sizeof(float));
    float *pin = pinned_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        pin[i] = (float)i;
    assert_int_equal(cudaMemcpy(in, pin, n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    dev_fill(out, 0, n * sizeof(float));
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);

    /* a launch is queued: no effect until the stream is waited for */
    unsigned long long launches = zi_emu_launch_count();
    affine(out, in, n, s);
    assert_int_equal(zi_emu_launch_count(), launches + 1);
    assert_true(zi_emu_pending() > 0);
    assert_true(all_bytes(out, 0, n * sizeof(float)));
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    for (size_t i = 0; i < n; i++)
        assert_true(out[i] == 2.0f * (float)i + 1.0f);

    /* pinned host memory is a valid kernel argument (unified addressing), read when the
     * kernel runs */
    affine(pin, in, n, s);
    assert_true(pin[3] == 3.0f);
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_true(pin[3] == 7.0f);

    /* cudaMemcpy goes through the legacy stream: it waits for work of the legacy stream
     * and of blocking streams, not for a cudaStreamNonBlocking stream */
    float back[4];
    cudaStream_t blocking = zi_emu_test_stream_new(cudaStreamDefault);
    dev_fill(out, 0, n * sizeof(float));
    affine(out, in, n, NULL);
    assert_int_equal(cudaMemcpy(back, out + 2, sizeof back, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_true(back[0] == 5.0f);
    dev_fill(out, 0, n * sizeof(float));
    affine(out, in, n, blocking);
    assert_int_equal(cudaMemcpy(back, out + 2, sizeof back, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_true(back[0] == 5.0f);
    dev_fill(out, 0, n * sizeof(float));
    affine(out, in, n, s);
    assert_int_equal(cudaMemcpy(back, out + 2, sizeof back, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_true(back[0] == 0.0f); /* not ordered after the non-blocking stream's kernel */
    assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
    assert_true(out[2] == 5.0f);

    /* cudaMemset is asynchronous too; cudaFree waits for the device */
    assert_int_equal(cudaMemset(out, 0x7f, n * sizeof(float)), cudaSuccess);
    assert_true(out[0] == 1.0f);
    affine(pin, in, n, s);
    void *tmp = zi_emu_test_dev_alloc(64);
    assert_int_equal(cudaFree(tmp), cudaSuccess);
    assert_true(all_bytes(out, 0x7f, n * sizeof(float)));
    assert_true(pin[5] == 11.0f);
    assert_int_equal(zi_emu_pending(), 0);

    assert_int_equal(cudaStreamDestroy(blocking), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(s), cudaSuccess);
    assert_int_equal(cudaFreeHost(pin), cudaSuccess);
    assert_int_equal(cudaFree(in), cudaSuccess);
    assert_int_equal(cudaFree(out), cudaSuccess);
}

static void test_legacy_stream(void **state)
{
    (void)state;
    unsigned char *d = zi_emu_test_dev_alloc(N), *d2 = zi_emu_test_dev_alloc(N), page[N];
    dev_fill(d, 0, N);
    dev_fill(d2, 0, N);

    /* cudaMemcpy from pageable memory returns once the source is staged; the device write
     * is queued on the legacy stream ("the DMA to final destination may not have
     * completed"), ahead of later legacy work */
    memset(page, 0x71, N);
    assert_int_equal(cudaMemcpy(d, page, N, cudaMemcpyHostToDevice), cudaSuccess);
    memset(page, 0, N);
    assert_true(all_bytes(d, 0, N));
    assert_int_equal(cudaMemcpy(d2, d, N, cudaMemcpyDeviceToDevice), cudaSuccess); /* queued */
    assert_true(all_bytes(d2, 0, N));
    assert_int_equal(cudaMemcpy(page, d2, N, cudaMemcpyDeviceToHost), cudaSuccess); /* waits */
    assert_true(all_bytes(page, 0x71, N));

    /* a blocking stream's work ordered before later legacy work, and a blocking stream
     * destroyed while the legacy stream still waits for it */
    cudaStream_t b = zi_emu_test_stream_new(cudaStreamDefault);
    assert_int_equal(cudaMemsetAsync(d, 0x72, N, b), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(d2, d, N, cudaMemcpyDeviceToDevice, NULL), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(b), cudaSuccess);
    assert_true(all_bytes(d, 0x72, N));
    assert_true(all_bytes(d2, 0x71, N));
    assert_int_equal(cudaStreamDestroy(b), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(NULL), cudaSuccess);
    assert_true(all_bytes(d2, 0x72, N));
    /* and a blocking stream waits for the legacy stream's earlier work */
    b = zi_emu_test_stream_new(cudaStreamDefault);
    assert_int_equal(cudaMemsetAsync(d, 0x73, N, NULL), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(d2, d, N, cudaMemcpyDeviceToDevice, b), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(b), cudaSuccess);
    assert_true(all_bytes(d2, 0x73, N));
    assert_int_equal(cudaStreamDestroy(b), cudaSuccess);
    assert_int_equal(zi_emu_pending(), 0);
    assert_int_equal(cudaFree(d), cudaSuccess);
    assert_int_equal(cudaFree(d2), cudaSuccess);
}

/* ---- work that outlives its memory: aborts when it runs ---- */

typedef struct vmm {
    PFN_cuMemGetAllocationGranularity_v10020 Granularity;
    PFN_cuMemAddressReserve_v10020 Reserve;
    PFN_cuMemCreate_v10020 Create;
    PFN_cuMemMap_v10020 Map;
    PFN_cuMemSetAccess_v10020 SetAccess;
    PFN_cuMemUnmap_v10020 Unmap;
} vmm;

static void *vmm_sym(const char *name)
{
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        !fn)
        abort();
    return fn;
}

/* One mapped, read-write granule of VMM device memory; *size its bytes. */
static char *vmm_map(vmm *v, size_t *size)
{
    v->Granularity =
        (PFN_cuMemGetAllocationGranularity_v10020)vmm_sym("cuMemGetAllocationGranularity");
    v->Reserve = (PFN_cuMemAddressReserve_v10020)vmm_sym("cuMemAddressReserve");
    v->Create = (PFN_cuMemCreate_v10020)vmm_sym("cuMemCreate");
    v->Map = (PFN_cuMemMap_v10020)vmm_sym("cuMemMap");
    v->SetAccess = (PFN_cuMemSetAccess_v10020)vmm_sym("cuMemSetAccess");
    v->Unmap = (PFN_cuMemUnmap_v10020)vmm_sym("cuMemUnmap");
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    CUmemAccessDesc acc;
    memset(&acc, 0, sizeof acc);
    acc.location = prop.location;
    acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    size_t g = 0;
    CUdeviceptr base = 0;
    CUmemGenericAllocationHandle h = 0;
    if (v->Granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS ||
        v->Reserve(&base, g, 0, 0, 0) != CUDA_SUCCESS ||
        v->Create(&h, g, &prop, 0) != CUDA_SUCCESS || v->Map(base, g, 0, h, 0) != CUDA_SUCCESS ||
        v->SetAccess(base, g, &acc, 1) != CUDA_SUCCESS)
        abort();
    *size = g;
    return (char *)(uintptr_t)base;
}

/* A copy queued on memory that is unmapped before the stream gets there. */
static void run_unmapped_copy(void)
{
    vmm v;
    size_t g;
    char *d = vmm_map(&v, &g);
    unsigned char *pin = pinned_alloc(N);
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    if (cudaMemcpyAsync(pin, d, N, cudaMemcpyDeviceToHost, s) != cudaSuccess ||
        v.Unmap((CUdeviceptr)(uintptr_t)d, g) != CUDA_SUCCESS)
        return;
    cudaStreamSynchronize(s);
}

/* A kernel queued on memory that is unmapped before the stream gets there. */
static void run_unmapped_kernel(void)
{
    vmm v;
    size_t g;
    char *d = vmm_map(&v, &g);
    cudaStream_t s = zi_emu_test_stream_new(cudaStreamNonBlocking);
    float *x = (float *)(void *)d; /* device memory viewed as floats */
    if (zi_cu_map(ZI_CU_AFFINE, x, ZI_F32, x + 64, ZI_F32, NULL, ZI_F32, 1.0f, 0.0f, 64, s) !=
            cudaSuccess ||
        v.Unmap((CUdeviceptr)(uintptr_t)d, g) != CUDA_SUCCESS)
        return;
    cudaStreamSynchronize(s);
}

static void test_unmapped_while_queued(void **state)
{
    (void)state;
    zi_emu_test_expect_abort(run_unmapped_copy, "cudaMemcpyAsync queued on stream", "no longer");
    zi_emu_test_expect_abort(run_unmapped_kernel, "map8_kernel", "no longer device memory");
}

/* ---- ZI_EMU_ORDER: when other streams run ---- */

/* Two non-blocking streams a and b, an event, device memory d holding 0x11 and the pinned
 * p holding 0 (n = N bytes each); 0 when all were made. */
typedef struct two_streams {
    unsigned char *d, *p;
    cudaStream_t a, b;
    cudaEvent_t ev;
} two_streams;

static int two_streams_new(two_streams *t)
{
    memset(t, 0, sizeof *t);
    if (cudaMalloc((void **)&t->d, N) != cudaSuccess ||
        cudaHostAlloc((void **)&t->p, N, cudaHostAllocDefault) != cudaSuccess ||
        cudaStreamCreateWithFlags(&t->a, cudaStreamNonBlocking) != cudaSuccess ||
        cudaStreamCreateWithFlags(&t->b, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&t->ev, cudaEventDisableTiming) != cudaSuccess ||
        cudaMemset(t->d, 0x11, N) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
        return -1;
    memset(t->p, 0, N);
    return 0;
}

/* The byte p holds throughout (-2 when it is mixed), once the device has finished; the
 * streams and memory freed. */
static int two_streams_end(two_streams *t)
{
    int got = all_bytes(t->p, t->p[0], N) ? t->p[0] : -2;
    if (cudaDeviceSynchronize() != cudaSuccess)
        got = -3;
    cudaEventDestroy(t->ev);
    cudaStreamDestroy(t->a);
    cudaStreamDestroy(t->b);
    cudaFreeHost(t->p);
    cudaFree(t->d);
    return got;
}

/* Stream a copies d to p while stream b overwrites d with 0x22 - without waiting for a (a
 * write-after-read hazard between streams) when `ordered` is 0, after a's event when 1;
 * the host waits for a only. Returns the byte p got (0x11: the copy ran first). */
static int war_copy(int ordered)
{
    two_streams t;
    if (two_streams_new(&t) != 0 ||
        cudaMemcpyAsync(t.p, t.d, N, cudaMemcpyDeviceToHost, t.a) != cudaSuccess ||
        cudaEventRecord(t.ev, t.a) != cudaSuccess ||
        (ordered && cudaStreamWaitEvent(t.b, t.ev, 0) != cudaSuccess) ||
        cudaMemsetAsync(t.d, 0x22, N, t.b) != cudaSuccess ||
        cudaStreamSynchronize(t.a) != cudaSuccess)
        return -1;
    return two_streams_end(&t);
}

/* Stream b overwrites d with 0x22, stream a copies d to p - without waiting for b (read
 * after write) when `ordered` is 0, after b's event when 1; the host waits for a only.
 * Returns the byte p got (0x22: the write ran first). */
static int raw_copy(int ordered)
{
    two_streams t;
    if (two_streams_new(&t) != 0 || cudaMemsetAsync(t.d, 0x22, N, t.b) != cudaSuccess ||
        cudaEventRecord(t.ev, t.b) != cudaSuccess ||
        (ordered && cudaStreamWaitEvent(t.a, t.ev, 0) != cudaSuccess) ||
        cudaMemcpyAsync(t.p, t.d, N, cudaMemcpyDeviceToHost, t.a) != cudaSuccess ||
        cudaStreamSynchronize(t.a) != cudaSuccess)
        return -1;
    return two_streams_end(&t);
}

/* The default order (late): a missing wait shows as a read before the write; a missing wait
 * before an overwrite does not show (the other stream has not run yet). */
static void test_order_late(void **state)
{
    (void)state;
    assert_false(zi_emu_order_ahead());
    assert_int_equal(raw_copy(0), 0x11); /* read before the write: the bug shows */
    assert_int_equal(raw_copy(1), 0x22);
    assert_int_equal(war_copy(0), 0x11); /* hidden in this order */
    assert_int_equal(war_copy(1), 0x11);
}

/* ZI_EMU_ORDER=ahead (in a child): the overwrite without a wait runs first - the bug shows;
 * with the wait it does not; a correct read after a wait still reads the write. */
static int ahead_child(void)
{
    if (!zi_emu_order_ahead())
        return 10;
    if (war_copy(0) != 0x22)
        return 11;
    if (war_copy(1) != 0x11)
        return 12;
    if (raw_copy(1) != 0x22)
        return 13;
    if (zi_emu_pending() != 0)
        return 14;
    return 0;
}

/* Runs this program with `arg` in a child with ZI_EMU_ORDER=order; its wait status. */
static int run_order_child(const char *order, const char *arg)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("ZI_EMU_ORDER", order, 1);
        unsetenv("ZI_EMU_SYNC");
        execl("/proc/self/exe", "test_emu_async", arg, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

static void test_order_ahead(void **state)
{
    (void)state;
    int st = run_order_child("ahead", "--ahead-child");
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* a value it does not know stops the program at its first stream operation */
    st = run_order_child("early", "--ahead-child");
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
}

static void test_ahead_env(void **state)
{
    (void)state;
    assert_int_equal(ahead_child(), 0);
}

/* ---- ZI_EMU_SYNC=1: this program again, in a child with the variable set ---- */

/* The child's checks (exit status 0 when all hold): everything runs at once. */
static int sync_child(void)
{
    if (!zi_emu_sync_mode())
        return 10;
    unsigned char *d = NULL, *pin = NULL;
    cudaStream_t s = NULL;
    if (cudaMalloc((void **)&d, N) != cudaSuccess ||
        cudaHostAlloc((void **)&pin, N, cudaHostAllocDefault) != cudaSuccess ||
        cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess)
        return 11;
    if (cudaMemsetAsync(d, 0x3c, N, s) != cudaSuccess || !all_bytes(d, 0x3c, N))
        return 12;
    memset(pin, 0, N);
    if (cudaMemcpyAsync(pin, d, N, cudaMemcpyDeviceToHost, s) != cudaSuccess ||
        !all_bytes(pin, 0x3c, N) || zi_emu_pending() != 0)
        return 13;
    float *f = (float *)(void *)pin; /* pinned memory viewed as floats */
    for (int i = 0; i < 64; i++)
        f[i] = (float)i;
    if (zi_cu_map(ZI_CU_AFFINE, f, ZI_F32, f, ZI_F32, NULL, ZI_F32, 2.0f, 1.0f, 64, s) !=
            cudaSuccess ||
        f[10] != 21.0f)
        return 14;
    cudaStreamDestroy(s);
    cudaFreeHost(pin);
    cudaFree(d);
    return 0;
}

static void test_sync_mode(void **state)
{
    (void)state;
    assert_false(zi_emu_sync_mode()); /* asynchronous is the default */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("ZI_EMU_SYNC", "1", 1);
        execl("/proc/self/exe", "test_emu_async", "--sync-child", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* The whole program under ZI_EMU_SYNC=1 (the suite run in that mode): the immediate
 * semantics are what there is to check. */
static void test_sync_env(void **state)
{
    (void)state;
    assert_int_equal(sync_child(), 0);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--sync-child") == 0)
        return sync_child();
    if (argc > 1 && strcmp(argv[1], "--ahead-child") == 0)
        return ahead_child();
    if (!zi_emu_sync_mode() && zi_emu_order_ahead()) {
        /* the whole program under ZI_EMU_ORDER=ahead: the rest assumes the default order */
        const struct CMUnitTest ahead_tests[] = {cmocka_unit_test(test_ahead_env)};
        return cmocka_run_group_tests(ahead_tests, NULL, NULL);
    }
    if (zi_emu_sync_mode()) {
        const struct CMUnitTest sync_tests[] = {cmocka_unit_test(test_sync_env)};
        return cmocka_run_group_tests(sync_tests, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copies),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_stream_wait_event),
        cmocka_unit_test(test_kernels),
        cmocka_unit_test(test_legacy_stream),
        cmocka_unit_test(test_unmapped_while_queued),
        cmocka_unit_test(test_sync_mode),
        cmocka_unit_test(test_order_late),
        cmocka_unit_test(test_order_ahead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
