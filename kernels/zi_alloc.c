/*
 * zi_alloc.c - the expandable-segment allocator policy (see zi_alloc.h for the rules).
 *
 * Data: `blocks`, an array sorted by offset that tiles [0, reserve) exactly; `mapped`, one
 * byte per page; `chunks`, the provider mappings sorted by offset. Blocks are few (a few
 * hundred), so insertions shift the array instead of maintaining a tree.
 */
#include "zi_alloc.h"
#include "zi_err.h"
#include "zi_vec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ZI_BLK_UNMAPPED = 0, ZI_BLK_FREE = 1, ZI_BLK_ALLOCATED = 2 };

typedef struct zi_alloc_block {
    uint64_t off, size;
    int state;
    int tag;
} zi_alloc_block;

typedef struct zi_alloc_chunk {
    uint64_t off, size;
} zi_alloc_chunk;

struct zi_alloc {
    zi_alloc_config cfg;
    zi_alloc_provider prov;
    uint64_t npages;
    uint8_t *mapped; /* [npages] 1 when the page is backed */
    zi_alloc_block *blocks;
    size_t nblocks, capblocks;
    zi_alloc_chunk *chunks;
    size_t nchunks, capchunks;
    uint64_t reserved, peak_reserved, allocated, peak, n_allocs;
    uint64_t map_calls, unmap_calls;
};

static uint64_t zi_round_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

static int zi_is_pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* ---- block array ---- */

static int zi_blocks_insert(zi_alloc *a, size_t at, zi_alloc_block b)
{
    zi_alloc_block *nb = zi_grow(a->blocks, &a->capblocks, a->nblocks + 1, sizeof *nb, 64);
    if (!nb)
        return zi_errorf(ZI_ENOMEM, "allocator: out of host memory for the block list");
    a->blocks = nb;
    memmove(&a->blocks[at + 1], &a->blocks[at], (a->nblocks - at) * sizeof *a->blocks);
    a->blocks[at] = b;
    a->nblocks++;
    return ZI_OK;
}

static void zi_blocks_remove(zi_alloc *a, size_t at)
{
    memmove(&a->blocks[at], &a->blocks[at + 1], (a->nblocks - at - 1) * sizeof *a->blocks);
    a->nblocks--;
}

/* Index of the block containing byte `off` (off < reserve). */
static size_t zi_blocks_find(const zi_alloc *a, uint64_t off)
{
    size_t lo = 0, hi = a->nblocks; /* invariant: blocks[lo].off <= off < blocks[hi].off */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (a->blocks[mid].off <= off)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Makes `pos` a block boundary (splits the block containing it; same state and tag). */
static int zi_blocks_split_at(zi_alloc *a, uint64_t pos)
{
    if (pos >= a->cfg.reserve)
        return ZI_OK;
    size_t i = zi_blocks_find(a, pos);
    zi_alloc_block b = a->blocks[i];
    if (b.off == pos)
        return ZI_OK;
    zi_alloc_block hi = b;
    hi.off = pos;
    hi.size = b.off + b.size - pos;
    a->blocks[i].size = pos - b.off;
    return zi_blocks_insert(a, i + 1, hi);
}

/* Merges block i with same-state FREE/UNMAPPED neighbours; returns the merged index. */
static size_t zi_blocks_merge(zi_alloc *a, size_t i)
{
    int st = a->blocks[i].state;
    if (st == ZI_BLK_ALLOCATED)
        return i;
    if (i + 1 < a->nblocks && a->blocks[i + 1].state == st) {
        a->blocks[i].size += a->blocks[i + 1].size;
        zi_blocks_remove(a, i + 1);
    }
    if (i > 0 && a->blocks[i - 1].state == st) {
        a->blocks[i - 1].size += a->blocks[i].size;
        zi_blocks_remove(a, i);
        i--;
    }
    return i;
}

/* Sets every block inside [lo, hi) (which must be block boundaries) to `state`, then
 * merges the result with its neighbours. */
static void zi_blocks_set_range(zi_alloc *a, uint64_t lo, uint64_t hi, int state)
{
    size_t i = zi_blocks_find(a, lo);
    size_t first = i;
    while (i < a->nblocks && a->blocks[i].off < hi) {
        a->blocks[i].state = state;
        a->blocks[i].tag = 0;
        i++;
    }
    /* collapse the run [first, i) into one block, then merge with the neighbours */
    size_t n = i - first;
    if (n > 1) {
        a->blocks[first].size = hi - lo;
        memmove(&a->blocks[first + 1], &a->blocks[i], (a->nblocks - i) * sizeof *a->blocks);
        a->nblocks -= n - 1;
    }
    zi_blocks_merge(a, first);
}

/* ---- chunks ---- */

static int zi_chunks_insert(zi_alloc *a, uint64_t off, uint64_t size)
{
    zi_alloc_chunk *nc = zi_grow(a->chunks, &a->capchunks, a->nchunks + 1, sizeof *nc, 64);
    if (!nc)
        return zi_errorf(ZI_ENOMEM, "allocator: out of host memory for the chunk list");
    a->chunks = nc;
    size_t at = 0;
    while (at < a->nchunks && a->chunks[at].off < off)
        at++;
    memmove(&a->chunks[at + 1], &a->chunks[at], (a->nchunks - at) * sizeof *a->chunks);
    a->chunks[at].off = off;
    a->chunks[at].size = size;
    a->nchunks++;
    return ZI_OK;
}

/* Maps [off, off+size) (unmapped pages, inside UNMAPPED blocks) and marks it FREE. */
static int zi_map_range(zi_alloc *a, uint64_t off, uint64_t size)
{
    int rc = a->prov.map(a->prov.ud, off, size);
    a->map_calls++;
    if (rc != ZI_OK)
        return rc;
    rc = zi_blocks_split_at(a, off);
    if (rc == ZI_OK)
        rc = zi_blocks_split_at(a, off + size);
    if (rc == ZI_OK)
        rc = zi_chunks_insert(a, off, size);
    if (rc != ZI_OK) { /* host out of memory: undo the mapping and any split */
        a->prov.unmap(a->prov.ud, off, size);
        a->unmap_calls++;
        zi_blocks_merge(a, zi_blocks_find(a, off));
        return rc;
    }
    memset(a->mapped + off / a->cfg.granularity, 1, size / a->cfg.granularity);
    zi_blocks_set_range(a, off, off + size, ZI_BLK_FREE);
    a->reserved += size;
    if (a->reserved > a->peak_reserved)
        a->peak_reserved = a->reserved;
    return ZI_OK;
}

/* Unmaps chunk ci (which holds no allocated byte) and marks its range UNMAPPED. */
static int zi_unmap_chunk(zi_alloc *a, size_t ci)
{
    zi_alloc_chunk c = a->chunks[ci];
    int rc = zi_blocks_split_at(a, c.off);
    if (rc == ZI_OK)
        rc = zi_blocks_split_at(a, c.off + c.size);
    if (rc != ZI_OK)
        return rc;
    rc = a->prov.unmap(a->prov.ud, c.off, c.size);
    a->unmap_calls++;
    if (rc != ZI_OK) {
        /* keep the chunk; undo the splits so neighbours stay coalesced */
        zi_blocks_merge(a, zi_blocks_find(a, c.off));
        if (c.off + c.size < a->cfg.reserve)
            zi_blocks_merge(a, zi_blocks_find(a, c.off + c.size));
        return rc;
    }
    memset(a->mapped + c.off / a->cfg.granularity, 0, c.size / a->cfg.granularity);
    zi_blocks_set_range(a, c.off, c.off + c.size, ZI_BLK_UNMAPPED);
    memmove(&a->chunks[ci], &a->chunks[ci + 1], (a->nchunks - ci - 1) * sizeof *a->chunks);
    a->nchunks--;
    a->reserved -= c.size;
    return ZI_OK;
}

/* 1 when no ALLOCATED block overlaps [lo, hi). */
static int zi_range_unused(const zi_alloc *a, uint64_t lo, uint64_t hi)
{
    for (size_t i = zi_blocks_find(a, lo); i < a->nblocks && a->blocks[i].off < hi; i++)
        if (a->blocks[i].state == ZI_BLK_ALLOCATED)
            return 0;
    return 1;
}

uint64_t zi_alloc_trim(zi_alloc *a)
{
    uint64_t released = 0;
    size_t ci = 0;
    while (ci < a->nchunks) {
        zi_alloc_chunk c = a->chunks[ci];
        if (zi_range_unused(a, c.off, c.off + c.size) && zi_unmap_chunk(a, ci) == ZI_OK) {
            released += c.size;
            continue; /* chunk ci was removed: the next one moved into its slot */
        }
        ci++;
    }
    return released;
}

/* ---- allocation ---- */

static uint64_t zi_unmapped_bytes(const zi_alloc *a, uint64_t lo, uint64_t hi)
{
    uint64_t g = a->cfg.granularity, n = 0;
    for (uint64_t p = lo / g; p < (hi + g - 1) / g; p++)
        n += !a->mapped[p];
    return n * g;
}

/* Carves [off, off+size) out of the FREE block containing it. */
static int zi_carve(zi_alloc *a, uint64_t off, uint64_t size, int tag)
{
    int rc = zi_blocks_split_at(a, off);
    if (rc == ZI_OK)
        rc = zi_blocks_split_at(a, off + size);
    if (rc != ZI_OK) { /* host out of memory: undo a first split, neighbours stay coalesced */
        zi_blocks_merge(a, zi_blocks_find(a, off));
        return rc;
    }
    size_t i = zi_blocks_find(a, off);
    a->blocks[i].state = ZI_BLK_ALLOCATED;
    a->blocks[i].tag = tag;
    a->allocated += size;
    a->n_allocs++;
    if (a->allocated > a->peak)
        a->peak = a->allocated;
    return ZI_OK;
}

/* Rule 1: best-fit FREE block that does not border unmapped space. */
static int zi_find_free(const zi_alloc *a, uint64_t size, uint64_t *off)
{
    size_t best = (size_t)-1;
    for (size_t i = 0; i < a->nblocks; i++) {
        const zi_alloc_block *b = &a->blocks[i];
        if (b->state != ZI_BLK_FREE || b->size < size)
            continue;
        if (i + 1 == a->nblocks || a->blocks[i + 1].state == ZI_BLK_UNMAPPED)
            continue; /* the growth front: rule 2 places into it */
        if (best == (size_t)-1 || b->size < a->blocks[best].size)
            best = i;
    }
    if (best == (size_t)-1)
        return 0;
    *off = a->blocks[best].off;
    return 1;
}

/* Rule 2: the placement inside a FREE/UNMAPPED run that maps the fewest new bytes.
 * Returns 1 and sets *off and *cost when one exists within the limit; *span_max receives
 * the longest run seen (for the error message). */
static int zi_find_growth(const zi_alloc *a, uint64_t size, uint64_t *off, uint64_t *cost,
                          uint64_t *span_max, int *over_limit)
{
    uint64_t limit = a->cfg.limit;
    int found = 0;
    *span_max = 0;
    *over_limit = 0;
    size_t i = 0;
    while (i < a->nblocks) {
        if (a->blocks[i].state == ZI_BLK_ALLOCATED) {
            i++;
            continue;
        }
        size_t j = i;
        int has_front = 0; /* an UNMAPPED block, or FREE space at the end of the range */
        while (j < a->nblocks && a->blocks[j].state != ZI_BLK_ALLOCATED) {
            has_front |= a->blocks[j].state == ZI_BLK_UNMAPPED;
            j++;
        }
        has_front |= j == a->nblocks;
        uint64_t lo = a->blocks[i].off, hi = a->blocks[j - 1].off + a->blocks[j - 1].size;
        if (hi - lo > *span_max)
            *span_max = hi - lo;
        if (has_front && hi - lo >= size) {
            /* the run's two ends, and the start of each FREE block in it that fits (mapped
             * already: nothing new to map, e.g. a free chunk between two trimmed ones) */
            uint64_t cand[2] = {lo, hi - size};
            for (size_t k = i; k < j; k++) {
                const zi_alloc_block *b = &a->blocks[k];
                if (b->state == ZI_BLK_FREE && b->size >= size && (!found || *cost > 0)) {
                    found = 1;
                    *cost = 0;
                    *off = b->off;
                }
            }
            for (int c = 0; c < 2; c++) {
                uint64_t need = zi_unmapped_bytes(a, cand[c], cand[c] + size);
                if (a->reserved + need > limit) {
                    *over_limit = 1;
                    continue;
                }
                if (!found || need < *cost) {
                    found = 1;
                    *cost = need;
                    *off = cand[c];
                }
            }
        }
        i = j;
    }
    return found;
}

/* Maps every unmapped page under [off, off+size); the last run is stretched to min_map.
 * On failure, rolls back what this call mapped. */
static int zi_map_for(zi_alloc *a, uint64_t off, uint64_t size)
{
    uint64_t g = a->cfg.granularity;
    uint64_t p0 = off / g, p1 = (off + size + g - 1) / g;
    /* runs of unmapped pages alternate with mapped ones: at most (p1 - p0 + 1) / 2 + 1 */
    size_t cap = (size_t)((p1 - p0 + 1) / 2 + 1), ndone = 0;
    uint64_t *done = malloc(cap * sizeof *done);
    if (!done)
        return zi_errorf(ZI_ENOMEM, "allocator: out of host memory");
    int rc = ZI_OK;
    uint64_t p = p0;
    while (p < p1) {
        if (a->mapped[p]) {
            p++;
            continue;
        }
        uint64_t q = p;
        while (q < p1 && !a->mapped[q])
            q++;
        if (q == p1) { /* the growth end: map at least min_map when the space is there */
            uint64_t want = p + a->cfg.min_map / g;
            while (q < want && q < a->npages && !a->mapped[q] &&
                   a->reserved + (q + 1 - p) * g <= a->cfg.limit)
                q++;
        }
        rc = zi_map_range(a, p * g, (q - p) * g);
        if (rc != ZI_OK)
            break;
        done[ndone++] = p * g;
        p = q;
    }
    if (rc != ZI_OK) {
        for (size_t k = 0; k < ndone; k++)
            for (size_t ci = 0; ci < a->nchunks; ci++)
                if (a->chunks[ci].off == done[k]) {
                    zi_unmap_chunk(a, ci);
                    break;
                }
    }
    free(done);
    return rc;
}

static int zi_alloc_oom(const zi_alloc *a, uint64_t size, const char *why)
{
    zi_alloc_stats s;
    zi_alloc_get_stats(a, &s);
    return zi_errorf(ZI_ENOMEM,
                     "out of device memory: %s (request %llu bytes; allocated %llu, mapped %llu "
                     "in %llu chunks, largest free block %llu, reserve %llu, limit %llu)",
                     why, (unsigned long long)size, (unsigned long long)s.allocated,
                     (unsigned long long)s.reserved, (unsigned long long)s.mapped_chunks,
                     (unsigned long long)s.largest_free, (unsigned long long)s.reserve,
                     (unsigned long long)a->cfg.limit);
}

int zi_alloc_malloc(zi_alloc *a, uint64_t size, int tag, uint64_t *offset)
{
    uint64_t req = size ? size : 1;
    if (req > a->cfg.reserve)
        return zi_alloc_oom(a, size, "request larger than the reserved address range");
    req = zi_round_up(req, a->cfg.align);
    for (int attempt = 0; attempt < 2; attempt++) {
        uint64_t off;
        if (zi_find_free(a, req, &off)) {
            int rc = zi_carve(a, off, req, tag);
            if (rc == ZI_OK)
                *offset = off;
            return rc;
        }
        uint64_t cost = 0, span_max = 0;
        int over_limit = 0;
        if (!zi_find_growth(a, req, &off, &cost, &span_max, &over_limit)) {
            if (attempt == 0 && zi_alloc_trim(a) > 0)
                continue;
            if (over_limit)
                return zi_alloc_oom(a, size, "the mapping limit would be passed");
            return zi_alloc_oom(a, size, "the reserved address range is exhausted");
        }
        int rc = zi_map_for(a, off, req);
        if (rc != ZI_OK) {
            if (attempt == 0 && zi_alloc_trim(a) > 0)
                continue;
            char cause[512];
            snprintf(cause, sizeof cause, "mapping physical memory failed: %s", zi_errmsg());
            return zi_alloc_oom(a, size, cause);
        }
        rc = zi_carve(a, off, req, tag);
        if (rc == ZI_OK)
            *offset = off;
        return rc;
    }
    return zi_alloc_oom(a, size, "no space after trimming");
}

int zi_alloc_free(zi_alloc *a, uint64_t offset, uint64_t *size, int *tag)
{
    if (offset >= a->cfg.reserve)
        return zi_errorf(ZI_EINVAL, "allocator: free of offset %llu outside the range",
                         (unsigned long long)offset);
    size_t i = zi_blocks_find(a, offset);
    zi_alloc_block *b = &a->blocks[i];
    if (b->off != offset || b->state != ZI_BLK_ALLOCATED)
        return zi_errorf(ZI_EINVAL, "allocator: offset %llu is not a live block (double free?)",
                         (unsigned long long)offset);
    if (size)
        *size = b->size;
    if (tag)
        *tag = b->tag;
    a->allocated -= b->size;
    a->n_allocs--;
    b->state = ZI_BLK_FREE;
    b->tag = 0;
    zi_blocks_merge(a, i);
    return ZI_OK;
}

/* ---- lifecycle and stats ---- */

int zi_alloc_new(const zi_alloc_config *cfg, const zi_alloc_provider *prov, zi_alloc **out)
{
    *out = NULL;
    zi_alloc_config c = *cfg;
    if (!zi_is_pow2(c.granularity))
        return zi_errorf(ZI_EINVAL, "allocator: granularity %llu is not a power of two",
                         (unsigned long long)c.granularity);
    if (c.align == 0)
        c.align = 512;
    if (!zi_is_pow2(c.align) || c.align > c.granularity)
        return zi_errorf(ZI_EINVAL, "allocator: alignment %llu must be a power of two <= %llu",
                         (unsigned long long)c.align, (unsigned long long)c.granularity);
    c.reserve = c.reserve / c.granularity * c.granularity;
    if (c.reserve == 0)
        return zi_errorf(ZI_EINVAL, "allocator: reserve smaller than one page");
    c.min_map = zi_round_up(c.min_map ? c.min_map : c.granularity, c.granularity);
    if (c.limit == 0 || c.limit > c.reserve)
        c.limit = c.reserve;
    if (!prov || !prov->map || !prov->unmap)
        return zi_errorf(ZI_EINVAL, "allocator: provider without map/unmap");

    zi_alloc *a = calloc(1, sizeof *a);
    if (!a)
        goto nomem;
    a->cfg = c;
    a->prov = *prov;
    a->npages = c.reserve / c.granularity;
    a->mapped = calloc(a->npages, 1);
    if (!a->mapped)
        goto nomem;
    zi_alloc_block all = {0, c.reserve, ZI_BLK_UNMAPPED, 0};
    if (zi_blocks_insert(a, 0, all) != ZI_OK)
        goto err;
    *out = a;
    return ZI_OK;
nomem:
    zi_errorf(ZI_ENOMEM, "allocator: out of host memory");
err:
    if (a) {
        free(a->mapped);
        free(a->blocks);
        free(a);
    }
    return ZI_ENOMEM;
}

void zi_alloc_destroy(zi_alloc *a)
{
    if (!a)
        return;
    for (size_t ci = 0; ci < a->nchunks; ci++)
        a->prov.unmap(a->prov.ud, a->chunks[ci].off, a->chunks[ci].size);
    free(a->mapped);
    free(a->blocks);
    free(a->chunks);
    free(a);
}

void zi_alloc_get_stats(const zi_alloc *a, zi_alloc_stats *out)
{
    memset(out, 0, sizeof *out);
    out->reserve = a->cfg.reserve;
    out->reserved = a->reserved;
    out->peak_reserved = a->peak_reserved;
    out->allocated = a->allocated;
    out->peak = a->peak;
    out->mapped_chunks = a->nchunks;
    out->free_mapped = a->reserved - a->allocated;
    out->n_blocks = a->nblocks;
    out->n_allocs = a->n_allocs;
    out->map_calls = a->map_calls;
    out->unmap_calls = a->unmap_calls;
    for (size_t i = 0; i < a->nblocks; i++)
        if (a->blocks[i].state == ZI_BLK_FREE && a->blocks[i].size > out->largest_free)
            out->largest_free = a->blocks[i].size;
}

void zi_alloc_reset_peak(zi_alloc *a)
{
    a->peak = a->allocated;
    a->peak_reserved = a->reserved;
}

int zi_alloc_check(const zi_alloc *a)
{
    uint64_t g = a->cfg.granularity, pos = 0, alloc = 0, nalloc = 0, mapped = 0;
    for (size_t i = 0; i < a->nblocks; i++) {
        const zi_alloc_block *b = &a->blocks[i];
        if (b->off != pos || b->size == 0)
            return zi_errorf(ZI_EINVAL, "block %zu at %llu (size %llu) does not follow %llu", i,
                             (unsigned long long)b->off, (unsigned long long)b->size,
                             (unsigned long long)pos);
        if (b->off % a->cfg.align || b->size % a->cfg.align)
            return zi_errorf(ZI_EINVAL, "block %zu is not aligned", i);
        if (i > 0 && b->state != ZI_BLK_ALLOCATED && a->blocks[i - 1].state == b->state)
            return zi_errorf(ZI_EINVAL, "blocks %zu and %zu are not coalesced", i - 1, i);
        if (b->state == ZI_BLK_UNMAPPED && (b->off % g || b->size % g))
            return zi_errorf(ZI_EINVAL, "unmapped block %zu is not page aligned", i);
        for (uint64_t p = b->off / g; p < (b->off + b->size + g - 1) / g; p++) {
            int want = b->state != ZI_BLK_UNMAPPED;
            if (a->mapped[p] != want)
                return zi_errorf(ZI_EINVAL, "page %llu is %smapped under a %s block",
                                 (unsigned long long)p, a->mapped[p] ? "" : "not ",
                                 b->state == ZI_BLK_UNMAPPED ? "unmapped" : "used");
        }
        if (b->state == ZI_BLK_ALLOCATED) {
            alloc += b->size;
            nalloc++;
        }
        pos += b->size;
    }
    if (pos != a->cfg.reserve)
        return zi_errorf(ZI_EINVAL, "blocks end at %llu, not at the reserve end",
                         (unsigned long long)pos);
    for (size_t ci = 0; ci < a->nchunks; ci++) {
        if (ci > 0 && a->chunks[ci - 1].off + a->chunks[ci - 1].size > a->chunks[ci].off)
            return zi_errorf(ZI_EINVAL, "chunks %zu and %zu overlap", ci - 1, ci);
        for (uint64_t p = a->chunks[ci].off / g; p < (a->chunks[ci].off + a->chunks[ci].size) / g;
             p++)
            if (!a->mapped[p])
                return zi_errorf(ZI_EINVAL, "chunk %zu covers unmapped page", ci);
        mapped += a->chunks[ci].size;
    }
    uint64_t pages = 0;
    for (uint64_t p = 0; p < a->npages; p++)
        pages += a->mapped[p];
    if (pages * g != mapped || mapped != a->reserved)
        return zi_errorf(ZI_EINVAL, "mapped pages %llu, chunks %llu, counter %llu disagree",
                         (unsigned long long)(pages * g), (unsigned long long)mapped,
                         (unsigned long long)a->reserved);
    if (alloc != a->allocated || nalloc != a->n_allocs)
        return zi_errorf(ZI_EINVAL, "allocated counter %llu != %llu", (unsigned long long)alloc,
                         (unsigned long long)a->allocated);
    return ZI_OK;
}
