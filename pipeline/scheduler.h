/*
 * scheduler.h - flow-matching Euler sampler (diffusers FlowMatchEulerDiscreteScheduler as
 * ZImagePipeline drives it), in fp32 exactly as torch/numpy compute it.
 *
 * N steps = N transformer calls. Base sigmas are torch's fp32 linspace(1, 1/N, N); the
 * static shift maps s to shift*s / (1 + (shift-1)*s); a terminal sigma 0 is appended.
 * The old "9 steps" advice for Turbo (before diffusers #13730) equals N = 8 here: its 9th
 * call had dt = 0. With use_dynamic_shifting (Z-Image-Turbo does not use it) the shift
 * depends on the image: mu from the image sequence length (latent h/2 x w/2), then
 * s -> e^mu / (e^mu + (1/s - 1)) (time_shift_type "linear": mu / (mu + (1/s - 1))).
 * Reference: docs zimage-spec.md section 4, golden README ("linspace"), scheduler.json.
 */
#ifndef ZI_SCHEDULER_H
#define ZI_SCHEDULER_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>

/* Largest step count a schedule accepts (tables are caller-sized, this bounds them). */
#define ZI_SCHED_MAX_STEPS 1000

/*
 * Fills sigmas[n + 1] (terminal 0 included) and timesteps[n] (= sigma * num_train_timesteps)
 * for n steps, 1 <= n <= ZI_SCHED_MAX_STEPS. image_seq_len = (latent_h / 2) * (latent_w / 2),
 * as pipeline_z_image.py counts it; used only with use_dynamic_shifting (then it must be
 * positive). Errors: ZI_EINVAL for a bad n, shift or sequence length.
 */
int zi_sched_sigmas(const zi_sched_config *cfg, int n, int64_t image_seq_len, float *sigmas,
                    float *timesteps);

/* mu of dynamic shifting for an image sequence length (calculate_shift, in double). */
double zi_sched_mu(const zi_sched_config *cfg, int64_t image_seq_len);

/* torch.linspace(start, end, n) in fp32 (the base sigmas), written to out[n]. */
void zi_sched_linspace_f32(float start, float end, int n, float *out);

/* The transformer's time input for a timestep: (1000 - timestep) / 1000 in fp32. */
float zi_sched_model_time(float timestep);

/* One Euler step in fp32: x[i] += (sigma_next - sigma) * (-out[i]), where out is the raw
 * transformer output (the pipeline's negation is folded in here). */
void zi_sched_euler_step(float *x, const float *out, float sigma, float sigma_next, size_t n);

#endif
