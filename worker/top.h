/*
 * top.h - `zimage top`: a snapshot of the worker fleet read from Redis, and its rendering
 * as a frame of text lines (the terminal handling lives in cmd_top.c).
 *
 * Fetching (zi_top_fetch) reads the contract keys (docs/contract.md, "Redis"; P = prefix):
 *   P workers       ZREMRANGEBYSCORE of members older than ZI_TOP_PRUNE_MS (pruning is a
 *                   side effect of `top`: dead workers never remove themselves), then ZRANGE
 *   P worker:{id}   HGETALL for each member (the hash may have expired: a lost worker)
 *   P job:{id}      HMGET step steps progress of each busy worker's current job, and
 *                   HGET error of each recent failure
 *   P events        XREVRANGE: recent jobs, recent failures, and jobs finished in the last
 *                   minute (stream ids are the entries' unix ms, so "the last minute" is an
 *                   id range)
 * Rendering (zi_top_render) is pure: snapshot + view -> lines, so tests drive it without
 * Redis or a terminal. A worker is `lost` when its heartbeat score is older than
 * 3 x worker.heartbeat_s (the same horizon as the worker hash's TTL).
 *
 * Limits: at most ZI_TOP_MAX_WORKERS workers are read per refresh (the header says how
 * many more exist); the jobs/min count reads at most ZI_TOP_RATE_SCAN events; every string
 * read from Redis is cut to ZI_TOP_STR_MAX bytes and control characters or invalid UTF-8
 * are shown as '?' (a worker id must not be able to drive the terminal). Widths count one
 * column per code point (wide CJK glyphs are not measured).
 */
#ifndef ZI_TOP_H
#define ZI_TOP_H

#include <stddef.h>
#include <stdint.h>

#include "rstatus.h"

#define ZI_TOP_MAX_WORKERS 1000
#define ZI_TOP_PRUNE_MS 3600000LL /* members older than one hour leave P workers */
#define ZI_TOP_LOST_FACTOR 3      /* lost: heartbeat older than 3 x heartbeat_s */
#define ZI_TOP_EVENT_SCAN 500     /* newest events scanned for recent failures */
#define ZI_TOP_RATE_SCAN 10000    /* at most this many events counted for jobs/min */
#define ZI_TOP_STR_MAX 256        /* longest string kept from Redis */
#define ZI_TOP_LINE_MAX 4096      /* bytes of one rendered line (with colour codes) */
#define ZI_TOP_MAX_LINES 4096     /* lines of one frame */

/* One worker: the zset member and score, its hash (when present) and its job's progress.
 * Strings are heap-owned ("" when absent); numbers are -1 when absent or not a number. */
typedef struct zi_top_worker {
    char *id;
    int64_t heartbeat_ms; /* score in P workers */
    int has_hash;         /* P worker:{id} exists */
    char *state;
    char *current_job;
    char *backend;
    char *gpu_name;
    int64_t jobs_succeeded;
    int64_t jobs_failed;
    int64_t vram_total;
    int64_t vram_free;
    int64_t alloc_reserved;
    int64_t alloc_allocated;
    int64_t alloc_peak;
    int64_t job_step; /* from P job:{current_job} */
    int64_t job_steps;
    double job_progress; /* 0..1, or -1 */
} zi_top_worker;

/* One entry of P events (newest first in the snapshot). */
typedef struct zi_top_event {
    int64_t ts_ms; /* the ms part of the stream id */
    char *job_id;
    char *status;
    char *worker;
    char *error_code;
    char *error; /* failures only: the job hash's `error` ("" when gone) */
} zi_top_event;

typedef struct zi_top_snapshot {
    int64_t now_ms;
    char redis_addr[320]; /* host:port/db, never a password */
    char prefix[128];
    int heartbeat_s;
    zi_top_worker *workers; /* sorted by id */
    size_t nworkers;
    size_t workers_total; /* ZCARD: may exceed nworkers */
    size_t pruned;        /* members removed by this fetch */
    zi_top_event *events; /* newest first */
    size_t nevents;
    zi_top_event *failures; /* newest first */
    size_t nfailures;
    int64_t finished_last_min; /* succeeded + failed + cancelled in the last 60 s */
    int64_t succeeded_last_min;
    int64_t failed_last_min;
    int rate_capped; /* the count stopped at ZI_TOP_RATE_SCAN */
    char error[256]; /* "" or why this fetch failed (live mode shows it) */
} zi_top_snapshot;

typedef struct zi_top_fetch_opts {
    int heartbeat_s;   /* worker.heartbeat_s */
    size_t max_events; /* recent jobs to keep */
    size_t max_failures;
    int prune;              /* 1: ZREMRANGEBYSCORE members older than ZI_TOP_PRUNE_MS */
    const char *prefix;     /* redis.key_prefix */
    const char *redis_addr; /* shown in the header */
} zi_top_fetch_opts;

/* Reads one snapshot (see top). On failure returns ZI_ETRANSIENT (Redis unreachable) or
 * ZI_EIO (protocol error, wrong key type) with zi_errmsg() set, and snap holds what was
 * read before the failure plus snap->error. Call zi_top_snapshot_free() in every case. */
int zi_top_fetch(zi_rstatus *rs, const zi_top_fetch_opts *o, zi_top_snapshot *snap);
void zi_top_snapshot_free(zi_top_snapshot *snap);

/* The state shown for w: "lost" when its heartbeat is older than 3 x heartbeat_s, else
 * the hash's state, else "unknown" (no hash yet). */
const char *zi_top_worker_state(const zi_top_worker *w, int64_t now_ms, int heartbeat_s);

/* Human units: bytes in binary units ("0B", "512B", "1.5K", "21G", "-" when < 0) and ages
 * ("0.4s", "42s", "12m", "3h", "2d"). */
void zi_top_human_bytes(int64_t bytes, char *out, size_t cap);
void zi_top_human_age(int64_t ms, char *out, size_t cap);

typedef struct zi_top_view {
    int width;           /* columns; 0 = no limit */
    int height;          /* rows; 0 = no limit */
    int color;           /* 1: ANSI SGR colours (never with --once) */
    double interval_s;   /* shown in the header; 0 = one frame (--once) */
    size_t pruned_total; /* members pruned since `top` started */
    int max_events;      /* recent jobs shown; < 0: all in the snapshot */
    int max_failures;    /* recent failures shown; < 0: all in the snapshot */
} zi_top_view;

/* A rendered frame: lines without newlines (colour codes included when view->color). */
typedef struct zi_top_frame {
    char **lines;
    size_t n;
} zi_top_frame;

/* Renders snap for view. Lines are cut to view->width columns and the frame to
 * view->height lines. ZI_ENOMEM on allocation failure. */
int zi_top_render(const zi_top_snapshot *snap, const zi_top_view *view, zi_top_frame *out);
void zi_top_frame_free(zi_top_frame *f);

/* PING, and once more after rstatus's first reconnect back-off (at most 100 ms) when the
 * first try failed, so the error names the cause ("Connection refused") rather than the
 * back-off. For commands that must fail at once when Redis is down. */
int zi_top_redis_ping(zi_rstatus *rs);

/* Copies at most ZI_TOP_STR_MAX bytes of s (n bytes) to a fresh string, replacing control
 * characters and invalid UTF-8 with '?'. NULL on allocation failure. */
char *zi_top_sanitize(const char *s, size_t n);

#endif
