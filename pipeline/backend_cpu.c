/*
 * backend_cpu.c - the fp32 reference backend: every op of backend.h on host memory.
 *
 * What it is: the readable oracle. Activations and weights are host f32 (weights of any
 * file dtype are widened exactly at upload); GEMMs go to OpenBLAS (cblas_sgemm), every
 * other op is a plain loop. Reductions (norm statistics) accumulate in double so that the
 * result is the correctly rounded fp32 value up to a last-bit, which is what the float32
 * golden vectors were made with (tests/golden/data/README.md, "Other facts").
 * What it is not: fast. Only GEMM threads (OpenBLAS) run in parallel.
 *
 * Memory is bounded: attention materialises at most one block of query rows x Skv scores
 * (ZI_CPU_SCORE_BUDGET floats); conv2d builds im2col for a tile of output rows whose
 * buffer stays under ZI_CPU_COL_BUDGET floats.
 *
 * Every op checks its arguments (non-NULL F32 data, enough elements, sane dims; the
 * checks shared with every backend live in backend_check.c) and records a sticky error
 * with zi_backend_fail() instead of touching memory it was not given. After an error
 * every op is a no-op.
 */
#include "backend.h"
#include "backend_check.h"
#include "zi_err.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 4M floats = 16 MB of attention scores per block of query rows. */
#define ZI_CPU_SCORE_BUDGET ((size_t)4 << 20)
/* 16M floats = 64 MB of im2col columns per conv tile. */
#define ZI_CPU_COL_BUDGET ((size_t)16 << 20)
/* Bytes before each allocation: size and kind, kept so free() can update the stats.
 * 64 keeps the payload cache-line aligned. */
#define ZI_CPU_HEADER 64

typedef struct zi_cpu_block {
    size_t nbytes;
    int is_weight;
} zi_cpu_block;

typedef struct zi_cpu {
    uint64_t allocated;
    uint64_t peak;
    uint64_t weights;
} zi_cpu;

/* ---- argument checks (backend_check.h) ---- */

/* Host tensors need not have been made by this backend (views of host memory are fine). */
#define ZI_CPU_ARGS 0u

/* The f32 data of `t` when it holds at least `need` elements, else NULL with the sticky
 * error set. `what` names the argument in the message. */
static float *zi_cpu_f32(zi_backend *be, const char *op, const char *what, const zi_tensor *t,
                         size_t need)
{
    return zi_be_arg(be, ZI_CPU_ARGS, op, what, t, need);
}

/* ---- memory ---- */

static int zi_cpu_alloc_kind(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape,
                             int is_weight)
{
    size_t n;
    int rc = zi_be_alloc_shape(be, t, ndim, shape, &n);
    if (rc != ZI_OK)
        return rc;
    size_t nbytes = n * sizeof(float);
    void *base = NULL;
    if (posix_memalign(&base, ZI_CPU_HEADER, ZI_CPU_HEADER + (nbytes ? nbytes : 1)) != 0)
        return zi_errorf(ZI_ENOMEM, "cpu alloc: out of memory for %zu bytes", nbytes);
    zi_cpu_block *blk = base;
    blk->nbytes = nbytes;
    blk->is_weight = is_weight;
    zi_cpu *cpu = be->impl;
    cpu->allocated += nbytes;
    if (is_weight)
        cpu->weights += nbytes;
    if (cpu->allocated > cpu->peak)
        cpu->peak = cpu->allocated;
    zi_be_tensor_init(be, t, (char *)base + ZI_CPU_HEADER, ZI_F32, ndim, shape);
    return ZI_OK;
}

static int zi_cpu_alloc(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape)
{
    return zi_cpu_alloc_kind(be, t, ndim, shape, 0);
}

static void zi_cpu_free(zi_backend *be, zi_tensor *t)
{
    if (!t)
        return;
    if (t->owned && t->data) {
        zi_cpu_block *blk = (zi_cpu_block *)((char *)t->data - ZI_CPU_HEADER);
        zi_cpu *cpu = be->impl;
        cpu->allocated -= blk->nbytes;
        if (blk->is_weight)
            cpu->weights -= blk->nbytes;
        free(blk);
    }
    memset(t, 0, sizeof *t);
}

static int zi_cpu_upload_weight(zi_backend *be, zi_tensor *t, const void *src, zi_dtype src_dt,
                                int ndim, const int64_t *shape)
{
    int rc = zi_be_check_upload_weight(be, src, src_dt);
    if (rc != ZI_OK)
        return rc;
    rc = zi_cpu_alloc_kind(be, t, ndim, shape, 1);
    if (rc != ZI_OK)
        return rc;
    rc = zi_convert_to_f32(t->data, src, src_dt, (size_t)zi_tensor_numel(t));
    if (rc != ZI_OK)
        zi_cpu_free(be, t);
    return rc;
}

static int zi_cpu_upload(zi_backend *be, zi_tensor *dst, const float *src, size_t n)
{
    int rc = zi_be_check_upload(be, ZI_CPU_ARGS, dst, src, n);
    if (rc != ZI_OK)
        return rc;
    switch (dst->dtype) {
    case ZI_F32:
        memcpy(dst->data, src, n * sizeof(float));
        return ZI_OK;
    case ZI_BF16:
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)dst->data)[i] = zi_f32_to_bf16(src[i]);
        return ZI_OK;
    case ZI_F16:
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)dst->data)[i] = zi_f32_to_f16(src[i]);
        return ZI_OK;
    default:
        return zi_errorf(ZI_EINVAL, "cpu upload: tensor dtype %s is not a float type",
                         zi_dtype_name(dst->dtype));
    }
}

static int zi_cpu_download(zi_backend *be, float *dst, const zi_tensor *src, size_t n)
{
    int rc = zi_be_check_download(be, ZI_CPU_ARGS, dst, src, n);
    if (rc != ZI_OK)
        return rc;
    return zi_convert_to_f32(dst, src->data, src->dtype, n);
}

static void zi_cpu_mem_stats(zi_backend *be, zi_mem_stats *out)
{
    zi_cpu *cpu = be->impl;
    memset(out, 0, sizeof *out);
    out->reserved = cpu->allocated;
    out->allocated = cpu->allocated;
    out->peak = cpu->peak;
    out->peak_reserved = cpu->peak;
    out->weights = cpu->weights;
}

static void zi_cpu_sync(zi_backend *be)
{
    (void)be;
}

/* ---- dense ---- */

static void zi_cpu_linear(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                          const zi_tensor *b, int M, int K, int N)
{
    if (zi_be_check_linear(be, ZI_CPU_ARGS, out, in, w, b, M, K, N))
        return;
    float *y = out->data;                   /* [M, N] */
    const float *x = in->data;              /* [M, K] */
    const float *wt = w->data;              /* [N, K] */
    const float *bias = b ? b->data : NULL; /* [N] */
    if (y == x || y == wt) {
        zi_backend_fail(be, ZI_EINVAL, "linear: out aliases an input");
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, wt, K, 0.0f, y, N);
    if (bias)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++)
                y[(size_t)m * N + n] += bias[n];
}

static void zi_cpu_embedding(zi_backend *be, zi_tensor *out, const zi_tensor *table,
                             const int32_t *ids, int R, int D)
{
    if (zi_be_check_embedding(be, ZI_CPU_ARGS, out, table, ids, R, D))
        return;
    float *y = out->data;           /* [R, D] */
    const float *tab = table->data; /* [V, D] */
    for (int r = 0; r < R; r++)
        memcpy(y + (size_t)r * D, tab + (size_t)ids[r] * D, (size_t)D * sizeof(float));
}

/* ---- normalisation ---- */

static void zi_cpu_rmsnorm(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                           int R, int D, float eps)
{
    if (zi_be_check_rmsnorm(be, ZI_CPU_ARGS, out, in, w, R, D))
        return;
    float *y = out->data;                /* [R, D] */
    const float *x = in->data;           /* [R, D] */
    const float *g = w ? w->data : NULL; /* [D] */
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * D;
        float *yr = y + (size_t)r * D;
        double ss = 0;
        for (int d = 0; d < D; d++)
            ss += (double)xr[d] * xr[d];
        /* torch: y = x * rsqrt(mean(x^2) + eps) in fp32, then weight * y */
        float rs = 1.0f / sqrtf((float)(ss / D) + eps);
        for (int d = 0; d < D; d++) {
            float v = xr[d] * rs;
            yr[d] = g ? v * g[d] : v;
        }
    }
}

static void zi_cpu_layernorm(zi_backend *be, zi_tensor *out, const zi_tensor *in, int R, int D,
                             float eps)
{
    if (zi_be_check_layernorm(be, ZI_CPU_ARGS, out, in, R, D))
        return;
    float *y = out->data;      /* [R, D] */
    const float *x = in->data; /* [R, D] */
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * D;
        float *yr = y + (size_t)r * D;
        double s = 0;
        for (int d = 0; d < D; d++)
            s += xr[d];
        double mean = s / D, var = 0;
        for (int d = 0; d < D; d++)
            var += ((double)xr[d] - mean) * ((double)xr[d] - mean);
        var /= D;
        float rs = 1.0f / sqrtf((float)var + eps);
        float mu = (float)mean;
        for (int d = 0; d < D; d++)
            yr[d] = (xr[d] - mu) * rs;
    }
}

static void zi_cpu_groupnorm(zi_backend *be, zi_tensor *out, const zi_tensor *in,
                             const zi_tensor *gamma, const zi_tensor *beta, int C, int HW, int G,
                             float eps, int silu)
{
    if (zi_be_check_groupnorm(be, ZI_CPU_ARGS, out, in, gamma, beta, C, HW, G))
        return;
    float *y = out->data;                         /* [C, HW] */
    const float *x = in->data;                    /* [C, HW] */
    const float *ga = gamma ? gamma->data : NULL; /* [C] */
    const float *bb = beta ? beta->data : NULL;   /* [C] */
    int cpg = C / G;
    size_t gn = (size_t)cpg * HW;
    for (int g = 0; g < G; g++) {
        const float *xg = x + (size_t)g * gn;
        double s = 0;
        for (size_t i = 0; i < gn; i++)
            s += xg[i];
        double mean = s / (double)gn, var = 0;
        for (size_t i = 0; i < gn; i++)
            var += ((double)xg[i] - mean) * ((double)xg[i] - mean);
        var /= (double)gn;
        float rs = 1.0f / sqrtf((float)var + eps);
        float mu = (float)mean;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            float a = ga ? ga[c] : 1.0f, b = bb ? bb[c] : 0.0f;
            const float *xc = x + (size_t)c * HW;
            float *yc = y + (size_t)c * HW;
            for (int i = 0; i < HW; i++) {
                float v = (xc[i] - mu) * rs * a + b;
                yc[i] = silu ? v / (1.0f + expf(-v)) : v;
            }
        }
    }
}

/* ---- position ---- */

static void zi_cpu_rope(zi_backend *be, zi_tensor *x, const zi_tensor *cos, const zi_tensor *sin,
                        int S, int H, int hd, zi_rope_layout layout)
{
    if (zi_be_check_rope(be, ZI_CPU_ARGS, x, cos, sin, S, H, hd, layout))
        return;
    int half = hd / 2;
    float *v = x->data;         /* [S, H, hd] */
    const float *c = cos->data; /* [S, hd/2] */
    const float *s = sin->data; /* [S, hd/2] */
    for (int p = 0; p < S; p++) {
        const float *cp = c + (size_t)p * half, *sp = s + (size_t)p * half;
        for (int h = 0; h < H; h++) {
            float *xv = v + ((size_t)p * H + h) * hd;
            for (int m = 0; m < half; m++) {
                /* NEOX pairs (m, m + hd/2); INTERLEAVED pairs (2m, 2m + 1) */
                int i0 = layout == ZI_ROPE_NEOX ? m : 2 * m;
                int i1 = layout == ZI_ROPE_NEOX ? m + half : 2 * m + 1;
                float x0 = xv[i0], x1 = xv[i1];
                xv[i0] = x0 * cp[m] - x1 * sp[m];
                xv[i1] = x1 * cp[m] + x0 * sp[m];
            }
        }
    }
}

/* ---- attention ---- */

static void zi_cpu_attention(zi_backend *be, zi_tensor *out, const zi_tensor *q, const zi_tensor *k,
                             const zi_tensor *v, int Sq, int Skv, int H, int KVH, int hd,
                             float scale, int causal)
{
    if (zi_be_check_attention(be, ZI_CPU_ARGS, out, q, k, v, Sq, Skv, H, KVH, hd, causal))
        return;
    float *o = out->data;      /* [Sq, H*hd] */
    const float *qd = q->data; /* [Sq, H, hd] */
    const float *kd = k->data; /* [Skv, KVH, hd] */
    const float *vd = v->data; /* [Skv, KVH, hd] */
    if (o == qd || o == kd || o == vd) {
        zi_backend_fail(be, ZI_EINVAL, "attention: out aliases an input");
        return;
    }
    size_t rows = ZI_CPU_SCORE_BUDGET / (size_t)Skv;
    if (rows < 1)
        rows = 1;
    if (rows > 256)
        rows = 256;
    if (rows > (size_t)Sq)
        rows = (size_t)Sq;
    float *sc = malloc(rows * (size_t)Skv * sizeof(float)); /* [rows, Skv] */
    if (!sc) {
        zi_backend_fail(be, ZI_ENOMEM, "attention: out of memory for scores");
        return;
    }
    int group = H / KVH, off = Skv - Sq;
    int ldq = H * hd, ldk = KVH * hd;
    for (int h = 0; h < H; h++) {
        const float *kh = kd + (size_t)(h / group) * hd; /* [Skv, hd] with stride ldk */
        const float *vh = vd + (size_t)(h / group) * hd;
        for (int i0 = 0; i0 < Sq; i0 += (int)rows) {
            int nr = Sq - i0 < (int)rows ? Sq - i0 : (int)rows;
            /* causal: no row of this block sees a key past i0 + nr - 1 + off */
            int nk = causal ? i0 + nr + off : Skv;
            const float *qh = qd + (size_t)i0 * ldq + (size_t)h * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nk, hd, scale, qh, ldq, kh,
                        ldk, 0.0f, sc, nk);
            for (int r = 0; r < nr; r++) {
                float *sr = sc + (size_t)r * nk;
                int seen = causal ? i0 + r + off + 1 : nk;
                float mx = -INFINITY;
                for (int j = 0; j < seen; j++)
                    mx = sr[j] > mx ? sr[j] : mx;
                double sum = 0;
                for (int j = 0; j < seen; j++) {
                    sr[j] = expf(sr[j] - mx);
                    sum += sr[j];
                }
                float inv = (float)(1.0 / sum);
                for (int j = 0; j < seen; j++)
                    sr[j] *= inv;
                for (int j = seen; j < nk; j++)
                    sr[j] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, nk, 1.0f, sc, nk, vh,
                        ldk, 0.0f, o + (size_t)i0 * ldq + (size_t)h * hd, ldq);
        }
    }
    free(sc);
}

/* ---- element-wise ---- */

static void zi_cpu_add(zi_backend *be, zi_tensor *out, const zi_tensor *a, const zi_tensor *b,
                       size_t n)
{
    float *y = zi_cpu_f32(be, "add", "out", out, n);
    const float *x0 = zi_cpu_f32(be, "add", "a", a, n);
    const float *x1 = zi_cpu_f32(be, "add", "b", b, n);
    if (!y || !x0 || !x1)
        return;
    for (size_t i = 0; i < n; i++)
        y[i] = x0[i] + x1[i];
}

static void zi_cpu_silu(zi_backend *be, zi_tensor *out, const zi_tensor *in, size_t n)
{
    float *y = zi_cpu_f32(be, "silu", "out", out, n);
    const float *x = zi_cpu_f32(be, "silu", "in", in, n);
    if (!y || !x)
        return;
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] / (1.0f + expf(-x[i]));
}

static void zi_cpu_tanh(zi_backend *be, zi_tensor *out, const zi_tensor *in, size_t n)
{
    float *y = zi_cpu_f32(be, "tanh", "out", out, n);
    const float *x = zi_cpu_f32(be, "tanh", "in", in, n);
    if (!y || !x)
        return;
    for (size_t i = 0; i < n; i++)
        y[i] = tanhf(x[i]);
}

static void zi_cpu_silu_mul(zi_backend *be, zi_tensor *out, const zi_tensor *gate,
                            const zi_tensor *up, size_t n)
{
    float *y = zi_cpu_f32(be, "silu_mul", "out", out, n);
    const float *g = zi_cpu_f32(be, "silu_mul", "gate", gate, n);
    const float *u = zi_cpu_f32(be, "silu_mul", "up", up, n);
    if (!y || !g || !u)
        return;
    for (size_t i = 0; i < n; i++)
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void zi_cpu_affine(zi_backend *be, zi_tensor *out, const zi_tensor *in, float a, float b,
                          size_t n)
{
    float *y = zi_cpu_f32(be, "affine", "out", out, n);
    const float *x = zi_cpu_f32(be, "affine", "in", in, n);
    if (!y || !x)
        return;
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] * a + b;
}

static void zi_cpu_mul_row(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *s,
                           int R, int D)
{
    if (zi_be_check_mul_row(be, ZI_CPU_ARGS, out, in, s, R, D))
        return;
    float *y = out->data;      /* [R, D] */
    const float *x = in->data; /* [R, D] */
    const float *sv = s->data; /* [D] */
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++)
            y[(size_t)r * D + d] = x[(size_t)r * D + d] * sv[d];
}

static void zi_cpu_gated_add(zi_backend *be, zi_tensor *x, const zi_tensor *g, const zi_tensor *y,
                             int R, int D)
{
    if (zi_be_check_gated_add(be, ZI_CPU_ARGS, x, g, y, R, D))
        return;
    float *xv = x->data;                  /* [R, D] */
    const float *gv = g ? g->data : NULL; /* [D] */
    const float *yv = y->data;            /* [R, D] */
    for (int r = 0; r < R; r++)
        for (int d = 0; d < D; d++) {
            size_t i = (size_t)r * D + d;
            xv[i] += gv ? gv[d] * yv[i] : yv[i];
        }
}

static void zi_cpu_copy(zi_backend *be, zi_tensor *dst, const zi_tensor *src, size_t n)
{
    float *y = zi_cpu_f32(be, "copy", "dst", dst, n);
    const float *x = zi_cpu_f32(be, "copy", "src", src, n);
    if (!y || !x)
        return;
    memmove(y, x, n * sizeof(float));
}

static void zi_cpu_transpose(zi_backend *be, zi_tensor *out, const zi_tensor *in, int R, int C)
{
    if (zi_be_check_transpose(be, ZI_CPU_ARGS, out, in, R, C))
        return;
    float *y = out->data;      /* [C, R] */
    const float *x = in->data; /* [R, C] */
    if (y == x) {
        zi_backend_fail(be, ZI_EINVAL, "transpose: out aliases in");
        return;
    }
    /* 32x32 tiles keep both sides in cache */
    for (int r0 = 0; r0 < R; r0 += 32)
        for (int c0 = 0; c0 < C; c0 += 32)
            for (int r = r0; r < R && r < r0 + 32; r++)
                for (int c = c0; c < C && c < c0 + 32; c++)
                    y[(size_t)c * R + r] = x[(size_t)r * C + c];
}

/* ---- convolution ---- */

static void zi_cpu_conv2d(zi_backend *be, zi_tensor *out, const zi_tensor *in, const zi_tensor *w,
                          const zi_tensor *b, int Ci, int Co, int h, int wd, int k)
{
    if (zi_be_check_conv2d(be, ZI_CPU_ARGS, out, in, w, b, Ci, Co, h, wd, k))
        return;
    size_t hw = (size_t)h * wd, kk = (size_t)Ci * k * k;
    float *y = out->data;                   /* [Co, h, w] */
    const float *x = in->data;              /* [Ci, h, w] */
    const float *wt = w->data;              /* [Co, Ci, k, k] */
    const float *bias = b ? b->data : NULL; /* [Co] */
    if (y == x) {
        zi_backend_fail(be, ZI_EINVAL, "conv2d: out aliases in");
        return;
    }
    if (k == 1) {
        /* a 1x1 conv is one GEMM over all pixels: y[Co, hw] = w[Co, Ci] . x[Ci, hw] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Co, (int)hw, Ci, 1.0f, wt, Ci, x,
                    (int)hw, 0.0f, y, (int)hw);
    } else {
        size_t per_row = kk * (size_t)wd;
        size_t tile = ZI_CPU_COL_BUDGET / per_row;
        if (tile < 1)
            tile = 1;
        if (tile > (size_t)h)
            tile = (size_t)h;
        float *col = malloc(tile * per_row * sizeof(float)); /* [Ci*k*k, tile*w] */
        if (!col) {
            zi_backend_fail(be, ZI_ENOMEM, "conv2d: out of memory for im2col");
            return;
        }
        int p = k / 2;
        for (int y0 = 0; y0 < h; y0 += (int)tile) {
            int ny = h - y0 < (int)tile ? h - y0 : (int)tile;
            size_t npix = (size_t)ny * wd;
            for (int ci = 0; ci < Ci; ci++)
                for (int ky = 0; ky < k; ky++)
                    for (int kx = 0; kx < k; kx++) {
                        float *cr = col + (((size_t)ci * k + ky) * k + kx) * npix;
                        for (int yy = 0; yy < ny; yy++) {
                            int sy = y0 + yy + ky - p;
                            float *cd = cr + (size_t)yy * wd;
                            if (sy < 0 || sy >= h) {
                                memset(cd, 0, (size_t)wd * sizeof(float));
                                continue;
                            }
                            const float *xr = x + ((size_t)ci * h + sy) * wd;
                            for (int xx = 0; xx < wd; xx++) {
                                int sx = xx + kx - p;
                                cd[xx] = sx >= 0 && sx < wd ? xr[sx] : 0.0f;
                            }
                        }
                    }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Co, (int)npix, (int)kk, 1.0f, wt,
                        (int)kk, col, (int)npix, 0.0f, y + (size_t)y0 * wd, (int)hw);
        }
        free(col);
    }
    if (bias)
        for (int co = 0; co < Co; co++)
            for (size_t i = 0; i < hw; i++)
                y[(size_t)co * hw + i] += bias[co];
}

static void zi_cpu_upsample2x(zi_backend *be, zi_tensor *out, const zi_tensor *in, int C, int h,
                              int wd)
{
    if (zi_be_check_upsample2x(be, ZI_CPU_ARGS, out, in, C, h, wd))
        return;
    float *y = out->data;      /* [C, 2h, 2w] */
    const float *x = in->data; /* [C, h, w] */
    if (y == x) {
        zi_backend_fail(be, ZI_EINVAL, "upsample2x: out aliases in");
        return;
    }
    size_t ow = (size_t)wd * 2;
    for (int c = 0; c < C; c++)
        for (int yy = 0; yy < 2 * h; yy++) {
            const float *xr = x + ((size_t)c * h + yy / 2) * wd;
            float *yr = y + ((size_t)c * 2 * h + yy) * ow;
            for (size_t xx = 0; xx < ow; xx++)
                yr[xx] = xr[xx / 2];
        }
}

static int zi_cpu_to_rgb8(zi_backend *be, uint8_t *rgb, const zi_tensor *in, int h, int wd)
{
    if (zi_be_check_to_rgb8(be, ZI_CPU_ARGS, rgb, in, h, wd))
        return zi_backend_check(be);
    size_t hw = (size_t)h * wd;
    const float *x = in->data; /* [3, h, w] */
    for (size_t i = 0; i < hw; i++)
        for (int c = 0; c < 3; c++) {
            float v = x[(size_t)c * hw + i] / 2.0f + 0.5f;
            v = v < 0.0f ? 0.0f : v; /* a NaN passes both compares; caught below */
            v = v > 1.0f ? 1.0f : v;
            if (!(v >= 0.0f))
                v = 0.0f;
            /* round half to even, as numpy's round (default rounding mode) */
            rgb[i * 3 + (size_t)c] = (uint8_t)nearbyintf(v * 255.0f);
        }
    return ZI_OK;
}

static void zi_cpu_destroy(zi_backend *be)
{
    if (!be)
        return;
    free(be->impl);
    free(be);
}

zi_backend *zi_backend_cpu_new(int threads)
{
    zi_backend *be = calloc(1, sizeof *be);
    zi_cpu *cpu = calloc(1, sizeof *cpu);
    if (!be || !cpu) {
        free(be);
        free(cpu);
        zi_errorf(ZI_ENOMEM, "cpu backend: out of memory");
        return NULL;
    }
    if (threads > 0)
        openblas_set_num_threads(threads);
    be->name = "cpu";
    be->act_dtype = ZI_F32;
    be->weight_dtype = ZI_F32;
    snprintf(be->device_name, sizeof be->device_name, "host fp32 (OpenBLAS, %d threads)",
             openblas_get_num_threads());
    be->err = ZI_OK;
    be->impl = cpu;
    be->destroy = zi_cpu_destroy;
    be->alloc = zi_cpu_alloc;
    be->alloc_f32 = zi_cpu_alloc;
    be->free = zi_cpu_free;
    be->upload_weight = zi_cpu_upload_weight;
    be->upload = zi_cpu_upload;
    be->download = zi_cpu_download;
    be->mem_stats = zi_cpu_mem_stats;
    be->sync = zi_cpu_sync;
    be->linear = zi_cpu_linear;
    be->embedding = zi_cpu_embedding;
    be->rmsnorm = zi_cpu_rmsnorm;
    be->layernorm = zi_cpu_layernorm;
    be->groupnorm = zi_cpu_groupnorm;
    be->rope = zi_cpu_rope;
    be->attention = zi_cpu_attention;
    be->add = zi_cpu_add;
    be->silu = zi_cpu_silu;
    be->tanh_ = zi_cpu_tanh;
    be->silu_mul = zi_cpu_silu_mul;
    be->affine = zi_cpu_affine;
    be->mul_row = zi_cpu_mul_row;
    be->gated_add = zi_cpu_gated_add;
    be->copy = zi_cpu_copy;
    be->transpose = zi_cpu_transpose;
    be->conv2d = zi_cpu_conv2d;
    be->upsample2x = zi_cpu_upsample2x;
    be->to_rgb8 = zi_cpu_to_rgb8;
    return be;
}
