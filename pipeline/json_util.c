/*
 * json_util.c - cJSON helpers with errors that name the file and the key.
 *
 * cJSON's own error pointer is a process global; the parse here uses the
 * return_parse_end argument instead, so errors are thread-safe.
 */
#include "json_util.h"
#include "zi_err.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int zi_json_read_file(const char *path, size_t max_bytes, char **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return zi_errorf(errno == ENOENT ? ZI_ENOTFOUND : ZI_EIO, "file %s: cannot open: %s", path,
                         strerror(errno));
    int rc = ZI_OK;
    char *b = NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        rc = zi_errorf(ZI_EIO, "file %s: cannot seek: %s", path, strerror(errno));
        goto out;
    }
    long sz = ftell(f);
    if (sz < 0 || fseek(f, 0, SEEK_SET) != 0) {
        rc = zi_errorf(ZI_EIO, "file %s: cannot size: %s", path, strerror(errno));
        goto out;
    }
    if ((unsigned long)sz > max_bytes) {
        rc = zi_errorf(ZI_EFORMAT, "file %s: %ld bytes, more than the %zu allowed", path, sz,
                       max_bytes);
        goto out;
    }
    b = malloc((size_t)sz + 1);
    if (!b) {
        rc = zi_errorf(ZI_ENOMEM, "file %s: out of memory (%ld bytes)", path, sz);
        goto out;
    }
    if (sz > 0 && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        rc = zi_errorf(ZI_EIO, "file %s: short read", path);
        goto out;
    }
    b[sz] = '\0';
    *buf = b;
    *len = (size_t)sz;
    b = NULL;
out:
    free(b);
    fclose(f);
    return rc;
}

int zi_json_parse(const char *buf, size_t len, const char *label, cJSON **out)
{
    *out = NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!root) {
        size_t off = (end && end >= buf && end <= buf + len) ? (size_t)(end - buf) : 0;
        return zi_errorf(ZI_EFORMAT, "file %s: invalid JSON near byte %zu", label, off);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return zi_errorf(ZI_EFORMAT, "file %s: JSON root is not an object", label);
    }
    *out = root;
    return ZI_OK;
}

int zi_json_load_file(const char *path, size_t max_bytes, cJSON **out)
{
    char *buf;
    size_t len;
    *out = NULL;
    int rc = zi_json_read_file(path, max_bytes, &buf, &len);
    if (rc)
        return rc;
    rc = zi_json_parse(buf, len, path, out);
    free(buf);
    return rc;
}

int zi_json_is_u53(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > 9007199254740992.0 || floor(d) != d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

/* The item for `key`, or NULL when absent or null (an optional key takes its default). */
static const cJSON *zi_json_present(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* The item for a required `key`; a missing (or null) key is an error. */
static int zi_json_item(const cJSON *obj, const char *key, const char *file, const cJSON **out)
{
    *out = zi_json_present(obj, key);
    if (!*out)
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: missing", file, key);
    return ZI_OK;
}

static int zi_json_to_int(const cJSON *v, const char *key, const char *file, int *out)
{
    if (!cJSON_IsNumber(v))
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: expected an integer", file, key);
    double d = v->valuedouble;
    if (!(d >= (double)INT_MIN && d <= (double)INT_MAX) || floor(d) != d)
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: %g is not an integer in range", file, key,
                         d);
    *out = (int)d;
    return ZI_OK;
}

int zi_json_int(const cJSON *obj, const char *key, const char *file, int *out)
{
    const cJSON *v;
    int rc = zi_json_item(obj, key, file, &v);
    return rc ? rc : zi_json_to_int(v, key, file, out);
}

int zi_json_int_opt(const cJSON *obj, const char *key, const char *file, int def, int *out)
{
    const cJSON *v = zi_json_present(obj, key);
    if (!v)
        *out = def;
    return v ? zi_json_to_int(v, key, file, out) : ZI_OK;
}

static int zi_json_to_double(const cJSON *v, const char *key, const char *file, double *out)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: expected a number", file, key);
    *out = v->valuedouble;
    return ZI_OK;
}

int zi_json_double(const cJSON *obj, const char *key, const char *file, double *out)
{
    const cJSON *v;
    int rc = zi_json_item(obj, key, file, &v);
    return rc ? rc : zi_json_to_double(v, key, file, out);
}

int zi_json_double_opt(const cJSON *obj, const char *key, const char *file, double def, double *out)
{
    const cJSON *v = zi_json_present(obj, key);
    if (!v)
        *out = def;
    return v ? zi_json_to_double(v, key, file, out) : ZI_OK;
}

static int zi_json_to_bool(const cJSON *v, const char *key, const char *file, int *out)
{
    if (!cJSON_IsBool(v))
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: expected true or false", file, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return ZI_OK;
}

int zi_json_bool(const cJSON *obj, const char *key, const char *file, int *out)
{
    const cJSON *v;
    int rc = zi_json_item(obj, key, file, &v);
    return rc ? rc : zi_json_to_bool(v, key, file, out);
}

int zi_json_bool_opt(const cJSON *obj, const char *key, const char *file, int def, int *out)
{
    const cJSON *v = zi_json_present(obj, key);
    if (!v)
        *out = def;
    return v ? zi_json_to_bool(v, key, file, out) : ZI_OK;
}

int zi_json_int_array(const cJSON *obj, const char *key, const char *file, int *out, int max,
                      int *n)
{
    const cJSON *v;
    int rc = zi_json_item(obj, key, file, &v);
    if (rc)
        return rc;
    if (!cJSON_IsArray(v))
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: expected an array of integers", file, key);
    int count = cJSON_GetArraySize(v);
    if (count < 1 || count > max)
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: %d elements, expected 1 to %d", file, key,
                         count, max);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        char sub[256];
        snprintf(sub, sizeof sub, "%s[%d]", key, i);
        rc = zi_json_to_int(e, sub, file, &out[i]);
        if (rc)
            return rc;
        i++;
    }
    *n = count;
    return ZI_OK;
}

int zi_json_string(const cJSON *obj, const char *key, const char *file, const char **out)
{
    const cJSON *v;
    int rc = zi_json_item(obj, key, file, &v);
    if (rc)
        return rc;
    if (!cJSON_IsString(v))
        return zi_errorf(ZI_EFORMAT, "file %s: key %s: expected a string", file, key);
    *out = v->valuestring;
    return ZI_OK;
}

static int zi_json_watched(const char *key, const char *const *watch)
{
    if (!watch)
        return 1;
    for (; *watch; watch++)
        if (strcmp(key, *watch) == 0)
            return 1;
    return 0;
}

/* One pass with the structure JSON text has: strings (escapes stepped over in pairs, so that
 * "\\u0000", an escaped backslash and text, is not an escaped NUL), nesting depth, and at
 * depth 1 of an object which member's name or value the scan is in. */
int zi_json_find_cut(const char *s, size_t n, const char *const *watch, zi_json_cut *out)
{
    int depth = 0, in_str = 0, str_is_name = 0, want_name = 0, in_value = 0, name_ok = 0;
    size_t name_at = 0;
    char name[sizeof out->key] = "";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int raw = c < 0x20 && c != '\t' && c != '\n' && c != '\r';
        int nul = in_str && c == '\\' && i + 5 < n && s[i + 1] == 'u' &&
                  memcmp(s + i + 2, "0000", 4) == 0;
        if (raw || nul) {
            int member = depth >= 1 && in_value && name_ok && !(in_str && str_is_name);
            if (raw || !member || zi_json_watched(name, watch)) {
                out->at = i;
                out->raw = raw;
                snprintf(out->key, sizeof out->key, "%s", member ? name : "");
                return 1;
            }
        }
        if (in_str) {
            if (c == '\\') {
                if (str_is_name)
                    name_ok = 0; /* an escaped name: not comparable with plain names */
                i++;
            } else if (c == '"') {
                in_str = 0;
                if (str_is_name && name_ok) {
                    size_t len = i - name_at;
                    if (len >= sizeof name)
                        name_ok = 0;
                    else {
                        memcpy(name, s + name_at, len);
                        name[len] = '\0';
                    }
                }
            }
            continue;
        }
        switch (c) {
        case '"':
            in_str = 1;
            str_is_name = depth == 1 && want_name;
            if (str_is_name) {
                want_name = 0;
                name_ok = 1;
                name_at = i + 1;
            }
            break;
        case '{':
        case '[':
            if (++depth == 1 && c == '{')
                want_name = 1;
            break;
        case '}':
        case ']':
            depth--;
            break;
        case ':':
            if (depth == 1)
                in_value = 1;
            break;
        case ',':
            if (depth == 1) {
                in_value = 0;
                want_name = 1;
            }
            break;
        default:
            break;
        }
    }
    return 0;
}
