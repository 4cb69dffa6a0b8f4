/*
 * emu.h - the CUDA emulator's internal contract between its two halves (tests only).
 *
 * The emulator lets the CUDA backend (kernels/) run unchanged on a CPU, so CI checks the
 * kernels, the cuBLAS/cuBLASLt calls and the VMM allocator against the CPU backend:
 *   - emu_runtime.c: the host APIs the backend links - the CUDA runtime subset (memory,
 *     streams, events, device queries, errors), cuBLAS/cuBLASLt GEMMs (column-major, as
 *     documented by NVIDIA) and the driver VMM entry points (on mmap + memfd).
 *   - emu_device.cpp + zi_cuda_emu.h: the device language for the kernels/ .cu files compiled by
 * the host C++ compiler - threadIdx & co, __syncthreads, warp shuffles, ldmatrix, mma.sync,
 *     cp.async, dynamic shared memory, <<<>>> launches (ZI_LAUNCH) - each CUDA thread a fiber.
 * Work is synchronous: a launch or a copy is done when the call returns; streams and
 * events only order and time.
 */
#ifndef ZI_EMU_H
#define ZI_EMU_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The runtime's last-error state (cudaGetLastError returns it and resets it to
 * cudaSuccess; cudaPeekAtLastError returns it). Launch errors are recorded here. */
void zi_emu_set_error(cudaError_t e);

/* cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) registry:
 * the most dynamic shared memory a launch of `fn` may ask for (48 KiB until raised, at
 * most zi_emu_max_optin_smem()). */
void zi_emu_func_set_max_smem(const void *fn, int bytes);
int zi_emu_func_max_smem(const void *fn);
int zi_emu_max_optin_smem(void); /* the emulated device's limit: 227 KiB, as on sm_90 */

/* 1 when [p, p + n) lies wholly inside device memory (a live cudaMalloc block or a mapped,
 * accessible VMM range); used to check copy directions and kernel arguments. */
int zi_emu_is_device_range(const void *p, size_t n);

/* Kernel launches since start (for tests of the emulator itself). */
unsigned long long zi_emu_launch_count(void);
void zi_emu_count_launch(void);

#ifdef __cplusplus
}
#endif

#endif
