/*
 * scheduler.h - flow-matching Euler sampler (diffusers FlowMatchEulerDiscreteScheduler as
 * ZImagePipeline drives it), in fp32 exactly as torch/numpy compute it.
 *
 * N steps = N transformer calls. Base sigmas are torch's fp32 linspace(1, 1/N, N); the
 * static shift maps s to shift*s / (1 + (shift-1)*s); a terminal sigma 0 is appended.
 * The old "9 steps" advice for Turbo (before diffusers #13730) equals N = 8 here: its 9th
 * call had dt = 0. Dynamic shifting is not supported (Z-Image-Turbo does not use it).
 * Reference: docs zimage-spec.md section 4, golden README ("linspace"), scheduler.json.
 */
#ifndef ZI_SCHEDULER_H
#define ZI_SCHEDULER_H

#include "config.h"

#include <stddef.h>

/* Largest step count a schedule accepts (tables are caller-sized, this bounds them). */
#define ZI_SCHED_MAX_STEPS 1000

/*
 * Fills sigmas[n + 1] (terminal 0 included) and timesteps[n] (= sigma * num_train_timesteps)
 * for n steps, 1 <= n <= ZI_SCHED_MAX_STEPS. Errors: ZI_EINVAL for a bad n or a config with
 * use_dynamic_shifting set.
 */
int zi_sched_sigmas(const zi_sched_config *cfg, int n, float *sigmas, float *timesteps);

/* torch.linspace(start, end, n) in fp32 (the base sigmas), written to out[n]. */
void zi_sched_linspace_f32(float start, float end, int n, float *out);

/* The transformer's time input for a timestep: (1000 - timestep) / 1000 in fp32. */
float zi_sched_model_time(float timestep);

/* One Euler step in fp32: x[i] += (sigma_next - sigma) * (-out[i]), where out is the raw
 * transformer output (the pipeline's negation is folded in here). */
void zi_sched_euler_step(float *x, const float *out, float sigma, float sigma_next, size_t n);

#endif
