/*
 * cuda_backend.c - the backend.h interface on one NVIDIA GPU: bf16 activations and
 * weights, fp32 accumulation, cuBLASLt/cuBLAS GEMMs, own kernels for everything else
 * (kernels/zi_cuda_ops.cu, kernels/zi_cuda_attn.cu), device memory from the
 * expandable-segment allocator (kernels/zi_alloc.c over kernels/cuda_vmm.c).
 *
 * What it is: the production path. One stream per backend; every op is queued on it and
 * returns at once; download(), to_rgb8() and sync() wait. Ops check their arguments on
 * the host (never compiled out) and record the first failure as the sticky error; CUDA
 * and cuBLAS statuses are checked after every call and launch. Weights are converted to
 * bf16 on the GPU while loading (pinned double-buffered staging, see zi_cuda_h2d).
 * Temporary buffers (im2col tiles, attention scores, dtype conversions) come from the
 * same allocator and are freed right after the kernels that use them are queued: on a
 * single stream a later user is always ordered after them (zi_alloc.h, "Stream order").
 *
 * What it is not: multi-stream or thread-safe (one backend per job thread; only
 * mem_stats() may be called from another thread, e.g. the worker's heartbeat).
 * Needs compute capability 8.0+ (bf16 tensor cores). Without driver VMM support (or with
 * ZI_CUDA_ALLOCATOR=cudamalloc) every block is its own cudaMalloc.
 */
#include "backend.h"
#include "backend_check.h"
#include "rng.h"
#include "zi_alloc.h"
#include "zi_cuda.h"
#include "zi_cuda_launch.h"
#include "zi_err.h"
#include "zi_vmm.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZI_CUDA_TAG_ACT 0
#define ZI_CUDA_TAG_WEIGHT 1
#define ZI_CUDA_TAG_INTERNAL 2

/* Host staging buffers (pinned, two) and their device twins for on-GPU conversion. */
#define ZI_CUDA_STAGE_BYTES ((size_t)32 << 20)
/* cuBLAS / cuBLASLt workspace (NVIDIA recommends 32 MiB on Hopper). */
#define ZI_CUDA_WS_BYTES ((size_t)32 << 20)
/* Grow the mapped range by at least this much (fewer physical handles). */
#define ZI_CUDA_MIN_MAP ((uint64_t)32 << 20)
/* Bytes of scores (fp32) + probabilities (bf16) per row block of the GEMM attention. */
#define ZI_CUDA_SCORE_BUDGET ((size_t)96 << 20)
/* Bytes of one im2col tile (bf16). */
#define ZI_CUDA_COL_BUDGET ((size_t)64 << 20)
#define ZI_CUDA_LT_PLANS 64
/* Device memory the automatic weight budget leaves for activations and scratch until a
 * job's plan sets it: a 1024² image needs about 1.1 GB (docs/operations.md, "Size the
 * GPUs"). With a plan (zi_cuda_set_act_headroom) it is the plan plus a margin for device
 * memory the allocator does not hand out (CUDA's lazily loaded kernels, cuBLAS's own),
 * and at least the floor. */
#define ZI_CUDA_ACT_HEADROOM ((uint64_t)2 << 30)
#define ZI_CUDA_ACT_MARGIN ((uint64_t)512 << 20)
#define ZI_CUDA_ACT_FLOOR ((uint64_t)1 << 30)
/* Host weights of at least this many bytes (by default) go through the prefetch slots
 * (two), smaller ones (biases, norms) are copied right before the op on the compute
 * stream. */
#define ZI_CU_SLOTS 2
#define ZI_CU_PREFETCH_MIN ((size_t)1 << 20)
/* Where a weight kept on the host lives: a bf16 copy in page-locked memory (copies to the
 * device are DMA and overlap the compute), the loader's own mapping of a bf16 checkpoint
 * (no copy at all: the page cache holds it, evictable), or a copy in ordinary memory. */
enum { ZI_HW_PINNED, ZI_HW_MAPPED, ZI_HW_PAGEABLE, ZI_HW_KINDS };

/* Block alignment of the allocator (>= 16 for vector loads, 256 for cuBLASLt's best). */
#define ZI_CUDA_ALIGN 512

typedef struct zi_lt_plan {
    int used, use_ex;
    int m, n, k, out_dt, bias, al_a, al_b, al_c, al_bias;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} zi_lt_plan;

typedef struct zi_cuda {
    int device;
    int sm_count;
    size_t l2_bytes;
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    zi_vmm *vmm;
    /* Guards the allocator and the byte counters: mem_stats() may be called from another
     * thread (the worker's heartbeat) while the job thread allocates. */
    pthread_mutex_t lock;
    int lock_ok;
    zi_alloc *alloc; /* NULL in cudaMalloc mode */
    char *base;
    /* cudaMalloc mode (ZI_CUDA_ALLOCATOR=cudamalloc, or no VMM support): one cudaMalloc
     * per block, so compute-sanitizer sees exact bounds; slow, for checking. */
    struct zi_plain_blk {
        void *p;
        uint64_t size;
        int tag;
    } * plain;
    size_t nplain, capplain;
    uint64_t plain_alloc, plain_peak;
    uint64_t weights;
    void *ws;
    void *stage[2];
    cudaEvent_t stage_ev[2];
    int stage_next;
    void *raw[2];
    zi_lt_plan plans[ZI_CUDA_LT_PLANS];
    int plan_next;
    zi_cuda_attn_path attn_path;
    size_t score_budget, col_budget; /* ZI_CUDA_SCORE_BUDGET, ZI_CUDA_COL_BUDGET unless set */
    /* weights kept in host memory once `weight_budget` bytes are resident (UINT64_MAX: no
     * budget, every weight resident); hw[] sorted by address */
    uint64_t weight_budget;
    int budget_auto;       /* weight_budget came from "auto": re-evaluated with the headroom */
    uint64_t act_headroom; /* what "auto" leaves free for activations */
    uint64_t hw_bytes[ZI_HW_KINDS]; /* bytes of the host weights, by where they live */
    /* page-locked memory the host weights may take (ZI_CUDA_PIN_LIMIT_MB, or half the
     * host's memory, measured at the first host weight; 0: not yet) */
    uint64_t pin_limit;
    int map_weights;    /* 0: never read weights from the loader's mapping (ZI_CUDA_MAP_WEIGHTS) */
    uint64_t map_limit; /* ZI_CUDA_MEM_LIMIT_MB in bytes, 0: none */
    int flash_stages;   /* K/V tiles in flight in the flash kernel (ZI_CUDA_FLASH_STAGES) */
    int wide_stages;    /* the most this device allows the head-dim-512 kernel (0, 1 or 2) */
    struct zi_host_w {
        const char *p;
        size_t bytes;
        const char *next; /* the large host weight an op read after this one, last time */
        int kind;         /* ZI_HW_*: where the bytes live */
    } * hw;
    size_t nhw, caphw;
    /* prefetch of large host weights (zi_cu_slot_*): copies on `copy`, a second stream,
     * into device slots, one weight ahead of the ops that read them */
    uint64_t host_limit; /* ZI_CUDA_HOST_MEM_LIMIT_MB in bytes, 0: what the host has */
    /* ordinary memory the host weights may take in all, measured at the first one that
     * needs it (0: not yet; measured again once none is left) */
    uint64_t host_room;
    int prefetch;
    size_t pf_min; /* host weights of at least this many bytes use the slots */
    cudaStream_t copy;
    struct zi_cu_slot {
        void *d;
        size_t cap;
        const char *w;     /* the host weight it holds or is being filled with; NULL: none */
        cudaEvent_t ready; /* on `copy`, after the fill */
        cudaEvent_t idle;  /* on `stream`, after the last op queued that reads it */
        unsigned long long used;
    } slot[ZI_CU_SLOTS];
    const char *prev_w; /* the large host weight read last */
    unsigned long long tick;
    uint64_t pf_hits, pf_misses;
} zi_cuda;

static void zi_cuda_destroy(zi_backend *be);

static zi_cuda *zi_cu(zi_backend *be)
{
    return be->impl;
}

/* ---- status checks ---- */

/* The statuses after which the CUDA context is unusable - the runtime's words for
 * cudaErrorIllegalAddress and its kin: "This leaves the process in an inconsistent state
 * and any further CUDA work will return the same error. To continue using CUDA, the
 * process must be terminated and relaunched" - and those that say the GPU itself is gone
 * or broken (uncorrectable ECC or NVLink error, devices unavailable, unknown error after
 * an Xid). Recorded as ZI_EDEVICE, which no job clears (backend.h). */
static int zi_cu_status_fatal(cudaError_t e)
{
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorNvlinkUncorrectable:
    case cudaErrorDevicesUnavailable:
    case cudaErrorContextIsDestroyed:
    case cudaErrorExternalDevice:
    case cudaErrorUnknown:
        return 1;
    default:
        return 0;
    }
}

static void zi_cu_fail_lost(zi_backend *be, cudaError_t e, const char *what)
{
    zi_backend_fail(be, ZI_EDEVICE,
                    "the GPU failed: %s: %s (%s); its context is lost until the process "
                    "restarts",
                    what, cudaGetErrorString(e), cudaGetErrorName(e));
}

static int zi_cu_ok(zi_backend *be, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 1;
    if (zi_cu_status_fatal(e))
        zi_cu_fail_lost(be, e, what);
    else
        zi_backend_fail(be, e == cudaErrorMemoryAllocation ? ZI_ENOMEM : ZI_EBACKEND, "%s: %s (%s)",
                        what, cudaGetErrorString(e), cudaGetErrorName(e));
    return 0;
}

/* After a failure whose own status may hide a lost device (an allocation, a cuBLAS call):
 * the stream says. 1 (and ZI_EDEVICE recorded) when the device is lost. */
static int zi_cu_lost(zi_backend *be, const char *what)
{
    if (be->err == ZI_EDEVICE)
        return 1;
    cudaError_t e = cudaStreamQuery(zi_cu(be)->stream);
    if (!zi_cu_status_fatal(e))
        return 0;
    zi_cu_fail_lost(be, e, what);
    return 1;
}

static int zi_blas_ok(zi_backend *be, cublasStatus_t st, const char *what)
{
    if (st == CUBLAS_STATUS_SUCCESS)
        return 1;
    zi_backend_fail(be, st == CUBLAS_STATUS_ALLOC_FAILED ? ZI_ENOMEM : ZI_EBACKEND, "%s: %s", what,
                    cublasGetStatusString(st));
    zi_cu_lost(be, what);
    return 0;
}

/* ---- device memory ---- */

static void *zi_cuda_plain_malloc(zi_cuda *cu, size_t bytes, int tag)
{
    if (cu->nplain == cu->capplain) {
        size_t cap = cu->capplain ? cu->capplain * 2 : 256;
        struct zi_plain_blk *nb = realloc(cu->plain, cap * sizeof *nb);
        if (!nb) {
            zi_errorf(ZI_ENOMEM, "cuda alloc: out of host memory");
            return NULL;
        }
        cu->plain = nb;
        cu->capplain = cap;
    }
    /* the exact size goes to cudaMalloc, so that compute-sanitizer sees exact bounds; the
     * accounting uses the allocator's rounding, so both modes report the same figures */
    uint64_t size = ((bytes ? bytes : 1) + ZI_CUDA_ALIGN - 1) / ZI_CUDA_ALIGN * ZI_CUDA_ALIGN;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        zi_errorf(ZI_ENOMEM, "out of device memory: cudaMalloc(%llu bytes): %s",
                  (unsigned long long)size, cudaGetErrorString(e));
        return NULL;
    }
    cu->plain[cu->nplain].p = p;
    cu->plain[cu->nplain].size = size;
    cu->plain[cu->nplain].tag = tag;
    cu->nplain++;
    cu->plain_alloc += size;
    if (cu->plain_alloc > cu->plain_peak)
        cu->plain_peak = cu->plain_alloc;
    return p;
}

static void *zi_cuda_malloc(zi_backend *be, size_t bytes, int tag)
{
    zi_cuda *cu = zi_cu(be);
    void *p = NULL;
    uint64_t off;
    pthread_mutex_lock(&cu->lock);
    if (!cu->alloc)
        p = zi_cuda_plain_malloc(cu, bytes, tag);
    else if (zi_alloc_malloc(cu->alloc, bytes, tag, &off) == ZI_OK)
        p = cu->base + off;
    /* else zi_errmsg() says why */
    if (p && tag == ZI_CUDA_TAG_WEIGHT) /* as the allocator rounds (zi_cuda_mfree subtracts) */
        cu->weights += ((bytes ? bytes : 1) + ZI_CUDA_ALIGN - 1) / ZI_CUDA_ALIGN * ZI_CUDA_ALIGN;
    pthread_mutex_unlock(&cu->lock);
    if (!p && zi_cu_lost(be, "device memory")) /* a lost device fails every mapping too */
        zi_errorf(ZI_EDEVICE, "%s", be->errmsg);
    return p;
}

static void zi_cuda_mfree(zi_backend *be, void *p)
{
    zi_cuda *cu = zi_cu(be);
    if (!p)
        return;
    uint64_t size = 0;
    int tag = 0;
    pthread_mutex_lock(&cu->lock);
    if (!cu->alloc) {
        size_t i = cu->nplain;
        while (i > 0 && cu->plain[i - 1].p != p) /* recent blocks die first: search back */
            i--;
        if (i == 0) {
            zi_backend_fail(be, ZI_EINVAL, "free: %p is not a live block (double free?)", p);
            goto out;
        }
        size = cu->plain[i - 1].size;
        tag = cu->plain[i - 1].tag;
        cu->plain[i - 1] = cu->plain[--cu->nplain];
        cu->plain_alloc -= size;
        zi_cu_ok(be, cudaFree(p), "free"); /* synchronises: later users are safe */
    } else if (zi_alloc_free(cu->alloc, (uint64_t)((char *)p - cu->base), &size, &tag) != ZI_OK) {
        zi_backend_fail(be, ZI_EINVAL, "free: %s", zi_errmsg());
        goto out;
    }
    if (tag == ZI_CUDA_TAG_WEIGHT)
        cu->weights -= size;
out:
    pthread_mutex_unlock(&cu->lock);
}

/* The allocator's figures in either mode, and the weight bytes. */
static void zi_cuda_get_stats(zi_cuda *cu, zi_alloc_stats *s, uint64_t *weights)
{
    pthread_mutex_lock(&cu->lock);
    if (cu->alloc) {
        zi_alloc_get_stats(cu->alloc, s);
    } else {
        memset(s, 0, sizeof *s);
        s->reserved = s->allocated = cu->plain_alloc;
        s->peak = s->peak_reserved = cu->plain_peak;
        s->mapped_chunks = s->n_blocks = s->n_allocs = cu->nplain;
    }
    if (weights)
        *weights = cu->weights;
    pthread_mutex_unlock(&cu->lock);
}

/* Scratch for one op; on failure the sticky error is set and NULL returned. */
static void *zi_cuda_tmp(zi_backend *be, const char *op, size_t bytes)
{
    void *p = zi_cuda_malloc(be, bytes, ZI_CUDA_TAG_INTERNAL);
    if (!p)
        zi_backend_fail(be, ZI_ENOMEM, "%s: %s", op, zi_errmsg());
    return p;
}

static int zi_cuda_alloc_kind(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape,
                              zi_dtype dt, int tag)
{
    size_t n;
    int rc = zi_be_alloc_shape(be, t, ndim, shape, &n);
    if (rc != ZI_OK)
        return rc;
    size_t nbytes = n * zi_dtype_size(dt);
    void *p = zi_cuda_malloc(be, nbytes, tag);
    if (!p)
        return be->err == ZI_EDEVICE ? ZI_EDEVICE : ZI_ENOMEM;
    zi_be_tensor_init(be, t, p, dt, ndim, shape);
    return ZI_OK;
}

static int zi_cuda_alloc(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape)
{
    return zi_cuda_alloc_kind(be, t, ndim, shape, ZI_BF16, ZI_CUDA_TAG_ACT);
}

static int zi_cuda_alloc_f32(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape)
{
    return zi_cuda_alloc_kind(be, t, ndim, shape, ZI_F32, ZI_CUDA_TAG_ACT);
}

/* ---- weights kept on the host (a weight budget, for GPUs too small for the model) ---- */

/* Index of the host weight holding p, or -1. */
static long zi_cu_host_weight(const zi_cuda *cu, const void *p)
{
    const char *c = p;
    size_t lo = 0, hi = cu->nhw;
    while (lo < hi) { /* first entry starting after c */
        size_t mid = (lo + hi) / 2;
        if (cu->hw[mid].p <= c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    const struct zi_host_w *w = &cu->hw[lo - 1];
    return c < w->p + w->bytes ? (long)(lo - 1) : -1;
}

/* The /proc/meminfo line `key` ("MemAvailable", "MemTotal") in bytes, UINT64_MAX when it
 * cannot be read. */
static uint64_t zi_host_meminfo(const char *key)
{
    uint64_t v = UINT64_MAX;
    char line[128];
    size_t n = strlen(key);
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return v;
    unsigned long long kb;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':' &&
            sscanf(line + n + 1, " %llu kB", &kb) == 1) {
            v = (uint64_t)kb << 10;
            break;
        }
    fclose(f);
    return v;
}

/* The number a cgroup v2 file holds (memory.max, memory.current) in *v; 0 when the file
 * is missing or says "max" (no limit). */
static int zi_host_cgroup(const char *file, uint64_t *v)
{
    char path[96];
    unsigned long long n;
    snprintf(path, sizeof path, "/sys/fs/cgroup/%s", file);
    FILE *f = fopen(path, "r");
    int ok = f && fscanf(f, "%llu", &n) == 1;
    if (f)
        fclose(f);
    if (ok)
        *v = n;
    return ok;
}

/* Bytes of host memory a new allocation may still take: MemAvailable, or less under a
 * cgroup v2 memory limit (a container's); UINT64_MAX when neither can be read. */
static uint64_t zi_host_mem_available(void)
{
    uint64_t avail = zi_host_meminfo("MemAvailable"), max, cur;
    if (zi_host_cgroup("memory.max", &max) && zi_host_cgroup("memory.current", &cur)) {
        uint64_t room = max > cur ? max - cur : 0;
        avail = room < avail ? room : avail;
    }
    return avail;
}

/* Half the host's physical memory (MemTotal, or the cgroup v2 limit when lower): what the
 * host weights may page-lock unless ZI_CUDA_PIN_LIMIT_MB says otherwise; UINT64_MAX when
 * neither can be read. */
static uint64_t zi_host_pin_default(void)
{
    uint64_t total = zi_host_meminfo("MemTotal"), max;
    if (zi_host_cgroup("memory.max", &max) && max < total)
        total = max;
    return total == UINT64_MAX ? total : total / 2;
}

/* Host memory the weights kept in ordinary memory must leave free. */
#define ZI_CUDA_HOST_RESERVE ((uint64_t)512 << 20)

/* What the weights kept in ordinary host memory may take in all, counting those already
 * there: ZI_CUDA_HOST_MEM_LIMIT_MB, or what the host has available less the reserve (at
 * least 1 byte, so that 0 keeps meaning "not measured"). */
static uint64_t zi_cu_host_room(const zi_cuda *cu)
{
    if (cu->host_limit)
        return cu->host_limit;
    uint64_t avail = zi_host_mem_available();
    if (avail == UINT64_MAX)
        return UINT64_MAX;
    avail += cu->hw_bytes[ZI_HW_PAGEABLE];
    return avail > ZI_CUDA_HOST_RESERVE ? avail - ZI_CUDA_HOST_RESERVE : 1;
}

/* t (zeroed, shape set by the caller) = src as bf16 in host memory (pinned, mapped or
 * pageable: the ZI_HW_* kinds), used by the ops through a device copy made when they run
 * (zi_cu_stage). */
static int zi_cuda_host_weight_new(zi_backend *be, zi_tensor *t, const void *src, zi_dtype src_dt,
                                   size_t n)
{
    zi_cuda *cu = zi_cu(be);
    size_t bytes = n * 2;
    if (cu->nhw == cu->caphw) {
        size_t cap = cu->caphw ? cu->caphw * 2 : 256;
        struct zi_host_w *nw = realloc(cu->hw, cap * sizeof *nw);
        if (!nw)
            return zi_backend_fail(be, ZI_ENOMEM, "upload_weight: out of host memory");
        cu->hw = nw;
        cu->caphw = cap;
    }
    /* page-locked up to the pin limit, so copies are DMA and overlap the compute; past it
     * (or once the host has no more memory to lock) a bf16 weight of a checkpoint the
     * loader keeps mapped is read from that mapping, anything else is copied to ordinary
     * memory (the copies then go through the driver's staging) */
    void *h = NULL;
    int kind = ZI_HW_PINNED;
    char why[160];
    if (cu->hw_bytes[ZI_HW_PINNED] + bytes > zi_cuda_pin_limit(be)) {
        snprintf(why, sizeof why,
                 "the page-lock limit of %.1f MiB is reached: device.pin_limit_mb or "
                 "ZI_CUDA_PIN_LIMIT_MB",
                 cu->pin_limit / 1048576.0);
    } else {
        cudaError_t e = cudaHostAlloc(&h, bytes ? bytes : 1, cudaHostAllocDefault);
        if (e != cudaSuccess) {
            cudaGetLastError();
            h = NULL;
            snprintf(why, sizeof why, "page-locking failed: %s", cudaGetErrorString(e));
        }
    }
    if (!h && bytes > 0 && src_dt == ZI_BF16 && ((uintptr_t)src & 1) == 0 &&
        be->weight_src_stable && cu->map_weights) {
        h = (void *)src;
        kind = ZI_HW_MAPPED;
    }
    if (!h) {
        /* the kernel would hand out the pages lazily and kill the process when they run
         * out: refuse here, with the figures, instead */
        if (!cu->host_room)
            cu->host_room = zi_cu_host_room(cu);
        uint64_t left = cu->host_room - cu->hw_bytes[ZI_HW_PAGEABLE];
        if ((uint64_t)bytes > left)
            return zi_backend_fail(be, ZI_ENOMEM,
                                   "upload_weight: out of host memory for the weights kept on "
                                   "the host: this one needs %zu bytes, %.1f MiB are left of "
                                   "the %.1f MiB they may take in ordinary memory (%.2f GiB "
                                   "kept in all) and none is left to page-lock (%s); give the "
                                   "GPU a larger weight budget or the host more memory",
                                   bytes, left / 1048576.0, cu->host_room / 1048576.0,
                                   zi_cuda_host_weight_bytes(be) / 1073741824.0, why);
        h = malloc(bytes ? bytes : 1);
        if (!h)
            return zi_backend_fail(be, ZI_ENOMEM,
                                   "upload_weight: out of host memory for a weight kept on the "
                                   "host (%zu bytes; %s)",
                                   bytes, why);
        kind = ZI_HW_PAGEABLE;
    }
    if (kind != ZI_HW_MAPPED) {
        uint16_t *dst = h;
        float tmp[4096];
        for (size_t i = 0; i < n; i += 4096) { /* to bf16 (round to nearest even) */
            size_t cnt = n - i < 4096 ? n - i : 4096;
            zi_convert_to_f32(tmp, (const char *)src + i * zi_dtype_size(src_dt), src_dt, cnt);
            for (size_t j = 0; j < cnt; j++)
                dst[i + j] = zi_f32_to_bf16(tmp[j]);
        }
    }
    size_t at = cu->nhw;
    while (at > 0 && cu->hw[at - 1].p > (const char *)h) {
        cu->hw[at] = cu->hw[at - 1];
        at--;
    }
    cu->hw[at].p = h;
    cu->hw[at].bytes = bytes ? bytes : 1; /* an empty weight still owns its own byte */
    cu->hw[at].next = NULL;
    cu->hw[at].kind = kind;
    cu->nhw++;
    cu->hw_bytes[kind] += cu->hw[at].bytes;
    if (kind == ZI_HW_MAPPED)
        be->weights_borrowed += cu->hw[at].bytes;
    t->data = h;
    t->dtype = ZI_BF16;
    t->be = be;
    t->owned = 1;
    return ZI_OK;
}

/* Gives back the memory of host weight hw[i] (the entry stays); a mapped one is the
 * loader's to unmap. */
static void zi_cu_host_weight_release(zi_backend *be, size_t i)
{
    zi_cuda *cu = zi_cu(be);
    const struct zi_host_w *w = &cu->hw[i];
    cu->hw_bytes[w->kind] -= w->bytes;
    if (w->kind == ZI_HW_PAGEABLE) {
        if (!cu->hw_bytes[ZI_HW_PAGEABLE])
            cu->host_room = 0; /* the next load measures the host again */
        free((void *)w->p);
    } else if (w->kind == ZI_HW_PINNED) {
        cudaFreeHost((void *)w->p);
    } else {
        be->weights_borrowed -= w->bytes;
    }
}

/* A host weight about to be freed: no slot holds it, no prediction names it (a new weight
 * may get its address). */
static void zi_cu_forget_host_weight(zi_cuda *cu, const void *p)
{
    for (int s = 0; s < ZI_CU_SLOTS; s++)
        if (cu->slot[s].w == p)
            cu->slot[s].w = NULL;
    for (size_t j = 0; j < cu->nhw; j++)
        if (cu->hw[j].next == p)
            cu->hw[j].next = NULL;
    if (cu->prev_w == p)
        cu->prev_w = NULL;
}

static void zi_cuda_free(zi_backend *be, zi_tensor *t)
{
    if (!t)
        return;
    zi_cuda *cu = zi_cu(be);
    long i = t->owned && t->data ? zi_cu_host_weight(cu, t->data) : -1;
    if (i >= 0 && cu->hw[i].p == t->data) {
        /* copies queued on either stream may still read it (weights are freed at unload) */
        zi_cu_ok(be, cudaStreamSynchronize(cu->stream), "free: synchronise");
        if (cu->copy)
            zi_cu_ok(be, cudaStreamSynchronize(cu->copy), "free: synchronise copies");
        zi_cu_forget_host_weight(cu, t->data);
        zi_cu_host_weight_release(be, (size_t)i);
        memmove(&cu->hw[i], &cu->hw[i + 1], (cu->nhw - (size_t)i - 1) * sizeof cu->hw[0]);
        cu->nhw--;
    } else if (t->owned && t->data) {
        zi_cuda_mfree(be, t->data);
    }
    memset(t, 0, sizeof *t);
}

/* ---- argument checks ---- */

/* Device tensors must be this backend's: a host pointer would fault in a kernel. */
#define ZI_CU_ARGS ZI_BE_OWN

/* 1 when [a, a+na) and [b, b+nb) overlap. */
static int zi_overlap(const void *a, size_t na, const void *b, size_t nb)
{
    const char *pa = a, *pb = b;
    return pa < pb + nb && pb < pa + na;
}

/* A bf16 copy of `t`'s first n elements: t itself when already BF16, else a scratch
 * buffer (*tmp set; the caller frees it). */
static const void *zi_cu_as_bf16(zi_backend *be, const char *op, const zi_tensor *t, size_t n,
                                 void **tmp)
{
    *tmp = NULL;
    if (t->dtype == ZI_BF16)
        return t->data;
    void *p = zi_cuda_tmp(be, op, n * 2);
    if (!p)
        return NULL;
    if (!zi_cu_ok(be, zi_cu_convert(p, ZI_BF16, t->data, t->dtype, n, zi_cu(be)->stream), op)) {
        zi_cuda_mfree(be, p);
        return NULL;
    }
    *tmp = p;
    return p;
}

/* ---- transfers ---- */

/* dst (device, dtype ddt) = n elements of host src (dtype sdt), chunked through the two
 * pinned buffers: while the GPU copies and converts chunk i, the host fills chunk i+1. */
static int zi_cuda_h2d(zi_backend *be, void *dst, zi_dtype ddt, const void *src, zi_dtype sdt,
                       size_t n)
{
    zi_cuda *cu = zi_cu(be);
    size_t ss = zi_dtype_size(sdt), ds = zi_dtype_size(ddt);
    size_t per = ZI_CUDA_STAGE_BYTES / ss;
    for (size_t i = 0; i < n; i += per) {
        size_t cnt = n - i < per ? n - i : per;
        int b = cu->stage_next;
        cu->stage_next ^= 1;
        /* the copy that last read this pinned buffer must be done before we refill it */
        if (!zi_cu_ok(be, cudaEventSynchronize(cu->stage_ev[b]), "upload: staging wait"))
            return zi_backend_check(be);
        memcpy(cu->stage[b], (const char *)src + i * ss, cnt * ss);
        char *d = (char *)dst + i * ds;
        if (sdt == ddt) {
            if (!zi_cu_ok(
                    be,
                    cudaMemcpyAsync(d, cu->stage[b], cnt * ss, cudaMemcpyHostToDevice, cu->stream),
                    "upload: copy"))
                return zi_backend_check(be);
        } else {
            if (!zi_cu_ok(be,
                          cudaMemcpyAsync(cu->raw[b], cu->stage[b], cnt * ss,
                                          cudaMemcpyHostToDevice, cu->stream),
                          "upload: copy") ||
                !zi_cu_ok(be, zi_cu_convert(d, ddt, cu->raw[b], sdt, cnt, cu->stream),
                          "upload: convert"))
                return zi_backend_check(be);
        }
        if (!zi_cu_ok(be, cudaEventRecord(cu->stage_ev[b], cu->stream), "upload: event"))
            return zi_backend_check(be);
    }
    return ZI_OK;
}

static int zi_cuda_upload_weight(zi_backend *be, zi_tensor *t, const void *src, zi_dtype src_dt,
                                 int ndim, const int64_t *shape)
{
    int rc = zi_be_check_upload_weight(be, src, src_dt);
    if (rc != ZI_OK)
        return rc;
    if (be->err != ZI_OK)
        return zi_backend_check(be);
    zi_cuda *cu = zi_cu(be);
    size_t n = 0;
    rc = zi_be_alloc_shape(be, t, ndim, shape, &n);
    if (rc != ZI_OK)
        return rc;
    int budgeted = cu->weight_budget != UINT64_MAX;
    if (!budgeted || cu->weights + (uint64_t)n * 2 <= cu->weight_budget) {
        rc = zi_cuda_alloc_kind(be, t, ndim, shape, ZI_BF16, ZI_CUDA_TAG_WEIGHT);
        if (rc == ZI_OK) {
            rc = zi_cuda_h2d(be, t->data, ZI_BF16, src, src_dt, n);
            if (rc != ZI_OK)
                zi_cuda_free(be, t);
            return rc;
        }
        if (!budgeted || rc != ZI_ENOMEM)
            return rc;
        /* the device is fuller than the budget assumed (a mapping cap, another process):
         * this weight stays on the host like those past the budget */
        zi_error_clear();
    }
    zi_be_tensor_init(be, t, NULL, ZI_BF16, ndim, shape);
    if (zi_cuda_host_weight_new(be, t, src, src_dt, n) != ZI_OK)
        return zi_backend_check(be); /* the loader prefixes zi_errmsg() */
    return ZI_OK;
}

static int zi_cuda_upload(zi_backend *be, zi_tensor *dst, const float *src, size_t n)
{
    int rc = zi_be_check_upload(be, ZI_CU_ARGS, dst, src, n);
    if (rc != ZI_OK)
        return rc;
    if (be->err != ZI_OK)
        return zi_backend_check(be);
    return zi_cuda_h2d(be, dst->data, dst->dtype, src, ZI_F32, n);
}

static int zi_cuda_download(zi_backend *be, float *dst, const zi_tensor *src, size_t n)
{
    zi_cuda *cu = zi_cu(be);
    int rc = zi_be_check_download(be, ZI_CU_ARGS, dst, src, n);
    if (rc != ZI_OK)
        return rc;
    if (be->err != ZI_OK)
        return zi_backend_check(be);
    size_t per = ZI_CUDA_STAGE_BYTES / sizeof(float);
    for (size_t i = 0; i < n; i += per) {
        size_t cnt = n - i < per ? n - i : per;
        const void *from;
        if (src->dtype == ZI_F32) {
            from = (const float *)src->data + i;
        } else {
            if (!zi_cu_ok(be,
                          zi_cu_convert(cu->raw[0], ZI_F32, (const uint16_t *)src->data + i,
                                        ZI_BF16, cnt, cu->stream),
                          "download: convert"))
                return zi_backend_check(be);
            from = cu->raw[0];
        }
        if (!zi_cu_ok(be,
                      cudaMemcpyAsync(cu->stage[0], from, cnt * sizeof(float),
                                      cudaMemcpyDeviceToHost, cu->stream),
                      "download: copy") ||
            !zi_cu_ok(be, cudaStreamSynchronize(cu->stream), "download: synchronise"))
            return zi_backend_check(be);
        memcpy(dst + i, cu->stage[0], cnt * sizeof(float));
    }
    return ZI_OK;
}

static void zi_cuda_mem_stats(zi_backend *be, zi_mem_stats *out)
{
    zi_cuda *cu = zi_cu(be);
    zi_alloc_stats s;
    uint64_t weights = 0;
    zi_cuda_get_stats(cu, &s, &weights);
    memset(out, 0, sizeof *out);
    out->reserved = s.reserved;
    out->allocated = s.allocated;
    out->peak = s.peak;
    out->peak_reserved = s.peak_reserved;
    out->mapped_chunks = s.mapped_chunks;
    out->largest_free = s.largest_free;
    out->weights = weights;
    size_t fr = 0, tot = 0;
    /* may run on another thread (heartbeat): make this backend's device current there */
    if (cudaSetDevice(cu->device) == cudaSuccess && cudaMemGetInfo(&fr, &tot) == cudaSuccess) {
        out->device_free = fr;
        out->device_total = tot;
    }
}

static void zi_cuda_sync(zi_backend *be)
{
    zi_cuda *cu = zi_cu(be);
    if (zi_cu_ok(be, cudaStreamSynchronize(cu->stream), "synchronise") && cu->copy)
        zi_cu_ok(be, cudaStreamSynchronize(cu->copy), "synchronise copies");
}

/* ---- GEMM ---- */

static int zi_align_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 2 && a % (uintptr_t)al)
        al >>= 1;
    return al;
}

/* Column-major C[m, n] (ldc, dtype ct) = alpha * op(A)[m, k] op(B)[k, n] + beta * C, with
 * A and B bf16; cuBLAS picks the algorithm. */
static int zi_cuda_gemm_ex(zi_backend *be, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                           int k, float alpha, const void *A, int lda, const void *B, int ldb,
                           float beta, void *C, zi_dtype ct, int ldc, const char *op)
{
    cudaDataType_t ctype = ct == ZI_F32 ? CUDA_R_32F : CUDA_R_16BF;
    return zi_blas_ok(be,
                      cublasGemmEx(zi_cu(be)->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, B,
                                   CUDA_R_16BF, ldb, &beta, C, ctype, ldc, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT),
                      op);
}

static void zi_lt_plan_release(zi_lt_plan *p)
{
    if (p->la)
        cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb)
        cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc)
        cublasLtMatrixLayoutDestroy(p->lc);
    if (p->desc)
        cublasLtMatmulDescDestroy(p->desc);
    memset(p, 0, sizeof *p);
}

/* Builds the cuBLASLt plan of a "TN" GEMM: D[m, n] (col-major, ld m) = A[k, m]^T B[k, n]
 * with A, B bf16 (ld k), fp32 compute, optional bias[m] epilogue (same dtype as D). */
static zi_lt_plan *zi_lt_plan_get(zi_backend *be, int m, int n, int k, zi_dtype out_dt,
                                  const void *A, const void *B, void *D, const void *bias)
{
    zi_cuda *cu = zi_cu(be);
    int al_a = zi_align_of(A), al_b = zi_align_of(B), al_c = zi_align_of(D);
    int al_bias = bias ? zi_align_of(bias) : 0;
    for (int i = 0; i < ZI_CUDA_LT_PLANS; i++) {
        zi_lt_plan *p = &cu->plans[i];
        if (p->used && p->m == m && p->n == n && p->k == k && p->out_dt == (int)out_dt &&
            p->bias == (bias != NULL) && p->al_a == al_a && p->al_b == al_b && p->al_c == al_c &&
            p->al_bias == al_bias)
            return p;
    }
    zi_lt_plan *p = &cu->plans[cu->plan_next];
    cu->plan_next = (cu->plan_next + 1) % ZI_CUDA_LT_PLANS;
    zi_lt_plan_release(p);
    p->m = m, p->n = n, p->k = k, p->out_dt = (int)out_dt, p->bias = bias != NULL;
    p->al_a = al_a, p->al_b = al_b, p->al_c = al_c, p->al_bias = al_bias;
    cudaDataType_t dt = out_dt == ZI_F32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    int ok = zi_blas_ok(be, cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                        "linear: matmul desc") &&
             zi_blas_ok(be,
                        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
                                                       sizeof ta),
                        "linear: transa") &&
             zi_blas_ok(be,
                        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                                       sizeof tb),
                        "linear: transb") &&
             zi_blas_ok(be,
                        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                       sizeof epi),
                        "linear: epilogue");
    if (ok && bias)
        ok = zi_blas_ok(be,
                        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias, sizeof bias),
                        "linear: bias");
    if (ok)
        ok = zi_blas_ok(be, cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, k, m, k),
                        "linear: layout A") &&
             zi_blas_ok(be, cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, k, n, k),
                        "linear: layout B") &&
             zi_blas_ok(be, cublasLtMatrixLayoutCreate(&p->lc, dt, m, n, m), "linear: layout C");
    if (!ok) {
        zi_lt_plan_release(p);
        return NULL;
    }
    p->used = 1;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int nres = 0;
    size_t ws = ZI_CUDA_WS_BYTES;
    uint32_t ua = (uint32_t)al_a, ub = (uint32_t)al_b, uc = (uint32_t)al_c;
    if (cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS) {
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                             sizeof ws);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ua,
                                             sizeof ua);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ub,
                                             sizeof ub);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &uc,
                                             sizeof uc);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &uc,
                                             sizeof uc);
        if (cublasLtMatmulAlgoGetHeuristic(cu->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1,
                                           &res, &nres) != CUBLAS_STATUS_SUCCESS)
            nres = 0;
        cublasLtMatmulPreferenceDestroy(pref);
    }
    if (nres > 0 && res.state == CUBLAS_STATUS_SUCCESS)
        p->algo = res.algo;
    else
        p->use_ex = 1; /* no Lt kernel for this case: plain cublasGemmEx (+ bias kernel) */
    return p;
}

/* out[M, N] (row-major) = in[M, K] w[N, K]^T (+ bias[N]); w and in bf16 device data. */
static void zi_cuda_matmul(zi_backend *be, void *out, zi_dtype odt, const void *in, const void *w,
                           const void *bias, zi_dtype bdt, int M, int K, int N)
{
    zi_cuda *cu = zi_cu(be);
    /* row-major out[M, N] is col-major D[N, M] = w (col-major [K, N])^T . in ([K, M]) */
    /* The bias epilogue only for a 16-byte aligned bias (cuBLASLt has no preference for the
     * bias's alignment; others get the bias kernel). */
    const void *lt_bias = bias && bdt == odt && zi_align_of(bias) >= 16 ? bias : NULL;
    zi_lt_plan *p = zi_lt_plan_get(be, N, M, K, odt, w, in, out, lt_bias);
    if (!p)
        return;
    float alpha = 1.0f, beta = 0.0f;
    if (!p->use_ex) {
        if (lt_bias &&
            !zi_blas_ok(be,
                        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &lt_bias, sizeof lt_bias),
                        "linear: bias"))
            return;
        if (!zi_blas_ok(be,
                        cublasLtMatmul(cu->lt, p->desc, &alpha, w, p->la, in, p->lb, &beta, out,
                                       p->lc, out, p->lc, &p->algo, cu->ws, ZI_CUDA_WS_BYTES,
                                       cu->stream),
                        "linear: cublasLtMatmul"))
            return;
        if (lt_bias)
            return;
    } else if (!zi_cuda_gemm_ex(be, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, 1.0f, w, K, in, K, 0.0f, out,
                                odt, N, "linear: cublasGemmEx")) {
        return;
    }
    if (bias)
        zi_cu_ok(be, zi_cu_add_bias(out, odt, bias, bdt, M, N, cu->stream), "linear: bias");
}

static void zi_cuda_linear(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                           const zi_tensor *b, int M, int K, int N)
{
    if (zi_be_check_linear(be, ZI_CU_ARGS, out, in, w, b, M, K, N))
        return;
    void *y = out->data;                   /* [M, N] */
    const void *x = in->data;              /* [M, K] */
    const void *wt = w->data;              /* [N, K] */
    const void *bias = b ? b->data : NULL; /* [N] */
    size_t osz = (size_t)M * N * zi_dtype_size(out->dtype);
    if (zi_overlap(y, osz, x, (size_t)M * K * zi_dtype_size(in->dtype)) ||
        zi_overlap(y, osz, wt, (size_t)N * K * zi_dtype_size(w->dtype))) {
        zi_backend_fail(be, ZI_EINVAL, "linear: out aliases an input");
        return;
    }
    void *tx = NULL, *tw = NULL;
    const void *xb = zi_cu_as_bf16(be, "linear", in, (size_t)M * K, &tx);
    const void *wb = xb ? zi_cu_as_bf16(be, "linear", w, (size_t)N * K, &tw) : NULL;
    if (xb && wb)
        zi_cuda_matmul(be, y, out->dtype, xb, wb, bias, b ? b->dtype : ZI_BF16, M, K, N);
    zi_cuda_mfree(be, tx);
    zi_cuda_mfree(be, tw);
}

static void zi_cuda_embedding(zi_backend *be, zi_tensor *out, const zi_tensor *table,
                              const int32_t *ids, int R, int D)
{
    if (zi_be_check_embedding(be, ZI_CU_ARGS, out, table, ids, R, D))
        return;
    void *y = out->data;           /* [R, D] */
    const void *tab = table->data; /* [V, D] */
    zi_cuda *cu = zi_cu(be);
    int32_t *dids = zi_cuda_tmp(be, "embedding", (size_t)R * sizeof(int32_t));
    if (!dids)
        return;
    /* pageable source: returns once the ids are staged, so the caller may reuse them */
    if (zi_cu_ok(be,
                 cudaMemcpyAsync(dids, ids, (size_t)R * sizeof(int32_t), cudaMemcpyHostToDevice,
                                 cu->stream),
                 "embedding: ids"))
        zi_cu_ok(be, zi_cu_embedding(y, out->dtype, tab, table->dtype, dids, R, D, cu->stream),
                 "embedding");
    zi_cuda_mfree(be, dids);
}

/* ---- normalisation ---- */

static void zi_cuda_rmsnorm(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                            int R, int D, float eps)
{
    if (zi_be_check_rmsnorm(be, ZI_CU_ARGS, out, in, w, R, D))
        return;
    void *y = out->data;                /* [R, D] */
    const void *x = in->data;           /* [R, D] */
    const void *g = w ? w->data : NULL; /* [D] */
    zi_cu_ok(be,
             zi_cu_rmsnorm(y, out->dtype, x, in->dtype, g, w ? w->dtype : ZI_BF16, R, D, eps,
                           zi_cu(be)->stream),
             "rmsnorm");
}

static void zi_cuda_layernorm(zi_backend *be, zi_tensor *out, const zi_tensor *in, int R, int D,
                              float eps)
{
    if (zi_be_check_layernorm(be, ZI_CU_ARGS, out, in, R, D))
        return;
    void *y = out->data;      /* [R, D] */
    const void *x = in->data; /* [R, D] */
    zi_cu_ok(be, zi_cu_layernorm(y, out->dtype, x, in->dtype, R, D, eps, zi_cu(be)->stream),
             "layernorm");
}

static void zi_cuda_groupnorm(zi_backend *be, zi_tensor *out, const zi_tensor *in,
                              const zi_tensor *gamma, const zi_tensor *beta, int C, int HW, int G,
                              float eps, int silu)
{
    if (zi_be_check_groupnorm(be, ZI_CU_ARGS, out, in, gamma, beta, C, HW, G))
        return;
    void *y = out->data;                         /* [C, HW] */
    const void *x = in->data;                    /* [C, HW] */
    const void *ga = gamma ? gamma->data : NULL; /* [C] */
    const void *bb = beta ? beta->data : NULL;   /* [C] */
    float *ws = zi_cuda_tmp(be, "groupnorm", zi_cu_groupnorm_ws(C, (size_t)HW, G) * sizeof(float));
    if (!ws)
        return;
    zi_cu_ok(be,
             zi_cu_groupnorm(y, out->dtype, x, in->dtype, ga, gamma ? gamma->dtype : ZI_BF16, bb,
                             beta ? beta->dtype : ZI_BF16, C, (size_t)HW, G, eps, silu, ws,
                             zi_cu(be)->stream),
             "groupnorm");
    zi_cuda_mfree(be, ws);
}

/* ---- position ---- */

static void zi_cuda_rope(zi_backend *be, zi_tensor *x, const zi_tensor *cos, const zi_tensor *sin,
                         int S, int H, int hd, zi_rope_layout layout)
{
    if (zi_be_check_rope(be, ZI_CU_ARGS, x, cos, sin, S, H, hd, layout))
        return;
    void *v = x->data;         /* [S, H, hd] */
    const void *c = cos->data; /* [S, hd/2] */
    const void *s = sin->data; /* [S, hd/2] */
    if (cos->dtype != ZI_F32 || sin->dtype != ZI_F32) {
        zi_backend_fail(be, ZI_EINVAL, "rope: cos/sin tables must be F32 (alloc_f32)");
        return;
    }
    zi_cu_ok(be, zi_cu_rope(v, x->dtype, c, s, S, H, hd, (int)layout, zi_cu(be)->stream), "rope");
}

/* ---- attention ---- */

/* The GEMM path: per head and block of query rows, scores = scale q k^T (cuBLAS, fp32),
 * row softmax to bf16 probabilities, out rows = P v (cuBLAS). Operands bf16. */
static void zi_cuda_attention_gemm(zi_backend *be, uint16_t *o, const uint16_t *q,
                                   const uint16_t *k, const uint16_t *v, int Sq, int Skv, int H,
                                   int KVH, int hd, float scale, int causal)
{
    zi_cuda *cu = zi_cu(be);
    size_t rows = cu->score_budget / ((size_t)Skv * 6);
    if (rows < 1)
        rows = 1;
    if (rows > (size_t)Sq)
        rows = (size_t)Sq;
    float *sc = zi_cuda_tmp(be, "attention", rows * (size_t)Skv * sizeof(float)); /* [rows,Skv] */
    uint16_t *p = sc ? zi_cuda_tmp(be, "attention", rows * (size_t)Skv * 2) : NULL;
    if (!sc || !p) {
        zi_cuda_mfree(be, sc);
        return;
    }
    int group = H / KVH, off = Skv - Sq;
    int ldq = H * hd, ldk = KVH * hd;
    for (int h = 0; h < H && be->err == ZI_OK; h++) {
        const uint16_t *kh = k + (size_t)(h / group) * hd; /* [Skv, hd], row stride ldk */
        const uint16_t *vh = v + (size_t)(h / group) * hd;
        for (int i0 = 0; i0 < Sq && be->err == ZI_OK; i0 += (int)rows) {
            int nr = Sq - i0 < (int)rows ? Sq - i0 : (int)rows;
            int nk = causal ? i0 + nr + off : Skv; /* keys any row of the block can see */
            const uint16_t *qh = q + (size_t)i0 * ldq + (size_t)h * hd;
            /* row-major sc[nr, nk] = q[nr, hd] k[nk, hd]^T: col-major sc^T = k q^T */
            if (!zi_cuda_gemm_ex(be, CUBLAS_OP_T, CUBLAS_OP_N, nk, nr, hd, scale, kh, ldk, qh, ldq,
                                 0.0f, sc, ZI_F32, nk, "attention: scores"))
                break;
            if (!zi_cu_ok(be, zi_cu_softmax_rows(p, sc, nr, nk, causal, i0 + off, cu->stream),
                          "attention: softmax"))
                break;
            /* row-major o[nr, hd] = P[nr, nk] v[nk, hd]: col-major o^T = v^T P^T */
            zi_cuda_gemm_ex(be, CUBLAS_OP_N, CUBLAS_OP_N, hd, nr, nk, 1.0f, vh, ldk, p, nk, 0.0f,
                            o + (size_t)i0 * ldq + (size_t)h * hd, ZI_BF16, ldq, "attention: P.V");
        }
    }
    zi_cuda_mfree(be, p);
    zi_cuda_mfree(be, sc);
}

static void zi_cuda_attention(zi_backend *be, zi_tensor *out, const zi_tensor *q,
                              const zi_tensor *k, const zi_tensor *v, int Sq, int Skv, int H,
                              int KVH, int hd, float scale, int causal)
{
    if (zi_be_check_attention(be, ZI_CU_ARGS, out, q, k, v, Sq, Skv, H, KVH, hd, causal))
        return;
    size_t nq = (size_t)Sq * H * hd, nkv = (size_t)Skv * KVH * hd;
    void *o = out->data;      /* [Sq, H*hd] */
    const void *qd = q->data; /* [Sq, H, hd] */
    const void *kd = k->data; /* [Skv, KVH, hd] */
    const void *vd = v->data; /* [Skv, KVH, hd] */
    size_t osz = nq * zi_dtype_size(out->dtype);
    if (zi_overlap(o, osz, qd, nq * zi_dtype_size(q->dtype)) ||
        zi_overlap(o, osz, kd, nkv * zi_dtype_size(k->dtype)) ||
        zi_overlap(o, osz, vd, nkv * zi_dtype_size(v->dtype))) {
        zi_backend_fail(be, ZI_EINVAL, "attention: out aliases an input");
        return;
    }
    zi_cuda *cu = zi_cu(be);
    void *tq = NULL, *tk = NULL, *tv = NULL, *to = NULL;
    const uint16_t *qb = zi_cu_as_bf16(be, "attention", q, nq, &tq);
    const uint16_t *kb = qb ? zi_cu_as_bf16(be, "attention", k, nkv, &tk) : NULL;
    const uint16_t *vb = kb ? zi_cu_as_bf16(be, "attention", v, nkv, &tv) : NULL;
    uint16_t *ob = o;
    if (vb && out->dtype != ZI_BF16)
        ob = to = zi_cuda_tmp(be, "attention", nq * 2);
    if (vb && ob) {
        int flash = cu->attn_path != ZI_CUDA_ATTN_GEMM && zi_cu_flash_supported(hd) &&
                    (hd != 512 || cu->wide_stages > 0) && zi_align_of(qb) >= 16 &&
                    zi_align_of(kb) >= 16 && zi_align_of(vb) >= 16 && zi_align_of(ob) >= 16;
        int stages =
            hd == 512 && cu->flash_stages > cu->wide_stages ? cu->wide_stages : cu->flash_stages;
        if (flash)
            zi_cu_ok(be,
                     zi_cu_flash_attention(ob, qb, kb, vb, Sq, Skv, H, KVH, hd, scale, causal,
                                           stages, cu->stream),
                     "attention: flash kernel");
        else
            zi_cuda_attention_gemm(be, ob, qb, kb, vb, Sq, Skv, H, KVH, hd, scale, causal);
        if (to)
            zi_cu_ok(be, zi_cu_convert(o, out->dtype, to, ZI_BF16, nq, cu->stream),
                     "attention: output");
    }
    zi_cuda_mfree(be, to);
    zi_cuda_mfree(be, tv);
    zi_cuda_mfree(be, tk);
    zi_cuda_mfree(be, tq);
}

/* ---- element-wise ---- */

static void zi_cuda_map(zi_backend *be, const char *name, int op, zi_tensor *out,
                        const zi_tensor *a, const zi_tensor *b, float alpha, float beta, size_t n)
{
    if (be->err != ZI_OK)
        return;
    void *y = zi_be_arg(be, ZI_CU_ARGS, name, "out", out, n);
    const void *x0 = zi_be_arg(be, ZI_CU_ARGS, name, "a", a, n);
    const void *x1 = b ? zi_be_arg(be, ZI_CU_ARGS, name, "b", b, n) : NULL;
    if (!y || !x0 || (b && !x1))
        return;
    zi_cu_ok(be,
             zi_cu_map(op, y, out->dtype, x0, a->dtype, x1, b ? b->dtype : ZI_BF16, alpha, beta, n,
                       zi_cu(be)->stream),
             name);
}

static void zi_cuda_add(zi_backend *be, zi_tensor *out, const zi_tensor *a, const zi_tensor *b,
                        size_t n)
{
    zi_cuda_map(be, "add", ZI_CU_ADD, out, a, b, 0, 0, n);
}

static void zi_cuda_silu(zi_backend *be, zi_tensor *out, const zi_tensor *in, size_t n)
{
    zi_cuda_map(be, "silu", ZI_CU_SILU, out, in, NULL, 0, 0, n);
}

static void zi_cuda_tanh(zi_backend *be, zi_tensor *out, const zi_tensor *in, size_t n)
{
    zi_cuda_map(be, "tanh", ZI_CU_TANH, out, in, NULL, 0, 0, n);
}

static void zi_cuda_silu_mul(zi_backend *be, zi_tensor *out, const zi_tensor *gate,
                             const zi_tensor *up, size_t n)
{
    zi_cuda_map(be, "silu_mul", ZI_CU_SILU_MUL, out, gate, up, 0, 0, n);
}

static void zi_cuda_affine(zi_backend *be, zi_tensor *out, const zi_tensor *in, float a, float b,
                           size_t n)
{
    zi_cuda_map(be, "affine", ZI_CU_AFFINE, out, in, NULL, a, b, n);
}

static void zi_cuda_mul_row(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *s,
                            int R, int D)
{
    if (zi_be_check_mul_row(be, ZI_CU_ARGS, out, in, s, R, D))
        return;
    void *y = out->data;      /* [R, D] */
    const void *x = in->data; /* [R, D] */
    const void *sv = s->data; /* [D] */
    zi_cu_ok(be, zi_cu_mul_row(y, out->dtype, x, in->dtype, sv, s->dtype, R, D, zi_cu(be)->stream),
             "mul_row");
}

static void zi_cuda_gated_add(zi_backend *be, zi_tensor *x, const zi_tensor *g, const zi_tensor *y,
                              int R, int D)
{
    if (zi_be_check_gated_add(be, ZI_CU_ARGS, x, g, y, R, D))
        return;
    void *xv = x->data;                  /* [R, D] */
    const void *gv = g ? g->data : NULL; /* [D] */
    const void *yv = y->data;            /* [R, D] */
    zi_cu_ok(be,
             zi_cu_gated_add(xv, x->dtype, gv, g ? g->dtype : ZI_BF16, yv, y->dtype, R, D,
                             zi_cu(be)->stream),
             "gated_add");
}

static void zi_cuda_copy(zi_backend *be, zi_tensor *dst, const zi_tensor *src, size_t n)
{
    void *y = zi_be_arg(be, ZI_CU_ARGS, "copy", "dst", dst, n);
    const void *x = zi_be_arg(be, ZI_CU_ARGS, "copy", "src", src, n);
    if (!y || !x || n == 0)
        return;
    zi_cuda *cu = zi_cu(be);
    size_t ds = zi_dtype_size(dst->dtype), ss = zi_dtype_size(src->dtype);
    if (dst->dtype == src->dtype && y == x)
        return;
    if (zi_overlap(y, n * ds, x, n * ss)) {
        /* overlapping ranges (memmove semantics): go through a scratch copy of src */
        void *t = zi_cuda_tmp(be, "copy", n * ss);
        if (!t)
            return;
        if (zi_cu_ok(be, cudaMemcpyAsync(t, x, n * ss, cudaMemcpyDeviceToDevice, cu->stream),
                     "copy"))
            zi_cu_ok(be, zi_cu_convert(y, dst->dtype, t, src->dtype, n, cu->stream), "copy");
        zi_cuda_mfree(be, t);
        return;
    }
    if (dst->dtype == src->dtype)
        zi_cu_ok(be, cudaMemcpyAsync(y, x, n * ds, cudaMemcpyDeviceToDevice, cu->stream), "copy");
    else
        zi_cu_ok(be, zi_cu_convert(y, dst->dtype, x, src->dtype, n, cu->stream), "copy");
}

static void zi_cuda_transpose(zi_backend *be, zi_tensor *out, const zi_tensor *in, int R, int C)
{
    if (zi_be_check_transpose(be, ZI_CU_ARGS, out, in, R, C))
        return;
    void *y = out->data;      /* [C, R] */
    const void *x = in->data; /* [R, C] */
    if (zi_overlap(y, (size_t)R * C * zi_dtype_size(out->dtype), x,
                   (size_t)R * C * zi_dtype_size(in->dtype))) {
        zi_backend_fail(be, ZI_EINVAL, "transpose: out aliases in");
        return;
    }
    zi_cu_ok(be, zi_cu_transpose(y, out->dtype, x, in->dtype, R, C, zi_cu(be)->stream),
             "transpose");
}

/* ---- convolution ---- */

static void zi_cuda_conv2d(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                           const zi_tensor *b, int Ci, int Co, int h, int wd, int k)
{
    if (zi_be_check_conv2d(be, ZI_CU_ARGS, out, in, w, b, Ci, Co, h, wd, k))
        return;
    size_t hw = (size_t)h * wd, kk = (size_t)Ci * k * k;
    if (hw > 0x7fffffff || kk > 0x7fffffff) {
        zi_backend_fail(be, ZI_EINVAL, "conv2d: %zu pixels x %zu taps exceed the GEMM limits", hw,
                        kk);
        return;
    }
    void *y = out->data;                   /* [Co, h, w] */
    const void *x = in->data;              /* [Ci, h, w] */
    const void *bias = b ? b->data : NULL; /* [Co] (w is read through zi_cu_as_bf16) */
    if (zi_overlap(y, (size_t)Co * hw * zi_dtype_size(out->dtype), x,
                   (size_t)Ci * hw * zi_dtype_size(in->dtype))) {
        zi_backend_fail(be, ZI_EINVAL, "conv2d: out aliases in");
        return;
    }
    zi_cuda *cu = zi_cu(be);
    float beta = 0.0f;
    if (bias) { /* out = bias, then the GEMMs accumulate onto it (one rounding) */
        if (!zi_cu_ok(be, zi_cu_fill_channels(y, out->dtype, bias, b->dtype, Co, hw, cu->stream),
                      "conv2d: bias"))
            return;
        beta = 1.0f;
    }
    void *tw = NULL;
    const void *wb = zi_cu_as_bf16(be, "conv2d", w, (size_t)Co * kk, &tw);
    if (!wb)
        return;
    if (k == 1) {
        /* row-major y[Co, hw] = w[Co, Ci] x[Ci, hw]: col-major y^T = x^T w^T */
        void *tx = NULL;
        const void *xb = zi_cu_as_bf16(be, "conv2d", in, (size_t)Ci * hw, &tx);
        if (xb)
            zi_cuda_gemm_ex(be, CUBLAS_OP_N, CUBLAS_OP_N, (int)hw, Co, Ci, 1.0f, xb, (int)hw, wb,
                            Ci, beta, y, out->dtype, (int)hw, "conv2d: 1x1 GEMM");
        zi_cuda_mfree(be, tx);
        zi_cuda_mfree(be, tw);
        return;
    }
    size_t np = cu->col_budget / (kk * 2);
    np = np < 256 ? 256 : np / 256 * 256;
    if (np > hw)
        np = hw;
    uint16_t *col = zi_cuda_tmp(be, "conv2d", kk * np * 2); /* [Ci*k*k, np] bf16 */
    if (col) {
        for (size_t p0 = 0; p0 < hw && be->err == ZI_OK; p0 += np) {
            size_t cnt = hw - p0 < np ? hw - p0 : np;
            if (!zi_cu_ok(be, zi_cu_im2col(col, x, in->dtype, Ci, h, wd, k, p0, cnt, cu->stream),
                          "conv2d: im2col"))
                break;
            /* row-major y[:, p0:p0+cnt] = w[Co, kk] col[kk, cnt]: col-major y^T = col^T w^T */
            zi_cuda_gemm_ex(be, CUBLAS_OP_N, CUBLAS_OP_N, (int)cnt, Co, (int)kk, 1.0f, col,
                            (int)cnt, wb, (int)kk, beta, (char *)y + p0 * zi_dtype_size(out->dtype),
                            out->dtype, (int)hw, "conv2d: GEMM");
        }
    }
    zi_cuda_mfree(be, col);
    zi_cuda_mfree(be, tw);
}

static void zi_cuda_upsample2x(zi_backend *be, zi_tensor *out, const zi_tensor *in, int C, int h,
                               int wd)
{
    if (zi_be_check_upsample2x(be, ZI_CU_ARGS, out, in, C, h, wd))
        return;
    size_t n = (size_t)C * h * wd;
    void *y = out->data;      /* [C, 2h, 2w] */
    const void *x = in->data; /* [C, h, w] */
    if (zi_overlap(y, n * 4 * zi_dtype_size(out->dtype), x, n * zi_dtype_size(in->dtype))) {
        zi_backend_fail(be, ZI_EINVAL, "upsample2x: out aliases in");
        return;
    }
    zi_cu_ok(be, zi_cu_upsample2x(y, out->dtype, x, in->dtype, C, h, wd, zi_cu(be)->stream),
             "upsample2x");
}

static int zi_cuda_to_rgb8(zi_backend *be, uint8_t *rgb, const zi_tensor *in, int h, int wd)
{
    if (zi_be_check_to_rgb8(be, ZI_CU_ARGS, rgb, in, h, wd))
        return zi_backend_check(be);
    size_t hw = (size_t)h * wd;
    const void *x = in->data; /* [3, h, w] */
    zi_cuda *cu = zi_cu(be);
    uint8_t *d = zi_cuda_tmp(be, "to_rgb8", hw * 3);
    if (!d)
        return zi_backend_check(be);
    if (zi_cu_ok(be, zi_cu_to_rgb8(d, x, in->dtype, h, wd, cu->stream), "to_rgb8") &&
        zi_cu_ok(be, cudaMemcpyAsync(rgb, d, hw * 3, cudaMemcpyDeviceToHost, cu->stream),
                 "to_rgb8: copy"))
        zi_cu_ok(be, cudaStreamSynchronize(cu->stream), "to_rgb8: synchronise");
    zi_cuda_mfree(be, d);
    return zi_backend_check(be);
}

/* ---- lifecycle ---- */

/* ---- ops with weights kept on the host. Installed in the table only when a weight budget
 * is set, so resident weights pay nothing. Each input that lies in such a weight is read
 * from a device copy:
 *   - a small weight (< ZI_CU_PREFETCH_MIN: biases, norms) is copied to scratch on the
 *     compute stream right before the op and freed right after it (stream order keeps the
 *     scratch alive until the op has run);
 *   - a large one goes through ZI_CU_SLOTS device slots filled on a second stream, `copy`.
 *     The ops read the weights in the same order at every step, so each large weight
 *     remembers which one was read after it last time (`next`); once an op is queued, the
 *     next weight is copied into the other slot while the op runs, and the op that reads it
 *     finds it there (a hit) instead of waiting for the copy (a miss). Events order the
 *     streams: the compute stream waits for a slot's `ready` (its fill) before reading it,
 *     the copy stream waits for its `idle` (the last op queued that reads it) before
 *     refilling it. A wrong guess costs one copy, never a wrong result.
 * ZI_CUDA_PREFETCH=0 (or zi_cuda_set_prefetch) copies large weights like small ones; the
 * threshold can be lowered (zi_cuda_set_prefetch, ZI_CUDA_PREFETCH_MIN_KB) so the tiny test
 * model uses the slots. ---- */

#define ZI_CU_STAGE_MAX 3

typedef struct zi_cu_staged {
    zi_tensor view[ZI_CU_STAGE_MAX];
    void *tmp[ZI_CU_STAGE_MAX];
    int n;
    unsigned slots; /* bit s: this op reads slot s */
    long last;      /* 1 + the index in hw[] of the last large weight it reads; 0: none */
} zi_cu_staged;

/* The slot that holds (or is being filled with) host weight w, or -1. */
static int zi_cu_slot_find(const zi_cuda *cu, const char *w)
{
    for (int s = 0; s < ZI_CU_SLOTS; s++)
        if (cu->slot[s].w == w)
            return s;
    return -1;
}

/* The copy stream and the slots' events, made on first use. */
static int zi_cu_prefetch_init(zi_backend *be)
{
    zi_cuda *cu = zi_cu(be);
    if (cu->copy)
        return 1;
    for (int k = 0; k < ZI_CU_SLOTS; k++)
        if ((!cu->slot[k].ready &&
             !zi_cu_ok(be, cudaEventCreateWithFlags(&cu->slot[k].ready, cudaEventDisableTiming),
                       "prefetch: event")) ||
            (!cu->slot[k].idle &&
             !zi_cu_ok(be, cudaEventCreateWithFlags(&cu->slot[k].idle, cudaEventDisableTiming),
                       "prefetch: event")))
            return 0;
    return zi_cu_ok(be, cudaStreamCreateWithFlags(&cu->copy, cudaStreamNonBlocking),
                    "prefetch: copy stream");
}

/* Queues the fill of a slot not in `avoid` (the least recently used) with host weight
 * hw[i] on the copy stream; returns the slot, or -1 (none free, or the sticky error). An
 * optional fill (a prefetch) that finds no device memory for a larger slot gives up
 * quietly: running out there must not fail the job. */
static int zi_cu_slot_fill(zi_backend *be, size_t i, unsigned avoid, int optional)
{
    zi_cuda *cu = zi_cu(be);
    int s = -1;
    for (int k = 0; k < ZI_CU_SLOTS; k++)
        if (!(avoid & (1u << k)) && (s < 0 || cu->slot[k].used < cu->slot[s].used))
            s = k;
    if (s < 0 || be->err != ZI_OK || !zi_cu_prefetch_init(be))
        return -1;
    struct zi_cu_slot *sl = &cu->slot[s];
    size_t bytes = cu->hw[i].bytes;
    sl->w = NULL;
    if (sl->cap < bytes) {
        if (sl->d) {
            /* a fill still queued writes the old buffer: later users of it wait for that */
            if (!zi_cu_ok(be, cudaStreamWaitEvent(cu->stream, sl->ready, 0), "prefetch: wait"))
                return -1;
            zi_cuda_mfree(be, sl->d);
            sl->d = NULL;
            sl->cap = 0;
        }
        sl->d = zi_cuda_malloc(be, bytes, ZI_CUDA_TAG_INTERNAL);
        if (!sl->d) {
            if (optional) { /* a prefetch: the op will copy the weight when it needs it */
                zi_error_clear();
                return -1;
            }
            zi_backend_fail(be, ZI_ENOMEM, "weight prefetch slot: %s", zi_errmsg());
            return -1;
        }
        sl->cap = bytes;
        /* the new block's earlier users are ops queued on the compute stream so far */
        if (!zi_cu_ok(be, cudaEventRecord(sl->idle, cu->stream), "prefetch: record"))
            return -1;
    }
    if (!zi_cu_ok(be, cudaStreamWaitEvent(cu->copy, sl->idle, 0), "prefetch: wait") ||
        !zi_cu_ok(be, cudaMemcpyAsync(sl->d, cu->hw[i].p, bytes, cudaMemcpyHostToDevice, cu->copy),
                  "prefetch: copy") ||
        !zi_cu_ok(be, cudaEventRecord(sl->ready, cu->copy), "prefetch: record"))
        return -1;
    sl->w = cu->hw[i].p;
    sl->used = ++cu->tick;
    return s;
}

/* t itself, or a view of a device copy of it when t lies in a weight kept on the host. */
static const zi_tensor *zi_cu_stage(zi_backend *be, zi_cu_staged *s, const zi_tensor *t)
{
    zi_cuda *cu = zi_cu(be);
    long i;
    if (!t || !t->data || be->err != ZI_OK || (i = zi_cu_host_weight(cu, t->data)) < 0 ||
        s->n == ZI_CU_STAGE_MAX)
        return t;
    size_t bytes = (size_t)zi_tensor_numel(t) * zi_dtype_size(t->dtype);
    zi_tensor *v = &s->view[s->n];
    *v = *t;
    v->owned = 0;
    const struct zi_host_w *w = &cu->hw[i];
    int k = -1;
    if (cu->prefetch && w->bytes >= cu->pf_min) {
        k = zi_cu_slot_find(cu, w->p);
        if (k >= 0) {
            cu->pf_hits++;
        } else {
            cu->pf_misses++;
            k = zi_cu_slot_fill(be, (size_t)i, s->slots, 0); /* -1: every slot read by this op */
        }
    }
    if (be->err != ZI_OK)
        return t; /* the sticky error makes the op a no-op */
    if (k >= 0) {
        if (!zi_cu_ok(be, cudaStreamWaitEvent(cu->stream, cu->slot[k].ready, 0), "prefetch: wait"))
            return t;
        /* learn the order (prev_w and the `next`s are bases of live weights: freeing one
         * forgets it, zi_cu_forget_host_weight) */
        long prev = cu->prev_w ? zi_cu_host_weight(cu, cu->prev_w) : -1;
        if (prev >= 0 && prev != i)
            cu->hw[prev].next = w->p;
        cu->prev_w = w->p;
        s->last = i + 1;
        cu->slot[k].used = ++cu->tick;
        s->slots |= 1u << k;
        s->tmp[s->n] = NULL;
        v->data = (char *)cu->slot[k].d + ((const char *)t->data - w->p);
        s->n++;
        return v;
    }
    void *d = zi_cuda_tmp(be, "weight staging", bytes);
    if (!d)
        return t; /* the sticky error makes the op a no-op */
    s->tmp[s->n++] = d;
    v->data = d;
    zi_cu_ok(be, cudaMemcpyAsync(d, t->data, bytes, cudaMemcpyHostToDevice, cu->stream),
             "weight staging: copy");
    return v;
}

/* After the op is queued: scratch freed, the slots it read marked idle after it, and the
 * weight expected next copied into a slot this op does not read. */
static void zi_cu_unstage(zi_backend *be, zi_cu_staged *s)
{
    zi_cuda *cu = zi_cu(be);
    for (int i = 0; i < s->n; i++)
        zi_cuda_mfree(be, s->tmp[i]);
    if (!s->slots || be->err != ZI_OK)
        return;
    for (int k = 0; k < ZI_CU_SLOTS; k++)
        if ((s->slots & (1u << k)) &&
            !zi_cu_ok(be, cudaEventRecord(cu->slot[k].idle, cu->stream), "prefetch: record"))
            return;
    const char *next = cu->hw[s->last - 1].next;
    long ni = next ? zi_cu_host_weight(cu, next) : -1;
    if (ni >= 0 && zi_cu_slot_find(cu, next) < 0)
        zi_cu_slot_fill(be, (size_t)ni, s->slots, 1);
}

/* The rows of a host-kept embedding table are gathered on the host, converted by the
 * upload path: the table itself never goes to the device. */
static void zi_cs_embedding(zi_backend *be, zi_tensor *out, const zi_tensor *table,
                            const int32_t *ids, int R, int D)
{
    zi_cuda *cu = zi_cu(be);
    if (!table || !table->data || zi_cu_host_weight(cu, table->data) < 0) {
        zi_cuda_embedding(be, out, table, ids, R, D);
        return;
    }
    if (zi_be_check_embedding(be, ZI_CU_ARGS, out, table, ids, R, D))
        return;
    uint16_t *rows = malloc((size_t)R * (size_t)D * 2);
    if (!rows) {
        zi_backend_fail(be, ZI_ENOMEM, "embedding: out of host memory");
        return;
    }
    const uint16_t *tab = table->data;
    for (int r = 0; r < R; r++)
        memcpy(rows + (size_t)r * D, tab + (size_t)ids[r] * D, (size_t)D * 2);
    zi_cuda_h2d(be, out->data, out->dtype, rows, ZI_BF16, (size_t)R * D);
    free(rows);
}

/* zi_cs_NAME: the op NAME with its tensor inputs staged. */
#define ZI_CS1(name, params, staged, rest)                                                         \
    static void zi_cs_##name params                                                                \
    {                                                                                              \
        zi_cu_staged s = {0};                                                                      \
        zi_cuda_##name(be, staged, rest);                                                          \
        zi_cu_unstage(be, &s);                                                                     \
    }
#define ZI_ST(t) zi_cu_stage(be, &s, t)
#define ZI_ARGS(...) __VA_ARGS__

ZI_CS1(linear,
       (zi_backend * be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
        const zi_tensor *b, int M, int K, int N),
       ZI_ARGS(out, ZI_ST(in), ZI_ST(w), ZI_ST(b)), ZI_ARGS(M, K, N))
ZI_CS1(rmsnorm,
       (zi_backend * be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w, int R, int D,
        float eps),
       ZI_ARGS(out, ZI_ST(in), ZI_ST(w)), ZI_ARGS(R, D, eps))
ZI_CS1(layernorm, (zi_backend * be, zi_tensor *out, const zi_tensor *in, int R, int D, float eps),
       ZI_ARGS(out, ZI_ST(in)), ZI_ARGS(R, D, eps))
ZI_CS1(groupnorm,
       (zi_backend * be, zi_tensor *out, const zi_tensor *in, const zi_tensor *g,
        const zi_tensor *b, int C, int HW, int G, float eps, int silu),
       ZI_ARGS(out, ZI_ST(in), ZI_ST(g), ZI_ST(b)), ZI_ARGS(C, HW, G, eps, silu))
ZI_CS1(rope,
       (zi_backend * be, zi_tensor *x, const zi_tensor *c, const zi_tensor *sn, int S, int H,
        int hd, zi_rope_layout layout),
       ZI_ARGS(x, ZI_ST(c), ZI_ST(sn)), ZI_ARGS(S, H, hd, layout))
ZI_CS1(attention,
       (zi_backend * be, zi_tensor *out, const zi_tensor *q, const zi_tensor *k, const zi_tensor *v,
        int Sq, int Skv, int H, int KVH, int hd, float scale, int causal),
       ZI_ARGS(out, ZI_ST(q), ZI_ST(k), ZI_ST(v)), ZI_ARGS(Sq, Skv, H, KVH, hd, scale, causal))
ZI_CS1(add, (zi_backend * be, zi_tensor *out, const zi_tensor *a, const zi_tensor *b, size_t n),
       ZI_ARGS(out, ZI_ST(a), ZI_ST(b)), n)
ZI_CS1(silu, (zi_backend * be, zi_tensor *out, const zi_tensor *in, size_t n),
       ZI_ARGS(out, ZI_ST(in)), n)
ZI_CS1(tanh, (zi_backend * be, zi_tensor *out, const zi_tensor *in, size_t n),
       ZI_ARGS(out, ZI_ST(in)), n)
ZI_CS1(silu_mul,
       (zi_backend * be, zi_tensor *out, const zi_tensor *g, const zi_tensor *u, size_t n),
       ZI_ARGS(out, ZI_ST(g), ZI_ST(u)), n)
ZI_CS1(affine, (zi_backend * be, zi_tensor *out, const zi_tensor *in, float a, float b, size_t n),
       ZI_ARGS(out, ZI_ST(in)), ZI_ARGS(a, b, n))
ZI_CS1(mul_row,
       (zi_backend * be, zi_tensor *out, const zi_tensor *in, const zi_tensor *sv, int R, int D),
       ZI_ARGS(out, ZI_ST(in), ZI_ST(sv)), ZI_ARGS(R, D))
ZI_CS1(gated_add,
       (zi_backend * be, zi_tensor *x, const zi_tensor *g, const zi_tensor *y, int R, int D),
       ZI_ARGS(x, ZI_ST(g), ZI_ST(y)), ZI_ARGS(R, D))
ZI_CS1(copy, (zi_backend * be, zi_tensor *dst, const zi_tensor *src, size_t n),
       ZI_ARGS(dst, ZI_ST(src)), n)
ZI_CS1(transpose, (zi_backend * be, zi_tensor *out, const zi_tensor *in, int R, int C),
       ZI_ARGS(out, ZI_ST(in)), ZI_ARGS(R, C))
ZI_CS1(conv2d,
       (zi_backend * be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
        const zi_tensor *b, int Ci, int Co, int h, int wd, int k),
       ZI_ARGS(out, ZI_ST(in), ZI_ST(w), ZI_ST(b)), ZI_ARGS(Ci, Co, h, wd, k))
ZI_CS1(upsample2x, (zi_backend * be, zi_tensor *out, const zi_tensor *in, int C, int h, int wd),
       ZI_ARGS(out, ZI_ST(in)), ZI_ARGS(C, h, wd))

static int zi_cs_to_rgb8(zi_backend *be, uint8_t *rgb, const zi_tensor *in, int h, int wd)
{
    zi_cu_staged s = {0};
    int rc = zi_cuda_to_rgb8(be, rgb, ZI_ST(in), h, wd);
    zi_cu_unstage(be, &s);
    return rc;
}

#undef ZI_ST
#undef ZI_ARGS
#undef ZI_CS1

static void zi_cuda_install_staging(zi_backend *be)
{
    be->linear = zi_cs_linear;
    be->embedding = zi_cs_embedding;
    be->rmsnorm = zi_cs_rmsnorm;
    be->layernorm = zi_cs_layernorm;
    be->groupnorm = zi_cs_groupnorm;
    be->rope = zi_cs_rope;
    be->attention = zi_cs_attention;
    be->add = zi_cs_add;
    be->silu = zi_cs_silu;
    be->tanh_ = zi_cs_tanh;
    be->silu_mul = zi_cs_silu_mul;
    be->affine = zi_cs_affine;
    be->mul_row = zi_cs_mul_row;
    be->gated_add = zi_cs_gated_add;
    be->copy = zi_cs_copy;
    be->transpose = zi_cs_transpose;
    be->conv2d = zi_cs_conv2d;
    be->upsample2x = zi_cs_upsample2x;
    be->to_rgb8 = zi_cs_to_rgb8;
}

static void zi_cuda_destroy(zi_backend *be)
{
    if (!be)
        return;
    zi_cuda *cu = be->impl;
    if (cu) {
        if (cu->stream)
            cudaStreamSynchronize(cu->stream);
        if (cu->copy)
            cudaStreamSynchronize(cu->copy);
        for (int i = 0; i < ZI_CU_SLOTS; i++) {
            if (cu->slot[i].ready)
                cudaEventDestroy(cu->slot[i].ready);
            if (cu->slot[i].idle)
                cudaEventDestroy(cu->slot[i].idle);
        }
        for (int i = 0; i < ZI_CUDA_LT_PLANS; i++)
            zi_lt_plan_release(&cu->plans[i]);
        if (cu->lt)
            cublasLtDestroy(cu->lt);
        if (cu->blas)
            cublasDestroy(cu->blas);
        for (int i = 0; i < 2; i++) {
            if (cu->stage[i])
                cudaFreeHost(cu->stage[i]);
            if (cu->stage_ev[i])
                cudaEventDestroy(cu->stage_ev[i]);
        }
        zi_alloc_destroy(cu->alloc); /* unmaps every chunk */
        zi_vmm_close(cu->vmm);
        for (size_t i = 0; i < cu->nplain; i++)
            cudaFree(cu->plain[i].p);
        free(cu->plain);
        for (size_t i = 0; i < cu->nhw; i++) /* host weights the caller did not free */
            zi_cu_host_weight_release(be, i);
        free(cu->hw);
        if (cu->lock_ok)
            pthread_mutex_destroy(&cu->lock);
        if (cu->stream)
            cudaStreamDestroy(cu->stream);
        if (cu->copy)
            cudaStreamDestroy(cu->copy);
        free(cu);
    }
    free(be);
}

int zi_backend_cuda_available(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* clear the runtime's sticky "no driver" status */
        /* the reason for whoever asks (an old driver reads differently from no GPU) */
        zi_errorf(ZI_EBACKEND, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0)
        zi_errorf(ZI_EBACKEND, "cudaGetDeviceCount: no CUDA device");
    return n > 0;
}

static int zi_cuda_env_path(void)
{
    const char *s = getenv("ZI_CUDA_ATTENTION");
    if (!s || !*s || strcmp(s, "auto") == 0)
        return ZI_CUDA_ATTN_AUTO;
    if (strcmp(s, "flash") == 0)
        return ZI_CUDA_ATTN_FLASH;
    if (strcmp(s, "gemm") == 0)
        return ZI_CUDA_ATTN_GEMM;
    return -1;
}

/* *bytes = the variable `name` (a positive whole number of 2^shift bytes: MiB 20, KiB 10),
 * left unchanged when it is unset or empty; ZI_EINVAL naming it when it is anything else. */
static int zi_cu_env_size(const char *name, int shift, uint64_t *bytes)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return ZI_OK;
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || !end || *end || v[0] < '0' || v[0] > '9' || n == 0 || n > (UINT64_MAX >> shift))
        return zi_errorf(ZI_EINVAL, "%s must be a positive number of %s", name,
                         shift == 20 ? "MiB" : "KiB");
    *bytes = (uint64_t)n << shift;
    return ZI_OK;
}

/* A feature that is on unless the variable `name` is "0". */
static int zi_cu_env_on(const char *name)
{
    const char *v = getenv(name);
    return !(v && strcmp(v, "0") == 0);
}

zi_backend *zi_backend_cuda_new(int device)
{
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev == 0) {
        zi_errorf(ZI_EBACKEND, "cuda backend: no usable GPU (%s)",
                  e != cudaSuccess ? cudaGetErrorString(e) : "no device");
        cudaGetLastError();
        return NULL;
    }
    if (device < 0 || device >= ndev) {
        zi_errorf(ZI_EINVAL, "cuda backend: device %d does not exist (%d visible)", device, ndev);
        return NULL;
    }
    int path = zi_cuda_env_path();
    if (path < 0) {
        zi_errorf(ZI_EINVAL, "ZI_CUDA_ATTENTION must be auto, flash or gemm");
        return NULL;
    }
    zi_backend *be = calloc(1, sizeof *be);
    zi_cuda *cu = calloc(1, sizeof *cu);
    if (!be || !cu) {
        free(be);
        free(cu);
        zi_errorf(ZI_ENOMEM, "cuda backend: out of host memory");
        return NULL;
    }
    be->impl = cu;
    be->destroy = zi_cuda_destroy;
    if (pthread_mutex_init(&cu->lock, NULL) != 0) {
        zi_errorf(ZI_ENOMEM, "cuda backend: mutex");
        goto err;
    }
    cu->lock_ok = 1;
    cu->device = device;
    cu->attn_path = (zi_cuda_attn_path)path;
    cu->score_budget = ZI_CUDA_SCORE_BUDGET;
    cu->col_budget = ZI_CUDA_COL_BUDGET;
    cu->weight_budget = UINT64_MAX;
    cu->act_headroom = ZI_CUDA_ACT_HEADROOM;
    const char *fs = getenv("ZI_CUDA_FLASH_STAGES");
    cu->flash_stages = fs && *fs ? atoi(fs) : 2;
    if (cu->flash_stages != 1 && cu->flash_stages != 2) {
        zi_errorf(ZI_EINVAL, "ZI_CUDA_FLASH_STAGES must be 1 or 2");
        goto err;
    }

    be->name = "cuda";
    int major = 0, minor = 0, l2 = 0;
    struct cudaDeviceProp prop;
    const char *step = "cudaSetDevice";
    e = cudaSetDevice(device);
    if (e == cudaSuccess) {
        step = "context creation";
        e = cudaFree(NULL);
    }
    if (e == cudaSuccess) {
        step = "device properties";
        e = cudaGetDeviceProperties(&prop, device);
    }
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&cu->sm_count, cudaDevAttrMultiProcessorCount, device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device);
    /* Before the kernels' attributes: an older GPU has no image of them to set, and the
     * capability is the error to name. */
    if (e == cudaSuccess && major < 8) {
        zi_errorf(ZI_EBACKEND,
                  "cuda backend: %s has compute capability %d.%d; 8.0 or newer is needed "
                  "(bf16 tensor cores)",
                  prop.name, major, minor);
        goto err;
    }
    if (e == cudaSuccess) {
        step = "stream creation";
        e = cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking);
    }
    if (e == cudaSuccess) {
        step = "kernel attributes";
        e = zi_cu_init_kernels(&cu->wide_stages);
    }
    if (e != cudaSuccess) {
        zi_errorf(ZI_EBACKEND, "cuda backend: %s on device %d: %s", step, device,
                  cudaGetErrorString(e));
        goto err;
    }
    cu->l2_bytes = (size_t)l2;
    snprintf(be->device_name, sizeof be->device_name, "%.127s", prop.name);

    const char *mode = getenv("ZI_CUDA_ALLOCATOR");
    if (mode && *mode && strcmp(mode, "vmm") && strcmp(mode, "cudamalloc")) {
        zi_errorf(ZI_EINVAL, "ZI_CUDA_ALLOCATOR must be vmm or cudamalloc");
        goto err;
    }
    if (!(mode && strcmp(mode, "cudamalloc") == 0)) {
        if (zi_vmm_open(device, 0, cu->stream, &cu->vmm) != ZI_OK) {
            if (mode) /* asked for explicitly: the failure is the answer */
                goto err;
            zi_error_clear(); /* no VMM on this device/driver: cudaMalloc mode */
        }
    }
    if (cu->vmm) {
        zi_alloc_config ac = {0};
        ac.reserve = zi_vmm_reserve(cu->vmm);
        ac.granularity = zi_vmm_granularity(cu->vmm);
        ac.min_map = ZI_CUDA_MIN_MAP;
        ac.align = ZI_CUDA_ALIGN;
        if (zi_cu_env_size("ZI_CUDA_MEM_LIMIT_MB", 20, &cu->map_limit) != ZI_OK)
            goto err;
        if (cu->map_limit)
            ac.limit = cu->map_limit;
        zi_alloc_provider prov = zi_vmm_provider(cu->vmm);
        if (zi_alloc_new(&ac, &prov, &cu->alloc) != ZI_OK)
            goto err;
        cu->base = zi_vmm_base(cu->vmm);
    }

    cublasStatus_t st = cublasCreate(&cu->blas);
    step = "cublasCreate";
    if (st == CUBLAS_STATUS_SUCCESS) {
        step = "cublasSetStream";
        st = cublasSetStream(cu->blas, cu->stream);
    }
    if (st == CUBLAS_STATUS_SUCCESS) {
        step = "cublasLtCreate";
        st = cublasLtCreate(&cu->lt);
    }
    if (st != CUBLAS_STATUS_SUCCESS) {
        zi_errorf(ZI_EBACKEND, "cuda backend: %s: %s", step, cublasGetStatusString(st));
        goto err;
    }
    cu->ws = zi_cuda_malloc(be, ZI_CUDA_WS_BYTES, ZI_CUDA_TAG_INTERNAL);
    cu->raw[0] = cu->ws ? zi_cuda_malloc(be, ZI_CUDA_STAGE_BYTES, ZI_CUDA_TAG_INTERNAL) : NULL;
    cu->raw[1] = cu->raw[0] ? zi_cuda_malloc(be, ZI_CUDA_STAGE_BYTES, ZI_CUDA_TAG_INTERNAL) : NULL;
    if (!cu->raw[1])
        goto err; /* zi_errmsg() from the allocator */
    if ((st = cublasSetWorkspace(cu->blas, cu->ws, ZI_CUDA_WS_BYTES)) != CUBLAS_STATUS_SUCCESS) {
        zi_errorf(ZI_EBACKEND, "cuda backend: cublasSetWorkspace: %s", cublasGetStatusString(st));
        goto err;
    }
    for (int i = 0; i < 2; i++) {
        e = cudaHostAlloc(&cu->stage[i], ZI_CUDA_STAGE_BYTES, cudaHostAllocDefault);
        if (e == cudaSuccess)
            e = cudaEventCreateWithFlags(&cu->stage_ev[i], cudaEventDisableTiming);
        if (e != cudaSuccess) {
            zi_errorf(ZI_EBACKEND, "cuda backend: pinned staging buffer: %s",
                      cudaGetErrorString(e));
            goto err;
        }
    }

    be->act_dtype = ZI_BF16;
    be->weight_dtype = ZI_BF16;
    be->err = ZI_OK;
    be->alloc = zi_cuda_alloc;
    be->alloc_f32 = zi_cuda_alloc_f32;
    be->free = zi_cuda_free;
    be->upload_weight = zi_cuda_upload_weight;
    be->upload = zi_cuda_upload;
    be->download = zi_cuda_download;
    be->mem_stats = zi_cuda_mem_stats;
    be->sync = zi_cuda_sync;
    be->linear = zi_cuda_linear;
    be->embedding = zi_cuda_embedding;
    be->rmsnorm = zi_cuda_rmsnorm;
    be->layernorm = zi_cuda_layernorm;
    be->groupnorm = zi_cuda_groupnorm;
    be->rope = zi_cuda_rope;
    be->attention = zi_cuda_attention;
    be->add = zi_cuda_add;
    be->silu = zi_cuda_silu;
    be->tanh_ = zi_cuda_tanh;
    be->silu_mul = zi_cuda_silu_mul;
    be->affine = zi_cuda_affine;
    be->mul_row = zi_cuda_mul_row;
    be->gated_add = zi_cuda_gated_add;
    be->copy = zi_cuda_copy;
    be->transpose = zi_cuda_transpose;
    be->conv2d = zi_cuda_conv2d;
    be->upsample2x = zi_cuda_upsample2x;
    be->to_rgb8 = zi_cuda_to_rgb8;
    /* the weight budget: auto (default) = what the device has free now, less headroom for
     * activations; "resident" = none; N = N MiB */
    cu->prefetch = zi_cu_env_on("ZI_CUDA_PREFETCH");
    cu->map_weights = zi_cu_env_on("ZI_CUDA_MAP_WEIGHTS");
    cu->pf_min = ZI_CU_PREFETCH_MIN;
    uint64_t min_kb = 0;
    if (zi_cu_env_size("ZI_CUDA_HOST_MEM_LIMIT_MB", 20, &cu->host_limit) != ZI_OK ||
        zi_cu_env_size("ZI_CUDA_PIN_LIMIT_MB", 20, &cu->pin_limit) != ZI_OK ||
        zi_cu_env_size("ZI_CUDA_PREFETCH_MIN_KB", 10, &min_kb) != ZI_OK)
        goto err;
    if (min_kb)
        cu->pf_min = (size_t)min_kb;
    const char *wb = getenv("ZI_CUDA_WEIGHT_BUDGET_MB");
    int rc = zi_cuda_set_weight_budget_spec(be, wb);
    if (rc != ZI_OK) {
        zi_error_prefix(rc, "%s", wb && *wb ? "ZI_CUDA_WEIGHT_BUDGET_MB" : "weight budget");
        goto err;
    }
    return be;
err:
    zi_cuda_destroy(be);
    return NULL;
}

/* ---- extras (zi_cuda.h) ---- */

int zi_cuda_is(const zi_backend *be)
{
    return be && be->destroy == zi_cuda_destroy;
}

#define ZI_CUDA_REQUIRE(be)                                                                        \
    do {                                                                                           \
        if (!zi_cuda_is(be))                                                                       \
            return zi_errorf(ZI_EINVAL, "%s: not a cuda backend", __func__);                       \
    } while (0)

int zi_cuda_inject_fault(zi_backend *be)
{
    ZI_CUDA_REQUIRE(be);
    zi_cu_ok(be, zi_cu_fault(zi_cu(be)->stream), "fault injection");
    return ZI_OK;
}

int zi_cuda_set_attention_path(zi_backend *be, zi_cuda_attn_path path)
{
    ZI_CUDA_REQUIRE(be);
    if (path != ZI_CUDA_ATTN_AUTO && path != ZI_CUDA_ATTN_FLASH && path != ZI_CUDA_ATTN_GEMM)
        return zi_errorf(ZI_EINVAL, "unknown attention path %d", (int)path);
    zi_cu(be)->attn_path = path;
    return ZI_OK;
}

int zi_cuda_set_flash_stages(zi_backend *be, int stages)
{
    ZI_CUDA_REQUIRE(be);
    if (stages != 1 && stages != 2)
        return zi_errorf(ZI_EINVAL, "flash attention stages must be 1 or 2, got %d", stages);
    zi_cu(be)->flash_stages = stages;
    return ZI_OK;
}

int zi_cuda_set_weight_budget(zi_backend *be, uint64_t bytes)
{
    ZI_CUDA_REQUIRE(be);
    zi_cu(be)->weight_budget = bytes;
    zi_cu(be)->budget_auto = 0;
    if (bytes != UINT64_MAX)
        zi_cuda_install_staging(be);
    return ZI_OK;
}

int zi_cuda_set_weight_budget_spec(zi_backend *be, const char *wb)
{
    ZI_CUDA_REQUIRE(be);
    zi_cuda *cu = zi_cu(be);
    zi_budget_kind kind;
    uint64_t bytes;
    int rc = zi_weight_budget_parse(wb, &kind, &bytes);
    if (rc != ZI_OK)
        return rc;
    if (kind == ZI_BUDGET_RESIDENT)
        return zi_cuda_set_weight_budget(be, UINT64_MAX);
    if (kind == ZI_BUDGET_BYTES)
        return zi_cuda_set_weight_budget(be, bytes);
    size_t fr = 0, tot = 0; /* auto: what the device has free, less the headroom */
    cudaError_t e = cudaMemGetInfo(&fr, &tot);
    if (e != cudaSuccess) { /* never "all resident" by default: on a small card that fails later */
        int lost = zi_cu_status_fatal(e);
        if (lost)
            zi_cu_fail_lost(be, e, "cudaMemGetInfo");
        else
            cudaGetLastError();
        return zi_errorf(lost ? ZI_EDEVICE : ZI_EBACKEND,
                         "weight budget auto: cudaMemGetInfo: %s (%s)", cudaGetErrorString(e),
                         cudaGetErrorName(e));
    }
    uint64_t room = fr, head = cu->act_headroom;
    if (cu->alloc && cu->map_limit) { /* a mapping cap (ZI_CUDA_MEM_LIMIT_MB) */
        zi_alloc_stats as;
        zi_alloc_get_stats(cu->alloc, &as);
        uint64_t left = cu->map_limit > as.reserved ? cu->map_limit - as.reserved : 0;
        room = left < room ? left : room;
    }
    rc = zi_cuda_set_weight_budget(be, room > head ? room - head : 0);
    cu->budget_auto = 1;
    return rc;
}

int zi_cuda_set_act_headroom(zi_backend *be, uint64_t bytes)
{
    ZI_CUDA_REQUIRE(be);
    zi_cuda *cu = zi_cu(be);
    uint64_t h = bytes < UINT64_MAX - ZI_CUDA_ACT_MARGIN ? bytes + ZI_CUDA_ACT_MARGIN : UINT64_MAX;
    cu->act_headroom = h > ZI_CUDA_ACT_FLOOR ? h : ZI_CUDA_ACT_FLOOR;
    return cu->budget_auto ? zi_cuda_set_weight_budget_spec(be, "auto") : ZI_OK;
}

int zi_cuda_weight_budget_auto(zi_backend *be)
{
    return zi_cuda_is(be) && zi_cu(be)->budget_auto;
}

uint64_t zi_cuda_act_headroom(zi_backend *be)
{
    return zi_cuda_is(be) ? zi_cu(be)->act_headroom : 0;
}

uint64_t zi_cuda_job_scratch_bytes(zi_backend *be)
{
    if (!zi_cuda_is(be))
        return 0;
    zi_cuda *cu = zi_cu(be);
    /* attention score rows and convolution columns at their budgets, and the two weight
     * prefetch slots (each holds one host-kept weight: 96 MiB covers the real model's
     * largest, a 10240 x 3840 bf16 linear) */
    return (uint64_t)cu->score_budget + (uint64_t)cu->col_budget + ((uint64_t)192 << 20);
}

int zi_cuda_set_prefetch(zi_backend *be, int on, size_t min_bytes)
{
    ZI_CUDA_REQUIRE(be);
    zi_cuda *cu = zi_cu(be);
    cu->prefetch = on != 0;
    if (min_bytes)
        cu->pf_min = min_bytes;
    return ZI_OK;
}

int zi_cuda_prefetch_on(zi_backend *be)
{
    return zi_cuda_is(be) && zi_cu(be)->prefetch;
}

int zi_cuda_prefetch_stats(zi_backend *be, uint64_t *hits, uint64_t *misses)
{
    ZI_CUDA_REQUIRE(be);
    *hits = zi_cu(be)->pf_hits;
    *misses = zi_cu(be)->pf_misses;
    return ZI_OK;
}

uint64_t zi_cuda_weight_budget(zi_backend *be)
{
    return zi_cuda_is(be) ? zi_cu(be)->weight_budget : 0;
}

uint64_t zi_cuda_host_pinned_bytes(zi_backend *be)
{
    return zi_cuda_is(be) ? zi_cu(be)->hw_bytes[ZI_HW_PINNED] : 0;
}

uint64_t zi_cuda_host_pageable_bytes(zi_backend *be)
{
    return zi_cuda_is(be) ? zi_cu(be)->hw_bytes[ZI_HW_PAGEABLE] : 0;
}

uint64_t zi_cuda_host_mapped_bytes(zi_backend *be)
{
    return zi_cuda_is(be) ? zi_cu(be)->hw_bytes[ZI_HW_MAPPED] : 0;
}

uint64_t zi_cuda_host_weight_bytes(zi_backend *be)
{
    return zi_cuda_host_pinned_bytes(be) + zi_cuda_host_pageable_bytes(be) +
           zi_cuda_host_mapped_bytes(be);
}

int zi_cuda_set_pin_limit(zi_backend *be, uint64_t bytes)
{
    ZI_CUDA_REQUIRE(be);
    zi_cu(be)->pin_limit = bytes; /* 0: measured again at the next host weight */
    return ZI_OK;
}

uint64_t zi_cuda_pin_limit(zi_backend *be)
{
    if (!zi_cuda_is(be))
        return 0;
    zi_cuda *cu = zi_cu(be);
    if (!cu->pin_limit)
        cu->pin_limit = zi_host_pin_default();
    return cu->pin_limit;
}

int zi_cuda_set_work_budgets(zi_backend *be, size_t score_bytes, size_t col_bytes)
{
    ZI_CUDA_REQUIRE(be);
    zi_cuda *cu = zi_cu(be);
    cu->score_budget = score_bytes ? score_bytes : ZI_CUDA_SCORE_BUDGET;
    cu->col_budget = col_bytes ? col_bytes : ZI_CUDA_COL_BUDGET;
    return ZI_OK;
}

int zi_cuda_randn(zi_backend *be, zi_tensor *out, size_t n, uint64_t seed)
{
    ZI_CUDA_REQUIRE(be);
    void *y = zi_be_arg(be, ZI_CU_ARGS, "randn", "out", out, n);
    if (!y)
        return zi_backend_check(be);
    if (out->dtype != ZI_F32)
        return zi_errorf(ZI_EINVAL, "randn: output must be F32");
    size_t stride = (size_t)ZI_RNG_CUDA_BLOCK * zi_rng_cuda_grid(n);
    zi_cu_ok(be, zi_cu_randn_philox(y, n, seed, stride, zi_cu(be)->stream), "randn");
    return zi_backend_check(be);
}

uint64_t zi_cuda_trim(zi_backend *be)
{
    if (!zi_cuda_is(be) || !zi_cu(be)->alloc)
        return 0;
    zi_cuda *cu = zi_cu(be);
    pthread_mutex_lock(&cu->lock);
    uint64_t released = zi_alloc_trim(cu->alloc);
    pthread_mutex_unlock(&cu->lock);
    return released;
}

void zi_cuda_reset_peak(zi_backend *be)
{
    if (!zi_cuda_is(be))
        return;
    zi_cuda *cu = zi_cu(be);
    pthread_mutex_lock(&cu->lock);
    if (cu->alloc)
        zi_alloc_reset_peak(cu->alloc);
    cu->plain_peak = cu->plain_alloc;
    pthread_mutex_unlock(&cu->lock);
}

int zi_cuda_alloc_stats(zi_backend *be, zi_alloc_stats *out)
{
    ZI_CUDA_REQUIRE(be);
    zi_cuda_get_stats(zi_cu(be), out, NULL);
    return ZI_OK;
}

void *zi_cuda_stream(zi_backend *be)
{
    return zi_cuda_is(be) ? (void *)zi_cu(be)->stream : NULL;
}

int zi_cuda_flush_l2(zi_backend *be)
{
    ZI_CUDA_REQUIRE(be);
    zi_cuda *cu = zi_cu(be);
    size_t bytes = 2 * (cu->l2_bytes ? cu->l2_bytes : ((size_t)64 << 20));
    void *p = zi_cuda_tmp(be, "flush_l2", bytes);
    if (!p)
        return zi_backend_check(be);
    zi_cu_ok(be, cudaMemsetAsync(p, 0, bytes, cu->stream), "flush_l2");
    zi_cuda_mfree(be, p);
    return zi_backend_check(be);
}

int zi_cuda_bench_gemm(zi_backend *be, int n, int reps, double *tflops)
{
    ZI_CUDA_REQUIRE(be);
    zi_cuda *cu = zi_cu(be);
    *tflops = 0;
    if (n <= 0 || reps <= 0)
        return zi_errorf(ZI_EINVAL, "bench gemm: bad size %d or reps %d", n, reps);
    size_t nn = (size_t)n * n;
    void *a = zi_cuda_tmp(be, "bench gemm", nn * 2),
         *b = a ? zi_cuda_tmp(be, "bench gemm", nn * 2) : NULL;
    void *c = b ? zi_cuda_tmp(be, "bench gemm", nn * 2) : NULL;
    float *r = c ? zi_cuda_tmp(be, "bench gemm", nn * 4) : NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    if (r) {
        size_t stride = (size_t)ZI_RNG_CUDA_BLOCK * zi_rng_cuda_grid(nn);
        if (zi_cu_ok(be, zi_cu_randn_philox(r, nn, 1, stride, cu->stream), "bench gemm") &&
            zi_cu_ok(be, zi_cu_convert(a, ZI_BF16, r, ZI_F32, nn, cu->stream), "bench gemm") &&
            zi_cu_ok(be, zi_cu_randn_philox(r, nn, 2, stride, cu->stream), "bench gemm") &&
            zi_cu_ok(be, zi_cu_convert(b, ZI_BF16, r, ZI_F32, nn, cu->stream), "bench gemm") &&
            zi_cu_ok(be, cudaEventCreate(&e0), "bench gemm") &&
            zi_cu_ok(be, cudaEventCreate(&e1), "bench gemm")) {
            double best = 0;
            for (int i = 0; i < reps + 2 && be->err == ZI_OK; i++) {
                zi_cu_ok(be, cudaEventRecord(e0, cu->stream), "bench gemm");
                zi_cuda_matmul(be, c, ZI_BF16, b, a, NULL, ZI_BF16, n, n, n);
                zi_cu_ok(be, cudaEventRecord(e1, cu->stream), "bench gemm");
                float ms = 0;
                if (zi_cu_ok(be, cudaEventSynchronize(e1), "bench gemm") &&
                    zi_cu_ok(be, cudaEventElapsedTime(&ms, e0, e1), "bench gemm") && i >= 2 &&
                    ms > 0) {
                    double t = 2.0 * n * (double)n * n / (ms * 1e-3) / 1e12;
                    best = t > best ? t : best;
                }
            }
            *tflops = best;
        }
    }
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    zi_cuda_mfree(be, r);
    zi_cuda_mfree(be, c);
    zi_cuda_mfree(be, b);
    zi_cuda_mfree(be, a);
    return zi_backend_check(be);
}

int zi_cuda_bench_h2d(zi_backend *be, size_t bytes, int reps, double *gbps)
{
    ZI_CUDA_REQUIRE(be);
    zi_cuda *cu = zi_cu(be);
    *gbps = 0;
    if (bytes == 0 || reps <= 0)
        return zi_errorf(ZI_EINVAL, "bench h2d: bad size or reps");
    void *host = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    void *dev = zi_cuda_tmp(be, "bench h2d", bytes);
    if (dev && zi_cu_ok(be, cudaHostAlloc(&host, bytes, cudaHostAllocDefault), "bench h2d") &&
        zi_cu_ok(be, cudaEventCreate(&e0), "bench h2d") &&
        zi_cu_ok(be, cudaEventCreate(&e1), "bench h2d")) {
        memset(host, 1, bytes);
        double best = 0;
        for (int i = 0; i < reps + 1 && be->err == ZI_OK; i++) {
            float ms = 0;
            if (zi_cu_ok(be, cudaEventRecord(e0, cu->stream), "bench h2d") &&
                zi_cu_ok(be, cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, cu->stream),
                         "bench h2d") &&
                zi_cu_ok(be, cudaEventRecord(e1, cu->stream), "bench h2d") &&
                zi_cu_ok(be, cudaEventSynchronize(e1), "bench h2d") &&
                zi_cu_ok(be, cudaEventElapsedTime(&ms, e0, e1), "bench h2d") && i >= 1 && ms > 0) {
                double g = (double)bytes / (ms * 1e-3) / 1e9;
                best = g > best ? g : best;
            }
        }
        *gbps = best;
    }
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    if (host)
        cudaFreeHost(host);
    zi_cuda_mfree(be, dev);
    return zi_backend_check(be);
}
