/*
 * cmd_tokenize.c - `zimage tokenize --model DIR --prompt TEXT` (docs/interfaces.md).
 *
 * Prints {"ids":[...],"n":L}: the templated prompt's ids as the text encoder sees them
 * (chat template applied, truncated to ZI_TOKENIZER_MAX_LEN, no padding). Only the
 * tokenizer is loaded, from DIR/tokenizer. Exit: 0 ok; 2 usage error or a prompt that is
 * not valid UTF-8 or a --model that is no folder; 1 when the tokenizer cannot be loaded.
 */
#include "cli_util.h"
#include "tokenizer.h"
#include "zi_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void tok_usage(FILE *f)
{
    fprintf(f,
            "usage: zimage tokenize --model DIR --prompt TEXT\n"
            "\n"
            "Prints the prompt's token ids as JSON {\"ids\":[...],\"n\":L}: the chat template\n"
            "applied, truncated to %d ids, no padding.\n"
            "\n"
            "  --model DIR    checkpoint folder in the diffusers layout (reads DIR/tokenizer)\n"
            "  --prompt TEXT  the prompt (UTF-8)\n",
            ZI_TOKENIZER_MAX_LEN);
}

static int tok_usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "zimage: error: %s%s (see 'zimage tokenize --help')\n", msg, arg ? arg : "");
    return 2;
}

/* Matches "--name VALUE" (advancing *i) or "--name=VALUE". 1 = matched, -1 = no value. */
static int tok_opt(int argc, char **argv, int *i, const char *name, const char **val)
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

int zi_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL;
    for (int i = 1; i < argc; i++) {
        int r;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            tok_usage(stdout);
            return 0;
        }
        if ((r = tok_opt(argc, argv, &i, "--model", &model)) != 0 ||
            (r = tok_opt(argc, argv, &i, "--prompt", &prompt)) != 0) {
            if (r < 0)
                return tok_usage_error("missing value for ", argv[i]);
            continue;
        }
        return tok_usage_error("unknown option ", argv[i]);
    }
    if (!model)
        return tok_usage_error("--model is required", NULL);
    if (!prompt)
        return tok_usage_error("--prompt is required", NULL);

    if (!zi_cli_is_dir(model)) {
        fprintf(stderr, "zimage: error: --model '%s': no such folder\n", model);
        return 2;
    }
    char dir[4096];
    int w = snprintf(dir, sizeof dir, "%s/tokenizer", model);
    if (w < 0 || (size_t)w >= sizeof dir)
        return tok_usage_error("--model path too long", NULL);
    zi_tokenizer *tok;
    int rc = zi_tokenizer_load(dir, &tok);
    if (rc) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        return 1;
    }
    int32_t *ids;
    size_t n;
    rc = zi_tokenizer_encode_prompt(tok, prompt, ZI_TOKENIZER_MAX_LEN, &ids, &n);
    zi_tokenizer_free(tok);
    if (rc) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        return rc == ZI_EINVAL ? 2 : 1;
    }
    fputs("{\"ids\":[", stdout);
    for (size_t i = 0; i < n; i++)
        printf(i ? ",%d" : "%d", ids[i]);
    printf("],\"n\":%zu}\n", n);
    free(ids);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "zimage: error: cannot write to stdout\n");
        return 1;
    }
    return 0;
}
