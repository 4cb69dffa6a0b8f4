/*
 * test_mem_plan.c - the meta backend and zi_pipeline_act_estimate (docs/cuda.md,
 * "Activation headroom").
 *
 * The meta backend replays the pipeline's allocations without computing: its CPU twin,
 * zi_backend_meta_new(ZI_F32, 1), must report exactly the activation peak and the weight
 * bytes that the CPU backend measures running the same jobs (zi_pipeline_mem_plan_on on
 * both; tiny checkpoint config with random weights, sizes with and without CFG, the prompt
 * at its longest). The plan of the
 * real Z-Image-Turbo config holds the VAE decoder's own plan (zi_vae_peak_estimate, bf16)
 * and its weights in bf16 (about 20 GB), grows with the image and with CFG, and takes
 * milliseconds. A job the model cannot run gives an error, never a figure.
 */
#include "backend.h"
#include "config.h"
#include "pipeline.h"
#include "tokenizer.h"
#include "vae.h"
#include "zi_err.h"
#include "zi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static zi_model_config tiny;

static int setup(void **state)
{
    (void)state;
    if (zi_config_load(zi_test_model(""), &tiny) != ZI_OK) {
        fprintf(stderr, "test_mem_plan: %s\n", zi_errmsg());
        return -1;
    }
    return 0;
}

static void test_twin_of_cpu(void **state)
{
    (void)state;
    const struct {
        int w, h;
        float g;
    } jobs[] = {{64, 64, 0.0f}, {128, 96, 0.0f}, {96, 160, 3.5f}};
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++) {
        zi_backend *cpu = zi_backend_cpu_new(1), *meta = zi_backend_meta_new(ZI_F32, 1);
        assert_non_null(cpu);
        assert_non_null(meta);
        zi_mem_plan pc, pm; /* measured on the CPU, replayed on its twin */
        assert_int_equal(
            zi_pipeline_mem_plan_on(cpu, &tiny, jobs[i].w, jobs[i].h, jobs[i].g, 0, &pc), ZI_OK);
        assert_int_equal(
            zi_pipeline_mem_plan_on(meta, &tiny, jobs[i].w, jobs[i].h, jobs[i].g, 0, &pm), ZI_OK);
        printf("  %dx%d guidance %.1f: cpu %llu, meta %llu bytes of activations; weights %llu\n",
               jobs[i].w, jobs[i].h, (double)jobs[i].g, (unsigned long long)pc.activations,
               (unsigned long long)pm.activations, (unsigned long long)pc.weights);
        assert_true(pc.activations > 0 && pc.weights > 0);
        assert_int_equal(pm.activations, pc.activations);
        assert_int_equal(pm.weights, pc.weights);
        zi_backend_destroy(cpu);
        zi_backend_destroy(meta);
    }
}

static void test_real_model_plan(void **state)
{
    (void)state;
    zi_model_config real;
    zi_config_zimage_turbo(&real);
    uint64_t weights = 0;
    const int sides[] = {384, 1024, 2048};
    uint64_t last = 0;
    for (size_t i = 0; i < sizeof sides / sizeof sides[0]; i++) {
        int s = sides[i];
        zi_mem_plan plan;
        clock_t c0 = clock();
        assert_int_equal(zi_pipeline_act_estimate(&real, s, s, 0.0f, 0, &plan), ZI_OK);
        double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
        int l = s / zi_vae_scale(&real.vae);
        uint64_t vae = zi_vae_peak_estimate(&real.vae, l, l, 2);
        printf("  %dx%d: activations %.3f GB, mapped for them %.3f GB (VAE decoder %.3f GB), "
               "weights %.2f GB, %.2f s\n",
               s, s, plan.activations / 1e9, plan.mapped / 1e9, vae / 1e9, plan.weights / 1e9,
               secs);
        assert_true(plan.activations >= vae);
        /* the allocator maps whole pages and grows in steps: never less than handed out */
        assert_true(plan.mapped >= plan.activations);
        assert_true(plan.activations > last);
        if (i == 0)
            weights = plan.weights;
        assert_int_equal(plan.weights, weights); /* the same model at every size */
        assert_true(secs < 20.0);                /* a plan, not a run (sanitizers make it slower) */
        last = plan.activations;
        zi_mem_plan cfgp; /* CFG: a second caption, never less */
        assert_int_equal(zi_pipeline_act_estimate(&real, s, s, 4.0f, 0, &cfgp), ZI_OK);
        assert_true(cfgp.activations >= plan.activations);
    }
    /* about 20 GB of bf16 weights (docs/performance.md: DiT 12.3 GB, text encoder 7.8 GB) */
    assert_true(weights > 19000000000ull && weights < 22000000000ull);
}

/* On the CUDA backend's twin the plan's `mapped` is what its allocator mapped at the peak
 * (peak_reserved, less the weights): whole pages and 32 MiB steps, more than handed out. */
static void test_mapped_is_peak_reserved(void **state)
{
    (void)state;
    zi_backend *be = zi_backend_meta_new(ZI_BF16, 512);
    assert_non_null(be);
    zi_mem_plan plan;
    assert_int_equal(zi_pipeline_mem_plan_on(be, &tiny, 64, 64, 0.0f, 0, &plan), ZI_OK);
    zi_mem_stats m; /* the high-water marks outlive the pipeline */
    be->mem_stats(be, &m);
    printf("  tiny 64x64 bf16: activations %llu, mapped %llu; peak %llu, peak_reserved %llu\n",
           (unsigned long long)plan.activations, (unsigned long long)plan.mapped,
           (unsigned long long)m.peak, (unsigned long long)m.peak_reserved);
    assert_true(m.peak_reserved > m.peak);
    assert_int_equal(plan.mapped, m.peak_reserved - plan.weights);
    assert_int_equal(plan.activations, m.peak - plan.weights);
    assert_true(plan.mapped > plan.activations);
    zi_backend_destroy(be);
}

/* n_tokens 0 plans for the longest prompt (ZI_TOKENIZER_MAX_LEN ids), which needs more than
 * a one-token prompt. */
static void test_default_tokens(void **state)
{
    (void)state;
    zi_mem_plan def, max, one;
    zi_backend *be = zi_backend_meta_new(ZI_F32, 1);
    assert_non_null(be);
    assert_int_equal(zi_pipeline_mem_plan_on(be, &tiny, 64, 64, 0.0f, 0, &def), ZI_OK);
    zi_backend_destroy(be);
    be = zi_backend_meta_new(ZI_F32, 1);
    assert_non_null(be);
    assert_int_equal(zi_pipeline_mem_plan_on(be, &tiny, 64, 64, 0.0f, ZI_TOKENIZER_MAX_LEN, &max),
                     ZI_OK);
    zi_backend_destroy(be);
    be = zi_backend_meta_new(ZI_F32, 1);
    assert_non_null(be);
    assert_int_equal(zi_pipeline_mem_plan_on(be, &tiny, 64, 64, 0.0f, 1, &one), ZI_OK);
    zi_backend_destroy(be);
    assert_int_equal(def.activations, max.activations);
    assert_int_equal(def.weights, max.weights);
    assert_true(def.activations > one.activations);
}

static void test_plan_errors(void **state)
{
    (void)state;
    zi_mem_plan plan;
    assert_int_not_equal(zi_pipeline_act_estimate(&tiny, 72, 64, 0.0f, 0, &plan), ZI_OK);
    assert_non_null(strstr(zi_errmsg(), "72"));
    assert_int_equal(plan.activations, 0);
    assert_null(zi_backend_meta_new(ZI_F16, 512));
    assert_null(zi_backend_meta_new(ZI_BF16, 48));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_twin_of_cpu),
        cmocka_unit_test(test_real_model_plan),
        cmocka_unit_test(test_mapped_is_peak_reserved),
        cmocka_unit_test(test_default_tokens),
        cmocka_unit_test(test_plan_errors),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
