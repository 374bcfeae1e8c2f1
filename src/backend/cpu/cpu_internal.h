/* cpu_internal.h: what the CPU backend's source files share with each other (and with the unit
 * tests that need to reach one code path on purpose). Not part of the public API.
 *
 * cpu_ops.c holds the forward ops and the op table; cpu_backward.c the backward ops and Adam. The
 * backward ops reuse the forward's GEMM splitter, im2col and softmax so that a gradient is the
 * derivative of exactly the function the forward computes. */
#ifndef SD_CPU_INTERNAL_H
#define SD_CPU_INTERNAL_H

#include <math.h>
#include <stdint.h>

#include "sd/backend.h"

/* ---- helpers defined in cpu_ops.c ---- */

/* Row-major C[M, N] = alpha · op(A) · op(B) + beta · C, split over OpenMP threads (one
 * single-threaded OpenBLAS call per block; runs on one thread when called inside a parallel
 * region). */
void par_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
               int64_t ldc);

/* col[K, np] (K = c_in·kh·kw, row r = (ci·kh + ki)·kw + kj) = the input patches of the output
 * positions p0 .. p0+np-1 (flattened oy·w_out + ox) of one image x[c_in, h_in, w_in]; zero
 * where the window reaches into the padding. Opens its own OpenMP parallel loop. */
void im2col_block(const float *x, float *col, const sd_conv_geom *g, int64_t p0, int64_t np);

/* Softmax of one attention row r[cols] in place, as the forward computes it (the vectorised exp);
 * entries at or past `valid` (the causal mask) become 0. */
void softmax_row(float *r, int64_t cols, int64_t valid);

/* ---- the f16-storage twins (cpu_f16.c): the F32 ops on f16-rounded inputs, outputs rounded ---- */
extern const sd_f16_ops cpu_f16_ops;

/* ---- backward ops and Adam (cpu_backward.c); contracts in backend.h ---- */

sd_status cpu_linear_backward_data(const float *dy, const float *w, float *dx, int64_t M, int64_t K,
                                   int64_t N);
sd_status cpu_linear_backward_params(const float *dy, const float *x, float *dw, float *db,
                                     int64_t M, int64_t K, int64_t N);
sd_status cpu_conv2d_backward_data(const float *dy, const float *w, float *dx, const sd_conv_geom *g);
sd_status cpu_conv2d_backward_params(const float *dy, const float *x, float *dw, float *db,
                                     const sd_conv_geom *g);
sd_status cpu_group_norm_backward(const float *x, const float *gamma, const float *beta,
                                  const float *dy, float *dx, float *dgamma, float *dbeta, int64_t B,
                                  int64_t C, int64_t S, int groups, float eps, int silu,
                                  int accumulate);
sd_status cpu_layer_norm_backward(const float *x, const float *gamma, const float *dy, float *dx,
                                  float *dgamma, float *dbeta, int64_t M, int64_t C, float eps);
sd_status cpu_unary_backward(sd_unary_op op, const float *x, const float *dy, float *dx, int64_t n,
                             float alpha);
sd_status cpu_geglu_backward(const float *x, const float *dy, float *dx, int64_t M, int64_t N,
                             int accumulate);
sd_status cpu_axpy(float alpha, const float *x, float *y, int64_t n);
sd_status cpu_mul_acc(const float *a, const float *b, float *y, int64_t n);
sd_status cpu_add_channel_bias_backward(const float *dy, float *dv, int64_t B, int64_t C, int64_t S);
sd_status cpu_concat_channels_backward(const float *dy, float *da, float *dc, int64_t B, int64_t Ca,
                                       int64_t Cb, int64_t S, int accumulate);
sd_status cpu_upsample_nearest_backward(const float *dy, float *dx, int64_t N, int64_t H, int64_t W,
                                        int64_t Ho, int64_t Wo, int accumulate);
sd_status cpu_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                 const float *dout, float *dq, float *dk, float *dv, int64_t B,
                                 int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale,
                                 int causal, int accumulate, const float *lse);
sd_status cpu_attention_probs_backward(const float *q, const float *k, const float *probs,
                                       const float *dprobs, float *dq, float *dk, int64_t B,
                                       int64_t Sq, int64_t Sk, int H, int D, float scale);
sd_status cpu_attention_apply_backward(const float *probs, const float *v, const float *dout,
                                       float *dprobs, float *dv, int64_t B, int64_t Sq, int64_t Sk,
                                       int H, int Dv);
sd_status cpu_mse_backward(const float *a, const float *b, const float *g, float *da, float *db,
                           int64_t n);
sd_status cpu_adam_step(float *p, const float *g, float *m, float *v, int64_t n, double lr,
                        double beta1, double beta2, double eps, int step);

/* ---- test hooks: the same ops with their internal strategy forced ---- */

/* How the attention backward ops share work between threads. dk/dv sum over every query of a
 * head, so two threads working on one head's query blocks would race on them:
 *   PER_HEAD: a thread owns whole heads and accumulates into dk/dv directly (used when there are
 *             enough heads to keep every thread busy);
 *   SPLIT:    heads one after another, their query blocks shared by all threads, each thread
 *             summing dk/dv into a private buffer that is added in afterwards (few heads: the
 *             VAE's single-head attention, or batch 1 with fewer heads than threads). */
typedef enum cpu_attn_bwd_mode {
    CPU_ATTN_BWD_AUTO = -1,
    CPU_ATTN_BWD_PER_HEAD = 0,
    CPU_ATTN_BWD_SPLIT = 1,
} cpu_attn_bwd_mode;

sd_status cpu_attention_backward_mode(const float *q, const float *k, const float *v,
                                      const float *out, const float *dout, float *dq, float *dk,
                                      float *dv, int64_t B, int64_t Sq, int64_t Sk, int H, int D,
                                      int Dv, float scale, int causal, int accumulate,
                                      cpu_attn_bwd_mode mode);
sd_status cpu_attention_probs_backward_mode(const float *q, const float *k, const float *probs,
                                            const float *dprobs, float *dq, float *dk, int64_t B,
                                            int64_t Sq, int64_t Sk, int H, int D, float scale,
                                            cpu_attn_bwd_mode mode);

/* conv2d_backward_data / _params with the column-block budget (floats per im2col / col2im block)
 * given, so a test can split a small convolution into blocks that start mid-row. */
sd_status cpu_conv2d_backward_data_blocked(const float *dy, const float *w, float *dx,
                                           const sd_conv_geom *g, int64_t max_block_floats);
sd_status cpu_conv2d_backward_params_blocked(const float *dy, const float *x, float *dw, float *db,
                                             const sd_conv_geom *g, int64_t max_block_floats);

/* Mean and 1/sqrt(biased variance + eps) of n values, two passes accumulated in double: the
 * statistics of every normalisation, shared so that forward and backward agree bit for bit. */
static inline void cpu_norm_stats(const float *x, int64_t n, float eps, float *mean, float *rstd) {
    double sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < n; i++) sum += x[i];
    const double m = sum / (double)n;
    for (int64_t i = 0; i < n; i++) {
        const double d = x[i] - m;
        sq += d * d;
    }
    *mean = (float)m;
    *rstd = (float)(1.0 / sqrt(sq / (double)n + (double)eps));
}

#endif
