/*
 * cmd_worker.c - `zimage worker --config FILE`: the Kafka -> pipeline -> S3 -> Redis daemon.
 *
 * Exit status: 0 after a clean drain (SIGTERM/SIGINT), 2 on a usage or configuration error
 * (the message names the key), 1 when start-up fails (model, HTTP port) or the consumer
 * hits a fatal error. See worker.h and docs/worker.md.
 */
#include "cli_util.h"
#include "kafka.h"
#include "log.h"
#include "wconfig.h"
#include "worker.h"
#include "zi_err.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

/* 1 on the first SIGTERM/SIGINT (drain), 2 on the second (stop the job now). */
static volatile sig_atomic_t zi_worker_stop;

static void zi_worker_on_signal(int sig)
{
    (void)sig;
    if (zi_worker_stop < 2)
        zi_worker_stop++;
}

static void zi_worker_usage(FILE *f)
{
    fprintf(f, "usage: zimage worker --config FILE [--print-config | --check]\n"
               "\n"
               "Consumes jobs from Kafka (kafka.topic), generates each image, uploads the PNG to\n"
               "S3 and records the job in Redis; at least once, one job at a time. Every config\n"
               "key can be overridden with ZIMAGE_<SECTION>_<KEY>; secrets come from the\n"
               "environment only (ZIMAGE_S3_ACCESS_KEY, ZIMAGE_S3_SECRET_KEY,\n"
               "ZIMAGE_REDIS_PASSWORD). SIGTERM/SIGINT drains: no new job, the current one\n"
               "finishes within worker.drain_timeout_s or is left uncommitted; a second signal\n"
               "stops it at once.\n"
               "\n"
               "options:\n"
               "  --config FILE    the YAML configuration (docs/contract.md)\n"
               "  --print-config   print the effective configuration (secrets redacted), exit\n"
               "  --check          try Redis, Kafka (topics), S3 (credentials, bucket), the\n"
               "                   model (every tensor, no weight read) and the device once,\n"
               "                   a line each; write nothing, take no job; exit 0 when all\n"
               "                   pass, 1 when one fails\n"
               "  --help           show this help\n");
}

int zi_cmd_worker(int argc, char **argv)
{
    const char *config = NULL;
    int print = 0, check = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            zi_worker_usage(stdout);
            return 0;
        } else if (strcmp(a, "--print-config") == 0) {
            print = 1;
        } else if (strcmp(a, "--check") == 0) {
            check = 1;
        } else if ((r = zi_cli_opt(argc, argv, &i, "--config", &config)) != 0) {
            if (r < 0)
                return zi_cli_usage_error("worker", "--config needs a value");
        } else {
            return zi_cli_usage_error("worker", "unknown argument %s", a);
        }
    }
    if (!config)
        return zi_cli_usage_error("worker", "--config FILE is required");
    if (print && check)
        return zi_cli_usage_error("worker", "give one of --print-config and --check");

    zi_wconfig cfg = {0};
    if (zi_wconfig_load(&cfg, config, zi_log_warn_cb, NULL) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        return 2;
    }
    if (print) {
        int rc = zi_wconfig_dump(&cfg, stdout);
        zi_wconfig_free(&cfg);
        return rc == ZI_OK ? 0 : 1;
    }
    zi_log_format fmt = ZI_LOG_TEXT;
    zi_log_level lvl = ZI_LOG_INFO;
    if (zi_log_format_parse(cfg.logging_format, &fmt) != ZI_OK ||
        zi_log_level_parse(cfg.logging_level, &lvl) != ZI_OK) {
        fprintf(stderr, "zimage: error: logging: %s\n", zi_errmsg());
        zi_wconfig_free(&cfg);
        return 2;
    }
    zi_log_setup(fmt, lvl, cfg.worker_id, NULL);
    /* kafka.properties are checked by librdkafka itself: a refused one is a config error
     * (exit 2, naming the key) like any other, not a run-time failure */
    rd_kafka_conf_t *kconf = NULL;
    if (zi_kafka_conf_new(&cfg, cfg.worker_id, &kconf) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        zi_wconfig_free(&cfg);
        return 2;
    }
    rd_kafka_conf_destroy(kconf);

    if (check) {
        signal(SIGPIPE, SIG_IGN);
        printf("%-7s %-4s %s (worker.id %s)\n", "config", "ok", config, cfg.worker_id);
        int fails = zi_worker_check(&cfg, stdout);
        if (fails)
            printf("check: %d failed\n", fails);
        else
            printf("check: all passed\n");
        zi_wconfig_free(&cfg);
        return fails ? 1 : 0;
    }

    static const int stop_sigs[] = {SIGTERM, SIGINT};
    zi_cli_on_signals(zi_worker_on_signal, stop_sigs, sizeof stop_sigs / sizeof stop_sigs[0]);
    /* A closed HTTP peer must not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);

    int rc = zi_worker_run(&cfg, &zi_worker_stop);
    if (rc != ZI_OK)
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
    zi_wconfig_free(&cfg);
    return rc == ZI_OK ? 0 : 1;
}
