/*
 * worker.c - the worker daemon (see worker.h for the threads and docs/worker.md for the
 * delivery semantics).
 *
 * The invariant everything here serves: a message's offset is stored (for the next
 * commit) only by the main thread, only after the job thread reported that the job's
 * final state is durably written (Redis hash + event, and the DLQ copy where one is due),
 * and only while the message's partition is still assigned to this worker in the same
 * assignment epoch it was polled in. Everything else - Redis or S3 down, a rebalance, a
 * drain that runs out of time - either retries or leaves the offset alone, so the job is
 * delivered again and the de-duplication (hash `succeeded`, S3 object with our
 * x-amz-meta-job-id, the lease) keeps it from being computed twice.
 */
#include "worker.h"
#include "backend.h"
#include "cli_util.h"
#include "http.h"
#include "job.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "pipeline.h"
#include "png.h"
#include "rstatus.h"
#include "s3.h"
#include "vae.h"
#include "zi_err.h"
#ifdef ZI_HAVE_CUDA
#include "zi_cuda.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define ZI_WK_STORE 1   /* final state written: store the offset */
#define ZI_WK_NOSTORE 0 /* no final state (revoked, draining): leave the offset */

#define ZI_WK_DLQ_CUT_RETRY 65536        /* DLQ value size after a "too large" refusal */
#define ZI_WK_DRAIN_ABORT_GRACE_MS 15000 /* after asking a job to stop at a drain deadline */
#define ZI_WK_STALL_TIMEOUT_GPU_S 600    /* worker.stall_timeout_s -1 on the CUDA backend */

typedef struct zi_wk {
    const zi_wconfig *cfg;
    volatile sig_atomic_t *stop;
    zi_job_limits lim;
    char model[256];
    char seed_buf[32];
    zi_png_compression png_compression; /* s3.png_compression */

    zi_backend *be;
    zi_pipeline *pipe;
    zi_metrics *metrics;
    zi_worker_metrics wm;
    zi_http *http;
    rd_kafka_t *producer;
    zi_consumer *consumer;
    zi_s3_config s3cfg;
    zi_rstatus_config rscfg;
    int64_t lease_ttl_ms;

    /* job thread */
    pthread_t job_thread;
    int job_thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    zi_kmsg *job_msg; /* borrowed from the main thread while the job runs */
    int job_posted, job_done, job_result, job_quit;
    atomic_int job_revoked; /* the running job's partition was revoked or lost */
    atomic_int job_abort;   /* stop now without a final state (drain deadline) */
    atomic_int lease_lost;  /* another worker took the running job's lease */
    atomic_int superseded;  /* a later run owns the running job (zi_wk_supersede) */
    atomic_int draining;    /* the main loop began the drain: a job not yet run is left */
    atomic_int in_checks;   /* the job thread is in a job's checks before its run */
    atomic_int device_lost; /* the backend's device failed (ZI_EDEVICE): stop */
    /* when the running job's pipeline last made progress (started, or finished a step;
     * monotonic ms), 0 outside the pipeline: the main loop's stall watchdog */
    atomic_llong compute_mark_ms;
    int stall_timeout_s; /* worker.stall_timeout_s resolved for the backend (0 = off) */
    zi_rstatus *rs_job;
    zi_s3 *s3;

    /* heartbeat thread; state_mu guards the fields below it */
    pthread_t hb_thread;
    int hb_thread_started;
    pthread_cond_t hb_cv;
    int hb_quit;
    int hb_dirty; /* a state change not yet published (a signal alone is lost while the
                   * heartbeat thread is busy writing) */
    pthread_mutex_t state_mu;
    /* heartbeat thread only: this process's token in the worker hash, whether a heartbeat
     * has been written, when a worker.id conflict was last logged */
    char instance[33];
    int hb_written;
    int64_t id_conflict_logged_ms;
    /* prefetch counts already added to zimage_weight_prefetch_total (zi_wk_snapshot_mem's
     * callers: the main thread at load, then the job thread) */
    uint64_t pf_hits_seen, pf_misses_seen;
    /* the same for zimage_caption_cache_total */
    uint64_t cc_hits_seen, cc_misses_seen;
    char state[16];
    char current_job[ZI_JOB_ID_MAX + 1];
    int64_t jobs_succeeded, jobs_failed;
    zi_mem_stats mem;
    /* lease_mu serialises lease renewal (heartbeat) with acquire/release (job thread), so
     * a renewal never re-creates a lease the job thread has just released. */
    pthread_mutex_t lease_mu;
    char lease_job[ZI_JOB_ID_MAX + 1];

    /* fault hooks (tests) */
    const char *crash_prompt;
    const char *crash_result_prompt; /* abort between `succeeded` and the result message */
    const char *device_fault_prompt; /* a device fault after the first step */
    const char *stop_upload_prompt;  /* SIGSTOP before the upload of a first attempt */
    const char *hang_prompt;         /* the job thread hangs after the first step */
    int cond_off_logged;             /* the S3 server's lack of conditional PUTs was logged */
    int head_denied_logged;          /* HEAD's AccessDenied for missing objects was logged */
    int step_delay_ms;
} zi_wk;

static int64_t zi_wk_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void zi_wk_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void zi_worker_job_limits(const zi_wconfig *cfg, struct zi_job_limits *lim)
{
    lim->def_width = cfg->gen_width;
    lim->def_height = cfg->gen_height;
    lim->def_steps = cfg->gen_steps;
    lim->def_guidance = cfg->gen_guidance_scale;
    lim->min_side = cfg->gen_min_side;
    lim->max_side = cfg->gen_max_side;
    lim->max_pixels = cfg->gen_max_pixels;
    lim->max_steps = cfg->gen_max_steps;
    lim->max_message_bytes = cfg->kafka_max_message_bytes;
}

/* The worker's state in its heartbeat. Once draining it stays draining: the job thread's
 * "busy" (a job it took before the drain began) only updates the current job. */
static void zi_wk_set_state(zi_wk *w, const char *state, const char *job)
{
    pthread_mutex_lock(&w->state_mu);
    if (strcmp(w->state, "draining") != 0 || strcmp(state, "busy") != 0)
        snprintf(w->state, sizeof w->state, "%s", state);
    if (job)
        snprintf(w->current_job, sizeof w->current_job, "%s", job);
    w->hb_dirty = 1;
    pthread_cond_signal(&w->hb_cv); /* publish the change now */
    pthread_mutex_unlock(&w->state_mu);
}

/* The backend's memory figures for the heartbeat and /metrics, and the prefetch and
 * prompt-embedding cache counts since the last call into zimage_weight_prefetch_total and
 * zimage_caption_cache_total (after the load, then every step). */
static void zi_wk_snapshot_mem(zi_wk *w)
{
    zi_mem_stats ms = {0};
    /* CPU: no device memory to report (contract: zeros and backend=cpu). */
    if (w->be && strcmp(w->be->name, "cpu") != 0)
        w->be->mem_stats(w->be, &ms);
    pthread_mutex_lock(&w->state_mu);
    w->mem = ms;
    pthread_mutex_unlock(&w->state_mu);
    if (w->pipe) {
        uint64_t ch, cm;
        zi_pipeline_caption_cache_stats(w->pipe, &ch, &cm);
        zi_metric_add(w->wm.caption_cache, "hit", (double)(ch - w->cc_hits_seen));
        zi_metric_add(w->wm.caption_cache, "miss", (double)(cm - w->cc_misses_seen));
        w->cc_hits_seen = ch;
        w->cc_misses_seen = cm;
    }
#ifdef ZI_HAVE_CUDA
    uint64_t hits, misses;
    if (w->be && zi_cuda_is(w->be) && zi_cuda_prefetch_stats(w->be, &hits, &misses) == ZI_OK) {
        zi_metric_add(w->wm.weight_prefetch, "hit", (double)(hits - w->pf_hits_seen));
        zi_metric_add(w->wm.weight_prefetch, "miss", (double)(misses - w->pf_misses_seen));
        w->pf_hits_seen = hits;
        w->pf_misses_seen = misses;
    }
#endif
}

/* ---- retries ---- */

/* 1 when the job must stop without a final state. pre_run: a revoked partition or the
 * drain also stops it (before the run, so it is delivered again; a running job finishes,
 * see docs/worker.md). */
static int zi_wk_aborted(zi_wk *w, int pre_run)
{
    return atomic_load(&w->job_abort) ||
           (pre_run && (atomic_load(&w->job_revoked) || atomic_load(&w->draining)));
}

/* Says why a job stops before its run without a final state (zi_wk_aborted(w, 1)). */
static void zi_wk_log_left(zi_wk *w)
{
    if (atomic_load(&w->job_abort))
        zi_log_info("stopped before the run: the job is left to be delivered again");
    else
        zi_log_info("%s before the run: the job is left to be delivered again",
                    atomic_load(&w->job_revoked) ? "partition revoked" : "draining");
}

/* After a failed Redis/Kafka call: logs (the first time and then every 10th), sleeps an
 * exponential backoff with jitter (100 ms .. 2 s) in slices, and returns 1 to try again,
 * or 0 when the job was aborted meanwhile. */
static int zi_wk_retry(zi_wk *w, int pre_run, int *tries, const char *what)
{
    if (*tries % 10 == 0)
        zi_log_warn("%s failed (%s), retrying", what, zi_errmsg());
    if (w->wm.redis_errors && strstr(what, "redis"))
        zi_metric_inc(w->wm.redis_errors, NULL);
    int cap = 100 << (*tries < 5 ? *tries : 5);
    if (cap > 2000)
        cap = 2000;
    unsigned r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (unsigned)zi_wk_mono_ms();
    int ms = cap / 2 + (int)(r % (unsigned)(cap / 2 + 1));
    (*tries)++;
    for (int t = 0; t < ms; t += 50) {
        if (zi_wk_aborted(w, pre_run))
            return 0;
        zi_wk_sleep_ms(50);
    }
    return !zi_wk_aborted(w, pre_run);
}

/* ---- job records ---- */

/* A small builder of hash fields with owned value storage. */
#define ZI_WK_MAX_FIELDS 32
typedef struct zi_wk_fields {
    zi_rstatus_field f[ZI_WK_MAX_FIELDS];
    char store[ZI_WK_MAX_FIELDS][64];
    size_t n;
} zi_wk_fields;

static void zi_wk_add(zi_wk_fields *fs, const char *name, const char *value)
{
    if (fs->n < ZI_WK_MAX_FIELDS)
        fs->f[fs->n++] = (zi_rstatus_field){name, value ? value : ""};
}

static void zi_wk_addi(zi_wk_fields *fs, const char *name, long long v)
{
    if (fs->n < ZI_WK_MAX_FIELDS) {
        snprintf(fs->store[fs->n], sizeof fs->store[0], "%lld", v);
        fs->f[fs->n] = (zi_rstatus_field){name, fs->store[fs->n]};
        fs->n++;
    }
}

static void zi_wk_addu(zi_wk_fields *fs, const char *name, unsigned long long v)
{
    if (fs->n < ZI_WK_MAX_FIELDS) {
        snprintf(fs->store[fs->n], sizeof fs->store[0], "%llu", v);
        fs->f[fs->n] = (zi_rstatus_field){name, fs->store[fs->n]};
        fs->n++;
    }
}

/* What the job thread knows about the job it is handling. */
typedef struct zi_wk_run {
    const zi_kmsg *m;
    zi_job job;
    char s3_key[ZI_S3_MAX_KEY + 1];
    char url[ZI_S3_MAX_URL];
    uint64_t seed;
    int64_t attempt;
    int64_t received_at; /* unix ms when the job thread took the message */
    int64_t started_at;  /* unix ms, 0 before the run */
    int64_t pipeline_ms, png_ms, upload_ms;
    int64_t finished_at;
    /* progress callback state */
    int cancelled, aborted;
    int valid; /* the message passed every job rule (r->job is complete) */
} zi_wk_run;

/* A later run owns this job (a fenced write or the attempt count was refused, the reason
 * in zi_errmsg()): another worker took the job over, or finished it, while this one was
 * stalled or cut off from Redis and Kafka for longer than the lease and the session. This
 * run (or delivery) stops without a final state, upload, DLQ copy or result message, so it
 * never overwrites the newer run's record. */
static void zi_wk_supersede(zi_wk *w)
{
    if (atomic_exchange(&w->superseded, 1))
        return;
    zi_log_error("%s; this run stops without a final state", zi_errmsg());
    atomic_store(&w->job_abort, 1);
    zi_metric_inc(w->wm.jobs_total, "superseded");
}

/* Writes status + fields (+ event) until it is written or the job is aborted (or, for a
 * run, superseded: ZI_ECONFLICT, not retried). */
static int zi_wk_record(zi_wk *w, zi_wk_run *r, const char *status, const char *code,
                        const char *error, const zi_wk_fields *fs, int pre_run)
{
    int tries = 0, rc;
    while ((rc = zi_rstatus_set_status(w->rs_job, r->job.job_id, status, code, error, fs->f,
                                       fs->n)) != ZI_OK) {
        if (rc == ZI_ECONFLICT) {
            zi_wk_supersede(w);
            return rc;
        }
        if (!zi_wk_retry(w, pre_run, &tries, "redis: recording the job state"))
            return rc;
    }
    return ZI_OK;
}

/* Fields every final state carries. */
static void zi_wk_final_fields(zi_wk *w, zi_wk_run *r, zi_wk_fields *fs)
{
    r->finished_at = zi_rstatus_now_ms();
    zi_wk_addi(fs, "finished_at", r->finished_at);
    /* started_at and attempt again: Redis may have lost the `running` record meanwhile */
    if (r->started_at) {
        zi_wk_addi(fs, "started_at", r->started_at);
        zi_wk_addi(fs, "duration_ms", r->finished_at - r->started_at);
    }
    if (r->attempt)
        zi_wk_addi(fs, "attempt", r->attempt);
    zi_wk_addi(fs, "received_at", r->received_at);
    if (r->m->timestamp_ms >= 0)
        zi_wk_addi(fs, "produced_at", r->m->timestamp_ms);
    zi_wk_add(fs, "model", w->model);
    zi_wk_add(fs, "version", ZI_VERSION);
}

/* Produces to a topic until acknowledged or aborted; a permanent "too large" refusal is
 * retried once with the value cut to ZI_WK_DLQ_CUT_RETRY bytes. */
static int zi_wk_produce(zi_wk *w, const char *topic, const void *key, size_t key_len,
                         const void *value, size_t len, const zi_kafka_header *h, size_t nh)
{
    int tries = 0, rc;
    for (;;) {
        rc = zi_kafka_produce_sync(w->producer, topic, key, key_len, value, len, h, nh);
        if (rc == ZI_OK)
            return ZI_OK;
        if (rc == ZI_EINVAL && len > ZI_WK_DLQ_CUT_RETRY) {
            zi_log_warn("%s; sending the first %d bytes only", zi_errmsg(), ZI_WK_DLQ_CUT_RETRY);
            len = ZI_WK_DLQ_CUT_RETRY;
            continue;
        }
        if (rc == ZI_EBACKEND) {
            /* a fatal producer error: nothing can be produced any more, so this job ends
             * without a final state and the main thread stops the worker (a restart makes
             * a new producer); the job is delivered again */
            zi_log_error("%s: the job cannot be finished", zi_errmsg());
            return rc;
        }
        if (!zi_wk_retry(w, 0, &tries, "kafka: producing"))
            return rc;
    }
}

static int zi_wk_dlq(zi_wk *w, const zi_kmsg *m, const char *code, const char *error,
                     int64_t attempts)
{
    char source[512], att[32];
    snprintf(source, sizeof source, "%s/%d/%lld", m->topic, (int)m->partition,
             (long long)m->offset);
    snprintf(att, sizeof att, "%lld", (long long)attempts);
    const zi_kafka_header h[4] = {{"zimage-error-code", code},
                                  {"zimage-error", error},
                                  {"zimage-source", source},
                                  {"zimage-attempts", att}};
    size_t len = m->len;
    if (w->cfg->kafka_max_message_bytes > 0 && (int64_t)len > w->cfg->kafka_max_message_bytes)
        len = (size_t)w->cfg->kafka_max_message_bytes;
    int rc = zi_wk_produce(w, w->cfg->kafka_dlq_topic, m->key, m->key_len, m->payload, len, h, 4);
    if (rc == ZI_OK)
        zi_log_info("copied %s to the DLQ %s (%s)", source, w->cfg->kafka_dlq_topic, code);
    return rc;
}

/* The optional result message (kafka.result_topic). */
static int zi_wk_result(zi_wk *w, zi_wk_run *r, const char *status, const char *code,
                        const char *error)
{
    if (!w->cfg->kafka_result_topic[0] || !r->job.job_id[0])
        return ZI_OK;
    cJSON *o = cJSON_CreateObject();
    char seed[32] = "";
    if (r->started_at || r->seed)
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
    int64_t dur = (r->started_at && r->finished_at) ? r->finished_at - r->started_at : 0;
    char *text = NULL;
    if (o && cJSON_AddStringToObject(o, "job_id", r->job.job_id) &&
        cJSON_AddStringToObject(o, "status", status) &&
        cJSON_AddStringToObject(o, "s3_key", strcmp(status, "succeeded") == 0 ? r->s3_key : "") &&
        cJSON_AddStringToObject(o, "url", r->url) &&
        cJSON_AddStringToObject(o, "error_code", code ? code : "") &&
        cJSON_AddStringToObject(o, "error", error ? error : "") &&
        cJSON_AddStringToObject(o, "seed", seed) &&
        cJSON_AddNumberToObject(o, "duration_ms", (double)dur) &&
        cJSON_AddStringToObject(o, "worker", w->cfg->worker_id))
        text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text)
        return zi_errorf(ZI_ENOMEM, "out of memory building the result message");
    int rc = zi_wk_produce(w, w->cfg->kafka_result_topic, r->job.job_id, strlen(r->job.job_id),
                           text, strlen(text), NULL, 0);
    free(text);
    return rc;
}

/* The result message of a job recorded `succeeded`, then `result_sent` in its hash, so a
 * redelivery knows whether the worker that wrote `succeeded` lived to send it. A crash
 * between the two sends it twice: results are at least once (keyed by job_id). */
static int zi_wk_result_succeeded(zi_wk *w, zi_wk_run *r)
{
    if (!w->cfg->kafka_result_topic[0])
        return ZI_OK;
    int rc = zi_wk_result(w, r, "succeeded", NULL, NULL);
    if (rc != ZI_OK)
        return rc;
    zi_rstatus_field f = {"result_sent", "1"};
    int tries = 0;
    while ((rc = zi_rstatus_job_set(w->rs_job, r->job.job_id, &f, 1)) != ZI_OK) {
        if (rc == ZI_ECONFLICT)
            break; /* a later run has started since our `succeeded`: it reports itself */
        if (!zi_wk_retry(w, 0, &tries, "redis: marking the result message sent"))
            break; /* aborted: at worst the message is sent again on redelivery */
    }
    return ZI_OK;
}

/* A permanent failure: final state `failed`, the DLQ copy (every failed job is copied, so it
 * can be replayed once the cause is fixed: docs/contract.md, "Extensions"), the result
 * message. */
static int zi_wk_fail(zi_wk *w, zi_wk_run *r, const char *code, const char *error, int pre_run)
{
    zi_log_fields(ZI_LOG_WARN, r->job.job_id[0] ? r->job.job_id : NULL,
                  (const zi_log_field[]){{"error_code", code}}, 1, "job failed: %s", error);
    if (r->job.job_id[0]) {
        zi_wk_fields fs = {0};
        zi_wk_final_fields(w, r, &fs);
        if (r->valid && !r->started_at) {
            /* Failed before its run (expired, too_many_attempts, s3_auth at the HEAD): the
             * job's own parameters are known, so the hash shows them as for a run. */
            zi_wk_addi(&fs, "width", r->job.width);
            zi_wk_addi(&fs, "height", r->job.height);
            zi_wk_addi(&fs, "steps", r->job.steps);
            if (r->s3_key[0])
                zi_wk_add(&fs, "s3_key", r->s3_key);
            if (r->job.has_seed)
                zi_wk_addu(&fs, "seed", (unsigned long long)r->job.seed);
        }
        if (zi_wk_record(w, r, "failed", code, error, &fs, pre_run) != ZI_OK)
            return ZI_WK_NOSTORE;
    }
    /* zimage-attempts: the runs started (the refused delivery of too_many_attempts was
     * counted before it was refused, and is taken off already: see the call) */
    int64_t runs = r->attempt;
    if (zi_wk_dlq(w, r->m, code, error, runs > 0 ? runs : 0) != ZI_OK)
        return ZI_WK_NOSTORE;
    if (zi_wk_result(w, r, "failed", code, error) != ZI_OK)
        return ZI_WK_NOSTORE;
    pthread_mutex_lock(&w->state_mu);
    w->jobs_failed++;
    pthread_mutex_unlock(&w->state_mu);
    zi_metric_inc(w->wm.job_failures, code);
    zi_metric_inc(w->wm.jobs_total, "failed"); /* the cause: job_failures{error_code} */
    return ZI_WK_STORE;
}

/* ---- lease ---- */

/* Takes the lease, waiting (partition paused) while another worker holds it. 0 when taken,
 * -1 when the wait was abandoned (revoked partition or abort). */
static int zi_wk_lease_take(zi_wk *w, const char *job_id)
{
    int tries = 0, waits = 0;
    for (;;) {
        int acquired = 0;
        char holder[256] = "";
        pthread_mutex_lock(&w->lease_mu);
        int rc = zi_rstatus_lease_acquire(w->rs_job, job_id, w->lease_ttl_ms, &acquired, holder,
                                          sizeof holder);
        if (rc == ZI_OK && acquired)
            snprintf(w->lease_job, sizeof w->lease_job, "%s", job_id);
        pthread_mutex_unlock(&w->lease_mu);
        if (rc != ZI_OK) {
            if (!zi_wk_retry(w, 1, &tries, "redis: taking the job lease"))
                return -1;
            continue;
        }
        if (acquired)
            return 0;
        if (waits++ % 20 == 0)
            zi_log_info("job is running on worker %s: waiting for its lease", holder);
        for (int t = 0; t < 500; t += 50) {
            if (zi_wk_aborted(w, 1))
                return -1;
            zi_wk_sleep_ms(50);
        }
    }
}

static void zi_wk_lease_drop(zi_wk *w, const char *job_id)
{
    pthread_mutex_lock(&w->lease_mu);
    w->lease_job[0] = '\0';
    int released = 0;
    /* One try: a lease we fail to delete expires after lease_ttl_ms. */
    if (zi_rstatus_lease_release(w->rs_job, job_id, &released) != ZI_OK)
        zi_log_warn("redis: releasing the lease failed (%s); it expires by itself", zi_errmsg());
    pthread_mutex_unlock(&w->lease_mu);
}

/* ---- the run ---- */

static int zi_wk_progress(void *ud, int step, int steps, double step_seconds);

/* A test hook's prompt: the variable's value, NULL when unset or empty. */
static const char *zi_wk_hook(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

/* ZIMAGE_FAULT_DEVICE_PROMPT: on the CUDA backend a kernel that writes to an illegal
 * address (a real fault: the context is lost); on one without a device the error such a
 * fault leaves. */
static void zi_wk_inject_device_fault(zi_wk *w)
{
    zi_log_error("ZIMAGE_FAULT_DEVICE_PROMPT matched: injecting a device fault (test hook)");
#ifdef ZI_HAVE_CUDA
    if (zi_cuda_is(w->be)) {
        zi_cuda_inject_fault(w->be);
        return;
    }
#endif
    zi_backend_fail(w->be, ZI_EDEVICE, "the device failed: injected by ZIMAGE_FAULT_DEVICE_PROMPT");
}

typedef struct zi_wk_pctx {
    zi_wk *w;
    zi_wk_run *r;
} zi_wk_pctx;

static int zi_wk_progress(void *ud, int step, int steps, double step_seconds)
{
    zi_wk_pctx *c = ud;
    zi_wk *w = c->w;
    zi_wk_run *r = c->r;
    zi_metric_observe(w->wm.step_duration, step_seconds);
    atomic_store(&w->compute_mark_ms, zi_wk_mono_ms());
    if (w->crash_prompt && step == 1 && strcmp(r->job.prompt, w->crash_prompt) == 0) {
        zi_log_error("ZIMAGE_FAULT_CRASH_PROMPT matched: aborting the process (test hook)");
        abort();
    }
    if (w->device_fault_prompt && step == 1 && strcmp(r->job.prompt, w->device_fault_prompt) == 0)
        zi_wk_inject_device_fault(w);
    if (w->hang_prompt && step == 1 && r->attempt == 1 &&
        strcmp(r->job.prompt, w->hang_prompt) == 0) {
        zi_log_error("ZIMAGE_FAULT_HANG_PROMPT matched: this job thread hangs (test hook)");
        for (;;)
            zi_wk_sleep_ms(1000); /* deaf to aborts, as a call into a hung GPU */
    }
    if (w->step_delay_ms > 0)
        for (int t = 0; t < w->step_delay_ms && !atomic_load(&w->job_abort); t += 20)
            zi_wk_sleep_ms(w->step_delay_ms - t < 20 ? w->step_delay_ms - t : 20);
    zi_wk_snapshot_mem(w);
    if (atomic_load(&w->job_abort)) {
        r->aborted = 1;
        return 1;
    }
    /* Progress is best effort: a failed write is not retried (the final state is). A write
     * refused by the fence stops the run: a later one owns the job. */
    if (zi_rstatus_progress(w->rs_job, r->job.job_id, step, steps, 0, NULL) == ZI_ECONFLICT) {
        zi_wk_supersede(w);
        r->aborted = 1;
        return 1;
    }
    /* The cancel flag at every step boundary (one EXISTS): the contract stops a cancelled
     * job at the next one. */
    int cancel = 0;
    if (zi_rstatus_cancel_requested(w->rs_job, r->job.job_id, &cancel) == ZI_OK && cancel) {
        r->cancelled = 1;
        return 1;
    }
    return 0;
}

static int zi_wk_cancelled(zi_wk *w, zi_wk_run *r, int pre_run)
{
    zi_log_info("job cancelled");
    zi_wk_fields fs = {0};
    zi_wk_final_fields(w, r, &fs);
    if (zi_wk_record(w, r, "cancelled", NULL, NULL, &fs, pre_run) != ZI_OK)
        return ZI_WK_NOSTORE;
    if (zi_wk_result(w, r, "cancelled", NULL, NULL) != ZI_OK)
        return ZI_WK_NOSTORE;
    zi_metric_inc(w->wm.jobs_total, "cancelled");
    return ZI_WK_STORE;
}

/* A redelivered job found already done: recorded `succeeded`, so counted as one. */
static void zi_wk_count_duplicate(zi_wk *w)
{
    zi_metric_inc(w->wm.jobs_total, "succeeded");
    zi_metric_inc(w->wm.jobs_deduplicated, NULL);
}

/* Records `succeeded` with every field (also for a job found already uploaded). */

static int zi_wk_succeeded(zi_wk *w, zi_wk_run *r, int duplicate)
{
    zi_wk_fields fs = {0};
    zi_wk_final_fields(w, r, &fs);
    zi_wk_add(&fs, "s3_key", r->s3_key);
    zi_wk_add(&fs, "url", r->url);
    zi_wk_addu(&fs, "seed", (unsigned long long)r->seed);
    zi_wk_addi(&fs, "width", r->job.width);
    zi_wk_addi(&fs, "height", r->job.height);
    zi_wk_addi(&fs, "steps", r->job.steps);
    zi_wk_addi(&fs, "step", r->job.steps);
    zi_wk_add(&fs, "progress", "1");
    zi_wk_add(&fs, "error_code", "");
    zi_wk_add(&fs, "error", "");
    if (!duplicate) {
        zi_wk_addi(&fs, "pipeline_ms", r->pipeline_ms);
        zi_wk_addi(&fs, "png_ms", r->png_ms);
        zi_wk_addi(&fs, "upload_ms", r->upload_ms);
    }
    if (zi_wk_record(w, r, "succeeded", NULL, NULL, &fs, 0) != ZI_OK)
        return ZI_WK_NOSTORE;
    if (w->crash_result_prompt && strcmp(r->job.prompt, w->crash_result_prompt) == 0) {
        zi_log_error("ZIMAGE_FAULT_CRASH_BEFORE_RESULT matched: aborting the process (test hook)");
        abort();
    }
    if (zi_wk_result_succeeded(w, r) != ZI_OK)
        return ZI_WK_NOSTORE;
    if (duplicate) {
        zi_wk_count_duplicate(w);
        return ZI_WK_STORE;
    }
    zi_metric_inc(w->wm.jobs_total, "succeeded");
    pthread_mutex_lock(&w->state_mu);
    w->jobs_succeeded++;
    pthread_mutex_unlock(&w->state_mu);
    if (r->started_at)
        zi_metric_observe(w->wm.job_duration, (double)(r->finished_at - r->started_at) / 1e3);
    return ZI_WK_STORE;
}

static uint64_t zi_wk_draw_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s)
        s = (uint64_t)zi_wk_mono_ms() * 0x9E3779B97F4A7C15ull;
    return s & ZI_JOB_SEED_INT_MAX; /* fits a JSON integer exactly */
}

/* Before the upload, which no script can fence: ZI_ECONFLICT (and the run superseded) when
 * a later run owns the job - an older worker's image (perhaps of an older model version)
 * must not replace the newer run's object. Redis unreachable: ZI_OK (the final write is
 * fenced). */
static int zi_wk_still_latest(zi_wk *w, zi_wk_run *r)
{
    int rc = zi_rstatus_fence_check(w->rs_job, r->job.job_id);
    if (rc != ZI_ECONFLICT)
        return ZI_OK;
    zi_wk_supersede(w);
    return rc;
}

/* The PUT of a run's image (metadata: job id, seed, attempt), only where no object is yet
 * (If-None-Match: *). The fence check right before it cannot close the gap to the upload
 * itself: a run that stalls there (a frozen VM) may come back after a later run of the job
 * uploaded. So where an object is found, this run writes over it only once the fence says
 * positively that no later run owns the job (Redis errors are retried, not taken as yes):
 * else the object - the later run's - stays and this run is superseded (ZI_ECONFLICT).
 * Over what: an earlier run's object that stalled the same way, this run's own try whose
 * answer was lost, or another job's under a colliding key. (Left open: a run that passes
 * this second check and stalls again before its overwrite.) */
static int zi_wk_upload(zi_wk *w, zi_wk_run *r, const void *png, size_t len)
{
    char seed[32], attempt[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->seed);
    snprintf(attempt, sizeof attempt, "%lld", (long long)r->attempt);
    const zi_s3_meta meta[3] = {{"job-id", r->job.job_id}, {"seed", seed}, {"attempt", attempt}};
    int rc = zi_s3_put_ex(w->s3, r->s3_key, png, len, "image/png", meta, 3, ZI_S3_PUT_IF_ABSENT);
    if (zi_s3_conditional_off(w->s3) && !w->cond_off_logged) {
        w->cond_off_logged = 1;
        zi_log_warn("the S3 server does not implement conditional PUTs (If-None-Match: 501): "
                    "uploads go unconditionally, so a run that stalls right before its upload "
                    "can replace a later run's object (docs/worker.md, \"Stalled workers\")");
    }
    if (rc != ZI_ECONFLICT)
        return rc;
    zi_s3_head_info hi = {0}; /* who wrote it: for the log */
    if (zi_s3_head(w->s3, r->s3_key, &hi) == ZI_ECANCELLED)
        return ZI_ECANCELLED;
    int tries = 0;
    while ((rc = zi_rstatus_fence_check(w->rs_job, r->job.job_id)) != ZI_OK) {
        if (rc == ZI_ECONFLICT) {
            zi_wk_supersede(w);
            zi_log_warn("object %s was uploaded by run %s of job %s meanwhile: left as it is",
                        r->s3_key, hi.attempt[0] ? hi.attempt : "?",
                        hi.job_id[0] ? hi.job_id : "?");
            return ZI_ECONFLICT;
        }
        if (!zi_wk_retry(w, 0, &tries, "redis: checking the run's fence before an overwrite"))
            return zi_errorf(ZI_ECANCELLED, "upload of %s stopped", r->s3_key);
    }
    zi_log_info("object %s is there already (job %s, run %s): writing over it", r->s3_key,
                hi.job_id[0] ? hi.job_id : "?", hi.attempt[0] ? hi.attempt : "?");
    return zi_s3_put_ex(w->s3, r->s3_key, png, len, "image/png", meta, 3, 0);
}

/* Once per worker, when S3 answered a HEAD with AccessDenied (zi_s3_head_denied). */
static void zi_wk_note_head_denied(zi_wk *w)
{
    if (!zi_s3_head_denied(w->s3) || w->head_denied_logged)
        return;
    w->head_denied_logged = 1;
    zi_log_warn("S3 answers a missing object with 403 AccessDenied: the credentials lack "
                "s3:ListBucket on bucket %s (or may not use it at all: then the upload "
                "fails as s3_auth), so that answer counts as no earlier upload (each new "
                "job costs a GET more to tell it from refused credentials; "
                "docs/operations.md)",
                w->cfg->s3_bucket);
}

/* Generates, encodes, uploads. */
static int zi_wk_compute(zi_wk *w, zi_wk_run *r)
{
    zi_gen_params gp = {
        .prompt = r->job.prompt,
        .negative_prompt = r->job.negative_prompt,
        .width = r->job.width,
        .height = r->job.height,
        .steps = r->job.steps,
        .guidance = (float)r->job.guidance,
        .seed = r->seed,
        .rng = ZI_RNG_CUDA,
    };
    zi_wk_pctx pc = {w, r};
    uint8_t *rgb = NULL, *png = NULL;
    char *params = NULL;
    size_t png_len = 0;
    int64_t t0 = zi_wk_mono_ms();
    atomic_store(&w->compute_mark_ms, t0);
    int rc = zi_pipeline_generate(w->pipe, &gp, zi_wk_progress, &pc, &rgb);
    atomic_store(&w->compute_mark_ms, 0);
    r->pipeline_ms = zi_wk_mono_ms() - t0;
    zi_wk_snapshot_mem(w);
    int res;
    if (rc == ZI_ECANCELLED && r->aborted) {
        if (!atomic_load(&w->superseded))
            zi_log_warn("job stopped by %s; it will be delivered again",
                        atomic_load(&w->lease_lost) ? "the loss of its lease"
                                                    : "the drain deadline");
        res = ZI_WK_NOSTORE;
        goto out;
    }
    if (rc == ZI_EDEVICE) {
        /* Not the job's fault, and no later job can run here: no final state (the job is
         * delivered again - its attempt is counted, so a job that breaks every GPU it
         * meets still ends as too_many_attempts), and the worker stops (zi_wk_loop). */
        zi_log_error("%s: the job is left to be delivered again; this worker stops", zi_errmsg());
        atomic_store(&w->device_lost, 1);
        res = ZI_WK_NOSTORE;
        goto out;
    }
    if (rc == ZI_ECANCELLED && r->cancelled) {
        res = zi_wk_cancelled(w, r, 0);
        goto out;
    }
    if (rc != ZI_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", zi_errmsg());
        res = zi_wk_fail(w, r, rc == ZI_ENOMEM ? "oom" : "pipeline_error", msg, 0);
        goto out;
    }
    zi_png_params pp = {
        .prompt = r->job.prompt,
        .negative_prompt = r->job.guidance > 0 ? r->job.negative_prompt : NULL,
        .steps = r->job.steps,
        .guidance = (float)r->job.guidance,
        .seed = r->seed,
        .width = r->job.width,
        .height = r->job.height,
        .model = w->model,
        .version = ZI_VERSION,
    };
    int64_t tp = zi_wk_mono_ms();
    if ((rc = zi_png_params_text(&pp, &params)) == ZI_OK)
        rc = zi_png_encode(rgb, r->job.width, r->job.height, params, w->png_compression, &png,
                           &png_len);
    r->png_ms = zi_wk_mono_ms() - tp;
    if (rc != ZI_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "PNG encoding: %s", zi_errmsg());
        res = zi_wk_fail(w, r, rc == ZI_ENOMEM ? "oom" : "pipeline_error", msg, 0);
        goto out;
    }
    if (zi_wk_still_latest(w, r) != ZI_OK) {
        res = ZI_WK_NOSTORE; /* a later run owns the job and writes its object */
        goto out;
    }
    if (w->stop_upload_prompt && r->attempt == 1 &&
        strcmp(r->job.prompt, w->stop_upload_prompt) == 0) {
        zi_log_warn("ZIMAGE_FAULT_STOP_BEFORE_UPLOAD matched: stopping this process before the "
                    "upload (test hook; SIGCONT resumes it)");
        raise(SIGSTOP);
    }
    int64_t tu = zi_wk_mono_ms();
    unsigned long long retries0 = zi_s3_retry_count(w->s3);
    rc = zi_wk_upload(w, r, png, png_len);
    tu = zi_wk_mono_ms() - tu;
    zi_metric_add(w->wm.s3_retries, NULL, (double)(zi_s3_retry_count(w->s3) - retries0));
    r->upload_ms = tu;
    if (tu > 2000)
        zi_log_warn("S3 upload of %s took %lld ms (transient errors are retried for up to "
                    "s3.retry_s = %d s)",
                    r->s3_key, (long long)tu, w->cfg->s3_retry_s);
    if (rc == ZI_ECANCELLED) {
        zi_log_warn("upload stopped by the drain deadline; the job will be delivered again");
        res = ZI_WK_NOSTORE;
        goto out;
    }
    if (rc == ZI_ECONFLICT) {
        res = ZI_WK_NOSTORE; /* superseded: the later run's object stays */
        goto out;
    }
    if (rc != ZI_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", zi_errmsg());
        res = zi_wk_fail(w, r, rc == ZI_EAUTH ? "s3_auth" : "s3_error", msg, 0);
        goto out;
    }
    if (zi_s3_presign_get(w->s3, r->s3_key, w->cfg->s3_presign_ttl_s, 0, r->url, sizeof r->url) !=
        ZI_OK) {
        zi_log_warn("presigning %s failed: %s", r->s3_key, zi_errmsg());
        r->url[0] = '\0';
    }
    res = zi_wk_succeeded(w, r, 0);
    if (res == ZI_WK_STORE)
        zi_log_info("job succeeded: %s (%lld ms: pipeline %lld, png %lld, upload %lld)", r->s3_key,
                    (long long)(r->finished_at - r->started_at), (long long)r->pipeline_ms,
                    (long long)r->png_ms, (long long)r->upload_ms);
out:
    free(rgb);
    free(png);
    free(params);
    return res;
}

/* 1 and *out when v (a hash field, an S3 metadata value) is a decimal 0..2^64-1. */
static int zi_wk_u64(const char *v, uint64_t *out)
{
    size_t n = v ? strlen(v) : 0;
    if (n == 0 || n > 20 || strspn(v, "0123456789") != n)
        return 0;
    errno = 0;
    unsigned long long x = strtoull(v, NULL, 10);
    if (errno == ERANGE)
        return 0;
    *out = (uint64_t)x;
    return 1;
}

/* A decimal hash field, or 0. */
static uint64_t zi_wk_hash_u64(const zi_rstatus_hash *h, const char *field)
{
    uint64_t x = 0;
    return zi_wk_u64(zi_rstatus_hash_get(h, field), &x) ? x : 0;
}

/* What a result message says of a job that succeeded earlier, read back from its hash. */
static void zi_wk_run_from_hash(zi_wk_run *r, const zi_rstatus_hash *h)
{
    const char *k = zi_rstatus_hash_get(h, "s3_key");
    const char *u = zi_rstatus_hash_get(h, "url");
    if (k && k[0])
        snprintf(r->s3_key, sizeof r->s3_key, "%s", k);
    snprintf(r->url, sizeof r->url, "%s", u ? u : "");
    r->seed = zi_wk_hash_u64(h, "seed");
    r->started_at = (int64_t)zi_wk_hash_u64(h, "started_at");
    r->finished_at = (int64_t)zi_wk_hash_u64(h, "finished_at");
}

/* The whole life of one message on the job thread: ZI_WK_STORE or ZI_WK_NOSTORE. */
static int zi_wk_process(zi_wk *w, const zi_kmsg *m)
{
    zi_wk_run *r = calloc(1, sizeof *r);
    if (!r) {
        zi_log_error("out of memory for a job; it will be delivered again");
        return ZI_WK_NOSTORE;
    }
    r->m = m;
    r->received_at = zi_rstatus_now_ms();
    atomic_store(&w->in_checks, 1);
    int res = ZI_WK_NOSTORE;
    int held = 0;
    int rc = zi_job_parse(m->payload, m->len, &w->lim, &r->job);
    zi_log_set_job(r->job.job_id[0] ? r->job.job_id : NULL);
    if (rc == ZI_ENOMEM) {
        zi_log_error("out of memory parsing a job; it will be delivered again");
        goto out;
    }
    if (rc != ZI_OK) {
        /* A bad job never blocks the partition: record (with an id), DLQ, store. */
        zi_log_fields(ZI_LOG_WARN, NULL, NULL, 0, "bad job at %s[%d]@%lld: %s: %s", m->topic,
                      (int)m->partition, (long long)m->offset, r->job.error_code, r->job.error);
        res = zi_wk_fail(w, r, r->job.error_code, r->job.error, 0);
        goto out;
    }
    r->valid = 1;
    zi_log_info("job received from %s[%d]@%lld (%dx%d, %d steps)", m->topic, (int)m->partition,
                (long long)m->offset, r->job.width, r->job.height, r->job.steps);
    if (zi_s3_key_expand(w->cfg->s3_key_template, r->job.job_id, m->timestamp_ms, r->s3_key,
                         sizeof r->s3_key) != ZI_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "s3 key: %s", zi_errmsg());
        res = zi_wk_fail(w, r, "invalid_job", msg, 0);
        goto out;
    }

    /* One run at a time per job, fleet-wide. */
    if (zi_wk_lease_take(w, r->job.job_id) != 0) {
        zi_wk_log_left(w);
        goto out;
    }
    held = 1;
    zi_wk_set_state(w, "busy", r->job.job_id);

    /* Delivered again after it succeeded? (hash first, then the object itself) */
    zi_rstatus_hash h = {0};
    int tries = 0;
    while ((rc = zi_rstatus_job_get(w->rs_job, r->job.job_id, &h)) != ZI_OK && rc != ZI_ENOTFOUND) {
        if (!zi_wk_retry(w, 1, &tries, "redis: reading the job"))
            goto out;
    }
    const char *st = zi_rstatus_hash_get(&h, "status");
    if (st && strcmp(st, "succeeded") == 0) {
        const char *sent = zi_rstatus_hash_get(&h, "result_sent");
        res = ZI_WK_STORE;
        if (w->cfg->kafka_result_topic[0] && !(sent && strcmp(sent, "1") == 0)) {
            /* the worker that wrote `succeeded` stopped before its result message */
            zi_log_info("job already succeeded: not computed again; sending its result message");
            zi_wk_run_from_hash(r, &h);
            if (zi_wk_result_succeeded(w, r) != ZI_OK)
                res = ZI_WK_NOSTORE;
        } else {
            zi_log_info("job already succeeded: not computed again");
        }
        zi_rstatus_hash_free(&h);
        zi_wk_count_duplicate(w);
        goto out;
    }
    /* Runs started before (a redelivery after a crash, a drain or a rebalance): such a job
     * was first picked up earlier, so its deadline no longer applies. */
    const char *ha = zi_rstatus_hash_get(&h, "attempt");
    int ran_before = ha && strtoll(ha, NULL, 10) > 0;
    /* A job produced by another service has no `queued` record: queued_at is then when
     * it was produced (the Kafka timestamp), else when it was received. */
    const char *hq = zi_rstatus_hash_get(&h, "queued_at");
    int64_t queued_at = 0; /* 0: the hash has one */
    if (!hq || !hq[0])
        queued_at = m->timestamp_ms >= 0 ? m->timestamp_ms : r->received_at;
    /* A job without a seed keeps the one drawn on its first attempt. */
    const char *hs = zi_rstatus_hash_get(&h, "seed");
    int have_seed = r->job.has_seed;
    r->seed = r->job.seed;
    if (!have_seed && zi_wk_u64(hs, &r->seed))
        have_seed = 1;
    zi_rstatus_hash_free(&h);
    if (!have_seed)
        r->seed = zi_wk_draw_seed();

    zi_s3_head_info hi;
    rc = zi_s3_head(w->s3, r->s3_key, &hi);
    if (rc == ZI_OK && strcmp(hi.job_id, r->job.job_id) == 0) {
        zi_log_info("object %s already uploaded for this job: not computed again", r->s3_key);
        (void)zi_wk_u64(hi.seed, &r->seed); /* else the seed drawn above */
        if (zi_s3_presign_get(w->s3, r->s3_key, w->cfg->s3_presign_ttl_s, 0, r->url,
                              sizeof r->url) != ZI_OK)
            r->url[0] = '\0';
        res = zi_wk_succeeded(w, r, 1);
        goto out;
    }
    if (rc == ZI_ECANCELLED) {
        zi_wk_log_left(w);
        goto out;
    }
    if (rc == ZI_EAUTH) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", zi_errmsg());
        res = zi_wk_fail(w, r, "s3_auth", msg, 1);
        goto out;
    }
    if (rc == ZI_ENOTFOUND)
        zi_wk_note_head_denied(w);
    if (rc != ZI_OK && rc != ZI_ENOTFOUND)
        zi_log_warn("checking for an earlier upload failed (%s); running the job", zi_errmsg());
    if (zi_wk_aborted(w, 1)) {
        zi_wk_log_left(w);
        goto out;
    }

    int cancel = 0;
    tries = 0;
    while ((rc = zi_rstatus_cancel_requested(w->rs_job, r->job.job_id, &cancel)) != ZI_OK)
        if (!zi_wk_retry(w, 1, &tries, "redis: reading the cancel flag"))
            goto out;
    if (cancel) {
        res = zi_wk_cancelled(w, r, 1);
        goto out;
    }
    if (r->job.deadline_ms >= 0 && !ran_before && zi_rstatus_now_ms() > r->job.deadline_ms) {
        char msg[128];
        snprintf(msg, sizeof msg, "deadline_ms %lld passed before the job was picked up",
                 (long long)r->job.deadline_ms);
        res = zi_wk_fail(w, r, "expired", msg, 1);
        goto out;
    }

    /* Count the attempt before running, so a job that kills its worker stops - and only
     * under our lease: when it expired during the checks (this worker stalled) and another
     * worker took it, that worker runs the job (a count here would fence off the run that
     * holds the lease), or finished it; this delivery is then superseded. */
    tries = 0;
    while ((rc = zi_rstatus_attempt_incr(w->rs_job, r->job.job_id, w->lease_ttl_ms, &r->attempt)) !=
           ZI_OK) {
        if (rc == ZI_ECONFLICT) {
            zi_wk_supersede(w); /* the job is another worker's, or done */
            goto out;
        }
        if (!zi_wk_retry(w, 1, &tries, "redis: counting the attempt"))
            goto out;
    }
    if (r->attempt > w->cfg->worker_max_attempts) {
        /* this delivery is refused, not run: the hash keeps the number of runs */
        r->attempt--;
        char msg[160];
        snprintf(msg, sizeof msg, "gave up after %lld attempts (worker.max_attempts = %d)",
                 (long long)r->attempt, w->cfg->worker_max_attempts);
        res = zi_wk_fail(w, r, "too_many_attempts", msg, 1);
        goto out;
    }

    r->started_at = zi_rstatus_now_ms();
    zi_wk_fields fs = {0};
    zi_wk_addi(&fs, "attempt", r->attempt);
    zi_wk_addi(&fs, "started_at", r->started_at);
    zi_wk_addi(&fs, "received_at", r->received_at);
    if (m->timestamp_ms >= 0)
        zi_wk_addi(&fs, "produced_at", m->timestamp_ms);
    if (queued_at)
        zi_wk_addi(&fs, "queued_at", queued_at);
    zi_wk_addi(&fs, "step", 0);
    zi_wk_addi(&fs, "steps", r->job.steps);
    zi_wk_add(&fs, "progress", "0");
    zi_wk_addu(&fs, "seed", (unsigned long long)r->seed);
    zi_wk_addi(&fs, "width", r->job.width);
    zi_wk_addi(&fs, "height", r->job.height);
    zi_wk_add(&fs, "model", w->model);
    zi_wk_add(&fs, "version", ZI_VERSION);
    zi_wk_add(&fs, "s3_key", r->s3_key);
    zi_wk_add(&fs, "url", "");
    zi_wk_add(&fs, "finished_at", "");
    zi_wk_add(&fs, "duration_ms", "");
    zi_wk_add(&fs, "error_code", "");
    zi_wk_add(&fs, "error", "");
    /* the attempt is counted: from here on it is a run, which a drain lets finish, and
     * whose writes count only while no later run has counted its own */
    atomic_store(&w->in_checks, 0);
    zi_rstatus_fence(w->rs_job, r->job.job_id, r->attempt);
    if (zi_wk_record(w, r, "running", NULL, NULL, &fs, 0) != ZI_OK)
        goto out;
    zi_log_info("job running (attempt %lld, seed %llu)", (long long)r->attempt,
                (unsigned long long)r->seed);
    res = zi_wk_compute(w, r);
out:
    atomic_store(&w->in_checks, 0);
    zi_rstatus_fence(w->rs_job, NULL, 0);
    /* After the final state (when there is one), so a worker waiting for the lease finds
     * the job finished. */
    if (held)
        zi_wk_lease_drop(w, r->job.job_id);
    zi_log_set_job(NULL);
    zi_job_clear(&r->job);
    free(r);
    return res;
}

/* S3 retries stop at an abort, and in a job's checks before its run (the HEAD of an
 * earlier upload) also at a drain or a revoked partition, as zi_wk_aborted(w, 1). */
static int zi_wk_s3_abort(void *ud)
{
    zi_wk *w = ud;
    return zi_wk_aborted(w, atomic_load(&w->in_checks));
}

int zi_worker_probe_key(const zi_wconfig *cfg, char *out, size_t cap)
{
    return zi_s3_key_expand(cfg->s3_key_template, "zimage-check", -1, out, cap);
}

/* The S3 credentials tried once as the job thread starts (a HEAD of a key the template
 * makes; nothing written): refused ones are said in the log at start, not first at a job's
 * upload. Only logged - jobs still run and fail as s3_auth (the contract's code). */
static void zi_wk_probe_s3(zi_wk *w)
{
    char key[ZI_S3_MAX_KEY + 1];
    if (zi_worker_probe_key(w->cfg, key, sizeof key) != ZI_OK)
        return;
    int rc = zi_s3_head(w->s3, key, NULL);
    if (rc == ZI_EAUTH)
        zi_log_error("S3 refused the credentials at start (%s): every job will fail as s3_auth "
                     "until they are fixed (zimage worker --check; docs/operations.md)",
                     zi_errmsg());
    else if (rc == ZI_ENOTFOUND)
        zi_wk_note_head_denied(w);
    else if (rc != ZI_OK && rc != ZI_ECANCELLED)
        zi_log_warn("S3 check at start: %s", zi_errmsg());
}

static void *zi_wk_job_main(void *arg)
{
    zi_wk *w = arg;
    zi_wk_probe_s3(w);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->job_posted && !w->job_quit)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->job_quit && !w->job_posted) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        const zi_kmsg *m = w->job_msg;
        w->job_posted = 0;
        pthread_mutex_unlock(&w->mu);

        int res = zi_wk_process(w, m);

        pthread_mutex_lock(&w->mu);
        w->job_result = res;
        w->job_done = 1;
        pthread_mutex_unlock(&w->mu);
    }
    return NULL;
}

/* ---- heartbeat ---- */

static void zi_wk_heartbeat_once(zi_wk *w, zi_rstatus *rs)
{
    zi_rstatus_worker_info info = {0};
    char state[16], job[ZI_JOB_ID_MAX + 1];
    zi_mem_stats ms;
    char model[256], backend[32], gpu[128];
    pthread_mutex_lock(&w->state_mu);
    snprintf(state, sizeof state, "%s", w->state);
    snprintf(job, sizeof job, "%s", w->current_job);
    snprintf(model, sizeof model, "%s", w->model);
    /* w->be is set by the main thread while this thread already runs: read it locked */
    int cuda = w->be && strcmp(w->be->name, "cpu") != 0;
    snprintf(backend, sizeof backend, "%s", w->be ? w->be->name : w->cfg->device_backend);
    snprintf(gpu, sizeof gpu, "%s", cuda ? w->be->device_name : "");
    ms = w->mem;
    info.jobs_succeeded = w->jobs_succeeded;
    info.jobs_failed = w->jobs_failed;
    pthread_mutex_unlock(&w->state_mu);
    info.state = state;
    info.current_job = job;
    info.backend = backend;
    info.gpu_name = gpu;
    info.vram_total_bytes = (int64_t)ms.device_total;
    info.vram_free_bytes = (int64_t)ms.device_free;
    info.alloc_reserved_bytes = (int64_t)ms.reserved;
    info.alloc_allocated_bytes = (int64_t)ms.allocated;
    info.alloc_peak_bytes = (int64_t)ms.peak;
    info.model = model;
    info.version = ZI_VERSION;
    info.instance = w->instance;
    char prev[64];
    if (zi_rstatus_heartbeat(rs, &info, prev, sizeof prev) != ZI_OK) {
        zi_log_debug("heartbeat not written: %s", zi_errmsg());
    } else {
        /* Another process wrote our hash since our last heartbeat: a second worker with
         * this worker.id. (At the first heartbeat the token may be a crashed predecessor's.)
         * Leases, the fleet view and the consumer's client id are keyed by the id. */
        if (w->hb_written && prev[0] && strcmp(prev, w->instance) != 0) {
            zi_metric_inc(w->wm.id_conflicts, NULL);
            int64_t now = zi_wk_mono_ms();
            if (!w->id_conflict_logged_ms || now - w->id_conflict_logged_ms >= 60000) {
                w->id_conflict_logged_ms = now;
                zi_log_error("another process runs with worker.id %s (its heartbeat token %s, "
                             "ours %s): worker.id must be unique per worker - job leases and "
                             "the fleet view in Redis are keyed by it; give each worker its "
                             "own (ZIMAGE_WORKER_ID)",
                             w->cfg->worker_id, prev, w->instance);
            }
        }
        w->hb_written = 1;
    }

    pthread_mutex_lock(&w->lease_mu);
    if (w->lease_job[0]) {
        int ours = 0;
        int rc = zi_rstatus_lease_renew(rs, w->lease_job, w->lease_ttl_ms, &ours);
        if (rc == ZI_OK && !ours) {
            /* Expired while Redis was away, or Redis lost its data: take it again. */
            int acquired = 0;
            char holder[256] = "";
            if (zi_rstatus_lease_acquire(rs, w->lease_job, w->lease_ttl_ms, &acquired, holder,
                                         sizeof holder) == ZI_OK &&
                !acquired) {
                /* Another worker runs the job now (ours expired while Redis was away, or
                 * Redis lost it): one job never runs twice at once, so ours stops here,
                 * without a final state, and the other finishes it. */
                zi_log_error("lease of %s is held by %s: stopping this run of the job",
                             w->lease_job, holder);
                atomic_store(&w->lease_lost, 1);
                atomic_store(&w->job_abort, 1);
            }
        }
    }
    pthread_mutex_unlock(&w->lease_mu);
}

static void *zi_wk_hb_main(void *arg)
{
    zi_wk *w = arg;
    zi_rstatus *rs = NULL;
    if (zi_rstatus_create(&w->rscfg, &rs) != ZI_OK) {
        zi_log_error("heartbeat: %s", zi_errmsg());
        return NULL;
    }
    pthread_mutex_lock(&w->state_mu);
    while (!w->hb_quit) {
        w->hb_dirty = 0;
        pthread_mutex_unlock(&w->state_mu);
        zi_wk_heartbeat_once(w, rs);
        pthread_mutex_lock(&w->state_mu);
        if (w->hb_quit)
            break;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += w->cfg->worker_heartbeat_s;
        /* Woken early by a state change, so `busy`/`ready` show at once. */
        while (!w->hb_dirty && !w->hb_quit)
            if (pthread_cond_timedwait(&w->hb_cv, &w->state_mu, &until) == ETIMEDOUT)
                break;
    }
    pthread_mutex_unlock(&w->state_mu);
    /* Clean exit: the worker leaves the fleet view. */
    if (zi_rstatus_worker_remove(rs) != ZI_OK)
        zi_log_debug("worker not removed from Redis: %s", zi_errmsg());
    zi_rstatus_destroy(rs);
    return NULL;
}

/* ---- main thread ---- */

static zi_kmsg *zi_wk_running_msg; /* the running job's message (main thread only) */

static void zi_wk_on_revoke(void *ud, const char *topic, int32_t partition, int lost)
{
    zi_wk *w = ud;
    const zi_kmsg *m = zi_wk_running_msg;
    if (m && m->partition == partition && strcmp(m->topic, topic) == 0) {
        atomic_store(&w->job_revoked, 1);
        zi_log_warn("partition %s[%d] %s while its job at offset %lld is in progress: the "
                    "job finishes under its lease, its offset is left to the new owner",
                    topic, (int)partition, lost ? "lost" : "revoked", (long long)m->offset);
    }
}

static void zi_wk_on_lag(void *ud, int64_t lag)
{
    zi_wk *w = ud;
    zi_metric_set(w->wm.consumer_lag, NULL, (double)lag);
}

static void zi_wk_collect(void *ud)
{
    zi_wk *w = ud;
    zi_mem_stats ms;
    pthread_mutex_lock(&w->state_mu);
    ms = w->mem;
    pthread_mutex_unlock(&w->state_mu);
    zi_metric_set(w->wm.gpu_memory, "reserved", (double)ms.reserved);
    zi_metric_set(w->wm.gpu_memory, "allocated", (double)ms.allocated);
    zi_metric_set(w->wm.gpu_memory, "peak", (double)ms.peak);
    zi_metric_set(w->wm.gpu_memory, "total", (double)ms.device_total);
    zi_metric_set(w->wm.gpu_memory, "free", (double)ms.device_free);
}

/* The dispatch / completion / drain loop. Returns ZI_OK after a clean drain; *stuck = 1
 * when the job thread did not stop in time (it still uses its message and the pipeline). */
static int zi_wk_loop(zi_wk *w, int *stuck)
{
    *stuck = 0;
    zi_kmsg *cur = NULL;
    int draining = 0, abort_sent = 0, rc = ZI_OK;
    int64_t drain_deadline = 0, abort_deadline = 0;
    for (;;) {
        int prc = zi_consumer_poll(w->consumer, 100);
        if (prc != ZI_OK && rc == ZI_OK) {
            /* Fatal (librdkafka fatal error, or a message that could not be copied): stop
             * the job at once, store nothing more, leave. */
            zi_log_error("%s: stopping", zi_errmsg());
            rc = prc;
            *w->stop = 2;
        }
        if (cur) {
            pthread_mutex_lock(&w->mu);
            int done = w->job_done, res = w->job_result;
            w->job_done = 0;
            pthread_mutex_unlock(&w->mu);
            if (done) {
                if (res == ZI_WK_STORE) {
                    if (atomic_load(&w->job_revoked))
                        zi_log_info("%s[%d]@%lld finished after its partition was revoked: "
                                    "offset not stored",
                                    cur->topic, (int)cur->partition, (long long)cur->offset);
                    else if (zi_consumer_store(w->consumer, cur) != ZI_OK)
                        zi_log_info("offset not stored: %s", zi_errmsg());
                } else if (atomic_load(&w->device_lost)) {
                    /* Its device failed (zi_wk_compute): every later job would fail too.
                     * Exit 1 without this offset; the orchestrator restarts the worker -
                     * on a GPU that works again, or it keeps failing where everyone sees. */
                    if (rc == ZI_OK) {
                        zi_log_error("%s[%d]@%lld: the GPU failed: stopping, the job not "
                                     "committed",
                                     cur->topic, (int)cur->partition, (long long)cur->offset);
                        rc = zi_errorf(ZI_EDEVICE, "the GPU failed");
                    }
                    *w->stop = 2;
                } else if (!atomic_load(&w->job_revoked) && !atomic_load(&w->superseded) &&
                           !draining && rc == ZI_OK) {
                    /* No final state although the partition is still ours and no drain
                     * stopped it (out of memory, a fatal producer): the next message's
                     * offset would commit past this one, so stop instead; it is delivered
                     * again after the restart. */
                    zi_log_error("%s[%d]@%lld ended without a final state: stopping, so that "
                                 "no later offset of its partition is stored past it",
                                 cur->topic, (int)cur->partition, (long long)cur->offset);
                    rc = zi_errorf(ZI_EBACKEND, "%s[%d]@%lld ended without a final state",
                                   cur->topic, (int)cur->partition, (long long)cur->offset);
                    *w->stop = 2;
                }
                zi_wk_running_msg = NULL;
                zi_kmsg_free(cur);
                cur = NULL;
                zi_metric_set(w->wm.worker_busy, NULL, 0);
                zi_wk_set_state(w, draining ? "draining" : "ready", "");
            }
        }
        /* The stall watchdog: a pipeline that has not finished a step for
         * worker.stall_timeout_s is hung (a GPU that stopped answering: a CUDA call that
         * never returns; its heartbeat would keep the lease and the partition forever).
         * Stop as at a drain deadline: the job is not committed and is delivered again;
         * a job thread that does not return is left to the process exit (exit 1), where
         * the orchestrator restarts the worker. */
        int64_t mark = atomic_load(&w->compute_mark_ms);
        if (cur && mark && w->stall_timeout_s > 0 && rc == ZI_OK &&
            zi_wk_mono_ms() - mark > (int64_t)w->stall_timeout_s * 1000) {
            rc = zi_errorf(ZI_EBACKEND,
                           "%s[%d]@%lld: the pipeline made no progress for %d s "
                           "(worker.stall_timeout_s): a hung GPU? stopping without the job's "
                           "offset; it is delivered again",
                           cur->topic, (int)cur->partition, (long long)cur->offset,
                           w->stall_timeout_s);
            zi_log_error("%s", zi_errmsg());
            *w->stop = 2;
        }
        if (*w->stop && !draining) {
            draining = 1;
            atomic_store(&w->draining, 1); /* a job still in its checks stops there */
            zi_http_set_ready(w->http, 0);
            zi_wk_set_state(w, "draining", NULL);
            drain_deadline = zi_wk_mono_ms() + (int64_t)w->cfg->worker_drain_timeout_s * 1000;
            zi_log_info("draining: no new jobs%s", cur ? "; waiting for the current one" : "");
        }
        if (!cur && !draining) {
            zi_kmsg *m = zi_consumer_next(w->consumer);
            if (m) {
                cur = m;
                zi_wk_running_msg = m;
                atomic_store(&w->job_revoked, 0);
                atomic_store(&w->job_abort, 0);
                atomic_store(&w->lease_lost, 0);
                atomic_store(&w->superseded, 0);
                zi_metric_set(w->wm.worker_busy, NULL, 1);
                zi_wk_set_state(w, "busy", NULL);
                pthread_mutex_lock(&w->mu);
                w->job_msg = m;
                w->job_posted = 1;
                w->job_done = 0;
                pthread_cond_signal(&w->cv);
                pthread_mutex_unlock(&w->mu);
            }
        }
        /* While a job runs and the next message is already here, nothing more is fetched;
         * polling goes on regardless (max.poll.interval.ms never trips, rebalances are
         * served). Partitions are resumed as soon as nothing is buffered, even mid-job: a
         * resumed partition takes ~0.8 s to deliver again (librdkafka 2.0.2, measured), a
         * delay then hidden behind the running job instead of added to the next one. */
        zi_consumer_set_paused(w->consumer, cur != NULL && zi_consumer_pending(w->consumer) > 0);
        if (draining) {
            if (!cur)
                break;
            int64_t now = zi_wk_mono_ms();
            if (!abort_sent && (now >= drain_deadline || *w->stop >= 2)) {
                zi_log_warn("drain: stopping the current job without committing it");
                atomic_store(&w->job_abort, 1);
                abort_sent = 1;
                abort_deadline = now + ZI_WK_DRAIN_ABORT_GRACE_MS;
            }
            if (abort_sent && now >= abort_deadline) {
                zi_log_error("drain: the job did not stop in time; exiting without its offset");
                *stuck = 1;
                return rc;
            }
        }
    }
    return rc;
}

/* ---- start-up and shutdown ---- */

int zi_worker_largest_plan(const zi_wconfig *cfg, const zi_model_config *mc, zi_mem_plan *plan,
                           int *width, int *height)
{
    const int64_t px = (int64_t)mc->dit.patch * zi_vae_scale(&mc->vae);
    const int64_t max_h = cfg->gen_max_side < mc->dit.axes_lens[1] * px ? cfg->gen_max_side
                                                                        : mc->dit.axes_lens[1] * px;
    const int64_t max_w = cfg->gen_max_side < mc->dit.axes_lens[2] * px ? cfg->gen_max_side
                                                                        : mc->dit.axes_lens[2] * px;
    int64_t best = 0, shape[2][2] = {{0, 0}, {0, 0}}; /* widest, squarest */
    for (int64_t h = cfg->gen_min_side; h <= max_h; h += 16) {
        int64_t w = cfg->gen_max_pixels / h / 16 * 16;
        w = w > max_w ? max_w / 16 * 16 : w;
        if (w < cfg->gen_min_side || w * h < best)
            continue;
        if (w * h > best) {
            best = w * h;
            shape[0][0] = shape[1][0] = w; /* the first of a new best is the widest */
            shape[0][1] = shape[1][1] = h;
        } else if (llabs(w - h) < llabs(shape[1][0] - shape[1][1])) {
            shape[1][0] = w, shape[1][1] = h;
        }
    }
    if (!best)
        return zi_errorf(ZI_EINVAL,
                         "no image size fits generation.min_side, max_side and max_pixels "
                         "within the model's grid");
    zi_mem_plan p2;
    int rc = ZI_OK, at = 0;
    memset(plan, 0, sizeof *plan);
    for (int k = 0; k < 2 && rc == ZI_OK; k++) {
        rc = zi_pipeline_act_estimate(mc, (int)shape[k][0], (int)shape[k][1], 1.0f, 0, &p2);
        if (rc == ZI_OK && p2.mapped > plan->mapped) {
            *plan = p2;
            at = k;
        }
    }
    *width = (int)shape[at][0];
    *height = (int)shape[at][1];
    return rc;
}

/* The largest job's plan (zi_worker_largest_plan), before the weights load: the CUDA
 * backend's "auto" weight budget then leaves room for it (docs/cuda.md, "Activation
 * headroom"). A plan that fails (a checkpoint config the load will report anyway) changes
 * nothing. */
static void zi_wk_plan_largest(zi_backend *be, const zi_wconfig *cfg)
{
    zi_model_config mc;
    if (zi_config_load(cfg->model_path, &mc) != ZI_OK)
        return;
    zi_mem_plan plan;
    uint64_t head = 0;
    int w = 0, h = 0;
    int rc = zi_worker_largest_plan(cfg, &mc, &plan, &w, &h);
    if (rc == ZI_OK)
        rc = zi_cli_apply_headroom(be, &plan, &head);
    if (rc != ZI_OK) {
        zi_log_warn("memory plan of the largest job: %s", zi_errmsg());
        return;
    }
    char hs[96] = "";
    if (head)
        snprintf(hs, sizeof hs, "; the weight budget leaves %.2f GiB free for it",
                 head / 1073741824.0);
    zi_log_info("memory plan: the largest job (%dx%d, generation.max_side/max_pixels, with "
                "CFG) needs %.2f GiB of activations (%.2f GiB mapped), the weights %.2f GiB in "
                "bf16%s",
                w, h, plan.activations / 1073741824.0, plan.mapped / 1073741824.0,
                plan.weights / 1073741824.0, hs);
}

static const char *zi_wk_basename(const char *path, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    const char *b = strrchr(buf, '/');
    return b ? b + 1 : buf;
}

int zi_worker_run(const zi_wconfig *cfg, volatile sig_atomic_t *stop)
{
    zi_wk *w = calloc(1, sizeof *w);
    if (!w)
        return zi_errorf(ZI_ENOMEM, "out of memory");
    int rc = ZI_OK, stuck = 0;
    int mu_ok = 0;
    w->cfg = cfg;
    w->stop = stop;
    zi_worker_job_limits(cfg, &w->lim);
    char tmp[1024];
    snprintf(w->model, sizeof w->model, "%s", zi_wk_basename(cfg->model_path, tmp, sizeof tmp));
    snprintf(w->state, sizeof w->state, "starting");
    if (zi_png_compression_parse(cfg->s3_png_compression, &w->png_compression) != ZI_OK) {
        free(w);
        return ZI_EINVAL; /* the config table allows only the names it knows */
    }
    w->lease_ttl_ms = 3000LL * cfg->worker_heartbeat_s;
    w->crash_prompt = zi_wk_hook("ZIMAGE_FAULT_CRASH_PROMPT");
    w->crash_result_prompt = zi_wk_hook("ZIMAGE_FAULT_CRASH_BEFORE_RESULT");
    w->device_fault_prompt = zi_wk_hook("ZIMAGE_FAULT_DEVICE_PROMPT");
    w->stop_upload_prompt = zi_wk_hook("ZIMAGE_FAULT_STOP_BEFORE_UPLOAD");
    w->hang_prompt = zi_wk_hook("ZIMAGE_FAULT_HANG_PROMPT");
    const char *delay = getenv("ZIMAGE_FAULT_STEP_DELAY_MS");
    if (delay && delay[0]) {
        char *end = NULL;
        long v = strtol(delay, &end, 10);
        if (end && *end == '\0' && v >= 0 && v <= 600000)
            w->step_delay_ms = (int)v;
    }
    if (w->crash_prompt || w->crash_result_prompt || w->device_fault_prompt ||
        w->stop_upload_prompt || w->hang_prompt || w->step_delay_ms)
        zi_log_warn("test fault hooks active (ZIMAGE_FAULT_*): not for production");

    if (pthread_mutex_init(&w->mu, NULL) || pthread_cond_init(&w->cv, NULL) ||
        pthread_mutex_init(&w->state_mu, NULL) || pthread_cond_init(&w->hb_cv, NULL) ||
        pthread_mutex_init(&w->lease_mu, NULL)) {
        free(w);
        return zi_errorf(ZI_ENOMEM, "cannot create locks");
    }
    mu_ok = 1;

    /* metrics and HTTP first: /healthz answers while the model loads */
    w->metrics = zi_metrics_create();
    if (!w->metrics) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = zi_metrics_register_worker(w->metrics, &w->wm)) != ZI_OK)
        goto out;
    if ((rc = zi_http_start(cfg->worker_http_listen, w->metrics, &w->http)) != ZI_OK) {
        zi_error_prefix(rc, "worker.http_listen %s", cfg->worker_http_listen);
        goto out;
    }
    zi_http_set_collect(w->http, zi_wk_collect, w);
    zi_log_info("http: /metrics /healthz /readyz on port %d", zi_http_port(w->http));

    w->rscfg = zi_wconfig_rstatus(cfg, cfg->worker_id, 1000, 2000);
    if ((rc = zi_rstatus_create(&w->rscfg, &w->rs_job)) != ZI_OK)
        goto out;
    w->s3cfg = zi_wconfig_s3(cfg);
    if ((rc = zi_s3_create(&w->s3cfg, &w->s3)) != ZI_OK)
        goto out;
    zi_s3_set_abort(w->s3, zi_wk_s3_abort, w);
    char client_id[300];
    snprintf(client_id, sizeof client_id, "zimage-worker-%s", cfg->worker_id);
    if ((rc = zi_kafka_producer_new(cfg, client_id, &w->producer)) != ZI_OK)
        goto out;

    if ((rc = zi_job_new_id(w->instance)) != ZI_OK) /* this process's heartbeat token */
        goto out;
    if (pthread_create(&w->hb_thread, NULL, zi_wk_hb_main, w) != 0) {
        rc = zi_errorf(ZI_ENOMEM, "cannot start the heartbeat thread");
        goto out;
    }
    w->hb_thread_started = 1;

    /* the model */
    zi_wk_set_state(w, "loading", NULL);
    zi_log_info("loading %s on backend %s", cfg->model_path, cfg->device_backend);
    int64_t t0 = zi_wk_mono_ms();
    zi_backend *be = zi_backend_new(cfg->device_backend);
    pthread_mutex_lock(&w->state_mu);
    w->be = be;
    pthread_mutex_unlock(&w->state_mu);
    if (!w->be) {
        rc = zi_error_prefix(ZI_EBACKEND, "device.backend %s", cfg->device_backend);
        goto out;
    }
#ifdef ZI_HAVE_CUDA
    if (*cfg->device_weight_budget_mb && zi_cuda_is(w->be) &&
        (rc = zi_cuda_set_weight_budget_spec(w->be, cfg->device_weight_budget_mb)) != ZI_OK) {
        zi_error_prefix(rc, "device.weight_budget_mb");
        goto out;
    }
    if (cfg->device_pin_limit_mb && zi_cuda_is(w->be) &&
        (rc = zi_cuda_set_pin_limit(w->be, (uint64_t)cfg->device_pin_limit_mb << 20)) != ZI_OK) {
        zi_error_prefix(rc, "device.pin_limit_mb");
        goto out;
    }
#endif
    zi_wk_plan_largest(w->be, cfg);
    if ((rc = zi_pipeline_load(cfg->model_path, w->be, &w->pipe)) != ZI_OK) {
        zi_error_prefix(rc, "model.path %s", cfg->model_path);
        goto out;
    }
    pthread_mutex_lock(&w->state_mu);
    snprintf(w->model, sizeof w->model, "%s", zi_pipeline_model_name(w->pipe));
    pthread_mutex_unlock(&w->state_mu);
    zi_wk_snapshot_mem(w);
    zi_log_info("model %s loaded on %s in %lld ms", w->model, w->be->name,
                (long long)(zi_wk_mono_ms() - t0));
    /* -1: the watchdog guards GPUs (a CUDA call that never returns); a CPU step of the full
     * model may take longer than any fixed bound */
    w->stall_timeout_s = cfg->worker_stall_timeout_s >= 0   ? cfg->worker_stall_timeout_s
                         : strcmp(w->be->name, "cuda") == 0 ? ZI_WK_STALL_TIMEOUT_GPU_S
                                                            : 0;
    if (w->stall_timeout_s)
        zi_log_info("stall watchdog: a job with no finished step for %d s stops the worker",
                    w->stall_timeout_s);
#ifdef ZI_HAVE_CUDA
    if (zi_cuda_is(w->be)) { /* small cards: say how the weight budget split the model */
        zi_mem_stats m;
        w->be->mem_stats(w->be, &m);
        uint64_t budget = zi_cuda_weight_budget(w->be), host = zi_cuda_host_weight_bytes(w->be);
        char bs[48] = "no budget";
        if (budget != UINT64_MAX)
            snprintf(bs, sizeof bs, "budget %.2f GiB", budget / 1073741824.0);
        zi_log_info("weights: %.2f GiB on the device, %.2f GiB kept in host memory (%s, "
                    "device.weight_budget_mb)",
                    m.weights / 1073741824.0, host / 1073741824.0, bs);
        uint64_t mapped = zi_cuda_host_mapped_bytes(w->be);
        uint64_t pageable = zi_cuda_host_pageable_bytes(w->be);
        uint64_t pinned = zi_cuda_host_pinned_bytes(w->be);
        zi_metric_set(w->wm.weight_bytes, "device", (double)m.weights);
        zi_metric_set(w->wm.weight_bytes, "pinned", (double)pinned);
        zi_metric_set(w->wm.weight_bytes, "mapped", (double)mapped);
        zi_metric_set(w->wm.weight_bytes, "pageable", (double)pageable);
        if (host)
            zi_log_info("weights: %.2f GiB of those page-locked (limit %.2f GiB, "
                        "device.pin_limit_mb)",
                        pinned / 1073741824.0, zi_cuda_pin_limit(w->be) / 1073741824.0);
        if (mapped)
            zi_log_info("weights: %.2f GiB of those read from the mapped checkpoint files "
                        "(past the page-lock limit, device.pin_limit_mb): no copy in memory; "
                        "replace a checkpoint by renaming a new folder into place, never by "
                        "rewriting its files",
                        mapped / 1073741824.0);
        if (pageable)
            zi_log_warn("weights: %.2f GiB of those in pageable memory: the host could not "
                        "page-lock more, so their copies to the GPU are slower",
                        pageable / 1073741824.0);
    }
#endif
    if (*stop) {
        zi_log_info("stopped while loading");
        goto out;
    }

    if (pthread_create(&w->job_thread, NULL, zi_wk_job_main, w) != 0) {
        rc = zi_errorf(ZI_ENOMEM, "cannot start the job thread");
        goto out;
    }
    w->job_thread_started = 1;

    zi_consumer_hooks hooks = {.on_revoke = zi_wk_on_revoke, .on_lag = zi_wk_on_lag, .ud = w};
    if ((rc = zi_consumer_create(cfg, &hooks, &w->consumer)) != ZI_OK)
        goto out;
    zi_wk_set_state(w, "ready", "");
    zi_http_set_ready(w->http, 1);
    zi_log_info("consuming %s as %s in group %s", cfg->kafka_topic, cfg->worker_id,
                cfg->kafka_group_id);

    rc = zi_wk_loop(w, &stuck);

    /* Offsets stored so far belong to finished jobs: commit them, then leave the group. */
    zi_http_set_ready(w->http, 0);
    if (zi_consumer_commit(w->consumer, 5000) != ZI_OK)
        zi_log_warn("%s (the jobs may be delivered again; they are recognised)", zi_errmsg());
    zi_consumer_close(w->consumer);
    w->consumer = NULL;
    zi_log_info("left the consumer group");
out:
    if (w->consumer)
        zi_consumer_close(w->consumer);
    if (rc != ZI_OK)
        zi_log_error("%s", zi_errmsg());
    int keep_err = rc;
    char errmsg[1024];
    snprintf(errmsg, sizeof errmsg, "%s", zi_errmsg());
    if (w->job_thread_started && !stuck) {
        pthread_mutex_lock(&w->mu);
        w->job_quit = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->job_thread, NULL);
    }
    if (w->hb_thread_started) {
        pthread_mutex_lock(&w->state_mu);
        w->hb_quit = 1;
        pthread_cond_signal(&w->hb_cv);
        pthread_mutex_unlock(&w->state_mu);
        pthread_join(w->hb_thread, NULL);
    }
    /* A stuck job thread may still wait in zi_kafka_produce_sync() on the producer: leave
     * it to the process exit then (destroying it under that thread is a use after free). */
    if (w->producer && !stuck) {
        rd_kafka_flush(w->producer, 5000);
        rd_kafka_destroy(w->producer);
    }
    zi_http_stop(w->http);
    if (!stuck) {
        /* A stuck job thread still uses these; the process exits right after. */
        zi_pipeline_free(w->pipe);
        zi_backend_destroy(w->be);
        zi_s3_destroy(w->s3);
        zi_rstatus_destroy(w->rs_job);
        zi_kmsg_free(zi_wk_running_msg);
        zi_wk_running_msg = NULL;
        zi_metrics_destroy(w->metrics);
        if (mu_ok) {
            pthread_mutex_destroy(&w->mu);
            pthread_cond_destroy(&w->cv);
            pthread_mutex_destroy(&w->state_mu);
            pthread_cond_destroy(&w->hb_cv);
            pthread_mutex_destroy(&w->lease_mu);
        }
        free(w);
    }
    if (stuck) {
        /* The job thread ignored the drain deadline and still reads the configuration and
         * handles the caller owns: returning would free them under it. Its job was not
         * committed (it will be redelivered), so end the process here, as the caller would. */
        zi_log_warn("worker stopped with a job thread still running; exiting now");
        fflush(NULL);
        _exit(keep_err == ZI_OK ? 0 : 1);
    }
    if (keep_err != ZI_OK)
        return zi_errorf(keep_err, "%s", errmsg);
    zi_log_info("worker stopped");
    return ZI_OK;
}
