/*
 * emu_runtime.c - host half of the CPU emulator of CUDA (tests only): the CUDA runtime
 * subset, the cuBLAS/cuBLASLt GEMMs and the driver's virtual memory management that
 * kernels/cuda_backend.c, kernels/cuda_vmm.c, worker/cmd_bench.c and tests/gpu/ use,
 * defined with the toolkit headers' own prototypes (so their renames, e.g. cublasCreate ->
 * cublasCreate_v2, apply here too) and linked instead of cudart, cuBLAS and the driver.
 *
 * What it is: one emulated device, "zimage CUDA emulator (CPU)": compute capability 9.0,
 * 132 SMs, 50 MiB L2, ZI_EMU_DEVICE_MEMORY bytes of memory (default 16 GiB; cudaMalloc and
 * VMM physical allocations count against it). Device memory is host memory: cudaMalloc is
 * an exact-size 256-byte-aligned malloc (ASan sees overruns) filled with 0xff bytes (the
 * runtime does not clear memory; 0xff reads back as NaN in f32/bf16, so a kernel reading
 * memory nobody wrote shows up), the VMM maps memfd pages into PROT_NONE reservations and
 * cuMemSetAccess mprotects them. Work is asynchronous, as on a GPU: kernel launches, async
 * copies and memsets, GEMMs and event records are checked at the call and queued on their
 * stream; they run in issue order when the host waits for them (cudaStreamSynchronize,
 * cudaEventSynchronize, cudaDeviceSynchronize, cudaFree, the synchronous copy cases - see
 * "stream queues" below), so the backend's host/device ordering bugs show. ZI_EMU_SYNC=1
 * runs each piece of work at once instead. GEMMs convert bf16 operands to fp32 and call
 * OpenBLAS (cblas_sgemm, column-major), rounding a bf16 output once, to nearest even.
 *
 * Strict where CUDA is strict or undefined: copies whose direction does not match the
 * pointers, ranges not wholly inside device memory, dead handles, GEMM arguments cuBLAS
 * documents as invalid, misaligned or aliased operands, VMM calls against the documented
 * rules. Each rejection prints one "zi-emu: ..." line on stderr saying why and returns the
 * documented status (cudaError_t / cublasStatus_t / CUresult); a failed runtime call also
 * becomes the thread's last error (cudaGetLastError). Queued work whose memory was freed,
 * unmapped or made inaccessible before it ran aborts with a "zi-emu: ..." message (the GPU
 * would fault with cudaErrorIllegalAddress at that point).
 *
 * What it is not: multi-device, concurrent, or a performance model. Only what the
 * backend uses is emulated (bf16 A/B, fp32 compute and scale, fp32 or bf16 C/D, epilogues
 * DEFAULT and BIAS, column-major layouts, pinned device VMM allocations); anything else is
 * reported as not supported rather than approximated.
 *
 * Environment: ZI_EMU_DEVICE_MEMORY=<bytes>, ZI_EMU_PINNED_MEMORY=<bytes> (the most
 * cudaHostAlloc hands out, live, like a host short of RAM to lock; default: no limit),
 * ZI_EMU_SYNC=1 and ZI_EMU_ORDER=late|ahead (when other streams run; "stream queues") (each
 * read once);
 * ZI_EMU_NO_VMM=1 makes the driver's VMM entry points not found, ZI_EMU_NO_VMM=attr keeps
 * them but reports CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 0, and
 * ZI_EMU_NO_VMM=create reports support but refuses cuMemCreate with CUDA_ERROR_NOT_SUPPORTED
 * (a sandboxed or virtualised driver) (all read at each query, so one test process can
 * exercise the backend's cudaMalloc fallback).
 *
 * References, cited next to each function: CUDA Runtime API and CUDA Driver API reference
 * manuals (docs.nvidia.com/cuda/cuda-runtime-api, /cuda-driver-api; the same text is the
 * doc comment of each prototype in the toolkit's cuda_runtime_api.h and cuda.h), the cuBLAS
 * Library User Guide (docs.nvidia.com/cuda/cublas: "cublas<t>gemm()", "cublasGemmEx()",
 * "cublasSetWorkspace()", "cuBLASLt API"; the cuBLASLt attribute docs are also in
 * cublasLt.h), and the CUDA Programming Guide, "Virtual Memory Management".
 */
#include "emu.h"

#include <cblas.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define ZI_EMU_DEVICE_NAME "zimage CUDA emulator (CPU)"
#define ZI_EMU_CC_MAJOR 9
#define ZI_EMU_CC_MINOR 0
#define ZI_EMU_SM_COUNT 132
#define ZI_EMU_L2_BYTES (50 << 20)
#define ZI_EMU_DEFAULT_MEMORY ((size_t)16 << 30)
#define ZI_EMU_SMEM_DEFAULT (48 << 10) /* per block without opt-in */
#define ZI_EMU_SMEM_OPTIN (227 << 10)  /* sm_90: cudaDevAttrMaxSharedMemoryPerBlockOptin */
#define ZI_EMU_SMEM_PER_SM (228 << 10)
#define ZI_EMU_MALLOC_ALIGN 256 /* cudaMalloc: "suitably aligned for any kind of variable" */
#define ZI_EMU_HOST_ALIGN 4096
#define ZI_EMU_POISON 0xff
#define ZI_EMU_VMM_GRAN ((size_t)2 << 20) /* minimum = recommended granularity, as on x86 GPUs */
#define ZI_EMU_DRIVER_VERSION 13000
#define ZI_EMU_LT_ALIGN 16 /* operand alignment the emulated cuBLASLt algorithm needs */
#define ZI_EMU_LT_ALGO_MAGIC 0x7a69656d754c7431ULL
#define ZI_EMU_COUNT(arr) (sizeof(arr) / sizeof((arr)[0]))

/* ---- global state ---- */

typedef struct zi_emu_range {
    uintptr_t base;
    size_t size;
} zi_emu_range;

/* A VMM physical allocation (cuMemCreate): a memfd; freed once released and unmapped. */
typedef struct zi_emu_phys {
    unsigned long long id;
    size_t size;
    int fd;
    int released;
    int nmaps;
} zi_emu_phys;

/* A VMM mapping (cuMemMap) with its access (CU_MEM_ACCESS_FLAGS_PROT_*). */
typedef struct zi_emu_map {
    uintptr_t base;
    size_t size;
    unsigned long long handle;
    int prot;
} zi_emu_map;

/* Kinds of handles kept in the live set, so a dead or foreign handle is an error. */
enum {
    ZI_EMU_K_STREAM = 1,
    ZI_EMU_K_EVENT,
    ZI_EMU_K_BLAS,
    ZI_EMU_K_LT,
    ZI_EMU_K_LTDESC,
    ZI_EMU_K_LTLAYOUT,
    ZI_EMU_K_LTPREF,
};

typedef struct zi_emu_live {
    const void *p;
    int kind;
} zi_emu_live;

typedef struct zi_emu_smem {
    const void *fn;
    int bytes;
} zi_emu_smem;

static struct {
    pthread_mutex_t lock;
    size_t total, used; /* device memory: cudaMalloc blocks + VMM physical allocations */
    zi_emu_range *blk;  /* cudaMalloc blocks, sorted by base */
    size_t nblk, capblk;
    zi_emu_range *host; /* cudaHostAlloc blocks */
    size_t nhost, caphost;
    size_t pinned_limit, pinned; /* ZI_EMU_PINNED_MEMORY (0: none), bytes in host */
    zi_emu_range *resv;          /* VMM address reservations */
    size_t nresv, capresv;
    zi_emu_phys *phys;
    size_t nphys, capphys;
    zi_emu_map *map; /* sorted by base */
    size_t nmap, capmap;
    unsigned long long next_handle;
    zi_emu_live *live;
    size_t nlive, caplive;
    zi_emu_smem *smem;
    size_t nsmem, capsmem;
} g_emu = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t g_emu_once = PTHREAD_ONCE_INIT;
/* Runtime API: "the last error ... produced by any of the runtime calls ... in the host
 * thread" (cudaGetLastError): one per thread. */
static _Thread_local cudaError_t g_emu_last = cudaSuccess;
static atomic_ullong g_emu_launches;
/* The fault that lost the context (zi_emu_context_lost), cudaSuccess while it lives. */
static atomic_int g_emu_lost;

/* Every message of the emulator is one stderr line, "zi-emu: <message>", followed by
 * " -> <result>" when `result` is not NULL (a failed call's status). */
static void zi_emu_vsay(const char *result, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void zi_emu_vsay(const char *result, const char *fmt, va_list ap)
{
    fputs("zi-emu: ", stderr);
    vfprintf(stderr, fmt, ap);
    if (result)
        fprintf(stderr, " -> %s", result);
    fputc('\n', stderr);
}

static void zi_emu_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void zi_emu_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    zi_emu_vsay(NULL, fmt, ap);
    va_end(ap);
}

/* What is normal but worth knowing when debugging (ZI_EMU_VERBOSE=1): e.g. a problem the
 * emulated cuBLASLt has no algorithm for, which the backend answers with its fallback. */
static void zi_emu_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void zi_emu_note(const char *fmt, ...)
{
    const char *v = getenv("ZI_EMU_VERBOSE");
    if (!v || !*v || strcmp(v, "0") == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    zi_emu_vsay(NULL, fmt, ap);
    va_end(ap);
}

/* The byte count in variable `name`, or `def` when it is unset; a test that asks for what
 * the emulator cannot pretend to be (not a number, below `min`) is told so and stopped. */
static size_t zi_emu_env_bytes(const char *name, size_t def, size_t min)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return def;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || *end || v < min || v > SIZE_MAX / 4) {
        zi_emu_warn("%s=%s is not a byte count >= %zu", name, s, min);
        abort();
    }
    return (size_t)v;
}

static void zi_emu_init_once(void)
{
    g_emu.total = zi_emu_env_bytes("ZI_EMU_DEVICE_MEMORY", ZI_EMU_DEFAULT_MEMORY, ZI_EMU_VMM_GRAN);
    g_emu.pinned_limit = zi_emu_env_bytes("ZI_EMU_PINNED_MEMORY", 0, 1);
    g_emu.next_handle = 1;
}

static void zi_emu_lock(void)
{
    pthread_once(&g_emu_once, zi_emu_init_once);
    pthread_mutex_lock(&g_emu.lock);
}

static void zi_emu_unlock(void)
{
    pthread_mutex_unlock(&g_emu.lock);
}

/* arr grown to hold `need` elements (NULL on failure, arr then unchanged). */
static void *zi_emu_grow(void *arr, size_t *cap, size_t need, size_t elsz)
{
    if (need <= *cap)
        return arr;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    void *p = realloc(arr, nc * elsz);
    if (p)
        *cap = nc;
    return p;
}

/* A failed runtime call: explain, record as the thread's last error, return e. */
static cudaError_t zi_emu_fail(cudaError_t e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static cudaError_t zi_emu_fail(cudaError_t e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    zi_emu_vsay(cudaGetErrorName(e), fmt, ap);
    va_end(ap);
    g_emu_last = e;
    return e;
}

/* ---- live handles ---- */

static long zi_emu_live_find(int kind, const void *p) /* lock held */
{
    for (size_t i = 0; i < g_emu.nlive; i++)
        if (g_emu.live[i].p == p && g_emu.live[i].kind == kind)
            return (long)i;
    return -1;
}

static int zi_emu_live_add(int kind, const void *p)
{
    zi_emu_lock();
    zi_emu_live *nl = zi_emu_grow(g_emu.live, &g_emu.caplive, g_emu.nlive + 1, sizeof *nl);
    if (nl) {
        g_emu.live = nl;
        g_emu.live[g_emu.nlive].p = p;
        g_emu.live[g_emu.nlive].kind = kind;
        g_emu.nlive++;
    }
    zi_emu_unlock();
    return nl != NULL;
}

static int zi_emu_live_ok(int kind, const void *p)
{
    if (!p)
        return 0;
    zi_emu_lock();
    int ok = zi_emu_live_find(kind, p) >= 0;
    zi_emu_unlock();
    return ok;
}

/* Removes p from the live set; 0 when it was not there (dead or foreign handle). */
static int zi_emu_live_del(int kind, const void *p)
{
    if (!p)
        return 0;
    zi_emu_lock();
    long i = zi_emu_live_find(kind, p);
    if (i >= 0)
        g_emu.live[i] = g_emu.live[--g_emu.nlive];
    zi_emu_unlock();
    return i >= 0;
}

/* The NULL stream and the two special handles are always valid (driver_types.h). */
static int zi_emu_stream_ok(cudaStream_t s)
{
    return s == NULL || s == cudaStreamLegacy || s == cudaStreamPerThread ||
           zi_emu_live_ok(ZI_EMU_K_STREAM, s);
}

/* ---- device memory map (all *_locked: lock held) ---- */

/* Index of the element of a sorted range array holding address a, or -1. */
#define ZI_EMU_FIND_AT(arr, n, a, out)                                                             \
    do {                                                                                           \
        size_t lo_ = 0, hi_ = (n);                                                                 \
        while (lo_ < hi_) {                                                                        \
            size_t mid_ = lo_ + (hi_ - lo_) / 2;                                                   \
            if ((arr)[mid_].base <= (a))                                                           \
                lo_ = mid_ + 1;                                                                    \
            else                                                                                   \
                hi_ = mid_;                                                                        \
        }                                                                                          \
        (out) = lo_ > 0 && (a) - (arr)[lo_ - 1].base < (arr)[lo_ - 1].size ? (long)(lo_ - 1) : -1; \
    } while (0)

/* Opens the slot for base address a in a sorted range array of n elements that has room for
 * one more: (at) is its index, n has grown by one; the caller fills the slot. */
#define ZI_EMU_INSERT_AT(arr, n, a, at)                                                            \
    do {                                                                                           \
        (at) = (n);                                                                                \
        while ((at) > 0 && (arr)[(at)-1].base > (a))                                               \
            (at)--;                                                                                \
        memmove(&(arr)[(at) + 1], &(arr)[(at)], ((n) - (at)) * sizeof *(arr));                     \
        (n)++;                                                                                     \
    } while (0)

static long zi_emu_blk_at_locked(uintptr_t a)
{
    long i;
    ZI_EMU_FIND_AT(g_emu.blk, g_emu.nblk, a, i);
    return i;
}

static long zi_emu_map_at_locked(uintptr_t a)
{
    long i;
    ZI_EMU_FIND_AT(g_emu.map, g_emu.nmap, a, i);
    return i;
}

/* 1 when [a, a+n) lies in one cudaMalloc block, or in adjacent VMM mappings that are all
 * accessible (read/write when `write`): a kernel or copy may touch it. */
static int zi_emu_dev_range_locked(uintptr_t a, size_t n, int write)
{
    if (a + n < a)
        return 0;
    long i = zi_emu_blk_at_locked(a);
    if (i >= 0)
        return n <= g_emu.blk[i].size - (a - g_emu.blk[i].base);
    long j = zi_emu_map_at_locked(a);
    if (j < 0)
        return 0;
    for (size_t k = (size_t)j; k < g_emu.nmap; k++) {
        const zi_emu_map *m = &g_emu.map[k];
        if (k > (size_t)j && m->base != g_emu.map[k - 1].base + g_emu.map[k - 1].size)
            return 0; /* a hole in the range */
        if (m->prot == CU_MEM_ACCESS_FLAGS_PROT_NONE ||
            (write && m->prot != CU_MEM_ACCESS_FLAGS_PROT_READWRITE))
            return 0;
        if (a + n <= m->base + m->size)
            return 1;
    }
    return 0;
}

/* 1 when [a, a+n) touches device address space (a cudaMalloc block or a VMM reservation,
 * mapped or not): such a range is not host memory. */
static int zi_emu_touches_device_locked(uintptr_t a, size_t n)
{
    uintptr_t end = a + (n ? n : 1);
    if (end < a)
        return 1;
    size_t lo = 0, hi = g_emu.nblk; /* last block starting before end */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g_emu.blk[mid].base < end)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && g_emu.blk[lo - 1].base + g_emu.blk[lo - 1].size > a)
        return 1;
    for (size_t r = 0; r < g_emu.nresv; r++)
        if (g_emu.resv[r].base < end && g_emu.resv[r].base + g_emu.resv[r].size > a)
            return 1;
    return 0;
}

static int zi_emu_dev_range(const void *p, size_t n, int write)
{
    zi_emu_lock();
    int ok = zi_emu_dev_range_locked((uintptr_t)p, n, write);
    zi_emu_unlock();
    return ok;
}

static int zi_emu_host_range(const void *p, size_t n)
{
    zi_emu_lock();
    int ok = !zi_emu_touches_device_locked((uintptr_t)p, n);
    zi_emu_unlock();
    return ok;
}

int zi_emu_is_device_range(const void *p, size_t n)
{
    return p && zi_emu_dev_range(p, n, 0);
}

/* Runtime API, "Unified Addressing": "All host memory allocated through all devices using
 * cudaMallocHost() and cudaHostAlloc() is always directly accessible from all devices that
 * support unified addressing" - a kernel may use it. */
int zi_emu_is_pinned_range(const void *p, size_t n)
{
    if (!p)
        return 0;
    uintptr_t a = (uintptr_t)p;
    int ok = 0;
    zi_emu_lock();
    for (size_t i = 0; i < g_emu.nhost && !ok; i++)
        ok = a >= g_emu.host[i].base && n <= g_emu.host[i].size &&
             a - g_emu.host[i].base <= g_emu.host[i].size - n;
    zi_emu_unlock();
    return ok;
}

/* ---- errors ---- */

void zi_emu_set_error(cudaError_t e)
{
    /* a success does not hide an earlier failure: only errors are recorded */
    if (e != cudaSuccess)
        g_emu_last = e;
}

/* A sticky fault: cudaErrorIllegalAddress and its kin "leave the process in an inconsistent
 * state and any further CUDA work will return the same error" (Runtime API, cudaError).
 * From here on no queued work runs, and the calls that touch the device (memory, copies,
 * launches, GEMMs, waits, queries, mappings) return e; cudaGetLastError returns it without
 * clearing it. The releases (cudaFree, cudaFreeHost, stream and event destroys, cuMemUnmap,
 * cuMemRelease, cuMemAddressFree) return e too, as a GPU's do, so that teardown code
 * meets the failures it will meet there; the emulator still frees what they name (the
 * context's memory goes with the process on a GPU), so leak checks stay meaningful. */
void zi_emu_context_lost(cudaError_t e, const char *why)
{
    int expected = cudaSuccess;
    if (atomic_compare_exchange_strong(&g_emu_lost, &expected, (int)e))
        zi_emu_warn("%s: the context is lost (%s); every later call returns it", why,
                    cudaGetErrorName(e));
    g_emu_last = e;
}

/* The sticky fault, recorded as the thread's last error too (cudaSuccess while the context
 * lives). */
static cudaError_t zi_emu_lost(void)
{
    cudaError_t e = (cudaError_t)atomic_load(&g_emu_lost);
    if (e != cudaSuccess)
        g_emu_last = e;
    return e;
}

/* In an API function: once the context is lost, return the fault as `type` (a runtime or
 * a driver status: the driver's codes for these faults are the runtime's). */
#define ZI_EMU_RETURN_IF_LOST(type)                                                                \
    do {                                                                                           \
        cudaError_t lost_ = zi_emu_lost();                                                         \
        if (lost_ != cudaSuccess)                                                                  \
            return (type)lost_;                                                                    \
    } while (0)

void zi_emu_context_revive(void)
{
    atomic_store(&g_emu_lost, cudaSuccess);
    g_emu_last = cudaSuccess;
}

/* ---- stream queues ----
 *
 * Each stream is a FIFO of pieces of work (a closure: run, destroy, context); the calls CUDA
 * documents as asynchronous check their arguments, queue the work and return. Work runs,
 * in issue order, on the thread that waits for it, only where CUDA guarantees completion:
 *   - cudaStreamSynchronize: "Blocks until stream has completed all operations";
 *   - cudaEventSynchronize: "Waits until the completion of all work currently captured in
 *     event" (the stream's work up to the cudaEventRecord);
 *   - cudaDeviceSynchronize: "Blocks until the device has completed all preceding requested
 *     tasks"; cudaFree and cudaFreeHost first (the driver API's cuMemFree "may perform
 *     implicit synchronization" and in practice waits for the device: the backend's
 *     cudaMalloc mode relies on it);
 *   - the memcpy cases that "API synchronization behavior" (Runtime API, section 2) makes
 *     synchronous (see zi_emu_copy);
 *   - cudaStreamQuery / cudaEventQuery answer cudaErrorNotReady while the work is queued
 *     and run one piece of it per call, so a polling loop sees "not ready" and still ends.
 * cuMemUnmap and cuMemRelease do not wait (the driver does not): work still queued on a
 * range that has been unmapped or freed aborts with a message when it runs - the GPU would
 * fault (cudaErrorIllegalAddress).
 * Streams (Runtime API, "Stream synchronization behavior"): "When an action is taken in the
 * legacy stream ..., the legacy stream first waits on all blocking streams, the action is
 * queued in the legacy stream, and then all blocking streams wait on the legacy stream";
 * cudaStreamNonBlocking streams "do not synchronize with the legacy stream". These waits
 * are queued as wait items. cudaStreamPerThread is one blocking stream shared by all
 * threads here. cudaStreamDestroy returns at once; the stream's work
 * still runs at a later wait ("the resources associated with stream will be released
 * automatically once the device has completed all work in stream").
 * Time: an event's timestamp is when the emulated device reaches it, modelled as a device
 * that starts each piece of work when it is queued or when the stream's previous work
 * ends, whichever is later, and takes as long as the emulation did; so elapsed times
 * measure the emulated work, as on a GPU, whenever the work actually runs.
 * ZI_EMU_SYNC=1 runs each piece of work when it is queued (the emulator's old behaviour).
 * Order between streams: by default a stream runs late - only when the host waits for it or
 * another stream's wait item needs it - so work that reads what another stream writes
 * without waiting for it (read after write) runs before the write and reads stale data.
 * The opposite hazard, a stream overwriting memory that earlier work of another stream
 * still reads (write after read, e.g. a copy stream refilling a buffer without waiting for
 * the kernel that reads it), needs the other stream to run early: ZI_EMU_ORDER=ahead runs,
 * before each piece of work, every other stream as far as its queue goes (its own waits
 * still respected), the most a GPU is allowed to run ahead. Run a suite in both orders to
 * see both hazards.
 */

typedef struct zi_emu_item zi_emu_item;
struct zi_emu_item {
    zi_emu_item *next;
    unsigned long long seq; /* issue order over all streams */
    double t_enq;           /* when it was queued (CLOCK_MONOTONIC, seconds) */
    const char *what;
    void (*run)(void *ctx);
    void (*destroy)(void *ctx);
    void *ctx;
    struct CUstream_st *wait_on; /* a wait item: wait_on's work up to wait_seq first */
    unsigned long long wait_seq;
    struct CUevent_st *ev; /* an event record */
    zi_emu_range use[5];   /* memory it touches, when known (copies, memsets, GEMMs) */
    int nuse;
};

struct CUstream_st {
    unsigned flags;
    int dead; /* destroyed (1; 2: being freed); freed once its work has run */
    zi_emu_item *head, *tail;
    double vt_end; /* emulated time at which the stream's last work ended */
};

struct CUevent_st {
    unsigned flags;
    int recorded;           /* cudaEventRecord was called */
    int done;               /* the latest capture has completed */
    int dead;               /* destroyed with captures queued: the last one frees it */
    unsigned pending;       /* record items queued */
    unsigned long long seq; /* the latest capture's record item */
    struct CUstream_st *stream;
    double t; /* when the latest capture completed (emulated time) */
};

static struct {
    pthread_mutex_t lock; /* queues, events, and running work (one drain at a time) */
    int sync;             /* ZI_EMU_SYNC=1 */
    int ahead;            /* ZI_EMU_ORDER=ahead */
    int in_ahead;         /* other streams are being run ahead (no nesting) */
    int in_wait;          /* a wait item is running another stream's work */
    unsigned long long seq, pending;
    struct CUstream_st legacy, per_thread;
    struct CUstream_st **made; /* cudaStreamCreate'd streams, live or dead with work */
    size_t nmade, capmade;
} g_q;

static pthread_once_t g_q_once = PTHREAD_ONCE_INIT;

static void zi_emu_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void zi_emu_q_init(void)
{
    pthread_mutex_init(&g_q.lock, NULL);
    const char *s = getenv("ZI_EMU_SYNC");
    g_q.sync = s && *s && strcmp(s, "0") != 0;
    const char *o = getenv("ZI_EMU_ORDER");
    if (o && *o && strcmp(o, "ahead") != 0 && strcmp(o, "late") != 0)
        zi_emu_fatal("ZI_EMU_ORDER=%s: expected 'late' (the default) or 'ahead'", o);
    g_q.ahead = o && strcmp(o, "ahead") == 0;
}

/* Lock order: g_q.lock before g_emu.lock (work that runs takes g_emu.lock for its checks). */
static void zi_emu_q_lock(void)
{
    pthread_once(&g_q_once, zi_emu_q_init);
    pthread_mutex_lock(&g_q.lock);
}

static void zi_emu_q_unlock(void)
{
    pthread_mutex_unlock(&g_q.lock);
}

int zi_emu_sync_mode(void)
{
    pthread_once(&g_q_once, zi_emu_q_init);
    return g_q.sync;
}

int zi_emu_order_ahead(void)
{
    pthread_once(&g_q_once, zi_emu_q_init);
    return g_q.ahead;
}

unsigned long long zi_emu_pending(void)
{
    zi_emu_q_lock();
    unsigned long long n = g_q.pending;
    zi_emu_q_unlock();
    return n;
}

static double zi_emu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* A fault found while queued work runs: there is no call to return an error from (the GPU
 * would make the context unusable and report it at the next synchronisation), so say what
 * and abort. */
static void zi_emu_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    zi_emu_vsay(NULL, fmt, ap);
    va_end(ap);
    fflush(stderr);
    abort();
}

/* The queue of a stream handle, or NULL for a dead or foreign one (q lock held). */
static struct CUstream_st *zi_emu_q_of(cudaStream_t s)
{
    if (s == NULL || s == cudaStreamLegacy)
        return &g_q.legacy;
    if (s == cudaStreamPerThread)
        return &g_q.per_thread;
    return zi_emu_live_ok(ZI_EMU_K_STREAM, s) ? s : NULL;
}

static int zi_emu_q_blocking(const struct CUstream_st *q)
{
    return q != &g_q.legacy && !(q->flags & cudaStreamNonBlocking);
}

/* Every queue in turn, from i = 0: the legacy stream, the per-thread stream, then the created
 * streams (live, or destroyed with work left); NULL past the last (q lock held). */
static struct CUstream_st *zi_emu_q_nth(size_t i)
{
    if (i == 0)
        return &g_q.legacy;
    if (i == 1)
        return &g_q.per_thread;
    return i - 2 < g_q.nmade ? g_q.made[i - 2] : NULL;
}

/* Appends an empty item to q (q lock held). */
static zi_emu_item *zi_emu_q_push(struct CUstream_st *q, const char *what)
{
    zi_emu_item *it = calloc(1, sizeof *it);
    if (!it)
        zi_emu_fatal("out of host memory queueing %s", what);
    it->seq = ++g_q.seq;
    it->t_enq = zi_emu_now();
    it->what = what;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    g_q.pending++;
    return it;
}

/* q waits for the work queued on `on` so far (nothing when that is none). */
static void zi_emu_q_wait_for(struct CUstream_st *q, struct CUstream_st *on)
{
    if (!on->tail)
        return;
    unsigned long long upto = on->tail->seq;
    if (q->tail && q->tail->wait_on == on && q->tail->wait_seq == upto)
        return;
    zi_emu_item *w = zi_emu_q_push(q, "implicit wait");
    w->wait_on = on;
    w->wait_seq = upto;
}

/* The legacy stream's implicit synchronisation with the blocking streams. */
static void zi_emu_q_implicit_waits(struct CUstream_st *q)
{
    if (q == &g_q.legacy) {
        zi_emu_q_wait_for(q, &g_q.per_thread);
        for (size_t i = 0; i < g_q.nmade; i++)
            if (zi_emu_q_blocking(g_q.made[i]))
                zi_emu_q_wait_for(q, g_q.made[i]);
    } else if (zi_emu_q_blocking(q)) {
        zi_emu_q_wait_for(q, &g_q.legacy);
    }
}

static void zi_emu_q_drain_to(struct CUstream_st *q, unsigned long long upto);
static void zi_emu_q_drain(struct CUstream_st *q);

/* Runs q's first item (q lock held). Items are unlinked before they run, so a wait item
 * that drains another stream never meets itself: it waits only for earlier items. */
static void zi_emu_q_step(struct CUstream_st *q)
{
    zi_emu_item *it = q->head;
    if (g_q.ahead && !g_q.in_ahead && !g_q.in_wait && it->run) {
        /* ZI_EMU_ORDER=ahead: the other streams first, as far as they go (a wait of theirs
         * on q runs q's work in order, this item included). Not inside a wait item: the
         * waiting stream's next work must not run before the work it waits for. */
        g_q.in_ahead = 1;
        struct CUstream_st *s;
        for (size_t i = 0; (s = zi_emu_q_nth(i)) != NULL; i++)
            if (s != q)
                zi_emu_q_drain(s);
        g_q.in_ahead = 0;
        if (q->head != it)
            return; /* it ran */
    }
    q->head = it->next;
    if (!q->head)
        q->tail = NULL;
    g_q.pending--;
    if (it->wait_on) {
        g_q.in_wait++;
        zi_emu_q_drain_to(it->wait_on, it->wait_seq);
        g_q.in_wait--;
        if (it->wait_on->vt_end > q->vt_end)
            q->vt_end = it->wait_on->vt_end;
    } else {
        double start = it->t_enq > q->vt_end ? it->t_enq : q->vt_end;
        if (it->ev) {
            struct CUevent_st *e = it->ev;
            if (e->seq == it->seq) { /* a later capture replaces this one */
                e->t = start;
                e->done = 1;
            }
            if (--e->pending == 0 && e->dead)
                free(e);
            q->vt_end = start;
        } else if (atomic_load(&g_emu_lost) != cudaSuccess) {
            q->vt_end = start; /* a lost context runs nothing more */
        } else {
            double t0 = zi_emu_now();
            it->run(it->ctx);
            q->vt_end = start + (zi_emu_now() - t0);
        }
    }
    if (it->destroy)
        it->destroy(it->ctx);
    free(it);
}

/* Runs q's items up to issue number `upto` (and what they wait for). */
static void zi_emu_q_drain_to(struct CUstream_st *q, unsigned long long upto)
{
    while (q->head && q->head->seq <= upto)
        zi_emu_q_step(q);
}

static void zi_emu_q_drain(struct CUstream_st *q)
{
    if (q->tail)
        zi_emu_q_drain_to(q, q->tail->seq);
}

/* 1 when a queued wait item still names stream s. */
static int zi_emu_q_waited_on(const struct CUstream_st *s)
{
    const struct CUstream_st *q;
    for (size_t i = 0; (q = zi_emu_q_nth(i)) != NULL; i++)
        for (const zi_emu_item *it = q->head; it; it = it->next)
            if (it->wait_on == s)
                return 1;
    return 0;
}

/* Frees destroyed streams whose work has run (and that no wait item names any more). */
static void zi_emu_q_sweep(void)
{
    for (size_t i = 0; i < g_q.nmade; i++) /* mark first: nothing is freed while scanning */
        if (g_q.made[i]->dead && !g_q.made[i]->head && !zi_emu_q_waited_on(g_q.made[i]))
            g_q.made[i]->dead = 2;
    size_t keep = 0;
    for (size_t i = 0; i < g_q.nmade; i++) {
        struct CUstream_st *s = g_q.made[i];
        if (s->dead == 2)
            free(s);
        else
            g_q.made[keep++] = s;
    }
    g_q.nmade = keep;
}

/* Everything queued anywhere, in issue order (cudaDeviceSynchronize). */
static void zi_emu_q_drain_all(void)
{
    for (;;) {
        struct CUstream_st *first = NULL, *s;
        for (size_t i = 0; (s = zi_emu_q_nth(i)) != NULL; i++)
            if (s->head && (!first || s->head->seq < first->head->seq))
                first = s;
        if (!first)
            break;
        zi_emu_q_step(first);
    }
    zi_emu_q_sweep();
}

static void zi_emu_device_sync(void)
{
    zi_emu_q_lock();
    zi_emu_q_drain_all();
    zi_emu_q_unlock();
}

/* Queues run(ctx) on q after its implicit waits; with ZI_EMU_SYNC=1 (or `wait`) runs q up
 * to it before returning (q lock held). use[nuse]: the memory it touches, when known. */
static void zi_emu_q_submit(struct CUstream_st *q, const char *what, void (*run)(void *),
                            void (*destroy)(void *), void *ctx, int wait, const zi_emu_range *use,
                            int nuse)
{
    zi_emu_q_implicit_waits(q);
    zi_emu_item *it = zi_emu_q_push(q, what);
    it->run = run;
    it->destroy = destroy;
    it->ctx = ctx;
    for (int i = 0; i < nuse && it->nuse < 5; i++)
        if (use[i].size)
            it->use[it->nuse++] = use[i];
    if (wait || g_q.sync)
        zi_emu_q_drain_to(q, it->seq);
}

/* zi_emu_q_submit on the queue of a stream handle (takes the q lock). A dead stream:
 * nothing queued, destroy(ctx) called (when not NULL), cudaErrorInvalidResourceHandle. */
static cudaError_t zi_emu_q_submit_to(cudaStream_t stream, const char *what, void (*run)(void *),
                                      void (*destroy)(void *), void *ctx, const zi_emu_range *use,
                                      int nuse)
{
    cudaError_t lost = zi_emu_lost();
    if (lost != cudaSuccess) {
        if (destroy)
            destroy(ctx);
        return lost;
    }
    zi_emu_q_lock();
    struct CUstream_st *q = zi_emu_q_of(stream);
    if (q)
        zi_emu_q_submit(q, what, run, destroy, ctx, 0, use, nuse);
    zi_emu_q_unlock();
    if (q)
        return cudaSuccess;
    if (destroy)
        destroy(ctx);
    return zi_emu_fail(cudaErrorInvalidResourceHandle, "%s: stream %p is not a live stream", what,
                       (void *)stream);
}

cudaError_t zi_emu_enqueue(cudaStream_t stream, const char *what, void (*run)(void *ctx),
                           void (*destroy)(void *ctx), void *ctx)
{
    return zi_emu_q_submit_to(stream, what, run, destroy, ctx, NULL, 0);
}

/* cuMemUnmap of [a, a+n) while queued work still uses it: the driver does it (it does not
 * wait for the device), and the work faults when it runs; say so here, where the missing
 * synchronisation is. */
static void zi_emu_q_warn_users(const char *api, uintptr_t a, size_t n)
{
    zi_emu_q_lock();
    const struct CUstream_st *s;
    for (size_t i = 0; (s = zi_emu_q_nth(i)) != NULL; i++)
        for (const zi_emu_item *it = s->head; it; it = it->next)
            for (int u = 0; u < it->nuse; u++)
                if (it->use[u].base < a + n && a < it->use[u].base + it->use[u].size) {
                    char sname[64];
                    if (s == &g_q.legacy)
                        snprintf(sname, sizeof sname, "the legacy default stream");
                    else
                        snprintf(sname, sizeof sname, "stream %p", (const void *)s);
                    zi_emu_warn("%s(%p, %zu bytes): %s queued on %s still uses [%p, +%zu "
                                "bytes) - it will fault when it runs (synchronise before "
                                "unmapping)",
                                api, (void *)a, n, it->what, sname, (void *)it->use[u].base,
                                it->use[u].size);
                    break;
                }
    zi_emu_q_unlock();
}

/* A range queued work uses must still be what it was when the work was queued. */
static void zi_emu_recheck(const char *api, const char *what, const void *p, size_t n, int dev,
                           int pinned, int write)
{
    if (dev && !zi_emu_dev_range(p, n, write))
        zi_emu_fatal("%s (queued work, now running): %s [%p, +%zu bytes) is no longer %sdevice "
                     "memory: it was freed, unmapped or made inaccessible while the work was "
                     "still queued (the GPU would fault: cudaErrorIllegalAddress; synchronise "
                     "before freeing or unmapping)",
                     api, what, p, n, write ? "writable " : "");
    if (pinned && !zi_emu_is_pinned_range(p, n))
        zi_emu_fatal("%s (queued work, now running): %s [%p, +%zu bytes) is no longer "
                     "page-locked host memory: cudaFreeHost while the work was still queued",
                     api, what, p, n);
}

/* Runtime API, "Error Handling": cudaGetLastError returns the last error and resets it to
 * cudaSuccess; cudaPeekAtLastError returns it without resetting. */
cudaError_t cudaGetLastError(void)
{
    cudaError_t lost = zi_emu_lost();
    if (lost != cudaSuccess)
        return lost; /* sticky: not cleared */
    cudaError_t e = g_emu_last;
    g_emu_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void)
{
    cudaError_t lost = zi_emu_lost();
    return lost != cudaSuccess ? lost : g_emu_last;
}

/* A status code's name and the library's description of it (the runtime's and the driver's
 * tables below). */
typedef struct zi_emu_errname {
    int code;
    const char *name, *text;
} zi_emu_errname;

static const zi_emu_errname *zi_emu_errname_find(const zi_emu_errname *tab, size_t n, int code)
{
    for (size_t i = 0; i < n; i++)
        if (tab[i].code == code)
            return &tab[i];
    return NULL;
}

/* Names and the runtime's descriptions of every code the emulator (both halves) returns. */
static const zi_emu_errname zi_emu_rt_errors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration",
     "invalid configuration argument"},
    {cudaErrorInvalidPitchValue, "cudaErrorInvalidPitchValue", "invalid pitch argument"},
    {cudaErrorInvalidSymbol, "cudaErrorInvalidSymbol", "invalid device symbol"},
    {cudaErrorInvalidHostPointer, "cudaErrorInvalidHostPointer", "invalid host pointer"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection",
     "invalid copy direction for memcpy"},
    {cudaErrorMissingConfiguration, "cudaErrorMissingConfiguration",
     "__global__ function call is not configured"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorInvalidDeviceFunction, "cudaErrorInvalidDeviceFunction", "invalid device function"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorNoKernelImageForDevice, "cudaErrorNoKernelImageForDevice",
     "no kernel image is available for execution on the device"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorIllegalState, "cudaErrorIllegalState",
     "the operation cannot be performed in the present state"},
    {cudaErrorSymbolNotFound, "cudaErrorSymbolNotFound", "named symbol not found"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress",
     "an illegal memory access was encountered"},
    {cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources",
     "too many resources requested for launch"},
    {cudaErrorLaunchTimeout, "cudaErrorLaunchTimeout", "the launch timed out and was terminated"},
    {cudaErrorAssert, "cudaErrorAssert", "device-side assert triggered"},
    {cudaErrorHardwareStackError, "cudaErrorHardwareStackError", "hardware stack error"},
    {cudaErrorIllegalInstruction, "cudaErrorIllegalInstruction",
     "an illegal instruction was encountered"},
    {cudaErrorMisalignedAddress, "cudaErrorMisalignedAddress", "misaligned address"},
    {cudaErrorInvalidAddressSpace, "cudaErrorInvalidAddressSpace",
     "operation not supported on global/shared address space"},
    {cudaErrorInvalidPc, "cudaErrorInvalidPc", "invalid program counter"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorCooperativeLaunchTooLarge, "cudaErrorCooperativeLaunchTooLarge",
     "too many blocks in cooperative launch"},
    {cudaErrorNotPermitted, "cudaErrorNotPermitted", "operation not permitted"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
    {cudaErrorInvalidClusterSize, "cudaErrorInvalidClusterSize", "invalid cluster size"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};

static const zi_emu_errname *zi_emu_rt_error(cudaError_t e)
{
    return zi_emu_errname_find(zi_emu_rt_errors, ZI_EMU_COUNT(zi_emu_rt_errors), (int)e);
}

/* cudaGetErrorString: "If the error code is not recognized, "unrecognized error code" is
 * returned" (Runtime API, Error Handling); cudaGetErrorName likewise. */
const char *cudaGetErrorName(cudaError_t error)
{
    const zi_emu_errname *n = zi_emu_rt_error(error);
    return n ? n->name : "unrecognized error code";
}

const char *cudaGetErrorString(cudaError_t error)
{
    const zi_emu_errname *n = zi_emu_rt_error(error);
    return n ? n->text : "unrecognized error code";
}

/* ---- device management ---- */

cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaGetDeviceCount: count is NULL");
    *count = 1;
    return cudaSuccess;
}

/* "Valid device id's are 0 to (cudaGetDeviceCount() - 1)" (cudaSetDevice). */
cudaError_t cudaSetDevice(int device)
{
    if (device != 0)
        return zi_emu_fail(cudaErrorInvalidDevice, "cudaSetDevice(%d): only device 0 exists",
                           device);
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    if (!device)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaGetDevice: device is NULL");
    *device = 0;
    return cudaSuccess;
}

/* cudaDeviceSynchronize: "Blocks until the device has completed all preceding requested
 * tasks" - everything queued on every stream runs. */
cudaError_t cudaDeviceSynchronize(void)
{
    zi_emu_device_sync();
    return zi_emu_lost();
}

cudaError_t cudaDriverGetVersion(int *driverVersion)
{
    if (!driverVersion)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaDriverGetVersion: NULL");
    *driverVersion = ZI_EMU_DRIVER_VERSION;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *runtimeVersion)
{
    if (!runtimeVersion)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaRuntimeGetVersion: NULL");
    *runtimeVersion = CUDART_VERSION;
    return cudaSuccess;
}

static size_t zi_emu_total(void)
{
    zi_emu_lock();
    size_t t = g_emu.total;
    zi_emu_unlock();
    return t;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (!prop)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaGetDeviceProperties: prop is NULL");
    if (device != 0)
        return zi_emu_fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties(%d)", device);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "%s", ZI_EMU_DEVICE_NAME);
    prop->totalGlobalMem = zi_emu_total();
    prop->sharedMemPerBlock = ZI_EMU_SMEM_DEFAULT;
    prop->sharedMemPerBlockOptin = (size_t)zi_emu_max_optin_smem();
    prop->sharedMemPerMultiprocessor = ZI_EMU_SMEM_PER_SM;
    prop->reservedSharedMemPerBlock = 1024;
    prop->regsPerBlock = 65536;
    prop->regsPerMultiprocessor = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024;
    prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff;
    prop->maxGridSize[1] = 65535;
    prop->maxGridSize[2] = 65535;
    prop->totalConstMem = 65536;
    prop->major = ZI_EMU_CC_MAJOR;
    prop->minor = ZI_EMU_CC_MINOR;
    prop->multiProcessorCount = ZI_EMU_SM_COUNT;
    prop->l2CacheSize = ZI_EMU_L2_BYTES;
    prop->maxThreadsPerMultiProcessor = 2048;
    prop->maxBlocksPerMultiProcessor = 32;
    prop->memoryBusWidth = 5120;
    prop->concurrentKernels = 1;
    prop->unifiedAddressing = 1;
    prop->canMapHostMemory = 1;
    prop->asyncEngineCount = 2;
    prop->memPitch = SIZE_MAX;
    prop->textureAlignment = 512;
    return cudaSuccess;
}

/* cudaDeviceGetAttribute: the attributes the backend and kernels query; any other one is
 * reported (not silently zero) so a new query is noticed and emulated. */
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    if (!value)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: value is NULL");
    if (device != 0)
        return zi_emu_fail(cudaErrorInvalidDevice, "cudaDeviceGetAttribute(device %d)", device);
    switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
        *value = ZI_EMU_CC_MAJOR;
        break;
    case cudaDevAttrComputeCapabilityMinor:
        *value = ZI_EMU_CC_MINOR;
        break;
    case cudaDevAttrMultiProcessorCount:
        *value = ZI_EMU_SM_COUNT;
        break;
    case cudaDevAttrL2CacheSize:
        *value = ZI_EMU_L2_BYTES;
        break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
        *value = ZI_EMU_SMEM_DEFAULT;
        break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
        *value = zi_emu_max_optin_smem();
        break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
        *value = ZI_EMU_SMEM_PER_SM;
        break;
    case cudaDevAttrWarpSize:
        *value = 32;
        break;
    case cudaDevAttrMaxThreadsPerBlock:
    case cudaDevAttrMaxBlockDimX:
    case cudaDevAttrMaxBlockDimY:
        *value = 1024;
        break;
    case cudaDevAttrMaxBlockDimZ:
        *value = 64;
        break;
    case cudaDevAttrMaxGridDimX:
        *value = 0x7fffffff;
        break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ:
        *value = 65535;
        break;
    case cudaDevAttrMaxRegistersPerBlock:
    case cudaDevAttrMaxRegistersPerMultiprocessor:
        *value = 65536;
        break;
    case cudaDevAttrMaxThreadsPerMultiProcessor:
        *value = 2048;
        break;
    case cudaDevAttrUnifiedAddressing:
    case cudaDevAttrConcurrentKernels:
        *value = 1;
        break;
    default:
        return zi_emu_fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute(%d): not emulated",
                           (int)attr);
    }
    return cudaSuccess;
}

/* cudaMemGetInfo: free = total - what cudaMalloc and cuMemCreate hold. */
cudaError_t cudaMemGetInfo(size_t *free, size_t *total)
{
    if (!free || !total)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaMemGetInfo: NULL argument");
    ZI_EMU_RETURN_IF_LOST(cudaError_t);
    zi_emu_lock();
    *free = g_emu.total - g_emu.used;
    *total = g_emu.total;
    zi_emu_unlock();
    return cudaSuccess;
}

/* ---- memory ---- */

/* Device memory a block of `size` bytes holds (cudaMalloc rounds to its alignment). */
static size_t zi_emu_charge(size_t size)
{
    return (size + ZI_EMU_MALLOC_ALIGN - 1) / ZI_EMU_MALLOC_ALIGN * ZI_EMU_MALLOC_ALIGN;
}

/* cudaMalloc: "Allocates size bytes of linear memory on the device ... The memory is not
 * cleared. cudaMalloc() returns cudaErrorMemoryAllocation in case of failure." A zero size
 * gives a NULL pointer (and success), as the runtime does. */
cudaError_t cudaMalloc(void **devPtr, size_t size)
{
    if (!devPtr)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaMalloc: devPtr is NULL");
    ZI_EMU_RETURN_IF_LOST(cudaError_t);
    if (size == 0) {
        *devPtr = NULL;
        return cudaSuccess;
    }
    if (size > SIZE_MAX - ZI_EMU_MALLOC_ALIGN)
        return zi_emu_fail(cudaErrorMemoryAllocation, "cudaMalloc(%zu): too large", size);
    size_t charge = zi_emu_charge(size);
    zi_emu_lock();
    size_t avail = g_emu.total - g_emu.used;
    zi_emu_range *nb = zi_emu_grow(g_emu.blk, &g_emu.capblk, g_emu.nblk + 1, sizeof *nb);
    void *p = NULL;
    if (nb)
        g_emu.blk = nb;
    if (charge > avail || !nb || posix_memalign(&p, ZI_EMU_MALLOC_ALIGN, size) != 0) {
        zi_emu_unlock();
        return zi_emu_fail(cudaErrorMemoryAllocation,
                           "cudaMalloc(%zu): %zu of %zu bytes of device memory free", size, avail,
                           g_emu.total);
    }
    uintptr_t a = (uintptr_t)p;
    size_t at;
    ZI_EMU_INSERT_AT(g_emu.blk, g_emu.nblk, a, at);
    g_emu.blk[at].base = a;
    g_emu.blk[at].size = size;
    g_emu.used += charge;
    zi_emu_unlock();
    memset(p, ZI_EMU_POISON, size);
    *devPtr = p;
    return cudaSuccess;
}

/* cudaFree: "If cudaFree(devPtr) has already been called before, an error is returned. If
 * devPtr is 0, no operation is performed." Only a pointer cudaMalloc returned is accepted
 * (not an interior pointer, not VMM or host memory). */
cudaError_t cudaFree(void *devPtr)
{
    if (!devPtr)
        return cudaSuccess;
    zi_emu_device_sync(); /* "may perform implicit synchronization": it does (stream queues) */
    uintptr_t a = (uintptr_t)devPtr;
    zi_emu_lock();
    long i = zi_emu_blk_at_locked(a);
    if (i < 0 || g_emu.blk[i].base != a) {
        zi_emu_unlock();
        return zi_emu_fail(cudaErrorInvalidValue,
                           "cudaFree(%p): not a live cudaMalloc pointer (double free, interior "
                           "pointer, or not from cudaMalloc)",
                           devPtr);
    }
    g_emu.used -= zi_emu_charge(g_emu.blk[i].size);
    memmove(&g_emu.blk[i], &g_emu.blk[i + 1], (g_emu.nblk - (size_t)i - 1) * sizeof *g_emu.blk);
    g_emu.nblk--;
    zi_emu_unlock();
    free(devPtr);
    return zi_emu_lost(); /* released, but a lost context reports its fault */
}

/* cudaHostAlloc: page-locked host memory; flags are orthogonal bits of Portable, Mapped
 * and WriteCombined (Default = 0). Host memory: not device memory for copy directions. */
cudaError_t cudaHostAlloc(void **pHost, size_t size, unsigned int flags)
{
    const unsigned known = cudaHostAllocPortable | cudaHostAllocMapped | cudaHostAllocWriteCombined;
    if (!pHost || (flags & ~known))
        return zi_emu_fail(cudaErrorInvalidValue, "cudaHostAlloc(%zu, flags 0x%x)", size, flags);
    if (size == 0) {
        *pHost = NULL;
        return cudaSuccess;
    }
    void *p = NULL;
    zi_emu_lock();
    zi_emu_range *nh = zi_emu_grow(g_emu.host, &g_emu.caphost, g_emu.nhost + 1, sizeof *nh);
    if (nh)
        g_emu.host = nh;
    int over = g_emu.pinned_limit && size > g_emu.pinned_limit - g_emu.pinned;
    if (!nh || over || posix_memalign(&p, ZI_EMU_HOST_ALIGN, size) != 0) {
        zi_emu_unlock();
        return zi_emu_fail(cudaErrorMemoryAllocation, "cudaHostAlloc(%zu): out of %smemory", size,
                           over ? "page-locked (ZI_EMU_PINNED_MEMORY) " : "");
    }
    g_emu.host[g_emu.nhost].base = (uintptr_t)p;
    g_emu.host[g_emu.nhost].size = size;
    g_emu.nhost++;
    g_emu.pinned += size;
    zi_emu_unlock();
    memset(p, ZI_EMU_POISON, size);
    *pHost = p;
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t size)
{
    return cudaHostAlloc(ptr, size, cudaHostAllocDefault);
}

/* cudaFreeHost: the pointer "must have been returned by a previous call to
 * cudaMallocHost() or cudaHostAlloc()". */
cudaError_t cudaFreeHost(void *ptr)
{
    if (!ptr)
        return cudaSuccess;
    zi_emu_device_sync(); /* as cudaFree (cuMemFreeHost): queued copies may still use it */
    zi_emu_lock();
    size_t i = 0;
    while (i < g_emu.nhost && g_emu.host[i].base != (uintptr_t)ptr)
        i++;
    if (i == g_emu.nhost) {
        zi_emu_unlock();
        return zi_emu_fail(cudaErrorInvalidValue,
                           "cudaFreeHost(%p): not from cudaHostAlloc (or freed twice)", ptr);
    }
    g_emu.pinned -= g_emu.host[i].size;
    g_emu.host[i] = g_emu.host[--g_emu.nhost];
    zi_emu_unlock();
    free(ptr);
    return zi_emu_lost();
}

static const char *zi_emu_kind_name(enum cudaMemcpyKind kind)
{
    switch (kind) {
    case cudaMemcpyHostToHost:
        return "HostToHost";
    case cudaMemcpyHostToDevice:
        return "HostToDevice";
    case cudaMemcpyDeviceToHost:
        return "DeviceToHost";
    case cudaMemcpyDeviceToDevice:
        return "DeviceToDevice";
    case cudaMemcpyDefault:
        return "Default";
    }
    return "?";
}

/* cudaMemcpy: kind "must be one of cudaMemcpyHostToHost, cudaMemcpyHostToDevice,
 * cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, or cudaMemcpyDefault" (else
 * cudaErrorInvalidMemcpyDirection); "Calling cudaMemcpy() with dst and src pointers that do
 * not match the direction of the copy results in an undefined behavior" - here an error
 * (cudaErrorInvalidValue, nothing copied). A device side must lie wholly in device memory,
 * a host side wholly outside it; cudaMemcpyDefault infers each side from the pointer
 * (unified addressing). Overlapping ranges are undefined (memcpy semantics): rejected. */
typedef struct zi_emu_copy_work {
    const char *api;
    void *dst;
    const void *src;
    size_t n;
    int dst_dev, src_dev, dst_pinned, src_pinned;
    void *staged; /* the pageable source, read at the call */
} zi_emu_copy_work;

static void zi_emu_copy_run(void *p)
{
    zi_emu_copy_work *w = p;
    zi_emu_recheck(w->api, "the destination", w->dst, w->n, w->dst_dev, w->dst_pinned, 1);
    if (!w->staged)
        zi_emu_recheck(w->api, "the source", w->src, w->n, w->src_dev, w->src_pinned, 0);
    memcpy(w->dst, w->staged ? w->staged : w->src, w->n);
}

static void zi_emu_copy_free(void *p)
{
    zi_emu_copy_work *w = p;
    free(w->staged);
    free(w);
}

static cudaError_t zi_emu_copy(const char *api, void *dst, const void *src, size_t count,
                               enum cudaMemcpyKind kind, int async, cudaStream_t stream)
{
    ZI_EMU_RETURN_IF_LOST(cudaError_t);
    if (async && !zi_emu_stream_ok(stream))
        return zi_emu_fail(cudaErrorInvalidResourceHandle, "%s: stream %p is not a live stream",
                           api, (void *)stream);
    if ((int)kind < (int)cudaMemcpyHostToHost || (int)kind > (int)cudaMemcpyDefault)
        return zi_emu_fail(cudaErrorInvalidMemcpyDirection, "%s: kind %d", api, (int)kind);
    if (count == 0)
        return cudaSuccess;
    if (!dst || !src)
        return zi_emu_fail(cudaErrorInvalidValue, "%s(%p <- %p, %zu bytes): NULL pointer", api, dst,
                           src, count);
    int dst_dev = zi_emu_dev_range(dst, count, 1), src_dev = zi_emu_dev_range(src, count, 0);
    int dst_host = zi_emu_host_range(dst, count), src_host = zi_emu_host_range(src, count);
    int want_src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    int want_dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyDefault) {
        want_src_dev = src_dev;
        want_dst_dev = dst_dev;
    }
    if (want_src_dev ? !src_dev : !src_host)
        return zi_emu_fail(cudaErrorInvalidValue,
                           "%s(%s, %zu bytes): source %p is not wholly %s memory", api,
                           zi_emu_kind_name(kind), count, src, want_src_dev ? "device" : "host");
    if (want_dst_dev ? !dst_dev : !dst_host)
        return zi_emu_fail(cudaErrorInvalidValue,
                           "%s(%s, %zu bytes): destination %p is not wholly %s%s memory", api,
                           zi_emu_kind_name(kind), count, dst, want_dst_dev ? "writable " : "",
                           want_dst_dev ? "device" : "host");
    const char *d = dst, *s = src;
    if (d < s + count && s < d + count)
        return zi_emu_fail(cudaErrorInvalidValue, "%s(%p <- %p, %zu bytes): ranges overlap", api,
                           dst, src, count);
    zi_emu_copy_work *w = calloc(1, sizeof *w);
    if (!w)
        return zi_emu_fail(cudaErrorMemoryAllocation, "%s: no host memory", api);
    w->api = api;
    w->dst = dst;
    w->src = src;
    w->n = count;
    w->dst_dev = want_dst_dev;
    w->src_dev = want_src_dev;
    w->dst_pinned = !want_dst_dev && zi_emu_is_pinned_range(dst, count);
    w->src_pinned = !want_src_dev && zi_emu_is_pinned_range(src, count);
    int h2d = !w->src_dev && w->dst_dev, d2h = w->src_dev && !w->dst_dev;
    int h2h = !w->src_dev && !w->dst_dev;
    /* pageable -> device: the source is staged (read) now, the device write is queued */
    int stage = h2d && !w->src_pinned;
    /* which calls return only once the copy is done (API synchronization behavior) */
    int wait = async ? h2h || (d2h && !w->dst_pinned) : h2h || d2h || (h2d && w->src_pinned);
    if (stage) {
        w->staged = malloc(count);
        if (!w->staged) {
            free(w);
            return zi_emu_fail(cudaErrorMemoryAllocation, "%s: no host memory to stage %zu bytes",
                               api, count);
        }
    }
    zi_emu_q_lock();
    struct CUstream_st *q = zi_emu_q_of(async ? stream : NULL);
    if (!q) {
        zi_emu_q_unlock();
        zi_emu_copy_free(w);
        return zi_emu_fail(cudaErrorInvalidResourceHandle, "%s: stream %p is not a live stream",
                           api, (void *)stream);
    }
    if (stage && !async)
        zi_emu_q_drain(q); /* "a stream sync is performed before the copy is initiated" */
    if (stage)
        memcpy(w->staged, src, count);
    zi_emu_range use[2] = {{(uintptr_t)dst, count}, {(uintptr_t)src, stage ? 0 : count}};
    zi_emu_q_submit(q, api, zi_emu_copy_run, zi_emu_copy_free, w, wait, use, 2);
    zi_emu_q_unlock();
    return zi_emu_lost(); /* a wait for the copy may have met the fault */
}

/* cudaMemcpy goes through the legacy default stream ("The synchronous forms of these APIs
 * issue these copies through the default stream"); Runtime API, "API synchronization
 * behavior", Memcpy, Synchronous: pageable host -> device: "a stream sync is performed
 * before the copy is initiated. The function will return once the pageable buffer has been
 * copied to the staging memory ... but the DMA to final destination may not have
 * completed"; pinned host -> device: "synchronous with respect to the host"; device -> host:
 * "returns only once the copy has completed"; device -> device: "no host-side
 * synchronization is performed"; host -> host: "fully synchronous". */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
    return zi_emu_copy("cudaMemcpy", dst, src, count, kind, 0, NULL);
}

/* cudaMemcpyAsync: as cudaMemcpy, queued on `stream`. "API synchronization behavior",
 * Asynchronous: "If pageable memory must first be staged to pinned memory, the driver may
 * synchronize with the stream and stage the copy into pinned memory" - a pageable source is
 * read before the call returns (the stream is not waited for: that is a "may"); "For
 * transfers between device memory and pageable host memory, the function might be
 * synchronous" - device -> pageable host returns once done, as drivers do (and as
 * documented up to CUDA 11: "will return only once the copy has completed"); host -> host
 * is "fully synchronous"; "For all other transfers, the function should be fully
 * asynchronous": pinned host memory is read or written when the stream gets there. */
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream)
{
    return zi_emu_copy("cudaMemcpyAsync", dst, src, count, kind, 1, stream);
}

typedef struct zi_emu_memset_work {
    const char *api;
    void *dst;
    int value;
    size_t n;
} zi_emu_memset_work;

static void zi_emu_memset_run(void *p)
{
    zi_emu_memset_work *w = p;
    zi_emu_recheck(w->api, "the destination", w->dst, w->n, 1, 0, 1);
    memset(w->dst, w->value, w->n);
}

/* cudaMemset: "Fills the first count bytes of the memory area pointed to by devPtr with the
 * constant byte value value" - device memory only. "API synchronization behavior", Memset:
 * "The cudaMemset functions are asynchronous with respect to the host except when the
 * target is pinned host memory or a Unified Memory region": both forms are queued (cudaMemset
 * on the legacy default stream). */
static cudaError_t zi_emu_memset(const char *api, void *devPtr, int value, size_t count, int async,
                                 cudaStream_t stream)
{
    ZI_EMU_RETURN_IF_LOST(cudaError_t);
    if (async && !zi_emu_stream_ok(stream))
        return zi_emu_fail(cudaErrorInvalidResourceHandle, "%s: stream %p is not a live stream",
                           api, (void *)stream);
    if (count == 0)
        return cudaSuccess;
    if (!devPtr || !zi_emu_dev_range(devPtr, count, 1))
        return zi_emu_fail(cudaErrorInvalidValue,
                           "%s(%p, %zu bytes): not wholly inside writable device memory", api,
                           devPtr, count);
    zi_emu_memset_work *w = malloc(sizeof *w);
    if (!w)
        return zi_emu_fail(cudaErrorMemoryAllocation, "%s: no host memory", api);
    *w = (zi_emu_memset_work){.api = api, .dst = devPtr, .value = value, .n = count};
    zi_emu_range use = {(uintptr_t)devPtr, count};
    return zi_emu_q_submit_to(async ? stream : NULL, api, zi_emu_memset_run, free, w, &use, 1);
}

cudaError_t cudaMemset(void *devPtr, int value, size_t count)
{
    return zi_emu_memset("cudaMemset", devPtr, value, count, 0, NULL);
}

cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream)
{
    return zi_emu_memset("cudaMemsetAsync", devPtr, value, count, 1, stream);
}

/* ---- streams ---- */

/* cudaStreamCreateWithFlags: flags cudaStreamDefault or cudaStreamNonBlocking. */
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags)
{
    if (!pStream || (flags & ~(unsigned)cudaStreamNonBlocking))
        return zi_emu_fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags(flags 0x%x)", flags);
    struct CUstream_st *s = calloc(1, sizeof *s);
    zi_emu_q_lock();
    struct CUstream_st **nm =
        s ? zi_emu_grow(g_q.made, &g_q.capmade, g_q.nmade + 1, sizeof *nm) : NULL;
    if (nm)
        g_q.made = nm;
    if (!nm || !zi_emu_live_add(ZI_EMU_K_STREAM, s)) {
        zi_emu_q_unlock();
        free(s);
        return zi_emu_fail(cudaErrorMemoryAllocation, "cudaStreamCreateWithFlags: no memory");
    }
    s->flags = flags;
    g_q.made[g_q.nmade++] = s;
    zi_emu_q_unlock();
    *pStream = s;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *pStream)
{
    return cudaStreamCreateWithFlags(pStream, cudaStreamDefault);
}

/* cudaStreamDestroy: a created stream only (the NULL stream cannot be destroyed). "In case
 * the device is still doing work in the stream stream when cudaStreamDestroy() is called,
 * the function will return immediately and the resources associated with stream will be
 * released automatically once the device has completed all work in stream": the queued
 * work runs at a later wait that covers it (cudaDeviceSynchronize, an event). */
cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    zi_emu_q_lock();
    int ok = zi_emu_live_del(ZI_EMU_K_STREAM, stream);
    if (ok) {
        stream->dead = 1;
        zi_emu_q_sweep();
    }
    zi_emu_q_unlock();
    if (!ok)
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaStreamDestroy(%p): not a live stream", (void *)stream);
    return zi_emu_lost();
}

/* cudaStreamSynchronize: "Blocks until stream has completed all operations" - its queue runs
 * (and, for the legacy stream, the blocking streams' work it waits for). */
cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    zi_emu_q_lock();
    struct CUstream_st *q = zi_emu_q_of(stream);
    if (q)
        zi_emu_q_drain(q);
    zi_emu_q_unlock();
    if (!q)
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaStreamSynchronize(%p): not a live stream", (void *)stream);
    return zi_emu_lost();
}

/* cudaStreamQuery: "Returns cudaSuccess if all operations in stream have completed, or
 * cudaErrorNotReady if not" (not an error: the last error is unchanged). Each query that
 * finds work queued runs one piece of it, so polling makes progress. */
cudaError_t cudaStreamQuery(cudaStream_t stream)
{
    zi_emu_q_lock();
    struct CUstream_st *q = zi_emu_q_of(stream);
    int busy = q && q->head;
    if (busy)
        zi_emu_q_step(q);
    zi_emu_q_unlock();
    if (!q)
        return zi_emu_fail(cudaErrorInvalidResourceHandle, "cudaStreamQuery(%p): not a live stream",
                           (void *)stream);
    ZI_EMU_RETURN_IF_LOST(cudaError_t);
    return busy ? cudaErrorNotReady : cudaSuccess;
}

/* ---- events ---- */

/* cudaEventCreateWithFlags: Default, BlockingSync, DisableTiming, Interprocess ("
 * cudaEventDisableTiming must be set" with Interprocess, driver_types.h). */
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags)
{
    const unsigned known = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
    if (!event || (flags & ~known) ||
        ((flags & cudaEventInterprocess) && !(flags & cudaEventDisableTiming)))
        return zi_emu_fail(cudaErrorInvalidValue, "cudaEventCreateWithFlags(flags 0x%x)", flags);
    struct CUevent_st *e = calloc(1, sizeof *e);
    if (!e || !zi_emu_live_add(ZI_EMU_K_EVENT, e)) {
        free(e);
        return zi_emu_fail(cudaErrorMemoryAllocation, "cudaEventCreateWithFlags: no memory");
    }
    e->flags = flags;
    *event = e;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event)
{
    return cudaEventCreateWithFlags(event, cudaEventDefault);
}

/* cudaEventDestroy: "In case event has been recorded but has not yet been completed when
 * cudaEventDestroy() is called, the function will return immediately and the resources
 * associated with event will be released automatically once the device has completed
 * event." */
cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    zi_emu_q_lock();
    if (!zi_emu_live_del(ZI_EMU_K_EVENT, event)) {
        zi_emu_q_unlock();
        return zi_emu_fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy(%p): not a live event",
                           (void *)event);
    }
    event->dead = 1;
    if (event->pending == 0)
        free(event);
    zi_emu_q_unlock();
    return zi_emu_lost();
}

/* cudaEventRecord: "Captures in event the contents of stream at the time of this call ...
 * cudaEventRecord() can be called multiple times on the same event and will overwrite the
 * previously captured state" - a record item queued on the stream; the event completes
 * (and takes its time) when the stream's work before it has run. */
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    ZI_EMU_RETURN_IF_LOST(cudaError_t);
    if (!zi_emu_live_ok(ZI_EMU_K_EVENT, event))
        return zi_emu_fail(cudaErrorInvalidResourceHandle, "cudaEventRecord(%p): not a live event",
                           (void *)event);
    zi_emu_q_lock();
    struct CUstream_st *q = zi_emu_q_of(stream);
    if (q) {
        zi_emu_q_implicit_waits(q);
        zi_emu_item *it = zi_emu_q_push(q, "cudaEventRecord");
        it->ev = event;
        event->recorded = 1;
        event->done = 0;
        event->seq = it->seq;
        event->stream = q;
        event->pending++;
        if (g_q.sync)
            zi_emu_q_drain_to(q, it->seq);
    }
    zi_emu_q_unlock();
    if (!q)
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaEventRecord: stream %p is not a live stream", (void *)stream);
    return cudaSuccess;
}

/* cudaStreamWaitEvent: "Makes all future work submitted to stream wait for all work captured
 * in event ... event may be from a different device than stream" (one device here); "If
 * cudaEventRecord() has not been called on event, this call acts as if the record has
 * already completed" - a wait item for the capture's stream up to its record item, so the
 * wait covers the capture at the time of the call, not a later re-record. flags: 0
 * (cudaEventWaitDefault) only. */
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags)
{
    ZI_EMU_RETURN_IF_LOST(cudaError_t);
    if (flags != 0)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaStreamWaitEvent(flags 0x%x)", flags);
    if (!zi_emu_live_ok(ZI_EMU_K_EVENT, event))
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaStreamWaitEvent(%p): not a live event", (void *)event);
    zi_emu_q_lock();
    struct CUstream_st *q = zi_emu_q_of(stream);
    if (q && event->recorded && !event->done && event->stream != q) {
        zi_emu_q_implicit_waits(q);
        zi_emu_item *w = zi_emu_q_push(q, "cudaStreamWaitEvent");
        w->wait_on = event->stream;
        w->wait_seq = event->seq;
        if (g_q.sync)
            zi_emu_q_drain_to(q, w->seq);
    }
    zi_emu_q_unlock();
    if (!q)
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaStreamWaitEvent: stream %p is not a live stream", (void *)stream);
    return cudaSuccess;
}

/* cudaEventSynchronize: "Waits until the completion of all work currently captured in
 * event ... If cudaEventRecord() has not been called on event, cudaSuccess is returned
 * immediately": the capture's stream runs up to the record. */
cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    zi_emu_q_lock();
    int ok = zi_emu_live_ok(ZI_EMU_K_EVENT, event);
    if (ok && event->recorded && !event->done)
        zi_emu_q_drain_to(event->stream, event->seq);
    zi_emu_q_unlock();
    if (!ok)
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaEventSynchronize(%p): not a live event", (void *)event);
    return zi_emu_lost();
}

/* cudaEventQuery: "Returns cudaSuccess if all captured work has been completed, or
 * cudaErrorNotReady if any captured work is incomplete" (success when never recorded). Like
 * cudaStreamQuery, a query that finds work pending runs one piece of it. */
cudaError_t cudaEventQuery(cudaEvent_t event)
{
    zi_emu_q_lock();
    int ok = zi_emu_live_ok(ZI_EMU_K_EVENT, event);
    int busy = ok && event->recorded && !event->done;
    if (busy)
        zi_emu_q_step(event->stream);
    zi_emu_q_unlock();
    if (!ok)
        return zi_emu_fail(cudaErrorInvalidResourceHandle, "cudaEventQuery(%p): not a live event",
                           (void *)event);
    ZI_EMU_RETURN_IF_LOST(cudaError_t);
    return busy ? cudaErrorNotReady : cudaSuccess;
}

/* cudaEventElapsedTime: ms between two recorded events. "If cudaEventRecord() has not been
 * called on either event, then cudaErrorInvalidResourceHandle is returned ... If
 * cudaEventRecord() has been called on both events but one or both of them has not yet
 * been completed (that is, cudaEventQuery() would return cudaErrorNotReady on at least one
 * of the events), cudaErrorNotReady is returned. If either event was created with the
 * cudaEventDisableTiming flag, then this function will return
 * cudaErrorInvalidResourceHandle." */
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!ms)
        return zi_emu_fail(cudaErrorInvalidValue, "cudaEventElapsedTime: ms is NULL");
    zi_emu_q_lock();
    if (!zi_emu_live_ok(ZI_EMU_K_EVENT, start) || !zi_emu_live_ok(ZI_EMU_K_EVENT, end)) {
        zi_emu_q_unlock();
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaEventElapsedTime(%p, %p): not a live event", (void *)start,
                           (void *)end);
    }
    int timing = !((start->flags | end->flags) & cudaEventDisableTiming);
    int recorded = start->recorded && end->recorded;
    int done = start->done && end->done;
    double d = (end->t - start->t) * 1e3;
    zi_emu_q_unlock();
    if (!timing)
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaEventElapsedTime: an event was created with "
                           "cudaEventDisableTiming");
    if (!recorded)
        return zi_emu_fail(cudaErrorInvalidResourceHandle,
                           "cudaEventElapsedTime: an event was never recorded");
    if (!done)
        return cudaErrorNotReady;
    *ms = (float)d;
    return cudaSuccess;
}

/* ---- kernels: attributes and launch count ---- */

void zi_emu_func_set_max_smem(const void *fn, int bytes)
{
    zi_emu_lock();
    size_t i = 0;
    while (i < g_emu.nsmem && g_emu.smem[i].fn != fn)
        i++;
    if (i == g_emu.nsmem) {
        zi_emu_smem *ns = zi_emu_grow(g_emu.smem, &g_emu.capsmem, g_emu.nsmem + 1, sizeof *ns);
        if (!ns) {
            zi_emu_unlock();
            zi_emu_warn("zi_emu_func_set_max_smem: out of memory");
            abort();
        }
        g_emu.smem = ns;
        g_emu.smem[g_emu.nsmem++].fn = fn;
    }
    g_emu.smem[i].bytes = bytes;
    zi_emu_unlock();
}

int zi_emu_func_max_smem(const void *fn)
{
    int bytes = ZI_EMU_SMEM_DEFAULT;
    zi_emu_lock();
    for (size_t i = 0; i < g_emu.nsmem; i++)
        if (g_emu.smem[i].fn == fn)
            bytes = g_emu.smem[i].bytes;
    zi_emu_unlock();
    return bytes;
}

int zi_emu_max_optin_smem(void)
{
    /* ZI_EMU_SMEM_OPTIN_KB (48 .. 227, read at each query) plays a device with less shared
     * memory, e.g. 99 for sm_86/89 */
    const char *kb = getenv("ZI_EMU_SMEM_OPTIN_KB");
    int v = kb && *kb ? atoi(kb) : 0;
    return v >= 48 && v <= (ZI_EMU_SMEM_OPTIN >> 10) ? v << 10 : ZI_EMU_SMEM_OPTIN;
}

/* cudaFuncSetAttribute (C form): "If the specified attribute cannot be written, or if the
 * value is incorrect, then cudaErrorInvalidValue is returned."
 * cudaFuncAttributeMaxDynamicSharedMemorySize: at most
 * cudaDevAttrMaxSharedMemoryPerBlockOptin (227 KiB; the kernel's static shared memory is
 * checked at launch by the device half). PreferredSharedMemoryCarveout is a hint in
 * percent (-1 = default). Other attributes are not emulated. */
cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value)
{
    if (!func)
        return zi_emu_fail(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute: func is NULL");
    switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
        if (value < 0 || value > zi_emu_max_optin_smem())
            return zi_emu_fail(cudaErrorInvalidValue,
                               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, %d): limit %d",
                               value, zi_emu_max_optin_smem());
        zi_emu_func_set_max_smem(func, value);
        return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
        if (value < -1 || value > 100)
            return zi_emu_fail(cudaErrorInvalidValue,
                               "cudaFuncSetAttribute(PreferredSharedMemoryCarveout, %d)", value);
        return cudaSuccess;
    default:
        return zi_emu_fail(cudaErrorInvalidValue, "cudaFuncSetAttribute(attr %d): not emulated",
                           (int)attr);
    }
}

unsigned long long zi_emu_launch_count(void)
{
    return atomic_load(&g_emu_launches);
}

void zi_emu_count_launch(void)
{
    atomic_fetch_add(&g_emu_launches, 1);
}

/* ---- driver: virtual memory management ---- */

static CUresult zi_emu_cu_fail(CUresult r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static CUresult zi_emu_cu_fail(CUresult r, const char *fmt, ...)
{
    char result[32];
    snprintf(result, sizeof result, "CUresult %d", (int)r);
    va_list ap;
    va_start(ap, fmt);
    zi_emu_vsay(result, fmt, ap);
    va_end(ap);
    return r;
}

static int zi_emu_env_no_vmm(const char *want)
{
    const char *s = getenv("ZI_EMU_NO_VMM");
    return s && strcmp(s, want) == 0;
}

static CUresult zi_emu_cuDeviceGet(CUdevice *device, int ordinal)
{
    if (!device)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGet: device is NULL");
    if (ordinal != 0)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGet(%d)", ordinal);
    *device = 0;
    return CUDA_SUCCESS;
}

static CUresult zi_emu_cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    if (!pi)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: pi is NULL");
    if (dev != 0)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGetAttribute(device %d)", dev);
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
        *pi = !zi_emu_env_no_vmm("attr");
        return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING:
        *pi = 1;
        return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
        *pi = ZI_EMU_CC_MAJOR;
        return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
        *pi = ZI_EMU_CC_MINOR;
        return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
        *pi = ZI_EMU_SM_COUNT;
        return CUDA_SUCCESS;
    default:
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute(%d): not emulated",
                              (int)attrib);
    }
}

/* The allocation properties the emulator can create: pinned memory on device 0. */
static CUresult zi_emu_prop_check(const char *api, const CUmemAllocationProp *prop)
{
    if (!prop)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "%s: prop is NULL", api);
    if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                              "%s: only pinned device allocations are emulated (type %d, "
                              "location type %d)",
                              api, (int)prop->type, (int)prop->location.type);
    if (prop->location.id != 0)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_DEVICE, "%s: device %d", api, prop->location.id);
    if (prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_NONE &&
        prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "%s: handle types 0x%x not on Linux", api,
                              (unsigned)prop->requestedHandleTypes);
    return CUDA_SUCCESS;
}

/* cuMemGetAllocationGranularity: the minimal or recommended granularity "for alignment,
 * size, or address mapping" - 2 MiB for both. */
static CUresult zi_emu_cuMemGetAllocationGranularity(size_t *granularity,
                                                     const CUmemAllocationProp *prop,
                                                     CUmemAllocationGranularity_flags option)
{
    if (!granularity)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemGetAllocationGranularity: NULL");
    if (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
        option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemGetAllocationGranularity(option %d)",
                              (int)option);
    CUresult r = zi_emu_prop_check("cuMemGetAllocationGranularity", prop);
    if (r != CUDA_SUCCESS)
        return r;
    *granularity = ZI_EMU_VMM_GRAN;
    return CUDA_SUCCESS;
}

/* cuMemAddressReserve: "The size and address parameters must be a multiple of the host page
 * size and the alignment must be a power of two or zero for default alignment. If addr is
 * 0, then the driver chooses the address ... when it is non-zero then the driver treats it
 * as a hint"; flags "must be zero". The reservation is PROT_NONE address space (no memory),
 * aligned to at least the granularity so granularity-aligned offsets map. */
static CUresult zi_emu_cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                           CUdeviceptr addr, unsigned long long flags)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (!ptr || size == 0 || size % page || addr % page || flags || (alignment & (alignment - 1)))
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                              "cuMemAddressReserve(size %zu, alignment %zu, addr 0x%llx, flags "
                              "%llu)",
                              size, alignment, (unsigned long long)addr, flags);
    size_t al = alignment > ZI_EMU_VMM_GRAN ? alignment : ZI_EMU_VMM_GRAN;
    if (size > SIZE_MAX - al)
        return zi_emu_cu_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAddressReserve(%zu)", size);
    void *raw =
        mmap(NULL, size + al, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return zi_emu_cu_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAddressReserve(%zu): mmap: %s", size,
                              strerror(errno));
    uintptr_t r0 = (uintptr_t)raw, base = (r0 + al - 1) / al * al;
    if (base > r0)
        munmap(raw, base - r0);
    if (r0 + size + al > base + size)
        munmap((void *)(base + size), r0 + size + al - (base + size));
    zi_emu_lock();
    zi_emu_range *nr = zi_emu_grow(g_emu.resv, &g_emu.capresv, g_emu.nresv + 1, sizeof *nr);
    if (!nr) {
        zi_emu_unlock();
        munmap((void *)base, size);
        return zi_emu_cu_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAddressReserve: no host memory");
    }
    g_emu.resv = nr;
    g_emu.resv[g_emu.nresv].base = base;
    g_emu.resv[g_emu.nresv].size = size;
    g_emu.nresv++;
    zi_emu_unlock();
    *ptr = (CUdeviceptr)base;
    return CUDA_SUCCESS;
}

/* First mapping overlapping [a, a+n), or -1 (lock held). */
static long zi_emu_map_overlap_locked(uintptr_t a, size_t n)
{
    size_t lo = 0, hi = g_emu.nmap;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g_emu.map[mid].base < a + n)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && g_emu.map[lo - 1].base + g_emu.map[lo - 1].size > a)
        return (long)(lo - 1);
    return -1;
}

/* cuMemAddressFree: "The size must match what was given to memAddressReserve and the ptr
 * given must match what was returned". Mappings still in the range are an error here
 * (they would leak their physical memory's last reference). */
static CUresult zi_emu_cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    uintptr_t a = (uintptr_t)ptr;
    zi_emu_lock();
    size_t i = 0;
    while (i < g_emu.nresv && g_emu.resv[i].base != a)
        i++;
    if (i == g_emu.nresv || g_emu.resv[i].size != size) {
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                              "cuMemAddressFree(0x%llx, %zu): no reservation of that address "
                              "and size",
                              (unsigned long long)ptr, size);
    }
    if (zi_emu_map_overlap_locked(a, size) >= 0) {
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                              "cuMemAddressFree(0x%llx): the range still has mappings (cuMemUnmap "
                              "them first)",
                              (unsigned long long)ptr);
    }
    g_emu.resv[i] = g_emu.resv[--g_emu.nresv];
    zi_emu_unlock();
    munmap((void *)a, size);
    return (CUresult)zi_emu_lost();
}

static long zi_emu_phys_find_locked(unsigned long long id)
{
    for (size_t i = 0; i < g_emu.nphys; i++)
        if (g_emu.phys[i].id == id)
            return (long)i;
    return -1;
}

static void zi_emu_phys_free_locked(size_t i)
{
    close(g_emu.phys[i].fd);
    g_emu.used -= g_emu.phys[i].size;
    g_emu.phys[i] = g_emu.phys[--g_emu.nphys];
}

/* cuMemCreate: "The size of this allocation must be a multiple of the the value given via
 * cuMemGetAllocationGranularity with the CU_MEM_ALLOC_GRANULARITY_MINIMUM flag"; flags
 * "must be zero now"; CUDA_ERROR_OUT_OF_MEMORY past the device's memory. The memory is a
 * memfd (mapped MAP_SHARED by cuMemMap), filled with 0xff like cudaMalloc's. */
static CUresult zi_emu_cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                   const CUmemAllocationProp *prop, unsigned long long flags)
{
    ZI_EMU_RETURN_IF_LOST(CUresult);
    if (!handle || size == 0 || size % ZI_EMU_VMM_GRAN || flags)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemCreate(size %zu, flags %llu)", size,
                              flags);
    CUresult r = zi_emu_prop_check("cuMemCreate", prop);
    if (r != CUDA_SUCCESS)
        return r;
    if (zi_emu_env_no_vmm("create"))
        return zi_emu_cu_fail(CUDA_ERROR_NOT_SUPPORTED,
                              "cuMemCreate: refused (ZI_EMU_NO_VMM=create)");
    zi_emu_lock();
    size_t avail = g_emu.total - g_emu.used;
    zi_emu_phys *np = zi_emu_grow(g_emu.phys, &g_emu.capphys, g_emu.nphys + 1, sizeof *np);
    if (np)
        g_emu.phys = np;
    if (size > avail || !np) {
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_OUT_OF_MEMORY,
                              "cuMemCreate(%zu): %zu of %zu bytes of device memory free", size,
                              avail, g_emu.total);
    }
    int fd = memfd_create("zi-emu-vmm", MFD_CLOEXEC);
    void *fill = MAP_FAILED;
    if (fd >= 0 && ftruncate(fd, (off_t)size) == 0)
        fill = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fill == MAP_FAILED) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemCreate(%zu): memfd: %s", size,
                              strerror(err));
    }
    memset(fill, ZI_EMU_POISON, size);
    munmap(fill, size);
    zi_emu_phys *p = &g_emu.phys[g_emu.nphys++];
    p->id = g_emu.next_handle++;
    p->size = size;
    p->fd = fd;
    p->released = 0;
    p->nmaps = 0;
    g_emu.used += size;
    *handle = p->id;
    zi_emu_unlock();
    return CUDA_SUCCESS;
}

/* cuMemRelease: "The memory allocation will be freed when all outstanding mappings to the
 * memory are unmapped and when all outstanding references to the handle ... are also
 * released. The generic memory handle can be freed when there are still outstanding
 * mappings"; "If handle is not a valid handle the behavior is undefined" - an error here. */
static CUresult zi_emu_cuMemRelease(CUmemGenericAllocationHandle handle)
{
    zi_emu_lock();
    long i = zi_emu_phys_find_locked(handle);
    if (i < 0 || g_emu.phys[i].released) {
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                              "cuMemRelease(%llu): not a live handle (released twice?)",
                              (unsigned long long)handle);
    }
    g_emu.phys[i].released = 1;
    if (g_emu.phys[i].nmaps == 0)
        zi_emu_phys_free_locked((size_t)i);
    zi_emu_unlock();
    return (CUresult)zi_emu_lost();
}

/* The reservation holding all of [a, a+n), or -1 (lock held). */
static long zi_emu_resv_holding_locked(uintptr_t a, size_t n)
{
    for (size_t i = 0; i < g_emu.nresv; i++)
        if (a >= g_emu.resv[i].base && n <= g_emu.resv[i].size &&
            a - g_emu.resv[i].base <= g_emu.resv[i].size - n)
            return (long)i;
    return -1;
}

/* cuMemMap: "This range must be an address reservation previously reserved with
 * cuMemAddressReserve, and offset + size must be less than the size of the memory
 * allocation. Both ptr, size, and offset must be a multiple of the value given via
 * cuMemGetAllocationGranularity with the CU_MEM_ALLOC_GRANULARITY_MINIMUM flag"; offset
 * "currently must be zero"; flags "must be zero now"; "cuMemMap can only create mappings on
 * VA range reservations that are not currently mapped"; "calling cuMemMap does not make the
 * address accessible" - the mapping starts PROT_NONE. */
static CUresult zi_emu_cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                                CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    ZI_EMU_RETURN_IF_LOST(CUresult);
    uintptr_t a = (uintptr_t)ptr;
    if (size == 0 || a % ZI_EMU_VMM_GRAN || size % ZI_EMU_VMM_GRAN || offset || flags)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                              "cuMemMap(0x%llx, size %zu, offset %zu, flags %llu): address and "
                              "size must be multiples of %zu, offset and flags 0",
                              (unsigned long long)ptr, size, offset, flags, ZI_EMU_VMM_GRAN);
    zi_emu_lock();
    long h = zi_emu_phys_find_locked(handle);
    CUresult r = CUDA_SUCCESS;
    if (h < 0 || g_emu.phys[h].released)
        r = zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemMap: handle %llu is not live",
                           (unsigned long long)handle);
    else if (size > g_emu.phys[h].size)
        r = zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemMap: %zu bytes of an allocation of %zu",
                           size, g_emu.phys[h].size);
    else if (zi_emu_resv_holding_locked(a, size) < 0)
        r = zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                           "cuMemMap(0x%llx, %zu): not inside one address reservation",
                           (unsigned long long)ptr, size);
    else if (zi_emu_map_overlap_locked(a, size) >= 0)
        r = zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                           "cuMemMap(0x%llx, %zu): the range is already (partly) mapped",
                           (unsigned long long)ptr, size);
    zi_emu_map *nm = NULL;
    if (r == CUDA_SUCCESS) {
        nm = zi_emu_grow(g_emu.map, &g_emu.capmap, g_emu.nmap + 1, sizeof *nm);
        if (!nm)
            r = zi_emu_cu_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemMap: no host memory");
        else
            g_emu.map = nm;
    }
    if (r == CUDA_SUCCESS &&
        mmap((void *)a, size, PROT_NONE, MAP_SHARED | MAP_FIXED, g_emu.phys[h].fd, 0) == MAP_FAILED)
        r = zi_emu_cu_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemMap: mmap: %s", strerror(errno));
    if (r != CUDA_SUCCESS) {
        zi_emu_unlock();
        return r;
    }
    size_t at;
    ZI_EMU_INSERT_AT(g_emu.map, g_emu.nmap, a, at);
    g_emu.map[at].base = a;
    g_emu.map[at].size = size;
    g_emu.map[at].handle = handle;
    g_emu.map[at].prot = CU_MEM_ACCESS_FLAGS_PROT_NONE;
    g_emu.phys[h].nmaps++;
    zi_emu_unlock();
    return CUDA_SUCCESS;
}

/* The mappings that exactly tile [a, a+n) without holes: first index and count, or 0 (lock
 * held). */
static int zi_emu_map_span_locked(uintptr_t a, size_t n, size_t *first, size_t *count)
{
    long i = zi_emu_map_at_locked(a);
    if (i < 0 || g_emu.map[i].base != a || n == 0)
        return 0;
    uintptr_t at = a;
    for (size_t k = (size_t)i; k < g_emu.nmap; k++) {
        if (g_emu.map[k].base != at)
            return 0;
        at += g_emu.map[k].size;
        if (at == a + n) {
            *first = (size_t)i;
            *count = k - (size_t)i + 1;
            return 1;
        }
        if (at > a + n)
            return 0; /* ends inside a mapping */
    }
    return 0;
}

/* cuMemSetAccess: "The range must be a fully mapped address range containing all
 * allocations created by cuMemMap / cuMemCreate"; each CUmemAccessDesc names a location
 * (device 0 here) and PROT_NONE, PROT_READ or PROT_READWRITE. */
static CUresult zi_emu_cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                                      size_t count)
{
    ZI_EMU_RETURN_IF_LOST(CUresult);
    if (!desc || count == 0)
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemSetAccess: no access descriptor");
    int prot = -1;
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || desc[i].location.id != 0)
            return zi_emu_cu_fail(CUDA_ERROR_INVALID_DEVICE,
                                  "cuMemSetAccess: location type %d id %d (only device 0)",
                                  (int)desc[i].location.type, desc[i].location.id);
        if (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE &&
            desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READ &&
            desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemSetAccess: flags %d",
                                  (int)desc[i].flags);
        prot = (int)desc[i].flags;
    }
    uintptr_t a = (uintptr_t)ptr;
    size_t first, n;
    zi_emu_lock();
    if (!zi_emu_map_span_locked(a, size, &first, &n)) {
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                              "cuMemSetAccess(0x%llx, %zu): not a fully mapped range of whole "
                              "mappings",
                              (unsigned long long)ptr, size);
    }
    int host_prot = prot == CU_MEM_ACCESS_FLAGS_PROT_READWRITE ? PROT_READ | PROT_WRITE
                    : prot == CU_MEM_ACCESS_FLAGS_PROT_READ    ? PROT_READ
                                                               : PROT_NONE;
    if (mprotect((void *)a, size, host_prot) != 0) {
        int err = errno;
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemSetAccess: mprotect: %s",
                              strerror(err));
    }
    for (size_t k = first; k < first + n; k++)
        g_emu.map[k].prot = prot;
    zi_emu_unlock();
    return CUDA_SUCCESS;
}

/* cuMemUnmap: "The range must be the entire contiguous address range that was mapped to.
 * In other words, cuMemUnmap cannot unmap a sub-range"; "Any backing memory allocations
 * will be freed if there are no existing mappings and there are no unreleased memory
 * handles"; the range becomes a reservation again (PROT_NONE, no memory). */
static CUresult zi_emu_cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    uintptr_t a = (uintptr_t)ptr;
    size_t first, n;
    zi_emu_q_warn_users("cuMemUnmap", a, size);
    zi_emu_lock();
    if (!zi_emu_map_span_locked(a, size, &first, &n)) {
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_INVALID_VALUE,
                              "cuMemUnmap(0x%llx, %zu): not whole mappings (a sub-range, or "
                              "nothing mapped)",
                              (unsigned long long)ptr, size);
    }
    if (mmap((void *)a, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
             -1, 0) == MAP_FAILED) {
        int err = errno;
        zi_emu_unlock();
        return zi_emu_cu_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemUnmap: mmap: %s", strerror(err));
    }
    for (size_t k = first; k < first + n; k++) {
        long h = zi_emu_phys_find_locked(g_emu.map[k].handle);
        if (h >= 0 && --g_emu.phys[h].nmaps == 0 && g_emu.phys[h].released)
            zi_emu_phys_free_locked((size_t)h);
    }
    memmove(&g_emu.map[first], &g_emu.map[first + n], (g_emu.nmap - first - n) * sizeof *g_emu.map);
    g_emu.nmap -= n;
    zi_emu_unlock();
    return (CUresult)zi_emu_lost();
}

static const zi_emu_errname zi_emu_cu_errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE",
     "the operation cannot be performed in the present state"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

/* cuGetErrorString / cuGetErrorName: "If the error code is not recognized,
 * CUDA_ERROR_INVALID_VALUE will be returned and *pStr will be set to the NULL value." */
static CUresult zi_emu_cu_errlookup(CUresult error, const char **pStr, int name)
{
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    const zi_emu_errname *n =
        zi_emu_errname_find(zi_emu_cu_errors, ZI_EMU_COUNT(zi_emu_cu_errors), (int)error);
    *pStr = n ? (name ? n->name : n->text) : NULL;
    return n ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static CUresult zi_emu_cuGetErrorString(CUresult error, const char **pStr)
{
    return zi_emu_cu_errlookup(error, pStr, 0);
}

static CUresult zi_emu_cuGetErrorName(CUresult error, const char **pStr)
{
    return zi_emu_cu_errlookup(error, pStr, 1);
}

typedef void (*zi_emu_fnptr)(void);

/* The driver function `name` (NULL when unknown); *since: the CUDA version that introduced
 * it; *vmm: 1 for the VMM family. Each entry is assigned to the toolkit's PFN typedef
 * (cudaTypedefs.h), so a signature that drifts from the real driver's fails to compile. */
static zi_emu_fnptr zi_emu_driver_sym(const char *name, unsigned *since, int *vmm)
{
#define ZI_EMU_DRV(sym, ver, isvmm)                                                                \
    if (strcmp(name, #sym) == 0) {                                                                 \
        PFN_##sym##_v##ver typed_ = zi_emu_##sym;                                                  \
        *since = ver;                                                                              \
        *vmm = isvmm;                                                                              \
        return (zi_emu_fnptr)typed_;                                                               \
    }
    ZI_EMU_DRV(cuDeviceGet, 2000, 0)
    ZI_EMU_DRV(cuDeviceGetAttribute, 2000, 0)
    ZI_EMU_DRV(cuGetErrorString, 6000, 0)
    ZI_EMU_DRV(cuGetErrorName, 6000, 0)
    ZI_EMU_DRV(cuMemGetAllocationGranularity, 10020, 1)
    ZI_EMU_DRV(cuMemAddressReserve, 10020, 1)
    ZI_EMU_DRV(cuMemAddressFree, 10020, 1)
    ZI_EMU_DRV(cuMemCreate, 10020, 1)
    ZI_EMU_DRV(cuMemRelease, 10020, 1)
    ZI_EMU_DRV(cuMemMap, 10020, 1)
    ZI_EMU_DRV(cuMemUnmap, 10020, 1)
    ZI_EMU_DRV(cuMemSetAccess, 10020, 1)
#undef ZI_EMU_DRV
    return NULL;
}

/* cudaGetDriverEntryPointByVersion: "If the specified CUDA version is greater than the
 * driver version, the API will return cudaErrorInvalidValue"; "The API will return
 * cudaSuccess and set the returned funcPtr to NULL if the requested driver function is not
 * supported on the platform, no ABI compatible driver function exists for the requested
 * version or if the driver symbol is invalid", with driverStatus SymbolNotFound or
 * VersionNotSufficent; flags cudaEnableDefault, cudaEnableLegacyStream or
 * cudaEnablePerThreadDefaultStream. */
cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **funcPtr,
                                             unsigned int cudaVersion, unsigned long long flags,
                                             enum cudaDriverEntryPointQueryResult *driverStatus)
{
    if (!symbol || !funcPtr || flags > cudaEnablePerThreadDefaultStream)
        return zi_emu_fail(cudaErrorInvalidValue,
                           "cudaGetDriverEntryPointByVersion(%s, flags %llu)",
                           symbol ? symbol : "NULL", flags);
    if (cudaVersion > ZI_EMU_DRIVER_VERSION)
        return zi_emu_fail(cudaErrorInvalidValue,
                           "cudaGetDriverEntryPointByVersion(%s, version %u): the driver is %d",
                           symbol, cudaVersion, ZI_EMU_DRIVER_VERSION);
    unsigned since = 0;
    int vmm = 0;
    zi_emu_fnptr fn = zi_emu_driver_sym(symbol, &since, &vmm);
    enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSuccess;
    if (!fn || (vmm && zi_emu_env_no_vmm("1")))
        q = cudaDriverEntryPointSymbolNotFound;
    else if (cudaVersion < since)
        q = cudaDriverEntryPointVersionNotSufficent;
    _Static_assert(sizeof(void *) == sizeof(zi_emu_fnptr), "POSIX function/object pointers");
    *funcPtr = NULL;
    if (q == cudaDriverEntryPointSuccess)
        memcpy(funcPtr, &fn, sizeof *funcPtr); /* dlsym-style function -> void * */
    if (driverStatus)
        *driverStatus = q;
    return cudaSuccess;
}

/* The deprecated form: the driver's newest version of the symbol. */
cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **funcPtr, unsigned long long flags,
                                    enum cudaDriverEntryPointQueryResult *driverStatus)
{
    return cudaGetDriverEntryPointByVersion(symbol, funcPtr, ZI_EMU_DRIVER_VERSION, flags,
                                            driverStatus);
}

/* ---- GEMM core (shared by cuBLAS and cuBLASLt) ---- */

static float zi_emu_bf16_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* fp32 -> bf16 rounding to nearest, ties to even (cuda_bf16.h __float2bfloat16: "round-to-
 * nearest-even mode"); NaN stays a (quiet) NaN. */
static uint16_t zi_emu_f32_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static size_t zi_emu_dtype_size(cudaDataType t)
{
    switch (t) {
    case CUDA_R_16BF:
    case CUDA_R_16F:
        return 2;
    case CUDA_R_32F:
        return 4;
    default:
        return 0;
    }
}

static float zi_emu_load(const void *p, cudaDataType t, size_t i)
{
    if (t == CUDA_R_32F)
        return ((const float *)p)[i];
    return zi_emu_bf16_f32(((const uint16_t *)p)[i]);
}

static void zi_emu_store(void *p, cudaDataType t, size_t i, float v)
{
    if (t == CUDA_R_32F)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = zi_emu_f32_bf16(v);
}

/* Bytes a column-major rows x cols matrix with leading dimension ld spans. */
static size_t zi_emu_span(size_t rows, size_t cols, size_t ld, size_t es)
{
    return rows && cols ? ((cols - 1) * ld + rows) * es : 0;
}

/* A strided column-major matrix as byte intervals: column j is [base + j*stride, +len). */
typedef struct zi_emu_cols {
    intptr_t base;
    intptr_t stride, len;
    size_t n;
} zi_emu_cols;

static zi_emu_cols zi_emu_cols_of(const void *p, size_t rows, size_t cols, size_t ld, size_t es)
{
    zi_emu_cols c = {(intptr_t)p, (intptr_t)(ld * es), (intptr_t)(rows * es), rows ? cols : 0};
    return c;
}

static intptr_t zi_emu_floordiv(intptr_t a, intptr_t b) /* b > 0 */
{
    intptr_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* 1 when some byte of x is also a byte of y (exact for strided matrices, so column blocks
 * of one buffer that interleave without sharing bytes are not flagged). */
static int zi_emu_cols_overlap(zi_emu_cols x, zi_emu_cols y)
{
    if (x.n == 0 || y.n == 0)
        return 0;
    for (size_t j = 0; j < x.n; j++) {
        intptr_t lo = x.base + (intptr_t)j * x.stride, hi = lo + x.len; /* [lo, hi) */
        /* columns i of y with y.base + i*s < hi and y.base + i*s + len > lo */
        intptr_t imin = zi_emu_floordiv(lo - y.base - y.len, y.stride) + 1;
        intptr_t imax = zi_emu_floordiv(hi - y.base - 1, y.stride);
        if (imin < 0)
            imin = 0;
        if (imax > (intptr_t)y.n - 1)
            imax = (intptr_t)y.n - 1;
        if (imin <= imax)
            return 1;
    }
    return 0;
}

/* D[m, n] (ldd, dt) = alpha op(A)[m, k] op(B)[k, n] + beta C[m, n] (ldc, ct) (+ bias[m] of
 * type bt broadcast along the columns), all column-major; A and B bf16. Accumulates in fp32
 * (OpenBLAS), rounds D once. C is not read when beta == 0 (BLAS convention: then "C does
 * not have to be a valid input"). Returns 0 when host memory runs out. */
typedef struct zi_emu_gemm {
    int ta, tb, m, n, k;
    float alpha, beta;
    const uint16_t *A;
    size_t lda;
    const uint16_t *B;
    size_t ldb;
    const void *C;
    cudaDataType ct;
    size_t ldc;
    void *D;
    cudaDataType dt;
    size_t ldd;
    const void *bias;
    cudaDataType bt;
} zi_emu_gemm;

static int zi_emu_gemm_run(const zi_emu_gemm *g)
{
    size_t m = (size_t)g->m, n = (size_t)g->n, k = (size_t)g->k;
    size_t ra = g->ta ? k : m, ca = g->ta ? m : k; /* A as stored */
    size_t rb = g->tb ? n : k, cb = g->tb ? k : n; /* B as stored */
    float *af = malloc((ra && ca ? ra * ca : 1) * sizeof *af);
    float *bf = malloc((rb && cb ? rb * cb : 1) * sizeof *bf);
    float *df = malloc((m && n ? m * n : 1) * sizeof *df);
    if (!af || !bf || !df) {
        free(af);
        free(bf);
        free(df);
        return 0;
    }
    for (size_t j = 0; j < ca; j++)
        for (size_t i = 0; i < ra; i++)
            af[i + j * ra] = zi_emu_bf16_f32(g->A[i + j * g->lda]);
    for (size_t j = 0; j < cb; j++)
        for (size_t i = 0; i < rb; i++)
            bf[i + j * rb] = zi_emu_bf16_f32(g->B[i + j * g->ldb]);
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < m; i++)
            df[i + j * m] = g->beta != 0.0f ? zi_emu_load(g->C, g->ct, i + j * g->ldc) : 0.0f;
    if (k > 0) {
        cblas_sgemm(CblasColMajor, g->ta ? CblasTrans : CblasNoTrans,
                    g->tb ? CblasTrans : CblasNoTrans, g->m, g->n, g->k, g->alpha, af,
                    (int)(ra ? ra : 1), bf, (int)(rb ? rb : 1), g->beta, df, (int)(m ? m : 1));
    } else {
        for (size_t i = 0; i < m * n; i++)
            df[i] *= g->beta;
    }
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < m; i++) {
            float v = df[i + j * m];
            if (g->bias)
                v += zi_emu_load(g->bias, g->bt, i);
            zi_emu_store(g->D, g->dt, i + j * g->ldd, v);
        }
    free(af);
    free(bf);
    free(df);
    return 1;
}

/* A queued GEMM: its operands (as values, so later changes of descriptors or scalars do
 * not matter) and the byte spans it reads and writes (0: not touched), checked again when
 * it runs. */
typedef struct zi_emu_gemm_work {
    const char *api;
    zi_emu_gemm g;
    size_t abytes, bbytes, cbytes, dbytes, biasbytes;
} zi_emu_gemm_work;

static void zi_emu_gemm_work_run(void *p)
{
    const zi_emu_gemm_work *w = p;
    zi_emu_recheck(w->api, "A", w->g.A, w->abytes, w->abytes != 0, 0, 0);
    zi_emu_recheck(w->api, "B", w->g.B, w->bbytes, w->bbytes != 0, 0, 0);
    zi_emu_recheck(w->api, "C", w->g.C, w->cbytes, w->cbytes != 0, 0, 0);
    zi_emu_recheck(w->api, "D", w->g.D, w->dbytes, w->dbytes != 0, 0, 1);
    zi_emu_recheck(w->api, "the bias", w->g.bias, w->biasbytes, w->biasbytes != 0, 0, 0);
    if (!zi_emu_gemm_run(&w->g))
        zi_emu_fatal("%s (queued work, now running): out of host memory", w->api);
}

/* Queues the GEMM on `stream`. alpha and beta are values in w already: in host pointer
 * mode (the default) cuBLAS takes the scalars at the call, so they may live on the
 * caller's stack (cuBLAS Library, "Scalar Parameters"). */
static cublasStatus_t zi_emu_gemm_submit(const zi_emu_gemm_work *tmpl, cudaStream_t stream)
{
    if (zi_emu_lost() != cudaSuccess)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    zi_emu_gemm_work *w = malloc(sizeof *w);
    if (!w)
        return CUBLAS_STATUS_ALLOC_FAILED;
    *w = *tmpl;
    zi_emu_q_lock();
    struct CUstream_st *q = zi_emu_q_of(stream);
    zi_emu_range use[5] = {{(uintptr_t)w->g.A, w->abytes},
                           {(uintptr_t)w->g.B, w->bbytes},
                           {(uintptr_t)w->g.C, w->cbytes},
                           {(uintptr_t)w->g.D, w->dbytes},
                           {(uintptr_t)w->g.bias, w->biasbytes}};
    if (q)
        zi_emu_q_submit(q, w->api, zi_emu_gemm_work_run, free, w, 0, use, 5);
    zi_emu_q_unlock();
    if (!q) {
        zi_emu_warn("%s: stream %p is not live", tmpl->api, (void *)stream);
        free(w);
        g_emu_last = cudaErrorInvalidResourceHandle;
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuBLAS ---- */

struct cublasContext {
    cudaStream_t stream;
    void *ws;
    size_t ws_bytes;
};

/* cuBLAS and cuBLASLt handles, cuBLASLt descriptors, layouts and preferences are the
 * emulator's own zeroed structs behind the opaque pointer types, kept in the live set under
 * their kind. A create call fails with CUBLAS_STATUS_INVALID_VALUE when its output pointer
 * `out` is NULL (cublasCreate(): "if handle == NULL") and with ALLOC_FAILED when host memory
 * runs out: NULL returned, *st says which. */
static void *zi_emu_obj_new(int kind, size_t size, const void *out, cublasStatus_t *st)
{
    if (!out) {
        *st = CUBLAS_STATUS_INVALID_VALUE;
        return NULL;
    }
    void *p = calloc(1, size);
    if (p && !zi_emu_live_add(kind, p)) {
        free(p);
        p = NULL;
    }
    *st = p ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
    return p;
}

/* The destroy call `api` of an object of `kind`. A library handle must be live: else
 * CUBLAS_STATUS_NOT_INITIALIZED, "the library was not initialized" (cublasDestroy()). A
 * descriptor may be NULL (nothing to do) but not dead or foreign: INVALID_VALUE. */
static cublasStatus_t zi_emu_obj_destroy(const char *api, int kind, void *p)
{
    int lib = kind == ZI_EMU_K_BLAS || kind == ZI_EMU_K_LT;
    if (!p && !lib)
        return CUBLAS_STATUS_SUCCESS;
    if (!zi_emu_live_del(kind, p)) {
        zi_emu_warn("%s(%p): not a live %s", api, p,
                    lib ? "handle" : "descriptor (destroyed twice?)");
        return lib ? CUBLAS_STATUS_NOT_INITIALIZED : CUBLAS_STATUS_INVALID_VALUE;
    }
    free(p);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasCreate(cublasHandle_t *handle)
{
    cublasStatus_t st;
    struct cublasContext *c = zi_emu_obj_new(ZI_EMU_K_BLAS, sizeof *c, handle, &st);
    if (c)
        *handle = c;
    return st;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle)
{
    return zi_emu_obj_destroy("cublasDestroy", ZI_EMU_K_BLAS, handle);
}

/* cublasSetStream(): any stream is accepted here (as by cuBLAS); it is checked when a
 * routine runs on it. */
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t streamId)
{
    if (!zi_emu_live_ok(ZI_EMU_K_BLAS, handle))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = streamId;
    return CUBLAS_STATUS_SUCCESS;
}

/* cublasSetWorkspace(): "The workspace pointer has to be aligned to at least 256 bytes,
 * otherwise CUBLAS_STATUS_INVALID_VALUE error is returned." It must be device memory
 * (cuBLAS kernels write it): host memory is rejected the same way. */
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace,
                                  size_t workspaceSizeInBytes)
{
    if (!zi_emu_live_ok(ZI_EMU_K_BLAS, handle))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((uintptr_t)workspace % 256 != 0 || (!workspace && workspaceSizeInBytes) ||
        (workspaceSizeInBytes && !zi_emu_dev_range(workspace, workspaceSizeInBytes, 1))) {
        zi_emu_warn("cublasSetWorkspace(%p, %zu): not 256-byte aligned device memory", workspace,
                    workspaceSizeInBytes);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    handle->ws = workspace;
    handle->ws_bytes = workspaceSizeInBytes;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS:
        return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR:
        return "the functionality requested requires some license";
    }
    return "unknown cuBLAS status";
}

static int zi_emu_op_ok(int op)
{
    return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

static int zi_emu_max1(int v)
{
    return v > 1 ? v : 1;
}

/* A device fault inside a library routine: the GPU would report an illegal address to the
 * next runtime call; the routine itself fails with EXECUTION_FAILED. */
static cublasStatus_t zi_emu_blas_fault(const char *api, const char *what, const void *p,
                                        size_t bytes)
{
    zi_emu_warn("%s: %s [%p, +%zu bytes) is not device memory (illegal address)", api, what, p,
                bytes);
    g_emu_last = cudaErrorIllegalAddress;
    return CUBLAS_STATUS_EXECUTION_FAILED;
}

/* cuBLAS, cublasGemmEx(): C = alpha op(A) op(B) + beta C, column-major, op(A) m x k, op(B)
 * k x n, C m x n. CUBLAS_STATUS_INVALID_VALUE "if m < 0 or n < 0 or k < 0", a transa/transb
 * other than N, T, C, "lda < max(1, m) if transa == CUBLAS_OP_N and lda < max(1, k)
 * otherwise", "ldb < max(1, k) if transb == CUBLAS_OP_N and ldb < max(1, n) otherwise",
 * "ldc < max(1, m)", or alpha/beta NULL; CUBLAS_STATUS_NOT_SUPPORTED when "the combination
 * of the parameters Atype, Btype and Ctype or the algorithm, algo is not supported".
 * Emulated combination (cublasGemmEx type table, CUBLAS_COMPUTE_32F row): A, B CUDA_R_16BF,
 * C CUDA_R_16BF or CUDA_R_32F, alpha/beta float in host memory (default pointer mode).
 * Undefined uses are rejected too: C sharing bytes with A or B (INVALID_VALUE), operands
 * outside device memory or a dead stream (EXECUTION_FAILED, as the GPU would fault). */
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void *alpha,
                            const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t algo)
{
    const char *api = "cublasGemmEx";
    if (!zi_emu_live_ok(ZI_EMU_K_BLAS, handle)) {
        zi_emu_warn("%s: handle %p is not live", api, (void *)handle);
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    int ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    if (m < 0 || n < 0 || k < 0 || !zi_emu_op_ok(transa) || !zi_emu_op_ok(transb) ||
        lda < zi_emu_max1(ta ? k : m) || ldb < zi_emu_max1(tb ? n : k) || ldc < zi_emu_max1(m) ||
        !alpha || !beta) {
        zi_emu_warn("%s(op %d/%d, m %d n %d k %d, lda %d ldb %d ldc %d, alpha %p beta %p): "
                    "invalid arguments",
                    api, (int)transa, (int)transb, m, n, k, lda, ldb, ldc, alpha, beta);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    int algo_ok = algo == CUBLAS_GEMM_DEFAULT || algo == CUBLAS_GEMM_DEFAULT_TENSOR_OP ||
                  (algo >= CUBLAS_GEMM_ALGO0 && algo <= CUBLAS_GEMM_ALGO23) ||
                  (algo >= CUBLAS_GEMM_ALGO0_TENSOR_OP && algo <= CUBLAS_GEMM_ALGO15_TENSOR_OP);
    if (Atype != CUDA_R_16BF || Btype != CUDA_R_16BF ||
        (Ctype != CUDA_R_16BF && Ctype != CUDA_R_32F) ||
        (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC) ||
        !algo_ok) {
        zi_emu_warn("%s(Atype %d, Btype %d, Ctype %d, compute %d, algo %d): not supported (the "
                    "emulator has bf16 x bf16 -> bf16/f32 with CUBLAS_COMPUTE_32F)",
                    api, (int)Atype, (int)Btype, (int)Ctype, (int)computeType, (int)algo);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    if (!zi_emu_stream_ok(handle->stream)) {
        zi_emu_warn("%s: the handle's stream %p is not live", api, (void *)handle->stream);
        g_emu_last = cudaErrorInvalidResourceHandle;
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    float a, b;
    memcpy(&a, alpha, sizeof a);
    memcpy(&b, beta, sizeof b);
    size_t ra = (size_t)(ta ? k : m), ca = (size_t)(ta ? m : k);
    size_t rb = (size_t)(tb ? n : k), cb = (size_t)(tb ? k : n);
    size_t cs = zi_emu_dtype_size(Ctype);
    size_t abytes = zi_emu_span(ra, ca, (size_t)lda, 2),
           bbytes = zi_emu_span(rb, cb, (size_t)ldb, 2);
    size_t cbytes = zi_emu_span((size_t)m, (size_t)n, (size_t)ldc, cs);
    int reads_ab = k > 0 && a != 0.0f;
    if (reads_ab && !zi_emu_dev_range(A, abytes, 0))
        return zi_emu_blas_fault(api, "A", A, abytes);
    if (reads_ab && !zi_emu_dev_range(B, bbytes, 0))
        return zi_emu_blas_fault(api, "B", B, bbytes);
    if (!zi_emu_dev_range(C, cbytes, 1))
        return zi_emu_blas_fault(api, "C", C, cbytes);
    zi_emu_cols cc = zi_emu_cols_of(C, (size_t)m, (size_t)n, (size_t)ldc, cs);
    if (reads_ab && (zi_emu_cols_overlap(cc, zi_emu_cols_of(A, ra, ca, (size_t)lda, 2)) ||
                     zi_emu_cols_overlap(cc, zi_emu_cols_of(B, rb, cb, (size_t)ldb, 2)))) {
        zi_emu_warn("%s: C shares memory with A or B (undefined result)", api);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    zi_emu_gemm_work w = {.api = api,
                          .g = {.ta = ta,
                                .tb = tb,
                                .m = m,
                                .n = n,
                                .k = k,
                                .alpha = a,
                                .beta = b,
                                .A = A,
                                .lda = (size_t)lda,
                                .B = B,
                                .ldb = (size_t)ldb,
                                .C = C,
                                .ct = Ctype,
                                .ldc = (size_t)ldc,
                                .D = C,
                                .dt = Ctype,
                                .ldd = (size_t)ldc},
                          .abytes = reads_ab ? abytes : 0,
                          .bbytes = reads_ab ? bbytes : 0,
                          .dbytes = cbytes};
    return zi_emu_gemm_submit(&w, handle->stream);
}

/* ---- cuBLASLt ---- */

struct cublasLtContext {
    int unused;
};

typedef struct zi_emu_lt_desc {
    int32_t compute, scale, pointer_mode, ta, tb, tc, fill, bias_type;
    uint32_t epilogue;
    const void *bias;
} zi_emu_lt_desc;

typedef struct zi_emu_lt_layout {
    int32_t type;
    uint64_t rows, cols;
    int64_t ld;
} zi_emu_lt_layout;

typedef struct zi_emu_lt_pref {
    uint32_t search, reduction, align[4];
    uint64_t max_ws, impl;
    float waves;
} zi_emu_lt_pref;

cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle)
{
    cublasStatus_t st;
    struct cublasLtContext *c = zi_emu_obj_new(ZI_EMU_K_LT, sizeof *c, lightHandle, &st);
    if (c)
        *lightHandle = c;
    return st;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle)
{
    return zi_emu_obj_destroy("cublasLtDestroy", ZI_EMU_K_LT, lightHandle);
}

/* An attribute the emulator implements: where it is stored in the object and its size
 * ("size of internal storage for selected attribute"). */
typedef struct zi_emu_attr {
    int attr;
    size_t offset, size;
} zi_emu_attr;

#define ZI_EMU_ATTR(attr, type, member)                                                            \
    {                                                                                              \
        (int)(attr), offsetof(type, member), sizeof(((type *)NULL)->member)                        \
    }

/* cublasLt*SetAttribute on the live object `obj` of `kind` (`what` in messages): INVALID_VALUE
 * "if buf is NULL or sizeInBytes doesn't match size of internal storage for selected
 * attribute" (or obj is dead). Attributes not in attrs[n] are refused (NOT_SUPPORTED) rather
 * than ignored, so a GEMM never silently computes something else. */
static cublasStatus_t zi_emu_attr_set(const char *api, int kind, const char *what, void *obj,
                                      const zi_emu_attr *attrs, size_t n, int attr, const void *buf,
                                      size_t sizeInBytes)
{
    if (!zi_emu_live_ok(kind, obj) || !buf) {
        zi_emu_warn("%s(%p, %d): dead %s or NULL buf", api, obj, attr, what);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    size_t i = 0;
    while (i < n && attrs[i].attr != attr)
        i++;
    if (i == n) {
        zi_emu_warn("%s: attribute %d is not emulated", api, attr);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (sizeInBytes != attrs[i].size) {
        zi_emu_warn("%s(%d): %zu bytes, the attribute has %zu", api, attr, sizeInBytes,
                    attrs[i].size);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    memcpy((char *)obj + attrs[i].offset, buf, attrs[i].size);
    return CUBLAS_STATUS_SUCCESS;
}

/* cublasLtMatmulDescCreate: defaults per cublasLt.h - SCALE_TYPE as given, POINTER_MODE
 * HOST, TRANSA/TRANSB/TRANSC N, EPILOGUE DEFAULT, BIAS_POINTER NULL, BIAS_DATA_TYPE -1. */
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc,
                                        cublasComputeType_t computeType, cudaDataType_t scaleType)
{
    cublasStatus_t st;
    zi_emu_lt_desc *d = zi_emu_obj_new(ZI_EMU_K_LTDESC, sizeof *d, matmulDesc, &st);
    if (!d)
        return st;
    d->compute = (int32_t)computeType;
    d->scale = (int32_t)scaleType;
    d->pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    d->ta = d->tb = d->tc = CUBLAS_OP_N;
    d->fill = CUBLAS_FILL_MODE_FULL;
    d->epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    d->bias_type = -1;
    *matmulDesc = (cublasLtMatmulDesc_t)(void *)d;
    return st;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc)
{
    return zi_emu_obj_destroy("cublasLtMatmulDescDestroy", ZI_EMU_K_LTDESC, matmulDesc);
}

/* cublasLtMatmulDescSetAttribute: int32_t for the types, modes and transposes, uint32_t for
 * the epilogue, a pointer for BIAS_POINTER (cublasLt.h). */
static const zi_emu_attr zi_emu_desc_attrs[] = {
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, zi_emu_lt_desc, compute),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_SCALE_TYPE, zi_emu_lt_desc, scale),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_POINTER_MODE, zi_emu_lt_desc, pointer_mode),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_TRANSA, zi_emu_lt_desc, ta),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_TRANSB, zi_emu_lt_desc, tb),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_TRANSC, zi_emu_lt_desc, tc),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_FILL_MODE, zi_emu_lt_desc, fill),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_EPILOGUE, zi_emu_lt_desc, epilogue),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_BIAS_POINTER, zi_emu_lt_desc, bias),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, zi_emu_lt_desc, bias_type),
};

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                              cublasLtMatmulDescAttributes_t attr, const void *buf,
                                              size_t sizeInBytes)
{
    return zi_emu_attr_set("cublasLtMatmulDescSetAttribute", ZI_EMU_K_LTDESC, "descriptor",
                           matmulDesc, zi_emu_desc_attrs, ZI_EMU_COUNT(zi_emu_desc_attrs),
                           (int)attr, buf, sizeInBytes);
}

/* cublasLtMatrixLayoutCreate: type, rows, cols and the leading dimension ("stride (in
 * elements) of matrix column" for CUBLASLT_ORDER_COL, the default order). */
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld)
{
    cublasStatus_t st;
    zi_emu_lt_layout *l = zi_emu_obj_new(ZI_EMU_K_LTLAYOUT, sizeof *l, matLayout, &st);
    if (!l)
        return st;
    l->type = (int32_t)type;
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    *matLayout = (cublasLtMatrixLayout_t)(void *)l;
    return st;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout)
{
    return zi_emu_obj_destroy("cublasLtMatrixLayoutDestroy", ZI_EMU_K_LTLAYOUT, matLayout);
}

/* Preference defaults per cublasLt.h: MAX_WORKSPACE_BYTES 0, MIN_ALIGNMENT_*_BYTES 256. */
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref)
{
    cublasStatus_t st;
    zi_emu_lt_pref *p = zi_emu_obj_new(ZI_EMU_K_LTPREF, sizeof *p, pref, &st);
    if (!p)
        return st;
    for (int i = 0; i < 4; i++)
        p->align[i] = 256;
    p->reduction = CUBLASLT_REDUCTION_SCHEME_MASK;
    p->impl = UINT64_MAX;
    *pref = (cublasLtMatmulPreference_t)(void *)p;
    return st;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref)
{
    return zi_emu_obj_destroy("cublasLtMatmulPreferenceDestroy", ZI_EMU_K_LTPREF, pref);
}

/* cublasLtMatmulPreferenceSetAttribute: uint32_t SEARCH_MODE, REDUCTION_SCHEME_MASK and
 * MIN_ALIGNMENT_*; uint64_t MAX_WORKSPACE_BYTES and IMPL_MASK; float MAX_WAVES_COUNT. */
static const zi_emu_attr zi_emu_pref_attrs[] = {
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_SEARCH_MODE, zi_emu_lt_pref, search),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, zi_emu_lt_pref, max_ws),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, zi_emu_lt_pref, reduction),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, zi_emu_lt_pref, align[0]),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, zi_emu_lt_pref, align[1]),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, zi_emu_lt_pref, align[2]),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, zi_emu_lt_pref, align[3]),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT, zi_emu_lt_pref, waves),
    ZI_EMU_ATTR(CUBLASLT_MATMUL_PREF_IMPL_MASK, zi_emu_lt_pref, impl),
};

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void *buf, size_t sizeInBytes)
{
    return zi_emu_attr_set("cublasLtMatmulPreferenceSetAttribute", ZI_EMU_K_LTPREF, "preference",
                           pref, zi_emu_pref_attrs, ZI_EMU_COUNT(zi_emu_pref_attrs), (int)attr, buf,
                           sizeInBytes);
}

/* The problem a descriptor and four layouts describe, checked. */
typedef struct zi_emu_lt_problem {
    const zi_emu_lt_desc *d;
    const zi_emu_lt_layout *a, *b, *c, *dl;
    int m, n, k;
} zi_emu_lt_problem;

/* cublasLtMatmul's "D = alpha * op(A) * op(B) + beta * C": op(A) is m x k, op(B) k x n, C and
 * D m x n. Conflicting dimensions or a leading dimension smaller than the rows ("must be
 * large enough so that matrix memory locations are not overlapping (e.g. greater or equal
 * to CUBLASLT_MATRIX_LAYOUT_ROWS in case of CUBLASLT_ORDER_COL)") are INVALID_VALUE
 * ("parameters are in conflict or in an impossible configuration"); configurations the
 * emulator has no algorithm for are NOT_SUPPORTED: it has A, B bf16, C = D bf16 or f32,
 * CUBLAS_COMPUTE_32F with CUDA_R_32F scale in host memory, epilogue DEFAULT or BIAS with the
 * bias of D's type ("Bias vector elements are the same type as the elements of output
 * matrix (Dtype)", CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE), TRANSC N ("Currently only
 * CUBLAS_OP_N is supported"). */
static cublasStatus_t zi_emu_lt_check(const char *api, cublasLtMatmulDesc_t desc,
                                      cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                      cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                      zi_emu_lt_problem *pb)
{
    pb->d = (const zi_emu_lt_desc *)(void *)desc;
    pb->a = (const zi_emu_lt_layout *)(void *)Adesc;
    pb->b = (const zi_emu_lt_layout *)(void *)Bdesc;
    pb->c = (const zi_emu_lt_layout *)(void *)Cdesc;
    pb->dl = (const zi_emu_lt_layout *)(void *)Ddesc;
    if (!zi_emu_live_ok(ZI_EMU_K_LTDESC, pb->d) || !zi_emu_live_ok(ZI_EMU_K_LTLAYOUT, pb->a) ||
        !zi_emu_live_ok(ZI_EMU_K_LTLAYOUT, pb->b) || !zi_emu_live_ok(ZI_EMU_K_LTLAYOUT, pb->c) ||
        !zi_emu_live_ok(ZI_EMU_K_LTLAYOUT, pb->dl)) {
        zi_emu_warn("%s: a descriptor or layout is not live", api);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    const zi_emu_lt_desc *d = pb->d;
    if (!zi_emu_op_ok(d->ta) || !zi_emu_op_ok(d->tb)) {
        zi_emu_warn("%s: TRANSA %d / TRANSB %d", api, d->ta, d->tb);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    int ta = d->ta != CUBLAS_OP_N, tb = d->tb != CUBLAS_OP_N;
    uint64_t am = ta ? pb->a->cols : pb->a->rows, ak = ta ? pb->a->rows : pb->a->cols;
    uint64_t bk = tb ? pb->b->cols : pb->b->rows, bn = tb ? pb->b->rows : pb->b->cols;
    const zi_emu_lt_layout *all[4] = {pb->a, pb->b, pb->c, pb->dl};
    if (am != pb->dl->rows || bn != pb->dl->cols || ak != bk || pb->c->rows != pb->dl->rows ||
        pb->c->cols != pb->dl->cols) {
        zi_emu_warn("%s: op(A) %llu x %llu, op(B) %llu x %llu, C %llu x %llu, D %llu x %llu do "
                    "not fit D = op(A) op(B) + C",
                    api, (unsigned long long)am, (unsigned long long)ak, (unsigned long long)bk,
                    (unsigned long long)bn, (unsigned long long)pb->c->rows,
                    (unsigned long long)pb->c->cols, (unsigned long long)pb->dl->rows,
                    (unsigned long long)pb->dl->cols);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    for (int i = 0; i < 4; i++) {
        if (all[i]->ld < 0 || (uint64_t)all[i]->ld < (all[i]->rows ? all[i]->rows : 1)) {
            zi_emu_warn("%s: matrix %c has ld %lld < rows %llu", api, "ABCD"[i],
                        (long long)all[i] -> ld, (unsigned long long)all[i] -> rows);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
        if (all[i]->rows > INT32_MAX || all[i]->cols > INT32_MAX || all[i]->ld > INT32_MAX) {
            zi_emu_warn("%s: matrix %c exceeds int32 dimensions", api, "ABCD"[i]);
            return CUBLAS_STATUS_NOT_SUPPORTED;
        }
    }
    int32_t bias_type = d->bias_type == -1 ? pb->dl->type : d->bias_type;
    int epi_ok = d->epilogue == CUBLASLT_EPILOGUE_DEFAULT ||
                 (d->epilogue == CUBLASLT_EPILOGUE_BIAS && bias_type == pb->dl->type);
    if (pb->a->type != CUDA_R_16BF || pb->b->type != CUDA_R_16BF || pb->c->type != pb->dl->type ||
        (pb->dl->type != CUDA_R_16BF && pb->dl->type != CUDA_R_32F) ||
        (d->compute != CUBLAS_COMPUTE_32F && d->compute != CUBLAS_COMPUTE_32F_PEDANTIC) ||
        d->scale != CUDA_R_32F || d->pointer_mode != CUBLASLT_POINTER_MODE_HOST ||
        d->tc != CUBLAS_OP_N || !epi_ok) {
        zi_emu_warn("%s: types A %d B %d C %d D %d, compute %d, scale %d, pointer mode %d, "
                    "epilogue %u (bias type %d), TRANSC %d: not supported by the emulator",
                    api, pb->a->type, pb->b->type, pb->c->type, pb->dl->type, d->compute, d->scale,
                    d->pointer_mode, d->epilogue, bias_type, d->tc);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    pb->m = (int)pb->dl->rows;
    pb->n = (int)pb->dl->cols;
    pb->k = (int)ak;
    return CUBLAS_STATUS_SUCCESS;
}

/* The emulated library's single algorithm needs every operand 16-byte aligned, columns
 * included (ld * element size a multiple of 16), like cuBLASLt's vectorised kernels.
 * `al[i]` is the alignment guaranteed for A, B, C, D; bias_al that of the bias vector. */
static int zi_emu_lt_fits(const zi_emu_lt_problem *pb, const uint32_t al[4], uintptr_t bias_al)
{
    const zi_emu_lt_layout *all[4] = {pb->a, pb->b, pb->c, pb->dl};
    for (int i = 0; i < 4; i++) {
        size_t col = (size_t)all[i]->ld * zi_emu_dtype_size(all[i]->type);
        if (al[i] % ZI_EMU_LT_ALIGN != 0 || (all[i]->cols > 1 && col % ZI_EMU_LT_ALIGN != 0))
            return 0;
    }
    return pb->d->epilogue != CUBLASLT_EPILOGUE_BIAS || bias_al % ZI_EMU_LT_ALIGN == 0;
}

static uint32_t zi_emu_align_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && a % al)
        al >>= 1;
    return al;
}

/* cublasLtMatmulAlgoGetHeuristic: INVALID_VALUE "if requestedAlgoCount is less or equal to
 * zero"; SUCCESS with the results to inspect otherwise. The emulator returns its one
 * algorithm (state SUCCESS, no workspace) when it can run the problem with the
 * preference's guaranteed alignments (MIN_ALIGNMENT_*_BYTES: "Selecting a smaller value will
 * exclude algorithms that can not work with matrix A that is not as strictly aligned as
 * they need") and the bias pointer's (BIAS_POINTER: routines "like
 * cublasLtMatmulAlgoGetHeuristic() depend on its value to determine expected pointer
 * alignment"), and no result otherwise; conflicting dimensions stay INVALID_VALUE. */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
    cublasLtMatmulPreference_t preference, int requestedAlgoCount,
    cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int *returnAlgoCount)
{
    const char *api = "cublasLtMatmulAlgoGetHeuristic";
    if (!zi_emu_live_ok(ZI_EMU_K_LT, lightHandle))
        return CUBLAS_STATUS_NOT_INITIALIZED;
    const zi_emu_lt_pref *pref = (const zi_emu_lt_pref *)(void *)preference;
    if (requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount ||
        !zi_emu_live_ok(ZI_EMU_K_LTPREF, pref)) {
        zi_emu_warn("%s: requestedAlgoCount %d, results %p, count %p, preference %p", api,
                    requestedAlgoCount, (void *)heuristicResultsArray, (void *)returnAlgoCount,
                    (const void *)pref);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    *returnAlgoCount = 0;
    zi_emu_lt_problem pb;
    cublasStatus_t st = zi_emu_lt_check(api, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &pb);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED)
        return CUBLAS_STATUS_SUCCESS; /* no algorithm */
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    if (!zi_emu_lt_fits(&pb, pref->align, (uintptr_t)pb.d->bias)) {
        zi_emu_note("%s: no algorithm for alignments A %u B %u C %u D %u, bias %p (needs %d-byte "
                    "operands and columns)",
                    api, pref->align[0], pref->align[1], pref->align[2], pref->align[3], pb.d->bias,
                    ZI_EMU_LT_ALIGN);
        return CUBLAS_STATUS_SUCCESS;
    }
    cublasLtMatmulHeuristicResult_t *r = &heuristicResultsArray[0];
    memset(r, 0, sizeof *r);
    r->algo.data[0] = ZI_EMU_LT_ALGO_MAGIC;
    r->algo.data[1] = ZI_EMU_LT_ALIGN;
    r->workspaceSize = 0;
    r->state = CUBLAS_STATUS_SUCCESS;
    r->wavesCount = 1.0f;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

/* cublasLtMatmul: D = alpha op(A) op(B) + beta C (+ bias for CUBLASLT_EPILOGUE_BIAS: "Bias
 * vector length must match matrix D rows, it must be packed ... broadcasted to all columns
 * and added before applying final postprocessing" - here before D's rounding). Statuses:
 * NOT_INITIALIZED for a dead handle, INVALID_VALUE "if parameters are in conflict or in an
 * impossible configuration" (dimensions, a foreign algo, operands the algo cannot take,
 * in-place C == D with different layouts, D sharing memory with A or B, a missing bias),
 * NOT_SUPPORTED for what the emulator has no algorithm for, EXECUTION_FAILED where the GPU
 * would fault (operands outside device memory, a dead stream). algo NULL runs the implicit
 * heuristic ("When NULL, an implicit heuristics query with default search preferences will
 * be performed"). */
cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                              const void *alpha, const void *A, cublasLtMatrixLayout_t Adesc,
                              const void *B, cublasLtMatrixLayout_t Bdesc, const void *beta,
                              const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo,
                              void *workspace, size_t workspaceSizeInBytes, cudaStream_t stream)
{
    const char *api = "cublasLtMatmul";
    if (!zi_emu_live_ok(ZI_EMU_K_LT, lightHandle)) {
        zi_emu_warn("%s: handle %p is not live", api, (void *)lightHandle);
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    zi_emu_lt_problem pb;
    cublasStatus_t st = zi_emu_lt_check(api, computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &pb);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    if (!alpha || !beta || (algo && algo->data[0] != ZI_EMU_LT_ALGO_MAGIC) ||
        (pb.d->epilogue == CUBLASLT_EPILOGUE_BIAS && !pb.d->bias) ||
        (!workspace && workspaceSizeInBytes)) {
        zi_emu_warn("%s: alpha %p, beta %p, algo %s, bias %p, workspace %p (%zu bytes)", api, alpha,
                    beta, algo && algo->data[0] != ZI_EMU_LT_ALGO_MAGIC ? "foreign" : "ok",
                    pb.d->bias, workspace, workspaceSizeInBytes);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    uint32_t al[4] = {zi_emu_align_of(A), zi_emu_align_of(B), zi_emu_align_of(C),
                      zi_emu_align_of(D)};
    if (!zi_emu_lt_fits(&pb, al, (uintptr_t)pb.d->bias)) {
        zi_emu_warn("%s: operands A %p B %p C %p D %p bias %p are not aligned as the algorithm "
                    "needs (%d bytes, columns too): preferences promised more than the pointers "
                    "have",
                    api, A, B, C, (void *)D, pb.d->bias, ZI_EMU_LT_ALIGN);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    size_t cs = zi_emu_dtype_size(pb.dl->type);
    if (C == D && (pb.c->ld != pb.dl->ld || pb.c->type != pb.dl->type)) {
        zi_emu_warn("%s: in-place C == D with different leading dimensions or types", api);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (!zi_emu_stream_ok(stream)) {
        zi_emu_warn("%s: stream %p is not live", api, (void *)stream);
        g_emu_last = cudaErrorInvalidResourceHandle;
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    float a, b;
    memcpy(&a, alpha, sizeof a);
    memcpy(&b, beta, sizeof b);
    if (pb.m == 0 || pb.n == 0)
        return CUBLAS_STATUS_SUCCESS;
    size_t lda = (size_t)pb.a->ld, ldb = (size_t)pb.b->ld, ldc = (size_t)pb.c->ld,
           ldd = (size_t)pb.dl->ld;
    size_t abytes = zi_emu_span(pb.a->rows, pb.a->cols, lda, 2);
    size_t bbytes = zi_emu_span(pb.b->rows, pb.b->cols, ldb, 2);
    size_t cbytes = zi_emu_span(pb.c->rows, pb.c->cols, ldc, cs);
    size_t dbytes = zi_emu_span(pb.dl->rows, pb.dl->cols, ldd, cs);
    int reads_ab = pb.k > 0 && a != 0.0f;
    if (reads_ab && !zi_emu_dev_range(A, abytes, 0))
        return zi_emu_blas_fault(api, "A", A, abytes);
    if (reads_ab && !zi_emu_dev_range(B, bbytes, 0))
        return zi_emu_blas_fault(api, "B", B, bbytes);
    if (b != 0.0f && !zi_emu_dev_range(C, cbytes, 0))
        return zi_emu_blas_fault(api, "C", C, cbytes);
    if (!zi_emu_dev_range(D, dbytes, 1))
        return zi_emu_blas_fault(api, "D", D, dbytes);
    if (pb.d->epilogue == CUBLASLT_EPILOGUE_BIAS &&
        !zi_emu_dev_range(pb.d->bias, (size_t)pb.m * cs, 0))
        return zi_emu_blas_fault(api, "bias", pb.d->bias, (size_t)pb.m * cs);
    if (workspaceSizeInBytes && !zi_emu_dev_range(workspace, workspaceSizeInBytes, 1))
        return zi_emu_blas_fault(api, "workspace", workspace, workspaceSizeInBytes);
    zi_emu_cols dc = zi_emu_cols_of(D, pb.dl->rows, pb.dl->cols, ldd, cs);
    if ((reads_ab &&
         (zi_emu_cols_overlap(dc, zi_emu_cols_of(A, pb.a->rows, pb.a->cols, lda, 2)) ||
          zi_emu_cols_overlap(dc, zi_emu_cols_of(B, pb.b->rows, pb.b->cols, ldb, 2)))) ||
        (b != 0.0f && C != D &&
         zi_emu_cols_overlap(dc, zi_emu_cols_of(C, pb.c->rows, pb.c->cols, ldc, cs)))) {
        zi_emu_warn("%s: D shares memory with A, B or (a different) C (undefined result)", api);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    int ta = pb.d->ta != CUBLAS_OP_N, tb = pb.d->tb != CUBLAS_OP_N;
    int bias = pb.d->epilogue == CUBLASLT_EPILOGUE_BIAS;
    zi_emu_gemm_work w = {.api = api,
                          .g = {.ta = ta,
                                .tb = tb,
                                .m = pb.m,
                                .n = pb.n,
                                .k = pb.k,
                                .alpha = a,
                                .beta = b,
                                .A = A,
                                .lda = lda,
                                .B = B,
                                .ldb = ldb,
                                .C = C,
                                .ct = (cudaDataType)pb.c->type,
                                .ldc = ldc,
                                .D = D,
                                .dt = (cudaDataType)pb.dl->type,
                                .ldd = ldd,
                                .bias = bias ? pb.d->bias : NULL,
                                .bt = (cudaDataType)pb.dl->type},
                          .abytes = reads_ab ? abytes : 0,
                          .bbytes = reads_ab ? bbytes : 0,
                          .cbytes = b != 0.0f ? cbytes : 0,
                          .dbytes = dbytes,
                          .biasbytes = bias ? (size_t)pb.m * cs : 0};
    return zi_emu_gemm_submit(&w, stream);
}
