/*
 * preflight.c - `zimage worker --check` (zi_worker_check, worker.h): every dependency of a
 * worker tried once, the way the worker uses it, before a deployment takes jobs. A worker
 * with a wrong S3 secret or a missing topic would otherwise start, take jobs and fail each
 * one (or wait forever); the check names the problem instead and exits 1.
 *
 * Each check is bounded (Redis 2 s per call, Kafka 5 s, S3 retries for 5 s) and writes
 * nothing anywhere: no topic is created, no object put, no group joined, no weight read.
 * Limits: S3 write permission is not tried (that would write an object); Kafka ACLs for
 * reading the topic or committing in the group show only once the worker runs.
 */
#include "backend.h"
#include "cli_util.h"
#include "kafka.h"
#include "pipeline.h"
#include "rstatus.h"
#include "s3.h"
#include "worker.h"
#include "zi_err.h"
#ifdef ZI_HAVE_CUDA
#include "zi_cuda.h"
#endif

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ZI_PF_REDIS_TIMEOUT_MS 2000
#define ZI_PF_KAFKA_TIMEOUT_MS 5000
#define ZI_PF_S3_RETRY_S 5.0
#define ZI_PF_GIB 1073741824.0

enum { ZI_PF_OK, ZI_PF_WARN, ZI_PF_FAIL };

/* Prints one result line; returns 1 for a FAIL (the caller sums them). */
static int zi_pf_line(FILE *out, const char *what, int state, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int zi_pf_line(FILE *out, const char *what, int state, const char *fmt, ...)
{
    static const char *const names[] = {"ok", "warn", "FAIL"};
    char msg[3072];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(out, "%-7s %-4s %s\n", what, names[state], msg);
    fflush(out);
    return state == ZI_PF_FAIL;
}

static double zi_pf_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int zi_pf_redis(const zi_wconfig *cfg, FILE *out)
{
    char where[512];
    zi_redis_url_redact(cfg->redis_url, where, sizeof where);
    zi_rstatus_config rc =
        zi_wconfig_rstatus(cfg, cfg->worker_id, ZI_PF_REDIS_TIMEOUT_MS, ZI_PF_REDIS_TIMEOUT_MS);
    zi_rstatus *rs = NULL;
    double t0 = zi_pf_now_ms();
    int st = zi_rstatus_create(&rc, &rs);
    if (st == ZI_OK)
        st = zi_rstatus_ping(rs);
    double ms = zi_pf_now_ms() - t0;
    zi_rstatus_destroy(rs);
    if (st != ZI_OK) {
        char err[1024];
        snprintf(err, sizeof err, "%s", zi_errmsg());
        char *retry = strstr(err, " (next connect in "); /* the client's backoff: not ours */
        if (retry)
            *retry = '\0';
        return zi_pf_line(out, "redis", ZI_PF_FAIL, "%s: %s", where, err);
    }
    return zi_pf_line(out, "redis", ZI_PF_OK, "%s: PING answered in %.1f ms", where, ms);
}

/* The jobs, DLQ and result topics exist (metadata of a consumer handle that never joins the
 * group and never auto-creates a topic). */
static int zi_pf_kafka(const zi_wconfig *cfg, FILE *out)
{
    char client[300], err[512];
    snprintf(client, sizeof client, "zimage-check-%s", cfg->worker_id);
    rd_kafka_conf_t *conf = NULL;
    if (zi_kafka_conf_new(cfg, client, &conf) != ZI_OK)
        return zi_pf_line(out, "kafka", ZI_PF_FAIL, "%s", zi_errmsg());
    if (rd_kafka_conf_set(conf, "allow.auto.create.topics", "false", err, sizeof err) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return zi_pf_line(out, "kafka", ZI_PF_FAIL, "allow.auto.create.topics: %s", err);
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return zi_pf_line(out, "kafka", ZI_PF_FAIL, "cannot create a client: %s", err);
    }
    const char *const roles[] = {"kafka.topic", "kafka.dlq_topic", "kafka.result_topic"};
    const char *const topics[] = {cfg->kafka_topic, cfg->kafka_dlq_topic, cfg->kafka_result_topic};
    char found[1024] = "";
    size_t used = 0;
    int fails = 0;
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        if (!topics[i] || !*topics[i])
            continue;
        int n = 0, rc = zi_kafka_topic_partitions(rk, topics[i], ZI_PF_KAFKA_TIMEOUT_MS, &n);
        if (rc != ZI_OK) {
            fails += zi_pf_line(out, "kafka", ZI_PF_FAIL, "%s (%s): %s", roles[i],
                                cfg->kafka_bootstrap_servers, zi_errmsg());
            if (rc == ZI_ETRANSIENT)
                break; /* no broker: the next topic would wait as long for nothing */
            continue;
        }
        int w = snprintf(found + used, sizeof found - used, "%s%s %s (%d partition%s)",
                         used ? ", " : "", roles[i], topics[i], n, n == 1 ? "" : "s");
        if (w > 0 && (size_t)w < sizeof found - used)
            used += (size_t)w;
    }
    rd_kafka_destroy(rk);
    if (fails)
        return fails;
    return zi_pf_line(out, "kafka", ZI_PF_OK, "%s: %s", cfg->kafka_bootstrap_servers, found);
}

/* The credentials are accepted and the bucket exists: a HEAD of a key the template makes
 * (so a policy scoped to the worker's prefix applies), then - a HEAD having no body, a
 * missing bucket reads like a missing key - a GET of it. */
static int zi_pf_s3(const zi_wconfig *cfg, FILE *out)
{
    char key[ZI_S3_MAX_KEY + 1];
    if (zi_worker_probe_key(cfg, key, sizeof key) != ZI_OK)
        return zi_pf_line(out, "s3", ZI_PF_FAIL, "s3.key_template: %s", zi_errmsg());
    zi_s3_config sc = zi_wconfig_s3(cfg);
    if (sc.retry_s > ZI_PF_S3_RETRY_S)
        sc.retry_s = ZI_PF_S3_RETRY_S;
    zi_s3 *s3 = NULL;
    if (zi_s3_create(&sc, &s3) != ZI_OK)
        return zi_pf_line(out, "s3", ZI_PF_FAIL, "%s", zi_errmsg());
    int state = ZI_PF_OK;
    char msg[ZI_S3_MAX_KEY + 512];
    zi_s3_head_info hi;
    int rc = zi_s3_head(s3, key, &hi);
    if (rc == ZI_ENOTFOUND && zi_s3_head_denied(s3)) {
        state = ZI_PF_WARN;
        snprintf(msg, sizeof msg,
                 "credentials accepted, but a missing object reads 403 AccessDenied: either "
                 "they lack s3:ListBucket (the worker runs; one GET more per new job) or they "
                 "may not use this bucket at all - a read cannot tell which");
    } else if (rc == ZI_ENOTFOUND) {
        void *body = NULL;
        size_t len = 0;
        rc = zi_s3_get(s3, key, 1 << 20, &body, &len);
        free(body);
        if (rc == ZI_ENOTFOUND || rc == ZI_OK)
            snprintf(msg, sizeof msg, "credentials accepted, bucket found (GET %s: %s)", key,
                     rc == ZI_OK ? "an object" : "no such key");
        else
            state = ZI_PF_FAIL;
    } else if (rc == ZI_OK) {
        snprintf(msg, sizeof msg, "credentials accepted, bucket found (HEAD %s: an object)", key);
    } else {
        state = ZI_PF_FAIL;
    }
    if (state == ZI_PF_FAIL)
        snprintf(msg, sizeof msg, "%s", zi_errmsg());
    zi_s3_destroy(s3);
    return zi_pf_line(out, "s3", state, "%s bucket %s: %s (write access not tried)",
                      cfg->s3_endpoint, cfg->s3_bucket, msg);
}

/* MemAvailable of /proc/meminfo in bytes; 0 when unknown. */
static uint64_t zi_pf_host_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb * 1024u;
}

/* The model on the memory-planning backend: every config, the tokenizer, and each tensor's
 * name, shape and dtype as the real load checks them, without reading a weight. On success
 * *mc is the model's config and *weights its weights in bf16. */
static int zi_pf_model(const zi_wconfig *cfg, FILE *out, zi_model_config *mc, uint64_t *weights)
{
    zi_backend *meta = zi_backend_meta_new(ZI_BF16, 512);
    if (!meta)
        return zi_pf_line(out, "model", ZI_PF_FAIL, "out of memory");
    zi_pipeline *p = NULL;
    double t0 = zi_pf_now_ms();
    int rc = zi_pipeline_load(cfg->model_path, meta, &p);
    if (rc != ZI_OK) {
        zi_backend_destroy(meta);
        return zi_pf_line(out, "model", ZI_PF_FAIL, "model.path %s: %s", cfg->model_path,
                          zi_errmsg());
    }
    zi_mem_stats m;
    meta->mem_stats(meta, &m);
    *mc = *zi_pipeline_config(p);
    *weights = m.weights;
    int fails = zi_pf_line(out, "model", ZI_PF_OK,
                           "%s (%s): configs, tokenizer and every tensor in place, %.2f GiB of "
                           "weights in bf16 (checked in %.0f ms, no weight read)",
                           cfg->model_path, zi_pipeline_model_name(p), m.weights / ZI_PF_GIB,
                           zi_pf_now_ms() - t0);
    zi_pipeline_free(p);
    zi_backend_destroy(meta);
    return fails;
}

/* The backend starts; with the model known, whether its weights and the largest job fit. */
static int zi_pf_device(const zi_wconfig *cfg, FILE *out, const zi_model_config *mc,
                        uint64_t weights)
{
    zi_backend *be = zi_backend_new(cfg->device_backend);
    if (!be)
        return zi_pf_line(out, "device", ZI_PF_FAIL, "device.backend %s: %s", cfg->device_backend,
                          zi_errmsg());
    zi_mem_plan plan = {0};
    int w = 0, h = 0, planned = 0;
    if (mc) {
        if (zi_worker_largest_plan(cfg, mc, &plan, &w, &h) != ZI_OK) {
            int f = zi_pf_line(out, "device", ZI_PF_FAIL, "memory plan of the largest job: %s",
                               zi_errmsg());
            zi_backend_destroy(be);
            return f;
        }
        planned = 1;
    }
    char job[160] = "";
    if (planned)
        snprintf(job, sizeof job, "the largest job (%dx%d with CFG) %.2f GiB", w, h,
                 plan.mapped / ZI_PF_GIB);
    int state = ZI_PF_OK;
    char msg[1024];
#ifdef ZI_HAVE_CUDA
    if (zi_cuda_is(be)) {
        int rc = ZI_OK;
        if (*cfg->device_weight_budget_mb)
            rc = zi_cuda_set_weight_budget_spec(be, cfg->device_weight_budget_mb);
        if (rc == ZI_OK && planned)
            rc = zi_cli_apply_headroom(be, &plan, NULL);
        zi_mem_stats m;
        be->mem_stats(be, &m);
        uint64_t head = zi_cuda_act_headroom(be), budget = zi_cuda_weight_budget(be);
        int n = snprintf(msg, sizeof msg, "cuda: %s, %.2f GiB free of %.2f GiB", be->device_name,
                         m.device_free / ZI_PF_GIB, m.device_total / ZI_PF_GIB);
        size_t at = n > 0 && (size_t)n < sizeof msg ? (size_t)n : 0;
        uint64_t on_device = weights < budget ? weights : budget; /* budget: UINT64_MAX = none */
        if (rc != ZI_OK) {
            state = ZI_PF_FAIL;
            snprintf(msg + at, sizeof msg - at, "; device.weight_budget_mb: %s", zi_errmsg());
        } else if (planned && m.device_free < head) {
            state = ZI_PF_FAIL;
            snprintf(msg + at, sizeof msg - at,
                     "; %s needs %.2f GiB with its scratch: lower generation.max_side or "
                     "max_pixels",
                     job, head / ZI_PF_GIB);
        } else if (planned && !zi_cuda_weight_budget_auto(be) &&
                   on_device + head > m.device_free) { /* auto leaves the headroom */
            state = ZI_PF_FAIL;
            snprintf(msg + at, sizeof msg - at,
                     "; the weights the budget keeps on the device (%.2f GiB, "
                     "device.weight_budget_mb) and %s (%.2f GiB with its scratch) do not fit: "
                     "use auto or a smaller budget",
                     on_device / ZI_PF_GIB, job, head / ZI_PF_GIB);
        } else if (planned && on_device == weights) {
            snprintf(msg + at, sizeof msg - at, "; all weights (%.2f GiB) resident beside %s",
                     weights / ZI_PF_GIB, job);
        } else if (planned) {
            snprintf(msg + at, sizeof msg - at,
                     "; %s fits; of the weights (%.2f GiB) %.2f GiB stay in host memory under "
                     "the weight budget (slower steps; docs/cuda.md)",
                     job, weights / ZI_PF_GIB, (weights - on_device) / ZI_PF_GIB);
        }
    } else
#endif
    {
        uint64_t avail = zi_pf_host_available();
        /* the plan is laid out for the GPU (bf16); the CPU backend keeps all in f32 */
        uint64_t need = 2 * (weights + plan.mapped);
        int n = snprintf(msg, sizeof msg, "%s", be->name);
        size_t at = n > 0 && (size_t)n < sizeof msg ? (size_t)n : 0;
        if (planned) {
            n = snprintf(msg + at, sizeof msg - at,
                         ": the weights and %s need about %.2f GiB of host memory in f32", job,
                         need / ZI_PF_GIB);
            at += n > 0 && (size_t)n < sizeof msg - at ? (size_t)n : 0;
        }
        if (avail)
            snprintf(msg + at, sizeof msg - at, "; %.2f GiB available", avail / ZI_PF_GIB);
        if (planned && avail && need > avail)
            state = ZI_PF_WARN;
    }
    zi_backend_destroy(be);
    return zi_pf_line(out, "device", state, "%s", msg);
}

int zi_worker_check(const zi_wconfig *cfg, FILE *out)
{
    int fails = zi_pf_redis(cfg, out);
    fails += zi_pf_kafka(cfg, out);
    fails += zi_pf_s3(cfg, out);
    zi_model_config mc;
    uint64_t weights = 0;
    int model_fail = zi_pf_model(cfg, out, &mc, &weights);
    fails += model_fail;
    fails += zi_pf_device(cfg, out, model_fail ? NULL : &mc, weights);
    return fails;
}
