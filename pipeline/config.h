/*
 * config.h - model configuration read from a diffusers checkpoint folder.
 *
 * The checkpoint's config files are the only source of sizes: model_index.json,
 * text_encoder/config.json (transformers 4: top-level rope_theta; transformers 5:
 * rope_parameters.rope_theta), transformer/config.json, vae/config.json and
 * scheduler/scheduler_config.json. Nothing here is specific to one model size.
 */
#ifndef ZI_CONFIG_H
#define ZI_CONFIG_H

#include <stddef.h>

#define ZI_VAE_MAX_BLOCKS 8
/* ZImagePipeline calls the transformer with its default patch_size / f_patch_size */
#define ZI_DIT_RUN_PATCH 2
#define ZI_DIT_RUN_F_PATCH 1
#define ZI_DIT_MAX_PATCH_PAIRS 8

typedef struct zi_te_config {
    int hidden;       /* hidden_size */
    int n_layers;     /* num_hidden_layers (the encoder runs layers 0 .. n_layers-2) */
    int n_heads;      /* num_attention_heads */
    int n_kv_heads;   /* num_key_value_heads */
    int head_dim;     /* head_dim (default hidden / n_heads) */
    int intermediate; /* intermediate_size */
    int vocab;        /* vocab_size */
    double rope_theta;
    float rms_eps;
    int max_position; /* max_position_embeddings */
} zi_te_config;

typedef struct zi_dit_config {
    int in_channels;
    int patch;   /* the pair that runs: ZI_DIT_RUN_PATCH ... */
    int f_patch; /* ... and ZI_DIT_RUN_F_PATCH, found in all_patch_size / all_f_patch_size */
    int n_pairs; /* every pair the checkpoint has (embedder + final layer "p-f" each) */
    int pairs[ZI_DIT_MAX_PATCH_PAIRS][2];
    int dim;
    int n_layers;
    int n_refiner_layers;
    int n_heads;
    int n_kv_heads;      /* recorded, unused: diffusers ignores it (K/V have n_heads heads) */
    int siglip_feat_dim; /* Omni variants (0 = null): their siglip_* weights are unused here */
    int head_dim;        /* dim / n_heads */
    int cap_feat_dim;
    int ffn_hidden; /* int(dim / 3 * 8) */
    int adaln_dim;  /* min(dim, 256) */
    float norm_eps;
    int qk_norm;
    double rope_theta;
    float t_scale;
    int axes_dims[3];
    int axes_lens[3];
} zi_dit_config;

typedef struct zi_vae_config {
    int in_channels;
    int out_channels;
    int latent_channels;
    int n_blocks;
    int block_out[ZI_VAE_MAX_BLOCKS];
    int layers_per_block;
    int norm_groups;
    float scaling_factor;
    float shift_factor;
    int mid_attention;
    int post_quant_conv; /* use_post_quant_conv: a 1x1 conv latent -> latent before conv_in */
} zi_vae_config;

typedef struct zi_sched_config {
    int num_train_timesteps;
    double shift; /* kept in double: set_timesteps takes shift - 1 in Python floats */
    int use_dynamic_shifting;
    /* dynamic shifting only: mu = calculate_shift(image_seq_len, base_image_seq_len,
     * max_image_seq_len, base_shift, max_shift), time_shift_type exponential or linear */
    double base_shift, max_shift;     /* 0.5, 1.15 */
    double base_seq_len, max_seq_len; /* base_image_seq_len 256, max_image_seq_len 4096 */
    int time_shift_linear;            /* time_shift_type == "linear" */
} zi_sched_config;

/* The diffusers defaults of the dynamic-shifting keys (FlowMatchEulerDiscreteScheduler). */
void zi_sched_config_defaults(zi_sched_config *c);

typedef struct zi_model_config {
    zi_te_config te;
    zi_dit_config dit;
    zi_vae_config vae;
    zi_sched_config sched;
} zi_model_config;

/* Reads every component config under `dir`. Errors name the file and the key. */
int zi_config_load(const char *dir, zi_model_config *out);

/* Individual files (for tools and tests). */
int zi_te_config_load(const char *path, zi_te_config *out);
int zi_dit_config_load(const char *path, zi_dit_config *out);
int zi_vae_config_load(const char *path, zi_vae_config *out);
int zi_sched_config_load(const char *path, zi_sched_config *out);

/* The same from a JSON text held in memory (tools, tests and the fuzz target); `label`
 * names the source in errors. Added by the loading engineer. */
int zi_te_config_parse(const char *json, size_t len, const char *label, zi_te_config *out);
int zi_dit_config_parse(const char *json, size_t len, const char *label, zi_dit_config *out);
int zi_vae_config_parse(const char *json, size_t len, const char *label, zi_vae_config *out);
int zi_sched_config_parse(const char *json, size_t len, const char *label, zi_sched_config *out);

/* The real Z-Image-Turbo configuration (built-in copy, for bench --random-weights). */
void zi_config_zimage_turbo(zi_model_config *out);

#endif
