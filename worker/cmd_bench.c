/*
 * cmd_bench.c - `zimage bench`: speed and memory of the pipeline, as one JSON object on
 * stdout (progress on stderr).
 *
 * Two modes:
 *  - checkpoint: `zimage bench --backend B --model DIR [--width W --height H --steps N
 *    --runs R --baseline B2]` loads DIR and times whole generations (one warm-up, then R
 *    timed runs): end-to-end seconds and seconds per step (from the progress callback).
 *    With --baseline the same runs are made on a second backend in the same process and
 *    the JSON gets speedup ratios (baseline time / our time).
 *  - random weights: `zimage bench --backend B --random-weights [--config DIR]` builds the
 *    real Z-Image-Turbo shapes (zi_config_zimage_turbo, or the config of DIR) with random
 *    weights and times text encoding, one DiT forward at --size and --small-size, one VAE
 *    decode at --size, and whole images (--size with --steps, --small-size with
 *    --small-steps; defaults 1024/8 and 384/9), plus the peak memory and, on CUDA, a
 *    8192^3 bf16 cuBLASLt GEMM and pinned host-to-device bandwidth. Key names carry the
 *    sizes (dit_forward_1024_ms, image_384_9steps_s, ...). Where the GPU is an H100 or
 *    H200, "vs_anchor" holds diffusers' figures for that GPU (docs/performance.md) over
 *    ours; those anchors come from the issue, not from this run.
 * On CUDA with weights kept in host memory (a weight budget, docs/cuda.md) it also
 * reports host_weights_bytes, weight_prefetch_hits / _misses and the small image again
 * with prefetch off (image_384_9steps_no_prefetch_s, prefetch_speedup = that / with).
 * Both modes also time the worker's PNG encoding of the last image (--size, or the
 * checkpoint's WxH) in both s3.png_compression settings: png_encode_ms / png_bytes (fast),
 * png_small_encode_ms / png_small_bytes, png_fast_speedup (small's time / fast's), and
 * png_threads / png_serial_encode_ms / png_threads_speedup (one thread against several).
 * Every timing is the median of --runs runs after one warm-up, with the device
 * synchronised before the clock stops.
 */
#include "backend.h"
#include "cli_util.h"
#include "config.h"
#include "dit.h"
#include "pipeline.h"
#include "pipeline_bench.h"
#include "png.h"
#include "profile.h"
#include "qwen3.h"
#include "vae.h"
#include "zi_err.h"
#ifdef ZI_HAVE_CUDA
#include "zi_cuda.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ZB_MAX_RUNS 100
#define ZB_MAX_STEPS 64

typedef struct zb_opts {
    const char *backend, *model, *config, *baseline, *prompt;
    int random_weights;
    int width, height, steps, runs;
    int size, small_size, small_steps, tokens;
    int profile, gemm_size;
    uint64_t seed;
} zb_opts;

static void zb_usage(FILE *f)
{
    fprintf(f,
            "usage: zimage bench --model DIR [options]\n"
            "       zimage bench --random-weights [options]\n"
            "\n"
            "  --backend auto|cpu|cuda  backend to measure (default auto)\n"
            "  --runs N                 timed runs after one warm-up, median reported "
            "(default 3)\n"
            "  --seed S                 noise / weight seed (default 42)\n"
            "checkpoint mode:\n"
            "  --model DIR              checkpoint folder (diffusers layout)\n"
            "  --width W, --height H    image size (default 64x64)\n"
            "  --steps N                steps (default 8)\n"
            "  --prompt TEXT            prompt (default \"a photo of a cat\")\n"
            "  --baseline auto|cpu|cuda also run on this backend; report speedups\n"
            "random-weights mode:\n"
            "  --random-weights         real Z-Image-Turbo shapes, random weights\n"
            "  --config DIR             take the shapes from DIR's config files instead\n"
            "  --size N                 large image side (default 1024), --steps (default 8)\n"
            "  --small-size N           small image side (default 384), --small-steps "
            "(default 9)\n"
            "  --tokens N               prompt tokens (random ids, default 128)\n"
            "  --gemm-size N            side of the bf16 GEMM probe (default 8192; CUDA only)\n"
            "  --profile                add \"profile\": per-op time of one text encode, one DiT\n"
            "                           forward and one VAE decode at the large size\n"
            "Prints one JSON object on stdout.\n");
}

static double zb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double zb_median(double *v, int n)
{
    if (n <= 0)
        return 0;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double zb_min(const double *v, int n)
{
    double m = n > 0 ? v[0] : 0;
    for (int i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

/* Peak allocated and peak reserved bytes of a backend since it was made. */
static void zb_peaks(zi_backend *be, double *alloc, double *reserved, double *weights)
{
    zi_mem_stats m;
    be->mem_stats(be, &m);
    *alloc = (double)m.peak;
    *reserved = (double)m.peak_reserved;
    *weights = (double)m.weights;
}

/* ---- whole generations ---- */

typedef struct zb_steps {
    double t[ZB_MAX_STEPS * (ZB_MAX_RUNS + 1)];
    int n, record;
} zb_steps;

static int zb_progress(void *ud, int step, int steps, double step_seconds)
{
    zb_steps *s = ud;
    (void)step;
    (void)steps;
    if (s->record && s->n < (int)(sizeof s->t / sizeof s->t[0]))
        s->t[s->n++] = step_seconds;
    return 0;
}

/* Generates one warm-up then `runs` timed images; fills the median/min end-to-end
 * seconds and the median step seconds; *last (when not NULL) receives the last image
 * (malloc'ed RGB8, the caller frees). */
static int zb_images(zi_pipeline *p, const char *prompt, int w, int h, int steps, int runs,
                     uint64_t seed, double *e2e_med, double *e2e_min, double *step_med,
                     uint8_t **last)
{
    static zb_steps st;
    double e2e[ZB_MAX_RUNS];
    zi_gen_params g = {0};
    g.prompt = prompt;
    g.width = w;
    g.height = h;
    g.steps = steps;
    g.guidance = 0.0f;
    g.seed = seed;
    g.rng = ZI_RNG_CUDA;
    memset(&st, 0, sizeof st);
    for (int r = -1; r < runs; r++) {
        uint8_t *rgb = NULL;
        st.record = r >= 0;
        double t0 = zb_now();
        int rc = zi_pipeline_generate(p, &g, zb_progress, &st, &rgb);
        double t1 = zb_now();
        if (rc == ZI_OK && last && r == runs - 1) { /* the only run kept */
            *last = rgb;
            rgb = NULL;
        }
        free(rgb);
        if (rc != ZI_OK)
            return rc;
        if (r >= 0)
            e2e[r] = t1 - t0;
        fprintf(stderr, "bench: %dx%d, %d steps: %.3f s%s\n", w, h, steps, t1 - t0,
                r < 0 ? " (warm-up)" : "");
    }
    *e2e_min = zb_min(e2e, runs);
    *e2e_med = zb_median(e2e, runs);
    *step_med = zb_median(st.t, st.n);
    return ZI_OK;
}

/* Median seconds of `runs` encodings of rgb with `c` on `threads` threads (0: the
 * encoder's default); *len receives the PNG's size. */
static int zb_png_time(const uint8_t *rgb, int w, int h, zi_png_compression c, int threads,
                       int runs, double *med, size_t *len)
{
    double t[ZB_MAX_RUNS];
    for (int r = 0; r < runs; r++) {
        uint8_t *png = NULL;
        double t0 = zb_now();
        int rc = zi_png_encode_threads(rgb, w, h, NULL, c, threads, &png, len);
        t[r] = zb_now() - t0;
        free(png);
        if (rc != ZI_OK)
            return rc;
    }
    *med = zb_median(t, runs);
    return ZI_OK;
}

/* The PNG encoding of the worker (s3.png_compression "fast", the default) against "small"
 * on the same image, in this run: png_encode_ms, png_bytes, png_small_encode_ms,
 * png_small_bytes and png_fast_speedup (small's time / fast's); and "fast" on one thread:
 * png_threads (the encoder's threads), png_serial_encode_ms, png_threads_speedup (one
 * thread's time / the threads'). Medians of `runs`. */
static int zb_png(cJSON *obj, const uint8_t *rgb, int w, int h, int runs)
{
    static const char *const names[2][2] = {{"png_encode_ms", "png_bytes"},
                                            {"png_small_encode_ms", "png_small_bytes"}};
    double med[2] = {0, 0}, serial = 0;
    size_t len = 0;
    for (int c = 0; c < 2; c++) {
        int rc = zb_png_time(rgb, w, h, (zi_png_compression)c, 0, runs, &med[c], &len);
        if (rc != ZI_OK)
            return rc;
        cJSON_AddNumberToObject(obj, names[c][0], med[c] * 1e3);
        cJSON_AddNumberToObject(obj, names[c][1], (double)len);
    }
    cJSON_AddNumberToObject(obj, "png_fast_speedup", med[0] > 0 ? med[1] / med[0] : 0);
    /* the same "fast" encoding on the calling thread alone: what the threads bring */
    int rc = zb_png_time(rgb, w, h, ZI_PNG_FAST, 1, runs, &serial, &len);
    if (rc != ZI_OK)
        return rc;
    cJSON_AddNumberToObject(obj, "png_threads", zi_png_threads());
    cJSON_AddNumberToObject(obj, "png_serial_encode_ms", serial * 1e3);
    cJSON_AddNumberToObject(obj, "png_threads_speedup", med[0] > 0 ? serial / med[0] : 0);
    fprintf(stderr, "bench: PNG %dx%d: fast %.1f ms (%d threads; %.1f ms on one), small %.1f ms\n",
            w, h, med[0] * 1e3, zi_png_threads(), serial * 1e3, med[1] * 1e3);
    return ZI_OK;
}

/* ---- checkpoint mode ---- */

/* Loads DIR on a backend named `name` and times it; adds the figures to `obj`; *last (when
 * not NULL) receives the last image, as zb_images. */
static int zb_checkpoint_on(const zb_opts *o, const char *name, cJSON *obj, double *e2e,
                            double *step, uint8_t **last)
{
    zi_backend *be = zi_backend_new(name);
    if (!be)
        return zi_error_prefix(ZI_EINVAL, "backend %s", name);
    zi_pipeline *p = NULL;
    double t0 = zb_now();
    int rc = zi_pipeline_load(o->model, be, &p);
    double load = zb_now() - t0;
    if (rc == ZI_OK) {
        zi_pipeline_set_caption_cache(p, 0); /* every image pays its text encode */
        double e2e_min = 0;
        rc = zb_images(p, o->prompt, o->width, o->height, o->steps, o->runs, o->seed, e2e, &e2e_min,
                       step, last);
        if (rc == ZI_OK) {
            double pa, pr, wb;
            zb_peaks(be, &pa, &pr, &wb);
            cJSON_AddStringToObject(obj, "backend", be->name);
            cJSON_AddStringToObject(obj, "device", be->device_name);
            cJSON_AddNumberToObject(obj, "load_s", load);
            cJSON_AddNumberToObject(obj, "end_to_end_s", *e2e);
            cJSON_AddNumberToObject(obj, "end_to_end_min_s", e2e_min);
            cJSON_AddNumberToObject(obj, "step_ms", *step * 1e3);
            cJSON_AddNumberToObject(obj, "peak_allocated_bytes", pa);
            cJSON_AddNumberToObject(obj, "peak_reserved_bytes", pr);
            cJSON_AddNumberToObject(obj, "weights_bytes", wb);
        }
    }
    zi_pipeline_free(p);
    zi_backend_destroy(be);
    return rc;
}

static int zb_checkpoint(const zb_opts *o, cJSON *root)
{
    cJSON_AddStringToObject(root, "mode", "checkpoint");
    cJSON_AddStringToObject(root, "model", o->model);
    cJSON_AddNumberToObject(root, "width", o->width);
    cJSON_AddNumberToObject(root, "height", o->height);
    cJSON_AddNumberToObject(root, "steps", o->steps);
    cJSON_AddNumberToObject(root, "runs", o->runs);
    double e2e = 0, step = 0;
    uint8_t *rgb = NULL; /* the PNG encoding is the host's work: timed once, not per backend */
    int rc = zb_checkpoint_on(o, o->backend, root, &e2e, &step, &rgb);
    if (rc == ZI_OK)
        rc = zb_png(root, rgb, o->width, o->height, o->runs);
    free(rgb);
    if (rc != ZI_OK || !o->baseline)
        return rc;
    cJSON *base = cJSON_AddObjectToObject(root, "baseline");
    double be2e = 0, bstep = 0;
    rc = zb_checkpoint_on(o, o->baseline, base, &be2e, &bstep, NULL);
    if (rc != ZI_OK)
        return zi_error_prefix(rc, "baseline");
    cJSON_AddNumberToObject(root, "speedup_end_to_end", e2e > 0 ? be2e / e2e : 0);
    cJSON_AddNumberToObject(root, "speedup_step", step > 0 ? bstep / step : 0);
    return ZI_OK;
}

/* ---- random-weights mode ---- */

typedef struct zb_anchor {
    const char *gpu, *source;
    double image_1024_8steps_s, dit_forward_1024_ms, vae_decode_1024_ms, text_encode_ms;
    double image_384_9steps_s;
} zb_anchor;

/* diffusers 0.40, bf16 (the anchor figures; docs/performance.md). */
static const zb_anchor zb_anchors[] = {
    {"H100", "diffusers 0.40 bf16 on NVIDIA H100", 1.35, 149, 90, 49, 0.51},
    {"H200", "diffusers 0.40 bf16 on NVIDIA H200", 1.30, 141, 86, 42, 0.575},
};

/* Median milliseconds of one text-encoder forward over n_tokens random ids. */
static int zb_time_text(zi_backend *be, zi_qwen3 *te, int n_tokens, int runs, uint64_t seed,
                        float **emb, int *dim, double *ms)
{
    const zi_te_config *c = zi_qwen3_config(te);
    int32_t *ids = malloc((size_t)n_tokens * sizeof *ids);
    double t[ZB_MAX_RUNS];
    if (!ids)
        return zi_errorf(ZI_ENOMEM, "bench: out of memory");
    uint64_t s = seed;
    for (int i = 0; i < n_tokens; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)c->vocab);
    }
    int rc = ZI_OK;
    for (int r = -1; r < runs && rc == ZI_OK; r++) {
        zi_tensor out = {0};
        double t0 = zb_now();
        rc = zi_qwen3_forward(te, ids, n_tokens, &out, NULL);
        be->sync(be);
        double t1 = zb_now();
        if (rc == ZI_OK)
            rc = zi_backend_check(be);
        if (rc == ZI_OK && r == runs - 1) { /* keep the last embeddings for the DiT */
            *dim = c->hidden;
            *emb = malloc((size_t)n_tokens * c->hidden * sizeof(float));
            rc = *emb ? be->download(be, *emb, &out, (size_t)n_tokens * c->hidden)
                      : zi_errorf(ZI_ENOMEM, "bench: out of memory");
        }
        be->free(be, &out);
        if (r >= 0)
            t[r] = (t1 - t0) * 1e3;
    }
    free(ids);
    *ms = zb_median(t, runs);
    return rc;
}

/* Median milliseconds of one DiT forward at side x side pixels (vs pixels per latent). */
static int zb_time_dit(zi_dit *d, const zi_dit_caption *cap, int side, int vs, int runs, double *ms)
{
    const zi_dit_config *c = zi_dit_get_config(d);
    int l = side / vs;
    size_t n = (size_t)c->in_channels * l * l;
    float *lat = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
    double t[ZB_MAX_RUNS];
    int rc = ZI_OK;
    if (!lat || !out)
        rc = zi_errorf(ZI_ENOMEM, "bench: out of memory");
    for (size_t i = 0; lat && i < n; i++)
        lat[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    for (int r = -1; r < runs && rc == ZI_OK; r++) {
        float tm = 0.1f + 0.05f * (float)(r + 1); /* a new t each call: includes adaLN prep */
        double t0 = zb_now();
        rc = zi_dit_forward(d, cap, tm, lat, l, l, out); /* returns host output: synced */
        double t1 = zb_now();
        if (r >= 0)
            t[r] = (t1 - t0) * 1e3;
    }
    free(lat);
    free(out);
    *ms = zb_median(t, runs);
    return rc;
}

/* profile[name] = the per-op breakdown of one call of `what` (a bench timing function
 * run with runs = 0, i.e. its warm-up call only): [{"op", "calls", "ms", "share"}...],
 * largest first; share is of the ops' summed time. */
#define ZB_PROFILE(be, profile, name, rc, what)                                                    \
    do {                                                                                           \
        (rc) = zi_profile_start(be);                                                               \
        if ((rc) == ZI_OK) {                                                                       \
            (rc) = (what);                                                                         \
            zi_profile_entry e_[ZI_PROFILE_MAX_OPS];                                               \
            int n_ = 0, src_ = zi_profile_stop(be, e_, ZI_PROFILE_MAX_OPS, &n_);                   \
            (rc) = (rc) ? (rc) : src_;                                                             \
            zb_profile_json(profile, name, e_, n_);                                                \
        }                                                                                          \
    } while (0)

static void zb_profile_json(cJSON *profile, const char *name, const zi_profile_entry *e, int n)
{
    double total = 0;
    for (int i = 0; i < n; i++)
        total += e[i].ms;
    cJSON *arr = cJSON_AddArrayToObject(profile, name);
    for (int i = 0; arr && i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
            break;
        cJSON_AddStringToObject(o, "op", e[i].op);
        cJSON_AddNumberToObject(o, "calls", (double)e[i].calls);
        cJSON_AddNumberToObject(o, "ms", e[i].ms);
        cJSON_AddNumberToObject(o, "share", total > 0 ? e[i].ms / total : 0);
        cJSON_AddItemToArray(arr, o);
    }
}

/* Times the VAE decoder at side x side and reports its activation peak (bytes). */
static int zb_time_vae(zi_backend *be, zi_vae *vae, const zi_model_config *cfg, int side, int runs,
                       double *ms, double *peak)
{
    int s = zi_vae_scale(&cfg->vae), l = side / s;
    size_t n = (size_t)cfg->vae.latent_channels * l * l;
    float *lat = malloc(n * sizeof(float));
    double t[ZB_MAX_RUNS];
    if (!lat)
        return zi_errorf(ZI_ENOMEM, "bench: out of memory");
    for (size_t i = 0; i < n; i++)
        lat[i] = (float)((i * 2246822519u) % 2001) / 1000.0f - 1.0f;
    zi_tensor z;
    int64_t shape[3] = {cfg->vae.latent_channels, l, l};
    int rc = be->alloc_f32(be, &z, 3, shape);
    if (rc == ZI_OK)
        rc = be->upload(be, &z, lat, n);
    for (int r = -1; r < runs && rc == ZI_OK; r++) {
        zi_tensor img = {0};
        double t0 = zb_now();
        rc = zi_vae_decode(vae, &z, l, l, &img, NULL, NULL);
        be->sync(be);
        double t1 = zb_now();
        if (rc == ZI_OK)
            rc = zi_backend_check(be);
        be->free(be, &img);
        if (r >= 0)
            t[r] = (t1 - t0) * 1e3;
    }
    if (z.data)
        be->free(be, &z);
    free(lat);
    *ms = zb_median(t, runs);
    zi_vae_mem mem;
    zi_vae_last_mem(vae, &mem);
    *peak = (double)mem.act_peak;
    return rc;
}

/* One JSON number, or null when the figure could not be measured. A key already there
 * (--small-size equal to --size names the same figures twice) keeps its first value. */
static void zb_num(cJSON *o, const char *key, int have, double v)
{
    if (cJSON_GetObjectItemCaseSensitive(o, key))
        return;
    if (have)
        cJSON_AddNumberToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

static int zb_random(const zb_opts *o, cJSON *root)
{
    zi_model_config cfg;
    int rc = ZI_OK;
    if (o->config)
        rc = zi_config_load(o->config, &cfg);
    else
        zi_config_zimage_turbo(&cfg);
    if (rc != ZI_OK)
        return rc;
    zi_backend *be = zi_backend_new(o->backend);
    if (!be)
        return zi_error_prefix(ZI_EINVAL, "backend %s", o->backend);
    cJSON_AddStringToObject(root, "mode", "random-weights");
    cJSON_AddStringToObject(root, "config", o->config ? o->config : "zimage-turbo");
    cJSON_AddStringToObject(root, "backend", be->name);
    cJSON_AddStringToObject(root, "gpu", be->device_name);
    cJSON_AddNumberToObject(root, "tokens", o->tokens);
    cJSON_AddNumberToObject(root, "runs", o->runs);
    char key[96];
    zi_pipeline *p = NULL;
    float *emb = NULL;
    zi_dit_caption *cap = NULL;
    double t0 = zb_now();
    /* the larger image's plan: the "auto" weight budget leaves room for it */
    zi_mem_plan plan;
    uint64_t head = 0;
    int big = o->size > o->small_size ? o->size : o->small_size;
    rc = zi_cli_plan_headroom(be, &cfg, big, big, 0.0f, &plan, &head);
    if (rc != ZI_OK)
        goto done;
    cJSON_AddNumberToObject(root, "planned_activation_bytes", (double)plan.activations);
    if (head)
        cJSON_AddNumberToObject(root, "activation_headroom_bytes", (double)head);
    fprintf(stderr, "bench: building random weights on %s (%s)\n", be->name, be->device_name);
    rc = zi_pipeline_load_random(&cfg, be, o->seed, o->tokens, &p);
    if (rc != ZI_OK)
        goto done;
    /* every image pays its text encode, as a diffusers run does: the end-to-end figures
     * compare like with like (the prompt-embedding cache would skip it from the second) */
    zi_pipeline_set_caption_cache(p, 0);
    be->sync(be);
    cJSON_AddNumberToObject(root, "load_s", zb_now() - t0);
    fprintf(stderr, "bench: loaded in %.1f s\n", zb_now() - t0);

    /* components */
    int vs = zi_vae_scale(&cfg.vae); /* pixels per latent */
    double te_ms = 0, dit_big = 0, dit_small = 0, vae_ms = 0, vae_peak = 0;
    int dim = 0;
    rc = zb_time_text(be, zi_pipeline_text_encoder(p), o->tokens, o->runs, o->seed, &emb, &dim,
                      &te_ms);
    if (rc != ZI_OK)
        goto done;
    fprintf(stderr, "bench: text encode %.2f ms\n", te_ms);
    zi_dit *d = zi_pipeline_dit(p);
    rc = zi_dit_prepare_caption(d, emb, o->tokens, &cap);
    if (rc == ZI_OK)
        rc = zb_time_dit(d, cap, o->size, vs, o->runs, &dit_big);
    if (rc == ZI_OK)
        rc = zb_time_dit(d, cap, o->small_size, vs, o->runs, &dit_small);
    if (rc != ZI_OK)
        goto done;
    fprintf(stderr, "bench: DiT forward %d: %.2f ms, %d: %.2f ms\n", o->size, dit_big,
            o->small_size, dit_small);
    rc = zb_time_vae(be, zi_pipeline_vae(p), &cfg, o->size, o->runs, &vae_ms, &vae_peak);
    if (rc != ZI_OK)
        goto done;
    fprintf(stderr, "bench: VAE decode %d: %.2f ms\n", o->size, vae_ms);

    if (o->profile) { /* after the timed runs: every buffer and plan is warm */
        cJSON *prof = cJSON_AddObjectToObject(root, "profile");
        float *pemb = NULL;
        int pdim = 0;
        double unused = 0, upeak = 0;
        ZB_PROFILE(be, prof, "text_encode", rc,
                   zb_time_text(be, zi_pipeline_text_encoder(p), o->tokens, 0, o->seed, &pemb,
                                &pdim, &unused));
        free(pemb);
        snprintf(key, sizeof key, "dit_forward_%d", o->size);
        if (rc == ZI_OK)
            ZB_PROFILE(be, prof, key, rc, zb_time_dit(d, cap, o->size, vs, 0, &unused));
        snprintf(key, sizeof key, "vae_decode_%d", o->size);
        if (rc == ZI_OK)
            ZB_PROFILE(be, prof, key, rc,
                       zb_time_vae(be, zi_pipeline_vae(p), &cfg, o->size, 0, &unused, &upeak));
        if (rc != ZI_OK)
            goto done;
        fprintf(stderr, "bench: profiled one text encode, DiT forward and VAE decode\n");
    }

    /* whole images */
    double big_med, big_min, big_step, small_med, small_min, small_step;
    uint8_t *big_rgb = NULL;
    rc = zb_images(p, "bench", o->size, o->size, o->steps, o->runs, o->seed, &big_med, &big_min,
                   &big_step, &big_rgb);
    if (rc == ZI_OK)
        rc = zb_png(root, big_rgb, o->size, o->size, o->runs);
    free(big_rgb);
    if (rc == ZI_OK)
        rc = zb_images(p, "bench", o->small_size, o->small_size, o->small_steps, o->runs, o->seed,
                       &small_med, &small_min, &small_step, NULL);
    if (rc != ZI_OK)
        goto done;
    double np_med = 0; /* weights kept on the host: the small image without prefetch */
#ifdef ZI_HAVE_CUDA
    if (zi_cuda_is(be) && zi_cuda_host_weight_bytes(be) > 0 && zi_cuda_prefetch_on(be)) {
        double np_min, np_step;
        zi_cuda_set_prefetch(be, 0, 0);
        rc = zb_images(p, "bench", o->small_size, o->small_size, o->small_steps, o->runs, o->seed,
                       &np_med, &np_min, &np_step, NULL);
        zi_cuda_set_prefetch(be, 1, 0);
        if (rc != ZI_OK)
            goto done;
    }
#endif

    zb_num(root, "text_encode_ms", 1, te_ms);
    snprintf(key, sizeof key, "dit_forward_%d_ms", o->size);
    zb_num(root, key, 1, dit_big);
    snprintf(key, sizeof key, "dit_forward_%d_ms", o->small_size);
    zb_num(root, key, 1, dit_small);
    snprintf(key, sizeof key, "vae_decode_%d_ms", o->size);
    zb_num(root, key, 1, vae_ms);
    snprintf(key, sizeof key, "vae_decode_%d_peak_bytes", o->size);
    zb_num(root, key, 1, vae_peak);
    snprintf(key, sizeof key, "image_%d_%dsteps_s", o->size, o->steps);
    zb_num(root, key, 1, big_med);
    snprintf(key, sizeof key, "image_%d_%dsteps_min_s", o->size, o->steps);
    zb_num(root, key, 1, big_min);
    snprintf(key, sizeof key, "step_%d_ms", o->size);
    zb_num(root, key, 1, big_step * 1e3);
    snprintf(key, sizeof key, "image_%d_%dsteps_s", o->small_size, o->small_steps);
    zb_num(root, key, 1, small_med);
    snprintf(key, sizeof key, "image_%d_%dsteps_min_s", o->small_size, o->small_steps);
    zb_num(root, key, 1, small_min);
    snprintf(key, sizeof key, "step_%d_ms", o->small_size);
    zb_num(root, key, 1, small_step * 1e3);
    if (np_med > 0) { /* the baseline of the prefetch's gain, measured in this run */
        snprintf(key, sizeof key, "image_%d_%dsteps_no_prefetch_s", o->small_size, o->small_steps);
        zb_num(root, key, 1, np_med);
        zb_num(root, "prefetch_speedup", 1, small_med > 0 ? np_med / small_med : 0);
    }
    double pa, pr, wb;
    zb_peaks(be, &pa, &pr, &wb);
    cJSON_AddNumberToObject(root, "peak_allocated_bytes", pa);
    cJSON_AddNumberToObject(root, "peak_reserved_bytes", pr);
    cJSON_AddNumberToObject(root, "weights_bytes", wb);
#ifdef ZI_HAVE_CUDA
    if (zi_cuda_is(be)) { /* weights the budget kept in host memory (0 when all fit) */
        cJSON_AddNumberToObject(root, "host_weights_bytes", (double)zi_cuda_host_weight_bytes(be));
        uint64_t hits = 0, misses = 0; /* host weights found copied ahead / waited for */
        zi_cuda_prefetch_stats(be, &hits, &misses);
        cJSON_AddNumberToObject(root, "weight_prefetch_hits", (double)hits);
        cJSON_AddNumberToObject(root, "weight_prefetch_misses", (double)misses);
    }
#endif

    /* device probes (CUDA only) */
    int have_probe = 0;
    double tflops = 0, gbps = 0;
#ifdef ZI_HAVE_CUDA
    if (zi_cuda_is(be)) {
        rc = zi_cuda_bench_gemm(be, o->gemm_size, 10, &tflops);
        if (rc == ZI_OK)
            rc = zi_cuda_bench_h2d(be, (size_t)256 << 20, 5, &gbps);
        if (rc != ZI_OK)
            goto done;
        have_probe = 1;
    }
#endif
    zb_num(root, "gemm_bf16_tflops", have_probe, tflops);
    zb_num(root, "h2d_pinned_gbps", have_probe, gbps);

    /* the anchor figures for this GPU model, as anchor / ours (>1: we are faster) */
    for (size_t i = 0; i < sizeof zb_anchors / sizeof zb_anchors[0]; i++) {
        const zb_anchor *a = &zb_anchors[i];
        if (!strstr(be->device_name, a->gpu) || o->config || o->size != 1024 || o->steps != 8 ||
            o->small_size != 384 || o->small_steps != 9)
            continue;
        cJSON *v = cJSON_AddObjectToObject(root, "vs_anchor");
        cJSON_AddStringToObject(v, "anchor", a->source);
        cJSON_AddNumberToObject(v, "image_1024_8steps", a->image_1024_8steps_s / big_med);
        cJSON_AddNumberToObject(v, "image_384_9steps", a->image_384_9steps_s / small_med);
        cJSON_AddNumberToObject(v, "dit_forward_1024", a->dit_forward_1024_ms / dit_big);
        zb_num(v, "vae_decode_1024", vae_ms > 0, vae_ms > 0 ? a->vae_decode_1024_ms / vae_ms : 0);
        zb_num(v, "text_encode", te_ms > 0, te_ms > 0 ? a->text_encode_ms / te_ms : 0);
        break;
    }
done:
    zi_dit_caption_free(cap);
    free(emb);
    zi_pipeline_free(p);
    zi_backend_destroy(be);
    return rc;
}

/* ---- command ---- */

/* The options that take a value (as "--name value" or "--name=value"). */
static const char *const zb_value_opts[] = {
    "--backend", "--baseline",   "--model",       "--config", "--prompt",
    "--seed",    "--width",      "--height",      "--steps",  "--runs",
    "--size",    "--small-size", "--small-steps", "--tokens", "--gemm-size"};

int zi_cmd_bench(int argc, char **argv)
{
    zb_opts o = {0};
    o.backend = "auto";
    o.prompt = "a photo of a cat";
    o.width = o.height = 64;
    o.steps = -1;
    o.runs = 3;
    o.size = 1024;
    o.small_size = 384;
    o.small_steps = 9;
    o.tokens = 128;
    o.gemm_size = 8192;
    o.seed = 42;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int *ip = NULL;
        long lo = 1, hi = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            zb_usage(stdout);
            return 0;
        }
        if (strcmp(a, "--random-weights") == 0) {
            o.random_weights = 1;
            continue;
        }
        if (strcmp(a, "--profile") == 0) {
            o.profile = 1;
            continue;
        }
        int r = zi_cli_opt_of(argc, argv, &i, zb_value_opts,
                              sizeof zb_value_opts / sizeof zb_value_opts[0], &a, &v);
        if (r == 0)
            return zi_cli_usage_error(
                "bench", "%s: %s",
                strncmp(a, "--", 2) == 0 ? "unknown option" : "unexpected argument", a);
        if (r < 0)
            return zi_cli_usage_error("bench", "missing value for option: %s", a);
        if (strcmp(a, "--backend") == 0 || strcmp(a, "--baseline") == 0) {
            if (strcmp(v, "auto") && strcmp(v, "cpu") && strcmp(v, "cuda"))
                return zi_cli_usage_error("bench", "backend must be auto, cpu or cuda: %s", v);
            if (strcmp(a, "--backend") == 0)
                o.backend = v;
            else
                o.baseline = v;
        } else if (strcmp(a, "--model") == 0) {
            o.model = v;
        } else if (strcmp(a, "--config") == 0) {
            o.config = v;
        } else if (strcmp(a, "--prompt") == 0) {
            o.prompt = v;
        } else if (strcmp(a, "--seed") == 0) {
            char *end = NULL;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || *v == '-')
                return zi_cli_usage_error("bench", "bad --seed: %s", v);
            o.seed = s;
        } else if (strcmp(a, "--width") == 0) {
            ip = &o.width, lo = 16, hi = 4096;
        } else if (strcmp(a, "--height") == 0) {
            ip = &o.height, lo = 16, hi = 4096;
        } else if (strcmp(a, "--steps") == 0) {
            ip = &o.steps, hi = ZB_MAX_STEPS;
        } else if (strcmp(a, "--runs") == 0) {
            ip = &o.runs, hi = ZB_MAX_RUNS;
        } else if (strcmp(a, "--size") == 0) {
            ip = &o.size, lo = 16, hi = 4096;
        } else if (strcmp(a, "--small-size") == 0) {
            ip = &o.small_size, lo = 16, hi = 4096;
        } else if (strcmp(a, "--small-steps") == 0) {
            ip = &o.small_steps, hi = ZB_MAX_STEPS;
        } else if (strcmp(a, "--tokens") == 0) {
            ip = &o.tokens, hi = 512;
        } else if (strcmp(a, "--gemm-size") == 0) {
            ip = &o.gemm_size, lo = 64, hi = 32768;
        } else {
            return zi_cli_usage_error("bench", "unknown option: %s", a);
        }
        if (ip && zi_cli_parse_int(v, lo, hi, ip) != 0) {
            return zi_cli_usage_error("bench", "%s must be an integer in [%ld, %ld], got '%s'", a,
                                      lo, hi, v);
        }
    }
    if (o.random_weights == (o.model != NULL))
        return zi_cli_usage_error("bench", "give exactly one of --model DIR and --random-weights");
    if (o.baseline && o.random_weights)
        return zi_cli_usage_error("bench", "--baseline applies to --model runs");
    if (o.profile && !o.random_weights)
        return zi_cli_usage_error("bench", "--profile applies to --random-weights runs");
    if (o.steps < 0)
        o.steps = 8;
    int sides[4] = {o.width, o.height, o.size, o.small_size};
    for (int i = 0; i < 4; i++)
        if (sides[i] % 16)
            return zi_cli_usage_error("bench", "image sides must be multiples of 16");

    if (o.config && o.random_weights) {
        zi_model_config mcfg;
        if (zi_config_load(o.config, &mcfg) != ZI_OK) {
            fprintf(stderr, "zimage: error: --config %s: %s\n", o.config, zi_errmsg());
            return 2;
        }
    }
    if (o.model) {
        /* Same split as generate: a missing folder or bad config files exit 2. */
        zi_model_config mcfg;
        if (!zi_cli_is_dir(o.model)) {
            fprintf(stderr, "zimage: error: --model '%s': no such folder\n", o.model);
            return 2;
        }
        if (zi_config_load(o.model, &mcfg) != ZI_OK) {
            fprintf(stderr, "zimage: error: loading %s: %s\n", o.model, zi_errmsg());
            return 2;
        }
    }
    cJSON *root = cJSON_CreateObject();
    if (!root) {
        fprintf(stderr, "zimage: error: out of memory\n");
        return 1;
    }
    int rc = o.random_weights ? zb_random(&o, root) : zb_checkpoint(&o, root);
    if (rc != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        cJSON_Delete(root);
        return rc == ZI_EINVAL ? 2 : 1;
    }
    char *text = cJSON_Print(root);
    if (text)
        printf("%s\n", text);
    free(text);
    cJSON_Delete(root);
    return text ? 0 : 1;
}
