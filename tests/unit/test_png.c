/*
 * test_png.c - PNG round trips, the "parameters" iTXt chunk, and the golden PNG.
 */
#include "zi_test.h"

#include "png.h"
#include "safetensors.h"
#include "zi_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* A deterministic test pattern [h, w, 3] that uses every byte value. */
static uint8_t *make_image(int w, int h)
{
    uint8_t *rgb = malloc((size_t)w * h * 3);
    assert_non_null(rgb);
    uint32_t s = 12345;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        s = s * 1664525u + 1013904223u;
        rgb[i] = (uint8_t)(i % 7 == 0 ? (s >> 24) : (i * 37 + (i / 3) * 11));
    }
    return rgb;
}

static void roundtrip_with(const uint8_t *rgb, int w, int h, const char *params,
                           zi_png_compression c)
{
    uint8_t *png = NULL, *back = NULL;
    size_t len = 0;
    char *text = NULL;
    int bw = 0, bh = 0;
    assert_int_equal(zi_png_encode(rgb, w, h, params, c, &png, &len), ZI_OK);
    assert_true(len > 8);
    assert_memory_equal(png, "\x89PNG\r\n\x1a\n", 8);
    assert_int_equal(zi_png_decode(png, len, &back, &bw, &bh, &text), ZI_OK);
    assert_int_equal(bw, w);
    assert_int_equal(bh, h);
    assert_memory_equal(back, rgb, (size_t)w * h * 3);
    if (params) {
        assert_non_null(text);
        assert_string_equal(text, params);
        /* the chunk is iTXt with keyword "parameters" */
        const uint8_t *hit = memmem(png, len, "iTXtparameters", 14);
        assert_non_null(hit);
        /* and it sits before the image data */
        assert_true(hit < (const uint8_t *)memmem(png, len, "IDAT", 4));
    } else {
        assert_null(text);
    }
    free(png);
    free(back);
    free(text);
}

/* Every compression setting gives back the same pixels and text. */
static void roundtrip(const uint8_t *rgb, int w, int h, const char *params)
{
    roundtrip_with(rgb, w, h, params, ZI_PNG_FAST);
    roundtrip_with(rgb, w, h, params, ZI_PNG_SMALL);
}

static void test_png_roundtrip_pixels(void **state)
{
    (void)state;
    int sizes[][2] = {{1, 1}, {64, 64}, {96, 128}, {160, 96}, {17, 3}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint8_t *rgb = make_image(sizes[i][0], sizes[i][1]);
        roundtrip(rgb, sizes[i][0], sizes[i][1], NULL);
        roundtrip(rgb, sizes[i][0], sizes[i][1], "a cat\nSteps: 1");
        free(rgb);
    }
}

/* The parameters text of p with guidance g holds `want`. */
static void expect_cfg_text(zi_png_params *p, float g, const char *want)
{
    char *t = NULL;
    p->guidance = g;
    assert_int_equal(zi_png_params_text(p, &t), ZI_OK);
    assert_non_null(strstr(t, want));
    free(t);
}

static void test_png_params_text(void **state)
{
    (void)state;
    zi_png_params p = {
        .prompt = "a cat",
        .negative_prompt = NULL,
        .steps = 8,
        .guidance = 0.0f,
        .seed = 42,
        .width = 1024,
        .height = 768,
        .model = "Z-Image-Turbo",
        .version = "0.1.0",
    };
    char *t = NULL;
    assert_int_equal(zi_png_params_text(&p, &t), ZI_OK);
    assert_string_equal(t, "a cat\nSteps: 8, Sampler: flow-euler, CFG scale: 0.0, Seed: 42, "
                           "Size: 1024x768, Model: Z-Image-Turbo, Version: 0.1.0");
    free(t);

    /* an empty negative prompt is "not used" */
    p.negative_prompt = "";
    assert_int_equal(zi_png_params_text(&p, &t), ZI_OK);
    assert_null(strstr(t, "Negative prompt"));
    free(t);

    p.negative_prompt = "blurry, low quality";
    p.guidance = 3.5f;
    p.steps = 20;
    p.seed = UINT64_MAX;
    assert_int_equal(zi_png_params_text(&p, &t), ZI_OK);
    assert_string_equal(t, "a cat\nNegative prompt: blurry, low quality\nSteps: 20, Sampler: "
                           "flow-euler, CFG scale: 3.5, Seed: 18446744073709551615, Size: "
                           "1024x768, Model: Z-Image-Turbo, Version: 0.1.0");
    free(t);

    p.negative_prompt = NULL;
    expect_cfg_text(&p, 4.0f, "CFG scale: 4.0, ");
    expect_cfg_text(&p, 0.1f, "CFG scale: 0.1, ");
    /* guidance values whose shortest round-trip form needs 8 and 9 significant digits,
     * and a whole number of 8 digits (not "1.23457e+07") */
    expect_cfg_text(&p, 3.14159274f, "CFG scale: 3.1415927, ");
    expect_cfg_text(&p, 10.0000105f, "CFG scale: 10.0000105, ");
    expect_cfg_text(&p, 12345678.0f, "CFG scale: 12345678.0, ");

    /* a model folder named with bytes that are not UTF-8 (Linux allows it): iTXt is UTF-8 */
    p.model = "m\xff\xc0\xafx\xc3\xa9";
    assert_int_equal(zi_png_params_text(&p, &t), ZI_OK);
    assert_non_null(strstr(t, "Model: m???x\xc3\xa9, Version"));
    free(t);
}

static void test_png_params_utf8_roundtrip(void **state)
{
    (void)state;
    zi_png_params p = {
        .prompt = "一幅为名为“造相「Z-IMAGE-TURBO」”的项目设计的创意海报。",
        .negative_prompt = "模糊，低质量",
        .steps = 9,
        .guidance = 1.5f,
        .seed = UINT64_MAX,
        .width = 96,
        .height = 128,
        .model = "tiny-zimage",
        .version = "0.1.0",
    };
    char *t = NULL;
    assert_int_equal(zi_png_params_text(&p, &t), ZI_OK);
    /* first line is the prompt, second the negative prompt, third the settings */
    const char *nl1 = strchr(t, '\n');
    assert_non_null(nl1);
    assert_int_equal((size_t)(nl1 - t), strlen(p.prompt));
    assert_memory_equal(t, p.prompt, strlen(p.prompt));
    assert_true(strncmp(nl1 + 1, "Negative prompt: 模糊，低质量\n",
                        strlen("Negative prompt: 模糊，低质量\n")) == 0);
    assert_non_null(strstr(t, "Seed: 18446744073709551615, Size: 96x128, Model: tiny-zimage"));

    uint8_t *rgb = make_image(96, 128);
    roundtrip(rgb, 96, 128, t);

    /* the file path too */
    char path[] = "/tmp/zi_test_png_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(zi_png_write(path, rgb, 96, 128, t), ZI_OK);
    uint8_t *back = NULL;
    char *text = NULL;
    int w = 0, h = 0;
    assert_int_equal(zi_png_read(path, &back, &w, &h, &text), ZI_OK);
    assert_int_equal(w, 96);
    assert_int_equal(h, 128);
    assert_memory_equal(back, rgb, (size_t)96 * 128 * 3);
    assert_string_equal(text, t);
    unlink(path);
    free(back);
    free(text);
    free(rgb);
    free(t);
}

static void test_png_errors(void **state)
{
    (void)state;
    uint8_t px[3] = {1, 2, 3}, *png = NULL, *rgb = NULL;
    size_t len = 0;
    int w, h;
    assert_int_equal(zi_png_encode(px, 0, 1, NULL, ZI_PNG_FAST, &png, &len), ZI_EINVAL);
    assert_null(png);
    assert_int_equal(zi_png_decode("not a png at all", 16, &rgb, &w, &h, NULL), ZI_EFORMAT);
    assert_null(rgb);
    assert_int_equal(zi_png_read("/nonexistent/dir/x.png", &rgb, &w, &h, NULL), ZI_EIO);
    assert_non_null(strstr(zi_errmsg(), "/nonexistent/dir/x.png"));
    assert_int_equal(zi_png_write("/nonexistent/dir/x.png", px, 1, 1, NULL), ZI_EIO);

    /* the widest image accepted is 65535 pixels; one more is refused */
    uint8_t *wide = make_image(65535, 1);
    roundtrip_with(wide, 65535, 1, NULL, ZI_PNG_FAST);
    free(wide);
    static uint8_t wide1[65536 * 3];
    assert_int_equal(zi_png_encode(wide1, 65536, 1, NULL, ZI_PNG_FAST, &png, &len), ZI_EINVAL);
    assert_null(png);
    assert_int_equal(zi_png_encode(wide1, 1, 65536, NULL, ZI_PNG_FAST, &png, &len), ZI_EINVAL);
    assert_null(png);

    /* parameters text: ZI_PNG_MAX_TEXT - 1 bytes is accepted (and read back), exactly
     * ZI_PNG_MAX_TEXT is refused */
    char *big = malloc(ZI_PNG_MAX_TEXT + 1);
    assert_non_null(big);
    memset(big, 'a', ZI_PNG_MAX_TEXT);
    big[ZI_PNG_MAX_TEXT] = '\0';
    assert_int_equal(zi_png_encode(px, 1, 1, big, ZI_PNG_FAST, &png, &len), ZI_EINVAL);
    assert_non_null(strstr(zi_errmsg(), "parameters text"));
    assert_null(png);
    big[ZI_PNG_MAX_TEXT - 1] = '\0';
    roundtrip_with(px, 1, 1, big, ZI_PNG_FAST);
    free(big);

    /* a truncated PNG is a format error, not a crash */
    assert_int_equal(zi_png_encode(px, 1, 1, "x", ZI_PNG_FAST, &png, &len), ZI_OK);
    assert_int_equal(zi_png_decode(png, len / 2, &rgb, &w, &h, NULL), ZI_EFORMAT);
    free(png);
}

/* The two settings really differ: on an image with long runs and repeats (what the
 * filtered strategy's longer matches catch and run-length coding does not), "small" is
 * smaller; both decode to the same pixels (roundtrip above). And the names. */
static void test_png_compression(void **state)
{
    (void)state;
    const int w = 256, h = 64;
    uint8_t *rgb = malloc((size_t)w * h * 3);
    assert_non_null(rgb);
    for (int y = 0; y < h; y++) /* a repeating 24-pixel motif, shifted per row */
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                rgb[((size_t)y * w + x) * 3 + c] = (uint8_t)(((x + 5 * y) % 24) * 7 + c * 50);
    uint8_t *fast = NULL, *small = NULL;
    size_t nfast = 0, nsmall = 0;
    assert_int_equal(zi_png_encode(rgb, w, h, NULL, ZI_PNG_FAST, &fast, &nfast), ZI_OK);
    assert_int_equal(zi_png_encode(rgb, w, h, NULL, ZI_PNG_SMALL, &small, &nsmall), ZI_OK);
    printf("  %dx%d motif: fast %zu bytes, small %zu bytes\n", w, h, nfast, nsmall);
    assert_true(nsmall < nfast);
    roundtrip(rgb, w, h, "motif");
    free(fast);
    free(small);
    free(rgb);

    zi_png_compression c = ZI_PNG_SMALL;
    assert_int_equal(zi_png_compression_parse("fast", &c), ZI_OK);
    assert_int_equal(c, ZI_PNG_FAST);
    assert_int_equal(zi_png_compression_parse("small", &c), ZI_OK);
    assert_int_equal(c, ZI_PNG_SMALL);
    assert_int_equal(zi_png_compression_parse("zlib9", &c), ZI_EINVAL);
    assert_non_null(strstr(zi_errmsg(), "zlib9"));
    assert_int_equal(zi_png_compression_parse(NULL, &c), ZI_EINVAL);
}

/* Every golden PNG (written by diffusers/PIL) decodes to its case's image_u8 tensor, and
 * our encoder gives back the same pixels in both settings. */
static void test_png_golden_decode(void **state)
{
    (void)state;
    cJSON *manifest = zi_test_manifest();
    const cJSON *cs;
    int n = 0;
    cJSON_ArrayForEach(cs, zi_test_manifest_cases(manifest))
    {
        uint8_t *rgb = NULL;
        int w = 0, h = 0;
        if (zi_png_read(zi_test_case_png(cs), &rgb, &w, &h, NULL) != ZI_OK)
            fail_msg("%s", zi_errmsg());
        zi_st *st = zi_test_case_open(cs);
        const zi_st_tensor *t = zi_st_find(st, "image_u8");
        assert_non_null(t);
        assert_int_equal(t->dtype, ZI_U8);
        assert_int_equal(t->ndim, 3);
        assert_int_equal(t->shape[0], h);
        assert_int_equal(t->shape[1], w);
        assert_int_equal(t->shape[2], 3);
        assert_int_equal(t->nbytes, (size_t)w * h * 3);
        assert_memory_equal(rgb, t->data, t->nbytes);
        roundtrip(t->data, w, h, NULL);
        zi_st_close(st);
        free(rgb);
        n++;
    }
    assert_true(n >= 1);
    cJSON_Delete(manifest);
}

/* The chunks of a PNG in order (types concatenated, "IHDRIDATIEND"), every CRC checked
 * with zlib's crc32; *zs / *zlen receive the IDAT data joined (the zlib stream). */
static void walk_chunks(const uint8_t *png, size_t len, char *types, size_t cap, uint8_t **zs,
                        size_t *zlen)
{
    size_t off = 8, nt = 0;
    *zs = malloc(len);
    *zlen = 0;
    assert_non_null(*zs);
    types[0] = '\0';
    while (off + 12 <= len) {
        const uint8_t *c = png + off;
        size_t n = (size_t)c[0] << 24 | (size_t)c[1] << 16 | (size_t)c[2] << 8 | c[3];
        assert_true(off + 12 + n <= len);
        uLong crc = crc32(crc32(0L, Z_NULL, 0), c + 4, (uInt)(n + 4));
        const uint8_t *e = c + 8 + n;
        assert_int_equal((uint32_t)crc,
                         (uint32_t)e[0] << 24 | (uint32_t)e[1] << 16 | (uint32_t)e[2] << 8 | e[3]);
        assert_true(nt + 5 < cap);
        memcpy(types + nt, c + 4, 4);
        types[nt += 4] = '\0';
        if (memcmp(c + 4, "IDAT", 4) == 0) {
            memcpy(*zs + *zlen, c + 8, n);
            *zlen += n;
        }
        off += 12 + n;
    }
    assert_int_equal(off, len);
}

/* The encoder cuts the rows into bands deflated on several threads: the file is the same
 * for every thread count; its IDATs (one per band) join into one zlib stream that zlib
 * itself inflates (Adler-32 checked) to h rows of a filter type 0..4 and 3w bytes; a
 * band's deflate starts from the window before it, so the file is as small as one stream
 * of the same filtered rows (the "small" setting on an image of repeats, where matches
 * reach back across band boundaries). */
/* Size of one zlib stream of `raw` at the settings of `c`. */
static size_t one_stream_size(const uint8_t *raw, size_t rawlen, zi_png_compression c)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit2(&z, c ? Z_DEFAULT_COMPRESSION : Z_BEST_SPEED, Z_DEFLATED, 15, 8,
                                  c ? Z_FILTERED : Z_RLE),
                     Z_OK);
    uLong bound = deflateBound(&z, (uLong)rawlen);
    uint8_t *out = malloc(bound);
    assert_non_null(out);
    z.next_in = (uint8_t *)raw;
    z.avail_in = (uInt)rawlen;
    z.next_out = out;
    z.avail_out = (uInt)bound;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    size_t n = bound - z.avail_out;
    deflateEnd(&z);
    free(out);
    return n;
}

static void check_threads(const uint8_t *rgb, int w, int h, zi_png_compression c)
{
    uint8_t *one = NULL;
    size_t n1 = 0;
    assert_int_equal(zi_png_encode_threads(rgb, w, h, "p", c, 1, &one, &n1), ZI_OK);
    static const int threads[] = {2, 3, 8, 0};
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
        uint8_t *png = NULL;
        size_t n = 0;
        assert_int_equal(zi_png_encode_threads(rgb, w, h, "p", c, threads[t], &png, &n), ZI_OK);
        assert_int_equal(n, n1);
        assert_memory_equal(png, one, n);
        free(png);
    }
    char types[4096];
    uint8_t *zs, *raw;
    size_t zlen;
    walk_chunks(one, n1, types, sizeof types, &zs, &zlen);
    assert_memory_equal(types, "IHDRiTXtIDAT", 12);
    assert_string_equal(types + strlen(types) - 8, "IDATIEND");
    int nidat = 0;
    for (const char *p = types; (p = strstr(p, "IDAT")); p += 4)
        nidat++;
    if ((size_t)w * 3 * h > (256u << 10))
        assert_true(nidat > 1); /* the image is cut into bands */
    uLongf rawlen = (uLongf)h * (1 + 3 * (uLongf)w), got = rawlen + 1;
    raw = malloc(rawlen + 1);
    assert_non_null(raw);
    assert_int_equal(uncompress(raw, &got, zs, (uLong)zlen), Z_OK);
    assert_int_equal(got, rawlen);
    for (int y = 0; y < h; y++)
        assert_true(raw[(size_t)y * (1 + 3 * (size_t)w)] <= 4);
    size_t single = one_stream_size(raw, rawlen, c);
    printf("  %dx%d %s: %zu bytes of zlib stream in %d IDAT (one stream: %zu)\n", w, h,
           c ? "small" : "fast", zlen, nidat, single);
    assert_true(zlen <= single + single / 100 + 64);
    free(raw);
    free(zs);
    free(one);
}

static void test_png_threads(void **state)
{
    (void)state;
    static const int sizes[][2] = {{64, 64}, {1024, 200}, {20000, 7}, {1, 65535}, {7, 3}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint8_t *rgb = make_image(sizes[i][0], sizes[i][1]);
        check_threads(rgb, sizes[i][0], sizes[i][1], ZI_PNG_FAST);
        check_threads(rgb, sizes[i][0], sizes[i][1], ZI_PNG_SMALL);
        free(rgb);
    }
    /* random rows repeating every 8 rows (24 KiB back, inside deflate's window): a band
     * that did not start from the window before it could not match its first rows */
    const int w = 1024, h = 200;
    uint8_t *rgb = malloc((size_t)w * h * 3);
    assert_non_null(rgb);
    uint32_t s = 7;
    for (size_t i = 0; i < (size_t)w * 3 * 8; i++) {
        s = s * 1664525u + 1013904223u;
        rgb[i] = (uint8_t)(s >> 24);
    }
    for (int y = 8; y < h; y++)
        memcpy(rgb + (size_t)y * w * 3, rgb + (size_t)(y - 8) * w * 3, (size_t)w * 3);
    check_threads(rgb, w, h, ZI_PNG_SMALL);
    free(rgb);
    uint8_t px[3] = {1, 2, 3}, *png = NULL;
    size_t len = 0;
    assert_int_equal(zi_png_encode_threads(px, 1, 1, NULL, ZI_PNG_FAST, 9, &png, &len), ZI_EINVAL);
    assert_non_null(strstr(zi_errmsg(), "threads"));
    assert_null(png);
    assert_true(zi_png_threads() >= 1 && zi_png_threads() <= 8);
}

/* Images where the Paeth filter is chosen and its predictor ties (gradients with a little
 * noise, odd widths) and pure noise, exactly back through libspng: the encoder's filters
 * must predict as the decoder does (PNG 1.2 section 9.4: a, then b, then c on ties). */
static void test_png_filters_roundtrip(void **state)
{
    (void)state;
    static const int sizes[][2] = {{1, 1}, {2, 3}, {5, 7}, {31, 17}, {127, 33}, {257, 9}};
    uint32_t s = 2024;
    int paeth_rows = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        const int w = sizes[i][0], h = sizes[i][1];
        uint8_t *grad = malloc((size_t)w * h * 3), *noise = malloc((size_t)w * h * 3);
        assert_non_null(grad);
        assert_non_null(noise);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++) {
                    size_t k = ((size_t)y * w + x) * 3 + c;
                    s = s * 1664525u + 1013904223u;
                    noise[k] = (uint8_t)(s >> 24);
                    int dir = c == 1 ? -1 : 1; /* one channel runs against the others */
                    grad[k] = (uint8_t)(3 * x + dir * (5 + 2 * c) * y + (int)((s >> 13) & 3));
                }
        roundtrip(grad, w, h, NULL);
        roundtrip(noise, w, h, "noise");
        /* count the gradient's rows filtered with Paeth (type 4) */
        uint8_t *png = NULL, *zs = NULL;
        size_t len = 0, zlen = 0;
        char types[4096];
        assert_int_equal(zi_png_encode(grad, w, h, NULL, ZI_PNG_FAST, &png, &len), ZI_OK);
        walk_chunks(png, len, types, sizeof types, &zs, &zlen);
        uLongf rawlen = (uLongf)h * (1 + 3 * (uLongf)w), got = rawlen;
        uint8_t *raw = malloc(rawlen);
        assert_non_null(raw);
        assert_int_equal(uncompress(raw, &got, zs, (uLong)zlen), Z_OK);
        for (int y = 0; y < h; y++)
            paeth_rows += raw[(size_t)y * (1 + 3 * (size_t)w)] == 4;
        free(raw);
        free(zs);
        free(png);
        free(grad);
        free(noise);
    }
    assert_true(paeth_rows > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_roundtrip_pixels),
        cmocka_unit_test(test_png_params_text),
        cmocka_unit_test(test_png_params_utf8_roundtrip),
        cmocka_unit_test(test_png_errors),
        cmocka_unit_test(test_png_golden_decode),
        cmocka_unit_test(test_png_compression),
        cmocka_unit_test(test_png_threads),
        cmocka_unit_test(test_png_filters_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
