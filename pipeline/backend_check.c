/*
 * backend_check.c - the argument checks of backend_check.h: one copy of each op's shape
 * contract (backend.h) for every backend. The order of the checks fixes which error a
 * call with several faults reports: dims, the op's own rules, then the tensors in
 * signature order.
 */
#include "backend_check.h"
#include "zi_err.h"

#include <string.h>

void *zi_be_arg(zi_backend *be, unsigned fl, const char *op, const char *what, const zi_tensor *t,
                size_t need)
{
    if (be->err != ZI_OK)
        return NULL;
    if (!t || !t->data) {
        zi_backend_fail(be, ZI_EINVAL, "%s: %s has no data", op, what);
        return NULL;
    }
    if ((fl & ZI_BE_OWN) && t->be != be) {
        zi_backend_fail(be, ZI_EINVAL, "%s: %s is not a tensor of this %s backend", op, what,
                        be->name);
        return NULL;
    }
    if (t->dtype != ZI_F32 && t->dtype != be->act_dtype) {
        if (be->act_dtype == ZI_F32)
            zi_backend_fail(be, ZI_EINVAL, "%s: %s has dtype %s, expected F32", op, what,
                            zi_dtype_name(t->dtype));
        else
            zi_backend_fail(be, ZI_EINVAL, "%s: %s has dtype %s, expected F32 or %s", op, what,
                            zi_dtype_name(t->dtype), zi_dtype_name(be->act_dtype));
        return NULL;
    }
    int64_t n = zi_tensor_numel(t);
    if (n < 0 || (uint64_t)n < (uint64_t)need) {
        zi_backend_fail(be, ZI_EINVAL, "%s: %s has %lld elements, needs %zu", op, what,
                        (long long)n, need);
        return NULL;
    }
    return t->data;
}

int zi_be_dims(zi_backend *be, const char *op, int n, const int *dims)
{
    if (be->err != ZI_OK)
        return -1;
    for (int i = 0; i < n; i++)
        if (dims[i] <= 0) {
            zi_backend_fail(be, ZI_EINVAL, "%s: dimension %d is %d (must be > 0)", op, i, dims[i]);
            return -1;
        }
    return 0;
}

/* 0 when the sticky error is still clear (every check of the op passed). */
static int zi_be_status(const zi_backend *be)
{
    return be->err == ZI_OK ? 0 : -1;
}

/* Checks an optional argument: absent is fine. */
static void zi_be_opt(zi_backend *be, unsigned fl, const char *op, const char *what,
                      const zi_tensor *t, size_t need)
{
    if (t)
        zi_be_arg(be, fl, op, what, t, need);
}

/* ---- memory ---- */

int zi_be_alloc_shape(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape, size_t *numel)
{
    if (!t)
        return zi_errorf(ZI_EINVAL, "%s alloc: NULL tensor", be->name);
    memset(t, 0, sizeof *t);
    if (ndim < 0 || ndim > ZI_MAX_DIMS || (ndim > 0 && !shape))
        return zi_errorf(ZI_EINVAL, "%s alloc: bad ndim %d", be->name, ndim);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        /* 8 bytes per element at most (F32 with headroom): the byte size cannot wrap */
        if (shape[i] < 0 || (shape[i] > 0 && n > SIZE_MAX / 8 / (size_t)shape[i]))
            return zi_errorf(ZI_EINVAL, "%s alloc: bad shape (dim %d = %lld)", be->name, i,
                             (long long)shape[i]);
        n *= (size_t)shape[i];
    }
    *numel = n;
    return ZI_OK;
}

void zi_be_tensor_init(zi_backend *be, zi_tensor *t, void *data, zi_dtype dt, int ndim,
                       const int64_t *shape)
{
    t->data = data;
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->be = be;
    t->owned = 1;
}

int zi_be_check_upload_weight(zi_backend *be, const void *src, zi_dtype src_dt)
{
    if (src_dt != ZI_F32 && src_dt != ZI_BF16 && src_dt != ZI_F16 && src_dt != ZI_F8_E4M3)
        return zi_errorf(ZI_EINVAL, "%s upload_weight: unsupported dtype %s", be->name,
                         zi_dtype_name(src_dt));
    if (!src)
        return zi_errorf(ZI_EINVAL, "%s upload_weight: NULL source", be->name);
    return ZI_OK;
}

/* A tensor a host transfer may use: of this backend and of an op dtype (ZI_BE_OWN only;
 * the CPU backend converts any float dtype). */
static int zi_be_transfer_ok(const zi_backend *be, unsigned fl, const zi_tensor *t)
{
    return !(fl & ZI_BE_OWN) || (t->be == be && (t->dtype == ZI_F32 || t->dtype == be->act_dtype));
}

int zi_be_check_upload(zi_backend *be, unsigned fl, const zi_tensor *dst, const float *src,
                       size_t n)
{
    if (!dst || !dst->data || !src)
        return zi_errorf(ZI_EINVAL, "%s upload: NULL tensor or source", be->name);
    if (!zi_be_transfer_ok(be, fl, dst))
        return zi_errorf(ZI_EINVAL, "%s upload: destination is not an F32/%s %s tensor", be->name,
                         zi_dtype_name(be->act_dtype), be->name);
    if ((uint64_t)zi_tensor_numel(dst) < n)
        return zi_errorf(ZI_EINVAL, "%s upload: %zu elements into a tensor of %lld", be->name, n,
                         (long long)zi_tensor_numel(dst));
    return ZI_OK;
}

int zi_be_check_download(zi_backend *be, unsigned fl, const float *dst, const zi_tensor *src,
                         size_t n)
{
    if (!dst || !src || !src->data)
        return zi_errorf(ZI_EINVAL, "%s download: NULL tensor or destination", be->name);
    if (!zi_be_transfer_ok(be, fl, src))
        return zi_errorf(ZI_EINVAL, "%s download: source is not an F32/%s %s tensor", be->name,
                         zi_dtype_name(be->act_dtype), be->name);
    if ((uint64_t)zi_tensor_numel(src) < n)
        return zi_errorf(ZI_EINVAL, "%s download: %zu elements from a tensor of %lld", be->name, n,
                         (long long)zi_tensor_numel(src));
    return ZI_OK;
}

/* ---- ops ---- */

int zi_be_check_linear(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                       const zi_tensor *w, const zi_tensor *b, int M, int K, int N)
{
    if (zi_be_dims(be, "linear", 3, (int[]){M, K, N}))
        return -1;
    zi_be_arg(be, fl, "linear", "out", out, (size_t)M * N); /* [M, N] */
    zi_be_arg(be, fl, "linear", "in", in, (size_t)M * K);   /* [M, K] */
    zi_be_arg(be, fl, "linear", "w", w, (size_t)N * K);     /* [N, K] */
    zi_be_opt(be, fl, "linear", "b", b, (size_t)N);         /* [N] */
    return zi_be_status(be);
}

int zi_be_check_embedding(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *table,
                          const int32_t *ids, int R, int D)
{
    if (zi_be_dims(be, "embedding", 2, (int[]){R, D}))
        return -1;
    zi_be_arg(be, fl, "embedding", "out", out, (size_t)R * D); /* [R, D] */
    zi_be_arg(be, fl, "embedding", "table", table, (size_t)D); /* [V, D] */
    if (be->err != ZI_OK)
        return -1;
    if (!ids) {
        zi_backend_fail(be, ZI_EINVAL, "embedding: NULL ids");
        return -1;
    }
    int64_t V = zi_tensor_numel(table) / D;
    for (int r = 0; r < R; r++)
        if (ids[r] < 0 || ids[r] >= V) {
            zi_backend_fail(be, ZI_EINVAL, "embedding: id %d at row %d outside [0, %lld)", ids[r],
                            r, (long long)V);
            return -1;
        }
    return 0;
}

int zi_be_check_rmsnorm(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                        const zi_tensor *w, int R, int D)
{
    if (zi_be_dims(be, "rmsnorm", 2, (int[]){R, D}))
        return -1;
    zi_be_arg(be, fl, "rmsnorm", "out", out, (size_t)R * D); /* [R, D] */
    zi_be_arg(be, fl, "rmsnorm", "in", in, (size_t)R * D);   /* [R, D] */
    zi_be_opt(be, fl, "rmsnorm", "w", w, (size_t)D);         /* [D] */
    return zi_be_status(be);
}

int zi_be_check_layernorm(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                          int R, int D)
{
    if (zi_be_dims(be, "layernorm", 2, (int[]){R, D}))
        return -1;
    zi_be_arg(be, fl, "layernorm", "out", out, (size_t)R * D); /* [R, D] */
    zi_be_arg(be, fl, "layernorm", "in", in, (size_t)R * D);   /* [R, D] */
    return zi_be_status(be);
}

int zi_be_check_groupnorm(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                          const zi_tensor *gamma, const zi_tensor *beta, int C, int HW, int G)
{
    if (zi_be_dims(be, "groupnorm", 3, (int[]){C, HW, G}))
        return -1;
    if (C % G != 0) {
        zi_backend_fail(be, ZI_EINVAL, "groupnorm: %d channels not divisible by %d groups", C, G);
        return -1;
    }
    size_t n = (size_t)C * HW;
    zi_be_arg(be, fl, "groupnorm", "out", out, n);             /* [C, HW] */
    zi_be_arg(be, fl, "groupnorm", "in", in, n);               /* [C, HW] */
    zi_be_opt(be, fl, "groupnorm", "gamma", gamma, (size_t)C); /* [C] */
    zi_be_opt(be, fl, "groupnorm", "beta", beta, (size_t)C);   /* [C] */
    return zi_be_status(be);
}

int zi_be_check_rope(zi_backend *be, unsigned fl, const zi_tensor *x, const zi_tensor *cos,
                     const zi_tensor *sin, int S, int H, int hd, zi_rope_layout layout)
{
    if (zi_be_dims(be, "rope", 3, (int[]){S, H, hd}))
        return -1;
    if (hd % 2 != 0) {
        zi_backend_fail(be, ZI_EINVAL, "rope: head dim %d is odd", hd);
        return -1;
    }
    if (layout != ZI_ROPE_NEOX && layout != ZI_ROPE_INTERLEAVED) {
        zi_backend_fail(be, ZI_EINVAL, "rope: unknown layout %d", (int)layout);
        return -1;
    }
    size_t half = (size_t)hd / 2;
    zi_be_arg(be, fl, "rope", "x", x, (size_t)S * H * hd);   /* [S, H, hd] */
    zi_be_arg(be, fl, "rope", "cos", cos, (size_t)S * half); /* [S, hd/2] */
    zi_be_arg(be, fl, "rope", "sin", sin, (size_t)S * half); /* [S, hd/2] */
    return zi_be_status(be);
}

int zi_be_check_attention(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *q,
                          const zi_tensor *k, const zi_tensor *v, int Sq, int Skv, int H, int KVH,
                          int hd, int causal)
{
    if (zi_be_dims(be, "attention", 5, (int[]){Sq, Skv, H, KVH, hd}))
        return -1;
    if (H % KVH != 0) {
        zi_backend_fail(be, ZI_EINVAL, "attention: %d heads not a multiple of %d kv heads", H, KVH);
        return -1;
    }
    if (causal && Skv < Sq) {
        /* the first Sq - Skv queries would see no key at all */
        zi_backend_fail(be, ZI_EINVAL, "attention: causal with Skv %d < Sq %d", Skv, Sq);
        return -1;
    }
    size_t nq = (size_t)Sq * H * hd, nkv = (size_t)Skv * KVH * hd;
    zi_be_arg(be, fl, "attention", "out", out, nq); /* [Sq, H*hd] */
    zi_be_arg(be, fl, "attention", "q", q, nq);     /* [Sq, H, hd] */
    zi_be_arg(be, fl, "attention", "k", k, nkv);    /* [Skv, KVH, hd] */
    zi_be_arg(be, fl, "attention", "v", v, nkv);    /* [Skv, KVH, hd] */
    return zi_be_status(be);
}

int zi_be_check_mul_row(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                        const zi_tensor *s, int R, int D)
{
    if (zi_be_dims(be, "mul_row", 2, (int[]){R, D}))
        return -1;
    zi_be_arg(be, fl, "mul_row", "out", out, (size_t)R * D); /* [R, D] */
    zi_be_arg(be, fl, "mul_row", "in", in, (size_t)R * D);   /* [R, D] */
    zi_be_arg(be, fl, "mul_row", "s", s, (size_t)D);         /* [D] */
    return zi_be_status(be);
}

int zi_be_check_gated_add(zi_backend *be, unsigned fl, const zi_tensor *x, const zi_tensor *g,
                          const zi_tensor *y, int R, int D)
{
    if (zi_be_dims(be, "gated_add", 2, (int[]){R, D}))
        return -1;
    zi_be_arg(be, fl, "gated_add", "x", x, (size_t)R * D); /* [R, D] */
    zi_be_opt(be, fl, "gated_add", "g", g, (size_t)D);     /* [D] */
    zi_be_arg(be, fl, "gated_add", "y", y, (size_t)R * D); /* [R, D] */
    return zi_be_status(be);
}

int zi_be_check_transpose(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                          int R, int C)
{
    if (zi_be_dims(be, "transpose", 2, (int[]){R, C}))
        return -1;
    zi_be_arg(be, fl, "transpose", "out", out, (size_t)R * C); /* [C, R] */
    zi_be_arg(be, fl, "transpose", "in", in, (size_t)R * C);   /* [R, C] */
    return zi_be_status(be);
}

int zi_be_check_conv2d(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                       const zi_tensor *w, const zi_tensor *b, int Ci, int Co, int h, int wd, int k)
{
    if (zi_be_dims(be, "conv2d", 5, (int[]){Ci, Co, h, wd, k}))
        return -1;
    if (k % 2 == 0) {
        zi_backend_fail(be, ZI_EINVAL, "conv2d: kernel size %d is even (pad k/2 needs odd k)", k);
        return -1;
    }
    size_t hw = (size_t)h * wd, kk = (size_t)Ci * k * k;
    zi_be_arg(be, fl, "conv2d", "out", out, (size_t)Co * hw); /* [Co, h, w] */
    zi_be_arg(be, fl, "conv2d", "in", in, (size_t)Ci * hw);   /* [Ci, h, w] */
    zi_be_arg(be, fl, "conv2d", "w", w, (size_t)Co * kk);     /* [Co, Ci, k, k] */
    zi_be_opt(be, fl, "conv2d", "b", b, (size_t)Co);          /* [Co] */
    return zi_be_status(be);
}

int zi_be_check_upsample2x(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                           int C, int h, int wd)
{
    if (zi_be_dims(be, "upsample2x", 3, (int[]){C, h, wd}))
        return -1;
    size_t n = (size_t)C * h * wd;
    zi_be_arg(be, fl, "upsample2x", "out", out, n * 4); /* [C, 2h, 2w] */
    zi_be_arg(be, fl, "upsample2x", "in", in, n);       /* [C, h, w] */
    return zi_be_status(be);
}

int zi_be_check_to_rgb8(zi_backend *be, unsigned fl, const uint8_t *rgb, const zi_tensor *in, int h,
                        int wd)
{
    if (zi_be_dims(be, "to_rgb8", 2, (int[]){h, wd}))
        return -1;
    if (!zi_be_arg(be, fl, "to_rgb8", "in", in, 3 * (size_t)h * wd)) /* [3, h, w] */
        return -1;
    if (!rgb) {
        zi_backend_fail(be, ZI_EINVAL, "to_rgb8: NULL output");
        return -1;
    }
    return 0;
}
