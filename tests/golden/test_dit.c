/*
 * test_dit.c - the DiT on the CPU backend against the float32 reference vectors.
 *
 * Inputs are the reference's own prompt_embeds and model inputs, so this checks the
 * transformer alone: call-0 intermediates (dit.*, padded sequences, unified = image rows
 * then caption rows) of the case file that has them (found by its tensors, not its name) and
 * every call's raw output of every case of vectors/manifest.json (input = the previous
 * step's latents; steps and CFG branches from the manifest), within the README's 1e-4
 * relative. Also: the typed tensor table
 * (missing / extra / mis-shaped tensors are load errors naming the tensor) and the
 * random-weights constructor.
 */
#include "config.h"
#include "dit.h"
#include "safetensors.h"
#include "zi_err.h"
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIT_TOL 1e-4

static zi_backend *be;
static zi_model_config cfg;
static cJSON *manifest;

static int setup(void **state)
{
    (void)state;
    be = zi_backend_cpu_new(1);
    if (!be) {
        fprintf(stderr, "cpu backend: %s\n", zi_errmsg());
        return -1;
    }
    if (zi_config_load(zi_test_model(""), &cfg) != ZI_OK) {
        fprintf(stderr, "config: %s\n", zi_errmsg());
        return -1;
    }
    manifest = zi_test_manifest();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cJSON_Delete(manifest);
    zi_backend_destroy(be);
    return 0;
}

static zi_dit *load_dit(void)
{
    zi_dit *d = NULL;
    int rc = zi_dit_load(zi_test_model("transformer"), &cfg.dit, be, &d);
    if (rc)
        fail_msg("load: %s", zi_errmsg());
    return d;
}

/* ---- intermediates of call 0 (the case file that has dit.*) ---- */

typedef struct tap_ctx {
    const zi_st *st;      /* the case's vectors */
    const zi_st *weights; /* the checkpoint (pad tokens) */
    int n_img, n_cap;     /* real rows of the two embedders */
    int branches;         /* 2 when the case ran CFG: diffusers' batch of two */
    int seen;
    double worst;
    char worst_name[64];
} tap_ctx;

/*
 * The reference's dit.x_embedder / dit.cap_embedder were captured on the embedder modules,
 * where diffusers has filled the pad rows with the last real row (it overwrites them with
 * the learned pad token only afterwards). The tap sees the sequence the refiner gets, so
 * for those two the real rows are compared with the reference and the pad rows with the
 * checkpoint's pad token.
 */
static int tap_compare(void *ud, const char *name, const zi_tensor *t, int rows, int cols)
{
    tap_ctx *c = ud;
    char key[96];
    snprintf(key, sizeof key, "dit.%s", name);
    size_t n = 0;
    float *ref = zi_test_st_f32(c->st, key, &n);
    /* Under CFG diffusers ran both prompts as one batch: [2, S, C] sequences padded to the
     * longer one, [2, C] for t_embedder, and the embedders' rows of both prompts one after
     * the other, the positive prompt's first. This forward is the positive prompt's: its
     * rows are item 0's first ones. */
    const zi_st_tensor *rt = zi_st_find(c->st, key);
    assert_non_null(rt);
    assert_int_equal(rt->shape[rt->ndim - 1], cols);
    if (c->branches == 1)
        assert_int_equal(n, (size_t)rows * (size_t)cols);
    else
        assert_true(rt->ndim >= 2 && (rt->ndim == 2 || rt->shape[0] == 2) &&
                    rt->shape[rt->ndim - 2] >= rows);
    const size_t mine = (size_t)rows * (size_t)cols;
    float *got = malloc(mine * sizeof *got);
    assert_non_null(got);
    assert_int_equal(be->download(be, got, t, mine), ZI_OK);
    int real = rows;
    const char *pad_name = NULL;
    if (strcmp(name, "x_embedder") == 0) {
        real = c->n_img;
        pad_name = "x_pad_token";
    } else if (strcmp(name, "cap_embedder") == 0) {
        real = c->n_cap;
        pad_name = "cap_pad_token";
    }
    double err = zi_rel_err(got, ref, (size_t)real * (size_t)cols);
    printf("  dit.%-20s [%d, %d] rel err %.3g\n", name, rows, cols, err);
    if (err > c->worst) {
        c->worst = err;
        snprintf(c->worst_name, sizeof c->worst_name, "%s", name);
    }
    if (!(err <= DIT_TOL))
        fail_msg("dit.%s: rel err %.3g > %g", name, err, DIT_TOL);
    if (pad_name) {
        /* pad rows exist only when the sequence is not a multiple of the pad length */
        assert_true(real >= 1 && real <= rows);
        float *pad = zi_test_st_f32(c->weights, pad_name, NULL);
        for (int r = real; r < rows; r++)
            assert_memory_equal(got + (size_t)r * cols, pad, (size_t)cols * sizeof *pad);
        free(pad);
    }
    c->seen++;
    free(ref);
    free(got);
    return 0;
}

static void test_dit_intermediates(void **state)
{
    (void)state;
    const cJSON *cs = zi_test_case_with(manifest, "dit.t_embedder");
    const char *file = zi_test_case_str(cs, "file");
    zi_st *st = zi_test_case_open(cs);
    zi_st *wst = NULL;
    assert_int_equal(zi_st_open_dir(zi_test_model("transformer"), &wst), ZI_OK);
    zi_dit *d = load_dit();
    tap_ctx ctx = {.st = st, .weights = wst, .branches = zi_test_case_branches(cs)};
    zi_dit_set_tap(d, tap_compare, &ctx);

    size_t ncap = 0, nin = 0, nout = 0;
    float *cap = zi_test_st_f32(st, "prompt_embeds", &ncap);
    float *in = zi_test_st_f32(st, "step0.model_in.0", &nin);
    float *ref = zi_test_st_f32(st, "step0.model_out.0", &nout);
    float *t = zi_test_st_f32(st, "step0.t", NULL);
    const zi_st_tensor *ti = zi_st_find(st, "step0.model_in.0");
    const int lh = (int)ti->shape[2], lw = (int)ti->shape[3];
    const int L = (int)(ncap / (size_t)cfg.dit.cap_feat_dim);
    ctx.n_cap = L;
    ctx.n_img = (lh / cfg.dit.patch) * (lw / cfg.dit.patch);

    zi_dit_caption *c = NULL;
    assert_int_equal(zi_dit_prepare_caption(d, cap, L, &c), ZI_OK);
    float *out = malloc(nout * sizeof *out);
    assert_non_null(out);
    if (zi_dit_forward(d, c, t[0], in, lh, lw, out) != ZI_OK)
        fail_msg("forward: %s", zi_errmsg());
    /* t_embedder, x_embedder, cap_embedder, final_layer + every block */
    int expect = 4 + 2 * cfg.dit.n_refiner_layers + cfg.dit.n_layers;
    assert_int_equal(ctx.seen, expect);
    double err = zi_rel_err(out, ref, nout);
    printf("  %s model_out.0 rel err %.3g (worst intermediate %s %.3g)\n", file, err,
           ctx.worst_name, ctx.worst);
    assert_true(err <= DIT_TOL);

    /* The same call again, caption and per-time state reused, without a tap. Only the GEMM
     * row count of the final layer differs (image rows only), so last bits may move. */
    zi_dit_set_tap(d, NULL, NULL);
    float *out2 = malloc(nout * sizeof *out2);
    assert_non_null(out2);
    assert_int_equal(zi_dit_forward(d, c, t[0], in, lh, lw, out2), ZI_OK);
    double err2 = zi_rel_err(out2, out, nout);
    if (!(err2 <= 1e-6))
        fail_msg("second call differs: rel err %.3g", err2);
    /* After the workspace and RoPE cache are dropped, the next call rebuilds them. */
    zi_dit_trim(d);
    float *out3 = malloc(nout * sizeof *out3);
    assert_non_null(out3);
    assert_int_equal(zi_dit_forward(d, c, t[0], in, lh, lw, out3), ZI_OK);
    assert_memory_equal(out2, out3, nout * sizeof *out3);
    free(out3);

    free(out2);
    free(out);
    free(cap);
    free(in);
    free(ref);
    free(t);
    zi_dit_caption_free(c);
    zi_dit_free(d);
    zi_st_close(st);
    zi_st_close(wst);
}

/* ---- every call of every case: input = previous latents, output = model_out.{b} ---- */

static void check_case_calls(zi_dit *d, const cJSON *cs)
{
    const char *file = zi_test_case_str(cs, "file");
    const int steps = (int)zi_test_case_num(cs, "steps");
    const int cfg_branches = zi_test_case_branches(cs);
    assert_true(steps >= 1);
    zi_st *st = zi_test_case_open(cs);
    /* every raw output of the file is compared: none beyond the manifest's branches/steps */
    char name[64];
    snprintf(name, sizeof name, "step0.model_out.%d", cfg_branches);
    if (zi_st_find(st, name))
        fail_msg("%s has %s but guidance %g means %d branch(es)", file, name,
                 zi_test_case_num(cs, "guidance"), cfg_branches);
    snprintf(name, sizeof name, "step%d.model_out.0", steps);
    if (zi_st_find(st, name))
        fail_msg("%s has %s but the manifest says %d steps", file, name, steps);
    const zi_st_tensor *li = zi_st_find(st, "latents_init");
    assert_non_null(li);
    const int lh = (int)li->shape[2], lw = (int)li->shape[3];
    const size_t n = (size_t)cfg.dit.in_channels * (size_t)lh * (size_t)lw;

    zi_dit_caption *caps[2] = {NULL, NULL};
    const char *cap_names[2] = {"prompt_embeds", "negative_prompt_embeds"};
    for (int b = 0; b < cfg_branches; b++) {
        size_t ncap = 0;
        float *cap = zi_test_st_f32(st, cap_names[b], &ncap);
        int L = (int)(ncap / (size_t)cfg.dit.cap_feat_dim);
        assert_int_equal(zi_dit_prepare_caption(d, cap, L, &caps[b]), ZI_OK);
        free(cap);
    }
    float *out = malloc(n * sizeof *out);
    assert_non_null(out);
    double worst = 0;
    for (int i = 0; i < steps; i++) {
        if (i == 0)
            snprintf(name, sizeof name, "latents_init");
        else
            snprintf(name, sizeof name, "step%d.latents", i - 1);
        float *in = zi_test_st_f32(st, name, NULL);
        snprintf(name, sizeof name, "step%d.t", i);
        size_t nt = 0;
        float *t = zi_test_st_f32(st, name, &nt);
        assert_true(nt >= (size_t)cfg_branches);
        for (int b = 0; b < cfg_branches; b++) {
            if (zi_dit_forward(d, caps[b], t[b], in, lh, lw, out) != ZI_OK)
                fail_msg("%s call %d: %s", file, i, zi_errmsg());
            snprintf(name, sizeof name, "step%d.model_out.%d", i, b);
            float *ref = zi_test_st_f32(st, name, NULL);
            double err = zi_rel_err(out, ref, n);
            if (err > worst)
                worst = err;
            if (!(err <= DIT_TOL))
                fail_msg("%s %s: rel err %.3g", file, name, err);
            free(ref);
        }
        free(in);
        free(t);
    }
    printf("  %-28s %d calls x %d: worst model_out rel err %.3g\n", file, steps, cfg_branches,
           worst);
    free(out);
    for (int b = 0; b < cfg_branches; b++)
        zi_dit_caption_free(caps[b]);
    zi_st_close(st);
}

static void test_dit_all_calls(void **state)
{
    (void)state;
    zi_dit *d = load_dit();
    const cJSON *cs;
    int ncases = 0;
    cJSON_ArrayForEach(cs, zi_test_manifest_cases(manifest))
    {
        check_case_calls(d, cs);
        ncases++;
    }
    assert_true(ncases >= 1);
    zi_dit_free(d);
}

/* ---- the typed table ---- */

static void expect_load_error(const zi_dit_config *dc, const char *needle)
{
    zi_dit *d = NULL;
    int rc = zi_dit_load(zi_test_model("transformer"), dc, be, &d);
    assert_int_not_equal(rc, ZI_OK);
    assert_null(d);
    if (!strstr(zi_errmsg(), needle))
        fail_msg("error '%s' does not mention '%s'", zi_errmsg(), needle);
}

static void test_dit_table_errors(void **state)
{
    (void)state;
    zi_dit_config dc = cfg.dit;
    dc.n_layers = cfg.dit.n_layers + 1; /* the checkpoint lacks the last layer */
    char name[64];
    snprintf(name, sizeof name, "layers.%d.", cfg.dit.n_layers);
    expect_load_error(&dc, name);

    dc = cfg.dit;
    dc.n_layers = cfg.dit.n_layers - 1; /* the checkpoint has one layer too many */
    snprintf(name, sizeof name, "layers.%d.", cfg.dit.n_layers - 1);
    expect_load_error(&dc, name);
    expect_load_error(&dc, "unexpected");

    dc = cfg.dit;
    dc.ffn_hidden = cfg.dit.ffn_hidden + 1; /* every FFN weight is mis-shaped */
    expect_load_error(&dc, "feed_forward.w1.weight");

    dc = cfg.dit;
    dc.cap_feat_dim = cfg.dit.cap_feat_dim * 2;
    expect_load_error(&dc, "cap_embedder.");

    dc = cfg.dit;
    dc.axes_dims[0] += 2; /* no longer sums to the head dim */
    expect_load_error(&dc, "axes_dims");
}

/* ---- random weights ---- */

static void test_dit_random(void **state)
{
    (void)state;
    zi_dit *a = NULL, *b = NULL;
    assert_int_equal(zi_dit_load_random(&cfg.dit, be, 7, &a), ZI_OK);
    assert_int_equal(zi_dit_load_random(&cfg.dit, be, 7, &b), ZI_OK);
    assert_true(zi_dit_weight_bytes(a) > 0);
    const int L = 5, lh = 6, lw = 10; /* 15 tokens: pads both sequences */
    const size_t n = (size_t)cfg.dit.in_channels * lh * lw;
    float *cap = malloc(sizeof(float) * (size_t)L * (size_t)cfg.dit.cap_feat_dim);
    float *x = malloc(n * sizeof *x), *oa = malloc(n * sizeof *oa), *ob = malloc(n * sizeof *ob);
    assert_true(cap && x && oa && ob);
    for (int i = 0; i < L * cfg.dit.cap_feat_dim; i++)
        cap[i] = sinf((float)i);
    for (size_t i = 0; i < n; i++)
        x[i] = cosf((float)i * 0.37f);
    zi_dit_caption *ca = NULL, *cb = NULL;
    assert_int_equal(zi_dit_prepare_caption(a, cap, L, &ca), ZI_OK);
    assert_int_equal(zi_dit_prepare_caption(b, cap, L, &cb), ZI_OK);
    assert_int_equal(zi_dit_forward(a, ca, 0.25f, x, lh, lw, oa), ZI_OK);
    assert_int_equal(zi_dit_forward(b, cb, 0.25f, x, lh, lw, ob), ZI_OK);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(isfinite(oa[i]));
        sum += fabs(oa[i]);
    }
    assert_true(sum > 0);
    assert_memory_equal(oa, ob, n * sizeof *oa);
    /* a caption from another model is refused; an odd latent side too */
    assert_int_equal(zi_dit_forward(a, cb, 0.25f, x, lh, lw, oa), ZI_EINVAL);
    assert_int_equal(zi_dit_forward(a, ca, 0.25f, x, lh + 1, lw, oa), ZI_EINVAL);
    zi_dit_caption_free(ca);
    zi_dit_caption_free(cb);
    zi_dit_free(a);
    zi_dit_free(b);
    free(cap);
    free(x);
    free(oa);
    free(ob);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dit_intermediates),
        cmocka_unit_test(test_dit_all_calls),
        cmocka_unit_test(test_dit_table_errors),
        cmocka_unit_test(test_dit_random),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
