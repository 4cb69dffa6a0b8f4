/*
 * pipeline.c - text to image: tokenizer -> Qwen3 -> DiT + flow-matching Euler -> VAE.
 *
 * What diffusers' ZImagePipeline does at batch 1, in the same order and precision: the
 * latents and the scheduler stay fp32 on the host (latent-sized, so the per-step host work
 * is negligible next to the transformer); the model sees them through zi_dit_forward. The
 * prompt-only work (encoder, caption embedding, context refiner) runs once per image; the
 * per-time modulation once per step, shared by both CFG branches.
 *
 * CFG (guidance > 0) runs the positive and the negative prompt as two batch-1 calls. That
 * equals diffusers' padded batch of two: its key mask hides exactly the rows a batch-1
 * call does not have. pred = pos + g * (pos - neg) in fp32 (cfg_truncation 1.0 and no
 * cfg_normalization, the pipeline defaults).
 *
 * Reference: diffusers pipelines/z_image/pipeline_z_image.py; docs/zimage-spec.md §0.3,
 * §3.13, §4, §5.
 */
#include "pipeline.h"
#include "pipeline_bench.h"
#include "dit.h"
#include "qwen3.h"
#include "rng.h"
#include "safetensors.h"
#include "scheduler.h"
#include "tokenizer.h"
#include "vae.h"
#include "zi_err.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ZI_PIPELINE_PATH_MAX 4096

/* The prompt-embedding cache: the text encoder's output (fp32, on the host) of the prompts
 * used last, keyed by their token ids - the encoder's output depends on nothing else - so
 * a prompt used again (another seed, `generate --count`, the negative prompt of every CFG
 * job) skips the encoder: on a card that keeps the encoder's weights on the host that is
 * their whole copy over PCIe. The image is the same bit for bit. At most
 * ZI_CAPTION_CACHE_ENTRIES entries and p->cache_limit bytes, least recently used evicted. */
#define ZI_CAPTION_CACHE_ENTRIES 16
#define ZI_CAPTION_CACHE_DEFAULT_MB 64

typedef struct zi_caption_entry {
    int32_t *ids; /* NULL: empty */
    int L;
    float *emb; /* [L, D] */
    size_t bytes;
    uint64_t used; /* tick of the last use */
} zi_caption_entry;

struct zi_pipeline {
    zi_model_config cfg;
    zi_backend *be;    /* borrowed */
    zi_tokenizer *tok; /* NULL with random weights */
    zi_qwen3 *te;
    zi_dit *dit;
    zi_vae *vae;
    /* the checkpoint files the backend reads weights from (be->weights_borrowed): kept
     * mapped until the models are freed; NULL for those it copied in full */
    zi_st *kept[3];
    int vae_scale;
    int n_random_tokens; /* random weights: prompts become this many random ids */
    uint64_t random_seed;
    char name[256];
    zi_caption_entry cache[ZI_CAPTION_CACHE_ENTRIES];
    size_t cache_bytes, cache_limit;
    uint64_t cache_tick, cache_hits, cache_misses;
};

/* ------------------------------------------------------------------------------------ */
/* load                                                                                 */

/* The sizes the components hand each other must agree. */
static int pipeline_check_config(const zi_model_config *c)
{
    if (c->te.hidden != c->dit.cap_feat_dim)
        return zi_errorf(ZI_EFORMAT,
                         "checkpoint: text encoder hidden_size %d != transformer cap_feat_dim %d",
                         c->te.hidden, c->dit.cap_feat_dim);
    if (c->dit.in_channels != c->vae.latent_channels)
        return zi_errorf(ZI_EFORMAT,
                         "checkpoint: transformer in_channels %d != vae latent_channels %d",
                         c->dit.in_channels, c->vae.latent_channels);
    if (c->vae.out_channels != 3)
        return zi_errorf(ZI_EFORMAT, "checkpoint: vae out_channels %d (RGB needs 3)",
                         c->vae.out_channels);
    return ZI_OK;
}

static int join_path(char *buf, size_t cap, const char *dir, const char *sub)
{
    int n = snprintf(buf, cap, "%s/%s", dir, sub);
    if (n < 0 || (size_t)n >= cap)
        return zi_errorf(ZI_EINVAL, "path too long: %s/%s", dir, sub);
    return ZI_OK;
}

static void caption_entry_clear(zi_pipeline *p, zi_caption_entry *e)
{
    p->cache_bytes -= e->bytes;
    free(e->ids);
    free(e->emb);
    memset(e, 0, sizeof *e);
}

/* Evicts the least recently used entry (there is one whenever cache_bytes > 0). */
static void caption_cache_evict(zi_pipeline *p)
{
    zi_caption_entry *lru = NULL;
    for (int i = 0; i < ZI_CAPTION_CACHE_ENTRIES; i++)
        if (p->cache[i].ids && (!lru || p->cache[i].used < lru->used))
            lru = &p->cache[i];
    if (lru)
        caption_entry_clear(p, lru);
}

int zi_pipeline_set_caption_cache(zi_pipeline *p, size_t max_bytes)
{
    p->cache_limit = max_bytes;
    while (p->cache_bytes > p->cache_limit) /* the rest must fit */
        caption_cache_evict(p);
    return ZI_OK;
}

void zi_pipeline_caption_cache_stats(const zi_pipeline *p, uint64_t *hits, uint64_t *misses)
{
    *hits = p->cache_hits;
    *misses = p->cache_misses;
}

/* The default limit: ZI_CAPTION_CACHE_MB (0 turns the cache off), else 64 MiB (also when
 * the variable is not a number of MiB up to 2^20). */
static void caption_cache_init(zi_pipeline *p)
{
    const char *mb = getenv("ZI_CAPTION_CACHE_MB");
    char *end = NULL;
    unsigned long long v = ZI_CAPTION_CACHE_DEFAULT_MB;
    if (mb && *mb) {
        errno = 0;
        unsigned long long x = strtoull(mb, &end, 10);
        if (errno == 0 && end && *end == '\0' && x <= (1ull << 20))
            v = x;
    }
    p->cache_limit = (size_t)(v << 20);
}

/* The cached embedding of ids[0..L), or NULL (counts the hit or the miss). */
static const float *caption_cache_find(zi_pipeline *p, const int32_t *ids, int L)
{
    for (int i = 0; i < ZI_CAPTION_CACHE_ENTRIES; i++) {
        zi_caption_entry *e = &p->cache[i];
        if (e->ids && e->L == L && memcmp(e->ids, ids, (size_t)L * sizeof *ids) == 0) {
            e->used = ++p->cache_tick;
            p->cache_hits++;
            return e->emb;
        }
    }
    p->cache_misses++;
    return NULL;
}

/* Keeps ids and emb (taking both) when they fit the limit, evicting the least recently
 * used entries; returns 1 when kept, 0 when the caller still owns them. */
static int caption_cache_put(zi_pipeline *p, int32_t *ids, int L, float *emb, size_t emb_bytes)
{
    size_t bytes = emb_bytes + (size_t)L * sizeof *ids;
    if (bytes > p->cache_limit)
        return 0;
    for (;;) { /* ends: an empty cache has a free entry and fits `bytes` */
        zi_caption_entry *free_e = NULL;
        for (int i = 0; i < ZI_CAPTION_CACHE_ENTRIES && !free_e; i++)
            if (!p->cache[i].ids)
                free_e = &p->cache[i];
        if (free_e && p->cache_bytes + bytes <= p->cache_limit) {
            *free_e = (zi_caption_entry){
                .ids = ids, .L = L, .emb = emb, .bytes = bytes, .used = ++p->cache_tick};
            p->cache_bytes += bytes;
            return 1;
        }
        caption_cache_evict(p);
    }
}

void zi_pipeline_free(zi_pipeline *p)
{
    if (!p)
        return;
    zi_pipeline_set_caption_cache(p, 0); /* frees every entry */
    zi_vae_free(p->vae);
    zi_dit_free(p->dit);
    zi_qwen3_free(p->te);
    for (size_t i = 0; i < sizeof p->kept / sizeof p->kept[0]; i++)
        zi_st_close(p->kept[i]); /* after the weights that read them */
    zi_tokenizer_free(p->tok);
    free(p);
}

enum { KEPT_DIT, KEPT_VAE, KEPT_TE };

/* Loads one component from the files in dir/sub with `load`; the files stay mapped in
 * p->kept[slot] when the backend borrowed weights from them, and are closed otherwise. */
static int load_component(zi_pipeline *p, const char *dir, const char *sub, int slot,
                          int (*load)(zi_pipeline *p, const zi_st *st))
{
    char path[ZI_PIPELINE_PATH_MAX];
    zi_st *st = NULL;
    int rc = join_path(path, sizeof path, dir, sub);
    rc = rc ? rc : zi_st_open_dir(path, &st);
    if (rc)
        return rc;
    uint64_t borrowed = p->be->weights_borrowed;
    int stable = p->be->weight_src_stable;
    p->be->weight_src_stable = 1; /* st stays open while a weight reads from it */
    rc = load(p, st);
    p->be->weight_src_stable = stable;
    if (p->be->weights_borrowed != borrowed)
        p->kept[slot] = st; /* closed by zi_pipeline_free, after the weights */
    else
        zi_st_close(st);
    return rc;
}

static int load_dit(zi_pipeline *p, const zi_st *st)
{
    return zi_dit_load_st(st, &p->cfg.dit, p->be, &p->dit);
}

static int load_vae(zi_pipeline *p, const zi_st *st)
{
    return zi_vae_load_st(st, &p->cfg.vae, p->be, &p->vae);
}

static int load_te(zi_pipeline *p, const zi_st *st)
{
    return zi_qwen3_load(&p->te, st, &p->cfg.te, p->be);
}

int zi_pipeline_load(const char *dir, zi_backend *be, zi_pipeline **out)
{
    *out = NULL;
    char path[ZI_PIPELINE_PATH_MAX];
    zi_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return zi_errorf(ZI_ENOMEM, "pipeline: out of memory");
    p->be = be;
    caption_cache_init(p);
    int rc = zi_config_load(dir, &p->cfg);
    rc = rc ? rc : pipeline_check_config(&p->cfg);
    if (rc)
        goto err;
    /* name: the folder's base name, trailing slashes ignored */
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    snprintf(p->name, sizeof p->name, "%.*s", (int)(len - start), dir + start);

    rc = join_path(path, sizeof path, dir, "tokenizer");
    rc = rc ? rc : zi_tokenizer_load(path, &p->tok);
    if (rc)
        goto err;
    /* The transformer first, the text encoder last: under a device weight budget
     * (zi_cuda_set_weight_budget) the weights loaded first stay on the device, and the
     * transformer's are used at every step, the encoder's once per prompt. */
    rc = load_component(p, dir, "transformer", KEPT_DIT, load_dit);
    rc = rc ? rc : load_component(p, dir, "vae", KEPT_VAE, load_vae);
    rc = rc ? rc : load_component(p, dir, "text_encoder", KEPT_TE, load_te);
    if (rc)
        goto err;
    p->vae_scale = zi_vae_scale(&p->cfg.vae);
    *out = p;
    return ZI_OK;
err:
    zi_pipeline_free(p);
    return rc;
}

int zi_pipeline_load_random(const zi_model_config *cfg, zi_backend *be, uint64_t seed, int n_tokens,
                            zi_pipeline **out)
{
    *out = NULL;
    if (n_tokens < 1 || n_tokens > ZI_TOKENIZER_MAX_LEN)
        return zi_errorf(ZI_EINVAL, "pipeline: random prompts need 1..%d tokens, got %d",
                         ZI_TOKENIZER_MAX_LEN, n_tokens);
    int rc = pipeline_check_config(cfg);
    if (rc)
        return rc;
    zi_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return zi_errorf(ZI_ENOMEM, "pipeline: out of memory");
    p->be = be;
    caption_cache_init(p);
    p->cfg = *cfg;
    p->n_random_tokens = n_tokens;
    p->random_seed = seed;
    snprintf(p->name, sizeof p->name, "random");
    rc = zi_dit_load_random(&p->cfg.dit, be, seed + 1, &p->dit); /* order: as zi_pipeline_load */
    rc = rc ? rc : zi_vae_load_random(&p->cfg.vae, be, seed + 2, &p->vae);
    rc = rc ? rc : zi_qwen3_load_random(&p->te, &p->cfg.te, be, seed);
    if (rc) {
        zi_pipeline_free(p);
        return rc;
    }
    p->vae_scale = zi_vae_scale(&p->cfg.vae);
    *out = p;
    return ZI_OK;
}

int zi_pipeline_mem_plan_on(zi_backend *be, const zi_model_config *cfg, int width, int height,
                            float guidance, int n_tokens, zi_mem_plan *out)
{
    memset(out, 0, sizeof *out);
    zi_pipeline *p = NULL;
    int rc = zi_pipeline_load_random(cfg, be, 0, n_tokens ? n_tokens : ZI_TOKENIZER_MAX_LEN, &p);
    if (rc == ZI_OK) /* the second job encodes too, as a new prompt would */
        zi_pipeline_set_caption_cache(p, 0);
    zi_gen_params g = {.prompt = "",
                       .negative_prompt = "",
                       .width = width,
                       .height = height,
                       .steps = 1, /* the peak does not depend on the step count */
                       .guidance = guidance,
                       .seed = 0,
                       .rng = ZI_RNG_CUDA};
    /* twice: what a job leaves cached for the next one counts too */
    for (int i = 0; i < 2 && rc == ZI_OK; i++) {
        uint8_t *rgb = NULL;
        rc = zi_pipeline_generate(p, &g, NULL, NULL, &rgb);
        free(rgb);
    }
    if (rc == ZI_OK) {
        zi_mem_stats m; /* the weights are constant after the load, and the load's own
                           peak (weights and the model's small state) is below the jobs' */
        be->mem_stats(be, &m);
        out->weights = m.weights;
        out->activations = m.peak - m.weights;
        out->mapped = m.peak_reserved > m.weights ? m.peak_reserved - m.weights : 0;
    }
    zi_pipeline_free(p);
    return rc;
}

int zi_pipeline_act_estimate(const zi_model_config *cfg, int width, int height, float guidance,
                             int n_tokens, zi_mem_plan *out)
{
    memset(out, 0, sizeof *out);
    zi_backend *be = zi_backend_meta_new(ZI_BF16, 512); /* the CUDA backend's storage */
    if (!be)
        return ZI_ENOMEM; /* zi_errmsg() says so */
    int rc = zi_pipeline_mem_plan_on(be, cfg, width, height, guidance, n_tokens, out);
    zi_backend_destroy(be);
    return rc;
}

const zi_model_config *zi_pipeline_config(const zi_pipeline *p)
{
    return &p->cfg;
}

zi_qwen3 *zi_pipeline_text_encoder(zi_pipeline *p)
{
    return p->te;
}

zi_vae *zi_pipeline_vae(zi_pipeline *p)
{
    return p->vae;
}

const char *zi_pipeline_model_name(const zi_pipeline *p)
{
    return p->name;
}

zi_dit *zi_pipeline_dit(zi_pipeline *p)
{
    return p->dit;
}

/* ------------------------------------------------------------------------------------ */
/* generate                                                                             */

int zi_pipeline_check_params(const zi_pipeline *p, const zi_gen_params *g)
{
    const int mult = p->vae_scale * p->cfg.dit.patch;
    if (!g->prompt)
        return zi_errorf(ZI_EINVAL, "prompt is missing");
    if (g->width <= 0 || g->height <= 0 || g->width % mult || g->height % mult)
        return zi_errorf(ZI_EINVAL, "size %dx%d: width and height must be positive multiples of %d",
                         g->width, g->height, mult);
    if (g->steps < 1 || g->steps > ZI_SCHED_MAX_STEPS)
        return zi_errorf(ZI_EINVAL, "steps %d: must be in [1, %d]", g->steps, ZI_SCHED_MAX_STEPS);
    if (!isfinite(g->guidance) || g->guidance < 0)
        return zi_errorf(ZI_EINVAL, "guidance %g: must be a finite number >= 0",
                         (double)g->guidance);
    if (g->rng != ZI_RNG_CUDA && g->rng != ZI_RNG_CPU)
        return zi_errorf(ZI_EINVAL, "unknown rng kind %d", (int)g->rng);
    return ZI_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Token ids of a prompt: the chat template through the tokenizer, or random ids for a
 * random-weights pipeline (deterministic in the pipeline seed and the branch). */
static int pipeline_ids(zi_pipeline *p, const char *prompt, int branch, int32_t **ids, int *L)
{
    if (!p->tok) {
        int32_t *v = malloc((size_t)p->n_random_tokens * sizeof *v);
        if (!v)
            return zi_errorf(ZI_ENOMEM, "pipeline: out of memory");
        uint64_t s = p->random_seed * 0x9E3779B97F4A7C15ull + (uint64_t)branch + 1;
        for (int i = 0; i < p->n_random_tokens; i++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v[i] = (int32_t)(s % (uint64_t)p->cfg.te.vocab);
        }
        *ids = v;
        *L = p->n_random_tokens;
        return ZI_OK;
    }
    size_t n = 0;
    int rc = zi_tokenizer_encode_prompt(p->tok, prompt, ZI_TOKENIZER_MAX_LEN, ids, &n);
    if (rc)
        return rc;
    *L = (int)n;
    return ZI_OK;
}

/* prompt -> ids -> Qwen3 (or the prompt-embedding cache) -> DiT caption (context-refined,
 * on the backend). */
static int pipeline_caption(zi_pipeline *p, const char *prompt, int branch, const zi_gen_debug *dbg,
                            zi_dit_caption **cap)
{
    zi_backend *be = p->be;
    int32_t *ids = NULL;
    float *emb = NULL;
    const float *use = NULL;
    zi_tensor h = {0};
    int L = 0;
    const int D = p->cfg.te.hidden;
    int rc = pipeline_ids(p, prompt, branch, &ids, &L);
    if (rc)
        return rc;
    const int32_t *key = ids; /* stays valid when the cache takes ids */
    if (!p->cache_limit)
        p->cache_misses++; /* off: every prompt is encoded */
    else if ((use = caption_cache_find(p, ids, L)) != NULL)
        goto have;
    rc = zi_qwen3_forward(p->te, ids, L, &h, NULL);
    if (rc)
        goto out;
    emb = malloc((size_t)L * (size_t)D * sizeof *emb);
    if (!emb) {
        rc = zi_errorf(ZI_ENOMEM, "pipeline: out of memory");
        goto out;
    }
    rc = be->download(be, emb, &h, (size_t)L * (size_t)D);
    if (rc || (rc = zi_backend_check(be)) != ZI_OK)
        goto out;
    use = emb;
    if (p->cache_limit && caption_cache_put(p, ids, L, emb, (size_t)L * (size_t)D * sizeof *emb)) {
        ids = NULL; /* the cache's now */
        emb = NULL;
    }
have:
    if (dbg && dbg->on_caption && (rc = dbg->on_caption(dbg->ud, branch, key, use, L, D)) != 0) {
        rc = zi_errorf(rc, "pipeline: stopped by the caption hook");
        goto out;
    }
    rc = zi_dit_prepare_caption(p->dit, use, L, cap);
out:
    if (h.owned)
        be->free(be, &h);
    free(emb);
    free(ids);
    return rc;
}

int zi_pipeline_generate_ex(zi_pipeline *p, const zi_gen_params *g, zi_progress_fn progress,
                            void *ud, const zi_gen_debug *dbg, uint8_t **rgb)
{
    *rgb = NULL;
    int rc = zi_pipeline_check_params(p, g);
    if (rc)
        return rc;
    zi_backend *be = p->be;
    /* Each job starts clean: a device error (e.g. out of memory) of an earlier job must
     * not fail this one. */
    zi_backend_clear_error(be);
    const int C = p->cfg.dit.in_channels;
    const int lh = g->height / p->vae_scale, lw = g->width / p->vae_scale;
    const size_t n = (size_t)C * (size_t)lh * (size_t)lw;
    const int N = g->steps;
    const int use_cfg = g->guidance > 0.0f;
    const int branches = use_cfg ? 2 : 1;

    zi_dit_caption *cap[2] = {NULL, NULL};
    float *x = NULL, *out[2] = {NULL, NULL}, *mix = NULL, *sigmas = NULL, *timesteps = NULL;
    uint8_t *img = NULL;
    zi_tensor lat = {0};

    x = malloc(n * sizeof *x);
    out[0] = malloc(n * sizeof *out[0]);
    out[1] = use_cfg ? malloc(n * sizeof *out[1]) : NULL;
    mix = use_cfg ? malloc(n * sizeof *mix) : NULL;
    sigmas = malloc((size_t)(N + 1) * sizeof *sigmas);
    timesteps = malloc((size_t)N * sizeof *timesteps);
    img = malloc((size_t)g->width * (size_t)g->height * 3);
    if (!x || !out[0] || (use_cfg && (!out[1] || !mix)) || !sigmas || !timesteps || !img) {
        rc = zi_errorf(ZI_ENOMEM, "pipeline: out of memory for a %dx%d image", g->width, g->height);
        goto done;
    }
    /* pipeline_z_image.py: image_seq_len = (latent_h // 2) * (latent_w // 2), a literal 2
     * there whatever the transformer's patch size (only dynamic shifting reads it) */
    rc = zi_sched_sigmas(&p->cfg.sched, N, (int64_t)(lh / 2) * (lw / 2), sigmas, timesteps);
    if (rc)
        goto done;

    /* text: the prompt, and the negative prompt ("" by default) only under CFG */
    rc = pipeline_caption(p, g->prompt, 0, dbg, &cap[0]);
    if (!rc && use_cfg)
        rc = pipeline_caption(p, g->negative_prompt ? g->negative_prompt : "", 1, dbg, &cap[1]);
    if (rc)
        goto done;

    /* initial noise: randn [1, C, lh, lw] f32 from the seed; sigma_0 = 1, no scaling */
    if (dbg && dbg->latents_init)
        memcpy(x, dbg->latents_init, n * sizeof *x);
    else if ((rc = zi_randn(x, n, g->seed, g->rng)) != ZI_OK)
        goto done;

    for (int i = 0; i < N; i++) {
        double t0 = now_s();
        const float t = zi_sched_model_time(timesteps[i]);
        for (int b = 0; b < branches; b++) {
            rc = zi_dit_forward(p->dit, cap[b], t, x, lh, lw, out[b]);
            if (rc)
                goto done;
        }
        /* The scheduler integrates v = -pred; pred is the positive output or its CFG mix. */
        float *pred = out[0];
        if (use_cfg) {
            const float gs = g->guidance;
            for (size_t k = 0; k < n; k++) {
                float diff = out[0][k] - out[1][k];
                float scaled = gs * diff;
                mix[k] = out[0][k] + scaled;
            }
            pred = mix;
        }
        zi_sched_euler_step(x, pred, sigmas[i], sigmas[i + 1], n);
        if (dbg && dbg->on_step) {
            const float *const outs[2] = {out[0], out[1]};
            rc = dbg->on_step(dbg->ud, i, x, outs, branches, C, lh, lw);
            if (rc) {
                rc = zi_errorf(rc, "pipeline: stopped by the step hook");
                goto done;
            }
        }
        if (progress && progress(ud, i + 1, N, now_s() - t0)) {
            rc = zi_errorf(ZI_ECANCELLED, "generation cancelled after step %d of %d", i + 1, N);
            goto done;
        }
    }
    /* The captions and the DiT's workspace are dead: free them before the decoder's
     * activations peak. */
    for (int b = 0; b < 2; b++) {
        zi_dit_caption_free(cap[b]);
        cap[b] = NULL;
    }
    zi_dit_trim(p->dit);

    const int64_t shape[3] = {C, lh, lw};
    rc = be->alloc_f32(be, &lat, 3, shape);
    rc = rc ? rc : be->upload(be, &lat, x, n);
    if (rc) {
        rc = zi_backend_check(be) ? zi_backend_check(be) : rc;
        goto done;
    }
    rc = zi_vae_decode_rgb8(p->vae, &lat, lh, lw, img);
    if (rc)
        goto done;
    *rgb = img;
    img = NULL;
done:
    if (lat.owned)
        be->free(be, &lat);
    for (int b = 0; b < 2; b++)
        zi_dit_caption_free(cap[b]);
    free(x);
    free(out[0]);
    free(out[1]);
    free(mix);
    free(sigmas);
    free(timesteps);
    free(img);
    /* A lost device is what the caller must hear about, whatever failed first: a step
     * hook, a cancel or an allocation may have stopped the job before the device reported
     * a fault still in flight, so wait for the device first (its report replaces any other
     * error, backend.h). */
    if (rc != ZI_OK && rc != ZI_EDEVICE) {
        be->sync(be);
        if (be->err == ZI_EDEVICE)
            rc = zi_backend_check(be);
    }
    return rc;
}

int zi_pipeline_generate(zi_pipeline *p, const zi_gen_params *params, zi_progress_fn progress,
                         void *ud, uint8_t **rgb)
{
    return zi_pipeline_generate_ex(p, params, progress, ud, NULL, rgb);
}
