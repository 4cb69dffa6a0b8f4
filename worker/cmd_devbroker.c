/*
 * cmd_devbroker.c - `zimage devbroker`: a development Kafka broker for tests and demos.
 *
 * It serves librdkafka's mock cluster (rdkafka_mock.h) on 127.0.0.1, so other processes
 * (the worker, `zimage submit`, kcat) talk the real Kafka wire protocol to it. It is a
 * STAND-IN for tests and local demos only: nothing persists, there is no TLS, SASL,
 * CreateTopics or ListGroups, and ports are picked at random by librdkafka 2.0.2 - so the
 * bootstrap address is written to a file that clients read. Production runs against real
 * Kafka (or any Kafka-protocol broker).
 *
 * Reference: librdkafka 2.0.2 rdkafka_mock.h; /work/shared/docs/services.md (timings).
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "cli_util.h"

#define ZI_DEVBROKER_MAX_TOPICS 64
#define ZI_DEVBROKER_MAX_BROKERS 16
#define ZI_DEVBROKER_MAX_PARTITIONS 1024

#define ZI_DEVBROKER_MAX_NAME 249 /* Kafka's limit on topic names */

typedef struct zi_devbroker_topic {
    char name[ZI_DEVBROKER_MAX_NAME + 1];
    int partitions;
} zi_devbroker_topic;

/* Set by the signal handler; the main loop polls it every 100 ms. */
static volatile sig_atomic_t zi_devbroker_stop;

static void zi_devbroker_on_signal(int sig)
{
    (void)sig;
    zi_devbroker_stop = 1;
}

static void zi_devbroker_usage(FILE *f)
{
    fprintf(f,
            "usage: zimage devbroker [--topic NAME[:PARTITIONS]]... [--brokers N]\n"
            "                        [--bootstrap-file FILE] [--quiet]\n"
            "\n"
            "Development Kafka broker: serves librdkafka's mock cluster on 127.0.0.1 until\n"
            "SIGTERM or SIGINT. A stand-in for tests and local demos only (no persistence,\n"
            "no TLS/SASL); production uses a real Kafka cluster.\n"
            "\n"
            "options:\n"
            "  --topic NAME[:P]       create topic NAME with P partitions (default 4); repeatable\n"
            "  --brokers N            number of mock brokers, 1..%d (default 1)\n"
            "  --bootstrap-file FILE  write the bootstrap address (host:port,...) to FILE\n"
            "  --quiet                do not print the bootstrap address on stdout\n"
            "  --help                 show this help\n"
            "\n"
            "Any topic a client asks about is also created on demand (4 partitions).\n",
            ZI_DEVBROKER_MAX_BROKERS);
}

/* Writes `text` + '\n' to path through a temporary file and rename(), so a reader never
 * sees a half-written address. */
static int zi_devbroker_write_file(const char *path, const char *text)
{
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    int ok = fprintf(f, "%s\n", text) > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int zi_cmd_devbroker(int argc, char **argv)
{
    zi_devbroker_topic topics[ZI_DEVBROKER_MAX_TOPICS];
    int n_topics = 0;
    int n_brokers = 1;
    int quiet = 0;
    const char *bootstrap_file = NULL;

    static const char *const opts[] = {"--topic", "--brokers", "--bootstrap-file"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int r;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            zi_devbroker_usage(stdout);
            return 0;
        } else if (strcmp(a, "--quiet") == 0) {
            quiet = 1;
        } else if ((r = zi_cli_opt_of(argc, argv, &i, opts, sizeof opts / sizeof opts[0], &a,
                                      &v)) != 0) {
            if (r < 0)
                return zi_cli_usage_error("devbroker", "devbroker: %s needs a value", a);
            if (strcmp(a, "--brokers") == 0) {
                if (zi_cli_parse_int(v, 1, ZI_DEVBROKER_MAX_BROKERS, &n_brokers) != 0)
                    return zi_cli_usage_error("devbroker", "devbroker: --brokers '%s': want 1..%d",
                                              v, ZI_DEVBROKER_MAX_BROKERS);
            } else if (strcmp(a, "--bootstrap-file") == 0) {
                bootstrap_file = v;
            } else {
                if (n_topics == ZI_DEVBROKER_MAX_TOPICS)
                    return zi_cli_usage_error("devbroker", "devbroker: more than %d topics",
                                              ZI_DEVBROKER_MAX_TOPICS);
                int parts = 4;
                const char *colon = strrchr(v, ':');
                size_t name_len = colon ? (size_t)(colon - v) : strlen(v);
                if (colon &&
                    zi_cli_parse_int(colon + 1, 1, ZI_DEVBROKER_MAX_PARTITIONS, &parts) != 0)
                    return zi_cli_usage_error("devbroker",
                                              "devbroker: --topic %s: partitions '%s': want 1..%d",
                                              v, colon + 1, ZI_DEVBROKER_MAX_PARTITIONS);
                if (name_len == 0 || name_len > ZI_DEVBROKER_MAX_NAME)
                    return zi_cli_usage_error(
                        "devbroker", "devbroker: --topic '%s': want a name of 1..%d characters", v,
                        ZI_DEVBROKER_MAX_NAME);
                memcpy(topics[n_topics].name, v, name_len);
                topics[n_topics].name[name_len] = '\0';
                topics[n_topics].partitions = parts;
                n_topics++;
            }
        } else {
            return zi_cli_usage_error("devbroker", "devbroker: unknown option '%s'", a);
        }
    }

    /* Handlers first, so a SIGTERM that arrives during start-up still ends us cleanly. */
    static const int stop_sigs[] = {SIGTERM, SIGINT};
    zi_cli_on_signals(zi_devbroker_on_signal, stop_sigs, sizeof stop_sigs / sizeof stop_sigs[0]);

    int rc = 1;
    char errstr[512];
    rd_kafka_t *rk = NULL;
    rd_kafka_mock_cluster_t *mc = NULL;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The handle only hosts the mock cluster and never connects anywhere itself, so
     * log_level 4 (warning) hides its notice about having no bootstrap.servers. */
    if (rd_kafka_conf_set(conf, "client.id", "zimage-devbroker", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "zimage: error: devbroker: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "zimage: error: devbroker: rd_kafka_new: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    conf = NULL; /* owned by rk now */

    mc = rd_kafka_mock_cluster_new(rk, n_brokers);
    if (!mc) {
        fprintf(stderr, "zimage: error: devbroker: cannot create the mock cluster\n");
        goto done;
    }
    for (int t = 0; t < n_topics; t++) {
        rd_kafka_resp_err_t err =
            rd_kafka_mock_topic_create(mc, topics[t].name, topics[t].partitions, 1);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "zimage: error: devbroker: topic %s: %s\n", topics[t].name,
                    rd_kafka_err2str(err));
            goto done;
        }
    }

    const char *bootstraps = rd_kafka_mock_cluster_bootstraps(mc);
    if (bootstrap_file && zi_devbroker_write_file(bootstrap_file, bootstraps) != 0) {
        fprintf(stderr, "zimage: error: devbroker: cannot write %s: %s\n", bootstrap_file,
                strerror(errno));
        goto done;
    }
    if (!quiet) {
        printf("%s\n", bootstraps);
        fflush(stdout);
    }

    while (!zi_devbroker_stop)
        rd_kafka_poll(rk, 100);
    rc = 0;

done:
    if (mc)
        rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
