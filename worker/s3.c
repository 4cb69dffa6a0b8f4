/*
 * s3.c - S3 PUT/HEAD/GET over libcurl with SigV4, retries, and presigned GET URLs.
 *
 * Signing of requests is curl's (CURLOPT_AWS_SIGV4); we add x-amz-content-sha256 ourselves
 * because curl 7.88 never does and both AWS and Ceph RGW refuse requests without it.
 * Presigned URLs are computed here (curl cannot): AWS Signature Version 4, "Authenticating
 * Requests: Using Query Parameters", with UNSIGNED-PAYLOAD and SignedHeaders=host.
 *
 * Retry policy: exponential backoff with full jitter (sleep = U(0, min(max, base*2^n)))
 * until at least retry_s seconds have passed since the call began; the abort callback is
 * polled every 50 ms while sleeping and by curl's progress callback while transferring.
 * Response bodies are capped (errors: ZI_S3_MAX_ERROR_BODY; GET: the caller's max_bytes).
 */
#include "s3.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "zi_err.h"

#define ZI_S3_HOST_MAX 512

struct zi_s3 {
    char *endpoint_scheme; /* "http" | "https" */
    char *endpoint_host;   /* host[:port], default port stripped */
    char *public_scheme;
    char *public_host;
    char *region;
    char *bucket;
    int path_style;
    char *access_key;
    char *secret_key;
    char *session_token; /* "" = none */
    double retry_s;
    long connect_timeout_ms;
    long request_timeout_ms;
    double backoff_base_s;
    double backoff_max_s;
    CURL *curl;
    zi_s3_abort_fn abort_fn;
    void *abort_ud;
    long last_status;
    int no_conditional; /* the server answered 501 to If-None-Match: PUT without it */
    int head_denied;    /* a HEAD's 403 was AccessDenied: no s3:ListBucket (zi_s3_head) */
    unsigned long long retries;
    uint64_t rng;
};

/* ---- small helpers ---- */

static double zi_s3_mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void zi_s3_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* out: 65 bytes. */
static void zi_s3_sha256_hex(const void *data, size_t len, char *out)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    zi_s3_hex(md, SHA256_DIGEST_LENGTH, out);
}

static void zi_s3_hmac(const void *key, size_t klen, const char *msg, unsigned char out[32])
{
    unsigned int olen = 32;
    HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &olen);
}

int zi_s3_uri_encode(const char *s, int keep_slash, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        int keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/');
        if (n + (keep ? 1 : 3) >= cap)
            return zi_errorf(ZI_EINVAL, "s3: encoded string longer than %zu bytes", cap);
        if (keep) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    if (cap == 0)
        return zi_errorf(ZI_EINVAL, "s3: no room for an encoded string");
    out[n] = '\0';
    return ZI_OK;
}

/* Splits "scheme://host[:port][/]" into scheme and host[:port] (default port dropped, as
 * the Host header a client sends for the URL then matches what we sign). */
static int zi_s3_split_endpoint(const char *ep, char **scheme, char **host)
{
    const char *rest;
    const char *sch;
    if (strncmp(ep, "http://", 7) == 0) {
        sch = "http";
        rest = ep + 7;
    } else if (strncmp(ep, "https://", 8) == 0) {
        sch = "https";
        rest = ep + 8;
    } else {
        return zi_errorf(ZI_EINVAL, "s3: endpoint '%.128s' must start with http:// or https://",
                         ep);
    }
    size_t n = strcspn(rest, "/?#");
    if (n == 0 || n >= ZI_S3_HOST_MAX || (rest[n] && strcmp(rest + n, "/") != 0))
        return zi_errorf(ZI_EINVAL, "s3: endpoint '%.128s' must be scheme://host[:port]", ep);
    for (size_t i = 0; i < n; i++) {
        char c = rest[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_';
        if (!ok)
            return zi_errorf(ZI_EINVAL, "s3: endpoint '%.128s': bad host", ep);
    }
    char h[ZI_S3_HOST_MAX];
    memcpy(h, rest, n);
    h[n] = '\0';
    const char *defport = strcmp(sch, "http") == 0 ? ":80" : ":443";
    size_t dl = strlen(defport);
    if (n > dl && strcmp(h + n - dl, defport) == 0 && h[n - dl - 1] != ':')
        h[n - dl] = '\0';
    *scheme = strdup(sch);
    *host = strdup(h);
    if (!*scheme || !*host)
        return zi_errorf(ZI_ENOMEM, "s3: out of memory");
    return ZI_OK;
}

/* ---- key templates ---- */

int zi_s3_key_expand(const char *tmpl, const char *job_id, int64_t msg_ts_ms, char *out, size_t cap)
{
    if (!tmpl || !job_id || cap == 0)
        return zi_errorf(ZI_EINVAL, "s3: key template: missing argument");
    char date[64];
    time_t secs = msg_ts_ms >= 0 ? (time_t)(msg_ts_ms / 1000) : time(NULL);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(date, sizeof date, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    size_t limit = cap < ZI_S3_MAX_KEY + 1 ? cap : ZI_S3_MAX_KEY + 1;
    size_t n = 0;
    for (const char *p = tmpl; *p;) {
        const char *piece;
        size_t plen;
        if (*p == '{') {
            if (strncmp(p, "{job_id}", 8) == 0) {
                piece = job_id;
                p += 8;
            } else if (strncmp(p, "{date}", 6) == 0) {
                piece = date;
                p += 6;
            } else {
                size_t m = strcspn(p, "}");
                return zi_errorf(ZI_EINVAL,
                                 "s3: key template '%.128s': unknown placeholder "
                                 "'%.*s' (known: {job_id}, {date})",
                                 tmpl, (int)(m < 32 ? m + (p[m] == '}') : 32), p);
            }
            plen = strlen(piece);
        } else {
            piece = p;
            plen = 1;
            p++;
        }
        if (n + plen >= limit)
            return zi_errorf(ZI_EINVAL, "s3: key from template '%.128s' is longer than %zu bytes",
                             tmpl, limit - 1);
        memcpy(out + n, piece, plen);
        n += plen;
    }
    out[n] = '\0';
    if (n == 0)
        return zi_errorf(ZI_EINVAL, "s3: key template '%.128s' gives an empty key", tmpl);
    /* "." segments too: curl would remove them from the request's path (so the object's key
     * would differ from the one recorded) while presigned URLs sign them */
    if (out[0] == '/' || strstr(out, "//") || strstr(out, "..") || strcmp(out, ".") == 0 ||
        strncmp(out, "./", 2) == 0 || strstr(out, "/./") ||
        (n >= 2 && strcmp(out + n - 2, "/.") == 0))
        return zi_errorf(
            ZI_EINVAL, "s3: key '%.128s': no leading '/', '//', '..' or '.' segments allowed", out);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7F)
            return zi_errorf(ZI_EINVAL, "s3: key template '%.128s': control character", tmpl);
    return ZI_OK;
}

int zi_s3_key_template_check(const char *tmpl)
{
    char key[ZI_S3_MAX_KEY + 1];
    return zi_s3_key_expand(tmpl, "job", 0, key, sizeof key);
}

/* ---- handle ---- */

static pthread_once_t zi_s3_init_once = PTHREAD_ONCE_INIT;
static int zi_s3_global_rc;

static void zi_s3_global_init(void)
{
    zi_s3_global_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? ZI_OK : ZI_EIO;
}

static char *zi_s3_dup(const char *s)
{
    return strdup(s ? s : "");
}

static void zi_s3_wipe_free(char *s)
{
    if (s)
        explicit_bzero(s, strlen(s));
    free(s);
}

int zi_s3_create(const zi_s3_config *cfg, zi_s3 **out)
{
    int rc;
    if (!cfg || !cfg->endpoint || !cfg->region || !*cfg->region || !cfg->bucket || !*cfg->bucket)
        return zi_errorf(ZI_EINVAL, "s3: endpoint, region and bucket are required");
    if (!(cfg->retry_s >= 0))
        return zi_errorf(ZI_EINVAL, "s3: retry_s must be >= 0");
    pthread_once(&zi_s3_init_once, zi_s3_global_init);
    if (zi_s3_global_rc)
        return zi_errorf(ZI_EIO, "s3: curl_global_init failed");
    zi_s3 *s = calloc(1, sizeof *s);
    if (!s)
        return zi_errorf(ZI_ENOMEM, "s3: out of memory");
    if ((rc = zi_s3_split_endpoint(cfg->endpoint, &s->endpoint_scheme, &s->endpoint_host)))
        goto err;
    const char *pub =
        cfg->public_endpoint && *cfg->public_endpoint ? cfg->public_endpoint : cfg->endpoint;
    if ((rc = zi_s3_split_endpoint(pub, &s->public_scheme, &s->public_host)))
        goto err;
    s->region = zi_s3_dup(cfg->region);
    s->bucket = zi_s3_dup(cfg->bucket);
    s->access_key = zi_s3_dup(cfg->access_key);
    s->secret_key = zi_s3_dup(cfg->secret_key);
    s->session_token = zi_s3_dup(cfg->session_token);
    if (!s->region || !s->bucket || !s->access_key || !s->secret_key || !s->session_token) {
        rc = zi_errorf(ZI_ENOMEM, "s3: out of memory");
        goto err;
    }
    s->path_style = cfg->path_style;
    s->retry_s = cfg->retry_s;
    s->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 5000;
    s->request_timeout_ms = cfg->request_timeout_ms > 0 ? cfg->request_timeout_ms : 60000;
    s->backoff_base_s = cfg->backoff_base_s > 0 ? cfg->backoff_base_s : 0.1;
    s->backoff_max_s = cfg->backoff_max_s > 0 ? cfg->backoff_max_s : 5.0;
    s->curl = curl_easy_init();
    if (!s->curl) {
        rc = zi_errorf(ZI_ENOMEM, "s3: curl_easy_init failed");
        goto err;
    }
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    s->rng = ((uint64_t)t.tv_nsec << 20) ^ (uint64_t)t.tv_sec ^ ((uint64_t)getpid() << 40) ^
             (uint64_t)(uintptr_t)s;
    if (!s->rng)
        s->rng = 0x9E3779B97F4A7C15ull;
    *out = s;
    return ZI_OK;
err:
    zi_s3_destroy(s);
    return rc;
}

void zi_s3_destroy(zi_s3 *s)
{
    if (!s)
        return;
    if (s->curl)
        curl_easy_cleanup(s->curl);
    free(s->endpoint_scheme);
    free(s->endpoint_host);
    free(s->public_scheme);
    free(s->public_host);
    free(s->region);
    free(s->bucket);
    zi_s3_wipe_free(s->access_key);
    zi_s3_wipe_free(s->secret_key);
    zi_s3_wipe_free(s->session_token);
    free(s);
}

void zi_s3_set_abort(zi_s3 *s, zi_s3_abort_fn fn, void *ud)
{
    s->abort_fn = fn;
    s->abort_ud = ud;
}

long zi_s3_last_http_status(const zi_s3 *s)
{
    return s->last_status;
}

unsigned long long zi_s3_retry_count(const zi_s3 *s)
{
    return s->retries;
}

/* scheme://host/path for key ("" = the bucket itself) with the given addressing. Also
 * returns the host and the canonical (encoded) path for signing. */
static int zi_s3_build_url(const char *scheme, const char *host, const char *bucket, int path_style,
                           const char *key, char *url, size_t cap, char *host_out, size_t host_cap,
                           char *path_out, size_t path_cap)
{
    char ekey[3 * ZI_S3_MAX_KEY + 1];
    char ebucket[3 * 255 + 1];
    if (strlen(key) > ZI_S3_MAX_KEY)
        return zi_errorf(ZI_EINVAL, "s3: key longer than %d bytes", ZI_S3_MAX_KEY);
    int rc = zi_s3_uri_encode(key, 1, ekey, sizeof ekey);
    if (!rc)
        rc = zi_s3_uri_encode(bucket, 0, ebucket, sizeof ebucket);
    if (rc)
        return rc;
    int n;
    if (path_style) {
        n = snprintf(host_out, host_cap, "%s", host);
        if (n < 0 || (size_t)n >= host_cap)
            return zi_errorf(ZI_EINVAL, "s3: host too long");
        n = snprintf(path_out, path_cap, "/%s%s%s", ebucket, *key ? "/" : "", ekey);
    } else {
        n = snprintf(host_out, host_cap, "%s.%s", bucket, host);
        if (n < 0 || (size_t)n >= host_cap)
            return zi_errorf(ZI_EINVAL, "s3: host too long");
        n = snprintf(path_out, path_cap, "/%s", ekey);
    }
    if (n < 0 || (size_t)n >= path_cap)
        return zi_errorf(ZI_EINVAL, "s3: path too long");
    n = snprintf(url, cap, "%s://%s%s", scheme, host_out, path_out);
    if (n < 0 || (size_t)n >= cap)
        return zi_errorf(ZI_EINVAL, "s3: URL longer than %zu bytes", cap);
    return ZI_OK;
}

/* ---- presigned URLs ---- */

static int zi_s3_presign(const char *scheme, const char *host, const char *bucket, int path_style,
                         const char *region, const char *access_key, const char *secret_key,
                         const char *token, const char *key, int64_t expires_s, time_t now,
                         char *url, size_t cap)
{
    if (!key || !*key)
        return zi_errorf(ZI_EINVAL, "s3: presign: empty key");
    if (expires_s < 1 || expires_s > ZI_S3_MAX_PRESIGN_S)
        return zi_errorf(ZI_EINVAL, "s3: presign: expiry %lld s not in [1, %d]",
                         (long long)expires_s, ZI_S3_MAX_PRESIGN_S);
    if (!access_key || !secret_key)
        return zi_errorf(ZI_EINVAL, "s3: presign: no credentials");
    if (now == 0)
        now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char amz_date[20], day[12];
    strftime(amz_date, sizeof amz_date, "%Y%m%dT%H%M%SZ", &tm);
    strftime(day, sizeof day, "%Y%m%d", &tm);

    char base_url[ZI_S3_MAX_URL], hostname[ZI_S3_HOST_MAX + 300], path[4 * ZI_S3_MAX_KEY];
    int rc = zi_s3_build_url(scheme, host, bucket, path_style, key, base_url, sizeof base_url,
                             hostname, sizeof hostname, path, sizeof path);
    if (rc)
        return rc;

    char scope[200], credential[600], ecred[1800], etoken[3 * 4096 + 1] = "";
    snprintf(scope, sizeof scope, "%s/%s/s3/aws4_request", day, region);
    int n = snprintf(credential, sizeof credential, "%s/%s", access_key, scope);
    if (n < 0 || (size_t)n >= sizeof credential)
        return zi_errorf(ZI_EINVAL, "s3: presign: access key too long");
    if ((rc = zi_s3_uri_encode(credential, 0, ecred, sizeof ecred)))
        return rc;
    if (token && *token && (rc = zi_s3_uri_encode(token, 0, etoken, sizeof etoken)))
        return rc;

    /* query parameters in byte order of their names, as SigV4 requires */
    size_t qcap = 2048 + strlen(etoken);
    char *query = malloc(qcap);
    size_t ccap = qcap + sizeof path + sizeof hostname + 256;
    char *creq = malloc(ccap);
    if (!query || !creq) {
        free(query);
        free(creq);
        return zi_errorf(ZI_ENOMEM, "s3: out of memory");
    }
    snprintf(query, qcap,
             "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%s&X-Amz-Date=%s"
             "&X-Amz-Expires=%lld%s%s&X-Amz-SignedHeaders=host",
             ecred, amz_date, (long long)expires_s, *etoken ? "&X-Amz-Security-Token=" : "",
             etoken);
    snprintf(creq, ccap, "GET\n%s\n%s\nhost:%s\n\nhost\nUNSIGNED-PAYLOAD", path, query, hostname);

    char creq_hash[65];
    zi_s3_sha256_hex(creq, strlen(creq), creq_hash);
    char sts[512];
    snprintf(sts, sizeof sts, "AWS4-HMAC-SHA256\n%s\n%s\n%s", amz_date, scope, creq_hash);

    size_t sl = strlen(secret_key);
    char *kkey = malloc(sl + 5);
    if (!kkey) {
        free(query);
        free(creq);
        return zi_errorf(ZI_ENOMEM, "s3: out of memory");
    }
    memcpy(kkey, "AWS4", 4);
    memcpy(kkey + 4, secret_key, sl + 1);
    unsigned char k1[32], k2[32], k3[32], k4[32], sig[32];
    zi_s3_hmac(kkey, sl + 4, day, k1);
    zi_s3_hmac(k1, 32, region, k2);
    zi_s3_hmac(k2, 32, "s3", k3);
    zi_s3_hmac(k3, 32, "aws4_request", k4);
    zi_s3_hmac(k4, 32, sts, sig);
    explicit_bzero(kkey, sl + 4);
    free(kkey);
    char sighex[65];
    zi_s3_hex(sig, 32, sighex);
    explicit_bzero(k1, 32);
    explicit_bzero(k4, 32);

    n = snprintf(url, cap, "%s?%s&X-Amz-Signature=%s", base_url, query, sighex);
    free(query);
    free(creq);
    if (n < 0 || (size_t)n >= cap)
        return zi_errorf(ZI_EINVAL, "s3: presigned URL longer than %zu bytes", cap);
    return ZI_OK;
}

int zi_s3_presign_get(const zi_s3 *s, const char *key, int64_t expires_s, time_t now, char *url,
                      size_t cap)
{
    return zi_s3_presign(s->public_scheme, s->public_host, s->bucket, s->path_style, s->region,
                         s->access_key, s->secret_key, s->session_token, key, expires_s, now, url,
                         cap);
}

int zi_s3_presign_get_cfg(const zi_s3_config *cfg, const char *key, int64_t expires_s, time_t now,
                          char *url, size_t cap)
{
    const char *pub =
        cfg->public_endpoint && *cfg->public_endpoint ? cfg->public_endpoint : cfg->endpoint;
    if (!pub || !cfg->region || !cfg->bucket)
        return zi_errorf(ZI_EINVAL, "s3: presign: endpoint, region and bucket are required");
    char *scheme = NULL, *host = NULL;
    int rc = zi_s3_split_endpoint(pub, &scheme, &host);
    if (!rc)
        rc = zi_s3_presign(scheme, host, cfg->bucket, cfg->path_style, cfg->region, cfg->access_key,
                           cfg->secret_key, cfg->session_token, key, expires_s, now, url, cap);
    free(scheme);
    free(host);
    return rc;
}

/* ---- requests ---- */

typedef struct zi_s3_body {
    char *p;
    size_t len, cap; /* cap = max bytes accepted */
    size_t alloc;
    int overflow;
} zi_s3_body;

typedef struct zi_s3_upload {
    const unsigned char *p;
    size_t len, pos;
} zi_s3_upload;

typedef struct zi_s3_req {
    const char *method; /* PUT, HEAD, GET */
    const char *key;    /* "" = the bucket */
    const void *data;   /* PUT body */
    size_t len;
    const char *content_type;
    const zi_s3_meta *meta;
    size_t nmeta;
    int if_absent;   /* PUT with If-None-Match: * */
    size_t max_body; /* accepted body size for success responses */
    /* results */
    zi_s3_body body;
    zi_s3_head_info head;
} zi_s3_req;

static size_t zi_s3_write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    zi_s3_body *b = ud;
    size_t n = size * nmemb;
    if (b->len + n > b->cap) {
        b->overflow = 1;
        return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->alloc) {
        size_t na = b->alloc ? b->alloc : 4096;
        while (na < b->len + n + 1)
            na *= 2;
        char *np = realloc(b->p, na);
        if (!np) {
            b->overflow = 1;
            return 0;
        }
        b->p = np;
        b->alloc = na;
    }
    memcpy(b->p + b->len, ptr, n);
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

static size_t zi_s3_read_cb(char *buf, size_t size, size_t nitems, void *ud)
{
    zi_s3_upload *u = ud;
    size_t n = size * nitems;
    if (n > u->len - u->pos)
        n = u->len - u->pos;
    memcpy(buf, u->p + u->pos, n);
    u->pos += n;
    return n;
}

/* curl rewinds the body when it sends a request again (a kept-alive connection that the
 * server closed after the body went out): without this callback that is
 * CURLE_SEND_FAIL_REWIND, a failed upload. */
static int zi_s3_seek_cb(void *ud, curl_off_t off, int origin)
{
    zi_s3_upload *u = ud;
    if (origin != SEEK_SET || off < 0 || (uint64_t)off > (uint64_t)u->len)
        return CURL_SEEKFUNC_CANTSEEK;
    u->pos = (size_t)off;
    return CURL_SEEKFUNC_OK;
}

static void zi_s3_copy_hdr(char *dst, size_t cap, const char *v, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static size_t zi_s3_header_cb(char *buf, size_t size, size_t nitems, void *ud)
{
    zi_s3_head_info *h = ud;
    size_t n = size * nitems;
    if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        /* a new response (e.g. after 100 Continue): forget the previous one's headers */
        memset(h, 0, sizeof *h);
        h->size = -1;
        return n;
    }
    const char *colon = memchr(buf, ':', n);
    if (!colon)
        return n;
    size_t nl = (size_t)(colon - buf);
    const char *v = colon + 1;
    size_t vl = n - nl - 1;
    while (vl && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
#define ZI_S3_HDR_IS(name) (nl == sizeof(name) - 1 && strncasecmp(buf, name, nl) == 0)
    if (ZI_S3_HDR_IS("x-amz-meta-job-id"))
        zi_s3_copy_hdr(h->job_id, sizeof h->job_id, v, vl);
    else if (ZI_S3_HDR_IS("x-amz-meta-seed"))
        zi_s3_copy_hdr(h->seed, sizeof h->seed, v, vl);
    else if (ZI_S3_HDR_IS("x-amz-meta-attempt"))
        zi_s3_copy_hdr(h->attempt, sizeof h->attempt, v, vl);
    else if (ZI_S3_HDR_IS("content-type"))
        zi_s3_copy_hdr(h->content_type, sizeof h->content_type, v, vl);
    else if (ZI_S3_HDR_IS("etag"))
        zi_s3_copy_hdr(h->etag, sizeof h->etag, v, vl);
    else if (ZI_S3_HDR_IS("content-length")) {
        char tmp[32];
        zi_s3_copy_hdr(tmp, sizeof tmp, v, vl);
        char *end;
        long long x = strtoll(tmp, &end, 10);
        if (end != tmp && x >= 0)
            h->size = x;
    }
#undef ZI_S3_HDR_IS
    return n;
}

static int zi_s3_progress_cb(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a;
    (void)b;
    (void)c;
    (void)d;
    zi_s3 *s = ud;
    return s->abort_fn && s->abort_fn(s->abort_ud) ? 1 : 0;
}

/* Text of <Tag>...</Tag> in an S3 XML error body (bounded copy; "" when absent). */
static void zi_s3_xml_tag(const char *body, const char *tag, char *out, size_t cap)
{
    out[0] = '\0';
    if (!body)
        return;
    char open[40], close[40];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *a = strstr(body, open);
    if (!a)
        return;
    a += strlen(open);
    const char *b = strstr(a, close);
    if (!b)
        return;
    size_t n = (size_t)(b - a);
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (a[i] >= 0x20 && a[i] != 0x7F) ? a[i] : ' ';
    out[n] = '\0';
}

static int zi_s3_curl_transient(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_SEND_FAIL_REWIND:
        return 1;
    default:
        return 0;
    }
}

/* One HTTP exchange. Returns ZI_OK for 2xx, else a classified error. */
static int zi_s3_once(zi_s3 *s, zi_s3_req *r)
{
    char url[ZI_S3_MAX_URL], host[ZI_S3_HOST_MAX + 300], path[4 * ZI_S3_MAX_KEY];
    int rc = zi_s3_build_url(s->endpoint_scheme, s->endpoint_host, s->bucket, s->path_style, r->key,
                             url, sizeof url, host, sizeof host, path, sizeof path);
    if (rc)
        return rc;
    /* the hash of what we send, also for bodiless requests (RGW refuses them without it) */
    char hdr[ZI_S3_META_VALUE_MAX + 4096 + 64];
    char sha[65];
    zi_s3_sha256_hex(r->data ? r->data : "", r->data ? r->len : 0, sha);

    struct curl_slist *hl = NULL, *tmp;
    int is_put = strcmp(r->method, "PUT") == 0;
    snprintf(hdr, sizeof hdr, "x-amz-content-sha256: %s", sha);
#define ZI_S3_ADD_HDR(h)                                                                           \
    do {                                                                                           \
        if (!(tmp = curl_slist_append(hl, (h))))                                                   \
            goto nomem;                                                                            \
        hl = tmp;                                                                                  \
    } while (0)
    ZI_S3_ADD_HDR(hdr);
    if (*s->session_token) {
        int n = snprintf(hdr, sizeof hdr, "x-amz-security-token: %s", s->session_token);
        if (n < 0 || (size_t)n >= sizeof hdr) {
            curl_slist_free_all(hl);
            return zi_errorf(ZI_EINVAL, "s3: session token too long");
        }
        ZI_S3_ADD_HDR(hdr);
    }
    if (is_put) {
        if (r->content_type) {
            snprintf(hdr, sizeof hdr, "Content-Type: %s", r->content_type);
            ZI_S3_ADD_HDR(hdr);
        } else if (*r->key) {
            ZI_S3_ADD_HDR("Content-Type: application/octet-stream");
        }
        /* No "Expect:" override here: curl 7.88 signs the empty header it then never sends,
         * which S3 answers with SignatureDoesNotMatch. */
        for (size_t i = 0; i < r->nmeta; i++) {
            snprintf(hdr, sizeof hdr, "x-amz-meta-%s: %s", r->meta[i].name, r->meta[i].value);
            ZI_S3_ADD_HDR(hdr);
        }
        if (r->if_absent)
            ZI_S3_ADD_HDR("If-None-Match: *");
    }
#undef ZI_S3_ADD_HDR

    CURL *c = s->curl;
    curl_easy_reset(c);
    zi_s3_upload up = {r->data, r->len, 0};
    free(r->body.p);
    memset(&r->body, 0, sizeof r->body);
    /* error bodies are read only far enough to find <Code>; success bodies up to max_body */
    r->body.cap = r->max_body > ZI_S3_MAX_ERROR_BODY ? r->max_body : ZI_S3_MAX_ERROR_BODY;
    memset(&r->head, 0, sizeof r->head);
    r->head.size = -1;
    char sigv4[128];
    snprintf(sigv4, sizeof sigv4, "aws:amz:%s:s3", s->region);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4);
    curl_easy_setopt(c, CURLOPT_USERNAME, s->access_key);
    curl_easy_setopt(c, CURLOPT_PASSWORD, s->secret_key);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, s->connect_timeout_ms);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, s->request_timeout_ms);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, zi_s3_write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, zi_s3_header_cb);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r->head);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, zi_s3_progress_cb);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, s);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (is_put) {
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, zi_s3_read_cb);
        curl_easy_setopt(c, CURLOPT_READDATA, &up);
        curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, zi_s3_seek_cb);
        curl_easy_setopt(c, CURLOPT_SEEKDATA, &up);
        curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->len);
    } else if (strcmp(r->method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hl);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    s->last_status = status;

    const char *what = r->method;
    const char *k = *r->key ? r->key : "(bucket)";
    if (cc == CURLE_ABORTED_BY_CALLBACK)
        return zi_errorf(ZI_ECANCELLED, "s3 %s %s/%s: stopped (worker draining)", what, s->bucket,
                         k);
    if (cc == CURLE_WRITE_ERROR && r->body.overflow) {
        if (status >= 200 && status < 300)
            return zi_errorf(ZI_EIO, "s3 %s %s/%s: response body larger than %zu bytes", what,
                             s->bucket, k, r->body.cap);
        cc = CURLE_OK; /* an oversized error body: classify by status below */
    }
    if (cc != CURLE_OK)
        return zi_errorf(zi_s3_curl_transient(cc) ? ZI_ETRANSIENT : ZI_EIO, "s3 %s %s/%s: %s", what,
                         s->bucket, k, curl_easy_strerror(cc));
    if (status >= 200 && status < 300)
        return ZI_OK;

    char code[64], msg[256];
    zi_s3_xml_tag(r->body.p, "Code", code, sizeof code);
    zi_s3_xml_tag(r->body.p, "Message", msg, sizeof msg);
    int err;
    if (status == 403 || strcmp(code, "SignatureDoesNotMatch") == 0 ||
        strcmp(code, "InvalidAccessKeyId") == 0 || strcmp(code, "AccessDenied") == 0 ||
        strcmp(code, "AuthorizationHeaderMalformed") == 0 || strcmp(code, "InvalidToken") == 0 ||
        strcmp(code, "ExpiredToken") == 0)
        err = ZI_EAUTH;
    else if (status == 501 && r->if_absent) /* no conditional writes: zi_s3_put_ex goes on */
        err = ZI_EIO;
    else if (status >= 500 || status == 429 || status == 408 || strcmp(code, "SlowDown") == 0 ||
             strcmp(code, "RequestTimeout") == 0 ||
             strcmp(code, "ConditionalRequestConflict") == 0) /* AWS: "retry" (409) */
        err = ZI_ETRANSIENT;
    else if (status == 404 && strcmp(code, "NoSuchBucket") != 0)
        err = ZI_ENOTFOUND;
    else if (status == 412) /* a condition (If-None-Match) not met */
        err = ZI_ECONFLICT;
    else
        err = ZI_EIO;
    return zi_errorf(err, "s3 %s %s/%s: HTTP %ld%s%s%s%s", what, s->bucket, k, status,
                     *code ? " " : "", code, *msg ? ": " : "", msg);
nomem:
    curl_slist_free_all(hl);
    return zi_errorf(ZI_ENOMEM, "s3: out of memory");
}

static uint64_t zi_s3_rand(zi_s3 *s)
{
    /* xorshift64*: jitter only, not security */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 0x2545F4914F6CDD1Dull;
}

static int zi_s3_aborted(zi_s3 *s)
{
    return s->abort_fn && s->abort_fn(s->abort_ud);
}

/* zi_s3_once with retries of ZI_ETRANSIENT for at least retry_s seconds. */
static int zi_s3_do(zi_s3 *s, zi_s3_req *r)
{
    double start = zi_s3_mono_s();
    for (int attempt = 0;; attempt++) {
        if (zi_s3_aborted(s))
            return zi_errorf(ZI_ECANCELLED, "s3 %s %s: stopped (worker draining)", r->method,
                             r->key);
        int rc = zi_s3_once(s, r);
        if (rc != ZI_ETRANSIENT)
            return rc;
        double elapsed = zi_s3_mono_s() - start;
        if (elapsed >= s->retry_s)
            return zi_error_prefix(ZI_ETRANSIENT, "after %d tries in %.1f s", attempt + 1, elapsed);
        double ceiling = s->backoff_base_s * (double)(1ull << (attempt < 30 ? attempt : 30));
        if (ceiling > s->backoff_max_s)
            ceiling = s->backoff_max_s;
        double sleep_s = ceiling * ((double)(zi_s3_rand(s) >> 11) / 9007199254740992.0);
        if (sleep_s > s->retry_s - elapsed)
            sleep_s = s->retry_s - elapsed;
        s->retries++;
        double until = zi_s3_mono_s() + sleep_s;
        for (;;) {
            double left = until - zi_s3_mono_s();
            if (left <= 0)
                break;
            if (zi_s3_aborted(s))
                return zi_errorf(ZI_ECANCELLED, "s3 %s %s: stopped (worker draining)", r->method,
                                 r->key);
            struct timespec ts = {0, (long)((left < 0.05 ? left : 0.05) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
}

static int zi_s3_key_ok(const char *key)
{
    if (!key || !*key)
        return zi_errorf(ZI_EINVAL, "s3: empty key");
    if (strlen(key) > ZI_S3_MAX_KEY)
        return zi_errorf(ZI_EINVAL, "s3: key longer than %d bytes", ZI_S3_MAX_KEY);
    return ZI_OK;
}

static int zi_s3_header_value_ok(const char *v)
{
    for (; *v; v++)
        if ((unsigned char)*v < 0x20 || (unsigned char)*v >= 0x7F)
            return 0;
    return 1;
}

int zi_s3_put(zi_s3 *s, const char *key, const void *data, size_t len, const char *content_type,
              const zi_s3_meta *meta, size_t nmeta)
{
    return zi_s3_put_ex(s, key, data, len, content_type, meta, nmeta, 0);
}

int zi_s3_put_ex(zi_s3 *s, const char *key, const void *data, size_t len, const char *content_type,
                 const zi_s3_meta *meta, size_t nmeta, unsigned flags)
{
    int rc = zi_s3_key_ok(key);
    if (rc)
        return rc;
    if (content_type && !zi_s3_header_value_ok(content_type))
        return zi_errorf(ZI_EINVAL, "s3: bad content type");
    for (size_t i = 0; i < nmeta; i++) {
        const char *nm = meta[i].name;
        if (!nm || !*nm || strlen(nm) > 64 || !meta[i].value ||
            strlen(meta[i].value) > ZI_S3_META_VALUE_MAX - 1 ||
            !zi_s3_header_value_ok(meta[i].value))
            return zi_errorf(ZI_EINVAL, "s3: bad metadata entry %zu", i);
        for (const char *p = nm; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
                return zi_errorf(ZI_EINVAL, "s3: metadata name '%.64s' must be [a-z0-9-]", nm);
    }
    zi_s3_req r = {.method = "PUT",
                   .key = key,
                   .data = data ? data : "",
                   .len = data ? len : 0,
                   .content_type = content_type,
                   .meta = meta,
                   .nmeta = nmeta,
                   .if_absent = (flags & ZI_S3_PUT_IF_ABSENT) != 0 && !s->no_conditional};
    rc = zi_s3_do(s, &r);
    if (rc == ZI_EIO && r.if_absent && s->last_status == 501) {
        /* a server without conditional writes: the PUT as it was before them, from now on */
        s->no_conditional = 1;
        r.if_absent = 0;
        rc = zi_s3_do(s, &r);
    }
    free(r.body.p);
    return rc;
}

int zi_s3_put_png(zi_s3 *s, const char *key, const void *png, size_t len, const char *job_id,
                  const char *seed)
{
    zi_s3_meta meta[2] = {{"job-id", job_id}, {"seed", seed}};
    if (!job_id)
        return zi_errorf(ZI_EINVAL, "s3: put_png: no job id");
    return zi_s3_put(s, key, png, len, "image/png", meta, seed ? 2 : 1);
}

/* After a HEAD answered 403, which has no body to say why: a GET of the key reads the
 * error code. Refused credentials (a wrong secret or key, an expired token, a skewed clock)
 * stay ZI_EAUTH. AccessDenied is what S3 (AWS, Ceph RGW) answers for a missing object when
 * the credentials may read objects but not list the bucket (no s3:ListBucket) - and also
 * when they may do nothing in this bucket, which a read cannot tell apart: the object counts
 * as absent (ZI_ENOTFOUND, and zi_s3_head_denied() says so from here on), and a PUT without
 * permission fails as ZI_EAUTH later. A GET that answers otherwise says nothing about the
 * credentials: its own status comes back (ZI_ENOTFOUND, ZI_ETRANSIENT, ...; ZI_EIO when it
 * succeeds although the HEAD was refused). */
static int zi_s3_head_denied_why(zi_s3 *s, const char *key)
{
    char head_err[512];
    snprintf(head_err, sizeof head_err, "%s", zi_errmsg());
    zi_s3_req g = {.method = "GET", .key = key};
    int rc = zi_s3_do(s, &g);
    char code[64];
    zi_s3_xml_tag(rc == ZI_EAUTH ? g.body.p : NULL, "Code", code, sizeof code);
    free(g.body.p);
    if (rc == ZI_OK)
        return zi_errorf(ZI_EIO, "s3 HEAD %s/%s: HTTP 403, though a GET of it succeeds", s->bucket,
                         key);
    if (rc != ZI_EAUTH)
        return rc; /* the GET's own error (zi_errmsg() says it) */
    if (strcmp(code, "AccessDenied") == 0) {
        s->head_denied = 1;
        return zi_errorf(ZI_ENOTFOUND,
                         "s3 HEAD %s/%s: HTTP 403 AccessDenied (no s3:ListBucket: taken as no "
                         "such key)",
                         s->bucket, key);
    }
    if (*code)
        return zi_errorf(ZI_EAUTH, "s3 HEAD %s/%s: HTTP 403 %s", s->bucket, key, code);
    return zi_errorf(ZI_EAUTH, "%s", head_err);
}

int zi_s3_head_denied(const zi_s3 *s)
{
    return s->head_denied;
}

int zi_s3_head(zi_s3 *s, const char *key, zi_s3_head_info *info)
{
    int rc = zi_s3_key_ok(key);
    if (rc)
        return rc;
    zi_s3_req r = {.method = "HEAD", .key = key};
    rc = zi_s3_do(s, &r);
    if (rc == ZI_EIO && s->last_status == 404)
        rc = zi_errorf(ZI_ENOTFOUND, "s3 HEAD %s/%s: no such key", s->bucket, key);
    if (rc == ZI_EAUTH && s->last_status == 403)
        rc = zi_s3_head_denied_why(s, key);
    if (rc == ZI_OK && info)
        *info = r.head;
    free(r.body.p);
    return rc;
}

int zi_s3_get(zi_s3 *s, const char *key, size_t max_bytes, void **data, size_t *len)
{
    int rc = zi_s3_key_ok(key);
    if (rc)
        return rc;
    zi_s3_req r = {.method = "GET", .key = key, .max_body = max_bytes};
    rc = zi_s3_do(s, &r);
    if (rc == ZI_OK && r.body.len > max_bytes)
        rc = zi_errorf(ZI_EIO, "s3 GET %s/%s: object larger than %zu bytes", s->bucket, key,
                       max_bytes);
    if (rc) {
        free(r.body.p);
        return rc;
    }
    char *body = r.body.p; /* ownership moves to the caller */
    if (!body) {
        body = malloc(1);
        if (!body)
            return zi_errorf(ZI_ENOMEM, "s3: out of memory");
        body[0] = '\0';
    }
    *data = body;
    *len = r.body.len;
    return ZI_OK;
}

int zi_s3_bucket_ensure(zi_s3 *s)
{
    zi_s3_req r = {.method = "PUT", .key = "", .data = "", .len = 0};
    int rc = zi_s3_do(s, &r);
    if (rc == ZI_EIO && s->last_status == 409 && r.body.p &&
        strstr(r.body.p, "BucketAlreadyOwnedByYou"))
        rc = ZI_OK;
    if (rc == ZI_OK)
        zi_error_clear();
    free(r.body.p);
    return rc;
}

int zi_s3_conditional_off(const zi_s3 *s)
{
    return s->no_conditional;
}
