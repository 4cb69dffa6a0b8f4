/*
 * cmd_dlq.c - `zimage dlq list|replay`: inspect the dead-letter queue and re-enqueue jobs.
 *
 * Reading: the DLQ topic (kafka.dlq_topic) is read with assign() over all its partitions,
 * from a start offset up to the high watermark taken when the command starts, so the
 * command never waits for messages that are not there (and never chases the messages a
 * running worker adds meanwhile). A partition is finished at its watermark or at
 * partition EOF; --timeout-ms bounds the whole read.
 *
 * Positions: `replay` remembers how far it got as committed offsets of its own consumer
 * group, `<kafka.group_id>-dlq-replay` (with --error-code C: `<kafka.group_id>-dlq-replay-C`,
 * so a replay of one error code never consumes the position of another), and starts
 * there next time: a message is replayed once per group. --from-beginning ignores the
 * position. `list` and `--dry-run` read but never commit; `list` always starts at the
 * beginning.
 *
 * Replaying one message (matching --error-code, when given):
 *   1. job id = the JSON `job_id` of the value when valid, else the key when it is a valid
 *      job id, else none (the message is re-produced but nothing is written to Redis);
 *   2. a job whose hash says `succeeded` is skipped (it was already redone);
 *   3. Redis first (before the job can be picked up again), in one Lua script with step 2:
 *      HDEL the final-state and progress fields (error_code, error, step, progress,
 *      started_at, finished_at, duration_ms), HSET status `queued`, worker "", attempt 0,
 *      queued_at, replayed_from, + a `queued` event (so the worker's attempt counter
 *      starts over, as after `zimage submit`);
 *   4. the original key and value go to kafka.topic, with the original headers except the
 *      zimage-* ones, plus `zimage-replayed-from: <dlq topic>/<partition>/<offset>`;
 *      the delivery report is awaited before the next message.
 * Then the group's offsets are committed for what was handled (also after a failure, so
 * a rerun goes on from there).
 *
 * Exit status: 0 done; 2 usage or configuration error; 1 Kafka or Redis failure, or the
 * DLQ could not be read to its end within --timeout-ms (what was replayed stays replayed).
 * Reference: docs/contract.md ("Messages the worker produces"); librdkafka 2.0.2 rdkafka.h.
 */
#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>
#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "job.h"
#include "rstatus.h"
#include "top.h"
#include "wconfig.h"
#include "zi_err.h"

#define ZI_DLQ_DEFAULT_TIMEOUT_MS 30000
#define ZI_DLQ_META_TIMEOUT_MS 10000
#define ZI_DLQ_SHOW_MAX 1024 /* bytes of a key or error shown in a line */
#define ZI_DLQ_JSON_MAX (64u << 20)

static volatile sig_atomic_t zi_dlq_stop;

static void zi_dlq_on_signal(int sig)
{
    (void)sig;
    zi_dlq_stop = 1;
}

typedef struct zi_dlq_opts {
    int replay; /* 0: list */
    int dry_run;
    int from_beginning;
    const char *config;
    const char *error_code; /* NULL: all */
    long limit;             /* < 0: none */
    long timeout_ms;
} zi_dlq_opts;

/* Per-partition reading state. */
typedef struct zi_dlq_part {
    int32_t id;
    int64_t start; /* first offset read */
    int64_t high;  /* high watermark at start: read [start, high) */
    int64_t next;  /* offset after the last message handled (-1: none handled) */
    int done;
} zi_dlq_part;

typedef struct zi_dlq_counts {
    long read;      /* messages read from the DLQ */
    long matched;   /* ... matching --error-code */
    long replayed;  /* ... replayed (or listed / would be replayed) */
    long succeeded; /* ... skipped: job already succeeded */
} zi_dlq_counts;

typedef struct zi_dlq_delivery {
    int done;
    rd_kafka_resp_err_t err;
} zi_dlq_delivery;

static void zi_dlq_usage(FILE *f)
{
    fprintf(f,
            "usage: zimage dlq list   --config FILE [--error-code CODE] [--limit N]\n"
            "                         [--timeout-ms MS]\n"
            "       zimage dlq replay --config FILE [--error-code CODE] [--dry-run] [--limit N]\n"
            "                         [--timeout-ms MS] [--from-beginning]\n"
            "\n"
            "list    prints every message of kafka.dlq_topic, one line each: its place in the\n"
            "        DLQ, key, error code, attempts, source, error.\n"
            "replay  re-enqueues the messages (those with zimage-error-code CODE when given) to\n"
            "        kafka.topic with their original key and value, and resets each job's\n"
            "        status to queued and its attempt counter to 0 in Redis, so it runs again.\n"
            "        Jobs whose status is already succeeded are skipped. Progress is kept as\n"
            "        the offsets of consumer group <kafka.group_id>-dlq-replay[-CODE]: a\n"
            "        message is replayed once.\n"
            "\n"
            "options:\n"
            "  --config FILE      worker configuration (kafka.*, redis.*)\n"
            "  --error-code CODE  only messages with this zimage-error-code\n"
            "  --dry-run          list what would be replayed; change nothing\n"
            "  --limit N          at most N messages listed or replayed\n"
            "  --timeout-ms MS    give up reading the DLQ after MS ms (default %d)\n"
            "  --from-beginning   replay: ignore the stored position, read the whole DLQ\n"
            "  --help             show this help\n"
            "\n"
            "Prints a summary: replayed N of M messages (M = messages read). Exit 0 on\n"
            "success, 2 on a usage or configuration error, 1 on a Kafka or Redis failure or a\n"
            "timeout.\n",
            ZI_DLQ_DEFAULT_TIMEOUT_MS);
}

/* Parses argv (argv[0] = "dlq", argv[1] = list|replay). Returns -1 to go on, else the
 * exit status. */
static int zi_dlq_parse_args(int argc, char **argv, zi_dlq_opts *o)
{
    memset(o, 0, sizeof *o);
    o->limit = -1;
    o->timeout_ms = ZI_DLQ_DEFAULT_TIMEOUT_MS;
    if (argc < 2) {
        return zi_cli_usage_error("dlq", "dlq: missing subcommand: list or replay");
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        zi_dlq_usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "replay") == 0) {
        o->replay = 1;
    } else if (strcmp(argv[1], "list") != 0) {
        return zi_cli_usage_error("dlq", "dlq: unknown subcommand '%s': want list or replay",
                                  argv[1]);
    }
    static const char *const opts[] = {"--config", "--error-code", "--limit", "--timeout-ms"};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int r;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            zi_dlq_usage(stdout);
            return 0;
        } else if (o->replay && strcmp(a, "--dry-run") == 0) {
            o->dry_run = 1;
        } else if (o->replay && strcmp(a, "--from-beginning") == 0) {
            o->from_beginning = 1;
        } else if ((r = zi_cli_opt_of(argc, argv, &i, opts, sizeof opts / sizeof opts[0], &a,
                                      &v)) != 0) {
            if (r < 0) {
                return zi_cli_usage_error("dlq", "%s needs a value", a);
            }
            if (strcmp(a, "--config") == 0) {
                o->config = v;
            } else if (strcmp(a, "--error-code") == 0) {
                size_t n = strlen(v);
                if (n == 0 || n > 64 || strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789_") != n) {
                    return zi_cli_usage_error(
                        "dlq", "--error-code: '%s' is not an error code: [a-z0-9_], e.g. s3_auth",
                        v);
                }
                o->error_code = v;
            } else if (strcmp(a, "--limit") == 0) {
                if (zi_cli_parse_long(v, 1, 1000000000L, &o->limit) != 0) {
                    return zi_cli_usage_error("dlq", "--limit: '%s' is not an integer >= 1", v);
                }
            } else if (zi_cli_parse_long(v, 1, 3600000L, &o->timeout_ms) != 0) {
                return zi_cli_usage_error("dlq", "--timeout-ms: '%s' is not in 1..3600000", v);
            }
        } else {
            return zi_cli_usage_error("dlq", "dlq %s: unknown option '%s'", argv[1], a);
        }
    }
    if (!o->config) {
        return zi_cli_usage_error("dlq", "dlq %s: --config FILE is required", argv[1]);
    }
    if (o->error_code) {
        int known = 0;
        for (size_t i = 0; i < ZI_JOB_N_ERROR_CODES; i++)
            known |= strcmp(o->error_code, zi_job_error_codes[i]) == 0;
        if (!known)
            fprintf(stderr,
                    "zimage: warning: --error-code %s is not one of the documented "
                    "error codes\n",
                    o->error_code);
    }
    return -1;
}

static void zi_dlq_warn(void *ud, const char *msg)
{
    (void)ud;
    fprintf(stderr, "zimage: warning: %s\n", msg);
}

/* ---- Kafka ---- */

static void zi_dlq_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    zi_dlq_delivery *d = m->_private;
    if (d) {
        d->err = m->err;
        d->done = 1;
    }
}

/* librdkafka's own log: only critical lines. Connection failures are retried inside
 * librdkafka and reach the user as the one error line of the call that gave up. */
static void zi_dlq_on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level <= 2)
        fprintf(stderr, "zimage: kafka: %s: %s\n", fac, buf);
}

static int zi_dlq_set(rd_kafka_conf_t *conf, const char *k, const char *v, int from_props)
{
    char err[512];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK)
        return zi_errorf(ZI_EINVAL, "%s%s: %s", from_props ? "kafka.properties." : "kafka ", k,
                         err);
    return ZI_OK;
}

/* A configuration with bootstrap.servers and kafka.properties passed through; then the
 * given overrides (which the command relies on) unless `soft`, where a property wins. */
static int zi_dlq_conf(const zi_wconfig *cfg, const char *const *kv, size_t nkv, int soft,
                       rd_kafka_conf_t **out)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int rc = zi_dlq_set(conf, "bootstrap.servers", cfg->kafka_bootstrap_servers, 0);
    if (rc == ZI_OK)
        rc = zi_dlq_set(conf, "client.id", "zimage-dlq", 0);
    for (size_t i = 0; rc == ZI_OK && i < cfg->kafka_properties_n; i++)
        rc = zi_dlq_set(conf, cfg->kafka_properties[i].key, cfg->kafka_properties[i].value, 1);
    for (size_t i = 0; rc == ZI_OK && i + 1 < nkv; i += 2) {
        if (soft && zi_wconfig_kafka_property(cfg, kv[i]))
            continue;
        rc = zi_dlq_set(conf, kv[i], kv[i + 1], 0);
    }
    if (rc != ZI_OK) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    rd_kafka_conf_set_log_cb(conf, zi_dlq_on_log);
    *out = conf;
    return ZI_OK;
}

static int zi_dlq_consumer_new(const zi_wconfig *cfg, const char *group, rd_kafka_t **out)
{
    const char *kv[] = {"group.id",
                        group,
                        "enable.auto.commit",
                        "false",
                        "enable.auto.offset.store",
                        "false",
                        "enable.partition.eof",
                        "true",
                        "auto.offset.reset",
                        "earliest"};
    rd_kafka_conf_t *conf = NULL;
    int rc = zi_dlq_conf(cfg, kv, sizeof kv / sizeof kv[0], 0, &conf);
    if (rc != ZI_OK)
        return rc;
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return zi_errorf(ZI_EINVAL, "kafka consumer: %s", err);
    }
    /* conf is owned by rk now */
    *out = rk;
    return ZI_OK;
}

static int zi_dlq_producer_new(const zi_wconfig *cfg, rd_kafka_t **out)
{
    /* a DLQ copy may be as large as kafka.max_message_bytes plus headers */
    char maxb[32];
    int64_t need = cfg->kafka_max_message_bytes + 65536;
    snprintf(maxb, sizeof maxb, "%" PRId64, need > 1000000 ? need : 1000000);
    const char *kv[] = {"acks",
                        "all",
                        "enable.idempotence",
                        "true",
                        "message.timeout.ms",
                        "30000",
                        "message.max.bytes",
                        maxb};
    rd_kafka_conf_t *conf = NULL;
    int rc = zi_dlq_conf(cfg, kv, sizeof kv / sizeof kv[0], 1, &conf);
    if (rc != ZI_OK)
        return rc;
    rd_kafka_conf_set_dr_msg_cb(conf, zi_dlq_on_delivery);
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return zi_errorf(ZI_EINVAL, "kafka producer: %s", err);
    }
    *out = rk;
    return ZI_OK;
}

/* Partitions of topic with their watermarks. ZI_ENOTFOUND when the topic does not exist. */
static int zi_dlq_partitions(rd_kafka_t *rk, const char *topic, int tmo, zi_dlq_part **out,
                             size_t *n)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt)
        return zi_errorf(ZI_EINVAL, "kafka topic %s: %s", topic,
                         rd_kafka_err2str(rd_kafka_last_error()));
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, tmo);
    rd_kafka_topic_destroy(rkt);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return zi_errorf(ZI_ETRANSIENT, "kafka metadata for %s: %s", topic, rd_kafka_err2str(err));
    int rc = ZI_OK;
    const struct rd_kafka_metadata_topic *t = NULL;
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, topic) == 0)
            t = &md->topics[i];
    if (!t || t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || t->partition_cnt == 0) {
        rc = zi_errorf(ZI_ENOTFOUND, "kafka topic %s does not exist", topic);
    } else if (t->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = zi_errorf(ZI_ETRANSIENT, "kafka metadata for %s: %s", topic, rd_kafka_err2str(t->err));
    } else {
        *n = (size_t)t->partition_cnt;
        *out = calloc(*n, sizeof **out);
        if (!*out)
            rc = zi_errorf(ZI_ENOMEM, "out of memory");
        for (size_t i = 0; rc == ZI_OK && i < *n; i++) {
            zi_dlq_part *p = &(*out)[i];
            p->id = t->partitions[i].id;
            p->next = -1;
            int64_t lo = 0, hi = 0;
            err = rd_kafka_query_watermark_offsets(rk, topic, p->id, &lo, &hi, tmo);
            if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
                rc = zi_errorf(ZI_ETRANSIENT, "kafka watermarks of %s/%" PRId32 ": %s", topic,
                               p->id, rd_kafka_err2str(err));
            p->start = lo;
            p->high = hi;
        }
    }
    rd_kafka_metadata_destroy(md);
    return rc;
}

/* Moves each partition's start to the group's committed offset (when there is one). */
static int zi_dlq_positions(rd_kafka_t *rk, const char *topic, int tmo, zi_dlq_part *parts,
                            size_t n)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(l, topic, parts[i].id);
    rd_kafka_resp_err_t err = rd_kafka_committed(rk, l, tmo);
    int rc = ZI_OK;
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = zi_errorf(ZI_ETRANSIENT, "kafka: reading the replay position: %s",
                       rd_kafka_err2str(err));
    } else {
        for (int i = 0; i < l->cnt; i++) {
            const rd_kafka_topic_partition_t *tp = &l->elems[i];
            for (size_t j = 0; j < n; j++)
                /* a committed offset below the low watermark was deleted by retention */
                if (parts[j].id == tp->partition && tp->err == RD_KAFKA_RESP_ERR_NO_ERROR &&
                    tp->offset > parts[j].start)
                    parts[j].start = tp->offset;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

/* Commits next offsets of the partitions where something was handled. */
static int zi_dlq_commit(rd_kafka_t *rk, const char *topic, const zi_dlq_part *parts, size_t n)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        if (parts[i].next >= 0)
            rd_kafka_topic_partition_list_add(l, topic, parts[i].id)->offset = parts[i].next;
    int rc = ZI_OK;
    if (l->cnt > 0) {
        rd_kafka_resp_err_t err = rd_kafka_commit(rk, l, 0);
        for (int i = 0; err == RD_KAFKA_RESP_ERR_NO_ERROR && i < l->cnt; i++)
            err = l->elems[i].err;
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
            rc = zi_errorf(ZI_ETRANSIENT, "kafka: committing the replay position: %s",
                           rd_kafka_err2str(err));
    }
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

/* ---- one message ---- */

/* A header's value as a printable string in out ("" when absent). */
static void zi_dlq_header(rd_kafka_headers_t *h, const char *name, char *out, size_t cap)
{
    const void *v = NULL;
    size_t n = 0;
    out[0] = '\0';
    if (!h || rd_kafka_header_get_last(h, name, &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR || !v)
        return;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        unsigned char c = ((const unsigned char *)v)[i];
        out[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    out[o] = '\0';
}

/* Bytes as a printable one-line string ("(none)" for NULL). */
static void zi_dlq_show(const void *p, size_t n, char *out, size_t cap)
{
    if (!p) {
        snprintf(out, cap, "(none)");
        return;
    }
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        unsigned char c = ((const unsigned char *)p)[i];
        out[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    out[o] = '\0';
}

/* The job id of a DLQ message: the value's JSON job_id when valid, else the key when it is
 * a valid job id. out = "" when neither. */
static void zi_dlq_job_id(const rd_kafka_message_t *m, char out[ZI_JOB_ID_MAX + 1])
{
    out[0] = '\0';
    if (m->payload && m->len > 0 && m->len <= ZI_DLQ_JSON_MAX) {
        cJSON *j = cJSON_ParseWithLength(m->payload, m->len);
        const cJSON *id = j ? cJSON_GetObjectItemCaseSensitive(j, "job_id") : NULL;
        if (cJSON_IsString(id) && zi_job_id_valid(id->valuestring))
            snprintf(out, ZI_JOB_ID_MAX + 1, "%s", id->valuestring);
        cJSON_Delete(j);
        if (out[0])
            return;
    }
    if (m->key && m->key_len > 0 && m->key_len <= ZI_JOB_ID_MAX) {
        char k[ZI_JOB_ID_MAX + 1];
        memcpy(k, m->key, m->key_len);
        k[m->key_len] = '\0';
        if (strlen(k) == m->key_len && zi_job_id_valid(k))
            memcpy(out, k, m->key_len + 1);
    }
}

/* Status of the job in Redis ("" when there is no hash). */
static int zi_dlq_job_status(zi_rstatus *rs, const char *id, char *out, size_t cap)
{
    int rc = zi_rstatus_job_field(rs, id, "status", out, cap);
    if (rc == ZI_ENOTFOUND) {
        out[0] = '\0';
        return ZI_OK;
    }
    return rc;
}

/* Step 2 and 3 of the header comment, atomically: a succeeded job is left alone (returns
 * 0); otherwise the final-state and progress fields go, and the job is queued again with
 * attempt 0 (returns 1). Same writes as `zimage submit`'s queued record, plus
 * replayed_from. */
static const char zi_dlq_reset_lua[] =
    "if redis.call('HGET', KEYS[1], 'status') == 'succeeded' then return 0 end\n"
    "redis.call('HDEL', KEYS[1], 'error_code', 'error', 'step', 'progress', 'started_at',\n"
    "           'finished_at', 'duration_ms')\n"
    "redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'attempt', '0',\n"
    "           'queued_at', ARGV[2], 'replayed_from', ARGV[3])\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', 'job_id', ARGV[4],\n"
    "           'status', 'queued', 'worker', '')\n"
    "return 1\n";

static int zi_dlq_reset_job(zi_rstatus *rs, const zi_wconfig *cfg, const char *id,
                            const char *coords, int *reset)
{
    char kjob[512], kevents[512], ttl[32], now[32];
    int rc = zi_rstatus_key(rs, "job:", id, kjob, sizeof kjob);
    if (rc == ZI_OK)
        rc = zi_rstatus_key(rs, "events", "", kevents, sizeof kevents);
    if (rc != ZI_OK)
        return rc;
    snprintf(ttl, sizeof ttl, "%" PRId64, cfg->redis_job_ttl_s);
    snprintf(now, sizeof now, "%" PRId64, zi_rstatus_now_ms());
    const char *argv[] = {"EVAL", zi_dlq_reset_lua, "2", kjob, kevents, ttl, now, coords, id};
    void *reply = NULL;
    rc = zi_rstatus_command(rs, (int)(sizeof argv / sizeof argv[0]), argv, &reply);
    if (rc != ZI_OK)
        return rc;
    const redisReply *r = reply;
    if (r->type == REDIS_REPLY_INTEGER) {
        *reset = r->integer == 1;
    } else {
        rc = zi_errorf(ZI_EIO, "unexpected reply to the reset script: %.200s",
                       r->type == REDIS_REPLY_ERROR && r->str ? r->str : "not an integer");
    }
    zi_rstatus_reply_free(reply);
    return rc;
}

/* Produces key/value to topic with the non-zimage headers of m plus zimage-replayed-from,
 * and waits for the delivery report (bounded by message.timeout.ms). */
static int zi_dlq_produce(rd_kafka_t *prod, const char *topic, rd_kafka_message_t *m,
                          const char *coords)
{
    rd_kafka_headers_t *in = NULL, *out = rd_kafka_headers_new(8);
    if (rd_kafka_message_headers(m, &in) == RD_KAFKA_RESP_ERR_NO_ERROR && in) {
        const char *name;
        const void *v;
        size_t n;
        for (size_t i = 0;
             rd_kafka_header_get_all(in, i, &name, &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
            if (strncmp(name, "zimage-", 7) != 0)
                rd_kafka_header_add(out, name, -1, v, (ssize_t)n);
    }
    rd_kafka_header_add(out, "zimage-replayed-from", -1, coords, -1);
    zi_dlq_delivery d = {0};
    rd_kafka_resp_err_t err = rd_kafka_producev(
        prod, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(m->key, m->key_len),
        RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(out), RD_KAFKA_V_OPAQUE(&d), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(out); /* not taken over when producev fails */
        return zi_errorf(ZI_EIO, "kafka: producing to %s: %s", topic, rd_kafka_err2str(err));
    }
    /* the report always comes: delivered, or failed after message.timeout.ms */
    while (!d.done)
        rd_kafka_poll(prod, 100);
    if (d.err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return zi_errorf(ZI_EIO, "kafka: delivering to %s: %s", topic, rd_kafka_err2str(d.err));
    return ZI_OK;
}

typedef struct zi_dlq_run {
    const zi_dlq_opts *o;
    const zi_wconfig *cfg;
    zi_rstatus *rs;   /* NULL for list */
    rd_kafka_t *prod; /* NULL for list and --dry-run */
    zi_dlq_counts n;
} zi_dlq_run;

/* Handles one DLQ message. ZI_OK, or a failure that stops the run (the message is then
 * not counted as handled). */
static int zi_dlq_handle(zi_dlq_run *r, rd_kafka_message_t *m)
{
    const char *topic = rd_kafka_topic_name(m->rkt);
    char coords[400], code[128], error[ZI_DLQ_SHOW_MAX], source[400], attempts[32],
        key[ZI_DLQ_SHOW_MAX], id[ZI_JOB_ID_MAX + 1], status[64];
    snprintf(coords, sizeof coords, "%s/%" PRId32 "/%" PRId64, topic, m->partition, m->offset);
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
        h = NULL;
    zi_dlq_header(h, "zimage-error-code", code, sizeof code);
    zi_dlq_header(h, "zimage-error", error, sizeof error);
    zi_dlq_header(h, "zimage-source", source, sizeof source);
    zi_dlq_header(h, "zimage-attempts", attempts, sizeof attempts);
    zi_dlq_show(m->key, m->key_len, key, sizeof key);

    r->n.read++;
    if (r->o->error_code && strcmp(code, r->o->error_code) != 0)
        return ZI_OK;
    r->n.matched++;

    zi_dlq_job_id(m, id);
    if (r->rs && id[0] && !r->prod) {
        /* --dry-run: the same check the reset script makes */
        int rc = zi_dlq_job_status(r->rs, id, status, sizeof status);
        if (rc != ZI_OK)
            return zi_error_prefix(rc, "redis: status of job %s", id);
        if (strcmp(status, "succeeded") == 0) {
            r->n.succeeded++;
            return ZI_OK;
        }
    }
    if (r->prod) {
        if (r->rs && id[0]) {
            int reset = 0;
            int rc = zi_dlq_reset_job(r->rs, r->cfg, id, coords, &reset);
            if (rc != ZI_OK)
                return zi_error_prefix(rc, "redis: resetting job %s", id);
            if (!reset) {
                r->n.succeeded++;
                printf("skipped %s key=%s: job %s already succeeded\n", coords, key, id);
                return ZI_OK;
            }
        }
        int rc = zi_dlq_produce(r->prod, r->cfg->kafka_topic, m, coords);
        if (rc != ZI_OK)
            return rc;
    }
    r->n.replayed++;
    printf("%s%s key=%s error_code=%s attempts=%s source=%s error=%s\n", r->prod ? "replayed " : "",
           coords, key, code[0] ? code : "-", attempts[0] ? attempts : "-",
           source[0] ? source : "-", error[0] ? error : "-");
    return ZI_OK;
}

/* Reads [start, high) of every partition, handling each message. Returns ZI_OK when every
 * partition was read to its end (or the limit was reached). */
static int zi_dlq_read(zi_dlq_run *r, rd_kafka_t *cons, const char *topic, zi_dlq_part *parts,
                       size_t n)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    size_t open = 0;
    for (size_t i = 0; i < n; i++) {
        if (parts[i].start >= parts[i].high) {
            parts[i].done = 1;
            continue;
        }
        rd_kafka_topic_partition_list_add(l, topic, parts[i].id)->offset = parts[i].start;
        open++;
    }
    rd_kafka_resp_err_t err = open ? rd_kafka_assign(cons, l) : RD_KAFKA_RESP_ERR_NO_ERROR;
    rd_kafka_topic_partition_list_destroy(l);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return zi_errorf(ZI_EIO, "kafka: assigning %s: %s", topic, rd_kafka_err2str(err));

    int64_t deadline = zi_rstatus_now_ms() + r->o->timeout_ms;
    int rc = ZI_OK;
    while (open > 0 && rc == ZI_OK) {
        if (r->o->limit >= 0 && r->n.replayed >= r->o->limit)
            break;
        if (zi_dlq_stop) {
            rc = zi_errorf(ZI_ECANCELLED, "interrupted");
            break;
        }
        if (zi_rstatus_now_ms() > deadline) {
            rc = zi_errorf(ZI_ETRANSIENT,
                           "timed out after %ld ms before the end of %s (%zu partition(s) "
                           "unfinished); run again to go on",
                           r->o->timeout_ms, topic, open);
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(cons, 100);
        if (!m)
            continue;
        zi_dlq_part *p = NULL;
        for (size_t i = 0; i < n; i++)
            if (parts[i].id == m->partition)
                p = &parts[i];
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (p && !p->done) {
                p->done = 1;
                open--;
            }
        } else if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            char fatal[256];
            if (rd_kafka_fatal_error(cons, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR)
                rc = zi_errorf(ZI_EIO, "kafka: %s", fatal);
            else if (m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
                     m->err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
                     m->err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED ||
                     m->err == RD_KAFKA_RESP_ERR__AUTHENTICATION)
                rc = zi_errorf(ZI_EIO, "kafka: reading %s: %s", topic, rd_kafka_message_errstr(m));
            /* other errors (broker down, ...) are retried by librdkafka until the deadline */
        } else if (p && !p->done && m->offset < p->high) {
            rc = zi_dlq_handle(r, m);
            if (rc == ZI_OK) {
                p->next = m->offset + 1;
                if (p->next >= p->high) {
                    p->done = 1;
                    open--;
                }
            }
        }
        rd_kafka_message_destroy(m);
    }
    return rc;
}

/* The last line on stdout: "replayed N of M messages" (M = messages read), and why the
 * others were not. */
static void zi_dlq_summary(const zi_dlq_opts *o, const zi_dlq_counts *n)
{
    char detail[256] = "";
    size_t dn = 0;
    if (o->error_code && n->read > n->matched)
        dn += (size_t)snprintf(detail + dn, sizeof detail - dn, "; %ld with another error code",
                               n->read - n->matched);
    if (n->succeeded && dn < sizeof detail)
        dn += (size_t)snprintf(detail + dn, sizeof detail - dn,
                               "; %ld skipped: job already succeeded", n->succeeded);
    if (o->limit >= 0 && n->replayed >= o->limit && dn < sizeof detail)
        snprintf(detail + dn, sizeof detail - dn, "; stopped at --limit %ld", o->limit);
    if (!o->replay)
        printf("listed %ld of %ld messages%s\n", n->replayed, n->read, detail);
    else if (o->dry_run)
        printf("dry run: would replay %ld of %ld messages%s; nothing changed\n", n->replayed,
               n->read, detail);
    else
        printf("replayed %ld of %ld messages%s\n", n->replayed, n->read, detail);
    fflush(stdout);
}

int zi_cmd_dlq(int argc, char **argv)
{
    zi_dlq_opts o;
    int ret = zi_dlq_parse_args(argc, argv, &o);
    if (ret >= 0)
        return ret;

    zi_wconfig cfg = {0};
    if (zi_wconfig_load(&cfg, o.config, zi_dlq_warn, NULL) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        return 2;
    }
    ret = 1;
    zi_dlq_run r = {.o = &o, .cfg = &cfg};
    rd_kafka_t *cons = NULL;
    rd_kafka_topic_t *jobs_rkt = NULL;
    zi_dlq_part *parts = NULL;
    size_t nparts = 0;
    const char *topic = cfg.kafka_dlq_topic;
    char group[ZI_WCFG_MAX_STRING + 96];
    snprintf(group, sizeof group, "%s-dlq-replay%s%s", cfg.kafka_group_id, o.error_code ? "-" : "",
             o.error_code ? o.error_code : "");

    static const int stop_sigs[] = {SIGINT, SIGTERM};
    zi_cli_on_signals(zi_dlq_on_signal, stop_sigs, sizeof stop_sigs / sizeof stop_sigs[0]);

    if (o.replay) {
        /* worker_id is required by rstatus; never written (see Lua) */
        zi_rstatus_config rcfg = zi_wconfig_rstatus(&cfg, "dlq-replay", 0, 0);
        if (zi_rstatus_create(&rcfg, &r.rs) != ZI_OK) {
            fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
            ret = 2;
            goto out;
        }
        if (zi_top_redis_ping(r.rs) != ZI_OK) {
            fprintf(stderr, "zimage: error: redis is unreachable: %s\n", zi_errmsg());
            goto out;
        }
    }
    int rc = zi_dlq_consumer_new(&cfg, group, &cons);
    if (rc == ZI_OK && o.replay && !o.dry_run)
        rc = zi_dlq_producer_new(&cfg, &r.prod);
    /* A topic handle makes the producer fetch the topic's metadata now, while the DLQ is
     * read; otherwise the first message waits for librdkafka's 1 s topic scan. */
    if (rc == ZI_OK && r.prod && !(jobs_rkt = rd_kafka_topic_new(r.prod, cfg.kafka_topic, NULL)))
        rc = zi_errorf(ZI_EINVAL, "kafka topic %s: %s", cfg.kafka_topic,
                       rd_kafka_err2str(rd_kafka_last_error()));
    if (rc != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        ret = rc == ZI_EINVAL ? 2 : 1;
        goto out;
    }
    /* each metadata request waits at most min(--timeout-ms, 10 s) */
    int tmo = o.timeout_ms < ZI_DLQ_META_TIMEOUT_MS ? (int)o.timeout_ms : ZI_DLQ_META_TIMEOUT_MS;
    if (rc == ZI_OK)
        rc = zi_dlq_partitions(cons, topic, tmo, &parts, &nparts);
    if (rc == ZI_OK && o.replay && !o.from_beginning)
        rc = zi_dlq_positions(cons, topic, tmo, parts, nparts);
    int started = rc == ZI_OK;
    if (rc == ZI_OK)
        rc = zi_dlq_read(&r, cons, topic, parts, nparts);
    int crc = ZI_OK;
    char first_err[1024] = "";
    if (rc != ZI_OK)
        snprintf(first_err, sizeof first_err, "%s", zi_errmsg());
    if (started)
        zi_dlq_summary(&o, &r.n);
    if (o.replay && !o.dry_run && started)
        crc = zi_dlq_commit(cons, topic, parts, nparts);

    if (rc != ZI_OK) {
        fprintf(stderr, "zimage: error: dlq %s: %s\n", o.replay ? "replay" : "list", first_err);
    } else if (crc != ZI_OK) {
        fprintf(stderr, "zimage: error: dlq replay: %s\n", zi_errmsg());
    } else {
        ret = 0;
    }

out:
    if (jobs_rkt)
        rd_kafka_topic_destroy(jobs_rkt);
    if (r.prod) {
        rd_kafka_flush(r.prod, 10000);
        rd_kafka_destroy(r.prod);
    }
    if (cons) {
        rd_kafka_consumer_close(cons);
        rd_kafka_destroy(cons);
    }
    if (r.rs)
        zi_rstatus_destroy(r.rs);
    free(parts);
    zi_wconfig_free(&cfg);
    return ret;
}
