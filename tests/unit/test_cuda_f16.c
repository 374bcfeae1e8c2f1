/* test_cuda_f16.c: the CUDA fp16-storage ops (sd_f16_ops) against their CPU twins
 * (src/backend/cpu/cpu_f16.c), and the UNet with fp16 activations on the GPU.
 *
 * Each op runs through both tables on the same fp16 inputs (random normals rounded to half on
 * the host); the outputs, widened to F32, are compared as max |got − want| / max |want|:
 *  - data movers (conversions, copy, concat, upsample, transpose): bit-identical;
 *  - elementwise ops and norms: TOL_F16_ELEM, one half-ulp of the output (both compute in fp32
 *    and round once; the device may differ by one rounding where its fp32 result differs in the
 *    last bit);
 *  - GEMMs, convolutions, attention: TOL_F16_GEMM (fp16 tensor-core products, fp32 accumulation
 *    in another order, and for attention P rounded for its second product).
 * Every test starts with testutil_skip_without_gpu(), so CI (no GPU) prints one SKIP line per
 * test; the host simulator of the GPU (make sim-test) runs them all. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/backend.h"
#include "sd/device.h"
#include "sd/io.h"
#include "sd/models.h"
#include "sd/nn.h"
#include "test_buffers.h"
#include "testutil.h"

#define TOL_F16_ELEM 1e-3 /* 2^-10: one fp16 rounding step, relative to the largest value */
#define TOL_F16_GEMM 1e-2

static const sd_backend *cpu, *gpu;
static const sd_f16_ops *cpu16, *gpu16;
static tb_backends backends;

/* ------------------------------------------------------------------------------------------------
 * Buffers (released by the per-test teardown, also when a test fails half-way)
 * --------------------------------------------------------------------------------------------- */

static float *hnew(int64_t n) { return tb_host((size_t)n * sizeof(float)); }
static sd_f16 *hnew16(int64_t n) { return tb_host((size_t)n * sizeof(sd_f16)); }
static sd_f16 *dnew16(int64_t n) { return tb_device(gpu, (size_t)n * sizeof(sd_f16)); }
static void *dnew_bytes(size_t bytes) { return tb_device(gpu, bytes); }
static sd_f16 *dput16(const sd_f16 *h, int64_t n) { return tb_upload(gpu, h, (size_t)n * sizeof(sd_f16)); }
static float *dput(const float *h, int64_t n) { return tb_upload(gpu, h, (size_t)n * sizeof(float)); }

/* Random normals (std `std`) rounded to fp16 on the host: the inputs both tables read. */
static sd_f16 *hrand16(int64_t n, uint64_t seed, float std) {
    const float *f = tb_host_randn(n, seed, std);
    sd_f16 *h = hnew16(n);
    for (int64_t i = 0; i < n; i++) h[i] = sd_f32_to_f16(f[i]);
    return h;
}

static float *hrand(int64_t n, uint64_t seed, float std) { return tb_host_randn(n, seed, std); }

static float *widen(const sd_f16 *h, int64_t n) {
    float *f = hnew(n);
    for (int64_t i = 0; i < n; i++) f[i] = sd_f16_to_f32(h[i]);
    return f;
}

/* A device fp16 result, widened to F32 on the host. */
static float *dget16(const sd_f16 *d, int64_t n) { return widen(tb_download(gpu, d, (size_t)n * sizeof(sd_f16)), n); }


static void require_gpu(void) {
    tb_require_gpu(&backends);
    if (!gpu16) fail_msg("the CUDA backend has no fp16 table");
}

/* Compares a device fp16 result with the CPU twin's (host fp16), both widened. */
static void check16(const char *what, const sd_f16 *got_dev, const sd_f16 *want_host, int64_t n, double tol) {
    const float *got = dget16(got_dev, n), *want = widen(want_host, n);
    const double err = testutil_max_rel_err(got, want, n);
    print_message("    %-56s max rel err %.3g (tol %.0e)\n", what, err, tol);
    if (!(err <= tol)) fail_msg("%s: max relative error %.6g exceeds %.1e", what, err, tol);
}

static void check16_equal(const char *what, const sd_f16 *got_dev, const sd_f16 *want_host, int64_t n) {
    const sd_f16 *got = tb_download(gpu, got_dev, (size_t)n * sizeof(sd_f16));
    for (int64_t i = 0; i < n; i++)
        if (got[i] != want_host[i])
            fail_msg("%s: element %lld is 0x%04x, the CPU twin gives 0x%04x", what, (long long)i, got[i], want_host[i]);
    print_message("    %-56s bit-identical (%lld values)\n", what, (long long)n);
}

static int group_setup(void **state) {
    (void)state;
    tb_open_backends(&backends);
    cpu = backends.cpu;
    gpu = backends.gpu;
    cpu16 = cpu->f16;
    gpu16 = gpu ? gpu->f16 : NULL;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    return 0;
}

/* ================================================================================================
 * Conversions and data movers: exact
 * ============================================================================================= */

static void test_f16_conversions(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    /* normals over a wide range, plus the edge cases: overflow to Inf, subnormals, ties */
    const int64_t n = 100003;
    float *x = hrand(n, 1, 3000.0f);
    const float edge[] = {65504.0f, 65519.0f, 65520.0f, -1e6f, 6.0e-8f, 3.0e-8f, 2.98e-8f, -6.1e-5f,
                          1.0f + 1.0f / 2048.0f, 1.0f + 3.0f / 2048.0f, 0.0f, -0.0f, INFINITY};
    memcpy(x, edge, sizeof edge);
    sd_f16 *want = hnew16(n);
    assert_sd_ok(cpu16->to_f16(x, want, n));
    sd_f16 *d = dnew16(n);
    assert_sd_ok(gpu16->to_f16(dput(x, n), d, n));
    check16_equal("to_f16 (range, subnormals, ties, overflow)", d, want, n);

    float *back_want = hnew(n), *back = hnew(n);
    assert_sd_ok(cpu16->to_f32(want, back_want, n));
    float *bd = dnew_bytes((size_t)n * sizeof(float));
    assert_sd_ok(gpu16->to_f32(d, bd, n));
    assert_sd_ok(gpu->download(back, bd, (size_t)n * sizeof(float)));
    assert_memory_equal(back, back_want, (size_t)n * sizeof(float));
    print_message("    %-56s bit-identical\n", "to_f32");

    sd_f16 *c = dnew16(n);
    assert_sd_ok(gpu16->copy(c, d, n));
    check16_equal("copy", c, want, n);
}

static void test_f16_layout_ops(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    {
        const int64_t B = 2, Ca = 5, Cb = 3, S = 37;
        sd_f16 *a = hrand16(B * Ca * S, 2, 1.0f), *b = hrand16(B * Cb * S, 3, 1.0f), *want = hnew16(B * (Ca + Cb) * S);
        assert_sd_ok(cpu16->concat_channels(a, b, want, B, Ca, Cb, S));
        sd_f16 *y = dnew16(B * (Ca + Cb) * S);
        assert_sd_ok(gpu16->concat_channels(dput16(a, B * Ca * S), dput16(b, B * Cb * S), y, B, Ca, Cb, S));
        check16_equal("concat_channels", y, want, B * (Ca + Cb) * S);
    }
    {
        const int64_t N = 6, H = 5, W = 7, Ho = 10, Wo = 14;
        sd_f16 *x = hrand16(N * H * W, 4, 1.0f), *want = hnew16(N * Ho * Wo);
        assert_sd_ok(cpu16->upsample_nearest(x, want, N, H, W, Ho, Wo));
        sd_f16 *y = dnew16(N * Ho * Wo);
        assert_sd_ok(gpu16->upsample_nearest(dput16(x, N * H * W), y, N, H, W, Ho, Wo));
        check16_equal("upsample_nearest x2", y, want, N * Ho * Wo);
    }
    {
        const int64_t B = 2, R = 70, C = 45;
        sd_f16 *x = hrand16(B * R * C, 5, 1.0f), *want = hnew16(B * R * C);
        assert_sd_ok(cpu16->transpose(x, want, B, R, C));
        sd_f16 *y = dnew16(B * R * C);
        assert_sd_ok(gpu16->transpose(dput16(x, B * R * C), y, B, R, C));
        check16_equal("transpose 70x45 (tile-unaligned)", y, want, B * R * C);
    }
}

/* ================================================================================================
 * Elementwise ops and norms: one rounding
 * ============================================================================================= */

static void test_f16_elementwise(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    const int64_t n = 50021;
    sd_f16 *a = hrand16(n, 6, 2.0f), *b = hrand16(n, 7, 2.0f);
    sd_f16 *ad = dput16(a, n), *bd = dput16(b, n);
    static const char *names[] = {"add", "sub", "mul"};
    for (int op = SD_BINARY_ADD; op <= SD_BINARY_MUL; op++) {
        sd_f16 *want = hnew16(n), *y = dnew16(n);
        assert_sd_ok(cpu16->binary((sd_binary_op)op, a, b, want, n));
        assert_sd_ok(gpu16->binary((sd_binary_op)op, ad, bd, y, n));
        check16_equal(names[op], y, want, n); /* one exact fp32 operation, one rounding */
    }
    {
        /* one half past 16-byte alignment: element by element instead of 8 halves per load */
        sd_f16 *want = hnew16(n - 1), *y = dnew16(n);
        assert_sd_ok(cpu16->binary(SD_BINARY_ADD, a + 1, b + 1, want, n - 1));
        assert_sd_ok(gpu16->binary(SD_BINARY_ADD, ad + 1, bd + 1, y + 1, n - 1));
        check16_equal("add, 2-byte aligned", y + 1, want, n - 1);
    }
    {
        const int64_t B = 2, C = 9, S = 333;
        sd_f16 *x = hrand16(B * C * S, 8, 1.0f), *want = hnew16(B * C * S);
        float *v = hrand(B * C, 9, 1.0f);
        assert_sd_ok(cpu16->add_channel_bias(x, v, want, B, C, S));
        sd_f16 *y = dnew16(B * C * S);
        assert_sd_ok(gpu16->add_channel_bias(dput16(x, B * C * S), dput(v, B * C), y, B, C, S));
        check16_equal("add_channel_bias (F32 bias)", y, want, B * C * S);
    }
    for (int k = 0; k < 2; k++) {
        /* 130 outputs per row: element by element; 160: 8 halves per load */
        const int64_t M = 77, N = k ? 160 : 130;
        sd_f16 *x = hrand16(M * 2 * N, 10 + k, 1.5f), *want = hnew16(M * N);
        assert_sd_ok(cpu16->geglu(x, want, M, N));
        sd_f16 *y = dnew16(M * N);
        assert_sd_ok(gpu16->geglu(dput16(x, M * 2 * N), y, M, N));
        check16(k ? "geglu, 160 per row" : "geglu, 130 per row", y, want, M * N, TOL_F16_ELEM);
    }
}

static void test_f16_norms(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    /* 1152 values per group (the one-kernel path), then 73,728 (the chunked path), both 16 bytes
     * at a time; then channels of 45 values (element by element) */
    const struct { int64_t B, C, S; int G; } gn[] = {{2, 64, 24 * 24, 32}, {1, 16, 96 * 96, 2}, {2, 12, 45, 4}};
    for (int k = 0; k < 3; k++)
        for (int silu = 0; silu <= 1; silu++) {
            const int64_t B = gn[k].B, C = gn[k].C, S = gn[k].S;
            sd_f16 *x = hrand16(B * C * S, 11, 3.0f), *want = hnew16(B * C * S);
            float *g = hrand(C, 12, 1.0f), *be = hrand(C, 13, 1.0f);
            assert_sd_ok(cpu16->group_norm(x, g, be, want, B, C, S, gn[k].G, 1e-5f, silu));
            sd_f16 *y = dnew16(B * C * S);
            assert_sd_ok(gpu16->group_norm(dput16(x, B * C * S), dput(g, C), dput(be, C), y, B, C, S, gn[k].G, 1e-5f, silu));
            char what[64];
            snprintf(what, sizeof what, "group_norm%s, %d groups of %lld", silu ? " + SiLU" : "", gn[k].G,
                     (long long)(C / gn[k].G * S));
            check16(what, y, want, B * C * S, TOL_F16_ELEM);
        }
    /* rows of 320, 640 and 1280 (SD's widths: held in registers, 16 bytes at a time), of 1288 (past
     * the registers' 1280: the general kernel, 16 bytes at a time) and of 36 values (4.5 pieces:
     * element by element) */
    const int64_t ln_widths[5] = {320, 640, 1280, 1288, 36};
    for (int k = 0; k < 5; k++) {
        const int64_t M = 2 * 77, Cn = ln_widths[k];
        sd_f16 *x = hrand16(M * Cn, 14, 2.0f), *want = hnew16(M * Cn);
        float *g = hrand(Cn, 15, 1.0f), *be = hrand(Cn, 16, 1.0f);
        assert_sd_ok(cpu16->layer_norm(x, g, be, want, M, Cn, 1e-5f));
        sd_f16 *y = dnew16(M * Cn);
        assert_sd_ok(gpu16->layer_norm(dput16(x, M * Cn), dput(g, Cn), dput(be, Cn), y, M, Cn, 1e-5f));
        char what[32];
        snprintf(what, sizeof what, "layer_norm %lld", (long long)Cn);
        check16(what, y, want, M * Cn, TOL_F16_ELEM);
    }
}

/* ================================================================================================
 * GEMM and convolution (gemm.cu, conv.cu)
 * ============================================================================================= */

/* The fp16 ops do not depend on the precision mode (fp16 data always takes the tensor-op paths),
 * but each mode has its own F32 plans next to them: both modes are run. */
static const sd_precision modes[] = {SD_PRECISION_EXACT, SD_PRECISION_FAST};
static const char *const mode_names[] = {"exact", "fast"};

/* A device copy of n halves starting `offset_halves` past a 256-byte boundary (offset 1: only
 * 2-byte aligned, as an fp16 view into the middle of a tensor can be). */
static sd_f16 *dput16_at(const sd_f16 *h, int64_t n, int offset_halves) {
    sd_f16 *d = dnew16(n + offset_halves) + offset_halves;
    assert_sd_ok(gpu->upload(d, h, (size_t)n * sizeof(sd_f16)));
    return d;
}

/* F32 values on the device `offset` floats past a 16-byte boundary: the misaligned paths */
static float *dput_at(const float *h, int64_t n, int offset) {
    float *d = (float *)dnew_bytes((size_t)(n + offset) * sizeof(float)) + offset;
    assert_sd_ok(gpu->upload(d, h, (size_t)n * sizeof(float)));
    return d;
}

static void test_f16_linear(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    /* misalign_x: x one half past a 256-byte boundary (cuBLASLt with MIN_ALIGNMENT 2);
     * misalign_b: the bias 2-byte aligned, which takes the cublasGemmEx fallback (gemm.cu);
     * residual: 0 none, 1 a tensor of its own, 2 y itself (in place) */
    struct { int64_t M, K, N; int bias, misalign_x, misalign_b, residual; } cases[] = {
        {77, 40, 24, 1, 0, 0, 0}, {77, 40, 24, 0, 0, 0, 0}, {5, 3, 7, 1, 0, 0, 0},  {33, 64, 17, 0, 0, 0, 0},
        {2, 128, 40, 1, 1, 0, 0}, {77, 40, 24, 1, 0, 1, 0}, {9, 19, 13, 1, 1, 1, 0}, {6, 0, 5, 1, 0, 0, 0},
        {77, 40, 24, 1, 0, 0, 1}, {77, 40, 24, 0, 0, 0, 2}, {77, 40, 24, 1, 0, 1, 1}, {9, 19, 13, 0, 1, 0, 1},
        {9, 19, 13, 1, 1, 1, 2}, {6, 0, 5, 1, 0, 0, 1},
        /* up to 8 rows: k_linear_few_rows (SD's time_emb_proj at batch 2; 16-byte loads or not) */
        {2, 1280, 1280, 1, 0, 0, 2}, {8, 64, 33, 1, 0, 0, 1}, {1, 40, 24, 1, 0, 0, 0}, {4, 44, 9, 0, 0, 0, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int64_t M = cases[c].M, K = cases[c].K, N = cases[c].N;
        const int residual = cases[c].residual;
        sd_f16 *x = hrand16(M * K, 100 + c, 1.0f), *w = hrand16(N * K, 110 + c, 1.0f / sqrtf((float)(K > 0 ? K : 1)));
        sd_f16 *b = hrand16(N, 120 + c, 1.0f), *want = hnew16(M * N);
        sd_f16 *r = residual ? hrand16(M * N, 140 + c, 1.0f) : NULL;
        assert_sd_ok(cpu16->linear(x, w, cases[c].bias ? b : NULL, r, want, M, K, N));
        sd_f16 *xd = dput16_at(x, M * K, cases[c].misalign_x), *wd = dput16(w, N * K);
        sd_f16 *bd = dput16_at(b, N, cases[c].misalign_b), *yd = dnew16(M * N);
        sd_f16 *rd = residual == 1 ? dput16(r, M * N) : residual == 2 ? yd : NULL;
        /* exact, fast, and fast with cuBLASLt's candidates timed first (SD_GEMM_ALGO=tune: the timing
         * runs write a scratch, so an in-place residual is still read once) */
        for (int m = 0; m < 3; m++) {
            assert_sd_ok(sd_cuda_set_precision(modes[m < 2 ? m : 1]));
            assert_sd_ok(sd_cuda_set_gemm_algo(m == 2 ? SD_GEMM_ALGO_TUNE : SD_GEMM_ALGO_HEURISTIC));
            if (residual == 2) assert_sd_ok(gpu->upload(yd, r, (size_t)(M * N) * sizeof(sd_f16)));
            assert_sd_ok(gpu16->linear(xd, wd, cases[c].bias ? bd : NULL, rd, yd, M, K, N));
            char what[112];
            snprintf(what, sizeof what, "linear %lldx%lld -> %lld%s%s%s%s (%s)", (long long)M, (long long)K,
                     (long long)N, cases[c].bias ? " +bias" : "",
                     residual == 1 ? " +residual" : residual == 2 ? " +residual in place" : "",
                     cases[c].misalign_x ? ", x 2-byte aligned" : "",
                     cases[c].misalign_b ? ", bias 2-byte aligned: fallback" : "", m == 2 ? "fast, tuned" : mode_names[m]);
            check16(what, yd, want, M * N, TOL_F16_GEMM);
            if (m == 2 && testutil_gpu_is_simulated() && K > 0 && M > 8 && !cases[c].misalign_b) {
                int plans = 0, tuned = 0; /* cudasim lists three candidates for every shape */
                sd_cuda_gemm_plan_counts(&plans, &tuned);
                if (tuned != 1 || plans != 1) fail_msg("%s: %d of %d plans tuned", what, tuned, plans);
            }
        }
        assert_sd_ok(sd_cuda_set_gemm_algo(SD_GEMM_ALGO_HEURISTIC));
    }
    /* linear_f32io: F32 x, y, bias and residual against an fp16 weight (fast mode's gradient steps):
     * x rounded to fp16 once, fp32 sums, y not rounded; residual 0 none, 1 its own, 2 in place;
     * misalign_b: a 4-byte aligned bias, which takes the cublasGemmEx fallback */
    {
        struct { int64_t M, K, N; int bias, residual, misalign_b; } io_cases[] = {
            {77, 40, 24, 1, 0, 0}, {2048, 320, 1280, 1, 0, 0}, {77, 40, 24, 0, 1, 0}, {154, 768, 320, 1, 2, 0},
            {77, 40, 24, 1, 1, 1}, {9, 19, 13, 0, 2, 1}, {6, 0, 5, 1, 1, 0},
            /* up to 8 rows: k_linear_few_rows (a gradient step's time_emb_proj at batch 1) */
            {1, 1280, 1280, 1, 0, 0}, {2, 1280, 320, 1, 1, 0}, {8, 40, 24, 1, 2, 0}, {3, 19, 13, 1, 1, 0},
        };
        for (size_t c = 0; c < sizeof io_cases / sizeof io_cases[0]; c++) {
            const int64_t M = io_cases[c].M, K = io_cases[c].K, N = io_cases[c].N;
            const int residual = io_cases[c].residual;
            char what[112];
            snprintf(what, sizeof what, "linear_f32io %lldx%lld -> %lld%s%s%s", (long long)M, (long long)K, (long long)N,
                     io_cases[c].bias ? " +bias" : "",
                     residual == 1 ? " +residual" : residual == 2 ? " +residual in place" : "",
                     io_cases[c].misalign_b && io_cases[c].bias ? ", bias 4-byte aligned: fallback" : "");
            if (testutil_sim_leaves_out(what, 2.0 * (double)M * K * N)) continue;
            float *x = hrand(M * K, 150 + c, 1.0f), *b = hrand(N, 160 + c, 1.0f), *r = hrand(M * N, 170 + c, 1.0f);
            sd_f16 *w = hrand16(N * K, 180 + c, 1.0f / sqrtf((float)(K > 0 ? K : 1)));
            float *want = hnew(M * N), *got = hnew(M * N);
            assert_sd_ok(cpu16->linear_f32io(x, w, io_cases[c].bias ? b : NULL, residual ? r : NULL, want, M, K, N));
            float *xd = dput(x, M * K), *yd = dnew_bytes((size_t)(M * N) * sizeof(float));
            float *bd_base = dnew_bytes((size_t)(N + 1) * sizeof(float)), *bd = bd_base + io_cases[c].misalign_b;
            assert_sd_ok(gpu->upload(bd, b, (size_t)N * sizeof(float)));
            float *rd = residual == 1 ? dput(r, M * N) : residual == 2 ? yd : NULL;
            if (residual == 2) assert_sd_ok(gpu->upload(yd, r, (size_t)(M * N) * sizeof(float)));
            assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
            sd_f16 *wd = dput16(w, N * K);
            for (int tune = 0; tune <= 1; tune++) { /* the heuristic's algorithm, then the tuned one */
                assert_sd_ok(sd_cuda_set_gemm_algo(tune ? SD_GEMM_ALGO_TUNE : SD_GEMM_ALGO_HEURISTIC));
                if (residual == 2) assert_sd_ok(gpu->upload(yd, r, (size_t)(M * N) * sizeof(float)));
                assert_sd_ok(gpu16->linear_f32io(xd, wd, io_cases[c].bias ? bd : NULL, rd, yd, M, K, N));
                assert_sd_ok(gpu->download(got, yd, (size_t)(M * N) * sizeof(float)));
                /* the same fp16 operands, fp32 sums in another order: close to fp32 rounding */
                const double err = testutil_max_rel_err(got, want, M * N);
                print_message("    %-56s max rel err %.3g (tol %.0e)%s\n", what, err, 1e-4, tune ? ", tuned" : "");
                if (!(err <= 1e-4)) fail_msg("%s%s: max relative error %.6g", what, tune ? " (tuned)" : "", err);
            }
            assert_sd_ok(sd_cuda_set_gemm_algo(SD_GEMM_ALGO_HEURISTIC));
        }
    }
    /* linear_batched: count projections of one input on packed weights (an attention's q, k, v) */
    {
        struct { int64_t M, K, N; int count; } b_cases[] = {{77, 40, 24, 3}, {5, 3, 7, 2}, {2048, 64, 64, 3}, {6, 0, 5, 2}};
        for (size_t c = 0; c < sizeof b_cases / sizeof b_cases[0]; c++) {
            const int64_t M = b_cases[c].M, K = b_cases[c].K, N = b_cases[c].N;
            const int count = b_cases[c].count;
            sd_f16 *x = hrand16(M * K, 190 + c, 1.0f);
            sd_f16 *w = hrand16(count * N * K, 195 + c, 1.0f / sqrtf((float)(K > 0 ? K : 1)));
            sd_f16 *want = hnew16(count * M * N), *yd = dnew16(count * M * N);
            assert_sd_ok(cpu16->linear_batched(x, w, want, M, K, N, count));
            assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
            assert_sd_ok(gpu16->linear_batched(dput16(x, M * K), dput16(w, count * N * K), yd, M, K, N, count));
            char what[96];
            snprintf(what, sizeof what, "linear_batched %d x (%lldx%lld -> %lld)", count, (long long)M, (long long)K,
                     (long long)N);
            check16(what, yd, want, count * M * N, TOL_F16_GEMM);
        }
    }
    /* linear_batched_f32io: the same on F32 x and y (a gradient step's q, k, v; the UNet's time
     * projections with their biases): x rounded to fp16 once, fp32 sums, y not rounded. A few rows
     * (M <= 8) take the few-row kernel, each product bit for bit the single linear_f32io's. */
    {
        struct { int64_t M, K, N; int count, biased; } b_cases[] = {{77, 40, 24, 3, 0}, {5, 3, 7, 2, 0},
                                                                    {1024, 64, 64, 3, 0}, {6, 0, 5, 2, 1},
                                                                    {2, 1280, 320, 2, 0}, {2, 1280, 320, 5, 1},
                                                                    {1, 1280, 1280, 12, 1}, {3, 44, 24, 3, 1},
                                                                    {9, 40, 24, 3, 1}};
        for (size_t c = 0; c < sizeof b_cases / sizeof b_cases[0]; c++) {
            const int64_t M = b_cases[c].M, K = b_cases[c].K, N = b_cases[c].N;
            const int count = b_cases[c].count;
            float *x = hrand(M * K, 200 + c, 1.0f), *want = hnew(count * M * N), *got = hnew(count * M * N);
            sd_f16 *w = hrand16(count * N * K, 205 + c, 1.0f / sqrtf((float)(K > 0 ? K : 1)));
            const float *b[16] = {NULL}, *bd[16] = {NULL};
            for (int i = 0; b_cases[c].biased && i < count; i++)
                if (i != 1) { /* one product without its bias */
                    b[i] = hrand(N, 210 + c * 16 + i, 1.0f);
                    bd[i] = dput(b[i], N);
                }
            float *yd = dnew_bytes((size_t)(count * M * N) * sizeof(float));
            assert_sd_ok(cpu16->linear_batched_f32io(x, w, b_cases[c].biased ? b : NULL, want, M, K, N, count));
            assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
            float *xd = dput(x, M * K);
            sd_f16 *wd = dput16(w, count * N * K);
            assert_sd_ok(gpu16->linear_batched_f32io(xd, wd, b_cases[c].biased ? bd : NULL, yd, M, K, N, count));
            assert_sd_ok(gpu->download(got, yd, (size_t)(count * M * N) * sizeof(float)));
            char what[96];
            snprintf(what, sizeof what, "linear_batched_f32io %d x (%lldx%lld -> %lld)%s", count, (long long)M,
                     (long long)K, (long long)N, b_cases[c].biased ? " + biases" : "");
            /* the same fp16 operands, fp32 sums in another order: close to fp32 rounding */
            const double err = testutil_max_rel_err(got, want, count * M * N);
            print_message("    %-56s max rel err %.3g (tol %.0e)\n", what, err, 1e-4);
            if (!(err <= 1e-4)) fail_msg("%s: max relative error %.6g", what, err);
            if (M <= 8 && K > 0) { /* the few-row kernel: each product as linear_f32io alone, bit for bit */
                float *single = hnew(M * N);
                float *sd = dnew_bytes((size_t)(M * N) * sizeof(float));
                for (int i = 0; i < count; i++) {
                    assert_sd_ok(gpu16->linear_f32io(xd, wd + (int64_t)i * N * K, bd[i], NULL, sd, M, K, N));
                    assert_sd_ok(gpu->download(single, sd, (size_t)(M * N) * sizeof(float)));
                    assert_memory_equal(single, got + (int64_t)i * M * N, (size_t)(M * N) * sizeof(float));
                }
            }
        }
    }
    /* bf16 copies and a gradient step's data gradient on a bf16 weight: dx += bf16(dy) · w, into a
     * dx that already holds values (the backward accumulates) */
    {
        const int64_t n = 5003;
        float *v = hrand(n, 186, 100.0f);
        sd_f16 *want16 = hnew16(n), *d16 = dnew16(n);
        assert_sd_ok(cpu16->to_bf16(v, want16, n));
        assert_sd_ok(gpu16->to_bf16(dput(v, n), d16, n));
        check16_equal("to_bf16", d16, want16, n);
        struct { int64_t M, K, N; } g_cases[] = {{77, 40, 24}, {4096, 320, 320}, {5, 3, 7}};
        for (size_t c = 0; c < sizeof g_cases / sizeof g_cases[0]; c++) {
            const int64_t M = g_cases[c].M, K = g_cases[c].K, N = g_cases[c].N;
            char what[96];
            snprintf(what, sizeof what, "linear_backward_data_bf16w %lldx%lld <- %lld", (long long)M, (long long)K,
                     (long long)N);
            if (testutil_sim_leaves_out(what, 2.0 * (double)M * K * N)) continue;
            float *dy = hrand(M * N, 187 + c, 1e-6f), *w32 = hrand(N * K, 188 + c, 0.1f), *dx0 = hrand(M * K, 189 + c, 1e-6f);
            sd_f16 *wb = hnew16(N * K);
            assert_sd_ok(cpu16->to_bf16(w32, wb, N * K));
            float *want = hnew(M * K), *got = hnew(M * K);
            memcpy(want, dx0, (size_t)(M * K) * sizeof(float));
            /* accumulate 1 into dx0, then 0 (overwrite) over dx0: the old values not read */
            for (int accumulate = 1; accumulate >= 0; accumulate--) {
                if (accumulate) memcpy(want, dx0, (size_t)(M * K) * sizeof(float));
                assert_sd_ok(cpu16->linear_backward_data_bf16w(dy, wb, want, M, K, N, accumulate));
                float *dxd = dput(dx0, M * K);
                assert_sd_ok(
                    gpu16->linear_backward_data_bf16w(dput(dy, M * N), dput16(wb, N * K), dxd, M, K, N, accumulate));
                assert_sd_ok(gpu->download(got, dxd, (size_t)(M * K) * sizeof(float)));
                /* the same bf16 operands, fp32 sums in another order (small gradients: bf16 keeps the range) */
                const double err = testutil_max_rel_err(got, want, M * K);
                print_message("    %-56s max rel err %.3g (tol %.0e)%s\n", what, err, 1e-4,
                              accumulate ? "" : ", overwriting");
                if (!(err <= 1e-4)) fail_msg("%s: max relative error %.6g", what, err);
                /* dy rounded beforehand (sd_f16_ops.linear_backward_data_bf16): the same GEMM, bit for
                 * bit, and its CPU twin the CPU's */
                if (!gpu16->linear_backward_data_bf16) continue;
                sd_f16 *dyb = hnew16(M * N);
                assert_sd_ok(cpu16->to_bf16(dy, dyb, M * N));
                float *dxb = dput(dx0, M * K), *twin = hnew(M * K), *rounded = hnew(M * K);
                memcpy(twin, dx0, (size_t)(M * K) * sizeof(float));
                assert_sd_ok(gpu16->linear_backward_data_bf16(dput16(dyb, M * N), dput16(wb, N * K), dxb, M, K, N,
                                                              accumulate));
                assert_sd_ok(gpu->download(rounded, dxb, (size_t)(M * K) * sizeof(float)));
                assert_memory_equal(rounded, got, (size_t)(M * K) * sizeof(float));
                assert_sd_ok(cpu16->linear_backward_data_bf16(dyb, wb, twin, M, K, N, accumulate));
                assert_memory_equal(twin, want, (size_t)(M * K) * sizeof(float));
            }
        }
        /* several data gradients of one input in one product (count 2 to 4; N a multiple of 4 takes
         * the 16-byte conversion, the others value by value; one gradient misaligned by a float) */
        struct { int64_t M, K, N; int count, offset; } m_cases[] = {
            {4096, 320, 320, 3, 0}, {77, 768, 320, 2, 0}, {33, 40, 24, 4, 1}, {5, 3, 7, 3, 0}};
        for (size_t c = 0; c < sizeof m_cases / sizeof m_cases[0]; c++) {
            const int64_t M = m_cases[c].M, K = m_cases[c].K, N = m_cases[c].N;
            const int count = m_cases[c].count;
            char what[96];
            snprintf(what, sizeof what, "linear_backward_data_bf16w_many %d x %lldx%lld <- %lld", count, (long long)M,
                     (long long)K, (long long)N);
            if (testutil_sim_leaves_out(what, 2.0 * (double)count * M * K * N)) continue;
            float *w32 = hrand(count * N * K, 190 + c, 0.1f), *dx0 = hrand(M * K, 191 + c, 1e-6f);
            sd_f16 *wb = hnew16(count * N * K);
            assert_sd_ok(cpu16->to_bf16(w32, wb, count * N * K));
            const float *dy[SD_LINEAR_MANY_MAX], *dyd[SD_LINEAR_MANY_MAX];
            for (int i = 0; i < count; i++) {
                float *h = hrand(M * N, 192 + 10 * c + i, 1e-6f);
                dy[i] = h;
                dyd[i] = i == 0 && m_cases[c].offset ? dput_at(h, M * N, 1) : dput(h, M * N);
            }
            float *want = hnew(M * K), *got = hnew(M * K);
            for (int accumulate = 1; accumulate >= 0; accumulate--) {
                memcpy(want, dx0, (size_t)(M * K) * sizeof(float));
                assert_sd_ok(cpu16->linear_backward_data_bf16w_many(dy, count, wb, want, M, K, N, accumulate));
                float *dxd = dput(dx0, M * K);
                assert_sd_ok(gpu16->linear_backward_data_bf16w_many(dyd, count, dput16(wb, count * N * K), dxd, M, K, N,
                                                                    accumulate));
                assert_sd_ok(gpu->download(got, dxd, (size_t)(M * K) * sizeof(float)));
                const double err = testutil_max_rel_err(got, want, M * K);
                print_message("    %-56s max rel err %.3g (tol %.0e)%s\n", what, err, 1e-4,
                              accumulate ? "" : ", overwriting");
                if (!(err <= 1e-4)) fail_msg("%s: max relative error %.6g", what, err);
                /* and the CPU twin against `count` single products adding into dx in turn */
                float *each = hnew(M * K);
                memcpy(each, dx0, (size_t)(M * K) * sizeof(float));
                for (int i = 0; i < count; i++)
                    assert_sd_ok(cpu16->linear_backward_data_bf16w(dy[i], wb + i * N * K, each, M, K, N,
                                                                   i > 0 || accumulate));
                const double apart = testutil_max_rel_err(want, each, M * K);
                if (!(apart <= 1e-5)) fail_msg("%s: the CPU twin is %.6g from single products", what, apart);
            }
        }
        /* a per-pixel linear with a map's NCHW gradient on either side (proj_out: dy a map; proj_in:
         * dx a map; both; neither), B images of S pixels, against the CPU twin, which is the token
         * op between transposes (checked here against that too, bit for bit) */
        struct { int64_t B, S, K, N; int dy_map, dx_map; } p_cases[] = {
            {1, 4096, 320, 320, 1, 0}, {1, 4096, 320, 320, 0, 1}, {2, 64, 40, 24, 1, 1},
            {3, 35, 24, 40, 0, 1},     {2, 35, 24, 40, 1, 0},     {2, 9, 5, 7, 0, 0}};
        for (size_t c = 0; c < sizeof p_cases / sizeof p_cases[0]; c++) {
            const int64_t B = p_cases[c].B, S = p_cases[c].S, K = p_cases[c].K, N = p_cases[c].N;
            const int dy_map = p_cases[c].dy_map, dx_map = p_cases[c].dx_map;
            const int64_t M = B * S;
            char what[96];
            snprintf(what, sizeof what, "linear_backward_data_bf16w_map %lldx%lldx%lld <- %lld%s%s", (long long)B,
                     (long long)S, (long long)K, (long long)N, dy_map ? ", dy map" : "", dx_map ? ", dx map" : "");
            if (testutil_sim_leaves_out(what, 2.0 * (double)M * K * N)) continue;
            float *dy = hrand(M * N, 200 + c, 1e-6f), *w32 = hrand(N * K, 201 + c, 0.1f), *dx0 = hrand(M * K, 202 + c, 1e-6f);
            sd_f16 *wb = hnew16(N * K);
            assert_sd_ok(cpu16->to_bf16(w32, wb, N * K));
            float *want = hnew(M * K), *got = hnew(M * K), *dy_tokens = hnew(M * N), *tokens = hnew(M * K);
            float *by_hand = hnew(M * K);
            if (dy_map)
                assert_sd_ok(cpu->transpose(dy, dy_tokens, B, N, S));
            else
                memcpy(dy_tokens, dy, (size_t)(M * N) * sizeof(float));
            for (int accumulate = 1; accumulate >= 0; accumulate--) {
                memcpy(want, dx0, (size_t)(M * K) * sizeof(float));
                assert_sd_ok(cpu16->linear_backward_data_bf16w_map(dy, wb, want, B, S, K, N, dy_map, dx_map, accumulate));
                /* the twin, call for call: where dx is a map, the token op into zeros, moved to
                 * [B, K, S] and added; else the token op adding into dx itself. (Adding dx after a
                 * token op into zeros is not the same bits: BLAS adds dx in at its first block of
                 * the sum over N, which for N beyond a block, 320 here, rounds differently.) */
                if (dx_map) {
                    assert_sd_ok(cpu16->linear_backward_data_bf16w(dy_tokens, wb, tokens, M, K, N, 0));
                    assert_sd_ok(cpu->transpose(tokens, by_hand, B, S, K));
                    for (int64_t i = 0; accumulate && i < M * K; i++) by_hand[i] += dx0[i];
                } else {
                    memcpy(by_hand, dx0, (size_t)(M * K) * sizeof(float));
                    assert_sd_ok(cpu16->linear_backward_data_bf16w(dy_tokens, wb, by_hand, M, K, N, accumulate));
                }
                assert_memory_equal(want, by_hand, (size_t)(M * K) * sizeof(float));
                float *dxd = dput(dx0, M * K);
                assert_sd_ok(gpu16->linear_backward_data_bf16w_map(dput(dy, M * N), dput16(wb, N * K), dxd, B, S, K, N,
                                                                   dy_map, dx_map, accumulate));
                assert_sd_ok(gpu->download(got, dxd, (size_t)(M * K) * sizeof(float)));
                const double err = testutil_max_rel_err(got, want, M * K);
                print_message("    %-56s max rel err %.3g (tol %.0e)%s\n", what, err, 1e-4,
                              accumulate ? "" : ", overwriting");
                if (!(err <= 1e-4)) fail_msg("%s: max relative error %.6g", what, err);
            }
        }
    }
    /* the F32 linear of the same shape keeps its own plan (the cache keys on the data type) */
    {
        const int64_t M = 77, K = 40, N = 24;
        float *x = hrand(M * K, 130, 1.0f), *w = hrand(N * K, 131, 0.15f), *b = hrand(N, 132, 1.0f);
        float *want = hnew(M * N), *got = hnew(M * N);
        assert_sd_ok(cpu->linear(x, w, b, NULL, want, M, K, N));
        float *yd = dnew_bytes((size_t)(M * N) * sizeof(float));
        assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_EXACT)); /* fp32 FMA: the tight tolerance below */
        assert_sd_ok(gpu->linear(dput(x, M * K), dput(w, N * K), dput(b, N), NULL, yd, M, K, N));
        assert_sd_ok(gpu->download(got, yd, (size_t)(M * N) * sizeof(float)));
        const double err = testutil_max_rel_err(got, want, M * N);
        print_message("    %-56s max rel err %.3g (tol %.0e)\n", "F32 linear 77x40 -> 24 +bias after the fp16 one", err,
                      1e-5);
        if (!(err <= 1e-5)) fail_msg("F32 linear after the fp16 one: max relative error %.6g", err);
    }
}

typedef struct f16_conv_case {
    int64_t B, Ci, H, W, Co;
    int k, stride, pt, pl, pb, pr, bias;
    const char *what;
} f16_conv_case;

/* Under SD_CONV_WINOGRAD=all, that a channels-last fp16 convolution of a 3x3 "same" geometry did
 * run as Winograd F(2x2, 3x3) (its plan, made since the setting dropped the others), and one of any
 * other geometry did not: a silent fall back to another way cannot pass. */
static void expect_winograd(const sd_conv_geom *g, const char *what) {
    const int same3x3 = g->kh == 3 && g->kw == 3 && g->stride == 1 && g->pad_top == 1 && g->pad_left == 1 &&
                        g->h_out == g->h_in && g->w_out == g->w_in;
    int plans = 0, wino = 0;
    sd_cuda_conv_plan_counts(&plans, NULL, &wino);
    if (wino != (same3x3 ? 1 : 0)) fail_msg("%s: %d of %d convolution plans ran as Winograd", what, wino, plans);
}

/* The geometry as sd_conv2d_pad4 (src/nn/nn.c) makes it: bottom/right padding implied by the
 * output size. */
static sd_conv_geom f16_conv_geom(const f16_conv_case *c) {
    sd_conv_geom g = {.batch = c->B, .c_in = c->Ci, .h_in = c->H, .w_in = c->W, .c_out = c->Co, .kh = c->k,
                      .kw = c->k, .stride = c->stride, .pad_top = c->pt, .pad_left = c->pl};
    g.h_out = (c->H + c->pt + c->pb - c->k) / c->stride + 1;
    g.w_out = (c->W + c->pl + c->pr - c->k) / c->stride + 1;
    return g;
}

/* One case's inputs: random x and w (fp16), bias (F32), on the host and on the device, and a
 * device output buffer; the layouts read the same values in their own order. */
typedef struct {
    sd_conv_geom g;
    int64_t nx, nw, ny;
    sd_f16 *x, *w, *xd, *wd, *yd;
    float *b, *bd;
} f16_conv_data;

static f16_conv_data f16_conv_data_make(const f16_conv_case *c, uint64_t seed) {
    f16_conv_data d;
    d.g = f16_conv_geom(c);
    d.nx = d.g.batch * d.g.c_in * d.g.h_in * d.g.w_in;
    d.nw = d.g.c_out * d.g.c_in * d.g.kh * d.g.kw;
    d.ny = d.g.batch * d.g.c_out * d.g.h_out * d.g.w_out;
    d.x = hrand16(d.nx, seed, 1.0f);
    d.w = hrand16(d.nw, seed + 1, 1.0f / sqrtf((float)(d.g.c_in * d.g.kh * d.g.kw)));
    d.b = hrand(d.g.c_out, seed + 2, 1.0f);
    d.xd = dput16(d.x, d.nx);
    d.wd = dput16(d.w, d.nw);
    d.yd = dnew16(d.ny);
    d.bd = dput(d.b, d.g.c_out);
    return d;
}

static void test_f16_conv2d(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    static const f16_conv_case cases[] = {
        {2, 5, 9, 11, 7, 3, 1, 1, 1, 1, 1, 1, "conv3x3 pad1 +bias"},
        {1, 4, 8, 6, 6, 3, 1, 1, 1, 1, 1, 0, "conv3x3 pad1"},
        {1, 6, 10, 10, 4, 3, 2, 1, 1, 1, 1, 1, "conv3x3 stride2 pad1 +bias"},
        {2, 8, 7, 5, 3, 1, 1, 0, 0, 0, 0, 1, "conv1x1 +bias"},
        {2, 8, 7, 5, 3, 1, 1, 0, 0, 0, 0, 0, "conv1x1"},
        {1, 3, 8, 8, 5, 3, 2, 0, 0, 1, 1, 1, "conv3x3 stride2 pad(0,0,1,1) +bias (VAE down)"},
        {1, 8, 13, 11, 6, 3, 2, 0, 0, 1, 1, 0, "conv3x3 stride2 pad(0,0,1,1) odd sizes"},
        {2, 128, 8, 8, 40, 3, 1, 1, 1, 1, 1, 1, "conv3x3 128ch 8x8 +bias (GEMM by default)"},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const f16_conv_case *c = &cases[t];
        const f16_conv_data d = f16_conv_data_make(c, 200 + 3 * t);
        const sd_conv_geom g = d.g;
        const int64_t ny = d.ny;
        sd_f16 *want = hnew16(ny), *xd = d.xd, *wd = d.wd, *yd = d.yd;
        float *bd = d.bd;
        assert_sd_ok(cpu16->conv2d(d.x, d.w, c->bias ? d.b : NULL, NULL, NULL, want, &g));
        /* exact, fast (default: GEMM where conv.cu's rule says), fast with cuDNN's heuristic, with
         * the algorithms cuDNN times, with im2col + GEMM everywhere, through cuDNN's graph API
         * (its first engine; tuned against the legacy algorithm) */
        static const char *const way[7] = {"exact", "fast", "fast, cudnn", "fast, find", "fast, gemm", "fast, graph",
                                           "fast, tune"};
        static const sd_conv_algo algo[7] = {SD_CONV_ALGO_HEURISTIC, SD_CONV_ALGO_HEURISTIC, SD_CONV_ALGO_HEURISTIC,
                                             SD_CONV_ALGO_FIND, SD_CONV_ALGO_HEURISTIC, SD_CONV_ALGO_GRAPH,
                                             SD_CONV_ALGO_TUNE};
        for (int m = 0; m < 7; m++) {
            assert_sd_ok(sd_cuda_set_precision(m == 0 ? SD_PRECISION_EXACT : SD_PRECISION_FAST));
            assert_sd_ok(sd_cuda_set_conv_algo(algo[m]));
            assert_sd_ok(sd_cuda_set_conv_gemm(m == 1 ? SD_CONV_GEMM_AUTO : m == 4 ? SD_CONV_GEMM_ALL : SD_CONV_GEMM_OFF));
            assert_sd_ok(gpu16->conv2d(xd, wd, c->bias ? bd : NULL, NULL, NULL, yd, &g));
            char what[96];
            snprintf(what, sizeof what, "%s (%s)", c->what, way[m]);
            check16(what, yd, want, ny, TOL_F16_GEMM);
        }
        assert_sd_ok(sd_cuda_set_conv_algo(SD_CONV_ALGO_HEURISTIC));
        assert_sd_ok(sd_cuda_set_conv_gemm(SD_CONV_GEMM_AUTO));
    }
    /* the F32 convolution of an asymmetric geometry just run in fp16 keeps its own plan and its
     * own padded buffer (the cache keys on the data type; the workspace carving on its size) */
    {
        const sd_conv_geom g = f16_conv_geom(&cases[5]);
        const int64_t nx = g.batch * g.c_in * g.h_in * g.w_in, nw = g.c_out * g.c_in * g.kh * g.kw;
        const int64_t ny = g.batch * g.c_out * g.h_out * g.w_out;
        float *x = hrand(nx, 230, 1.0f), *w = hrand(nw, 231, 0.2f), *b = hrand(g.c_out, 232, 1.0f);
        float *want = hnew(ny), *got = hnew(ny);
        assert_sd_ok(cpu->conv2d(x, w, b, want, &g));
        float *yd = dnew_bytes((size_t)ny * sizeof(float));
        assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_EXACT)); /* fp32 FMA: the tight tolerance below */
        assert_sd_ok(gpu->conv2d(dput(x, nx), dput(w, nw), dput(b, g.c_out), yd, &g));
        assert_sd_ok(gpu->download(got, yd, (size_t)ny * sizeof(float)));
        const double err = testutil_max_rel_err(got, want, ny);
        print_message("    %-56s max rel err %.3g (tol %.0e)\n", "F32 conv pad(0,0,1,1) after the fp16 one", err, 1e-5);
        if (!(err <= 1e-5)) fail_msg("F32 conv after the fp16 one: max relative error %.6g", err);
    }
}

/* ================================================================================================
 * Channels-last feature maps (sd_f16_ops.*_nhwc): the same values as the NCHW twins, stored
 * [B, H, W, C]
 * ============================================================================================= */

static void test_f16_channels_last_ops(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
    /* moves: channel counts of whole 16-byte units (the vector path) and not */
    const int64_t chans[2][2] = {{5, 3}, {16, 24}};
    for (int k = 0; k < 2; k++) {
        const int64_t B = 2, Ca = chans[k][0], Cb = chans[k][1], S = 37;
        sd_f16 *a = hrand16(B * S * Ca, 300 + k, 1.0f), *b = hrand16(B * S * Cb, 302 + k, 1.0f);
        sd_f16 *want = hnew16(B * S * (Ca + Cb)), *y = dnew16(B * S * (Ca + Cb));
        assert_sd_ok(cpu16->concat_channels_nhwc(a, b, want, B, Ca, Cb, S));
        assert_sd_ok(gpu16->concat_channels_nhwc(dput16(a, B * S * Ca), dput16(b, B * S * Cb), y, B, Ca, Cb, S));
        char what[64];
        snprintf(what, sizeof what, "concat_channels_nhwc %lld + %lld", (long long)Ca, (long long)Cb);
        check16_equal(what, y, want, B * S * (Ca + Cb));

        const int64_t C = Cb, H = 5, W = 7, Ho = 10, Wo = 14;
        sd_f16 *x = hrand16(B * H * W * C, 304 + k, 1.0f), *up_want = hnew16(B * Ho * Wo * C), *up = dnew16(B * Ho * Wo * C);
        assert_sd_ok(cpu16->upsample_nearest_nhwc(x, up_want, B, H, W, C, Ho, Wo));
        assert_sd_ok(gpu16->upsample_nearest_nhwc(dput16(x, B * H * W * C), up, B, H, W, C, Ho, Wo));
        snprintf(what, sizeof what, "upsample_nearest_nhwc x2, %lld channels", (long long)C);
        check16_equal(what, up, up_want, B * Ho * Wo * C);
    }
    /* into and out of channels-last storage: F32 NCHW -> fp16 [B, S, C] (one rounding), and back,
     * widening exactly, alone or adding a channel bias and a residual in F32 on the way (a gradient
     * step's convolution epilogue); tile-unaligned sizes */
    {
        const int64_t B = 2, C = 45, S = 70;
        float *x = hrand(B * C * S, 320, 3.0f);
        sd_f16 *want16 = hnew16(B * S * C), *x16 = dnew16(B * S * C);
        assert_sd_ok(cpu16->to_f16_nhwc(x, want16, B, C, S));
        assert_sd_ok(gpu16->to_f16_nhwc(dput(x, B * C * S), x16, B, C, S));
        check16_equal("to_f16_nhwc 45 channels x 70 pixels", x16, want16, B * S * C);
        float *v = hrand(B * C, 321, 1.0f), *r = hrand(B * C * S, 322, 1.0f);
        float *vd = dput(v, B * C), *rd = dput(r, B * C * S);
        for (int k = 0; k < 4; k++) {
            const int with_v = k & 1, with_r = k >> 1;
            float *want = hnew(B * C * S), *y = tb_device(gpu, (size_t)(B * C * S) * sizeof(float));
            assert_sd_ok(cpu16->to_f32_nchw(want16, with_v ? v : NULL, with_r ? r : NULL, want, B, C, S));
            assert_sd_ok(gpu16->to_f32_nchw(x16, with_v ? vd : NULL, with_r ? rd : NULL, y, B, C, S));
            const float *got = tb_download(gpu, y, (size_t)(B * C * S) * sizeof(float));
            for (int64_t b = 0; b < B; b++) /* the CPU twin against its definition, (x + v) + r */
                for (int64_t c = 0; c < C; c++)
                    for (int64_t p = 0; p < S; p++) {
                        const int64_t i = (b * C + c) * S + p;
                        float t = sd_f16_to_f32(want16[(b * S + p) * C + c]);
                        if (with_v) t += v[b * C + c];
                        if (with_r) t += r[i];
                        assert_true(want[i] == t);
                    }
            assert_memory_equal(got, want, (size_t)(B * C * S) * sizeof(float));
            print_message("    %-56s bit-identical\n", with_v && with_r ? "to_f32_nchw + channel bias + residual"
                                                      : with_v        ? "to_f32_nchw + channel bias"
                                                      : with_r        ? "to_f32_nchw + residual"
                                                                      : "to_f32_nchw");
        }
    }
    for (int k = 0; k < 2; k++) {
        /* 9 channels: element by element; 320: 8 halves per load */
        const int64_t B = 2, C = k ? 320 : 9, S = k ? 100 : 333;
        sd_f16 *x = hrand16(B * S * C, 306, 1.0f), *want = hnew16(B * S * C), *y = dnew16(B * S * C);
        float *v = hrand(B * C, 307, 1.0f);
        assert_sd_ok(cpu16->add_channel_bias_nhwc(x, v, want, B, C, S));
        assert_sd_ok(gpu16->add_channel_bias_nhwc(dput16(x, B * S * C), dput(v, B * C), y, B, C, S));
        check16_equal(k ? "add_channel_bias_nhwc (F32 bias), 320 channels" : "add_channel_bias_nhwc (F32 bias), 9 channels",
                      y, want, B * S * C);
    }
    /* group norm: short groups in one kernel, 8, 4, 2 and 1 channels per load (40, 20, 2, 6 and 3
     * channels per group; SD's 2560-channel concatenation at 8x8), and long ones through the
     * statistics pass: SD at 320 channels (10 per group across 16-byte loads, 6 pixel planes;
     * 2209 pixels: a ragged last chunk), 2560 channels (one plane of 320 lanes), loads of 2
     * and of 1 channel (330 and 45 channels), and three images, each finished by its own last
     * block (640 channels, 96 groups: a warp's batches of groups take two rounds) */
    const struct { int64_t B, C, S; int G; } gn[] = {
        {2, 64, 24 * 24, 32}, {1, 320, 47 * 47, 32}, {2, 1280, 64, 32}, {1, 12, 45, 2},   {2, 640, 64, 32},
        {1, 15, 100, 5},      {1, 2560, 64, 32},     {2, 320, 47 * 47, 32}, {1, 2560, 16 * 16, 32},
        {1, 330, 2000, 33},   {2, 45, 4000, 9},      {3, 640, 33 * 33, 32}};
    for (int k = 0; k < (int)(sizeof gn / sizeof gn[0]); k++)
        for (int silu = 0; silu <= 1; silu++) {
            const int64_t B = gn[k].B, C = gn[k].C, S = gn[k].S;
            char what[80];
            snprintf(what, sizeof what, "group_norm_nhwc%s, %lld channels in %d groups, %lld pixels", silu ? " + SiLU" : "",
                     (long long)C, gn[k].G, (long long)S);
            if (testutil_sim_leaves_out(what, 10.0 * (double)(B * C * S))) continue;
            sd_f16 *x = hrand16(B * S * C, 310 + k, 3.0f), *want = hnew16(B * S * C), *y = dnew16(B * S * C);
            float *g = hrand(C, 320 + k, 1.0f), *be = hrand(C, 330 + k, 1.0f);
            assert_sd_ok(cpu16->group_norm_nhwc(x, g, be, want, B, C, S, gn[k].G, 1e-5f, silu, NULL));
            sd_f16 *xd = dput16(x, B * S * C);
            float *gd = dput(g, C), *bed = dput(be, C);
            assert_sd_ok(gpu16->group_norm_nhwc(xd, gd, bed, y, B, C, S, gn[k].G, 1e-5f, silu, NULL));
            check16(what, y, want, B * S * C, TOL_F16_ELEM);
            /* the statistics kept for a backward (a gradient step's tape): the same output bit for bit,
             * and (mean, rstd) per (image, group) as the CPU twin keeps them, within the rounding of
             * sums taken in another order */
            const int64_t n_stats = B * gn[k].G * 2;
            float *kept_want = hnew(n_stats), *kept = dnew_bytes((size_t)n_stats * sizeof(float));
            sd_f16 *y_kept = dnew16(B * S * C);
            assert_sd_ok(cpu16->group_norm_nhwc(x, g, be, want, B, C, S, gn[k].G, 1e-5f, silu, kept_want));
            assert_sd_ok(gpu16->group_norm_nhwc(xd, gd, bed, y_kept, B, C, S, gn[k].G, 1e-5f, silu, kept));
            const size_t y_bytes = (size_t)(B * S * C) * sizeof(sd_f16);
            if (memcmp(tb_download(gpu, y_kept, y_bytes), tb_download(gpu, y, y_bytes), y_bytes))
                fail_msg("%s: the output differs when the statistics are kept", what);
            const float *kept_got = tb_download(gpu, kept, (size_t)n_stats * sizeof(float));
            const double err = testutil_max_rel_err(kept_got, kept_want, n_stats);
            print_message("    %-56s max rel err %.3g (tol 1e-05), output bit-identical\n", "  its kept (mean, rstd)", err);
            if (!(err <= 1e-5)) fail_msg("%s: kept statistics %.6g from the CPU twin's", what, err);
        }
    /* convolutions: cuDNN with NHWC descriptors, one GEMM over the batch's pixels (im2col in KRSC
     * order, or x itself for 1x1), and the default rule between them */
    static const f16_conv_case cases[] = {
        {2, 5, 9, 11, 7, 3, 1, 1, 1, 1, 1, 1, "conv3x3 pad1 +bias"},
        {1, 16, 8, 6, 24, 3, 1, 1, 1, 1, 1, 0, "conv3x3 pad1 16->24"},
        {1, 6, 10, 10, 4, 3, 2, 1, 1, 1, 1, 1, "conv3x3 stride2 pad1 +bias"},
        {2, 8, 7, 5, 3, 1, 1, 0, 0, 0, 0, 1, "conv1x1 +bias"},
        {1, 4, 12, 12, 32, 3, 1, 1, 1, 1, 1, 1, "conv_in-like 4->32 +bias"},
        {2, 128, 8, 8, 40, 3, 1, 1, 1, 1, 1, 1, "conv3x3 128ch 8x8 +bias (GEMM by default)"},
        {1, 64, 32, 31, 48, 3, 1, 1, 1, 1, 1, 1, "conv3x3 64->48 32x31 +bias"},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const f16_conv_case *c = &cases[t];
        const f16_conv_data d = f16_conv_data_make(c, 340 + 3 * t);
        const sd_conv_geom g = d.g;
        const int64_t nx = d.nx, nw = d.nw, ny = d.ny;
        sd_f16 *x = d.x, *w = d.w, *want = hnew16(ny), *xd = d.xd, *wd = d.wd, *yd = d.yd;
        float *b = d.b, *bd = d.bd;
        assert_sd_ok(cpu16->conv2d_nhwc(x, w, c->bias ? b : NULL, NULL, NULL, want, &g));
        /* ... and "gemm, tuned": the GEMM path's product through a tuned cuBLASLt plan (SD_GEMM_ALGO=tune);
         * "winograd": F(2x2, 3x3) wherever the geometry allows (SD_CONV_WINOGRAD=all); "winograd, tune":
         * Winograd one more candidate of SD_CONV_ALGO=tune's timing */
        static const char *const way[8] = {"default", "cudnn", "gemm", "graph", "tune", "gemm, tuned", "winograd",
                                           "winograd, tune"};
        static const sd_conv_gemm mode[8] = {SD_CONV_GEMM_AUTO, SD_CONV_GEMM_OFF, SD_CONV_GEMM_ALL, SD_CONV_GEMM_OFF,
                                             SD_CONV_GEMM_OFF, SD_CONV_GEMM_ALL, SD_CONV_GEMM_AUTO, SD_CONV_GEMM_AUTO};
        for (int m = 0; m < 8; m++) {
            assert_sd_ok(sd_cuda_set_conv_algo(m == 3 ? SD_CONV_ALGO_GRAPH : m == 4 || m == 7 ? SD_CONV_ALGO_TUNE
                                                                                        : SD_CONV_ALGO_HEURISTIC));
            assert_sd_ok(sd_cuda_set_gemm_algo(m == 5 ? SD_GEMM_ALGO_TUNE : SD_GEMM_ALGO_HEURISTIC));
            assert_sd_ok(sd_cuda_set_conv_gemm(mode[m]));
            assert_sd_ok(sd_cuda_set_conv_winograd(m >= 6 ? SD_CONV_WINOGRAD_ALL : SD_CONV_WINOGRAD_OFF));
            assert_sd_ok(gpu16->conv2d_nhwc(xd, wd, c->bias ? bd : NULL, NULL, NULL, yd, &g));
            char what[112];
            snprintf(what, sizeof what, "conv2d_nhwc %s (%s)", c->what, way[m]);
            check16(what, yd, want, ny, TOL_F16_GEMM);
            if (m == 6) expect_winograd(&g, what);
        }
        assert_sd_ok(sd_cuda_set_conv_algo(SD_CONV_ALGO_HEURISTIC));
        assert_sd_ok(sd_cuda_set_gemm_algo(SD_GEMM_ALGO_HEURISTIC));
        assert_sd_ok(sd_cuda_set_conv_gemm(SD_CONV_GEMM_AUTO));
        assert_sd_ok(sd_cuda_set_conv_winograd(SD_CONV_WINOGRAD_AUTO));
        /* the NCHW convolution of the same geometry keeps its own plan (the cache keys on the layout) */
        {
            sd_f16 *x_nchw = hnew16(nx), *w_kcrs = hnew16(nw), *y_nchw = hnew16(ny);
            assert_sd_ok(cpu16->transpose(x, x_nchw, g.batch, g.h_in * g.w_in, g.c_in));
            assert_sd_ok(cpu16->transpose(w, w_kcrs, g.c_out, (int64_t)g.kh * g.kw, g.c_in));
            assert_sd_ok(cpu16->conv2d(x_nchw, w_kcrs, c->bias ? b : NULL, NULL, NULL, y_nchw, &g));
            sd_f16 *yd2 = dnew16(ny);
            assert_sd_ok(gpu16->conv2d(dput16(x_nchw, nx), dput16(w_kcrs, nw), c->bias ? bd : NULL, NULL, NULL, yd2, &g));
            char what[112];
            snprintf(what, sizeof what, "  NCHW conv after it: %s", c->what);
            check16(what, yd2, y_nchw, ny, TOL_F16_GEMM);
        }
    }
}

/* The convolution's epilogue (a resnet's time embedding and skip connection): y = conv + b + v[n, c]
 * + r with one rounding after the product's, in both layouts and both ways of convolving. */
static void test_f16_conv2d_epilogue(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
    static const f16_conv_case cases[] = {
        {2, 16, 9, 7, 24, 3, 1, 1, 1, 1, 1, 1, "conv3x3 16->24 +bias"},
        {2, 128, 8, 8, 40, 3, 1, 1, 1, 1, 1, 1, "conv3x3 128ch 8x8 +bias (GEMM by default)"},
        {2, 24, 6, 5, 16, 1, 1, 0, 0, 0, 0, 0, "conv1x1 (no bias)"},
        /* 20 output channels: the channels-last epilogue element by element, not in 8-half pieces */
        {1, 8, 6, 6, 20, 3, 1, 1, 1, 1, 1, 1, "conv3x3 8->20 +bias"},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const f16_conv_case *c = &cases[t];
        const f16_conv_data d = f16_conv_data_make(c, 370 + 3 * t);
        const sd_conv_geom g = d.g;
        const int64_t ny = d.ny;
        sd_f16 *x = d.x, *w = d.w, *xd = d.xd, *wd = d.wd, *yd = d.yd;
        float *b = d.b, *bd = d.bd;
        sd_f16 *r = hrand16(ny, 390 + t, 1.0f), *rd = dput16(r, ny);
        float *v = hrand(g.batch * g.c_out, 410 + t, 1.0f), *vd = dput(v, g.batch * g.c_out);
        for (int with_v = 0; with_v <= 1; with_v++)
            for (int with_r = 0; with_r <= 1; with_r++)
                for (int nhwc = 0; nhwc <= 1; nhwc++)
                    for (int m = 0; m < 4; m++) { /* cuDNN's legacy API, GEMM, cuDNN's graph API, Winograd */
                        /* the layouts read the same random values as their own order */
                        sd_f16 *want = hnew16(ny);
                        assert_sd_ok((nhwc ? cpu16->conv2d_nhwc : cpu16->conv2d)(x, w, c->bias ? b : NULL,
                                                                                  with_v ? v : NULL, with_r ? r : NULL,
                                                                                  want, &g));
                        if (m == 3 && !nhwc) continue; /* Winograd takes channels-last fp16 maps only */
                        assert_sd_ok(sd_cuda_set_conv_algo(m == 2 ? SD_CONV_ALGO_GRAPH : SD_CONV_ALGO_HEURISTIC));
                        assert_sd_ok(sd_cuda_set_conv_gemm(m == 1 ? SD_CONV_GEMM_ALL : SD_CONV_GEMM_OFF));
                        assert_sd_ok(sd_cuda_set_conv_winograd(m == 3 ? SD_CONV_WINOGRAD_ALL : SD_CONV_WINOGRAD_OFF));
                        assert_sd_ok((nhwc ? gpu16->conv2d_nhwc : gpu16->conv2d)(xd, wd, c->bias ? bd : NULL,
                                                                                  with_v ? vd : NULL, with_r ? rd : NULL,
                                                                                  yd, &g));
                        char what[128];
                        static const char *const ways[4] = {"cudnn", "gemm", "graph", "winograd"};
                        snprintf(what, sizeof what, "%s%s%s, %s, %s", c->what, with_v ? " +channel bias" : "",
                                 with_r ? " +residual" : "", nhwc ? "NHWC" : "NCHW", ways[m]);
                        check16(what, yd, want, ny, TOL_F16_GEMM);
                        if (m == 3) expect_winograd(&g, what);
                    }
        assert_sd_ok(sd_cuda_set_conv_algo(SD_CONV_ALGO_HEURISTIC));
        assert_sd_ok(sd_cuda_set_conv_gemm(SD_CONV_GEMM_AUTO));
        assert_sd_ok(sd_cuda_set_conv_winograd(SD_CONV_WINOGRAD_AUTO));
    }
}

/* cuDNN refusing a channels-last convolution, at its heuristic or at the call (the simulator's
 * CUDASIM_CUDNN_REFUSE_NHWC; a real GPU has no such switch): the plan turns into the GEMM path
 * and the result is still right. Distinct geometries: plans are cached per geometry. */
static void test_f16_conv2d_nhwc_refused(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    if (!testutil_gpu_is_simulated()) {
        print_message("[   SKIP   ] %s: cuDNN's refusals are simulated by cudasim only\n", __func__);
        skip();
    }
    assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
    assert_sd_ok(sd_cuda_set_conv_gemm(SD_CONV_GEMM_OFF)); /* cuDNN first, as at 64x64 */
    static const char *const points[2] = {"plan", "run"};
    for (int k = 0; k < 2; k++) {
        const f16_conv_case c = {1, 8, 7 + k, 9, 12, 3, 1, 1, 1, 1, 1, 1, "conv3x3 8->12 +bias"};
        const f16_conv_data d = f16_conv_data_make(&c, 420 + 3 * k);
        sd_f16 *want = hnew16(d.ny);
        assert_sd_ok(cpu16->conv2d_nhwc(d.x, d.w, d.b, NULL, NULL, want, &d.g));
        setenv("CUDASIM_CUDNN_REFUSE_NHWC", points[k], 1);
        const sd_status st = gpu16->conv2d_nhwc(d.xd, d.wd, d.bd, NULL, NULL, d.yd, &d.g);
        unsetenv("CUDASIM_CUDNN_REFUSE_NHWC");
        assert_sd_ok(st);
        char what[96];
        snprintf(what, sizeof what, "conv2d_nhwc, cuDNN refuses at its %s: GEMM path", points[k]);
        check16(what, d.yd, want, d.ny, TOL_F16_GEMM);
    }
    assert_sd_ok(sd_cuda_set_conv_gemm(SD_CONV_GEMM_AUTO));
}

/* cuDNN's graph API for fp16 forwards (SD_CONV_ALGO=graph|tune): the plans do run through it (the
 * plan count says so), and where it offers no engine (the simulator's CUDASIM_CUDNN_GRAPH_REFUSE:
 * an empty heuristic, or every execution plan refused) the legacy algorithm runs and the result is
 * still right. Distinct geometries: plans are cached per geometry. */
static void test_f16_conv2d_graph_api(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
    static const char *const refuse[3] = {"", "heuristic", "plan"};
    for (int nhwc = 0; nhwc <= 1; nhwc++)
        for (int tune = 0; tune <= 1; tune++)
            for (int k = 0; k < 3; k++) {
                if (k && !testutil_gpu_is_simulated()) continue; /* refusals exist in cudasim only */
                assert_sd_ok(sd_cuda_set_conv_algo(tune ? SD_CONV_ALGO_TUNE : SD_CONV_ALGO_GRAPH));
                assert_sd_ok(sd_cuda_set_conv_gemm(SD_CONV_GEMM_OFF)); /* cuDNN, as at 64x64 */
                const f16_conv_case c = {2, 16, 7 + k, 9, 24, 3, 1, 1, 1, 1, 1, 1, "conv3x3 16->24 +bias"};
                const f16_conv_data d = f16_conv_data_make(&c, 480 + 3 * k + 10 * tune + 20 * nhwc);
                sd_f16 *want = hnew16(d.ny);
                assert_sd_ok((nhwc ? cpu16->conv2d_nhwc : cpu16->conv2d)(d.x, d.w, d.b, NULL, NULL, want, &d.g));
                if (k) setenv("CUDASIM_CUDNN_GRAPH_REFUSE", refuse[k], 1);
                const sd_status st = (nhwc ? gpu16->conv2d_nhwc : gpu16->conv2d)(d.xd, d.wd, d.bd, NULL, NULL, d.yd, &d.g);
                if (k) unsetenv("CUDASIM_CUDNN_GRAPH_REFUSE");
                assert_sd_ok(st);
                int plans = 0, on_graph = 0;
                sd_cuda_conv_plan_counts(&plans, &on_graph, NULL);
                char what[128];
                snprintf(what, sizeof what, "%s %s, %s%s%s: %d of %d plans on the graph API", nhwc ? "NHWC" : "NCHW",
                         c.what, tune ? "tune" : "graph", k ? ", refused at the " : "", refuse[k], on_graph, plans);
                check16(what, d.yd, want, d.ny, TOL_F16_GEMM);
                assert_int_equal(plans, 1);
                /* tune may keep the legacy algorithm when it measures faster; graph takes the engine */
                if (k) assert_int_equal(on_graph, 0);
                else if (!tune) assert_int_equal(on_graph, 1);
                /* the plan is decided once: a second call runs the same way, same result */
                assert_sd_ok((nhwc ? gpu16->conv2d_nhwc : gpu16->conv2d)(d.xd, d.wd, d.bd, NULL, NULL, d.yd, &d.g));
                check16("  the same call again", d.yd, want, d.ny, TOL_F16_GEMM);
            }
    assert_sd_ok(sd_cuda_set_conv_algo(SD_CONV_ALGO_HEURISTIC));
    assert_sd_ok(sd_cuda_set_conv_gemm(SD_CONV_GEMM_AUTO));
}

/* A gradient step's convolution data gradient on a bf16 copy of the transposed, flipped kernel
 * (conv2d_backward_data_bf16w), into a dx that already holds values: the weight copy bit-identical,
 * dx within fp32 summation order of the CPU twin (the same bf16 operands), the GEMM's way at a
 * UNet shape; a strided geometry refused on both. */
static void test_f16_conv2d_backward_data_bf16w(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    static const f16_conv_case cases[] = {
        {2, 6, 9, 7, 8, 3, 1, 1, 1, 1, 1, 0, "3x3 pad 1"},
        {1, 5, 6, 5, 4, 3, 1, 0, 2, 2, 0, 0, "3x3 pad (0,2,2,0)"},
        {2, 8, 7, 5, 3, 1, 1, 0, 0, 0, 0, 0, "1x1 (dy itself as the columns)"},
        {1, 320, 16, 16, 320, 3, 1, 1, 1, 1, 1, 0, "3x3 320->320 at 16x16"},
        {1, 640, 32, 32, 320, 3, 1, 1, 1, 1, 1, 0, "3x3 640->320 at 32x32"},
        {1, 6, 10, 10, 4, 3, 2, 1, 1, 1, 1, 0, "3x3 stride 2 (refused)"},
    };
    assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
    int ran = 0;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const sd_conv_geom g = f16_conv_geom(&cases[t]);
        const int64_t nx = g.batch * g.c_in * g.h_in * g.w_in, nw = g.c_out * g.c_in * g.kh * g.kw;
        const int64_t ny = g.batch * g.c_out * g.h_out * g.w_out;
        char what[96];
        snprintf(what, sizeof what, "conv2d_backward_data_bf16w %s", cases[t].what);
        if (testutil_sim_leaves_out(what, 2.0 * (double)nx * g.c_out * g.kh * g.kw)) continue;
        float *w = hrand(nw, 440 + t, 1.0f / sqrtf((float)(g.c_in * g.kh * g.kw))), *dy = hrand(ny, 450 + t, 1e-6f);
        float *dx0 = hrand(nx, 460 + t, 1e-6f);
        sd_f16 *wt = hnew16(nw), *wtd = dnew16(nw);
        assert_sd_ok(cpu16->to_bf16_conv_transposed(w, wt, g.c_out, g.c_in, g.kh, g.kw));
        assert_sd_ok(gpu16->to_bf16_conv_transposed(dput(w, nw), wtd, g.c_out, g.c_in, g.kh, g.kw));
        check16_equal("to_bf16_conv_transposed", wtd, wt, nw);
        float *want = hnew(nx), *got = hnew(nx), *dxd = dput(dx0, nx);
        memcpy(want, dx0, (size_t)nx * sizeof(float));
        const sd_status cpu_st = cpu16->conv2d_backward_data_bf16w(dy, wt, want, &g, 1);
        const sd_status gpu_st = gpu16->conv2d_backward_data_bf16w(dput(dy, ny), wtd, dxd, &g, 1);
        assert_sd_ok(gpu->download(got, dxd, (size_t)nx * sizeof(float)));
        if (g.stride != 1) {
            assert_int_equal(cpu_st, SD_ERR_UNSUPPORTED);
            assert_int_equal(gpu_st, SD_ERR_UNSUPPORTED);
            sd_clear_error();
            assert_memory_equal(got, dx0, (size_t)nx * sizeof(float));
            continue;
        }
        assert_sd_ok(cpu_st);
        assert_sd_ok(gpu_st);
        const double err = testutil_max_rel_err(got, want, nx);
        print_message("    %-56s max rel err %.3g (tol %.0e)\n", what, err, 1e-4);
        if (!(err <= 1e-4)) fail_msg("%s: max relative error %.6g", what, err);
        /* accumulate 0 over dx0: its values not read */
        dxd = dput(dx0, nx);
        assert_sd_ok(cpu16->conv2d_backward_data_bf16w(dy, wt, want, &g, 0));
        assert_sd_ok(gpu16->conv2d_backward_data_bf16w(dput(dy, ny), wtd, dxd, &g, 0));
        assert_sd_ok(gpu->download(got, dxd, (size_t)nx * sizeof(float)));
        const double err0 = testutil_max_rel_err(got, want, nx);
        print_message("    %-56s max rel err %.3g (tol %.0e)\n", "  overwriting", err0, 1e-4);
        if (!(err0 <= 1e-4)) fail_msg("%s, overwriting: max relative error %.6g", what, err0);
        /* Winograd F(2x2, 3x3) (SD_CONV_WINOGRAD=all, the 3x3 "same" cases): its transformed operands
         * are rounded to bf16, not dy and w, so it is compared with the F32 data gradient at fast
         * mode's bound (and, as the direct path, accumulating and overwriting) */
        const int same3x3 = g.kh == 3 && g.kw == 3 && g.pad_top == 1 && g.pad_left == 1 && g.h_out == g.h_in &&
                            g.w_out == g.w_in;
        if (same3x3) {
            float *want32 = hnew(nx);
            for (int acc = 1; acc >= 0; acc--) {
                memcpy(want32, dx0, (size_t)nx * sizeof(float));
                if (!acc) memset(want32, 0, (size_t)nx * sizeof(float));
                assert_sd_ok(cpu->conv2d_backward_data(dy, w, want32, &g)); /* F32 reference, adds into dx */
                assert_sd_ok(sd_cuda_set_conv_winograd(SD_CONV_WINOGRAD_ALL));
                dxd = dput(dx0, nx);
                assert_sd_ok(gpu16->conv2d_backward_data_bf16w(dput(dy, ny), wtd, dxd, &g, acc));
                assert_sd_ok(sd_cuda_set_conv_winograd(SD_CONV_WINOGRAD_AUTO));
                assert_sd_ok(gpu->download(got, dxd, (size_t)nx * sizeof(float)));
                const double err_w = testutil_max_rel_err(got, want32, nx);
                char label[64];
                snprintf(label, sizeof label, "  winograd (vs F32)%s", acc ? "" : ", overwriting");
                print_message("    %-56s max rel err %.3g (tol %.0e)\n", label, err_w, 2e-2);
                if (!(err_w <= 2e-2)) fail_msg("%s, %s: max relative error %.6g", what, label, err_w);
                /* it ran as Winograd: the direct path matches the CPU's bf16 twin (want, the overwriting
                 * result) to about 1e-6, Winograd's other rounding stays visibly away from it */
                const double from_twin = testutil_max_rel_err(got, want, nx);
                if (!acc && !(from_twin > 1e-5))
                    fail_msg("%s, %s: %.3g from the direct bf16 twin: Winograd did not run", what, label, from_twin);
            }
        }
        ran++;
    }
    assert_true(ran >= 3);
}

/* ================================================================================================
 * Attention (attention.cu)
 * ============================================================================================= */

typedef struct {
    int64_t B, Sq, Sk;
    int H, D, Dv, causal;
    const char *what;
} f16_attn_case;

/* The fused fp16 tensor-core kernel at SD's head dims and off its tiles (128 queries, 64 keys),
 * cross and causal attention, and the unfused path of large heads (D > 160: widened to F32). */
static const f16_attn_case f16_attn_cases[] = {
    {2, 200, 200, 2, 40, 40, 0, "self, D 40, 200 tokens (off the tiles)"},
    {1, 150, 150, 2, 80, 80, 0, "self, D 80"},
    {1, 130, 130, 1, 160, 160, 0, "self, D 160 (the widest fused head)"},
    {2, 200, 77, 2, 40, 40, 0, "cross, 77 keys"},
    {1, 77, 77, 2, 32, 32, 1, "causal (CLIP-like)"},
    {1, 100, 50, 3, 16, 24, 0, "Dv != D"},
    {2, 90, 70, 2, 20, 12, 0, "D 20, Dv 12 (rows of 16-byte pieces: no; the generic tile loads)"},
    {1, 200, 130, 2, 24, 24, 1, "causal, D 24 (head dim padded to 32 in shared memory)"},
    {2, 70, 60, 1, 512, 512, 0, "large head D 512 (unfused, widened)"},
    {1, 4096, 4096, 8, 40, 40, 0, "SD 64x64 self-attention"},
    {1, 1024, 1024, 1, 512, 512, 0, "SD VAE's 512-wide head, 32x32"},
};

static void test_f16_attention(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    /* fp16 storage runs in fast mode; the op must be right in exact mode too */
    static const sd_precision modes[] = {SD_PRECISION_FAST, SD_PRECISION_EXACT};
    for (size_t t = 0; t < sizeof f16_attn_cases / sizeof f16_attn_cases[0]; t++) {
        const f16_attn_case *c = &f16_attn_cases[t];
        char what[128];
        snprintf(what, sizeof what, "attention %s", c->what);
        if (testutil_sim_leaves_out(what, 2.0 * (double)c->B * c->H * c->Sq * c->Sk * (c->D + c->Dv))) continue;
        const int64_t nq = c->B * c->Sq * c->H * c->D, nk = c->B * c->Sk * c->H * c->D;
        const int64_t nv = c->B * c->Sk * c->H * c->Dv, no = c->B * c->Sq * c->H * c->Dv;
        const float scale = 1.0f / sqrtf((float)c->D);
        sd_f16 *q = hrand16(nq, 40 + 3 * t, 1.0f), *k = hrand16(nk, 41 + 3 * t, 1.0f), *v = hrand16(nv, 42 + 3 * t, 1.0f);
        sd_f16 *want = hnew16(no);
        assert_sd_ok(cpu16->attention(q, k, v, want, c->B, c->Sq, c->Sk, c->H, c->D, c->Dv, scale, c->causal, NULL));
        sd_f16 *qd = dput16(q, nq), *kd = dput16(k, nk), *vd = dput16(v, nv), *od = dnew16(no);
        sd_f16 *nans = hnew16(no);
        for (int64_t i = 0; i < no; i++) nans[i] = 0x7e00; /* fp16 NaN: every output must be written */
        for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
            assert_sd_ok(sd_cuda_set_precision(modes[m]));
            assert_sd_ok(gpu->upload(od, nans, (size_t)no * sizeof(sd_f16)));
            assert_sd_ok(gpu16->attention(qd, kd, vd, od, c->B, c->Sq, c->Sk, c->H, c->D, c->Dv, scale, c->causal, NULL));
            char line[160];
            snprintf(line, sizeof line, "%s, %s", what, sd_precision_name(modes[m]));
            check16(line, od, want, no, TOL_F16_GEMM);
        }
        /* Heads of exactly one of its widths (D = Dv in 16, 32, 40, 48, 64, 80, 160: fa_async_ok)
         * run the cp.async / ldmatrix kernel; q one half off a 16-byte boundary sends the same
         * values through the generic kernel. Both do the same products in the same order: the same
         * bits. Other widths take the generic kernel either way: nothing to compare. */
        const int async_width = c->D == c->Dv && (c->D == 16 || c->D == 32 || c->D == 40 || c->D == 48 ||
                                                  c->D == 64 || c->D == 80 || c->D == 160);
        if (async_width) {
            sd_f16 *od2 = dnew16(no), *got = hnew16(no), *got2 = hnew16(no);
            assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
            assert_sd_ok(gpu16->attention(qd, kd, vd, od, c->B, c->Sq, c->Sk, c->H, c->D, c->Dv, scale, c->causal, NULL));
            assert_sd_ok(gpu16->attention(dput16_at(q, nq, 1), kd, vd, od2, c->B, c->Sq, c->Sk, c->H, c->D, c->Dv,
                                          scale, c->causal, NULL));
            assert_sd_ok(gpu->download(got, od, (size_t)no * sizeof(sd_f16)));
            assert_sd_ok(gpu->download(got2, od2, (size_t)no * sizeof(sd_f16)));
            print_message("    %-56s %s\n", "  cp.async kernel vs generic kernel",
                          memcmp(got, got2, (size_t)no * sizeof(sd_f16)) ? "DIFFER" : "bit-identical");
            assert_memory_equal(got, got2, (size_t)no * sizeof(sd_f16));
            /* one block per SM instead of two (SD_FLASH_BLOCKS_PER_SM): another register budget,
             * the same instructions' results */
            assert_sd_ok(sd_cuda_set_flash_blocks_per_sm(1));
            assert_sd_ok(gpu16->attention(qd, kd, vd, od2, c->B, c->Sq, c->Sk, c->H, c->D, c->Dv, scale, c->causal, NULL));
            assert_sd_ok(sd_cuda_set_flash_blocks_per_sm(2));
            assert_sd_ok(gpu->download(got2, od2, (size_t)no * sizeof(sd_f16)));
            print_message("    %-56s %s\n", "  one block per SM vs two",
                          memcmp(got, got2, (size_t)no * sizeof(sd_f16)) ? "DIFFER" : "bit-identical");
            assert_memory_equal(got, got2, (size_t)no * sizeof(sd_f16));
        }
    }
}

/* The cp.async forward's blocks of 64 queries (4 warps: where 128-query blocks would number at most
 * half the SMs, attention.cu's fa_async_warps) against its blocks of 128 (8 warps): one batch row
 * alone takes the first, the same row in a batch of copies large enough for 132 SMs the second.
 * Every warp's 16 rows are computed the same way in either: the output and the kept L must match
 * bit for bit, in every copy. Shapes: the 8x8 level's cross-attention at D 160 (64 queries: half
 * of a 128-query block's warps had no rows), 150 queries at D 80 (ragged blocks of both sizes),
 * 64 at D 40, and causal at D 32 (the keys each row walks must not depend on the block size). */
static void test_f16_attention_block_rows(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    const struct { int64_t Sq, Sk; int H, D, causal; } cases[] = {
        {64, 77, 2, 160, 0}, {150, 150, 1, 80, 0}, {64, 64, 2, 40, 0}, {200, 200, 1, 32, 1}};
    assert_sd_ok(sd_cuda_set_precision(SD_PRECISION_FAST));
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int64_t Sq = cases[t].Sq, Sk = cases[t].Sk;
        const int H = cases[t].H, D = cases[t].D, causal = cases[t].causal;
        const int64_t blocks_one = (Sq + 127) / 128 * H, copies = (2 * 132 + blocks_one - 1) / blocks_one;
        const int64_t nq = Sq * H * D, nk = Sk * H * D, nl = H * Sq;
        const float scale = 1.0f / sqrtf((float)D);
        char what[128];
        snprintf(what, sizeof what, "64- vs 128-query blocks, %lld queries, %lld keys, D %d%s", (long long)Sq,
                 (long long)Sk, D, causal ? " causal" : "");
        if (testutil_sim_leaves_out(what, 4.0 * (double)(copies + 1) * H * Sq * Sk * D)) continue;
        /* the two runs take the two block sizes (else this compares a path with itself) */
        assert_int_equal(sd_cuda_flash_query_block(Sq, 1, H, D, 0), 64);
        assert_int_equal(sd_cuda_flash_query_block(Sq, copies, H, D, 0), 128);
        sd_f16 *q = hrand16(nq, 70 + 3 * t, 1.0f), *k = hrand16(nk, 71 + 3 * t, 1.0f), *v = hrand16(nk, 72 + 3 * t, 1.0f);
        sd_f16 *qs = hnew16(copies * nq), *ks = hnew16(copies * nk), *vs = hnew16(copies * nk);
        for (int64_t r = 0; r < copies; r++) {
            memcpy(qs + r * nq, q, (size_t)nq * sizeof(sd_f16));
            memcpy(ks + r * nk, k, (size_t)nk * sizeof(sd_f16));
            memcpy(vs + r * nk, v, (size_t)nk * sizeof(sd_f16));
        }
        sd_f16 *one = dnew16(nq), *many = dnew16(copies * nq);
        float *lse_one = dput(hnew(nl), nl), *lse_many = dput(hnew(copies * nl), copies * nl);
        assert_sd_ok(gpu16->attention(dput16(q, nq), dput16(k, nk), dput16(v, nk), one, 1, Sq, Sk, H, D, D, scale,
                                      causal, lse_one));
        assert_sd_ok(gpu16->attention(dput16(qs, copies * nq), dput16(ks, copies * nk), dput16(vs, copies * nk), many,
                                      copies, Sq, Sk, H, D, D, scale, causal, lse_many));
        sd_f16 *got_one = hnew16(nq), *got_many = hnew16(copies * nq);
        float *l_one = hnew(nl), *l_many = hnew(copies * nl);
        assert_sd_ok(gpu->download(got_one, one, (size_t)nq * sizeof(sd_f16)));
        assert_sd_ok(gpu->download(got_many, many, (size_t)(copies * nq) * sizeof(sd_f16)));
        assert_sd_ok(gpu->download(l_one, lse_one, (size_t)nl * sizeof(float)));
        assert_sd_ok(gpu->download(l_many, lse_many, (size_t)(copies * nl) * sizeof(float)));
        int same = 1;
        for (int64_t r = 0; r < copies && same; r++)
            same = !memcmp(got_many + r * nq, got_one, (size_t)nq * sizeof(sd_f16)) &&
                   !memcmp(l_many + r * nl, l_one, (size_t)nl * sizeof(float));
        print_message("    %-56s %s (%lld copies)\n", what, same ? "bit-identical" : "DIFFER", (long long)copies);
        assert_true(same);
    }
}

/* ================================================================================================
 * The tiny UNet with fp16 activations on the GPU (what fast mode runs)
 * ============================================================================================= */

/* The GPU fast-mode forward (fp16 storage, fp16 tensor cores) against the oracle and against the
 * CPU twins' fp16 forward; a CUDA-graph replay of it against the eager call, bit for bit. */
static void test_f16_unet(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    require_gpu();
    sd_model_files files;
    sd_unet unet;
    sd_ctx g, h;
    assert_sd_ok(sd_model_files_open("models/tiny", "models/tiny/tokenizer", &files));
    assert_sd_ok(sd_unet_bind(&unet, &files.unet_config, files.unet));
    assert_sd_ok(sd_ctx_init_cpu(&h));
    h.activations = SD_F16;
    sd_tensor *sample = testutil_fixture("tiny_unet", "small_sample");
    sd_tensor *context = testutil_fixture("tiny_unet", "small_context");
    sd_tensor *want = testutil_fixture("tiny_unet", "small_eps_t500");
    sd_tensor *cpu_eps = sd_unet_forward(&h, &unet, sd_upload(&h, sample), 500.0f, sd_upload(&h, context));
    assert_sd_ok(sd_ctx_status(&h));
    sd_tensor *cpu_host = sd_tensor_clone(cpu_eps);

    assert_sd_ok(sd_device_open("cuda", SD_PRECISION_FAST, &g));
    assert_int_equal(g.activations, SD_F16); /* fast mode's default storage */
    assert_sd_ok(sd_ctx_adopt_weights(&g, files.unet));
    sd_tensor *xd = sd_upload(&g, sample), *cd = sd_upload(&g, context);
    const sd_arena_mark mark = sd_arena_get_mark(g.arena);
    sd_tensor *eps = sd_unet_forward(&g, &unet, xd, 500.0f, cd);
    assert_sd_ok(sd_ctx_status(&g));
    assert_non_null(g.lowp_weights); /* the fp16 path ran */
    sd_tensor *eager = sd_download_new(&g, eps);
    assert_non_null(eager);
    testutil_assert_close(eager, want, 2e-2, "tiny UNet 32x32, fp16 activations, vs oracle");
    testutil_assert_close(eager, cpu_host, TOL_F16_GEMM, "tiny UNet 32x32, fp16 activations, GPU vs CPU twins");

    sd_arena_reset(g.arena, mark);
    sd_cuda_graph *graph = NULL;
    assert_sd_ok(sd_cuda_graph_begin());
    sd_tensor *captured = sd_unet_forward(&g, &unet, xd, 500.0f, cd);
    const sd_status during = sd_ctx_status(&g);
    const sd_status ended = sd_cuda_graph_end(&graph);
    assert_sd_ok(during);
    assert_sd_ok(ended);
    assert_sd_ok(g.be->zero(captured->data, sd_nbytes(captured)));
    assert_sd_ok(sd_cuda_graph_replay(graph));
    assert_sd_ok(g.be->synchronize());
    sd_tensor *replayed = sd_download_new(&g, captured);
    assert_non_null(replayed);
    assert_memory_equal(sd_f32(replayed), sd_f32(eager), sd_nbytes(eager));
    print_message("    %-56s bit-identical\n", "CUDA-graph replay vs eager");
    sd_cuda_graph_free(graph);

    /* the default is channels-last feature maps; NCHW ones give the same values within the
     * tolerance (other kernels, other summation orders) */
    assert_true(sd_ctx_channels_last(&g));
    g.channels_last = 0;
    sd_arena_reset(g.arena, mark);
    sd_tensor *nchw = sd_download_new(&g, sd_unet_forward(&g, &unet, xd, 500.0f, cd));
    assert_sd_ok(sd_ctx_status(&g));
    testutil_assert_close(nchw, cpu_host, TOL_F16_GEMM, "tiny UNet 32x32, fp16 NCHW maps, GPU vs CPU twins");
    testutil_assert_close(nchw, eager, TOL_F16_GEMM, "tiny UNet 32x32, NCHW vs channels-last maps");

    sd_tensor *all[] = {sample, context, want, cpu_host, eager, replayed, nchw};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
    sd_ctx_free(&g);
    sd_ctx_free(&h);
    sd_model_files_close(&files);
}

#define GPU_TEST(f) cmocka_unit_test_teardown(f, tb_per_test_teardown)

int main(void) {
    testutil_apply_filter();
    const struct CMUnitTest tests[] = {
        GPU_TEST(test_f16_conversions),
        GPU_TEST(test_f16_layout_ops),
        GPU_TEST(test_f16_elementwise),
        GPU_TEST(test_f16_norms),
        /* GEMM and convolution */
        GPU_TEST(test_f16_linear),
        GPU_TEST(test_f16_conv2d),
        GPU_TEST(test_f16_channels_last_ops),
        GPU_TEST(test_f16_conv2d_epilogue),
        GPU_TEST(test_f16_conv2d_nhwc_refused),
        GPU_TEST(test_f16_conv2d_graph_api),
        GPU_TEST(test_f16_conv2d_backward_data_bf16w),
        /* attention */
        GPU_TEST(test_f16_attention),
        GPU_TEST(test_f16_attention_block_rows),
        GPU_TEST(test_f16_unet),
    };
    return cmocka_run_group_tests_name("cuda fp16 ops vs cpu twins", tests, group_setup, group_teardown);
}
