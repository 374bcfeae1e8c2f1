/* test_cpu_ops.c: every CPU backend op against a plain double-precision loop written here, on
 * random data, through the nn layer (so shape handling is covered too). Tolerance: max relative
 * error 1e-5 (the loops accumulate in double; the backend in float or via OpenBLAS). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sd/attn.h"
#include "sd/nn.h"
#include "testutil.h"

#define TOL 1e-5

static sd_ctx ctx;

static int setup(void **state) {
    (void)state;
    return sd_ctx_init_cpu(&ctx) == SD_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    return 0;
}

static sd_tensor *rand_tensor(int ndim, const int64_t *shape, uint64_t seed) {
    sd_tensor *t = sd_new(&ctx, ndim, shape);
    assert_non_null(t);
    testutil_fill_normal(sd_f32(t), sd_numel(t), seed, 1.0f);
    return t;
}

static sd_tensor *rand4(int ndim, int64_t a, int64_t b, int64_t c, int64_t d, uint64_t seed) {
    int64_t s[4] = {a, b, c, d};
    return rand_tensor(ndim, s, seed);
}

static void check(const sd_tensor *got, const double *want, const char *what) {
    assert_non_null(got);
    const int64_t n = sd_numel(got);
    float *w = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) w[i] = (float)want[i];
    double err = testutil_max_rel_err(sd_f32(got), w, n);
    print_message("    %-28s max rel err %.3g\n", what, err);
    free(w);
    if (!(err <= TOL)) fail_msg("%s: relative error %g > %g", what, err, TOL);
}

static void test_linear(void **state) {
    (void)state;
    const int64_t M = 37, K = 53, N = 29;
    sd_tensor *x = rand4(3, 1, M, K, 0, 1);
    sd_linear_w l = {rand4(2, N, K, 0, 0, 2), rand4(1, N, 0, 0, 0, 3), 0};
    sd_tensor *y = sd_linear(&ctx, x, &l);
    double *want = calloc((size_t)(M * N), sizeof(double));
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = sd_f32(l.bias)[n];
            for (int64_t k = 0; k < K; k++) acc += (double)sd_f32(x)[m * K + k] * sd_f32(l.weight)[n * K + k];
            want[m * N + n] = acc;
        }
    check(y, want, "linear");
    assert_int_equal(y->ndim, 3);
    assert_int_equal(y->shape[2], N);
    /* with a residual summed in: a separate tensor, then y itself (in place is allowed) */
    sd_tensor *r = rand4(3, 1, M, N, 0, 4);
    for (int64_t i = 0; i < M * N; i++) want[i] += sd_f32(r)[i];
    check(sd_linear_add(&ctx, x, &l, r), want, "linear + residual");
    assert_sd_ok(ctx.be->linear(sd_f32(x), sd_f32(l.weight), sd_f32(l.bias), sd_f32(r), sd_f32(r), M, K, N));
    check(r, want, "linear + residual, in place");
    free(want);
}

/* Plain convolution with explicit padding on every side. */
static void conv_ref(const sd_tensor *x, const sd_conv_w *w, int stride, int pt, int pl, int pb,
                     int pr, double **out, int64_t *ho, int64_t *wo) {
    const int64_t B = x->shape[0], Ci = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t Co = w->weight->shape[0], kh = w->weight->shape[2], kw = w->weight->shape[3];
    *ho = (H + pt + pb - kh) / stride + 1;
    *wo = (W + pl + pr - kw) / stride + 1;
    double *y = calloc((size_t)(B * Co * *ho * *wo), sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t co = 0; co < Co; co++)
            for (int64_t oy = 0; oy < *ho; oy++)
                for (int64_t ox = 0; ox < *wo; ox++) {
                    double acc = w->bias ? sd_f32(w->bias)[co] : 0.0;
                    for (int64_t ci = 0; ci < Ci; ci++)
                        for (int64_t i = 0; i < kh; i++)
                            for (int64_t j = 0; j < kw; j++) {
                                int64_t iy = oy * stride - pt + i, ix = ox * stride - pl + j;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                acc += (double)sd_f32(x)[((b * Ci + ci) * H + iy) * W + ix] *
                                       sd_f32(w->weight)[((co * Ci + ci) * kh + i) * kw + j];
                            }
                    y[((b * Co + co) * *ho + oy) * *wo + ox] = acc;
                }
    *out = y;
}

static void test_conv2d(void **state) {
    (void)state;
    struct { int64_t B, Ci, H, W, Co; int k, stride, pt, pl, pb, pr; const char *what; } cases[] = {
        {2, 5, 9, 11, 7, 3, 1, 1, 1, 1, 1, "conv3x3 pad1"},
        {1, 6, 10, 10, 4, 3, 2, 1, 1, 1, 1, "conv3x3 stride2 pad1"},
        {1, 3, 8, 8, 5, 3, 2, 0, 0, 1, 1, "conv3x3 stride2 pad(0,0,1,1)"},
        {2, 8, 7, 5, 3, 1, 1, 0, 0, 0, 0, "conv1x1"},
        {1, 3, 16, 16, 8, 16, 16, 0, 0, 0, 0, "patchify 16x16"},
        {2, 3, 37, 35, 6, 11, 4, 2, 2, 2, 2, "AlexNet conv1 11x11/4 pad2"},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        sd_tensor *x = rand4(4, cases[t].B, cases[t].Ci, cases[t].H, cases[t].W, 10 + t);
        sd_conv_w w = {rand4(4, cases[t].Co, cases[t].Ci, cases[t].k, cases[t].k, 20 + t),
                       t == 4 ? NULL : rand4(1, cases[t].Co, 0, 0, 0, 30 + t), 0};
        sd_tensor *y = sd_conv2d_pad4(&ctx, x, &w, cases[t].stride, cases[t].pt, cases[t].pl,
                                      cases[t].pb, cases[t].pr);
        double *want;
        int64_t ho, wo;
        conv_ref(x, &w, cases[t].stride, cases[t].pt, cases[t].pl, cases[t].pb, cases[t].pr, &want, &ho, &wo);
        assert_non_null(y);
        assert_int_equal(y->shape[2], ho);
        assert_int_equal(y->shape[3], wo);
        check(y, want, cases[t].what);
        free(want);
    }
}

static void test_conv2d_large_uses_blocks(void **state) {
    (void)state;
    /* K·S big enough that im2col is split into several blocks. */
    sd_tensor *x = rand4(4, 1, 64, 40, 40, 41);
    sd_conv_w w = {rand4(4, 3, 64, 3, 3, 42), rand4(1, 3, 0, 0, 0, 43), 0};
    sd_tensor *y = sd_conv2d(&ctx, x, &w, 1, 1);
    double *want;
    int64_t ho, wo;
    conv_ref(x, &w, 1, 1, 1, 1, 1, &want, &ho, &wo);
    check(y, want, "conv3x3 64ch 40x40");
    free(want);
}

static void test_group_norm(void **state) {
    (void)state;
    const int64_t B = 2, C = 12, H = 5, W = 7, S = H * W;
    const int G = 4;
    for (int silu = 0; silu <= 1; silu++) {
        sd_tensor *x = rand4(4, B, C, H, W, 50 + silu);
        for (int64_t i = 0; i < sd_numel(x); i++) sd_f32(x)[i] = 3.0f + 2.0f * sd_f32(x)[i]; /* offset mean */
        sd_norm_w n = {rand4(1, C, 0, 0, 0, 52), rand4(1, C, 0, 0, 0, 53)};
        sd_tensor *y = sd_group_norm(&ctx, x, &n, G, 1e-6f, silu);
        double *want = malloc((size_t)sd_numel(x) * sizeof(double));
        for (int64_t b = 0; b < B; b++)
            for (int g = 0; g < G; g++) {
                const int64_t cpg = C / G;
                double mean = 0, var = 0;
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++)
                    for (int64_t s = 0; s < S; s++) mean += sd_f32(x)[(b * C + c) * S + s];
                mean /= (double)(cpg * S);
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++)
                    for (int64_t s = 0; s < S; s++) {
                        double d = sd_f32(x)[(b * C + c) * S + s] - mean;
                        var += d * d;
                    }
                var /= (double)(cpg * S);
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++)
                    for (int64_t s = 0; s < S; s++) {
                        double v = (sd_f32(x)[(b * C + c) * S + s] - mean) / sqrt(var + 1e-6) *
                                       sd_f32(n.weight)[c] + sd_f32(n.bias)[c];
                        want[(b * C + c) * S + s] = silu ? v / (1 + exp(-v)) : v;
                    }
            }
        check(y, want, silu ? "group_norm + silu" : "group_norm");
        free(want);
    }
    /* channels not divisible by groups: a clear failure, not a crash */
    sd_ctx bad;
    assert_sd_ok(sd_ctx_init_cpu(&bad));
    sd_tensor *x = sd_new4(&bad, 4, 1, 6, 2, 2);
    sd_norm_w n = {NULL, NULL};
    assert_null(sd_group_norm(&bad, x, &n, 4, 1e-5f, 0));
    assert_int_equal(bad.status, SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "not divisible"));
    sd_ctx_free(&bad);
}

static void test_layer_norm(void **state) {
    (void)state;
    const int64_t M = 13, C = 48;
    sd_tensor *x = rand4(2, M, C, 0, 0, 60);
    sd_norm_w n = {rand4(1, C, 0, 0, 0, 61), rand4(1, C, 0, 0, 0, 62)};
    sd_tensor *y = sd_layer_norm(&ctx, x, &n, 1e-5f);
    double *want = malloc((size_t)(M * C) * sizeof(double));
    for (int64_t m = 0; m < M; m++) {
        double mean = 0, var = 0;
        for (int64_t c = 0; c < C; c++) mean += sd_f32(x)[m * C + c];
        mean /= (double)C;
        for (int64_t c = 0; c < C; c++) var += pow(sd_f32(x)[m * C + c] - mean, 2);
        var /= (double)C;
        for (int64_t c = 0; c < C; c++)
            want[m * C + c] = (sd_f32(x)[m * C + c] - mean) / sqrt(var + 1e-5) * sd_f32(n.weight)[c] +
                              sd_f32(n.bias)[c];
    }
    check(y, want, "layer_norm");
    free(want);
}

static void test_elementwise(void **state) {
    (void)state;
    const int64_t n = 1001;
    sd_tensor *a = rand4(1, n, 0, 0, 0, 70), *b = rand4(1, n, 0, 0, 0, 71);
    for (int64_t i = 0; i < n; i++) sd_f32(a)[i] *= 4.0f; /* cover the tails of the activations */
    double *want = malloc((size_t)n * sizeof(double));
    const float *x = sd_f32(a), *z = sd_f32(b);
    for (int64_t i = 0; i < n; i++) want[i] = x[i] / (1 + exp(-(double)x[i]));
    check(sd_unary(&ctx, SD_UNARY_SILU, a), want, "silu");
    for (int64_t i = 0; i < n; i++) want[i] = 0.5 * x[i] * (1 + erf(x[i] / sqrt(2.0)));
    check(sd_unary(&ctx, SD_UNARY_GELU, a), want, "gelu (erf)");
    for (int64_t i = 0; i < n; i++) want[i] = x[i] / (1 + exp(-1.702 * x[i]));
    check(sd_unary(&ctx, SD_UNARY_QUICK_GELU, a), want, "quick_gelu");
    for (int64_t i = 0; i < n; i++) want[i] = (double)x[i] + z[i];
    check(sd_add(&ctx, a, b), want, "add");
    for (int64_t i = 0; i < n; i++) want[i] = (double)x[i] - z[i];
    check(sd_sub(&ctx, a, b), want, "sub");
    for (int64_t i = 0; i < n; i++) want[i] = (double)x[i] * z[i];
    check(sd_mul(&ctx, a, b), want, "mul");
    for (int64_t i = 0; i < n; i++) want[i] = 0.25 * x[i] - 1.5 * z[i];
    check(sd_axpby(&ctx, 0.25f, a, -1.5f, b), want, "axpby");
    {
        /* coefficients read from memory: bit-identical to the by-value op */
        const int64_t two = 2;
        sd_tensor *coef = sd_new(&ctx, 1, &two);
        sd_f32(coef)[0] = 0.25f;
        sd_f32(coef)[1] = -1.5f;
        sd_tensor *by_value = sd_axpby(&ctx, 0.25f, a, -1.5f, b), *from_memory = sd_axpby_dev(&ctx, coef, a, b);
        assert_non_null(from_memory);
        assert_memory_equal(from_memory->data, by_value->data, sd_nbytes(by_value));
        check(from_memory, want, "axpby_dev");
    }
    for (int64_t i = 0; i < n; i++) want[i] = x[i] < -1 ? -1 : (x[i] > 2 ? 2 : x[i]);
    check(sd_clamp(&ctx, a, -1.0f, 2.0f), want, "clamp");
    free(want);
}

static void test_geglu_and_bias_and_concat(void **state) {
    (void)state;
    const int64_t M = 9, N = 16;
    sd_tensor *x = rand4(2, M, 2 * N, 0, 0, 80);
    double *want = malloc((size_t)(M * N) * sizeof(double));
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < N; k++) {
            double h = sd_f32(x)[m * 2 * N + k], g = sd_f32(x)[m * 2 * N + N + k];
            want[m * N + k] = h * 0.5 * g * (1 + erf(g / sqrt(2.0)));
        }
    check(sd_geglu(&ctx, x), want, "geglu");
    free(want);

    const int64_t B = 2, C = 3, S = 10;
    sd_tensor *f = rand4(4, B, C, 2, 5, 81), *v = rand4(2, B, C, 0, 0, 82);
    want = malloc((size_t)(B * C * S) * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t s = 0; s < S; s++)
                want[(b * C + c) * S + s] = (double)sd_f32(f)[(b * C + c) * S + s] + sd_f32(v)[b * C + c];
    check(sd_add_channel_bias(&ctx, f, v), want, "add_channel_bias");
    free(want);

    sd_tensor *a = rand4(4, 2, 3, 2, 2, 83), *b2 = rand4(4, 2, 5, 2, 2, 84);
    sd_tensor *y = sd_concat_channels(&ctx, a, b2);
    assert_non_null(y);
    assert_int_equal(y->shape[1], 8);
    for (int64_t b = 0; b < 2; b++) {
        assert_memory_equal(sd_f32(y) + b * 32, sd_f32(a) + b * 12, 12 * sizeof(float));
        assert_memory_equal(sd_f32(y) + b * 32 + 12, sd_f32(b2) + b * 20, 20 * sizeof(float));
    }
    sd_tensor *y0 = sd_concat0(&ctx, a, a);
    assert_int_equal(y0->shape[0], 4);
    assert_memory_equal(sd_f32(y0) + 24, sd_f32(a), 24 * sizeof(float));
}

static void test_upsample_transpose_embedding(void **state) {
    (void)state;
    sd_tensor *x = rand4(4, 1, 2, 3, 5, 90);
    sd_tensor *y = sd_upsample_nearest(&ctx, x, 6, 10);
    assert_non_null(y);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 10; j++)
                assert_true(sd_f32(y)[(c * 6 + i) * 10 + j] == sd_f32(x)[(c * 3 + i / 2) * 5 + j / 2]);
    /* non-integer ratio: torch picks floor(dst · in / out) */
    sd_tensor *y2 = sd_upsample_nearest(&ctx, x, 7, 5);
    for (int i = 0; i < 7; i++)
        assert_true(sd_f32(y2)[i * 5] == sd_f32(x)[(int)floorf((float)i * (3.0f / 7.0f)) * 5]);

    sd_tensor *img = rand4(4, 2, 3, 4, 5, 91);
    sd_tensor *tok = sd_nchw_to_tokens(&ctx, img);
    assert_int_equal(tok->shape[1], 20);
    assert_int_equal(tok->shape[2], 3);
    for (int b = 0; b < 2; b++)
        for (int c = 0; c < 3; c++)
            for (int s = 0; s < 20; s++)
                assert_true(sd_f32(tok)[(b * 20 + s) * 3 + c] == sd_f32(img)[(b * 3 + c) * 20 + s]);
    sd_tensor *back = sd_tokens_to_nchw(&ctx, tok, 4, 5);
    assert_memory_equal(sd_f32(back), sd_f32(img), sd_nbytes(img));

    sd_tensor *table = rand4(2, 10, 4, 0, 0, 92);
    int32_t ids[6] = {3, 0, 9, 9, 1, 2};
    const int64_t shape[2] = {2, 3};
    sd_tensor id_t = sd_tensor_wrap(ids, SD_I32, 2, shape);
    sd_tensor *e = sd_embedding(&ctx, &id_t, table);
    for (int i = 0; i < 6; i++) assert_memory_equal(sd_f32(e) + i * 4, sd_f32(table) + ids[i] * 4, 16);
    ids[4] = 10; /* out of the vocabulary: a clear error */
    sd_ctx bad;
    assert_sd_ok(sd_ctx_init_cpu(&bad));
    assert_null(sd_embedding(&bad, &id_t, table));
    assert_int_equal(bad.status, SD_ERR_ARG);
    assert_true(testutil_contains(sd_last_error(), "token id 10 at position 4"));
    sd_ctx_free(&bad);
}

/* max pooling (LPIPS's AlexNet: 3x3 stride 2) against a plain loop, odd sizes (the floor drops
 * the last row/column), plus torch's NaN rule and the shape errors. */
static void test_max_pool2d(void **state) {
    (void)state;
    struct { int64_t B, C, H, W; int k, stride; } cases[] = {
        {2, 3, 15, 16, 3, 2}, {1, 4, 7, 7, 3, 2}, {1, 2, 3, 3, 3, 2}, {1, 1, 9, 6, 2, 3}, {1, 2, 5, 5, 1, 1},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int64_t B = cases[t].B, C = cases[t].C, H = cases[t].H, W = cases[t].W;
        const int k = cases[t].k, st = cases[t].stride;
        sd_tensor *x = rand4(4, B, C, H, W, 60 + t);
        sd_tensor *y = sd_max_pool2d(&ctx, x, k, st);
        const int64_t Ho = (H - k) / st + 1, Wo = (W - k) / st + 1;
        assert_non_null(y);
        assert_int_equal(y->shape[2], Ho);
        assert_int_equal(y->shape[3], Wo);
        for (int64_t p = 0; p < B * C; p++)
            for (int64_t oy = 0; oy < Ho; oy++)
                for (int64_t ox = 0; ox < Wo; ox++) {
                    double best = -INFINITY;
                    for (int i = 0; i < k; i++)
                        for (int j = 0; j < k; j++)
                            best = fmax(best, sd_f32(x)[(p * H + oy * st + i) * W + ox * st + j]);
                    assert_true(sd_f32(y)[(p * Ho + oy) * Wo + ox] == (float)best);
                }
    }
    /* a NaN anywhere in a window makes that output NaN, as torch's max_pool2d does */
    sd_tensor *x = rand4(4, 1, 1, 7, 7, 70);
    sd_f32(x)[3 * 7 + 4] = NAN; /* (3, 4): inside windows (1, 1) and (1, 2) only */
    sd_tensor *y = sd_max_pool2d(&ctx, x, 3, 2);
    for (int i = 0; i < 9; i++) assert_int_equal(isnan(sd_f32(y)[i]) != 0, i == 4 || i == 5);
    /* a window larger than the input is a shape error naming the input */
    sd_ctx bad;
    assert_sd_ok(sd_ctx_init_cpu(&bad));
    sd_tensor *tiny = sd_new4(&bad, 4, 1, 2, 2, 5);
    assert_null(sd_max_pool2d(&bad, tiny, 3, 2));
    assert_int_equal(bad.status, SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "max_pool2d: input (1, 2, 2, 5)"));
    sd_ctx_free(&bad);
}

static void test_timestep_embedding(void **state) {
    (void)state;
    float ts[3] = {1.0f, 500.0f, 981.0f};
    const int64_t s3[1] = {3};
    sd_tensor t = sd_tensor_wrap(ts, SD_F32, 1, s3);
    const int dim = 32, half = 16;
    sd_tensor *y = sd_timestep_embedding(&ctx, &t, dim, 1, 0.0f);
    /* Reference: the same float32 frequencies, sin/cos in double. The argument is formed in
     * float32 as diffusers does, so only the final sin/cos rounding differs. */
    double want[3 * 32];
    for (int b = 0; b < 3; b++)
        for (int k = 0; k < half; k++) {
            float f = expf(((float)-9.210340371976184 * (float)k) / (float)half);
            float arg = ts[b] * f;
            want[b * dim + k] = cos((double)arg);
            want[b * dim + half + k] = sin((double)arg);
        }
    check(y, want, "timestep_embedding");
}

/* Plain attention per (b, h) in double. */
static void attention_ref(const sd_tensor *q, const sd_tensor *k, const sd_tensor *v, int H,
                          int causal, double *out, double *probs) {
    const int64_t B = q->shape[0], Sq = q->shape[1], Sk = k->shape[1];
    const int64_t D = q->shape[2] / H, Dv = v->shape[2] / H;
    double *p = malloc((size_t)Sk * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int64_t i = 0; i < Sq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < Sk; j++) {
                    double s = 0;
                    for (int64_t d = 0; d < D; d++)
                        s += (double)sd_f32(q)[(b * Sq + i) * H * D + h * D + d] *
                             sd_f32(k)[(b * Sk + j) * H * D + h * D + d];
                    s /= sqrt((double)D);
                    if (causal && j > i) s = -INFINITY;
                    p[j] = s;
                    if (s > mx) mx = s;
                }
                for (int64_t j = 0; j < Sk; j++) sum += (p[j] = exp(p[j] - mx));
                for (int64_t j = 0; j < Sk; j++) {
                    p[j] /= sum;
                    if (probs) probs[((b * H + h) * Sq + i) * Sk + j] = p[j];
                }
                for (int64_t d = 0; d < Dv; d++) {
                    double acc = 0;
                    for (int64_t j = 0; j < Sk; j++) acc += p[j] * sd_f32(v)[(b * Sk + j) * H * Dv + h * Dv + d];
                    out[(b * Sq + i) * H * Dv + h * Dv + d] = acc;
                }
            }
    free(p);
}

/* A hook that captures the maps and doubles them: checks the materialised path and that the
 * returned maps are the ones multiplied with V. */
typedef struct {
    sd_attn_hook base;
    int calls;
    sd_tensor *captured;
} capture_hook;

static int want_all(sd_attn_hook *h, const sd_attn_site *s) { (void)h; (void)s; return 1; }

static sd_tensor *capture_and_double(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *p) {
    capture_hook *ch = (capture_hook *)h;
    ch->calls++;
    ch->captured = sd_keep(c, p);
    return sd_scale(c, p, 2.0f);
}

static void test_attention(void **state) {
    (void)state;
    const int64_t B = 2, Sq = 21, Sk = 13;
    const int H = 3, D = 8, Dv = 5;
    sd_tensor *q = rand4(3, B, Sq, H * D, 0, 100), *k = rand4(3, B, Sk, H * D, 0, 101);
    sd_tensor *v = rand4(3, B, Sk, H * Dv, 0, 102);
    double *want = malloc((size_t)(B * Sq * H * Dv) * sizeof(double));
    double *probs = malloc((size_t)(B * H * Sq * Sk) * sizeof(double));
    attention_ref(q, k, v, H, 0, want, probs);
    check(sd_attention(&ctx, q, k, v, H, 0, NULL), want, "attention");

    capture_hook hook = {{NULL, want_all, capture_and_double}, 0, NULL};
    ctx.hook = &hook.base;
    sd_attn_site site = {.layer = 3, .is_cross = 1, .heads = H, .batch = B, .q_len = Sq, .kv_len = Sk};
    sd_tensor *y = sd_attention(&ctx, q, k, v, H, 0, &site);
    ctx.hook = NULL;
    assert_int_equal(hook.calls, 1);
    check(hook.captured, probs, "attention probs (hook)");
    for (int64_t i = 0; i < B * Sq * H * Dv; i++) want[i] *= 2.0;
    check(y, want, "attention with edited maps");

    /* causal self-attention (CLIP) */
    sd_tensor *qs = rand4(3, 1, 9, 2 * 4, 0, 103), *ks = rand4(3, 1, 9, 2 * 4, 0, 104);
    sd_tensor *vs = rand4(3, 1, 9, 2 * 4, 0, 105);
    double *want_c = malloc(9 * 8 * sizeof(double));
    attention_ref(qs, ks, vs, 2, 1, want_c, NULL);
    check(sd_attention(&ctx, qs, ks, vs, 2, 1, NULL), want_c, "causal attention");
    free(want);
    free(probs);
    free(want_c);
}

static void test_failed_context_is_sticky(void **state) {
    (void)state;
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *a = sd_new4(&c, 2, 2, 3, 0, 0), *b = sd_new4(&c, 2, 3, 3, 0, 0);
    assert_null(sd_add(&c, a, b));
    assert_int_equal(c.status, SD_ERR_SHAPE);
    char first[256];
    snprintf(first, sizeof first, "%s", sd_last_error());
    assert_true(testutil_contains(first, "(2, 3) and (3, 3)"));
    /* later calls are no-ops and keep the first message */
    assert_null(sd_unary(&c, SD_UNARY_SILU, a));
    assert_null(sd_geglu(&c, NULL));
    assert_string_equal(sd_last_error(), first);
    sd_ctx_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_conv2d_large_uses_blocks),
        cmocka_unit_test(test_group_norm),
        cmocka_unit_test(test_layer_norm),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_geglu_and_bias_and_concat),
        cmocka_unit_test(test_upsample_transpose_embedding),
        cmocka_unit_test(test_max_pool2d),
        cmocka_unit_test(test_timestep_embedding),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_failed_context_is_sticky),
    };
    return cmocka_run_group_tests_name("cpu ops", tests, setup, teardown);
}
