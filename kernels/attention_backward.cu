/* attention_backward.cu: gradients of the three attention ops.
 *
 *   S = scale · Q Kᵀ,  P = softmax(S),  O = P V
 *   dV += Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dQ += scale · dS K,
 *   dK += scale · dSᵀ Q
 *
 * attention_backward recomputes the maps (nothing is saved by the forward) one batch row and one
 * chunk of query rows at a time in the workspace (<= 128 MiB per buffer), with cuBLAS for the five
 * products (strided batches over heads, as the forward's maps path) and one warp-per-row kernel
 * for the softmax gradient. rowsum(dP ⊙ P) is taken from the recomputed maps rather than from
 * rowsum(dO ⊙ O) with the saved output: the same quantity, but consistent with the P actually
 * used, so the result does not depend on how `out` was rounded. A fused flash backward kernel
 * (no materialised chunk) is the next step for speed; this version is exact and bounded in memory.
 *
 * Every gradient accumulates (+=) into its output; a NULL output is skipped. */
#include "cuda_common.cuh"

#define BWD_CHUNK_BYTES ((size_t)128 << 20)

/* dS[r, j] = P[r, j] · (dP[r, j] − Σ_j' P[r, j'] dP[r, j']) for r < rows, with P and dP read from
 * rows src_row(r) = base_row + (r / rows_per_head) · head_rows + r mod rows_per_head of their
 * buffers, and dS written to row r (may be dP's own row: each lane reads an element before it
 * writes it). One warp per row. */
__global__ void k_softmax_grad_rows(const float *P, const float *dP, float *dS, int64_t rows, int64_t rows_per_head,
                                    int64_t head_rows, int64_t base_row, int64_t Sk) {
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

sd_status cu_attention_backward(const float *q, const float *k, const float *v, const float *out, const float *dout,
                                float *dq, float *dk, float *dv, int64_t B, int64_t Sq, int64_t Sk, int H, int D,
                                int Dv, float scale, int causal) {
    (void)out; /* rowsum(dP ⊙ P) is computed from the recomputed maps (see the top comment) */
    if (B <= 0 || Sq <= 0 || Sk <= 0 || (!dq && !dk && !dv)) return SD_OK;
    const int64_t ldq = (int64_t)H * D, ldv = (int64_t)H * Dv;
    const int64_t chunk = rows_per_chunk(Sq, Sk, H);
    const size_t buf = cu_align((size_t)(H * chunk * Sk) * sizeof(float));
    char *ws = (char *)cu_workspace(2 * buf);
    if (!ws) return SD_ERR_OOM;
    float *P = (float *)ws;          /* [H][nq][Sk] maps of the chunk */
    float *dP = (float *)(ws + buf); /* [H][nq][Sk] dP, then dS in place */
    for (int64_t b = 0; b < B; b++) {
        const float *qb = q + b * Sq * ldq, *kb = k + b * Sk * ldq, *vb = v + b * Sk * ldv;
        const float *dob = dout + b * Sq * ldv;
        float *dqb = dq ? dq + b * Sq * ldq : NULL, *dkb = dk ? dk + b * Sk * ldq : NULL;
        float *dvb = dv ? dv + b * Sk * ldv : NULL;
        for (int64_t q0 = 0; q0 < Sq; q0 += chunk) {
            const int64_t nq = Sq - q0 < chunk ? Sq - q0 : chunk, hs = nq * Sk;
            /* P = softmax(scale · Q_c Kᵀ) per head */
            CU_TRY(cu_gemm_rm(0, 1, nq, Sk, D, scale, qb + q0 * ldq, ldq, D, kb, ldq, D, 0.0f, P, Sk, hs, H));
            CU_TRY(cu_softmax_rows_offset(P, (int64_t)H * nq, nq, q0, Sk, causal));
            /* dV += Pᵀ dO_c */
            if (dvb)
                CU_TRY(cu_gemm_rm(1, 0, Sk, Dv, nq, 1.0f, P, Sk, hs, dob + q0 * ldv, ldv, Dv, 1.0f, dvb, ldv, Dv, H));
            if (!dqb && !dkb) continue;
            /* dP = dO_c Vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place */
            CU_TRY(cu_gemm_rm(0, 1, nq, Sk, Dv, 1.0f, dob + q0 * ldv, ldv, Dv, vb, ldv, Dv, 0.0f, dP, Sk, hs, H));
            CU_TRY(softmax_grad_rows(P, dP, dP, (int64_t)H * nq, nq, nq, 0, Sk));
            /* dQ_c += scale · dS K;  dK += scale · dSᵀ Q_c */
            if (dqb)
                CU_TRY(cu_gemm_rm(0, 0, nq, D, Sk, scale, dP, Sk, hs, kb, ldq, D, 1.0f, dqb + q0 * ldq, ldq, D, H));
            if (dkb)
                CU_TRY(cu_gemm_rm(1, 0, Sk, D, nq, scale, dP, Sk, hs, qb + q0 * ldq, ldq, D, 1.0f, dkb, ldq, D, H));
        }
    }
    return SD_OK;
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
