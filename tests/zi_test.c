/*
 * zi_test.c - helpers shared by the C tests.
 */
#include "zi_test.h"
#include "zi_err.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef ZI_SOURCE_DIR
#define ZI_SOURCE_DIR "."
#endif

const char *zi_test_path(const char *rel)
{
    static _Thread_local char buf[4096];
    const char *root = getenv("ZI_SOURCE_DIR");
    if (!root || !*root)
        root = ZI_SOURCE_DIR;
    snprintf(buf, sizeof buf, "%s/%s", root, rel);
    return buf;
}

const char *zi_test_golden(const char *rel)
{
    const char *dir = getenv("ZI_GOLDEN_DIR");
    if (dir && *dir) {
        static _Thread_local char buf[4096];
        snprintf(buf, sizeof buf, "%s/%s", dir, rel);
        return buf;
    }
    char tmp[2048];
    snprintf(tmp, sizeof tmp, "tests/golden/data/%s", rel);
    return zi_test_path(tmp);
}

/* The golden set's checkpoint folder name: "tiny-zimage" when the set has it, else its one
 * subfolder holding a model_index.json. Looked up once per thread. */
static const char *golden_model_name(void)
{
    static _Thread_local char name[256];
    if (name[0])
        return name;
    char root[4096], probe[sizeof root + sizeof name + 32];
    snprintf(root, sizeof root, "%s", zi_test_golden(""));
    size_t rl = strlen(root);
    if (rl > 1 && root[rl - 1] == '/')
        root[rl - 1] = '\0'; /* "<set>/" -> "<set>" */
    snprintf(probe, sizeof probe, "%s/tiny-zimage/model_index.json", root);
    if (access(probe, R_OK) == 0) {
        snprintf(name, sizeof name, "tiny-zimage");
        return name;
    }
    DIR *d = opendir(root);
    if (!d)
        fail_msg("golden set %s: cannot list it", root);
    int found = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof name)
            continue;
        snprintf(probe, sizeof probe, "%s/%s/model_index.json", root, e->d_name);
        if (access(probe, R_OK) != 0)
            continue;
        if (found++ == 0)
            snprintf(name, sizeof name, "%s", e->d_name);
    }
    closedir(d);
    if (found != 1) {
        name[0] = '\0';
        fail_msg("golden set %s: %s checkpoint folder (a subfolder with model_index.json)", root,
                 found ? "more than one" : "no");
    }
    return name;
}

const char *zi_test_model(const char *rel)
{
    char tmp[2048];
    if (rel && *rel)
        snprintf(tmp, sizeof tmp, "%s/%s", golden_model_name(), rel);
    else
        snprintf(tmp, sizeof tmp, "%s", golden_model_name());
    return zi_test_golden(tmp);
}

/* cJSON keeps numbers as doubles, which cannot hold every seed (2^53 and above are
 * rounded): the digits of each "seed": NUMBER are quoted before parsing, so the seed
 * reaches zi_test_case_seed as its own text. `text` must have room for two bytes per seed. */
static void zi_test_quote_seeds(char *text, size_t cap)
{
    static const char key[] = "\"seed\"";
    char *p = text;
    while ((p = strstr(p, key)) != NULL) {
        p += sizeof key - 1;
        char *q = p + strspn(p, " \t\r\n");
        if (*q != ':')
            continue;
        q++;
        q += strspn(q, " \t\r\n");
        size_t nd = strspn(q, "0123456789");
        if (nd == 0 || q[nd] == '.' || q[nd] == 'e' || q[nd] == 'E')
            continue; /* not a plain integer: left to the number check */
        size_t len = strlen(text);
        if (len + 3 > cap)
            fail_msg("vectors/manifest.json: too many seeds to quote");
        memmove(q + nd + 2, q + nd, len - (size_t)(q + nd - text) + 1);
        memmove(q + 1, q, nd);
        q[0] = '"';
        q[nd + 1] = '"';
        p = q + nd + 2;
    }
}

cJSON *zi_test_manifest(void)
{
    const char *path = zi_test_golden("vectors/manifest.json");
    char *raw = zi_test_read_file(path);
    if (!raw)
        fail_msg("cannot read %s", path);
    size_t len = strlen(raw), cap = 3 * len + 1; /* a seed of one digit takes 3 bytes quoted */
    char *text = malloc(cap);
    if (!text)
        fail_msg("out of memory");
    memcpy(text, raw, len + 1);
    free(raw);
    zi_test_quote_seeds(text, cap);
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root)
        fail_msg("vectors/manifest.json: not valid JSON");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    if (!cJSON_IsArray(cases) || cJSON_GetArraySize(cases) < 1) {
        cJSON_Delete(root);
        fail_msg("vectors/manifest.json: \"cases\" missing or empty");
    }
    return root;
}

const cJSON *zi_test_manifest_cases(const cJSON *manifest)
{
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(manifest, "cases");
    assert_true(cJSON_IsArray(cases));
    assert_true(cJSON_GetArraySize(cases) >= 1);
    return cases;
}

const char *zi_test_case_str(const cJSON *cs, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cs, key);
    if (!cJSON_IsString(v))
        fail_msg("manifest case: \"%s\" missing or not a string", key);
    return v->valuestring;
}

double zi_test_case_num(const cJSON *cs, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cs, key);
    if (!cJSON_IsNumber(v))
        fail_msg("manifest case: \"%s\" missing or not a number", key);
    return v->valuedouble;
}

uint64_t zi_test_case_seed(const cJSON *cs)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cs, "seed");
    const char *t = cJSON_IsString(v) ? v->valuestring : NULL;
    size_t n = t ? strlen(t) : 0;
    if (!n || strspn(t, "0123456789") != n)
        fail_msg("manifest case: \"seed\" missing or not a decimal integer");
    errno = 0;
    unsigned long long x = strtoull(t, NULL, 10);
    if (errno == ERANGE)
        fail_msg("manifest case: \"seed\" %s is larger than 2^64-1", t);
    return (uint64_t)x;
}

zi_rng_kind zi_test_case_rng(const cJSON *manifest, const cJSON *cs)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cs, "latents_rng");
    if (!cJSON_IsString(v))
        v = cJSON_GetObjectItemCaseSensitive(manifest, "latents_rng");
    if (!cJSON_IsString(v))
        return ZI_RNG_CUDA; /* the golden README: latents_init came from the CUDA generator */
    const char *t = v->valuestring;
    int cuda = strstr(t, "cuda") != NULL, cpu = strstr(t, "cpu") != NULL;
    if (cuda == cpu)
        fail_msg("manifest: latents_rng \"%s\" names neither or both of cuda and cpu", t);
    return cuda ? ZI_RNG_CUDA : ZI_RNG_CPU;
}

int zi_test_case_branches(const cJSON *cs)
{
    return zi_test_case_num(cs, "guidance") > 0 ? 2 : 1;
}

zi_st *zi_test_case_open(const cJSON *cs)
{
    char rel[1024];
    snprintf(rel, sizeof rel, "vectors/%s", zi_test_case_str(cs, "file"));
    zi_st *st = NULL;
    if (zi_st_open(zi_test_golden(rel), &st) != ZI_OK)
        fail_msg("%s: %s", rel, zi_errmsg());
    return st;
}

const char *zi_test_case_png(const cJSON *cs)
{
    char rel[1024];
    snprintf(rel, sizeof rel, "vectors/%s.png", zi_test_case_str(cs, "name"));
    const char *path = zi_test_golden(rel);
    if (access(path, R_OK) == 0)
        return path;
    const char *file = zi_test_case_str(cs, "file"); /* x.safetensors -> x.png */
    size_t stem = strlen(file);
    if (stem > 12 && strcmp(file + stem - 12, ".safetensors") == 0)
        stem -= 12;
    snprintf(rel, sizeof rel, "vectors/%.*s.png", (int)stem, file);
    return zi_test_golden(rel);
}

const cJSON *zi_test_case_with(const cJSON *manifest, const char *tensor)
{
    const cJSON *cs;
    cJSON_ArrayForEach(cs, zi_test_manifest_cases(manifest))
    {
        zi_st *st = zi_test_case_open(cs);
        int has = zi_st_find(st, tensor) != NULL;
        zi_st_close(st);
        if (has)
            return cs;
    }
    fail_msg("no case file of vectors/manifest.json holds the tensor %s", tensor);
    return NULL;
}

double zi_rel_err(const float *out, const float *ref, size_t n)
{
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)out[i] - (double)ref[i]);
        if (d > maxdiff || isnan(d))
            maxdiff = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > maxref)
            maxref = fabs(ref[i]);
    }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}

double zi_max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

double zi_psnr_u8(const uint8_t *a, const uint8_t *b, size_t n)
{
    double se = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        se += d * d;
    }
    if (se == 0)
        return INFINITY;
    return 10.0 * log10(255.0 * 255.0 / (se / (double)n));
}

int zi_test_run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t len = 0;
    char chunk[4096];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, p)) > 0) {
        if (out && cap > 0) {
            size_t take = got;
            if (len + take > cap - 1)
                take = cap - 1 - len;
            memcpy(out + len, chunk, take);
            len += take;
        }
    }
    if (out && cap > 0)
        out[len] = '\0';
    int st = pclose(p);
    if (st == -1)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

char *zi_test_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        len = ftell(f);
    if (len >= 0 && fseek(f, 0, SEEK_SET) == 0)
        buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[len] = '\0';
    fclose(f);
    return buf;
}

float *zi_test_tensor_f32(const zi_st_tensor *t, size_t *n)
{
    size_t numel = 1;
    for (int i = 0; i < t->ndim; i++)
        numel *= (size_t)t->shape[i];
    float *buf = malloc((numel ? numel : 1) * sizeof *buf);
    assert_non_null(buf);
    if (zi_st_read_f32(t, buf) != ZI_OK)
        fail_msg("tensor %s: %s", t->name, zi_errmsg());
    if (n)
        *n = numel;
    return buf;
}

float *zi_test_st_f32(const zi_st *st, const char *name, size_t *n)
{
    const zi_st_tensor *t = zi_st_find(st, name);
    if (!t)
        fail_msg("tensor %s missing", name);
    return zi_test_tensor_f32(t, n);
}
