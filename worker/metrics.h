/*
 * metrics.h - a small thread-safe Prometheus metrics registry (counters, gauges, histograms)
 * and its text exposition (format 0.0.4).
 *
 * A family has a name, help text and at most one label (counters and gauges); children for
 * label values are created on first use, at most ZI_METRICS_MAX_CHILDREN per family (further
 * values are dropped, never crash). Histograms have fixed upper bounds (+Inf implicit) and no
 * label. All update functions are safe from any thread (one registry mutex; updates are a few
 * instructions). Families are rendered in registration order, children in creation order.
 *
 * Numbers are written in the shortest form that reads back exactly ("3", "0.5", "+Inf").
 */
#ifndef ZI_METRICS_H
#define ZI_METRICS_H

#include <stddef.h>

#define ZI_METRICS_MAX_CHILDREN 32
#define ZI_METRICS_MAX_BUCKETS 32
#define ZI_METRICS_MAX_FAMILIES 64

typedef struct zi_metrics zi_metrics;
typedef struct zi_metric zi_metric; /* one family; owned by the registry */

zi_metrics *zi_metrics_create(void); /* NULL on ENOMEM */
void zi_metrics_destroy(zi_metrics *m);

/* Registers a family. name: [a-zA-Z_:][a-zA-Z0-9_:]*; label_name NULL = no label. ZI_EINVAL
 * on a bad or duplicate name, too many families; *out owned by m. */
int zi_metrics_counter(zi_metrics *m, const char *name, const char *help, const char *label_name,
                       zi_metric **out);
int zi_metrics_gauge(zi_metrics *m, const char *name, const char *help, const char *label_name,
                     zi_metric **out);
/* bounds: n strictly increasing finite upper bounds (1..ZI_METRICS_MAX_BUCKETS). */
int zi_metrics_histogram(zi_metrics *m, const char *name, const char *help, const double *bounds,
                         size_t n, zi_metric **out);

/* Counter: adds v (>= 0; negative ignored). label_value NULL for unlabelled families. Adding
 * 0 creates the child so it is exported as 0. */
void zi_metric_add(zi_metric *c, const char *label_value, double v);
void zi_metric_inc(zi_metric *c, const char *label_value); /* add 1 */
/* Gauge: sets / adds. */
void zi_metric_set(zi_metric *g, const char *label_value, double v);
void zi_metric_gauge_add(zi_metric *g, const char *label_value, double v);
/* Histogram: one observation. */
void zi_metric_observe(zi_metric *h, double v);

/* Current value of a counter/gauge child (0 when absent); a histogram's count. For tests. */
double zi_metric_value(zi_metric *m, const char *label_value);

/* Renders every family as Prometheus text into a heap buffer (caller frees). */
int zi_metrics_render(zi_metrics *m, char **text, size_t *len);

/* The worker's contract metrics, registered on m by zi_metrics_register_worker():
 *   zimage_jobs_total{outcome}            counter  (outcome = the final status recorded:
 *                                                    succeeded, failed, cancelled; superseded
 *                                                    for a run dropped without one; all
 *                                                    pre-created at 0)
 *   zimage_job_duration_seconds           histogram (0.5 .. 600 s)
 *   zimage_step_duration_seconds          histogram (0.005 .. 30 s)
 *   zimage_consumer_lag                   gauge (messages behind the high watermark)
 *   zimage_gpu_memory_bytes{kind}         gauge (reserved|allocated|peak|total|free, all at 0)
 *   zimage_worker_busy                    gauge (0/1)
 *   zimage_s3_retries_total, zimage_redis_errors_total   counters (extensions)
 *   zimage_job_failures_total{error_code}                counter (extension: failed jobs by
 *                                                          the contract's error_code)
 *   zimage_jobs_deduplicated_total        counter (extension: redelivered jobs found done,
 *                                                    recorded succeeded without a run)
 *   zimage_worker_id_conflicts_total      counter (extension: heartbeats that found the worker
 *                                                    hash written by another process)
 *   zimage_weight_bytes{where}            gauge (extension: model weights by where they are
 *                                                    kept - device|pinned|mapped|pageable, set
 *                                                    at load; all 0 on the CPU backend)
 *   zimage_weight_prefetch_total{result}  counter (extension: host-kept weights found copied
 *                                                    ahead - hit - or waited for - miss)
 *   zimage_caption_cache_total{result}    counter (extension: prompts found in the
 *                                                    prompt-embedding cache - hit - or
 *                                                    encoded - miss) */
typedef struct zi_worker_metrics {
    zi_metric *jobs_total;
    zi_metric *job_duration;
    zi_metric *step_duration;
    zi_metric *consumer_lag;
    zi_metric *gpu_memory;
    zi_metric *worker_busy;
    zi_metric *s3_retries;
    zi_metric *redis_errors;
    zi_metric *job_failures;
    zi_metric *jobs_deduplicated;
    zi_metric *id_conflicts;
    zi_metric *weight_bytes;
    zi_metric *weight_prefetch;
    zi_metric *caption_cache;
    zi_metric *start_time; /* set at registration: its changes count restarts */
} zi_worker_metrics;

int zi_metrics_register_worker(zi_metrics *m, zi_worker_metrics *wm);

#endif
