/* cublas_sim.cpp: host stand-ins for the cuBLAS and cuBLASLt calls the backend makes
 * (include/cublas_v2.h, include/cublasLt.h), for the CUDA simulator (see cudasim.h).
 *
 * The point is to catch misuse of these APIs on a machine without a GPU, so the documented rules
 * are followed to the letter, and what the real library would leave undefined is reported:
 *
 *  - cuBLAS is column-major: C(m×n) = alpha·op(A)(m×k)·op(B)(k×n) + beta·C. A is stored as
 *    rows×cols = (m×k if transa == N, k×m otherwise) with lda elements between the starts of
 *    consecutive columns, so element (r, c) of the stored A is A[r + c·lda]; likewise B (k×n or
 *    n×k) and C (m×n).
 *  - cublasGemmEx / cublasGemmStridedBatchedEx return CUBLAS_STATUS_INVALID_VALUE when m, n or
 *    k < 0, batchCount < 0, a transpose flag is not N/T/C, lda < max(1, rows of A as stored),
 *    ldb < max(1, rows of B as stored), ldc < max(1, m), or alpha / beta is NULL;
 *    CUBLAS_STATUS_NOT_SUPPORTED when the types / compute type are a combination this stand-in
 *    does not implement; CUBLAS_STATUS_NOT_INITIALIZED for a NULL handle. Validation happens at
 *    call time; the arithmetic is queued on the handle's stream.
 *  - Matrix types (a subset of cuBLAS's table for cublasGemmEx and cublasLtMatmul): CUDA_R_32F
 *    A/B/C(/D) with the fp32 compute types below; CUDA_R_16F or CUDA_R_16BF A/B (both the same) with
 *    a C(/D) of that type or CUDA_R_32F (cublasGemmEx / StridedBatchedEx; cuBLASLt: CUDA_R_16F);
 *    CUDA_R_16F A/B with a CUDA_R_16F or CUDA_R_32F
 *    C(/D), CUBLAS_COMPUTE_32F or _PEDANTIC and a CUDA_R_32F scale type (halves are read exactly,
 *    D is rounded once to its type, to nearest even, from the fp32 value below). Mixed A/B types
 *    and the other types are NOT_SUPPORTED here.
 *  - Pointer mode host: alpha and beta are read when the call is made (a graph captured with them
 *    replays those values). beta == 0 means C is not read, so NaN or garbage in C does not
 *    propagate; alpha == 0 (or k == 0) means A and B are not read (reference-BLAS behaviour).
 *  - Compute types: CUBLAS_COMPUTE_32F and _PEDANTIC multiply the fp32 inputs exactly (unless the
 *    handle's math mode is CUBLAS_TF32_TENSOR_OP_MATH, which lets COMPUTE_32F use TF32: then the
 *    inputs are rounded to TF32); _FAST_16BF / _FAST_TF32 / _FAST_16F round every element of A
 *    and B to bf16 / tf32 / fp16 (cudasim::round_*) before multiplying. Products of fp32 values
 *    are exact in double and are ACCUMULATED IN DOUBLE, then alpha·acc + beta·C is rounded to
 *    fp32 once (and that to half for a CUDA_R_16F D): at least as accurate as any GPU kernel, and
 *    deterministic (each element sums over k in increasing order whatever the thread count).
 *  - Strided batched: matrix i of A starts at A + i·strideA (likewise B, C); stride 0 reuses one
 *    matrix. Output matrices that overlap (the cuBLAS documentation calls that undefined), and an
 *    output overlapping an input, are reported with cudasim::fault.
 *  - cublasSetStream resets the workspace to the default pool (documented); cublasSetWorkspace
 *    needs a 256-byte aligned device buffer. The user workspace may be used by any GEMM, so its
 *    first bytes are overwritten with a NaN pattern by each call (work sharing the workspace with
 *    live data shows up as wrong numbers) and it must not overlap an operand.
 *
 *  - cuBLASLt: D = epilogue(alpha·op(A)·op(B) + beta·C), m×n = D's rows×cols. Layouts must agree
 *    with the operation (op(A) is m×k, op(B) is k×n, C has D's shape), every ld >= rows
 *    (column order), otherwise CUBLAS_STATUS_INVALID_VALUE; in-place (C == D) needs Cdesc equal
 *    to Ddesc, out-of-place C may have its own ld; C has D's type. CUBLASLT_EPILOGUE_BIAS adds
 *    bias[i] to row i of D (the vector has D's row count, broadcast over columns), after
 *    alpha/beta scaling and before D's rounding; the bias has D's type (BIAS_DATA_TYPE unset, or
 *    set to that type; any other is NOT_SUPPORTED).
 *  - cublasLtMatmulAlgoGetHeuristic returns up to three algorithms (state SUCCESS), as many as
 *    requested: the first needs no workspace, the second 4 KiB, the third 8 KiB (each listed only
 *    when MAX_WORKSPACE_BYTES allows it); all compute the same sum. The
 *    algorithm remembers the configuration and the pointer alignments it was chosen for: the
 *    MIN_ALIGNMENT_{A,B,C,D}_BYTES preferences (default 256) and the alignment of the bias
 *    pointer set on the descriptor at heuristic time (which the documentation says the heuristic
 *    reads). cublasLtMatmul with a pointer less aligned than that faults like a misaligned vector
 *    load would; with an algorithm chosen for another compute type / epilogue / matrix types it
 *    returns CUBLAS_STATUS_NOT_SUPPORTED; with a workspace smaller than the algorithm's needs,
 *    CUBLAS_STATUS_INVALID_VALUE. algo == NULL runs an implicit heuristic, as documented.
 *
 * Every device operand range is passed to cudasim::check_device_range with its exact extent (a
 * column-major rows×cols matrix with leading dimension ld spans (cols − 1)·ld + rows elements;
 * a batch adds (batch − 1)·stride) when the call is made and again when the queued work runs (a
 * graph replayed after a buffer was freed). Each refused call also prints one line to stderr
 * saying why, since the backend may quietly fall back to another path (CUDASIM_LIB_NOTES=0
 * silences those lines). */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h> /* the bfloat16 <-> float conversions of CUDA_R_16BF matrices */
#include <cuda_fp16.h> /* the half <-> float conversions the fp16 matrices are read and written with */

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

/* ------------------------------------------------------------------------------------------------
 * Handle and descriptor contents
 * --------------------------------------------------------------------------------------------- */

struct cublasContext {
    cudaStream_t stream = nullptr;
    void *workspace = nullptr; /* user workspace (cublasSetWorkspace); NULL: the default pool */
    size_t workspace_bytes = 0;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
    cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};

struct cublasLtContext {
    int alive = 1;
};

struct cublasLtMatmulDescOpaque_st {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    int32_t pointer_mode = 0; /* CUBLASLT_POINTER_MODE_HOST */
    int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N, transc = CUBLAS_OP_N;
    int32_t fill_mode = 2; /* CUBLAS_FILL_MODE_FULL */
    uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void *bias = nullptr;
    int64_t bias_batch_stride = 0;
    int32_t bias_type = -1; /* -1: the type of D */
};

struct cublasLtMatrixLayoutOpaque_st {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};

struct cublasLtMatmulPreferenceOpaque_st {
    uint32_t search_mode = 0;
    uint64_t max_workspace = 0;
    uint32_t min_align[4] = {256, 256, 256, 256}; /* A, B, C, D: the documented default */
};

namespace {

/* ------------------------------------------------------------------------------------------------
 * Diagnostics
 * --------------------------------------------------------------------------------------------- */

/* One stderr line per refused call: the backend treats some refusals as "use the other path", so
 * without this a wrong descriptor would only show up as lost speed. */
/* CUDASIM_LIB_NOTES=0 silences these (the self-test provokes refusals on purpose). */
bool notes_on() {
    static const bool on = [] {
        const char *e = getenv("CUDASIM_LIB_NOTES");
        return !(e && !strcmp(e, "0"));
    }();
    return on;
}

void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void note(const char *fmt, ...) {
    if (!notes_on()) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cudasim: %s\n", buf);
}

cublasStatus_t refuse(cublasStatus_t st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cublasStatus_t refuse(cublasStatus_t st, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    note("%s -> %s", buf, cublasGetStatusName(st));
    return st;
}

const char *op_name(int op) { return op == CUBLAS_OP_N ? "N" : op == CUBLAS_OP_T ? "T" : op == CUBLAS_OP_C ? "C" : "?"; }

bool valid_op(int op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

/* For real data CUBLAS_OP_C is CUBLAS_OP_T. */
bool is_trans(int op) { return op != CUBLAS_OP_N; }

/* ------------------------------------------------------------------------------------------------
 * Element types (CUDA_R_32F, CUDA_R_16F; callers validate the type first)
 * --------------------------------------------------------------------------------------------- */

size_t elem_bytes(cudaDataType_t t) { return t == CUDA_R_16F || t == CUDA_R_16BF ? 2 : sizeof(float); }

/* Element i of an array of type t, widened exactly to float. */
float load(const void *p, int64_t i, cudaDataType_t t) {
    if (t == CUDA_R_16F) return __half2float(((const __half *)p)[i]);
    if (t == CUDA_R_16BF) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return ((const float *)p)[i];
}

/* Writes v to element i: rounded to fp32 once, and that to half / bfloat16 (nearest even) for the
 * 16-bit types. */
void store(void *p, int64_t i, cudaDataType_t t, double v) {
    if (t == CUDA_R_16F)
        ((__half *)p)[i] = __float2half_rn((float)v);
    else if (t == CUDA_R_16BF)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v);
    else
        ((float *)p)[i] = (float)v;
}

/* ------------------------------------------------------------------------------------------------
 * Precision of the product
 * --------------------------------------------------------------------------------------------- */

typedef float (*round_fn)(float);

/* The rounding a compute type applies to A and B before multiplying; *ok = false when the compute
 * type cannot multiply CUDA_R_32F matrices. `tf32_allowed`: the cuBLAS handle's math mode lets
 * CUBLAS_COMPUTE_32F use TF32 tensor cores. */
round_fn input_rounding(cublasComputeType_t ct, bool tf32_allowed, bool *ok) {
    *ok = true;
    switch (ct) {
    case CUBLAS_COMPUTE_32F: return tf32_allowed ? cudasim::round_tf32 : nullptr;
    case CUBLAS_COMPUTE_32F_PEDANTIC: return nullptr;
    case CUBLAS_COMPUTE_32F_FAST_16BF: return cudasim::round_bf16;
    case CUBLAS_COMPUTE_32F_FAST_TF32: return cudasim::round_tf32;
    case CUBLAS_COMPUTE_32F_FAST_16F: return cudasim::round_fp16;
    default: *ok = false; return nullptr;
    }
}

/* The matrix / compute type combinations simulated (see the top of the file): A and B of type
 * `ab`, C (and D) of type `cd`. Sets *rnd to the rounding of A and B before the product; false
 * for a combination this stand-in does not implement. */
bool gemm_types_ok(cudaDataType_t a, cudaDataType_t b, cudaDataType_t cd, cublasComputeType_t ct, bool tf32_allowed,
                   round_fn *rnd) {
    bool ok = false;
    *rnd = nullptr;
    if (a == CUDA_R_32F && b == CUDA_R_32F && cd == CUDA_R_32F) {
        *rnd = input_rounding(ct, tf32_allowed, &ok);
        return ok;
    }
    /* halves multiply exactly in fp32; the FAST_* types and TF32 concern fp32 inputs only */
    if (a == CUDA_R_16F && b == CUDA_R_16F && (cd == CUDA_R_16F || cd == CUDA_R_32F))
        return ct == CUBLAS_COMPUTE_32F || ct == CUBLAS_COMPUTE_32F_PEDANTIC;
    if (a == CUDA_R_16BF && b == CUDA_R_16BF && (cd == CUDA_R_16BF || cd == CUDA_R_32F))
        return ct == CUBLAS_COMPUTE_32F || ct == CUBLAS_COMPUTE_32F_PEDANTIC;
    return false;
}

/* ------------------------------------------------------------------------------------------------
 * Matrix extents and overlap
 * --------------------------------------------------------------------------------------------- */

/* A batch of column-major matrices of `elem`-byte elements: matrix b, element (r, c) at element
 * offset b·stride + r + c·ld from p. */
struct Mat {
    const void *p;
    size_t elem;
    int64_t rows, cols, ld, stride, batch;
};

/* The address of element offset `off` of m. */
uintptr_t elem_addr(const Mat &m, int64_t off) { return (uintptr_t)m.p + (uintptr_t)(off * (int64_t)m.elem); }

/* Element offsets [lo, hi) relative to p that the batch touches (rows, cols, batch >= 1). */
void mat_extent(const Mat &m, int64_t *lo, int64_t *hi) {
    const int64_t one = (m.cols - 1) * m.ld + m.rows;
    const int64_t last = (m.batch - 1) * m.stride;
    *lo = std::min<int64_t>(0, last);
    *hi = std::max<int64_t>(0, last) + one;
}

void check_mat(const Mat &m, const char *what) {
    if (m.rows <= 0 || m.cols <= 0 || m.batch <= 0) return;
    int64_t lo, hi;
    mat_extent(m, &lo, &hi);
    cudasim::check_device_range((const void *)elem_addr(m, lo), (size_t)(hi - lo) * m.elem, what);
}

uintptr_t addr(const void *p) { return (uintptr_t)p; }

/* Faults when two matrices of the output batch share an element, or when an input shares an
 * element with the output (cuBLAS leaves both undefined: the GPU would race). Exact, element by
 * element, but only done when the address ranges intersect (interleaved layouts such as one head
 * per column block are legal and common). */
void check_output_overlap(const char *api, const Mat &out, const char *out_name, const Mat *const *ins,
                          const char *const *in_names, int n_ins) {
    if (out.rows <= 0 || out.cols <= 0 || out.batch <= 0) return;
    int64_t olo, ohi;
    mat_extent(out, &olo, &ohi);
    const int64_t one = (out.cols - 1) * out.ld + out.rows;
    const bool self_possible = out.batch > 1 && (out.stride < one && out.stride > -one);
    const uintptr_t obeg = elem_addr(out, olo), oend = elem_addr(out, ohi);
    bool in_possible = false;
    for (int i = 0; i < n_ins; i++) {
        const Mat &m = *ins[i];
        if (!m.p || m.rows <= 0 || m.cols <= 0 || m.batch <= 0) continue;
        int64_t lo, hi;
        mat_extent(m, &lo, &hi);
        if (elem_addr(m, lo) < oend && obeg < elem_addr(m, hi)) in_possible = true;
    }
    if (!self_possible && !in_possible) return;
    std::vector<uint8_t> mark((size_t)(ohi - olo), 0);
    for (int64_t b = 0; b < out.batch; b++)
        for (int64_t c = 0; c < out.cols; c++)
            for (int64_t r = 0; r < out.rows; r++) {
                uint8_t &e = mark[(size_t)(b * out.stride + c * out.ld + r - olo)];
                if (e)
                    cudasim::fault("%s: the output matrices %s overlap (matrix %lld, element (%lld, %lld) is also written "
                                   "by an earlier matrix of the batch: stride %lld, ld %lld, %lld x %lld); cuBLAS leaves "
                                   "this undefined",
                                   api, out_name, (long long)b, (long long)r, (long long)c, (long long)out.stride,
                                   (long long)out.ld, (long long)out.rows, (long long)out.cols);
                e = 1;
            }
    for (int i = 0; i < n_ins; i++) {
        const Mat &m = *ins[i];
        if (!m.p || m.rows <= 0 || m.cols <= 0 || m.batch <= 0) continue;
        for (int64_t b = 0; b < m.batch; b++)
            for (int64_t c = 0; c < m.cols; c++)
                for (int64_t r = 0; r < m.rows; r++) {
                    const uintptr_t a = elem_addr(m, b * m.stride + c * m.ld + r);
                    /* an input element overlaps an output element if any of its bytes does */
                    for (uintptr_t byte : {a, a + m.elem - 1}) {
                        if (byte < obeg || byte >= oend) continue;
                        if (mark[(byte - obeg) / out.elem])
                            cudasim::fault("%s: input %s overlaps the output %s (input matrix %lld, element (%lld, %lld)); "
                                           "the result would be undefined on a GPU",
                                           api, in_names[i], out_name, (long long)b, (long long)r, (long long)c);
                    }
                }
    }
}

bool ranges_overlap(const void *a, size_t an, const void *b, size_t bn) {
    return an && bn && addr(a) < addr(b) + bn && addr(b) < addr(a) + an;
}

/* ------------------------------------------------------------------------------------------------
 * The GEMM engine (shared by cuBLAS and cuBLASLt)
 * --------------------------------------------------------------------------------------------- */

struct Gemm {
    bool ta, tb;
    int64_t m, n, k, batch;
    double alpha, beta;       /* the fp32 scalars, widened */
    cudaDataType_t ab_type;   /* of A and B */
    cudaDataType_t cd_type;   /* of C, D and the bias */
    const void *A;            /* op(A) is m×k */
    int64_t lda, strideA;
    const void *B;            /* op(B) is k×n */
    int64_t ldb, strideB;
    const void *C;            /* read only when beta != 0 */
    int64_t ldc, strideC;
    void *D;                  /* written; equals C for cuBLAS */
    int64_t ldd, strideD;
    const void *bias;         /* cuBLASLt bias epilogue: bias[i] added to row i, or NULL */
    round_fn rnd;             /* input rounding, or NULL for exact inputs */
};

/* The product is computed on packed panels (the classic GEMM blocking): op(A) is cut into panels
 * of kPanel rows and op(B) into panels of kPanel columns, each stored k-major so the micro-kernel
 * reads both sequentially: panel p of op(A) holds element (p·kPanel + r, l) at
 * [p·k·kPanel + l·kPanel + r], zero beyond the matrix. Rounding (fast compute types) is applied
 * while packing. Each element of D is still Σ_l over l = 0..k−1 in order, in double. */
constexpr int64_t kPanel = 4;

/* Packs op(X) (rows×cols as used: X stored with ld, transposed when `trans`, elements of `type`
 * from element offset `off`) into fp32 panels of kPanel along `rows` when `panel_rows`, else
 * along `cols`; `depth` is the other (summed) dimension. Element (r, c) of op(X) is
 * X[off + r + c·ld] (!trans) or X[off + c + r·ld] (trans). */
void pack_panels(const void *X, cudaDataType_t type, int64_t off, int64_t ld, bool trans, int64_t rows, int64_t cols,
                 bool panel_rows, float *dst, round_fn rnd) {
    const int64_t along = panel_rows ? rows : cols, depth = panel_rows ? cols : rows;
    const int64_t panels = (along + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 16))
    for (int64_t p = 0; p < panels; p++) {
        float *d = dst + p * depth * kPanel;
        for (int64_t l = 0; l < depth; l++)
            for (int64_t e = 0; e < kPanel; e++) {
                const int64_t a = p * kPanel + e; /* index along the panel dimension */
                float v = 0.0f;
                if (a < along) {
                    const int64_t r = panel_rows ? a : l, c = panel_rows ? l : a;
                    v = load(X, off + (trans ? c + r * ld : r + c * ld), type);
                    if (rnd) v = rnd(v);
                }
                d[l * kPanel + e] = v;
            }
    }
}

/* out[r·kPanel + c] = Σ_l a[l·kPanel + r] · b[l·kPanel + c]: a 4×4 tile of sums in registers. */
void micro_tile(const float *a, const float *b, int64_t k, double *out) {
    double c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
    double c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
    for (int64_t l = 0; l < k; l++, a += kPanel, b += kPanel) {
        const double a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
        const double b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
        c00 += a0 * b0, c01 += a0 * b1, c02 += a0 * b2, c03 += a0 * b3;
        c10 += a1 * b0, c11 += a1 * b1, c12 += a1 * b2, c13 += a1 * b3;
        c20 += a2 * b0, c21 += a2 * b1, c22 += a2 * b2, c23 += a2 * b3;
        c30 += a3 * b0, c31 += a3 * b1, c32 += a3 * b2, c33 += a3 * b3;
    }
    const double r[16] = {c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33};
    memcpy(out, r, sizeof r);
}

void run_gemm(const Gemm &g) {
    const bool product = g.alpha != 0.0 && g.k > 0; /* otherwise A and B are not read */
    const int64_t row_panels = (g.m + kPanel - 1) / kPanel, col_panels = (g.n + kPanel - 1) / kPanel;
    std::vector<float> Ap, Bp;
    if (product) {
        Ap.resize((size_t)(row_panels * kPanel * g.k));
        Bp.resize((size_t)(col_panels * kPanel * g.k));
    }
    for (int64_t b = 0; b < g.batch; b++) {
        const int64_t c0 = b * g.strideC, d0 = b * g.strideD; /* element offsets of matrix b */
        if (product) {
            pack_panels(g.A, g.ab_type, b * g.strideA, g.lda, g.ta, g.m, g.k, true, Ap.data(), g.rnd);
            pack_panels(g.B, g.ab_type, b * g.strideB, g.ldb, g.tb, g.k, g.n, false, Bp.data(), g.rnd);
        }
        const double work = (double)g.m * (double)g.n * (double)std::max<int64_t>(g.k, 1);
        /* consecutive tasks share a column panel of op(B), which stays in cache */
#pragma omp parallel for collapse(2) schedule(static) if (work >= (double)(1 << 18))
        for (int64_t jp = 0; jp < col_panels; jp++)
            for (int64_t ip = 0; ip < row_panels; ip++) {
                double acc[kPanel * kPanel] = {0};
                if (product) micro_tile(Ap.data() + ip * g.k * kPanel, Bp.data() + jp * g.k * kPanel, g.k, acc);
                for (int64_t c = 0; c < kPanel; c++) {
                    const int64_t j = jp * kPanel + c;
                    if (j >= g.n) break;
                    for (int64_t r = 0; r < kPanel; r++) {
                        const int64_t i = ip * kPanel + r;
                        if (i >= g.m) break;
                        double v = g.alpha * acc[r * kPanel + c];
                        if (g.beta != 0.0) v += g.beta * (double)load(g.C, c0 + i + j * g.ldc, g.cd_type);
                        if (g.bias) v += (double)load(g.bias, i, g.cd_type);
                        store(g.D, d0 + i + j * g.ldd, g.cd_type, v);
                    }
                }
            }
    }
}

/* The ranges a queued GEMM touches, checked again when it runs (a captured graph may replay
 * after a buffer was freed). */
void check_gemm_operands(const Gemm &g, const char *api) {
    char what[128];
    const size_t ab = elem_bytes(g.ab_type), cd = elem_bytes(g.cd_type);
    if (g.alpha != 0.0 && g.k > 0) {
        snprintf(what, sizeof what, "%s operand A", api);
        check_mat(Mat{g.A, ab, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda, g.strideA, g.batch}, what);
        snprintf(what, sizeof what, "%s operand B", api);
        check_mat(Mat{g.B, ab, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb, g.strideB, g.batch}, what);
    }
    if (g.beta != 0.0) {
        snprintf(what, sizeof what, "%s operand C", api);
        check_mat(Mat{g.C, cd, g.m, g.n, g.ldc, g.strideC, g.batch}, what);
    }
    snprintf(what, sizeof what, "%s output", api);
    check_mat(Mat{g.D, cd, g.m, g.n, g.ldd, g.strideD, g.batch}, what);
    if (g.bias) {
        snprintf(what, sizeof what, "%s bias vector", api);
        cudasim::check_device_range(g.bias, (size_t)g.m * cd, what);
    }
}

void check_gemm_overlaps(const Gemm &g, const char *api, bool c_is_d) {
    const bool product = g.alpha != 0.0 && g.k > 0;
    const size_t ab = elem_bytes(g.ab_type), cd = elem_bytes(g.cd_type);
    const Mat out{g.D, cd, g.m, g.n, g.ldd, g.strideD, g.batch};
    const Mat a{product ? g.A : nullptr, ab, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda, g.strideA, g.batch};
    const Mat b{product ? g.B : nullptr, ab, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb, g.strideB, g.batch};
    const Mat c{(!c_is_d && g.beta != 0.0) ? g.C : nullptr, cd, g.m, g.n, g.ldc, g.strideC, g.batch};
    const Mat bias{g.bias, cd, g.m, 1, g.m, 0, 1};
    const Mat *ins[] = {&a, &b, &c, &bias};
    const char *names[] = {"A", "B", "C", "bias"};
    check_output_overlap(api, out, c_is_d ? "C" : "D", ins, names, 4);
}

/* Overwrites the start of a library workspace with NaNs, as a kernel using it for partial sums
 * would: data that shares the workspace then reads as garbage instead of passing by luck. */
void scribble(void *ws, size_t bytes) {
    const size_t n = std::min<size_t>(bytes, (size_t)64 << 10) / sizeof(float);
    float *f = (float *)ws;
    for (size_t i = 0; i < n; i++) f[i] = std::numeric_limits<float>::quiet_NaN();
}

/* ------------------------------------------------------------------------------------------------
 * cuBLAS GEMM entry (GemmEx is the batch-of-one case)
 * --------------------------------------------------------------------------------------------- */

cublasStatus_t gemm_strided(const char *api, cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void *alpha, const void *A,
                            cudaDataType Atype, int lda, long long strideA, const void *B, cudaDataType Btype, int ldb,
                            long long strideB, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            long long strideC, int batchCount, cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "%s: NULL handle", api);
    if (m < 0 || n < 0 || k < 0 || batchCount < 0)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: m = %d, n = %d, k = %d, batchCount = %d (negative)", api, m, n,
                      k, batchCount);
    if (!valid_op(transa) || !valid_op(transb))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: transa = %d, transb = %d is not CUBLAS_OP_N/T/C", api,
                      (int)transa, (int)transb);
    /* A is stored m×k (N) or k×m (T): lda must cover its rows; likewise B (k×n or n×k) and C. */
    const int a_rows = is_trans(transa) ? k : m, b_rows = is_trans(transb) ? n : k;
    if (lda < std::max(1, a_rows))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: lda = %d < max(1, %d), the rows of A as stored (transa = %s, "
                      "m = %d, k = %d)", api, lda, a_rows, op_name(transa), m, k);
    if (ldb < std::max(1, b_rows))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: ldb = %d < max(1, %d), the rows of B as stored (transb = %s, "
                      "k = %d, n = %d)", api, ldb, b_rows, op_name(transb), k, n);
    if (ldc < std::max(1, m))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: ldc = %d < max(1, m = %d)", api, ldc, m);
    if (!alpha || !beta) return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: alpha or beta is NULL", api);
    const int al = (int)algo;
    if (!(al == -1 || (al >= 0 && al <= 23) || (al >= 99 && al <= 115)))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: algo = %d is not a cublasGemmAlgo_t", api, al);
    const bool tf32_mode = (handle->math & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) ==
                           CUBLAS_TF32_TENSOR_OP_MATH;
    round_fn rnd = nullptr;
    if (!gemm_types_ok(Atype, Btype, Ctype, computeType, tf32_mode, &rnd))
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: Atype/Btype/Ctype = %d/%d/%d with computeType %d: cudasim "
                      "implements CUDA_R_32F matrices with the fp32 compute types and CUDA_R_16F matrices with "
                      "CUBLAS_COMPUTE_32F(_PEDANTIC)", api, (int)Atype, (int)Btype, (int)Ctype, (int)computeType);
    if (handle->pointer_mode != CUBLAS_POINTER_MODE_HOST)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: cudasim implements pointer mode host only", api);

    /* host pointer mode: the scalars are read now */
    const float alpha_v = *(const float *)alpha, beta_v = *(const float *)beta;
    if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;
    if ((k == 0 || alpha_v == 0.0f) && beta_v == 1.0f) return CUBLAS_STATUS_SUCCESS; /* C unchanged */

    Gemm g;
    g.ta = is_trans(transa);
    g.tb = is_trans(transb);
    g.m = m;
    g.n = n;
    g.k = k;
    g.batch = batchCount;
    g.alpha = alpha_v;
    g.beta = beta_v;
    g.ab_type = Atype;
    g.cd_type = Ctype;
    g.A = A;
    g.lda = lda;
    g.strideA = strideA;
    g.B = B;
    g.ldb = ldb;
    g.strideB = strideB;
    g.C = C;
    g.ldc = ldc;
    g.strideC = strideC;
    g.D = C;
    g.ldd = ldc;
    g.strideD = strideC;
    g.bias = nullptr;
    g.rnd = rnd;
    check_gemm_operands(g, api);
    check_gemm_overlaps(g, api, true);

    void *ws = handle->workspace;
    const size_t ws_bytes = handle->workspace_bytes;
    if (ws && ws_bytes) {
        cudasim::check_device_range(ws, ws_bytes, "cuBLAS workspace (cublasSetWorkspace)");
        int64_t lo, hi;
        const size_t ab = elem_bytes(g.ab_type), cd = elem_bytes(g.cd_type);
        const Mat mats[3] = {{g.A, ab, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda, g.strideA, g.batch},
                             {g.B, ab, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb, g.strideB, g.batch},
                             {g.C, cd, g.m, g.n, g.ldc, g.strideC, g.batch}};
        const char *names[3] = {"A", "B", "C"};
        for (int i = 0; i < 3; i++) {
            mat_extent(mats[i], &lo, &hi);
            if (ranges_overlap(ws, ws_bytes, (const void *)elem_addr(mats[i], lo), (size_t)(hi - lo) * mats[i].elem))
                cudasim::fault("%s: operand %s overlaps the cuBLAS workspace set with cublasSetWorkspace", api,
                               names[i]);
        }
    }
    const char *api_name = api; /* a string literal: safe to keep */
    cudasim::enqueue(handle->stream, [g, ws, ws_bytes, api_name]() {
        check_gemm_operands(g, api_name);
        if (ws && ws_bytes) {
            cudasim::check_device_range(ws, ws_bytes, "cuBLAS workspace (cublasSetWorkspace)");
            scribble(ws, ws_bytes);
        }
        run_gemm(g);
    });
    return CUBLAS_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------
 * cuBLASLt helpers
 * --------------------------------------------------------------------------------------------- */

constexpr uint64_t kAlgoMagic = 0x63756461'73696d4cULL; /* "cudasimL" */

unsigned align_of(const void *p) {
    if (!p) return 256; /* NULL: the heuristic cannot assume anything worse */
    unsigned a = 256;
    while (a > 1 && addr(p) % a) a >>= 1;
    return a;
}

/* What an algorithm chosen under a MIN_ALIGNMENT preference of `pref` bytes may assume for
 * elements of `elem` bytes: vector loads of up to 16 bytes, never less than one element. */
unsigned algo_alignment(unsigned pref, size_t elem) {
    unsigned a = 16;
    while (a > elem && pref < a) a >>= 1;
    return a;
}

bool epilogue_simulated(uint32_t e) { return e == CUBLASLT_EPILOGUE_DEFAULT || e == CUBLASLT_EPILOGUE_BIAS; }

/* Checks the descriptor and layouts against each other, as cublasLtMatmul and the heuristic do.
 * On success *m, *n, *k are the problem's sizes. */
cublasStatus_t lt_validate(const char *api, const cublasLtMatmulDescOpaque_st *d, const cublasLtMatrixLayoutOpaque_st *A,
                           const cublasLtMatrixLayoutOpaque_st *B, const cublasLtMatrixLayoutOpaque_st *C,
                           const cublasLtMatrixLayoutOpaque_st *D, int64_t *m, int64_t *n, int64_t *k) {
    if (!d || !A || !B || !C || !D)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: a NULL descriptor or layout", api);
    round_fn rnd = nullptr;
    if (d->scale != CUDA_R_32F || C->type != D->type ||
        !gemm_types_ok(A->type, B->type, D->type, d->compute, false, &rnd))
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: matrix types %d/%d/%d/%d, compute type %d, scale type %d: "
                      "cudasim implements CUDA_R_32F matrices with the fp32 compute types and CUDA_R_16F matrices with "
                      "CUBLAS_COMPUTE_32F(_PEDANTIC), both with CUDA_R_32F scale", api, (int)A->type, (int)B->type,
                      (int)C->type, (int)D->type, (int)d->compute, (int)d->scale);
    if (d->pointer_mode != 0)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: pointer mode %d (cudasim implements host scalars)", api,
                      (int)d->pointer_mode);
    if (d->transc != CUBLAS_OP_N)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: TRANSC must be CUBLAS_OP_N", api);
    if (d->fill_mode != 2)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: FILL_MODE must be CUBLAS_FILL_MODE_FULL", api);
    if (!epilogue_simulated(d->epilogue))
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: epilogue %u is not simulated (DEFAULT and BIAS are)", api,
                      (unsigned)d->epilogue);
    if (d->epilogue == CUBLASLT_EPILOGUE_BIAS && d->bias_type != -1 && d->bias_type != (int32_t)D->type)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: bias data type %d with D of type %d (cudasim implements a "
                      "bias of D's type)", api, (int)d->bias_type, (int)D->type);
    const struct {
        const cublasLtMatrixLayoutOpaque_st *l;
        const char *name;
    } all[] = {{A, "A"}, {B, "B"}, {C, "C"}, {D, "D"}};
    for (const auto &x : all)
        if (x.l->ld < (int64_t)std::max<uint64_t>(1, x.l->rows))
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: layout %s has ld %lld < rows %llu (column order)", api,
                          x.name, (long long)x.l->ld, (unsigned long long)x.l->rows);
    const uint64_t am = is_trans(d->transa) ? A->cols : A->rows, ak = is_trans(d->transa) ? A->rows : A->cols;
    const uint64_t bk = is_trans(d->transb) ? B->cols : B->rows, bn = is_trans(d->transb) ? B->rows : B->cols;
    if (am != D->rows || bn != D->cols || ak != bk)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: op(A) is %llux%llu (layout %llux%llu, TRANSA %s), op(B) is "
                      "%llux%llu (layout %llux%llu, TRANSB %s), D is %llux%llu: need op(A) m×k, op(B) k×n, D m×n",
                      api, (unsigned long long)am, (unsigned long long)ak, (unsigned long long)A->rows,
                      (unsigned long long)A->cols, op_name(d->transa), (unsigned long long)bk, (unsigned long long)bn,
                      (unsigned long long)B->rows, (unsigned long long)B->cols, op_name(d->transb),
                      (unsigned long long)D->rows, (unsigned long long)D->cols);
    if (C->rows != D->rows || C->cols != D->cols)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: C is %llux%llu but D is %llux%llu", api,
                      (unsigned long long)C->rows, (unsigned long long)C->cols, (unsigned long long)D->rows,
                      (unsigned long long)D->cols);
    const uint64_t lim = (uint64_t)INT64_MAX / 4;
    if (D->rows > lim || D->cols > lim || ak > lim)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: sizes too large", api);
    *m = (int64_t)D->rows;
    *n = (int64_t)D->cols;
    *k = (int64_t)ak;
    return CUBLAS_STATUS_SUCCESS;
}

/* The four matrix types, one byte each (A, B, C, D), as an algorithm records them. */
uint64_t packed_types(const cublasLtMatrixLayoutOpaque_st *const l[4]) {
    uint64_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint64_t)(l[i]->type & 0xff) << (8 * i);
    return v;
}

/* Algorithm contents: data[0] magic, [1] compute type, [2] epilogue, [3] packed required
 * alignments (A, B, C, D, bias: one byte each), [4] workspace bytes, [5] packed matrix types. */
void algo_make(cublasLtMatmulAlgo_t *a, const cublasLtMatmulDescOpaque_st *d, const unsigned req[5], uint64_t types) {
    memset(a, 0, sizeof *a);
    a->data[0] = kAlgoMagic;
    a->data[1] = (uint64_t)d->compute;
    a->data[2] = (uint64_t)d->epilogue;
    for (int i = 0; i < 5; i++) a->data[3] |= (uint64_t)(req[i] & 0xff) << (8 * i);
    a->data[4] = 0;
    a->data[5] = types;
}

/* The alignments an algorithm may assume: from the MIN_ALIGNMENT preferences (default 256) for
 * the matrices l[0..3] = A, B, C, D, and from the bias pointer set at heuristic time. */
void heuristic_alignments(const cublasLtMatmulDescOpaque_st *d, const cublasLtMatmulPreferenceOpaque_st *p,
                          const cublasLtMatrixLayoutOpaque_st *const l[4], unsigned req[5]) {
    for (int i = 0; i < 4; i++) req[i] = algo_alignment(p ? p->min_align[i] : 256, elem_bytes(l[i]->type));
    const size_t bias_elem = elem_bytes(l[3]->type);
    req[4] = d->epilogue == CUBLASLT_EPILOGUE_BIAS ? algo_alignment(align_of(d->bias), bias_elem) : (unsigned)bias_elem;
}

} // namespace

/* ------------------------------------------------------------------------------------------------
 * cuBLAS API
 * --------------------------------------------------------------------------------------------- */

extern "C" {

const char *cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    }
    return "unknown error";
}

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t streamId) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = streamId;
    /* documented: setting the stream unconditionally resets the workspace to the default pool */
    handle->workspace = nullptr;
    handle->workspace_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *streamId) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!streamId) return CUBLAS_STATUS_INVALID_VALUE;
    *streamId = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!workspace && workspaceSizeInBytes)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace: NULL workspace of %zu bytes",
                      workspaceSizeInBytes);
    if (addr(workspace) % 256)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace: workspace %p is not 256-byte aligned",
                      workspace);
    if (workspace && workspaceSizeInBytes)
        cudasim::check_device_range(workspace, workspaceSizeInBytes, "cublasSetWorkspace buffer");
    handle->workspace = workspaceSizeInBytes ? workspace : nullptr;
    handle->workspace_bytes = workspace ? workspaceSizeInBytes : 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int base = (int)mode & ~(int)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base != CUBLAS_DEFAULT_MATH && base != CUBLAS_TENSOR_OP_MATH && base != CUBLAS_PEDANTIC_MATH &&
        base != CUBLAS_TF32_TENSOR_OP_MATH)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetMathMode: mode %d", (int)mode);
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->math;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) return CUBLAS_STATUS_INVALID_VALUE;
    handle->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode(cublasHandle_t handle, cublasPointerMode_t *mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return gemm_strided("cublasGemmEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0,
                        beta, C, Ctype, ldc, 0, 1, computeType, algo);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void *beta, void *C, cudaDataType Ctype, int ldc,
                                          long long int strideC, int batchCount, cublasComputeType_t computeType,
                                          cublasGemmAlgo_t algo) {
    return gemm_strided("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA,
                        B, Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType, algo);
}

/* ------------------------------------------------------------------------------------------------
 * cuBLASLt API
 * --------------------------------------------------------------------------------------------- */

cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_INVALID_VALUE;
    *lightHandle = new cublasLtContext();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete lightHandle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatmulDescOpaque_st *d = new cublasLtMatmulDescOpaque_st();
    d->compute = computeType;
    d->scale = scaleType;
    *matmulDesc = d;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    delete matmulDesc;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes) {
    if (!d || !buf) return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescSetAttribute: NULL descriptor or buffer");
    /* the documented storage type of each attribute; a size that differs is INVALID_VALUE */
    auto want = [&](size_t bytes) {
        if (sizeInBytes == bytes) return true;
        refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescSetAttribute(%d): sizeInBytes %zu, the attribute is %zu "
               "bytes", (int)attr, sizeInBytes, bytes);
        return false;
    };
    int32_t i32 = 0;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
    case CUBLASLT_MATMUL_DESC_POINTER_MODE:
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
    case CUBLASLT_MATMUL_DESC_TRANSC:
    case CUBLASLT_MATMUL_DESC_FILL_MODE:
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
        if (!want(sizeof(int32_t))) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&i32, buf, sizeof i32);
        break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        if (!want(sizeof(uint32_t))) return CUBLAS_STATUS_INVALID_VALUE;
        break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        if (!want(sizeof(void *))) return CUBLAS_STATUS_INVALID_VALUE;
        break;
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE:
        if (!want(sizeof(int64_t))) return CUBLAS_STATUS_INVALID_VALUE;
        break;
    default:
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulDescSetAttribute: attribute %d is not simulated",
                      (int)attr);
    }
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: d->compute = (cublasComputeType_t)i32; break;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: d->scale = (cudaDataType_t)i32; break;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: d->pointer_mode = i32; break;
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
    case CUBLASLT_MATMUL_DESC_TRANSC:
        if (!valid_op(i32))
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescSetAttribute: transpose value %d", (int)i32);
        (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d->transa : attr == CUBLASLT_MATMUL_DESC_TRANSB ? d->transb : d->transc) =
            i32;
        break;
    case CUBLASLT_MATMUL_DESC_FILL_MODE: d->fill_mode = i32; break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: d->bias_type = i32; break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: memcpy(&d->epilogue, buf, sizeof d->epilogue); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: memcpy(&d->bias, buf, sizeof d->bias); break;
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: memcpy(&d->bias_batch_stride, buf, sizeof(int64_t)); break;
    default: break;
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if (!matLayout) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatrixLayoutOpaque_st *l = new cublasLtMatrixLayoutOpaque_st();
    l->type = type;
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    *matLayout = l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    delete matLayout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    *pref = new cublasLtMatmulPreferenceOpaque_st();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes) {
    if (!pref || !buf)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceSetAttribute: NULL preference or buffer");
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE:
        if (sizeInBytes != sizeof(uint32_t)) break;
        memcpy(&pref->search_mode, buf, sizeof(uint32_t));
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
        if (sizeInBytes != sizeof(uint64_t)) break;
        memcpy(&pref->max_workspace, buf, sizeof(uint64_t));
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
        if (sizeInBytes != sizeof(uint32_t)) break;
        memcpy(&pref->min_align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, sizeof(uint32_t));
        return CUBLAS_STATUS_SUCCESS;
    default:
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulPreferenceSetAttribute: attribute %d is not "
                      "simulated", (int)attr);
    }
    return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceSetAttribute(%d): sizeInBytes %zu does not "
                  "match the attribute's type", (int)attr, sizeInBytes);
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount) {
    const char *api = "cublasLtMatmulAlgoGetHeuristic";
    if (!lightHandle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "%s: NULL handle", api);
    if (requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount || !preference)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: requestedAlgoCount %d, results %p, count %p, preference %p", api,
                      requestedAlgoCount, (void *)heuristicResultsArray, (void *)returnAlgoCount, (void *)preference);
    *returnAlgoCount = 0;
    int64_t m, n, k;
    const cublasStatus_t st = lt_validate(api, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &m, &n, &k);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    unsigned req[5];
    const cublasLtMatrixLayoutOpaque_st *const layouts[4] = {Adesc, Bdesc, Cdesc, Ddesc};
    heuristic_alignments(operationDesc, preference, layouts, req);
    memset(&heuristicResultsArray[0], 0, sizeof heuristicResultsArray[0]);
    /* up to three: the first needs no workspace; the others ask for some (within the preference's
     * maximum), so that a caller timing them exercises its workspace handling */
    int found = 0;
    for (int v = 0; v < 3 && found < requestedAlgoCount; v++) {
        const uint64_t ws = v == 0 ? 0 : 4096 * (uint64_t)v;
        if (ws > preference->max_workspace) continue;
        memset(&heuristicResultsArray[found], 0, sizeof heuristicResultsArray[found]);
        algo_make(&heuristicResultsArray[found].algo, operationDesc, req, packed_types(layouts));
        heuristicResultsArray[found].algo.data[4] = ws;
        heuristicResultsArray[found].algo.data[6] = (uint64_t)v; /* the variant: the same arithmetic */
        heuristicResultsArray[found].workspaceSize = ws;
        heuristicResultsArray[found].state = CUBLAS_STATUS_SUCCESS;
        heuristicResultsArray[found].wavesCount = 1.0f;
        found++;
    }
    *returnAlgoCount = found;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                              cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                              cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspaceSizeInBytes,
                              cudaStream_t stream) {
    const char *api = "cublasLtMatmul";
    if (!lightHandle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "%s: NULL handle", api);
    if (!alpha || !beta) return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: alpha or beta is NULL", api);
    int64_t m, n, k;
    cublasStatus_t st = lt_validate(api, computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &m, &n, &k);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    const cublasLtMatmulDescOpaque_st *d = computeDesc;
    /* in-place needs identical C and D layouts; out-of-place C may differ in ld only */
    if (C == D && (Cdesc->ld != Ddesc->ld || Cdesc->rows != Ddesc->rows || Cdesc->cols != Ddesc->cols))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: in-place (C == D) with ldc %lld != ldd %lld", api,
                      (long long)Cdesc->ld, (long long)Ddesc->ld);
    const bool has_bias = d->epilogue == CUBLASLT_EPILOGUE_BIAS;
    if (has_bias && !d->bias)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: CUBLASLT_EPILOGUE_BIAS without BIAS_POINTER", api);
    if (!workspace && workspaceSizeInBytes)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: NULL workspace of %zu bytes", api, workspaceSizeInBytes);

    unsigned req[5];
    const cublasLtMatrixLayoutOpaque_st *const layouts[4] = {Adesc, Bdesc, Cdesc, Ddesc};
    if (algo) {
        if (algo->data[0] != kAlgoMagic)
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: algo was not filled by cublasLtMatmulAlgoGetHeuristic", api);
        if (algo->data[1] != (uint64_t)d->compute || algo->data[2] != (uint64_t)d->epilogue)
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: algo was chosen for compute type %llu / epilogue %llu, the "
                          "descriptor has %d / %u", api, (unsigned long long)algo->data[1],
                          (unsigned long long)algo->data[2], (int)d->compute, (unsigned)d->epilogue);
        if (algo->data[5] != packed_types(layouts))
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: algo was chosen for other matrix types (packed A, B, C, D: "
                          "0x%08llx, the layouts have 0x%08llx)", api, (unsigned long long)algo->data[5],
                          (unsigned long long)packed_types(layouts));
        if (workspaceSizeInBytes < algo->data[4])
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: workspace %zu bytes < the algorithm's %llu", api,
                          workspaceSizeInBytes, (unsigned long long)algo->data[4]);
        for (int i = 0; i < 5; i++) req[i] = (unsigned)((algo->data[3] >> (8 * i)) & 0xff);
    } else {
        /* implicit heuristic with default preferences, which sees the actual pointers */
        for (int i = 0; i < 4; i++) req[i] = (unsigned)elem_bytes(layouts[i]->type);
        req[4] = (unsigned)elem_bytes(Ddesc->type);
    }
    const float alpha_v = *(const float *)alpha, beta_v = *(const float *)beta;
    const struct {
        const void *p;
        const char *name;
        unsigned need;
    } al[] = {{A, "A", req[0]}, {B, "B", req[1]}, {beta_v != 0.0f ? C : nullptr, "C", req[2]}, {D, "D", req[3]},
              {has_bias ? d->bias : nullptr, "bias", req[4]}};
    for (const auto &x : al)
        if (x.p && addr(x.p) % x.need)
            cudasim::fault("%s: misaligned address: %s = %p is not %u-byte aligned, which the algorithm from "
                           "cublasLtMatmulAlgoGetHeuristic was chosen for (MIN_ALIGNMENT preferences / the bias "
                           "pointer at heuristic time)", api, x.name, x.p, x.need);

    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    Gemm g;
    g.ta = is_trans(d->transa);
    g.tb = is_trans(d->transb);
    g.m = m;
    g.n = n;
    g.k = k;
    g.batch = 1;
    g.alpha = alpha_v;
    g.beta = beta_v;
    g.ab_type = Adesc->type;
    g.cd_type = Ddesc->type;
    g.A = A;
    g.lda = Adesc->ld;
    g.strideA = 0;
    g.B = B;
    g.ldb = Bdesc->ld;
    g.strideB = 0;
    g.C = C;
    g.ldc = Cdesc->ld;
    g.strideC = 0;
    g.D = D;
    g.ldd = Ddesc->ld;
    g.strideD = 0;
    g.bias = has_bias ? d->bias : nullptr;
    gemm_types_ok(Adesc->type, Bdesc->type, Ddesc->type, d->compute, false, &g.rnd); /* validated above */
    check_gemm_operands(g, api);
    check_gemm_overlaps(g, api, C == D);
    if (workspace && workspaceSizeInBytes) {
        cudasim::check_device_range(workspace, workspaceSizeInBytes, "cublasLtMatmul workspace");
        if (ranges_overlap(workspace, workspaceSizeInBytes, D, (size_t)((n - 1) * g.ldd + m) * elem_bytes(g.cd_type)))
            cudasim::fault("%s: the workspace overlaps D", api);
    }
    /* everything the work needs is copied: the descriptors may be destroyed (or changed, as the
     * backend does with the bias pointer) before a captured graph replays */
    cudasim::enqueue(stream, [g, api]() {
        check_gemm_operands(g, api);
        run_gemm(g);
    });
    return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
