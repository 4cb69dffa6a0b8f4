/*
 * safetensors.c - mmap'ed safetensors files and sharded checkpoints.
 *
 * Format (https://github.com/huggingface/safetensors, spec §1.2): u64 little-endian header
 * length N, N bytes of JSON {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__"},
 * then the data; offsets are relative to byte 8+N. Every header is validated completely
 * when the file is opened (dtype known, shape sane, offsets inside the data area,
 * end-begin == numel*dtype size, no two tensors overlapping, no duplicate names), so a
 * lookup after a successful open can never point outside the mapping.
 *
 * Limits: at most ZI_MAX_DIMS dimensions; offsets and sizes must be exact in a double
 * (< 2^53, as the JSON numbers pass through cJSON); an index json is at most 64 MiB.
 * zi_st_open_buffer() does not copy `buf`: the caller keeps it alive until zi_st_close().
 */
#include "safetensors.h"
#include "json_util.h"
#include "zi_err.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZI_ST_INDEX_MAX_BYTES (64u << 20)
#define ZI_ST_PREFIX "model."

typedef struct zi_st_file {
    char *path;
    const uint8_t *base; /* the whole file */
    size_t len;
    int mapped; /* 1: munmap at close; 0: caller's buffer */
} zi_st_file;

struct zi_st {
    char *label; /* what was opened (file, index or buffer label) */
    zi_st_file *files;
    size_t nfiles;
    zi_st_tensor *tensors;
    size_t n, cap;
    uint32_t *slots; /* open addressing: tensor index + 1, 0 = empty */
    size_t nslots;   /* power of two */
};

/* ---- names and the lookup table ---- */

static const char *zi_st_strip(const char *name)
{
    size_t p = sizeof ZI_ST_PREFIX - 1;
    return strncmp(name, ZI_ST_PREFIX, p) == 0 ? name + p : name;
}

static uint64_t zi_st_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Builds the table over all tensors; a duplicate stripped name is an error. */
static int zi_st_index(zi_st *st)
{
    size_t ns = 16;
    while (ns < 2 * st->n)
        ns <<= 1;
    st->slots = calloc(ns, sizeof *st->slots);
    if (!st->slots)
        return zi_errorf(ZI_ENOMEM, "file %s: out of memory", st->label);
    st->nslots = ns;
    for (size_t i = 0; i < st->n; i++) {
        const char *key = zi_st_strip(st->tensors[i].name);
        size_t s = (size_t)zi_st_hash(key) & (ns - 1);
        while (st->slots[s]) {
            const zi_st_tensor *o = &st->tensors[st->slots[s] - 1];
            if (strcmp(zi_st_strip(o->name), key) == 0)
                return zi_errorf(ZI_EFORMAT,
                                 "file %s: tensor %s: duplicate name (also %s in file %s)",
                                 st->tensors[i].file, st->tensors[i].name, o->name, o->file);
            s = (s + 1) & (ns - 1);
        }
        st->slots[s] = (uint32_t)(i + 1);
    }
    return ZI_OK;
}

const zi_st_tensor *zi_st_find(const zi_st *st, const char *name)
{
    if (!st || !name || !st->nslots)
        return NULL;
    const char *key = zi_st_strip(name);
    size_t s = (size_t)zi_st_hash(key) & (st->nslots - 1);
    while (st->slots[s]) {
        const zi_st_tensor *t = &st->tensors[st->slots[s] - 1];
        if (strcmp(zi_st_strip(t->name), key) == 0)
            return t;
        s = (s + 1) & (st->nslots - 1);
    }
    return NULL;
}

size_t zi_st_count(const zi_st *st)
{
    return st ? st->n : 0;
}

const zi_st_tensor *zi_st_at(const zi_st *st, size_t i)
{
    return (st && i < st->n) ? &st->tensors[i] : NULL;
}

/* ---- header parsing ---- */

typedef struct zi_st_range {
    uint64_t begin, end;
    size_t idx;
} zi_st_range;

static int zi_st_range_cmp(const void *a, const void *b)
{
    const zi_st_range *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int zi_st_push(zi_st *st, zi_st_tensor **out)
{
    if (st->n == st->cap) {
        size_t nc = st->cap ? 2 * st->cap : 64;
        if (nc > UINT32_MAX - 1)
            return zi_errorf(ZI_EFORMAT, "file %s: too many tensors", st->label);
        zi_st_tensor *t = realloc(st->tensors, nc * sizeof *t);
        if (!t)
            return zi_errorf(ZI_ENOMEM, "file %s: out of memory", st->label);
        st->tensors = t;
        st->cap = nc;
    }
    *out = &st->tensors[st->n];
    memset(*out, 0, sizeof **out);
    return ZI_OK;
}

/* Parses one tensor entry `e` of file `f` whose data area is [data, data+dlen). */
static int zi_st_parse_entry(zi_st *st, const zi_st_file *f, const cJSON *e, const uint8_t *data,
                             uint64_t dlen)
{
    const char *name = e->string ? e->string : "";
    if (!cJSON_IsObject(e))
        return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: entry is not an object", f->path, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd))
        return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: missing or non-string dtype", f->path,
                         name);
    int dt = zi_dtype_from_name(jd->valuestring);
    if (dt < 0)
        return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: unknown dtype \"%.32s\"", f->path, name,
                         jd->valuestring);
    if (!cJSON_IsArray(js))
        return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: missing or non-array shape", f->path,
                         name);
    int ndim = cJSON_GetArraySize(js);
    if (ndim > ZI_MAX_DIMS)
        return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: %d dimensions, at most %d supported",
                         f->path, name, ndim, ZI_MAX_DIMS);
    zi_st_tensor *t = NULL;
    int rc = zi_st_push(st, &t);
    if (rc)
        return rc;
    uint64_t nbytes = zi_dtype_size((zi_dtype)dt);
    int d = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, js)
    {
        uint64_t dim;
        if (!zi_json_is_u53(v, &dim))
            return zi_errorf(ZI_EFORMAT,
                             "file %s: tensor %s: shape[%d] is not a non-negative integer", f->path,
                             name, d);
        if (__builtin_mul_overflow(nbytes, dim, &nbytes))
            return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: shape too large", f->path, name);
        t->shape[d++] = (int64_t)dim;
    }
    uint64_t off[2];
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 ||
        !zi_json_is_u53(cJSON_GetArrayItem(jo, 0), &off[0]) ||
        !zi_json_is_u53(cJSON_GetArrayItem(jo, 1), &off[1]))
        return zi_errorf(ZI_EFORMAT,
                         "file %s: tensor %s: data_offsets must be two non-negative integers",
                         f->path, name);
    if (off[0] > off[1] || off[1] > dlen)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: tensor %s: data_offsets [%llu, %llu] outside the data area "
                         "(%llu bytes)",
                         f->path, name, (unsigned long long)off[0], (unsigned long long)off[1],
                         (unsigned long long)dlen);
    if (off[1] - off[0] != nbytes)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: tensor %s: data_offsets [%llu, %llu] hold %llu bytes but "
                         "%s x shape needs %llu",
                         f->path, name, (unsigned long long)off[0], (unsigned long long)off[1],
                         (unsigned long long)(off[1] - off[0]), zi_dtype_name((zi_dtype)dt),
                         (unsigned long long)nbytes);
    char *nm = strdup(name);
    if (!nm)
        return zi_errorf(ZI_ENOMEM, "file %s: out of memory", f->path);
    t->name = nm;
    t->dtype = (zi_dtype)dt;
    t->ndim = ndim;
    t->data = data + off[0];
    t->nbytes = (size_t)nbytes;
    t->file = f->path;
    st->n++;
    return ZI_OK;
}

/* Validates and indexes the header of st->files[fi]; appends its tensors. */
static int zi_st_parse_file(zi_st *st, size_t fi)
{
    const zi_st_file *f = &st->files[fi];
    if (f->len < 8)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: truncated: %zu bytes, a safetensors file has at least 8",
                         f->path, f->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | f->base[i];
    if (hlen > f->len - 8)
        return zi_errorf(ZI_EFORMAT,
                         "file %s: header length %llu runs past the end of the file (%zu bytes; "
                         "truncated?)",
                         f->path, (unsigned long long)hlen, f->len);
    const char *hdr = (const char *)f->base + 8;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = (end && end >= hdr && end <= hdr + hlen) ? (size_t)(end - hdr) : 0;
        return zi_errorf(ZI_EFORMAT, "file %s: header is not valid JSON (near header byte %zu)",
                         f->path, at);
    }
    int rc = ZI_OK;
    zi_st_range *ranges = NULL;
    /* safetensors pads the header with spaces; anything else after the JSON is damage */
    for (const char *p = end; p && p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') {
            rc = zi_errorf(ZI_EFORMAT, "file %s: trailing bytes after the header JSON", f->path);
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = zi_errorf(ZI_EFORMAT, "file %s: header JSON is not an object", f->path);
        goto out;
    }
    const uint8_t *data = f->base + 8 + hlen;
    uint64_t dlen = f->len - 8 - hlen;
    size_t first = st->n;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (e->string && strcmp(e->string, "__metadata__") == 0)
            continue;
        rc = zi_st_parse_entry(st, f, e, data, dlen);
        if (rc)
            goto out;
    }
    size_t cnt = st->n - first;
    if (cnt > 1) {
        ranges = malloc(cnt * sizeof *ranges);
        if (!ranges) {
            rc = zi_errorf(ZI_ENOMEM, "file %s: out of memory", f->path);
            goto out;
        }
        for (size_t i = 0; i < cnt; i++) {
            const zi_st_tensor *t = &st->tensors[first + i];
            ranges[i].begin = (uint64_t)((const uint8_t *)t->data - data);
            ranges[i].end = ranges[i].begin + t->nbytes;
            ranges[i].idx = first + i;
        }
        qsort(ranges, cnt, sizeof *ranges, zi_st_range_cmp);
        const zi_st_range *prev = NULL;
        for (size_t i = 0; i < cnt; i++) {
            if (ranges[i].begin == ranges[i].end)
                continue; /* empty tensors occupy no bytes */
            if (prev && ranges[i].begin < prev->end) {
                rc = zi_errorf(ZI_EFORMAT, "file %s: tensor %s: data overlaps tensor %s", f->path,
                               st->tensors[ranges[i].idx].name, st->tensors[prev->idx].name);
                goto out;
            }
            prev = &ranges[i];
        }
    }
out:
    free(ranges);
    cJSON_Delete(root);
    return rc;
}

/* ---- opening ---- */

static int zi_st_new(const char *label, size_t nfiles, zi_st **out)
{
    zi_st *st = calloc(1, sizeof *st);
    if (!st)
        return zi_errorf(ZI_ENOMEM, "out of memory");
    st->label = strdup(label ? label : "(buffer)");
    st->files = calloc(nfiles ? nfiles : 1, sizeof *st->files);
    if (!st->label || !st->files) {
        zi_st_close(st);
        return zi_errorf(ZI_ENOMEM, "out of memory");
    }
    *out = st;
    return ZI_OK;
}

/* Maps `path` into st->files[st->nfiles++]. */
static int zi_st_map(zi_st *st, const char *path)
{
    zi_st_file *f = &st->files[st->nfiles];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return zi_errorf(errno == ENOENT ? ZI_ENOTFOUND : ZI_EIO, "file %s: cannot open: %s", path,
                         strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return zi_errorf(ZI_EIO, "file %s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return zi_errorf(ZI_EIO, "file %s: not a regular file", path);
    }
    f->path = strdup(path);
    if (!f->path) {
        close(fd);
        return zi_errorf(ZI_ENOMEM, "out of memory");
    }
    f->len = (size_t)sb.st_size;
    if (f->len > 0) {
        void *p = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(f->path);
            f->path = NULL;
            return zi_errorf(ZI_EIO, "file %s: mmap failed: %s", path, strerror(e));
        }
        f->base = p;
        f->mapped = 1;
    } else {
        f->base = (const uint8_t *)"";
    }
    close(fd);
    st->nfiles++;
    return ZI_OK;
}

/* Ends opening a one-file set: when rc (the loading step's status) is ZI_OK, parses file 0's
 * header and builds the index, then hands st to *out; on any failure closes st. */
static int zi_st_open_single_finish(zi_st *st, int rc, zi_st **out)
{
    if (!rc)
        rc = zi_st_parse_file(st, 0);
    if (!rc)
        rc = zi_st_index(st);
    if (rc) {
        zi_st_close(st);
        return rc;
    }
    *out = st;
    return ZI_OK;
}

int zi_st_open_buffer(const void *buf, size_t len, const char *label, zi_st **out)
{
    *out = NULL;
    zi_st *st = NULL;
    int rc = zi_st_new(label, 1, &st);
    if (rc)
        return rc;
    zi_st_file *f = &st->files[0];
    f->path = strdup(st->label);
    if (!f->path) {
        zi_st_close(st);
        return zi_errorf(ZI_ENOMEM, "out of memory");
    }
    f->base = buf ? buf : (const void *)"";
    f->len = buf ? len : 0;
    st->nfiles = 1;
    return zi_st_open_single_finish(st, ZI_OK, out);
}

static int zi_st_open_single(const char *path, zi_st **out)
{
    zi_st *st = NULL;
    int rc = zi_st_new(path, 1, &st);
    if (rc)
        return rc;
    return zi_st_open_single_finish(st, zi_st_map(st, path), out);
}

/* A shard name from weight_map must be a plain file name in the index's folder. */
static int zi_st_shard_name_ok(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int zi_st_open_index(const char *path, zi_st **out)
{
    cJSON *root = NULL;
    zi_st *st = NULL;
    const char **shards = NULL;
    int rc = zi_json_load_file(path, ZI_ST_INDEX_MAX_BYTES, &root);
    if (rc)
        return rc;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        rc = zi_errorf(ZI_EFORMAT, "file %s: key weight_map: missing or not an object", path);
        goto err;
    }
    size_t nent = (size_t)cJSON_GetArraySize(wm), nshards = 0;
    shards = calloc(nent ? nent : 1, sizeof *shards);
    if (!shards) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto err;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e) || !zi_st_shard_name_ok(e->valuestring)) {
            rc = zi_errorf(ZI_EFORMAT,
                           "file %s: tensor %s: weight_map value must be a shard file name in "
                           "the same folder",
                           path, e->string ? e->string : "");
            goto err;
        }
        size_t k = 0;
        while (k < nshards && strcmp(shards[k], e->valuestring) != 0)
            k++;
        if (k == nshards)
            shards[nshards++] = e->valuestring;
    }
    if (nshards == 0) {
        rc = zi_errorf(ZI_EFORMAT, "file %s: key weight_map: empty", path);
        goto err;
    }
    rc = zi_st_new(path, nshards, &st);
    if (rc)
        goto err;
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path) : 1;
    const char *dir = slash ? path : ".";
    for (size_t k = 0; k < nshards; k++) {
        char sp[4096];
        int w = snprintf(sp, sizeof sp, "%.*s/%s", dirlen, dir, shards[k]);
        if (w < 0 || (size_t)w >= sizeof sp) {
            rc = zi_errorf(ZI_EINVAL, "file %s: shard path too long", path);
            goto err;
        }
        rc = zi_st_map(st, sp);
        if (!rc)
            rc = zi_st_parse_file(st, st->nfiles - 1);
        if (rc) {
            zi_error_prefix(rc, "index %s", path);
            goto err;
        }
    }
    rc = zi_st_index(st);
    if (rc)
        goto err;
    /* every weight_map entry must be found in the shard it names */
    cJSON_ArrayForEach(e, wm)
    {
        const zi_st_tensor *t = zi_st_find(st, e->string);
        const char *base = t ? strrchr(t->file, '/') : NULL;
        base = base ? base + 1 : (t ? t->file : NULL);
        if (!t || strcmp(base, e->valuestring) != 0) {
            rc =
                zi_errorf(ZI_EFORMAT, "file %s: tensor %s: listed for shard %s but not found there",
                          path, e->string, e->valuestring);
            goto err;
        }
    }
    free(shards);
    cJSON_Delete(root);
    *out = st;
    return ZI_OK;
err:
    free(shards);
    cJSON_Delete(root);
    zi_st_close(st);
    return rc;
}

static int zi_st_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int zi_st_open(const char *path, zi_st **out)
{
    *out = NULL;
    if (!path)
        return zi_errorf(ZI_EINVAL, "safetensors: NULL path");
    if (zi_st_ends_with(path, ".json"))
        return zi_st_open_index(path, out);
    return zi_st_open_single(path, out);
}

int zi_st_open_dir(const char *dir, zi_st **out)
{
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return zi_errorf(errno == ENOENT ? ZI_ENOTFOUND : ZI_EIO, "folder %s: cannot open: %s", dir,
                         strerror(errno));
    /* Preference: an index json; else the one .safetensors file. Where a folder holds
     * several (e.g. variants like *.fp16.safetensors), the canonical diffusers /
     * transformers names win; otherwise the choice is ambiguous and refused. */
    static const char *const canon_index[] = {"diffusion_pytorch_model.safetensors.index.json",
                                              "model.safetensors.index.json"};
    static const char *const canon_single[] = {"diffusion_pytorch_model.safetensors",
                                               "model.safetensors"};
    char index[256] = "", single[256] = "";
    int nindex = 0, nsingle = 0, canon_i = 0, canon_s = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (nm[0] == '.' || strlen(nm) >= sizeof index)
            continue;
        int is_index = zi_st_ends_with(nm, ".safetensors.index.json");
        int is_single = zi_st_ends_with(nm, ".safetensors");
        if (!is_index && !is_single)
            continue;
        const char *const *canon = is_index ? canon_index : canon_single;
        int c = strcmp(nm, canon[0]) == 0 || strcmp(nm, canon[1]) == 0;
        char *slot = is_index ? index : single;
        int *cnt = is_index ? &nindex : &nsingle;
        int *cflag = is_index ? &canon_i : &canon_s;
        (*cnt)++;
        if (c || (!*cflag && *cnt == 1)) {
            snprintf(slot, sizeof index, "%s", nm);
            *cflag |= c;
        }
    }
    closedir(d);
    const char *pick = NULL;
    if (nindex)
        pick = (nindex == 1 || canon_i) ? index : NULL;
    else if (nsingle)
        pick = (nsingle == 1 || canon_s) ? single : NULL;
    if (!pick) {
        if (nindex || nsingle)
            return zi_errorf(ZI_EFORMAT,
                             "folder %s: several %s files and none with a standard name", dir,
                             nindex ? "*.safetensors.index.json" : "*.safetensors");
        return zi_errorf(ZI_ENOTFOUND, "folder %s: no *.safetensors or *.safetensors.index.json",
                         dir);
    }
    char path[4096];
    int w = snprintf(path, sizeof path, "%s/%s", dir, pick);
    if (w < 0 || (size_t)w >= sizeof path)
        return zi_errorf(ZI_EINVAL, "folder %s: path too long", dir);
    return zi_st_open(path, out);
}

void zi_st_close(zi_st *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        free((char *)st->tensors[i].name);
    free(st->tensors);
    free(st->slots);
    if (st->files) {
        /* a failed zi_st_map leaves no entry behind, so every counted file is complete */
        for (size_t i = 0; i < st->nfiles; i++) {
            if (st->files[i].mapped)
                munmap((void *)st->files[i].base, st->files[i].len);
            free(st->files[i].path);
        }
        free(st->files);
    }
    free(st->label);
    free(st);
}

/* ---- typed access ---- */

static int zi_st_is_float(zi_dtype dt)
{
    return dt == ZI_F32 || dt == ZI_BF16 || dt == ZI_F16 || dt == ZI_F8_E4M3;
}

static void zi_st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

int zi_st_get(const zi_st *st, const char *name, int ndim, const int64_t *shape,
              const zi_st_tensor **out)
{
    *out = NULL;
    if (!st || !name)
        return zi_errorf(ZI_EINVAL, "safetensors: NULL argument");
    const zi_st_tensor *t = zi_st_find(st, name);
    if (!t)
        return zi_errorf(ZI_ENOTFOUND, "file %s: tensor %s: not found", st->label, name);
    if (!zi_st_is_float(t->dtype))
        return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: dtype %s is not a float type", t->file,
                         t->name, zi_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char have[160], want[160];
        zi_st_shape_str(have, sizeof have, t->ndim, t->shape);
        zi_st_shape_str(want, sizeof want,
                        ndim < 0             ? 0
                        : ndim > ZI_MAX_DIMS ? ZI_MAX_DIMS
                                             : ndim,
                        shape);
        return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: shape %s, expected %s", t->file, t->name,
                         have, want);
    }
    *out = t;
    return ZI_OK;
}

int zi_st_read_f32(const zi_st_tensor *t, float *dst)
{
    if (!zi_st_is_float(t->dtype))
        return zi_errorf(ZI_EFORMAT, "file %s: tensor %s: dtype %s is not a float type", t->file,
                         t->name, zi_dtype_name(t->dtype));
    size_t n = t->nbytes / zi_dtype_size(t->dtype);
    return zi_convert_to_f32(dst, t->data, t->dtype, n);
}

/* ---- writing ---- */

int zi_st_write(const char *path, size_t n, const char *const *names, const zi_tensor *t)
{
    cJSON *root = cJSON_CreateObject();
    char *hdr = NULL;
    FILE *f = NULL;
    char tmp[4096];
    int rc = ZI_OK;
    int w = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (w < 0 || (size_t)w >= sizeof tmp) {
        cJSON_Delete(root);
        return zi_errorf(ZI_EINVAL, "file %s: path too long", path);
    }
    if (!root) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto out;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !names[i][0] || strcmp(names[i], "__metadata__") == 0 ||
            cJSON_GetObjectItemCaseSensitive(root, names[i])) {
            rc = zi_errorf(ZI_EINVAL, "file %s: tensor %s: empty, reserved or duplicate name", path,
                           names[i] ? names[i] : "(null)");
            goto out;
        }
        if ((unsigned)t[i].dtype >= ZI_DTYPE_COUNT || t[i].ndim < 0 || t[i].ndim > ZI_MAX_DIMS) {
            rc = zi_errorf(ZI_EINVAL, "file %s: tensor %s: bad dtype or ndim", path, names[i]);
            goto out;
        }
        size_t nb = zi_tensor_nbytes(&t[i]);
        if (nb && !t[i].data) {
            rc = zi_errorf(ZI_EINVAL, "file %s: tensor %s: no data", path, names[i]);
            goto out;
        }
        cJSON *e = cJSON_AddObjectToObject(root, names[i]);
        cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
        cJSON *offs = e ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
        if (!e || !cJSON_AddStringToObject(e, "dtype", zi_dtype_name(t[i].dtype)) || !shape ||
            !offs) {
            rc = zi_errorf(ZI_ENOMEM, "out of memory");
            goto out;
        }
        for (int d = 0; d < t[i].ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t[i].shape[d]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    hdr = cJSON_PrintUnformatted(root);
    if (!hdr) {
        rc = zi_errorf(ZI_ENOMEM, "out of memory");
        goto out;
    }
    size_t hl = strlen(hdr);
    size_t pad = (8 - hl % 8) % 8; /* keeps the data 8-byte aligned, as safetensors does */
    uint8_t lenb[8];
    uint64_t hl64 = hl + pad;
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(hl64 >> (8 * i));
    f = fopen(tmp, "wb");
    if (!f) {
        rc = zi_errorf(ZI_EIO, "file %s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    int ok = fwrite(lenb, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = 0; ok && i < pad; i++)
        ok = fputc(' ', f) != EOF;
    for (size_t i = 0; ok && i < n; i++) {
        size_t nb = zi_tensor_nbytes(&t[i]);
        ok = nb == 0 || fwrite(t[i].data, 1, nb, f) == nb;
    }
    if (fclose(f) != 0)
        ok = 0;
    f = NULL;
    if (!ok) {
        rc = zi_errorf(ZI_EIO, "file %s: write failed: %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        rc = zi_errorf(ZI_EIO, "file %s: cannot rename from %s: %s", path, tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
out:
    if (f) {
        fclose(f);
        unlink(tmp);
    }
    free(hdr);
    cJSON_Delete(root);
    return rc;
}
