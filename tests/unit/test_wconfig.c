/*
 * test_wconfig.c - the worker configuration: defaults, YAML parsing, every error path
 * (unknown key, wrong type, out of range, syntax, structure), environment overrides,
 * kafka.properties merging, secrets from the environment only, and redaction in the dump.
 */
#include "zi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wconfig.h"
#include "zi_err.h"

/* Parses yaml over defaults; returns the status (cfg freed by the caller via teardown). */
static int zi_parse(zi_wconfig *cfg, const char *yaml)
{
    assert_int_equal(zi_wconfig_init_defaults(cfg), ZI_OK);
    return zi_wconfig_parse_buffer(cfg, yaml, strlen(yaml), "t.yaml");
}

/* Expects a parse error whose message contains every given fragment. */
static void zi_expect_error(const char *yaml, const char *frag1, const char *frag2)
{
    zi_wconfig cfg;
    int rc = zi_parse(&cfg, yaml);
    if (rc != ZI_EFORMAT)
        fail_msg("expected ZI_EFORMAT for:\n%s\ngot %d (%s)", yaml, rc, zi_errmsg());
    if (frag1 && !strstr(zi_errmsg(), frag1))
        fail_msg("message '%s' lacks '%s'", zi_errmsg(), frag1);
    if (frag2 && !strstr(zi_errmsg(), frag2))
        fail_msg("message '%s' lacks '%s'", zi_errmsg(), frag2);
    zi_wconfig_free(&cfg);
}

static void test_defaults(void **state)
{
    (void)state;
    zi_wconfig c;
    assert_int_equal(zi_wconfig_init_defaults(&c), ZI_OK);
    assert_string_equal(c.model_path, "/models/Z-Image-Turbo");
    assert_string_equal(c.device_backend, "auto");
    assert_string_equal(c.device_weight_budget_mb, "");
    assert_int_equal(c.device_pin_limit_mb, 0);
    assert_int_equal(c.gen_width, 1024);
    assert_int_equal(c.gen_height, 1024);
    assert_int_equal(c.gen_steps, 8);
    assert_true(c.gen_guidance_scale == 0.0);
    assert_int_equal(c.gen_min_side, 64);
    assert_int_equal(c.gen_max_side, 4096);
    assert_int_equal(c.gen_max_pixels, 4194304);
    assert_int_equal(c.gen_max_steps, 50);
    assert_string_equal(c.kafka_bootstrap_servers, "127.0.0.1:9092");
    assert_string_equal(c.kafka_topic, "zimage.jobs");
    assert_string_equal(c.kafka_group_id, "zimage-workers");
    assert_string_equal(c.kafka_dlq_topic, "zimage.jobs.dlq");
    assert_string_equal(c.kafka_result_topic, "");
    assert_int_equal(c.kafka_max_message_bytes, 1048576);
    assert_int_equal(c.kafka_static_membership, 0);
    assert_int_equal(c.kafka_properties_n, 0);
    assert_string_equal(c.redis_url, "redis://127.0.0.1:6379/0");
    assert_string_equal(c.redis_key_prefix, "zimage:");
    assert_int_equal(c.redis_job_ttl_s, 604800);
    assert_string_equal(c.s3_endpoint, "http://127.0.0.1:7480");
    assert_string_equal(c.s3_public_endpoint, "");
    assert_string_equal(c.s3_region, "us-east-1");
    assert_string_equal(c.s3_bucket, "zimage");
    assert_string_equal(c.s3_key_template, "{job_id}.png");
    assert_int_equal(c.s3_path_style, 1);
    assert_int_equal(c.s3_presign_ttl_s, 3600);
    assert_int_equal(c.s3_retry_s, 60);
    assert_string_equal(c.s3_png_compression, "fast");
    char host[256];
    assert_int_equal(gethostname(host, sizeof host), 0);
    host[128] = '\0';
    assert_string_equal(c.worker_id, host);
    assert_string_equal(c.worker_http_listen, "0.0.0.0:9400");
    assert_int_equal(c.worker_heartbeat_s, 5);
    assert_int_equal(c.worker_max_attempts, 3);
    assert_int_equal(c.worker_drain_timeout_s, 120);
    assert_int_equal(c.worker_stall_timeout_s, -1); /* 600 s on a GPU, off on the CPU */
    assert_string_equal(c.logging_format, "text");
    assert_string_equal(c.s3_access_key, "");
    assert_string_equal(c.s3_secret_key, "");
    assert_string_equal(c.redis_password, "");
    assert_int_equal(zi_wconfig_validate(&c), ZI_OK);
    zi_wconfig_free(&c);
    zi_wconfig_free(&c); /* safe twice */
}

static void test_parse_values(void **state)
{
    (void)state;
    zi_wconfig c;
    const char *yaml = "# comment\n"
                       "model:\n  path: /m\n"
                       "device:\n  backend: cpu\n"
                       "generation:\n  width: 512\n  height: 256\n  guidance_scale: 3.5\n"
                       "kafka:\n  static_membership: yes\n  result_topic: res\n"
                       "  properties:\n    security.protocol: SASL_SSL\n    linger.ms: 5\n"
                       "redis:\n  key_prefix: \"zi:\"\n"
                       "s3:\n  path_style: false\n  public_endpoint:\n  png_compression: small\n"
                       "worker:\n  id: w-1\n"
                       "logging: {format: json}\n";
    assert_int_equal(zi_parse(&c, yaml), ZI_OK);
    assert_string_equal(c.model_path, "/m");
    assert_string_equal(c.device_backend, "cpu");
    assert_int_equal(c.gen_width, 512);
    assert_int_equal(c.gen_height, 256);
    assert_true(c.gen_guidance_scale == 3.5);
    assert_int_equal(c.gen_steps, 8); /* untouched */
    assert_int_equal(c.kafka_static_membership, 1);
    assert_string_equal(c.kafka_result_topic, "res");
    assert_int_equal(c.kafka_properties_n, 2);
    assert_string_equal(zi_wconfig_kafka_property(&c, "security.protocol"), "SASL_SSL");
    assert_string_equal(zi_wconfig_kafka_property(&c, "linger.ms"), "5");
    assert_null(zi_wconfig_kafka_property(&c, "acks"));
    assert_string_equal(c.redis_key_prefix, "zi:");
    assert_int_equal(c.s3_path_style, 0);
    assert_string_equal(c.s3_public_endpoint, "");
    assert_string_equal(c.s3_png_compression, "small");
    assert_string_equal(c.worker_id, "w-1");
    assert_string_equal(c.logging_format, "json");
    assert_int_equal(zi_wconfig_validate(&c), ZI_OK);
    zi_wconfig_free(&c);

    /* empty file, a bare document, empty sections: all defaults */
    assert_int_equal(zi_parse(&c, ""), ZI_OK);
    zi_wconfig_free(&c);
    assert_int_equal(zi_parse(&c, "---\n"), ZI_OK);
    zi_wconfig_free(&c);
    assert_int_equal(zi_parse(&c, "model:\nkafka:\n  properties: {}\n"), ZI_OK);
    assert_int_equal(c.kafka_properties_n, 0);
    zi_wconfig_free(&c);
}

static void test_parse_errors(void **state)
{
    (void)state;
    zi_expect_error("kafka:\n  topic: a\n  topik: x\n", "unknown key 'kafka.topik'", "line 3");
    zi_expect_error("kafak:\n  topic: x\n", "unknown key 'kafak'", "line 1");
    zi_expect_error("generation:\n  width: abc\n", "generation.width", "line 2");
    zi_expect_error("generation:\n  width: \"64\"\n", "generation.width", "expected an integer");
    zi_expect_error("generation:\n  width: 64.5\n", "generation.width", NULL);
    zi_expect_error("generation:\n  width:\n", "generation.width", NULL);
    zi_expect_error("generation:\n  width: 99999999999999999999\n", "generation.width", NULL);
    zi_expect_error("s3:\n  presign_ttl_s: 604801\n", "s3.presign_ttl_s", "out of range");
    zi_expect_error("s3:\n  retry_s: -1\n", "s3.retry_s", "out of range");
    zi_expect_error("worker:\n  heartbeat_s: 0\n", "worker.heartbeat_s", "out of range");
    zi_expect_error("device:\n  pin_limit_mb: auto\n", "device.pin_limit_mb",
                    "expected an integer");
    zi_expect_error("device:\n  pin_limit_mb: -1\n", "device.pin_limit_mb", "out of range");
    zi_expect_error("device:\n  pin_limit_mb: 99999999\n", "device.pin_limit_mb", "out of range");
    zi_expect_error("kafka:\n  max_message_bytes: 10\n", "kafka.max_message_bytes", "line 2");
    zi_expect_error("device:\n  backend: gpu\n", "device.backend", "auto|cuda|cpu");
    zi_expect_error("logging:\n  format: xml\n", "logging.format", NULL);
    zi_expect_error("s3:\n  png_compression: zlib9\n", "s3.png_compression", "fast|small");
    zi_expect_error("s3:\n  path_style: maybe\n", "s3.path_style", "true or false");
    zi_expect_error("s3:\n  path_style: \"true\"\n", "s3.path_style", NULL);
    zi_expect_error("generation:\n  guidance_scale: 25\n", "generation.guidance_scale",
                    "out of range");
    zi_expect_error("generation:\n  guidance_scale: nan\n", "generation.guidance_scale", NULL);
    zi_expect_error("generation:\n  guidance_scale: 1e999\n", "generation.guidance_scale", NULL);
    zi_expect_error("s3:\n  bucket:\n    a: b\n", "s3.bucket", "expected a single value");
    zi_expect_error("s3:\n  bucket: [a, b]\n", "s3.bucket", "list");
    zi_expect_error("kafka:\n  topic: \"\"\n", "kafka.topic", "must not be empty");
    zi_expect_error("kafka:\n  topic: a\n  topic: b\n", "kafka.topic", "duplicate");
    zi_expect_error("kafka:\n  topic: a\nkafka:\n  group_id: b\n", "kafka", "duplicate");
    zi_expect_error("s3:\n  secret_key: hunter2\n", "ZIMAGE_S3_SECRET_KEY", "line 2");
    zi_expect_error("redis:\n  password: hunter2\n", "ZIMAGE_REDIS_PASSWORD", NULL);
    zi_expect_error("generation:\n  width: &w 64\n  height: *w\n", "aliases", "line 3");
    zi_expect_error("kafka:\n  topic: \"unterminated\n", "t.yaml", "YAML");
    zi_expect_error("kafka: [\n", "kafka", NULL);
    /* a "\0" escape would cut the value short: refused, naming the key */
    zi_expect_error("s3:\n  key_template: \"{job_id}\\0.png\"\n", "s3.key_template", "NUL");
    zi_expect_error("kafka:\n  properties:\n    client.id: \"a\\0b\"\n",
                    "kafka.properties.client.id", "NUL");
    zi_expect_error("s3:\n  \"bucket\\0x\": b\n", "line 2", "NUL");
    zi_expect_error("kafka:\n  topic: a\n bad indent\n", "t.yaml", "line");
    zi_expect_error("hello\n", "must be a mapping", NULL);
    zi_expect_error("- a\n- b\n", "must be a mapping", NULL);
    zi_expect_error("kafka: 5\n", "kafka", "expected a mapping");
    zi_expect_error("model:\n  path: a\n---\nmodel:\n  path: b\n", "one YAML document", NULL);
    zi_expect_error("kafka:\n  properties: [a]\n", "kafka.properties", "expected a mapping");
    zi_expect_error("kafka:\n  properties:\n    a:\n      b: c\n", "kafka.properties.a", NULL);
    zi_expect_error("kafka:\n  properties:\n    a:\n", "kafka.properties.a", "expected a value");
    zi_expect_error("kafka:\n  properties:\n    a: 1\n    a: 2\n", "kafka.properties.a",
                    "duplicate");
    zi_expect_error("? [a]\n: b\n", "keys must be plain names", NULL);

    /* a string longer than its row allows */
    char big[400];
    memset(big, 'a', sizeof big);
    memcpy(big, "kafka:\n  topic: ", 16);
    big[sizeof big - 2] = '\n';
    big[sizeof big - 1] = '\0';
    zi_expect_error(big, "kafka.topic", "longer than");
    /* kafka.topic's limit is 249 bytes (Kafka's own): exactly 249 is taken, 250 is not */
    {
        char yaml[300];
        int h = snprintf(yaml, sizeof yaml, "kafka:\n  topic: ");
        memset(yaml + h, 't', 249);
        memcpy(yaml + h + 249, "\n", 2);
        zi_wconfig ok;
        if (zi_parse(&ok, yaml) != ZI_OK)
            fail_msg("a 249-byte kafka.topic was refused: %s", zi_errmsg());
        assert_int_equal(strlen(ok.kafka_topic), 249);
        zi_wconfig_free(&ok);
        memcpy(yaml + h + 249, "t\n", 3);
        zi_expect_error(yaml, "kafka.topic", "longer than 249 bytes");
    }

    /* NUL bytes and oversized buffers */
    zi_wconfig c;
    assert_int_equal(zi_wconfig_init_defaults(&c), ZI_OK);
    assert_int_equal(zi_wconfig_parse_buffer(&c, "model:\n\0", 8, "t"), ZI_EFORMAT);
    assert_int_equal(zi_wconfig_parse_buffer(&c, "", ZI_WCFG_MAX_FILE + 1, "t"), ZI_EFORMAT);
    zi_wconfig_free(&c);
}

static void zi_expect_invalid(const char *yaml, const char *frag)
{
    zi_wconfig c;
    assert_int_equal(zi_parse(&c, yaml), ZI_OK);
    int rc = zi_wconfig_validate(&c);
    if (rc != ZI_EFORMAT)
        fail_msg("expected validation error for:\n%s", yaml);
    if (!strstr(zi_errmsg(), frag))
        fail_msg("message '%s' lacks '%s'", zi_errmsg(), frag);
    zi_wconfig_free(&c);
}

static void test_validate(void **state)
{
    (void)state;
    zi_expect_invalid("generation:\n  width: 100\n", "generation.width");
    zi_expect_invalid("generation:\n  height: 8192\n", "generation.height");
    zi_expect_invalid("generation:\n  min_side: 72\n", "generation.min_side");
    zi_expect_invalid("generation:\n  min_side: 512\n  max_side: 256\n  width: 256\n"
                      "  height: 256\n",
                      "generation.min_side");
    zi_expect_invalid("generation:\n  max_pixels: 1000000\n", "generation.width");
    zi_expect_invalid("generation:\n  steps: 60\n", "generation.steps");
    zi_expect_invalid("redis:\n  url: http://x\n", "redis.url");
    zi_expect_invalid("redis:\n  url: redis://h:99999/0\n", "redis.url");
    zi_expect_invalid("redis:\n  url: rediss://h:6379/0\n", "TLS");
    zi_expect_invalid("redis:\n  key_prefix: \"a b\"\n", "redis.key_prefix");
    zi_expect_invalid("s3:\n  endpoint: 127.0.0.1:7480\n", "s3.endpoint");
    zi_expect_invalid("s3:\n  public_endpoint: cdn.example.com\n", "s3.public_endpoint");
    zi_expect_invalid("s3:\n  key_template: \"{uuid}.png\"\n", "s3.key_template");
    zi_expect_invalid("worker:\n  id: \"a b\"\n", "worker.id");
    zi_expect_invalid("worker:\n  http_listen: 9400\n", "worker.http_listen");
    zi_expect_invalid("worker:\n  http_listen: \"127.0.0.1:70000\"\n", "worker.http_listen");
    zi_expect_invalid("device:\n  weight_budget_mb: lots\n", "device.weight_budget_mb");
    zi_expect_invalid("device:\n  weight_budget_mb: \"-1\"\n", "device.weight_budget_mb");
    zi_expect_invalid("device:\n  weight_budget_mb: 4.5\n", "device.weight_budget_mb");
    zi_expect_invalid("device:\n  weight_budget_mb: 1234567890123456\n", "device.weight_budget_mb");
    /* and the values it takes: auto, resident, a number of MiB ("" = not set) */
    const char *ok[] = {"auto", "resident", "0", "6144", "\"\""};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char yaml[128];
        snprintf(yaml, sizeof yaml, "device:\n  weight_budget_mb: %s\n", ok[i]);
        zi_wconfig c;
        assert_int_equal(zi_parse(&c, yaml), ZI_OK);
        if (zi_wconfig_validate(&c) != ZI_OK)
            fail_msg("weight_budget_mb %s: %s", ok[i], zi_errmsg());
        zi_wconfig_free(&c);
    }
    /* the limits themselves are allowed: min_side^2 == max_pixels (1024x1024 in 1048576
     * pixels), and steps == max_steps */
    const char *edge[] = {"generation:\n  min_side: 1024\n  max_pixels: 1048576\n",
                          "generation:\n  steps: 50\n",
                          "generation:\n  steps: 12\n  max_steps: 12\n"};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
        zi_wconfig c;
        assert_int_equal(zi_parse(&c, edge[i]), ZI_OK);
        if (zi_wconfig_validate(&c) != ZI_OK)
            fail_msg("%s: %s", edge[i], zi_errmsg());
        zi_wconfig_free(&c);
    }
    zi_wconfig c;
    assert_int_equal(zi_parse(&c, "device:\n  pin_limit_mb: 8192\n"), ZI_OK);
    assert_int_equal(zi_wconfig_validate(&c), ZI_OK);
    assert_int_equal(c.device_pin_limit_mb, 8192);
    zi_wconfig_free(&c);
}

typedef struct {
    int n;
    char last[256];
} zi_warns;

static void zi_warn_cb(void *ud, const char *msg)
{
    zi_warns *w = ud;
    w->n++;
    snprintf(w->last, sizeof w->last, "%s", msg);
}

static void test_env_overrides(void **state)
{
    (void)state;
    zi_wconfig c;
    assert_int_equal(zi_parse(&c, "kafka:\n  topic: from-file\n  properties:\n    acks: all\n"
                                  "    linger.ms: 5\n"),
                     ZI_OK);
    char *env[] = {"PATH=/usr/bin",
                   "ZIMAGE_KAFKA_TOPIC=from-env",
                   "ZIMAGE_KAFKA_BOOTSTRAP_SERVERS=b1:9092,b2:9092",
                   "ZIMAGE_S3_PATH_STYLE=false",
                   "ZIMAGE_GENERATION_GUIDANCE_SCALE=1.5",
                   "ZIMAGE_GENERATION_MAX_PIXELS=1048576",
                   "ZIMAGE_WORKER_ID=env-worker",
                   "ZIMAGE_KAFKA_PROPERTIES=linger.ms=10, client.id=zi\\,x ,sasl.password=p=q",
                   "ZIMAGE_NOT_A_KEY=secret-looking-value",
                   "ZIMAGEX=ignored-silently",
                   NULL};
    zi_warns w = {0};
    assert_int_equal(zi_wconfig_apply_env(&c, env, zi_warn_cb, &w), ZI_OK);
    assert_string_equal(c.kafka_topic, "from-env"); /* env beats file */
    assert_string_equal(c.kafka_bootstrap_servers, "b1:9092,b2:9092");
    assert_int_equal(c.s3_path_style, 0);
    assert_true(c.gen_guidance_scale == 1.5);
    assert_int_equal(c.gen_max_pixels, 1048576);
    assert_string_equal(c.worker_id, "env-worker");
    assert_int_equal(c.kafka_properties_n, 4);
    assert_string_equal(zi_wconfig_kafka_property(&c, "acks"), "all");
    assert_string_equal(zi_wconfig_kafka_property(&c, "linger.ms"), "10"); /* merged: replaced */
    assert_string_equal(zi_wconfig_kafka_property(&c, "client.id"), "zi,x");
    assert_string_equal(zi_wconfig_kafka_property(&c, "sasl.password"), "p=q");
    assert_int_equal(w.n, 1);
    assert_non_null(strstr(w.last, "ZIMAGE_NOT_A_KEY"));
    assert_null(strstr(w.last, "secret-looking-value")); /* values are never echoed */
    zi_wconfig_free(&c);

    /* bad values name the variable */
    const char *bad[][2] = {
        {"ZIMAGE_GENERATION_STEPS=many", "ZIMAGE_GENERATION_STEPS"},
        {"ZIMAGE_S3_RETRY_S=999999", "ZIMAGE_S3_RETRY_S"},
        {"ZIMAGE_DEVICE_BACKEND=tpu", "ZIMAGE_DEVICE_BACKEND"},
        {"ZIMAGE_KAFKA_STATIC_MEMBERSHIP=2", "ZIMAGE_KAFKA_STATIC_MEMBERSHIP"},
        {"ZIMAGE_KAFKA_PROPERTIES=novalue", "ZIMAGE_KAFKA_PROPERTIES"},
        {"ZIMAGE_KAFKA_PROPERTIES==v", "ZIMAGE_KAFKA_PROPERTIES"},
        {"ZIMAGE_KAFKA_TOPIC=", "ZIMAGE_KAFKA_TOPIC"},
        /* the configuration is YAML text: raw bytes would not survive --print-config */
        {"ZIMAGE_MODEL_PATH=/models/\xe9t\xe9", "ZIMAGE_MODEL_PATH: not valid UTF-8"},
        {"ZIMAGE_KAFKA_PROPERTIES=a b=1", "'a b' is not a property name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(zi_wconfig_init_defaults(&c), ZI_OK);
        char *e[] = {(char *)bad[i][0], NULL};
        int rc = zi_wconfig_apply_env(&c, e, NULL, NULL);
        if (rc != ZI_EFORMAT || !strstr(zi_errmsg(), bad[i][1]))
            fail_msg("%s: rc %d, message '%s'", bad[i][0], rc, zi_errmsg());
        zi_wconfig_free(&c);
    }
}

/* Every key the dump prints has the ZIMAGE_<SECTION>_<KEY> variable the contract names. */
static void test_every_key_has_its_env_var(void **state)
{
    (void)state;
    zi_wconfig c;
    assert_int_equal(zi_wconfig_init_defaults(&c), ZI_OK);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_int_equal(zi_wconfig_dump(&c, f), ZI_OK);
    fclose(f);
    zi_wconfig_free(&c);

    char *envs[64];
    int n = 0;
    char section[32] = "";
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#')
            continue;
        if (line[0] != ' ') {
            snprintf(section, sizeof section, "%.*s", (int)strcspn(line, ":"), line);
            continue;
        }
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)strcspn(line + 2, ":"), line + 2);
        if (strcmp(key, "properties") == 0)
            continue;
        char *val = strchr(line + 2, ':') + 2;
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"') { /* strip the dump's quotes */
            val++;
            vl -= 2;
        }
        char *e = malloc(256);
        int m = snprintf(e, 256, "ZIMAGE_%s_%s=%.*s", section, key, (int)vl, val);
        for (int i = 7; i < m && e[i] != '='; i++)
            e[i] = (char)(e[i] >= 'a' && e[i] <= 'z' ? e[i] - 32 : e[i]);
        assert_true(n < 63);
        envs[n++] = e;
    }
    envs[n] = NULL;
    free(buf);
    assert_true(n >= 38); /* the contract's 35 scalar keys (+ logging.level, weight_budget_mb,
                             pin_limit_mb, png_compression) */

    zi_warns w = {0};
    assert_int_equal(zi_wconfig_init_defaults(&c), ZI_OK);
    int rc = zi_wconfig_apply_env(&c, envs, zi_warn_cb, &w);
    if (rc != ZI_OK)
        fail_msg("env round trip failed: %s", zi_errmsg());
    if (w.n != 0)
        fail_msg("a key's variable is not recognised: %s", w.last);
    assert_int_equal(zi_wconfig_validate(&c), ZI_OK);
    zi_wconfig_free(&c);
    for (int i = 0; i < n; i++)
        free(envs[i]);
}

static char *zi_dump(const zi_wconfig *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(zi_wconfig_dump(c, f), ZI_OK);
    fclose(f);
    return buf;
}

static void test_secrets(void **state)
{
    (void)state;
    zi_wconfig c;
    /* ZIMAGE_* wins over AWS_*, whatever the order */
    char *env1[] = {"AWS_ACCESS_KEY_ID=AKIAAWS",       "ZIMAGE_S3_ACCESS_KEY=AKIAZI",
                    "AWS_SECRET_ACCESS_KEY=awssecret", "AWS_SESSION_TOKEN=awstoken",
                    "ZIMAGE_REDIS_PASSWORD=redispw",   NULL};
    assert_int_equal(zi_parse(&c, "redis:\n  url: redis://:urlpw@h:1/2\n"
                                  "kafka:\n  properties:\n    sasl.password: kafkapw\n"),
                     ZI_OK);
    assert_int_equal(zi_wconfig_apply_env(&c, env1, NULL, NULL), ZI_OK);
    assert_string_equal(c.s3_access_key, "AKIAZI");
    assert_string_equal(c.s3_secret_key, "awssecret"); /* fallback */
    assert_string_equal(c.s3_session_token, "awstoken");
    assert_string_equal(c.redis_password, "redispw");

    char *out = zi_dump(&c);
    const char *secrets[] = {"AKIAZI",  "AKIAAWS", "awssecret", "awstoken",
                             "redispw", "urlpw",   "kafkapw"};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
        if (strstr(out, secrets[i]))
            fail_msg("dump leaks '%s':\n%s", secrets[i], out);
    assert_non_null(strstr(out, "url: \"redis://:<redacted>@h:1/2\""));
    assert_non_null(strstr(out, "ZIMAGE_S3_SECRET_KEY=<redacted>"));
    assert_non_null(strstr(out, "\"sasl.password\": \"<redacted>\""));
    free(out);
    zi_wconfig_free(&c);

    /* a variable whose name only starts with a secret's is not that secret: the AWS_*
     * fallback still applies, and a secret with no fallback stays unset */
    char *env2[] = {"ZIMAGE_S3_ACCESS_KEY_ID=wrong", "AWS_ACCESS_KEY_ID=AKIAAWS",
                    "ZIMAGE_S3_SECRET_KEYS=wrong2", "ZIMAGE_REDIS_PASSWORD_FILE=/wrong3", NULL};
    assert_int_equal(zi_wconfig_init_defaults(&c), ZI_OK);
    assert_int_equal(zi_wconfig_apply_env(&c, env2, NULL, NULL), ZI_OK);
    assert_string_equal(c.s3_access_key, "AKIAAWS");
    assert_string_equal(c.s3_secret_key, "");
    assert_string_equal(c.redis_password, "");
    zi_wconfig_free(&c);

    /* unset secrets read as "(unset)", never as a value */
    assert_int_equal(zi_wconfig_init_defaults(&c), ZI_OK);
    out = zi_dump(&c);
    assert_non_null(strstr(out, "ZIMAGE_S3_ACCESS_KEY=(unset)"));
    free(out);
    zi_wconfig_free(&c);
}

static void test_dump_round_trip(void **state)
{
    (void)state;
    zi_wconfig a, b;
    assert_int_equal(zi_parse(&a, "kafka:\n  properties:\n    linger.ms: 5\n"
                                  "    client.id: \"a \\\"q\\\" b\"\n"
                                  "generation:\n  guidance_scale: 0.1\n"
                                  "worker:\n  id: w1\n"
                                  /* characters a YAML stream may not carry raw (a C1
                                   * control, BOM, U+FFFF), line breaks U+2028/2029 and a
                                   * tab: escaped in the dump */
                                  "model:\n  path: \"m\\x88\\t\\ufeff\\uffff\\L\\P\\u00e9/\"\n"),
                     ZI_OK);
    assert_string_equal(a.model_path,
                        "m\xc2\x88\t\xef\xbb\xbf\xef\xbf\xbf\xe2\x80\xa8\xe2\x80\xa9\xc3\xa9/");
    char *out = zi_dump(&a);
    assert_int_equal(zi_wconfig_init_defaults(&b), ZI_OK);
    if (zi_wconfig_parse_buffer(&b, out, strlen(out), "dump") != ZI_OK)
        fail_msg("dump does not parse back: %s\n%s", zi_errmsg(), out);
    char *out2 = zi_dump(&b);
    assert_string_equal(out, out2);
    assert_true(b.gen_guidance_scale == 0.1);
    assert_string_equal(zi_wconfig_kafka_property(&b, "client.id"), "a \"q\" b");
    assert_string_equal(b.model_path, a.model_path);
    assert_non_null(strstr(out, "\xc3\xa9/")); /* printable non-ASCII stays as it is */
    free(out);
    free(out2);
    zi_wconfig_free(&a);
    zi_wconfig_free(&b);
}

static void test_load_files(void **state)
{
    (void)state;
    zi_wconfig c;
    zi_warns w = {0};
    /* the shipped examples load as they are */
    assert_int_equal(zi_wconfig_load(&c, zi_test_path("config/worker.yaml"), zi_warn_cb, &w),
                     ZI_OK);
    assert_int_equal(c.gen_width, 1024);
    zi_wconfig_free(&c);
    assert_int_equal(zi_wconfig_load(&c, zi_test_path("config/worker.local.yaml"), zi_warn_cb, &w),
                     ZI_OK);
    assert_string_equal(c.model_path, "tests/golden/data/tiny-zimage");
    assert_string_equal(c.device_backend, "cpu");
    assert_int_equal(c.gen_width, 64);
    assert_non_null(zi_wconfig_kafka_property(&c, "session.timeout.ms"));
    assert_true(c.worker_id[0] != '\0'); /* id: "" -> the host name */
    zi_wconfig_free(&c);

    /* the process environment applies on load */
    setenv("ZIMAGE_WORKER_HEARTBEAT_S", "7", 1);
    assert_int_equal(zi_wconfig_load(&c, zi_test_path("config/worker.yaml"), NULL, NULL), ZI_OK);
    assert_int_equal(c.worker_heartbeat_s, 7);
    zi_wconfig_free(&c);
    setenv("ZIMAGE_WORKER_HEARTBEAT_S", "0", 1);
    assert_int_equal(zi_wconfig_load(&c, zi_test_path("config/worker.yaml"), NULL, NULL),
                     ZI_EFORMAT);
    assert_non_null(strstr(zi_errmsg(), "ZIMAGE_WORKER_HEARTBEAT_S"));
    unsetenv("ZIMAGE_WORKER_HEARTBEAT_S");
    /* on error the struct is freed (and a second free is harmless) */
    assert_null(c.model_path);
    zi_wconfig_free(&c);

    assert_int_equal(zi_wconfig_load(&c, "/nonexistent/zimage.yaml", NULL, NULL), ZI_ENOTFOUND);
    assert_non_null(strstr(zi_errmsg(), "/nonexistent/zimage.yaml"));

    /* a file error names the file and line */
    char path[] = "/tmp/zi_wconfig_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *yaml = "model:\n  path: x\nworker:\n  max_attempts: 0\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    assert_int_equal(zi_wconfig_load(&c, path, NULL, NULL), ZI_EFORMAT);
    assert_non_null(strstr(zi_errmsg(), path));
    assert_non_null(strstr(zi_errmsg(), "line 4"));
    assert_non_null(strstr(zi_errmsg(), "worker.max_attempts"));
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),      cmocka_unit_test(test_parse_values),
        cmocka_unit_test(test_parse_errors),  cmocka_unit_test(test_validate),
        cmocka_unit_test(test_env_overrides), cmocka_unit_test(test_every_key_has_its_env_var),
        cmocka_unit_test(test_secrets),       cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_load_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
