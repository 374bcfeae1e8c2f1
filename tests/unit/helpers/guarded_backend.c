/* guarded_backend.c: see guarded_backend.h.
 *
 * All "device" memory comes from one reserved address range, bump-allocated and never returned
 * (a test's worth of memory), so opening and closing it is one mprotect each. Every op also checks
 * that each of its device pointers lies inside that range: a host pointer handed to a device op
 * (an unmoved weight, a host array wrapped as a tensor) is the mirror bug, and fails the op with a
 * message naming it. */
#include "guarded_backend.h"

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define POOL_BYTES ((size_t)8 << 30) /* address space only (MAP_NORESERVE) */
#define POOL_ALIGN 256
#define HUGE_PAGE ((size_t)2 << 20)

static const sd_backend *cpu;
static char *pool;
static size_t pool_used, pool_open_bytes;
static int open_depth;
static long calls;

/* Whole huge pages, so that protection changes never split one. */
static size_t page_round(size_t n) { return (n + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE; }

static void open_memory(void) {
    calls++;
    if (open_depth++ > 0) return;
    pool_open_bytes = page_round(pool_used);
    if (pool_open_bytes) mprotect(pool, pool_open_bytes, PROT_READ | PROT_WRITE);
}

static void close_memory(void) {
    if (--open_depth > 0) return;
    if (pool_open_bytes) mprotect(pool, pool_open_bytes, PROT_NONE);
}

static void *guarded_alloc(size_t bytes) {
    const size_t start = (pool_used + POOL_ALIGN - 1) / POOL_ALIGN * POOL_ALIGN;
    if (start + bytes > POOL_BYTES) {
        sd_fail(SD_ERR_OOM, "guarded device: out of its %zu GiB address range asking for %zu bytes",
                POOL_BYTES >> 30, bytes);
        return NULL;
    }
    pool_used = start + (bytes ? bytes : 1);
    return pool + start;
}

static void guarded_free(void *p) { (void)p; /* bump memory: released with the process */ }
static sd_device_free_fn other_device_free; /* e.g. the CUDA backend's, when a GPU test shares the process */

static void guarded_device_free(void *p, int device) {
    if (device != GUARDED_DEVICE && other_device_free) other_device_free(p, device);
    /* guarded memory itself is bump memory, released with the process */
}

/* 1 when every non-NULL pointer lies inside the device range; else fails naming the op. */
static int on_device(const char *op, const void *const *ptrs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *p = ptrs[i];
        if (p && (p < pool || p >= pool + pool_used)) {
            sd_fail(SD_ERR_INTERNAL, "guarded device: %s got a host pointer as device argument %zu", op, i + 1);
            return 0;
        }
    }
    return 1;
}

/* A wrapped op: check its device pointers, open the memory, run the CPU op, close it. */
#define GUARD(name, params, args, ...)                                                 \
    static sd_status g_##name params {                                                 \
        const void *const device_args[] = {__VA_ARGS__};                               \
        if (!on_device(#name, device_args, sizeof device_args / sizeof *device_args))  \
            return SD_ERR_INTERNAL;                                                    \
        open_memory();                                                                 \
        const sd_status s = cpu->name args;                                            \
        close_memory();                                                                \
        return s;                                                                      \
    }

GUARD(upload, (void *dst, const void *host_src, size_t bytes), (dst, host_src, bytes), dst)
GUARD(download, (void *host_dst, const void *src, size_t bytes), (host_dst, src, bytes), src)
GUARD(zero, (void *dst, size_t bytes), (dst, bytes), dst)
GUARD(linear, (const float *x, const float *w, const float *b, const float *r, float *y, int64_t M, int64_t K,
               int64_t N),
      (x, w, b, r, y, M, K, N), x, w, b, r, y)
GUARD(conv2d, (const float *x, const float *w, const float *b, float *y, const sd_conv_geom *g),
      (x, w, b, y, g), x, w, b, y)
GUARD(group_norm, (const float *x, const float *gamma, const float *beta, float *y, int64_t B, int64_t C,
                   int64_t S, int groups, float eps, int silu),
      (x, gamma, beta, y, B, C, S, groups, eps, silu), x, gamma, beta, y)
GUARD(layer_norm, (const float *x, const float *gamma, const float *beta, float *y, int64_t M, int64_t C, float eps),
      (x, gamma, beta, y, M, C, eps), x, gamma, beta, y)
GUARD(unary, (sd_unary_op op, const float *x, float *y, int64_t n, float alpha), (op, x, y, n, alpha), x, y)
GUARD(binary, (sd_binary_op op, const float *a, const float *b, float *y, int64_t n), (op, a, b, y, n), a, b, y)
GUARD(axpby, (float alpha, const float *x, float beta, const float *z, float *y, int64_t n),
      (alpha, x, beta, z, y, n), x, z, y)
GUARD(axpby_dev, (const float *coef, const float *x, const float *z, float *y, int64_t n), (coef, x, z, y, n),
      coef, x, z, y)
GUARD(add_channel_bias, (const float *x, const float *v, float *y, int64_t B, int64_t C, int64_t S),
      (x, v, y, B, C, S), x, v, y)
GUARD(geglu, (const float *x, float *y, int64_t M, int64_t N), (x, y, M, N), x, y)
GUARD(concat_channels, (const float *a, const float *c, float *y, int64_t B, int64_t Ca, int64_t Cb, int64_t S),
      (a, c, y, B, Ca, Cb, S), a, c, y)
GUARD(upsample_nearest, (const float *x, float *y, int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo),
      (x, y, N, H, W, Ho, Wo), x, y)
GUARD(transpose, (const float *x, float *y, int64_t B, int64_t R, int64_t C), (x, y, B, R, C), x, y)
GUARD(attention, (const float *q, const float *k, const float *v, float *out, float *probs, int64_t B, int64_t Sq,
                  int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse),
      (q, k, v, out, probs, B, Sq, Sk, H, D, Dv, scale, causal, lse), q, k, v, out, probs, lse)
GUARD(attention_apply, (const float *probs, const float *v, float *out, int64_t B, int64_t Sq, int64_t Sk, int H,
                        int Dv),
      (probs, v, out, B, Sq, Sk, H, Dv), probs, v, out)
GUARD(timestep_embedding, (const float *t, float *y, int64_t B, int dim, int flip_sin_to_cos, float shift),
      (t, y, B, dim, flip_sin_to_cos, shift), t, y)
GUARD(embedding, (const int32_t *ids, const float *table, float *y, int64_t count, int64_t C),
      (ids, table, y, count, C), ids, table, y)
GUARD(clamp, (const float *x, float *y, float lo, float hi, int64_t n), (x, y, lo, hi, n), x, y)
GUARD(copy, (float *dst, const float *src, int64_t n), (dst, src, n), dst, src)
GUARD(fill, (float *dst, float value, int64_t n), (dst, value, n), dst)
GUARD(mse, (const float *a, const float *b, float *out, int64_t n), (a, b, out, n), a, b, out)
/* all_finite takes a host array of device pointers: each is checked */
static sd_status g_all_finite(const float *const *xs, const int64_t *ns, int count, int *host_ok) {
    if (count < 0 || count > SD_ALL_FINITE_MAX || !on_device("all_finite", (const void *const *)xs, (size_t)count))
        return count < 0 || count > SD_ALL_FINITE_MAX ? sd_fail(SD_ERR_INTERNAL, "all_finite: %d tensors", count)
                                                      : SD_ERR_INTERNAL;
    open_memory();
    const sd_status s = cpu->all_finite(xs, ns, count, host_ok);
    close_memory();
    return s;
}
GUARD(linear_backward_data, (const float *dy, const float *w, float *dx, int64_t M, int64_t K, int64_t N),
      (dy, w, dx, M, K, N), dy, w, dx)
GUARD(linear_backward_params, (const float *dy, const float *x, float *dw, float *db, int64_t M, int64_t K,
                               int64_t N),
      (dy, x, dw, db, M, K, N), dy, x, dw, db)
GUARD(conv2d_backward_data, (const float *dy, const float *w, float *dx, const sd_conv_geom *g), (dy, w, dx, g),
      dy, w, dx)
GUARD(conv2d_backward_params, (const float *dy, const float *x, float *dw, float *db, const sd_conv_geom *g),
      (dy, x, dw, db, g), dy, x, dw, db)
GUARD(group_norm_backward, (const float *x, const float *gamma, const float *beta, const float *dy, float *dx,
                            float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S, int groups, float eps,
                            int silu, int accumulate),
      (x, gamma, beta, dy, dx, dgamma, dbeta, B, C, S, groups, eps, silu, accumulate), x, gamma, beta, dy, dx, dgamma,
      dbeta)
GUARD(layer_norm_backward, (const float *x, const float *gamma, const float *dy, float *dx, float *dgamma,
                            float *dbeta, int64_t M, int64_t C, float eps),
      (x, gamma, dy, dx, dgamma, dbeta, M, C, eps), x, gamma, dy, dx, dgamma, dbeta)
GUARD(unary_backward, (sd_unary_op op, const float *x, const float *dy, float *dx, int64_t n, float alpha),
      (op, x, dy, dx, n, alpha), x, dy, dx)
GUARD(geglu_backward, (const float *x, const float *dy, float *dx, int64_t M, int64_t N, int accumulate),
      (x, dy, dx, M, N, accumulate), x, dy, dx)
GUARD(axpy, (float alpha, const float *x, float *y, int64_t n), (alpha, x, y, n), x, y)
GUARD(axpy_dev, (const float *coef, const float *x, float *y, int64_t n), (coef, x, y, n), coef, x, y)
GUARD(mul_acc, (const float *a, const float *b, float *y, int64_t n), (a, b, y, n), a, b, y)
GUARD(add_channel_bias_backward, (const float *dy, float *dv, int64_t B, int64_t C, int64_t S), (dy, dv, B, C, S),
      dy, dv)
GUARD(concat_channels_backward, (const float *dy, float *da, float *dc, int64_t B, int64_t Ca, int64_t Cb,
                                 int64_t S, int accumulate),
      (dy, da, dc, B, Ca, Cb, S, accumulate), dy, da, dc)
GUARD(upsample_nearest_backward, (const float *dy, float *dx, int64_t N, int64_t H, int64_t W, int64_t Ho,
                                  int64_t Wo, int accumulate),
      (dy, dx, N, H, W, Ho, Wo, accumulate), dy, dx)
GUARD(attention_backward, (const float *q, const float *k, const float *v, const float *out, const float *dout,
                           float *dq, float *dk, float *dv, int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv,
                           float scale, int causal, int accumulate, const float *lse),
      (q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal, accumulate, lse), q, k, v, out, dout, dq,
      dk, dv, lse)
GUARD(attention_probs_backward, (const float *q, const float *k, const float *probs, const float *dprobs, float *dq,
                                 float *dk, int64_t B, int64_t Sq, int64_t Sk, int H, int D, float scale),
      (q, k, probs, dprobs, dq, dk, B, Sq, Sk, H, D, scale), q, k, probs, dprobs, dq, dk)
GUARD(attention_apply_backward, (const float *probs, const float *v, const float *dout, float *dprobs, float *dv,
                                 int64_t B, int64_t Sq, int64_t Sk, int H, int Dv),
      (probs, v, dout, dprobs, dv, B, Sq, Sk, H, Dv), probs, v, dout, dprobs, dv)
GUARD(mse_backward, (const float *a, const float *b, const float *g, float *da, float *db, int64_t n),
      (a, b, g, da, db, n), a, b, g, da, db)
GUARD(adam_step, (float *p, const float *g, float *m, float *v, int64_t n, double lr, double beta1, double beta2,
                  double eps, int step),
      (p, g, m, v, n, lr, beta1, beta2, eps, step), p, g, m, v)
GUARD(max_pool2d, (const float *x, float *y, int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int kernel,
                   int stride),
      (x, y, N, H, W, Ho, Wo, kernel, stride), x, y)

/* The fp16-storage ops, guarded the same way (cpu->f16: the CPU twins). */
#define GUARD16(name, params, args, ...)                                               \
    static sd_status g16_##name params {                                               \
        const void *const device_args[] = {__VA_ARGS__};                               \
        if (!on_device("f16 " #name, device_args, sizeof device_args / sizeof *device_args)) \
            return SD_ERR_INTERNAL;                                                    \
        open_memory();                                                                 \
        const sd_status s = cpu->f16->name args;                                       \
        close_memory();                                                                \
        return s;                                                                      \
    }

GUARD16(to_f16, (const float *x, sd_f16 *y, int64_t n), (x, y, n), x, y)
GUARD16(to_f32, (const sd_f16 *x, float *y, int64_t n), (x, y, n), x, y)
GUARD16(copy, (sd_f16 *dst, const sd_f16 *src, int64_t n), (dst, src, n), dst, src)
GUARD16(linear, (const sd_f16 *x, const sd_f16 *w, const sd_f16 *b, const sd_f16 *r, sd_f16 *y, int64_t M, int64_t K,
                 int64_t N),
        (x, w, b, r, y, M, K, N), x, w, b, r, y)
GUARD16(linear_f32io, (const float *x, const sd_f16 *w, const float *b, const float *r, float *y, int64_t M,
                       int64_t K, int64_t N),
        (x, w, b, r, y, M, K, N), x, w, b, r, y)
GUARD16(conv2d, (const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r, sd_f16 *y,
                 const sd_conv_geom *g),
        (x, w, b, v, r, y, g), x, w, b, v, r, y)
GUARD16(group_norm, (const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B, int64_t C,
                     int64_t S, int groups, float eps, int silu),
        (x, gamma, beta, y, B, C, S, groups, eps, silu), x, gamma, beta, y)
GUARD16(layer_norm, (const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t M, int64_t C,
                     float eps),
        (x, gamma, beta, y, M, C, eps), x, gamma, beta, y)
GUARD16(binary, (sd_binary_op op, const sd_f16 *a, const sd_f16 *b, sd_f16 *y, int64_t n), (op, a, b, y, n), a, b, y)
GUARD16(add_channel_bias, (const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C, int64_t S),
        (x, v, y, B, C, S), x, v, y)
GUARD16(geglu, (const sd_f16 *x, sd_f16 *y, int64_t M, int64_t N), (x, y, M, N), x, y)
GUARD16(concat_channels, (const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca, int64_t Cb, int64_t S),
        (a, c, y, B, Ca, Cb, S), a, c, y)
GUARD16(upsample_nearest, (const sd_f16 *x, sd_f16 *y, int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo),
        (x, y, N, H, W, Ho, Wo), x, y)
GUARD16(transpose, (const sd_f16 *x, sd_f16 *y, int64_t B, int64_t R, int64_t C), (x, y, B, R, C), x, y)
GUARD16(attention, (const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, sd_f16 *out, int64_t B, int64_t Sq,
                    int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse),
        (q, k, v, out, B, Sq, Sk, H, D, Dv, scale, causal, lse), q, k, v, out, lse)

GUARD16(attention_backward, (const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, const sd_f16 *out,
                             const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq, int64_t Sk,
                             int H, int D, int Dv, float scale, int causal, int accumulate, const float *lse),
        (q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal, accumulate, lse), q, k, v, out, dout,
        dq, dk, dv, lse)

GUARD16(geglu_backward, (const sd_f16 *x, const float *dy, float *dx, int64_t M, int64_t N, int accumulate),
        (x, dy, dx, M, N, accumulate), x, dy, dx)
GUARD16(geglu_backward_bf16, (const sd_f16 *x, const float *dy, sd_f16 *dx, int64_t M, int64_t N), (x, dy, dx, M, N),
        x, dy, dx)
GUARD16(linear_backward_data_bf16, (const sd_f16 *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K, int64_t N,
                                    int accumulate),
        (dy, w, dx, M, K, N, accumulate), dy, w, dx)
GUARD16(layer_norm_backward, (const sd_f16 *x, const float *gamma, const float *dy, float *dx, float *dgamma,
                              float *dbeta, int64_t M, int64_t C, float eps),
        (x, gamma, dy, dx, dgamma, dbeta, M, C, eps), x, gamma, dy, dx, dgamma, dbeta)
GUARD16(group_norm_backward_nhwc, (const sd_f16 *x, const float *gamma, const float *beta, const float *dy, float *dx,
                                   float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S, int groups, float eps,
                                   int silu, int accumulate, const float *stats),
        (x, gamma, beta, dy, dx, dgamma, dbeta, B, C, S, groups, eps, silu, accumulate, stats), x, gamma, beta, dy, dx,
        dgamma, dbeta, stats)

GUARD16(to_bf16, (const float *x, sd_f16 *y, int64_t n), (x, y, n), x, y)
GUARD16(linear_backward_data_bf16w, (const float *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K, int64_t N,
                                     int accumulate),
        (dy, w, dx, M, K, N, accumulate), dy, w, dx)
GUARD16(linear_backward_data_bf16w_map, (const float *dy, const sd_f16 *w, float *dx, int64_t B, int64_t S, int64_t K,
                                         int64_t N, int dy_map, int dx_map, int accumulate),
        (dy, w, dx, B, S, K, N, dy_map, dx_map, accumulate), dy, w, dx)
/* the gradients' pointer array is the caller's host memory; each pointer in it must be the device's */
static sd_status g16_linear_backward_data_bf16w_many(const float *const *dy, int count, const sd_f16 *w, float *dx,
                                                     int64_t M, int64_t K, int64_t N, int accumulate) {
    const void *device_args[SD_LINEAR_MANY_MAX + 2] = {w, dx};
    for (int i = 0; i < count && i < SD_LINEAR_MANY_MAX; i++) device_args[2 + i] = dy[i];
    if (!on_device("f16 linear_backward_data_bf16w_many", device_args, 2 + (size_t)count)) return SD_ERR_INTERNAL;
    open_memory();
    const sd_status s = cpu->f16->linear_backward_data_bf16w_many(dy, count, w, dx, M, K, N, accumulate);
    close_memory();
    return s;
}
/* the biases' pointer array is the caller's host memory; each pointer in it must be the device's */
static sd_status g16_linear_batched_f32io(const float *x, const sd_f16 *w, const float *const *b, float *y, int64_t M,
                                          int64_t K, int64_t N, int count) {
    const void *device_args[SD_LINEAR_MANY_MAX + 3] = {x, w, y};
    size_t n = 3;
    for (int i = 0; b && i < count && i < SD_LINEAR_MANY_MAX; i++) device_args[n++] = b[i];
    if (!on_device("f16 linear_batched_f32io", device_args, n)) return SD_ERR_INTERNAL;
    open_memory();
    const sd_status s = cpu->f16->linear_batched_f32io(x, w, b, y, M, K, N, count);
    close_memory();
    return s;
}
GUARD16(to_bf16_conv_transposed, (const float *w, sd_f16 *wt, int64_t Co, int64_t Ci, int kh, int kw),
        (w, wt, Co, Ci, kh, kw), w, wt)
GUARD16(conv2d_backward_data_bf16w, (const float *dy, const sd_f16 *wt, float *dx, const sd_conv_geom *g,
                                     int accumulate),
        (dy, wt, dx, g, accumulate), dy, wt, dx)
GUARD16(linear_batched, (const sd_f16 *x, const sd_f16 *w, sd_f16 *y, int64_t M, int64_t K, int64_t N, int count),
        (x, w, y, M, K, N, count), x, w, y)
GUARD16(to_f16_nhwc, (const float *x, sd_f16 *y, int64_t B, int64_t C, int64_t S), (x, y, B, C, S), x, y)
GUARD16(to_f32_nchw, (const sd_f16 *x, const float *v, const float *r, float *y, int64_t B, int64_t C, int64_t S),
        (x, v, r, y, B, C, S), x, v, r, y)
GUARD16(conv2d_nhwc, (const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r, sd_f16 *y,
                      const sd_conv_geom *g),
        (x, w, b, v, r, y, g), x, w, b, v, r, y)
GUARD16(group_norm_nhwc, (const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B, int64_t C,
                          int64_t S, int groups, float eps, int silu, float *keep_stats),
        (x, gamma, beta, y, B, C, S, groups, eps, silu, keep_stats), x, gamma, beta, y, keep_stats)
GUARD16(add_channel_bias_nhwc, (const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C, int64_t S),
        (x, v, y, B, C, S), x, v, y)
GUARD16(concat_channels_nhwc, (const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca, int64_t Cb,
                               int64_t S),
        (a, c, y, B, Ca, Cb, S), a, c, y)
GUARD16(upsample_nearest_nhwc, (const sd_f16 *x, sd_f16 *y, int64_t B, int64_t H, int64_t W, int64_t C, int64_t Ho,
                                int64_t Wo),
        (x, y, B, H, W, C, Ho, Wo), x, y)

static sd_status g_synchronize(void) { return SD_OK; }

static sd_backend table;
static sd_f16_ops table16;

const sd_backend *guarded_backend(void) {
    if (pool) return &table;
    char *region = mmap(NULL, POOL_BYTES + HUGE_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region == MAP_FAILED) {
        fprintf(stderr, "guarded_backend: cannot reserve %zu GiB of address space\n", POOL_BYTES >> 30);
        return NULL;
    }
    pool = (char *)(((uintptr_t)region + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    /* Huge pages where the kernel allows them: each open/close then flips a few hundred page
     * directory entries instead of ~25,000 page table entries per 100 MB. */
    madvise(pool, POOL_BYTES, MADV_HUGEPAGE);
    cpu = sd_backend_cpu();
    /* Start from the CPU table: an op added later and not wrapped here runs unguarded on PROT_NONE
     * memory and faults, which says exactly what to add. */
    table = *cpu;
    table.name = "guarded";
    table.mem_alloc = guarded_alloc;
    table.mem_free = guarded_free;
    table.synchronize = g_synchronize;
#define SET(name) table.name = cpu->name ? g_##name : NULL
    SET(upload), SET(download), SET(zero), SET(linear), SET(conv2d), SET(group_norm), SET(layer_norm);
    SET(unary), SET(binary), SET(axpby), SET(axpby_dev), SET(add_channel_bias), SET(geglu), SET(concat_channels);
    SET(upsample_nearest), SET(transpose), SET(attention), SET(attention_apply), SET(timestep_embedding);
    SET(embedding), SET(clamp), SET(copy), SET(fill), SET(mse), SET(all_finite), SET(linear_backward_data);
    SET(linear_backward_params), SET(conv2d_backward_data), SET(conv2d_backward_params);
    SET(group_norm_backward), SET(layer_norm_backward), SET(unary_backward), SET(geglu_backward), SET(axpy);
    SET(axpy_dev);
    SET(mul_acc), SET(add_channel_bias_backward), SET(concat_channels_backward), SET(upsample_nearest_backward);
    SET(attention_backward), SET(attention_probs_backward), SET(attention_apply_backward), SET(mse_backward);
    SET(adam_step), SET(max_pool2d);
#undef SET
    table.f16 = NULL;
    if (cpu->f16) {
#define SET16(name) table16.name = g16_##name
        SET16(to_f16), SET16(to_f32), SET16(copy), SET16(linear), SET16(linear_f32io), SET16(conv2d), SET16(group_norm);
        SET16(layer_norm);
        SET16(binary), SET16(add_channel_bias), SET16(geglu), SET16(concat_channels), SET16(upsample_nearest);
        SET16(transpose), SET16(attention), SET16(to_f16_nhwc), SET16(to_f32_nchw), SET16(linear_batched), SET16(linear_batched_f32io), SET16(to_bf16), SET16(linear_backward_data_bf16w), SET16(linear_backward_data_bf16w_many), SET16(linear_backward_data_bf16w_map), SET16(conv2d_nhwc), SET16(group_norm_nhwc), SET16(add_channel_bias_nhwc);
        SET16(concat_channels_nhwc), SET16(upsample_nearest_nhwc), SET16(to_bf16_conv_transposed);
        SET16(conv2d_backward_data_bf16w), SET16(attention_backward), SET16(geglu_backward), SET16(layer_norm_backward);
        SET16(group_norm_backward_nhwc), SET16(geglu_backward_bf16), SET16(linear_backward_data_bf16);
        table16.attention_backward_takes = cpu->f16->attention_backward_takes; /* a predicate: no memory */
#undef SET16
        table.f16 = &table16;
    }
    const sd_device_free_fn previous = sd_set_device_free(guarded_device_free);
    if (previous != guarded_device_free) other_device_free = previous;
    return &table;
}

long guarded_backend_calls(void) { return calls; }
