/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors header parser.
 *
 * Any byte string must either open (and then every tensor lies inside the buffer, has
 * nbytes == numel * dtype size, and is found again by its name with or without "model.")
 * or fail with a message; never crash, read out of bounds or leak. The corpus
 * (tests/fuzz/corpus/fuzz_safetensors/) is replayed by ctest.
 */
#include "safetensors.h"
#include "zi_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    zi_st *st = NULL;
    if (zi_st_open_buffer(data, size, "fuzz.safetensors", &st) != ZI_OK) {
        if (st || zi_errmsg()[0] == '\0')
            abort(); /* a failure returns no handle and says why */
        return 0;
    }
    const uint8_t *end = data + size;
    for (size_t i = 0; i < zi_st_count(st); i++) {
        const zi_st_tensor *t = zi_st_at(st, i);
        const uint8_t *p = t->data;
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++)
            numel *= (uint64_t)t->shape[d];
        if (p < data || p > end || t->nbytes > (size_t)(end - p) ||
            numel * zi_dtype_size(t->dtype) != t->nbytes)
            abort();
        if (zi_st_find(st, t->name) != t) /* names are unique after stripping "model." */
            abort();
        char pref[512];
        if (strncmp(t->name, "model.", 6) != 0 && strlen(t->name) < 400) {
            snprintf(pref, sizeof pref, "model.%s", t->name);
            if (zi_st_find(st, pref) != t)
                abort();
        }
        const zi_st_tensor *g;
        int rc = zi_st_get(st, t->name, t->ndim, t->shape, &g);
        int is_float = t->dtype == ZI_F32 || t->dtype == ZI_BF16 || t->dtype == ZI_F16 ||
                       t->dtype == ZI_F8_E4M3;
        if ((rc == ZI_OK) != is_float || (rc == ZI_OK && g != t))
            abort();
        if (is_float && numel <= (1u << 16)) {
            float *f = malloc((size_t)(numel ? numel : 1) * sizeof *f);
            if (f && zi_st_read_f32(t, f) != ZI_OK)
                abort();
            free(f);
        }
        unsigned sum = 0; /* touch every byte: ASan checks the bounds */
        for (size_t k = 0; k < t->nbytes; k++)
            sum += p[k];
        (void)sum;
    }
    zi_st_close(st);
    return 0;
}
