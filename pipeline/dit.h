/*
 * dit.h - the Z-Image diffusion transformer (diffusers ZImageTransformer2DModel, basic
 * text-to-image mode, batch 1) on the backend interface.
 *
 * One forward: timestep embedding -> patchify + x_embedder (+ learned pad rows) -> noise
 * refiner (modulated, image RoPE) -> unified [image; caption] stream through the main
 * layers (modulated) -> final layer -> unpatchify. The caption side (cap_embedder, pad
 * rows, context refiner, caption RoPE) depends only on the prompt and is computed once by
 * zi_dit_prepare_caption(); everything that depends only on the model time t (temb, every
 * block's modulation vectors, the final scale) is computed once per distinct t and reused
 * (CFG runs two forwards per step with the same t).
 *
 * Every size comes from zi_dit_config; the model code holds no loops over activations (only
 * host tables: RoPE cos/sin, timestep frequencies, patch reordering of the latent).
 * Limits: f_patch must be 1 (one frame), the latent sides must be multiples of `patch`,
 * position ids must fit axes_lens, head_dim = dim / n_heads must equal sum(axes_dims).
 * As in diffusers, n_kv_heads is not used: K and V have n_heads heads.
 *
 * Reference: diffusers models/transformers/transformer_z_image.py; docs/zimage-spec.md
 * sections 1.4 and 3.
 */
#ifndef ZI_DIT_H
#define ZI_DIT_H

#include "backend.h"
#include "config.h"
#include "safetensors.h"

#include <stdint.h>

/* Sequences are padded to a multiple of this with the learned pad tokens (SEQ_MULTI_OF). */
#define ZI_DIT_SEQ_MULTI 32
/* Sinusoidal timestep features and the t_embedder's hidden width (fixed in diffusers). */
#define ZI_DIT_FREQ_DIM 256
#define ZI_DIT_T_MID 1024

typedef struct zi_dit zi_dit;
typedef struct zi_dit_caption zi_dit_caption;

/*
 * Intermediate tap: called with a backend tensor holding `rows` x `cols` values, valid only
 * during the call. Names (golden "dit.*" without the prefix): "t_embedder" [1, adaln],
 * "cap_embedder" [L_pad, dim], "context_refiner.i" [L_pad, dim] (both during
 * zi_dit_prepare_caption), "x_embedder" [N_pad, dim], "noise_refiner.i" [N_pad, dim],
 * "layers.i" [N_pad + L_pad, dim] (image rows then caption rows), "final_layer"
 * [N_pad + L_pad, patch*patch*C] (all rows while a tap is set). A nonzero return aborts
 * the call with that code.
 */
typedef int (*zi_dit_tap_fn)(void *ud, const char *name, const zi_tensor *t, int rows, int cols);

/* Loads the transformer from its folder (DIR/transformer; sharded or single file). */
int zi_dit_load(const char *transformer_dir, const zi_dit_config *cfg, zi_backend *be,
                zi_dit **out);

/* Loads from an open checkpoint. The typed tensor table is checked completely: a missing,
 * extra or mis-shaped tensor is an error naming it. `st` may be closed afterwards. */
int zi_dit_load_st(const zi_st *st, const zi_dit_config *cfg, zi_backend *be, zi_dit **out);

/* The same model with random weights (deterministic in `seed`), for benchmarks. */
int zi_dit_load_random(const zi_dit_config *cfg, zi_backend *be, uint64_t seed, zi_dit **out);

void zi_dit_free(zi_dit *d);

const zi_dit_config *zi_dit_get_config(const zi_dit *d);

/* Bytes of weights held on the backend. */
uint64_t zi_dit_weight_bytes(const zi_dit *d);

/* Frees the activation workspace and the cached RoPE tables (they are rebuilt on the next
 * call): the pipeline calls it before the VAE decode so the two peaks do not add up. */
void zi_dit_trim(zi_dit *d);

/* Sets (or clears, fn = NULL) the intermediate tap. */
void zi_dit_set_tap(zi_dit *d, zi_dit_tap_fn fn, void *ud);

/*
 * Prompt-only work, done once per prompt: cap_feats [L, cap_feat_dim] host f32 (the text
 * encoder's output, L >= 1) -> the context-refined caption rows [L_pad, dim] and the
 * caption RoPE tables, kept on the backend in *out. The caption stays valid while `d`
 * lives; free it with zi_dit_caption_free().
 */
int zi_dit_prepare_caption(zi_dit *d, const float *cap_feats, int L, zi_dit_caption **out);
void zi_dit_caption_free(zi_dit_caption *c);
/* Real caption tokens (L) and padded rows (L_pad). */
int zi_dit_caption_len(const zi_dit_caption *c, int *L_pad);

/* Computes temb, the modulation vectors of every modulated block and the final-layer scale
 * for model time t ((1000 - timestep) / 1000); a no-op when t is the cached one. */
int zi_dit_prepare_time(zi_dit *d, float t);

/*
 * One transformer call: latent [C, lh, lw] host f32 (C = in_channels; the frame axis of
 * diffusers is implied) -> out [C, lh, lw] host f32, the raw model output (the pipeline
 * negates it). lh and lw must be multiples of patch. `out` may alias `latent`.
 */
int zi_dit_forward(zi_dit *d, const zi_dit_caption *cap, float t, const float *latent, int lh,
                   int lw, float *out);

#endif
