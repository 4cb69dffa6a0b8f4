/*
 * test_backend_cpu.c - every op of the fp32 reference backend against naive double loops.
 *
 * Small random inputs with odd sizes; edge cases: causal attention with Sq < Skv, GQA,
 * several query-row blocks, both RoPE layouts, conv k = 1/3/5 and a conv wide enough to be
 * tiled, GroupNorm + SiLU, to_rgb8 rounding of exact halves. Bad arguments must set the
 * sticky error and leave later ops as no-ops.
 */
#include "backend.h"
#include "zi_err.h"
#include "zi_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-5

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* uniform in [-1, 1) (xorshift64*) */
static float rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static zi_backend *new_be(void)
{
    zi_backend *be = zi_backend_cpu_new(1);
    assert_non_null(be);
    assert_int_equal(be->act_dtype, ZI_F32);
    assert_int_equal(be->weight_dtype, ZI_F32);
    return be;
}

/* A backend tensor of n elements filled with uniform random values times `scale`. */
static zi_tensor rand_t(zi_backend *be, int64_t n, float scale)
{
    zi_tensor t;
    assert_int_equal(be->alloc(be, &t, 1, &n), ZI_OK);
    float *p = t.data;
    for (int64_t i = 0; i < n; i++)
        p[i] = rnd() * scale;
    return t;
}

static zi_tensor zeros_t(zi_backend *be, int64_t n)
{
    zi_tensor t;
    assert_int_equal(be->alloc(be, &t, 1, &n), ZI_OK);
    memset(t.data, 0, (size_t)n * sizeof(float));
    return t;
}

static const float *F(const zi_tensor *t)
{
    return t->data;
}

/* rel err of f32 output vs a double reference */
static double rel_err_d(const float *out, const double *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)out[i] - ref[i]);
        if (d > md || isnan(d))
            md = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > mr)
            mr = fabs(ref[i]);
    }
    return mr > 0 ? md / mr : md;
}

static void expect_close(const float *out, const double *ref, size_t n, double tol)
{
    double e = rel_err_d(out, ref, n);
    if (!(e <= tol))
        fail_msg("rel err %g > %g", e, tol);
}

static void test_linear(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    int M = 5, K = 7, N = 3;
    zi_tensor x = rand_t(be, M * K, 1), w = rand_t(be, N * K, 1), b = rand_t(be, N, 1);
    zi_tensor y = zeros_t(be, M * N), y2 = zeros_t(be, M * N);
    be->linear(be, &y, &x, &w, &b, M, K, N);
    be->linear(be, &y2, &x, &w, NULL, M, K, N);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    double ref[15], ref2[15];
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)F(&x)[m * K + k] * F(&w)[n * K + k];
            ref2[m * N + n] = s;
            ref[m * N + n] = s + F(&b)[n];
        }
    expect_close(F(&y), ref, 15, TOL);
    expect_close(F(&y2), ref2, 15, TOL);
    zi_tensor *all[] = {&x, &w, &b, &y, &y2};
    for (size_t i = 0; i < 5; i++)
        be->free(be, all[i]);
    zi_backend_destroy(be);
}

static void test_embedding(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    int V = 11, D = 6, R = 4;
    int32_t ids[] = {3, 0, 10, 3};
    zi_tensor tab = rand_t(be, V * D, 1), y = zeros_t(be, R * D);
    be->embedding(be, &y, &tab, ids, R, D);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    for (int r = 0; r < R; r++)
        assert_memory_equal(F(&y) + r * D, F(&tab) + ids[r] * D, D * sizeof(float));
    int32_t bad[] = {1, 11};
    be->embedding(be, &y, &tab, bad, 2, D);
    assert_int_not_equal(be->err, ZI_OK);
    assert_non_null(strstr(be->errmsg, "id 11"));
    be->free(be, &tab);
    be->free(be, &y);
    zi_backend_destroy(be);
}

static void ref_norm_row(double *out, const float *x, int D, double eps, int center)
{
    double mean = 0, ss = 0;
    if (center) {
        for (int d = 0; d < D; d++)
            mean += x[d];
        mean /= D;
    }
    for (int d = 0; d < D; d++)
        ss += (x[d] - mean) * (x[d] - mean);
    double r = 1.0 / sqrt(ss / D + eps);
    for (int d = 0; d < D; d++)
        out[d] = (x[d] - mean) * r;
}

static void test_rmsnorm_layernorm(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    int R = 3, D = 37;
    zi_tensor x = rand_t(be, R * D, 3), w = rand_t(be, D, 2), y = zeros_t(be, R * D);
    zi_tensor yl = zeros_t(be, R * D), xc = zeros_t(be, R * D);
    memcpy(xc.data, x.data, (size_t)R * D * 4);
    double ref[3 * 37], refn[3 * 37], refl[3 * 37];
    for (int r = 0; r < R; r++) {
        ref_norm_row(refn + r * D, F(&x) + r * D, D, 1e-6, 0);
        ref_norm_row(refl + r * D, F(&x) + r * D, D, 1e-5, 1);
        for (int d = 0; d < D; d++)
            ref[r * D + d] = refn[r * D + d] * F(&w)[d];
    }
    be->rmsnorm(be, &y, &x, &w, R, D, 1e-6f);
    expect_close(F(&y), ref, (size_t)R * D, TOL);
    be->rmsnorm(be, &xc, &xc, NULL, R, D, 1e-6f); /* in place, no affine */
    expect_close(F(&xc), refn, (size_t)R * D, TOL);
    be->layernorm(be, &yl, &x, R, D, 1e-5f);
    expect_close(F(&yl), refl, (size_t)R * D, TOL);
    be->layernorm(be, &x, &x, R, D, 1e-5f); /* in place */
    expect_close(F(&x), refl, (size_t)R * D, TOL);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    zi_tensor *all[] = {&x, &w, &y, &yl, &xc};
    for (size_t i = 0; i < 5; i++)
        be->free(be, all[i]);
    zi_backend_destroy(be);
}

static void test_groupnorm(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    int C = 6, HW = 35, G = 3, cpg = C / G;
    zi_tensor x = rand_t(be, C * HW, 2), ga = rand_t(be, C, 1), be_ = rand_t(be, C, 1);
    zi_tensor y = zeros_t(be, C * HW), ys = zeros_t(be, C * HW);
    for (int i = 0; i < C * HW; i++) /* an offset so the mean matters */
        ((float *)x.data)[i] += 1.5f;
    double ref[6 * 35], refs[6 * 35];
    for (int g = 0; g < G; g++) {
        double nrm[2 * 35];
        ref_norm_row(nrm, F(&x) + g * cpg * HW, cpg * HW, 1e-6, 1);
        for (int c = g * cpg; c < (g + 1) * cpg; c++)
            for (int i = 0; i < HW; i++) {
                double v = nrm[(c - g * cpg) * HW + i] * F(&ga)[c] + F(&be_)[c];
                ref[c * HW + i] = v;
                refs[c * HW + i] = v / (1 + exp(-v));
            }
    }
    be->groupnorm(be, &y, &x, &ga, &be_, C, HW, G, 1e-6f, 0);
    be->groupnorm(be, &ys, &x, &ga, &be_, C, HW, G, 1e-6f, 1);
    be->groupnorm(be, &x, &x, &ga, &be_, C, HW, G, 1e-6f, 1); /* in place */
    assert_int_equal(zi_backend_check(be), ZI_OK);
    expect_close(F(&y), ref, (size_t)C * HW, TOL);
    expect_close(F(&ys), refs, (size_t)C * HW, TOL);
    expect_close(F(&x), refs, (size_t)C * HW, TOL);
    be->groupnorm(be, &y, &x, &ga, &be_, C, HW, 4, 1e-6f, 0); /* 6 % 4 != 0 */
    assert_int_not_equal(be->err, ZI_OK);
    zi_tensor *all[] = {&x, &ga, &be_, &y, &ys};
    for (size_t i = 0; i < 5; i++)
        be->free(be, all[i]);
    zi_backend_destroy(be);
}

static void test_rope(void **state)
{
    (void)state;
    for (int layout = 0; layout < 2; layout++) {
        zi_backend *be = new_be();
        int S = 3, H = 2, hd = 8, half = hd / 2;
        zi_tensor x = rand_t(be, S * H * hd, 1), c = zeros_t(be, S * half),
                  s = zeros_t(be, S * half);
        for (int p = 0; p < S; p++)
            for (int m = 0; m < half; m++) {
                double phi = p * pow(100.0, -2.0 * m / hd) + 0.3;
                ((float *)c.data)[p * half + m] = (float)cos(phi);
                ((float *)s.data)[p * half + m] = (float)sin(phi);
            }
        double ref[3 * 2 * 8];
        for (int p = 0; p < S; p++)
            for (int h = 0; h < H; h++) {
                const float *xv = F(&x) + (p * H + h) * hd;
                double *o = ref + (p * H + h) * hd;
                for (int d = 0; d < hd; d++) {
                    if (layout == ZI_ROPE_NEOX) {
                        /* the header's formula, written per output element */
                        double cd = F(&c)[p * half + d % half], sd = F(&s)[p * half + d % half];
                        o[d] = d < half ? xv[d] * cd - xv[d + half] * sd
                                        : xv[d] * cd + xv[d - half] * sd;
                    } else {
                        int m = d / 2;
                        double cm = F(&c)[p * half + m], sm = F(&s)[p * half + m];
                        o[d] =
                            d % 2 == 0 ? xv[d] * cm - xv[d + 1] * sm : xv[d - 1] * sm + xv[d] * cm;
                    }
                }
            }
        be->rope(be, &x, &c, &s, S, H, hd, (zi_rope_layout)layout);
        assert_int_equal(zi_backend_check(be), ZI_OK);
        expect_close(F(&x), ref, (size_t)S * H * hd, TOL);
        be->rope(be, &x, &c, &s, S, H, 7, (zi_rope_layout)layout); /* odd head dim */
        assert_int_not_equal(be->err, ZI_OK);
        be->free(be, &x);
        be->free(be, &c);
        be->free(be, &s);
        zi_backend_destroy(be);
    }
}

static void ref_attention(double *o, const float *q, const float *k, const float *v, int Sq,
                          int Skv, int H, int KVH, int hd, double scale, int causal)
{
    double *p = malloc((size_t)Skv * sizeof(double));
    assert_non_null(p);
    for (int h = 0; h < H; h++) {
        int kh = h / (H / KVH);
        for (int i = 0; i < Sq; i++) {
            int lim = causal ? i + Skv - Sq : Skv - 1;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= lim; j++) {
                double s = 0;
                for (int d = 0; d < hd; d++)
                    s += (double)q[(i * H + h) * hd + d] * k[(j * KVH + kh) * hd + d];
                p[j] = s * scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = 0; j <= lim; j++) {
                p[j] = exp(p[j] - mx);
                sum += p[j];
            }
            for (int d = 0; d < hd; d++) {
                double a = 0;
                for (int j = 0; j <= lim; j++)
                    a += p[j] * v[(j * KVH + kh) * hd + d];
                o[(size_t)i * H * hd + h * hd + d] = a / sum;
            }
        }
    }
    free(p);
}

static void check_attention(int Sq, int Skv, int H, int KVH, int hd, int causal)
{
    zi_backend *be = new_be();
    float scale = 1.0f / sqrtf((float)hd);
    zi_tensor q = rand_t(be, (int64_t)Sq * H * hd, 2), k = rand_t(be, (int64_t)Skv * KVH * hd, 2),
              v = rand_t(be, (int64_t)Skv * KVH * hd, 1), o = zeros_t(be, (int64_t)Sq * H * hd);
    double *ref = malloc((size_t)Sq * H * hd * sizeof(double));
    assert_non_null(ref);
    ref_attention(ref, F(&q), F(&k), F(&v), Sq, Skv, H, KVH, hd, scale, causal);
    be->attention(be, &o, &q, &k, &v, Sq, Skv, H, KVH, hd, scale, causal);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    expect_close(F(&o), ref, (size_t)Sq * H * hd, TOL);
    free(ref);
    be->free(be, &q);
    be->free(be, &k);
    be->free(be, &v);
    be->free(be, &o);
    zi_backend_destroy(be);
}

static void test_attention(void **state)
{
    (void)state;
    check_attention(5, 7, 4, 2, 8, 0);     /* GQA, cross lengths */
    check_attention(3, 6, 4, 1, 16, 1);    /* causal, Sq < Skv (offset mask), MQA */
    check_attention(17, 17, 4, 2, 16, 1);  /* the Qwen3 shape */
    check_attention(300, 300, 2, 2, 8, 1); /* two query-row blocks, causal */
    check_attention(300, 41, 3, 3, 4, 0);  /* blocks, non-causal */
    /* causal with Skv < Sq would leave rows without keys: rejected */
    zi_backend *be = new_be();
    zi_tensor q = zeros_t(be, 4 * 8), k = zeros_t(be, 2 * 8), o = zeros_t(be, 4 * 8);
    be->attention(be, &o, &q, &k, &k, 4, 2, 1, 1, 8, 1.0f, 1);
    assert_int_not_equal(be->err, ZI_OK);
    be->free(be, &q);
    be->free(be, &k);
    be->free(be, &o);
    be = (zi_backend_destroy(be), new_be());
    q = zeros_t(be, 4 * 8);
    k = zeros_t(be, 4 * 8);
    o = zeros_t(be, 4 * 8);
    be->attention(be, &o, &q, &k, &k, 4, 4, 3, 2, 8, 1.0f, 0); /* 3 heads over 2 kv heads */
    assert_int_not_equal(be->err, ZI_OK);
    be->free(be, &q);
    be->free(be, &k);
    be->free(be, &o);
    zi_backend_destroy(be);
}

static double silu_d(double x)
{
    return x / (1 + exp(-x));
}

static void test_elementwise(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    enum { R = 7, D = 9, N = R * D };
    zi_tensor a = rand_t(be, N, 4), b = rand_t(be, N, 4), s = rand_t(be, D, 2);
    zi_tensor y = zeros_t(be, N);
    double ref[N];

    be->add(be, &y, &a, &b, N);
    for (int i = 0; i < N; i++)
        ref[i] = (double)F(&a)[i] + F(&b)[i];
    expect_close(F(&y), ref, N, TOL);

    be->silu(be, &y, &a, N);
    for (int i = 0; i < N; i++)
        ref[i] = silu_d(F(&a)[i]);
    expect_close(F(&y), ref, N, TOL);

    be->tanh_(be, &y, &a, N);
    for (int i = 0; i < N; i++)
        ref[i] = tanh(F(&a)[i]);
    expect_close(F(&y), ref, N, TOL);

    be->silu_mul(be, &y, &a, &b, N);
    for (int i = 0; i < N; i++)
        ref[i] = silu_d(F(&a)[i]) * F(&b)[i];
    expect_close(F(&y), ref, N, TOL);

    be->affine(be, &y, &a, 0.5f, -0.25f, N);
    for (int i = 0; i < N; i++)
        ref[i] = F(&a)[i] * 0.5 - 0.25;
    expect_close(F(&y), ref, N, TOL);

    be->mul_row(be, &y, &a, &s, R, D);
    for (int i = 0; i < N; i++)
        ref[i] = (double)F(&a)[i] * F(&s)[i % D];
    expect_close(F(&y), ref, N, TOL);

    be->copy(be, &y, &a, N);
    assert_memory_equal(y.data, a.data, N * sizeof(float));
    be->gated_add(be, &y, &s, &b, R, D);
    for (int i = 0; i < N; i++)
        ref[i] = F(&a)[i] + (double)F(&s)[i % D] * F(&b)[i];
    expect_close(F(&y), ref, N, TOL);
    be->copy(be, &y, &a, N);
    be->gated_add(be, &y, NULL, &b, R, D);
    for (int i = 0; i < N; i++)
        ref[i] = (double)F(&a)[i] + F(&b)[i];
    expect_close(F(&y), ref, N, TOL);

    /* in place silu_mul (out == gate) */
    be->copy(be, &y, &a, N);
    be->silu_mul(be, &y, &y, &b, N);
    for (int i = 0; i < N; i++)
        ref[i] = silu_d(F(&a)[i]) * F(&b)[i];
    expect_close(F(&y), ref, N, TOL);

    be->transpose(be, &y, &a, R, D);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < D; c++)
            assert_true(F(&y)[c * R + r] == F(&a)[r * D + c]);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    zi_tensor *all[] = {&a, &b, &s, &y};
    for (size_t i = 0; i < 4; i++)
        be->free(be, all[i]);
    zi_backend_destroy(be);
}

static void test_transpose_tiles(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    int R = 37, C = 70;
    zi_tensor a = rand_t(be, R * C, 1), y = zeros_t(be, R * C);
    be->transpose(be, &y, &a, R, C);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            assert_true(F(&y)[c * R + r] == F(&a)[r * C + c]);
    be->free(be, &a);
    be->free(be, &y);
    zi_backend_destroy(be);
}

static void check_conv(int Ci, int Co, int h, int wd, int k, int with_bias)
{
    zi_backend *be = new_be();
    size_t hw = (size_t)h * wd;
    zi_tensor x = rand_t(be, (int64_t)(Ci * hw), 1), w = rand_t(be, (int64_t)Co * Ci * k * k, 1),
              b = rand_t(be, Co, 1), y = zeros_t(be, (int64_t)(Co * hw));
    double *ref = malloc(Co * hw * sizeof(double));
    assert_non_null(ref);
    int p = k / 2;
    for (int co = 0; co < Co; co++)
        for (int yy = 0; yy < h; yy++)
            for (int xx = 0; xx < wd; xx++) {
                double s = with_bias ? F(&b)[co] : 0;
                for (int ci = 0; ci < Ci; ci++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int sy = yy + ky - p, sx = xx + kx - p;
                            if (sy < 0 || sy >= h || sx < 0 || sx >= wd)
                                continue;
                            s += (double)F(&w)[((co * Ci + ci) * k + ky) * k + kx] *
                                 F(&x)[(ci * h + sy) * (size_t)wd + sx];
                        }
                ref[(co * h + yy) * (size_t)wd + xx] = s;
            }
    be->conv2d(be, &y, &x, &w, with_bias ? &b : NULL, Ci, Co, h, wd, k);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    expect_close(F(&y), ref, Co * hw, TOL);
    free(ref);
    be->free(be, &x);
    be->free(be, &w);
    be->free(be, &b);
    be->free(be, &y);
    zi_backend_destroy(be);
}

static void test_conv2d(void **state)
{
    (void)state;
    check_conv(3, 4, 5, 7, 3, 1);
    check_conv(3, 4, 5, 7, 1, 1);
    check_conv(2, 3, 1, 1, 3, 0); /* 1x1 image: only the centre tap */
    check_conv(2, 5, 6, 3, 5, 1);
    check_conv(256, 2, 16, 1024, 3, 1); /* > 16M floats of im2col: several row tiles */
    zi_backend *be = new_be();
    zi_tensor x = zeros_t(be, 2 * 16), w = zeros_t(be, 4 * 2 * 4), y = zeros_t(be, 2 * 16);
    be->conv2d(be, &y, &x, &w, NULL, 2, 2, 4, 4, 2); /* even k */
    assert_int_not_equal(be->err, ZI_OK);
    be->free(be, &x);
    be->free(be, &w);
    be->free(be, &y);
    zi_backend_destroy(be);
}

static void test_upsample(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    int C = 2, h = 3, wd = 5;
    zi_tensor x = rand_t(be, C * h * wd, 1), y = zeros_t(be, C * h * wd * 4);
    be->upsample2x(be, &y, &x, C, h, wd);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    for (int c = 0; c < C; c++)
        for (int yy = 0; yy < 2 * h; yy++)
            for (int xx = 0; xx < 2 * wd; xx++)
                assert_true(F(&y)[(c * 2 * h + yy) * 2 * wd + xx] ==
                            F(&x)[(c * h + yy / 2) * wd + xx / 2]);
    be->free(be, &x);
    be->free(be, &y);
    zi_backend_destroy(be);
}

/* numpy round: half to even, computed independently of the rounding mode */
static int round_half_even(double p)
{
    double f = floor(p);
    double d = p - f;
    if (d > 0.5 || (d == 0.5 && fmod(f, 2.0) != 0.0))
        f += 1;
    return (int)f;
}

static void test_to_rgb8(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    enum { H = 4, W = 64, HW = H * W };
    zi_tensor x = zeros_t(be, 3 * HW);
    float *p = x.data;
    for (int i = 0; i < 3 * HW; i++)
        p[i] = rnd() * 1.2f;
    /* exact halves: x = 0 gives 0.5 * 255 = 127.5 -> 128 (even) */
    p[0] = 0.0f;
    p[1] = -3.0f;
    p[2] = 5.0f;
    p[3] = NAN;
    /* inputs whose fp32 value (x/2 + 0.5) * 255 is an exact k + 0.5: start from the
     * nearest float and walk a few ulps */
    int halves = 0;
    for (int kq = 0; kq < 255 && 4 + halves < HW; kq++) {
        float target = (float)kq + 0.5f;
        float x0 = (target / 255.0f - 0.5f) * 2.0f;
        for (int t = -8; t <= 8; t++) {
            float v = x0;
            for (int u = 0; u < (t < 0 ? -t : t); u++)
                v = nextafterf(v, t < 0 ? -INFINITY : INFINITY);
            if ((v / 2.0f + 0.5f) * 255.0f == target) {
                p[4 + halves++] = v;
                break;
            }
        }
    }
    assert_true(halves >= 10);
    uint8_t rgb[HW * 3];
    assert_int_equal(be->to_rgb8(be, rgb, &x, H, W), ZI_OK);
    int odd_floor_seen = 0, even_floor_seen = 0;
    for (int i = 0; i < HW; i++)
        for (int c = 0; c < 3; c++) {
            float v = p[c * HW + i] / 2.0f + 0.5f;
            v = isnan(v) ? 0.0f : fminf(fmaxf(v, 0.0f), 1.0f);
            double q = (double)(v * 255.0f);
            int want = round_half_even(q);
            if (q - floor(q) == 0.5) {
                if ((int)floor(q) % 2)
                    odd_floor_seen++;
                else
                    even_floor_seen++;
            }
            if (rgb[i * 3 + c] != want)
                fail_msg("pixel %d c %d: x %g got %d want %d", i, c, p[c * HW + i], rgb[i * 3 + c],
                         want);
        }
    assert_int_equal(rgb[0], 128);
    assert_int_equal(rgb[1 * 3 + 0], 0); /* p[1] = -3 is pixel 1, channel 0 */
    assert_int_equal(rgb[2 * 3 + 0], 255);
    assert_int_equal(rgb[3 * 3 + 0], 0); /* NaN -> 0 */
    assert_true(odd_floor_seen > 0 && even_floor_seen > 0);
    be->free(be, &x);
    zi_backend_destroy(be);
}

static void test_memory_and_upload(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    zi_mem_stats ms;
    be->mem_stats(be, &ms);
    assert_int_equal(ms.allocated, 0);
    int64_t shape[2] = {3, 4};
    zi_tensor a, w, w8;
    assert_int_equal(be->alloc(be, &a, 2, shape), ZI_OK);
    assert_int_equal(a.dtype, ZI_F32);
    assert_int_equal(a.owned, 1);
    float host[12], back[12];
    for (int i = 0; i < 12; i++)
        host[i] = (float)i * 0.37f - 2.0f;
    assert_int_equal(be->upload(be, &a, host, 12), ZI_OK);
    assert_int_equal(be->download(be, back, &a, 12), ZI_OK);
    assert_memory_equal(host, back, sizeof host);
    assert_int_not_equal(be->upload(be, &a, host, 13), ZI_OK); /* too many */
    uint16_t bf[12];
    for (int i = 0; i < 12; i++)
        bf[i] = zi_f32_to_bf16(host[i]);
    assert_int_equal(be->upload_weight(be, &w, bf, ZI_BF16, 2, shape), ZI_OK);
    assert_int_equal(w.dtype, ZI_F32);
    for (int i = 0; i < 12; i++)
        assert_true(F(&w)[i] == zi_bf16_to_f32(bf[i]));
    uint8_t f8[12] = {0x38, 0xb8, 0x40, 0x01};
    assert_int_equal(be->upload_weight(be, &w8, f8, ZI_F8_E4M3, 2, shape), ZI_OK);
    assert_true(F(&w8)[0] == 1.0f && F(&w8)[1] == -1.0f && F(&w8)[2] == 2.0f);
    be->mem_stats(be, &ms);
    assert_int_equal(ms.allocated, 3 * 48);
    assert_int_equal(ms.weights, 2 * 48);
    be->free(be, &w);
    be->free(be, &w8);
    assert_null(w.data);
    be->mem_stats(be, &ms);
    assert_int_equal(ms.allocated, 48);
    assert_int_equal(ms.weights, 0);
    assert_int_equal(ms.peak, 3 * 48);
    be->free(be, &a);
    int32_t bad_dt = 0;
    assert_int_not_equal(be->upload_weight(be, &w, &bad_dt, ZI_I32, 1, shape), ZI_OK);
    zi_backend_destroy(be);
}

static void test_sticky_errors(void **state)
{
    (void)state;
    zi_backend *be = new_be();
    zi_tensor x = rand_t(be, 12, 1), w = rand_t(be, 12, 1), y = zeros_t(be, 5), z = zeros_t(be, 12);
    be->linear(be, &y, &x, &w, NULL, 3, 4, 3); /* out needs 9 elements, has 5 */
    assert_int_equal(be->err, ZI_EINVAL);
    assert_non_null(strstr(be->errmsg, "linear"));
    char first[512];
    memcpy(first, be->errmsg, sizeof first);
    /* later ops are no-ops and keep the first message */
    be->add(be, &z, &x, &w, 12);
    for (int i = 0; i < 12; i++)
        assert_true(F(&z)[i] == 0.0f);
    be->silu(be, &z, NULL, 12);
    assert_string_equal(be->errmsg, first);
    assert_int_equal(zi_backend_check(be), ZI_EINVAL);
    assert_non_null(strstr(zi_errmsg(), "linear"));
    zi_tensor *all[] = {&x, &w, &y, &z};
    for (size_t i = 0; i < 4; i++)
        be->free(be, all[i]);
    /* a job's error is cleared for the next job... */
    zi_backend_clear_error(be);
    assert_int_equal(be->err, ZI_OK);
    assert_int_equal(zi_backend_check(be), ZI_OK);
    /* ...but a lost device replaces an earlier error and survives the clear */
    assert_int_equal(zi_backend_fail(be, ZI_ENOMEM, "out of device memory"), ZI_ENOMEM);
    assert_int_equal(zi_backend_fail(be, ZI_EDEVICE, "the GPU failed: X"), ZI_EDEVICE);
    assert_int_equal(zi_backend_fail(be, ZI_EINVAL, "later"), ZI_EDEVICE);
    assert_int_equal(zi_backend_fail(be, ZI_EDEVICE, "the GPU failed: Y"), ZI_EDEVICE);
    assert_string_equal(be->errmsg, "the GPU failed: X");
    zi_backend_clear_error(be);
    assert_int_equal(zi_backend_check(be), ZI_EDEVICE);
    assert_non_null(strstr(zi_errmsg(), "the GPU failed: X"));
    zi_backend_destroy(be);

    /* each kind of bad argument on a fresh backend */
    for (int kind = 0; kind < 9; kind++) {
        be = new_be();
        zi_tensor a = rand_t(be, 12, 1), b = rand_t(be, 12, 1);
        zi_tensor none = {0};
        uint8_t rgb[12];
        switch (kind) {
        case 0: /* n too large */
            be->add(be, &a, &a, &b, 13);
            break;
        case 1: /* weight without data */
            be->rmsnorm(be, &a, &b, &none, 3, 4, 1e-6f);
            break;
        case 2: /* zero rows */
            be->layernorm(be, &a, &b, 0, 4, 1e-6f);
            break;
        case 3: /* row vector shorter than D */
            be->mul_row(be, &a, &b, &b, 1, 13);
            break;
        case 4: /* out needs 48 */
            be->upsample2x(be, &a, &b, 1, 3, 4);
            break;
        case 5: /* out aliases in */
            be->linear(be, &a, &a, &b, NULL, 3, 4, 3);
            break;
        case 6: /* NULL source */
            be->copy(be, &a, NULL, 1);
            break;
        case 7: /* image needs 3*2*3 = 18 elements, has 12 */
            assert_int_not_equal(be->to_rgb8(be, rgb, &a, 2, 3), ZI_OK);
            break;
        case 8: /* negative dims */
            be->conv2d(be, &a, &b, &b, NULL, 1, 1, -2, 2, 1);
            break;
        }
        if (be->err == ZI_OK)
            fail_msg("case %d did not set the sticky error", kind);
        be->free(be, &a);
        be->free(be, &b);
        zi_backend_destroy(be);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_rmsnorm_layernorm),
        cmocka_unit_test(test_groupnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_transpose_tiles),
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_upsample),
        cmocka_unit_test(test_to_rgb8),
        cmocka_unit_test(test_memory_and_upload),
        cmocka_unit_test(test_sticky_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
