/*
 * test_stack_kafka.c - the local stack's Kafka (the dev broker) carries a message with a key
 * and a header between processes, both ways:
 *   this process (librdkafka producer) -> kcat consumer (another process);
 *   kcat producer (another process) -> this process (librdkafka consumer).
 *
 * The address comes from ZI_KAFKA_BOOTSTRAP, exported by `deploy/local/stack.sh env`
 * (tests/run-all.sh does that). Without it the test fails. Each run uses its own topic
 * (created on first use by the broker), so runs do not see each other's messages.
 */
#include "zi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

static char zi_topic[128];

static const char *zi_test_bootstrap(void)
{
    const char *b = getenv("ZI_KAFKA_BOOTSTRAP");
    if (!b || !*b)
        fail_msg("ZI_KAFKA_BOOTSTRAP is not set: run through `make test`, or "
                 "eval \"$(deploy/local/stack.sh env)\" after `deploy/local/stack.sh up`");
    /* It is handed to a shell below: allow only host:port lists. */
    if (strspn(b, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.:,-") !=
        strlen(b))
        fail_msg("ZI_KAFKA_BOOTSTRAP '%s' is not a host:port list", b);
    return b;
}

static int zi_setup(void **state)
{
    (void)state;
    snprintf(zi_topic, sizeof zi_topic, "zitest.stack.%ld.%ld", (long)getpid(), (long)time(NULL));
    return 0;
}

static void zi_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    *(rd_kafka_resp_err_t *)m->_private = m->err;
}

static void zi_conf_set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char errstr[256];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        fail_msg("librdkafka %s=%s: %s", k, v, errstr);
}

/* C producer (key + header) -> kcat consumer in another process. */
static void test_kafka_c_to_kcat(void **state)
{
    (void)state;
    const char *bootstrap = zi_test_bootstrap();
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    zi_conf_set(conf, "bootstrap.servers", bootstrap);
    zi_conf_set(conf, "acks", "all");
    rd_kafka_conf_set_dr_msg_cb(conf, zi_dr_cb);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk)
        fail_msg("rd_kafka_new: %s", errstr);

    rd_kafka_resp_err_t delivered = RD_KAFKA_RESP_ERR__IN_PROGRESS;
    const char *value = "hello-from-c";
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(zi_topic), RD_KAFKA_V_KEY("job-c1", 6),
        RD_KAFKA_V_VALUE((void *)value, strlen(value)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADER("zimage-test", "hdr-c", 5), RD_KAFKA_V_OPAQUE(&delivered),
        RD_KAFKA_V_END);
    assert_int_equal(err, RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(rd_kafka_flush(rk, 15000), RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(delivered, RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_destroy(rk);

    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "kcat -C -b '%s' -t '%s' -o beginning -e -q -f '%%k|%%h|%%s\\n' 2>&1",
             bootstrap, zi_topic);
    int rc = zi_test_run(cmd, out, sizeof out);
    if (rc != 0)
        fail_msg("kcat consumer exited %d: %s", rc, out);
    assert_string_equal(out, "job-c1|zimage-test=hdr-c|hello-from-c\n");
}

/* kcat producer in another process (key + header) -> C consumer. */
static void test_kafka_kcat_to_c(void **state)
{
    (void)state;
    const char *bootstrap = zi_test_bootstrap();
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd,
             "printf 'hello-from-kcat\\n' | kcat -P -b '%s' -t '%s.k' -p 1 -k job-k1 "
             "-H zimage-test=hdr-k 2>&1",
             bootstrap, zi_topic);
    int rc = zi_test_run(cmd, out, sizeof out);
    if (rc != 0)
        fail_msg("kcat producer exited %d: %s", rc, out);

    char topic[160];
    snprintf(topic, sizeof topic, "%s.k", zi_topic);
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    zi_conf_set(conf, "bootstrap.servers", bootstrap);
    /* assign() wants a group id, although assigned partitions never join the group. */
    zi_conf_set(conf, "group.id", topic);
    zi_conf_set(conf, "enable.auto.commit", "false");
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk)
        fail_msg("rd_kafka_new: %s", errstr);
    /* No group: read partition 1 from the start, as kcat -p 1 wrote there. */
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic, 1)->offset = RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(rk, parts), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(parts);

    rd_kafka_message_t *m = NULL;
    for (int i = 0; i < 150 && !m; i++) { /* up to 15 s */
        m = rd_kafka_consumer_poll(rk, 100);
        if (m && m->err) {
            rd_kafka_message_destroy(m);
            m = NULL;
        }
    }
    if (!m)
        fail_msg("no message on %s[1] within 15 s", topic);
    assert_int_equal(m->key_len, 6);
    assert_memory_equal(m->key, "job-k1", 6);
    assert_int_equal(m->len, strlen("hello-from-kcat"));
    assert_memory_equal(m->payload, "hello-from-kcat", m->len);
    rd_kafka_headers_t *hdrs = NULL;
    assert_int_equal(rd_kafka_message_headers(m, &hdrs), RD_KAFKA_RESP_ERR_NO_ERROR);
    const void *hv = NULL;
    size_t hlen = 0;
    assert_int_equal(rd_kafka_header_get_last(hdrs, "zimage-test", &hv, &hlen),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(hlen, 5);
    assert_memory_equal(hv, "hdr-k", 5);
    rd_kafka_message_destroy(m);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kafka_c_to_kcat),
        cmocka_unit_test(test_kafka_kcat_to_c),
    };
    return cmocka_run_group_tests(tests, zi_setup, NULL);
}
