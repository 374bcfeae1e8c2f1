/* cpu_f16.c: the CPU twins of the fp16-storage ops (sd_f16_ops, backend.h).
 *
 * Each twin widens its fp16 inputs to F32 (exact: every half is a float), runs the CPU F32 op of
 * the same name, and rounds the output once to nearest even (overflow gives Inf, as on a GPU):
 * the contract every device's fp16 table is tested against. The F32 temporaries are heap buffers
 * per call; this path exists for testing the storage format and for running the fp16 forward on
 * the CPU, not for speed. */
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "sd/core.h"

static const sd_backend *f32_ops(void) { return sd_backend_cpu(); }

static void widen(const sd_f16 *x, float *y, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = sd_f16_to_f32(x[i]);
}

static void narrow(const float *x, sd_f16 *y, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = sd_f32_to_f16(x[i]);
}

/* n floats of scratch, or NULL with the error set */
static float *scratch(int64_t n, const char *op) {
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) sd_fail(SD_ERR_OOM, "cpu fp16 %s: out of host memory for %lld floats", op, (long long)n);
    return p;
}

/* Up to four widened inputs and one F32 output, freed together. */
typedef struct {
    float *in[4];
    float *out;
} f32_bufs;

static void bufs_free(f32_bufs *b) {
    for (int i = 0; i < 4; i++) free(b->in[i]);
    free(b->out);
}

/* Widens inputs (x_i, n_i) into b->in[i] and allocates an output of n_out floats. */
static sd_status bufs_make(f32_bufs *b, const char *op, int count, const sd_f16 *const *x, const int64_t *n,
                           int64_t n_out) {
    memset(b, 0, sizeof *b);
    for (int i = 0; i < count; i++) {
        if (!(b->in[i] = scratch(n[i], op))) return bufs_free(b), SD_ERR_OOM;
        widen(x[i], b->in[i], n[i]);
    }
    if (!(b->out = scratch(n_out, op))) return bufs_free(b), SD_ERR_OOM;
    return SD_OK;
}

/* Rounds b->out (n floats) into y when st is SD_OK; frees the buffers either way. */
static sd_status finish(f32_bufs *b, sd_status st, sd_f16 *y, int64_t n) {
    if (st == SD_OK) narrow(b->out, y, n);
    bufs_free(b);
    return st;
}

static sd_status f16_from_f32(const float *x, sd_f16 *y, int64_t n) {
    narrow(x, y, n);
    return SD_OK;
}

static sd_status f16_to_f32(const sd_f16 *x, float *y, int64_t n) {
    widen(x, y, n);
    return SD_OK;
}

static sd_status f16_copy(sd_f16 *dst, const sd_f16 *src, int64_t n) {
    if (n > 0 && dst != src) memmove(dst, src, (size_t)n * sizeof *dst);
    return SD_OK;
}

static sd_status f16_linear(const sd_f16 *x, const sd_f16 *w, const sd_f16 *b, const sd_f16 *r, sd_f16 *y,
                             int64_t M, int64_t K, int64_t N) {
    /* bias and residual widened with the operands: both join the fp32 sum before y's only rounding */
    f32_bufs t;
    const sd_f16 *in[4] = {x, w};
    int64_t n[4] = {M * K, N * K};
    int count = 2, at_b = -1, at_r = -1;
    if (b) in[at_b = count] = b, n[count++] = N;
    if (r) in[at_r = count] = r, n[count++] = M * N;
    SD_TRY(bufs_make(&t, "linear", count, in, n, M * N));
    const float *b32 = at_b >= 0 ? t.in[at_b] : NULL, *r32 = at_r >= 0 ? t.in[at_r] : NULL;
    return finish(&t, f32_ops()->linear(t.in[0], t.in[1], b32, r32, t.out, M, K, N), y, M * N);
}

static sd_status f16_linear_f32io(const float *x, const sd_f16 *w, const float *b, const float *r, float *y,
                                 int64_t M, int64_t K, int64_t N) {
    /* x rounded to fp16 (the GPU's operand) and back, w widened, then the F32 linear */
    f32_bufs t;
    const sd_f16 *in[1] = {w};
    const int64_t n[1] = {N * K};
    SD_TRY(bufs_make(&t, "linear_f32io", 1, in, n, M * K));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M * K; i++) t.out[i] = sd_f16_to_f32(sd_f32_to_f16(x[i]));
    const sd_status st = f32_ops()->linear(t.out, t.in[0], b, r, y, M, K, N);
    bufs_free(&t);
    return st;
}

static sd_status f16_to_bf16(const float *x, sd_f16 *y, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = sd_f32_to_bf16(x[i]);
    return SD_OK;
}

/* dx (+)= d · w for d [M, N], already bf16 values in F32, and w bf16 [N, K]: w widened exactly,
 * then the F32 op (sums in fp32) */
static sd_status f16_linear_backward_data_bf16w_widened(const float *d, const sd_f16 *w, float *dx, int64_t M,
                                                        int64_t K, int64_t N, int accumulate) {
    float *wf = scratch(N * K, "linear_backward_data_bf16w");
    if (!wf) return SD_ERR_OOM;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * K; i++) wf[i] = sd_bf16_to_f32(w[i]);
    if (!accumulate) memset(dx, 0, (size_t)(M * K) * sizeof(float)); /* the F32 op adds: into zeros */
    const sd_status st = f32_ops()->linear_backward_data(d, wf, dx, M, K, N);
    free(wf);
    return st;
}

/* dx (+)= [bf16(dy_0) | … | bf16(dy_{count-1})] · w, w the bf16 copies stacked [count·N, K]: the
 * dy rounded side by side into one [M, count·N] operand, widened exactly, then one F32 product
 * (sums in fp32 over all count·N terms, as the GPU's one GEMM) */
static sd_status f16_linear_backward_data_bf16w_many(const float *const *dy, int count, const sd_f16 *w, float *dx,
                                                      int64_t M, int64_t K, int64_t N, int accumulate) {
    if (count < 1 || count > SD_LINEAR_MANY_MAX)
        return sd_fail(SD_ERR_INTERNAL, "cpu linear_backward_data_bf16w_many: %d gradients (1 to %d)", count,
                       SD_LINEAR_MANY_MAX);
    const int64_t NT = count * N;
    float *d = scratch(M * NT, "linear_backward_data_bf16w_many");
    if (!d) return SD_ERR_OOM;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < M; r++)
        for (int i = 0; i < count; i++)
            for (int64_t c = 0; c < N; c++) d[r * NT + i * N + c] = sd_bf16_to_f32(sd_f32_to_bf16(dy[i][r * N + c]));
    const sd_status st = f16_linear_backward_data_bf16w_widened(d, w, dx, M, K, NT, accumulate);
    free(d);
    return st;
}

/* dx (+)= bf16(dy) · w (w bf16): the one-gradient case of the above */
static sd_status f16_linear_backward_data_bf16w(const float *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K,
                                                 int64_t N, int accumulate) {
    const float *const one[1] = {dy};
    return f16_linear_backward_data_bf16w_many(one, 1, w, dx, M, K, N, accumulate);
}

/* The per-pixel linear's data gradient with maps in NCHW order: the token-order op above between
 * transposes (a move of values: the same sums, bit for bit, as on transposed copies). */
static sd_status f16_linear_backward_data_bf16w_map(const float *dy, const sd_f16 *w, float *dx, int64_t B, int64_t S,
                                                    int64_t K, int64_t N, int dy_map, int dx_map, int accumulate) {
    if (!dy_map && !dx_map) return f16_linear_backward_data_bf16w(dy, w, dx, B * S, K, N, accumulate);
    float *dy_tokens = dy_map ? scratch(B * S * N, "linear_backward_data_bf16w_map") : NULL;
    float *dx_tokens = dx_map ? scratch(B * S * K, "linear_backward_data_bf16w_map") : NULL;
    sd_status st = (dy_map && !dy_tokens) || (dx_map && !dx_tokens) ? SD_ERR_OOM : SD_OK;
    if (st == SD_OK && dy_map) st = f32_ops()->transpose(dy, dy_tokens, B, N, S);
    if (st == SD_OK)
        st = f16_linear_backward_data_bf16w(dy_map ? dy_tokens : dy, w, dx_map ? dx_tokens : dx, B * S, K, N,
                                            dx_map ? 0 : accumulate);
    if (st == SD_OK && dx_map) {
        /* dx (+)= the token-order result moved to [B, K, S] */
        for (int64_t b = 0; b < B; b++)
            for (int64_t k = 0; k < K; k++)
                for (int64_t s = 0; s < S; s++) {
                    const float v = dx_tokens[(b * S + s) * K + k];
                    float *d = &dx[(b * K + k) * S + s];
                    *d = accumulate ? *d + v : v;
                }
    }
    free(dy_tokens);
    free(dx_tokens);
    return st;
}

/* wt[ci, co, s] = bf16(w[co, ci, S-1-s]): channels swapped, the kh·kw taps reversed (the flip of
 * both kernel axes) */
static sd_status f16_to_bf16_conv_transposed(const float *w, sd_f16 *wt, int64_t Co, int64_t Ci, int kh, int kw) {
    const int64_t S = (int64_t)kh * kw;
#pragma omp parallel for schedule(static)
    for (int64_t ci = 0; ci < Ci; ci++)
        for (int64_t co = 0; co < Co; co++)
            for (int64_t s = 0; s < S; s++) wt[(ci * Co + co) * S + s] = sd_f32_to_bf16(w[(co * Ci + ci) * S + (S - 1 - s)]);
    return SD_OK;
}

/* dx (+)= conv(bf16(dy), wt): dy rounded and both widened exactly, then the F32 convolution of the
 * data gradient's geometry, written into dx or (accumulating) into a temporary added to it */
static sd_status f16_conv2d_backward_data_bf16w(const float *dy, const sd_f16 *wt, float *dx, const sd_conv_geom *g,
                                                 int accumulate) {
    sd_conv_geom t;
    if (!sd_conv_data_gradient_geom(g, &t))
        return sd_fail(SD_ERR_UNSUPPORTED, "cpu conv2d_backward_data_bf16w: a %dx%d kernel at stride %d, padding (%d, %d): "
                       "its data gradient is no stride-1 convolution", g->kh, g->kw, g->stride, g->pad_top, g->pad_left);
    if (!dx) return SD_OK;
    const int64_t ny = t.batch * t.c_in * t.h_in * t.w_in, nw = t.c_out * t.c_in * t.kh * t.kw;
    const int64_t nx = t.batch * t.c_out * t.h_out * t.w_out;
    float *d = scratch(ny, "conv2d_backward_data_bf16w"), *wf = d ? scratch(nw, "conv2d_backward_data_bf16w") : NULL;
    float *part = wf && accumulate ? scratch(nx, "conv2d_backward_data_bf16w") : NULL;
    sd_status st = wf && (part || !accumulate) ? SD_OK : SD_ERR_OOM;
    if (st == SD_OK) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < ny; i++) d[i] = sd_bf16_to_f32(sd_f32_to_bf16(dy[i]));
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nw; i++) wf[i] = sd_bf16_to_f32(wt[i]);
        st = f32_ops()->conv2d(d, wf, NULL, accumulate ? part : dx, &t);
    }
    if (st == SD_OK && accumulate) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nx; i++) dx[i] += part[i];
    }
    free(d);
    free(wf);
    free(part);
    return st;
}

static sd_status f16_linear_batched(const sd_f16 *x, const sd_f16 *w, sd_f16 *y, int64_t M, int64_t K, int64_t N,
                                     int count) {
    for (int i = 0; i < count; i++) SD_TRY(f16_linear(x, w + (int64_t)i * N * K, NULL, NULL, y + (int64_t)i * M * N, M, K, N));
    return SD_OK;
}

static sd_status f16_linear_batched_f32io(const float *x, const sd_f16 *w, const float *const *b, float *y, int64_t M,
                                          int64_t K, int64_t N, int count) {
    for (int i = 0; i < count; i++)
        SD_TRY(f16_linear_f32io(x, w + (int64_t)i * N * K, b ? b[i] : NULL, NULL, y + (int64_t)i * M * N, M, K, N));
    return SD_OK;
}

static sd_status f16_conv2d(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r,
                             sd_f16 *y, const sd_conv_geom *g) {
    f32_bufs t;
    const int64_t S = g->h_out * g->w_out, n_out = g->batch * g->c_out * S;
    const sd_f16 *in[3] = {x, w, r};
    const int64_t n[3] = {g->batch * g->c_in * g->h_in * g->w_in, g->c_out * g->c_in * g->kh * g->kw, n_out};
    SD_TRY(bufs_make(&t, "conv2d", r ? 3 : 2, in, n, n_out));
    sd_status st = f32_ops()->conv2d(t.in[0], t.in[1], NULL, t.out, g);
    if (st == SD_OK && (b || v || r)) {
        /* the product is rounded before the epilogue's sum (a separate pass on a device) */
        const float *res = t.in[2];
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t bc = 0; bc < g->batch; bc++)
            for (int64_t c = 0; c < g->c_out; c++) {
                float *row = t.out + (bc * g->c_out + c) * S;
                const float *rrow = res ? res + (bc * g->c_out + c) * S : NULL;
                for (int64_t s = 0; s < S; s++) {
                    float sum = sd_f16_to_f32(sd_f32_to_f16(row[s]));
                    if (b) sum += b[c];
                    if (v) sum += v[bc * g->c_out + c];
                    if (rrow) sum += rrow[s];
                    row[s] = sum;
                }
            }
    }
    return finish(&t, st, y, n_out);
}

static sd_status f16_group_norm(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B,
                                 int64_t C, int64_t S, int groups, float eps, int silu) {
    f32_bufs t;
    const int64_t n = B * C * S;
    SD_TRY(bufs_make(&t, "group_norm", 1, &x, &n, n));
    return finish(&t, f32_ops()->group_norm(t.in[0], gamma, beta, t.out, B, C, S, groups, eps, silu), y, n);
}

static sd_status f16_layer_norm(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t M,
                                 int64_t C, float eps) {
    f32_bufs t;
    const int64_t n = M * C;
    SD_TRY(bufs_make(&t, "layer_norm", 1, &x, &n, n));
    return finish(&t, f32_ops()->layer_norm(t.in[0], gamma, beta, t.out, M, C, eps), y, n);
}

static sd_status f16_binary(sd_binary_op op, const sd_f16 *a, const sd_f16 *b, sd_f16 *y, int64_t n) {
    f32_bufs t;
    const sd_f16 *in[2] = {a, b};
    const int64_t sizes[2] = {n, n};
    SD_TRY(bufs_make(&t, "binary", 2, in, sizes, n));
    return finish(&t, f32_ops()->binary(op, t.in[0], t.in[1], t.out, n), y, n);
}

static sd_status f16_add_channel_bias(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C,
                                       int64_t S) {
    f32_bufs t;
    const int64_t n = B * C * S;
    SD_TRY(bufs_make(&t, "add_channel_bias", 1, &x, &n, n));
    return finish(&t, f32_ops()->add_channel_bias(t.in[0], v, t.out, B, C, S), y, n);
}

static sd_status f16_geglu(const sd_f16 *x, sd_f16 *y, int64_t M, int64_t N) {
    f32_bufs t;
    const int64_t n = M * 2 * N;
    SD_TRY(bufs_make(&t, "geglu", 1, &x, &n, M * N));
    return finish(&t, f32_ops()->geglu(t.in[0], t.out, M, N), y, M * N);
}

/* The data movers go through the F32 ops too: widening and rounding back are exact for f16
 * values, so they move the 16-bit values unchanged, with the F32 ops' index logic. */
static sd_status f16_concat_channels(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca,
                                      int64_t Cb, int64_t S) {
    f32_bufs t;
    const sd_f16 *in[2] = {a, c};
    const int64_t n[2] = {B * Ca * S, B * Cb * S};
    SD_TRY(bufs_make(&t, "concat_channels", 2, in, n, n[0] + n[1]));
    return finish(&t, f32_ops()->concat_channels(t.in[0], t.in[1], t.out, B, Ca, Cb, S), y, n[0] + n[1]);
}

static sd_status f16_upsample_nearest(const sd_f16 *x, sd_f16 *y, int64_t N, int64_t H, int64_t W, int64_t Ho,
                                       int64_t Wo) {
    f32_bufs t;
    const int64_t n = N * H * W;
    SD_TRY(bufs_make(&t, "upsample_nearest", 1, &x, &n, N * Ho * Wo));
    return finish(&t, f32_ops()->upsample_nearest(t.in[0], t.out, N, H, W, Ho, Wo), y, N * Ho * Wo);
}

static sd_status f16_transpose(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t R, int64_t C) {
    f32_bufs t;
    const int64_t n = B * R * C;
    SD_TRY(bufs_make(&t, "transpose", 1, &x, &n, n));
    return finish(&t, f32_ops()->transpose(t.in[0], t.out, B, R, C), y, n);
}

static sd_status f16_attention(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, sd_f16 *out, int64_t B,
                                int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse) {
    (void)lse; /* the CPU's backward recomputes its maps */
    f32_bufs t;
    const sd_f16 *in[3] = {q, k, v};
    const int64_t n[3] = {B * Sq * H * D, B * Sk * H * D, B * Sk * H * Dv};
    const int64_t n_out = B * Sq * H * Dv;
    SD_TRY(bufs_make(&t, "attention", 3, in, n, n_out));
    return finish(&t, f32_ops()->attention(t.in[0], t.in[1], t.in[2], t.out, NULL, B, Sq, Sk, H, D, Dv, scale, causal, NULL),
                  out, n_out);
}

static int f16_attention_backward_takes(int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale) {
    (void)B, (void)Sq, (void)Sk, (void)H, (void)D, (void)Dv, (void)scale;
    return 1;
}

static sd_status f16_attention_backward(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, const sd_f16 *out,
                                        const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq,
                                        int64_t Sk, int H, int D, int Dv, float scale, int causal, int accumulate,
                                        const float *lse) {
    f32_bufs t;
    const sd_f16 *in[4] = {q, k, v, out};
    const int64_t n[4] = {B * Sq * H * D, B * Sk * H * D, B * Sk * H * Dv, B * Sq * H * Dv};
    SD_TRY(bufs_make(&t, "attention_backward", 4, in, n, 0));
    const sd_status st = f32_ops()->attention_backward(t.in[0], t.in[1], t.in[2], t.in[3], dout, dq, dk, dv, B, Sq,
                                                       Sk, H, D, Dv, scale, causal, accumulate, lse);
    bufs_free(&t);
    return st;
}

static sd_status f16_geglu_backward(const sd_f16 *x, const float *dy, float *dx, int64_t M, int64_t N,
                                    int accumulate) {
    f32_bufs t;
    const int64_t n = M * 2 * N;
    SD_TRY(bufs_make(&t, "geglu_backward", 1, &x, &n, 0));
    const sd_status st = f32_ops()->geglu_backward(t.in[0], dy, dx, M, N, accumulate);
    bufs_free(&t);
    return st;
}

/* the F32 op into a temporary, then each value rounded to bf16 (to_bf16's rounding) */
static sd_status f16_geglu_backward_bf16(const sd_f16 *x, const float *dy, sd_f16 *dx, int64_t M, int64_t N) {
    float *d = scratch(M * 2 * N, "geglu_backward_bf16");
    if (!d) return SD_ERR_OOM;
    sd_status st = f16_geglu_backward(x, dy, d, M, N, 0);
    if (st == SD_OK) st = f16_to_bf16(d, dx, M * 2 * N);
    free(d);
    return st;
}

/* dx (+)= dy · w for dy already bf16: widened exactly, then the token op's product */
static sd_status f16_linear_backward_data_bf16(const sd_f16 *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K,
                                               int64_t N, int accumulate) {
    float *d = scratch(M * N, "linear_backward_data_bf16");
    if (!d) return SD_ERR_OOM;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M * N; i++) d[i] = sd_bf16_to_f32(dy[i]);
    const sd_status st = f16_linear_backward_data_bf16w_widened(d, w, dx, M, K, N, accumulate);
    free(d);
    return st;
}

static sd_status f16_layer_norm_backward(const sd_f16 *x, const float *gamma, const float *dy, float *dx,
                                         float *dgamma, float *dbeta, int64_t M, int64_t C, float eps) {
    f32_bufs t;
    const int64_t n = M * C;
    SD_TRY(bufs_make(&t, "layer_norm_backward", 1, &x, &n, 0));
    const sd_status st = f32_ops()->layer_norm_backward(t.in[0], gamma, dy, dx, dgamma, dbeta, M, C, eps);
    bufs_free(&t);
    return st;
}

/* ---- channels-last twins: the NCHW twin of the same name between transposes (moves of 16-bit
 * values: the arithmetic, its order and its roundings are the NCHW op's) ---- */

/* y [B, C, S] <- x [B, S, C] (to_nchw) or y [B, S, C] <- x [B, C, S], into a new heap buffer */
static sd_f16 *relayout16(const sd_f16 *x, int64_t B, int64_t S, int64_t C, int to_nchw, const char *op) {
    sd_f16 *y = malloc((size_t)(B * S * C > 0 ? B * S * C : 1) * sizeof(sd_f16));
    if (!y) {
        sd_fail(SD_ERR_OOM, "cpu fp16 %s: out of host memory for %lld halves", op, (long long)(B * S * C));
        return NULL;
    }
    if ((to_nchw ? f16_transpose(x, y, B, S, C) : f16_transpose(x, y, B, C, S)) != SD_OK) {
        free(y);
        return NULL;
    }
    return y;
}

/* out_nhwc [B, S, C] <- the NCHW result y [B, C, S]; frees y */
static sd_status back_to_nhwc(sd_status st, sd_f16 *y, sd_f16 *out_nhwc, int64_t B, int64_t C, int64_t S) {
    if (st == SD_OK) st = f16_transpose(y, out_nhwc, B, C, S);
    free(y);
    return st;
}

static sd_status f16_to_f16_nhwc(const float *x, sd_f16 *y, int64_t B, int64_t C, int64_t S) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < S; s++)
            for (int64_t c = 0; c < C; c++) y[(b * S + s) * C + c] = sd_f32_to_f16(x[(b * C + c) * S + s]);
    return SD_OK;
}

static sd_status f16_to_f32_nchw(const sd_f16 *x, const float *v, const float *r, float *y, int64_t B, int64_t C,
                                 int64_t S) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t s = 0; s < S; s++) {
                const int64_t i = (b * C + c) * S + s;
                float t = sd_f16_to_f32(x[(b * S + s) * C + c]);
                if (v) t += v[b * C + c];
                if (r) t += r[i];
                y[i] = t;
            }
    return SD_OK;
}

static sd_status f16_conv2d_nhwc(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r,
                                  sd_f16 *y, const sd_conv_geom *g) {
    const int64_t taps = (int64_t)g->kh * g->kw, So = g->h_out * g->w_out;
    sd_f16 *xc = relayout16(x, g->batch, g->h_in * g->w_in, g->c_in, 1, "conv2d_nhwc");
    sd_f16 *wc = xc ? relayout16(w, g->c_out, taps, g->c_in, 1, "conv2d_nhwc") : NULL; /* KRSC -> KCRS */
    sd_f16 *rc = wc && r ? relayout16(r, g->batch, So, g->c_out, 1, "conv2d_nhwc") : NULL;
    sd_f16 *yc = wc && (rc || !r)
                     ? malloc((size_t)(g->batch * g->c_out * So > 0 ? g->batch * g->c_out * So : 1) * sizeof(sd_f16))
                     : NULL;
    if (!yc) {
        free(xc);
        free(wc);
        free(rc);
        return sd_fail(SD_ERR_OOM, "cpu fp16 conv2d_nhwc: out of host memory");
    }
    const sd_status st = f16_conv2d(xc, wc, b, v, rc, yc, g);
    free(xc);
    free(wc);
    free(rc);
    return back_to_nhwc(st, yc, y, g->batch, g->c_out, So);
}

static sd_status f16_group_norm_nhwc(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B,
                                      int64_t C, int64_t S, int groups, float eps, int silu, float *keep_stats) {
    sd_f16 *xc = relayout16(x, B, S, C, 1, "group_norm_nhwc");
    if (!xc) return SD_ERR_OOM;
    /* f16_group_norm's widen, F32 op, round, with the kept statistics taken from the one widened copy */
    f32_bufs t;
    const int64_t n = B * C * S, cpg = C / groups;
    const sd_f16 *in = xc;
    sd_status st = bufs_make(&t, "group_norm_nhwc", 1, &in, &n, n);
    if (st != SD_OK) return free(xc), st;
    if (keep_stats) {
        /* each group's statistics as the F32 op computes them (cpu_norm_stats on the widened values),
         * which is also what this backend's backward recomputes: kept and recomputed agree bit for bit */
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; b++)
            for (int g = 0; g < groups; g++)
                cpu_norm_stats(t.in[0] + (b * C + g * cpg) * S, cpg * S, eps, &keep_stats[(b * groups + g) * 2 + 0],
                               &keep_stats[(b * groups + g) * 2 + 1]);
    }
    st = finish(&t, f32_ops()->group_norm(t.in[0], gamma, beta, t.out, B, C, S, groups, eps, silu), xc, n);
    return back_to_nhwc(st, xc, y, B, C, S);
}

/* stats, the forward's (f16_group_norm_nhwc's keep_stats), go unread: the F32 op recomputes them with
 * the same cpu_norm_stats on the same widened values, so they are the kept ones bit for bit. */
static sd_status f16_group_norm_backward_nhwc(const sd_f16 *x, const float *gamma, const float *beta,
                                              const float *dy, float *dx, float *dgamma, float *dbeta, int64_t B,
                                              int64_t C, int64_t S, int groups, float eps, int silu, int accumulate,
                                              const float *stats) {
    (void)stats;
    sd_f16 *xc = relayout16(x, B, S, C, 1, "group_norm_backward_nhwc");
    if (!xc) return SD_ERR_OOM;
    f32_bufs t;
    const int64_t n = B * C * S;
    const sd_f16 *in = xc;
    sd_status st = bufs_make(&t, "group_norm_backward_nhwc", 1, &in, &n, 0);
    free(xc);
    if (st != SD_OK) return st;
    st = f32_ops()->group_norm_backward(t.in[0], gamma, beta, dy, dx, dgamma, dbeta, B, C, S, groups, eps, silu,
                                        accumulate);
    bufs_free(&t);
    return st;
}

static sd_status f16_add_channel_bias_nhwc(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C,
                                            int64_t S) {
    sd_f16 *xc = relayout16(x, B, S, C, 1, "add_channel_bias_nhwc");
    if (!xc) return SD_ERR_OOM;
    return back_to_nhwc(f16_add_channel_bias(xc, v, xc, B, C, S), xc, y, B, C, S);
}

static sd_status f16_concat_channels_nhwc(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca,
                                           int64_t Cb, int64_t S) {
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < B * S; p++) {
        memcpy(y + p * (Ca + Cb), a + p * Ca, (size_t)Ca * sizeof(sd_f16));
        memcpy(y + p * (Ca + Cb) + Ca, c + p * Cb, (size_t)Cb * sizeof(sd_f16));
    }
    return SD_OK;
}

static sd_status f16_upsample_nearest_nhwc(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t H, int64_t W, int64_t C,
                                            int64_t Ho, int64_t Wo) {
    sd_f16 *xc = relayout16(x, B, H * W, C, 1, "upsample_nearest_nhwc");
    sd_f16 *yc = xc ? malloc((size_t)(B * C * Ho * Wo > 0 ? B * C * Ho * Wo : 1) * sizeof(sd_f16)) : NULL;
    if (!yc) {
        free(xc);
        return sd_fail(SD_ERR_OOM, "cpu fp16 upsample_nearest_nhwc: out of host memory");
    }
    const sd_status st = f16_upsample_nearest(xc, yc, B * C, H, W, Ho, Wo);
    free(xc);
    return back_to_nhwc(st, yc, y, B, C, Ho * Wo);
}

const sd_f16_ops cpu_f16_ops = {
    .to_f16 = f16_from_f32,
    .to_f32 = f16_to_f32,
    .copy = f16_copy,
    .linear = f16_linear,
    .linear_f32io = f16_linear_f32io,
    .linear_batched = f16_linear_batched,
    .linear_batched_f32io = f16_linear_batched_f32io,
    .to_bf16 = f16_to_bf16,
    .linear_backward_data_bf16w = f16_linear_backward_data_bf16w,
    .linear_backward_data_bf16w_many = f16_linear_backward_data_bf16w_many,
    .linear_backward_data_bf16w_map = f16_linear_backward_data_bf16w_map,
    .to_bf16_conv_transposed = f16_to_bf16_conv_transposed,
    .conv2d_backward_data_bf16w = f16_conv2d_backward_data_bf16w,
    .conv2d = f16_conv2d,
    .group_norm = f16_group_norm,
    .layer_norm = f16_layer_norm,
    .binary = f16_binary,
    .add_channel_bias = f16_add_channel_bias,
    .geglu = f16_geglu,
    .concat_channels = f16_concat_channels,
    .upsample_nearest = f16_upsample_nearest,
    .transpose = f16_transpose,
    .attention = f16_attention,
    .attention_backward_takes = f16_attention_backward_takes,
    .attention_backward = f16_attention_backward,
    .geglu_backward = f16_geglu_backward,
    .geglu_backward_bf16 = f16_geglu_backward_bf16,
    .linear_backward_data_bf16 = f16_linear_backward_data_bf16,
    .layer_norm_backward = f16_layer_norm_backward,
    .group_norm_backward_nhwc = f16_group_norm_backward_nhwc,
    .to_f16_nhwc = f16_to_f16_nhwc,
    .to_f32_nchw = f16_to_f32_nchw,
    .conv2d_nhwc = f16_conv2d_nhwc,
    .group_norm_nhwc = f16_group_norm_nhwc,
    .add_channel_bias_nhwc = f16_add_channel_bias_nhwc,
    .concat_channels_nhwc = f16_concat_channels_nhwc,
    .upsample_nearest_nhwc = f16_upsample_nearest_nhwc,
};
