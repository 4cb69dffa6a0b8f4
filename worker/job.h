/*
 * job.h - the job message of the Kafka topic: parsing and validation.
 *
 * A job message is a UTF-8 JSON object (docs/contract.md, "Job message"). zi_job_parse()
 * checks every rule of the contract and fills a zi_job with the effective parameters
 * (defaults from the generation section of the configuration). A message that breaks a
 * rule is a "bad job": the parse returns ZI_EINVAL and fills error_code (`invalid_job` or
 * `too_large`) and a one-line error naming the field. The job id is extracted whenever the
 * JSON `job_id` can be read and is itself valid, even when another field is bad, so the
 * worker can record the failure under that id. A message larger than max_message_bytes is
 * `too_large` whatever else is wrong with it. An escaped NUL (\u0000) in job_id, prompt or
 * negative_prompt, or a raw control byte anywhere (cJSON would cut the string there), is
 * `invalid_job` naming the member; in a member the job does not read it is ignored.
 *
 * Limits: the parse never reads past `len`; messages larger than ZI_JOB_PARSE_MAX bytes
 * are not parsed at all (too_large, no id); nesting depth is cJSON's (1000).
 * Reference: docs/contract.md; docs/job.schema.json.
 */
#ifndef ZI_JOB_H
#define ZI_JOB_H

#include <stddef.h>
#include <stdint.h>

#define ZI_JOB_ID_MAX 128        /* characters of a job id */
#define ZI_JOB_PROMPT_MAX 16384  /* bytes of prompt / negative_prompt */
#define ZI_JOB_GUIDANCE_MAX 20.0 /* guidance_scale upper bound */
#define ZI_JOB_SEED_INT_MAX ((UINT64_C(1) << 53) - 1)
#define ZI_JOB_PARSE_MAX (64u << 20) /* never parse more than this (for the id) */
#define ZI_JOB_ERROR_MAX 256

/* Defaults and limits (the generation section, plus kafka.max_message_bytes). */
typedef struct zi_job_limits {
    int def_width, def_height, def_steps;
    double def_guidance;
    int min_side, max_side;
    int64_t max_pixels;
    int max_steps;
    int64_t max_message_bytes;
} zi_job_limits;

typedef struct zi_job {
    char job_id[ZI_JOB_ID_MAX + 1]; /* "" when there is no valid id */
    char *prompt;                   /* heap, NUL-terminated, never NULL after a good parse */
    char *negative_prompt;          /* heap; "" when absent */
    int width, height, steps;
    double guidance;
    int has_seed; /* 0: the worker draws one */
    uint64_t seed;
    int64_t deadline_ms; /* unix ms; -1: none */
    /* bad jobs only: */
    char error_code[32];              /* "invalid_job" or "too_large" */
    char error[ZI_JOB_ERROR_MAX + 1]; /* one line, names the field */
} zi_job;

/* The contract's error_code values (docs/contract.md), in its order. */
#define ZI_JOB_N_ERROR_CODES 8
extern const char *const zi_job_error_codes[ZI_JOB_N_ERROR_CODES];

/* 1 when s (NUL-terminated) matches [A-Za-z0-9][A-Za-z0-9._-]{0,127} and has no "..". */
int zi_job_id_valid(const char *s);

/* 1 when the n bytes are well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int zi_job_utf8_valid(const char *s, size_t n);

/* Parses and validates one message value of `len` bytes (need not be NUL-terminated).
 * ZI_OK: *job holds a good job. ZI_EINVAL: a bad job (error_code, error, and job_id when
 * it could be read). ZI_ENOMEM: allocation failure. *job is reset first; release it with
 * zi_job_clear() in every case. */
int zi_job_parse(const void *buf, size_t len, const zi_job_limits *lim, zi_job *job);

/* Frees the strings and zeroes the job. Safe on a zeroed job. */
void zi_job_clear(zi_job *job);

/* Builds the JSON text of a good job (fields of the contract; seed as a decimal string when
 * above 2^53-1). *out is malloc'ed (caller frees). For `zimage submit`. */
int zi_job_to_json(const zi_job *job, char **out);

/* A fresh random job id: 32 lowercase hex characters (from getrandom). */
int zi_job_new_id(char out[33]);

#endif
