/* cpu_backward.c: the backward ops and the Adam step of the CPU reference backend.
 *
 * Contract (backend.h): every op ACCUMULATES into its gradient outputs (dx += ...) and leaves a
 * NULL output alone. Each op recomputes what it needs from the forward inputs with the forward's
 * own arithmetic (norm statistics in double cast to float, the same softmax, the same conv
 * geometry), so a gradient is the derivative of the function cpu_ops.c really computes.
 *
 * Threading as in the forward: GEMM-shaped work goes through par_sgemm, or through
 * single-threaded cblas calls inside OpenMP tasks; the other loops are OpenMP. Wherever two
 * threads could add into the same gradient entry (parameter gradients summed over a batch,
 * attention's dk/dv summed over queries, col2im's overlapping windows), the work is split so
 * that each entry has one writer, or partial sums are kept per thread and added at the end.
 * Sums of many terms (bias gradients, norm reductions) accumulate in double. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

static inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Adds the column sums of a[rows, cols] to sums[cols], in double. Threads own column strips, so
 * each sum has a single writer and the rows are still read contiguously. */
static void add_column_sums(const float *a, float *sums, int64_t rows, int64_t cols) {
    enum { STRIP = 64 };
    const int64_t strips = (cols + STRIP - 1) / STRIP;
#pragma omp parallel for schedule(static) if (rows * cols > 32768)
    for (int64_t s = 0; s < strips; s++) {
        const int64_t c0 = s * STRIP, nc = min_i64(STRIP, cols - c0);
        double acc[STRIP] = {0};
        for (int64_t r = 0; r < rows; r++) {
            const float *row = a + r * cols + c0;
            for (int64_t c = 0; c < nc; c++) acc[c] += row[c];
        }
        for (int64_t c = 0; c < nc; c++) sums[c0 + c] = (float)((double)sums[c0 + c] + acc[c]);
    }
}

/* ------------------------------------------------------------------------------------------------
 * Linear
 * --------------------------------------------------------------------------------------------- */

sd_status cpu_linear_backward_data(const float *dy, const float *w, float *dx, int64_t M, int64_t K,
                                   int64_t N) {
    // dy is (M, N), w is (N, K), dx is (M, K)
    if (!dx || M == 0 || K == 0 || N == 0) return SD_OK;
    par_sgemm(0, 0, M, K, N, 1.0f, dy, N, w, K, 1.0f, dx, K);
    return SD_OK;
}

sd_status cpu_linear_backward_params(const float *dy, const float *x, float *dw, float *db,
                                     int64_t M, int64_t K, int64_t N) {
    // dy is (M, N), x is (M, K), dw is (N, K), db is (N)
    if (M == 0 || N == 0) return SD_OK;
    if (dw && K > 0) par_sgemm(1, 0, N, K, M, 1.0f, dy, N, x, K, 1.0f, dw, K);
    if (db) add_column_sums(dy, db, M, N);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Convolution
 *
 * The forward is y_n[Co, S_out] = w[Co, K] · col_n[K, S_out] with col_n = im2col(x_n), computed in
 * column blocks. Backward to the data: dcol = wᵀ · dy_n per block, then col2im adds every column
 * entry back onto the input pixel it was copied from. Backward to the weights: dw += dy_n · col_nᵀ
 * per block, the columns rebuilt with the forward's own im2col. Blocks keep the scratch bounded:
 * a full column matrix of a 512x512 VAE layer would exceed a gigabyte.
 * --------------------------------------------------------------------------------------------- */

/* Same budget as the forward's im2col blocks (32 MiB). */
#define COL_BLOCK_MAX_FLOATS ((int64_t)8 << 20)

static int conv_is_pointwise(const sd_conv_geom *g) {
    return g->kh == 1 && g->kw == 1 && g->stride == 1 && g->pad_top == 0 && g->pad_left == 0 &&
           g->h_out == g->h_in && g->w_out == g->w_in;
}

static int64_t col_block_columns(int64_t K, int64_t S_out, int64_t max_floats) {
    int64_t block = max_floats / (K > 0 ? K : 1);
    if (block < 1) block = 1;
    return block < S_out ? block : S_out;
}

/* dx[c_in, h_in, w_in] (one image) += col2im(col), col[K, np] holding the output positions
 * p0 .. p0+np-1. Threads own input channels: the rows of one channel (all ki, kj) land only in that
 * channel's plane, so overlapping windows never race. */
static void col2im_block_add(const float *col, float *dx, const sd_conv_geom *g, int64_t p0,
                             int64_t np) {
    const int64_t H = g->h_in, W = g->w_in, Wo = g->w_out, s = g->stride;
    const int64_t p_end = p0 + np;
#pragma omp parallel for schedule(static)
    for (int64_t ci = 0; ci < g->c_in; ci++) {
        float *plane = dx + ci * H * W;
        for (int ki = 0; ki < g->kh; ki++)
            for (int kj = 0; kj < g->kw; kj++) {
                const float *src = col + ((ci * g->kh + ki) * g->kw + kj) * np;
                /* the output columns ox whose tap kj lands inside the image: 0 <= ox·s - pad_left + kj < W */
                const int64_t lo_num = (int64_t)g->pad_left - kj, hi_num = W - 1 + g->pad_left - kj;
                const int64_t ox_valid_lo = lo_num > 0 ? (lo_num + s - 1) / s : 0;
                const int64_t ox_valid_hi = hi_num < 0 ? 0 : hi_num / s + 1; /* exclusive */
                /* walk the block one output row at a time (a block may start and end mid-row) */
                for (int64_t p = p0; p < p_end;) {
                    const int64_t oy = p / Wo, row_start = oy * Wo;
                    const int64_t ox_begin = p - row_start, ox_end = min_i64(Wo, p_end - row_start);
                    const int64_t iy = oy * s - g->pad_top + ki;
                    if (iy >= 0 && iy < H) {
                        const int64_t lo = ox_begin > ox_valid_lo ? ox_begin : ox_valid_lo;
                        const int64_t hi = ox_end < ox_valid_hi ? ox_end : ox_valid_hi;
                        /* pixel (iy, ox·s + shift) takes column entry (oy, ox) */
                        const int64_t shift = (int64_t)kj - g->pad_left;
                        float *dst = plane + iy * W;
                        const float *row = src + (row_start - p0);
                        if (s == 1)
                            for (int64_t ox = lo; ox < hi; ox++) dst[ox + shift] += row[ox];
                        else
                            for (int64_t ox = lo; ox < hi; ox++) dst[ox * s + shift] += row[ox];
                    }
                    p = row_start + ox_end;
                }
            }
    }
}

sd_status cpu_conv2d_backward_data_blocked(const float *dy, const float *w, float *dx,
                                           const sd_conv_geom *g, int64_t max_block_floats) {
    // dy is (B, Co, Ho, Wo), w is (Co, Ci, kh, kw), dx is (B, Ci, H, W)
    if (!dx) return SD_OK;
    const int64_t S_in = g->h_in * g->w_in, S_out = g->h_out * g->w_out;
    const int64_t K = g->c_in * g->kh * g->kw;
    if (g->batch == 0 || K == 0 || S_in == 0 || S_out == 0 || g->c_out == 0) return SD_OK;
    if (conv_is_pointwise(g)) {
        /* dx_n[Ci, S] += wᵀ[Ci, Co] · dy_n[Co, S] */
        for (int64_t n = 0; n < g->batch; n++)
            par_sgemm(1, 0, g->c_in, S_in, g->c_out, 1.0f, w, K, dy + n * g->c_out * S_out, S_out,
                      1.0f, dx + n * g->c_in * S_in, S_in);
        return SD_OK;
    }
    const int64_t block = col_block_columns(K, S_out, max_block_floats);
    float *dcol = malloc((size_t)(K * block) * sizeof(float)); // dcol is (K, block)
    if (!dcol)
        return sd_fail(SD_ERR_OOM, "conv2d backward: out of host memory for a %lld x %lld col2im block",
                       (long long)K, (long long)block);
    for (int64_t n = 0; n < g->batch; n++) {
        const float *dyn = dy + n * g->c_out * S_out;
        float *dxn = dx + n * g->c_in * S_in;
        for (int64_t p0 = 0; p0 < S_out; p0 += block) {
            const int64_t np = min_i64(block, S_out - p0);
            /* dcol[K, np] = wᵀ[K, Co] · dy_n[Co, p0 : p0+np] */
            par_sgemm(1, 0, K, np, g->c_out, 1.0f, w, K, dyn + p0, S_out, 0.0f, dcol, np);
            col2im_block_add(dcol, dxn, g, p0, np);
        }
    }
    free(dcol);
    return SD_OK;
}

sd_status cpu_conv2d_backward_data(const float *dy, const float *w, float *dx, const sd_conv_geom *g) {
    return cpu_conv2d_backward_data_blocked(dy, w, dx, g, COL_BLOCK_MAX_FLOATS);
}

sd_status cpu_conv2d_backward_params_blocked(const float *dy, const float *x, float *dw, float *db,
                                             const sd_conv_geom *g, int64_t max_block_floats) {
    // dy is (B, Co, Ho, Wo), x is (B, Ci, H, W), dw is (Co, Ci, kh, kw), db is (Co)
    const int64_t S_in = g->h_in * g->w_in, S_out = g->h_out * g->w_out;
    const int64_t K = g->c_in * g->kh * g->kw, Co = g->c_out;
    if (g->batch == 0 || S_out == 0 || Co == 0) return SD_OK;
    if (db) {
#pragma omp parallel for schedule(static)
        for (int64_t co = 0; co < Co; co++) {
            double acc = 0.0;
            for (int64_t n = 0; n < g->batch; n++) {
                const float *row = dy + (n * Co + co) * S_out;
                for (int64_t p = 0; p < S_out; p++) acc += row[p];
            }
            db[co] = (float)((double)db[co] + acc);
        }
    }
    if (!dw || K == 0) return SD_OK;
    if (conv_is_pointwise(g)) {
        /* dw[Co, Ci] += dy_n[Co, S] · x_n[Ci, S]ᵀ */
        for (int64_t n = 0; n < g->batch; n++)
            par_sgemm(0, 1, Co, g->c_in, S_in, 1.0f, dy + n * Co * S_out, S_out,
                      x + n * g->c_in * S_in, S_in, 1.0f, dw, K);
        return SD_OK;
    }
    const int64_t block = col_block_columns(K, S_out, max_block_floats);
    float *col = malloc((size_t)(K * block) * sizeof(float)); // col is (K, block)
    if (!col)
        return sd_fail(SD_ERR_OOM, "conv2d backward: out of host memory for a %lld x %lld im2col block",
                       (long long)K, (long long)block);
    for (int64_t n = 0; n < g->batch; n++) {
        const float *dyn = dy + n * Co * S_out;
        for (int64_t p0 = 0; p0 < S_out; p0 += block) {
            const int64_t np = min_i64(block, S_out - p0);
            im2col_block(x + n * g->c_in * S_in, col, g, p0, np);
            /* dw[Co, K] += dy_n[Co, p0 : p0+np] · col[K, np]ᵀ */
            par_sgemm(0, 1, Co, K, np, 1.0f, dyn + p0, S_out, col, np, 1.0f, dw, K);
        }
    }
    free(col);
    return SD_OK;
}

sd_status cpu_conv2d_backward_params(const float *dy, const float *x, float *dw, float *db,
                                     const sd_conv_geom *g) {
    return cpu_conv2d_backward_params_blocked(dy, x, dw, db, g, COL_BLOCK_MAX_FLOATS);
}

/* ------------------------------------------------------------------------------------------------
 * Normalisation
 *
 * With x̂ = (x − μ)·rstd and dx̂ = dy·γ, the gradient of a normalisation over n values is
 *   dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)),
 * and dγ = Σ dy·x̂, dβ = Σ dy over every position the channel appears in.
 * --------------------------------------------------------------------------------------------- */

/* d silu(v) / dv = σ(v) · (1 + v · (1 − σ(v))) */
static inline float silu_grad(float v) {
    const float sig = 1.0f / (1.0f + expf(-v));
    return sig * (1.0f + v * (1.0f - sig));
}

sd_status cpu_group_norm_backward(const float *x, const float *gamma, const float *beta,
                                  const float *dy, float *dx, float *dgamma, float *dbeta, int64_t B,
                                  int64_t C, int64_t S, int groups, float eps, int silu,
                                  int accumulate) {
    // x, dy, dx are (B, C, S); gamma, beta, dgamma, dbeta are (C)
    if ((!dx && !dgamma && !dbeta) || B == 0 || C == 0 || S == 0 || groups <= 0) return SD_OK;
    const int64_t cpg = C / groups, count = cpg * S;
    /* per-(b, c) parameter gradients, summed over the batch afterwards: threads own (b, group)
     * pairs, so two threads may hold the same channel */
    double *part = NULL; // part is (2, B, C): Σ dv·x̂ then Σ dv
    if (dgamma || dbeta) {
        part = calloc((size_t)(2 * B * C), sizeof(double));
        if (!part)
            return sd_fail(SD_ERR_OOM, "group_norm backward: out of host memory for %lld partial sums",
                           (long long)(2 * B * C));
    }
    /* With the fused SiLU, dv (the gradient at the affine output) costs an exp per element; each
     * thread keeps one group's dv so that the dx pass does not pay for it again. */
    const int keep_dv = silu && dx;
    int failed = 0;
#pragma omp parallel
    {
        float *dv_group = keep_dv ? malloc((size_t)count * sizeof(float)) : NULL; // (cpg, S)
        if (keep_dv && !dv_group) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; b++) {
            for (int g = 0; g < groups; g++) {
                if (keep_dv && !dv_group) continue;
                const int64_t off = (b * C + (int64_t)g * cpg) * S;
                const float *xg = x + off, *dyg = dy + off;
                /* the statistics exactly as the forward computes them */
                float meanf, rstd;
                cpu_norm_stats(xg, count, eps, &meanf, &rstd);
                double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
                for (int64_t cc = 0; cc < cpg; cc++) {
                    const int64_t ch = (int64_t)g * cpg + cc;
                    const float ga = gamma ? gamma[ch] : 1.0f, be = beta ? beta[ch] : 0.0f;
                    const float *xr = xg + cc * S, *dyr = dyg + cc * S;
                    float *dv_row = dv_group ? dv_group + cc * S : NULL;
                    double ch_dgamma = 0.0, ch_dbeta = 0.0;
                    for (int64_t s = 0; s < S; s++) {
                        const float xhat = (xr[s] - meanf) * rstd;
                        const float dv = silu ? dyr[s] * silu_grad(xhat * ga + be) : dyr[s];
                        if (dv_row) dv_row[s] = dv;
                        ch_dgamma += (double)dv * xhat;
                        ch_dbeta += dv;
                    }
                    /* dx̂ = dv·γ, so its sums are γ times the channel's sums */
                    sum_dxhat += ch_dbeta * ga;
                    sum_dxhat_xhat += ch_dgamma * ga;
                    if (part) {
                        part[b * C + ch] = ch_dgamma;
                        part[B * C + b * C + ch] = ch_dbeta;
                    }
                }
                if (!dx) continue;
                const float mean_dxhat = (float)(sum_dxhat / (double)count);
                const float mean_dxhat_xhat = (float)(sum_dxhat_xhat / (double)count);
                float *dxg = dx + off;
                for (int64_t cc = 0; cc < cpg; cc++) {
                    const int64_t ch = (int64_t)g * cpg + cc;
                    const float ga = gamma ? gamma[ch] : 1.0f;
                    const float *xr = xg + cc * S;
                    const float *dv_row = dv_group ? dv_group + cc * S : dyg + cc * S;
                    float *dxr = dxg + cc * S;
                    for (int64_t s = 0; s < S; s++) {
                        const float xhat = (xr[s] - meanf) * rstd;
                        const float d = rstd * (dv_row[s] * ga - mean_dxhat - xhat * mean_dxhat_xhat);
                        dxr[s] = accumulate ? dxr[s] + d : d;
                    }
                }
            }
        }
        free(dv_group);
    }
    if (failed) {
        free(part);
        return sd_fail(SD_ERR_OOM, "group_norm backward: out of host memory for a %lld-value group",
                       (long long)count);
    }
    if (part) {
        for (int64_t c = 0; c < C; c++) {
            double acc_gamma = 0.0, acc_beta = 0.0;
            for (int64_t b = 0; b < B; b++) {
                acc_gamma += part[b * C + c];
                acc_beta += part[B * C + b * C + c];
            }
            if (dgamma) dgamma[c] = (float)((double)dgamma[c] + acc_gamma);
            if (dbeta) dbeta[c] = (float)((double)dbeta[c] + acc_beta);
        }
        free(part);
    }
    return SD_OK;
}

sd_status cpu_layer_norm_backward(const float *x, const float *gamma, const float *dy, float *dx,
                                  float *dgamma, float *dbeta, int64_t M, int64_t C, float eps) {
    // x, dy, dx are (M, C); gamma, dgamma, dbeta are (C)
    if ((!dx && !dgamma && !dbeta) || M == 0 || C == 0) return SD_OK;
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    /* per-thread Σ dy·x̂ and Σ dy over the rows that thread handled, added up at the end */
    double *part = NULL; // part is (nt, 2, C)
    if (dgamma || dbeta) {
        part = calloc((size_t)nt * 2 * (size_t)C, sizeof(double));
        if (!part)
            return sd_fail(SD_ERR_OOM, "layer_norm backward: out of host memory for %lld partial sums",
                           (long long)(nt * 2 * C));
    }
#pragma omp parallel num_threads(nt)
    {
        double *part_gamma = part ? part + (size_t)omp_get_thread_num() * 2 * (size_t)C : NULL;
        double *part_beta = part_gamma ? part_gamma + C : NULL;
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) {
            const float *xr = x + m * C, *dyr = dy + m * C;
            float meanf, rstd;
            cpu_norm_stats(xr, C, eps, &meanf, &rstd);
            double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
            for (int64_t i = 0; i < C; i++) {
                const float xhat = (xr[i] - meanf) * rstd;
                const float dxhat = dyr[i] * (gamma ? gamma[i] : 1.0f);
                sum_dxhat += dxhat;
                sum_dxhat_xhat += (double)dxhat * xhat;
                if (part_gamma) {
                    part_gamma[i] += (double)dyr[i] * xhat;
                    part_beta[i] += dyr[i];
                }
            }
            if (!dx) continue;
            const float mean_dxhat = (float)(sum_dxhat / (double)C);
            const float mean_dxhat_xhat = (float)(sum_dxhat_xhat / (double)C);
            float *dxr = dx + m * C;
            for (int64_t i = 0; i < C; i++) {
                const float xhat = (xr[i] - meanf) * rstd;
                const float dxhat = dyr[i] * (gamma ? gamma[i] : 1.0f);
                dxr[i] += rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
            }
        }
    }
    if (part) {
        for (int64_t i = 0; i < C; i++) {
            double acc_gamma = 0.0, acc_beta = 0.0;
            for (int t = 0; t < nt; t++) {
                acc_gamma += part[(size_t)t * 2 * (size_t)C + (size_t)i];
                acc_beta += part[(size_t)t * 2 * (size_t)C + (size_t)(C + i)];
            }
            if (dgamma) dgamma[i] = (float)((double)dgamma[i] + acc_gamma);
            if (dbeta) dbeta[i] = (float)((double)dbeta[i] + acc_beta);
        }
        free(part);
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Elementwise
 * --------------------------------------------------------------------------------------------- */

/* d gelu(v) / dv = Φ(v) + v·φ(v) for the exact erf GELU */
static inline float gelu_grad(float v) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    return 0.5f * (1.0f + erff(v * (float)M_SQRT1_2)) + v * inv_sqrt_2pi * expf(-0.5f * v * v);
}

static inline float gelu_value(float v) { return 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)); }

sd_status cpu_unary_backward(sd_unary_op op, const float *x, const float *dy, float *dx, int64_t n,
                             float alpha) {
    // x, dy, dx are (n)
    if (!dx) return SD_OK;
    switch (op) {
    case SD_UNARY_SILU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * silu_grad(x[i]);
        return SD_OK;
    case SD_UNARY_GELU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * gelu_grad(x[i]);
        return SD_OK;
    case SD_UNARY_QUICK_GELU:
        /* x·σ(1.702x): σ + 1.702·x·σ·(1 − σ) */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            const float sig = 1.0f / (1.0f + expf(-1.702f * x[i]));
            dx[i] += dy[i] * (sig + 1.702f * x[i] * sig * (1.0f - sig));
        }
        return SD_OK;
    case SD_UNARY_LEAKY_RELU:
        /* the forward takes the identity branch at x = 0, so the slope there is 1 */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) dx[i] += x[i] >= 0.0f ? dy[i] : alpha * dy[i];
        return SD_OK;
    }
    return sd_fail(SD_ERR_INTERNAL, "cpu unary backward: unknown op %d", (int)op);
}

sd_status cpu_geglu_backward(const float *x, const float *dy, float *dx, int64_t M, int64_t N,
                             int accumulate) {
    // x, dx are (M, 2N): [hidden | gate]; dy is (M, N)
    if (!dx) return SD_OK;
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *hidden = x + m * 2 * N, *gate = hidden + N, *dyr = dy + m * N;
        float *dhidden = dx + m * 2 * N, *dgate = dhidden + N;
        for (int64_t i = 0; i < N; i++) {
            const float dh = dyr[i] * gelu_value(gate[i]), dg = dyr[i] * hidden[i] * gelu_grad(gate[i]);
            dhidden[i] = accumulate ? dhidden[i] + dh : dh;
            dgate[i] = accumulate ? dgate[i] + dg : dg;
        }
    }
    return SD_OK;
}

sd_status cpu_axpy(float alpha, const float *x, float *y, int64_t n) {
    // x, y are (n)
    if (!y) return SD_OK;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
    return SD_OK;
}

sd_status cpu_mul_acc(const float *a, const float *b, float *y, int64_t n) {
    // a, b, y are (n)
    if (!y) return SD_OK;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] += a[i] * b[i];
    return SD_OK;
}

sd_status cpu_add_channel_bias_backward(const float *dy, float *dv, int64_t B, int64_t C, int64_t S) {
    // dy is (B, C, S), dv is (B, C)
    if (!dv) return SD_OK;
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < B * C; bc++) {
        const float *row = dy + bc * S;
        double acc = 0.0;
        for (int64_t s = 0; s < S; s++) acc += row[s];
        dv[bc] = (float)((double)dv[bc] + acc);
    }
    return SD_OK;
}

sd_status cpu_concat_channels_backward(const float *dy, float *da, float *dc, int64_t B, int64_t Ca,
                                       int64_t Cb, int64_t S, int accumulate) {
    // dy is (B, Ca + Cb, S), da is (B, Ca, S), dc is (B, Cb, S)
    const int64_t na = Ca * S, nb = Cb * S;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; b++) {
        const float *src = dy + b * (na + nb);
        if (da) {
            float *dst = da + b * na;
            for (int64_t i = 0; i < na; i++) dst[i] = accumulate ? dst[i] + src[i] : src[i];
        }
        if (dc) {
            float *dst = dc + b * nb;
            for (int64_t i = 0; i < nb; i++) dst[i] = accumulate ? dst[i] + src[na + i] : src[na + i];
        }
    }
    return SD_OK;
}

/* The forward's source index: torch 'nearest', src = min(floor(dst · (in / out)), in − 1), with
 * the ratio and the product in float exactly as cpu_upsample_nearest computes them. */
static inline int64_t nearest_source(int64_t dst, float ratio, int64_t in) {
    const int64_t src = (int64_t)floorf((float)dst * ratio);
    return src > in - 1 ? in - 1 : src;
}

sd_status cpu_upsample_nearest_backward(const float *dy, float *dx, int64_t N, int64_t H, int64_t W,
                                        int64_t Ho, int64_t Wo, int accumulate) {
    // dy is (N, Ho, Wo), dx is (N, H, W)
    if (!dx || N == 0 || H == 0 || W == 0) return SD_OK;
    /* overwriting is adding into zeros: several output pixels gather into one source pixel */
    if (!accumulate) memset(dx, 0, (size_t)(N * H * W) * sizeof(float));
    if (Ho == 0 || Wo == 0) return SD_OK;
    const float sh = (float)H / (float)Ho, sw = (float)W / (float)Wo;
    /* The source row is non-decreasing in the output row, so the output rows that read source row
     * iy form the range [first_row[iy], first_row[iy + 1]). A task then owns one (n, iy) row of dx
     * and gathers into it without racing another task. */
    int64_t *first_row = malloc((size_t)(H + 1) * sizeof(int64_t)); // first_row is (H + 1)
    int64_t *src_col = malloc((size_t)Wo * sizeof(int64_t));        // src_col is (Wo)
    if (!first_row || !src_col) {
        free(first_row);
        free(src_col);
        return sd_fail(SD_ERR_OOM, "upsample backward: out of host memory for index tables");
    }
    for (int64_t ox = 0; ox < Wo; ox++) src_col[ox] = nearest_source(ox, sw, W);
    int64_t oy = 0;
    for (int64_t iy = 0; iy <= H; iy++) {
        while (oy < Ho && nearest_source(oy, sh, H) < iy) oy++;
        first_row[iy] = oy;
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t iy = 0; iy < H; iy++) {
            float *dxr = dx + (n * H + iy) * W;
            for (int64_t r = first_row[iy]; r < first_row[iy + 1]; r++) {
                const float *dyr = dy + (n * Ho + r) * Wo;
                for (int64_t ox = 0; ox < Wo; ox++) dxr[src_col[ox]] += dyr[ox];
            }
        }
    free(first_row);
    free(src_col);
    return SD_OK;
}

sd_status cpu_mse_backward(const float *a, const float *b, const float *g, float *da, float *db,
                           int64_t n) {
    // a, b, da, db are (n); g is (1): dL/d(mse)
    if ((!da && !db) || n == 0) return SD_OK;
    const float coef = (float)(2.0 * (double)g[0] / (double)n);
    /* da and db may be one buffer (mse(x, x)): the two updates cancel element by element */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float d = coef * (a[i] - b[i]);
        if (da) da[i] += d;
        if (db) db[i] -= d;
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Attention
 *
 * Per (b, h) and query block: P = softmax(scale·Q Kᵀ) (recomputed with the forward's softmax),
 *   dV += Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − δ),  dQ += scale·dS K,  dK += scale·dSᵀ Q,
 * where δ_i = Σ_j dP_ij P_ij = Σ_d dO_id O_id (flash-attention's identity, with O the forward
 * output): it saves a pass over the block. Only a BWD_QUERY_BLOCK × Sk block of P and of dS
 * exists at a time, per thread.
 * --------------------------------------------------------------------------------------------- */

/* Queries per block. Larger than the forward's 32: the dK and dV updates are GEMMs whose inner
 * dimension is the block height, and 64 rows halve their passes over the Sk × D outputs while the
 * two blocks (2 × 64 × Sk floats, 2 MiB at Sk = 4096) still sit in L2 on current CPUs. */
#define BWD_QUERY_BLOCK 64

/* One query block's contribution. dk_h / dv_h point at the head's (Sk, D) / (Sk, Dv) gradient
 * (in place or a thread-private accumulator), with row strides ld_dk / ld_dv. */
typedef void (*attn_block_fn)(const void *args, int64_t bh, int64_t q0, int64_t nq, float *scratch_p,
                              float *scratch_ds, float *dk_h, int64_t ld_dk, float *dv_h,
                              int64_t ld_dv);

typedef struct attn_bwd_args {
    const float *q, *k, *v, *out, *dout; /* fused op: all; probs op: q, k */
    const float *probs, *dprobs;         /* probs op only */
    float *dq;
    int64_t B, Sq, Sk;
    int H, D, Dv;
    float scale;
    int causal;
} attn_bwd_args;

/* scale·dS K into dq's block and scale·dSᵀ Q into dk_h, dS[nq, kv] with row stride ld_s. */
static void attn_scores_grad(const attn_bwd_args *a, int64_t b, int64_t h, int64_t q0, int64_t nq,
                             int64_t kv, const float *ds, int64_t ld_s, float *dk_h, int64_t ld_dk) {
    const int64_t ldq = (int64_t)a->H * a->D;
    const float *q_blk = a->q + (b * a->Sq + q0) * ldq + h * a->D; // (nq, D), row stride ldq
    const float *k_h = a->k + b * a->Sk * ldq + h * a->D;          // (Sk, D), row stride ldq
    if (a->dq)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, a->D, (int)kv, a->scale, ds,
                    (int)ld_s, k_h, (int)ldq, 1.0f, a->dq + (b * a->Sq + q0) * ldq + h * a->D, (int)ldq);
    if (dk_h)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kv, a->D, (int)nq, a->scale, ds,
                    (int)ld_s, q_blk, (int)ldq, 1.0f, dk_h, (int)ld_dk);
}

static void fused_attention_block(const void *args, int64_t bh, int64_t q0, int64_t nq,
                                  float *p, float *ds, float *dk_h, int64_t ld_dk, float *dv_h,
                                  int64_t ld_dv) {
    const attn_bwd_args *a = args;
    const int64_t b = bh / a->H, h = bh % a->H;
    const int64_t ldq = (int64_t)a->H * a->D, ldv = (int64_t)a->H * a->Dv;
    /* causal: the keys past the block's last query are masked for every row of the block */
    const int64_t kv = a->causal ? min_i64(a->Sk, q0 + nq) : a->Sk;
    const float *q_blk = a->q + (b * a->Sq + q0) * ldq + h * a->D;      // (nq, D), stride ldq
    const float *k_h = a->k + b * a->Sk * ldq + h * a->D;               // (Sk, D), stride ldq
    const float *v_h = a->v + b * a->Sk * ldv + h * a->Dv;              // (Sk, Dv), stride ldv
    const float *o_blk = a->out + (b * a->Sq + q0) * ldv + h * a->Dv;   // (nq, Dv), stride ldv
    const float *do_blk = a->dout + (b * a->Sq + q0) * ldv + h * a->Dv; // (nq, Dv), stride ldv

    /* p[nq, kv] = softmax(scale · q kᵀ), as the forward builds it */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)kv, a->D, a->scale, q_blk,
                (int)ldq, k_h, (int)ldq, 0.0f, p, (int)kv);
    for (int64_t i = 0; i < nq; i++) {
        const int64_t row = q0 + i;
        softmax_row(p + i * kv, kv, a->causal ? min_i64(row + 1, a->Sk) : a->Sk);
    }
    /* dv_h[kv, Dv] += pᵀ · dO */
    if (dv_h)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kv, a->Dv, (int)nq, 1.0f, p, (int)kv,
                    do_blk, (int)ldv, 1.0f, dv_h, (int)ld_dv);
    if (!a->dq && !dk_h) return;
    /* ds[nq, kv] = dO · vᵀ, then P ⊙ (dP − δ) in place */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)kv, a->Dv, 1.0f, do_blk,
                (int)ldv, v_h, (int)ldv, 0.0f, ds, (int)kv);
    for (int64_t i = 0; i < nq; i++) {
        const float *o_row = o_blk + i * ldv, *do_row = do_blk + i * ldv;
        double delta = 0.0;
        for (int d = 0; d < a->Dv; d++) delta += (double)do_row[d] * o_row[d];
        const float deltaf = (float)delta;
        float *ds_row = ds + i * kv;
        const float *p_row = p + i * kv;
        for (int64_t j = 0; j < kv; j++) ds_row[j] = p_row[j] * (ds_row[j] - deltaf);
    }
    attn_scores_grad(a, b, h, q0, nq, kv, ds, kv, dk_h, ld_dk);
}

static void probs_attention_block(const void *args, int64_t bh, int64_t q0, int64_t nq,
                                  float *unused_p, float *ds, float *dk_h, int64_t ld_dk,
                                  float *unused_dv, int64_t unused_ld_dv) {
    (void)unused_p;
    (void)unused_dv;
    (void)unused_ld_dv;
    const attn_bwd_args *a = args;
    const int64_t b = bh / a->H, h = bh % a->H, Sk = a->Sk;
    const float *p = a->probs + (bh * a->Sq + q0) * Sk;   // (nq, Sk)
    const float *dp = a->dprobs + (bh * a->Sq + q0) * Sk; // (nq, Sk)
    /* ds = P ⊙ (dP − rowsum(dP ⊙ P)): the softmax's Jacobian applied row by row */
    for (int64_t i = 0; i < nq; i++) {
        const float *p_row = p + i * Sk, *dp_row = dp + i * Sk;
        double delta = 0.0;
        for (int64_t j = 0; j < Sk; j++) delta += (double)dp_row[j] * p_row[j];
        const float deltaf = (float)delta;
        float *ds_row = ds + i * Sk;
        for (int64_t j = 0; j < Sk; j++) ds_row[j] = p_row[j] * (dp_row[j] - deltaf);
    }
    attn_scores_grad(a, b, h, q0, nq, Sk, ds, Sk, dk_h, ld_dk);
}

/* Runs `fn` over every (head, query block) and accumulates into a->dq, dk, dv as described at
 * cpu_attn_bwd_mode. dk is (B, Sk, H·D), dv is (B, Sk, H·Dv); either may be NULL. */
static sd_status run_attention_backward(attn_block_fn fn, const attn_bwd_args *a, float *dk,
                                        float *dv, cpu_attn_bwd_mode mode, const char *what) {
    const int64_t BH = a->B * a->H, Sk = a->Sk;
    const int64_t n_blocks = (a->Sq + BWD_QUERY_BLOCK - 1) / BWD_QUERY_BLOCK;
    const int64_t ldk = (int64_t)a->H * a->D, ldv = (int64_t)a->H * a->Dv;
    const size_t scratch_floats = (size_t)(2 * BWD_QUERY_BLOCK * Sk);
    const int accumulates = dk || dv;
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (mode == CPU_ATTN_BWD_AUTO) {
        /* whole heads per thread keep at least 3/4 of the threads busy (8 heads on 2 threads: all;
         * 1 head on 2 threads or 8 on 16: half), else share each head's query blocks */
        const int64_t rounds = (BH + nt - 1) / nt;
        mode = 4 * BH >= 3 * rounds * nt ? CPU_ATTN_BWD_PER_HEAD : CPU_ATTN_BWD_SPLIT;
    }
    /* without dk and dv no two blocks share an output: every block is its own task */
    if (!accumulates) mode = CPU_ATTN_BWD_PER_HEAD;
    int failed = 0;

    if (mode == CPU_ATTN_BWD_PER_HEAD) {
        const int64_t blocks_per_task = accumulates ? n_blocks : 1;
        const int64_t tasks_per_head = n_blocks / blocks_per_task;
#pragma omp parallel num_threads(nt)
        {
            float *scratch = malloc(scratch_floats * sizeof(float)); // (2, BWD_QUERY_BLOCK, Sk)
            if (!scratch) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(dynamic)
            for (int64_t task = 0; task < BH * tasks_per_head; task++) {
                if (!scratch) continue;
                const int64_t bh = task / tasks_per_head, b = bh / a->H, h = bh % a->H;
                const int64_t first = (task % tasks_per_head) * blocks_per_task;
                float *dk_h = dk ? dk + b * Sk * ldk + h * a->D : NULL;
                float *dv_h = dv ? dv + b * Sk * ldv + h * a->Dv : NULL;
                for (int64_t blk = first; blk < first + blocks_per_task; blk++) {
                    const int64_t q0 = blk * BWD_QUERY_BLOCK;
                    fn(a, bh, q0, min_i64(BWD_QUERY_BLOCK, a->Sq - q0), scratch,
                       scratch + scratch_floats / 2, dk_h, ldk, dv_h, ldv);
                }
            }
            free(scratch);
        }
    } else {
        const size_t acc_floats = (size_t)Sk * (size_t)((dk ? a->D : 0) + (dv ? a->Dv : 0));
        float **accs = calloc((size_t)nt, sizeof(float *)); // one (Sk, D) + (Sk, Dv) pair per thread
        if (!accs) return sd_fail(SD_ERR_OOM, "%s: out of host memory", what);
#pragma omp parallel num_threads(nt)
        {
            const int tid = omp_get_thread_num(), team = omp_get_num_threads();
            float *scratch = malloc((scratch_floats + acc_floats) * sizeof(float));
            accs[tid] = scratch ? scratch + scratch_floats : NULL;
            if (!scratch) {
#pragma omp atomic write
                failed = 1;
            }
            /* every thread must see the same `failed` before choosing whether to enter the
             * worksharing loops below, or the team would deadlock on a barrier */
#pragma omp barrier
            int give_up;
#pragma omp atomic read
            give_up = failed;
            float *my_dk = give_up ? NULL : accs[tid];
            float *my_dv = my_dk ? my_dk + (dk ? Sk * a->D : 0) : NULL;
            for (int64_t bh = 0; bh < BH && !give_up; bh++) {
                const int64_t b = bh / a->H, h = bh % a->H;
                memset(my_dk, 0, acc_floats * sizeof(float));
                /* static: which thread sums which query blocks, and so every partial sum's order,
                 * depends on the team size alone. Dynamic scheduling made the result differ from
                 * run to run in the last bit (the overwrite test saw it on 2 cores). */
#pragma omp for schedule(static)
                for (int64_t blk = 0; blk < n_blocks; blk++) {
                    const int64_t q0 = blk * BWD_QUERY_BLOCK;
                    fn(a, bh, q0, min_i64(BWD_QUERY_BLOCK, a->Sq - q0), scratch,
                       scratch + scratch_floats / 2, dk ? my_dk : NULL, a->D, dv ? my_dv : NULL, a->Dv);
                }
                /* (implicit barrier) every thread's partial sums of this head are complete */
                if (dk) {
                    float *dk_h = dk + b * Sk * ldk + h * a->D;
#pragma omp for schedule(static)
                    for (int64_t j = 0; j < Sk; j++)
                        for (int t = 0; t < team; t++) {
                            const float *src = accs[t] + j * a->D;
                            for (int d = 0; d < a->D; d++) dk_h[j * ldk + d] += src[d];
                        }
                }
                if (dv) {
                    const size_t dv_offset = dk ? (size_t)(Sk * a->D) : 0;
                    float *dv_h = dv + b * Sk * ldv + h * a->Dv;
#pragma omp for schedule(static)
                    for (int64_t j = 0; j < Sk; j++)
                        for (int t = 0; t < team; t++) {
                            const float *src = accs[t] + dv_offset + j * a->Dv;
                            for (int d = 0; d < a->Dv; d++) dv_h[j * ldv + d] += src[d];
                        }
                }
                /* (implicit barrier) the sums are read before the next head clears them */
            }
            free(scratch);
        }
        free(accs);
    }
    if (failed)
        return sd_fail(SD_ERR_OOM, "%s: out of host memory for a %d x %lld score block", what,
                       BWD_QUERY_BLOCK, (long long)Sk);
    return SD_OK;
}

sd_status cpu_attention_backward_mode(const float *q, const float *k, const float *v,
                                      const float *out, const float *dout, float *dq, float *dk,
                                      float *dv, int64_t B, int64_t Sq, int64_t Sk, int H, int D,
                                      int Dv, float scale, int causal, int accumulate,
                                      cpu_attn_bwd_mode mode) {
    // q, dq are (B, Sq, H·D); k, dk are (B, Sk, H·D); v, dv are (B, Sk, H·Dv);
    // out, dout are (B, Sq, H·Dv)
    /* empty heads (D or Dv 0) are as unsupported here as in the forward's GEMMs */
    if ((!dq && !dk && !dv) || B == 0 || H == 0 || D == 0 || Dv == 0) return SD_OK;
    /* overwriting is adding into zeros (dk and dv sum over every query block) */
    if (!accumulate) {
        if (dq) memset(dq, 0, (size_t)(B * Sq * H * D) * sizeof(float));
        if (dk) memset(dk, 0, (size_t)(B * Sk * H * D) * sizeof(float));
        if (dv) memset(dv, 0, (size_t)(B * Sk * H * Dv) * sizeof(float));
    }
    if (Sq == 0 || Sk == 0) return SD_OK;
    const attn_bwd_args a = {.q = q, .k = k, .v = v, .out = out, .dout = dout, .dq = dq,
                             .B = B, .Sq = Sq, .Sk = Sk, .H = H, .D = D, .Dv = Dv,
                             .scale = scale, .causal = causal};
    return run_attention_backward(fused_attention_block, &a, dk, dv, mode, "attention backward");
}

sd_status cpu_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                 const float *dout, float *dq, float *dk, float *dv, int64_t B,
                                 int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale,
                                 int causal, int accumulate, const float *lse) {
    (void)lse; /* the CPU forward keeps nothing there: the maps are recomputed */
    return cpu_attention_backward_mode(q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale,
                                       causal, accumulate, CPU_ATTN_BWD_AUTO);
}

sd_status cpu_attention_probs_backward_mode(const float *q, const float *k, const float *probs,
                                            const float *dprobs, float *dq, float *dk, int64_t B,
                                            int64_t Sq, int64_t Sk, int H, int D, float scale,
                                            cpu_attn_bwd_mode mode) {
    // q, dq are (B, Sq, H·D); k, dk are (B, Sk, H·D); probs, dprobs are (B·H, Sq, Sk)
    if ((!dq && !dk) || B == 0 || Sq == 0 || Sk == 0 || H == 0 || D == 0) return SD_OK;
    const attn_bwd_args a = {.q = q, .k = k, .probs = probs, .dprobs = dprobs, .dq = dq,
                             .B = B, .Sq = Sq, .Sk = Sk, .H = H, .D = D, .scale = scale};
    return run_attention_backward(probs_attention_block, &a, dk, NULL, mode,
                                  "attention_probs backward");
}

sd_status cpu_attention_probs_backward(const float *q, const float *k, const float *probs,
                                       const float *dprobs, float *dq, float *dk, int64_t B,
                                       int64_t Sq, int64_t Sk, int H, int D, float scale) {
    return cpu_attention_probs_backward_mode(q, k, probs, dprobs, dq, dk, B, Sq, Sk, H, D, scale,
                                             CPU_ATTN_BWD_AUTO);
}

sd_status cpu_attention_apply_backward(const float *probs, const float *v, const float *dout,
                                       float *dprobs, float *dv, int64_t B, int64_t Sq, int64_t Sk,
                                       int H, int Dv) {
    // probs, dprobs are (B·H, Sq, Sk); v, dv are (B, Sk, H·Dv); dout is (B, Sq, H·Dv)
    if ((!dprobs && !dv) || B == 0 || Sq == 0 || Sk == 0 || H == 0 || Dv == 0) return SD_OK;
    const int64_t ldv = (int64_t)H * Dv, BH = B * H;
    if (dprobs) {
        /* dprobs[bh, q-block] += dO_block · v_hᵀ: every task owns its rows of dprobs */
        const int64_t n_blocks = (Sq + BWD_QUERY_BLOCK - 1) / BWD_QUERY_BLOCK;
#pragma omp parallel for schedule(dynamic)
        for (int64_t task = 0; task < BH * n_blocks; task++) {
            const int64_t bh = task / n_blocks, q0 = (task % n_blocks) * BWD_QUERY_BLOCK;
            const int64_t b = bh / H, h = bh % H, nq = min_i64(BWD_QUERY_BLOCK, Sq - q0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)Sk, Dv, 1.0f,
                        dout + (b * Sq + q0) * ldv + h * Dv, (int)ldv, v + b * Sk * ldv + h * Dv,
                        (int)ldv, 1.0f, dprobs + (bh * Sq + q0) * Sk, (int)Sk);
        }
    }
    if (dv) {
        /* dv_h[Sk, Dv] += P_bhᵀ · dO_h: one GEMM per head; heads are disjoint column ranges of dv */
        const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
        if (BH >= nt) {
#pragma omp parallel for schedule(dynamic)
            for (int64_t bh = 0; bh < BH; bh++) {
                const int64_t b = bh / H, h = bh % H;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Sk, Dv, (int)Sq, 1.0f,
                            probs + bh * Sq * Sk, (int)Sk, dout + b * Sq * ldv + h * Dv, (int)ldv,
                            1.0f, dv + b * Sk * ldv + h * Dv, (int)ldv);
            }
        } else {
            for (int64_t bh = 0; bh < BH; bh++) {
                const int64_t b = bh / H, h = bh % H;
                par_sgemm(1, 0, Sk, Dv, Sq, 1.0f, probs + bh * Sq * Sk, Sk, dout + b * Sq * ldv + h * Dv,
                          ldv, 1.0f, dv + b * Sk * ldv + h * Dv, ldv);
            }
        }
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Adam
 * --------------------------------------------------------------------------------------------- */


sd_status cpu_adam_step(float *p, const float *g, float *m, float *v, int64_t n, double lr,
                        double beta1, double beta2, double eps, int step) {
    // p, g, m, v are (n)
    if (step < 1) return sd_fail(SD_ERR_ARG, "adam: step must be 1 or more (got %d)", step);
    /* torch's _single_tensor_adam (no weight decay, no amsgrad), operation by operation:
     *   exp_avg.lerp_(grad, 1 - beta1)                     weight cast to float
     *   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
     *   bias_correction{1,2} = 1 - beta{1,2} ** step       Python doubles
     *   denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)
     *   param.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1)) */
    const double lr_d = lr, beta1_d = beta1, beta2_d = beta2, eps_d = eps;
    const float lerp_weight = (float)(1.0 - beta1_d);
    const float beta2_f = (float)beta2_d, sq_weight = (float)(1.0 - beta2_d);
    const float bc2_sqrt = (float)pow(1.0 - pow(beta2_d, (double)step), 0.5);
    const float neg_step_size = (float)(-(lr_d / (1.0 - pow(beta1_d, (double)step))));
    const float eps_f = (float)eps_d;
    /* torch's CPU kernels, as measured bit for bit against torch 2.15 (x86-64):
     *   lerp_:    fma(w, end − self, self) for w < 0.5, else fma(w − 1, end − self, end);
     *   addcmul_: fma(value · t1, t2, self);
     *   div by the Python scalar: a true float division; addcdiv_: self + value · t1 / t2.
     * A product of two floats is exact in double, so each fma is computed in double and rounded
     * once (up to a double-rounding tie, ~2^-29 of the cases): this target has no FMA
     * instruction and libm's fmaf would be slow. torch's sqrt is MKL's, which is not always
     * correctly rounded: sqrtf here differs from it by one ulp now and then. */
    const int small_weight = lerp_weight < 0.5f;
    const float lerp_coef = small_weight ? lerp_weight : lerp_weight - 1.0f;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        const float gi = g[i];
        const float diff = gi - m[i];
        const float base = small_weight ? m[i] : gi;
        const float mi = (float)((double)lerp_coef * (double)diff + (double)base);
        const float vi = (float)((double)(sq_weight * gi) * (double)gi + (double)(v[i] * beta2_f));
        const float denom = sqrtf(vi) / bc2_sqrt + eps_f;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] + neg_step_size * mi / denom;
    }
    return SD_OK;
}
