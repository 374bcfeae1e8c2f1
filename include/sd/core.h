/* core.h: the foundation every layer stands on.
 *
 *  - sd_status and the thread-local error message: every fallible call returns an sd_status; the
 *    message names the file, tensor or argument that caused it (read it with sd_last_error()).
 *  - logging and the progress bar (stderr; quiet mode).
 *  - sd_tensor: a contiguous n-d array on the CPU or a CUDA device.
 *  - sd_arena: bump allocation for activations, reset between steps.
 */
#ifndef SD_CORE_H
#define SD_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------------
 * Status and errors
 * --------------------------------------------------------------------------------------------- */

typedef enum sd_status {
    SD_OK = 0,
    SD_ERR_IO,          /* a file could not be opened, read or written */
    SD_ERR_FORMAT,      /* a file's contents are malformed (safetensors, JSON, image, CSV) */
    SD_ERR_SHAPE,       /* a tensor has the wrong shape or dtype */
    SD_ERR_MISSING,     /* a tensor, key or file that must exist does not */
    SD_ERR_ARG,         /* a bad command-line or API argument */
    SD_ERR_OOM,         /* host or device memory exhausted */
    SD_ERR_DEVICE,      /* CUDA / driver / library failure */
    SD_ERR_NUMERIC,     /* NaN or Inf where a finite value is required */
    SD_ERR_UNSUPPORTED, /* valid input this build cannot handle */
    SD_ERR_INTERNAL,    /* a broken invariant: a bug in stylediff */
} sd_status;

/* Sets the thread's error message (printf-style) and returns `code`, so a failure reads
 * `return sd_fail(SD_ERR_SHAPE, "tensor '%s': expected ...", name);`. */
sd_status sd_fail(sd_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes the current message with context ("loading unet/config.json: ") and returns `code`.
 * Used by callers that know more about where the failure sits than the callee did. */
sd_status sd_fail_context(sd_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The message of the last failure on this thread ("" when none). */
const char *sd_last_error(void);
void sd_clear_error(void);
const char *sd_status_name(sd_status s);

/* Propagates a failure: `SD_TRY(load(x));` returns the status from the enclosing function. */
#define SD_TRY(expr)                                                                               \
    do {                                                                                           \
        sd_status sd_try_status_ = (expr);                                                         \
        if (sd_try_status_ != SD_OK) return sd_try_status_;                                        \
    } while (0)

/* ------------------------------------------------------------------------------------------------
 * Logging and progress
 * --------------------------------------------------------------------------------------------- */

typedef enum { SD_LOG_ERROR = 0, SD_LOG_WARN = 1, SD_LOG_INFO = 2, SD_LOG_DEBUG = 3 } sd_log_level;

void sd_log_set_level(sd_log_level level);
sd_log_level sd_log_get_level(void);
/* --quiet: suppresses info messages and the progress bar (warnings and errors still print). */
void sd_set_quiet(int quiet);
int sd_is_quiet(void);
void sd_log(sd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define sd_warn(...) sd_log(SD_LOG_WARN, __VA_ARGS__)
#define sd_info(...) sd_log(SD_LOG_INFO, __VA_ARGS__)
#define sd_debug(...) sd_log(SD_LOG_DEBUG, __VA_ARGS__)

/* A progress bar on stderr for long loops. Draws nothing when stderr is not a terminal or in
 * quiet mode, so logs and CI output stay clean. */
typedef struct sd_progress {
    const char *label;
    int total;
    int done;
    double t_start;
    int enabled;
} sd_progress;
void sd_progress_begin(sd_progress *p, const char *label, int total);
void sd_progress_step(sd_progress *p);
void sd_progress_end(sd_progress *p);

/* Monotonic wall clock in seconds. */
double sd_now(void);

/* ------------------------------------------------------------------------------------------------
 * Tensors
 * --------------------------------------------------------------------------------------------- */

typedef enum sd_dtype { SD_F32 = 0, SD_F16, SD_BF16, SD_F64, SD_I64, SD_I32, SD_U8, SD_BOOL } sd_dtype;

size_t sd_dtype_size(sd_dtype t);
const char *sd_dtype_name(sd_dtype t); /* safetensors spelling: "F32", "F16", "BF16", ... */

#define SD_MAX_DIMS 6
#define SD_DEVICE_CPU (-1) /* device >= 0 is a CUDA ordinal */

/* A contiguous, row-major n-d array. Tensors never alias with strides: a view shares `data` and
 * has its own shape only (sd_view), so every op can assume dense memory. */
typedef struct sd_tensor {
    void *data;
    int64_t shape[SD_MAX_DIMS];
    int ndim;
    sd_dtype dtype;
    int device;       /* SD_DEVICE_CPU or CUDA ordinal */
    int owns_data;    /* 1: free(data) on sd_tensor_free; 0: arena, mmap or view */
    int requires_grad;/* a leaf the tape differentiates with respect to */
    int tape_index;   /* position of the op that produced it on the active tape, -1 if none */
    struct sd_tensor *grad; /* accumulated gradient of a requires_grad leaf (same shape), or NULL */
    int channels_last; /* a 4-d fp16 activation (B, C, H, W) whose memory is [B, H, W, C]
                        * (sd_ctx.channels_last); 0 for every other tensor */
    char name[96];    /* checkpoint name for weights, or a short label for debugging */
} sd_tensor;

int64_t sd_numel(const sd_tensor *t);
size_t sd_nbytes(const sd_tensor *t);
/* Number of elements for a shape. */
int64_t sd_shape_numel(int ndim, const int64_t *shape);
/* "(2, 4, 64, 64)" into buf; returns buf. */
const char *sd_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);
int sd_same_shape(const sd_tensor *a, const sd_tensor *b);

/* Heap tensors (weights, long-lived results). Data zero-filled. NULL (with an error set) on OOM. */
sd_tensor *sd_tensor_new(sd_dtype dtype, int ndim, const int64_t *shape);
/* Convenience: sd_tensor_new for up to 4 dims; pass 0 for unused trailing dims is NOT allowed, give
 * ndim explicitly. */
sd_tensor *sd_tensor_new4(sd_dtype dtype, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
sd_tensor *sd_tensor_clone(const sd_tensor *t); /* heap copy (CPU only) */
void sd_tensor_free(sd_tensor *t);
/* How sd_tensor_free releases owned data of a tensor on a device. Each backend with device memory
 * installs its hook and gets back the one it replaced: it frees the devices it owns and passes
 * any other device's pointer on to that previous hook (the CUDA backend and a test's stand-in
 * device can then live side by side). */
typedef void (*sd_device_free_fn)(void *p, int device);
sd_device_free_fn sd_set_device_free(sd_device_free_fn release);
void sd_tensor_set_name(sd_tensor *t, const char *name);

/* A tensor header over existing memory (not owned). */
sd_tensor sd_tensor_wrap(void *data, sd_dtype dtype, int ndim, const int64_t *shape);
/* Same data, new shape with equal numel. Returns a copy of the header (owns_data = 0). */
sd_tensor sd_view(const sd_tensor *t, int ndim, const int64_t *shape);

/* Element access for f32 CPU tensors. */
static inline float *sd_f32(const sd_tensor *t) { return (float *)t->data; }

/* Checks dtype and shape; on mismatch fails with SD_ERR_SHAPE naming `what`. A shape entry of -1
 * matches any size. */
sd_status sd_check_shape(const sd_tensor *t, const char *what, sd_dtype dtype, int ndim,
                         const int64_t *shape);

/* Scalar conversions used when loading half-precision checkpoints. */
float sd_f16_to_f32(uint16_t h);
uint16_t sd_f32_to_f16(float f); /* round to nearest even */
float sd_bf16_to_f32(uint16_t h);
uint16_t sd_f32_to_bf16(float f); /* round to nearest even */

/* Converts n elements of any floating dtype to f32 (dst may not alias src unless both are F32). */
sd_status sd_convert_to_f32(float *dst, const void *src, sd_dtype src_dtype, int64_t n);

/* ------------------------------------------------------------------------------------------------
 * Arena: bump allocation for activations
 * --------------------------------------------------------------------------------------------- */

/* An arena hands out 64-byte aligned blocks and frees them all at once (sd_arena_reset to a mark).
 * On the CPU it grows by chaining chunks, so a capacity is a hint; its peak is reported so users
 * know what a step costs. Device arenas (CUDA) are created by the CUDA backend. */
typedef struct sd_arena sd_arena;

sd_arena *sd_arena_create(size_t chunk_bytes);
/* An arena whose chunks come from `alloc`/`release` (device memory: the chunks are never touched
 * from the host; only their addresses are handed out). */
sd_arena *sd_arena_create_with(size_t chunk_bytes, void *(*alloc)(size_t bytes),
                               void (*release)(void *p));
void sd_arena_destroy(sd_arena *a);
void *sd_arena_alloc(sd_arena *a, size_t bytes); /* NULL (error set) on OOM */
/* Host memory that lives and is reset with the arena's data: tensor headers, host-side ids. For a
 * host arena this is sd_arena_alloc; a device arena keeps a companion host arena for it, because
 * the host must never write or read device memory directly. */
void *sd_arena_alloc_host(sd_arena *a, size_t bytes);
/* A position in the arena (and in its host side) to reset back to. */
typedef struct {
    size_t chunk, offset, used;
    size_t host_chunk, host_offset, host_used;
} sd_arena_mark;
sd_arena_mark sd_arena_get_mark(const sd_arena *a);
void sd_arena_reset(sd_arena *a, sd_arena_mark m);
size_t sd_arena_used(const sd_arena *a);
size_t sd_arena_peak(const sd_arena *a);
/* Starts a new peak measurement from the current use (a benchmark's sections each get theirs). */
void sd_arena_reset_peak(sd_arena *a);

/* A tensor whose data lives in the arena (its header in host memory of the arena, see
 * sd_arena_alloc_host). */
sd_tensor *sd_arena_tensor(sd_arena *a, sd_dtype dtype, int ndim, const int64_t *shape);

/* ------------------------------------------------------------------------------------------------
 * Small utilities
 * --------------------------------------------------------------------------------------------- */

/* Reads a whole file (NUL-terminated for convenience). Fails naming the path. */
sd_status sd_read_file(const char *path, char **out, size_t *len);
/* Writes atomically: to "<path>.tmp.<pid>", fsync, then rename over path. A crash or error never
 * leaves a half-written file at `path`. */
sd_status sd_write_file_atomic(const char *path, const void *data, size_t len);
int sd_file_exists(const char *path);
int sd_dir_exists(const char *path);
/* Joins a directory and a relative name into buf ("dir/name"). */
const char *sd_path_join(char *buf, size_t n, const char *dir, const char *name);

/* torch-compatible random numbers: a Mersenne Twister seeded as torch.manual_seed(seed) seeds the
 * CPU generator, and torch.randn's float32 fill (uniforms in blocks of 16, Box-Muller pairs i and
 * i+8), so `--seed` reproduces a diffusers pipeline's initial latent on a CPU generator. */
typedef struct sd_rng {
    uint32_t state[624];
    int index;
} sd_rng;
void sd_rng_seed(sd_rng *r, uint64_t seed);
uint32_t sd_rng_u32(sd_rng *r);
/* Fills n >= 16 floats as torch.randn would (n < 16 uses a simpler Box-Muller, not torch's). */
void sd_rng_randn(sd_rng *r, float *out, int64_t n);

/* FNV-1a 64-bit hash, used for image identity in saved inversions. */
uint64_t sd_hash64(const void *data, size_t n);

#ifdef __cplusplus
}
#endif
#endif
