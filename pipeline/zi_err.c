/*
 * zi_err.c - the per-thread error message behind zi_errorf().
 */
#include "zi_err.h"

#include <stdio.h>
#include <string.h>

#define ZI_ERR_MSG_MAX 1024

static _Thread_local char zi_err_msg[ZI_ERR_MSG_MAX];

int zi_errorf(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(zi_err_msg, sizeof zi_err_msg, fmt, ap);
    va_end(ap);
    return code;
}

int zi_error_prefix(int code, const char *fmt, ...)
{
    char prefix[ZI_ERR_MSG_MAX];
    char old[ZI_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, zi_err_msg, sizeof old);
    size_t n = strlen(prefix);
    if (n > sizeof zi_err_msg - 3)
        n = sizeof zi_err_msg - 3;
    memcpy(zi_err_msg, prefix, n);
    memcpy(zi_err_msg + n, ": ", 2);
    size_t room = sizeof zi_err_msg - n - 3;
    size_t m = strnlen(old, room);
    memcpy(zi_err_msg + n + 2, old, m);
    zi_err_msg[n + 2 + m] = '\0';
    return code;
}

const char *zi_errmsg(void)
{
    return zi_err_msg;
}

void zi_error_clear(void)
{
    zi_err_msg[0] = '\0';
}

const char *zi_strerror(int code)
{
    switch (code) {
    case ZI_OK:
        return "ok";
    case ZI_EINVAL:
        return "invalid argument";
    case ZI_EIO:
        return "i/o error";
    case ZI_ENOMEM:
        return "out of memory";
    case ZI_EFORMAT:
        return "bad format";
    case ZI_ECANCELLED:
        return "cancelled";
    case ZI_EBACKEND:
        return "backend error";
    case ZI_ENOTFOUND:
        return "not found";
    case ZI_EAUTH:
        return "authentication failed";
    case ZI_ETRANSIENT:
        return "transient failure";
    case ZI_ECONFLICT:
        return "conflict";
    case ZI_EDEVICE:
        return "device failed";
    default:
        return "unknown error";
    }
}
