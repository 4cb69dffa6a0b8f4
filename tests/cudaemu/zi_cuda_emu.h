/*
 * zi_cuda_emu.h - the CUDA device language for the kernels/X.cu files compiled by the host C++
 * compiler (ZI_CUDA_EMU builds): included by kernels/zi_cuda_device.h. Implemented by
 * emu_device.cpp (tests only).
 *
 * What it gives a kernel source: the qualifiers (__global__, __device__, __host__,
 * __forceinline__ from the toolkit's host_defines.h; __shared__ as static storage, which is
 * per block because blocks run one at a time; __launch_bounds__ ignored), threadIdx /
 * blockIdx / blockDim / gridDim (the running fiber's), __syncthreads, __shfl_*_sync, the bit
 * casts and device math the host lacks, the template form of cudaFuncSetAttribute, the
 * warp-level matrix instructions our kernels issue as inline PTX (ldmatrix, mma.sync,
 * cp.async: kernels/zi_cuda_attn.cu calls zi_emu_* under ZI_CUDA_EMU), ZI_DYNAMIC_SMEM and
 * ZI_LAUNCH(kernel, grid, block, smem, stream, args...).
 *
 * Semantics: a launch is checked as CUDA checks it (errors through zi_emu_set_error, the
 * kernel does not run) and queued on its stream with a copy of its arguments (emu.h: it
 * runs when the host waits for the stream; at once with ZI_EMU_SYNC=1); then it runs
 * block after block, every CUDA thread a fiber, switched only at barriers and warp
 * collectives. Device-side undefined behaviour that a GPU would not report (a collective
 * not reached by every lane of its mask, divergent __syncthreads, deadlock, misaligned or
 * non-shared ldmatrix/cp.async addresses, pointer arguments that are neither device memory
 * nor page-locked host memory - at the launch, or again when the queued kernel starts)
 * aborts with a message naming the kernel. Static __shared__ data above the 48 KiB a
 * kernel may declare (sm_90: "Maximum amount of shared memory per thread block" without
 * opt-in) aborts at its launch, as ptxas would refuse to build it.
 * Limits: one launch at a time (a process-wide lock); no cooperative groups, atomics,
 * clusters or concurrency between streams; __launch_bounds__ is not checked.
 * ASan builds switch fibers with swapcontext, which makes ASan print a one-time warning
 * about makecontext/swapcontext support; the switches are annotated as ASan documents.
 * Reference: CUDA C++ Programming Guide (execution configuration, __syncthreads, warp
 * shuffle functions); PTX ISA 9.0, sections 9.7.14.5.8 (mma.m16n8k16 fragments),
 * 9.7.14.5.15 (ldmatrix), 9.7.9.25.3 (cp.async and its groups).
 */
#ifndef ZI_CUDA_EMU_H
#define ZI_CUDA_EMU_H

#ifndef __cplusplus
#error "zi_cuda_emu.h is the device language of kernels/X.cu: compile them as C++"
#endif

#include <cuda_runtime_api.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

#include "emu.h"

/* host_defines.h makes __global__/__device__/__host__ empty for a host compiler, but
 * __shared__ too: here a __shared__ array must be one object for the whole block. */
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

/* ---- built-in variables (of the fiber that runs) ---- */
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
static constexpr int warpSize = 32;

/* ---- synchronisation and warp shuffles ---- */
void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);
int __shfl_xor_sync(unsigned mask, int var, int lane_mask, int width = 32);
unsigned __shfl_xor_sync(unsigned mask, unsigned var, int lane_mask, int width = 32);
long long __shfl_xor_sync(unsigned mask, long long var, int lane_mask, int width = 32);
unsigned long long __shfl_xor_sync(unsigned mask, unsigned long long var, int lane_mask,
                                   int width = 32);
float __shfl_xor_sync(unsigned mask, float var, int lane_mask, int width = 32);
double __shfl_xor_sync(unsigned mask, double var, int lane_mask, int width = 32);
int __shfl_sync(unsigned mask, int var, int src_lane, int width = 32);
unsigned __shfl_sync(unsigned mask, unsigned var, int src_lane, int width = 32);
float __shfl_sync(unsigned mask, float var, int src_lane, int width = 32);
double __shfl_sync(unsigned mask, double var, int src_lane, int width = 32);
int __shfl_down_sync(unsigned mask, int var, unsigned delta, int width = 32);
float __shfl_down_sync(unsigned mask, float var, unsigned delta, int width = 32);
double __shfl_down_sync(unsigned mask, double var, unsigned delta, int width = 32);
int __shfl_up_sync(unsigned mask, int var, unsigned delta, int width = 32);
float __shfl_up_sync(unsigned mask, float var, unsigned delta, int width = 32);

/* ---- bit casts, conversions and math a host libm lacks ---- */
/* __T_as_U: the bits of v reinterpreted as a U (CUDA Math API, "Type Casting Intrinsics") */
#define ZI_EMU_BIT_CAST(name, To, From)                                                            \
    static inline To name(From v)                                                                  \
    {                                                                                              \
        static_assert(sizeof(To) == sizeof(From), #name ": types of different sizes");             \
        To t;                                                                                      \
        memcpy(&t, &v, sizeof t);                                                                  \
        return t;                                                                                  \
    }
ZI_EMU_BIT_CAST(__int_as_float, float, int)
ZI_EMU_BIT_CAST(__uint_as_float, float, unsigned)
ZI_EMU_BIT_CAST(__float_as_int, int, float)
ZI_EMU_BIT_CAST(__float_as_uint, unsigned, float)
#undef ZI_EMU_BIT_CAST
/* cvt.rni.s32.f32: nearest even, NaN -> 0, saturating */
static inline int __float2int_rn(float x)
{
    if (x != x)
        return 0;
    if (x >= 2147483648.0f)
        return 2147483647;
    if (x <= -2147483648.0f)
        return (-2147483647 - 1);
    return (int)nearbyintf(x);
}
static inline float rsqrtf(float x)
{
    return 1.0f / sqrtf(x);
}
static inline float __fdividef(float a, float b)
{
    return a / b;
}
/* generic -> .shared window address; aborts unless p is shared memory of the block */
size_t __cvta_generic_to_shared(const void *p);

/* ---- warp-level matrix instructions and cp.async (PTX), as called by kernels ---- */
/* ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 r, [row_addr] (PTX ISA 9.7.14.5.15) */
void zi_emu_ldmatrix_x4(uint32_t r[4], const void *row_addr, int trans);
/* mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {c}, {a}, {b0, b1}, {c}
 * (PTX ISA 9.7.14.5.8): c += A B, fp32 accumulation */
void zi_emu_mma_m16n8k16_bf16_f32(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);
/* cp.async.cg.shared.global [smem], [gmem], 16, src_bytes (PTX ISA 9.7.9.25.3.1) */
void zi_emu_cp_async16(void *smem, const void *gmem, int src_bytes);
void zi_emu_cp_async_commit_group(void);
void zi_emu_cp_async_wait_group(int n);
/* The emulator's "eager" order (ZI_EMU_CP_ASYNC=eager sets it at start): cp.async copies
 * land when issued and a warp runs ahead of the others as far as the barriers allow (1), or
 * copies land at their wait and woken lanes queue behind the other warps (0, the default).
 * For tests; set it between launches. */
void zi_emu_set_eager(int on);

/* ---- the runtime's C++ template overloads ---- */
template <class T>
static inline cudaError_t cudaFuncSetAttribute(T *entry, enum cudaFuncAttribute attr, int value)
{
    return ::cudaFuncSetAttribute(reinterpret_cast<const void *>(entry), attr, value);
}

/* ---- dynamic shared memory and the launcher ---- */
namespace zi_emu
{

/* The running block's dynamic shared memory (a heap buffer of exactly the launch's size). */
void *dynamic_smem(void);

struct launch_config {
    const char *name; /* the kernel's name, for messages */
    const void *fn;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
};

/* Checks the configuration as cudaLaunchKernel does; 0 when the launch must not run (the
 * error is recorded with zi_emu_set_error). */
int launch_check(const launch_config &cfg);
/* Aborts unless `p` (kernel argument `index`) is NULL, device memory or page-locked host
 * memory; `running`: checked again when the queued launch starts. */
void check_pointer_arg(const launch_config &cfg, int index, const void *p, bool running);
/* Queues a checked launch on cfg.stream (zi_emu_enqueue): run(ctx) when the stream gets
 * there, destroy(ctx) afterwards; a dead stream is a launch error. */
void launch_enqueue(const launch_config &cfg, void (*run)(void *), void (*destroy)(void *),
                    void *ctx);
/* Runs every block of the grid, every thread of a block as a fiber calling body(ctx). */
void launch_run(const launch_config &cfg, void (*body)(void *), void *ctx);

template <class... P> class launcher
{
  public:
    typedef void (*kernel_fn)(P...);
    launcher(kernel_fn fn, const char *name, dim3 grid, dim3 block, size_t smem,
             cudaStream_t stream)
        : fn_(fn), cfg_{name, reinterpret_cast<const void *>(fn), grid, block, smem, stream}
    {
    }

    template <class... A> void operator()(A &&...args) const
    {
        static_assert(sizeof...(A) == sizeof...(P), "kernel launched with a wrong argument count");
        if (!launch_check(cfg_))
            return;
        /* converted once to the parameter types and kept by value with the queued launch,
         * as the launch does (the caller may change its variables once it returns); every
         * thread then gets its own copy */
        queued *q = new queued{fn_, cfg_, params_t(std::forward<A>(args)...)};
        check_args(*q, false);
        launch_enqueue(q->cfg, &run, &destroy, q);
    }

  private:
    typedef std::tuple<typename std::decay<P>::type...> params_t;
    struct queued {
        kernel_fn fn;
        launch_config cfg;
        params_t params;
    };

    static void invoke(void *p)
    {
        const queued *q = static_cast<const queued *>(p);
        std::apply(q->fn, q->params);
    }

    static void run(void *p)
    {
        const queued *q = static_cast<const queued *>(p);
        check_args(*q, true); /* what the arguments point to may be gone by now */
        launch_run(q->cfg, &invoke, p);
    }

    static void destroy(void *p)
    {
        delete static_cast<queued *>(p);
    }

    template <class T>
    static void check_arg(const launch_config &cfg, int i, const T &v, bool running)
    {
        if constexpr (std::is_pointer<T>::value &&
                      !std::is_function<typename std::remove_pointer<T>::type>::value)
            check_pointer_arg(cfg, i, static_cast<const void *>(v), running);
        else {
            (void)cfg;
            (void)i;
            (void)v;
            (void)running;
        }
    }

    template <size_t... I>
    static void check_args_at(const queued &q, bool running, std::index_sequence<I...>)
    {
        (check_arg(q.cfg, (int)I, std::get<I>(q.params), running), ...);
        (void)q;
        (void)running;
    }

    static void check_args(const queued &q, bool running)
    {
        check_args_at(q, running, std::index_sequence_for<P...>{});
    }

    kernel_fn fn_;
    launch_config cfg_;
};

template <class... P>
launcher<P...> make_launcher(void (*fn)(P...), const char *name, dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream)
{
    return launcher<P...>(fn, name, grid, block, smem, stream);
}

} // namespace zi_emu

#define ZI_LAUNCH(kernel, grid, block, smem, stream, ...)                                          \
    ::zi_emu::make_launcher(kernel, #kernel, (grid), (block), (size_t)(smem), (stream))(__VA_ARGS__)
#define ZI_DYNAMIC_SMEM(type, name) type *const name = static_cast<type *>(::zi_emu::dynamic_smem())

#endif
