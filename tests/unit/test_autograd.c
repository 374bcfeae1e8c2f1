/* test_autograd.c: the tape end to end.
 *  - a small graph that touches every recorded op, against central finite differences;
 *  - frozen weights get no gradient and record nothing;
 *  - on the tiny UNet against torch autograd (tests/oracle/gen_60_autograd.py): the gradient of
 *    a CFG eps MSE with respect to (a) the unconditional context, (b) a value input substituted
 *    into all 16 cross-attention layers, (c) the parameters of a StyleDiffusion mapping network,
 *    within 1e-4 (max |g - g_ref| / max |g_ref|); and 10 Adam steps reproducing torch's losses
 *    to 5 significant digits;
 *  - (a) and (b) again with block recomputation (ctx.recompute): the same gradients, in less
 *    activation memory (every resnet and transformer block is recomputed here: no maps are
 *    captured; (b)'s value input reaches the blocks as an input). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sd/autograd.h"
#include "sd/mapping_net.h"
#include "sd/methods.h"
#include "testutil.h"

#define GRAD_TOL 1e-4
#define GUIDANCE 7.5f

/* ------------------------------------------------------------------------------------------------
 * Finite differences on a small graph
 * --------------------------------------------------------------------------------------------- */

typedef struct {
    sd_tensor *x, *w_conv, *b_conv, *gamma, *beta, *w_lin, *target, *w_res;
    sd_tensor *coef; /* [2] for axpby_dev: a constant read from memory */
} small_graph;

/* loss(x) through conv -> group norm + SiLU -> tokens -> linear -> layer norm -> GEGLU ->
 * attention (self) -> linear + residual -> concat/slice/mul/axpby/axpby_dev/add/sub -> upsample -> mse. */
static sd_tensor *small_forward(sd_ctx *c, const small_graph *g) {
    const sd_conv_w conv = {g->w_conv, g->b_conv, 0};
    const sd_norm_w gn = {g->gamma, g->beta};
    const sd_linear_w lin = {g->w_lin, NULL, 0};
    sd_tensor *h = sd_conv2d(c, g->x, &conv, 1, 1);           /* (1, 4, 4, 4) */
    h = sd_group_norm(c, h, &gn, 2, 1e-5f, 1);
    sd_tensor *tok = sd_nchw_to_tokens(c, h);                  /* (1, 16, 4) */
    sd_tensor *y = sd_linear(c, tok, &lin);                    /* (1, 16, 8) */
    sd_norm_w ln = {NULL, NULL};
    y = sd_layer_norm(c, y, &ln, 1e-5f);
    y = sd_geglu(c, y);                                        /* (1, 16, 4) */
    sd_tensor *a = sd_attention(c, y, tok, y, 2, 0, NULL);     /* (1, 16, 4) */
    /* a·Wᵀ + b + tok in one GEMM: gradients to a, W, b (the conv's bias too: two terms) and tok */
    const sd_linear_w res = {g->w_res, g->b_conv, 0};
    a = sd_linear_add(c, a, &res, tok);
    sd_tensor *both = sd_concat0(c, a, tok);                   /* (2, 16, 4) */
    sd_tensor *second = sd_slice0(c, both, 1, 1);
    sd_tensor *m = sd_mul(c, a, second);
    m = sd_axpby(c, 0.5f, m, -2.0f, a);
    m = sd_axpby_dev(c, g->coef, m, second);
    /* a + a (both gradient terms land in one buffer: the first takes dL/dy's own), then a - b */
    m = sd_add(c, m, m);
    m = sd_sub(c, m, second);
    /* m + f(m): the add's two inputs share dL/dy until f's backward adds into m's gradient while
     * f's node still reads it (the shared buffer copied on that write) */
    const sd_linear_w mix = {g->w_res, NULL, 0};
    m = sd_add(c, sd_linear(c, m, &mix), m);
    m = sd_unary(c, SD_UNARY_QUICK_GELU, m);
    sd_tensor *img = sd_tokens_to_nchw(c, m, 4, 4);            /* (1, 4, 4, 4) */
    img = sd_concat_channels(c, img, h);                       /* (1, 8, 4, 4) */
    img = sd_upsample_nearest(c, img, 8, 8);
    return sd_mse(c, img, g->target);
}

static void test_small_graph_matches_finite_differences(void **state) {
    (void)state;
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    small_graph g;
    const int64_t xs[4] = {1, 3, 4, 4}, ws[4] = {4, 3, 3, 3}, bs[1] = {4}, ls[2] = {8, 4}, ts[4] = {1, 8, 8, 8},
                  rs[2] = {4, 4};
    sd_tensor *host[8];
    const int64_t *shapes[8] = {xs, ws, bs, bs, bs, ls, ts, rs};
    const int ndims[8] = {4, 4, 1, 1, 1, 2, 4, 2};
    for (int i = 0; i < 8; i++) {
        host[i] = sd_tensor_new(SD_F32, ndims[i], shapes[i]);
        testutil_fill_normal(sd_f32(host[i]), sd_numel(host[i]), 700 + (uint64_t)i, 0.7f);
    }
    g.x = sd_param_new(&c, host[0], "x");
    g.w_conv = sd_param_new(&c, host[1], "w_conv");
    g.b_conv = sd_param_new(&c, host[2], "b_conv");
    g.gamma = sd_param_new(&c, host[3], "gamma");
    g.beta = sd_param_new(&c, host[4], "beta");
    g.w_lin = sd_param_new(&c, host[5], "w_lin");
    g.target = sd_param_new(&c, host[6], "target");
    g.target->requires_grad = 0; /* a constant */
    g.w_res = sd_param_new(&c, host[7], "w_res");
    const int64_t two = 2;
    sd_tensor *coef_host = sd_tensor_new(SD_F32, 1, &two);
    sd_f32(coef_host)[0] = 0.75f;
    sd_f32(coef_host)[1] = -1.25f;
    g.coef = sd_param_new(&c, coef_host, "coef");
    g.coef->requires_grad = 0;
    sd_tensor_free(coef_host);

    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&c, tape);
    sd_arena_mark mark = sd_arena_get_mark(c.arena);
    sd_tensor *loss = small_forward(&c, &g);
    assert_sd_ok(sd_backward(&c, loss));
    sd_tensor *params[7] = {g.x, g.w_conv, g.b_conv, g.gamma, g.beta, g.w_lin, g.w_res};
    sd_tensor *analytic[7];
    for (int i = 0; i < 7; i++) {
        assert_non_null(params[i]->grad);
        analytic[i] = sd_tensor_clone(params[i]->grad);
    }
    sd_tape_reset(tape);
    sd_ctx_set_tape(&c, NULL);
    sd_arena_reset(c.arena, mark);

    /* central differences in float32: step 1e-2 keeps rounding noise well under the tolerance */
    const float h = 1e-2f;
    for (int p = 0; p < 7; p++) {
        float *v = sd_f32(params[p]);
        const int64_t n = sd_numel(params[p]);
        double max_err = 0.0, max_ref = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float keep = v[i];
            v[i] = keep + h;
            const double up = sd_item(&c, small_forward(&c, &g));
            sd_arena_reset(c.arena, mark);
            v[i] = keep - h;
            const double down = sd_item(&c, small_forward(&c, &g));
            sd_arena_reset(c.arena, mark);
            v[i] = keep;
            const double fd = (up - down) / (2.0 * h);
            const double err = fabs(fd - sd_f32(analytic[p])[i]);
            if (err > max_err) max_err = err;
            if (fabs(fd) > max_ref) max_ref = fabs(fd);
        }
        print_message("    %-8s finite differences: max rel err %.3g\n", params[p]->name, max_err / max_ref);
        if (!(max_err / max_ref <= 2e-2)) fail_msg("%s: gradient differs from finite differences (%g)", params[p]->name, max_err / max_ref);
        sd_tensor_free(analytic[p]);
    }
    for (int i = 0; i < 8; i++) sd_tensor_free(host[i]);
    for (int i = 0; i < 7; i++) sd_tensor_free(params[i]);
    sd_tensor_free(g.target);
    sd_tensor_free(g.coef);
    sd_tape_free(tape);
    sd_ctx_free(&c);
}

static void test_frozen_paths_record_nothing(void **state) {
    (void)state;
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&c, tape);
    sd_tensor *x = sd_new4(&c, 2, 4, 6, 0, 0);
    sd_tensor *w = sd_new4(&c, 2, 5, 6, 0, 0);
    testutil_fill_normal(sd_f32(x), 24, 1, 1.0f);
    testutil_fill_normal(sd_f32(w), 30, 2, 1.0f);
    sd_linear_w lin = {w, NULL, 0};
    sd_tensor *y = sd_silu(&c, sd_linear(&c, x, &lin));
    assert_non_null(y);
    assert_int_equal(sd_tape_size(tape), 0); /* nothing leads to a trainable leaf */
    assert_sd_fails(sd_backward(&c, sd_mse(&c, y, y)), SD_ERR_INTERNAL, "not recorded");
    sd_tape_free(tape);
    sd_ctx_free(&c);
}

/* An add's second input shares dL/dy with the first (autograd.c, sd_tape.shared) instead of taking
 * a copy. On a resnet-shaped graph, y = h + conv(silu(gn(h))), the conv's backward reads dL/dy
 * before anything adds into h's gradient, so the backward copies nothing, with the add's inputs in
 * either order (the same gradients). On y = h + conv(h), the conv's backward adds into h's
 * gradient while it still reads dL/dy: that one buffer is copied on the write. */
static const sd_backend *counted;
static long copies;

/* A CPU context whose op table is `table`: a copy of the CPU backend's (`counted`, which the
 * counting wrappers call) for the test to replace entries of. A tape records on it. */
static sd_tape *open_counting(sd_ctx *c, sd_backend *table) {
    assert_sd_ok(sd_ctx_init_cpu(c));
    counted = c->be;
    *table = *c->be;
    c->be = table;
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(c, tape);
    return tape;
}

static void close_counting(sd_ctx *c, sd_tape *tape) {
    sd_ctx_set_tape(c, NULL);
    sd_tape_free(tape);
    c->be = counted;
    sd_ctx_free(c);
}
static sd_status counting_copy(float *dst, const float *src, int64_t n) {
    copies++;
    return counted->copy(dst, src, n);
}

static void test_add_shares_its_gradient(void **state) {
    (void)state;
    sd_ctx c;
    sd_backend table;
    sd_tape *tape = open_counting(&c, &table);
    table.copy = counting_copy;
    const int64_t hs[4] = {1, 4, 5, 5}, ws[4] = {4, 4, 3, 3};
    sd_tensor *hh = sd_tensor_new(SD_F32, 4, hs), *wh = sd_tensor_new(SD_F32, 4, ws);
    testutil_fill_normal(sd_f32(hh), sd_numel(hh), 810, 1.0f);
    testutil_fill_normal(sd_f32(wh), sd_numel(wh), 811, 0.3f);
    sd_tensor *x = sd_param_new(&c, hh, "x"), *w = sd_param_new(&c, wh, "w");
    const sd_conv_w conv = {w, NULL, 0};
    const sd_norm_w gn = {NULL, NULL};
    sd_tensor *grads[3][2];
    long copied[3];
    for (int k = 0; k < 3; k++) {
        sd_tensor *h = sd_silu(&c, x); /* a recorded node: its gradient can be shared */
        sd_tensor *branch = sd_conv2d(&c, k < 2 ? sd_group_norm(&c, h, &gn, 2, 1e-5f, 1) : h, &conv, 1, 1);
        sd_tensor *y = k == 1 ? sd_add(&c, h, branch) : sd_add(&c, branch, h);
        copies = 0;
        assert_sd_ok(sd_backward(&c, sd_mse(&c, y, x)));
        copied[k] = copies;
        grads[k][0] = sd_tensor_clone(x->grad);
        grads[k][1] = sd_tensor_clone(w->grad);
        sd_tape_reset(tape);
    }
    print_message("    copies in the backward: %ld and %ld (resnet-shaped, both orders), %ld (h + conv(h))\n",
                  copied[0], copied[1], copied[2]);
    assert_int_equal(copied[0], 0);
    assert_int_equal(copied[1], 0);
    assert_int_equal(copied[2], 1);
    for (int g = 0; g < 2; g++) {
        assert_true(testutil_max_rel_err(sd_f32(grads[0][g]), sd_f32(grads[1][g]), sd_numel(grads[0][g])) < 1e-6);
        for (int k = 0; k < 3; k++) sd_tensor_free(grads[k][g]);
    }
    sd_tensor_free(x);
    sd_tensor_free(w);
    sd_tensor_free(hh);
    sd_tensor_free(wh);
    close_counting(&c, tape);
}

/* An op's data gradient that is its input's first contribution is written by the op itself
 * (its `accumulate` flag 0) into an unfilled buffer, instead of being added into a zero-filled one
 * (autograd.c, data_grads_out): group norm, upsample, GEGLU and attention here (the concat of one
 * image needs no buffer at all). The graph
 * below leaves three zero fills, all for ops that only accumulate: the leaf's gradient, and the
 * loss's two inputs (one of which also feeds the attention's q, k and v through three unary ops);
 * the loss's own gradient is set without one. The gradients equal those of the same backward with
 * every overwrite replaced by a zero fill and an accumulation. */
static long zero_fills, overwrites, emulated_fills, concat_backwards;
static int emulate_zero_fill; /* 1: the op table turns every overwrite into zero fill + accumulate */

static sd_status counting_zero(void *dst, size_t bytes) {
    zero_fills++;
    return counted->zero(dst, bytes);
}
/* Before an overwrite: count it, or (emulate_zero_fill) zero the outputs and let the op add. */
static int overwrite_or_fill(int accumulate, float *a, int64_t na, float *b, int64_t nb, float *c, int64_t nc) {
    if (accumulate) return 1;
    overwrites++;
    if (!emulate_zero_fill) return 0;
    float *outs[3] = {a, b, c};
    const int64_t ns[3] = {na, nb, nc};
    for (int i = 0; i < 3; i++)
        if (outs[i]) {
            memset(outs[i], 0, (size_t)ns[i] * sizeof(float));
            emulated_fills++;
        }
    return 1;
}
static sd_status counting_group_norm_backward(const float *x, const float *gamma, const float *beta, const float *dy,
                                              float *dx, float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S,
                                              int groups, float eps, int silu, int accumulate) {
    accumulate = overwrite_or_fill(accumulate, dx, B * C * S, NULL, 0, NULL, 0);
    return counted->group_norm_backward(x, gamma, beta, dy, dx, dgamma, dbeta, B, C, S, groups, eps, silu, accumulate);
}
static sd_status counting_geglu_backward(const float *x, const float *dy, float *dx, int64_t M, int64_t N,
                                         int accumulate) {
    accumulate = overwrite_or_fill(accumulate, dx, M * 2 * N, NULL, 0, NULL, 0);
    return counted->geglu_backward(x, dy, dx, M, N, accumulate);
}
static sd_status counting_concat_channels_backward(const float *dy, float *da, float *dc, int64_t B, int64_t Ca,
                                                   int64_t Cb, int64_t S, int accumulate) {
    concat_backwards++;
    accumulate = overwrite_or_fill(accumulate, da, B * Ca * S, dc, B * Cb * S, NULL, 0);
    return counted->concat_channels_backward(dy, da, dc, B, Ca, Cb, S, accumulate);
}
static sd_status counting_upsample_nearest_backward(const float *dy, float *dx, int64_t N, int64_t H, int64_t W,
                                                    int64_t Ho, int64_t Wo, int accumulate) {
    accumulate = overwrite_or_fill(accumulate, dx, N * H * W, NULL, 0, NULL, 0);
    return counted->upsample_nearest_backward(dy, dx, N, H, W, Ho, Wo, accumulate);
}
static sd_status counting_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                             const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq,
                                             int64_t Sk, int H, int D, int Dv, float scale, int causal,
                                             int accumulate, const float *lse) {
    accumulate = overwrite_or_fill(accumulate, dq, B * Sq * H * D, dk, B * Sk * H * D, dv, B * Sk * H * Dv);
    return counted->attention_backward(q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal,
                                       accumulate, lse);
}

static void test_first_contributions_overwrite(void **state) {
    (void)state;
    sd_ctx c;
    sd_backend table;
    sd_tape *tape = open_counting(&c, &table);
    table.zero = counting_zero;
    table.group_norm_backward = counting_group_norm_backward;
    table.geglu_backward = counting_geglu_backward;
    table.concat_channels_backward = counting_concat_channels_backward;
    table.upsample_nearest_backward = counting_upsample_nearest_backward;
    table.attention_backward = counting_attention_backward;
    const int64_t xs[4] = {1, 4, 4, 4};
    sd_tensor *xh = sd_tensor_new(SD_F32, 4, xs);
    testutil_fill_normal(sd_f32(xh), sd_numel(xh), 820, 1.0f);
    sd_tensor *x = sd_param_new(&c, xh, "x");
    const sd_norm_w gn = {NULL, NULL};
    sd_tensor *grads[2];
    long fills[2], overwritten[2], emulated = 0;
    for (int k = 0; k < 2; k++) {
        emulate_zero_fill = k;
        sd_tensor *u = sd_upsample_nearest(&c, sd_group_norm(&c, sd_silu(&c, x), &gn, 2, 1e-5f, 1), 8, 8);
        sd_tensor *v = sd_upsample_nearest(&c, sd_unary(&c, SD_UNARY_GELU, x), 8, 8);
        sd_tensor *tok = sd_nchw_to_tokens(&c, sd_concat_channels(&c, u, v)); /* (1, 64, 8) */
        sd_tensor *g = sd_geglu(&c, tok);                                      /* (1, 64, 4) */
        sd_tensor *a = sd_attention(&c, sd_silu(&c, g), sd_unary(&c, SD_UNARY_GELU, g),
                                    sd_unary(&c, SD_UNARY_QUICK_GELU, g), 2, 0, NULL);
        zero_fills = overwrites = emulated_fills = concat_backwards = 0;
        assert_sd_ok(sd_backward(&c, sd_mse(&c, a, g)));
        fills[k] = zero_fills;
        overwritten[k] = overwrites;
        if (k == 1) emulated = emulated_fills;
        grads[k] = sd_tensor_clone(x->grad);
        sd_tape_reset(tape);
    }
    print_message("    zero fills %ld, overwriting ops %ld (emulated as fill + add: %ld fills)\n", fills[0],
                  overwritten[0], fills[1] + emulated);
    assert_int_equal(fills[0], 3);       /* x (a leaf), a and g (the mse's inputs) */
    assert_int_equal(overwritten[0], 5); /* group norm, two upsamples, GEGLU, attention */
    assert_int_equal(overwritten[1], 5);
    assert_int_equal(emulated, 7); /* the buffers the five ops wrote: 1 + 2 + 1 + 3 */
    /* the concat of one image hands its inputs their pieces of dL/dy (autograd.c, concat_grads_as_views):
     * no kernel (the finite-difference test above covers such a concat's gradient) */
    assert_int_equal(concat_backwards, 0);
    for (int64_t i = 0; i < sd_numel(grads[0]); i++) assert_true(sd_f32(grads[0])[i] == sd_f32(grads[1])[i]);
    for (int k = 0; k < 2; k++) sd_tensor_free(grads[k]);
    sd_tensor_free(x);
    sd_tensor_free(xh);
    close_counting(&c, tape);
}

/* A fused attention the tape will differentiate hands the backend a buffer for the statistics its
 * backward may reuse (backend.h: attention's lse), and the backward gets that same buffer,
 * untouched; an attention nothing differentiates gets none. The wrappers stamp each buffer in the
 * forward and check the stamp in the backward. */
#define LSE_STAMP 12345.0f
static float *lse_given[2];         /* the buffers the forwards got, in call order */
static int forwards, lse_checked;
static sd_status stamping_attention(const float *q, const float *k, const float *v, float *out, float *probs, int64_t B,
                                    int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse) {
    if (forwards < 2) lse_given[forwards] = lse;
    forwards++;
    if (lse)
        for (int64_t i = 0; i < B * H * Sq; i++) lse[i] = LSE_STAMP + (float)i;
    return counted->attention(q, k, v, out, probs, B, Sq, Sk, H, D, Dv, scale, causal, lse);
}
static sd_status stamp_checking_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                                   const float *dout, float *dq, float *dk, float *dv, int64_t B,
                                                   int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale,
                                                   int causal, int accumulate, const float *lse) {
    assert_non_null(lse);
    assert_ptr_equal(lse, lse_given[0]);
    for (int64_t i = 0; i < B * H * Sq; i++) assert_true(lse[i] == LSE_STAMP + (float)i);
    lse_checked++;
    return counted->attention_backward(q, k, v, out, dout, dq, dk, dv, B, Sq, Sk, H, D, Dv, scale, causal,
                                       accumulate, lse);
}

static void test_attention_lse_reaches_backward(void **state) {
    (void)state;
    sd_ctx c;
    sd_backend table;
    sd_tape *tape = open_counting(&c, &table);
    table.attention = stamping_attention;
    table.attention_backward = stamp_checking_attention_backward;
    const int64_t shape[3] = {2, 6, 8}; /* B 2, S 6, 2 heads of 4 */
    sd_tensor *xh = sd_tensor_new(SD_F32, 3, shape);
    testutil_fill_normal(sd_f32(xh), sd_numel(xh), 830, 1.0f);
    sd_tensor *x = sd_param_new(&c, xh, "x");
    sd_tensor *fixed = sd_param_new(&c, xh, "fixed");
    fixed->requires_grad = 0;
    forwards = lse_checked = 0;
    sd_tensor *a = sd_attention(&c, sd_silu(&c, x), x, sd_unary(&c, SD_UNARY_GELU, x), 2, 0, NULL);
    sd_tensor *b = sd_attention(&c, fixed, fixed, fixed, 2, 0, NULL); /* nothing to differentiate */
    assert_int_equal(forwards, 2);
    assert_non_null(lse_given[0]);
    assert_null(lse_given[1]);
    assert_sd_ok(sd_backward(&c, sd_mse(&c, a, b)));
    assert_int_equal(lse_checked, 1);
    assert_non_null(x->grad);
    sd_tensor_free(x);
    sd_tensor_free(fixed);
    sd_tensor_free(xh);
    close_counting(&c, tape);
}

/* ------------------------------------------------------------------------------------------------
 * The tiny UNet against torch autograd
 * --------------------------------------------------------------------------------------------- */

static sd_model_files files;
static sd_unet unet;
static sd_ctx ctx;
static sd_ddim sched;

static int setup(void **state) {
    (void)state;
    if (sd_model_files_open("models/tiny", "models/tiny/tokenizer", &files) ||
        sd_unet_bind(&unet, &files.unet_config, files.unet) || sd_ctx_init_cpu(&ctx) ||
        sd_ddim_init(&sched, 30)) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    return 0;
}

/* Each test starts from a healthy context even if an earlier one failed mid-way. */
static int reset_status(void **state) {
    (void)state;
    ctx.status = SD_OK;
    ctx.hook = NULL;
    ctx.tape = NULL;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    sd_model_files_close(&files);
    return 0;
}

/* Substitutes one tensor as the value input of every cross-attention layer (when set). */
typedef struct {
    sd_attn_hook base;
    sd_tensor *value;
} value_hook;

static sd_tensor *substitute_value(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *context) {
    (void)c;
    (void)context;
    value_hook *v = (value_hook *)h;
    return s->is_cross ? v->value : NULL;
}

typedef struct {
    sd_tensor *z, *target, *cond, *uncond;
    int t;
} grad_case;

static grad_case load_case(void) {
    grad_case k;
    k.z = testutil_fixture("tiny_autograd", "z");
    k.target = testutil_fixture("tiny_autograd", "target");
    k.cond = testutil_fixture("tiny_autograd", "context_cond");
    k.uncond = testutil_fixture("tiny_autograd", "context_uncond");
    sd_tensor *t = testutil_fixture("tiny_autograd", "timestep");
    k.t = (int)((int64_t *)t->data)[0];
    sd_tensor_free(t);
    return k;
}

static void free_case(grad_case *k) {
    sd_tensor_free(k->z);
    sd_tensor_free(k->target);
    sd_tensor_free(k->cond);
    sd_tensor_free(k->uncond);
}

/* eps of the tiny UNet; `value` (or NULL) substituted into the cross-attention values */
static sd_tensor *eps_of(sd_tensor *z, int t, sd_tensor *context, sd_tensor *value) {
    value_hook hook = {{substitute_value, NULL, NULL}, value};
    ctx.hook = value ? &hook.base : NULL;
    sd_tensor *e = sd_unet_forward(&ctx, &unet, z, (float)t, context);
    ctx.hook = NULL;
    return e;
}

static sd_tensor *cfg_loss(sd_tensor *eps_u, sd_tensor *eps_c, sd_tensor *target) {
    return sd_mse(&ctx, sd_cfg_combine(&ctx, eps_u, eps_c, GUIDANCE), target);
}

static void check_grad(const sd_tensor *got, const char *fixture_name, const char *what) {
    sd_tensor *want = testutil_fixture("tiny_autograd", fixture_name);
    assert_non_null(got);
    sd_tensor view = sd_view(got, want->ndim, want->shape);
    testutil_assert_close(&view, want, GRAD_TOL, what);
    sd_tensor_free(want);
}

static void check_loss(float got, const char *fixture_name) {
    sd_tensor *want = testutil_fixture("tiny_autograd", fixture_name);
    const double rel = fabs((double)got - sd_f32(want)[0]) / fabs(sd_f32(want)[0]);
    print_message("    %-40s %.7g vs torch %.7g (rel %.2g)\n", fixture_name, got, sd_f32(want)[0], rel);
    assert_true(rel <= 1e-5);
    sd_tensor_free(want);
}

/* The activation memory of a gradient step: the arena's peak over the step, plus (recomputing)
 * the scratch arena's. */
static size_t step_memory(sd_arena_mark mark) {
    size_t bytes = sd_arena_peak(ctx.arena) - mark.used;
    if (ctx.scratch) bytes += sd_arena_peak(ctx.scratch);
    return bytes;
}

static void begin_step(int recompute) {
    ctx.recompute = recompute;
    sd_arena_reset_peak(ctx.arena);
    if (ctx.scratch) sd_arena_reset_peak(ctx.scratch);
}

static size_t grad_uncond_context(int recompute) {
    begin_step(recompute);
    grad_case k = load_case();
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *z = sd_upload(&ctx, k.z), *target = sd_upload(&ctx, k.target);
    sd_tensor *eps_c = eps_of(z, k.t, sd_upload(&ctx, k.cond), NULL);
    sd_tensor *null_text = sd_param_new(&ctx, k.uncond, "null_text");
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&ctx, tape);
    sd_tensor *loss = cfg_loss(eps_of(z, k.t, null_text, NULL), eps_c, target);
    assert_sd_ok(sd_backward(&ctx, loss));
    print_message("    tape: %d nodes\n", sd_tape_size(tape));
    check_loss(sd_item(&ctx, loss), "a_loss");
    check_grad(null_text->grad, "a_grad", "d loss / d uncond context");
    const size_t bytes = step_memory(mark);
    sd_tape_reset(tape);
    sd_ctx_set_tape(&ctx, NULL);
    sd_tape_free(tape);
    sd_tensor_free(null_text);
    sd_arena_reset(ctx.arena, mark);
    free_case(&k);
    ctx.recompute = 0;
    return bytes;
}

static size_t grad_value_input(int recompute) {
    begin_step(recompute);
    grad_case k = load_case();
    sd_tensor *v_host = testutil_fixture("tiny_autograd", "b_value_input");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *z = sd_upload(&ctx, k.z), *target = sd_upload(&ctx, k.target);
    sd_tensor *cond = sd_upload(&ctx, k.cond);
    sd_tensor *eps_u = eps_of(z, k.t, sd_upload(&ctx, k.uncond), NULL);
    sd_tensor *value = sd_param_new(&ctx, v_host, "value_input");
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&ctx, tape);
    sd_tensor *loss = cfg_loss(eps_u, eps_of(z, k.t, cond, value), target);
    assert_sd_ok(sd_backward(&ctx, loss));
    check_loss(sd_item(&ctx, loss), "b_loss");
    check_grad(value->grad, "b_grad", "d loss / d value input (16 layers)");
    const size_t bytes = step_memory(mark);
    sd_tape_reset(tape);
    sd_ctx_set_tape(&ctx, NULL);
    sd_tape_free(tape);
    sd_tensor_free(value);
    sd_tensor_free(v_host);
    sd_arena_reset(ctx.arena, mark);
    free_case(&k);
    ctx.recompute = 0;
    return bytes;
}

static void test_grad_uncond_context(void **state) {
    (void)state;
    grad_uncond_context(0);
}

static void test_grad_value_input(void **state) {
    (void)state;
    grad_value_input(0);
}

/* Recomputed blocks: torch's gradients again, in less memory. */
static void test_grad_recomputed(void **state) {
    (void)state;
    const size_t kept = grad_uncond_context(0), recomputed = grad_uncond_context(1);
    print_message("    uncond context step: %.1f MiB of activations, %.1f MiB recomputing blocks\n", kept / 1048576.0,
                  recomputed / 1048576.0);
    assert_true(recomputed < kept / 2);
    const size_t kept_v = grad_value_input(0), recomputed_v = grad_value_input(1);
    print_message("    value input step:    %.1f MiB of activations, %.1f MiB recomputing blocks\n",
                  kept_v / 1048576.0, recomputed_v / 1048576.0);
    assert_true(recomputed_v < kept_v / 2);
}

static void load_mapping(sd_mapping_net *m, const char *prefix) {
    sd_tensor *host[SD_MAP_N_PARAMS];
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) {
        char name[96];
        snprintf(name, sizeof name, "%s%s", prefix, sd_mapping_param_names[i]);
        host[i] = testutil_fixture("tiny_autograd", name);
    }
    assert_sd_ok(sd_mapping_net_from_host(&ctx, m, host));
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) sd_tensor_free(host[i]);
}

static sd_tensor *mapping_loss(const grad_case *k, const sd_mapping_net *m, sd_tensor *z, sd_tensor *target,
                               sd_tensor *cond, sd_tensor *features, sd_tensor *eps_u) {
    sd_tensor *value = sd_mapping_value_input(&ctx, sd_mapping_forward(&ctx, m, features), cond);
    return cfg_loss(eps_u, eps_of(z, k->t, cond, value), target);
}

static void test_grad_mapping_network(void **state) {
    (void)state;
    grad_case k = load_case();
    sd_tensor *f_host = testutil_fixture("tiny_autograd", "features");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *z = sd_upload(&ctx, k.z), *target = sd_upload(&ctx, k.target);
    sd_tensor *cond = sd_upload(&ctx, k.cond), *features = sd_upload(&ctx, f_host);
    sd_tensor *eps_u = eps_of(z, k.t, sd_upload(&ctx, k.uncond), NULL);
    sd_mapping_net m;
    load_mapping(&m, "map_");
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&ctx, tape);
    sd_tensor *loss = mapping_loss(&k, &m, z, target, cond, features, eps_u);
    assert_sd_ok(sd_backward(&ctx, loss));
    check_loss(sd_item(&ctx, loss), "c_loss");
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) {
        char name[96];
        snprintf(name, sizeof name, "c_grad_%s", sd_mapping_param_names[i]);
        if (i == SD_MAP_START_B || i == SD_MAP_BLOCK_B) {
            /* BatchNorm subtracts every per-channel constant, so the two biases before it have a
             * zero gradient in exact arithmetic: both sides hold float noise (~1e-9), which must
             * stay negligible next to the weights' gradients. */
            sd_tensor *want = testutil_fixture("tiny_autograd", name);
            const float *g = sd_f32(m.params[i]->grad);
            double ours = 0, theirs = 0;
            for (int64_t k = 0; k < sd_numel(want); k++) {
                ours = fmax(ours, fabs(g[k]));
                theirs = fmax(theirs, fabs(sd_f32(want)[k]));
            }
            print_message("    %-40s max |g| %.2g (torch %.2g): zero up to rounding\n", name, ours, theirs);
            assert_true(ours < 1e-6 && theirs < 1e-6);
            sd_tensor_free(want);
            continue;
        }
        check_grad(m.params[i]->grad, name, name);
    }
    /* The same gradient with the UNet's blocks recomputed in the backward: reordered sums only, so
     * within 1e-6 (measured 1.1e-7 to 2.1e-7), the two biases before BatchNorm aside (noise: their
     * signs differ). Adam's first steps turn exactly those differences (noise biases, and weights
     * whose gradient is near 0) into steps of up to lr: test_device_parity's recomputed
     * StyleDiffusion edit therefore gets a looser bound than the other methods'. */
    sd_tensor *kept[SD_MAP_N_PARAMS];
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) kept[i] = sd_download_new(&ctx, m.params[i]->grad);
    sd_tape_reset(tape);
    ctx.recompute = 1;
    loss = mapping_loss(&k, &m, z, target, cond, features, eps_u);
    assert_sd_ok(sd_backward(&ctx, loss));
    ctx.recompute = 0;
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) {
        if (i != SD_MAP_START_B && i != SD_MAP_BLOCK_B) {
            sd_tensor *again = sd_download_new(&ctx, m.params[i]->grad);
            testutil_assert_close(again, kept[i], 1e-6, sd_mapping_param_names[i]);
            sd_tensor_free(again);
        }
        sd_tensor_free(kept[i]);
    }
    sd_tape_reset(tape);
    sd_ctx_set_tape(&ctx, NULL);
    sd_tape_free(tape);
    sd_mapping_net_free(&m);
    sd_tensor_free(f_host);
    sd_arena_reset(ctx.arena, mark);
    free_case(&k);
}

/* Ten Adam steps; each step's loss (before the update) against torch's, 5 significant digits. */
static void check_adam_losses(const float *losses, const char *fixture_name) {
    sd_tensor *want = testutil_fixture("tiny_autograd", fixture_name);
    for (int i = 0; i < 10; i++) {
        const double rel = fabs((double)losses[i] - sd_f32(want)[i]) / fabs(sd_f32(want)[i]);
        print_message("    %s step %d: %.7g vs torch %.7g (rel %.2g)\n", fixture_name, i, losses[i],
                      sd_f32(want)[i], rel);
        if (!(rel <= 5e-6)) fail_msg("%s step %d: %.7g vs %.7g", fixture_name, i, losses[i], sd_f32(want)[i]);
    }
    sd_tensor_free(want);
}

static void test_adam_null_text(void **state) {
    (void)state;
    grad_case k = load_case();
    sd_arena_mark outer = sd_arena_get_mark(ctx.arena);
    sd_tensor *z = sd_upload(&ctx, k.z), *target = sd_upload(&ctx, k.target);
    sd_tensor *eps_c = eps_of(z, k.t, sd_upload(&ctx, k.cond), NULL);
    sd_tensor *null_text = sd_param_new(&ctx, k.uncond, "null_text");
    sd_adam opt;
    assert_sd_ok(sd_adam_init(&ctx, &opt, &null_text, 1, 1e-2));
    sd_tape *tape = sd_tape_new();
    float losses[10];
    for (int step = 0; step < 10; step++) {
        sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
        sd_ctx_set_tape(&ctx, tape);
        sd_tensor *loss = cfg_loss(eps_of(z, k.t, null_text, NULL), eps_c, target);
        losses[step] = sd_item(&ctx, loss);
        assert_sd_ok(sd_backward(&ctx, loss));
        assert_sd_ok(sd_adam_step(&ctx, &opt));
        sd_tape_reset(tape);
        sd_ctx_set_tape(&ctx, NULL);
        sd_arena_reset(ctx.arena, mark);
    }
    check_adam_losses(losses, "a_adam_losses");
    check_grad(null_text, "a_adam_final", "null text after 10 Adam steps");
    sd_tape_free(tape);
    sd_adam_free(&opt);
    sd_tensor_free(null_text);
    sd_arena_reset(ctx.arena, outer);
    free_case(&k);
}

static void test_adam_mapping_network(void **state) {
    (void)state;
    grad_case k = load_case();
    sd_tensor *f_host = testutil_fixture("tiny_autograd", "features");
    sd_arena_mark outer = sd_arena_get_mark(ctx.arena);
    sd_tensor *z = sd_upload(&ctx, k.z), *target = sd_upload(&ctx, k.target);
    sd_tensor *cond = sd_upload(&ctx, k.cond), *features = sd_upload(&ctx, f_host);
    sd_tensor *eps_u = eps_of(z, k.t, sd_upload(&ctx, k.uncond), NULL);
    sd_mapping_net m;
    load_mapping(&m, "map_");
    sd_adam opt;
    assert_sd_ok(sd_adam_init(&ctx, &opt, m.params, SD_MAP_N_PARAMS, 1e-3)); /* LR_MAPPING of the oracle */
    sd_tape *tape = sd_tape_new();
    float losses[10];
    for (int step = 0; step < 10; step++) {
        sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
        sd_ctx_set_tape(&ctx, tape);
        sd_tensor *loss = mapping_loss(&k, &m, z, target, cond, features, eps_u);
        losses[step] = sd_item(&ctx, loss);
        assert_sd_ok(sd_backward(&ctx, loss));
        assert_sd_ok(sd_adam_step(&ctx, &opt));
        sd_tape_reset(tape);
        sd_ctx_set_tape(&ctx, NULL);
        sd_arena_reset(ctx.arena, mark);
    }
    check_adam_losses(losses, "c_adam_losses");
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) {
        if (i == SD_MAP_START_B || i == SD_MAP_BLOCK_B) continue; /* driven by rounding noise, see above */
        char name[96];
        snprintf(name, sizeof name, "c_adam_final_%s", sd_mapping_param_names[i]);
        /* Adam divides by sqrt(v): in the few entries whose gradient is near zero, rounding
         * differences become visible update differences (measured up to 6.5e-4 of the largest
         * weight after 10 steps, on this machine's BLAS), while the losses, which depend on every
         * weight, agree to 1e-7 above. */
        sd_tensor *want = testutil_fixture("tiny_autograd", name);
        sd_tensor view = sd_view(m.params[i], want->ndim, want->shape);
        testutil_assert_close(&view, want, 2e-3, name);
        sd_tensor_free(want);
    }
    sd_tape_free(tape);
    sd_adam_free(&opt);
    sd_mapping_net_free(&m);
    sd_tensor_free(f_host);
    sd_arena_reset(ctx.arena, outer);
    free_case(&k);
}

/* sd_all_finite_each: one verdict per tensor from one call (the inversions check every gradient of
 * an optimiser with it before each Adam step, naming the first that is not finite). */
static void test_all_finite_each(void **state) {
    (void)state;
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *t[3];
    for (int k = 0; k < 3; k++) {
        t[k] = sd_new4(&c, 1, 100 + k, 0, 0, 0);
        assert_sd_ok(c.be->fill(sd_f32(t[k]), 1.5f, sd_numel(t[k])));
    }
    const sd_tensor *xs[3] = {t[0], t[1], t[2]};
    int ok[3] = {-1, -1, -1};
    assert_sd_ok(sd_all_finite_each(&c, xs, 3, ok));
    assert_true(ok[0] == 1 && ok[1] == 1 && ok[2] == 1);
    sd_f32(t[1])[57] = NAN;
    sd_f32(t[2])[101] = -INFINITY;
    assert_sd_ok(sd_all_finite_each(&c, xs, 3, ok));
    assert_true(ok[0] == 1 && ok[1] == 0 && ok[2] == 0);
    assert_false(sd_all_finite(&c, t[1]));
    assert_true(sd_all_finite(&c, t[0]));
    assert_int_equal(sd_all_finite_each(&c, xs, 0, ok), SD_ERR_INTERNAL); /* no tensor */
    sd_ctx_free(&c);
}

/* sd_adam_restart (the inversions' new Adam per timestep on the same buffers) is a fresh
 * sd_adam_init: after steps with one learning rate, a restart with another and two steps give the
 * parameter and the moments a new optimiser gives from the same values, bit for bit. */
static void test_adam_restart(void **state) {
    (void)state;
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *h = sd_tensor_new4(SD_F32, 1, 50, 0, 0, 0);
    testutil_fill_normal(sd_f32(h), 50, 71, 1.0f);
    sd_tensor *p = sd_param_new(&c, h, "p"), *q = NULL;
    sd_tensor *g = sd_new4(&c, 1, 50, 0, 0, 0);
    testutil_fill_normal(sd_f32(g), 50, 72, 0.5f);
    sd_adam a, b;
    assert_sd_ok(sd_adam_init(&c, &a, &p, 1, 1e-2));
    p->grad = g;
    for (int k = 0; k < 3; k++) assert_sd_ok(sd_adam_step(&c, &a));
    assert_sd_ok(sd_adam_restart(&c, &a, 3e-3));
    q = sd_param_new(&c, p, "q"); /* the values the restart starts from */
    assert_sd_ok(sd_adam_init(&c, &b, &q, 1, 3e-3));
    q->grad = g;
    for (int k = 0; k < 2; k++) {
        assert_sd_ok(sd_adam_step(&c, &a));
        assert_sd_ok(sd_adam_step(&c, &b));
    }
    assert_int_equal(a.step, b.step);
    assert_memory_equal(sd_f32(p), sd_f32(q), sd_nbytes(p));
    assert_memory_equal(sd_f32(a.m[0]), sd_f32(b.m[0]), sd_nbytes(p));
    assert_memory_equal(sd_f32(a.v[0]), sd_f32(b.v[0]), sd_nbytes(p));
    p->grad = q->grad = NULL;
    sd_adam_free(&a);
    sd_adam_free(&b);
    sd_tensor_free(p);
    sd_tensor_free(q);
    sd_tensor_free(h);
    sd_ctx_free(&c);
}

int main(void) {
    const struct CMUnitTest graph_tests[] = {
        cmocka_unit_test(test_small_graph_matches_finite_differences),
        cmocka_unit_test(test_frozen_paths_record_nothing),
        cmocka_unit_test(test_add_shares_its_gradient),
        cmocka_unit_test(test_first_contributions_overwrite),
        cmocka_unit_test(test_attention_lse_reaches_backward),
        cmocka_unit_test(test_all_finite_each),
        cmocka_unit_test(test_adam_restart),
    };
    const struct CMUnitTest unet_tests[] = {
        cmocka_unit_test_setup(test_grad_uncond_context, reset_status),
        cmocka_unit_test_setup(test_grad_value_input, reset_status),
        cmocka_unit_test_setup(test_grad_recomputed, reset_status),
        cmocka_unit_test_setup(test_grad_mapping_network, reset_status),
        cmocka_unit_test_setup(test_adam_null_text, reset_status),
        cmocka_unit_test_setup(test_adam_mapping_network, reset_status),
    };
    int failed = cmocka_run_group_tests_name("autograd: small graph", graph_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("autograd: tiny UNet vs torch", unet_tests, setup, teardown);
    return failed;
}
