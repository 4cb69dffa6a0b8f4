/*
 * test_pipeline_cuda.c - the whole pipeline in one process on the CUDA backend (label gpu):
 * the tiny checkpoint loaded once, then jobs as a worker runs them.
 *
 *   - the image agrees with the CPU backend's (fp32 reference) at >= 38 dB PSNR;
 *   - the same job twice gives the same bytes (the GPU path is deterministic);
 *   - steady state: once a job of a size has run, repeating it maps no new memory
 *     (allocator map calls and reserved bytes unchanged), also after a job of another
 *     size ran in between;
 *   - memory telemetry is consistent (weights counted, allocated <= peak, allocated <=
 *     reserved, device free <= total) and activations are all freed after a job;
 *   - trim gives the free chunks back and the next job still works;
 *   - under a weight budget (weights past it kept in pinned host memory and copied in per
 *     op: all of them, or all but the first few MiB) the image is the same bytes, and the
 *     device holds no more weights than the budget; with prefetch (weights copied on a
 *     second stream one op ahead) the same bytes too, and most weights are found copied;
 *   - the memory plan (meta backend) bounds a job's peak: at least the plan, at most the
 *     plan plus the backend's job scratch.
 * On a GPU machine through tests/gpu/run.sh; in CI on the CPU emulator of CUDA.
 */
#include "zi_test.h"

#ifdef ZI_HAVE_CUDA

#include "backend.h"
#include "config.h"
#include "pipeline.h"
#include "tokenizer.h"
#include "zi_cuda.h"
#include "zi_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZP_MIN_PSNR 38.0

static zi_backend *gpu, *cpu;
static uint64_t own_bytes;
static zi_pipeline *pg, *pc;

static int zp_setup(void **state)
{
    (void)state;
    if (!zi_backend_cuda_available()) {
        fprintf(stderr, "test_pipeline_cuda: no GPU visible (%s)\n", zi_errmsg());
        return -1;
    }
    gpu = zi_backend_cuda_new(0);
    cpu = zi_backend_cpu_new(0);
    if (!gpu || !cpu) {
        fprintf(stderr, "test_pipeline_cuda: backend: %s\n", zi_errmsg());
        return -1;
    }
    zi_mem_stats m;
    gpu->mem_stats(gpu, &m);
    own_bytes = m.allocated; /* the backend's workspace and staging, before any model */
    const char *dir = zi_test_model("");
    if (zi_pipeline_load(dir, gpu, &pg) != ZI_OK || zi_pipeline_load(dir, cpu, &pc) != ZI_OK) {
        fprintf(stderr, "test_pipeline_cuda: load: %s\n", zi_errmsg());
        return -1;
    }
    /* every job runs the text encoder: determinism, steady state, trim and the plan's
     * bounds cover it (the prompt-embedding cache would skip it from the second job) */
    zi_pipeline_set_caption_cache(pg, 0);
    zi_pipeline_set_caption_cache(pc, 0);
    return 0;
}

static int zp_teardown(void **state)
{
    (void)state;
    zi_pipeline_free(pg);
    zi_pipeline_free(pc);
    zi_backend_destroy(gpu);
    zi_backend_destroy(cpu);
    return 0;
}

static zi_gen_params zp_params(int w, int h, float guidance)
{
    zi_gen_params p = {0};
    p.prompt = "a red cube on a wooden table, studio light";
    p.negative_prompt = "blurry";
    p.width = w;
    p.height = h;
    p.steps = 4;
    p.guidance = guidance;
    p.seed = 1234567;
    p.rng = ZI_RNG_CUDA;
    return p;
}

static uint8_t *zp_generate(zi_pipeline *p, const zi_gen_params *gp)
{
    uint8_t *rgb = NULL;
    if (zi_pipeline_generate(p, gp, NULL, NULL, &rgb) != ZI_OK)
        fail_msg("generate %dx%d: %s", gp->width, gp->height, zi_errmsg());
    return rgb;
}

static void zp_check_telemetry(const char *when)
{
    zi_mem_stats m;
    gpu->mem_stats(gpu, &m);
    printf("%-22s reserved %8.2f MiB allocated %8.2f MiB peak %8.2f MiB weights %8.2f MiB "
           "chunks %llu\n",
           when, m.reserved / 1048576.0, m.allocated / 1048576.0, m.peak / 1048576.0,
           m.weights / 1048576.0, (unsigned long long)m.mapped_chunks);
    assert_true(m.weights > 0);
    assert_true(m.allocated >= m.weights);
    assert_true(m.peak >= m.allocated);
    assert_true(m.device_total > 0 && m.device_free <= m.device_total);
    zi_alloc_stats s;
    if (zi_cuda_alloc_stats(gpu, &s) == ZI_OK) /* VMM mode */
        assert_true(m.reserved >= m.allocated);
}

static void test_matches_cpu_and_is_deterministic(void **state)
{
    (void)state;
    const int w = 64, h = 48;
    for (int cfg = 0; cfg < 2; cfg++) {
        zi_gen_params gp = zp_params(w, h, cfg ? 3.5f : 0.0f);
        uint8_t *a = zp_generate(pg, &gp), *b = zp_generate(pg, &gp), *c = zp_generate(pc, &gp);
        size_t n = (size_t)w * h * 3;
        double psnr = zi_psnr_u8(a, c, n);
        printf("%s: cuda vs cpu PSNR %.2f dB\n", cfg ? "CFG 3.5" : "no CFG", psnr);
        assert_true(psnr >= ZP_MIN_PSNR);
        assert_memory_equal(a, b, n);
        free(a), free(b), free(c);
    }
}

static void test_steady_state_maps_nothing(void **state)
{
    (void)state;
    zi_alloc_stats s0, s1, s2;
    if (zi_cuda_alloc_stats(gpu, &s0) != ZI_OK)
        fail_msg("the allocator is not in VMM mode: %s", zi_errmsg());
    zi_gen_params big = zp_params(80, 64, 3.5f), small = zp_params(48, 32, 0.0f);
    free(zp_generate(pg, &big)); /* warm: the largest job maps what it needs */
    zp_check_telemetry("after the first job");
    zi_mem_stats m0;
    gpu->mem_stats(gpu, &m0);
    assert_int_equal(zi_cuda_alloc_stats(gpu, &s1), ZI_OK);
    free(zp_generate(pg, &small));
    free(zp_generate(pg, &big));
    free(zp_generate(pg, &big));
    assert_int_equal(zi_cuda_alloc_stats(gpu, &s2), ZI_OK);
    zp_check_telemetry("after three more jobs");
    printf("map calls %llu -> %llu -> %llu, reserved %llu -> %llu\n",
           (unsigned long long)s0.map_calls, (unsigned long long)s1.map_calls,
           (unsigned long long)s2.map_calls, (unsigned long long)s1.reserved,
           (unsigned long long)s2.reserved);
    assert_int_equal(s2.map_calls, s1.map_calls); /* nothing reached the driver */
    assert_int_equal(s2.reserved, s1.reserved);
    zi_mem_stats m1;
    gpu->mem_stats(gpu, &m1);
    assert_int_equal(m1.allocated, m0.allocated); /* every activation freed after a job */
    assert_int_equal(m1.weights, m0.weights);
}

/* The memory plan (zi_pipeline_act_estimate, the meta backend) against what the CUDA
 * allocator holds for the same jobs (the plan made for the prompt's templated length): at
 * the job's peak, everything but the weights and the backend's own workspace and staging
 * (made at its creation) is at least the plan and at most the plan plus the backend's job
 * scratch. */
static void test_plan_bounds_the_job(void **state)
{
    (void)state;
    zi_model_config mc;
    assert_int_equal(zi_config_load(zi_test_model(""), &mc), ZI_OK);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tokenizer", zi_test_model(""));
    zi_tokenizer *tok = NULL;
    assert_int_equal(zi_tokenizer_load(dir, &tok), ZI_OK);
    const struct {
        int w, h;
        float g;
    } jobs[] = {{64, 48, 3.5f}, {96, 64, 0.0f}};
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++) {
        zi_gen_params gp = zp_params(jobs[i].w, jobs[i].h, jobs[i].g);
        gp.negative_prompt = gp.prompt; /* the plan takes both of one length */
        gp.steps = 1;                   /* the peak does not depend on the step count */
        int32_t *ids = NULL;
        size_t n = 0;
        assert_int_equal(zi_tokenizer_encode_prompt(tok, gp.prompt, ZI_TOKENIZER_MAX_LEN, &ids, &n),
                         ZI_OK);
        free(ids);
        zi_mem_plan plan;
        assert_int_equal(
            zi_pipeline_act_estimate(&mc, jobs[i].w, jobs[i].h, jobs[i].g, (int)n, &plan), ZI_OK);
        zi_cuda_reset_peak(gpu);
        free(zp_generate(pg, &gp));
        zi_mem_stats m;
        gpu->mem_stats(gpu, &m);
        const uint64_t held = m.peak - m.weights - own_bytes;
        const uint64_t scratch = zi_cuda_job_scratch_bytes(gpu);
        printf("%dx%d guidance %.1f, %zu tokens: held at the peak %llu bytes, plan %llu, "
               "scratch bound %llu\n",
               jobs[i].w, jobs[i].h, (double)jobs[i].g, n, (unsigned long long)held,
               (unsigned long long)plan.activations, (unsigned long long)scratch);
        assert_true(held >= plan.activations);
        assert_true(held <= plan.activations + scratch);
        /* mapped: the same allocator policy as the plan's, so within its job scratch and
         * one growth step (the backend's own buffers shift where the chunks begin) */
        zi_alloc_stats as;
        if (zi_cuda_alloc_stats(gpu, &as) == ZI_OK && as.reserve > 0) {
            const uint64_t mapped = as.peak_reserved - m.weights - own_bytes;
            printf("  mapped beyond the weights and the backend's own buffers: %llu, plan %llu\n",
                   (unsigned long long)mapped, (unsigned long long)plan.mapped);
            assert_true(plan.mapped >= plan.activations);
            assert_true(mapped <= plan.mapped + scratch + ((uint64_t)32 << 20));
        }
        assert_int_equal(plan.weights, m.weights); /* every weight resident, in bf16 */
    }
    zi_tokenizer_free(tok);
}

static void test_trim_then_generate(void **state)
{
    (void)state;
    zi_gen_params gp = zp_params(64, 48, 0.0f);
    uint8_t *before = zp_generate(pg, &gp);
    zi_mem_stats m0, m1;
    gpu->mem_stats(gpu, &m0);
    uint64_t released = zi_cuda_trim(gpu);
    gpu->mem_stats(gpu, &m1);
    printf("trim released %.2f MiB (reserved %.2f -> %.2f MiB)\n", released / 1048576.0,
           m0.reserved / 1048576.0, m1.reserved / 1048576.0);
    assert_int_equal(m1.reserved + released, m0.reserved);
    assert_int_equal(m1.allocated, m0.allocated); /* weights stay */
    uint8_t *after = zp_generate(pg, &gp);
    assert_memory_equal(before, after, (size_t)64 * 48 * 3);
    free(before), free(after);
    zp_check_telemetry("after trim + job");
}

/* A second backend with a weight budget: same image, bit for bit, less device memory.
 * prefetch_min: 0 = no prefetch, else host weights of at least that many bytes go through
 * the prefetch slots, and the job runs twice: from the second forward on the weights are
 * found already copied (hits). pin_limit: 0 = the default, else the host weights past it
 * are read from the checkpoint's mapping (the tiny checkpoint is bf16). */
static void zp_budget_case(uint64_t budget, size_t prefetch_min, uint64_t pin_limit,
                           const uint8_t *want, const zi_gen_params *gp)
{
    zi_backend *b = zi_backend_cuda_new(0);
    assert_non_null(b);
    assert_int_equal(zi_cuda_set_weight_budget(b, budget), ZI_OK);
    assert_int_equal(zi_cuda_set_prefetch(b, prefetch_min != 0, prefetch_min), ZI_OK);
    assert_int_equal(zi_cuda_set_pin_limit(b, pin_limit), ZI_OK);
    zi_pipeline *p = NULL;
    if (zi_pipeline_load(zi_test_model(""), b, &p) != ZI_OK)
        fail_msg("load under a budget of %llu: %s", (unsigned long long)budget, zi_errmsg());
    /* each run reads every weight in the same order, the text encoder's too */
    assert_int_equal(zi_pipeline_set_caption_cache(p, 0), ZI_OK);
    zi_mem_stats m;
    b->mem_stats(b, &m);
    uint64_t host = zi_cuda_host_weight_bytes(b), mapped = zi_cuda_host_mapped_bytes(b);
    printf("budget %8.2f MiB: weights on the device %8.2f MiB, on the host %8.2f MiB (%.2f MiB "
           "read from the mapped checkpoint)\n",
           budget / 1048576.0, m.weights / 1048576.0, host / 1048576.0, mapped / 1048576.0);
    assert_true(m.weights <= budget);
    assert_true(host > 0);
    assert_int_equal(zi_cuda_host_pageable_bytes(b), 0);
    if (pin_limit) { /* pinned up to the limit, the rest mapped */
        assert_true(mapped > 0);
        assert_true(host - mapped <= pin_limit);
    } else {
        assert_int_equal(mapped, 0);
    }
    for (int run = 0; run < (prefetch_min ? 2 : 1); run++) {
        uint8_t *got = zp_generate(p, gp);
        assert_memory_equal(got, want, (size_t)gp->width * gp->height * 3);
        free(got);
    }
    uint64_t hits = 0, misses = 0;
    assert_int_equal(zi_cuda_prefetch_stats(b, &hits, &misses), ZI_OK);
    printf("  prefetch (weights >= %zu bytes): %llu hits, %llu misses\n", prefetch_min,
           (unsigned long long)hits, (unsigned long long)misses);
    if (prefetch_min) {
        assert_true(misses > 0);    /* the first forward learns the order */
        assert_true(hits > misses); /* then the weights are there before the ops */
    } else {
        assert_true(hits == 0 && misses == 0);
    }
    zi_pipeline_free(p);
    assert_int_equal(zi_cuda_host_weight_bytes(b), 0); /* every host weight freed */
    assert_int_equal(b->weights_borrowed, 0);
    zi_backend_destroy(b);
}

static void test_weight_budget(void **state)
{
    (void)state;
    zi_gen_params gp = zp_params(64, 48, 3.5f);
    uint8_t *want = zp_generate(pg, &gp);
    zi_mem_stats m;
    gpu->mem_stats(gpu, &m);
    zp_budget_case(0, 0, 0, want, &gp);    /* every weight on the host, copied per op */
    zp_budget_case(0, 4096, 0, want, &gp); /* ... prefetched on the copy stream */
    /* about the transformer's first half resident, a quarter of the weights pinned, the
     * rest read from the checkpoint's mapping, prefetched */
    zp_budget_case(m.weights / 2, 4096, m.weights / 4, want, &gp);
    free(want);
}

int main(void)
{
    /* ZI_TEST_ONLY=test_weight_budget: one test (the second-stream order check of the
     * emulated run, test_pipeline_cuda_ahead, needs only that one) */
    const char *only = getenv("ZI_TEST_ONLY");
    if (only && *only)
        cmocka_set_test_filter(only);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_cpu_and_is_deterministic),
        cmocka_unit_test(test_steady_state_maps_nothing),
        cmocka_unit_test(test_plan_bounds_the_job),
        cmocka_unit_test(test_trim_then_generate),
        cmocka_unit_test(test_weight_budget),
    };
    return cmocka_run_group_tests(tests, zp_setup, zp_teardown);
}

#else /* !ZI_HAVE_CUDA */

#include <stdio.h>

int main(void)
{
    fprintf(stderr, "test_pipeline_cuda: built without CUDA\n");
    return 1;
}

#endif
