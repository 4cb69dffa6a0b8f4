/*
 * tensor.c - dtype tables and scalar conversions (IEEE round-to-nearest-even).
 */
#include "tensor.h"
#include "zi_err.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} zi_dtypes[ZI_DTYPE_COUNT] = {
    [ZI_F32] = {"F32", 4},         [ZI_BF16] = {"BF16", 2}, [ZI_F16] = {"F16", 2},
    [ZI_F8_E4M3] = {"F8_E4M3", 1}, [ZI_I32] = {"I32", 4},   [ZI_I64] = {"I64", 8},
    [ZI_U8] = {"U8", 1},
};

size_t zi_dtype_size(zi_dtype dt)
{
    return (unsigned)dt < ZI_DTYPE_COUNT ? zi_dtypes[dt].size : 0;
}

const char *zi_dtype_name(zi_dtype dt)
{
    return (unsigned)dt < ZI_DTYPE_COUNT ? zi_dtypes[dt].name : "?";
}

int zi_dtype_from_name(const char *name)
{
    for (int i = 0; i < ZI_DTYPE_COUNT; i++)
        if (strcmp(zi_dtypes[i].name, name) == 0)
            return i;
    return -1;
}

int64_t zi_tensor_numel(const zi_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t zi_tensor_nbytes(const zi_tensor *t)
{
    return (size_t)zi_tensor_numel(t) * zi_dtype_size(t->dtype);
}

zi_tensor zi_tensor_view(const zi_tensor *t, int64_t elem_offset, int ndim, const int64_t *shape)
{
    zi_tensor v = {0};
    v.dtype = t->dtype;
    v.be = t->be;
    v.ndim = ndim;
    int64_t n = 1;
    for (int i = 0; i < ndim && i < ZI_MAX_DIMS; i++) {
        v.shape[i] = shape[i];
        n *= shape[i];
    }
    if (ndim < 0 || ndim > ZI_MAX_DIMS || elem_offset < 0 || elem_offset + n > zi_tensor_numel(t))
        return v; /* data stays NULL: the view does not fit */
    v.data = (char *)t->data + (size_t)elem_offset * zi_dtype_size(t->dtype);
    return v;
}

zi_tensor zi_tensor_host(void *data, zi_dtype dt, int ndim, const int64_t *shape)
{
    zi_tensor t = {0};
    t.data = data;
    t.dtype = dt;
    t.ndim = ndim;
    for (int i = 0; i < ndim && i < ZI_MAX_DIMS; i++)
        t.shape[i] = shape[i];
    return t;
}

float zi_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t zi_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float zi_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t zi_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (absu >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (absu < 0x38800000u) { /* below the smallest normal: subnormal or zero */
        float a;
        memcpy(&a, &absu, 4);
        /* scale so that one f16 subnormal ulp (2^-24) is 1.0, round to nearest even */
        float r = nearbyintf(a * 16777216.0f);
        return (uint16_t)(sign | (uint16_t)r);
    }
    uint32_t man = absu & 0x7fffffu;
    uint32_t exp = (absu >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

float zi_f8e4m3_to_f32(uint8_t v)
{
    uint32_t sign = v >> 7;
    uint32_t exp = (v >> 3) & 0xf;
    uint32_t man = v & 0x7;
    float r;
    if (exp == 0xf && man == 0x7)
        r = NAN;
    else if (exp == 0)
        r = ldexpf((float)man, -9); /* subnormal: man/8 * 2^-6 */
    else
        r = ldexpf(1.0f + (float)man / 8.0f, (int)exp - 7);
    return sign ? -r : r;
}

int zi_convert_to_f32(float *dst, const void *src, zi_dtype dt, size_t n)
{
    switch (dt) {
    case ZI_F32:
        memcpy(dst, src, n * 4);
        return ZI_OK;
    case ZI_BF16:
    case ZI_F16: {
        /* src may be unaligned (a safetensors payload): read each half through memcpy */
        const uint8_t *p = src;
        int bf = dt == ZI_BF16; /* loop-invariant: predicted, or unswitched by the compiler */
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = bf ? zi_bf16_to_f32(h) : zi_f16_to_f32(h);
        }
        return ZI_OK;
    }
    case ZI_F8_E4M3: {
        const uint8_t *p = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = zi_f8e4m3_to_f32(p[i]);
        return ZI_OK;
    }
    default:
        return zi_errorf(ZI_EINVAL, "cannot convert dtype %s to F32", zi_dtype_name(dt));
    }
}

void zi_round_bf16_inplace(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = zi_bf16_to_f32(zi_f32_to_bf16(x[i]));
}
