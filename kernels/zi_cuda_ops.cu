/*
 * zi_cuda_ops.cu - the memory-bound kernels of the CUDA backend: dtype conversion,
 * element-wise maps, adaLN helpers, RMSNorm / LayerNorm / GroupNorm(+SiLU), RoPE (both
 * layouts), embedding, transpose, nearest upsample, im2col, to_rgb8, the Philox randn of
 * torch's CUDA generator and the row softmax of the GEMM attention path.
 *
 * Numerics: values are loaded as fp32 from F32 or BF16 storage, every statistic and every
 * intermediate is fp32, and the result is rounded once (round to nearest even) to the
 * output dtype. The CPU backend (pipeline/backend_cpu.c) is the twin of each kernel;
 * tests/gpu/test_kernels.c compares them at the model's shapes.
 *
 * Limits: grid-stride loops with 64-bit indices, so any element count works. The fast
 * path (8 elements per thread, 16-byte accesses) is taken when every pointer is 16-byte
 * aligned and the row length / count is a multiple of 8; otherwise a scalar path runs.
 */
#include "zi_cuda_device.h"
#include "zi_cuda_launch.h"
#include "zi_philox.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "backend.h" /* zi_rope_layout */
#include "tensor.h"  /* zi_dtype */
}

namespace
{

constexpr int kThreads = 256;
/* Grid-stride launches never need more blocks than this to fill any current GPU. */
constexpr size_t kMaxBlocks = 65535;

unsigned grid_for(size_t work, int per_thread)
{
    size_t per_block = (size_t)kThreads * per_thread;
    size_t b = (work + per_block - 1) / per_block;
    if (b < 1)
        b = 1;
    return (unsigned)(b < kMaxBlocks ? b : kMaxBlocks);
}

bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* ---- loads and stores with dtype dispatch ---- */

__device__ __forceinline__ float ld(const void *p, int dt, size_t i)
{
    if (dt == ZI_BF16)
        return __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(p)[i]);
    return reinterpret_cast<const float *>(p)[i];
}

__device__ __forceinline__ void st(void *p, int dt, size_t i, float v)
{
    if (dt == ZI_BF16)
        reinterpret_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v);
    else
        reinterpret_cast<float *>(p)[i] = v;
}

/* 8 consecutive elements starting at i (a multiple of 8), 16-byte aligned storage. */
__device__ __forceinline__ void ld8(const void *p, int dt, size_t i, float v[8])
{
    if (dt == ZI_BF16) {
        /* the words of the 16-byte load, two bf16 each (the lower element in the low half);
         * unpacked with shifts, not by viewing the uint4 as bf16x2 (type punning of a
         * local, which a host C++ compiler may miscompile) */
        uint4 u = *reinterpret_cast<const uint4 *>(reinterpret_cast<const __nv_bfloat16 *>(p) + i);
        const uint32_t wd[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[2 * k] = __uint_as_float(wd[k] << 16);
            v[2 * k + 1] = __uint_as_float(wd[k] & 0xffff0000u);
        }
    } else {
        const float4 *q = reinterpret_cast<const float4 *>(reinterpret_cast<const float *>(p) + i);
        float4 a = q[0], b = q[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
}

__device__ __forceinline__ void st8(void *p, int dt, size_t i, const float v[8])
{
    if (dt == ZI_BF16) {
        uint32_t wd[4];
#pragma unroll
        for (int k = 0; k < 4; k++)
            wd[k] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k])) |
                    (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k + 1])) << 16;
        *reinterpret_cast<uint4 *>(reinterpret_cast<__nv_bfloat16 *>(p) + i) =
            make_uint4(wd[0], wd[1], wd[2], wd[3]);
    } else {
        float4 *q = reinterpret_cast<float4 *>(reinterpret_cast<float *>(p) + i);
        q[0] = make_float4(v[0], v[1], v[2], v[3]);
        q[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
}

__device__ __forceinline__ float silu_f(float x)
{
    return x / (1.0f + expf(-x));
}

__device__ __forceinline__ float apply_op(int op, float a, float b, float alpha, float beta)
{
    switch (op) {
    case ZI_CU_ADD:
        return a + b;
    case ZI_CU_SILU:
        return silu_f(a);
    case ZI_CU_TANH:
        return tanhf(a);
    case ZI_CU_SILU_MUL:
        return silu_f(a) * b;
    case ZI_CU_AFFINE:
        return a * alpha + beta;
    default: /* ZI_CU_COPY */
        return a;
    }
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim a multiple of 32); every thread gets the result. `sh` is
 * 32 floats of shared memory; safe to call repeatedly. */
__device__ float block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* an earlier call may still read sh[0] */
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

__device__ float block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : -INFINITY;
        v = warp_max(v);
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

/* ---- conversion ---- */

__device__ __forceinline__ float f8e4m3_to_f32(uint8_t v)
{
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xfu, man = v & 0x7u;
    float r;
    if (exp == 0xfu && man == 0x7u)
        r = __int_as_float(0x7fc00000);
    else if (exp == 0)
        r = (float)man * (1.0f / 512.0f); /* subnormal: man/8 * 2^-6 */
    else
        r = __uint_as_float(((exp + 120u) << 23) | (man << 20)); /* 2^(exp-7) * (1 + man/8) */
    return sign ? -r : r;
}

__global__ void convert_kernel(void *dst, int ddt, const void *src, int sdt, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v;
        switch (sdt) {
        case ZI_F16:
            v = __half2float(reinterpret_cast<const __half *>(src)[i]);
            break;
        case ZI_F8_E4M3:
            v = f8e4m3_to_f32(reinterpret_cast<const uint8_t *>(src)[i]);
            break;
        default:
            v = ld(src, sdt, i);
        }
        st(dst, ddt, i, v);
    }
}

/* ---- element-wise ---- */

__global__ void map_kernel(int op, void *out, int odt, const void *a, int adt, const void *b,
                           int bdt, float alpha, float beta, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float x = ld(a, adt, i), y = b ? ld(b, bdt, i) : 0.0f;
        st(out, odt, i, apply_op(op, x, y, alpha, beta));
    }
}

__global__ void map8_kernel(int op, void *out, int odt, const void *a, int adt, const void *b,
                            int bdt, float alpha, float beta, size_t n8)
{
    for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < n8;
         j += (size_t)gridDim.x * blockDim.x) {
        float x[8], y[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        ld8(a, adt, j * 8, x);
        if (b)
            ld8(b, bdt, j * 8, y);
#pragma unroll
        for (int k = 0; k < 8; k++)
            x[k] = apply_op(op, x[k], y[k], alpha, beta);
        st8(out, odt, j * 8, x);
    }
}

/* mode 0: out = in * v[d]; mode 1: out = in + g[d] * v[r, d] (g NULL: + v);
 * mode 2: out = in + v[d] (bias). `in` and `out` may alias. */
__global__ void rowvec_kernel(int mode, void *out, int odt, const void *in, int idt, const void *g,
                              int gdt, const void *v, int vdt, size_t n, int D)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t d = i % (size_t)D;
        float x = ld(in, idt, i), r;
        if (mode == 0)
            r = x * ld(v, vdt, d);
        else if (mode == 1)
            r = x + (g ? ld(g, gdt, d) : 1.0f) * ld(v, vdt, i);
        else
            r = x + ld(v, vdt, d);
        st(out, odt, i, r);
    }
}

__global__ void rowvec8_kernel(int mode, void *out, int odt, const void *in, int idt, const void *g,
                               int gdt, const void *v, int vdt, size_t n8, int D)
{
    for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < n8;
         j += (size_t)gridDim.x * blockDim.x) {
        size_t i = j * 8, d = i % (size_t)D; /* D % 8 == 0: the 8 stay in one row */
        float x[8], s[8], gg[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        ld8(in, idt, i, x);
        if (mode == 1) {
            ld8(v, vdt, i, s);
            if (g)
                ld8(g, gdt, d, gg);
#pragma unroll
            for (int k = 0; k < 8; k++)
                x[k] += (g ? gg[k] : 1.0f) * s[k];
        } else {
            ld8(v, vdt, d, s);
#pragma unroll
            for (int k = 0; k < 8; k++)
                x[k] = mode == 0 ? x[k] * s[k] : x[k] + s[k];
        }
        st8(out, odt, i, x);
    }
}

__global__ void fill_channels_kernel(void *out, int odt, const void *b, int bdt, size_t HW,
                                     size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        st(out, odt, i, ld(b, bdt, i / HW));
}

/* ---- normalisation ---- */

/* One warp per row (D <= 1024): RMSNorm (kind 0) or LayerNorm (kind 1). */
__global__ void norm_warp_kernel(int kind, void *out, int odt, const void *in, int idt,
                                 const void *w, int wdt, int R, int D, float eps)
{
    int lane = threadIdx.x & 31;
    size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (size_t)R)
        return;
    size_t base = row * (size_t)D;
    float mean = 0.0f, acc = 0.0f;
    if (kind == 1) {
        for (int d = lane; d < D; d += 32)
            acc += ld(in, idt, base + d);
        mean = warp_sum(acc) / (float)D;
        acc = 0.0f;
    }
    for (int d = lane; d < D; d += 32) {
        float x = ld(in, idt, base + d) - mean;
        acc += x * x;
    }
    float rs = rsqrtf(warp_sum(acc) / (float)D + eps);
    for (int d = lane; d < D; d += 32) {
        float y = (ld(in, idt, base + d) - mean) * rs;
        if (w)
            y *= ld(w, wdt, d);
        st(out, odt, base + d, y);
    }
}

/* One block per row (D > 1024). */
__global__ void norm_block_kernel(int kind, void *out, int odt, const void *in, int idt,
                                  const void *w, int wdt, int D, float eps)
{
    __shared__ float sh[32];
    size_t base = (size_t)blockIdx.x * D;
    float mean = 0.0f, acc = 0.0f;
    if (kind == 1) {
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            acc += ld(in, idt, base + d);
        mean = block_sum(acc, sh) / (float)D;
        acc = 0.0f;
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float x = ld(in, idt, base + d) - mean;
        acc += x * x;
    }
    float rs = rsqrtf(block_sum(acc, sh) / (float)D + eps);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float y = (ld(in, idt, base + d) - mean) * rs;
        if (w)
            y *= ld(w, wdt, d);
        st(out, odt, base + d, y);
    }
}

cudaError_t norm_launch(int kind, void *out, int odt, const void *in, int idt, const void *w,
                        int wdt, int R, int D, float eps, cudaStream_t s)
{
    if (R <= 0 || D <= 0)
        return cudaGetLastError();
    if (D <= 1024) {
        int rows_per_block = kThreads / 32;
        unsigned blocks = (unsigned)((R + rows_per_block - 1) / rows_per_block);
        ZI_LAUNCH(norm_warp_kernel, blocks, kThreads, 0, s, kind, out, odt, in, idt, w, wdt, R, D,
                  eps);
    } else {
        ZI_LAUNCH(norm_block_kernel, (unsigned)R, kThreads, 0, s, kind, out, odt, in, idt, w, wdt,
                  D, eps);
    }
    return cudaGetLastError();
}

/*
 * GroupNorm in two kernels. Statistics: grid (nsplit, G); block (s, g) sums x - shift and
 * (x - shift)^2 over slice s of group g, where shift is the group's first element (the
 * same for every block of the group, so partial sums simply add; the shift keeps the
 * fp32 sums well conditioned when the mean is large). Apply: grid (chunks, C); each block
 * combines its group's partials in double and normalises a chunk of one channel.
 */
constexpr size_t kGnMaxSplit = 512;
constexpr size_t kGnMinSlice = 8192;
constexpr int kGnApplyPerThread = 8;

size_t gn_slice(size_t gn)
{
    size_t slice = (gn + kGnMaxSplit - 1) / kGnMaxSplit;
    return slice < kGnMinSlice ? kGnMinSlice : slice;
}

__global__ void gn_stats_kernel(const void *in, int idt, size_t gn, size_t slice, int nsplit,
                                float *part, float *shift)
{
    __shared__ float sh[32];
    int g = blockIdx.y, sp = blockIdx.x;
    size_t base = (size_t)g * gn, lo = (size_t)sp * slice;
    size_t hi = lo + slice < gn ? lo + slice : gn;
    float k = ld(in, idt, base);
    float sum = 0.0f, sq = 0.0f;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float x = ld(in, idt, base + i) - k;
        sum += x;
        sq += x * x;
    }
    sum = block_sum(sum, sh);
    sq = block_sum(sq, sh);
    if (threadIdx.x == 0) {
        float *p = part + ((size_t)g * nsplit + sp) * 2;
        p[0] = sum;
        p[1] = sq;
        if (sp == 0)
            shift[g] = k;
    }
}

__global__ void gn_apply_kernel(void *out, int odt, const void *in, int idt, const void *gamma,
                                int gdt, const void *beta, int bdt, size_t HW, int cpg, size_t gn,
                                int nsplit, const float *part, const float *shift, float eps,
                                int silu)
{
    __shared__ float stat[2];
    int c = blockIdx.y, g = c / cpg;
    if (threadIdx.x < 32) {
        double sum = 0.0, sq = 0.0;
        for (int sp = threadIdx.x; sp < nsplit; sp += 32) {
            sum += part[((size_t)g * nsplit + sp) * 2];
            sq += part[((size_t)g * nsplit + sp) * 2 + 1];
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            sum += __shfl_xor_sync(0xffffffffu, sum, o);
            sq += __shfl_xor_sync(0xffffffffu, sq, o);
        }
        if (threadIdx.x == 0) {
            double n = (double)gn, m = sum / n;
            double var = sq / n - m * m;
            stat[0] = (float)(shift[g] + m);
            stat[1] = rsqrtf((float)(var > 0.0 ? var : 0.0) + eps);
        }
    }
    __syncthreads();
    float mean = stat[0], rs = stat[1];
    float a = gamma ? ld(gamma, gdt, c) : 1.0f, b = beta ? ld(beta, bdt, c) : 0.0f;
    size_t base = (size_t)c * HW;
    size_t lo = (size_t)blockIdx.x * blockDim.x * kGnApplyPerThread;
    size_t hi = lo + (size_t)blockDim.x * kGnApplyPerThread;
    if (hi > HW)
        hi = HW;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float v = (ld(in, idt, base + i) - mean) * rs * a + b;
        st(out, odt, base + i, silu ? silu_f(v) : v);
    }
}

/* ---- position, gather, layout ---- */

__global__ void rope_kernel(void *x, int xdt, const float *cs, const float *sn, int H, int hd,
                            int neox, size_t npairs)
{
    int half = hd / 2;
    for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < npairs;
         p += (size_t)gridDim.x * blockDim.x) {
        int m = (int)(p % (size_t)half);
        size_t sh = p / (size_t)half; /* s * H + h */
        size_t spos = sh / (size_t)H;
        size_t base = sh * (size_t)hd;
        size_t i0 = base + (neox ? m : 2 * m), i1 = base + (neox ? m + half : 2 * m + 1);
        float c = cs[spos * half + m], s = sn[spos * half + m];
        float x0 = ld(x, xdt, i0), x1 = ld(x, xdt, i1);
        st(x, xdt, i0, x0 * c - x1 * s);
        st(x, xdt, i1, x1 * c + x0 * s);
    }
}

__global__ void embedding_kernel(void *out, int odt, const void *table, int tdt, const int32_t *ids,
                                 int D)
{
    size_t r = blockIdx.x;
    size_t src = (size_t)ids[r] * D, dst = r * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        st(out, odt, dst + d, ld(table, tdt, src + d));
}

__global__ void transpose_kernel(void *out, int odt, const void *in, int idt, int R, int C,
                                 size_t tiles_c, size_t ntiles)
{
    __shared__ float tile[32][33];
    for (size_t t = blockIdx.x; t < ntiles; t += gridDim.x) {
        size_t r0 = (t / tiles_c) * 32, c0 = (t % tiles_c) * 32;
        for (int j = threadIdx.y; j < 32; j += blockDim.y) {
            size_t r = r0 + j, c = c0 + threadIdx.x;
            if (r < (size_t)R && c < (size_t)C)
                tile[j][threadIdx.x] = ld(in, idt, r * C + c);
        }
        __syncthreads();
        for (int j = threadIdx.y; j < 32; j += blockDim.y) {
            size_t c = c0 + j, r = r0 + threadIdx.x;
            if (r < (size_t)R && c < (size_t)C)
                st(out, odt, c * R + r, tile[threadIdx.x][j]);
        }
        __syncthreads();
    }
}

__global__ void upsample2x_kernel(void *out, int odt, const void *in, int idt, int h, int w,
                                  size_t n)
{
    size_t ow = (size_t)w * 2, oh = (size_t)h * 2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t x = i % ow, y = (i / ow) % oh, c = i / (ow * oh);
        st(out, odt, i, ld(in, idt, (c * h + y / 2) * w + x / 2));
    }
}

__global__ void im2col_kernel(__nv_bfloat16 *col, const void *in, int idt, int h, int w, int k,
                              size_t p0, size_t np, size_t n)
{
    int pad = k / 2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t j = i % np, kr = i / np;
        int kx = (int)(kr % k), ky = (int)((kr / k) % k);
        size_t ci = kr / ((size_t)k * k);
        size_t p = p0 + j;
        long y = (long)(p / w) + ky - pad, x = (long)(p % w) + kx - pad;
        float v = 0.0f;
        if (y >= 0 && y < h && x >= 0 && x < w)
            v = ld(in, idt, (ci * h + (size_t)y) * w + (size_t)x);
        col[i] = __float2bfloat16_rn(v);
    }
}

__global__ void to_rgb8_kernel(uint8_t *rgb, const void *in, int idt, size_t hw)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < hw;
         i += (size_t)gridDim.x * blockDim.x) {
#pragma unroll
        for (int c = 0; c < 3; c++) {
            float v = ld(in, idt, (size_t)c * hw + i) / 2.0f + 0.5f;
            v = v < 0.0f ? 0.0f : v;
            v = v > 1.0f ? 1.0f : v;
            if (!(v >= 0.0f)) /* NaN */
                v = 0.0f;
            rgb[i * 3 + c] = (uint8_t)__float2int_rn(v * 255.0f); /* ties to even */
        }
    }
}

/* ---- Philox4x32-10 normal, as torch's CUDA generator (zi_philox.h, pipeline/rng.h) ---- */

__global__ void randn_kernel(float *out, size_t n, uint64_t seed, size_t stride)
{
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx < stride && idx < n)
        zi_philox_thread(out, n, seed, idx, stride);
}

/* ---- attention, GEMM path: one block per score row ---- */

__global__ void softmax_rows_kernel(__nv_bfloat16 *p, const float *sc, int nk, int causal, int vis0)
{
    __shared__ float sh[32];
    size_t r = blockIdx.x, base = r * (size_t)nk;
    int vis = causal ? vis0 + (int)r + 1 : nk;
    vis = vis < nk ? vis : nk;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vis; j += blockDim.x)
        mx = fmaxf(mx, sc[base + j]);
    mx = block_max(mx, sh);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < vis; j += blockDim.x)
        sum += expf(sc[base + j] - mx);
    sum = block_sum(sum, sh);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = threadIdx.x; j < nk; j += blockDim.x)
        p[base + j] = __float2bfloat16_rn(j < vis ? expf(sc[base + j] - mx) * inv : 0.0f);
}

/* Writes through an address no allocation covers (the null page): on a GPU a genuine
 * illegal address, which loses the context as a real fault does; on the emulator its
 * emulated form. For fault-injection tests only (zi_cuda_inject_fault). */
__global__ void fault_kernel(unsigned long long addr)
{
#ifdef ZI_CUDA_EMU
    (void)addr;
    zi_emu_context_lost(cudaErrorIllegalAddress, "fault_kernel: a write to an illegal address");
#else
    *(volatile int *)(uintptr_t)addr = 1;
#endif
}

} /* namespace */

/* ---- launchers ---- */

extern "C" cudaError_t zi_cu_fault(cudaStream_t s)
{
    ZI_LAUNCH(fault_kernel, 1, 1, 0, s, 16ull);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_convert(void *dst, int dst_dt, const void *src, int src_dt, size_t n,
                                     cudaStream_t s)
{
    if (n == 0)
        return cudaGetLastError();
    ZI_LAUNCH(convert_kernel, grid_for(n, 4), kThreads, 0, s, dst, dst_dt, src, src_dt, n);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_map(int op, void *out, int odt, const void *a, int adt, const void *b,
                                 int bdt, float alpha, float beta, size_t n, cudaStream_t s)
{
    if (n == 0)
        return cudaGetLastError();
    if (n % 8 == 0 && aligned16(out) && aligned16(a) && (!b || aligned16(b)))
        ZI_LAUNCH(map8_kernel, grid_for(n / 8, 1), kThreads, 0, s, op, out, odt, a, adt, b, bdt,
                  alpha, beta, n / 8);
    else
        ZI_LAUNCH(map_kernel, grid_for(n, 4), kThreads, 0, s, op, out, odt, a, adt, b, bdt, alpha,
                  beta, n);
    return cudaGetLastError();
}

static cudaError_t rowvec_launch(int mode, void *out, int odt, const void *in, int idt,
                                 const void *g, int gdt, const void *v, int vdt, int R, int D,
                                 cudaStream_t s)
{
    size_t n = (size_t)R * D;
    if (n == 0)
        return cudaGetLastError();
    if (D % 8 == 0 && aligned16(out) && aligned16(in) && aligned16(v) && (!g || aligned16(g)))
        ZI_LAUNCH(rowvec8_kernel, grid_for(n / 8, 1), kThreads, 0, s, mode, out, odt, in, idt, g,
                  gdt, v, vdt, n / 8, D);
    else
        ZI_LAUNCH(rowvec_kernel, grid_for(n, 4), kThreads, 0, s, mode, out, odt, in, idt, g, gdt, v,
                  vdt, n, D);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_mul_row(void *out, int odt, const void *in, int idt, const void *sv,
                                     int sdt, int R, int D, cudaStream_t s)
{
    return rowvec_launch(0, out, odt, in, idt, NULL, 0, sv, sdt, R, D, s);
}

extern "C" cudaError_t zi_cu_gated_add(void *x, int xdt, const void *g, int gdt, const void *y,
                                       int ydt, int R, int D, cudaStream_t s)
{
    return rowvec_launch(1, x, xdt, x, xdt, g, gdt, y, ydt, R, D, s);
}

extern "C" cudaError_t zi_cu_add_bias(void *out, int odt, const void *b, int bdt, int R, int D,
                                      cudaStream_t s)
{
    return rowvec_launch(2, out, odt, out, odt, NULL, 0, b, bdt, R, D, s);
}

extern "C" cudaError_t zi_cu_fill_channels(void *out, int odt, const void *b, int bdt, int C,
                                           size_t HW, cudaStream_t s)
{
    size_t n = (size_t)C * HW;
    if (n == 0)
        return cudaGetLastError();
    ZI_LAUNCH(fill_channels_kernel, grid_for(n, 4), kThreads, 0, s, out, odt, b, bdt, HW, n);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_rmsnorm(void *out, int odt, const void *in, int idt, const void *w,
                                     int wdt, int R, int D, float eps, cudaStream_t s)
{
    return norm_launch(0, out, odt, in, idt, w, wdt, R, D, eps, s);
}

extern "C" cudaError_t zi_cu_layernorm(void *out, int odt, const void *in, int idt, int R, int D,
                                       float eps, cudaStream_t s)
{
    return norm_launch(1, out, odt, in, idt, NULL, 0, R, D, eps, s);
}

extern "C" size_t zi_cu_groupnorm_ws(int C, size_t HW, int G)
{
    size_t gn = (size_t)(C / G) * HW;
    size_t nsplit = (gn + gn_slice(gn) - 1) / gn_slice(gn);
    return (size_t)G * nsplit * 2 + (size_t)G;
}

extern "C" cudaError_t zi_cu_groupnorm(void *out, int odt, const void *in, int idt,
                                       const void *gamma, int gdt, const void *beta, int bdt, int C,
                                       size_t HW, int G, float eps, int silu, float *ws,
                                       cudaStream_t s)
{
    if (C <= 0 || HW == 0 || G <= 0)
        return cudaGetLastError();
    int cpg = C / G;
    size_t gn = (size_t)cpg * HW, slice = gn_slice(gn);
    int nsplit = (int)((gn + slice - 1) / slice);
    float *part = ws, *shift = ws + (size_t)G * nsplit * 2;
    ZI_LAUNCH(gn_stats_kernel, dim3((unsigned)nsplit, (unsigned)G), kThreads, 0, s, in, idt, gn,
              slice, nsplit, part, shift);
    size_t per_block = (size_t)kThreads * kGnApplyPerThread;
    unsigned chunks = (unsigned)((HW + per_block - 1) / per_block);
    ZI_LAUNCH(gn_apply_kernel, dim3(chunks, (unsigned)C), kThreads, 0, s, out, odt, in, idt, gamma,
              gdt, beta, bdt, HW, cpg, gn, nsplit, part, shift, eps, silu);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_rope(void *x, int xdt, const float *cos_t, const float *sin_t, int S,
                                  int H, int hd, int layout, cudaStream_t s)
{
    size_t npairs = (size_t)S * H * (hd / 2);
    if (npairs == 0)
        return cudaGetLastError();
    ZI_LAUNCH(rope_kernel, grid_for(npairs, 2), kThreads, 0, s, x, xdt, cos_t, sin_t, H, hd,
              layout == ZI_ROPE_NEOX, npairs);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_embedding(void *out, int odt, const void *table, int tdt,
                                       const int32_t *ids, int R, int D, cudaStream_t s)
{
    if (R <= 0 || D <= 0)
        return cudaGetLastError();
    ZI_LAUNCH(embedding_kernel, (unsigned)R, kThreads, 0, s, out, odt, table, tdt, ids, D);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_transpose(void *out, int odt, const void *in, int idt, int R, int C,
                                       cudaStream_t s)
{
    if (R <= 0 || C <= 0)
        return cudaGetLastError();
    size_t tr = ((size_t)R + 31) / 32, tc = ((size_t)C + 31) / 32, nt = tr * tc;
    unsigned blocks = (unsigned)(nt < kMaxBlocks ? nt : kMaxBlocks);
    ZI_LAUNCH(transpose_kernel, blocks, dim3(32, 8), 0, s, out, odt, in, idt, R, C, tc, nt);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_upsample2x(void *out, int odt, const void *in, int idt, int C, int h,
                                        int w, cudaStream_t s)
{
    size_t n = (size_t)C * h * w * 4;
    if (n == 0)
        return cudaGetLastError();
    ZI_LAUNCH(upsample2x_kernel, grid_for(n, 4), kThreads, 0, s, out, odt, in, idt, h, w, n);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_im2col(uint16_t *col, const void *in, int idt, int Ci, int h, int w,
                                    int k, size_t p0, size_t np, cudaStream_t s)
{
    size_t n = (size_t)Ci * k * k * np;
    if (n == 0)
        return cudaGetLastError();
    ZI_LAUNCH(im2col_kernel, grid_for(n, 4), kThreads, 0, s, reinterpret_cast<__nv_bfloat16 *>(col),
              in, idt, h, w, k, p0, np, n);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_to_rgb8(uint8_t *rgb, const void *in, int idt, int h, int w,
                                     cudaStream_t s)
{
    size_t hw = (size_t)h * w;
    if (hw == 0)
        return cudaGetLastError();
    ZI_LAUNCH(to_rgb8_kernel, grid_for(hw, 1), kThreads, 0, s, rgb, in, idt, hw);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_randn_philox(float *out, size_t n, uint64_t seed, size_t stride,
                                          cudaStream_t s)
{
    if (n == 0 || stride == 0)
        return cudaGetLastError();
    size_t threads = stride < n ? stride : n;
    unsigned blocks = (unsigned)((threads + kThreads - 1) / kThreads);
    ZI_LAUNCH(randn_kernel, blocks, kThreads, 0, s, out, n, seed, stride);
    return cudaGetLastError();
}

extern "C" cudaError_t zi_cu_softmax_rows(uint16_t *p, const float *scores, int nr, int nk,
                                          int causal, int vis0, cudaStream_t s)
{
    if (nr <= 0 || nk <= 0)
        return cudaGetLastError();
    ZI_LAUNCH(softmax_rows_kernel, (unsigned)nr, kThreads, 0, s,
              reinterpret_cast<__nv_bfloat16 *>(p), scores, nk, causal, vis0);
    return cudaGetLastError();
}
