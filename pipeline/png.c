/*
 * png.c - RGB8 PNG encode/decode with libspng and the "parameters" iTXt chunk.
 *
 * The encoder writes IHDR, one uncompressed iTXt "parameters" chunk (before IDAT, so
 * a reader that stops at the image data still sees it), IDAT, IEND. The decoder is for
 * tests and tools: it converts any PNG to RGB8 and returns the "parameters" text from
 * an iTXt or tEXt chunk. Images are bounded by ZI_PNG_MAX_SIDE per side.
 * Reference: PNG 1.2 / ISO 15948 (iTXt), libspng 0.7 API; docs/interfaces.md.
 */
#include "png.h"
#include "zi_err.h"

#include <errno.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* Largest side accepted on either path (the service limit is 4096). */
#define ZI_PNG_MAX_SIDE 65535
#define ZI_PNG_KEYWORD "parameters"

/* Shortest "%g" form that reads back as the same float, ".0" added to whole numbers
 * (Python's repr style: 0.0, 4.0, 3.5). */
static void zi_png_fmt_float(char *buf, size_t cap, float v)
{
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, cap, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    if (!strpbrk(buf, ".eEnN")) {
        size_t len = strlen(buf);
        if (len + 2 < cap)
            memcpy(buf + len, ".0", 3);
    }
}

int zi_png_params_text(const zi_png_params *p, char **out)
{
    *out = NULL;
    if (!p)
        return zi_errorf(ZI_EINVAL, "png parameters: NULL");
    const char *prompt = p->prompt ? p->prompt : "";
    const char *neg = p->negative_prompt;
    int has_neg = neg && *neg;
    char cfg[48];
    zi_png_fmt_float(cfg, sizeof cfg, p->guidance);
    const char *fmt = has_neg ? "%s\nNegative prompt: %s\nSteps: %d, Sampler: flow-euler, CFG "
                                "scale: %s, Seed: %llu, Size: %dx%d, Model: %s, Version: %s"
                              : "%s%s\nSteps: %d, Sampler: flow-euler, CFG scale: %s, Seed: "
                                "%llu, Size: %dx%d, Model: %s, Version: %s";
    const char *model = p->model ? p->model : "";
    const char *version = p->version ? p->version : "";
    int need = snprintf(NULL, 0, fmt, prompt, has_neg ? neg : "", p->steps, cfg,
                        (unsigned long long)p->seed, p->width, p->height, model, version);
    if (need < 0 || (size_t)need >= ZI_PNG_MAX_TEXT)
        return zi_errorf(ZI_EINVAL, "png parameters: text longer than %u bytes",
                         (unsigned)ZI_PNG_MAX_TEXT);
    char *s = malloc((size_t)need + 1);
    if (!s)
        return zi_errorf(ZI_ENOMEM, "png parameters: out of memory");
    snprintf(s, (size_t)need + 1, fmt, prompt, has_neg ? neg : "", p->steps, cfg,
             (unsigned long long)p->seed, p->width, p->height, model, version);
    *out = s;
    return ZI_OK;
}

static int zi_png_check_size(const char *what, int width, int height)
{
    if (width <= 0 || height <= 0 || width > ZI_PNG_MAX_SIDE || height > ZI_PNG_MAX_SIDE)
        return zi_errorf(ZI_EINVAL, "%s: bad image size %dx%d", what, width, height);
    return ZI_OK;
}

int zi_png_compression_parse(const char *name, zi_png_compression *out)
{
    if (name && strcmp(name, "fast") == 0)
        *out = ZI_PNG_FAST;
    else if (name && strcmp(name, "small") == 0)
        *out = ZI_PNG_SMALL;
    else
        return zi_errorf(ZI_EINVAL, "png compression '%s': expected fast or small",
                         name ? name : "(null)");
    return ZI_OK;
}

/* zlib settings of each zi_png_compression (png.h). */
static int zi_png_set_compression(spng_ctx *ctx, zi_png_compression c)
{
    int level = c == ZI_PNG_SMALL ? Z_DEFAULT_COMPRESSION : Z_BEST_SPEED;
    int strategy = c == ZI_PNG_SMALL ? Z_FILTERED : Z_RLE;
    int e = spng_set_option(ctx, SPNG_IMG_COMPRESSION_LEVEL, level);
    if (!e)
        e = spng_set_option(ctx, SPNG_IMG_COMPRESSION_STRATEGY, strategy);
    if (!e)
        e = spng_set_option(ctx, SPNG_FILTER_CHOICE, SPNG_FILTER_CHOICE_ALL);
    return e;
}

int zi_png_encode(const uint8_t *rgb, int width, int height, const char *parameters,
                  zi_png_compression compression, uint8_t **png, size_t *len)
{
    *png = NULL;
    *len = 0;
    int rc = zi_png_check_size("png encode", width, height);
    if (rc != ZI_OK)
        return rc;
    if (!rgb)
        return zi_errorf(ZI_EINVAL, "png encode: NULL pixels");
    size_t text_len = parameters ? strlen(parameters) : 0;
    if (text_len >= ZI_PNG_MAX_TEXT)
        return zi_errorf(ZI_EINVAL, "png encode: parameters text longer than %u bytes",
                         (unsigned)ZI_PNG_MAX_TEXT);

    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    if (!ctx)
        return zi_errorf(ZI_ENOMEM, "png encode: out of memory");
    int e = spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    if (!e)
        e = zi_png_set_compression(ctx, compression);
    struct spng_ihdr ihdr = {
        .width = (uint32_t)width,
        .height = (uint32_t)height,
        .bit_depth = 8,
        .color_type = SPNG_COLOR_TYPE_TRUECOLOR,
    };
    if (!e)
        e = spng_set_ihdr(ctx, &ihdr);
    if (!e && parameters) {
        /* spng copies nothing here: text, language tag and translated keyword must stay
         * alive until the image is encoded (they do: caller's string and literals). */
        struct spng_text text;
        memset(&text, 0, sizeof text);
        memcpy(text.keyword, ZI_PNG_KEYWORD, sizeof ZI_PNG_KEYWORD);
        text.type = SPNG_ITXT;
        text.length = text_len;
        text.text = (char *)parameters;
        text.compression_flag = 0;
        text.language_tag = "";
        text.translated_keyword = "";
        e = spng_set_text(ctx, &text, 1);
    }
    size_t img_len = (size_t)width * (size_t)height * 3;
    if (!e)
        e = spng_encode_image(ctx, rgb, img_len, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    void *buf = NULL;
    size_t buf_len = 0;
    if (!e)
        buf = spng_get_png_buffer(ctx, &buf_len, &e);
    spng_ctx_free(ctx);
    if (e || !buf) {
        free(buf);
        return zi_errorf(e == SPNG_EMEM ? ZI_ENOMEM : ZI_EINVAL, "png encode: %s",
                         e ? spng_strerror(e) : "no output");
    }
    *png = buf;
    *len = buf_len;
    return ZI_OK;
}

int zi_png_write(const char *path, const uint8_t *rgb, int width, int height,
                 const char *parameters)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = zi_png_encode(rgb, width, height, parameters, ZI_PNG_FAST, &buf, &len);
    if (rc != ZI_OK)
        return rc;
    FILE *f = fopen(path, "wb");
    if (!f) {
        rc = zi_errorf(ZI_EIO, "png write %s: %s", path, strerror(errno));
        goto out;
    }
    size_t put = fwrite(buf, 1, len, f);
    int close_rc = fclose(f);
    if (put != len || close_rc != 0)
        rc = zi_errorf(ZI_EIO, "png write %s: %s", path, strerror(errno));
out:
    free(buf);
    return rc;
}

/* The malloc'ed text of the first "parameters" text chunk, or NULL (also on error). */
static char *zi_png_find_text(spng_ctx *ctx)
{
    uint32_t n = 0;
    if (spng_get_text(ctx, NULL, &n) || n == 0)
        return NULL;
    struct spng_text *texts = calloc(n, sizeof *texts);
    if (!texts)
        return NULL;
    char *found = NULL;
    if (!spng_get_text(ctx, texts, &n)) {
        for (uint32_t i = 0; i < n && !found; i++) {
            if (strcmp(texts[i].keyword, ZI_PNG_KEYWORD) != 0)
                continue;
            found = malloc(texts[i].length + 1);
            if (found) {
                memcpy(found, texts[i].text, texts[i].length);
                found[texts[i].length] = '\0';
            }
        }
    }
    free(texts);
    return found;
}

int zi_png_decode(const void *png, size_t len, uint8_t **rgb, int *width, int *height,
                  char **parameters)
{
    *rgb = NULL;
    *width = *height = 0;
    if (parameters)
        *parameters = NULL;
    if (!png || len == 0)
        return zi_errorf(ZI_EFORMAT, "png decode: empty input");
    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx)
        return zi_errorf(ZI_ENOMEM, "png decode: out of memory");
    uint8_t *pix = NULL;
    struct spng_ihdr ihdr;
    size_t out_len = 0;
    int e = spng_set_image_limits(ctx, ZI_PNG_MAX_SIDE, ZI_PNG_MAX_SIDE);
    if (!e)
        e = spng_set_chunk_limits(ctx, ZI_PNG_MAX_TEXT * 4u, ZI_PNG_MAX_TEXT * 8u);
    if (!e)
        e = spng_set_png_buffer(ctx, png, len);
    if (!e)
        e = spng_get_ihdr(ctx, &ihdr);
    if (!e)
        e = spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &out_len);
    if (!e) {
        pix = malloc(out_len ? out_len : 1);
        if (!pix)
            e = SPNG_EMEM;
    }
    if (!e)
        e = spng_decode_image(ctx, pix, out_len, SPNG_FMT_RGB8, SPNG_DECODE_TRNS);
    if (e) {
        free(pix);
        spng_ctx_free(ctx);
        return zi_errorf(e == SPNG_EMEM ? ZI_ENOMEM : ZI_EFORMAT, "png decode: %s",
                         spng_strerror(e));
    }
    if (parameters)
        *parameters = zi_png_find_text(ctx);
    spng_ctx_free(ctx);
    *rgb = pix;
    *width = (int)ihdr.width;
    *height = (int)ihdr.height;
    return ZI_OK;
}

int zi_png_read(const char *path, uint8_t **rgb, int *width, int *height, char **parameters)
{
    *rgb = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return zi_errorf(ZI_EIO, "png read %s: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = ZI_OK;
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            /* a PNG of a 65535^2 RGB image compresses to far less than 16 GiB */
            if (ncap > ((size_t)1 << 34)) {
                rc = zi_errorf(ZI_EFORMAT, "png read %s: file too large", path);
                break;
            }
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                rc = zi_errorf(ZI_ENOMEM, "png read %s: out of memory", path);
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                rc = zi_errorf(ZI_EIO, "png read %s: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (rc == ZI_OK) {
        rc = zi_png_decode(buf, len, rgb, width, height, parameters);
        if (rc != ZI_OK)
            zi_error_prefix(rc, "%s", path);
    }
    free(buf);
    return rc;
}
