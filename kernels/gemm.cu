/* gemm.cu: linear layers and the row-major GEMM helper the attention paths use.
 *
 * cuBLAS is column-major; a row-major matrix X[r, c] with leading dimension ld is, read
 * column-major, Xᵀ with the same ld. So the row-major C = op(A)·op(B) is computed as the
 * column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: the operands swap places and keep their transpose flags.
 *
 * Precision: exact mode uses CUBLAS_COMPUTE_32F with the handle in CUBLAS_DEFAULT_MATH (plain
 * fp32 FMA kernels, no TF32); fast mode uses the state's fast compute type
 * (CUBLAS_COMPUTE_32F_FAST_16BF by default: inputs rounded to bf16 for the tensor cores, fp32
 * accumulation and output).
 *
 * Linear forward goes through cuBLASLt with the bias fused as an epilogue (one pass over y
 * instead of two) and a residual, when the caller has one, as C with beta = 1 (D = A·B + C + bias:
 * a transformer's skip connection without an add's pass over three tensors). A plan (descriptors
 * + the heuristic's algorithm) is cached per shape, pointer alignment, data types and precision;
 * when cuBLASLt offers no algorithm the call falls back to cublasGemmEx plus a bias kernel. With
 * SD_GEMM_ALGO=tune, fast mode's plans time the heuristic's first LT_TUNE_CANDIDATES algorithms on
 * their first call and keep the fastest (lt_tune).
 *
 * fp16 activations (cu_f16_linear, fast mode's forward): x, w, b and y are CUDA_R_16F in the same
 * plans, with CUBLAS_COMPUTE_32F whatever the precision mode (halves go to the tensor cores as
 * they are, products are summed in fp32; the FAST_* compute types are for fp32 data), and the
 * bias epilogue reads a half bias (D's type, cuBLASLt's default) before y's only rounding. */
#include "cuda_common.cuh"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static cublasComputeType_t compute_type(const cu_state *s) {
    return s->precision == SD_PRECISION_FAST ? s->fast_gemm : CUBLAS_COMPUTE_32F;
}

static sd_status check_int(const char *what, int64_t v) {
    if (v < 0 || v > INT_MAX)
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda gemm: %s = %lld does not fit cuBLAS's 32-bit sizes", what, (long long)v);
    return SD_OK;
}

sd_status cu_gemm_rm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, int64_t strideA, const float *B, int64_t ldb, int64_t strideB,
                     float beta, float *C, int64_t ldc, int64_t strideC, int64_t batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return SD_OK;
    cu_state *s = cu_cur();
    if (K <= 0) {
        /* C = beta · C: no product to add */
        if (beta == 1.0f) return SD_OK;
        return sd_fail(SD_ERR_INTERNAL, "cuda gemm with K = 0 and beta %g", (double)beta);
    }
    CU_TRY(check_int("M", M));
    CU_TRY(check_int("N", N));
    CU_TRY(check_int("K", K));
    CU_TRY(check_int("lda", lda));
    CU_TRY(check_int("ldb", ldb));
    CU_TRY(check_int("ldc", ldc));
    CU_TRY(check_int("batch", batch));
    /* column-major: Cᵀ[N, M] = op(B)ᵀ[N, K] · op(A)ᵀ[K, M] */
    const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, op_first, op_second, (int)N, (int)M, (int)K, &alpha, B, CUDA_R_32F,
                                            (int)ldb, (long long)strideB, A, CUDA_R_32F, (int)lda, (long long)strideA,
                                            &beta, C, CUDA_R_32F, (int)ldc, (long long)strideC, (int)batch,
                                            compute_type(s), CUBLAS_GEMM_DEFAULT));
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * cuBLASLt plans for y[M, N] = x[M, K] · w[N, K]ᵀ + b[N]
 * --------------------------------------------------------------------------------------------- */

/* SD_GEMM_ALGO=tune: how many of the heuristic's algorithms a fast-mode linear's plan times on its
 * first call (cu_tune_timer), keeping the fastest.
 * cuBLASLt's first choice is a model's guess; on small-N shapes such as SD's 8192x320 projections
 * its tiles can leave part of the SMs idle where another tiling or a split K would not. */
#define LT_TUNE_CANDIDATES 8

struct cu_lt_plan {
    int64_t M, K, N;
    cudaDataType_t type;     /* of x and w: CUDA_R_32F (cu_linear) or CUDA_R_16F (cu_f16_linear, cu_f16w_linear) */
    cudaDataType_t out_type; /* of y, the residual and the bias: the same, or CUDA_R_32F (cu_f16w_linear) */
    int has_bias;
    int align;      /* the smallest alignment (bytes, <= 256) among x, w, y and the residual */
    int bias_align; /* the bias pointer's (the heuristic reads it from the pointer set at build) */
    cublasComputeType_t compute;
    int usable; /* 0: cuBLASLt had no algorithm, use the cublasGemmEx fallback */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    /* SD_GEMM_ALGO=tune (lt_tune): the heuristic's other candidates, timed on the plan's first call */
    cublasLtMatmulAlgo_t candidates[LT_TUNE_CANDIDATES];
    int n_candidates; /* 0 when not tuning (algo is the heuristic's first) */
    int tuned;
};

/* Down to 2 bytes: an fp16 pointer may sit at any even address (fp32 ones are 4-byte aligned). */
static int ptr_align(const void *p) {
    const uintptr_t v = (uintptr_t)p;
    int a = 256;
    while (a > 2 && (v % (uintptr_t)a) != 0) a >>= 1;
    return a;
}

/* "fp32", "fp16", or "fp16 -> fp32" (fp16 operands, F32 output) for messages. */
static const char *lt_types_name(cudaDataType_t type, cudaDataType_t out_type) {
    if (type != CUDA_R_16F) return "fp32";
    return out_type == CUDA_R_16F ? "fp16" : "fp16 -> fp32";
}

static void plan_destroy(cu_lt_plan *p) {
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    memset(p, 0, sizeof *p);
}

extern "C" void sd_cuda_gemm_plan_counts(int *plans, int *tuned) {
    const cu_state *s = cu_cur();
    int n = 0, t = 0;
    for (int i = 0; s && s->lt_plans && i < s->n_lt_plans; i++) {
        if (s->lt_plans[i].M < 0) continue; /* a failed plan's slot */
        n++;
        t += s->lt_plans[i].tuned && s->lt_plans[i].n_candidates > 1;
    }
    if (plans) *plans = n;
    if (tuned) *tuned = t;
}

void cu_lt_release(cu_state *s) {
    if (!s->lt_plans) return;
    for (int i = 0; i < s->n_lt_plans; i++) plan_destroy(&s->lt_plans[i]);
    free(s->lt_plans);
    s->lt_plans = NULL;
    s->n_lt_plans = 0;
}

/* Builds descriptors and asks the heuristic for one algorithm; a plan without one is still
 * returned (usable = 0) so the fallback decision is cached too. */
static sd_status plan_build(cu_state *s, cu_lt_plan *p, const void *b) {
    /* The heuristic should honour the bias pointer's alignment, but has been seen to pick kernels
     * that assume 16 bytes and then fault (PyTorch met this): a less aligned bias (never a weight,
     * which cudaMalloc aligns to 256) takes the plain GEMM + bias kernel instead. */
    if (p->has_bias && p->bias_align < 16) {
        p->usable = 0;
        return SD_OK;
    }
    /* In cuBLASLt's column-major terms: D[N, M] = op(A) · B with A = w stored K×N (ld K) and
     * transposed, B = x stored K×M (ld K), D = y stored N×M (ld N); the bias spans D's N rows and
     * has D's type (BIAS_DATA_TYPE left at its default). */
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    const uint32_t epilogue = p->has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, p->compute, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    if (p->has_bias)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, p->type, (uint64_t)p->K, (uint64_t)p->N, p->K));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, p->type, (uint64_t)p->K, (uint64_t)p->M, p->K));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, p->out_type, (uint64_t)p->N, (uint64_t)p->M, p->N));
    cublasLtMatmulPreference_t pref = NULL;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = s->lt_ws_bytes;
    const uint32_t al = (uint32_t)p->align;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al);
    if (st != CUBLAS_STATUS_SUCCESS) {
        cublasLtMatmulPreferenceDestroy(pref);
        return cu_fail_cublas(st, __FILE__, __LINE__, "cublasLtMatmulPreferenceSetAttribute");
    }
    /* tuning (fast mode only: exact mode keeps one reproducible choice) asks for several */
    const int tune = s->gemm_algo == SD_GEMM_ALGO_TUNE && s->precision == SD_PRECISION_FAST;
    cublasLtMatmulHeuristicResult_t results[LT_TUNE_CANDIDATES];
    memset(results, 0, sizeof results);
    int returned = 0;
    st = cublasLtMatmulAlgoGetHeuristic(s->lt, p->desc, p->a, p->b, p->c, p->c, pref, tune ? LT_TUNE_CANDIDATES : 1,
                                        results, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    p->usable = st == CUBLAS_STATUS_SUCCESS && returned > 0 && results[0].state == CUBLAS_STATUS_SUCCESS;
    if (p->usable) {
        p->algo = results[0].algo;
        for (int i = 0; tune && i < returned && i < LT_TUNE_CANDIDATES; i++)
            if (results[i].state == CUBLAS_STATUS_SUCCESS) p->candidates[p->n_candidates++] = results[i].algo;
    } else /* said once per shape, as a refused matmul is: a descriptor bug would only cost speed */
        sd_info("cuBLASLt has no algorithm for the %s linear layer %lldx%lld -> %lld (%s); it runs as cublasGemmEx + "
                "a bias kernel", lt_types_name(p->type, p->out_type), (long long)p->M, (long long)p->K,
                (long long)p->N, st != CUBLAS_STATUS_SUCCESS ? cublasGetStatusString(st) : "heuristic returned none");
    return SD_OK;
}

static sd_status plan_get(cu_state *s, cudaDataType_t type, cudaDataType_t out_type, int64_t M, int64_t K, int64_t N,
                          const void *x, const void *w, const void *b, const void *r, const void *y, cu_lt_plan **out) {
    int align = ptr_align(x);
    const int aw = ptr_align(w), ay = ptr_align(y), ar = r ? ptr_align(r) : 256, bias_align = b ? ptr_align(b) : 0;
    if (aw < align) align = aw;
    if (ay < align) align = ay;
    if (ar < align) align = ar;
    const cublasComputeType_t compute = type == CUDA_R_16F ? CUBLAS_COMPUTE_32F : compute_type(s);
    const int has_bias = b != NULL;
    for (int i = 0; i < s->n_lt_plans; i++) {
        cu_lt_plan *p = &s->lt_plans[i];
        if (p->M == M && p->K == K && p->N == N && p->type == type && p->out_type == out_type &&
            p->has_bias == has_bias && p->align == align &&
            p->bias_align == bias_align && p->compute == compute) {
            *out = p;
            return SD_OK;
        }
    }
    if (!s->lt_plans) {
        s->lt_plans = (cu_lt_plan *)calloc(CU_LT_CACHE, sizeof(cu_lt_plan));
        if (!s->lt_plans) return sd_fail(SD_ERR_OOM, "out of host memory for cuBLASLt plans");
    }
    int slot = s->n_lt_plans;
    if (slot >= CU_LT_CACHE) { /* full: recycle a slot (different shapes than a model has) */
        slot = (int)((unsigned)(M * 131 + N * 31 + K) % CU_LT_CACHE);
        plan_destroy(&s->lt_plans[slot]);
    } else {
        s->n_lt_plans++;
    }
    cu_lt_plan *p = &s->lt_plans[slot];
    memset(p, 0, sizeof *p);
    p->M = M;
    p->K = K;
    p->N = N;
    p->type = type;
    p->out_type = out_type;
    p->has_bias = has_bias;
    p->align = align;
    p->bias_align = bias_align;
    p->compute = compute;
    sd_status st = plan_build(s, p, b);
    if (st != SD_OK) {
        plan_destroy(p);
        p->M = -1; /* never matches */
        return st;
    }
    *out = p;
    return SD_OK;
}

/* SD_GEMM_LOG=1: one line per tuned plan on stderr (every candidate's time and the choice). */
static int lt_log_on(void) {
    static int on = -1;
    return cu_env_flag("SD_GEMM_LOG", &on);
}

/* SD_GEMM_ALGO=tune: times the plan's candidates on this call's operands and keeps the fastest in
 * p->algo. The timing runs write a scratch D (allocated for the purpose: the op workspace may hold
 * the caller's operands, and y may be the residual C, which must stay unread-after-write), so y is
 * untouched; C is read as the call reads it. */
static sd_status lt_tune(cu_state *s, cu_lt_plan *p, const void *x, const void *w, const void *c_in, float beta) {
    p->tuned = 1;
    if (p->n_candidates < 2) return SD_OK;
    const size_t d_bytes = (size_t)(p->M * p->N) * (p->out_type == CUDA_R_16F ? 2 : 4);
    void *d = NULL;
    cu_tune_timer timer;
    if (timer.init() != cudaSuccess || cudaMalloc(&d, d_bytes) != cudaSuccess) {
        /* no events or no room for the scratch: the heuristic's choice stays */
        (void)cudaGetLastError();
        return SD_OK;
    }
    float ms[LT_TUNE_CANDIDATES];
    int best = 0;
    const float one = 1.0f;
    for (int i = 0; i < p->n_candidates; i++) {
        ms[i] = timer.time(s, [&] {
            return cublasLtMatmul(s->lt, p->desc, &one, w, p->a, x, p->b, &beta, c_in ? c_in : d, p->c, d, p->c,
                                  &p->candidates[i], s->lt_ws, s->lt_ws_bytes, s->stream) == CUBLAS_STATUS_SUCCESS;
        });
        if (ms[i] >= 0.0f && (ms[best] < 0.0f || ms[i] < ms[best])) best = i;
    }
    CUDA_CHECK(cudaFree(d)); /* (synchronises: the timing runs are done with it) */
    if (ms[best] >= 0.0f) p->algo = p->candidates[best];
    if (lt_log_on()) {
        char line[512];
        int len = snprintf(line, sizeof line, "cublasLt: tuned %s linear %lldx%lld -> %lld:", lt_types_name(p->type, p->out_type),
                           (long long)p->M, (long long)p->K, (long long)p->N);
        for (int i = 0; i < p->n_candidates && len > 0 && len < (int)sizeof line; i++)
            len += snprintf(line + len, sizeof line - len, " %.4f", ms[i]);
        fprintf(stderr, "%s ms -> candidate %d (0: the heuristic's first)\n", line, best);
    }
    return SD_OK;
}

/* y[M, N] = x[M, K] · w[N, K]ᵀ + r[M, N] + b[N] (b, r may be NULL; r may be y) through the cached
 * cuBLASLt plan: x and w of `type`, y, r and b of `out_type`. *ran = 0 when this shape has no
 * usable algorithm: the caller runs its fallback. */
static sd_status lt_linear(cu_state *s, cudaDataType_t type, cudaDataType_t out_type, const void *x, const void *w,
                           const void *b, const void *r, void *y, int64_t M, int64_t K, int64_t N, int *ran) {
    *ran = 0;
    cu_lt_plan *p = NULL;
    CU_TRY(plan_get(s, type, out_type, M, K, N, x, w, b, r, y, &p));
    if (!p->usable) return SD_OK;
    if (b) CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b));
    /* the scale type is CUDA_R_32F for both data types; C (the residual) has D's layout */
    const float one = 1.0f, beta = r ? 1.0f : 0.0f;
    if (p->n_candidates && !p->tuned && !s->capturing) CU_TRY(lt_tune(s, p, x, w, r, beta));
    const cublasStatus_t st = cublasLtMatmul(s->lt, p->desc, &one, w, p->a, x, p->b, &beta, r ? r : y, p->c, y, p->c,
                                             &p->algo, s->lt_ws, s->lt_ws_bytes, s->stream);
    if (st == CUBLAS_STATUS_SUCCESS) {
        *ran = 1;
        return SD_OK;
    }
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE)
        return cu_fail_cublas(st, __FILE__, __LINE__, "cublasLtMatmul (linear)");
    p->usable = 0; /* remember: this shape goes the plain way */
    /* said once per shape: a wrong descriptor would otherwise only show as lost speed */
    sd_info("cuBLASLt refused the %s linear layer %lldx%lld -> %lld (%s); it runs as cublasGemmEx + a bias "
            "kernel from now on", lt_types_name(type, out_type), (long long)M, (long long)K, (long long)N,
            st == CUBLAS_STATUS_NOT_SUPPORTED ? "not supported" : "invalid value");
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Linears of a few rows: the time embedding's MLP and the resnets' time_emb_proj (M = the batch)
 *
 * cuBLASLt gives y[2, 1280] = x[2, 1280] · w[1280, 1280]ᵀ a tile grid of ten blocks, each walking
 * all of K: 24 us per call on an H100 (the fourth GPU session's profile, 13 such calls per UNet
 * call), for 3.3 MB of weights that the card reads in about 1.5 us. Here one warp per output
 * column streams its weight row 16 bytes per lane and keeps up to LINEAR_FEW_ROWS sums, so the
 * whole grid reads the weights once, at the memory's rate. Arithmetic as the GEMM's: fp32
 * products and sums (x rounded to fp16 first where the weight is fp16 and x F32, as
 * cu_f16w_linear's operand), then y = (Σ + r) + b and one rounding, the epilogue's order.
 * --------------------------------------------------------------------------------------------- */
#define LINEAR_FEW_ROWS 8
#define LINEAR_FEW_ROWS_THREADS 256

/* x (widened) as the product reads it: rounded to fp16 when the weight is fp16 and x F32 */
template <typename TX, typename TW> __device__ __forceinline__ float few_rows_operand(float v) {
    if constexpr (sizeof(TW) == 2 && sizeof(TX) == 4) return __half2float(__float2half_rn(v));
    else return v;
}

/* V consecutive values from p (16-byte aligned) widened to float: float4 loads */
template <typename T, int V> __device__ __forceinline__ void few_rows_load(const T *p, float *out) {
    if constexpr (sizeof(T) == 4) {
#pragma unroll
        for (int j = 0; j < V; j += 4) {
            const float4 f = *reinterpret_cast<const float4 *>(p + j);
            out[j] = f.x, out[j + 1] = f.y, out[j + 2] = f.z, out[j + 3] = f.w;
        }
    } else {
        static_assert(V % 8 == 0, "halves load 8 at a time");
#pragma unroll
        for (int j = 0; j < V; j += 8) {
            cu_vec16<__half> h;
            h.load(reinterpret_cast<const __half *>(p) + j);
#pragma unroll
            for (int k = 0; k < 8; k++) out[j + k] = __half2float(h.v[k]);
        }
    }
}

/* y[m, n] = (Σ_k x[m, k] · w[n, k] + r[m, n]) + b[n] for m < M <= LINEAR_FEW_ROWS; b, r may be NULL.
 * vec: K is a multiple of the 16-byte piece of w and x, w are 16-byte aligned. A warp per column,
 * the block's warps on consecutive columns, the grid's x dimension striding over them. */
template <typename TX, typename TW, typename TY>
__device__ __forceinline__ void few_rows_columns(const TX *x, const TW *w, const TY *b, const TY *r, TY *y, int M, int K,
                                                 int N, int vec) {
    constexpr int VW = 16 / (int)sizeof(TW);
    const int lane = threadIdx.x & 31, per_block = blockDim.x >> 5;
    for (int n = blockIdx.x * per_block + (threadIdx.x >> 5); n < N; n += gridDim.x * per_block) {
        float acc[LINEAR_FEW_ROWS];
#pragma unroll
        for (int m = 0; m < LINEAR_FEW_ROWS; m++) acc[m] = 0.0f;
        const TW *wn = w + (int64_t)n * K;
        if (vec) {
            for (int k = lane * VW; k < K; k += 32 * VW) {
                float wv[VW], xv[VW];
                few_rows_load<TW, VW>(wn + k, wv);
#pragma unroll
                for (int m = 0; m < LINEAR_FEW_ROWS; m++) {
                    if (m >= M) break;
                    few_rows_load<TX, VW>(x + (int64_t)m * K + k, xv);
#pragma unroll
                    for (int j = 0; j < VW; j++) acc[m] = fmaf(few_rows_operand<TX, TW>(xv[j]), wv[j], acc[m]);
                }
            }
        } else {
            for (int k = lane; k < K; k += 32) {
                const float wv = cu_f32(wn[k]);
#pragma unroll
                for (int m = 0; m < LINEAR_FEW_ROWS; m++) {
                    if (m >= M) break;
                    acc[m] = fmaf(few_rows_operand<TX, TW>(cu_f32(x[(int64_t)m * K + k])), wv, acc[m]);
                }
            }
        }
#pragma unroll
        for (int m = 0; m < LINEAR_FEW_ROWS; m++) {
            if (m >= M) break;
            float t = cu_warp_sum(acc[m]);
            if (lane == 0) {
                if (r) t += cu_f32(r[(int64_t)m * N + n]);
                if (b) t += cu_f32(b[n]);
                cu_store(&y[(int64_t)m * N + n], t);
            }
        }
    }
}

template <typename TX, typename TW, typename TY>
__global__ void __launch_bounds__(LINEAR_FEW_ROWS_THREADS) k_linear_few_rows(const TX *x, const TW *w, const TY *b,
                                                                             const TY *r, TY *y, int M, int K, int N,
                                                                             int vec) {
    CU_PDL_ENTRY();
    few_rows_columns(x, w, b, r, y, M, K, N, vec);
}

/* The biases of a batch of few-row linears, one per product (by value: a kernel parameter). */
struct few_rows_biases {
    const float *b[SD_LINEAR_MANY_MAX];
};

/* `count` few-row linears of one x (blockIdx.y = i): y[i] = x · w[i]ᵀ + b[i], w [count, N, K] packed,
 * y [count, M, N]; each product exactly as k_linear_few_rows computes it alone. */
template <typename TX, typename TW>
__global__ void __launch_bounds__(LINEAR_FEW_ROWS_THREADS) k_linear_few_rows_many(const TX *x, const TW *w,
                                                                                  const few_rows_biases bs, float *y,
                                                                                  int M, int K, int N, int vec) {
    CU_PDL_ENTRY();
    const int i = blockIdx.y;
    few_rows_columns<TX, TW, float>(x, w + (int64_t)i * N * K, bs.b[i], nullptr, y + (int64_t)i * M * N, M, K, N, vec);
}

/* Whether a linear of M rows takes k_linear_few_rows (K > 0: the empty sum keeps its own path). */
static bool linear_few_rows(int64_t M, int64_t K, int64_t N) {
    return M > 0 && M <= LINEAR_FEW_ROWS && K > 0 && K <= INT_MAX && N > 0 && N <= INT_MAX / 2; /* int column walk */
}

/* The few-row kernels' launch shape: their column blocks, and whether the 16-byte loads apply
 * (for a packed batch, w's first product: K a multiple of the piece keeps every product aligned). */
static unsigned few_rows_blocks(int64_t N) {
    const int per_block = LINEAR_FEW_ROWS_THREADS / 32;
    return cu_blocks((N + per_block - 1) / per_block, 1);
}

template <typename TX, typename TW> static int few_rows_vec(const TX *x, const TW *w, int64_t K) {
    return K % (16 / (int64_t)sizeof(TW)) == 0 && cu_aligned16(x) && cu_aligned16(w);
}

template <typename TX, typename TW, typename TY>
static sd_status launch_linear_few_rows(const TX *x, const TW *w, const TY *b, const TY *r, TY *y, int64_t M, int64_t K,
                                        int64_t N) {
    CU_LAUNCH((k_linear_few_rows<TX, TW, TY>), few_rows_blocks(N), LINEAR_FEW_ROWS_THREADS, 0, cu_cur()->stream)(
        x, w, b, r, y, (int)M, (int)K, (int)N, few_rows_vec(x, w, K));
    LAUNCH_CHECK("linear (a few rows)");
    return SD_OK;
}

sd_status cu_linear(const float *x, const float *w, const float *b, const float *r, float *y, int64_t M, int64_t K,
                    int64_t N) {
    if (M <= 0 || N <= 0) return SD_OK;
    if (linear_few_rows(M, K, N)) return launch_linear_few_rows(x, w, b, r, y, M, K, N);
    cu_state *s = cu_cur();
    if (K > 0) {
        int ran = 0;
        CU_TRY(lt_linear(s, CUDA_R_32F, CUDA_R_32F, x, w, b, r, y, M, K, N, &ran));
        if (ran) return SD_OK;
    }
    /* y = r (or 0), y += x[M, K] · w[N, K]ᵀ, then the bias: the epilogue's order. K = 0 is the empty sum. */
    const size_t bytes = (size_t)(M * N) * sizeof(float);
    if (r && r != y) CUDA_CHECK(cudaMemcpyAsync(y, r, bytes, cudaMemcpyDeviceToDevice, s->stream));
    if (K > 0) CU_TRY(cu_gemm_rm(0, 1, M, N, K, 1.0f, x, K, 0, w, K, 0, r ? 1.0f : 0.0f, y, N, 0, 1));
    else if (!r) CUDA_CHECK(cudaMemsetAsync(y, 0, bytes, s->stream));
    return b ? cu_bias_rows(y, b, M, N) : SD_OK;
}

sd_status cu_linear_backward_data(const float *dy, const float *w, float *dx, int64_t M, int64_t K,
                                  int64_t N) {
    /* dx[M, K] += dy[M, N] · w[N, K] */
    if (N <= 0) return SD_OK;
    return cu_gemm_rm(0, 0, M, K, N, 1.0f, dy, N, 0, w, K, 0, 1.0f, dx, K, 0, 1);
}

sd_status cu_linear_backward_params(const float *dy, const float *x, float *dw, float *db, int64_t M,
                                    int64_t K, int64_t N) {
    /* dw[N, K] += dy[M, N]ᵀ · x[M, K]; db[N] += Σ_m dy[m, :] */
    if (dw && M > 0) CU_TRY(cu_gemm_rm(1, 0, N, K, M, 1.0f, dy, N, 0, x, K, 0, 1.0f, dw, K, 0, 1));
    if (db) CU_TRY(cu_column_sum_acc(dy, db, M, N));
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * fp16 linear
 * --------------------------------------------------------------------------------------------- */

__global__ void k_f32_bias_residual_rows(float *t, const __half *b, const __half *r, int64_t M, int64_t N) {
    CU_PDL_ENTRY();
    /* t: [M, N] (F32) = r[M, N] + b[N], either may be NULL (halves widen exactly) */
    CU_ROWS_COLS(m, n, M, N) t[m * N + n] = (r ? __half2float(r[m * N + n]) : 0.0f) + (b ? __half2float(b[n]) : 0.0f);
}

sd_status cu_f16_linear(const sd_f16 *x, const sd_f16 *w, const sd_f16 *b, const sd_f16 *r, sd_f16 *y, int64_t M,
                        int64_t K, int64_t N) {
    if (M <= 0 || N <= 0) return SD_OK;
    if (linear_few_rows(M, K, N))
        return launch_linear_few_rows(cu_half(x), cu_half(w), cu_half(b), cu_half(r), cu_half(y), M, K, N);
    cu_state *s = cu_cur();
    CU_TRY(check_int("M", M));
    CU_TRY(check_int("N", N));
    if (K > 0) {
        CU_TRY(check_int("K", K));
        int ran = 0;
        CU_TRY(lt_linear(s, CUDA_R_16F, CUDA_R_16F, x, w, b, r, y, M, K, N, &ran));
        if (ran) return SD_OK;
    }
    /* The fallback keeps the epilogue's single rounding (the CPU twin's contract): the residual and
     * bias go into an F32 buffer, the GEMM adds the product to it in fp32 (fp16 operands, F32 C),
     * and y is that buffer rounded once. K = 0 is the empty sum: y = r + b, or 0. */
    float *t = (float *)cu_workspace((size_t)(M * N) * sizeof(float)); /* [M, N] */
    if (!t) return SD_ERR_OOM;
    const int threads = cu_row_threads(N);
    CU_LAUNCH(k_f32_bias_residual_rows, cu_rows_grid(M, N, threads), threads, 0, s->stream)(t, cu_half(b), cu_half(r), M,
                                                                                             N);
    LAUNCH_CHECK("fp16 linear: bias and residual rows");
    if (K > 0) {
        /* column-major tᵀ[N, M] = op(w)[N, K] · xᵀ[K, M] + tᵀ, as cu_gemm_rm(0, 1, ...) does for fp32 */
        const float one = 1.0f;
        CUBLAS_CHECK(cublasGemmEx(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w, CUDA_R_16F, (int)K,
                                  x, CUDA_R_16F, (int)K, &one, t, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    }
    return cu_f16_from_f32(t, y, M * N);
}

/* y[M, N] = x[M, K] · w[N, K]ᵀ, fp16 operands and result, fp32 sums, one rounding, using no op
 * workspace (the channels-last convolutions' GEMM path, whose unfolded input sits there). Under
 * SD_GEMM_ALGO=tune (fast mode) through a cuBLASLt plan, so the shape is tuned as a linear's is;
 * otherwise, and where cuBLASLt has no algorithm, cublasGemmEx as before. */
sd_status cu_f16_matmul_nt(const sd_f16 *x, const sd_f16 *w, sd_f16 *y, int64_t M, int64_t K, int64_t N) {
    if (M <= 0 || N <= 0) return SD_OK;
    cu_state *s = cu_cur();
    CU_TRY(check_int("M", M));
    CU_TRY(check_int("N", N));
    CU_TRY(check_int("K", K));
    if (K > 0 && s->gemm_algo == SD_GEMM_ALGO_TUNE && s->precision == SD_PRECISION_FAST) {
        int ran = 0;
        CU_TRY(lt_linear(s, CUDA_R_16F, CUDA_R_16F, x, w, NULL, NULL, y, M, K, N, &ran));
        if (ran) return SD_OK;
    }
    if (K <= 0) {
        CUDA_CHECK(cudaMemsetAsync(y, 0, (size_t)(M * N) * sizeof(sd_f16), s->stream)); /* the empty sums */
        return SD_OK;
    }
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w, CUDA_R_16F, (int)K, x,
                              CUDA_R_16F, (int)K, &zero, y, CUDA_R_16F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return SD_OK;
}

/* y[i] = x · w[i]ᵀ for i < count (w [count, N, K] fp16, x fp16, y [count, M, N] of y_type): one
 * strided-batched GEMM, x shared (stride 0), fp32 sums. In column-major terms yᵀ[i] (N x M) =
 * op(w[i]) · xᵀ, as the fallback above. Three 8192x320x320 projections (SD at 64x64, batch 2) ran
 * at 81 TFLOP/s one by one on an H200: small GEMMs whose tiles leave SMs idle; batched, their tiles
 * fill one launch. */
static sd_status linear_batched_gemm(const sd_f16 *x, const sd_f16 *w, void *y, cudaDataType_t y_type, size_t y_size,
                                     int64_t M, int64_t K, int64_t N, int count) {
    if (M <= 0 || N <= 0 || count <= 0) return SD_OK;
    cu_state *s = cu_cur();
    if (K <= 0) { /* the empty sums */
        CUDA_CHECK(cudaMemsetAsync(y, 0, (size_t)((int64_t)count * M * N) * y_size, s->stream));
        return SD_OK;
    }
    CU_TRY(check_int("M", M));
    CU_TRY(check_int("N", N));
    CU_TRY(check_int("K", K));
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w,
                                            CUDA_R_16F, (int)K, (long long)(N * K), x, CUDA_R_16F, (int)K, 0LL, &zero, y,
                                            y_type, (int)N, (long long)(M * N), count, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT));
    return SD_OK;
}

sd_status cu_f16_linear_batched(const sd_f16 *x, const sd_f16 *w, sd_f16 *y, int64_t M, int64_t K, int64_t N,
                                int count) {
    return linear_batched_gemm(x, w, y, CUDA_R_16F, sizeof(sd_f16), M, K, N, count);
}

/* F32 x and y (sd_f16_ops.linear_batched_f32io), biases b[i] (NULL: none). A few rows (the UNet's
 * time projections: one per image) go in one launch of the few-row kernel, each product bit for bit
 * linear_f32io's; more rows: x rounded to fp16 once in the workspace for every product (one by one,
 * linear_f32io rounds it once per projection), one strided-batched GEMM into F32 C, then the
 * biases. */
sd_status cu_f16w_linear_batched(const float *x, const sd_f16 *w, const float *const *b, float *y, int64_t M, int64_t K,
                                 int64_t N, int count) {
    if (M <= 0 || N <= 0 || count <= 0) return SD_OK;
    if (count > SD_LINEAR_MANY_MAX)
        return sd_fail(SD_ERR_INTERNAL, "linear_batched_f32io: %d products (1 to %d)", count, SD_LINEAR_MANY_MAX);
    if (K > 0 && linear_few_rows(M, K, N)) {
        few_rows_biases bs;
        memset(&bs, 0, sizeof bs);
        for (int i = 0; b && i < count; i++) bs.b[i] = b[i];
        CU_LAUNCH((k_linear_few_rows_many<float, __half>), dim3(few_rows_blocks(N), (unsigned)count),
                  LINEAR_FEW_ROWS_THREADS, 0, cu_cur()->stream)(x, cu_half(w), bs, y, (int)M, (int)K, (int)N,
                                                                few_rows_vec(x, cu_half(w), K));
        LAUNCH_CHECK("linear (a few rows, batched)");
        return SD_OK;
    }
    if (K <= 0) { /* nothing to convert: the empty sums */
        CU_TRY(linear_batched_gemm(NULL, w, y, CUDA_R_32F, sizeof(float), M, K, N, count));
    } else {
        sd_f16 *x16 = (sd_f16 *)cu_workspace((size_t)(M * K) * sizeof(sd_f16));
        if (!x16) return SD_ERR_OOM;
        CU_TRY(cu_f16_from_f32(x, x16, M * K));
        CU_TRY(linear_batched_gemm(x16, w, y, CUDA_R_32F, sizeof(float), M, K, N, count));
    }
    for (int i = 0; b && i < count; i++)
        if (b[i]) CU_TRY(cu_bias_rows(y + (int64_t)i * M * N, b[i], M, N));
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * A gradient step's backward on a bf16 weight copy (sd_f16_ops.linear_backward_data_bf16w)
 * --------------------------------------------------------------------------------------------- */

sd_status cu_to_bf16(const float *x, sd_f16 *y, int64_t n) {
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_narrow_from_f32<__nv_bfloat16>, cu_blocks(n / 4 + 1, 256), 256, 0, cu_cur()->stream)(
        x, reinterpret_cast<__nv_bfloat16 *>(y), n, cu_narrowing_vec(x, y));
    LAUNCH_CHECK("to_bf16");
    return SD_OK;
}

/* Several data gradients of one input in one product (sd_f16_ops.linear_backward_data_bf16w_many).
 * k_bf16_side_by_side rounds dy[i] [M, N] into columns [i·N, (i+1)·N) of one [M, count·N] bf16
 * operand (blockIdx.y = i), 4 values per thread where every row of every dy is 16-byte aligned. */
struct bf16_side_by_side_params {
    const float *dy[SD_LINEAR_MANY_MAX];
    __nv_bfloat16 *out;
    int64_t M, N;
    int count, vec;
};

__global__ void k_bf16_side_by_side(const bf16_side_by_side_params p) {
    CU_PDL_ENTRY();
    const float *src = p.dy[blockIdx.y];
    const int64_t ld = (int64_t)p.count * p.N, col0 = (int64_t)blockIdx.y * p.N;
    if (p.vec) { /* N a multiple of 4: a row's quads never straddle two rows */
        const int64_t quads = p.M * p.N / 4;
        GRID_STRIDE(i, quads) {
            const int64_t r = 4 * i / p.N, c = 4 * i - r * p.N;
            const float4 f = reinterpret_cast<const float4 *>(src)[i];
            cu_store2(p.out + r * ld + col0 + c, f.x, f.y);
            cu_store2(p.out + r * ld + col0 + c + 2, f.z, f.w);
        }
        return;
    }
    GRID_STRIDE(i, p.M * p.N) {
        const int64_t r = i / p.N, c = i - r * p.N;
        cu_store(&p.out[r * ld + col0 + c], src[i]);
    }
}

/* dx[M, K] (+)= dy16[M, NT] · w[NT, K], bf16 operands, fp32 sums, accumulating (beta 1) or not (beta 0:
 * dx not read); column-major dxᵀ[K, M] (+)= wᵀ[K, NT] · dy16ᵀ[NT, M]. */
static sd_status bf16_data_gradient_gemm(const __nv_bfloat16 *dy16, const sd_f16 *w, float *dx, int64_t M, int64_t K,
                                         int64_t NT, int accumulate) {
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasGemmEx(cu_cur()->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)NT, &one, w, CUDA_R_16BF,
                              (int)K, dy16, CUDA_R_16BF, (int)NT, &beta, dx, CUDA_R_32F, (int)K, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    return SD_OK;
}

/* dx[M, K] (+)= Σ_i bf16(dy[i])[M, N] · w_i[N, K], w the count bf16 weights stacked [count·N, K]:
 * the dy rounded once into one [M, count·N] operand in the workspace (one gradient: a plain
 * conversion), then one bf16 GEMM over count·N into dx, accumulating (beta 1) or not (beta 0: dx not
 * read) (column-major dxᵀ[K, M] (+)= wᵀ[K, count·N] · dyᵀ[count·N, M]). The FAST_16BF GEMM on F32
 * operands this replaced does the same arithmetic, converting its tiles inside the kernel: the
 * forward's equivalent ran at 30 TFLOP/s against 81 for native fp16 operands on an H200. */
sd_status cu_bf16w_linear_backward_data_many(const float *const *dy, int count, const sd_f16 *w, float *dx, int64_t M,
                                             int64_t K, int64_t N, int accumulate) {
    if (count < 1 || count > SD_LINEAR_MANY_MAX)
        return sd_fail(SD_ERR_INTERNAL, "linear_backward_data_bf16w_many: %d gradients (1 to %d)", count,
                       SD_LINEAR_MANY_MAX);
    if (M <= 0 || K <= 0) return SD_OK;
    if (N <= 0) { /* the empty sum */
        if (!accumulate) CUDA_CHECK(cudaMemsetAsync(dx, 0, (size_t)(M * K) * sizeof(float), cu_cur()->stream));
        return SD_OK;
    }
    cu_state *s = cu_cur();
    const int64_t NT = (int64_t)count * N; /* the product's inner dimension */
    CU_TRY(check_int("M", M));
    CU_TRY(check_int("N", NT));
    CU_TRY(check_int("K", K));
    __nv_bfloat16 *dy16 = (__nv_bfloat16 *)cu_workspace((size_t)(M * NT) * sizeof(__nv_bfloat16));
    if (!dy16) return SD_ERR_OOM;
    if (count == 1) {
        CU_TRY(cu_to_bf16(dy[0], reinterpret_cast<sd_f16 *>(dy16), M * N));
    } else {
        bf16_side_by_side_params p;
        memset(&p, 0, sizeof p);
        p.out = dy16;
        p.M = M, p.N = N, p.count = count;
        p.vec = N % 4 == 0;
        for (int i = 0; i < count; i++) {
            p.dy[i] = dy[i];
            p.vec = p.vec && cu_aligned16(dy[i]);
        }
        const int64_t per_source = p.vec ? M * N / 4 : M * N;
        CU_LAUNCH(k_bf16_side_by_side, dim3(cu_blocks(per_source, 256), (unsigned)count), 256, 0, s->stream)(p);
        LAUNCH_CHECK("data gradients side by side (bf16)");
    }
    return bf16_data_gradient_gemm(dy16, w, dx, M, K, NT, accumulate);
}

/* dx[M, K] (+)= dy[M, N] · w[N, K] with dy already bf16 (sd_f16_ops.linear_backward_data_bf16: its
 * producer rounded it, as to_bf16 would have): the GEMM above without its conversion. */
sd_status cu_bf16_linear_backward_data(const sd_f16 *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K, int64_t N,
                                       int accumulate) {
    if (M <= 0 || K <= 0) return SD_OK;
    if (N <= 0) { /* the empty sum */
        if (!accumulate) CUDA_CHECK(cudaMemsetAsync(dx, 0, (size_t)(M * K) * sizeof(float), cu_cur()->stream));
        return SD_OK;
    }
    CU_TRY(check_int("M", M));
    CU_TRY(check_int("N", N));
    CU_TRY(check_int("K", K));
    return bf16_data_gradient_gemm(reinterpret_cast<const __nv_bfloat16 *>(dy), w, dx, M, K, N, accumulate);
}

/* The per-pixel linear's data gradient with either side a map's gradient in NCHW order
 * (sd_f16_ops.linear_backward_data_bf16w_map): dy rounded to bf16 as it lies, then one strided
 * batch of GEMMs over the B images whose operands are read transposed where a side is a map, so
 * neither dy nor dx is transposed by a pass of its own. Per image, column-major:
 *   dx tokens [S, K] = (K x S):  w (K x N, op N) · dy (N x S: tokens as they lie, a map op T)
 *   dx map [K, S]    = (S x K):  dy (S x N: a map as it lies, tokens op T) · w (N x K, op T) */
sd_status cu_bf16w_linear_backward_data_map(const float *dy, const sd_f16 *w, float *dx, int64_t B, int64_t S,
                                            int64_t K, int64_t N, int dy_map, int dx_map, int accumulate) {
    if (!dy_map && !dx_map) return cu_bf16w_linear_backward_data(dy, w, dx, B * S, K, N, accumulate);
    if (B <= 0 || S <= 0 || K <= 0) return SD_OK;
    cu_state *s = cu_cur();
    if (N <= 0) { /* the empty sum */
        if (!accumulate) CUDA_CHECK(cudaMemsetAsync(dx, 0, (size_t)(B * S * K) * sizeof(float), s->stream));
        return SD_OK;
    }
    CU_TRY(check_int("S", S));
    CU_TRY(check_int("N", N));
    CU_TRY(check_int("K", K));
    CU_TRY(check_int("batch", B));
    __nv_bfloat16 *dy16 = (__nv_bfloat16 *)cu_workspace((size_t)(B * S * N) * sizeof(__nv_bfloat16));
    if (!dy16) return SD_ERR_OOM;
    CU_TRY(cu_to_bf16(dy, reinterpret_cast<sd_f16 *>(dy16), B * S * N));
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const long long dy_stride = (long long)(S * N), dx_stride = (long long)(S * K);
    if (!dx_map) {
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)K, (int)S, (int)N, &one, w,
                                                CUDA_R_16BF, (int)K, 0LL, dy16, CUDA_R_16BF, (int)S, dy_stride, &beta,
                                                dx, CUDA_R_32F, (int)K, dx_stride, (int)B, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT));
        return SD_OK;
    }
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, dy_map ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_T, (int)S, (int)K,
                                            (int)N, &one, dy16, CUDA_R_16BF, dy_map ? (int)S : (int)N, dy_stride, w,
                                            CUDA_R_16BF, (int)K, 0LL, &beta, dx, CUDA_R_32F, (int)S, dx_stride, (int)B,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return SD_OK;
}

/* dx[M, K] (+)= bf16(dy)[M, N] · w[N, K]: the one-gradient case of the above */
sd_status cu_bf16w_linear_backward_data(const float *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K, int64_t N,
                                        int accumulate) {
    const float *const one[1] = {dy};
    return cu_bf16w_linear_backward_data_many(one, 1, w, dx, M, K, N, accumulate);
}

/* ------------------------------------------------------------------------------------------------
 * F32 activations on an fp16 weight copy (sd_f16_ops.linear_f32io: fast mode's gradient steps)
 * --------------------------------------------------------------------------------------------- */

sd_status cu_f16w_linear(const float *x, const sd_f16 *w, const float *b, const float *r, float *y, int64_t M, int64_t K,
                         int64_t N) {
    if (M <= 0 || N <= 0) return SD_OK;
    if (K <= 0) return cu_linear(x, NULL, b, r, y, M, 0, N); /* the empty sum: y = r + b, or 0 */
    if (linear_few_rows(M, K, N)) return launch_linear_few_rows(x, cu_half(w), b, r, y, M, K, N);
    cu_state *s = cu_cur();
    CU_TRY(check_int("M", M));
    CU_TRY(check_int("N", N));
    CU_TRY(check_int("K", K));
    /* x rounded once to fp16 in the workspace: the operand the tensor cores read as it is (a
     * FAST_16BF GEMM on F32 x converts its tiles inside the kernel, at a third of the rate) */
    sd_f16 *x16 = (sd_f16 *)cu_workspace((size_t)(M * K) * sizeof(sd_f16));
    if (!x16) return SD_ERR_OOM;
    CU_TRY(cu_f16_from_f32(x, x16, M * K));
    int ran = 0;
    CU_TRY(lt_linear(s, CUDA_R_16F, CUDA_R_32F, x16, w, b, r, y, M, K, N, &ran));
    if (ran) return SD_OK;
    /* y = r (or 0), y += x16 · wᵀ (fp16 operands, F32 C and fp32 sums), then the bias: the epilogue's order */
    if (r && r != y)
        CUDA_CHECK(cudaMemcpyAsync(y, r, (size_t)(M * N) * sizeof(float), cudaMemcpyDeviceToDevice, s->stream));
    const float one = 1.0f, beta = r ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasGemmEx(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w, CUDA_R_16F, (int)K, x16,
                              CUDA_R_16F, (int)K, &beta, y, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return b ? cu_bias_rows(y, b, M, N) : SD_OK;
}
