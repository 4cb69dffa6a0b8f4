/*
 * test_emu_device.cpp - the CUDA emulator's device half (emu_device.cpp) against plain
 * serial computations, independent of kernels/: block reductions with __syncthreads and
 * shuffles, the thread hierarchy, mma.m16n8k16 fed by ldmatrix from shared memory against a
 * 16x16 x 16x8 product, ldmatrix .trans against the non-transposed load of the transpose,
 * cp.async zero fill and group completion, the launch checks (cudaGetLastError), and the
 * device-side errors that must abort (run in forked children, stderr checked).
 * Fragment and address layouts are written here from the PTX ISA text (9.7.14.5.8 and
 * 9.7.14.5.15), like the emulator, so a wrong emulated layout fails the products.
 * Plain checks; exit status 1 on the first failure.
 */
#include "zi_cuda_emu.h"

#include "emu_test.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <vector>

#define CHECK ZI_EMU_CHECK

namespace
{

/* ---- helpers ---- */

uint16_t f2bf(float f) /* round to nearest even */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

uint32_t rng_state = 12345;
float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)(rng_state >> 8) / (float)(1u << 23) - 1.0f;
}

template <class T> T *dev_alloc(size_t n)
{
    return static_cast<T *>(zi_emu_test_dev_alloc(n * sizeof(T)));
}

template <class T> void upload(T *d, const std::vector<T> &h)
{
    CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
}

template <class T> std::vector<T> download(const T *d, size_t n)
{
    std::vector<T> h(n);
    CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
}

/* ---- kernels ---- */

/* per-block sums: warp shuffles (xor, then down), shared partials, __syncthreads */
__global__ void reduce_kernel(const float *in, float *out, int n)
{
    __shared__ float part[32];
    int tid = threadIdx.x + threadIdx.y * blockDim.x, nt = blockDim.x * blockDim.y;
    float v = 0.0f;
    for (int i = blockIdx.x * nt + tid; i < n; i += nt * gridDim.x)
        v += in[i];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((tid & 31) == 0)
        part[tid >> 5] = v;
    __syncthreads();
    if (tid < 32) {
        v = tid < nt / 32 ? part[tid] : 0.0f;
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_down_sync(0xffffffffu, v, (unsigned)o);
        if (tid == 0)
            out[blockIdx.x] = v;
    }
    __syncthreads(); /* part[] is reused by the next block only after everyone read it */
}

/* threads outside [lo, lo + 40) return at once; the others still pass the barrier: exited
 * threads count as arrived, whether they leave before the last arrival or after */
__global__ void early_return_barrier_kernel(int *out, int lo)
{
    __shared__ int v[40];
    int i = (int)threadIdx.x - lo;
    if (i < 0 || i >= 40)
        return;
    v[i] = i * 3;
    __syncthreads();
    out[i] = v[39 - i];
}

/* every thread writes its coordinates at its global linear index */
__global__ void index_kernel(int *out)
{
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int nt = blockDim.x * blockDim.y * blockDim.z;
    int *o = out + 6 * (b * nt + t);
    o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
    o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
}

constexpr int kLdA = 24; /* padded row strides: rows of an ldmatrix need not be contiguous */

/* D = C + A B (A 16x16, B 16x8, bf16; C, D fp32) with one warp: A by ldmatrix.x4; B twice,
 * from Bt[n][k] without .trans and from B[k][n] with .trans. */
__global__ void mma_kernel(const uint16_t *A, const uint16_t *B, const float *C, float *D1,
                           float *D2)
{
    ZI_DYNAMIC_SMEM(uint16_t, sm);
    uint16_t *As = sm;              /* [16][kLdA] */
    uint16_t *Bts = As + 16 * kLdA; /* [8][kLdA]: Bt[n][k] */
    uint16_t *Bs = Bts + 8 * kLdA;  /* [16][16]: B[k][n], columns 0..7 */
    int l = threadIdx.x;
    for (int i = l; i < 256; i += 32)
        As[(i / 16) * kLdA + i % 16] = A[i];
    for (int i = l; i < 128; i += 32) {
        int k = i / 8, n = i % 8;
        Bts[n * kLdA + k] = B[i];
        Bs[k * 16 + n] = B[i];
    }
    __syncthreads();
    /* PTX 9.7.14.5.15: lanes 8i..8i+7 address the rows of matrix i. A's fragment registers
     * (9.7.14.5.8) are its quadrants (rows 0-7|8-15) x (cols 0-7|8-15) in the order
     * a0a1: (g, 2t..), a2a3: (g+8, 2t..), a4a5: (g, 2t+8..), a6a7: (g+8, 2t+8..) */
    int mi = l / 8, r = l % 8;
    uint32_t a[4], bt[4], b[4];
    zi_emu_ldmatrix_x4(a, As + ((mi & 1) * 8 + r) * kLdA + (mi >> 1) * 8, 0);
    /* b0b1: (k 2t.., n g), b2b3: (k 2t+8.., n g): Bt[n][k] rows n, k halves as matrices 0, 1
     * (matrices 2, 3 repeat them) */
    zi_emu_ldmatrix_x4(bt, Bts + r * kLdA + (mi & 1) * 8, 0);
    /* the same fragments from B[k][n]: rows k 0-7 and 8-15, transposed on load */
    zi_emu_ldmatrix_x4(b, Bs + ((mi & 1) * 8 + r) * 16, 1);
    int g = l / 4, t = l % 4;
    float c1[4], c2[4];
    for (int i = 0; i < 4; i++) /* ci: row g (+8 for i >= 2), col 2t + (i & 1) */
        c1[i] = c2[i] = C[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)];
    zi_emu_mma_m16n8k16_bf16_f32(c1, a, bt[0], bt[1]);
    zi_emu_mma_m16n8k16_bf16_f32(c2, a, b[0], b[1]);
    for (int i = 0; i < 4; i++) {
        D1[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = c1[i];
        D2[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = c2[i];
    }
    /* the same matrices applied twice accumulate: D1 += A B (b2b3 of bt are b0b1 again) */
    zi_emu_mma_m16n8k16_bf16_f32(c1, a, bt[2], bt[3]);
    for (int i = 0; i < 4; i++)
        D1[128 + (g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = c1[i];
}

/* M: four 8x8 b16 matrices, M[i][row][col] at M[(i*8 + row)*8 + col]; out[32][4] from
 * ldmatrix.trans of M and out[32..63][4] from ldmatrix (no .trans) of the transposes. */
__global__ void ldmatrix_trans_kernel(const uint16_t *M, uint32_t *out)
{
    __shared__ __align__(16) uint16_t ms[4 * 8 * 8];
    __shared__ __align__(16) uint16_t mt[4 * 8 * 8];
    int l = threadIdx.x;
    for (int e = l; e < 256; e += 32) {
        int i = e / 64, row = (e / 8) % 8, col = e % 8;
        ms[e] = M[e];
        mt[(i * 8 + col) * 8 + row] = M[e];
    }
    __syncthreads();
    uint32_t r1[4], r2[4];
    zi_emu_ldmatrix_x4(r1, ms + l * 8, 1); /* lane l: row l % 8 of matrix l / 8 */
    zi_emu_ldmatrix_x4(r2, mt + l * 8, 0);
    for (int i = 0; i < 4; i++) {
        out[l * 4 + i] = r1[i];
        out[128 + l * 4 + i] = r2[i];
    }
}

/* Thread t copies 16 bytes with src-size t % 17 into shared memory filled with 0xab; it
 * records the destination before the wait (the emulator completes copies only at the
 * wait), then after cp.async.wait_group 1 (its first group done, the second pending), then
 * after wait_group 0. */
__global__ void cp_async_kernel(const unsigned char *src, unsigned char *out)
{
    ZI_DYNAMIC_SMEM(unsigned char, sm); /* [2][32][16] */
    int t = threadIdx.x;
    memset(sm + t * 16, 0xab, 16);
    memset(sm + 512 + t * 16, 0xab, 16);
    __syncthreads();
    zi_emu_cp_async16(sm + t * 16, src + t * 16, t % 17);
    zi_emu_cp_async_commit_group();
    zi_emu_cp_async16(sm + 512 + t * 16, src + 512 + t * 16, 16);
    zi_emu_cp_async_commit_group();
    memcpy(out + t * 16, sm + t * 16, 16); /* before any wait */
    zi_emu_cp_async_wait_group(1);
    memcpy(out + 512 + t * 16, sm + t * 16, 16);
    memcpy(out + 1024 + t * 16, sm + 512 + t * 16, 16); /* second group: still pending */
    zi_emu_cp_async_wait_group(0);
    memcpy(out + 1536 + t * 16, sm + 512 + t * 16, 16);
}

/* Each of two warps' threads takes a ticket at each of 4 warp-wide steps (a __syncwarp
 * between them), after a barrier that every thread has started by: the order the
 * emulator runs the warps in. */
__global__ void ticket_kernel(int *counter, int *tickets)
{
    int t = threadIdx.x;
    __syncthreads();
    for (int step = 0; step < 4; step++) {
        tickets[t * 4 + step] = (*counter)++;
        __syncwarp();
    }
}

__global__ void flag_kernel(int *flag)
{
    if (threadIdx.x == 0 && blockIdx.x == 0)
        *flag += 1;
}

__global__ void smem_fill_kernel(int *flag, int bytes)
{
    ZI_DYNAMIC_SMEM(unsigned char, sm);
    for (int i = threadIdx.x; i < bytes; i += blockDim.x)
        sm[i] = (unsigned char)i;
    __syncthreads();
    if (threadIdx.x == 0)
        *flag = sm[bytes - 1];
}

__global__ void early_exit_kernel(float *out, int quitter)
{
    if ((int)threadIdx.x == quitter)
        return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);
}

__global__ void divergent_barrier_kernel(int *out)
{
    if (threadIdx.x < 16) {
        out[threadIdx.x] = 1;
        __syncthreads();
    } else {
        __syncthreads();
        out[threadIdx.x] = 2;
    }
}

__global__ void divergent_shuffle_kernel(float *out)
{
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16)
        v += __shfl_xor_sync(0xffffffffu, v, 16);
    else
        v -= __shfl_xor_sync(0xffffffffu, v, 16);
    out[threadIdx.x] = v;
}

__global__ void outside_mask_kernel(float *out)
{
    if (threadIdx.x < 16) /* lanes 0-15 read lanes 16-31, which are not in the mask */
        out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, (float)threadIdx.x, 16);
}

__global__ void deadlock_kernel(int *out)
{
    if (threadIdx.x == 0)
        __syncwarp(0x3u); /* lane 1 never gets there: it waits at the barrier */
    else
        __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void ldmatrix_global_kernel(const uint16_t *g)
{
    uint32_t r[4];
    zi_emu_ldmatrix_x4(r, g + (threadIdx.x % 8) * 8, 0);
}

/* ---- tests ---- */

void test_reduction(void)
{
    const int n = 10000, blocks = 7;
    std::vector<float> h(n);
    for (int i = 0; i < n; i++)
        h[i] = (float)(i % 17 - 8); /* integers: every order of summation is exact */
    float *in = dev_alloc<float>(n), *out = dev_alloc<float>(blocks);
    upload(in, h);
    unsigned long long before = zi_emu_launch_count();
    ZI_LAUNCH(reduce_kernel, blocks, dim3(32, 8), 0, 0, in, out, n);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(zi_emu_launch_count() == before + 1);
    std::vector<float> got = download(out, blocks);
    for (int b = 0; b < blocks; b++) {
        double want = 0;
        for (int i = b * 256; i < n; i += 256 * blocks)
            for (int j = i; j < i + 256 && j < n; j++)
                want += h[j];
        CHECK(got[b] == (float)want);
    }
    /* 96 threads: 3 warps, some of them with no data */
    ZI_LAUNCH(reduce_kernel, 1, 96, 0, 0, in, out, 50);
    CHECK(cudaGetLastError() == cudaSuccess);
    double want = 0;
    for (int i = 0; i < 50; i++)
        want += h[i];
    CHECK(download(out, 1)[0] == (float)want);
    int *iout = dev_alloc<int>(40);
    for (int lo = 0; lo <= 24; lo += 12) {
        ZI_LAUNCH(early_return_barrier_kernel, 2, 64, 0, 0, iout, lo);
        CHECK(cudaGetLastError() == cudaSuccess);
        std::vector<int> ih = download(iout, 40);
        for (int i = 0; i < 40; i++)
            CHECK(ih[i] == (39 - i) * 3);
    }
    cudaFree(iout);
    cudaFree(in);
    cudaFree(out);
    printf("ok reduction\n");
}

void test_index(void)
{
    const dim3 grid(2, 3, 2), block(4, 3, 5);
    const int total = 12 * 60;
    int *out = dev_alloc<int>(6 * total);
    ZI_LAUNCH(index_kernel, grid, block, 0, 0, out);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = download(out, 6 * total);
    int k = 0;
    for (unsigned bz = 0; bz < 2; bz++)
        for (unsigned by = 0; by < 3; by++)
            for (unsigned bx = 0; bx < 2; bx++)
                for (unsigned tz = 0; tz < 5; tz++)
                    for (unsigned ty = 0; ty < 3; ty++)
                        for (unsigned tx = 0; tx < 4; tx++, k++) {
                            const int *o = &h[6 * k];
                            CHECK(o[0] == (int)tx && o[1] == (int)ty && o[2] == (int)tz);
                            CHECK(o[3] == (int)bx && o[4] == (int)by && o[5] == (int)bz);
                        }
    cudaFree(out);
    printf("ok index\n");
}

void test_mma(void)
{
    std::vector<uint16_t> A(256), B(128);
    std::vector<float> C(128);
    for (auto &x : A)
        x = f2bf(frand() * 4.0f);
    for (auto &x : B)
        x = f2bf(frand() * 4.0f);
    for (auto &x : C)
        x = frand();
    uint16_t *dA = dev_alloc<uint16_t>(256), *dB = dev_alloc<uint16_t>(128);
    float *dC = dev_alloc<float>(128), *d1 = dev_alloc<float>(256), *d2 = dev_alloc<float>(128);
    upload(dA, A);
    upload(dB, B);
    upload(dC, C);
    size_t smem = (size_t)(16 * kLdA + 8 * kLdA + 16 * 16) * sizeof(uint16_t);
    ZI_LAUNCH(mma_kernel, 1, 32, smem, 0, dA, dB, dC, d1, d2);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<float> D1 = download(d1, 256), D2 = download(d2, 128);
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            double ab = 0, mag = 1e-6;
            for (int k = 0; k < 16; k++) {
                double t = (double)zi_emu_test_bf2f(A[m * 16 + k]) * zi_emu_test_bf2f(B[k * 8 + n]);
                ab += t;
                mag += fabs(t);
            }
            double want = C[m * 8 + n] + ab, tol = 1e-6 * (mag + 1.0);
            CHECK(fabs(D1[m * 8 + n] - want) <= tol);
            CHECK(fabs(D2[m * 8 + n] - want) <= tol);
            CHECK(fabs(D1[128 + m * 8 + n] - (want + ab)) <= 2 * tol);
        }
    cudaFree(dA);
    cudaFree(dB);
    cudaFree(dC);
    cudaFree(d1);
    cudaFree(d2);
    printf("ok mma.m16n8k16 via ldmatrix\n");
}

void test_ldmatrix_trans(void)
{
    std::vector<uint16_t> M(256);
    for (int e = 0; e < 256; e++)
        M[e] = (uint16_t)(e * 37 + 11);
    uint16_t *dM = dev_alloc<uint16_t>(256);
    uint32_t *dout = dev_alloc<uint32_t>(256);
    upload(dM, M);
    ZI_LAUNCH(ldmatrix_trans_kernel, 1, 32, 0, 0, dM, dout);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<uint32_t> out = download(dout, 256);
    for (int l = 0; l < 32; l++)
        for (int i = 0; i < 4; i++) {
            /* .trans of M equals the plain load of M's transpose */
            CHECK(out[l * 4 + i] == out[128 + l * 4 + i]);
            /* Figure 104: thread l holds row l/4, columns 2(l%4), 2(l%4)+1 of the matrix it
             * receives (lower column in the low half); with .trans that matrix is M^T */
            int g = l / 4, t = l % 4;
            uint32_t lo = M[(i * 8 + 2 * t) * 8 + g], hi = M[(i * 8 + 2 * t + 1) * 8 + g];
            CHECK(out[l * 4 + i] == (lo | hi << 16));
        }
    cudaFree(dM);
    cudaFree(dout);
    printf("ok ldmatrix .trans\n");
}

/* cp_async_kernel's input - 1024 bytes i * mul + add, also on the device (*dsrc) - and its
 * 2048-byte output buffer (*dout). */
static std::vector<unsigned char> cp_async_setup(int mul, int add, unsigned char **dsrc,
                                                 unsigned char **dout)
{
    std::vector<unsigned char> src(1024);
    for (int i = 0; i < 1024; i++)
        src[i] = (unsigned char)(i * mul + add);
    *dsrc = dev_alloc<unsigned char>(1024);
    *dout = dev_alloc<unsigned char>(2048);
    upload(*dsrc, src);
    return src;
}

void test_cp_async(void)
{
    unsigned char *dsrc, *dout;
    std::vector<unsigned char> src = cp_async_setup(7, 1, &dsrc, &dout);
    ZI_LAUNCH(cp_async_kernel, 1, 32, 1024, 0, dsrc, dout);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<unsigned char> out = download(dout, 2048);
    for (int t = 0; t < 32; t++)
        for (int b = 0; b < 16; b++) {
            int n = t % 17;
            CHECK(out[t * 16 + b] == 0xab);                                /* before the wait */
            CHECK(out[512 + t * 16 + b] == (b < n ? src[t * 16 + b] : 0)); /* zero fill */
            CHECK(out[1024 + t * 16 + b] == 0xab);                         /* group 2 pending */
            CHECK(out[1536 + t * 16 + b] == src[512 + t * 16 + b]);
        }
    cudaFree(dsrc);
    cudaFree(dout);
    printf("ok cp.async\n");
}

/* The eager order (zi_emu_set_eager): a cp.async lands when issued (the same kernel as
 * test_cp_async sees the copies before any wait), and a warp runs ahead: every ticket of
 * warp 0 comes before every ticket of warp 1, where the default order interleaves them at
 * each warp collective. */
void test_eager(void)
{
    unsigned char *dsrc, *dout;
    std::vector<unsigned char> src = cp_async_setup(5, 3, &dsrc, &dout);
    int *counter = dev_alloc<int>(1), *tickets = dev_alloc<int>(256);
    for (int eager = 0; eager <= 1; eager++) {
        zi_emu_set_eager(eager);
        ZI_LAUNCH(cp_async_kernel, 1, 32, 1024, 0, dsrc, dout);
        CHECK(cudaGetLastError() == cudaSuccess);
        std::vector<unsigned char> out = download(dout, 2048);
        int n = 5; /* thread 5: src-size 5 */
        for (int b = 0; b < 16; b++) {
            unsigned char landed = b < n ? src[5 * 16 + b] : 0;
            CHECK(out[5 * 16 + b] == (eager ? landed : 0xab)); /* before any wait */
            CHECK(out[1024 + 5 * 16 + b] == (eager ? src[512 + 5 * 16 + b] : 0xab));
        }
        CHECK(cudaMemset(counter, 0, sizeof(int)) == cudaSuccess);
        ZI_LAUNCH(ticket_kernel, 1, 64, 0, 0, counter, tickets);
        CHECK(cudaGetLastError() == cudaSuccess);
        std::vector<int> tk(256);
        CHECK(cudaMemcpy(tk.data(), tickets, 256 * sizeof(int), cudaMemcpyDeviceToHost) ==
              cudaSuccess);
        /* the warp of each ticket, in ticket order; count the switches between warps */
        std::vector<int> warp_of(256, -1);
        for (int t = 0; t < 64; t++)
            for (int s = 0; s < 4; s++)
                warp_of[tk[t * 4 + s]] = t / 32;
        int switches = 0;
        for (int i = 1; i < 256; i++)
            switches += warp_of[i] != warp_of[i - 1];
        /* eager: the barrier's last thread (warp 1) takes one ticket, then warp 0 runs all
         * its steps, then warp 1 all of its; the default order switches at every step */
        CHECK(eager ? switches == 2 : switches >= 6);
    }
    zi_emu_set_eager(0);
    cudaFree(dsrc);
    cudaFree(dout);
    cudaFree(counter);
    cudaFree(tickets);
    printf("ok eager order\n");
}

void test_launch_errors(void)
{
    int *flag = dev_alloc<int>(1);
    CHECK(cudaMemset(flag, 0, sizeof(int)) == cudaSuccess);
    CHECK(cudaGetLastError() == cudaSuccess);
    unsigned long long before = zi_emu_launch_count();
    ZI_LAUNCH(flag_kernel, 1, 2048, 0, 0, flag);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    CHECK(cudaGetLastError() == cudaSuccess); /* reset by the read */
    ZI_LAUNCH(flag_kernel, 1, dim3(32, 32, 2), 0, 0, flag);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    ZI_LAUNCH(flag_kernel, 1, dim3(1, 1, 65), 0, 0, flag);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    ZI_LAUNCH(flag_kernel, 0, 32, 0, 0, flag);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    ZI_LAUNCH(flag_kernel, dim3(1, 65536), 32, 0, 0, flag);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    /* dynamic shared memory: 48 KiB without opt-in */
    ZI_LAUNCH(smem_fill_kernel, 1, 128, 48 * 1024 + 16, 0, flag, 48 * 1024 + 16);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    CHECK(zi_emu_launch_count() == before); /* nothing ran */
    CHECK(download(flag, 1)[0] == 0);
    ZI_LAUNCH(smem_fill_kernel, 1, 128, 48 * 1024, 0, flag, 48 * 1024);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(download(flag, 1)[0] == (48 * 1024 - 1) % 256);
    CHECK(cudaFuncSetAttribute(smem_fill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               100 * 1024) == cudaSuccess);
    ZI_LAUNCH(smem_fill_kernel, 1, 128, 100 * 1024, 0, flag, 100 * 1024);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(download(flag, 1)[0] == (100 * 1024 - 1) % 256);
    ZI_LAUNCH(smem_fill_kernel, 1, 128, 100 * 1024 + 1, 0, flag, 100 * 1024 + 1);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    ZI_LAUNCH(flag_kernel, 3, 1024, 0, 0, flag);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(zi_emu_launch_count() == before + 3);
    cudaFree(flag);
    printf("ok launch errors\n");
}

/* Device-side undefined behaviour: each launch must abort (in a child) with a message naming
 * the kernel and what went wrong. */
void test_aborts(void)
{
    static float host[32]; /* pageable host memory */
    const struct {
        void (*launch)(void);
        const char *kernel, *what;
    } cases[] = {
        /* lanes 0-4 wait when lane 5 returns */
        {[] { ZI_LAUNCH(early_exit_kernel, 1, 32, 0, 0, dev_alloc<float>(32), 5); },
         "early_exit_kernel", "__shfl_xor_sync"},
        /* lane 0 gone before anyone arrives */
        {[] { ZI_LAUNCH(early_exit_kernel, 1, 32, 0, 0, dev_alloc<float>(32), 0); },
         "early_exit_kernel", "already returned"},
        /* warp 1 has 16 lanes, mask 32 */
        {[] { ZI_LAUNCH(early_exit_kernel, 1, 48, 0, 0, dev_alloc<float>(48), -1); },
         "early_exit_kernel", "do not exist"},
        {[] { ZI_LAUNCH(divergent_barrier_kernel, 1, 32, 0, 0, dev_alloc<int>(32)); },
         "divergent_barrier_kernel", "divergent __syncthreads"},
        {[] { ZI_LAUNCH(divergent_shuffle_kernel, 1, 32, 0, 0, dev_alloc<float>(32)); },
         "divergent_shuffle_kernel", "divergent warp collectives"},
        {[] { ZI_LAUNCH(outside_mask_kernel, 1, 32, 0, 0, dev_alloc<float>(32)); },
         "outside_mask_kernel", "not in the mask"},
        {[] { ZI_LAUNCH(deadlock_kernel, 1, 64, 0, 0, dev_alloc<int>(64)); }, "deadlock_kernel",
         "deadlock"},
        {[] { ZI_LAUNCH(early_exit_kernel, 1, 32, 0, 0, host, -1); }, "early_exit_kernel",
         "not device memory"},
        {[] { ZI_LAUNCH(ldmatrix_global_kernel, 1, 32, 0, 0, dev_alloc<uint16_t>(64)); },
         "ldmatrix_global_kernel", "not shared memory"},
    };
    for (const auto &c : cases)
        zi_emu_test_expect_abort(c.launch, c.kernel, c.what);
    printf("ok device-side errors abort\n");
}

} // namespace

int main(void)
{
    test_reduction();
    test_index();
    test_mma();
    test_ldmatrix_trans();
    test_cp_async();
    test_eager();
    test_launch_errors();
    test_aborts();
    return 0;
}
