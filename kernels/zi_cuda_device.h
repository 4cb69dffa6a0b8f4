/*
 * zi_cuda_device.h - the two spellings of the CUDA device language that a host C++
 * compiler cannot parse, as macros, so that the kernels/X.cu files compile both with nvcc and, for
 * the CPU emulator of the CUDA subset we use (tests/cudaemu, ZI_CUDA_EMU builds), with g++.
 * Every kernels/X.cu includes this header first.
 *
 *   ZI_LAUNCH(kernel, grid, block, smem, stream, args...);
 *       nvcc: kernel<<<grid, block, smem, stream>>>(args...);
 *   ZI_DYNAMIC_SMEM(type, name);
 *       nvcc: extern __shared__ __align__(16) type name[];  (the block's dynamic shared memory)
 *
 * Under ZI_CUDA_EMU the emulator's zi_cuda_emu.h (tests/cudaemu, on the include path of
 * those builds) defines both, plus threadIdx & co, __syncthreads, the warp intrinsics and
 * the launcher; kernels/zi_cuda_attn.cu gives its inline-PTX helpers emulator bodies.
 */
#ifndef ZI_CUDA_DEVICE_H
#define ZI_CUDA_DEVICE_H

#ifdef ZI_CUDA_EMU
#include "zi_cuda_emu.h"
#else
#define ZI_LAUNCH(kernel, grid, block, smem, stream, ...)                                          \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define ZI_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]
#endif

#endif
