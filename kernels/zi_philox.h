/*
 * zi_philox.h - Philox4x32-10 + curand Box-Muller, compiled for both host and device.
 *
 * The CUDA randn kernel (zi_cuda_ops.cu) calls these functions, and the unit test
 * tests/unit/test_philox_twin.c runs the very same code on the CPU against the host
 * generator (pipeline/rng.c) and the golden torch numbers, so the thread/counter layout
 * of the device twin is checked without a GPU. On the device, Box-Muller uses what curand
 * uses (what torch gets): accurate logf and the fast __sincosf; on the host, libm.
 * Layout (pipeline/rng.h): thread idx, draw d: counter (d, 0, idx lo, idx hi), key (seed
 * lo, seed hi); normal k of draw d goes to element idx + 4*stride*d + k*stride.
 */
#ifndef ZI_PHILOX_H
#define ZI_PHILOX_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define ZI_PHILOX_FN __host__ __device__ static inline
#else
#define ZI_PHILOX_FN static inline
#endif

/* c = Philox4x32-10(c, key (k0, k1)). */
ZI_PHILOX_FN void zi_philox_block(uint32_t c[4], uint32_t k0, uint32_t k1)
{
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = (uint32_t)p1;
        c[2] = n2;
        c[3] = (uint32_t)p0;
        k0 += 0x9E3779B9u; /* bumped between rounds; unused after the last */
        k1 += 0xBB67AE85u;
    }
}

/* curand's _curand_box_muller: (s sin v, s cos v). */
ZI_PHILOX_FN void zi_philox_box_muller(uint32_t x, uint32_t y, float *a, float *b)
{
    const float inv = 2.3283064e-10f;                  /* 2^-32 */
    const float inv_2pi = 2.3283064e-10f * 6.2831855f; /* 2pi * 2^-32 */
    float u = fmaf((float)x, inv, inv / 2.0f);
    float v = fmaf((float)y, inv_2pi, inv_2pi / 2.0f);
#ifdef __CUDA_ARCH__
    /* accurate logf as curand (curand_normal.h): __logf's absolute error (2^-21.4) would
     * be amplified near u = 1, where s = sqrt(-2 ln u) is small (5e-5 off at u = 0.9999,
     * NaN possible just below 1); only the sine/cosine are the fast intrinsic */
    float s = sqrtf(-2.0f * logf(u));
    float sn, cs;
    __sincosf(v, &sn, &cs);
#else
    float s = sqrtf(-2.0f * logf(u));
    float sn = sinf(v), cs = cosf(v);
#endif
    *a = sn * s;
    *b = cs * s;
}

/* The four normals of thread `idx`, draw `draw`, for `seed`. */
ZI_PHILOX_FN void zi_philox_normal4(uint64_t seed, uint64_t idx, uint32_t draw, float g[4])
{
    uint32_t c[4] = {draw, 0u, (uint32_t)idx, (uint32_t)(idx >> 32)};
    zi_philox_block(c, (uint32_t)seed, (uint32_t)(seed >> 32));
    zi_philox_box_muller(c[0], c[1], &g[0], &g[1]);
    zi_philox_box_muller(c[2], c[3], &g[2], &g[3]);
}

/* Everything thread `idx` writes into out[n] (stride = threads of the canonical launch). */
ZI_PHILOX_FN void zi_philox_thread(float *out, size_t n, uint64_t seed, size_t idx, size_t stride)
{
    uint32_t draw = 0;
    for (size_t base = idx; base < n; base += 4 * stride, draw++) {
        float g[4];
        zi_philox_normal4(seed, idx, draw, g);
        for (int k = 0; k < 4; k++) {
            size_t li = base + (size_t)k * stride;
            if (li < n)
                out[li] = g[k];
        }
    }
}

#endif
