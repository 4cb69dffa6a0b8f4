/*
 * cmd_generate.c - `zimage generate`: one prompt to one PNG (docs/contract.md).
 *
 * Options follow the job rules: sides multiples of 16 in [64, 4096], width x height at most
 * 4194304, steps 1..50, guidance 0..20, prompt at most 16384 bytes of UTF-8. A seed is
 * drawn when none is given; it is printed on stdout ("seed: S") and stored in the PNG's
 * `parameters` chunk. Progress ("step i/N, s/step") goes to stderr only when stderr is a
 * terminal and --quiet is not given. Exit: 0 ok, 2 usage error, 1 any other failure.
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

static void gen_usage(FILE *f)
{
    fprintf(f,
            "usage: zimage generate --model DIR --prompt TEXT --output FILE.png [options]\n"
            "\n"
            "  --model DIR             checkpoint folder in the diffusers layout\n"
            "  --prompt TEXT           the prompt (UTF-8, at most %d bytes)\n"
            "  --negative-prompt TEXT  negative prompt, used when --guidance > 0 (default \"\")\n"
            "  --width W, --height H   image size, multiples of %d in [%d, %d], W*H <= %ld\n"
            "                          (default 1024x1024)\n"
            "  --steps N               transformer calls, 1..%d (default 8)\n"
            "  --guidance G            classifier-free guidance scale, 0..%g (default 0: off)\n"
            "  --seed S                0..2^64-1 (default: drawn at random and printed)\n"
            "  --rng cuda|cpu          torch generator whose randn gives the noise (default cuda)\n"
            "  --backend auto|cpu|cuda compute backend (default auto)\n"
            "  --quiet                 no progress output\n"
            "  --output FILE.png       where to write the image\n",
            ZI_GEN_MAX_PROMPT, ZI_GEN_SIDE_MULT, ZI_GEN_MIN_SIDE, ZI_GEN_MAX_SIDE,
            ZI_GEN_MAX_PIXELS, ZI_GEN_MAX_STEPS, ZI_GEN_MAX_GUIDANCE);
}

static int gen_usage_error(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "zimage: error: ");
    fprintf(stderr, fmt, a, b);
    fputs(" (see 'zimage generate --help')\n", stderr);
    return 2;
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
} gen_progress;

static int gen_on_step(void *ud, int step, int steps, double step_seconds)
{
    gen_progress *g = ud;
    if (g->show) {
        fprintf(stderr, "\rstep %d/%d  %.2f s/step   ", step, steps, step_seconds);
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

int zi_cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *negative = NULL, *output = NULL;
    const char *backend_name = "auto", *rng_name = "cuda";
    int width = 1024, height = 1024, steps = 8, quiet = 0, have_seed = 0;
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
            return gen_usage_error("unexpected argument '%s'%s", arg, "");
        /* --name value or --name=value */
        char name[64];
        const char *val = NULL;
        const char *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        if (nlen >= sizeof name)
            return gen_usage_error("unknown option '%s'%s", arg, "");
        memcpy(name, arg, nlen);
        name[nlen] = '\0';
        static const char *const with_value[] = {"--model",    "--prompt", "--negative-prompt",
                                                 "--width",    "--height", "--steps",
                                                 "--guidance", "--seed",   "--rng",
                                                 "--backend",  "--output"};
        int known = 0;
        for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++)
            known |= strcmp(name, with_value[k]) == 0;
        if (!known)
            return gen_usage_error("unknown option '%s'%s", name, "");
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else
            return gen_usage_error("option %s needs a value%s", name, "");

        if (strcmp(name, "--model") == 0) {
            model = val;
        } else if (strcmp(name, "--prompt") == 0) {
            prompt = val;
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
                return gen_usage_error("%s '%s': must be a multiple of 16 in [64, 4096]", name,
                                       val);
            *(strcmp(name, "--width") == 0 ? &width : &height) = v;
        } else if (strcmp(name, "--steps") == 0) {
            if (zi_cli_parse_int(val, 1, ZI_GEN_MAX_STEPS, &steps))
                return gen_usage_error("--steps '%s': must be an integer in [1, 50]%s", val, "");
        } else if (strcmp(name, "--guidance") == 0) {
            char *end = NULL;
            errno = 0;
            guidance = strtod(val, &end);
            if (errno || end == val || *end || !isfinite(guidance) || guidance < 0 ||
                guidance > ZI_GEN_MAX_GUIDANCE)
                return gen_usage_error("--guidance '%s': must be a number in [0, 20]%s", val, "");
        } else if (strcmp(name, "--seed") == 0) {
            if (parse_u64(val, &seed))
                return gen_usage_error("--seed '%s': must be an integer in [0, 2^64-1]%s", val, "");
            have_seed = 1;
        }
    }

    if (!model)
        return gen_usage_error("--model is required%s%s", "", "");
    if (!prompt)
        return gen_usage_error("--prompt is required%s%s", "", "");
    if (!output)
        return gen_usage_error("--output is required%s%s", "", "");
    if ((long)width * (long)height > ZI_GEN_MAX_PIXELS)
        return gen_usage_error("size: width x height must be at most 4194304 pixels%s%s", "", "");
    zi_rng_kind rng;
    if (strcmp(rng_name, "cuda") == 0)
        rng = ZI_RNG_CUDA;
    else if (strcmp(rng_name, "cpu") == 0)
        rng = ZI_RNG_CPU;
    else
        return gen_usage_error("unknown --rng '%s' (expected cuda or cpu)%s", rng_name, "");
    if (strcmp(backend_name, "auto") && strcmp(backend_name, "cpu") && strcmp(backend_name, "cuda"))
        return gen_usage_error("unknown --backend '%s' (expected auto, cpu or cuda)%s",
                               backend_name, "");
    if (strlen(prompt) > ZI_GEN_MAX_PROMPT ||
        !utf8_valid((const unsigned char *)prompt, strlen(prompt)))
        return gen_usage_error("--prompt must be valid UTF-8 of at most 16384 bytes%s%s", "", "");
    if (negative && (strlen(negative) > ZI_GEN_MAX_PROMPT ||
                     !utf8_valid((const unsigned char *)negative, strlen(negative))))
        return gen_usage_error("--negative-prompt must be valid UTF-8 of at most 16384 bytes%s%s",
                               "", "");
    if (!zi_cli_is_dir(model))
        return gen_usage_error("--model '%s': no such folder%s", model, "");
    if (!output_dir_ok(output))
        return gen_usage_error("--output '%s': its folder does not exist or is not writable%s",
                               output, "");

    if (strcmp(backend_name, "cuda") == 0 && !zi_backend_cuda_available()) {
        fprintf(stderr,
                "zimage: error: --backend cuda: no CUDA backend in this build or no GPU "
                "visible (%s)\n",
                zi_errmsg());
        return 2;
    }
    if (!have_seed) {
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        seed = r & ((1ull << 53) - 1); /* fits a JSON number exactly */
        printf("seed: %llu\n", (unsigned long long)seed);
        fflush(stdout);
    }

    int status = 1;
    zi_backend *be = NULL;
    zi_pipeline *p = NULL;
    uint8_t *rgb = NULL;
    char *params_text = NULL;

    /* A checkpoint whose config files are missing or invalid is a configuration error
     * (exit 2, as `encode` does); only weight files and compute failures exit 1. */
    zi_model_config mcfg;
    if (zi_config_load(model, &mcfg) != ZI_OK) {
        fprintf(stderr, "zimage: error: loading %s: %s\n", model, zi_errmsg());
        return 2;
    }
    be = zi_backend_new(backend_name);
    if (!be) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        goto done;
    }
    if (zi_pipeline_load(model, be, &p) != ZI_OK) {
        fprintf(stderr, "zimage: error: loading %s: %s\n", model, zi_errmsg());
        goto done;
    }
    zi_gen_params gp = {
        .prompt = prompt,
        .negative_prompt = negative,
        .width = width,
        .height = height,
        .steps = steps,
        .guidance = (float)guidance,
        .seed = seed,
        .rng = rng,
    };
    if (zi_pipeline_check_params(p, &gp) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        status = 2;
        goto done;
    }
    gen_progress prog = {.show = !quiet && isatty(STDERR_FILENO)};
    if (zi_pipeline_generate(p, &gp, gen_on_step, &prog, &rgb) != ZI_OK) {
        if (prog.show)
            fputc('\n', stderr);
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        goto done;
    }
    /* The negative prompt is recorded only when it was used (CFG on). */
    zi_png_params pp = {
        .prompt = prompt,
        .negative_prompt = gp.guidance > 0 ? negative : NULL,
        .steps = steps,
        .guidance = gp.guidance,
        .seed = seed,
        .width = width,
        .height = height,
        .model = zi_pipeline_model_name(p),
        .version = ZI_VERSION,
    };
    if (zi_png_params_text(&pp, &params_text) != ZI_OK ||
        zi_png_write(output, rgb, width, height, params_text) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        goto done;
    }
    if (!quiet)
        fprintf(stderr, "wrote %s (%dx%d, %d steps, seed %llu)\n", output, width, height, steps,
                (unsigned long long)seed);
    status = 0;
done:
    free(params_text);
    free(rgb);
    zi_pipeline_free(p);
    zi_backend_destroy(be);
    return status;
}
