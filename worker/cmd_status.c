/*
 * cmd_status.c - `zimage status --config FILE JOB_ID [--wait]`: prints the job's hash as
 * a JSON object of strings, with `url` freshly presigned.
 *
 * Exit status: 0 when the job is known (whatever its status); 1 when it is unknown, when
 * Redis cannot be reached, or when --timeout passes first; 2 on a usage or configuration
 * error.
 */
#include "cli_util.h"
#include "jobcli.h"
#include "job.h"
#include "log.h"
#include "zi_err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void zi_status_usage(FILE *f)
{
    fprintf(f, "usage: zimage status --config FILE JOB_ID [--wait] [--timeout SECONDS]\n"
               "\n"
               "Prints the job's Redis hash as a JSON object of strings; `url` is a presigned\n"
               "GET of the image signed now. Exit 1 with an error when the job is unknown.\n"
               "\n"
               "options:\n"
               "  --config FILE      the YAML configuration (redis.*, s3.*)\n"
               "  --wait             wait until the job is succeeded, failed or cancelled\n"
               "  --timeout SECONDS  give up waiting after this long (default: no limit)\n"
               "  --help             show this help\n");
}

int zi_cmd_status(int argc, char **argv)
{
    const char *config = NULL, *job_id = NULL;
    int wait = 0;
    double timeout = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int r;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            zi_status_usage(stdout);
            return 0;
        } else if (strcmp(a, "--wait") == 0) {
            wait = 1;
        } else if ((r = zi_cli_opt(argc, argv, &i, "--config", &config)) != 0 ||
                   (r = zi_cli_opt(argc, argv, &i, "--timeout", &v)) != 0) {
            if (r < 0)
                return zi_cli_usage_error("status", "missing value after %s", a);
            if (v) {
                char *end = NULL;
                errno = 0;
                timeout = strtod(v, &end);
                if (errno || !end || *end || end == v || !(timeout >= 0 && timeout <= 1e7))
                    return zi_cli_usage_error("status", "--timeout: not a number of seconds: %s",
                                              v);
            }
        } else if (a[0] == '-' && a[1]) {
            return zi_cli_usage_error("status", "unknown option %s", a);
        } else if (!job_id) {
            job_id = a;
        } else {
            return zi_cli_usage_error("status", "more than one JOB_ID: %s", a);
        }
    }
    if (!config)
        return zi_cli_usage_error("status", "--config FILE is required");
    if (!job_id)
        return zi_cli_usage_error("status", "JOB_ID is required");
    if (!zi_job_id_valid(job_id)) { /* names no job: the contract's "unknown", exit 1 */
        fprintf(stderr, "zimage: error: job %s not found (not a valid job id)\n", job_id);
        return 1;
    }

    zi_wconfig cfg = {0};
    if (zi_wconfig_load(&cfg, config, zi_log_warn_cb, NULL) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        return 2;
    }
    zi_rstatus *rs = NULL;
    zi_rstatus_hash h = {0};
    int code = 1;
    if (zi_jobcli_redis(&cfg, &rs) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        zi_wconfig_free(&cfg);
        return 2;
    }
    int rc = zi_jobcli_get(rs, job_id, 5000, &h);
    if (rc == ZI_ENOTFOUND) {
        fprintf(stderr, "zimage: error: job %s not found\n", job_id);
        goto out;
    }
    if (rc == ZI_OK && wait && !zi_jobcli_final(zi_rstatus_hash_get(&h, "status"))) {
        zi_rstatus_hash_free(&h);
        rc = zi_jobcli_wait(rs, job_id, timeout, &h);
    }
    if (rc != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        goto out;
    }
    if (zi_jobcli_print(&cfg, &h, stdout) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        goto out;
    }
    code = 0;
out:
    zi_rstatus_hash_free(&h);
    zi_rstatus_destroy(rs);
    zi_wconfig_free(&cfg);
    return code;
}
