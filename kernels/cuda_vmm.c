/*
 * cuda_vmm.c - driver VMM chunk provider for the allocator (see zi_vmm.h).
 *
 * Each map call is one physical allocation (handle); the handles are kept in an array
 * sorted by offset so that unmap finds the one it must release. cuMemSetAccess is
 * called per mapping (the driver requires access to be set on mapped ranges only).
 * Reference: CUDA Driver API, "Virtual Memory Management"; the design follows PyTorch's
 * expandable segments (one reservation, pages mapped on demand).
 */
#include "zi_vmm.h"
#include "zi_err.h"
#include "zi_vec.h"

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Driver entry points, resolved at run time (their ABI has been stable since 10.2). */
typedef CUresult (*zi_pfn_cuDeviceGet)(CUdevice *, int);
typedef CUresult (*zi_pfn_cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
typedef CUresult (*zi_pfn_cuMemGetAllocationGranularity)(size_t *, const CUmemAllocationProp *,
                                                         CUmemAllocationGranularity_flags);
typedef CUresult (*zi_pfn_cuMemAddressReserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr,
                                               unsigned long long);
typedef CUresult (*zi_pfn_cuMemAddressFree)(CUdeviceptr, size_t);
typedef CUresult (*zi_pfn_cuMemCreate)(CUmemGenericAllocationHandle *, size_t,
                                       const CUmemAllocationProp *, unsigned long long);
typedef CUresult (*zi_pfn_cuMemRelease)(CUmemGenericAllocationHandle);
typedef CUresult (*zi_pfn_cuMemMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                                    unsigned long long);
typedef CUresult (*zi_pfn_cuMemUnmap)(CUdeviceptr, size_t);
typedef CUresult (*zi_pfn_cuMemSetAccess)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
typedef CUresult (*zi_pfn_cuGetErrorString)(CUresult, const char **);

typedef struct zi_vmm_handle {
    uint64_t off, size;
    CUmemGenericAllocationHandle h;
} zi_vmm_handle;

struct zi_vmm {
    int device;
    CUdevice cudev;
    cudaStream_t stream;
    CUdeviceptr base;
    uint64_t reserve, gran;
    CUmemAllocationProp prop;
    CUmemAccessDesc access;
    zi_vmm_handle *handles;
    size_t nhandles, caphandles;
    unsigned long release_failures; /* handles cuMemRelease refused after an unmap (leaked) */
    struct {
        zi_pfn_cuDeviceGet DeviceGet;
        zi_pfn_cuDeviceGetAttribute DeviceGetAttribute;
        zi_pfn_cuMemGetAllocationGranularity MemGetAllocationGranularity;
        zi_pfn_cuMemAddressReserve MemAddressReserve;
        zi_pfn_cuMemAddressFree MemAddressFree;
        zi_pfn_cuMemCreate MemCreate;
        zi_pfn_cuMemRelease MemRelease;
        zi_pfn_cuMemMap MemMap;
        zi_pfn_cuMemUnmap MemUnmap;
        zi_pfn_cuMemSetAccess MemSetAccess;
        zi_pfn_cuGetErrorString GetErrorString;
    } fn;
};

static const char *zi_vmm_errstr(const zi_vmm *v, CUresult r)
{
    const char *s = NULL;
    if (v->fn.GetErrorString && v->fn.GetErrorString(r, &s) == CUDA_SUCCESS && s)
        return s;
    return "unknown driver error";
}

static int zi_vmm_sym(const char *name, void **fn)
{
    enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    cudaError_t e = cudaGetDriverEntryPointByVersion(name, fn, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !*fn) {
        cudaGetLastError(); /* the caller falls back to cudaMalloc: leave no error pending */
        return zi_errorf(ZI_EBACKEND, "cuda vmm: driver entry point %s not available (%s)", name,
                         e != cudaSuccess ? cudaGetErrorString(e) : "symbol not found");
    }
    return ZI_OK;
}

#define ZI_VMM_SYM(v, name) zi_vmm_sym("cu" #name, (void **)&(v)->fn.name)

/* The driver calls below act on the calling thread's current context. The worker maps and
 * trims on its job thread, which did not create the backend and may not have made a
 * runtime call yet: cudaSetDevice makes the device's primary context current there. */
static int zi_vmm_bind(const zi_vmm *v)
{
    cudaError_t e = cudaSetDevice(v->device);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return zi_errorf(ZI_EBACKEND, "cuda vmm: cudaSetDevice(%d): %s", v->device,
                         cudaGetErrorString(e));
    }
    return ZI_OK;
}

static int zi_vmm_map(void *ud, uint64_t off, uint64_t size)
{
    zi_vmm *v = ud;
    int brc = zi_vmm_bind(v);
    if (brc)
        return brc;
    zi_vmm_handle *nh = zi_grow(v->handles, &v->caphandles, v->nhandles + 1, sizeof *nh, 64);
    if (!nh)
        return zi_errorf(ZI_ENOMEM, "cuda vmm: out of host memory");
    v->handles = nh;
    CUmemGenericAllocationHandle h;
    CUresult r = v->fn.MemCreate(&h, (size_t)size, &v->prop, 0);
    if (r != CUDA_SUCCESS)
        return zi_errorf(r == CUDA_ERROR_OUT_OF_MEMORY ? ZI_ENOMEM : ZI_EBACKEND,
                         "cuMemCreate(%llu bytes) on device %d: %s", (unsigned long long)size,
                         v->device, zi_vmm_errstr(v, r));
    CUdeviceptr at = v->base + (CUdeviceptr)off;
    r = v->fn.MemMap(at, (size_t)size, 0, h, 0);
    if (r != CUDA_SUCCESS) {
        v->fn.MemRelease(h);
        return zi_errorf(ZI_EBACKEND, "cuMemMap(offset %llu, %llu bytes): %s",
                         (unsigned long long)off, (unsigned long long)size, zi_vmm_errstr(v, r));
    }
    r = v->fn.MemSetAccess(at, (size_t)size, &v->access, 1);
    if (r != CUDA_SUCCESS) {
        v->fn.MemUnmap(at, (size_t)size);
        v->fn.MemRelease(h);
        return zi_errorf(ZI_EBACKEND, "cuMemSetAccess(offset %llu, %llu bytes): %s",
                         (unsigned long long)off, (unsigned long long)size, zi_vmm_errstr(v, r));
    }
    size_t at_i = v->nhandles;
    while (at_i > 0 && v->handles[at_i - 1].off > off)
        at_i--;
    memmove(&v->handles[at_i + 1], &v->handles[at_i], (v->nhandles - at_i) * sizeof *v->handles);
    v->handles[at_i].off = off;
    v->handles[at_i].size = size;
    v->handles[at_i].h = h;
    v->nhandles++;
    return ZI_OK;
}

static int zi_vmm_unmap(void *ud, uint64_t off, uint64_t size)
{
    zi_vmm *v = ud;
    int brc = zi_vmm_bind(v);
    if (brc)
        return brc;
    size_t lo = 0, hi = v->nhandles;
    while (lo < hi) { /* binary search for the handle mapped at `off` */
        size_t mid = lo + (hi - lo) / 2;
        if (v->handles[mid].off < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == v->nhandles || v->handles[lo].off != off || v->handles[lo].size != size)
        return zi_errorf(ZI_EINVAL, "cuda vmm: no mapping at offset %llu of %llu bytes",
                         (unsigned long long)off, (unsigned long long)size);
    /* Kernels queued earlier may still use the range: wait for them first. */
    cudaError_t e = v->stream ? cudaStreamSynchronize(v->stream) : cudaDeviceSynchronize();
    if (e != cudaSuccess)
        return zi_errorf(ZI_EBACKEND, "cuda vmm: synchronise before unmap: %s",
                         cudaGetErrorString(e));
    CUresult r = v->fn.MemUnmap(v->base + (CUdeviceptr)off, (size_t)size);
    if (r != CUDA_SUCCESS)
        return zi_errorf(ZI_EBACKEND, "cuMemUnmap(offset %llu, %llu bytes): %s",
                         (unsigned long long)off, (unsigned long long)size, zi_vmm_errstr(v, r));
    /* Unmapped: the range is gone from the address space whatever the release says, so
     * the allocator must see it unmapped (ZI_OK); a failed release only leaks the physical
     * handle, which is counted. */
    r = v->fn.MemRelease(v->handles[lo].h);
    memmove(&v->handles[lo], &v->handles[lo + 1], (v->nhandles - lo - 1) * sizeof *v->handles);
    v->nhandles--;
    if (r != CUDA_SUCCESS)
        v->release_failures++;
    return ZI_OK;
}

int zi_vmm_open(int device, uint64_t reserve, void *stream, zi_vmm **out)
{
    *out = NULL;
    int rc;
    zi_vmm *v = calloc(1, sizeof *v);
    if (!v)
        return zi_errorf(ZI_ENOMEM, "cuda vmm: out of host memory");
    v->device = device;
    v->stream = (cudaStream_t)stream;
    if ((rc = ZI_VMM_SYM(v, GetErrorString)) != ZI_OK || (rc = ZI_VMM_SYM(v, DeviceGet)) != ZI_OK ||
        (rc = ZI_VMM_SYM(v, DeviceGetAttribute)) != ZI_OK ||
        (rc = ZI_VMM_SYM(v, MemGetAllocationGranularity)) != ZI_OK ||
        (rc = ZI_VMM_SYM(v, MemAddressReserve)) != ZI_OK ||
        (rc = ZI_VMM_SYM(v, MemAddressFree)) != ZI_OK || (rc = ZI_VMM_SYM(v, MemCreate)) != ZI_OK ||
        (rc = ZI_VMM_SYM(v, MemRelease)) != ZI_OK || (rc = ZI_VMM_SYM(v, MemMap)) != ZI_OK ||
        (rc = ZI_VMM_SYM(v, MemUnmap)) != ZI_OK || (rc = ZI_VMM_SYM(v, MemSetAccess)) != ZI_OK)
        goto err;

    CUresult r = v->fn.DeviceGet(&v->cudev, device);
    int vmm_ok = 0;
    if (r == CUDA_SUCCESS)
        r = v->fn.DeviceGetAttribute(
            &vmm_ok, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, v->cudev);
    if (r != CUDA_SUCCESS) {
        rc = zi_errorf(ZI_EBACKEND, "cuda vmm: device %d: %s", device, zi_vmm_errstr(v, r));
        goto err;
    }
    if (!vmm_ok) {
        rc = zi_errorf(ZI_EBACKEND,
                       "cuda vmm: device %d does not support virtual memory management "
                       "(needed by the allocator)",
                       device);
        goto err;
    }
    v->prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    v->prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    v->prop.location.id = device;
    v->access.location = v->prop.location;
    v->access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    /* cuMemCreate/cuMemMap need multiples of the MINIMUM granularity; chunks use the
     * RECOMMENDED one (equal on current GPUs), rounded to a multiple of the minimum */
    size_t gran = 0, gmin = 0;
    r = v->fn.MemGetAllocationGranularity(&gmin, &v->prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (r == CUDA_SUCCESS && gmin != 0)
        r = v->fn.MemGetAllocationGranularity(&gran, &v->prop,
                                              CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    if (r != CUDA_SUCCESS || gran == 0 || gmin == 0) {
        rc = zi_errorf(ZI_EBACKEND, "cuMemGetAllocationGranularity: %s", zi_vmm_errstr(v, r));
        goto err;
    }
    v->gran = (gran + gmin - 1) / gmin * gmin;
    if (reserve == 0) {
        size_t free_b = 0, total_b = 0;
        cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
        if (e != cudaSuccess) {
            cudaGetLastError();
            rc = zi_errorf(ZI_EBACKEND, "cudaMemGetInfo: %s", cudaGetErrorString(e));
            goto err;
        }
        /* Twice the physical memory: address space is free, and the slack lets a
         * request fit even when trims have left holes in the range. */
        reserve = 2 * (uint64_t)total_b;
    }
    v->reserve = (reserve + v->gran - 1) / v->gran * v->gran;
    r = v->fn.MemAddressReserve(&v->base, (size_t)v->reserve, (size_t)v->gran, 0, 0);
    if (r != CUDA_SUCCESS) {
        rc = zi_errorf(ZI_EBACKEND, "cuMemAddressReserve(%llu bytes): %s",
                       (unsigned long long)v->reserve, zi_vmm_errstr(v, r));
        goto err;
    }
    /* A probe: one granule mapped, made accessible and released again. A driver that
     * reports VMM support but refuses its calls (a sandboxed or virtualised GPU) fails
     * here, where the caller can still fall back to cudaMalloc, instead of at the first
     * allocation. */
    if ((rc = zi_vmm_map(v, 0, v->gran)) != ZI_OK || (rc = zi_vmm_unmap(v, 0, v->gran)) != ZI_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", zi_errmsg());
        zi_vmm_close(v);
        return zi_errorf(rc, "cuda vmm: device %d: a test mapping failed: %s", device, why);
    }
    *out = v;
    return ZI_OK;
err:
    free(v);
    return rc;
}

void zi_vmm_close(zi_vmm *v)
{
    if (!v)
        return;
    if (v->nhandles)
        (void)(v->stream ? cudaStreamSynchronize(v->stream) : cudaDeviceSynchronize());
    for (size_t i = 0; i < v->nhandles; i++) {
        v->fn.MemUnmap(v->base + (CUdeviceptr)v->handles[i].off, (size_t)v->handles[i].size);
        v->fn.MemRelease(v->handles[i].h);
    }
    if (v->base)
        v->fn.MemAddressFree(v->base, (size_t)v->reserve);
    free(v->handles);
    free(v);
}

uint64_t zi_vmm_granularity(const zi_vmm *v)
{
    return v->gran;
}

uint64_t zi_vmm_reserve(const zi_vmm *v)
{
    return v->reserve;
}

void *zi_vmm_base(const zi_vmm *v)
{
    return (void *)(uintptr_t)v->base;
}

uint64_t zi_vmm_handles(const zi_vmm *v)
{
    return v->nhandles;
}

zi_alloc_provider zi_vmm_provider(zi_vmm *v)
{
    zi_alloc_provider p = {v, zi_vmm_map, zi_vmm_unmap};
    return p;
}
