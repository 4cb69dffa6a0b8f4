/*
 * pipeline.h - text to image: tokenizer -> Qwen3 encoder -> DiT + Euler -> VAE decoder.
 *
 * One zi_pipeline holds a loaded checkpoint on one backend. zi_pipeline_generate()
 * is not re-entrant for one pipeline (one job at a time per worker).
 */
#ifndef ZI_PIPELINE_H
#define ZI_PIPELINE_H

#include "backend.h"
#include "config.h"

#include <stdint.h>

typedef enum zi_rng_kind {
    ZI_RNG_CUDA = 0, /* torch.Generator("cuda"): Philox 4x32-10, 132-SM launch geometry */
    ZI_RNG_CPU = 1,  /* torch.Generator("cpu"): mt19937 */
} zi_rng_kind;

typedef struct zi_gen_params {
    const char *prompt;
    const char *negative_prompt; /* used only when guidance > 0; NULL means "" */
    int width, height;           /* multiples of 16 */
    int steps;                   /* transformer calls */
    float guidance;              /* 0: no CFG */
    uint64_t seed;
    zi_rng_kind rng;
} zi_gen_params;

/* Progress: called after each step. Return nonzero to cancel (generate then returns
 * ZI_ECANCELLED). */
typedef int (*zi_progress_fn)(void *ud, int step, int steps, double step_seconds);

typedef struct zi_pipeline zi_pipeline;

/* Loads the checkpoint in `dir` onto `be` (the backend stays owned by the caller). */
int zi_pipeline_load(const char *dir, zi_backend *be, zi_pipeline **out);
/* Builds a pipeline of the shapes in `cfg` with random weights (seeded; for benchmarks
 * at real size without a checkpoint). No tokenizer vocabulary is needed: prompts are
 * replaced by `n_tokens` random token ids. */
int zi_pipeline_load_random(const zi_model_config *cfg, zi_backend *be, uint64_t seed,
                            int n_tokens, zi_pipeline **out);
void zi_pipeline_free(zi_pipeline *p);
const zi_model_config *zi_pipeline_config(const zi_pipeline *p);

/* Generates one image: *rgb receives malloc'ed height*width*3 bytes (caller frees). */
int zi_pipeline_generate(zi_pipeline *p, const zi_gen_params *params, zi_progress_fn progress,
                         void *ud, uint8_t **rgb);

#endif
