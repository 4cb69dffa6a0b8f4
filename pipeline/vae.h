/*
 * vae.h - the Flux/Z-Image VAE decoder (diffusers AutoencoderKL, decoder only).
 *
 * Latents [Clat, lh, lw] -> image [out_channels, s*lh, s*lw] with s = 2^(n_blocks-1),
 * then uint8 RGB. All sizes come from the vae config (block_out_channels, layers_per_block,
 * norm_num_groups, mid_block_add_attention); the model code calls only the backend
 * (backend.h). Batch 1 only.
 *
 * Memory: activations grow linearly with the pixel count and every intermediate is freed
 * as soon as it is dead; the mid attention is flash-style (be->attention, 1 head, hd = C),
 * never an N x N matrix. zi_vae_peak_estimate() gives the high-water mark of the
 * decoder's own activations before a run; zi_vae_last_mem() reports what a run used.
 *
 * Reference: diffusers autoencoders/vae.py Decoder, unets/unet_2d_blocks.py
 * (UNetMidBlock2D, UpDecoderBlock2D), resnet.py ResnetBlock2D, attention_processor.py;
 * docs/zimage-spec.md sections 1.6, 5.2-5.4.
 */
#ifndef ZI_VAE_H
#define ZI_VAE_H

#include "backend.h"
#include "config.h"
#include "safetensors.h"

#include <stdint.h>

typedef struct zi_vae zi_vae;

/*
 * Called after each decoder stage with its output t [C, h, w] (a backend tensor, valid
 * only during the call). Names match the golden vectors without the "vae.decoder."
 * prefix: "conv_in", "mid_block", "up_blocks.0" ... "up_blocks.{n-1}", "conv_norm_out"
 * (the GroupNorm output, before SiLU), "conv_out". A nonzero return aborts the decode
 * with that code. With a tap the decoder keeps GroupNorm and SiLU of conv_norm_out
 * apart (one extra buffer); without one they are fused.
 */
typedef int (*zi_vae_tap_fn)(void *ud, const char *name, const zi_tensor *t, int C, int h, int w);

/* Decoder memory figures of the last zi_vae_decode (bytes). */
typedef struct zi_vae_mem {
    uint64_t act_peak;     /* high-water mark of the decoder's own live activations */
    uint64_t backend_peak; /* be->mem_stats().peak read after the decode (0 if not kept) */
    uint64_t weights;      /* bytes of the decoder's weights on the backend */
} zi_vae_mem;

/* Loads the decoder from the checkpoint's vae/ folder (zi_st_open_dir). */
int zi_vae_load(const char *vae_dir, const zi_vae_config *cfg, zi_backend *be, zi_vae **out);

/* Loads the decoder from an open file. Every tensor of the typed table must be present
 * with the shape implied by cfg; an unexpected "decoder.*" tensor is an error too. The
 * error names the file and the tensor. `st` may be closed after the call. */
int zi_vae_load_st(const zi_st *st, const zi_vae_config *cfg, zi_backend *be, zi_vae **out);

/* A decoder of cfg's shapes with random weights (N(0, 1/fan_in) convs, GroupNorm gamma
 * around 1), deterministic in `seed`: for benchmarks without a checkpoint. */
int zi_vae_load_random(const zi_vae_config *cfg, zi_backend *be, uint64_t seed, zi_vae **out);

void zi_vae_free(zi_vae *vae);

/* The spatial upscale factor 2^(n_blocks - 1) (8 for the real model). */
int zi_vae_scale(const zi_vae_config *cfg);

/* z = latents / scaling_factor + shift_factor, in place on z [Clat, lh, lw] (any float
 * backend tensor), as one be->affine (x * (1/scaling) + shift, one rounding; diffusers'
 * bf16 path rounds after the division and after the add). The golden "vae.decoder.in" is
 * the result (float32: within 1e-6 relative). */
void zi_vae_denormalize(zi_vae *vae, zi_tensor *z, int lh, int lw);

/*
 * The decoder: z [Clat, lh, lw] (already denormalised; an activation tensor of be->alloc,
 * i.e. the backend's act dtype; not modified) ->
 * *img [out_channels, s*lh, s*lw], allocated here with be->alloc (the caller frees it
 * with be->free). tap may be NULL. On error *img is empty.
 */
int zi_vae_decode(zi_vae *vae, const zi_tensor *z, int lh, int lw, zi_tensor *img,
                  zi_vae_tap_fn tap, void *ud);

/* The whole tail: latents [Clat, lh, lw] (the sampler's F32 latents, not modified) ->
 * denormalise -> decode -> rgb [s*lh, s*lw, 3] uint8 host memory (caller's buffer).
 * Needs out_channels == 3. */
int zi_vae_decode_rgb8(zi_vae *vae, const zi_tensor *latents, int lh, int lw, uint8_t *rgb);

/* Memory figures of the last decode. */
void zi_vae_last_mem(const zi_vae *vae, zi_vae_mem *out);

/* The decoder's activation high-water mark in bytes for latents lh x lw when each
 * element takes elem_size bytes (4: CPU fp32, 2: CUDA bf16). Equals act_peak of a run
 * (backend scratch, e.g. attention or GEMM workspace, not included). */
uint64_t zi_vae_peak_estimate(const zi_vae_config *cfg, int lh, int lw, size_t elem_size);

#endif
