/*
 * test_qwen3.c - the Qwen3 text encoder on the CPU backend against the golden vectors.
 *
 * For every case of vectors/manifest.json (the fp32 runs): input_ids -> forward ->
 * prompt_embeds (and, under CFG, negative_input_ids -> negative_prompt_embeds) within 1e-4
 * relative error; for the case file that has them (found by its tensors, not its name) every
 * te.hidden_states.i, i < n_layers (the last entry is after the final norm, which the
 * encoder never computes). Also: a sharded copy with "model." names gives
 * bit-identical output; missing, mis-shaped and unexpected tensors are load errors naming
 * the tensor. From the manifest's prompt text through the tokenizer, and through the
 * `zimage encode` command, the same figures hold.
 */
#include "backend.h"
#include "config.h"
#include "qwen3.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "zi_err.h"
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ZI_TOL 1e-4

typedef struct fixture {
    zi_backend *be;
    zi_te_config cfg;
    zi_st *st;
    zi_qwen3 *m;
    cJSON *manifest;
} fixture;

static char te_dir[4096];

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(te_dir, sizeof te_dir, "%s", zi_test_model("text_encoder"));
    char cfgp[4200];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", te_dir);
    if (zi_te_config_load(cfgp, &f->cfg) != ZI_OK)
        fail_msg("config: %s", zi_errmsg());
    f->be = zi_backend_cpu_new(0);
    assert_non_null(f->be);
    if (zi_st_open_dir(te_dir, &f->st) != ZI_OK)
        fail_msg("open: %s", zi_errmsg());
    if (zi_qwen3_load(&f->m, f->st, &f->cfg, f->be) != ZI_OK)
        fail_msg("load: %s", zi_errmsg());
    f->manifest = zi_test_manifest();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    cJSON_Delete(f->manifest);
    zi_qwen3_free(f->m);
    zi_st_close(f->st);
    zi_backend_destroy(f->be);
    free(f);
    return 0;
}

/* Reads an I32 tensor of a case file (malloc'ed; *n = numel). NULL when absent. */
static int32_t *read_ids(const zi_st *st, const char *name, int *n)
{
    const zi_st_tensor *t = zi_st_find(st, name);
    if (!t)
        return NULL;
    assert_int_equal(t->dtype, ZI_I32);
    assert_int_equal(t->ndim, 1);
    *n = (int)t->shape[0];
    int32_t *ids = malloc(t->nbytes);
    assert_non_null(ids);
    memcpy(ids, t->data, t->nbytes);
    return ids;
}

static float *read_f32(const zi_st *st, const char *name, size_t want)
{
    size_t n;
    float *p = zi_test_st_f32(st, name, &n);
    assert_int_equal(n, want);
    return p;
}

static float *download(zi_backend *be, const zi_tensor *t)
{
    size_t n = (size_t)zi_tensor_numel(t);
    float *p = malloc(n * sizeof(float));
    assert_non_null(p);
    assert_int_equal(be->download(be, p, t, n), ZI_OK);
    return p;
}

/* Runs the encoder on `ids_name` of the case and compares with `ref_name`. */
static double check_embeds(fixture *f, const zi_st *vc, const char *ids_name, const char *ref_name,
                           const char *label)
{
    int L = 0;
    int32_t *ids = read_ids(vc, ids_name, &L);
    assert_non_null(ids);
    zi_tensor out;
    if (zi_qwen3_forward(f->m, ids, L, &out, NULL) != ZI_OK)
        fail_msg("%s: forward: %s", label, zi_errmsg());
    assert_int_equal(out.ndim, 2);
    assert_int_equal(out.shape[0], L);
    assert_int_equal(out.shape[1], f->cfg.hidden);
    size_t n = (size_t)L * f->cfg.hidden;
    float *got = download(f->be, &out);
    float *ref = read_f32(vc, ref_name, n);
    double e = zi_rel_err(got, ref, n);
    printf("  %s %s: L=%d rel err %.3g\n", label, ref_name, L, e);
    if (!(e <= ZI_TOL))
        fail_msg("%s %s: rel err %g > %g", label, ref_name, e, ZI_TOL);
    free(got);
    free(ref);
    free(ids);
    f->be->free(f->be, &out);
    return e;
}

/* The fp32 case files of the manifest (the .bf16cuda run is not listed: it is not a
 * float32 reference). Under CFG (guidance > 0) the negative prompt's ids and embeddings
 * must be there and are checked too. */
static void test_cases(void **state)
{
    fixture *f = *state;
    int ncases = 0;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, zi_test_manifest_cases(f->manifest))
    {
        const char *file = zi_test_case_str(cs, "file");
        zi_st *vc = zi_test_case_open(cs);
        check_embeds(f, vc, "input_ids", "prompt_embeds", file);
        int has_neg = zi_st_find(vc, "negative_input_ids") != NULL;
        if (zi_test_case_branches(cs) == 2 && !has_neg)
            fail_msg("%s: guidance > 0 but no negative_input_ids", file);
        if (has_neg)
            check_embeds(f, vc, "negative_input_ids", "negative_prompt_embeds", file);
        ncases++;
        zi_st_close(vc);
    }
    assert_true(ncases >= 1);
}

static void test_hidden_states(void **state)
{
    fixture *f = *state;
    const cJSON *cs = zi_test_case_with(f->manifest, "te.hidden_states.0");
    const char *cname = zi_test_case_str(cs, "name");
    zi_st *vc = zi_test_case_open(cs);
    int L = 0, n = f->cfg.n_layers;
    int32_t *ids = read_ids(vc, "input_ids", &L);
    assert_non_null(ids);
    zi_tensor out, *hs = calloc((size_t)n, sizeof *hs);
    assert_non_null(hs);
    if (zi_qwen3_forward(f->m, ids, L, &out, hs) != ZI_OK)
        fail_msg("forward: %s", zi_errmsg());
    size_t cnt = (size_t)L * f->cfg.hidden;
    float *o = download(f->be, &out);
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "te.hidden_states.%d", i);
        float *got = download(f->be, &hs[i]);
        float *ref = read_f32(vc, name, cnt);
        double e = zi_rel_err(got, ref, cnt);
        printf("  %s %s rel err %.3g\n", cname, name, e);
        if (!(e <= ZI_TOL))
            fail_msg("%s: rel err %g > %g", name, e, ZI_TOL);
        if (i == n - 1) /* the last computed state is the output */
            assert_memory_equal(got, o, cnt * sizeof(float));
        if (i == 0) /* embeddings are an exact row copy of the bf16 table */
            assert_true(zi_max_abs_diff(got, ref, cnt) == 0.0);
        free(got);
        free(ref);
        f->be->free(f->be, &hs[i]);
    }
    /* the golden file's extra entry (after the final norm) exists but is not ours */
    char last[64];
    snprintf(last, sizeof last, "te.hidden_states.%d", n);
    assert_non_null(zi_st_find(vc, last));
    free(o);
    f->be->free(f->be, &out);
    free(hs);
    free(ids);
    zi_st_close(vc);
}

/* ---- re-written checkpoints ---- */

static char tmp_dir[256];

static void make_tmp(void)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/zi_qwen3_XXXXXX");
    assert_non_null(mkdtemp(tmp_dir));
}

static void rm_tmp(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    assert_int_equal(zi_test_run(cmd, NULL, 0), 0);
}

/* Writes the tensors of `src` for which keep(i) into `path` as host tensors, renamed with
 * `prefix`; `edit` may change one tensor's shape (a mis-shaped copy). */
typedef struct rewrite {
    const char *prefix;
    const char *drop;    /* name to leave out */
    const char *reshape; /* name whose first dim is halved */
    const char *add;     /* extra tensor name (a copy of norm weights) */
    int shard, nshards;  /* write only tensors i with i % nshards == shard */
} rewrite;

static void write_copy(const zi_st *src, const char *path, const rewrite *rw)
{
    size_t n = zi_st_count(src);
    const char **names = calloc(n + 1, sizeof *names);
    char **owned = calloc(n + 1, sizeof *owned);
    zi_tensor *ts = calloc(n + 1, sizeof *ts);
    assert_true(names && owned && ts);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const zi_st_tensor *t = zi_st_at(src, i);
        if (rw->nshards && (int)(i % (size_t)rw->nshards) != rw->shard)
            continue;
        if (rw->drop && strcmp(t->name, rw->drop) == 0)
            continue;
        int64_t shape[ZI_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (rw->reshape && strcmp(t->name, rw->reshape) == 0)
            shape[0] /= 2;
        ts[k] = zi_tensor_host((void *)t->data, t->dtype, t->ndim, shape);
        size_t len = strlen(t->name) + strlen(rw->prefix) + 1;
        owned[k] = malloc(len);
        assert_non_null(owned[k]);
        snprintf(owned[k], len, "%s%s", rw->prefix, t->name);
        names[k] = owned[k];
        k++;
    }
    if (rw->add) {
        const zi_st_tensor *t = zi_st_find(src, "layers.0.input_layernorm.weight");
        assert_non_null(t);
        ts[k] = zi_tensor_host((void *)t->data, t->dtype, t->ndim, t->shape);
        names[k++] = rw->add;
    }
    if (zi_st_write(path, k, names, ts) != ZI_OK)
        fail_msg("write %s: %s", path, zi_errmsg());
    for (size_t i = 0; i < n; i++)
        free(owned[i]);
    free(owned);
    free((void *)names);
    free(ts);
}

/* Loads the checkpoint in tmp_dir; returns the status (the model is freed). */
static int load_tmp(fixture *f)
{
    zi_st *st;
    int rc = zi_st_open_dir(tmp_dir, &st);
    if (rc != ZI_OK)
        fail_msg("open %s: %s", tmp_dir, zi_errmsg());
    zi_qwen3 *m = NULL;
    rc = zi_qwen3_load(&m, st, &f->cfg, f->be);
    zi_qwen3_free(m);
    zi_st_close(st);
    return rc;
}

static void test_sharded(void **state)
{
    fixture *f = *state;
    make_tmp();
    char path[512];
    for (int s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/model-%05d-of-00002.safetensors", tmp_dir, s + 1);
        rewrite rw = {.prefix = "model.", .shard = s, .nshards = 2};
        write_copy(f->st, path, &rw);
    }
    /* the index: every tensor with its shard */
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp_dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    for (size_t i = 0; i < zi_st_count(f->st); i++)
        fprintf(fp, "%s\"model.%s\": \"model-%05d-of-00002.safetensors\"", i ? ", " : "",
                zi_st_at(f->st, i)->name, (int)(i % 2) + 1);
    fprintf(fp, "}}\n");
    assert_int_equal(fclose(fp), 0);

    zi_st *st2;
    if (zi_st_open_dir(tmp_dir, &st2) != ZI_OK)
        fail_msg("open sharded: %s", zi_errmsg());
    zi_qwen3 *m2;
    if (zi_qwen3_load(&m2, st2, &f->cfg, f->be) != ZI_OK)
        fail_msg("load sharded: %s", zi_errmsg());
    zi_st_close(st2); /* weights were uploaded: the mapping is no longer needed */

    zi_st *vc = zi_test_case_open(cJSON_GetArrayItem(zi_test_manifest_cases(f->manifest), 0));
    int L = 0;
    int32_t *ids = read_ids(vc, "input_ids", &L);
    assert_non_null(ids);
    zi_tensor a, b;
    assert_int_equal(zi_qwen3_forward(f->m, ids, L, &a, NULL), ZI_OK);
    assert_int_equal(zi_qwen3_forward(m2, ids, L, &b, NULL), ZI_OK);
    float *pa = download(f->be, &a), *pb = download(f->be, &b);
    assert_memory_equal(pa, pb, (size_t)L * f->cfg.hidden * sizeof(float));
    free(pa);
    free(pb);
    f->be->free(f->be, &a);
    f->be->free(f->be, &b);
    free(ids);
    zi_st_close(vc);
    zi_qwen3_free(m2);
    rm_tmp();
}

static void expect_load_error(fixture *f, const rewrite *rw, const char *must_name)
{
    make_tmp();
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp_dir);
    write_copy(f->st, path, rw);
    int rc = load_tmp(f);
    assert_int_not_equal(rc, ZI_OK);
    printf("  expected load error: %s\n", zi_errmsg());
    if (!strstr(zi_errmsg(), must_name))
        fail_msg("error '%s' does not name %s", zi_errmsg(), must_name);
    assert_int_equal(f->be->err, ZI_OK); /* a load error is not a backend error */
    rm_tmp();
}

static void test_load_errors(void **state)
{
    fixture *f = *state;
    rewrite missing = {.prefix = "", .drop = "layers.1.mlp.up_proj.weight"};
    expect_load_error(f, &missing, "layers.1.mlp.up_proj.weight");
    rewrite missing_emb = {.prefix = "model.", .drop = "embed_tokens.weight"};
    expect_load_error(f, &missing_emb, "embed_tokens.weight");
    rewrite shaped = {.prefix = "", .reshape = "layers.0.self_attn.k_norm.weight"};
    expect_load_error(f, &shaped, "layers.0.self_attn.k_norm.weight");
    /* the last layer is never run, but a wrong shape there still means a wrong config */
    char last[96];
    snprintf(last, sizeof last, "layers.%d.mlp.down_proj.weight", f->cfg.n_layers - 1);
    rewrite shaped_last = {.prefix = "", .reshape = last};
    expect_load_error(f, &shaped_last, last);
    char extra[96];
    snprintf(extra, sizeof extra, "layers.%d.input_layernorm.weight", f->cfg.n_layers);
    rewrite unexpected = {.prefix = "", .add = extra};
    expect_load_error(f, &unexpected, extra);

    /* tolerated: lm_head, no final norm, no last layer */
    rewrite lm = {.prefix = "model.", .add = "lm_head.weight"};
    make_tmp();
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp_dir);
    write_copy(f->st, path, &lm);
    if (load_tmp(f) != ZI_OK)
        fail_msg("lm_head copy: %s", zi_errmsg());
    rm_tmp();
    rewrite nonorm = {.prefix = "", .drop = "norm.weight"};
    make_tmp();
    snprintf(path, sizeof path, "%s/model.safetensors", tmp_dir);
    write_copy(f->st, path, &nonorm);
    if (load_tmp(f) != ZI_OK)
        fail_msg("copy without norm.weight: %s", zi_errmsg());
    rm_tmp();
}

static void test_bad_input(void **state)
{
    fixture *f = *state;
    zi_tensor out;
    int32_t ids[2] = {1, f->cfg.vocab};
    assert_int_not_equal(zi_qwen3_forward(f->m, ids, 2, &out, NULL), ZI_OK);
    assert_null(out.data);
    assert_int_not_equal(zi_qwen3_forward(f->m, ids, 0, &out, NULL), ZI_OK);
    assert_int_equal(f->be->err, ZI_OK);
}

static void test_random_weights(void **state)
{
    fixture *f = *state;
    zi_qwen3 *r1, *r2;
    assert_int_equal(zi_qwen3_load_random(&r1, &f->cfg, f->be, 7), ZI_OK);
    assert_int_equal(zi_qwen3_load_random(&r2, &f->cfg, f->be, 7), ZI_OK);
    int32_t ids[5] = {151644, 872, 198, 64, 2518};
    zi_tensor a, b;
    assert_int_equal(zi_qwen3_forward(r1, ids, 5, &a, NULL), ZI_OK);
    assert_int_equal(zi_qwen3_forward(r2, ids, 5, &b, NULL), ZI_OK);
    float *pa = download(f->be, &a), *pb = download(f->be, &b);
    size_t n = 5 * (size_t)f->cfg.hidden;
    assert_memory_equal(pa, pb, n * sizeof(float)); /* deterministic in the seed */
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(isfinite(pa[i]));
        mx = fabs(pa[i]) > mx ? fabs(pa[i]) : mx;
    }
    assert_true(mx > 0.01 && mx < 10); /* ~N(0, 0.02) embeddings, a few small layers */
    free(pa);
    free(pb);
    f->be->free(f->be, &a);
    f->be->free(f->be, &b);
    zi_qwen3_free(r1);
    zi_qwen3_free(r2);
}

/* ---- from the prompt text ---- */

/* Tokenizes `text`, checks the ids equal the case's `ids_name`, runs the encoder and
 * compares with `ref_name`. */
static void check_text(fixture *f, const zi_tokenizer *tok, const zi_st *vc, const char *text,
                       const char *ids_name, const char *ref_name)
{
    int32_t *ids;
    size_t n;
    if (zi_tokenizer_encode_prompt(tok, text, ZI_TOKENIZER_MAX_LEN, &ids, &n) != ZI_OK)
        fail_msg("tokenize: %s", zi_errmsg());
    int L = 0;
    int32_t *want = read_ids(vc, ids_name, &L);
    assert_non_null(want);
    assert_int_equal(n, L);
    assert_memory_equal(ids, want, n * sizeof *ids);
    zi_tensor out;
    if (zi_qwen3_forward(f->m, ids, L, &out, NULL) != ZI_OK)
        fail_msg("forward: %s", zi_errmsg());
    size_t cnt = (size_t)L * f->cfg.hidden;
    float *got = download(f->be, &out);
    float *ref = read_f32(vc, ref_name, cnt);
    double e = zi_rel_err(got, ref, cnt);
    printf("  text \"%.24s\" -> %s: L=%d rel err %.3g\n", text, ref_name, L, e);
    if (!(e <= ZI_TOL))
        fail_msg("%s: rel err %g > %g", ref_name, e, ZI_TOL);
    free(got);
    free(ref);
    free(want);
    free(ids);
    f->be->free(f->be, &out);
}

static void test_from_text(void **state)
{
    fixture *f = *state;
    zi_tokenizer *tok;
    if (zi_tokenizer_load(zi_test_model("tokenizer"), &tok) != ZI_OK)
        fail_msg("tokenizer: %s", zi_errmsg());
    const cJSON *c;
    int ncases = 0;
    cJSON_ArrayForEach(c, zi_test_manifest_cases(f->manifest))
    {
        zi_st *vc = zi_test_case_open(c);
        check_text(f, tok, vc, zi_test_case_str(c, "prompt"), "input_ids", "prompt_embeds");
        /* under CFG the negative prompt (the pipeline's default: empty) */
        const cJSON *neg = cJSON_GetObjectItemCaseSensitive(c, "negative");
        if (zi_test_case_branches(c) == 2)
            check_text(f, tok, vc, cJSON_IsString(neg) ? neg->valuestring : "",
                       "negative_input_ids", "negative_prompt_embeds");
        zi_st_close(vc);
        ncases++;
    }
    assert_true(ncases >= 1);
    zi_tokenizer_free(tok);
}

/* ---- the CLI ---- */

static const char *binary(void)
{
    const char *b = getenv("ZI_BINARY");
    return b && *b ? b : ZI_BINARY;
}

/* Appends `s` single-quoted for sh to dst (cap bytes). */
static void sh_quote(char *dst, size_t cap, const char *s)
{
    size_t o = strlen(dst);
    assert_true(o + 1 < cap);
    dst[o++] = '\'';
    for (; *s; s++) {
        const char *piece = *s == '\'' ? "'\\''" : NULL;
        size_t len = piece ? strlen(piece) : 1;
        assert_true(o + len + 2 < cap);
        if (piece)
            memcpy(dst + o, piece, len);
        else
            dst[o] = *s;
        o += len;
    }
    dst[o++] = '\'';
    dst[o] = '\0';
}

static void test_cli_encode(void **state)
{
    fixture *f = *state;
    make_tmp();
    char model[4096];
    snprintf(model, sizeof model, "%s", zi_test_model(""));
    const cJSON *c;
    int ncases = 0;
    cJSON_ArrayForEach(c, zi_test_manifest_cases(f->manifest))
    {
        if (ncases == 2) /* two prompts (one Chinese in the public set) are enough */
            break;
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(c, "prompt");
        assert_true(cJSON_IsString(prompt));
        char outp[512], cmd[16384] = "";
        snprintf(outp, sizeof outp, "%s/embeds%d.safetensors", tmp_dir, ncases);
        sh_quote(cmd, sizeof cmd, binary());
        strcat(cmd, " encode --backend cpu --model ");
        sh_quote(cmd, sizeof cmd, model);
        strcat(cmd, " --prompt ");
        sh_quote(cmd, sizeof cmd, prompt->valuestring);
        strcat(cmd, " --output ");
        sh_quote(cmd, sizeof cmd, outp);
        assert_int_equal(zi_test_run(cmd, NULL, 0), 0);

        zi_st *got_st, *vc = zi_test_case_open(c);
        if (zi_st_open(outp, &got_st) != ZI_OK)
            fail_msg("%s", zi_errmsg());
        const zi_st_tensor *g = zi_st_find(got_st, "prompt_embeds");
        assert_non_null(g);
        assert_int_equal(g->dtype, ZI_F32);
        assert_int_equal(g->ndim, 2);
        assert_int_equal(g->shape[1], f->cfg.hidden);
        size_t cnt = (size_t)(g->shape[0] * g->shape[1]);
        float *got = malloc(cnt * sizeof *got);
        assert_non_null(got);
        assert_int_equal(zi_st_read_f32(g, got), ZI_OK);
        float *ref = read_f32(vc, "prompt_embeds", cnt);
        double e = zi_rel_err(got, ref, cnt);
        printf("  zimage encode \"%.24s\": L=%lld rel err %.3g\n", prompt->valuestring,
               (long long)g->shape[0], e);
        if (!(e <= ZI_TOL))
            fail_msg("cli: rel err %g > %g", e, ZI_TOL);
        free(got);
        free(ref);
        zi_st_close(got_st);
        zi_st_close(vc);
        ncases++;
    }
    assert_true(ncases >= 1);

    /* usage */
    char cmd[8192] = "", out[4096];
    sh_quote(cmd, sizeof cmd, binary());
    strcat(cmd, " encode --help");
    assert_int_equal(zi_test_run(cmd, out, sizeof out), 0);
    assert_non_null(strstr(out, "--prompt"));
    cmd[0] = '\0';
    sh_quote(cmd, sizeof cmd, binary());
    strcat(cmd, " encode --model x --output y 2>/dev/null"); /* no --prompt */
    assert_int_equal(zi_test_run(cmd, NULL, 0), 2);
    cmd[0] = '\0';
    sh_quote(cmd, sizeof cmd, binary());
    strcat(cmd, " encode --model /nonexistent/zi --prompt a --output y 2>&1");
    assert_int_equal(zi_test_run(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "zimage: error:"));
    rm_tmp();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),     cmocka_unit_test(test_hidden_states),
        cmocka_unit_test(test_sharded),   cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_bad_input), cmocka_unit_test(test_random_weights),
        cmocka_unit_test(test_from_text), cmocka_unit_test(test_cli_encode),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
