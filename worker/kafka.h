/*
 * kafka.h - the worker's Kafka side (librdkafka): a job consumer with at-least-once offset
 * handling and a producer for jobs, dead letters and results.
 *
 * Consumer (zi_consumer): a KafkaConsumer in group kafka.group_id on kafka.topic with
 *   - enable.auto.commit=true and enable.auto.offset.store=false: librdkafka commits only
 *     what zi_consumer_store() stored, and the worker stores a message's offset only after
 *     the job's final state is written (docs/worker.md, "Delivery semantics");
 *   - partition.assignment.strategy=cooperative-sticky by default, with incremental
 *     assign/unassign in the rebalance callback (eager protocols handled too);
 *   - group.instance.id = worker.id when kafka.static_membership is true;
 *   - auto.offset.reset=earliest (jobs queued before the first worker joined are not lost);
 *   - statistics.interval.ms=5000: the summed consumer_lag of the statistics is reported
 *     through the on_lag hook;
 *   - kafka.properties passed through (they override the defaults above, except
 *     enable.auto.offset.store which must stay false).
 * Every message polled is kept in a local FIFO (the caller takes them one at a time with
 * zi_consumer_next()), tagged with the assignment epoch of its partition. A revoked or
 * lost partition drops its buffered messages and bumps nothing else; zi_consumer_store()
 * refuses an offset whose partition is no longer assigned in the same epoch, and never
 * moves a partition's stored offset backwards.
 *
 * Pausing: zi_consumer_set_paused(1) pauses every assigned partition (and partitions
 * assigned later, once they delivered a message) so nothing more is fetched while a job runs;
 * polling goes on, so the consumer never exceeds max.poll.interval.ms and keeps its group
 * membership. Each partition is paused/resumed at most once per change (librdkafka <= 2.3 may
 * refetch when resuming a partition that was not paused); one that has delivered nothing yet in its
 * assignment is not paused (librdkafka 2.0.2 loses its fetch position: it would never
 * deliver), and a paused one is resumed when it is revoked (librdkafka would keep the
 * pause into its next assignment).
 *
 * Threading: every zi_consumer_* call and the hooks run on the one thread that polls.
 * The producer is thread-safe; zi_kafka_produce_sync() must not be called by two threads
 * at once on the same producer (it serves delivery reports with rd_kafka_poll()).
 *
 * Reference: librdkafka 2.0.2 rdkafka.h, examples/consumer.c; docs/contract.md.
 */
#ifndef ZI_KAFKA_H
#define ZI_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "wconfig.h"

/* A polled job message (copies; the librdkafka message is destroyed at once). */
typedef struct zi_kmsg {
    char *topic;
    int32_t partition;
    int64_t offset;
    uint64_t epoch;       /* assignment epoch of the partition when it was polled */
    int64_t timestamp_ms; /* Kafka message timestamp, -1 when none */
    void *key;            /* NULL when the message has no key */
    size_t key_len;
    void *payload; /* never NULL (a 1-byte buffer for an empty value) */
    size_t len;
} zi_kmsg;

void zi_kmsg_free(zi_kmsg *m);

typedef struct zi_consumer_hooks {
    /* A partition was revoked or lost (called inside zi_consumer_poll). */
    void (*on_revoke)(void *ud, const char *topic, int32_t partition, int lost);
    /* A partition was assigned. */
    void (*on_assign)(void *ud, const char *topic, int32_t partition);
    /* Summed consumer_lag of the assigned partitions, from the statistics. */
    void (*on_lag)(void *ud, int64_t lag);
    void *ud;
} zi_consumer_hooks;

typedef struct zi_consumer zi_consumer;

/* Builds a librdkafka configuration: bootstrap.servers, client.id, kafka.properties (errors
 * name the property: "kafka.properties.X: ..."), and log/error callbacks into the worker
 * log. ZI_EINVAL on a refused property. */
int zi_kafka_conf_new(const zi_wconfig *cfg, const char *client_id, rd_kafka_conf_t **out);

/* Creates the consumer and subscribes to kafka.topic. Hooks are copied. */
int zi_consumer_create(const zi_wconfig *cfg, const zi_consumer_hooks *hooks, zi_consumer **out);

/* Polls once (up to timeout_ms): serves rebalances, statistics and errors, and appends
 * the messages it gets to the local FIFO. ZI_EBACKEND on a fatal consumer error, ZI_ENOMEM
 * when a message could not be copied (the caller must stop without storing more). */
int zi_consumer_poll(zi_consumer *c, int timeout_ms);

/* Pops the oldest buffered message (caller owns it; free with zi_kmsg_free), or NULL. */
zi_kmsg *zi_consumer_next(zi_consumer *c);

/* Number of buffered messages. */
size_t zi_consumer_pending(const zi_consumer *c);

/* 1 when topic/partition is assigned now under `epoch`. */
int zi_consumer_owns(const zi_consumer *c, const char *topic, int32_t partition, uint64_t epoch);

/* Number of assigned partitions. */
size_t zi_consumer_assigned(const zi_consumer *c);

/* Pauses (1) or resumes (0) fetching for all assigned partitions. */
void zi_consumer_set_paused(zi_consumer *c, int paused);

/* Stores offset+1 of a finished message for the next commit. ZI_OK when stored;
 * ZI_ENOTFOUND when the partition is no longer ours in the message's epoch (the message
 * will be redelivered to the new owner: nothing is stored). */
int zi_consumer_store(zi_consumer *c, const zi_kmsg *m);

/* Commits the stored offsets now (synchronous), retrying "rebalance in progress" a few
 * times within timeout_ms. ZI_OK also when there was nothing to commit. */
int zi_consumer_commit(zi_consumer *c, int timeout_ms);

/* Closes the consumer (final commit of stored offsets, leaves the group), frees the
 * buffered messages and destroys everything. NULL is fine. */
void zi_consumer_close(zi_consumer *c);

/* The librdkafka handle (for tests and diagnostics). */
rd_kafka_t *zi_consumer_handle(zi_consumer *c);

/* ---- producer ---- */

/* A producer for kafka.bootstrap_servers with kafka.properties, acks=all and idempotence
 * (unless the properties say otherwise), message.max.bytes large enough for a DLQ copy
 * of kafka.max_message_bytes, message.timeout.ms=30000 unless set. */
int zi_kafka_producer_new(const zi_wconfig *cfg, const char *client_id, rd_kafka_t **out);

/* Waits until the producer has the metadata of `topic` (a broker connection is up), at most
 * timeout_ms. ZI_ETRANSIENT when Kafka cannot be reached in time (message names the
 * bootstrap servers). For short-lived producers such as `zimage submit`: a clear error
 * instead of a silent 30 s delivery timeout, and a message timestamp that is not inflated
 * by the connection set-up. */
int zi_kafka_wait_ready(rd_kafka_t *rk, const char *topic, int timeout_ms);

/* The partition count of `topic` from the brokers' metadata (at most timeout_ms), never
 * creating it: ZI_OK with *partitions set; ZI_ENOTFOUND when it does not exist; ZI_EAUTH
 * when its description is refused (ACLs); ZI_EIO for another error of the topic (e.g. no
 * leader yet); ZI_ETRANSIENT when no broker answered at all. Use a
 * handle with allow.auto.create.topics=false (a consumer's default) - a producer's
 * metadata request may create the topic on brokers that auto-create. */
int zi_kafka_topic_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms, int *partitions);

/* One header for zi_kafka_produce_sync (value is a string). */
typedef struct zi_kafka_header {
    const char *name;
    const char *value;
} zi_kafka_header;

/* Produces one message and waits for its delivery report (at most message.timeout.ms).
 * ZI_OK when the broker acknowledged it; ZI_ETRANSIENT on a retriable failure; ZI_EINVAL
 * when the message is refused as too large; ZI_EAUTH when the authorization is refused;
 * ZI_EBACKEND once the producer has hit a fatal error (no later produce can succeed); the
 * message names the topic. */
int zi_kafka_produce_sync(rd_kafka_t *rk, const char *topic, const void *key, size_t key_len,
                          const void *value, size_t len, const zi_kafka_header *headers,
                          size_t nheaders);

/* Parses librdkafka statistics JSON: *lag = sum of consumer_lag >= 0 over the partitions
 * of `topic` (NULL = all topics), *n = how many partitions contributed. ZI_EFORMAT when
 * the text is not statistics JSON. */
int zi_kafka_stats_lag(const char *json, size_t len, const char *topic, int64_t *lag, int *n);

#endif
