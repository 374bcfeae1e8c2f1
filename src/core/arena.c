/* arena.c: chained-chunk bump allocator for activations.
 *
 * Activations of one forward (and the tape of one gradient step) are allocated here and released
 * together by resetting to a mark, so the hot loop performs no malloc/free per op. Chunks are kept
 * after a reset and reused, so a steady-state loop allocates nothing from the system.
 *
 * A device arena (chunks from a backend allocator, e.g. cudaMalloc) cannot hold anything the host
 * writes or reads: tensor headers and other host bookkeeping go to a companion host arena that is
 * marked and reset together with it. */
#include "sd/core.h"

#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 64
#define ARENA_MAX_CHUNKS 256

struct sd_arena {
    size_t chunk_bytes;             /* default size of a new chunk */
    char *chunks[ARENA_MAX_CHUNKS];
    size_t sizes[ARENA_MAX_CHUNKS];
    size_t nchunks;
    size_t cur;                     /* chunk being filled */
    size_t offset;                  /* bytes used in chunk `cur` */
    size_t used;                    /* total bytes handed out since creation/reset */
    size_t peak;
    void *(*alloc)(size_t bytes);   /* chunk allocator: host memory by default */
    void (*release)(void *p);
    sd_arena *host_side;            /* device arenas: where headers go (NULL: this arena is host memory) */
};

static void *host_chunk_alloc(size_t bytes) {
    void *p = aligned_alloc(ARENA_ALIGN, (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1));
    if (!p) sd_fail(SD_ERR_OOM, "out of host memory: arena chunk of %zu bytes", bytes);
    return p;
}

sd_arena *sd_arena_create_with(size_t chunk_bytes, void *(*alloc)(size_t bytes),
                               void (*release)(void *p)) {
    sd_arena *a = calloc(1, sizeof *a);
    if (!a) {
        sd_fail(SD_ERR_OOM, "out of host memory creating an arena");
        return NULL;
    }
    a->chunk_bytes = chunk_bytes ? chunk_bytes : ((size_t)64 << 20);
    a->alloc = alloc;
    a->release = release;
    if (alloc != host_chunk_alloc) {
        /* The chunks may be device memory: the host never touches them (see the top of the file). */
        a->host_side = sd_arena_create((size_t)1 << 20);
        if (!a->host_side) {
            free(a);
            return NULL;
        }
    }
    return a;
}

sd_arena *sd_arena_create(size_t chunk_bytes) {
    return sd_arena_create_with(chunk_bytes, host_chunk_alloc, free);
}

void sd_arena_destroy(sd_arena *a) {
    if (!a) return;
    for (size_t i = 0; i < a->nchunks; i++) a->release(a->chunks[i]);
    sd_arena_destroy(a->host_side);
    free(a);
}

static size_t round_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

void *sd_arena_alloc(sd_arena *a, size_t bytes) {
    bytes = round_up(bytes ? bytes : 1);
    /* Find room in the current chunk or a later (already allocated, or new) one. */
    while (a->cur < a->nchunks) {
        if (a->offset + bytes <= a->sizes[a->cur]) {
            void *p = a->chunks[a->cur] + a->offset;
            a->offset += bytes;
            a->used += bytes;
            if (a->used > a->peak) a->peak = a->used;
            return p;
        }
        if (a->cur + 1 >= a->nchunks) break;
        a->cur++;
        a->offset = 0;
    }
    if (a->nchunks >= ARENA_MAX_CHUNKS) {
        sd_fail(SD_ERR_OOM, "arena: more than %d chunks in use", ARENA_MAX_CHUNKS);
        return NULL;
    }
    size_t size = bytes > a->chunk_bytes ? bytes : a->chunk_bytes;
    char *chunk = a->alloc(size); /* the allocator sets the error message */
    if (!chunk) return NULL;
    a->chunks[a->nchunks] = chunk;
    a->sizes[a->nchunks] = size;
    a->cur = a->nchunks;
    a->nchunks++;
    a->offset = bytes;
    a->used += bytes;
    if (a->used > a->peak) a->peak = a->used;
    return chunk;
}

void *sd_arena_alloc_host(sd_arena *a, size_t bytes) {
    return sd_arena_alloc(a->host_side ? a->host_side : a, bytes);
}

sd_arena_mark sd_arena_get_mark(const sd_arena *a) {
    sd_arena_mark m = {a->cur, a->offset, a->used, 0, 0, 0};
    if (a->host_side) {
        m.host_chunk = a->host_side->cur;
        m.host_offset = a->host_side->offset;
        m.host_used = a->host_side->used;
    }
    return m;
}

void sd_arena_reset(sd_arena *a, sd_arena_mark m) {
    a->cur = m.chunk;
    a->offset = m.offset;
    a->used = m.used;
    if (a->host_side) {
        a->host_side->cur = m.host_chunk;
        a->host_side->offset = m.host_offset;
        a->host_side->used = m.host_used;
    }
}

size_t sd_arena_used(const sd_arena *a) { return a->used; }
size_t sd_arena_peak(const sd_arena *a) { return a->peak; }
void sd_arena_reset_peak(sd_arena *a) { a->peak = a->used; }

sd_tensor *sd_arena_tensor(sd_arena *a, sd_dtype dtype, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > SD_MAX_DIMS) {
        sd_fail(SD_ERR_INTERNAL, "arena tensor with %d dimensions", ndim);
        return NULL;
    }
    size_t bytes = (size_t)sd_shape_numel(ndim, shape) * sd_dtype_size(dtype);
    sd_tensor *t = sd_arena_alloc_host(a, sizeof *t); /* the header is written here, on the host */
    void *data = t ? sd_arena_alloc(a, bytes) : NULL;
    if (!data) return NULL;
    *t = sd_tensor_wrap(data, dtype, ndim, shape);
    return t;
}
