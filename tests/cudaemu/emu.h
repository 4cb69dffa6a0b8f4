/*
 * emu.h - the CUDA emulator's internal contract between its two halves (tests only).
 *
 * The emulator lets the CUDA backend (kernels/) run unchanged on a CPU, so CI checks the
 * kernels, the cuBLAS/cuBLASLt calls and the VMM allocator against the CPU backend:
 *   - emu_runtime.c: the host APIs the backend links - the CUDA runtime subset (memory,
 *     streams, events, device queries, errors), cuBLAS/cuBLASLt GEMMs (column-major, as
 *     documented by NVIDIA) and the driver VMM entry points (on mmap + memfd) - and the
 *     stream queues;
 *   - emu_device.cpp + zi_cuda_emu.h: the device language for the kernels/ .cu files compiled by
 *     the host C++ compiler - threadIdx & co, __syncthreads, warp shuffles, ldmatrix, mma.sync,
 *     cp.async, dynamic shared memory, <<<>>> launches (ZI_LAUNCH) - each CUDA thread a fiber.
 *
 * Work is asynchronous, as on a GPU: a kernel launch, an async copy or memset, a GEMM or an
 * event record is queued on its stream (after the checks CUDA does at the call) and runs,
 * in issue order, only where CUDA guarantees completion - cudaStreamSynchronize,
 * cudaEventSynchronize, cudaDeviceSynchronize and the calls that imply them (see
 * emu_runtime.c, "stream queues"). So a host/device ordering bug of the backend (reading a
 * result or refilling a pinned buffer without waiting, freeing or unmapping memory queued
 * work still uses) shows up in CI. ZI_EMU_SYNC=1 (read once) runs every piece of work at
 * once instead, as the emulator did before, for debugging.
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

/* A sticky device fault (as cudaErrorIllegalAddress on a GPU): from here on no queued work
 * runs and every call that touches the device returns e (cudaGetLastError too, without
 * clearing it); the first call says `why` on stderr. Called by a kernel that faults
 * (kernels/zi_cuda_ops.cu, zi_cu_fault_kernel). zi_emu_context_revive() is for the
 * emulator's own tests: the context lives again. */
void zi_emu_context_lost(cudaError_t e, const char *why);
void zi_emu_context_revive(void);

/* cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) registry:
 * the most dynamic shared memory a launch of `fn` may ask for (48 KiB until raised, at
 * most zi_emu_max_optin_smem()). */
void zi_emu_func_set_max_smem(const void *fn, int bytes);
int zi_emu_func_max_smem(const void *fn);
/* the emulated device's limit: 227 KiB, as on sm_90, or ZI_EMU_SMEM_OPTIN_KB (48 .. 227,
 * read at each call: 99 plays sm_86/89) */
int zi_emu_max_optin_smem(void);

/* 1 when [p, p + n) lies wholly inside device memory (a live cudaMalloc block or a mapped,
 * accessible VMM range); used to check copy directions and kernel arguments. */
int zi_emu_is_device_range(const void *p, size_t n);

/* 1 when [p, p + n) lies wholly inside one live cudaHostAlloc/cudaMallocHost block
 * (page-locked host memory: with unified addressing a kernel may use it, and async copies
 * from or to it are truly asynchronous). */
int zi_emu_is_pinned_range(const void *p, size_t n);

/* Kernel launches accepted (checked and queued) since start (for the emulator's tests). */
unsigned long long zi_emu_launch_count(void);
void zi_emu_count_launch(void);

/* ---- stream queues ---- */

/* Queues run(ctx) on `stream` (NULL / cudaStreamLegacy, cudaStreamPerThread or a live
 * stream) after the work already queued there; destroy(ctx) (may be NULL) is called once
 * run has returned. With ZI_EMU_SYNC=1 it runs before zi_emu_enqueue returns. `what` (a
 * string that outlives the work, e.g. the kernel's name) names the work in messages.
 * A dead stream: cudaErrorInvalidResourceHandle, nothing queued, destroy(ctx) called. */
cudaError_t zi_emu_enqueue(cudaStream_t stream, const char *what, void (*run)(void *ctx),
                           void (*destroy)(void *ctx), void *ctx);

/* Pieces of work queued on all streams and not yet run (for the emulator's tests). */
unsigned long long zi_emu_pending(void);

/* 1 when ZI_EMU_SYNC=1 makes work run at once. */
int zi_emu_sync_mode(void);

/* 1 when ZI_EMU_ORDER=ahead: before each piece of work runs, every other stream runs as far
 * as its queue goes (a write-after-read hazard between streams shows); 0 for the default,
 * ZI_EMU_ORDER=late (other streams run only when waited for: read-after-write shows). */
int zi_emu_order_ahead(void);

#ifdef __cplusplus
}
#endif

#endif
