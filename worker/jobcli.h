/*
 * jobcli.h - what `zimage submit` and `zimage status` share: opening Redis from the
 * configuration, reading a job hash, printing it as JSON with a fresh presigned URL, and
 * waiting for a final state.
 */
#ifndef ZI_JOBCLI_H
#define ZI_JOBCLI_H

#include <stdio.h>

#include "rstatus.h"
#include "wconfig.h"

/* Opens a Redis handle for a command-line tool (short timeouts). */
int zi_jobcli_redis(const zi_wconfig *cfg, zi_rstatus **out);

/* 1 for succeeded, failed, cancelled. */
int zi_jobcli_final(const char *status);

/* Reads the job hash, retrying transient Redis errors for up to retry_ms. ZI_ENOTFOUND
 * when the job is unknown. */
int zi_jobcli_get(zi_rstatus *rs, const char *job_id, int retry_ms, zi_rstatus_hash *h);

/* Waits until the job's status is final (polling every 200 ms), at most timeout_s seconds
 * (0 = no limit). ZI_OK with *h holding the final hash; ZI_ENOTFOUND when the job vanished
 * or never existed; ZI_ETRANSIENT on timeout (message says so). */
int zi_jobcli_wait(zi_rstatus *rs, const char *job_id, double timeout_s, zi_rstatus_hash *h);

/* Prints h as one JSON object of strings on one line (keys sorted), `url` replaced by a
 * presigned GET of `s3_key` signed now when the job succeeded. */
int zi_jobcli_print(const zi_wconfig *cfg, const zi_rstatus_hash *h, FILE *out);

#endif
