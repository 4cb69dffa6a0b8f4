/*
 * cli_util.c - option-value parsing, signal set-up and the prompts-file reader shared by
 * the subcommands (see cli_util.h).
 */
#include "cli_util.h"
#include "json_util.h"
#include "zi_err.h"
#ifdef ZI_HAVE_CUDA
#include "zi_cuda.h"
#endif

#include <cjson/cJSON.h>
#include <stdio.h>
#include <sys/types.h>

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int zi_cli_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int zi_cli_parse_int(const char *s, long lo, long hi, int *out)
{
    long v = 0;
    if (zi_cli_parse_long(s, lo, hi, &v) != 0)
        return -1;
    *out = (int)v;
    return 0;
}

int zi_cli_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

void zi_cli_on_signals(void (*handler)(int), const int *sigs, size_t n)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    for (size_t i = 0; i < n; i++)
        sigaction(sigs[i], &sa, NULL);
}

int zi_cli_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return 0;
    if (argv[*i][n] == '=') {
        *val = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *val = argv[++*i];
    return 1;
}

int zi_cli_opt_of(int argc, char **argv, int *i, const char *const *names, size_t n,
                  const char **name, const char **val)
{
    for (size_t k = 0; k < n; k++) {
        int r = zi_cli_opt(argc, argv, i, names[k], val);
        if (r != 0) {
            *name = names[k];
            return r;
        }
    }
    return 0;
}

int zi_cli_usage_error(const char *cmd, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "zimage: error: %s (see 'zimage %s%s--help')\n", msg, cmd ? cmd : "",
            cmd ? " " : "");
    return 2;
}

int zi_cli_is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int zi_cli_read_prompts(const char *path,
                        int (*each)(void *ud, const char *prompt, const char *where), void *ud)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "zimage: error: --prompts-file '%s': cannot open it\n", path);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    for (long no = 1; rc == 0 && (len = getline(&line, &cap, f)) >= 0; no++) {
        char where[256];
        snprintf(where, sizeof where, "%.200s:%ld: ", path, no);
        if ((size_t)len > ZI_CLI_MAX_PROMPT_LINE) {
            fprintf(stderr, "zimage: error: %sline longer than %u bytes\n", where,
                    ZI_CLI_MAX_PROMPT_LINE);
            rc = 2;
            break;
        }
        const char *end = NULL;
        zi_json_cut cut;
        cJSON *v = cJSON_ParseWithLengthOpts(line, (size_t)len, &end, 0);
        while (v && end < line + len &&
               (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
            end++;
        if (!cJSON_IsString(v) || end != line + len) {
            fprintf(stderr,
                    "zimage: error: %snot one JSON string (a prompt per line, e.g. "
                    "\"a cat\")\n",
                    where);
            rc = 2;
        } else if (zi_json_find_cut(line, (size_t)len, NULL, &cut)) {
            if (cut.raw)
                fprintf(stderr,
                        "zimage: error: %sa raw control byte 0x%02x at byte %zu (JSON strings "
                        "must escape it)\n",
                        where, (unsigned)(unsigned char)line[cut.at], cut.at);
            else
                fprintf(stderr, "zimage: error: %sthe prompt holds a NUL character (\\u0000)\n",
                        where);
            rc = 2;
        } else {
            rc = each(ud, v->valuestring, where);
        }
        cJSON_Delete(v);
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "zimage: error: --prompts-file '%s': read error\n", path);
        rc = 1;
    }
    free(line);
    if (f != stdin)
        fclose(f);
    return rc;
}

int zi_cli_apply_headroom(zi_backend *be, const zi_mem_plan *plan, uint64_t *headroom)
{
    if (headroom)
        *headroom = 0;
    int rc = ZI_OK;
#ifdef ZI_HAVE_CUDA
    if (zi_cuda_is(be)) {
        rc = zi_cuda_set_act_headroom(be, plan->mapped + zi_cuda_job_scratch_bytes(be));
        if (headroom && zi_cuda_weight_budget_auto(be))
            *headroom = zi_cuda_act_headroom(be);
    }
#else
    (void)be;
    (void)plan;
#endif
    return rc;
}

int zi_cli_plan_headroom(zi_backend *be, const zi_model_config *cfg, int width, int height,
                         float guidance, zi_mem_plan *plan, uint64_t *headroom)
{
    if (headroom)
        *headroom = 0;
    int rc = zi_pipeline_act_estimate(cfg, width, height, guidance, 0, plan);
    return rc != ZI_OK ? rc : zi_cli_apply_headroom(be, plan, headroom);
}
