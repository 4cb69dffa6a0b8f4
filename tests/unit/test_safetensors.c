/*
 * test_safetensors.c - safetensors reader/writer: round trip, every malformed-file case
 * (the error must name the file and, where there is one, the tensor), a sharded copy of
 * the tiny transformer made here (bit-identical to the single file), the optional
 * "model." prefix and folder selection.
 */
#include "safetensors.h"
#include "zi_err.h"
#include "zi_test.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ---- */

static char g_dir[256];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/zi_test_st_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

/* Removes `dir` and everything under it (the tests make at most two levels). */
static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            if (unlink(p) != 0)
                rm_tree(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

static int teardown_dir(void **state)
{
    (void)state;
    rm_tree(g_dir);
    return 0;
}

static const char *tmp_path(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    return p;
}

static void write_bytes(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* A safetensors file from a header text and `dlen` data bytes (value i & 0xff). The
 * stated header length may be overridden (hlen_override != 0) to fake damage. */
static size_t make_raw(uint8_t *out, size_t cap, const char *hdr, size_t dlen,
                       uint64_t hlen_override)
{
    size_t hl = strlen(hdr);
    uint64_t stated = hlen_override ? hlen_override : hl;
    assert_true(8 + hl + dlen <= cap);
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(stated >> (8 * i));
    memcpy(out + 8, hdr, hl);
    for (size_t i = 0; i < dlen; i++)
        out[8 + hl + i] = (uint8_t)i;
    return 8 + hl + dlen;
}

static void assert_msg_has(const char *needle)
{
    if (!strstr(zi_errmsg(), needle))
        fail_msg("error message \"%s\" does not contain \"%s\"", zi_errmsg(), needle);
}

/* Writes a crafted file, opens it both from disk and from memory, expects failure with a
 * message naming the file (the buffer label) and `tensor` when not NULL. */
static void expect_bad(const char *name, const uint8_t *buf, size_t n, const char *tensor)
{
    const char *path = tmp_path(name);
    write_bytes(path, buf, n);
    zi_st *st = NULL;
    zi_error_clear();
    int rc = zi_st_open(path, &st);
    assert_int_not_equal(rc, ZI_OK);
    assert_null(st);
    assert_msg_has(path);
    if (tensor)
        assert_msg_has(tensor);
    zi_error_clear();
    rc = zi_st_open_buffer(buf, n, name, &st);
    assert_int_not_equal(rc, ZI_OK);
    assert_null(st);
    assert_msg_has(name);
    if (tensor)
        assert_msg_has(tensor);
}

/* expect_bad() on a file of the header text `hdr` and `dlen` data bytes. */
static void expect_bad_header(const char *name, const char *hdr, size_t dlen, const char *tensor)
{
    uint8_t buf[4096];
    expect_bad(name, buf, make_raw(buf, sizeof buf, hdr, dlen, 0), tensor);
}

/* ---- round trip ---- */

static void test_roundtrip(void **state)
{
    (void)state;
    float f[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.5f, 1e-3f};
    uint16_t b[4];
    for (int i = 0; i < 4; i++)
        b[i] = zi_f32_to_bf16(f[i]);
    int32_t ids[3] = {151644, -7, 0};
    uint8_t img[12];
    for (int i = 0; i < 12; i++)
        img[i] = (uint8_t)(i * 21);
    int64_t s_f[2] = {2, 3}, s_b[1] = {4}, s_i[1] = {3}, s_u[3] = {2, 2, 3}, s_e[2] = {0, 5};
    zi_tensor t[6] = {
        zi_tensor_host(f, ZI_F32, 2, s_f),   zi_tensor_host(b, ZI_BF16, 1, s_b),
        zi_tensor_host(ids, ZI_I32, 1, s_i), zi_tensor_host(img, ZI_U8, 3, s_u),
        zi_tensor_host(f, ZI_F32, 0, NULL),  zi_tensor_host(NULL, ZI_F16, 2, s_e),
    };
    const char *names[6] = {"a.f32", "b.bf16", "input_ids", "image_u8", "scalar", "empty"};
    const char *path = tmp_path("rt.safetensors");
    assert_int_equal(zi_st_write(path, 6, names, t), ZI_OK);

    zi_st *st;
    assert_int_equal(zi_st_open(path, &st), ZI_OK);
    assert_int_equal(zi_st_count(st), 6);
    for (int i = 0; i < 6; i++) {
        const zi_st_tensor *x = zi_st_find(st, names[i]);
        assert_non_null(x);
        assert_string_equal(x->name, names[i]);
        assert_int_equal(x->dtype, t[i].dtype);
        assert_int_equal(x->ndim, t[i].ndim);
        for (int d = 0; d < t[i].ndim; d++)
            assert_int_equal(x->shape[d], t[i].shape[d]);
        assert_int_equal(x->nbytes, zi_tensor_nbytes(&t[i]));
        if (x->nbytes)
            assert_memory_equal(x->data, t[i].data, x->nbytes);
        assert_string_equal(x->file, path);
    }
    /* data is 8-byte aligned, as the writer pads the header */
    assert_int_equal(((uintptr_t)zi_st_find(st, "a.f32")->data) % 8, 0);

    const zi_st_tensor *x;
    assert_int_equal(zi_st_get(st, "a.f32", 2, s_f, &x), ZI_OK);
    float back[4];
    assert_int_equal(zi_st_get(st, "b.bf16", 1, s_b, &x), ZI_OK);
    assert_int_equal(zi_st_read_f32(x, back), ZI_OK);
    for (int i = 0; i < 4; i++)
        assert_true(back[i] == zi_bf16_to_f32(b[i]));
    /* zi_st_get wants a float dtype; zi_st_find serves the integer tensors */
    zi_error_clear();
    assert_int_not_equal(zi_st_get(st, "input_ids", 1, s_i, &x), ZI_OK);
    assert_msg_has("input_ids");
    assert_msg_has("I32");
    zi_st_close(st);

    /* writer refuses duplicate names and leaves no file behind */
    const char *dup[2] = {"x", "x"};
    zi_tensor two[2] = {zi_tensor_host(f, ZI_F32, 1, s_b), zi_tensor_host(f, ZI_F32, 1, s_b)};
    assert_int_not_equal(zi_st_write(tmp_path("dup.safetensors"), 2, dup, two), ZI_OK);
    assert_int_not_equal(access(tmp_path("dup.safetensors"), F_OK), 0);
}

/* ---- malformed files ---- */

static void test_bad_files(void **state)
{
    (void)state;
    uint8_t buf[4096];
    size_t n;

    expect_bad("short.safetensors", (const uint8_t *)"\x10\0\0", 3, NULL);
    assert_msg_has("truncated");
    expect_bad("zero.safetensors", (const uint8_t *)"", 0, NULL);

    n = make_raw(buf, sizeof buf,
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 100000);
    expect_bad("hlen.safetensors", buf, n, NULL);
    assert_msg_has("header length");

    /* a stated header length just past the file (1 byte, and 8: the whole file), inside
     * the file's length but not inside what follows the 8-byte length field; bytes after
     * the file read as header padding, so only the length check can refuse it */
    for (uint64_t over = 1; over <= 8; over += 7) {
        memset(buf, ' ', sizeof buf);
        size_t hl = strlen("{}");
        n = make_raw(buf, sizeof buf, "{}", 0, hl + over);
        expect_bad("hlen1.safetensors", buf, n, NULL);
        assert_msg_has("header length");
    }

    expect_bad_header("json.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],", 8, NULL);
    assert_msg_has("JSON");

    expect_bad_header("notobj.safetensors", "[1,2,3]", 0, NULL);

    expect_bad_header("range.safetensors",
                      "{\"w.range\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                      "w.range");

    /* an end offset one byte past the data area (8 bytes) */
    expect_bad_header("range1.safetensors",
                      "{\"w.range1\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[8,9]}}", 8,
                      "w.range1");
    assert_msg_has("outside the data area");

    expect_bad_header("rev.safetensors",
                      "{\"w.rev\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[6,2]}}", 8,
                      "w.rev");

    expect_bad_header("overlap.safetensors",
                      "{\"w.a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"w.b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                      12, "overlaps");
    assert_msg_has("w.a");
    assert_msg_has("w.b");

    expect_bad_header("size.safetensors",
                      "{\"w.size\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                      "w.size");
    assert_msg_has("needs 12");

    expect_bad_header("dtype.safetensors",
                      "{\"w.q\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                      "w.q");
    assert_msg_has("Q4_K");

    expect_bad_header("negshape.safetensors",
                      "{\"w.neg\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                      "w.neg");

    expect_bad_header("frac.safetensors",
                      "{\"w.frac\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0.5,2.5]}}", 8,
                      "w.frac");

    expect_bad_header("overflow.safetensors",
                      "{\"w.big\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                      "\"data_offsets\":[0,8]}}",
                      8, "w.big");

    /* 88 x 24985813 x 41948223127 = 5 * 2^64 + 8: a multiply that wraps would find the
     * 8 bytes the offsets hold */
    expect_bad_header("wrap.safetensors",
                      "{\"w.wrap\":{\"dtype\":\"U8\",\"shape\":[88,24985813,41948223127],"
                      "\"data_offsets\":[0,8]}}",
                      8, "w.wrap");
    assert_msg_has("shape too large");

    expect_bad_header("dims.safetensors",
                      "{\"w.dims\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                      "\"data_offsets\":[0,1]}}",
                      8, "w.dims");

    expect_bad_header("dupname.safetensors",
                      "{\"model.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                      2, "duplicate");

    expect_bad_header("trailing.safetensors",
                      "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}} junk", 2,
                      NULL);

    /* the real tiny transformer cut in half: tensors past the cut point outside the data */
    FILE *f = fopen(zi_test_model("transformer/diffusion_pytorch_model.safetensors"), "rb");
    assert_non_null(f);
    static uint8_t half[1 << 20];
    size_t got = fread(half, 1, sizeof half, f);
    fclose(f);
    assert_true(got == sizeof half);
    expect_bad("half.safetensors", half, sizeof half, "data_offsets");

    /* a missing file names the path */
    zi_st *st;
    zi_error_clear();
    assert_int_equal(zi_st_open(tmp_path("absent.safetensors"), &st), ZI_ENOTFOUND);
    assert_msg_has("absent.safetensors");
}

/* The accepted edges of the checks above: a tensor ending exactly at the end of the data
 * area, and an empty tensor whose offsets lie inside another's span (empty tensors occupy
 * no bytes, so they overlap nothing). */
static void test_edges_accepted(void **state)
{
    (void)state;
    uint8_t buf[4096];
    const char *hdr = "{\"w.a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"w.end\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]},"
                      "\"w.empty\":{\"dtype\":\"F32\",\"shape\":[4,0],\"data_offsets\":[4,4]}}";
    size_t n = make_raw(buf, sizeof buf, hdr, 12, 0);
    zi_st *st = NULL;
    if (zi_st_open_buffer(buf, n, "edges.safetensors", &st) != ZI_OK)
        fail_msg("%s", zi_errmsg());
    assert_int_equal(zi_st_count(st), 3);
    const zi_st_tensor *t = zi_st_find(st, "w.end");
    assert_non_null(t);
    assert_int_equal(t->nbytes, 4);
    assert_ptr_equal(t->data, buf + n - 4);
    t = zi_st_find(st, "w.empty");
    assert_non_null(t);
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(t->shape[0], 4);
    assert_int_equal(t->shape[1], 0);
    zi_st_close(st);
}

static void test_lookup_errors(void **state)
{
    (void)state;
    zi_st *st;
    const char *path = zi_test_model("transformer/diffusion_pytorch_model.safetensors");
    assert_int_equal(zi_st_open(path, &st), ZI_OK);
    const zi_st_tensor *t = zi_st_at(st, 0);
    assert_non_null(t);
    const zi_st_tensor *got;
    zi_error_clear();
    assert_int_equal(zi_st_get(st, "no.such.tensor", 1, t->shape, &got), ZI_ENOTFOUND);
    assert_null(got);
    assert_msg_has("no.such.tensor");
    assert_msg_has(path);

    int64_t wrong[ZI_MAX_DIMS];
    memcpy(wrong, t->shape, sizeof wrong);
    wrong[0] += 1;
    zi_error_clear();
    assert_int_not_equal(zi_st_get(st, t->name, t->ndim, wrong, &got), ZI_OK);
    assert_msg_has(t->name);
    assert_msg_has(path);
    assert_msg_has("shape");
    assert_int_not_equal(zi_st_get(st, t->name, t->ndim + 1, t->shape, &got), ZI_OK);
    assert_int_equal(zi_st_get(st, t->name, t->ndim, t->shape, &got), ZI_OK);
    assert_ptr_equal(got, t);
    assert_null(zi_st_at(st, zi_st_count(st)));
    zi_st_close(st);
}

/* ---- sharded checkpoint ---- */

static void test_sharded(void **state)
{
    (void)state;
    const char *src = zi_test_model("transformer/diffusion_pytorch_model.safetensors");
    zi_st *one;
    assert_int_equal(zi_st_open(src, &one), ZI_OK);
    size_t n = zi_st_count(one), half = n / 2;
    assert_true(n >= 2);
    zi_tensor *t = calloc(n, sizeof *t);
    const char **names = calloc(n, sizeof *names);
    assert_non_null(t);
    assert_non_null(names);
    for (size_t i = 0; i < n; i++) {
        const zi_st_tensor *x = zi_st_at(one, i);
        t[i] = zi_tensor_host((void *)x->data, x->dtype, x->ndim, x->shape);
        names[i] = x->name;
    }
    static const char *shard[2] = {"diffusion_pytorch_model-00001-of-00002.safetensors",
                                   "diffusion_pytorch_model-00002-of-00002.safetensors"};
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, shard[0]);
    assert_int_equal(zi_st_write(p, half, names, t), ZI_OK);
    snprintf(p, sizeof p, "%s/%s", g_dir, shard[1]);
    assert_int_equal(zi_st_write(p, n - half, names + half, t + half), ZI_OK);

    /* the index: weight_map name -> shard */
    size_t cap = 256 * n + 256, o = 0;
    char *idx = malloc(cap);
    assert_non_null(idx);
    o += (size_t)snprintf(idx + o, cap - o, "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
    for (size_t i = 0; i < n; i++) {
        assert_true(strlen(names[i]) < 150);
        o += (size_t)snprintf(idx + o, cap - o, "%s\"%s\":\"%s\"", i ? "," : "", names[i],
                              shard[i >= half]);
    }
    o += (size_t)snprintf(idx + o, cap - o, "}}");
    assert_true(o < cap);
    write_bytes(tmp_path("diffusion_pytorch_model.safetensors.index.json"), idx, o);

    zi_st *sh;
    assert_int_equal(zi_st_open_dir(g_dir, &sh), ZI_OK);
    assert_int_equal(zi_st_count(sh), n);
    for (size_t i = 0; i < n; i++) {
        const zi_st_tensor *a = zi_st_at(one, i), *b = zi_st_find(sh, a->name);
        assert_non_null(b);
        assert_int_equal(a->dtype, b->dtype);
        assert_int_equal(a->ndim, b->ndim);
        assert_memory_equal(a->shape, b->shape, sizeof a->shape);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_memory_equal(a->data, b->data, a->nbytes);
        assert_non_null(strstr(b->file, shard[i >= half]));
    }
    zi_st_close(sh);

    /* an index naming a tensor its shard lacks */
    write_bytes(tmp_path("bad1.safetensors.index.json"),
                "{\"weight_map\":{\"ghost.weight\":\"diffusion_pytorch_model-00001-of-00002."
                "safetensors\"}}",
                strlen("{\"weight_map\":{\"ghost.weight\":\"diffusion_pytorch_model-00001-of-"
                       "00002.safetensors\"}}"));
    zi_error_clear();
    assert_int_not_equal(zi_st_open(tmp_path("bad1.safetensors.index.json"), &sh), ZI_OK);
    assert_msg_has("ghost.weight");
    assert_msg_has("bad1.safetensors.index.json");
    /* a shard that does not exist */
    const char *j2 = "{\"weight_map\":{\"w\":\"missing-shard.safetensors\"}}";
    write_bytes(tmp_path("bad2.safetensors.index.json"), j2, strlen(j2));
    zi_error_clear();
    assert_int_not_equal(zi_st_open(tmp_path("bad2.safetensors.index.json"), &sh), ZI_OK);
    assert_msg_has("missing-shard.safetensors");
    /* a shard outside the folder */
    const char *j3 = "{\"weight_map\":{\"w\":\"../etc/passwd\"}}";
    write_bytes(tmp_path("bad3.safetensors.index.json"), j3, strlen(j3));
    zi_error_clear();
    assert_int_not_equal(zi_st_open(tmp_path("bad3.safetensors.index.json"), &sh), ZI_OK);
    assert_msg_has("bad3.safetensors.index.json");
    /* shard names with a '/' are refused by name even where they reach a valid
     * safetensors file: one outside the index's folder, one in a sub-folder */
    char mdir[300], sdir[320], xp[400];
    snprintf(mdir, sizeof mdir, "%s/m", g_dir);
    snprintf(sdir, sizeof sdir, "%s/sub", mdir);
    assert_int_equal(mkdir(mdir, 0700), 0);
    assert_int_equal(mkdir(sdir, 0700), 0);
    uint8_t one_b[1] = {5};
    int64_t s1[1] = {1};
    zi_tensor w1 = zi_tensor_host(one_b, ZI_U8, 1, s1);
    const char *wname = "w";
    assert_int_equal(zi_st_write(tmp_path("outside.safetensors"), 1, &wname, &w1), ZI_OK);
    snprintf(xp, sizeof xp, "%s/x.safetensors", sdir);
    assert_int_equal(zi_st_write(xp, 1, &wname, &w1), ZI_OK);
    static const char *const slashed[2] = {"../outside.safetensors", "sub/x.safetensors"};
    for (int k = 0; k < 2; k++) {
        char j[256], ip[400];
        int jl = snprintf(j, sizeof j, "{\"weight_map\":{\"w\":\"%s\"}}", slashed[k]);
        snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", mdir);
        write_bytes(ip, j, (size_t)jl);
        zi_error_clear();
        sh = NULL;
        assert_int_not_equal(zi_st_open(ip, &sh), ZI_OK);
        assert_null(sh);
        assert_msg_has("weight_map value must be a shard file name");
    }

    /* no weight_map */
    write_bytes(tmp_path("bad4.safetensors.index.json"), "{}", 2);
    zi_error_clear();
    assert_int_not_equal(zi_st_open(tmp_path("bad4.safetensors.index.json"), &sh), ZI_OK);
    assert_msg_has("weight_map");

    free(idx);
    free(names);
    free(t);
    zi_st_close(one);
}

/* ---- names and folders ---- */

static void test_model_prefix(void **state)
{
    (void)state;
    uint8_t a[4] = {1, 2, 3, 4};
    int64_t s1[1] = {4};
    zi_tensor t[2] = {zi_tensor_host(a, ZI_U8, 1, s1), zi_tensor_host(a, ZI_U8, 1, s1)};
    const char *names[2] = {"model.layers.0.w", "lm_head.weight"};
    const char *path = tmp_path("model.safetensors");
    assert_int_equal(zi_st_write(path, 2, names, t), ZI_OK);
    zi_st *st;
    assert_int_equal(zi_st_open_dir(g_dir, &st), ZI_OK);
    const zi_st_tensor *x = zi_st_find(st, "layers.0.w");
    assert_non_null(x);
    assert_string_equal(x->name, "model.layers.0.w");
    assert_ptr_equal(zi_st_find(st, "model.layers.0.w"), x);
    assert_non_null(zi_st_find(st, "lm_head.weight"));
    assert_non_null(zi_st_find(st, "model.lm_head.weight"));
    assert_null(zi_st_find(st, "layers.0"));
    assert_null(zi_st_find(st, "model."));
    zi_st_close(st);
}

static void test_open_dir(void **state)
{
    (void)state;
    zi_st *st;
    zi_error_clear();
    assert_int_equal(zi_st_open_dir(g_dir, &st), ZI_ENOTFOUND);
    assert_msg_has(g_dir);

    uint8_t a[2] = {7, 9};
    int64_t s1[1] = {2};
    zi_tensor t = zi_tensor_host(a, ZI_U8, 1, s1);
    const char *nm = "only";
    assert_int_equal(zi_st_write(tmp_path("weights.safetensors"), 1, &nm, &t), ZI_OK);
    assert_int_equal(zi_st_open_dir(g_dir, &st), ZI_OK);
    assert_non_null(zi_st_find(st, "only"));
    zi_st_close(st);

    /* two non-standard names: ambiguous */
    assert_int_equal(zi_st_write(tmp_path("other.safetensors"), 1, &nm, &t), ZI_OK);
    zi_error_clear();
    assert_int_not_equal(zi_st_open_dir(g_dir, &st), ZI_OK);
    assert_msg_has(g_dir);
    /* the standard name wins */
    assert_int_equal(zi_st_write(tmp_path("diffusion_pytorch_model.safetensors"), 1, &nm, &t),
                     ZI_OK);
    assert_int_equal(zi_st_open_dir(g_dir, &st), ZI_OK);
    assert_non_null(strstr(zi_st_find(st, "only")->file, "diffusion_pytorch_model.safetensors"));
    zi_st_close(st);

    /* every golden component folder opens */
    static const char *comps[] = {"text_encoder", "transformer", "vae"};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(zi_st_open_dir(zi_test_model(comps[i]), &st), ZI_OK);
        assert_true(zi_st_count(st) > 0);
        zi_st_close(st);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bad_files, setup_dir, teardown_dir),
        cmocka_unit_test(test_edges_accepted),
        cmocka_unit_test(test_lookup_errors),
        cmocka_unit_test_setup_teardown(test_sharded, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_model_prefix, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_open_dir, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
