/*
 * test_pipeline.c - the whole pipeline on the CPU backend from prompt and seed only
 * (tokenizer -> Qwen3 -> torch CUDA-generator noise -> DiT + Euler -> VAE) against the
 * float32 reference runs of manifest.json: token ids identical, prompt_embeds and every
 * call's raw output 1e-4 relative, every step's latents 1e-3 relative, the image >= 40 dB
 * PSNR and <= 3 max abs difference from image_u8. Also: cancellation, parameter checks,
 * latents injection and the random-weights pipeline.
 */
#include "config.h"
#include "pipeline.h"
#include "safetensors.h"
#include "vae.h"
#include "zi_err.h"
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EMB_TOL 1e-4
#define OUT_TOL 1e-4
#define LAT_TOL 1e-3
#define MIN_PSNR 40.0
#define MAX_ABS 3

static zi_backend *be;
static zi_pipeline *pl;
static cJSON *manifest;

static int setup(void **state)
{
    (void)state;
    be = zi_backend_cpu_new(1);
    if (!be || zi_pipeline_load(zi_test_model(""), be, &pl) != ZI_OK) {
        fprintf(stderr, "setup: %s\n", zi_errmsg());
        return -1;
    }
    manifest = zi_test_manifest();
    return 0;
}

/* The size step of the checkpoint: width and height must be multiples of it. */
static int size_step(const zi_pipeline *p)
{
    const zi_model_config *m = zi_pipeline_config(p);
    return zi_vae_scale(&m->vae) * m->dit.patch;
}

static int teardown(void **state)
{
    (void)state;
    cJSON_Delete(manifest);
    zi_pipeline_free(pl);
    zi_backend_destroy(be);
    return 0;
}

/* ---- hooks comparing with a case file ---- */

typedef struct case_ctx {
    const char *name;
    const zi_st *st;
    int steps_seen;
    double emb_err, out_err, lat_err;
} case_ctx;

static int on_caption(void *ud, int branch, const int32_t *ids, const float *emb, int L, int D)
{
    case_ctx *c = ud;
    const char *id_name = branch ? "negative_input_ids" : "input_ids";
    const char *emb_name = branch ? "negative_prompt_embeds" : "prompt_embeds";
    const zi_st_tensor *t = zi_st_find(c->st, id_name);
    assert_non_null(t);
    assert_int_equal(t->ndim, 1);
    if (t->shape[0] != L)
        fail_msg("%s %s: %d ids, want %lld", c->name, id_name, L, (long long)t->shape[0]);
    assert_memory_equal(ids, t->data, (size_t)L * sizeof *ids); /* I32, little-endian */
    size_t n = 0;
    float *ref = zi_test_st_f32(c->st, emb_name, &n);
    assert_int_equal(n, (size_t)L * (size_t)D);
    double err = zi_rel_err(emb, ref, n);
    if (err > c->emb_err)
        c->emb_err = err;
    if (!(err <= EMB_TOL))
        fail_msg("%s %s: rel err %.3g", c->name, emb_name, err);
    free(ref);
    return 0;
}

static int on_step(void *ud, int step, const float *latents, const float *const *model_out,
                   int n_out, int C, int lh, int lw)
{
    case_ctx *c = ud;
    const size_t n = (size_t)C * (size_t)lh * (size_t)lw;
    char name[64];
    assert_int_equal(step, c->steps_seen);
    for (int b = 0; b < n_out; b++) {
        snprintf(name, sizeof name, "step%d.model_out.%d", step, b);
        size_t nr = 0;
        float *ref = zi_test_st_f32(c->st, name, &nr);
        assert_int_equal(nr, n);
        double err = zi_rel_err(model_out[b], ref, n);
        if (err > c->out_err)
            c->out_err = err;
        if (!(err <= OUT_TOL))
            fail_msg("%s %s: rel err %.3g", c->name, name, err);
        free(ref);
    }
    snprintf(name, sizeof name, "step%d.latents", step);
    size_t nr = 0;
    float *ref = zi_test_st_f32(c->st, name, &nr);
    assert_int_equal(nr, n);
    double err = zi_rel_err(latents, ref, n);
    if (err > c->lat_err)
        c->lat_err = err;
    if (!(err <= LAT_TOL))
        fail_msg("%s %s: rel err %.3g", c->name, name, err);
    free(ref);
    c->steps_seen++;
    return 0;
}

static void params_of(const cJSON *cs, zi_gen_params *g)
{
    memset(g, 0, sizeof *g);
    g->prompt = cJSON_GetObjectItem(cs, "prompt")->valuestring;
    const cJSON *neg = cJSON_GetObjectItem(cs, "negative");
    g->negative_prompt = cJSON_IsString(neg) ? neg->valuestring : NULL;
    g->width = cJSON_GetObjectItem(cs, "width")->valueint;
    g->height = cJSON_GetObjectItem(cs, "height")->valueint;
    g->steps = cJSON_GetObjectItem(cs, "steps")->valueint;
    g->guidance = (float)cJSON_GetObjectItem(cs, "guidance")->valuedouble;
    g->seed = zi_test_case_seed(cs);
    g->rng = zi_test_case_rng(manifest, cs); /* the generator of latents_init */
}

static void run_case(const cJSON *cs, int inject)
{
    zi_gen_params g;
    params_of(cs, &g);
    const char *name = cJSON_GetObjectItem(cs, "name")->valuestring;
    char path[256];
    snprintf(path, sizeof path, "vectors/%s", cJSON_GetObjectItem(cs, "file")->valuestring);
    zi_st *st = NULL;
    assert_int_equal(zi_st_open(zi_test_golden(path), &st), ZI_OK);
    case_ctx ctx = {.name = name, .st = st};
    zi_gen_debug dbg = {.on_caption = on_caption, .on_step = on_step, .ud = &ctx};
    float *init = NULL;
    if (inject)
        dbg.latents_init = init = zi_test_st_f32(st, "latents_init", NULL);
    uint8_t *rgb = NULL;
    if (zi_pipeline_generate_ex(pl, &g, NULL, NULL, &dbg, &rgb) != ZI_OK)
        fail_msg("%s: %s", name, zi_errmsg());
    assert_int_equal(ctx.steps_seen, g.steps);

    const zi_st_tensor *ref = zi_st_find(st, "image_u8");
    assert_non_null(ref);
    assert_int_equal(ref->shape[0], g.height);
    assert_int_equal(ref->shape[1], g.width);
    const size_t nb = (size_t)g.width * (size_t)g.height * 3;
    const uint8_t *want = ref->data;
    double psnr = zi_psnr_u8(rgb, want, nb);
    int max_abs = 0;
    for (size_t i = 0; i < nb; i++) {
        int d = abs((int)rgb[i] - (int)want[i]);
        if (d > max_abs)
            max_abs = d;
    }
    printf("  %-16s %s %dx%d %d steps g=%.1f: embeds %.2g, model_out %.2g, latents %.2g, "
           "image %.1f dB max abs %d\n",
           name, inject ? "(latents_init)" : "(seed)        ", g.width, g.height, g.steps,
           (double)g.guidance, ctx.emb_err, ctx.out_err, ctx.lat_err, psnr, max_abs);
    if (!(psnr >= MIN_PSNR) || max_abs > MAX_ABS)
        fail_msg("%s: image %.2f dB, max abs %d", name, psnr, max_abs);
    free(rgb);
    free(init);
    zi_st_close(st);
}

static void test_cases_from_seed(void **state)
{
    (void)state;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, zi_test_manifest_cases(manifest)) run_case(cs, 0);
}

/* Case p0 again, its latents injected: its prompt was encoded by test_cases_from_seed, so
 * this run takes it from the prompt-embedding cache, which the caption hook checks against
 * diffusers' embedding like a fresh encode. */
static void test_case_injected_latents(void **state)
{
    (void)state;
    uint64_t hits0, misses0, hits, misses;
    zi_pipeline_caption_cache_stats(pl, &hits0, &misses0);
    run_case(cJSON_GetArrayItem(zi_test_manifest_cases(manifest), 0), 1);
    zi_pipeline_caption_cache_stats(pl, &hits, &misses);
    assert_true(hits > hits0);
    assert_int_equal(misses, misses0);
}

/* ---- progress and cancellation ---- */

typedef struct prog_ctx {
    int calls, stop_at, last_step, steps;
    double secs;
} prog_ctx;

static int on_progress(void *ud, int step, int steps, double s)
{
    prog_ctx *c = ud;
    c->calls++;
    assert_int_equal(step, c->last_step + 1);
    c->last_step = step;
    c->steps = steps;
    c->secs += s;
    assert_true(s >= 0);
    return step == c->stop_at;
}

static void test_progress_and_cancel(void **state)
{
    (void)state;
    const int m = size_step(pl); /* 16 for tiny-zimage: 64x64 */
    zi_gen_params g = {.prompt = "a cat", .width = 4 * m, .height = 4 * m, .steps = 3, .seed = 1};
    uint8_t *rgb = NULL;
    prog_ctx c = {.stop_at = -1};
    assert_int_equal(zi_pipeline_generate(pl, &g, on_progress, &c, &rgb), ZI_OK);
    assert_non_null(rgb);
    assert_int_equal(c.calls, 3);
    assert_int_equal(c.steps, 3);
    free(rgb);
    rgb = NULL;

    prog_ctx c2 = {.stop_at = 2};
    assert_int_equal(zi_pipeline_generate(pl, &g, on_progress, &c2, &rgb), ZI_ECANCELLED);
    assert_null(rgb);
    assert_int_equal(c2.calls, 2);
}

static void test_bad_params(void **state)
{
    (void)state;
    uint8_t *rgb = NULL;
    const int m = size_step(pl); /* 16 for tiny-zimage: 72x64 */
    zi_gen_params g = {.prompt = "x", .width = 4 * m + m / 2, .height = 4 * m, .steps = 2};
    assert_int_equal(zi_pipeline_generate(pl, &g, NULL, NULL, &rgb), ZI_EINVAL);
    char size[64];
    snprintf(size, sizeof size, "%dx%d", g.width, g.height);
    assert_non_null(strstr(zi_errmsg(), size));
    g.width = 4 * m;
    g.steps = 0;
    assert_int_equal(zi_pipeline_generate(pl, &g, NULL, NULL, &rgb), ZI_EINVAL);
    g.steps = 2;
    g.guidance = NAN;
    assert_int_equal(zi_pipeline_generate(pl, &g, NULL, NULL, &rgb), ZI_EINVAL);
    g.guidance = 0;
    g.prompt = NULL;
    assert_int_equal(zi_pipeline_generate(pl, &g, NULL, NULL, &rgb), ZI_EINVAL);
    assert_null(rgb);
}

/* ---- random weights at the checkpoint's shapes ---- */

static void test_random_pipeline(void **state)
{
    (void)state;
    zi_pipeline *r = NULL;
    assert_int_equal(zi_pipeline_load_random(zi_pipeline_config(pl), be, 5, 12, &r), ZI_OK);
    assert_int_equal(zi_pipeline_set_caption_cache(r, 0), ZI_OK); /* both runs encode */
    assert_string_equal(zi_pipeline_model_name(r), "random");
    const int m = size_step(pl); /* 16 for tiny-zimage: 64x48 */
    zi_gen_params g = {.prompt = "ignored",
                       .width = 4 * m,
                       .height = 3 * m,
                       .steps = 2,
                       .guidance = 2.0f,
                       .seed = 3,
                       .rng = ZI_RNG_CPU};
    uint8_t *a = NULL, *b = NULL;
    assert_int_equal(zi_pipeline_generate(r, &g, NULL, NULL, &a), ZI_OK);
    assert_int_equal(zi_pipeline_generate(r, &g, NULL, NULL, &b), ZI_OK);
    assert_memory_equal(a, b, (size_t)g.width * (size_t)g.height * 3);
    free(a);
    free(b);
    zi_pipeline_free(r);
}

/* ---- the prompt-embedding cache ---- */

static void cache_counts(const zi_pipeline *p, uint64_t want_hits, uint64_t want_misses)
{
    uint64_t hits = 0, misses = 0;
    zi_pipeline_caption_cache_stats(p, &hits, &misses);
    assert_int_equal(hits, want_hits);
    assert_int_equal(misses, want_misses);
}

/* A prompt used again skips the encoder and gives, byte for byte, the image its own encode
 * gives; CFG's negative prompt is cached too; a limit below one entry keeps nothing; 0
 * turns the cache off. (test_case_injected_latents runs golden case p0 again through the
 * cache: its caption hook checks the cached embedding against diffusers'.) */
static void test_caption_cache(void **state)
{
    (void)state;
    zi_pipeline *p = NULL;
    assert_int_equal(zi_pipeline_load(zi_test_model(""), be, &p), ZI_OK);
    const int m = size_step(p);
    const size_t bytes = (size_t)(4 * m) * (size_t)(4 * m) * 3;
    zi_gen_params g = {.prompt = "a red cube on a wooden table",
                       .width = 4 * m,
                       .height = 4 * m,
                       .steps = 2,
                       .seed = 5,
                       .rng = ZI_RNG_CUDA};
    uint8_t *a = NULL, *b = NULL, *c = NULL;
    cache_counts(p, 0, 0);
    assert_int_equal(zi_pipeline_generate(p, &g, NULL, NULL, &a), ZI_OK);
    cache_counts(p, 0, 1);
    g.seed = 6;
    assert_int_equal(zi_pipeline_generate(p, &g, NULL, NULL, &b), ZI_OK);
    cache_counts(p, 1, 1); /* the encoder did not run */
    assert_int_equal(zi_pipeline_set_caption_cache(p, 0), ZI_OK);
    assert_int_equal(zi_pipeline_generate(p, &g, NULL, NULL, &c), ZI_OK);
    cache_counts(p, 1, 2); /* off: encoded again */
    assert_memory_equal(b, c, bytes);
    assert_memory_not_equal(a, b, bytes); /* another seed */
    free(a), free(b), free(c);

    /* CFG: the prompt and the empty negative prompt, each encoded once */
    assert_int_equal(zi_pipeline_set_caption_cache(p, (size_t)64 << 20), ZI_OK);
    g.guidance = 2.0f;
    assert_int_equal(zi_pipeline_generate(p, &g, NULL, NULL, &a), ZI_OK);
    cache_counts(p, 1, 4); /* emptied by the 0 above */
    assert_int_equal(zi_pipeline_generate(p, &g, NULL, NULL, &b), ZI_OK);
    cache_counts(p, 3, 4);
    assert_memory_equal(a, b, bytes);
    free(a), free(b);

    /* too small for one embedding: each job encodes again */
    assert_int_equal(zi_pipeline_set_caption_cache(p, 64), ZI_OK);
    g.guidance = 0.0f;
    assert_int_equal(zi_pipeline_generate(p, &g, NULL, NULL, &a), ZI_OK);
    assert_int_equal(zi_pipeline_generate(p, &g, NULL, NULL, &b), ZI_OK);
    cache_counts(p, 3, 6);
    free(a), free(b);
    zi_pipeline_free(p);
}

/* The harness reads a held-out manifest exactly: seeds of 2^53 and above (which a double
 * would round) and string seeds, and the generator the manifest names, case or set-wide. */
static void test_manifest_reading(void **state)
{
    (void)state;
    char dir[] = "/tmp/zi-manifest-XXXXXX", path[300];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/vectors", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/vectors/manifest.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"latents_rng\": \"torch.Generator('cpu').manual_seed(seed)\", \"cases\": [\n"
          " {\"name\": \"a\", \"seed\" : 18446744073709551615},\n"
          " {\"name\": \"b\", \"seed\":9007199254740993, \"latents_rng\": \"Generator('cuda')\"},\n"
          " {\"name\": \"c\", \"seed\": \"9223372036854775809\"},\n"
          " {\"name\": \"d\", \"seed\": 0}]}\n",
          f);
    assert_int_equal(fclose(f), 0);
    const char *old = getenv("ZI_GOLDEN_DIR");
    char *saved = old ? strdup(old) : NULL;
    setenv("ZI_GOLDEN_DIR", dir, 1);
    cJSON *m = zi_test_manifest();
    const cJSON *cases = zi_test_manifest_cases(m);
    assert_true(zi_test_case_seed(cJSON_GetArrayItem(cases, 0)) == UINT64_MAX);
    assert_true(zi_test_case_seed(cJSON_GetArrayItem(cases, 1)) == 9007199254740993ull);
    assert_true(zi_test_case_seed(cJSON_GetArrayItem(cases, 2)) == 9223372036854775809ull);
    assert_true(zi_test_case_seed(cJSON_GetArrayItem(cases, 3)) == 0);
    assert_int_equal(zi_test_case_rng(m, cJSON_GetArrayItem(cases, 0)), ZI_RNG_CPU);
    assert_int_equal(zi_test_case_rng(m, cJSON_GetArrayItem(cases, 1)), ZI_RNG_CUDA);
    cJSON_Delete(m);
    if (saved)
        setenv("ZI_GOLDEN_DIR", saved, 1);
    else
        unsetenv("ZI_GOLDEN_DIR");
    free(saved);
    unlink(path);
    snprintf(path, sizeof path, "%s/vectors", dir);
    rmdir(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_from_seed),     cmocka_unit_test(test_case_injected_latents),
        cmocka_unit_test(test_progress_and_cancel), cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_random_pipeline),     cmocka_unit_test(test_caption_cache),
        cmocka_unit_test(test_manifest_reading),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
