/*
 * metrics.c - counters, gauges and fixed-bucket histograms, rendered as Prometheus text.
 *
 * Reference: Prometheus "Exposition formats", text format 0.0.4 (HELP/TYPE lines, label
 * value escaping of \ " and newline, histogram _bucket{le=...} cumulative, _sum, _count).
 * One mutex guards the whole registry: updates are rare (per job, per step) and tiny, so
 * contention is not a concern; a scrape holds it only while formatting.
 */
#include "metrics.h"
#include "job.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "zi_err.h"

#define ZI_METRICS_RENDER_MAX (4u << 20) /* hard cap on one exposition */

typedef enum { ZI_MT_COUNTER, ZI_MT_GAUGE, ZI_MT_HISTOGRAM } zi_metric_type;

typedef struct zi_metric_child {
    char *label_value; /* NULL for unlabelled families */
    double value;
} zi_metric_child;

struct zi_metric {
    zi_metrics *reg;
    zi_metric_type type;
    char *name;
    char *help;
    char *label_name; /* NULL = no label */
    zi_metric_child children[ZI_METRICS_MAX_CHILDREN];
    size_t nchildren;
    /* histogram */
    double bounds[ZI_METRICS_MAX_BUCKETS];
    size_t nbounds;
    unsigned long long counts[ZI_METRICS_MAX_BUCKETS + 1]; /* per bucket, not cumulative */
    double sum;
    unsigned long long count;
};

struct zi_metrics {
    pthread_mutex_t mu;
    zi_metric *families[ZI_METRICS_MAX_FAMILIES];
    size_t nfamilies;
};

zi_metrics *zi_metrics_create(void)
{
    zi_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

static void zi_metric_free(zi_metric *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->nchildren; i++)
        free(f->children[i].label_value);
    free(f->name);
    free(f->help);
    free(f->label_name);
    free(f);
}

void zi_metrics_destroy(zi_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfamilies; i++)
        zi_metric_free(m->families[i]);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static int zi_metrics_name_ok(const char *s, int allow_colon)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (allow_colon && c == ':');
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

static int zi_metrics_add_family(zi_metrics *m, zi_metric_type type, const char *name,
                                 const char *help, const char *label_name, const double *bounds,
                                 size_t nbounds, zi_metric **out)
{
    if (!m || !out)
        return zi_errorf(ZI_EINVAL, "metrics: NULL argument");
    if (!zi_metrics_name_ok(name, 1))
        return zi_errorf(ZI_EINVAL, "metrics: bad metric name '%s'", name ? name : "");
    if (label_name && (!zi_metrics_name_ok(label_name, 0) || strcmp(label_name, "le") == 0))
        return zi_errorf(ZI_EINVAL, "metrics: %s: bad label name '%s'", name, label_name);
    if (type == ZI_MT_HISTOGRAM) {
        if (nbounds < 1 || nbounds > ZI_METRICS_MAX_BUCKETS)
            return zi_errorf(ZI_EINVAL, "metrics: %s: %zu buckets (1..%d)", name, nbounds,
                             ZI_METRICS_MAX_BUCKETS);
        for (size_t i = 0; i < nbounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
                return zi_errorf(ZI_EINVAL,
                                 "metrics: %s: bucket bounds must be finite and "
                                 "strictly increasing",
                                 name);
    }
    int rc = ZI_OK;
    zi_metric *f = NULL;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nfamilies; i++)
        if (strcmp(m->families[i]->name, name) == 0) {
            rc = zi_errorf(ZI_EINVAL, "metrics: %s registered twice", name);
            goto err;
        }
    if (m->nfamilies == ZI_METRICS_MAX_FAMILIES) {
        rc = zi_errorf(ZI_EINVAL, "metrics: more than %d families", ZI_METRICS_MAX_FAMILIES);
        goto err;
    }
    f = calloc(1, sizeof *f);
    if (!f)
        goto nomem;
    f->reg = m;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->label_name = label_name ? strdup(label_name) : NULL;
    if (!f->name || !f->help || (label_name && !f->label_name))
        goto nomem;
    if (type == ZI_MT_HISTOGRAM) {
        memcpy(f->bounds, bounds, nbounds * sizeof *bounds);
        f->nbounds = nbounds;
    }
    m->families[m->nfamilies++] = f;
    pthread_mutex_unlock(&m->mu);
    *out = f;
    return ZI_OK;
nomem:
    rc = zi_errorf(ZI_ENOMEM, "metrics: out of memory");
err:
    pthread_mutex_unlock(&m->mu);
    zi_metric_free(f);
    return rc;
}

int zi_metrics_counter(zi_metrics *m, const char *name, const char *help, const char *label_name,
                       zi_metric **out)
{
    return zi_metrics_add_family(m, ZI_MT_COUNTER, name, help, label_name, NULL, 0, out);
}

int zi_metrics_gauge(zi_metrics *m, const char *name, const char *help, const char *label_name,
                     zi_metric **out)
{
    return zi_metrics_add_family(m, ZI_MT_GAUGE, name, help, label_name, NULL, 0, out);
}

int zi_metrics_histogram(zi_metrics *m, const char *name, const char *help, const double *bounds,
                         size_t n, zi_metric **out)
{
    if (!bounds)
        return zi_errorf(ZI_EINVAL, "metrics: %s: no buckets", name ? name : "");
    return zi_metrics_add_family(m, ZI_MT_HISTOGRAM, name, help, NULL, bounds, n, out);
}

/* The child for label_value, created when create != 0. Caller holds the lock. A labelled
 * family ignores a NULL label value and vice versa (a programming error, not a crash). */
static zi_metric_child *zi_metric_child_get(zi_metric *f, const char *label_value, int create)
{
    if ((f->label_name == NULL) != (label_value == NULL))
        return NULL;
    for (size_t i = 0; i < f->nchildren; i++) {
        const char *lv = f->children[i].label_value;
        if (!label_value || strcmp(lv, label_value) == 0)
            return &f->children[i];
    }
    if (!create || f->nchildren == ZI_METRICS_MAX_CHILDREN)
        return NULL;
    zi_metric_child *c = &f->children[f->nchildren];
    c->value = 0;
    c->label_value = NULL;
    if (label_value) {
        c->label_value = strdup(label_value);
        if (!c->label_value)
            return NULL;
    }
    f->nchildren++;
    return c;
}

static void zi_metric_update(zi_metric *f, const char *label_value, double v, int set)
{
    if (!f || f->type == ZI_MT_HISTOGRAM)
        return;
    pthread_mutex_lock(&f->reg->mu);
    zi_metric_child *c = zi_metric_child_get(f, label_value, 1);
    if (c)
        c->value = set ? v : c->value + v;
    pthread_mutex_unlock(&f->reg->mu);
}

void zi_metric_add(zi_metric *c, const char *label_value, double v)
{
    /* counters only go up: a negative or NaN add would break rate() */
    if (!c || c->type != ZI_MT_COUNTER || !(v >= 0))
        return;
    zi_metric_update(c, label_value, v, 0);
}

void zi_metric_inc(zi_metric *c, const char *label_value)
{
    zi_metric_add(c, label_value, 1.0);
}

void zi_metric_set(zi_metric *g, const char *label_value, double v)
{
    if (!g || g->type != ZI_MT_GAUGE)
        return;
    zi_metric_update(g, label_value, v, 1);
}

void zi_metric_gauge_add(zi_metric *g, const char *label_value, double v)
{
    if (!g || g->type != ZI_MT_GAUGE)
        return;
    zi_metric_update(g, label_value, v, 0);
}

void zi_metric_observe(zi_metric *h, double v)
{
    if (!h || h->type != ZI_MT_HISTOGRAM || isnan(v))
        return;
    pthread_mutex_lock(&h->reg->mu);
    size_t b = 0;
    while (b < h->nbounds && v > h->bounds[b])
        b++;
    h->counts[b]++;
    h->sum += v;
    h->count++;
    pthread_mutex_unlock(&h->reg->mu);
}

double zi_metric_value(zi_metric *m, const char *label_value)
{
    if (!m)
        return 0;
    double v = 0;
    pthread_mutex_lock(&m->reg->mu);
    if (m->type == ZI_MT_HISTOGRAM) {
        v = (double)m->count;
    } else {
        zi_metric_child *c = zi_metric_child_get(m, label_value, 0);
        if (c)
            v = c->value;
    }
    pthread_mutex_unlock(&m->reg->mu);
    return v;
}

/* ---- rendering ---- */

typedef struct zi_mbuf {
    char *p;
    size_t len, cap;
    int err;
} zi_mbuf;

static void zi_mbuf_put(zi_mbuf *b, const char *s, size_t n)
{
    if (b->err)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > ZI_METRICS_RENDER_MAX) {
            b->err = ZI_EINVAL;
            return;
        }
        char *np = realloc(b->p, cap);
        if (!np) {
            b->err = ZI_ENOMEM;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void zi_mbuf_puts(zi_mbuf *b, const char *s)
{
    zi_mbuf_put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void zi_mbuf_printf(zi_mbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        b->err = ZI_EINVAL;
        return;
    }
    zi_mbuf_put(b, tmp, (size_t)n);
}

/* Shortest decimal that parses back to v exactly; Prometheus spellings for the rest. */
static void zi_metrics_fmt_num(char *out, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    /* integers (counts, bytes) in plain digits, never "4e+04" */
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        snprintf(out, cap, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* Label values escape \ " and newline; HELP escapes \ and newline. */
static void zi_mbuf_escaped(zi_mbuf *b, const char *s, int quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            zi_mbuf_puts(b, "\\\\");
        else if (*s == '\n')
            zi_mbuf_puts(b, "\\n");
        else if (quote && *s == '"')
            zi_mbuf_puts(b, "\\\"");
        else
            zi_mbuf_put(b, s, 1);
    }
}

static void zi_metrics_render_family(zi_mbuf *b, const zi_metric *f)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    char num[64];
    zi_mbuf_printf(b, "# HELP %s ", f->name);
    zi_mbuf_escaped(b, f->help, 0);
    zi_mbuf_printf(b, "\n# TYPE %s %s\n", f->name, types[f->type]);
    if (f->type == ZI_MT_HISTOGRAM) {
        unsigned long long cum = 0;
        for (size_t i = 0; i <= f->nbounds; i++) {
            cum += f->counts[i];
            if (i < f->nbounds)
                zi_metrics_fmt_num(num, sizeof num, f->bounds[i]);
            else
                snprintf(num, sizeof num, "+Inf");
            zi_mbuf_printf(b, "%s_bucket{le=\"%s\"} %llu\n", f->name, num, cum);
        }
        zi_metrics_fmt_num(num, sizeof num, f->sum);
        zi_mbuf_printf(b, "%s_sum %s\n%s_count %llu\n", f->name, num, f->name, f->count);
        return;
    }
    if (!f->label_name && f->nchildren == 0) {
        zi_mbuf_printf(b, "%s 0\n", f->name); /* an unlabelled series always exists */
        return;
    }
    for (size_t i = 0; i < f->nchildren; i++) {
        zi_mbuf_puts(b, f->name);
        if (f->label_name) {
            zi_mbuf_printf(b, "{%s=\"", f->label_name);
            zi_mbuf_escaped(b, f->children[i].label_value, 1);
            zi_mbuf_puts(b, "\"}");
        }
        zi_metrics_fmt_num(num, sizeof num, f->children[i].value);
        zi_mbuf_printf(b, " %s\n", num);
    }
}

int zi_metrics_render(zi_metrics *m, char **text, size_t *len)
{
    zi_mbuf b = {0};
    zi_mbuf_put(&b, "", 0); /* an empty registry renders as "" rather than NULL */
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nfamilies; i++)
        zi_metrics_render_family(&b, m->families[i]);
    pthread_mutex_unlock(&m->mu);
    if (b.err) {
        free(b.p);
        return zi_errorf(b.err, "metrics: exposition failed (%s)", zi_strerror(b.err));
    }
    *text = b.p;
    if (len)
        *len = b.len;
    return ZI_OK;
}

int zi_metrics_register_worker(zi_metrics *m, zi_worker_metrics *wm)
{
    static const double job_bounds[] = {0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600};
    static const double step_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                         0.5,   1,    2.5,   5,    10,  30};
    /* pre-created at 0 where an alert takes their increase() (a series first seen at 1 has none) */
    static const char *const outcomes[] = {"succeeded", "failed", "cancelled", "superseded"};
    static const char *const kinds[] = {"reserved", "allocated", "peak", "total", "free"};
    static const char *const wheres[] = {"device", "pinned", "mapped", "pageable"};
    int rc;
    memset(wm, 0, sizeof *wm);
    if ((rc = zi_metrics_counter(m, "zimage_jobs_total", "Jobs finished, by outcome.", "outcome",
                                 &wm->jobs_total)) ||
        (rc = zi_metrics_histogram(m, "zimage_job_duration_seconds",
                                   "Wall time of one job from pick-up to final state.", job_bounds,
                                   sizeof job_bounds / sizeof job_bounds[0], &wm->job_duration)) ||
        (rc = zi_metrics_histogram(
             m, "zimage_step_duration_seconds", "Wall time of one denoising step.", step_bounds,
             sizeof step_bounds / sizeof step_bounds[0], &wm->step_duration)) ||
        (rc = zi_metrics_gauge(m, "zimage_consumer_lag",
                               "Messages behind the high watermark on assigned partitions.", NULL,
                               &wm->consumer_lag)) ||
        (rc = zi_metrics_gauge(m, "zimage_gpu_memory_bytes", "GPU memory by kind.", "kind",
                               &wm->gpu_memory)) ||
        (rc = zi_metrics_gauge(m, "zimage_worker_busy", "1 while a job is running.", NULL,
                               &wm->worker_busy)) ||
        (rc = zi_metrics_counter(m, "zimage_s3_retries_total", "S3 requests retried.", NULL,
                                 &wm->s3_retries)) ||
        (rc =
             zi_metrics_counter(m, "zimage_redis_errors_total",
                                "Redis calls that failed transiently.", NULL, &wm->redis_errors)) ||
        (rc = zi_metrics_counter(m, "zimage_job_failures_total",
                                 "Jobs that ended failed, by error_code.", "error_code",
                                 &wm->job_failures)) ||
        (rc = zi_metrics_counter(m, "zimage_jobs_deduplicated_total",
                                 "Redelivered jobs found already done (hash or S3 object): "
                                 "recorded succeeded without a run.",
                                 NULL, &wm->jobs_deduplicated)) ||
        (rc = zi_metrics_counter(m, "zimage_worker_id_conflicts_total",
                                 "Heartbeats that found this worker's hash written by another "
                                 "process with the same worker.id.",
                                 NULL, &wm->id_conflicts)) ||
        (rc = zi_metrics_gauge(m, "zimage_weight_bytes",
                               "Model weights by where they are kept (device, or host memory: "
                               "pinned, mapped checkpoint files, pageable).",
                               "where", &wm->weight_bytes)) ||
        (rc = zi_metrics_counter(m, "zimage_weight_prefetch_total",
                                 "Host-kept weights found already copied to the GPU (hit) or "
                                 "waited for (miss).",
                                 "result", &wm->weight_prefetch)) ||
        (rc = zi_metrics_counter(m, "zimage_caption_cache_total",
                                 "Prompts whose text-encoder output was found in the "
                                 "prompt-embedding cache (hit) or computed (miss).",
                                 "result", &wm->caption_cache)) ||
        (rc = zi_metrics_gauge(m, "zimage_worker_start_time_seconds",
                               "Unix time this worker process started (its changes count "
                               "restarts).",
                               NULL, &wm->start_time)))
        return rc;
    zi_metric_set(wm->start_time, NULL, (double)time(NULL));
    for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++)
        zi_metric_add(wm->jobs_total, outcomes[i], 0);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        zi_metric_set(wm->gpu_memory, kinds[i], 0);
    for (size_t i = 0; i < sizeof wheres / sizeof wheres[0]; i++)
        zi_metric_set(wm->weight_bytes, wheres[i], 0);
    zi_metric_add(wm->weight_prefetch, "hit", 0);
    zi_metric_add(wm->weight_prefetch, "miss", 0);
    zi_metric_add(wm->caption_cache, "hit", 0);
    zi_metric_add(wm->caption_cache, "miss", 0);
    /* every error_code at 0 from the start: a series first seen at 1 has no increase() */
    for (size_t i = 0; i < ZI_JOB_N_ERROR_CODES; i++)
        zi_metric_add(wm->job_failures, zi_job_error_codes[i], 0);
    return ZI_OK;
}
