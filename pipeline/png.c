/*
 * png.c - RGB8 PNG encoding (zlib, on several threads) and decoding (libspng), with the
 * "parameters" iTXt chunk.
 *
 * The encoder writes IHDR, one uncompressed iTXt "parameters" chunk (before IDAT, so
 * a reader that stops at the image data still sees it), IDAT, IEND. The decoder is for
 * tests and tools: it converts any PNG to RGB8 and returns the "parameters" text from
 * an iTXt or tEXt chunk. Images are bounded by ZI_PNG_MAX_SIDE per side.
 * Reference: PNG 1.2 / ISO 15948 (iTXt), libspng 0.7 API; docs/contract.md.
 */
#include "png.h"
#include "zi_err.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <spng.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
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
    /* iTXt text is UTF-8. Prompts are checked before they get here; the model name is a
     * folder's name, which Linux lets be any bytes: a byte that is not UTF-8 becomes '?'. */
    utf8proc_ssize_t left = need;
    for (utf8proc_uint8_t *q = (utf8proc_uint8_t *)s; left > 0;) {
        utf8proc_int32_t cp = -1;
        utf8proc_ssize_t n = utf8proc_iterate(q, left, &cp);
        if (n <= 0 || cp < 0) {
            *q = '?';
            n = 1;
        }
        q += n;
        left -= n;
    }
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

/* ---- encoder ----
 * libspng and libpng deflate an image as one stream on one core, and the worker encodes
 * while the GPU waits (docs/performance.md, "PNG encoding"). Here the rows are filtered
 * and then deflated in bands on several threads, as pigz does for gzip: each band is a raw
 * deflate stream primed with the 32 KiB of filtered data before it (so matches may reach
 * back across the band boundary, as in one stream) and ended by a sync flush (byte-aligned,
 * not final), except the last, which finishes; the bands concatenate into one zlib stream
 * whose Adler-32 is combined from theirs. Bands are cut from the image size alone, so the
 * file is the same whatever the thread count. zlib does the deflating and the checksums;
 * the chunks around them (PNG 1.2 sections 5 and 11) are written here.
 * Reference: PNG 1.2 (ISO 15948) 5.3 chunk layout, 9 filters (12.8: the minimum sum of
 * absolute differences heuristic, libpng's and libspng's choice), 11.2.2 IHDR, 11.3.4.5
 * iTXt; RFC 1950 (zlib header, Adler-32); zlib.h (deflateSetDictionary, Z_SYNC_FLUSH). */

#define ZI_PNG_BAND_BYTES (128u << 10) /* filtered bytes per band (the last may be longer) */
#define ZI_PNG_WINDOW 32768u           /* deflate's window: the dictionary of a band */
#define ZI_PNG_MAX_THREADS 8

typedef struct zi_png_enc {
    const uint8_t *rgb;
    int width, height;
    size_t rowbytes; /* width * 3 */
    uint8_t *filt;   /* height rows of 1 + rowbytes: filter type, then residuals */
    int rows_per_band;
    int nbands;
    int level, strategy;
    uint8_t **out;     /* [nbands] deflated bands */
    size_t *out_len;   /* [nbands] */
    uLong *adler;      /* [nbands] Adler-32 of each band's filtered bytes */
    atomic_int next;   /* the next item a thread takes */
    atomic_int failed; /* ZI_ENOMEM, ZI_EINVAL, or 0 */
} zi_png_enc;

static uint8_t zi_png_paeth(int a, int b, int c)
{
    int p = a + b - c;
    int pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    if (pa <= pb && pa <= pc)
        return (uint8_t)a;
    return (uint8_t)(pb <= pc ? b : c);
}

/* Sum of the residuals' magnitudes, read as signed bytes (the heuristic's measure; for
 * filter "none" the bytes themselves). */
static unsigned long zi_png_cost(const uint8_t *r, size_t n)
{
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (unsigned long)abs((int)(int8_t)r[i]);
    return sum;
}

/* Row y into its filtered form: each of the five filters is tried and the one whose
 * residuals have the smallest zi_png_cost is kept. cand holds 4 rows (sub, up, average,
 * Paeth; "none" is the row itself); `zero` is a row of zeros, the "previous row" of the
 * first. One loop per filter, so that the compiler vectorises them. */
static void zi_png_filter_row(const zi_png_enc *e, int y, uint8_t *cand, const uint8_t *zero)
{
    const size_t n = e->rowbytes, bpp = 3;
    const uint8_t *x = e->rgb + (size_t)y * n;
    const uint8_t *b = y > 0 ? x - n : zero; /* above */
    uint8_t *sub = cand, *up = cand + n, *avg = cand + 2 * n, *pae = cand + 3 * n;
    for (size_t i = 0; i < bpp; i++) { /* no left neighbour: a = c = 0 */
        sub[i] = x[i];
        avg[i] = (uint8_t)(x[i] - (b[i] >> 1));
        pae[i] = (uint8_t)(x[i] - b[i]);
    }
    for (size_t i = bpp; i < n; i++)
        sub[i] = (uint8_t)(x[i] - x[i - bpp]);
    for (size_t i = 0; i < n; i++)
        up[i] = (uint8_t)(x[i] - b[i]);
    for (size_t i = bpp; i < n; i++)
        avg[i] = (uint8_t)(x[i] - ((x[i - bpp] + b[i]) >> 1));
    for (size_t i = bpp; i < n; i++)
        pae[i] = (uint8_t)(x[i] - zi_png_paeth(x[i - bpp], b[i], b[i - bpp]));
    int best = 0;
    const uint8_t *best_row = x;
    unsigned long best_cost = zi_png_cost(x, n);
    for (int f = 1; f < 5; f++) {
        const uint8_t *r = cand + (size_t)(f - 1) * n;
        unsigned long c = zi_png_cost(r, n);
        if (c < best_cost) {
            best = f;
            best_row = r;
            best_cost = c;
        }
    }
    uint8_t *dst = e->filt + (size_t)y * (n + 1);
    dst[0] = (uint8_t)best;
    memcpy(dst + 1, best_row, n);
}

static size_t zi_png_band_start(const zi_png_enc *e, int b)
{
    return (size_t)b * (size_t)e->rows_per_band * (e->rowbytes + 1);
}

static size_t zi_png_band_len(const zi_png_enc *e, int b)
{
    size_t end =
        b + 1 < e->nbands ? zi_png_band_start(e, b + 1) : (size_t)e->height * (e->rowbytes + 1);
    return end - zi_png_band_start(e, b);
}

/* Band b's rows, filtered. */
static int zi_png_filter_band(zi_png_enc *e, int b)
{
    uint8_t *cand = malloc(4 * e->rowbytes), *zero = calloc(1, e->rowbytes);
    int y1 = b + 1 < e->nbands ? (b + 1) * e->rows_per_band : e->height;
    for (int y = b * e->rows_per_band; cand && zero && y < y1; y++)
        zi_png_filter_row(e, y, cand, zero);
    int rc = cand && zero ? ZI_OK : ZI_ENOMEM;
    free(cand);
    free(zero);
    return rc;
}

/* Band b deflated as a raw stream, primed with the window before it. */
static int zi_png_deflate_band(zi_png_enc *e, int b)
{
    const size_t start = zi_png_band_start(e, b), len = zi_png_band_len(e, b);
    const int last = b + 1 == e->nbands;
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, e->level, Z_DEFLATED, -15, 8, e->strategy) != Z_OK)
        return ZI_ENOMEM;
    int rc = ZI_OK;
    if (start > 0) {
        size_t dict = start < ZI_PNG_WINDOW ? start : ZI_PNG_WINDOW;
        if (deflateSetDictionary(&z, e->filt + start - dict, (uInt)dict) != Z_OK)
            rc = ZI_EINVAL;
    }
    /* deflateBound covers the finished stream; a sync flush adds at most 5 bytes and the
     * dictionary nothing, and the loop grows the buffer should that ever be short */
    size_t cap = deflateBound(&z, (uLong)len) + 64, have = 0;
    uint8_t *out = rc == ZI_OK ? malloc(cap) : NULL;
    if (!out && rc == ZI_OK)
        rc = ZI_ENOMEM;
    z.next_in = e->filt + start;
    z.avail_in = (uInt)len; /* a band is at most ZI_PNG_BAND_BYTES + one row < 4 GiB */
    for (int zrc = Z_OK; rc == ZI_OK;) {
        if (have == cap) {
            uint8_t *grown = realloc(out, cap * 2);
            if (!grown) {
                rc = ZI_ENOMEM;
                break;
            }
            out = grown;
            cap *= 2;
        }
        z.next_out = out + have;
        z.avail_out = (uInt)(cap - have);
        zrc = deflate(&z, last ? Z_FINISH : Z_SYNC_FLUSH);
        have = cap - z.avail_out;
        if (zrc == Z_STREAM_ERROR || (zrc == Z_BUF_ERROR && z.avail_out > 0))
            rc = ZI_EINVAL; /* misuse, or no progress with room to write: never loop */
        else if (last ? zrc == Z_STREAM_END : z.avail_in == 0 && z.avail_out > 0)
            break; /* finished, or flushed with room to spare (so nothing is pending) */
    }
    deflateEnd(&z);
    if (rc != ZI_OK) {
        free(out);
        return rc;
    }
    e->out[b] = out;
    e->out_len[b] = have;
    e->adler[b] = adler32(adler32(0L, Z_NULL, 0), e->filt + start, (uInt)len);
    return ZI_OK;
}

typedef int (*zi_png_item_fn)(zi_png_enc *e, int item);

typedef struct zi_png_task {
    zi_png_enc *e;
    zi_png_item_fn fn;
} zi_png_task;

static void *zi_png_thread(void *arg)
{
    zi_png_task *t = arg;
    for (int i; (i = atomic_fetch_add(&t->e->next, 1)) < t->e->nbands;) {
        int rc = t->fn(t->e, i);
        if (rc != ZI_OK) {
            int zero = 0;
            atomic_compare_exchange_strong(&t->e->failed, &zero, rc);
        }
    }
    return NULL;
}

/* fn over every band, on up to `threads` threads (the caller's included). */
static int zi_png_each_band(zi_png_enc *e, zi_png_item_fn fn, int threads)
{
    pthread_t tid[ZI_PNG_MAX_THREADS];
    zi_png_task task = {e, fn};
    int started = 0;
    atomic_store(&e->next, 0);
    if (threads > e->nbands)
        threads = e->nbands;
    while (started < threads - 1 && pthread_create(&tid[started], NULL, zi_png_thread, &task) == 0)
        started++; /* a thread that cannot start leaves its share to the others */
    zi_png_thread(&task);
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    return atomic_load(&e->failed);
}

int zi_png_threads(void)
{
    cpu_set_t set;
    int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    return n < 1 ? 1 : n > ZI_PNG_MAX_THREADS ? ZI_PNG_MAX_THREADS : n;
}

static uint8_t *zi_png_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

/* A chunk at p: length, type, the data (already at p + 8 when data is NULL), CRC. */
static uint8_t *zi_png_chunk(uint8_t *p, const char type[4], const void *data, size_t len)
{
    zi_png_put32(p, (uint32_t)len);
    memcpy(p + 4, type, 4);
    if (data && len)
        memcpy(p + 8, data, len);
    uLong crc = crc32(crc32(0L, Z_NULL, 0), p + 4, (uInt)(len + 4));
    return zi_png_put32(p + 8 + len, (uint32_t)crc);
}

/* Signature, IHDR, the iTXt "parameters" chunk, one IDAT per band, IEND. The zlib stream
 * runs through the IDATs: its header (deflate, 32 KiB window, FLEVEL as zlib writes it)
 * opens the first, the Adler-32 of all filtered bytes closes the last. */
static int zi_png_assemble(const zi_png_enc *e, const char *parameters, uint8_t **png, size_t *len)
{
    size_t text_len = parameters ? strlen(parameters) : 0;
    size_t itxt = parameters ? sizeof ZI_PNG_KEYWORD + 4 + text_len : 0;
    size_t total = 8 + (12 + 13) + (parameters ? 12 + itxt : 0) + 2 + 4 + 12;
    for (int b = 0; b < e->nbands; b++)
        total += 12 + e->out_len[b];
    uint8_t *buf = malloc(total);
    if (!buf)
        return zi_errorf(ZI_ENOMEM, "png encode: out of memory");
    uint8_t *p = buf;
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    p += 8;
    uint8_t ihdr[13];
    zi_png_put32(ihdr, (uint32_t)e->width);
    zi_png_put32(ihdr + 4, (uint32_t)e->height);
    memcpy(ihdr + 8, "\x08\x02\x00\x00\x00", 5); /* 8 bits, RGB, deflate, adaptive, none */
    p = zi_png_chunk(p, "IHDR", ihdr, sizeof ihdr);
    if (parameters) {
        /* keyword NUL, compression flag 0, method 0, language tag "" NUL, translated
         * keyword "" NUL, UTF-8 text */
        uint8_t *d = p + 8;
        memcpy(d, ZI_PNG_KEYWORD, sizeof ZI_PNG_KEYWORD);
        d += sizeof ZI_PNG_KEYWORD;
        memset(d, 0, 4);
        memcpy(d + 4, parameters, text_len);
        p = zi_png_chunk(p, "iTXt", NULL, itxt);
    }
    uLong adler = adler32(0L, Z_NULL, 0);
    for (int b = 0; b < e->nbands; b++) {
        uint8_t *d = p + 8, *d0 = d;
        if (b == 0) {
            unsigned flg = (e->level == Z_BEST_SPEED ? 0u : 2u) << 6;
            flg += 31u - (0x78u * 256u + flg) % 31u;
            *d++ = 0x78;
            *d++ = (uint8_t)flg;
        }
        memcpy(d, e->out[b], e->out_len[b]);
        d += e->out_len[b];
        adler = adler32_combine(adler, e->adler[b], (z_off_t)zi_png_band_len(e, b));
        if (b + 1 == e->nbands)
            d = zi_png_put32(d, (uint32_t)adler);
        p = zi_png_chunk(p, "IDAT", NULL, (size_t)(d - d0));
    }
    p = zi_png_chunk(p, "IEND", NULL, 0);
    *png = buf;
    *len = (size_t)(p - buf);
    return ZI_OK;
}

int zi_png_encode_threads(const uint8_t *rgb, int width, int height, const char *parameters,
                          zi_png_compression compression, int threads, uint8_t **png, size_t *len)
{
    *png = NULL;
    *len = 0;
    int rc = zi_png_check_size("png encode", width, height);
    if (rc != ZI_OK)
        return rc;
    if (!rgb)
        return zi_errorf(ZI_EINVAL, "png encode: NULL pixels");
    if (parameters && strlen(parameters) >= ZI_PNG_MAX_TEXT)
        return zi_errorf(ZI_EINVAL, "png encode: parameters text longer than %u bytes",
                         (unsigned)ZI_PNG_MAX_TEXT);
    if (threads < 0 || threads > ZI_PNG_MAX_THREADS)
        return zi_errorf(ZI_EINVAL, "png encode: %d threads (expected 0 to %d)", threads,
                         ZI_PNG_MAX_THREADS);
    zi_png_enc e = {
        .rgb = rgb,
        .width = width,
        .height = height,
        .rowbytes = (size_t)width * 3,
        .level = compression == ZI_PNG_SMALL ? Z_DEFAULT_COMPRESSION : Z_BEST_SPEED,
        .strategy = compression == ZI_PNG_SMALL ? Z_FILTERED : Z_RLE,
    };
    size_t rows = ZI_PNG_BAND_BYTES / (e.rowbytes + 1);
    e.rows_per_band = rows < 1 ? 1 : rows > (size_t)height ? height : (int)rows;
    e.nbands = height / e.rows_per_band; /* the remainder rows join the last band */
    e.filt = malloc((size_t)height * (e.rowbytes + 1));
    e.out = calloc((size_t)e.nbands, sizeof *e.out);
    e.out_len = calloc((size_t)e.nbands, sizeof *e.out_len);
    e.adler = calloc((size_t)e.nbands, sizeof *e.adler);
    if (!e.filt || !e.out || !e.out_len || !e.adler)
        rc = zi_errorf(ZI_ENOMEM, "png encode: out of memory");
    if (threads == 0)
        threads = zi_png_threads();
    if (rc == ZI_OK) {
        /* all rows are filtered before any band is deflated: a band's dictionary is the
         * filtered data before it */
        rc = zi_png_each_band(&e, zi_png_filter_band, threads);
        if (rc == ZI_OK)
            rc = zi_png_each_band(&e, zi_png_deflate_band, threads);
        if (rc != ZI_OK)
            zi_errorf(rc, "png encode: %s", rc == ZI_ENOMEM ? "out of memory" : "zlib failed");
    }
    if (rc == ZI_OK)
        rc = zi_png_assemble(&e, parameters, png, len);
    for (int b = 0; e.out && b < e.nbands; b++)
        free(e.out[b]);
    free(e.out);
    free(e.out_len);
    free(e.adler);
    free(e.filt);
    return rc;
}

int zi_png_encode(const uint8_t *rgb, int width, int height, const char *parameters,
                  zi_png_compression compression, uint8_t **png, size_t *len)
{
    return zi_png_encode_threads(rgb, width, height, parameters, compression, 0, png, len);
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
