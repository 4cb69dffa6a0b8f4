/*
 * zi_cuda_launch.h - C entry points of the CUDA kernels (kernels/zi_cuda_*.cu), called by
 * the backend in kernels/cuda_backend.c. Internal to the CUDA backend.
 *
 * Conventions: pointers are device memory; `dt` arguments are zi_dtype values and every
 * activation argument may be ZI_F32 or ZI_BF16 (the kernel converts on load and rounds
 * to nearest even on store), so the model code may mix fp32 latents with bf16
 * activations. Each launcher queues its kernels on `s` and returns cudaGetLastError()
 * (launch errors; faults surface at the next synchronisation). Shapes are checked by the
 * caller (cuda_backend.c); launchers only guard against empty work.
 */
#ifndef ZI_CUDA_LAUNCH_H
#define ZI_CUDA_LAUNCH_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element-wise operations of zi_cu_map. */
enum {
    ZI_CU_ADD = 0,  /* out = a + b */
    ZI_CU_SILU,     /* out = a * sigmoid(a) */
    ZI_CU_TANH,     /* out = tanh(a) */
    ZI_CU_SILU_MUL, /* out = silu(a) * b */
    ZI_CU_AFFINE,   /* out = a * alpha + beta */
    ZI_CU_COPY,     /* out = a (dtype conversion) */
};

/* The attention kernel this build offers for a head dim (flash-style, bf16). */
int zi_cu_flash_supported(int hd);

/* Raises the dynamic shared memory limits of the kernels that need it; call once per
 * device (current) before the first launch. *wide_stages: the K/V stages the head-dim-512
 * flash kernel may have on this device (2 needs 146 KiB of shared memory per block, more
 * than sm_86/89 give; 1 needs 81 KiB; 0: not on this device). */
cudaError_t zi_cu_init_kernels(int *wide_stages);

/* A kernel that writes to an illegal address (fault-injection tests). */
cudaError_t zi_cu_fault(cudaStream_t s);

/* dst[n] (F32/BF16) = src[n] of dtype src_dt (F32, BF16, F16 or F8_E4M3). */
cudaError_t zi_cu_convert(void *dst, int dst_dt, const void *src, int src_dt, size_t n,
                          cudaStream_t s);

/* out[n] = op(a[n], b[n]) (b unused for the unary ops; alpha/beta only for AFFINE). */
cudaError_t zi_cu_map(int op, void *out, int odt, const void *a, int adt, const void *b, int bdt,
                      float alpha, float beta, size_t n, cudaStream_t s);

/* out[R, D] = in[R, D] * sv[D] (broadcast row vector). In place allowed. */
cudaError_t zi_cu_mul_row(void *out, int odt, const void *in, int idt, const void *sv, int sdt,
                          int R, int D, cudaStream_t s);
/* x[R, D] += g[D] * y[R, D]; g may be NULL (plain residual add). */
cudaError_t zi_cu_gated_add(void *x, int xdt, const void *g, int gdt, const void *y, int ydt, int R,
                            int D, cudaStream_t s);
/* out[R, D] += b[D] (linear bias when the GEMM epilogue cannot take it). */
cudaError_t zi_cu_add_bias(void *out, int odt, const void *b, int bdt, int R, int D,
                           cudaStream_t s);
/* out[C, HW] = b[C] broadcast along HW (conv bias, before a beta = 1 GEMM). */
cudaError_t zi_cu_fill_channels(void *out, int odt, const void *b, int bdt, int C, size_t HW,
                                cudaStream_t s);

/* RMSNorm over D of R rows, w[D] or NULL; LayerNorm without affine. In place allowed. */
cudaError_t zi_cu_rmsnorm(void *out, int odt, const void *in, int idt, const void *w, int wdt,
                          int R, int D, float eps, cudaStream_t s);
cudaError_t zi_cu_layernorm(void *out, int odt, const void *in, int idt, int R, int D, float eps,
                            cudaStream_t s);

/* Workspace floats zi_cu_groupnorm needs for these sizes. */
size_t zi_cu_groupnorm_ws(int C, size_t HW, int G);
/* GroupNorm(+SiLU) of in[C, HW], G groups, gamma/beta [C] or NULL. ws: device floats of
 * zi_cu_groupnorm_ws(). In place allowed. */
cudaError_t zi_cu_groupnorm(void *out, int odt, const void *in, int idt, const void *gamma, int gdt,
                            const void *beta, int bdt, int C, size_t HW, int G, float eps, int silu,
                            float *ws, cudaStream_t s);

/* Rotates x[S, H, hd] in place; cos/sin F32 [S, hd/2]. layout: zi_rope_layout. */
cudaError_t zi_cu_rope(void *x, int xdt, const float *cos_t, const float *sin_t, int S, int H,
                       int hd, int layout, cudaStream_t s);

/* out[R, D] = table[ids[r], :]; ids are device int32 already range-checked. */
cudaError_t zi_cu_embedding(void *out, int odt, const void *table, int tdt, const int32_t *ids,
                            int R, int D, cudaStream_t s);

/* out[C, R] = in[R, C]. */
cudaError_t zi_cu_transpose(void *out, int odt, const void *in, int idt, int R, int C,
                            cudaStream_t s);

/* out[C, 2h, 2w] = nearest upsample of in[C, h, w]. */
cudaError_t zi_cu_upsample2x(void *out, int odt, const void *in, int idt, int C, int h, int w,
                             cudaStream_t s);

/* col[Ci*k*k, np] (bf16) = the k x k patches (zero padded by k/2) of in[Ci, h, w] for the
 * output pixels p0 .. p0+np-1 (row-major pixel index). */
cudaError_t zi_cu_im2col(uint16_t *col, const void *in, int idt, int Ci, int h, int w, int k,
                         size_t p0, size_t np, cudaStream_t s);

/* rgb[h, w, 3] (device bytes) = round_half_even(clamp(in[3, h, w] / 2 + 0.5, 0, 1) * 255);
 * NaN -> 0. */
cudaError_t zi_cu_to_rgb8(uint8_t *rgb, const void *in, int idt, int h, int w, cudaStream_t s);

/* out[n] = torch CUDA-generator randn for seed, in the layout of pipeline/rng.h: `stride`
 * = ZI_RNG_CUDA_BLOCK * zi_rng_cuda_grid(n) (the canonical 132-SM geometry). */
cudaError_t zi_cu_randn_philox(float *out, size_t n, uint64_t seed, size_t stride, cudaStream_t s);

/* Attention, GEMM path: P[nr, nk] (bf16) = softmax of scores[nr, nk] (F32, already scaled)
 * per row, row r seeing keys j < vis0 + r + 1 when causal (all nk otherwise); masked
 * entries become 0. */
cudaError_t zi_cu_softmax_rows(uint16_t *p, const float *scores, int nr, int nk, int causal,
                               int vis0, cudaStream_t s);

/* Attention, fused path (zi_cu_flash_supported(hd)): out[Sq, H*hd] from bf16 q [Sq, H, hd],
 * k, v [Skv, KVH, hd]; scale applied to q.k; causal with offset Skv - Sq; `stages` K/V
 * tiles in flight (1 or 2; for hd 512 at most zi_cu_init_kernels' *wide_stages). */
cudaError_t zi_cu_flash_attention(uint16_t *out, const uint16_t *q, const uint16_t *k,
                                  const uint16_t *v, int Sq, int Skv, int H, int KVH, int hd,
                                  float scale, int causal, int stages, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
