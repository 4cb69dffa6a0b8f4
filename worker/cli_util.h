/*
 * cli_util.h - small helpers the subcommands share: strict number parsing for option values,
 * installing one stop handler for several signals, and reading a --prompts-file.
 *
 * Limits: parsers accept plain decimal text only (the whole string, no trailing junk); they
 * print nothing: the caller words the message and prints it with zi_cli_usage_error().
 */
#ifndef ZI_CLI_UTIL_H
#define ZI_CLI_UTIL_H

#include "backend.h"
#include "config.h"
#include "pipeline.h"

#include <stddef.h>
#include <stdint.h>

/* Prints one usage-error line to stderr - "zimage: error: MESSAGE (see 'zimage CMD --help')",
 * MESSAGE formatted from fmt like printf and cut at 1 KiB; cmd NULL for the top level,
 * "(see 'zimage --help')" - and returns 2, the exit status of a usage error
 * (docs/contract.md). Every command's bad-argument message goes through it. */
int zi_cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses a decimal integer in [lo, hi] (strtol, base 10) into *out. Returns 0, or -1 (with
 * *out untouched) on empty text, trailing characters, overflow or a value out of range. */
int zi_cli_parse_long(const char *s, long lo, long hi, long *out);

/* zi_cli_parse_long() for an int destination; lo and hi must lie within int's range. */
int zi_cli_parse_int(const char *s, long lo, long hi, int *out);

/* Parses a decimal floating-point number in [lo, hi] (strtod) into *out; NaN is refused.
 * Returns 0 or -1 like zi_cli_parse_long(). */
int zi_cli_parse_double(const char *s, double lo, double hi, double *out);

/* Option `name` at argv[*i], as "--name value" or "--name=value": 1 with *val set (and *i
 * moved past a separate value), 0 when argv[*i] is another argument, -1 when the value is
 * missing. */
int zi_cli_opt(int argc, char **argv, int *i, const char *name, const char **val);

/* zi_cli_opt() for the first of the n names that argv[*i] is: 1 with *name (the entry of
 * names) and *val set, -1 with *name set when the value is missing, 0 when it is none. */
int zi_cli_opt_of(int argc, char **argv, int *i, const char *const *names, size_t n,
                  const char **name, const char **val);

/* 1 when path names an existing folder (stat() follows links), else 0: the subcommands'
 * `--model DIR` check, a usage error (exit 2) before anything is loaded. */
int zi_cli_is_dir(const char *path);

/* Installs handler for each of the n signals in sigs with sigaction(): empty mask and no
 * flags (no SA_RESTART, so a blocking poll()/nanosleep() returns EINTR at once). */
void zi_cli_on_signals(void (*handler)(int), const int *sigs, size_t n);

/* Plans the largest job that will run on `be` - width x height, with CFG when guidance > 0,
 * for a model of `cfg` (zi_pipeline_act_estimate) - into *plan and, on the CUDA backend,
 * raises the "auto" weight budget's activation headroom to the plan plus the backend's
 * job scratch (zi_cuda_set_act_headroom: plus a 512 MiB margin, at least 1 GiB). *headroom (may be
 * NULL) receives the headroom in force (0 off CUDA, or when the budget is not "auto": then it
 * leaves nothing free on purpose). Call between creating the backend and
 * loading the weights. ZI_OK, or the plan's error (nothing changed). */
int zi_cli_plan_headroom(zi_backend *be, const zi_model_config *cfg, int width, int height,
                         float guidance, zi_mem_plan *plan, uint64_t *headroom);
/* The second half of zi_cli_plan_headroom: the headroom for a plan already made. */
int zi_cli_apply_headroom(zi_backend *be, const zi_mem_plan *plan, uint64_t *headroom);

/* The longest line of a prompts file, bytes. */
#define ZI_CLI_MAX_PROMPT_LINE (4u << 20)

/* Reads a prompts file (`path`, "-" = stdin): one JSON string per line, so any prompt -
 * newlines and all - fits on one line. Calls each(ud, prompt, where) per line in order,
 * `where` being "FILE:LINE: " for the caller's messages; stops at the first non-zero return
 * and returns it. A line that is not one JSON string, holds a raw control byte or \u0000,
 * or is longer than ZI_CLI_MAX_PROMPT_LINE prints one "zimage: error: FILE:LINE: ..." line
 * and returns 2; a file that cannot be opened or read, 1. 0 after the last line. */
int zi_cli_read_prompts(const char *path,
                        int (*each)(void *ud, const char *prompt, const char *where), void *ud);

#endif
