/*
 * test_http.c - the worker's HTTP endpoint on a real socket: /healthz, /readyz (flag on and
 * off), /metrics (Prometheus text with the contract's metric names, collect hook called),
 * 404/405, listen-address parsing, a port that is already taken, and the per-address
 * connection limit (idle clients from 127.0.0.2 cannot take the slots 127.0.0.1 needs).
 */
#include "zi_test.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "metrics.h"
#include "zi_err.h"

typedef struct {
    char buf[65536];
    size_t len;
} zi_body;

static size_t zi_write(char *p, size_t s, size_t n, void *ud)
{
    zi_body *b = ud;
    size_t k = s * n;
    if (b->len + k >= sizeof b->buf)
        k = sizeof b->buf - 1 - b->len;
    memcpy(b->buf + b->len, p, k);
    b->len += k;
    b->buf[b->len] = '\0';
    return s * n;
}

static char zi_allow[64]; /* the last response's Allow header, "" when none */

static size_t zi_header(char *p, size_t s, size_t n, void *ud)
{
    (void)ud;
    size_t k = s * n;
    if (k > 6 && strncasecmp(p, "Allow:", 6) == 0) {
        size_t v = k - 6 < sizeof zi_allow ? k - 6 : sizeof zi_allow - 1;
        memcpy(zi_allow, p + 6, v);
        zi_allow[v] = '\0';
        zi_allow[strcspn(zi_allow, "\r\n")] = '\0';
    }
    return k;
}

/* GET (or another method) http://127.0.0.1:port/path -> status, body in *b. */
static long zi_get(int port, const char *path, const char *method, zi_body *b, char *ctype,
                   size_t ccap)
{
    CURL *c = curl_easy_init();
    assert_non_null(c);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    b->len = 0;
    b->buf[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, zi_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 5L);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, zi_header);
    zi_allow[0] = '\0';
    if (method && strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (method)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK)
        fail_msg("GET %s: %s", url, curl_easy_strerror(rc));
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (ctype) {
        char *ct = NULL;
        curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(ctype, ccap, "%s", ct ? ct : "");
    }
    curl_easy_cleanup(c);
    return status;
}

static int zi_collect_calls;

static void zi_collect(void *ud)
{
    zi_worker_metrics *wm = ud;
    zi_collect_calls++;
    zi_metric_set(wm->gpu_memory, "free", 12345);
}

static void test_endpoints(void **state)
{
    (void)state;
    zi_metrics *m = zi_metrics_create();
    zi_worker_metrics wm;
    assert_int_equal(zi_metrics_register_worker(m, &wm), ZI_OK);
    zi_http *h = NULL;
    assert_int_equal(zi_http_start("127.0.0.1:0", m, &h), ZI_OK);
    zi_http_set_collect(h, zi_collect, &wm);
    int port = zi_http_port(h);
    assert_true(port > 0 && port < 65536);

    zi_body b;
    char ct[128];
    assert_int_equal(zi_get(port, "/healthz", NULL, &b, NULL, 0), 200);
    assert_int_equal(zi_get(port, "/readyz", NULL, &b, NULL, 0), 503);
    zi_http_set_ready(h, 1);
    assert_int_equal(zi_http_ready(h), 1);
    assert_int_equal(zi_get(port, "/readyz", NULL, &b, NULL, 0), 200);
    zi_http_set_ready(h, 0); /* draining */
    assert_int_equal(zi_get(port, "/readyz", NULL, &b, NULL, 0), 503);
    assert_int_equal(zi_get(port, "/healthz", NULL, &b, NULL, 0), 200);

    zi_metric_inc(wm.jobs_total, "succeeded");
    zi_metric_observe(wm.job_duration, 1.5);
    zi_metric_observe(wm.step_duration, 0.1);
    zi_metric_set(wm.consumer_lag, NULL, 7);
    zi_metric_set(wm.worker_busy, NULL, 1);
    assert_int_equal(zi_get(port, "/metrics", NULL, &b, ct, sizeof ct), 200);
    assert_non_null(strstr(ct, "text/plain"));
    assert_non_null(strstr(ct, "version=0.0.4"));
    assert_int_equal(zi_collect_calls, 1);
    const char *want[] = {
        "zimage_jobs_total{outcome=\"succeeded\"} 1\n",
        "zimage_job_duration_seconds_bucket{le=\"2\"} 1\n",
        "zimage_job_duration_seconds_count 1\n",
        "zimage_step_duration_seconds_count 1\n",
        "zimage_consumer_lag 7\n",
        "zimage_gpu_memory_bytes{kind=\"free\"} 12345\n", /* set by the collect hook */
        "zimage_gpu_memory_bytes{kind=\"reserved\"} 0\n",
        "zimage_worker_busy 1\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(b.buf, want[i]))
            fail_msg("/metrics lacks '%s':\n%s", want[i], b.buf);

    assert_int_equal(zi_get(port, "/nope", NULL, &b, NULL, 0), 404);
    /* routes match whole paths, not prefixes */
    assert_int_equal(zi_get(port, "/healthzX", NULL, &b, NULL, 0), 404);
    assert_int_equal(zi_get(port, "/readyzX", NULL, &b, NULL, 0), 404);
    assert_int_equal(zi_get(port, "/metricsX", NULL, &b, NULL, 0), 404);
    assert_int_equal(zi_get(port, "/healthz", "POST", &b, NULL, 0), 405);
    assert_string_equal(zi_allow, " GET, HEAD");
    assert_int_equal(zi_get(port, "/healthz", NULL, &b, NULL, 0), 200);
    assert_string_equal(zi_allow, "");
    assert_int_equal(zi_get(port, "/metrics", "HEAD", &b, NULL, 0), 200);

    /* the same port cannot be bound twice */
    char spec[64];
    snprintf(spec, sizeof spec, "127.0.0.1:%d", port);
    zi_http *h2 = NULL;
    assert_int_equal(zi_http_start(spec, m, &h2), ZI_EIO);
    assert_non_null(strstr(zi_errmsg(), spec));

    zi_http_stop(h);
    zi_metrics_destroy(m);
}

static void test_parse_listen(void **state)
{
    (void)state;
    char host[64];
    int port;
    assert_int_equal(zi_http_parse_listen("0.0.0.0:9400", host, sizeof host, &port), ZI_OK);
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(port, 9400);
    assert_int_equal(zi_http_parse_listen("[::1]:0", host, sizeof host, &port), ZI_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 0);
    assert_int_equal(zi_http_parse_listen("9400", host, sizeof host, &port), ZI_EINVAL);
    assert_int_equal(zi_http_parse_listen(":9400", host, sizeof host, &port), ZI_EINVAL);
    assert_int_equal(zi_http_parse_listen("h:65536", host, sizeof host, &port), ZI_EINVAL);
    assert_int_equal(zi_http_parse_listen("h:9x", host, sizeof host, &port), ZI_EINVAL);
    assert_int_equal(zi_http_parse_listen("::1:80", host, sizeof host, &port), ZI_EINVAL);
    assert_int_equal(zi_http_parse_listen("127.0.0.1:", host, sizeof host, &port), ZI_EINVAL);
    assert_int_equal(zi_http_parse_listen("[::1]9400", host, sizeof host, &port), ZI_EINVAL);
    assert_int_equal(zi_http_parse_listen("[::1:9400", host, sizeof host, &port), ZI_EINVAL);
    /* the host and its NUL must fit cap: 3 bytes do in 4, 4 do not */
    assert_int_equal(zi_http_parse_listen("abc:1", host, 4, &port), ZI_OK);
    assert_string_equal(host, "abc");
    assert_int_equal(zi_http_parse_listen("abcd:1", host, 4, &port), ZI_EINVAL);
    assert_int_equal(zi_http_parse_listen("[abcd]:1", host, 4, &port), ZI_EINVAL);
    zi_http *h = NULL;
    assert_int_equal(zi_http_start("example.com:0", NULL, &h), ZI_EINVAL);

    /* no registry: /metrics is empty but 200; localhost is accepted */
    assert_int_equal(zi_http_start("localhost:0", NULL, &h), ZI_OK);
    zi_body b;
    assert_int_equal(zi_get(zi_http_port(h), "/metrics", NULL, &b, NULL, 0), 200);
    assert_int_equal(b.len, 0);
    zi_http_stop(h);
    zi_http_stop(NULL);
}

/* A TCP connection to 127.0.0.1:port whose source address is `src`; -1 on failure. */
static int zi_connect_from(const char *src, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    inet_pton(AF_INET, src, &a.sin_addr);
    struct sockaddr_in d = a;
    inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
    d.sin_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        connect(fd, (struct sockaddr *)&d, sizeof d) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends a GET /healthz on fd and reads the answer: 1 when it is an HTTP 200, 0 when the
 * server closed the connection without answering (or answered otherwise). */
static int zi_raw_healthz(int fd)
{
    const char req[] = "GET /healthz HTTP/1.0\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1))
        return 0;
    char buf[256];
    size_t len = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (len < sizeof buf - 1 && poll(&p, 1, 5000) == 1) {
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return strncmp(buf, "HTTP/1.0 200", 12) == 0 || strncmp(buf, "HTTP/1.1 200", 12) == 0;
}

static void test_per_address_limit(void **state)
{
    (void)state;
    zi_metrics *m = zi_metrics_create();
    zi_http *h = NULL;
    assert_int_equal(zi_http_start("127.0.0.1:0", m, &h), ZI_OK);
    int port = zi_http_port(h);
    zi_body b;

    /* four idle connections from one address: the most it may hold */
    int idle[4];
    for (int i = 0; i < 4; i++) {
        idle[i] = zi_connect_from("127.0.0.2", port);
        if (idle[i] < 0 && i == 0) { /* a sandbox without 127/8 on loopback */
            zi_http_stop(h);
            zi_metrics_destroy(m);
            skip();
        }
        assert_true(idle[i] >= 0);
    }
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL); /* let the server accept them */

    /* a fifth from that address is closed unanswered ... */
    int fifth = zi_connect_from("127.0.0.2", port);
    assert_true(fifth >= 0);
    assert_int_equal(zi_raw_healthz(fifth), 0);
    close(fifth);
    /* ... while another address still gets through */
    assert_int_equal(zi_get(port, "/healthz", NULL, &b, NULL, 0), 200);

    /* once the idle ones are gone, the address is served again */
    for (int i = 0; i < 4; i++)
        close(idle[i]);
    int ok = 0;
    for (int tries = 0; tries < 50 && !ok; tries++) {
        nanosleep(&ts, NULL);
        int fd = zi_connect_from("127.0.0.2", port);
        assert_true(fd >= 0);
        ok = zi_raw_healthz(fd);
        close(fd);
    }
    assert_true(ok);

    zi_http_stop(h);
    zi_metrics_destroy(m);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_parse_listen),
        cmocka_unit_test(test_per_address_limit),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
