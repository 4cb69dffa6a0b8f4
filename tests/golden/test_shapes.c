/*
 * test_shapes.c - the pipeline on checkpoints of OTHER shapes than tiny-zimage.
 *
 * Builds, in a temporary folder, complete diffusers-layout checkpoints with random weights
 * and shapes unlike the public one (text encoder: transformers-4 config with top-level
 * rope_theta, Qwen3ForCausalLM, "model." names, lm_head.weight, two shards + index json,
 * head_dim != hidden / heads, 1 kv head and kv heads = heads, a single layer (no layer
 * runs: hidden_states[-2] is the embeddings), small
 * max_position_embeddings; DiT: axes_dims 16/24/24 and 16/16/16, 4 heads, 2 refiner
 * layers, 1 main layer, cap_feat_dim != dim, other rope_theta and t_scale, an Omni
 * checkpoint's siglip_* tensors (unused by text-to-image), a second patch pair 1-1 listed
 * before 2-1 (only 2-1 runs, as in ZImagePipeline); VAE: 3 blocks,
 * layers_per_block 1, 8 groups, unequal channels, no mid attention, post_quant_conv by
 * AutoencoderKL's default (the key left out); scheduler: static shift 6, and dynamic
 * shifting with base/max_shift 0.3/1.6 (mu from the image size); weights BF16, F16 and F32), copies
 * the real tokenizer, and runs zi_pipeline_generate for a matrix of sizes (token counts that need
 * image pad rows, non-square), steps (1, 2, 5, 50), guidance (CFG with the empty negative prompt),
 * seeds (0, 2^32+5, 2^63, 2^64-1) and both RNGs, and the CLI once.
 *
 * Checks that can fail: each run is finite and deterministic; the two RNGs differ; and
 * every stage is compared with independent double-precision references written here from
 * docs/zimage-spec.md: the Qwen3 encoder (§2.4-2.5, incl. truncation of a long prompt to
 * 512 ids), one DiT forward (§3: timestep embedding, patchify, embedders, pad rows,
 * position ids, interleaved RoPE from axes_dims, refiners, main layers, final layer) per
 * CFG branch, the Euler steps with the shifted sigmas (§4), and the VAE decoder (§5.2-5.4).
 * Tolerance: 1e-4 relative (golden README), rgb within 1 level.
 */
#include "config.h"
#include "dit.h"
#include "pipeline.h"
#include "pipeline_bench.h"
#include "qwen3.h"
#include "rng.h"
#include "safetensors.h"
#include "vae.h"
#include "zi_err.h"
#include "zi_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOL 1e-4
#define VOCAB 151936
#define MAXW 512

/* ------------------------------------------------------------------------------------ */
/* random weights kept as the values actually stored (rounded to the file dtype)        */

typedef struct wt {
    char name[112];
    int ndim;
    int64_t shape[4];
    size_t n;
    float *f;
} wt;

typedef struct wset {
    wt w[MAXW];
    int n;
} wset;

static uint64_t rng_state;

static double urand(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1p-53;
}

/* kind: 0 linear/conv (uniform, variance 1/fan_in), 1 norm weight (1 +- 0.3),
 * 2 bias (+-0.1), 3 unit (+-1). */
static void wadd(wset *s, int kind, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void wadd(wset *s, int kind, int ndim, const int64_t *shape, const char *fmt, ...)
{
    assert_true(s->n < MAXW);
    wt *w = &s->w[s->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->name, sizeof w->name, fmt, ap);
    va_end(ap);
    w->ndim = ndim;
    w->n = 1;
    size_t fan = 1;
    for (int i = 0; i < ndim; i++) {
        w->shape[i] = shape[i];
        w->n *= (size_t)shape[i];
        if (i)
            fan *= (size_t)shape[i];
    }
    w->f = malloc(w->n * sizeof *w->f);
    assert_non_null(w->f);
    double a = kind == 0 ? sqrt(3.0 / (double)fan) : kind == 1 ? 0.3 : kind == 2 ? 0.1 : 1.0;
    double c = kind == 1 ? 1.0 : 0.0;
    for (size_t i = 0; i < w->n; i++)
        w->f[i] = (float)(c + a * (2.0 * urand() - 1.0));
}

#define S1(a) ((const int64_t[]){a})
#define S2(a, b) ((const int64_t[]){a, b})
#define S4(a, b, c, d) ((const int64_t[]){a, b, c, d})

static const float *W(const wset *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const float *W(const wset *s, const char *fmt, ...)
{
    char name[112];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->w[i].name, name) == 0)
            return s->w[i].f;
    fail_msg("reference: no weight %s", name);
    return NULL;
}

static void wset_free(wset *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->w[i].f);
    s->n = 0;
}

/* Writes weights [from, to) of s to one file in dtype dt, rounding s's values to dt. */
static void write_st(const char *path, wset *s, int from, int to, zi_dtype dt)
{
    int n = to - from;
    const char **names = calloc((size_t)n, sizeof *names);
    zi_tensor *ts = calloc((size_t)n, sizeof *ts);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    assert_true(names && ts && bufs);
    for (int i = 0; i < n; i++) {
        wt *w = &s->w[from + i];
        names[i] = w->name;
        if (dt == ZI_F32) {
            bufs[i] = NULL;
            ts[i] = zi_tensor_host(w->f, ZI_F32, w->ndim, w->shape);
            continue;
        }
        uint16_t *b = malloc(w->n * sizeof *b);
        assert_non_null(b);
        for (size_t k = 0; k < w->n; k++) {
            b[k] = dt == ZI_BF16 ? zi_f32_to_bf16(w->f[k]) : zi_f32_to_f16(w->f[k]);
            w->f[k] = dt == ZI_BF16 ? zi_bf16_to_f32(b[k]) : zi_f16_to_f32(b[k]);
        }
        bufs[i] = b;
        ts[i] = zi_tensor_host(b, dt, w->ndim, w->shape);
    }
    if (zi_st_write(path, (size_t)n, names, ts) != ZI_OK)
        fail_msg("write %s: %s", path, zi_errmsg());
    for (int i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(ts);
    free(names);
}

/* buf = dir + "/" + name; a path that does not fit fails the test. */
static void jp(char *buf, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        fail_msg("path too long: %s/%s", dir, name);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void copy_file(const char *from, const char *to)
{
    char *t = zi_test_read_file(from);
    assert_non_null(t);
    write_text(to, t);
    free(t);
}

/* ------------------------------------------------------------------------------------ */
/* model shapes                                                                         */

typedef struct tcase {
    const char *name;
    /* text encoder */
    int te_hidden, te_layers, te_heads, te_kv, te_hd, te_inter, te_maxpos;
    double te_theta;
    int te_v4; /* transformers 4 layout: top-level rope_theta, model. prefix, lm_head */
    zi_dtype te_dt;
    /* DiT */
    int dim, n_heads, n_layers, n_ref, axes[3];
    int siglip; /* siglip_feat_dim (Omni): its siglip_* tensors are stored and must be unused */
    int pair11; /* the patch pair 1-1 listed before 2-1, with its tensors: 2-1 must run */
    double dit_theta, t_scale;
    zi_dtype dit_dt;
    /* VAE */
    int nb, bo[4], lpb, groups, mid_attn;
    int pqc; /* post_quant_conv: 1 = the key left out (AutoencoderKL's default, true) */
    double scaling, shift_f;
    zi_dtype vae_dt;
    double sched_shift;
    int dyn; /* use_dynamic_shifting, with base_shift / max_shift below */
    double base_shift, max_shift;
} tcase;

static const tcase CASES[2] = {
    {.name = "shapesA",
     .te_hidden = 48,
     .te_layers = 3,
     .te_heads = 4,
     .te_kv = 1,
     .te_hd = 16,
     .te_inter = 80,
     .te_maxpos = 128,
     .te_theta = 10000.0,
     .te_v4 = 1,
     .te_dt = ZI_BF16,
     .dim = 128,
     .n_heads = 2,
     .n_layers = 1,
     .n_ref = 2,
     .axes = {16, 24, 24},
     .dit_theta = 100.0,
     .t_scale = 700.0,
     .dit_dt = ZI_F16,
     .siglip = 24,
     .pair11 = 1,
     .nb = 3,
     .bo = {8, 16, 24},
     .lpb = 1,
     .groups = 8,
     .mid_attn = 1,
     .scaling = 0.5,
     .shift_f = -0.05,
     .vae_dt = ZI_F32,
     .sched_shift = 6.0},
    {.name = "shapesB",
     .te_hidden = 32,
     .te_layers = 1, /* hidden_states[-2] is then the token embeddings */
     .te_heads = 2,
     .te_kv = 2,
     .te_hd = 24,
     .te_inter = 48,
     .te_maxpos = 40960,
     .te_theta = 1e6,
     .te_v4 = 0,
     .te_dt = ZI_F32,
     .dim = 192,
     .n_heads = 4,
     .n_layers = 2,
     .n_ref = 1,
     .axes = {16, 16, 16},
     .dit_theta = 256.0,
     .t_scale = 1000.0,
     .dit_dt = ZI_BF16,
     .nb = 4,
     .bo = {8, 8, 16, 16},
     .lpb = 2,
     .groups = 4,
     .mid_attn = 0,
     .pqc = 1,
     .scaling = 0.3611,
     .shift_f = 0.1159,
     .vae_dt = ZI_BF16,
     .sched_shift = 1.0,
     .dyn = 1,
     .base_shift = 0.3,
     .max_shift = 1.6},
};

static char tmpdir[256];
static char model_dir[2][512];
static wset te_w[2], dit_w[2], vae_w[2];
static zi_backend *be;

static int dit_ffn(const tcase *c)
{
    return (int)((double)c->dim / 3.0 * 8.0);
}

static void build_te(const tcase *c, wset *s, const char *dir)
{
    const char *pf = c->te_v4 ? "model." : "";
    int D = c->te_hidden, QD = c->te_heads * c->te_hd, KD = c->te_kv * c->te_hd;
    wadd(s, 3, 2, S2(VOCAB, D), "%sembed_tokens.weight", pf);
    for (int l = 0; l < c->te_layers; l++) {
        wadd(s, 1, 1, S1(D), "%slayers.%d.input_layernorm.weight", pf, l);
        wadd(s, 0, 2, S2(QD, D), "%slayers.%d.self_attn.q_proj.weight", pf, l);
        wadd(s, 0, 2, S2(KD, D), "%slayers.%d.self_attn.k_proj.weight", pf, l);
        wadd(s, 0, 2, S2(KD, D), "%slayers.%d.self_attn.v_proj.weight", pf, l);
        wadd(s, 0, 2, S2(D, QD), "%slayers.%d.self_attn.o_proj.weight", pf, l);
        wadd(s, 1, 1, S1(c->te_hd), "%slayers.%d.self_attn.q_norm.weight", pf, l);
        wadd(s, 1, 1, S1(c->te_hd), "%slayers.%d.self_attn.k_norm.weight", pf, l);
        wadd(s, 1, 1, S1(D), "%slayers.%d.post_attention_layernorm.weight", pf, l);
        wadd(s, 0, 2, S2(c->te_inter, D), "%slayers.%d.mlp.gate_proj.weight", pf, l);
        wadd(s, 0, 2, S2(c->te_inter, D), "%slayers.%d.mlp.up_proj.weight", pf, l);
        wadd(s, 0, 2, S2(D, c->te_inter), "%slayers.%d.mlp.down_proj.weight", pf, l);
    }
    wadd(s, 1, 1, S1(D), "%snorm.weight", pf);
    if (c->te_v4)
        wadd(s, 0, 2, S2(VOCAB, D), "lm_head.weight");
    char p[700], cfg[2048];
    if (c->te_v4) {
        /* two shards + index.json (transformers 4 layout) */
        int half = s->n / 2;
        jp(p, sizeof p, dir, "model-00001-of-00002.safetensors");
        write_st(p, s, 0, half, c->te_dt);
        jp(p, sizeof p, dir, "model-00002-of-00002.safetensors");
        write_st(p, s, half, s->n, c->te_dt);
        size_t cap = (size_t)s->n * 180 + 256, len = 0;
        char *idx = malloc(cap);
        assert_non_null(idx);
        len += (size_t)snprintf(idx + len, cap - len,
                                "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {");
        for (int i = 0; i < s->n; i++)
            len += (size_t)snprintf(idx + len, cap - len,
                                    "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                                    i ? ", " : "", s->w[i].name, i < half ? 1 : 2);
        snprintf(idx + len, cap - len, "}}\n");
        jp(p, sizeof p, dir, "model.safetensors.index.json");
        write_text(p, idx);
        free(idx);
        snprintf(cfg, sizeof cfg,
                 "{\"architectures\": [\"Qwen3ForCausalLM\"], \"attention_bias\": false, "
                 "\"attention_dropout\": 0.0, \"bos_token_id\": 151643, \"eos_token_id\": 151645, "
                 "\"head_dim\": %d, \"hidden_act\": \"silu\", \"hidden_size\": %d, "
                 "\"initializer_range\": 0.02, \"intermediate_size\": %d, "
                 "\"max_position_embeddings\": %d, \"max_window_layers\": 36, "
                 "\"model_type\": \"qwen3\", \"num_attention_heads\": %d, "
                 "\"num_hidden_layers\": %d, \"num_key_value_heads\": %d, \"rms_norm_eps\": 1e-06, "
                 "\"rope_scaling\": null, \"rope_theta\": %.1f, \"sliding_window\": null, "
                 "\"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", "
                 "\"transformers_version\": \"4.51.0\", \"use_cache\": true, "
                 "\"use_sliding_window\": false, \"vocab_size\": %d}\n",
                 c->te_hd, D, c->te_inter, c->te_maxpos, c->te_heads, c->te_layers, c->te_kv,
                 c->te_theta, VOCAB);
    } else {
        jp(p, sizeof p, dir, "model.safetensors");
        write_st(p, s, 0, s->n, c->te_dt);
        snprintf(cfg, sizeof cfg,
                 "{\"architectures\": [\"Qwen3Model\"], \"head_dim\": %d, \"hidden_size\": %d, "
                 "\"intermediate_size\": %d, \"max_position_embeddings\": %d, "
                 "\"model_type\": \"qwen3\", \"num_attention_heads\": %d, "
                 "\"num_hidden_layers\": %d, \"num_key_value_heads\": %d, \"rms_norm_eps\": 1e-06, "
                 "\"rope_parameters\": {\"rope_theta\": %.1f, \"rope_type\": \"default\"}, "
                 "\"vocab_size\": %d}\n",
                 c->te_hd, D, c->te_inter, c->te_maxpos, c->te_heads, c->te_layers, c->te_kv,
                 c->te_theta, VOCAB);
    }
    jp(p, sizeof p, dir, "config.json");
    write_text(p, cfg);
}

static void dit_block_w(wset *s, const tcase *c, const char *pf, int mod)
{
    int D = c->dim, F = dit_ffn(c), hd = c->dim / c->n_heads, A = D < 256 ? D : 256;
    wadd(s, 0, 2, S2(D, D), "%s.attention.to_q.weight", pf);
    wadd(s, 0, 2, S2(D, D), "%s.attention.to_k.weight", pf);
    wadd(s, 0, 2, S2(D, D), "%s.attention.to_v.weight", pf);
    wadd(s, 0, 2, S2(D, D), "%s.attention.to_out.0.weight", pf);
    wadd(s, 1, 1, S1(hd), "%s.attention.norm_q.weight", pf);
    wadd(s, 1, 1, S1(hd), "%s.attention.norm_k.weight", pf);
    wadd(s, 1, 1, S1(D), "%s.attention_norm1.weight", pf);
    wadd(s, 1, 1, S1(D), "%s.attention_norm2.weight", pf);
    wadd(s, 1, 1, S1(D), "%s.ffn_norm1.weight", pf);
    wadd(s, 1, 1, S1(D), "%s.ffn_norm2.weight", pf);
    wadd(s, 0, 2, S2(F, D), "%s.feed_forward.w1.weight", pf);
    wadd(s, 0, 2, S2(D, F), "%s.feed_forward.w2.weight", pf);
    wadd(s, 0, 2, S2(F, D), "%s.feed_forward.w3.weight", pf);
    if (mod) {
        wadd(s, 0, 2, S2(4 * D, A), "%s.adaLN_modulation.0.weight", pf);
        wadd(s, 2, 1, S1(4 * D), "%s.adaLN_modulation.0.bias", pf);
    }
}

static void build_dit(const tcase *c, wset *s, const char *dir)
{
    int D = c->dim, A = D < 256 ? D : 256, P = 2 * 2 * 16;
    wadd(s, 0, 2, S2(1024, 256), "t_embedder.mlp.0.weight");
    wadd(s, 2, 1, S1(1024), "t_embedder.mlp.0.bias");
    wadd(s, 0, 2, S2(A, 1024), "t_embedder.mlp.2.weight");
    wadd(s, 2, 1, S1(A), "t_embedder.mlp.2.bias");
    wadd(s, 0, 2, S2(D, P), "all_x_embedder.2-1.weight");
    wadd(s, 2, 1, S1(D), "all_x_embedder.2-1.bias");
    wadd(s, 1, 1, S1(c->te_hidden), "cap_embedder.0.weight");
    wadd(s, 0, 2, S2(D, c->te_hidden), "cap_embedder.1.weight");
    wadd(s, 2, 1, S1(D), "cap_embedder.1.bias");
    wadd(s, 3, 2, S2(1, D), "x_pad_token");
    wadd(s, 3, 2, S2(1, D), "cap_pad_token");
    wadd(s, 0, 2, S2(D, A), "all_final_layer.2-1.adaLN_modulation.1.weight");
    wadd(s, 2, 1, S1(D), "all_final_layer.2-1.adaLN_modulation.1.bias");
    wadd(s, 0, 2, S2(P, D), "all_final_layer.2-1.linear.weight");
    wadd(s, 2, 1, S1(P), "all_final_layer.2-1.linear.bias");
    char pf[64];
    for (int i = 0; i < c->n_ref; i++) {
        snprintf(pf, sizeof pf, "noise_refiner.%d", i);
        dit_block_w(s, c, pf, 1);
        snprintf(pf, sizeof pf, "context_refiner.%d", i);
        dit_block_w(s, c, pf, 0);
    }
    for (int i = 0; i < c->n_layers; i++) {
        snprintf(pf, sizeof pf, "layers.%d", i);
        dit_block_w(s, c, pf, 1);
    }
    if (c->siglip) { /* an Omni checkpoint's image-conditioning modules */
        wadd(s, 1, 1, S1(c->siglip), "siglip_embedder.0.weight");
        wadd(s, 0, 2, S2(D, c->siglip), "siglip_embedder.1.weight");
        wadd(s, 2, 1, S1(D), "siglip_embedder.1.bias");
        wadd(s, 3, 2, S2(1, D), "siglip_pad_token");
        dit_block_w(s, c, "siglip_refiner.0", 0);
    }
    if (c->pair11) { /* patch 1, f_patch 1: P = 16 */
        wadd(s, 0, 2, S2(D, 16), "all_x_embedder.1-1.weight");
        wadd(s, 2, 1, S1(D), "all_x_embedder.1-1.bias");
        wadd(s, 0, 2, S2(D, A), "all_final_layer.1-1.adaLN_modulation.1.weight");
        wadd(s, 2, 1, S1(D), "all_final_layer.1-1.adaLN_modulation.1.bias");
        wadd(s, 0, 2, S2(16, D), "all_final_layer.1-1.linear.weight");
        wadd(s, 2, 1, S1(16), "all_final_layer.1-1.linear.bias");
    }
    char p[700], cfg[2048], sig[32] = "null";
    if (c->siglip)
        snprintf(sig, sizeof sig, "%d", c->siglip);
    jp(p, sizeof p, dir, "diffusion_pytorch_model.safetensors");
    write_st(p, s, 0, s->n, c->dit_dt);
    snprintf(cfg, sizeof cfg,
             "{\"_class_name\": \"ZImageTransformer2DModel\", \"_diffusers_version\": "
             "\"0.36.0.dev0\", \"all_f_patch_size\": %s, \"all_patch_size\": %s, "
             "\"axes_dims\": [%d, %d, %d], \"axes_lens\": [1536, 512, 512], "
             "\"cap_feat_dim\": %d, \"dim\": %d, \"in_channels\": 16, \"n_heads\": %d, "
             "\"n_kv_heads\": %d, \"n_layers\": %d, \"n_refiner_layers\": %d, "
             "\"norm_eps\": 1e-05, \"qk_norm\": true, \"rope_theta\": %.1f, "
             "\"siglip_feat_dim\": %s, \"t_scale\": %.1f}\n",
             c->pair11 ? "[1, 1]" : "[1]", c->pair11 ? "[1, 2]" : "[2]", c->axes[0], c->axes[1],
             c->axes[2], c->te_hidden, D, c->n_heads,
             c->n_heads + 1, /* n_kv_heads: diffusers ignores it, so must we */
             c->n_layers, c->n_ref, c->dit_theta, sig, c->t_scale);
    jp(p, sizeof p, dir, "config.json");
    write_text(p, cfg);
}

static void vae_resnet_w(wset *s, int ci, int co, const char *pf)
{
    wadd(s, 1, 1, S1(ci), "%s.norm1.weight", pf);
    wadd(s, 2, 1, S1(ci), "%s.norm1.bias", pf);
    wadd(s, 0, 4, S4(co, ci, 3, 3), "%s.conv1.weight", pf);
    wadd(s, 2, 1, S1(co), "%s.conv1.bias", pf);
    wadd(s, 1, 1, S1(co), "%s.norm2.weight", pf);
    wadd(s, 2, 1, S1(co), "%s.norm2.bias", pf);
    wadd(s, 0, 4, S4(co, co, 3, 3), "%s.conv2.weight", pf);
    wadd(s, 2, 1, S1(co), "%s.conv2.bias", pf);
    if (ci != co) {
        wadd(s, 0, 4, S4(co, ci, 1, 1), "%s.conv_shortcut.weight", pf);
        wadd(s, 2, 1, S1(co), "%s.conv_shortcut.bias", pf);
    }
}

static void build_vae(const tcase *c, wset *s, const char *dir)
{
    int B = c->nb, top = c->bo[B - 1];
    char pf[96];
    /* a few encoder tensors, which the decoder-only loader must ignore */
    wadd(s, 0, 4, S4(c->bo[0], 3, 3, 3), "encoder.conv_in.weight");
    wadd(s, 2, 1, S1(c->bo[0]), "encoder.conv_in.bias");
    if (c->pqc) {
        wadd(s, 0, 4, S4(16, 16, 1, 1), "post_quant_conv.weight");
        wadd(s, 2, 1, S1(16), "post_quant_conv.bias");
    }
    wadd(s, 0, 4, S4(top, 16, 3, 3), "decoder.conv_in.weight");
    wadd(s, 2, 1, S1(top), "decoder.conv_in.bias");
    for (int k = 0; k < 2; k++) {
        snprintf(pf, sizeof pf, "decoder.mid_block.resnets.%d", k);
        vae_resnet_w(s, top, top, pf);
    }
    if (c->mid_attn) {
        const char *a = "decoder.mid_block.attentions.0";
        wadd(s, 1, 1, S1(top), "%s.group_norm.weight", a);
        wadd(s, 2, 1, S1(top), "%s.group_norm.bias", a);
        const char *lin[4] = {"to_q", "to_k", "to_v", "to_out.0"};
        for (int i = 0; i < 4; i++) {
            wadd(s, 0, 2, S2(top, top), "%s.%s.weight", a, lin[i]);
            wadd(s, 2, 1, S1(top), "%s.%s.bias", a, lin[i]);
        }
    }
    int prev = top;
    for (int i = 0; i < B; i++) {
        int co = c->bo[B - 1 - i];
        for (int j = 0; j <= c->lpb; j++) {
            snprintf(pf, sizeof pf, "decoder.up_blocks.%d.resnets.%d", i, j);
            vae_resnet_w(s, j ? co : prev, co, pf);
        }
        if (i < B - 1) {
            wadd(s, 0, 4, S4(co, co, 3, 3), "decoder.up_blocks.%d.upsamplers.0.conv.weight", i);
            wadd(s, 2, 1, S1(co), "decoder.up_blocks.%d.upsamplers.0.conv.bias", i);
        }
        prev = co;
    }
    wadd(s, 1, 1, S1(prev), "decoder.conv_norm_out.weight");
    wadd(s, 2, 1, S1(prev), "decoder.conv_norm_out.bias");
    wadd(s, 0, 4, S4(3, prev, 3, 3), "decoder.conv_out.weight");
    wadd(s, 2, 1, S1(3), "decoder.conv_out.bias");
    char p[700], cfg[2048], bo[128] = "", types[512] = "";
    for (int i = 0; i < B; i++) {
        size_t l = strlen(bo), t = strlen(types);
        snprintf(bo + l, sizeof bo - l, "%s%d", i ? ", " : "", c->bo[i]);
        snprintf(types + t, sizeof types - t, "%s\"UpDecoderBlock2D\"", i ? ", " : "");
    }
    jp(p, sizeof p, dir, "diffusion_pytorch_model.safetensors");
    write_st(p, s, 0, s->n, c->vae_dt);
    snprintf(cfg, sizeof cfg,
             "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", "
             "\"block_out_channels\": [%s], \"force_upcast\": true, \"in_channels\": 3, "
             "\"latent_channels\": 16, \"layers_per_block\": %d, "
             "\"mid_block_add_attention\": %s, \"norm_num_groups\": %d, \"out_channels\": 3, "
             "\"sample_size\": 256, \"scaling_factor\": %.4f, \"shift_factor\": %.4f, "
             "\"up_block_types\": [%s], %s"
             "\"use_quant_conv\": false}\n",
             bo, c->lpb, c->mid_attn ? "true" : "false", c->groups, c->scaling, c->shift_f, types,
             c->pqc ? "" : "\"use_post_quant_conv\": false, ");
    jp(p, sizeof p, dir, "config.json");
    write_text(p, cfg);
}

static void build_model(int ci)
{
    const tcase *c = &CASES[ci];
    char *d = model_dir[ci], p[700], p2[700];
    snprintf(d, sizeof model_dir[ci], "%s/%s", tmpdir, c->name);
    const char *subs[] = {"", "/scheduler", "/text_encoder", "/tokenizer", "/transformer", "/vae"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        snprintf(p, sizeof p, "%s%s", d, subs[i]);
        assert_int_equal(mkdir(p, 0755), 0);
    }
    snprintf(p, sizeof p, "%s/model_index.json", d);
    write_text(p, "{\"_class_name\": \"ZImagePipeline\", \"_diffusers_version\": \"0.36.0.dev0\", "
                  "\"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"], "
                  "\"text_encoder\": [\"transformers\", \"Qwen3Model\"], "
                  "\"tokenizer\": [\"transformers\", \"Qwen2Tokenizer\"], "
                  "\"transformer\": [\"diffusers\", \"ZImageTransformer2DModel\"], "
                  "\"vae\": [\"diffusers\", \"AutoencoderKL\"]}\n");
    char sch[512];
    snprintf(sch, sizeof sch,
             "{\"_class_name\": \"FlowMatchEulerDiscreteScheduler\", \"num_train_timesteps\": "
             "1000, \"shift\": %.1f, \"use_dynamic_shifting\": %s, \"base_shift\": %.2f, "
             "\"max_shift\": %.2f, \"base_image_seq_len\": 256, \"max_image_seq_len\": 4096, "
             "\"time_shift_type\": \"exponential\", \"shift_terminal\": null}\n",
             c->sched_shift, c->dyn ? "true" : "false", c->dyn ? c->base_shift : 0.5,
             c->dyn ? c->max_shift : 1.15);
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", d);
    write_text(p, sch);
    const char *tk[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "tokenizer/%s", tk[i]);
        snprintf(p2, sizeof p2, "%s/tokenizer/%s", d, tk[i]);
        copy_file(zi_test_model(p), p2);
    }
    rng_state = 1000 + (uint64_t)ci;
    snprintf(p, sizeof p, "%s/text_encoder", d);
    build_te(c, &te_w[ci], p);
    snprintf(p, sizeof p, "%s/transformer", d);
    build_dit(c, &dit_w[ci], p);
    snprintf(p, sizeof p, "%s/vae", d);
    build_vae(c, &vae_w[ci], p);
}

/* ------------------------------------------------------------------------------------ */
/* double-precision reference primitives                                                */

/* out[n, o] = in[n, i] W[o, i]^T + b */
static void r_linear(double *out, const double *in, const float *w, const float *b, int n, int i,
                     int o)
{
    for (int r = 0; r < n; r++)
        for (int k = 0; k < o; k++) {
            double s = b ? b[k] : 0.0;
            const float *wr = w + (size_t)k * i;
            const double *x = in + (size_t)r * i;
            for (int j = 0; j < i; j++)
                s += x[j] * wr[j];
            out[(size_t)r * o + k] = s;
        }
}

static void r_rmsnorm(double *x, const float *w, int n, int d, double eps)
{
    for (int r = 0; r < n; r++) {
        double *v = x + (size_t)r * d, ss = 0;
        for (int j = 0; j < d; j++)
            ss += v[j] * v[j];
        double s = 1.0 / sqrt(ss / d + eps);
        for (int j = 0; j < d; j++)
            v[j] = v[j] * s * (w ? w[j] : 1.0);
    }
}

static double r_silu(double x)
{
    return x / (1.0 + exp(-x));
}

/* o[S, H, hd] = softmax(q k^T * scale [+causal]) v; query head h uses kv head h / (H/KVH) */
static void r_attention(double *o, const double *q, const double *k, const double *v, int S, int H,
                        int KVH, int hd, int causal)
{
    double *p = malloc((size_t)S * sizeof *p);
    assert_non_null(p);
    double scale = 1.0 / sqrt((double)hd);
    for (int h = 0; h < H; h++) {
        int kh = h / (H / KVH);
        for (int i = 0; i < S; i++) {
            int nk = causal ? i + 1 : S;
            double mx = -INFINITY;
            for (int j = 0; j < nk; j++) {
                double s = 0;
                for (int e = 0; e < hd; e++)
                    s += q[((size_t)i * H + h) * hd + e] * k[((size_t)j * KVH + kh) * hd + e];
                p[j] = s * scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            double den = 0;
            for (int j = 0; j < nk; j++) {
                p[j] = exp(p[j] - mx);
                den += p[j];
            }
            for (int e = 0; e < hd; e++) {
                double s = 0;
                for (int j = 0; j < nk; j++)
                    s += p[j] * v[((size_t)j * KVH + kh) * hd + e];
                o[((size_t)i * H + h) * hd + e] = s / den;
            }
        }
    }
    free(p);
}

static double *dalloc(size_t n)
{
    double *p = calloc(n, sizeof *p);
    assert_non_null(p);
    return p;
}

/* ---- Qwen3 (spec §2.4-2.5): residual stream after layer n-2, L real tokens ---- */

static double *ref_qwen3(const tcase *c, const wset *s, const int32_t *ids, int L)
{
    const char *pf = c->te_v4 ? "model." : "";
    int D = c->te_hidden, H = c->te_heads, KVH = c->te_kv, hd = c->te_hd, I = c->te_inter;
    double *h = dalloc((size_t)L * D), *a = dalloc((size_t)L * D);
    double *q = dalloc((size_t)L * H * hd), *k = dalloc((size_t)L * KVH * hd);
    double *v = dalloc((size_t)L * KVH * hd), *o = dalloc((size_t)L * H * hd);
    double *g = dalloc((size_t)L * I), *u = dalloc((size_t)L * I), *t = dalloc((size_t)L * D);
    const float *emb = W(s, "%sembed_tokens.weight", pf);
    for (int r = 0; r < L; r++)
        for (int j = 0; j < D; j++)
            h[(size_t)r * D + j] = emb[(size_t)ids[r] * D + j];
    /* NeoX RoPE: inv_freq = 1 / theta^(2j/hd) and phi = p * inv_freq in fp32 (as
     * transformers), then cos/sin */
    int half = hd / 2;
    double *cs = dalloc((size_t)L * half), *sn = dalloc((size_t)L * half);
    for (int j = 0; j < half; j++) {
        float inv = 1.0f / powf((float)c->te_theta, (float)(2 * j) / (float)hd);
        for (int p = 0; p < L; p++) {
            float phi = (float)p * inv;
            cs[(size_t)p * half + j] = cos((double)phi);
            sn[(size_t)p * half + j] = sin((double)phi);
        }
    }
    for (int l = 0; l < c->te_layers - 1; l++) {
        memcpy(a, h, (size_t)L * D * sizeof *a);
        r_rmsnorm(a, W(s, "%slayers.%d.input_layernorm.weight", pf, l), L, D, 1e-6);
        r_linear(q, a, W(s, "%slayers.%d.self_attn.q_proj.weight", pf, l), NULL, L, D, H * hd);
        r_linear(k, a, W(s, "%slayers.%d.self_attn.k_proj.weight", pf, l), NULL, L, D, KVH * hd);
        r_linear(v, a, W(s, "%slayers.%d.self_attn.v_proj.weight", pf, l), NULL, L, D, KVH * hd);
        r_rmsnorm(q, W(s, "%slayers.%d.self_attn.q_norm.weight", pf, l), L * H, hd, 1e-6);
        r_rmsnorm(k, W(s, "%slayers.%d.self_attn.k_norm.weight", pf, l), L * KVH, hd, 1e-6);
        for (int pass = 0; pass < 2; pass++) {
            double *x = pass ? k : q;
            int nh = pass ? KVH : H;
            for (int p = 0; p < L; p++)
                for (int hh = 0; hh < nh; hh++) {
                    double *e = x + ((size_t)p * nh + hh) * hd;
                    for (int j = 0; j < half; j++) {
                        double c0 = cs[(size_t)p * half + j], s0 = sn[(size_t)p * half + j];
                        double x1 = e[j], x2 = e[j + half];
                        e[j] = x1 * c0 - x2 * s0;
                        e[j + half] = x2 * c0 + x1 * s0;
                    }
                }
        }
        r_attention(o, q, k, v, L, H, KVH, hd, 1);
        r_linear(t, o, W(s, "%slayers.%d.self_attn.o_proj.weight", pf, l), NULL, L, H * hd, D);
        for (size_t j = 0; j < (size_t)L * D; j++)
            h[j] += t[j];
        memcpy(a, h, (size_t)L * D * sizeof *a);
        r_rmsnorm(a, W(s, "%slayers.%d.post_attention_layernorm.weight", pf, l), L, D, 1e-6);
        r_linear(g, a, W(s, "%slayers.%d.mlp.gate_proj.weight", pf, l), NULL, L, D, I);
        r_linear(u, a, W(s, "%slayers.%d.mlp.up_proj.weight", pf, l), NULL, L, D, I);
        for (size_t j = 0; j < (size_t)L * I; j++)
            g[j] = r_silu(g[j]) * u[j];
        r_linear(t, g, W(s, "%slayers.%d.mlp.down_proj.weight", pf, l), NULL, L, I, D);
        for (size_t j = 0; j < (size_t)L * D; j++)
            h[j] += t[j];
    }
    free(a);
    free(q);
    free(k);
    free(v);
    free(o);
    free(g);
    free(u);
    free(t);
    free(cs);
    free(sn);
    return h;
}

/* ---- DiT (spec §3) ---- */

typedef struct rdit {
    const tcase *c;
    const wset *s;
    int D, H, hd, F, A;
    double temb[256];
} rdit;

/* Interleaved RoPE cos/sin for one position id triple: [hd/2] (spec §3.7: omega in
 * float64, angle rounded to fp32, cos/sin of that fp32 angle). */
static void r_rope_row(const rdit *r, const int pos[3], double *cs, double *sn)
{
    int m = 0;
    for (int a = 0; a < 3; a++)
        for (int j = 0; j < r->c->axes[a] / 2; j++, m++) {
            double om = 1.0 / pow(r->c->dit_theta, (double)(2 * j) / (double)r->c->axes[a]);
            float ang = (float)((double)pos[a] * om);
            cs[m] = cos((double)ang);
            sn[m] = sin((double)ang);
        }
}

/* One block in place on x [S, D]; mod: modulated (uses temb). */
static void r_block(const rdit *r, double *x, int S, const char *pf, int mod, const double *cs,
                    const double *sn)
{
    const wset *s = r->s;
    int D = r->D, H = r->H, hd = r->hd, F = r->F, half = hd / 2;
    double sc[2][4096], gt[2][4096];
    assert_true(D <= 4096);
    if (mod) {
        double *m = dalloc((size_t)4 * D);
        r_linear(m, r->temb, W(s, "%s.adaLN_modulation.0.weight", pf),
                 W(s, "%s.adaLN_modulation.0.bias", pf), 1, r->A, 4 * D);
        for (int j = 0; j < D; j++) {
            sc[0][j] = 1.0 + m[j];
            gt[0][j] = tanh(m[D + j]);
            sc[1][j] = 1.0 + m[2 * D + j];
            gt[1][j] = tanh(m[3 * D + j]);
        }
        free(m);
    }
    double *h = dalloc((size_t)S * D), *q = dalloc((size_t)S * D), *k = dalloc((size_t)S * D);
    double *v = dalloc((size_t)S * D), *o = dalloc((size_t)S * D), *t = dalloc((size_t)S * D);
    double *g = dalloc((size_t)S * F), *u = dalloc((size_t)S * F);
    memcpy(h, x, (size_t)S * D * sizeof *h);
    r_rmsnorm(h, W(s, "%s.attention_norm1.weight", pf), S, D, 1e-5);
    if (mod)
        for (int i = 0; i < S; i++)
            for (int j = 0; j < D; j++)
                h[(size_t)i * D + j] *= sc[0][j];
    r_linear(q, h, W(s, "%s.attention.to_q.weight", pf), NULL, S, D, D);
    r_linear(k, h, W(s, "%s.attention.to_k.weight", pf), NULL, S, D, D);
    r_linear(v, h, W(s, "%s.attention.to_v.weight", pf), NULL, S, D, D);
    r_rmsnorm(q, W(s, "%s.attention.norm_q.weight", pf), S * H, hd, 1e-5);
    r_rmsnorm(k, W(s, "%s.attention.norm_k.weight", pf), S * H, hd, 1e-5);
    for (int pass = 0; pass < 2; pass++) {
        double *xx = pass ? k : q;
        for (int i = 0; i < S; i++)
            for (int hh = 0; hh < H; hh++) {
                double *e = xx + ((size_t)i * H + hh) * hd;
                for (int m = 0; m < half; m++) {
                    double c0 = cs[(size_t)i * half + m], s0 = sn[(size_t)i * half + m];
                    double a0 = e[2 * m], a1 = e[2 * m + 1];
                    e[2 * m] = a0 * c0 - a1 * s0;
                    e[2 * m + 1] = a0 * s0 + a1 * c0;
                }
            }
    }
    r_attention(o, q, k, v, S, H, H, hd, 0);
    r_linear(t, o, W(s, "%s.attention.to_out.0.weight", pf), NULL, S, D, D);
    r_rmsnorm(t, W(s, "%s.attention_norm2.weight", pf), S, D, 1e-5);
    for (int i = 0; i < S; i++)
        for (int j = 0; j < D; j++)
            x[(size_t)i * D + j] += (mod ? gt[0][j] : 1.0) * t[(size_t)i * D + j];
    memcpy(h, x, (size_t)S * D * sizeof *h);
    r_rmsnorm(h, W(s, "%s.ffn_norm1.weight", pf), S, D, 1e-5);
    if (mod)
        for (int i = 0; i < S; i++)
            for (int j = 0; j < D; j++)
                h[(size_t)i * D + j] *= sc[1][j];
    r_linear(g, h, W(s, "%s.feed_forward.w1.weight", pf), NULL, S, D, F);
    r_linear(u, h, W(s, "%s.feed_forward.w3.weight", pf), NULL, S, D, F);
    for (size_t j = 0; j < (size_t)S * F; j++)
        g[j] = r_silu(g[j]) * u[j];
    r_linear(t, g, W(s, "%s.feed_forward.w2.weight", pf), NULL, S, F, D);
    r_rmsnorm(t, W(s, "%s.ffn_norm2.weight", pf), S, D, 1e-5);
    for (int i = 0; i < S; i++)
        for (int j = 0; j < D; j++)
            x[(size_t)i * D + j] += (mod ? gt[1][j] : 1.0) * t[(size_t)i * D + j];
    free(h);
    free(q);
    free(k);
    free(v);
    free(o);
    free(t);
    free(g);
    free(u);
}

/* One DiT call: latent [16, lh, lw], cap [L, cap_dim], model time t -> out [16, lh, lw]. */
static void ref_dit(const tcase *c, const wset *s, const float *latent, int lh, int lw,
                    const float *cap, int L, float t, double *out)
{
    rdit r = {.c = c, .s = s, .D = c->dim, .H = c->n_heads, .hd = c->dim / c->n_heads};
    r.F = dit_ffn(c);
    r.A = r.D < 256 ? r.D : 256;
    int D = r.D, half = r.hd / 2, C = 16, p = 2, P = 64, Cf = c->te_hidden;
    /* §3.2 timestep embedding; the sinusoid in fp32 as torch computes it */
    double e[256], mid[1024];
    float tau = t * (float)c->t_scale;
    for (int i = 0; i < 128; i++) {
        float f = expf(((float)-log(10000.0) * (float)i) / 128.0f);
        float arg = tau * f;
        e[i] = cosf(arg);
        e[128 + i] = sinf(arg);
    }
    r_linear(mid, e, W(s, "t_embedder.mlp.0.weight"), W(s, "t_embedder.mlp.0.bias"), 1, 256, 1024);
    for (int i = 0; i < 1024; i++)
        mid[i] = r_silu(mid[i]);
    r_linear(r.temb, mid, W(s, "t_embedder.mlp.2.weight"), W(s, "t_embedder.mlp.2.bias"), 1, 1024,
             r.A);
    /* §3.3-3.6 */
    int Ht = lh / p, Wt = lw / p, N = Ht * Wt, Np = (N + 31) / 32 * 32, Lp = (L + 31) / 32 * 32;
    int S = Np + Lp;
    double *U = dalloc((size_t)S * D), *patch = dalloc((size_t)N * P);
    for (int h = 0; h < Ht; h++)
        for (int w = 0; w < Wt; w++)
            for (int ph = 0; ph < p; ph++)
                for (int pw = 0; pw < p; pw++)
                    for (int ch = 0; ch < C; ch++)
                        patch[(size_t)(h * Wt + w) * P + ph * 32 + pw * 16 + ch] =
                            latent[((size_t)ch * lh + h * p + ph) * lw + w * p + pw];
    r_linear(U, patch, W(s, "all_x_embedder.2-1.weight"), W(s, "all_x_embedder.2-1.bias"), N, P, D);
    for (int i = N; i < Np; i++)
        for (int j = 0; j < D; j++)
            U[(size_t)i * D + j] = W(s, "x_pad_token")[j];
    double *cf = dalloc((size_t)L * Cf);
    for (size_t i = 0; i < (size_t)L * Cf; i++)
        cf[i] = cap[i];
    r_rmsnorm(cf, W(s, "cap_embedder.0.weight"), L, Cf, 1e-5);
    double *Ucap = U + (size_t)Np * D;
    r_linear(Ucap, cf, W(s, "cap_embedder.1.weight"), W(s, "cap_embedder.1.bias"), L, Cf, D);
    for (int i = L; i < Lp; i++)
        for (int j = 0; j < D; j++)
            Ucap[(size_t)i * D + j] = W(s, "cap_pad_token")[j];
    double *cs = dalloc((size_t)S * half), *sn = dalloc((size_t)S * half);
    for (int i = 0; i < S; i++) {
        int pos[3] = {0, 0, 0};
        if (i < N) {
            pos[0] = Lp + 1;
            pos[1] = i / Wt;
            pos[2] = i % Wt;
        } else if (i >= Np) {
            pos[0] = 1 + (i - Np);
        }
        r_rope_row(&r, pos, cs + (size_t)i * half, sn + (size_t)i * half);
    }
    char pf[64];
    for (int i = 0; i < c->n_ref; i++) {
        snprintf(pf, sizeof pf, "noise_refiner.%d", i);
        r_block(&r, U, Np, pf, 1, cs, sn);
        snprintf(pf, sizeof pf, "context_refiner.%d", i);
        r_block(&r, Ucap, Lp, pf, 0, cs + (size_t)Np * half, sn + (size_t)Np * half);
    }
    for (int i = 0; i < c->n_layers; i++) {
        snprintf(pf, sizeof pf, "layers.%d", i);
        r_block(&r, U, S, pf, 1, cs, sn);
    }
    /* §3.11 final layer on the image rows */
    double ta[256], fs[4096];
    for (int i = 0; i < r.A; i++)
        ta[i] = r_silu(r.temb[i]);
    r_linear(fs, ta, W(s, "all_final_layer.2-1.adaLN_modulation.1.weight"),
             W(s, "all_final_layer.2-1.adaLN_modulation.1.bias"), 1, r.A, D);
    for (int i = 0; i < N; i++) {
        double *x = U + (size_t)i * D, mu = 0, var = 0;
        for (int j = 0; j < D; j++)
            mu += x[j];
        mu /= D;
        for (int j = 0; j < D; j++)
            var += (x[j] - mu) * (x[j] - mu);
        var /= D;
        for (int j = 0; j < D; j++)
            x[j] = (x[j] - mu) / sqrt(var + 1e-6) * (1.0 + fs[j]);
    }
    double *y = dalloc((size_t)N * P);
    r_linear(y, U, W(s, "all_final_layer.2-1.linear.weight"),
             W(s, "all_final_layer.2-1.linear.bias"), N, D, P);
    for (int h = 0; h < Ht; h++)
        for (int w = 0; w < Wt; w++)
            for (int ph = 0; ph < p; ph++)
                for (int pw = 0; pw < p; pw++)
                    for (int ch = 0; ch < C; ch++)
                        out[((size_t)ch * lh + h * p + ph) * lw + w * p + pw] =
                            y[(size_t)(h * Wt + w) * P + ph * 32 + pw * 16 + ch];
    free(U);
    free(patch);
    free(cf);
    free(cs);
    free(sn);
    free(y);
}

/* ---- VAE decoder (spec §5.3) ---- */

static void r_conv(double *out, const double *in, const float *w, const float *b, int ci, int co,
                   int H, int Wd, int k)
{
    int pad = k / 2;
    for (int o = 0; o < co; o++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < Wd; x++) {
                double s = b[o];
                for (int i = 0; i < ci; i++)
                    for (int dy = 0; dy < k; dy++) {
                        int yy = y + dy - pad;
                        if (yy < 0 || yy >= H)
                            continue;
                        for (int dx = 0; dx < k; dx++) {
                            int xx = x + dx - pad;
                            if (xx < 0 || xx >= Wd)
                                continue;
                            s += in[((size_t)i * H + yy) * Wd + xx] *
                                 w[(((size_t)o * ci + i) * k + dy) * k + dx];
                        }
                    }
                out[((size_t)o * H + y) * Wd + x] = s;
            }
}

static void r_gn(double *x, const float *g, const float *b, int C, int HW, int G, int silu)
{
    int cg = C / G;
    for (int gi = 0; gi < G; gi++) {
        double *v = x + (size_t)gi * cg * HW, mu = 0, var = 0;
        size_t n = (size_t)cg * HW;
        for (size_t i = 0; i < n; i++)
            mu += v[i];
        mu /= (double)n;
        for (size_t i = 0; i < n; i++)
            var += (v[i] - mu) * (v[i] - mu);
        var /= (double)n;
        double rs = 1.0 / sqrt(var + 1e-6);
        for (int c = 0; c < cg; c++)
            for (int i = 0; i < HW; i++) {
                int ch = gi * cg + c;
                double y = (v[(size_t)c * HW + i] - mu) * rs * g[ch] + b[ch];
                v[(size_t)c * HW + i] = silu ? r_silu(y) : y;
            }
    }
}

/* x [ci, H, W] -> new [co, H, W] */
static double *r_resnet(const tcase *c, const wset *s, double *x, int ci, int co, int H, int Wd,
                        const char *pf)
{
    size_t HW = (size_t)H * Wd;
    double *a = dalloc((size_t)ci * HW), *h = dalloc((size_t)co * HW);
    double *h2 = dalloc((size_t)co * HW), *y = dalloc((size_t)co * HW);
    memcpy(a, x, (size_t)ci * HW * sizeof *a);
    r_gn(a, W(s, "%s.norm1.weight", pf), W(s, "%s.norm1.bias", pf), ci, (int)HW, c->groups, 1);
    r_conv(h, a, W(s, "%s.conv1.weight", pf), W(s, "%s.conv1.bias", pf), ci, co, H, Wd, 3);
    r_gn(h, W(s, "%s.norm2.weight", pf), W(s, "%s.norm2.bias", pf), co, (int)HW, c->groups, 1);
    r_conv(h2, h, W(s, "%s.conv2.weight", pf), W(s, "%s.conv2.bias", pf), co, co, H, Wd, 3);
    if (ci != co)
        r_conv(y, x, W(s, "%s.conv_shortcut.weight", pf), W(s, "%s.conv_shortcut.bias", pf), ci, co,
               H, Wd, 1);
    else
        memcpy(y, x, (size_t)co * HW * sizeof *y);
    for (size_t i = 0; i < (size_t)co * HW; i++)
        y[i] += h2[i];
    free(a);
    free(h);
    free(h2);
    free(x);
    return y;
}

/* latents [16, lh, lw] (sampler output) -> out [3, s*lh, s*lw] */
static double *ref_vae(const tcase *c, const wset *s, const float *lat, int lh, int lw, int *oh,
                       int *ow)
{
    int B = c->nb, C = c->bo[B - 1], H = lh, Wd = lw;
    double *z = dalloc((size_t)16 * lh * lw);
    for (size_t i = 0; i < (size_t)16 * lh * lw; i++)
        z[i] = (double)lat[i] / c->scaling + c->shift_f;
    if (c->pqc) { /* AutoencoderKL._decode: post_quant_conv before the decoder */
        double *q = dalloc((size_t)16 * lh * lw);
        r_conv(q, z, W(s, "post_quant_conv.weight"), W(s, "post_quant_conv.bias"), 16, 16, H, Wd,
               1);
        free(z);
        z = q;
    }
    double *x = dalloc((size_t)C * H * Wd);
    r_conv(x, z, W(s, "decoder.conv_in.weight"), W(s, "decoder.conv_in.bias"), 16, C, H, Wd, 3);
    free(z);
    x = r_resnet(c, s, x, C, C, H, Wd, "decoder.mid_block.resnets.0");
    if (c->mid_attn) {
        const char *a = "decoder.mid_block.attentions.0";
        int N = H * Wd;
        double *t = dalloc((size_t)N * C), *q = dalloc((size_t)N * C), *k = dalloc((size_t)N * C);
        double *v = dalloc((size_t)N * C), *o = dalloc((size_t)N * C), *pr = dalloc((size_t)N * C);
        double *g = dalloc((size_t)C * N);
        memcpy(g, x, (size_t)C * N * sizeof *g);
        r_gn(g, W(s, "%s.group_norm.weight", a), W(s, "%s.group_norm.bias", a), C, N, c->groups, 0);
        for (int ch = 0; ch < C; ch++)
            for (int i = 0; i < N; i++)
                t[(size_t)i * C + ch] = g[(size_t)ch * N + i];
        r_linear(q, t, W(s, "%s.to_q.weight", a), W(s, "%s.to_q.bias", a), N, C, C);
        r_linear(k, t, W(s, "%s.to_k.weight", a), W(s, "%s.to_k.bias", a), N, C, C);
        r_linear(v, t, W(s, "%s.to_v.weight", a), W(s, "%s.to_v.bias", a), N, C, C);
        r_attention(o, q, k, v, N, 1, 1, C, 0);
        r_linear(pr, o, W(s, "%s.to_out.0.weight", a), W(s, "%s.to_out.0.bias", a), N, C, C);
        for (int ch = 0; ch < C; ch++)
            for (int i = 0; i < N; i++)
                x[(size_t)ch * N + i] += pr[(size_t)i * C + ch];
        free(t);
        free(q);
        free(k);
        free(v);
        free(o);
        free(pr);
        free(g);
    }
    x = r_resnet(c, s, x, C, C, H, Wd, "decoder.mid_block.resnets.1");
    int prev = C;
    char pf[96];
    for (int i = 0; i < B; i++) {
        int co = c->bo[B - 1 - i];
        for (int j = 0; j <= c->lpb; j++) {
            snprintf(pf, sizeof pf, "decoder.up_blocks.%d.resnets.%d", i, j);
            x = r_resnet(c, s, x, j ? co : prev, co, H, Wd, pf);
        }
        if (i < B - 1) {
            double *up = dalloc((size_t)co * 4 * H * Wd), *y = dalloc((size_t)co * 4 * H * Wd);
            for (int ch = 0; ch < co; ch++)
                for (int yy = 0; yy < 2 * H; yy++)
                    for (int xx = 0; xx < 2 * Wd; xx++)
                        up[((size_t)ch * 2 * H + yy) * 2 * Wd + xx] =
                            x[((size_t)ch * H + yy / 2) * Wd + xx / 2];
            H *= 2;
            Wd *= 2;
            snprintf(pf, sizeof pf, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            r_conv(y, up, W(s, "%s.weight", pf), W(s, "%s.bias", pf), co, co, H, Wd, 3);
            free(up);
            free(x);
            x = y;
        }
        prev = co;
    }
    r_gn(x, W(s, "decoder.conv_norm_out.weight"), W(s, "decoder.conv_norm_out.bias"), prev, H * Wd,
         c->groups, 1);
    double *out = dalloc((size_t)3 * H * Wd);
    r_conv(out, x, W(s, "decoder.conv_out.weight"), W(s, "decoder.conv_out.bias"), prev, 3, H, Wd,
           3);
    free(x);
    *oh = H;
    *ow = Wd;
    return out;
}

static double rel_err_d(const float *out, const double *ref, size_t n)
{
    double mx = 0, md = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(ref[i]));
        md = fmax(md, fabs((double)out[i] - ref[i]));
    }
    return mx > 0 ? md / mx : md;
}

/* ------------------------------------------------------------------------------------ */
/* pipeline runs with hooks                                                             */

typedef struct run_ctx {
    const tcase *c;
    int ci;
    float guidance;
    int C, lh, lw, steps;
    double shift;
    int dyn;   /* dynamic shifting: sigma = e^mu / (e^mu + 1/s - 1) */
    double mu; /* calculate_shift((lh/2) * (lw/2)) */
    /* captured */
    int32_t *ids[2];
    float *emb[2];
    int L[2];
    float *x;    /* sampler's own replay of the latents (f32, as the pipeline) */
    float *prev; /* the latents before the current step */
    float *out0[2];
    float *last_in;     /* the latents given to the DiT at the last step */
    float *last_out[2]; /* its raw outputs */
    float *final;
    int bad_step;
    double worst_step;
} run_ctx;

static int on_caption(void *ud, int branch, const int32_t *ids, const float *emb, int L, int D)
{
    run_ctx *r = ud;
    r->L[branch] = L;
    r->ids[branch] = malloc((size_t)L * sizeof(int32_t));
    r->emb[branch] = malloc((size_t)L * (size_t)D * sizeof(float));
    memcpy(r->ids[branch], ids, (size_t)L * sizeof(int32_t));
    memcpy(r->emb[branch], emb, (size_t)L * (size_t)D * sizeof(float));
    return 0;
}

/* Base sigma i of N: linspace(1, 1/N, N), in double. */
static double base_sigma(int i, int N)
{
    return N == 1 ? 1.0 : 1.0 + (double)i * (1.0 / N - 1.0) / (double)(N - 1);
}

/* Sigma i of N (spec §4.1: the static shift; or dynamic shifting with mu), in double. */
static double ref_sigma(int i, const run_ctx *r)
{
    if (i >= r->steps)
        return 0.0;
    double s = base_sigma(i, r->steps);
    if (r->dyn)
        return exp(r->mu) / (exp(r->mu) + (1.0 / s - 1.0));
    return r->shift * s / (1.0 + (r->shift - 1.0) * s);
}

/* Model time of step i as diffusers computes it in fp32 (golden README: torch's linspace,
 * then the shift on the fp32 array, timestep = sigma * 1000, t = (1000 - timestep) / 1000). */
static float model_time(int i, const run_ctx *r)
{
    const int N = r->steps;
    float s = 1.0f, sig;
    if (N > 1) {
        float start = 1.0f, end = (float)(1.0 / N), step = (end - start) / (float)(N - 1);
        s = i < N / 2 ? fmaf(step, (float)i, start) : fmaf(-step, (float)(N - 1 - i), end);
    }
    if (r->dyn) {
        float e = (float)exp(r->mu), x = 1.0f / s - 1.0f;
        sig = e / (e + x);
    } else {
        float num = (float)r->shift * s, den = 1.0f + (float)(r->shift - 1.0) * s;
        sig = num / den;
    }
    float ts = sig * 1000.0f;
    return (1000.0f - ts) / 1000.0f;
}

static int on_step(void *ud, int step, const float *lat, const float *const *mo, int n_out, int C,
                   int lh, int lw)
{
    run_ctx *r = ud;
    size_t n = (size_t)C * lh * lw;
    if (n_out != (r->guidance > 0 ? 2 : 1) || C != 16 || lh != r->lh || lw != r->lw) {
        r->bad_step = 1;
        return 0;
    }
    if (step == 0)
        for (int b = 0; b < n_out; b++) {
            r->out0[b] = malloc(n * sizeof(float));
            memcpy(r->out0[b], mo[b], n * sizeof(float));
        }
    /* Euler with v = -(pos + g (pos - neg)), from the pipeline's own DiT outputs */
    double dt = ref_sigma(step + 1, r) - ref_sigma(step, r);
    double mx = 0, md = 0;
    for (size_t k = 0; k < n; k++) {
        double pred = mo[0][k];
        if (n_out == 2)
            pred += (double)r->guidance * ((double)mo[0][k] - mo[1][k]);
        double want = (double)r->x[k] - dt * pred;
        mx = fmax(mx, fabs(want));
        md = fmax(md, fabs(want - lat[k]));
        r->x[k] = lat[k];
    }
    double e = md / (mx > 0 ? mx : 1);
    if (e > r->worst_step)
        r->worst_step = e;
    if (step == r->steps - 1) {
        r->final = malloc(n * sizeof(float));
        memcpy(r->final, lat, n * sizeof(float));
    }
    if (step == r->steps - 1 && step > 0) {
        r->last_in = malloc(n * sizeof(float));
        memcpy(r->last_in, r->prev, n * sizeof(float));
        for (int b = 0; b < n_out; b++) {
            r->last_out[b] = malloc(n * sizeof(float));
            memcpy(r->last_out[b], mo[b], n * sizeof(float));
        }
    }
    memcpy(r->prev, lat, n * sizeof(float));
    return 0;
}

static zi_pipeline *pipes[2];

static uint8_t *run(int ci, const char *prompt, int w, int h, int steps, float guidance,
                    uint64_t seed, zi_rng_kind rk, run_ctx *rc_out)
{
    zi_pipeline *p = pipes[ci];
    int scale = zi_vae_scale(&zi_pipeline_config(p)->vae);
    run_ctx *r = rc_out;
    memset(r, 0, sizeof *r);
    r->c = &CASES[ci];
    r->ci = ci;
    r->guidance = guidance;
    r->C = 16;
    r->lh = h / scale;
    r->lw = w / scale;
    r->steps = steps;
    r->shift = CASES[ci].sched_shift;
    r->dyn = CASES[ci].dyn;
    /* pipeline_z_image.calculate_shift with base/max_image_seq_len 256 / 4096 */
    r->mu = CASES[ci].base_shift + (double)((r->lh / 2) * (r->lw / 2) - 256) *
                                       (CASES[ci].max_shift - CASES[ci].base_shift) / 3840.0;
    size_t n = (size_t)16 * r->lh * r->lw;
    r->x = malloc(n * sizeof(float));
    r->prev = malloc(n * sizeof(float));
    assert_true(r->x && r->prev);
    assert_int_equal(zi_randn(r->x, n, seed, rk), ZI_OK);
    memcpy(r->prev, r->x, n * sizeof(float));
    zi_gen_params g = {.prompt = prompt,
                       .negative_prompt = NULL,
                       .width = w,
                       .height = h,
                       .steps = steps,
                       .guidance = guidance,
                       .seed = seed,
                       .rng = rk};
    zi_gen_debug dbg = {.on_caption = on_caption, .on_step = on_step, .ud = r};
    uint8_t *rgb = NULL;
    int rc = zi_pipeline_generate_ex(p, &g, NULL, NULL, &dbg, &rgb);
    if (rc)
        fail_msg("%s %dx%d steps %d: %s", CASES[ci].name, w, h, steps, zi_errmsg());
    assert_false(r->bad_step);
    return rgb;
}

static float *latents0(int ci, int w, int h, uint64_t seed, zi_rng_kind rk)
{
    int scale = zi_vae_scale(&zi_pipeline_config(pipes[ci])->vae);
    size_t n = (size_t)16 * (h / scale) * (w / scale);
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    assert_int_equal(zi_randn(x, n, seed, rk), ZI_OK);
    return x;
}

static void ctx_free(run_ctx *r)
{
    for (int b = 0; b < 2; b++) {
        free(r->ids[b]);
        free(r->emb[b]);
        free(r->out0[b]);
        free(r->last_out[b]);
    }
    free(r->last_in);
    free(r->prev);
    free(r->x);
    free(r->final);
}

/* Checks of one run against the references: encoder, DiT call 0 (each branch), Euler
 * steps, and (when vae) the decoder against the returned image. */
static void check_run(run_ctx *r, const uint8_t *rgb, int w, int h, uint64_t seed, zi_rng_kind rk,
                      int check_vae)
{
    const tcase *c = r->c;
    int ci = r->ci, D = c->te_hidden;
    size_t n = (size_t)16 * r->lh * r->lw;
    int nb = r->guidance > 0 ? 2 : 1;
    float *x0 = latents0(ci, w, h, seed, rk);
    for (int b = 0; b < nb; b++) {
        assert_non_null(r->emb[b]);
        double *e = ref_qwen3(c, &te_w[ci], r->ids[b], r->L[b]);
        double err = rel_err_d(r->emb[b], e, (size_t)r->L[b] * D);
        free(e);
        if (!(err <= TOL))
            fail_msg("%s: text encoder branch %d (L %d): rel err %.3g", c->name, b, r->L[b], err);
        assert_non_null(r->out0[b]);
        double *o = dalloc(n);
        ref_dit(c, &dit_w[ci], x0, r->lh, r->lw, r->emb[b], r->L[b], model_time(0, r), o);
        err = rel_err_d(r->out0[b], o, n);
        if (!(err <= TOL))
            fail_msg("%s %dx%d: DiT call 0 branch %d: rel err %.3g", c->name, w, h, b, err);
        if (r->last_in) { /* a call with t > 0: checks t_scale and the sinusoid */
            float tl = model_time(r->steps - 1, r);
            assert_true(tl > 0.0f);
            ref_dit(c, &dit_w[ci], r->last_in, r->lh, r->lw, r->emb[b], r->L[b], tl, o);
            err = rel_err_d(r->last_out[b], o, n);
            if (!(err <= TOL))
                fail_msg("%s %dx%d: DiT last call (t %g) branch %d: rel err %.3g", c->name, w, h,
                         (double)tl, b, err);
        }
        free(o);
    }
    if (!(r->worst_step <= 1e-5))
        fail_msg("%s: Euler step (shift %g%s) off by %.3g", c->name, r->shift,
                 r->dyn ? ", dynamic" : "", r->worst_step);
    if (check_vae) {
        int oh, ow;
        double *img = ref_vae(c, &vae_w[ci], r->final, r->lh, r->lw, &oh, &ow);
        assert_int_equal(oh, h);
        assert_int_equal(ow, w);
        /* float decoder through the library vs the reference */
        zi_vae *v = zi_pipeline_vae(pipes[ci]);
        zi_tensor z = {0}, out = {0};
        const int64_t sh[3] = {16, r->lh, r->lw};
        assert_int_equal(be->alloc(be, &z, 3, sh), ZI_OK);
        assert_int_equal(be->upload(be, &z, r->final, n), ZI_OK);
        zi_vae_denormalize(v, &z, r->lh, r->lw);
        assert_int_equal(zi_vae_decode(v, &z, r->lh, r->lw, &out, NULL, NULL), ZI_OK);
        float *of = malloc((size_t)3 * h * w * sizeof *of);
        assert_int_equal(be->download(be, of, &out, (size_t)3 * h * w), ZI_OK);
        double err = rel_err_d(of, img, (size_t)3 * h * w);
        if (!(err <= TOL))
            fail_msg("%s %dx%d: VAE decoder rel err %.3g", c->name, w, h, err);
        /* the pipeline's RGB: round(clamp(out / 2 + 0.5, 0, 1) * 255), HWC */
        int worst = 0;
        for (int y = 0; y < h; y++)
            for (int xx = 0; xx < w; xx++)
                for (int ch = 0; ch < 3; ch++) {
                    double vv = img[((size_t)ch * h + y) * w + xx] * 0.5 + 0.5;
                    vv = vv < 0 ? 0 : vv > 1 ? 1 : vv;
                    int d = abs((int)lround(vv * 255.0) - rgb[((size_t)y * w + xx) * 3 + ch]);
                    worst = d > worst ? d : worst;
                }
        if (worst > 1)
            fail_msg("%s %dx%d: rgb differs from the reference decode by %d levels", c->name, w, h,
                     worst);
        free(of);
        be->free(be, &z);
        be->free(be, &out);
        free(img);
    }
    free(x0);
}

static int all_finite_nonflat(const uint8_t *rgb, size_t n)
{
    int mn = 255, mx = 0;
    for (size_t i = 0; i < n; i++) {
        mn = rgb[i] < mn ? rgb[i] : mn;
        mx = rgb[i] > mx ? rgb[i] : mx;
    }
    return mx > mn;
}

/* ------------------------------------------------------------------------------------ */
/* tests                                                                                */

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/zi_shapes_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    be = zi_backend_cpu_new(1);
    if (!be)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        zi_pipeline_free(pipes[i]);
        wset_free(&te_w[i]);
        wset_free(&dit_w[i]);
        wset_free(&vae_w[i]);
    }
    zi_backend_destroy(be);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return zi_test_run(cmd, NULL, 0) == 0 ? 0 : -1;
}

static void test_load(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        build_model(i);
        if (zi_pipeline_load(model_dir[i], be, &pipes[i]) != ZI_OK)
            fail_msg("load %s: %s", CASES[i].name, zi_errmsg());
        const zi_model_config *m = zi_pipeline_config(pipes[i]);
        const tcase *c = &CASES[i];
        assert_int_equal(m->te.head_dim, c->te_hd);
        assert_int_equal(m->te.n_kv_heads, c->te_kv);
        assert_true(fabs(m->te.rope_theta - c->te_theta) < 1e-9);
        assert_int_equal(m->dit.axes_dims[1], c->axes[1]);
        assert_int_equal(m->vae.n_blocks, c->nb);
        assert_int_equal(zi_vae_scale(&m->vae), 1 << (c->nb - 1));
        assert_true(fabs(m->sched.shift - c->sched_shift) < 1e-6);
        assert_int_equal(m->sched.use_dynamic_shifting, c->dyn);
        if (c->dyn)
            assert_true(m->sched.base_shift == c->base_shift && m->sched.max_shift == c->max_shift);
    }
}

/* Sizes whose token grid needs image pad rows, non-square, against every reference. */
static void test_sizes_reference(void **state)
{
    (void)state;
    static const struct {
        int ci, w, h, steps;
        float g;
        uint64_t seed;
    } m[] = {
        {0, 80, 48, 2, 0.0f, 0},                         /* A: 10x6 = 60 tokens -> 4 pad rows */
        {0, 112, 144, 1, 0.0f, 4294967301ull},           /* A: 14x18 = 252 -> 4 pad rows */
        {1, 80, 48, 2, 0.0f, 9223372036854775808ull},    /* B: 5x3 = 15 -> 17 pad rows */
        {1, 112, 144, 5, 0.0f, 18446744073709551615ull}, /* B: 7x9 = 63 -> 1 pad row */
        {1, 64, 128, 2, 2.5f, 7},                        /* B: CFG, empty negative prompt */
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        run_ctx r;
        uint8_t *rgb = run(m[i].ci, "a red fox sits under a cherry blossom tree", m[i].w, m[i].h,
                           m[i].steps, m[i].g, m[i].seed, ZI_RNG_CUDA, &r);
        assert_true(all_finite_nonflat(rgb, (size_t)m[i].w * m[i].h * 3));
        if (m[i].g > 0) /* the negative branch is the empty prompt: 8 template tokens */
            assert_int_equal(r.L[1], 8);
        check_run(&r, rgb, m[i].w, m[i].h, m[i].seed, ZI_RNG_CUDA, 1);
        /* deterministic */
        run_ctx r2;
        uint8_t *rgb2 = run(m[i].ci, "a red fox sits under a cherry blossom tree", m[i].w, m[i].h,
                            m[i].steps, m[i].g, m[i].seed, ZI_RNG_CUDA, &r2);
        assert_memory_equal(rgb, rgb2, (size_t)m[i].w * m[i].h * 3);
        ctx_free(&r);
        ctx_free(&r2);
        free(rgb);
        free(rgb2);
    }
}

/* A prompt of more than 512 tokens is cut to 512 ids (above max_position_embeddings 128 of
 * model A); encoder and DiT still match their references. */
static void test_long_prompt(void **state)
{
    (void)state;
    size_t cap = 8192;
    char *prompt = malloc(cap);
    assert_non_null(prompt);
    prompt[0] = 0;
    for (int i = 0; i < 300; i++) {
        size_t l = strlen(prompt);
        snprintf(prompt + l, cap - l, "cat %d, ", i);
    }
    run_ctx r;
    uint8_t *rgb = run(0, prompt, 64, 64, 1, 0.0f, 3, ZI_RNG_CPU, &r);
    assert_int_equal(r.L[0], 512);
    assert_int_equal(r.ids[0][0], 151644); /* <|im_start|> */
    check_run(&r, rgb, 64, 64, 3, ZI_RNG_CPU, 0);
    ctx_free(&r);
    free(rgb);
    free(prompt);
}

/* Step counts and seeds: finite, deterministic, RNG kinds and seeds give other images. */
static void test_steps_seeds(void **state)
{
    (void)state;
    static const int steps[] = {1, 2, 5, 50};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        run_ctx r;
        uint8_t *rgb = run(0, "steps", 64, 64, steps[i], 0.0f, 11, ZI_RNG_CUDA, &r);
        assert_true(r.worst_step <= 1e-5);
        assert_true(all_finite_nonflat(rgb, 64 * 64 * 3));
        ctx_free(&r);
        free(rgb);
    }
    static const uint64_t seeds[] = {0, 4294967301ull, 9223372036854775808ull,
                                     18446744073709551615ull};
    uint8_t *img[4][2];
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 2; k++) {
            run_ctx r;
            img[i][k] =
                run(1, "seeds", 64, 64, 2, 0.0f, seeds[i], k ? ZI_RNG_CPU : ZI_RNG_CUDA, &r);
            ctx_free(&r);
        }
    for (int i = 0; i < 4; i++) {
        assert_memory_not_equal(img[i][0], img[i][1], 64 * 64 * 3);
        for (int j = 0; j < i; j++)
            assert_memory_not_equal(img[i][0], img[j][0], 64 * 64 * 3);
    }
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 2; k++)
            free(img[i][k]);
}

/* The CLI loads the other-shape checkpoint and applies the size rules. */
static void test_cli(void **state)
{
    (void)state;
    const char *bin = getenv("ZI_BINARY");
    if (!bin || !*bin)
        bin = ZI_BINARY;
    char cmd[2048], png[600];
    snprintf(png, sizeof png, "%s/cli.png", tmpdir);
    snprintf(cmd, sizeof cmd,
             "'%s' generate --model '%s' --prompt 'a small boat' --width 96 --height 64 "
             "--steps 2 --seed 18446744073709551615 --backend cpu --quiet --output '%s' "
             ">/dev/null 2>&1",
             bin, model_dir[0], png);
    assert_int_equal(zi_test_run(cmd, NULL, 0), 0);
    struct stat st;
    assert_int_equal(stat(png, &st), 0);
    assert_true(st.st_size > 100);
    static const char *bad[] = {"--width 72 --height 64", "--width 48 --height 64",
                                "--width 4112 --height 64", "--width 64 --height 4100",
                                "--width 4096 --height 4096"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd,
                 "'%s' generate --model '%s' --prompt x %s --steps 1 --seed 1 --backend cpu "
                 "--quiet --output '%s/bad.png' >/dev/null 2>&1",
                 bin, model_dir[0], bad[i], tmpdir);
        if (zi_test_run(cmd, NULL, 0) != 2)
            fail_msg("CLI accepted %s", bad[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load),        cmocka_unit_test(test_sizes_reference),
        cmocka_unit_test(test_long_prompt), cmocka_unit_test(test_steps_seeds),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
