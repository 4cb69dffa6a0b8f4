/*
 * cmd_generate.c - `zimage generate`: one prompt to one PNG; --count PNGs per prompt and
 * --prompts-file for many prompts, with the model loaded once (docs/contract.md).
 *
 * Options follow the job rules: sides multiples of 16 in [64, 4096], width x height at most
 * 4194304, steps 1..50, guidance 0..20, prompt at most 16384 bytes of UTF-8. A seed is
 * drawn when none is given; it is printed on stdout ("seed: S") and stored in the PNG's
 * `parameters` chunk. With --count N each prompt's images use seeds S, S+1, ..., S+N-1
 * (mod 2^64), so each one is made again alone by `--prompt P --seed S+i`. --output names
 * the images through {p} (the prompt's line 1..K), {n} (1..N) - both zero-padded to the
 * width of K or N - and {seed}; a name with none of them gets "-{p}" (K > 1) and "-{n}"
 * (N > 1) before its ".png". Every prompt and file name is checked before the model loads.
 * Progress ("step i/N, s/step") goes to stderr only when stderr is a terminal and --quiet is
 * not given. Exit: 0 ok, 2 usage error, 1 any other failure (images written before a
 * failure stay).
 */
#include "backend.h"
#include "cli_util.h"
#include "config.h"
#include "pipeline.h"
#include "png.h"
#include "zi_err.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define ZI_GEN_MIN_SIDE 64
#define ZI_GEN_MAX_SIDE 4096
#define ZI_GEN_MAX_PIXELS 4194304L
#define ZI_GEN_MAX_STEPS 50
#define ZI_GEN_MAX_GUIDANCE 20.0
#define ZI_GEN_MAX_PROMPT 16384
#define ZI_GEN_SIDE_MULT 16
#define ZI_GEN_MAX_COUNT 1000
#define ZI_GEN_MAX_PROMPTS 10000 /* lines of --prompts-file */
#define ZI_GEN_MAX_PATH 4096

static void gen_usage(FILE *f)
{
    fprintf(f,
            "usage: zimage generate --model DIR (--prompt TEXT | --prompts-file FILE)\n"
            "                       --output FILE.png [options]\n"
            "\n"
            "  --model DIR             checkpoint folder in the diffusers layout\n"
            "  --prompt TEXT           the prompt (UTF-8, at most %d bytes)\n"
            "  --prompts-file FILE     many prompts, one JSON string per line (\"-\": stdin),\n"
            "                          at most %d; all checked before the model loads\n"
            "  --negative-prompt TEXT  negative prompt, used when --guidance > 0 (default \"\")\n"
            "  --width W, --height H   image size, multiples of %d in [%d, %d], W*H <= %ld\n"
            "                          (default 1024x1024)\n"
            "  --steps N               transformer calls, 1..%d (default 8)\n"
            "  --guidance G            classifier-free guidance scale, 0..%g (default 0: off)\n"
            "  --seed S                0..2^64-1 (default: drawn at random and printed)\n"
            "  --rng cuda|cpu          torch generator whose randn gives the noise (default cuda)\n"
            "  --backend auto|cpu|cuda compute backend (default auto)\n"
            "  --count N               N images per prompt, 1..%d (default 1), the model\n"
            "                          loaded once; seeds S, S+1, ..., S+N-1\n"
            "  --quiet                 no progress output\n"
            "  --output FILE.png       where to write the image; {p} (prompt line), {n} (image\n"
            "                          1..N) and {seed} are replaced; a name with none of them\n"
            "                          gets -{p} (several prompts) and -{n} (N > 1) before .png\n",
            ZI_GEN_MAX_PROMPT, ZI_GEN_MAX_PROMPTS, ZI_GEN_SIDE_MULT, ZI_GEN_MIN_SIDE,
            ZI_GEN_MAX_SIDE, ZI_GEN_MAX_PIXELS, ZI_GEN_MAX_STEPS, ZI_GEN_MAX_GUIDANCE,
            ZI_GEN_MAX_COUNT);
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!*s || *s < '0' || *s > '9')
        return -1; /* strtoull would accept "-1" and " 1" */
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* 1 when s[0..len) is valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + n >= len)
            return 0; /* truncated sequence */
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += n + 1;
    }
    return 1;
}

typedef struct gen_progress {
    int show;
    int prompt, prompts; /* 1-based prompt number and how many */
    int image, count;    /* 1-based image number (of this prompt) and how many */
} gen_progress;

static int gen_on_step(void *ud, int step, int steps, double step_seconds)
{
    gen_progress *g = ud;
    if (g->show) {
        fputc('\r', stderr);
        if (g->prompts > 1)
            fprintf(stderr, "prompt %d/%d  ", g->prompt, g->prompts);
        if (g->count > 1)
            fprintf(stderr, "image %d/%d  ", g->image, g->count);
        fprintf(stderr, "step %d/%d  %.2f s/step   ", step, steps, step_seconds);
        if (step == steps)
            fputc('\n', stderr);
        fflush(stderr);
    }
    return 0;
}

/* The folder holding `path` exists and is writable (checked before the long run). */
static int output_dir_ok(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        return access(".", W_OK) == 0;
    size_t len = (size_t)(slash - path);
    if (len == 0)
        len = 1; /* "/file.png" */
    if (len >= sizeof dir)
        return 0;
    memcpy(dir, path, len);
    dir[len] = '\0';
    return access(dir, W_OK) == 0;
}

/* Appends s to out[*n..cap); -1 when it does not fit. */
static int path_put(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n + len >= cap)
        return -1;
    memcpy(out + *n, s, len);
    *n += len;
    out[*n] = '\0';
    return 0;
}

/* The --output template in effect: `tmpl` itself when it holds {p}, {n} or {seed};
 * otherwise tmpl with "-{p}" (prompts > 1) and "-{n}" (count > 1) put before a final ".png"
 * of the file name (or at the end). Returns NULL, or the reason the images' names would not
 * all differ, or -1 in *toolong when it does not fit out[cap]. */
static const char *gen_output_template(const char *tmpl, int prompts, int count, char *out,
                                       size_t cap, int *toolong)
{
    const int has_p = strstr(tmpl, "{p}") != NULL;
    const int has_n = strstr(tmpl, "{n}") != NULL || strstr(tmpl, "{seed}") != NULL;
    size_t n = 0, len = strlen(tmpl);
    *toolong = 0;
    out[0] = '\0';
    if (has_p || has_n) {
        if (prompts > 1 && !has_p)
            return "has no {p}: the prompts' images would overwrite each other";
        if (count > 1 && !has_n)
            return "has no {n} or {seed}: a prompt's images would overwrite each other";
        *toolong = path_put(out, cap, &n, tmpl, len);
        return NULL;
    }
    const char *base = strrchr(tmpl, '/');
    base = base ? base + 1 : tmpl;
    size_t stem = len;
    if (strlen(base) > 4 && strcasecmp(tmpl + len - 4, ".png") == 0)
        stem = len - 4;
    if (path_put(out, cap, &n, tmpl, stem) || (prompts > 1 && path_put(out, cap, &n, "-{p}", 4)) ||
        (count > 1 && path_put(out, cap, &n, "-{n}", 4)) ||
        path_put(out, cap, &n, tmpl + stem, len - stem))
        *toolong = 1;
    return NULL;
}

/* `tmpl` (from gen_output_template) with {p}, {n} and {seed} replaced: prompt `prompt` of
 * `prompts`, image `image` of `count` (both zero-padded to the width of their total, so
 * names sort), `seed`. Returns -1 when the name would not fit out[cap]. */
static int gen_output_path(const char *tmpl, int prompts, int prompt, int count, int image,
                           uint64_t seed, char *out, size_t cap)
{
    char pn[16], num[16], sd[24];
    int width = snprintf(pn, sizeof pn, "%d", prompts);
    snprintf(pn, sizeof pn, "%0*d", width, prompt);
    width = snprintf(num, sizeof num, "%d", count);
    snprintf(num, sizeof num, "%0*d", width, image);
    snprintf(sd, sizeof sd, "%llu", (unsigned long long)seed);
    size_t n = 0;
    out[0] = '\0';
    for (const char *p = tmpl; *p;) {
        int rc;
        if (strncmp(p, "{p}", 3) == 0) {
            rc = path_put(out, cap, &n, pn, strlen(pn));
            p += 3;
        } else if (strncmp(p, "{n}", 3) == 0) {
            rc = path_put(out, cap, &n, num, strlen(num));
            p += 3;
        } else if (strncmp(p, "{seed}", 6) == 0) {
            rc = path_put(out, cap, &n, sd, strlen(sd));
            p += 6;
        } else {
            rc = path_put(out, cap, &n, p, 1);
            p++;
        }
        if (rc)
            return -1;
    }
    return 0;
}

/* The prompts of a --prompts-file, owned. */
typedef struct gen_prompts {
    char **v;
    int n, cap;
} gen_prompts;

static int gen_prompt_ok(const char *s)
{
    size_t len = strlen(s);
    return len <= ZI_GEN_MAX_PROMPT && utf8_valid((const unsigned char *)s, len);
}

static int gen_add_prompt(void *ud, const char *prompt, const char *where)
{
    gen_prompts *ps = ud;
    if (!gen_prompt_ok(prompt)) {
        fprintf(stderr, "zimage: error: %sthe prompt must be valid UTF-8 of at most %d bytes\n",
                where, ZI_GEN_MAX_PROMPT);
        return 2;
    }
    if (ps->n == ZI_GEN_MAX_PROMPTS) {
        fprintf(stderr, "zimage: error: %smore than %d prompts\n", where, ZI_GEN_MAX_PROMPTS);
        return 2;
    }
    if (ps->n == ps->cap) {
        int cap = ps->cap ? ps->cap * 2 : 16;
        char **v = realloc(ps->v, (size_t)cap * sizeof *v);
        if (!v)
            goto oom;
        ps->v = v;
        ps->cap = cap;
    }
    if (!(ps->v[ps->n] = strdup(prompt)))
        goto oom;
    ps->n++;
    return 0;
oom:
    fprintf(stderr, "zimage: error: out of memory reading the prompts\n");
    return 1;
}

static void gen_prompts_free(gen_prompts *ps)
{
    for (int i = 0; i < ps->n; i++)
        free(ps->v[i]);
    free(ps->v);
}

static double gen_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int zi_cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *negative = NULL, *output = NULL, *file = NULL;
    const char *backend_name = "auto", *rng_name = "cuda";
    int width = 1024, height = 1024, steps = 8, quiet = 0, have_seed = 0, count = 1;
    double guidance = 0.0;
    uint64_t seed = 0;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            gen_usage(stdout);
            return 0;
        }
        if (strcmp(arg, "--quiet") == 0 || strcmp(arg, "-q") == 0) {
            quiet = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0)
            return zi_cli_usage_error("generate", "unexpected argument '%s'", arg);
        /* --name value or --name=value */
        static const char *const with_value[] = {"--model",       "--prompt", "--negative-prompt",
                                                 "--width",       "--height", "--steps",
                                                 "--guidance",    "--seed",   "--rng",
                                                 "--backend",     "--output", "--count",
                                                 "--prompts-file"};
        const char *name = NULL, *val = NULL;
        int r = zi_cli_opt_of(argc, argv, &i, with_value, sizeof with_value / sizeof with_value[0],
                              &name, &val);
        if (r == 0)
            return zi_cli_usage_error("generate", "unknown option '%s'", arg);
        if (r < 0)
            return zi_cli_usage_error("generate", "option %s needs a value", name);

        if (strcmp(name, "--model") == 0) {
            model = val;
        } else if (strcmp(name, "--prompt") == 0) {
            prompt = val;
        } else if (strcmp(name, "--prompts-file") == 0) {
            file = val;
        } else if (strcmp(name, "--negative-prompt") == 0) {
            negative = val;
        } else if (strcmp(name, "--output") == 0) {
            output = val;
        } else if (strcmp(name, "--rng") == 0) {
            rng_name = val;
        } else if (strcmp(name, "--backend") == 0) {
            backend_name = val;
        } else if (strcmp(name, "--width") == 0 || strcmp(name, "--height") == 0) {
            int v;
            if (zi_cli_parse_int(val, ZI_GEN_MIN_SIDE, ZI_GEN_MAX_SIDE, &v) || v % ZI_GEN_SIDE_MULT)
                return zi_cli_usage_error(
                    "generate", "%s '%s': must be a multiple of 16 in [64, 4096]", name, val);
            *(strcmp(name, "--width") == 0 ? &width : &height) = v;
        } else if (strcmp(name, "--steps") == 0) {
            if (zi_cli_parse_int(val, 1, ZI_GEN_MAX_STEPS, &steps))
                return zi_cli_usage_error("generate", "--steps '%s': must be an integer in [1, 50]",
                                          val);
        } else if (strcmp(name, "--guidance") == 0) {
            char *end = NULL;
            errno = 0;
            guidance = strtod(val, &end);
            if (errno || end == val || *end || !isfinite(guidance) || guidance < 0 ||
                guidance > ZI_GEN_MAX_GUIDANCE)
                return zi_cli_usage_error("generate",
                                          "--guidance '%s': must be a number in [0, 20]", val);
        } else if (strcmp(name, "--count") == 0) {
            if (zi_cli_parse_int(val, 1, ZI_GEN_MAX_COUNT, &count))
                return zi_cli_usage_error("generate",
                                          "--count '%s': must be an integer in [1, 1000]", val);
        } else if (strcmp(name, "--seed") == 0) {
            if (parse_u64(val, &seed))
                return zi_cli_usage_error("generate",
                                          "--seed '%s': must be an integer in [0, 2^64-1]", val);
            have_seed = 1;
        }
    }

    if (!model)
        return zi_cli_usage_error("generate", "--model is required");
    if (!prompt == !file)
        return zi_cli_usage_error("generate", "give one of --prompt and --prompts-file");
    if (!output)
        return zi_cli_usage_error("generate", "--output is required");
    if ((long)width * (long)height > ZI_GEN_MAX_PIXELS)
        return zi_cli_usage_error("generate",
                                  "size: width x height must be at most 4194304 pixels");
    zi_rng_kind rng;
    if (strcmp(rng_name, "cuda") == 0)
        rng = ZI_RNG_CUDA;
    else if (strcmp(rng_name, "cpu") == 0)
        rng = ZI_RNG_CPU;
    else
        return zi_cli_usage_error("generate", "unknown --rng '%s' (expected cuda or cpu)",
                                  rng_name);
    if (strcmp(backend_name, "auto") && strcmp(backend_name, "cpu") && strcmp(backend_name, "cuda"))
        return zi_cli_usage_error("generate", "unknown --backend '%s' (expected auto, cpu or cuda)",
                                  backend_name);
    if (prompt && !gen_prompt_ok(prompt))
        return zi_cli_usage_error("generate",
                                  "--prompt must be valid UTF-8 of at most 16384 bytes");
    if (negative && !gen_prompt_ok(negative))
        return zi_cli_usage_error("generate",
                                  "--negative-prompt must be valid UTF-8 of at most 16384 bytes");
    if (!zi_cli_is_dir(model))
        return zi_cli_usage_error("generate", "--model '%s': no such folder", model);

    int status = 1;
    zi_backend *be = NULL;
    zi_pipeline *p = NULL;
    uint8_t *rgb = NULL;
    char *params_text = NULL;
    gen_prompts ps = {0};
    const char *one[1] = {prompt};
    if (file) {
        int rc = zi_cli_read_prompts(file, gen_add_prompt, &ps);
        if (rc == 0 && ps.n == 0) {
            fprintf(stderr, "zimage: error: --prompts-file '%s': no prompts in it\n", file);
            rc = 2;
        }
        if (rc) {
            status = rc;
            goto done;
        }
    }
    const char *const *prompts = file ? (const char *const *)ps.v : one;
    const int nprompts = file ? ps.n : 1;

    if (!have_seed) { /* drawn now: a {seed} in a folder name is checked with it */
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        seed = r & ((1ull << 53) - 1); /* fits a JSON number exactly */
    }
    /* Every image's folder */
    char tmpl[ZI_GEN_MAX_PATH], path[ZI_GEN_MAX_PATH], checked[ZI_GEN_MAX_PATH] = "";
    int toolong = 0, have_checked = 0;
    const char *why = gen_output_template(output, nprompts, count, tmpl, sizeof tmpl, &toolong);
    if (why) {
        status = zi_cli_usage_error("generate", "--output '%s' %s", output, why);
        goto done;
    }
    for (int k = 0; k < nprompts && !toolong; k++) {
        for (int i = 0; i < count && !toolong; i++) {
            toolong = gen_output_path(tmpl, nprompts, k + 1, count, i + 1, seed + (uint64_t)i, path,
                                      sizeof path) != 0;
            const char *slash = toolong ? NULL : strrchr(path, '/');
            size_t dlen = slash ? (size_t)(slash - path) + 1 : 0;
            if (toolong ||
                (have_checked && strncmp(path, checked, dlen) == 0 && checked[dlen] == '\0'))
                continue; /* this folder was checked already */
            if (!output_dir_ok(path)) {
                status = zi_cli_usage_error(
                    "generate", "--output '%s': its folder does not exist or is not writable",
                    path);
                goto done;
            }
            snprintf(checked, sizeof checked, "%.*s", (int)dlen, path);
            have_checked = 1;
        }
    }
    if (toolong) {
        status =
            zi_cli_usage_error("generate", "--output '%s': the file names are too long", output);
        goto done;
    }

    if (strcmp(backend_name, "cuda") == 0 && !zi_backend_cuda_available()) {
        fprintf(stderr,
                "zimage: error: --backend cuda: no CUDA backend in this build or no GPU "
                "visible (%s)\n",
                zi_errmsg());
        status = 2;
        goto done;
    }
    if (!have_seed) { /* drawn earlier, printed once the usage is known to be right */
        printf("seed: %llu\n", (unsigned long long)seed);
        fflush(stdout);
    }

    /* A checkpoint whose config files are missing or invalid is a configuration error
     * (exit 2, as `encode` does); only weight files and compute failures exit 1. */
    zi_model_config mcfg;
    if (zi_config_load(model, &mcfg) != ZI_OK) {
        fprintf(stderr, "zimage: error: loading %s: %s\n", model, zi_errmsg());
        status = 2;
        goto done;
    }
    be = zi_backend_new(backend_name);
    if (!be) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        goto done;
    }
    /* this job's memory, planned: the CUDA backend's "auto" weight budget leaves room */
    zi_mem_plan plan;
    if (zi_cli_plan_headroom(be, &mcfg, width, height, (float)guidance, &plan, NULL) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        status = 2;
        goto done;
    }
    if (zi_pipeline_load(model, be, &p) != ZI_OK) {
        fprintf(stderr, "zimage: error: loading %s: %s\n", model, zi_errmsg());
        goto done;
    }
    zi_gen_params gp = {
        .negative_prompt = negative,
        .width = width,
        .height = height,
        .steps = steps,
        .guidance = (float)guidance,
        .seed = seed,
        .rng = rng,
    };
    for (int k = 0; k < nprompts; k++) {
        gp.prompt = prompts[k];
        if (zi_pipeline_check_params(p, &gp) != ZI_OK) {
            fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
            status = 2;
            goto done;
        }
    }
    gen_progress prog = {
        .show = !quiet && isatty(STDERR_FILENO), .prompts = nprompts, .count = count};
    double t0 = gen_now();
    for (int k = 0; k < nprompts; k++) {
        gp.prompt = prompts[k];
        prog.prompt = k + 1;
        for (int i = 0; i < count; i++) {
            gp.seed = seed + (uint64_t)i; /* mod 2^64 */
            prog.image = i + 1;
            if (gen_output_path(tmpl, nprompts, k + 1, count, i + 1, gp.seed, path, sizeof path)) {
                fprintf(stderr, "zimage: error: --output '%s': the file name is too long\n",
                        output);
                goto done;
            }
            if (zi_pipeline_generate(p, &gp, gen_on_step, &prog, &rgb) != ZI_OK) {
                if (prog.show)
                    fputc('\n', stderr);
                fprintf(stderr, "zimage: error: prompt %d of %d, image %d of %d (seed %llu): %s\n",
                        k + 1, nprompts, i + 1, count, (unsigned long long)gp.seed, zi_errmsg());
                goto done;
            }
            /* The negative prompt is recorded only when it was used (CFG on). */
            zi_png_params pp = {
                .prompt = gp.prompt,
                .negative_prompt = gp.guidance > 0 ? negative : NULL,
                .steps = steps,
                .guidance = gp.guidance,
                .seed = gp.seed,
                .width = width,
                .height = height,
                .model = zi_pipeline_model_name(p),
                .version = ZI_VERSION,
            };
            if (zi_png_params_text(&pp, &params_text) != ZI_OK ||
                zi_png_write(path, rgb, width, height, params_text) != ZI_OK) {
                fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
                goto done;
            }
            if (!quiet)
                fprintf(stderr, "wrote %s (%dx%d, %d steps, seed %llu)\n", path, width, height,
                        steps, (unsigned long long)gp.seed);
            free(params_text);
            free(rgb);
            params_text = NULL;
            rgb = NULL;
        }
    }
    const int total = nprompts * count;
    if (!quiet && total > 1) {
        double secs = gen_now() - t0;
        fprintf(stderr, "%d images in %.2f s (%.2f s per image, the model loaded once)\n", total,
                secs, secs / total);
    }
    status = 0;
done:
    gen_prompts_free(&ps);
    free(params_text);
    free(rgb);
    zi_pipeline_free(p);
    zi_backend_destroy(be);
    return status;
}
