/* test_models.c: the CPU runtime against the PyTorch oracle on the tiny model (models/tiny,
 * fixtures from tests/oracle/gen_30_model_fixtures.py): CLIP text encoder, UNet (eps, time
 * embedding, attention maps and the hook's call order), VAE encode/decode, and the DDIM
 * scheduler, sampling steps and inversion trajectory. Tolerance: max relative error 1e-4
 * (max |got - want| / max |want|), the acceptance bar of the runtime issue. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "sd/control.h"
#include "sd/device.h"
#include "sd/io.h"
#include "sd/methods.h"
#include "sd/autograd.h"
#include "sd/models.h"
#include "sd/sched.h"
#include "../../src/models/layers.h" /* sd_cross_attention_kv */
#include "../../src/nn/tape.h" /* sd_lowp_conv_weight_bf16t: which weight copies a gradient step made */
#include "testutil.h"

#define TOL 1e-4

static sd_model_files files;
static sd_unet unet;
static sd_vae vae;
static sd_clip_text text;
static sd_ctx ctx;

static int setup(void **state) {
    (void)state;
    if (sd_model_files_open("models/tiny", "models/tiny/tokenizer", &files) ||
        sd_unet_bind(&unet, &files.unet_config, files.unet) ||
        sd_vae_bind(&vae, &files.vae_config, files.vae) ||
        sd_clip_text_bind(&text, &files.text_config, files.text) || sd_ctx_init_cpu(&ctx)) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    sd_clip_text_release(&text);
    sd_model_files_close(&files);
    return 0;
}

static sd_tensor *ids_to_i32(const sd_tensor *ids64) {
    sd_tensor *t = sd_tensor_new(SD_I32, ids64->ndim, ids64->shape);
    for (int64_t i = 0; i < sd_numel(ids64); i++) ((int32_t *)t->data)[i] = (int32_t)((int64_t *)ids64->data)[i];
    return t;
}

static void test_text_encoder(void **state) {
    (void)state;
    sd_tensor *ids64 = testutil_fixture("tiny_text", "input_ids");
    sd_tensor *want = testutil_fixture("tiny_text", "last_hidden_state");
    sd_tensor *ids = ids_to_i32(ids64);
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *got = sd_clip_text_forward(&ctx, &text, ids);
    assert_sd_ok(sd_ctx_status(&ctx));
    testutil_assert_close(got, want, TOL, "text encoder last_hidden_state");
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(ids64);
    sd_tensor_free(ids);
    sd_tensor_free(want);
}

/* Runs the UNet on a fixture's (sample, context) at t and compares eps. */
static void check_unet(const char *sample_name, const char *context_name, float t, const char *eps_name) {
    sd_tensor *sample = testutil_fixture("tiny_unet", sample_name);
    sd_tensor *context = testutil_fixture("tiny_unet", context_name);
    sd_tensor *want = testutil_fixture("tiny_unet", eps_name);
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *got = sd_unet_forward(&ctx, &unet, sd_upload(&ctx, sample), t, sd_upload(&ctx, context));
    assert_sd_ok(sd_ctx_status(&ctx));
    testutil_assert_close(got, want, TOL, eps_name);
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(sample);
    sd_tensor_free(context);
    sd_tensor_free(want);
}

static void test_unet_t981(void **state) { (void)state; check_unet("sample", "context", 981.0f, "eps_t981"); }

/* A plain forward runs each resnet and transformer block in the scratch arena; the block's result
 * goes straight to the activation arena (sd_block_result), so the UNet makes no copies, and eps is
 * unchanged. Counted through the profiling backend. */
static void test_unet_blocks_write_results_in_place(void **state) {
    (void)state;
    sd_profile prof;
    sd_ctx pc;
    assert_sd_ok(sd_ctx_init(&pc, sd_backend_profiled(sd_backend_cpu(), &prof), SD_DEVICE_CPU));
    sd_tensor *sample = testutil_fixture("tiny_unet", "sample");
    sd_tensor *context = testutil_fixture("tiny_unet", "context");
    sd_tensor *want = testutil_fixture("tiny_unet", "eps_t981");
    sd_tensor *got = sd_unet_forward(&pc, &unet, sd_upload(&pc, sample), 981.0f, sd_upload(&pc, context));
    assert_sd_ok(sd_ctx_status(&pc));
    testutil_assert_close(got, want, TOL, "eps_t981 (profiled)");
    int64_t copies = 0;
    for (int i = 0; i < prof.n_shapes; i++)
        if (!strcmp(prof.shapes[i].what, "copy")) copies += prof.shapes[i].calls;
    assert_int_equal(copies, 0);
    sd_ctx_free(&pc);
    sd_tensor_free(sample);
    sd_tensor_free(context);
    sd_tensor_free(want);
}
static void test_unet_t1(void **state) { (void)state; check_unet("sample", "context", 1.0f, "eps_t1"); }
static void test_unet_32x32_t500(void **state) {
    (void)state;
    check_unet("small_sample", "small_context", 500.0f, "small_eps_t500");
}

static void test_time_embedding(void **state) {
    (void)state;
    sd_tensor *want_proj = testutil_fixture("tiny_unet", "time_proj_t981");
    sd_tensor *want_emb = testutil_fixture("tiny_unet", "temb_t981");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *t = sd_new4(&ctx, 1, 2, 0, 0, 0);
    sd_f32(t)[0] = sd_f32(t)[1] = 981.0f;
    sd_tensor *proj = sd_timestep_embedding(&ctx, t, unet.cfg.block_out_channels[0], 1, 0.0f);
    sd_tensor *emb = sd_linear(&ctx, sd_silu(&ctx, sd_linear(&ctx, proj, &unet.time_linear_1)), &unet.time_linear_2);
    assert_sd_ok(sd_ctx_status(&ctx));
    testutil_assert_close(proj, want_proj, 1e-6, "sinusoidal projection t=981");
    testutil_assert_close(emb, want_emb, TOL, "time embedding t=981");
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(want_proj);
    sd_tensor_free(want_emb);
}


static void test_attention_hook_and_maps(void **state) {
    (void)state;
    sd_tensor *sample = testutil_fixture("tiny_unet", "sample");
    sd_tensor *context = testutil_fixture("tiny_unet", "context");
    sd_tensor *want_eps = testutil_fixture("tiny_unet", "eps_t981");
    sd_tensor *is_cross = testutil_fixture("tiny_attn", "attn_call_is_cross");
    sd_tensor *shapes = testutil_fixture("tiny_attn", "attn_call_shapes");
    sd_tensor *rows = testutil_fixture("tiny_attn", "attn_rows");
    testutil_recording_hook hook;
    testutil_recording_hook_init(&hook);
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    ctx.hook = &hook.base;
    sd_tensor *eps = sd_unet_forward(&ctx, &unet, sd_upload(&ctx, sample), 981.0f, sd_upload(&ctx, context));
    ctx.hook = NULL;
    assert_sd_ok(sd_ctx_status(&ctx));
    /* capturing maps must not change the result */
    testutil_assert_close(eps, want_eps, TOL, "eps with maps captured");

    assert_int_equal(hook.n_calls, 32);
    const int64_t *cross = is_cross->data, *shp = shapes->data;
    for (int i = 0; i < 32; i++) {
        const sd_attn_site *s = &hook.sites[i];
        assert_int_equal(s->layer, i);
        assert_int_equal(s->is_cross, (int)cross[i]);
        /* oracle shape of the map: (B·heads, q_len, kv_len) */
        assert_int_equal(s->batch * s->heads, shp[i * 3 + 0]);
        assert_int_equal(s->q_len, shp[i * 3 + 1]);
        assert_int_equal(s->kv_len, shp[i * 3 + 2]);
        assert_int_equal(s->res_h * s->res_w, s->q_len);
    }
    /* SD v1 layout: 16 self + 16 cross, places down 0-11, mid 12-13, up 14-31 */
    assert_int_equal(hook.sites[11].place, SD_PLACE_DOWN);
    assert_int_equal(hook.sites[12].place, SD_PLACE_MID);
    assert_int_equal(hook.sites[14].place, SD_PLACE_UP);

    const int layers[] = {9, 11, 12, 15, 17, 19};
    for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "attn_probs_%02d", layers[i]);
        sd_tensor *want = testutil_fixture("tiny_attn", name);
        sd_tensor *got = hook.maps[layers[i]];
        assert_non_null(got);
        if (want->shape[0] == got->shape[0]) {
            testutil_assert_close(got, want, TOL, name);
        } else {
            /* the fixture keeps only some rows of the (B·heads) axis, listed in attn_rows */
            const int64_t plane = want->shape[1] * want->shape[2];
            sd_tensor *sel = sd_tensor_new(SD_F32, want->ndim, want->shape);
            for (int64_t r = 0; r < want->shape[0]; r++)
                memcpy(sd_f32(sel) + r * plane, sd_f32(got) + ((int64_t *)rows->data)[r] * plane,
                       (size_t)plane * sizeof(float));
            testutil_assert_close(sel, want, TOL, name);
            sd_tensor_free(sel);
        }
        sd_tensor_free(want);
    }
    sd_arena_reset(ctx.arena, mark);
    sd_tensor *all[] = {sample, context, want_eps, is_cross, shapes, rows};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

/* fp16 activation storage (what fast mode runs on a GPU) through the CPU twins of the fp16 ops:
 * the UNet must still match the oracle (storage alone: 1.6e-3; bf16 storage gave 1.5e-2, which is
 * why the format is fp16), must really have run in fp16 (the result differs from the F32 forward,
 * and fp16 weight copies were made), also under an attention controller (whose sites run in F32). */
#define F16_TOL 5e-3

/* The UNet forward under a hook that records every attention site's maps; checks that all 32
 * sites were seen. */
static sd_tensor *forward_recording_maps(sd_tensor *x, sd_tensor *cond) {
    testutil_recording_hook hook;
    testutil_recording_hook_init(&hook);
    ctx.hook = &hook.base;
    sd_tensor *eps = sd_unet_forward(&ctx, &unet, x, 981.0f, cond);
    ctx.hook = NULL;
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_int_equal(hook.n_calls, 32);
    return eps;
}

static void test_unet_f16_storage(void **state) {
    (void)state;
    sd_tensor *sample = testutil_fixture("tiny_unet", "sample");
    sd_tensor *context = testutil_fixture("tiny_unet", "context");
    sd_tensor *want = testutil_fixture("tiny_unet", "eps_t981");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *x = sd_upload(&ctx, sample), *cond = sd_upload(&ctx, context);
    sd_tensor *f32 = sd_unet_forward(&ctx, &unet, x, 981.0f, cond);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_null(ctx.lowp_weights);

    ctx.activations = SD_F16;
    sd_tensor *f16 = sd_unet_forward(&ctx, &unet, x, 981.0f, cond);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_int_equal(f16->dtype, SD_F32); /* the output returns to F32 */
    assert_non_null(ctx.lowp_weights);
    testutil_assert_close(f16, want, F16_TOL, "eps t=981 with fp16 activations");
    const double rel = testutil_max_rel_err(sd_f32(f16), sd_f32(f32), sd_numel(f32));
    printf("fp16 storage vs F32 forward: max relative error %.3g\n", rel);
    assert_true(rel > 1e-5); /* rounding to fp16 happened */

    sd_tensor *hooked = forward_recording_maps(x, cond); /* every site's maps computed in F32 */
    testutil_assert_close(hooked, want, F16_TOL, "eps t=981, fp16 activations, maps captured at every site");
    assert_true(testutil_max_rel_err(sd_f32(hooked), sd_f32(f32), sd_numel(f32)) > 1e-5);
    /* adopting weights drops the fp16 copies (new weights may reuse the old ones' addresses); the
     * next forward remakes them and gives the same result */
    assert_sd_ok(sd_ctx_adopt_weights(&ctx, files.unet));
    assert_null(ctx.lowp_weights);
    sd_tensor *again = sd_unet_forward(&ctx, &unet, x, 981.0f, cond);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_non_null(ctx.lowp_weights);
    assert_memory_equal(sd_f32(again), sd_f32(f16), sd_nbytes(f16));
    ctx.activations = SD_F32;
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(sample);
    sd_tensor_free(context);
    sd_tensor_free(want);
}

/* Channels-last feature maps (sd_ctx.channels_last) change where values sit in memory, not what is
 * computed: the CPU's channels-last twins are its NCHW twins between exact transposes, so the fp16
 * forward must come out bit for bit the same, plain and under an attention controller; the
 * convolutions must really have run channels-last (KRSC copies of the 3x3 weights were made). */
static void test_unet_channels_last(void **state) {
    (void)state;
    sd_tensor *sample = testutil_fixture("tiny_unet", "sample");
    sd_tensor *context = testutil_fixture("tiny_unet", "context");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *x = sd_upload(&ctx, sample), *cond = sd_upload(&ctx, context);
    ctx.activations = SD_F16;
    ctx.channels_last = 0;
    assert_false(sd_ctx_channels_last(&ctx));
    sd_tensor *nchw = sd_unet_forward(&ctx, &unet, x, 981.0f, cond);
    assert_sd_ok(sd_ctx_status(&ctx));
    const size_t nchw_copies = sd_ctx_lowp_weight_bytes(&ctx);

    ctx.channels_last = 1;
    assert_true(sd_ctx_channels_last(&ctx));
    sd_tensor *last = sd_unet_forward(&ctx, &unet, x, 981.0f, cond);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_int_equal(last->dtype, SD_F32);
    assert_int_equal(last->channels_last, 0); /* the output returns to F32 NCHW */
    assert_true(sd_ctx_lowp_weight_bytes(&ctx) > nchw_copies);
    assert_memory_equal(sd_f32(last), sd_f32(nchw), sd_nbytes(nchw));

    sd_tensor *hooked = forward_recording_maps(x, cond);
    ctx.channels_last = 0;
    sd_tensor *hooked_nchw = forward_recording_maps(x, cond);
    assert_memory_equal(sd_f32(hooked), sd_f32(hooked_nchw), sd_nbytes(hooked));

    /* a gradient step's forward (a tape records: F32 activations) with fast mode's storage: the
     * UNet's convolutions run on fp16 copies of their weights, channels-last (nn.c,
     * conv_f32_via_f16), and its linears on fp16 weights (linear_f32io): close to the F32 forward,
     * not equal to it; the null embedding still gets its gradient */
    {
        ctx.channels_last = 1;
        sd_tensor *f16 = sd_unet_forward(&ctx, &unet, x, 981.0f, cond); /* no tape: the fp16 forward */
        ctx.activations = SD_F32;
        sd_tensor *exact = sd_unet_forward(&ctx, &unet, x, 981.0f, cond);
        ctx.activations = SD_F16;
        sd_tensor *leaf = sd_param_new(&ctx, context, "null embedding");
        assert_non_null(leaf);
        sd_tape *tape = sd_tape_new();
        sd_ctx_set_tape(&ctx, tape);
        /* NCHW maps keep the step's convolutions F32 (its linears still use fp16 copies) */
        ctx.channels_last = 0;
        sd_tensor *eps_f32_convs = sd_unet_forward(&ctx, &unet, x, 981.0f, leaf);
        sd_tape_reset(tape);
        ctx.channels_last = 1;
        sd_tensor *eps = sd_unet_forward(&ctx, &unet, x, 981.0f, leaf);
        assert_sd_ok(sd_ctx_status(&ctx));
        assert_int_equal(eps->dtype, SD_F32);
        const double rel = testutil_max_rel_err(sd_f32(eps), sd_f32(exact), sd_numel(exact));
        printf("gradient-step forward on fp16 weight copies vs F32: max relative error %.3g\n", rel);
        assert_true(rel > 1e-6 && rel < 5e-3);
        assert_true(testutil_max_rel_err(sd_f32(eps), sd_f32(f16), sd_numel(f16)) > 0); /* not the fp16 forward */
        /* the convolutions ran on fp16 copies: the result moved from the F32-convolution forward */
        const double conv_rel = testutil_max_rel_err(sd_f32(eps), sd_f32(eps_f32_convs), sd_numel(eps));
        assert_true(conv_rel > 1e-6 && conv_rel < 5e-3);
        /* the backward's data gradients through the linears multiply bf16 copies of the weights
         * (autograd.c, bf16_data_gradient): the gradient stays close to exact mode's */
        const size_t before_backward = sd_ctx_lowp_weight_bytes(&ctx);
        assert_sd_ok(sd_backward(&ctx, sd_mse(&ctx, eps, x)));
        assert_true(sd_ctx_lowp_weight_bytes(&ctx) > before_backward); /* the bf16 copies were made */
        /* and the stride-1 convolutions' data gradients ran on transposed bf16 kernels
         * (bf16_conv_data_gradient): asking for one such copy now finds it made */
        const size_t after_backward = sd_ctx_lowp_weight_bytes(&ctx);
        assert_non_null(sd_lowp_conv_weight_bf16t(&ctx, unet.mid.resnets[0].conv1.weight));
        assert_int_equal(sd_ctx_lowp_weight_bytes(&ctx), after_backward);
        /* so did the transformers' 1x1 projections, linears on a 4-d weight (SD v1.x's proj_in and
         * proj_out): their bf16 copies are made too */
        assert_int_equal(unet.mid.attention.proj_out.weight->ndim, 4);
        assert_non_null(sd_lowp_weight_bf16(&ctx, unet.mid.attention.proj_out.weight));
        assert_non_null(sd_lowp_weight_bf16(&ctx, unet.up[1].attentions[0].proj_in.weight));
        assert_int_equal(sd_ctx_lowp_weight_bytes(&ctx), after_backward);
        assert_non_null(leaf->grad);
        assert_true(sd_all_finite(&ctx, leaf->grad));
        sd_tensor *fast_grad = sd_download_new(&ctx, leaf->grad);
        sd_tape_reset(tape);
        /* SD_BF16_GRADS=0 (sd_ctx.f32_data_grads): the same step on the F32 weights makes no bf16
         * copies, and its gradient moves */
        {
            ctx.f32_data_grads = 1;
            sd_tensor *eps_f32w = sd_unet_forward(&ctx, &unet, x, 981.0f, leaf);
            const size_t before_f32 = sd_ctx_lowp_weight_bytes(&ctx);
            assert_null(leaf->grad); /* sd_tape_reset dropped the last one */
            assert_sd_ok(sd_backward(&ctx, sd_mse(&ctx, eps_f32w, x)));
            assert_int_equal(sd_ctx_lowp_weight_bytes(&ctx), before_f32);
            const double moved = testutil_max_rel_err(sd_f32(fast_grad), sd_f32(leaf->grad), sd_numel(fast_grad));
            printf("gradient to the context, bf16 vs F32 weight copies in the backward: max relative difference %.3g\n",
                   moved);
            assert_true(moved > 1e-6 && moved < 1e-2);
            ctx.f32_data_grads = 0;
            sd_tape_reset(tape);
        }
        const size_t before_exact = sd_ctx_lowp_weight_bytes(&ctx);
        ctx.activations = SD_F32;
        sd_tensor *eps32 = sd_unet_forward(&ctx, &unet, x, 981.0f, leaf);
        assert_sd_ok(sd_backward(&ctx, sd_mse(&ctx, eps32, x)));
        assert_int_equal(sd_ctx_lowp_weight_bytes(&ctx), before_exact); /* exact mode makes no copies */
        const double grad_rel = testutil_max_rel_err(sd_f32(fast_grad), sd_f32(leaf->grad), sd_numel(fast_grad));
        printf("gradient to the context, fast storage vs exact: max relative error %.3g\n", grad_rel);
        assert_true(grad_rel > 1e-6 && grad_rel < 1e-2);
        ctx.activations = SD_F16;
        sd_ctx_set_tape(&ctx, NULL);
        sd_tape_reset(tape);
        sd_tape_free(tape);
        sd_tensor_free(leaf);
        sd_tensor_free(fast_grad);
    }

    /* an op without a channels-last form gets its input back in NCHW order */
    ctx.channels_last = 1;
    sd_tensor *h = sd_to_channels_last(&ctx, sd_to_dtype(&ctx, x, SD_F16));
    assert_non_null(h);
    assert_int_equal(h->channels_last, 1);
    sd_tensor *flat = sd_to_dtype(&ctx, sd_reshape4(&ctx, h, 2, x->shape[0] * x->shape[1], x->shape[2] * x->shape[3], 0, 0),
                                  SD_F32);
    assert_sd_ok(sd_ctx_status(&ctx));
    sd_tensor *back = sd_to_dtype(&ctx, h, SD_F32);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_memory_equal(sd_f32(flat), sd_f32(back), sd_nbytes(back));
    sd_tensor *rounded = sd_to_dtype(&ctx, sd_to_dtype(&ctx, x, SD_F16), SD_F32);
    assert_memory_equal(sd_f32(back), sd_f32(rounded), sd_nbytes(back));
    ctx.channels_last = 0;
    ctx.activations = SD_F32;
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(sample);
    sd_tensor_free(context);
}

/* The tiny UNet's small fixtures on the host (the test frees them) and uploaded, after an arena
 * mark the test resets to: where the fp16-step, time-projection and prefix tests start. */
typedef struct {
    sd_tensor *sample, *context; /* host */
    sd_tensor *x, *cond;         /* on ctx's device */
    sd_arena_mark mark;
} small_unet_inputs;

static small_unet_inputs small_unet_inputs_load(void) {
    small_unet_inputs in;
    in.sample = testutil_fixture("tiny_unet", "small_sample");
    in.context = testutil_fixture("tiny_unet", "small_context");
    in.mark = sd_arena_get_mark(ctx.arena);
    in.x = sd_upload(&ctx, in.sample);
    in.cond = sd_upload(&ctx, in.context);
    return in;
}

/* A gradient step that stores fp16 (sd_ctx.f16_steps), on a 32x32 latent (the CPU's fp16 twins are
 * slow): its forward is the plain fp16 forward, bit for bit (the same ops, now recorded on the
 * tape); its gradient to the null embedding stays close to the F32-storage fast step's; channels-last
 * and NCHW maps give the same gradient bit for bit (the CPU's channels-last twins are its NCHW ones
 * between exact transposes, so this checks what the tape records for a map's memory read as tokens:
 * a transpose in gradient space); blocks recomputed in the backward give it again; and under an
 * attention controller whose sites run in F32 the gradient still arrives. */
static sd_tensor *f16_step_value_cond; /* hooked 2: StyleDiffusion's step, leaf the value input */
static sd_tensor *f16_step_gradient(sd_tensor *x, sd_tensor *leaf, int hooked, sd_tensor **eps_out) {
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&ctx, tape);
    testutil_recording_hook hook;
    testutil_recording_hook_init(&hook);
    sd_value_capture_hook value_hook;
    sd_value_capture_hook_init(&value_hook, leaf, 0);
    ctx.hook = hooked == 1 ? &hook.base : hooked == 2 ? &value_hook.base : NULL;
    sd_tensor *eps = sd_unet_forward(&ctx, &unet, x, 500.0f, hooked == 2 ? f16_step_value_cond : leaf);
    ctx.hook = NULL;
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_int_equal(eps->dtype, SD_F32);
    assert_sd_ok(sd_backward(&ctx, sd_mse(&ctx, eps, x)));
    assert_non_null(leaf->grad);
    assert_true(sd_all_finite(&ctx, leaf->grad));
    sd_tensor *grad = sd_download_new(&ctx, leaf->grad);
    if (eps_out) *eps_out = sd_download_new(&ctx, eps);
    sd_ctx_set_tape(&ctx, NULL);
    sd_tape_free(tape);
    return grad;
}

/* the step's backward ops on saved values: fp16 as saved, or widened to F32 first */
static const sd_backend *f16_step_inner;
static long f16_step_ln_f16, f16_step_ln_f32, f16_step_geglu_f16, f16_step_gn_f16, f16_step_gn_f32, f16_step_widened;
static long f16_step_gn_kept; /* GroupNorm backward calls handed the forward's statistics */
static long f16_step_transposes, f16_step_map_linears, f16_step_narrowed, f16_step_geglu_bf16;
static sd_status counting_f16_geglu_backward_bf16(const sd_f16 *x, const float *dy, sd_f16 *dx, int64_t M, int64_t N) {
    f16_step_geglu_bf16++;
    return f16_step_inner->f16->geglu_backward_bf16(x, dy, dx, M, N);
}
static sd_status counting_to_f16(const float *x, sd_f16 *y, int64_t n) {
    f16_step_narrowed++;
    return f16_step_inner->f16->to_f16(x, y, n);
}
static sd_status counting_transpose(const float *x, float *y, int64_t B, int64_t R, int64_t C) {
    f16_step_transposes++;
    return f16_step_inner->transpose(x, y, B, R, C);
}
static sd_status counting_linear_backward_data_bf16w_map(const float *dy, const sd_f16 *w, float *dx, int64_t B,
                                                         int64_t S, int64_t K, int64_t N, int dy_map, int dx_map,
                                                         int accumulate) {
    f16_step_map_linears++;
    return f16_step_inner->f16->linear_backward_data_bf16w_map(dy, w, dx, B, S, K, N, dy_map, dx_map, accumulate);
}
static sd_status counting_f16_layer_norm_backward(const sd_f16 *x, const float *gamma, const float *dy, float *dx,
                                                  float *dgamma, float *dbeta, int64_t M, int64_t C, float eps) {
    f16_step_ln_f16++;
    return f16_step_inner->f16->layer_norm_backward(x, gamma, dy, dx, dgamma, dbeta, M, C, eps);
}
static sd_status counting_layer_norm_backward(const float *x, const float *gamma, const float *dy, float *dx,
                                              float *dgamma, float *dbeta, int64_t M, int64_t C, float eps) {
    f16_step_ln_f32++;
    return f16_step_inner->layer_norm_backward(x, gamma, dy, dx, dgamma, dbeta, M, C, eps);
}
static sd_status counting_f16_group_norm_backward_nhwc(const sd_f16 *x, const float *gamma, const float *beta,
                                                      const float *dy, float *dx, float *dgamma, float *dbeta,
                                                      int64_t B, int64_t C, int64_t S, int groups, float eps, int silu,
                                                      int accumulate, const float *stats) {
    f16_step_gn_f16++;
    if (stats) f16_step_gn_kept++;
    return f16_step_inner->f16->group_norm_backward_nhwc(x, gamma, beta, dy, dx, dgamma, dbeta, B, C, S, groups, eps,
                                                         silu, accumulate, stats);
}
static sd_status counting_group_norm_backward(const float *x, const float *gamma, const float *beta, const float *dy,
                                              float *dx, float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S,
                                              int groups, float eps, int silu, int accumulate) {
    f16_step_gn_f32++;
    return f16_step_inner->group_norm_backward(x, gamma, beta, dy, dx, dgamma, dbeta, B, C, S, groups, eps, silu,
                                               accumulate);
}
static sd_status counting_f16_geglu_backward(const sd_f16 *x, const float *dy, float *dx, int64_t M, int64_t N,
                                             int accumulate) {
    f16_step_geglu_f16++;
    return f16_step_inner->f16->geglu_backward(x, dy, dx, M, N, accumulate);
}
static sd_status counting_to_f32(const sd_f16 *x, float *y, int64_t n) {
    f16_step_widened++;
    return f16_step_inner->f16->to_f32(x, y, n);
}
static sd_status counting_to_f32_nchw(const sd_f16 *x, const float *bias, const float *res, float *y, int64_t B,
                                      int64_t C, int64_t S) {
    f16_step_widened++;
    return f16_step_inner->f16->to_f32_nchw(x, bias, res, y, B, C, S);
}

static void test_f16_gradient_step(void **state) {
    (void)state;
    const small_unet_inputs in = small_unet_inputs_load();
    sd_tensor *sample = in.sample, *context = in.context, *x = in.x, *cond = in.cond;
    const sd_arena_mark mark = in.mark;
    sd_tensor *leaf = sd_param_new(&ctx, context, "null embedding");
    assert_non_null(leaf);
    ctx.activations = SD_F16;
    ctx.channels_last = 1;
    sd_tensor *plain = sd_download_new(&ctx, sd_unet_forward(&ctx, &unet, x, 500.0f, cond)); /* no tape */
    assert_sd_ok(sd_ctx_status(&ctx));

    ctx.f16_steps = 1;
    /* LayerNorm, GroupNorm and GEGLU read their saved fp16 inputs as they are (sd_f16_ops), no widened
     * copy: counted, and the same gradient bit for bit as the widening path's (the CPU's fp16 twins
     * widen inside). The transformers' proj_in and proj_out take their maps' NCHW gradients as they
     * are (sd_linear_of_map, sd_linear_add_map): no transpose in the backward, against three per
     * transformer (the two token views of its maps and the skip's) through token order. */
    f16_step_inner = ctx.be;
    sd_backend table = *ctx.be;
    sd_f16_ops table16 = *ctx.be->f16;
    table.f16 = &table16;
    table.layer_norm_backward = counting_layer_norm_backward;
    table.group_norm_backward = counting_group_norm_backward;
    table16.layer_norm_backward = counting_f16_layer_norm_backward;
    table16.group_norm_backward_nhwc = counting_f16_group_norm_backward_nhwc;
    table16.geglu_backward = counting_f16_geglu_backward;
    table16.to_f32 = counting_to_f32;
    table16.to_f32_nchw = counting_to_f32_nchw;
    table.transpose = counting_transpose;
    table16.linear_backward_data_bf16w_map = counting_linear_backward_data_bf16w_map;
    table16.geglu_backward_bf16 = counting_f16_geglu_backward_bf16;
    ctx.be = &table;
    sd_tensor *eps16 = NULL;
    sd_tensor *g16 = f16_step_gradient(x, leaf, 0, &eps16);
    const long ln_f16 = f16_step_ln_f16, ln_f32 = f16_step_ln_f32, geglu_f16 = f16_step_geglu_f16;
    const long gn_f16 = f16_step_gn_f16, gn_f32 = f16_step_gn_f32, widened = f16_step_widened;
    const long gn_kept = f16_step_gn_kept;
    const long transposes = f16_step_transposes, map_linears = f16_step_map_linears;
    const long geglu_bf16 = f16_step_geglu_bf16;
    table16.layer_norm_backward = NULL;
    table16.geglu_backward_bf16 = NULL;
    table16.group_norm_backward_nhwc = NULL;
    table16.geglu_backward = NULL;
    table16.linear_backward_data_bf16w_map = NULL;
    sd_tensor *g16_widening = f16_step_gradient(x, leaf, 0, NULL);
    print_message("    fp16 step: %ld LayerNorm, %ld GroupNorm and %ld GEGLU backward(s) on fp16 inputs (%ld of the GEGLU "
                  "ones writing bf16), %ld and %ld on F32, %ld widenings (%ld when all widen); %ld projections on "
                  "maps, %ld transposes (%ld through token order)\n", ln_f16, gn_f16, geglu_f16 + geglu_bf16,
                  geglu_bf16, ln_f32, gn_f32, widened, f16_step_widened - widened, map_linears, transposes,
                  f16_step_transposes - transposes);
    ctx.be = f16_step_inner;
    assert_true(ln_f16 > 0 && gn_f16 > 0);
    /* each channels-last GroupNorm's backward reads the statistics its forward kept on the tape */
    assert_int_equal(gn_kept, gn_f16);
    /* every GEGLU's input gradient goes to ff_in's data gradient in bf16, none through F32 */
    assert_int_equal(geglu_bf16, 16);
    assert_int_equal(geglu_f16, 0);
    /* proj_out of all 16 transformers and proj_in of the 15 whose input the context reaches: 31; the
     * token-order path transposes 3 maps in each of those 15 and one in the first (46) */
    assert_int_equal(map_linears, 31);
    assert_int_equal(transposes, 0);
    assert_int_equal(f16_step_map_linears - map_linears, 0);
    assert_int_equal(f16_step_transposes - transposes, 46);
    assert_int_equal(ln_f32, 0);
    assert_int_equal(gn_f32, 0);
    assert_int_equal(f16_step_ln_f32 - ln_f32, ln_f16); /* the same norms, widened */
    assert_int_equal(f16_step_gn_f32 - gn_f32, gn_f16);
    assert_int_equal(f16_step_widened - widened, widened + ln_f16 + gn_f16 + geglu_bf16);
    assert_memory_equal(sd_f32(g16_widening), sd_f32(g16), sd_nbytes(g16));
    assert_memory_equal(sd_f32(eps16), sd_f32(plain), sd_nbytes(plain)); /* the plain fp16 forward */
    ctx.channels_last = 0;
    sd_tensor *g16_nchw = f16_step_gradient(x, leaf, 0, NULL);
    assert_memory_equal(sd_f32(g16_nchw), sd_f32(g16), sd_nbytes(g16));
    ctx.channels_last = 1;
    /* recomputed blocks: the same gradient but for the order of sums into the blocks' inputs (~1e-7),
     * which the bf16 rounding of the data gradients turns into an occasional flip of a last bit
     * (measured on the 64x64 latent: 6.0e-4, and 5.8e-4 with F32 storage; 1.7e-7 in exact mode) */
    ctx.recompute = 1;
    sd_tensor *g16_recomputed = f16_step_gradient(x, leaf, 0, NULL);
    ctx.recompute = 0;
    /* a controller reading every site's maps: those sites run in F32 inside the fp16 step */
    sd_tensor *g16_hooked = f16_step_gradient(x, leaf, 1, NULL);

    ctx.f16_steps = 0; /* the F32-storage fast step */
    sd_tensor *g32 = f16_step_gradient(x, leaf, 0, NULL);
    ctx.activations = SD_F32;
    ctx.channels_last = 0;
    const double recomputed = testutil_max_rel_err(sd_f32(g16_recomputed), sd_f32(g16), sd_numel(g16));
    const double vs_f32 = testutil_max_rel_err(sd_f32(g16), sd_f32(g32), sd_numel(g32));
    const double hooked = testutil_max_rel_err(sd_f32(g16_hooked), sd_f32(g16), sd_numel(g16));
    printf("gradient to the context, fp16-storage step: vs the F32-storage fast step %.3g; blocks recomputed "
           "%.3g; under a controller (its sites in F32) %.3g\n", vs_f32, recomputed, hooked);
    assert_true(vs_f32 > 1e-6 && vs_f32 < 2e-2);
    assert_true(recomputed < 2e-3);
    assert_true(hooked > 0 && hooked < 2e-2);
    /* StyleDiffusion's step: its F32 value input goes to fp16 once for all 16 cross-attention layers
     * (sd_value_capture_hook: one conversion more than the plain context's step) */
    ctx.activations = SD_F16;
    ctx.channels_last = 1;
    ctx.f16_steps = 1;
    f16_step_value_cond = cond;
    table16 = *f16_step_inner->f16;
    table16.to_f16 = counting_to_f16;
    ctx.be = &table;
    /* a step of each kind first: the weights' fp16 copies (the value step's projections pack
     * otherwise than the context step's) are made on first use, and are not what is counted */
    sd_tensor_free(f16_step_gradient(x, leaf, 0, NULL));
    sd_tensor_free(f16_step_gradient(x, leaf, 2, NULL));
    f16_step_narrowed = 0;
    sd_tensor *g_plain = f16_step_gradient(x, leaf, 0, NULL);
    const long narrowed_plain = f16_step_narrowed;
    f16_step_narrowed = 0;
    sd_tensor *g_value = f16_step_gradient(x, leaf, 2, NULL);
    ctx.be = f16_step_inner;
    print_message("    conversions to fp16: %ld in the context's step, %ld in the value input's\n", narrowed_plain,
                  f16_step_narrowed);
    assert_int_equal(f16_step_narrowed, narrowed_plain + 1);
    /* the value's 16 layers and the context's 16 keys: a gradient other than the context's alone */
    assert_true(testutil_max_rel_err(sd_f32(g_value), sd_f32(g_plain), sd_numel(g_plain)) > 1e-3);
    ctx.activations = SD_F32;
    ctx.channels_last = 0;
    ctx.f16_steps = 0;
    sd_tensor *frees[] = {sample, context, leaf, plain, eps16, g16, g16_widening, g16_nchw, g16_recomputed, g16_hooked, g32,
                          g_plain, g_value};
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) sd_tensor_free(frees[i]);
    sd_arena_reset(ctx.arena, mark);
}

/* An op outside the fp16 set refuses a fp16 tensor with a message naming it. */
/* A fast gradient step's resnet convolution (F32 activations, fp16 weight copies) adds the time
 * embedding and the skip connection in its F32 widening pass (nn.c, conv2d_epilogue) instead of
 * running add_channel_bias and add after it: the same values bit for bit, the same tape (the
 * unfused ops' nodes) and the same gradients to x, the channel bias and the residual. */
static const sd_backend *epilogue_inner;
static long epilogue_adds;
static sd_status counting_add_channel_bias(const float *x, const float *v, float *y, int64_t B, int64_t C, int64_t S) {
    epilogue_adds++;
    return epilogue_inner->add_channel_bias(x, v, y, B, C, S);
}
static sd_status counting_binary(sd_binary_op op, const float *a, const float *b, float *y, int64_t n) {
    epilogue_adds++;
    return epilogue_inner->binary(op, a, b, y, n);
}

static void test_conv_epilogue_in_a_gradient_step(void **state) {
    (void)state;
    const sd_conv_w *cw = &unet.mid.resnets[0].conv2;
    assert_true(cw->f16_in_f32);
    const int64_t B = 2, Ci = cw->weight->shape[1], Co = cw->weight->shape[0], H = 6, W = 5;
    const int64_t xs[4] = {B, Ci, H, W}, vs[2] = {B, Co}, ys[4] = {B, Co, H, W};
    sd_tensor *xh = sd_tensor_new(SD_F32, 4, xs), *vh = sd_tensor_new(SD_F32, 2, vs);
    sd_tensor *rh = sd_tensor_new(SD_F32, 4, ys), *th = sd_tensor_new(SD_F32, 4, ys);
    testutil_fill_normal(sd_f32(xh), sd_numel(xh), 901, 1.0f);
    testutil_fill_normal(sd_f32(vh), sd_numel(vh), 902, 1.0f);
    testutil_fill_normal(sd_f32(rh), sd_numel(rh), 903, 1.0f);
    testutil_fill_normal(sd_f32(th), sd_numel(th), 904, 1.0f);
    const sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    epilogue_inner = ctx.be;
    sd_backend table = *ctx.be;
    table.add_channel_bias = counting_add_channel_bias;
    table.binary = counting_binary;
    ctx.be = &table;
    ctx.activations = SD_F16;
    ctx.channels_last = 1;
    sd_tensor *leaves[3] = {sd_param_new(&ctx, xh, "x"), sd_param_new(&ctx, vh, "v"), sd_param_new(&ctx, rh, "r")};
    sd_tensor *target = sd_upload(&ctx, th);
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&ctx, tape);
    sd_tensor *y[2], *grads[2][3];
    long adds[2];
    int nodes[2];
    for (int k = 0; k < 2; k++) { /* 0: fused; 1: the separate ops */
        epilogue_adds = 0;
        y[k] = k == 0 ? sd_conv2d_fused(&ctx, leaves[0], cw, 1, 1, leaves[1], leaves[2])
                      : sd_add(&ctx, leaves[2], sd_add_channel_bias(&ctx, sd_conv2d(&ctx, leaves[0], cw, 1, 1), leaves[1]));
        adds[k] = epilogue_adds;
        nodes[k] = sd_tape_size(tape);
        assert_sd_ok(sd_backward(&ctx, sd_mse(&ctx, y[k], target)));
        y[k] = sd_download_new(&ctx, y[k]);
        for (int i = 0; i < 3; i++) grads[k][i] = sd_download_new(&ctx, leaves[i]->grad);
        sd_tape_reset(tape);
    }
    print_message("    fused epilogue: %ld separate adds (unfused %ld), %d tape nodes (unfused %d)\n", adds[0], adds[1],
                  nodes[0], nodes[1]);
    assert_int_equal(adds[0], 0);
    assert_int_equal(adds[1], 2);
    assert_int_equal(nodes[0], nodes[1]);
    assert_memory_equal(sd_f32(y[0]), sd_f32(y[1]), sd_nbytes(y[0]));
    for (int i = 0; i < 3; i++) assert_memory_equal(sd_f32(grads[0][i]), sd_f32(grads[1][i]), sd_nbytes(grads[0][i]));
    /* exact mode (F32 storage) keeps the separate ops: the oracle's sums */
    ctx.activations = SD_F32;
    epilogue_adds = 0;
    sd_tensor *exact = sd_conv2d_fused(&ctx, leaves[0], cw, 1, 1, leaves[1], leaves[2]);
    assert_non_null(exact);
    assert_int_equal(epilogue_adds, 2);
    sd_tape_reset(tape);
    sd_ctx_set_tape(&ctx, NULL);
    sd_tape_free(tape);
    ctx.be = epilogue_inner;
    ctx.channels_last = 0;
    for (int k = 0; k < 2; k++) {
        sd_tensor_free(y[k]);
        for (int i = 0; i < 3; i++) sd_tensor_free(grads[k][i]);
    }
    for (int i = 0; i < 3; i++) sd_tensor_free(leaves[i]);
    sd_tensor_free(xh), sd_tensor_free(vh), sd_tensor_free(rh), sd_tensor_free(th);
    sd_arena_reset(ctx.arena, mark);
}

/* A fast gradient step's q, k and v projections of one F32 input (sd_linear_many on the weights'
 * fp16 copies) run as one batched product that rounds x to fp16 once: the same values bit for bit
 * as three linears, the same tape (one linear node per projection) and the same gradient to x.
 * In the backward, the three data gradients go in one product on the stacked bf16 weights
 * (autograd.c, backward_linear_group), either way the forward ran: the gradient to x matches the
 * backend without that op (three products, each adding into dx) to fp32 rounding. */
static const sd_f16_ops *projections_inner16;
static long projections_single, projections_batched, grads_single, grads_grouped;
static sd_status counting_linear_backward_data_bf16w(const float *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K,
                                                     int64_t N, int accumulate) {
    grads_single++;
    return projections_inner16->linear_backward_data_bf16w(dy, w, dx, M, K, N, accumulate);
}
static sd_status counting_linear_backward_data_bf16w_many(const float *const *dy, int count, const sd_f16 *w,
                                                          float *dx, int64_t M, int64_t K, int64_t N, int accumulate) {
    grads_grouped++;
    return projections_inner16->linear_backward_data_bf16w_many(dy, count, w, dx, M, K, N, accumulate);
}
static sd_status counting_linear_f32io(const float *x, const sd_f16 *w, const float *b, const float *r, float *y,
                                       int64_t M, int64_t K, int64_t N) {
    projections_single++;
    return projections_inner16->linear_f32io(x, w, b, r, y, M, K, N);
}
static sd_status counting_linear_batched_f32io(const float *x, const sd_f16 *w, const float *const *b, float *y,
                                               int64_t M, int64_t K, int64_t N, int count) {
    projections_batched++;
    return projections_inner16->linear_batched_f32io(x, w, b, y, M, K, N, count);
}

/* Makes ctx's backend one whose fp16 projections and their data gradients count their calls
 * (projections_single, projections_batched, grads_single, grads_grouped); table16 and table hold it
 * and must outlive its use. */
/* The counting table above installed over ctx's backend, with fp16 activations (a fast gradient
 * step's F32 linears on the weights' fp16 copies); projection_counter_end puts both back. The
 * struct holds the tables ctx.be points to while counting: it must outlive that. */
typedef struct {
    sd_f16_ops table16;
    sd_backend table;
    const sd_backend *inner;
} projection_counter;

static void projection_counter_begin(projection_counter *p) {
    p->inner = ctx.be;
    projections_inner16 = ctx.be->f16;
    p->table16 = *ctx.be->f16;
    p->table16.linear_f32io = counting_linear_f32io;
    p->table16.linear_batched_f32io = counting_linear_batched_f32io;
    p->table16.linear_backward_data_bf16w = counting_linear_backward_data_bf16w;
    p->table16.linear_backward_data_bf16w_many = counting_linear_backward_data_bf16w_many;
    p->table = *ctx.be;
    p->table.f16 = &p->table16;
    ctx.be = &p->table;
    ctx.activations = SD_F16;
}

static void projection_counter_end(const projection_counter *p) {
    ctx.be = p->inner;
    ctx.activations = SD_F32;
}

static void test_batched_projections_in_a_gradient_step(void **state) {
    (void)state;
    const sd_attention_w *a = &unet.mid.attention.attn1;
    const int64_t C = a->to_q.weight->shape[1], xs[3] = {1, 10, C};
    sd_tensor *xh = sd_tensor_new(SD_F32, 3, xs);
    testutil_fill_normal(sd_f32(xh), sd_numel(xh), 931, 1.0f);
    const sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    projection_counter counter;
    projection_counter_begin(&counter);
    sd_tensor *x = sd_param_new(&ctx, xh, "x");
    const int64_t ts[3] = {1, 10, a->to_q.weight->shape[0]};
    sd_tensor *th = sd_tensor_new(SD_F32, 3, ts);
    testutil_fill_normal(sd_f32(th), sd_numel(th), 932, 1.0f);
    sd_tensor *target = sd_upload(&ctx, th);
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&ctx, tape);
    const sd_linear_w *qkv[3] = {&a->to_q, &a->to_k, &a->to_v};
    sd_tensor *outs[3][3], *grad[3];
    long single[3], batched[3], gsingle[3], ggrouped[3];
    int nodes[3];
    for (int k = 0; k < 3; k++) { /* 0: sd_linear_many; 1: one linear each; 2: sd_linear_many, no grouped op */
        projections_single = projections_batched = grads_single = grads_grouped = 0;
        counter.table16.linear_backward_data_bf16w_many = k == 2 ? NULL : counting_linear_backward_data_bf16w_many;
        sd_tensor *o[3];
        if (k != 1) assert_sd_ok(sd_linear_many(&ctx, x, qkv, 3, o));
        else
            for (int i = 0; i < 3; i++) o[i] = sd_linear(&ctx, x, qkv[i]);
        single[k] = projections_single, batched[k] = projections_batched;
        nodes[k] = sd_tape_size(tape);
        /* a loss that weighs the three outputs differently: each projection's gradient matters */
        sd_tensor *sum = sd_add(&ctx, sd_add(&ctx, o[0], sd_mul(&ctx, o[1], o[1])), sd_mul(&ctx, o[2], o[0]));
        assert_sd_ok(sd_backward(&ctx, sd_mse(&ctx, sum, target)));
        for (int i = 0; i < 3; i++) outs[k][i] = sd_download_new(&ctx, o[i]);
        grad[k] = sd_download_new(&ctx, x->grad);
        gsingle[k] = grads_single, ggrouped[k] = grads_grouped;
        sd_tape_reset(tape);
    }
    counter.table16.linear_backward_data_bf16w_many = counting_linear_backward_data_bf16w_many;
    print_message("    q, k, v: %ld batched product(s) and %ld single (one by one: %ld single), %d tape nodes (%d)\n",
                  batched[0], single[0], single[1], nodes[0], nodes[1]);
    print_message("    their data gradients: %ld grouped product(s) and %ld single (without the grouped op: %ld single)\n",
                  ggrouped[0], gsingle[0], gsingle[2]);
    assert_int_equal(batched[0], 1);
    assert_int_equal(single[0], 0);
    assert_int_equal(single[1], 3);
    assert_int_equal(nodes[0], nodes[1]);
    assert_int_equal(ggrouped[0], 1);
    assert_int_equal(gsingle[0], 0);
    assert_int_equal(ggrouped[1], 1);
    assert_int_equal(gsingle[2], 3);
    for (int i = 0; i < 3; i++) assert_memory_equal(sd_f32(outs[0][i]), sd_f32(outs[1][i]), sd_nbytes(outs[0][i]));
    assert_memory_equal(sd_f32(grad[0]), sd_f32(grad[1]), sd_nbytes(grad[0]));
    const double apart = testutil_max_rel_err(sd_f32(grad[0]), sd_f32(grad[2]), sd_numel(grad[0]));
    print_message("    gradient to x, grouped vs three products: max rel err %.3g\n", apart);
    assert_true(apart < 1e-6); /* the same terms, summed in another order in fp32 */
    /* a projection whose output the loss leaves out has no gradient and leaves the group: q with k,
     * then q with v (the stacked copy of one pair must not serve the other), each against the same
     * loss's backward without the grouped op */
    for (int unused = 2; unused >= 1; unused--) {
        sd_tensor *pair[2];
        for (int grouped = 1; grouped >= 0; grouped--) {
            counter.table16.linear_backward_data_bf16w_many = grouped ? counting_linear_backward_data_bf16w_many : NULL;
            grads_grouped = 0;
            sd_tensor *o[3];
            assert_sd_ok(sd_linear_many(&ctx, x, qkv, 3, o));
            const int other = unused == 2 ? 1 : 2;
            sd_tensor *sum = sd_add(&ctx, o[0], sd_mul(&ctx, o[other], o[other]));
            assert_sd_ok(sd_backward(&ctx, sd_mse(&ctx, sum, target)));
            assert_int_equal(grads_grouped, grouped);
            pair[grouped] = sd_download_new(&ctx, x->grad);
            sd_tape_reset(tape);
        }
        const double err = testutil_max_rel_err(sd_f32(pair[1]), sd_f32(pair[0]), sd_numel(pair[0]));
        print_message("    q and %s grouped (%s unused) vs two products: max rel err %.3g\n", unused == 2 ? "k" : "v",
                      unused == 2 ? "v" : "k", err);
        assert_true(err < 1e-6);
        sd_tensor_free(pair[0]);
        sd_tensor_free(pair[1]);
    }
    counter.table16.linear_backward_data_bf16w_many = counting_linear_backward_data_bf16w_many;
    sd_ctx_set_tape(&ctx, NULL);
    sd_tape_free(tape);
    projection_counter_end(&counter);
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 3; i++) sd_tensor_free(outs[k][i]);
        sd_tensor_free(grad[k]);
    }
    sd_tensor_free(x);
    sd_tensor_free(xh);
    sd_tensor_free(th);
    sd_arena_reset(ctx.arena, mark);
}

/* A UNet call's cross-attention keys and values (sd_cross_attention_kv, made at the call's start):
 * the projections of one input and one weight shape go in one batched product (chunked at
 * SD_LINEAR_MANY_MAX), bit for bit the linears one by one, with the same tape nodes; in a fast
 * gradient step their data gradients then go in as many grouped products, and the gradients to the
 * context and to a substituted value input match the one-by-one backward to fp32 rounding. Both
 * with a single input (Null-text's context: keys and values of a shape together) and with a value
 * input beside the context (StyleDiffusion's). */
static int unet_cross_attentions(const sd_attention_w **attn) {
    const int n = unet.cfg.n_blocks, L = unet.cfg.layers_per_block;
    int k = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < L && unet.down[i].has_attn; j++) attn[k++] = &unet.down[i].attentions[j].attn2;
    attn[k++] = &unet.mid.attention.attn2;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < L + 1 && unet.up[i].has_attn; j++) attn[k++] = &unet.up[i].attentions[j].attn2;
    return k;
}

/* The batched products sd_cross_attention_kv should make: per input, its weights grouped by shape,
 * each group in chunks of SD_LINEAR_MANY_MAX. `same_input`: keys and values read one input (so a
 * layer's two projections join one group), else keys one input and values another. */
static long expected_products(const sd_attention_w *const *attn, int n, int same_input) {
    long products = 0;
    for (int part = 0; part < (same_input ? 1 : 2); part++) {
        int done[SD_UNET_MAX_TRANSFORMERS] = {0};
        for (int i = 0; i < n; i++) {
            if (done[i]) continue;
            int size = 0;
            for (int j = i; j < n; j++)
                if (sd_same_shape(attn[j]->to_k.weight, attn[i]->to_k.weight)) size += same_input ? 2 : 1, done[j] = 1;
            products += (size + SD_LINEAR_MANY_MAX - 1) / SD_LINEAR_MANY_MAX;
        }
    }
    return products;
}

static void test_cross_attention_projections(void **state) {
    (void)state;
    const sd_attention_w *attn[SD_UNET_MAX_TRANSFORMERS];
    const int n = unet_cross_attentions(attn);
    const int64_t S = 7, D = unet.cfg.cross_attention_dim, cs[3] = {1, S, D};
    sd_tensor *ch = sd_tensor_new(SD_F32, 3, cs), *vh = sd_tensor_new(SD_F32, 3, cs);
    testutil_fill_normal(sd_f32(ch), sd_numel(ch), 941, 1.0f);
    testutil_fill_normal(sd_f32(vh), sd_numel(vh), 942, 1.0f);
    const sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    projection_counter counter;
    projection_counter_begin(&counter);
    sd_tensor *context = sd_param_new(&ctx, ch, "context"), *value = sd_param_new(&ctx, vh, "value");
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&ctx, tape);
    for (int with_value = 0; with_value < 2; with_value++) {
        sd_tensor *values[SD_UNET_MAX_TRANSFORMERS];
        for (int i = 0; i < n; i++) values[i] = with_value ? value : NULL;
        sd_tensor *host_kv[2][2 * SD_UNET_MAX_TRANSFORMERS], *grads[2][2];
        long batched[2], single[2], grouped[2], gsingle[2];
        int nodes[2];
        for (int one_by_one = 0; one_by_one < 2; one_by_one++) {
            projections_single = projections_batched = grads_single = grads_grouped = 0;
            sd_tensor *k[SD_UNET_MAX_TRANSFORMERS], *v[SD_UNET_MAX_TRANSFORMERS];
            if (!one_by_one) {
                assert_sd_ok(sd_cross_attention_kv(&ctx, attn, n, context, values, k, v));
            } else {
                for (int i = 0; i < n; i++) {
                    k[i] = sd_linear(&ctx, context, &attn[i]->to_k);
                    v[i] = sd_linear(&ctx, with_value ? value : context, &attn[i]->to_v);
                }
            }
            batched[one_by_one] = projections_batched, single[one_by_one] = projections_single;
            nodes[one_by_one] = sd_tape_size(tape);
            /* L = Σ_i mse(k_i ⊙ k_i, v_i): every projection's gradient matters */
            sd_tensor *loss = NULL;
            for (int i = 0; i < n; i++) {
                sd_tensor *term = sd_mse(&ctx, sd_mul(&ctx, k[i], k[i]), v[i]);
                loss = loss ? sd_add(&ctx, loss, term) : term;
            }
            assert_sd_ok(sd_backward(&ctx, loss));
            for (int i = 0; i < n; i++) {
                host_kv[one_by_one][2 * i] = sd_download_new(&ctx, k[i]);
                host_kv[one_by_one][2 * i + 1] = sd_download_new(&ctx, v[i]);
            }
            grads[one_by_one][0] = sd_download_new(&ctx, context->grad);
            grads[one_by_one][1] = with_value ? sd_download_new(&ctx, value->grad) : NULL;
            grouped[one_by_one] = grads_grouped, gsingle[one_by_one] = grads_single;
            sd_tape_reset(tape);
        }
        const long want = expected_products(attn, n, !with_value);
        const double g_ctx = testutil_max_rel_err(sd_f32(grads[0][0]), sd_f32(grads[1][0]), sd_numel(grads[0][0]));
        const double g_val = with_value ? testutil_max_rel_err(sd_f32(grads[0][1]), sd_f32(grads[1][1]),
                                                               sd_numel(grads[0][1]))
                                        : 0.0;
        print_message("    %d cross-attentions, %s: %ld batched product(s) (%ld expected) and %ld single (one by one: "
                      "%ld); data gradients in %ld grouped product(s), %ld single; gradients vs one by one: context "
                      "%.3g, value %.3g\n",
                      n, with_value ? "values from a second input" : "keys and values of the context", batched[0],
                      want, single[0], single[1], grouped[0], gsingle[0], g_ctx, g_val);
        assert_int_equal(batched[0], want);
        assert_int_equal(single[0], 0);
        assert_int_equal(single[1], 2 * n);
        assert_int_equal(nodes[0], nodes[1]);
        /* the backward groups runs of one input and shape up to SD_LINEAR_MANY_MAX: a shape whose
         * projections were chunked may regroup differently, never into more products */
        assert_true(grouped[0] >= 1 && grouped[0] <= want);
        assert_int_equal(gsingle[0], 0);
        for (int i = 0; i < 2 * n; i++)
            assert_memory_equal(sd_f32(host_kv[0][i]), sd_f32(host_kv[1][i]), sd_nbytes(host_kv[0][i]));
        assert_true(g_ctx < 1e-6 && g_val < 1e-6); /* the same terms, summed in another order in fp32 */
        for (int r = 0; r < 2; r++) {
            for (int i = 0; i < 2 * n; i++) sd_tensor_free(host_kv[r][i]);
            sd_tensor_free(grads[r][0]);
            sd_tensor_free(grads[r][1]);
        }
    }
    /* misuse names itself */
    sd_tensor *k[SD_UNET_MAX_TRANSFORMERS], *v[SD_UNET_MAX_TRANSFORMERS];
    assert_int_equal(sd_cross_attention_kv(&ctx, attn, n, NULL, NULL, k, v), SD_ERR_INTERNAL);
    assert_non_null(strstr(sd_last_error(), "no context"));
    ctx.status = SD_OK;
    sd_ctx_set_tape(&ctx, NULL);
    sd_tape_free(tape);
    projection_counter_end(&counter);
    sd_tensor_free(context), sd_tensor_free(value);
    sd_tensor_free(ch), sd_tensor_free(vh);
    sd_arena_reset(ctx.arena, mark);
}

/* The resnets' time projections of a call (of the F32 time embedding, on the weights' fp16 copies
 * in fast mode) go in one batched product per weight shape, biases included; the time embedding's
 * own two linears stay single. */
static void test_time_projections_grouped(void **state) {
    (void)state;
    const small_unet_inputs in = small_unet_inputs_load();
    sd_tensor *sample = in.sample, *context = in.context, *x = in.x, *cond = in.cond;
    const sd_arena_mark mark = in.mark;
    sd_tensor *f32 = sd_download_new(&ctx, sd_unet_forward(&ctx, &unet, x, 500.0f, cond));
    projection_counter counter;
    projection_counter_begin(&counter);
    projections_single = projections_batched = 0;
    sd_tensor *f16 = sd_download_new(&ctx, sd_unet_forward(&ctx, &unet, x, 500.0f, cond));
    projection_counter_end(&counter);
    assert_sd_ok(sd_ctx_status(&ctx));
    /* expected: the resnets' projection weights grouped by shape, chunks of SD_LINEAR_MANY_MAX */
    const sd_resnet *rs[SD_UNET_MAX_RESNETS];
    int n = 0;
    for (int i = 0; i < unet.cfg.n_blocks; i++) {
        for (int j = 0; j < unet.cfg.layers_per_block; j++) rs[n++] = &unet.down[i].resnets[j];
        for (int j = 0; j < unet.cfg.layers_per_block + 1; j++) rs[n++] = &unet.up[i].resnets[j];
    }
    rs[n++] = &unet.mid.resnets[0], rs[n++] = &unet.mid.resnets[1];
    long want = 0;
    int done[SD_UNET_MAX_RESNETS] = {0};
    for (int i = 0; i < n; i++) {
        if (done[i]) continue;
        int size = 0;
        for (int j = i; j < n; j++)
            if (sd_same_shape(rs[j]->time_emb_proj.weight, rs[i]->time_emb_proj.weight)) size++, done[j] = 1;
        want += (size + SD_LINEAR_MANY_MAX - 1) / SD_LINEAR_MANY_MAX;
    }
    const double rel = testutil_max_rel_err(sd_f32(f16), sd_f32(f32), sd_numel(f32));
    print_message("    %d time projections: %ld batched product(s) (%ld expected), %ld single linear(s) on fp16 "
                  "weights; eps vs the F32 forward %.3g\n", n, projections_batched, want, projections_single, rel);
    assert_int_equal(projections_batched, want);
    assert_int_equal(projections_single, 2); /* time_embedding.linear_1 and linear_2 */
    assert_true(rel < F16_TOL);
    sd_tensor_free(f32);
    sd_tensor_free(f16);
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(sample);
    sd_tensor_free(context);
}

static void test_f16_outside_the_unet_fails(void **state) {
    (void)state;
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *x = sd_new4(&c, 2, 2, 3, 0, 0);
    assert_sd_ok(c.be->fill(sd_f32(x), 0.5f, 6));
    sd_tensor *h = sd_to_dtype(&c, x, SD_F16);
    assert_non_null(h);
    assert_int_equal(h->dtype, SD_F16);
    sd_tensor *back = sd_to_dtype(&c, h, SD_F32);
    assert_non_null(back);
    assert_true(sd_f32(back)[5] == 0.5f);
    assert_null(sd_silu(&c, h));
    assert_int_equal(sd_ctx_status(&c), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "unary: F16 input"));
    sd_ctx_free(&c);
}

/* The UNet prefix (sd_unet_prefix: what a call computes before its context enters, made once per
 * timestep by the inversions' iterations): a call from it is the whole call bit for bit, with two
 * contexts from one prefix, in a plain forward and in both methods' gradient steps (Null-text's:
 * the context a leaf; StyleDiffusion's: a leaf value input under the value-capture hook), with F32
 * and with fp16 step storage; the step from the prefix runs conv_in, the first resnet's two
 * convolutions and the first self-attention no more; a prefix records nothing on the steps' tape;
 * and misuse fails naming what is wrong. */
typedef struct prefix_run {
    float loss;
    sd_tensor *eps, *grad; /* host copies */
    int64_t convs, attentions;
} prefix_run;

/* One step at t = 500: eps of (x, cond) with `leaf` the context (value_step 0) or the value input
 * (value_step 1), L = mse(eps, x), backward; from `prefix` when given, else the whole call. */
static prefix_run prefix_step(sd_tensor *x, sd_tensor *cond, sd_tensor *leaf, int value_step, sd_unet_prefix *prefix,
                              sd_tape *tape) {
    prefix_run r = {0};
    sd_profile prof;
    const sd_backend *inner = ctx.be;
    ctx.be = sd_backend_profiled(inner, &prof);
    sd_value_capture_hook hook;
    sd_value_capture_hook_init(&hook, leaf, 0);
    sd_ctx_set_tape(&ctx, tape);
    ctx.hook = value_step ? &hook.base : NULL;
    sd_tensor *context = value_step ? cond : leaf;
    sd_tensor *eps = prefix ? sd_unet_forward_from(&ctx, &unet, prefix, context)
                            : sd_unet_forward(&ctx, &unet, x, 500.0f, context);
    ctx.hook = NULL;
    r.convs = prof.calls[SD_PROF_CONV];
    r.attentions = prof.calls[SD_PROF_ATTENTION];
    sd_tensor *loss = sd_mse(&ctx, eps, x);
    assert_sd_ok(sd_backward(&ctx, loss));
    r.loss = sd_item(&ctx, loss);
    r.eps = sd_download_new(&ctx, eps);
    r.grad = sd_download_new(&ctx, leaf->grad);
    sd_tape_reset(tape);
    sd_ctx_set_tape(&ctx, NULL);
    ctx.be = inner;
    assert_sd_ok(sd_ctx_status(&ctx));
    return r;
}

static void assert_same_run(const prefix_run *a, const prefix_run *b) {
    assert_memory_equal(&a->loss, &b->loss, sizeof a->loss);
    assert_memory_equal(sd_f32(a->eps), sd_f32(b->eps), sd_nbytes(a->eps));
    assert_memory_equal(sd_f32(a->grad), sd_f32(b->grad), sd_nbytes(a->grad));
}

static void free_run(prefix_run *r) {
    sd_tensor_free(r->eps);
    sd_tensor_free(r->grad);
}

static int wants_first_self_attention(sd_attn_hook *h, const sd_attn_site *s) {
    (void)h;
    return !s->is_cross && s->layer == 0;
}

static sd_tensor *keep_probs(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *p) {
    (void)h, (void)c, (void)s;
    return p;
}

static void test_unet_prefix(void **state) {
    (void)state;
    const small_unet_inputs in = small_unet_inputs_load();
    sd_tensor *sample = in.sample, *context = in.context, *x = in.x, *cond = in.cond;
    const sd_arena_mark mark = in.mark;
    sd_tensor *other = sd_tensor_clone(context);
    for (int64_t i = 0; i < sd_numel(other); i++) sd_f32(other)[i] = -0.5f * sd_f32(other)[i] + 0.25f;
    sd_tensor *uncond = sd_upload(&ctx, other);
    sd_tensor *tvec = sd_new4(&ctx, 1, 1, 0, 0, 0);
    assert_sd_ok(ctx.be->fill(sd_f32(tvec), 500.0f, 1));
    sd_unet_prefix *prefix = calloc(1, sizeof *prefix);
    assert_non_null(prefix);

    /* a plain forward: two contexts from one prefix */
    assert_sd_ok(sd_unet_prefix_compute(&ctx, &unet, x, tvec, prefix));
    for (int k = 0; k < 2; k++) {
        sd_tensor *ctxk = k ? uncond : cond;
        sd_tensor *whole = sd_download_new(&ctx, sd_unet_forward(&ctx, &unet, x, 500.0f, ctxk));
        sd_tensor *from = sd_download_new(&ctx, sd_unet_forward_from(&ctx, &unet, prefix, ctxk));
        assert_sd_ok(sd_ctx_status(&ctx));
        assert_memory_equal(sd_f32(whole), sd_f32(from), sd_nbytes(whole));
        sd_tensor_free(whole);
        sd_tensor_free(from);
    }

    /* gradient steps: F32 storage, then fp16 step storage (fast mode's SD_STEP_ACTIVATIONS=f16) */
    sd_tape *tape = sd_tape_new();
    sd_tensor *leaf_u = sd_param_new(&ctx, context, "null embedding");
    sd_tensor *leaf_v = sd_param_new(&ctx, other, "value input"); /* not the keys' context */
    for (int f16 = 0; f16 < 2; f16++) {
        ctx.activations = f16 ? SD_F16 : SD_F32;
        ctx.channels_last = f16;
        ctx.f16_steps = f16;
        assert_sd_ok(sd_unet_prefix_for_tape(&ctx, &unet, x, tvec, tape, prefix));
        assert_int_equal(sd_tape_size(tape), 0);
        assert_int_equal(prefix->storage, f16 ? SD_F16 : SD_F32);
        /* the steps store as forwards do: the steps' prefix is also the forwards' (the methods'
         * eps_c, eps_u and advance), bit for bit the whole call */
        assert_int_equal(sd_ctx_steps_store_as_forwards(&ctx), 1);
        sd_tensor *whole_fwd = sd_download_new(&ctx, sd_unet_forward(&ctx, &unet, x, 500.0f, uncond));
        sd_tensor *from_fwd = sd_download_new(&ctx, sd_unet_forward_from(&ctx, &unet, prefix, uncond));
        assert_sd_ok(sd_ctx_status(&ctx));
        assert_memory_equal(sd_f32(whole_fwd), sd_f32(from_fwd), sd_nbytes(whole_fwd));
        sd_tensor_free(whole_fwd);
        sd_tensor_free(from_fwd);
        for (int value_step = 0; value_step < 2; value_step++) {
            sd_tensor *leaf = value_step ? leaf_v : leaf_u;
            prefix_run whole = prefix_step(x, cond, leaf, value_step, NULL, tape);
            prefix_run from = prefix_step(x, cond, leaf, value_step, prefix, tape);
            prefix_run again = prefix_step(x, cond, leaf, value_step, prefix, tape);
            print_message("    %s step, %s storage: loss %.9g, from the prefix %lld convolutions and %lld attentions "
                          "(whole call %lld and %lld)\n", value_step ? "value" : "context", f16 ? "fp16" : "F32",
                          (double)whole.loss, (long long)from.convs, (long long)from.attentions,
                          (long long)whole.convs, (long long)whole.attentions);
            assert_same_run(&whole, &from);
            assert_same_run(&whole, &again);
            /* conv_in and the first resnet's two; the first self-attention */
            assert_int_equal(whole.convs - from.convs, 3);
            assert_int_equal(whole.attentions - from.attentions, 1);
            free_run(&whole);
            free_run(&from);
            free_run(&again);
        }
    }

    /* misuse */
    ctx.f16_steps = 0; /* a step that keeps F32 activations, from a prefix of fp16 maps */
    assert_int_equal(sd_ctx_steps_store_as_forwards(&ctx), 0); /* fp16 forwards, F32 steps */
    sd_ctx_set_tape(&ctx, tape);
    assert_null(sd_unet_forward_from(&ctx, &unet, prefix, cond));
    sd_ctx_set_tape(&ctx, NULL);
    assert_int_equal(ctx.status, SD_ERR_INTERNAL);
    assert_true(testutil_contains(sd_last_error(), "the prefix stores F16 maps, this call would store F32"));
    ctx.status = SD_OK;
    ctx.activations = SD_F32;
    ctx.channels_last = 0;
    ctx.f16_steps = 0;
    assert_sd_ok(sd_unet_prefix_compute(&ctx, &unet, x, tvec, prefix));
    sd_attn_hook hook = {.wants_probs = wants_first_self_attention, .edit_probs = keep_probs};
    ctx.hook = &hook;
    assert_null(sd_unet_forward_from(&ctx, &unet, prefix, cond));
    ctx.hook = NULL;
    assert_true(testutil_contains(sd_last_error(), "acts on the first self-attention"));
    ctx.status = SD_OK;
    sd_tensor *bad = sd_new4(&ctx, 3, 2, 77, 32, 0);
    assert_null(sd_unet_forward_from(&ctx, &unet, prefix, bad)); /* batch 2 against the prefix's 1 */
    assert_int_equal(ctx.status, SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "does not fit a call of batch 1"));
    ctx.status = SD_OK;
    sd_tensor *leaf_x = sd_param_new(&ctx, sample, "latent");
    sd_ctx_set_tape(&ctx, tape);
    assert_int_equal(sd_unet_prefix_compute(&ctx, &unet, leaf_x, tvec, prefix), SD_ERR_INTERNAL);
    sd_ctx_set_tape(&ctx, NULL);
    assert_true(testutil_contains(sd_last_error(), "needs a gradient"));
    sd_tensor_free(leaf_x);
    ctx.status = SD_OK;
    memset(prefix, 0, sizeof *prefix);
    assert_null(sd_unet_forward_from(&ctx, &unet, prefix, cond));
    assert_true(testutil_contains(sd_last_error(), "was not computed"));
    ctx.status = SD_OK;

    sd_tape_free(tape);
    sd_tensor_free(leaf_u);
    sd_tensor_free(leaf_v);
    sd_tensor_free(other);
    free(prefix);
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(sample);
    sd_tensor_free(context);
}

static void test_vae(void **state) {
    (void)state;
    sd_tensor *x = testutil_fixture("tiny_vae", "encode_in");
    sd_tensor *want_mean = testutil_fixture("tiny_vae", "posterior_mean");
    sd_tensor *want_logvar = testutil_fixture("tiny_vae", "posterior_logvar");
    sd_tensor *z = testutil_fixture("tiny_vae", "decode_in");
    sd_tensor *want_img = testutil_fixture("tiny_vae", "decode_out");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *logvar = NULL;
    sd_tensor *mean = sd_vae_encode(&ctx, &vae, sd_upload(&ctx, x), &logvar);
    sd_tensor *img = sd_vae_decode(&ctx, &vae, sd_upload(&ctx, z));
    assert_sd_ok(sd_ctx_status(&ctx));
    testutil_assert_close(mean, want_mean, TOL, "vae posterior mean");
    testutil_assert_close(logvar, want_logvar, TOL, "vae posterior logvar");
    testutil_assert_close(img, want_img, TOL, "vae decode");
    sd_arena_reset(ctx.arena, mark);
    sd_tensor *all[] = {x, want_mean, want_logvar, z, want_img};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

static void test_bad_inputs_fail_cleanly(void **state) {
    (void)state;
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    /* a latent with the wrong channel count */
    sd_tensor *x = sd_new4(&c, 4, 1, 3, 64, 64), *context = sd_new4(&c, 3, 1, 77, 32, 0);
    assert_null(sd_unet_forward(&c, &unet, x, 10.0f, context));
    assert_int_equal(c.status, SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "unet: latent (1, 3, 64, 64)"));
    sd_ctx_free(&c);
    /* an image side the VAE cannot halve three times */
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *img = sd_new4(&c, 4, 1, 3, 100, 100);
    assert_null(sd_vae_encode(&c, &vae, img, NULL));
    assert_true(testutil_contains(sd_last_error(), "multiples of 8"));
    sd_ctx_free(&c);
}

/* Builds a weight store holding every tensor the oracle lists for the full SD v1.5 part (names and
 * shapes from diffusers/transformers), zero-filled: calloc'd pages are never touched by binding, so
 * the 3.4 GB UNet costs no memory here. Optionally drops or reshapes one tensor. */
static sd_weights *sd15_store(const char *part, const char *drop, const char *reshape) {
    char *json;
    size_t len;
    if (sd_read_file("tests/fixtures/sd15_names_diffusers.json", &json, &len)) fail_msg("%s", sd_last_error());
    cJSON *doc = cJSON_Parse(json);
    free(json);
    cJSON *list = cJSON_GetObjectItem(doc, part);
    assert_non_null(list);
    sd_weights *w = sd_weights_new(part);
    cJSON *item;
    cJSON_ArrayForEach(item, list) {
        const char *name = cJSON_GetArrayItem(item, 0)->valuestring;
        if (drop && !strcmp(name, drop)) continue;
        cJSON *dims = cJSON_GetArrayItem(item, 1);
        int64_t shape[SD_MAX_DIMS];
        int nd = cJSON_GetArraySize(dims);
        for (int i = 0; i < nd; i++) shape[i] = (int64_t)cJSON_GetArrayItem(dims, i)->valuedouble;
        if (reshape && !strcmp(name, reshape)) shape[0] += 1;
        sd_tensor *t = sd_tensor_new(SD_F32, nd, shape);
        assert_non_null(t);
        assert_sd_ok(sd_weights_add(w, name, t));
    }
    cJSON_Delete(doc);
    return w;
}

static void test_full_sd15_binds_every_tensor(void **state) {
    (void)state;
    sd_unet_config uc;
    sd_vae_config vc;
    sd_clip_text_config tc;
    sd_unet_config_sd15(&uc);
    sd_vae_config_sd15(&vc);
    sd_clip_text_config_sd15(&tc);
    const char *unused = NULL;

    sd_weights *w = sd15_store("unet", NULL, NULL);
    sd_unet *u = malloc(sizeof *u);
    assert_sd_ok(sd_unet_bind(u, &uc, w));
    assert_int_equal(sd_weights_unused(w, &unused), 0);
    print_message("    unet: bound all %d tensors\n", sd_weights_count(w));
    sd_weights_free(w);

    w = sd15_store("vae", NULL, NULL);
    sd_vae *v = malloc(sizeof *v);
    assert_sd_ok(sd_vae_bind(v, &vc, w));
    assert_int_equal(sd_weights_unused(w, &unused), 0);
    print_message("    vae: bound all %d tensors\n", sd_weights_count(w));
    sd_weights_free(w);

    w = sd15_store("text", NULL, NULL);
    sd_clip_text t;
    assert_sd_ok(sd_clip_text_bind(&t, &tc, w));
    assert_int_equal(sd_weights_unused(w, &unused), 0);
    print_message("    text: bound all %d tensors\n", sd_weights_count(w));
    sd_clip_text_release(&t);
    sd_weights_free(w);

    /* a missing tensor and a wrong-shaped one are reported by name */
    w = sd15_store("unet", "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_v.weight", NULL);
    assert_sd_fails(sd_unet_bind(u, &uc, w), SD_ERR_MISSING,
                    "missing tensor 'up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_v.weight'");
    sd_weights_free(w);
    w = sd15_store("vae", NULL, "decoder.up_blocks.3.resnets.0.conv_shortcut.weight");
    assert_sd_fails(sd_vae_bind(v, &vc, w), SD_ERR_SHAPE, "decoder.up_blocks.3.resnets.0.conv_shortcut.weight");
    sd_weights_free(w);
    free(u);
    free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_encoder),
        cmocka_unit_test(test_time_embedding),
        cmocka_unit_test(test_unet_t981),
        cmocka_unit_test(test_unet_t1), cmocka_unit_test(test_unet_blocks_write_results_in_place),
        cmocka_unit_test(test_unet_32x32_t500),
        cmocka_unit_test(test_attention_hook_and_maps),
        cmocka_unit_test(test_unet_f16_storage),
        cmocka_unit_test(test_unet_channels_last),
        cmocka_unit_test(test_conv_epilogue_in_a_gradient_step),
        cmocka_unit_test(test_batched_projections_in_a_gradient_step),
        cmocka_unit_test(test_f16_gradient_step),
        cmocka_unit_test(test_cross_attention_projections),
        cmocka_unit_test(test_time_projections_grouped),
        cmocka_unit_test(test_f16_outside_the_unet_fails),
        cmocka_unit_test(test_unet_prefix),
        cmocka_unit_test(test_vae),
        cmocka_unit_test(test_bad_inputs_fail_cleanly),
        cmocka_unit_test(test_full_sd15_binds_every_tensor),
    };
    testutil_apply_filter();
    return cmocka_run_group_tests_name("models vs oracle", tests, setup, teardown);
}
