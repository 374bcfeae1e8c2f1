/* test_cpu_backward.c: every backward op of the CPU backend against central finite differences of
 * a double-precision forward written here, and Adam against torch.
 *
 * Method: for an op f, a fixed random r and the scalar objective L = Σ r ⊙ f(inputs), the
 * gradient of L with respect to each input element is taken by central differences in double
 * (step 1e-6 · max(1, |x|)) and compared with the float32 backward op fed dy = r.
 * Tolerance FD_TOL = 1e-4, relative to the largest gradient entry (testutil_max_rel_err): the
 * float op carries ~1e-6 of rounding, the differences ~1e-9; what the tests are after is a wrong
 * formula, a transpose or an index error, which show up as O(1) errors.
 *
 * Besides the values, every op is checked to ACCUMULATE (outputs pre-filled with random values
 * must end up as prefill + gradient) and to skip NULL outputs (the others unchanged). Ops with
 * several internal strategies (attention's thread split, conv's column blocks) are run through
 * each of them via the hooks in cpu_internal.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/backend/cpu/cpu_internal.h"
#include "sd/backend.h"
#include "testutil.h"

#define FD_TOL 1e-4
#define FD_STEP 1e-6
/* prefill + fresh vs the accumulated result: they differ by the rounding of one float add (and
 * by GEMMs adding their partial sums into the prefill in another order) */
#define ACC_TOL 1e-5
/* two code paths computing the same float gradient (NULL siblings, strategies, probs+apply chain) */
#define SAME_TOL 1e-5

static const sd_backend *be;

static int setup(void **state) {
    (void)state;
    be = sd_backend_cpu();
    return be ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------------------------------- */

static float *zeros(int64_t n) {
    float *x = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    assert_non_null(x);
    return x;
}

static float *normal(int64_t n, uint64_t seed, float std) {
    float *x = zeros(n);
    testutil_fill_normal(x, n, seed, std);
    return x;
}

static float *copy_of(const float *x, int64_t n) {
    float *y = zeros(n);
    memcpy(y, x, (size_t)n * sizeof(float));
    return y;
}

static double *widen(const float *x, int64_t n) {
    double *y = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    assert_non_null(y);
    for (int64_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

static double dot(const double *a, const double *b, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* L(ctx) after one input element was moved; `input` and `index` say which, so an objective may
 * recompute only the part of f that element reaches. */
typedef double (*objective_fn)(void *ctx, int input, int64_t index);

/* dL/dx[i] for every i by central differences; x is perturbed in place and restored. */
static double *fd_gradient(objective_fn objective, void *ctx, int input, double *x, int64_t n) {
    double *g = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    assert_non_null(g);
    for (int64_t i = 0; i < n; i++) {
        const double x0 = x[i], h = FD_STEP * fmax(1.0, fabs(x0));
        x[i] = x0 + h;
        const double up = objective(ctx, input, i);
        x[i] = x0 - h;
        const double down = objective(ctx, input, i);
        x[i] = x0;
        g[i] = (up - down) / ((x0 + h) - (x0 - h));
    }
    return g;
}

/* Fails unless max|got − want| / max|want| <= tol; prints the measured error. */
static double expect_close(const char *what, const float *got, const double *want, int64_t n,
                           double tol) {
    float *w = zeros(n);
    for (int64_t i = 0; i < n; i++) w[i] = (float)want[i];
    const double err = testutil_max_rel_err(got, w, n);
    free(w);
    print_message("    %-52s max rel err %.2e\n", what, err);
    if (!(err <= tol)) fail_msg("%s: max relative error %.3g > %.3g", what, err, tol);
    return err;
}

static void expect_same(const char *what, const float *got, const float *want, int64_t n) {
    const double err = testutil_max_rel_err(got, want, n);
    if (!(err <= SAME_TOL)) fail_msg("%s: max relative error %.3g > %.3g", what, err, SAME_TOL);
}

/* after must be before + fresh (an accumulating op on a pre-filled output). */
static void expect_accumulated(const char *what, const float *before, const float *fresh,
                               const float *after, int64_t n) {
    float *want = zeros(n);
    for (int64_t i = 0; i < n; i++) want[i] = (float)((double)before[i] + fresh[i]);
    const double err = testutil_max_rel_err(after, want, n);
    free(want);
    if (!(err <= ACC_TOL)) fail_msg("%s: does not accumulate (max relative error %.3g)", what, err);
}

/* n NaNs: an output that an op overwrites (accumulate 0) must not be read, and a NaN read would
 * survive into the result. */
static float *nan_filled(int64_t n) {
    float *p = zeros(n);
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

/* got (an overwrite of NaNs) must equal want (the same op adding into zeros) value for value:
 * 0 + s is s. */
static void expect_overwritten(const char *what, const float *got, const float *want, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!(got[i] == want[i]))
            fail_msg("%s, overwriting: element %lld is %g, adding into zeros gave %g", what, (long long)i,
                     (double)got[i], (double)want[i]);
}

/* A gradient buffer pre-filled with random values, and a copy of that prefill. */
typedef struct prefilled {
    float *buf, *before;
} prefilled;

static prefilled prefill(int64_t n, uint64_t seed) {
    prefilled p = {normal(n, seed, 1.0f), NULL};
    p.before = copy_of(p.buf, n);
    return p;
}

static void prefilled_free(prefilled *p) {
    free(p->buf);
    free(p->before);
}

/* ------------------------------------------------------------------------------------------------
 * Linear
 * --------------------------------------------------------------------------------------------- */

typedef struct linear_case {
    int64_t M, K, N;
    double *x, *w, *b, *r; // x (M, K), w (N, K), b (N), r (M, N)
} linear_case;

static double linear_objective(void *ctx, int input, int64_t index) {
    (void)input;
    (void)index;
    const linear_case *c = ctx;
    double L = 0.0;
    for (int64_t m = 0; m < c->M; m++)
        for (int64_t n = 0; n < c->N; n++) {
            double acc = c->b[n];
            for (int64_t k = 0; k < c->K; k++) acc += c->x[m * c->K + k] * c->w[n * c->K + k];
            L += c->r[m * c->N + n] * acc;
        }
    return L;
}

static void test_linear_backward(void **state) {
    (void)state;
    const int64_t M = 7, K = 5, N = 6;
    float *x = normal(M * K, 1, 1.0f), *w = normal(N * K, 2, 1.0f), *b = normal(N, 3, 1.0f);
    float *dy = normal(M * N, 4, 1.0f);
    linear_case c = {M, K, N, widen(x, M * K), widen(w, N * K), widen(b, N), widen(dy, M * N)};
    double *gx = fd_gradient(linear_objective, &c, 0, c.x, M * K);
    double *gw = fd_gradient(linear_objective, &c, 1, c.w, N * K);
    double *gb = fd_gradient(linear_objective, &c, 2, c.b, N);

    float *dx = zeros(M * K), *dw = zeros(N * K), *db = zeros(N);
    assert_sd_ok(be->linear_backward_data(dy, w, dx, M, K, N));
    assert_sd_ok(be->linear_backward_params(dy, x, dw, db, M, K, N));
    expect_close("linear dx", dx, gx, M * K, FD_TOL);
    expect_close("linear dw", dw, gw, N * K, FD_TOL);
    expect_close("linear db", db, gb, N, FD_TOL);

    prefilled px = prefill(M * K, 5), pw = prefill(N * K, 6), pb = prefill(N, 7);
    assert_sd_ok(be->linear_backward_data(dy, w, px.buf, M, K, N));
    assert_sd_ok(be->linear_backward_params(dy, x, pw.buf, pb.buf, M, K, N));
    expect_accumulated("linear dx", px.before, dx, px.buf, M * K);
    expect_accumulated("linear dw", pw.before, dw, pw.buf, N * K);
    expect_accumulated("linear db", pb.before, db, pb.buf, N);

    /* each parameter gradient alone */
    float *dw_only = zeros(N * K), *db_only = zeros(N);
    assert_sd_ok(be->linear_backward_params(dy, x, dw_only, NULL, M, K, N));
    assert_sd_ok(be->linear_backward_params(dy, x, NULL, db_only, M, K, N));
    expect_same("linear dw without db", dw_only, dw, N * K);
    expect_same("linear db without dw", db_only, db, N);
    assert_sd_ok(be->linear_backward_params(dy, x, NULL, NULL, M, K, N));
    assert_sd_ok(be->linear_backward_data(dy, w, NULL, M, K, N));

    prefilled_free(&px);
    prefilled_free(&pw);
    prefilled_free(&pb);
    free(dw_only), free(db_only), free(dx), free(dw), free(db);
    free(gx), free(gw), free(gb);
    free(c.x), free(c.w), free(c.b), free(c.r);
    free(x), free(w), free(b), free(dy);
}

/* Big enough that par_sgemm splits the GEMMs over threads: checked against the closed forms
 * dx = dy·w, dw = dyᵀ·x, db = Σ dy in double (finite differences would take too long here). */
static void test_linear_backward_threaded(void **state) {
    (void)state;
    const int64_t M = 300, K = 130, N = 110;
    float *x = normal(M * K, 11, 1.0f), *w = normal(N * K, 12, 1.0f), *dy = normal(M * N, 13, 1.0f);
    double *want_dx = calloc((size_t)(M * K), sizeof(double));
    double *want_dw = calloc((size_t)(N * K), sizeof(double)), *want_db = calloc((size_t)N, sizeof(double));
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            const double g = dy[m * N + n];
            want_db[n] += g;
            for (int64_t k = 0; k < K; k++) {
                want_dx[m * K + k] += g * w[n * K + k];
                want_dw[n * K + k] += g * x[m * K + k];
            }
        }
    float *dx = zeros(M * K), *dw = zeros(N * K), *db = zeros(N);
    assert_sd_ok(be->linear_backward_data(dy, w, dx, M, K, N));
    assert_sd_ok(be->linear_backward_params(dy, x, dw, db, M, K, N));
    expect_close("linear 300x130x110 dx (closed form)", dx, want_dx, M * K, 1e-5);
    expect_close("linear 300x130x110 dw (closed form)", dw, want_dw, N * K, 1e-5);
    expect_close("linear 300x130x110 db (closed form)", db, want_db, N, 1e-5);
    free(x), free(w), free(dy), free(want_dx), free(want_dw), free(want_db), free(dx), free(dw), free(db);
}

/* ------------------------------------------------------------------------------------------------
 * Convolution
 * --------------------------------------------------------------------------------------------- */

typedef struct conv_case {
    sd_conv_geom g;
    double *x, *w, *b, *r; // x (B, Ci, H, W), w (Co, Ci, kh, kw), b (Co), r (B, Co, Ho, Wo)
} conv_case;

static double conv_objective(void *ctx, int input, int64_t index) {
    (void)input;
    (void)index;
    const conv_case *c = ctx;
    const sd_conv_geom *g = &c->g;
    double L = 0.0;
    for (int64_t n = 0; n < g->batch; n++)
        for (int64_t co = 0; co < g->c_out; co++)
            for (int64_t oy = 0; oy < g->h_out; oy++)
                for (int64_t ox = 0; ox < g->w_out; ox++) {
                    double acc = c->b[co];
                    for (int64_t ci = 0; ci < g->c_in; ci++)
                        for (int i = 0; i < g->kh; i++)
                            for (int j = 0; j < g->kw; j++) {
                                const int64_t iy = oy * g->stride - g->pad_top + i;
                                const int64_t ix = ox * g->stride - g->pad_left + j;
                                if (iy < 0 || iy >= g->h_in || ix < 0 || ix >= g->w_in) continue;
                                acc += c->x[((n * g->c_in + ci) * g->h_in + iy) * g->w_in + ix] *
                                       c->w[((co * g->c_in + ci) * g->kh + i) * g->kw + j];
                            }
                    L += c->r[((n * g->c_out + co) * g->h_out + oy) * g->w_out + ox] * acc;
                }
    return L;
}

static sd_conv_geom conv_geom(int64_t B, int64_t Ci, int64_t H, int64_t W, int64_t Co, int kh,
                              int kw, int stride, int pt, int pl, int pb, int pr) {
    sd_conv_geom g = {.batch = B, .c_in = Ci, .h_in = H, .w_in = W, .c_out = Co, .kh = kh, .kw = kw,
                      .stride = stride, .pad_top = pt, .pad_left = pl};
    g.h_out = (H + pt + pb - kh) / stride + 1;
    g.w_out = (W + pl + pr - kw) / stride + 1;
    return g;
}

static void test_conv2d_backward(void **state) {
    (void)state;
    struct {
        sd_conv_geom g;
        const char *what;
    } cases[] = {
        {conv_geom(2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1), "conv 3x3 pad 1"},
        {conv_geom(1, 2, 8, 7, 3, 3, 3, 2, 0, 0, 1, 1), "conv 3x3 stride 2 pad (0,0,1,1)"},
        {conv_geom(1, 3, 9, 9, 2, 3, 3, 2, 1, 1, 1, 1), "conv 3x3 stride 2 pad 1"},
        {conv_geom(2, 5, 4, 3, 3, 1, 1, 1, 0, 0, 0, 0), "conv 1x1 (pointwise GEMM)"},
        {conv_geom(1, 3, 5, 5, 2, 1, 1, 2, 0, 0, 0, 0), "conv 1x1 stride 2"},
        {conv_geom(1, 2, 8, 8, 3, 4, 4, 4, 0, 0, 0, 0), "conv 4x4 stride 4 (patchify)"},
        {conv_geom(2, 2, 5, 6, 3, 3, 2, 1, 1, 0, 1, 1), "conv 3x2 pad (1,0,1,1)"},
        {conv_geom(1, 3, 6, 5, 2, 3, 3, 1, 0, 2, 2, 0), "conv 3x3 pad (0,2,2,0)"},
        {conv_geom(1, 2, 4, 4, 3, 1, 1, 1, 1, 1, 1, 1), "conv 1x1 pad 1"},
    };
    int n_bf16 = 0; /* cases whose data gradient ran on the bf16 transposed kernel */
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const sd_conv_geom *g = &cases[t].g;
        const int64_t nx = g->batch * g->c_in * g->h_in * g->w_in;
        const int64_t K = g->c_in * g->kh * g->kw, nw = g->c_out * K;
        const int64_t ny = g->batch * g->c_out * g->h_out * g->w_out;
        float *x = normal(nx, 20 + t, 1.0f), *w = normal(nw, 30 + t, 1.0f), *b = normal(g->c_out, 40 + t, 1.0f);
        float *dy = normal(ny, 50 + t, 1.0f);
        conv_case c = {*g, widen(x, nx), widen(w, nw), widen(b, g->c_out), widen(dy, ny)};
        double *gx = fd_gradient(conv_objective, &c, 0, c.x, nx);
        double *gw = fd_gradient(conv_objective, &c, 1, c.w, nw);
        double *gb = fd_gradient(conv_objective, &c, 2, c.b, g->c_out);
        char what[128];

        /* the default column blocks (one block at these sizes) and blocks of 5 columns, which
         * start and end in the middle of output rows */
        const int64_t budgets[2] = {(int64_t)8 << 20, 5 * K};
        for (int v = 0; v < 2; v++) {
            float *dx = zeros(nx), *dw = zeros(nw), *db = zeros(g->c_out);
            assert_sd_ok(cpu_conv2d_backward_data_blocked(dy, w, dx, g, budgets[v]));
            assert_sd_ok(cpu_conv2d_backward_params_blocked(dy, x, dw, db, g, budgets[v]));
            const char *tag = v ? ", 5-column blocks" : "";
            snprintf(what, sizeof what, "%s dx%s", cases[t].what, tag);
            expect_close(what, dx, gx, nx, FD_TOL);
            snprintf(what, sizeof what, "%s dw%s", cases[t].what, tag);
            expect_close(what, dw, gw, nw, FD_TOL);
            if (v == 0) {
                snprintf(what, sizeof what, "%s db", cases[t].what);
                expect_close(what, db, gb, g->c_out, FD_TOL);
            }
            free(dx), free(dw), free(db);
        }

        /* through the op table: accumulation and NULL outputs */
        float *dx = zeros(nx), *dw = zeros(nw), *db = zeros(g->c_out);
        assert_sd_ok(be->conv2d_backward_data(dy, w, dx, g));
        assert_sd_ok(be->conv2d_backward_params(dy, x, dw, db, g));
        prefilled px = prefill(nx, 60 + t), pw = prefill(nw, 70 + t), pb = prefill(g->c_out, 80 + t);
        assert_sd_ok(be->conv2d_backward_data(dy, w, px.buf, g));
        assert_sd_ok(be->conv2d_backward_params(dy, x, pw.buf, pb.buf, g));
        expect_accumulated("conv dx", px.before, dx, px.buf, nx);
        expect_accumulated("conv dw", pw.before, dw, pw.buf, nw);
        expect_accumulated("conv db", pb.before, db, pb.buf, g->c_out);
        float *dw_only = zeros(nw), *db_only = zeros(g->c_out);
        assert_sd_ok(be->conv2d_backward_params(dy, x, dw_only, NULL, g));
        assert_sd_ok(be->conv2d_backward_params(dy, x, NULL, db_only, g));
        expect_same("conv dw without db", dw_only, dw, nw);
        expect_same("conv db without dw", db_only, db, g->c_out);
        assert_sd_ok(be->conv2d_backward_data(dy, w, NULL, g));

        /* fast mode's data gradient on a bf16 copy of the transposed, flipped kernel (stride 1):
         * the F32 op fed the same bf16-rounded dy and w, up to the order of the fp32 sums; the
         * other geometries are refused and leave dx as it was */
        {
            const sd_f16_ops *f16 = be->f16;
            sd_f16 *wt = calloc((size_t)nw, sizeof *wt);
            assert_non_null(wt);
            assert_sd_ok(f16->to_bf16_conv_transposed(w, wt, g->c_out, g->c_in, g->kh, g->kw));
            prefilled p16 = prefill(nx, 90 + t);
            const sd_status st = f16->conv2d_backward_data_bf16w(dy, wt, p16.buf, g, 1);
            sd_conv_geom tg;
            if (sd_conv_data_gradient_geom(g, &tg)) {
                assert_sd_ok(st);
                float *dyr = zeros(ny), *wr = zeros(nw), *want = copy_of(p16.before, nx);
                for (int64_t i = 0; i < ny; i++) dyr[i] = sd_bf16_to_f32(sd_f32_to_bf16(dy[i]));
                for (int64_t i = 0; i < nw; i++) wr[i] = sd_bf16_to_f32(sd_f32_to_bf16(w[i]));
                assert_sd_ok(be->conv2d_backward_data(dyr, wr, want, g));
                snprintf(what, sizeof what, "%s dx, bf16 transposed kernel", cases[t].what);
                const double err = testutil_max_rel_err(p16.buf, want, nx);
                print_message("    %-52s max rel err %.2e\n", what, err);
                expect_same(what, p16.buf, want, nx);
                /* accumulate 0: dx's old values (random here) are not read; the same as adding
                 * into zeros */
                float *fresh = zeros(nx), *over = normal(nx, 95 + t, 1.0f);
                assert_sd_ok(f16->conv2d_backward_data_bf16w(dy, wt, fresh, g, 1));
                assert_sd_ok(f16->conv2d_backward_data_bf16w(dy, wt, over, g, 0));
                assert_memory_equal(over, fresh, (size_t)nx * sizeof(float));
                free(fresh), free(over);
                n_bf16++;
                free(dyr), free(wr), free(want);
            } else {
                assert_int_equal(st, SD_ERR_UNSUPPORTED);
                sd_clear_error();
                assert_memory_equal(p16.buf, p16.before, (size_t)nx * sizeof(float));
            }
            prefilled_free(&p16);
            free(wt);
        }

        prefilled_free(&px), prefilled_free(&pw), prefilled_free(&pb);
        free(dw_only), free(db_only), free(dx), free(dw), free(db);
        free(gx), free(gw), free(gb), free(c.x), free(c.w), free(c.b), free(c.r);
        free(x), free(w), free(b), free(dy);
    }
    /* 3x3 pad 1, 1x1, 3x2 pad (1,0,1,1), 3x3 pad (0,2,2,0); not the strided ones nor 1x1 pad 1 */
    assert_int_equal(n_bf16, 4);
}

/* A size at which the GEMMs run on several threads and col2im splits channels between them,
 * with column blocks of 100 (several per image, ragged at the end): checked against the plain
 * scatter dx[ci, iy, ix] += dy[co, oy, ox] · w[co, ci, i, j] and gather dw in double. */
static void test_conv2d_backward_threaded(void **state) {
    (void)state;
    const sd_conv_geom g = conv_geom(2, 32, 23, 21, 32, 3, 3, 1, 1, 1, 1, 1);
    const int64_t K = g.c_in * 9, nx = g.batch * g.c_in * g.h_in * g.w_in, nw = g.c_out * K;
    const int64_t ny = g.batch * g.c_out * g.h_out * g.w_out;
    float *x = normal(nx, 90, 1.0f), *w = normal(nw, 91, 1.0f), *dy = normal(ny, 92, 1.0f);
    double *want_dx = calloc((size_t)nx, sizeof(double)), *want_dw = calloc((size_t)nw, sizeof(double));
    for (int64_t n = 0; n < g.batch; n++)
        for (int64_t co = 0; co < g.c_out; co++)
            for (int64_t oy = 0; oy < g.h_out; oy++)
                for (int64_t ox = 0; ox < g.w_out; ox++) {
                    const double d = dy[((n * g.c_out + co) * g.h_out + oy) * g.w_out + ox];
                    for (int64_t ci = 0; ci < g.c_in; ci++)
                        for (int i = 0; i < 3; i++)
                            for (int j = 0; j < 3; j++) {
                                const int64_t iy = oy - 1 + i, ix = ox - 1 + j;
                                if (iy < 0 || iy >= g.h_in || ix < 0 || ix >= g.w_in) continue;
                                const int64_t xi = ((n * g.c_in + ci) * g.h_in + iy) * g.w_in + ix;
                                const int64_t wi = ((co * g.c_in + ci) * 3 + i) * 3 + j;
                                want_dx[xi] += d * w[wi];
                                want_dw[wi] += d * x[xi];
                            }
                }
    const int64_t budgets[2] = {(int64_t)8 << 20, 100 * K};
    for (int v = 0; v < 2; v++) {
        float *dx = zeros(nx), *dw = zeros(nw);
        assert_sd_ok(cpu_conv2d_backward_data_blocked(dy, w, dx, &g, budgets[v]));
        assert_sd_ok(cpu_conv2d_backward_params_blocked(dy, x, dw, NULL, &g, budgets[v]));
        expect_close(v ? "conv 32->32 23x21 dx, 100-column blocks" : "conv 32->32 23x21 dx", dx,
                     want_dx, nx, 1e-5);
        expect_close(v ? "conv 32->32 23x21 dw, 100-column blocks" : "conv 32->32 23x21 dw", dw,
                     want_dw, nw, 1e-5);
        free(dx), free(dw);
    }
    free(x), free(w), free(dy), free(want_dx), free(want_dw);
}

/* ------------------------------------------------------------------------------------------------
 * Normalisation
 * --------------------------------------------------------------------------------------------- */

typedef struct norm_case {
    int64_t B, C, S; /* group norm: x (B, C, S); layer norm: x (B, C) with S = 1 */
    int groups, silu;
    double eps;
    double *x, *gamma, *beta, *r; // gamma / beta NULL = identity
} norm_case;

static double group_norm_objective(void *ctx, int input, int64_t index) {
    (void)input;
    (void)index;
    const norm_case *c = ctx;
    const int64_t cpg = c->C / c->groups, count = cpg * c->S;
    double L = 0.0;
    for (int64_t b = 0; b < c->B; b++)
        for (int g = 0; g < c->groups; g++) {
            const double *xg = c->x + (b * c->C + g * cpg) * c->S;
            double mean = 0.0, var = 0.0;
            for (int64_t i = 0; i < count; i++) mean += xg[i];
            mean /= (double)count;
            for (int64_t i = 0; i < count; i++) var += (xg[i] - mean) * (xg[i] - mean);
            var /= (double)count;
            const double rstd = 1.0 / sqrt(var + c->eps);
            for (int64_t cc = 0; cc < cpg; cc++) {
                const int64_t ch = g * cpg + cc;
                for (int64_t s = 0; s < c->S; s++) {
                    double v = (xg[cc * c->S + s] - mean) * rstd * (c->gamma ? c->gamma[ch] : 1.0) +
                               (c->beta ? c->beta[ch] : 0.0);
                    if (c->silu) v = v / (1.0 + exp(-v));
                    L += c->r[(b * c->C + ch) * c->S + s] * v;
                }
            }
        }
    return L;
}

static void test_group_norm_backward(void **state) {
    (void)state;
    const int64_t B = 2, C = 12, S = 10;
    const int64_t n = B * C * S;
    /* variants: plain, + SiLU, + SiLU without γ/β (3 channels per group), and one group per
     * channel (the mapping network's BatchNorm1d) */
    for (int variant = 0; variant < 4; variant++) {
        const int silu = variant == 1 || variant == 2, affine = variant != 2;
        const int G = variant == 3 ? (int)C : 4;
        float *x = normal(n, 100 + variant, 2.0f);
        for (int64_t i = 0; i < n; i++) x[i] += 3.0f; /* a mean far from 0 */
        float *gamma = affine ? normal(C, 103, 1.0f) : NULL, *beta = affine ? normal(C, 104, 1.0f) : NULL;
        float *dy = normal(n, 105 + variant, 1.0f);
        norm_case c = {B, C, S, G, silu, 1e-5, widen(x, n), gamma ? widen(gamma, C) : NULL,
                       beta ? widen(beta, C) : NULL, widen(dy, n)};
        double *gx = fd_gradient(group_norm_objective, &c, 0, c.x, n);
        const char *names[4] = {"group_norm", "group_norm + silu", "group_norm + silu, no affine",
                                "group_norm, a group per channel"};
        const char *name = names[variant];
        char what[96];
        float *dx = zeros(n), *dg = zeros(C), *db = zeros(C);
        assert_sd_ok(be->group_norm_backward(x, gamma, beta, dy, dx, affine ? dg : NULL,
                                             affine ? db : NULL, B, C, S, G, 1e-5f, silu, 1));
        snprintf(what, sizeof what, "%s dx", name);
        expect_close(what, dx, gx, n, FD_TOL);
        if (affine) {
            double *gg = fd_gradient(group_norm_objective, &c, 1, c.gamma, C);
            double *gb = fd_gradient(group_norm_objective, &c, 2, c.beta, C);
            snprintf(what, sizeof what, "%s dgamma", name);
            expect_close(what, dg, gg, C, FD_TOL);
            snprintf(what, sizeof what, "%s dbeta", name);
            expect_close(what, db, gb, C, FD_TOL);
            free(gg), free(gb);

            prefilled px = prefill(n, 110), pg = prefill(C, 111), pb = prefill(C, 112);
            assert_sd_ok(be->group_norm_backward(x, gamma, beta, dy, px.buf, pg.buf, pb.buf, B, C, S,
                                                 G, 1e-5f, silu, 1));
            expect_accumulated("group_norm dx", px.before, dx, px.buf, n);
            expect_accumulated("group_norm dgamma", pg.before, dg, pg.buf, C);
            expect_accumulated("group_norm dbeta", pb.before, db, pb.buf, C);
            prefilled_free(&px), prefilled_free(&pg), prefilled_free(&pb);

            /* accumulate 0 overwrites dx (not read); dgamma and dbeta still add */
            float *over = nan_filled(n);
            prefilled qg = prefill(C, 113);
            assert_sd_ok(be->group_norm_backward(x, gamma, beta, dy, over, qg.buf, NULL, B, C, S, G, 1e-5f, silu, 0));
            expect_overwritten(name, over, dx, n);
            expect_accumulated("group_norm dgamma (dx overwritten)", qg.before, dg, qg.buf, C);
            prefilled_free(&qg);
            free(over);

            /* each output alone */
            float *dx_only = zeros(n), *dg_only = zeros(C), *db_only = zeros(C);
            assert_sd_ok(be->group_norm_backward(x, gamma, beta, dy, dx_only, NULL, NULL, B, C, S, G, 1e-5f, silu, 1));
            assert_sd_ok(be->group_norm_backward(x, gamma, beta, dy, NULL, dg_only, NULL, B, C, S, G, 1e-5f, silu, 1));
            assert_sd_ok(be->group_norm_backward(x, gamma, beta, dy, NULL, NULL, db_only, B, C, S, G, 1e-5f, silu, 1));
            assert_sd_ok(be->group_norm_backward(x, gamma, beta, dy, NULL, NULL, NULL, B, C, S, G, 1e-5f, silu, 1));
            expect_same("group_norm dx alone", dx_only, dx, n);
            expect_same("group_norm dgamma alone", dg_only, dg, C);
            expect_same("group_norm dbeta alone", db_only, db, C);
            free(dx_only), free(dg_only), free(db_only);
        }
        free(gx), free(c.x), free(c.gamma), free(c.beta), free(c.r);
        free(x), free(gamma), free(beta), free(dy), free(dx), free(dg), free(db);
    }
}

static double layer_norm_objective(void *ctx, int input, int64_t index) {
    (void)input;
    (void)index;
    const norm_case *c = ctx;
    double L = 0.0;
    for (int64_t m = 0; m < c->B; m++) {
        const double *xr = c->x + m * c->C;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < c->C; i++) mean += xr[i];
        mean /= (double)c->C;
        for (int64_t i = 0; i < c->C; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)c->C;
        const double rstd = 1.0 / sqrt(var + c->eps);
        for (int64_t i = 0; i < c->C; i++)
            L += c->r[m * c->C + i] * ((xr[i] - mean) * rstd * (c->gamma ? c->gamma[i] : 1.0) +
                                       (c->beta ? c->beta[i] : 0.0));
    }
    return L;
}

static void test_layer_norm_backward(void **state) {
    (void)state;
    const int64_t M = 5, C = 16, n = M * C;
    for (int affine = 1; affine >= 0; affine--) {
        float *x = normal(n, 120, 1.5f);
        for (int64_t i = 0; i < n; i++) x[i] -= 1.0f;
        float *gamma = affine ? normal(C, 121, 1.0f) : NULL, *beta = affine ? normal(C, 122, 1.0f) : NULL;
        float *dy = normal(n, 123, 1.0f);
        norm_case c = {M, C, 1, 1, 0, 1e-5, widen(x, n), gamma ? widen(gamma, C) : NULL,
                       beta ? widen(beta, C) : NULL, widen(dy, n)};
        double *gx = fd_gradient(layer_norm_objective, &c, 0, c.x, n);
        float *dx = zeros(n), *dg = zeros(C), *db = zeros(C);
        assert_sd_ok(be->layer_norm_backward(x, gamma, dy, dx, affine ? dg : NULL, affine ? db : NULL,
                                             M, C, 1e-5f));
        expect_close(affine ? "layer_norm dx" : "layer_norm dx, no affine", dx, gx, n, FD_TOL);
        if (affine) {
            double *gg = fd_gradient(layer_norm_objective, &c, 1, c.gamma, C);
            double *gb = fd_gradient(layer_norm_objective, &c, 2, c.beta, C);
            expect_close("layer_norm dgamma", dg, gg, C, FD_TOL);
            expect_close("layer_norm dbeta", db, gb, C, FD_TOL);
            free(gg), free(gb);
            prefilled px = prefill(n, 124), pg = prefill(C, 125), pb = prefill(C, 126);
            assert_sd_ok(be->layer_norm_backward(x, gamma, dy, px.buf, pg.buf, pb.buf, M, C, 1e-5f));
            expect_accumulated("layer_norm dx", px.before, dx, px.buf, n);
            expect_accumulated("layer_norm dgamma", pg.before, dg, pg.buf, C);
            expect_accumulated("layer_norm dbeta", pb.before, db, pb.buf, C);
            prefilled_free(&px), prefilled_free(&pg), prefilled_free(&pb);
            float *dg_only = zeros(C);
            assert_sd_ok(be->layer_norm_backward(x, gamma, dy, NULL, dg_only, NULL, M, C, 1e-5f));
            assert_sd_ok(be->layer_norm_backward(x, gamma, dy, NULL, NULL, NULL, M, C, 1e-5f));
            expect_same("layer_norm dgamma alone", dg_only, dg, C);
            free(dg_only);
        }
        free(gx), free(c.x), free(c.gamma), free(c.beta), free(c.r);
        free(x), free(gamma), free(beta), free(dy), free(dx), free(dg), free(db);
    }
}

/* ------------------------------------------------------------------------------------------------
 * Elementwise
 * --------------------------------------------------------------------------------------------- */

typedef struct unary_case {
    sd_unary_op op;
    double alpha;
    int64_t n;
    double *x, *r;
} unary_case;

static double unary_value(sd_unary_op op, double x, double alpha) {
    switch (op) {
    case SD_UNARY_SILU: return x / (1.0 + exp(-x));
    case SD_UNARY_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case SD_UNARY_QUICK_GELU: return x / (1.0 + exp(-1.702 * x));
    case SD_UNARY_LEAKY_RELU: return x >= 0.0 ? x : alpha * x;
    }
    return NAN;
}

/* one element moves: only its term of L changes (returned relative to nothing: fd takes the
 * difference of two calls, so the other terms may be left out) */
static double unary_objective(void *ctx, int input, int64_t index) {
    (void)input;
    const unary_case *c = ctx;
    return c->r[index] * unary_value(c->op, c->x[index], c->alpha);
}

static void test_unary_backward(void **state) {
    (void)state;
    const int64_t n = 200;
    struct {
        sd_unary_op op;
        float alpha;
        const char *what;
    } ops[] = {
        {SD_UNARY_SILU, 0.0f, "silu"},
        {SD_UNARY_GELU, 0.0f, "gelu (erf)"},
        {SD_UNARY_QUICK_GELU, 0.0f, "quick_gelu"},
        {SD_UNARY_LEAKY_RELU, 0.01f, "leaky_relu 0.01"},
        {SD_UNARY_LEAKY_RELU, 0.2f, "leaky_relu 0.2"},
    };
    float *x = normal(n, 130, 3.0f), *dy = normal(n, 131, 1.0f);
    int negatives = 0;
    for (int64_t i = 0; i < n; i++) {
        if (fabsf(x[i]) < 1e-3f) x[i] = 0.5f; /* no finite-difference step across the kink at 0 */
        negatives += x[i] < 0.0f;
    }
    assert_true(negatives > n / 4);
    x[0] = -40.0f, x[1] = 40.0f; /* saturated tails: no NaN from exp overflow */
    for (size_t t = 0; t < sizeof ops / sizeof ops[0]; t++) {
        unary_case c = {ops[t].op, ops[t].alpha, n, widen(x, n), widen(dy, n)};
        double *gx = fd_gradient(unary_objective, &c, 0, c.x, n);
        float *dx = zeros(n);
        assert_sd_ok(be->unary_backward(ops[t].op, x, dy, dx, n, ops[t].alpha));
        char what[64];
        snprintf(what, sizeof what, "%s dx", ops[t].what);
        expect_close(what, dx, gx, n, FD_TOL);
        prefilled p = prefill(n, 132);
        assert_sd_ok(be->unary_backward(ops[t].op, x, dy, p.buf, n, ops[t].alpha));
        expect_accumulated(what, p.before, dx, p.buf, n);
        assert_sd_ok(be->unary_backward(ops[t].op, x, dy, NULL, n, ops[t].alpha));
        prefilled_free(&p);
        free(dx), free(gx), free(c.x), free(c.r);
    }
    /* the forward takes the identity branch at exactly 0: slope 1 there */
    const float zero = 0.0f, one = 1.0f;
    float d0 = 0.0f;
    assert_sd_ok(be->unary_backward(SD_UNARY_LEAKY_RELU, &zero, &one, &d0, 1, 0.01f));
    assert_true(d0 == 1.0f);
    free(x), free(dy);
}

typedef struct geglu_case {
    int64_t M, N;
    double *x, *r; // x (M, 2N), r (M, N)
} geglu_case;

static double geglu_objective(void *ctx, int input, int64_t index) {
    (void)input;
    const geglu_case *c = ctx;
    const int64_t m = index / (2 * c->N), i = index % (2 * c->N) % c->N; /* the output it feeds */
    const double h = c->x[m * 2 * c->N + i], g = c->x[m * 2 * c->N + c->N + i];
    return c->r[m * c->N + i] * h * 0.5 * g * (1.0 + erf(g / sqrt(2.0)));
}

static void test_geglu_backward(void **state) {
    (void)state;
    const int64_t M = 4, N = 6;
    float *x = normal(M * 2 * N, 140, 2.0f), *dy = normal(M * N, 141, 1.0f);
    geglu_case c = {M, N, widen(x, M * 2 * N), widen(dy, M * N)};
    double *gx = fd_gradient(geglu_objective, &c, 0, c.x, M * 2 * N);
    float *dx = zeros(M * 2 * N);
    assert_sd_ok(be->geglu_backward(x, dy, dx, M, N, 1));
    expect_close("geglu dx (hidden and gate halves)", dx, gx, M * 2 * N, FD_TOL);
    prefilled p = prefill(M * 2 * N, 142);
    assert_sd_ok(be->geglu_backward(x, dy, p.buf, M, N, 1));
    expect_accumulated("geglu dx", p.before, dx, p.buf, M * 2 * N);
    float *over = nan_filled(M * 2 * N);
    assert_sd_ok(be->geglu_backward(x, dy, over, M, N, 0));
    expect_overwritten("geglu dx", over, dx, M * 2 * N);
    free(over);
    assert_sd_ok(be->geglu_backward(x, dy, NULL, M, N, 1));
    prefilled_free(&p);
    free(dx), free(gx), free(c.x), free(c.r), free(x), free(dy);
}

static void test_axpy_and_mul_acc(void **state) {
    (void)state;
    const int64_t n = 1001;
    float *x = normal(n, 150, 1.0f), *z = normal(n, 151, 1.0f);
    prefilled p = prefill(n, 152);
    double *want = calloc((size_t)n, sizeof(double));
    for (int64_t i = 0; i < n; i++) want[i] = (double)p.before[i] - 0.75 * x[i];
    assert_sd_ok(be->axpy(-0.75f, x, p.buf, n));
    expect_close("axpy y += -0.75 x", p.buf, want, n, 1e-6);
    /* the coefficient read from memory: the same rounding as axpy, bit for bit */
    const float coef[1] = {-0.75f};
    float *by_value = copy_of(p.buf, n), *from_memory = copy_of(p.buf, n);
    assert_sd_ok(be->axpy(coef[0], z, by_value, n));
    assert_sd_ok(be->axpy_dev(coef, z, from_memory, n));
    expect_same("axpy_dev y += coef[0] x", from_memory, by_value, n);
    free(by_value), free(from_memory);
    for (int64_t i = 0; i < n; i++) want[i] = (double)p.buf[i] + (double)x[i] * z[i];
    assert_sd_ok(be->mul_acc(x, z, p.buf, n));
    expect_close("mul_acc y += a b", p.buf, want, n, 1e-6);
    prefilled_free(&p);
    free(want), free(x), free(z);
}

typedef struct bias_case {
    int64_t B, C, S;
    double *x, *v, *r; // x, r (B, C, S); v (B, C)
} bias_case;

static double channel_bias_objective(void *ctx, int input, int64_t index) {
    (void)input;
    (void)index;
    const bias_case *c = ctx;
    double L = 0.0;
    for (int64_t bc = 0; bc < c->B * c->C; bc++)
        for (int64_t s = 0; s < c->S; s++) L += c->r[bc * c->S + s] * (c->x[bc * c->S + s] + c->v[bc]);
    return L;
}

static void test_add_channel_bias_backward(void **state) {
    (void)state;
    const int64_t B = 2, C = 3, S = 5, n = B * C * S;
    float *x = normal(n, 160, 1.0f), *v = normal(B * C, 161, 1.0f), *dy = normal(n, 162, 1.0f);
    bias_case c = {B, C, S, widen(x, n), widen(v, B * C), widen(dy, n)};
    double *gv = fd_gradient(channel_bias_objective, &c, 1, c.v, B * C);
    float *dv = zeros(B * C);
    assert_sd_ok(be->add_channel_bias_backward(dy, dv, B, C, S));
    expect_close("add_channel_bias dv", dv, gv, B * C, FD_TOL);
    prefilled p = prefill(B * C, 163);
    assert_sd_ok(be->add_channel_bias_backward(dy, p.buf, B, C, S));
    expect_accumulated("add_channel_bias dv", p.before, dv, p.buf, B * C);
    assert_sd_ok(be->add_channel_bias_backward(dy, NULL, B, C, S));
    prefilled_free(&p);
    free(gv), free(dv), free(c.x), free(c.v), free(c.r), free(x), free(v), free(dy);
}

typedef struct concat_case {
    int64_t B, Ca, Cb, S;
    double *a, *c, *r; // a (B, Ca, S), c (B, Cb, S), r (B, Ca + Cb, S)
} concat_case;

static double concat_objective(void *ctx, int input, int64_t index) {
    (void)input;
    (void)index;
    const concat_case *k = ctx;
    double L = 0.0;
    for (int64_t b = 0; b < k->B; b++) {
        const double *r = k->r + b * (k->Ca + k->Cb) * k->S;
        L += dot(r, k->a + b * k->Ca * k->S, k->Ca * k->S);
        L += dot(r + k->Ca * k->S, k->c + b * k->Cb * k->S, k->Cb * k->S);
    }
    return L;
}

static void test_concat_channels_backward(void **state) {
    (void)state;
    const int64_t B = 2, Ca = 3, Cb = 2, S = 4, na = B * Ca * S, nc = B * Cb * S;
    float *a = normal(na, 170, 1.0f), *cc = normal(nc, 171, 1.0f), *dy = normal(na + nc, 172, 1.0f);
    concat_case k = {B, Ca, Cb, S, widen(a, na), widen(cc, nc), widen(dy, na + nc)};
    double *ga = fd_gradient(concat_objective, &k, 0, k.a, na);
    double *gc = fd_gradient(concat_objective, &k, 1, k.c, nc);
    float *da = zeros(na), *dc = zeros(nc);
    assert_sd_ok(be->concat_channels_backward(dy, da, dc, B, Ca, Cb, S, 1));
    expect_close("concat_channels da", da, ga, na, FD_TOL);
    expect_close("concat_channels dc", dc, gc, nc, FD_TOL);
    /* one side NULL: the other as before, accumulated onto its prefill */
    prefilled pa = prefill(na, 173), pc = prefill(nc, 174);
    assert_sd_ok(be->concat_channels_backward(dy, pa.buf, NULL, B, Ca, Cb, S, 1));
    expect_accumulated("concat_channels da (dc NULL)", pa.before, da, pa.buf, na);
    assert_sd_ok(be->concat_channels_backward(dy, NULL, pc.buf, B, Ca, Cb, S, 1));
    expect_accumulated("concat_channels dc (da NULL)", pc.before, dc, pc.buf, nc);
    prefilled_free(&pa), prefilled_free(&pc);
    float *oa = nan_filled(na), *oc = nan_filled(nc);
    assert_sd_ok(be->concat_channels_backward(dy, oa, oc, B, Ca, Cb, S, 0));
    expect_overwritten("concat_channels da", oa, da, na);
    expect_overwritten("concat_channels dc", oc, dc, nc);
    free(oa), free(oc);
    free(ga), free(gc), free(da), free(dc), free(k.a), free(k.c), free(k.r), free(a), free(cc), free(dy);
}

typedef struct upsample_case {
    int64_t N, H, W, Ho, Wo;
    double *x, *r; // x (N, H, W), r (N, Ho, Wo)
} upsample_case;

static double upsample_objective(void *ctx, int input, int64_t index) {
    (void)input;
    (void)index;
    const upsample_case *c = ctx;
    /* the forward's index map, float ratio included (a discrete choice, not differentiated) */
    const float sh = (float)c->H / (float)c->Ho, sw = (float)c->W / (float)c->Wo;
    double L = 0.0;
    for (int64_t n = 0; n < c->N; n++)
        for (int64_t oy = 0; oy < c->Ho; oy++) {
            int64_t iy = (int64_t)floorf((float)oy * sh);
            if (iy > c->H - 1) iy = c->H - 1;
            for (int64_t ox = 0; ox < c->Wo; ox++) {
                int64_t ix = (int64_t)floorf((float)ox * sw);
                if (ix > c->W - 1) ix = c->W - 1;
                L += c->r[(n * c->Ho + oy) * c->Wo + ox] * c->x[(n * c->H + iy) * c->W + ix];
            }
        }
    return L;
}

static void test_upsample_nearest_backward(void **state) {
    (void)state;
    struct {
        int64_t N, H, W, Ho, Wo;
        const char *what;
    } cases[] = {
        {3, 4, 3, 8, 6, "upsample 2x"},
        {3, 3, 5, 7, 8, "upsample 3x5 -> 7x8 (non-integer ratio)"},
        {2, 7, 6, 3, 4, "downsample 7x6 -> 3x4 (pixels nobody reads)"},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int64_t N = cases[t].N, H = cases[t].H, W = cases[t].W, Ho = cases[t].Ho, Wo = cases[t].Wo;
        float *x = normal(N * H * W, 180 + t, 1.0f), *dy = normal(N * Ho * Wo, 190 + t, 1.0f);
        upsample_case c = {N, H, W, Ho, Wo, widen(x, N * H * W), widen(dy, N * Ho * Wo)};
        double *gx = fd_gradient(upsample_objective, &c, 0, c.x, N * H * W);
        float *dx = zeros(N * H * W);
        assert_sd_ok(be->upsample_nearest_backward(dy, dx, N, H, W, Ho, Wo, 1));
        expect_close(cases[t].what, dx, gx, N * H * W, FD_TOL);
        prefilled p = prefill(N * H * W, 200 + t);
        assert_sd_ok(be->upsample_nearest_backward(dy, p.buf, N, H, W, Ho, Wo, 1));
        expect_accumulated(cases[t].what, p.before, dx, p.buf, N * H * W);
        float *over = nan_filled(N * H * W); /* the downsample's unread pixels become 0 too */
        assert_sd_ok(be->upsample_nearest_backward(dy, over, N, H, W, Ho, Wo, 0));
        expect_overwritten(cases[t].what, over, dx, N * H * W);
        free(over);
        assert_sd_ok(be->upsample_nearest_backward(dy, NULL, N, H, W, Ho, Wo, 1));
        prefilled_free(&p);
        free(gx), free(dx), free(c.x), free(c.r), free(x), free(dy);
    }
}

typedef struct mse_case {
    int64_t n;
    double g;
    double *a, *b;
} mse_case;

static double mse_objective(void *ctx, int input, int64_t index) {
    (void)input;
    (void)index;
    const mse_case *c = ctx;
    double s = 0.0;
    for (int64_t i = 0; i < c->n; i++) s += (c->a[i] - c->b[i]) * (c->a[i] - c->b[i]);
    return c->g * s / (double)c->n;
}

static void test_mse_backward(void **state) {
    (void)state;
    const int64_t n = 50;
    const float g = 0.7f;
    float *a = normal(n, 210, 1.0f), *b = normal(n, 211, 1.0f);
    mse_case c = {n, g, widen(a, n), widen(b, n)};
    double *ga = fd_gradient(mse_objective, &c, 0, c.a, n), *gb = fd_gradient(mse_objective, &c, 1, c.b, n);
    float *da = zeros(n), *db = zeros(n);
    assert_sd_ok(be->mse_backward(a, b, &g, da, db, n));
    expect_close("mse da", da, ga, n, FD_TOL);
    expect_close("mse db", db, gb, n, FD_TOL);
    prefilled pa = prefill(n, 212), pb = prefill(n, 213);
    assert_sd_ok(be->mse_backward(a, b, &g, pa.buf, NULL, n));
    assert_sd_ok(be->mse_backward(a, b, &g, NULL, pb.buf, n));
    expect_accumulated("mse da (db NULL)", pa.before, da, pa.buf, n);
    expect_accumulated("mse db (da NULL)", pb.before, db, pb.buf, n);
    /* mse(x, x): da and db are one buffer; the two contributions cancel */
    float *same = zeros(n);
    assert_sd_ok(be->mse_backward(a, a, &g, same, same, n));
    for (int64_t i = 0; i < n; i++) assert_true(same[i] == 0.0f);
    prefilled_free(&pa), prefilled_free(&pb);
    free(same), free(ga), free(gb), free(da), free(db), free(c.a), free(c.b), free(a), free(b);
}

/* ------------------------------------------------------------------------------------------------
 * Attention
 * --------------------------------------------------------------------------------------------- */

typedef struct attn_case {
    int64_t B, Sq, Sk;
    int H, D, Dv, causal;
    double scale;
    /* q (B, Sq, H·D), k (B, Sk, H·D), v (B, Sk, H·Dv), probs (B·H, Sq, Sk) for the apply op;
     * r is (B, Sq, H·Dv) for the output or (B·H, Sq, Sk) for the maps */
    double *q, *k, *v, *probs, *r;
    int objective_on_maps; /* L = Σ r ⊙ softmax maps instead of Σ r ⊙ out */
} attn_case;

/* Σ r ⊙ f over one head (b, h): a moved element of q, k or v (all heads packed in channels)
 * reaches only its own head's outputs, so that is all the finite differences need. */
static double attention_head_objective(const attn_case *c, int64_t b, int64_t h) {
    const int64_t ldq = (int64_t)c->H * c->D, ldv = (int64_t)c->H * c->Dv;
    double *p = malloc((size_t)c->Sk * sizeof(double));
    assert_non_null(p);
    double L = 0.0;
    for (int64_t i = 0; i < c->Sq; i++) {
        const int64_t valid = c->causal ? (i + 1 < c->Sk ? i + 1 : c->Sk) : c->Sk;
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < valid; j++) {
            double s = 0.0;
            for (int d = 0; d < c->D; d++)
                s += c->q[(b * c->Sq + i) * ldq + h * c->D + d] * c->k[(b * c->Sk + j) * ldq + h * c->D + d];
            p[j] = c->scale * s;
            if (p[j] > mx) mx = p[j];
        }
        for (int64_t j = 0; j < valid; j++) sum += (p[j] = exp(p[j] - mx));
        for (int64_t j = 0; j < valid; j++) p[j] /= sum;
        if (c->objective_on_maps) {
            L += dot(c->r + ((b * c->H + h) * c->Sq + i) * c->Sk, p, valid);
            continue;
        }
        for (int d = 0; d < c->Dv; d++) {
            double o = 0.0;
            for (int64_t j = 0; j < valid; j++) o += p[j] * c->v[(b * c->Sk + j) * ldv + h * c->Dv + d];
            L += c->r[(b * c->Sq + i) * ldv + h * c->Dv + d] * o;
        }
    }
    free(p);
    return L;
}

static double attention_objective(void *ctx, int input, int64_t index) {
    const attn_case *c = ctx;
    /* input 0: q, 1: k (both (·, ·, H·D)); 2: v ((·, ·, H·Dv)) */
    const int64_t width = input == 2 ? (int64_t)c->H * c->Dv : (int64_t)c->H * c->D;
    const int64_t rows = input == 0 ? c->Sq : c->Sk, head_width = input == 2 ? c->Dv : c->D;
    const int64_t b = index / (rows * width), h = (index % width) / head_width;
    return attention_head_objective(c, b, h);
}

/* out = probs · v per head, probs taken as a free input. A moved map entry (bh, i, j) reaches only
 * output row (b, i) of head h; a moved v entry (b, j, h·Dv + d) only output column (h, d). */
static double attention_apply_objective(void *ctx, int input, int64_t index) {
    const attn_case *c = ctx;
    const int64_t ldv = (int64_t)c->H * c->Dv;
    double L = 0.0;
    int64_t b, h, i_lo, i_hi, d_lo, d_hi;
    if (input == 0) {
        const int64_t bh = index / (c->Sq * c->Sk), i = index / c->Sk % c->Sq;
        b = bh / c->H, h = bh % c->H, i_lo = i, i_hi = i + 1, d_lo = 0, d_hi = c->Dv;
    } else {
        b = index / (c->Sk * ldv), h = index % ldv / c->Dv;
        i_lo = 0, i_hi = c->Sq, d_lo = index % ldv % c->Dv, d_hi = d_lo + 1;
    }
    for (int64_t i = i_lo; i < i_hi; i++)
        for (int64_t d = d_lo; d < d_hi; d++) {
            double o = 0.0;
            for (int64_t j = 0; j < c->Sk; j++)
                o += c->probs[((b * c->H + h) * c->Sq + i) * c->Sk + j] *
                     c->v[(b * c->Sk + j) * ldv + h * c->Dv + d];
            L += c->r[(b * c->Sq + i) * ldv + h * c->Dv + d] * o;
        }
    return L;
}

static const char *mode_name(cpu_attn_bwd_mode mode) {
    return mode == CPU_ATTN_BWD_AUTO ? "auto" : mode == CPU_ATTN_BWD_PER_HEAD ? "per-head" : "split";
}

static void test_attention_backward(void **state) {
    (void)state;
    struct {
        int64_t B, Sq, Sk;
        int H, D, Dv, causal;
        const char *what;
    } cases[] = {
        {2, 70, 29, 3, 5, 7, 0, "B2 H3 Sq70 Sk29 D5 Dv7"},
        {2, 67, 80, 3, 6, 4, 1, "B2 H3 Sq67 Sk80 D6 Dv4 causal"},
        {2, 70, 29, 3, 5, 7, 1, "B2 H3 Sq70 Sk29 D5 Dv7 causal"},
        {1, 45, 45, 1, 8, 8, 1, "B1 H1 S45 D8 causal"},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int64_t B = cases[t].B, Sq = cases[t].Sq, Sk = cases[t].Sk;
        const int H = cases[t].H, D = cases[t].D, Dv = cases[t].Dv, causal = cases[t].causal;
        const float scale = 1.0f / sqrtf((float)D);
        const int64_t nq = B * Sq * H * D, nk = B * Sk * H * D, nv = B * Sk * H * Dv, no = B * Sq * H * Dv;
        float *q = normal(nq, 300 + t, 1.0f), *k = normal(nk, 310 + t, 1.0f), *v = normal(nv, 320 + t, 1.0f);
        float *dout = normal(no, 330 + t, 1.0f), *out = zeros(no);
        assert_sd_ok(be->attention(q, k, v, out, NULL, B, Sq, Sk, H, D, Dv, scale, causal, NULL));
        attn_case c = {B, Sq, Sk, H, D, Dv, causal, scale, widen(q, nq), widen(k, nk), widen(v, nv),
                       NULL, widen(dout, no), 0};
        double *gq = fd_gradient(attention_objective, &c, 0, c.q, nq);
        double *gk = fd_gradient(attention_objective, &c, 1, c.k, nk);
        double *gv = fd_gradient(attention_objective, &c, 2, c.v, nv);
        const cpu_attn_bwd_mode modes[3] = {CPU_ATTN_BWD_AUTO, CPU_ATTN_BWD_PER_HEAD, CPU_ATTN_BWD_SPLIT};
        float *ref_dq = NULL, *ref_dk = NULL, *ref_dv = NULL;
        char what[128];
        for (int m = 0; m < 3; m++) {
            float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nv);
            assert_sd_ok(cpu_attention_backward_mode(q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D,
                                                     Dv, scale, causal, 1, modes[m]));
            snprintf(what, sizeof what, "attention %s dq (%s)", cases[t].what, mode_name(modes[m]));
            expect_close(what, dq, gq, nq, FD_TOL);
            snprintf(what, sizeof what, "attention %s dk (%s)", cases[t].what, mode_name(modes[m]));
            expect_close(what, dk, gk, nk, FD_TOL);
            snprintf(what, sizeof what, "attention %s dv (%s)", cases[t].what, mode_name(modes[m]));
            expect_close(what, dv, gv, nv, FD_TOL);
            if (m == 0) {
                ref_dq = dq, ref_dk = dk, ref_dv = dv;
            } else {
                free(dq), free(dk), free(dv);
            }
        }
        /* the op table's entry, accumulating; and each output alone in each mode */
        prefilled pq = prefill(nq, 340), pk = prefill(nk, 341), pv = prefill(nv, 342);
        assert_sd_ok(be->attention_backward(q, k, v, out, dout, pq.buf, pk.buf, pv.buf, B, Sq, Sk, H,
                                            D, Dv, scale, causal, 1, NULL));
        expect_accumulated("attention dq", pq.before, ref_dq, pq.buf, nq);
        expect_accumulated("attention dk", pk.before, ref_dk, pk.buf, nk);
        expect_accumulated("attention dv", pv.before, ref_dv, pv.buf, nv);
        for (int m = 0; m < 3; m++) { /* accumulate 0 overwrites all three, in every mode */
            float *zq = zeros(nq), *zk = zeros(nk), *zv = zeros(nv);
            float *oq = nan_filled(nq), *ok = nan_filled(nk), *ov = nan_filled(nv);
            assert_sd_ok(cpu_attention_backward_mode(q, k, v, out, dout, zq, zk, zv, B, Sq, Sk, H, D, Dv, scale,
                                                     causal, 1, modes[m]));
            assert_sd_ok(cpu_attention_backward_mode(q, k, v, out, dout, oq, ok, ov, B, Sq, Sk, H, D, Dv, scale,
                                                     causal, 0, modes[m]));
            snprintf(what, sizeof what, "attention %s (%s)", cases[t].what, mode_name(modes[m]));
            expect_overwritten(what, oq, zq, nq);
            expect_overwritten(what, ok, zk, nk);
            expect_overwritten(what, ov, zv, nv);
            free(zq), free(zk), free(zv), free(oq), free(ok), free(ov);
        }
        for (int m = 1; m < 3; m++) {
            float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nv);
            assert_sd_ok(cpu_attention_backward_mode(q, k, v, out, dout, dq, NULL, NULL, B, Sq, Sk, H,
                                                     D, Dv, scale, causal, 1, modes[m]));
            assert_sd_ok(cpu_attention_backward_mode(q, k, v, out, dout, NULL, dk, NULL, B, Sq, Sk, H,
                                                     D, Dv, scale, causal, 1, modes[m]));
            assert_sd_ok(cpu_attention_backward_mode(q, k, v, out, dout, NULL, NULL, dv, B, Sq, Sk, H,
                                                     D, Dv, scale, causal, 1, modes[m]));
            assert_sd_ok(cpu_attention_backward_mode(q, k, v, out, dout, NULL, NULL, NULL, B, Sq, Sk,
                                                     H, D, Dv, scale, causal, 1, modes[m]));
            expect_same("attention dq alone", dq, ref_dq, nq);
            expect_same("attention dk alone", dk, ref_dk, nk);
            expect_same("attention dv alone", dv, ref_dv, nv);
            free(dq), free(dk), free(dv);
        }
        prefilled_free(&pq), prefilled_free(&pk), prefilled_free(&pv);
        free(ref_dq), free(ref_dk), free(ref_dv), free(gq), free(gk), free(gv);
        free(c.q), free(c.k), free(c.v), free(c.r), free(q), free(k), free(v), free(dout), free(out);
    }
}

/* The two-op path (maps written out, then applied) against finite differences of each op, and
 * the chain apply_backward -> probs_backward against the fused backward. */
static void test_attention_probs_and_apply_backward(void **state) {
    (void)state;
    for (int causal = 0; causal <= 1; causal++) {
        const int64_t B = 2, Sq = 70, Sk = causal ? 75 : 29;
        const int H = 3, D = 5, Dv = 7;
        const float scale = 0.37f;
        const int64_t nq = B * Sq * H * D, nk = B * Sk * H * D, nv = B * Sk * H * Dv, no = B * Sq * H * Dv;
        const int64_t np = B * H * Sq * Sk;
        float *q = normal(nq, 400, 1.0f), *k = normal(nk, 401, 1.0f), *v = normal(nv, 402, 1.0f);
        float *dout = normal(no, 403, 1.0f), *dprobs_in = normal(np, 404, 1.0f);
        float *probs = zeros(np), *out = zeros(no), *unused = zeros(no);
        assert_sd_ok(be->attention(q, k, v, unused, probs, B, Sq, Sk, H, D, Dv, scale, causal, NULL));
        assert_sd_ok(be->attention(q, k, v, out, NULL, B, Sq, Sk, H, D, Dv, scale, causal, NULL));
        char what[96];

        /* maps: L = Σ r ⊙ softmax(scale q kᵀ), r = dprobs_in */
        attn_case cm = {B, Sq, Sk, H, D, Dv, causal, scale, widen(q, nq), widen(k, nk), widen(v, nv),
                        NULL, widen(dprobs_in, np), 1};
        double *gq = fd_gradient(attention_objective, &cm, 0, cm.q, nq);
        double *gk = fd_gradient(attention_objective, &cm, 1, cm.k, nk);
        for (int m = 1; m <= 2; m++) {
            const cpu_attn_bwd_mode mode = m == 1 ? CPU_ATTN_BWD_PER_HEAD : CPU_ATTN_BWD_SPLIT;
            float *dq = zeros(nq), *dk = zeros(nk);
            assert_sd_ok(cpu_attention_probs_backward_mode(q, k, probs, dprobs_in, dq, dk, B, Sq, Sk,
                                                           H, D, scale, mode));
            snprintf(what, sizeof what, "attention_probs%s dq (%s)", causal ? " causal" : "", mode_name(mode));
            expect_close(what, dq, gq, nq, FD_TOL);
            snprintf(what, sizeof what, "attention_probs%s dk (%s)", causal ? " causal" : "", mode_name(mode));
            expect_close(what, dk, gk, nk, FD_TOL);
            /* accumulation and NULL siblings through the op table */
            prefilled pq = prefill(nq, 405), pk = prefill(nk, 406);
            assert_sd_ok(be->attention_probs_backward(q, k, probs, dprobs_in, pq.buf, NULL, B, Sq, Sk, H, D, scale));
            assert_sd_ok(be->attention_probs_backward(q, k, probs, dprobs_in, NULL, pk.buf, B, Sq, Sk, H, D, scale));
            assert_sd_ok(be->attention_probs_backward(q, k, probs, dprobs_in, NULL, NULL, B, Sq, Sk, H, D, scale));
            expect_accumulated("attention_probs dq (dk NULL)", pq.before, dq, pq.buf, nq);
            expect_accumulated("attention_probs dk (dq NULL)", pk.before, dk, pk.buf, nk);
            prefilled_free(&pq), prefilled_free(&pk);
            free(dq), free(dk);
        }
        free(gq), free(gk);

        /* apply: L = Σ r ⊙ (probs · v) with the maps as a free input, r = dout */
        attn_case ca = {B, Sq, Sk, H, D, Dv, causal, scale, NULL, NULL, widen(v, nv), widen(probs, np),
                        widen(dout, no), 0};
        double *gp = fd_gradient(attention_apply_objective, &ca, 0, ca.probs, np);
        double *gv = fd_gradient(attention_apply_objective, &ca, 1, ca.v, nv);
        float *dprobs = zeros(np), *dv_chain = zeros(nv);
        assert_sd_ok(be->attention_apply_backward(probs, v, dout, dprobs, dv_chain, B, Sq, Sk, H, Dv));
        snprintf(what, sizeof what, "attention_apply%s dprobs", causal ? " causal" : "");
        expect_close(what, dprobs, gp, np, FD_TOL);
        snprintf(what, sizeof what, "attention_apply%s dv", causal ? " causal" : "");
        expect_close(what, dv_chain, gv, nv, FD_TOL);
        prefilled pp = prefill(np, 407), pv = prefill(nv, 408);
        assert_sd_ok(be->attention_apply_backward(probs, v, dout, pp.buf, NULL, B, Sq, Sk, H, Dv));
        assert_sd_ok(be->attention_apply_backward(probs, v, dout, NULL, pv.buf, B, Sq, Sk, H, Dv));
        assert_sd_ok(be->attention_apply_backward(probs, v, dout, NULL, NULL, B, Sq, Sk, H, Dv));
        expect_accumulated("attention_apply dprobs (dv NULL)", pp.before, dprobs, pp.buf, np);
        expect_accumulated("attention_apply dv (dprobs NULL)", pv.before, dv_chain, pv.buf, nv);
        prefilled_free(&pp), prefilled_free(&pv);
        free(gp), free(gv);

        /* chain vs fused: same gradients up to float rounding */
        float *dq_chain = zeros(nq), *dk_chain = zeros(nk);
        assert_sd_ok(be->attention_probs_backward(q, k, probs, dprobs, dq_chain, dk_chain, B, Sq, Sk, H, D, scale));
        float *dq = zeros(nq), *dk = zeros(nk), *dv = zeros(nv);
        assert_sd_ok(be->attention_backward(q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal, 1, NULL));
        double *wide = widen(dq, nq);
        snprintf(what, sizeof what, "probs+apply chain vs fused%s dq", causal ? " causal" : "");
        expect_close(what, dq_chain, wide, nq, SAME_TOL);
        free(wide);
        wide = widen(dk, nk);
        snprintf(what, sizeof what, "probs+apply chain vs fused%s dk", causal ? " causal" : "");
        expect_close(what, dk_chain, wide, nk, SAME_TOL);
        free(wide);
        wide = widen(dv, nv);
        snprintf(what, sizeof what, "probs+apply chain vs fused%s dv", causal ? " causal" : "");
        expect_close(what, dv_chain, wide, nv, SAME_TOL);
        free(wide);

        free(dq_chain), free(dk_chain), free(dq), free(dk), free(dv), free(dprobs), free(dv_chain);
        free(cm.q), free(cm.k), free(cm.v), free(cm.r), free(ca.v), free(ca.probs), free(ca.r);
        free(q), free(k), free(v), free(dout), free(dprobs_in), free(probs), free(out), free(unused);
    }
}

/* ------------------------------------------------------------------------------------------------
 * Adam
 * --------------------------------------------------------------------------------------------- */

static void test_adam_matches_torch(void **state) {
    (void)state;
    sd_tensor *param0 = testutil_fixture("adam_torch", "param0");
    sd_tensor *grads = testutil_fixture("adam_torch", "grads");
    const int64_t n = param0->shape[0], steps = grads->shape[0];
    struct {
        double lr;
        const char *tag;
    } runs[] = {{1e-2, "lr0p01"}, {0.0071, "lr0p0071"}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        char name[64];
        snprintf(name, sizeof name, "param_%s", runs[r].tag);
        sd_tensor *want_p = testutil_fixture("adam_torch", name);
        snprintf(name, sizeof name, "exp_avg_%s", runs[r].tag);
        sd_tensor *want_m = testutil_fixture("adam_torch", name);
        snprintf(name, sizeof name, "exp_avg_sq_%s", runs[r].tag);
        sd_tensor *want_v = testutil_fixture("adam_torch", name);
        float *p = copy_of(sd_f32(param0), n), *m = zeros(n), *v = zeros(n);
        double worst_p = 0.0, worst_m = 0.0, worst_v = 0.0;
        for (int64_t s = 0; s < steps; s++) {
            assert_sd_ok(be->adam_step(p, sd_f32(grads) + s * n, m, v, n, runs[r].lr, 0.9, 0.999,
                                       1e-8, (int)s + 1));
            const double ep = testutil_max_rel_err(p, sd_f32(want_p) + s * n, n);
            const double em = testutil_max_rel_err(m, sd_f32(want_m) + s * n, n);
            const double ev = testutil_max_rel_err(v, sd_f32(want_v) + s * n, n);
            if (!(ep <= 1e-6) || !(em <= 1e-6) || !(ev <= 1e-6))
                fail_msg("adam %s step %lld: relative error param %.3g, exp_avg %.3g, exp_avg_sq %.3g",
                         runs[r].tag, (long long)s + 1, ep, em, ev);
            worst_p = fmax(worst_p, ep), worst_m = fmax(worst_m, em), worst_v = fmax(worst_v, ev);
        }
        print_message("    adam %-9s 10 steps vs torch: max rel err param %.2e, exp_avg %.2e, "
                      "exp_avg_sq %.2e\n", runs[r].tag, worst_p, worst_m, worst_v);
        free(p), free(m), free(v);
        sd_tensor_free(want_p), sd_tensor_free(want_m), sd_tensor_free(want_v);
    }
    float p = 1.0f, g = 1.0f, m = 0.0f, v = 0.0f;
    assert_int_equal(be->adam_step(&p, &g, &m, &v, 1, 1e-3, 0.9, 0.999, 1e-8, 0), SD_ERR_ARG);
    assert_true(testutil_contains(sd_last_error(), "step"));
    sd_tensor_free(param0), sd_tensor_free(grads);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_backward),
        cmocka_unit_test(test_linear_backward_threaded),
        cmocka_unit_test(test_conv2d_backward),
        cmocka_unit_test(test_conv2d_backward_threaded),
        cmocka_unit_test(test_group_norm_backward),
        cmocka_unit_test(test_layer_norm_backward),
        cmocka_unit_test(test_unary_backward),
        cmocka_unit_test(test_geglu_backward),
        cmocka_unit_test(test_axpy_and_mul_acc),
        cmocka_unit_test(test_add_channel_bias_backward),
        cmocka_unit_test(test_concat_channels_backward),
        cmocka_unit_test(test_upsample_nearest_backward),
        cmocka_unit_test(test_mse_backward),
        cmocka_unit_test(test_attention_backward),
        cmocka_unit_test(test_attention_probs_and_apply_backward),
        cmocka_unit_test(test_adam_matches_torch),
    };
    return cmocka_run_group_tests_name("cpu backward", tests, setup, NULL);
}
