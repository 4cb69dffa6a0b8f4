/*
 * cmd_tokenize.c - `zimage tokenize --model DIR --prompt TEXT` (docs/contract.md), and
 * `--prompts-file FILE` for many prompts with one load of the tokenizer.
 *
 * Prints {"ids":[...],"n":L}: the templated prompt's ids as the text encoder sees them
 * (chat template applied, truncated to ZI_TOKENIZER_MAX_LEN, no padding). Only the
 * tokenizer is loaded, from DIR/tokenizer. FILE ("-": stdin) holds one JSON string per line
 * (any prompt, newlines and all, fits on one line that way); one output line per prompt,
 * in order. Exit: 0 ok; 2 usage error, a prompt that is not valid UTF-8, a FILE line that
 * is not one JSON string (or holds \u0000, or is longer than ZI_CLI_MAX_PROMPT_LINE) or a --model
 * that is no folder - the file's name and line number are named, the lines before it are
 * printed; 1 when the tokenizer or the file cannot be read.
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
            "usage: zimage tokenize --model DIR (--prompt TEXT | --prompts-file FILE)\n"
            "\n"
            "Prints the prompt's token ids as JSON {\"ids\":[...],\"n\":L}: the chat template\n"
            "applied, truncated to %d ids, no padding.\n"
            "\n"
            "  --model DIR    checkpoint folder in the diffusers layout (reads DIR/tokenizer)\n"
            "  --prompt TEXT  the prompt (UTF-8)\n"
            "  --prompts-file FILE\n"
            "                 one prompt per line, each a JSON string (\"-\": stdin); prints\n"
            "                 one line of ids per prompt, in order\n",
            ZI_TOKENIZER_MAX_LEN);
}

/* Encodes one prompt and prints its line. Returns 0, or the exit status after printing
 * the error (prefixed with `where` when not NULL). */
static int tok_print(const zi_tokenizer *tok, const char *prompt, const char *where)
{
    int32_t *ids;
    size_t n;
    int rc = zi_tokenizer_encode_prompt(tok, prompt, ZI_TOKENIZER_MAX_LEN, &ids, &n);
    if (rc) {
        fprintf(stderr, "zimage: error: %s%s\n", where ? where : "", zi_errmsg());
        return rc == ZI_EINVAL ? 2 : 1;
    }
    fputs("{\"ids\":[", stdout);
    for (size_t i = 0; i < n; i++)
        printf(i ? ",%d" : "%d", ids[i]);
    printf("],\"n\":%zu}\n", n);
    free(ids);
    return 0;
}

typedef struct tok_file_ctx {
    const zi_tokenizer *tok;
} tok_file_ctx;

static int tok_each(void *ud, const char *prompt, const char *where)
{
    return tok_print(((tok_file_ctx *)ud)->tok, prompt, where);
}

int zi_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *file = NULL;
    for (int i = 1; i < argc; i++) {
        int r;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            tok_usage(stdout);
            return 0;
        }
        if ((r = zi_cli_opt(argc, argv, &i, "--model", &model)) != 0 ||
            (r = zi_cli_opt(argc, argv, &i, "--prompt", &prompt)) != 0 ||
            (r = zi_cli_opt(argc, argv, &i, "--prompts-file", &file)) != 0) {
            if (r < 0)
                return zi_cli_usage_error("tokenize", "missing value for %s", argv[i]);
            continue;
        }
        return zi_cli_usage_error("tokenize", "unknown option %s", argv[i]);
    }
    if (!model)
        return zi_cli_usage_error("tokenize", "--model is required");
    if (!prompt == !file)
        return zi_cli_usage_error("tokenize", "give one of --prompt and --prompts-file");

    if (!zi_cli_is_dir(model)) {
        fprintf(stderr, "zimage: error: --model '%s': no such folder\n", model);
        return 2;
    }
    char dir[4096];
    int w = snprintf(dir, sizeof dir, "%s/tokenizer", model);
    if (w < 0 || (size_t)w >= sizeof dir)
        return zi_cli_usage_error("tokenize", "--model path too long");
    zi_tokenizer *tok;
    if (zi_tokenizer_load(dir, &tok) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        return 1;
    }
    tok_file_ctx fc = {tok};
    int rc = prompt ? tok_print(tok, prompt, NULL) : zi_cli_read_prompts(file, tok_each, &fc);
    zi_tokenizer_free(tok);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "zimage: error: cannot write to stdout\n");
        return 1;
    }
    return rc;
}
