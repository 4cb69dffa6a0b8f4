/*
 * cmd_encode.c - `zimage encode`: prompt -> chat template -> tokens -> Qwen3 encoder ->
 * prompt_embeds (F32, [L, D]) in a safetensors file (docs/contract.md).
 *
 * The same text path as `generate` (spec §2): template, truncate to 512 ids, run
 * layers 0 .. n-2 over the real tokens. Useful to check the encoder on its own and to
 * feed other tools.
 */
#include "backend.h"
#include "cli_util.h"
#include "config.h"
#include "qwen3.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "zi_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void zi_encode_usage(FILE *f)
{
    fprintf(f, "usage: zimage encode --model DIR --prompt TEXT --output FILE.safetensors\n"
               "                     [--backend auto|cpu|cuda]\n"
               "\n"
               "Runs the text encoder of the checkpoint in DIR (diffusers layout) on the\n"
               "chat-templated prompt and writes tensor prompt_embeds (F32, [L, D]).\n"
               "\n"
               "  --model DIR      checkpoint folder (text_encoder/, tokenizer/)\n"
               "  --prompt TEXT    the prompt (UTF-8)\n"
               "  --output FILE    safetensors file to write\n"
               "  --backend NAME   auto (default: cuda when available), cpu or cuda\n"
               "  --help           this text\n");
}

/* Tokenizes, encodes and writes the file; returns a status with zi_errmsg() set.
 * *config_error is set when the failure is the checkpoint's configuration. */
static int zi_encode_run(const char *model, const char *prompt, const char *output,
                         const char *backend, int *config_error)
{
    char path[4096];
    zi_te_config cfg;
    zi_tokenizer *tok = NULL;
    zi_backend *be = NULL;
    zi_st *st = NULL;
    zi_qwen3 *m = NULL;
    int32_t *ids = NULL;
    float *host = NULL;
    zi_tensor out = {0};
    size_t n = 0;
    int rc;

    *config_error = 1;
    if (snprintf(path, sizeof path, "%s/text_encoder/config.json", model) >= (int)sizeof path)
        return zi_errorf(ZI_EINVAL, "model path too long");
    rc = zi_te_config_load(path, &cfg);
    if (rc != ZI_OK)
        return rc;
    snprintf(path, sizeof path, "%s/tokenizer", model);
    rc = zi_tokenizer_load(path, &tok);
    if (rc != ZI_OK)
        return rc;
    *config_error = 0;

    rc = zi_tokenizer_encode_prompt(tok, prompt, ZI_TOKENIZER_MAX_LEN, &ids, &n);
    if (rc != ZI_OK) {
        *config_error = rc == ZI_EINVAL; /* a prompt that is not UTF-8: usage error, exit 2 */
        goto out;
    }
    be = zi_backend_new(backend);
    if (!be) {
        rc = ZI_EBACKEND;
        goto out;
    }
    snprintf(path, sizeof path, "%s/text_encoder", model);
    rc = zi_st_open_dir(path, &st);
    if (rc == ZI_OK)
        rc = zi_qwen3_load(&m, st, &cfg, be);
    zi_st_close(st); /* weights are uploaded; the mapping is not needed any more */
    st = NULL;
    if (rc == ZI_OK)
        rc = zi_qwen3_forward(m, ids, (int)n, &out, NULL);
    if (rc != ZI_OK)
        goto out;
    size_t cnt = n * (size_t)cfg.hidden;
    host = malloc(cnt * sizeof *host);
    if (!host) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto out;
    }
    rc = be->download(be, host, &out, cnt);
    if (rc != ZI_OK)
        goto out;
    int64_t shape[2] = {(int64_t)n, cfg.hidden};
    zi_tensor ht = zi_tensor_host(host, ZI_F32, 2, shape);
    const char *name = "prompt_embeds";
    rc = zi_st_write(output, 1, &name, &ht);
out:
    free(host);
    if (be)
        be->free(be, &out);
    zi_qwen3_free(m);
    zi_backend_destroy(be);
    free(ids);
    zi_tokenizer_free(tok);
    return rc;
}

int zi_cmd_encode(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *output = NULL, *backend = "auto";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            zi_encode_usage(stdout);
            return 0;
        }
        int r;
        if ((r = zi_cli_opt(argc, argv, &i, "--model", &model)) == 0 &&
            (r = zi_cli_opt(argc, argv, &i, "--prompt", &prompt)) == 0 &&
            (r = zi_cli_opt(argc, argv, &i, "--output", &output)) == 0 &&
            (r = zi_cli_opt(argc, argv, &i, "--backend", &backend)) == 0)
            return zi_cli_usage_error("encode", "encode: unknown option %s", a);
        if (r < 0)
            return zi_cli_usage_error("encode", "encode: missing value for %s", a);
    }
    if (!model)
        return zi_cli_usage_error("encode", "encode: --model is required");
    if (!prompt)
        return zi_cli_usage_error("encode", "encode: --prompt is required");
    if (!output)
        return zi_cli_usage_error("encode", "encode: --output is required");
    if (strcmp(backend, "auto") != 0 && strcmp(backend, "cpu") != 0 && strcmp(backend, "cuda") != 0)
        return zi_cli_usage_error("encode", "encode: --backend must be auto, cpu or cuda, not %s",
                                  backend);
    if (!zi_cli_is_dir(model)) {
        fprintf(stderr, "zimage: error: encode: --model '%s': no such folder\n", model);
        return 2;
    }
    int config_error = 0;
    int rc = zi_encode_run(model, prompt, output, backend, &config_error);
    if (rc != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        return config_error ? 2 : 1;
    }
    return 0;
}
