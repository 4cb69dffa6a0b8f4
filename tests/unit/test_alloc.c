/*
 * test_alloc.c - the expandable-segment allocator policy (kernels/zi_alloc.c) on a host
 * chunk provider that only accounts: it checks every map/unmap against what is mapped
 * (page aligned, no double map, unmap of exactly one earlier mapping) and can run out of
 * "physical" memory on demand. The same policy runs on the GPU over cuda_vmm.c
 * (tests/gpu/test_alloc_cuda.c).
 */
#include "zi_test.h"

#include "zi_alloc.h"
#include "zi_err.h"

#include <stdlib.h>
#include <string.h>

#define MIB ((uint64_t)1 << 20)
#define KIB ((uint64_t)1 << 10)
#define FAKE_MAX_MAPS 4096

typedef struct fake_prov {
    uint64_t gran, reserve;
    uint64_t cap; /* physical bytes available (0: unlimited) */
    uint64_t mapped;
    uint64_t map_calls, unmap_calls;
    uint64_t off[FAKE_MAX_MAPS], size[FAKE_MAX_MAPS];
    int n;
    int bad; /* set when the allocator broke the provider contract */
} fake_prov;

static int fake_map(void *ud, uint64_t off, uint64_t size)
{
    fake_prov *f = ud;
    f->map_calls++;
    if (off % f->gran || size % f->gran || size == 0 || off + size > f->reserve)
        f->bad = 1;
    for (int i = 0; i < f->n; i++)
        if (off < f->off[i] + f->size[i] && f->off[i] < off + size)
            f->bad = 1; /* mapping over a live mapping */
    if (f->cap && f->mapped + size > f->cap)
        return zi_errorf(ZI_ENOMEM, "fake device out of memory (%llu + %llu > %llu)",
                         (unsigned long long)f->mapped, (unsigned long long)size,
                         (unsigned long long)f->cap);
    if (f->n == FAKE_MAX_MAPS)
        return zi_errorf(ZI_ENOMEM, "fake provider: too many mappings");
    f->off[f->n] = off;
    f->size[f->n] = size;
    f->n++;
    f->mapped += size;
    return ZI_OK;
}

static int fake_unmap(void *ud, uint64_t off, uint64_t size)
{
    fake_prov *f = ud;
    f->unmap_calls++;
    for (int i = 0; i < f->n; i++)
        if (f->off[i] == off) {
            if (f->size[i] != size)
                f->bad = 1;
            f->mapped -= f->size[i];
            f->off[i] = f->off[f->n - 1];
            f->size[i] = f->size[f->n - 1];
            f->n--;
            return ZI_OK;
        }
    f->bad = 1; /* unmap of something never mapped */
    return zi_errorf(ZI_EINVAL, "fake provider: no mapping at %llu", (unsigned long long)off);
}

/* 1 when [off, off+size) lies inside live mappings of the provider. */
static int fake_backed(const fake_prov *f, uint64_t off, uint64_t size)
{
    uint64_t pos = off;
    while (pos < off + size) {
        int found = 0;
        for (int i = 0; i < f->n; i++)
            if (f->off[i] <= pos && pos < f->off[i] + f->size[i]) {
                pos = f->off[i] + f->size[i];
                found = 1;
                break;
            }
        if (!found)
            return 0;
    }
    return 1;
}

typedef struct fixture {
    fake_prov prov;
    zi_alloc *a;
} fixture;

static zi_alloc *make(fixture *fx, uint64_t reserve, uint64_t gran, uint64_t min_map,
                      uint64_t align, uint64_t limit)
{
    memset(&fx->prov, 0, sizeof fx->prov);
    fx->prov.gran = gran;
    fx->prov.reserve = reserve;
    zi_alloc_config cfg = {reserve, gran, min_map, align, limit};
    zi_alloc_provider p = {&fx->prov, fake_map, fake_unmap};
    fx->a = NULL;
    assert_int_equal(zi_alloc_new(&cfg, &p, &fx->a), ZI_OK);
    assert_non_null(fx->a);
    return fx->a;
}

static void finish(fixture *fx)
{
    assert_int_equal(zi_alloc_check(fx->a), ZI_OK);
    zi_alloc_destroy(fx->a);
    assert_int_equal(fx->prov.mapped, 0); /* destroy unmaps everything */
    assert_int_equal(fx->prov.n, 0);
    assert_false(fx->prov.bad);
}

static uint64_t take(fixture *fx, uint64_t size)
{
    uint64_t off = ~0ull;
    int rc = zi_alloc_malloc(fx->a, size, 0, &off);
    if (rc != ZI_OK)
        fail_msg("malloc(%llu): %s", (unsigned long long)size, zi_errmsg());
    assert_true(fake_backed(&fx->prov, off, size ? size : 1));
    int ck = zi_alloc_check(fx->a);
    if (ck != ZI_OK)
        fail_msg("invariant after malloc(%llu): %s", (unsigned long long)size, zi_errmsg());
    return off;
}

static void give(fixture *fx, uint64_t off)
{
    assert_int_equal(zi_alloc_free(fx->a, off, NULL, NULL), ZI_OK);
    int ck = zi_alloc_check(fx->a);
    if (ck != ZI_OK)
        fail_msg("invariant after free(%llu): %s", (unsigned long long)off, zi_errmsg());
}

static zi_alloc_stats stats(fixture *fx)
{
    zi_alloc_stats s;
    zi_alloc_get_stats(fx->a, &s);
    return s;
}

/* ---- tests ---- */

static void test_growth(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    zi_alloc_stats s = stats(&fx);
    assert_int_equal(s.reserved, 0);
    assert_int_equal(fx.prov.map_calls, 0); /* nothing mapped before the first request */
    uint64_t a = take(&fx, 100);
    s = stats(&fx);
    assert_int_equal(s.reserved, MIB);  /* one page */
    assert_int_equal(s.allocated, 512); /* rounded to the 512-byte alignment */
    assert_int_equal(s.mapped_chunks, 1);
    uint64_t b = take(&fx, 3 * MIB); /* grows the mapped range */
    s = stats(&fx);
    assert_true(b >= a + 512);
    assert_int_equal(s.reserved, 4 * MIB); /* 512 + 3 MiB needs 4 pages */
    assert_int_equal(s.allocated, 512 + 3 * MIB);
    assert_int_equal(s.peak, 512 + 3 * MIB);
    assert_int_equal(s.reserved, fx.prov.mapped);
    assert_int_equal(s.n_allocs, 2);
    finish(&fx);
}

static void test_min_map(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 8 * MIB, 0, 0);
    take(&fx, 1000);
    assert_int_equal(stats(&fx).reserved, 8 * MIB); /* growth maps at least min_map */
    for (int i = 0; i < 7; i++)
        take(&fx, MIB - 1024); /* all fit in the first chunk */
    assert_int_equal(fx.prov.map_calls, 1);
    finish(&fx);
}

/* min_map stretches a growth only up to the limit: with min_map 8 MiB and a 4 MiB limit
 * the first growth maps 4 MiB, the rest of it is served without mapping, and a request
 * past the limit fails instead of mapping more. */
static void test_min_map_stops_at_limit(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 8 * MIB, 0, 4 * MIB);
    take(&fx, 1000);
    zi_alloc_stats s = stats(&fx);
    assert_int_equal(s.reserved, 4 * MIB);
    assert_int_equal(fx.prov.mapped, 4 * MIB);
    take(&fx, 3 * MIB); /* inside the first chunk */
    assert_int_equal(fx.prov.map_calls, 1);
    uint64_t off;
    assert_int_equal(zi_alloc_malloc(fx.a, MIB, 0, &off), ZI_ENOMEM);
    assert_non_null(strstr(zi_errmsg(), "limit"));
    s = stats(&fx);
    assert_true(s.reserved <= 4 * MIB);
    assert_true(s.peak_reserved <= 4 * MIB);
    finish(&fx);
}

static void test_reuse(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    uint64_t keep = take(&fx, 4096);
    uint64_t a = take(&fx, 200 * KIB);
    uint64_t guard = take(&fx, 4096);
    (void)keep;
    (void)guard;
    uint64_t calls = fx.prov.map_calls;
    give(&fx, a);
    assert_int_equal(stats(&fx).allocated, 2 * 4096);
    uint64_t b = take(&fx, 200 * KIB);
    assert_int_equal(b, a); /* the freed block is handed out again */
    assert_int_equal(fx.prov.map_calls, calls);
    finish(&fx);
}

static void test_split_and_best_fit(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    /* holes of 64K, 32K, 128K between live guards */
    uint64_t h64 = take(&fx, 64 * KIB);
    take(&fx, 512);
    uint64_t h32 = take(&fx, 32 * KIB);
    take(&fx, 512);
    uint64_t h128 = take(&fx, 128 * KIB);
    take(&fx, 512);
    give(&fx, h64);
    give(&fx, h32);
    give(&fx, h128);
    uint64_t calls = fx.prov.map_calls;
    /* 30K fits all three holes: best fit takes the 32K one */
    assert_int_equal(take(&fx, 30 * KIB), h32);
    /* 40K: the 64K hole is the smallest that fits; it is split */
    assert_int_equal(take(&fx, 40 * KIB), h64);
    assert_int_equal(take(&fx, 24 * KIB), h64 + 40 * KIB); /* the split remainder */
    /* 100K goes to the 128K hole */
    assert_int_equal(take(&fx, 100 * KIB), h128);
    assert_int_equal(fx.prov.map_calls, calls);
    finish(&fx);
}

static void test_coalesce(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    take(&fx, 512); /* left guard */
    uint64_t a = take(&fx, 10 * KIB);
    uint64_t b = take(&fx, 20 * KIB);
    uint64_t c = take(&fx, 30 * KIB);
    take(&fx, 512); /* right guard: keeps c away from the growth front */
    uint64_t blocks_before = stats(&fx).n_blocks;
    give(&fx, a);
    give(&fx, c);
    assert_int_equal(stats(&fx).largest_free >= 30 * KIB, 1);
    give(&fx, b); /* merges with both neighbours into one 60K block */
    zi_alloc_stats s = stats(&fx);
    assert_int_equal(s.n_blocks, blocks_before - 2);
    uint64_t calls = fx.prov.map_calls;
    assert_int_equal(take(&fx, 60 * KIB), a); /* fits exactly where a, b and c were */
    assert_int_equal(fx.prov.map_calls, calls);
    finish(&fx);
}

static void test_trim(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    uint64_t a = take(&fx, 3 * MIB / 2); /* chunk 1: [0, 2M) */
    uint64_t b = take(&fx, 3 * MIB);     /* [1.5M, 4.5M): chunk 2 = [2M, 5M) */
    uint64_t c = take(&fx, MIB);         /* [4.5M, 5.5M): chunk 3 = [5M, 6M) */
    assert_int_equal(a, 0);
    assert_int_equal(b, 3 * MIB / 2);
    assert_int_equal(c, 9 * MIB / 2);
    zi_alloc_stats s = stats(&fx);
    assert_int_equal(s.mapped_chunks, 3);
    assert_int_equal(s.reserved, 6 * MIB);
    give(&fx, b);
    /* every chunk still holds an allocated byte: nothing is released */
    assert_int_equal(zi_alloc_trim(fx.a), 0);
    assert_int_equal(stats(&fx).reserved, 6 * MIB);
    give(&fx, c);
    /* chunks 2 and 3 are now free; chunk 1 still holds a */
    assert_int_equal(zi_alloc_trim(fx.a), 4 * MIB);
    assert_int_equal(zi_alloc_check(fx.a), ZI_OK);
    s = stats(&fx);
    assert_int_equal(s.reserved, 2 * MIB);
    assert_int_equal(s.mapped_chunks, 1);
    assert_int_equal(fx.prov.mapped, 2 * MIB);
    assert_int_equal(s.largest_free, MIB / 2); /* [1.5M, 2M) stays mapped and free */
    give(&fx, a);
    assert_int_equal(zi_alloc_trim(fx.a), 2 * MIB);
    s = stats(&fx);
    assert_int_equal(s.reserved, 0);
    assert_int_equal(s.mapped_chunks, 0);
    assert_int_equal(s.largest_free, 0);
    /* the range grows again after a full trim */
    take(&fx, 5 * MIB);
    assert_int_equal(stats(&fx).reserved, 5 * MIB);
    finish(&fx);
}

/* A mapped FREE block that fits is used before new pages are mapped, also when it lies
 * between unmapped ranges (after a trim): no growth, no driver call. */
static void test_free_block_between_trimmed_chunks(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, 2 * MIB, 0, 0, 0);
    uint64_t a = take(&fx, 2 * MIB), b = take(&fx, 2 * MIB), c = take(&fx, 2 * MIB);
    uint64_t d = take(&fx, 2 * MIB);
    assert_int_equal(b, 2 * MIB);
    give(&fx, a);
    give(&fx, c);
    assert_int_equal(zi_alloc_trim(fx.a), 4 * MIB); /* [0, 2M) and [4M, 6M) unmapped */
    give(&fx, b); /* [2M, 4M): mapped, free, between two unmapped ranges */
    zi_alloc_stats s0 = stats(&fx);
    assert_int_equal(s0.reserved, 4 * MIB);
    uint64_t maps = fx.prov.map_calls;
    uint64_t e = take(&fx, 2 * MIB);
    assert_int_equal(e, 2 * MIB);
    assert_int_equal(fx.prov.map_calls, maps);
    assert_int_equal(stats(&fx).reserved, 4 * MIB);
    give(&fx, e);
    give(&fx, d);
    finish(&fx);
}

static void test_fragmentation_stats(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    uint64_t off[8];
    for (int i = 0; i < 8; i++)
        off[i] = take(&fx, 100 * KIB);
    for (int i = 0; i < 8; i += 2) /* free every other block: 4 holes of 100K */
        give(&fx, off[i]);
    zi_alloc_stats s = stats(&fx);
    assert_int_equal(s.allocated, 4 * 100 * KIB);
    assert_int_equal(s.free_mapped, s.reserved - s.allocated);
    /* the largest free block is the tail past the last block, not the 100K holes */
    assert_int_equal(s.largest_free, MIB - 8 * 100 * KIB);
    assert_int_equal(s.peak, 8 * 100 * KIB);
    zi_alloc_reset_peak(fx.a);
    assert_int_equal(stats(&fx).peak, 4 * 100 * KIB);
    give(&fx, off[1]); /* joins holes 0, 1 and 2 into one 300K block */
    assert_int_equal(stats(&fx).largest_free, 300 * KIB);
    finish(&fx);
}

static void test_alignment(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    const uint64_t sizes[] = {0, 1, 511, 512, 513, 100000, 3 * KIB + 7};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        assert_int_equal(take(&fx, sizes[i]) % 512, 0);
    finish(&fx);
    make(&fx, 64 * MIB, MIB, 0, 4096, 0);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        assert_int_equal(take(&fx, sizes[i]) % 4096, 0);
    assert_int_equal(stats(&fx).allocated, 7 * 4096 + 24 * 4096); /* 100000 -> 25 x 4K */
    finish(&fx);
    /* an alignment equal to the granularity is allowed: every block starts a page */
    make(&fx, 64 * MIB, 64 * KIB, 0, 64 * KIB, 0);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        assert_int_equal(take(&fx, sizes[i]) % (64 * KIB), 0);
    finish(&fx);
    /* a bad configuration is refused */
    zi_alloc_config bad = {64 * MIB, 3 * MIB, 0, 0, 0};
    zi_alloc_provider p = {&fx.prov, fake_map, fake_unmap};
    zi_alloc *a = NULL;
    assert_int_equal(zi_alloc_new(&bad, &p, &a), ZI_EINVAL);
    zi_alloc_config bad_align = {64 * MIB, MIB, 0, 3000, 0};
    assert_int_equal(zi_alloc_new(&bad_align, &p, &a), ZI_EINVAL);
    zi_alloc_config big_align = {64 * MIB, MIB, 0, 2 * MIB, 0}; /* above the granularity */
    assert_int_equal(zi_alloc_new(&big_align, &p, &a), ZI_EINVAL);
    assert_null(a);
}

static void test_oom(void **state)
{
    (void)state;
    fixture fx;
    uint64_t off;
    /* the reserve itself */
    make(&fx, 8 * MIB, MIB, 0, 0, 0);
    assert_int_equal(zi_alloc_malloc(fx.a, 9 * MIB, 0, &off), ZI_ENOMEM);
    assert_non_null(strstr(zi_errmsg(), "out of device memory"));
    take(&fx, 4 * MIB);
    take(&fx, 4 * MIB);
    assert_int_equal(zi_alloc_malloc(fx.a, 512, 0, &off), ZI_ENOMEM);
    assert_non_null(strstr(zi_errmsg(), "reserved address range is exhausted"));
    assert_int_equal(zi_alloc_check(fx.a), ZI_OK);
    finish(&fx);
    /* the mapping limit */
    make(&fx, 64 * MIB, MIB, 0, 0, 4 * MIB);
    take(&fx, 3 * MIB);
    assert_int_equal(zi_alloc_malloc(fx.a, 2 * MIB, 0, &off), ZI_ENOMEM);
    assert_non_null(strstr(zi_errmsg(), "limit"));
    take(&fx, MIB); /* exactly up to the limit still works */
    finish(&fx);
    /* the device (provider) */
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    fx.prov.cap = 3 * MIB;
    take(&fx, 2 * MIB);
    zi_alloc_stats before = stats(&fx);
    assert_int_equal(zi_alloc_malloc(fx.a, 2 * MIB, 0, &off), ZI_ENOMEM);
    assert_non_null(strstr(zi_errmsg(), "fake device out of memory"));
    zi_alloc_stats after = stats(&fx);
    assert_int_equal(after.reserved, before.reserved); /* nothing half-mapped is left */
    assert_int_equal(after.allocated, before.allocated);
    assert_int_equal(zi_alloc_check(fx.a), ZI_OK);
    finish(&fx);
}

static void test_oom_recovers_by_trim(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    fx.prov.cap = 4 * MIB;
    uint64_t x = take(&fx, 3 * MIB);     /* chunk [0, 3M) */
    uint64_t y = take(&fx, MIB / 2);     /* chunk [3M, 4M) */
    give(&fx, x);                        /* 3 MiB mapped but free, away from the front */
    uint64_t z = take(&fx, 7 * MIB / 2); /* needs 3 new pages: only after a trim */
    assert_true(fx.prov.unmap_calls >= 1);
    assert_true(z >= y + MIB / 2);
    assert_true(stats(&fx).reserved <= 4 * MIB);
    finish(&fx);
}

/* As above, but the limit (not the device) is what the new request would pass: the
 * free chunk away from the growth front is trimmed and the request then fits. */
static void test_limit_recovers_by_trim(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 4 * MIB);
    uint64_t x = take(&fx, 3 * MIB);     /* chunk [0, 3M) */
    uint64_t y = take(&fx, MIB / 2);     /* chunk [3M, 4M): the limit is reached */
    give(&fx, x);                        /* 3 MiB mapped but free, away from the front */
    uint64_t z = take(&fx, 7 * MIB / 2); /* needs 3 new pages: only after a trim */
    assert_true(fx.prov.unmap_calls >= 1);
    assert_true(z >= y + MIB / 2);
    zi_alloc_stats s = stats(&fx);
    assert_int_equal(s.reserved, 4 * MIB);
    assert_true(s.peak_reserved <= 4 * MIB);
    finish(&fx);
}

static void test_bad_free(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 64 * MIB, MIB, 0, 0, 0);
    uint64_t a = take(&fx, 4096);
    assert_int_equal(zi_alloc_free(fx.a, a + 512, NULL, NULL), ZI_EINVAL);
    uint64_t size = 0;
    int tag = -1;
    assert_int_equal(zi_alloc_malloc(fx.a, 1000, 7, &a), ZI_OK);
    assert_int_equal(zi_alloc_free(fx.a, a, &size, &tag), ZI_OK);
    assert_int_equal(size, 1024);
    assert_int_equal(tag, 7);
    assert_int_equal(zi_alloc_free(fx.a, a, NULL, NULL), ZI_EINVAL); /* double free */
    assert_non_null(strstr(zi_errmsg(), "double free"));
    assert_int_equal(zi_alloc_free(fx.a, 1ull << 40, NULL, NULL), ZI_EINVAL);
    finish(&fx);
}

/* One "job" as the pipeline makes it: activations of several sizes, freed in an order
 * that is not LIFO. Records the offsets it got. */
static void run_job(fixture *fx, uint64_t *offs, int *n)
{
    uint64_t live[16];
    int nl = 0;
    *n = 0;
    for (int step = 0; step < 4; step++) {
        const uint64_t sizes[] = {33 * MIB / 10, 86 * MIB / 10, 86 * MIB / 10, 5 * MIB,
                                  700 * KIB,     12 * MIB,      33 * MIB / 10};
        for (int i = 0; i < 7; i++) {
            live[nl] = take(fx, sizes[i] + (uint64_t)step * 4096);
            offs[(*n)++] = live[nl++];
            if (i == 3 || i == 5) { /* free two from the middle, like dead intermediates */
                give(fx, live[1]);
                memmove(&live[1], &live[2], (size_t)(nl - 2) * sizeof live[0]);
                nl--;
            }
        }
        while (nl > 0) /* end of step: free the rest, oldest first */
            give(fx, live[--nl]);
    }
}

static void test_second_job_maps_nothing(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 1024 * MIB, 2 * MIB, 32 * MIB, 0, 0);
    uint64_t w1 = take(&fx, 300 * MIB); /* "weights", kept across jobs */
    uint64_t w2 = take(&fx, 77 * MIB + 3);
    (void)w1;
    (void)w2;
    uint64_t o1[64], o2[64];
    int n1 = 0, n2 = 0;
    run_job(&fx, o1, &n1);
    zi_alloc_stats s1 = stats(&fx);
    uint64_t calls = fx.prov.map_calls;
    assert_true(calls > 1);
    for (int rep = 0; rep < 3; rep++) {
        run_job(&fx, o2, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(o1, o2, (size_t)n1 * sizeof o1[0]); /* same places */
        assert_int_equal(fx.prov.map_calls, calls);             /* nothing mapped */
        zi_alloc_stats s2 = stats(&fx);
        assert_int_equal(s2.reserved, s1.reserved);
        assert_int_equal(s2.peak, s1.peak);
    }
    finish(&fx);
}

static void test_random_stress(void **state)
{
    (void)state;
    fixture fx;
    make(&fx, 256 * MIB, MIB, 4 * MIB, 0, 0);
    uint64_t live[64], lsize[64];
    int nl = 0;
    uint32_t r = 12345;
    for (int it = 0; it < 3000; it++) {
        r = r * 1103515245u + 12345u;
        uint32_t op = (r >> 16) % 10;
        if ((op < 6 && nl < 64) || nl == 0) {
            r = r * 1103515245u + 12345u;
            uint64_t size = ((r >> 8) % (3 * MIB)) + 1;
            uint64_t off;
            int rc = zi_alloc_malloc(fx.a, size, 0, &off);
            if (rc == ZI_OK) {
                assert_true(fake_backed(&fx.prov, off, size));
                for (int i = 0; i < nl; i++) /* never overlaps a live block */
                    assert_false(off < live[i] + lsize[i] && live[i] < off + size);
                live[nl] = off;
                lsize[nl++] = size;
            } else {
                assert_int_equal(rc, ZI_ENOMEM);
            }
        } else if (op < 9) {
            int i = (int)((r >> 4) % (uint32_t)nl);
            assert_int_equal(zi_alloc_free(fx.a, live[i], NULL, NULL), ZI_OK);
            nl--;
            live[i] = live[nl];
            lsize[i] = lsize[nl];
        } else {
            zi_alloc_trim(fx.a);
        }
        int ck = zi_alloc_check(fx.a);
        if (ck != ZI_OK)
            fail_msg("iteration %d: %s", it, zi_errmsg());
        assert_false(fx.prov.bad);
        assert_int_equal(stats(&fx).reserved, fx.prov.mapped);
    }
    while (nl > 0)
        give(&fx, live[--nl]);
    zi_alloc_trim(fx.a);
    assert_int_equal(stats(&fx).reserved, 0);
    finish(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_min_map),
        cmocka_unit_test(test_min_map_stops_at_limit),
        cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_split_and_best_fit),
        cmocka_unit_test(test_coalesce),
        cmocka_unit_test(test_trim),
        cmocka_unit_test(test_fragmentation_stats),
        cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_oom),
        cmocka_unit_test(test_oom_recovers_by_trim),
        cmocka_unit_test(test_limit_recovers_by_trim),
        cmocka_unit_test(test_bad_free),
        cmocka_unit_test(test_second_job_maps_nothing),
        cmocka_unit_test(test_random_stress),
        cmocka_unit_test(test_free_block_between_trimmed_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
