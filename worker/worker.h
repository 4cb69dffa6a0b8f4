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

#include "wconfig.h"

/* Runs the worker until *stop becomes nonzero (set by a signal handler: 1 = drain,
 * >= 2 = stop the current job at once, still without committing it). Returns ZI_OK
 * after a clean drain (the command exits 0), or an error code with zi_errmsg() set
 * when start-up failed or the consumer hit a fatal error (exit 1). */
int zi_worker_run(const zi_wconfig *cfg, volatile sig_atomic_t *stop);

/* The job limits of a configuration (generation section + kafka.max_message_bytes). */
struct zi_job_limits;
void zi_worker_job_limits(const zi_wconfig *cfg, struct zi_job_limits *lim);

#endif
