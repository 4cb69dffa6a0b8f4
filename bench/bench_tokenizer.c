/*
 * bench_tokenizer.c - load time and encode throughput of the tokenizer, on one core.
 *
 * Targets (loading engineer's brief): load the real 11 MB tokenizer.json in <= 0.3 s and
 * encode >= 5 MB/s of text. Prints each figure with its ratio to the target (> 1 = met).
 * Corpora are generated here, deterministically: "prompts" repeats the golden prompts
 * (realistic words, the word cache helps), "random" draws random words from a mix of
 * ASCII, Latin-1, Cyrillic and CJK (few repeats, the cache rarely helps), and
 * "per-prompt" times zi_tokenizer_encode_prompt() on single prompts (call overhead).
 * Usage: bench_tokenizer [TOKENIZER_DIR] [MB]   (default: the tiny checkpoint's, 8 MB)
 */
#include "tokenizer.h"
#include "zi_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ZI_BENCH_LOAD_TARGET_S 0.3
#define ZI_BENCH_MBPS_TARGET 5.0

static double zi_bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *const zi_bench_prompts[] = {
    "A photo of an astronaut riding a horse on the moon, 35mm, golden hour.",
    "a watercolor lighthouse on a cliff at dawn, seagulls, mist, warm light",
    "一幅为名为“造相「Z-IMAGE-TURBO」”的项目设计的创意海报。画面巧妙地将文字概念视觉化",
    "Портрет старого моряка в стиле масляной живописи, тёплый свет",
    "東京の夜景、ネオン、雨に濡れた路面",
    "numbers 1234567890 3.14159 2026-11-26 and 100% emoji 🚀🔥 café naïve résumé",
    "I'm sure they'll say it's what we've done, don't you think? YOU'LL SEE",
    "code: def f(x): return x**2 # comment /* c */ <tag attr=\"v\">\n\n",
};
#define ZI_BENCH_NPROMPTS (sizeof zi_bench_prompts / sizeof zi_bench_prompts[0])

static uint64_t zi_bench_rng = 0x9E3779B97F4A7C15ull;
static uint32_t zi_bench_rand(void)
{
    zi_bench_rng ^= zi_bench_rng << 13;
    zi_bench_rng ^= zi_bench_rng >> 7;
    zi_bench_rng ^= zi_bench_rng << 17;
    return (uint32_t)(zi_bench_rng >> 11);
}

static size_t zi_bench_put_cp(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 63));
        return 2;
    }
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 63));
    o[2] = (char)(0x80 | (cp & 63));
    return 3;
}

/* Random words: 70% ASCII letters, 10% Latin-1 letters, 10% Cyrillic, 10% CJK; spaces,
 * punctuation, digits and newlines between them. */
static size_t zi_bench_random_text(char *o, size_t cap)
{
    size_t n = 0;
    while (n + 64 < cap) {
        uint32_t kind = zi_bench_rand() % 10, len = 1 + zi_bench_rand() % 9;
        for (uint32_t i = 0; i < len; i++) {
            uint32_t cp;
            if (kind < 7)
                cp = 'a' + zi_bench_rand() % 26;
            else if (kind == 7)
                cp = 0xE0 + zi_bench_rand() % 30;
            else if (kind == 8)
                cp = 0x430 + zi_bench_rand() % 32;
            else
                cp = 0x4E00 + zi_bench_rand() % 4000;
            n += zi_bench_put_cp(o + n, cp);
        }
        uint32_t sep = zi_bench_rand() % 20;
        if (sep < 14)
            o[n++] = ' ';
        else if (sep < 16)
            n += (size_t)snprintf(o + n, cap - n, ", ");
        else if (sep < 18)
            n += (size_t)snprintf(o + n, cap - n, " %u ", zi_bench_rand() % 1000);
        else if (sep < 19)
            n += (size_t)snprintf(o + n, cap - n, ".\n");
        else
            n += (size_t)snprintf(o + n, cap - n, "'s ");
    }
    return n;
}

static size_t zi_bench_prompt_text(char *o, size_t cap)
{
    size_t n = 0;
    for (size_t k = 0;; k++) {
        const char *p = zi_bench_prompts[k % ZI_BENCH_NPROMPTS];
        size_t l = strlen(p);
        if (n + l + 1 >= cap)
            break;
        memcpy(o + n, p, l);
        n += l;
        o[n++] = ' ';
    }
    return n;
}

static int zi_bench_encode(const zi_tokenizer *tok, const char *name, const char *text, size_t len)
{
    double best = 1e30;
    size_t nids = 0;
    for (int rep = 0; rep < 3; rep++) {
        int32_t *ids;
        double t0 = zi_bench_now();
        if (zi_tokenizer_encode(tok, text, len, &ids, &nids)) {
            fprintf(stderr, "bench_tokenizer: %s\n", zi_errmsg());
            return 1;
        }
        double dt = zi_bench_now() - t0;
        free(ids);
        if (dt < best)
            best = dt;
    }
    double mbps = (double)len / best / 1e6;
    printf("encode %-8s %6.2f MB in %.3f s = %7.2f MB/s (%.2f bytes/token)  target %.1f MB/s  "
           "ratio %.2f\n",
           name, (double)len / 1e6, best, mbps, (double)len / (double)nids, ZI_BENCH_MBPS_TARGET,
           mbps / ZI_BENCH_MBPS_TARGET);
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/golden/data/tiny-zimage/tokenizer";
    double mb = argc > 2 ? strtod(argv[2], NULL) : 8.0;
    if (!(mb > 0.0 && mb <= 1024.0)) {
        fprintf(stderr, "usage: bench_tokenizer [TOKENIZER_DIR] [MB]\n");
        return 2;
    }
    zi_tokenizer *tok = NULL;
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        zi_tokenizer_free(tok);
        double t0 = zi_bench_now();
        if (zi_tokenizer_load(dir, &tok)) {
            fprintf(stderr, "bench_tokenizer: %s\n", zi_errmsg());
            return 1;
        }
        double dt = zi_bench_now() - t0;
        if (dt < best)
            best = dt;
    }
    printf("load   %s: best of 5 %.3f s  target %.2f s  ratio %.2f\n", dir, best,
           ZI_BENCH_LOAD_TARGET_S, ZI_BENCH_LOAD_TARGET_S / best);

    size_t cap = (size_t)(mb * 1e6);
    char *text = malloc(cap);
    if (!text)
        return 1;
    int rc = zi_bench_encode(tok, "prompts", text, zi_bench_prompt_text(text, cap));
    if (!rc)
        rc = zi_bench_encode(tok, "random", text, zi_bench_random_text(text, cap));

    /* single prompts through the template: the worker's real call */
    size_t calls = 0, bytes = 0;
    double t0 = zi_bench_now();
    while (!rc && zi_bench_now() - t0 < 1.0) {
        for (size_t k = 0; k < ZI_BENCH_NPROMPTS; k++) {
            int32_t *ids;
            size_t n;
            if (zi_tokenizer_encode_prompt(tok, zi_bench_prompts[k], ZI_TOKENIZER_MAX_LEN, &ids,
                                           &n)) {
                fprintf(stderr, "bench_tokenizer: %s\n", zi_errmsg());
                rc = 1;
                break;
            }
            free(ids);
            calls++;
            bytes += strlen(zi_bench_prompts[k]);
        }
    }
    double dt = zi_bench_now() - t0;
    if (!rc)
        printf("encode per-prompt %zu calls in %.2f s = %.1f us/call, %.2f MB/s of prompt text\n",
               calls, dt, dt / (double)calls * 1e6, (double)bytes / dt / 1e6);
    free(text);
    zi_tokenizer_free(tok);
    return rc;
}
