/*
 * rstatus.h - job status, events, heartbeats, leases and cancel flags in Redis.
 *
 * Keys (docs/contract.md, "Redis"; P = key_prefix, default "zimage:"):
 *   P job:{id}     hash, EXPIRE job_ttl_s after every write
 *   P events       stream, XADD P events MAXLEN ~ 100000 * job_id .. status .. worker ..
 *                  [error_code ..]
 *   P workers      sorted set, member = worker id, score = last heartbeat (unix ms)
 *   P worker:{id}  hash of every contract field, EXPIRE 3 x heartbeat_s
 *   P lease:{id}   string = worker id, PX ttl; renew/release only while still ours (Lua)
 *   P cancel:{id}  string set by anyone; EXISTS = cancel requested
 *
 * Uses hiredis 0.14's synchronous API (no RESP3, no TLS). Connection from redis.url:
 * redis://[[user]:password@]host[:port][/db]; an explicit password (ZIMAGE_REDIS_PASSWORD)
 * wins over the URL's. AUTH and SELECT are sent on every (re)connect.
 *
 * Failure model: a connection error never crashes and never blocks long. A call made
 * while Redis is unreachable returns ZI_ETRANSIENT (the caller retries before committing).
 * After a failure the handle reconnects on the next call; consecutive failed connects
 * back off exponentially (100 ms .. 5 s, with jitter), and calls inside the back-off
 * window fail at once with the last connect failure: ZI_ETRANSIENT, or ZI_EAUTH when the
 * password was refused. Protocol or server errors (wrong type, NOAUTH, script error) return
 * ZI_EIO. Commands of one function go in one MULTI/EXEC (or one script).
 *
 * Thread safety: one handle per thread (hiredis contexts are not shareable).
 * Secrets: the password is used for AUTH only; it is never logged or stored.
 */
#ifndef ZI_RSTATUS_H
#define ZI_RSTATUS_H

#include <stddef.h>
#include <stdint.h>

#define ZI_RSTATUS_EVENTS_MAXLEN 100000
#define ZI_RSTATUS_PROGRESS_MIN_MS 100 /* progress writes: at most 10 per second */

/* A parsed redis:// URL. */
typedef struct zi_redis_url {
    char host[256];
    int port;           /* default 6379 */
    int db;             /* default 0 */
    char user[128];     /* "" = none (Redis 6 ACL user) */
    char password[256]; /* "" = none */
} zi_redis_url;

/* Parses redis://[[user]:password@]host[:port][/db] (percent-escapes in user/password
 * decoded; "[v6addr]" hosts allowed). ZI_EINVAL with a message that never contains the
 * password. */
int zi_redis_url_parse(const char *url, zi_redis_url *out);

/* Writes url with the password replaced by "<redacted>" (unchanged when it has none). */
void zi_redis_url_redact(const char *url, char *out, size_t cap);

typedef struct zi_rstatus_config {
    const char *url;        /* redis.url */
    const char *password;   /* NULL or "" = the URL's password (if any) */
    const char *key_prefix; /* "zimage:" */
    const char *worker_id;  /* written as `worker` in job hashes/events; lease owner */
    int64_t job_ttl_s;      /* EXPIRE of job hashes */
    int heartbeat_s;        /* worker hash EXPIRE = 3 x heartbeat_s */
    int connect_timeout_ms; /* 0 = 2000 */
    int command_timeout_ms; /* 0 = 5000 */
} zi_rstatus_config;

typedef struct zi_rstatus zi_rstatus;

/* One hash field for writes. */
typedef struct zi_rstatus_field {
    const char *name;
    const char *value;
} zi_rstatus_field;

/* A hash read back (HGETALL): n pairs, heap-owned. */
typedef struct zi_rstatus_hash {
    size_t n;
    char **names;
    char **values;
} zi_rstatus_hash;

/* Contents of the worker hash (strings may be NULL = ""). */
typedef struct zi_rstatus_worker_info {
    const char *state;       /* starting | loading | ready | busy | draining */
    const char *current_job; /* "" when idle */
    int64_t jobs_succeeded;
    int64_t jobs_failed;
    const char *backend;
    const char *gpu_name;
    int64_t vram_total_bytes;
    int64_t vram_free_bytes;
    int64_t alloc_reserved_bytes;
    int64_t alloc_allocated_bytes;
    int64_t alloc_peak_bytes;
    const char *model;
    const char *version;
    const char *instance; /* this process's token (worker.id must be unique: see heartbeat) */
} zi_rstatus_worker_info;

/* Copies cfg and tries to connect once. Returns ZI_OK even when Redis is down (calls then
 * return ZI_ETRANSIENT until it comes up); ZI_EINVAL for a bad URL or config. */
int zi_rstatus_create(const zi_rstatus_config *cfg, zi_rstatus **out);
void zi_rstatus_destroy(zi_rstatus *rs);

/* PING. ZI_OK when connected and answering. */
int zi_rstatus_ping(zi_rstatus *rs);

/* Current unix time in ms (the clock used for every *_at field). */
int64_t zi_rstatus_now_ms(void);

/* HSET P job:{id} status <status> worker <worker_id> error_code E error M + the extra
 * fields, EXPIRE job_ttl_s, and XADD P events MAXLEN ~ 100000 * job_id ID status S
 * worker W [error_code E] - all in one MULTI/EXEC. error_code NULL (no failure) writes
 * error_code and error as "" so the hash always has every field (for failures pass both;
 * error is cut to 1024 bytes). */
int zi_rstatus_set_status(zi_rstatus *rs, const char *job_id, const char *status,
                          const char *error_code, const char *error, const zi_rstatus_field *extra,
                          size_t nextra);

/* Fences this handle's writes to one run of a job: while set, zi_rstatus_set_status and
 * zi_rstatus_job_set (so also progress) on job_id are checked and written in one script,
 * which writes nothing and returns ZI_ECONFLICT when a later run owns the job: the hash's
 * `attempt` is greater than `attempt` (another worker took the job over while this one was
 * stalled or cut off), the hash says `succeeded` written by another worker or run (a
 * redelivery that found this run's upload), or `failed` with too_many_attempts. An absent
 * hash (Redis lost it) or attempt 0 (the job was submitted again, which does not stop the
 * run) is written. job_id NULL or attempt <= 0 lifts the fence. */
void zi_rstatus_fence(zi_rstatus *rs, const char *job_id, int64_t attempt);

/* The same check alone: ZI_OK, ZI_ECONFLICT (with the reason), or a Redis error. ZI_OK when
 * job_id is not fenced. */
int zi_rstatus_fence_check(zi_rstatus *rs, const char *job_id);

/* HSET of fields on P job:{id} + EXPIRE job_ttl_s (no event). */
int zi_rstatus_job_set(zi_rstatus *rs, const char *job_id, const zi_rstatus_field *fields,
                       size_t n);

/* HGETALL P job:{id}. ZI_ENOTFOUND when the hash does not exist (out left empty).
 * Free with zi_rstatus_hash_free. */
int zi_rstatus_job_get(zi_rstatus *rs, const char *job_id, zi_rstatus_hash *out);

/* HGET of one field into out (ZI_ENOTFOUND when the field or hash is missing). */
int zi_rstatus_job_field(zi_rstatus *rs, const char *job_id, const char *field, char *out,
                         size_t cap);

/* The value of name in h, or NULL. */
const char *zi_rstatus_hash_get(const zi_rstatus_hash *h, const char *name);
void zi_rstatus_hash_free(zi_rstatus_hash *h);

/* Counts a run's attempt under the job's lease, in one script: when P lease:{id} is ours
 * or free (then taken, PX lease_ttl_ms), HINCRBY P job:{id} attempt 1 (+ EXPIRE) and
 * *attempt = the new value; when another worker holds it, nothing is counted and
 * ZI_ECONFLICT names the holder (this worker's lease expired meanwhile - it was stalled -
 * and that worker runs the job now); ZI_ECONFLICT also when the hash says `succeeded`
 * (finished meanwhile). Call before each run (contract: attempts are counted before a run
 * starts). Counting only under the lease keeps the highest attempt with the lease holder,
 * which the attempt fence (zi_rstatus_fence) relies on. */
int zi_rstatus_attempt_incr(zi_rstatus *rs, const char *job_id, int64_t lease_ttl_ms,
                            int64_t *attempt);

/* HSET step, steps, progress (= step/steps, 4 decimals) - rate-limited: a call less than
 * ZI_RSTATUS_PROGRESS_MIN_MS after the last write for this handle is skipped (ZI_OK,
 * *written = 0) unless step == steps or force. written may be NULL. */
int zi_rstatus_progress(zi_rstatus *rs, const char *job_id, int step, int steps, int force,
                        int *written);

/* Lease P lease:{id} = worker_id with PX ttl_ms. *acquired = 1 when it was free or already
 * ours (a previous incarnation with the same id: renewed); else 0 and holder (may be NULL)
 * receives the current owner. */
int zi_rstatus_lease_acquire(zi_rstatus *rs, const char *job_id, int64_t ttl_ms, int *acquired,
                             char *holder, size_t holder_cap);

/* PEXPIRE only if the lease is still ours: *ours = 1 renewed, 0 lost (expired or taken). */
int zi_rstatus_lease_renew(zi_rstatus *rs, const char *job_id, int64_t ttl_ms, int *ours);

/* DEL only if still ours; *released (may be NULL) = 1 when deleted. */
int zi_rstatus_lease_release(zi_rstatus *rs, const char *job_id, int *released);

/* EXISTS P cancel:{id} -> *cancelled 0/1. */
int zi_rstatus_cancel_requested(zi_rstatus *rs, const char *job_id, int *cancelled);

/* SET P cancel:{id} 1 EX ttl_s (0 = job_ttl_s). For tools and tests. */
int zi_rstatus_cancel_request(zi_rstatus *rs, const char *job_id, int64_t ttl_s);

/* ZADD P workers <now ms> <worker_id>; HSET P worker:{id} every contract field +
 * heartbeat_at + instance; EXPIRE 3 x heartbeat_s - in one MULTI/EXEC, which first reads
 * the hash's `instance`: prev (prev_len bytes, may be NULL) receives it ("" when none), so
 * a worker sees when another process wrote its hash since its last heartbeat. */
int zi_rstatus_heartbeat(zi_rstatus *rs, const zi_rstatus_worker_info *info, char *prev,
                         size_t prev_len);

/* ZREM P workers <id> and DEL P worker:{id} (clean shutdown). */
int zi_rstatus_worker_remove(zi_rstatus *rs);

/* Runs one raw command (argv of argc strings) and returns its reply as a freshly allocated
 * hiredis redisReply (cast from void*; free with zi_rstatus_reply_free). For tools such as
 * `zimage top`. Same failure model as above. */
int zi_rstatus_command(zi_rstatus *rs, int argc, const char **argv, void **reply);
void zi_rstatus_reply_free(void *reply);

/* Builds P <middle> <id> into out (e.g. ("job:", "abc") -> "zimage:job:abc"). ZI_EINVAL
 * when it does not fit. */
int zi_rstatus_key(const zi_rstatus *rs, const char *middle, const char *id, char *out, size_t cap);

#endif
