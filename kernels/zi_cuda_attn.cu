/*
 * zi_cuda_attn.cu - fused attention for head_dim 128 and 512 (bf16 in/out, fp32 softmax
 * and accumulation), flash-attention-2 style: the scores of a 64-query x 64-key tile live only
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
 * Head dim 512 (the VAE): the same algorithm with the head dim cut into four slices of
 * 128 across the warps of a row group (see flash_attention_wide_kernel).
 * Limits: hd = 128 or 512 (other head dims use the GEMM path in cuda_backend.c); q, k, v,
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
constexpr int kBr = 64;       /* query rows per block */
constexpr int kBc = 64;       /* keys per tile */
constexpr int kLd = kHd + 8;  /* smem row stride in bf16: +16 bytes, no bank conflicts */
constexpr int kThreads = 128; /* 4 warps x 16 query rows */
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
 * zero-filled) of a [*, HD] head slice into smem rows 0 .. nrows-1 (row stride LD), by
 * the NT threads of the block. */
template <int HD, int LD, int NT>
__device__ __forceinline__ void load_tile(__nv_bfloat16 *dst, const __nv_bfloat16 *src,
                                          size_t gstride, int r0, int nrows, int limit)
{
    constexpr int chunks = HD / 8; /* 16-byte chunks per row */
    for (int c = threadIdx.x; c < nrows * chunks; c += NT) {
        int r = c / chunks, col = (c % chunks) * 8;
        int gr = r0 + r;
        int ok = gr < limit;
        const __nv_bfloat16 *g = src + (size_t)(ok ? gr : 0) * gstride + col;
        cp_async16(dst + r * LD + col, g, ok ? 16 : 0);
    }
}

/* ---- the online softmax, shared by both kernels (one warp, 16 query rows: this thread
 * holds rows g and g+8 of them, keys 2t, 2t+1 of each 8-key n-tile) ---- */

/* Scales this tile's raw scores sc (NT n-tiles of 8 keys from key j0) to log2 units,
 * masks keys past Skv and, when causal, keys after a row's diagonal, updates the running
 * row max m_run and row sums l_run, turns sc into the probabilities exp2(s - max) and
 * returns in alpha the factor by which the rows' running output must be rescaled. */
template <int NT>
__device__ __forceinline__ void
online_softmax(float (&sc)[NT][4], int j0, const int (&row)[2], int Skv, int causal, int off,
               float scale_log2, float (&m_run)[2], float (&l_run)[2], float (&alpha)[2])
{
    const int t = (threadIdx.x & 31) & 3;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < NT; n++) {
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
    float base[2];
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
    for (int n = 0; n < NT; n++) {
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
}

/* o (ND n-tiles of 8 output dims) *= alpha of its row, then o += P V: P (the
 * probabilities sc of NT n-tiles of 8 keys) as A fragments, V rows 0 .. 8*NT-1 of the
 * stage Vs (row stride LD), output dims d0 .. d0 + 8*ND - 1, read by transposed ldmatrix. */
template <int NT, int ND, int LD>
__device__ __forceinline__ void accumulate_pv(float (&o)[ND][4], const float (&alpha)[2],
                                              const float (&sc)[NT][4], const __nv_bfloat16 *Vs,
                                              int d0)
{
    const int lane = threadIdx.x & 31, mi = lane >> 3, mr = lane & 7;
#pragma unroll
    for (int n = 0; n < ND; n++) {
        o[n][0] *= alpha[0];
        o[n][1] *= alpha[0];
        o[n][2] *= alpha[1];
        o[n][3] *= alpha[1];
    }
#pragma unroll
    for (int kc = 0; kc < NT / 2; kc++) { /* keys 16kc .. 16kc+15 */
        uint32_t a[4];
        a[0] = pack_bf16(sc[2 * kc][0], sc[2 * kc][1]);
        a[1] = pack_bf16(sc[2 * kc][2], sc[2 * kc][3]);
        a[2] = pack_bf16(sc[2 * kc + 1][0], sc[2 * kc + 1][1]);
        a[3] = pack_bf16(sc[2 * kc + 1][2], sc[2 * kc + 1][3]);
#pragma unroll
        for (int dp = 0; dp < ND / 2; dp++) {
            uint32_t b[4]; /* b0 b1 of d-tile 2dp, b0 b1 of d-tile 2dp+1 */
            ldmatrix_x4_trans(b, Vs + (kc * 16 + (mi & 1) * 8 + mr) * LD + d0 + dp * 16 +
                                     (mi >> 1) * 8);
            mma_16816(o[2 * dp], a, b[0], b[1]);
            mma_16816(o[2 * dp + 1], a, b[2], b[3]);
        }
    }
}

/* S (NT n-tiles of 8 keys) += Q K^T over the dims of qf (KS k-steps of 16, from dim d0 of
 * the K rows in the stage Ks, row stride LD). */
template <int NT, int KS, int LD>
__device__ __forceinline__ void accumulate_qk(float (&sc)[NT][4], const uint32_t (&qf)[KS][4],
                                              const __nv_bfloat16 *Ks, int d0)
{
    const int lane = threadIdx.x & 31, mi = lane >> 3, mr = lane & 7;
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            uint32_t b[4]; /* b0 b1 of n-tile 2np, b0 b1 of n-tile 2np+1 */
            ldmatrix_x4(b, Ks + (np * 16 + (mi >> 1) * 8 + mr) * LD + d0 + kk * 16 + (mi & 1) * 8);
            mma_16816(sc[2 * np], qf[kk], b[0], b[1]);
            mma_16816(sc[2 * np + 1], qf[kk], b[2], b[3]);
        }
    }
}

/* The Q fragments of 16 rows (from smem row r0, stride LD) and KS k-steps of 16 dims from
 * dim d0. */
template <int KS, int LD>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qf)[KS][4], const __nv_bfloat16 *Qs,
                                                 int r0, int d0)
{
    const int lane = threadIdx.x & 31, mi = lane >> 3, mr = lane & 7;
#pragma unroll
    for (int kk = 0; kk < KS; kk++)
        ldmatrix_x4(qf[kk], Qs + (r0 + (mi & 1) * 8 + mr) * LD + d0 + kk * 16 + (mi >> 1) * 8);
}

/* Finishes the row sums across the 4 threads of a row, normalises o (ND n-tiles of 8 dims)
 * and stores rows row[0], row[1] (< Sq) as bf16 pairs at dims d0 + 8n + 2t of out. */
template <int ND>
__device__ __forceinline__ void store_rows(__nv_bfloat16 *out, const float (&o)[ND][4],
                                           const float (&l_run)[2], const int (&row)[2], int Sq,
                                           size_t stride, size_t d0)
{
    const int t = (threadIdx.x & 31) & 3;
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
        __nv_bfloat16 *dst = out + (size_t)row[i] * stride + d0 + 2 * t;
#pragma unroll
        for (int n = 0; n < ND; n++) {
            uint32_t pr = pack_bf16(o[n][2 * i] * inv[i], o[n][2 * i + 1] * inv[i]);
            *reinterpret_cast<uint32_t *>(dst + n * 8) = pr;
        }
    }
}

/* The number of K/V tiles (from key 0) a block of query rows q0 .. q0+rows-1 needs. */
__device__ __forceinline__ int kv_tiles(int q0, int rows, int Skv, int off, int causal, int bc)
{
    int kv_end = Skv;
    if (causal) {
        int last = q0 + rows - 1 + off + 1; /* keys visible to the block's last row */
        kv_end = last < Skv ? last : Skv;
    }
    return kv_end > 0 ? (kv_end + bc - 1) / bc : 0;
}

/* Queues the copies of K/V tile j0 (BC keys of a [*, HD] head slice, rows >= Skv
 * zero-filled) into the stage at `stage`: K, then V, each [BC][LD]. */
template <int HD, int LD, int NT, int BC>
__device__ __forceinline__ void load_kv(__nv_bfloat16 *stage, const __nv_bfloat16 *kh,
                                        const __nv_bfloat16 *vh, size_t kstride, int j0, int Skv)
{
    load_tile<HD, LD, NT>(stage, kh, kstride, j0, BC, Skv);
    load_tile<HD, LD, NT>(stage + BC * LD, vh, kstride, j0, BC, Skv);
}

/* Makes K/V tile `tile` visible to the block and returns its stage (K, V after it). Tile 0
 * was queued (and committed) before the loop. One stage: the tile is copied now - the
 * barrier at the end of the previous tile freed the stage. Two: the next tile is queued
 * into the other stage, whose last readers (tile - 1) passed that barrier, and only this
 * tile's group is waited for, so the next copy overlaps this tile's math. */
template <int HD, int LD, int NT, int BC, int STAGES>
__device__ __forceinline__ const __nv_bfloat16 *
kv_stage(__nv_bfloat16 *KVs, const __nv_bfloat16 *kh, const __nv_bfloat16 *vh, size_t kstride,
         int tile, int ntiles, int Skv)
{
    if (STAGES == 1) {
        if (tile > 0) {
            load_kv<HD, LD, NT, BC>(KVs, kh, vh, kstride, tile * BC, Skv);
            cp_async_commit();
        }
        cp_async_wait<0>();
    } else if (tile + 1 < ntiles) {
        load_kv<HD, LD, NT, BC>(KVs + (size_t)((tile + 1) & 1) * 2 * BC * LD, kh, vh, kstride,
                                (tile + 1) * BC, Skv);
        cp_async_commit();
        cp_async_wait<1>(); /* this tile's group is complete, the next may be in flight */
    } else {
        cp_async_wait<0>();
    }
    __syncthreads(); /* every thread's copies of this tile are visible */
    return KVs + (size_t)(STAGES == 1 ? 0 : tile & 1) * 2 * BC * LD;
}

/* ---- head dim 128 ---- */

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

    const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2;
    const int h = blockIdx.y, kvh = h / (H / KVH);
    const int q0 = blockIdx.x * kBr;
    const size_t qstride = (size_t)H * kHd, kstride = (size_t)KVH * kHd;
    const __nv_bfloat16 *qh = q + (size_t)h * kHd;
    const __nv_bfloat16 *kh = k + (size_t)kvh * kHd;
    const __nv_bfloat16 *vh = v + (size_t)kvh * kHd;
    const int off = Skv - Sq;
    const int ntiles = kv_tiles(q0, kBr, Skv, off, causal, kBc);

    /* group 0: Q and the first K/V tile */
    load_tile<kHd, kLd, kThreads>(Qs, qh, qstride, q0, kBr, Sq);
    if (ntiles > 0)
        load_kv<kHd, kLd, kThreads, kBc>(KVs, kh, vh, kstride, 0, Skv);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    /* Q fragments of this warp's 16 rows, 8 k-steps of 16 dims */
    uint32_t qf[kHd / 16][4];
    load_q_fragments<kHd / 16, kLd>(qf, Qs, warp * 16, 0);

    float o[kHd / 8][4];
#pragma unroll
    for (int n = 0; n < kHd / 8; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}; /* rows g and g+8, log2 domain */
    float l_run[2] = {0.0f, 0.0f};           /* this thread's part of the row sums */
    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

    for (int tile = 0; tile < ntiles; tile++) {
        const int j0 = tile * kBc;
        const __nv_bfloat16 *Ks =
            kv_stage<kHd, kLd, kThreads, kBc, kStages>(KVs, kh, vh, kstride, tile, ntiles, Skv);
        const __nv_bfloat16 *Vs = Ks + kBc * kLd;

        /* S = Q K^T: 8 n-tiles of 8 keys */
        float sc[kBc / 8][4];
#pragma unroll
        for (int n = 0; n < kBc / 8; n++)
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
        accumulate_qk<kBc / 8, kHd / 16, kLd>(sc, qf, Ks, 0);

        float alpha[2];
        online_softmax<kBc / 8>(sc, j0, row, Skv, causal, off, scale_log2, m_run, l_run, alpha);
        accumulate_pv<kBc / 8, kHd / 8, kLd>(o, alpha, sc, Vs, 0);
        __syncthreads(); /* every warp is done with this stage before it is refilled */
    }
    store_rows<kHd / 8>(out, o, l_run, row, Sq, qstride, (size_t)h * kHd);
}

/* ---- head dim 512 (the VAE's single-head attention) ----
 *
 * A warp cannot hold 16 rows x 512 dims of fp32 output (256 registers per thread), so the
 * head dim is cut into 4 slices of 128: a block of 8 warps takes 32 query rows, warp w
 * owns rows 16 (w / 4) .. +15 and output dims 128 (w % 4) .. +127 (their Q fragments, the
 * 16 x 128 output accumulator and the row statistics in registers, as in the kernel above).
 * Per tile of 32 keys each warp computes the partial scores of its rows over its 128 dims,
 * the four partial sums of a row group meet in shared memory and every warp of the group
 * adds them in the same order (slice 0, 1, 2, 3), so the four hold bitwise equal scores,
 * row maxima and sums; then each warp adds P V for its slice. K/V tiles are 32 x 512 and
 * double-buffered (2 stages: 146 KiB of shared memory, sm_80 and sm_90) or single
 * (81 KiB: every GPU from sm_80, including sm_86/89's 99 KiB); Q is staged through the
 * first K buffer before the first tile is loaded. */

constexpr int kWHd = 512;
constexpr int kWSlice = 128;                    /* output dims per warp */
constexpr int kWSlices = kWHd / kWSlice;        /* warps per row group */
constexpr int kWBr = 32;                        /* query rows per block: 2 groups of 16 */
constexpr int kWBc = 32;                        /* keys per tile */
constexpr int kWLd = kWHd + 8;                  /* smem row stride in bf16 */
constexpr int kWWarps = (kWBr / 16) * kWSlices; /* 8 */
constexpr int kWThreads = 32 * kWWarps;         /* 256 */
static_assert(kWBr <= kWBc, "Q is staged in a K buffer");
/* partial scores: [warp][16 values of a thread][32 lanes] floats */
constexpr size_t kWPartBytes = (size_t)kWWarps * (kWBc / 8 * 4) * 32 * sizeof(float);

constexpr size_t wide_smem_bytes(int stages)
{
    return (size_t)stages * 2 * kWBc * kWLd * sizeof(__nv_bfloat16) + kWPartBytes;
}

template <int kStages>
__global__ void __launch_bounds__(kWThreads)
    flash_attention_wide_kernel(__nv_bfloat16 *out, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                                const __nv_bfloat16 *v, int Sq, int Skv, int H, int KVH,
                                float scale_log2, int causal)
{
    ZI_DYNAMIC_SMEM(unsigned char, smem_raw);
    /* stage st: K at KVs + st*2*kWBc*kWLd, V right after it; each [kWBc][kWLd] */
    __nv_bfloat16 *const KVs = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    float *const part = reinterpret_cast<float *>(smem_raw + (size_t)kStages * 2 * kWBc * kWLd *
                                                                 sizeof(__nv_bfloat16));

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2;
    const int grp = warp / kWSlices, d0 = (warp % kWSlices) * kWSlice;
    const int h = blockIdx.y, kvh = h / (H / KVH);
    const int q0 = blockIdx.x * kWBr;
    const size_t qstride = (size_t)H * kWHd, kstride = (size_t)KVH * kWHd;
    const __nv_bfloat16 *qh = q + (size_t)h * kWHd;
    const __nv_bfloat16 *kh = k + (size_t)kvh * kWHd;
    const __nv_bfloat16 *vh = v + (size_t)kvh * kWHd;
    const int off = Skv - Sq;
    const int ntiles = kv_tiles(q0, kWBr, Skv, off, causal, kWBc);

    /* Q through the first K buffer, into registers: this warp's rows, its 128 dims */
    load_tile<kWHd, kWLd, kWThreads>(KVs, qh, qstride, q0, kWBr, Sq);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[kWSlice / 16][4];
    load_q_fragments<kWSlice / 16, kWLd>(qf, KVs, grp * 16, d0);
    __syncthreads(); /* every warp has its Q before the buffer takes K */

    /* group of tile 0 */
    if (ntiles > 0)
        load_kv<kWHd, kWLd, kWThreads, kWBc>(KVs, kh, vh, kstride, 0, Skv);
    cp_async_commit();

    float o[kWSlice / 8][4];
#pragma unroll
    for (int n = 0; n < kWSlice / 8; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.0f, 0.0f};
    const int row[2] = {q0 + grp * 16 + g, q0 + grp * 16 + g + 8};

    for (int tile = 0; tile < ntiles; tile++) {
        const int j0 = tile * kWBc;
        const __nv_bfloat16 *Ks =
            kv_stage<kWHd, kWLd, kWThreads, kWBc, kStages>(KVs, kh, vh, kstride, tile, ntiles, Skv);
        const __nv_bfloat16 *Vs = Ks + kWBc * kWLd;

        /* partial scores over this warp's 128 dims: 4 n-tiles of 8 keys */
        float sc[kWBc / 8][4];
#pragma unroll
        for (int n = 0; n < kWBc / 8; n++)
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
        accumulate_qk<kWBc / 8, kWSlice / 16, kWLd>(sc, qf, Ks, d0);
        /* the row group's four partial sums, added in slice order by each of its warps */
#pragma unroll
        for (int n = 0; n < kWBc / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                part[(warp * (kWBc / 2) + n * 4 + e) * 32 + lane] = sc[n][e];
        __syncthreads();
#pragma unroll
        for (int n = 0; n < kWBc / 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float s = part[((grp * kWSlices) * (kWBc / 2) + n * 4 + e) * 32 + lane];
#pragma unroll
                for (int sl = 1; sl < kWSlices; sl++)
                    s += part[((grp * kWSlices + sl) * (kWBc / 2) + n * 4 + e) * 32 + lane];
                sc[n][e] = s;
            }
        }

        float alpha[2];
        online_softmax<kWBc / 8>(sc, j0, row, Skv, causal, off, scale_log2, m_run, l_run, alpha);
        accumulate_pv<kWBc / 8, kWSlice / 8, kWLd>(o, alpha, sc, Vs, d0);
        __syncthreads(); /* the stage and the partial scores are free for the next tile */
    }
    store_rows<kWSlice / 8>(out, o, l_run, row, Sq, qstride, (size_t)h * kWHd + d0);
}

} /* namespace */

extern "C" int zi_cu_flash_supported(int hd)
{
    return hd == kHd || hd == kWHd;
}

extern "C" cudaError_t zi_cu_init_kernels(int *wide_stages)
{
    int dev = 0, optin = 0;
    *wide_stages = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(flash_attention_kernel<1>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(1));
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(flash_attention_kernel<2>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes(2));
    if (e == cudaSuccess && (size_t)optin >= wide_smem_bytes(1)) { /* every sm_80+ */
        e = cudaFuncSetAttribute(flash_attention_wide_kernel<1>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)wide_smem_bytes(1));
        if (e == cudaSuccess)
            *wide_stages = 1;
    }
    if (e == cudaSuccess && *wide_stages == 1 && (size_t)optin >= wide_smem_bytes(2)) {
        e = cudaFuncSetAttribute(flash_attention_wide_kernel<2>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)wide_smem_bytes(2));
        if (e == cudaSuccess)
            *wide_stages = 2;
    }
    return e;
}

extern "C" cudaError_t zi_cu_flash_attention(uint16_t *out, const uint16_t *q, const uint16_t *k,
                                             const uint16_t *v, int Sq, int Skv, int H, int KVH,
                                             int hd, float scale, int causal, int stages,
                                             cudaStream_t s)
{
    if (!zi_cu_flash_supported(hd) || H <= 0 || KVH <= 0 || H % KVH != 0 ||
        (stages != 1 && stages != 2))
        return cudaErrorInvalidValue;
    if (Sq <= 0 || Skv <= 0)
        return cudaGetLastError();
    const float log2e = 1.4426950408889634f;
    __nv_bfloat16 *o = reinterpret_cast<__nv_bfloat16 *>(out);
    const __nv_bfloat16 *qb = reinterpret_cast<const __nv_bfloat16 *>(q);
    const __nv_bfloat16 *kb = reinterpret_cast<const __nv_bfloat16 *>(k);
    const __nv_bfloat16 *vb = reinterpret_cast<const __nv_bfloat16 *>(v);
    if (hd == kWHd) {
        dim3 grid((unsigned)((Sq + kWBr - 1) / kWBr), (unsigned)H);
        if (stages == 2)
            ZI_LAUNCH(flash_attention_wide_kernel<2>, grid, kWThreads, wide_smem_bytes(2), s, o, qb,
                      kb, vb, Sq, Skv, H, KVH, scale * log2e, causal);
        else
            ZI_LAUNCH(flash_attention_wide_kernel<1>, grid, kWThreads, wide_smem_bytes(1), s, o, qb,
                      kb, vb, Sq, Skv, H, KVH, scale * log2e, causal);
        return cudaGetLastError();
    }
    dim3 grid((unsigned)((Sq + kBr - 1) / kBr), (unsigned)H);
    if (stages == 1)
        ZI_LAUNCH(flash_attention_kernel<1>, grid, kThreads, smem_bytes(1), s, o, qb, kb, vb, Sq,
                  Skv, H, KVH, scale * log2e, causal);
    else
        ZI_LAUNCH(flash_attention_kernel<2>, grid, kThreads, smem_bytes(2), s, o, qb, kb, vb, Sq,
                  Skv, H, KVH, scale * log2e, causal);
    return cudaGetLastError();
}
