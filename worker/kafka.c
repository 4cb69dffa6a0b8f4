/*
 * kafka.c - job consumer and producer over librdkafka (see kafka.h for the contract).
 *
 * Ownership follows librdkafka's examples: rd_kafka_new() takes the conf (our pointer is
 * dropped there), every polled message is destroyed right after it is copied, the consumer
 * is closed (final commit, leave group) before its handle is destroyed.
 */
#include "kafka.h"
#include "log.h"
#include "zi_err.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ZI_KAFKA_POLL_BATCH 256 /* messages taken per zi_consumer_poll at most */

/* ---- shared configuration ---- */

static void zi_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    /* syslog levels: 0..3 error, 4 warning, 5..6 info, 7 debug */
    zi_log_level l = level <= 3   ? ZI_LOG_ERROR
                     : level == 4 ? ZI_LOG_WARN
                     : level <= 6 ? ZI_LOG_INFO
                                  : ZI_LOG_DEBUG;
    zi_logf(l, "kafka %s: %s", fac, buf);
}

/* The producer gets kafka.properties too (security settings are shared); the consumer-only
 * ones it ignores are not worth a warning each start. */
static void zi_kafka_producer_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                                     const char *buf)
{
    if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, "is a consumer property"))
        level = 7;
    zi_kafka_log_cb(rk, level, fac, buf);
}

static void zi_kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
        zi_log_error("kafka fatal error %s: %s", rd_kafka_err2name(orig), why);
        return;
    }
    /* Transport errors and "all brokers down" are transient: librdkafka reconnects. */
    zi_log_warn("kafka %s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static int zi_kafka_set(rd_kafka_conf_t *conf, const char *key, const char *value, const char *what)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, key, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        return zi_errorf(ZI_EINVAL, "%s%s: %s", what, key, errstr);
    return ZI_OK;
}

/* Sets key=value unless kafka.properties sets key (the properties win). */
static int zi_kafka_default(const zi_wconfig *cfg, rd_kafka_conf_t *conf, const char *key,
                            const char *value)
{
    if (zi_wconfig_kafka_property(cfg, key))
        return ZI_OK;
    return zi_kafka_set(conf, key, value, "kafka: ");
}

int zi_kafka_conf_new(const zi_wconfig *cfg, const char *client_id, rd_kafka_conf_t **out)
{
    *out = NULL;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf)
        return zi_errorf(ZI_ENOMEM, "kafka: out of memory");
    int rc;
    if ((rc = zi_kafka_set(conf, "bootstrap.servers", cfg->kafka_bootstrap_servers, "kafka.")) !=
            ZI_OK ||
        (rc = zi_kafka_set(conf, "client.id", client_id, "kafka: ")) != ZI_OK)
        goto err;
    for (size_t i = 0; i < cfg->kafka_properties_n; i++) {
        const zi_wconfig_prop *p = &cfg->kafka_properties[i];
        if ((rc = zi_kafka_set(conf, p->key, p->value, "kafka.properties.")) != ZI_OK)
            goto err;
    }
    rd_kafka_conf_set_log_cb(conf, zi_kafka_log_cb);
    rd_kafka_conf_set_error_cb(conf, zi_kafka_error_cb);
    *out = conf;
    return ZI_OK;
err:
    rd_kafka_conf_destroy(conf);
    return rc;
}

/* ---- consumer ---- */

typedef struct zi_kpart {
    char *topic;
    int32_t partition;
    uint64_t epoch;
    int paused;
    int64_t last_seen; /* offset of the last message queued in this epoch, -1 none */
    int64_t stored;    /* the offset last stored (next to consume), -1 none */
} zi_kpart;

typedef struct zi_knode {
    zi_kmsg *m;
    struct zi_knode *next;
} zi_knode;

struct zi_consumer {
    rd_kafka_t *rk;
    zi_consumer_hooks hooks;
    char *topic;
    int manual_commit; /* enable.auto.commit=false in the properties: commit after a store */
    zi_kpart *parts;
    size_t nparts, cap;
    uint64_t epochs; /* last epoch handed out */
    int paused;
    int assigned_once; /* the group handed us an assignment at least once */
    int sticky;        /* partition.assignment.strategy includes cooperative-sticky */
    zi_knode *head, *tail;
    size_t pending;
};

void zi_kmsg_free(zi_kmsg *m)
{
    if (!m)
        return;
    free(m->topic);
    free(m->key);
    free(m->payload);
    free(m);
}

static zi_kpart *zi_consumer_find(const zi_consumer *c, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < c->nparts; i++)
        if (c->parts[i].partition == partition && strcmp(c->parts[i].topic, topic) == 0)
            return &c->parts[i];
    return NULL;
}

/* Pauses or resumes one partition when its state differs. A partition that has delivered
 * nothing yet in this assignment is not paused: its fetch position may still be unknown
 * (committed offset or offset reset in flight), and librdkafka 2.0.2 drops that answer when
 * a pause arrives meanwhile - the partition then never fetches (found by
 * tests/fault/test_worker_chaos.sh, checked by tests/integration/test_worker_rebalance.sh).
 * It is paused once its first message is here, by the next zi_consumer_set_paused(). */
static void zi_consumer_pause_one(zi_consumer *c, zi_kpart *p, int paused)
{
    if (p->paused == paused || (paused && p->last_seen < 0))
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    if (!l)
        return;
    rd_kafka_topic_partition_list_add(l, p->topic, p->partition);
    rd_kafka_resp_err_t err =
        paused ? rd_kafka_pause_partitions(c->rk, l) : rd_kafka_resume_partitions(c->rk, l);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR && l->elems[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
        p->paused = paused;
    else
        zi_log_warn("kafka: %s %s[%d] failed: %s", paused ? "pause" : "resume", p->topic,
                    (int)p->partition, rd_kafka_err2str(err ? err : l->elems[0].err));
    rd_kafka_topic_partition_list_destroy(l);
}

static void zi_consumer_drop_queued(zi_consumer *c, const char *topic, int32_t partition)
{
    zi_knode **pp = &c->head;
    c->tail = NULL;
    while (*pp) {
        zi_knode *n = *pp;
        if (n->m->partition == partition && strcmp(n->m->topic, topic) == 0) {
            *pp = n->next;
            zi_kmsg_free(n->m);
            free(n);
            c->pending--;
        } else {
            c->tail = n;
            pp = &n->next;
        }
    }
}

static void zi_consumer_on_assign(zi_consumer *c, rd_kafka_topic_partition_list_t *parts)
{
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
        zi_kpart *p = zi_consumer_find(c, tp->topic, tp->partition);
        if (!p) {
            if (c->nparts == c->cap) {
                size_t ncap = c->cap ? 2 * c->cap : 16;
                zi_kpart *np = realloc(c->parts, ncap * sizeof *np);
                if (!np) {
                    zi_log_error("kafka: out of memory tracking partitions");
                    continue;
                }
                c->parts = np;
                c->cap = ncap;
            }
            p = &c->parts[c->nparts];
            memset(p, 0, sizeof *p);
            p->topic = strdup(tp->topic);
            if (!p->topic) {
                zi_log_error("kafka: out of memory tracking partitions");
                continue;
            }
            p->partition = tp->partition;
            c->nparts++;
        }
        p->epoch = ++c->epochs;
        p->paused = 0; /* a partition is resumed before it is revoked (zi_consumer_on_revoke) */
        p->last_seen = -1;
        p->stored = -1;
        zi_log_info("kafka: assigned %s[%d]", tp->topic, (int)tp->partition);
        if (c->hooks.on_assign)
            c->hooks.on_assign(c->hooks.ud, tp->topic, tp->partition);
    }
}

static void zi_consumer_on_revoke(zi_consumer *c, rd_kafka_topic_partition_list_t *parts, int lost)
{
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &parts->elems[i];
        zi_consumer_drop_queued(c, tp->topic, tp->partition);
        zi_kpart *p = zi_consumer_find(c, tp->topic, tp->partition);
        if (p) {
            /* librdkafka keeps a partition's pause into its next assignment to this
             * consumer (confluentinc/librdkafka#1849), where it would never deliver. */
            zi_consumer_pause_one(c, p, 0);
            free(p->topic);
            *p = c->parts[--c->nparts];
        }
        zi_log_info("kafka: %s %s[%d]", lost ? "lost" : "revoked", tp->topic, (int)tp->partition);
        if (c->hooks.on_revoke)
            c->hooks.on_revoke(c->hooks.ud, tp->topic, tp->partition, lost);
    }
}

static void zi_consumer_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                     rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    zi_consumer *c = opaque;
    int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t ret = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (coop)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            ret = rd_kafka_assign(rk, parts);
        if (!error && !ret) {
            c->assigned_once = 1;
            /* Not paused here even while a job runs: see zi_consumer_pause_one. */
            zi_consumer_on_assign(c, parts);
        }
    } else {
        /* Revoked (or an error: drop everything). Forget the partitions before librdkafka
         * does, so no offset is stored for them from here on. */
        int lost = err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS || rd_kafka_assignment_lost(rk);
        if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            zi_log_warn("kafka: rebalance error %s", rd_kafka_err2str(err));
        zi_consumer_on_revoke(c, parts, lost);
        if (coop)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            ret = rd_kafka_assign(rk, NULL);
    }
    if (error) {
        zi_log_error("kafka: incremental rebalance failed: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (ret) {
        zi_log_error("kafka: rebalance assign failed: %s", rd_kafka_err2str(ret));
    }
}

int zi_kafka_stats_lag(const char *json, size_t len, const char *topic, int64_t *lag, int *n)
{
    *lag = 0;
    *n = 0;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return zi_errorf(ZI_EFORMAT, "kafka statistics: not JSON");
    const cJSON *topics = cJSON_GetObjectItemCaseSensitive(root, "topics");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(topics)) {
        cJSON_Delete(root);
        return zi_errorf(ZI_EFORMAT, "kafka statistics: no \"topics\" object");
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, topics)
    {
        if (topic && (!t->string || strcmp(t->string, topic) != 0))
            continue;
        const cJSON *parts = cJSON_GetObjectItemCaseSensitive(t, "partitions");
        const cJSON *p;
        cJSON_ArrayForEach(p, parts)
        {
            /* "-1" is the internal unassigned-messages partition */
            if (!p->string || strcmp(p->string, "-1") == 0)
                continue;
            const cJSON *cl = cJSON_GetObjectItemCaseSensitive(p, "consumer_lag");
            if (cJSON_IsNumber(cl) && cl->valuedouble >= 0) {
                *lag += (int64_t)cl->valuedouble;
                (*n)++;
            }
        }
    }
    cJSON_Delete(root);
    return ZI_OK;
}

static int zi_consumer_stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    zi_consumer *c = opaque;
    int64_t lag;
    int n;
    if (c->hooks.on_lag && zi_kafka_stats_lag(json, len, c->topic, &lag, &n) == ZI_OK)
        c->hooks.on_lag(c->hooks.ud, lag);
    return 0; /* librdkafka frees json */
}

int zi_consumer_create(const zi_wconfig *cfg, const zi_consumer_hooks *hooks, zi_consumer **out)
{
    *out = NULL;
    int rc;
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_topic_partition_list_t *subs = NULL;
    zi_consumer *c = calloc(1, sizeof *c);
    if (!c)
        return zi_errorf(ZI_ENOMEM, "kafka: out of memory");
    if (hooks)
        c->hooks = *hooks;
    c->topic = strdup(cfg->kafka_topic);
    if (!c->topic) {
        rc = zi_errorf(ZI_ENOMEM, "kafka: out of memory");
        goto err;
    }
    char client_id[300];
    snprintf(client_id, sizeof client_id, "zimage-worker-%s", cfg->worker_id);
    if ((rc = zi_kafka_conf_new(cfg, client_id, &conf)) != ZI_OK)
        goto err;
    const char *ac = zi_wconfig_kafka_property(cfg, "enable.auto.commit");
    c->manual_commit = ac && strcmp(ac, "false") == 0;
    const char *aos = zi_wconfig_kafka_property(cfg, "enable.auto.offset.store");
    if (aos && strcmp(aos, "false") != 0)
        zi_log_warn("kafka.properties.enable.auto.offset.store=%s ignored: offsets are stored "
                    "only after a job's final state",
                    aos);
    if ((rc = zi_kafka_set(conf, "group.id", cfg->kafka_group_id, "kafka.")) != ZI_OK ||
        (rc = zi_kafka_set(conf, "enable.auto.offset.store", "false", "kafka: ")) != ZI_OK ||
        (rc = zi_kafka_default(cfg, conf, "enable.auto.commit", "true")) != ZI_OK ||
        (rc = zi_kafka_default(cfg, conf, "partition.assignment.strategy", "cooperative-sticky")) !=
            ZI_OK ||
        (rc = zi_kafka_default(cfg, conf, "auto.offset.reset", "earliest")) != ZI_OK ||
        (rc = zi_kafka_default(cfg, conf, "statistics.interval.ms", "5000")) != ZI_OK)
        goto err;
    if (cfg->kafka_static_membership &&
        (rc = zi_kafka_set(conf, "group.instance.id", cfg->worker_id, "kafka: ")) != ZI_OK)
        goto err;
    char strategy[256];
    size_t slen = sizeof strategy;
    if (rd_kafka_conf_get(conf, "partition.assignment.strategy", strategy, &slen) ==
        RD_KAFKA_CONF_OK)
        c->sticky = strstr(strategy, "cooperative-sticky") != NULL;
    rd_kafka_conf_set_rebalance_cb(conf, zi_consumer_rebalance_cb);
    rd_kafka_conf_set_stats_cb(conf, zi_consumer_stats_cb);
    rd_kafka_conf_set_opaque(conf, c);

    char errstr[512];
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!c->rk) {
        rc = zi_errorf(ZI_EINVAL, "kafka: cannot create the consumer: %s", errstr);
        goto err;
    }
    conf = NULL; /* owned by c->rk now */
    rd_kafka_poll_set_consumer(c->rk);
    subs = rd_kafka_topic_partition_list_new(1);
    if (!subs) {
        rc = zi_errorf(ZI_ENOMEM, "kafka: out of memory");
        goto err;
    }
    rd_kafka_topic_partition_list_add(subs, cfg->kafka_topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (err) {
        rc = zi_errorf(ZI_EINVAL, "kafka: subscribe to %s: %s", cfg->kafka_topic,
                       rd_kafka_err2str(err));
        goto err;
    }
    *out = c;
    return ZI_OK;
err:
    if (conf)
        rd_kafka_conf_destroy(conf);
    if (c->rk)
        rd_kafka_destroy(c->rk);
    free(c->topic);
    free(c);
    return rc;
}

static int zi_consumer_take(zi_consumer *c, rd_kafka_message_t *rm)
{
    const char *topic = rd_kafka_topic_name(rm->rkt);
    zi_kpart *p = zi_consumer_find(c, topic, rm->partition);
    if (!p) {
        zi_log_debug("kafka: dropping %s[%d]@%lld: partition not assigned", topic,
                     (int)rm->partition, (long long)rm->offset);
        return ZI_OK;
    }
    /* A refetch after pause/resume may repeat offsets already taken in this epoch. */
    if (rm->offset <= p->last_seen) {
        zi_log_debug("kafka: dropping repeated %s[%d]@%lld", topic, (int)rm->partition,
                     (long long)rm->offset);
        return ZI_OK;
    }
    zi_kmsg *m = calloc(1, sizeof *m);
    zi_knode *n = calloc(1, sizeof *n);
    if (!m || !n)
        goto nomem;
    m->topic = strdup(topic);
    m->payload = malloc(rm->len ? rm->len : 1);
    if (!m->topic || !m->payload)
        goto nomem;
    if (rm->len)
        memcpy(m->payload, rm->payload, rm->len);
    m->len = rm->len;
    if (rm->key) {
        m->key = malloc(rm->key_len ? rm->key_len : 1);
        if (!m->key)
            goto nomem;
        memcpy(m->key, rm->key, rm->key_len);
        m->key_len = rm->key_len;
    }
    m->partition = rm->partition;
    m->offset = rm->offset;
    m->epoch = p->epoch;
    rd_kafka_timestamp_type_t tst;
    m->timestamp_ms = rd_kafka_message_timestamp(rm, &tst);
    p->last_seen = rm->offset;
    n->m = m;
    if (c->tail)
        c->tail->next = n;
    else
        c->head = n;
    c->tail = n;
    c->pending++;
    return ZI_OK;
nomem:
    zi_kmsg_free(m);
    free(n);
    return zi_errorf(ZI_ENOMEM, "kafka: out of memory copying a message");
}

int zi_consumer_poll(zi_consumer *c, int timeout_ms)
{
    for (int i = 0; i < ZI_KAFKA_POLL_BATCH; i++) {
        rd_kafka_message_t *rm = rd_kafka_consumer_poll(c->rk, i == 0 ? timeout_ms : 0);
        if (!rm)
            return ZI_OK;
        int rc = ZI_OK;
        if (rm->err) {
            if (rm->err == RD_KAFKA_RESP_ERR__FATAL) {
                char why[512];
                rd_kafka_resp_err_t orig = rd_kafka_fatal_error(c->rk, why, sizeof why);
                rc = zi_errorf(ZI_EBACKEND, "kafka: fatal consumer error %s: %s",
                               rd_kafka_err2name(orig), why);
            } else if (rm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                zi_log_warn("kafka: consumer: %s", rd_kafka_message_errstr(rm));
            }
        } else {
            /* A message that cannot be copied must not be skipped (a later offset of the
             * partition would commit past it): the caller stops the worker instead. */
            rc = zi_consumer_take(c, rm);
        }
        rd_kafka_message_destroy(rm);
        if (rc != ZI_OK)
            return rc;
    }
    return ZI_OK;
}

zi_kmsg *zi_consumer_next(zi_consumer *c)
{
    zi_knode *n = c->head;
    if (!n)
        return NULL;
    c->head = n->next;
    if (!c->head)
        c->tail = NULL;
    c->pending--;
    zi_kmsg *m = n->m;
    free(n);
    return m;
}

size_t zi_consumer_pending(const zi_consumer *c)
{
    return c->pending;
}

int zi_consumer_owns(const zi_consumer *c, const char *topic, int32_t partition, uint64_t epoch)
{
    const zi_kpart *p = zi_consumer_find(c, topic, partition);
    return p && p->epoch == epoch;
}

size_t zi_consumer_assigned(const zi_consumer *c)
{
    return c->nparts;
}

void zi_consumer_set_paused(zi_consumer *c, int paused)
{
    c->paused = paused ? 1 : 0;
    for (size_t i = 0; i < c->nparts; i++)
        zi_consumer_pause_one(c, &c->parts[i], c->paused);
}

int zi_consumer_store(zi_consumer *c, const zi_kmsg *m)
{
    zi_kpart *p = zi_consumer_find(c, m->topic, m->partition);
    if (!p || p->epoch != m->epoch)
        return zi_errorf(ZI_ENOTFOUND, "%s[%d]@%lld: partition no longer assigned here", m->topic,
                         (int)m->partition, (long long)m->offset);
    if (p->stored >= m->offset + 1)
        return ZI_OK; /* never move backwards */
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    if (!l)
        return zi_errorf(ZI_ENOMEM, "kafka: out of memory");
    rd_kafka_topic_partition_list_add(l, m->topic, m->partition)->offset = m->offset + 1;
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(c->rk, l);
    if (!err)
        err = l->elems[0].err;
    rd_kafka_topic_partition_list_destroy(l);
    if (err == RD_KAFKA_RESP_ERR__STATE || err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION)
        return zi_errorf(ZI_ENOTFOUND, "%s[%d]@%lld: not stored: %s", m->topic, (int)m->partition,
                         (long long)m->offset, rd_kafka_err2str(err));
    if (err)
        return zi_errorf(ZI_EIO, "%s[%d]@%lld: offset store failed: %s", m->topic,
                         (int)m->partition, (long long)m->offset, rd_kafka_err2str(err));
    p->stored = m->offset + 1;
    if (c->manual_commit) {
        err = rd_kafka_commit(c->rk, NULL, 1 /* async */);
        if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
            zi_log_warn("kafka: commit: %s", rd_kafka_err2str(err));
    }
    return ZI_OK;
}

static int64_t zi_kafka_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int zi_consumer_commit(zi_consumer *c, int timeout_ms)
{
    int64_t until = zi_kafka_now_ms() + timeout_ms;
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_commit(c->rk, NULL, 0);
        if (!err || err == RD_KAFKA_RESP_ERR__NO_OFFSET)
            return ZI_OK;
        if (zi_kafka_now_ms() >= until)
            return zi_errorf(ZI_ETRANSIENT, "kafka: commit failed: %s", rd_kafka_err2str(err));
        zi_log_warn("kafka: commit failed (%s), retrying", rd_kafka_err2str(err));
        /* Serve the rebalance in progress before trying again. */
        zi_consumer_poll(c, 200);
    }
}

void zi_consumer_close(zi_consumer *c)
{
    if (!c)
        return;
    if (c->rk && !c->assigned_once && c->sticky) {
        /* librdkafka < 2.3 aborts in rd_kafka_sticky_assignor_state_destroy() when a
         * cooperative-sticky consumer is destroyed before its first assignment (its
         * issue #4312, fixed by PR #4381). Such a consumer has consumed and stored
         * nothing, so there is nothing to commit: leave the handle to the process exit
         * and let the group drop the member after session.timeout.ms. */
        zi_log_warn("kafka: stopping before the first assignment; not closing the consumer "
                    "(librdkafka %s cooperative-sticky shutdown bug)",
                    rd_kafka_version_str());
        c->rk = NULL;
    }
    if (c->rk) {
        rd_kafka_resp_err_t err = rd_kafka_consumer_close(c->rk);
        if (err)
            zi_log_warn("kafka: consumer close: %s", rd_kafka_err2str(err));
        rd_kafka_destroy(c->rk);
    }
    while (c->head) {
        zi_knode *n = c->head;
        c->head = n->next;
        zi_kmsg_free(n->m);
        free(n);
    }
    for (size_t i = 0; i < c->nparts; i++)
        free(c->parts[i].topic);
    free(c->parts);
    free(c->topic);
    free(c);
}

rd_kafka_t *zi_consumer_handle(zi_consumer *c)
{
    return c->rk;
}

/* ---- producer ---- */

typedef struct zi_kafka_dr {
    int done;
    rd_kafka_resp_err_t err;
} zi_kafka_dr;

static void zi_kafka_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    zi_kafka_dr *st = m->_private;
    if (st) {
        st->err = m->err;
        st->done = 1;
    }
}

int zi_kafka_producer_new(const zi_wconfig *cfg, const char *client_id, rd_kafka_t **out)
{
    *out = NULL;
    rd_kafka_conf_t *conf = NULL;
    int rc = zi_kafka_conf_new(cfg, client_id, &conf);
    if (rc != ZI_OK)
        return rc;
    /* A DLQ copy is the original payload (up to max_message_bytes) plus headers. */
    char maxb[32];
    int64_t mb = cfg->kafka_max_message_bytes + 65536;
    if (mb < 1000000)
        mb = 1000000;
    snprintf(maxb, sizeof maxb, "%lld", (long long)mb);
    if ((rc = zi_kafka_default(cfg, conf, "enable.idempotence", "true")) != ZI_OK ||
        (rc = zi_kafka_default(cfg, conf, "acks", "all")) != ZI_OK ||
        (rc = zi_kafka_default(cfg, conf, "message.timeout.ms", "30000")) != ZI_OK ||
        (rc = zi_kafka_default(cfg, conf, "linger.ms", "1")) != ZI_OK ||
        (rc = zi_kafka_default(cfg, conf, "message.max.bytes", maxb)) != ZI_OK) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, zi_kafka_dr_cb);
    rd_kafka_conf_set_log_cb(conf, zi_kafka_producer_log_cb);
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return zi_errorf(ZI_EINVAL, "kafka: cannot create the producer: %s", errstr);
    }
    *out = rk; /* conf is owned by rk */
    return ZI_OK;
}

/* The brokers' metadata of one topic into *md (the caller destroys it): ZI_ETRANSIENT when
 * no broker answered within timeout_ms. */
static int zi_kafka_topic_metadata(rd_kafka_t *rk, const char *topic, int timeout_ms,
                                   const struct rd_kafka_metadata **md)
{
    *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    if (!t)
        return zi_errorf(ZI_EINVAL, "kafka: topic %s: %s", topic,
                         rd_kafka_err2str(rd_kafka_last_error()));
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, t, md, timeout_ms);
    rd_kafka_topic_destroy(t);
    if (err) {
        if (*md)
            rd_kafka_metadata_destroy(*md);
        *md = NULL;
        return zi_errorf(ZI_ETRANSIENT, "kafka: no answer from the brokers within %d ms: %s",
                         timeout_ms, rd_kafka_err2str(err));
    }
    return ZI_OK;
}

int zi_kafka_wait_ready(rd_kafka_t *rk, const char *topic, int timeout_ms)
{
    const struct rd_kafka_metadata *md = NULL;
    int rc = zi_kafka_topic_metadata(rk, topic, timeout_ms, &md);
    if (md)
        rd_kafka_metadata_destroy(md);
    return rc;
}

int zi_kafka_topic_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms, int *partitions)
{
    const struct rd_kafka_metadata *md = NULL;
    int rc = zi_kafka_topic_metadata(rk, topic, timeout_ms, &md);
    if (rc != ZI_OK)
        return rc;
    rc = zi_errorf(ZI_ENOTFOUND, "kafka: topic %s does not exist", topic);
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *mt = &md->topics[i];
        if (strcmp(mt->topic, topic) != 0)
            continue;
        if (mt->err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
            rc = zi_errorf(ZI_EAUTH, "kafka: topic %s: %s", topic, rd_kafka_err2str(mt->err));
        else if (mt->err == RD_KAFKA_RESP_ERR_NO_ERROR && mt->partition_cnt > 0) {
            *partitions = mt->partition_cnt;
            rc = ZI_OK;
            zi_error_clear();
        } else if (mt->err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART &&
                   mt->err != RD_KAFKA_RESP_ERR_NO_ERROR)
            rc = zi_errorf(ZI_EIO, "kafka: topic %s: %s", topic, rd_kafka_err2str(mt->err));
    }
    rd_kafka_metadata_destroy(md);
    return rc;
}

/* The zi_status of a produce error: ZI_EBACKEND once the producer has hit a fatal error
 * (every later produce fails: only a new producer, i.e. a restart, helps), ZI_EINVAL for a
 * message the broker refuses as too large (or an invalid argument), ZI_EAUTH for a refused
 * authorization, ZI_ETRANSIENT for the rest (librdkafka retries and reconnects). */
static int zi_kafka_produce_status(rd_kafka_t *rk, rd_kafka_resp_err_t err)
{
    if (err == RD_KAFKA_RESP_ERR__FATAL || rd_kafka_fatal_error(rk, NULL, 0))
        return ZI_EBACKEND;
    switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return ZI_EINVAL;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
        return ZI_EAUTH;
    default:
        return ZI_ETRANSIENT;
    }
}

int zi_kafka_produce_sync(rd_kafka_t *rk, const char *topic, const void *key, size_t key_len,
                          const void *value, size_t len, const zi_kafka_header *headers,
                          size_t nheaders)
{
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(nheaders ? nheaders : 1);
    if (!hdrs)
        return zi_errorf(ZI_ENOMEM, "kafka: out of memory");
    for (size_t i = 0; i < nheaders; i++)
        rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value, -1);
    zi_kafka_dr st = {0};
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? key_len : 0),
        RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(&st), RD_KAFKA_V_END);
    if (err) {
        rd_kafka_headers_destroy(hdrs); /* not taken over on failure */
        return zi_errorf(zi_kafka_produce_status(rk, err), "kafka: produce to %s: %s", topic,
                         rd_kafka_err2str(err));
    }
    /* The delivery report always comes, at the latest after message.timeout.ms. */
    while (!st.done)
        rd_kafka_poll(rk, 50);
    if (st.err)
        return zi_errorf(zi_kafka_produce_status(rk, st.err), "kafka: delivery to %s failed: %s",
                         topic, rd_kafka_err2str(st.err));
    return ZI_OK;
}
