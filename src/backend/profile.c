/* profile.c: a backend that times the ops of another one (see device.h, sd_profile).
 *
 * Every wrapped op synchronises the device, runs, synchronises again and adds its time, its
 * arithmetic (2 flops per multiply-add) and the activation bytes it reads and writes to its class.
 * On the CUDA backend the time is the GPU's: the op is queued behind a kernel that holds the stream
 * for PROF_HOLD_US, between two CUDA events, so its kernels start back to back as in a replayed
 * graph. Timed by the wall clock instead (the CPU backend), the time of an empty synchronise pair,
 * measured when the table is made, is subtracted from every op, and what remains of a small op on
 * a GPU is mostly its launch: the fourth GPU session's profiles summed to 1.9x the replayed
 * graph's time that way. The forward ops (F32 and fp16) and the
 * backward ops are wrapped; Adam, the reductions and memory transfers run as they are and count in
 * the untimed rest. One profiled table
 * exists at a time (a bench runs one), so the wrappers reach the inner table through statics.
 * Each op is also added to a finer table by op and shape (its label: the wrapper's name, or what
 * LABEL() says for the ops with a shape worth naming). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/device.h"

static const sd_backend *inner;
static const sd_f16_ops *inner16;
static sd_profile *prof;
static sd_backend table;
static sd_f16_ops table16;

/* How long the stream is held before a device-timed op: longer than the host needs to queue the
 * op's launches (a few microseconds each) and its host-side work (plan look-ups). */
#define PROF_HOLD_US 200.0

static double prof_begin(void) {
    inner->synchronize();
    if (prof->device_timed && (sd_cuda_hold(PROF_HOLD_US) != SD_OK || sd_cuda_timer_start() != SD_OK))
        prof->device_timed = 0; /* cannot happen on a working device; the wall clock then */
    return sd_now();
}

static char label[sizeof(((sd_prof_shape *)0)->what)]; /* the next timed op's name and shape */

/* Names the next timed op: "conv 3x3 320->320 64x64 b2". */
static void LABEL(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(label, sizeof label, fmt, ap);
    va_end(ap);
}

static void add_to_shape(const char *what, sd_prof_class k, double dt, double flops, double bytes) {
    int i = 0;
    while (i < prof->n_shapes && strcmp(prof->shapes[i].what, what) != 0) i++;
    if (i == prof->n_shapes) {
        if (prof->n_shapes == SD_PROF_MAX_SHAPES) { /* full: pool the rest in the last entry */
            i = SD_PROF_MAX_SHAPES - 1;
            snprintf(prof->shapes[i].what, sizeof prof->shapes[i].what, "(other shapes)");
        } else {
            prof->n_shapes++;
            snprintf(prof->shapes[i].what, sizeof prof->shapes[i].what, "%s", what);
            prof->shapes[i].cls = k;
        }
    }
    sd_prof_shape *e = &prof->shapes[i];
    e->calls++;
    e->seconds += dt;
    e->flops += flops;
    e->bytes += bytes;
}

static sd_status prof_end(double t0, sd_status st, sd_prof_class k, double flops, double bytes, const char *func) {
    double dt;
    sd_status synced;
    if (prof->device_timed) {
        const double queued = sd_now() - t0; /* the host's part: launches and plan look-ups */
        float ms = 0.0f;
        synced = sd_cuda_timer_stop(&ms);
        if (synced == SD_OK) synced = inner->synchronize();
        dt = 1e-3 * ms;
        if (queued > 1e-6 * PROF_HOLD_US) prof->launch_bound_ops++;
    } else {
        synced = inner->synchronize();
        dt = sd_now() - t0 - prof->sync_overhead_s;
    }
    if (dt < 0.0) dt = 0.0;
    prof->calls[k]++;
    prof->seconds[k] += dt;
    prof->flops[k] += flops;
    prof->bytes[k] += bytes;
    /* unlabelled ops go by their wrapper's name without its p_ / q_ prefix (q_: fp16) */
    char what[sizeof label];
    if (label[0])
        snprintf(what, sizeof what, "%s%s", func[0] == 'q' ? "f16 " : "", label);
    else
        snprintf(what, sizeof what, "%s%s", func[0] == 'q' ? "f16 " : "", func + 2);
    label[0] = 0;
    add_to_shape(what, k, dt, flops, bytes);
    return st != SD_OK ? st : synced;
}

/* Times `call` as one op of class k. */
#define TIMED(k, flops, bytes, call)                                                                \
    do {                                                                                           \
        const double t0_ = prof_begin();                                                           \
        const sd_status st_ = (call);                                                              \
        return prof_end(t0_, st_, (k), (double)(flops), (double)(bytes), __func__);                \
    } while (0)

/* the labels of the ops whose cost depends on more than their element count */
static void label_conv(const char *op, const sd_conv_geom *g) {
    LABEL("%s %lldx%lld/%lld %lld->%lld %lldx%lld b%lld", op, (long long)g->kh, (long long)g->kw,
          (long long)g->stride, (long long)g->c_in, (long long)g->c_out, (long long)g->h_in, (long long)g->w_in,
          (long long)g->batch);
}
static void label_gemm(const char *op, int64_t M, int64_t K, int64_t N) {
    LABEL("%s M%lld K%lld N%lld", op, (long long)M, (long long)K, (long long)N);
}
static void label_attention(const char *op, int64_t B, int64_t Sq, int64_t Sk, int H, int D) {
    LABEL("%s B%lld Sq%lld Sk%lld H%d D%d", op, (long long)B, (long long)Sq, (long long)Sk, H, D);
}

#define F4 4.0 /* bytes of an F32 activation */
#define F2 2.0 /* bytes of an fp16 activation */

static double conv_flops(const sd_conv_geom *g) {
    return 2.0 * (double)g->batch * g->c_out * g->h_out * g->w_out * g->c_in * g->kh * g->kw;
}
static double conv_values(const sd_conv_geom *g) {
    return (double)g->batch * (g->c_in * g->h_in * g->w_in + g->c_out * g->h_out * g->w_out);
}
static double attention_flops(int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv) {
    return 2.0 * (double)B * H * Sq * Sk * (D + Dv);
}
static double attention_values(int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv) {
    return (double)B * H * (Sq * (D + Dv) + Sk * (D + Dv));
}

/* ---- F32 ops ---- */

static sd_status p_linear(const float *x, const float *w, const float *b, const float *r, float *y, int64_t M,
                         int64_t K, int64_t N) {
    label_gemm(r ? "linear+residual" : "linear", M, K, N);
    TIMED(SD_PROF_GEMM, 2.0 * M * K * N, F4 * (M * K + (r ? 2 : 1) * M * N), inner->linear(x, w, b, r, y, M, K, N));
}
static sd_status p_conv2d(const float *x, const float *w, const float *b, float *y, const sd_conv_geom *g) {
    label_conv("conv", g);
    TIMED(SD_PROF_CONV, conv_flops(g), F4 * conv_values(g), inner->conv2d(x, w, b, y, g));
}
static sd_status p_group_norm(const float *x, const float *gamma, const float *beta, float *y, int64_t B, int64_t C,
                              int64_t S, int groups, float eps, int silu) {
    LABEL("group_norm%s C%lld S%lld b%lld", silu ? "+silu" : "", (long long)C, (long long)S, (long long)B);
    TIMED(SD_PROF_NORM, 0, F4 * 2 * B * C * S, inner->group_norm(x, gamma, beta, y, B, C, S, groups, eps, silu));
}
static sd_status p_layer_norm(const float *x, const float *gamma, const float *beta, float *y, int64_t M, int64_t C,
                              float eps) {
    TIMED(SD_PROF_NORM, 0, F4 * 2 * M * C, inner->layer_norm(x, gamma, beta, y, M, C, eps));
}
static sd_status p_unary(sd_unary_op op, const float *x, float *y, int64_t n, float alpha) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 2 * n, inner->unary(op, x, y, n, alpha));
}
static sd_status p_binary(sd_binary_op op, const float *a, const float *b, float *y, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 3 * n, inner->binary(op, a, b, y, n));
}
static sd_status p_add_channel_bias(const float *x, const float *v, float *y, int64_t B, int64_t C, int64_t S) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 2 * B * C * S, inner->add_channel_bias(x, v, y, B, C, S));
}
static sd_status p_geglu(const float *x, float *y, int64_t M, int64_t N) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 3 * M * N, inner->geglu(x, y, M, N));
}
static sd_status p_concat_channels(const float *a, const float *c, float *y, int64_t B, int64_t Ca, int64_t Cb,
                                   int64_t S) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 2 * B * (Ca + Cb) * S, inner->concat_channels(a, c, y, B, Ca, Cb, S));
}
static sd_status p_upsample_nearest(const float *x, float *y, int64_t N, int64_t H, int64_t W, int64_t Ho,
                                    int64_t Wo) {
    TIMED(SD_PROF_MEMORY, 0, F4 * N * (H * W + Ho * Wo), inner->upsample_nearest(x, y, N, H, W, Ho, Wo));
}
static sd_status p_transpose(const float *x, float *y, int64_t B, int64_t R, int64_t C) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 2 * B * R * C, inner->transpose(x, y, B, R, C));
}
static sd_status p_copy(float *dst, const float *src, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 2 * n, inner->copy(dst, src, n));
}
/* the backward's zero-filled gradient buffers are what these mostly are: a profile shows how many
 * are left (autograd.c avoids them where a first contribution fills its buffer itself) */
static sd_status p_zero(void *dst, size_t bytes) {
    LABEL("zero fill");
    TIMED(SD_PROF_MEMORY, 0, (double)bytes, inner->zero(dst, bytes));
}
static sd_status p_attention(const float *q, const float *k, const float *v, float *out, float *probs, int64_t B,
                             int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse) {
    label_attention(probs ? "attention+maps" : "attention", B, Sq, Sk, H, D);
    TIMED(SD_PROF_ATTENTION, attention_flops(B, Sq, Sk, H, D, Dv),
          F4 * (attention_values(B, Sq, Sk, H, D, Dv) + (probs ? (double)B * H * Sq * Sk : 0.0)),
          inner->attention(q, k, v, out, probs, B, Sq, Sk, H, D, Dv, scale, causal, lse));
}
static sd_status p_attention_apply(const float *probs, const float *v, float *out, int64_t B, int64_t Sq, int64_t Sk,
                                   int H, int Dv) {
    label_attention("attention_apply", B, Sq, Sk, H, Dv);
    TIMED(SD_PROF_ATTENTION, 2.0 * B * H * Sq * Sk * Dv, F4 * ((double)B * H * Sq * Sk + (double)B * H * (Sk + Sq) * Dv),
          inner->attention_apply(probs, v, out, B, Sq, Sk, H, Dv));
}

/* ---- backward ops (F32; a NULL output is not computed, so its arithmetic is not counted) ---- */

static sd_status p_linear_backward_data(const float *dy, const float *w, float *dx, int64_t M, int64_t K, int64_t N) {
    label_gemm("linear_backward_data", M, K, N);
    TIMED(SD_PROF_GEMM, dx ? 2.0 * M * K * N : 0, F4 * (M * N + 2 * M * K), inner->linear_backward_data(dy, w, dx, M, K, N));
}
static sd_status p_linear_backward_params(const float *dy, const float *x, float *dw, float *db, int64_t M, int64_t K,
                                          int64_t N) {
    label_gemm(dw ? "linear_backward_params" : "linear_backward_bias", M, K, N);
    TIMED(SD_PROF_GEMM, dw ? 2.0 * M * K * N : 0, F4 * (M * N + M * K), inner->linear_backward_params(dy, x, dw, db, M, K, N));
}
static sd_status p_conv2d_backward_data(const float *dy, const float *w, float *dx, const sd_conv_geom *g) {
    label_conv("conv_backward_data", g);
    TIMED(SD_PROF_CONV, dx ? conv_flops(g) : 0, F4 * conv_values(g), inner->conv2d_backward_data(dy, w, dx, g));
}
static sd_status p_conv2d_backward_params(const float *dy, const float *x, float *dw, float *db, const sd_conv_geom *g) {
    label_conv(dw ? "conv_backward_params" : "conv_backward_bias", g);
    TIMED(SD_PROF_CONV, dw ? conv_flops(g) : 0, F4 * conv_values(g), inner->conv2d_backward_params(dy, x, dw, db, g));
}
static sd_status p_group_norm_backward(const float *x, const float *gamma, const float *beta, const float *dy, float *dx,
                                       float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S, int groups,
                                       float eps, int silu, int accumulate) {
    LABEL("group_norm_backward%s C%lld S%lld b%lld", silu ? "+silu" : "", (long long)C, (long long)S, (long long)B);
    /* x read twice (statistics, data gradient), dy, dx written (and read when accumulating) */
    TIMED(SD_PROF_NORM, 0, F4 * (accumulate ? 5 : 4) * B * C * S,
          inner->group_norm_backward(x, gamma, beta, dy, dx, dgamma, dbeta, B, C, S, groups, eps, silu, accumulate));
}
static sd_status p_layer_norm_backward(const float *x, const float *gamma, const float *dy, float *dx, float *dgamma,
                                       float *dbeta, int64_t M, int64_t C, float eps) {
    TIMED(SD_PROF_NORM, 0, F4 * 3 * M * C, inner->layer_norm_backward(x, gamma, dy, dx, dgamma, dbeta, M, C, eps));
}
static sd_status p_unary_backward(sd_unary_op op, const float *x, const float *dy, float *dx, int64_t n, float alpha) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 3 * n, inner->unary_backward(op, x, dy, dx, n, alpha));
}
static sd_status p_geglu_backward(const float *x, const float *dy, float *dx, int64_t M, int64_t N, int accumulate) {
    /* x [M, 2N] and dy [M, N] read, dx [M, 2N] written (and read when accumulating) */
    TIMED(SD_PROF_MEMORY, 0, F4 * (accumulate ? 7 : 5) * M * N, inner->geglu_backward(x, dy, dx, M, N, accumulate));
}
static sd_status p_axpy(float alpha, const float *x, float *y, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 3 * n, inner->axpy(alpha, x, y, n));
}
static sd_status p_mul_acc(const float *a, const float *b, float *y, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 4 * n, inner->mul_acc(a, b, y, n));
}
static sd_status p_add_channel_bias_backward(const float *dy, float *dv, int64_t B, int64_t C, int64_t S) {
    TIMED(SD_PROF_MEMORY, 0, F4 * B * C * S, inner->add_channel_bias_backward(dy, dv, B, C, S));
}
static sd_status p_concat_channels_backward(const float *dy, float *da, float *dc, int64_t B, int64_t Ca, int64_t Cb,
                                            int64_t S, int accumulate) {
    TIMED(SD_PROF_MEMORY, 0, F4 * (accumulate ? 3 : 2) * B * (Ca + Cb) * S,
          inner->concat_channels_backward(dy, da, dc, B, Ca, Cb, S, accumulate));
}
static sd_status p_upsample_nearest_backward(const float *dy, float *dx, int64_t N, int64_t H, int64_t W, int64_t Ho,
                                             int64_t Wo, int accumulate) {
    TIMED(SD_PROF_MEMORY, 0, F4 * N * (Ho * Wo + (accumulate ? 2 : 1) * H * W),
          inner->upsample_nearest_backward(dy, dx, N, H, W, Ho, Wo, accumulate));
}
/* flash-style backward: S recomputed, dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q */
static sd_status p_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                      const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq,
                                      int64_t Sk, int H, int D, int Dv, float scale, int causal, int accumulate,
                                      const float *lse) {
    label_attention("attention_backward", B, Sq, Sk, H, D);
    TIMED(SD_PROF_ATTENTION, 2.0 * B * H * Sq * Sk * (3.0 * D + 2.0 * Dv), F4 * 2 * attention_values(B, Sq, Sk, H, D, Dv),
          inner->attention_backward(q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal, accumulate,
                                    lse));
}
static sd_status p_attention_probs_backward(const float *q, const float *k, const float *probs, const float *dprobs,
                                            float *dq, float *dk, int64_t B, int64_t Sq, int64_t Sk, int H, int D,
                                            float scale) {
    label_attention("attention_probs_backward", B, Sq, Sk, H, D);
    TIMED(SD_PROF_ATTENTION, 2.0 * B * H * Sq * Sk * 2.0 * D, F4 * (2.0 * B * H * Sq * Sk + 4.0 * B * H * (Sq + Sk) * D),
          inner->attention_probs_backward(q, k, probs, dprobs, dq, dk, B, Sq, Sk, H, D, scale));
}
static sd_status p_attention_apply_backward(const float *probs, const float *v, const float *dout, float *dprobs,
                                            float *dv, int64_t B, int64_t Sq, int64_t Sk, int H, int Dv) {
    label_attention("attention_apply_backward", B, Sq, Sk, H, Dv);
    TIMED(SD_PROF_ATTENTION, 2.0 * B * H * Sq * Sk * 2.0 * Dv, F4 * (2.0 * B * H * Sq * Sk + 3.0 * B * H * (Sq + Sk) * Dv),
          inner->attention_apply_backward(probs, v, dout, dprobs, dv, B, Sq, Sk, H, Dv));
}
static sd_status p_mse_backward(const float *a, const float *b, const float *g, float *da, float *db, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, F4 * 4 * n, inner->mse_backward(a, b, g, da, db, n));
}

/* ---- fp16 ops ---- */

static sd_status q_to_f16(const float *x, sd_f16 *y, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, (F4 + F2) * n, inner16->to_f16(x, y, n));
}
static sd_status q_to_f32(const sd_f16 *x, float *y, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, (F4 + F2) * n, inner16->to_f32(x, y, n));
}
static sd_status q_copy(sd_f16 *dst, const sd_f16 *src, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 2 * n, inner16->copy(dst, src, n));
}
static sd_status q_linear(const sd_f16 *x, const sd_f16 *w, const sd_f16 *b, const sd_f16 *r, sd_f16 *y, int64_t M,
                          int64_t K, int64_t N) {
    label_gemm(r ? "linear+residual" : "linear", M, K, N);
    TIMED(SD_PROF_GEMM, 2.0 * M * K * N, F2 * (M * K + (r ? 2 : 1) * M * N), inner16->linear(x, w, b, r, y, M, K, N));
}
static sd_status q_linear_f32io(const float *x, const sd_f16 *w, const float *b, const float *r, float *y, int64_t M,
                                int64_t K, int64_t N) {
    label_gemm(r ? "linear (fp16 w)+residual" : "linear (fp16 w)", M, K, N);
    TIMED(SD_PROF_GEMM, 2.0 * M * K * N, F4 * (M * K + (r ? 2 : 1) * M * N) + F2 * N * K,
          inner16->linear_f32io(x, w, b, r, y, M, K, N));
}
static sd_status q_linear_batched_f32io(const float *x, const sd_f16 *w, const float *const *b, float *y, int64_t M,
                                        int64_t K, int64_t N, int count) {
    LABEL("linear (fp16 w) batched %d x M%lld K%lld N%lld%s", count, (long long)M, (long long)K, (long long)N,
          b ? " +bias" : "");
    TIMED(SD_PROF_GEMM, 2.0 * count * M * K * N, F4 * (M * K + count * M * N) + F2 * count * N * K,
          inner16->linear_batched_f32io(x, w, b, y, M, K, N, count));
}
static sd_status q_to_bf16(const float *x, sd_f16 *y, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, (F4 + F2) * n, inner16->to_bf16(x, y, n));
}
static sd_status q_linear_backward_data_bf16w(const float *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K,
                                              int64_t N, int accumulate) {
    label_gemm("linear_backward_data (bf16)", M, K, N);
    TIMED(SD_PROF_GEMM, 2.0 * M * K * N, F4 * (M * N + 2.0 * M * K) + F2 * N * K,
          inner16->linear_backward_data_bf16w(dy, w, dx, M, K, N, accumulate));
}
static sd_status q_linear_backward_data_bf16w_many(const float *const *dy, int count, const sd_f16 *w, float *dx,
                                                   int64_t M, int64_t K, int64_t N, int accumulate) {
    LABEL("linear_backward_data (bf16) %d side by side M%lld K%lld N%lld", count, (long long)M, (long long)K,
          (long long)N);
    TIMED(SD_PROF_GEMM, 2.0 * count * M * K * N, F4 * (count * M * N + 2.0 * M * K) + F2 * count * N * K,
          inner16->linear_backward_data_bf16w_many(dy, count, w, dx, M, K, N, accumulate));
}
static sd_status q_linear_backward_data_bf16w_map(const float *dy, const sd_f16 *w, float *dx, int64_t B, int64_t S,
                                                  int64_t K, int64_t N, int dy_map, int dx_map, int accumulate) {
    const char *layout = dy_map && dx_map ? "maps" : dy_map ? "dy a map" : dx_map ? "dx a map" : "tokens";
    LABEL("linear_backward_data (bf16, %s) M%lld K%lld N%lld", layout, (long long)(B * S), (long long)K, (long long)N);
    TIMED(SD_PROF_GEMM, 2.0 * B * S * K * N, F4 * (B * S * N + 2.0 * B * S * K) + F2 * N * K,
          inner16->linear_backward_data_bf16w_map(dy, w, dx, B, S, K, N, dy_map, dx_map, accumulate));
}
static sd_status q_to_bf16_conv_transposed(const float *w, sd_f16 *wt, int64_t Co, int64_t Ci, int kh, int kw) {
    TIMED(SD_PROF_MEMORY, 0, (F4 + F2) * Co * Ci * kh * kw, inner16->to_bf16_conv_transposed(w, wt, Co, Ci, kh, kw));
}
static sd_status q_conv2d_backward_data_bf16w(const float *dy, const sd_f16 *wt, float *dx, const sd_conv_geom *g,
                                              int accumulate) {
    label_conv("conv_backward_data (bf16)", g);
    TIMED(SD_PROF_CONV, dx ? conv_flops(g) : 0, F4 * conv_values(g), inner16->conv2d_backward_data_bf16w(dy, wt, dx, g, accumulate));
}
static sd_status q_linear_batched(const sd_f16 *x, const sd_f16 *w, sd_f16 *y, int64_t M, int64_t K, int64_t N,
                                  int count) {
    LABEL("linear x%d M%lld K%lld N%lld", count, (long long)M, (long long)K, (long long)N);
    TIMED(SD_PROF_GEMM, 2.0 * count * M * K * N, F2 * (M * K + (double)count * M * N),
          inner16->linear_batched(x, w, y, M, K, N, count));
}
static sd_status q_conv2d(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r, sd_f16 *y,
                          const sd_conv_geom *g) {
    label_conv(r ? "conv+residual" : "conv", g);
    TIMED(SD_PROF_CONV, conv_flops(g), F2 * conv_values(g), inner16->conv2d(x, w, b, v, r, y, g));
}
static sd_status q_group_norm(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B, int64_t C,
                              int64_t S, int groups, float eps, int silu) {
    LABEL("group_norm%s C%lld S%lld b%lld", silu ? "+silu" : "", (long long)C, (long long)S, (long long)B);
    TIMED(SD_PROF_NORM, 0, F2 * 2 * B * C * S, inner16->group_norm(x, gamma, beta, y, B, C, S, groups, eps, silu));
}
static sd_status q_layer_norm(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t M, int64_t C,
                              float eps) {
    TIMED(SD_PROF_NORM, 0, F2 * 2 * M * C, inner16->layer_norm(x, gamma, beta, y, M, C, eps));
}
static sd_status q_binary(sd_binary_op op, const sd_f16 *a, const sd_f16 *b, sd_f16 *y, int64_t n) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 3 * n, inner16->binary(op, a, b, y, n));
}
static sd_status q_add_channel_bias(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C, int64_t S) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 2 * B * C * S, inner16->add_channel_bias(x, v, y, B, C, S));
}
static sd_status q_geglu(const sd_f16 *x, sd_f16 *y, int64_t M, int64_t N) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 3 * M * N, inner16->geglu(x, y, M, N));
}
static sd_status q_concat_channels(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca, int64_t Cb,
                                   int64_t S) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 2 * B * (Ca + Cb) * S, inner16->concat_channels(a, c, y, B, Ca, Cb, S));
}
static sd_status q_upsample_nearest(const sd_f16 *x, sd_f16 *y, int64_t N, int64_t H, int64_t W, int64_t Ho,
                                    int64_t Wo) {
    TIMED(SD_PROF_MEMORY, 0, F2 * N * (H * W + Ho * Wo), inner16->upsample_nearest(x, y, N, H, W, Ho, Wo));
}
static sd_status q_transpose(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t R, int64_t C) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 2 * B * R * C, inner16->transpose(x, y, B, R, C));
}
static sd_status q_attention(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, sd_f16 *out, int64_t B, int64_t Sq,
                             int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse) {
    label_attention("attention", B, Sq, Sk, H, D);
    TIMED(SD_PROF_ATTENTION, attention_flops(B, Sq, Sk, H, D, Dv), F2 * attention_values(B, Sq, Sk, H, D, Dv),
          inner16->attention(q, k, v, out, B, Sq, Sk, H, D, Dv, scale, causal, lse));
}

static sd_status q_attention_backward(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, const sd_f16 *out,
                                      const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq,
                                      int64_t Sk, int H, int D, int Dv, float scale, int causal, int accumulate,
                                      const float *lse) {
    label_attention("attention_backward (fp16 saved)", B, Sq, Sk, H, D);
    TIMED(SD_PROF_ATTENTION, 2.0 * B * H * Sq * Sk * (3.0 * D + 2.0 * Dv),
          (F2 + F4) * attention_values(B, Sq, Sk, H, D, Dv),
          inner16->attention_backward(q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal, accumulate,
                                      lse));
}

static sd_status q_geglu_backward(const sd_f16 *x, const float *dy, float *dx, int64_t M, int64_t N, int accumulate) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 2 * M * N + F4 * M * N + F4 * (accumulate ? 4 : 2) * M * N,
          inner16->geglu_backward(x, dy, dx, M, N, accumulate));
}

static sd_status q_geglu_backward_bf16(const sd_f16 *x, const float *dy, sd_f16 *dx, int64_t M, int64_t N) {
    LABEL("geglu_backward (bf16 dx)");
    TIMED(SD_PROF_MEMORY, 0, F2 * 2 * M * N + F4 * M * N + F2 * 2 * M * N, inner16->geglu_backward_bf16(x, dy, dx, M, N));
}
static sd_status q_linear_backward_data_bf16(const sd_f16 *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K,
                                             int64_t N, int accumulate) {
    label_gemm("linear_backward_data (bf16 dy)", M, K, N);
    TIMED(SD_PROF_GEMM, 2.0 * M * K * N, F2 * M * N + F4 * 2.0 * M * K + F2 * N * K,
          inner16->linear_backward_data_bf16(dy, w, dx, M, K, N, accumulate));
}
static sd_status q_group_norm_backward_nhwc(const sd_f16 *x, const float *gamma, const float *beta, const float *dy,
                                           float *dx, float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S,
                                           int groups, float eps, int silu, int accumulate, const float *stats) {
    LABEL("group_norm_backward_nhwc%s%s C%lld S%lld b%lld", silu ? "+silu" : "", stats ? " (kept stats)" : "",
          (long long)C, (long long)S, (long long)B);
    /* x read three times (statistics unless kept, sums, data gradient), dy twice, dx written (and
     * read when accumulating) */
    TIMED(SD_PROF_NORM, 0, (F2 * (stats ? 2 : 3) + F4 * (accumulate ? 4 : 3)) * B * C * S,
          inner16->group_norm_backward_nhwc(x, gamma, beta, dy, dx, dgamma, dbeta, B, C, S, groups, eps, silu,
                                            accumulate, stats));
}

static sd_status q_layer_norm_backward(const sd_f16 *x, const float *gamma, const float *dy, float *dx,
                                       float *dgamma, float *dbeta, int64_t M, int64_t C, float eps) {
    TIMED(SD_PROF_NORM, 0, (F2 + F4 * 2) * M * C,
          inner16->layer_norm_backward(x, gamma, dy, dx, dgamma, dbeta, M, C, eps));
}

static sd_status q_to_f16_nhwc(const float *x, sd_f16 *y, int64_t B, int64_t C, int64_t S) {
    TIMED(SD_PROF_MEMORY, 0, (F4 + F2) * B * C * S, inner16->to_f16_nhwc(x, y, B, C, S));
}
static sd_status q_to_f32_nchw(const sd_f16 *x, const float *v, const float *r, float *y, int64_t B, int64_t C,
                               int64_t S) {
    LABEL("to_f32_nchw%s%s", v ? "+bias" : "", r ? "+residual" : "");
    TIMED(SD_PROF_MEMORY, 0, (F4 + F2 + (r ? F4 : 0)) * B * C * S, inner16->to_f32_nchw(x, v, r, y, B, C, S));
}
static sd_status q_conv2d_nhwc(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r,
                               sd_f16 *y, const sd_conv_geom *g) {
    label_conv(r ? "conv nhwc+residual" : "conv nhwc", g);
    TIMED(SD_PROF_CONV, conv_flops(g), F2 * conv_values(g), inner16->conv2d_nhwc(x, w, b, v, r, y, g));
}
static sd_status q_group_norm_nhwc(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B,
                                   int64_t C, int64_t S, int groups, float eps, int silu, float *keep_stats) {
    LABEL("group_norm nhwc%s C%lld S%lld b%lld", silu ? "+silu" : "", (long long)C, (long long)S, (long long)B);
    TIMED(SD_PROF_NORM, 0, F2 * 2 * B * C * S,
          inner16->group_norm_nhwc(x, gamma, beta, y, B, C, S, groups, eps, silu, keep_stats));
}
static sd_status q_add_channel_bias_nhwc(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C, int64_t S) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 2 * B * C * S, inner16->add_channel_bias_nhwc(x, v, y, B, C, S));
}
static sd_status q_concat_channels_nhwc(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca, int64_t Cb,
                                        int64_t S) {
    TIMED(SD_PROF_MEMORY, 0, F2 * 2 * B * (Ca + Cb) * S, inner16->concat_channels_nhwc(a, c, y, B, Ca, Cb, S));
}
static sd_status q_upsample_nearest_nhwc(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t H, int64_t W, int64_t C,
                                         int64_t Ho, int64_t Wo) {
    TIMED(SD_PROF_MEMORY, 0, F2 * B * C * (H * W + Ho * Wo), inner16->upsample_nearest_nhwc(x, y, B, H, W, C, Ho, Wo));
}

const char *sd_prof_class_name(sd_prof_class k) {
    static const char *const names[SD_PROF_N] = {"convolution", "linear (GEMM)", "attention", "norm",
                                                 "elementwise/layout"};
    return k >= 0 && k < SD_PROF_N ? names[k] : "?";
}

const sd_backend *sd_backend_profiled(const sd_backend *be, sd_profile *out) {
    inner = be;
    inner16 = be->f16;
    prof = out;
    memset(out, 0, sizeof *out);
    /* the cost of timing itself: an empty synchronise pair, the smallest of a few */
    double best = 1e9;
    for (int i = 0; i < 20; i++) {
        const double t0 = prof_begin();
        be->synchronize();
        const double dt = sd_now() - t0;
        if (dt < best) best = dt;
    }
    out->sync_overhead_s = best;
    /* SD_PROFILE_CLOCK=wall keeps the wall-clock timing on a GPU too: the earlier sessions' method,
     * for profiles comparable with theirs */
    const char *clock = getenv("SD_PROFILE_CLOCK");
    const int wall = clock && !strcmp(clock, "wall");
    if (clock && *clock && !wall && strcmp(clock, "gpu"))
        sd_warn("SD_PROFILE_CLOCK=%s is neither gpu nor wall: timing GPU ops on the GPU", clock);
    out->device_timed = be->name && strcmp(be->name, "cuda") == 0 && !wall;

    table = *be;
    table.linear = p_linear;
    table.conv2d = p_conv2d;
    table.group_norm = p_group_norm;
    table.layer_norm = p_layer_norm;
    table.unary = p_unary;
    table.binary = p_binary;
    table.add_channel_bias = p_add_channel_bias;
    table.geglu = p_geglu;
    table.concat_channels = p_concat_channels;
    table.upsample_nearest = p_upsample_nearest;
    table.transpose = p_transpose;
    table.copy = p_copy;
    table.zero = p_zero;
    table.attention = p_attention;
    table.attention_apply = p_attention_apply;
    table.linear_backward_data = p_linear_backward_data;
    table.linear_backward_params = p_linear_backward_params;
    table.conv2d_backward_data = p_conv2d_backward_data;
    table.conv2d_backward_params = p_conv2d_backward_params;
    table.group_norm_backward = p_group_norm_backward;
    table.layer_norm_backward = p_layer_norm_backward;
    table.unary_backward = p_unary_backward;
    table.geglu_backward = p_geglu_backward;
    table.axpy = p_axpy;
    table.mul_acc = p_mul_acc;
    table.add_channel_bias_backward = p_add_channel_bias_backward;
    table.concat_channels_backward = p_concat_channels_backward;
    table.upsample_nearest_backward = p_upsample_nearest_backward;
    table.attention_backward = p_attention_backward;
    table.attention_probs_backward = p_attention_probs_backward;
    table.attention_apply_backward = p_attention_apply_backward;
    table.mse_backward = p_mse_backward;
    if (be->f16) {
        table16 = *be->f16;
        table16.to_f16 = q_to_f16;
        table16.to_f32 = q_to_f32;
        table16.copy = q_copy;
        table16.linear = q_linear;
        if (inner16->linear_f32io) table16.linear_f32io = q_linear_f32io;
        if (inner16->linear_batched) table16.linear_batched = q_linear_batched;
        if (inner16->linear_batched_f32io) table16.linear_batched_f32io = q_linear_batched_f32io;
        if (inner16->to_bf16) table16.to_bf16 = q_to_bf16;
        if (inner16->linear_backward_data_bf16w) table16.linear_backward_data_bf16w = q_linear_backward_data_bf16w;
        if (inner16->linear_backward_data_bf16w_map)
            table16.linear_backward_data_bf16w_map = q_linear_backward_data_bf16w_map;
        if (inner16->linear_backward_data_bf16w_many)
            table16.linear_backward_data_bf16w_many = q_linear_backward_data_bf16w_many;
        if (inner16->to_bf16_conv_transposed) table16.to_bf16_conv_transposed = q_to_bf16_conv_transposed;
        if (inner16->conv2d_backward_data_bf16w) table16.conv2d_backward_data_bf16w = q_conv2d_backward_data_bf16w;
        table16.conv2d = q_conv2d;
        table16.group_norm = q_group_norm;
        table16.layer_norm = q_layer_norm;
        table16.binary = q_binary;
        table16.add_channel_bias = q_add_channel_bias;
        table16.geglu = q_geglu;
        table16.concat_channels = q_concat_channels;
        table16.upsample_nearest = q_upsample_nearest;
        table16.transpose = q_transpose;
        table16.attention = q_attention;
        if (inner16->attention_backward) table16.attention_backward = q_attention_backward;
        if (inner16->geglu_backward) table16.geglu_backward = q_geglu_backward;
        if (inner16->geglu_backward_bf16) table16.geglu_backward_bf16 = q_geglu_backward_bf16;
        if (inner16->linear_backward_data_bf16) table16.linear_backward_data_bf16 = q_linear_backward_data_bf16;
        if (inner16->layer_norm_backward) table16.layer_norm_backward = q_layer_norm_backward;
        if (inner16->group_norm_backward_nhwc) table16.group_norm_backward_nhwc = q_group_norm_backward_nhwc;
        /* channels-last ops only where the backend has them (sd_ctx_channels_last checks) */
        if (inner16->to_f16_nhwc) table16.to_f16_nhwc = q_to_f16_nhwc;
        if (inner16->to_f32_nchw) table16.to_f32_nchw = q_to_f32_nchw;
        if (inner16->conv2d_nhwc) table16.conv2d_nhwc = q_conv2d_nhwc;
        if (inner16->group_norm_nhwc) table16.group_norm_nhwc = q_group_norm_nhwc;
        if (inner16->add_channel_bias_nhwc) table16.add_channel_bias_nhwc = q_add_channel_bias_nhwc;
        if (inner16->concat_channels_nhwc) table16.concat_channels_nhwc = q_concat_channels_nhwc;
        if (inner16->upsample_nearest_nhwc) table16.upsample_nearest_nhwc = q_upsample_nearest_nhwc;
        table.f16 = &table16;
    }
    return &table;
}
