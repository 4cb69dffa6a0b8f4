/*
 * test_vae.c - the VAE decoder on the CPU backend against the golden vectors.
 *
 * For every case of vectors/manifest.json: vae.decoder.in -> decoder output within 1e-4
 * relative of vae.decoder.out, and the uint8 image >= 40 dB PSNR, <= 3 max abs against
 * image_u8. For the case file that has them (found by its tensors, not its name) also every
 * intermediate (conv_in, mid_block, up_blocks.i, conv_norm_out, conv_out). Then the whole
 * tail from the sampler's final latents (step{steps-1} of the manifest's steps), the memory
 * plan (measured peak == zi_vae_peak_estimate), load errors that name the tensor, and random
 * weights of other shapes (nothing depends on the tiny sizes).
 */
#include "zi_test.h"

#include "backend.h"
#include "config.h"
#include "safetensors.h"
#include "vae.h"
#include "zi_err.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ZI_VAE_TOL 1e-4

typedef struct fixture {
    zi_backend *be;
    zi_vae_config cfg;
    zi_vae *vae;
    cJSON *manifest;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->be = zi_backend_cpu_new(0);
    assert_non_null(f->be);
    if (zi_vae_config_load(zi_test_model("vae/config.json"), &f->cfg) != ZI_OK)
        fail_msg("config: %s", zi_errmsg());
    if (zi_vae_load(zi_test_model("vae"), &f->cfg, f->be, &f->vae) != ZI_OK)
        fail_msg("load: %s", zi_errmsg());
    f->manifest = zi_test_manifest();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cJSON_Delete(f->manifest);
    zi_vae_free(f->vae);
    zi_backend_destroy(f->be);
    free(f);
    return 0;
}

/* Uploads host f32 [C, h, w] into a new backend tensor. */
static zi_tensor upload(zi_backend *be, const float *x, int C, int h, int w)
{
    zi_tensor t;
    assert_int_equal(be->alloc_f32(be, &t, 3, (int64_t[]){C, h, w}), ZI_OK);
    assert_int_equal(be->upload(be, &t, x, (size_t)C * h * w), ZI_OK);
    return t;
}

typedef struct tap_ctx {
    zi_backend *be;
    const zi_st *st;
    int checked;
    double worst;
} tap_ctx;

static int tap_compare(void *ud, const char *name, const zi_tensor *t, int C, int h, int w)
{
    tap_ctx *tc = ud;
    char key[64];
    snprintf(key, sizeof key, "vae.decoder.%s", name);
    size_t n = 0;
    float *ref = zi_test_st_f32(tc->st, key, &n);
    assert_int_equal(n, (size_t)C * h * w);
    float *out = malloc(n * sizeof(float));
    assert_non_null(out);
    assert_int_equal(tc->be->download(tc->be, out, t, n), ZI_OK);
    double e = zi_rel_err(out, ref, n);
    printf("    %-28s [%d,%d,%d] rel err %.3g\n", key, C, h, w, e);
    if (!(e <= ZI_VAE_TOL))
        fail_msg("%s: rel err %g > %g", key, e, ZI_VAE_TOL);
    tc->worst = e > tc->worst ? e : tc->worst;
    tc->checked++;
    free(out);
    free(ref);
    return 0;
}

static void check_case(fixture *f, const cJSON *cs, int with_taps)
{
    const char *name = zi_test_case_str(cs, "name");
    zi_st *st = zi_test_case_open(cs);
    const zi_st_tensor *tin = zi_st_find(st, "vae.decoder.in");
    assert_non_null(tin);
    assert_int_equal(tin->ndim, 4);
    int C = (int)tin->shape[1], lh = (int)tin->shape[2], lw = (int)tin->shape[3];
    assert_int_equal(C, f->cfg.latent_channels);
    int s = zi_vae_scale(&f->cfg), H = lh * s, W = lw * s;
    size_t n = 0;
    float *zin = zi_test_st_f32(st, "vae.decoder.in", &n);
    zi_tensor z = upload(f->be, zin, C, lh, lw);

    tap_ctx tc = {f->be, st, 0, 0};
    zi_tensor img;
    int rc = zi_vae_decode(f->vae, &z, lh, lw, &img, with_taps ? tap_compare : NULL, &tc);
    if (rc != ZI_OK)
        fail_msg("decode %s: %s", name, zi_errmsg());
    if (with_taps)
        assert_int_equal(tc.checked, 2 + f->cfg.n_blocks + 2);

    float *ref = zi_test_st_f32(st, "vae.decoder.out", &n);
    assert_int_equal(n, (size_t)3 * H * W);
    float *out = malloc(n * sizeof(float));
    assert_non_null(out);
    assert_int_equal(f->be->download(f->be, out, &img, n), ZI_OK);
    double e = zi_rel_err(out, ref, n);

    uint8_t *rgb = malloc((size_t)H * W * 3);
    assert_non_null(rgb);
    assert_int_equal(f->be->to_rgb8(f->be, rgb, &img, H, W), ZI_OK);
    const zi_st_tensor *tu8 = zi_st_find(st, "image_u8");
    assert_non_null(tu8);
    assert_int_equal(tu8->nbytes, (size_t)H * W * 3);
    double psnr = zi_psnr_u8(rgb, tu8->data, tu8->nbytes);
    int maxd = 0;
    for (size_t i = 0; i < tu8->nbytes; i++) {
        int d = abs((int)rgb[i] - (int)((const uint8_t *)tu8->data)[i]);
        maxd = d > maxd ? d : maxd;
    }
    zi_vae_mem mem;
    zi_vae_last_mem(f->vae, &mem);
    printf("  %-18s %dx%d: out rel err %.3g, image PSNR %.1f dB, max abs %d, act peak %llu B\n",
           name, W, H, e, psnr, maxd, (unsigned long long)mem.act_peak);
    if (!(e <= ZI_VAE_TOL))
        fail_msg("%s: vae.decoder.out rel err %g > %g", name, e, ZI_VAE_TOL);
    assert_true(psnr >= 40.0);
    assert_true(maxd <= 3);

    f->be->free(f->be, &img);
    f->be->free(f->be, &z);
    free(rgb);
    free(out);
    free(ref);
    free(zin);
    zi_st_close(st);
}

static void test_vae_intermediates(void **state)
{
    fixture *f = *state;
    check_case(f, zi_test_case_with(f->manifest, "vae.decoder.conv_in"), 1);
}

static void test_vae_all_cases(void **state)
{
    fixture *f = *state;
    const cJSON *cs;
    int ncases = 0;
    cJSON_ArrayForEach(cs, zi_test_manifest_cases(f->manifest))
    {
        check_case(f, cs, 0);
        ncases++;
    }
    assert_true(ncases >= 1);
}

/* The pipeline's path: final F32 latents -> denormalise -> decode -> uint8, and the
 * decoder's measured activation peak equals the plan. */
static void test_vae_decode_rgb8_and_memory(void **state)
{
    fixture *f = *state;
    const cJSON *cs;
    int ncases = 0;
    cJSON_ArrayForEach(cs, zi_test_manifest_cases(f->manifest))
    {
        const char *name = zi_test_case_str(cs, "name");
        zi_st *st = zi_test_case_open(cs);
        /* the last Euler step's latents: step{steps-1}, and no step after it */
        const int steps = (int)zi_test_case_num(cs, "steps");
        assert_true(steps >= 1);
        char key[32];
        snprintf(key, sizeof key, "step%d.latents", steps);
        if (zi_st_find(st, key))
            fail_msg("%s has %s but the manifest says %d steps", name, key, steps);
        snprintf(key, sizeof key, "step%d.latents", steps - 1);
        const zi_st_tensor *tl = zi_st_find(st, key);
        if (!tl)
            fail_msg("%s: tensor %s missing", name, key);
        int C = (int)tl->shape[1], lh = (int)tl->shape[2], lw = (int)tl->shape[3];
        size_t n;
        float *lat = zi_test_st_f32(st, key, &n);
        zi_tensor z = upload(f->be, lat, C, lh, lw);

        /* denormalize alone reproduces vae.decoder.in */
        zi_tensor zc;
        assert_int_equal(f->be->alloc_f32(f->be, &zc, 3, (int64_t[]){C, lh, lw}), ZI_OK);
        f->be->copy(f->be, &zc, &z, n);
        zi_vae_denormalize(f->vae, &zc, lh, lw);
        float *zin = malloc(n * sizeof(float));
        assert_non_null(zin);
        assert_int_equal(f->be->download(f->be, zin, &zc, n), ZI_OK);
        size_t n2;
        float *zref = zi_test_st_f32(st, "vae.decoder.in", &n2);
        assert_int_equal(n, n2);
        assert_true(zi_rel_err(zin, zref, n) < 1e-6);

        int s = zi_vae_scale(&f->cfg), H = lh * s, W = lw * s;
        uint8_t *rgb = malloc((size_t)H * W * 3);
        assert_non_null(rgb);
        if (zi_vae_decode_rgb8(f->vae, &z, lh, lw, rgb) != ZI_OK)
            fail_msg("decode_rgb8: %s", zi_errmsg());
        const zi_st_tensor *tu8 = zi_st_find(st, "image_u8");
        double psnr = zi_psnr_u8(rgb, tu8->data, tu8->nbytes);
        assert_true(psnr >= 40.0);

        zi_vae_mem mem;
        zi_vae_last_mem(f->vae, &mem);
        uint64_t plan = zi_vae_peak_estimate(&f->cfg, lh, lw, sizeof(float));
        printf("  %-18s from %s: PSNR %.1f dB; act peak %llu B (plan %llu B), backend peak "
               "%llu B, weights %llu B\n",
               name, key, psnr, (unsigned long long)mem.act_peak, (unsigned long long)plan,
               (unsigned long long)mem.backend_peak, (unsigned long long)mem.weights);
        assert_int_equal(mem.act_peak, plan);
        assert_true(mem.backend_peak >= mem.act_peak);
        assert_true(mem.weights > 0);

        f->be->free(f->be, &z);
        f->be->free(f->be, &zc);
        free(rgb);
        free(lat);
        free(zin);
        free(zref);
        zi_st_close(st);
        ncases++;
    }
    assert_true(ncases >= 1);
}

/* The real decoder's plan: 1024^2 (latent 128^2) peaks at up_blocks.3.resnets.0 with
 * 512 x 1024^2 elements live. */
static void test_vae_peak_estimate_real(void **state)
{
    (void)state;
    zi_model_config m;
    zi_config_zimage_turbo(&m);
    uint64_t f32 = zi_vae_peak_estimate(&m.vae, 128, 128, 4);
    uint64_t bf16 = zi_vae_peak_estimate(&m.vae, 128, 128, 2);
    printf("  real VAE decoder at 1024x1024: activation peak %.3f GB fp32, %.3f GB bf16\n",
           f32 / 1e9, bf16 / 1e9);
    assert_int_equal(f32, (uint64_t)512 * 1024 * 1024 * 4);
    assert_int_equal(bf16, (uint64_t)512 * 1024 * 1024 * 2);
    /* linear in the pixel count */
    assert_int_equal(zi_vae_peak_estimate(&m.vae, 256, 256, 2), 4 * bf16);
}

/* ---- load errors ---- */

/* Writes the tiny VAE's tensors to `path`, with `mutate` changing one of them:
 * 'm' drop it, 's' give it a wrong shape; `extra` adds a tensor of that name. */
static void write_vae_variant(const char *path, const char *target, char mutate, const char *extra)
{
    zi_st *st = NULL;
    assert_int_equal(zi_st_open_dir(zi_test_model("vae"), &st), ZI_OK);
    size_t n = zi_st_count(st), k = 0;
    const char **names = calloc(n + 1, sizeof *names);
    zi_tensor *ts = calloc(n + 1, sizeof *ts);
    assert_non_null(names);
    assert_non_null(ts);
    for (size_t i = 0; i < n; i++) {
        const zi_st_tensor *t = zi_st_at(st, i);
        int64_t shape[ZI_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (target && strcmp(t->name, target) == 0) {
            if (mutate == 'm')
                continue;
            shape[0] -= 1; /* fewer elements than stored: the data still covers it */
        }
        names[k] = t->name;
        ts[k] = zi_tensor_host((void *)t->data, t->dtype, t->ndim, shape);
        k++;
    }
    if (extra) {
        const zi_st_tensor *t = zi_st_find(st, "decoder.conv_out.bias");
        names[k] = extra;
        ts[k] = zi_tensor_host((void *)t->data, t->dtype, t->ndim, t->shape);
        k++;
    }
    if (zi_st_write(path, k, names, ts) != ZI_OK)
        fail_msg("write: %s", zi_errmsg());
    free(names);
    free(ts);
    zi_st_close(st);
}

static void expect_load_error(fixture *f, const char *path, const char *must_name)
{
    zi_vae *v = NULL;
    zi_st *st = NULL;
    assert_int_equal(zi_st_open(path, &st), ZI_OK);
    int rc = zi_vae_load_st(st, &f->cfg, f->be, &v);
    zi_st_close(st);
    assert_int_not_equal(rc, ZI_OK);
    assert_null(v);
    printf("  load error: %s\n", zi_errmsg());
    assert_non_null(strstr(zi_errmsg(), must_name));
}

static void test_vae_load_errors(void **state)
{
    fixture *f = *state;
    char path[] = "/tmp/zi_test_vae_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    zi_mem_stats before, after;
    f->be->mem_stats(f->be, &before);

    const char *shaped = "decoder.up_blocks.1.resnets.2.norm2.weight";
    write_vae_variant(path, shaped, 's', NULL);
    expect_load_error(f, path, shaped);

    const char *conv = "decoder.up_blocks.2.resnets.0.conv_shortcut.weight";
    write_vae_variant(path, conv, 's', NULL);
    expect_load_error(f, path, conv);

    const char *missing = "decoder.mid_block.attentions.0.to_k.bias";
    write_vae_variant(path, missing, 'm', NULL);
    expect_load_error(f, path, missing);

    const char *extra = "decoder.up_blocks.3.resnets.3.norm1.bias";
    write_vae_variant(path, NULL, 0, extra);
    expect_load_error(f, path, extra);

    /* nothing leaked on the backend by the failed loads */
    f->be->mem_stats(f->be, &after);
    assert_int_equal(after.allocated, before.allocated);

    /* the unchanged file loads */
    write_vae_variant(path, NULL, 0, NULL);
    zi_st *st = NULL;
    zi_vae *v = NULL;
    assert_int_equal(zi_st_open(path, &st), ZI_OK);
    assert_int_equal(zi_vae_load_st(st, &f->cfg, f->be, &v), ZI_OK);
    zi_st_close(st);
    zi_vae_free(v);

    /* a config that disagrees with the file (2 -> 1 layers per block) */
    zi_vae_config bad = f->cfg;
    bad.layers_per_block = 1;
    assert_int_equal(zi_st_open(path, &st), ZI_OK);
    assert_int_not_equal(zi_vae_load_st(st, &bad, f->be, &v), ZI_OK);
    assert_non_null(strstr(zi_errmsg(), "resnets.2"));
    zi_st_close(st);

    /* use_post_quant_conv (AutoencoderKL's default) with a file that has none */
    bad = f->cfg;
    bad.post_quant_conv = 1;
    assert_int_equal(zi_st_open(path, &st), ZI_OK);
    assert_int_not_equal(zi_vae_load_st(st, &bad, f->be, &v), ZI_OK);
    assert_non_null(strstr(zi_errmsg(), "post_quant_conv.weight"));
    zi_st_close(st);
    unlink(path);
}

/* Random weights in shapes unlike the tiny checkpoint: no attention, 3 blocks, 1 layer
 * per block, 5 output channels. Deterministic, finite, and the plan holds. */
static void test_vae_random_other_shapes(void **state)
{
    fixture *f = *state;
    zi_vae_config c = {
        .in_channels = 3,
        .out_channels = 5,
        .latent_channels = 4,
        .n_blocks = 3,
        .block_out = {16, 48, 32},
        .layers_per_block = 1,
        .norm_groups = 8,
        .scaling_factor = 0.5f,
        .shift_factor = 0.0f,
        .mid_attention = 0,
    };
    for (int attn = 0; attn < 2; attn++) {
        c.mid_attention = attn;
        zi_vae *a = NULL, *b = NULL;
        assert_int_equal(zi_vae_load_random(&c, f->be, 7, &a), ZI_OK);
        assert_int_equal(zi_vae_load_random(&c, f->be, 7, &b), ZI_OK);
        int lh = 5, lw = 3, s = zi_vae_scale(&c);
        assert_int_equal(s, 4);
        size_t nz = (size_t)c.latent_channels * lh * lw;
        float *zin = malloc(nz * sizeof(float));
        assert_non_null(zin);
        for (size_t i = 0; i < nz; i++)
            zin[i] = (float)sin((double)i * 0.7);
        zi_tensor z = upload(f->be, zin, c.latent_channels, lh, lw);
        zi_tensor ia, ib;
        assert_int_equal(zi_vae_decode(a, &z, lh, lw, &ia, NULL, NULL), ZI_OK);
        zi_vae_mem mem;
        zi_vae_last_mem(a, &mem);
        assert_int_equal(mem.act_peak, zi_vae_peak_estimate(&c, lh, lw, 4));
        assert_int_equal(zi_vae_decode(b, &z, lh, lw, &ib, NULL, NULL), ZI_OK);
        assert_int_equal(ia.ndim, 3);
        assert_int_equal(ia.shape[0], 5);
        assert_int_equal(ia.shape[1], lh * s);
        assert_int_equal(ia.shape[2], lw * s);
        size_t n = (size_t)5 * lh * s * lw * s;
        float *oa = malloc(n * sizeof(float)), *ob = malloc(n * sizeof(float));
        assert_non_null(oa);
        assert_non_null(ob);
        assert_int_equal(f->be->download(f->be, oa, &ia, n), ZI_OK);
        assert_int_equal(f->be->download(f->be, ob, &ib, n), ZI_OK);
        assert_memory_equal(oa, ob, n * sizeof(float));
        double mx = 0;
        for (size_t i = 0; i < n; i++) {
            assert_true(isfinite(oa[i]));
            mx = fabs(oa[i]) > mx ? fabs(oa[i]) : mx;
        }
        assert_true(mx > 1e-3 && mx < 1e3);
        /* RGB needs 3 output channels */
        uint8_t rgb[16];
        assert_int_equal(zi_vae_decode_rgb8(a, &z, lh, lw, rgb), ZI_EINVAL);
        f->be->free(f->be, &ia);
        f->be->free(f->be, &ib);
        f->be->free(f->be, &z);
        free(oa);
        free(ob);
        free(zin);
        zi_vae_free(a);
        zi_vae_free(b);
    }
    /* a config the decoder cannot build */
    zi_vae *v = NULL;
    c.block_out[1] = 44; /* not a multiple of 8 groups */
    assert_int_equal(zi_vae_load_random(&c, f->be, 1, &v), ZI_EINVAL);
    assert_null(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vae_intermediates),
        cmocka_unit_test(test_vae_all_cases),
        cmocka_unit_test(test_vae_decode_rgb8_and_memory),
        cmocka_unit_test(test_vae_peak_estimate_real),
        cmocka_unit_test(test_vae_load_errors),
        cmocka_unit_test(test_vae_random_other_shapes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
