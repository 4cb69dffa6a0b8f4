/*
 * backend.c - the parts of the backend interface shared by every backend: the sticky
 * error, the choice of backend by name and the weight budget's spelling.
 */
#include "backend.h"
#include "zi_err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int zi_backend_fail(zi_backend *be, int code, const char *fmt, ...)
{
    /* the first error wins, except that a lost device replaces an error it caused (an
     * allocation or a cuBLAS call that failed before the stream said why) */
    if (be->err != ZI_OK && !(code == ZI_EDEVICE && be->err != ZI_EDEVICE))
        return be->err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->errmsg, sizeof be->errmsg, fmt, ap);
    va_end(ap);
    be->err = code;
    return code;
}

int zi_backend_check(zi_backend *be)
{
    if (be->err == ZI_OK)
        return ZI_OK;
    return zi_errorf(be->err, "%s backend: %s", be->name, be->errmsg);
}

void zi_backend_clear_error(zi_backend *be)
{
    if (be->err == ZI_EDEVICE)
        return; /* the device's context is lost: no later job can run on it */
    be->err = ZI_OK;
    be->errmsg[0] = '\0';
}

#ifndef ZI_HAVE_CUDA
zi_backend *zi_backend_cuda_new(int device)
{
    (void)device;
    zi_errorf(ZI_EINVAL, "this zimage was built without the CUDA backend");
    return NULL;
}

int zi_backend_cuda_available(void)
{
    zi_errorf(ZI_EINVAL, "this zimage was built without the CUDA backend");
    return 0;
}
#endif

zi_backend *zi_backend_new(const char *name)
{
    if (strcmp(name, "cpu") == 0)
        return zi_backend_cpu_new(0);
    if (strcmp(name, "cuda") == 0)
        return zi_backend_cuda_new(0);
    if (strcmp(name, "auto") == 0)
        return zi_backend_cuda_available() ? zi_backend_cuda_new(0) : zi_backend_cpu_new(0);
    zi_errorf(ZI_EINVAL, "unknown backend '%s' (expected auto, cpu or cuda)", name);
    return NULL;
}

int zi_weight_budget_parse(const char *spec, zi_budget_kind *kind, uint64_t *bytes)
{
    *bytes = 0;
    *kind = ZI_BUDGET_AUTO;
    if (!spec || !*spec || strcmp(spec, "auto") == 0)
        return ZI_OK;
    *kind = ZI_BUDGET_RESIDENT;
    if (strcmp(spec, "resident") == 0)
        return ZI_OK;
    char *end = NULL;
    errno = 0;
    unsigned long long mb = strtoull(spec, &end, 10);
    if (errno || !end || *end || spec[0] < '0' || spec[0] > '9' || mb > (UINT64_MAX >> 21))
        return zi_errorf(ZI_EINVAL,
                         "weight budget \"%.32s\" must be auto, resident or a number of MiB", spec);
    *kind = ZI_BUDGET_BYTES;
    *bytes = (uint64_t)mb << 20;
    return ZI_OK;
}
