/*
 * fuzz_tokenizer.c - libFuzzer target for encoding arbitrary bytes with the real Qwen
 * tokenizer (loaded once from tests/golden/data/tiny-zimage/tokenizer, found through
 * ZI_SOURCE_DIR or the working directory, which is the repo root under ctest).
 *
 * Invalid UTF-8 must be refused with ZI_EINVAL; valid input must encode, every id must
 * be a real token, and for input whose code points are all below U+0300 (so NFC leaves it
 * unchanged) decode(encode(x)) must give x back. encode_prompt output is at most 512 ids.
 * The corpus (tests/fuzz/corpus/fuzz_tokenizer/) is replayed by ctest.
 */
#include "tokenizer.h"
#include "zi_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static zi_tokenizer *zi_fuzz_tok(void)
{
    static zi_tokenizer *tok;
    if (tok)
        return tok;
    const char *src = getenv("ZI_SOURCE_DIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/golden/data/tiny-zimage/tokenizer", src ? src : ".");
    if (zi_tokenizer_load(dir, &tok) != ZI_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", zi_errmsg());
        abort();
    }
    return tok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const zi_tokenizer *tok = zi_fuzz_tok();
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = zi_tokenizer_encode(tok, (const char *)data, size, &ids, &n);
    if (rc != ZI_OK) {
        if (rc != ZI_EINVAL || ids)
            abort();
        return 0;
    }
    size_t nids = zi_tokenizer_n_ids(tok);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= nids)
            abort();
    int below_u0300 = 1;
    for (size_t i = 0; i < size; i++)
        below_u0300 &= data[i] < 0xCC;
    char *text = NULL;
    size_t len = 0;
    if (zi_tokenizer_decode(tok, ids, n, &text, &len) != ZI_OK)
        abort();
    if (below_u0300 && (len != size || memcmp(text, data, size) != 0))
        abort();
    free(text);
    free(ids);

    /* the same bytes as a prompt (cut at the first NUL, as a C string) */
    char *prompt = malloc(size + 1);
    if (!prompt)
        return 0;
    memcpy(prompt, data, size);
    prompt[size] = '\0';
    rc = zi_tokenizer_encode_prompt(tok, prompt, ZI_TOKENIZER_MAX_LEN, &ids, &n);
    if (rc == ZI_OK && (n < 1 || n > ZI_TOKENIZER_MAX_LEN))
        abort();
    free(ids);
    free(prompt);
    return 0;
}
