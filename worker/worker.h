/*
 * worker.h - the zimage worker daemon: Kafka -> pipeline -> PNG -> S3 -> Redis.
 *
 * Threads:
 *   main       polls the consumer (never blocks on a job), dispatches one job at a time,
 *              pauses the assigned partitions while a job runs, stores a job's offset
 *              after the job thread reports its final state, drives shutdown;
 *   job        parses, leases, de-duplicates, counts attempts, runs the pipeline, encodes
 *              the PNG, uploads it, writes the final state (retrying Redis until it is
 *              written), copies to the DLQ / result topic;
 *   heartbeat  writes the worker hash and the workers sorted set every heartbeat_s and
 *              renews the running job's lease;
 *   http       libmicrohttpd's thread: /healthz, /readyz, /metrics.
 * Delivery semantics, rebalance handling and fault hooks: docs/worker.md.
 *
 * Test-only fault hooks (environment; documented in docs/worker.md):
 *   ZIMAGE_FAULT_CRASH_PROMPT=TEXT   abort() after the first step of a job whose prompt is
 *                                    exactly TEXT (after its attempt was counted);
 *   ZIMAGE_FAULT_STEP_DELAY_MS=N     sleep N ms after every denoising step.
 */
#ifndef ZI_WORKER_H
#define ZI_WORKER_H

#include <signal.h>
#include <stdio.h>

#include "pipeline.h"
#include "wconfig.h"

/* Runs the worker until *stop becomes nonzero (set by a signal handler: 1 = drain,
 * >= 2 = stop the current job at once, still without committing it). Returns ZI_OK
 * after a clean drain (the command exits 0), or an error code with zi_errmsg() set
 * when start-up failed or the consumer hit a fatal error (exit 1). */
int zi_worker_run(const zi_wconfig *cfg, volatile sig_atomic_t *stop);

/* The largest job the configuration admits (sides multiples of 16 in generation.min_side ..
 * max_side, within the model `mc`'s token grid, at most generation.max_pixels; with CFG,
 * which a job may ask for), planned with zi_pipeline_act_estimate: of the shapes with the
 * most pixels the widest and the squarest are planned and the larger plan kept, its size in
 * *width x *height. ZI_EINVAL when the limits admit no size, or the plan's error. */
int zi_worker_largest_plan(const zi_wconfig *cfg, const zi_model_config *mc, zi_mem_plan *plan,
                           int *width, int *height);

/* The S3 key a check of the credentials HEADs (and `--check` GETs; nothing is written):
 * s3.key_template for the job id "zimage-check", so a policy scoped to the worker's prefix
 * applies to it. ZI_OK, or the template's error. */
int zi_worker_probe_key(const zi_wconfig *cfg, char *out, size_t cap);

/* `zimage worker --check`: tries each dependency of a worker once, as the worker would use
 * it, without taking a job or joining the group - Redis (PING), Kafka (the jobs, DLQ and
 * result topics exist; no topic is created), S3 (the credentials are accepted and the
 * bucket exists, by a HEAD and a GET of a key that the key template makes; nothing is
 * written), the model (every config, the tokenizer and each tensor's name, shape and dtype,
 * loaded on the memory-planning backend: no weight is read) and the device (the backend
 * starts; on a GPU, whether the weights and the largest job fit). One line per check on
 * `out`: NAME, ok / warn / FAIL, what was found. Returns the number of FAILs. */
int zi_worker_check(const zi_wconfig *cfg, FILE *out);

/* The job limits of a configuration (generation section + kafka.max_message_bytes). */
struct zi_job_limits;
void zi_worker_job_limits(const zi_wconfig *cfg, struct zi_job_limits *lim);

#endif
