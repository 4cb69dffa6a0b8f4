/*
 * vae.c - the AutoencoderKL decoder on the backend interface (no loops over activations).
 *
 * Structure (diffusers Decoder; all sizes from zi_vae_config, B = n_blocks,
 * ch[i] = block_out[B-1-i], the reversed block_out_channels):
 *   [post_quant_conv]      1x1, Clat -> Clat, when use_post_quant_conv (AutoencoderKL's
 *                          default; Z-Image's VAE has none)
 *   conv_in                3x3, Clat -> ch[0]
 *   mid_block              R(ch[0]) [-> Attn(ch[0])] -> R(ch[0])
 *   up_blocks.i, i < B     (layers_per_block + 1) resnets, the first ch[i-1] -> ch[i]
 *                          (ch[-1] = ch[0]) with a 1x1 conv_shortcut when they differ;
 *                          nearest x2 + 3x3 conv upsampler on all but the last block
 *   conv_norm_out          GroupNorm(G, 1e-6) + SiLU, then conv_out 3x3, ch[B-1] -> Cout
 * R(i -> o): y = shortcut(x) + conv2(SiLU(GN(conv1(SiLU(GN(x)))))) (docs/zimage-spec.md 5.3).
 * Attention: 1 head of dim C over the N = h*w pixels, softmax(QK^T / sqrt(C)) V, through
 * be->attention (flash-style; no N x N buffer), residual add.
 *
 * Memory plan (the reason for the order of operations below): every stage takes
 * ownership of its input and frees each buffer the moment it is dead. Live activations
 * at the worst point, in units of one [C, h, w] buffer of the resolution at hand:
 *   R(c -> c)      3c  (x, GN(x) reused as conv2's output, conv1 output)
 *   R(i -> o)      max(i + 2o, 3o)  (shortcut first, then GN of x in place)
 *   Attn(C)        5C  at latent resolution (x, GN(x)^T, q, k, v)
 *   upsampler(C)   2C  at the doubled resolution (input freed after the x2 copy)
 * For the real model at 1024^2 the peak is up_blocks.3.resnets.0 (256 -> 128 at 1024^2)
 * = 512 x 1024^2 elements: 2.15 GB fp32, 1.07 GB bf16. zi_vae_peak_estimate() replays
 * this plan on sizes alone.
 */
#include "vae.h"
#include "rng.h"
#include "zi_err.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZI_VAE_EPS 1e-6f
#define ZI_VAE_NAME_MAX 96

typedef struct zi_vae_resnet {
    int cin, cout;
    zi_tensor norm1_w, norm1_b; /* [cin] */
    zi_tensor conv1_w, conv1_b; /* [cout, cin, 3, 3], [cout] */
    zi_tensor norm2_w, norm2_b; /* [cout] */
    zi_tensor conv2_w, conv2_b; /* [cout, cout, 3, 3], [cout] */
    zi_tensor short_w, short_b; /* [cout, cin, 1, 1], [cout]; only when cin != cout */
} zi_vae_resnet;

typedef struct zi_vae_attn {
    zi_tensor gn_w, gn_b;                   /* [C] */
    zi_tensor q_w, q_b, k_w, k_b, v_w, v_b; /* [C, C], [C] */
    zi_tensor o_w, o_b;                     /* [C, C], [C] */
} zi_vae_attn;

typedef struct zi_vae_up {
    int cin, cout;
    zi_vae_resnet *res; /* [n_res] */
    int has_up;
    zi_tensor up_w, up_b; /* [cout, cout, 3, 3], [cout] */
} zi_vae_up;

/* One row of the typed tensor table: checkpoint name -> field, expected shape. */
typedef struct zi_vae_entry {
    char name[ZI_VAE_NAME_MAX];
    zi_tensor *dst;
    int ndim;
    int64_t shape[4];
} zi_vae_entry;

struct zi_vae {
    zi_vae_config cfg;
    zi_backend *be;
    int n_res;                      /* resnets per up block: layers_per_block + 1 */
    zi_tensor pq_w, pq_b;           /* post_quant_conv [Clat, Clat, 1, 1], [Clat] (cfg) */
    zi_tensor conv_in_w, conv_in_b; /* [ch0, Clat, 3, 3], [ch0] */
    zi_vae_resnet mid_res[2];
    zi_vae_attn attn; /* only when cfg.mid_attention */
    zi_vae_up up[ZI_VAE_MAX_BLOCKS];
    zi_tensor norm_out_w, norm_out_b; /* [chL] */
    zi_tensor conv_out_w, conv_out_b; /* [Cout, chL, 3, 3], [Cout] */
    zi_vae_entry *table;
    size_t n_table;
    /* accounting of the current decode */
    uint64_t live, peak;
    zi_vae_mem mem;
};

/* ---- the typed table ---- */

static int zi_vae_add(zi_vae *v, size_t cap, zi_tensor *dst, int ndim, const int64_t *shape,
                      const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int zi_vae_add(zi_vae *v, size_t cap, zi_tensor *dst, int ndim, const int64_t *shape,
                      const char *fmt, ...)
{
    if (v->n_table >= cap)
        return zi_errorf(ZI_EINVAL, "vae: tensor table overflow");
    zi_vae_entry *e = &v->table[v->n_table++];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof e->name)
        return zi_errorf(ZI_EINVAL, "vae: tensor name too long");
    e->dst = dst;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    return ZI_OK;
}

#define ZI_VAE_TRY(expr)                                                                           \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != ZI_OK)                                                                          \
            return rc_;                                                                            \
    } while (0)

/* A conv weight [co, ci, k, k] + bias [co]. */
static int zi_vae_add_conv(zi_vae *v, size_t cap, zi_tensor *w, zi_tensor *b, int co, int ci, int k,
                           const char *prefix)
{
    ZI_VAE_TRY(zi_vae_add(v, cap, w, 4, (int64_t[]){co, ci, k, k}, "%s.weight", prefix));
    return zi_vae_add(v, cap, b, 1, (int64_t[]){co}, "%s.bias", prefix);
}

/* A norm (or linear bias-like pair) weight [c] + bias [c]. */
static int zi_vae_add_norm(zi_vae *v, size_t cap, zi_tensor *w, zi_tensor *b, int c,
                           const char *prefix)
{
    ZI_VAE_TRY(zi_vae_add(v, cap, w, 1, (int64_t[]){c}, "%s.weight", prefix));
    return zi_vae_add(v, cap, b, 1, (int64_t[]){c}, "%s.bias", prefix);
}

static int zi_vae_add_linear(zi_vae *v, size_t cap, zi_tensor *w, zi_tensor *b, int c,
                             const char *prefix)
{
    ZI_VAE_TRY(zi_vae_add(v, cap, w, 2, (int64_t[]){c, c}, "%s.weight", prefix));
    return zi_vae_add(v, cap, b, 1, (int64_t[]){c}, "%s.bias", prefix);
}

static int zi_vae_add_resnet(zi_vae *v, size_t cap, zi_vae_resnet *r, int cin, int cout,
                             const char *prefix)
{
    char p[ZI_VAE_NAME_MAX];
    r->cin = cin;
    r->cout = cout;
    snprintf(p, sizeof p, "%s.norm1", prefix);
    ZI_VAE_TRY(zi_vae_add_norm(v, cap, &r->norm1_w, &r->norm1_b, cin, p));
    snprintf(p, sizeof p, "%s.conv1", prefix);
    ZI_VAE_TRY(zi_vae_add_conv(v, cap, &r->conv1_w, &r->conv1_b, cout, cin, 3, p));
    snprintf(p, sizeof p, "%s.norm2", prefix);
    ZI_VAE_TRY(zi_vae_add_norm(v, cap, &r->norm2_w, &r->norm2_b, cout, p));
    snprintf(p, sizeof p, "%s.conv2", prefix);
    ZI_VAE_TRY(zi_vae_add_conv(v, cap, &r->conv2_w, &r->conv2_b, cout, cout, 3, p));
    if (cin != cout) {
        snprintf(p, sizeof p, "%s.conv_shortcut", prefix);
        ZI_VAE_TRY(zi_vae_add_conv(v, cap, &r->short_w, &r->short_b, cout, cin, 1, p));
    }
    return ZI_OK;
}

/* Checks the config and builds the table (shapes from cfg only). */
static int zi_vae_build(zi_vae *v)
{
    const zi_vae_config *c = &v->cfg;
    if (c->n_blocks < 1 || c->n_blocks > ZI_VAE_MAX_BLOCKS)
        return zi_errorf(ZI_EINVAL, "vae config: %d blocks (expected 1..%d)", c->n_blocks,
                         ZI_VAE_MAX_BLOCKS);
    if (c->latent_channels <= 0 || c->out_channels <= 0 || c->layers_per_block < 0 ||
        c->norm_groups <= 0 || !(c->scaling_factor != 0.0f))
        return zi_errorf(ZI_EINVAL, "vae config: bad latent/out channels, layers_per_block, "
                                    "norm_num_groups or scaling_factor");
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out[i] <= 0 || c->block_out[i] % c->norm_groups != 0)
            return zi_errorf(ZI_EINVAL,
                             "vae config: block_out_channels[%d] = %d is not a positive "
                             "multiple of norm_num_groups %d",
                             i, c->block_out[i], c->norm_groups);
    v->n_res = c->layers_per_block + 1;
    /* conv_in 2 + mid 2x10 + attn 10 + per up block n_res x 10 + 2 + out 4 */
    size_t cap = 64 + (size_t)c->n_blocks * ((size_t)v->n_res * 10 + 2);
    v->table = calloc(cap, sizeof *v->table);
    if (!v->table)
        return zi_errorf(ZI_ENOMEM, "vae: out of memory");

    int B = c->n_blocks;
    int ch0 = c->block_out[B - 1];
    if (c->post_quant_conv)
        ZI_VAE_TRY(zi_vae_add_conv(v, cap, &v->pq_w, &v->pq_b, c->latent_channels,
                                   c->latent_channels, 1, "post_quant_conv"));
    ZI_VAE_TRY(zi_vae_add_conv(v, cap, &v->conv_in_w, &v->conv_in_b, ch0, c->latent_channels, 3,
                               "decoder.conv_in"));
    char p[ZI_VAE_NAME_MAX];
    for (int k = 0; k < 2; k++) {
        snprintf(p, sizeof p, "decoder.mid_block.resnets.%d", k);
        ZI_VAE_TRY(zi_vae_add_resnet(v, cap, &v->mid_res[k], ch0, ch0, p));
    }
    if (c->mid_attention) {
        const char *a = "decoder.mid_block.attentions.0";
        zi_vae_attn *at = &v->attn;
        snprintf(p, sizeof p, "%s.group_norm", a);
        ZI_VAE_TRY(zi_vae_add_norm(v, cap, &at->gn_w, &at->gn_b, ch0, p));
        snprintf(p, sizeof p, "%s.to_q", a);
        ZI_VAE_TRY(zi_vae_add_linear(v, cap, &at->q_w, &at->q_b, ch0, p));
        snprintf(p, sizeof p, "%s.to_k", a);
        ZI_VAE_TRY(zi_vae_add_linear(v, cap, &at->k_w, &at->k_b, ch0, p));
        snprintf(p, sizeof p, "%s.to_v", a);
        ZI_VAE_TRY(zi_vae_add_linear(v, cap, &at->v_w, &at->v_b, ch0, p));
        snprintf(p, sizeof p, "%s.to_out.0", a);
        ZI_VAE_TRY(zi_vae_add_linear(v, cap, &at->o_w, &at->o_b, ch0, p));
    }
    int prev = ch0;
    for (int i = 0; i < B; i++) {
        zi_vae_up *u = &v->up[i];
        u->cin = prev;
        u->cout = c->block_out[B - 1 - i];
        u->has_up = i < B - 1;
        u->res = calloc((size_t)v->n_res, sizeof *u->res);
        if (!u->res)
            return zi_errorf(ZI_ENOMEM, "vae: out of memory");
        for (int j = 0; j < v->n_res; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            ZI_VAE_TRY(
                zi_vae_add_resnet(v, cap, &u->res[j], j == 0 ? u->cin : u->cout, u->cout, p));
        }
        if (u->has_up) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            ZI_VAE_TRY(zi_vae_add_conv(v, cap, &u->up_w, &u->up_b, u->cout, u->cout, 3, p));
        }
        prev = u->cout;
    }
    ZI_VAE_TRY(
        zi_vae_add_norm(v, cap, &v->norm_out_w, &v->norm_out_b, prev, "decoder.conv_norm_out"));
    return zi_vae_add_conv(v, cap, &v->conv_out_w, &v->conv_out_b, c->out_channels, prev, 3,
                           "decoder.conv_out");
}

static int zi_vae_new(const zi_vae_config *cfg, zi_backend *be, zi_vae **out)
{
    *out = NULL;
    if (!cfg || !be)
        return zi_errorf(ZI_EINVAL, "vae: NULL config or backend");
    zi_vae *v = calloc(1, sizeof *v);
    if (!v)
        return zi_errorf(ZI_ENOMEM, "vae: out of memory");
    v->cfg = *cfg;
    v->be = be;
    int rc = zi_vae_build(v);
    if (rc != ZI_OK) {
        zi_vae_free(v);
        return rc;
    }
    *out = v;
    return ZI_OK;
}

void zi_vae_free(zi_vae *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n_table; i++)
        if (v->table[i].dst->data)
            v->be->free(v->be, v->table[i].dst);
    for (int i = 0; i < ZI_VAE_MAX_BLOCKS; i++)
        free(v->up[i].res);
    free(v->table);
    free(v);
}

static uint64_t zi_vae_weight_bytes(const zi_vae *v)
{
    uint64_t n = 0;
    for (size_t i = 0; i < v->n_table; i++)
        n += zi_tensor_nbytes(v->table[i].dst);
    return n;
}

int zi_vae_load_st(const zi_st *st, const zi_vae_config *cfg, zi_backend *be, zi_vae **out)
{
    zi_vae *v = NULL;
    int rc = zi_vae_new(cfg, be, &v);
    if (rc != ZI_OK)
        return rc;
    for (size_t i = 0; i < v->n_table; i++) {
        const zi_vae_entry *e = &v->table[i];
        const zi_st_tensor *t = NULL;
        rc = zi_st_get(st, e->name, e->ndim, e->shape, &t);
        if (rc == ZI_OK)
            rc = be->upload_weight(be, e->dst, t->data, t->dtype, e->ndim, e->shape);
        if (rc != ZI_OK) {
            zi_error_prefix(rc, "vae decoder");
            goto err;
        }
    }
    /* A decoder tensor the table does not know means the config and the file disagree
     * (e.g. layers_per_block): refuse rather than silently ignore weights. */
    for (size_t i = 0; i < zi_st_count(st); i++) {
        const zi_st_tensor *t = zi_st_at(st, i);
        const char *name = t->name;
        if (strncmp(name, "model.", 6) == 0)
            name += 6;
        if (strncmp(name, "decoder.", 8) != 0)
            continue;
        size_t j = 0;
        while (j < v->n_table && strcmp(v->table[j].name, name) != 0)
            j++;
        if (j == v->n_table) {
            rc = zi_errorf(ZI_EFORMAT,
                           "vae decoder: file %s: tensor %s: not expected by the vae config",
                           t->file, t->name);
            goto err;
        }
    }
    v->mem.weights = zi_vae_weight_bytes(v);
    *out = v;
    return ZI_OK;
err:
    zi_vae_free(v);
    return rc;
}

int zi_vae_load(const char *vae_dir, const zi_vae_config *cfg, zi_backend *be, zi_vae **out)
{
    *out = NULL;
    zi_st *st = NULL;
    int rc = zi_st_open_dir(vae_dir, &st);
    if (rc != ZI_OK)
        return rc;
    rc = zi_vae_load_st(st, cfg, be, out);
    zi_st_close(st);
    return rc;
}

int zi_vae_load_random(const zi_vae_config *cfg, zi_backend *be, uint64_t seed, zi_vae **out)
{
    zi_vae *v = NULL;
    int rc = zi_vae_new(cfg, be, &v);
    if (rc != ZI_OK)
        return rc;
    size_t max_n = 0;
    for (size_t i = 0; i < v->n_table; i++) {
        size_t n = 1;
        for (int d = 0; d < v->table[i].ndim; d++)
            n *= (size_t)v->table[i].shape[d];
        max_n = n > max_n ? n : max_n;
    }
    float *buf = be->no_weight_data ? NULL : malloc(max_n * sizeof(float));
    if (!buf && !be->no_weight_data) {
        rc = zi_errorf(ZI_ENOMEM, "vae: out of memory for random weights");
        goto err;
    }
    for (size_t i = 0; i < v->n_table; i++) {
        const zi_vae_entry *e = &v->table[i];
        size_t n = 1, fan_in = 1;
        for (int d = 0; d < e->ndim; d++)
            n *= (size_t)e->shape[d];
        for (int d = 1; d < e->ndim; d++)
            fan_in *= (size_t)e->shape[d];
        if (buf) {
            zi_randn_cuda(buf, n, seed + 0x9E3779B97F4A7C15ull * (i + 1));
            /* Weights N(0, 1/fan_in) keep activations O(1); biases small; GroupNorm
             * scales around 1 ("norm" weights are the only 1-d ".weight" tensors). */
            int is_norm_w = e->ndim == 1 && strstr(e->name, ".weight") != NULL;
            float scale = e->ndim > 1 ? 1.0f / sqrtf((float)fan_in) : 0.05f;
            float offset = is_norm_w ? 1.0f : 0.0f;
            for (size_t k = 0; k < n; k++)
                buf[k] = buf[k] * scale + offset;
        }
        rc = be->upload_weight(be, e->dst, buf, ZI_F32, e->ndim, e->shape);
        if (rc != ZI_OK)
            goto err;
    }
    free(buf);
    v->mem.weights = zi_vae_weight_bytes(v);
    *out = v;
    return ZI_OK;
err:
    free(buf);
    zi_vae_free(v);
    return rc;
}

int zi_vae_scale(const zi_vae_config *cfg)
{
    if (cfg->n_blocks < 1 || cfg->n_blocks > ZI_VAE_MAX_BLOCKS)
        return 0;
    return 1 << (cfg->n_blocks - 1);
}

void zi_vae_denormalize(zi_vae *v, zi_tensor *z, int lh, int lw)
{
    /* diffusers: latents / scaling_factor + shift_factor. Multiplying by the reciprocal
     * differs from the division by at most an ulp. */
    size_t n = (size_t)v->cfg.latent_channels * (size_t)lh * (size_t)lw;
    v->be->affine(v->be, z, z, 1.0f / v->cfg.scaling_factor, v->cfg.shift_factor, n);
}

/* ---- forward ---- */

/* Allocates an activation [C, h, w] and counts it. */
static int zi_vae_alloc(zi_vae *v, zi_tensor *t, int C, int h, int w)
{
    int rc = v->be->alloc(v->be, t, 3, (int64_t[]){C, h, w});
    if (rc != ZI_OK)
        return zi_error_prefix(rc, "vae decoder: activation [%d, %d, %d]", C, h, w);
    v->live += zi_tensor_nbytes(t);
    if (v->live > v->peak)
        v->peak = v->live;
    return ZI_OK;
}

static void zi_vae_release(zi_vae *v, zi_tensor *t)
{
    if (!t->data)
        return;
    v->live -= zi_tensor_nbytes(t);
    v->be->free(v->be, t);
}

#define ZI_VAE_ALLOC(t, C, h, w)                                                                   \
    do {                                                                                           \
        rc = zi_vae_alloc(v, (t), (C), (h), (w));                                                  \
        if (rc != ZI_OK)                                                                           \
            goto out;                                                                              \
    } while (0)

/*
 * ResnetBlock2D. *x [cin, h, w] is consumed; on success it is replaced by the output
 * [cout, h, w], on error it is released.
 */
static int zi_vae_resnet_fwd(zi_vae *v, zi_tensor *x, const zi_vae_resnet *r, int h, int w)
{
    zi_backend *be = v->be;
    const int G = v->cfg.norm_groups, HW = h * w;
    int rc = ZI_OK;
    zi_tensor s = {0}, a = {0}, b = {0};
    if (r->cin != r->cout) {
        /* shortcut first, so GN(x) can overwrite x: peak cin + 2 cout */
        ZI_VAE_ALLOC(&s, r->cout, h, w); /* [o, h, w] */
        be->conv2d(be, &s, x, &r->short_w, &r->short_b, r->cin, r->cout, h, w, 1);
        be->groupnorm(be, x, x, &r->norm1_w, &r->norm1_b, r->cin, HW, G, ZI_VAE_EPS, 1);
        ZI_VAE_ALLOC(&a, r->cout, h, w);
        be->conv2d(be, &a, x, &r->conv1_w, &r->conv1_b, r->cin, r->cout, h, w, 3);
        zi_vae_release(v, x);
        be->groupnorm(be, &a, &a, &r->norm2_w, &r->norm2_b, r->cout, HW, G, ZI_VAE_EPS, 1);
        ZI_VAE_ALLOC(&b, r->cout, h, w);
        be->conv2d(be, &b, &a, &r->conv2_w, &r->conv2_b, r->cout, r->cout, h, w, 3);
        zi_vae_release(v, &a);
        be->gated_add(be, &s, NULL, &b, r->cout, HW); /* s += h */
        zi_vae_release(v, &b);
        *x = s;
        s = (zi_tensor){0};
    } else {
        /* identity shortcut: x must survive; GN(x)'s buffer is reused for conv2 */
        ZI_VAE_ALLOC(&a, r->cin, h, w);
        be->groupnorm(be, &a, x, &r->norm1_w, &r->norm1_b, r->cin, HW, G, ZI_VAE_EPS, 1);
        ZI_VAE_ALLOC(&b, r->cout, h, w);
        be->conv2d(be, &b, &a, &r->conv1_w, &r->conv1_b, r->cin, r->cout, h, w, 3);
        be->groupnorm(be, &b, &b, &r->norm2_w, &r->norm2_b, r->cout, HW, G, ZI_VAE_EPS, 1);
        be->conv2d(be, &a, &b, &r->conv2_w, &r->conv2_b, r->cout, r->cout, h, w, 3);
        zi_vae_release(v, &b);
        be->gated_add(be, x, NULL, &a, r->cout, HW); /* x += h */
        zi_vae_release(v, &a);
    }
out:
    if (rc != ZI_OK)
        zi_vae_release(v, x);
    zi_vae_release(v, &s);
    zi_vae_release(v, &a);
    zi_vae_release(v, &b);
    return rc;
}

/* Mid-block attention, in place on *x [C, h, w] (released on error). */
static int zi_vae_attn_fwd(zi_vae *v, zi_tensor *x, const zi_vae_attn *at, int C, int h, int w)
{
    zi_backend *be = v->be;
    const int N = h * w;
    int rc = ZI_OK;
    zi_tensor g = {0}, t = {0}, q = {0}, k = {0}, vv = {0}, o = {0}, p = {0};
    ZI_VAE_ALLOC(&g, C, h, w); /* GN(x) [C, N] */
    be->groupnorm(be, &g, x, &at->gn_w, &at->gn_b, C, N, v->cfg.norm_groups, ZI_VAE_EPS, 0);
    ZI_VAE_ALLOC(&t, N, C, 1); /* GN(x)^T [N, C]: pixels are the tokens */
    be->transpose(be, &t, &g, C, N);
    zi_vae_release(v, &g);
    ZI_VAE_ALLOC(&q, N, C, 1);
    ZI_VAE_ALLOC(&k, N, C, 1);
    ZI_VAE_ALLOC(&vv, N, C, 1);
    be->linear(be, &q, &t, &at->q_w, &at->q_b, N, C, C);
    be->linear(be, &k, &t, &at->k_w, &at->k_b, N, C, C);
    be->linear(be, &vv, &t, &at->v_w, &at->v_b, N, C, C);
    zi_vae_release(v, &t);
    ZI_VAE_ALLOC(&o, N, C, 1);
    /* one head of dim C (diffusers: heads = C / attention_head_dim = 1) */
    be->attention(be, &o, &q, &k, &vv, N, N, 1, 1, C, 1.0f / sqrtf((float)C), 0);
    zi_vae_release(v, &q);
    zi_vae_release(v, &k);
    zi_vae_release(v, &vv);
    ZI_VAE_ALLOC(&p, N, C, 1);
    be->linear(be, &p, &o, &at->o_w, &at->o_b, N, C, C); /* to_out.0 */
    zi_vae_release(v, &o);
    ZI_VAE_ALLOC(&g, C, h, w);
    be->transpose(be, &g, &p, N, C); /* back to [C, N] */
    zi_vae_release(v, &p);
    be->gated_add(be, x, NULL, &g, C, N); /* residual; rescale_output_factor 1 */
out:
    if (rc != ZI_OK)
        zi_vae_release(v, x);
    zi_vae_release(v, &g);
    zi_vae_release(v, &t);
    zi_vae_release(v, &q);
    zi_vae_release(v, &k);
    zi_vae_release(v, &vv);
    zi_vae_release(v, &o);
    zi_vae_release(v, &p);
    return rc;
}

/* Upsample2D: *x [C, h, w] -> [C, 2h, 2w] (nearest x2, then 3x3 conv). */
static int zi_vae_upsample_fwd(zi_vae *v, zi_tensor *x, const zi_vae_up *u, int h, int w)
{
    zi_backend *be = v->be;
    int rc = ZI_OK;
    zi_tensor a = {0}, b = {0};
    ZI_VAE_ALLOC(&a, u->cout, 2 * h, 2 * w);
    be->upsample2x(be, &a, x, u->cout, h, w);
    zi_vae_release(v, x);
    ZI_VAE_ALLOC(&b, u->cout, 2 * h, 2 * w);
    be->conv2d(be, &b, &a, &u->up_w, &u->up_b, u->cout, u->cout, 2 * h, 2 * w, 3);
    *x = b;
    b = (zi_tensor){0};
out:
    if (rc != ZI_OK)
        zi_vae_release(v, x);
    zi_vae_release(v, &a);
    zi_vae_release(v, &b);
    return rc;
}

/* Runs the tap on a stage output after checking the backend. */
static int zi_vae_stage(zi_vae *v, zi_tensor *x, const char *name, int C, int h, int w,
                        zi_vae_tap_fn tap, void *ud)
{
    int rc = zi_backend_check(v->be);
    if (rc != ZI_OK)
        return zi_error_prefix(rc, "vae decoder: %s", name);
    if (tap) {
        rc = tap(ud, name, x, C, h, w);
        if (rc != ZI_OK)
            return rc;
    }
    return ZI_OK;
}

int zi_vae_decode(zi_vae *v, const zi_tensor *z, int lh, int lw, zi_tensor *img, zi_vae_tap_fn tap,
                  void *ud)
{
    memset(img, 0, sizeof *img);
    zi_backend *be = v->be;
    const zi_vae_config *c = &v->cfg;
    const int B = c->n_blocks, G = c->norm_groups;
    int rc = zi_backend_check(be);
    if (rc != ZI_OK)
        return rc;
    if (lh <= 0 || lw <= 0 || (int64_t)lh * lw * zi_vae_scale(c) * zi_vae_scale(c) > INT32_MAX)
        return zi_errorf(ZI_EINVAL, "vae decode: bad latent size %dx%d", lh, lw);
    if (!z || zi_tensor_numel(z) < (int64_t)c->latent_channels * lh * lw)
        return zi_errorf(ZI_EINVAL, "vae decode: latents hold fewer than %d x %d x %d numbers",
                         c->latent_channels, lh, lw);
    v->live = 0;
    v->peak = 0;
    zi_tensor x = {0}, y = {0}, q = {0}; /* q: post_quant_conv's output */
    int h = lh, w = lw, C = v->up[0].cin;
    char name[32];

    /* AutoencoderKL._decode: post_quant_conv (1x1), when there is one, before the decoder */
    const zi_tensor *in = z;
    if (c->post_quant_conv) {
        ZI_VAE_ALLOC(&q, c->latent_channels, h, w);
        be->conv2d(be, &q, z, &v->pq_w, &v->pq_b, c->latent_channels, c->latent_channels, h, w, 1);
        in = &q;
    }
    ZI_VAE_ALLOC(&x, C, h, w);
    be->conv2d(be, &x, in, &v->conv_in_w, &v->conv_in_b, c->latent_channels, C, h, w, 3);
    zi_vae_release(v, &q);
    if ((rc = zi_vae_stage(v, &x, "conv_in", C, h, w, tap, ud)) != ZI_OK)
        goto out;

    if ((rc = zi_vae_resnet_fwd(v, &x, &v->mid_res[0], h, w)) != ZI_OK)
        goto out;
    if (c->mid_attention && (rc = zi_vae_attn_fwd(v, &x, &v->attn, C, h, w)) != ZI_OK)
        goto out;
    if ((rc = zi_vae_resnet_fwd(v, &x, &v->mid_res[1], h, w)) != ZI_OK)
        goto out;
    if ((rc = zi_vae_stage(v, &x, "mid_block", C, h, w, tap, ud)) != ZI_OK)
        goto out;

    for (int i = 0; i < B; i++) {
        const zi_vae_up *u = &v->up[i];
        for (int j = 0; j < v->n_res; j++)
            if ((rc = zi_vae_resnet_fwd(v, &x, &u->res[j], h, w)) != ZI_OK)
                goto out;
        C = u->cout;
        if (u->has_up) {
            if ((rc = zi_vae_upsample_fwd(v, &x, u, h, w)) != ZI_OK)
                goto out;
            h *= 2;
            w *= 2;
        }
        snprintf(name, sizeof name, "up_blocks.%d", i);
        if ((rc = zi_vae_stage(v, &x, name, C, h, w, tap, ud)) != ZI_OK)
            goto out;
    }

    if (tap) {
        /* the golden "conv_norm_out" is the GroupNorm output before SiLU */
        be->groupnorm(be, &x, &x, &v->norm_out_w, &v->norm_out_b, C, h * w, G, ZI_VAE_EPS, 0);
        if ((rc = zi_vae_stage(v, &x, "conv_norm_out", C, h, w, tap, ud)) != ZI_OK)
            goto out;
        ZI_VAE_ALLOC(&y, C, h, w);
        be->silu(be, &y, &x, (size_t)C * h * w);
        zi_vae_release(v, &x);
        x = y;
        y = (zi_tensor){0};
    } else {
        be->groupnorm(be, &x, &x, &v->norm_out_w, &v->norm_out_b, C, h * w, G, ZI_VAE_EPS, 1);
    }
    ZI_VAE_ALLOC(&y, c->out_channels, h, w);
    be->conv2d(be, &y, &x, &v->conv_out_w, &v->conv_out_b, C, c->out_channels, h, w, 3);
    zi_vae_release(v, &x);
    if ((rc = zi_vae_stage(v, &y, "conv_out", c->out_channels, h, w, tap, ud)) != ZI_OK)
        goto out;
    /* the output leaves the decoder's accounting: the caller owns it */
    v->live -= zi_tensor_nbytes(&y);
    *img = y;
    y = (zi_tensor){0};
out:
    zi_vae_release(v, &q);
    zi_vae_release(v, &x);
    zi_vae_release(v, &y);
    v->mem.act_peak = v->peak;
    zi_mem_stats ms;
    memset(&ms, 0, sizeof ms);
    be->mem_stats(be, &ms);
    v->mem.backend_peak = ms.peak;
    return rc;
}

int zi_vae_decode_rgb8(zi_vae *v, const zi_tensor *latents, int lh, int lw, uint8_t *rgb)
{
    zi_backend *be = v->be;
    const zi_vae_config *c = &v->cfg;
    if (c->out_channels != 3)
        return zi_errorf(ZI_EINVAL, "vae decode: %d output channels, RGB needs 3", c->out_channels);
    if (lh <= 0 || lw <= 0 || !latents ||
        zi_tensor_numel(latents) < (int64_t)c->latent_channels * lh * lw)
        return zi_errorf(ZI_EINVAL, "vae decode: latents hold fewer than %d x %d x %d numbers",
                         c->latent_channels, lh, lw);
    zi_tensor z = {0}, img = {0};
    int rc = be->alloc(be, &z, 3, (int64_t[]){c->latent_channels, lh, lw});
    if (rc != ZI_OK)
        return rc;
    /* the sampler's F32 latents -> the decoder dtype, then de-normalised in place */
    be->copy(be, &z, latents, (size_t)c->latent_channels * lh * lw);
    zi_vae_denormalize(v, &z, lh, lw);
    rc = zi_vae_decode(v, &z, lh, lw, &img, NULL, NULL);
    be->free(be, &z);
    if (rc == ZI_OK) {
        int s = zi_vae_scale(c);
        rc = be->to_rgb8(be, rgb, &img, lh * s, lw * s);
        if (rc == ZI_OK)
            rc = zi_backend_check(be);
    }
    be->free(be, &img);
    return rc;
}

void zi_vae_last_mem(const zi_vae *v, zi_vae_mem *out)
{
    *out = v->mem;
}

/* ---- the memory plan on sizes alone (mirrors the forward above) ---- */

typedef struct zi_vae_plan {
    uint64_t live, peak, es;
} zi_vae_plan;

static void zi_plan_alloc(zi_vae_plan *p, uint64_t C, uint64_t hw)
{
    p->live += C * hw * p->es;
    if (p->live > p->peak)
        p->peak = p->live;
}

static void zi_plan_free(zi_vae_plan *p, uint64_t C, uint64_t hw)
{
    p->live -= C * hw * p->es;
}

/* x [ci, hw] is live on entry; [co, hw] on exit. */
static void zi_plan_resnet(zi_vae_plan *p, uint64_t ci, uint64_t co, uint64_t hw)
{
    if (ci != co) {
        zi_plan_alloc(p, co, hw); /* shortcut */
        zi_plan_alloc(p, co, hw); /* conv1 */
        zi_plan_free(p, ci, hw);  /* x */
        zi_plan_alloc(p, co, hw); /* conv2 */
        zi_plan_free(p, co, hw);  /* conv1 */
        zi_plan_free(p, co, hw);  /* conv2 after the add */
    } else {
        zi_plan_alloc(p, ci, hw); /* GN(x), later conv2 */
        zi_plan_alloc(p, co, hw); /* conv1 */
        zi_plan_free(p, co, hw);
        zi_plan_free(p, ci, hw);
    }
}

static void zi_plan_attn(zi_vae_plan *p, uint64_t C, uint64_t N)
{
    zi_plan_alloc(p, C, N); /* GN(x) */
    zi_plan_alloc(p, C, N); /* its transpose */
    zi_plan_free(p, C, N);
    for (int i = 0; i < 3; i++)
        zi_plan_alloc(p, C, N); /* q, k, v */
    zi_plan_free(p, C, N);      /* the transpose */
    zi_plan_alloc(p, C, N);     /* attention out */
    for (int i = 0; i < 3; i++)
        zi_plan_free(p, C, N);
    zi_plan_alloc(p, C, N); /* to_out */
    zi_plan_free(p, C, N);
    zi_plan_alloc(p, C, N); /* transposed back */
    zi_plan_free(p, C, N);
    zi_plan_free(p, C, N);
}

uint64_t zi_vae_peak_estimate(const zi_vae_config *cfg, int lh, int lw, size_t elem_size)
{
    if (cfg->n_blocks < 1 || cfg->n_blocks > ZI_VAE_MAX_BLOCKS || lh <= 0 || lw <= 0)
        return 0;
    zi_vae_plan p = {0, 0, elem_size};
    const int B = cfg->n_blocks;
    uint64_t hw = (uint64_t)lh * (uint64_t)lw;
    uint64_t C = (uint64_t)cfg->block_out[B - 1];
    if (cfg->post_quant_conv)
        zi_plan_alloc(&p, (uint64_t)cfg->latent_channels, hw);
    zi_plan_alloc(&p, C, hw); /* conv_in */
    if (cfg->post_quant_conv)
        zi_plan_free(&p, (uint64_t)cfg->latent_channels, hw);
    zi_plan_resnet(&p, C, C, hw);
    if (cfg->mid_attention)
        zi_plan_attn(&p, C, hw);
    zi_plan_resnet(&p, C, C, hw);
    for (int i = 0; i < B; i++) {
        uint64_t co = (uint64_t)cfg->block_out[B - 1 - i];
        for (int j = 0; j < cfg->layers_per_block + 1; j++) {
            zi_plan_resnet(&p, C, co, hw);
            C = co;
        }
        if (i < B - 1) {
            zi_plan_alloc(&p, C, hw * 4); /* nearest x2 */
            zi_plan_free(&p, C, hw);
            zi_plan_alloc(&p, C, hw * 4); /* conv */
            zi_plan_free(&p, C, hw * 4);
            hw *= 4;
        }
    }
    zi_plan_alloc(&p, (uint64_t)cfg->out_channels, hw); /* conv_out next to x */
    return p.peak;
}
