/*
 * dit.c - Z-Image DiT forward on the backend interface (see dit.h for the contract).
 *
 * Dimension letters: D model dim, H heads, hd head dim (= D / H), F feed-forward hidden,
 * A adaLN dim (min(D, 256)), P patch features (patch * patch * C), S sequence rows,
 * N image tokens, Np image rows padded to ZI_DIT_SEQ_MULTI, L / Lp caption tokens / rows.
 *
 * Weights live in one struct, named exactly as the checkpoint names them (one typed table,
 * dit_table(), checked at load). Activations are backend tensors; the host only builds
 * the small tables (timestep sinusoid, RoPE cos/sin) and reorders the latent into
 * patches (and back), which is a permutation, not arithmetic.
 *
 * Numeric policy follows diffusers: block adaLN has no SiLU on its input, the final
 * layer's has one; scale = 1 + Linear(...), gate = tanh(...); q/k RMSNorm eps is 1e-5
 * (fixed in diffusers' Attention), the sandwich norms and cap_embedder use norm_eps,
 * norm_final is LayerNorm without affine, eps 1e-6. The sign flip of the output is the
 * pipeline's (scheduler.c), not done here.
 */
#include "dit.h"
#include "zi_err.h"
#include "zi_vec.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZI_DIT_QK_EPS 1e-5f
#define ZI_DIT_FINAL_EPS 1e-6f
#define ZI_DIT_MAX_PERIOD 10000.0
#define ZI_DIT_NAME_MAX 128

typedef struct zi_dit_block {
    zi_tensor to_q, to_k, to_v, to_out;                     /* [D, D] */
    zi_tensor norm_q, norm_k;                               /* [hd] (qk_norm only) */
    zi_tensor attn_norm1, attn_norm2, ffn_norm1, ffn_norm2; /* [D] */
    zi_tensor w1, w3;                                       /* [F, D] gate, up */
    zi_tensor w2;                                           /* [D, F] down */
    zi_tensor ada_w;                                        /* [4D, A] modulated only */
    zi_tensor ada_b;                                        /* [4D] */
    /* [4D] per-time activations: 1 + scale_msa, tanh(gate_msa), 1 + scale_mlp,
     * tanh(gate_mlp) */
    zi_tensor mod;
    int modulated;
} zi_dit_block;

/* Scratch for one block pass over up to `rows` rows. */
typedef struct zi_dit_work {
    int64_t rows;
    zi_tensor h, q, k, v, a, o; /* [rows, D] */
    zi_tensor g, u;             /* [rows, F] */
} zi_dit_work;

struct zi_dit {
    zi_dit_config cfg;
    zi_backend *be;
    int D, H, hd, F, A, P;

    /* ---- weights (checkpoint names in dit_table) ---- */
    zi_tensor t_w0, t_b0;           /* t_embedder.mlp.0: [T_MID, FREQ], [T_MID] */
    zi_tensor t_w2, t_b2;           /* t_embedder.mlp.2: [A, T_MID], [A] */
    zi_tensor x_w, x_b;             /* all_x_embedder.p-f: [D, P], [D] */
    zi_tensor cap_norm;             /* cap_embedder.0: [cap_feat_dim] */
    zi_tensor cap_w, cap_b;         /* cap_embedder.1: [D, cap_feat_dim], [D] */
    zi_tensor x_pad, cap_pad;       /* [1, D] */
    zi_tensor fin_ada_w, fin_ada_b; /* all_final_layer.p-f.adaLN_modulation.1: [D, A], [D] */
    zi_tensor fin_w, fin_b;         /* all_final_layer.p-f.linear: [P, D], [P] */
    zi_dit_block *noise;            /* [n_refiner_layers], modulated */
    zi_dit_block *context;          /* [n_refiner_layers], unmodulated */
    zi_dit_block *layers;           /* [n_layers], modulated */
    uint64_t weight_bytes;

    /* ---- per-time state ---- */
    int time_valid;
    float time_t;
    zi_tensor t_freq;    /* [1, FREQ] */
    zi_tensor t_mid;     /* [1, T_MID] */
    zi_tensor temb;      /* [1, A] = adaln input */
    zi_tensor temb_act;  /* [1, A] SiLU(temb) for the final layer */
    zi_tensor fin_scale; /* [1, D] = 1 + Linear(SiLU(temb)) */

    /* ---- RoPE: omega per pair (float64), axis of each pair ---- */
    double *omega;  /* [hd/2] */
    int *pair_axis; /* [hd/2] */
    /* unified-sequence tables cached per (Ht, Wt, Lp) */
    int rope_ht, rope_wt, rope_lp;
    zi_tensor rope_cos, rope_sin; /* [Np + Lp, hd/2] F32 */

    zi_dit_work w;
    zi_dit_tap_fn tap;
    void *tap_ud;
};

struct zi_dit_caption {
    zi_dit *d;
    int L, Lp;
    zi_tensor feats;    /* [Lp, D] after the context refiner */
    zi_tensor cos, sin; /* [Lp, hd/2] F32 */
};

/* ------------------------------------------------------------------------------------ */
/* typed tensor table                                                                   */

typedef struct zi_dit_entry {
    char name[ZI_DIT_NAME_MAX];
    zi_tensor *dst;
    int ndim;
    int64_t shape[2];
} zi_dit_entry;

typedef struct zi_dit_table {
    zi_dit_entry *e;
    size_t n, cap;
} zi_dit_table;

static int table_add(zi_dit_table *t, zi_tensor *dst, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Adds one row: 1-D [d0] when d1 == 0, else 2-D [d0, d1]. */
static int table_add(zi_dit_table *t, zi_tensor *dst, int64_t d0, int64_t d1, const char *fmt, ...)
{
    zi_dit_entry *ne = zi_grow(t->e, &t->cap, t->n + 1, sizeof *ne, 128);
    if (!ne)
        return zi_errorf(ZI_ENOMEM, "transformer: out of memory for the tensor table");
    t->e = ne;
    zi_dit_entry *e = &t->e[t->n];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof e->name)
        return zi_errorf(ZI_EINVAL, "transformer: tensor name too long");
    e->dst = dst;
    e->ndim = d1 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1;
    t->n++;
    return ZI_OK;
}

static int table_block(zi_dit_table *t, const zi_dit *d, zi_dit_block *b, const char *prefix)
{
    const int64_t D = d->D, F = d->F, hd = d->hd, A = d->A;
    int rc = ZI_OK;
    rc = rc ? rc : table_add(t, &b->to_q, D, D, "%s.attention.to_q.weight", prefix);
    rc = rc ? rc : table_add(t, &b->to_k, D, D, "%s.attention.to_k.weight", prefix);
    rc = rc ? rc : table_add(t, &b->to_v, D, D, "%s.attention.to_v.weight", prefix);
    rc = rc ? rc : table_add(t, &b->to_out, D, D, "%s.attention.to_out.0.weight", prefix);
    if (d->cfg.qk_norm) {
        rc = rc ? rc : table_add(t, &b->norm_q, hd, 0, "%s.attention.norm_q.weight", prefix);
        rc = rc ? rc : table_add(t, &b->norm_k, hd, 0, "%s.attention.norm_k.weight", prefix);
    }
    rc = rc ? rc : table_add(t, &b->attn_norm1, D, 0, "%s.attention_norm1.weight", prefix);
    rc = rc ? rc : table_add(t, &b->attn_norm2, D, 0, "%s.attention_norm2.weight", prefix);
    rc = rc ? rc : table_add(t, &b->ffn_norm1, D, 0, "%s.ffn_norm1.weight", prefix);
    rc = rc ? rc : table_add(t, &b->ffn_norm2, D, 0, "%s.ffn_norm2.weight", prefix);
    rc = rc ? rc : table_add(t, &b->w1, F, D, "%s.feed_forward.w1.weight", prefix);
    rc = rc ? rc : table_add(t, &b->w2, D, F, "%s.feed_forward.w2.weight", prefix);
    rc = rc ? rc : table_add(t, &b->w3, F, D, "%s.feed_forward.w3.weight", prefix);
    if (b->modulated) {
        rc = rc ? rc : table_add(t, &b->ada_w, 4 * D, A, "%s.adaLN_modulation.0.weight", prefix);
        rc = rc ? rc : table_add(t, &b->ada_b, 4 * D, 0, "%s.adaLN_modulation.0.bias", prefix);
    }
    return rc;
}

/* Every tensor of the model with its expected shape, in checkpoint names. */
static int dit_table(zi_dit *d, zi_dit_table *t)
{
    const zi_dit_config *c = &d->cfg;
    const int64_t D = d->D, A = d->A, P = d->P;
    char key[32];
    snprintf(key, sizeof key, "%d-%d", c->patch, c->f_patch);
    int rc = ZI_OK;
    rc = rc ? rc : table_add(t, &d->t_w0, ZI_DIT_T_MID, ZI_DIT_FREQ_DIM, "t_embedder.mlp.0.weight");
    rc = rc ? rc : table_add(t, &d->t_b0, ZI_DIT_T_MID, 0, "t_embedder.mlp.0.bias");
    rc = rc ? rc : table_add(t, &d->t_w2, A, ZI_DIT_T_MID, "t_embedder.mlp.2.weight");
    rc = rc ? rc : table_add(t, &d->t_b2, A, 0, "t_embedder.mlp.2.bias");
    rc = rc ? rc : table_add(t, &d->x_w, D, P, "all_x_embedder.%s.weight", key);
    rc = rc ? rc : table_add(t, &d->x_b, D, 0, "all_x_embedder.%s.bias", key);
    rc = rc ? rc : table_add(t, &d->cap_norm, c->cap_feat_dim, 0, "cap_embedder.0.weight");
    rc = rc ? rc : table_add(t, &d->cap_w, D, c->cap_feat_dim, "cap_embedder.1.weight");
    rc = rc ? rc : table_add(t, &d->cap_b, D, 0, "cap_embedder.1.bias");
    rc = rc ? rc : table_add(t, &d->x_pad, 1, D, "x_pad_token");
    rc = rc ? rc : table_add(t, &d->cap_pad, 1, D, "cap_pad_token");
    rc =
        rc ? rc
           : table_add(t, &d->fin_ada_w, D, A, "all_final_layer.%s.adaLN_modulation.1.weight", key);
    rc = rc ? rc
            : table_add(t, &d->fin_ada_b, D, 0, "all_final_layer.%s.adaLN_modulation.1.bias", key);
    rc = rc ? rc : table_add(t, &d->fin_w, P, D, "all_final_layer.%s.linear.weight", key);
    rc = rc ? rc : table_add(t, &d->fin_b, P, 0, "all_final_layer.%s.linear.bias", key);
    char prefix[64];
    for (int i = 0; rc == ZI_OK && i < c->n_refiner_layers; i++) {
        snprintf(prefix, sizeof prefix, "noise_refiner.%d", i);
        rc = table_block(t, d, &d->noise[i], prefix);
        snprintf(prefix, sizeof prefix, "context_refiner.%d", i);
        rc = rc ? rc : table_block(t, d, &d->context[i], prefix);
    }
    for (int i = 0; rc == ZI_OK && i < c->n_layers; i++) {
        snprintf(prefix, sizeof prefix, "layers.%d", i);
        rc = table_block(t, d, &d->layers[i], prefix);
    }
    return rc;
}

static const char *strip_model_prefix(const char *name)
{
    return strncmp(name, "model.", 6) == 0 ? name + 6 : name;
}

/* 1 when `name` is a tensor of all_x_embedder / all_final_layer for one of the config's
 * patch pairs other than the one that runs (all_x_embedder.1-1.weight, ...). */
static int other_patch_pair(const zi_dit_config *c, const char *name)
{
    static const char *const mods[] = {"all_x_embedder.", "all_final_layer."};
    for (size_t m = 0; m < sizeof mods / sizeof mods[0]; m++) {
        size_t n = strlen(mods[m]);
        if (strncmp(name, mods[m], n) != 0)
            continue;
        for (int i = 0; i < c->n_pairs; i++) {
            char key[32];
            int k = snprintf(key, sizeof key, "%d-%d.", c->pairs[i][0], c->pairs[i][1]);
            if ((c->pairs[i][0] != c->patch || c->pairs[i][1] != c->f_patch) &&
                strncmp(name + n, key, (size_t)k) == 0)
                return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* construction                                                                         */

static int dit_check_config(const zi_dit_config *c)
{
    if (c->dim <= 0 || c->n_heads <= 0 || c->dim % c->n_heads != 0)
        return zi_errorf(ZI_EINVAL, "transformer config: dim %d is not a multiple of n_heads %d",
                         c->dim, c->n_heads);
    int hd = c->dim / c->n_heads;
    if (c->head_dim && c->head_dim != hd)
        return zi_errorf(ZI_EINVAL, "transformer config: head_dim %d != dim / n_heads = %d",
                         c->head_dim, hd);
    int sum = 0;
    for (int a = 0; a < 3; a++) {
        if (c->axes_dims[a] <= 0 || c->axes_dims[a] % 2 || c->axes_lens[a] <= 0)
            return zi_errorf(ZI_EINVAL,
                             "transformer config: bad axes_dims[%d] = %d / axes_lens "
                             "%d",
                             a, c->axes_dims[a], c->axes_lens[a]);
        sum += c->axes_dims[a];
    }
    if (sum != hd)
        return zi_errorf(ZI_EINVAL, "transformer config: sum(axes_dims) = %d != head dim %d", sum,
                         hd);
    if (c->patch <= 0 || c->f_patch != 1)
        return zi_errorf(ZI_EINVAL,
                         "transformer config: patch %d / f_patch %d (only f_patch 1 is supported)",
                         c->patch, c->f_patch);
    if (c->in_channels <= 0 || c->cap_feat_dim <= 0 || c->ffn_hidden <= 0 || c->adaln_dim <= 0 ||
        c->n_layers < 0 || c->n_refiner_layers < 0 || !(c->rope_theta > 0) || !(c->norm_eps > 0))
        return zi_errorf(ZI_EINVAL, "transformer config: a size or eps is not positive");
    return ZI_OK;
}

/* Allocates the struct, blocks, per-time tensors and RoPE frequencies (no weights). */
static int dit_new(const zi_dit_config *cfg, zi_backend *be, zi_dit **out)
{
    *out = NULL;
    int rc = dit_check_config(cfg);
    if (rc)
        return rc;
    zi_dit *d = calloc(1, sizeof *d);
    if (!d)
        return zi_errorf(ZI_ENOMEM, "transformer: out of memory");
    d->cfg = *cfg;
    d->be = be;
    d->D = cfg->dim;
    d->H = cfg->n_heads;
    d->hd = cfg->dim / cfg->n_heads;
    d->F = cfg->ffn_hidden;
    d->A = cfg->adaln_dim;
    d->P = cfg->patch * cfg->patch * cfg->f_patch * cfg->in_channels;
    d->noise = calloc((size_t)cfg->n_refiner_layers + 1, sizeof *d->noise);
    d->context = calloc((size_t)cfg->n_refiner_layers + 1, sizeof *d->context);
    d->layers = calloc((size_t)cfg->n_layers + 1, sizeof *d->layers);
    d->omega = calloc((size_t)d->hd / 2, sizeof *d->omega);
    d->pair_axis = calloc((size_t)d->hd / 2, sizeof *d->pair_axis);
    if (!d->noise || !d->context || !d->layers || !d->omega || !d->pair_axis) {
        rc = zi_errorf(ZI_ENOMEM, "transformer: out of memory");
        goto err;
    }
    for (int i = 0; i < cfg->n_refiner_layers; i++)
        d->noise[i].modulated = 1;
    for (int i = 0; i < cfg->n_layers; i++)
        d->layers[i].modulated = 1;

    /* omega_{a,j} = 1 / theta^(2j / d_a) in float64, as diffusers' RopeEmbedder. */
    int m = 0;
    for (int a = 0; a < 3; a++)
        for (int j = 0; j < cfg->axes_dims[a] / 2; j++, m++) {
            d->omega[m] = 1.0 / pow(cfg->rope_theta, (double)(2 * j) / (double)cfg->axes_dims[a]);
            d->pair_axis[m] = a;
        }

    const int64_t s_freq[2] = {1, ZI_DIT_FREQ_DIM}, s_mid[2] = {1, ZI_DIT_T_MID};
    const int64_t s_a[2] = {1, d->A}, s_d[2] = {1, d->D}, s_mod[1] = {4 * (int64_t)d->D};
    rc = be->alloc(be, &d->t_freq, 2, s_freq);
    rc = rc ? rc : be->alloc(be, &d->t_mid, 2, s_mid);
    rc = rc ? rc : be->alloc(be, &d->temb, 2, s_a);
    rc = rc ? rc : be->alloc(be, &d->temb_act, 2, s_a);
    rc = rc ? rc : be->alloc(be, &d->fin_scale, 2, s_d);
    for (int i = 0; rc == ZI_OK && i < cfg->n_refiner_layers; i++)
        rc = be->alloc(be, &d->noise[i].mod, 1, s_mod);
    for (int i = 0; rc == ZI_OK && i < cfg->n_layers; i++)
        rc = be->alloc(be, &d->layers[i].mod, 1, s_mod);
    if (rc) {
        rc = zi_backend_check(be) ? zi_backend_check(be)
                                  : zi_errorf(ZI_ENOMEM, "transformer: cannot allocate state");
        goto err;
    }
    *out = d;
    return ZI_OK;
err:
    zi_dit_free(d);
    return rc;
}

static void dit_work_release(zi_dit *d)
{
    zi_backend *be = d->be;
    zi_tensor *ts[] = {&d->w.h, &d->w.q, &d->w.k, &d->w.v, &d->w.a, &d->w.o, &d->w.g, &d->w.u};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (ts[i]->owned)
            be->free(be, ts[i]);
    d->w.rows = 0;
}

static void free_owned(zi_backend *be, zi_tensor *t)
{
    if (t->owned)
        be->free(be, t);
}

static void dit_block_free(zi_backend *be, zi_dit_block *b)
{
    zi_tensor *ts[] = {&b->to_q,      &b->to_k,      &b->to_v,       &b->to_out,
                       &b->norm_q,    &b->norm_k,    &b->attn_norm1, &b->attn_norm2,
                       &b->ffn_norm1, &b->ffn_norm2, &b->w1,         &b->w2,
                       &b->w3,        &b->ada_w,     &b->ada_b,      &b->mod};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        free_owned(be, ts[i]);
}

void zi_dit_free(zi_dit *d)
{
    if (!d)
        return;
    zi_backend *be = d->be;
    zi_tensor *ts[] = {&d->t_w0,     &d->t_b0,      &d->t_w2,      &d->t_b2,     &d->x_w,
                       &d->x_b,      &d->cap_norm,  &d->cap_w,     &d->cap_b,    &d->x_pad,
                       &d->cap_pad,  &d->fin_ada_w, &d->fin_ada_b, &d->fin_w,    &d->fin_b,
                       &d->t_freq,   &d->t_mid,     &d->temb,      &d->temb_act, &d->fin_scale,
                       &d->rope_cos, &d->rope_sin};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        free_owned(be, ts[i]);
    for (int i = 0; d->noise && i < d->cfg.n_refiner_layers; i++)
        dit_block_free(be, &d->noise[i]);
    for (int i = 0; d->context && i < d->cfg.n_refiner_layers; i++)
        dit_block_free(be, &d->context[i]);
    for (int i = 0; d->layers && i < d->cfg.n_layers; i++)
        dit_block_free(be, &d->layers[i]);
    dit_work_release(d);
    free(d->noise);
    free(d->context);
    free(d->layers);
    free(d->omega);
    free(d->pair_axis);
    free(d);
}

int zi_dit_load_st(const zi_st *st, const zi_dit_config *cfg, zi_backend *be, zi_dit **out)
{
    *out = NULL;
    zi_dit *d = NULL;
    zi_dit_table tab = {0};
    int rc = dit_new(cfg, be, &d);
    if (rc)
        return rc;
    rc = dit_table(d, &tab);
    if (rc)
        goto err;
    for (size_t i = 0; i < tab.n; i++) {
        const zi_dit_entry *e = &tab.e[i];
        const zi_st_tensor *t = NULL;
        rc = zi_st_get(st, e->name, e->ndim, e->shape, &t);
        if (rc) {
            zi_error_prefix(rc, "transformer");
            goto err;
        }
        rc = be->upload_weight(be, e->dst, t->data, t->dtype, e->ndim, e->shape);
        if (zi_backend_check(be))
            rc = zi_backend_check(be);
        if (rc) {
            zi_error_prefix(rc, "transformer: tensor %s", e->name);
            goto err;
        }
        d->weight_bytes += (uint64_t)zi_tensor_nbytes(e->dst);
    }
    /* An extra tensor means the checkpoint is not the model the config describes. */
    for (size_t i = 0; i < zi_st_count(st); i++) {
        const char *name = strip_model_prefix(zi_st_at(st, i)->name);
        if (cfg->siglip_feat_dim > 0 && strncmp(name, "siglip_", 7) == 0)
            continue; /* Omni's image-conditioning modules: unused by text-to-image */
        if (other_patch_pair(cfg, name))
            continue; /* the config's other patch sizes: ZImagePipeline runs 2-1 only */
        size_t j = 0;
        while (j < tab.n && strcmp(tab.e[j].name, name) != 0)
            j++;
        if (j == tab.n) {
            rc = zi_errorf(ZI_EFORMAT,
                           "transformer: file %s: unexpected tensor %s (not in the model the "
                           "config describes)",
                           zi_st_at(st, i)->file, zi_st_at(st, i)->name);
            goto err;
        }
    }
    free(tab.e);
    *out = d;
    return ZI_OK;
err:
    free(tab.e);
    zi_dit_free(d);
    return rc;
}

int zi_dit_load(const char *transformer_dir, const zi_dit_config *cfg, zi_backend *be, zi_dit **out)
{
    zi_st *st = NULL;
    int rc = zi_st_open_dir(transformer_dir, &st);
    if (rc)
        return rc;
    rc = zi_dit_load_st(st, cfg, be, out);
    zi_st_close(st);
    return rc;
}

/* splitmix64: a small, fast generator for benchmark weights. */
static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int zi_dit_load_random(const zi_dit_config *cfg, zi_backend *be, uint64_t seed, zi_dit **out)
{
    *out = NULL;
    zi_dit *d = NULL;
    zi_dit_table tab = {0};
    float *buf = NULL;
    int rc = dit_new(cfg, be, &d);
    if (rc)
        return rc;
    rc = dit_table(d, &tab);
    if (rc)
        goto err;
    size_t maxn = 0;
    for (size_t i = 0; i < tab.n; i++) {
        size_t n = (size_t)(tab.e[i].shape[0] * (tab.e[i].ndim == 2 ? tab.e[i].shape[1] : 1));
        if (n > maxn)
            maxn = n;
    }
    buf = be->no_weight_data ? NULL : malloc(maxn * sizeof *buf);
    if (!buf && !be->no_weight_data) {
        rc = zi_errorf(ZI_ENOMEM, "transformer: out of memory for random weights");
        goto err;
    }
    for (size_t i = 0; i < tab.n; i++) {
        const zi_dit_entry *e = &tab.e[i];
        size_t n = (size_t)(e->shape[0] * (e->ndim == 2 ? e->shape[1] : 1));
        uint64_t s = seed ^ (0x51ED2701ull * (uint64_t)(i + 1));
        /* Linear weights: uniform with variance 1/fan_in; norm weights around 1; biases
         * and pad tokens small. Keeps activations finite through the real depth. */
        int is_bias = strstr(e->name, ".bias") != NULL;
        float lo, span;
        if (e->ndim == 2) {
            float a = sqrtf(3.0f / (float)e->shape[1]);
            lo = -a;
            span = 2 * a;
        } else if (is_bias) {
            lo = -0.02f;
            span = 0.04f;
        } else {
            lo = 0.9f;
            span = 0.2f;
        }
        for (size_t k = 0; buf && k < n; k += 2) {
            uint64_t r = splitmix64(&s);
            buf[k] = lo + span * (float)(r >> 40) * 0x1p-24f;
            if (k + 1 < n)
                buf[k + 1] = lo + span * (float)((r >> 8) & 0xFFFFFF) * 0x1p-24f;
        }
        rc = be->upload_weight(be, e->dst, buf, ZI_F32, e->ndim, e->shape);
        if (rc || zi_backend_check(be)) {
            rc = zi_backend_check(be) ? zi_backend_check(be) : rc;
            goto err;
        }
        d->weight_bytes += (uint64_t)zi_tensor_nbytes(e->dst);
    }
    free(buf);
    free(tab.e);
    *out = d;
    return ZI_OK;
err:
    free(buf);
    free(tab.e);
    zi_dit_free(d);
    return rc;
}

const zi_dit_config *zi_dit_get_config(const zi_dit *d)
{
    return &d->cfg;
}

uint64_t zi_dit_weight_bytes(const zi_dit *d)
{
    return d->weight_bytes;
}

void zi_dit_trim(zi_dit *d)
{
    dit_work_release(d);
    free_owned(d->be, &d->rope_cos);
    free_owned(d->be, &d->rope_sin);
}

void zi_dit_set_tap(zi_dit *d, zi_dit_tap_fn fn, void *ud)
{
    d->tap = fn;
    d->tap_ud = ud;
}

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */

static zi_tensor view2(const zi_tensor *t, int64_t off, int64_t r, int64_t c)
{
    const int64_t s[2] = {r, c};
    return zi_tensor_view(t, off, 2, s);
}

static zi_tensor view1(const zi_tensor *t, int64_t off, int64_t n)
{
    const int64_t s[1] = {n};
    return zi_tensor_view(t, off, 1, s);
}

static int dit_tap(zi_dit *d, const char *name, const zi_tensor *t, int rows, int cols)
{
    int rc = zi_backend_check(d->be);
    if (rc || !d->tap)
        return rc;
    rc = d->tap(d->tap_ud, name, t, rows, cols);
    if (rc)
        return zi_errorf(rc, "transformer: tap %s stopped the forward", name);
    return ZI_OK;
}

static int64_t round_up(int64_t n, int64_t m)
{
    return (n + m - 1) / m * m;
}

static int dit_work_reserve(zi_dit *d, int64_t rows)
{
    if (rows <= d->w.rows)
        return ZI_OK;
    dit_work_release(d);
    zi_backend *be = d->be;
    const int64_t sd[2] = {rows, d->D}, sf[2] = {rows, d->F};
    int rc = be->alloc(be, &d->w.h, 2, sd);
    rc = rc ? rc : be->alloc(be, &d->w.q, 2, sd);
    rc = rc ? rc : be->alloc(be, &d->w.k, 2, sd);
    rc = rc ? rc : be->alloc(be, &d->w.v, 2, sd);
    rc = rc ? rc : be->alloc(be, &d->w.a, 2, sd);
    rc = rc ? rc : be->alloc(be, &d->w.o, 2, sd);
    rc = rc ? rc : be->alloc(be, &d->w.g, 2, sf);
    rc = rc ? rc : be->alloc(be, &d->w.u, 2, sf);
    if (rc) {
        int brc = zi_backend_check(be);
        dit_work_release(d);
        return brc ? brc
                   : zi_errorf(ZI_ENOMEM, "transformer: cannot allocate workspace for %lld rows",
                               (long long)rows);
    }
    d->w.rows = rows;
    return ZI_OK;
}

/* Host RoPE tables for `n` tokens with position ids pos[n][3]: cos, sin [n, hd/2]. The
 * angle is p * omega in float64 rounded to fp32, then cos/sin in fp32 (diffusers). */
static void dit_rope_host(const zi_dit *d, const int32_t (*pos)[3], int64_t n, float *cs, float *sn)
{
    const int half = d->hd / 2;
    for (int64_t r = 0; r < n; r++)
        for (int m = 0; m < half; m++) {
            float ang = (float)((double)pos[r][d->pair_axis[m]] * d->omega[m]);
            cs[r * half + m] = cosf(ang);
            sn[r * half + m] = sinf(ang);
        }
}

/* Builds and uploads cos/sin [n, hd/2] F32 tensors for the given position ids. */
static int dit_rope_upload(zi_dit *d, const int32_t (*pos)[3], int64_t n, zi_tensor *cos_t,
                           zi_tensor *sin_t)
{
    zi_backend *be = d->be;
    const int64_t half = d->hd / 2;
    const int64_t s[2] = {n, half};
    float *cs = malloc((size_t)(n * half) * sizeof *cs);
    float *sn = malloc((size_t)(n * half) * sizeof *sn);
    int rc = ZI_OK;
    if (!cs || !sn) {
        rc = zi_errorf(ZI_ENOMEM, "transformer: out of memory for RoPE tables");
        goto out;
    }
    dit_rope_host(d, pos, n, cs, sn);
    rc = be->alloc_f32(be, cos_t, 2, s);
    rc = rc ? rc : be->alloc_f32(be, sin_t, 2, s);
    rc = rc ? rc : be->upload(be, cos_t, cs, (size_t)(n * half));
    rc = rc ? rc : be->upload(be, sin_t, sn, (size_t)(n * half));
    if (rc || zi_backend_check(be)) {
        rc = zi_backend_check(be) ? zi_backend_check(be) : rc;
        free_owned(be, cos_t);
        free_owned(be, sin_t);
    }
out:
    free(cs);
    free(sn);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* layers                                                                               */

/*
 * One transformer block, in place on x [S, D]. mod: NULL (context refiner) or the block's
 * [4D] per-time vector. cos/sin [S, hd/2].
 *   a = Attn(RMSNorm(x; attention_norm1) * (1 + scale_msa))
 *   x += tanh(gate_msa) * RMSNorm(a; attention_norm2)
 *   f = FFN(RMSNorm(x; ffn_norm1) * (1 + scale_mlp))
 *   x += tanh(gate_mlp) * RMSNorm(f; ffn_norm2)
 */
static void dit_block_forward(zi_dit *d, zi_tensor *x, const zi_dit_block *b, const zi_tensor *cos,
                              const zi_tensor *sin, int S)
{
    zi_backend *be = d->be;
    const int D = d->D, H = d->H, hd = d->hd, F = d->F;
    const float eps = d->cfg.norm_eps;
    zi_tensor h = view2(&d->w.h, 0, S, D); /* [S, D] */
    zi_tensor q = view2(&d->w.q, 0, S, D); /* [S, H, hd] */
    zi_tensor k = view2(&d->w.k, 0, S, D);
    zi_tensor v = view2(&d->w.v, 0, S, D);
    zi_tensor a = view2(&d->w.a, 0, S, D);
    zi_tensor o = view2(&d->w.o, 0, S, D);
    zi_tensor g = view2(&d->w.g, 0, S, F); /* [S, F] */
    zi_tensor u = view2(&d->w.u, 0, S, F);
    zi_tensor s_msa = {0}, g_msa = {0}, s_mlp = {0}, g_mlp = {0};
    if (b->modulated) {
        s_msa = view1(&b->mod, 0, D);
        g_msa = view1(&b->mod, D, D);
        s_mlp = view1(&b->mod, 2 * (int64_t)D, D);
        g_mlp = view1(&b->mod, 3 * (int64_t)D, D);
    }

    /* attention branch */
    be->rmsnorm(be, &h, x, &b->attn_norm1, S, D, eps);
    if (b->modulated)
        be->mul_row(be, &h, &h, &s_msa, S, D);
    be->linear(be, &q, &h, &b->to_q, NULL, S, D, D);
    be->linear(be, &k, &h, &b->to_k, NULL, S, D, D);
    be->linear(be, &v, &h, &b->to_v, NULL, S, D, D);
    if (d->cfg.qk_norm) {
        be->rmsnorm(be, &q, &q, &b->norm_q, S * H, hd, ZI_DIT_QK_EPS);
        be->rmsnorm(be, &k, &k, &b->norm_k, S * H, hd, ZI_DIT_QK_EPS);
    }
    be->rope(be, &q, cos, sin, S, H, hd, ZI_ROPE_INTERLEAVED);
    be->rope(be, &k, cos, sin, S, H, hd, ZI_ROPE_INTERLEAVED);
    be->attention(be, &a, &q, &k, &v, S, S, H, H, hd, (float)(1.0 / sqrt((double)hd)), 0);
    be->linear(be, &o, &a, &b->to_out, NULL, S, D, D);
    be->rmsnorm(be, &o, &o, &b->attn_norm2, S, D, eps);
    be->gated_add(be, x, b->modulated ? &g_msa : NULL, &o, S, D);

    /* feed-forward branch: w2(silu(w1 h) * w3 h) */
    be->rmsnorm(be, &h, x, &b->ffn_norm1, S, D, eps);
    if (b->modulated)
        be->mul_row(be, &h, &h, &s_mlp, S, D);
    be->linear(be, &g, &h, &b->w1, NULL, S, D, F);
    be->linear(be, &u, &h, &b->w3, NULL, S, D, F);
    be->silu_mul(be, &g, &g, &u, (size_t)S * (size_t)F);
    be->linear(be, &o, &g, &b->w2, NULL, S, F, D);
    be->rmsnorm(be, &o, &o, &b->ffn_norm2, S, D, eps);
    be->gated_add(be, x, b->modulated ? &g_mlp : NULL, &o, S, D);
}

/* Per-block modulation for the current temb: mod = Linear(temb); 1 + scales, tanh gates. */
static void dit_block_modulation(zi_dit *d, zi_dit_block *b)
{
    zi_backend *be = d->be;
    const int D = d->D;
    zi_tensor mod2 = view2(&b->mod, 0, 1, 4 * (int64_t)D);
    be->linear(be, &mod2, &d->temb, &b->ada_w, &b->ada_b, 1, d->A, 4 * D);
    for (int part = 0; part < 4; part++) {
        zi_tensor p = view1(&b->mod, (int64_t)part * D, D);
        if (part % 2 == 0)
            be->affine(be, &p, &p, 1.0f, 1.0f, (size_t)D);
        else
            be->tanh_(be, &p, &p, (size_t)D);
    }
}

int zi_dit_prepare_time(zi_dit *d, float t)
{
    if (d->time_valid && d->time_t == t)
        return ZI_OK;
    d->time_valid = 0;
    zi_backend *be = d->be;

    /* Sinusoid, in fp32 as torch: freqs = exp(-ln(10000) * i / half), cos first. */
    const int half = ZI_DIT_FREQ_DIM / 2;
    float e[ZI_DIT_FREQ_DIM];
    const float tau = t * d->cfg.t_scale;
    const float c = (float)(-log(ZI_DIT_MAX_PERIOD));
    for (int i = 0; i < half; i++) {
        float f = expf((c * (float)i) / (float)half);
        float arg = tau * f;
        e[i] = cosf(arg);
        e[half + i] = sinf(arg);
    }
    int rc = be->upload(be, &d->t_freq, e, ZI_DIT_FREQ_DIM);
    if (rc)
        return zi_backend_check(be) ? zi_backend_check(be) : rc;
    /* temb = mlp.2(SiLU(mlp.0(e))) [1, A] */
    be->linear(be, &d->t_mid, &d->t_freq, &d->t_w0, &d->t_b0, 1, ZI_DIT_FREQ_DIM, ZI_DIT_T_MID);
    be->silu(be, &d->t_mid, &d->t_mid, ZI_DIT_T_MID);
    be->linear(be, &d->temb, &d->t_mid, &d->t_w2, &d->t_b2, 1, ZI_DIT_T_MID, d->A);
    rc = dit_tap(d, "t_embedder", &d->temb, 1, d->A);
    if (rc)
        return rc;

    for (int i = 0; i < d->cfg.n_refiner_layers; i++)
        dit_block_modulation(d, &d->noise[i]);
    for (int i = 0; i < d->cfg.n_layers; i++)
        dit_block_modulation(d, &d->layers[i]);
    /* final layer: scale = 1 + Linear(SiLU(temb)) */
    be->silu(be, &d->temb_act, &d->temb, (size_t)d->A);
    be->linear(be, &d->fin_scale, &d->temb_act, &d->fin_ada_w, &d->fin_ada_b, 1, d->A, d->D);
    be->affine(be, &d->fin_scale, &d->fin_scale, 1.0f, 1.0f, (size_t)d->D);
    rc = zi_backend_check(be);
    if (rc)
        return rc;
    d->time_t = t;
    d->time_valid = 1;
    return ZI_OK;
}

/* ------------------------------------------------------------------------------------ */
/* caption                                                                              */

void zi_dit_caption_free(zi_dit_caption *c)
{
    if (!c)
        return;
    zi_backend *be = c->d->be;
    free_owned(be, &c->feats);
    free_owned(be, &c->cos);
    free_owned(be, &c->sin);
    free(c);
}

int zi_dit_caption_len(const zi_dit_caption *c, int *L_pad)
{
    if (L_pad)
        *L_pad = c->Lp;
    return c->L;
}

int zi_dit_prepare_caption(zi_dit *d, const float *cap_feats, int L, zi_dit_caption **out)
{
    *out = NULL;
    zi_backend *be = d->be;
    const int D = d->D, Cf = d->cfg.cap_feat_dim;
    if (L < 1)
        return zi_errorf(ZI_EINVAL, "transformer: caption has no tokens");
    const int Lp = (int)round_up(L, ZI_DIT_SEQ_MULTI);
    /* caption ids run 1..Lp and the image frame id is Lp + 1, all < axes_lens[0] */
    if (Lp + 1 >= d->cfg.axes_lens[0])
        return zi_errorf(ZI_EINVAL, "transformer: caption of %d rows exceeds axes_lens[0] = %d", Lp,
                         d->cfg.axes_lens[0]);
    zi_dit_caption *c = calloc(1, sizeof *c);
    int32_t(*pos)[3] = calloc((size_t)Lp, sizeof *pos);
    zi_tensor cin = {0};
    int rc = ZI_OK;
    if (!c || !pos) {
        rc = zi_errorf(ZI_ENOMEM, "transformer: out of memory");
        goto err;
    }
    c->d = d;
    c->L = L;
    c->Lp = Lp;
    const int64_t s_in[2] = {L, Cf}, s_feat[2] = {Lp, D};
    rc = be->alloc(be, &cin, 2, s_in);
    rc = rc ? rc : be->alloc(be, &c->feats, 2, s_feat);
    rc = rc ? rc : be->upload(be, &cin, cap_feats, (size_t)L * (size_t)Cf);
    if (rc)
        goto err_be;
    /* cap_embedder: Linear(RMSNorm(cap_feats)) into the first L rows, pad rows after */
    be->rmsnorm(be, &cin, &cin, &d->cap_norm, L, Cf, d->cfg.norm_eps);
    zi_tensor real = view2(&c->feats, 0, L, D);
    be->linear(be, &real, &cin, &d->cap_w, &d->cap_b, L, Cf, D);
    for (int r = L; r < Lp; r++) {
        zi_tensor row = view2(&c->feats, (int64_t)r * D, 1, D);
        be->copy(be, &row, &d->cap_pad, (size_t)D);
    }
    free_owned(be, &cin);
    rc = dit_tap(d, "cap_embedder", &c->feats, Lp, D);
    if (rc)
        goto err;

    for (int r = 0; r < Lp; r++) {
        pos[r][0] = 1 + r;
        pos[r][1] = 0;
        pos[r][2] = 0;
    }
    rc = dit_rope_upload(d, (const int32_t(*)[3])pos, Lp, &c->cos, &c->sin);
    rc = rc ? rc : dit_work_reserve(d, Lp);
    if (rc)
        goto err;
    char name[64];
    for (int i = 0; i < d->cfg.n_refiner_layers; i++) {
        dit_block_forward(d, &c->feats, &d->context[i], &c->cos, &c->sin, Lp);
        snprintf(name, sizeof name, "context_refiner.%d", i);
        rc = dit_tap(d, name, &c->feats, Lp, D);
        if (rc)
            goto err;
    }
    rc = zi_backend_check(be);
    if (rc)
        goto err;
    free(pos);
    *out = c;
    return ZI_OK;
err_be:
    rc = zi_backend_check(be) ? zi_backend_check(be) : rc;
err:
    free_owned(be, &cin);
    free(pos);
    if (c) {
        c->d = d;
        zi_dit_caption_free(c);
    }
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* forward                                                                              */

/* Unified-sequence RoPE tables [Np + Lp, hd/2]: image rows (Lp + 1, h, w), image pad rows
 * (0, 0, 0), caption rows (1 + k, 0, 0). Cached per grid and caption length. */
static int dit_rope_grid(zi_dit *d, int Ht, int Wt, int Lp)
{
    if (d->rope_cos.owned && d->rope_ht == Ht && d->rope_wt == Wt && d->rope_lp == Lp)
        return ZI_OK;
    free_owned(d->be, &d->rope_cos);
    free_owned(d->be, &d->rope_sin);
    const int64_t N = (int64_t)Ht * Wt, Np = round_up(N, ZI_DIT_SEQ_MULTI), S = Np + Lp;
    int32_t(*pos)[3] = calloc((size_t)S, sizeof *pos);
    if (!pos)
        return zi_errorf(ZI_ENOMEM, "transformer: out of memory for position ids");
    for (int h = 0; h < Ht; h++)
        for (int w = 0; w < Wt; w++) {
            int64_t n = (int64_t)h * Wt + w;
            pos[n][0] = Lp + 1;
            pos[n][1] = h;
            pos[n][2] = w;
        }
    for (int k = 0; k < Lp; k++) {
        pos[Np + k][0] = 1 + k;
        pos[Np + k][1] = 0;
        pos[Np + k][2] = 0;
    }
    int rc = dit_rope_upload(d, (const int32_t(*)[3])pos, S, &d->rope_cos, &d->rope_sin);
    free(pos);
    if (rc)
        return rc;
    d->rope_ht = Ht;
    d->rope_wt = Wt;
    d->rope_lp = Lp;
    return ZI_OK;
}

/* Moves values between the latent image and its patch tokens, both on the host:
 * tokens (N, P) with token n = h*Wt + w and feature k = ph*(p*C) + pw*C + c (the first p*p*C
 * of the row's P features), Ht = lh/p, Wt = lw/p; latent (C, lh, lw) at [c, h*p+ph, w*p+pw].
 * to_tokens 1 = patchify (src latent, dst tokens), 0 = unpatchify (src tokens, dst latent);
 * one index map serves both directions so they cannot drift apart. */
static void dit_patch_copy(float *dst, const float *src, int C, int lh, int lw, int p, int P,
                           int to_tokens)
{
    const int Ht = lh / p, Wt = lw / p;
    for (int h = 0; h < Ht; h++)
        for (int w = 0; w < Wt; w++)
            for (int ph = 0; ph < p; ph++)
                for (int pw = 0; pw < p; pw++)
                    for (int c = 0; c < C; c++) {
                        int64_t tok = ((int64_t)h * Wt + w) * P + (ph * p + pw) * C + c;
                        int64_t pix = ((int64_t)c * lh + h * p + ph) * lw + w * p + pw;
                        if (to_tokens)
                            dst[tok] = src[pix];
                        else
                            dst[pix] = src[tok];
                    }
}

int zi_dit_forward(zi_dit *d, const zi_dit_caption *cap, float t, const float *latent, int lh,
                   int lw, float *out)
{
    zi_backend *be = d->be;
    const int p = d->cfg.patch, C = d->cfg.in_channels, D = d->D, P = d->P;
    const int half = d->hd / 2;
    if (!cap || cap->d != d)
        return zi_errorf(ZI_EINVAL, "transformer: caption belongs to another model");
    if (lh <= 0 || lw <= 0 || lh % p || lw % p)
        return zi_errorf(ZI_EINVAL, "transformer: latent %dx%d is not a multiple of patch %d", lh,
                         lw, p);
    const int Ht = lh / p, Wt = lw / p, Lp = cap->Lp;
    if (Ht > d->cfg.axes_lens[1] || Wt > d->cfg.axes_lens[2])
        return zi_errorf(ZI_EINVAL, "transformer: token grid %dx%d exceeds axes_lens %dx%d", Ht, Wt,
                         d->cfg.axes_lens[1], d->cfg.axes_lens[2]);
    const int64_t N = (int64_t)Ht * Wt, Np = round_up(N, ZI_DIT_SEQ_MULTI), S = Np + Lp;
    if (S > INT32_MAX / (D > d->F ? D : d->F))
        return zi_errorf(ZI_EINVAL, "transformer: sequence of %lld rows is too long", (long long)S);

    zi_tensor U = {0}, xin = {0}, y = {0};
    float *host = NULL;
    char name[64];
    int rc = zi_dit_prepare_time(d, t);
    rc = rc ? rc : dit_rope_grid(d, Ht, Wt, Lp);
    rc = rc ? rc : dit_work_reserve(d, S);
    if (rc)
        return rc;
    const int rows_out = d->tap ? (int)S : (int)N;
    const int64_t s_u[2] = {S, D}, s_x[2] = {N, P}, s_y[2] = {rows_out, P};
    host = malloc((size_t)N * (size_t)P * sizeof *host);
    if (!host) {
        rc = zi_errorf(ZI_ENOMEM, "transformer: out of memory for patches");
        goto done;
    }
    rc = be->alloc(be, &U, 2, s_u);
    rc = rc ? rc : be->alloc(be, &xin, 2, s_x);
    rc = rc ? rc : be->alloc(be, &y, 2, s_y);
    if (rc) {
        rc = zi_backend_check(be)
                 ? zi_backend_check(be)
                 : zi_errorf(ZI_ENOMEM, "transformer: cannot allocate %lld rows", (long long)S);
        goto done;
    }

    dit_patch_copy(host, latent, C, lh, lw, p, P, 1); /* patchify */
    rc = be->upload(be, &xin, host, (size_t)N * (size_t)P);
    if (rc) {
        rc = zi_backend_check(be) ? zi_backend_check(be) : rc;
        goto done;
    }

    /* x_embedder into the image rows of U, x_pad_token into the image pad rows */
    zi_tensor X = view2(&U, 0, Np, D);
    zi_tensor Xreal = view2(&U, 0, N, D);
    be->linear(be, &Xreal, &xin, &d->x_w, &d->x_b, (int)N, P, D);
    for (int64_t r = N; r < Np; r++) {
        zi_tensor row = view2(&U, r * D, 1, D);
        be->copy(be, &row, &d->x_pad, (size_t)D);
    }
    rc = dit_tap(d, "x_embedder", &X, (int)Np, D);
    if (rc)
        goto done;

    zi_tensor cos_img = view2(&d->rope_cos, 0, Np, half);
    zi_tensor sin_img = view2(&d->rope_sin, 0, Np, half);
    for (int i = 0; i < d->cfg.n_refiner_layers; i++) {
        dit_block_forward(d, &X, &d->noise[i], &cos_img, &sin_img, (int)Np);
        snprintf(name, sizeof name, "noise_refiner.%d", i);
        rc = dit_tap(d, name, &X, (int)Np, D);
        if (rc)
            goto done;
    }

    /* unified = [image rows; caption rows] */
    zi_tensor Ucap = view2(&U, Np * D, Lp, D);
    be->copy(be, &Ucap, &cap->feats, (size_t)Lp * (size_t)D);
    for (int i = 0; i < d->cfg.n_layers; i++) {
        dit_block_forward(d, &U, &d->layers[i], &d->rope_cos, &d->rope_sin, (int)S);
        snprintf(name, sizeof name, "layers.%d", i);
        rc = dit_tap(d, name, &U, (int)S, D);
        if (rc)
            goto done;
    }

    /* final layer (per token, so only the image rows unless a tap wants all of them):
     * y = Linear(LayerNorm(U) * (1 + Linear(SiLU(temb)))) */
    zi_tensor hin = view2(&U, 0, rows_out, D);
    zi_tensor hn = view2(&d->w.h, 0, rows_out, D);
    be->layernorm(be, &hn, &hin, rows_out, D, ZI_DIT_FINAL_EPS);
    be->mul_row(be, &hn, &hn, &d->fin_scale, rows_out, D);
    be->linear(be, &y, &hn, &d->fin_w, &d->fin_b, rows_out, D, P);
    rc = dit_tap(d, "final_layer", &y, rows_out, P);
    if (rc)
        goto done;
    be->download(be, host, &y, (size_t)N * (size_t)P);
    rc = zi_backend_check(be);
    if (rc)
        goto done;

    dit_patch_copy(out, host, C, lh, lw, p, P, 0); /* unpatchify */
done:
    free_owned(be, &U);
    free_owned(be, &xin);
    free_owned(be, &y);
    free(host);
    return rc;
}
