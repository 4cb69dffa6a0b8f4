/*
 * tensor.h - dtypes, element conversion and the tensor handle shared by all backends.
 *
 * A zi_tensor is a view: a pointer into backend memory (host memory for the CPU
 * backend, device memory for CUDA) plus dtype and shape. It owns nothing unless it was
 * made by zi_backend->alloc(); views made with zi_tensor_view() never own.
 * Shapes are row-major (C order), at most ZI_MAX_DIMS dimensions.
 */
#ifndef ZI_TENSOR_H
#define ZI_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define ZI_MAX_DIMS 8

typedef enum zi_dtype {
    ZI_F32 = 0,
    ZI_BF16,
    ZI_F16,
    ZI_F8_E4M3,
    ZI_I32,
    ZI_I64,
    ZI_U8,
    ZI_DTYPE_COUNT
} zi_dtype;

struct zi_backend;

typedef struct zi_tensor {
    void *data; /* backend memory; NULL for an empty tensor */
    zi_dtype dtype;
    int ndim;
    int64_t shape[ZI_MAX_DIMS];
    struct zi_backend *be; /* backend that owns `data`, NULL for host-only tensors */
    int owned;             /* 1 when made by be->alloc and must be freed with be->free */
} zi_tensor;

/* Size in bytes of one element (F8_E4M3: 1). */
size_t zi_dtype_size(zi_dtype dt);

/* Safetensors name of a dtype ("F32", "BF16", ...), and back (-1 when unknown). */
const char *zi_dtype_name(zi_dtype dt);
int zi_dtype_from_name(const char *name);

/* Number of elements (product of the shape; 1 for ndim 0). */
int64_t zi_tensor_numel(const zi_tensor *t);
size_t zi_tensor_nbytes(const zi_tensor *t);

/*
 * A non-owning view of `t` starting `elem_offset` elements in, with a new shape.
 * The caller guarantees the view fits inside `t` (checked: returns a view with
 * data == NULL when it does not).
 */
zi_tensor zi_tensor_view(const zi_tensor *t, int64_t elem_offset, int ndim, const int64_t *shape);

/* A host tensor over caller memory (be = NULL, not owned). */
zi_tensor zi_tensor_host(void *data, zi_dtype dt, int ndim, const int64_t *shape);

/* Scalar conversions. bf16/f16 from f32 round to nearest even; NaN stays NaN. */
float zi_bf16_to_f32(uint16_t h);
uint16_t zi_f32_to_bf16(float f);
float zi_f16_to_f32(uint16_t h);
uint16_t zi_f32_to_f16(float f);
float zi_f8e4m3_to_f32(uint8_t v);

/* Converts n elements of `src` (dtype `dt`, float types only) to f32. */
int zi_convert_to_f32(float *dst, const void *src, zi_dtype dt, size_t n);

/* Rounds every element of an f32 buffer to the nearest bf16 (in place). */
void zi_round_bf16_inplace(float *x, size_t n);

#endif
