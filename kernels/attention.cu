/* attention.cu: multi-head attention forward.
 *
 * Layout (backend.h): q[B, Sq, H·D], k[B, Sk, H·D], v[B, Sk, H·Dv], out[B, Sq, H·Dv], heads
 * packed in channels (channel h·D + d), maps probs[B·H, Sq, Sk] (row b·H + h).
 *
 * Three paths:
 *  1. Fused flash attention (no map materialised), D, Dv <= 160: one block per (64 or 128
 *     queries, b, h) walks the keys in tiles with an online softmax (running max m, running sum
 *     l, output rescaled by exp(m_old − m_new)), so memory traffic is O(S·D), not O(S²).
 *       - exact mode: fp32 SIMT kernel, each thread a 4x4 block of scores and a 4 x D/8 block
 *         of the output, scores in the exp2 domain (scale·log2 e folded into the exponent's
 *         FFMA); like the fast kernels, the mask only in edge tiles and tile copies with offsets
 *         worked out once (its tile loop's SASS at D 40: 1,511 -> 701 instructions, 312 of them
 *         the products' FFMAs).
 *       - fast mode: mma.sync.m16n8k16 tensor-core kernel (FlashAttention-2 layout: each
 *         warp owns 16 query rows; the score accumulator fragments are re-packed in registers as
 *         the A operand of P·V), fp32 accumulation and fp32 softmax; templated over the storage
 *         type: F32 activations are rounded to bf16 in shared memory (bf16 MMA), fp16 activations
 *         (sd_f16_ops, cu_f16_attention, either mode) are loaded as they are and use the fp16
 *         MMA, the output rounded once to fp16. Long F32 attention (both sequences >= 512) is
 *         rounded to fp16 copies first and takes the fp16 kernel (flash_fast_f16_staged).
 *         Head dims go in 8-wide slices (cu_head_slices): SD's 40 ends its Q Kᵀ with an m16n8k8
 *         and has 5 output n-tiles, not 6 over the padding. These kernels are bound by the
 *         instructions they issue more than by the tensor cores, so the loop keeps to the
 *         arithmetic: the mask only in tiles that cross Sk or the causal diagonal, 2^(c·S − c·m)
 *         as one FFMA and one ex2.approx, tile copies with their offsets worked out once.
 *     Both take batch-row maps (q_rows, k_rows, v_rows): the self-attention injection of
 *     P2P/P2Plus (out[b] = attention(q[q_rows[b]], k[k_rows[b]], v[v_rows[b]])), exposed as
 *     sd_cuda_attention_rows (device.h).
 *  2. Maps (probs != NULL, the attention hook's capture/edit path): cuBLAS computes
 *     scale·Q Kᵀ straight into probs (a strided batch over heads: head h of q is at column
 *     offset h·D with leading dimension H·D), then a warp-per-row softmax; attention_apply is
 *     a second strided-batched GEMM probs·V.
 *  3. Large heads (D or Dv > 160: the VAE's single 512-wide head): the maps path in chunks of
 *     query rows through the workspace (<= 256 MiB of scores at a time). With fp16 activations,
 *     each batch row's q, k, v are widened to F32 in the same workspace first and out is rounded
 *     back.
 */
#include "cuda_common.cuh"

#include <limits.h>
#include <math.h>
#include <string.h>

#define LOG2E 1.4426950408889634f
#define MAPS_CHUNK_BYTES ((size_t)256 << 20)

/* T: the storage type of q, k, v and out, float (F32 activations) or __half (fp16 activations,
 * fast kernel only) */
template <typename T> struct attn_params {
    const T *q, *k, *v; /* q[*, Sq, H·D], k[*, Sk, H·D], v[*, Sk, H·Dv] */
    T *out;             /* [B, Sq, H·Dv] */
    int64_t Sq, Sk;
    int H, D, Dv;
    float scale_log2;       /* scale · log2(e): scores live in the exp2 domain */
    int causal;
    int use_rows;           /* 0: identity batch-row maps */
    float *lse;             /* fast kernels: [B·H][Sq], each row's log2-domain normaliser (fa_store_lse), or NULL */
    int q_rows[SD_ATTN_MAX_ROWS], k_rows[SD_ATTN_MAX_ROWS], v_rows[SD_ATTN_MAX_ROWS];
};

/* The head a flash block works on (blockIdx.y = b·H + h): q, k and v of head h in the batch rows
 * the maps give (P2Plus injection reads another row's queries, keys or values), its output in row
 * b, and the row strides. */
template <typename T> struct attn_head {
    const T *q, *k, *v;
    T *out;
    int64_t ldq, ldv;
    __device__ __forceinline__ explicit attn_head(const attn_params<T> &p) {
        const int b = blockIdx.y / p.H, h = blockIdx.y % p.H;
        const int qr = p.use_rows ? p.q_rows[b] : b, kr = p.use_rows ? p.k_rows[b] : b;
        const int vr = p.use_rows ? p.v_rows[b] : b;
        ldq = (int64_t)p.H * p.D;
        ldv = (int64_t)p.H * p.Dv;
        q = p.q + (int64_t)qr * p.Sq * ldq + (int64_t)h * p.D;
        k = p.k + (int64_t)kr * p.Sk * ldq + (int64_t)h * p.D;
        v = p.v + (int64_t)vr * p.Sk * ldv + (int64_t)h * p.Dv;
        out = p.out + (int64_t)b * p.Sq * ldv + (int64_t)h * p.Dv;
    }
};

/* ================================================================================================
 * Exact mode: fp32 SIMT flash kernel
 * ============================================================================================= */

#define EX_BQ 64       /* queries per block */
#define EX_BK 32       /* keys per tile */
#define EX_THREADS 128 /* 16 row groups (ty) x 8 column lanes (tx) */

/* ASYNC: the K and V tiles move by cp.async into two buffers each, tile j+1 in flight while the
 * block works on tile j (rows of exactly 8·DCH floats, 16-byte aligned operands; ex_async_ok), with
 * each thread's piece offsets worked out once (cu_tile_copier). Otherwise each tile is loaded
 * element by element between two barriers. The arithmetic is the same, so are the results, bit for
 * bit. */
template <int DCH, bool ASYNC> struct ex_smem {
    /* strides in floats: DS ≡ 4 (mod 8) makes the 8 float4 row reads of a quarter-warp hit
     * distinct bank groups; rows stay 16-byte aligned for float4 */
    static constexpr int DP = DCH * 8;
    static constexpr int DS = DP + 4;
    static constexpr int PS = EX_BK + 4;
    static constexpr int NBUF = ASYNC ? 2 : 1;
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + EX_BQ * DS;      /* [NBUF][BK][DS] */
    static constexpr int v_off = k_off + NBUF * EX_BK * DS; /* [NBUF][BK][DP] */
    static constexpr int p_off = v_off + NBUF * EX_BK * DP;
    static constexpr int floats = p_off + EX_BQ * PS;
    static constexpr size_t bytes = (size_t)floats * sizeof(float);
};

/* The online-softmax step of one key tile for a thread's 4 query rows (qi0 .. qi0 + 3) and 4 keys
 * (kj0 + 8j): raw scores s (masked to -inf where MASKED and the key is not valid for the row), row
 * maxima m of the raw scores over the row group's 8 lanes (scale > 0, so the scaled scores'
 * maximum is the scaled maximum), P = 2^(c·S − c·m) with c = scale·log2 e as one FFMA and one ex2
 * per score written to the thread's P cells (ps, row stride pstride, keys 8 apart), the running
 * sums l and the output accumulator o rescaled. Unmasked tiles compute no index. */
template <int DCH, bool MASKED>
__device__ __forceinline__ void ex_softmax_tile(float (&s)[4][4], float (&o)[4][DCH], float (&m)[4], float (&l)[4],
                                                float *ps, int pstride, const attn_params<float> &p, int64_t qi0,
                                                int64_t kj0) {
    const float c = p.scale_log2;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if constexpr (MASKED) {
                const int64_t kj = kj0 + 8 * j;
                if (!(kj < p.Sk && (!p.causal || kj <= qi0 + i))) s[i][j] = -INFINITY;
            }
            mx = fmaxf(mx, s[i][j]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
        const float m_new = fmaxf(m[i], mx);
        const float mu = m_new == -INFINITY ? 0.0f : m_new * c; /* a fully masked row so far: 0 */
        const float alpha = cu_exp2_ftz(fmaf(m[i], c, -mu));
        float rs = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float e = cu_exp2_ftz(fmaf(s[i][j], c, -mu));
            rs += e;
            ps[i * pstride + 8 * j] = e;
        }
        rs += __shfl_xor_sync(0xffffffffu, rs, 1);
        rs += __shfl_xor_sync(0xffffffffu, rs, 2);
        rs += __shfl_xor_sync(0xffffffffu, rs, 4);
        l[i] = l[i] * alpha + rs;
        m[i] = m_new;
#pragma unroll
        for (int d = 0; d < DCH; d++) o[i][d] *= alpha;
    }
}

template <int DCH, bool ASYNC>
__global__ void __launch_bounds__(EX_THREADS) k_flash_exact(const attn_params<float> p) {
    CU_PDL_ENTRY();
    typedef ex_smem<DCH, ASYNC> L;
    CU_DYNAMIC_SHARED(float4, smem_f4);
    float *smem = reinterpret_cast<float *>(smem_f4);
    float *Qs = smem + L::q_off; /* [BQ][DS] queries of this block */
    float *Ps = smem + L::p_off; /* [BQ][PS] probabilities of the tile */

    const int tid = threadIdx.x, ty = tid >> 3, tx = tid & 7;
    const int64_t q0 = (int64_t)blockIdx.x * EX_BQ;
    const attn_head<float> head(p);
    const float *qb = head.q, *kb = head.k, *vb = head.v;
    float *ob = head.out;
    const int64_t ldq = head.ldq, ldv = head.ldv;

    for (int idx = tid; idx < EX_BQ * L::DP; idx += EX_THREADS) {
        const int r = idx / L::DP, d = idx % L::DP;
        const int64_t qi = q0 + r;
        Qs[r * L::DS + d] = (qi < p.Sq && d < p.D) ? qb[qi * ldq + d] : 0.0f;
    }

    float o[4][DCH];
    float m[4], l[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < DCH; c++) o[i][c] = 0.0f;
    }

    int64_t k_end = p.Sk;
    if (p.causal && q0 + EX_BQ < k_end) k_end = q0 + EX_BQ; /* later keys are masked for every row here */
    const int n_tiles = (int)((k_end + EX_BK - 1) / EX_BK);

    /* ASYNC: rows of exactly 8·DCH floats (ex_async_ok), 2·DCH pieces of 16 bytes */
    typedef cu_tile_copier<L::DS, EX_THREADS, EX_BK, 2 * DCH, float> k_copier_t;
    typedef cu_tile_copier<L::DP, EX_THREADS, EX_BK, 2 * DCH, float> v_copier_t;
    const k_copier_t k_copier(tid, ASYNC ? (int)ldq : 0);
    const v_copier_t v_copier(tid, ASYNC ? (int)ldv : 0);
    if constexpr (ASYNC) {
        k_copier.copy(smem + L::k_off, kb, cu_rows_left(p.Sk, 0, EX_BK));
        v_copier.copy(smem + L::v_off, vb, cu_rows_left(p.Sk, 0, EX_BK));
        cu_cp_async_commit();
    }

    for (int j = 0; j < n_tiles; j++) {
        const int64_t k0 = (int64_t)j * EX_BK;
        const int buf = ASYNC ? (j & 1) : 0;
        float *Ks = smem + L::k_off + buf * EX_BK * L::DS; /* [BK][DS] key tile */
        float *Vs = smem + L::v_off + buf * EX_BK * L::DP; /* [BK][DP] value tile */
        if constexpr (ASYNC) {
            if (j + 1 < n_tiles) { /* tile j+1 into the other buffers (free: the loop's end synchronised) */
                const int nb = (j + 1) & 1;
                const int valid = cu_rows_left(p.Sk, k0 + EX_BK, EX_BK);
                k_copier.copy(smem + L::k_off + nb * EX_BK * L::DS, kb + (k0 + EX_BK) * ldq, valid);
                v_copier.copy(smem + L::v_off + nb * EX_BK * L::DP, vb + (k0 + EX_BK) * ldv, valid);
                cu_cp_async_commit();
                cu_cp_async_wait<1>();
            } else {
                cu_cp_async_wait<0>();
            }
            __syncthreads(); /* tile j visible to every thread (and, first time round, Qs) */
        } else {
            __syncthreads(); /* the previous tile's Ks / Vs / Ps are no longer read */
            for (int idx = tid; idx < EX_BK * L::DP; idx += EX_THREADS) {
                const int r = idx / L::DP, d = idx % L::DP;
                const int64_t kj = k0 + r;
                const bool in = kj < p.Sk;
                Ks[r * L::DS + d] = (in && d < p.D) ? kb[kj * ldq + d] : 0.0f;
                Vs[r * L::DP + d] = (in && d < p.Dv) ? vb[kj * ldv + d] : 0.0f;
            }
            __syncthreads();
        }

        /* scores: rows ty·4 + i, keys tx + 8j */
        float s[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) s[i][j] = 0.0f;
#pragma unroll 2
        for (int d = 0; d < L::DP; d += 4) {
            float4 qv[4], kv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) qv[i] = *reinterpret_cast<const float4 *>(&Qs[(ty * 4 + i) * L::DS + d]);
#pragma unroll
            for (int j = 0; j < 4; j++) kv[j] = *reinterpret_cast<const float4 *>(&Ks[(tx + 8 * j) * L::DS + d]);
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    s[i][j] = fmaf(qv[i].x, kv[j].x, s[i][j]);
                    s[i][j] = fmaf(qv[i].y, kv[j].y, s[i][j]);
                    s[i][j] = fmaf(qv[i].z, kv[j].z, s[i][j]);
                    s[i][j] = fmaf(qv[i].w, kv[j].w, s[i][j]);
                }
        }

        /* online softmax per row; the 8 lanes of a row group are consecutive lanes. Only a tile
         * that crosses Sk or the causal diagonal computes the mask (ex_softmax_tile) */
        if (p.causal || k0 + EX_BK > p.Sk) /* tile mask */
            ex_softmax_tile<DCH, true>(s, o, m, l, Ps + ty * 4 * L::PS + tx, L::PS, p, q0 + ty * 4, k0 + tx);
        else
            ex_softmax_tile<DCH, false>(s, o, m, l, Ps + ty * 4 * L::PS + tx, L::PS, p, q0 + ty * 4, k0 + tx);
        __syncthreads(); /* Ps complete */

        /* o[i][c] += Σ_key P[row i][key] · V[key][tx + 8c] */
#pragma unroll 2
        for (int kk = 0; kk < EX_BK; kk += 4) {
            float4 pv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) pv[i] = *reinterpret_cast<const float4 *>(&Ps[(ty * 4 + i) * L::PS + kk]);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                float vv[DCH];
#pragma unroll
                for (int c = 0; c < DCH; c++) vv[c] = Vs[(kk + u) * L::DP + tx + 8 * c];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float pi = u == 0 ? pv[i].x : (u == 1 ? pv[i].y : (u == 2 ? pv[i].z : pv[i].w));
#pragma unroll
                    for (int c = 0; c < DCH; c++) o[i][c] = fmaf(pi, vv[c], o[i][c]);
                }
            }
        }
        if constexpr (ASYNC) __syncthreads(); /* tile j and Ps consumed: the buffers take tile j+2 */
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t qi = q0 + ty * 4 + i;
        if (qi >= p.Sq) continue;
        const float inv = 1.0f / l[i];
#pragma unroll
        for (int c = 0; c < DCH; c++) {
            const int d = tx + 8 * c;
            if (d < p.Dv) ob[qi * ldv + d] = o[i][c] * inv;
        }
    }
}

template <int DCH, bool ASYNC> static sd_status launch_exact_kernel(const attn_params<float> &p, int64_t B) {
    const size_t smem = ex_smem<DCH, ASYNC>::bytes;
    static unsigned configured = 0; /* the opt-in is per kernel and per device: one bit per ordinal */
    const unsigned bit = 1u << (cu_cur()->ordinal & 31);
    if (!(configured & bit)) {
        CUDA_CHECK(cudaFuncSetAttribute(k_flash_exact<DCH, ASYNC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        configured |= bit;
    }
    dim3 grid((unsigned)((p.Sq + EX_BQ - 1) / EX_BQ), (unsigned)(B * p.H));
    CU_LAUNCH((k_flash_exact<DCH, ASYNC>), grid, EX_THREADS, smem, cu_cur()->stream)(p);
    LAUNCH_CHECK("flash attention (exact)");
    return SD_OK;
}

/* The exact kernel's instantiations by head width: 8·DCH floats, 16, 32, 40, 64, 80 and 160. */
static int ex_chunks(int dmax) {
    return dmax <= 16 ? 2 : dmax <= 32 ? 4 : dmax <= 40 ? 5 : dmax <= 64 ? 8 : dmax <= 80 ? 10 : 20;
}

/* Whether the exact kernel can move K and V tiles by cp.async: rows of exactly its 8·DCH floats
 * (D = Dv: SD's 40, 80, 160 and CLIP's 64; the copies' shape then a compile-time constant) at
 * 16-byte aligned addresses, row strides H·D < 2^31 / EX_BK. Other widths load element by element:
 * the same arithmetic, so the same results. */
static bool ex_async_ok(const attn_params<float> &p) {
    const uintptr_t align = (uintptr_t)p.k | (uintptr_t)p.v;
    return p.D == p.Dv && p.D == 8 * ex_chunks(p.D) && (align & 15) == 0 && (int64_t)p.H * p.D <= INT_MAX / EX_BK;
}

template <int DCH> static sd_status launch_exact(const attn_params<float> &p, int64_t B) {
    return ex_async_ok(p) ? launch_exact_kernel<DCH, true>(p, B) : launch_exact_kernel<DCH, false>(p, B);
}

static sd_status flash_exact(const attn_params<float> &p, int64_t B) {
    switch (ex_chunks(p.D > p.Dv ? p.D : p.Dv)) {
        case 2: return launch_exact<2>(p, B);
        case 4: return launch_exact<4>(p, B);
        case 5: return launch_exact<5>(p, B);
        case 8: return launch_exact<8>(p, B);
        case 10: return launch_exact<10>(p, B);
        default: return launch_exact<20>(p, B);
    }
}

/* ================================================================================================
 * Tensor-core flash kernel (mma.sync.m16n8k16, fp32 accumulate): fast mode's F32 path, and fp16
 * activations in either mode
 * ============================================================================================= */

#define FA_BQ 128      /* queries per block: 8 warps x 16 rows */
#define FA_BK 64       /* keys per tile */
#define FA_THREADS 256

/* The tensor-core operand type for storage type T, and the tile loads into it (a value past the
 * tensor's edge is 0):
 *  - float: rounded to bf16, which keeps fp32's range (F32 activations are not scaled for fp16);
 *  - __half: copied as stored, and the products run on fp16 tensor cores (P is rounded to fp16
 *    for P·V too: 3 more mantissa bits than bf16, and P in [0, 1] is in fp16's range). */
template <typename T> struct fa_operand;
template <> struct fa_operand<float> {
    typedef __nv_bfloat16 type;
    static __device__ __forceinline__ type load(const float *p, int64_t i, bool in) {
        return __float2bfloat16_rn(in ? p[i] : 0.0f);
    }
};
template <> struct fa_operand<__half> {
    typedef __half type;
    static __device__ __forceinline__ type load(const __half *p, int64_t i, bool in) {
        return in ? p[i] : __float2half_rn(0.0f);
    }
};

template <int DK> struct fa_smem {
    /* 16-bit elements (bf16 or fp16); row strides padded by 8 elements (16 bytes) so that the 8
     * row addresses of an ldmatrix (and a warp's fragment loads) fall in distinct banks */
    static constexpr int DP = DK * 16;
    static constexpr int QS = DP + 8;
    static constexpr int KS = DP + 8; /* K and V rows (V row-major, read by ldmatrix.trans) */
    static constexpr int q_off = 0;
    static constexpr int k_off = q_off + FA_BQ * QS;
    static constexpr int v_off = k_off + FA_BK * KS;
    static constexpr int elems = v_off + FA_BK * KS;
    static constexpr size_t bytes = (size_t)elems * sizeof(uint16_t);
};

/* The K/V tile this thread moves: element i of its share is tile element tid + i·FA_THREADS (row
 * r = key, column d = head dim; dims fastest, so a warp reads consecutive values of a row). */
template <typename T, int DK, int NL>
__device__ __forceinline__ void fa_fetch_kv(typename fa_operand<T>::type (&kr)[NL], typename fa_operand<T>::type (&vr)[NL],
                                            const T *kb, const T *vb, int64_t k0, int64_t ldq, int64_t ldv,
                                            const attn_params<T> &p, int tid) {
    typedef fa_smem<DK> L;
#pragma unroll
    for (int i = 0; i < NL; i++) {
        const int idx = tid + i * FA_THREADS, r = idx / L::DP, d = idx % L::DP;
        const int64_t kj = k0 + r;
        const bool in = idx < FA_BK * L::DP && kj < p.Sk;
        kr[i] = fa_operand<T>::load(kb, kj * ldq + d, in && d < p.D);
        vr[i] = fa_operand<T>::load(vb, kj * ldv + d, in && d < p.Dv);
    }
}

template <int DK, int NL, typename E>
__device__ __forceinline__ void fa_stash_kv(const E (&kr)[NL], const E (&vr)[NL], E *Ks, E *Vs, int tid) {
    typedef fa_smem<DK> L;
#pragma unroll
    for (int i = 0; i < NL; i++) {
        const int idx = tid + i * FA_THREADS, r = idx / L::DP, d = idx % L::DP;
        if (idx < FA_BK * L::DP) {
            Ks[r * L::KS + d] = kr[i];
            Vs[r * L::KS + d] = vr[i];
        }
    }
}

/* K/V tiles go through registers: the next tile's global loads are issued right after the current
 * one is in shared memory, so they are in flight while the warps multiply (one block of 8 warps per
 * SM leaves little else to hide their latency). Heads up to 48 wide: SD's 64x64 level (D 40, 4096
 * tokens), where most of the attention time is (8x the 32x32 level's arithmetic). ptxas, sm_90:
 * 250 registers at DK 3, no spills; at DK 4-5 (D 80) the prefetch spilled 8-48 bytes, so wider
 * heads load each tile just before using it. */
template <int DK> struct fa_pipeline {
    static constexpr bool on = DK <= 3;
    static constexpr int per_thread = on ? (FA_BK * fa_smem<DK>::DP + FA_THREADS - 1) / FA_THREADS : 1;
};

/* One key tile's online-softmax step for a warp's 16 query rows (rows row0 = r0 + g and row1 =
 * row0 + 8 of the C fragments; t = lane mod 4; the kernel's scalars by value, as a reference to
 * the parameter block would copy it to local memory): the raw scores sacc (16 rows x FA_BK keys)
 * are, when MASKED (a tile past Sk's end, or causal), masked; the running maxima m (of the raw
 * scores: scale > 0, so the scaled scores' maximum is the scaled maximum), this lane's share of
 * the running sums l and the output accumulator o are rescaled by 2^(c·(m_old − m_new)), and sacc
 * becomes P = 2^(c·S − c·m_new) with c = scale·log2 e, one FFMA and one ex2 per score. The
 * unmasked variant computes no key or query index: tiles wholly inside the keys are most of them,
 * and the mask's 64-bit comparisons, hoisted by the compiler ahead of the branch that skipped them,
 * were a tenth of the loop's instructions. */
template <int NS, bool MASKED>
__device__ __forceinline__ void fa_softmax_tile(float (&sacc)[8][4], float (&o)[NS][4], float &m0, float &m1,
                                                float &l0, float &l1, float scale_log2, int64_t Sk, int causal,
                                                int64_t k0, int64_t row0, int64_t row1, int t) {
    float mx0 = -INFINITY, mx1 = -INFINITY; /* row maxima, then over the quad (lanes 4g .. 4g + 3) */
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if constexpr (MASKED) {
                const int64_t kj = k0 + nt * 8 + 2 * t + (e & 1);
                const int64_t qi = e < 2 ? row0 : row1;
                if (!(kj < Sk && (!causal || kj <= qi))) sacc[nt][e] = -INFINITY;
            }
            if (e < 2) mx0 = fmaxf(mx0, sacc[nt][e]);
            else mx1 = fmaxf(mx1, sacc[nt][e]);
        }
    const float mn0 = fmaxf(m0, cu_quad_max(mx0)), mn1 = fmaxf(m1, cu_quad_max(mx1));
    /* the exponent's offset c·m_new, 0 while a row has seen only masked keys (all -inf) */
    const float mu0 = mn0 == -INFINITY ? 0.0f : mn0 * scale_log2, mu1 = mn1 == -INFINITY ? 0.0f : mn1 * scale_log2;
    const float a0 = cu_exp2_ftz(fmaf(m0, scale_log2, -mu0)), a1 = cu_exp2_ftz(fmaf(m1, scale_log2, -mu1));
    m0 = mn0;
    m1 = mn1;
    l0 *= a0;
    l1 *= a1;
#pragma unroll
    for (int nd = 0; nd < NS; nd++) {
        o[nd][0] *= a0;
        o[nd][1] *= a0;
        o[nd][2] *= a1;
        o[nd][3] *= a1;
    }
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
        sacc[nt][0] = cu_exp2_ftz(fmaf(sacc[nt][0], scale_log2, -mu0));
        sacc[nt][1] = cu_exp2_ftz(fmaf(sacc[nt][1], scale_log2, -mu0));
        sacc[nt][2] = cu_exp2_ftz(fmaf(sacc[nt][2], scale_log2, -mu1));
        sacc[nt][3] = cu_exp2_ftz(fmaf(sacc[nt][3], scale_log2, -mu1));
        l0 += sacc[nt][0] + sacc[nt][1];
        l1 += sacc[nt][2] + sacc[nt][3];
    }
}

/* fa_softmax_tile with the mask decided per tile: the masked variant only where a tile needs it. */
template <int NS>
__device__ __forceinline__ void fa_softmax_step(float (&sacc)[8][4], float (&o)[NS][4], float &m0, float &m1,
                                                float &l0, float &l1, float scale_log2, int64_t Sk, int causal,
                                                int64_t k0, int64_t row0, int64_t row1, int t) {
    if (causal || k0 + FA_BK > Sk) /* tile mask */
        fa_softmax_tile<NS, true>(sacc, o, m0, m1, l0, l1, scale_log2, Sk, causal, k0, row0, row1, t);
    else
        fa_softmax_tile<NS, false>(sacc, o, m0, m1, l0, l1, scale_log2, Sk, causal, k0, row0, row1, t);
}

/* Kept for the backward (p.lse, the tape's buffer): row i's L = c·m + log2 l, the log2 of
 * Σ_j 2^(c·S_ij) with m the row's raw maximum, c·m rounded as the softmax's exponent offset used
 * it. The flash backward then recomputes P = 2^(c·S − L) from the same fp16 products instead of
 * walking the keys once more for L (attention_backward.cu). l0, l1: the quad's whole sums. */
__device__ __forceinline__ void fa_store_lse(float *lse, int64_t Sq, float c, int64_t row0, int64_t row1, float m0,
                                             float m1, float l0, float l1, int t) {
    if (!lse || t != 0) return;
    lse += (int64_t)blockIdx.y * Sq;
    if (row0 < Sq) lse[row0] = m0 * c + log2f(l0);
    if (row1 < Sq) lse[row1] = m1 * c + log2f(l1);
}

/* NS: the head dims' 8-wide slices (cu_head_slices): SD's 40-wide heads take 5, so that no product
 * multiplies the 16-wide layout's 8 padding zeros. */
template <typename T, int NS>
__global__ void __launch_bounds__(FA_THREADS, 1) k_flash_fast(const attn_params<T> p) {
    CU_PDL_ENTRY();
    constexpr int DK = cu_head_slices<NS>::DK;
    typedef fa_smem<DK> L;
    typedef fa_operand<T> In;
    typedef typename In::type E;
    CU_DYNAMIC_SHARED(float4, smem_f4);
    E *smem = reinterpret_cast<E *>(smem_f4);
    E *Qs = smem + L::q_off; /* [BQ][QS] */
    E *Ks = smem + L::k_off; /* [BK][KS] */
    E *Vs = smem + L::v_off; /* [BK][KS] */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3; /* fragment row group and column pair */
    const int64_t q0 = (int64_t)blockIdx.x * FA_BQ;
    const attn_head<T> head(p);
    const T *qb = head.q, *kb = head.k, *vb = head.v;
    T *ob = head.out;
    const int64_t ldq = head.ldq, ldv = head.ldv;

    for (int idx = tid; idx < FA_BQ * L::DP; idx += FA_THREADS) {
        const int r = idx / L::DP, d = idx % L::DP;
        const int64_t qi = q0 + r;
        Qs[r * L::QS + d] = In::load(qb, qi * ldq + d, qi < p.Sq && d < p.D);
    }
    __syncthreads();

    /* this warp's 16 query rows as A fragments, one per 16-wide slice of the head dimension */
    const int r0 = warp * 16;
    uint32_t qa[DK][4];
#pragma unroll
    for (int kk = 0; kk < DK; kk++) cu_load_a_frag(qa[kk], Qs, L::QS, r0, kk);

    /* output accumulator: n-tile nd covers dims nd·8 .. nd·8 + 7; [0], [1] row g, [2], [3] row g + 8 */
    float o[NS][4];
#pragma unroll
    for (int nd = 0; nd < NS; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY; /* running max of rows g and g + 8 (quad-uniform) */
    float l0 = 0.0f, l1 = 0.0f;           /* this lane's share of the running sums */
    const int64_t row0 = q0 + r0 + g, row1 = row0 + 8;

    int64_t k_end = p.Sk;
    if (p.causal && q0 + FA_BQ < k_end) k_end = q0 + FA_BQ;

    typedef fa_pipeline<DK> Pipe;
    E kr[Pipe::per_thread], vr[Pipe::per_thread]; /* the next K/V tile, in flight (pipelined heads) */
    if constexpr (Pipe::on) fa_fetch_kv<T, DK>(kr, vr, kb, vb, 0, ldq, ldv, p, tid);

    for (int64_t k0 = 0; k0 < k_end; k0 += FA_BK) {
        __syncthreads(); /* previous tile consumed */
        if constexpr (Pipe::on) {
            fa_stash_kv<DK>(kr, vr, Ks, Vs, tid);
        } else {
            for (int idx = tid; idx < FA_BK * L::DP; idx += FA_THREADS) {
                const int r = idx / L::DP, d = idx % L::DP;
                const int64_t kj = k0 + r;
                const bool in = kj < p.Sk;
                Ks[r * L::KS + d] = In::load(kb, kj * ldq + d, in && d < p.D);
                Vs[r * L::KS + d] = In::load(vb, kj * ldv + d, in && d < p.Dv);
            }
        }
        __syncthreads();
        if constexpr (Pipe::on)
            if (k0 + FA_BK < k_end) fa_fetch_kv<T, DK>(kr, vr, kb, vb, k0 + FA_BK, ldq, ldv, p, tid);

        float sacc[8][4] = {};
        cu_mma_scores<NS, 8>(sacc, qa, Ks, L::KS); /* S = Q Kᵀ */
        fa_softmax_step<NS>(sacc, o, m0, m1, l0, l1, p.scale_log2, p.Sk, p.causal, k0, row0, row1, t);
        cu_mma_c_by_rows<NS, 8>(o, sacc, Vs, L::KS); /* O += P · V */
    }

    l0 = cu_quad_sum(l0);
    l1 = cu_quad_sum(l1);
    fa_store_lse(p.lse, p.Sq, p.scale_log2, row0, row1, m0, m1, l0, l1, t);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
    for (int nd = 0; nd < NS; nd++) { /* normalised in fp32, rounded once to T */
        const int d = nd * 8 + 2 * t;
        if (row0 < p.Sq) {
            if (d < p.Dv) cu_store(&ob[row0 * ldv + d], o[nd][0] * inv0);
            if (d + 1 < p.Dv) cu_store(&ob[row0 * ldv + d + 1], o[nd][1] * inv0);
        }
        if (row1 < p.Sq) {
            if (d < p.Dv) cu_store(&ob[row1 * ldv + d], o[nd][2] * inv1);
            if (d + 1 < p.Dv) cu_store(&ob[row1 * ldv + d + 1], o[nd][3] * inv1);
        }
    }
}

template <typename T, int NS> static sd_status launch_fast(const attn_params<T> &p, int64_t B) {
    const size_t smem = fa_smem<cu_head_slices<NS>::DK>::bytes;
    static unsigned configured = 0;
    const unsigned bit = 1u << (cu_cur()->ordinal & 31);
    if (!(configured & bit)) {
        CUDA_CHECK(cudaFuncSetAttribute(k_flash_fast<T, NS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        configured |= bit;
    }
    dim3 grid((unsigned)((p.Sq + FA_BQ - 1) / FA_BQ), (unsigned)(B * p.H));
    CU_LAUNCH((k_flash_fast<T, NS>), grid, FA_THREADS, smem, cu_cur()->stream)(p);
    LAUNCH_CHECK("flash attention (fast)");
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * fp16 activations with 16-byte rows: the same kernel with its memory path rebuilt (FlashAttention-2
 * style), for what fast mode's UNet forward runs (SD's heads are 40, 80 and 160 wide):
 *  - Q, K and V tiles move global -> shared memory by cp.async (16 bytes per copy, no registers on
 *    the way), K/V double-buffered: tile j+1 is in flight while the warps multiply tile j;
 *  - V stays row-major [key][dim] in shared memory, and the B fragments of both products come from
 *    ldmatrix (x4: two n-tiles per instruction; .trans for V), not from 32-bit loads; the generic
 *    kernel's transposed 16-bit stores of V conflicted 8 ways in the banks;
 *  - heads up to 48 wide keep two blocks per SM (16 warps instead of 8);
 *  - the key mask is applied only to the tiles that need it (a partial last tile, causal).
 * The arithmetic is the generic kernel's: the same products in the same order, so the same bits.
 * Needs D and Dv multiples of 8 and 16-byte aligned q, k, v (flash_fast checks; else the generic
 * kernel runs).
 * --------------------------------------------------------------------------------------------- */

template <int DK, int BQ = FA_BQ> struct fa_async_smem {
    /* halves; rows padded by 8 (16 bytes): ldmatrix's 8 row addresses then hit distinct banks */
    static constexpr int DP = DK * 16;
    static constexpr int RS = DP + 8; /* row stride of Q, K and V */
    static constexpr int q_off = 0;                          /* [BQ][RS] */
    static constexpr int k_off = q_off + BQ * RS;            /* [2][BK][RS] */
    static constexpr int v_off = k_off + 2 * FA_BK * RS;     /* [2][BK][RS], row-major */
    static constexpr int elems = v_off + 2 * FA_BK * RS;
    static constexpr size_t bytes = (size_t)elems * sizeof(__half);
    /* two blocks per SM up to DK 3 cap registers at 128: ptxas (CUDA 13.0, sm_90) used them all and
     * spilled 48 bytes at SD's D 40 until the eleventh session's leaner loop (124 registers, no
     * spill). One block per SM (MINB 1, SD_FLASH_BLOCKS_PER_SM=1) is the alternative the bench
     * measures beside it (fast+fa1: 6-8% slower on the H100 with the spill still there). */
    static constexpr int min_blocks = DK <= 3 ? 2 : 1;
};

/* WARPS: 8 (blocks of FA_BQ = 128 queries) or 4 (64 queries, where 128-query blocks would leave
 * SMs idle: fa_async_warps); MINB counts 8-warp blocks, so the register cap is the same for both. */
template <int NS, int MINB, int WARPS>
__global__ void __launch_bounds__(32 * WARPS, MINB * 8 / WARPS) k_flash_fast_async(const attn_params<__half> p) {
    CU_PDL_ENTRY();
    constexpr int DK = cu_head_slices<NS>::DK, BQ = 16 * WARPS, THREADS = 32 * WARPS;
    typedef fa_async_smem<DK, BQ> L;
    CU_DYNAMIC_SHARED(float4, smem_f4);
    __half *smem = reinterpret_cast<__half *>(smem_f4);
    __half *Qs = smem + L::q_off;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int64_t q0 = (int64_t)blockIdx.x * BQ;
    const attn_head<__half> head(p);
    const __half *qb = head.q, *kb = head.k, *vb = head.v;
    __half *ob = head.out;
    const int64_t ldq = head.ldq, ldv = head.ldv;

    /* the head-dim padding of Q and K (columns D .. DP) must be zeros, not stale bits: a NaN there
     * times Q's zero would reach every score. Nothing is copied there, so once is enough; V's
     * padding only feeds output columns that are never stored. */
    for (int i = tid; i < (BQ + 2 * FA_BK) * (L::DP - p.D); i += THREADS) {
        const int r = i / (L::DP - p.D), c = p.D + i % (L::DP - p.D);
        (r < BQ ? Qs[r * L::RS + c] : smem[L::k_off + (r - BQ) * L::RS + c]) = __float2half_rn(0.0f);
    }

    /* causal: the keys up to the end of the 128-query block these rows belong to, whatever BQ, so
     * that every row's online softmax walks the same tiles (a fully masked tile still rescales by
     * 2^(c·m − round(c·m)), which can move the last bit of L) as the generic kernel's and the flash
     * backward's */
    int64_t k_end = p.Sk;
    if (p.causal && (q0 / FA_BQ + 1) * FA_BQ < k_end) k_end = (q0 / FA_BQ + 1) * FA_BQ;
    const int n_tiles = (int)((k_end + FA_BK - 1) / FA_BK);

    /* group 0: Q and the first K/V tile. Rows are D = Dv = 8·NS halves (fa_async_ok): NS pieces, and
     * K and V share their row stride (H·D), so one copier's offsets serve both. */
    {
        const cu_tile_copier<L::RS, THREADS, BQ, NS, __half> q_copier(tid, (int)ldq);
        q_copier.copy(Qs, qb + q0 * ldq, cu_rows_left(p.Sq, q0, BQ));
    }
    const cu_tile_copier<L::RS, THREADS, FA_BK, NS, __half> kv_copier(tid, (int)ldq);
    /* K and V rows share their stride (D = Dv) and shared layout: one copier call moves both */
    auto queue_kv = [&](int64_t k0, int buf) {
        __half *const dst[2] = {smem + L::k_off + buf * FA_BK * L::RS, smem + L::v_off + buf * FA_BK * L::RS};
        const __half *const src[2] = {kb + k0 * ldq, vb + k0 * ldv};
        kv_copier.template copy_n<2>(dst, src, cu_rows_left(p.Sk, k0, FA_BK));
    };
    queue_kv(0, 0);
    cu_cp_async_commit();

    const int r0 = warp * 16;
    uint32_t qa[DK][4];
    float o[NS][4];
#pragma unroll
    for (int nd = 0; nd < NS; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const int64_t row0 = q0 + r0 + g, row1 = row0 + 8;
    /* ldmatrix row addresses: lane l gives row l mod 8 of matrix l / 8 */
    const int mi = lane >> 3, mr = lane & 7;

    for (int j = 0; j < n_tiles; j++) {
        const int64_t k0 = (int64_t)j * FA_BK;
        if (j + 1 < n_tiles) { /* tile j+1 into the other buffer (free: the loop's end synchronised) */
            queue_kv(k0 + FA_BK, (j + 1) & 1);
            cu_cp_async_commit();
            cu_cp_async_wait<1>(); /* all but the newest group: tile j (and Q) arrived */
        } else {
            cu_cp_async_wait<0>();
        }
        __syncthreads(); /* every thread's copies of tile j are visible */
        if (j == 0) {
            /* this warp's 16 query rows as A fragments: matrices (rows +0/+8) x (columns +0/+8) */
#pragma unroll
            for (int kk = 0; kk < DK; kk++)
                cu_ldmatrix_x4<false>(qa[kk], &Qs[(r0 + (mi & 1) * 8 + mr) * L::RS + kk * 16 + (mi >> 1) * 8]);
        }
        const __half *Ks = smem + L::k_off + (j & 1) * FA_BK * L::RS;
        const __half *Vs = smem + L::v_off + (j & 1) * FA_BK * L::RS;

        float sacc[8][4] = {};
        cu_mma_scores<NS, 8>(sacc, qa, Ks, L::RS); /* S = Q Kᵀ */
        fa_softmax_step<NS>(sacc, o, m0, m1, l0, l1, p.scale_log2, p.Sk, p.causal, k0, row0, row1, t);

        cu_mma_c_by_rows<NS, 8>(o, sacc, Vs, L::RS); /* O += P · V */
        __syncthreads(); /* tile j consumed: its buffer takes tile j+2 next iteration */
    }

    l0 = cu_quad_sum(l0);
    l1 = cu_quad_sum(l1);
    fa_store_lse(p.lse, p.Sq, p.scale_log2, row0, row1, m0, m1, l0, l1, t);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
    for (int nd = 0; nd < NS; nd++) { /* two neighbouring dims per store (D is a multiple of 8) */
        const int d = nd * 8 + 2 * t;
        if (d >= p.Dv) continue;
        if (row0 < p.Sq)
            *reinterpret_cast<__half2 *>(&ob[row0 * ldv + d]) = __floats2half2_rn(o[nd][0] * inv0, o[nd][1] * inv0);
        if (row1 < p.Sq)
            *reinterpret_cast<__half2 *>(&ob[row1 * ldv + d]) = __floats2half2_rn(o[nd][2] * inv1, o[nd][3] * inv1);
    }
}

template <int NS, int MINB, int WARPS>
static sd_status launch_fast_async_blocks(const attn_params<__half> &p, int64_t B) {
    constexpr int BQ = 16 * WARPS;
    const size_t smem = fa_async_smem<cu_head_slices<NS>::DK, BQ>::bytes;
    static unsigned configured = 0;
    const unsigned bit = 1u << (cu_cur()->ordinal & 31);
    if (!(configured & bit)) {
        CUDA_CHECK(cudaFuncSetAttribute(k_flash_fast_async<NS, MINB, WARPS>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        configured |= bit;
    }
    dim3 grid((unsigned)((p.Sq + BQ - 1) / BQ), (unsigned)(B * p.H));
    CU_LAUNCH((k_flash_fast_async<NS, MINB, WARPS>), grid, 32 * WARPS, smem, cu_cur()->stream)(p);
    LAUNCH_CHECK("flash attention (fast, fp16, cp.async)");
    return SD_OK;
}

/* 64-query blocks of 4 warps where twice as many blocks as 128-query ones would still leave no SM
 * with two (at batch 1 SD's 32x32 level has 64 blocks of 128 queries, the 16x16 level 16, and the
 * 8x8 level's 64 queries left half of each block's warps without rows): the SMs that were idle
 * take the other halves, each warp's rows computed as before, so the same bits. Where 128-query
 * blocks nearly fill the GPU already (the 32x32 level at batch 2: 128 of them), halving them would
 * only read every K and V tile twice as often. */
int cu_flash_warps(int64_t blocks_of_128) {
    return 2 * blocks_of_128 <= cu_cur()->prop.multiProcessorCount ? 4 : 8;
}

static int fa_async_warps(const attn_params<__half> &p, int64_t B) {
    return cu_flash_warps((p.Sq + FA_BQ - 1) / FA_BQ * B * p.H);
}

/* sd_cuda_flash_query_block's forward half: the cp.async kernel's rule (heads of 16, 32, 40, 48, 64,
 * 80 or 160 with aligned rows; the generic kernel always takes 128) */
int cu_flash_forward_query_block(int64_t Sq, int64_t B, int H) {
    return 16 * cu_flash_warps((Sq + FA_BQ - 1) / FA_BQ * B * H);
}

template <int NS, int MINB> static sd_status launch_fast_async_minb(const attn_params<__half> &p, int64_t B) {
    if (fa_async_warps(p, B) == 4) return launch_fast_async_blocks<NS, MINB, 4>(p, B);
    return launch_fast_async_blocks<NS, MINB, 8>(p, B);
}

template <int NS> static sd_status launch_fast_async(const attn_params<__half> &p, int64_t B) {
    constexpr int MINB = fa_async_smem<cu_head_slices<NS>::DK>::min_blocks;
    if (MINB == 2 && cu_cur()->flash_blocks_per_sm == 1) return launch_fast_async_minb<NS, 1>(p, B);
    return launch_fast_async_minb<NS, MINB>(p, B);
}

/* The 8-wide head-dim slices (cu_head_slices) a fast kernel is instantiated with for heads up to
 * dmax wide: 16, 32, 40, 48, 64, 80 and 160. */
static int fa_slices(int dmax) {
    return dmax <= 16 ? 2 : dmax <= 32 ? 4 : dmax <= 40 ? 5 : dmax <= 48 ? 6 : dmax <= 64 ? 8 : dmax <= 80 ? 10 : 20;
}

/* Whether the cp.async kernel can read these operands: q, k and v rows of exactly its NS whole
 * 16-byte pieces (D = Dv = 8·NS: SD's 40, 80 and 160; the tile copies' shape is then a compile-time
 * constant) at 16-byte aligned addresses (every head offset h·D and row stride H·D a multiple of 8
 * halves). Other widths take the generic kernel: the same products, so the same bits. */
static bool fa_async_ok(const attn_params<__half> &p) {
    const uintptr_t align = (uintptr_t)p.q | (uintptr_t)p.k | (uintptr_t)p.v | (uintptr_t)p.out;
    return p.D == p.Dv && p.D == 8 * fa_slices(p.D) && (align & 15) == 0 && (int64_t)p.H * p.D <= INT_MAX / FA_BQ;
}

/* The kernels' instantiations by head width: fa_slices. */
template <typename T> static sd_status flash_fast(const attn_params<T> &p, int64_t B) {
    const int ns = fa_slices(p.D > p.Dv ? p.D : p.Dv);
    if constexpr (sizeof(T) == 2) {
        if (fa_async_ok(p)) {
            switch (ns) {
                case 2: return launch_fast_async<2>(p, B);
                case 4: return launch_fast_async<4>(p, B);
                case 5: return launch_fast_async<5>(p, B);
                case 6: return launch_fast_async<6>(p, B);
                case 8: return launch_fast_async<8>(p, B);
                case 10: return launch_fast_async<10>(p, B);
                default: return launch_fast_async<20>(p, B);
            }
        }
    }
    switch (ns) {
        case 2: return launch_fast<T, 2>(p, B);
        case 4: return launch_fast<T, 4>(p, B);
        case 5: return launch_fast<T, 5>(p, B);
        case 6: return launch_fast<T, 6>(p, B);
        case 8: return launch_fast<T, 8>(p, B);
        case 10: return launch_fast<T, 10>(p, B);
        default: return launch_fast<T, 20>(p, B);
    }
}

#define FLASH_MAX_D 160

/* ================================================================================================
 * Softmax over materialised rows
 * ============================================================================================= */

__global__ void k_softmax_rows(float *x, int64_t rows, int64_t rows_per_head, int64_t q_offset, int64_t Sk,
                               int causal) {
    CU_PDL_ENTRY();
    /* x: [rows, Sk], one warp per row; the row's query index is q_offset + row mod rows_per_head;
     * causal rows keep columns j <= query (the rest become 0), as the CPU's softmax_row does */
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    float *r = x + row * Sk;
    int64_t valid = Sk;
    if (causal) {
        const int64_t qi = q_offset + row % rows_per_head;
        valid = qi + 1 < Sk ? qi + 1 : Sk;
    }
    float mx = -INFINITY;
    for (int64_t j = lane; j < valid; j += 32) mx = fmaxf(mx, r[j]);
    mx = cu_warp_max(mx);
    float sum = 0.0f;
    for (int64_t j = lane; j < valid; j += 32) sum += expf(r[j] - mx);
    sum = cu_warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int64_t j = lane; j < Sk; j += 32) r[j] = j < valid ? expf(r[j] - mx) * inv : 0.0f;
}

static sd_status softmax_rows(float *x, int64_t rows, int64_t rows_per_head, int64_t q_offset, int64_t Sk, int causal) {
    if (rows <= 0 || Sk <= 0) return SD_OK;
    const int per_block = 8;
    CU_LAUNCH(k_softmax_rows, (unsigned)((rows + per_block - 1) / per_block), per_block * 32, 0, cu_cur()->stream)(
        x, rows, rows_per_head, q_offset, Sk, causal);
    LAUNCH_CHECK("softmax rows");
    return SD_OK;
}

sd_status cu_softmax_rows_offset(float *x, int64_t rows, int64_t rows_per_head, int64_t q_offset, int64_t Sk,
                                 int causal) {
    return softmax_rows(x, rows, rows_per_head, q_offset, Sk, causal);
}

/* ================================================================================================
 * Materialised paths
 * ============================================================================================= */

/* scores[h][i][j] = scale · q_b[i, h] · k_b[j, h] for one batch row and all heads (i < nq rows
 * starting at query q_start): a strided batch over heads. qb, kb: that batch row's q and k. */
static sd_status scores_one_batch(const float *qb, const float *kb, float *scores, int64_t q_start, int64_t nq,
                                  int64_t Sk, int H, int D, float scale, int64_t head_stride) {
    const int64_t ldq = (int64_t)H * D;
    return cu_gemm_rm(0, 1, nq, Sk, D, scale, qb + q_start * ldq, ldq, D, kb, ldq, D, 0.0f, scores, Sk, head_stride, H);
}

/* out_b[i, h] = Σ_j P[h][i][j] v_b[j, h] for rows [q_start, q_start + nq) of one batch row. */
static sd_status apply_one_batch(const float *P, const float *vb, float *ob, int64_t q_start, int64_t nq, int64_t Sk,
                                 int H, int Dv, int64_t head_stride) {
    const int64_t ldv = (int64_t)H * Dv;
    return cu_gemm_rm(0, 0, nq, Dv, Sk, 1.0f, P, Sk, head_stride, vb, ldv, Dv, 0.0f, ob + q_start * ldv, ldv, Dv, H);
}

/* Query rows per chunk of the unfused path: the scores of H heads x chunk rows x Sk keys stay
 * within MAPS_CHUNK_BYTES. */
static int64_t chunk_rows(int64_t Sq, int64_t Sk, int H) {
    int64_t chunk = (int64_t)(MAPS_CHUNK_BYTES / sizeof(float)) / ((int64_t)H * Sk);
    if (chunk < 1) chunk = 1;
    if (chunk > Sq) chunk = Sq;
    return chunk;
}

static size_t chunk_scores_bytes(int64_t chunk, int64_t Sk, int H) { return (size_t)(H * chunk * Sk) * sizeof(float); }

/* Unfused attention for one output batch row, query rows in chunks of `chunk` (chunk_rows)
 * through `scores`, chunk_scores_bytes of workspace. The caller takes the workspace, so that it can
 * carve its own buffers out of the same request (a second request may move the workspace). */
static sd_status attention_chunked_one(const float *qb, const float *kb, const float *vb, float *ob, int64_t Sq,
                                       int64_t Sk, int H, int D, int Dv, float scale, int causal, float *scores,
                                       int64_t chunk) {
    for (int64_t q0 = 0; q0 < Sq; q0 += chunk) {
        const int64_t nq = Sq - q0 < chunk ? Sq - q0 : chunk;
        CU_TRY(scores_one_batch(qb, kb, scores, q0, nq, Sk, H, D, scale, nq * Sk));
        CU_TRY(softmax_rows(scores, (int64_t)H * nq, nq, q0, Sk, causal));
        CU_TRY(apply_one_batch(scores, vb, ob, q0, nq, Sk, H, Dv, nq * Sk));
    }
    return SD_OK;
}

sd_status cu_attention_apply(const float *probs, const float *v, float *out, int64_t B, int64_t Sq, int64_t Sk,
                             int H, int Dv) {
    /* out[b, i, h·Dv + d] = Σ_j probs[b·H + h, i, j] · v[b, j, h·Dv + d] */
    for (int64_t b = 0; b < B; b++)
        CU_TRY(apply_one_batch(probs + b * H * Sq * Sk, v + b * Sk * H * Dv, out + b * Sq * H * Dv, 0, Sq, Sk, H, Dv,
                               Sq * Sk));
    return SD_OK;
}

/* ================================================================================================
 * Entry points
 * ============================================================================================= */

static sd_status check_dims(int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv) {
    if (B < 0 || Sq < 0 || Sk <= 0 || H <= 0 || D <= 0 || Dv <= 0)
        return sd_fail(SD_ERR_SHAPE, "cuda attention: B %lld, Sq %lld, Sk %lld, H %d, D %d, Dv %d", (long long)B,
                       (long long)Sq, (long long)Sk, H, D, Dv);
    if (B * H > 65535)
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda attention: batch x heads = %lld over 65535", (long long)(B * H));
    return SD_OK;
}

/* The fused kernels' parameters, identity batch-row maps. */
template <typename T>
static attn_params<T> flash_params(const T *q, const T *k, const T *v, T *out, int64_t Sq, int64_t Sk, int H, int D,
                                   int Dv, float scale, int causal) {
    attn_params<T> p;
    memset(&p, 0, sizeof p);
    p.q = q;
    p.k = k;
    p.v = v;
    p.out = out;
    p.Sq = Sq;
    p.Sk = Sk;
    p.H = H;
    p.D = D;
    p.Dv = Dv;
    p.scale_log2 = scale * LOG2E;
    p.causal = causal;
    return p;
}

/* Fast mode on F32 activations (a gradient step's forward, a controller's F32 forward): long
 * attention runs the fp16 cp.async kernel on fp16 copies of q, k and v made in the workspace, its
 * output widened back. The kernel that reads F32 directly rounds each tile to bf16 element by
 * element between barriers: 53 TFLOP/s for 4096x4096 D40 in a gradient step on an H200, against
 * 108 for the fp16 kernel in a plain forward. fp16 keeps three more mantissa bits than the bf16 it
 * replaces, and SD's attention inputs are the tensors fast mode already stores in fp16 elsewhere.
 * Short sequences (cross-attention's 77 keys, the 16x16 and 8x8 levels) keep the direct kernel:
 * there the four conversions would cost about what the attention does. Batch-row maps (P2Plus
 * injection) keep it too: their source rows are not counted here. */
#define F16_STAGE_MIN_LEN 512
static bool f16_staging_shapes(int64_t Sq, int64_t Sk, int D, int Dv) {
    return Sq >= F16_STAGE_MIN_LEN && Sk >= F16_STAGE_MIN_LEN && D % 8 == 0 && Dv % 8 == 0;
}
static bool f16_staging_ok(const attn_params<float> &p) {
    return !p.use_rows && f16_staging_shapes(p.Sq, p.Sk, p.D, p.Dv);
}

/* Whether cu_attention, given an lse buffer, fills it: fast mode's fp16-staged flash path, whose
 * scores the flash backward recomputes bit for bit from fp16 copies of q and k (the one rule both
 * sides follow). */
bool cu_attention_keeps_lse(int64_t Sq, int64_t Sk, int D, int Dv, float scale) {
    return cu_f16_attention_keeps_lse(D, Dv, scale) && f16_staging_shapes(Sq, Sk, D, Dv);
}

/* fp16 activations run the fp16 flash kernels at every length (cu_f16_attention), so their L is the
 * backward's at every length too: short sequences (cross-attention's 77 keys, the 16x16 and 8x8
 * levels) keep it as well, and the flash backward skips its first pass over the keys there. */
bool cu_f16_attention_keeps_lse(int D, int Dv, float scale) {
    return cu_cur()->precision == SD_PRECISION_FAST && D <= FLASH_MAX_D && Dv <= FLASH_MAX_D && scale > 0.0f;
}

static sd_status flash_fast_f16_staged(const attn_params<float> &p, int64_t B) {
    const int64_t nq = B * p.Sq * p.H * p.D, nk = B * p.Sk * p.H * p.D, nv = B * p.Sk * p.H * p.Dv;
    const int64_t no = B * p.Sq * p.H * p.Dv;
    const size_t q_bytes = cu_align((size_t)nq * sizeof(sd_f16)), k_bytes = cu_align((size_t)nk * sizeof(sd_f16));
    const size_t v_bytes = cu_align((size_t)nv * sizeof(sd_f16)), o_bytes = cu_align((size_t)no * sizeof(sd_f16));
    char *ws = (char *)cu_workspace(q_bytes + k_bytes + v_bytes + o_bytes);
    if (!ws) return SD_ERR_OOM;
    sd_f16 *q16 = (sd_f16 *)ws, *k16 = (sd_f16 *)(ws + q_bytes), *v16 = (sd_f16 *)(ws + q_bytes + k_bytes);
    sd_f16 *o16 = (sd_f16 *)(ws + q_bytes + k_bytes + v_bytes);
    CU_TRY(cu_f16_from_f32(p.q, q16, nq));
    CU_TRY(cu_f16_from_f32(p.k, k16, nk));
    CU_TRY(cu_f16_from_f32(p.v, v16, nv));
    attn_params<__half> h;
    memset(&h, 0, sizeof h);
    h.q = cu_half(q16);
    h.k = cu_half(k16);
    h.v = cu_half(v16);
    h.out = cu_half(o16);
    h.Sq = p.Sq;
    h.Sk = p.Sk;
    h.H = p.H;
    h.D = p.D;
    h.Dv = p.Dv;
    h.scale_log2 = p.scale_log2;
    h.causal = p.causal;
    h.lse = p.lse;
    CU_TRY(flash_fast(h, B));
    return cu_f16_to_f32(o16, p.out, no);
}

/* lse: filled where cu_attention_keeps_lse says (else left alone); NULL with batch-row maps */
static sd_status run_attention(const float *q, const float *k, const float *v, float *out, int64_t B,
                               const int32_t *q_rows, const int32_t *k_rows, const int32_t *v_rows, int64_t Sq,
                               int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse) {
    if (B == 0 || Sq == 0) return SD_OK;
    const int use_rows = q_rows || k_rows || v_rows;
    const int fast = cu_cur()->precision == SD_PRECISION_FAST;
    if (D <= FLASH_MAX_D && Dv <= FLASH_MAX_D && scale > 0.0f) {
        attn_params<float> p = flash_params(q, k, v, out, Sq, Sk, H, D, Dv, scale, causal);
        p.use_rows = use_rows;
        if (use_rows)
            for (int64_t b = 0; b < B; b++) {
                p.q_rows[b] = q_rows ? q_rows[b] : (int)b;
                p.k_rows[b] = k_rows ? k_rows[b] : (int)b;
                p.v_rows[b] = v_rows ? v_rows[b] : (int)b;
            }
        if (!fast) return flash_exact(p, B);
        if (!f16_staging_ok(p)) return flash_fast(p, B);
        p.lse = lse;
        return flash_fast_f16_staged(p, B);
    }
    /* large heads (and a non-positive scale: the flash kernels take the row maxima of the raw
     * scores): unfused, one output batch row at a time */
    const int64_t ldq = (int64_t)H * D, ldv = (int64_t)H * Dv;
    const int64_t chunk = chunk_rows(Sq, Sk, H);
    float *scores = (float *)cu_workspace(chunk_scores_bytes(chunk, Sk, H));
    if (!scores) return SD_ERR_OOM;
    for (int64_t b = 0; b < B; b++) {
        const int64_t qr = q_rows ? q_rows[b] : b, kr = k_rows ? k_rows[b] : b, vr = v_rows ? v_rows[b] : b;
        CU_TRY(attention_chunked_one(q + qr * Sq * ldq, k + kr * Sk * ldq, v + vr * Sk * ldv, out + b * Sq * ldv, Sq,
                                     Sk, H, D, Dv, scale, causal, scores, chunk));
    }
    return SD_OK;
}

sd_status cu_attention(const float *q, const float *k, const float *v, float *out, float *probs, int64_t B,
                       int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse) {
    CU_TRY(check_dims(B, Sq, Sk, H, D, Dv));
    if (probs) {
        /* the maps, [B·H, Sq, Sk]; out is left untouched (the hook may edit the maps first) */
        const int64_t ldq = (int64_t)H * D;
        for (int64_t b = 0; b < B; b++)
            CU_TRY(scores_one_batch(q + b * Sq * ldq, k + b * Sk * ldq, probs + b * H * Sq * Sk, 0, Sq, Sk, H, D, scale,
                                    Sq * Sk));
        return softmax_rows(probs, B * H * Sq, Sq, 0, Sk, causal);
    }
    return run_attention(q, k, v, out, B, NULL, NULL, NULL, Sq, Sk, H, D, Dv, scale, causal, lse);
}

extern "C" sd_status sd_cuda_attention_rows(const float *q, const float *k, const float *v, float *out, int64_t B_out,
                                            const int32_t *q_rows, const int32_t *k_rows, const int32_t *v_rows,
                                            int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale, int causal) {
    if (!cu_cur()) return sd_fail(SD_ERR_INTERNAL, "sd_cuda_attention_rows: no CUDA backend is open");
    CU_TRY(check_dims(B_out, Sq, Sk, H, D, Dv));
    if ((q_rows || k_rows || v_rows) && B_out > SD_ATTN_MAX_ROWS)
        return sd_fail(SD_ERR_UNSUPPORTED, "attention with row maps: %lld output rows, at most %d", (long long)B_out,
                       SD_ATTN_MAX_ROWS);
    const int32_t *maps[3] = {q_rows, k_rows, v_rows};
    for (int m = 0; m < 3; m++)
        for (int64_t b = 0; maps[m] && b < B_out; b++)
            if (maps[m][b] < 0)
                return sd_fail(SD_ERR_ARG, "attention with row maps: %s_rows[%lld] = %d is negative",
                               m == 0 ? "q" : (m == 1 ? "k" : "v"), (long long)b, maps[m][b]);
    return run_attention(q, k, v, out, B_out, q_rows, k_rows, v_rows, Sq, Sk, H, D, Dv, scale, causal, NULL);
}

/* ------------------------------------------------------------------------------------------------
 * fp16 activations (sd_f16_ops.attention): the fused tensor-core kernel on fp16 q, k, v, out; large
 * heads through the F32 unfused path on widened copies
 * --------------------------------------------------------------------------------------------- */

/* Large heads (D or Dv > FLASH_MAX_D: the VAE's 512-wide head; or a non-positive scale) with fp16 activations: one batch
 * row at a time, q, k, v widened to F32, the unfused F32 path, out rounded back to fp16. The
 * staging buffers and the scores are carved out of one workspace request, since a second request
 * may grow, and so move, the workspace. */
static sd_status f16_attention_unfused(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, sd_f16 *out, int64_t B,
                                       int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale, int causal) {
    const int64_t nq = Sq * H * D, nk = Sk * H * D, nv = Sk * H * Dv, no = Sq * H * Dv; /* per batch row */
    const int64_t chunk = chunk_rows(Sq, Sk, H);
    const size_t q_bytes = cu_align((size_t)nq * sizeof(float)), k_bytes = cu_align((size_t)nk * sizeof(float));
    const size_t v_bytes = cu_align((size_t)nv * sizeof(float)), o_bytes = cu_align((size_t)no * sizeof(float));
    char *ws = (char *)cu_workspace(q_bytes + k_bytes + v_bytes + o_bytes + chunk_scores_bytes(chunk, Sk, H));
    if (!ws) return SD_ERR_OOM;
    float *qf = (float *)ws;                                         /* [Sq, H·D] */
    float *kf = (float *)(ws + q_bytes);                             /* [Sk, H·D] */
    float *vf = (float *)(ws + q_bytes + k_bytes);                   /* [Sk, H·Dv] */
    float *of = (float *)(ws + q_bytes + k_bytes + v_bytes);         /* [Sq, H·Dv] */
    float *scores = (float *)(ws + q_bytes + k_bytes + v_bytes + o_bytes); /* [H, chunk, Sk] */
    for (int64_t b = 0; b < B; b++) {
        CU_TRY(cu_f16_to_f32(q + b * nq, qf, nq));
        CU_TRY(cu_f16_to_f32(k + b * nk, kf, nk));
        CU_TRY(cu_f16_to_f32(v + b * nv, vf, nv));
        CU_TRY(attention_chunked_one(qf, kf, vf, of, Sq, Sk, H, D, Dv, scale, causal, scores, chunk));
        CU_TRY(cu_f16_from_f32(of, out + b * no, no));
    }
    return SD_OK;
}

/* lse: filled where cu_f16_attention_keeps_lse says (at lengths where cu_attention_keeps_lse holds
 * too, as cu_attention's fp16-staged path fills it: the same kernels on the same fp16 values) */
sd_status cu_f16_attention(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, sd_f16 *out, int64_t B, int64_t Sq,
                           int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse) {
    CU_TRY(check_dims(B, Sq, Sk, H, D, Dv));
    if (B == 0 || Sq == 0) return SD_OK;
    if (D <= FLASH_MAX_D && Dv <= FLASH_MAX_D && scale > 0.0f) {
        /* the fp16 tensor-core kernel in either precision mode: its products are exact in fp32 and
         * accumulate in fp32, so it loses little beyond the fp16 storage itself (the exact SIMT
         * kernel reads F32 only) */
        attn_params<__half> p =
            flash_params(cu_half(q), cu_half(k), cu_half(v), cu_half(out), Sq, Sk, H, D, Dv, scale, causal);
        if (lse && cu_f16_attention_keeps_lse(D, Dv, scale)) p.lse = lse;
        return flash_fast(p, B);
    }
    return f16_attention_unfused(q, k, v, out, B, Sq, Sk, H, D, Dv, scale, causal);
}
