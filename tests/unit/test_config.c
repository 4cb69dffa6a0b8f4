/*
 * test_config.c - component configs: the tiny checkpoint's values (compared with the JSON
 * files themselves, so a different fixture still tests the parser), derived sizes, a
 * transformers-4 text encoder config, errors naming file and key, and the built-in
 * Z-Image-Turbo numbers of spec §1.3.
 */
#include "config.h"
#include "json_util.h"
#include "zi_err.h"
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static cJSON *load_json(const char *rel)
{
    cJSON *j = NULL;
    assert_int_equal(zi_json_load_file(zi_test_model(rel), 1 << 20, &j), ZI_OK);
    return j;
}

static int jint(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_true(cJSON_IsNumber(v));
    return v->valueint;
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static void assert_msg_has(const char *needle)
{
    if (!strstr(zi_errmsg(), needle))
        fail_msg("error message \"%s\" does not contain \"%s\"", zi_errmsg(), needle);
}

static void test_tiny_checkpoint(void **state)
{
    (void)state;
    zi_model_config c;
    assert_int_equal(zi_config_load(zi_test_model(""), &c), ZI_OK);

    cJSON *te = load_json("text_encoder/config.json");
    assert_int_equal(c.te.hidden, jint(te, "hidden_size"));
    assert_int_equal(c.te.n_layers, jint(te, "num_hidden_layers"));
    assert_int_equal(c.te.n_heads, jint(te, "num_attention_heads"));
    assert_int_equal(c.te.n_kv_heads, jint(te, "num_key_value_heads"));
    assert_int_equal(c.te.head_dim, jint(te, "head_dim"));
    assert_int_equal(c.te.intermediate, jint(te, "intermediate_size"));
    assert_int_equal(c.te.vocab, jint(te, "vocab_size"));
    assert_int_equal(c.te.max_position, jint(te, "max_position_embeddings"));
    assert_true(c.te.rms_eps == (float)jnum(te, "rms_norm_eps"));
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(te, "rope_parameters");
    assert_true(c.te.rope_theta == jnum(rp, "rope_theta"));
    cJSON_Delete(te);

    cJSON *dit = load_json("transformer/config.json");
    assert_int_equal(c.dit.dim, jint(dit, "dim"));
    assert_int_equal(c.dit.n_layers, jint(dit, "n_layers"));
    assert_int_equal(c.dit.n_refiner_layers, jint(dit, "n_refiner_layers"));
    assert_int_equal(c.dit.n_heads, jint(dit, "n_heads"));
    assert_int_equal(c.dit.n_kv_heads, jint(dit, "n_kv_heads"));
    assert_int_equal(c.dit.cap_feat_dim, jint(dit, "cap_feat_dim"));
    assert_int_equal(c.dit.in_channels, jint(dit, "in_channels"));
    assert_true(c.dit.rope_theta == jnum(dit, "rope_theta"));
    assert_true(c.dit.t_scale == (float)jnum(dit, "t_scale"));
    assert_true(c.dit.norm_eps == (float)jnum(dit, "norm_eps"));
    assert_int_equal(c.dit.patch,
                     cJSON_GetArrayItem(cJSON_GetObjectItem(dit, "all_patch_size"), 0)->valueint);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c.dit.axes_dims[i],
                         cJSON_GetArrayItem(cJSON_GetObjectItem(dit, "axes_dims"), i)->valueint);
        assert_int_equal(c.dit.axes_lens[i],
                         cJSON_GetArrayItem(cJSON_GetObjectItem(dit, "axes_lens"), i)->valueint);
    }
    /* derived sizes, as diffusers computes them */
    assert_int_equal(c.dit.head_dim, c.dit.dim / c.dit.n_heads);
    assert_int_equal(c.dit.ffn_hidden, (int)((double)c.dit.dim / 3.0 * 8.0));
    assert_int_equal(c.dit.adaln_dim, c.dit.dim < 256 ? c.dit.dim : 256);
    cJSON_Delete(dit);

    cJSON *vae = load_json("vae/config.json");
    const cJSON *boc = cJSON_GetObjectItem(vae, "block_out_channels");
    assert_int_equal(c.vae.n_blocks, cJSON_GetArraySize(boc));
    for (int i = 0; i < c.vae.n_blocks; i++)
        assert_int_equal(c.vae.block_out[i], cJSON_GetArrayItem(boc, i)->valueint);
    assert_int_equal(c.vae.layers_per_block, jint(vae, "layers_per_block"));
    assert_int_equal(c.vae.norm_groups, jint(vae, "norm_num_groups"));
    assert_int_equal(c.vae.latent_channels, jint(vae, "latent_channels"));
    assert_int_equal(c.vae.out_channels, jint(vae, "out_channels"));
    assert_true(c.vae.scaling_factor == (float)jnum(vae, "scaling_factor"));
    assert_true(c.vae.shift_factor == (float)jnum(vae, "shift_factor"));
    assert_int_equal(c.vae.mid_attention, 1);
    cJSON_Delete(vae);

    cJSON *sc = load_json("scheduler/scheduler_config.json");
    assert_int_equal(c.sched.num_train_timesteps, jint(sc, "num_train_timesteps"));
    assert_true(c.sched.shift == (float)jnum(sc, "shift"));
    assert_int_equal(c.sched.use_dynamic_shifting, 0);
    cJSON_Delete(sc);
}

/* transformers 4 writes rope_theta at the top level and names Qwen3ForCausalLM */
static void test_te_transformers4(void **state)
{
    (void)state;
    const char *j = "{\"architectures\":[\"Qwen3ForCausalLM\"],\"model_type\":\"qwen3\","
                    "\"hidden_size\":2560,\"num_hidden_layers\":36,\"num_attention_heads\":32,"
                    "\"num_key_value_heads\":8,\"intermediate_size\":9728,\"vocab_size\":151936,"
                    "\"rms_norm_eps\":1e-06,\"rope_theta\":1000000,\"rope_scaling\":null,"
                    "\"max_position_embeddings\":40960,\"torch_dtype\":\"bfloat16\"}";
    char path[] = "/tmp/zi_test_cfg_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, j, strlen(j)), (ssize_t)strlen(j));
    close(fd);
    zi_te_config c;
    int rc = zi_te_config_load(path, &c);
    unlink(path);
    assert_int_equal(rc, ZI_OK);
    assert_int_equal(c.hidden, 2560);
    assert_int_equal(c.n_layers, 36);
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.head_dim, 2560 / 32); /* absent: hidden / heads */
    assert_true(c.rope_theta == 1e6);
    assert_true(c.rms_eps == 1e-6f);

    /* an explicit head_dim wins; a missing num_key_value_heads means MHA */
    const char *j2 = "{\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":2,"
                     "\"head_dim\":48,\"intermediate_size\":8,\"vocab_size\":10,"
                     "\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,"
                     "\"max_position_embeddings\":128}";
    assert_int_equal(zi_te_config_parse(j2, strlen(j2), "j2", &c), ZI_OK);
    assert_int_equal(c.head_dim, 48);
    assert_int_equal(c.n_kv_heads, 2);
    assert_true(c.rope_theta == 1e4);
}

typedef int (*parse_fn)(const char *, size_t, const char *, void *);

static void expect_err(int rc, const char *label, const char *key)
{
    assert_int_not_equal(rc, ZI_OK);
    assert_msg_has(label);
    assert_msg_has(key);
}

static void test_errors_name_file_and_key(void **state)
{
    (void)state;
    zi_te_config te;
    zi_dit_config dit;
    zi_vae_config vae;
    zi_sched_config sc;
    const char *te_ok = "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"vocab_size\":10,"
                        "\"intermediate_size\":8,\"rms_norm_eps\":1e-6,"
                        "\"max_position_embeddings\":64";
    char j[1024];

    snprintf(j, sizeof j, "{%s,\"rope_theta\":1e6}", te_ok); /* no hidden_size */
    expect_err(zi_te_config_parse(j, strlen(j), "te_missing.json", &te), "te_missing.json",
               "hidden_size");
    snprintf(j, sizeof j, "{%s,\"hidden_size\":\"32\",\"rope_theta\":1e6}", te_ok);
    expect_err(zi_te_config_parse(j, strlen(j), "te_type.json", &te), "te_type.json",
               "hidden_size");
    snprintf(j, sizeof j, "{%s,\"hidden_size\":32.5,\"rope_theta\":1e6}", te_ok);
    expect_err(zi_te_config_parse(j, strlen(j), "te_frac.json", &te), "te_frac.json",
               "hidden_size");
    snprintf(j, sizeof j, "{%s,\"hidden_size\":32}", te_ok);
    expect_err(zi_te_config_parse(j, strlen(j), "te_rope.json", &te), "te_rope.json", "rope_theta");
    snprintf(j, sizeof j, "{%s,\"hidden_size\":32,\"rope_parameters\":{\"rope_type\":\"default\"}}",
             te_ok);
    expect_err(zi_te_config_parse(j, strlen(j), "te_rp.json", &te), "te_rp.json",
               "rope_parameters.rope_theta");
    snprintf(j, sizeof j, "{%s,\"hidden_size\":32,\"rope_theta\":1e6,\"num_key_value_heads\":3}",
             te_ok);
    expect_err(zi_te_config_parse(j, strlen(j), "te_kv.json", &te), "te_kv.json",
               "num_key_value_heads");
    snprintf(j, sizeof j, "{%s,\"hidden_size\":32,\"rope_theta\":1e6,\"model_type\":\"llama\"}",
             te_ok);
    expect_err(zi_te_config_parse(j, strlen(j), "te_mt.json", &te), "te_mt.json", "model_type");
    expect_err(zi_te_config_parse("{\"hidden_size\":", 15, "te_json.json", &te), "te_json.json",
               "JSON");
    /* an eps that rounds to 0 as a float is refused, not silently zero */
    snprintf(j, sizeof j,
             "{\"num_hidden_layers\":3,\"num_attention_heads\":4,\"vocab_size\":10,"
             "\"intermediate_size\":8,\"rms_norm_eps\":1e-60,\"max_position_embeddings\":64,"
             "\"hidden_size\":32,\"rope_theta\":1e6}");
    expect_err(zi_te_config_parse(j, strlen(j), "te_eps.json", &te), "te_eps.json", "rms_norm_eps");
    snprintf(j, sizeof j,
             "{\"num_hidden_layers\":3,\"num_attention_heads\":4,\"vocab_size\":10,"
             "\"intermediate_size\":8,\"rms_norm_eps\":1e-6,\"max_position_embeddings\":64,"
             "\"hidden_size\":32,\"rope_parameters\":{\"rope_theta\":1e999}}");
    expect_err(zi_te_config_parse(j, strlen(j), "te_inf.json", &te), "te_inf.json", "rope_theta");

    /* DiT: start from the tiny config and break one key at a time */
    char *txt;
    size_t len;
    assert_int_equal(
        zi_json_read_file(zi_test_model("transformer/config.json"), 1 << 20, &txt, &len), ZI_OK);
    assert_int_equal(zi_dit_config_parse(txt, len, "dit.json", &dit), ZI_OK);
    static const char *const dit_keys[] = {"dim",       "n_heads",      "axes_dims",
                                           "axes_lens", "cap_feat_dim", "all_patch_size",
                                           "qk_norm",   "rope_theta"};
    for (size_t k = 0; k < sizeof dit_keys / sizeof dit_keys[0]; k++) {
        cJSON *root;
        assert_int_equal(zi_json_parse(txt, len, "dit.json", &root), ZI_OK);
        cJSON_DeleteItemFromObjectCaseSensitive(root, dit_keys[k]);
        char *s = cJSON_PrintUnformatted(root);
        zi_error_clear();
        expect_err(zi_dit_config_parse(s, strlen(s), "dit_missing.json", &dit), "dit_missing.json",
                   dit_keys[k]);
        cJSON_AddItemToObject(root, dit_keys[k], cJSON_CreateString("x")); /* was deleted */
        free(s);
        s = cJSON_PrintUnformatted(root);
        expect_err(zi_dit_config_parse(s, strlen(s), "dit_type.json", &dit), "dit_type.json",
                   dit_keys[k]);
        free(s);
        cJSON_Delete(root);
    }
    /* axes must add up to head_dim */
    {
        cJSON *root;
        assert_int_equal(zi_json_parse(txt, len, "dit.json", &root), ZI_OK);
        int bad[3] = {32, 48, 46};
        cJSON_ReplaceItemInObjectCaseSensitive(root, "axes_dims", cJSON_CreateIntArray(bad, 3));
        char *s = cJSON_PrintUnformatted(root);
        expect_err(zi_dit_config_parse(s, strlen(s), "dit_axes.json", &dit), "dit_axes.json",
                   "axes_dims");
        free(s);
        cJSON_Delete(root);
    }
    /* absurd layer counts and sizes fail here, before they size per-layer tables (once a
     * 1e9 n_layers went straight to a terabyte calloc) or overflow derived sizes */
    static const char *const dit_counts[] = {"n_layers", "n_refiner_layers", "dim", "cap_feat_dim"};
    for (size_t k = 0; k < sizeof dit_counts / sizeof dit_counts[0]; k++) {
        cJSON *root;
        assert_int_equal(zi_json_parse(txt, len, "dit.json", &root), ZI_OK);
        /* 805306368: its int(dim / 3 * 8) would not fit an int */
        cJSON_ReplaceItemInObjectCaseSensitive(root, dit_counts[k],
                                               cJSON_CreateNumber(k < 2 ? 1e9 : 805306368));
        char *s = cJSON_PrintUnformatted(root);
        expect_err(zi_dit_config_parse(s, strlen(s), "dit_layers.json", &dit), "dit_layers.json",
                   dit_counts[k]);
        free(s);
        cJSON_Delete(root);
    }
    free(txt);
    assert_int_equal(
        zi_json_read_file(zi_test_model("text_encoder/config.json"), 1 << 20, &txt, &len), ZI_OK);
    {
        cJSON *root;
        assert_int_equal(zi_json_parse(txt, len, "te.json", &root), ZI_OK);
        cJSON_ReplaceItemInObjectCaseSensitive(root, "num_hidden_layers", cJSON_CreateNumber(1e9));
        char *s = cJSON_PrintUnformatted(root);
        expect_err(zi_te_config_parse(s, strlen(s), "te_layers.json", &te), "te_layers.json",
                   "num_hidden_layers");
        free(s);
        cJSON_Delete(root);
    }
    free(txt);

    const char *v = "{\"in_channels\":3,\"out_channels\":3,\"latent_channels\":16,"
                    "\"block_out_channels\":[32],\"layers_per_block\":1000000000,"
                    "\"norm_num_groups\":32,\"scaling_factor\":0.3611}";
    expect_err(zi_vae_config_parse(v, strlen(v), "vae_layers.json", &vae), "vae_layers.json",
               "layers_per_block");

    v = "{\"in_channels\":3,\"out_channels\":3,\"latent_channels\":16,"
        "\"block_out_channels\":\"128\",\"layers_per_block\":2,"
        "\"norm_num_groups\":32,\"scaling_factor\":0.3611}";
    expect_err(zi_vae_config_parse(v, strlen(v), "vae.json", &vae), "vae.json",
               "block_out_channels");
    v = "{\"in_channels\":3,\"out_channels\":3,\"latent_channels\":16,"
        "\"block_out_channels\":[128,256,500],\"layers_per_block\":2,"
        "\"norm_num_groups\":32,\"scaling_factor\":0.3611}";
    expect_err(zi_vae_config_parse(v, strlen(v), "vae2.json", &vae), "vae2.json",
               "block_out_channels[2]");
    v = "{\"in_channels\":3,\"out_channels\":3,\"latent_channels\":16,"
        "\"block_out_channels\":[128,256],\"layers_per_block\":2,"
        "\"norm_num_groups\":32,\"scaling_factor\":0.5,\"shift_factor\":null}";
    assert_int_equal(zi_vae_config_parse(v, strlen(v), "vae3.json", &vae), ZI_OK);
    assert_true(vae.shift_factor == 0.0f); /* null: no shift */
    assert_int_equal(vae.n_blocks, 2);

    const char *s = "{\"num_train_timesteps\":1000,\"shift\":\"3\"}";
    expect_err(zi_sched_config_parse(s, strlen(s), "sched.json", &sc), "sched.json", "shift");
    s = "{\"shift\":3.0}";
    expect_err(zi_sched_config_parse(s, strlen(s), "sched2.json", &sc), "sched2.json",
               "num_train_timesteps");
}

/* The component's tiny config with key set to the JSON `value` ("" = the key removed),
 * parsed by `parse`. */
typedef int (*parse_fn)(const char *json, size_t len, const char *file, void *out);

static int parse_te(const char *j, size_t n, const char *f, void *o)
{
    return zi_te_config_parse(j, n, f, o);
}

static int parse_vae(const char *j, size_t n, const char *f, void *o)
{
    return zi_vae_config_parse(j, n, f, o);
}

static int parse_dit(const char *j, size_t n, const char *f, void *o)
{
    return zi_dit_config_parse(j, n, f, o);
}

static int parse_sched(const char *j, size_t n, const char *f, void *o)
{
    return zi_sched_config_parse(j, n, f, o);
}

/* The checkpoint's file rel with each key of kv (key, value, ..., NULL) replaced by its
 * value (JSON text; "" deletes the key), parsed by parse into out. */
static int parse_with_all(const char *rel, parse_fn parse, const char *const *kv, void *out)
{
    char *txt;
    size_t len;
    cJSON *root;
    assert_int_equal(zi_json_read_file(zi_test_model(rel), 1 << 20, &txt, &len), ZI_OK);
    assert_int_equal(zi_json_parse(txt, len, rel, &root), ZI_OK);
    free(txt);
    for (; kv[0]; kv += 2) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, kv[0]);
        if (*kv[1]) {
            cJSON *v = cJSON_Parse(kv[1]);
            assert_non_null(v);
            cJSON_AddItemToObject(root, kv[0], v);
        }
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    zi_error_clear();
    int rc = parse(s, strlen(s), "cfg.json", out);
    free(s);
    return rc;
}

static int parse_with(const char *rel, parse_fn parse, const char *key, const char *value,
                      void *out)
{
    const char *kv[] = {key, value, NULL};
    return parse_with_all(rel, parse, kv, out);
}

/* Settings the pipeline does not implement are refused by key, not run wrongly; those
 * that change nothing (a window covering every prompt, the default values) load. */
static void test_unsupported_features(void **state)
{
    (void)state;
    zi_te_config te;
    zi_vae_config vae;
    zi_sched_config sc;
    const char *te_json = "text_encoder/config.json", *vae_json = "vae/config.json";
    const char *sc_json = "scheduler/scheduler_config.json";
    union {
        zi_te_config te;
        zi_dit_config dit;
        zi_vae_config vae;
        zi_sched_config sc;
    } any;
    static const struct {
        const char *rel;
        parse_fn parse;
        const char *key, *value;
    } bad[] = {
        {"text_encoder/config.json", parse_te, "hidden_act", "\"gelu\""},
        {"text_encoder/config.json", parse_te, "hidden_act", "1"},
        {"text_encoder/config.json", parse_te, "attention_bias", "true"},
        {"text_encoder/config.json", parse_te, "attention_bias", "\"yes\""},
        {"transformer/config.json", parse_dit, "all_patch_size", "[1]"}, /* no 2-1 pair */
        {"transformer/config.json", parse_dit, "all_f_patch_size", "[2]"},
        {"transformer/config.json", parse_dit, "all_f_patch_size", "[1, 1]"}, /* 2 f for 1 p */
        {"vae/config.json", parse_vae, "act_fn", "\"relu\""},
        {"vae/config.json", parse_vae, "up_block_types", "[\"UpDecoderBlock2D\"]"}, /* 1 of 4 */
        {"vae/config.json", parse_vae, "up_block_types",
         "[\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"AttnUpDecoderBlock2D\","
         "\"UpDecoderBlock2D\"]"},
        {"vae/config.json", parse_vae, "up_block_types", "\"UpDecoderBlock2D\""},
        {"vae/config.json", parse_vae, "use_post_quant_conv", "\"no\""},
        {"scheduler/scheduler_config.json", parse_sched, "time_shift_type", "\"cosine\""},
        {"scheduler/scheduler_config.json", parse_sched, "use_karras_sigmas", "true"},
        {"scheduler/scheduler_config.json", parse_sched, "use_exponential_sigmas", "true"},
        {"scheduler/scheduler_config.json", parse_sched, "use_beta_sigmas", "true"},
        {"scheduler/scheduler_config.json", parse_sched, "invert_sigmas", "true"},
        {"scheduler/scheduler_config.json", parse_sched, "stochastic_sampling", "true"},
        {"scheduler/scheduler_config.json", parse_sched, "shift_terminal", "0.02"},
        {"scheduler/scheduler_config.json", parse_sched, "max_image_seq_len", "256"}, /* = base */
        {"scheduler/scheduler_config.json", parse_sched, "base_shift", "\"x\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_err(parse_with(bad[i].rel, bad[i].parse, bad[i].key, bad[i].value, &any), "cfg.json",
                   bad[i].key);
    assert_int_equal(parse_with(te_json, parse_te, "hidden_act", "", &te), ZI_OK);
    assert_int_equal(parse_with(te_json, parse_te, "attention_bias", "false", &te), ZI_OK);

    /* sliding windows: refused only when shorter than the longest prompt (512 ids);
     * layer_types (transformers 5) says which layers slide, else (transformers 4)
     * use_sliding_window from max_window_layers on */
    cJSON *root;
    char *txt;
    size_t len;
    assert_int_equal(zi_json_read_file(zi_test_model(te_json), 1 << 20, &txt, &len), ZI_OK);
    assert_int_equal(zi_json_parse(txt, len, te_json, &root), ZI_OK);
    free(txt);
#define ZI_T_SLIDE "[\"full_attention\",\"sliding_attention\",\"full_attention\"]"
#define ZI_T_FULL "[\"full_attention\",\"full_attention\",\"full_attention\"]"
    static const struct {
        const char *types, *use, *from, *window; /* types NULL: no layer_types */
        int ok;
    } sw[] = {
        {NULL, "true", "1", "256", 0},
        {NULL, "true", "28", "256", 1}, /* 3 layers < 28 */
        {NULL, "true", "1", "4096", 1},
        {NULL, "false", "1", "256", 1},
        {NULL, "true", "1", "null", 1},
        {ZI_T_SLIDE, "false", "28", "511", 0},
        {ZI_T_SLIDE, "false", "28", "512", 1},
        {ZI_T_FULL, "true", "1", "16", 1},
        {ZI_T_SLIDE, "false", "28", "\"wide\"", 0},
    };
    for (size_t i = 0; i < sizeof sw / sizeof sw[0]; i++) {
        cJSON *r = cJSON_Duplicate(root, 1);
        if (sw[i].types)
            cJSON_ReplaceItemInObjectCaseSensitive(r, "layer_types", cJSON_Parse(sw[i].types));
        else
            cJSON_DeleteItemFromObjectCaseSensitive(r, "layer_types");
        cJSON_ReplaceItemInObjectCaseSensitive(r, "use_sliding_window", cJSON_Parse(sw[i].use));
        cJSON_ReplaceItemInObjectCaseSensitive(r, "max_window_layers", cJSON_Parse(sw[i].from));
        cJSON_ReplaceItemInObjectCaseSensitive(r, "sliding_window", cJSON_Parse(sw[i].window));
        char *s = cJSON_PrintUnformatted(r);
        zi_error_clear();
        int rc = zi_te_config_parse(s, strlen(s), "sw.json", &te);
        if (sw[i].ok)
            assert_int_equal(rc, ZI_OK);
        else
            expect_err(rc, "sw.json", "sliding_window");
        free(s);
        cJSON_Delete(r);
    }
#undef ZI_T_SLIDE
#undef ZI_T_FULL
    cJSON_Delete(root);

    /* several patch pairs: the 2-1 pair runs, wherever it is in the lists */
    static const char *const pairs[][2] = {
        {"[1, 2]", "[1, 1]"}, {"[2, 2]", "[2, 1]"}, {"[2]", "[1]"}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        char *txt;
        size_t len;
        cJSON *r;
        const char *rel = "transformer/config.json";
        assert_int_equal(zi_json_read_file(zi_test_model(rel), 1 << 20, &txt, &len), ZI_OK);
        assert_int_equal(zi_json_parse(txt, len, rel, &r), ZI_OK);
        free(txt);
        cJSON_ReplaceItemInObjectCaseSensitive(r, "all_patch_size", cJSON_Parse(pairs[i][0]));
        cJSON_ReplaceItemInObjectCaseSensitive(r, "all_f_patch_size", cJSON_Parse(pairs[i][1]));
        char *s = cJSON_PrintUnformatted(r);
        assert_int_equal(zi_dit_config_parse(s, strlen(s), "pairs.json", &any.dit), ZI_OK);
        assert_int_equal(any.dit.patch, 2);
        assert_int_equal(any.dit.f_patch, 1);
        free(s);
        cJSON_Delete(r);
    }

    /* use_post_quant_conv: AutoencoderKL's default is true; Z-Image's VAE says false */
    assert_int_equal(parse_with(vae_json, parse_vae, "use_post_quant_conv", "", &vae), ZI_OK);
    assert_int_equal(vae.post_quant_conv, 1);
    assert_int_equal(parse_with(vae_json, parse_vae, "use_post_quant_conv", "false", &vae), ZI_OK);
    assert_int_equal(vae.post_quant_conv, 0);
    assert_int_equal(parse_with(vae_json, parse_vae, "act_fn", "", &vae), ZI_OK);

    /* scheduler: dynamic shifting's keys take diffusers' defaults */
    assert_int_equal(parse_with(sc_json, parse_sched, "base_shift", "", &sc), ZI_OK);
    assert_true(sc.base_shift == 0.5 && sc.max_shift == 1.15 && sc.base_seq_len == 256 &&
                sc.max_seq_len == 4096 && sc.time_shift_linear == 0);
    assert_int_equal(parse_with(sc_json, parse_sched, "max_shift", "2.5", &sc), ZI_OK);
    assert_true(sc.max_shift == 2.5);
    assert_int_equal(parse_with(sc_json, parse_sched, "time_shift_type", "\"linear\"", &sc), ZI_OK);
    assert_int_equal(sc.time_shift_linear, 1);
    assert_int_equal(parse_with(sc_json, parse_sched, "shift_terminal", "null", &sc), ZI_OK);
    assert_int_equal(parse_with(sc_json, parse_sched, "use_karras_sigmas", "false", &sc), ZI_OK);
}

/* Bounded arrays: max elements load, max + 1 are refused by count before any is stored (the
 * readers fill fixed-size arrays on the stack or in the config struct). */
static void test_array_bounds(void **state)
{
    (void)state;
    union {
        zi_dit_config dit;
        zi_vae_config vae;
    } any;
    /* the VAE first: its array is a struct member, where a 9th element would land unseen
     * by ASan, so the count check alone must stop it */
    assert_int_equal(parse_with("vae/config.json", parse_vae, "block_out_channels",
                                "[32,32,32,32,32,32,32,32,32]", &any),
                     ZI_EFORMAT);
    assert_msg_has("block_out_channels");
    assert_msg_has("9 elements, expected 1 to 8");

    const char *dit_json = "transformer/config.json";
    assert_int_equal(parse_with(dit_json, parse_dit, "all_patch_size", "[1,1,1,1,1,1,1,1,2]", &any),
                     ZI_EFORMAT);
    assert_msg_has("all_patch_size");
    assert_msg_has("9 elements, expected 1 to 8");
    assert_int_equal(parse_with(dit_json, parse_dit, "axes_dims", "[2,2,2,2,2,2,2,2,2]", &any),
                     ZI_EFORMAT);
    assert_msg_has("axes_dims");
    assert_msg_has("9 elements, expected 1 to 8");
    /* eight patch pairs, the last one 2-1: accepted */
    const char *pairs8[] = {"all_patch_size", "[1,1,1,1,1,1,1,2]", "all_f_patch_size",
                            "[1,1,1,1,1,1,1,1]", NULL};
    assert_int_equal(parse_with_all(dit_json, parse_dit, pairs8, &any), ZI_OK);
    assert_int_equal(any.dit.n_pairs, 8);
    assert_int_equal(any.dit.patch, 2);
}

/* A config file may be 1 MiB: one byte more is refused before it is read (whitespace
 * padding keeps both files valid JSON). */
static void test_file_size_cap(void **state)
{
    (void)state;
    const char *rel = "scheduler/scheduler_config.json";
    char *txt;
    size_t len;
    assert_int_equal(zi_json_read_file(zi_test_model(rel), 1 << 20, &txt, &len), ZI_OK);
    size_t cap = 1u << 20;
    assert_true(len < cap);
    char *big = malloc(cap + 1);
    assert_non_null(big);
    memcpy(big, txt, len);
    memset(big + len, ' ', cap + 1 - len);
    free(txt);
    char path[] = "/tmp/zi_test_cfgsize_XXXXXX";
    zi_sched_config sc;
    for (size_t size = cap; size <= cap + 1; size++) {
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, big, size), (ssize_t)size);
        close(fd);
        zi_error_clear();
        int rc = zi_sched_config_load(path, &sc);
        unlink(path);
        memcpy(path + strlen(path) - 6, "XXXXXX", 6);
        if (size == cap) {
            assert_int_equal(rc, ZI_OK);
        } else {
            assert_int_equal(rc, ZI_EFORMAT);
            assert_msg_has("more than");
        }
    }
    free(big);
}

/* Exact integers (safetensors shapes and offsets, token ids) stop at 2^53: above it a double
 * no longer holds every integer, so 2^53 + 2 (itself exact) is refused. */
static void test_u53_limit(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        int ok;
        uint64_t v;
    } cases[] = {
        {"9007199254740992", 1, 9007199254740992ull},
        {"9007199254740994", 0, 0},
        {"18014398509481984", 0, 0},
        {"0", 1, 0},
        {"-1", 0, 0},
        {"1.5", 0, 0},
        {"\"7\"", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *v = cJSON_Parse(cases[i].json);
        assert_non_null(v);
        uint64_t got = 12345;
        int ok = zi_json_is_u53(v, &got);
        if (ok != cases[i].ok)
            fail_msg("zi_json_is_u53(%s) = %d", cases[i].json, ok);
        if (ok)
            assert_true(got == cases[i].v);
        cJSON_Delete(v);
    }
}

/* a checkpoint folder whose one component file is broken: the error names that path */
static void test_folder_errors(void **state)
{
    (void)state;
    char dir[] = "/tmp/zi_test_cfgdir_XXXXXX";
    assert_non_null(mkdtemp(dir));
    static const char *const comps[] = {"text_encoder", "transformer", "vae", "scheduler"};
    static const char *const files[] = {"text_encoder/config.json", "transformer/config.json",
                                        "vae/config.json", "scheduler/scheduler_config.json",
                                        "model_index.json"};
    char p[512], q[512];
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, comps[i]);
        assert_int_equal(mkdir(p, 0700), 0);
    }
    for (size_t i = 0; i < 5; i++) {
        char *txt;
        size_t len;
        snprintf(q, sizeof q, "%s", files[i]);
        assert_int_equal(zi_json_read_file(zi_test_model(q), 1 << 20, &txt, &len), ZI_OK);
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        FILE *f = fopen(p, "wb");
        assert_non_null(f);
        /* the VAE config loses its scaling_factor */
        char *cut = i == 2 ? strstr(txt, "\"scaling_factor\"") : NULL;
        if (cut)
            memcpy(cut, "\"scaling_factoX\"", 16);
        assert_int_equal(fwrite(txt, 1, len, f), len);
        fclose(f);
        free(txt);
    }
    zi_model_config c;
    zi_error_clear();
    assert_int_not_equal(zi_config_load(dir, &c), ZI_OK);
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    assert_msg_has(p);
    assert_msg_has("scaling_factor");

    /* a missing component file is named too */
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    unlink(p);
    zi_error_clear();
    assert_int_not_equal(zi_config_load(dir, &c), ZI_OK);
    assert_msg_has(p);

    for (size_t i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, comps[i]);
        rmdir(p);
    }
    rmdir(dir);
}

static void test_turbo_builtin(void **state)
{
    (void)state;
    zi_model_config c;
    zi_config_zimage_turbo(&c);
    /* spec §1.3 */
    assert_int_equal(c.dit.dim, 3840);
    assert_int_equal(c.dit.n_layers, 30);
    assert_int_equal(c.dit.n_refiner_layers, 2);
    assert_int_equal(c.dit.n_heads, 30);
    assert_int_equal(c.dit.n_kv_heads, 30);
    assert_int_equal(c.dit.head_dim, 128);
    assert_int_equal(c.dit.cap_feat_dim, 2560);
    assert_int_equal(c.dit.ffn_hidden, 10240);
    assert_int_equal(c.dit.adaln_dim, 256);
    assert_int_equal(c.dit.in_channels, 16);
    assert_int_equal(c.dit.patch, 2);
    assert_int_equal(c.dit.f_patch, 1);
    assert_true(c.dit.rope_theta == 256.0);
    assert_true(c.dit.t_scale == 1000.0f);
    assert_true(c.dit.norm_eps == 1e-5f);
    assert_int_equal(c.dit.qk_norm, 1);
    int dims[3] = {32, 48, 48}, lens[3] = {1536, 512, 512};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c.dit.axes_dims[i], dims[i]);
        assert_int_equal(c.dit.axes_lens[i], lens[i]);
    }
    assert_int_equal(c.te.hidden, 2560);
    assert_int_equal(c.te.n_layers, 36);
    assert_int_equal(c.te.n_heads, 32);
    assert_int_equal(c.te.n_kv_heads, 8);
    assert_int_equal(c.te.head_dim, 128);
    assert_int_equal(c.te.intermediate, 9728);
    assert_int_equal(c.te.vocab, 151936);
    assert_true(c.te.rope_theta == 1e6);
    assert_true(c.te.rms_eps == 1e-6f);
    int boc[4] = {128, 256, 512, 512};
    assert_int_equal(c.vae.n_blocks, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(c.vae.block_out[i], boc[i]);
    assert_int_equal(c.vae.layers_per_block, 2);
    assert_int_equal(c.vae.norm_groups, 32);
    assert_int_equal(c.vae.latent_channels, 16);
    assert_true(c.vae.scaling_factor == 0.3611f);
    assert_true(c.vae.shift_factor == 0.1159f);
    assert_int_equal(c.sched.num_train_timesteps, 1000);
    assert_true(c.sched.shift == 3.0f);
    assert_int_equal(c.sched.use_dynamic_shifting, 0);

    /* the built-in copy passes the same validation as a parsed file: round-trip it as JSON */
    char j[2048];
    snprintf(j, sizeof j,
             "{\"in_channels\":%d,\"all_patch_size\":[%d],\"all_f_patch_size\":[%d],\"dim\":%d,"
             "\"n_layers\":%d,\"n_refiner_layers\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,"
             "\"cap_feat_dim\":%d,\"norm_eps\":1e-5,\"qk_norm\":true,\"rope_theta\":%g,"
             "\"t_scale\":%g,\"axes_dims\":[%d,%d,%d],\"axes_lens\":[%d,%d,%d]}",
             c.dit.in_channels, c.dit.patch, c.dit.f_patch, c.dit.dim, c.dit.n_layers,
             c.dit.n_refiner_layers, c.dit.n_heads, c.dit.n_kv_heads, c.dit.cap_feat_dim,
             c.dit.rope_theta, c.dit.t_scale, c.dit.axes_dims[0], c.dit.axes_dims[1],
             c.dit.axes_dims[2], c.dit.axes_lens[0], c.dit.axes_lens[1], c.dit.axes_lens[2]);
    zi_dit_config d;
    assert_int_equal(zi_dit_config_parse(j, strlen(j), "turbo.json", &d), ZI_OK);
    assert_memory_equal(&d, &c.dit, sizeof d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_checkpoint),
        cmocka_unit_test(test_te_transformers4),
        cmocka_unit_test(test_errors_name_file_and_key),
        cmocka_unit_test(test_folder_errors),
        cmocka_unit_test(test_unsupported_features),
        cmocka_unit_test(test_turbo_builtin),
        cmocka_unit_test(test_array_bounds),
        cmocka_unit_test(test_file_size_cap),
        cmocka_unit_test(test_u53_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
