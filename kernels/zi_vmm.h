/*
 * zi_vmm.h - the CUDA driver's virtual memory management as a zi_alloc chunk provider.
 *
 * One virtual range is reserved per device (cuMemAddressReserve); map(offset, size)
 * creates one physical allocation (cuMemCreate, pinned device memory), maps it at
 * base + offset (cuMemMap) and makes it read/write for the device (cuMemSetAccess);
 * unmap synchronises the backend's stream, then cuMemUnmap + cuMemRelease.
 *
 * The driver API is reached through cudaGetDriverEntryPointByVersion at run time, so the
 * binary links only cudart_static and starts on machines without a GPU driver.
 * Only compiled with CUDA (kernels/cuda_vmm.c).
 */
#ifndef ZI_VMM_H
#define ZI_VMM_H

#include "zi_alloc.h"

#include <stdint.h>

typedef struct zi_vmm zi_vmm;

/* Reserves `reserve` bytes (0: twice the device's memory; rounded up to the granularity)
 * of address space on the current device `device` (cudaSetDevice done by the caller).
 * `stream` (a cudaStream_t, may be NULL) is synchronised before any unmap. */
int zi_vmm_open(int device, uint64_t reserve, void *stream, zi_vmm **out);
/* Releases every mapping still present and frees the address range. */
void zi_vmm_close(zi_vmm *v);

uint64_t zi_vmm_granularity(const zi_vmm *v);
uint64_t zi_vmm_reserve(const zi_vmm *v);
/* Device address of offset 0 of the range. */
void *zi_vmm_base(const zi_vmm *v);
/* Physical allocations currently mapped. */
uint64_t zi_vmm_handles(const zi_vmm *v);

/* The provider for zi_alloc_new (ud = v). */
zi_alloc_provider zi_vmm_provider(zi_vmm *v);

#endif
