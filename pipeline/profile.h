/*
 * profile.h - where a backend's time goes, op by op (`zimage bench --profile`).
 *
 * zi_profile_start() swaps the compute and transfer entries of a backend's function
 * table for timing wrappers; each wrapped op runs, then be->sync() waits for its device
 * work, and the wall time is added to the op's total. zi_profile_stop() puts the original
 * table back. So the figures are per-op wall times including launch and synchronisation
 * (a few microseconds per op on a GPU): the breakdown of a DiT forward or a VAE decode,
 * not a replacement for the unprofiled totals, which run without the added waits.
 *
 * Works with any backend. One profile per backend at a time; a profiled backend is used
 * from one thread (as every backend is). Not re-entrant with respect to start/stop.
 */
#ifndef ZI_PROFILE_H
#define ZI_PROFILE_H

#include "backend.h"

#include <stdint.h>

typedef struct zi_profile_entry {
    const char *op; /* backend.h field name: "linear", "attention", ... (static string) */
    uint64_t calls;
    double ms; /* wall time summed over the calls */
} zi_profile_entry;

/* The number of distinct ops a profile can report (the size for zi_profile_stop's out). */
#define ZI_PROFILE_MAX_OPS 24

/* Starts profiling `be`. ZI_EINVAL if it is already being profiled or the table of
 * profiled backends is full (8). */
int zi_profile_start(zi_backend *be);

/* Stops profiling `be`, restores its table and writes the ops that were called, sorted by
 * time (largest first), to out[0 .. *n - 1] (cap entries at most). ZI_EINVAL when `be`
 * is not being profiled. */
int zi_profile_stop(zi_backend *be, zi_profile_entry *out, int cap, int *n);

#endif
