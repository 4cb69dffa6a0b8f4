/*
 * backend.h - the operations the model code calls, implemented once per device.
 *
 * The model code (qwen3.c, dit.c, vae.c, pipeline.c) holds no numeric loops: every
 * pass over activations goes through this table, so the CUDA backend (kernels/) slots
 * in unchanged. The CPU backend (backend_cpu.c) is the readable fp32 reference and
 * the oracle every CUDA kernel is checked against.
 *
 * Conventions
 *  - Tensors are row-major. Dimension letters: R rows (tokens / pixels), D features,
 *    S sequence, H heads, KVH key/value heads, hd head dim, C channels, h/w spatial.
 *  - Activations are allocated with be->alloc(): the backend picks the storage dtype
 *    (CPU: F32; CUDA: BF16) unless ZI_F32 is forced with alloc_f32 (latents).
 *  - Weights are made with be->upload_weight(): converted from the file dtype to the
 *    backend's weight dtype (CPU: F32; CUDA: BF16, round to nearest even).
 *  - Ops are asynchronous on devices; be->download() synchronises.
 *  - Errors are sticky: an op that fails (bad shape, device error) records the first
 *    error in the backend and later ops become no-ops. Model code checks
 *    zi_backend_check(be) at layer boundaries. Shape checks are never compiled out.
 *    ZI_EDEVICE (a sticky device fault: the GPU's context is lost) replaces an earlier
 *    error and is never cleared: the backend is unusable until the process restarts.
 *  - `out` may alias `in` only where an op says "in place allowed".
 */
#ifndef ZI_BACKEND_H
#define ZI_BACKEND_H

#include "tensor.h"

#include <stddef.h>
#include <stdint.h>

typedef enum zi_rope_layout {
    ZI_ROPE_NEOX = 0,        /* rotate-half: pairs (d, d + hd/2)     - Qwen3 */
    ZI_ROPE_INTERLEAVED = 1, /* complex pairs: (2m, 2m + 1)          - Z-Image DiT */
} zi_rope_layout;

/* Memory figures a backend reports (all bytes; zeros where not applicable). */
typedef struct zi_mem_stats {
    uint64_t reserved;      /* virtual range mapped to physical memory by the allocator */
    uint64_t allocated;     /* bytes currently handed out */
    uint64_t peak;          /* high-water mark of `allocated` since the last reset */
    uint64_t peak_reserved; /* high-water mark of `reserved` (CPU: = peak) */
    uint64_t mapped_chunks; /* physical chunks currently mapped */
    uint64_t largest_free;  /* largest free block inside the mapped range */
    uint64_t device_free;   /* cuMemGetInfo free */
    uint64_t device_total;  /* cuMemGetInfo total */
    uint64_t weights;       /* bytes held by weights */
} zi_mem_stats;

typedef struct zi_backend zi_backend;

struct zi_backend {
    const char *name;   /* "cpu" or "cuda" */
    zi_dtype act_dtype; /* storage dtype of activations from alloc() */
    zi_dtype weight_dtype;
    char device_name[128];
    int err; /* sticky status: ZI_OK until an op fails */
    char errmsg[512];
    /* Set by a loader while the `src` it passes to upload_weight() stays valid and
     * unchanged until the weight is freed (an mmap'ed checkpoint it keeps open): a backend
     * may then read a weight from there instead of keeping a copy (CUDA: weights past the
     * weight budget that the host cannot page-lock) and adds its bytes to
     * `weights_borrowed`, which tells the loader to keep the source open. */
    int weight_src_stable;
    uint64_t weights_borrowed;
    /* Set by a backend that never reads weight data (the meta backend): loaders of random
     * weights then pass src = NULL instead of generating numbers nobody reads. */
    int no_weight_data;

    void (*destroy)(zi_backend *be);

    /* ---- memory ---- */
    /* Allocates an activation tensor of the backend's act_dtype (contents undefined). */
    int (*alloc)(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape);
    /* Same, but always F32 (latents, scheduler state). */
    int (*alloc_f32)(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape);
    void (*free)(zi_backend *be, zi_tensor *t); /* frees an owned tensor; t zeroed */
    /* Makes a weight tensor from host data of dtype `src_dt` (F32/BF16/F16/F8_E4M3). */
    int (*upload_weight)(zi_backend *be, zi_tensor *t, const void *src, zi_dtype src_dt, int ndim,
                         const int64_t *shape);
    /* Host f32 <-> tensor (any float storage dtype; converted). n = numel to copy. */
    int (*upload)(zi_backend *be, zi_tensor *dst, const float *src, size_t n);
    int (*download)(zi_backend *be, float *dst, const zi_tensor *src, size_t n);
    void (*mem_stats)(zi_backend *be, zi_mem_stats *out);
    void (*sync)(zi_backend *be);

    /* ---- dense ---- */
    /* out[M,N] = in[M,K] · w[N,K]ᵀ (+ b[N] when b != NULL). */
    void (*linear)(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                   const zi_tensor *b, int M, int K, int N);
    /* out[r,:] = table[ids[r],:]; ids are host int32, table [V,D]. */
    void (*embedding)(zi_backend *be, zi_tensor *out, const zi_tensor *table, const int32_t *ids,
                      int R, int D);

    /* ---- normalisation ---- */
    /* RMSNorm over the last dim D of R rows; w[D] or NULL (no affine). In place allowed.
     * Per-head norm: R = S*H, D = hd. */
    void (*rmsnorm)(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w, int R,
                    int D, float eps);
    /* LayerNorm without affine params over D; biased variance. In place allowed. */
    void (*layernorm)(zi_backend *be, zi_tensor *out, const zi_tensor *in, int R, int D, float eps);
    /* GroupNorm on in[C, HW] with G groups, affine gamma/beta [C]; then SiLU when silu != 0.
     * In place allowed. */
    void (*groupnorm)(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *gamma,
                      const zi_tensor *beta, int C, int HW, int G, float eps, int silu);

    /* ---- position ---- */
    /* Rotates x[S, H, hd] in place with cos/sin tables [S, hd/2] (F32 backend tensors).
     * NEOX: out[d] = x[d]c_d - x[d+hd/2]s_d (d < hd/2), x[d]c + x[d-hd/2]s otherwise,
     *       with c_d = cos[s, d mod hd/2].
     * INTERLEAVED: (x[2m], x[2m+1]) -> (x0 c_m - x1 s_m, x0 s_m + x1 c_m). */
    void (*rope)(zi_backend *be, zi_tensor *x, const zi_tensor *cos, const zi_tensor *sin, int S,
                 int H, int hd, zi_rope_layout layout);

    /* ---- attention ---- */
    /* out[Sq, H*hd] = softmax(q kᵀ * scale (+ causal mask)) v.
     * q [Sq, H, hd]; k, v [Skv, KVH, hd]; query head h uses kv head h / (H / KVH).
     * causal: query i sees keys j <= i (+ Skv - Sq). Never materialises Sq x Skv scores
     * beyond one row block. */
    void (*attention)(zi_backend *be, zi_tensor *out, const zi_tensor *q, const zi_tensor *k,
                      const zi_tensor *v, int Sq, int Skv, int H, int KVH, int hd, float scale,
                      int causal);

    /* ---- element-wise (n = element count) ---- */
    void (*add)(zi_backend *be, zi_tensor *out, const zi_tensor *a, const zi_tensor *b, size_t n);
    void (*silu)(zi_backend *be, zi_tensor *out, const zi_tensor *in, size_t n);
    void (*tanh_)(zi_backend *be, zi_tensor *out, const zi_tensor *in, size_t n);
    /* out = silu(gate) * up. In place (out == gate) allowed. */
    void (*silu_mul)(zi_backend *be, zi_tensor *out, const zi_tensor *gate, const zi_tensor *up,
                     size_t n);
    /* out = in * a + b (scalars). In place allowed. */
    void (*affine)(zi_backend *be, zi_tensor *out, const zi_tensor *in, float a, float b, size_t n);
    /* out[r, d] = in[r, d] * s[d] for R rows of D (broadcast a row vector). In place allowed. */
    void (*mul_row)(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *s, int R,
                    int D);
    /* x[r, d] += g[d] * y[r, d]; g may be NULL (plain residual add). */
    void (*gated_add)(zi_backend *be, zi_tensor *x, const zi_tensor *g, const zi_tensor *y, int R,
                      int D);
    /* Copies n elements (any dtypes of this backend; converts F32 <-> act dtype). */
    void (*copy)(zi_backend *be, zi_tensor *dst, const zi_tensor *src, size_t n);
    /* out[c, r] = in[r, c] for in [R, C]. */
    void (*transpose)(zi_backend *be, zi_tensor *out, const zi_tensor *in, int R, int C);

    /* ---- convolution (VAE) ---- */
    /* out[Co, h, w] = conv(in[Ci, h, w], w[Co, Ci, k, k]) + b[Co]; stride 1, zero pad k/2. */
    void (*conv2d)(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                   const zi_tensor *b, int Ci, int Co, int h, int wd, int k);
    /* out[C, 2h, 2w] = in[C, floor(y/2), floor(x/2)]. */
    void (*upsample2x)(zi_backend *be, zi_tensor *out, const zi_tensor *in, int C, int h, int wd);
    /* rgb[h, w, 3] uint8 (host memory) = round_half_even(clamp(in[3,h,w] / 2 + 0.5, 0, 1) * 255).
     */
    int (*to_rgb8)(zi_backend *be, uint8_t *rgb, const zi_tensor *in, int h, int wd);

    void *impl; /* backend private state */
};

/* Records the first error of an op and returns it (later errors are dropped, except that
 * ZI_EDEVICE replaces any other). */
int zi_backend_fail(zi_backend *be, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ZI_OK, or the sticky error copied into the thread's zi_errmsg(). */
int zi_backend_check(zi_backend *be);

/* Clears the sticky error so the backend serves the next job (a job that failed with a
 * device out-of-memory must not poison the worker). Tensors allocated before stay valid;
 * the caller frees what the failed job left. ZI_EDEVICE stays: no job can run on a lost
 * device (the worker stops and the job is delivered again, docs/worker.md). */
void zi_backend_clear_error(zi_backend *be);

/* The fp32 reference backend. threads <= 0: OpenBLAS default. */
zi_backend *zi_backend_cpu_new(int threads);

/* The memory-planning backend (kernels/backend_meta.c): a backend's storage without any
 * compute or memory behind it - (ZI_BF16, 512) is the CUDA backend's (bf16 activations and
 * weights, f32 latents, its allocator's placement), (ZI_F32, 1) the CPU backend's.
 * mem_stats counts like the real ones: `allocated` (weights included), its `peak` since
 * creation, `weights`, `reserved` (mapped). */
zi_backend *zi_backend_meta_new(zi_dtype act_dtype, unsigned align);

/* CUDA backend on `device`; NULL with zi_errmsg() set when CUDA is not built in or no GPU. */
zi_backend *zi_backend_cuda_new(int device);
/* 1 when the CUDA backend was compiled in and a GPU is visible; otherwise 0 with the reason
 * in zi_errmsg() (not built in, no device, a driver older than the runtime). */
int zi_backend_cuda_available(void);

/* A weight budget as ZI_CUDA_WEIGHT_BUDGET_MB and device.weight_budget_mb spell it: NULL,
 * "" or "auto" -> ZI_BUDGET_AUTO; "resident" -> ZI_BUDGET_RESIDENT; a number of MiB ->
 * ZI_BUDGET_BYTES with *bytes set. Anything else is ZI_EINVAL naming the spec. */
typedef enum { ZI_BUDGET_AUTO, ZI_BUDGET_RESIDENT, ZI_BUDGET_BYTES } zi_budget_kind;
int zi_weight_budget_parse(const char *spec, zi_budget_kind *kind, uint64_t *bytes);

/* By name: "cpu", "cuda" or "auto" (cuda when available, else cpu). */
zi_backend *zi_backend_new(const char *name);

static inline void zi_backend_destroy(zi_backend *be)
{
    if (be)
        be->destroy(be);
}

#endif
