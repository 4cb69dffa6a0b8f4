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
int zi_pipeline_load_random(const zi_model_config *cfg, zi_backend *be, uint64_t seed, int n_tokens,
                            zi_pipeline **out);
void zi_pipeline_free(zi_pipeline *p);
/* The prompt-embedding cache: the text encoder's output for the prompts used last (at most
 * 16, kept in host memory up to max_bytes, least recently used evicted), keyed by their
 * token ids, so a prompt used again skips the encoder; the image is the same bit for bit.
 * Default: ZI_CAPTION_CACHE_MB (read at load; not a number: ignored), else 64 MiB; 0 turns
 * it off (emptied). Not from a zi_gen_debug hook: the entry in use may be freed. */
int zi_pipeline_set_caption_cache(zi_pipeline *p, size_t max_bytes);
/* Prompts found in the cache (hits) and prompts encoded (misses, also while it is off),
 * since the load. */
void zi_pipeline_caption_cache_stats(const zi_pipeline *p, uint64_t *hits, uint64_t *misses);
const zi_model_config *zi_pipeline_config(const zi_pipeline *p);

/* Generates one image: *rgb receives malloc'ed height*width*3 bytes (caller frees). */
int zi_pipeline_generate(zi_pipeline *p, const zi_gen_params *params, zi_progress_fn progress,
                         void *ud, uint8_t **rgb);

/* Device memory of one job, planned before it runs (zi_pipeline_act_estimate). */
typedef struct zi_mem_plan {
    uint64_t activations; /* high-water mark of the job's tensors (bf16, f32 latents) */
    uint64_t mapped;      /* memory mapped beyond the weights at the peak (mem_stats
                             peak_reserved): the allocator's pages and growth steps */
    uint64_t weights;     /* every weight in bf16 */
} zi_mem_plan;

/* Plans a job of width x height (guidance > 0: with classifier-free guidance) for a model
 * of `cfg` on the CUDA backend: the pipeline is replayed on the meta backend (no compute,
 * no memory) with prompts (and negative prompt) of n_tokens templated ids - 0 means the
 * longest, ZI_TOKENIZER_MAX_LEN, so the figure holds for every prompt. The backend's own
 * scratch (workspace, staging, attention and convolution tiles, prefetch slots) is not
 * included. Well under a second at any size. */
int zi_pipeline_act_estimate(const zi_model_config *cfg, int width, int height, float guidance,
                             int n_tokens, zi_mem_plan *out);
/* The same measured on a given backend (its mem_stats peak less the weights, over two
 * jobs of random weights): zi_pipeline_act_estimate is this on the meta backend, and the
 * tests run it on the CPU backend to hold the two equal. `be` must be fresh (its peak
 * since creation is read). */
int zi_pipeline_mem_plan_on(zi_backend *be, const zi_model_config *cfg, int width, int height,
                            float guidance, int n_tokens, zi_mem_plan *out);

/* ---- added by the pipeline engineer (D): model name, tests and tools ---- */

typedef struct zi_dit zi_dit;

/* The model's name for PNG parameters and job records: the checkpoint folder's base name
 * ("random" for zi_pipeline_load_random). Valid while p lives. */
const char *zi_pipeline_model_name(const zi_pipeline *p);

/* The pipeline's transformer (e.g. to set an intermediate tap with zi_dit_set_tap). */
zi_dit *zi_pipeline_dit(zi_pipeline *p);

/* Hooks for tests and tools (every field optional; zero-initialise the struct). */
typedef struct zi_gen_debug {
    /* Used instead of the seeded noise when not NULL: [C, H/s, W/s] f32, C = the DiT's
     * in_channels and s = the VAE's scale factor. */
    const float *latents_init;
    /* After text encoding: branch 0 = prompt, 1 = negative prompt (CFG only); emb is
     * [L, D] host f32, valid during the call. Nonzero return aborts with that code. */
    int (*on_caption)(void *ud, int branch, const int32_t *ids, const float *emb, int L, int D);
    /* After Euler step `step` (0-based): the latents [C, lh, lw] and the n_out raw DiT
     * outputs of that step (1, or 2 under CFG: positive then negative), host f32 valid
     * during the call. Nonzero return aborts with that code. */
    int (*on_step)(void *ud, int step, const float *latents, const float *const *model_out,
                   int n_out, int C, int lh, int lw);
    void *ud;
} zi_gen_debug;

/* zi_pipeline_generate with hooks (dbg may be NULL). */
int zi_pipeline_generate_ex(zi_pipeline *p, const zi_gen_params *params, zi_progress_fn progress,
                            void *ud, const zi_gen_debug *dbg, uint8_t **rgb);

/* Checks the size, steps and guidance of `params` against the loaded model (sides multiples
 * of the VAE scale times the patch, steps in 1..ZI_SCHED_MAX_STEPS, finite guidance >= 0);
 * ZI_EINVAL with a message naming the field. Service limits (max side, pixels, steps) are
 * the caller's. */
int zi_pipeline_check_params(const zi_pipeline *p, const zi_gen_params *params);

#endif
