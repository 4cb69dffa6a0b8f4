/*
 * test_tokenizer.c - the tokenizer against tokenizer_golden.json (ids identical, with and
 * without the chat template, and the template string itself), decode, invalid UTF-8
 * (rejected, naming the byte offset), byte-level round trips, concurrent use of one
 * tokenizer, and `zimage tokenize` printing exactly {"ids":[...],"n":L}.
 */
#include "json_util.h"
#include "tokenizer.h"
#include "zi_err.h"
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static zi_tokenizer *g_tok;
static cJSON *g_gold;
static int g_max_len;

static int setup(void **state)
{
    (void)state;
    if (zi_tokenizer_load(zi_test_model("tokenizer"), &g_tok) != ZI_OK) {
        fprintf(stderr, "load: %s\n", zi_errmsg());
        return -1;
    }
    if (zi_json_load_file(zi_test_golden("vectors/tokenizer_golden.json"), 64 << 20, &g_gold))
        return -1;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(g_gold, "max_sequence_length");
    g_max_len = cJSON_IsNumber(m) ? m->valueint : -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    zi_tokenizer_free(g_tok);
    cJSON_Delete(g_gold);
    return 0;
}

static const cJSON *cases(void)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(g_gold, "cases");
    assert_true(cJSON_IsArray(c));
    assert_true(cJSON_GetArraySize(c) > 0);
    return c;
}

static const char *str_of(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

static void assert_ids(const int32_t *ids, size_t n, const cJSON *ref, const char *what,
                       const char *prompt)
{
    assert_true(cJSON_IsArray(ref));
    size_t rn = (size_t)cJSON_GetArraySize(ref);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ref)
    {
        if (i >= n || ids[i] != e->valueint)
            fail_msg("%s of \"%.60s\": id %zu is %d, expected %d (lengths %zu vs %zu)", what,
                     prompt, i, i < n ? ids[i] : -1, e->valueint, n, rn);
        i++;
    }
    if (n != rn)
        fail_msg("%s of \"%.60s\": %zu ids, expected %zu", what, prompt, n, rn);
}

static void test_golden_ids(void **state)
{
    (void)state;
    assert_int_equal(g_max_len, ZI_TOKENIZER_MAX_LEN);
    const cJSON *c;
    int truncated_seen = 0;
    cJSON_ArrayForEach(c, cases())
    {
        const char *prompt = str_of(c, "prompt");
        int32_t *ids;
        size_t n;
        assert_int_equal(zi_tokenizer_encode_prompt(g_tok, prompt, (size_t)g_max_len, &ids, &n),
                         ZI_OK);
        assert_ids(ids, n, cJSON_GetObjectItemCaseSensitive(c, "ids"), "ids", prompt);
        free(ids);

        assert_int_equal(zi_tokenizer_encode(g_tok, prompt, strlen(prompt), &ids, &n), ZI_OK);
        assert_non_null(ids);
        const cJSON *raw = cJSON_GetObjectItemCaseSensitive(c, "raw_ids");
        assert_ids(ids, n, raw, "raw_ids", prompt);
        truncated_seen |= n + 8 > (size_t)g_max_len;

        char *text;
        size_t len;
        assert_int_equal(zi_tokenizer_decode(g_tok, ids, n, &text, &len), ZI_OK);
        assert_string_equal(text, str_of(c, "decoded_raw"));
        free(text);
        free(ids);

        assert_int_equal(zi_tokenizer_template(prompt, &text, &len), ZI_OK);
        assert_string_equal(text, str_of(c, "templated"));
        assert_int_equal(len, strlen(text));
        free(text);
    }
    if (!truncated_seen) {
        /* this set has no prompt long enough to be cut: make one from its prompts and
         * check that the cut keeps the head of the whole templated encoding */
        char *longp = NULL;
        size_t len = 0, cap = 0;
        for (int round = 0; round < 64; round++)
            cJSON_ArrayForEach(c, cases())
            {
                const char *p = str_of(c, "prompt");
                size_t pl = strlen(p);
                if (len + pl + 2 > cap) {
                    cap = 2 * (len + pl + 2);
                    char *grown = realloc(longp, cap);
                    assert_non_null(grown);
                    longp = grown;
                }
                memcpy(longp + len, p, pl);
                len += pl;
                longp[len++] = ' ';
                longp[len] = '\0';
            }
        int32_t *all, *cut;
        size_t nall, ncut;
        assert_non_null(longp);
        assert_int_equal(zi_tokenizer_encode_prompt(g_tok, longp, 0, &all, &nall), ZI_OK);
        assert_true(nall > (size_t)g_max_len);
        assert_int_equal(zi_tokenizer_encode_prompt(g_tok, longp, (size_t)g_max_len, &cut, &ncut),
                         ZI_OK);
        assert_int_equal(ncut, g_max_len);
        assert_memory_equal(cut, all, ncut * sizeof *cut);
        printf("  no prompt of the set is cut: a %zu-byte one made of them is (%zu -> %zu ids)\n",
               len, nall, ncut);
        free(all);
        free(cut);
        free(longp);
    }
}

static void test_special_ids(void **state)
{
    (void)state;
    assert_int_equal(zi_tokenizer_pad_id(g_tok),
                     cJSON_GetObjectItemCaseSensitive(g_gold, "pad_token_id")->valueint);
    assert_int_equal(zi_tokenizer_token_id(g_tok, "<|endoftext|>"), zi_tokenizer_pad_id(g_tok));
    assert_true(zi_tokenizer_token_id(g_tok, "<|im_start|>") >= 0);
    assert_int_equal(zi_tokenizer_token_id(g_tok, "no such token, surely"), -1);
    assert_true(zi_tokenizer_n_ids(g_tok) > (size_t)zi_tokenizer_token_id(g_tok, "<|im_end|>"));
    /* encode_prompt with max_len 0 means no limit: the long case keeps its tail */
    const cJSON *c;
    cJSON_ArrayForEach(c, cases())
    {
        const char *prompt = str_of(c, "prompt");
        int32_t *full, *raw;
        size_t nf, nr;
        assert_int_equal(zi_tokenizer_encode_prompt(g_tok, prompt, 0, &full, &nf), ZI_OK);
        assert_int_equal(zi_tokenizer_encode(g_tok, prompt, strlen(prompt), &raw, &nr), ZI_OK);
        assert_true(nf >= nr + 8);
        assert_int_equal(full[nf - 1], zi_tokenizer_token_id(g_tok, "\n"));
        free(full);
        free(raw);
    }
}

/* Encodes s: n ids (0: any number), id `want` at index i (-1: the last). */
static void expect_token_at(const zi_tokenizer *tok, const char *s, size_t n, int i, int32_t want)
{
    int32_t *ids;
    size_t got;
    assert_int_equal(zi_tokenizer_encode(tok, s, strlen(s), &ids, &got), ZI_OK);
    if (n)
        assert_int_equal(got, n);
    assert_true(got >= 1 && (i < 0 || (size_t)i < got));
    assert_int_equal(ids[i < 0 ? got - 1 : (size_t)i], want);
    free(ids);
}

/* Added tokens, as tokenizers' AddedVocabulary (leftmost-longest): of two added tokens where
 * one is a prefix of the other the longer wins, and an added token is found also as the
 * very last bytes of the text (the chat template always puts text after the prompt, so the
 * golden cases never end on one). The checkpoint's tokenizer.json with two added tokens of
 * our own ("[[z]]", "[[z]]y"), ids after the last one. */
static void test_added_tokens(void **state)
{
    (void)state;
    char dir[] = "/tmp/zi-tok-added-XXXXXX", path[256];
    assert_non_null(mkdtemp(dir));
    char *text = zi_test_read_file(zi_test_model("tokenizer/tokenizer.json"));
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text);
    free(text);
    assert_non_null(root);
    cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    assert_true(cJSON_IsArray(added));
    int next = (int)zi_tokenizer_n_ids(g_tok);
    const char *mine[] = {"[[z]]", "[[z]]y"}; /* the shorter first in the file */
    for (int k = 0; k < 2; k++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "id", next + k);
        cJSON_AddStringToObject(e, "content", mine[k]);
        cJSON_AddFalseToObject(e, "single_word");
        cJSON_AddFalseToObject(e, "lstrip");
        cJSON_AddFalseToObject(e, "rstrip");
        cJSON_AddFalseToObject(e, "normalized");
        cJSON_AddTrueToObject(e, "special");
        cJSON_AddItemToArray(added, e);
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    assert_non_null(out);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(out, 1, strlen(out), f), strlen(out));
    assert_int_equal(fclose(f), 0);
    free(out);

    zi_tokenizer *tok = NULL;
    assert_int_equal(zi_tokenizer_load(dir, &tok), ZI_OK);
    /* "[[z]]y", not "[[z]]" then "y"; and the added tokens as the text's last bytes */
    int32_t eot = zi_tokenizer_token_id(tok, "<|endoftext|>");
    assert_true(eot >= 0);
    expect_token_at(tok, "a[[z]]yb", 3, 1, next + 1);
    expect_token_at(tok, "a[[z]]b", 3, 1, next);
    expect_token_at(tok, "x[[z]]y", 2, 1, next + 1);
    expect_token_at(tok, "<|endoftext|>", 1, 0, eot);
    expect_token_at(tok, "a cat<|endoftext|>", 0, -1, eot);
    zi_tokenizer_free(tok);
    unlink(path);
    rmdir(dir);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len;
        size_t off;
    } bad[] = {
        {"ab\xff", 3, 2},               /* never valid */
        {"caf\xc3", 4, 3},              /* truncated sequence */
        {"x\xc0\xaf", 3, 1},            /* overlong '/' */
        {"ok \xed\xa0\x80 ok", 9, 3},   /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", 4, 0},     /* above U+10FFFF */
        {"\xe2\x82", 2, 0},             /* cut in the middle */
        {"good \x80 bad", 10, 5},       /* lone continuation byte */
        {"\xe6\x97\xa5\xe6\x9c", 5, 3}, /* valid CJK then a cut one */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *ids = (int32_t *)&ids;
        size_t n = 99;
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu", bad[i].off);
        zi_error_clear();
        assert_int_equal(zi_tokenizer_encode(g_tok, bad[i].s, bad[i].len, &ids, &n), ZI_EINVAL);
        assert_null(ids);
        if (!strstr(zi_errmsg(), want) || !strstr(zi_errmsg(), "UTF-8"))
            fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, zi_errmsg(), want);
        /* through the template the offset is still the prompt's own */
        char p[32];
        memcpy(p, bad[i].s, bad[i].len);
        p[bad[i].len] = '\0';
        zi_error_clear();
        assert_int_equal(zi_tokenizer_encode_prompt(g_tok, p, 512, &ids, &n), ZI_EINVAL);
        if (!strstr(zi_errmsg(), want))
            fail_msg("case %zu (prompt): message \"%s\" lacks \"%s\"", i, zi_errmsg(), want);
    }
}

/* Byte-level BPE loses nothing: decode(encode(x)) == x for NFC text, including control
 * bytes, long runs (one huge pre-token) and text around added tokens. */
static void test_roundtrip(void **state)
{
    (void)state;
    static const char *const cps[] = {"a",       "Z",    " ",    "  ",       "\n",
                                      "\r\n",    "\t",   "7",    "'s",       "'LL",
                                      "é",       "ß",    "日本", "語",       "ж",
                                      "🚀",       "\x01", "\x7f", "<",        "<|im_end|>",
                                      "<think>", "|",    "...",  "\xc2\xa0", "\xe3\x80\x80",
                                      "-",       "_",    "€"};
    size_t ncps = sizeof cps / sizeof cps[0];
    uint32_t r = 12345;
    char *buf = malloc(1 << 16);
    assert_non_null(buf);
    for (int iter = 0; iter < 200; iter++) {
        size_t len = 0;
        int pieces = 1 + (int)((r >> 8) % 200);
        for (int k = 0; k < pieces; k++) {
            r = r * 1103515245u + 12345u;
            const char *p = cps[(r >> 16) % ncps];
            size_t l = strlen(p);
            memcpy(buf + len, p, l);
            len += l;
        }
        int32_t *ids;
        size_t n;
        char *out;
        size_t olen;
        assert_int_equal(zi_tokenizer_encode(g_tok, buf, len, &ids, &n), ZI_OK);
        assert_int_equal(zi_tokenizer_decode(g_tok, ids, n, &out, &olen), ZI_OK);
        assert_int_equal(olen, len);
        assert_memory_equal(out, buf, len);
        free(out);
        free(ids);
    }
    /* one 40000-letter word and a 40000-space run: long pre-tokens */
    for (int k = 0; k < 2; k++) {
        memset(buf, k ? ' ' : 'q', 40000);
        buf[40000] = 'x';
        int32_t *ids;
        size_t n;
        char *out;
        size_t olen;
        assert_int_equal(zi_tokenizer_encode(g_tok, buf, 40001, &ids, &n), ZI_OK);
        assert_true(n > 1 && n < 40000);
        assert_int_equal(zi_tokenizer_decode(g_tok, ids, n, &out, &olen), ZI_OK);
        assert_int_equal(olen, 40001);
        assert_memory_equal(out, buf, 40001);
        free(out);
        free(ids);
    }
    free(buf);
    /* NUL bytes are text too */
    int32_t *ids;
    size_t n;
    assert_int_equal(zi_tokenizer_encode(g_tok, "a\0b", 3, &ids, &n), ZI_OK);
    assert_int_equal(n, 3);
    free(ids);
    /* an id outside the vocabulary does not decode */
    int32_t badid = (int32_t)zi_tokenizer_n_ids(g_tok);
    char *out;
    size_t olen;
    assert_int_equal(zi_tokenizer_decode(g_tok, &badid, 1, &out, &olen), ZI_EINVAL);
}

/* One tokenizer shared by threads (the word cache is the only shared mutable state). */
static void *thread_main(void *arg)
{
    long bad = 0;
    (void)arg;
    for (int rep = 0; rep < 20; rep++) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cases())
        {
            const char *prompt = cJSON_GetObjectItemCaseSensitive(c, "prompt")->valuestring;
            const cJSON *ref = cJSON_GetObjectItemCaseSensitive(c, "ids");
            int32_t *ids;
            size_t n;
            if (zi_tokenizer_encode_prompt(g_tok, prompt, 512, &ids, &n)) {
                bad++;
                continue;
            }
            if (n != (size_t)cJSON_GetArraySize(ref))
                bad++;
            for (size_t i = 0; i < n && i < (size_t)cJSON_GetArraySize(ref); i++)
                bad += ids[i] != cJSON_GetArrayItem(ref, (int)i)->valueint;
            free(ids);
        }
    }
    return (void *)bad;
}

static void test_threads(void **state)
{
    (void)state;
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *ret;
        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_int_equal((long)ret, 0);
    }
}

/* Shell-quotes s into out ('...' with ' as '\''). */
static void shell_quote(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    out[o++] = '\'';
    for (; *s; s++) {
        assert_true(o + 5 < cap);
        if (*s == '\'') {
            memcpy(out + o, "'\\''", 4);
            o += 4;
        } else {
            out[o++] = *s;
        }
    }
    out[o++] = '\'';
    out[o] = '\0';
}

static void test_cli(void **state)
{
    (void)state;
    const char *bin = getenv("ZI_BINARY") ? getenv("ZI_BINARY") : ZI_BINARY;
    const char *model = zi_test_model("");
    size_t cap = 1 << 16;
    char *cmd = malloc(cap), *q = malloc(cap), *out = malloc(cap), *want = malloc(cap);
    assert_non_null(cmd);
    assert_non_null(q);
    assert_non_null(out);
    assert_non_null(want);
    const cJSON *c;
    cJSON_ArrayForEach(c, cases())
    {
        shell_quote(q, cap, str_of(c, "prompt"));
        snprintf(cmd, cap, "'%s' tokenize --model '%s' --prompt %s", bin, model, q);
        assert_int_equal(zi_test_run(cmd, out, cap), 0);
        size_t o = (size_t)snprintf(want, cap, "{\"ids\":[");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(c, "ids"), *e;
        int first = 1;
        cJSON_ArrayForEach(e, ids)
        {
            o += (size_t)snprintf(want + o, cap - o, first ? "%d" : ",%d", e->valueint);
            first = 0;
        }
        snprintf(want + o, cap - o, "],\"n\":%d}\n", cJSON_GetArraySize(ids));
        assert_string_equal(out, want);
    }
    /* --help: usage on stdout, exit 0 */
    snprintf(cmd, cap, "'%s' tokenize --help", bin);
    assert_int_equal(zi_test_run(cmd, out, cap), 0);
    assert_non_null(strstr(out, "usage: zimage tokenize"));
    /* usage errors: exit 2, "zimage: error:" on stderr */
    snprintf(cmd, cap, "'%s' tokenize --model '%s' 2>&1", bin, model);
    assert_int_equal(zi_test_run(cmd, out, cap), 2);
    assert_non_null(strstr(out, "zimage: error:"));
    snprintf(cmd, cap, "'%s' tokenize --model '%s' --prompt x --bogus 2>&1", bin, model);
    assert_int_equal(zi_test_run(cmd, out, cap), 2);
    snprintf(cmd, cap, "'%s' tokenize --prompt 2>&1", bin);
    assert_int_equal(zi_test_run(cmd, out, cap), 2);
    /* a prompt that is not UTF-8 */
    snprintf(cmd, cap, "'%s' tokenize --model '%s' --prompt \"$(printf 'ab\\377')\" 2>&1", bin,
             model);
    assert_int_equal(zi_test_run(cmd, out, cap), 2);
    assert_non_null(strstr(out, "byte offset 2"));
    /* --model that is no folder: a usage error, like generate, encode and bench */
    snprintf(cmd, cap, "'%s' tokenize --model /nonexistent-zi --prompt x 2>&1", bin);
    assert_int_equal(zi_test_run(cmd, out, cap), 2);
    assert_non_null(strstr(out, "'/nonexistent-zi': no such folder"));
    /* a model folder without a tokenizer: not a usage error, the missing file is named */
    char empty[] = "/tmp/zi-tok-empty.XXXXXX";
    assert_non_null(mkdtemp(empty));
    snprintf(cmd, cap, "'%s' tokenize --model '%s' --prompt x 2>&1", bin, empty);
    assert_int_equal(zi_test_run(cmd, out, cap), 1);
    assert_non_null(strstr(out, "/tokenizer/tokenizer.json"));
    rmdir(empty);
    free(cmd);
    free(q);
    free(out);
    free(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_ids),   cmocka_unit_test(test_special_ids),
        cmocka_unit_test(test_added_tokens), cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_roundtrip),    cmocka_unit_test(test_threads),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
