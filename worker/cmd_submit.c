/*
 * cmd_submit.c - `zimage submit --config FILE --prompt TEXT [...] [--wait]`: enqueues one
 * job and records it as `queued`.
 *
 * Order: the job is validated with the worker's own rules (a job the worker would refuse is
 * a usage error here, exit 2), recorded in Redis as `queued` (hash reset + event) BEFORE it
 * is produced - so a fast worker can never find it unknown - then produced with key =
 * job_id and acks=all, and its id printed. With --wait the command then waits for the final
 * state, prints the job hash (JSON, fresh URL) and exits 0 only when it succeeded.
 * A resubmitted id starts over: its hash and cancel flag are cleared.
 */
#include "cli_util.h"
#include "job.h"
#include "jobcli.h"
#include "kafka.h"
#include "log.h"
#include "worker.h"
#include "zi_err.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Resets the hash and cancel flag, writes the queued hash and its event, atomically. */
static const char zi_submit_lua[] =
    "redis.call('DEL', KEYS[1], KEYS[2])\n"
    "redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'queued_at', ARGV[2],\n"
    "           'attempt', '0', 'width', ARGV[4], 'height', ARGV[5], 'steps', ARGV[6])\n"
    "if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'seed', ARGV[7]) end\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
    "redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'job_id', ARGV[3],\n"
    "           'status', 'queued', 'worker', '')\n"
    "return 1\n";

static void zi_submit_usage(FILE *f)
{
    fprintf(f,
            "usage: zimage submit --config FILE --prompt TEXT [--job-id ID]\n"
            "                     [--negative-prompt TEXT] [--width W] [--height H] [--steps N]\n"
            "                     [--guidance G] [--seed S] [--deadline-ms MS] [--wait]\n"
            "                     [--timeout SECONDS]\n"
            "\n"
            "Produces one job message to kafka.topic (key = job id), records it in Redis as\n"
            "`queued` first, and prints the job id. Fields left out take the worker's\n"
            "generation defaults.\n"
            "\n"
            "options:\n"
            "  --config FILE          the YAML configuration (kafka.*, redis.*, s3.*)\n"
            "  --prompt TEXT          the prompt (required; may be empty)\n"
            "  --job-id ID            [A-Za-z0-9][A-Za-z0-9._-]{0,127}, no '..' (default: random)\n"
            "  --negative-prompt TEXT used when guidance > 0\n"
            "  --width W, --height H  multiples of 16 within the configured limits\n"
            "  --steps N              1..generation.max_steps\n"
            "  --guidance G           0..20\n"
            "  --seed S               0..2^64-1 (default: the worker draws one)\n"
            "  --deadline-ms MS       unix ms; picked up later, the job fails as `expired`\n"
            "  --wait                 wait for the final state, print the job hash, exit 0\n"
            "                         only when it succeeded\n"
            "  --timeout SECONDS      give up waiting after this long (exit 1)\n"
            "  --help                 show this help\n");
}

/* A whole decimal integer in [lo, hi]. */
static int zi_submit_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !end || *end || end == s || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int zi_cmd_submit(int argc, char **argv)
{
    const char *config = NULL, *prompt = NULL, *job_id = NULL, *negative = NULL;
    const char *width = NULL, *height = NULL, *steps = NULL, *guidance = NULL, *seed = NULL;
    const char *deadline = NULL;
    int wait = 0;
    double timeout = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            zi_submit_usage(stdout);
            return 0;
        }
        if (strcmp(a, "--wait") == 0) {
            wait = 1;
            continue;
        }
        static const char *const opts[] = {
            "--config", "--prompt",   "--job-id", "--negative-prompt", "--width",  "--height",
            "--steps",  "--guidance", "--seed",   "--deadline-ms",     "--timeout"};
        const char **dst[] = {&config, &prompt,   &job_id, &negative, &width, &height,
                              &steps,  &guidance, &seed,   &deadline, NULL};
        size_t k = 0;
        const char *v = NULL;
        int r = 0;
        while (k < sizeof opts / sizeof opts[0] &&
               (r = zi_cli_opt(argc, argv, &i, opts[k], &v)) == 0)
            k++;
        if (k == sizeof opts / sizeof opts[0])
            return zi_cli_usage_error("submit", "unknown argument %s", a);
        if (r < 0)
            return zi_cli_usage_error("submit", "missing value after %s", a);
        if (dst[k]) {
            *dst[k] = v;
        } else {
            char *end = NULL;
            errno = 0;
            timeout = strtod(v, &end);
            if (errno || !end || *end || end == v || !(timeout >= 0 && timeout <= 1e7))
                return zi_cli_usage_error("submit", "--timeout: not a number of seconds: %s", v);
        }
    }
    if (!config)
        return zi_cli_usage_error("submit", "--config FILE is required");
    if (!prompt)
        return zi_cli_usage_error("submit", "--prompt TEXT is required");
    char idbuf[33];
    if (!job_id) {
        if (zi_job_new_id(idbuf) != ZI_OK) {
            fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
            return 1;
        }
        job_id = idbuf;
    }

    /* The message: only the fields given, so the worker's defaults apply to the rest. */
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "job_id", job_id) ||
        !cJSON_AddStringToObject(o, "prompt", prompt) ||
        (negative && !cJSON_AddStringToObject(o, "negative_prompt", negative))) {
        cJSON_Delete(o);
        fprintf(stderr, "zimage: error: out of memory\n");
        return 1;
    }
    const char *ints[] = {width, height, steps};
    const char *names[] = {"width", "height", "steps"};
    for (int k = 0; k < 3; k++) {
        long long v;
        if (!ints[k])
            continue;
        if (zi_submit_int(ints[k], 0, 1 << 30, &v) != 0) {
            cJSON_Delete(o);
            fprintf(stderr, "zimage: error: --%s: not an integer: %s\n", names[k], ints[k]);
            return 2;
        }
        cJSON_AddNumberToObject(o, names[k], (double)v);
    }
    if (guidance) {
        char *end = NULL;
        errno = 0;
        double g = strtod(guidance, &end);
        if (errno || !end || *end || end == guidance || !isfinite(g)) { /* JSON has no NaN */
            cJSON_Delete(o);
            return zi_cli_usage_error("submit", "--guidance: not a number: %s", guidance);
        }
        cJSON_AddNumberToObject(o, "guidance_scale", g);
    }
    if (seed)
        cJSON_AddStringToObject(o, "seed", seed); /* strings keep all 64 bits */
    if (deadline) {
        long long v;
        if (zi_submit_int(deadline, 0, (1LL << 53) - 1, &v) != 0) {
            cJSON_Delete(o);
            return zi_cli_usage_error("submit", "--deadline-ms: not a unix time in ms: %s",
                                      deadline);
        }
        cJSON_AddNumberToObject(o, "deadline_ms", (double)v);
    }
    char *payload = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!payload) {
        fprintf(stderr, "zimage: error: out of memory\n");
        return 1;
    }

    zi_wconfig cfg = {0};
    zi_rstatus *rs = NULL;
    rd_kafka_t *producer = NULL;
    zi_job job = {0};
    int code = 1;
    if (zi_wconfig_load(&cfg, config, zi_log_warn_cb, NULL) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        code = 2;
        goto out;
    }
    zi_job_limits lim;
    zi_worker_job_limits(&cfg, &lim);
    if (zi_job_parse(payload, strlen(payload), &lim, &job) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", job.error[0] ? job.error : zi_errmsg());
        code = 2;
        goto out;
    }
    if (zi_jobcli_redis(&cfg, &rs) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        code = 2;
        goto out;
    }

    char kjob[512], kcancel[512], kevents[512], ttl[32], now[32], w[16], h[16], st[16], sd[32];
    if (zi_rstatus_key(rs, "job:", job_id, kjob, sizeof kjob) != ZI_OK ||
        zi_rstatus_key(rs, "cancel:", job_id, kcancel, sizeof kcancel) != ZI_OK ||
        zi_rstatus_key(rs, "events", "", kevents, sizeof kevents) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        goto out;
    }
    snprintf(ttl, sizeof ttl, "%lld", (long long)cfg.redis_job_ttl_s);
    snprintf(now, sizeof now, "%lld", (long long)zi_rstatus_now_ms());
    snprintf(w, sizeof w, "%d", job.width);
    snprintf(h, sizeof h, "%d", job.height);
    snprintf(st, sizeof st, "%d", job.steps);
    if (job.has_seed)
        snprintf(sd, sizeof sd, "%llu", (unsigned long long)job.seed);
    else
        sd[0] = '\0';
    const char *args[] = {"EVAL", zi_submit_lua, "3", kjob, kcancel, kevents, ttl,
                          now,    job_id,        w,   h,    st,      sd};
    void *reply = NULL;
    int rc;
    for (int tries = 0;; tries++) {
        rc = zi_rstatus_command(rs, (int)(sizeof args / sizeof args[0]), args, &reply);
        if (rc != ZI_ETRANSIENT || tries >= 25)
            break;
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }
    zi_rstatus_reply_free(reply);
    if (rc != ZI_OK) {
        fprintf(stderr, "zimage: error: recording the job as queued: %s\n", zi_errmsg());
        goto out;
    }

    char client_id[300];
    snprintf(client_id, sizeof client_id, "zimage-submit-%s", cfg.worker_id);
    if (zi_kafka_producer_new(&cfg, client_id, &producer) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        code = 2;
        goto out;
    }
    rc = zi_kafka_wait_ready(producer, cfg.kafka_topic, 10000);
    if (rc == ZI_OK)
        rc = zi_kafka_produce_sync(producer, cfg.kafka_topic, job_id, strlen(job_id), payload,
                                   strlen(payload), NULL, 0);
    if (rc != ZI_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", zi_errmsg());
        /* Not enqueued: do not leave a `queued` job that no worker will ever see. */
        const char *del[] = {"DEL", kjob};
        if (zi_rstatus_command(rs, 2, del, &reply) == ZI_OK)
            zi_rstatus_reply_free(reply);
        fprintf(stderr, "zimage: error: job %s not enqueued: %s\n", job_id, msg);
        goto out;
    }
    printf("%s\n", job_id);
    fflush(stdout);
    if (!wait) {
        code = 0;
        goto out;
    }
    zi_rstatus_hash hh = {0};
    if (zi_jobcli_wait(rs, job_id, timeout, &hh) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        goto out;
    }
    if (zi_jobcli_print(&cfg, &hh, stdout) == ZI_OK) {
        const char *s = zi_rstatus_hash_get(&hh, "status");
        code = s && strcmp(s, "succeeded") == 0 ? 0 : 1;
    } else {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
    }
    zi_rstatus_hash_free(&hh);
out:
    if (producer) {
        rd_kafka_flush(producer, 5000);
        rd_kafka_destroy(producer);
    }
    zi_job_clear(&job);
    zi_rstatus_destroy(rs);
    zi_wconfig_free(&cfg);
    free(payload);
    return code;
}
