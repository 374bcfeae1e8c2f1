/* attention_backward.cu: gradients of the three attention ops.
 *
 *   S = scale · Q Kᵀ,  P = softmax(S),  O = P V
 *   dV += Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dQ += scale · dS K,
 *   dK += scale · dSᵀ Q
 *
 * attention_backward (the fused op's backward: nothing is saved by the forward) has two paths.
 *
 * Fast mode, head dims <= 160 (every attention layer of SD v1.x): a flash backward on tensor cores
 * (mma.sync.m16n8k16, fp32 accumulation), which never materialises a map, so its memory traffic is
 * O(S·D) instead of O(S²). The scores S = Q Kᵀ are products of fp16 copies of q and k, as fast
 * mode's forward computes them; the gradient products
 * (dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q, dV = Pᵀ dO) take bf16 operands, whose range holds gradients
 * of any size (fp16 would flush a small loss's gradients to zero):
 *   0. k_fb_stage rounds q and k once to fp16 and to bf16, v and dO to bf16, head-major rows
 *      padded to 16-byte pieces, so that both kernels move their tiles with cp.async,
 *      double-buffered (the next tile in flight while the warps multiply this one).
 *   1. k_flash_bwd_dq, one block per 128 queries of one (batch row, head), as the forward. Each
 *      row needs its log-sum-exp L (the softmax's normaliser, in the exp2 domain) and
 *      Δ = rowsum(P ⊙ dP), which go to the workspace for kernel 2:
 *        - when the forward kept L (lse, the tape's buffer: cu_attention_keeps_lse, and for fp16
 *          activations cu_f16_attention_keeps_lse), L is read and
 *          Δ = rowsum(dO ⊙ O) taken from the forward's output with dO as staged (FlashAttention-2's
 *          way): the scores here are the forward's, bit for bit, so P = 2^(c·S − L) is the
 *          forward's softmax;
 *        - otherwise a first pass over the keys computes L and Δ online, as the forward
 *          accumulates O.
 *      Then a pass recomputes P = exp2(S·log2e − L), dP = dO Vᵀ, dS = P ⊙ (dP − Δ) and
 *      accumulates dQ += dS K in registers (dS repacked as the A operand, as the forward repacks
 *      P).
 *   2. k_flash_bwd_dkv, one block per 128 keys: each warp holds 16 keys' K and V fragments and
 *      walks the queries in tiles of 64, recomputing Pᵀ and dPᵀ = V dOᵀ from L and Δ, and
 *      accumulates dV += Pᵀ dO and dK += dSᵀ Q in registers. When the key blocks are fewer than
 *      the SMs (cross-attention's 77 keys: one block per head), the queries are split over
 *      blockIdx.z and k_fb_sum_splits adds the partial sums in a fixed order.
 *   Heads are handled in 8-wide slices (cu_head_slices): at SD's 40 the products end with an
 *   m16n8k8 and the gradients have 5 n-tiles, not 6 over the 16-wide layout's padding. Heads over
 *   80 (SD's 160 at the 16x16 and 8x8 levels) split each gradient's head dim in halves over more
 *   blocks (fb_parts): kernel 1 two per 128 queries, kernel 2 four per 128 keys (dK's halves and
 *   dV's), each holding the scores' operands whole. The per-score
 *   work is kept to the arithmetic: masks only in the tiles that cross Sq, Sk or the causal
 *   diagonal, 2^(c·S − L) as one FFMA and one ex2.approx, tile copies with offsets worked out once
 *   (cu_tile_copier), L and Δ read two queries per load.
 *   Two kernels instead of FlashAttention-2's one (which adds dQ with atomics from the key-owned
 *   blocks): S and dP are computed twice (7 products of the size of S instead of 5; 10 when L is
 *   not kept and kernel 1 makes its first pass), but every gradient is written once, by one block
 *   (or summed in a fixed order), so the result does not depend on scheduling.
 *
 * Exact mode, heads over 160, a card without the shared memory the 160-wide kernels need, a scale <= 0:
 * the maps are recomputed one batch row and one chunk of query rows
 * at a time in the workspace (<= 128 MiB per buffer), with cuBLAS for the five products (strided
 * batches over heads, as the forward's maps path) and one warp-per-row kernel for the softmax
 * gradient. rowsum(dP ⊙ P) is taken from the recomputed maps rather than from rowsum(dO ⊙ O):
 * the same quantity, but consistent with the P actually used, so the fp32 result does not depend
 * on how `out` was rounded.
 *
 * Every gradient accumulates (+=) into its output, or overwrites it when the caller asks
 * (accumulate 0: a first contribution, the output not read); a NULL output is skipped. */
#include "cuda_common.cuh"

#include <math.h>
#include <string.h>

#define BWD_CHUNK_BYTES ((size_t)128 << 20)

/* dS[r, j] = P[r, j] · (dP[r, j] − Σ_j' P[r, j'] dP[r, j']) for r < rows, with P and dP read from
 * rows src_row(r) = base_row + (r / rows_per_head) · head_rows + r mod rows_per_head of their
 * buffers, and dS written to row r (may be dP's own row: each lane reads an element before it
 * writes it). One warp per row. */
__global__ void k_softmax_grad_rows(const float *P, const float *dP, float *dS, int64_t rows, int64_t rows_per_head,
                                    int64_t head_rows, int64_t base_row, int64_t Sk) {
    CU_PDL_ENTRY();
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31;
    const int64_t src = base_row + (r / rows_per_head) * head_rows + r % rows_per_head;
    const float *pr = P + src * Sk, *dpr = dP + src * Sk;
    float *dsr = dS + r * Sk;
    double acc = 0.0; /* a 4096-term dot product: keep it exact */
    for (int64_t j = lane; j < Sk; j += 32) acc += (double)pr[j] * (double)dpr[j];
    const float delta = (float)cu_warp_sum_d(acc);
    for (int64_t j = lane; j < Sk; j += 32) dsr[j] = pr[j] * (dpr[j] - delta);
}

static sd_status softmax_grad_rows(const float *P, const float *dP, float *dS, int64_t rows, int64_t rows_per_head,
                                   int64_t head_rows, int64_t base_row, int64_t Sk) {
    if (rows <= 0) return SD_OK;
    const int per_block = 8;
    CU_LAUNCH(k_softmax_grad_rows, (unsigned)((rows + per_block - 1) / per_block), per_block * 32, 0, cu_cur()->stream)(
        P, dP, dS, rows, rows_per_head, head_rows, base_row, Sk);
    LAUNCH_CHECK("softmax grad rows");
    return SD_OK;
}

/* Query rows per chunk so that one [H, chunk, Sk] float buffer stays within BWD_CHUNK_BYTES. */
static int64_t rows_per_chunk(int64_t Sq, int64_t Sk, int H) {
    int64_t c = (int64_t)(BWD_CHUNK_BYTES / sizeof(float)) / ((int64_t)H * Sk);
    if (c < 1) c = 1;
    if (c > Sq) c = Sq;
    return c;
}

/* ================================================================================================
 * Fast mode: flash backward (bf16 mma.sync, fp32 accumulation)
 * ============================================================================================= */

#define FB_THREADS 256 /* 8 warps, 16 rows (queries or keys) each */
#define FB_BQ 128      /* dQ kernel: queries per block */
#define FB_BK 64       /* dQ kernel: keys per tile */
#define FB_BKV 128     /* dK/dV kernel: keys per block */
#define FB_BQT 64      /* dK/dV kernel: queries per tile (and the padding of the statistics' rows) */
#define FB_MAX_D 80    /* head dims up to 5 x 16: the registers of one warp's fragments and gradients */
#define FB_MAX_D_SPLIT 160 /* wider heads up to this: the gradients over half the head dim per block (fb_parts) */
#define FB_LOG2E 1.4426950408889634f

/* *dst += v, or *dst = v (not read) when the op overwrites its gradients */
__device__ __forceinline__ void fb_put(float *dst, float v, int accumulate) { *dst = accumulate ? *dst + v : v; }

struct attn_bwd_params {
    /* the operands staged by k_fb_stage: head-major [B·H][S][DP], head dims zero-padded to DP;
     * q16 and k16 (fp16) for the scores, the bf16 ones for the gradient products */
    const __half *q16, *k16;
    const __nv_bfloat16 *q, *k, *v, *dout;
    const float *lse_fwd;          /* [B·H][Sq]: the forward's L, or NULL (kernel 1 computes it) */
    const float *out;              /* with lse_fwd: the forward's output [B, Sq, H·Dv], for Δ */
    const __half *out16;           /* the same stored in fp16 (a step storing fp16), in place of out */
    float *dq, *dk, *dv;           /* the op's gradients, [B, S, H·D] (·Dv); NULL: not wanted */
    int accumulate;                /* 1: add into dq, dk, dv; 0: write them (each element once) */
    float *dk_part, *dv_part;      /* kernel 2 split over the queries: [splits][B·H][Sk][DP] partial sums */
    float *lse, *delta;            /* [B·H][Sq_pad]: log2-domain log-sum-exp of scale·log2e·S, and Δ */
    int64_t Sq, Sk, Sq_pad;        /* Sq_pad: Sq rounded up to FB_BQT (rows past Sq hold zeros) */
    int64_t q_per_split;           /* kernel 2: queries per blockIdx.z (a multiple of FB_BQT) */
    int H, D, Dv;
    float scale, scale_log2;
    int causal;
};

/* ------------------------------------------------------------------------------------------------
 * Staging: each fp32 operand once into head-major rows of whole 16-byte pieces (bf16, and fp16 for
 * the scores' q and k), so that the kernels move tiles by cp.async (asynchronous 16-byte copies,
 * the next tile in flight while the warps multiply this one) instead of converting element by
 * element on the way in: the element loads of the old kernels were latency-bound, their tiles
 * arriving between two barriers with nothing to overlap them. The fp16 copies round as the
 * forward's staging does (__float2half_rn, zero padding), so the scores are the forward's.
 * --------------------------------------------------------------------------------------------- */

struct fb_stage_job {
    const void *src;    /* [B, S, H·width], F32 or (src16) fp16 */
    void *dst;          /* [B·H][S][DP] of E */
    int64_t S;
    int width;
    int half;           /* E: 1 fp16, 0 bf16 */
    int vec;            /* every head row of src reads as 16-byte pieces: width a multiple of 4 (F32) or of 8
                         * (fp16) and src 16-byte aligned */
    int src16;          /* src holds fp16 values (a step storing fp16: the forward's own operands) */
};
#define FB_STAGE_JOBS 6
struct fb_stage_params {
    fb_stage_job job[FB_STAGE_JOBS]; /* q16, k16, q, k, v, dout: blockIdx.y */
    int64_t B;
    int H, DP;
};

/* Element e of a staged row's source as float (fp16 values are exact in it). */
__device__ __forceinline__ float fb_src_at(const float *src, int64_t e) { return src[e]; }
__device__ __forceinline__ float fb_src_at(const __half *src, int64_t e) { return __half2float(src[e]); }

/* A piece of 8 values from either source, value by value (zeros past the head's width): rows that
 * are not whole aligned 16-byte pieces */
template <typename E, typename S>
__device__ __forceinline__ void fb_stage_values(const fb_stage_job &j, const S *src, E *dst, int c) {
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
        const float lo = c + e < j.width ? fb_src_at(src, c + e) : 0.0f;
        const float hi = c + e + 1 < j.width ? fb_src_at(src, c + e + 1) : 0.0f;
        *reinterpret_cast<uint32_t *>(dst + c + e) = cu_tensor_core<E>::pack(lo, hi);
    }
}

/* An fp16 source: one 16-byte load of 8 values (or zeros past the head's width), rounded to E (fp16
 * to fp16 keeps the bits), one 16-byte store */
template <typename E>
__device__ __forceinline__ void fb_stage_piece(const fb_stage_job &j, const __half *src, E *dst, int c) {
    typedef cu_tensor_core<E> TC;
    if (j.vec) {
        alignas(16) __half h[8];
        *reinterpret_cast<float4 *>(h) =
            c < j.width ? *reinterpret_cast<const float4 *>(src + c) : make_float4(0, 0, 0, 0);
        alignas(16) uint32_t out[4];
#pragma unroll
        for (int e = 0; e < 4; e++) out[e] = TC::pack(__half2float(h[2 * e]), __half2float(h[2 * e + 1]));
        *reinterpret_cast<float4 *>(dst + c) = *reinterpret_cast<const float4 *>(out);
        return;
    }
    fb_stage_values(j, src, dst, c);
}

template <typename E>
__device__ __forceinline__ void fb_stage_piece(const fb_stage_job &j, const float *src, E *dst, int c) {
    typedef cu_tensor_core<E> TC;
    if (j.vec) { /* two 16-byte loads (or zeros past the head's width), one 16-byte store */
        float4 f[2];
#pragma unroll
        for (int h = 0; h < 2; h++)
            f[h] = c + 4 * h < j.width ? *reinterpret_cast<const float4 *>(src + c + 4 * h) : make_float4(0, 0, 0, 0);
        alignas(16) uint32_t out[4] = {TC::pack(f[0].x, f[0].y), TC::pack(f[0].z, f[0].w), TC::pack(f[1].x, f[1].y),
                                       TC::pack(f[1].z, f[1].w)};
        *reinterpret_cast<float4 *>(dst + c) = *reinterpret_cast<const float4 *>(out); /* bits moved */
        return;
    }
    fb_stage_values(j, src, dst, c);
}

__global__ void k_fb_stage(const fb_stage_params p) {
    CU_PDL_ENTRY();
    const fb_stage_job j = p.job[blockIdx.y];
    const int pieces = p.DP >> 3;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.B * p.H * j.S * pieces) return;
    const int64_t row = i / pieces, bh = row / j.S, s = row % j.S;
    const int c = (int)(i - row * pieces) << 3;
    const int64_t at = ((bh / p.H) * j.S + s) * (int64_t)p.H * j.width + (bh % p.H) * (int64_t)j.width;
    __half *d16 = static_cast<__half *>(j.dst) + row * p.DP;
    __nv_bfloat16 *dbf = static_cast<__nv_bfloat16 *>(j.dst) + row * p.DP;
    if (j.src16) {
        const __half *src = static_cast<const __half *>(j.src) + at;
        if (j.half) fb_stage_piece(j, src, d16, c);
        else fb_stage_piece(j, src, dbf, c);
    } else {
        const float *src = static_cast<const float *>(j.src) + at;
        if (j.half) fb_stage_piece(j, src, d16, c);
        else fb_stage_piece(j, src, dbf, c);
    }
}

/* Whether key kj enters query row qi's softmax. */
__device__ __forceinline__ bool fb_valid(const attn_bwd_params &p, int64_t qi, int64_t kj) {
    return qi < p.Sq && kj < p.Sk && (!p.causal || kj <= qi);
}

/* The copier of tiles of ROWS staged rows (DK·16 16-bit values: 2·DK pieces of 16 bytes) into shared
 * rows of stride RS. fp16 and bf16 tiles share it: the copies move bits. */
template <int DK, int RS, int ROWS, int THREADS = FB_THREADS>
using fb_copier = cu_tile_copier<RS, THREADS, ROWS, 2 * DK, __nv_bfloat16>;
__device__ __forceinline__ const __nv_bfloat16 *fb_bits(const __half *p) {
    return reinterpret_cast<const __nv_bfloat16 *>(p);
}
__device__ __forceinline__ __nv_bfloat16 *fb_bits(__half *p) { return reinterpret_cast<__nv_bfloat16 *>(p); }

/* The warp's 16 rows from r0 of two row-major smem tiles (stride rs) as DK A fragments each:
 * Q (fp16) and dO in kernel 1, K (fp16) and V in kernel 2. Callers synchronise before. */
template <int DK, typename E1, typename E2>
__device__ __forceinline__ void fb_warp_frags(uint32_t (*a1)[4], uint32_t (*a2)[4], const E1 *s1, const E2 *s2,
                                              int rs, int r0) {
#pragma unroll
    for (int kk = 0; kk < DK; kk++) {
        cu_load_a_frag(a1[kk], s1, rs, r0, kk);
        cu_load_a_frag(a2[kk], s2, rs, r0, kk);
    }
}

/* One warp's products with a tile of 8·NT columns over the NS 8-wide slices of the head dims:
 * s = A1 · B1ᵀ (fp16) and dp = A2 · B2ᵀ (bf16), with A1, A2 the warp's A fragments and B1, B2 n-major
 * tiles (row stride rs). Kernel 1: S = Q Kᵀ and dP = dO Vᵀ over a key tile; kernel 2: Sᵀ = K Qᵀ and
 * dPᵀ = V dOᵀ over a query tile. */
template <int NS, int NT>
__device__ __forceinline__ void fb_tile_products(float (*s)[4], float (*dp)[4], const uint32_t (*a1)[4],
                                                 const uint32_t (*a2)[4], const __half *b1,
                                                 const __nv_bfloat16 *b2, int rs) {
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
    }
    cu_mma_scores<NS, NT>(s, a1, b1, rs);
    cu_mma_scores<NS, NT>(dp, a2, b2, rs);
}

/* Offsets in 16-bit elements (fp16 and bf16 alike); BQ: the block's queries (fb_dq_warps). */
template <int DK, int BQ = FB_BQ> struct fb_dq_smem {
    static constexpr int DP = DK * 16;     /* padded head dim */
    static constexpr int RS = DP + 8;      /* row stride: ldmatrix's 8 rows hit distinct banks */
    static constexpr int q_off = 0;                        /* Qs[BQ][RS], fp16: the scores */
    static constexpr int do_off = q_off + BQ * RS;         /* dOs[BQ][RS] */
    static constexpr int k16_off = do_off + BQ * RS;       /* K16s[2][FB_BK][RS], fp16: double-buffered */
    static constexpr int k_off = k16_off + 2 * FB_BK * RS; /* Ks[2][FB_BK][RS], bf16: dQ += dS K */
    static constexpr int v_off = k_off + 2 * FB_BK * RS;   /* Vs[2][FB_BK][RS] */
    static constexpr int elems = v_off + 2 * FB_BK * RS;
    static constexpr size_t bytes = (size_t)elems * sizeof(__nv_bfloat16);
};

/* Kernel 1, pass 1, one key tile: the raw scores s (masked to -inf where MASKED and the key is not
 * valid for the row) update the running maxima m of the raw scores (scale > 0), the sums l of
 * P̃ = 2^(c·S − c·m), c = scale·log2 e, and the sums pd of P̃ ⊙ dP, rescaled alike (the forward's
 * online softmax). Unmasked tiles, most of them, compute no key or query index. */
template <bool MASKED>
__device__ __forceinline__ void fb_pass1_tile(float (&s)[FB_BK / 8][4], const float (&dp)[FB_BK / 8][4],
                                              const attn_bwd_params &p, int64_t row0, int64_t row1, int64_t k0,
                                              int t, float &m0, float &m1, float &l0, float &l1, float &pd0,
                                              float &pd1) {
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < FB_BK / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if constexpr (MASKED)
                if (!fb_valid(p, e < 2 ? row0 : row1, k0 + nt * 8 + 2 * t + (e & 1))) s[nt][e] = -INFINITY;
            if (e < 2) mx0 = fmaxf(mx0, s[nt][e]);
            else mx1 = fmaxf(mx1, s[nt][e]);
        }
    const float c = p.scale_log2;
    const float mn0 = fmaxf(m0, cu_quad_max(mx0)), mn1 = fmaxf(m1, cu_quad_max(mx1));
    const float mu0 = mn0 == -INFINITY ? 0.0f : mn0 * c, mu1 = mn1 == -INFINITY ? 0.0f : mn1 * c;
    const float a0 = cu_exp2_ftz(fmaf(m0, c, -mu0)), a1 = cu_exp2_ftz(fmaf(m1, c, -mu1));
    l0 *= a0, pd0 *= a0;
    l1 *= a1, pd1 *= a1;
    m0 = mn0;
    m1 = mn1;
#pragma unroll
    for (int nt = 0; nt < FB_BK / 8; nt++) {
        const float e0 = cu_exp2_ftz(fmaf(s[nt][0], c, -mu0)), e1 = cu_exp2_ftz(fmaf(s[nt][1], c, -mu0));
        const float e2 = cu_exp2_ftz(fmaf(s[nt][2], c, -mu1)), e3 = cu_exp2_ftz(fmaf(s[nt][3], c, -mu1));
        l0 += e0 + e1;
        l1 += e2 + e3;
        pd0 += e0 * dp[nt][0] + e1 * dp[nt][1];
        pd1 += e2 * dp[nt][2] + e3 * dp[nt][3];
    }
}

/* Kernel 1, pass 2, one key tile: s becomes dS = P ⊙ (dP − Δ), P = 2^(c·S − L) (0 where MASKED and
 * the key is not valid for the row). */
template <bool MASKED>
__device__ __forceinline__ void fb_pass2_tile(float (&s)[FB_BK / 8][4], const float (&dp)[FB_BK / 8][4],
                                              const attn_bwd_params &p, int64_t row0, int64_t row1, int64_t k0,
                                              int t, float lse0, float lse1, float delta0, float delta1) {
#pragma unroll
    for (int nt = 0; nt < FB_BK / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float P = cu_exp2_ftz(fmaf(s[nt][e], p.scale_log2, -(e < 2 ? lse0 : lse1)));
            if constexpr (MASKED)
                if (!fb_valid(p, e < 2 ? row0 : row1, k0 + nt * 8 + 2 * t + (e & 1))) P = 0.0f;
            s[nt][e] = P * (dp[nt][e] - (e < 2 ? delta0 : delta1)); /* dS */
        }
}

/* Δ = rowsum(dO ⊙ O) of this lane's two rows (quad-reduced), from dO as staged (bf16: the dP of
 * the dQ pass multiplies the same values, so no rounding of dO biases a row's Σ_j dS) and the
 * forward's F32 output. Lane t of the quad takes column pairs 2t + 8i. Rows past Sq give 0. */
/* Element i of the forward's output, F32 or (a step storing fp16) fp16 */
__device__ __forceinline__ float fb_out_at(const attn_bwd_params &p, int64_t i) {
    return p.out16 ? fb_src_at(p.out16, i) : fb_src_at(p.out, i);
}

__device__ __forceinline__ float fb_delta_from_out(const attn_bwd_params &p, const __nv_bfloat16 *dout_row,
                                                   int64_t b, int h, int64_t row, int DP, int t) {
    float sum = 0.0f;
    if (row < p.Sq) {
        const int64_t at = (b * p.Sq + row) * (int64_t)p.H * p.Dv + (int64_t)h * p.Dv;
        for (int d = 2 * t; d < p.Dv; d += 8) {
            const __nv_bfloat162 d2 = *reinterpret_cast<const __nv_bfloat162 *>(dout_row + row * DP + d);
            sum = fmaf(__bfloat162float(d2.x), fb_out_at(p, at + d), sum);
            if (d + 1 < p.Dv) sum = fmaf(__bfloat162float(d2.y), fb_out_at(p, at + d + 1), sum);
        }
    }
    return cu_quad_sum(sum);
}

/* Kernel 1: L and Δ of BQ = 16·WARPS query rows (128, or 64 where the blocks are few: fb_dq_warps),
 * then dQ. Grid (ceil(Sq / BQ)·PARTS, B·H). With the forward's L
 * (p.lse_fwd) the block reads L, takes Δ from O and walks the key tiles once, for dQ; without, it
 * walks them once for L and Δ and, when dQ is wanted, a second time: one sequence of `steps` tiles
 * whose next tile is always in flight. NS: the head dims' 8-wide slices (cu_head_slices); NSO: the
 * slices of dQ one block accumulates, NS / NSO = PARTS blocks per 128 rows (fb_parts: heads over
 * FB_MAX_D), each computing the same scores and the dQ columns [part·8·NSO, +8·NSO); part 0 writes
 * L and Δ. */
template <int NS, int NSO, int MINB, int WARPS>
__global__ void __launch_bounds__(32 * WARPS, MINB * 8 / WARPS) k_flash_bwd_dq(const attn_bwd_params p) {
    CU_PDL_ENTRY();
    constexpr int DK = cu_head_slices<NS>::DK, PARTS = NS / NSO, BQ = 16 * WARPS, THREADS = 32 * WARPS;
    static_assert(NS % NSO == 0 && (PARTS == 1 || NSO % 2 == 0), "whole, even parts of the head dim");
    typedef fb_dq_smem<DK, BQ> L;
    CU_DYNAMIC_SHARED(float4, smem_f4);
    __nv_bfloat16 *smem = reinterpret_cast<__nv_bfloat16 *>(smem_f4);
    const __half *Qs = reinterpret_cast<const __half *>(smem + L::q_off);
    const __nv_bfloat16 *dOs = smem + L::do_off;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
    const int part = PARTS > 1 ? (int)(blockIdx.x % PARTS) : 0, d0 = part * 8 * NSO;
    const int64_t q0 = (int64_t)(blockIdx.x / PARTS) * BQ, ldq = (int64_t)p.H * p.D;
    const __nv_bfloat16 *k16b = fb_bits(p.k16) + (int64_t)bh * p.Sk * L::DP;
    const __nv_bfloat16 *kb = p.k + (int64_t)bh * p.Sk * L::DP, *vb = p.v + (int64_t)bh * p.Sk * L::DP;

    /* causal: the keys up to the end of the 128-query block (FB_BQ) these rows belong to, whatever
     * BQ, as the forward's kernels walk them: the same tiles give the same L, bit for bit */
    int64_t k_end = p.Sk;
    if (p.causal && (q0 / FB_BQ + 1) * FB_BQ < k_end) k_end = (q0 / FB_BQ + 1) * FB_BQ;
    const int n_tiles = (int)((k_end + FB_BK - 1) / FB_BK);
    const int pass1 = p.lse_fwd ? 0 : n_tiles; /* the steps of the pass for L and Δ */
    const int steps = pass1 + (p.dq ? n_tiles : 0);
    /* the block's tiles that need the mask: all of them when its last rows pass Sq (their L and Δ
     * must come out 0) or causal, else the last key tile when Sk is not a multiple of FB_BK */
    const bool rows_masked = p.causal || q0 + BQ > p.Sq;

    /* K (fp16 and bf16) and V of key tile `tile` into buffer `buf` */
    const fb_copier<DK, L::RS, FB_BK, THREADS> kv_copier(tid, L::DP);
    auto queue_kv = [&](int tile, int buf) {
        const int64_t k0 = (int64_t)tile * FB_BK;
        const int valid = cu_rows_left(p.Sk, k0, FB_BK), at = buf * FB_BK * L::RS;
        __nv_bfloat16 *const dst[3] = {smem + L::k16_off + at, smem + L::k_off + at, smem + L::v_off + at};
        const __nv_bfloat16 *const src[3] = {k16b + k0 * L::DP, kb + k0 * L::DP, vb + k0 * L::DP};
        kv_copier.template copy_n<3>(dst, src, valid);
    };
    /* group 0: the block's Q and dO rows; group 1: key tile 0 */
    if (steps > 0) {
        const fb_copier<DK, L::RS, BQ, THREADS> q_copier(tid, L::DP);
        const int q_rows = cu_rows_left(p.Sq, q0, BQ);
        const int64_t at = ((int64_t)bh * p.Sq + q0) * L::DP;
        __nv_bfloat16 *const dst[2] = {smem + L::q_off, smem + L::do_off};
        const __nv_bfloat16 *const src[2] = {fb_bits(p.q16) + at, p.dout + at};
        q_copier.template copy_n<2>(dst, src, q_rows);
        cu_cp_async_commit();
        queue_kv(0, 0);
        cu_cp_async_commit();
    }
    /* Waits for tile `step` (after queueing step + 1 into the other buffer, free since the end of
     * step - 1) and returns its K (fp16, bf16) and V */
    auto await_tile = [&](int step, const __half **K16s, const __nv_bfloat16 **Ks, const __nv_bfloat16 **Vs) {
        if (step + 1 < steps) {
            queue_kv((step + 1) % n_tiles, (step + 1) & 1);
            cu_cp_async_commit();
            cu_cp_async_wait<1>();
        } else {
            cu_cp_async_wait<0>();
        }
        __syncthreads(); /* every thread's copies are visible */
        const int at = (step & 1) * FB_BK * L::RS;
        *K16s = reinterpret_cast<const __half *>(smem + L::k16_off + at);
        *Ks = smem + L::k_off + at;
        *Vs = smem + L::v_off + at;
    };

    const int r0 = warp * 16;
    uint32_t qa[DK][4], da[DK][4]; /* this warp's 16 rows of Q (fp16) and dO as A fragments */
    const int64_t row0 = q0 + r0 + g, row1 = row0 + 8; /* the two rows of this lane's fragments */
    if (steps > 0) { /* Q and dO landed (tile 0 may still be in flight) */
        cu_cp_async_wait<1>();
        __syncthreads();
        fb_warp_frags<DK>(qa, da, Qs, dOs, L::RS, r0);
    }
    const float c = p.scale_log2;
    float lse0, lse1, delta0, delta1;
    if (p.lse_fwd) {
        /* the forward's L; Δ = rowsum(dO ⊙ O). Rows past Sq: 0, as pass 1 leaves them */
        const float *lf = p.lse_fwd + (int64_t)bh * p.Sq;
        lse0 = row0 < p.Sq ? lf[row0] : 0.0f;
        lse1 = row1 < p.Sq ? lf[row1] : 0.0f;
        const __nv_bfloat16 *dob = p.dout + (int64_t)bh * p.Sq * L::DP;
        delta0 = fb_delta_from_out(p, dob, b, h, row0, L::DP, t);
        delta1 = fb_delta_from_out(p, dob, b, h, row1, L::DP, t);
    } else {
        /* pass 1: per row, the running max m and sum l of 2^(c·S) (the forward's online softmax)
         * and the running Σ 2^(c·S)·dP, rescaled alike, which ends as Δ = rowsum(P ⊙ dP): taken
         * from the same products as pass 2's dS, so that Σ_j dS_ij = 0 holds to fp32 rounding */
        float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f, pd0 = 0.0f, pd1 = 0.0f;
        for (int step = 0; step < pass1; step++) {
            const __half *K16s;
            const __nv_bfloat16 *Ks, *Vs;
            await_tile(step, &K16s, &Ks, &Vs);
            const int64_t k0 = (int64_t)step * FB_BK;
            float s[FB_BK / 8][4], dp[FB_BK / 8][4];
            fb_tile_products<NS, FB_BK / 8>(s, dp, qa, da, K16s, Vs, L::RS);
            if (rows_masked || k0 + FB_BK > p.Sk) /* tile mask */
                fb_pass1_tile<true>(s, dp, p, row0, row1, k0, t, m0, m1, l0, l1, pd0, pd1);
            else
                fb_pass1_tile<false>(s, dp, p, row0, row1, k0, t, m0, m1, l0, l1, pd0, pd1);
            __syncthreads(); /* tile consumed: its buffer takes the tile after next */
        }
        l0 = cu_quad_sum(l0), l1 = cu_quad_sum(l1);
        pd0 = cu_quad_sum(pd0), pd1 = cu_quad_sum(pd1);
        /* L = c·m + log2 l in the exp2 domain (c·m as pass 1's last tile rounded it; the forward's
         * fa_store_lse alike). A row without a single valid key (padding rows, up to Sq_pad too)
         * gets L = 0, Δ = 0: its P is masked, and kernel 2 reads these rows whole */
        lse0 = l0 > 0.0f ? m0 * c + log2f(l0) : 0.0f, lse1 = l1 > 0.0f ? m1 * c + log2f(l1) : 0.0f;
        delta0 = l0 > 0.0f ? pd0 / l0 : 0.0f, delta1 = l1 > 0.0f ? pd1 / l1 : 0.0f;
    }
    if (t == 0 && part == 0) {
        float *lse = p.lse + (int64_t)bh * p.Sq_pad, *dl = p.delta + (int64_t)bh * p.Sq_pad;
        if (row0 < p.Sq_pad) lse[row0] = lse0, dl[row0] = delta0;
        if (row1 < p.Sq_pad) lse[row1] = lse1, dl[row1] = delta1;
    }
    if (!p.dq) return;

    /* pass 2: dQ += dS K, dS = P ⊙ (dO Vᵀ − Δ) */
    float dq[NSO][4];
#pragma unroll
    for (int nd = 0; nd < NSO; nd++) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.0f;
    for (int step = pass1; step < steps; step++) {
        const __half *K16s;
        const __nv_bfloat16 *Ks, *Vs;
        await_tile(step, &K16s, &Ks, &Vs);
        const int64_t k0 = (int64_t)(step - pass1) * FB_BK;
        float s[FB_BK / 8][4], dp[FB_BK / 8][4];
        fb_tile_products<NS, FB_BK / 8>(s, dp, qa, da, K16s, Vs, L::RS);
        if (rows_masked || k0 + FB_BK > p.Sk) /* tile mask */
            fb_pass2_tile<true>(s, dp, p, row0, row1, k0, t, lse0, lse1, delta0, delta1);
        else
            fb_pass2_tile<false>(s, dp, p, row0, row1, k0, t, lse0, lse1, delta0, delta1);
        cu_mma_c_by_rows<NSO, FB_BK / 8>(dq, s, Ks + d0, L::RS); /* dQ += dS K, this part's columns */
        __syncthreads();
    }
    float *dqb = p.dq + (int64_t)b * p.Sq * ldq + (int64_t)h * p.D;
#pragma unroll
    for (int nd = 0; nd < NSO; nd++) {
        const int d = d0 + nd * 8 + 2 * t;
        if (row0 < p.Sq) {
            if (d < p.D) fb_put(dqb + row0 * ldq + d, p.scale * dq[nd][0], p.accumulate);
            if (d + 1 < p.D) fb_put(dqb + row0 * ldq + d + 1, p.scale * dq[nd][1], p.accumulate);
        }
        if (row1 < p.Sq) {
            if (d < p.D) fb_put(dqb + row1 * ldq + d, p.scale * dq[nd][2], p.accumulate);
            if (d + 1 < p.D) fb_put(dqb + row1 * ldq + d + 1, p.scale * dq[nd][3], p.accumulate);
        }
    }
}

template <int DK> struct fb_dkv_smem {
    static constexpr int DP = DK * 16;
    static constexpr int RS = DP + 8;
    static constexpr int k_off = 0;                         /* Ks[FB_BKV][RS], fp16: the block's keys, loaded once */
    static constexpr int v_off = k_off + FB_BKV * RS;       /* Vs[FB_BKV][RS] */
    static constexpr int q16_off = v_off + FB_BKV * RS;     /* Q16s[2][FB_BQT][RS], fp16: query tiles, double-buffered */
    static constexpr int q_off = q16_off + 2 * FB_BQT * RS; /* Qs[2][FB_BQT][RS], bf16: dK += dSᵀ Q */
    static constexpr int do_off = q_off + 2 * FB_BQT * RS;  /* dOs[2][FB_BQT][RS] */
    static constexpr int elems = do_off + 2 * FB_BQT * RS;
    static constexpr size_t stat_off = ((size_t)elems * sizeof(__nv_bfloat16) + 15) / 16 * 16;
    static constexpr size_t bytes = stat_off + 2 * 2 * FB_BQT * sizeof(float); /* [2 buffers][L, Δ][FB_BQT] */
};

/* Kernel 2, one query tile: Sᵀ (in s) becomes Pᵀ = 2^(c·Sᵀ − L) and dPᵀ (in dp) dSᵀ = Pᵀ ⊙ (dPᵀ − Δ),
 * with L and Δ of the tile's queries (the columns) from shared memory, two neighbouring queries per
 * 8-byte load; P is 0 where MASKED and the key is not valid for the query. */
template <bool MASKED>
__device__ __forceinline__ void fb_dkv_tile(float (&s)[FB_BQT / 8][4], float (&dp)[FB_BQT / 8][4],
                                            const attn_bwd_params &p, const float *lse_s, const float *delta_s,
                                            int64_t q0, int64_t key0, int64_t key1, int t) {
#pragma unroll
    for (int nt = 0; nt < FB_BQT / 8; nt++) {
        const int qj = nt * 8 + 2 * t; /* the queries of elements e = 0, 2 (qj) and 1, 3 (qj + 1) */
        const float2 lse2 = *reinterpret_cast<const float2 *>(lse_s + qj);
        const float2 delta2 = *reinterpret_cast<const float2 *>(delta_s + qj);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float lse = e & 1 ? lse2.y : lse2.x, delta = e & 1 ? delta2.y : delta2.x;
            float P = cu_exp2_ftz(fmaf(s[nt][e], p.scale_log2, -lse));
            if constexpr (MASKED)
                if (!fb_valid(p, q0 + qj + (e & 1), e < 2 ? key0 : key1)) P = 0.0f;
            s[nt][e] = P;                          /* Pᵀ */
            dp[nt][e] = P * (dp[nt][e] - delta);   /* dSᵀ */
        }
    }
}

/* Kernel 2's output: a warp's NO 8-wide slices of a gradient (rows key0 and key1 of this lane, columns
 * d0 + 8·nd + 2t + {0, 1} below `width`), times `scale`, into rows of dst (stride `stride`): stored
 * as they are when they are a split's partial sums, else put (fb_put). */
template <int NO>
__device__ __forceinline__ void fb_store_keys(float *dst, int64_t stride, const float (*acc)[4], int d0, int width,
                                              float scale, int64_t key0, int64_t key1, int64_t Sk, int t, bool split,
                                              int accumulate) {
#pragma unroll
    for (int nd = 0; nd < NO; nd++) {
        const int d = d0 + nd * 8 + 2 * t;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t kj = e < 2 ? key0 : key1;
            const int dd = d + (e & 1);
            if (kj >= Sk || dd >= width) continue;
            if (split) dst[kj * stride + dd] = scale * acc[nd][e];
            else fb_put(dst + kj * stride + dd, scale * acc[nd][e], accumulate);
        }
    }
}

/* Kernel 2: dK and dV of 128 keys over the queries [z·q_per_split, (z+1)·q_per_split) of blockIdx.z.
 * Grid (ceil(Sk / 128)·ROLES, B·H, splits); reads L and Δ from kernel 1. With one split the block adds
 * its gradients to dk and dv; with more it stores them in dk_part / dv_part, which
 * k_fb_sum_splits adds up in a fixed order (attention over few keys, cross-attention's 77, gives
 * too few key blocks to fill the GPU otherwise: one per head, each walking every query). Heads over
 * FB_MAX_D (fb_parts: NSO < NS) take ROLES = 2·PARTS blocks per 128 keys, role r < PARTS the dK
 * columns [r·8·NSO, +8·NSO), role PARTS + r the same dV columns, so that a warp accumulates 16 rows
 * of NSO slices, not 2·NS; a dV role computes the scores alone (Pᵀ, no dPᵀ), and a role whose
 * gradient is not wanted returns at once. */
template <int NS, int NSO, int MINB>
__global__ void __launch_bounds__(FB_THREADS, MINB) k_flash_bwd_dkv(const attn_bwd_params p) {
    CU_PDL_ENTRY();
    constexpr int DK = cu_head_slices<NS>::DK, PARTS = NS / NSO, ROLES = PARTS == 1 ? 1 : 2 * PARTS;
    static_assert(NS % NSO == 0 && (PARTS == 1 || NSO % 2 == 0), "whole, even parts of the head dim");
    const int role = ROLES > 1 ? (int)(blockIdx.x % ROLES) : 0;
    const bool role_dk = ROLES == 1 || role < PARTS; /* ROLES 1: dK and dV */
    const int d0 = ROLES > 1 ? role % PARTS * 8 * NSO : 0;
    if (ROLES > 1 && !(role_dk ? p.dk : p.dv)) return;
    typedef fb_dkv_smem<DK> L;
    CU_DYNAMIC_SHARED(float4, smem_f4);
    __nv_bfloat16 *smem = reinterpret_cast<__nv_bfloat16 *>(smem_f4);
    const __half *Ks = reinterpret_cast<const __half *>(smem + L::k_off);
    const __nv_bfloat16 *Vs = smem + L::v_off;
    float *stats = reinterpret_cast<float *>(reinterpret_cast<char *>(smem_f4) + L::stat_off);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
    const int64_t k0 = (int64_t)(blockIdx.x / ROLES) * FB_BKV;
    const __nv_bfloat16 *q16b = fb_bits(p.q16) + (int64_t)bh * p.Sq * L::DP;
    const __nv_bfloat16 *qb = p.q + (int64_t)bh * p.Sq * L::DP, *dob = p.dout + (int64_t)bh * p.Sq * L::DP;
    const float *lse = p.lse + (int64_t)bh * p.Sq_pad, *delta = p.delta + (int64_t)bh * p.Sq_pad;

    /* this block's queries; causal: queries before the block's first key see none of its keys */
    int64_t q_lo = (int64_t)blockIdx.z * p.q_per_split, q_hi = q_lo + p.q_per_split;
    if (q_hi > p.Sq) q_hi = p.Sq;
    if (p.causal && q_lo < k0 / FB_BQT * FB_BQT) q_lo = k0 / FB_BQT * FB_BQT;
    const int n_tiles = q_hi > q_lo ? (int)((q_hi - q_lo + FB_BQT - 1) / FB_BQT) : 0;
    /* the mask: every tile when causal or when the block's last keys pass Sk, else a last query
     * tile that passes Sq */
    const bool keys_masked = p.causal || k0 + FB_BKV > p.Sk;

    /* Queues query tile j into buffer j & 1: Q (fp16, bf16), dO rows and their L and Δ (whole
     * FB_BQT rows: kernel 1 wrote Sq_pad of them) */
    const fb_copier<DK, L::RS, FB_BQT> q_copier(tid, L::DP);
    auto queue_tile = [&](int j) {
        const int64_t q0 = q_lo + (int64_t)j * FB_BQT;
        const int buf = j & 1, valid = cu_rows_left(p.Sq, q0, FB_BQT);
        const int at = buf * FB_BQT * L::RS;
        __nv_bfloat16 *const dst[3] = {smem + L::q16_off + at, smem + L::q_off + at, smem + L::do_off + at};
        const __nv_bfloat16 *const src[3] = {q16b + q0 * L::DP, qb + q0 * L::DP, dob + q0 * L::DP};
        q_copier.template copy_n<3>(dst, src, valid);
        if (tid < FB_BQT / 2) { /* 16 pieces of 4 floats each for L, then for Δ */
            const int which = tid / (FB_BQT / 4), c = (tid % (FB_BQT / 4)) * 4;
            cu_cp_async16(&stats[(buf * 2 + which) * FB_BQT + c], (which ? delta : lse) + q0 + c, true);
        }
    };
    /* group 0: the block's K and V rows and query tile 0 */
    {
        const fb_copier<DK, L::RS, FB_BKV> k_copier(tid, L::DP);
        const int valid = cu_rows_left(p.Sk, k0, FB_BKV);
        const int64_t at = ((int64_t)bh * p.Sk + k0) * L::DP;
        __nv_bfloat16 *const dst[2] = {smem + L::k_off, smem + L::v_off};
        const __nv_bfloat16 *const src[2] = {fb_bits(p.k16) + at, p.v + at};
        k_copier.template copy_n<2>(dst, src, valid);
    }
    if (n_tiles > 0) queue_tile(0);
    cu_cp_async_commit();

    const int r0 = warp * 16;
    uint32_t ka[DK][4], va[DK][4]; /* this warp's 16 keys of K (fp16) and V as A fragments */
    const int64_t key0 = k0 + r0 + g, key1 = key0 + 8;
    /* ROLES 1: dk and dv of the whole head; more: dk holds this role's part of dK or dV */
    constexpr int NK = ROLES == 1 ? NS : NSO, NV = ROLES == 1 ? NS : 1;
    float dk[NK][4], dv[NV][4];
#pragma unroll
    for (int nd = 0; nd < NK; nd++) dk[nd][0] = dk[nd][1] = dk[nd][2] = dk[nd][3] = 0.0f;
#pragma unroll
    for (int nd = 0; nd < NV; nd++) dv[nd][0] = dv[nd][1] = dv[nd][2] = dv[nd][3] = 0.0f;

    for (int j = 0; j < n_tiles; j++) {
        if (j + 1 < n_tiles) { /* tile j+1 into the other buffer (free: the loop's end synchronised) */
            queue_tile(j + 1);
            cu_cp_async_commit();
            cu_cp_async_wait<1>();
        } else {
            cu_cp_async_wait<0>();
        }
        __syncthreads();
        if (j == 0) fb_warp_frags<DK>(ka, va, Ks, Vs, L::RS, r0);
        const int64_t q0 = q_lo + (int64_t)j * FB_BQT;
        const __half *Q16s = reinterpret_cast<const __half *>(smem + L::q16_off + (j & 1) * FB_BQT * L::RS);
        const __nv_bfloat16 *Qs = smem + L::q_off + (j & 1) * FB_BQT * L::RS;
        const __nv_bfloat16 *dOs = smem + L::do_off + (j & 1) * FB_BQT * L::RS;
        const float *lse_s = stats + (j & 1) * 2 * FB_BQT, *delta_s = lse_s + FB_BQT;
        /* Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: 16 keys x 64 queries, n-tile nt = queries nt·8 .. nt·8 + 7 */
        float s[FB_BQT / 8][4], dp[FB_BQT / 8][4];
        if (role_dk) {
            fb_tile_products<NS, FB_BQT / 8>(s, dp, ka, va, Q16s, dOs, L::RS);
        } else { /* a dV role: Sᵀ alone */
#pragma unroll
            for (int nt = 0; nt < FB_BQT / 8; nt++)
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
            cu_mma_scores<NS, FB_BQT / 8>(s, ka, Q16s, L::RS);
        }
        if (keys_masked || q0 + FB_BQT > p.Sq) /* tile mask */
            fb_dkv_tile<true>(s, dp, p, lse_s, delta_s, q0, key0, key1, t);
        else
            fb_dkv_tile<false>(s, dp, p, lse_s, delta_s, q0, key0, key1, t);
        /* dV += Pᵀ dO and dK += dSᵀ Q, the k dimension being the tile's queries */
        if constexpr (ROLES == 1) {
            cu_mma_c_by_rows<NS, FB_BQT / 8>(dv, s, dOs, L::RS);
            cu_mma_c_by_rows<NS, FB_BQT / 8>(dk, dp, Qs, L::RS);
        } else if (role_dk) {
            cu_mma_c_by_rows<NSO, FB_BQT / 8>(dk, dp, Qs + d0, L::RS);
        } else {
            cu_mma_c_by_rows<NSO, FB_BQT / 8>(dk, s, dOs + d0, L::RS);
        }
        __syncthreads(); /* tile j consumed: its buffer takes tile j+2 */
    }
    if (n_tiles == 0) cu_cp_async_wait<0>(); /* nothing read K and V: let their copies land anyway */

    const bool split = p.dk_part != NULL;
    const int64_t ldq = (int64_t)p.H * p.D, ldv = (int64_t)p.H * p.Dv;
    const int64_t part = ((int64_t)blockIdx.z * gridDim.y + bh) * p.Sk; /* first row of this block's partials */
    /* where dK (dV) goes: the split's partials (row stride DP) or the gradient itself */
    float *const kdst = !p.dk ? NULL
                        : split ? p.dk_part + part * L::DP
                                : p.dk + (int64_t)b * p.Sk * ldq + (int64_t)h * p.D;
    float *const vdst = !p.dv ? NULL
                        : split ? p.dv_part + part * L::DP
                                : p.dv + (int64_t)b * p.Sk * ldv + (int64_t)h * p.Dv;
    const int64_t kstride = split ? L::DP : ldq, vstride = split ? L::DP : ldv;
    if constexpr (ROLES == 1) {
        if (kdst) fb_store_keys<NS>(kdst, kstride, dk, 0, p.D, p.scale, key0, key1, p.Sk, t, split, p.accumulate);
        if (vdst) fb_store_keys<NS>(vdst, vstride, dv, 0, p.Dv, 1.0f, key0, key1, p.Sk, t, split, p.accumulate);
    } else if (role_dk) {
        fb_store_keys<NSO>(kdst, kstride, dk, d0, p.D, p.scale, key0, key1, p.Sk, t, split, p.accumulate);
    } else {
        fb_store_keys<NSO>(vdst, vstride, dk, d0, p.Dv, 1.0f, key0, key1, p.Sk, t, split, p.accumulate);
    }
}

/* grad[b, j, h·width + d] += (or =) Σ_z part[z][b·H + h][j][d] (z in order): kernel 2's split
 * partials, dK's (blockIdx.y 0, width D) and dV's (blockIdx.y 1, width Dv) in one launch; a NULL
 * gradient is skipped. */
struct fb_sum_params {
    float *grad[2];
    const float *part[2];
    int width[2];
    int64_t B, Sk;
    int H, DP, splits, accumulate;
};

__global__ void k_fb_sum_splits(const fb_sum_params p) {
    CU_PDL_ENTRY();
    float *grad = p.grad[blockIdx.y];
    const int width = p.width[blockIdx.y];
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, n = p.B * p.Sk * p.H * width;
    if (!grad || i >= n) return;
    const int d = (int)(i % width);
    const int64_t rest = i / width, h = rest % p.H, j = (rest / p.H) % p.Sk, b = rest / ((int64_t)p.H * p.Sk);
    const int64_t stride = p.B * p.H * p.Sk * p.DP; /* one split's partials */
    const float *src = p.part[blockIdx.y] + ((b * p.H + h) * p.Sk + j) * p.DP + d;
    float sum = 0.0f;
    for (int z = 0; z < p.splits; z++) sum += src[z * stride];
    fb_put(grad + i, sum, p.accumulate);
}

/* How many query ranges kernel 2 splits into: enough blocks for one per SM when the key blocks
 * alone are fewer, each range at least two query tiles (the pipeline's depth). */
static int fb_splits(int64_t key_blocks, int64_t Sq, int sms) {
    const int64_t q_tiles = (Sq + FB_BQT - 1) / FB_BQT;
    if (key_blocks >= sms || q_tiles < 4) return 1;
    int64_t want = (sms + key_blocks - 1) / key_blocks;
    if (want > q_tiles / 2) want = q_tiles / 2;
    const int64_t per = (q_tiles + want - 1) / want; /* query tiles per split */
    return (int)((q_tiles + per - 1) / per);
}

/* Blocks per SM the kernels may be built for: two (a 128-register cap) only for heads up to 48 wide,
 * SD's 40 (SD_FLASH_BWD_BLOCKS_PER_SM=2; wider heads would spill most of their fragments). Two
 * blocks' shared memory, 70 KiB each at D 40 (Q and K staged twice, in fp16 and bf16), fits an SM. */
template <int NS> struct fb_min_blocks {
    static constexpr int most = NS <= 6 ? 2 : 1;
};

/* How the kernels divide a head's gradients (NS 8-wide slices): up to FB_MAX_D (10 slices) one block
 * holds them whole; wider heads (SD's 160 at the 16x16 and 8x8 levels, FB_MAX_D_SPLIT) over PARTS
 * = 2 halves of NSO slices each, so that a warp's registers hold the scores' operands whole and one
 * half of one gradient (about 184 instead of 300): kernel 1 runs PARTS blocks per 128 queries,
 * kernel 2 ROLES = 2·PARTS per 128 keys (dK's halves and dV's). More blocks, each computing the
 * scores again: at those levels' 64 to 256 tokens the blocks were too few anyway. */
template <int NS> struct fb_parts {
    static constexpr int NSO = NS > 10 ? NS / 2 : NS;
    static constexpr int PARTS = NS / NSO;
    static constexpr int ROLES = PARTS == 1 ? 1 : 2 * PARTS;
};
/* fb_parts<NS>::ROLES for a run-time NS (20 is the one instantiation over 10 slices) */
static int fb_dkv_roles(int NS) { return NS > 10 ? fb_parts<20>::ROLES : 1; }

/* Kernel 1's blocks: 64 queries (4 warps) where twice the blocks of 128 would still leave no SM with
 * two (SD's 32x32 level at batch 1: 64 blocks of 128 queries per attention; the 16x16 and 8x8
 * levels), else 128 (8 warps): cu_flash_warps, the forward's rule. */
static int fb_dq_warps(int64_t Sq, int64_t blocks_per_query_block) {
    return cu_flash_warps((Sq + FB_BQ - 1) / FB_BQ * blocks_per_query_block);
}


template <int NS, int MINB> static sd_status launch_flash_bwd_blocks(const attn_bwd_params &p, int64_t B, int splits) {
    constexpr int DK = cu_head_slices<NS>::DK, NSO = fb_parts<NS>::NSO, PARTS = fb_parts<NS>::PARTS;
    static unsigned configured = 0; /* per device: the opt-in to more than 48 KiB of shared memory */
    const unsigned bit = 1u << (cu_cur()->ordinal & 31);
    if (!(configured & bit)) {
        CUDA_CHECK(cudaFuncSetAttribute(k_flash_bwd_dq<NS, NSO, MINB, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)fb_dq_smem<DK>::bytes));
        CUDA_CHECK(cudaFuncSetAttribute(k_flash_bwd_dq<NS, NSO, MINB, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)fb_dq_smem<DK, 64>::bytes));
        CUDA_CHECK(cudaFuncSetAttribute(k_flash_bwd_dkv<NS, NSO, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)fb_dkv_smem<DK>::bytes));
        configured |= bit;
    }
    if (fb_dq_warps(p.Sq, B * p.H * PARTS) == 4) {
        dim3 grid_q((unsigned)((p.Sq + 63) / 64 * PARTS), (unsigned)(B * p.H));
        constexpr size_t smem64 = fb_dq_smem<DK, 64>::bytes;
        CU_LAUNCH((k_flash_bwd_dq<NS, NSO, MINB, 4>), grid_q, 128, smem64, cu_cur()->stream)(p);
    } else {
        dim3 grid_q((unsigned)((p.Sq + FB_BQ - 1) / FB_BQ * PARTS), (unsigned)(B * p.H));
        CU_LAUNCH((k_flash_bwd_dq<NS, NSO, MINB, 8>), grid_q, FB_THREADS, fb_dq_smem<DK>::bytes, cu_cur()->stream)(p);
    }
    LAUNCH_CHECK("flash attention backward dq (fast)");
    if (!p.dk && !p.dv) return SD_OK;
    dim3 grid_k((unsigned)((p.Sk + FB_BKV - 1) / FB_BKV * fb_parts<NS>::ROLES), (unsigned)(B * p.H), (unsigned)splits);
    CU_LAUNCH((k_flash_bwd_dkv<NS, NSO, MINB>), grid_k, FB_THREADS, fb_dkv_smem<DK>::bytes, cu_cur()->stream)(p);
    LAUNCH_CHECK("flash attention backward dk dv (fast)");
    if (splits == 1) return SD_OK;
    fb_sum_params sp;
    sp.grad[0] = p.dk, sp.grad[1] = p.dv;
    sp.part[0] = p.dk_part, sp.part[1] = p.dv_part;
    sp.width[0] = p.D, sp.width[1] = p.Dv;
    sp.B = B, sp.Sk = p.Sk, sp.H = p.H, sp.DP = DK * 16, sp.splits = splits, sp.accumulate = p.accumulate;
    const int threads = 256;
    const int64_t n = B * p.Sk * p.H * (p.D > p.Dv ? p.D : p.Dv);
    CU_LAUNCH(k_fb_sum_splits, dim3((unsigned)((n + threads - 1) / threads), 2), threads, 0, cu_cur()->stream)(sp);
    LAUNCH_CHECK("flash attention backward dk dv splits");
    return SD_OK;
}

template <int NS> static sd_status launch_flash_bwd(const attn_bwd_params &p, int64_t B, int splits) {
    if constexpr (fb_min_blocks<NS>::most == 2)
        if (cu_cur()->flash_bwd_blocks_per_sm == 2) return launch_flash_bwd_blocks<NS, 2>(p, B, splits);
    return launch_flash_bwd_blocks<NS, 1>(p, B, splits);
}

/* The kernels' instantiations by head width (8-wide slices NS): 16, 32, 40, 48, 64, 80 and (heads
 * from 81 to FB_MAX_D_SPLIT, zero-padded) 160. */
static int fb_head_slices(int dmax) {
    return dmax <= 16 ? 2 : dmax <= 32 ? 4 : dmax <= 40 ? 5 : dmax <= 48 ? 6 : dmax <= 64 ? 8 : dmax <= 80 ? 10 : 20;
}

/* lse_fwd: the forward's L (cu_attention_keeps_lse or, fp16 inputs, cu_f16_attention_keeps_lse held
 * for it), or NULL; out: the forward's output.
 * q, k, v and out are F32, or fp16 with f16_inputs (the values a step storing fp16 saved). */
static sd_status flash_backward_fast(const void *q, const void *k, const void *v, const void *out, bool f16_inputs,
                                     const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq,
                                     int64_t Sk, int H, int D, int Dv, float scale, int causal, int accumulate,
                                     const float *lse_fwd) {
    const int NS = fb_head_slices(D > Dv ? D : Dv);
    const int DP = (NS + 1) / 2 * 16; /* the staged rows: 16-wide slices, zero-padded */
    const int64_t Sq_pad = (Sq + FB_BQT - 1) / FB_BQT * FB_BQT, BH = B * H;
    const int64_t dkv_blocks = (Sk + FB_BKV - 1) / FB_BKV * fb_dkv_roles(NS) * BH;
    const int splits = (dk || dv) ? fb_splits(dkv_blocks, Sq, cu_cur()->prop.multiProcessorCount) : 1;
    /* workspace: L and Δ, the six staged operands (q, k in fp16 and bf16, v, dO), kernel 2's
     * partials when split */
    const size_t stats = cu_align((size_t)(BH * Sq_pad) * sizeof(float));
    const size_t staged_q = cu_align((size_t)(BH * Sq * DP) * sizeof(__nv_bfloat16));
    const size_t staged_k = cu_align((size_t)(BH * Sk * DP) * sizeof(__nv_bfloat16));
    const size_t parts = splits > 1 ? cu_align((size_t)(splits * BH * Sk * DP) * sizeof(float)) : 0;
    char *ws = (char *)cu_workspace(2 * stats + 3 * staged_q + 3 * staged_k + 2 * parts);
    if (!ws) return SD_ERR_OOM;
    attn_bwd_params p;
    memset(&p, 0, sizeof p);
    p.lse = (float *)ws;
    p.delta = (float *)(ws + stats);
    char *at = ws + 2 * stats;
    __half *sq16 = (__half *)at;
    __nv_bfloat16 *sq = (__nv_bfloat16 *)(at + staged_q), *sdo = (__nv_bfloat16 *)(at + 2 * staged_q);
    at += 3 * staged_q;
    __half *sk16 = (__half *)at;
    __nv_bfloat16 *sk = (__nv_bfloat16 *)(at + staged_k), *sv = (__nv_bfloat16 *)(at + 2 * staged_k);
    at += 3 * staged_k;
    if (splits > 1) {
        p.dk_part = (float *)at;
        p.dv_part = (float *)(at + parts);
    }
    fb_stage_params st;
    memset(&st, 0, sizeof st);
    const int per16 = f16_inputs ? 8 : 4; /* source values per 16-byte piece */
    const int in16 = f16_inputs ? 1 : 0;
    const int q_vec = D % per16 == 0 && cu_aligned16(q), k_vec = D % per16 == 0 && cu_aligned16(k);
    st.job[0] = fb_stage_job{q, sq16, Sq, D, 1, q_vec, in16};
    st.job[1] = fb_stage_job{k, sk16, Sk, D, 1, k_vec, in16};
    st.job[2] = fb_stage_job{q, sq, Sq, D, 0, q_vec, in16};
    st.job[3] = fb_stage_job{k, sk, Sk, D, 0, k_vec, in16};
    st.job[4] = fb_stage_job{v, sv, Sk, Dv, 0, Dv % per16 == 0 && cu_aligned16(v), in16};
    st.job[5] = fb_stage_job{dout, sdo, Sq, Dv, 0, Dv % 4 == 0 && cu_aligned16(dout), 0};
    st.B = B, st.H = H, st.DP = DP;
    const int64_t most = BH * (Sq > Sk ? Sq : Sk) * (DP / 8);
    CU_LAUNCH(k_fb_stage, dim3((unsigned)((most + 255) / 256), FB_STAGE_JOBS), 256, 0, cu_cur()->stream)(st);
    LAUNCH_CHECK("flash attention backward: staging the operands (fast)");
    p.q16 = sq16, p.k16 = sk16;
    p.q = sq, p.k = sk, p.v = sv, p.dout = sdo;
    p.lse_fwd = lse_fwd;
    p.out = lse_fwd && !f16_inputs ? static_cast<const float *>(out) : NULL;
    p.out16 = lse_fwd && f16_inputs ? static_cast<const __half *>(out) : NULL;
    p.dq = dq, p.dk = dk, p.dv = dv;
    p.accumulate = accumulate;
    p.Sq = Sq, p.Sk = Sk, p.Sq_pad = Sq_pad, p.H = H, p.D = D, p.Dv = Dv;
    const int64_t q_tiles = Sq_pad / FB_BQT;
    p.q_per_split = (q_tiles + splits - 1) / splits * FB_BQT;
    p.scale = scale;
    p.scale_log2 = scale * FB_LOG2E;
    p.causal = causal;
    switch (NS) {
        case 2: return launch_flash_bwd<2>(p, B, splits);
        case 4: return launch_flash_bwd<4>(p, B, splits);
        case 5: return launch_flash_bwd<5>(p, B, splits);
        case 6: return launch_flash_bwd<6>(p, B, splits);
        case 8: return launch_flash_bwd<8>(p, B, splits);
        case 10: return launch_flash_bwd<10>(p, B, splits);
        default: return launch_flash_bwd<20>(p, B, splits);
    }
}

/* The shapes fast mode's flash backward serves (the others: exact mode's chunked path). The flash
 * kernels take the row maxima of the raw scores, which needs scale > 0 (1/√D always). Heads over
 * FB_MAX_D need their tiles' 210 KiB of shared memory per block (an sm_90 card's opt-in; others
 * take the chunked path). */
static bool flash_backward_shapes(int64_t B, int H, int D, int Dv, float scale) {
    const cu_state *s = cu_cur();
    const int dmax = D > Dv ? D : Dv;
    if (s->precision != SD_PRECISION_FAST || dmax > FB_MAX_D_SPLIT || B * H > 65535 || !(scale > 0.0f)) return false;
    constexpr int DK_WIDE = cu_head_slices<20>::DK;
    return dmax <= FB_MAX_D || (s->prop.sharedMemPerBlockOptin >= fb_dq_smem<DK_WIDE>::bytes &&
                                s->prop.sharedMemPerBlockOptin >= fb_dkv_smem<DK_WIDE>::bytes);
}

/* Gradients of an attention with no products (Sq or Sk 0): they stay, or become the empty sums. */
static sd_status empty_attention_backward(float *dq, float *dk, float *dv, int64_t B, int64_t Sq, int64_t Sk, int H,
                                          int D, int Dv, int accumulate) {
    if (accumulate) return SD_OK;
    const int64_t nk = Sk > 0 ? B * Sk * H : 0, nq = Sq > 0 ? B * Sq * H : 0;
    cudaStream_t st = cu_cur()->stream;
    if (dq && nq) CUDA_CHECK(cudaMemsetAsync(dq, 0, (size_t)(nq * D) * sizeof(float), st));
    if (dk && nk) CUDA_CHECK(cudaMemsetAsync(dk, 0, (size_t)(nk * D) * sizeof(float), st));
    if (dv && nk) CUDA_CHECK(cudaMemsetAsync(dv, 0, (size_t)(nk * Dv) * sizeof(float), st));
    return SD_OK;
}

/* The bytes of one of the maps path's two [H, chunk, Sk] buffers. */
static size_t maps_buffer_bytes(int64_t Sq, int64_t Sk, int H) {
    return cu_align((size_t)(H * rows_per_chunk(Sq, Sk, H) * Sk) * sizeof(float));
}

/* Exact mode and the heads flash_backward_shapes leaves out: the maps recomputed chunk by chunk in ws (2 ·
 * maps_buffer_bytes), rowsum(dP ⊙ P) from them (see the top comment); out and lse are not read. */
static sd_status maps_backward(const float *q, const float *k, const float *v, const float *dout, float *dq, float *dk,
                               float *dv, int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale,
                               int causal, int accumulate, char *ws) {
    const int64_t ldq = (int64_t)H * D, ldv = (int64_t)H * Dv;
    const int64_t chunk = rows_per_chunk(Sq, Sk, H);
    const size_t buf = maps_buffer_bytes(Sq, Sk, H);
    float *P = (float *)ws;          /* [H][nq][Sk] maps of the chunk */
    float *dP = (float *)(ws + buf); /* [H][nq][Sk] dP, then dS in place */
    for (int64_t b = 0; b < B; b++) {
        const float *qb = q + b * Sq * ldq, *kb = k + b * Sk * ldq, *vb = v + b * Sk * ldv;
        const float *dob = dout + b * Sq * ldv;
        float *dqb = dq ? dq + b * Sq * ldq : NULL, *dkb = dk ? dk + b * Sk * ldq : NULL;
        float *dvb = dv ? dv + b * Sk * ldv : NULL;
        for (int64_t q0 = 0; q0 < Sq; q0 += chunk) {
            const int64_t nq = Sq - q0 < chunk ? Sq - q0 : chunk, hs = nq * Sk;
            /* beta of the products into the outputs: dQ's chunks are disjoint rows, dK and dV sum
             * over the chunks (overwritten by the first when not accumulating) */
            const float beta_q = accumulate ? 1.0f : 0.0f, beta_kv = accumulate || q0 > 0 ? 1.0f : 0.0f;
            /* P = softmax(scale · Q_c Kᵀ) per head */
            CU_TRY(cu_gemm_rm(0, 1, nq, Sk, D, scale, qb + q0 * ldq, ldq, D, kb, ldq, D, 0.0f, P, Sk, hs, H));
            CU_TRY(cu_softmax_rows_offset(P, (int64_t)H * nq, nq, q0, Sk, causal));
            /* dV += Pᵀ dO_c */
            if (dvb)
                CU_TRY(cu_gemm_rm(1, 0, Sk, Dv, nq, 1.0f, P, Sk, hs, dob + q0 * ldv, ldv, Dv, beta_kv, dvb, ldv, Dv, H));
            if (!dqb && !dkb) continue;
            /* dP = dO_c Vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place */
            CU_TRY(cu_gemm_rm(0, 1, nq, Sk, Dv, 1.0f, dob + q0 * ldv, ldv, Dv, vb, ldv, Dv, 0.0f, dP, Sk, hs, H));
            CU_TRY(softmax_grad_rows(P, dP, dP, (int64_t)H * nq, nq, nq, 0, Sk));
            /* dQ_c += scale · dS K;  dK += scale · dSᵀ Q_c */
            if (dqb)
                CU_TRY(cu_gemm_rm(0, 0, nq, D, Sk, scale, dP, Sk, hs, kb, ldq, D, beta_q, dqb + q0 * ldq, ldq, D, H));
            if (dkb)
                CU_TRY(cu_gemm_rm(1, 0, Sk, D, nq, scale, dP, Sk, hs, qb + q0 * ldq, ldq, D, beta_kv, dkb, ldq, D, H));
        }
    }
    return SD_OK;
}

sd_status cu_attention_backward(const float *q, const float *k, const float *v, const float *out, const float *dout,
                                float *dq, float *dk, float *dv, int64_t B, int64_t Sq, int64_t Sk, int H, int D,
                                int Dv, float scale, int causal, int accumulate, const float *lse) {
    if (B <= 0 || (!dq && !dk && !dv)) return SD_OK;
    if (Sq <= 0 || Sk <= 0) return empty_attention_backward(dq, dk, dv, B, Sq, Sk, H, D, Dv, accumulate);
    if (flash_backward_shapes(B, H, D, Dv, scale))
        return flash_backward_fast(q, k, v, out, false, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal,
                                   accumulate, lse && out && cu_attention_keeps_lse(Sq, Sk, D, Dv, scale) ? lse : NULL);
    char *ws = (char *)cu_workspace(2 * maps_buffer_bytes(Sq, Sk, H));
    if (!ws) return SD_ERR_OOM;
    return maps_backward(q, k, v, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal, accumulate, ws);
}

/* The saved fp16 q, k and v widened to F32 in one launch (blockIdx.y: which), for the maps path:
 * cu_widen_f16 per tensor. */
struct widen3_params {
    const __half *x[3];
    float *y[3];
    int64_t n[3];
    int vec[3];
};

__global__ void k_widen3(const widen3_params p) {
    CU_PDL_ENTRY();
    cu_widen_f16(p.x[blockIdx.y], p.y[blockIdx.y], p.n[blockIdx.y], p.vec[blockIdx.y]);
}

int cu_f16_attention_backward_takes(int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale) {
    (void)B, (void)Sq, (void)Sk, (void)H, (void)D, (void)Dv, (void)scale;
    return 1;
}

/* The fp16 values a step storing fp16 saved. The flash kernels stage them as they are (fp16 q and k:
 * the forward's operands, so its scores and kept L hold bit for bit); the maps path (exact mode,
 * heads over FB_MAX_D_SPLIT) widens q, k and v in one launch into its workspace, beside the maps, and
 * never reads out: the widened path's result, bit for bit, with one launch instead of four. */
sd_status cu_f16_attention_backward(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, const sd_f16 *out,
                                    const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq,
                                    int64_t Sk, int H, int D, int Dv, float scale, int causal, int accumulate,
                                    const float *lse) {
    if (B <= 0 || (!dq && !dk && !dv)) return SD_OK;
    if (Sq <= 0 || Sk <= 0) return empty_attention_backward(dq, dk, dv, B, Sq, Sk, H, D, Dv, accumulate);
    if (!flash_backward_shapes(B, H, D, Dv, scale)) {
        widen3_params p;
        p.x[0] = cu_half(q), p.x[1] = cu_half(k), p.x[2] = cu_half(v);
        p.n[0] = B * Sq * H * D, p.n[1] = B * Sk * H * D, p.n[2] = B * Sk * H * Dv;
        size_t bytes[3], widened = 0;
        for (int i = 0; i < 3; i++) widened += bytes[i] = cu_align((size_t)p.n[i] * sizeof(float));
        char *ws = (char *)cu_workspace(widened + 2 * maps_buffer_bytes(Sq, Sk, H));
        if (!ws) return SD_ERR_OOM;
        int64_t most = 0;
        for (int i = 0; i < 3; i++) {
            p.y[i] = (float *)ws;
            ws += bytes[i];
            p.vec[i] = cu_narrowing_vec(p.y[i], p.x[i]);
            if (p.n[i] > most) most = p.n[i];
        }
        CU_LAUNCH(k_widen3, dim3(cu_blocks(most / 4 + 1, 256), 3), 256, 0, cu_cur()->stream)(p);
        LAUNCH_CHECK("attention backward: q, k, v widened");
        return maps_backward(p.y[0], p.y[1], p.y[2], dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal, accumulate,
                             ws);
    }
    return flash_backward_fast(q, k, v, out, true, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal, accumulate,
                               lse && out && cu_f16_attention_keeps_lse(D, Dv, scale) ? lse : NULL);
}

sd_status cu_attention_probs_backward(const float *q, const float *k, const float *probs, const float *dprobs,
                                      float *dq, float *dk, int64_t B, int64_t Sq, int64_t Sk, int H, int D,
                                      float scale) {
    if (B <= 0 || Sq <= 0 || Sk <= 0 || (!dq && !dk)) return SD_OK;
    const int64_t ldq = (int64_t)H * D;
    const int64_t chunk = rows_per_chunk(Sq, Sk, H);
    float *dS = (float *)cu_workspace((size_t)(H * chunk * Sk) * sizeof(float)); /* [H][nq][Sk] */
    if (!dS) return SD_ERR_OOM;
    for (int64_t b = 0; b < B; b++) {
        const float *qb = q + b * Sq * ldq, *kb = k + b * Sk * ldq;
        float *dqb = dq ? dq + b * Sq * ldq : NULL, *dkb = dk ? dk + b * Sk * ldq : NULL;
        for (int64_t q0 = 0; q0 < Sq; q0 += chunk) {
            const int64_t nq = Sq - q0 < chunk ? Sq - q0 : chunk, hs = nq * Sk;
            /* rows (b·H + h)·Sq + q0 + i of the maps, for h < H, i < nq */
            CU_TRY(softmax_grad_rows(probs, dprobs, dS, (int64_t)H * nq, nq, Sq, b * H * Sq + q0, Sk));
            if (dqb)
                CU_TRY(cu_gemm_rm(0, 0, nq, D, Sk, scale, dS, Sk, hs, kb, ldq, D, 1.0f, dqb + q0 * ldq, ldq, D, H));
            if (dkb)
                CU_TRY(cu_gemm_rm(1, 0, Sk, D, nq, scale, dS, Sk, hs, qb + q0 * ldq, ldq, D, 1.0f, dkb, ldq, D, H));
        }
    }
    return SD_OK;
}

sd_status cu_attention_apply_backward(const float *probs, const float *v, const float *dout, float *dprobs, float *dv,
                                      int64_t B, int64_t Sq, int64_t Sk, int H, int Dv) {
    /* out[b, :, h] = probs[b·H + h] · v[b, :, h]:
     *   dprobs[b·H + h] += dout[b, :, h] · v[b, :, h]ᵀ;  dv[b, :, h] += probs[b·H + h]ᵀ · dout[b, :, h] */
    const int64_t ldv = (int64_t)H * Dv, plane = Sq * Sk;
    for (int64_t b = 0; b < B; b++) {
        const float *pb = probs + b * H * plane, *vb = v + b * Sk * ldv, *dob = dout + b * Sq * ldv;
        if (dprobs)
            CU_TRY(cu_gemm_rm(0, 1, Sq, Sk, Dv, 1.0f, dob, ldv, Dv, vb, ldv, Dv, 1.0f, dprobs + b * H * plane, Sk, plane, H));
        if (dv) CU_TRY(cu_gemm_rm(1, 0, Sk, Dv, Sq, 1.0f, pb, Sk, plane, dob, ldv, Dv, 1.0f, dv + b * Sk * ldv, ldv, Dv, H));
    }
    return SD_OK;
}

/* The queries per block of the fast dQ kernel (backward) or the fp16 cp.async forward (device.h). */
extern "C" int sd_cuda_flash_query_block(int64_t Sq, int64_t B, int H, int D, int backward) {
    if (!backward) return cu_flash_forward_query_block(Sq, B, H);
    return 16 * fb_dq_warps(Sq, B * H * (fb_head_slices(D) > 10 ? fb_parts<20>::PARTS : 1));
}
