/*
 * test_s3_http.c - worker/s3.c against a scripted fake S3 on 127.0.0.1 (libmicrohttpd):
 * what every request carries (x-amz-content-sha256 = SHA-256 of the body, also for GET and
 * HEAD; x-amz-security-token; a SigV4 Authorization header that signs both; Content-Type
 * and x-amz-meta-*), and how answers are classified: 503 SlowDown / 500 / 429 retried until
 * they pass or retry_s is spent, 403 failing fast as ZI_EAUTH, other 4xx as ZI_EIO without
 * retry, 404 as ZI_ENOTFOUND, oversized bodies refused; a conditional PUT (If-None-Match: *)
 * refused with 412 is ZI_ECONFLICT, a server answering 501 to it gets the plain PUT (then
 * and after), AWS's 409 ConditionalRequestConflict is retried. Real SigV4
 * checking is tests/integration/test_s3.c's job (Ceph RGW).
 */
#include "zi_test.h"

#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "s3.h"
#include "zi_err.h"

#define ZI_FAKE_MAX 64

typedef struct zi_fake_req {
    char method[8];
    char url[512];
    char sha[80];
    char token[128];
    char auth[1024];
    char ctype[128];
    char meta_job[128];
    char if_none_match[16];
    char body_sha[65];
    size_t body_len;
} zi_fake_req;

typedef struct zi_fake_resp {
    unsigned status;
    const char *body;
} zi_fake_resp;

static struct {
    pthread_mutex_t mu;
    zi_fake_resp script[ZI_FAKE_MAX]; /* answers in order; past the end: `fallback` */
    int nscript;
    zi_fake_resp fallback;
    zi_fake_req reqs[ZI_FAKE_MAX];
    int nreqs;
} zi_fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct {
    unsigned char *body;
    size_t len;
} zi_fake_conn;

static void zi_hex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void zi_hdr(struct MHD_Connection *c, const char *name, char *out, size_t cap)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
    snprintf(out, cap, "%s", v ? v : "");
}

static enum MHD_Result zi_fake_handler(void *cls, struct MHD_Connection *c, const char *url,
                                       const char *method, const char *version, const char *upload,
                                       size_t *upload_size, void **rc)
{
    (void)cls;
    (void)version;
    zi_fake_conn *st = *rc;
    if (!st) {
        st = calloc(1, sizeof *st);
        *rc = st;
        return MHD_YES;
    }
    if (*upload_size) {
        st->body = realloc(st->body, st->len + *upload_size);
        memcpy(st->body + st->len, upload, *upload_size);
        st->len += *upload_size;
        *upload_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&zi_fake.mu);
    zi_fake_resp resp = zi_fake.fallback;
    if (zi_fake.nreqs < zi_fake.nscript)
        resp = zi_fake.script[zi_fake.nreqs];
    if (zi_fake.nreqs < ZI_FAKE_MAX) {
        zi_fake_req *r = &zi_fake.reqs[zi_fake.nreqs];
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->url, sizeof r->url, "%s", url);
        zi_hdr(c, "x-amz-content-sha256", r->sha, sizeof r->sha);
        zi_hdr(c, "x-amz-security-token", r->token, sizeof r->token);
        zi_hdr(c, "Authorization", r->auth, sizeof r->auth);
        zi_hdr(c, "Content-Type", r->ctype, sizeof r->ctype);
        zi_hdr(c, "x-amz-meta-job-id", r->meta_job, sizeof r->meta_job);
        zi_hdr(c, "If-None-Match", r->if_none_match, sizeof r->if_none_match);
        unsigned char md[32];
        SHA256(st->body ? st->body : (const unsigned char *)"", st->len, md);
        zi_hex(md, 32, r->body_sha);
        r->body_len = st->len;
    }
    zi_fake.nreqs++;
    pthread_mutex_unlock(&zi_fake.mu);
    if (resp.status == 0)
        return MHD_NO; /* status 0: close the connection without an answer */
    const char *body = resp.body ? resp.body : "";
    struct MHD_Response *mr =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (strcmp(method, "HEAD") == 0 && resp.status == 200) {
        MHD_add_response_header(mr, "x-amz-meta-job-id", "head-job");
        MHD_add_response_header(mr, "x-amz-meta-seed", "99");
        MHD_add_response_header(mr, "ETag", "\"abc\"");
        MHD_add_response_header(mr, "Content-Type", "image/png");
    }
    enum MHD_Result ret = MHD_queue_response(c, resp.status, mr);
    MHD_destroy_response(mr);
    return ret;
}

static void zi_fake_done(void *cls, struct MHD_Connection *c, void **rc,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    zi_fake_conn *st = *rc;
    if (st) {
        free(st->body);
        free(st);
    }
    *rc = NULL;
}

static struct MHD_Daemon *zi_daemon;
static int zi_port;

static int zi_setup(void **state)
{
    (void)state;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    zi_daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL,
                                 zi_fake_handler, NULL, MHD_OPTION_SOCK_ADDR, &a,
                                 MHD_OPTION_NOTIFY_COMPLETED, zi_fake_done, NULL, MHD_OPTION_END);
    if (!zi_daemon)
        return -1;
    zi_port = MHD_get_daemon_info(zi_daemon, MHD_DAEMON_INFO_BIND_PORT)->port;
    return 0;
}

static int zi_teardown(void **state)
{
    (void)state;
    MHD_stop_daemon(zi_daemon);
    return 0;
}

/* Resets the fake: answers `script` (n of them), then `fallback` forever. */
static void zi_script(const zi_fake_resp *script, int n, zi_fake_resp fallback)
{
    pthread_mutex_lock(&zi_fake.mu);
    if (n > 0)
        memcpy(zi_fake.script, script, (size_t)n * sizeof *script);
    zi_fake.nscript = n;
    zi_fake.fallback = fallback;
    zi_fake.nreqs = 0;
    memset(zi_fake.reqs, 0, sizeof zi_fake.reqs);
    pthread_mutex_unlock(&zi_fake.mu);
}

static zi_s3 *zi_open(double retry_s, const char *token)
{
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", zi_port);
    zi_s3_config c = {.endpoint = ep,
                      .region = "eu-central-1",
                      .bucket = "bkt",
                      .path_style = 1,
                      .access_key = "AKIDFAKE",
                      .secret_key = "fake-secret",
                      .session_token = token,
                      .retry_s = retry_s,
                      .backoff_base_s = 0.02,
                      .backoff_max_s = 0.1};
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

static const char zi_empty_sha[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

static void test_headers_on_every_request(void **state)
{
    (void)state;
    zi_fake_resp ok = {200, ""};
    zi_script(NULL, 0, ok);
    zi_s3 *s3 = zi_open(1, "SESSION/TOKEN+1");
    const char body[] = "\x89PNG fake body";
    assert_int_equal(zi_s3_put_png(s3, "d/k 1.png", body, sizeof body - 1, "job-7", "123"), ZI_OK);
    zi_s3_head_info h;
    assert_int_equal(zi_s3_head(s3, "d/k 1.png", &h), ZI_OK);
    assert_string_equal(h.job_id, "head-job");
    assert_string_equal(h.seed, "99");
    assert_string_equal(h.etag, "\"abc\"");
    assert_string_equal(h.content_type, "image/png");
    void *data;
    size_t len;
    assert_int_equal(zi_s3_get(s3, "d/k 1.png", 100, &data, &len), ZI_OK);
    assert_int_equal(len, 0);
    free(data);
    assert_int_equal(zi_fake.nreqs, 3);

    const char *methods[] = {"PUT", "HEAD", "GET"};
    for (int i = 0; i < 3; i++) {
        zi_fake_req *r = &zi_fake.reqs[i];
        assert_string_equal(r->method, methods[i]);
        assert_string_equal(r->url, "/bkt/d/k 1.png"); /* MHD decodes %20 */
        /* the declared payload hash is the real one, for bodiless requests too */
        assert_string_equal(r->sha, r->body_sha);
        if (i > 0)
            assert_string_equal(r->sha, zi_empty_sha);
        assert_string_equal(r->token, "SESSION/TOKEN+1");
        assert_non_null(strstr(r->auth, "AWS4-HMAC-SHA256 Credential=AKIDFAKE/"));
        assert_non_null(strstr(r->auth, "/eu-central-1/s3/aws4_request"));
        assert_non_null(strstr(r->auth, "x-amz-content-sha256"));
        assert_non_null(strstr(r->auth, "x-amz-security-token"));
        assert_null(strstr(r->auth, "fake-secret"));
    }
    assert_int_equal(zi_fake.reqs[0].body_len, sizeof body - 1);
    assert_string_equal(zi_fake.reqs[0].ctype, "image/png");
    assert_string_equal(zi_fake.reqs[0].meta_job, "job-7");
    assert_non_null(strstr(zi_fake.reqs[0].auth, "x-amz-meta-job-id"));
    zi_s3_destroy(s3);
}

static void test_slowdown_and_5xx_are_retried(void **state)
{
    (void)state;
    const zi_fake_resp script[] = {
        {503, "<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>"},
        {500, "<Error><Code>InternalError</Code></Error>"},
        {429, ""},
        {502, ""},
    };
    zi_fake_resp ok = {200, ""};
    zi_script(script, 4, ok);
    zi_s3 *s3 = zi_open(30, NULL);
    assert_int_equal(zi_s3_put_png(s3, "k.png", "abc", 3, "j", NULL), ZI_OK);
    assert_int_equal(zi_fake.nreqs, 5);
    assert_int_equal(zi_s3_retry_count(s3), 4);
    for (int i = 0; i < 5; i++)
        assert_int_equal(zi_fake.reqs[i].body_len, 3); /* the body is re-sent every time */
    zi_s3_destroy(s3);
}

/* A kept-alive connection that the server closes once the body went out, without an
 * answer: the request goes out again on a new connection with the whole body (here as a
 * transient error retried by us, since the 100 Continue was received; when curl resends by
 * itself, its rewind uses our seek callback). */
static void test_dropped_connection_is_resent(void **state)
{
    (void)state;
    const zi_fake_resp script[] = {{200, ""}, {0, NULL}};
    zi_fake_resp ok = {200, ""};
    zi_script(script, 2, ok);
    zi_s3 *s3 = zi_open(30, NULL);
    assert_int_equal(zi_s3_put_png(s3, "a.png", "abc", 3, "j", NULL), ZI_OK);
    assert_int_equal(zi_s3_put_png(s3, "b.png", "defg", 4, "j", NULL), ZI_OK);
    assert_int_equal(zi_fake.nreqs, 3);
    assert_int_equal(zi_fake.reqs[1].body_len, 4);
    assert_int_equal(zi_fake.reqs[2].body_len, 4);
    assert_string_equal(zi_fake.reqs[2].body_sha, zi_fake.reqs[1].body_sha);
    assert_true(zi_s3_retry_count(s3) <= 1);
    zi_s3_destroy(s3);
}

static void test_retry_budget(void **state)
{
    (void)state;
    zi_fake_resp slow = {503, "<Error><Code>SlowDown</Code></Error>"};
    zi_script(NULL, 0, slow);
    zi_s3 *s3 = zi_open(0.5, NULL);
    double t0 = zi_now_s();
    assert_int_equal(zi_s3_put_png(s3, "k.png", "abc", 3, "j", NULL), ZI_ETRANSIENT);
    double took = zi_now_s() - t0;
    assert_true(took >= 0.5 && took < 2.0);
    assert_non_null(strstr(zi_errmsg(), "SlowDown"));
    assert_true(zi_fake.nreqs >= 3);
    zi_s3_destroy(s3);

    /* retry_s 0: one try only */
    zi_script(NULL, 0, slow);
    s3 = zi_open(0, NULL);
    assert_int_equal(zi_s3_head(s3, "k.png", NULL), ZI_ETRANSIENT);
    assert_int_equal(zi_fake.nreqs, 1);
    zi_s3_destroy(s3);
}

static void test_permanent_errors_fail_fast(void **state)
{
    (void)state;
    struct {
        zi_fake_resp r;
        int want;
        const char *frag;
    } cases[] = {
        {{403, "<Error><Code>SignatureDoesNotMatch</Code></Error>"},
         ZI_EAUTH,
         "SignatureDoesNotMatch"},
        {{403, "<Error><Code>InvalidAccessKeyId</Code></Error>"}, ZI_EAUTH, "InvalidAccessKeyId"},
        {{403, "<Error><Code>AccessDenied</Code></Error>"}, ZI_EAUTH, "AccessDenied"},
        {{400, "<Error><Code>AuthorizationHeaderMalformed</Code></Error>"}, ZI_EAUTH, "HTTP 400"},
        {{400, "<Error><Code>InvalidArgument</Code></Error>"}, ZI_EIO, "InvalidArgument"},
        {{404, "<Error><Code>NoSuchBucket</Code></Error>"}, ZI_EIO, "NoSuchBucket"},
        {{413, ""}, ZI_EIO, "HTTP 413"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        zi_script(&cases[i].r, 1, cases[i].r);
        zi_s3 *s3 = zi_open(30, NULL);
        double t0 = zi_now_s();
        int rc = zi_s3_put_png(s3, "k.png", "abc", 3, "j", NULL);
        if (rc != cases[i].want || !strstr(zi_errmsg(), cases[i].frag))
            fail_msg("case %zu: rc %d, message '%s'", i, rc, zi_errmsg());
        assert_int_equal(zi_fake.nreqs, 1);
        assert_true(zi_now_s() - t0 < 1.0);
        zi_s3_destroy(s3);
    }
}

static void test_conditional_put(void **state)
{
    (void)state;
    zi_s3_meta m[] = {{"job-id", "j"}};
    /* only where no object is: 412 is ZI_ECONFLICT, not retried */
    zi_fake_resp pre[] = {{412, "<Error><Code>PreconditionFailed</Code></Error>"}};
    zi_script(pre, 1, pre[0]);
    zi_s3 *s3 = zi_open(30, NULL);
    assert_int_equal(zi_s3_put_ex(s3, "k.png", "abc", 3, "image/png", m, 1, ZI_S3_PUT_IF_ABSENT),
                     ZI_ECONFLICT);
    assert_non_null(strstr(zi_errmsg(), "PreconditionFailed"));
    assert_int_equal(zi_fake.nreqs, 1);
    assert_string_equal(zi_fake.reqs[0].if_none_match, "*");
    zi_s3_destroy(s3);
    /* a server without conditional writes (501): the same PUT again, without the condition */
    zi_fake_resp ni[] = {{501, "<Error><Code>NotImplemented</Code></Error>"}, {200, ""}};
    zi_script(ni, 2, ni[1]);
    s3 = zi_open(30, NULL);
    assert_int_equal(zi_s3_put_ex(s3, "k.png", "abc", 3, "image/png", m, 1, ZI_S3_PUT_IF_ABSENT),
                     ZI_OK);
    assert_int_equal(zi_fake.nreqs, 2);
    assert_string_equal(zi_fake.reqs[0].if_none_match, "*");
    assert_string_equal(zi_fake.reqs[1].if_none_match, "");
    assert_string_equal(zi_fake.reqs[1].meta_job, "j");
    /* ...and remembers it: the handle's next conditional PUT goes without the condition */
    assert_true(zi_s3_conditional_off(s3));
    zi_script(ni + 1, 1, ni[1]);
    assert_int_equal(zi_s3_put_ex(s3, "k.png", "abc", 3, "image/png", m, 1, ZI_S3_PUT_IF_ABSENT),
                     ZI_OK);
    assert_int_equal(zi_fake.nreqs, 1);
    assert_string_equal(zi_fake.reqs[0].if_none_match, "");
    zi_s3_destroy(s3);
    /* an unconditional PUT never sends it, and a 501 to it is a 5xx like any other (retried) */
    zi_script(ni, 2, ni[1]);
    s3 = zi_open(30, NULL);
    assert_false(zi_s3_conditional_off(s3));
    assert_int_equal(zi_s3_put_png(s3, "k.png", "abc", 3, "j", NULL), ZI_OK);
    assert_int_equal(zi_fake.nreqs, 2);
    assert_string_equal(zi_fake.reqs[0].if_none_match, "");
    assert_false(zi_s3_conditional_off(s3));
    /* AWS's 409 ConditionalRequestConflict (a concurrent write) is retried */
    zi_fake_resp cc[] = {{409, "<Error><Code>ConditionalRequestConflict</Code></Error>"},
                         {200, ""}};
    zi_script(cc, 2, cc[1]);
    assert_int_equal(zi_s3_put_ex(s3, "k.png", "abc", 3, "image/png", m, 1, ZI_S3_PUT_IF_ABSENT),
                     ZI_OK);
    assert_int_equal(zi_fake.nreqs, 2);
    assert_string_equal(zi_fake.reqs[1].if_none_match, "*");
    zi_s3_destroy(s3);
}

static void test_not_found_and_caps(void **state)
{
    (void)state;
    zi_fake_resp nf = {404, ""};
    zi_script(NULL, 0, nf);
    zi_s3 *s3 = zi_open(30, NULL);
    zi_s3_head_info h;
    assert_int_equal(zi_s3_head(s3, "k.png", &h), ZI_ENOTFOUND);
    zi_fake_resp nk = {404, "<Error><Code>NoSuchKey</Code></Error>"};
    zi_script(NULL, 0, nk);
    void *data = NULL;
    size_t len = 0;
    assert_int_equal(zi_s3_get(s3, "k.png", 100, &data, &len), ZI_ENOTFOUND);
    assert_int_equal(zi_fake.nreqs, 1);

    static char big[100000];
    memset(big, 'x', sizeof big - 1);
    zi_fake_resp large = {200, big};
    zi_script(NULL, 0, large);
    assert_int_equal(zi_s3_get(s3, "k.png", 1000, &data, &len), ZI_EIO);
    assert_non_null(strstr(zi_errmsg(), "larger than"));
    assert_int_equal(zi_s3_get(s3, "k.png", sizeof big, &data, &len), ZI_OK);
    assert_int_equal(len, sizeof big - 1);
    free(data);

    /* a huge error body is cut, not buffered whole, and still classified */
    static char huge_err[200000];
    memset(huge_err, ' ', sizeof huge_err - 1);
    memcpy(huge_err, "<Error><Code>SlowDown</Code>", 28);
    zi_fake_resp he = {503, huge_err};
    zi_script(NULL, 0, he);
    zi_s3_destroy(s3);
    s3 = zi_open(0, NULL);
    assert_int_equal(zi_s3_put_png(s3, "k.png", "a", 1, "j", NULL), ZI_ETRANSIENT);
    zi_s3_destroy(s3);

    /* bad arguments never reach the network */
    s3 = zi_open(0, NULL);
    zi_script(NULL, 0, nf);
    assert_int_equal(zi_s3_put_png(s3, "", "a", 1, "j", NULL), ZI_EINVAL);
    assert_int_equal(zi_s3_put_png(s3, "k", "a", 1, "bad\nid", NULL), ZI_EINVAL);
    assert_int_equal(zi_fake.nreqs, 0);
    zi_s3_destroy(s3);
}

static void test_connection_refused_is_transient(void **state)
{
    (void)state;
    zi_s3_config c = {.endpoint = "http://127.0.0.1:1",
                      .region = "r",
                      .bucket = "b",
                      .access_key = "a",
                      .secret_key = "s",
                      .retry_s = 0.3,
                      .backoff_base_s = 0.02};
    zi_s3 *s3 = NULL;
    assert_int_equal(zi_s3_create(&c, &s3), ZI_OK);
    double t0 = zi_now_s();
    assert_int_equal(zi_s3_put_png(s3, "k", "a", 1, "j", NULL), ZI_ETRANSIENT);
    assert_true(zi_now_s() - t0 >= 0.3);
    assert_int_equal(zi_s3_last_http_status(s3), 0);
    zi_s3_destroy(s3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_on_every_request),
        cmocka_unit_test(test_slowdown_and_5xx_are_retried),
        cmocka_unit_test(test_retry_budget),
        cmocka_unit_test(test_permanent_errors_fail_fast),
        cmocka_unit_test(test_not_found_and_caps),
        cmocka_unit_test(test_connection_refused_is_transient),
        cmocka_unit_test(test_conditional_put),
        cmocka_unit_test(test_dropped_connection_is_resent),
    };
    return cmocka_run_group_tests(tests, zi_setup, zi_teardown);
}
