/* norms.cu: GroupNorm (with SiLU fused) and LayerNorm, forward and backward.
 *
 * Statistics accumulate in double, as the CPU reference does, so exact mode agrees to ~1e-7.
 * GroupNorm's groups are long (SD at 64x64: 10 channels x 4096 pixels = 40,960 values, and only
 * B·32 groups), so one block per group would leave most of an H100 idle: each group is split into
 * chunks reduced by separate blocks (partial sums in the workspace, summed in a fixed order, so
 * results are deterministic), then a finalize kernel turns them into (mean, rstd) and the
 * normalize kernel streams the data once more. Short groups (SD's UNet at 8x8 and 16x16), and long
 * ones when they alone fill the GPU, take one fused kernel instead (k_gn_fused). LayerNorm rows
 * are short (<= 1280): one warp per row. Where rows allow, threads move 16 bytes per load.
 *
 * The forward kernels are templated over the activation storage (float, or __half for fast mode's
 * fp16 activations, sd_f16_ops): statistics and arithmetic stay fp32/double, a half output is
 * rounded once. */
#include "cuda_common.cuh"

#include <math.h>
#include <string.h>

#define GN_CHUNK 4096   /* values per block of a group's reduction */
#define GN_THREADS 256
#define LN_THREADS 256  /* 8 rows per block, one warp each */

/* V consecutive floats of p from c0, or `absent` each when p is NULL: 16-byte loads where aligned. */
template <int V>
__device__ __forceinline__ void gn_channel_values(const float *p, uint32_t c0, float absent, float (&out)[V]) {
    if (!p) {
#pragma unroll
        for (int k = 0; k < V; k++) out[k] = absent;
        return;
    }
    if constexpr (V % 4 == 0) {
        if (cu_aligned16(p + c0)) {
#pragma unroll
            for (int k = 0; k < V; k += 4) {
                const float4 f = *reinterpret_cast<const float4 *>(p + c0 + k);
                out[k] = f.x, out[k + 1] = f.y, out[k + 2] = f.z, out[k + 3] = f.w;
            }
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < V; k++) out[k] = p[c0 + k];
}

/* ------------------------------------------------------------------------------------------------
 * GroupNorm statistics
 * --------------------------------------------------------------------------------------------- */

/* This thread's share of (Σ x, Σ x²) over xg[lo, hi), in double, added to *s and *sq: 16 bytes per
 * load where the range is aligned (every group of SD's UNet), else element by element. */
template <typename T>
__device__ __forceinline__ void gn_thread_sums(const T *xg, int64_t lo, int64_t hi, double *s, double *sq) {
    typedef cu_vec16<T> V;
    if (cu_aligned16(xg + lo) && (hi - lo) % V::n == 0) {
#pragma unroll 4
        for (int64_t i = lo + (int64_t)threadIdx.x * V::n; i < hi; i += (int64_t)blockDim.x * V::n) {
            V x;
            x.load(xg + i);
#pragma unroll
            for (int k = 0; k < V::n; k++) {
                const double v = cu_f32(x.v[k]);
                *s += v;
                *sq += v * v;
            }
        }
        return;
    }
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const double v = cu_f32(xg[i]);
        *s += v;
        *sq += v * v;
    }
}

/* (mean, rstd) of a group from its sums, as floats, exactly as the CPU rounds them:
 * rstd = (float)(1 / sqrt(var + eps)) with the biased variance in double. */
__device__ __forceinline__ void gn_stats_from_sums(double s, double sq, int64_t count, float eps, float *mean_out,
                                                   float *rstd_out) {
    const double mean = s / (double)count;
    double var = sq / (double)count - mean * mean;
    if (var < 0.0) var = 0.0; /* rounding can leave -1e-20 for a constant group */
    *mean_out = (float)mean;
    *rstd_out = (float)(1.0 / sqrt(var + (double)eps));
}

/* y = ((x − mean) · rstd) · γ + β (+ SiLU) over [lo, hi) of one group, this thread's share: the
 * CPU's float expression rounded step by step. */
__device__ __forceinline__ float gn_value(float x, float mean, float rstd, float ga, float be, int silu) {
    const float v = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x, mean), rstd), ga), be);
    return silu ? cu_silu(v) : v;
}

/* 16 bytes at a time where x and y are aligned and a channel's S values are whole 16-byte pieces
 * (so a piece never straddles two channels). */
template <typename T>
__device__ __forceinline__ void gn_thread_apply(const T *xg, T *yg, int64_t lo, int64_t hi, int64_t ch0, int64_t S,
                                                const float *gamma, const float *beta, float mean, float rstd,
                                                int silu) {
    typedef cu_vec16<T> V;
    if (cu_aligned16(xg + lo) && cu_aligned16(yg + lo) && (hi - lo) % V::n == 0 && S % V::n == 0) {
#pragma unroll 2
        for (int64_t i = lo + (int64_t)threadIdx.x * V::n; i < hi; i += (int64_t)blockDim.x * V::n) {
            const int64_t ch = ch0 + i / S;
            const float ga = gamma ? gamma[ch] : 1.0f, be = beta ? beta[ch] : 0.0f;
            V x, y;
            x.load(xg + i);
#pragma unroll
            for (int k = 0; k < V::n; k++) cu_store(&y.v[k], gn_value(cu_f32(x.v[k]), mean, rstd, ga, be, silu));
            y.store(yg + i);
        }
        return;
    }
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const int64_t ch = ch0 + i / S;
        const float ga = gamma ? gamma[ch] : 1.0f, be = beta ? beta[ch] : 0.0f;
        cu_store(&yg[i], gn_value(cu_f32(xg[i]), mean, rstd, ga, be, silu));
    }
}

/* x: [B·G groups, count] contiguous (a group is cpg consecutive channels of S values).
 * partial[(bg · chunks + chunk) · 2 + {0, 1}] = (Σ x, Σ x²) over the chunk, in double. */
template <typename T>
__global__ void k_gn_partial(const T *x, int64_t count, int chunks, double *partial) {
    CU_PDL_ENTRY();
    __shared__ double smem[32];
    const int64_t bg = blockIdx.y, chunk = blockIdx.x;
    const T *xg = x + bg * count;
    const int64_t lo = chunk * (int64_t)GN_CHUNK;
    int64_t hi = lo + GN_CHUNK;
    if (hi > count) hi = count;
    double s = 0.0, sq = 0.0;
    gn_thread_sums(xg, lo, hi, &s, &sq);
    s = cu_block_sum_d(s, smem);
    sq = cu_block_sum_d(sq, smem);
    if (threadIdx.x == 0) {
        partial[(bg * chunks + chunk) * 2 + 0] = s;
        partial[(bg * chunks + chunk) * 2 + 1] = sq;
    }
}

/* stats[bg · 2 + {0, 1}] = (mean, rstd) (gn_stats_from_sums) from the chunks' partial sums. */
__global__ void k_gn_finalize(const double *partial, int chunks, int64_t n_groups, int64_t count, float eps,
                              float *stats) {
    CU_PDL_ENTRY();
    GRID_STRIDE(bg, n_groups) {
        double s = 0.0, sq = 0.0;
        for (int c = 0; c < chunks; c++) {
            s += partial[(bg * chunks + c) * 2 + 0];
            sq += partial[(bg * chunks + c) * 2 + 1];
        }
        gn_stats_from_sums(s, sq, count, eps, &stats[bg * 2 + 0], &stats[bg * 2 + 1]);
    }
}

/* Computes per-group (mean, rstd) into `stats` (2·B·G floats, caller's memory); `partial` is
 * scratch of gn_partial_bytes(). */
static size_t gn_partial_bytes(int64_t n_groups, int chunks) {
    return cu_align((size_t)(n_groups * chunks) * 2 * sizeof(double));
}

template <typename T>
static sd_status gn_stats(const T *x, int64_t n_groups, int64_t count, float eps, double *partial,
                          float *stats) {
    cudaStream_t st = cu_cur()->stream;
    const int chunks = (int)((count + GN_CHUNK - 1) / GN_CHUNK);
    if (n_groups > 65535) return sd_fail(SD_ERR_UNSUPPORTED, "cuda group norm: %lld groups (batch x groups) over 65535",
                                         (long long)n_groups);
    dim3 grid((unsigned)(chunks > 0 ? chunks : 1), (unsigned)n_groups);
    CU_LAUNCH(k_gn_partial<T>, grid, GN_THREADS, 0, st)(x, count, chunks > 0 ? chunks : 1, partial);
    LAUNCH_CHECK("group_norm partial");
    CU_LAUNCH(k_gn_finalize, cu_blocks(n_groups, 128), 128, 0, st)(partial, chunks > 0 ? chunks : 1, n_groups, count, eps, stats);
    LAUNCH_CHECK("group_norm finalize");
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * GroupNorm forward
 * --------------------------------------------------------------------------------------------- */

template <typename T>
__global__ void k_gn_normalize(const T *x, const float *gamma, const float *beta, T *y,
                               const float *stats, int64_t C, int64_t S, int64_t cpg, int64_t count,
                               int silu) {
    CU_PDL_ENTRY();
    /* x, y: [B, C, S]; grid (chunk, bg); the group bg = b·G + g covers channels [g·cpg, +cpg) of
     * batch b, i.e. `count` contiguous values starting at bg·count. */
    const int64_t bg = blockIdx.y;
    const int64_t G = C / cpg;
    const int64_t g = bg % G;
    const float mean = stats[bg * 2 + 0], rstd = stats[bg * 2 + 1];
    const int64_t lo = (int64_t)blockIdx.x * GN_CHUNK;
    int64_t hi = lo + GN_CHUNK;
    if (hi > count) hi = count;
    gn_thread_apply(x + bg * count, y + bg * count, lo, hi, g * cpg, S, gamma, beta, mean, rstd, silu);
}

/* Short groups run in one kernel, one block per group: the sums, (mean, rstd) as k_gn_finalize
 * computes them, and the normalisation, which re-reads the group from L2. One launch instead of
 * three: at the UNet's 8x8 and 16x16 levels (2,560 and 10,240 values per group) the launches cost
 * more than the arithmetic. Long groups take it only when there are enough of them to give every
 * SM a block: at 64x64 (40,960 values) a batch of 1 or 2 has 32 or 64 groups, which one block
 * each would stream through a quarter to a half of an H100's SMs (gn_fused_ok). The sums are taken
 * in another order than the chunked path's, so results can differ from it in the last bit. */
#define GN_FUSED_MAX 65536
#define GN_FUSED_SHORT 16384
#define GN_FUSED_THREADS 512

static bool gn_fused_ok(int64_t n_groups, int64_t count) {
    if (count > GN_FUSED_MAX || n_groups > INT32_MAX) return false;
    return count <= GN_FUSED_SHORT || n_groups >= cu_cur()->prop.multiProcessorCount;
}

template <typename T>
__global__ void __launch_bounds__(GN_FUSED_THREADS) k_gn_fused(const T *x, const float *gamma, const float *beta, T *y,
                                                               int64_t C, int64_t S, int64_t cpg, int64_t count,
                                                               float eps, int silu) {
    CU_PDL_ENTRY();
    __shared__ double smem[32];
    __shared__ float stats[2];
    const int64_t bg = blockIdx.x, g = bg % (C / cpg);
    const T *xg = x + bg * count;
    T *yg = y + bg * count;
    double s = 0.0, sq = 0.0;
    gn_thread_sums(xg, 0, count, &s, &sq);
    s = cu_block_sum_d(s, smem);
    sq = cu_block_sum_d(sq, smem);
    if (threadIdx.x == 0) gn_stats_from_sums(s, sq, count, eps, &stats[0], &stats[1]);
    __syncthreads();
    gn_thread_apply(xg, yg, 0, count, g * cpg, S, gamma, beta, stats[0], stats[1], silu);
}

template <typename T>
static sd_status group_norm(const T *x, const float *gamma, const float *beta, T *y, int64_t B, int64_t C,
                            int64_t S, int groups, float eps, int silu) {
    if (groups <= 0 || C % groups) return sd_fail(SD_ERR_SHAPE, "cuda group norm: %lld channels, %d groups", (long long)C, groups);
    const int64_t n_groups = B * groups, cpg = C / groups, count = cpg * S;
    if (n_groups <= 0 || count <= 0) return SD_OK;
    if (gn_fused_ok(n_groups, count)) {
        CU_LAUNCH(k_gn_fused<T>, (unsigned)n_groups, GN_FUSED_THREADS, 0, cu_cur()->stream)(x, gamma, beta, y, C, S,
                                                                                            cpg, count, eps, silu);
        LAUNCH_CHECK("group_norm (one kernel)");
        return SD_OK;
    }
    const int chunks = (int)((count + GN_CHUNK - 1) / GN_CHUNK);
    const size_t part_bytes = gn_partial_bytes(n_groups, chunks);
    char *ws = (char *)cu_workspace(part_bytes + cu_align((size_t)n_groups * 2 * sizeof(float)));
    if (!ws) return SD_ERR_OOM;
    double *partial = (double *)ws;
    float *stats = (float *)(ws + part_bytes);
    CU_TRY(gn_stats(x, n_groups, count, eps, partial, stats));
    dim3 grid((unsigned)chunks, (unsigned)n_groups);
    CU_LAUNCH(k_gn_normalize<T>, grid, GN_THREADS, 0, cu_cur()->stream)(x, gamma, beta, y, stats, C, S, cpg, count, silu);
    LAUNCH_CHECK("group_norm normalize");
    return SD_OK;
}

sd_status cu_group_norm(const float *x, const float *gamma, const float *beta, float *y, int64_t B,
                        int64_t C, int64_t S, int groups, float eps, int silu) {
    return group_norm(x, gamma, beta, y, B, C, S, groups, eps, silu);
}

sd_status cu_f16_group_norm(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B,
                            int64_t C, int64_t S, int groups, float eps, int silu) {
    return group_norm(cu_half(x), gamma, beta, cu_half(y), B, C, S, groups, eps, silu);
}

/* ------------------------------------------------------------------------------------------------
 * GroupNorm backward
 *   x̂ = (x − μ)·r,  z = γ x̂ + β,  y = silu(z) or z
 *   dz = dy · silu'(z) (or dy);  dx̂ = γ dz
 *   dx += r · (dx̂ − mean_g(dx̂) − x̂ · mean_g(dx̂ · x̂));  dγ_c += Σ dz x̂;  dβ_c += Σ dz
 * --------------------------------------------------------------------------------------------- */

__device__ __forceinline__ void gn_point(float xv, float mean, float rstd, float ga, float be, float dyv,
                                         int silu, float *xhat, float *dz) {
    const float xh = (xv - mean) * rstd;
    float d = dyv;
    if (silu) d *= cu_silu_grad(ga * xh + be);
    *xhat = xh;
    *dz = d;
}

/* How many values the backward kernels move per load over a range of n values of a group: 4 where
 * the range's x, dy (and dx) are 16-byte aligned and a channel's S values are whole pieces (every
 * group of SD's UNet), else 1. */
__device__ __forceinline__ int gn_bwd_step(const float *x, const float *dy, const float *dx, int64_t n, int64_t S) {
    const bool vec = cu_aligned16(x) && cu_aligned16(dy) && (!dx || cu_aligned16(dx)) && n % 4 == 0 && S % 4 == 0;
    return vec ? 4 : 1;
}

/* STEP (1 or 4) consecutive values from p, in registers as floats: p F32, or fp16 (the LayerNorm
 * input a gradient step storing fp16 saved; 4 values aligned for STEP 4). */
template <int STEP> struct gn_vals {
    float v[STEP];
    template <typename X> __device__ __forceinline__ void load(const X *p) {
        if constexpr (STEP == 4) {
            const cu_vec16<float> f = cu_load4(p);
            v[0] = f.v[0], v[1] = f.v[1], v[2] = f.v[2], v[3] = f.v[3];
        } else {
            v[0] = cu_f32(p[0]);
        }
    }
    __device__ __forceinline__ void store(float *p) const {
        if constexpr (STEP == 4)
            *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
        else
            p[0] = v[0];
    }
};
/* One pass of the GroupNorm data gradient over [lo, hi) of a group, STEP values per load (a step
 * never straddles two channels: S is a multiple of STEP). !APPLY: this thread's share of
 * (Σ dx̂, Σ dx̂ · x̂) added to *a, *b. APPLY: dx += rstd · (γ dz − ma − x̂ · mb), with ma, mb the
 * group's means of those sums (dx = that when !accumulate: dx is not read). */
template <int STEP, bool APPLY>
__device__ __forceinline__ void gn_bwd_pass(const float *xg, const float *dyg, float *dxg, int64_t lo, int64_t hi,
                                            int64_t ch0, int64_t S, const float *gamma, const float *beta, float mean,
                                            float rstd, int silu, double *a, double *b, float ma, float mb,
                                            int accumulate) {
    for (int64_t i = lo + (int64_t)threadIdx.x * STEP; i < hi; i += (int64_t)blockDim.x * STEP) {
        const int64_t ch = ch0 + i / S;
        const float ga = gamma ? gamma[ch] : 1.0f, be = beta ? beta[ch] : 0.0f;
        gn_vals<STEP> xv, dv, ov;
        xv.load(xg + i);
        dv.load(dyg + i);
        if constexpr (APPLY) {
            if (accumulate) {
                ov.load(dxg + i);
            } else {
#pragma unroll
                for (int k = 0; k < STEP; k++) ov.v[k] = 0.0f; /* 0 + d = d: the overwrite is exact */
            }
        }
#pragma unroll
        for (int k = 0; k < STEP; k++) {
            float xh, dz;
            gn_point(xv.v[k], mean, rstd, ga, be, dv.v[k], silu, &xh, &dz);
            if constexpr (APPLY) {
                ov.v[k] += rstd * (ga * dz - ma - xh * mb);
            } else {
                const double dxh = (double)ga * (double)dz;
                *a += dxh;
                *b += dxh * (double)xh;
            }
        }
        if constexpr (APPLY) ov.store(dxg + i);
    }
}

/* partial[(bg · chunks + chunk) · 2 + {0, 1}] = (Σ dx̂, Σ dx̂ · x̂) over the chunk */
__global__ void k_gn_bwd_partial(const float *x, const float *gamma, const float *beta, const float *dy,
                                 const float *stats, int64_t C, int64_t S, int64_t cpg, int64_t count,
                                 int silu, int chunks, double *partial) {
    CU_PDL_ENTRY();
    __shared__ double smem[32];
    const int64_t bg = blockIdx.y, chunk = blockIdx.x;
    const int64_t g = bg % (C / cpg);
    const float mean = stats[bg * 2 + 0], rstd = stats[bg * 2 + 1];
    const float *xg = x + bg * count, *dyg = dy + bg * count;
    const int64_t lo = chunk * (int64_t)GN_CHUNK;
    int64_t hi = lo + GN_CHUNK;
    if (hi > count) hi = count;
    double a = 0.0, b = 0.0;
    if (gn_bwd_step(xg + lo, dyg + lo, NULL, hi - lo, S) == 4)
        gn_bwd_pass<4, false>(xg, dyg, NULL, lo, hi, g * cpg, S, gamma, beta, mean, rstd, silu, &a, &b, 0.0f, 0.0f, 0);
    else
        gn_bwd_pass<1, false>(xg, dyg, NULL, lo, hi, g * cpg, S, gamma, beta, mean, rstd, silu, &a, &b, 0.0f, 0.0f, 0);
    a = cu_block_sum_d(a, smem);
    b = cu_block_sum_d(b, smem);
    if (threadIdx.x == 0) {
        partial[(bg * chunks + chunk) * 2 + 0] = a;
        partial[(bg * chunks + chunk) * 2 + 1] = b;
    }
}

__global__ void k_gn_bwd_dx(const float *x, const float *gamma, const float *beta, const float *dy,
                            const float *stats, const double *partial, int chunks, int64_t C, int64_t S,
                            int64_t cpg, int64_t count, int silu, int accumulate, float *dx) {
    CU_PDL_ENTRY();
    __shared__ float coef[2]; /* mean_g(dx̂), mean_g(dx̂·x̂) */
    const int64_t bg = blockIdx.y;
    const int64_t g = bg % (C / cpg);
    if (threadIdx.x == 0) {
        double a = 0.0, b = 0.0;
        for (int c = 0; c < chunks; c++) {
            a += partial[(bg * chunks + c) * 2 + 0];
            b += partial[(bg * chunks + c) * 2 + 1];
        }
        coef[0] = (float)(a / (double)count);
        coef[1] = (float)(b / (double)count);
    }
    __syncthreads();
    const float mean = stats[bg * 2 + 0], rstd = stats[bg * 2 + 1];
    const float *xg = x + bg * count, *dyg = dy + bg * count;
    float *dxg = dx + bg * count;
    const int64_t lo = (int64_t)blockIdx.x * GN_CHUNK;
    int64_t hi = lo + GN_CHUNK;
    if (hi > count) hi = count;
    if (gn_bwd_step(xg + lo, dyg + lo, dxg + lo, hi - lo, S) == 4)
        gn_bwd_pass<4, true>(xg, dyg, dxg, lo, hi, g * cpg, S, gamma, beta, mean, rstd, silu, NULL, NULL, coef[0],
                             coef[1], accumulate);
    else
        gn_bwd_pass<1, true>(xg, dyg, dxg, lo, hi, g * cpg, S, gamma, beta, mean, rstd, silu, NULL, NULL, coef[0],
                             coef[1], accumulate);
}

__global__ void k_gn_bwd_params(const float *x, const float *gamma, const float *beta, const float *dy,
                                const float *stats, int64_t B, int64_t C, int64_t S, int64_t cpg, int silu,
                                float *dgamma, float *dbeta) {
    CU_PDL_ENTRY();
    /* one block per channel c: Σ_b Σ_s dz·x̂ and Σ dz */
    __shared__ double smem[32];
    const int64_t c = blockIdx.x, G = C / cpg, g = c / cpg;
    const float ga = gamma ? gamma[c] : 1.0f, be = beta ? beta[c] : 0.0f;
    double sg = 0.0, sb = 0.0;
    for (int64_t b = 0; b < B; b++) {
        const float mean = stats[(b * G + g) * 2 + 0], rstd = stats[(b * G + g) * 2 + 1];
        const float *xr = x + (b * C + c) * S, *dyr = dy + (b * C + c) * S;
        for (int64_t s = threadIdx.x; s < S; s += blockDim.x) {
            float xh, dz;
            gn_point(xr[s], mean, rstd, ga, be, dyr[s], silu, &xh, &dz);
            sg += (double)dz * (double)xh;
            sb += (double)dz;
        }
    }
    sg = cu_block_sum_d(sg, smem);
    sb = cu_block_sum_d(sb, smem);
    if (threadIdx.x == 0) {
        if (dgamma) dgamma[c] = (float)((double)dgamma[c] + sg);
        if (dbeta) dbeta[c] = (float)((double)dbeta[c] + sb);
    }
}

sd_status cu_group_norm_backward(const float *x, const float *gamma, const float *beta, const float *dy,
                                 float *dx, float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S,
                                 int groups, float eps, int silu, int accumulate) {
    if (groups <= 0 || C % groups) return sd_fail(SD_ERR_SHAPE, "cuda group norm backward: %lld channels, %d groups", (long long)C, groups);
    const int64_t n_groups = B * groups, cpg = C / groups, count = cpg * S;
    if (n_groups <= 0 || count <= 0 || (!dx && !dgamma && !dbeta)) return SD_OK;
    const int chunks = (int)((count + GN_CHUNK - 1) / GN_CHUNK);
    const size_t part_bytes = gn_partial_bytes(n_groups, chunks);
    char *ws = (char *)cu_workspace(2 * part_bytes + cu_align((size_t)n_groups * 2 * sizeof(float)));
    if (!ws) return SD_ERR_OOM;
    double *partial = (double *)ws, *partial2 = (double *)(ws + part_bytes);
    float *stats = (float *)(ws + 2 * part_bytes);
    cudaStream_t st = cu_cur()->stream;
    CU_TRY(gn_stats(x, n_groups, count, eps, partial, stats));
    dim3 grid((unsigned)chunks, (unsigned)n_groups);
    if (dx) {
        CU_LAUNCH(k_gn_bwd_partial, grid, GN_THREADS, 0, st)(x, gamma, beta, dy, stats, C, S, cpg, count, silu, chunks, partial2);
        LAUNCH_CHECK("group_norm_backward partial");
        CU_LAUNCH(k_gn_bwd_dx, grid, GN_THREADS, 0, st)(x, gamma, beta, dy, stats, partial2, chunks, C, S, cpg, count, silu,
                                                       accumulate, dx);
        LAUNCH_CHECK("group_norm_backward dx");
    }
    if (dgamma || dbeta) {
        CU_LAUNCH(k_gn_bwd_params, (unsigned)C, GN_THREADS, 0, st)(x, gamma, beta, dy, stats, B, C, S, cpg, silu, dgamma, dbeta);
        LAUNCH_CHECK("group_norm_backward params");
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * LayerNorm
 * --------------------------------------------------------------------------------------------- */

/* Whether a row of C values at xr moves 16 bytes at a time (the same answer for the whole warp). */
template <typename T> __device__ __forceinline__ bool ln_row_vec(const T *xr, int64_t C) {
    return cu_aligned16(xr) && C % cu_vec16<T>::n == 0;
}

/* N consecutive values of a row from p as floats: a 16-byte piece (N = cu_vec16<T>::n), four
 * values (cu_load4) or one. */
template <int N, typename T> __device__ __forceinline__ void ln_load(const T *p, float (&v)[N]) {
    if constexpr (N == 1) {
        v[0] = cu_f32(p[0]);
    } else if constexpr (N == 4) {
        const cu_vec16<float> f = cu_load4(p);
#pragma unroll
        for (int k = 0; k < 4; k++) v[k] = f.v[k];
    } else {
        static_assert(N == cu_vec16<T>::n, "a row piece is 16 bytes, 4 values or 1");
        cu_vec16<T> x;
        x.load(p);
#pragma unroll
        for (int k = 0; k < N; k++) v[k] = cu_f32(x.v[k]);
    }
}

/* (mean, rstd) of one row, computed by one warp in double (two passes, as the CPU does), each lane
 * reading N values per load: lane l sums pieces l, l + 32, ... in order, so two storage types read
 * at the same N give the same sums for the same values. */
template <int N, typename T>
__device__ __forceinline__ void ln_row_stats_by(const T *xr, int64_t C, float eps, float *mean_out,
                                                float *rstd_out) {
    const int lane = threadIdx.x & 31;
    double s = 0.0;
    for (int64_t i = (int64_t)lane * N; i < C; i += 32 * N) {
        float v[N];
        ln_load<N>(xr + i, v);
#pragma unroll
        for (int k = 0; k < N; k++) s += v[k];
    }
    const double mean = cu_warp_sum_d(s) / (double)C;
    double sq = 0.0;
    for (int64_t i = (int64_t)lane * N; i < C; i += 32 * N) {
        float v[N];
        ln_load<N>(xr + i, v);
#pragma unroll
        for (int k = 0; k < N; k++) {
            const double d = (double)v[k] - mean;
            sq += d * d;
        }
    }
    sq = cu_warp_sum_d(sq);
    *mean_out = (float)mean;
    *rstd_out = (float)(1.0 / sqrt(sq / (double)C + (double)eps));
}

/* The forward's statistics: 16 bytes per load where the row allows. */
template <typename T>
__device__ __forceinline__ void ln_row_stats(const T *xr, int64_t C, float eps, float *mean_out,
                                             float *rstd_out) {
    if (ln_row_vec(xr, C))
        ln_row_stats_by<cu_vec16<T>::n>(xr, C, eps, mean_out, rstd_out);
    else
        ln_row_stats_by<1>(xr, C, eps, mean_out, rstd_out);
}

template <typename T>
__global__ void k_layer_norm(const T *x, const float *gamma, const float *beta, T *y, int64_t M, int64_t C,
                             float eps) {
    CU_PDL_ENTRY();
    /* x, y: [M, C]; one warp per row */
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= M) return; /* whole warps leave together: the shuffles stay convergent */
    const int lane = threadIdx.x & 31;
    const T *xr = x + row * C;
    T *yr = y + row * C;
    float mean, rstd;
    ln_row_stats(xr, C, eps, &mean, &rstd);
    typedef cu_vec16<T> V;
    if (ln_row_vec(xr, C) && cu_aligned16(yr)) {
        for (int64_t i = (int64_t)lane * V::n; i < C; i += 32 * V::n) {
            V in, out;
            in.load(xr + i);
#pragma unroll
            for (int k = 0; k < V::n; k++) {
                const float ga = gamma ? gamma[i + k] : 1.0f, be = beta ? beta[i + k] : 0.0f;
                cu_store(&out.v[k], __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(cu_f32(in.v[k]), mean), rstd), ga), be));
            }
            out.store(yr + i);
        }
        return;
    }
    for (int64_t i = lane; i < C; i += 32) {
        const float ga = gamma ? gamma[i] : 1.0f, be = beta ? beta[i] : 0.0f;
        cu_store(&yr[i], __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(cu_f32(xr[i]), mean), rstd), ga), be));
    }
}

template <typename T>
static sd_status layer_norm(const T *x, const float *gamma, const float *beta, T *y, int64_t M, int64_t C,
                            float eps) {
    if (M <= 0 || C <= 0) return SD_OK;
    const int rows_per_block = LN_THREADS / 32;
    const int64_t blocks = (M + rows_per_block - 1) / rows_per_block;
    CU_LAUNCH(k_layer_norm<T>, (unsigned)blocks, LN_THREADS, 0, cu_cur()->stream)(x, gamma, beta, y, M, C, eps);
    LAUNCH_CHECK("layer_norm");
    return SD_OK;
}

sd_status cu_layer_norm(const float *x, const float *gamma, const float *beta, float *y, int64_t M,
                        int64_t C, float eps) {
    return layer_norm(x, gamma, beta, y, M, C, eps);
}

/* fp16 rows of C = 8·n values, n <= 32·LN_F16_PIECES (SD's 320, 640 and 1280): one warp per row,
 * the row read once, 16 bytes per lane per piece, and held in registers; mean and variance in fp32
 * from them (two passes over the registers, no second read), the affine part one FFMA, γ and β by
 * 16-byte loads. The general kernel reads the row three times and computes its statistics in
 * double, the CPU's way, which exact mode's F32 rows need and fp16 outputs do not (test_cuda_f16
 * holds this one to one fp16 step). */
#define LN_F16_PIECES 5
template <int PIECES> /* pieces per lane: C <= 256·PIECES (the registers the row takes) */
__global__ void __launch_bounds__(LN_THREADS) k_layer_norm_f16_rows(const __half *x, const float *gamma,
                                                                    const float *beta, __half *y, int64_t M, int C,
                                                                    float eps) {
    CU_PDL_ENTRY();
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= M) return; /* whole warps leave together: the shuffles stay convergent */
    const int lane = threadIdx.x & 31, pieces = C / 8;
    const __half *xr = x + row * C;
    __half *yr = y + row * C;
    float v[PIECES][8];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < PIECES; j++) {
        const int piece = lane + 32 * j;
        cu_vec16<__half> h;
        if (piece < pieces) h.load(xr + piece * 8);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            v[j][k] = piece < pieces ? __half2float(h.v[k]) : 0.0f;
            s += v[j][k];
        }
    }
    const float mean = cu_warp_sum(s) / (float)C;
    float sq = 0.0f;
#pragma unroll
    for (int j = 0; j < PIECES; j++)
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float d = lane + 32 * j < pieces ? v[j][k] - mean : 0.0f;
            sq = fmaf(d, d, sq);
        }
    const float rstd = 1.0f / sqrtf(cu_warp_sum(sq) / (float)C + eps); /* once per row */
#pragma unroll
    for (int j = 0; j < PIECES; j++) {
        const int piece = lane + 32 * j;
        if (piece >= pieces) continue;
        float ga[8], be[8];
        gn_channel_values<8>(gamma, (uint32_t)piece * 8, 1.0f, ga);
        gn_channel_values<8>(beta, (uint32_t)piece * 8, 0.0f, be);
        cu_vec16<__half> out;
#pragma unroll
        for (int k = 0; k < 8; k++) out.v[k] = __float2half_rn(fmaf((v[j][k] - mean) * rstd, ga[k], be[k]));
        out.store(yr + piece * 8);
    }
}

sd_status cu_f16_layer_norm(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t M,
                            int64_t C, float eps) {
    if (M > 0 && C > 0 && C % 8 == 0 && C <= 8 * 32 * LN_F16_PIECES && cu_aligned16(x) && cu_aligned16(y)) {
        const int rows_per_block = LN_THREADS / 32;
        const unsigned blocks = (unsigned)((M + rows_per_block - 1) / rows_per_block);
        cudaStream_t st = cu_cur()->stream;
        const __half *xh = cu_half(x);
        __half *yh = cu_half(y);
        if (C <= 256 * 2) CU_LAUNCH(k_layer_norm_f16_rows<2>, blocks, LN_THREADS, 0, st)(xh, gamma, beta, yh, M, (int)C, eps);
        else if (C <= 256 * 3) CU_LAUNCH(k_layer_norm_f16_rows<3>, blocks, LN_THREADS, 0, st)(xh, gamma, beta, yh, M, (int)C, eps);
        else CU_LAUNCH(k_layer_norm_f16_rows<LN_F16_PIECES>, blocks, LN_THREADS, 0, st)(xh, gamma, beta, yh, M, (int)C, eps);
        LAUNCH_CHECK("layer_norm (fp16 rows in registers)");
        return SD_OK;
    }
    return layer_norm(cu_half(x), gamma, beta, cu_half(y), M, C, eps);
}

/* LayerNorm backward. x is F32, or fp16 (the input a gradient step storing fp16 saved,
 * sd_f16_ops.layer_norm_backward); dy, dx and the parameters' gradients are F32. fp16 x is read four
 * values at a time where F32 x is read as float4 (cu_load4), so the arithmetic on its values, exact
 * in F32, is the widened copy's: the same bits. */

/* whether a row of x is read four values per load */
template <typename X> __device__ __forceinline__ bool ln_bwd_vec(const X *xr, int64_t C) {
    return cu_aligned4v(xr) && C % 4 == 0;
}

/* One warp's row of the LayerNorm data gradient, STEP values per load:
 * dx += rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)), dx̂ = dy · γ, the means in double. */
template <int STEP, typename X>
__device__ __forceinline__ void ln_bwd_row(const X *xr, const float *dyr, float *dxr, const float *gamma, int64_t C,
                                           float mean, float rstd) {
    const int lane = threadIdx.x & 31;
    double a = 0.0, b = 0.0;
    for (int64_t i = (int64_t)lane * STEP; i < C; i += 32 * STEP) {
        gn_vals<STEP> xv, dv;
        xv.load(xr + i);
        dv.load(dyr + i);
#pragma unroll
        for (int k = 0; k < STEP; k++) {
            const float xh = (xv.v[k] - mean) * rstd;
            const double dxh = (double)dv.v[k] * (double)(gamma ? gamma[i + k] : 1.0f);
            a += dxh;
            b += dxh * (double)xh;
        }
    }
    const float ma = (float)(cu_warp_sum_d(a) / (double)C), mb = (float)(cu_warp_sum_d(b) / (double)C);
    for (int64_t i = (int64_t)lane * STEP; i < C; i += 32 * STEP) {
        gn_vals<STEP> xv, dv, ov;
        xv.load(xr + i);
        dv.load(dyr + i);
        ov.load(dxr + i);
#pragma unroll
        for (int k = 0; k < STEP; k++) {
            const float xh = (xv.v[k] - mean) * rstd;
            const float dxh = dv.v[k] * (gamma ? gamma[i + k] : 1.0f);
            ov.v[k] += rstd * (dxh - ma - xh * mb);
        }
        ov.store(dxr + i);
    }
}

/* dx += r (dx̂ − mean(dx̂) − x̂ mean(dx̂ x̂)) with dx̂ = γ dy; also stores the row's (mean, rstd)
 * for the parameter kernel. One warp per row. */
template <typename X>
__global__ void k_ln_bwd_rows(const X *x, const float *gamma, const float *dy, float *dx, int64_t M,
                              int64_t C, float eps, float *stats) {
    CU_PDL_ENTRY();
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= M) return;
    const int lane = threadIdx.x & 31;
    const X *xr = x + row * C;
    const float *dyr = dy + row * C;
    float mean, rstd;
    if (ln_bwd_vec(xr, C))
        ln_row_stats_by<4>(xr, C, eps, &mean, &rstd);
    else
        ln_row_stats_by<1>(xr, C, eps, &mean, &rstd);
    if (lane == 0) {
        stats[row * 2 + 0] = mean;
        stats[row * 2 + 1] = rstd;
    }
    if (!dx) return;
    float *dxr = dx + row * C;
    /* four values per load where x, dy and dx rows are 16-byte aligned (every row of SD's UNet) */
    if (ln_bwd_vec(xr, C) && cu_aligned16(dyr) && cu_aligned16(dxr))
        ln_bwd_row<4>(xr, dyr, dxr, gamma, C, mean, rstd);
    else
        ln_bwd_row<1>(xr, dyr, dxr, gamma, C, mean, rstd);
}

#define LNP_TILE 32
#define LNP_ROWS 8

/* partial[(chunk · C + c) · 2 + {0, 1}] = (Σ dy·x̂, Σ dy) over a chunk of rows; block (32, 8). */
template <typename X>
__global__ void k_ln_bwd_params_partial(const X *x, const float *dy, const float *stats, int64_t M,
                                        int64_t C, int64_t rows_per_chunk, double *partial) {
    CU_PDL_ENTRY();
    __shared__ double sg[LNP_ROWS][LNP_TILE], sb[LNP_ROWS][LNP_TILE];
    const int64_t c = (int64_t)blockIdx.x * LNP_TILE + threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
    int64_t r1 = r0 + rows_per_chunk;
    if (r1 > M) r1 = M;
    double ag = 0.0, ab = 0.0;
    if (c < C)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += LNP_ROWS) {
            const float xh = (cu_f32(x[r * C + c]) - stats[r * 2 + 0]) * stats[r * 2 + 1];
            const double d = dy[r * C + c];
            ag += d * (double)xh;
            ab += d;
        }
    sg[threadIdx.y][threadIdx.x] = ag;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        double tg = 0.0, tb = 0.0;
        for (int j = 0; j < LNP_ROWS; j++) {
            tg += sg[j][threadIdx.x];
            tb += sb[j][threadIdx.x];
        }
        partial[((int64_t)blockIdx.y * C + c) * 2 + 0] = tg;
        partial[((int64_t)blockIdx.y * C + c) * 2 + 1] = tb;
    }
}

__global__ void k_ln_bwd_params_final(const double *partial, int chunks, int64_t C, float *dgamma, float *dbeta) {
    CU_PDL_ENTRY();
    GRID_STRIDE(c, C) {
        double tg = 0.0, tb = 0.0;
        for (int j = 0; j < chunks; j++) {
            tg += partial[((int64_t)j * C + c) * 2 + 0];
            tb += partial[((int64_t)j * C + c) * 2 + 1];
        }
        if (dgamma) dgamma[c] = (float)((double)dgamma[c] + tg);
        if (dbeta) dbeta[c] = (float)((double)dbeta[c] + tb);
    }
}

/* k_ln_bwd_rows for rows of C <= 128·P values whose x rows are read 4 values per load and whose dy
 * and dx rows are 16-byte aligned (SD's 320, 640 and 1280): each lane holds its P pieces of x, dy,
 * γ and the dx it adds to (pieces lane + 32j, as the general kernel walks them) in registers, all
 * loaded at the start, so the row is read once instead of x four times and dy twice, and the loads
 * wait once instead of before each reduction and again before the update. The same expressions in
 * the same order as ln_row_stats_by<4> and ln_bwd_row<4>: the same bits. */
template <int P, typename X>
__global__ void __launch_bounds__(LN_THREADS) k_ln_bwd_rows_regs(const X *x, const float *gamma, const float *dy,
                                                                 float *dx, int64_t M, int64_t C, float eps,
                                                                 float *stats) {
    CU_PDL_ENTRY();
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= M) return;
    const int lane = threadIdx.x & 31;
    const X *xr = x + row * C;
    const float *dyr = dy + row * C;
    float *dxr = dx ? dx + row * C : NULL;
    cu_vec16<float> xv[P];
    float4 dv[P], old[P], gv[P]; /* gv: γ of the piece (1 without γ) */
#pragma unroll
    for (int j = 0; j < P; j++) {
        const int64_t i = (int64_t)lane * 4 + 128 * j;
        const bool in = i < C && dx;
        xv[j] = i < C ? cu_load4(xr + i) : cu_vec16<float>{};
        dv[j] = in ? *reinterpret_cast<const float4 *>(dyr + i) : make_float4(0, 0, 0, 0);
        old[j] = in ? *reinterpret_cast<const float4 *>(dxr + i) : make_float4(0, 0, 0, 0);
        gv[j] = in && gamma ? make_float4(gamma[i], gamma[i + 1], gamma[i + 2], gamma[i + 3]) : make_float4(1, 1, 1, 1);
    }
    double s = 0.0;
#pragma unroll
    for (int j = 0; j < P; j++)
        if ((int64_t)lane * 4 + 128 * j < C)
            s += (double)xv[j].v[0], s += (double)xv[j].v[1], s += (double)xv[j].v[2], s += (double)xv[j].v[3];
    const double mean_d = cu_warp_sum_d(s) / (double)C;
    double sq = 0.0;
#pragma unroll
    for (int j = 0; j < P; j++) {
        if ((int64_t)lane * 4 + 128 * j >= C) continue;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const double d = (double)xv[j].v[k] - mean_d;
            sq += d * d;
        }
    }
    sq = cu_warp_sum_d(sq);
    const float mean = (float)mean_d, rstd = (float)(1.0 / sqrt(sq / (double)C + (double)eps));
    if (lane == 0) {
        stats[row * 2 + 0] = mean;
        stats[row * 2 + 1] = rstd;
    }
    if (!dx) return;
    double a = 0.0, b = 0.0;
#pragma unroll
    for (int j = 0; j < P; j++) {
        const int64_t i = (int64_t)lane * 4 + 128 * j;
        if (i >= C) continue;
        const float *xa = xv[j].v, da[4] = {dv[j].x, dv[j].y, dv[j].z, dv[j].w};
        const float ga[4] = {gv[j].x, gv[j].y, gv[j].z, gv[j].w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float xh = (xa[k] - mean) * rstd;
            const double dxh = (double)da[k] * (double)ga[k];
            a += dxh;
            b += dxh * (double)xh;
        }
    }
    const float ma = (float)(cu_warp_sum_d(a) / (double)C), mb = (float)(cu_warp_sum_d(b) / (double)C);
#pragma unroll
    for (int j = 0; j < P; j++) {
        const int64_t i = (int64_t)lane * 4 + 128 * j;
        if (i >= C) continue;
        const float *xa = xv[j].v, da[4] = {dv[j].x, dv[j].y, dv[j].z, dv[j].w};
        const float ga[4] = {gv[j].x, gv[j].y, gv[j].z, gv[j].w};
        float ov[4] = {old[j].x, old[j].y, old[j].z, old[j].w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float xh = (xa[k] - mean) * rstd;
            const float dxh = da[k] * ga[k];
            ov[k] += rstd * (dxh - ma - xh * mb);
        }
        *reinterpret_cast<float4 *>(dxr + i) = make_float4(ov[0], ov[1], ov[2], ov[3]);
    }
}

template <typename X>
static sd_status layer_norm_backward(const X *x, const float *gamma, const float *dy, float *dx, float *dgamma,
                                     float *dbeta, int64_t M, int64_t C, float eps) {
    if (M <= 0 || C <= 0 || (!dx && !dgamma && !dbeta)) return SD_OK;
    int64_t chunks = (M + 255) / 256;
    if (chunks > 64) chunks = 64;
    const int64_t rows_per_chunk = (M + chunks - 1) / chunks;
    chunks = (M + rows_per_chunk - 1) / rows_per_chunk;
    const size_t stats_bytes = cu_align((size_t)M * 2 * sizeof(float));
    const size_t part_bytes = cu_align((size_t)(chunks * C) * 2 * sizeof(double));
    char *ws = (char *)cu_workspace(stats_bytes + part_bytes);
    if (!ws) return SD_ERR_OOM;
    float *stats = (float *)ws;
    double *partial = (double *)(ws + stats_bytes);
    cudaStream_t st = cu_cur()->stream;
    const int rows_per_block = LN_THREADS / 32;
    const unsigned row_blocks = (unsigned)((M + rows_per_block - 1) / rows_per_block);
    /* rows held in registers: rows read 4 values per load (every row then, C a multiple of 4) up to 1280 */
    const bool regs = C % 4 == 0 && cu_aligned4v(x) && cu_aligned16(dy) && (!dx || cu_aligned16(dx));
    if (regs && C <= 128 * 3)
        CU_LAUNCH((k_ln_bwd_rows_regs<3, X>), row_blocks, LN_THREADS, 0, st)(x, gamma, dy, dx, M, C, eps, stats);
    else if (regs && C <= 128 * 5)
        CU_LAUNCH((k_ln_bwd_rows_regs<5, X>), row_blocks, LN_THREADS, 0, st)(x, gamma, dy, dx, M, C, eps, stats);
    else if (regs && C <= 128 * 10)
        CU_LAUNCH((k_ln_bwd_rows_regs<10, X>), row_blocks, LN_THREADS, 0, st)(x, gamma, dy, dx, M, C, eps, stats);
    else
        CU_LAUNCH(k_ln_bwd_rows<X>, row_blocks, LN_THREADS, 0, st)(x, gamma, dy, dx, M, C, eps, stats);
    LAUNCH_CHECK("layer_norm_backward rows");
    if (dgamma || dbeta) {
        dim3 grid((unsigned)((C + LNP_TILE - 1) / LNP_TILE), (unsigned)chunks), block(LNP_TILE, LNP_ROWS);
        CU_LAUNCH(k_ln_bwd_params_partial<X>, grid, block, 0, st)(x, dy, stats, M, C, rows_per_chunk, partial);
        LAUNCH_CHECK("layer_norm_backward params partial");
        CU_LAUNCH(k_ln_bwd_params_final, cu_blocks(C, 256), 256, 0, st)(partial, (int)chunks, C, dgamma, dbeta);
        LAUNCH_CHECK("layer_norm_backward params final");
    }
    return SD_OK;
}

sd_status cu_layer_norm_backward(const float *x, const float *gamma, const float *dy, float *dx,
                                 float *dgamma, float *dbeta, int64_t M, int64_t C, float eps) {
    return layer_norm_backward(x, gamma, dy, dx, dgamma, dbeta, M, C, eps);
}

sd_status cu_f16_layer_norm_backward(const sd_f16 *x, const float *gamma, const float *dy, float *dx,
                                     float *dgamma, float *dbeta, int64_t M, int64_t C, float eps) {
    return layer_norm_backward(cu_half(x), gamma, dy, dx, dgamma, dbeta, M, C, eps);
}

/* ------------------------------------------------------------------------------------------------
 * GroupNorm on channels-last maps (fp16 storage: sd_f16_ops.group_norm_nhwc)
 * --------------------------------------------------------------------------------------------- */

/* x: [B, S, C]; a group is cpg consecutive channels of every pixel, so its values are strided.
 * Long groups (SD's 64x64 and 32x32 levels) take three kernels:
 *   k_gn_nhwc_stats    block (chunk, b): P pixels of image b, all C channels. Thread (plane, lane)
 *                      loads channels [lane·V, +V) (16 bytes where they allow) of pixels plane,
 *                      plane + R, ... and sums each channel in double; the block adds its R planes
 *                      per channel, then each group's channels, in a fixed order, and writes the
 *                      (Σ x, Σ x²) of (image, group, chunk) where k_gn_partial would;
 *   k_gn_nhwc_finalize one warp per (image, group): its chunks' sums -> (mean, rstd);
 *   k_gn_nhwc_apply    elementwise over the whole map, V values per thread.
 * The H100 profile of the kernels these replace (2-byte loads, one value per thread in the
 * normalisation's 16k blocks, one thread per group walking every chunk in the finalize) put a
 * 320x4096 batch-2 map at 54 us, under 200 GB/s. Short groups take one kernel (k_gn_nhwc_fused,
 * the rule of gn_fused_ok). The chunking depends on the shape only (never on the GPU), so results
 * are the same on every card; they use the formulas of the NCHW kernels (gn_stats_from_sums,
 * gn_value), with the sums taken in another order, so a statistic can differ in its last bit. */
#define GN_NHWC_THREADS 256
#define GN_NHWC_BLOCKS 256                  /* the statistics pass aims at about this many blocks */
#define GN_NHWC_SMEM (3072 * 2 * sizeof(double)) /* the per-channel sums of one block: R·C <= 3072 */

/* V consecutive halves moved by one load (V = 8: 16 bytes). */
template <int V> struct gn_halves {
    alignas(2 * V) __half v[V];
    __device__ __forceinline__ void load(const __half *p) {
        if constexpr (V == 8) *reinterpret_cast<float4 *>(v) = *reinterpret_cast<const float4 *>(p);
        else if constexpr (V == 4) *reinterpret_cast<float2 *>(v) = *reinterpret_cast<const float2 *>(p);
        else if constexpr (V == 2) *reinterpret_cast<__half2 *>(v) = *reinterpret_cast<const __half2 *>(p);
        else v[0] = p[0];
    }
    __device__ __forceinline__ void store(__half *p) const {
        if constexpr (V == 8) *reinterpret_cast<float4 *>(p) = *reinterpret_cast<const float4 *>(v);
        else if constexpr (V == 4) *reinterpret_cast<float2 *>(p) = *reinterpret_cast<const float2 *>(v);
        else if constexpr (V == 2) *reinterpret_cast<__half2 *>(p) = *reinterpret_cast<const __half2 *>(v);
        else p[0] = v[0];
    }
};

/* The channels-last kernels' value, y = ((x − mean)·rstd)·γ + β (+ SiLU), for fp16 outputs: one
 * FFMA for the affine part and SiLU as v / (1 + 2^(−v·log2 e)) on the special-function unit (ex2 and
 * rcp approximations, about 2 ulp). The F32 kernels' gn_value rounds the CPU's expression step by
 * step and calls expf and an IEEE division: at 8 channels per thread that was about 100 instructions
 * per value, three times what the map's bytes cost at the memory's rate. The difference is far under
 * the fp16 output's own rounding (test_cuda_f16 holds these kernels to one fp16 step). */
__device__ __forceinline__ float gn_value_f16(float x, float mean, float rstd, float ga, float be, int silu) {
    const float v = fmaf((x - mean) * rstd, ga, be);
    if (!silu) return v;
    return v * cu_rcp_approx(1.0f + cu_exp2_ftz(v * -1.4426950408889634f));
}

/* γ and β of V consecutive channels from c0 (1 and 0 where absent). */
template <int V>
__device__ __forceinline__ void gn_affine(const float *gamma, const float *beta, uint32_t c0, float (&ga)[V],
                                          float (&be)[V]) {
    gn_channel_values<V>(gamma, c0, 1.0f, ga);
    gn_channel_values<V>(beta, c0, 0.0f, be);
}

/* The widest load (8, 4, 2 or 1 halves) that divides `span` and that x and y are aligned for. */
static int gn_nhwc_width(const void *x, const void *y, int64_t span) {
    const uintptr_t a = (uintptr_t)x | (uintptr_t)y;
    for (int v = 8; v > 1; v /= 2)
        if (span % v == 0 && a % (2 * (uintptr_t)v) == 0) return v;
    return 1;
}

/* stats[bg · 2 + {0, 1}] = (mean, rstd) from the chunks' sums for bg in [bg_lo, bg_hi): one warp per
 * (image, group), its lanes striding over the chunks, then a shuffle tree (a fixed order). A warp
 * takes GN_FINALIZE_BATCH groups at once (warps first_warp + warps·j), so that their loads are in
 * flight together: one group at a time, each waited on its L2 loads and its shuffle trees in turn,
 * which made this tail several microseconds of the launch. The stats kernel's last block of an image
 * runs it (cu_last_arrival): the partials are other blocks' writes. */
#define GN_FINALIZE_BATCH 4
__device__ __forceinline__ void gn_nhwc_finalize(const double *partial, int chunks, int64_t bg_lo, int64_t bg_hi,
                                                 int64_t count, float eps, float *stats, int64_t first_warp,
                                                 int64_t warps) {
    const int lane = threadIdx.x & 31;
    for (int64_t bg0 = bg_lo + first_warp; bg0 < bg_hi; bg0 += warps * GN_FINALIZE_BATCH) {
        double s[GN_FINALIZE_BATCH], sq[GN_FINALIZE_BATCH];
#pragma unroll
        for (int j = 0; j < GN_FINALIZE_BATCH; j++) s[j] = sq[j] = 0.0;
        for (int c = lane; c < chunks; c += 32) {
#pragma unroll
            for (int j = 0; j < GN_FINALIZE_BATCH; j++) {
                const int64_t bg = bg0 + warps * j;
                if (bg >= bg_hi) break;
                s[j] += __ldcg(&partial[(bg * chunks + c) * 2 + 0]);
                sq[j] += __ldcg(&partial[(bg * chunks + c) * 2 + 1]);
            }
        }
#pragma unroll
        for (int j = 0; j < GN_FINALIZE_BATCH; j++) { /* every lane takes part in the shuffles */
            const int64_t bg = bg0 + warps * j;
            const double ts = cu_warp_sum_d(s[j]), tsq = cu_warp_sum_d(sq[j]);
            if (lane == 0 && bg < bg_hi)
                gn_stats_from_sums(ts, tsq, count, eps, &stats[bg * 2 + 0], &stats[bg * 2 + 1]);
        }
    }
}

/* Per (chunk of P pixels, image): each group's Σ x and Σ x² into partial; the image's last block
 * then turns its groups' into stats (gn_nhwc_finalize: one launch fewer than a kernel of its own),
 * counted on done[1 + b] (a batch of 2 finishes its two images in two blocks at once). */
template <int V>
__global__ void __launch_bounds__(V >= 8 ? 512 : 1024) k_gn_nhwc_stats(const __half *x, int64_t S, int C, int cpg, int P, int chunks,
                                                        double *partial, float eps, float *stats, unsigned *done) {
    CU_PDL_ENTRY();
    CU_DYNAMIC_SHARED(double, sums); /* [2][R][C]: Σ x and Σ x² per (plane, channel) */
    const int lanes = C / V, R = (int)blockDim.x / lanes;
    const int lane = (int)threadIdx.x % lanes, plane = (int)threadIdx.x / lanes;
    const int64_t b = blockIdx.y, p0 = (int64_t)blockIdx.x * P;
    const int64_t p1 = p0 + P < S ? p0 + P : S;
    double s[V], sq[V];
#pragma unroll
    for (int k = 0; k < V; k++) s[k] = sq[k] = 0.0;
    const __half *xb = x + b * S * C + lane * V;
#pragma unroll 2
    for (int64_t p = p0 + plane; p < p1; p += R) {
        gn_halves<V> h;
        h.load(xb + p * C);
#pragma unroll
        for (int k = 0; k < V; k++) {
            const double v = __half2float(h.v[k]);
            s[k] += v;
            sq[k] += v * v;
        }
    }
    double *ss = sums, *sqs = sums + (size_t)R * C;
#pragma unroll
    for (int k = 0; k < V; k++) {
        ss[plane * C + lane * V + k] = s[k];
        sqs[plane * C + lane * V + k] = sq[k];
    }
    __syncthreads();
    /* per channel over the planes, into plane 0 (each thread reads and writes its own columns) */
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        double a = 0.0, q = 0.0;
        for (int r = 0; r < R; r++) {
            a += ss[r * C + c];
            q += sqs[r * C + c];
        }
        ss[c] = a;
        sqs[c] = q;
    }
    __syncthreads();
    const int G = C / cpg;
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        double a = 0.0, q = 0.0;
        for (int j = 0; j < cpg; j++) {
            a += ss[g * cpg + j];
            q += sqs[g * cpg + j];
        }
        double *out = partial + ((b * G + g) * chunks + blockIdx.x) * 2;
        out[0] = a;
        out[1] = q;
    }
    /* the image's last block, its whole warps (R · C / V threads need not be a multiple of 32) */
    if (!cu_last_arrival(done + 1 + b, gridDim.x) || threadIdx.x >= (blockDim.x & ~31u)) return;
    gn_nhwc_finalize(partial, chunks, b * G, (b + 1) * G, (int64_t)cpg * S, eps, stats, threadIdx.x >> 5,
                     blockDim.x >> 5);
}

/* y = gn_value(x) over the whole [B, S, C] map, V channels per thread (C % V == 0); the vector
 * index stays below 2^31 (cu_f16_group_norm_nhwc checks: the grid-stride step never wraps it), so its
 * divisions are 32-bit ones. */
template <int V>
__global__ void k_gn_nhwc_apply(const __half *x, const float *gamma, const float *beta, __half *y, const float *stats,
                                uint32_t n_vec, uint32_t S, uint32_t C, uint32_t cpg, int silu) {
    CU_PDL_ENTRY();
    const uint32_t lanes = C / V, G = C / cpg;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n_vec; i += gridDim.x * blockDim.x) {
        const uint32_t row = i / lanes, c0 = (i - row * lanes) * V;
        const float *st = stats + (size_t)(row / S) * G * 2;
        uint32_t g = c0 / cpg, off = c0 - g * cpg;
        float2 ms = *reinterpret_cast<const float2 *>(st + 2 * g); /* (mean, rstd) of the group */
        float ga[V], be[V];
        gn_affine<V>(gamma, beta, c0, ga, be);
        gn_halves<V> in, out;
        in.load(x + (size_t)i * V);
        if (cpg >= V) { /* the vector spans this group and at most the next: values from `split` on */
            const uint32_t split = cpg - off;
            const float2 ms1 = split < V ? *reinterpret_cast<const float2 *>(st + 2 * g + 2) : ms;
#pragma unroll
            for (int k = 0; k < V; k++) {
                const bool next = (uint32_t)k >= split;
                out.v[k] = __float2half_rn(gn_value_f16(__half2float(in.v[k]), next ? ms1.x : ms.x,
                                                        next ? ms1.y : ms.y, ga[k], be[k], silu));
            }
        } else { /* groups narrower than a vector (tiny models) */
#pragma unroll
            for (int k = 0; k < V; k++) {
                if (off == cpg) { /* the next group starts inside this vector */
                    g++;
                    off = 0;
                    ms = *reinterpret_cast<const float2 *>(st + 2 * g);
                }
                out.v[k] = __float2half_rn(gn_value_f16(__half2float(in.v[k]), ms.x, ms.y, ga[k], be[k], silu));
                off++;
            }
        }
        out.store(y + (size_t)i * V);
    }
}

/* Short groups (gn_fused_ok: SD's 16x16 and 8x8 levels) in one kernel, one block per (image, group),
 * as k_gn_fused does for NCHW maps: the group's S·cpg values walked pixel by pixel, V channels per
 * load (V divides cpg), summed, normalised from L2. One launch instead of three. */
template <int V>
__global__ void __launch_bounds__(GN_FUSED_THREADS) k_gn_nhwc_fused(const __half *x, const float *gamma,
                                                                    const float *beta, __half *y, int64_t S, int64_t C,
                                                                    int cpg, float eps, int silu, float *keep_stats) {
    CU_PDL_ENTRY();
    __shared__ double smem[32];
    __shared__ float stats[2];
    const int G = (int)(C / cpg), per_pixel = cpg / V;
    const int64_t b = blockIdx.x / G;
    const int g = (int)(blockIdx.x - b * G);
    const __half *xg = x + b * S * C + (int64_t)g * cpg;
    __half *yg = y + b * S * C + (int64_t)g * cpg;
    const int64_t n = S * per_pixel; /* vectors in the group */
    double s = 0.0, sq = 0.0;
#pragma unroll 2
    for (uint32_t i = threadIdx.x; i < (uint32_t)n; i += blockDim.x) { /* 32-bit: a short group (gn_fused_ok) */
        const uint32_t p = i / (uint32_t)per_pixel;
        gn_halves<V> h;
        h.load(xg + (int64_t)p * C + (i - p * (uint32_t)per_pixel) * V);
#pragma unroll
        for (int k = 0; k < V; k++) {
            const double v = __half2float(h.v[k]);
            s += v;
            sq += v * v;
        }
    }
    s = cu_block_sum_d(s, smem);
    sq = cu_block_sum_d(sq, smem);
    if (threadIdx.x == 0) {
        gn_stats_from_sums(s, sq, S * cpg, eps, &stats[0], &stats[1]);
        if (keep_stats) { /* for the backward (blockIdx.x is the (image, group)) */
            keep_stats[(int64_t)blockIdx.x * 2 + 0] = stats[0];
            keep_stats[(int64_t)blockIdx.x * 2 + 1] = stats[1];
        }
    }
    __syncthreads();
    const float mean = stats[0], rstd = stats[1];
    /* 32-bit indices: a short group's S · cpg / V vectors (gn_fused_ok) */
    for (uint32_t i = threadIdx.x; i < (uint32_t)n; i += blockDim.x) {
        const uint32_t p = i / (uint32_t)per_pixel;
        const uint32_t ch = (i - p * (uint32_t)per_pixel) * V;
        float ga[V], be[V];
        gn_affine<V>(gamma, beta, (uint32_t)(g * cpg) + ch, ga, be);
        gn_halves<V> in, out;
        in.load(xg + (int64_t)p * C + ch);
#pragma unroll
        for (int k = 0; k < V; k++) out.v[k] = __float2half_rn(gn_value_f16(__half2float(in.v[k]), mean, rstd, ga[k], be[k], silu));
        out.store(yg + (int64_t)p * C + ch);
    }
}

/* The long-group path's launches, V channels per load. */
template <int V>
static sd_status gn_nhwc_chunked(const __half *x, const float *gamma, const float *beta, __half *y, int64_t B, int64_t C,
                                 int64_t S, int cpg, float eps, int silu, float *keep_stats) {
    cudaStream_t st = cu_cur()->stream;
    const int lanes = (int)(C / V);
    int R = GN_NHWC_THREADS / lanes;
    if (R > (int)(GN_NHWC_SMEM / (2 * sizeof(double) * C))) R = (int)(GN_NHWC_SMEM / (2 * sizeof(double) * C));
    if (R < 1) R = 1;
    /* pixels per block: about GN_NHWC_BLOCKS blocks in all, at least 4 pixels per thread, a multiple of R */
    int64_t P = (S * B + GN_NHWC_BLOCKS - 1) / GN_NHWC_BLOCKS;
    if (P < 4 * R) P = 4 * R;
    P = (P + R - 1) / R * R;
    const int chunks = (int)((S + P - 1) / P);
    const int64_t n_groups = B * (C / cpg);
    const size_t part_bytes = gn_partial_bytes(n_groups, chunks);
    char *ws = (char *)cu_workspace(part_bytes + cu_align((size_t)n_groups * 2 * sizeof(float)));
    if (!ws) return SD_ERR_OOM;
    double *partial = (double *)ws;
    float *stats = keep_stats ? keep_stats : (float *)(ws + part_bytes); /* kept: the statistics go there */
    CU_LAUNCH(k_gn_nhwc_stats<V>, dim3((unsigned)chunks, (unsigned)B), R * lanes, 2 * sizeof(double) * R * C, st)(
        x, S, (int)C, cpg, (int)P, chunks, partial, eps, stats, cu_cur()->grid_done);
    LAUNCH_CHECK("group_norm_nhwc statistics");
    const int64_t n_vec = B * S * C / V;
    CU_LAUNCH(k_gn_nhwc_apply<V>, cu_blocks(n_vec, 256), 256, 0, st)(x, gamma, beta, y, stats, (uint32_t)n_vec,
                                                                    (uint32_t)S, (uint32_t)C, (uint32_t)cpg, silu);
    LAUNCH_CHECK("group_norm_nhwc normalize");
    return SD_OK;
}

template <int V>
static sd_status gn_nhwc_fused(const __half *x, const float *gamma, const float *beta, __half *y, int64_t B, int64_t C,
                               int64_t S, int cpg, float eps, int silu, float *keep_stats) {
    CU_LAUNCH(k_gn_nhwc_fused<V>, (unsigned)(B * (C / cpg)), GN_FUSED_THREADS, 0, cu_cur()->stream)(
        x, gamma, beta, y, S, C, cpg, eps, silu, keep_stats);
    LAUNCH_CHECK("group_norm_nhwc (one kernel)");
    return SD_OK;
}

sd_status cu_f16_group_norm_nhwc(const sd_f16 *x16, const float *gamma, const float *beta, sd_f16 *y16, int64_t B,
                                 int64_t C, int64_t S, int groups, float eps, int silu, float *keep_stats) {
    if (!sd_group_norm_nhwc_supports(C, groups))
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda group norm (channels-last): %lld channels in %d groups (at most %d "
                       "channels, or %d in multiples of 8)", (long long)C, groups, SD_GN_NHWC_MAX_CHANNELS_ANY,
                       SD_GN_NHWC_MAX_CHANNELS);
    const int64_t n_groups = B * groups;
    const int cpg = (int)(C / groups);
    if (n_groups <= 0 || S <= 0) return SD_OK;
    if (B > 65535 || n_groups > INT32_MAX || B * S * C > (int64_t)INT32_MAX)
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda group norm (channels-last): a [%lld, %lld, %lld] map is too large",
                       (long long)B, (long long)S, (long long)C);
    const __half *x = cu_half(x16);
    __half *y = cu_half(y16);
    if (gn_fused_ok(n_groups, cpg * S)) {
        switch (gn_nhwc_width(x, y, cpg)) {
        case 8: return gn_nhwc_fused<8>(x, gamma, beta, y, B, C, S, cpg, eps, silu, keep_stats);
        case 4: return gn_nhwc_fused<4>(x, gamma, beta, y, B, C, S, cpg, eps, silu, keep_stats);
        case 2: return gn_nhwc_fused<2>(x, gamma, beta, y, B, C, S, cpg, eps, silu, keep_stats);
        default: return gn_nhwc_fused<1>(x, gamma, beta, y, B, C, S, cpg, eps, silu, keep_stats);
        }
    }
    /* a width whose C / V lanes fit one block: any width up to SD_GN_NHWC_MAX_CHANNELS_ANY channels,
     * 8 beyond (the maps of the arenas are 256-byte aligned) */
    switch (gn_nhwc_width(x, y, C)) {
    case 8: return gn_nhwc_chunked<8>(x, gamma, beta, y, B, C, S, cpg, eps, silu, keep_stats);
    case 4: if (C / 4 <= 1024) return gn_nhwc_chunked<4>(x, gamma, beta, y, B, C, S, cpg, eps, silu, keep_stats); break;
    case 2: if (C / 2 <= 1024) return gn_nhwc_chunked<2>(x, gamma, beta, y, B, C, S, cpg, eps, silu, keep_stats); break;
    default: if (C <= 1024) return gn_nhwc_chunked<1>(x, gamma, beta, y, B, C, S, cpg, eps, silu, keep_stats); break;
    }
    return sd_fail(SD_ERR_UNSUPPORTED, "cuda group norm (channels-last): %lld channels in maps not 16-byte aligned",
                   (long long)C);
}

/* ------------------------------------------------------------------------------------------------
 * GroupNorm backward on a channels-last fp16 input (sd_f16_ops.group_norm_backward_nhwc): the input
 * a gradient step storing fp16 saved, read as it is, where the NCHW kernels would read a widened
 * F32 copy (written first) three times. dy, dx and the parameters' gradients are F32 NCHW: gradient
 * space keeps each tensor's logical order. The NCHW kernels give a block one channel's pixels, which
 * channels-last memory cannot feed coalesced; here a block walks tiles of 32 pixels x 32 channels of
 * one image: x's tile read along channels (its memory order) into shared memory, dy and dx along
 * pixels (theirs), warp w taking channels w, w + 8, w + 16, w + 24 with lane = pixel.
 *   k_gn_cl_tiles<GN_CL_STATS>   per (chunk of pixels, image, channel): Σ x, Σ x²; each channel
 *                                tile's last block (cu_last_arrival): per (image, channel) of the
 *                                tile the chunks' sums (gn_cl_tile_totals); the last of those: per
 *                                (image, group) (mean, rstd) (gn_cl_group_totals, gn_stats_from_sums)
 *   k_gn_cl_tiles<GN_CL_GRADS>   per (chunk, image, channel): Σ dz·x̂, Σ dz; each tile's last block:
 *                                its channels' totals, dγ_c += Σ_b Σ dz·x̂, dβ_c += Σ_b Σ dz; the last
 *                                of those: per (image, group) mean(dx̂), mean(dx̂·x̂), dx̂ = γ dz
 *   k_gn_cl_tiles<GN_CL_APPLY>   dx += rstd·(γ dz − mean(dx̂) − x̂·mean(dx̂·x̂))
 * Three launches (seven when the totals had kernels of their own); two when the forward kept its
 * statistics (the tape's buffer: a gradient step), which are then used as they are, so that the
 * backward differentiates the normalisation the forward computed, with one pass over x fewer.
 * Each sum is taken per channel first, then over the group's channels (γ times each channel's for
 * the gradients), in an order fixed by the shape: deterministic, and equal to the NCHW kernels'
 * result on the widened copy within rounding (another order of the same double sums), not bit for
 * bit. The chunking depends on the shape only.
 * --------------------------------------------------------------------------------------------- */
#define GN_CL_TILE 32     /* pixels and channels of a tile */
#define GN_CL_THREADS 256 /* 8 warps: 4 channels of the tile each */
#define GN_CL_BLOCKS 1024 /* the passes aim at about this many blocks (a few per SM: loads in flight) */

enum gn_cl_pass { GN_CL_STATS, GN_CL_GRADS, GN_CL_APPLY };

/* The tiled passes' arguments. */
struct gn_cl_args {
    const __half *x;                  /* [B, S, C] */
    const float *gamma, *beta, *dy;   /* dy [B, C, S] */
    const float *stats, *coef;        /* per (image, group): (mean, rstd); (mean(dx̂), mean(dx̂·x̂)) */
    int64_t S, C, chunk_pixels;
    int cpg, vec4, silu, accumulate;
    float eps;
    double *partial, *totals;         /* per (chunk, image, channel) and per (image, channel): two sums */
    float *out;                       /* the last block's: STATS stats; GRADS coef (NULL: no dx to come) */
    float *dgamma, *dbeta;            /* GRADS, += (NULL: not asked for) */
    float *dx;                        /* APPLY */
    unsigned *done;                   /* cu_last_arrival's counters: [0] tiles, [1 + tile] its blocks */
};

/* The last block of channel tile c_tile (its chunks' and images' blocks all counted): totals[(b·C +
 * c)·2 + {0, 1}] = Σ over the chunks of partial's pair (other blocks' writes) for the tile's
 * channels and every image; dγ_c, dβ_c (when not NULL) += Σ_b of the pair. GN_CL_PARTS threads per
 * channel, each summing chunks part, part + GN_CL_PARTS, ... (independent loads, in flight
 * together), then a shuffle tree over them: a fixed order. One thread per channel walking every
 * chunk in one block for the whole map, as before, waited on one L2 load after another: tens of
 * microseconds at SD's 64x64 and 32x32 levels, most of the kernel's time. */
#define GN_CL_PARTS (GN_CL_THREADS / GN_CL_TILE) /* 8 threads per channel of a tile */
__device__ __forceinline__ void gn_cl_tile_totals(const double *partial, int chunks, int64_t B, int64_t C,
                                                  int64_t c_tile, double *totals, float *dgamma, float *dbeta) {
    const int part = (int)threadIdx.x % GN_CL_PARTS;
    const int64_t c = c_tile + (int64_t)threadIdx.x / GN_CL_PARTS;
    const bool valid = c < C;
    double tu = 0.0, tv = 0.0;
    for (int64_t b = 0; b < B; b++) {
        double su = 0.0, sv = 0.0;
        if (valid)
            for (int k = part; k < chunks; k += GN_CL_PARTS) {
                su += __ldcg(&partial[(((int64_t)k * B + b) * C + c) * 2 + 0]);
                sv += __ldcg(&partial[(((int64_t)k * B + b) * C + c) * 2 + 1]);
            }
        su = cu_lanes_sum_d<GN_CL_PARTS>(su); /* within the channel's aligned lanes */
        sv = cu_lanes_sum_d<GN_CL_PARTS>(sv);
        if (valid && part == 0) {
            totals[(b * C + c) * 2 + 0] = su;
            totals[(b * C + c) * 2 + 1] = sv;
        }
        tu += su;
        tv += sv;
    }
    if (!valid || part) return;
    if (dgamma) dgamma[c] = (float)((double)dgamma[c] + tu);
    if (dbeta) dbeta[c] = (float)((double)dbeta[c] + tv);
}

/* The last tile's last block: per (image, group), from the channels' totals (other blocks' writes),
 * with stats (the GN_CL_STATS totals) out = (mean, rstd); else (the GN_CL_GRADS totals) out =
 * (Σ γ·Σ dz, Σ γ·Σ dz·x̂) / count, the means of dx̂ and dx̂·x̂. GN_CL_PARTS threads per group, each
 * taking channels part, part + GN_CL_PARTS, ... of it, then a shuffle tree: a fixed order, and at
 * SD's 80 channels per group ten loads per thread in flight rather than 160 in a row. */
__device__ __forceinline__ void gn_cl_group_totals(const double *totals, const float *gamma, int64_t n_groups,
                                                   int64_t C, int cpg, int64_t count, float eps, int stats,
                                                   float *out) {
    const int64_t G = C / cpg;
    const int part = (int)threadIdx.x % GN_CL_PARTS;
    const int64_t per_round = blockDim.x / GN_CL_PARTS;
    for (int64_t bg0 = 0; bg0 < n_groups; bg0 += per_round) { /* the whole block in each round: shuffles */
        const int64_t bg = bg0 + (int64_t)threadIdx.x / GN_CL_PARTS;
        double su = 0.0, sv = 0.0;
        if (bg < n_groups) {
            const int64_t b = bg / G, c0 = (bg - b * G) * cpg;
            for (int j = part; j < cpg; j += GN_CL_PARTS) {
                const double w = !stats && gamma ? (double)gamma[c0 + j] : 1.0;
                su += w * __ldcg(&totals[(b * C + c0 + j) * 2 + 0]);
                sv += w * __ldcg(&totals[(b * C + c0 + j) * 2 + 1]);
            }
        }
        su = cu_lanes_sum_d<GN_CL_PARTS>(su);
        sv = cu_lanes_sum_d<GN_CL_PARTS>(sv);
        if (bg >= n_groups || part) continue;
        if (stats) {
            gn_stats_from_sums(su, sv, count, eps, &out[bg * 2 + 0], &out[bg * 2 + 1]);
        } else {
            out[bg * 2 + 0] = (float)(sv / (double)count);
            out[bg * 2 + 1] = (float)(su / (double)count);
        }
    }
}

template <gn_cl_pass PASS>
__global__ void __launch_bounds__(GN_CL_THREADS) k_gn_cl_tiles(const gn_cl_args a) {
    CU_PDL_ENTRY();
    const __half *x = a.x;
    const float *gamma = a.gamma, *beta = a.beta, *dy = a.dy, *stats = a.stats, *coef = a.coef;
    const int64_t S = a.S, C = a.C, chunk_pixels = a.chunk_pixels;
    const int cpg = a.cpg, vec4 = a.vec4, silu = a.silu, accumulate = a.accumulate;
    double *partial = a.partial;
    float *dx = a.dx;
    __shared__ float xs[GN_CL_TILE][GN_CL_TILE + 1]; /* [pixel][channel], padded: lanes read a column */
    const int64_t chunk = blockIdx.x, c_tile = (int64_t)blockIdx.y * GN_CL_TILE, b = blockIdx.z, B = gridDim.z;
    const int64_t G = C / cpg;
    const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
    const int64_t p_lo = chunk * chunk_pixels, p_hi = p_lo + chunk_pixels < S ? p_lo + chunk_pixels : S;
    constexpr int PER_WARP = GN_CL_TILE / (GN_CL_THREADS / 32);
    constexpr int WARPS = GN_CL_THREADS / 32;
    double u[PER_WARP], v[PER_WARP]; /* this lane's sums per channel (GN_CL_STATS: Σ x, Σ x²; GRADS: Σ dz·x̂, Σ dz) */
#pragma unroll
    for (int j = 0; j < PER_WARP; j++) u[j] = v[j] = 0.0;
    /* this thread's channels c_tile + warp + WARPS·j: γ, β, (mean, rstd) and (APPLY) the means of dx̂
     * and dx̂·x̂ read once, not per pixel tile, so that a tile's global loads are dy (and dx) alone,
     * issued together before the tile's barrier: one load's latency per tile, not one per channel */
    float ga[PER_WARP], be[PER_WARP], mean[PER_WARP], rstd[PER_WARP], m_dxh[PER_WARP], m_dxh_xh[PER_WARP];
#pragma unroll
    for (int j = 0; j < PER_WARP; j++) {
        const int64_t c = c_tile + warp + j * WARPS;
        ga[j] = 1.0f, be[j] = 0.0f, mean[j] = rstd[j] = m_dxh[j] = m_dxh_xh[j] = 0.0f;
        if (PASS == GN_CL_STATS || c >= C) continue;
        const int64_t bg = b * G + c / cpg;
        if (gamma) ga[j] = gamma[c];
        if (beta) be[j] = beta[c];
        mean[j] = stats[bg * 2 + 0], rstd[j] = stats[bg * 2 + 1];
        if (PASS == GN_CL_APPLY) m_dxh[j] = coef[bg * 2 + 0], m_dxh_xh[j] = coef[bg * 2 + 1];
    }
    for (int64_t p0 = p_lo; p0 < p_hi; p0 += GN_CL_TILE) {
        const int rows = p_hi - p0 < GN_CL_TILE ? (int)(p_hi - p0) : GN_CL_TILE;
        __syncthreads(); /* the previous tile is read */
        if (vec4) { /* C % 4 == 0, x 8-byte aligned: 8 threads per pixel, 4 channels (8 bytes) each */
            const int pp = (int)threadIdx.x / 8, cc = (int)threadIdx.x % 8 * 4;
            const int64_t c = c_tile + cc;
            if (pp < rows && c < C) {
                const cu_vec16<float> f = cu_load4(x + (b * S + p0 + pp) * C + c);
#pragma unroll
                for (int k = 0; k < 4; k++) xs[pp][cc + k] = f.v[k];
            }
        } else {
            for (int i = (int)threadIdx.x; i < rows * GN_CL_TILE; i += GN_CL_THREADS) {
                const int pp = i / GN_CL_TILE, cc = i % GN_CL_TILE; /* consecutive threads: consecutive channels */
                const int64_t c = c_tile + cc;
                if (c < C) xs[pp][cc] = __half2float(x[(b * S + p0 + pp) * C + c]);
            }
        }
        const int64_t p = p0 + lane;
        float dyv[PER_WARP], old[PER_WARP]; /* dy and (APPLY, accumulating) dx of this lane's pixel */
#pragma unroll
        for (int j = 0; j < PER_WARP; j++) {
            const int64_t c = c_tile + warp + j * WARPS, at = (b * C + c) * S + p;
            dyv[j] = old[j] = 0.0f;
            if (PASS == GN_CL_STATS || p >= p_hi || c >= C) continue;
            dyv[j] = dy[at];
            if (PASS == GN_CL_APPLY && accumulate) old[j] = dx[at];
        }
        __syncthreads();
        if (p >= p_hi) continue;
#pragma unroll
        for (int j = 0; j < PER_WARP; j++) {
            const int cc = warp + j * WARPS;
            const int64_t c = c_tile + cc;
            if (c >= C) break;
            const float xv = xs[lane][cc];
            if constexpr (PASS == GN_CL_STATS) {
                u[j] += (double)xv;
                v[j] += (double)xv * (double)xv;
                continue;
            }
            float xh, dz;
            gn_point(xv, mean[j], rstd[j], ga[j], be[j], dyv[j], silu, &xh, &dz);
            if constexpr (PASS == GN_CL_GRADS) {
                u[j] += (double)dz * (double)xh;
                v[j] += (double)dz;
            } else {
                const float d = rstd[j] * (ga[j] * dz - m_dxh[j] - xh * m_dxh_xh[j]);
                dx[(b * C + c) * S + p] = accumulate ? old[j] + d : d;
            }
        }
    }
    if constexpr (PASS != GN_CL_APPLY) {
#pragma unroll
        for (int j = 0; j < PER_WARP; j++) { /* every lane takes part in the shuffles */
            const int64_t c = c_tile + warp + j * (GN_CL_THREADS / 32);
            const double su = cu_warp_sum_d(u[j]), sv = cu_warp_sum_d(v[j]);
            if (lane == 0 && c < C) {
                double *out = partial + ((chunk * B + b) * C + c) * 2;
                out[0] = su;
                out[1] = sv;
            }
        }
        /* the tile's last block (counted on done[1 + tile]): its channels' totals; the last of
         * those (counted on done[0]): the groups' */
        if (!cu_last_arrival(a.done + 1 + blockIdx.y, gridDim.x * gridDim.z)) return;
        const int first = PASS == GN_CL_STATS;
        gn_cl_tile_totals(partial, (int)gridDim.x, B, C, c_tile, a.totals, first ? nullptr : a.dgamma,
                          first ? nullptr : a.dbeta);
        if (!cu_last_arrival(a.done, gridDim.y)) return;
        if (a.out) gn_cl_group_totals(a.totals, gamma, B * G, C, cpg, cpg * S, a.eps, first, a.out);
    }
}

/* Short groups (gn_fused_ok: SD's 8x8 and 16x16 levels) when only dx is asked for (a gradient step's
 * γ and β are frozen), in one kernel instead of the three above, as k_gn_nhwc_fused does the
 * forward: one block per (image, group) makes the three passes (statistics; Σ γ·dz·x̂ and Σ γ·dz;
 * dx) over the group, re-reading x and dy from L1 and L2. Thread i takes values i, i + blockDim, ...
 * of the group in NCHW order (pixel fastest): dy and dx are read and written coalesced, x a pixel's
 * row apart (one 32-byte sector per lane, which the group's next channels read again from L1). The
 * sums are in double, per thread then over the block in a fixed order: deterministic, and equal to
 * the tiled path within rounding (other orders of the same sums). With the forward's statistics
 * (kept: [B·G, 2], (mean, rstd)) the first pass is skipped. */
#define GN_FUSED_BWD_BATCH 4 /* values per thread whose loads k_gn_cl_fused_backward issues together */
__global__ void __launch_bounds__(GN_FUSED_THREADS) k_gn_cl_fused_backward(const __half *x, const float *gamma,
                                                                           const float *beta, const float *dy,
                                                                           float *dx, int64_t S, int64_t C, int cpg,
                                                                           float eps, int silu, int accumulate,
                                                                           const float *kept) {
    CU_PDL_ENTRY();
    __shared__ double smem[32];
    __shared__ float coef[4]; /* mean, rstd, mean(dx̂), mean(dx̂·x̂) */
    const int64_t G = C / cpg, b = blockIdx.x / G, c0 = (blockIdx.x - b * G) * cpg;
    const __half *xg = x + b * S * C + c0; /* x[b, p, c0 + j] = xg[p·C + j] */
    const int64_t at0 = (b * C + c0) * S;  /* dy[b, c0 + j, p] = dy[at0 + j·S + p] */
    const uint32_t n = (uint32_t)(S * cpg), s32 = (uint32_t)S; /* 32-bit: a short group (gn_fused_ok) */
    if (kept) {
        if (threadIdx.x < 2) coef[threadIdx.x] = kept[(int64_t)blockIdx.x * 2 + threadIdx.x];
    } else {
        double s = 0.0, sq = 0.0;
#pragma unroll 4
        for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
            const uint32_t j = i / s32, p = i - j * s32;
            const double v = __half2float(xg[(int64_t)p * C + j]);
            s += v;
            sq += v * v;
        }
        s = cu_block_sum_d(s, smem);
        sq = cu_block_sum_d(sq, smem);
        if (threadIdx.x == 0) gn_stats_from_sums(s, sq, n, eps, &coef[0], &coef[1]);
    }
    __syncthreads();
    const float mean = coef[0], rstd = coef[1];
    /* GN_FUSED_BWD_BATCH of this thread's values per round, their loads (x, dy, γ, β and, when
     * accumulating, dx) issued together before any is used: one value at a time, each round waited
     * on its loads' latency, about twenty times per pass at SD's 16x16 level. The sums still take
     * the values in the thread's order, so the result is the same bit for bit. */
    constexpr int U = GN_FUSED_BWD_BATCH;
    const uint32_t stride = blockDim.x;
    auto load_round = [&](uint32_t i0, float (&xv)[U], float (&dyv)[U], float (&ga)[U], float (&be)[U]) {
#pragma unroll
        for (int k = 0; k < U; k++) {
            const uint32_t i = i0 + k * stride;
            xv[k] = dyv[k] = 0.0f, ga[k] = 1.0f, be[k] = 0.0f;
            if (i >= n) continue;
            const uint32_t j = i / s32, p = i - j * s32;
            xv[k] = __half2float(xg[(int64_t)p * C + j]);
            dyv[k] = dy[at0 + i];
            if (gamma) ga[k] = gamma[c0 + j];
            if (beta) be[k] = beta[c0 + j];
        }
    };
    double su = 0.0, sv = 0.0; /* Σ γ·dz·x̂, Σ γ·dz */
    for (uint32_t i0 = threadIdx.x; i0 < n; i0 += U * stride) {
        float xv[U], dyv[U], ga[U], be[U];
        load_round(i0, xv, dyv, ga, be);
#pragma unroll
        for (int k = 0; k < U; k++) {
            if (i0 + k * stride >= n) break;
            float xh, dz;
            gn_point(xv[k], mean, rstd, ga[k], be[k], dyv[k], silu, &xh, &dz);
            su += (double)ga[k] * ((double)dz * (double)xh);
            sv += (double)ga[k] * (double)dz;
        }
    }
    su = cu_block_sum_d(su, smem);
    sv = cu_block_sum_d(sv, smem);
    if (threadIdx.x == 0) {
        coef[2] = (float)(sv / (double)n);
        coef[3] = (float)(su / (double)n);
    }
    __syncthreads();
    const float mean_dxh = coef[2], mean_dxh_xh = coef[3];
    for (uint32_t i0 = threadIdx.x; i0 < n; i0 += U * stride) {
        float xv[U], dyv[U], ga[U], be[U], old[U];
        load_round(i0, xv, dyv, ga, be);
#pragma unroll
        for (int k = 0; k < U; k++) {
            const uint32_t i = i0 + k * stride;
            old[k] = accumulate && i < n ? dx[at0 + i] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < U; k++) {
            const uint32_t i = i0 + k * stride;
            if (i >= n) break;
            float xh, dz;
            gn_point(xv[k], mean, rstd, ga[k], be[k], dyv[k], silu, &xh, &dz);
            const float d = rstd * (ga[k] * dz - mean_dxh - xh * mean_dxh_xh);
            dx[at0 + i] = accumulate ? old[k] + d : d;
        }
    }
}

sd_status cu_f16_group_norm_backward_nhwc(const sd_f16 *x16, const float *gamma, const float *beta, const float *dy,
                                          float *dx, float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S,
                                          int groups, float eps, int silu, int accumulate, const float *stats) {
    if (groups <= 0 || C <= 0 || C % groups)
        return sd_fail(SD_ERR_SHAPE, "cuda group norm backward (channels-last): %lld channels, %d groups", (long long)C,
                       groups);
    const int64_t n_groups = B * groups, cpg = C / groups;
    if (n_groups <= 0 || S <= 0 || (!dx && !dgamma && !dbeta)) return SD_OK;
    if (!dgamma && !dbeta && gn_fused_ok(n_groups, cpg * S)) {
        CU_LAUNCH(k_gn_cl_fused_backward, (unsigned)n_groups, GN_FUSED_THREADS, 0, cu_cur()->stream)(
            cu_half(x16), gamma, beta, dy, dx, S, C, (int)cpg, eps, silu, accumulate, stats);
        LAUNCH_CHECK("group_norm_backward_nhwc (one kernel)");
        return SD_OK;
    }
    const int64_t tiles = (C + GN_CL_TILE - 1) / GN_CL_TILE;
    if (B > 65535 || tiles > 65535)
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda group norm backward (channels-last): a [%lld, %lld, %lld] map is too "
                       "large", (long long)B, (long long)S, (long long)C);
    /* pixels per chunk: about GN_CL_BLOCKS blocks in all, whole tiles */
    int64_t blocks_per_image_tile = (GN_CL_BLOCKS + B * tiles - 1) / (B * tiles);
    int64_t chunk_pixels = (S + blocks_per_image_tile - 1) / blocks_per_image_tile;
    chunk_pixels = (chunk_pixels + GN_CL_TILE - 1) / GN_CL_TILE * GN_CL_TILE;
    const int chunks = (int)((S + chunk_pixels - 1) / chunk_pixels);
    const size_t part_bytes = cu_align((size_t)chunks * B * C * 2 * sizeof(double));
    const size_t total_bytes = cu_align((size_t)B * C * 2 * sizeof(double));
    const size_t group_bytes = cu_align((size_t)n_groups * 2 * sizeof(float));
    char *ws = (char *)cu_workspace(part_bytes + total_bytes + 2 * group_bytes);
    if (!ws) return SD_ERR_OOM;
    double *partial = (double *)ws, *totals = (double *)(ws + part_bytes);
    float *coef = (float *)(ws + part_bytes + total_bytes + group_bytes);
    cudaStream_t st = cu_cur()->stream;
    const dim3 grid((unsigned)chunks, (unsigned)tiles, (unsigned)B);
    gn_cl_args a;
    memset(&a, 0, sizeof a);
    a.x = cu_half(x16), a.gamma = gamma, a.beta = beta, a.dy = dy;
    a.S = S, a.C = C, a.chunk_pixels = chunk_pixels;
    a.cpg = (int)cpg, a.vec4 = C % 4 == 0 && cu_aligned4v(a.x), a.silu = silu, a.accumulate = accumulate;
    a.eps = eps, a.partial = partial, a.totals = totals, a.done = cu_cur()->grid_done;
    if (!stats) { /* the forward kept none: computed here, into the workspace */
        float *computed = (float *)(ws + part_bytes + total_bytes);
        a.out = computed;
        CU_LAUNCH(k_gn_cl_tiles<GN_CL_STATS>, grid, GN_CL_THREADS, 0, st)(a);
        LAUNCH_CHECK("group_norm_backward_nhwc statistics");
        stats = computed;
    }
    a.stats = stats, a.out = dx ? coef : nullptr, a.dgamma = dgamma, a.dbeta = dbeta;
    CU_LAUNCH(k_gn_cl_tiles<GN_CL_GRADS>, grid, GN_CL_THREADS, 0, st)(a);
    LAUNCH_CHECK("group_norm_backward_nhwc sums");
    if (!dx) return SD_OK;
    a.coef = coef, a.out = nullptr, a.dgamma = a.dbeta = nullptr, a.partial = nullptr, a.dx = dx;
    CU_LAUNCH(k_gn_cl_tiles<GN_CL_APPLY>, grid, GN_CL_THREADS, 0, st)(a);
    LAUNCH_CHECK("group_norm_backward_nhwc dx");
    return SD_OK;
}
