/*
 * safetensors.h - read-only access to safetensors files and sharded checkpoints.
 *
 * Files are mmap'ed; tensor data pointers point into the mapping and stay valid until
 * zi_st_close(). A checkpoint is either one `*.safetensors` file or a
 * `*.safetensors.index.json` whose weight_map names the shards. Names are looked up
 * with an optional leading "model." stripped on both sides. Every header is validated
 * completely at open (length, JSON, dtype, shape, offsets in range and not
 * overlapping): after a successful open, no lookup can read out of bounds.
 */
#ifndef ZI_SAFETENSORS_H
#define ZI_SAFETENSORS_H

#include "tensor.h"

#include <stddef.h>
#include <stdint.h>

typedef struct zi_st_tensor {
    const char *name; /* as stored in the file */
    zi_dtype dtype;
    int ndim;
    int64_t shape[ZI_MAX_DIMS];
    const void *data; /* into the mapping */
    size_t nbytes;
    const char *file; /* path of the shard holding it */
} zi_st_tensor;

typedef struct zi_st zi_st;

/* Opens a .safetensors file or a .safetensors.index.json. */
int zi_st_open(const char *path, zi_st **out);

/* Opens the weights of a checkpoint component folder (e.g. DIR/transformer): the
 * index json when present, else the single *.safetensors file in it. */
int zi_st_open_dir(const char *dir, zi_st **out);

/* Parses a header held in memory (the fuzz entry point): buf = the whole file. */
int zi_st_open_buffer(const void *buf, size_t len, const char *label, zi_st **out);

void zi_st_close(zi_st *st);

size_t zi_st_count(const zi_st *st);
const zi_st_tensor *zi_st_at(const zi_st *st, size_t i);

/* NULL when absent (no error recorded). */
const zi_st_tensor *zi_st_find(const zi_st *st, const char *name);

/* Finds `name` and checks dtype is a float type and the shape equals `shape[ndim]`.
 * Missing or mis-shaped: error naming the file and the tensor. */
int zi_st_get(const zi_st *st, const char *name, int ndim, const int64_t *shape,
              const zi_st_tensor **out);

/* Copies a tensor to f32 host memory (n = numel); converts any float dtype. */
int zi_st_read_f32(const zi_st_tensor *t, float *dst);

/* Writes a single safetensors file with `n` host tensors (names[i], t[i]). */
int zi_st_write(const char *path, size_t n, const char *const *names, const zi_tensor *t);

#endif
