/*
 * top.c - `zimage top`: fetch a fleet snapshot from Redis and render it as text lines.
 *
 * Fetching goes through zi_rstatus_command() (one synchronous hiredis command at a time;
 * a refresh is a few dozen round trips, fine for a fleet of hundreds on a 1-2 s refresh).
 * Rendering builds each line with a small line builder that counts columns, cuts at the
 * view's width and wraps coloured segments in SGR codes that do not count as columns.
 * See top.h for the keys read and the limits.
 */
#include "top.h"

#include <hiredis/hiredis.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "zi_err.h"

/* ---- strings ---- */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when it is not one;
 * *printable = 0 for a control character (C0, DEL, or C1: U+0080..U+009F can act as
 * escape sequences on some terminals). */
static size_t zi_top_utf8_len(const unsigned char *s, size_t n, int *printable)
{
    size_t len;
    unsigned int cp;
    *printable = 1;
    if (s[0] < 0x80) {
        *printable = s[0] >= 0x20 && s[0] != 0x7f;
        return 1;
    }
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* overlong, surrogate or beyond U+10FFFF */
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    *printable = cp > 0x9f;
    return len;
}

char *zi_top_sanitize(const char *s, size_t n)
{
    if (n > ZI_TOP_STR_MAX)
        n = ZI_TOP_STR_MAX;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        int printable;
        size_t len = zi_top_utf8_len(u + i, n - i, &printable);
        if (len == 0 || !printable) {
            out[o++] = '?';
            i += len ? len : 1;
            continue;
        }
        memcpy(out + o, u + i, len);
        o += len;
        i += len;
    }
    out[o] = '\0';
    return out;
}

/* Number of columns of a NUL-terminated sanitized string (one per code point). */
static size_t zi_top_cols(const char *s)
{
    size_t c = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            c++;
    return c;
}

void zi_top_human_bytes(int64_t bytes, char *out, size_t cap)
{
    static const char units[] = "BKMGTPE";
    if (bytes < 0) {
        snprintf(out, cap, "-");
        return;
    }
    if (bytes < 1024) {
        snprintf(out, cap, "%lldB", (long long)bytes);
        return;
    }
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < sizeof units - 1) {
        v /= 1024.0;
        u++;
    }
    /* one decimal below 10 so 1.5G and 21G both fit five columns */
    if (v < 9.95)
        snprintf(out, cap, "%.1f%c", v, units[u]);
    else
        snprintf(out, cap, "%.0f%c", v, units[u]);
}

void zi_top_human_age(int64_t ms, char *out, size_t cap)
{
    if (ms < 0)
        ms = 0; /* a heartbeat from a clock slightly ahead of ours */
    /* tenths below 10 s, cut like the units below (9999 ms is 9.9s, never 10.0s) */
    if (ms < 10000)
        snprintf(out, cap, "%lld.%llds", (long long)(ms / 1000), (long long)(ms / 100 % 10));
    else if (ms < 60000)
        snprintf(out, cap, "%llds", (long long)(ms / 1000));
    else if (ms < 3600000)
        snprintf(out, cap, "%lldm", (long long)(ms / 60000));
    else if (ms < 86400000)
        snprintf(out, cap, "%lldh", (long long)(ms / 3600000));
    else
        snprintf(out, cap, "%lldd", (long long)(ms / 86400000));
}

const char *zi_top_worker_state(const zi_top_worker *w, int64_t now_ms, int heartbeat_s)
{
    int64_t horizon = (int64_t)ZI_TOP_LOST_FACTOR * heartbeat_s * 1000;
    if (now_ms - w->heartbeat_ms > horizon)
        return "lost";
    if (w->has_hash && w->state && w->state[0])
        return w->state;
    return "unknown";
}

int zi_top_redis_ping(zi_rstatus *rs)
{
    int rc = zi_rstatus_ping(rs);
    if (rc == ZI_ETRANSIENT) {
        struct timespec ts = {0, 150 * 1000000L};
        nanosleep(&ts, NULL);
        rc = zi_rstatus_ping(rs);
    }
    return rc;
}

/* ---- snapshot memory ---- */

static void zi_top_worker_clear(zi_top_worker *w)
{
    free(w->id);
    free(w->state);
    free(w->current_job);
    free(w->backend);
    free(w->gpu_name);
    memset(w, 0, sizeof *w);
}

static void zi_top_event_clear(zi_top_event *e)
{
    free(e->job_id);
    free(e->status);
    free(e->worker);
    free(e->error_code);
    free(e->error);
    memset(e, 0, sizeof *e);
}

void zi_top_snapshot_free(zi_top_snapshot *snap)
{
    for (size_t i = 0; i < snap->nworkers; i++)
        zi_top_worker_clear(&snap->workers[i]);
    for (size_t i = 0; i < snap->nevents; i++)
        zi_top_event_clear(&snap->events[i]);
    for (size_t i = 0; i < snap->nfailures; i++)
        zi_top_event_clear(&snap->failures[i]);
    free(snap->workers);
    free(snap->events);
    free(snap->failures);
    memset(snap, 0, sizeof *snap);
}

/* ---- Redis helpers ---- */

/* Runs one command; an error reply becomes ZI_EIO naming the command. */
static int zi_top_cmd(zi_rstatus *rs, redisReply **out, int argc, const char **argv)
{
    void *v = NULL;
    *out = NULL;
    int rc = zi_rstatus_command(rs, argc, argv, &v);
    if (rc != ZI_OK)
        return rc;
    redisReply *r = v;
    if (!r)
        return zi_errorf(ZI_EIO, "redis %s: no reply", argv[0]);
    if (r->type == REDIS_REPLY_ERROR) {
        rc = zi_errorf(ZI_EIO, "redis %s %s: %.200s", argv[0], argc > 1 ? argv[1] : "",
                       r->str ? r->str : "error");
        zi_rstatus_reply_free(r);
        return rc;
    }
    *out = r;
    return ZI_OK;
}

static int zi_top_is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* A sanitized copy of a string reply ("" for nil or other types). */
static char *zi_top_reply_str(const redisReply *r)
{
    if (zi_top_is_str(r))
        return zi_top_sanitize(r->str, r->len);
    return zi_top_sanitize("", 0);
}

/* Decimal integer of a whole string, or -1. */
static int64_t zi_top_parse_i64(const char *s, size_t n)
{
    char buf[32];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno != 0 || *end != '\0' || v < 0)
        return -1;
    return (int64_t)v;
}

static double zi_top_parse_double(const char *s, size_t n)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return -1.0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    double v = strtod(buf, &end);
    if (errno != 0 || *end != '\0' || v != v)
        return -1.0;
    return v;
}

static int64_t zi_top_reply_i64(const redisReply *r)
{
    if (zi_top_is_str(r))
        return zi_top_parse_i64(r->str, r->len);
    if (r && r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    return -1;
}

/* Builds <prefix><middle><id>; ZI_EINVAL when it does not fit. */
static int zi_top_key(const char *prefix, const char *middle, const char *id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s%s%s", prefix, middle, id);
    if (n < 0 || (size_t)n >= cap)
        return zi_errorf(ZI_EINVAL, "redis key %s%s... too long", prefix, middle);
    return ZI_OK;
}

static int zi_top_worker_cmp(const void *a, const void *b)
{
    return strcmp(((const zi_top_worker *)a)->id, ((const zi_top_worker *)b)->id);
}

/* Fills w from HGETALL P worker:{id}. */
static int zi_top_fetch_worker_hash(zi_rstatus *rs, const char *pfx, zi_top_worker *w)
{
    char key[ZI_TOP_STR_MAX + 256];
    int rc = zi_top_key(pfx, "worker:", w->id, key, sizeof key);
    if (rc != ZI_OK)
        return rc;
    const char *argv[] = {"HGETALL", key};
    redisReply *r = NULL;
    rc = zi_top_cmd(rs, &r, 2, argv);
    if (rc != ZI_OK)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY) {
        zi_rstatus_reply_free(r);
        return zi_errorf(ZI_EIO, "redis HGETALL %s: not an array", key);
    }
    w->has_hash = r->elements > 0;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (!zi_top_is_str(k))
            continue;
        char **sfield = NULL;
        int64_t *nfield = NULL;
        if (strcmp(k->str, "state") == 0)
            sfield = &w->state;
        else if (strcmp(k->str, "current_job") == 0)
            sfield = &w->current_job;
        else if (strcmp(k->str, "backend") == 0)
            sfield = &w->backend;
        else if (strcmp(k->str, "gpu_name") == 0)
            sfield = &w->gpu_name;
        else if (strcmp(k->str, "jobs_succeeded") == 0)
            nfield = &w->jobs_succeeded;
        else if (strcmp(k->str, "jobs_failed") == 0)
            nfield = &w->jobs_failed;
        else if (strcmp(k->str, "vram_total_bytes") == 0)
            nfield = &w->vram_total;
        else if (strcmp(k->str, "vram_free_bytes") == 0)
            nfield = &w->vram_free;
        else if (strcmp(k->str, "alloc_reserved_bytes") == 0)
            nfield = &w->alloc_reserved;
        else if (strcmp(k->str, "alloc_allocated_bytes") == 0)
            nfield = &w->alloc_allocated;
        else if (strcmp(k->str, "alloc_peak_bytes") == 0)
            nfield = &w->alloc_peak;
        if (sfield) {
            char *s = zi_top_reply_str(v);
            if (!s) {
                zi_rstatus_reply_free(r);
                return zi_errorf(ZI_ENOMEM, "out of memory");
            }
            free(*sfield);
            *sfield = s;
        } else if (nfield) {
            *nfield = zi_top_reply_i64(v);
        }
    }
    zi_rstatus_reply_free(r);
    return ZI_OK;
}

/* Fills w's job progress from HMGET P job:{current_job} step steps progress. */
static int zi_top_fetch_job_progress(zi_rstatus *rs, const char *pfx, zi_top_worker *w)
{
    char key[ZI_TOP_STR_MAX + 256];
    int rc = zi_top_key(pfx, "job:", w->current_job, key, sizeof key);
    if (rc != ZI_OK)
        return rc;
    const char *argv[] = {"HMGET", key, "step", "steps", "progress"};
    redisReply *r = NULL;
    rc = zi_top_cmd(rs, &r, 5, argv);
    if (rc != ZI_OK)
        return rc;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
        w->job_step = zi_top_reply_i64(r->element[0]);
        w->job_steps = zi_top_reply_i64(r->element[1]);
        if (zi_top_is_str(r->element[2]))
            w->job_progress = zi_top_parse_double(r->element[2]->str, r->element[2]->len);
    }
    zi_rstatus_reply_free(r);
    return ZI_OK;
}

static int zi_top_fetch_workers(zi_rstatus *rs, const zi_top_fetch_opts *o, zi_top_snapshot *s)
{
    const char *pfx = s->prefix;
    char key[512], cutoff[40], stop[24];
    int rc = zi_top_key(pfx, "workers", "", key, sizeof key);
    if (rc != ZI_OK)
        return rc;
    redisReply *r = NULL;
    if (o->prune) {
        /* "(" makes the bound exclusive: members strictly older than one hour */
        snprintf(cutoff, sizeof cutoff, "(%lld", (long long)(s->now_ms - ZI_TOP_PRUNE_MS));
        const char *argv[] = {"ZREMRANGEBYSCORE", key, "-inf", cutoff};
        rc = zi_top_cmd(rs, &r, 4, argv);
        if (rc != ZI_OK)
            return rc;
        if (r->type == REDIS_REPLY_INTEGER && r->integer > 0)
            s->pruned = (size_t)r->integer;
        zi_rstatus_reply_free(r);
    }
    {
        const char *argv[] = {"ZCARD", key};
        rc = zi_top_cmd(rs, &r, 2, argv);
        if (rc != ZI_OK)
            return rc;
        if (r->type == REDIS_REPLY_INTEGER && r->integer > 0)
            s->workers_total = (size_t)r->integer;
        zi_rstatus_reply_free(r);
    }
    snprintf(stop, sizeof stop, "%d", ZI_TOP_MAX_WORKERS - 1);
    const char *argv[] = {"ZRANGE", key, "0", stop, "WITHSCORES"};
    rc = zi_top_cmd(rs, &r, 5, argv);
    if (rc != ZI_OK)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY) {
        zi_rstatus_reply_free(r);
        return zi_errorf(ZI_EIO, "redis ZRANGE %s: not an array", key);
    }
    size_t n = r->elements / 2;
    s->workers = calloc(n ? n : 1, sizeof *s->workers);
    if (!s->workers) {
        zi_rstatus_reply_free(r);
        return zi_errorf(ZI_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *m = r->element[2 * i], *sc = r->element[2 * i + 1];
        if (!zi_top_is_str(m))
            continue;
        zi_top_worker *w = &s->workers[s->nworkers];
        /* the raw member is needed for the hash key, so it is not sanitized here; it is
         * cut, and sanitized when rendered */
        w->id = strndup(m->str, m->len < ZI_TOP_STR_MAX ? m->len : ZI_TOP_STR_MAX);
        w->state = strdup("");
        w->current_job = strdup("");
        w->backend = strdup("");
        w->gpu_name = strdup("");
        s->nworkers++;
        if (!w->id || !w->state || !w->current_job || !w->backend || !w->gpu_name) {
            zi_rstatus_reply_free(r);
            return zi_errorf(ZI_ENOMEM, "out of memory");
        }
        double score = zi_top_is_str(sc) ? zi_top_parse_double(sc->str, sc->len) : -1.0;
        w->heartbeat_ms = score > 0 ? (int64_t)score : 0;
        w->jobs_succeeded = w->jobs_failed = -1;
        w->vram_total = w->vram_free = -1;
        w->alloc_reserved = w->alloc_allocated = w->alloc_peak = -1;
        w->job_step = w->job_steps = -1;
        w->job_progress = -1.0;
    }
    zi_rstatus_reply_free(r);
    if (s->workers_total < s->nworkers)
        s->workers_total = s->nworkers;
    qsort(s->workers, s->nworkers, sizeof *s->workers, zi_top_worker_cmp);
    for (size_t i = 0; i < s->nworkers; i++) {
        zi_top_worker *w = &s->workers[i];
        rc = zi_top_fetch_worker_hash(rs, pfx, w);
        if (rc != ZI_OK)
            return rc;
        if (w->current_job[0]) {
            rc = zi_top_fetch_job_progress(rs, pfx, w);
            if (rc != ZI_OK)
                return rc;
        }
    }
    return ZI_OK;
}

/* Parses one stream entry [id, [field, value, ...]] into e. ZI_EINVAL when malformed. */
static int zi_top_parse_event(const redisReply *entry, zi_top_event *e)
{
    memset(e, 0, sizeof *e);
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        !zi_top_is_str(entry->element[0]) || entry->element[1]->type != REDIS_REPLY_ARRAY)
        return ZI_EINVAL;
    const char *id = entry->element[0]->str;
    const char *dash = memchr(id, '-', entry->element[0]->len);
    e->ts_ms = zi_top_parse_i64(id, dash ? (size_t)(dash - id) : entry->element[0]->len);
    const redisReply *f = entry->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (!zi_top_is_str(k))
            continue;
        char **dst = NULL;
        if (strcmp(k->str, "job_id") == 0)
            dst = &e->job_id;
        else if (strcmp(k->str, "status") == 0)
            dst = &e->status;
        else if (strcmp(k->str, "worker") == 0)
            dst = &e->worker;
        else if (strcmp(k->str, "error_code") == 0)
            dst = &e->error_code;
        if (dst && !*dst && !(*dst = zi_top_reply_str(v)))
            return ZI_ENOMEM;
    }
    char **all[] = {&e->job_id, &e->status, &e->worker, &e->error_code, &e->error};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (!*all[i] && !(*all[i] = strdup("")))
            return ZI_ENOMEM;
    return ZI_OK;
}

static int zi_top_is_final(const char *status)
{
    return strcmp(status, "succeeded") == 0 || strcmp(status, "failed") == 0 ||
           strcmp(status, "cancelled") == 0;
}

static int zi_top_fetch_events(zi_rstatus *rs, const zi_top_fetch_opts *o, zi_top_snapshot *s)
{
    const char *pfx = s->prefix;
    char key[512], count[24];
    int rc = zi_top_key(pfx, "events", "", key, sizeof key);
    if (rc != ZI_OK)
        return rc;
    size_t scan = o->max_events > ZI_TOP_EVENT_SCAN ? o->max_events : ZI_TOP_EVENT_SCAN;
    snprintf(count, sizeof count, "%zu", scan);
    const char *argv[] = {"XREVRANGE", key, "+", "-", "COUNT", count};
    redisReply *r = NULL;
    rc = zi_top_cmd(rs, &r, 6, argv);
    if (rc != ZI_OK)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY) {
        zi_rstatus_reply_free(r);
        return zi_errorf(ZI_EIO, "redis XREVRANGE %s: not an array", key);
    }
    size_t ne = r->elements < o->max_events ? r->elements : o->max_events;
    s->events = calloc(ne ? ne : 1, sizeof *s->events);
    s->failures = calloc(o->max_failures ? o->max_failures : 1, sizeof *s->failures);
    if (!s->events || !s->failures) {
        zi_rstatus_reply_free(r);
        return zi_errorf(ZI_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < r->elements; i++) {
        if (s->nevents >= ne && s->nfailures >= o->max_failures)
            break;
        zi_top_event e;
        rc = zi_top_parse_event(r->element[i], &e);
        if (rc == ZI_EINVAL) {
            zi_top_event_clear(&e);
            continue; /* an entry not written by zimage: skip it */
        }
        if (rc != ZI_OK) {
            zi_top_event_clear(&e);
            zi_rstatus_reply_free(r);
            return zi_errorf(ZI_ENOMEM, "out of memory");
        }
        int failed = strcmp(e.status, "failed") == 0;
        if (failed && s->nfailures < o->max_failures) {
            zi_top_event *f = &s->failures[s->nfailures++];
            *f = e;
            /* the failure keeps e's strings; events get their own copies */
            if (s->nevents < ne) {
                zi_top_event *c = &s->events[s->nevents++];
                c->ts_ms = f->ts_ms;
                c->job_id = strdup(f->job_id);
                c->status = strdup(f->status);
                c->worker = strdup(f->worker);
                c->error_code = strdup(f->error_code);
                c->error = strdup("");
                if (!c->job_id || !c->status || !c->worker || !c->error_code || !c->error) {
                    zi_rstatus_reply_free(r);
                    return zi_errorf(ZI_ENOMEM, "out of memory");
                }
            }
        } else if (s->nevents < ne) {
            s->events[s->nevents++] = e;
        } else {
            zi_top_event_clear(&e);
        }
    }
    zi_rstatus_reply_free(r);

    /* the error message of each failure lives in its job hash */
    for (size_t i = 0; i < s->nfailures; i++) {
        zi_top_event *f = &s->failures[i];
        if (!f->job_id[0])
            continue;
        char jkey[ZI_TOP_STR_MAX + 256];
        rc = zi_top_key(pfx, "job:", f->job_id, jkey, sizeof jkey);
        if (rc != ZI_OK)
            continue; /* an id too long for a key cannot have a hash */
        const char *hargv[] = {"HGET", jkey, "error"};
        rc = zi_top_cmd(rs, &r, 3, hargv);
        if (rc == ZI_EIO)
            continue; /* e.g. WRONGTYPE on a foreign key: show no message */
        if (rc != ZI_OK)
            return rc;
        if (zi_top_is_str(r)) {
            char *msg = zi_top_reply_str(r);
            if (msg) {
                free(f->error);
                f->error = msg;
            }
        }
        zi_rstatus_reply_free(r);
    }

    /* jobs finished in the last minute: stream ids are unix ms */
    char since[32], rcount[24];
    snprintf(since, sizeof since, "%lld", (long long)(s->now_ms - 60000));
    snprintf(rcount, sizeof rcount, "%d", ZI_TOP_RATE_SCAN);
    const char *rargv[] = {"XREVRANGE", key, "+", since, "COUNT", rcount};
    rc = zi_top_cmd(rs, &r, 6, rargv);
    if (rc != ZI_OK)
        return rc;
    if (r->type == REDIS_REPLY_ARRAY) {
        s->rate_capped = r->elements >= (size_t)ZI_TOP_RATE_SCAN;
        for (size_t i = 0; i < r->elements; i++) {
            zi_top_event e;
            if (zi_top_parse_event(r->element[i], &e) == ZI_OK && zi_top_is_final(e.status)) {
                s->finished_last_min++;
                if (strcmp(e.status, "succeeded") == 0)
                    s->succeeded_last_min++;
                else if (strcmp(e.status, "failed") == 0)
                    s->failed_last_min++;
            }
            zi_top_event_clear(&e);
        }
    }
    zi_rstatus_reply_free(r);
    return ZI_OK;
}

int zi_top_fetch(zi_rstatus *rs, const zi_top_fetch_opts *o, zi_top_snapshot *snap)
{
    memset(snap, 0, sizeof *snap);
    snap->now_ms = zi_rstatus_now_ms();
    snap->heartbeat_s = o->heartbeat_s;
    snprintf(snap->redis_addr, sizeof snap->redis_addr, "%s", o->redis_addr ? o->redis_addr : "");
    if (strlen(o->prefix) >= sizeof snap->prefix)
        return zi_errorf(ZI_EINVAL, "redis.key_prefix is longer than %zu bytes",
                         sizeof snap->prefix - 1);
    snprintf(snap->prefix, sizeof snap->prefix, "%s", o->prefix);
    int rc = zi_top_fetch_workers(rs, o, snap);
    if (rc == ZI_OK)
        rc = zi_top_fetch_events(rs, o, snap);
    if (rc != ZI_OK)
        snprintf(snap->error, sizeof snap->error, "%s", zi_errmsg());
    return rc;
}

/* ---- rendering ---- */

/* SGR parameters */
#define ZI_TOP_BOLD "1"
#define ZI_TOP_REVERSE "7"
#define ZI_TOP_RED "31"
#define ZI_TOP_GREEN "32"
#define ZI_TOP_YELLOW "33"
#define ZI_TOP_CYAN "36"
#define ZI_TOP_DIM "2"

typedef struct zi_top_line {
    char buf[ZI_TOP_LINE_MAX];
    size_t len;
    int cols;
    int width; /* 0 = no limit */
    int color;
} zi_top_line;

static void zi_top_line_init(zi_top_line *l, const zi_top_view *v)
{
    l->len = 0;
    l->cols = 0;
    l->buf[0] = '\0';
    l->width = v->width > 0 ? v->width : 0;
    l->color = v->color;
}

static void zi_top_raw(zi_top_line *l, const char *s)
{
    size_t n = strlen(s);
    if (l->len + n + 1 > sizeof l->buf)
        return;
    memcpy(l->buf + l->len, s, n + 1);
    l->len += n;
}

/* Appends text (sanitized on the way: control bytes and invalid UTF-8 become '?'), cut at
 * the line's width, in colour sgr (NULL = plain). Room for the reset code is kept. */
static void zi_top_put(zi_top_line *l, const char *sgr, const char *text)
{
    int colored = l->color && sgr && (!l->width || l->cols < l->width);
    if (colored) {
        char code[16];
        snprintf(code, sizeof code, "\033[%sm", sgr);
        zi_top_raw(l, code);
    }
    const unsigned char *u = (const unsigned char *)text;
    size_t n = strlen(text);
    for (size_t i = 0; i < n;) {
        if (l->width && l->cols >= l->width)
            break;
        int printable;
        size_t len = zi_top_utf8_len(u + i, n - i, &printable);
        const char *src = (const char *)u + i;
        size_t cp = len;
        if (len == 0 || !printable) {
            src = "?";
            cp = 1;
        }
        if (l->len + cp + 8 > sizeof l->buf)
            break;
        memcpy(l->buf + l->len, src, cp);
        l->len += cp;
        l->buf[l->len] = '\0';
        l->cols++;
        i += len ? len : 1;
    }
    if (colored)
        zi_top_raw(l, "\033[0m");
}

static void zi_top_putf(zi_top_line *l, const char *sgr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void zi_top_putf(zi_top_line *l, const char *sgr, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    zi_top_put(l, sgr, tmp);
}

/* One table cell of exactly w columns plus a separating space: left- or right-aligned, a
 * longer text is cut and its last column shows '~'. w = 0: the rest of the line. */
static void zi_top_cell(zi_top_line *l, const char *sgr, const char *text, int w, int right)
{
    char tmp[ZI_TOP_LINE_MAX];
    snprintf(tmp, sizeof tmp, "%s", text && text[0] ? text : "-");
    if (w == 0) {
        zi_top_put(l, sgr, tmp);
        return;
    }
    int cols = (int)zi_top_cols(tmp);
    if (cols > w) {
        /* cut after w-1 code points */
        size_t i = 0;
        int c = 0;
        while (tmp[i] && c < w - 1) {
            i++;
            while (((unsigned char)tmp[i] & 0xc0) == 0x80)
                i++;
            c++;
        }
        tmp[i] = '~';
        tmp[i + 1] = '\0';
        cols = w;
    }
    char pad[256];
    int np = w - cols < (int)sizeof pad - 1 ? w - cols : (int)sizeof pad - 1;
    memset(pad, ' ', (size_t)np);
    pad[np] = '\0';
    if (right)
        zi_top_put(l, NULL, pad);
    zi_top_put(l, sgr, tmp);
    if (!right)
        zi_top_put(l, NULL, pad);
    zi_top_put(l, NULL, " ");
}

typedef struct zi_top_frame_builder {
    zi_top_frame *f;
    size_t cap;
    int height;
    int oom;
} zi_top_frame_builder;

static void zi_top_emit(zi_top_frame_builder *b, zi_top_line *l)
{
    if (b->oom || (b->height && b->f->n >= (size_t)b->height) || b->f->n >= ZI_TOP_MAX_LINES)
        return;
    /* trailing spaces are noise for --once output and tests */
    while (l->len > 0 && l->buf[l->len - 1] == ' ')
        l->buf[--l->len] = '\0';
    if (b->f->n == b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 64;
        char **nl = realloc(b->f->lines, ncap * sizeof *nl);
        if (!nl) {
            b->oom = 1;
            return;
        }
        b->f->lines = nl;
        b->cap = ncap;
    }
    char *s = strdup(l->buf);
    if (!s) {
        b->oom = 1;
        return;
    }
    b->f->lines[b->f->n++] = s;
}

static const char *zi_top_state_color(const char *state)
{
    if (strcmp(state, "ready") == 0)
        return ZI_TOP_GREEN;
    if (strcmp(state, "busy") == 0)
        return ZI_TOP_CYAN;
    if (strcmp(state, "lost") == 0)
        return ZI_TOP_RED;
    return ZI_TOP_YELLOW;
}

static const char *zi_top_status_color(const char *status)
{
    if (strcmp(status, "succeeded") == 0)
        return ZI_TOP_GREEN;
    if (strcmp(status, "failed") == 0)
        return ZI_TOP_RED;
    if (strcmp(status, "running") == 0)
        return ZI_TOP_CYAN;
    if (strcmp(status, "cancelled") == 0)
        return ZI_TOP_YELLOW;
    return NULL;
}

static void zi_top_clock(int64_t ms, int with_date, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!localtime_r(&t, &tm)) {
        snprintf(out, cap, "?");
        return;
    }
    strftime(out, cap, with_date ? "%Y-%m-%d %H:%M:%S %Z" : "%H:%M:%S", &tm);
}

/* column widths of the workers table */
enum {
    ZI_TOP_W_ID_MIN = 6, /* the id and job columns fit their longest value within these */
    ZI_TOP_W_ID_MAX = 32,
    ZI_TOP_W_JOB_MIN = 3,
    ZI_TOP_W_JOB_MAX = 40,
    ZI_TOP_W_STATE = 8,
    ZI_TOP_W_BACKEND = 7,
    ZI_TOP_W_GPU = 16,
    ZI_TOP_W_STEP = 7,
    ZI_TOP_W_PROG = 5,
    ZI_TOP_W_VRAM = 13,
    ZI_TOP_W_MEM = 6,
    ZI_TOP_W_COUNT = 6,
    ZI_TOP_W_HB = 6,
    ZI_TOP_W_TIME = 8,
    ZI_TOP_W_STATUS = 10,
    ZI_TOP_W_CODE = 18,
};

/* Widths of the variable columns: the longest worker id / job id shown, within bounds. */
typedef struct zi_top_widths {
    int id;
    int job;
} zi_top_widths;

static void zi_top_fit(int *w, const char *s, int max)
{
    int c = s ? (int)zi_top_cols(s) : 0;
    if (c > *w)
        *w = c < max ? c : max;
}

static zi_top_widths zi_top_measure(const zi_top_snapshot *s)
{
    zi_top_widths w = {ZI_TOP_W_ID_MIN, ZI_TOP_W_JOB_MIN};
    for (size_t i = 0; i < s->nworkers; i++) {
        zi_top_fit(&w.id, s->workers[i].id, ZI_TOP_W_ID_MAX);
        zi_top_fit(&w.job, s->workers[i].current_job, ZI_TOP_W_JOB_MAX);
    }
    for (size_t i = 0; i < s->nevents; i++) {
        zi_top_fit(&w.id, s->events[i].worker, ZI_TOP_W_ID_MAX);
        zi_top_fit(&w.job, s->events[i].job_id, ZI_TOP_W_JOB_MAX);
    }
    for (size_t i = 0; i < s->nfailures; i++) {
        zi_top_fit(&w.id, s->failures[i].worker, ZI_TOP_W_ID_MAX);
        zi_top_fit(&w.job, s->failures[i].job_id, ZI_TOP_W_JOB_MAX);
    }
    return w;
}

static void zi_top_render_worker(zi_top_line *l, const zi_top_snapshot *s, const zi_top_worker *w,
                                 const zi_top_widths *cw)
{
    char step[48] = "", prog[16] = "", vram[48] = "", a[16], b[16], resv[16], alloc[16], peak[16],
         ok[24] = "", fail[24] = "", hb[16] = "";
    const char *state = zi_top_worker_state(w, s->now_ms, s->heartbeat_s);
    if (w->current_job && w->current_job[0]) {
        if (w->job_step >= 0 && w->job_steps > 0)
            snprintf(step, sizeof step, "%lld/%lld", (long long)w->job_step,
                     (long long)w->job_steps);
        double p = w->job_progress;
        if (p < 0 && w->job_step >= 0 && w->job_steps > 0)
            p = (double)w->job_step / (double)w->job_steps;
        if (p >= 0)
            snprintf(prog, sizeof prog, "%.0f%%", (p > 1 ? 1 : p) * 100.0);
    }
    if (w->vram_total >= 0) {
        zi_top_human_bytes(w->vram_free >= 0 ? w->vram_total - w->vram_free : -1, a, sizeof a);
        zi_top_human_bytes(w->vram_total, b, sizeof b);
        snprintf(vram, sizeof vram, "%s/%s", a, b);
    }
    zi_top_human_bytes(w->alloc_reserved, resv, sizeof resv);
    zi_top_human_bytes(w->alloc_allocated, alloc, sizeof alloc);
    zi_top_human_bytes(w->alloc_peak, peak, sizeof peak);
    if (w->jobs_succeeded >= 0)
        snprintf(ok, sizeof ok, "%lld", (long long)w->jobs_succeeded);
    if (w->jobs_failed >= 0)
        snprintf(fail, sizeof fail, "%lld", (long long)w->jobs_failed);
    if (w->heartbeat_ms > 0)
        zi_top_human_age(s->now_ms - w->heartbeat_ms, hb, sizeof hb);

    zi_top_cell(l, NULL, w->id, cw->id, 0);
    zi_top_cell(l, zi_top_state_color(state), state, ZI_TOP_W_STATE, 0);
    zi_top_cell(l, NULL, w->backend, ZI_TOP_W_BACKEND, 0);
    /* every GPU zimage runs on is an NVIDIA one: the vendor prefix only costs columns */
    const char *gpu = w->gpu_name ? w->gpu_name : "";
    if (strncmp(gpu, "NVIDIA ", 7) == 0)
        gpu += 7;
    zi_top_cell(l, NULL, gpu, ZI_TOP_W_GPU, 0);
    zi_top_cell(l, NULL, w->current_job, cw->job, 0);
    zi_top_cell(l, NULL, step, ZI_TOP_W_STEP, 1);
    zi_top_cell(l, NULL, prog, ZI_TOP_W_PROG, 1);
    zi_top_cell(l, NULL, vram, ZI_TOP_W_VRAM, 1);
    zi_top_cell(l, NULL, resv, ZI_TOP_W_MEM, 1);
    zi_top_cell(l, NULL, alloc, ZI_TOP_W_MEM, 1);
    zi_top_cell(l, NULL, peak, ZI_TOP_W_MEM, 1);
    zi_top_cell(l, NULL, ok, ZI_TOP_W_COUNT, 1);
    zi_top_cell(l, w->jobs_failed > 0 ? ZI_TOP_RED : NULL, fail, ZI_TOP_W_COUNT, 1);
    zi_top_cell(l, strcmp(state, "lost") == 0 ? ZI_TOP_RED : NULL, hb, ZI_TOP_W_HB, 1);
}

int zi_top_render(const zi_top_snapshot *s, const zi_top_view *v, zi_top_frame *out)
{
    memset(out, 0, sizeof *out);
    zi_top_frame_builder b = {.f = out, .height = v->height > 0 ? v->height : 0};
    zi_top_line *l = malloc(sizeof *l);
    if (!l)
        return zi_errorf(ZI_ENOMEM, "out of memory");
    char clock[64], tmp[64];
    const zi_top_widths cw = zi_top_measure(s);

    /* header */
    zi_top_line_init(l, v);
    zi_top_clock(s->now_ms, 1, clock, sizeof clock);
    zi_top_put(l, ZI_TOP_BOLD, "zimage top");
    zi_top_putf(l, NULL, "  %s  redis %s  prefix %s", clock, s->redis_addr, s->prefix);
    if (v->interval_s > 0)
        zi_top_putf(l, ZI_TOP_DIM, "  every %gs, q to quit", v->interval_s);
    zi_top_emit(&b, l);

    size_t ready = 0, busy = 0, lost = 0, other = 0;
    for (size_t i = 0; i < s->nworkers; i++) {
        const char *st = zi_top_worker_state(&s->workers[i], s->now_ms, s->heartbeat_s);
        if (strcmp(st, "ready") == 0)
            ready++;
        else if (strcmp(st, "busy") == 0)
            busy++;
        else if (strcmp(st, "lost") == 0)
            lost++;
        else
            other++;
    }
    zi_top_line_init(l, v);
    zi_top_putf(l, NULL, "workers %zu: ", s->workers_total);
    zi_top_putf(l, ZI_TOP_GREEN, "%zu ready", ready);
    zi_top_put(l, NULL, ", ");
    zi_top_putf(l, ZI_TOP_CYAN, "%zu busy", busy);
    zi_top_put(l, NULL, ", ");
    zi_top_putf(l, lost ? ZI_TOP_RED : NULL, "%zu lost", lost);
    zi_top_putf(l, NULL, ", %zu other", other);
    if (s->workers_total > s->nworkers)
        zi_top_putf(l, NULL, " (showing %zu)", s->nworkers);
    if (v->pruned_total)
        zi_top_putf(l, NULL, "; pruned %zu silent > 1h", v->pruned_total);
    zi_top_putf(l, NULL, "   jobs/min %s%lld (%lld succeeded, %lld failed)",
                s->rate_capped ? ">=" : "", (long long)s->finished_last_min,
                (long long)s->succeeded_last_min, (long long)s->failed_last_min);
    zi_top_emit(&b, l);
    if (s->error[0]) {
        zi_top_line_init(l, v);
        zi_top_putf(l, ZI_TOP_RED, "redis error: %s", s->error);
        zi_top_emit(&b, l);
    }

    /* workers */
    zi_top_line_init(l, v);
    zi_top_emit(&b, l);
    zi_top_line_init(l, v);
    {
        /* the header row is drawn in reverse video as one segment */
        zi_top_line h;
        zi_top_view plain = *v;
        plain.color = 0;
        zi_top_line_init(&h, &plain);
        zi_top_cell(&h, NULL, "WORKER", cw.id, 0);
        zi_top_cell(&h, NULL, "STATE", ZI_TOP_W_STATE, 0);
        zi_top_cell(&h, NULL, "BACKEND", ZI_TOP_W_BACKEND, 0);
        zi_top_cell(&h, NULL, "GPU", ZI_TOP_W_GPU, 0);
        zi_top_cell(&h, NULL, "JOB", cw.job, 0);
        zi_top_cell(&h, NULL, "STEP", ZI_TOP_W_STEP, 1);
        zi_top_cell(&h, NULL, "PROG", ZI_TOP_W_PROG, 1);
        zi_top_cell(&h, NULL, "VRAM USED/TOT", ZI_TOP_W_VRAM, 1);
        zi_top_cell(&h, NULL, "RESV", ZI_TOP_W_MEM, 1);
        zi_top_cell(&h, NULL, "ALLOC", ZI_TOP_W_MEM, 1);
        zi_top_cell(&h, NULL, "PEAK", ZI_TOP_W_MEM, 1);
        zi_top_cell(&h, NULL, "OK", ZI_TOP_W_COUNT, 1);
        zi_top_cell(&h, NULL, "FAILED", ZI_TOP_W_COUNT, 1);
        zi_top_cell(&h, NULL, "HB AGE", ZI_TOP_W_HB, 1);
        zi_top_put(l, ZI_TOP_REVERSE, h.buf);
    }
    zi_top_emit(&b, l);
    for (size_t i = 0; i < s->nworkers; i++) {
        zi_top_line_init(l, v);
        zi_top_render_worker(l, s, &s->workers[i], &cw);
        zi_top_emit(&b, l);
    }
    if (s->nworkers == 0) {
        zi_top_line_init(l, v);
        zi_top_putf(l, ZI_TOP_DIM, "(no workers in %sworkers)", s->prefix);
        zi_top_emit(&b, l);
    }

    /* recent jobs */
    zi_top_line_init(l, v);
    zi_top_emit(&b, l);
    zi_top_line_init(l, v);
    zi_top_put(l, ZI_TOP_BOLD, "RECENT JOBS");
    zi_top_emit(&b, l);
    zi_top_line_init(l, v);
    zi_top_cell(l, ZI_TOP_DIM, "TIME", ZI_TOP_W_TIME, 0);
    zi_top_cell(l, ZI_TOP_DIM, "JOB", cw.job, 0);
    zi_top_cell(l, ZI_TOP_DIM, "STATUS", ZI_TOP_W_STATUS, 0);
    zi_top_cell(l, ZI_TOP_DIM, "WORKER", cw.id, 0);
    zi_top_cell(l, ZI_TOP_DIM, "ERROR_CODE", ZI_TOP_W_CODE, 0);
    zi_top_emit(&b, l);
    size_t ne = s->nevents, nf = s->nfailures;
    if (v->max_events >= 0 && (size_t)v->max_events < ne)
        ne = (size_t)v->max_events;
    if (v->max_failures >= 0 && (size_t)v->max_failures < nf)
        nf = (size_t)v->max_failures;
    for (size_t i = 0; i < ne; i++) {
        const zi_top_event *e = &s->events[i];
        zi_top_line_init(l, v);
        zi_top_clock(e->ts_ms, 0, tmp, sizeof tmp);
        zi_top_cell(l, NULL, tmp, ZI_TOP_W_TIME, 0);
        zi_top_cell(l, NULL, e->job_id, cw.job, 0);
        zi_top_cell(l, zi_top_status_color(e->status), e->status, ZI_TOP_W_STATUS, 0);
        zi_top_cell(l, NULL, e->worker, cw.id, 0);
        zi_top_cell(l, e->error_code[0] ? ZI_TOP_RED : NULL, e->error_code, ZI_TOP_W_CODE, 0);
        zi_top_emit(&b, l);
    }
    if (s->nevents == 0) {
        zi_top_line_init(l, v);
        zi_top_putf(l, ZI_TOP_DIM, "(no events in %sevents)", s->prefix);
        zi_top_emit(&b, l);
    }

    /* recent failures */
    zi_top_line_init(l, v);
    zi_top_emit(&b, l);
    zi_top_line_init(l, v);
    zi_top_put(l, ZI_TOP_BOLD, "RECENT FAILURES");
    zi_top_emit(&b, l);
    zi_top_line_init(l, v);
    zi_top_cell(l, ZI_TOP_DIM, "TIME", ZI_TOP_W_TIME, 0);
    zi_top_cell(l, ZI_TOP_DIM, "JOB", cw.job, 0);
    zi_top_cell(l, ZI_TOP_DIM, "WORKER", cw.id, 0);
    zi_top_cell(l, ZI_TOP_DIM, "ERROR_CODE", ZI_TOP_W_CODE, 0);
    zi_top_cell(l, ZI_TOP_DIM, "ERROR", 0, 0);
    zi_top_emit(&b, l);
    for (size_t i = 0; i < nf; i++) {
        const zi_top_event *e = &s->failures[i];
        zi_top_line_init(l, v);
        zi_top_clock(e->ts_ms, 0, tmp, sizeof tmp);
        zi_top_cell(l, NULL, tmp, ZI_TOP_W_TIME, 0);
        zi_top_cell(l, NULL, e->job_id, cw.job, 0);
        zi_top_cell(l, NULL, e->worker, cw.id, 0);
        zi_top_cell(l, ZI_TOP_RED, e->error_code, ZI_TOP_W_CODE, 0);
        zi_top_cell(l, NULL, e->error, 0, 0);
        zi_top_emit(&b, l);
    }
    if (s->nfailures == 0) {
        zi_top_line_init(l, v);
        zi_top_putf(l, ZI_TOP_DIM, "(none in the last %d events)", ZI_TOP_EVENT_SCAN);
        zi_top_emit(&b, l);
    }
    free(l);
    if (b.oom) {
        zi_top_frame_free(out);
        return zi_errorf(ZI_ENOMEM, "out of memory");
    }
    return ZI_OK;
}

void zi_top_frame_free(zi_top_frame *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->lines[i]);
    free(f->lines);
    f->lines = NULL;
    f->n = 0;
}
