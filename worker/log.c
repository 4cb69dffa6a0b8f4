/*
 * log.c - text or JSON-lines logging, one locked write per line.
 *
 * Formatting happens outside the lock into a stack buffer of ZI_LOG_LINE_MAX bytes; a
 * line that does not fit is cut (JSON stays valid: the cut happens inside the msg string,
 * which is then closed). JSON strings are escaped per RFC 8259 and invalid UTF-8 bytes
 * become U+FFFD so every line parses.
 */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "zi_err.h"

#define ZI_LOG_ID_MAX 129

static pthread_mutex_t zi_log_mu = PTHREAD_MUTEX_INITIALIZER;
static zi_log_format zi_log_fmt = ZI_LOG_TEXT;
static zi_log_level zi_log_min = ZI_LOG_INFO;
static char zi_log_worker[ZI_LOG_ID_MAX];
static FILE *zi_log_out;
static _Thread_local char zi_log_job[ZI_LOG_ID_MAX];

static const char *const zi_log_names[] = {"debug", "info", "warn", "error"};
static const char *const zi_log_names_uc[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

int zi_log_format_parse(const char *s, zi_log_format *out)
{
    if (s && strcmp(s, "text") == 0) {
        *out = ZI_LOG_TEXT;
        return ZI_OK;
    }
    if (s && strcmp(s, "json") == 0) {
        *out = ZI_LOG_JSON;
        return ZI_OK;
    }
    return zi_errorf(ZI_EINVAL, "log format '%s': expected text or json", s ? s : "");
}

int zi_log_level_parse(const char *s, zi_log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, zi_log_names[i]) == 0) {
            *out = (zi_log_level)i;
            return ZI_OK;
        }
    return zi_errorf(ZI_EINVAL, "log level '%s': expected debug, info, warn or error", s ? s : "");
}

static void zi_log_copy_id(char *dst, const char *src)
{
    size_t n = src ? strnlen(src, ZI_LOG_ID_MAX - 1) : 0;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

void zi_log_setup(zi_log_format format, zi_log_level min_level, const char *worker_id, FILE *out)
{
    pthread_mutex_lock(&zi_log_mu);
    zi_log_fmt = format;
    zi_log_min = min_level;
    zi_log_copy_id(zi_log_worker, worker_id);
    zi_log_out = out;
    pthread_mutex_unlock(&zi_log_mu);
}

void zi_log_set_job(const char *job_id)
{
    zi_log_copy_id(zi_log_job, job_id);
}

void zi_log_warn_cb(void *ud, const char *msg)
{
    (void)ud;
    zi_logf(ZI_LOG_WARN, "%s", msg);
}

/* A bounded appender: writes stop at cap-1 and `full` is set; never overflows. */
typedef struct zi_log_buf {
    char *p;
    size_t len, cap;
    int full;
} zi_log_buf;

static void zi_log_putc(zi_log_buf *b, char c)
{
    if (b->len + 1 < b->cap)
        b->p[b->len++] = c;
    else
        b->full = 1;
}

static void zi_log_puts(zi_log_buf *b, const char *s)
{
    while (*s)
        zi_log_putc(b, *s++);
}

/* Length of a valid UTF-8 sequence starting at s (1..4), or 0 when invalid. */
static int zi_log_utf8_len(const unsigned char *s)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    int n;
    unsigned min;
    if ((c & 0xE0) == 0xC0) {
        n = 2;
        min = 0x80;
        c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3;
        min = 0x800;
        c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4;
        min = 0x10000;
        c &= 0x07;
    } else {
        return 0;
    }
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    return n;
}

/* Appends s as a JSON string body (no quotes). Keeps room for closing the line: the caller
 * reserves `reserve` bytes by shrinking cap temporarily. */
static void zi_log_json_str(zi_log_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        char esc[8];
        size_t need;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            need = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2);
            need = 2;
        } else if (c == '\r') {
            memcpy(esc, "\\r", 2);
            need = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2);
            need = 2;
        } else if (c < 0x20 || c == 0x7F) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            need = 6;
        } else if (c >= 0x80) {
            int n = zi_log_utf8_len(p);
            if (n == 0) {
                memcpy(esc, "\\ufffd", 6);
                need = 6;
            } else {
                memcpy(esc, p, (size_t)n);
                need = (size_t)n;
                if (b->len + need >= b->cap) {
                    b->full = 1;
                    return;
                }
                memcpy(b->p + b->len, esc, need);
                b->len += need;
                p += n;
                continue;
            }
        } else {
            esc[0] = (char)c;
            need = 1;
        }
        /* never split an escape sequence: a cut line must still parse */
        if (b->len + need >= b->cap) {
            b->full = 1;
            return;
        }
        memcpy(b->p + b->len, esc, need);
        b->len += need;
        p++;
    }
}

/* Appends ,"key":"value" whole or not at all (a cut pair would break the JSON). A NULL
 * value is left out. */
static void zi_log_json_kv(zi_log_buf *b, const char *key, const char *value)
{
    if (!value)
        return;
    size_t mark = b->len;
    b->full = 0;
    zi_log_puts(b, ",\"");
    zi_log_json_str(b, key);
    zi_log_puts(b, "\":\"");
    zi_log_json_str(b, value);
    zi_log_puts(b, "\"");
    if (b->full)
        b->len = mark;
}

/* Text mode: control characters become spaces so one event stays one line. */
static void zi_log_text_str(zi_log_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        zi_log_putc(b, (c < 0x20 || c == 0x7F) ? ' ' : (char)c);
    }
}

static void zi_log_ts(char *out, size_t cap, long long ts_ms)
{
    time_t secs = (time_t)(ts_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts_ms % 1000));
}

size_t zi_log_format_line(char *buf, size_t cap, zi_log_format format, long long ts_ms,
                          zi_log_level level, const char *worker, const char *job_id,
                          const zi_log_field *fields, size_t nfields, const char *msg)
{
    if (cap < 64)
        return 0;
    if ((int)level < 0 || (int)level > 3)
        level = ZI_LOG_ERROR;
    char ts[96];
    zi_log_ts(ts, sizeof ts, ts_ms);
    /* ids are cut to 128 bytes: a bad job's id can be anything a producer sent */
    char wid[ZI_LOG_ID_MAX], jid[ZI_LOG_ID_MAX];
    zi_log_copy_id(wid, worker);
    zi_log_copy_id(jid, job_id);
    worker = wid;
    job_id = jid;
    /* 4 bytes are held back for the closing "}\n" or "\n" of a cut line */
    zi_log_buf b = {buf, 0, cap - 4, 0};
    if (format == ZI_LOG_JSON) {
        zi_log_puts(&b, "{\"ts\":\"");
        zi_log_puts(&b, ts);
        zi_log_puts(&b, "\",\"level\":\"");
        zi_log_puts(&b, zi_log_names[level]);
        zi_log_puts(&b, "\"");
        zi_log_json_kv(&b, "worker", *worker ? worker : NULL);
        zi_log_json_kv(&b, "job_id", *job_id ? job_id : NULL);
        for (size_t i = 0; i < nfields; i++)
            if (fields[i].key)
                zi_log_json_kv(&b, fields[i].key, fields[i].value ? fields[i].value : "");
        /* msg last so a long message is what gets cut; a cut never splits an escape */
        b.full = 0;
        size_t mark = b.len;
        zi_log_puts(&b, ",\"msg\":\"");
        if (b.full)
            b.len = mark;
        else
            zi_log_json_str(&b, msg ? msg : "");
        int in_msg = b.len != mark;
        b.cap = cap; /* room for the held-back closing bytes */
        zi_log_puts(&b, in_msg ? "\"}\n" : "}\n");
    } else {
        zi_log_puts(&b, ts);
        zi_log_putc(&b, ' ');
        zi_log_puts(&b, zi_log_names_uc[level]);
        if (*worker) {
            zi_log_puts(&b, " worker=");
            zi_log_text_str(&b, worker);
        }
        if (*job_id) {
            zi_log_puts(&b, " job_id=");
            zi_log_text_str(&b, job_id);
        }
        zi_log_putc(&b, ' ');
        zi_log_text_str(&b, msg ? msg : "");
        for (size_t i = 0; i < nfields; i++) {
            if (!fields[i].key)
                continue;
            zi_log_putc(&b, ' ');
            zi_log_text_str(&b, fields[i].key);
            zi_log_putc(&b, '=');
            zi_log_text_str(&b, fields[i].value ? fields[i].value : "");
        }
        b.cap = cap;
        zi_log_putc(&b, '\n');
    }
    buf[b.len] = '\0';
    return b.len;
}

static long long zi_log_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void zi_log_vemit(zi_log_level level, const char *job_id, const zi_log_field *fields,
                         size_t nfields, const char *fmt, va_list ap)
{
    pthread_mutex_lock(&zi_log_mu);
    int skip = level < zi_log_min;
    zi_log_format format = zi_log_fmt;
    char worker[ZI_LOG_ID_MAX];
    memcpy(worker, zi_log_worker, sizeof worker);
    pthread_mutex_unlock(&zi_log_mu);
    if (skip)
        return;

    char msg[ZI_LOG_LINE_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    char line[ZI_LOG_LINE_MAX];
    if (!job_id || !*job_id)
        job_id = zi_log_job;
    size_t n = zi_log_format_line(line, sizeof line, format, zi_log_now_ms(), level, worker, job_id,
                                  fields, nfields, msg);

    pthread_mutex_lock(&zi_log_mu);
    FILE *out = zi_log_out ? zi_log_out : stderr;
    fwrite(line, 1, n, out);
    fflush(out);
    pthread_mutex_unlock(&zi_log_mu);
}

void zi_logf(zi_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    zi_log_vemit(level, NULL, NULL, 0, fmt, ap);
    va_end(ap);
}

void zi_log_fields(zi_log_level level, const char *job_id, const zi_log_field *fields,
                   size_t nfields, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    zi_log_vemit(level, job_id, fields, nfields, fmt, ap);
    va_end(ap);
}
