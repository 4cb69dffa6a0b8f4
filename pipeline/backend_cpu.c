/*
 * backend_cpu.c - placeholder until the fp32 reference backend lands.
 */
#include "backend.h"
#include "zi_err.h"

zi_backend *zi_backend_cpu_new(int threads)
{
    (void)threads;
    zi_errorf(ZI_EINVAL, "cpu backend not yet implemented");
    return NULL;
}
