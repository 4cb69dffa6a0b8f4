/*
 * zi_cuda_attn.cu - fused attention for head_dim 128 (bf16 in/out, fp32 softmax and
 * accumulation), flash-attention-2 style: the scores of a 64-query x 64-key tile live only
 * in registers, softmax is online (running max and sum per row), so memory is O(S).
 *
 * Work split: grid (ceil(Sq/64), H); a block of 4 warps holds a 64 x 128 Q tile; warp w
 * owns query rows 16w .. 16w+15 and keeps their Q fragments, the 16 x 128 fp32 output
 * accumulator and the row statistics in registers. K and V tiles are double-buffered in
 * shared memory: while the warps compute on tile j, cp.async already copies tile j+1 into
 * the other stage (rows past Skv zero-filled; cp.async.wait_group 1 waits for tile j
 * only), so the copy of the next tile overlaps the math of this one. Each warp computes
 * S = Q K^T with mma.sync m16n8k16 (bf16 -> fp32), masks (Skv bound, causal), rescales its
 * running output, turns the probabilities into bf16 A fragments without leaving registers
 * (the accumulator layout of two n8 tiles is the A layout of one k16 step) and adds P V.
 * GQA: head h reads kv head h / (H / KVH). Causal: query i sees keys j <= i + Skv - Sq;
 * tiles wholly above the diagonal are skipped.
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 .bf16; g = lane / 4, t = lane % 4):
 *   A 16x16 row: a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
 *   B 16x8  col: b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
 *   C 16x8     : c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
 * ldmatrix.x4 lane l addresses row (l % 8) of matrix (l / 8); without .trans a thread gets
 * (row g, cols 2t..2t+1) of each 8x8 matrix, with .trans (rows 2t..2t+1, col g).
 *
 * Limits: hd = 128 only (other head dims use the GEMM path in cuda_backend.c); q, k, v,
 * out must be 16-byte aligned (checked by the caller); sm_80 or newer.
 * Reference: Dao, "FlashAttention-2" (2023), algorithm 1; PTX ISA 8.x, warp-level mma.
 */
#include "zi_cuda_device.h"
#include "zi_cuda_launch.h"

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

namespace
{

constexpr int kHd = 128;
constexpr int kBr = 64;          /* query rows per block */
constexpr int kBc = 64;          /* keys per tile */
constexpr int kLd = kHd + 8;     /* smem row stride in bf16: +16 bytes, no bank conflicts */
constexpr int kThreads = 128;    /* 4 warps x 16 query rows */
constexpr int kChunks = kHd / 8; /* 16-byte chunks per row */
/* Shared memory of the kernel with `stages` K/V tiles in flight: 1 (52 KiB) or 2 (85 KiB:
 * the next tile's copy overlaps this tile's math). ptxas (CUDA 13): sm_90 168 / 173
 * registers, so 3 / 2 blocks per SM (at 169+ registers 1 stage would drop to 2); sm_80
 * (176 registers both, 164 KiB per SM) 2 / 1; sm_86/89 (100 KiB per SM) one either way.
 * Which is faster is for a GPU run to tell: the backend picks (ZI_CUDA_FLASH_STAGES,
 * default 2). */
constexpr size_t smem_bytes(int stages)
{
    return (size_t)(kBr + stages * 2 * kBc) * kLd * sizeof(__nv_bfloat16);
}

/* Under ZI_CUDA_EMU (the CPU emulator, tests/cudaemu) each helper calls the emulated
 * instruction instead of its PTX; the emulator implements them from the PTX ISA. */
__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes)
{
#ifdef ZI_CUDA_EMU
    zi_emu_cp_async16(smem, gmem, src_bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
                 "l"(gmem), "r"(src_bytes));
#endif
}

/* Closes the group of this thread's cp.async copies issued since the last commit. */
__device__ __forceinline__ void cp_async_commit()
{
#ifdef ZI_CUDA_EMU
    zi_emu_cp_async_commit_group();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

/* Waits until at most N of this thread's committed groups are still in flight (N a
 * compile-time constant: the PTX takes an immediate). */
template <int N> __device__ __forceinline__ void cp_async_wait()
{
#ifdef ZI_CUDA_EMU
    zi_emu_cp_async_wait_group(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p)
{
#ifdef ZI_CUDA_EMU
    zi_emu_ldmatrix_x4(r, p, 0);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *p)
{
#ifdef ZI_CUDA_EMU
    zi_emu_ldmatrix_x4(r, p, 1);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#endif
}

/* c[4] += A(16x16) B(16x8) */
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
#ifdef ZI_CUDA_EMU
    zi_emu_mma_m16n8k16_bf16_f32(c, a, b0, b1);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* Two floats -> one register of two bf16, `lo` in the low half (the lower column). */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r; /* memcpy, not a pointer cast: no type punning for a host compiler */
    memcpy(&r, &v, sizeof r);
    return r;
}

/* Copies rows r0 .. r0+nrows-1 (global row stride `gstride` elements, rows >= limit
 * zero-filled) of a [*, 128] head slice into smem rows 0 .. nrows-1. */
__device__ __forceinline__ void load_tile(__nv_bfloat16 *dst, const __nv_bfloat16 *src,
                                          size_t gstride, int r0, int nrows, int limit)
{
    for (int c = threadIdx.x; c < nrows * kChunks; c += kThreads) {
        int r = c / kChunks, col = (c % kChunks) * 8;
        int gr = r0 + r;
        int ok = gr < limit;
        const __nv_bfloat16 *g = src + (size_t)(ok ? gr : 0) * gstride + col;
        cp_async16(dst + r * kLd + col, g, ok ? 16 : 0);
    }
}

template <int kStages>
__global__ void __launch_bounds__(kThreads)
    flash_attention_kernel(__nv_bfloat16 *out, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                           const __nv_bfloat16 *v, int Sq, int Skv, int H, int KVH,
                           float scale_log2, int causal)
{
    ZI_DYNAMIC_SMEM(unsigned char, smem_raw);
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(smem_raw); /* [kBr][kLd] */
    /* stage st: K at Qs + kBr*kLd + st*2*kBc*kLd, V right after it; each [kBc][kLd] */
    __nv_bfloat16 *const KVs = Qs + kBr * kLd;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int mi = lane >> 3, mr = lane & 7; /* ldmatrix: matrix index, row in matrix */
    const int h = blockIdx.y, kvh = h / (H / KVH);
    const int q0 = blockIdx.x * kBr;
    const size_t qstride = (size_t)H * kHd, kstride = (size_t)KVH * kHd;
    const __nv_bfloat16 *qh = q + (size_t)h * kHd;
    const __nv_bfloat16 *kh = k + (size_t)kvh * kHd;
    const __nv_bfloat16 *vh = v + (size_t)kvh * kHd;
    const int off = Skv - Sq;

    int kv_end = Skv;
    if (causal) {
        int last = q0 + kBr - 1 + off + 1; /* keys visible to the block's last row */
        kv_end = last < Skv ? last : Skv;
    }
    const int ntiles = (kv_end + kBc - 1) / kBc;

    /* group 0: Q and the first K/V tile */
    load_tile(Qs, qh, qstride, q0, kBr, Sq);
    if (ntiles > 0) {
        load_tile(KVs, kh, kstride, 0, kBc, Skv);
        load_tile(KVs + kBc * kLd, vh, kstride, 0, kBc, Skv);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    /* Q fragments of this warp's 16 rows, 8 k-steps of 16 dims */
    uint32_t qf[kHd / 16][4];
#pragma unroll
    for (int kk = 0; kk < kHd / 16; kk++)
        ldmatrix_x4(qf[kk], Qs + (warp * 16 + (mi & 1) * 8 + mr) * kLd + kk * 16 + (mi >> 1) * 8);

    float o[kHd / 8][4];
#pragma unroll
    for (int n = 0; n < kHd / 8; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}; /* rows g and g+8, log2 domain */
    float l_run[2] = {0.0f, 0.0f};           /* this thread's part of the row sums */
    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

    for (int tile = 0; tile < ntiles; tile++) {
        const int j0 = tile * kBc;
        const __nv_bfloat16 *Ks = KVs + (size_t)(kStages == 1 ? 0 : tile & 1) * 2 * kBc * kLd;
        const __nv_bfloat16 *Vs = Ks + kBc * kLd;
        if (kStages == 1) {
            /* one stage: this tile is copied now (tile 0 came with Q); the barrier at the
             * end of the previous iteration freed the stage */
            if (tile > 0) {
                load_tile(KVs, kh, kstride, j0, kBc, Skv);
                load_tile(KVs + kBc * kLd, vh, kstride, j0, kBc, Skv);
                cp_async_commit();
                cp_async_wait<0>();
            }
        } else if (tile + 1 < ntiles) {
            /* the next tile into the other stage, whose last readers (tile - 1) finished
             * before the barrier at the end of the previous iteration */
            __nv_bfloat16 *Kn = KVs + (size_t)((tile + 1) & 1) * 2 * kBc * kLd;
            load_tile(Kn, kh, kstride, j0 + kBc, kBc, Skv);
            load_tile(Kn + kBc * kLd, vh, kstride, j0 + kBc, kBc, Skv);
            cp_async_commit();
            cp_async_wait<1>(); /* this tile's group is complete, the next may be in flight */
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); /* every thread's copies of this tile are visible */

        /* S = Q K^T: 8 n-tiles of 8 keys */
        float sc[kBc / 8][4];
#pragma unroll
        for (int n = 0; n < kBc / 8; n++)
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < kHd / 16; kk++) {
#pragma unroll
            for (int np = 0; np < kBc / 16; np++) {
                uint32_t b[4]; /* b0 b1 of n-tile 2np, b0 b1 of n-tile 2np+1 */
                ldmatrix_x4(b, Ks + (np * 16 + (mi >> 1) * 8 + mr) * kLd + kk * 16 + (mi & 1) * 8);
                mma_16816(sc[2 * np], qf[kk], b[0], b[1]);
                mma_16816(sc[2 * np + 1], qf[kk], b[2], b[3]);
            }
        }

        /* scale to log2 units, mask, row max */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < kBc / 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = j0 + n * 8 + 2 * t + (e & 1);
                int r = row[e >> 1];
                bool ok = key < Skv && (!causal || key <= r + off);
                float x = ok ? sc[n][e] * scale_log2 : -INFINITY;
                sc[n][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float alpha[2], base[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            float m_new = fmaxf(m_run[i], mx[i]);
            /* a row that has seen no key yet keeps m = -inf: exponentiate against 0 */
            base[i] = m_new == -INFINITY ? 0.0f : m_new;
            alpha[i] = exp2f(m_run[i] - base[i]);
            m_run[i] = m_new;
        }
        float ls[2] = {0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < kBc / 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = exp2f(sc[n][e] - base[e >> 1]);
                sc[n][e] = p;
                ls[e >> 1] += p;
            }
        }
#pragma unroll
        for (int i = 0; i < 2; i++)
            l_run[i] = l_run[i] * alpha[i] + ls[i];
#pragma unroll
        for (int n = 0; n < kHd / 8; n++) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }

        /* O += P V: P as A fragments (keys 16kc .. 16kc+15), V via transposed ldmatrix */
#pragma unroll
        for (int kc = 0; kc < kBc / 16; kc++) {
            uint32_t a[4];
            a[0] = pack_bf16(sc[2 * kc][0], sc[2 * kc][1]);
            a[1] = pack_bf16(sc[2 * kc][2], sc[2 * kc][3]);
            a[2] = pack_bf16(sc[2 * kc + 1][0], sc[2 * kc + 1][1]);
            a[3] = pack_bf16(sc[2 * kc + 1][2], sc[2 * kc + 1][3]);
#pragma unroll
            for (int dp = 0; dp < kHd / 16; dp++) {
                uint32_t b[4]; /* b0 b1 of d-tile 2dp, b0 b1 of d-tile 2dp+1 */
                ldmatrix_x4_trans(b, Vs + (kc * 16 + (mi & 1) * 8 + mr) * kLd + dp * 16 +
                                         (mi >> 1) * 8);
                mma_16816(o[2 * dp], a, b[0], b[1]);
                mma_16816(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
        __syncthreads(); /* every warp is done with this stage before it is refilled */
    }

    /* finish the row sums across the 4 threads of a row, normalise, store bf16 pairs */
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        float l = l_run[i];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[i] = l > 0.0f ? 1.0f / l : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (row[i] >= Sq)
            continue;
        __nv_bfloat16 *dst = out + (size_t)row[i] * qstride + (size_t)h * kHd + 2 * t;
#pragma unroll
        for (int n = 0; n < kHd / 8; n++) {
            uint32_t pr = pack_bf16(o[n][2 * i] * inv[i], o[n][2 * i + 1] * inv[i]);
            *reinterpret_cast<uint32_t *>(dst + n * 8) = pr;
        }
    }
}

} /* namespace */

extern "C" int zi_cu_flash_supported(int hd)
{
    return hd == kHd;
}

extern "C" cudaError_t zi_cu_init_kernels(void)
{
    cudaError_t e = cudaFuncSetAttribute(
        flash_attention_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(1));
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(flash_attention_kernel<2>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(2));
    return e;
}

extern "C" cudaError_t zi_cu_flash_attention(uint16_t *out, const uint16_t *q, const uint16_t *k,
                                             const uint16_t *v, int Sq, int Skv, int H, int KVH,
                                             int hd, float scale, int causal, int stages,
                                             cudaStream_t s)
{
    if (hd != kHd || H <= 0 || KVH <= 0 || H % KVH != 0 || (stages != 1 && stages != 2))
        return cudaErrorInvalidValue;
    if (Sq <= 0 || Skv <= 0)
        return cudaGetLastError();
    dim3 grid((unsigned)((Sq + kBr - 1) / kBr), (unsigned)H);
    const float log2e = 1.4426950408889634f;
    __nv_bfloat16 *o = reinterpret_cast<__nv_bfloat16 *>(out);
    const __nv_bfloat16 *qb = reinterpret_cast<const __nv_bfloat16 *>(q);
    const __nv_bfloat16 *kb = reinterpret_cast<const __nv_bfloat16 *>(k);
    const __nv_bfloat16 *vb = reinterpret_cast<const __nv_bfloat16 *>(v);
    if (stages == 1)
        ZI_LAUNCH(flash_attention_kernel<1>, grid, kThreads, smem_bytes(1), s, o, qb, kb, vb, Sq,
                  Skv, H, KVH, scale * log2e, causal);
    else
        ZI_LAUNCH(flash_attention_kernel<2>, grid, kThreads, smem_bytes(2), s, o, qb, kb, vb, Sq,
                  Skv, H, KVH, scale * log2e, causal);
    return cudaGetLastError();
}
