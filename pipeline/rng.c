/*
 * rng.c - torch-compatible randn for the CUDA (Philox) and CPU (mt19937) generators.
 *
 * Written from the descriptions in rng.h and tests/golden/data/README.md; the numbers
 * are checked against tests/golden/data/vectors/rng*.safetensors (tests/golden/test_rng.c).
 * Host-only and single-threaded: the latents are at most a few million numbers.
 */
#include "rng.h"
#include "zi_err.h"

#include <math.h>
#include <stdlib.h>

/* ---- Philox4x32-10 (Salmon et al. 2011, as in curand) ---- */

#define ZI_PHILOX_M0 0xD2511F53u
#define ZI_PHILOX_M1 0xCD9E8D57u
#define ZI_PHILOX_W0 0x9E3779B9u
#define ZI_PHILOX_W1 0xBB67AE85u

void zi_philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)ZI_PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)ZI_PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        /* The key is bumped between rounds; after the last one it is unused. */
        k0 += ZI_PHILOX_W0;
        k1 += ZI_PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

uint32_t zi_rng_cuda_grid(size_t n)
{
    size_t grid = (n + ZI_RNG_CUDA_BLOCK - 1) / ZI_RNG_CUDA_BLOCK;
    if (grid > ZI_RNG_CUDA_MAX_GRID)
        grid = ZI_RNG_CUDA_MAX_GRID;
    if (grid == 0)
        grid = 1;
    return (uint32_t)grid;
}

/* curand's Box-Muller on two 32-bit words: (s sin v, s cos v). The constants are the
 * float values curand uses; the products are fused as nvcc contracts them. */
static void zi_box_muller_curand(uint32_t x, uint32_t y, float *a, float *b)
{
    const float two_pow32_inv = 2.3283064e-10f;                  /* 2^-32 */
    const float two_pow32_inv_2pi = 2.3283064e-10f * 6.2831855f; /* 2pi * 2^-32 */
    float u = fmaf((float)x, two_pow32_inv, two_pow32_inv / 2.0f);
    float v = fmaf((float)y, two_pow32_inv_2pi, two_pow32_inv_2pi / 2.0f);
    float s = sqrtf(-2.0f * logf(u));
    *a = s * sinf(v);
    *b = s * cosf(v);
}

void zi_randn_cuda(float *out, size_t n, uint64_t seed)
{
    const uint64_t stride = (uint64_t)ZI_RNG_CUDA_BLOCK * zi_rng_cuda_grid(n);
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    /* Threads whose idx >= n draw nothing that lands in out. */
    uint64_t threads = stride < n ? stride : n;
    for (uint64_t idx = 0; idx < threads; idx++) {
        uint32_t ctr[4] = {0, 0, (uint32_t)idx, (uint32_t)(idx >> 32)};
        for (uint64_t base = idx; base < n; base += 4 * stride) {
            uint32_t x[4];
            float g[4];
            zi_philox4x32_10(x, ctr, key);
            zi_box_muller_curand(x[0], x[1], &g[0], &g[1]);
            zi_box_muller_curand(x[2], x[3], &g[2], &g[3]);
            for (int k = 0; k < 4; k++) {
                uint64_t li = base + (uint64_t)k * stride;
                if (li < n)
                    out[li] = g[k];
            }
            /* curand advances the 128-bit counter by one per draw (carry into word 1). */
            if (++ctr[0] == 0)
                ctr[1]++;
        }
    }
}

/* ---- mt19937 (Matsumoto & Nishimura), seeded as torch's CPU generator ---- */

#define ZI_MT_N 624
#define ZI_MT_M 397

void zi_mt19937_seed(zi_mt19937 *mt, uint32_t seed)
{
    mt->state[0] = seed;
    for (uint32_t j = 1; j < ZI_MT_N; j++) {
        uint32_t prev = mt->state[j - 1];
        mt->state[j] = 1812433253u * (prev ^ (prev >> 30)) + j;
    }
    mt->index = ZI_MT_N; /* regenerate on the first draw */
}

static void zi_mt19937_twist(zi_mt19937 *mt)
{
    for (int i = 0; i < ZI_MT_N; i++) {
        uint32_t y = (mt->state[i] & 0x80000000u) | (mt->state[(i + 1) % ZI_MT_N] & 0x7fffffffu);
        uint32_t v = mt->state[(i + ZI_MT_M) % ZI_MT_N] ^ (y >> 1);
        if (y & 1u)
            v ^= 0x9908b0dfu;
        mt->state[i] = v;
    }
    mt->index = 0;
}

uint32_t zi_mt19937_next(zi_mt19937 *mt)
{
    if (mt->index >= ZI_MT_N)
        zi_mt19937_twist(mt);
    uint32_t y = mt->state[mt->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* torch uniform_real_distribution<float>(0, 1): the low 24 bits of one draw. */
static float zi_mt_uniform_f32(zi_mt19937 *mt)
{
    return (float)(zi_mt19937_next(mt) & 0xFFFFFFu) * (1.0f / 16777216.0f);
}

/* torch uniform_real_distribution<double>(0, 1): the low 53 bits of two draws (hi, lo). */
static double zi_mt_uniform_f64(zi_mt19937 *mt)
{
    uint64_t hi = zi_mt19937_next(mt);
    uint64_t lo = zi_mt19937_next(mt);
    uint64_t r = (hi << 32) | lo;
    return (double)(r & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* Box-Muller over 16 uniforms in place: pairs (d[j], d[j + 8]) for j < 8. */
static void zi_normal_fill_16(float *d)
{
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j]; /* (0, 1] for the log */
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = (float)(2.0 * M_PI * (double)u2);
        d[j] = radius * cosf(theta);
        d[j + 8] = radius * sinf(theta);
    }
}

int zi_randn_cpu(float *out, size_t n, uint64_t seed)
{
    zi_mt19937 mt;
    /* torch's mt19937 keeps the 64-bit seed but initialises from its low 32 bits. */
    zi_mt19937_seed(&mt, (uint32_t)seed);
    if (n >= 16) {
        /* Vectorised path: all uniforms first, then Box-Muller on blocks of 16; a ragged
         * tail redraws the last 16 numbers and transforms them again. */
        for (size_t i = 0; i < n; i++)
            out[i] = zi_mt_uniform_f32(&mt);
        for (size_t i = 0; i + 16 <= n; i += 16)
            zi_normal_fill_16(out + i);
        if (n % 16 != 0) {
            float *tail = out + n - 16;
            for (int i = 0; i < 16; i++)
                tail[i] = zi_mt_uniform_f32(&mt);
            zi_normal_fill_16(tail);
        }
        return ZI_OK;
    }
    /* Scalar path: normal_distribution<double>, one pair per two outputs, the sine
     * cached for the next element. */
    for (size_t i = 0; i < n; i += 2) {
        double u1 = zi_mt_uniform_f64(&mt);
        double u2 = zi_mt_uniform_f64(&mt);
        double r = sqrt(-2.0 * log1p(-u2));
        double theta = 2.0 * M_PI * u1;
        out[i] = (float)(r * cos(theta));
        if (i + 1 < n)
            out[i + 1] = (float)(r * sin(theta));
    }
    return ZI_OK;
}

int zi_randn(float *out, size_t n, uint64_t seed, zi_rng_kind kind)
{
    switch (kind) {
    case ZI_RNG_CUDA:
        zi_randn_cuda(out, n, seed);
        return ZI_OK;
    case ZI_RNG_CPU:
        return zi_randn_cpu(out, n, seed);
    }
    return zi_errorf(ZI_EINVAL, "unknown random generator kind %d", (int)kind);
}
