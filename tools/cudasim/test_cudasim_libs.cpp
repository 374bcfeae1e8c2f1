/* test_cudasim_libs.cpp: self-test of the cuBLAS / cuBLASLt / cuDNN stand-ins (cublas_sim.cpp,
 * cudnn_sim.cpp) against naive reference loops written here independently.
 *
 * The references think in row-major terms and convert explicitly: a column-major matrix with
 * leading dimension ld is, read row by row, its transpose, so its element (r, c) lives at
 * base[c·ld + r]. Convolutions are checked against the textbook 7-deep loop, and backward data /
 * backward filter both against brute-force scatter sums and against the adjoint identity
 * <conv(x, w), dy> = <x, bwd_data(dy, w)> = <w, bwd_filter(x, dy)>.
 *
 * Every "device" buffer is registered with the stubs (test_cudasim_libs_stubs.cpp) with exactly
 * the extent the API rules give, so a stand-in that checks or touches more fails here.
 *
 * Build and run:
 *   g++ -std=c++17 -O2 -fopenmp -Itools/cudasim/include tools/cudasim/test_cudasim_libs.cpp \
 *       tools/cudasim/test_cudasim_libs_stubs.cpp tools/cudasim/cublas_sim.cpp tools/cudasim/cudnn_sim.cpp \
 *       -o /tmp/test_cudasim_libs && /tmp/test_cudasim_libs */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cudnn.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

/* test hooks of the stubs */
void cudasim_test_defer(bool on);
void cudasim_test_flush();
size_t cudasim_test_queued();
void cudasim_test_register(const void *p, size_t bytes);
void cudasim_test_unregister(const void *p);
size_t cudasim_test_range_checks();

static int g_pass = 0, g_fail = 0;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            g_pass++;                                                                              \
        } else {                                                                                   \
            g_fail++;                                                                              \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

/* A "device" buffer: 256-byte aligned like cudaMalloc, registered with exactly `bytes`. */
struct Buf {
    float *p = nullptr;
    size_t bytes = 0;
    explicit Buf(size_t nbytes) : bytes(nbytes) {
        if (!nbytes) return;
        p = (float *)aligned_alloc(256, (nbytes + 255) / 256 * 256);
        cudasim_test_register(p, nbytes);
    }
    static Buf floats(size_t n) { return Buf(n * sizeof(float)); }
    Buf(Buf &&o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; }
    Buf(const Buf &) = delete;
    ~Buf() {
        if (p) {
            cudasim_test_unregister(p);
            free(p);
        }
    }
    size_t n() const { return bytes / sizeof(float); }
    float &operator[](size_t i) { return p[i]; }
};

static uint64_t g_rng = 0x9e3779b97f4a7c15ULL;
static float frand() { /* uniform in [-1, 1) */
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(g_rng >> 40) / (double)(1 << 24) * 2.0 - 1.0);
}
static void fill(Buf &b) {
    for (size_t i = 0; i < b.n(); i++) b[i] = frand();
}

/* fp16 "device" buffers: a Buf of n halves, filled with uniform values rounded to half, and read
 * back widened (exact). */
static Buf halves(size_t n) { return Buf(n * sizeof(__half)); }
static __half *hp(Buf &b) { return (__half *)b.p; }
static size_t n_halves(const Buf &b) { return b.bytes / sizeof(__half); }
static void fill_half(Buf &b) {
    for (size_t i = 0; i < n_halves(b); i++) hp(b)[i] = __float2half_rn(frand());
}
static std::vector<float> widened(Buf &b) {
    std::vector<float> v(n_halves(b));
    for (size_t i = 0; i < v.size(); i++) v[i] = __half2float(hp(b)[i]);
    return v;
}

/* A half result against an exact reference: one rounding to nearest is at most half an ulp,
 * 2^-11·|want| for normal values and 2^-25 below 2^-14 (plus the reference's own double-rounding
 * noise, relative to the sum of the magnitudes). A result rounded twice, or read at lower
 * precision, misses this bound on most elements. */
static bool half_close_to(double got, double want, double scale) {
    return std::fabs(got - want) <= std::ldexp(std::fabs(want), -11) + std::ldexp(1.0, -25) + 1e-12 * scale;
}

/* A child process runs `f`; passes when it aborts (cudasim::fault). */
static bool aborts(const std::function<void()> &f) {
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        f();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

/* ================================================================================================
 * GEMM reference
 * ============================================================================================= */

/* (r, c) of a column-major matrix with leading dimension ld */
static double cm(const float *base, int64_t ld, int64_t r, int64_t c) { return base[c * ld + r]; }

typedef float (*rnd_fn)(float);
static float no_round(float x) { return x; }

/* out[i·n + j] (row-major m×n) = alpha·Σ_l op(A)(i, l)·op(B)(l, j) + beta·C(i, j); scale[i·n + j]
 * = the sum of the terms' magnitudes, for the tolerance. */
static void ref_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const float *A, int64_t lda,
                     const float *B, int64_t ldb, double beta, const float *C, int64_t ldc, rnd_fn rnd,
                     std::vector<double> &out, std::vector<double> &scale) {
    out.assign((size_t)(m * n), 0.0);
    scale.assign((size_t)(m * n), 0.0);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0, a = 0;
            for (int64_t l = 0; l < k; l++) {
                const double av = rnd(ta ? (float)cm(A, lda, l, i) : (float)cm(A, lda, i, l));
                const double bv = rnd(tb ? (float)cm(B, ldb, j, l) : (float)cm(B, ldb, l, j));
                s += av * bv;
                a += std::fabs(av * bv);
            }
            double v = alpha * s, sc = std::fabs(alpha) * a;
            if (beta != 0) {
                v += beta * cm(C, ldc, i, j);
                sc += std::fabs(beta * cm(C, ldc, i, j));
            }
            out[(size_t)(i * n + j)] = v;
            scale[(size_t)(i * n + j)] = sc;
        }
}

static bool close_to(double got, double want, double scale) {
    return std::fabs(got - want) <= 2e-7 * scale + 1e-6 * std::fabs(want) + 1e-30;
}

/* compares the column-major m×n result in C (ld ldc) with the row-major reference */
static int count_bad(const float *C, int64_t ldc, int64_t m, int64_t n, const std::vector<double> &ref,
                     const std::vector<double> &scale) {
    int bad = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            if (!close_to(cm(C, ldc, i, j), ref[(size_t)(i * n + j)], scale[(size_t)(i * n + j)])) {
                if (bad < 3)
                    printf("  (%lld, %lld): got %.9g want %.9g\n", (long long)i, (long long)j, cm(C, ldc, i, j),
                           ref[(size_t)(i * n + j)]);
                bad++;
            }
    return bad;
}

static size_t extent(int64_t rows, int64_t cols, int64_t ld) { return (size_t)((cols - 1) * ld + rows); }

/* ================================================================================================
 * cuBLAS
 * ============================================================================================= */

static void test_gemm_ex(cublasHandle_t h) {
    const int m = 5, n = 4, k = 6;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
            const int lda = a_rows + 2, ldb = b_rows + 3, ldc = m + 1;
            Buf A = Buf::floats(extent(a_rows, a_cols, lda)), B = Buf::floats(extent(b_rows, b_cols, ldb));
            Buf C = Buf::floats(extent(m, n, ldc));
            fill(A);
            fill(B);
            fill(C);
            std::vector<float> C0(C.p, C.p + C.n());
            const float alpha = 0.75f, beta = -1.25f;
            std::vector<double> ref, scale;
            ref_gemm(ta, tb, m, n, k, alpha, A.p, lda, B.p, ldb, beta, C0.data(), ldc, no_round, ref, scale);
            const cublasStatus_t st =
                cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A.p,
                             CUDA_R_32F, lda, B.p, CUDA_R_32F, ldb, &beta, C.p, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
            CHECK(st == CUBLAS_STATUS_SUCCESS, "GemmEx %c%c status %d", ta ? 'T' : 'N', tb ? 'T' : 'N', (int)st);
            CHECK(count_bad(C.p, ldc, m, n, ref, scale) == 0, "GemmEx %c%c values", ta ? 'T' : 'N', tb ? 'T' : 'N');
            bool gap_ok = true; /* rows m..ldc-1 of each column are not part of C */
            for (int c = 0; c + 1 < n; c++)
                for (int r = m; r < ldc; r++) gap_ok &= C[(size_t)(c * ldc + r)] == C0[(size_t)(c * ldc + r)];
            CHECK(gap_ok, "GemmEx %c%c wrote between columns", ta ? 'T' : 'N', tb ? 'T' : 'N');
        }
}

/* CUDA_R_16F A/B/C with CUBLAS_COMPUTE_32F: halves multiplied exactly, C read as half, the
 * result rounded once to half. */
static void test_gemm_ex_f16(cublasHandle_t h) {
    const int m = 7, n = 5, k = 9;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
            const int lda = a_rows + 1, ldb = b_rows + 2, ldc = m + 3;
            Buf A = halves(extent(a_rows, a_cols, lda)), B = halves(extent(b_rows, b_cols, ldb));
            Buf C = halves(extent(m, n, ldc));
            fill_half(A);
            fill_half(B);
            fill_half(C);
            const std::vector<float> Af = widened(A), Bf = widened(B), C0 = widened(C);
            const std::vector<__half> C0_bits(hp(C), hp(C) + n_halves(C));
            const float alpha = 0.75f, beta = ta ? -1.25f : 0.0f;
            std::vector<double> ref, scale;
            ref_gemm(ta, tb, m, n, k, alpha, Af.data(), lda, Bf.data(), ldb, beta, C0.data(), ldc, no_round, ref,
                     scale);
            const cublasStatus_t st =
                cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A.p,
                             CUDA_R_16F, lda, B.p, CUDA_R_16F, ldb, &beta, C.p, CUDA_R_16F, ldc, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
            CHECK(st == CUBLAS_STATUS_SUCCESS, "GemmEx 16F %c%c status %d", ta ? 'T' : 'N', tb ? 'T' : 'N', (int)st);
            int bad = 0;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    const double got = __half2float(hp(C)[(size_t)j * ldc + i]);
                    if (!half_close_to(got, ref[(size_t)(i * n + j)], scale[(size_t)(i * n + j)])) {
                        if (bad < 3) printf("  (%d, %d): got %.9g want %.9g\n", i, j, got, ref[(size_t)(i * n + j)]);
                        bad++;
                    }
                }
            CHECK(bad == 0, "GemmEx 16F %c%c (beta %g) values (%d bad)", ta ? 'T' : 'N', tb ? 'T' : 'N', (double)beta,
                  bad);
            bool gap_ok = true; /* rows m..ldc-1 of each column are not part of C */
            for (int c = 0; c + 1 < n; c++)
                for (int r = m; r < ldc; r++) gap_ok &= hp(C)[(size_t)c * ldc + r].bits == C0_bits[(size_t)c * ldc + r].bits;
            CHECK(gap_ok, "GemmEx 16F %c%c wrote between columns", ta ? 'T' : 'N', tb ? 'T' : 'N');
        }
    /* the combinations not simulated, and the illegal ones, are refused without touching memory */
    Buf A = halves(64), B = halves(64), C = halves(64), Cf = Buf::floats(64);
    const float one = 1.0f;
    const size_t checks_before = cudasim_test_range_checks();
    CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, A.p, CUDA_R_16F, 4, B.p, CUDA_R_16F, 4, &one, C.p,
                       CUDA_R_16F, 4, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED,
          "GemmEx 16F with COMPUTE_32F_FAST_16BF (fp32 data only) is NOT_SUPPORTED");
    CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, A.p, CUDA_R_16F, 4, B.p, CUDA_R_32F, 4, &one, C.p,
                       CUDA_R_16F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED,
          "GemmEx 16F A with 32F B is NOT_SUPPORTED");
    CHECK(cudasim_test_range_checks() == checks_before, "a refused 16F call touched memory");
    {
        /* 16F A/B with a 32F C (linear_f32io's fallback): halves read exactly, fp32 sums, C F32 */
        fill_half(A);
        fill_half(B);
        const float zero = 0.0f;
        CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, A.p, CUDA_R_16F, 4, B.p, CUDA_R_16F, 4, &zero,
                           Cf.p, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
              "GemmEx 16F A/B with a 32F C");
        int bad = 0;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                double sum = 0.0, mag = 0.0;
                for (int q = 0; q < 4; q++) {
                    const double t = (double)__half2float(hp(A)[i + q * 4]) * __half2float(hp(B)[q + j * 4]);
                    sum += t;
                    mag += std::fabs(t);
                }
                bad += std::fabs(Cf.p[i + j * 4] - sum) > 1e-6 * (mag + 1e-30);
            }
        CHECK(bad == 0, "GemmEx 16F A/B with a 32F C: fp32 sums of exact products (%d bad)", bad);
    }
    {
        /* 16BF A/B with a 32F C accumulated into (a gradient step's data gradient): bfloat16 read
         * exactly, fp32 sums added to C; mixed 16BF / 16F operands are refused */
        __nv_bfloat16 *a16 = reinterpret_cast<__nv_bfloat16 *>(A.p), *b16 = reinterpret_cast<__nv_bfloat16 *>(B.p);
        for (int i = 0; i < 16; i++) {
            a16[i] = __float2bfloat16_rn(0.37f * (float)(i % 7) - 1.1f);
            b16[i] = __float2bfloat16_rn(1e-6f * (float)(i % 5 + 1));
            Cf.p[i] = 2e-6f * (float)i;
        }
        float c0[16];
        memcpy(c0, Cf.p, sizeof c0);
        CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, A.p, CUDA_R_16BF, 4, B.p, CUDA_R_16BF, 4, &one,
                           Cf.p, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
              "GemmEx 16BF A/B with a 32F C");
        int bad = 0;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                double sum = c0[i + j * 4], mag = std::fabs(sum);
                for (int q = 0; q < 4; q++) {
                    const double t = (double)__bfloat162float(a16[i + q * 4]) * __bfloat162float(b16[q + j * 4]);
                    sum += t;
                    mag += std::fabs(t);
                }
                bad += std::fabs(Cf.p[i + j * 4] - sum) > 1e-6 * (mag + 1e-30);
            }
        CHECK(bad == 0, "GemmEx 16BF A/B with a 32F C: fp32 sums of exact products added to C (%d bad)", bad);
        CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, A.p, CUDA_R_16BF, 4, B.p, CUDA_R_16F, 4, &one,
                           Cf.p, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED,
              "GemmEx 16BF A with 16F B is NOT_SUPPORTED");
    }
    CHECK(aborts([&] {
              Buf small = halves(15); /* C needs (4 - 1)·4 + 4 = 16 halves */
              cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, A.p, CUDA_R_16F, 4, B.p, CUDA_R_16F, 4, &one,
                           small.p, CUDA_R_16F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
          }),
          "GemmEx 16F with C one half past its allocation faults (ranges in halves)");
}

static void test_strided_batched(cublasHandle_t h) {
    const int m = 7, n = 3, k = 4, batch = 3;
    const int lda = k + 1, ldb = k, ldc = m + 2; /* A transposed (k×m stored), B not (k×n) */
    const long long sA = (long long)extent(k, m, lda) + 5, sB = 0 /* one B for all */, sC = (long long)extent(m, n, ldc) + 1;
    Buf A = Buf::floats((size_t)((batch - 1) * sA) + extent(k, m, lda));
    Buf B = Buf::floats(extent(k, n, ldb));
    Buf C = Buf::floats((size_t)((batch - 1) * sC) + extent(m, n, ldc));
    fill(A);
    fill(B);
    fill(C);
    std::vector<float> C0(C.p, C.p + C.n());
    const float alpha = 1.5f, beta = 0.5f;
    const cublasStatus_t st = cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, A.p, CUDA_R_32F,
                                                         lda, sA, B.p, CUDA_R_32F, ldb, sB, &beta, C.p, CUDA_R_32F, ldc,
                                                         sC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    CHECK(st == CUBLAS_STATUS_SUCCESS, "strided batched status %d", (int)st);
    for (int b = 0; b < batch; b++) {
        std::vector<double> ref, scale;
        ref_gemm(true, false, m, n, k, alpha, A.p + b * sA, lda, B.p, ldb, beta, C0.data() + b * sC, ldc, no_round, ref,
                 scale);
        CHECK(count_bad(C.p + b * sC, ldc, m, n, ref, scale) == 0, "strided batched matrix %d", b);
    }
    /* the gap between batches is untouched */
    bool gap_ok = true;
    for (int b = 0; b + 1 < batch; b++) gap_ok &= C[(size_t)(b * sC + extent(m, n, ldc))] == C0[(size_t)(b * sC + extent(m, n, ldc))];
    CHECK(gap_ok, "strided batched wrote between matrices");
}

/* The backend's cu_gemm_rm (kernels/gemm.cu): a row-major C = op(A)·op(B) computed as the
 * column-major Cᵀ = op(B)ᵀ·op(A)ᵀ by swapping the operands and keeping their flags. */
static cublasStatus_t gemm_rm(cublasHandle_t h, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                              int lda, long long sA, const float *B, int ldb, long long sB, float beta, float *C, int ldc,
                              long long sC, int batch, cublasComputeType_t ct) {
    return cublasGemmStridedBatchedEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                                      B, CUDA_R_32F, ldb, sB, A, CUDA_R_32F, lda, sA, &beta, C, CUDA_R_32F, ldc, sC,
                                      batch, ct, CUBLAS_GEMM_DEFAULT);
}

/* Row-major reference for gemm_rm: A_i row-major with lda, op(A)[m][k] = A[m·lda + k] (!ta) or
 * A[k·lda + m] (ta). */
static double rm_at(const float *X, int ld, bool t, int r, int c) { return t ? X[(size_t)c * ld + r] : X[(size_t)r * ld + c]; }

static void test_row_major_pattern(cublasHandle_t h) {
    /* attention-like: q and k are [S, H·D] with head h at columns h·D (lda = H·D, stride D);
     * scores[h] = q_h · k_hᵀ is [S, Sk] per head (stride S·Sk); then out_h = P_h · v_h is written
     * interleaved into [S, H·Dv] (ldc = H·Dv, stride Dv): the batch's output matrices share rows
     * but not elements, which must not be mistaken for overlap. */
    const int S = 5, Sk = 6, H = 3, D = 4, Dv = 2;
    Buf q = Buf::floats((size_t)S * H * D), kk = Buf::floats((size_t)Sk * H * D), v = Buf::floats((size_t)Sk * H * Dv);
    Buf scores = Buf::floats((size_t)H * S * Sk), out = Buf::floats((size_t)S * H * Dv);
    fill(q);
    fill(kk);
    fill(v);
    for (size_t i = 0; i < scores.n(); i++) scores[i] = NAN; /* beta = 0: never read */
    for (size_t i = 0; i < out.n(); i++) out[i] = NAN;
    const float scale = 0.5f;
    CHECK(gemm_rm(h, 0, 1, S, Sk, D, scale, q.p, H * D, D, kk.p, H * D, D, 0.0f, scores.p, Sk, (long long)S * Sk, H,
                  CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_SUCCESS,
          "row-major scores");
    int bad = 0;
    for (int hh = 0; hh < H; hh++)
        for (int i = 0; i < S; i++)
            for (int j = 0; j < Sk; j++) {
                double s = 0, a = 0;
                for (int d = 0; d < D; d++) {
                    const double t = rm_at(q.p + hh * D, H * D, false, i, d) * rm_at(kk.p + hh * D, H * D, true, d, j);
                    s += t;
                    a += std::fabs(t);
                }
                bad += !close_to(scores[(size_t)(hh * S * Sk + i * Sk + j)], scale * s, scale * a);
            }
    CHECK(bad == 0, "row-major scores values (%d bad)", bad);
    CHECK(gemm_rm(h, 0, 0, S, Dv, Sk, 1.0f, scores.p, Sk, (long long)S * Sk, v.p, H * Dv, Dv, 0.0f, out.p, H * Dv, Dv, H,
                  CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_SUCCESS,
          "row-major P·V into interleaved heads");
    bad = 0;
    for (int hh = 0; hh < H; hh++)
        for (int i = 0; i < S; i++)
            for (int j = 0; j < Dv; j++) {
                double s = 0, a = 0;
                for (int l = 0; l < Sk; l++) {
                    const double t = scores[(size_t)(hh * S * Sk + i * Sk + l)] * rm_at(v.p + hh * Dv, H * Dv, false, l, j);
                    s += t;
                    a += std::fabs(t);
                }
                bad += !close_to(out[(size_t)(i * H * Dv + hh * Dv + j)], s, a);
            }
    CHECK(bad == 0, "row-major P·V values (%d bad)", bad);
    /* transposed A in row-major terms: dW[N, K] += dy[M, N]ᵀ · x[M, K] (linear backward) */
    const int M = 6, N = 3, K = 5;
    Buf dy = Buf::floats((size_t)M * N), x = Buf::floats((size_t)M * K), dw = Buf::floats((size_t)N * K);
    fill(dy);
    fill(x);
    fill(dw);
    std::vector<float> dw0(dw.p, dw.p + dw.n());
    CHECK(gemm_rm(h, 1, 0, N, K, M, 1.0f, dy.p, N, 0, x.p, K, 0, 1.0f, dw.p, K, 0, 1, CUBLAS_COMPUTE_32F) ==
              CUBLAS_STATUS_SUCCESS,
          "row-major dyᵀ·x");
    bad = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < K; j++) {
            double s = dw0[(size_t)(i * K + j)], a = std::fabs(s);
            for (int l = 0; l < M; l++) {
                const double t = rm_at(dy.p, N, true, i, l) * rm_at(x.p, K, false, l, j);
                s += t;
                a += std::fabs(t);
            }
            bad += !close_to(dw[(size_t)(i * K + j)], s, a);
        }
    CHECK(bad == 0, "row-major dyᵀ·x values (%d bad)", bad);
}

static void test_beta_zero_nan(cublasHandle_t h) {
    const int m = 4, n = 3, k = 5;
    Buf A = Buf::floats(extent(m, k, m)), B = Buf::floats(extent(k, n, k)), C = Buf::floats(extent(m, n, m));
    fill(A);
    fill(B);
    for (size_t i = 0; i < C.n(); i++) C[i] = NAN;
    const float alpha = 2.0f, beta = 0.0f;
    CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, A.p, CUDA_R_32F, m, B.p, CUDA_R_32F, k, &beta, C.p,
                       CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "beta 0 status");
    std::vector<double> ref, scale;
    ref_gemm(false, false, m, n, k, alpha, A.p, m, B.p, k, 0.0, nullptr, m, no_round, ref, scale);
    bool finite = true;
    for (size_t i = 0; i < C.n(); i++) finite &= std::isfinite(C[i]);
    CHECK(finite, "beta 0: NaN from C propagated");
    CHECK(count_bad(C.p, m, m, n, ref, scale) == 0, "beta 0 values");
}

/* A fast compute type rounds A and B (not C) before multiplying. */
static void test_fast_modes(cublasHandle_t h) {
    const struct {
        cublasComputeType_t ct;
        rnd_fn r;
        const char *name;
    } modes[] = {{CUBLAS_COMPUTE_32F_FAST_16BF, cudasim::round_bf16, "FAST_16BF"},
                 {CUBLAS_COMPUTE_32F_FAST_TF32, cudasim::round_tf32, "FAST_TF32"},
                 {CUBLAS_COMPUTE_32F_FAST_16F, cudasim::round_fp16, "FAST_16F"}};
    const int m = 9, n = 7, k = 33;
    for (const auto &md : modes) {
        Buf A = Buf::floats(extent(k, m, k)), B = Buf::floats(extent(k, n, k)), C = Buf::floats(extent(m, n, m));
        fill(A);
        fill(B);
        fill(C);
        for (size_t i = 0; i < C.n(); i++) C[i] = C[i] * 1.00001f + 1e-4f; /* digits beyond every format */
        std::vector<float> C0(C.p, C.p + C.n());
        const float alpha = 1.0f, beta = 1.0f;
        CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, A.p, CUDA_R_32F, k, B.p, CUDA_R_32F, k, &beta,
                           C.p, CUDA_R_32F, m, md.ct, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
              "%s status", md.name);
        std::vector<double> ref, scale, exact, escale;
        ref_gemm(true, false, m, n, k, alpha, A.p, k, B.p, k, beta, C0.data(), m, md.r, ref, scale);
        ref_gemm(true, false, m, n, k, alpha, A.p, k, B.p, k, beta, C0.data(), m, no_round, exact, escale);
        CHECK(count_bad(C.p, m, m, n, ref, scale) == 0, "%s equals the reference on rounded inputs", md.name);
        int differs = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) differs += !close_to(cm(C.p, m, i, j), exact[(size_t)(i * n + j)], escale[(size_t)(i * n + j)]);
        CHECK(differs > 0, "%s: no element differs from the exact fp32 product (rounding not applied?)", md.name);
    }
    /* the handle's TF32 math mode lets COMPUTE_32F use TF32; PEDANTIC never rounds */
    const int mm = 8, nn = 8, kk = 40;
    Buf A = Buf::floats(extent(mm, kk, mm)), B = Buf::floats(extent(kk, nn, kk)), C = Buf::floats(extent(mm, nn, mm));
    fill(A);
    fill(B);
    const float one = 1.0f, zero = 0.0f;
    std::vector<double> tf, tfs, ex, exs;
    ref_gemm(false, false, mm, nn, kk, 1.0, A.p, mm, B.p, kk, 0.0, nullptr, mm, cudasim::round_tf32, tf, tfs);
    ref_gemm(false, false, mm, nn, kk, 1.0, A.p, mm, B.p, kk, 0.0, nullptr, mm, no_round, ex, exs);
    CHECK(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH) == CUBLAS_STATUS_SUCCESS, "set TF32 math");
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, mm, nn, kk, &one, A.p, CUDA_R_32F, mm, B.p, CUDA_R_32F, kk, &zero, C.p,
                 CUDA_R_32F, mm, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    CHECK(count_bad(C.p, mm, mm, nn, tf, tfs) == 0, "TF32 math mode rounds COMPUTE_32F inputs");
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, mm, nn, kk, &one, A.p, CUDA_R_32F, mm, B.p, CUDA_R_32F, kk, &zero, C.p,
                 CUDA_R_32F, mm, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT);
    CHECK(count_bad(C.p, mm, mm, nn, ex, exs) == 0, "COMPUTE_32F_PEDANTIC is exact fp32 under TF32 math mode");
    CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS, "set default math");
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, mm, nn, kk, &one, A.p, CUDA_R_32F, mm, B.p, CUDA_R_32F, kk, &zero, C.p,
                 CUDA_R_32F, mm, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    CHECK(count_bad(C.p, mm, mm, nn, ex, exs) == 0, "COMPUTE_32F under default math is exact fp32");
}

static void test_gemm_errors(cublasHandle_t h) {
    const int m = 4, n = 3, k = 5;
    Buf A = Buf::floats(64), B = Buf::floats(64), C = Buf::floats(64);
    fill(A);
    fill(B);
    fill(C);
    const float one = 1.0f;
    auto run = [&](cublasHandle_t hh, cublasOperation_t ta, cublasOperation_t tb, int mm, int nn, int kk, int lda,
                   int ldb, int ldc, cudaDataType t, cublasComputeType_t ct, const float *alpha) {
        return cublasGemmEx(hh, ta, tb, mm, nn, kk, alpha, A.p, t, lda, B.p, CUDA_R_32F, ldb, &one, C.p, CUDA_R_32F, ldc,
                            ct, CUBLAS_GEMM_DEFAULT);
    };
    const size_t checks_before = cudasim_test_range_checks();
    std::vector<float> C0(C.p, C.p + C.n());
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, m - 1, k, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "lda < m (transa N) is INVALID_VALUE");
    CHECK(run(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, m, k, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "lda < k (transa T; m = 4 would be the N rule) is INVALID_VALUE");
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, m, n - 1, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "ldb < n (transb T) is INVALID_VALUE");
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, m, k - 1, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "ldb < k (transb N) is INVALID_VALUE");
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, m, k, m - 1, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "ldc < m is INVALID_VALUE");
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, -1, n, k, m, k, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "m < 0 is INVALID_VALUE");
    CHECK(run(h, (cublasOperation_t)7, CUBLAS_OP_N, m, n, k, m, k, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "bad transa is INVALID_VALUE");
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, m, k, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, nullptr) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "NULL alpha is INVALID_VALUE");
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, m, k, m, CUDA_R_16F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_NOT_SUPPORTED,
          "half A is NOT_SUPPORTED");
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, m, k, m, CUDA_R_32F, CUBLAS_COMPUTE_16F, &one) ==
              CUBLAS_STATUS_NOT_SUPPORTED,
          "COMPUTE_16F with fp32 matrices is NOT_SUPPORTED");
    CHECK(run(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, m, k, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_NOT_INITIALIZED,
          "NULL handle is NOT_INITIALIZED");
    CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, A.p, CUDA_R_32F, m, 0, B.p, CUDA_R_32F,
                                     k, 0, &one, C.p, CUDA_R_32F, m, 0, -1, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE,
          "batchCount < 0 is INVALID_VALUE");
    CHECK(cudasim_test_range_checks() == checks_before, "a refused call touched memory");
    CHECK(memcmp(C0.data(), C.p, C.bytes) == 0, "a refused call changed C");
    /* quick returns: m == 0, or k == 0 with beta == 1, touch nothing */
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, 0, n, k, 1, k, 1, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_SUCCESS,
          "m == 0 succeeds");
    CHECK(run(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, 0, m, 1, m, CUDA_R_32F, CUBLAS_COMPUTE_32F, &one) ==
              CUBLAS_STATUS_SUCCESS,
          "k == 0 succeeds");
    CHECK(memcmp(C0.data(), C.p, C.bytes) == 0, "k == 0, beta == 1 leaves C alone");

    /* undefined behaviour that a GPU would not report: the stand-in faults */
    CHECK(aborts([&] {
              const float z = 0.0f;
              cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 2, 2, &one, A.p, CUDA_R_32F, 4, 0, B.p,
                                         CUDA_R_32F, 2, 0, &z, C.p, CUDA_R_32F, 4, 4, 3, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);
          }),
          "strided batched with overlapping C matrices (strideC 4 < 2 columns of ld 4) faults");
    CHECK(aborts([&] {
              cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 2, 2, &one, C.p, CUDA_R_32F, 4, B.p, CUDA_R_32F, 2, &one,
                           C.p + 4, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
          }),
          "GemmEx with C overlapping A faults");
    CHECK(aborts([&] {
              Buf small = Buf::floats(10); /* C needs (3 - 1)·4 + 4 = 12 elements */
              cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 2, &one, A.p, CUDA_R_32F, 4, B.p, CUDA_R_32F, 2, &one,
                           small.p, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
          }),
          "GemmEx with C past its allocation faults (range check)");
}

static void test_workspace_rules(cublasHandle_t h) {
    Buf ws = Buf(1 << 16);
    CHECK(cublasSetWorkspace(h, (char *)ws.p + 4, 1024) == CUBLAS_STATUS_INVALID_VALUE,
          "a workspace not 256-byte aligned is INVALID_VALUE");
    CHECK(cublasSetWorkspace(h, ws.p, ws.bytes) == CUBLAS_STATUS_SUCCESS, "set workspace");
    Buf A = Buf::floats(4), B = Buf::floats(4), C = Buf::floats(4);
    fill(A);
    fill(B);
    const float one = 1.0f, zero = 0.0f;
    memset(ws.p, 0, ws.bytes);
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, A.p, CUDA_R_32F, 2, B.p, CUDA_R_32F, 2, &zero, C.p,
                 CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    CHECK(std::isnan(ws[0]), "a GEMM may use the user workspace (scribbled)");
    /* documented: cublasSetStream resets the workspace to the default pool */
    CHECK(cublasSetStream(h, nullptr) == CUBLAS_STATUS_SUCCESS, "set stream");
    memset(ws.p, 0, ws.bytes);
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, A.p, CUDA_R_32F, 2, B.p, CUDA_R_32F, 2, &zero, C.p,
                 CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    CHECK(ws[0] == 0.0f, "cublasSetStream dropped the user workspace");
    CHECK(aborts([&] {
              cublasSetWorkspace(h, ws.p, ws.bytes);
              cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, ws.p, CUDA_R_32F, 2, B.p, CUDA_R_32F, 2, &zero,
                           C.p, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
          }),
          "an operand inside the cuBLAS workspace faults");
}

static void test_large_gemm(cublasHandle_t h) {
    /* speed sanity: a 320×320×4096 product, checked on a sample of elements */
    const int m = 320, n = 320, k = 4096;
    Buf A = Buf::floats((size_t)m * k), B = Buf::floats((size_t)k * n), C = Buf::floats((size_t)m * n);
    fill(A);
    fill(B);
    const float one = 1.0f, zero = 0.0f;
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, A.p, CUDA_R_32F, k, B.p, CUDA_R_32F, k, &zero, C.p,
                       CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
          "large GEMM status");
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int bad = 0;
    for (int s = 0; s < 50; s++) {
        const int i = (s * 37) % m, j = (s * 91) % n;
        double v = 0, a = 0;
        for (int l = 0; l < k; l++) {
            const double t = cm(A.p, k, l, i) * cm(B.p, k, l, j);
            v += t;
            a += std::fabs(t);
        }
        bad += !close_to(cm(C.p, m, i, j), v, a);
    }
    CHECK(bad == 0, "large GEMM samples (%d bad)", bad);
    printf("  320x320x4096 GEMM: %.3f s\n", secs);
}

/* ================================================================================================
 * cuBLASLt
 * ============================================================================================= */

struct LtPlan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
    ~LtPlan() {
        if (desc) cublasLtMatmulDescDestroy(desc);
        for (auto l : {a, b, c, d})
            if (l) cublasLtMatrixLayoutDestroy(l);
    }
};

static bool heuristic(cublasLtHandle_t lt, LtPlan &p, uint32_t align, cublasLtMatmulAlgo_t *algo, uint64_t ws = 1 << 20) {
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
        cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align);
    cublasLtMatmulHeuristicResult_t r;
    memset(&r, 0, sizeof r);
    int returned = -1;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.a, p.b, p.c, p.d ? p.d : p.c, pref, 1, &r, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || returned != 1 || r.state != CUBLAS_STATUS_SUCCESS || r.workspaceSize > ws)
        return false;
    *algo = r.algo;
    return true;
}

static void test_lt(cublasLtHandle_t lt) {
    Buf ws = Buf(1 << 20);
    /* 1. The backend's linear layer: y[M, N] = x[M, K] · w[N, K]ᵀ + b[N], all row-major. In
     * column-major terms D = y stored N×M (ld N) = op(A)·B with A = w stored K×N (ld K)
     * transposed, B = x stored K×M (ld K); the bias spans D's N rows. */
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        const int M = 5, K = 7, N = 6;
        Buf x = Buf::floats((size_t)M * K), w = Buf::floats((size_t)N * K), b = Buf::floats(N), y = Buf::floats((size_t)M * N);
        fill(x);
        fill(w);
        fill(b);
        for (size_t i = 0; i < y.n(); i++) y[i] = NAN; /* beta = 0: not read */
        LtPlan p;
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        const uint32_t epi = with_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
        CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS, "desc");
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
        if (with_bias) {
            const float *bp = b.p;
            CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp) ==
                      CUBLAS_STATUS_SUCCESS,
                  "bias pointer");
        }
        cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, K, N, K);
        cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, K, M, K);
        cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, N, M, N);
        cublasLtMatmulAlgo_t algo;
        CHECK(heuristic(lt, p, 16, &algo), "heuristic (bias %d)", with_bias);
        const float one = 1.0f, zero = 0.0f;
        CHECK(cublasLtMatmul(lt, p.desc, &one, w.p, p.a, x.p, p.b, &zero, y.p, p.c, y.p, p.c, &algo, ws.p, ws.bytes,
                             nullptr) == CUBLAS_STATUS_SUCCESS,
              "Lt matmul (bias %d)", with_bias);
        int bad = 0;
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double s = with_bias ? b[n] : 0.0, a = std::fabs(s);
                for (int k = 0; k < K; k++) {
                    s += (double)x[(size_t)(m * K + k)] * w[(size_t)(n * K + k)];
                    a += std::fabs((double)x[(size_t)(m * K + k)] * w[(size_t)(n * K + k)]);
                }
                bad += !close_to(y[(size_t)(m * N + n)], s, a);
            }
        CHECK(bad == 0, "Lt linear y = x·wᵀ%s (%d bad)", with_bias ? " + b" : "", bad);
    }

    /* 2. out-of-place, C with its own ld, beta != 0, transa N, transb T, non-minimal lds */
    {
        const int m = 6, n = 5, k = 4, lda = 8, ldb = 7, ldc = 9, ldd = 6;
        Buf A = Buf::floats(extent(m, k, lda)), B = Buf::floats(extent(n, k, ldb)), C = Buf::floats(extent(m, n, ldc));
        Buf D = Buf::floats(extent(m, n, ldd)), bias = Buf::floats(m);
        fill(A);
        fill(B);
        fill(C);
        fill(bias);
        LtPlan p;
        const cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_T;
        const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
        cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
        const float *bp = bias.p;
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
        cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, m, k, lda);
        cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, n, k, ldb);
        cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, m, n, ldc);
        cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, m, n, ldd);
        cublasLtMatmulAlgo_t algo;
        CHECK(heuristic(lt, p, 256, &algo), "heuristic (out of place)");
        const float alpha = -0.5f, beta = 2.0f;
        CHECK(cublasLtMatmul(lt, p.desc, &alpha, A.p, p.a, B.p, p.b, &beta, C.p, p.c, D.p, p.d, &algo, nullptr, 0,
                             nullptr) == CUBLAS_STATUS_SUCCESS,
              "Lt out of place");
        std::vector<double> ref, scale;
        ref_gemm(false, true, m, n, k, alpha, A.p, lda, B.p, ldb, beta, C.p, ldc, no_round, ref, scale);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                ref[(size_t)(i * n + j)] += bias[i];
                scale[(size_t)(i * n + j)] += std::fabs(bias[i]);
            }
        CHECK(count_bad(D.p, ldd, m, n, ref, scale) == 0, "Lt out of place values (bias per row of D)");

        /* invalid descriptors */
        LtPlan q;
        cublasLtMatmulDescCreate(&q.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasLtMatmulDescSetAttribute(q.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        cublasLtMatrixLayoutCreate(&q.a, CUDA_R_32F, m, k, lda);
        cublasLtMatrixLayoutCreate(&q.b, CUDA_R_32F, n, k, ldb); /* TRANSB left N: op(B) is n×k, needs k×n */
        cublasLtMatrixLayoutCreate(&q.c, CUDA_R_32F, m, n, ldc);
        cublasLtMatrixLayoutCreate(&q.d, CUDA_R_32F, m, n, ldd);
        CHECK(cublasLtMatmul(lt, q.desc, &alpha, A.p, q.a, B.p, q.b, &beta, C.p, q.c, D.p, q.d, nullptr, nullptr, 0,
                             nullptr) == CUBLAS_STATUS_INVALID_VALUE,
              "Lt: op(B) not k×n is INVALID_VALUE");
        int returned = -1;
        cublasLtMatmulHeuristicResult_t r;
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulPreferenceCreate(&pref);
        CHECK(cublasLtMatmulAlgoGetHeuristic(lt, q.desc, q.a, q.b, q.c, q.d, pref, 1, &r, &returned) !=
                      CUBLAS_STATUS_SUCCESS &&
                  returned == 0,
              "Lt heuristic refuses inconsistent layouts");
        CHECK(cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.a, p.b, p.c, p.d, pref, 0, &r, &returned) ==
                  CUBLAS_STATUS_INVALID_VALUE,
              "Lt heuristic with requestedAlgoCount 0 is INVALID_VALUE");
        cublasLtMatmulPreferenceDestroy(pref);
        LtPlan s;
        cublasLtMatmulDescCreate(&s.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasLtMatrixLayoutCreate(&s.a, CUDA_R_32F, m, k, m - 1); /* ld < rows */
        cublasLtMatrixLayoutCreate(&s.b, CUDA_R_32F, k, n, k);
        cublasLtMatrixLayoutCreate(&s.c, CUDA_R_32F, m, n, m);
        CHECK(cublasLtMatmul(lt, s.desc, &alpha, A.p, s.a, B.p, s.b, &beta, D.p, s.c, D.p, s.c, nullptr, nullptr, 0,
                             nullptr) == CUBLAS_STATUS_INVALID_VALUE,
              "Lt: ld < rows is INVALID_VALUE");
        CHECK(cublasLtMatmul(lt, p.desc, &alpha, A.p, p.a, B.p, p.b, &beta, D.p, p.c, D.p, p.d, &algo, nullptr, 0,
                             nullptr) == CUBLAS_STATUS_INVALID_VALUE,
              "Lt: in-place C == D with different ld is INVALID_VALUE");
        const int32_t wrong_size = 0;
        CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &wrong_size, sizeof wrong_size) ==
                  CUBLAS_STATUS_INVALID_VALUE,
              "Lt: attribute with the wrong size is INVALID_VALUE");
        LtPlan h16;
        cublasLtMatmulDescCreate(&h16.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasLtMatrixLayoutCreate(&h16.a, CUDA_R_16F, m, k, lda);
        cublasLtMatrixLayoutCreate(&h16.b, CUDA_R_32F, k, n, k);
        cublasLtMatrixLayoutCreate(&h16.c, CUDA_R_32F, m, n, m);
        CHECK(cublasLtMatmul(lt, h16.desc, &alpha, A.p, h16.a, B.p, h16.b, &beta, D.p, h16.c, D.p, h16.c, nullptr,
                             nullptr, 0, nullptr) == CUBLAS_STATUS_NOT_SUPPORTED,
              "Lt: half A is NOT_SUPPORTED");
    }

    /* 3. alignment: an algorithm chosen for 16-byte pointers faults on a 4-byte aligned one; one
     * chosen with MIN_ALIGNMENT 4 runs */
    {
        const int m = 4, n = 4, k = 4;
        Buf A = Buf::floats(m * k + 1), B = Buf::floats(k * n), D = Buf::floats(m * n);
        fill(A);
        fill(B);
        LtPlan p;
        cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F);
        cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, m, k, m);
        cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, k, n, k);
        cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, m, n, m);
        cublasLtMatmulAlgo_t a16, a4;
        CHECK(heuristic(lt, p, 16, &a16) && heuristic(lt, p, 4, &a4), "heuristics");
        const float one = 1.0f, zero = 0.0f;
        CHECK(aborts([&] {
                  cublasLtMatmul(lt, p.desc, &one, A.p + 1, p.a, B.p, p.b, &zero, D.p, p.c, D.p, p.c, &a16, nullptr, 0,
                                 nullptr);
              }),
              "Lt: pointer less aligned than the algorithm was chosen for faults");
        CHECK(cublasLtMatmul(lt, p.desc, &one, A.p + 1, p.a, B.p, p.b, &zero, D.p, p.c, D.p, p.c, &a4, nullptr, 0,
                             nullptr) == CUBLAS_STATUS_SUCCESS,
              "Lt: MIN_ALIGNMENT 4 algorithm on a 4-byte aligned pointer");
        std::vector<double> ref, scale;
        ref_gemm(false, false, m, n, k, 1.0, A.p + 1, m, B.p, k, 0.0, nullptr, m, cudasim::round_tf32, ref, scale);
        CHECK(count_bad(D.p, m, m, n, ref, scale) == 0, "Lt FAST_TF32 rounds the inputs");
        /* an algorithm from a descriptor with another compute type is refused */
        LtPlan q;
        cublasLtMatmulDescCreate(&q.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        CHECK(cublasLtMatmul(lt, q.desc, &one, A.p, p.a, B.p, p.b, &zero, D.p, p.c, D.p, p.c, &a16, nullptr, 0,
                             nullptr) == CUBLAS_STATUS_NOT_SUPPORTED,
              "Lt: algorithm chosen for another compute type is NOT_SUPPORTED");
    }

    /* 4. graph-capture semantics: the work is recorded with copies of the descriptors and the
     * scalars, then the descriptors are changed / destroyed before it runs */
    {
        const int m = 3, n = 2, k = 5;
        Buf A = Buf::floats(m * k), B = Buf::floats(k * n), D = Buf::floats(m * n), b1 = Buf::floats(m), b2 = Buf::floats(m);
        fill(A);
        fill(B);
        fill(b1);
        fill(b2);
        cublasLtMatmulAlgo_t algo;
        float alpha = 2.0f, beta = 0.0f;
        {
            LtPlan p;
            const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
            cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
            const float *bp = b1.p;
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
            cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, m, k, m);
            cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, k, n, k);
            cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, m, n, m);
            CHECK(heuristic(lt, p, 256, &algo), "heuristic (deferred)");
            cudasim_test_defer(true);
            CHECK(cublasLtMatmul(lt, p.desc, &alpha, A.p, p.a, B.p, p.b, &beta, D.p, p.c, D.p, p.c, &algo, nullptr, 0,
                                 nullptr) == CUBLAS_STATUS_SUCCESS,
                  "deferred Lt matmul");
            cudasim_test_defer(false);
            bp = b2.p; /* the backend re-points the bias between calls */
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
        } /* descriptors destroyed */
        alpha = 100.0f;
        CHECK(cudasim_test_queued() == 1, "Lt matmul was enqueued");
        for (size_t i = 0; i < D.n(); i++) D[i] = NAN;
        cudasim_test_flush();
        std::vector<double> ref, scale;
        ref_gemm(false, false, m, n, k, 2.0, A.p, m, B.p, k, 0.0, nullptr, m, no_round, ref, scale);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) ref[(size_t)(i * n + j)] += b1[i], scale[(size_t)(i * n + j)] += std::fabs(b1[i]);
        CHECK(count_bad(D.p, m, m, n, ref, scale) == 0, "deferred Lt matmul used the values of call time");
    }

    /* 5. fp16: the backend's linear layer (cu_f16_linear) with CUDA_R_16F x, w, y and bias,
     * CUBLAS_COMPUTE_32F, the bias of D's type added before D's only rounding */
    for (int with_bias = 0; with_bias < 2; with_bias++)
        for (int misalign = 0; misalign < 2; misalign++) {
            const int M = 9, K = 13, N = 6;
            /* misaligned: x one half past a 256-byte boundary, as an offset fp16 view is */
            Buf x = halves((size_t)M * K + 1), w = halves((size_t)N * K), b = halves(N), y = halves((size_t)M * N);
            fill_half(x);
            fill_half(w);
            fill_half(b);
            for (size_t i = 0; i < n_halves(y); i++) hp(y)[i] = __float2half_rn(NAN); /* beta = 0: not read */
            const __half *xp = hp(x) + misalign;
            LtPlan p;
            const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
            const uint32_t epi = with_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
            cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
            const __half *bp = hp(b);
            if (with_bias) cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
            cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16F, K, N, K);
            cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16F, K, M, K);
            cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16F, N, M, N);
            cublasLtMatmulAlgo_t algo;
            const uint32_t align = misalign ? 2 : 16;
            CHECK(heuristic(lt, p, align, &algo), "16F heuristic (bias %d, MIN_ALIGNMENT %u)", with_bias, align);
            const float one = 1.0f, zero = 0.0f;
            CHECK(cublasLtMatmul(lt, p.desc, &one, w.p, p.a, xp, p.b, &zero, y.p, p.c, y.p, p.c, &algo, ws.p, ws.bytes,
                                 nullptr) == CUBLAS_STATUS_SUCCESS,
                  "Lt 16F matmul (bias %d, misaligned x %d)", with_bias, misalign);
            int bad = 0;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double sum = with_bias ? (double)__half2float(hp(b)[n]) : 0.0, mag = std::fabs(sum);
                    for (int k = 0; k < K; k++) {
                        const double t = (double)__half2float(xp[m * K + k]) * __half2float(hp(w)[n * K + k]);
                        sum += t;
                        mag += std::fabs(t);
                    }
                    bad += !half_close_to(__half2float(hp(y)[m * N + n]), sum, mag);
                }
            CHECK(bad == 0, "Lt 16F linear y = x·wᵀ%s, one rounding (%d bad)", with_bias ? " + b" : "", bad);
            if (misalign == 0) {
                CHECK(aborts([&] {
                          cublasLtMatmul(lt, p.desc, &one, w.p, p.a, hp(x) + 1, p.b, &zero, y.p, p.c, y.p, p.c, &algo,
                                         ws.p, ws.bytes, nullptr);
                      }),
                      "Lt 16F: an x 2-byte aligned under an algorithm chosen for 16 bytes faults");
            }
        }
    {
        /* refusals: mixed or unsimulated types, a bias of another type than D, an algorithm
         * chosen for fp32 layouts run on fp16 ones */
        const int m = 4, n = 4, k = 4;
        Buf A = halves(m * k), B = halves(k * n), D = halves(m * n), Df = Buf::floats(m * n), bias = Buf::floats(m);
        const float one = 1.0f, zero = 0.0f;
        auto lt_status = [&](cublasComputeType_t ct, cudaDataType_t ab, cudaDataType_t c, cudaDataType_t d,
                             int32_t bias_type) {
            LtPlan p;
            cublasLtMatmulDescCreate(&p.desc, ct, CUDA_R_32F);
            if (bias_type >= 0) {
                const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
                const float *bp = bias.p;
                cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
                cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
                cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type);
            }
            cublasLtMatrixLayoutCreate(&p.a, ab, m, k, m);
            cublasLtMatrixLayoutCreate(&p.b, ab, k, n, k);
            cublasLtMatrixLayoutCreate(&p.c, c, m, n, m);
            cublasLtMatrixLayoutCreate(&p.d, d, m, n, m);
            void *dp = d == CUDA_R_16F ? (void *)D.p : (void *)Df.p;
            return cublasLtMatmul(lt, p.desc, &one, A.p, p.a, B.p, p.b, &zero, dp, p.c, dp, p.d, nullptr, nullptr, 0,
                                  nullptr);
        };
        const size_t checks_before = cudasim_test_range_checks();
        CHECK(lt_status(CUBLAS_COMPUTE_32F_FAST_16BF, CUDA_R_16F, CUDA_R_16F, CUDA_R_16F, -1) ==
                  CUBLAS_STATUS_NOT_SUPPORTED,
              "Lt 16F with COMPUTE_32F_FAST_16BF is NOT_SUPPORTED");
        CHECK(lt_status(CUBLAS_COMPUTE_32F, CUDA_R_16F, CUDA_R_16F, CUDA_R_32F, -1) == CUBLAS_STATUS_NOT_SUPPORTED,
              "Lt 16F C with 32F D is NOT_SUPPORTED");
        CHECK(lt_status(CUBLAS_COMPUTE_32F, CUDA_R_16F, CUDA_R_16F, CUDA_R_16F, CUDA_R_32F) ==
                  CUBLAS_STATUS_NOT_SUPPORTED,
              "Lt 16F D with a 32F bias is NOT_SUPPORTED");
        CHECK(cudasim_test_range_checks() == checks_before, "a refused 16F Lt call touched memory");
        /* 16F A/B with 32F C/D, with and without a 32F bias (linear_f32io): D = A·B (+ bias), F32 */
        fill_half(A);
        fill_half(B);
        fill(bias);
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            CHECK(lt_status(CUBLAS_COMPUTE_32F, CUDA_R_16F, CUDA_R_32F, CUDA_R_32F, with_bias ? CUDA_R_32F : -1) ==
                      CUBLAS_STATUS_SUCCESS,
                  "Lt 16F A/B with 32F C/D (bias %d)", with_bias);
            int bad = 0;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double sum = with_bias ? (double)bias.p[i] : 0.0, mag = std::fabs(sum);
                    for (int q = 0; q < k; q++) {
                        const double t = (double)__half2float(hp(A)[i + q * m]) * __half2float(hp(B)[q + j * k]);
                        sum += t;
                        mag += std::fabs(t);
                    }
                    bad += std::fabs(Df.p[i + j * m] - sum) > 1e-6 * (mag + 1e-30);
                }
            CHECK(bad == 0, "Lt 16F A/B with 32F C/D (bias %d): fp32 sums, D not rounded to half (%d bad)", with_bias,
                  bad);
        }
        LtPlan p32, p16;
        cublasLtMatmulDescCreate(&p32.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasLtMatrixLayoutCreate(&p32.a, CUDA_R_32F, m, k, m);
        cublasLtMatrixLayoutCreate(&p32.b, CUDA_R_32F, k, n, k);
        cublasLtMatrixLayoutCreate(&p32.c, CUDA_R_32F, m, n, m);
        cublasLtMatmulDescCreate(&p16.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasLtMatrixLayoutCreate(&p16.a, CUDA_R_16F, m, k, m);
        cublasLtMatrixLayoutCreate(&p16.b, CUDA_R_16F, k, n, k);
        cublasLtMatrixLayoutCreate(&p16.c, CUDA_R_16F, m, n, m);
        cublasLtMatmulAlgo_t a32;
        CHECK(heuristic(lt, p32, 256, &a32), "fp32 heuristic");
        CHECK(cublasLtMatmul(lt, p16.desc, &one, A.p, p16.a, B.p, p16.b, &zero, D.p, p16.c, D.p, p16.c, &a32, nullptr,
                             0, nullptr) == CUBLAS_STATUS_NOT_SUPPORTED,
              "Lt: an algorithm chosen for fp32 layouts on fp16 ones is NOT_SUPPORTED");
    }
}

/* ================================================================================================
 * cuDNN
 * ============================================================================================= */

struct ConvCase {
    int N, C, H, W, K, R, S, ph, pw, u, v, dh, dw;
    cudnnConvolutionMode_t mode;
    int P() const { return 1 + (H + 2 * ph - ((R - 1) * dh + 1)) / u; }
    int Q() const { return 1 + (W + 2 * pw - ((S - 1) * dw + 1)) / v; }
};

/* Row-major NCHW / KCRS references. Tap (r, s) of the correlation samples x at
 * (p·u − ph + r·dh, q·v − pw + s·dw); CUDNN_CONVOLUTION uses filter element (R−1−r, S−1−s). */
static void ref_conv_all(const ConvCase &c, const float *x, const float *w, const float *dy, std::vector<double> &y,
                         std::vector<double> &ys, std::vector<double> &dx, std::vector<double> &dw, rnd_fn rnd) {
    const int P = c.P(), Q = c.Q();
    y.assign((size_t)c.N * c.K * P * Q, 0.0);
    ys.assign(y.size(), 0.0);
    dx.assign((size_t)c.N * c.C * c.H * c.W, 0.0);
    dw.assign((size_t)c.K * c.C * c.R * c.S, 0.0);
    for (int n = 0; n < c.N; n++)
        for (int k = 0; k < c.K; k++)
            for (int p = 0; p < P; p++)
                for (int q = 0; q < Q; q++)
                    for (int ch = 0; ch < c.C; ch++)
                        for (int r = 0; r < c.R; r++)
                            for (int s = 0; s < c.S; s++) {
                                const int iy = p * c.u - c.ph + r * c.dh, ix = q * c.v - c.pw + s * c.dw;
                                if (iy < 0 || iy >= c.H || ix < 0 || ix >= c.W) continue;
                                const int fr = c.mode == CUDNN_CONVOLUTION ? c.R - 1 - r : r;
                                const int fs = c.mode == CUDNN_CONVOLUTION ? c.S - 1 - s : s;
                                const size_t xi = (((size_t)n * c.C + ch) * c.H + iy) * c.W + ix;
                                const size_t wi = (((size_t)k * c.C + ch) * c.R + fr) * c.S + fs;
                                const size_t yi = (((size_t)n * c.K + k) * P + p) * Q + q;
                                const double xv = rnd(x[xi]), wv = rnd(w[wi]);
                                y[yi] += xv * wv;
                                ys[yi] += std::fabs(xv * wv);
                                if (dy) {
                                    dx[xi] += (double)rnd(dy[yi]) * wv;
                                    dw[wi] += xv * (double)rnd(dy[yi]);
                                }
                            }
}

struct ConvDescs {
    cudnnTensorDescriptor_t x = nullptr, y = nullptr;
    cudnnFilterDescriptor_t w = nullptr;
    cudnnConvolutionDescriptor_t conv = nullptr;
    /* x, w and y of `type`, the convolution computing in float (FLOAT_CONFIG, PSEUDO_HALF_CONFIG) */
    ConvDescs(const ConvCase &c, cudnnMathType_t math, cudnnTensorFormat_t xfmt = CUDNN_TENSOR_NCHW,
              cudnnDataType_t type = CUDNN_DATA_FLOAT) {
        cudnnCreateTensorDescriptor(&x);
        cudnnCreateTensorDescriptor(&y);
        cudnnCreateFilterDescriptor(&w);
        cudnnCreateConvolutionDescriptor(&conv);
        cudnnSetTensor4dDescriptor(x, xfmt, type, c.N, c.C, c.H, c.W);
        cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, type, c.N, c.K, c.P(), c.Q());
        cudnnSetFilter4dDescriptor(w, type, CUDNN_TENSOR_NCHW, c.K, c.C, c.R, c.S);
        cudnnSetConvolution2dDescriptor(conv, c.ph, c.pw, c.u, c.v, c.dh, c.dw, c.mode, CUDNN_DATA_FLOAT);
        cudnnSetConvolutionMathType(conv, math);
    }
    ~ConvDescs() {
        if (x) cudnnDestroyTensorDescriptor(x);
        if (y) cudnnDestroyTensorDescriptor(y);
        if (w) cudnnDestroyFilterDescriptor(w);
        if (conv) cudnnDestroyConvolutionDescriptor(conv);
    }
};

static int count_bad_vec(const float *got, const std::vector<double> &want, const std::vector<double> *scale,
                         double extra_scale, const char *what) {
    int bad = 0;
    for (size_t i = 0; i < want.size(); i++) {
        const double sc = (scale ? (*scale)[i] : 0.0) + extra_scale;
        if (!close_to(got[i], want[i], sc)) {
            if (bad < 3) printf("  %s[%zu]: got %.9g want %.9g\n", what, i, (double)got[i], want[i]);
            bad++;
        }
    }
    return bad;
}

static void test_conv_case(cudnnHandle_t dnn, const ConvCase &c, const char *name) {
    ConvDescs d(c, CUDNN_FMA_MATH);
    int on, oc, oh, ow;
    CHECK(cudnnGetConvolution2dForwardOutputDim(d.conv, d.x, d.w, &on, &oc, &oh, &ow) == CUDNN_STATUS_SUCCESS &&
              on == c.N && oc == c.K && oh == c.P() && ow == c.Q(),
          "%s: output dims %dx%dx%dx%d, want %dx%dx%dx%d", name, on, oc, oh, ow, c.N, c.K, c.P(), c.Q());
    Buf x = Buf::floats((size_t)c.N * c.C * c.H * c.W), w = Buf::floats((size_t)c.K * c.C * c.R * c.S);
    Buf y = Buf::floats((size_t)c.N * c.K * c.P() * c.Q()), dy = Buf::floats(y.n());
    Buf dx = Buf::floats(x.n()), dw = Buf::floats(w.n());
    fill(x);
    fill(w);
    fill(dy);
    std::vector<double> ry, rys, rdx, rdw;
    ref_conv_all(c, x.p, w.p, dy.p, ry, rys, rdx, rdw, no_round);

    /* every algorithm the heuristic offers, each with exactly the workspace it reports */
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = -1;
    CHECK(cudnnGetConvolutionForwardAlgorithm_v7(dnn, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                 &returned, perf) == CUDNN_STATUS_SUCCESS &&
              returned == CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
          "%s: forward heuristic returned %d", name, returned);
    bool seen_unsupported = false, order_ok = true;
    for (int i = 0; i < returned; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS)
            seen_unsupported = true;
        else if (seen_unsupported)
            order_ok = false;
    }
    CHECK(order_ok, "%s: the applicable algorithms are listed first", name);
    /* Find: the same algorithms, the applicable ones in the reverse order, times ascending */
    {
        cudnnConvolutionFwdAlgoPerf_t found[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        int nf = -1, ok = 0;
        CHECK(cudnnFindConvolutionForwardAlgorithm(dnn, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &nf,
                                                   found) == CUDNN_STATUS_SUCCESS && nf == returned,
              "%s: forward Find returned %d", name, nf);
        while (ok < returned && perf[ok].status == CUDNN_STATUS_SUCCESS) ok++;
        bool same = true;
        for (int i = 0; i < ok; i++)
            same = same && found[i].algo == perf[ok - 1 - i].algo && found[i].status == CUDNN_STATUS_SUCCESS &&
                   found[i].memory == perf[ok - 1 - i].memory && (i == 0 || found[i].time > found[i - 1].time);
        for (int i = ok; i < returned; i++) same = same && found[i].algo == perf[i].algo;
        CHECK(same, "%s: Find lists the applicable algorithms reversed, fastest first", name);
    }
    int ran = 0;
    for (int i = 0; i < returned; i++) {
        size_t need = 12345;
        const cudnnStatus_t wst = cudnnGetConvolutionForwardWorkspaceSize(dnn, d.x, d.w, d.conv, d.y, perf[i].algo, &need);
        if (perf[i].status != CUDNN_STATUS_SUCCESS) {
            CHECK(wst == CUDNN_STATUS_NOT_SUPPORTED, "%s: unsupported algo %d has a workspace size", name, perf[i].algo);
            continue;
        }
        CHECK(wst == CUDNN_STATUS_SUCCESS && need == perf[i].memory && perf[i].mathType == CUDNN_FMA_MATH,
              "%s: algo %d: getter %zu vs perf.memory %zu, math %d", name, perf[i].algo, need, perf[i].memory,
              perf[i].mathType);
        Buf ws(need);
        for (size_t j = 0; j < y.n(); j++) y[j] = NAN;
        const float one = 1.0f, zero = 0.0f;
        if (need) {
            CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, perf[i].algo, ws.p, need - 1, &zero,
                                          d.y, y.p) == CUDNN_STATUS_BAD_PARAM,
                  "%s: algo %d with a workspace one byte short is BAD_PARAM", name, perf[i].algo);
        }
        CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, perf[i].algo, ws.p, need, &zero, d.y,
                                      y.p) == CUDNN_STATUS_SUCCESS,
              "%s: forward algo %d", name, perf[i].algo);
        CHECK(count_bad_vec(y.p, ry, &rys, 0, "y") == 0, "%s: forward algo %d values", name, perf[i].algo);
        if (need >= sizeof(float)) CHECK(std::isnan(ws[0]), "%s: algo %d did not use its workspace", name, perf[i].algo);
        ran++;
    }
    CHECK(ran >= 2, "%s: only %d forward algorithms ran", name, ran);
    cudnnConvolutionFwdAlgoPerf_t two[2];
    CHECK(cudnnGetConvolutionForwardAlgorithm_v7(dnn, d.x, d.w, d.conv, d.y, 2, &returned, two) == CUDNN_STATUS_SUCCESS &&
              returned == 2,
          "%s: requested 2, returned %d", name, returned);

    /* alpha / beta: y = 0.5·conv + 2·y */
    {
        std::vector<float> y0(y.n());
        for (size_t j = 0; j < y.n(); j++) y0[j] = y[j] = frand();
        const float alpha = 0.5f, beta = 2.0f;
        CHECK(cudnnConvolutionForward(dnn, &alpha, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                      nullptr, 0, &beta, d.y, y.p) == CUDNN_STATUS_SUCCESS,
              "%s: forward alpha/beta", name);
        std::vector<double> want(ry.size()), sc(ry.size());
        for (size_t j = 0; j < ry.size(); j++) want[j] = 0.5 * ry[j] + 2.0 * y0[j], sc[j] = 0.5 * rys[j] + 2 * std::fabs(y0[j]);
        CHECK(count_bad_vec(y.p, want, &sc, 0, "y") == 0, "%s: forward alpha/beta values", name);
    }

    /* backward data (beta = 0 over NaN, then beta = 1 accumulating as the backend does) */
    cudnnConvolutionBwdDataAlgoPerf_t bperf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(dnn, d.w, d.y, d.conv, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                      &returned, bperf) == CUDNN_STATUS_SUCCESS &&
              returned == CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
          "%s: backward-data heuristic", name);
    const double dscale = 1e-6 * (double)(c.K * c.R * c.S); /* inputs in [-1, 1] */
    for (int i = 0; i < returned; i++) {
        if (bperf[i].status != CUDNN_STATUS_SUCCESS) continue;
        size_t need = 0;
        CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(dnn, d.w, d.y, d.conv, d.x, bperf[i].algo, &need) ==
                      CUDNN_STATUS_SUCCESS &&
                  need == bperf[i].memory,
              "%s: backward-data workspace of algo %d", name, bperf[i].algo);
        Buf ws(need);
        for (size_t j = 0; j < dx.n(); j++) dx[j] = NAN;
        const float one = 1.0f, zero = 0.0f;
        CHECK(cudnnConvolutionBackwardData(dnn, &one, d.w, w.p, d.y, dy.p, d.conv, bperf[i].algo, ws.p, need, &zero, d.x,
                                           dx.p) == CUDNN_STATUS_SUCCESS,
              "%s: backward data algo %d", name, bperf[i].algo);
        CHECK(count_bad_vec(dx.p, rdx, nullptr, dscale, "dx") == 0, "%s: backward data algo %d values", name,
              bperf[i].algo);
    }
    {
        std::vector<float> dx0(dx.n());
        for (size_t j = 0; j < dx.n(); j++) dx0[j] = dx[j] = frand();
        const float one = 1.0f;
        CHECK(cudnnConvolutionBackwardData(dnn, &one, d.w, w.p, d.y, dy.p, d.conv, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
                                           nullptr, 0, &one, d.x, dx.p) == CUDNN_STATUS_SUCCESS,
              "%s: backward data beta 1", name);
        std::vector<double> want(rdx.size());
        for (size_t j = 0; j < want.size(); j++) want[j] = rdx[j] + dx0[j];
        CHECK(count_bad_vec(dx.p, want, nullptr, dscale + 1e-6, "dx") == 0, "%s: backward data accumulates", name);
    }

    /* backward filter */
    cudnnConvolutionBwdFilterAlgoPerf_t fperf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(dnn, d.x, d.y, d.conv, d.w,
                                                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned,
                                                        fperf) == CUDNN_STATUS_SUCCESS &&
              returned == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
          "%s: backward-filter heuristic", name);
    const double fscale = 1e-6 * (double)(c.N * c.P() * c.Q());
    for (int i = 0; i < returned; i++) {
        if (fperf[i].status != CUDNN_STATUS_SUCCESS) continue;
        size_t need = 0;
        CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(dnn, d.x, d.y, d.conv, d.w, fperf[i].algo, &need) ==
                      CUDNN_STATUS_SUCCESS &&
                  need == fperf[i].memory,
              "%s: backward-filter workspace of algo %d", name, fperf[i].algo);
        Buf ws(need);
        for (size_t j = 0; j < dw.n(); j++) dw[j] = NAN;
        const float one = 1.0f, zero = 0.0f;
        CHECK(cudnnConvolutionBackwardFilter(dnn, &one, d.x, x.p, d.y, dy.p, d.conv, fperf[i].algo, ws.p, need, &zero,
                                             d.w, dw.p) == CUDNN_STATUS_SUCCESS,
              "%s: backward filter algo %d", name, fperf[i].algo);
        CHECK(count_bad_vec(dw.p, rdw, nullptr, fscale, "dw") == 0, "%s: backward filter algo %d values", name,
              fperf[i].algo);
    }

    /* the adjoint identity, from the stand-in's own three results */
    {
        const float one = 1.0f, zero = 0.0f;
        cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr,
                                0, &zero, d.y, y.p);
        cudnnConvolutionBackwardData(dnn, &one, d.w, w.p, d.y, dy.p, d.conv, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, nullptr,
                                     0, &zero, d.x, dx.p);
        cudnnConvolutionBackwardFilter(dnn, &one, d.x, x.p, d.y, dy.p, d.conv, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                                       nullptr, 0, &zero, d.w, dw.p);
        double a = 0, b = 0, e = 0, sa = 0, sb = 0, se = 0;
        for (size_t j = 0; j < y.n(); j++) a += (double)y[j] * dy[j], sa += std::fabs((double)y[j] * dy[j]);
        for (size_t j = 0; j < x.n(); j++) b += (double)x[j] * dx[j], sb += std::fabs((double)x[j] * dx[j]);
        for (size_t j = 0; j < w.n(); j++) e += (double)w[j] * dw[j], se += std::fabs((double)w[j] * dw[j]);
        const double tol = 1e-6 * (sa + sb + se) + 1e-9;
        CHECK(std::fabs(a - b) <= tol && std::fabs(a - e) <= tol,
              "%s: adjoint identity <conv(x,w),dy> %.10g, <x,bwd_data> %.10g, <w,bwd_filter> %.10g", name, a, b, e);
    }
}

/* PSEUDO_HALF_CONFIG forward: half x, w, y, float compute, under both math types and every
 * algorithm the heuristic offers; y must be the exact sum rounded once to half. */
static void test_conv_half_case(cudnnHandle_t dnn, const ConvCase &c, const char *name) {
    Buf x = halves((size_t)c.N * c.C * c.H * c.W), w = halves((size_t)c.K * c.C * c.R * c.S);
    Buf y = halves((size_t)c.N * c.K * c.P() * c.Q());
    fill_half(x);
    fill_half(w);
    const std::vector<float> xf = widened(x), wf = widened(w);
    std::vector<double> ry, rys, t1, t2;
    ref_conv_all(c, xf.data(), wf.data(), nullptr, ry, rys, t1, t2, no_round);
    auto count_bad_half = [&](const std::vector<double> &want, const std::vector<double> &sc) {
        int bad = 0;
        for (size_t i = 0; i < want.size(); i++)
            if (!half_close_to(__half2float(hp(y)[i]), want[i], sc[i])) {
                if (bad < 3) printf("  y[%zu]: got %.9g want %.9g\n", i, (double)__half2float(hp(y)[i]), want[i]);
                bad++;
            }
        return bad;
    };
    for (cudnnMathType_t math : {CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH}) {
        ConvDescs d(c, math, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF);
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        int returned = -1, ran = 0;
        CHECK(cudnnGetConvolutionForwardAlgorithm_v7(dnn, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                     &returned, perf) == CUDNN_STATUS_SUCCESS,
              "%s half: forward heuristic", name);
        for (int i = 0; i < returned; i++) {
            if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
            size_t need = 0;
            CHECK(cudnnGetConvolutionForwardWorkspaceSize(dnn, d.x, d.w, d.conv, d.y, perf[i].algo, &need) ==
                          CUDNN_STATUS_SUCCESS &&
                      need == perf[i].memory,
                  "%s half: workspace of algo %d", name, perf[i].algo);
            Buf ws(need);
            for (size_t j = 0; j < n_halves(y); j++) hp(y)[j] = __float2half_rn(NAN);
            const float one = 1.0f, zero = 0.0f; /* float scaling factors for half data */
            CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, perf[i].algo, ws.p, need, &zero, d.y,
                                          y.p) == CUDNN_STATUS_SUCCESS,
                  "%s half: forward algo %d (math %d)", name, perf[i].algo, (int)math);
            CHECK(count_bad_half(ry, rys) == 0, "%s half: forward algo %d (math %d) values", name, perf[i].algo,
                  (int)math);
            ran++;
        }
        CHECK(ran >= 2, "%s half: only %d forward algorithms ran", name, ran);
    }
    /* alpha / beta with half y: y = 0.5·conv + 2·y, rounded once */
    {
        ConvDescs d(c, CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF);
        fill_half(y);
        const std::vector<float> y0 = widened(y);
        std::vector<double> want(ry.size()), sc(ry.size());
        for (size_t j = 0; j < ry.size(); j++) want[j] = 0.5 * ry[j] + 2.0 * y0[j], sc[j] = 0.5 * rys[j] + 2 * std::fabs(y0[j]);
        const float alpha = 0.5f, beta = 2.0f;
        CHECK(cudnnConvolutionForward(dnn, &alpha, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                      nullptr, 0, &beta, d.y, y.p) == CUDNN_STATUS_SUCCESS,
              "%s half: forward alpha/beta", name);
        CHECK(count_bad_half(want, sc) == 0, "%s half: forward alpha/beta values", name);
    }
}

static void test_conv_half(cudnnHandle_t dnn) {
    /* N, C, H, W, K, R, S, ph, pw, u, v, dh, dw, mode */
    test_conv_half_case(dnn, {2, 3, 7, 5, 4, 3, 3, 1, 1, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION}, "3x3 stride 2 pad 1 7x5");
    test_conv_half_case(dnn, {1, 5, 4, 6, 3, 1, 1, 0, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION}, "1x1 4x6");
    test_conv_half_case(dnn, {2, 6, 6, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION}, "3x3 stride 1 pad 1 6x9");

    /* refusals: a type differing between x, w and y; half data with half compute
     * (TRUE_HALF_CONFIG, not simulated); half data in the backward directions (not simulated) */
    const ConvCase c{1, 3, 8, 8, 4, 3, 3, 1, 1, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION};
    ConvDescs d(c, CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF);
    Buf x = halves((size_t)c.C * 64), w = halves((size_t)c.K * c.C * 9), y = halves((size_t)c.K * 16);
    Buf yf = Buf::floats((size_t)c.K * 16);
    const float one = 1.0f, zero = 0.0f;
    const size_t checks_before = cudasim_test_range_checks();
    cudnnTensorDescriptor_t y32;
    cudnnCreateTensorDescriptor(&y32);
    cudnnSetTensor4dDescriptor(y32, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, c.K, c.P(), c.Q());
    CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                  nullptr, 0, &zero, y32, yf.p) == CUDNN_STATUS_BAD_PARAM,
          "half x and w with a float y is BAD_PARAM");
    cudnnDestroyTensorDescriptor(y32);
    cudnnFilterDescriptor_t w32;
    cudnnCreateFilterDescriptor(&w32);
    cudnnSetFilter4dDescriptor(w32, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, c.K, c.C, 3, 3);
    size_t need = 0;
    CHECK(cudnnGetConvolutionForwardWorkspaceSize(dnn, d.x, w32, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                                  &need) == CUDNN_STATUS_BAD_PARAM,
          "a float filter with half tensors is BAD_PARAM (workspace getter)");
    cudnnDestroyFilterDescriptor(w32);
    cudnnConvolutionDescriptor_t true_half;
    cudnnCreateConvolutionDescriptor(&true_half);
    cudnnSetConvolution2dDescriptor(true_half, 1, 1, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_HALF);
    CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, true_half, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                  nullptr, 0, &zero, d.y, y.p) == CUDNN_STATUS_NOT_SUPPORTED,
          "half data with half compute (TRUE_HALF_CONFIG) is NOT_SUPPORTED");
    cudnnDestroyConvolutionDescriptor(true_half);
    CHECK(cudnnConvolutionBackwardData(dnn, &one, d.w, w.p, d.y, y.p, d.conv, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, nullptr,
                                       0, &zero, d.x, x.p) == CUDNN_STATUS_NOT_SUPPORTED,
          "half backward data is NOT_SUPPORTED");
    CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(dnn, d.x, d.y, d.conv, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                                                         &need) == CUDNN_STATUS_NOT_SUPPORTED,
          "half backward filter workspace is NOT_SUPPORTED");
    CHECK(cudasim_test_range_checks() == checks_before, "a refused half convolution touched memory");
    CHECK(aborts([&] {
              Buf small = halves((size_t)c.K * 16 - 1); /* y one half short */
              cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                      nullptr, 0, &zero, d.y, small.p);
          }),
          "half forward with y one half past its allocation faults (ranges in halves)");
}

static void test_conv(cudnnHandle_t dnn) {
    /* N, C, H, W, K, R, S, ph, pw, u, v, dh, dw, mode */
    test_conv_case(dnn, {2, 3, 7, 5, 4, 3, 3, 1, 1, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION}, "3x3 stride 2 pad 1 7x5");
    test_conv_case(dnn, {1, 5, 4, 6, 3, 1, 1, 0, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION}, "1x1 4x6");
    test_conv_case(dnn, {2, 4, 6, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION}, "3x3 stride 1 pad 1 6x9");
    test_conv_case(dnn, {1, 2, 8, 7, 3, 3, 2, 1, 0, 2, 1, 1, 1, CUDNN_CROSS_CORRELATION}, "3x2 pad 1,0 stride 2,1");
    test_conv_case(dnn, {1, 3, 9, 8, 2, 3, 3, 2, 2, 1, 1, 2, 2, CUDNN_CROSS_CORRELATION}, "3x3 dilation 2");
    test_conv_case(dnn, {2, 3, 6, 5, 4, 3, 2, 1, 1, 1, 2, 1, 1, CUDNN_CONVOLUTION}, "CUDNN_CONVOLUTION (flipped) 3x2");
    test_conv_case(dnn, {1, 2, 5, 5, 2, 4, 4, 0, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION}, "4x4 over 5x5, no pad");

    /* tensor-op math: both operands rounded to TF32 */
    {
        const ConvCase c{1, 8, 6, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION};
        ConvDescs d(c, CUDNN_TENSOR_OP_MATH);
        Buf x = Buf::floats((size_t)c.C * c.H * c.W), w = Buf::floats((size_t)c.K * c.C * 9),
            y = Buf::floats((size_t)c.K * c.P() * c.Q());
        fill(x);
        fill(w);
        std::vector<double> ry, rys, t1, t2, ex, exs;
        ref_conv_all(c, x.p, w.p, nullptr, ry, rys, t1, t2, cudasim::round_tf32);
        ref_conv_all(c, x.p, w.p, nullptr, ex, exs, t1, t2, no_round);
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        int returned = 0;
        cudnnGetConvolutionForwardAlgorithm_v7(dnn, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned,
                                               perf);
        bool tensor_listed = false;
        for (int i = 0; i < returned; i++) tensor_listed |= perf[i].mathType == CUDNN_TENSOR_OP_MATH;
        CHECK(tensor_listed, "tensor-op descriptor: the heuristic lists tensor-op algorithms");
        const float one = 1.0f, zero = 0.0f;
        cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr,
                                0, &zero, d.y, y.p);
        CHECK(count_bad_vec(y.p, ry, &rys, 0, "y") == 0, "TENSOR_OP_MATH equals the reference on TF32 inputs");
        int differs = 0;
        for (size_t i = 0; i < ex.size(); i++) differs += !close_to(y[i], ex[i], exs[i]);
        CHECK(differs > 0, "TENSOR_OP_MATH: no element differs from exact fp32");
        cudnnSetConvolutionMathType(d.conv, CUDNN_FMA_MATH);
        cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr,
                                0, &zero, d.y, y.p);
        CHECK(count_bad_vec(y.p, ex, &exs, 0, "y") == 0, "FMA_MATH is exact fp32");
    }

    /* NHWC input, NCHW output */
    {
        const ConvCase c{2, 3, 5, 4, 2, 3, 3, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION};
        ConvDescs d(c, CUDNN_FMA_MATH, CUDNN_TENSOR_NHWC);
        Buf x = Buf::floats((size_t)c.N * c.C * c.H * c.W), w = Buf::floats((size_t)c.K * c.C * 9),
            y = Buf::floats((size_t)c.N * c.K * c.P() * c.Q());
        fill(x);
        fill(w);
        std::vector<float> xnchw(x.n());
        for (int n = 0; n < c.N; n++)
            for (int ch = 0; ch < c.C; ch++)
                for (int hh = 0; hh < c.H; hh++)
                    for (int ww = 0; ww < c.W; ww++)
                        xnchw[(((size_t)n * c.C + ch) * c.H + hh) * c.W + ww] = x[(((size_t)n * c.H + hh) * c.W + ww) * c.C + ch];
        std::vector<double> ry, rys, t1, t2;
        ref_conv_all(c, xnchw.data(), w.p, nullptr, ry, rys, t1, t2, no_round);
        const float one = 1.0f, zero = 0.0f;
        CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                      nullptr, 0, &zero, d.y, y.p) == CUDNN_STATUS_SUCCESS,
              "NHWC forward");
        CHECK(count_bad_vec(y.p, ry, &rys, 0, "y") == 0, "NHWC input read through its strides");
    }

    /* descriptor errors */
    {
        const ConvCase c{1, 3, 8, 8, 4, 3, 3, 1, 1, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION};
        ConvDescs d(c, CUDNN_FMA_MATH);
        Buf x = Buf::floats((size_t)c.C * 64), w = Buf::floats((size_t)c.K * c.C * 9), y = Buf::floats((size_t)c.K * 16);
        fill(x);
        fill(w);
        const float one = 1.0f, zero = 0.0f;
        cudnnTensorDescriptor_t bad_y;
        cudnnCreateTensorDescriptor(&bad_y);
        cudnnSetTensor4dDescriptor(bad_y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, 4, 8, 8); /* stride ignored */
        CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                      nullptr, 0, &zero, bad_y, y.p) == CUDNN_STATUS_NOT_SUPPORTED,
              "y spatially unlike the output-size formula is NOT_SUPPORTED");
        cudnnSetTensor4dDescriptor(bad_y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, 3, 4, 4); /* c != filter k */
        CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                      nullptr, 0, &zero, bad_y, y.p) == CUDNN_STATUS_BAD_PARAM,
              "y channels != filter k is BAD_PARAM");
        cudnnDestroyTensorDescriptor(bad_y);
        cudnnFilterDescriptor_t bad_w;
        cudnnCreateFilterDescriptor(&bad_w);
        cudnnSetFilter4dDescriptor(bad_w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 4, 2, 3, 3);
        int n, cc, h, ww;
        CHECK(cudnnGetConvolution2dForwardOutputDim(d.conv, d.x, bad_w, &n, &cc, &h, &ww) == CUDNN_STATUS_BAD_PARAM,
              "filter channels != input channels is BAD_PARAM");
        cudnnDestroyFilterDescriptor(bad_w);
        size_t need = 0;
        CHECK(cudnnGetConvolutionForwardWorkspaceSize(dnn, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_FFT, &need) ==
                  CUDNN_STATUS_NOT_SUPPORTED,
              "FFT with stride 2 is NOT_SUPPORTED");
        CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_FFT, nullptr, 0,
                                      &zero, d.y, y.p) == CUDNN_STATUS_NOT_SUPPORTED,
              "running FFT with stride 2 is NOT_SUPPORTED");
        CHECK(cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_GEMM, nullptr, 0,
                                      &zero, d.y, y.p) == CUDNN_STATUS_BAD_PARAM,
              "GEMM algorithm without its workspace is BAD_PARAM");
        cudnnConvolutionDescriptor_t bad_conv;
        cudnnCreateConvolutionDescriptor(&bad_conv);
        CHECK(cudnnSetConvolution2dDescriptor(bad_conv, -1, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT) ==
                  CUDNN_STATUS_BAD_PARAM,
              "negative padding is BAD_PARAM");
        CHECK(cudnnSetConvolution2dDescriptor(bad_conv, 0, 0, 0, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT) ==
                  CUDNN_STATUS_BAD_PARAM,
              "zero stride is BAD_PARAM");
        CHECK(cudnnGetConvolution2dForwardOutputDim(bad_conv, d.x, d.w, &n, &cc, &h, &ww) == CUDNN_STATUS_BAD_PARAM,
              "an unset convolution descriptor is BAD_PARAM");
        CHECK(cudnnSetConvolutionMathType(bad_conv, (cudnnMathType_t)9) == CUDNN_STATUS_BAD_PARAM,
              "bad math type is BAD_PARAM");
        cudnnDestroyConvolutionDescriptor(bad_conv);
        int returned = 0;
        cudnnConvolutionFwdAlgoPerf_t perf[1];
        CHECK(cudnnGetConvolutionForwardAlgorithm_v7(dnn, d.x, d.w, d.conv, d.y, 0, &returned, perf) ==
                  CUDNN_STATUS_BAD_PARAM,
              "requestedAlgoCount 0 is BAD_PARAM");
        CHECK(aborts([&] {
                  cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv,
                                          CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0, &zero, d.y, x.p);
              }),
              "in-place convolution (y over x) faults");
        CHECK(aborts([&] {
                  /* IMPLICIT_PRECOMP_GEMM needs 4·27 + 12 bytes, less than x */
                  cudnnConvolutionForward(dnn, &one, d.x, x.p, d.w, w.p, d.conv,
                                          CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, x.p, x.bytes, &zero, d.y,
                                          y.p);
              }),
              "workspace over an operand faults");
    }

    /* graph-capture semantics: record, destroy the descriptors, change alpha, replay */
    {
        const ConvCase c{1, 2, 5, 5, 3, 3, 3, 1, 1, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION};
        Buf x = Buf::floats((size_t)c.C * 25), w = Buf::floats((size_t)c.K * c.C * 9), y = Buf::floats((size_t)c.K * 9);
        fill(x);
        fill(w);
        for (size_t i = 0; i < y.n(); i++) y[i] = NAN;
        float alpha = 1.0f, beta = 0.0f;
        {
            ConvDescs d(c, CUDNN_FMA_MATH);
            size_t need = 0;
            cudnnGetConvolutionForwardWorkspaceSize(dnn, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_GEMM, &need);
            static Buf ws(need); /* outlives the recording, as a graph's workspace must */
            cudasim_test_defer(true);
            CHECK(cudnnConvolutionForward(dnn, &alpha, d.x, x.p, d.w, w.p, d.conv, CUDNN_CONVOLUTION_FWD_ALGO_GEMM, ws.p,
                                          need, &beta, d.y, y.p) == CUDNN_STATUS_SUCCESS,
                  "deferred forward");
            cudasim_test_defer(false);
            cudnnSetConvolutionMathType(d.conv, CUDNN_TENSOR_OP_MATH);
        }
        alpha = 7.0f;
        CHECK(cudasim_test_queued() == 1, "forward was enqueued");
        cudasim_test_flush();
        std::vector<double> ry, rys, t1, t2;
        ref_conv_all(c, x.p, w.p, nullptr, ry, rys, t1, t2, no_round);
        CHECK(count_bad_vec(y.p, ry, &rys, 0, "y") == 0, "deferred forward used the descriptors and alpha of call time");
    }
}

int main() {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    setenv("CUDASIM_LIB_NOTES", "0", 1); /* the refusals below are provoked on purpose */
    cublasHandle_t h = nullptr;
    CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
    CHECK(cublasSetStream(h, nullptr) == CUBLAS_STATUS_SUCCESS, "cublasSetStream");
    CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS, "cublasSetMathMode");
    printf("cuBLAS\n");
    test_gemm_ex(h);
    test_gemm_ex_f16(h);
    test_strided_batched(h);
    test_row_major_pattern(h);
    test_beta_zero_nan(h);
    test_fast_modes(h);
    test_gemm_errors(h);
    test_workspace_rules(h);
    test_large_gemm(h);
    CHECK(strcmp(cublasGetStatusString(CUBLAS_STATUS_INVALID_VALUE), "") != 0, "status string");
    cublasDestroy(h);

    printf("cuBLASLt\n");
    cublasLtHandle_t lt = nullptr;
    CHECK(cublasLtCreate(&lt) == CUBLAS_STATUS_SUCCESS, "cublasLtCreate");
    test_lt(lt);
    cublasLtDestroy(lt);

    printf("cuDNN\n");
    cudnnHandle_t dnn = nullptr;
    CHECK(cudnnCreate(&dnn) == CUDNN_STATUS_SUCCESS, "cudnnCreate");
    CHECK(cudnnSetStream(dnn, nullptr) == CUDNN_STATUS_SUCCESS, "cudnnSetStream");
    test_conv(dnn);
    test_conv_half(dnn);
    CHECK(strcmp(cudnnGetErrorString(CUDNN_STATUS_BAD_PARAM), "CUDNN_STATUS_BAD_PARAM") == 0, "cudnn error string");
    cudnnDestroy(dnn);

    /* the summary in cmocka's words, so tests/run_tests.sh counts this binary as one test */
    if (g_fail) {
        printf("cudasim libs: %d checks passed, %d FAILED\n", g_pass, g_fail);
        printf("[  FAILED  ] 1 test(s), listed below:\n[  FAILED  ] cudasim_libs_selftest\n");
        return 1;
    }
    printf("cudasim libs: %d checks passed\n", g_pass);
    printf("[       OK ] cudasim_libs_selftest\n[  PASSED  ] 1 test(s).\n");
    return 0;
}
