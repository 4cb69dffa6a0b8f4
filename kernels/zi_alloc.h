/*
 * zi_alloc.h - device memory allocator policy "like expandable segments" (pure C).
 *
 * One large virtual range is reserved once per device; physical memory is mapped into
 * it on demand, in chunks that are multiples of the allocation granularity, and
 * unmapped again by zi_alloc_trim(). Inside the mapped range, blocks are handed out
 * best-fit with splitting, and coalesced with both neighbours on free. The policy knows
 * nothing about CUDA: it talks to a chunk provider (map/unmap of [offset, offset+size)
 * of the range). kernels/cuda_vmm.c provides the driver VMM provider; the unit tests use
 * a host provider that only accounts, so every rule here runs on the CPU.
 *
 * Address space model: the range [0, reserve) is cut into blocks, in address order,
 * each ALLOCATED, FREE (mapped, available) or UNMAPPED (no physical memory). Pages
 * (granularity) are mapped exactly where FREE or ALLOCATED blocks lie. Rules:
 *  1. A request is served from the best-fitting FREE block (smallest that fits, lowest
 *     address on ties), except the FREE block that borders unmapped space (the growth
 *     front), which is kept for rule 2 so that a replayed job places every block where
 *     its first run did.
 *  2. Otherwise the allocator grows: among the runs of FREE/UNMAPPED blocks it picks the
 *     placement (run start or run end) that needs the fewest new pages, and maps them
 *     (at least `min_map` bytes per growth, to keep the number of chunks small).
 *  3. If mapping fails (the device is out of memory) or would pass `limit`, fully free
 *     chunks are unmapped (trim) and the request is tried once more; then ZI_ENOMEM.
 *  4. zi_alloc_trim() unmaps only whole chunks that hold no allocated byte.
 * Consequence: after a job has run, running the same job again maps nothing new
 * (tests/unit/test_alloc.c checks it), unless a trim happened in between.
 *
 * Stream order: the CUDA backend runs every kernel on one stream, so a block freed by
 * the host can be handed out again at once - any later use is queued after the last use
 * of its previous owner. The provider synchronises the stream before it unmaps.
 *
 * Costs: a request scans the block list (O(blocks), a few hundred in the pipeline);
 * free looks its block up by binary search. Not thread-safe: one allocator per backend.
 */
#ifndef ZI_ALLOC_H
#define ZI_ALLOC_H

#include <stdint.h>

/* Backs or releases [offset, offset + size) of the reserved range. size and offset are
 * multiples of the granularity. unmap is only called with a range an earlier map call
 * returned (one chunk). map returns ZI_OK, or a status with zi_errorf() set. */
typedef struct zi_alloc_provider {
    void *ud;
    int (*map)(void *ud, uint64_t offset, uint64_t size);
    int (*unmap)(void *ud, uint64_t offset, uint64_t size);
} zi_alloc_provider;

typedef struct zi_alloc_config {
    uint64_t reserve;     /* bytes of address space; rounded down to the granularity */
    uint64_t granularity; /* physical page size (cuMemGetAllocationGranularity); power of 2 */
    uint64_t min_map;     /* grow by at least this (rounded up to granularity); 0: one page */
    uint64_t align;       /* block alignment, power of 2 <= granularity; 0: 512 */
    uint64_t limit;       /* most bytes mapped at once; 0: the whole reserve */
} zi_alloc_config;

typedef struct zi_alloc_stats {
    uint64_t reserve;       /* virtual range size */
    uint64_t reserved;      /* bytes mapped to physical memory now */
    uint64_t peak_reserved; /* high-water mark of `reserved` since the last peak reset */
    uint64_t allocated;     /* bytes handed out now (sizes rounded to the alignment) */
    uint64_t peak;          /* high-water mark of `allocated` since the last peak reset */
    uint64_t mapped_chunks; /* chunks mapped now (one provider map call each) */
    uint64_t largest_free;  /* largest FREE (mapped) block */
    uint64_t free_mapped;   /* reserved - allocated: mapped but unused */
    uint64_t n_blocks;      /* blocks of any state (fragmentation indicator) */
    uint64_t n_allocs;      /* live allocations */
    uint64_t map_calls;     /* provider map calls since creation */
    uint64_t unmap_calls;   /* provider unmap calls since creation */
} zi_alloc_stats;

typedef struct zi_alloc zi_alloc;

/* Creates an allocator over a provider (copied). Maps nothing yet. */
int zi_alloc_new(const zi_alloc_config *cfg, const zi_alloc_provider *prov, zi_alloc **out);
/* Unmaps every chunk (allocated blocks included) and frees the allocator. */
void zi_alloc_destroy(zi_alloc *a);

/* Hands out `size` bytes (rounded up to the alignment; 0 counts as one unit) at an
 * offset of the range, aligned to cfg->align. `tag` is kept with the block and returned
 * by zi_alloc_free() (the backend marks weights with it). ZI_ENOMEM with a message that
 * gives the request and the allocator state when it cannot. */
int zi_alloc_malloc(zi_alloc *a, uint64_t size, int tag, uint64_t *offset);

/* Returns a block to the allocator; *size and *tag (either may be NULL) receive the block's
 * rounded size and tag. ZI_EINVAL when `offset` is not the start of a live block. */
int zi_alloc_free(zi_alloc *a, uint64_t offset, uint64_t *size, int *tag);

/* Unmaps every chunk that holds no allocated byte; returns the bytes released. Errors of
 * the provider are recorded with zi_errorf() and the chunk is kept. */
uint64_t zi_alloc_trim(zi_alloc *a);

void zi_alloc_get_stats(const zi_alloc *a, zi_alloc_stats *out);
/* Sets peak and peak_reserved to the current values. */
void zi_alloc_reset_peak(zi_alloc *a);

/* Checks every internal invariant (block list covers the range in order, neighbours
 * coalesced, pages mapped exactly under FREE/ALLOCATED blocks, byte counters). ZI_OK, or
 * ZI_EINVAL with a message naming the broken rule. For tests. */
int zi_alloc_check(const zi_alloc *a);

#endif
