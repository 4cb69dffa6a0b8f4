/*
 * qwen3.c - Qwen3 text encoder (transformers Qwen3Model) on the backend interface.
 *
 * Follows zimage-spec.md §2.4-2.5: embeddings, then layers 0 .. n-2, each
 *   h += o_proj(attn(rope(qnorm(q_proj(a))), rope(knorm(k_proj(a))), v_proj(a)))
 *        with a = RMSNorm(h; input_layernorm), causal GQA attention, scale hd^-0.5;
 *   h += down_proj(silu(gate_proj(m)) * up_proj(m)), m = RMSNorm(h; post_attention_layernorm).
 * The output is h after layer n-2 with no final norm (hidden_states[-2]). Only the L
 * real tokens run: padding is on the right and attention is causal, so pads never
 * reach a real token (§2.3).
 *
 * Dimension letters: L tokens, D hidden, H query heads, KVH kv heads, hd head dim,
 * I intermediate, V vocabulary. Sizes come from zi_te_config only.
 *
 * Weights live in one struct; the tensor table below (checkpoint name -> field,
 * expected shape) is the single place that maps the checkpoint.
 */
#include "qwen3.h"
#include "zi_err.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct zi_qwen3_layer {
    zi_tensor input_ln; /* [D] */
    zi_tensor wq;       /* [H*hd, D] */
    zi_tensor wk;       /* [KVH*hd, D] */
    zi_tensor wv;       /* [KVH*hd, D] */
    zi_tensor wo;       /* [D, H*hd] */
    zi_tensor q_norm;   /* [hd] */
    zi_tensor k_norm;   /* [hd] */
    zi_tensor post_ln;  /* [D] */
    zi_tensor w_gate;   /* [I, D] */
    zi_tensor w_up;     /* [I, D] */
    zi_tensor w_down;   /* [D, I] */
} zi_qwen3_layer;

struct zi_qwen3 {
    zi_te_config cfg;
    zi_backend *be;
    zi_tensor embed;        /* [V, D] */
    zi_qwen3_layer *layers; /* n_run entries */
    int n_run;              /* layers that run: n_layers - 1 */
};

/* Symbolic dimensions of the table, resolved against the config. */
enum { ZI_Q3_1 = 0, ZI_Q3_D, ZI_Q3_QD, ZI_Q3_KVD, ZI_Q3_HD, ZI_Q3_I };

typedef struct zi_qwen3_entry {
    const char *name; /* after "layers.N." */
    size_t field;     /* offset in zi_qwen3_layer */
    int ndim;
    int dims[2];
    int is_norm; /* random init: 1 + noise instead of noise */
} zi_qwen3_entry;

static const zi_qwen3_entry zi_qwen3_table[] = {
    {"input_layernorm.weight", offsetof(zi_qwen3_layer, input_ln), 1, {ZI_Q3_D}, 1},
    {"self_attn.q_proj.weight", offsetof(zi_qwen3_layer, wq), 2, {ZI_Q3_QD, ZI_Q3_D}, 0},
    {"self_attn.k_proj.weight", offsetof(zi_qwen3_layer, wk), 2, {ZI_Q3_KVD, ZI_Q3_D}, 0},
    {"self_attn.v_proj.weight", offsetof(zi_qwen3_layer, wv), 2, {ZI_Q3_KVD, ZI_Q3_D}, 0},
    {"self_attn.o_proj.weight", offsetof(zi_qwen3_layer, wo), 2, {ZI_Q3_D, ZI_Q3_QD}, 0},
    {"self_attn.q_norm.weight", offsetof(zi_qwen3_layer, q_norm), 1, {ZI_Q3_HD}, 1},
    {"self_attn.k_norm.weight", offsetof(zi_qwen3_layer, k_norm), 1, {ZI_Q3_HD}, 1},
    {"post_attention_layernorm.weight", offsetof(zi_qwen3_layer, post_ln), 1, {ZI_Q3_D}, 1},
    {"mlp.gate_proj.weight", offsetof(zi_qwen3_layer, w_gate), 2, {ZI_Q3_I, ZI_Q3_D}, 0},
    {"mlp.up_proj.weight", offsetof(zi_qwen3_layer, w_up), 2, {ZI_Q3_I, ZI_Q3_D}, 0},
    {"mlp.down_proj.weight", offsetof(zi_qwen3_layer, w_down), 2, {ZI_Q3_D, ZI_Q3_I}, 0},
};
#define ZI_QWEN3_NTABLE (sizeof zi_qwen3_table / sizeof zi_qwen3_table[0])

#define ZI_QWEN3_PREFIX "model."

static int64_t zi_qwen3_dim(const zi_te_config *c, int sym)
{
    switch (sym) {
    case ZI_Q3_D:
        return c->hidden;
    case ZI_Q3_QD:
        return (int64_t)c->n_heads * c->head_dim;
    case ZI_Q3_KVD:
        return (int64_t)c->n_kv_heads * c->head_dim;
    case ZI_Q3_HD:
        return c->head_dim;
    case ZI_Q3_I:
        return c->intermediate;
    default:
        return 1;
    }
}

static void zi_qwen3_shape(const zi_te_config *c, const zi_qwen3_entry *e, int64_t *shape)
{
    for (int i = 0; i < e->ndim; i++)
        shape[i] = zi_qwen3_dim(c, e->dims[i]);
}

static int zi_qwen3_check_config(const zi_te_config *c)
{
    if (c->hidden <= 0 || c->n_layers < 1 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->head_dim <= 0 || c->intermediate <= 0 || c->vocab <= 0)
        return zi_errorf(ZI_EINVAL,
                         "text encoder: bad config (hidden %d, layers %d (need >= 1), heads %d, "
                         "kv heads %d, head_dim %d, intermediate %d, vocab %d)",
                         c->hidden, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim,
                         c->intermediate, c->vocab);
    if (c->n_heads % c->n_kv_heads != 0 || c->head_dim % 2 != 0)
        return zi_errorf(ZI_EINVAL,
                         "text encoder: %d heads not a multiple of %d kv heads, or odd head_dim %d",
                         c->n_heads, c->n_kv_heads, c->head_dim);
    if (!(c->rope_theta > 0) || !(c->rms_eps > 0))
        return zi_errorf(ZI_EINVAL, "text encoder: bad rope_theta %g or rms_norm_eps %g",
                         c->rope_theta, (double)c->rms_eps);
    return ZI_OK;
}

static int zi_qwen3_new(zi_qwen3 **out, const zi_te_config *cfg, zi_backend *be)
{
    *out = NULL;
    if (!cfg || !be)
        return zi_errorf(ZI_EINVAL, "text encoder: NULL config or backend");
    int rc = zi_qwen3_check_config(cfg);
    if (rc != ZI_OK)
        return rc;
    zi_qwen3 *m = calloc(1, sizeof *m);
    if (!m)
        return zi_errorf(ZI_ENOMEM, "text encoder: out of memory");
    m->cfg = *cfg;
    m->be = be;
    /* hidden_states[-2]: the last layer never runs; with one layer the prompt embeddings are
     * the token embeddings themselves (n_run 0), as in transformers */
    m->n_run = cfg->n_layers - 1;
    m->layers = m->n_run ? calloc((size_t)m->n_run, sizeof *m->layers) : NULL;
    if (m->n_run && !m->layers) {
        free(m);
        return zi_errorf(ZI_ENOMEM, "text encoder: out of memory");
    }
    *out = m;
    return ZI_OK;
}

static zi_tensor *zi_qwen3_field(zi_qwen3_layer *l, const zi_qwen3_entry *e)
{
    return (zi_tensor *)((char *)l + e->field);
}

void zi_qwen3_free(zi_qwen3 *m)
{
    if (!m)
        return;
    zi_backend *be = m->be;
    be->free(be, &m->embed);
    for (int i = 0; i < m->n_run; i++)
        for (size_t e = 0; e < ZI_QWEN3_NTABLE; e++)
            be->free(be, zi_qwen3_field(&m->layers[i], &zi_qwen3_table[e]));
    free(m->layers);
    free(m);
}

const zi_te_config *zi_qwen3_config(const zi_qwen3 *m)
{
    return &m->cfg;
}

/* ---- loading ---- */

static int zi_qwen3_upload(zi_backend *be, zi_tensor *dst, const zi_st *st, const char *name,
                           int ndim, const int64_t *shape)
{
    const zi_st_tensor *t;
    int rc = zi_st_get(st, name, ndim, shape, &t);
    if (rc != ZI_OK)
        return zi_error_prefix(rc, "text encoder");
    rc = be->upload_weight(be, dst, t->data, t->dtype, ndim, shape);
    if (rc != ZI_OK)
        return zi_error_prefix(rc, "text encoder: tensor %s", name);
    return ZI_OK;
}

/* Checks that a tensor the encoder does not use is one the checkpoint may hold: the last
 * layer (shape-checked, so a config with the wrong layer count fails), norm.weight,
 * lm_head.* and rotary caches. Anything else means the config does not describe this
 * checkpoint. */
static int zi_qwen3_check_extra(const zi_st *st, const zi_te_config *c, const char *stored)
{
    const char *name = stored;
    if (strncmp(name, ZI_QWEN3_PREFIX, strlen(ZI_QWEN3_PREFIX)) == 0)
        name += strlen(ZI_QWEN3_PREFIX);
    if (strncmp(stored, "lm_head.", 8) == 0 || strcmp(name, "embed_tokens.weight") == 0)
        return ZI_OK;
    const zi_st_tensor *t;
    if (strcmp(name, "norm.weight") == 0) {
        int64_t d = c->hidden;
        int rc = zi_st_get(st, name, 1, &d, &t);
        return rc == ZI_OK ? ZI_OK : zi_error_prefix(rc, "text encoder");
    }
    if (strncmp(name, "layers.", 7) == 0) {
        char *end;
        long li = strtol(name + 7, &end, 10);
        if (end != name + 7 && *end == '.' && li >= 0 && li < c->n_layers) {
            const char *rest = end + 1;
            if (strcmp(rest, "self_attn.rotary_emb.inv_freq") == 0)
                return ZI_OK;
            for (size_t e = 0; e < ZI_QWEN3_NTABLE; e++) {
                if (strcmp(rest, zi_qwen3_table[e].name) != 0)
                    continue;
                if (li < c->n_layers - 1)
                    return ZI_OK; /* uploaded (and checked) by the main loop */
                int64_t shape[2];
                zi_qwen3_shape(c, &zi_qwen3_table[e], shape);
                int rc = zi_st_get(st, name, zi_qwen3_table[e].ndim, shape, &t);
                return rc == ZI_OK ? ZI_OK : zi_error_prefix(rc, "text encoder");
            }
        }
    }
    return zi_errorf(ZI_EFORMAT,
                     "text encoder: unexpected tensor %s (config: %d layers, hidden %d)", stored,
                     c->n_layers, c->hidden);
}

int zi_qwen3_load(zi_qwen3 **out, const zi_st *st, const zi_te_config *cfg, zi_backend *be)
{
    if (!out || !st)
        return zi_errorf(ZI_EINVAL, "text encoder: NULL argument");
    zi_qwen3 *m;
    int rc = zi_qwen3_new(&m, cfg, be);
    if (rc != ZI_OK)
        return rc;
    for (size_t i = 0; i < zi_st_count(st); i++) {
        rc = zi_qwen3_check_extra(st, cfg, zi_st_at(st, i)->name);
        if (rc != ZI_OK)
            goto err;
    }
    int64_t eshape[2] = {cfg->vocab, cfg->hidden};
    rc = zi_qwen3_upload(be, &m->embed, st, "embed_tokens.weight", 2, eshape);
    if (rc != ZI_OK)
        goto err;
    for (int li = 0; li < m->n_run; li++)
        for (size_t e = 0; e < ZI_QWEN3_NTABLE; e++) {
            const zi_qwen3_entry *en = &zi_qwen3_table[e];
            char name[128];
            snprintf(name, sizeof name, "layers.%d.%s", li, en->name);
            int64_t shape[2];
            zi_qwen3_shape(cfg, en, shape);
            rc = zi_qwen3_upload(be, zi_qwen3_field(&m->layers[li], en), st, name, en->ndim, shape);
            if (rc != ZI_OK)
                goto err;
        }
    *out = m;
    return ZI_OK;
err:
    zi_qwen3_free(m);
    return rc;
}

/* splitmix64: a cheap, good-enough stream for benchmark weights */
static uint64_t zi_qwen3_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Approximately N(mean, 0.02) as bf16: the sum of four 16-bit uniforms (Irwin-Hall,
 * variance 4/12) is close enough to a normal for timing runs and costs one draw. */
static void zi_qwen3_fill_random(uint16_t *dst, size_t n, float mean, uint64_t *s)
{
    const float scale = 0.02f / sqrtf(4.0f / 12.0f) / 65536.0f;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = zi_qwen3_next(s);
        uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
                       (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);
        dst[i] = zi_f32_to_bf16(mean + ((float)sum - 2.0f * 65536.0f) * scale);
    }
}

static int zi_qwen3_random_tensor(zi_backend *be, zi_tensor *dst, int ndim, const int64_t *shape,
                                  float mean, uint64_t *s)
{
    if (be->no_weight_data)
        return be->upload_weight(be, dst, NULL, ZI_BF16, ndim, shape);
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    uint16_t *buf = malloc(n * sizeof *buf);
    if (!buf)
        return zi_errorf(ZI_ENOMEM, "text encoder: out of memory for %zu random weights", n);
    zi_qwen3_fill_random(buf, n, mean, s);
    int rc = be->upload_weight(be, dst, buf, ZI_BF16, ndim, shape);
    free(buf);
    return rc;
}

int zi_qwen3_load_random(zi_qwen3 **out, const zi_te_config *cfg, zi_backend *be, uint64_t seed)
{
    if (!out)
        return zi_errorf(ZI_EINVAL, "text encoder: NULL argument");
    zi_qwen3 *m;
    int rc = zi_qwen3_new(&m, cfg, be);
    if (rc != ZI_OK)
        return rc;
    uint64_t s = seed;
    int64_t eshape[2] = {cfg->vocab, cfg->hidden};
    rc = zi_qwen3_random_tensor(be, &m->embed, 2, eshape, 0.0f, &s);
    for (int li = 0; li < m->n_run && rc == ZI_OK; li++)
        for (size_t e = 0; e < ZI_QWEN3_NTABLE && rc == ZI_OK; e++) {
            const zi_qwen3_entry *en = &zi_qwen3_table[e];
            int64_t shape[2];
            zi_qwen3_shape(cfg, en, shape);
            rc = zi_qwen3_random_tensor(be, zi_qwen3_field(&m->layers[li], en), en->ndim, shape,
                                        en->is_norm ? 1.0f : 0.0f, &s);
        }
    if (rc != ZI_OK) {
        zi_qwen3_free(m);
        return rc;
    }
    *out = m;
    return ZI_OK;
}

/* ---- forward ---- */

/* Host RoPE tables as transformers' Qwen3RotaryEmbedding builds them, all in fp32:
 * inv_freq[j] = 1 / theta^((2j)/hd), phi = p * inv_freq[j], then cos/sin of phi.
 * cos, sin: [L, hd/2]. */
static void zi_qwen3_rope_tables(float *cos_t, float *sin_t, int L, int hd, double theta)
{
    int half = hd / 2;
    float base = (float)theta;
    for (int j = 0; j < half; j++) {
        float inv_freq = 1.0f / powf(base, (float)(2 * j) / (float)hd);
        for (int p = 0; p < L; p++) {
            float phi = (float)p * inv_freq;
            cos_t[(size_t)p * half + j] = cosf(phi);
            sin_t[(size_t)p * half + j] = sinf(phi);
        }
    }
}

/* Scratch activations of one forward. */
typedef struct zi_qwen3_work {
    zi_tensor a;    /* [L, D] normed input */
    zi_tensor q;    /* [L, H, hd] */
    zi_tensor k;    /* [L, KVH, hd] */
    zi_tensor v;    /* [L, KVH, hd] */
    zi_tensor att;  /* [L, H*hd] */
    zi_tensor o;    /* [L, D] */
    zi_tensor gate; /* [L, I] */
    zi_tensor up;   /* [L, I] */
    zi_tensor cos;  /* [L, hd/2] F32 */
    zi_tensor sin;  /* [L, hd/2] F32 */
} zi_qwen3_work;

static void zi_qwen3_work_free(zi_backend *be, zi_qwen3_work *w)
{
    zi_tensor *all[] = {&w->a, &w->q,    &w->k,  &w->v,   &w->att,
                        &w->o, &w->gate, &w->up, &w->cos, &w->sin};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        be->free(be, all[i]);
}

static int zi_qwen3_work_alloc(zi_backend *be, zi_qwen3_work *w, const zi_te_config *c, int L)
{
    memset(w, 0, sizeof *w);
    int64_t sd[2] = {L, c->hidden}, sq[3] = {L, c->n_heads, c->head_dim},
            skv[3] = {L, c->n_kv_heads, c->head_dim},
            sa[2] = {L, (int64_t)c->n_heads * c->head_dim}, si[2] = {L, c->intermediate},
            sr[2] = {L, c->head_dim / 2};
    int rc = be->alloc(be, &w->a, 2, sd);
    if (rc == ZI_OK)
        rc = be->alloc(be, &w->q, 3, sq);
    if (rc == ZI_OK)
        rc = be->alloc(be, &w->k, 3, skv);
    if (rc == ZI_OK)
        rc = be->alloc(be, &w->v, 3, skv);
    if (rc == ZI_OK)
        rc = be->alloc(be, &w->att, 2, sa);
    if (rc == ZI_OK)
        rc = be->alloc(be, &w->o, 2, sd);
    if (rc == ZI_OK)
        rc = be->alloc(be, &w->gate, 2, si);
    if (rc == ZI_OK)
        rc = be->alloc(be, &w->up, 2, si);
    if (rc == ZI_OK)
        rc = be->alloc_f32(be, &w->cos, 2, sr);
    if (rc == ZI_OK)
        rc = be->alloc_f32(be, &w->sin, 2, sr);
    if (rc != ZI_OK)
        zi_qwen3_work_free(be, w);
    return rc;
}

/* One decoder layer, in place on the residual stream h[L, D]. */
static void zi_qwen3_layer_forward(zi_backend *be, zi_tensor *h, zi_qwen3_work *w,
                                   const zi_qwen3_layer *ly, const zi_te_config *c, int L)
{
    int D = c->hidden, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim;
    int I = c->intermediate, QD = H * hd, KVD = KVH * hd;
    float eps = c->rms_eps;

    be->rmsnorm(be, &w->a, h, &ly->input_ln, L, D, eps);
    be->linear(be, &w->q, &w->a, &ly->wq, NULL, L, D, QD);
    be->linear(be, &w->k, &w->a, &ly->wk, NULL, L, D, KVD);
    be->linear(be, &w->v, &w->a, &ly->wv, NULL, L, D, KVD);
    be->rmsnorm(be, &w->q, &w->q, &ly->q_norm, L * H, hd, eps);
    be->rmsnorm(be, &w->k, &w->k, &ly->k_norm, L * KVH, hd, eps);
    be->rope(be, &w->q, &w->cos, &w->sin, L, H, hd, ZI_ROPE_NEOX);
    be->rope(be, &w->k, &w->cos, &w->sin, L, KVH, hd, ZI_ROPE_NEOX);
    /* transformers' scaling = head_dim ** -0.5 */
    float scale = (float)(1.0 / sqrt((double)hd));
    be->attention(be, &w->att, &w->q, &w->k, &w->v, L, L, H, KVH, hd, scale, 1);
    be->linear(be, &w->o, &w->att, &ly->wo, NULL, L, QD, D);
    be->gated_add(be, h, NULL, &w->o, L, D);

    be->rmsnorm(be, &w->a, h, &ly->post_ln, L, D, eps);
    be->linear(be, &w->gate, &w->a, &ly->w_gate, NULL, L, D, I);
    be->linear(be, &w->up, &w->a, &ly->w_up, NULL, L, D, I);
    be->silu_mul(be, &w->gate, &w->gate, &w->up, (size_t)L * I);
    be->linear(be, &w->o, &w->gate, &ly->w_down, NULL, L, I, D);
    be->gated_add(be, h, NULL, &w->o, L, D);
}

int zi_qwen3_forward(zi_qwen3 *m, const int32_t *ids, int L, zi_tensor *out,
                     zi_tensor *hidden_states)
{
    if (!m || !ids || !out)
        return zi_errorf(ZI_EINVAL, "text encoder: NULL argument");
    memset(out, 0, sizeof *out);
    const zi_te_config *c = &m->cfg;
    zi_backend *be = m->be;
    int nh = c->n_layers; /* entries of hidden_states */
    if (hidden_states)
        memset(hidden_states, 0, (size_t)nh * sizeof *hidden_states);
    /* max_position_embeddings is not a limit: transformers' default RoPE computes the
     * angles for any position, so a config with a small value still encodes 512 tokens. */
    if (L <= 0)
        return zi_errorf(ZI_EINVAL, "text encoder: %d tokens (must be at least 1)", L);
    for (int i = 0; i < L; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return zi_errorf(ZI_EINVAL, "text encoder: token %d is id %d, outside [0, %d)", i,
                             ids[i], c->vocab);
    int rc = zi_backend_check(be);
    if (rc != ZI_OK)
        return rc;

    zi_qwen3_work w;
    rc = zi_qwen3_work_alloc(be, &w, c, L);
    if (rc != ZI_OK)
        return rc;
    float *cs = malloc((size_t)L * (size_t)c->head_dim * sizeof(float));
    if (!cs) {
        zi_qwen3_work_free(be, &w);
        return zi_errorf(ZI_ENOMEM, "text encoder: out of memory");
    }
    size_t nr = (size_t)L * (size_t)(c->head_dim / 2);
    zi_qwen3_rope_tables(cs, cs + nr, L, c->head_dim, c->rope_theta);
    rc = be->upload(be, &w.cos, cs, nr);
    if (rc == ZI_OK)
        rc = be->upload(be, &w.sin, cs + nr, nr);
    free(cs);

    int64_t sd[2] = {L, c->hidden};
    if (rc == ZI_OK)
        rc = be->alloc(be, out, 2, sd); /* h: the residual stream [L, D] */
    if (rc != ZI_OK)
        goto err;
    be->embedding(be, out, &m->embed, ids, L, c->hidden);
    for (int li = 0; li <= m->n_run; li++) {
        if (hidden_states) {
            rc = be->alloc(be, &hidden_states[li], 2, sd);
            if (rc != ZI_OK)
                goto err;
            be->copy(be, &hidden_states[li], out, (size_t)L * c->hidden);
        }
        if (li == m->n_run)
            break;
        zi_qwen3_layer_forward(be, out, &w, &m->layers[li], c, L);
        rc = zi_backend_check(be);
        if (rc != ZI_OK) {
            zi_error_prefix(rc, "text encoder layer %d", li);
            goto err;
        }
    }
    rc = zi_backend_check(be);
    if (rc != ZI_OK)
        goto err;
    zi_qwen3_work_free(be, &w);
    return ZI_OK;
err:
    zi_qwen3_work_free(be, &w);
    be->free(be, out);
    if (hidden_states)
        for (int i = 0; i < nh; i++)
            be->free(be, &hidden_states[i]);
    return rc;
}
