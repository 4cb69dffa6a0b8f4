/*
 * jobcli.c - shared parts of `zimage submit` and `zimage status` (see jobcli.h).
 */
#include "jobcli.h"
#include "s3.h"
#include "zi_err.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void zi_jobcli_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double zi_jobcli_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int zi_jobcli_redis(const zi_wconfig *cfg, zi_rstatus **out)
{
    zi_rstatus_config rc =
        zi_wconfig_rstatus(cfg, cfg->worker_id[0] ? cfg->worker_id : "cli", 2000, 5000);
    return zi_rstatus_create(&rc, out);
}

int zi_jobcli_final(const char *s)
{
    return s &&
           (strcmp(s, "succeeded") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0);
}

int zi_jobcli_get(zi_rstatus *rs, const char *job_id, int retry_ms, zi_rstatus_hash *h)
{
    double until = zi_jobcli_now_s() + retry_ms / 1e3;
    for (;;) {
        int rc = zi_rstatus_job_get(rs, job_id, h);
        if (rc != ZI_ETRANSIENT || zi_jobcli_now_s() >= until)
            return rc;
        zi_jobcli_sleep_ms(200);
    }
}

int zi_jobcli_wait(zi_rstatus *rs, const char *job_id, double timeout_s, zi_rstatus_hash *h)
{
    double until = zi_jobcli_now_s() + timeout_s;
    int missing = 0;
    for (;;) {
        int rc = zi_rstatus_job_get(rs, job_id, h);
        if (rc == ZI_OK && zi_jobcli_final(zi_rstatus_hash_get(h, "status")))
            return ZI_OK;
        if (rc == ZI_OK)
            missing = 0;
        zi_rstatus_hash_free(h);
        /* A hash can vanish while Redis restarts empty; the worker writes it again. Give
         * up only when it stays missing for a while. */
        if (rc == ZI_ENOTFOUND && ++missing > 150)
            return zi_errorf(ZI_ENOTFOUND, "job %s: not found", job_id);
        if (rc != ZI_OK && rc != ZI_ENOTFOUND && rc != ZI_ETRANSIENT)
            return rc;
        if (timeout_s > 0 && zi_jobcli_now_s() >= until)
            return zi_errorf(ZI_ETRANSIENT, "job %s: no final state within %.0f s", job_id,
                             timeout_s);
        zi_jobcli_sleep_ms(200);
    }
}

static int zi_jobcli_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int zi_jobcli_print(const zi_wconfig *cfg, const zi_rstatus_hash *h, FILE *out)
{
    const char **names = calloc(h->n ? h->n : 1, sizeof *names);
    cJSON *o = cJSON_CreateObject();
    char url[ZI_S3_MAX_URL] = "";
    int rc = ZI_OK;
    if (!names || !o) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto out;
    }
    const char *status = zi_rstatus_hash_get(h, "status");
    const char *key = zi_rstatus_hash_get(h, "s3_key");
    int have_url = 0;
    if (status && strcmp(status, "succeeded") == 0 && key && key[0]) {
        zi_s3_config sc = zi_wconfig_s3(cfg);
        if (zi_s3_presign_get_cfg(&sc, key, cfg->s3_presign_ttl_s, 0, url, sizeof url) == ZI_OK)
            have_url = 1;
        else
            fprintf(stderr, "zimage: warning: cannot sign a URL: %s\n", zi_errmsg());
    }
    for (size_t i = 0; i < h->n; i++)
        names[i] = h->names[i];
    qsort(names, h->n, sizeof *names, zi_jobcli_cmp);
    int url_done = 0;
    for (size_t i = 0; i < h->n; i++) {
        const char *v = zi_rstatus_hash_get(h, names[i]);
        if (strcmp(names[i], "url") == 0 && have_url) {
            v = url;
            url_done = 1;
        }
        if (!cJSON_AddStringToObject(o, names[i], v ? v : "")) {
            rc = zi_errorf(ZI_ENOMEM, "out of memory");
            goto out;
        }
    }
    if (have_url && !url_done && !cJSON_AddStringToObject(o, "url", url)) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto out;
    }
    char *text = cJSON_PrintUnformatted(o); /* one line: `submit --wait`'s last */
    if (!text) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto out;
    }
    fprintf(out, "%s\n", text);
    fflush(out);
    free(text);
out:
    cJSON_Delete(o);
    free(names);
    return rc;
}
