/*
 * tokenizer.c - Qwen2 byte-level BPE (Hugging Face `tokenizers` semantics), spec §2.2.
 *
 * Load: tokenizer.json is parsed once with cJSON (about 0.1 s for the 11 MB Qwen file);
 * vocabulary keys are converted from the GPT-2 byte->unicode alphabet back to raw bytes,
 * so BPE runs on bytes and merges are a hash map (left id, right id) -> (rank, new id).
 * Encode: validate UTF-8 -> split on added tokens (leftmost-longest) -> NFC per segment
 * (utf8proc; skipped when no code point >= U+0300 is present, as such text is already
 * NFC) -> PCRE2 Split regex (UTF+UCP, JIT when available; the interpreter when the JIT
 * stack runs out) -> BPE per piece, lowest rank first and leftmost on ties, as
 * tokenizers' Word::merge_all does, with a heap so long pieces stay O(n log n).
 * A direct-mapped cache of short pieces (mutex-guarded) skips repeated BPE work.
 */
#include "tokenizer.h"
#include "json_util.h"
#include "zi_err.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define ZI_TOK_JSON_MAX_BYTES (256u << 20)
#define ZI_TOK_MAX_ID (1 << 24)
#define ZI_TOK_CACHE_SLOTS 8192 /* power of two */
#define ZI_TOK_CACHE_KEY 32
#define ZI_TOK_CACHE_IDS 16
#define ZI_TOK_STACK_SYMS 128

typedef struct zi_tok_merge {
    uint64_t key; /* (left << 32) | right; UINT64_MAX = empty */
    uint32_t rank;
    int32_t id;
} zi_tok_merge;

typedef struct zi_tok_added {
    uint32_t off, len; /* content in the arena (raw UTF-8) */
    int32_t id;
} zi_tok_added;

typedef struct zi_tok_cache_entry {
    uint64_t hash;
    uint8_t klen; /* 0 = empty */
    uint8_t nids;
    char key[ZI_TOK_CACHE_KEY];
    int32_t ids[ZI_TOK_CACHE_IDS];
} zi_tok_cache_entry;

struct zi_tokenizer {
    uint8_t *arena; /* token bytes */
    size_t arena_len, arena_cap;
    uint32_t *tok_off, *tok_len; /* by id; tok_len UINT32_MAX = no such id */
    size_t n_ids;
    uint32_t *vslots; /* vocab bytes -> id + 1 (0 = empty) */
    size_t nvslots;
    int32_t byte_id[256];
    zi_tok_merge *mslots;
    size_t nmslots;
    zi_tok_added *added; /* sorted by length, longest first */
    size_t n_added;
    uint8_t added_first[256]; /* 1 when some added token starts with this byte */
    pcre2_code *re;
    int jit;
    int nfc;
    int32_t pad_id;
    pthread_mutex_t cache_mu;
    zi_tok_cache_entry *cache;
};

/* ---- small helpers ---- */

static uint64_t zi_tok_hash(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static size_t zi_tok_merge_slot(uint64_t key, size_t mask)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;
}

/* Offset of the first byte that is not part of valid UTF-8 (len when all valid). Rejects
 * overlong forms, surrogates and code points above U+10FFFF. */
static size_t zi_tok_utf8_check(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
            cp = c & 0x1F;
            min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            cp = c & 0x0F;
            min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return i;
        }
        if (len - i < n)
            return i;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += n;
    }
    return len;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
 * U+0100.. in byte order. Fills the inverse (code point -> byte, -1 when not in the table;
 * all code points are below 0x144). */
static void zi_tok_byte_table(int16_t inv[0x144])
{
    for (int i = 0; i < 0x144; i++)
        inv[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        inv[printable ? b : 256 + n++] = (int16_t)b;
    }
}

/* Appends bytes to the arena; returns the offset or -1. */
static int64_t zi_tok_arena_put(zi_tokenizer *t, const void *p, size_t n)
{
    if (t->arena_len + n > UINT32_MAX)
        return -1;
    if (t->arena_len + n > t->arena_cap) {
        size_t nc = t->arena_cap ? t->arena_cap : 1 << 20;
        while (nc < t->arena_len + n)
            nc *= 2;
        uint8_t *a = realloc(t->arena, nc);
        if (!a)
            return -1;
        t->arena = a;
        t->arena_cap = nc;
    }
    memcpy(t->arena + t->arena_len, p, n);
    t->arena_len += n;
    return (int64_t)(t->arena_len - n);
}

/* Makes ids 0..need-1 addressable. */
static int zi_tok_grow_ids(zi_tokenizer *t, size_t need)
{
    if (need <= t->n_ids)
        return ZI_OK;
    size_t nc = t->n_ids ? t->n_ids : 1024;
    while (nc < need)
        nc *= 2;
    uint32_t *o = realloc(t->tok_off, nc * sizeof *o);
    if (!o)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    t->tok_off = o;
    uint32_t *l = realloc(t->tok_len, nc * sizeof *l);
    if (!l)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    t->tok_len = l;
    for (size_t i = t->n_ids; i < nc; i++)
        t->tok_len[i] = UINT32_MAX;
    t->n_ids = nc;
    return ZI_OK;
}

static int32_t zi_tok_vocab_find(const zi_tokenizer *t, const void *p, size_t n)
{
    if (!t->nvslots)
        return -1;
    size_t mask = t->nvslots - 1;
    for (size_t s = (size_t)zi_tok_hash(p, n) & mask; t->vslots[s]; s = (s + 1) & mask) {
        uint32_t id = t->vslots[s] - 1;
        if (t->tok_len[id] == n && memcmp(t->arena + t->tok_off[id], p, n) == 0)
            return (int32_t)id;
    }
    return -1;
}

/* Converts a byte-level vocabulary string to raw bytes (dst has room for strlen(s)). */
static int zi_tok_unmap(const int16_t inv[0x144], const char *s, uint8_t *dst, size_t *n)
{
    size_t len = strlen(s), o = 0;
    utf8proc_ssize_t i = 0;
    while ((size_t)i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)len - i, &cp);
        if (k <= 0 || cp < 0 || cp >= 0x144 || inv[cp] < 0)
            return -1;
        dst[o++] = (uint8_t)inv[cp];
        i += k;
    }
    *n = o;
    return 0;
}

/* ---- loading ---- */

static int zi_tok_check_pipeline(const cJSON *root, const char *file, zi_tokenizer *t,
                                 const char **pattern)
{
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (!norm || cJSON_IsNull(norm)) {
        t->nfc = 0;
    } else {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(norm, "type");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "NFC") != 0)
            return zi_errorf(ZI_EFORMAT, "file %s: key normalizer: only NFC is supported", file);
        t->nfc = 1;
    }
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(pre, "type");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    const cJSON *split = cJSON_GetArrayItem(list, 0);
    const cJSON *bl = cJSON_GetArrayItem(list, 1);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(split, "pattern"), "Regex");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(split, "behavior");
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(split, "invert");
    const cJSON *blty = cJSON_GetObjectItemCaseSensitive(bl, "type");
    const cJSON *splty = cJSON_GetObjectItemCaseSensitive(split, "type");
    if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "Sequence") != 0 ||
        cJSON_GetArraySize(list) != 2 || !cJSON_IsString(splty) ||
        strcmp(splty->valuestring, "Split") != 0 || !cJSON_IsString(pat) || !cJSON_IsString(beh) ||
        strcmp(beh->valuestring, "Isolated") != 0 || cJSON_IsTrue(inv) || !cJSON_IsString(blty) ||
        strcmp(blty->valuestring, "ByteLevel") != 0 ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(bl, "add_prefix_space")) ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(bl, "use_regex")))
        return zi_errorf(ZI_EFORMAT,
                         "file %s: key pre_tokenizer: unsupported; expected Sequence[Split(Regex, "
                         "Isolated), ByteLevel(add_prefix_space=false, use_regex=false)]",
                         file);
    *pattern = pat->valuestring;
    const cJSON *post = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    if (post && !cJSON_IsNull(post)) {
        const cJSON *pty = cJSON_GetObjectItemCaseSensitive(post, "type");
        if (!cJSON_IsString(pty) || strcmp(pty->valuestring, "ByteLevel") != 0)
            return zi_errorf(ZI_EFORMAT,
                             "file %s: key post_processor: only ByteLevel (no added BOS/EOS) is "
                             "supported",
                             file);
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *mty = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsObject(model) ||
        (mty && (!cJSON_IsString(mty) || strcmp(mty->valuestring, "BPE"))))
        return zi_errorf(ZI_EFORMAT, "file %s: key model: expected a BPE model", file);
    static const char *const off_flags[] = {"byte_fallback", "ignore_merges", "fuse_unk"};
    for (size_t i = 0; i < sizeof off_flags / sizeof off_flags[0]; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, off_flags[i])))
            return zi_errorf(ZI_EFORMAT, "file %s: key model.%s: true is not supported", file,
                             off_flags[i]);
    static const char *const empty_strs[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, empty_strs[i]);
        if (v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || v->valuestring[0]))
            return zi_errorf(ZI_EFORMAT, "file %s: key model.%s: must be empty", file,
                             empty_strs[i]);
    }
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (drop && !cJSON_IsNull(drop))
        return zi_errorf(ZI_EFORMAT, "file %s: key model.dropout: must be null", file);
    return ZI_OK;
}

/* Slots of an open-addressing table for n keys: a power of two (index = hash & (ns - 1))
 * at least twice n, so probes stay short. */
static size_t zi_tok_table_slots(size_t n)
{
    size_t ns = 1024;
    while (ns < 2 * n)
        ns <<= 1;
    return ns;
}

static int zi_tok_load_vocab(zi_tokenizer *t, const cJSON *vocab, const char *file,
                             const int16_t inv[0x144])
{
    if (!cJSON_IsObject(vocab))
        return zi_errorf(ZI_EFORMAT, "file %s: key model.vocab: missing or not an object", file);
    size_t ns = zi_tok_table_slots((size_t)cJSON_GetArraySize(vocab));
    t->vslots = calloc(ns, sizeof *t->vslots);
    if (!t->vslots)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    t->nvslots = ns;
    uint8_t buf[1024];
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab)
    {
        uint64_t id;
        size_t n;
        if (!zi_json_is_u53(e, &id) || id >= ZI_TOK_MAX_ID)
            return zi_errorf(ZI_EFORMAT, "file %s: key model.vocab[\"%.64s\"]: bad id", file,
                             e->string);
        if (strlen(e->string) > sizeof buf || zi_tok_unmap(inv, e->string, buf, &n) != 0 || !n)
            return zi_errorf(ZI_EFORMAT,
                             "file %s: key model.vocab[\"%.64s\"]: not a byte-level token", file,
                             e->string);
        int rc = zi_tok_grow_ids(t, (size_t)id + 1);
        if (rc)
            return rc;
        if (t->tok_len[id] != UINT32_MAX)
            return zi_errorf(ZI_EFORMAT, "file %s: key model.vocab[\"%.64s\"]: id %llu reused",
                             file, e->string, (unsigned long long)id);
        if (zi_tok_vocab_find(t, buf, n) >= 0)
            return zi_errorf(ZI_EFORMAT, "file %s: key model.vocab[\"%.64s\"]: duplicate token",
                             file, e->string);
        int64_t off = zi_tok_arena_put(t, buf, n);
        if (off < 0)
            return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
        t->tok_off[id] = (uint32_t)off;
        t->tok_len[id] = (uint32_t)n;
        size_t s = (size_t)zi_tok_hash(buf, n) & (ns - 1);
        while (t->vslots[s])
            s = (s + 1) & (ns - 1);
        t->vslots[s] = (uint32_t)id + 1;
    }
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        t->byte_id[b] = zi_tok_vocab_find(t, &c, 1);
        if (t->byte_id[b] < 0)
            return zi_errorf(ZI_EFORMAT, "file %s: key model.vocab: no token for byte 0x%02x", file,
                             b);
    }
    return ZI_OK;
}

static int zi_tok_load_merges(zi_tokenizer *t, const cJSON *merges, const char *file,
                              const int16_t inv[0x144])
{
    if (!cJSON_IsArray(merges))
        return zi_errorf(ZI_EFORMAT, "file %s: key model.merges: missing or not an array", file);
    size_t ns = zi_tok_table_slots((size_t)cJSON_GetArraySize(merges));
    t->mslots = malloc(ns * sizeof *t->mslots);
    if (!t->mslots)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < ns; i++)
        t->mslots[i].key = UINT64_MAX;
    t->nmslots = ns;
    uint8_t buf[2048];
    uint32_t rank = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, merges)
    {
        const char *a = NULL, *b = NULL;
        char pair[1024];
        if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
            cJSON_IsString(cJSON_GetArrayItem(e, 0)) && cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
        } else if (cJSON_IsString(e) && strlen(e->valuestring) < sizeof pair) {
            /* older files: "a b" (tokens never contain a space: it maps to U+0120) */
            memcpy(pair, e->valuestring, strlen(e->valuestring) + 1);
            char *sp = strchr(pair, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                *sp = '\0';
                a = pair;
                b = sp + 1;
            }
        }
        size_t na, nb;
        if (!a || strlen(a) + strlen(b) > sizeof buf || zi_tok_unmap(inv, a, buf, &na) != 0 ||
            zi_tok_unmap(inv, b, buf + na, &nb) != 0)
            return zi_errorf(ZI_EFORMAT, "file %s: key model.merges[%u]: not a byte-level pair",
                             file, rank);
        int32_t ia = zi_tok_vocab_find(t, buf, na);
        int32_t ib = zi_tok_vocab_find(t, buf + na, nb);
        int32_t iab = zi_tok_vocab_find(t, buf, na + nb);
        if (ia < 0 || ib < 0 || iab < 0)
            return zi_errorf(ZI_EFORMAT,
                             "file %s: key model.merges[%u]: \"%.64s\" + \"%.64s\" or their "
                             "merge is not in the vocabulary",
                             file, rank, a, b);
        uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
        size_t s = zi_tok_merge_slot(key, ns - 1);
        while (t->mslots[s].key != UINT64_MAX && t->mslots[s].key != key)
            s = (s + 1) & (ns - 1);
        /* as tokenizers' HashMap collect: a repeated pair keeps its last rank */
        t->mslots[s].key = key;
        t->mslots[s].rank = rank;
        t->mslots[s].id = iab;
        rank++;
    }
    return ZI_OK;
}

static int zi_tok_added_cmp(const void *a, const void *b)
{
    const zi_tok_added *x = a, *y = b;
    return x->len != y->len ? (x->len > y->len ? -1 : 1) : 0;
}

static int zi_tok_load_added(zi_tokenizer *t, const cJSON *added, const char *file)
{
    if (!added || cJSON_IsNull(added))
        return ZI_OK;
    if (!cJSON_IsArray(added))
        return zi_errorf(ZI_EFORMAT, "file %s: key added_tokens: not an array", file);
    size_t na = (size_t)cJSON_GetArraySize(added);
    t->added = calloc(na ? na : 1, sizeof *t->added);
    if (!t->added)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    const cJSON *e;
    size_t i = 0;
    cJSON_ArrayForEach(e, added)
    {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        uint64_t id;
        if (!cJSON_IsString(c) || !c->valuestring[0] ||
            !zi_json_is_u53(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) || id >= ZI_TOK_MAX_ID)
            return zi_errorf(ZI_EFORMAT, "file %s: key added_tokens[%zu]: needs content and id",
                             file, i);
        static const char *const flags[] = {"lstrip", "rstrip", "single_word"};
        for (size_t k = 0; k < 3; k++)
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, flags[k])))
                return zi_errorf(ZI_EFORMAT,
                                 "file %s: key added_tokens[%zu].%s: true is not supported", file,
                                 i, flags[k]);
        size_t len = strlen(c->valuestring);
        if (zi_tok_utf8_check((const uint8_t *)c->valuestring, len) != len)
            return zi_errorf(ZI_EFORMAT, "file %s: key added_tokens[%zu]: invalid UTF-8", file, i);
        int rc = zi_tok_grow_ids(t, (size_t)id + 1);
        if (rc)
            return rc;
        int64_t off = zi_tok_arena_put(t, c->valuestring, len);
        if (off < 0)
            return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
        /* decoding shows an added token as its text, even where the vocab has the id */
        t->tok_off[id] = (uint32_t)off;
        t->tok_len[id] = (uint32_t)len;
        t->added[i].off = (uint32_t)off;
        t->added[i].len = (uint32_t)len;
        t->added[i].id = (int32_t)id;
        t->added_first[(uint8_t)c->valuestring[0]] = 1;
        i++;
    }
    t->n_added = i;
    qsort(t->added, t->n_added, sizeof *t->added, zi_tok_added_cmp);
    return ZI_OK;
}

/* Unicode White_Space, which is what Oniguruma (the regex engine of `tokenizers`) matches
 * with \s. PCRE2's \s under UCP also matches U+180E, so \s and \S are spelled out. */
#define ZI_TOK_WS                                                                                  \
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}" \
    "\\x{3000}"

/* Copies `pattern` with \s and \S replaced by ZI_TOK_WS classes (inside a class, \s
 * becomes the ranges; \S inside a class is left to PCRE2). NULL when out of memory. */
static char *zi_tok_rewrite_ws(const char *pattern)
{
    size_t len = strlen(pattern), wl = sizeof ZI_TOK_WS - 1;
    char *o = malloc(len * (wl + 4) + 1); /* every escape could grow to [^WS] */
    if (!o)
        return NULL;
    size_t j = 0;
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        char c = pattern[i];
        if (c == '\\' && i + 1 < len) {
            char e = pattern[i + 1];
            if (e == 'Q') { /* \Q...\E is literal text */
                const char *end = strstr(pattern + i + 2, "\\E");
                size_t stop = end ? (size_t)(end - pattern) + 2 : len;
                memcpy(o + j, pattern + i, stop - i);
                j += stop - i;
                i = stop - 1;
            } else if (e == 's' || (e == 'S' && !in_class)) {
                if (!in_class)
                    o[j++] = '[';
                if (e == 'S')
                    o[j++] = '^';
                memcpy(o + j, ZI_TOK_WS, wl);
                j += wl;
                if (!in_class)
                    o[j++] = ']';
                i++;
            } else {
                o[j++] = c;
                o[j++] = e;
                i++;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[j++] = c;
            if (i + 1 < len && pattern[i + 1] == '^')
                o[j++] = pattern[++i];
            if (i + 1 < len && pattern[i + 1] == ']') /* a leading ] is literal */
                o[j++] = pattern[++i];
            continue;
        }
        if (in_class && c == '[' && i + 1 < len && pattern[i + 1] == ':') {
            const char *end = strstr(pattern + i + 2, ":]");
            size_t stop = end ? (size_t)(end - pattern) + 2 : i + 1;
            memcpy(o + j, pattern + i, stop - i);
            j += stop - i;
            i = stop - 1;
            continue;
        }
        if (in_class && c == ']')
            in_class = 0;
        o[j++] = c;
    }
    o[j] = '\0';
    return o;
}

static int zi_tok_compile(zi_tokenizer *t, const char *pattern, const char *file)
{
    int err;
    PCRE2_SIZE eoff;
    char *pat = zi_tok_rewrite_ws(pattern);
    if (!pat)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    t->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                          &eoff, NULL);
    free(pat);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return zi_errorf(ZI_EFORMAT,
                         "file %s: key pre_tokenizer.pretokenizers[0].pattern.Regex: %s at "
                         "offset %zu",
                         file, (const char *)msg, (size_t)eoff);
    }
    t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    return ZI_OK;
}

/* tokenizer_config.json is optional; it only supplies the padding token. */
static int zi_tok_load_config(zi_tokenizer *t, const char *dir)
{
    char path[4096];
    int w = snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (w < 0 || (size_t)w >= sizeof path)
        return zi_errorf(ZI_EINVAL, "tokenizer folder %s: path too long", dir);
    cJSON *root;
    int rc = zi_json_load_file(path, 16u << 20, &root);
    if (rc == ZI_ENOTFOUND) {
        zi_error_clear();
        return ZI_OK;
    }
    if (rc)
        return rc;
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(root, "pad_token");
    if (cJSON_IsObject(pad)) /* older files: {"content": "...", ...} */
        pad = cJSON_GetObjectItemCaseSensitive(pad, "content");
    if (pad && !cJSON_IsNull(pad)) {
        if (!cJSON_IsString(pad)) {
            rc = zi_errorf(ZI_EFORMAT, "file %s: key pad_token: expected a string", path);
        } else {
            t->pad_id = zi_tokenizer_token_id(t, pad->valuestring);
            if (t->pad_id < 0)
                rc = zi_errorf(ZI_EFORMAT, "file %s: key pad_token: \"%.64s\" is not a token", path,
                               pad->valuestring);
        }
    }
    cJSON_Delete(root);
    return rc;
}

int zi_tokenizer_load(const char *dir, zi_tokenizer **out)
{
    *out = NULL;
    char path[4096];
    int w = snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (w < 0 || (size_t)w >= sizeof path)
        return zi_errorf(ZI_EINVAL, "tokenizer folder %s: path too long", dir);
    zi_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    pthread_mutex_init(&t->cache_mu, NULL);
    t->pad_id = -1;
    cJSON *root = NULL;
    int16_t inv[0x144];
    zi_tok_byte_table(inv);
    int rc = zi_json_load_file(path, ZI_TOK_JSON_MAX_BYTES, &root);
    if (rc)
        goto err;
    const char *pattern = NULL;
    rc = zi_tok_check_pipeline(root, path, t, &pattern);
    if (rc)
        goto err;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    rc = zi_tok_load_vocab(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"), path, inv);
    if (rc)
        goto err;
    rc = zi_tok_load_merges(t, cJSON_GetObjectItemCaseSensitive(model, "merges"), path, inv);
    if (rc)
        goto err;
    rc = zi_tok_load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path);
    if (rc)
        goto err;
    rc = zi_tok_compile(t, pattern, path);
    if (rc)
        goto err;
    cJSON_Delete(root);
    root = NULL;
    rc = zi_tok_load_config(t, dir);
    if (rc)
        goto err;
    t->cache = calloc(ZI_TOK_CACHE_SLOTS, sizeof *t->cache);
    if (!t->cache) {
        rc = zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
        goto err;
    }
    *out = t;
    return ZI_OK;
err:
    cJSON_Delete(root);
    zi_tokenizer_free(t);
    return rc;
}

void zi_tokenizer_free(zi_tokenizer *t)
{
    if (!t)
        return;
    pcre2_code_free(t->re);
    pthread_mutex_destroy(&t->cache_mu);
    free(t->cache);
    free(t->arena);
    free(t->tok_off);
    free(t->tok_len);
    free(t->vslots);
    free(t->mslots);
    free(t->added);
    free(t);
}

/* ---- encoding ---- */

typedef struct zi_tok_vec {
    int32_t *v;
    size_t n, cap;
} zi_tok_vec;

static int zi_tok_vec_push(zi_tok_vec *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t nc = v->cap ? 2 * v->cap : 64;
        int32_t *p = realloc(v->v, nc * sizeof *p);
        if (!p)
            return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
        v->v = p;
        v->cap = nc;
    }
    v->v[v->n++] = id;
    return ZI_OK;
}

static const zi_tok_merge *zi_tok_merge_find(const zi_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->nmslots - 1;
    for (size_t s = zi_tok_merge_slot(key, mask); t->mslots[s].key != UINT64_MAX;
         s = (s + 1) & mask)
        if (t->mslots[s].key == key)
            return &t->mslots[s];
    return NULL;
}

/* Min-heap of (rank << 32 | pos): lowest rank first, then leftmost. */
static void zi_tok_heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t zi_tok_heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m)
            break;
        if (c + 1 < m && h[c + 1] < h[c])
            c++;
        if (v <= h[c])
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = v;
    return top;
}

/* BPE of one pre-token (raw bytes w[0..m)), appending ids to `out`. */
static int zi_tok_bpe(const zi_tokenizer *t, const uint8_t *w, size_t m, zi_tok_vec *out)
{
    if (m == 1)
        return zi_tok_vec_push(out, t->byte_id[w[0]]);
    zi_tokenizer *mt = (zi_tokenizer *)t; /* only the mutex-guarded cache changes */
    uint64_t hash = 0;
    zi_tok_cache_entry *ce = NULL;
    if (m <= ZI_TOK_CACHE_KEY) {
        hash = zi_tok_hash(w, m);
        ce = &mt->cache[hash & (ZI_TOK_CACHE_SLOTS - 1)];
        int32_t ids[ZI_TOK_CACHE_IDS];
        int nids = -1;
        pthread_mutex_lock(&mt->cache_mu);
        if (ce->klen == m && ce->hash == hash && memcmp(ce->key, w, m) == 0) {
            nids = ce->nids;
            memcpy(ids, ce->ids, (size_t)nids * sizeof *ids);
        }
        pthread_mutex_unlock(&mt->cache_mu);
        if (nids >= 0) {
            for (int i = 0; i < nids; i++) {
                int rc = zi_tok_vec_push(out, ids[i]);
                if (rc)
                    return rc;
            }
            return ZI_OK;
        }
    }
    int32_t s_id[ZI_TOK_STACK_SYMS], s_prev[ZI_TOK_STACK_SYMS], s_next[ZI_TOK_STACK_SYMS];
    uint64_t s_heap[3 * ZI_TOK_STACK_SYMS];
    int32_t *id = s_id, *prev = s_prev, *next = s_next;
    uint64_t *heap = s_heap;
    void *mem = NULL;
    if (m > ZI_TOK_STACK_SYMS) {
        if (m > INT32_MAX / 4)
            return zi_errorf(ZI_EINVAL, "tokenizer: pre-token of %zu bytes is too long", m);
        mem = malloc(m * (3 * sizeof(int32_t) + 3 * sizeof(uint64_t)));
        if (!mem)
            return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
        heap = mem;
        id = (int32_t *)(heap + 3 * m);
        prev = id + m;
        next = prev + m;
    }
    size_t hn = 0;
    for (size_t i = 0; i < m; i++) {
        id[i] = t->byte_id[w[i]];
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < m; i++) {
        const zi_tok_merge *mg = zi_tok_merge_find(t, id[i], id[i + 1]);
        if (mg)
            zi_tok_heap_push(heap, &hn, ((uint64_t)mg->rank << 32) | i);
    }
    while (hn) {
        uint64_t top = zi_tok_heap_pop(heap, &hn);
        uint32_t rank = (uint32_t)(top >> 32);
        int32_t pos = (int32_t)(uint32_t)top;
        if (id[pos] < 0 || next[pos] < 0)
            continue; /* merged away, or now the last symbol */
        int32_t nx = next[pos];
        const zi_tok_merge *mg = zi_tok_merge_find(t, id[pos], id[nx]);
        if (!mg || mg->rank != rank)
            continue; /* stale: the pair at pos changed since it was queued */
        id[pos] = mg->id;
        id[nx] = -1;
        next[pos] = next[nx];
        if (next[nx] >= 0)
            prev[next[nx]] = pos;
        if (prev[pos] >= 0) {
            const zi_tok_merge *l = zi_tok_merge_find(t, id[prev[pos]], id[pos]);
            if (l)
                zi_tok_heap_push(heap, &hn, ((uint64_t)l->rank << 32) | (uint32_t)prev[pos]);
        }
        if (next[pos] >= 0) {
            const zi_tok_merge *r = zi_tok_merge_find(t, id[pos], id[next[pos]]);
            if (r)
                zi_tok_heap_push(heap, &hn, ((uint64_t)r->rank << 32) | (uint32_t)pos);
        }
    }
    size_t first = out->n;
    int rc = ZI_OK;
    for (int32_t i = 0; i >= 0 && !rc; i = next[i])
        rc = zi_tok_vec_push(out, id[i]);
    free(mem);
    if (rc)
        return rc;
    size_t nids = out->n - first;
    if (ce && nids <= ZI_TOK_CACHE_IDS) {
        pthread_mutex_lock(&mt->cache_mu);
        ce->hash = hash;
        ce->klen = (uint8_t)m;
        ce->nids = (uint8_t)nids;
        memcpy(ce->key, w, m);
        memcpy(ce->ids, out->v + first, nids * sizeof *ce->ids);
        pthread_mutex_unlock(&mt->cache_mu);
    }
    return ZI_OK;
}

/* One text segment between added tokens: NFC, regex split, BPE. Stops once `limit` ids
 * are out (later pieces cannot change earlier ids). */
static int zi_tok_segment(const zi_tokenizer *t, const uint8_t *s, size_t len, pcre2_match_data *md,
                          size_t limit, zi_tok_vec *out)
{
    uint8_t *nfc = NULL;
    if (t->nfc) {
        /* text with no code point >= U+0300 (lead bytes below 0xCC) is already NFC */
        int need = 0;
        for (size_t i = 0; i < len && !need; i++)
            need = s[i] >= 0xCC;
        if (need) {
            utf8proc_ssize_t r =
                utf8proc_map(s, (utf8proc_ssize_t)len, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (r < 0)
                return zi_errorf(ZI_EINVAL, "tokenizer: NFC failed: %s", utf8proc_errmsg(r));
            s = nfc;
            len = (size_t)r;
        }
    }
    int rc = ZI_OK;
    size_t off = 0;
    while (off < len && out->n < limit) {
        int m = t->jit ? pcre2_jit_match(t->re, s, len, off, 0, md, NULL)
                       : pcre2_match(t->re, s, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (m == PCRE2_ERROR_JIT_STACKLIMIT)
            m = pcre2_match(t->re, s, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
        size_t ms = len, me = len;
        if (m >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            ms = ov[0];
            me = ov[1];
        } else if (m != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            rc = zi_errorf(ZI_EINVAL, "tokenizer: pre-tokenizer regex failed: %s",
                           (const char *)msg);
            break;
        }
        if (ms > off) /* Isolated: the unmatched gap is a piece of its own */
            rc = zi_tok_bpe(t, s + off, ms - off, out);
        if (!rc && me > ms)
            rc = zi_tok_bpe(t, s + ms, me - ms, out);
        if (rc)
            break;
        if (me == ms) { /* empty match: step over one character */
            me = ms + 1;
            while (me < len && (s[me] & 0xC0) == 0x80)
                me++;
            if (ms < len)
                rc = zi_tok_bpe(t, s + ms, me - ms, out);
        }
        off = me;
    }
    free(nfc);
    return rc;
}

static int zi_tok_encode_limit(const zi_tokenizer *t, const char *text, size_t len, size_t limit,
                               int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len))
        return zi_errorf(ZI_EINVAL, "tokenizer: NULL argument");
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = zi_tok_utf8_check(s, len);
    if (bad != len)
        return zi_errorf(ZI_EINVAL, "prompt: invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                         s[bad]);
    zi_tok_vec out = {0};
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    int rc = md ? zi_tok_vec_push(&out, 0) : zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    out.n = 0; /* the push above only makes sure the result is never NULL */
    size_t seg = 0, i = 0;
    while (!rc && i < len && out.n < limit) {
        const zi_tok_added *hit = NULL;
        if (t->added_first[s[i]]) {
            for (size_t k = 0; k < t->n_added; k++) { /* longest first */
                const zi_tok_added *a = &t->added[k];
                if (a->len <= len - i && memcmp(s + i, t->arena + a->off, a->len) == 0) {
                    hit = a;
                    break;
                }
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        if (i > seg)
            rc = zi_tok_segment(t, s + seg, i - seg, md, limit, &out);
        if (!rc && out.n < limit)
            rc = zi_tok_vec_push(&out, hit->id);
        i += hit->len;
        seg = i;
    }
    if (!rc && seg < len && out.n < limit)
        rc = zi_tok_segment(t, s + seg, len - seg, md, limit, &out);
    pcre2_match_data_free(md);
    if (rc) {
        free(out.v);
        return rc;
    }
    if (out.n > limit)
        out.n = limit;
    *ids = out.v;
    *n = out.n;
    return ZI_OK;
}

int zi_tokenizer_encode(const zi_tokenizer *t, const char *text, size_t len, int32_t **ids,
                        size_t *n)
{
    return zi_tok_encode_limit(t, text, len, SIZE_MAX, ids, n);
}

static const char zi_tok_tpl_head[] = "<|im_start|>user\n";
static const char zi_tok_tpl_tail[] = "<|im_end|>\n<|im_start|>assistant\n";

int zi_tokenizer_template(const char *prompt, char **out, size_t *len)
{
    *out = NULL;
    if (!prompt)
        return zi_errorf(ZI_EINVAL, "tokenizer: NULL prompt");
    size_t hl = sizeof zi_tok_tpl_head - 1, pl = strlen(prompt), tl = sizeof zi_tok_tpl_tail - 1;
    if (pl > SIZE_MAX - hl - tl - 1)
        return zi_errorf(ZI_EINVAL, "tokenizer: prompt too long");
    char *s = malloc(hl + pl + tl + 1);
    if (!s)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    memcpy(s, zi_tok_tpl_head, hl);
    memcpy(s + hl, prompt, pl);
    memcpy(s + hl + pl, zi_tok_tpl_tail, tl + 1);
    *out = s;
    *len = hl + pl + tl;
    return ZI_OK;
}

int zi_tokenizer_encode_prompt(const zi_tokenizer *t, const char *prompt, size_t max_len,
                               int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    char *s = NULL;
    size_t len = 0;
    int rc = zi_tokenizer_template(prompt, &s, &len);
    if (rc)
        return rc;
    /* report invalid bytes at their offset in the prompt, not in the template */
    size_t bad = zi_tok_utf8_check((const uint8_t *)prompt, strlen(prompt));
    if (bad != strlen(prompt)) {
        free(s);
        return zi_errorf(ZI_EINVAL, "prompt: invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                         (uint8_t)prompt[bad]);
    }
    rc = zi_tok_encode_limit(t, s, len, max_len ? max_len : SIZE_MAX, ids, n);
    free(s);
    return rc;
}

/* ---- lookups ---- */

int zi_tokenizer_decode(const zi_tokenizer *t, const int32_t *ids, size_t n, char **text,
                        size_t *len)
{
    *text = NULL;
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->n_ids || t->tok_len[ids[i]] == UINT32_MAX)
            return zi_errorf(ZI_EINVAL, "tokenizer: id %d at position %zu is not in the vocabulary",
                             ids[i], i);
        total += t->tok_len[ids[i]];
    }
    char *s = malloc(total + 1);
    if (!s)
        return zi_errorf(ZI_ENOMEM, "tokenizer: out of memory");
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(s + o, t->arena + t->tok_off[ids[i]], t->tok_len[ids[i]]);
        o += t->tok_len[ids[i]];
    }
    s[o] = '\0';
    *text = s;
    *len = o;
    return ZI_OK;
}

int32_t zi_tokenizer_token_id(const zi_tokenizer *t, const char *token)
{
    size_t len = strlen(token);
    for (size_t k = 0; k < t->n_added; k++)
        if (t->added[k].len == len && memcmp(t->arena + t->added[k].off, token, len) == 0)
            return t->added[k].id;
    return zi_tok_vocab_find(t, token, len);
}

int32_t zi_tokenizer_pad_id(const zi_tokenizer *t)
{
    return t->pad_id;
}

size_t zi_tokenizer_n_ids(const zi_tokenizer *t)
{
    size_t n = t->n_ids;
    while (n > 0 && t->tok_len[n - 1] == UINT32_MAX)
        n--;
    return n;
}
