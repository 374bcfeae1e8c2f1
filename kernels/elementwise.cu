/* elementwise.cu: the memory-bound ops of the table, forward and backward, the two reductions
 * (mse, all_finite), the bias-gradient reductions and the Adam step.
 *
 * Every kernel computes what src/backend/cpu/cpu_ops.c computes, with the same float formulas.
 * Where the CPU result is a single rounding of a short expression (axpby, the timestep
 * embedding), the kernel forbids FMA contraction (__fmul_rn / __fadd_rn) or evaluates in double
 * and rounds once, so exact mode agrees to the last bit or one ulp. Reductions accumulate in
 * double (H100 double throughput is half of float, and these kernels are bandwidth-bound) in a
 * fixed order, so results are deterministic.
 *
 * The ops of fast mode's fp16 activation storage (sd_f16_ops: binary, channel bias, GEGLU and the
 * layout ops) are the same kernels templated over the storage type (float or __half): fp32
 * arithmetic, a half output rounded once; plus the two conversions. */
#include "cuda_common.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define EW_THREADS 256

/* ------------------------------------------------------------------------------------------------
 * Forward elementwise
 * --------------------------------------------------------------------------------------------- */

__global__ void k_unary(int op, const float *x, float *y, int64_t n, float alpha) {
    CU_PDL_ENTRY();
    /* x, y: [n] (y may alias x: each element is read before it is written by the same thread; so
     * no __restrict__ on x, which would promise the compiler that stores to y never change x) */
    GRID_STRIDE(i, n) {
        const float v = x[i];
        float r;
        switch (op) {
        case SD_UNARY_SILU: r = cu_silu(v); break;
        case SD_UNARY_GELU: r = cu_gelu(v); break;
        case SD_UNARY_QUICK_GELU: r = v / (1.0f + expf(-1.702f * v)); break;
        default: r = v >= 0.0f ? v : alpha * v; break; /* SD_UNARY_LEAKY_RELU */
        }
        y[i] = r;
    }
}

sd_status cu_unary(sd_unary_op op, const float *x, float *y, int64_t n, float alpha) {
    if (op != SD_UNARY_SILU && op != SD_UNARY_GELU && op != SD_UNARY_QUICK_GELU && op != SD_UNARY_LEAKY_RELU)
        return sd_fail(SD_ERR_INTERNAL, "cuda unary: unknown op %d", (int)op);
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_unary, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)((int)op, x, y, n, alpha);
    LAUNCH_CHECK("unary");
    return SD_OK;
}

__device__ __forceinline__ float binary_value(int op, float u, float w) {
    return op == SD_BINARY_ADD ? u + w : (op == SD_BINARY_SUB ? u - w : u * w);
}

template <typename T> __global__ void k_binary(int op, const T *a, const T *b, T *y, int64_t n, int vec) {
    CU_PDL_ENTRY();
    /* a, b, y: [n]; y may alias a or b (each piece is read before it is written, by one thread).
     * vec: all three 16-byte aligned, so the first n - n mod V values go 16 bytes at a time */
    typedef cu_vec16<T> V;
    const int64_t n_vec = vec ? n / V::n : 0;
    GRID_STRIDE(i, n_vec) {
        V u, w, out;
        u.load(a + i * V::n);
        w.load(b + i * V::n);
#pragma unroll
        for (int k = 0; k < V::n; k++) cu_store(&out.v[k], binary_value(op, cu_f32(u.v[k]), cu_f32(w.v[k])));
        out.store(y + i * V::n);
    }
    GRID_STRIDE(j, n - n_vec * V::n) {
        const int64_t i = n_vec * V::n + j;
        cu_store(&y[i], binary_value(op, cu_f32(a[i]), cu_f32(b[i])));
    }
}

template <typename T> static sd_status binary(sd_binary_op op, const T *a, const T *b, T *y, int64_t n) {
    if (op != SD_BINARY_ADD && op != SD_BINARY_SUB && op != SD_BINARY_MUL)
        return sd_fail(SD_ERR_INTERNAL, "cuda binary: unknown op %d", (int)op);
    if (n <= 0) return SD_OK;
    const int vec = cu_aligned16(a) && cu_aligned16(b) && cu_aligned16(y);
    CU_LAUNCH(k_binary<T>, cu_blocks(vec ? n / cu_vec16<T>::n + 1 : n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(
        (int)op, a, b, y, n, vec);
    LAUNCH_CHECK("binary");
    return SD_OK;
}

sd_status cu_binary(sd_binary_op op, const float *a, const float *b, float *y, int64_t n) {
    return binary(op, a, b, y, n);
}

sd_status cu_f16_binary(sd_binary_op op, const sd_f16 *a, const sd_f16 *b, sd_f16 *y, int64_t n) {
    return binary(op, cu_half(a), cu_half(b), cu_half(y), n);
}

/* Two products and a sum, each rounded once as the CPU rounds them (no contraction to an FMA). */
__device__ __forceinline__ float axpby_rn(float alpha, float x, float beta, float z) {
    return __fadd_rn(__fmul_rn(alpha, x), __fmul_rn(beta, z));
}

__global__ void k_axpby(float alpha, const float *x, float beta, const float *z, float *y, int64_t n) {
    CU_PDL_ENTRY();
    /* x, z, y: [n] */
    GRID_STRIDE(i, n) y[i] = axpby_rn(alpha, x[i], beta, z[i]);
}

sd_status cu_axpby(float alpha, const float *x, float beta, const float *z, float *y, int64_t n) {
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_axpby, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(alpha, x, beta, z, y, n);
    LAUNCH_CHECK("axpby");
    return SD_OK;
}

__global__ void k_axpby_dev(const float *coef, const float *x, const float *z, float *y, int64_t n) {
    CU_PDL_ENTRY();
    /* coef: [2] = (alpha, beta), read when the kernel runs (a replayed graph sees new values) */
    const float alpha = coef[0], beta = coef[1];
    GRID_STRIDE(i, n) y[i] = axpby_rn(alpha, x[i], beta, z[i]);
}

sd_status cu_axpby_dev(const float *coef, const float *x, const float *z, float *y, int64_t n) {
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_axpby_dev, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(coef, x, z, y, n);
    LAUNCH_CHECK("axpby_dev");
    return SD_OK;
}

__global__ void k_clamp(const float *x, float *y, float lo, float hi, int64_t n) {
    CU_PDL_ENTRY();
    GRID_STRIDE(i, n) {
        const float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}

sd_status cu_clamp(const float *x, float *y, float lo, float hi, int64_t n) {
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_clamp, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(x, y, lo, hi, n);
    LAUNCH_CHECK("clamp");
    return SD_OK;
}

/* x, y: [B·C rows, S]; v: [B·C] (F32 in both storages) */
template <typename T>
static sd_status add_channel_bias(const T *x, const float *v, T *y, int64_t B, int64_t C, int64_t S) {
    if (B * C * S <= 0) return SD_OK;
    CUDA_CHECK(cu_nchw_sum<T>(x, (const float *)NULL, v, (const T *)NULL, y, C, S, B * C, cu_cur()->stream));
    LAUNCH_CHECK("add_channel_bias");
    return SD_OK;
}

sd_status cu_add_channel_bias(const float *x, const float *v, float *y, int64_t B, int64_t C, int64_t S) {
    return add_channel_bias(x, v, y, B, C, S);
}

sd_status cu_f16_add_channel_bias(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C, int64_t S) {
    return add_channel_bias(cu_half(x), v, cu_half(y), B, C, S);
}

template <typename T> __global__ void k_geglu(const T *x, T *y, int64_t M, int64_t N) {
    CU_PDL_ENTRY();
    /* x: [M, 2N] (hidden | gate), y: [M, N] */
    CU_ROWS_COLS(m, n, M, N) {
        const float hidden = cu_f32(x[m * 2 * N + n]), gate = cu_f32(x[m * 2 * N + N + n]);
        cu_store(&y[m * N + n], hidden * cu_gelu(gate));
    }
}

/* The same, 16 bytes per load: N a multiple of the piece, x and y 16-byte aligned, at most 2^31 - 1
 * pieces of y (one thread per element of a 2-byte type keeps too few bytes in flight) */
template <typename T> __global__ void k_geglu_vec(const T *x, T *y, uint32_t n_vec, uint32_t N) {
    CU_PDL_ENTRY();
    typedef cu_vec16<T> V;
    const uint32_t lanes = N / V::n;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n_vec; i += gridDim.x * blockDim.x) {
        const uint32_t m = i / lanes, n0 = (i - m * lanes) * V::n;
        V hidden, gate, out;
        hidden.load(x + (size_t)m * 2 * N + n0);
        gate.load(x + (size_t)m * 2 * N + N + n0);
#pragma unroll
        for (int k = 0; k < V::n; k++) cu_store(&out.v[k], cu_f32(hidden.v[k]) * cu_gelu(cu_f32(gate.v[k])));
        out.store(y + (size_t)i * V::n);
    }
}

template <typename T> static sd_status geglu(const T *x, T *y, int64_t M, int64_t N) {
    if (M * N <= 0) return SD_OK;
    const int64_t n_vec = M * N / cu_vec16<T>::n;
    if (N % cu_vec16<T>::n == 0 && cu_aligned16(x) && cu_aligned16(y) && n_vec <= (int64_t)INT32_MAX) {
        CU_LAUNCH(k_geglu_vec<T>, cu_blocks(n_vec, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(x, y, (uint32_t)n_vec,
                                                                                               (uint32_t)N);
    } else {
        const int threads = cu_row_threads(N);
        CU_LAUNCH(k_geglu<T>, cu_rows_grid(M, N, threads), threads, 0, cu_cur()->stream)(x, y, M, N);
    }
    LAUNCH_CHECK("geglu");
    return SD_OK;
}

sd_status cu_geglu(const float *x, float *y, int64_t M, int64_t N) { return geglu(x, y, M, N); }

sd_status cu_f16_geglu(const sd_f16 *x, sd_f16 *y, int64_t M, int64_t N) { return geglu(cu_half(x), cu_half(y), M, N); }

template <typename T>
static sd_status concat_channels(const T *a, const T *c, T *y, int64_t B, int64_t Ca, int64_t Cb, int64_t S) {
    /* y[b] = (a[b]: Ca·S values, c[b]: Cb·S values): two strided 2-d copies, one row per batch */
    cudaStream_t st = cu_cur()->stream;
    const size_t row_y = (size_t)((Ca + Cb) * S) * sizeof(T);
    if (B <= 0) return SD_OK;
    if (Ca * S > 0)
        CUDA_CHECK(cudaMemcpy2DAsync(y, row_y, a, (size_t)(Ca * S) * sizeof(T), (size_t)(Ca * S) * sizeof(T),
                                     (size_t)B, cudaMemcpyDeviceToDevice, st));
    if (Cb * S > 0)
        CUDA_CHECK(cudaMemcpy2DAsync(y + Ca * S, row_y, c, (size_t)(Cb * S) * sizeof(T), (size_t)(Cb * S) * sizeof(T),
                                     (size_t)B, cudaMemcpyDeviceToDevice, st));
    return SD_OK;
}

sd_status cu_concat_channels(const float *a, const float *c, float *y, int64_t B, int64_t Ca,
                             int64_t Cb, int64_t S) {
    return concat_channels(a, c, y, B, Ca, Cb, S);
}

sd_status cu_f16_concat_channels(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca, int64_t Cb,
                                 int64_t S) {
    return concat_channels(cu_half(a), cu_half(c), cu_half(y), B, Ca, Cb, S);
}

template <typename T>
__global__ void k_upsample_nearest(const T *x, T *y, int64_t N, int64_t H, int64_t W,
                                   int64_t Ho, int64_t Wo, float sh, float sw) {
    CU_PDL_ENTRY();
    /* x: [N, H, W] -> y: [N, Ho, Wo]; src = min(floor(dst · (in/out)), in - 1), ratio in float.
     * One output row (n, oy) per grid row. */
    CU_ROWS_COLS(row, ox, N * Ho, Wo) {
        const int64_t n = row / Ho, oy = row - n * Ho;
        int64_t iy = (int64_t)floorf(__fmul_rn((float)oy, sh));
        int64_t ix = (int64_t)floorf(__fmul_rn((float)ox, sw));
        if (iy > H - 1) iy = H - 1;
        if (ix > W - 1) ix = W - 1;
        y[row * Wo + ox] = x[(n * H + iy) * W + ix];
    }
}

template <typename T>
static sd_status upsample_nearest(const T *x, T *y, int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
    const int64_t n = N * Ho * Wo;
    if (n <= 0) return SD_OK;
    const float sh = (float)H / (float)Ho, sw = (float)W / (float)Wo; /* as the CPU computes them */
    const int threads = cu_row_threads(Wo);
    CU_LAUNCH(k_upsample_nearest<T>, cu_rows_grid(N * Ho, Wo, threads), threads, 0, cu_cur()->stream)(x, y, N, H, W, Ho,
                                                                                                       Wo, sh, sw);
    LAUNCH_CHECK("upsample_nearest");
    return SD_OK;
}

sd_status cu_upsample_nearest(const float *x, float *y, int64_t N, int64_t H, int64_t W, int64_t Ho,
                              int64_t Wo) {
    return upsample_nearest(x, y, N, H, W, Ho, Wo);
}

sd_status cu_f16_upsample_nearest(const sd_f16 *x, sd_f16 *y, int64_t N, int64_t H, int64_t W, int64_t Ho,
                                  int64_t Wo) {
    return upsample_nearest(cu_half(x), cu_half(y), N, H, W, Ho, Wo);
}

#define TR_TILE 32

/* A value moved from Tin to Tout storage: as it is for one type (bit-exact), else through fp32
 * (float -> half rounds once to nearest even; half -> float is exact). */
template <typename Tin, typename Tout> __device__ __forceinline__ void tr_store(Tout *p, Tin v) { cu_store(p, cu_f32(v)); }
template <> __device__ __forceinline__ void tr_store<float, float>(float *p, float v) { *p = v; }
template <> __device__ __forceinline__ void tr_store<__half, __half>(__half *p, __half v) { *p = v; }

/* What a widening to F32 adds on the way (to_f32_nchw): v[b, c] for output row c of batch row b,
 * and a residual of the output's shape; either NULL. Stores to other types take none. */
struct tr_epilogue {
    const float *v, *r;
};
template <typename Tin, typename Tout>
__device__ __forceinline__ void tr_store_ep(Tout *p, Tin v, const tr_epilogue &, int64_t, int64_t) {
    tr_store(p, v);
}
template <typename Tin>
__device__ __forceinline__ void tr_store_ep(float *p, Tin v, const tr_epilogue &ep, int64_t vi, int64_t ri) {
    float s = cu_f32(v);
    if (ep.v) s += ep.v[vi];
    if (ep.r) s += ep.r[ri];
    *p = s;
}

template <typename T, typename Tout = T>
__global__ void k_transpose(const T *x, Tout *y, int64_t R, int64_t C, int64_t tiles_c, tr_epilogue ep) {
    CU_PDL_ENTRY();
    /* x: [B, R, C] -> y: [B, C, R]; blockIdx.y = b; blockIdx.x = tile (row-tile · tiles_c + col-tile);
     * 32x8 threads move a 32x32 tile through shared memory (+1 column: no bank conflicts) */
    __shared__ T tile[TR_TILE][TR_TILE + 1];
    const int64_t b = blockIdx.y;
    const int64_t r0 = ((int64_t)blockIdx.x / tiles_c) * TR_TILE, c0 = ((int64_t)blockIdx.x % tiles_c) * TR_TILE;
    const T *xb = x + b * R * C;
    Tout *yb = y + b * R * C;
    for (int j = threadIdx.y; j < TR_TILE; j += blockDim.y) {
        const int64_t r = r0 + j, c = c0 + threadIdx.x;
        if (r < R && c < C) tile[j][threadIdx.x] = xb[r * C + c];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < TR_TILE; j += blockDim.y) {
        const int64_t c = c0 + j, r = r0 + threadIdx.x;
        if (r < R && c < C) tr_store_ep(&yb[c * R + r], tile[threadIdx.x][j], ep, b * C + c, b * R * C + c * R + r);
    }
}

template <typename T, typename Tout = T>
static sd_status transpose(const T *x, Tout *y, int64_t B, int64_t R, int64_t C, tr_epilogue ep = {nullptr, nullptr}) {
    if (B <= 0 || R <= 0 || C <= 0) return SD_OK;
    if (B > 65535) return sd_fail(SD_ERR_UNSUPPORTED, "cuda transpose: batch %lld over 65535", (long long)B);
    const int64_t tiles_r = (R + TR_TILE - 1) / TR_TILE, tiles_c = (C + TR_TILE - 1) / TR_TILE;
    dim3 grid((unsigned)(tiles_r * tiles_c), (unsigned)B), block(TR_TILE, 8);
    CU_LAUNCH((k_transpose<T, Tout>), grid, block, 0, cu_cur()->stream)(x, y, R, C, tiles_c, ep);
    LAUNCH_CHECK("transpose");
    return SD_OK;
}

sd_status cu_transpose(const float *x, float *y, int64_t B, int64_t R, int64_t C) { return transpose(x, y, B, R, C); }

sd_status cu_f16_transpose(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t R, int64_t C) {
    return transpose(cu_half(x), cu_half(y), B, R, C);
}

/* Feature maps between F32 NCHW and fp16 channels-last in one pass: the transpose rounding on the
 * way out, widening on the way back. */
sd_status cu_f16_to_f16_nhwc(const float *x, sd_f16 *y, int64_t B, int64_t C, int64_t S) {
    return transpose(x, cu_half(y), B, C, S);
}

sd_status cu_f16_to_f32_nchw(const sd_f16 *x, const float *v, const float *r, float *y, int64_t B, int64_t C,
                             int64_t S) {
    return transpose(cu_half(x), y, B, S, C, tr_epilogue{v, r});
}

/* ---- channels-last (NHWC) forms of the feature-map ops (sd_f16_ops.*_nhwc): a row is one pixel's
 * C channels; one grid row per pixel row (its constants computed once), threads along the
 * channels, coalesced ---- */

/* y[b, s, c] = x[b, s, c] + v[b, c] (k_channels_last_sum, cuda_common.cuh) */
sd_status cu_f16_add_channel_bias_nhwc(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C, int64_t S) {
    if (B * C * S <= 0) return SD_OK;
    CUDA_CHECK(cu_channels_last_sum<__half>(cu_half(x), (const float *)NULL, v, (const __half *)NULL, cu_half(y), B * S, S,
                                            C, cu_cur()->stream));
    LAUNCH_CHECK("add_channel_bias_nhwc");
    return SD_OK;
}

/* The pure moves run on units U of 16 bytes (float4: bits moved, no arithmetic) where every channel count and pointer allows (the
 * UNet's 320 to 2560 channels), else on the halves themselves. */
template <typename U>
__global__ void k_concat_nhwc(const U *a, const U *c, U *y, int64_t rows, int64_t Ca, int64_t Cb) {
    CU_PDL_ENTRY();
    /* y[r] = (a[r, :Ca], c[r, :Cb]), counts in units */
    const int64_t Cy = Ca + Cb;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const U *ar = a + r * Ca, *cr = c + r * Cb;
        U *yr = y + r * Cy;
        GRID_STRIDE(k, Cy)
            yr[k] = k < Ca ? ar[k] : cr[k - Ca];
    }
}

template <typename U>
__global__ void k_upsample_nhwc(const U *x, U *y, int64_t B, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t C,
                                float sh, float sw) {
    CU_PDL_ENTRY();
    /* y[b, oy, ox, :] = x[b, iy, ix, :] with upsample_nearest's source pixel; C in units */
    const int64_t rows = B * Ho * Wo;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const int64_t ox = r % Wo, t = r / Wo, oy = t % Ho, b = t / Ho;
        int64_t iy = (int64_t)floorf(__fmul_rn((float)oy, sh));
        int64_t ix = (int64_t)floorf(__fmul_rn((float)ox, sw));
        if (iy > H - 1) iy = H - 1;
        if (ix > W - 1) ix = W - 1;
        const U *xr = x + ((b * H + iy) * W + ix) * C;
        U *yr = y + r * C;
        GRID_STRIDE(k, C)
            yr[k] = xr[k];
    }
}

/* 8 halves per 16-byte unit when the counts and pointers allow */
static bool units16(int64_t c0, int64_t c1, const void *p0, const void *p1, const void *p2) {
    return c0 % 8 == 0 && c1 % 8 == 0 && ((uintptr_t)p0 & 15) == 0 && ((uintptr_t)p1 & 15) == 0 &&
           ((uintptr_t)p2 & 15) == 0;
}

sd_status cu_f16_concat_channels_nhwc(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca, int64_t Cb,
                                      int64_t S) {
    const int64_t rows = B * S;
    if (rows <= 0 || Ca + Cb <= 0) return SD_OK;
    cudaStream_t st = cu_cur()->stream;
    if (units16(Ca, Cb, a, c, y)) {
        const int threads = cu_row_threads((Ca + Cb) / 8);
        CU_LAUNCH(k_concat_nhwc<float4>, cu_rows_grid(rows, (Ca + Cb) / 8, threads), threads, 0, st)(
            (const float4 *)a, (const float4 *)c, (float4 *)y, rows, Ca / 8, Cb / 8);
    } else {
        const int threads = cu_row_threads(Ca + Cb);
        CU_LAUNCH(k_concat_nhwc<uint16_t>, cu_rows_grid(rows, Ca + Cb, threads), threads, 0, st)(
            (const uint16_t *)a, (const uint16_t *)c, (uint16_t *)y, rows, Ca, Cb);
    }
    LAUNCH_CHECK("concat_channels_nhwc");
    return SD_OK;
}

sd_status cu_f16_upsample_nearest_nhwc(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t H, int64_t W, int64_t C,
                                       int64_t Ho, int64_t Wo) {
    const int64_t rows = B * Ho * Wo;
    if (rows <= 0 || C <= 0) return SD_OK;
    const float sh = (float)H / (float)Ho, sw = (float)W / (float)Wo; /* as the CPU computes them */
    cudaStream_t st = cu_cur()->stream;
    if (units16(C, 0, x, y, y)) {
        const int threads = cu_row_threads(C / 8);
        CU_LAUNCH(k_upsample_nhwc<float4>, cu_rows_grid(rows, C / 8, threads), threads, 0, st)(
            (const float4 *)x, (float4 *)y, B, H, W, Ho, Wo, C / 8, sh, sw);
    } else {
        const int threads = cu_row_threads(C);
        CU_LAUNCH(k_upsample_nhwc<uint16_t>, cu_rows_grid(rows, C, threads), threads, 0, st)(
            (const uint16_t *)x, (uint16_t *)y, B, H, W, Ho, Wo, C, sh, sw);
    }
    LAUNCH_CHECK("upsample_nearest_nhwc");
    return SD_OK;
}

/* ---- fp16 storage: conversions and copy ---- */

/* fp16 -> F32: 4 values per thread where aligned (cu_narrowing_vec), as k_narrow_from_f32 */
__global__ void k_f16_to_f32(const __half *x, float *y, int64_t n, int vec) {
    CU_PDL_ENTRY();
    cu_widen_f16(x, y, n, vec);
}

sd_status cu_f16_from_f32(const float *x, sd_f16 *y, int64_t n) {
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_narrow_from_f32<__half>, cu_blocks(n / 4 + 1, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(
        x, cu_half(y), n, cu_narrowing_vec(x, y));
    LAUNCH_CHECK("to_f16");
    return SD_OK;
}

sd_status cu_f16_to_f32(const sd_f16 *x, float *y, int64_t n) {
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_f16_to_f32, cu_blocks(n / 4 + 1, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(cu_half(x), y, n,
                                                                                            cu_narrowing_vec(y, x));
    LAUNCH_CHECK("to_f32");
    return SD_OK;
}

sd_status cu_f16_copy(sd_f16 *dst, const sd_f16 *src, int64_t n) {
    if (n <= 0 || dst == src) return SD_OK;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n * sizeof(sd_f16), cudaMemcpyDeviceToDevice, cu_cur()->stream));
    return SD_OK;
}

__global__ void k_timestep_embedding(const float *t, float *y, int64_t B, int dim, int half,
                                     int flip, float shift) {
    CU_PDL_ENTRY();
    /* t: [B] -> y: [B, dim]. The CPU mirrors diffusers' float32 steps: exponent = (-ln(1e4)·k) /
     * (half - shift) in float, f = expf(exponent), arg = t·f in float, then sinf / cosf. Here expf,
     * sinf and cosf are evaluated in double and rounded once (the correctly rounded float glibc
     * returns): the argument reaches ~1000 rad, where an ulp of difference in f would move sin by
     * 6e-5. */
    GRID_STRIDE(i, B * half) {
        const int64_t b = i / half;
        const int k = (int)(i - b * half);
        const float neg_log_period = -9.210340371976184f;
        const float exponent = __fdiv_rn(__fmul_rn(neg_log_period, (float)k), __fsub_rn((float)half, shift));
        const float freq = (float)exp((double)exponent);
        const float arg = __fmul_rn(t[b], freq);
        const float s = (float)sin((double)arg), c = (float)cos((double)arg);
        float *yr = y + b * dim;
        yr[flip ? half + k : k] = s;
        yr[flip ? k : half + k] = c;
        if ((dim & 1) && k == 0) yr[dim - 1] = 0.0f; /* diffusers zero-pads odd sizes */
    }
}

sd_status cu_timestep_embedding(const float *t, float *y, int64_t B, int dim, int flip_sin_to_cos,
                                float shift) {
    const int half = dim / 2;
    if (B <= 0 || dim <= 0) return SD_OK;
    if (half == 0) return cu_fill(y, 0.0f, B * dim);
    CU_LAUNCH(k_timestep_embedding, cu_blocks(B * half, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(
        t, y, B, dim, half, flip_sin_to_cos, shift);
    LAUNCH_CHECK("timestep_embedding");
    return SD_OK;
}

__global__ void k_embedding(const int32_t *ids, const float *table, float *y, int64_t count, int64_t C) {
    CU_PDL_ENTRY();
    /* ids: [count] (validated by the caller), table: [V, C] -> y: [count, C] */
    GRID_STRIDE(i, count * C) {
        const int64_t n = i / C, c = i - n * C;
        y[i] = table[(int64_t)ids[n] * C + c];
    }
}

sd_status cu_embedding(const int32_t *ids, const float *table, float *y, int64_t count, int64_t C) {
    if (count * C <= 0) return SD_OK;
    CU_LAUNCH(k_embedding, cu_blocks(count * C, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(ids, table, y, count, C);
    LAUNCH_CHECK("embedding");
    return SD_OK;
}

sd_status cu_copy(float *dst, const float *src, int64_t n) {
    if (n <= 0 || dst == src) return SD_OK;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, cu_cur()->stream));
    return SD_OK;
}

__global__ void k_fill(float *dst, float value, int64_t n) {
    CU_PDL_ENTRY();
    GRID_STRIDE(i, n) dst[i] = value;
}

sd_status cu_fill(float *dst, float value, int64_t n) {
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_fill, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(dst, value, n);
    LAUNCH_CHECK("fill");
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Reductions: two deterministic phases (per-block partials in a fixed order, then one block)
 * --------------------------------------------------------------------------------------------- */

#define RED_BLOCKS 256 /* partials; 256 doubles fit the state's 4 KiB scratch with room to spare */
#define SCRATCH_FLAG_OFFSET 3072

__global__ void k_mse_partial(const float *a, const float *b, int64_t n, double *partial) {
    CU_PDL_ENTRY();
    __shared__ double smem[32];
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        const double d = (double)a[i] - (double)b[i];
        acc += d * d;
    }
    acc = cu_block_sum_d(acc, smem);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void k_mse_final(const double *partial, int nparts, int64_t n, float *out) {
    CU_PDL_ENTRY();
    __shared__ double smem[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += partial[i];
    acc = cu_block_sum_d(acc, smem);
    if (threadIdx.x == 0) out[0] = (float)(acc / (double)(n > 0 ? n : 1));
}

sd_status cu_mse(const float *a, const float *b, float *out, int64_t n) {
    cu_state *s = cu_cur();
    double *partial = (double *)s->scratch;
    unsigned blocks = cu_blocks(n, EW_THREADS);
    if (blocks > RED_BLOCKS) blocks = RED_BLOCKS;
    CU_LAUNCH(k_mse_partial, blocks, EW_THREADS, 0, s->stream)(a, b, n, partial);
    LAUNCH_CHECK("mse partial");
    CU_LAUNCH(k_mse_final, 1, EW_THREADS, 0, s->stream)(partial, (int)blocks, n, out);
    LAUNCH_CHECK("mse final");
    return SD_OK;
}

__global__ void k_all_finite(const float *x, int64_t n, int *flag) {
    CU_PDL_ENTRY();
    /* flag starts at 1; any thread that sees a NaN or an infinity writes 0 (same value: no race) */
    int ok = 1;
    GRID_STRIDE(i, n) ok &= isfinite(x[i]) ? 1 : 0;
    if (!__all_sync(0xffffffffu, ok) && (threadIdx.x & 31) == 0) *flag = 0;
}

sd_status cu_all_finite(const float *const *xs, const int64_t *ns, int count, int *host_ok) {
    cu_state *s = cu_cur();
    if (s->capturing)
        return sd_fail(SD_ERR_UNSUPPORTED, "all_finite synchronises with the host: not allowed inside a CUDA graph capture");
    if (count < 1 || count > SD_ALL_FINITE_MAX) return sd_fail(SD_ERR_INTERNAL, "all_finite: %d tensors", count);
    /* one flag per tensor after the partial sums (SD_ALL_FINITE_MAX ints fit the 1 KiB left) */
    int *flags = (int *)((char *)s->scratch + SCRATCH_FLAG_OFFSET);
    int ones[SD_ALL_FINITE_MAX];
    for (int k = 0; k < count; k++) ones[k] = 1;
    CUDA_CHECK(cudaMemcpyAsync(flags, ones, count * sizeof *ones, cudaMemcpyHostToDevice, s->stream));
    for (int k = 0; k < count; k++) {
        if (ns[k] <= 0) continue;
        CU_LAUNCH(k_all_finite, cu_blocks(ns[k], EW_THREADS), EW_THREADS, 0, s->stream)(xs[k], ns[k], flags + k);
        LAUNCH_CHECK("all_finite");
    }
    CUDA_CHECK(cudaMemcpyAsync(host_ok, flags, count * sizeof *host_ok, cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Backward elementwise (all accumulate: dx += ...)
 * --------------------------------------------------------------------------------------------- */

__global__ void k_unary_backward(int op, const float *x, const float *dy, float *dx, int64_t n, float alpha) {
    CU_PDL_ENTRY();
    GRID_STRIDE(i, n) {
        const float v = x[i];
        float d;
        switch (op) {
        case SD_UNARY_SILU: d = cu_silu_grad(v); break;
        case SD_UNARY_GELU: d = cu_gelu_grad(v); break;
        case SD_UNARY_QUICK_GELU: {
            const float s = cu_sigmoid(1.702f * v);
            d = s + 1.702f * v * s * (1.0f - s);
            break;
        }
        default: d = v >= 0.0f ? 1.0f : alpha; break; /* leaky ReLU: the forward's identity branch includes 0 */
        }
        dx[i] += dy[i] * d;
    }
}

sd_status cu_unary_backward(sd_unary_op op, const float *x, const float *dy, float *dx, int64_t n,
                            float alpha) {
    if (op != SD_UNARY_SILU && op != SD_UNARY_GELU && op != SD_UNARY_QUICK_GELU && op != SD_UNARY_LEAKY_RELU)
        return sd_fail(SD_ERR_INTERNAL, "cuda unary_backward: unknown op %d", (int)op);
    if (n <= 0 || !dx) return SD_OK; /* a NULL gradient output is not computed (backend.h) */
    CU_LAUNCH(k_unary_backward, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)((int)op, x, dy, dx, n, alpha);
    LAUNCH_CHECK("unary_backward");
    return SD_OK;
}

/* x, dx: [M, 2N]; dy: [M, N]; y = h · gelu(g). X: F32, or fp16 (the values a gradient step storing
 * fp16 saved: exact in F32, so the same arithmetic gives the widened copy's gradient bit for bit).
 * D: dx F32, or bf16 (sd_f16_ops.geglu_backward_bf16: written once, rounded to nearest even as
 * to_bf16 would round the F32 result; never accumulating). */
template <typename D> __device__ __forceinline__ void geglu_put(D *p, float v, int accumulate) {
    if constexpr (sizeof(D) == 4) *p = accumulate ? *p + v : v;
    else cu_store(p, v);
}

template <typename X, typename D>
__global__ void k_geglu_backward(const X *x, const float *dy, D *dx, int64_t M, int64_t N, int accumulate) {
    CU_PDL_ENTRY();
    CU_ROWS_COLS(m, n, M, N) {
        const int64_t ih = m * 2 * N + n, ig = ih + N;
        const float h = cu_f32(x[ih]), g = cu_f32(x[ig]), d = dy[m * N + n];
        const float dh = d * cu_gelu(g), dg = d * h * cu_gelu_grad(g);
        geglu_put(&dx[ih], dh, accumulate);
        geglu_put(&dx[ig], dg, accumulate);
    }
}

/* The same, 4 values per load: N a multiple of 4, dy and dx 16-byte aligned (8-byte for bf16), x 4
 * values aligned, at most 2^31 - 1 pieces of dy (the 32-bit grid-stride index never wraps) */
template <typename X, typename D>
__global__ void k_geglu_backward_vec(const X *x, const float *dy, D *dx, uint32_t n_vec, uint32_t N,
                                     int accumulate) {
    CU_PDL_ENTRY();
    const uint32_t lanes = N / 4;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n_vec; i += gridDim.x * blockDim.x) {
        const uint32_t m = i / lanes, n0 = (i - m * lanes) * 4;
        const size_t ih = (size_t)m * 2 * N + n0, ig = ih + N;
        cu_vec16<float> d, dh = {}, dg = {}; /* dh, dg read only when accumulating */
        const cu_vec16<float> h = cu_load4(x + ih), g = cu_load4(x + ig);
        d.load(dy + (size_t)i * 4);
        if constexpr (sizeof(D) == 4)
            if (accumulate) {
                dh.load(dx + ih);
                dg.load(dx + ig);
            }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float a = d.v[k] * cu_gelu(g.v[k]), b = d.v[k] * h.v[k] * cu_gelu_grad(g.v[k]);
            dh.v[k] = accumulate ? dh.v[k] + a : a;
            dg.v[k] = accumulate ? dg.v[k] + b : b;
        }
        if constexpr (sizeof(D) == 4) {
            dh.store(dx + ih);
            dg.store(dx + ig);
        } else {
            cu_store2(dx + ih, dh.v[0], dh.v[1]);
            cu_store2(dx + ih + 2, dh.v[2], dh.v[3]);
            cu_store2(dx + ig, dg.v[0], dg.v[1]);
            cu_store2(dx + ig + 2, dg.v[2], dg.v[3]);
        }
    }
}

template <typename X, typename D>
static sd_status geglu_backward(const X *x, const float *dy, D *dx, int64_t M, int64_t N, int accumulate) {
    if (M * N <= 0 || !dx) return SD_OK;
    const int64_t n_vec = M * N / 4;
    const bool dx_aligned = sizeof(D) == 4 ? cu_aligned16(dx) : ((uintptr_t)dx & 7) == 0;
    if (N % 4 == 0 && cu_aligned4v(x) && cu_aligned16(dy) && dx_aligned && n_vec <= (int64_t)INT32_MAX) {
        CU_LAUNCH((k_geglu_backward_vec<X, D>), cu_blocks(n_vec, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(
            x, dy, dx, (uint32_t)n_vec, (uint32_t)N, accumulate);
    } else {
        const int threads = cu_row_threads(N);
        CU_LAUNCH((k_geglu_backward<X, D>), cu_rows_grid(M, N, threads), threads, 0, cu_cur()->stream)(x, dy, dx, M, N,
                                                                                                       accumulate);
    }
    LAUNCH_CHECK("geglu_backward");
    return SD_OK;
}

sd_status cu_geglu_backward(const float *x, const float *dy, float *dx, int64_t M, int64_t N, int accumulate) {
    return geglu_backward(x, dy, dx, M, N, accumulate);
}

sd_status cu_f16_geglu_backward(const sd_f16 *x, const float *dy, float *dx, int64_t M, int64_t N, int accumulate) {
    return geglu_backward(cu_half(x), dy, dx, M, N, accumulate);
}

sd_status cu_f16_geglu_backward_bf16(const sd_f16 *x, const float *dy, sd_f16 *dx, int64_t M, int64_t N) {
    return geglu_backward(cu_half(x), dy, reinterpret_cast<__nv_bfloat16 *>(dx), M, N, 0);
}

__global__ void k_axpy(float alpha, const float *x, float *y, int64_t n) {
    CU_PDL_ENTRY();
    GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

sd_status cu_axpy(float alpha, const float *x, float *y, int64_t n) {
    if (n <= 0 || !y) return SD_OK;
    CU_LAUNCH(k_axpy, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(alpha, x, y, n);
    LAUNCH_CHECK("axpy");
    return SD_OK;
}

__global__ void k_axpy_dev(const float *coef, const float *x, float *y, int64_t n) {
    CU_PDL_ENTRY();
    /* coef: [1], read when the kernel runs; the same arithmetic as k_axpy */
    const float alpha = coef[0];
    GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

sd_status cu_axpy_dev(const float *coef, const float *x, float *y, int64_t n) {
    if (n <= 0 || !y) return SD_OK;
    CU_LAUNCH(k_axpy_dev, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(coef, x, y, n);
    LAUNCH_CHECK("axpy_dev");
    return SD_OK;
}

__global__ void k_mul_acc(const float *a, const float *b, float *y, int64_t n) {
    CU_PDL_ENTRY();
    GRID_STRIDE(i, n) y[i] += a[i] * b[i];
}

sd_status cu_mul_acc(const float *a, const float *b, float *y, int64_t n) {
    if (n <= 0 || !y) return SD_OK;
    CU_LAUNCH(k_mul_acc, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(a, b, y, n);
    LAUNCH_CHECK("mul_acc");
    return SD_OK;
}

__global__ void k_row_sum_acc(const float *x, float *out, int64_t S) {
    CU_PDL_ENTRY();
    /* x: [rows, S]; out[row] += Σ_s x[row, s]; one block per row */
    __shared__ double smem[32];
    const float *xr = x + (int64_t)blockIdx.x * S;
    double acc = 0.0;
    for (int64_t s = threadIdx.x; s < S; s += blockDim.x) acc += xr[s];
    acc = cu_block_sum_d(acc, smem);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)((double)out[blockIdx.x] + acc); /* one rounding, as the CPU */
}

sd_status cu_add_channel_bias_backward(const float *dy, float *dv, int64_t B, int64_t C, int64_t S) {
    if (B * C <= 0 || !dv) return SD_OK;
    CU_LAUNCH(k_row_sum_acc, (unsigned)(B * C), EW_THREADS, 0, cu_cur()->stream)(dy, dv, S);
    LAUNCH_CHECK("add_channel_bias_backward");
    return SD_OK;
}

__global__ void k_concat_backward_part(const float *dy, float *d, int64_t B, int64_t Cpart,
                                       int64_t Ctotal, int64_t offset_c, int64_t S, int accumulate) {
    CU_PDL_ENTRY();
    /* d: [B, Cpart, S] += (or =) dy[:, offset_c : offset_c + Cpart, :] of dy: [B, Ctotal, S] */
    const int64_t per_b = Cpart * S;
    CU_ROWS_COLS(b, r, B, per_b) {
        const float g = dy[b * Ctotal * S + offset_c * S + r];
        d[b * per_b + r] = accumulate ? d[b * per_b + r] + g : g;
    }
}

sd_status cu_concat_channels_backward(const float *dy, float *da, float *dc, int64_t B, int64_t Ca,
                                      int64_t Cb, int64_t S, int accumulate) {
    cudaStream_t st = cu_cur()->stream;
    if (da && B * Ca * S > 0) {
        CU_LAUNCH(k_concat_backward_part, cu_rows_grid(B, Ca * S, EW_THREADS), EW_THREADS, 0, st)(dy, da, B, Ca, Ca + Cb, 0, S,
                                                                                                  accumulate);
        LAUNCH_CHECK("concat_channels_backward a");
    }
    if (dc && B * Cb * S > 0) {
        CU_LAUNCH(k_concat_backward_part, cu_rows_grid(B, Cb * S, EW_THREADS), EW_THREADS, 0, st)(dy, dc, B, Cb, Ca + Cb, Ca, S,
                                                                                                  accumulate);
        LAUNCH_CHECK("concat_channels_backward c");
    }
    return SD_OK;
}

/* The destination indices that the forward maps to source index `src` form one contiguous range
 * (floor of a monotone product): scan a window around the exact ratio and keep those whose forward
 * rule (same float arithmetic as the forward kernel) lands on src. Deterministic: no atomics. */
__device__ __forceinline__ void nearest_range(int64_t src, int64_t in, int64_t out, int64_t *lo,
                                              int64_t *hi) {
    int64_t a = (int64_t)floor((double)src * (double)out / (double)in) - 2;
    int64_t b = (int64_t)ceil((double)(src + 1) * (double)out / (double)in) + 2;
    if (src == in - 1) b = out - 1; /* the clamp to in - 1 may collect the tail */
    if (a < 0) a = 0;
    if (b > out - 1) b = out - 1;
    *lo = a;
    *hi = b;
}

__device__ __forceinline__ int64_t nearest_src(int64_t dst, int64_t in, float ratio) {
    int64_t s = (int64_t)floorf(__fmul_rn((float)dst, ratio));
    return s > in - 1 ? in - 1 : s;
}

__global__ void k_upsample_nearest_backward(const float *dy, float *dx, int64_t N, int64_t H, int64_t W,
                                            int64_t Ho, int64_t Wo, float sh, float sw, int accumulate) {
    CU_PDL_ENTRY();
    /* dy: [N, Ho, Wo] -> dx: [N, H, W] += (or =) Σ over the dst pixels mapped to each src pixel */
    GRID_STRIDE(i, N * H * W) {
        const int64_t ix = i % W, t = i / W, iy = t % H, n = t / H;
        int64_t y0, y1, x0, x1;
        nearest_range(iy, H, Ho, &y0, &y1);
        nearest_range(ix, W, Wo, &x0, &x1);
        float acc = 0.0f;
        for (int64_t oy = y0; oy <= y1; oy++) {
            if (nearest_src(oy, H, sh) != iy) continue;
            const float *row = dy + (n * Ho + oy) * Wo;
            for (int64_t ox = x0; ox <= x1; ox++)
                if (nearest_src(ox, W, sw) == ix) acc += row[ox];
        }
        dx[i] = accumulate ? dx[i] + acc : acc;
    }
}

sd_status cu_upsample_nearest_backward(const float *dy, float *dx, int64_t N, int64_t H, int64_t W,
                                       int64_t Ho, int64_t Wo, int accumulate) {
    const int64_t n = N * H * W;
    if (n <= 0 || !dx) return SD_OK;
    if (Ho <= 0 || Wo <= 0) { /* nothing maps to dx: it stays, or becomes the empty sum */
        if (!accumulate) CUDA_CHECK(cudaMemsetAsync(dx, 0, (size_t)n * sizeof(float), cu_cur()->stream));
        return SD_OK;
    }
    const float sh = (float)H / (float)Ho, sw = (float)W / (float)Wo;
    CU_LAUNCH(k_upsample_nearest_backward, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(
        dy, dx, N, H, W, Ho, Wo, sh, sw, accumulate);
    LAUNCH_CHECK("upsample_nearest_backward");
    return SD_OK;
}

__global__ void k_mse_backward(const float *a, const float *b, const float *g, float *da, float *db, int64_t n) {
    CU_PDL_ENTRY();
    /* g: one device float, dL/d(mse); d(mse)/da_i = 2 (a_i - b_i) / n, the coefficient rounded once
     * from double as the CPU does. da and db may be one buffer (mse(x, x)): same thread, in order. */
    const float coef = (float)(2.0 * (double)g[0] / (double)n);
    GRID_STRIDE(i, n) {
        const float d = coef * (a[i] - b[i]);
        if (da) da[i] += d;
        if (db) db[i] -= d;
    }
}

sd_status cu_mse_backward(const float *a, const float *b, const float *g, float *da, float *db, int64_t n) {
    if (n <= 0 || (!da && !db)) return SD_OK;
    CU_LAUNCH(k_mse_backward, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(a, b, g, da, db, n);
    LAUNCH_CHECK("mse_backward");
    return SD_OK;
}

__global__ void k_adam(float *p, const float *g, float *m, float *v, int64_t n, float lerp_coef, int small_weight,
                       float beta2, float sq_weight, float neg_step_size, float bc2_sqrt, float eps) {
    CU_PDL_ENTRY();
    /* torch.optim.Adam's single-tensor step, operation by operation (see cpu_adam_step):
     *   m.lerp_(g, 1 − β1):      fma(w, g − m, m) for w < 0.5, else fma(w − 1, g − m, g)
     *   v.mul_(β2).addcmul_(g, g, value = 1 − β2): fma((1 − β2)·g, g, v·β2)
     *   p.addcdiv_(m, sqrt(v) / sqrt(bc2) + eps, value = −lr / bc1)
     * fmaf is the single rounding torch's kernels use; the rest is forced to round step by step. */
    GRID_STRIDE(i, n) {
        const float gi = g[i], mo = m[i];
        const float diff = __fsub_rn(gi, mo);
        const float mi = fmaf(lerp_coef, diff, small_weight ? mo : gi);
        const float vi = fmaf(__fmul_rn(sq_weight, gi), gi, __fmul_rn(v[i], beta2));
        const float denom = __fadd_rn(__fdiv_rn(sqrtf(vi), bc2_sqrt), eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = __fadd_rn(p[i], __fdiv_rn(__fmul_rn(neg_step_size, mi), denom));
    }
}


sd_status cu_adam_step(float *p, const float *g, float *m, float *v, int64_t n, double lr, double beta1,
                       double beta2, double eps, int step) {
    if (step < 1) return sd_fail(SD_ERR_ARG, "adam: step must be 1 or more (got %d)", step);
    if (n <= 0) return SD_OK;
    const double lr_d = lr, beta1_d = beta1, beta2_d = beta2, eps_d = eps;
    const float lerp_weight = (float)(1.0 - beta1_d);
    const int small_weight = lerp_weight < 0.5f;
    const float lerp_coef = small_weight ? lerp_weight : lerp_weight - 1.0f;
    const float sq_weight = (float)(1.0 - beta2_d);
    const float bc2_sqrt = (float)pow(1.0 - pow(beta2_d, (double)step), 0.5);
    const float neg_step_size = (float)(-(lr_d / (1.0 - pow(beta1_d, (double)step))));
    CU_LAUNCH(k_adam, cu_blocks(n, EW_THREADS), EW_THREADS, 0, cu_cur()->stream)(
        p, g, m, v, n, lerp_coef, small_weight, (float)beta2_d, sq_weight, neg_step_size, bc2_sqrt, (float)eps_d);
    LAUNCH_CHECK("adam_step");
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Bias-gradient reductions
 * --------------------------------------------------------------------------------------------- */

__global__ void k_channel_sum_acc(const float *x, float *out, int64_t B, int64_t C, int64_t S) {
    CU_PDL_ENTRY();
    /* x: [B, C, S]; out[c] += Σ_b Σ_s x[b, c, s]; one block per channel */
    __shared__ double smem[32];
    const int64_t c = blockIdx.x;
    double acc = 0.0;
    for (int64_t b = 0; b < B; b++) {
        const float *xr = x + (b * C + c) * S;
        for (int64_t s = threadIdx.x; s < S; s += blockDim.x) acc += xr[s];
    }
    acc = cu_block_sum_d(acc, smem);
    if (threadIdx.x == 0) out[c] = (float)((double)out[c] + acc);
}

sd_status cu_channel_sum_acc(const float *x, float *out, int64_t B, int64_t C, int64_t S) {
    if (C <= 0) return SD_OK;
    CU_LAUNCH(k_channel_sum_acc, (unsigned)C, EW_THREADS, 0, cu_cur()->stream)(x, out, B, C, S);
    LAUNCH_CHECK("channel_sum");
    return SD_OK;
}

#define COL_TILE 32
#define COL_ROWS 8

__global__ void k_column_partial(const float *x, int64_t M, int64_t N, int64_t rows_per_chunk, double *partial) {
    CU_PDL_ENTRY();
    /* x: [M, N]; block (32, 8) sums columns [32·bx, +32) over rows [rows_per_chunk·by, +rows_per_chunk)
     * into partial[by, n] */
    __shared__ double sm[COL_ROWS][COL_TILE];
    const int64_t n = (int64_t)blockIdx.x * COL_TILE + threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
    int64_t r1 = r0 + rows_per_chunk;
    if (r1 > M) r1 = M;
    double acc = 0.0;
    if (n < N)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += COL_ROWS) acc += x[r * N + n];
    sm[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && n < N) {
        double t = 0.0;
        for (int j = 0; j < COL_ROWS; j++) t += sm[j][threadIdx.x];
        partial[(int64_t)blockIdx.y * N + n] = t;
    }
}

__global__ void k_column_final(const double *partial, int chunks, int64_t N, float *out) {
    CU_PDL_ENTRY();
    GRID_STRIDE(n, N) {
        double t = 0.0;
        for (int j = 0; j < chunks; j++) t += partial[(int64_t)j * N + n];
        out[n] = (float)((double)out[n] + t);
    }
}

sd_status cu_column_sum_acc(const float *x, float *out, int64_t M, int64_t N) {
    if (M <= 0 || N <= 0) return SD_OK;
    /* enough row chunks to fill the GPU, at least 64 rows each */
    int64_t chunks = (M + 255) / 256;
    if (chunks > 64) chunks = 64;
    const int64_t rows_per_chunk = (M + chunks - 1) / chunks;
    chunks = (M + rows_per_chunk - 1) / rows_per_chunk;
    double *partial = (double *)cu_workspace((size_t)(chunks * N) * sizeof(double));
    if (!partial) return SD_ERR_OOM;
    cudaStream_t st = cu_cur()->stream;
    dim3 grid((unsigned)((N + COL_TILE - 1) / COL_TILE), (unsigned)chunks), block(COL_TILE, COL_ROWS);
    CU_LAUNCH(k_column_partial, grid, block, 0, st)(x, M, N, rows_per_chunk, partial);
    LAUNCH_CHECK("column_sum partial");
    CU_LAUNCH(k_column_final, cu_blocks(N, EW_THREADS), EW_THREADS, 0, st)(partial, (int)chunks, N, out);
    LAUNCH_CHECK("column_sum final");
    return SD_OK;
}

__global__ void k_bias_rows(float *y, const float *b, int64_t M, int64_t N) {
    CU_PDL_ENTRY();
    /* y: [M, N] += b[N] broadcast over rows */
    CU_ROWS_COLS(m, n, M, N) y[m * N + n] += b[n];
}

sd_status cu_bias_rows(float *y, const float *b, int64_t M, int64_t N) {
    if (M * N <= 0) return SD_OK;
    const int threads = cu_row_threads(N);
    CU_LAUNCH(k_bias_rows, cu_rows_grid(M, N, threads), threads, 0, cu_cur()->stream)(y, b, M, N);
    LAUNCH_CHECK("bias_rows");
    return SD_OK;
}
