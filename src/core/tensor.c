/* tensor.c: tensor headers, heap tensors, shape checks and half-precision conversion. */
#include "sd/core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

size_t sd_dtype_size(sd_dtype t) {
    switch (t) {
    case SD_F32: return 4;
    case SD_F16: return 2;
    case SD_BF16: return 2;
    case SD_F64: return 8;
    case SD_I64: return 8;
    case SD_I32: return 4;
    case SD_U8: return 1;
    case SD_BOOL: return 1;
    }
    return 0;
}

const char *sd_dtype_name(sd_dtype t) {
    switch (t) {
    case SD_F32: return "F32";
    case SD_F16: return "F16";
    case SD_BF16: return "BF16";
    case SD_F64: return "F64";
    case SD_I64: return "I64";
    case SD_I32: return "I32";
    case SD_U8: return "U8";
    case SD_BOOL: return "BOOL";
    }
    return "?";
}

int64_t sd_shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

int64_t sd_numel(const sd_tensor *t) { return sd_shape_numel(t->ndim, t->shape); }

size_t sd_nbytes(const sd_tensor *t) { return (size_t)sd_numel(t) * sd_dtype_size(t->dtype); }

const char *sd_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "(");
    for (int i = 0; i < ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (off < n) snprintf(buf + off, n - off, ")");
    return buf;
}

int sd_same_shape(const sd_tensor *a, const sd_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

static void header_init(sd_tensor *t, void *data, sd_dtype dtype, int ndim, const int64_t *shape) {
    memset(t, 0, sizeof *t);
    t->data = data;
    t->dtype = dtype;
    t->ndim = ndim;
    t->device = SD_DEVICE_CPU;
    t->tape_index = -1;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
}

sd_tensor *sd_tensor_new(sd_dtype dtype, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > SD_MAX_DIMS) {
        sd_fail(SD_ERR_INTERNAL, "sd_tensor_new: %d dimensions (max %d)", ndim, SD_MAX_DIMS);
        return NULL;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            sd_fail(SD_ERR_INTERNAL, "sd_tensor_new: negative dimension");
            return NULL;
        }
    sd_tensor *t = malloc(sizeof *t);
    size_t bytes = (size_t)sd_shape_numel(ndim, shape) * sd_dtype_size(dtype);
    void *data = calloc(1, bytes ? bytes : 1);
    if (!t || !data) {
        free(t);
        free(data);
        sd_fail(SD_ERR_OOM, "out of host memory allocating %zu bytes", bytes);
        return NULL;
    }
    header_init(t, data, dtype, ndim, shape);
    t->owns_data = 1;
    return t;
}

sd_tensor *sd_tensor_new4(sd_dtype dtype, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_tensor_new(dtype, ndim, shape);
}

sd_tensor *sd_tensor_clone(const sd_tensor *t) {
    sd_tensor *c = sd_tensor_new(t->dtype, t->ndim, t->shape);
    if (!c) return NULL;
    memcpy(c->data, t->data, sd_nbytes(t));
    memcpy(c->name, t->name, sizeof c->name);
    return c;
}

static sd_device_free_fn device_free;

sd_device_free_fn sd_set_device_free(sd_device_free_fn release) {
    const sd_device_free_fn previous = device_free;
    device_free = release;
    return previous;
}

void sd_tensor_free(sd_tensor *t) {
    if (!t) return;
    if (t->owns_data) {
        if (t->device == SD_DEVICE_CPU)
            free(t->data);
        else if (device_free)
            device_free(t->data, t->device);
    }
    free(t); /* t->grad lives in an arena and is released with it */
}

void sd_tensor_set_name(sd_tensor *t, const char *name) {
    snprintf(t->name, sizeof t->name, "%s", name ? name : "");
}

sd_tensor sd_tensor_wrap(void *data, sd_dtype dtype, int ndim, const int64_t *shape) {
    sd_tensor t;
    header_init(&t, data, dtype, ndim, shape);
    return t;
}

sd_tensor sd_view(const sd_tensor *t, int ndim, const int64_t *shape) {
    sd_tensor v = *t;
    v.owns_data = 0;
    v.grad = NULL;
    v.requires_grad = 0; /* a view is never a leaf: the nn layer records it as a node instead */
    v.tape_index = -1;
    int same = ndim == t->ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] == t->shape[i];
    v.channels_last = same ? t->channels_last : 0; /* a reshape reads memory in NCHW order (the nn
                                                    * layer converts a channels-last map first) */
    v.ndim = ndim;
    for (int i = 0; i < ndim; i++) v.shape[i] = shape[i];
    return v;
}

sd_status sd_check_shape(const sd_tensor *t, const char *what, sd_dtype dtype, int ndim,
                         const int64_t *shape) {
    char want[128], got[128];
    if (!t) return sd_fail(SD_ERR_MISSING, "%s: tensor is missing", what);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && shape[i] != t->shape[i]) ok = 0;
    if (!ok) {
        int64_t shown[SD_MAX_DIMS];
        for (int i = 0; i < ndim; i++) shown[i] = shape[i];
        return sd_fail(SD_ERR_SHAPE, "%s: expected shape %s, got %s", what,
                       sd_shape_str(ndim, shown, want, sizeof want),
                       sd_shape_str(t->ndim, t->shape, got, sizeof got));
    }
    if (t->dtype != dtype)
        return sd_fail(SD_ERR_SHAPE, "%s: expected dtype %s, got %s", what, sd_dtype_name(dtype),
                       sd_dtype_name(t->dtype));
    return SD_OK;
}

/* IEEE binary16 <-> binary32, bit-exact (handles subnormals, inf, nan). */
float sd_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t sd_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow after rounding */
    if (absx < 0x38800000u) { /* result is subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 + (113 - e) */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = absx - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t half = r >> 13;
    uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) half++;
    return (uint16_t)(sign | half);
}

float sd_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t sd_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
    uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)((x + rounding) >> 16);
}

sd_status sd_convert_to_f32(float *dst, const void *src, sd_dtype src_dtype, int64_t n) {
    switch (src_dtype) {
    case SD_F32:
        if ((const void *)dst != src) memcpy(dst, src, (size_t)n * 4);
        return SD_OK;
    case SD_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = sd_f16_to_f32(s[i]);
        return SD_OK;
    }
    case SD_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = sd_bf16_to_f32(s[i]);
        return SD_OK;
    }
    case SD_F64: {
        const double *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
        return SD_OK;
    }
    default:
        return sd_fail(SD_ERR_SHAPE, "cannot convert dtype %s to F32", sd_dtype_name(src_dtype));
    }
}
