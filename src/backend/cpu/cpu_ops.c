/* cpu_ops.c: the CPU reference backend: OpenMP loops and OpenBLAS GEMMs.
 *
 * Exactness beats speed here: reductions (norm statistics) accumulate in double, so this backend
 * is at least as accurate as PyTorch's fp32 CPU kernels and serves as the oracle for the CUDA one.
 *
 * Threading: OpenMP only. OpenBLAS runs single-threaded and GEMMs are split across OpenMP threads
 * here (par_sgemm); letting OpenBLAS's own thread pool compete with OpenMP's spinning workers cost
 * a third of the run time on two cores. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "sd/backend.h"
#include "cpu_internal.h"

/* ------------------------------------------------------------------------------------------------
 * GEMM-based ops
 * --------------------------------------------------------------------------------------------- */

/* Row-major C[M, N] = alpha · op(A) · op(B) + beta · C, split over OpenMP threads along the larger
 * of M and N; each block is one single-threaded OpenBLAS call. */
void par_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                      int64_t ldc) {
    const double flops = 2.0 * (double)M * (double)N * (double)K;
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (flops < 4e6) nt = 1;
    const int split_m = M >= N;
    const int64_t extent = split_m ? M : N;
    if (nt > extent) nt = (int)(extent > 0 ? extent : 1);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int t = 0; t < nt; t++) {
        const int64_t lo = extent * t / nt, hi = extent * (t + 1) / nt;
        if (hi <= lo) continue;
        const float *a = A, *b = B;
        float *c = C;
        int64_t m = M, n = N;
        if (split_m) {
            a = trans_a ? A + lo : A + lo * lda;
            c = C + lo * ldc;
            m = hi - lo;
        } else {
            b = trans_b ? B + lo * ldb : B + lo;
            c = C + lo;
            n = hi - lo;
        }
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)K, alpha, a, (int)lda,
                    b, (int)ldb, beta, c, (int)ldc);
    }
}

static void add_row_bias(float *y, const float *b, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        float *row = y + m * N;
        for (int64_t n = 0; n < N; n++) row[n] += b[n];
    }
}

static sd_status cpu_linear(const float *x, const float *w, const float *b, const float *r, float *y,
                            int64_t M, int64_t K, int64_t N) {
    if (M == 0 || N == 0) return SD_OK;
    /* the residual first (the GEMM then adds to it), the bias last: cuBLASLt's order, beta·C then
     * the bias epilogue */
    if (r && r != y) memcpy(y, r, (size_t)(M * N) * sizeof(float));
    if (K == 0) {
        if (!r) memset(y, 0, (size_t)(M * N) * sizeof(float));
    } else {
        /* y = x · wᵀ (+ y): w is stored (N, K) row-major, i.e. K-contiguous per output. */
        par_sgemm(0, 1, M, N, K, 1.0f, x, K, w, K, r ? 1.0f : 0.0f, y, N);
    }
    if (b) add_row_bias(y, b, M, N);
    return SD_OK;
}

/* Budget for one im2col block: convolutions of a 512x512 VAE layer would otherwise need a
 * column matrix of more than a gigabyte. */
#define IM2COL_MAX_FLOATS ((int64_t)8 << 20)

void im2col_block(const float *x, float *col, const sd_conv_geom *g, int64_t p0,
                         int64_t np) {
    const int64_t K = g->c_in * g->kh * g->kw;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < K; r++) {
        const int64_t ci = r / (g->kh * g->kw);
        const int ki = (int)((r / g->kw) % g->kh);
        const int kj = (int)(r % g->kw);
        const float *xc = x + ci * g->h_in * g->w_in;
        float *dst = col + r * np;
        for (int64_t i = 0; i < np; i++) {
            const int64_t p = p0 + i;
            const int64_t oy = p / g->w_out, ox = p % g->w_out;
            const int64_t iy = oy * g->stride - g->pad_top + ki;
            const int64_t ix = ox * g->stride - g->pad_left + kj;
            dst[i] = (iy >= 0 && iy < g->h_in && ix >= 0 && ix < g->w_in) ? xc[iy * g->w_in + ix] : 0.0f;
        }
    }
}

static sd_status cpu_conv2d(const float *x, const float *w, const float *b, float *y,
                            const sd_conv_geom *g) {
    const int64_t S_in = g->h_in * g->w_in, S_out = g->h_out * g->w_out;
    const int64_t K = g->c_in * g->kh * g->kw;
    const int pointwise = g->kh == 1 && g->kw == 1 && g->stride == 1 && g->pad_top == 0 &&
                          g->pad_left == 0 && g->h_out == g->h_in && g->w_out == g->w_in;
    float *col = NULL;
    int64_t block = S_out;
    if (!pointwise) {
        block = IM2COL_MAX_FLOATS / (K > 0 ? K : 1);
        if (block < 64) block = 64;
        if (block > S_out) block = S_out;
        col = malloc((size_t)(K * block) * sizeof(float));
        if (!col) return sd_fail(SD_ERR_OOM, "conv2d: out of host memory for a %lld x %lld im2col block",
                                 (long long)K, (long long)block);
    }
    for (int64_t n = 0; n < g->batch; n++) {
        const float *xn = x + n * g->c_in * S_in;
        float *yn = y + n * g->c_out * S_out;
        if (pointwise) {
            par_sgemm(0, 0, g->c_out, S_out, K, 1.0f, w, K, xn, S_in, 0.0f, yn, S_out);
        } else {
            for (int64_t p0 = 0; p0 < S_out; p0 += block) {
                const int64_t np = (S_out - p0) < block ? (S_out - p0) : block;
                im2col_block(xn, col, g, p0, np);
                par_sgemm(0, 0, g->c_out, np, K, 1.0f, w, K, col, np, 0.0f, yn + p0, S_out);
            }
        }
        if (b) {
#pragma omp parallel for schedule(static)
            for (int64_t co = 0; co < g->c_out; co++) {
                float *row = yn + co * S_out;
                for (int64_t p = 0; p < S_out; p++) row[p] += b[co];
            }
        }
    }
    free(col);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Normalisation
 * --------------------------------------------------------------------------------------------- */

static inline float silu_f(float v) { return v / (1.0f + expf(-v)); }

static sd_status cpu_group_norm(const float *x, const float *gamma, const float *beta, float *y,
                                int64_t B, int64_t C, int64_t S, int groups, float eps, int silu) {
    const int64_t cpg = C / groups;
    const int64_t count = cpg * S;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        for (int g = 0; g < groups; g++) {
            const float *xg = x + (b * C + (int64_t)g * cpg) * S;
            float *yg = y + (b * C + (int64_t)g * cpg) * S;
            float meanf, rstd;
            cpu_norm_stats(xg, count, eps, &meanf, &rstd);
            for (int64_t cc = 0; cc < cpg; cc++) {
                const int64_t ch = (int64_t)g * cpg + cc;
                const float ga = gamma ? gamma[ch] : 1.0f, be = beta ? beta[ch] : 0.0f;
                const float *xr = xg + cc * S;
                float *yr = yg + cc * S;
                for (int64_t s = 0; s < S; s++) {
                    float v = (xr[s] - meanf) * rstd * ga + be;
                    yr[s] = silu ? silu_f(v) : v;
                }
            }
        }
    }
    return SD_OK;
}

static sd_status cpu_layer_norm(const float *x, const float *gamma, const float *beta, float *y,
                                int64_t M, int64_t C, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * C;
        float *yr = y + m * C;
        float meanf, rstd;
        cpu_norm_stats(xr, C, eps, &meanf, &rstd);
        for (int64_t i = 0; i < C; i++)
            yr[i] = (xr[i] - meanf) * rstd * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f);
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Elementwise
 * --------------------------------------------------------------------------------------------- */

static inline float gelu_f(float v) { return 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)); }

static sd_status cpu_unary(sd_unary_op op, const float *x, float *y, int64_t n, float alpha) {
    switch (op) {
    case SD_UNARY_SILU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = silu_f(x[i]);
        return SD_OK;
    case SD_UNARY_GELU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = gelu_f(x[i]);
        return SD_OK;
    case SD_UNARY_QUICK_GELU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
        return SD_OK;
    case SD_UNARY_LEAKY_RELU:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = x[i] >= 0.0f ? x[i] : alpha * x[i];
        return SD_OK;
    }
    return sd_fail(SD_ERR_INTERNAL, "cpu unary: unknown op %d", (int)op);
}

static sd_status cpu_binary(sd_binary_op op, const float *a, const float *b, float *y, int64_t n) {
    switch (op) {
    case SD_BINARY_ADD:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
        return SD_OK;
    case SD_BINARY_SUB:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = a[i] - b[i];
        return SD_OK;
    case SD_BINARY_MUL:
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
        return SD_OK;
    }
    return sd_fail(SD_ERR_INTERNAL, "cpu binary: unknown op %d", (int)op);
}

static sd_status cpu_axpby(float alpha, const float *x, float beta, const float *z, float *y,
                           int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = alpha * x[i] + beta * z[i];
    return SD_OK;
}

static sd_status cpu_axpby_dev(const float *coef, const float *x, const float *z, float *y, int64_t n) {
    return cpu_axpby(coef[0], x, coef[1], z, y, n);
}

static sd_status cpu_axpy_dev(const float *coef, const float *x, float *y, int64_t n) {
    return cpu_axpy(coef[0], x, y, n);
}

static sd_status cpu_clamp(const float *x, float *y, float lo, float hi, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
    return SD_OK;
}

static sd_status cpu_add_channel_bias(const float *x, const float *v, float *y, int64_t B,
                                      int64_t C, int64_t S) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++) {
            const float add = v[b * C + c];
            const float *xr = x + (b * C + c) * S;
            float *yr = y + (b * C + c) * S;
            for (int64_t s = 0; s < S; s++) yr[s] = xr[s] + add;
        }
    return SD_OK;
}

static sd_status cpu_geglu(const float *x, float *y, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *hidden = x + m * 2 * N, *gate = hidden + N;
        float *yr = y + m * N;
        for (int64_t n = 0; n < N; n++) yr[n] = hidden[n] * gelu_f(gate[n]);
    }
    return SD_OK;
}

static sd_status cpu_concat_channels(const float *a, const float *c, float *y, int64_t B,
                                     int64_t Ca, int64_t Cb, int64_t S) {
    for (int64_t b = 0; b < B; b++) {
        memcpy(y + b * (Ca + Cb) * S, a + b * Ca * S, (size_t)(Ca * S) * sizeof(float));
        memcpy(y + (b * (Ca + Cb) + Ca) * S, c + b * Cb * S, (size_t)(Cb * S) * sizeof(float));
    }
    return SD_OK;
}

static sd_status cpu_upsample_nearest(const float *x, float *y, int64_t N, int64_t H, int64_t W,
                                      int64_t Ho, int64_t Wo) {
    /* torch 'nearest': src = min(floor(dst · (in / out)), in - 1), the ratio in float. */
    const float sh = (float)H / (float)Ho, sw = (float)W / (float)Wo;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t oy = 0; oy < Ho; oy++) {
            int64_t iy = (int64_t)floorf((float)oy * sh);
            if (iy > H - 1) iy = H - 1;
            const float *xr = x + (n * H + iy) * W;
            float *yr = y + (n * Ho + oy) * Wo;
            for (int64_t ox = 0; ox < Wo; ox++) {
                int64_t ix = (int64_t)floorf((float)ox * sw);
                if (ix > W - 1) ix = W - 1;
                yr[ox] = xr[ix];
            }
        }
    return SD_OK;
}

static sd_status cpu_max_pool2d(const float *x, float *y, int64_t N, int64_t H, int64_t W,
                                int64_t Ho, int64_t Wo, int kernel, int stride) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t oy = 0; oy < Ho; oy++) {
            const float *plane = x + n * H * W;
            float *yr = y + (n * Ho + oy) * Wo;
            for (int64_t ox = 0; ox < Wo; ox++) {
                /* torch's comparison: `val > max || isnan(val)`, so a NaN sticks. */
                float best = -INFINITY;
                for (int ky = 0; ky < kernel; ky++) {
                    const float *row = plane + (oy * stride + ky) * W + ox * stride;
                    for (int kx = 0; kx < kernel; kx++)
                        if (row[kx] > best || isnan(row[kx])) best = row[kx];
                }
                yr[ox] = best;
            }
        }
    return SD_OK;
}

static sd_status cpu_transpose(const float *x, float *y, int64_t B, int64_t R, int64_t C) {
    const int64_t T = 32; /* tile edge: keeps both the read and the write cache-friendly */
#pragma omp parallel for collapse(3) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t r0 = 0; r0 < R; r0 += T)
            for (int64_t c0 = 0; c0 < C; c0 += T) {
                const float *xb = x + b * R * C;
                float *yb = y + b * R * C;
                const int64_t r1 = r0 + T < R ? r0 + T : R, c1 = c0 + T < C ? c0 + T : C;
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = c0; c < c1; c++) yb[c * R + r] = xb[r * C + c];
            }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Attention
 * --------------------------------------------------------------------------------------------- */

/* exp for the softmax: Cody-Waite range reduction and a degree-6 polynomial (Cephes expf), four
 * lanes at a time with GCC vector extensions (the compiler will not vectorise the bit tricks on its
 * own). Relative error below 2e-7 on the softmax's domain (x <= 0), against 1e-4 for the model. */
typedef float v4sf __attribute__((vector_size(16)));
typedef int32_t v4si __attribute__((vector_size(16)));

static inline v4sf exp_v4(v4sf x) {
    const v4sf lo = {-87.0f, -87.0f, -87.0f, -87.0f};
    const v4si below = x < lo;
    x = (v4sf)(((v4si)x & ~below) | ((v4si)lo & below));
    /* n = round(x / ln 2) with the 1.5·2^23 trick: exact for |n| < 2^22 */
    const v4sf magic = {12582912.0f, 12582912.0f, 12582912.0f, 12582912.0f};
    const v4sf n = (x * 1.44269504088896341f + magic) - magic;
    v4sf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v4sf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const v4si bits = (__builtin_convertvector(n, v4si) + 127) << 23;
    return p * (v4sf)bits;
}

static inline float exp_scalar(float x) {
    v4sf v = {x, x, x, x};
    return exp_v4(v)[0];
}

/* One row softmax in place; columns past `valid` (causal mask) become 0. */
void softmax_row(float *r, int64_t cols, int64_t valid) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < valid; j++) mx = r[j] > mx ? r[j] : mx;
    const v4sf vmx = {mx, mx, mx, mx};
    v4sf vsum = {0.0f, 0.0f, 0.0f, 0.0f};
    int64_t j = 0;
    for (; j + 4 <= valid; j += 4) {
        v4sf v;
        memcpy(&v, r + j, sizeof v);
        v = exp_v4(v - vmx);
        memcpy(r + j, &v, sizeof v);
        vsum += v;
    }
    float sum = (vsum[0] + vsum[1]) + (vsum[2] + vsum[3]);
    for (; j < valid; j++) {
        r[j] = exp_scalar(r[j] - mx);
        sum += r[j];
    }
    const float inv = 1.0f / sum;
    for (j = 0; j < valid; j++) r[j] *= inv;
    for (j = valid; j < cols; j++) r[j] = 0.0f;
}

/* Queries per task: a task's score block is QUERY_BLOCK · Sk floats (512 KiB at Sk = 4096), small
 * enough to stay in L2 between the score GEMM, the softmax and the value GEMM. */
#define QUERY_BLOCK 32

static sd_status cpu_attention_apply(const float *probs, const float *v, float *out, int64_t B,
                                     int64_t Sq, int64_t Sk, int H, int Dv) {
    const int64_t ldv = (int64_t)H * Dv;
    const int64_t n_blocks = (Sq + QUERY_BLOCK - 1) / QUERY_BLOCK;
    const int64_t tasks = B * H * n_blocks;
#pragma omp parallel for schedule(dynamic)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t bh = task / n_blocks, q0 = (task % n_blocks) * QUERY_BLOCK;
        const int64_t b = bh / H, h = bh % H, nq = Sq - q0 < QUERY_BLOCK ? Sq - q0 : QUERY_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, Dv, (int)Sk, 1.0f,
                    probs + (bh * Sq + q0) * Sk, (int)Sk, v + b * Sk * ldv + h * Dv, (int)ldv, 0.0f,
                    out + (b * Sq + q0) * ldv + h * Dv, (int)ldv);
    }
    return SD_OK;
}

static sd_status cpu_attention(const float *q, const float *k, const float *v, float *out,
                               float *probs, int64_t B, int64_t Sq, int64_t Sk, int H, int D,
                               int Dv, float scale, int causal, float *lse) {
    (void)lse; /* the CPU's backward recomputes the maps' statistics */
    const int64_t ldq = (int64_t)H * D, ldv = (int64_t)H * Dv;
    const int64_t n_blocks = (Sq + QUERY_BLOCK - 1) / QUERY_BLOCK;
    const int64_t tasks = B * H * n_blocks;
    int failed = 0;
#pragma omp parallel
    {
        /* each thread's score block, unless the maps go straight to `probs` */
        float *scratch = probs ? NULL : malloc((size_t)(QUERY_BLOCK * Sk) * sizeof(float));
        if (!probs && !scratch) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < tasks; task++) {
            if (!probs && !scratch) continue;
            const int64_t bh = task / n_blocks, q0 = (task % n_blocks) * QUERY_BLOCK;
            const int64_t b = bh / H, h = bh % H, nq = Sq - q0 < QUERY_BLOCK ? Sq - q0 : QUERY_BLOCK;
            float *s = probs ? probs + (bh * Sq + q0) * Sk : scratch;
            /* s = scale · q_h kᵀ_h, heads read in place with a row stride of H·D */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)Sk, D, scale,
                        q + (b * Sq + q0) * ldq + h * D, (int)ldq, k + b * Sk * ldq + h * D,
                        (int)ldq, 0.0f, s, (int)Sk);
            for (int64_t i = 0; i < nq; i++) {
                const int64_t row = q0 + i;
                softmax_row(s + i * Sk, Sk, causal ? (row + 1 < Sk ? row + 1 : Sk) : Sk);
            }
            if (!probs)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, Dv, (int)Sk, 1.0f,
                            s, (int)Sk, v + b * Sk * ldv + h * Dv, (int)ldv, 0.0f,
                            out + (b * Sq + q0) * ldv + h * Dv, (int)ldv);
        }
        free(scratch);
    }
    if (failed)
        return sd_fail(SD_ERR_OOM, "attention: out of host memory for a %d x %lld score block",
                       QUERY_BLOCK, (long long)Sk);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Embeddings and memory
 * --------------------------------------------------------------------------------------------- */

static sd_status cpu_timestep_embedding(const float *t, float *y, int64_t B, int dim,
                                        int flip_sin_to_cos, float shift) {
    /* Mirrors diffusers' float32 arithmetic step by step: exponent = -ln(10000)·k (the Python
     * double constant cast to float32), / (half - shift), exp, times t, then sin/cos. The argument
     * reaches ~1000 rad, so computing it in double would differ from the reference by ~1e-4. */
    const int half = dim / 2;
    const float neg_log_period = (float)-9.210340371976184; /* -ln(10000) */
    for (int64_t b = 0; b < B; b++) {
        float *yr = y + b * dim;
        for (int k = 0; k < half; k++) {
            const float exponent = (neg_log_period * (float)k) / ((float)half - shift);
            const float arg = t[b] * expf(exponent);
            const float s = sinf(arg), co = cosf(arg);
            yr[flip_sin_to_cos ? half + k : k] = s;
            yr[flip_sin_to_cos ? k : half + k] = co;
        }
        if (dim % 2) yr[dim - 1] = 0.0f; /* diffusers zero-pads odd sizes */
    }
    return SD_OK;
}

static sd_status cpu_embedding(const int32_t *ids, const float *table, float *y, int64_t count,
                               int64_t C) {
    for (int64_t n = 0; n < count; n++)
        memcpy(y + n * C, table + (int64_t)ids[n] * C, (size_t)C * sizeof(float));
    return SD_OK;
}

static sd_status cpu_copy(float *dst, const float *src, int64_t n) {
    if (dst != src) memmove(dst, src, (size_t)n * sizeof(float));
    return SD_OK;
}

static sd_status cpu_fill(float *dst, float value, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = value;
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Memory and reductions
 * --------------------------------------------------------------------------------------------- */

static void *cpu_mem_alloc(size_t bytes) {
    void *p = aligned_alloc(256, (bytes + 255) & ~(size_t)255);
    if (!p) sd_fail(SD_ERR_OOM, "out of host memory allocating %zu bytes", bytes);
    return p;
}

static void cpu_mem_free(void *p) { free(p); }

static sd_status cpu_transfer(void *dst, const void *src, size_t bytes) {
    if (dst != src) memcpy(dst, src, bytes);
    return SD_OK;
}

static sd_status cpu_zero(void *dst, size_t bytes) {
    memset(dst, 0, bytes);
    return SD_OK;
}

static sd_status cpu_synchronize(void) { return SD_OK; }

static sd_status cpu_mse(const float *a, const float *b, float *out, int64_t n) {
    double acc = 0.0;
#pragma omp parallel for reduction(+ : acc) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)a[i] - (double)b[i];
        acc += d * d;
    }
    out[0] = (float)(acc / (double)(n > 0 ? n : 1));
    return SD_OK;
}

static sd_status cpu_all_finite(const float *const *xs, const int64_t *ns, int count, int *host_ok) {
    if (count < 1 || count > SD_ALL_FINITE_MAX) return sd_fail(SD_ERR_INTERNAL, "all_finite: %d tensors", count);
    for (int k = 0; k < count; k++) {
        const float *x = xs[k];
        const int64_t n = ns[k];
        int ok = 1;
#pragma omp parallel for reduction(& : ok) schedule(static)
        for (int64_t i = 0; i < n; i++) ok &= isfinite(x[i]) ? 1 : 0;
        host_ok[k] = ok;
    }
    return SD_OK;
}

static const sd_backend cpu_backend = {
    .name = "cpu",
    .mem_alloc = cpu_mem_alloc,
    .mem_free = cpu_mem_free,
    .upload = cpu_transfer,
    .download = cpu_transfer,
    .zero = cpu_zero,
    .synchronize = cpu_synchronize,
    .mse = cpu_mse,
    .all_finite = cpu_all_finite,
    .linear = cpu_linear,
    .conv2d = cpu_conv2d,
    .group_norm = cpu_group_norm,
    .layer_norm = cpu_layer_norm,
    .unary = cpu_unary,
    .binary = cpu_binary,
    .axpby = cpu_axpby,
    .axpby_dev = cpu_axpby_dev,
    .clamp = cpu_clamp,
    .add_channel_bias = cpu_add_channel_bias,
    .geglu = cpu_geglu,
    .concat_channels = cpu_concat_channels,
    .upsample_nearest = cpu_upsample_nearest,
    .transpose = cpu_transpose,
    .attention = cpu_attention,
    .attention_apply = cpu_attention_apply,
    .timestep_embedding = cpu_timestep_embedding,
    .embedding = cpu_embedding,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .linear_backward_data = cpu_linear_backward_data,
    .linear_backward_params = cpu_linear_backward_params,
    .conv2d_backward_data = cpu_conv2d_backward_data,
    .conv2d_backward_params = cpu_conv2d_backward_params,
    .group_norm_backward = cpu_group_norm_backward,
    .layer_norm_backward = cpu_layer_norm_backward,
    .unary_backward = cpu_unary_backward,
    .geglu_backward = cpu_geglu_backward,
    .axpy = cpu_axpy,
    .axpy_dev = cpu_axpy_dev,
    .mul_acc = cpu_mul_acc,
    .add_channel_bias_backward = cpu_add_channel_bias_backward,
    .concat_channels_backward = cpu_concat_channels_backward,
    .upsample_nearest_backward = cpu_upsample_nearest_backward,
    .attention_backward = cpu_attention_backward,
    .attention_probs_backward = cpu_attention_probs_backward,
    .attention_apply_backward = cpu_attention_apply_backward,
    .mse_backward = cpu_mse_backward,
    .adam_step = cpu_adam_step,
    .max_pool2d = cpu_max_pool2d,
    .f16 = &cpu_f16_ops,
};

const sd_backend *sd_backend_cpu(void) {
    /* GEMMs are threaded by par_sgemm and the attention tasks: OpenBLAS must not add its own. */
    openblas_set_num_threads(1);
    return &cpu_backend;
}
