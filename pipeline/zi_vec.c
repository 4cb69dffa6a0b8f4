/*
 * zi_vec.c - the doubling realloc behind zi_grow() (see zi_vec.h).
 */
#include "zi_vec.h"

#include <stdint.h>
#include <stdlib.h>

void *zi_grow(void *p, size_t *cap, size_t need, size_t elem, size_t first)
{
    if (need <= *cap)
        return p;
    /* double what is there (or start at `first`), then keep doubling until need fits */
    size_t ncap = *cap ? *cap : (first ? first : 1);
    if (*cap) {
        if (ncap > SIZE_MAX / 2)
            return NULL;
        ncap *= 2;
    }
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return NULL;
        ncap *= 2;
    }
    if (elem && ncap > SIZE_MAX / elem)
        return NULL;
    void *np = realloc(p, ncap * elem);
    if (!np)
        return NULL;
    *cap = ncap;
    return np;
}
