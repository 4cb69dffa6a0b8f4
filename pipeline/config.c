/*
 * config.c - component configs of a diffusers checkpoint folder (spec §1.3).
 *
 * Keys that set a size are required; the few optional keys take the default of the
 * Python class that wrote the file (noted at each use). Derived sizes follow the
 * reference code: DiT ffn_hidden = int(dim / 3 * 8), adaln_dim = min(dim, 256),
 * head_dim = dim / n_heads; text encoder head_dim defaults to hidden / heads.
 * Text encoder configs from transformers 4 (top-level rope_theta, Qwen3ForCausalLM) and
 * transformers 5 (rope_parameters.rope_theta, Qwen3Model) are both accepted.
 * Every error names the file and the key.
 */
#include "config.h"
#include "json_util.h"
#include "tokenizer.h"
#include "zi_err.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define ZI_CONFIG_MAX_BYTES (1u << 20)

/* Evaluates a getter and returns its status on failure. */
#define ZI_CFG_TRY(expr)                                                                           \
    do {                                                                                           \
        int zi_cfg_rc_ = (expr);                                                                   \
        if (zi_cfg_rc_)                                                                            \
            return zi_cfg_rc_;                                                                     \
    } while (0)

/* Sizes (widths, channels, vocabulary, positions) are bounded far above any real model
 * (Qwen3-4B's vocabulary: 151936), so that sizes derived from them (the DiT's
 * int(dim / 3 * 8), products in size_t) never overflow. */
#define ZI_CFG_MAX_SIZE (1 << 24)

static int zi_cfg_positive(const char *file, const char *key, int v)
{
    if (v <= 0 || v > ZI_CFG_MAX_SIZE)
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: %d, expected a positive integer up to %d",
                         file, key, v, ZI_CFG_MAX_SIZE);
    return ZI_OK;
}

static int zi_cfg_pos_int(const cJSON *o, const char *key, const char *file, int *out)
{
    ZI_CFG_TRY(zi_json_int(o, key, file, out));
    return zi_cfg_positive(file, key, *out);
}

/* Layer counts size per-layer tables before any tensor is read, so an absurd count must
 * fail here rather than as a terabyte calloc. The bounds are far above any real model
 * (Qwen3-4B: 36 layers, Z-Image DiT: 30, the Flux VAE: 2 per block). */
#define ZI_CFG_MAX_LAYERS 1024
#define ZI_CFG_MAX_LAYERS_PER_BLOCK 64

static int zi_cfg_at_most(const char *file, const char *key, int v, int max)
{
    if (v > max)
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: %d is out of range (at most %d)", file, key,
                         v, max);
    return ZI_OK;
}

/* A number the pipeline uses as a float: finite after the conversion to float, and > 0
 * when `positive` (else merely != 0 when `nonzero`), so a tiny eps cannot round to 0 behind
 * the check. *out keeps the double (for values the reference computes with in double). */
static int zi_cfg_number(const cJSON *o, const char *key, const char *file, int positive,
                         int nonzero, double *out)
{
    double d;
    ZI_CFG_TRY(zi_json_double(o, key, file, &d));
    float f = (float)d;
    if (!isfinite(f) || (positive && !(f > 0.0f)) || (nonzero && f == 0.0f))
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: %g is out of range%s", file, key, d,
                         positive ? " (expected a positive float)" : "");
    *out = d;
    return ZI_OK;
}

/* zi_cfg_number, stored as float. */
static int zi_cfg_float(const cJSON *o, const char *key, const char *file, int positive,
                        int nonzero, float *out)
{
    double d = 0;
    ZI_CFG_TRY(zi_cfg_number(o, key, file, positive, nonzero, &d));
    *out = (float)d;
    return ZI_OK;
}

/* A key whose only implemented value is the string `want`: absent or null is fine (the
 * library's default is `want`), anything else is refused by name. */
static int zi_cfg_only_str(const cJSON *o, const char *key, const char *file, const char *want)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v) || (cJSON_IsString(v) && strcmp(v->valuestring, want) == 0))
        return ZI_OK;
    if (cJSON_IsString(v))
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: \"%.32s\" is not supported (only \"%s\")",
                         file, key, v->valuestring, want);
    return zi_errorf(ZI_EFORMAT, "file %s: key %s: expected the string \"%s\"", file, key, want);
}

/* A flag whose "true" the pipeline does not implement (absent, null or false is fine). */
static int zi_cfg_only_false(const cJSON *o, const char *key, const char *file, const char *what)
{
    int on;
    ZI_CFG_TRY(zi_json_bool_opt(o, key, file, 0, &on));
    if (on)
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: true is not supported (%s)", file, key,
                         what);
    return ZI_OK;
}

/* ---- text encoder (Qwen3) ---- */

/* Qwen3 sliding-window attention: transformers 5's layer_types says which layers use it
 * ("sliding_attention"); without layer_types (transformers 4) the layers from
 * max_window_layers (default 28) on do when use_sliding_window is true. It changes nothing
 * when the window covers every prompt (ZI_TOKENIZER_MAX_LEN ids); a shorter one is
 * refused. */
static int zi_te_sliding_window(const cJSON *o, const char *file, int n_layers)
{
    int sliding = 0;
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(o, "layer_types"), *t;
    if (cJSON_IsArray(types)) {
        cJSON_ArrayForEach(t, types)
        {
            if (cJSON_IsString(t) && strcmp(t->valuestring, "sliding_attention") == 0)
                sliding = 1;
        }
    } else {
        int use = 0, from = 28;
        ZI_CFG_TRY(zi_json_bool_opt(o, "use_sliding_window", file, 0, &use));
        ZI_CFG_TRY(zi_json_int_opt(o, "max_window_layers", file, 28, &from));
        sliding = use && from < n_layers;
    }
    const cJSON *win = cJSON_GetObjectItemCaseSensitive(o, "sliding_window");
    if (!sliding || !win || cJSON_IsNull(win))
        return ZI_OK;
    if (!cJSON_IsNumber(win))
        return zi_errorf(ZI_EFORMAT, "file %s: key sliding_window: expected a number", file);
    if (win->valuedouble < ZI_TOKENIZER_MAX_LEN)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: key sliding_window: %g is not supported (sliding-window "
                         "attention over fewer than %d tokens)",
                         file, win->valuedouble, ZI_TOKENIZER_MAX_LEN);
    return ZI_OK;
}

static int zi_te_config_from(const cJSON *o, const char *file, zi_te_config *c)
{
    memset(c, 0, sizeof *c);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
    if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "qwen3") != 0))
        return zi_errorf(ZI_EFORMAT, "file %s: key model_type: expected \"qwen3\"", file);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(o, "architectures");
    if (arch && !cJSON_IsNull(arch)) {
        int ok = 0;
        const cJSON *a;
        if (cJSON_IsArray(arch))
            cJSON_ArrayForEach(a, arch)
            {
                if (cJSON_IsString(a) && (strcmp(a->valuestring, "Qwen3Model") == 0 ||
                                          strcmp(a->valuestring, "Qwen3ForCausalLM") == 0))
                    ok = 1;
            }
        if (!ok)
            return zi_errorf(ZI_EFORMAT,
                             "file %s: key architectures: expected Qwen3Model or Qwen3ForCausalLM",
                             file);
    }
    ZI_CFG_TRY(zi_cfg_pos_int(o, "hidden_size", file, &c->hidden));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "num_hidden_layers", file, &c->n_layers));
    ZI_CFG_TRY(zi_cfg_at_most(file, "num_hidden_layers", c->n_layers, ZI_CFG_MAX_LAYERS));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "num_attention_heads", file, &c->n_heads));
    /* Qwen3Config: num_key_value_heads None means multi-head attention */
    ZI_CFG_TRY(zi_json_int_opt(o, "num_key_value_heads", file, c->n_heads, &c->n_kv_heads));
    ZI_CFG_TRY(zi_cfg_positive(file, "num_key_value_heads", c->n_kv_heads));
    if (c->n_heads % c->n_kv_heads)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: key num_key_value_heads: %d does not divide "
                         "num_attention_heads %d",
                         file, c->n_kv_heads, c->n_heads);
    /* Qwen3Config: head_dim None means hidden_size // num_attention_heads */
    ZI_CFG_TRY(zi_json_int_opt(o, "head_dim", file, c->hidden / c->n_heads, &c->head_dim));
    ZI_CFG_TRY(zi_cfg_positive(file, "head_dim", c->head_dim));
    if (c->head_dim % 2)
        return zi_errorf(ZI_EFORMAT, "file %s: key head_dim: %d is odd (RoPE needs pairs)", file,
                         c->head_dim);
    ZI_CFG_TRY(zi_cfg_pos_int(o, "intermediate_size", file, &c->intermediate));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "vocab_size", file, &c->vocab));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "max_position_embeddings", file, &c->max_position));
    ZI_CFG_TRY(zi_cfg_float(o, "rms_norm_eps", file, 1, 0, &c->rms_eps));
    /* transformers 4 writes rope_theta at the top level, transformers 5 inside
     * rope_parameters; only the default (unscaled) RoPE is implemented */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
    const cJSON *top = cJSON_GetObjectItemCaseSensitive(o, "rope_theta");
    if (top && !cJSON_IsNull(top)) {
        ZI_CFG_TRY(zi_json_double(o, "rope_theta", file, &c->rope_theta));
    } else if (rp && !cJSON_IsNull(rp)) {
        if (!cJSON_IsObject(rp))
            return zi_errorf(ZI_EFORMAT, "file %s: key rope_parameters: expected an object", file);
        const cJSON *th = cJSON_GetObjectItemCaseSensitive(rp, "rope_theta");
        if (!th || cJSON_IsNull(th))
            return zi_errorf(ZI_EFORMAT, "file %s: key rope_parameters.rope_theta: missing", file);
        if (!cJSON_IsNumber(th))
            return zi_errorf(ZI_EFORMAT,
                             "file %s: key rope_parameters.rope_theta: expected a number", file);
        c->rope_theta = th->valuedouble;
    } else {
        return zi_errorf(ZI_EFORMAT,
                         "file %s: key rope_theta: missing (neither rope_theta nor "
                         "rope_parameters.rope_theta)",
                         file);
    }
    const cJSON *scal = rp && cJSON_IsObject(rp) ? rp : o;
    const cJSON *rt = cJSON_GetObjectItemCaseSensitive(scal, "rope_type");
    if (rt && cJSON_IsString(rt) && strcmp(rt->valuestring, "default") != 0)
        return zi_errorf(ZI_EFORMAT, "file %s: key rope_type: \"%.32s\" is not supported", file,
                         rt->valuestring);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return zi_errorf(ZI_EFORMAT, "file %s: key rope_scaling: RoPE scaling is not supported",
                         file);
    if (!(c->rope_theta > 0.0) || !isfinite(c->rope_theta))
        return zi_errorf(ZI_EFORMAT, "file %s: key rope_theta: expected a positive number", file);
    ZI_CFG_TRY(zi_cfg_only_str(o, "hidden_act", file, "silu"));
    ZI_CFG_TRY(zi_cfg_only_false(o, "attention_bias", file, "q/k/v/o projections with biases"));
    return zi_te_sliding_window(o, file, c->n_layers);
}

/* ---- transformer (ZImageTransformer2DModel) ---- */

/* all_patch_size[i] / all_f_patch_size[i] name the embedder and final layer "p-f" of each
 * pair. ZImagePipeline calls the transformer with its defaults, patch_size 2 and
 * f_patch_size 1, so the pair 2-1 is the one that runs, wherever the lists hold it (the
 * transformer asserts that it is there). */
static int zi_dit_patch_pair(const cJSON *o, const char *file, zi_dit_config *c)
{
    int ps[ZI_DIT_MAX_PATCH_PAIRS], fs[ZI_DIT_MAX_PATCH_PAIRS], np, nf;
    ZI_CFG_TRY(zi_json_int_array(o, "all_patch_size", file, ps, ZI_DIT_MAX_PATCH_PAIRS, &np));
    ZI_CFG_TRY(zi_json_int_array(o, "all_f_patch_size", file, fs, ZI_DIT_MAX_PATCH_PAIRS, &nf));
    if (np != nf)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: keys all_patch_size / all_f_patch_size: %d and %d elements, "
                         "expected one f_patch per patch",
                         file, np, nf);
    c->n_pairs = np;
    for (int i = 0; i < np; i++) {
        c->pairs[i][0] = ps[i];
        c->pairs[i][1] = fs[i];
    }
    for (int i = 0; i < np; i++)
        if (ps[i] == ZI_DIT_RUN_PATCH && fs[i] == ZI_DIT_RUN_F_PATCH) {
            c->patch = ps[i];
            c->f_patch = fs[i];
            return ZI_OK;
        }
    return zi_errorf(ZI_EFORMAT,
                     "file %s: keys all_patch_size / all_f_patch_size: no pair %d-%d (the "
                     "patch sizes ZImagePipeline runs the transformer with)",
                     file, ZI_DIT_RUN_PATCH, ZI_DIT_RUN_F_PATCH);
}

static int zi_dit_config_from(const cJSON *o, const char *file, zi_dit_config *c)
{
    memset(c, 0, sizeof *c);
    int arr[8], n;
    ZI_CFG_TRY(zi_cfg_pos_int(o, "in_channels", file, &c->in_channels));
    ZI_CFG_TRY(zi_dit_patch_pair(o, file, c));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "dim", file, &c->dim));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "n_layers", file, &c->n_layers));
    ZI_CFG_TRY(zi_cfg_at_most(file, "n_layers", c->n_layers, ZI_CFG_MAX_LAYERS));
    ZI_CFG_TRY(zi_json_int(o, "n_refiner_layers", file, &c->n_refiner_layers));
    if (c->n_refiner_layers < 0)
        return zi_errorf(ZI_EFORMAT, "file %s: key n_refiner_layers: negative", file);
    ZI_CFG_TRY(zi_cfg_at_most(file, "n_refiner_layers", c->n_refiner_layers, ZI_CFG_MAX_LAYERS));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "n_heads", file, &c->n_heads));
    /* n_kv_heads is recorded only: diffusers passes it to every block, which ignores it
     * (keys and values have n_heads heads), so any value gives the same model */
    ZI_CFG_TRY(zi_json_int_opt(o, "n_kv_heads", file, c->n_heads, &c->n_kv_heads));
    /* siglip_feat_dim (Omni checkpoints): image-conditioning modules that text-to-image
     * never calls; their tensors are accepted and left unread */
    ZI_CFG_TRY(zi_json_int_opt(o, "siglip_feat_dim", file, 0, &c->siglip_feat_dim));
    if (c->siglip_feat_dim < 0)
        return zi_errorf(ZI_EFORMAT, "file %s: key siglip_feat_dim: negative", file);
    if (c->dim % c->n_heads)
        return zi_errorf(ZI_EFORMAT, "file %s: key n_heads: %d does not divide dim %d", file,
                         c->n_heads, c->dim);
    c->head_dim = c->dim / c->n_heads;
    /* diffusers: FeedForward(hidden_dim=int(dim / 3 * 8)), float division then truncation */
    c->ffn_hidden = (int)((double)c->dim / 3.0 * 8.0);
    c->adaln_dim = c->dim < 256 ? c->dim : 256;
    ZI_CFG_TRY(zi_cfg_pos_int(o, "cap_feat_dim", file, &c->cap_feat_dim));
    ZI_CFG_TRY(zi_cfg_float(o, "norm_eps", file, 1, 0, &c->norm_eps));
    ZI_CFG_TRY(zi_json_bool(o, "qk_norm", file, &c->qk_norm));
    ZI_CFG_TRY(zi_json_double(o, "rope_theta", file, &c->rope_theta));
    if (!(c->rope_theta > 0.0))
        return zi_errorf(ZI_EFORMAT, "file %s: key rope_theta: expected a positive number", file);
    ZI_CFG_TRY(zi_cfg_float(o, "t_scale", file, 1, 0, &c->t_scale));
    ZI_CFG_TRY(zi_json_int_array(o, "axes_dims", file, arr, 8, &n));
    if (n != 3)
        return zi_errorf(ZI_EFORMAT, "file %s: key axes_dims: %d elements, expected 3", file, n);
    int sum = 0;
    for (int i = 0; i < 3; i++) {
        if (arr[i] <= 0 || arr[i] % 2)
            return zi_errorf(ZI_EFORMAT,
                             "file %s: key axes_dims[%d]: expected a positive even "
                             "integer",
                             file, i);
        c->axes_dims[i] = arr[i];
        sum += arr[i];
    }
    if (sum != c->head_dim)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: key axes_dims: sum %d differs from head_dim %d (dim / n_heads)",
                         file, sum, c->head_dim);
    ZI_CFG_TRY(zi_json_int_array(o, "axes_lens", file, arr, 8, &n));
    if (n != 3)
        return zi_errorf(ZI_EFORMAT, "file %s: key axes_lens: %d elements, expected 3", file, n);
    for (int i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof key, "axes_lens[%d]", i);
        ZI_CFG_TRY(zi_cfg_positive(file, key, arr[i]));
        c->axes_lens[i] = arr[i];
    }
    return ZI_OK;
}

/* ---- VAE (AutoencoderKL) ---- */

static int zi_vae_config_from(const cJSON *o, const char *file, zi_vae_config *c)
{
    memset(c, 0, sizeof *c);
    ZI_CFG_TRY(zi_cfg_pos_int(o, "in_channels", file, &c->in_channels));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "out_channels", file, &c->out_channels));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "latent_channels", file, &c->latent_channels));
    ZI_CFG_TRY(zi_json_int_array(o, "block_out_channels", file, c->block_out, ZI_VAE_MAX_BLOCKS,
                                 &c->n_blocks));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "layers_per_block", file, &c->layers_per_block));
    ZI_CFG_TRY(
        zi_cfg_at_most(file, "layers_per_block", c->layers_per_block, ZI_CFG_MAX_LAYERS_PER_BLOCK));
    ZI_CFG_TRY(zi_cfg_pos_int(o, "norm_num_groups", file, &c->norm_groups));
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out[i] <= 0 || c->block_out[i] > ZI_CFG_MAX_SIZE ||
            c->block_out[i] % c->norm_groups)
            return zi_errorf(ZI_EFORMAT,
                             "file %s: key block_out_channels[%d]: %d is not a positive multiple "
                             "of norm_num_groups %d",
                             file, i, c->block_out[i], c->norm_groups);
    ZI_CFG_TRY(zi_cfg_float(o, "scaling_factor", file, 0, 1, &c->scaling_factor));
    /* AutoencoderKL: shift_factor None means no shift */
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(o, "shift_factor");
    c->shift_factor = 0.0f;
    if (sh && !cJSON_IsNull(sh))
        ZI_CFG_TRY(zi_cfg_float(o, "shift_factor", file, 0, 0, &c->shift_factor));
    /* AutoencoderKL: mid_block_add_attention and use_post_quant_conv default to True */
    ZI_CFG_TRY(zi_json_bool_opt(o, "mid_block_add_attention", file, 1, &c->mid_attention));
    ZI_CFG_TRY(zi_json_bool_opt(o, "use_post_quant_conv", file, 1, &c->post_quant_conv));
    ZI_CFG_TRY(zi_cfg_only_str(o, "act_fn", file, "silu"));
    const cJSON *ub = cJSON_GetObjectItemCaseSensitive(o, "up_block_types"), *t;
    if (ub && !cJSON_IsNull(ub)) {
        if (!cJSON_IsArray(ub) || cJSON_GetArraySize(ub) != c->n_blocks)
            return zi_errorf(ZI_EFORMAT,
                             "file %s: key up_block_types: expected %d names (one per "
                             "block_out_channels entry)",
                             file, c->n_blocks);
        cJSON_ArrayForEach(t, ub)
        {
            if (!cJSON_IsString(t) || strcmp(t->valuestring, "UpDecoderBlock2D") != 0)
                return zi_errorf(ZI_EFORMAT,
                                 "file %s: key up_block_types: only \"UpDecoderBlock2D\" is "
                                 "supported",
                                 file);
        }
    }
    return ZI_OK;
}

/* ---- scheduler (FlowMatchEulerDiscreteScheduler) ---- */

void zi_sched_config_defaults(zi_sched_config *c)
{
    c->base_shift = 0.5;
    c->max_shift = 1.15;
    c->base_seq_len = 256;
    c->max_seq_len = 4096;
    c->time_shift_linear = 0;
}

static int zi_sched_config_from(const cJSON *o, const char *file, zi_sched_config *c)
{
    memset(c, 0, sizeof *c);
    zi_sched_config_defaults(c);
    ZI_CFG_TRY(zi_cfg_pos_int(o, "num_train_timesteps", file, &c->num_train_timesteps));
    ZI_CFG_TRY(zi_cfg_number(o, "shift", file, 1, 0, &c->shift));
    /* FlowMatchEulerDiscreteScheduler: use_dynamic_shifting defaults to False */
    ZI_CFG_TRY(zi_json_bool_opt(o, "use_dynamic_shifting", file, 0, &c->use_dynamic_shifting));
    ZI_CFG_TRY(zi_json_double_opt(o, "base_shift", file, c->base_shift, &c->base_shift));
    ZI_CFG_TRY(zi_json_double_opt(o, "max_shift", file, c->max_shift, &c->max_shift));
    ZI_CFG_TRY(
        zi_json_double_opt(o, "base_image_seq_len", file, c->base_seq_len, &c->base_seq_len));
    ZI_CFG_TRY(zi_json_double_opt(o, "max_image_seq_len", file, c->max_seq_len, &c->max_seq_len));
    if (!isfinite(c->base_shift) || !isfinite(c->max_shift) || !isfinite(c->base_seq_len) ||
        !isfinite(c->max_seq_len) || c->max_seq_len == c->base_seq_len)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: key max_image_seq_len: base_/max_shift and "
                         "base_/max_image_seq_len must be finite, the two lengths different",
                         file);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "time_shift_type");
    if (ts && !cJSON_IsNull(ts)) {
        if (cJSON_IsString(ts) && strcmp(ts->valuestring, "linear") == 0)
            c->time_shift_linear = 1;
        else
            ZI_CFG_TRY(zi_cfg_only_str(o, "time_shift_type", file, "exponential"));
    }
    /* sigma schedules other than the shifted linspace, and their modifiers, are refused */
    static const char *const flags[] = {"use_karras_sigmas", "use_exponential_sigmas",
                                        "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        ZI_CFG_TRY(zi_cfg_only_false(o, flags[i], file, "only the shifted linear sigmas"));
    const cJSON *term = cJSON_GetObjectItemCaseSensitive(o, "shift_terminal");
    if (term && !cJSON_IsNull(term) && !(cJSON_IsNumber(term) && term->valuedouble == 0.0))
        return zi_errorf(ZI_EFORMAT, "file %s: key shift_terminal: not supported (only null)",
                         file);
    return ZI_OK;
}

/* ---- entry points ---- */

typedef int (*zi_cfg_from_fn)(const cJSON *o, const char *file, void *out);

static int zi_cfg_parse(const char *json, size_t len, const char *label, zi_cfg_from_fn fn,
                        void *out)
{
    cJSON *root;
    if (!json)
        return zi_errorf(ZI_EINVAL, "config: NULL text");
    ZI_CFG_TRY(zi_json_parse(json, len, label ? label : "(config)", &root));
    int rc = fn(root, label ? label : "(config)", out);
    cJSON_Delete(root);
    return rc;
}

static int zi_cfg_load(const char *path, zi_cfg_from_fn fn, void *out)
{
    cJSON *root;
    ZI_CFG_TRY(zi_json_load_file(path, ZI_CONFIG_MAX_BYTES, &root));
    int rc = fn(root, path, out);
    cJSON_Delete(root);
    return rc;
}

/* Adapters from the typed functions to zi_cfg_from_fn. */
static int zi_te_from_v(const cJSON *o, const char *f, void *c)
{
    return zi_te_config_from(o, f, c);
}
static int zi_dit_from_v(const cJSON *o, const char *f, void *c)
{
    return zi_dit_config_from(o, f, c);
}
static int zi_vae_from_v(const cJSON *o, const char *f, void *c)
{
    return zi_vae_config_from(o, f, c);
}
static int zi_sched_from_v(const cJSON *o, const char *f, void *c)
{
    return zi_sched_config_from(o, f, c);
}

int zi_te_config_parse(const char *json, size_t len, const char *label, zi_te_config *out)
{
    return zi_cfg_parse(json, len, label, zi_te_from_v, out);
}
int zi_dit_config_parse(const char *json, size_t len, const char *label, zi_dit_config *out)
{
    return zi_cfg_parse(json, len, label, zi_dit_from_v, out);
}
int zi_vae_config_parse(const char *json, size_t len, const char *label, zi_vae_config *out)
{
    return zi_cfg_parse(json, len, label, zi_vae_from_v, out);
}
int zi_sched_config_parse(const char *json, size_t len, const char *label, zi_sched_config *out)
{
    return zi_cfg_parse(json, len, label, zi_sched_from_v, out);
}

int zi_te_config_load(const char *path, zi_te_config *out)
{
    return zi_cfg_load(path, zi_te_from_v, out);
}
int zi_dit_config_load(const char *path, zi_dit_config *out)
{
    return zi_cfg_load(path, zi_dit_from_v, out);
}
int zi_vae_config_load(const char *path, zi_vae_config *out)
{
    return zi_cfg_load(path, zi_vae_from_v, out);
}
int zi_sched_config_load(const char *path, zi_sched_config *out)
{
    return zi_cfg_load(path, zi_sched_from_v, out);
}

/* model_index.json must list every component the pipeline reads. */
static int zi_model_index_check(const char *path)
{
    static const char *const comps[] = {"scheduler", "text_encoder", "tokenizer", "transformer",
                                        "vae"};
    cJSON *root;
    ZI_CFG_TRY(zi_json_load_file(path, ZI_CONFIG_MAX_BYTES, &root));
    int rc = ZI_OK;
    const char *cls;
    rc = zi_json_string(root, "_class_name", path, &cls);
    if (!rc && strcmp(cls, "ZImagePipeline") != 0)
        rc = zi_errorf(ZI_EFORMAT, "file %s: key _class_name: \"%.64s\", expected ZImagePipeline",
                       path, cls);
    for (size_t i = 0; !rc && i < sizeof comps / sizeof comps[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, comps[i]);
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2)
            rc = zi_errorf(ZI_EFORMAT, "file %s: key %s: missing or not [library, class]", path,
                           comps[i]);
    }
    cJSON_Delete(root);
    return rc;
}

/* A size one component's config repeats from another's (`other` names it, e.g. "the
 * transformer's in_channels"): the two must agree, or the weights would not fit. */
static int zi_cfg_agree(const char *file, const char *key, int v, const char *other, int want)
{
    if (v == want)
        return ZI_OK;
    return zi_errorf(ZI_EFORMAT, "file %s: key %s: %d differs from %s %d", file, key, v, other,
                     want);
}

int zi_config_load(const char *dir, zi_model_config *out)
{
    char p[4096];
    memset(out, 0, sizeof *out);
#define ZI_CFG_PATH(rel)                                                                           \
    do {                                                                                           \
        int w_ = snprintf(p, sizeof p, "%s/%s", dir, rel);                                         \
        if (w_ < 0 || (size_t)w_ >= sizeof p)                                                      \
            return zi_errorf(ZI_EINVAL, "model folder %s: path too long", dir);                    \
    } while (0)
    ZI_CFG_PATH("model_index.json");
    ZI_CFG_TRY(zi_model_index_check(p));
    ZI_CFG_PATH("text_encoder/config.json");
    ZI_CFG_TRY(zi_te_config_load(p, &out->te));
    ZI_CFG_PATH("transformer/config.json");
    ZI_CFG_TRY(zi_dit_config_load(p, &out->dit));
    ZI_CFG_TRY(zi_cfg_agree(p, "cap_feat_dim", out->dit.cap_feat_dim,
                            "the text encoder's hidden_size", out->te.hidden));
    ZI_CFG_PATH("vae/config.json");
    ZI_CFG_TRY(zi_vae_config_load(p, &out->vae));
    ZI_CFG_TRY(zi_cfg_agree(p, "latent_channels", out->vae.latent_channels,
                            "the transformer's in_channels", out->dit.in_channels));
    ZI_CFG_PATH("scheduler/scheduler_config.json");
    ZI_CFG_TRY(zi_sched_config_load(p, &out->sched));
#undef ZI_CFG_PATH
    return ZI_OK;
}

void zi_config_zimage_turbo(zi_model_config *out)
{
    /* spec §1.3: Tongyi-MAI/Z-Image-Turbo as shipped (Qwen3-4B original, not 2507) */
    memset(out, 0, sizeof *out);
    zi_te_config *te = &out->te;
    te->hidden = 2560;
    te->n_layers = 36;
    te->n_heads = 32;
    te->n_kv_heads = 8;
    te->head_dim = 128;
    te->intermediate = 9728;
    te->vocab = 151936;
    te->rope_theta = 1e6;
    te->rms_eps = 1e-6f;
    te->max_position = 40960;

    zi_dit_config *d = &out->dit;
    d->in_channels = 16;
    d->patch = 2;
    d->f_patch = 1;
    d->n_pairs = 1;
    d->pairs[0][0] = 2;
    d->pairs[0][1] = 1;
    d->dim = 3840;
    d->n_layers = 30;
    d->n_refiner_layers = 2;
    d->n_heads = 30;
    d->n_kv_heads = 30;
    d->head_dim = 3840 / 30;
    d->cap_feat_dim = 2560;
    d->ffn_hidden = (int)(3840.0 / 3.0 * 8.0);
    d->adaln_dim = 256;
    d->norm_eps = 1e-5f;
    d->qk_norm = 1;
    d->rope_theta = 256.0;
    d->t_scale = 1000.0f;
    d->axes_dims[0] = 32;
    d->axes_dims[1] = 48;
    d->axes_dims[2] = 48;
    d->axes_lens[0] = 1536;
    d->axes_lens[1] = 512;
    d->axes_lens[2] = 512;

    zi_vae_config *v = &out->vae;
    v->in_channels = 3;
    v->out_channels = 3;
    v->latent_channels = 16;
    v->n_blocks = 4;
    v->block_out[0] = 128;
    v->block_out[1] = 256;
    v->block_out[2] = 512;
    v->block_out[3] = 512;
    v->layers_per_block = 2;
    v->norm_groups = 32;
    v->scaling_factor = 0.3611f;
    v->shift_factor = 0.1159f;
    v->mid_attention = 1;

    out->sched.num_train_timesteps = 1000;
    out->sched.shift = 3.0;
    out->sched.use_dynamic_shifting = 0;
    zi_sched_config_defaults(&out->sched);
}
