/*
 * zi_test.c - helpers shared by the C tests.
 */
#include "zi_test.h"
#include "zi_err.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#ifndef ZI_SOURCE_DIR
#define ZI_SOURCE_DIR "."
#endif

const char *zi_test_path(const char *rel)
{
    static _Thread_local char buf[4096];
    const char *root = getenv("ZI_SOURCE_DIR");
    if (!root || !*root)
        root = ZI_SOURCE_DIR;
    snprintf(buf, sizeof buf, "%s/%s", root, rel);
    return buf;
}

const char *zi_test_golden(const char *rel)
{
    char tmp[2048];
    snprintf(tmp, sizeof tmp, "tests/golden/data/%s", rel);
    return zi_test_path(tmp);
}

double zi_rel_err(const float *out, const float *ref, size_t n)
{
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)out[i] - (double)ref[i]);
        if (d > maxdiff || isnan(d))
            maxdiff = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > maxref)
            maxref = fabs(ref[i]);
    }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}

double zi_max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

double zi_psnr_u8(const uint8_t *a, const uint8_t *b, size_t n)
{
    double se = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        se += d * d;
    }
    if (se == 0)
        return INFINITY;
    return 10.0 * log10(255.0 * 255.0 / (se / (double)n));
}

int zi_test_run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t len = 0;
    char chunk[4096];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, p)) > 0) {
        if (out && cap > 0) {
            size_t take = got;
            if (len + take > cap - 1)
                take = cap - 1 - len;
            memcpy(out + len, chunk, take);
            len += take;
        }
    }
    if (out && cap > 0)
        out[len] = '\0';
    int st = pclose(p);
    if (st == -1)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

char *zi_test_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        len = ftell(f);
    if (len >= 0 && fseek(f, 0, SEEK_SET) == 0)
        buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[len] = '\0';
    fclose(f);
    return buf;
}

float *zi_test_tensor_f32(const zi_st_tensor *t, size_t *n)
{
    size_t numel = 1;
    for (int i = 0; i < t->ndim; i++)
        numel *= (size_t)t->shape[i];
    float *buf = malloc((numel ? numel : 1) * sizeof *buf);
    assert_non_null(buf);
    if (zi_st_read_f32(t, buf) != ZI_OK)
        fail_msg("tensor %s: %s", t->name, zi_errmsg());
    if (n)
        *n = numel;
    return buf;
}

float *zi_test_st_f32(const zi_st *st, const char *name, size_t *n)
{
    const zi_st_tensor *t = zi_st_find(st, name);
    if (!t)
        fail_msg("tensor %s missing", name);
    return zi_test_tensor_f32(t, n);
}
