/*
 * backend_check.h - argument checks shared by every backend (backend_cpu.c,
 * kernels/cuda_backend.c).
 *
 * The shape contract of each op is the one in backend.h and does not depend on the device,
 * so it is checked once, here: positive dimensions, the op's own rules (groups divide
 * channels, even head dim, ...), and every tensor argument present, of a storage dtype the
 * backend computes on, and holding enough elements. A failed check records the sticky
 * error with zi_backend_fail() (messages "op: what ...") and returns nonzero; after an
 * earlier error every check fails at once, which makes the op a no-op.
 *
 * What is not here: checks that depend on where the data lives (aliasing of out and in:
 * pointer equality on the host, byte-range overlap on a device) and device limits.
 *
 * Flags (`fl`): ZI_BE_OWN - tensors must belong to this backend (t->be == be); a device
 * backend sets it because a host pointer would fault on the device. Accepted dtypes are
 * always F32 and be->act_dtype.
 */
#ifndef ZI_BACKEND_CHECK_H
#define ZI_BACKEND_CHECK_H

#include "backend.h"

#include <stddef.h>
#include <stdint.h>

#define ZI_BE_OWN 1u

/* ---- building blocks ---- */

/* The data of `t` when it holds at least `need` elements of an accepted dtype, else NULL
 * with the sticky error set. `what` names the argument in the message. */
void *zi_be_arg(zi_backend *be, unsigned fl, const char *op, const char *what, const zi_tensor *t,
                size_t need);

/* 0 when every one of the n dims is positive; else -1 with the error set. */
int zi_be_dims(zi_backend *be, const char *op, int n, const int *dims);

/* ---- memory ---- */

/* Validates an alloc request and zeroes *t: on ZI_OK *numel is the element count (each
 * dim >= 0, count * 8 bytes fits size_t). Errors go to zi_errorf ("<name> alloc: ..."). */
int zi_be_alloc_shape(zi_backend *be, zi_tensor *t, int ndim, const int64_t *shape, size_t *numel);

/* Fills an owned tensor of `be` over `data` after zi_be_alloc_shape() accepted the shape. */
void zi_be_tensor_init(zi_backend *be, zi_tensor *t, void *data, zi_dtype dt, int ndim,
                       const int64_t *shape);

/* upload_weight: a file dtype the backends convert from, and a source. zi_errorf. */
int zi_be_check_upload_weight(zi_backend *be, const void *src, zi_dtype src_dt);

/* upload (host src -> dst) and download (src -> host dst) of n elements. zi_errorf. */
int zi_be_check_upload(zi_backend *be, unsigned fl, const zi_tensor *dst, const float *src,
                       size_t n);
int zi_be_check_download(zi_backend *be, unsigned fl, const float *dst, const zi_tensor *src,
                         size_t n);

/* ---- ops: each checks the arguments of the backend.h op of the same name ---- */

int zi_be_check_linear(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                       const zi_tensor *w, const zi_tensor *b, int M, int K, int N);
/* also every id inside the table */
int zi_be_check_embedding(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *table,
                          const int32_t *ids, int R, int D);
int zi_be_check_rmsnorm(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                        const zi_tensor *w, int R, int D);
int zi_be_check_layernorm(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                          int R, int D);
int zi_be_check_groupnorm(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                          const zi_tensor *gamma, const zi_tensor *beta, int C, int HW, int G);
int zi_be_check_rope(zi_backend *be, unsigned fl, const zi_tensor *x, const zi_tensor *cos,
                     const zi_tensor *sin, int S, int H, int hd, zi_rope_layout layout);
int zi_be_check_attention(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *q,
                          const zi_tensor *k, const zi_tensor *v, int Sq, int Skv, int H, int KVH,
                          int hd, int causal);
int zi_be_check_mul_row(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                        const zi_tensor *s, int R, int D);
int zi_be_check_gated_add(zi_backend *be, unsigned fl, const zi_tensor *x, const zi_tensor *g,
                          const zi_tensor *y, int R, int D);
int zi_be_check_transpose(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                          int R, int C);
int zi_be_check_conv2d(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                       const zi_tensor *w, const zi_tensor *b, int Ci, int Co, int h, int wd,
                       int k);
int zi_be_check_upsample2x(zi_backend *be, unsigned fl, const zi_tensor *out, const zi_tensor *in,
                           int C, int h, int wd);
int zi_be_check_to_rgb8(zi_backend *be, unsigned fl, const uint8_t *rgb, const zi_tensor *in, int h,
                        int wd);

#endif
