/*
 * test_kafka_stats.c - consumer lag from librdkafka statistics JSON (worker/kafka.c), the
 * worker's job limits from a configuration, and the message copy helpers.
 */
#include "job.h"
#include "kafka.h"
#include "wconfig.h"
#include "worker.h"
#include "zi_err.h"
#include "zi_test.h"

#include <stdlib.h>
#include <string.h>

/* Shaped like librdkafka 2.0 statistics (trimmed): partition "-1" is the internal UA
 * partition, consumer_lag -1 means unknown (not assigned / no committed offset yet). */
static const char *stats = "{\"name\":\"rdkafka#consumer-1\",\"type\":\"consumer\",\"topics\":{"
                           "\"zimage.jobs\":{\"topic\":\"zimage.jobs\",\"partitions\":{"
                           "\"0\":{\"partition\":0,\"consumer_lag\":3,\"hi_offset\":10},"
                           "\"1\":{\"partition\":1,\"consumer_lag\":0},"
                           "\"2\":{\"partition\":2,\"consumer_lag\":-1},"
                           "\"3\":{\"partition\":3,\"consumer_lag\":7},"
                           "\"-1\":{\"partition\":-1,\"consumer_lag\":-1}}},"
                           "\"other\":{\"topic\":\"other\",\"partitions\":{"
                           "\"0\":{\"partition\":0,\"consumer_lag\":100}}}}}";

static void test_stats_lag(void **state)
{
    (void)state;
    int64_t lag = -5;
    int n = -5;
    assert_int_equal(zi_kafka_stats_lag(stats, strlen(stats), "zimage.jobs", &lag, &n), ZI_OK);
    assert_int_equal(lag, 10);
    assert_int_equal(n, 3);
    assert_int_equal(zi_kafka_stats_lag(stats, strlen(stats), NULL, &lag, &n), ZI_OK);
    assert_int_equal(lag, 110);
    assert_int_equal(n, 4);
    assert_int_equal(zi_kafka_stats_lag(stats, strlen(stats), "absent", &lag, &n), ZI_OK);
    assert_int_equal(lag, 0);
    assert_int_equal(n, 0);
    /* the topic's name is matched exactly: its dead-letter topic (a longer name it is a
     * prefix of) and a prefix of it are other topics */
    static const char *dlq = "{\"topics\":{"
                             "\"zimage.jobs.dlq\":{\"partitions\":{\"0\":{\"consumer_lag\":50}}},"
                             "\"zimage.jobs\":{\"partitions\":{\"0\":{\"consumer_lag\":4}}},"
                             "\"zimage\":{\"partitions\":{\"0\":{\"consumer_lag\":600}}}}}";
    assert_int_equal(zi_kafka_stats_lag(dlq, strlen(dlq), "zimage.jobs", &lag, &n), ZI_OK);
    assert_int_equal(lag, 4);
    assert_int_equal(n, 1);
    assert_int_equal(zi_kafka_stats_lag(dlq, strlen(dlq), "zimage.jobs.dlq", &lag, &n), ZI_OK);
    assert_int_equal(lag, 50);
    assert_int_equal(n, 1);
}

static void test_stats_bad(void **state)
{
    (void)state;
    int64_t lag;
    int n;
    assert_int_equal(zi_kafka_stats_lag("nope", 4, NULL, &lag, &n), ZI_EFORMAT);
    assert_int_equal(zi_kafka_stats_lag("{\"a\":1}", 7, NULL, &lag, &n), ZI_EFORMAT);
    assert_int_equal(zi_kafka_stats_lag("[]", 2, NULL, &lag, &n), ZI_EFORMAT);
    /* "topics" must be an object */
    assert_int_equal(zi_kafka_stats_lag("{\"topics\":[]}", 13, NULL, &lag, &n), ZI_EFORMAT);
    assert_int_equal(zi_kafka_stats_lag("{\"topics\":1}", 12, NULL, &lag, &n), ZI_EFORMAT);
    /* a truncated document is refused, never read past its length */
    assert_int_equal(zi_kafka_stats_lag(stats, 40, NULL, &lag, &n), ZI_EFORMAT);
}

/* cfg = the defaults with the YAML text y applied. */
static void zi_cfg_from(zi_wconfig *cfg, const char *y)
{
    assert_int_equal(zi_wconfig_init_defaults(cfg), ZI_OK);
    assert_int_equal(zi_wconfig_parse_buffer(cfg, y, strlen(y), "test"), ZI_OK);
}

static void test_job_limits(void **state)
{
    (void)state;
    zi_wconfig cfg = {0};
    zi_cfg_from(&cfg,
                "generation:\n  width: 512\n  max_steps: 12\nkafka:\n  max_message_bytes: 2048\n");
    zi_job_limits lim;
    zi_worker_job_limits(&cfg, &lim);
    assert_int_equal(lim.def_width, 512);
    assert_int_equal(lim.def_height, 1024);
    assert_int_equal(lim.max_steps, 12);
    assert_int_equal(lim.max_message_bytes, 2048);
    zi_job job = {0};
    const char *t = "{\"job_id\":\"x\",\"prompt\":\"p\",\"steps\":13}";
    assert_int_equal(zi_job_parse(t, strlen(t), &lim, &job), ZI_EINVAL);
    assert_string_equal(job.error_code, "invalid_job");
    zi_job_clear(&job);
    t = "{\"job_id\":\"x\",\"prompt\":\"p\"}";
    assert_int_equal(zi_job_parse(t, strlen(t), &lim, &job), ZI_OK);
    assert_int_equal(job.width, 512);
    assert_int_equal(job.steps, 8);
    zi_job_clear(&job);
    zi_wconfig_free(&cfg);
}

static void test_kafka_conf_property_error(void **state)
{
    (void)state;
    zi_wconfig cfg = {0};
    zi_cfg_from(&cfg, "kafka:\n  properties:\n    no.such.property: \"1\"\n");
    rd_kafka_conf_t *conf = NULL;
    assert_int_equal(zi_kafka_conf_new(&cfg, "t", &conf), ZI_EINVAL);
    assert_null(conf);
    assert_non_null(strstr(zi_errmsg(), "kafka.properties.no.such.property"));
    zi_wconfig_free(&cfg);

    zi_cfg_from(&cfg, "kafka:\n  properties:\n    session.timeout.ms: \"6000\"\n");
    assert_int_equal(zi_kafka_conf_new(&cfg, "t", &conf), ZI_OK);
    char v[64];
    size_t vn = sizeof v;
    assert_int_equal(rd_kafka_conf_get(conf, "session.timeout.ms", v, &vn), RD_KAFKA_CONF_OK);
    assert_string_equal(v, "6000");
    rd_kafka_conf_destroy(conf);
    zi_wconfig_free(&cfg);
}

/* Once the (idempotent) producer has hit a fatal error, every produce fails: that is
 * ZI_EBACKEND (the worker stops and is restarted), not a permanent refusal of this one
 * message (ZI_EINVAL, on which the worker cuts a DLQ copy) nor a transient error (on which it
 * retries for ever). librdkafka's rd_kafka_test_fatal_error() raises one; no broker is
 * needed (the bootstrap address is never reached). */
static void test_producer_fatal_error(void **state)
{
    (void)state;
    zi_wconfig cfg = {0};
    zi_cfg_from(&cfg, "kafka:\n  bootstrap_servers: \"127.0.0.1:1\"\n");
    rd_kafka_t *p = NULL;
    assert_int_equal(zi_kafka_producer_new(&cfg, "t", &p), ZI_OK);
    assert_int_equal(
        rd_kafka_test_fatal_error(p, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "test"),
        RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(zi_kafka_produce_sync(p, "zimage.jobs.dlq", "k", 1, "v", 1, NULL, 0),
                     ZI_EBACKEND);
    assert_non_null(strstr(zi_errmsg(), "zimage.jobs.dlq"));
    rd_kafka_destroy(p);
    zi_wconfig_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_lag),
        cmocka_unit_test(test_stats_bad),
        cmocka_unit_test(test_job_limits),
        cmocka_unit_test(test_kafka_conf_property_error),
        cmocka_unit_test(test_producer_fatal_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
