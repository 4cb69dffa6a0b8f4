/*
 * rstatus.c - the contract's Redis keys over hiredis 0.14 (sync API).
 *
 * Every public function: make sure a connection exists (connect + AUTH + SELECT, with
 * exponential back-off between failed connects), send its commands pipelined (in one
 * MULTI/EXEC when they must land together), read every reply. Any I/O error drops the
 * context (hiredis contexts are unusable after one) and returns ZI_ETRANSIENT; server
 * states that pass (LOADING, BUSY, TRYAGAIN, MASTERDOWN, READONLY) are transient too.
 *
 * Leases use small Lua scripts so that renew and release act only while the value is
 * still our worker id (compare-and-set semantics; a plain PEXPIRE/DEL could extend or
 * delete another worker's lease after ours expired). A run's own job writes are fenced the
 * same way by its attempt number (zi_rstatus_fence): one script checks and writes.
 */
#include "rstatus.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "zi_err.h"

#define ZI_RS_MAX_ARGS 128
#define ZI_RS_MAX_CMDS 8
#define ZI_RS_KEY_MAX 512
#define ZI_RS_BACKOFF_MIN_MS 100
#define ZI_RS_BACKOFF_MAX_MS 5000
#define ZI_RS_ERROR_MAX 1024 /* bytes of a job's `error` field */
#define ZI_RS_NUM_MAX 24     /* a decimal int64 and its NUL */

struct zi_rstatus {
    redisContext *c;
    zi_redis_url url; /* password here is the effective one */
    char prefix[129];
    char worker_id[129];
    int64_t job_ttl_s;
    int heartbeat_s;
    int connect_timeout_ms;
    int command_timeout_ms;
    int fail_count;
    int64_t next_connect_ms; /* monotonic */
    int connect_rc;          /* why the last connect failed (returned during back-off) */
    char connect_msg[300];
    int64_t last_progress_ms;
    uint64_t rng;
    /* zi_rstatus_fence: fence_job's writes go through zi_rs_lua_fenced with this attempt */
    int64_t fence;
    char fence_job[256];
};

/* ---- URLs ---- */

static int zi_rs_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into out (cap bytes). 0 on a bad escape or overflow. */
static int zi_rs_pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return 0;
            int hi = zi_rs_hexval(s[i + 1]);
            int lo = zi_rs_hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return 0;
            c = (char)(hi * 16 + lo);
            i += 2;
            if (c == '\0')
                return 0;
        }
        if (o + 1 >= cap)
            return 0;
        out[o++] = c;
    }
    out[o] = '\0';
    return 1;
}

int zi_redis_url_parse(const char *url, zi_redis_url *out)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url)
        return zi_errorf(ZI_EINVAL, "redis url: missing");
    if (strncmp(url, "rediss://", 9) == 0)
        return zi_errorf(ZI_EINVAL, "redis url: TLS (rediss://) is not supported by hiredis 0.14");
    if (strncmp(url, "redis://", 8) != 0)
        return zi_errorf(ZI_EINVAL, "redis url: must start with redis://");
    const char *rest = url + 8;
    const char *at = strrchr(rest, '@');
    if (at) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        size_t ul = colon ? (size_t)(colon - rest) : (size_t)(at - rest);
        if (!zi_rs_pct_decode(rest, ul, out->user, sizeof out->user))
            return zi_errorf(ZI_EINVAL, "redis url: bad user name");
        if (colon && !zi_rs_pct_decode(colon + 1, (size_t)(at - colon - 1), out->password,
                                       sizeof out->password)) {
            explicit_bzero(out->password, sizeof out->password);
            return zi_errorf(ZI_EINVAL,
                             "redis url: bad password (percent-escapes, at most %zu "
                             "bytes)",
                             sizeof out->password - 1);
        }
        rest = at + 1;
    }
    const char *hend;
    const char *hstart = rest;
    if (*rest == '[') {
        hend = strchr(rest, ']');
        if (!hend)
            return zi_errorf(ZI_EINVAL, "redis url: unterminated [ipv6] host");
        hstart = rest + 1;
        rest = hend + 1;
    } else {
        hend = rest + strcspn(rest, ":/?#");
        rest = hend;
    }
    size_t hl = (size_t)(hend - hstart);
    if (hl == 0 || hl >= sizeof out->host)
        return zi_errorf(ZI_EINVAL, "redis url: missing or too long host");
    memcpy(out->host, hstart, hl);
    out->host[hl] = '\0';
    for (size_t i = 0; i < hl; i++) {
        char c = out->host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '_'))
            return zi_errorf(ZI_EINVAL, "redis url: bad host '%.64s'", out->host);
    }
    if (*rest == ':') {
        rest++;
        long p = 0;
        int nd = 0;
        while (*rest >= '0' && *rest <= '9' && nd < 6) {
            p = p * 10 + (*rest++ - '0');
            nd++;
        }
        if (nd == 0 || p < 1 || p > 65535)
            return zi_errorf(ZI_EINVAL, "redis url: bad port");
        out->port = (int)p;
    }
    if (*rest == '/') {
        rest++;
        if (*rest) {
            long d = 0;
            int nd = 0;
            while (*rest >= '0' && *rest <= '9' && nd < 6) {
                d = d * 10 + (*rest++ - '0');
                nd++;
            }
            if (nd == 0 || d > 100000)
                return zi_errorf(ZI_EINVAL, "redis url: bad database number");
            out->db = (int)d;
        }
    }
    if (*rest)
        return zi_errorf(ZI_EINVAL, "redis url: unexpected '%.32s' after host[:port][/db]", rest);
    return ZI_OK;
}

void zi_redis_url_redact(const char *url, char *out, size_t cap)
{
    if (cap == 0)
        return;
    if (!url) {
        out[0] = '\0';
        return;
    }
    const char *scheme_end = strstr(url, "://");
    const char *at = strrchr(url, '@');
    if (!scheme_end || !at || at < scheme_end) {
        snprintf(out, cap, "%s", url);
        return;
    }
    const char *ui = scheme_end + 3;
    const char *colon = memchr(ui, ':', (size_t)(at - ui));
    if (!colon) { /* user only, no password */
        snprintf(out, cap, "%s", url);
        return;
    }
    snprintf(out, cap, "%.*s:<redacted>%s", (int)(colon - url), url, at);
}

/* ---- connection ---- */

static int64_t zi_rs_mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int64_t zi_rstatus_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void zi_rs_drop(zi_rstatus *rs)
{
    if (rs->c) {
        redisFree(rs->c);
        rs->c = NULL;
    }
}

static uint64_t zi_rs_rand(zi_rstatus *rs)
{
    rs->rng ^= rs->rng >> 12;
    rs->rng ^= rs->rng << 25;
    rs->rng ^= rs->rng >> 27;
    return rs->rng * 0x2545F4914F6CDD1Dull;
}

/* Schedules the next connect attempt: 100 ms .. 5 s, doubled per failure, 50-100 % jitter.
 * Remembers the failure (code rc, the current error message) for calls until then. */
static void zi_rs_backoff(zi_rstatus *rs, int rc)
{
    rs->connect_rc = rc;
    snprintf(rs->connect_msg, sizeof rs->connect_msg, "%s", zi_errmsg());
    rs->fail_count++;
    int64_t ms = ZI_RS_BACKOFF_MIN_MS;
    for (int i = 1; i < rs->fail_count && ms < ZI_RS_BACKOFF_MAX_MS; i++)
        ms *= 2;
    if (ms > ZI_RS_BACKOFF_MAX_MS)
        ms = ZI_RS_BACKOFF_MAX_MS;
    ms = ms / 2 + (int64_t)(zi_rs_rand(rs) % (uint64_t)(ms / 2 + 1));
    rs->next_connect_ms = zi_rs_mono_ms() + ms;
}

/* The error of a failed read or write on the context (the caller then drops it). */
static int zi_rs_io_error(const zi_rstatus *rs, const char *what)
{
    return zi_errorf(ZI_ETRANSIENT, "redis %s:%d: %s: %s", rs->url.host, rs->url.port, what,
                     rs->c->errstr[0] ? rs->c->errstr : "connection lost");
}

/* Sends one command on a fresh context during connect; ZI_OK on a non-error reply. */
static int zi_rs_setup_cmd(zi_rstatus *rs, int argc, const char **argv, const char *what)
{
    redisReply *r = redisCommandArgv(rs->c, argc, argv, NULL);
    if (!r)
        return zi_rs_io_error(rs, what);
    int rc = ZI_OK;
    if (r->type == REDIS_REPLY_ERROR) {
        /* never echo the command: it may hold the password */
        int auth = strncmp(r->str, "WRONGPASS", 9) == 0 || strncmp(r->str, "NOAUTH", 6) == 0 ||
                   strstr(r->str, "password") != NULL;
        rc = zi_errorf(auth ? ZI_EAUTH : ZI_EIO, "redis %s:%d: %s refused: %.200s", rs->url.host,
                       rs->url.port, what, r->str);
    }
    freeReplyObject(r);
    return rc;
}

static int zi_rs_connect(zi_rstatus *rs)
{
    if (rs->c)
        return ZI_OK;
    int64_t now = zi_rs_mono_ms();
    if (now < rs->next_connect_ms)
        return zi_errorf(rs->connect_rc, "%s (next connect in %lld ms)", rs->connect_msg,
                         (long long)(rs->next_connect_ms - now));
    struct timeval ctv = {rs->connect_timeout_ms / 1000, (rs->connect_timeout_ms % 1000) * 1000};
    rs->c = redisConnectWithTimeout(rs->url.host, rs->url.port, ctv);
    if (!rs->c || rs->c->err) {
        int rc = zi_errorf(ZI_ETRANSIENT, "redis %s:%d: cannot connect: %s", rs->url.host,
                           rs->url.port, rs->c ? rs->c->errstr : "out of memory");
        zi_rs_drop(rs);
        zi_rs_backoff(rs, rc);
        return rc;
    }
    struct timeval tv = {rs->command_timeout_ms / 1000, (rs->command_timeout_ms % 1000) * 1000};
    redisSetTimeout(rs->c, tv);
    int rc = ZI_OK;
    if (rs->url.password[0]) {
        const char *argv[3] = {"AUTH", rs->url.user, rs->url.password};
        if (rs->url.user[0])
            rc = zi_rs_setup_cmd(rs, 3, argv, "AUTH");
        else {
            argv[1] = rs->url.password;
            rc = zi_rs_setup_cmd(rs, 2, argv, "AUTH");
        }
    }
    if (!rc && rs->url.db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", rs->url.db);
        const char *argv[2] = {"SELECT", db};
        rc = zi_rs_setup_cmd(rs, 2, argv, "SELECT");
    }
    if (rc) {
        zi_rs_drop(rs);
        zi_rs_backoff(rs, rc);
        return rc;
    }
    rs->fail_count = 0;
    rs->next_connect_ms = 0;
    return ZI_OK;
}

int zi_rstatus_create(const zi_rstatus_config *cfg, zi_rstatus **out)
{
    if (!cfg || !cfg->url || !cfg->worker_id)
        return zi_errorf(ZI_EINVAL, "redis: url and worker id are required");
    const char *prefix = cfg->key_prefix ? cfg->key_prefix : "zimage:";
    if (strlen(prefix) > 128 || strlen(cfg->worker_id) > 128 || !cfg->worker_id[0])
        return zi_errorf(ZI_EINVAL, "redis: key prefix or worker id empty or too long");
    zi_rstatus *rs = calloc(1, sizeof *rs);
    if (!rs)
        return zi_errorf(ZI_ENOMEM, "redis: out of memory");
    int rc = zi_redis_url_parse(cfg->url, &rs->url);
    if (rc) {
        free(rs);
        return rc;
    }
    if (cfg->password && *cfg->password) {
        if (strlen(cfg->password) >= sizeof rs->url.password) {
            explicit_bzero(rs, sizeof *rs);
            free(rs);
            return zi_errorf(ZI_EINVAL, "redis: password longer than %zu bytes",
                             sizeof rs->url.password - 1);
        }
        snprintf(rs->url.password, sizeof rs->url.password, "%s", cfg->password);
    }
    snprintf(rs->prefix, sizeof rs->prefix, "%s", prefix);
    snprintf(rs->worker_id, sizeof rs->worker_id, "%s", cfg->worker_id);
    rs->job_ttl_s = cfg->job_ttl_s > 0 ? cfg->job_ttl_s : 604800;
    rs->heartbeat_s = cfg->heartbeat_s > 0 ? cfg->heartbeat_s : 5;
    rs->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 2000;
    rs->command_timeout_ms = cfg->command_timeout_ms > 0 ? cfg->command_timeout_ms : 5000;
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    rs->rng = ((uint64_t)t.tv_nsec << 16) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)rs;
    if (!rs->rng)
        rs->rng = 1;
    (void)zi_rs_connect(rs); /* Redis may come up later: calls will retry */
    zi_error_clear();
    *out = rs;
    return ZI_OK;
}

void zi_rstatus_destroy(zi_rstatus *rs)
{
    if (!rs)
        return;
    zi_rs_drop(rs);
    explicit_bzero(rs->url.password, sizeof rs->url.password);
    free(rs);
}

int zi_rstatus_key(const zi_rstatus *rs, const char *middle, const char *id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s%s%s", rs->prefix, middle ? middle : "", id ? id : "");
    if (n < 0 || (size_t)n >= cap)
        return zi_errorf(ZI_EINVAL, "redis: key for '%.64s' longer than %zu bytes", id ? id : "",
                         cap - 1);
    return ZI_OK;
}

/* ---- command batches ---- */

typedef struct zi_rs_cmd {
    int argc;
    const char *argv[ZI_RS_MAX_ARGS];
} zi_rs_cmd;

typedef struct zi_rs_batch {
    zi_rs_cmd cmds[ZI_RS_MAX_CMDS];
    int n;
    int overflow;
} zi_rs_batch;

static zi_rs_cmd *zi_rs_cmd_new(zi_rs_batch *b)
{
    if (b->n == ZI_RS_MAX_CMDS) {
        b->overflow = 1;
        return &b->cmds[ZI_RS_MAX_CMDS - 1];
    }
    zi_rs_cmd *c = &b->cmds[b->n++];
    c->argc = 0;
    return c;
}

static void zi_rs_arg(zi_rs_batch *b, zi_rs_cmd *c, const char *a)
{
    if (c->argc == ZI_RS_MAX_ARGS) {
        b->overflow = 1;
        return;
    }
    c->argv[c->argc++] = a ? a : "";
}

/* Appends the arguments up to the NULL that ends the list (so none of them may be NULL). */
static void zi_rs_vargs(zi_rs_batch *b, zi_rs_cmd *c, va_list ap)
{
    for (const char *a = va_arg(ap, const char *); a; a = va_arg(ap, const char *))
        zi_rs_arg(b, c, a);
}

/* zi_rs_cmdv(b, NAME, ARG..., NULL): a new command; returned so that callers can append a
 * variable tail. Use it through ZI_RS_CMD(), which adds the NULL. */
static zi_rs_cmd *zi_rs_cmdv(zi_rs_batch *b, const char *name, ...)
{
    zi_rs_cmd *c = zi_rs_cmd_new(b);
    zi_rs_arg(b, c, name);
    va_list ap;
    va_start(ap, name);
    zi_rs_vargs(b, c, ap);
    va_end(ap);
    return c;
}
#define ZI_RS_CMD(b, ...) zi_rs_cmdv((b), __VA_ARGS__, (const char *)NULL)

/* zi_rs_argsv(b, c, ARG..., NULL): appends to c; use it through ZI_RS_ARGS(). */
static void zi_rs_argsv(zi_rs_batch *b, zi_rs_cmd *c, ...)
{
    va_list ap;
    va_start(ap, c);
    zi_rs_vargs(b, c, ap);
    va_end(ap);
}
#define ZI_RS_ARGS(b, c, ...) zi_rs_argsv((b), (c), __VA_ARGS__, (const char *)NULL)

/* Appends name/value pairs (a NULL value is sent as ""). */
static void zi_rs_fields(zi_rs_batch *b, zi_rs_cmd *c, const zi_rstatus_field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        zi_rs_arg(b, c, f[i].name);
        zi_rs_arg(b, c, f[i].value);
    }
}

/* Formats v into buf (ZI_RS_NUM_MAX bytes) and returns buf. */
static const char *zi_rs_i64(char *buf, int64_t v)
{
    snprintf(buf, ZI_RS_NUM_MAX, "%lld", (long long)v);
    return buf;
}

static int zi_rs_transient_error(const char *s)
{
    static const char *const pfx[] = {"LOADING",    "BUSY",     "TRYAGAIN",
                                      "MASTERDOWN", "READONLY", "CLUSTERDOWN"};
    for (size_t i = 0; i < sizeof pfx / sizeof pfx[0]; i++)
        if (strncmp(s, pfx[i], strlen(pfx[i])) == 0)
            return 1;
    return 0;
}

/* Checks a reply (and, for EXEC, each element) for server errors. */
static int zi_rs_check_reply(zi_rstatus *rs, const redisReply *r, const char *what)
{
    if (r->type == REDIS_REPLY_ERROR)
        return zi_errorf(zi_rs_transient_error(r->str) ? ZI_ETRANSIENT : ZI_EIO, "redis %s: %.300s",
                         what, r->str);
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++)
            if (r->element[i] && r->element[i]->type == REDIS_REPLY_ERROR)
                return zi_rs_check_reply(rs, r->element[i], what);
    return ZI_OK;
}

/* Runs the batch pipelined; *last (may be NULL) receives the last command's reply (the
 * EXEC array for a MULTI batch), which the caller frees. */
static int zi_rs_run(zi_rstatus *rs, zi_rs_batch *b, const char *what, redisReply **last)
{
    if (last)
        *last = NULL;
    if (b->overflow)
        return zi_errorf(ZI_EINVAL, "redis %s: too many arguments", what);
    int rc = zi_rs_connect(rs);
    if (rc)
        return rc;
    for (int i = 0; i < b->n; i++)
        if (redisAppendCommandArgv(rs->c, b->cmds[i].argc, b->cmds[i].argv, NULL) != REDIS_OK)
            goto io;
    rc = ZI_OK;
    for (int i = 0; i < b->n; i++) {
        void *rv = NULL;
        if (redisGetReply(rs->c, &rv) != REDIS_OK || !rv)
            goto io;
        redisReply *r = rv;
        int crc = zi_rs_check_reply(rs, r, what);
        if (crc && !rc)
            rc = crc;
        if (i == b->n - 1 && last && !rc)
            *last = r;
        else
            freeReplyObject(r);
    }
    if (!rc && last && *last && (*last)->type == REDIS_REPLY_NIL && b->n > 1 &&
        strcmp(b->cmds[b->n - 1].argv[0], "EXEC") == 0) {
        freeReplyObject(*last);
        *last = NULL;
        return zi_errorf(ZI_EIO, "redis %s: transaction aborted", what);
    }
    return rc;
io:
    rc = zi_rs_io_error(rs, what);
    zi_rs_drop(rs); /* the next call reconnects */
    return rc;
}

/* Ends a MULTI batch with EXEC and runs it; an aborted transaction is an error. *reply
 * (when not NULL) receives EXEC's array of replies on success (the caller frees it). */
static int zi_rs_exec(zi_rstatus *rs, zi_rs_batch *b, const char *what, redisReply **reply)
{
    ZI_RS_CMD(b, "EXEC");
    redisReply *r = NULL;
    int rc = zi_rs_run(rs, b, what, &r);
    if (reply && rc == ZI_OK)
        *reply = r;
    else if (r)
        freeReplyObject(r);
    return rc;
}

/* Builds P<middle><id> into a caller buffer after checking the id. */
static int zi_rs_idkey(const zi_rstatus *rs, const char *middle, const char *id, char *out)
{
    if (!id || !*id)
        return zi_errorf(ZI_EINVAL, "redis: empty id");
    return zi_rstatus_key(rs, middle, id, out, ZI_RS_KEY_MAX);
}

/* Runs the one-key read `CMD <prefix>MIDDLE<id> [arg]` (arg NULL = none) and hands its
 * reply to *r (the caller frees it); key receives the full key for messages. */
static int zi_rs_id_read(zi_rstatus *rs, const char *cmd, const char *middle, const char *id,
                         const char *arg, const char *what, char *key, redisReply **r)
{
    int rc = zi_rs_idkey(rs, middle, id, key);
    if (rc)
        return rc;
    zi_rs_batch b = {0};
    zi_rs_cmd *c = ZI_RS_CMD(&b, cmd, key);
    if (arg)
        zi_rs_arg(&b, c, arg);
    return zi_rs_run(rs, &b, what, r);
}

int zi_rstatus_ping(zi_rstatus *rs)
{
    zi_rs_batch b = {0};
    ZI_RS_CMD(&b, "PING");
    return zi_rs_run(rs, &b, "PING", NULL);
}

/* ---- jobs ---- */

/* The fenced form of a job write (zi_rstatus_fence): KEYS = job hash, events stream;
 * ARGV = fence, worker id, ttl, the number n of HSET arguments, the n HSET field/value
 * arguments, then XADD's arguments after its key (none: no event; n = 0 and none: only
 * the check). Returns 1 when written, else why a later run owns the job: its attempt (a
 * greater number - a resubmission resets it to 0, and the running job then still finishes
 * and records itself), the `succeeded` another worker or run recorded (a redelivery that
 * found this run's upload), or the job given up as too_many_attempts (that refusal counts
 * an attempt but records one less, the runs: it would not fence the last run otherwise;
 * a run's own `running` record, ARGV[5..6] = status running, replaces such a state when
 * worker.max_attempts was raised since). */
static const char zi_rs_lua_fenced[] =
    "local h = redis.call('HMGET', KEYS[1], 'attempt', 'status', 'worker', 'error_code')\n"
    "local a, st, wk = h[1], h[2], h[3]\n"
    "if a and (tonumber(a) or 0) > tonumber(ARGV[1]) then\n"
    "  return 'attempt ' .. a .. ' has started'\n"
    "end\n"
    "if st == 'succeeded' and not (a == ARGV[1] and wk == ARGV[2]) then\n"
    "  return (wk or '?') .. ' recorded it succeeded'\n"
    "end\n"
    "if st == 'failed' and h[4] == 'too_many_attempts' and ARGV[6] ~= 'running' then\n"
    "  return (wk or '?') .. ' gave it up (too_many_attempts)'\n"
    "end\n"
    "local n = tonumber(ARGV[4])\n"
    "if n > 0 then\n"
    "  redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + n))\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
    "end\n"
    "if #ARGV > 4 + n then redis.call('XADD', KEYS[2], unpack(ARGV, 5 + n, #ARGV)) end\n"
    "return 1\n";

void zi_rstatus_fence(zi_rstatus *rs, const char *job_id, int64_t attempt)
{
    rs->fence = job_id && attempt > 0 ? attempt : 0;
    snprintf(rs->fence_job, sizeof rs->fence_job, "%s", rs->fence ? job_id : "");
}

/* Appends the arguments of src from index `from` on to c. */
static void zi_rs_tail(zi_rs_batch *b, zi_rs_cmd *c, const zi_rs_cmd *src, int from)
{
    for (int i = from; i < src->argc; i++)
        zi_rs_arg(b, c, src->argv[i]);
}

/* Runs the fence script for job_id's hash jkey with ekey and the HSET / XADD commands hs
 * and xa (either may be NULL). ZI_ECONFLICT when a later run owns the job. */
static int zi_rs_fenced(zi_rstatus *rs, const char *job_id, const char *jkey, const char *ekey,
                        const zi_rs_cmd *hs, const zi_rs_cmd *xa, const char *what)
{
    char ttl[ZI_RS_NUM_MAX], fence[ZI_RS_NUM_MAX], nh[ZI_RS_NUM_MAX];
    zi_rs_batch b = {0};
    zi_rs_cmd *c = ZI_RS_CMD(&b, "EVAL", zi_rs_lua_fenced, "2", jkey, ekey,
                             zi_rs_i64(fence, rs->fence), rs->worker_id,
                             zi_rs_i64(ttl, rs->job_ttl_s), zi_rs_i64(nh, hs ? hs->argc - 2 : 0));
    if (hs)
        zi_rs_tail(&b, c, hs, 2);
    if (xa)
        zi_rs_tail(&b, c, xa, 2);
    redisReply *r = NULL;
    int rc = zi_rs_run(rs, &b, what, &r);
    if (rc)
        return rc;
    if (r->type == REDIS_REPLY_STRING)
        rc = zi_errorf(ZI_ECONFLICT,
                       "redis %s: job %s: %.200s, this run is attempt %lld: a later "
                       "run owns the job",
                       what, job_id, r->str, (long long)rs->fence);
    else if (r->type != REDIS_REPLY_INTEGER)
        rc = zi_errorf(ZI_EIO, "redis %s: unexpected reply", what);
    freeReplyObject(r);
    return rc;
}

/* Writes a job's hash (HSET key field value ..., the first command of parts), re-arms its
 * TTL and adds the event when parts has a second command (XADD key ...): in one
 * MULTI/EXEC, or - while the job is fenced - in the fence script. */
static int zi_rs_job_write(zi_rstatus *rs, const char *job_id, const zi_rs_batch *parts,
                           const char *what)
{
    const zi_rs_cmd *hs = &parts->cmds[0], *xa = parts->n > 1 ? &parts->cmds[1] : NULL;
    if (parts->overflow)
        return zi_errorf(ZI_EINVAL, "redis %s: too many arguments", what);
    if (rs->fence && strcmp(rs->fence_job, job_id) == 0)
        return zi_rs_fenced(rs, job_id, hs->argv[1], xa ? xa->argv[1] : hs->argv[1], hs, xa, what);
    char ttl[ZI_RS_NUM_MAX];
    zi_rs_batch b = {0};
    ZI_RS_CMD(&b, "MULTI");
    zi_rs_tail(&b, zi_rs_cmd_new(&b), hs, 0);
    ZI_RS_CMD(&b, "EXPIRE", hs->argv[1], zi_rs_i64(ttl, rs->job_ttl_s));
    if (xa)
        zi_rs_tail(&b, zi_rs_cmd_new(&b), xa, 0);
    return zi_rs_exec(rs, &b, what, NULL);
}

int zi_rstatus_fence_check(zi_rstatus *rs, const char *job_id)
{
    char jkey[ZI_RS_KEY_MAX];
    int rc = zi_rs_idkey(rs, "job:", job_id, jkey);
    if (rc || !rs->fence || strcmp(rs->fence_job, job_id) != 0)
        return rc;
    return zi_rs_fenced(rs, job_id, jkey, jkey, NULL, NULL, "fence check");
}

int zi_rstatus_set_status(zi_rstatus *rs, const char *job_id, const char *status,
                          const char *error_code, const char *error, const zi_rstatus_field *extra,
                          size_t nextra)
{
    char jkey[ZI_RS_KEY_MAX], ekey[ZI_RS_KEY_MAX], maxlen[ZI_RS_NUM_MAX];
    char err_cut[ZI_RS_ERROR_MAX + 1];
    int rc = zi_rs_idkey(rs, "job:", job_id, jkey);
    if (!rc)
        rc = zi_rstatus_key(rs, "events", "", ekey, sizeof ekey);
    if (rc)
        return rc;
    if (!status || !*status)
        return zi_errorf(ZI_EINVAL, "redis: empty status");
    zi_rs_i64(maxlen, ZI_RSTATUS_EVENTS_MAXLEN);
    if (error)
        snprintf(err_cut, sizeof err_cut, "%s", error);

    zi_rs_batch parts = {0};
    zi_rs_cmd *c = ZI_RS_CMD(&parts, "HSET", jkey, "status", status, "worker", rs->worker_id);
    /* Every contract field is always present; a run after an earlier failure must not keep
     * the stale error, so a status without one writes them empty. */
    ZI_RS_ARGS(&parts, c, "error_code", error_code ? error_code : "", "error",
               error_code && error ? err_cut : "");
    zi_rs_fields(&parts, c, extra, nextra);
    c = ZI_RS_CMD(&parts, "XADD", ekey, "MAXLEN", "~", maxlen, "*", "job_id", job_id, "status",
                  status, "worker", rs->worker_id);
    if (error_code)
        ZI_RS_ARGS(&parts, c, "error_code", error_code);
    return zi_rs_job_write(rs, job_id, &parts, "set status");
}

int zi_rstatus_job_set(zi_rstatus *rs, const char *job_id, const zi_rstatus_field *fields, size_t n)
{
    char jkey[ZI_RS_KEY_MAX];
    int rc = zi_rs_idkey(rs, "job:", job_id, jkey);
    if (rc)
        return rc;
    if (n == 0)
        return ZI_OK;
    zi_rs_batch parts = {0};
    zi_rs_fields(&parts, ZI_RS_CMD(&parts, "HSET", jkey), fields, n);
    return zi_rs_job_write(rs, job_id, &parts, "job set");
}

void zi_rstatus_hash_free(zi_rstatus_hash *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n; i++) {
        free(h->names ? h->names[i] : NULL);
        free(h->values ? h->values[i] : NULL);
    }
    free(h->names);
    free(h->values);
    memset(h, 0, sizeof *h);
}

const char *zi_rstatus_hash_get(const zi_rstatus_hash *h, const char *name)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->names[i], name) == 0)
            return h->values[i];
    return NULL;
}

static char *zi_rs_strndup(const redisReply *r)
{
    if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS))
        return strdup("");
    char *s = malloc(r->len + 1);
    if (s) {
        memcpy(s, r->str, r->len);
        s[r->len] = '\0';
    }
    return s;
}

int zi_rstatus_job_get(zi_rstatus *rs, const char *job_id, zi_rstatus_hash *out)
{
    memset(out, 0, sizeof *out);
    char jkey[ZI_RS_KEY_MAX];
    redisReply *r = NULL;
    int rc = zi_rs_id_read(rs, "HGETALL", "job:", job_id, NULL, "HGETALL", jkey, &r);
    if (rc)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2) {
        freeReplyObject(r);
        return zi_errorf(ZI_EIO, "redis HGETALL %s: unexpected reply", jkey);
    }
    if (r->elements == 0) {
        freeReplyObject(r);
        return zi_errorf(ZI_ENOTFOUND, "job %s: not found", job_id);
    }
    size_t n = r->elements / 2;
    out->names = calloc(n, sizeof *out->names);
    out->values = calloc(n, sizeof *out->values);
    if (!out->names || !out->values)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        out->names[i] = zi_rs_strndup(r->element[2 * i]);
        out->values[i] = zi_rs_strndup(r->element[2 * i + 1]);
        out->n = i + 1;
        if (!out->names[i] || !out->values[i])
            goto nomem;
    }
    freeReplyObject(r);
    return ZI_OK;
nomem:
    freeReplyObject(r);
    zi_rstatus_hash_free(out);
    return zi_errorf(ZI_ENOMEM, "redis: out of memory");
}

int zi_rstatus_job_field(zi_rstatus *rs, const char *job_id, const char *field, char *out,
                         size_t cap)
{
    char jkey[ZI_RS_KEY_MAX];
    redisReply *r = NULL;
    int rc = zi_rs_id_read(rs, "HGET", "job:", job_id, field ? field : "", "HGET", jkey, &r);
    if (rc)
        return rc;
    if (r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        return zi_errorf(ZI_ENOTFOUND, "job %s: no field %s", job_id, field);
    }
    if (r->len >= cap) {
        freeReplyObject(r);
        return zi_errorf(ZI_EINVAL, "job %s: field %s longer than %zu bytes", job_id, field,
                         cap - 1);
    }
    memcpy(out, r->str, r->len);
    out[r->len] = '\0';
    freeReplyObject(r);
    return ZI_OK;
}

/* KEYS = job hash, lease; ARGV = worker id, lease ttl (ms), job ttl (s). */
static const char zi_rs_lua_attempt[] = "local v = redis.call('GET', KEYS[2])\n"
                                        "if v and v ~= ARGV[1] then\n"
                                        "  return 'its lease is held by ' .. v\n"
                                        "end\n"
                                        "if redis.call('HGET', KEYS[1], 'status') == "
                                        "'succeeded' then\n"
                                        "  return 'it succeeded meanwhile'\n"
                                        "end\n"
                                        "redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])\n"
                                        "local a = redis.call('HINCRBY', KEYS[1], 'attempt', 1)\n"
                                        "redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
                                        "return a\n";

int zi_rstatus_attempt_incr(zi_rstatus *rs, const char *job_id, int64_t lease_ttl_ms,
                            int64_t *attempt)
{
    char jkey[ZI_RS_KEY_MAX], lkey[ZI_RS_KEY_MAX], ttl[ZI_RS_NUM_MAX], lttl[ZI_RS_NUM_MAX];
    int rc = zi_rs_idkey(rs, "job:", job_id, jkey);
    if (!rc)
        rc = zi_rs_idkey(rs, "lease:", job_id, lkey);
    if (rc)
        return rc;
    if (lease_ttl_ms < 1)
        return zi_errorf(ZI_EINVAL, "redis: lease ttl must be >= 1 ms");
    zi_rs_batch b = {0};
    ZI_RS_CMD(&b, "EVAL", zi_rs_lua_attempt, "2", jkey, lkey, rs->worker_id,
              zi_rs_i64(lttl, lease_ttl_ms), zi_rs_i64(ttl, rs->job_ttl_s));
    redisReply *r = NULL;
    if ((rc = zi_rs_run(rs, &b, "counting the attempt", &r)))
        return rc;
    if (r->type == REDIS_REPLY_INTEGER) {
        if (attempt)
            *attempt = r->integer;
    } else if (r->type == REDIS_REPLY_STRING) {
        rc = zi_errorf(ZI_ECONFLICT, "redis: job %s: %.200s: not counting a run", job_id, r->str);
    } else {
        rc = zi_errorf(ZI_EIO, "redis: counting the attempt of %s: unexpected reply", jkey);
    }
    freeReplyObject(r);
    return rc;
}

int zi_rstatus_progress(zi_rstatus *rs, const char *job_id, int step, int steps, int force,
                        int *written)
{
    if (written)
        *written = 0;
    if (steps <= 0 || step < 0 || step > steps)
        return zi_errorf(ZI_EINVAL, "redis: progress %d/%d out of range", step, steps);
    int64_t now = zi_rs_mono_ms();
    if (!force && step != steps && rs->last_progress_ms != 0 &&
        now - rs->last_progress_ms < ZI_RSTATUS_PROGRESS_MIN_MS)
        return ZI_OK;
    char s1[16], s2[16], pr[16];
    snprintf(s1, sizeof s1, "%d", step);
    snprintf(s2, sizeof s2, "%d", steps);
    snprintf(pr, sizeof pr, "%.4f", (double)step / (double)steps);
    zi_rstatus_field f[3] = {{"step", s1}, {"steps", s2}, {"progress", pr}};
    int rc = zi_rstatus_job_set(rs, job_id, f, 3);
    if (rc == ZI_OK) {
        rs->last_progress_ms = now;
        if (written)
            *written = 1;
    }
    return rc;
}

/* ---- leases ---- */

/* Takes the lease when free or already ours (then re-arms its TTL); else returns the holder. */
static const char zi_rs_lua_acquire[] = "local v = redis.call('GET', KEYS[1])\n"
                                        "if v == false or v == ARGV[1] then\n"
                                        "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
                                        "  return 1\n"
                                        "end\n"
                                        "return v\n";
static const char zi_rs_lua_renew[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                      "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                      "end\n"
                                      "return 0\n";
static const char zi_rs_lua_release[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                        "  return redis.call('DEL', KEYS[1])\n"
                                        "end\n"
                                        "return 0\n";

/* Runs a lease script on KEYS[1] = lease:<job_id> with ARGV = this worker's id and, when
 * with_ttl (acquire, renew), ttl_ms (>= 1). The reply goes to *r (the caller frees it); key
 * receives the lease key for messages. */
static int zi_rs_lease_eval(zi_rstatus *rs, const char *script, const char *job_id, int with_ttl,
                            int64_t ttl_ms, const char *what, char *key, redisReply **r)
{
    char ttl[ZI_RS_NUM_MAX];
    if (with_ttl) {
        if (ttl_ms < 1)
            return zi_errorf(ZI_EINVAL, "redis: lease ttl must be >= 1 ms");
        zi_rs_i64(ttl, ttl_ms);
    }
    int rc = zi_rs_idkey(rs, "lease:", job_id, key);
    if (rc)
        return rc;
    zi_rs_batch b = {0};
    zi_rs_cmd *c = ZI_RS_CMD(&b, "EVAL", script, "1", key, rs->worker_id);
    if (with_ttl)
        zi_rs_arg(&b, c, ttl);
    return zi_rs_run(rs, &b, what, r);
}

int zi_rstatus_lease_acquire(zi_rstatus *rs, const char *job_id, int64_t ttl_ms, int *acquired,
                             char *holder, size_t holder_cap)
{
    *acquired = 0;
    if (holder && holder_cap)
        holder[0] = '\0';
    char key[ZI_RS_KEY_MAX];
    redisReply *r = NULL;
    int rc = zi_rs_lease_eval(rs, zi_rs_lua_acquire, job_id, 1, ttl_ms, "lease acquire", key, &r);
    if (rc)
        return rc;
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        *acquired = 1;
    } else if (r->type == REDIS_REPLY_STRING) {
        if (holder && holder_cap)
            snprintf(holder, holder_cap, "%.*s", (int)r->len, r->str);
    } else {
        freeReplyObject(r);
        return zi_errorf(ZI_EIO, "redis lease acquire %s: unexpected reply", key);
    }
    freeReplyObject(r);
    return ZI_OK;
}

int zi_rstatus_lease_renew(zi_rstatus *rs, const char *job_id, int64_t ttl_ms, int *ours)
{
    *ours = 0;
    char key[ZI_RS_KEY_MAX];
    redisReply *r = NULL;
    int rc = zi_rs_lease_eval(rs, zi_rs_lua_renew, job_id, 1, ttl_ms, "lease renew", key, &r);
    if (rc)
        return rc;
    *ours = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return ZI_OK;
}

int zi_rstatus_lease_release(zi_rstatus *rs, const char *job_id, int *released)
{
    if (released)
        *released = 0;
    char key[ZI_RS_KEY_MAX];
    redisReply *r = NULL;
    int rc = zi_rs_lease_eval(rs, zi_rs_lua_release, job_id, 0, 0, "lease release", key, &r);
    if (rc)
        return rc;
    if (released)
        *released = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return ZI_OK;
}

/* ---- cancel ---- */

int zi_rstatus_cancel_requested(zi_rstatus *rs, const char *job_id, int *cancelled)
{
    *cancelled = 0;
    char key[ZI_RS_KEY_MAX];
    redisReply *r = NULL;
    int rc = zi_rs_id_read(rs, "EXISTS", "cancel:", job_id, NULL, "EXISTS cancel", key, &r);
    if (rc)
        return rc;
    *cancelled = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    freeReplyObject(r);
    return ZI_OK;
}

int zi_rstatus_cancel_request(zi_rstatus *rs, const char *job_id, int64_t ttl_s)
{
    char key[ZI_RS_KEY_MAX], ttl[ZI_RS_NUM_MAX];
    int rc = zi_rs_idkey(rs, "cancel:", job_id, key);
    if (rc)
        return rc;
    zi_rs_batch b = {0};
    ZI_RS_CMD(&b, "SET", key, "1", "EX", zi_rs_i64(ttl, ttl_s > 0 ? ttl_s : rs->job_ttl_s));
    return zi_rs_run(rs, &b, "SET cancel", NULL);
}

/* ---- workers ---- */

int zi_rstatus_heartbeat(zi_rstatus *rs, const zi_rstatus_worker_info *info, char *prev,
                         size_t prev_len)
{
    if (prev && prev_len)
        prev[0] = '\0';
    char wkey[ZI_RS_KEY_MAX], zkey[ZI_RS_KEY_MAX], ttl[ZI_RS_NUM_MAX], now[ZI_RS_NUM_MAX];
    char num[7][ZI_RS_NUM_MAX];
    int rc = zi_rs_idkey(rs, "worker:", rs->worker_id, wkey);
    if (!rc)
        rc = zi_rstatus_key(rs, "workers", "", zkey, sizeof zkey);
    if (rc)
        return rc;
    zi_rs_i64(ttl, 3 * (int64_t)rs->heartbeat_s);
    zi_rs_i64(now, zi_rstatus_now_ms());
    const int64_t nums[7] = {info->jobs_succeeded,       info->jobs_failed,
                             info->vram_total_bytes,     info->vram_free_bytes,
                             info->alloc_reserved_bytes, info->alloc_allocated_bytes,
                             info->alloc_peak_bytes};
    for (int i = 0; i < 7; i++)
        zi_rs_i64(num[i], nums[i]);
    const zi_rstatus_field f[] = {
        {"state", info->state},           {"current_job", info->current_job},
        {"jobs_succeeded", num[0]},       {"jobs_failed", num[1]},
        {"backend", info->backend},       {"gpu_name", info->gpu_name},
        {"vram_total_bytes", num[2]},     {"vram_free_bytes", num[3]},
        {"alloc_reserved_bytes", num[4]}, {"alloc_allocated_bytes", num[5]},
        {"alloc_peak_bytes", num[6]},     {"model", info->model},
        {"version", info->version},       {"heartbeat_at", now},
        {"instance", info->instance},
    };
    zi_rs_batch b = {0};
    ZI_RS_CMD(&b, "MULTI");
    ZI_RS_CMD(&b, "HGET", wkey, "instance");
    ZI_RS_CMD(&b, "ZADD", zkey, now, rs->worker_id);
    zi_rs_fields(&b, ZI_RS_CMD(&b, "HSET", wkey), f, sizeof f / sizeof f[0]);
    ZI_RS_CMD(&b, "EXPIRE", wkey, ttl);
    redisReply *r = NULL;
    rc = zi_rs_exec(rs, &b, "heartbeat", &r);
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_STRING && prev && prev_len)
        snprintf(prev, prev_len, "%s", r->element[0]->str);
    if (r)
        freeReplyObject(r);
    return rc;
}

int zi_rstatus_worker_remove(zi_rstatus *rs)
{
    char wkey[ZI_RS_KEY_MAX], zkey[ZI_RS_KEY_MAX];
    int rc = zi_rs_idkey(rs, "worker:", rs->worker_id, wkey);
    if (!rc)
        rc = zi_rstatus_key(rs, "workers", "", zkey, sizeof zkey);
    if (rc)
        return rc;
    zi_rs_batch b = {0};
    ZI_RS_CMD(&b, "MULTI");
    ZI_RS_CMD(&b, "ZREM", zkey, rs->worker_id);
    ZI_RS_CMD(&b, "DEL", wkey);
    return zi_rs_exec(rs, &b, "worker remove", NULL);
}

/* ---- raw ---- */

int zi_rstatus_command(zi_rstatus *rs, int argc, const char **argv, void **reply)
{
    *reply = NULL;
    if (argc < 1 || argc > ZI_RS_MAX_ARGS)
        return zi_errorf(ZI_EINVAL, "redis: 1..%d arguments", ZI_RS_MAX_ARGS);
    zi_rs_batch b = {0};
    zi_rs_cmd *c = zi_rs_cmd_new(&b);
    for (int i = 0; i < argc; i++)
        zi_rs_arg(&b, c, argv[i]);
    redisReply *r = NULL;
    int rc = zi_rs_run(rs, &b, argv[0], &r);
    if (rc)
        return rc;
    *reply = r;
    return ZI_OK;
}

void zi_rstatus_reply_free(void *reply)
{
    if (reply)
        freeReplyObject(reply);
}
