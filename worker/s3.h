/*
 * s3.h - a small S3 client over libcurl: PUT, HEAD, GET object, presigned GET URLs.
 *
 * Requests are signed by curl (CURLOPT_AWS_SIGV4 "aws:amz:REGION:s3"); this module adds
 * the `x-amz-content-sha256` header (hex SHA-256 of the body, also for GET/HEAD, which
 * curl 7.88 never adds) and `x-amz-security-token` when a session token is set.
 * Addressing: path style (ENDPOINT/BUCKET/KEY) or virtual host (BUCKET.HOST/KEY).
 * Keys are URI-encoded per segment ('/' kept), as SigV4 expects.
 *
 * Errors (status codes from zi_err.h; zi_errmsg() names the operation, key, HTTP status
 * and S3 error code):
 *   ZI_EAUTH      403 SignatureDoesNotMatch / InvalidAccessKeyId / AccessDenied / other
 *                 403, also 400 AuthorizationHeaderMalformed: fails FAST, never retried
 *                 -> job error_code "s3_auth".
 *   ZI_ETRANSIENT network errors, 5xx, 503 SlowDown, 429, 409 ConditionalRequestConflict:
 *                 retried with exponential backoff + full jitter for at least retry_s
 *                 seconds within one call; returned when the budget is spent -> job
 *                 error_code "s3_error" (or retry later).
 *   ZI_ECONFLICT  412: a conditional PUT (ZI_S3_PUT_IF_ABSENT) found an object there.
 *   ZI_ECANCELLED the abort callback asked to stop (draining worker).
 *   ZI_ENOTFOUND  HEAD/GET of a missing object (404); also a HEAD's 403 whose follow-up GET
 *                 says AccessDenied (zi_s3_head: credentials without s3:ListBucket).
 *   ZI_EIO        any other 4xx, or a response body over its cap -> "s3_error".
 *
 * Thread safety: a zi_s3 handle reuses one curl handle (keep-alive) and must be used by
 * one thread at a time. zi_s3_presign_get() and zi_s3_key_expand() are pure and
 * thread-safe. curl_global_init() is done by zi_s3_create() once (thread-safe).
 */
#ifndef ZI_S3_H
#define ZI_S3_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ZI_S3_MAX_KEY 1024         /* bytes of an object key */
#define ZI_S3_MAX_URL 8192         /* bytes of any URL built here */
#define ZI_S3_MAX_ERROR_BODY 16384 /* error responses are read up to this */
#define ZI_S3_MAX_PRESIGN_S 604800 /* SigV4 limit on X-Amz-Expires */
#define ZI_S3_META_VALUE_MAX 256   /* bytes of one metadata value read back by HEAD */

typedef struct zi_s3_config {
    const char *endpoint;        /* "http://127.0.0.1:7480" (scheme://host[:port]) */
    const char *public_endpoint; /* host for presigned URLs; NULL or "" = endpoint */
    const char *region;          /* "us-east-1" */
    const char *bucket;
    int path_style;         /* 1: ENDPOINT/BUCKET/KEY; 0: BUCKET.HOST/KEY */
    const char *access_key; /* secrets: copied, never logged */
    const char *secret_key;
    const char *session_token; /* NULL or "" = none */
    double retry_s;            /* retry budget per call for transient errors (>= 0) */
    long connect_timeout_ms;   /* 0 = 5000 */
    long request_timeout_ms;   /* 0 = 60000 (one HTTP exchange) */
    double backoff_base_s;     /* 0 = 0.1: first backoff ceiling */
    double backoff_max_s;      /* 0 = 5: backoff ceiling cap */
} zi_s3_config;

typedef struct zi_s3 zi_s3;

/* Returns nonzero to stop retries and transfers now (checked between tries, during
 * backoff sleeps every <= 50 ms, and during transfers). Called on the caller's thread. */
typedef int (*zi_s3_abort_fn)(void *ud);

/* One user metadata entry: sent as "x-amz-meta-<name>: <value>" (name lower case,
 * [a-z0-9-]; value printable ASCII). */
typedef struct zi_s3_meta {
    const char *name;
    const char *value;
} zi_s3_meta;

/* What HEAD tells about an object. Strings are "" when the header is absent. */
typedef struct zi_s3_head_info {
    int64_t size; /* Content-Length, -1 when unknown */
    char content_type[128];
    char job_id[ZI_S3_META_VALUE_MAX]; /* x-amz-meta-job-id */
    char seed[ZI_S3_META_VALUE_MAX];   /* x-amz-meta-seed */
    char attempt[32];                  /* x-amz-meta-attempt (the worker's run) */
    char etag[128];
} zi_s3_head_info;

/* Copies cfg (strings included). ZI_EINVAL when endpoint/region/bucket are missing or the
 * endpoint is not http(s)://host[:port]; empty credentials are allowed (requests then fail
 * with ZI_EAUTH at the server). */
int zi_s3_create(const zi_s3_config *cfg, zi_s3 **out);
void zi_s3_destroy(zi_s3 *s3);

/* Installs the abort callback (NULL removes it). */
void zi_s3_set_abort(zi_s3 *s3, zi_s3_abort_fn fn, void *ud);

/* PUT object with Content-Type content_type (NULL = application/octet-stream) and user
 * metadata. The body is sent from memory (signed with its SHA-256). */
int zi_s3_put(zi_s3 *s3, const char *key, const void *data, size_t len, const char *content_type,
              const zi_s3_meta *meta, size_t nmeta);

/* zi_s3_put with flags. ZI_S3_PUT_IF_ABSENT: only when no object exists at key
 * ("If-None-Match: *", which RGW, MinIO and AWS S3 honour): ZI_ECONFLICT (HTTP 412) when one
 * does - also when the object is this PUT's own, written by a try whose answer was lost.
 * A server that answers 501 (no conditional writes) gets the PUT again without it, and this
 * handle's later PUTs go without it (zi_s3_conditional_off). */
#define ZI_S3_PUT_IF_ABSENT 1u
int zi_s3_put_ex(zi_s3 *s3, const char *key, const void *data, size_t len, const char *content_type,
                 const zi_s3_meta *meta, size_t nmeta, unsigned flags);

/* PUT of a PNG per the contract: Content-Type image/png, x-amz-meta-job-id, x-amz-meta-seed
 * (seed may be NULL = not sent). */
int zi_s3_put_png(zi_s3 *s3, const char *key, const void *png, size_t len, const char *job_id,
                  const char *seed);

/* 1 once the server refused a conditional PUT with 501: this handle PUTs unconditionally. */
int zi_s3_conditional_off(const zi_s3 *s3);

/* HEAD object. ZI_OK and *info filled when it exists; ZI_ENOTFOUND when it does not.
 * A 403 is looked into with a GET of the key (a HEAD has no body to say why): refused
 * credentials are ZI_EAUTH (the message names the code, e.g. SignatureDoesNotMatch), while
 * AccessDenied - S3's answer for a missing object to credentials without s3:ListBucket -
 * is ZI_ENOTFOUND and sets zi_s3_head_denied(); a GET that fails otherwise returns its own
 * status (ZI_ETRANSIENT, ZI_ENOTFOUND, ...). */
int zi_s3_head(zi_s3 *s3, const char *key, zi_s3_head_info *info);

/* 1 once a HEAD of this handle met AccessDenied (see zi_s3_head): objects are found only
 * by the conditional PUT's 412 from then on, never by a HEAD. */
int zi_s3_head_denied(const zi_s3 *s3);

/* GET object into a heap buffer (caller frees *data; NUL-terminated for convenience, the
 * NUL not counted in *len). Bodies over max_bytes fail with ZI_EIO. */
int zi_s3_get(zi_s3 *s3, const char *key, size_t max_bytes, void **data, size_t *len);

/* Creates the bucket (PUT /bucket); ZI_OK also when it already exists and is ours
 * (BucketAlreadyOwnedByYou). For local stacks, tests and demos. */
int zi_s3_bucket_ensure(zi_s3 *s3);

/* The last HTTP status seen by this handle (0 when no response was received). */
long zi_s3_last_http_status(const zi_s3 *s3);

/* How many times this handle has retried a request (for zimage_s3_retries_total). */
unsigned long long zi_s3_retry_count(const zi_s3 *s3);

/* A presigned GET URL (SigV4 query-string signing, X-Amz-SignedHeaders=host) valid for
 * expires_s seconds (1..604800) from `now` (unix seconds; 0 = the current time). Host
 * from public_endpoint when set, else endpoint; addressing per path_style. Writes a
 * NUL-terminated URL into url (ZI_EINVAL when it does not fit in cap). */
int zi_s3_presign_get(const zi_s3 *s3, const char *key, int64_t expires_s, time_t now, char *url,
                      size_t cap);

/* Same, from a config without a handle (pure; used by tests and `zimage status`). */
int zi_s3_presign_get_cfg(const zi_s3_config *cfg, const char *key, int64_t expires_s, time_t now,
                          char *url, size_t cap);

/* Expands a key_template: "{job_id}" -> job_id, "{date}" -> UTC YYYY-MM-DD of msg_ts_ms
 * (unix ms, e.g. the Kafka message timestamp; < 0 = the current time). Any other '{'
 * is an error (ZI_EINVAL naming the placeholder); so is an empty result, a result over
 * ZI_S3_MAX_KEY or cap, or a result containing "//", a leading '/', or "..". */
int zi_s3_key_expand(const char *tmpl, const char *job_id, int64_t msg_ts_ms, char *out,
                     size_t cap);

/* Checks a key_template (placeholders and syntax) without a job: ZI_OK or ZI_EINVAL. */
int zi_s3_key_template_check(const char *tmpl);

/* Writes the S3 (RFC 3986 unreserved kept, '/' kept when keep_slash) URI-encoding of s
 * into out. ZI_EINVAL when it does not fit. */
int zi_s3_uri_encode(const char *s, int keep_slash, char *out, size_t cap);

#endif
