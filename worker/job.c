/*
 * job.c - parsing and validation of job messages (see job.h for the contract).
 *
 * cJSON does the JSON syntax; everything cJSON lets through that the contract forbids is
 * checked here: trailing bytes after the object, escaped NUL characters in the members the
 * job reads and raw control bytes anywhere (cJSON would cut the string there silently, so
 * "a\u0000/.." could pass as the id "a"; zi_json_find_cut), malformed UTF-8 (cJSON copies
 * string bytes as they are), numbers that are not integers or out of range.
 */
#include "job.h"
#include "json_util.h"
#include "zi_err.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

int zi_job_id_valid(const char *s)
{
    if (!s)
        return 0;
    size_t n = strlen(s);
    if (n < 1 || n > ZI_JOB_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (i == 0 && !alnum)
            return 0;
        if (!alnum && c != '.' && c != '_' && c != '-')
            return 0;
    }
    return strstr(s, "..") == NULL;
}

/* Offset of the first malformed byte, or n when all of s[0..n) is well-formed UTF-8. */
static size_t zi_job_utf8_bad_at(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned cp, min;
        if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len)
            return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += len;
    }
    return n;
}

int zi_job_utf8_valid(const char *s, size_t n)
{
    return zi_job_utf8_bad_at(s, n) == n;
}

static int zi_job_bad(zi_job *job, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int zi_job_bad(zi_job *job, const char *code, const char *fmt, ...)
{
    snprintf(job->error_code, sizeof job->error_code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(job->error, sizeof job->error, fmt, ap);
    va_end(ap);
    return zi_errorf(ZI_EINVAL, "%s", job->error);
}

/* An integral JSON number in [lo, hi] (exact in a double: |v| <= 2^53). */
static int zi_job_get_int(const cJSON *v, int64_t lo, int64_t hi, int64_t *out)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!isfinite(d) || floor(d) != d || d < (double)lo || d > (double)hi)
        return -1;
    *out = (int64_t)d;
    return 0;
}

/* An optional member: NULL when absent or JSON null. */
/* The bad job of a zi_json_find_cut finding, naming the member when there is one. */
static int zi_job_bad_cut(zi_job *job, const zi_json_cut *cut, const char *buf)
{
    const char *in = cut->key[0] ? cut->key : "message";
    if (cut->raw)
        return zi_job_bad(job, "invalid_job",
                          "%s: not valid JSON (raw control byte 0x%02x at byte %zu; JSON "
                          "strings must escape it)",
                          in, (unsigned)(unsigned char)buf[cut->at], cut->at);
    return zi_job_bad(job, "invalid_job",
                      "%s: contains an escaped NUL character (\\u0000) at byte %zu", in, cut->at);
}

const char *const zi_job_error_codes[ZI_JOB_N_ERROR_CODES] = {
    "invalid_job", "too_large", "expired",        "s3_auth",
    "s3_error",    "oom",       "pipeline_error", "too_many_attempts"};

static const cJSON *zi_job_member(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

static int zi_job_text(zi_job *job, const cJSON *v, const char *name, char **out)
{
    if (!cJSON_IsString(v) || !v->valuestring)
        return zi_job_bad(job, "invalid_job", "%s: must be a string", name);
    size_t n = strlen(v->valuestring);
    if (n > ZI_JOB_PROMPT_MAX)
        return zi_job_bad(job, "invalid_job", "%s: %zu bytes, more than the %d allowed", name, n,
                          ZI_JOB_PROMPT_MAX);
    size_t bad = zi_job_utf8_bad_at(v->valuestring, n);
    if (bad != n)
        return zi_job_bad(job, "invalid_job", "%s: not valid UTF-8 (byte %zu)", name, bad);
    *out = strdup(v->valuestring);
    if (!*out)
        return zi_errorf(ZI_ENOMEM, "out of memory");
    return ZI_OK;
}

static int zi_job_side(zi_job *job, const cJSON *obj, const char *name, int def,
                       const zi_job_limits *lim, int *out)
{
    const cJSON *v = zi_job_member(obj, name);
    if (!v) {
        *out = def;
        return ZI_OK;
    }
    int64_t x;
    if (zi_job_get_int(v, INT32_MIN, INT32_MAX, &x) != 0)
        return zi_job_bad(job, "invalid_job", "%s: must be an integer multiple of 16 in [%d, %d]",
                          name, lim->min_side, lim->max_side);
    if (x % 16 != 0 || x < lim->min_side || x > lim->max_side)
        return zi_job_bad(job, "invalid_job", "%s: %lld is not a multiple of 16 in [%d, %d]", name,
                          (long long)x, lim->min_side, lim->max_side);
    *out = (int)x;
    return ZI_OK;
}

/* seed: an integer 0..2^53-1, or a decimal string 0..2^64-1. */
static int zi_job_seed(zi_job *job, const cJSON *v)
{
    if (cJSON_IsString(v) && v->valuestring) {
        const char *s = v->valuestring;
        size_t n = strlen(s);
        if (n == 0 || strspn(s, "0123456789") != n)
            return zi_job_bad(job, "invalid_job", "seed: a string seed must be decimal digits");
        while (n > 1 && *s == '0') { /* leading zeros do not change the value */
            s++;
            n--;
        }
        if (n > 20)
            return zi_job_bad(job, "invalid_job", "seed: larger than 2^64-1");
        errno = 0;
        char *end = NULL;
        unsigned long long x = strtoull(s, &end, 10);
        if (errno == ERANGE || !end || *end != '\0')
            return zi_job_bad(job, "invalid_job", "seed: larger than 2^64-1");
        job->seed = (uint64_t)x;
        job->has_seed = 1;
        return ZI_OK;
    }
    int64_t x;
    if (zi_job_get_int(v, 0, (int64_t)ZI_JOB_SEED_INT_MAX, &x) != 0)
        return zi_job_bad(job, "invalid_job",
                          "seed: must be an integer in [0, 2^53-1] or a decimal string");
    job->seed = (uint64_t)x;
    job->has_seed = 1;
    return ZI_OK;
}

void zi_job_clear(zi_job *job)
{
    if (!job)
        return;
    free(job->prompt);
    free(job->negative_prompt);
    memset(job, 0, sizeof *job);
    job->deadline_ms = -1;
}

int zi_job_parse(const void *data, size_t len, const zi_job_limits *lim, zi_job *job)
{
    const char *buf = data;
    zi_job_clear(job);
    /* Larger than allowed is too_large whatever else is wrong; the id is still read, for the
     * record, from messages this worker parses at all. */
    int too_big = lim->max_message_bytes > 0 && (uint64_t)len > (uint64_t)lim->max_message_bytes;
    if (len > ZI_JOB_PARSE_MAX)
        return zi_job_bad(job, "too_large", "message: %zu bytes, more than the %lld allowed", len,
                          (long long)(too_big ? lim->max_message_bytes : ZI_JOB_PARSE_MAX));
    if (len == 0 || !buf)
        return zi_job_bad(job, "invalid_job", "message: empty, not a JSON object");

    const char *end = NULL;
    int rc = ZI_OK;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!root) {
        size_t off = (end && end >= buf && end <= buf + len) ? (size_t)(end - buf) : 0;
        rc = zi_job_bad(job, "invalid_job", "message: not valid JSON (near byte %zu)", off);
        goto out;
    }
    /* cJSON stops after the first value; anything but whitespace after it is an error. */
    size_t used = (end && end >= buf && end <= buf + len) ? (size_t)(end - buf) : len;
    for (size_t i = used; i < len; i++) {
        if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\n' && buf[i] != '\r') {
            rc = zi_job_bad(job, "invalid_job", "message: not valid JSON (extra data at byte %zu)",
                            i);
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = zi_job_bad(job, "invalid_job", "message: JSON value is not an object");
        goto out;
    }
    /* Characters cJSON takes but that cut a string short or are not JSON: found before the
     * id is read, since one in the id would make it read as another id. An escaped NUL in
     * a member the job does not read is ignored with the member. */
    static const char *const read_members[] = {"job_id", "prompt", "negative_prompt", NULL};
    zi_json_cut cut;
    int has_cut = zi_json_find_cut(buf, len, read_members, &cut);
    if (has_cut && (cut.key[0] == '\0' || strcmp(cut.key, "job_id") == 0)) {
        rc = zi_job_bad_cut(job, &cut, buf);
        goto out;
    }

    /* The id first, so every later failure can be recorded under it. */
    const cJSON *id = zi_job_member(root, "job_id");
    if (!id) {
        rc = zi_job_bad(job, "invalid_job", "job_id: missing");
        goto out;
    }
    if (!cJSON_IsString(id) || !id->valuestring) {
        rc = zi_job_bad(job, "invalid_job", "job_id: must be a string");
        goto out;
    }
    if (!zi_job_id_valid(id->valuestring)) {
        rc = zi_job_bad(job, "invalid_job",
                        "job_id: must match [A-Za-z0-9][A-Za-z0-9._-]{0,127} without '..'");
        goto out;
    }
    snprintf(job->job_id, sizeof job->job_id, "%s", id->valuestring);
    if (has_cut) {
        rc = zi_job_bad_cut(job, &cut, buf);
        goto out;
    }

    if (too_big)
        goto out; /* the code and text are set below */

    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!prompt || cJSON_IsNull(prompt)) {
        rc = zi_job_bad(job, "invalid_job", "prompt: missing");
        goto out;
    }
    if ((rc = zi_job_text(job, prompt, "prompt", &job->prompt)) != ZI_OK)
        goto out;
    const cJSON *neg = zi_job_member(root, "negative_prompt");
    if (neg) {
        if ((rc = zi_job_text(job, neg, "negative_prompt", &job->negative_prompt)) != ZI_OK)
            goto out;
    } else if (!(job->negative_prompt = strdup(""))) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto out;
    }

    if ((rc = zi_job_side(job, root, "width", lim->def_width, lim, &job->width)) != ZI_OK ||
        (rc = zi_job_side(job, root, "height", lim->def_height, lim, &job->height)) != ZI_OK)
        goto out;
    if ((int64_t)job->width * job->height > lim->max_pixels) {
        rc = zi_job_bad(job, "invalid_job", "width x height: %dx%d is more than %lld pixels",
                        job->width, job->height, (long long)lim->max_pixels);
        goto out;
    }

    const cJSON *v = zi_job_member(root, "steps");
    job->steps = lim->def_steps;
    if (v) {
        int64_t x;
        if (zi_job_get_int(v, 1, lim->max_steps, &x) != 0) {
            rc = zi_job_bad(job, "invalid_job", "steps: must be an integer in [1, %d]",
                            lim->max_steps);
            goto out;
        }
        job->steps = (int)x;
    }

    v = zi_job_member(root, "guidance_scale");
    job->guidance = lim->def_guidance;
    if (v) {
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0.0 ||
            v->valuedouble > ZI_JOB_GUIDANCE_MAX) {
            rc = zi_job_bad(job, "invalid_job", "guidance_scale: must be a number in [0, 20]");
            goto out;
        }
        job->guidance = v->valuedouble;
    }

    v = zi_job_member(root, "seed");
    if (v && (rc = zi_job_seed(job, v)) != ZI_OK)
        goto out;

    v = zi_job_member(root, "deadline_ms");
    if (v) {
        int64_t x;
        if (zi_job_get_int(v, 0, (int64_t)ZI_JOB_SEED_INT_MAX, &x) != 0) {
            rc = zi_job_bad(job, "invalid_job",
                            "deadline_ms: must be an integer in [0, 9007199254740991] (unix ms)");
            goto out;
        }
        job->deadline_ms = x;
    }

    /* Unknown fields are ignored, but the whole value must still be UTF-8 text. */
    size_t bad = zi_job_utf8_bad_at(buf, len);
    if (bad != len) {
        rc = zi_job_bad(job, "invalid_job", "message: not valid UTF-8 (byte %zu)", bad);
        goto out;
    }
out:
    cJSON_Delete(root);
    if (too_big)
        rc = zi_job_bad(job, "too_large", "message: %zu bytes, more than the %lld allowed", len,
                        (long long)lim->max_message_bytes);
    if (rc == ZI_OK) {
        job->error_code[0] = '\0';
        job->error[0] = '\0';
    } else {
        /* Keep job_id and the error; drop partial strings so a bad job is never run. */
        free(job->prompt);
        free(job->negative_prompt);
        job->prompt = job->negative_prompt = NULL;
    }
    return rc;
}

int zi_job_to_json(const zi_job *job, char **out)
{
    *out = NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return zi_errorf(ZI_ENOMEM, "out of memory");
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)job->seed);
    int ok = cJSON_AddStringToObject(o, "job_id", job->job_id) &&
             cJSON_AddStringToObject(o, "prompt", job->prompt ? job->prompt : "") &&
             cJSON_AddNumberToObject(o, "width", job->width) &&
             cJSON_AddNumberToObject(o, "height", job->height) &&
             cJSON_AddNumberToObject(o, "steps", job->steps) &&
             cJSON_AddNumberToObject(o, "guidance_scale", job->guidance);
    if (ok && job->negative_prompt && job->negative_prompt[0])
        ok = cJSON_AddStringToObject(o, "negative_prompt", job->negative_prompt) != NULL;
    /* A string keeps all 64 bits exact for any consumer. */
    if (ok && job->has_seed)
        ok = cJSON_AddStringToObject(o, "seed", seed) != NULL;
    if (ok && job->deadline_ms >= 0)
        ok = cJSON_AddNumberToObject(o, "deadline_ms", (double)job->deadline_ms) != NULL;
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text)
        return zi_errorf(ZI_ENOMEM, "out of memory");
    *out = text;
    return ZI_OK;
}

int zi_job_new_id(char out[33])
{
    unsigned char r[16];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return zi_errorf(ZI_EIO, "getrandom: %s", strerror(errno));
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof r; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[32] = '\0';
    return ZI_OK;
}
