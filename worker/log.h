/*
 * log.h - the worker's log: one line per event, as text or as JSON lines.
 *
 * Text:  2024-05-01T12:00:00.123Z INFO  worker=w1 job_id=abc msg... key=value
 * JSON:  {"ts":"2024-05-01T12:00:00.123Z","level":"info","msg":"...","worker":"w1",
 *         "job_id":"abc","key":"value"}            (one object per line, valid UTF-8)
 *
 * Thread-safe: each line is formatted in a private buffer and written with one locked
 * fwrite + fflush, so lines from different threads never interleave. Lines are cut at
 * ZI_LOG_LINE_MAX bytes. The job id comes from the explicit argument, else from the
 * calling thread's current job (zi_log_set_job), else is omitted.
 *
 * Never pass secrets (keys, passwords, presigned URLs' signatures are fine only as the
 * job hash stores them) to this module: it prints what it is given.
 * Before zi_log_setup() everything goes to stderr as text at level info.
 */
#ifndef ZI_LOG_H
#define ZI_LOG_H

#include <stddef.h>
#include <stdio.h>

#define ZI_LOG_LINE_MAX 8192

typedef enum zi_log_level {
    ZI_LOG_DEBUG = 0,
    ZI_LOG_INFO = 1,
    ZI_LOG_WARN = 2,
    ZI_LOG_ERROR = 3,
} zi_log_level;

typedef enum zi_log_format {
    ZI_LOG_TEXT = 0,
    ZI_LOG_JSON = 1,
} zi_log_format;

/* An extra key/value pair for one line (value printed as a JSON string). */
typedef struct zi_log_field {
    const char *key;
    const char *value;
} zi_log_field;

/* "text" | "json" -> format; ZI_EINVAL otherwise. */
int zi_log_format_parse(const char *s, zi_log_format *out);
/* "debug" | "info" | "warn" | "error" -> level; ZI_EINVAL otherwise. */
int zi_log_level_parse(const char *s, zi_log_level *out);

/* Sets the format, the minimum level, the worker id (copied; NULL = none) and the stream
 * (NULL = stderr; not closed by this module). Call once at start-up; may be called again
 * (e.g. by tests) - it is serialised with writers. */
void zi_log_setup(zi_log_format format, zi_log_level min_level, const char *worker_id, FILE *out);

/* Sets the calling thread's current job id (copied, at most 128 bytes; NULL clears). */
void zi_log_set_job(const char *job_id);

/* Logs one line with the thread's current job id. */
void zi_logf(zi_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs one line for job_id (NULL = the thread's current job) with extra fields. */
void zi_log_fields(zi_log_level level, const char *job_id, const zi_log_field *fields,
                   size_t nfields, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Convenience shorthands. */
#define zi_log_debug(...) zi_logf(ZI_LOG_DEBUG, __VA_ARGS__)
#define zi_log_info(...) zi_logf(ZI_LOG_INFO, __VA_ARGS__)
#define zi_log_warn(...) zi_logf(ZI_LOG_WARN, __VA_ARGS__)
#define zi_log_error(...) zi_logf(ZI_LOG_ERROR, __VA_ARGS__)

/* A zi_wconfig_warn_fn that logs msg at level warn (ud unused). */
void zi_log_warn_cb(void *ud, const char *msg);

/* Formats one line into buf without writing it (the same bytes zi_log_fields would write,
 * with the trailing '\n'); ts_ms = unix ms. Returns the length. For tests. */
size_t zi_log_format_line(char *buf, size_t cap, zi_log_format format, long long ts_ms,
                          zi_log_level level, const char *worker, const char *job_id,
                          const zi_log_field *fields, size_t nfields, const char *msg);

#endif
