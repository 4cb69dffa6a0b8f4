/*
 * zi_err.h - error codes and the per-thread error message.
 *
 * Library code never exits and never prints: a failing function records one clear
 * message with zi_errorf() and returns the (negative) code it was given. Only main()
 * and the worker decide what to do with it. The message lives in a thread-local
 * buffer, so it stays valid until the next zi_errorf() on the same thread.
 */
#ifndef ZI_ERR_H
#define ZI_ERR_H

#include <stdarg.h>

enum zi_status {
    ZI_OK = 0,
    ZI_EINVAL = -1,     /* bad argument or bad input (usage errors map to exit 2) */
    ZI_EIO = -2,        /* file or network I/O failed */
    ZI_ENOMEM = -3,     /* out of host or device memory */
    ZI_EFORMAT = -4,    /* malformed file: safetensors, JSON, config, tokenizer */
    ZI_ECANCELLED = -5, /* a progress callback asked to stop */
    ZI_EBACKEND = -6,   /* a compute backend failed (CUDA error, BLAS error) */
    ZI_ENOTFOUND = -7,  /* a named thing does not exist (tensor, file, job) */
    ZI_EAUTH = -8,      /* credentials refused (S3 403) */
    ZI_ETRANSIENT = -9, /* retryable remote failure (5xx, connection refused) */
    ZI_ECONFLICT = -10, /* a write refused because another party owns the record now */
    ZI_EDEVICE = -11,   /* the device failed (a sticky CUDA error: illegal address, ECC,
                         * GPU lost): its context is unusable until the process restarts */
};

/* Records a printf-style message for the calling thread and returns `code`. */
int zi_errorf(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes the current message with "<context>: " (for adding a file or tensor name). */
int zi_error_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last message ("" when none). */
const char *zi_errmsg(void);

/* Clears the calling thread's message. */
void zi_error_clear(void);

/* A short name for a status code ("invalid argument", ...). */
const char *zi_strerror(int code);

#endif
