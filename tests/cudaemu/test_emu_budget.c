/*
 * test_emu_budget.c - the CUDA backend's automatic weight budget on emulated devices of
 * different sizes (ZI_EMU_DEVICE_MEMORY, read once per process: one child per device).
 *
 * On a device with room for the model plus the 2 GiB activation headroom every weight is
 * resident; on a device just short of that, the weights past the budget stay in pinned host
 * memory - and the image is the same bytes. ZI_CUDA_WEIGHT_BUDGET_MB=resident turns the
 * budget off even there, and a bad value is refused when the backend is created. Past the
 * page-lock limit (ZI_CUDA_PIN_LIMIT_MB) or on a host that cannot page-lock all the
 * host-kept weights (ZI_EMU_PINNED_MEMORY), the rest of this bf16 checkpoint is read from
 * the loader's mapping of its files, and the image is still the same bytes (a weight read
 * after its file was unmapped would crash the child); with that turned off
 * (ZI_CUDA_MAP_WEIGHTS=0) the rest is copied to ordinary memory, same bytes again; a host
 * with too little of that as well (ZI_CUDA_HOST_MEM_LIMIT_MB) fails the load with a clear
 * error.
 */
#include "zi_test.h"

#include "backend.h"
#include "pipeline.h"
#include "zi_cuda.h"
#include "zi_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB ((uint64_t)1 << 20)
#define IMG (64 * 48 * 3)

typedef struct result {
    int ok, loaded;
    uint64_t host_bytes, pageable_bytes, mapped_bytes, device_weights, budget, pin_limit;
    uint64_t headroom;
    int headroom_rc;
    uint8_t img[IMG];
    char err[1024];
} result;

/* Page-locked host memory the next child's emulated host has (0: no limit), the ordinary
 * memory its backend may take for weights (ZI_CUDA_HOST_MEM_LIMIT_MB, 0: unset), its
 * page-lock limit (ZI_CUDA_PIN_LIMIT_MB, 0: unset), and whether it may read weights from
 * the checkpoint's mapping (ZI_CUDA_MAP_WEIGHTS=0 when g_no_map). */
static uint64_t g_pinned, g_host_mib, g_pin_limit_mib;
static int g_no_map;
/* The activation headroom the next child sets before loading (0: none), and whether it
 * stops there with the budget (no model, no image). */
static uint64_t g_headroom;
static int g_budget_only;

/* Sets `name` to the decimal value v, or unsets it when v is 0. */
static void set_or_unset(const char *name, uint64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    if (v)
        setenv(name, s, 1);
    else
        unsetenv(name);
}

/* In a child: device of `mem` bytes, the budget variable `budget` (NULL: unset), the tiny
 * model loaded and one 64x48 image made; the outcome in *r (shared memory). */
static void child(uint64_t mem, const char *budget, uint64_t limit_mib, result *r)
{
    set_or_unset("ZI_EMU_DEVICE_MEMORY", mem);
    set_or_unset("ZI_EMU_PINNED_MEMORY", g_pinned);
    set_or_unset("ZI_CUDA_HOST_MEM_LIMIT_MB", g_host_mib);
    set_or_unset("ZI_CUDA_PIN_LIMIT_MB", g_pin_limit_mib);
    if (g_no_map)
        setenv("ZI_CUDA_MAP_WEIGHTS", "0", 1);
    else
        unsetenv("ZI_CUDA_MAP_WEIGHTS");
    set_or_unset("ZI_CUDA_MEM_LIMIT_MB", limit_mib);
    if (budget)
        setenv("ZI_CUDA_WEIGHT_BUDGET_MB", budget, 1);
    else
        unsetenv("ZI_CUDA_WEIGHT_BUDGET_MB");
    zi_backend *be = zi_backend_cuda_new(0);
    if (be && g_headroom) { /* the plan of a larger job, before the weights load */
        r->headroom_rc = zi_cuda_set_act_headroom(be, g_headroom);
        r->headroom = zi_cuda_act_headroom(be);
        if (g_budget_only) {
            r->budget = zi_cuda_weight_budget(be);
            r->ok = 1;
            _exit(0);
        }
    }
    zi_pipeline *p = NULL;
    uint8_t *rgb = NULL;
    zi_gen_params gp = {.prompt = "a red cube",
                        .width = 64,
                        .height = 48,
                        .steps = 2,
                        .seed = 7,
                        .rng = ZI_RNG_CUDA};
    if (!be || zi_pipeline_load(zi_test_model(""), be, &p) != ZI_OK) {
        snprintf(r->err, sizeof r->err, "%s", zi_errmsg());
        _exit(0);
    }
    r->loaded = 1;
    zi_mem_stats m;
    be->mem_stats(be, &m);
    r->budget = zi_cuda_weight_budget(be);
    r->host_bytes = zi_cuda_host_weight_bytes(be);
    r->pageable_bytes = zi_cuda_host_pageable_bytes(be);
    r->mapped_bytes = zi_cuda_host_mapped_bytes(be);
    r->pin_limit = zi_cuda_pin_limit(be);
    r->device_weights = m.weights;
    if (zi_pipeline_generate(p, &gp, NULL, NULL, &rgb) != ZI_OK) {
        snprintf(r->err, sizeof r->err, "%s", zi_errmsg());
        _exit(0);
    }
    memcpy(r->img, rgb, IMG);
    r->ok = 1;
    _exit(0);
}

static result *run_limited(uint64_t mem, const char *budget, uint64_t limit_mib)
{
    result *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(r != MAP_FAILED);
    memset(r, 0, sizeof *r);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        child(mem, budget, limit_mib, r);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    printf("device %6.0f MiB, budget %-8s = %8.2f MiB: %s host %7.2f MiB, device weights %7.2f "
           "MiB %s\n",
           mem / (double)MIB, budget ? budget : "(auto)",
           r->budget == UINT64_MAX ? -1.0 : r->budget / (double)MIB, r->ok ? "ok" : "FAILED",
           r->host_bytes / (double)MIB, r->device_weights / (double)MIB, r->err);
    return r;
}

static result *run(uint64_t mem, const char *budget)
{
    return run_limited(mem, budget, 0);
}

/* zi_cuda_set_act_headroom: the "auto" budget leaves the plan given plus a 512 MiB margin
 * free, at least 1 GiB (evaluated again at once; 2 GiB before any plan); an explicit
 * budget stays as set. */
static void test_act_headroom(void **state)
{
    (void)state;
    g_budget_only = 1;
    g_headroom = 1; /* a tiny plan: the 1 GiB floor */
    result *small = run(3072 * MIB, NULL);
    g_headroom = 1024 * MIB; /* plan + margin */
    result *mid = run(3072 * MIB, NULL);
    g_headroom = 2048 * MIB;
    result *more = run(3072 * MIB, NULL);
    result *fixed = run(3072 * MIB, "512");
    g_budget_only = 0;
    g_headroom = 0;
    assert_true(small->ok && mid->ok && more->ok && fixed->ok);
    assert_int_equal(small->headroom_rc, ZI_OK);
    assert_int_equal(small->headroom, 1024 * MIB);
    assert_int_equal(mid->headroom, 1536 * MIB);
    assert_int_equal(more->headroom, 2560 * MIB);
    printf("  auto budget %.1f MiB with 1 GiB free, %.1f MiB with 1.5 GiB, %.1f MiB with 2.5 GiB\n",
           small->budget / (double)MIB, mid->budget / (double)MIB, more->budget / (double)MIB);
    assert_true(more->budget > 0);
    assert_int_equal(small->budget - mid->budget, 512 * MIB);
    assert_int_equal(mid->budget - more->budget, 1024 * MIB);
    assert_int_equal(fixed->budget, 512 * MIB);
    /* before any plan: 2 GiB (test_auto_budget relies on it) */
    result *none = run(3072 * MIB, NULL);
    assert_true(none->ok);
    assert_int_equal(small->budget - none->budget, 1024 * MIB);
}

static void test_auto_budget(void **state)
{
    (void)state;
    /* roomy: 3 GiB less the 2 GiB headroom and the backend's own scratch - the ~20 MiB
     * model fits */
    result *big = run(3072 * MIB, NULL);
    assert_true(big->ok);
    assert_int_equal(big->host_bytes, 0);
    uint64_t used = 1024 * MIB - big->budget; /* the backend's scratch at creation */
    assert_true(big->budget < 1024 * MIB && used < 512 * MIB);
    /* the default pin limit: half the host's memory (or of the cgroup limit, when lower) */
    uint64_t phys = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    printf("  pin limit %.1f MiB (host %.1f MiB)\n", big->pin_limit / (double)MIB,
           phys / (double)MIB);
    assert_true(big->pin_limit > 0 && big->pin_limit <= phys / 2 + MIB);
    /* tight: room for half the weights after the headroom and the scratch, so part of the
     * model stays on the host - the image does not change */
    uint64_t tight_mem = 2048 * MIB + used + big->device_weights / 2;
    result *tight = run(tight_mem, NULL);
    assert_true(tight->ok);
    assert_true(tight->host_bytes > 0);
    assert_true(tight->device_weights < big->device_weights);
    assert_memory_equal(tight->img, big->img, IMG);
    /* the same device with the budget turned off: everything resident again */
    result *res = run(tight_mem, "resident");
    assert_true(res->ok);
    assert_int_equal(res->host_bytes, 0);
    assert_memory_equal(res->img, big->img, IMG);
    /* an explicit budget of 0: every weight on the host */
    result *zero = run(3072 * MIB, "0");
    assert_true(zero->ok);
    assert_int_equal(zero->device_weights, 0);
    assert_int_equal(zero->pageable_bytes, 0);
    assert_memory_equal(zero->img, big->img, IMG);
    assert_int_equal(zero->mapped_bytes, 0);
    /* ... past a page-lock limit of 2 MiB: the rest is read from the checkpoint's mapping */
    g_pin_limit_mib = 2;
    result *pin2 = run(3072 * MIB, "0");
    g_pin_limit_mib = 0;
    /* ... on a host that can page-lock only the backend's staging buffers and a few MiB
     * more: the same */
    g_pinned = 72 * MIB;
    result *unpinned = run(3072 * MIB, "0");
    /* ... with the mapping turned off: the rest goes to ordinary memory */
    g_no_map = 1;
    result *copied = run(3072 * MIB, "0");
    /* ... and with too little of that either: a clear error at load, not the kernel's OOM
     * killer once the pages are touched */
    g_host_mib = 4;
    result *no_ram = run(3072 * MIB, "0");
    g_pinned = g_host_mib = 0;
    g_no_map = 0;
    assert_false(no_ram->loaded);
    assert_non_null(strstr(no_ram->err, "out of host memory for the weights kept on the host"));
    printf("  pin limit 2 MiB: %.2f MiB of the host weights mapped; lockable 72 MiB: %.2f MiB "
           "mapped, without the mapping %.2f MiB pageable\n",
           pin2->mapped_bytes / (double)MIB, unpinned->mapped_bytes / (double)MIB,
           copied->pageable_bytes / (double)MIB);
    assert_true(pin2->ok);
    assert_int_equal(pin2->pin_limit, 2 * MIB);
    assert_true(pin2->mapped_bytes > 0);
    assert_int_equal(pin2->pageable_bytes, 0);
    assert_true(pin2->host_bytes - pin2->mapped_bytes <= 2 * MIB); /* pinned: within the limit */
    assert_int_equal(pin2->host_bytes, zero->host_bytes);
    assert_memory_equal(pin2->img, big->img, IMG);
    assert_true(unpinned->ok);
    assert_true(unpinned->mapped_bytes > 0);
    assert_int_equal(unpinned->pageable_bytes, 0);
    assert_true(unpinned->mapped_bytes < unpinned->host_bytes);
    assert_memory_equal(unpinned->img, big->img, IMG);
    assert_true(copied->ok);
    assert_int_equal(copied->mapped_bytes, 0);
    assert_true(copied->pageable_bytes > 0);
    assert_true(copied->pageable_bytes < copied->host_bytes);
    assert_memory_equal(copied->img, big->img, IMG);
    /* a bad value is refused when the backend is created */
    result *bad = run(3072 * MIB, "lots");
    assert_false(bad->ok);
    assert_non_null(strstr(bad->err, "ZI_CUDA_WEIGHT_BUDGET_MB"));
    /* a mapping cap (ZI_CUDA_MEM_LIMIT_MB) counts like a smaller device for auto */
    uint64_t lim = (2048 * MIB + used + big->device_weights / 2) / MIB;
    result *capped = run_limited(3072 * MIB, NULL, lim);
    assert_true(capped->ok);
    assert_true(capped->host_bytes > 0);
    assert_memory_equal(capped->img, big->img, IMG);
    /* an explicit budget larger than the cap: the weights the device refuses stay on the
     * host instead of failing the load (the job itself then has no room left: a clean out
     * of memory, as a budget set too high deserves) */
    result *over = run_limited(3072 * MIB, "1000", (used + big->device_weights / 2) / MIB);
    assert_true(over->loaded);
    assert_true(over->host_bytes > 0);
    assert_true(over->ok || strstr(over->err, "out of device memory") != NULL);
    munmap(capped, sizeof *capped), munmap(over, sizeof *over);
    munmap(big, sizeof *big), munmap(tight, sizeof *tight), munmap(res, sizeof *res);
    munmap(zero, sizeof *zero), munmap(bad, sizeof *bad), munmap(unpinned, sizeof *unpinned);
    munmap(no_ram, sizeof *no_ram), munmap(pin2, sizeof *pin2), munmap(copied, sizeof *copied);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_act_headroom),
        cmocka_unit_test(test_auto_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
