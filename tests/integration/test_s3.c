/*
 * test_s3.c - worker/s3.c against the local stack's Ceph RADOS Gateway (real SigV4):
 * PUT + HEAD (metadata) + GET round trips (small, 3 MiB, keys needing URI-encoding), a
 * conditional PUT (If-None-Match: * refused where an object is),
 * 404s, the body cap, a wrong secret or access key failing FAST with ZI_EAUTH, presigned
 * URLs fetched by plain curl without credentials (and refused once tampered with), and
 * retries: with the gateway stopped a call gives up after retry_s (ZI_ETRANSIENT), stops
 * at once when its abort callback says so, and a PUT started while the gateway is down
 * succeeds once `stack.sh start-rgw` brings it back.
 *
 * Needs the stack's environment (`eval "$(deploy/local/stack.sh env)"`, done by
 * tests/run-all.sh): ZI_S3_ENDPOINT, ZI_S3_BUCKET, ZI_S3_REGION, ZI_S3_ACCESS_KEY,
 * ZI_S3_SECRET_KEY, ZI_STACK_DIR. It stops and restarts the stack's radosgw, so it runs
 * with the integration tests, one at a time. Without the stack it fails.
 */
#include "zi_test.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "s3.h"
#include "zi_err.h"

static char zi_prefix[64]; /* unique key prefix per run */

static const char *zi_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        fail_msg("%s is not set: run through `make test`, or eval \"$(deploy/local/stack.sh "
                 "env)\" after `deploy/local/stack.sh up`",
                 name);
    return v;
}

static zi_s3_config zi_cfg(double retry_s)
{
    zi_s3_config c = {.endpoint = zi_env("ZI_S3_ENDPOINT"),
                      .region = zi_env("ZI_S3_REGION"),
                      .bucket = zi_env("ZI_S3_BUCKET"),
                      .path_style = 1,
                      .access_key = zi_env("ZI_S3_ACCESS_KEY"),
                      .secret_key = zi_env("ZI_S3_SECRET_KEY"),
                      .retry_s = retry_s,
                      .connect_timeout_ms = 1000,
                      .request_timeout_ms = 10000};
    return c;
}

static zi_s3 *zi_open(double retry_s)
{
    zi_s3_config c = zi_cfg(retry_s);
    zi_s3 *s3 = NULL;
    assert_int_equal(zi_s3_create(&c, &s3), ZI_OK);
    return s3;
}

static double zi_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void zi_key(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", zi_prefix, name);
}

static int zi_setup(void **state)
{
    (void)state;
    snprintf(zi_prefix, sizeof zi_prefix, "test-s3-%ld-%ld", (long)getpid(), (long)time(NULL));
    return 0;
}

static void test_put_head_get(void **state)
{
    (void)state;
    zi_s3 *s3 = zi_open(10);
    assert_int_equal(zi_s3_bucket_ensure(s3), ZI_OK); /* exists already: still fine */

    /* a fake PNG and a 3 MiB body (past curl's 100-continue threshold) */
    size_t sizes[2] = {1000, 3u << 20};
    for (int t = 0; t < 2; t++) {
        size_t n = sizes[t];
        unsigned char *png = malloc(n);
        for (size_t i = 0; i < n; i++)
            png[i] = (unsigned char)(i * 131 + t);
        memcpy(png, "\x89PNG\r\n\x1a\n", 8);
        char key[256];
        zi_key(key, sizeof key, t ? "big.png" : "img.png");
        if (zi_s3_put_png(s3, key, png, n, "job-123", "18446744073709551615") != ZI_OK)
            fail_msg("PUT %s: %s", key, zi_errmsg());
        assert_int_equal(zi_s3_last_http_status(s3), 200);

        zi_s3_head_info h;
        assert_int_equal(zi_s3_head(s3, key, &h), ZI_OK);
        assert_string_equal(h.job_id, "job-123");
        assert_string_equal(h.seed, "18446744073709551615");
        assert_string_equal(h.content_type, "image/png");
        assert_int_equal(h.size, (int64_t)n);
        assert_true(h.etag[0] != '\0');

        void *data = NULL;
        size_t len = 0;
        assert_int_equal(zi_s3_get(s3, key, 8u << 20, &data, &len), ZI_OK);
        assert_int_equal(len, n);
        assert_memory_equal(data, png, n);
        free(data);
        /* the body cap: an object larger than max_bytes is an error, not a cut copy */
        assert_int_equal(zi_s3_get(s3, key, n - 1, &data, &len), ZI_EIO);
        free(png);
    }

    /* keys that need URI-encoding, signed the same way curl sends them */
    const char *names[] = {"2024-01-02/a b+c=d.png", "x~y_z-1.2.png", "\xc3\xbc/%&.png"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char key[256];
        zi_key(key, sizeof key, names[i]);
        if (zi_s3_put_png(s3, key, "abc", 3, "j", NULL) != ZI_OK)
            fail_msg("PUT '%s': %s", key, zi_errmsg());
        zi_s3_head_info h;
        assert_int_equal(zi_s3_head(s3, key, &h), ZI_OK);
        assert_string_equal(h.job_id, "j");
        assert_string_equal(h.seed, ""); /* not sent */
    }

    /* generic metadata and content type */
    char key[256];
    zi_key(key, sizeof key, "meta.bin");
    zi_s3_meta meta[] = {{"job-id", "m1"}, {"extra-field", "v a l"}};
    assert_int_equal(zi_s3_put(s3, key, "x", 1, NULL, meta, 2), ZI_OK);
    zi_s3_head_info h;
    assert_int_equal(zi_s3_head(s3, key, &h), ZI_OK);
    assert_string_equal(h.job_id, "m1");
    assert_string_equal(h.content_type, "application/octet-stream");
    zi_s3_meta bad[] = {{"Bad Name", "v"}};
    assert_int_equal(zi_s3_put(s3, key, "x", 1, NULL, bad, 1), ZI_EINVAL);

    /* a conditional PUT (If-None-Match: *) writes only where no object is: the second is
     * refused (412, ZI_ECONFLICT) and changes nothing; an unconditional one writes over */
    zi_key(key, sizeof key, "cond.png");
    zi_s3_meta c1[] = {{"job-id", "c"}, {"attempt", "1"}},
               c2[] = {{"job-id", "c"}, {"attempt", "2"}};
    assert_int_equal(zi_s3_put_ex(s3, key, "first", 5, "image/png", c1, 2, ZI_S3_PUT_IF_ABSENT),
                     ZI_OK);
    assert_int_equal(zi_s3_put_ex(s3, key, "second", 6, "image/png", c2, 2, ZI_S3_PUT_IF_ABSENT),
                     ZI_ECONFLICT);
    assert_int_equal(zi_s3_last_http_status(s3), 412);
    void *cd = NULL;
    size_t cl = 0;
    assert_int_equal(zi_s3_get(s3, key, 100, &cd, &cl), ZI_OK);
    assert_int_equal(cl, 5);
    assert_memory_equal(cd, "first", 5);
    free(cd);
    assert_int_equal(zi_s3_head(s3, key, &h), ZI_OK);
    assert_string_equal(h.attempt, "1");
    assert_int_equal(zi_s3_put_ex(s3, key, "third", 5, "image/png", c2, 2, 0), ZI_OK);
    assert_int_equal(zi_s3_head(s3, key, &h), ZI_OK);
    assert_string_equal(h.attempt, "2");

    /* missing objects: ZI_ENOTFOUND at once (404 is not retried) */
    zi_key(key, sizeof key, "absent.png");
    double t0 = zi_now_s();
    assert_int_equal(zi_s3_head(s3, key, &h), ZI_ENOTFOUND);
    void *data = NULL;
    size_t len = 0;
    assert_int_equal(zi_s3_get(s3, key, 100, &data, &len), ZI_ENOTFOUND);
    assert_true(zi_now_s() - t0 < 1.0);
    zi_s3_destroy(s3);
}

static void test_auth_fails_fast(void **state)
{
    (void)state;
    char key[256];
    zi_key(key, sizeof key, "auth.png");
    zi_s3_config c = zi_cfg(30); /* a long budget that must NOT be used */
    c.secret_key = "definitely-not-the-secret-key-0123456789";
    zi_s3 *s3 = NULL;
    assert_int_equal(zi_s3_create(&c, &s3), ZI_OK);
    double t0 = zi_now_s();
    assert_int_equal(zi_s3_put_png(s3, key, "abc", 3, "j", "1"), ZI_EAUTH);
    assert_non_null(strstr(zi_errmsg(), "SignatureDoesNotMatch"));
    assert_null(strstr(zi_errmsg(), c.secret_key));
    zi_s3_head_info h;
    assert_int_equal(zi_s3_head(s3, key, &h), ZI_EAUTH); /* HEAD: 403 without a body */
    assert_int_equal(zi_s3_retry_count(s3), 0);
    assert_true(zi_now_s() - t0 < 2.0);
    zi_s3_destroy(s3);

    c = zi_cfg(30);
    c.access_key = "NOSUCHACCESSKEY00000";
    assert_int_equal(zi_s3_create(&c, &s3), ZI_OK);
    t0 = zi_now_s();
    assert_int_equal(zi_s3_put_png(s3, key, "abc", 3, "j", "1"), ZI_EAUTH);
    assert_non_null(strstr(zi_errmsg(), "InvalidAccessKeyId"));
    assert_true(zi_now_s() - t0 < 2.0);
    zi_s3_destroy(s3);
}

static void test_presigned_url(void **state)
{
    (void)state;
    zi_s3 *s3 = zi_open(10);
    char key[256];
    zi_key(key, sizeof key, "dir/pre signed.png");
    const char body[] = "presigned-body-0123456789";
    assert_int_equal(zi_s3_put_png(s3, key, body, sizeof body - 1, "jp", "7"), ZI_OK);
    char url[ZI_S3_MAX_URL];
    assert_int_equal(zi_s3_presign_get(s3, key, 300, 0, url, sizeof url), ZI_OK);
    assert_null(strstr(url, zi_env("ZI_S3_SECRET_KEY")));

    /* plain curl, no credentials of its own */
    char cmd[ZI_S3_MAX_URL + 128], out[4096];
    snprintf(cmd, sizeof cmd, "curl -s --max-time 10 '%s'", url);
    assert_int_equal(zi_test_run(cmd, out, sizeof out), 0);
    assert_string_equal(out, body);
    snprintf(cmd, sizeof cmd, "curl -s -o /dev/null -w '%%{http_code}' --max-time 10 '%s'", url);
    assert_int_equal(zi_test_run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "200");

    /* a changed signature, or the unsigned URL, is refused */
    char bad[ZI_S3_MAX_URL];
    snprintf(bad, sizeof bad, "%s", url);
    char *sig = strstr(bad, "X-Amz-Signature=") + 16;
    sig[0] = sig[0] == '0' ? '1' : '0';
    snprintf(cmd, sizeof cmd, "curl -s -o /dev/null -w '%%{http_code}' --max-time 10 '%s'", bad);
    assert_int_equal(zi_test_run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "403");
    *strchr(bad, '?') = '\0';
    snprintf(cmd, sizeof cmd, "curl -s -o /dev/null -w '%%{http_code}' --max-time 10 '%s'", bad);
    assert_int_equal(zi_test_run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "403");

    /* an expired URL (signed 2 h ago for 60 s) is refused too */
    assert_int_equal(zi_s3_presign_get(s3, key, 60, time(NULL) - 7200, url, sizeof url), ZI_OK);
    snprintf(cmd, sizeof cmd, "curl -s -o /dev/null -w '%%{http_code}' --max-time 10 '%s'", url);
    assert_int_equal(zi_test_run(cmd, out, sizeof out), 0);
    assert_string_equal(out, "403");
    zi_s3_destroy(s3);
}

/* ---- retries against a stopped gateway ---- */

static void zi_stack(const char *what)
{
    char cmd[256], out[8192];
    snprintf(cmd, sizeof cmd, "deploy/local/stack.sh %s 2>&1", what);
    if (zi_test_run(cmd, out, sizeof out) != 0)
        fail_msg("stack.sh %s failed:\n%s", what, out);
}

typedef struct {
    zi_s3 *s3;
    char key[256];
    int rc;
    double took;
    char msg[512];
} zi_put_job;

static void *zi_put_thread(void *p)
{
    zi_put_job *j = p;
    double t0 = zi_now_s();
    j->rc = zi_s3_put_png(j->s3, j->key, "retried", 7, "job-r", "5");
    j->took = zi_now_s() - t0;
    snprintf(j->msg, sizeof j->msg, "%s", zi_errmsg());
    return NULL;
}

static double zi_abort_at;

static int zi_abort_after(void *ud)
{
    (void)ud;
    return zi_now_s() >= zi_abort_at;
}

static void test_retry_while_gateway_down(void **state)
{
    (void)state;
    zi_env("ZI_STACK_DIR"); /* stack.sh acts on this stack */
    zi_stack("stop-rgw");

    /* 1: the budget is spent -> ZI_ETRANSIENT, after at least retry_s */
    zi_s3 *s3 = zi_open(1.0);
    char key[256];
    zi_key(key, sizeof key, "retry.png");
    double t0 = zi_now_s();
    int rc = zi_s3_put_png(s3, key, "x", 1, "j", "1");
    double took = zi_now_s() - t0;
    if (rc != ZI_ETRANSIENT)
        fail_msg("expected ZI_ETRANSIENT, got %d: %s", rc, zi_errmsg());
    assert_true(took >= 1.0 && took < 4.0);
    assert_true(zi_s3_retry_count(s3) >= 2);
    zi_s3_destroy(s3);

    /* 2: a draining worker stops retrying at once */
    s3 = zi_open(60);
    zi_abort_at = zi_now_s() + 0.3;
    zi_s3_set_abort(s3, zi_abort_after, NULL);
    t0 = zi_now_s();
    assert_int_equal(zi_s3_put_png(s3, key, "x", 1, "j", "1"), ZI_ECANCELLED);
    took = zi_now_s() - t0;
    assert_true(took >= 0.25 && took < 1.5);
    zi_s3_destroy(s3);

    /* 3: a PUT started while the gateway is down lands once it is back */
    zi_put_job job = {.s3 = zi_open(60)};
    zi_key(job.key, sizeof job.key, "retry.png");
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, zi_put_thread, &job), 0);
    usleep(1500000);
    zi_stack("start-rgw");
    pthread_join(th, NULL);
    if (job.rc != ZI_OK)
        fail_msg("PUT across the gateway restart failed: %s", job.msg);
    assert_true(job.took >= 1.4);
    assert_true(zi_s3_retry_count(job.s3) >= 1);
    zi_s3_head_info h;
    assert_int_equal(zi_s3_head(job.s3, job.key, &h), ZI_OK);
    assert_string_equal(h.job_id, "job-r");
    zi_s3_destroy(job.s3);
}

static int zi_teardown(void **state)
{
    (void)state;
    /* never leave the shared stack without its gateway, whatever failed above */
    const char *dir = getenv("ZI_STACK_DIR");
    if (dir && *dir)
        zi_test_run("deploy/local/stack.sh start-rgw >/dev/null 2>&1", NULL, 0);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_head_get),
        cmocka_unit_test(test_auth_fails_fast),
        cmocka_unit_test(test_presigned_url),
        cmocka_unit_test(test_retry_while_gateway_down),
    };
    return cmocka_run_group_tests(tests, zi_setup, zi_teardown);
}
