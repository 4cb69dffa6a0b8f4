/*
 * zi_vec.h - growing a heap array by doubling: the one copy of the realloc-and-double step
 * that tables and lists (DiT tensor table, allocator blocks and chunks, VMM handles) share.
 *
 * Limits: the element count and byte size are checked for size_t overflow; the caller keeps
 * its own count and writes its own error message (so each module still says what ran out).
 */
#ifndef ZI_VEC_H
#define ZI_VEC_H

#include <stddef.h>

/* Makes room for `need` elements of `elem` bytes in the array p of capacity *cap.
 * Returns p unchanged when *cap >= need; otherwise reallocs to max(need, first, 2 * *cap)
 * elements, stores the new capacity in *cap and returns the new pointer (which invalidates
 * p). Returns NULL, with p and *cap untouched and still valid, when memory runs out or the
 * size would overflow. */
void *zi_grow(void *p, size_t *cap, size_t need, size_t elem, size_t first);

#endif
