/*
 * backend_meta.c - a backend that only counts memory: the planning twin of a real one.
 *
 * zi_backend_meta_new(ZI_BF16, 512) stores activations and weights in bf16 and latents in
 * f32 as the CUDA backend does, and places every block with the CUDA backend's own
 * allocator policy (zi_alloc: 512-byte blocks, 2 MiB pages, growth by 32 MiB) over a
 * provider that maps nothing, so `reserved` and its peak are what the device would have
 * mapped ((ZI_F32, 1) is the CPU backend's twin, which the tests compare with). No op runs:
 * memory is never touched (tensor addresses are distinct but point nowhere), downloads
 * give zeros. Running the pipeline on it replays the pipeline's exact sequence of
 * allocations and frees at any image size in milliseconds, so zi_pipeline_act_estimate()
 * reads the activation high-water mark of a job before the job (or a GPU) exists
 * (mem_stats as the real backends report it: allocated and its peak with the weights).
 * Weights are counted apart (`weights`) and never read (be->no_weight_data: loaders of
 * random weights skip filling them).
 */
#include "backend.h"
#include "backend_check.h"
#include "zi_alloc.h"
#include "zi_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZI_META_GAP 512u        /* between fake addresses */
#define ZI_META_CUDA_ALIGN 512u /* the CUDA backend's block alignment: use its allocator */

typedef struct zi_meta {
    zi_alloc *alloc;    /* the CUDA allocator's placement (align 512), or NULL */
    uint64_t align;     /* block rounding (1: exact sizes) */
    uint64_t next;      /* next fake address */
    uint64_t allocated; /* bytes handed out now (rounded), weights included */
    uint64_t peak;      /* high-water mark of allocated */
    uint64_t weights;   /* weight bytes */
} zi_meta;

/* Bytes a block of `bytes` takes: rounded up to the alignment, 0 counting as one unit
 * (as zi_alloc does); exact with align 1 (as the CPU backend counts). */
static uint64_t zi_meta_round(const zi_meta *m, size_t bytes)
{
    if (m->align <= 1)
        return (uint64_t)bytes;
    uint64_t b = bytes ? (uint64_t)bytes : 1;
    return (b + m->align - 1) / m->align * m->align;
}

static size_t zi_meta_nbytes(const zi_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n * zi_dtype_size(t->dtype);
}

#define ZI_META_BASE ((uint64_t)1 << 40) /* fake addresses start here, far from NULL */

/* Takes `bytes` (already rounded): a distinct, never dereferenced address - the allocator's
 * offset above ZI_META_BASE, or the next one of a plain sequence (with a gap, so
 * neighbours differ). NULL when the allocator refuses (it has no limit: never in practice). */
static void *zi_meta_take(zi_meta *m, uint64_t bytes)
{
    uint64_t at = m->next;
    if (m->alloc) {
        uint64_t off;
        if (zi_alloc_malloc(m->alloc, bytes, 0, &off) != ZI_OK)
            return NULL;
        at = ZI_META_BASE + off;
    } else {
        m->next += bytes + ZI_META_GAP;
    }
    m->allocated += bytes;
    if (m->allocated > m->peak)
        m->peak = m->allocated;
    return (void *)(uintptr_t)at;
}

static void zi_meta_give(zi_meta *m, const void *addr, uint64_t bytes)
{
    if (m->alloc)
        zi_alloc_free(m->alloc, (uint64_t)(uintptr_t)addr - ZI_META_BASE, NULL, NULL);
    m->allocated -= bytes;
}

static int zi_meta_alloc_dt(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape,
                            zi_dtype dt)
{
    size_t n;
    int rc = zi_be_alloc_shape(be, t, ndim, shape, &n);
    if (rc != ZI_OK)
        return rc;
    zi_meta *m = be->impl;
    uint64_t bytes = zi_meta_round(m, n * zi_dtype_size(dt));
    void *at = zi_meta_take(m, bytes);
    if (!at)
        return ZI_ENOMEM;
    zi_be_tensor_init(be, t, at, dt, ndim, shape);
    return ZI_OK;
}

static int zi_meta_alloc(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape)
{
    return zi_meta_alloc_dt(be, t, ndim, shape, be->act_dtype);
}

static int zi_meta_alloc_f32(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape)
{
    return zi_meta_alloc_dt(be, t, ndim, shape, ZI_F32);
}

/* Weights carry owned = 2, so that freeing one takes it off the weight count too. */
#define ZI_META_WEIGHT 2

static void zi_meta_free(zi_backend *be, zi_tensor *t)
{
    if (!t)
        return;
    zi_meta *m = be->impl;
    if (t->owned && t->data) {
        uint64_t bytes = zi_meta_round(m, zi_meta_nbytes(t));
        if (t->owned == ZI_META_WEIGHT)
            m->weights -= bytes;
        zi_meta_give(m, t->data, bytes);
    }
    memset(t, 0, sizeof *t);
}

static int zi_meta_upload_weight(zi_backend *be, zi_tensor *t, const void *src, zi_dtype src_dt,
                                 int ndim, const int64_t *shape)
{
    (void)src; /* never read: the loaders may pass anything, even NULL */
    (void)src_dt;
    size_t n;
    int rc = zi_be_alloc_shape(be, t, ndim, shape, &n);
    if (rc != ZI_OK)
        return rc;
    zi_meta *m = be->impl;
    uint64_t bytes = zi_meta_round(m, n * zi_dtype_size(be->weight_dtype));
    void *at = zi_meta_take(m, bytes);
    if (!at)
        return ZI_ENOMEM;
    zi_be_tensor_init(be, t, at, be->weight_dtype, ndim, shape);
    t->owned = ZI_META_WEIGHT;
    m->weights += bytes;
    return ZI_OK;
}

static int zi_meta_upload(zi_backend *be, zi_tensor *dst, const float *src, size_t n)
{
    (void)be;
    (void)dst;
    (void)src;
    (void)n;
    return ZI_OK;
}

static int zi_meta_download(zi_backend *be, float *dst, const zi_tensor *src, size_t n)
{
    (void)be;
    (void)src;
    memset(dst, 0, n * sizeof *dst);
    return ZI_OK;
}

static void zi_meta_mem_stats(zi_backend *be, zi_mem_stats *out)
{
    zi_meta *m = be->impl;
    memset(out, 0, sizeof *out);
    out->allocated = m->allocated;
    out->reserved = m->allocated;
    out->peak = m->peak;
    out->peak_reserved = m->peak;
    if (m->alloc) {
        zi_alloc_stats s;
        zi_alloc_get_stats(m->alloc, &s);
        out->reserved = s.reserved;
        out->peak_reserved = s.peak_reserved;
        out->mapped_chunks = s.mapped_chunks;
        out->largest_free = s.largest_free;
    }
    out->weights = m->weights;
}

static void zi_meta_sync(zi_backend *be)
{
    (void)be;
}

/* ---- the ops: nothing to compute ---- */

static void zi_meta_linear(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                           const zi_tensor *b, int M, int K, int N)
{
    (void)be, (void)out, (void)in, (void)w, (void)b, (void)M, (void)K, (void)N;
}

static void zi_meta_embedding(zi_backend *be, zi_tensor *out, const zi_tensor *table,
                              const int32_t *ids, int R, int D)
{
    (void)be, (void)out, (void)table, (void)ids, (void)R, (void)D;
}

static void zi_meta_rmsnorm(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                            int R, int D, float eps)
{
    (void)be, (void)out, (void)in, (void)w, (void)R, (void)D, (void)eps;
}

static void zi_meta_layernorm(zi_backend *be, zi_tensor *out, const zi_tensor *in, int R, int D,
                              float eps)
{
    (void)be, (void)out, (void)in, (void)R, (void)D, (void)eps;
}

static void zi_meta_groupnorm(zi_backend *be, zi_tensor *out, const zi_tensor *in,
                              const zi_tensor *gamma, const zi_tensor *beta, int C, int HW, int G,
                              float eps, int silu)
{
    (void)be, (void)out, (void)in, (void)gamma, (void)beta, (void)C, (void)HW, (void)G, (void)eps,
        (void)silu;
}

static void zi_meta_rope(zi_backend *be, zi_tensor *x, const zi_tensor *cos, const zi_tensor *sin,
                         int S, int H, int hd, zi_rope_layout layout)
{
    (void)be, (void)x, (void)cos, (void)sin, (void)S, (void)H, (void)hd, (void)layout;
}

static void zi_meta_attention(zi_backend *be, zi_tensor *out, const zi_tensor *q,
                              const zi_tensor *k, const zi_tensor *v, int Sq, int Skv, int H,
                              int KVH, int hd, float scale, int causal)
{
    (void)be, (void)out, (void)q, (void)k, (void)v, (void)Sq, (void)Skv, (void)H, (void)KVH,
        (void)hd, (void)scale, (void)causal;
}

static void zi_meta_binary(zi_backend *be, zi_tensor *out, const zi_tensor *a, const zi_tensor *b,
                           size_t n)
{
    (void)be, (void)out, (void)a, (void)b, (void)n;
}

static void zi_meta_unary(zi_backend *be, zi_tensor *out, const zi_tensor *in, size_t n)
{
    (void)be, (void)out, (void)in, (void)n;
}

static void zi_meta_affine(zi_backend *be, zi_tensor *out, const zi_tensor *in, float a, float b,
                           size_t n)
{
    (void)be, (void)out, (void)in, (void)a, (void)b, (void)n;
}

static void zi_meta_mul_row(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *s,
                            int R, int D)
{
    (void)be, (void)out, (void)in, (void)s, (void)R, (void)D;
}

static void zi_meta_gated_add(zi_backend *be, zi_tensor *x, const zi_tensor *g, const zi_tensor *y,
                              int R, int D)
{
    (void)be, (void)x, (void)g, (void)y, (void)R, (void)D;
}

static void zi_meta_copy(zi_backend *be, zi_tensor *dst, const zi_tensor *src, size_t n)
{
    (void)be, (void)dst, (void)src, (void)n;
}

static void zi_meta_transpose(zi_backend *be, zi_tensor *out, const zi_tensor *in, int R, int C)
{
    (void)be, (void)out, (void)in, (void)R, (void)C;
}

static void zi_meta_conv2d(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                           const zi_tensor *b, int Ci, int Co, int h, int wd, int k)
{
    (void)be, (void)out, (void)in, (void)w, (void)b, (void)Ci, (void)Co, (void)h, (void)wd, (void)k;
}

static void zi_meta_upsample2x(zi_backend *be, zi_tensor *out, const zi_tensor *in, int C, int h,
                               int wd)
{
    (void)be, (void)out, (void)in, (void)C, (void)h, (void)wd;
}

static int zi_meta_to_rgb8(zi_backend *be, uint8_t *rgb, const zi_tensor *in, int h, int wd)
{
    (void)be;
    (void)in;
    memset(rgb, 0, (size_t)h * (size_t)wd * 3);
    return ZI_OK;
}

static void zi_meta_destroy(zi_backend *be)
{
    if (!be)
        return;
    zi_meta *m = be->impl;
    if (m)
        zi_alloc_destroy(m->alloc);
    free(m);
    free(be);
}

/* The provider of a device that maps anything at once. */
static int zi_meta_map(void *ud, uint64_t offset, uint64_t size)
{
    (void)ud, (void)offset, (void)size;
    return ZI_OK;
}

zi_backend *zi_backend_meta_new(zi_dtype act_dtype, unsigned align)
{
    if ((act_dtype != ZI_BF16 && act_dtype != ZI_F32) || align == 0 || (align & (align - 1))) {
        zi_errorf(ZI_EINVAL, "meta backend: activations BF16 or F32, alignment a power of 2");
        return NULL;
    }
    zi_backend *be = calloc(1, sizeof *be);
    zi_meta *m = calloc(1, sizeof *m);
    if (!be || !m) {
        free(be);
        free(m);
        zi_errorf(ZI_ENOMEM, "meta backend: out of memory");
        return NULL;
    }
    m->align = align;
    m->next = ZI_META_BASE;
    if (align == ZI_META_CUDA_ALIGN) {
        /* kernels/cuda_backend.c's allocator: 2 MiB pages, growth by 32 MiB at least */
        zi_alloc_config ac = {.reserve = (uint64_t)1 << 40,
                              .granularity = (uint64_t)2 << 20,
                              .min_map = (uint64_t)32 << 20,
                              .align = align};
        zi_alloc_provider prov = {.ud = m, .map = zi_meta_map, .unmap = zi_meta_map};
        if (zi_alloc_new(&ac, &prov, &m->alloc) != ZI_OK) {
            free(m);
            free(be);
            return NULL;
        }
    }
    be->name = "meta";
    be->act_dtype = act_dtype;
    be->weight_dtype = act_dtype;
    be->no_weight_data = 1;
    snprintf(be->device_name, sizeof be->device_name, "memory plan (no compute)");
    be->err = ZI_OK;
    be->impl = m;
    be->destroy = zi_meta_destroy;
    be->alloc = zi_meta_alloc;
    be->alloc_f32 = zi_meta_alloc_f32;
    be->free = zi_meta_free;
    be->upload_weight = zi_meta_upload_weight;
    be->upload = zi_meta_upload;
    be->download = zi_meta_download;
    be->mem_stats = zi_meta_mem_stats;
    be->sync = zi_meta_sync;
    be->linear = zi_meta_linear;
    be->embedding = zi_meta_embedding;
    be->rmsnorm = zi_meta_rmsnorm;
    be->layernorm = zi_meta_layernorm;
    be->groupnorm = zi_meta_groupnorm;
    be->rope = zi_meta_rope;
    be->attention = zi_meta_attention;
    be->add = zi_meta_binary;
    be->silu = zi_meta_unary;
    be->tanh_ = zi_meta_unary;
    be->silu_mul = zi_meta_binary;
    be->affine = zi_meta_affine;
    be->mul_row = zi_meta_mul_row;
    be->gated_add = zi_meta_gated_add;
    be->copy = zi_meta_copy;
    be->transpose = zi_meta_transpose;
    be->conv2d = zi_meta_conv2d;
    be->upsample2x = zi_meta_upsample2x;
    be->to_rgb8 = zi_meta_to_rgb8;
    return be;
}
