/*
 * wconfig.c - the worker configuration as one declarative table (see wconfig.h).
 *
 * Each row: key path, environment variable, type, default (as text, parsed by the same code
 * as file and environment values, so a default can never escape its bounds), bounds, and
 * the offset of the target field. The YAML file is read with libyaml's event parser: the
 * document must be a mapping of sections to mappings of scalars (kafka.properties: a
 * mapping of scalars); anything else is an error that names the key and the line.
 *
 * Reference: docs/contract.md "Configuration"; the row-table idea follows Redis config.c.
 */
#include "wconfig.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>
#include <yaml.h>

#include "backend.h"
#include "http.h"
#include "job.h"
#include "rstatus.h"
#include "s3.h"
#include "zi_err.h"

extern char **environ;

typedef enum zi_wcfg_type {
    ZI_WCFG_STRING, /* char *; min = 1 -> must not be empty */
    ZI_WCFG_ENUM,   /* char *, one of `choices` ("a|b|c") */
    ZI_WCFG_INT,    /* int within [min, max] */
    ZI_WCFG_I64,    /* int64_t within [min, max] */
    ZI_WCFG_BOOL,   /* int 0/1 */
    ZI_WCFG_DOUBLE, /* double within [min, max], finite */
    ZI_WCFG_MAP,    /* kafka.properties: string -> string */
} zi_wcfg_type;

typedef struct zi_wcfg_row {
    const char *key;
    const char *env;
    zi_wcfg_type type;
    const char *def;
    double min, max;
    const char *choices;
    size_t offset;
} zi_wcfg_row;

#define ZI_WCFG_OFF(field) offsetof(zi_wconfig, field)
#define ZI_WCFG_STRMAX ((double)ZI_WCFG_MAX_STRING)

/* The contract's keys, in the order of docs/contract.md (dump order too), and ours:
 * device.weight_budget_mb and device.pin_limit_mb (small GPUs, docs/cuda.md). */
static const zi_wcfg_row zi_wcfg_rows[] = {
    {"model.path", "ZIMAGE_MODEL_PATH", ZI_WCFG_STRING, "/models/Z-Image-Turbo", 1, ZI_WCFG_STRMAX,
     NULL, ZI_WCFG_OFF(model_path)},
    {"device.backend", "ZIMAGE_DEVICE_BACKEND", ZI_WCFG_ENUM, "auto", 0, 0, "auto|cuda|cpu",
     ZI_WCFG_OFF(device_backend)},
    {"device.weight_budget_mb", "ZIMAGE_DEVICE_WEIGHT_BUDGET_MB", ZI_WCFG_STRING, "", 0, 20, NULL,
     ZI_WCFG_OFF(device_weight_budget_mb)},
    {"device.pin_limit_mb", "ZIMAGE_DEVICE_PIN_LIMIT_MB", ZI_WCFG_INT, "0", 0, 16777216, NULL,
     ZI_WCFG_OFF(device_pin_limit_mb)},
    {"generation.width", "ZIMAGE_GENERATION_WIDTH", ZI_WCFG_INT, "1024", 16, 16384, NULL,
     ZI_WCFG_OFF(gen_width)},
    {"generation.height", "ZIMAGE_GENERATION_HEIGHT", ZI_WCFG_INT, "1024", 16, 16384, NULL,
     ZI_WCFG_OFF(gen_height)},
    {"generation.steps", "ZIMAGE_GENERATION_STEPS", ZI_WCFG_INT, "8", 1, 1000, NULL,
     ZI_WCFG_OFF(gen_steps)},
    {"generation.guidance_scale", "ZIMAGE_GENERATION_GUIDANCE_SCALE", ZI_WCFG_DOUBLE, "0.0", 0, 20,
     NULL, ZI_WCFG_OFF(gen_guidance_scale)},
    {"generation.min_side", "ZIMAGE_GENERATION_MIN_SIDE", ZI_WCFG_INT, "64", 16, 16384, NULL,
     ZI_WCFG_OFF(gen_min_side)},
    {"generation.max_side", "ZIMAGE_GENERATION_MAX_SIDE", ZI_WCFG_INT, "4096", 16, 16384, NULL,
     ZI_WCFG_OFF(gen_max_side)},
    {"generation.max_pixels", "ZIMAGE_GENERATION_MAX_PIXELS", ZI_WCFG_I64, "4194304", 256,
     268435456, NULL, ZI_WCFG_OFF(gen_max_pixels)},
    {"generation.max_steps", "ZIMAGE_GENERATION_MAX_STEPS", ZI_WCFG_INT, "50", 1, 1000, NULL,
     ZI_WCFG_OFF(gen_max_steps)},
    {"kafka.bootstrap_servers", "ZIMAGE_KAFKA_BOOTSTRAP_SERVERS", ZI_WCFG_STRING, "127.0.0.1:9092",
     1, ZI_WCFG_STRMAX, NULL, ZI_WCFG_OFF(kafka_bootstrap_servers)},
    {"kafka.topic", "ZIMAGE_KAFKA_TOPIC", ZI_WCFG_STRING, "zimage.jobs", 1, 249, NULL,
     ZI_WCFG_OFF(kafka_topic)},
    {"kafka.group_id", "ZIMAGE_KAFKA_GROUP_ID", ZI_WCFG_STRING, "zimage-workers", 1, ZI_WCFG_STRMAX,
     NULL, ZI_WCFG_OFF(kafka_group_id)},
    {"kafka.dlq_topic", "ZIMAGE_KAFKA_DLQ_TOPIC", ZI_WCFG_STRING, "zimage.jobs.dlq", 1, 249, NULL,
     ZI_WCFG_OFF(kafka_dlq_topic)},
    {"kafka.result_topic", "ZIMAGE_KAFKA_RESULT_TOPIC", ZI_WCFG_STRING, "", 0, 249, NULL,
     ZI_WCFG_OFF(kafka_result_topic)},
    {"kafka.max_message_bytes", "ZIMAGE_KAFKA_MAX_MESSAGE_BYTES", ZI_WCFG_I64, "1048576", 1024,
     1000000000, NULL, ZI_WCFG_OFF(kafka_max_message_bytes)},
    {"kafka.static_membership", "ZIMAGE_KAFKA_STATIC_MEMBERSHIP", ZI_WCFG_BOOL, "false", 0, 1, NULL,
     ZI_WCFG_OFF(kafka_static_membership)},
    {"kafka.properties", "ZIMAGE_KAFKA_PROPERTIES", ZI_WCFG_MAP, "", 0, 0, NULL,
     ZI_WCFG_OFF(kafka_properties)},
    {"redis.url", "ZIMAGE_REDIS_URL", ZI_WCFG_STRING, "redis://127.0.0.1:6379/0", 1, ZI_WCFG_STRMAX,
     NULL, ZI_WCFG_OFF(redis_url)},
    {"redis.key_prefix", "ZIMAGE_REDIS_KEY_PREFIX", ZI_WCFG_STRING, "zimage:", 0, 128, NULL,
     ZI_WCFG_OFF(redis_key_prefix)},
    {"redis.job_ttl_s", "ZIMAGE_REDIS_JOB_TTL_S", ZI_WCFG_I64, "604800", 1, 315360000, NULL,
     ZI_WCFG_OFF(redis_job_ttl_s)},
    {"s3.endpoint", "ZIMAGE_S3_ENDPOINT", ZI_WCFG_STRING, "http://127.0.0.1:7480", 1, 1024, NULL,
     ZI_WCFG_OFF(s3_endpoint)},
    {"s3.public_endpoint", "ZIMAGE_S3_PUBLIC_ENDPOINT", ZI_WCFG_STRING, "", 0, 1024, NULL,
     ZI_WCFG_OFF(s3_public_endpoint)},
    {"s3.region", "ZIMAGE_S3_REGION", ZI_WCFG_STRING, "us-east-1", 1, 64, NULL,
     ZI_WCFG_OFF(s3_region)},
    {"s3.bucket", "ZIMAGE_S3_BUCKET", ZI_WCFG_STRING, "zimage", 1, 255, NULL,
     ZI_WCFG_OFF(s3_bucket)},
    {"s3.key_template", "ZIMAGE_S3_KEY_TEMPLATE", ZI_WCFG_STRING, "{job_id}.png", 1, 512, NULL,
     ZI_WCFG_OFF(s3_key_template)},
    {"s3.path_style", "ZIMAGE_S3_PATH_STYLE", ZI_WCFG_BOOL, "true", 0, 1, NULL,
     ZI_WCFG_OFF(s3_path_style)},
    {"s3.presign_ttl_s", "ZIMAGE_S3_PRESIGN_TTL_S", ZI_WCFG_INT, "3600", 1, ZI_S3_MAX_PRESIGN_S,
     NULL, ZI_WCFG_OFF(s3_presign_ttl_s)},
    {"s3.retry_s", "ZIMAGE_S3_RETRY_S", ZI_WCFG_INT, "60", 0, 86400, NULL, ZI_WCFG_OFF(s3_retry_s)},
    {"s3.png_compression", "ZIMAGE_S3_PNG_COMPRESSION", ZI_WCFG_ENUM, "fast", 0, 0, "fast|small",
     ZI_WCFG_OFF(s3_png_compression)},
    {"worker.id", "ZIMAGE_WORKER_ID", ZI_WCFG_STRING, "", 0, 128, NULL, ZI_WCFG_OFF(worker_id)},
    {"worker.http_listen", "ZIMAGE_WORKER_HTTP_LISTEN", ZI_WCFG_STRING, "0.0.0.0:9400", 1, 300,
     NULL, ZI_WCFG_OFF(worker_http_listen)},
    {"worker.heartbeat_s", "ZIMAGE_WORKER_HEARTBEAT_S", ZI_WCFG_INT, "5", 1, 3600, NULL,
     ZI_WCFG_OFF(worker_heartbeat_s)},
    {"worker.max_attempts", "ZIMAGE_WORKER_MAX_ATTEMPTS", ZI_WCFG_INT, "3", 1, 100, NULL,
     ZI_WCFG_OFF(worker_max_attempts)},
    {"worker.drain_timeout_s", "ZIMAGE_WORKER_DRAIN_TIMEOUT_S", ZI_WCFG_INT, "120", 0, 86400, NULL,
     ZI_WCFG_OFF(worker_drain_timeout_s)},
    {"worker.stall_timeout_s", "ZIMAGE_WORKER_STALL_TIMEOUT_S", ZI_WCFG_INT, "-1", -1, 86400, NULL,
     ZI_WCFG_OFF(worker_stall_timeout_s)},
    {"logging.format", "ZIMAGE_LOGGING_FORMAT", ZI_WCFG_ENUM, "text", 0, 0, "text|json",
     ZI_WCFG_OFF(logging_format)},
    {"logging.level", "ZIMAGE_LOGGING_LEVEL", ZI_WCFG_ENUM, "info", 0, 0, "debug|info|warn|error",
     ZI_WCFG_OFF(logging_level)},
};
#define ZI_WCFG_NROWS (sizeof zi_wcfg_rows / sizeof zi_wcfg_rows[0])

/* Secrets: environment only, first variable set wins. `key` is the name a user might
 * try in the file; it gets a pointed error instead of "unknown key". */
typedef struct zi_wcfg_secret {
    const char *key;
    const char *env;
    const char *fallback;
    size_t offset;
} zi_wcfg_secret;

static const zi_wcfg_secret zi_wcfg_secrets[] = {
    {"s3.access_key", "ZIMAGE_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID", ZI_WCFG_OFF(s3_access_key)},
    {"s3.secret_key", "ZIMAGE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", ZI_WCFG_OFF(s3_secret_key)},
    {"s3.session_token", "ZIMAGE_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN",
     ZI_WCFG_OFF(s3_session_token)},
    {"redis.password", "ZIMAGE_REDIS_PASSWORD", NULL, ZI_WCFG_OFF(redis_password)},
};
#define ZI_WCFG_NSECRETS (sizeof zi_wcfg_secrets / sizeof zi_wcfg_secrets[0])

static char **zi_wcfg_str(zi_wconfig *cfg, size_t off)
{
    return (char **)((char *)cfg + off);
}

static const zi_wcfg_row *zi_wcfg_find(const char *key)
{
    for (size_t i = 0; i < ZI_WCFG_NROWS; i++)
        if (strcmp(zi_wcfg_rows[i].key, key) == 0)
            return &zi_wcfg_rows[i];
    return NULL;
}

/* Replaces a heap string. */
static int zi_wcfg_set_str(char **slot, const char *v)
{
    char *copy = strdup(v);
    if (!copy)
        return zi_errorf(ZI_ENOMEM, "config: out of memory");
    free(*slot);
    *slot = copy;
    return ZI_OK;
}

static int zi_wcfg_parse_i64(const char *s, int64_t *out)
{
    if (!*s || strlen(s) > 20)
        return 0;
    const char *p = s;
    if (*p == '-' || *p == '+')
        p++;
    if (!*p)
        return 0;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9')
            return 0;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return 0;
    *out = (int64_t)v;
    return 1;
}

static int zi_wcfg_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes",
                                      "YES",  "on",   "On",   "ON",  "1"};
    static const char *const no[] = {"false", "False", "FALSE", "no",  "No",
                                     "NO",    "off",   "Off",   "OFF", "0"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = 1;
            return 1;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = 0;
            return 1;
        }
    }
    return 0;
}

static int zi_wcfg_choice_ok(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return 1;
        p += len + (bar ? 1 : 0);
    }
    return 0;
}

/* Where a value came from, for messages: "file F: line L" or "environment ZIMAGE_X". */
typedef struct zi_wcfg_src {
    const char *label;
    int line; /* 0 = not from a file */
} zi_wcfg_src;

#define ZI_WCFG_WHERE_MAX 1200

static void zi_wcfg_where(char *out, size_t cap, zi_wcfg_src src)
{
    if (src.line > 0)
        snprintf(out, cap, "%s: line %d", src.label, src.line);
    else
        snprintf(out, cap, "%s", src.label);
}

/* Sets a scalar row from text. `quoted`: the YAML value was quoted or tagged !!str, which
 * makes it a string for typing purposes (a quoted "8" is not an integer). `null`: a YAML
 * null (~, null, or nothing). */
static int zi_wcfg_set_row(zi_wconfig *cfg, const zi_wcfg_row *row, const char *v, int quoted,
                           int null, zi_wcfg_src src)
{
    char where[ZI_WCFG_WHERE_MAX];
    zi_wcfg_where(where, sizeof where, src);
    void *field = (char *)cfg + row->offset;
    switch (row->type) {
    case ZI_WCFG_STRING: {
        if (null)
            v = "";
        size_t n = strlen(v);
        if (row->min >= 1 && n == 0)
            return zi_errorf(ZI_EFORMAT, "%s: key '%s': must not be empty", where, row->key);
        if ((double)n > row->max)
            return zi_errorf(ZI_EFORMAT, "%s: key '%s': longer than %.0f bytes", where, row->key,
                             row->max);
        return zi_wcfg_set_str(field, v);
    }
    case ZI_WCFG_ENUM:
        if (null || !zi_wcfg_choice_ok(row->choices, v))
            return zi_errorf(ZI_EFORMAT, "%s: key '%s': '%.64s' is not one of %s", where, row->key,
                             null ? "" : v, row->choices);
        return zi_wcfg_set_str(field, v);
    case ZI_WCFG_INT:
    case ZI_WCFG_I64: {
        int64_t x;
        if (null || quoted || !zi_wcfg_parse_i64(v, &x))
            return zi_errorf(ZI_EFORMAT, "%s: key '%s': expected an integer, got %s'%.64s'", where,
                             row->key, quoted ? "the string " : "", null ? "" : v);
        if ((double)x < row->min || (double)x > row->max)
            return zi_errorf(ZI_EFORMAT, "%s: key '%s': %lld is out of range [%.0f, %.0f]", where,
                             row->key, (long long)x, row->min, row->max);
        if (row->type == ZI_WCFG_INT)
            *(int *)field = (int)x;
        else
            *(int64_t *)field = x;
        return ZI_OK;
    }
    case ZI_WCFG_BOOL: {
        int b;
        if (null || quoted || !zi_wcfg_parse_bool(v, &b))
            return zi_errorf(ZI_EFORMAT, "%s: key '%s': expected true or false, got %s'%.64s'",
                             where, row->key, quoted ? "the string " : "", null ? "" : v);
        *(int *)field = b;
        return ZI_OK;
    }
    case ZI_WCFG_DOUBLE: {
        char *end = NULL;
        double x = 0;
        int ok = !null && !quoted && *v && strlen(v) < 64;
        if (ok) {
            errno = 0;
            x = strtod(v, &end);
            ok = !errno && *end == '\0' && isfinite(x);
        }
        if (!ok)
            return zi_errorf(ZI_EFORMAT, "%s: key '%s': expected a number, got %s'%.64s'", where,
                             row->key, quoted ? "the string " : "", null ? "" : v);
        if (x < row->min || x > row->max)
            return zi_errorf(ZI_EFORMAT, "%s: key '%s': %g is out of range [%g, %g]", where,
                             row->key, x, row->min, row->max);
        *(double *)field = x;
        return ZI_OK;
    }
    case ZI_WCFG_MAP:
        return zi_errorf(ZI_EFORMAT, "%s: key '%s': expected a mapping of properties", where,
                         row->key);
    }
    return zi_errorf(ZI_EFORMAT, "%s: key '%s': bad row type", where, row->key);
}

/* Sets (or replaces) one kafka property. */
static int zi_wcfg_prop_set(zi_wconfig *cfg, const char *key, const char *value, zi_wcfg_src src)
{
    char where[ZI_WCFG_WHERE_MAX];
    zi_wcfg_where(where, sizeof where, src);
    if (!*key)
        return zi_errorf(ZI_EFORMAT, "%s: key 'kafka.properties': empty property name", where);
    if (strlen(key) > 256 || strlen(value) > ZI_WCFG_MAX_STRING)
        return zi_errorf(ZI_EFORMAT, "%s: key 'kafka.properties': property '%.64s' too long", where,
                         key);
    /* librdkafka's property names are all of [A-Za-z0-9._-] */
    if (strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
        strlen(key))
        return zi_errorf(ZI_EFORMAT,
                         "%s: key 'kafka.properties': '%.64s' is not a property name "
                         "([A-Za-z0-9._-])",
                         where, key);
    for (size_t i = 0; i < cfg->kafka_properties_n; i++)
        if (strcmp(cfg->kafka_properties[i].key, key) == 0)
            return zi_wcfg_set_str(&cfg->kafka_properties[i].value, value);
    if (cfg->kafka_properties_n == ZI_WCFG_MAX_PROPS)
        return zi_errorf(ZI_EFORMAT, "%s: key 'kafka.properties': more than %d properties", where,
                         ZI_WCFG_MAX_PROPS);
    zi_wconfig_prop *np =
        realloc(cfg->kafka_properties, (cfg->kafka_properties_n + 1) * sizeof *np);
    if (!np)
        return zi_errorf(ZI_ENOMEM, "config: out of memory");
    cfg->kafka_properties = np;
    zi_wconfig_prop *p = &np[cfg->kafka_properties_n];
    p->key = strdup(key);
    p->value = strdup(value);
    if (!p->key || !p->value) {
        free(p->key);
        free(p->value);
        return zi_errorf(ZI_ENOMEM, "config: out of memory");
    }
    cfg->kafka_properties_n++;
    return ZI_OK;
}

static int zi_wcfg_hostname(zi_wconfig *cfg)
{
    char host[256];
    if (gethostname(host, sizeof host) != 0 || !host[0])
        snprintf(host, sizeof host, "zimage-worker");
    host[sizeof host - 1] = '\0';
    host[128] = '\0'; /* worker.id is at most 128 bytes */
    return zi_wcfg_set_str(&cfg->worker_id, host);
}

int zi_wconfig_init_defaults(zi_wconfig *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    zi_wcfg_src src = {"built-in default", 0};
    int rc;
    for (size_t i = 0; i < ZI_WCFG_NROWS; i++) {
        if (zi_wcfg_rows[i].type == ZI_WCFG_MAP)
            continue;
        if ((rc = zi_wcfg_set_row(cfg, &zi_wcfg_rows[i], zi_wcfg_rows[i].def, 0, 0, src)))
            goto err;
    }
    for (size_t i = 0; i < ZI_WCFG_NSECRETS; i++)
        if ((rc = zi_wcfg_set_str(zi_wcfg_str(cfg, zi_wcfg_secrets[i].offset), "")))
            goto err;
    if ((rc = zi_wcfg_hostname(cfg)))
        goto err;
    return ZI_OK;
err:
    zi_wconfig_free(cfg);
    return rc;
}

void zi_wconfig_free(zi_wconfig *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < ZI_WCFG_NROWS; i++) {
        zi_wcfg_type t = zi_wcfg_rows[i].type;
        if (t == ZI_WCFG_STRING || t == ZI_WCFG_ENUM)
            free(*zi_wcfg_str(cfg, zi_wcfg_rows[i].offset));
    }
    for (size_t i = 0; i < ZI_WCFG_NSECRETS; i++) {
        char *s = *zi_wcfg_str(cfg, zi_wcfg_secrets[i].offset);
        if (s) /* wipe secrets before giving the memory back */
            explicit_bzero(s, strlen(s));
        free(s);
    }
    for (size_t i = 0; i < cfg->kafka_properties_n; i++) {
        free(cfg->kafka_properties[i].key);
        free(cfg->kafka_properties[i].value);
    }
    free(cfg->kafka_properties);
    memset(cfg, 0, sizeof *cfg);
}

/* ---- YAML ---- */

typedef struct zi_wcfg_yaml {
    yaml_parser_t parser;
    yaml_event_t ev; /* the current event (valid after zi_wcfg_next returned ZI_OK) */
    int have_ev;
    const char *label;
} zi_wcfg_yaml;

static int zi_wcfg_next(zi_wcfg_yaml *y)
{
    if (y->have_ev) {
        yaml_event_delete(&y->ev);
        y->have_ev = 0;
    }
    if (!yaml_parser_parse(&y->parser, &y->ev)) {
        const char *prob = y->parser.problem ? y->parser.problem : "syntax error";
        return zi_errorf(ZI_EFORMAT, "%s: line %zu: YAML: %s", y->label,
                         (size_t)y->parser.problem_mark.line + 1, prob);
    }
    y->have_ev = 1;
    if (y->ev.type == YAML_ALIAS_EVENT)
        return zi_errorf(ZI_EFORMAT, "%s: line %zu: YAML aliases are not supported", y->label,
                         (size_t)y->ev.start_mark.line + 1);
    return ZI_OK;
}

/* A double-quoted "\0" decodes to a NUL byte, which would cut the C string short: refused
 * for the scalar just read, the key it belongs to named (NULL: the scalar is a key). */
static int zi_wcfg_no_nul(const zi_wcfg_yaml *y, const char *key)
{
    if (y->ev.type != YAML_SCALAR_EVENT ||
        strlen((const char *)y->ev.data.scalar.value) == y->ev.data.scalar.length)
        return ZI_OK;
    if (key)
        return zi_errorf(ZI_EFORMAT, "%s: line %zu: key '%s': the value holds a NUL character",
                         y->label, (size_t)y->ev.start_mark.line + 1, key);
    return zi_errorf(ZI_EFORMAT, "%s: line %zu: a key holds a NUL character", y->label,
                     (size_t)y->ev.start_mark.line + 1);
}

static int zi_wcfg_line(const zi_wcfg_yaml *y)
{
    return (int)y->ev.start_mark.line + 1;
}

static const char *zi_wcfg_scalar(const zi_wcfg_yaml *y)
{
    return (const char *)y->ev.data.scalar.value;
}

static int zi_wcfg_scalar_quoted(const zi_wcfg_yaml *y)
{
    const char *tag = (const char *)y->ev.data.scalar.tag;
    return y->ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE ||
           (tag && strcmp(tag, YAML_STR_TAG) == 0);
}

/* A plain ~, null, Null, NULL or empty scalar. */
static int zi_wcfg_scalar_null(const zi_wcfg_yaml *y)
{
    if (y->ev.type != YAML_SCALAR_EVENT || zi_wcfg_scalar_quoted(y))
        return 0;
    const char *s = zi_wcfg_scalar(y);
    return !*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

static const char *zi_wcfg_event_kind(yaml_event_type_t t)
{
    switch (t) {
    case YAML_MAPPING_START_EVENT:
        return "a mapping";
    case YAML_SEQUENCE_START_EVENT:
        return "a list";
    case YAML_SCALAR_EVENT:
        return "a scalar";
    default:
        return "something else";
    }
}

/* Scalar key -> error unless the current event is a scalar. */
static int zi_wcfg_expect_key(zi_wcfg_yaml *y, const char *parent)
{
    if (y->ev.type != YAML_SCALAR_EVENT)
        return zi_errorf(ZI_EFORMAT, "%s: line %d: %s%s: keys must be plain names, got %s",
                         y->label, zi_wcfg_line(y), parent ? "key " : "top level",
                         parent ? parent : "", zi_wcfg_event_kind(y->ev.type));
    return zi_wcfg_no_nul(y, NULL);
}

/* Rows are tracked per parse so a duplicate key is reported rather than silently won. */
typedef struct zi_wcfg_seen {
    unsigned char row[ZI_WCFG_NROWS];
    char sections[16][32];
    size_t nsections;
} zi_wcfg_seen;

static int zi_wcfg_parse_props(zi_wconfig *cfg, zi_wcfg_yaml *y)
{
    if (zi_wcfg_scalar_null(y))
        return ZI_OK;
    if (y->ev.type != YAML_MAPPING_START_EVENT)
        return zi_errorf(ZI_EFORMAT,
                         "%s: line %d: key 'kafka.properties': expected a mapping, "
                         "got %s",
                         y->label, zi_wcfg_line(y), zi_wcfg_event_kind(y->ev.type));
    /* names seen in this mapping, for duplicate detection */
    char **names = calloc(ZI_WCFG_MAX_PROPS + 1, sizeof *names);
    if (!names)
        return zi_errorf(ZI_ENOMEM, "config: out of memory");
    size_t nnames = 0;
    int rc;
    for (;;) {
        if ((rc = zi_wcfg_next(y)))
            goto done;
        if (y->ev.type == YAML_MAPPING_END_EVENT)
            break;
        if ((rc = zi_wcfg_expect_key(y, "'kafka.properties'")))
            goto done;
        const char *name = zi_wcfg_scalar(y);
        int line = zi_wcfg_line(y);
        for (size_t i = 0; i < nnames; i++)
            if (strcmp(names[i], name) == 0) {
                rc = zi_errorf(ZI_EFORMAT,
                               "%s: line %d: key 'kafka.properties.%.64s': "
                               "duplicate key",
                               y->label, line, name);
                goto done;
            }
        if (nnames == ZI_WCFG_MAX_PROPS) {
            rc = zi_errorf(ZI_EFORMAT,
                           "%s: line %d: key 'kafka.properties': more than %d "
                           "properties",
                           y->label, line, ZI_WCFG_MAX_PROPS);
            goto done;
        }
        if (!(names[nnames] = strdup(name))) {
            rc = zi_errorf(ZI_ENOMEM, "config: out of memory");
            goto done;
        }
        name = names[nnames++];
        char pkey[96];
        snprintf(pkey, sizeof pkey, "kafka.properties.%.64s", name);
        if ((rc = zi_wcfg_next(y)) || (rc = zi_wcfg_no_nul(y, pkey)))
            goto done;
        if (y->ev.type != YAML_SCALAR_EVENT || zi_wcfg_scalar_null(y)) {
            rc = zi_errorf(ZI_EFORMAT,
                           "%s: line %d: key 'kafka.properties.%.64s': expected "
                           "a value, got %s",
                           y->label, zi_wcfg_line(y), name,
                           y->ev.type == YAML_SCALAR_EVENT ? "nothing"
                                                           : zi_wcfg_event_kind(y->ev.type));
            goto done;
        }
        zi_wcfg_src src = {y->label, zi_wcfg_line(y)};
        if ((rc = zi_wcfg_prop_set(cfg, name, zi_wcfg_scalar(y), src)))
            goto done;
    }
    rc = ZI_OK;
done:
    for (size_t i = 0; i < nnames; i++)
        free(names[i]);
    free(names);
    return rc;
}

static int zi_wcfg_parse_section(zi_wconfig *cfg, zi_wcfg_yaml *y, const char *section,
                                 zi_wcfg_seen *seen)
{
    int rc;
    if (zi_wcfg_scalar_null(y))
        return ZI_OK; /* "generation:" with nothing under it */
    if (y->ev.type != YAML_MAPPING_START_EVENT)
        return zi_errorf(ZI_EFORMAT, "%s: line %d: key '%s': expected a mapping, got %s", y->label,
                         zi_wcfg_line(y), section, zi_wcfg_event_kind(y->ev.type));
    for (;;) {
        if ((rc = zi_wcfg_next(y)))
            return rc;
        if (y->ev.type == YAML_MAPPING_END_EVENT)
            return ZI_OK;
        char parent[64];
        snprintf(parent, sizeof parent, "'%s'", section);
        if ((rc = zi_wcfg_expect_key(y, parent)))
            return rc;
        char key[160];
        int kn = snprintf(key, sizeof key, "%s.%s", section, zi_wcfg_scalar(y));
        int line = zi_wcfg_line(y);
        const zi_wcfg_row *row = kn < (int)sizeof key ? zi_wcfg_find(key) : NULL;
        if (!row) {
            for (size_t i = 0; i < ZI_WCFG_NSECRETS; i++)
                if (strcmp(zi_wcfg_secrets[i].key, key) == 0)
                    return zi_errorf(ZI_EFORMAT,
                                     "%s: line %d: key '%s': secrets are read only "
                                     "from the environment (%s)",
                                     y->label, line, key, zi_wcfg_secrets[i].env);
            return zi_errorf(ZI_EFORMAT, "%s: line %d: unknown key '%.150s'", y->label, line, key);
        }
        size_t idx = (size_t)(row - zi_wcfg_rows);
        if (seen->row[idx])
            return zi_errorf(ZI_EFORMAT, "%s: line %d: key '%s': duplicate key", y->label, line,
                             key);
        seen->row[idx] = 1;
        if ((rc = zi_wcfg_next(y)) || (rc = zi_wcfg_no_nul(y, key)))
            return rc;
        if (row->type == ZI_WCFG_MAP) {
            if ((rc = zi_wcfg_parse_props(cfg, y)))
                return rc;
            continue;
        }
        if (y->ev.type != YAML_SCALAR_EVENT)
            return zi_errorf(ZI_EFORMAT, "%s: line %d: key '%s': expected a single value, got %s",
                             y->label, zi_wcfg_line(y), key, zi_wcfg_event_kind(y->ev.type));
        zi_wcfg_src src = {y->label, zi_wcfg_line(y)};
        if ((rc = zi_wcfg_set_row(cfg, row, zi_wcfg_scalar(y), zi_wcfg_scalar_quoted(y),
                                  zi_wcfg_scalar_null(y), src)))
            return rc;
    }
}

static int zi_wcfg_is_section(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < ZI_WCFG_NROWS; i++)
        if (strncmp(zi_wcfg_rows[i].key, name, n) == 0 && zi_wcfg_rows[i].key[n] == '.')
            return 1;
    return 0;
}

static int zi_wcfg_parse_root(zi_wconfig *cfg, zi_wcfg_yaml *y)
{
    int rc;
    zi_wcfg_seen seen;
    memset(&seen, 0, sizeof seen);
    if ((rc = zi_wcfg_next(y))) /* STREAM-START */
        return rc;
    if ((rc = zi_wcfg_next(y)))
        return rc;
    if (y->ev.type == YAML_STREAM_END_EVENT)
        return ZI_OK;           /* empty file: defaults */
    if ((rc = zi_wcfg_next(y))) /* after DOCUMENT-START: the root node */
        return rc;
    if (zi_wcfg_scalar_null(y)) {
        /* a document with nothing in it */
    } else if (y->ev.type != YAML_MAPPING_START_EVENT) {
        return zi_errorf(ZI_EFORMAT,
                         "%s: line %d: the configuration must be a mapping of "
                         "sections, got %s",
                         y->label, zi_wcfg_line(y), zi_wcfg_event_kind(y->ev.type));
    } else {
        for (;;) {
            if ((rc = zi_wcfg_next(y)))
                return rc;
            if (y->ev.type == YAML_MAPPING_END_EVENT)
                break;
            if ((rc = zi_wcfg_expect_key(y, NULL)))
                return rc;
            char section[32];
            const char *name = zi_wcfg_scalar(y);
            int line = zi_wcfg_line(y);
            if (strlen(name) >= sizeof section || !zi_wcfg_is_section(name))
                return zi_errorf(ZI_EFORMAT, "%s: line %d: unknown key '%.64s'", y->label, line,
                                 name);
            snprintf(section, sizeof section, "%s", name);
            for (size_t i = 0; i < seen.nsections; i++)
                if (strcmp(seen.sections[i], section) == 0)
                    return zi_errorf(ZI_EFORMAT, "%s: line %d: key '%s': duplicate section",
                                     y->label, line, section);
            if (seen.nsections < sizeof seen.sections / sizeof seen.sections[0])
                snprintf(seen.sections[seen.nsections++], sizeof seen.sections[0], "%s", section);
            if ((rc = zi_wcfg_next(y)))
                return rc;
            if ((rc = zi_wcfg_parse_section(cfg, y, section, &seen)))
                return rc;
        }
    }
    if ((rc = zi_wcfg_next(y))) /* DOCUMENT-END */
        return rc;
    if ((rc = zi_wcfg_next(y)))
        return rc;
    if (y->ev.type != YAML_STREAM_END_EVENT)
        return zi_errorf(ZI_EFORMAT, "%s: line %d: only one YAML document is allowed", y->label,
                         zi_wcfg_line(y));
    return ZI_OK;
}

int zi_wconfig_parse_buffer(zi_wconfig *cfg, const char *buf, size_t len, const char *label)
{
    if (!label)
        label = "config";
    if (len > ZI_WCFG_MAX_FILE)
        return zi_errorf(ZI_EFORMAT, "%s: larger than %u bytes", label, ZI_WCFG_MAX_FILE);
    if (memchr(buf, '\0', len))
        return zi_errorf(ZI_EFORMAT, "%s: contains a NUL byte", label);
    zi_wcfg_yaml y;
    memset(&y, 0, sizeof y);
    y.label = label;
    if (!yaml_parser_initialize(&y.parser))
        return zi_errorf(ZI_ENOMEM, "%s: cannot initialise the YAML parser", label);
    yaml_parser_set_input_string(&y.parser, (const unsigned char *)buf, len);
    int rc = zi_wcfg_parse_root(cfg, &y);
    if (y.have_ev)
        yaml_event_delete(&y.ev);
    yaml_parser_delete(&y.parser);
    return rc;
}

int zi_wconfig_parse_file(zi_wconfig *cfg, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return zi_errorf(errno == ENOENT ? ZI_ENOTFOUND : ZI_EFORMAT,
                         "config file %s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(ZI_WCFG_MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        return zi_errorf(ZI_ENOMEM, "config: out of memory");
    }
    size_t len = fread(buf, 1, ZI_WCFG_MAX_FILE + 1, f);
    int rd_err = ferror(f);
    fclose(f);
    int rc;
    if (rd_err)
        rc = zi_errorf(ZI_EFORMAT, "config file %s: read error", path);
    else if (len > ZI_WCFG_MAX_FILE)
        rc = zi_errorf(ZI_EFORMAT, "config file %s: larger than %u bytes", path, ZI_WCFG_MAX_FILE);
    else
        rc = zi_wconfig_parse_buffer(cfg, buf, len, path);
    free(buf);
    return rc;
}

/* ---- environment ---- */

/* "k1=v1,k2=v2" ('\,' and '\\' escape a comma and a backslash) merged into properties. */
static int zi_wcfg_env_props(zi_wconfig *cfg, const char *list, zi_wcfg_src src)
{
    size_t n = strlen(list);
    char *item = malloc(n + 1);
    if (!item)
        return zi_errorf(ZI_ENOMEM, "config: out of memory");
    int rc = ZI_OK;
    const char *p = list;
    while (*p && rc == ZI_OK) {
        size_t len = 0;
        while (*p && *p != ',') {
            if (*p == '\\' && (p[1] == ',' || p[1] == '\\'))
                p++;
            item[len++] = *p++;
        }
        item[len] = '\0';
        if (*p == ',')
            p++;
        /* trim surrounding blanks: "a=1, b=2" is a natural way to write it */
        char *s = item;
        while (*s == ' ' || *s == '\t')
            s++;
        char *e = s + strlen(s);
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq || eq == s) {
            rc = zi_errorf(ZI_EFORMAT,
                           "%s: key 'kafka.properties': expected k1=v1,k2=v2, got "
                           "'%.64s'",
                           src.label, s);
            break;
        }
        *eq = '\0';
        rc = zi_wcfg_prop_set(cfg, s, eq + 1, src);
    }
    free(item);
    return rc;
}

static const char *zi_wcfg_getenv(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

int zi_wconfig_apply_env(zi_wconfig *cfg, char *const *envp, zi_wconfig_warn_fn warn, void *ud)
{
    int rc;
    if (!envp)
        return ZI_OK;
    for (char *const *e = envp; *e; e++) {
        const char *var = *e;
        if (strncmp(var, "ZIMAGE_", 7) != 0)
            continue;
        const char *eq = strchr(var, '=');
        if (!eq)
            continue;
        size_t nlen = (size_t)(eq - var);
        char name[128];
        if (nlen >= sizeof name) {
            if (warn)
                warn(ud, "ignoring unknown environment variable with a very long ZIMAGE_ name");
            continue;
        }
        memcpy(name, var, nlen);
        name[nlen] = '\0';
        const char *value = eq + 1;
        char label[200];
        snprintf(label, sizeof label, "environment %s", name);
        zi_wcfg_src src = {label, 0};
        const zi_wcfg_row *row = NULL;
        for (size_t i = 0; i < ZI_WCFG_NROWS; i++)
            if (strcmp(zi_wcfg_rows[i].env, name) == 0)
                row = &zi_wcfg_rows[i];
        int secret = 0;
        for (size_t i = 0; i < ZI_WCFG_NSECRETS; i++)
            if (strcmp(zi_wcfg_secrets[i].env, name) == 0)
                secret = 1;
        if (secret)
            continue; /* below, with precedence over the AWS_* fallbacks */
        if (!row && strncmp(name, "ZIMAGE_FAULT_", 13) == 0) {
            /* the worker's test-only fault hooks (docs/worker.md), not config */
            if (warn) {
                char msg[256];
                snprintf(msg, sizeof msg,
                         "%.64s is a test fault hook of the worker: never set it in production",
                         name);
                warn(ud, msg);
            }
            continue;
        }
        if (!row) {
            if (warn) {
                char msg[256];
                snprintf(msg, sizeof msg, "ignoring unknown environment variable %s", name);
                warn(ud, msg);
            }
            continue;
        }
        /* the configuration is YAML text (--print-config must read back): no raw bytes */
        if (!zi_job_utf8_valid(value, strlen(value)))
            return zi_errorf(ZI_EFORMAT, "environment %s: not valid UTF-8", name);
        if (row->type == ZI_WCFG_MAP)
            rc = zi_wcfg_env_props(cfg, value, src);
        else
            rc = zi_wcfg_set_row(cfg, row, value, 0, 0, src);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < ZI_WCFG_NSECRETS; i++) {
        const zi_wcfg_secret *s = &zi_wcfg_secrets[i];
        const char *v = zi_wcfg_getenv(envp, s->env);
        if (!v && s->fallback)
            v = zi_wcfg_getenv(envp, s->fallback);
        if (!v)
            continue;
        if (strlen(v) > ZI_WCFG_MAX_STRING)
            return zi_errorf(ZI_EFORMAT, "environment %s: longer than %d bytes", s->env,
                             ZI_WCFG_MAX_STRING);
        char **slot = zi_wcfg_str(cfg, s->offset);
        if (*slot)
            explicit_bzero(*slot, strlen(*slot));
        if ((rc = zi_wcfg_set_str(slot, v)))
            return rc;
    }
    return ZI_OK;
}

/* ---- validation ---- */

static int zi_wcfg_endpoint_ok(const char *s)
{
    return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

int zi_wconfig_validate(const zi_wconfig *cfg)
{
    const char *w = "configuration";
    if (cfg->gen_min_side % 16 || cfg->gen_max_side % 16)
        return zi_errorf(ZI_EFORMAT, "%s: key 'generation.%s': must be a multiple of 16", w,
                         cfg->gen_min_side % 16 ? "min_side" : "max_side");
    if (cfg->gen_min_side > cfg->gen_max_side)
        return zi_errorf(ZI_EFORMAT,
                         "%s: key 'generation.min_side': %d is larger than "
                         "generation.max_side %d",
                         w, cfg->gen_min_side, cfg->gen_max_side);
    if ((int64_t)cfg->gen_min_side * cfg->gen_min_side > cfg->gen_max_pixels)
        return zi_errorf(ZI_EFORMAT,
                         "%s: key 'generation.max_pixels': %lld is below "
                         "min_side^2",
                         w, (long long)cfg->gen_max_pixels);
    const char *side_key[2] = {"generation.width", "generation.height"};
    int side[2] = {cfg->gen_width, cfg->gen_height};
    for (int i = 0; i < 2; i++)
        if (side[i] % 16 || side[i] < cfg->gen_min_side || side[i] > cfg->gen_max_side)
            return zi_errorf(ZI_EFORMAT,
                             "%s: key '%s': %d must be a multiple of 16 in "
                             "[generation.min_side %d, generation.max_side %d]",
                             w, side_key[i], side[i], cfg->gen_min_side, cfg->gen_max_side);
    if ((int64_t)cfg->gen_width * cfg->gen_height > cfg->gen_max_pixels)
        return zi_errorf(ZI_EFORMAT,
                         "%s: key 'generation.width': %dx%d exceeds "
                         "generation.max_pixels %lld",
                         w, cfg->gen_width, cfg->gen_height, (long long)cfg->gen_max_pixels);
    if (cfg->gen_steps > cfg->gen_max_steps)
        return zi_errorf(ZI_EFORMAT,
                         "%s: key 'generation.steps': %d exceeds "
                         "generation.max_steps %d",
                         w, cfg->gen_steps, cfg->gen_max_steps);
    zi_budget_kind bk;
    uint64_t bb;
    if (zi_weight_budget_parse(cfg->device_weight_budget_mb, &bk, &bb) != ZI_OK)
        return zi_error_prefix(ZI_EFORMAT, "%s: key 'device.weight_budget_mb'", w);
    zi_redis_url url;
    if (zi_redis_url_parse(cfg->redis_url, &url) != ZI_OK) {
        explicit_bzero(&url, sizeof url);
        return zi_error_prefix(ZI_EFORMAT, "%s: key 'redis.url'", w);
    }
    explicit_bzero(&url, sizeof url);
    for (const char *p = cfg->redis_key_prefix; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7F)
            return zi_errorf(ZI_EFORMAT,
                             "%s: key 'redis.key_prefix': no blanks or control "
                             "characters allowed",
                             w);
    if (!zi_wcfg_endpoint_ok(cfg->s3_endpoint))
        return zi_errorf(ZI_EFORMAT,
                         "%s: key 's3.endpoint': '%.64s' must start with http:// or "
                         "https://",
                         w, cfg->s3_endpoint);
    if (cfg->s3_public_endpoint[0] && !zi_wcfg_endpoint_ok(cfg->s3_public_endpoint))
        return zi_errorf(ZI_EFORMAT,
                         "%s: key 's3.public_endpoint': '%.64s' must start with "
                         "http:// or https://",
                         w, cfg->s3_public_endpoint);
    if (zi_s3_key_template_check(cfg->s3_key_template) != ZI_OK)
        return zi_error_prefix(ZI_EFORMAT, "%s: key 's3.key_template'", w);
    if (!cfg->worker_id[0])
        return zi_errorf(ZI_EFORMAT, "%s: key 'worker.id': must not be empty", w);
    for (const char *p = cfg->worker_id; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-' || c == ':';
        if (!ok)
            return zi_errorf(ZI_EFORMAT,
                             "%s: key 'worker.id': '%.64s' may hold only "
                             "[A-Za-z0-9._:-]",
                             w, cfg->worker_id);
    }
    char host[256];
    int port;
    if (zi_http_parse_listen(cfg->worker_http_listen, host, sizeof host, &port) != ZI_OK)
        return zi_error_prefix(ZI_EFORMAT, "%s: key 'worker.http_listen'", w);
    return ZI_OK;
}

int zi_wconfig_load(zi_wconfig *cfg, const char *path, zi_wconfig_warn_fn warn, void *ud)
{
    int rc = zi_wconfig_init_defaults(cfg);
    if (rc)
        return rc;
    if (path && (rc = zi_wconfig_parse_file(cfg, path)))
        goto err;
    if ((rc = zi_wconfig_apply_env(cfg, environ, warn, ud)))
        goto err;
    /* an explicit empty worker.id means "the host name", as the default does */
    if (!cfg->worker_id[0] && (rc = zi_wcfg_hostname(cfg)))
        goto err;
    if ((rc = zi_wconfig_validate(cfg)))
        goto err;
    return ZI_OK;
err:
    zi_wconfig_free(cfg);
    return rc;
}

const char *zi_wconfig_kafka_property(const zi_wconfig *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->kafka_properties_n; i++)
        if (strcmp(cfg->kafka_properties[i].key, key) == 0)
            return cfg->kafka_properties[i].value;
    return NULL;
}

/* ---- dump ---- */

/* Property names that carry secrets (librdkafka: sasl.password, ssl.key.password, ...). */
static int zi_wcfg_prop_secret(const char *key)
{
    return strstr(key, "password") || strstr(key, "secret") || strstr(key, "sasl.jaas") ||
           strstr(key, "token") || strstr(key, "ssl.key.pem") || strstr(key, "credentials");
}

/* A double-quoted YAML scalar that libyaml reads back to the same string: characters YAML
 * does not allow in a stream (C0/C1 controls, DEL, U+FEFF, U+FFFE/U+FFFF) and the line
 * breaks U+2028/U+2029 (which a quoted scalar would fold) are escaped by code point. Values
 * are UTF-8 (YAML is; environment values are checked); a byte that is not would be shown
 * as \xNN. */
static void zi_wcfg_yaml_quote(FILE *out, const char *s)
{
    fputc('"', out);
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)strlen(s);
    while (left > 0) {
        utf8proc_int32_t cp = -1;
        utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
        if (n <= 0 || cp < 0) { /* not UTF-8 */
            fprintf(out, "\\x%02x", *p);
            n = 1;
        } else if (cp == '"' || cp == '\\') {
            fprintf(out, "\\%c", (char)cp);
        } else if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
            fprintf(out, "\\x%02x", (unsigned)cp);
        } else if (cp == 0x2028 || cp == 0x2029 || cp == 0xFEFF || cp == 0xFFFE || cp == 0xFFFF) {
            fprintf(out, "\\u%04x", (unsigned)cp);
        } else {
            fwrite(p, 1, (size_t)n, out);
        }
        p += n;
        left -= n;
    }
    fputc('"', out);
}

int zi_wconfig_dump(const zi_wconfig *cfg, FILE *out)
{
    char section[32] = "";
    fprintf(out, "# effective zimage worker configuration (secrets redacted)\n");
    for (size_t i = 0; i < ZI_WCFG_NROWS; i++) {
        const zi_wcfg_row *row = &zi_wcfg_rows[i];
        const char *dot = strchr(row->key, '.');
        size_t sl = (size_t)(dot - row->key);
        if (strlen(section) != sl || strncmp(section, row->key, sl) != 0) {
            snprintf(section, sizeof section, "%.*s", (int)sl, row->key);
            fprintf(out, "%s:\n", section);
        }
        fprintf(out, "  %s: ", dot + 1);
        const void *field = (const char *)cfg + row->offset;
        switch (row->type) {
        case ZI_WCFG_STRING:
        case ZI_WCFG_ENUM: {
            const char *s = *(char *const *)field;
            if (row->offset == ZI_WCFG_OFF(redis_url)) {
                char red[ZI_WCFG_MAX_STRING + 64];
                zi_redis_url_redact(s, red, sizeof red);
                zi_wcfg_yaml_quote(out, red);
            } else {
                zi_wcfg_yaml_quote(out, s ? s : "");
            }
            break;
        }
        case ZI_WCFG_INT:
        case ZI_WCFG_BOOL:
            if (row->type == ZI_WCFG_BOOL)
                fprintf(out, "%s", *(const int *)field ? "true" : "false");
            else
                fprintf(out, "%d", *(const int *)field);
            break;
        case ZI_WCFG_I64:
            fprintf(out, "%lld", (long long)*(const int64_t *)field);
            break;
        case ZI_WCFG_DOUBLE:
            fprintf(out, "%.17g", *(const double *)field);
            break;
        case ZI_WCFG_MAP:
            if (cfg->kafka_properties_n == 0)
                fprintf(out, "{}");
            for (size_t k = 0; k < cfg->kafka_properties_n; k++) {
                fprintf(out, "\n    ");
                zi_wcfg_yaml_quote(out, cfg->kafka_properties[k].key);
                fprintf(out, ": ");
                zi_wcfg_yaml_quote(out, zi_wcfg_prop_secret(cfg->kafka_properties[k].key)
                                            ? "<redacted>"
                                            : cfg->kafka_properties[k].value);
            }
            break;
        }
        fputc('\n', out);
    }
    fprintf(out, "# secrets (environment only):");
    for (size_t i = 0; i < ZI_WCFG_NSECRETS; i++) {
        const char *s = *(char *const *)((const char *)cfg + zi_wcfg_secrets[i].offset);
        fprintf(out, " %s=%s", zi_wcfg_secrets[i].env, s && *s ? "<redacted>" : "(unset)");
    }
    fputc('\n', out);
    return ferror(out) ? zi_errorf(ZI_EIO, "cannot write the configuration") : ZI_OK;
}

zi_rstatus_config zi_wconfig_rstatus(const zi_wconfig *cfg, const char *worker_id,
                                     int connect_timeout_ms, int command_timeout_ms)
{
    return (zi_rstatus_config){
        .url = cfg->redis_url,
        .password = cfg->redis_password,
        .key_prefix = cfg->redis_key_prefix,
        .worker_id = worker_id,
        .job_ttl_s = cfg->redis_job_ttl_s,
        .heartbeat_s = cfg->worker_heartbeat_s,
        .connect_timeout_ms = connect_timeout_ms,
        .command_timeout_ms = command_timeout_ms,
    };
}

zi_s3_config zi_wconfig_s3(const zi_wconfig *cfg)
{
    return (zi_s3_config){
        .endpoint = cfg->s3_endpoint,
        .public_endpoint = cfg->s3_public_endpoint,
        .region = cfg->s3_region,
        .bucket = cfg->s3_bucket,
        .path_style = cfg->s3_path_style,
        .access_key = cfg->s3_access_key,
        .secret_key = cfg->s3_secret_key,
        .session_token = cfg->s3_session_token,
        .retry_s = cfg->s3_retry_s,
    };
}
