/* safetensors.c: a validating reader (mmap) and an atomic writer for the safetensors format.
 *
 * Layout: u64 little-endian N, N bytes of JSON header, then the data buffer. Each header entry is
 * {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]} with offsets relative to the
 * buffer; "__metadata__" is an optional string->string map.
 *
 * Checkpoints come from anywhere, so the reader trusts nothing: every length and offset is checked
 * against the file before it is used, and shape products are computed with overflow checks. */
#include "sd/io.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; stylediff reads it in place and supports little-endian hosts only"
#endif

/* The reference implementation refuses headers over 100 MB; a real SD checkpoint's is ~100 KB. */
#define ST_MAX_HEADER_BYTES 100000000ull
/* Integers in the header are read through doubles (cJSON): above 2^53 they are not exact. No
 * legitimate dimension or offset comes near (2^53 bytes is 8 PiB). */
#define ST_MAX_EXACT_INT 9007199254740992.0

static const struct {
    const char *name;
    sd_dtype dtype;
} known_dtypes[] = {
    {"F32", SD_F32}, {"F16", SD_F16}, {"BF16", SD_BF16}, {"F64", SD_F64},
    {"I64", SD_I64}, {"I32", SD_I32}, {"U8", SD_U8},     {"BOOL", SD_BOOL},
};

/* Valid safetensors dtypes this build does not read: a clear "unsupported" rather than "malformed". */
static const char *const unsupported_dtypes[] = {"I8",      "I16",     "U16",     "U32",
                                                 "U64",     "F8_E5M2", "F8_E4M3", "F8_E8M0",
                                                 "F4",      "F6_E2M3", "F6_E3M2", "C64"};

static int dtype_from_name(const char *name, sd_dtype *out) {
    for (size_t i = 0; i < sizeof known_dtypes / sizeof known_dtypes[0]; i++)
        if (strcmp(name, known_dtypes[i].name) == 0) {
            *out = known_dtypes[i].dtype;
            return 1;
        }
    return 0;
}

static int dtype_is_unsupported(const char *name) {
    for (size_t i = 0; i < sizeof unsupported_dtypes / sizeof unsupported_dtypes[0]; i++)
        if (strcmp(name, unsupported_dtypes[i]) == 0) return 1;
    return 0;
}

static int dtype_is_float(sd_dtype t) {
    return t == SD_F32 || t == SD_F16 || t == SD_BF16 || t == SD_F64;
}

/* ------------------------------------------------------------------------------------------------
 * Reader
 * --------------------------------------------------------------------------------------------- */

/* A JSON number that is an exact non-negative integer no larger than `max`. */
static int json_exact_uint(const cJSON *v, double max, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > max || d != floor(d)) return 0; /* !(d >= 0) also rejects NaN */
    *out = (uint64_t)d;
    return 1;
}

static int compare_entry_names(const void *a, const void *b) {
    return strcmp(((const sd_st_entry *)a)->name, ((const sd_st_entry *)b)->name);
}

static int compare_entry_ranges(const void *a, const void *b) {
    const sd_st_entry *x = *(const sd_st_entry *const *)a, *y = *(const sd_st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Parses one tensor entry of the header into *e (name already set). */
static sd_status parse_entry(const sd_safetensors *st, const cJSON *obj, sd_st_entry *e) {
    const char *path = st->path, *name = e->name;
    if (!cJSON_IsObject(obj))
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path, name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
    if (!cJSON_IsString(dtype))
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", path, name);
    if (!dtype_from_name(dtype->valuestring, &e->dtype)) {
        if (dtype_is_unsupported(dtype->valuestring))
            return sd_fail(SD_ERR_UNSUPPORTED,
                           "%s: tensor '%s' has dtype %s, which stylediff does not read "
                           "(supported: F32, F16, BF16, F64, I64, I32, U8, BOOL)",
                           path, name, dtype->valuestring);
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%.32s\"", path, name,
                       dtype->valuestring);
    }

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(obj, "shape");
    if (!cJSON_IsArray(shape))
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > SD_MAX_DIMS)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: tensor '%s' has %d dimensions (stylediff supports up to %d)",
                       path, name, ndim, SD_MAX_DIMS);
    e->ndim = ndim;
    /* numel * element size, with every product checked: a hostile shape such as
     * [2^40, 2^40] must not wrap around to a small number that matches the range. */
    uint64_t nbytes = sd_dtype_size(e->dtype);
    int overflow = 0, d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t v;
        if (!json_exact_uint(dim, ST_MAX_EXACT_INT, &v))
            return sd_fail(SD_ERR_FORMAT,
                           "%s: tensor '%s': dimension %d of \"shape\" is not a non-negative integer",
                           path, name, d);
        e->shape[d++] = (int64_t)v;
        if (__builtin_mul_overflow(nbytes, v, &nbytes)) overflow = 1;
    }
    /* sd_tensor sizes are int64 element counts and size_t bytes: keep every count within both. */
    if (overflow || nbytes > (uint64_t)INT64_MAX)
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': shape is too large (its byte size overflows)",
                       path, name);

    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(obj, "data_offsets");
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2)
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be an array of two integers",
                       path, name);
    if (!json_exact_uint(offsets->child, ST_MAX_EXACT_INT, &e->begin) ||
        !json_exact_uint(offsets->child->next, ST_MAX_EXACT_INT, &e->end))
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" are not non-negative integers",
                       path, name);
    if (e->begin > e->end)
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin",
                       path, name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > st->data_len)
        return sd_fail(SD_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data "
                       "(%llu bytes; truncated file?)",
                       path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)st->data_len);
    if (e->end - e->begin != nbytes) {
        char buf[160];
        return sd_fail(SD_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets span %llu bytes but shape %s of %s needs %llu",
                       path, name, (unsigned long long)(e->end - e->begin),
                       sd_shape_str(e->ndim, e->shape, buf, sizeof buf), sd_dtype_name(e->dtype),
                       (unsigned long long)nbytes);
    }
    return SD_OK;
}

static sd_status parse_metadata(sd_safetensors *st, const cJSON *obj) {
    if (!cJSON_IsObject(obj))
        return sd_fail(SD_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", st->path);
    int n = cJSON_GetArraySize(obj);
    st->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    st->meta_values = calloc((size_t)n + 1, sizeof(char *));
    if (!st->meta_keys || !st->meta_values)
        return sd_fail(SD_ERR_OOM, "%s: out of memory reading the metadata", st->path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, obj) {
        if (!cJSON_IsString(kv))
            return sd_fail(SD_ERR_FORMAT, "%s: metadata value of \"%.64s\" is not a string", st->path,
                           kv->string);
        char *key = strdup(kv->string), *value = strdup(kv->valuestring);
        if (!key || !value) {
            free(key);
            free(value);
            return sd_fail(SD_ERR_OOM, "%s: out of memory reading the metadata", st->path);
        }
        st->meta_keys[st->n_meta] = key;
        st->meta_values[st->n_meta] = value;
        st->n_meta++;
    }
    return SD_OK;
}

/* Parses and validates the JSON header (`header` is NUL-terminated, `len` bytes). */
static sd_status parse_header(sd_safetensors *st, const char *header, size_t len) {
    const char *path = st->path;
    if (len == 0) return sd_fail(SD_ERR_FORMAT, "%s: the header is empty (not a safetensors file?)", path);
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, len, &parse_end, 0);
    if (!root) {
        size_t at = parse_end && parse_end >= header ? (size_t)(parse_end - header) : 0;
        return sd_fail(SD_ERR_FORMAT,
                       "%s: the header is not valid JSON (error at byte %zu of %zu; not a safetensors "
                       "file?)", path, at, len);
    }
    /* Only padding may follow the JSON object. */
    for (const char *p = parse_end; p && p < header + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return sd_fail(SD_ERR_FORMAT, "%s: unexpected bytes after the JSON header (at byte %zu)",
                           path, (size_t)(p - header));
        }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return sd_fail(SD_ERR_FORMAT, "%s: the header is not a JSON object", path);
    }

    sd_status status = SD_OK;
    int n_children = cJSON_GetArraySize(root), seen_metadata = 0;
    st->entries = calloc((size_t)n_children + 1, sizeof *st->entries);
    if (!st->entries) {
        cJSON_Delete(root);
        return sd_fail(SD_ERR_OOM, "%s: out of memory reading %d header entries", path, n_children);
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (seen_metadata++) {
                status = sd_fail(SD_ERR_FORMAT, "%s: \"__metadata__\" appears twice", path);
                break;
            }
            status = parse_metadata(st, item);
            if (status != SD_OK) break;
            continue;
        }
        sd_st_entry *e = &st->entries[st->n_entries];
        e->name = strdup(item->string);
        if (!e->name) {
            status = sd_fail(SD_ERR_OOM, "%s: out of memory", path);
            break;
        }
        st->n_entries++;
        status = parse_entry(st, item, e);
        if (status != SD_OK) break;
    }
    cJSON_Delete(root);
    if (status != SD_OK) return status;

    /* Unique names: sorted order puts duplicates side by side (and gives find() its bsearch). */
    qsort(st->entries, (size_t)st->n_entries, sizeof *st->entries, compare_entry_names);
    for (int i = 1; i < st->n_entries; i++)
        if (strcmp(st->entries[i - 1].name, st->entries[i].name) == 0)
            return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", path,
                           st->entries[i].name);

    /* No two byte ranges overlap. Empty tensors own no bytes, so they may sit anywhere. */
    const sd_st_entry **by_range = malloc(((size_t)st->n_entries + 1) * sizeof *by_range);
    if (!by_range) return sd_fail(SD_ERR_OOM, "%s: out of memory", path);
    int n_ranges = 0;
    for (int i = 0; i < st->n_entries; i++)
        if (st->entries[i].end > st->entries[i].begin) by_range[n_ranges++] = &st->entries[i];
    qsort(by_range, (size_t)n_ranges, sizeof *by_range, compare_entry_ranges);
    for (int i = 1; i < n_ranges; i++)
        if (by_range[i]->begin < by_range[i - 1]->end) {
            status = sd_fail(SD_ERR_FORMAT,
                             "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap in the data",
                             path, by_range[i - 1]->name, (unsigned long long)by_range[i - 1]->begin,
                             (unsigned long long)by_range[i - 1]->end, by_range[i]->name,
                             (unsigned long long)by_range[i]->begin,
                             (unsigned long long)by_range[i]->end);
            break;
        }
    free(by_range);
    return status;
}

sd_status sd_safetensors_open(const char *path, sd_safetensors *out) {
    memset(out, 0, sizeof *out);
    if (!path) return sd_fail(SD_ERR_ARG, "sd_safetensors_open: no path");
    if (snprintf(out->path, sizeof out->path, "%s", path) >= (int)sizeof out->path)
        return sd_fail(SD_ERR_ARG, "%.200s...: path too long", path);

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sd_fail(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat info;
    if (fstat(fd, &info) != 0) {
        int err = errno;
        close(fd);
        return sd_fail(SD_ERR_IO, "%s: cannot stat: %s", path, strerror(err));
    }
    if (S_ISDIR(info.st_mode)) {
        close(fd);
        return sd_fail(SD_ERR_IO, "%s: is a directory, not a safetensors file", path);
    }
    if (!S_ISREG(info.st_mode)) {
        close(fd);
        return sd_fail(SD_ERR_IO, "%s: not a regular file", path);
    }
    const uint64_t file_size = (uint64_t)info.st_size;
    if (file_size == 0) {
        close(fd);
        return sd_fail(SD_ERR_FORMAT, "%s: file is empty", path);
    }
    if (file_size < 8) {
        close(fd);
        return sd_fail(SD_ERR_FORMAT, "%s: file is %llu bytes, too short for a safetensors header",
                       path, (unsigned long long)file_size);
    }

    /* The header length is checked against the file before anything is allocated or mapped. */
    uint8_t len_bytes[8];
    ssize_t got = pread(fd, len_bytes, 8, 0);
    if (got != 8) {
        int err = errno;
        close(fd);
        return sd_fail(SD_ERR_IO, "%s: cannot read the header length: %s", path,
                       got < 0 ? strerror(err) : "short read");
    }
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | len_bytes[i];
    if (header_len > file_size - 8) {
        close(fd);
        return sd_fail(SD_ERR_FORMAT,
                       "%s: header length %llu runs past the end of the file (%llu bytes; truncated "
                       "or not a safetensors file)",
                       path, (unsigned long long)header_len, (unsigned long long)file_size);
    }
    if (header_len > ST_MAX_HEADER_BYTES) {
        close(fd);
        return sd_fail(SD_ERR_FORMAT, "%s: header length %llu exceeds the 100 MB limit", path,
                       (unsigned long long)header_len);
    }

    void *map = mmap(NULL, (size_t)file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_err = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return sd_fail(SD_ERR_IO, "%s: cannot mmap: %s", path, strerror(map_err));
    out->map = map;
    out->map_len = (size_t)file_size;
    out->data = (const uint8_t *)map + 8 + header_len;
    out->data_len = file_size - 8 - header_len;

    /* cJSON wants a NUL-terminated string; the mapped header has none, so parse a copy (bounded by
     * the real file size, checked above). */
    char *header = malloc((size_t)header_len + 1);
    if (!header) {
        sd_safetensors_close(out);
        return sd_fail(SD_ERR_OOM, "%s: out of memory reading a %llu-byte header", path,
                       (unsigned long long)header_len);
    }
    memcpy(header, (const uint8_t *)map + 8, (size_t)header_len);
    header[header_len] = '\0';
    sd_status status = parse_header(out, header, (size_t)header_len);
    free(header);
    if (status != SD_OK) {
        sd_safetensors_close(out); /* keeps the error message */
        return status;
    }
    return SD_OK;
}

void sd_safetensors_close(sd_safetensors *st) {
    if (!st) return;
    if (st->map) munmap(st->map, st->map_len);
    for (int i = 0; i < st->n_entries; i++) free(st->entries[i].name);
    free(st->entries);
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->meta_keys);
    free(st->meta_values);
    char path[sizeof st->path];
    memcpy(path, st->path, sizeof path);
    memset(st, 0, sizeof *st);
    memcpy(st->path, path, sizeof path); /* messages after close may still name the file */
}

const sd_st_entry *sd_safetensors_find(const sd_safetensors *st, const char *name) {
    int lo = 0, hi = st->n_entries - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->entries[mid].name);
        if (c == 0) return &st->entries[mid];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *sd_safetensors_meta(const sd_safetensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------------
 * Conversion to F32. A full SD v1.5 checkpoint is ~1.07 G half-precision values; converting them one
 * sd_f16_to_f32 call at a time cost ~11 ns each, so F16 goes through a lookup table (built from
 * sd_f16_to_f32 itself, so the results are identical) and BF16 is a shift. The loops stay serial:
 * the time left is page faults on the fresh F32 buffers, and OpenMP threads faulting pages at once
 * made a full load 2.5x slower (measured on a 2-core VM: 4.1 s serial, 10.7 s with 2 threads).
 * --------------------------------------------------------------------------------------------- */

static float f16_table[65536];
static pthread_once_t f16_table_once = PTHREAD_ONCE_INIT;

static void build_f16_table(void) {
    for (uint32_t h = 0; h < 65536; h++) f16_table[h] = sd_f16_to_f32((uint16_t)h);
}

static void convert_to_f32(float *dst, const void *src, sd_dtype dtype, int64_t n) {
    switch (dtype) {
    case SD_F32: memcpy(dst, src, (size_t)n * 4); break;
    case SD_F16: {
        pthread_once(&f16_table_once, build_f16_table);
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = f16_table[s[i]];
        break;
    }
    case SD_BF16: {
        const uint16_t *s = src;
        uint32_t *d = (uint32_t *)(void *)dst; /* bf16 is the top half of an f32 */
        for (int64_t i = 0; i < n; i++) d[i] = (uint32_t)s[i] << 16;
        break;
    }
    case SD_F64: {
        const double *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    }
    default: break; /* callers pass floating dtypes only */
    }
}

/* Fresh multi-megabyte buffers are filled once, right away: ask for transparent huge pages so the
 * kernel takes one fault per 2 MB instead of one per 4 KB (on a 4 GB checkpoint, seconds). Only a
 * hint; the interior of the buffer is aligned down/up to whole pages. */
static void advise_huge_pages(void *data, size_t bytes) {
#ifdef MADV_HUGEPAGE
    const size_t page = 4096, huge = (size_t)2 << 20;
    if (bytes < 2 * huge) return;
    uintptr_t begin = ((uintptr_t)data + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t end = ((uintptr_t)data + bytes) & ~(uintptr_t)(page - 1);
    if (end > begin) (void)madvise((void *)begin, end - begin, MADV_HUGEPAGE);
#else
    (void)data;
    (void)bytes;
#endif
}

sd_status sd_safetensors_load_f32(const sd_safetensors *st, const sd_st_entry *e, sd_tensor **out) {
    *out = NULL;
    if (!dtype_is_float(e->dtype))
        return sd_fail(SD_ERR_SHAPE,
                       "%s: tensor '%s' has dtype %s; expected a floating-point tensor (F32, F16, BF16 "
                       "or F64)",
                       st->path, e->name, sd_dtype_name(e->dtype));
    sd_tensor *t = sd_tensor_new(SD_F32, e->ndim, e->shape);
    if (!t) return sd_fail_context(SD_ERR_OOM, "%s: tensor '%s': ", st->path, e->name);
    const uint8_t *src = st->data + e->begin;
    const int64_t n = sd_shape_numel(e->ndim, e->shape);
    const size_t elem = sd_dtype_size(e->dtype), bytes = (size_t)(e->end - e->begin);
    advise_huge_pages(t->data, (size_t)n * sizeof(float));
    if (e->dtype != SD_F32 && (uintptr_t)src % elem != 0) {
        /* Offsets need not be aligned (other writers than the reference one exist): convert from
         * an aligned copy rather than read halves and doubles at odd addresses. */
        void *aligned = malloc(bytes ? bytes : 1);
        if (!aligned) {
            sd_tensor_free(t);
            return sd_fail(SD_ERR_OOM, "%s: tensor '%s': out of memory", st->path, e->name);
        }
        memcpy(aligned, src, bytes);
        convert_to_f32(sd_f32(t), aligned, e->dtype, n);
        free(aligned);
    } else {
        convert_to_f32(sd_f32(t), src, e->dtype, n);
    }
    sd_tensor_set_name(t, e->name);
    *out = t;
    return SD_OK;
}

sd_status sd_safetensors_load_raw(const sd_safetensors *st, const sd_st_entry *e, sd_tensor **out) {
    *out = NULL;
    sd_tensor *t = sd_tensor_new(e->dtype, e->ndim, e->shape);
    if (!t) return sd_fail_context(SD_ERR_OOM, "%s: tensor '%s': ", st->path, e->name);
    memcpy(t->data, st->data + e->begin, (size_t)(e->end - e->begin));
    sd_tensor_set_name(t, e->name);
    *out = t;
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Writer
 * --------------------------------------------------------------------------------------------- */

/* The reference writer orders the data by dtype, widest first, so that every tensor starts at a
 * multiple of its element size; ties go by name. Ranks follow its Dtype enum (I64 > F64 > F32 >
 * I32 > BF16 > F16 > U8 > BOOL), which is what makes our files byte-identical to its files. */
static int dtype_write_rank(sd_dtype t) {
    switch (t) {
    case SD_I64: return 7;
    case SD_F64: return 6;
    case SD_F32: return 5;
    case SD_I32: return 4;
    case SD_BF16: return 3;
    case SD_F16: return 2;
    case SD_U8: return 1;
    case SD_BOOL: return 0;
    }
    return -1;
}

typedef struct {
    const sd_tensor *tensor;
    const char *name;
} write_item;

static int compare_write_items(const void *a, const void *b) {
    const write_item *x = a, *y = b;
    int rx = dtype_write_rank(x->tensor->dtype), ry = dtype_write_rank(y->tensor->dtype);
    if (rx != ry) return ry - rx;
    return strcmp(x->name, y->name);
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} text_buf;

static void tb_putn(text_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->buf, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->buf = p;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void tb_puts(text_buf *b, const char *s) { tb_putn(b, s, strlen(s)); }

static void tb_printf(text_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(text_buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) tb_putn(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string, escaped the way serde_json (the reference writer) escapes: \" \\ and the short
 * forms \b \f \n \r \t, other control characters as \u00XX, everything else (UTF-8) verbatim. */
static void tb_json_string(text_buf *b, const char *s) {
    tb_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': tb_puts(b, "\\\""); break;
        case '\\': tb_puts(b, "\\\\"); break;
        case '\b': tb_puts(b, "\\b"); break;
        case '\f': tb_puts(b, "\\f"); break;
        case '\n': tb_puts(b, "\\n"); break;
        case '\r': tb_puts(b, "\\r"); break;
        case '\t': tb_puts(b, "\\t"); break;
        default:
            if (*p < 0x20)
                tb_printf(b, "\\u%04x", *p);
            else
                tb_putn(b, (const char *)p, 1);
        }
    }
    tb_puts(b, "\"");
}

static sd_status write_all(FILE *f, const void *data, size_t n, const char *path) {
    if (n > 0 && fwrite(data, 1, n, f) != n)
        return sd_fail(SD_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return SD_OK;
}

sd_status sd_safetensors_write(const char *path, const sd_tensor *const *tensors,
                               const char *const *names, int n, const char *const *meta_kv,
                               int n_meta) {
    if (!path || n < 0 || n_meta < 0 || (n > 0 && (!tensors || !names)) || (n_meta > 0 && !meta_kv))
        return sd_fail(SD_ERR_ARG, "%s: sd_safetensors_write: bad arguments", path ? path : "(null)");
    for (int i = 0; i < n; i++) {
        if (!names[i] || !names[i][0])
            return sd_fail(SD_ERR_ARG, "%s: tensor %d has no name", path, i);
        if (strcmp(names[i], "__metadata__") == 0)
            return sd_fail(SD_ERR_ARG, "%s: '__metadata__' is reserved and cannot name a tensor", path);
        const sd_tensor *t = tensors[i];
        if (!t) return sd_fail(SD_ERR_ARG, "%s: tensor '%s' is NULL", path, names[i]);
        if (t->device != SD_DEVICE_CPU)
            return sd_fail(SD_ERR_ARG, "%s: tensor '%s' is on a GPU; copy it to the host first", path,
                           names[i]);
        if (t->ndim < 0 || t->ndim > SD_MAX_DIMS || dtype_write_rank(t->dtype) < 0)
            return sd_fail(SD_ERR_ARG, "%s: tensor '%s' has an invalid header", path, names[i]);
        if (sd_numel(t) > 0 && !t->data)
            return sd_fail(SD_ERR_ARG, "%s: tensor '%s' has no data", path, names[i]);
    }
    for (int i = 0; i < 2 * n_meta; i++)
        if (!meta_kv[i]) return sd_fail(SD_ERR_ARG, "%s: metadata entry %d is NULL", path, i / 2);

    write_item *items = malloc(((size_t)n + 1) * sizeof *items);
    if (!items) return sd_fail(SD_ERR_OOM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) items[i] = (write_item){tensors[i], names[i]};
    qsort(items, (size_t)n, sizeof *items, compare_write_items);
    /* Equal names sit side by side only within one dtype, so check uniqueness on a by-name copy. */
    const char **sorted_names = malloc(((size_t)n + 1) * sizeof *sorted_names);
    if (!sorted_names) {
        free(items);
        return sd_fail(SD_ERR_OOM, "%s: out of memory", path);
    }
    for (int i = 0; i < n; i++) sorted_names[i] = names[i];
    qsort(sorted_names, (size_t)n, sizeof *sorted_names, compare_strings);
    for (int i = 1; i < n; i++)
        if (strcmp(sorted_names[i - 1], sorted_names[i]) == 0) {
            sd_status s = sd_fail(SD_ERR_ARG, "%s: tensor name '%s' is used twice", path, sorted_names[i]);
            free(sorted_names);
            free(items);
            return s;
        }
    free(sorted_names);

    text_buf header = {0};
    tb_puts(&header, "{");
    int first = 1;
    if (n_meta > 0) {
        tb_puts(&header, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) tb_puts(&header, ",");
            tb_json_string(&header, meta_kv[2 * i]);
            tb_puts(&header, ":");
            tb_json_string(&header, meta_kv[2 * i + 1]);
        }
        tb_puts(&header, "}");
        first = 0;
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const sd_tensor *t = items[i].tensor;
        if (!first) tb_puts(&header, ",");
        first = 0;
        tb_json_string(&header, items[i].name);
        tb_printf(&header, ":{\"dtype\":\"%s\",\"shape\":[", sd_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) tb_printf(&header, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        uint64_t bytes = sd_nbytes(t);
        tb_printf(&header, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                  (unsigned long long)(offset + bytes));
        offset += bytes;
    }
    tb_puts(&header, "}");
    while (!header.oom && header.len % 8 != 0) tb_puts(&header, " ");
    if (header.oom) {
        free(header.buf);
        free(items);
        return sd_fail(SD_ERR_OOM, "%s: out of memory building the header", path);
    }

    /* Streamed to a temporary file, then renamed over `path`: no second copy of gigabytes of
     * weights in memory, and a crash never leaves a half-written file behind. */
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        free(header.buf);
        free(items);
        return sd_fail(SD_ERR_ARG, "%s: path too long", path);
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        sd_status s = sd_fail(SD_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        free(header.buf);
        free(items);
        return s;
    }
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)((uint64_t)header.len >> (8 * i));
    sd_status status = write_all(f, len_bytes, 8, path);
    if (status == SD_OK) status = write_all(f, header.buf, header.len, path);
    for (int i = 0; status == SD_OK && i < n; i++)
        status = write_all(f, items[i].tensor->data, sd_nbytes(items[i].tensor), path);
    free(header.buf);
    free(items);
    if (status == SD_OK && fflush(f) != 0)
        status = sd_fail(SD_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (status == SD_OK && fsync(fileno(f)) != 0 && errno != EINVAL)
        status = sd_fail(SD_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (fclose(f) != 0 && status == SD_OK)
        status = sd_fail(SD_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    if (status == SD_OK && rename(tmp, path) != 0)
        status = sd_fail(SD_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    if (status != SD_OK) unlink(tmp);
    return status;
}
