/*
 * wconfig.h - the worker configuration: YAML file + ZIMAGE_* environment + secrets.
 *
 * The configuration is one declarative table of rows (key path, environment variable,
 * type, default, bounds, target field in zi_wconfig), see wconfig.c. Every key of the
 * contract (docs/contract.md, "Configuration") is a row. Order of precedence, lowest
 * first: built-in defaults, the YAML file, ZIMAGE_<SECTION>_<KEY> environment variables.
 *
 * Errors (all ZI_EFORMAT, message names the key and, for the file, the line):
 *   - an unknown section or key in the file ("file F: line 7: unknown key 'kafka.topik'"),
 *   - a wrong type (a mapping where a scalar is expected, "abc" for an int, a quoted
 *     "true" for a bool), a value out of its row's bounds, an enum value not listed,
 *   - a duplicate key, YAML aliases, sequences, YAML syntax errors,
 *   - the same for environment overrides ("environment ZIMAGE_S3_RETRY_S: ..."),
 *   - cross-field rules (zi_wconfig_validate): generation sizes, redis.url syntax,
 *     key_template placeholders, worker.http_listen syntax.
 * The caller (a command) prints "zimage: error: <zi_errmsg()>" and exits 2.
 *
 * Unknown ZIMAGE_* environment variables are reported through the warn callback and
 * ignored. Secrets are read ONLY from the environment, are never read from the file, and
 * are never printed: zi_wconfig_dump() writes "<redacted>" (also for a password inside
 * redis.url).
 *
 * Limits: the file is at most ZI_WCFG_MAX_FILE bytes; every string at most
 * ZI_WCFG_MAX_STRING bytes; kafka.properties at most ZI_WCFG_MAX_PROPS entries.
 */
#ifndef ZI_WCONFIG_H
#define ZI_WCONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rstatus.h"
#include "s3.h"

#define ZI_WCFG_MAX_FILE (1u << 20)
#define ZI_WCFG_MAX_STRING 4096
#define ZI_WCFG_MAX_PROPS 256

/* One kafka.properties entry (both strings heap-owned by the config). */
typedef struct zi_wconfig_prop {
    char *key;
    char *value;
} zi_wconfig_prop;

/* All strings are heap-owned, NUL-terminated and never NULL after
 * zi_wconfig_init_defaults() (an unset optional string is ""). */
typedef struct zi_wconfig {
    /* model */
    char *model_path;
    /* device */
    char *device_backend; /* "auto" | "cuda" | "cpu" */
    /* "" (ZI_CUDA_WEIGHT_BUDGET_MB, else auto) | "auto" | "resident" | MiB (digits) */
    char *device_weight_budget_mb;
    int device_pin_limit_mb; /* 0: the backend's default (half the host's memory) */
    /* generation: defaults for fields a job leaves out, and the limits */
    int gen_width;
    int gen_height;
    int gen_steps;
    double gen_guidance_scale;
    int gen_min_side;
    int gen_max_side;
    int64_t gen_max_pixels;
    int gen_max_steps;
    /* kafka */
    char *kafka_bootstrap_servers;
    char *kafka_topic;
    char *kafka_group_id;
    char *kafka_dlq_topic;
    char *kafka_result_topic; /* "" = no result messages */
    int64_t kafka_max_message_bytes;
    int kafka_static_membership;       /* bool */
    zi_wconfig_prop *kafka_properties; /* file entries, then ZIMAGE_KAFKA_PROPERTIES merged */
    size_t kafka_properties_n;
    /* redis */
    char *redis_url;
    char *redis_key_prefix;
    int64_t redis_job_ttl_s;
    /* s3 */
    char *s3_endpoint;
    char *s3_public_endpoint; /* "" = use s3_endpoint in presigned URLs */
    char *s3_region;
    char *s3_bucket;
    char *s3_key_template;
    int s3_path_style; /* bool */
    int s3_presign_ttl_s;
    int s3_retry_s;
    char *s3_png_compression; /* "fast" | "small" (extension; default fast) */
    /* worker */
    char *worker_id; /* default (and when set to ""): the host name */
    char *worker_http_listen;
    int worker_heartbeat_s;
    int worker_max_attempts;
    int worker_drain_timeout_s;
    int worker_stall_timeout_s; /* extension: no pipeline progress this long -> exit (0 off,
                                 * -1: 600 on the CUDA backend, off on the CPU) */
    /* logging */
    char *logging_format; /* "text" | "json" */
    char *logging_level;  /* "debug" | "info" | "warn" | "error" (extension; default info) */

    /* secrets: ONLY from the environment; "" when unset; never printed */
    char *s3_access_key;    /* ZIMAGE_S3_ACCESS_KEY, else AWS_ACCESS_KEY_ID */
    char *s3_secret_key;    /* ZIMAGE_S3_SECRET_KEY, else AWS_SECRET_ACCESS_KEY */
    char *s3_session_token; /* ZIMAGE_S3_SESSION_TOKEN, else AWS_SESSION_TOKEN */
    char *redis_password;   /* ZIMAGE_REDIS_PASSWORD ("" = the one in redis.url, if any) */
} zi_wconfig;

/* Receives one warning (e.g. "ignoring unknown environment variable ZIMAGE_FOO"). */
typedef void (*zi_wconfig_warn_fn)(void *ud, const char *msg);

/* Fills every field with its default (worker_id = host name). Any previous content is
 * NOT freed: call on a zeroed or freed struct. ZI_ENOMEM on allocation failure (the
 * struct is then freed again and may be passed to zi_wconfig_free()). */
int zi_wconfig_init_defaults(zi_wconfig *cfg);

/* Applies a YAML document from memory over cfg (only keys present change). `label` names
 * the source in messages (e.g. the file name). On error cfg may be partly updated; the
 * caller frees it. An empty document is valid (changes nothing). */
int zi_wconfig_parse_buffer(zi_wconfig *cfg, const char *buf, size_t len, const char *label);

/* Reads and applies a YAML file (ZI_ENOTFOUND if missing, ZI_EFORMAT if unreadable or
 * larger than ZI_WCFG_MAX_FILE). */
int zi_wconfig_parse_file(zi_wconfig *cfg, const char *path);

/* Applies environment overrides and secrets from envp (a NULL-terminated "NAME=value"
 * array, e.g. `environ`). ZIMAGE_KAFKA_PROPERTIES="k1=v1,k2=v2" merges into
 * kafka.properties (replacing equal keys). Unknown ZIMAGE_* names go to warn (may be NULL)
 * and are ignored. Errors name the variable. */
int zi_wconfig_apply_env(zi_wconfig *cfg, char *const *envp, zi_wconfig_warn_fn warn, void *ud);

/* Cross-field checks (see top). */
int zi_wconfig_validate(const zi_wconfig *cfg);

/* Everything for a command: defaults, the file (path may be NULL: defaults only), the
 * process environment, validate. On error cfg is freed (safe to zi_wconfig_free again). */
int zi_wconfig_load(zi_wconfig *cfg, const char *path, zi_wconfig_warn_fn warn, void *ud);

/* Frees every string and property; leaves cfg zeroed. Safe on a zeroed struct. */
void zi_wconfig_free(zi_wconfig *cfg);

/* Writes the effective configuration as YAML (every key, in table order), secrets shown as
 * "<redacted>" when set and "" when not, a password inside redis.url replaced too.
 * Returns ZI_OK or ZI_EIO. For --print-config. */
int zi_wconfig_dump(const zi_wconfig *cfg, FILE *out);

/* The kafka.properties value for key, or NULL. */
const char *zi_wconfig_kafka_property(const zi_wconfig *cfg, const char *key);

/* The Redis client settings of cfg (redis.*, job TTL, heartbeat) for a client that writes as
 * worker_id, with the given timeouts (0 = rstatus's defaults). The strings are borrowed from
 * cfg and worker_id: both must outlive the result's use. */
zi_rstatus_config zi_wconfig_rstatus(const zi_wconfig *cfg, const char *worker_id,
                                     int connect_timeout_ms, int command_timeout_ms);

/* The S3 client settings of cfg (s3.*, retry budget s3.retry_s). Strings are borrowed from
 * cfg. */
zi_s3_config zi_wconfig_s3(const zi_wconfig *cfg);

#endif
