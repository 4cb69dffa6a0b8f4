/*
 * test_kernels.c - every CUDA kernel against its CPU twin, at the model's real shapes,
 * and timed (label gpu; run by tests/gpu/run.sh on a GPU machine).
 *
 * For each op: random inputs (rounded to bf16 first, so both backends see the same
 * numbers), the op on the CPU backend (fp32 reference) and on the CUDA backend (bf16
 * storage, fp32 accumulation), then |gpu - cpu| <= atol + rtol*|cpu| element-wise with
 * atol = atol_frac * max|cpu| (bf16 output rounding alone is 2^-9 relative). Where the
 * CPU would take too long at full size the reference runs on a slice that is
 * independent in the op (query rows and heads of attention), and the GPU runs the full
 * shape. Timings: median of ZT_REPS runs, the L2 cache flushed before each, with the
 * effective bandwidth or TFLOP/s. A summary table is printed; with ZI_KERNELS_JSON set,
 * one JSON object per op is written to that file.
 *
 * Shapes: DiT hidden 3840, FFN 10240, 30 heads x 128, 4096 image + 128 caption tokens;
 * Qwen3 2560 hidden, 32/8 heads, 512 tokens, causal; VAE 512 channels at 128x128, mid
 * attention over 16384 pixels with head dim 512.
 *
 * Under the CPU emulator of CUDA (ZI_CUDA_EMU, tests/cudaemu/), and on a GPU with
 * ZI_KERNELS_SMALL=1 (tests/gpu/run.sh runs the attention that way under compute-sanitizer's
 * racecheck; ZI_KERNELS_ONLY=PATTERN picks tests by name), the same ops run at small
 * shapes that keep every code path - vector and scalar kernel paths, ragged tails, GQA,
 * causal offsets, both attention paths and head dims, the GEMM epilogue and its fallback,
 * several staging chunks - so CI checks the kernels' logic; timings there mean nothing.
 */
#include "zi_test.h"

#ifdef ZI_HAVE_CUDA

#include "backend.h"
#include "rng.h"
#include "zi_cuda.h"
#include "zi_err.h"

#include <cuda_runtime_api.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef ZI_CUDA_EMU
#define ZT_EMU 1
#else
#define ZT_EMU 0
#endif
#define ZT_REPS 5 /* timed runs on a GPU at full size; one otherwise */
#define ZT_MAX_RESULTS 128

static zi_backend *gpu, *cpu;
/* 1: the small shapes (always under the emulator; ZI_KERNELS_SMALL=1 on a GPU, e.g. under
 * compute-sanitizer), each op run once */
static int zt_small = ZT_EMU;
static cudaStream_t stream;
static cudaEvent_t ev0, ev1;

typedef struct zt_result {
    char name[96];
    double err;    /* max |gpu - cpu| / max |cpu| */
    int ok;        /* -1: not compared (timing only) */
    double gpu_ms; /* median */
    double cpu_ms;
    double bytes, flops;
} zt_result;

static zt_result results[ZT_MAX_RESULTS];
static int nresults;

static zt_result *zt_record(const char *name)
{
    for (int i = 0; i < nresults; i++)
        if (strcmp(results[i].name, name) == 0)
            return &results[i];
    assert_true(nresults < ZT_MAX_RESULTS);
    zt_result *r = &results[nresults++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->ok = -1;
    return r;
}

static double zt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- data ---- */

static uint32_t zt_state = 1;

static float zt_uniform(void)
{
    zt_state = zt_state * 1664525u + 1013904223u;
    return (float)((zt_state >> 8) * (1.0 / 16777216.0));
}

/* n values in [lo, hi), rounded to bf16 so both backends start from the same numbers. */
static float *zt_rand(size_t n, float lo, float hi)
{
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * zt_uniform();
    zi_round_bf16_inplace(x, n);
    return x;
}

/* A tensor on `be` (activation dtype, or F32 when f32) holding host data h. */
static zi_tensor zt_put(zi_backend *be, int f32, const float *h, int ndim, const int64_t *shape)
{
    zi_tensor t;
    int rc = f32 ? be->alloc_f32(be, &t, ndim, shape) : be->alloc(be, &t, ndim, shape);
    if (rc != ZI_OK)
        fail_msg("%s alloc: %s", be->name, zi_errmsg());
    if (h && be->upload(be, &t, h, (size_t)zi_tensor_numel(&t)) != ZI_OK)
        fail_msg("%s upload: %s", be->name, zi_errmsg());
    return t;
}

static zi_tensor zt_put1(zi_backend *be, int f32, const float *h, int64_t d0)
{
    return zt_put(be, f32, h, 1, (int64_t[]){d0});
}

static float *zt_get(zi_backend *be, const zi_tensor *t, size_t n)
{
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    if (be->download(be, x, t, n) != ZI_OK || zi_backend_check(be) != ZI_OK)
        fail_msg("%s download: %s", be->name, zi_errmsg());
    return x;
}

/* Element-wise check; records the normalised max error. */
static void zt_check(const char *name, const float *got, const float *ref, size_t n,
                     double atol_frac, double rtol)
{
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(ref[i]) > maxref)
            maxref = fabs(ref[i]);
    double atol = atol_frac * (maxref > 0 ? maxref : 1.0);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) && isnan(ref[i]))
            continue; /* NaN in, NaN out on both sides */
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= atol + rtol * fabs(ref[i]))) {
            if (bad++ == 0)
                first = i;
        }
        if (!(d <= maxdiff))
            maxdiff = isnan(d) ? INFINITY : d;
    }
    zt_result *r = zt_record(name);
    r->err = maxref > 0 ? maxdiff / maxref : maxdiff;
    r->ok = bad == 0;
    if (bad)
        fail_msg("%s: %zu of %zu elements out of tolerance (first %zu: gpu %g cpu %g; "
                 "max err %.3g of max|ref| %.3g)",
                 name, bad, n, first, got[first], ref[first], maxdiff, maxref);
}

static void zt_gpu_ok(const char *what)
{
    gpu->sync(gpu);
    if (zi_backend_check(gpu) != ZI_OK)
        fail_msg("%s: %s", what, zi_errmsg());
}

/* Times `call` on the GPU: median of ZT_REPS, L2 flushed before each run. */
#define ZT_TIME(name, nbytes, nflops, call)                                                        \
    do {                                                                                           \
        double ms_[ZT_REPS];                                                                       \
        const int reps_ = zt_small ? 1 : ZT_REPS;                                                  \
        for (int r_ = 0; r_ < reps_; r_++) {                                                       \
            assert_int_equal(zi_cuda_flush_l2(gpu), ZI_OK);                                        \
            assert_int_equal(cudaEventRecord(ev0, stream), cudaSuccess);                           \
            call;                                                                                  \
            assert_int_equal(cudaEventRecord(ev1, stream), cudaSuccess);                           \
            assert_int_equal(cudaEventSynchronize(ev1), cudaSuccess);                              \
            float f_ = 0;                                                                          \
            cudaEventElapsedTime(&f_, ev0, ev1);                                                   \
            ms_[r_] = f_;                                                                          \
        }                                                                                          \
        zt_gpu_ok(name);                                                                           \
        for (int i_ = 1; i_ < reps_; i_++) /* insertion sort for the median */                     \
            for (int j_ = i_; j_ > 0 && ms_[j_ - 1] > ms_[j_]; j_--) {                             \
                double t_ = ms_[j_];                                                               \
                ms_[j_] = ms_[j_ - 1];                                                             \
                ms_[j_ - 1] = t_;                                                                  \
            }                                                                                      \
        zt_result *rr_ = zt_record(name);                                                          \
        rr_->gpu_ms = ms_[reps_ / 2];                                                              \
        rr_->bytes = (double)(nbytes);                                                             \
        rr_->flops = (double)(nflops);                                                             \
    } while (0)

/* Runs `call` once on the CPU and records its wall time. */
#define ZT_CPU(name, call)                                                                         \
    do {                                                                                           \
        double t0_ = zt_now_ms();                                                                  \
        call;                                                                                      \
        zt_record(name)->cpu_ms = zt_now_ms() - t0_;                                               \
        if (zi_backend_check(cpu) != ZI_OK)                                                        \
            fail_msg("%s on cpu: %s", name, zi_errmsg());                                          \
    } while (0)

/* ---- setup ---- */

static int zt_setup(void **state)
{
    (void)state;
    if (!zi_backend_cuda_available()) {
        fprintf(stderr, "test_kernels: no GPU visible (%s)\n", zi_errmsg());
        return -1;
    }
    gpu = zi_backend_cuda_new(0);
    cpu = zi_backend_cpu_new(0);
    if (!gpu || !cpu) {
        fprintf(stderr, "test_kernels: backend: %s\n", zi_errmsg());
        return -1;
    }
    stream = (cudaStream_t)zi_cuda_stream(gpu);
    if (cudaEventCreate(&ev0) != cudaSuccess || cudaEventCreate(&ev1) != cudaSuccess)
        return -1;
    printf("test_kernels: %s vs %s\n", gpu->device_name, cpu->device_name);
    return 0;
}

static int zt_teardown(void **state)
{
    (void)state;
    printf("\n%-52s %10s %4s %10s %10s %9s %9s\n", "op", "max err", "ok", "gpu ms", "cpu ms",
           "GB/s", "TFLOP/s");
    FILE *js = NULL;
    const char *path = getenv("ZI_KERNELS_JSON");
    if (path && *path)
        js = fopen(path, "w");
    for (int i = 0; i < nresults; i++) {
        zt_result *r = &results[i];
        double gbs = r->gpu_ms > 0 ? r->bytes / (r->gpu_ms * 1e-3) / 1e9 : 0;
        double tf = r->gpu_ms > 0 ? r->flops / (r->gpu_ms * 1e-3) / 1e12 : 0;
        printf("%-52s %10.2e %4s %10.3f %10.1f %9.1f %9.1f\n", r->name, r->err,
               r->ok < 0 ? "-"
               : r->ok   ? "yes"
                         : "NO",
               r->gpu_ms, r->cpu_ms, gbs, tf);
        if (js)
            fprintf(js,
                    "{\"op\":\"%s\",\"max_err\":%.4g,\"ok\":%s,\"gpu_ms\":%.4f,\"cpu_ms\":%.2f,"
                    "\"gbps\":%.2f,\"tflops\":%.2f,\"device\":\"%s\"}\n",
                    r->name, r->err,
                    r->ok < 0 ? "null"
                    : r->ok   ? "true"
                              : "false",
                    r->gpu_ms, r->cpu_ms, gbs, tf, gpu ? gpu->device_name : "");
    }
    if (js)
        fclose(js);
    if (ev0)
        cudaEventDestroy(ev0);
    if (ev1)
        cudaEventDestroy(ev1);
    zi_backend_destroy(gpu);
    zi_backend_destroy(cpu);
    return 0;
}

/* ---- dense ---- */

static void zt_linear_case(const char *name, int M, int K, int N, int bias, int out_f32)
{
    float *x = zt_rand((size_t)M * K, -1, 1);
    float *w = zt_rand((size_t)N * K, -1.0f / sqrtf((float)K), 1.0f / sqrtf((float)K));
    float *b = bias ? zt_rand((size_t)N, -0.5f, 0.5f) : NULL;
    int64_t sx[2] = {M, K}, sw[2] = {N, K}, so[2] = {M, N};
    zi_tensor cx = zt_put(cpu, 1, x, 2, sx), cw, cb = {0}, co = zt_put(cpu, 1, NULL, 2, so);
    assert_int_equal(cpu->upload_weight(cpu, &cw, w, ZI_F32, 2, sw), ZI_OK);
    zi_tensor gx = zt_put(gpu, 0, x, 2, sx), gw, gb = {0}, go = zt_put(gpu, out_f32, NULL, 2, so);
    assert_int_equal(gpu->upload_weight(gpu, &gw, w, ZI_F32, 2, sw), ZI_OK);
    if (bias) {
        assert_int_equal(cpu->upload_weight(cpu, &cb, b, ZI_F32, 1, (int64_t[]){N}), ZI_OK);
        assert_int_equal(gpu->upload_weight(gpu, &gb, b, ZI_F32, 1, (int64_t[]){N}), ZI_OK);
    }
    ZT_CPU(name, cpu->linear(cpu, &co, &cx, &cw, bias ? &cb : NULL, M, K, N));
    ZT_TIME(name, 2.0 * ((double)M * K + (double)N * K + (double)M * N), 2.0 * M * (double)K * N,
            gpu->linear(gpu, &go, &gx, &gw, bias ? &gb : NULL, M, K, N));
    float *ref = zt_get(cpu, &co, (size_t)M * N), *got = zt_get(gpu, &go, (size_t)M * N);
    zt_check(name, got, ref, (size_t)M * N, 4e-3, 1.6e-2);
    free(ref), free(got), free(x), free(w), free(b);
    cpu->free(cpu, &cx), cpu->free(cpu, &cw), cpu->free(cpu, &cb), cpu->free(cpu, &co);
    gpu->free(gpu, &gx), gpu->free(gpu, &gw), gpu->free(gpu, &gb), gpu->free(gpu, &go);
}

static void test_linear(void **state)
{
    (void)state;
    if (zt_small) {
        zt_linear_case("linear 136x256x192", 136, 256, 192, 0, 0);
        zt_linear_case("linear +bias 64x64x96", 64, 64, 96, 1, 0);
        zt_linear_case("linear adaLN 1x64x384 +bias", 1, 64, 384, 1, 0);
        zt_linear_case("linear +bias ->f32 128x96x64", 128, 96, 64, 1, 1);
        zt_linear_case("linear odd 37x100x33 +bias", 37, 100, 33, 1, 0);
        return;
    }
    zt_linear_case("linear qkv 4224x3840x3840", 4224, 3840, 3840, 0, 0);
    zt_linear_case("linear ffn up 4224x3840x10240", 4224, 3840, 10240, 0, 0);
    zt_linear_case("linear ffn down 4224x10240x3840", 4224, 10240, 3840, 0, 0);
    zt_linear_case("linear +bias 4096x64x3840 (x_embedder)", 4096, 64, 3840, 1, 0);
    zt_linear_case("linear adaLN 1x256x15360 +bias", 1, 256, 15360, 1, 0);
    zt_linear_case("linear final 4096x3840x64 +bias ->f32", 4096, 3840, 64, 1, 1);
    zt_linear_case("linear qwen q 512x2560x4096", 512, 2560, 4096, 0, 0);
    zt_linear_case("linear odd 37x100x33 +bias", 37, 100, 33, 1, 0);
}

static void test_embedding(void **state)
{
    (void)state;
    const int V = zt_small ? 1000 : 32768, D = zt_small ? 136 : 2560, R = zt_small ? 77 : 512;
    float *tab = zt_rand((size_t)V * D, -1, 1);
    int32_t ids[512];
    for (int r = 0; r < R; r++)
        ids[r] = (int32_t)((r * 7919u + 13u) % (unsigned)V);
    int64_t st[2] = {V, D}, so[2] = {R, D};
    zi_tensor ct, gt, co = zt_put(cpu, 1, NULL, 2, so), go = zt_put(gpu, 0, NULL, 2, so);
    assert_int_equal(cpu->upload_weight(cpu, &ct, tab, ZI_F32, 2, st), ZI_OK);
    assert_int_equal(gpu->upload_weight(gpu, &gt, tab, ZI_F32, 2, st), ZI_OK);
    const char *name = zt_small ? "embedding 77 of 1000x136" : "embedding 512 of 32768x2560";
    ZT_CPU(name, cpu->embedding(cpu, &co, &ct, ids, R, D));
    ZT_TIME(name, 4.0 * R * D, 0, gpu->embedding(gpu, &go, &gt, ids, R, D));
    float *ref = zt_get(cpu, &co, (size_t)R * D), *got = zt_get(gpu, &go, (size_t)R * D);
    zt_check(name, got, ref, (size_t)R * D, 0, 0); /* a gather of bf16 values: exact */
    int32_t bad = V;
    gpu->embedding(gpu, &go, &gt, &bad, 1, D);
    assert_int_equal(zi_backend_check(gpu), ZI_EINVAL); /* out-of-range id is refused */
    zi_backend_clear_error(gpu);
    free(ref), free(got), free(tab);
    cpu->free(cpu, &ct), cpu->free(cpu, &co), gpu->free(gpu, &gt), gpu->free(gpu, &go);
}

/* ---- normalisation ---- */

/* f32: F32 input and output on the GPU too, checked to fp32 accuracy (a bias of 1/D in
 * the mean square, e.g. 1/(D-1), is far below bf16's resolution) */
static void zt_rms_case_f32(const char *name, int R, int D, int with_w, int inplace, int f32)
{
    size_t n = (size_t)R * D;
    float *x = zt_rand(n, -3, 3), *w = zt_rand((size_t)D, 0.5f, 1.5f);
    int64_t s[2] = {R, D};
    zi_tensor cx = zt_put(cpu, 1, x, 2, s), co = zt_put(cpu, 1, NULL, 2, s);
    zi_tensor gx = zt_put(gpu, f32, x, 2, s), go = zt_put(gpu, f32, NULL, 2, s);
    zi_tensor cw = zt_put1(cpu, 1, w, D), gw = zt_put1(gpu, 0, w, D);
    ZT_CPU(name, cpu->rmsnorm(cpu, &co, &cx, with_w ? &cw : NULL, R, D, 1e-5f));
    if (inplace) {
        gpu->rmsnorm(gpu, &gx, &gx, with_w ? &gw : NULL, R, D, 1e-5f);
        zt_gpu_ok(name);
    } else {
        ZT_TIME(name, 4.0 * n, 0, gpu->rmsnorm(gpu, &go, &gx, with_w ? &gw : NULL, R, D, 1e-5f));
    }
    float *ref = zt_get(cpu, &co, n), *got = zt_get(gpu, inplace ? &gx : &go, n);
    zt_check(name, got, ref, n, f32 ? 1e-5 : 2e-3, f32 ? 2e-5 : 8e-3);
    free(ref), free(got), free(x), free(w);
    cpu->free(cpu, &cx), cpu->free(cpu, &co), cpu->free(cpu, &cw);
    gpu->free(gpu, &gx), gpu->free(gpu, &go), gpu->free(gpu, &gw);
}

static void zt_rms_case(const char *name, int R, int D, int with_w, int inplace)
{
    zt_rms_case_f32(name, R, D, with_w, inplace, 0);
}

static void test_rmsnorm(void **state)
{
    (void)state;
    if (zt_small) {
        zt_rms_case("rmsnorm 96x384", 96, 384, 1, 0);
        zt_rms_case("rmsnorm per-head 40*4x128", 40 * 4, 128, 1, 0);
        zt_rms_case("rmsnorm per-head in place 17*4x128", 17 * 4, 128, 1, 1);
        zt_rms_case("rmsnorm no affine 7x100", 7, 100, 0, 0);
        zt_rms_case("rmsnorm odd 5x33", 5, 33, 1, 0);
        /* D > 1024: one block per row */
        zt_rms_case("rmsnorm block-per-row 3x2560", 3, 2560, 1, 0);
        zt_rms_case_f32("rmsnorm block-per-row f32 3x2560", 3, 2560, 1, 0, 1);
        zt_rms_case_f32("rmsnorm block-per-row f32 no affine 3x3840", 3, 3840, 0, 0, 1);
        zt_rms_case_f32("rmsnorm warp-per-row f32 7x1000", 7, 1000, 1, 0, 1);
        return;
    }
    zt_rms_case("rmsnorm 4224x3840", 4224, 3840, 1, 0);
    zt_rms_case("rmsnorm per-head 4224*30x128", 4224 * 30, 128, 1, 0);
    zt_rms_case("rmsnorm per-head in place 512*32x128", 512 * 32, 128, 1, 1);
    zt_rms_case("rmsnorm no affine 777x2560", 777, 2560, 0, 0);
}

/* f32: as zt_rms_case_f32 */
static void zt_ln_case(const char *name, int R, int D, int f32)
{
    size_t n = (size_t)R * D;
    float *x = zt_rand(n, -2, 4); /* non-zero mean */
    int64_t s[2] = {R, D};
    zi_tensor cx = zt_put(cpu, 1, x, 2, s), co = zt_put(cpu, 1, NULL, 2, s);
    zi_tensor gx = zt_put(gpu, f32, x, 2, s), go = zt_put(gpu, f32, NULL, 2, s);
    ZT_CPU(name, cpu->layernorm(cpu, &co, &cx, R, D, 1e-6f));
    ZT_TIME(name, 4.0 * n, 0, gpu->layernorm(gpu, &go, &gx, R, D, 1e-6f));
    float *ref = zt_get(cpu, &co, n), *got = zt_get(gpu, &go, n);
    zt_check(name, got, ref, n, f32 ? 1e-5 : 2e-3, f32 ? 2e-5 : 8e-3);
    free(ref), free(got), free(x);
    cpu->free(cpu, &cx), cpu->free(cpu, &co), gpu->free(gpu, &gx), gpu->free(gpu, &go);
}

static void test_layernorm(void **state)
{
    (void)state;
    if (zt_small) {
        zt_ln_case("layernorm 64x384", 64, 384, 0);
        /* D > 1024: one block per row */
        zt_ln_case("layernorm block-per-row 3x3840", 3, 3840, 0);
        zt_ln_case("layernorm block-per-row f32 3x2560", 3, 2560, 1);
        zt_ln_case("layernorm block-per-row f32 3x3840", 3, 3840, 1);
        zt_ln_case("layernorm warp-per-row f32 5x384", 5, 384, 1);
        return;
    }
    zt_ln_case("layernorm 4096x3840", 4096, 3840, 0);
}

static void zt_gn_case(const char *name, int C, int HW, int G, int silu, float mean)
{
    size_t n = (size_t)C * HW;
    float *x = zt_rand(n, mean - 2, mean + 2);
    float *ga = zt_rand((size_t)C, 0.5f, 1.5f), *bb = zt_rand((size_t)C, -0.5f, 0.5f);
    int64_t s[2] = {C, HW};
    zi_tensor cx = zt_put(cpu, 1, x, 2, s), co = zt_put(cpu, 1, NULL, 2, s);
    zi_tensor gx = zt_put(gpu, 0, x, 2, s), go = zt_put(gpu, 0, NULL, 2, s);
    zi_tensor cg = zt_put1(cpu, 1, ga, C), cb = zt_put1(cpu, 1, bb, C);
    zi_tensor gg = zt_put1(gpu, 0, ga, C), gb = zt_put1(gpu, 0, bb, C);
    ZT_CPU(name, cpu->groupnorm(cpu, &co, &cx, &cg, &cb, C, HW, G, 1e-6f, silu));
    ZT_TIME(name, 4.0 * n, 0, gpu->groupnorm(gpu, &go, &gx, &gg, &gb, C, HW, G, 1e-6f, silu));
    float *ref = zt_get(cpu, &co, n), *got = zt_get(gpu, &go, n);
    zt_check(name, got, ref, n, 2e-3, 8e-3);
    /* in place */
    gpu->groupnorm(gpu, &gx, &gx, &gg, &gb, C, HW, G, 1e-6f, silu);
    free(got);
    got = zt_get(gpu, &gx, n);
    char nm[96];
    snprintf(nm, sizeof nm, "%s in place", name);
    zt_check(nm, got, ref, n, 2e-3, 8e-3);
    free(ref), free(got), free(x), free(ga), free(bb);
    cpu->free(cpu, &cx), cpu->free(cpu, &co), cpu->free(cpu, &cg), cpu->free(cpu, &cb);
    gpu->free(gpu, &gx), gpu->free(gpu, &go), gpu->free(gpu, &gg), gpu->free(gpu, &gb);
}

static void test_groupnorm(void **state)
{
    (void)state;
    if (zt_small) {
        zt_gn_case("groupnorm+silu 64x16^2 G32", 64, 16 * 16, 32, 1, 0.0f);
        zt_gn_case("groupnorm 32x24^2 G8 mean 20", 32, 24 * 24, 8, 0, 20.0f);
        zt_gn_case("groupnorm odd 12x77 G3", 12, 77, 3, 1, -1.0f);
        /* tiny groups (4 and 8 elements): the 1/n of the statistics is seen */
        zt_gn_case("groupnorm tiny groups 8x4 G8", 8, 4, 8, 0, 0.5f);
        zt_gn_case("groupnorm tiny groups 16x2 G4", 16, 2, 4, 1, 0.0f);
        return;
    }
    zt_gn_case("groupnorm+silu 512x128^2 G32", 512, 128 * 128, 32, 1, 0.0f);
    zt_gn_case("groupnorm 256x256^2 G32 mean 20", 256, 256 * 256, 32, 0, 20.0f);
    zt_gn_case("groupnorm+silu 128x512^2 G32", 128, 512 * 512, 32, 1, 0.5f);
    zt_gn_case("groupnorm odd 96x1000 G3", 96, 1000, 3, 1, -1.0f);
}

/* ---- position ---- */

static void zt_rope_case(const char *name, int S, int H, int hd, zi_rope_layout layout)
{
    size_t n = (size_t)S * H * hd, nt = (size_t)S * hd / 2;
    float *x = zt_rand(n, -2, 2), *c = malloc(nt * sizeof(float)), *sn = malloc(nt * sizeof(float));
    assert_non_null(c);
    assert_non_null(sn);
    for (size_t i = 0; i < nt; i++) { /* real rotations: c^2 + s^2 = 1 */
        float a = 6.2831853f * zt_uniform();
        c[i] = cosf(a);
        sn[i] = sinf(a);
    }
    int64_t s3[3] = {S, H, hd}, st[2] = {S, hd / 2};
    zi_tensor cx = zt_put(cpu, 1, x, 3, s3), gx = zt_put(gpu, 0, x, 3, s3);
    zi_tensor cc = zt_put(cpu, 1, c, 2, st), cs = zt_put(cpu, 1, sn, 2, st);
    zi_tensor gc = zt_put(gpu, 1, c, 2, st), gs = zt_put(gpu, 1, sn, 2, st);
    ZT_CPU(name, cpu->rope(cpu, &cx, &cc, &cs, S, H, hd, layout));
    gpu->rope(gpu, &gx, &gc, &gs, S, H, hd, layout); /* once for the check (in place) */
    zt_gpu_ok(name);
    float *ref = zt_get(cpu, &cx, n), *got = zt_get(gpu, &gx, n);
    zt_check(name, got, ref, n, 2e-3, 8e-3);
    ZT_TIME(name, 4.0 * n + 8.0 * nt, 0, gpu->rope(gpu, &gx, &gc, &gs, S, H, hd, layout));
    free(ref), free(got), free(x), free(c), free(sn);
    cpu->free(cpu, &cx), cpu->free(cpu, &cc), cpu->free(cpu, &cs);
    gpu->free(gpu, &gx), gpu->free(gpu, &gc), gpu->free(gpu, &gs);
}

static void test_rope(void **state)
{
    (void)state;
    if (zt_small) {
        zt_rope_case("rope interleaved 72x3x128", 72, 3, 128, ZI_ROPE_INTERLEAVED);
        zt_rope_case("rope neox 40x4x128", 40, 4, 128, ZI_ROPE_NEOX);
        zt_rope_case("rope neox 77x4x16", 77, 4, 16, ZI_ROPE_NEOX);
        zt_rope_case("rope interleaved 9x2x24", 9, 2, 24, ZI_ROPE_INTERLEAVED);
        return;
    }
    zt_rope_case("rope interleaved 4224x30x128", 4224, 30, 128, ZI_ROPE_INTERLEAVED);
    zt_rope_case("rope neox 512x32x128", 512, 32, 128, ZI_ROPE_NEOX);
    zt_rope_case("rope neox 77x4x16", 77, 4, 16, ZI_ROPE_NEOX);
}

/* ---- attention ---- */

/* Copies rows [r0, r0+nr) and heads [h0, h0+nh) of x[S, H, hd]. */
static float *zt_slice(const float *x, int H, int hd, int r0, int nr, int h0, int nh)
{
    float *y = malloc((size_t)nr * nh * hd * sizeof(float));
    assert_non_null(y);
    for (int r = 0; r < nr; r++)
        memcpy(y + (size_t)r * nh * hd, x + ((size_t)(r0 + r) * H + h0) * hd,
               (size_t)nh * hd * sizeof(float));
    return y;
}

/* Inputs of zt_attn_case_in: random, or Q = 0 (every visible key weighs the same) with V = 1
 * everywhere (every output exactly 1, however many keys a row sees) or V = 0 but for the
 * last key's 1 (a row that sees the last key outputs 1/keys, any other 0). */
enum { ZT_ATTN_RANDOM, ZT_ATTN_V_ONE, ZT_ATTN_V_LAST };

/*
 * GPU: the full problem. CPU: query rows [0, cq) and query heads [0, ch) (with their kv
 * heads), which the full output contains unchanged (rows and heads are independent).
 */
static void zt_attn_case_in(const char *name, int Sq, int Skv, int H, int KVH, int hd, int causal,
                            int cq, int ch, zi_cuda_attn_path path, int input, double atol_frac,
                            double rtol)
{
    float scale = 1.0f / sqrtf((float)hd);
    size_t nq = (size_t)Sq * H * hd, nkv = (size_t)Skv * KVH * hd;
    float *q = zt_rand(nq, -2, 2), *k = zt_rand(nkv, -2, 2), *v = zt_rand(nkv, -1, 1);
    if (input != ZT_ATTN_RANDOM) {
        memset(q, 0, nq * sizeof(float));
        for (size_t i = 0; i < nkv; i++)
            v[i] = input == ZT_ATTN_V_ONE || i >= (size_t)(Skv - 1) * KVH * hd ? 1.0f : 0.0f;
    }
    int group = H / KVH, ckv = (ch + group - 1) / group;
    if (causal)
        cq = Sq; /* causal rows depend on their index: keep all rows */
    float *qs = zt_slice(q, H, hd, 0, cq, 0, ch), *ks = zt_slice(k, KVH, hd, 0, Skv, 0, ckv);
    float *vs = zt_slice(v, KVH, hd, 0, Skv, 0, ckv);
    int64_t sq[3] = {Sq, H, hd}, skv[3] = {Skv, KVH, hd};
    int64_t cqs[3] = {cq, ch, hd}, cks[3] = {Skv, ckv, hd};
    zi_tensor gq = zt_put(gpu, 0, q, 3, sq), gk = zt_put(gpu, 0, k, 3, skv);
    zi_tensor gv = zt_put(gpu, 0, v, 3, skv), go = zt_put(gpu, 0, NULL, 3, sq);
    zi_tensor cqt = zt_put(cpu, 1, qs, 3, cqs), ckt = zt_put(cpu, 1, ks, 3, cks);
    zi_tensor cvt = zt_put(cpu, 1, vs, 3, cks), cot = zt_put(cpu, 1, NULL, 3, cqs);
    assert_int_equal(zi_cuda_set_attention_path(gpu, path), ZI_OK);
    ZT_CPU(name, cpu->attention(cpu, &cot, &cqt, &ckt, &cvt, cq, Skv, ch, ckv, hd, scale, causal));
    double fl = 4.0 * Sq * (double)Skv * H * hd * (causal ? 0.5 : 1.0);
    ZT_TIME(name, 2.0 * (2.0 * nq + 2.0 * nkv), fl,
            gpu->attention(gpu, &go, &gq, &gk, &gv, Sq, Skv, H, KVH, hd, scale, causal));
    float *full = zt_get(gpu, &go, nq);
    float *got = zt_slice(full, H, hd, 0, cq, 0, ch);
    float *ref = zt_get(cpu, &cot, (size_t)cq * ch * hd);
    zt_check(name, got, ref, (size_t)cq * ch * hd, atol_frac, rtol);
    assert_int_equal(zi_cuda_set_attention_path(gpu, ZI_CUDA_ATTN_AUTO), ZI_OK);
    free(full), free(got), free(ref), free(q), free(k), free(v), free(qs), free(ks), free(vs);
    gpu->free(gpu, &gq), gpu->free(gpu, &gk), gpu->free(gpu, &gv), gpu->free(gpu, &go);
    cpu->free(cpu, &cqt), cpu->free(cpu, &ckt), cpu->free(cpu, &cvt), cpu->free(cpu, &cot);
}

static void zt_attn_case(const char *name, int Sq, int Skv, int H, int KVH, int hd, int causal,
                         int cq, int ch, zi_cuda_attn_path path)
{
    zt_attn_case_in(name, Sq, Skv, H, KVH, hd, causal, cq, ch, path, ZT_ATTN_RANDOM, 1e-2, 2e-2);
}

/*
 * The key bounds, where an error of one key is large: (a) Q = 0, V = 1, Skv = 1 and 65 (a
 * partly filled tile of either kernel): a zero-filled key past Skv let into the softmax
 * would give Skv / (Skv + 1); (b) causal with Skv - Sq = 1, so that the last row of the
 * first query block (and, at head dim 512, of the second) sees exactly one key of the next
 * K/V tile, and V = 0 but for that key: a tile count that leaves that tile out gives 0 for
 * the row instead of 1/65.
 */
static void zt_attn_key_bound_cases(const char *what, zi_cuda_attn_path path, int wide)
{
    char nm[96];
    const int hds[2] = {128, 512};
    for (int i = 0; i < 1 + wide; i++) {
        int hd = hds[i];
        snprintf(nm, sizeof nm, "attention %s one key V=1 5/1x%d", what, hd);
        zt_attn_case_in(nm, 5, 1, 2, 1, hd, 0, 5, 2, path, ZT_ATTN_V_ONE, 0, 5e-3);
        snprintf(nm, sizeof nm, "attention %s ragged keys V=1 3/65x%d", what, hd);
        zt_attn_case_in(nm, 3, 65, 2, 1, hd, 0, 3, 2, path, ZT_ATTN_V_ONE, 0, 5e-3);
        snprintf(nm, sizeof nm, "attention %s causal last key 64/65x%d", what, hd);
        zt_attn_case_in(nm, 64, 65, 1, 1, hd, 1, 64, 1, path, ZT_ATTN_V_LAST, 1e-2, 2e-2);
    }
    snprintf(nm, sizeof nm, "attention %s causal decode last key 1/65", what);
    zt_attn_case_in(nm, 1, 65, 2, 1, 128, 1, 1, 2, path, ZT_ATTN_V_LAST, 1e-2, 2e-2);
}

/* The GEMM path in blocks of a few query rows (a small score budget): the row blocks,
 * the causal key counts per block and the offsets of each block's output. */
static void zt_attn_tiled_cases(void)
{
    /* 6 bytes per score: 150 keys x 48 rows per block */
    assert_int_equal(zi_cuda_set_work_budgets(gpu, (size_t)150 * 6 * 48, 0), ZI_OK);
    zt_attn_case("attention gemm tiled causal offset 130/150 gqa", 130, 150, 4, 2, 128, 1, 130, 4,
                 ZI_CUDA_ATTN_GEMM);
    zt_attn_case("attention gemm tiled 150x2x64", 150, 150, 2, 2, 64, 0, 150, 2, ZI_CUDA_ATTN_GEMM);
    assert_int_equal(zi_cuda_set_work_budgets(gpu, 0, 0), ZI_OK);
}

/* The flash kernel with one K/V stage (the default is two): correct on the ragged, causal
 * and GQA cases, and timed against two stages at the DiT's shape on a GPU. */
static void zt_attn_one_stage_cases(void)
{
    assert_int_equal(zi_cuda_set_flash_stages(gpu, 3), ZI_EINVAL);
    assert_int_equal(zi_cuda_set_flash_stages(gpu, 1), ZI_OK);
    zt_attn_case("attention flash 1-stage ragged 77x3", 77, 77, 3, 3, 128, 0, 77, 3,
                 ZI_CUDA_ATTN_FLASH);
    zt_attn_case("attention flash 1-stage causal gqa 130x4/2", 130, 130, 4, 2, 128, 1, 130, 4,
                 ZI_CUDA_ATTN_FLASH);
    zt_attn_case("attention flash 1-stage causal offset 20/150", 20, 150, 2, 1, 128, 1, 20, 2,
                 ZI_CUDA_ATTN_FLASH);
    zt_attn_case("attention flash 1-stage wide causal gqa 70x4/2x512", 70, 70, 4, 2, 512, 1, 70, 4,
                 ZI_CUDA_ATTN_FLASH);
    if (zt_small)
        zt_attn_key_bound_cases("flash 1-stage", ZI_CUDA_ATTN_FLASH, 1);
    if (!zt_small) {
        zt_attn_case("attention dit flash 1-stage 4224x30x128", 4224, 4224, 30, 30, 128, 0, 512, 2,
                     ZI_CUDA_ATTN_FLASH);
        zt_attn_case("attention vae flash 1-stage 16384x1x512", 16384, 16384, 1, 1, 512, 0, 256, 1,
                     ZI_CUDA_ATTN_FLASH);
    }
    assert_int_equal(zi_cuda_set_flash_stages(gpu, 2), ZI_OK);
}

/* A device whose blocks may not take the 146 KiB of the two-stage head-dim-512 kernel
 * (sm_86/89: 99 KiB; the emulator plays one): the backend still starts, and a request for
 * two stages runs the single-stage kernel there, correctly. */
static void zt_attn_small_smem_case(void)
{
    zi_backend *big = gpu;
    assert_int_equal(setenv("ZI_EMU_SMEM_OPTIN_KB", "99", 1), 0);
    zi_backend *small = zi_backend_cuda_new(0);
    if (!small) {
        unsetenv("ZI_EMU_SMEM_OPTIN_KB");
        fail_msg("cuda backend on a 99 KiB device: %s", zi_errmsg());
    }
    gpu = small;
    stream = (cudaStream_t)zi_cuda_stream(gpu);
    assert_int_equal(zi_cuda_set_flash_stages(gpu, 2), ZI_OK);
    zt_attn_case("attention flash wide on 99 KiB 40x1x512", 40, 40, 1, 1, 512, 0, 40, 1,
                 ZI_CUDA_ATTN_FLASH);
    gpu = big;
    stream = (cudaStream_t)zi_cuda_stream(gpu);
    zi_backend_destroy(small);
    assert_int_equal(unsetenv("ZI_EMU_SMEM_OPTIN_KB"), 0);
}

static void test_attention(void **state)
{
    (void)state;
    zt_attn_tiled_cases();
    zt_attn_one_stage_cases();
    if (zt_small) {
        zt_attn_case("attention flash 200x2x128", 200, 200, 2, 2, 128, 0, 200, 2,
                     ZI_CUDA_ATTN_FLASH);
        zt_attn_case("attention gemm-path 200x2x128", 200, 200, 2, 2, 128, 0, 200, 2,
                     ZI_CUDA_ATTN_GEMM);
        zt_attn_case("attention causal gqa flash 130x4/2", 130, 130, 4, 2, 128, 1, 130, 4,
                     ZI_CUDA_ATTN_FLASH);
        zt_attn_case("attention causal gqa gemm 130x4/2", 130, 130, 4, 2, 128, 1, 130, 4,
                     ZI_CUDA_ATTN_GEMM);
        zt_attn_case("attention causal offset flash 20/150", 20, 150, 2, 1, 128, 1, 20, 2,
                     ZI_CUDA_ATTN_FLASH);
        zt_attn_case("attention ragged flash 77x3", 77, 77, 3, 3, 128, 0, 77, 3,
                     ZI_CUDA_ATTN_FLASH);
        zt_attn_case("attention vae 256x1x512", 256, 256, 1, 1, 512, 0, 256, 1, ZI_CUDA_ATTN_AUTO);
        zt_attn_case("attention flash wide ragged 100x2x512", 100, 100, 2, 2, 512, 0, 100, 2,
                     ZI_CUDA_ATTN_FLASH);
        zt_attn_case("attention gemm-path wide 100x2x512", 100, 100, 2, 2, 512, 0, 100, 2,
                     ZI_CUDA_ATTN_GEMM);
        zt_attn_case("attention flash wide causal gqa 70x4/2x512", 70, 70, 4, 2, 512, 1, 70, 4,
                     ZI_CUDA_ATTN_FLASH);
        zt_attn_case("attention flash wide causal offset 20/100x512", 20, 100, 2, 1, 512, 1, 20, 2,
                     ZI_CUDA_ATTN_FLASH);
        if (ZT_EMU) /* the emulator plays the smaller device */
            zt_attn_small_smem_case();
        zt_attn_case("attention hd16 causal 9x4/2", 9, 9, 4, 2, 16, 1, 9, 4, ZI_CUDA_ATTN_AUTO);
        zt_attn_case("attention hd64 64x1", 64, 64, 1, 1, 64, 0, 64, 1, ZI_CUDA_ATTN_AUTO);
        zt_attn_key_bound_cases("flash", ZI_CUDA_ATTN_FLASH, 1);
        zt_attn_key_bound_cases("gemm", ZI_CUDA_ATTN_GEMM, 0);
        return;
    }
    /* DiT unified stream: 4096 image + 128 caption tokens, 30 heads of 128 */
    zt_attn_case("attention dit flash 4224x30x128", 4224, 4224, 30, 30, 128, 0, 512, 2,
                 ZI_CUDA_ATTN_FLASH);
    zt_attn_case("attention dit gemm-path 4224x30x128", 4224, 4224, 30, 30, 128, 0, 512, 2,
                 ZI_CUDA_ATTN_GEMM);
    /* 384^2 image: 576 + 32 tokens */
    zt_attn_case("attention dit flash 608x30x128", 608, 608, 30, 30, 128, 0, 608, 30,
                 ZI_CUDA_ATTN_FLASH);
    /* Qwen3: causal, GQA 32/8 */
    zt_attn_case("attention qwen3 causal gqa flash 512x32/8", 512, 512, 32, 8, 128, 1, 512, 32,
                 ZI_CUDA_ATTN_FLASH);
    zt_attn_case("attention qwen3 causal gqa gemm 512x32/8", 512, 512, 32, 8, 128, 1, 512, 32,
                 ZI_CUDA_ATTN_GEMM);
    /* ragged sizes, causal with Skv > Sq (offset), not a multiple of the tile */
    zt_attn_case("attention causal offset flash 100/612", 100, 612, 4, 2, 128, 1, 100, 4,
                 ZI_CUDA_ATTN_FLASH);
    zt_attn_case("attention ragged flash 77x3", 77, 77, 3, 3, 128, 0, 77, 3, ZI_CUDA_ATTN_FLASH);
    /* VAE mid attention at 1024^2: 16384 pixels, one head of 512 (the fused kernel; the
     * GEMM path timed beside it) */
    zt_attn_case("attention vae flash 16384x1x512", 16384, 16384, 1, 1, 512, 0, 1024, 1,
                 ZI_CUDA_ATTN_AUTO);
    zt_attn_case("attention vae gemm-path 16384x1x512", 16384, 16384, 1, 1, 512, 0, 256, 1,
                 ZI_CUDA_ATTN_GEMM);
    zt_attn_case("attention causal gqa flash wide 300x4/2x512", 300, 300, 4, 2, 512, 1, 300, 4,
                 ZI_CUDA_ATTN_FLASH);
    /* tiny model shapes: head dims 16 and 64 */
    zt_attn_case("attention hd16 causal 9x4/2", 9, 9, 4, 2, 16, 1, 9, 4, ZI_CUDA_ATTN_AUTO);
    zt_attn_case("attention hd64 64x1", 64, 64, 1, 1, 64, 0, 64, 1, ZI_CUDA_ATTN_AUTO);
}

/* ---- element-wise ---- */

enum { ZT_ADD, ZT_SILU, ZT_TANH, ZT_SILU_MUL, ZT_AFFINE };

static void zt_map_case(const char *name, int op, size_t n, int out_f32, int in_f32)
{
    float *a = zt_rand(n, -4, 4), *b = zt_rand(n, -2, 2);
    int64_t s[1] = {(int64_t)n};
    zi_tensor ca = zt_put(cpu, 1, a, 1, s), cb = zt_put(cpu, 1, b, 1, s),
              co = zt_put(cpu, 1, NULL, 1, s);
    zi_tensor ga = zt_put(gpu, in_f32, a, 1, s), gb = zt_put(gpu, 0, b, 1, s);
    zi_tensor go = zt_put(gpu, out_f32, NULL, 1, s);
    size_t bytes = n * (out_f32 ? 4 : 2) + n * (in_f32 ? 4 : 2);
#define ZT_RUN(be, o, x, y)                                                                        \
    (op == ZT_ADD        ? be->add(be, o, x, y, n)                                                 \
     : op == ZT_SILU     ? be->silu(be, o, x, n)                                                   \
     : op == ZT_TANH     ? be->tanh_(be, o, x, n)                                                  \
     : op == ZT_SILU_MUL ? be->silu_mul(be, o, x, y, n)                                            \
                         : be->affine(be, o, x, 0.75f, -0.25f, n))
    ZT_CPU(name, ZT_RUN(cpu, &co, &ca, &cb));
    ZT_TIME(name, bytes + ((op == ZT_ADD || op == ZT_SILU_MUL) ? 2.0 * n : 0), 0,
            ZT_RUN(gpu, &go, &ga, &gb));
    float *ref = zt_get(cpu, &co, n), *got = zt_get(gpu, &go, n);
    zt_check(name, got, ref, n, 1e-3, out_f32 && in_f32 ? 1e-5 : 8e-3);
    /* in place on the first operand */
    ZT_RUN(gpu, &ga, &ga, &gb);
    free(got);
    got = zt_get(gpu, &ga, n);
    zt_check(name, got, ref, n, 1e-3, 8e-3);
#undef ZT_RUN
    free(ref), free(got), free(a), free(b);
    cpu->free(cpu, &ca), cpu->free(cpu, &cb), cpu->free(cpu, &co);
    gpu->free(gpu, &ga), gpu->free(gpu, &gb), gpu->free(gpu, &go);
}

static void test_elementwise(void **state)
{
    (void)state;
    if (zt_small) {
        zt_map_case("add 96x384", ZT_ADD, (size_t)96 * 384, 0, 0);
        zt_map_case("silu 40000", ZT_SILU, 40000, 0, 0);
        zt_map_case("tanh 1536", ZT_TANH, 1536, 0, 0);
        zt_map_case("silu_mul 40000", ZT_SILU_MUL, 40000, 0, 0);
        zt_map_case("affine f32 latents 16x16x16", ZT_AFFINE, 16 * 16 * 16, 1, 1);
        zt_map_case("add f32 out bf16+bf16 odd n", ZT_ADD, 10003, 1, 0);
        zt_map_case("silu f32 in -> bf16 odd n", ZT_SILU, 999, 0, 1);
        /* n = 4 (mod 8): the scalar kernel, not the 8-wide one */
        zt_map_case("add n=1004", ZT_ADD, 1004, 0, 0);
        zt_map_case("silu_mul n=12", ZT_SILU_MUL, 12, 0, 0);
        zt_map_case("affine f32 n=20", ZT_AFFINE, 20, 1, 1);
        return;
    }
    size_t ffn = (size_t)4224 * 10240;
    zt_map_case("add 4224x3840", ZT_ADD, (size_t)4224 * 3840, 0, 0);
    zt_map_case("silu 4224x10240", ZT_SILU, ffn, 0, 0);
    zt_map_case("tanh 15360", ZT_TANH, 15360, 0, 0);
    zt_map_case("silu_mul 4224x10240", ZT_SILU_MUL, ffn, 0, 0);
    zt_map_case("affine f32 latents 16x128x128", ZT_AFFINE, 16 * 128 * 128, 1, 1);
    zt_map_case("add f32 out bf16+bf16 odd n", ZT_ADD, 1000003, 1, 0);
    zt_map_case("silu f32 in -> bf16 odd n", ZT_SILU, 999, 0, 1);
}

static void zt_rowvec_case(const char *name, int mode, int R, int D, int null_g)
{
    size_t n = (size_t)R * D;
    float *x = zt_rand(n, -2, 2), *y = zt_rand(n, -2, 2), *s = zt_rand((size_t)D, -1.5f, 1.5f);
    int64_t sh[2] = {R, D};
    zi_tensor cx = zt_put(cpu, 1, x, 2, sh), cy = zt_put(cpu, 1, y, 2, sh),
              cs = zt_put1(cpu, 1, s, D);
    zi_tensor gx = zt_put(gpu, 0, x, 2, sh), gy = zt_put(gpu, 0, y, 2, sh),
              gs = zt_put1(gpu, 0, s, D);
    zi_tensor co = zt_put(cpu, 1, NULL, 2, sh), go = zt_put(gpu, 0, NULL, 2, sh);
    float *ref, *got;
    if (mode == 0) {
        ZT_CPU(name, cpu->mul_row(cpu, &co, &cx, &cs, R, D));
        ZT_TIME(name, 4.0 * n, 0, gpu->mul_row(gpu, &go, &gx, &gs, R, D));
        ref = zt_get(cpu, &co, n);
        got = zt_get(gpu, &go, n);
    } else {
        ZT_CPU(name, cpu->gated_add(cpu, &cx, null_g ? NULL : &cs, &cy, R, D));
        gpu->gated_add(gpu, &gx, null_g ? NULL : &gs, &gy, R, D); /* once: it accumulates */
        zt_gpu_ok(name);
        ref = zt_get(cpu, &cx, n);
        got = zt_get(gpu, &gx, n);
        ZT_TIME(name, 6.0 * n, 0, gpu->gated_add(gpu, &go, null_g ? NULL : &gs, &gy, R, D));
    }
    zt_check(name, got, ref, n, 1e-3, 8e-3);
    free(ref), free(got), free(x), free(y), free(s);
    cpu->free(cpu, &cx), cpu->free(cpu, &cy), cpu->free(cpu, &cs), cpu->free(cpu, &co);
    gpu->free(gpu, &gx), gpu->free(gpu, &gy), gpu->free(gpu, &gs), gpu->free(gpu, &go);
}

static void test_adaln(void **state)
{
    (void)state;
    if (zt_small) {
        zt_rowvec_case("mul_row 64x384", 0, 64, 384, 0);
        zt_rowvec_case("gated_add 64x384", 1, 64, 384, 0);
        zt_rowvec_case("gated_add residual (g NULL) 64x384", 1, 64, 384, 1);
        zt_rowvec_case("mul_row odd 33x77", 0, 33, 77, 0);
        return;
    }
    zt_rowvec_case("mul_row 4224x3840", 0, 4224, 3840, 0);
    zt_rowvec_case("gated_add 4224x3840", 1, 4224, 3840, 0);
    zt_rowvec_case("gated_add residual (g NULL) 4224x3840", 1, 4224, 3840, 1);
    zt_rowvec_case("mul_row odd 33x77", 0, 33, 77, 0);
}

static void test_copy_transpose(void **state)
{
    (void)state;
    /* copy with dtype conversion both ways */
    size_t n = (size_t)16 * (zt_small ? 24 * 24 : 128 * 128);
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = -3.0f + 6.0f * zt_uniform(); /* not bf16-rounded: the conversion is tested */
    int64_t s[1] = {(int64_t)n};
    zi_tensor gf = zt_put(gpu, 1, x, 1, s), gb = zt_put(gpu, 0, NULL, 1, s);
    zi_tensor gf2 = zt_put(gpu, 1, NULL, 1, s);
    ZT_TIME(zt_small ? "copy f32->bf16 16x24^2" : "copy f32->bf16 16x128^2", 6.0 * n, 0,
            gpu->copy(gpu, &gb, &gf, n));
    gpu->copy(gpu, &gf2, &gb, n);
    float *back = zt_get(gpu, &gf2, n), *want = malloc(n * sizeof(float));
    assert_non_null(want);
    memcpy(want, x, n * sizeof(float));
    zi_round_bf16_inplace(want, n); /* round to nearest even, as the host does */
    zt_check("copy f32->bf16->f32 rounding", back, want, n, 0, 0);
    free(back), free(want), free(x);
    gpu->free(gpu, &gf), gpu->free(gpu, &gb), gpu->free(gpu, &gf2);

    /* transpose [16384, 512] (VAE attention layout change) */
    const int R = zt_small ? 300 : 16384, C = zt_small ? 72 : 512;
    float *t = zt_rand((size_t)R * C, -1, 1);
    int64_t st[2] = {R, C}, so[2] = {C, R};
    zi_tensor ct = zt_put(cpu, 1, t, 2, st), co = zt_put(cpu, 1, NULL, 2, so);
    zi_tensor gt = zt_put(gpu, 0, t, 2, st), go = zt_put(gpu, 0, NULL, 2, so);
    const char *name = zt_small ? "transpose 300x72" : "transpose 16384x512";
    ZT_CPU(name, cpu->transpose(cpu, &co, &ct, R, C));
    ZT_TIME(name, 4.0 * R * C, 0, gpu->transpose(gpu, &go, &gt, R, C));
    float *ref = zt_get(cpu, &co, (size_t)R * C), *got = zt_get(gpu, &go, (size_t)R * C);
    zt_check(name, got, ref, (size_t)R * C, 0, 0);
    free(ref), free(got), free(t);
    cpu->free(cpu, &ct), cpu->free(cpu, &co), gpu->free(gpu, &gt), gpu->free(gpu, &go);
}

/* ---- convolution and image ---- */

static void zt_conv_case(const char *name, int Ci, int Co, int h, int w, int k, int check)
{
    size_t nin = (size_t)Ci * h * w, nout = (size_t)Co * h * w, nw = (size_t)Co * Ci * k * k;
    float fan = 1.0f / sqrtf((float)Ci * k * k);
    float *x = zt_rand(nin, -1, 1), *wt = zt_rand(nw, -fan, fan),
          *b = zt_rand((size_t)Co, -0.2f, 0.2f);
    int64_t si[3] = {Ci, h, w}, so[3] = {Co, h, w}, sw[4] = {Co, Ci, k, k};
    zi_tensor gx = zt_put(gpu, 0, x, 3, si), go = zt_put(gpu, 0, NULL, 3, so), gw, gb;
    assert_int_equal(gpu->upload_weight(gpu, &gw, wt, ZI_F32, 4, sw), ZI_OK);
    assert_int_equal(gpu->upload_weight(gpu, &gb, b, ZI_F32, 1, (int64_t[]){Co}), ZI_OK);
    ZT_TIME(name, 2.0 * (nin + nout + nw), 2.0 * nout * Ci * k * k,
            gpu->conv2d(gpu, &go, &gx, &gw, &gb, Ci, Co, h, w, k));
    if (check) {
        zi_tensor cx = zt_put(cpu, 1, x, 3, si), co = zt_put(cpu, 1, NULL, 3, so), cw, cb;
        assert_int_equal(cpu->upload_weight(cpu, &cw, wt, ZI_F32, 4, sw), ZI_OK);
        assert_int_equal(cpu->upload_weight(cpu, &cb, b, ZI_F32, 1, (int64_t[]){Co}), ZI_OK);
        ZT_CPU(name, cpu->conv2d(cpu, &co, &cx, &cw, &cb, Ci, Co, h, w, k));
        float *ref = zt_get(cpu, &co, nout), *got = zt_get(gpu, &go, nout);
        zt_check(name, got, ref, nout, 4e-3, 1.6e-2);
        free(ref), free(got);
        cpu->free(cpu, &cx), cpu->free(cpu, &co), cpu->free(cpu, &cw), cpu->free(cpu, &cb);
    }
    free(x), free(wt), free(b);
    gpu->free(gpu, &gx), gpu->free(gpu, &go), gpu->free(gpu, &gw), gpu->free(gpu, &gb);
}

static void test_conv2d(void **state)
{
    (void)state;
    /* im2col in tiles of 256 pixels (a small column budget): 600 pixels = 256 + 256 + 88 */
    assert_int_equal(zi_cuda_set_work_budgets(gpu, 0, 1), ZI_OK);
    zt_conv_case("conv3x3 tiled 9->6 @20x30", 9, 6, 20, 30, 3, 1);
    assert_int_equal(zi_cuda_set_work_budgets(gpu, 0, 0), ZI_OK);
    if (zt_small) {
        zt_conv_case("conv3x3 32->32 @16^2", 32, 32, 16, 16, 3, 1);
        zt_conv_case("conv3x3 4->32 @16^2 (conv_in)", 4, 32, 16, 16, 3, 1);
        zt_conv_case("conv1x1 32->16 @16^2 (shortcut)", 32, 16, 16, 16, 1, 1);
        zt_conv_case("conv3x3 16->3 @24^2 (conv_out)", 16, 3, 24, 24, 3, 1);
        zt_conv_case("conv3x3 7->5 @13x9 odd", 7, 5, 13, 9, 3, 1);
        return;
    }
    zt_conv_case("conv3x3 512->512 @128^2", 512, 512, 128, 128, 3, 1);
    zt_conv_case("conv3x3 16->512 @128^2 (conv_in)", 16, 512, 128, 128, 3, 1);
    zt_conv_case("conv1x1 512->256 @128^2 (shortcut)", 512, 256, 128, 128, 1, 1);
    zt_conv_case("conv3x3 128->3 @256^2 (conv_out)", 128, 3, 256, 256, 3, 1);
    zt_conv_case("conv3x3 7->5 @13x9 odd", 7, 5, 13, 9, 3, 1);
    /* the decoder's largest convolutions: timed only (the CPU would take minutes) */
    zt_conv_case("conv3x3 512->512 @512^2 (time)", 512, 512, 512, 512, 3, 0);
    zt_conv_case("conv3x3 256->256 @1024^2 (time)", 256, 256, 1024, 1024, 3, 0);
}

/* to_rgb8 of one image on both backends into new buffers *rc (CPU) and *rg (GPU; the
 * caller frees both): how many bytes differ. */
static size_t zt_rgb8_pair(zi_backend *cpu, zi_backend *gpu, const zi_tensor *ci,
                           const zi_tensor *gi, int H, int W, uint8_t **rc, uint8_t **rg)
{
    size_t n = (size_t)3 * H * W, diff = 0;
    *rc = malloc(n), *rg = malloc(n);
    assert_non_null(*rc);
    assert_non_null(*rg);
    assert_int_equal(cpu->to_rgb8(cpu, *rc, ci, H, W), ZI_OK);
    assert_int_equal(gpu->to_rgb8(gpu, *rg, gi, H, W), ZI_OK);
    for (size_t i = 0; i < n; i++)
        diff += (*rc)[i] != (*rg)[i];
    return diff;
}

static void test_upsample_rgb(void **state)
{
    (void)state;
    const int C = zt_small ? 8 : 512, h = zt_small ? 12 : 128, w = zt_small ? 20 : 128;
    size_t n = (size_t)C * h * w;
    float *x = zt_rand(n, -1, 1);
    int64_t si[3] = {C, h, w}, so[3] = {C, 2 * h, 2 * w};
    zi_tensor cx = zt_put(cpu, 1, x, 3, si), co = zt_put(cpu, 1, NULL, 3, so);
    zi_tensor gx = zt_put(gpu, 0, x, 3, si), go = zt_put(gpu, 0, NULL, 3, so);
    const char *name = zt_small ? "upsample2x 8x12x20" : "upsample2x 512x128^2";
    ZT_CPU(name, cpu->upsample2x(cpu, &co, &cx, C, h, w));
    ZT_TIME(name, 10.0 * n, 0, gpu->upsample2x(gpu, &go, &gx, C, h, w));
    float *ref = zt_get(cpu, &co, 4 * n), *got = zt_get(gpu, &go, 4 * n);
    zt_check(name, got, ref, 4 * n, 0, 0);
    free(ref), free(got), free(x);
    cpu->free(cpu, &cx), cpu->free(cpu, &co), gpu->free(gpu, &gx), gpu->free(gpu, &go);

    /* to_rgb8 at 1024^2, values around and beyond [-1, 1], plus a NaN */
    const int H = zt_small ? 40 : 1024, W = zt_small ? 56 : 1024;
    size_t np = (size_t)3 * H * W;
    float *img = zt_rand(np, -1.2f, 1.2f);
    img[5] = NAN;
    int64_t s3[3] = {3, H, W};
    zi_tensor ci = zt_put(cpu, 1, img, 3, s3), gi = zt_put(gpu, 0, img, 3, s3);
    uint8_t *rc, *rg;
    size_t diff = zt_rgb8_pair(cpu, gpu, &ci, &gi, H, W, &rc, &rg);
    const char *rgb = zt_small ? "to_rgb8 40x56" : "to_rgb8 1024^2";
    zt_result *r = zt_record(rgb);
    r->err = (double)diff;
    r->ok = diff == 0;
    assert_int_equal(diff, 0); /* same bf16 inputs, same fp32 formula: identical bytes */
    ZT_TIME(rgb, 2.0 * np + np, 0, gpu->to_rgb8(gpu, rg, &gi, H, W));
    free(rc), free(rg), free(img);
    cpu->free(cpu, &ci), gpu->free(gpu, &gi);

    /* exact ties from an F32 image: fp32 values x with (x / 2 + 0.5) * 255 = k + 0.5, k
     * even, which round half to even gives k and round half up k + 1 */
    enum { TH = 4, TW = 64 };
    size_t nt = (size_t)3 * TH * TW, nties = 0;
    float *tie = malloc(nt * sizeof(float));
    assert_non_null(tie);
    for (int kk = 0; kk < 255 && nties < nt; kk += 2) {
        float x0 = 2.0f * ((float)kk + 0.5f) / 255.0f - 1.0f, x = x0;
        for (int u = 0; u < 64; u++) /* walk down a few ulps, then up */
            x = nextafterf(x, -2.0f);
        for (int u = 0; u < 128 && nties < nt; u++, x = nextafterf(x, 2.0f)) {
            volatile float v = x / 2.0f + 0.5f;
            volatile float p = v * 255.0f;
            if (p == (float)kk + 0.5f)
                tie[nties++] = x;
        }
    }
    assert_true(nties >= 16);
    for (size_t i = nties; i < nt; i++) /* the rest: the ties again, negated */
        tie[i] = -tie[i - nties];
    int64_t st[3] = {3, TH, TW};
    zi_tensor ct = zt_put(cpu, 1, tie, 3, st), gt = zt_put(gpu, 1, tie, 3, st);
    uint8_t *tc, *tg;
    size_t tdiff = zt_rgb8_pair(cpu, gpu, &ct, &gt, TH, TW, &tc, &tg), ceven = 0;
    for (size_t i = 0; i < (size_t)TH * TW; i++)
        for (int c = 0; c < 3; c++) {
            size_t j = (size_t)c * TH * TW + i; /* planar in, interleaved out */
            ceven += j < nties && tc[i * 3 + c] % 2 == 0;
        }
    zt_result *tr = zt_record("to_rgb8 f32 ties");
    tr->err = (double)tdiff;
    tr->ok = tdiff == 0;
    assert_int_equal(ceven, nties); /* the CPU reference rounds the ties to even */
    assert_int_equal(tdiff, 0);
    free(tie), free(tc), free(tg);
    cpu->free(cpu, &ct), gpu->free(gpu, &gt);
}

/* ---- weights, randn ---- */

static void test_upload_weight(void **state)
{
    (void)state;
    const size_t n = (size_t)3 << 22; /* 12.6M: several staging chunks */
    float *x = malloc(n * sizeof(float));
    uint16_t *h16 = malloc(n * 2), *hb = malloc(n * 2);
    uint8_t *f8 = malloc(n);
    assert_true(x && h16 && hb && f8);
    for (size_t i = 0; i < n; i++) {
        x[i] = (zt_uniform() - 0.5f) * 1000.0f;
        h16[i] = zi_f32_to_f16((zt_uniform() - 0.5f) * 100.0f);
        hb[i] = zi_f32_to_bf16(x[i]);
        f8[i] = (uint8_t)(i * 37u);
    }
    const zi_dtype dts[4] = {ZI_F32, ZI_BF16, ZI_F16, ZI_F8_E4M3};
    const void *srcs[4] = {x, hb, h16, f8};
    const char *names[4] = {"upload_weight F32->bf16", "upload_weight BF16",
                            "upload_weight F16->bf16", "upload_weight F8_E4M3->bf16"};
    float *want = malloc(n * sizeof(float));
    assert_non_null(want);
    for (int d = 0; d < 4; d++) {
        zi_mem_stats m0, m1;
        gpu->mem_stats(gpu, &m0);
        zi_tensor w;
        double t0 = zt_now_ms();
        assert_int_equal(gpu->upload_weight(gpu, &w, srcs[d], dts[d], 1, (int64_t[]){(int64_t)n}),
                         ZI_OK);
        gpu->sync(gpu);
        zt_result *r = zt_record(names[d]);
        r->gpu_ms = zt_now_ms() - t0; /* host to bf16 on the device, wall time */
        r->bytes = (double)n * zi_dtype_size(dts[d]);
        gpu->mem_stats(gpu, &m1);
        assert_true(m1.weights >= m0.weights + n * 2); /* counted as weights */
        float *got = zt_get(gpu, &w, n);
        assert_int_equal(zi_convert_to_f32(want, srcs[d], dts[d], n), ZI_OK);
        zi_round_bf16_inplace(want, n);
        zt_check(names[d], got, want, n, 0, 0); /* round to nearest even, bit for bit */
        free(got);
        gpu->free(gpu, &w);
        gpu->mem_stats(gpu, &m1);
        assert_int_equal(m1.weights, m0.weights);
    }
    free(x), free(h16), free(hb), free(f8), free(want);

    /* F32 through three 32 MiB staging chunks: the third refills the first chunk's pinned
     * buffer, which must wait for that chunk's copy; every chunk's data differs */
    const size_t n3 = ((size_t)2 << 23) + 4099;
    float *x3 = malloc(n3 * sizeof(float)), *want3 = malloc(n3 * sizeof(float));
    assert_true(x3 && want3);
    for (size_t i = 0; i < n3; i++)
        x3[i] = (float)(i % 1021) - 500.0f; /* 2^24 = 144 (mod 1021): chunks differ */
    zi_tensor w3;
    assert_int_equal(gpu->upload_weight(gpu, &w3, x3, ZI_F32, 1, (int64_t[]){(int64_t)n3}), ZI_OK);
    float *got3 = zt_get(gpu, &w3, n3);
    memcpy(want3, x3, n3 * sizeof(float));
    zi_round_bf16_inplace(want3, n3);
    zt_check("upload_weight F32 3 chunks", got3, want3, n3, 0, 0);
    free(x3), free(want3), free(got3);
    gpu->free(gpu, &w3);
}

static void test_randn(void **state)
{
    (void)state;
    const size_t sizes[2] = {(size_t)16 * (zt_small ? 8 * 8 : 128 * 128),
                             (size_t)16 * (zt_small ? 24 * 24 : 256 * 256)};
    for (int i = 0; i < 2; i++) {
        size_t n = sizes[i];
        float *ref = malloc(n * sizeof(float));
        assert_non_null(ref);
        zi_randn_cuda(ref, n, 2026);
        zi_tensor t = zt_put(gpu, 1, NULL, 1, (int64_t[]){(int64_t)n});
        char name[64];
        snprintf(name, sizeof name, "randn philox %zu", n);
        ZT_TIME(name, 4.0 * n, 0, zi_cuda_randn(gpu, &t, n, 2026));
        float *got = zt_get(gpu, &t, n);
        double md = zi_max_abs_diff(got, ref, n);
        zt_result *r = zt_record(name);
        r->err = md;
        r->ok = md <= 1e-5;
        if (!(md <= 1e-5)) /* the golden README's tolerance for seeds */
            fail_msg("%s: max abs diff %g from the host generator", name, md);
        free(got), free(ref);
        gpu->free(gpu, &t);
    }
}

static void test_errors_are_sticky(void **state)
{
    (void)state;
    zi_tensor a = zt_put1(gpu, 0, NULL, 16), b = zt_put1(gpu, 0, NULL, 8);
    gpu->add(gpu, &a, &a, &b, 16); /* b too small: refused, nothing launched */
    assert_int_equal(zi_backend_check(gpu), ZI_EINVAL);
    assert_non_null(strstr(zi_errmsg(), "add"));
    gpu->silu(gpu, &a, &a, 16); /* a no-op after the first error */
    assert_int_equal(zi_backend_check(gpu), ZI_EINVAL);
    zi_backend_clear_error(gpu);
    zi_tensor host = zi_tensor_host(malloc(64), ZI_F32, 1, (int64_t[]){16});
    gpu->silu(gpu, &a, &host, 16); /* a host tensor is never handed to a kernel */
    assert_int_equal(zi_backend_check(gpu), ZI_EINVAL);
    zi_backend_clear_error(gpu);
    free(host.data);
    gpu->free(gpu, &a), gpu->free(gpu, &b);
}

int main(void)
{
    /* ZI_KERNELS_SMALL=1: the small shapes on a GPU too; ZI_KERNELS_ONLY=PATTERN: the
     * tests whose names match (cmocka's filter, e.g. test_attention) - together a short
     * run for compute-sanitizer's racecheck (tests/gpu/run.sh) */
    const char *small = getenv("ZI_KERNELS_SMALL"), *only = getenv("ZI_KERNELS_ONLY");
    if (small && strcmp(small, "1") == 0)
        zt_small = 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors_are_sticky),
        cmocka_unit_test(test_upload_weight),
        cmocka_unit_test(test_randn),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_groupnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_adaln),
        cmocka_unit_test(test_copy_transpose),
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_upsample_rgb),
    };
    if (only && *only) { /* a name that matches nothing must not pass as "0 tests run" */
        size_t n = 0;
        for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
            n += fnmatch(only, tests[i].name, 0) == 0;
        if (n == 0) {
            fprintf(stderr, "test_kernels: ZI_KERNELS_ONLY=%s matches no test\n", only);
            return 1;
        }
        cmocka_set_test_filter(only);
    }
    return cmocka_run_group_tests(tests, zt_setup, zt_teardown);
}

#else /* !ZI_HAVE_CUDA */

#include <stdio.h>

int main(void)
{
    fprintf(stderr, "test_kernels: built without CUDA\n");
    return 1;
}

#endif
