/*
 * rng.h - torch-compatible initial noise: the same seed gives the same latents as
 * `torch.randn(shape, generator=torch.Generator(dev).manual_seed(seed), dtype=float32)`.
 *
 * Two generators, chosen with zi_rng_kind (pipeline.h):
 *  - ZI_RNG_CUDA: torch's CUDA generator. Philox4x32-10, one curand state per thread
 *    (curand_init(seed, subsequence = thread, offset = 0)), Box-Muller, with the launch
 *    geometry torch uses on a 132-SM H100/H200 (see zi_rng_cuda_grid). Only the element
 *    count matters, not the shape. This file computes it on the host with accurate
 *    libm sin/cos/log; the GPU's fast intrinsics differ by ~2e-6 (the golden README's
 *    tolerance for seeds is 1e-5 absolute).
 *  - ZI_RNG_CPU: torch's CPU generator. mt19937 seeded with the low 32 bits of the seed
 *    (as torch's CPUGeneratorImpl), float32 normal_ via torch's "normal_fill" (chunks of
 *    16, Box-Muller over uniforms at i and i + 8) when n >= 16, else the scalar path.
 *
 * Reference: PyTorch 2.x aten/src/ATen/native/cuda/DistributionTemplates.h
 * (distribution_nullary_kernel, curand_uniform4 / Box-Muller in normal_and_transform),
 * aten/src/ATen/native/cpu/DistributionTemplates.h (normal_fill, normal_kernel),
 * aten/src/ATen/core/MT19937RNGEngine.h, checked against tests/golden/data/vectors/rng*.
 *
 * Thread mapping of the CUDA generator (what a device twin must reproduce):
 *   block = ZI_RNG_CUDA_BLOCK threads, grid = zi_rng_cuda_grid(n), stride = block * grid.
 *   Thread idx (0 <= idx < stride) has key (seed lo, seed hi) and counter
 *   (c, 0, idx lo, idx hi) with c = 0, 1, 2, ...: for base = idx, idx + 4*stride, ... while
 *   base < n, draw block c -> x[4]; normals
 *     n0 = r01 * sin(v01), n1 = r01 * cos(v01), n2 = r23 * sin(v23), n3 = r23 * cos(v23),
 *     r01 = sqrt(-2 ln(x0 * 2^-32 + 2^-33)), v01 = x1 * 2pi * 2^-32 + pi * 2^-32 (same for 2,3)
 *   and normal k goes to out[base + k * stride] when that index is < n.
 */
#ifndef ZI_RNG_H
#define ZI_RNG_H

#include "pipeline.h" /* zi_rng_kind */

#include <stddef.h>
#include <stdint.h>

#define ZI_RNG_CUDA_BLOCK 256u
/* SM count x (max threads per SM / block) of an H100/H200: the canonical grid cap. */
#define ZI_RNG_CUDA_MAX_GRID (132u * 8u)

/* One Philox4x32-10 block: out = philox(counter ctr[4], key[2]). */
void zi_philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);

/* The number of thread blocks torch launches for n numbers (ceil(n/256), capped). */
uint32_t zi_rng_cuda_grid(size_t n);

/* out[n] = torch CUDA-generator randn (float32) for `seed`. */
void zi_randn_cuda(float *out, size_t n, uint64_t seed);

/* out[n] = torch CPU-generator randn (float32) for `seed`. Returns ZI_OK. */
int zi_randn_cpu(float *out, size_t n, uint64_t seed);

/* Dispatch on `kind`; ZI_EINVAL for an unknown kind. */
int zi_randn(float *out, size_t n, uint64_t seed, zi_rng_kind kind);

/* mt19937 as torch seeds it (for tests and for random weights). */
typedef struct zi_mt19937 {
    uint32_t state[624];
    int index;
} zi_mt19937;

void zi_mt19937_seed(zi_mt19937 *mt, uint32_t seed);
uint32_t zi_mt19937_next(zi_mt19937 *mt);

#endif
