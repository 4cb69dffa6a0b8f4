/*
 * json_util.h - small cJSON helpers: read a file, parse with a located error, and typed
 * key access whose errors name the file and the key.
 *
 * Every getter records "file F: key K: ..." with zi_errorf() and returns ZI_EFORMAT on a
 * missing key or a wrong type. The *_opt variants return the default when the key is
 * absent or JSON null. Integers must be integral JSON numbers within the C type's range.
 */
#ifndef ZI_JSON_UTIL_H
#define ZI_JSON_UTIL_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* Reads a whole file into a NUL-terminated heap buffer (caller frees). Files larger than
 * max_bytes are refused (ZI_EFORMAT); a missing file is ZI_ENOTFOUND. */
int zi_json_read_file(const char *path, size_t max_bytes, char **buf, size_t *len);

/* Parses `len` bytes (need not be NUL-terminated). On a syntax error the message names
 * `label` and the byte offset. The root must be an object. */
int zi_json_parse(const char *buf, size_t len, const char *label, cJSON **out);

/* zi_json_read_file + zi_json_parse. */
int zi_json_load_file(const char *path, size_t max_bytes, cJSON **out);

/* An integral, non-negative JSON number below 2^53 (exactly representable). */
int zi_json_is_u53(const cJSON *v, uint64_t *out);

int zi_json_int(const cJSON *obj, const char *key, const char *file, int *out);
int zi_json_int_opt(const cJSON *obj, const char *key, const char *file, int def, int *out);
int zi_json_double(const cJSON *obj, const char *key, const char *file, double *out);
int zi_json_double_opt(const cJSON *obj, const char *key, const char *file, double def,
                       double *out);
int zi_json_bool(const cJSON *obj, const char *key, const char *file, int *out);
int zi_json_bool_opt(const cJSON *obj, const char *key, const char *file, int def, int *out);

/* A JSON array of integers with 1..max elements: out[0..*n-1]. */
int zi_json_int_array(const cJSON *obj, const char *key, const char *file, int *out, int max,
                      int *n);

/* A JSON string (pointer into the tree). */
int zi_json_string(const cJSON *obj, const char *key, const char *file, const char **out);

/* A character of a JSON text that cJSON accepts but that would cut a parsed string short or
 * that JSON does not allow: the escape \u0000 inside a string (cJSON ends the string there:
 * a job id "a\u0000/.." reads as "a"), or a raw byte below 0x20 other than tab, LF and CR
 * (cJSON takes such bytes, a raw NUL included, as whitespace or as string content). */
typedef struct zi_json_cut {
    size_t at; /* byte offset */
    int raw;   /* 1: a raw control byte, s[at]; 0: the escape \u0000 */
    /* the top-level object member whose value holds it; "" when it lies elsewhere (in a
     * member name, between members, in a text that is not an object) or when the member's
     * name holds an escape (so that it cannot be compared with a plain name) */
    char key[64];
} zi_json_cut;

/* Scans the n bytes of a JSON text cJSON has parsed for the characters above: 1 with *out
 * describing the first one reported, 0 when there is none. Raw control bytes are always
 * reported; an escaped NUL inside the value of a top-level member is reported only when the
 * member's name is in `watch` (a NULL-terminated list; NULL: every member), so that callers
 * can ignore members they do not read. */
int zi_json_find_cut(const char *s, size_t n, const char *const *watch, zi_json_cut *out);

#endif
