/* test_ddim.c: the DDIM scheduler, three guided sampling steps and a whole DDIM inversion
 * trajectory on the tiny model, against the oracle (tests/oracle/gen_30_model_fixtures.py).
 * Tolerances: alphas and timesteps exact to float rounding (1e-6); model-driven steps and the
 * 50-step trajectory max relative error 1e-4. */
#include <stdlib.h>
#include <string.h>

#include "sd/methods.h"
#include "testutil.h"

static sd_model_files files;
static sd_model model; /* only unet is bound: the loops need nothing else */
static sd_ctx ctx;

static int setup(void **state) {
    (void)state;
    memset(&model, 0, sizeof model);
    if (sd_model_files_open("models/tiny", "models/tiny/tokenizer", &files) ||
        sd_unet_bind(&model.unet, &files.unet_config, files.unet) || sd_ctx_init_cpu(&ctx)) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    sd_model_files_close(&files);
    return 0;
}

static void test_schedule(void **state) {
    (void)state;
    sd_ddim s;
    assert_sd_ok(sd_ddim_init(&s, 30));
    sd_tensor *ac = testutil_fixture("tiny_ddim", "alphas_cumprod");
    sd_tensor *fin = testutil_fixture("tiny_ddim", "final_alpha_cumprod");
    sd_tensor ours = sd_tensor_wrap(s.alphas_cumprod, SD_F32, 1, ac->shape);
    testutil_assert_close(&ours, ac, 1e-6, "alphas_cumprod");
    assert_true(s.final_alpha_cumprod == sd_f32(fin)[0]);
    const int ns[2] = {30, 50};
    for (int k = 0; k < 2; k++) {
        char name[32];
        snprintf(name, sizeof name, "timesteps_%d", ns[k]);
        sd_tensor *ts = testutil_fixture("tiny_ddim", name);
        assert_sd_ok(sd_ddim_init(&s, ns[k]));
        assert_int_equal(sd_numel(ts), ns[k]);
        for (int i = 0; i < ns[k]; i++) assert_int_equal(s.timesteps[i], ((int64_t *)ts->data)[i]);
        sd_tensor_free(ts);
    }
    assert_int_equal(s.timesteps[0], 981);
    assert_int_equal(s.timesteps[49], 1);
    assert_sd_fails(sd_ddim_init(&s, 0), SD_ERR_ARG, "--steps 0");
    assert_sd_fails(sd_ddim_init(&s, 1001), SD_ERR_ARG, "[1, 1000]");
    sd_tensor_free(ac);
    sd_tensor_free(fin);
}

static void test_three_guided_sampling_steps(void **state) {
    (void)state;
    sd_ddim s;
    assert_sd_ok(sd_ddim_init(&s, 50));
    sd_tensor *context = testutil_fixture("tiny_sample", "context");
    sd_tensor *ts = testutil_fixture("tiny_sample", "timesteps");
    sd_tensor *latent0 = testutil_fixture("tiny_sample", "latent_0");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *ctx_dev = sd_upload(&ctx, context);
    sd_tensor *uncond = sd_slice0(&ctx, ctx_dev, 0, 1), *cond = sd_slice0(&ctx, ctx_dev, 1, 1);
    sd_tensor *z = sd_upload(&ctx, latent0);
    for (int k = 0; k < 3; k++) {
        const int t = (int)((int64_t *)ts->data)[k];
        assert_int_equal(t, s.timesteps[k]);
        char name[32];
        sd_tensor *eps_u = sd_unet_forward(&ctx, &model.unet, z, (float)t, uncond);
        sd_tensor *eps_c = sd_unet_forward(&ctx, &model.unet, z, (float)t, cond);
        sd_tensor *eps = sd_guided_eps(&ctx, &model, z, t, uncond, cond, 7.5f);
        z = sd_ddim_prev_step(&ctx, &s, eps, t, z);
        assert_sd_ok(sd_ctx_status(&ctx));
        const char *parts[4] = {"eps_uncond_%d", "eps_cond_%d", "eps_%d", "latent_%d"};
        sd_tensor *got[4] = {eps_u, eps_c, eps, z};
        for (int p = 0; p < 4; p++) {
            snprintf(name, sizeof name, parts[p], p == 3 ? k + 1 : k);
            sd_tensor *want = testutil_fixture("tiny_sample", name);
            testutil_assert_close(got[p], want, 1e-4, name);
            sd_tensor_free(want);
        }
    }
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(context);
    sd_tensor_free(ts);
    sd_tensor_free(latent0);
}

static void test_inversion_trajectory(void **state) {
    (void)state;
    sd_ddim s;
    assert_sd_ok(sd_ddim_init(&s, 50));
    sd_tensor *context = testutil_fixture("tiny_invert", "context");
    sd_tensor *want = testutil_fixture("tiny_invert", "latents"); /* (51, 1, 4, 32, 32) */
    const int64_t plane = sd_numel(want) / 51;
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_arena_mark keep_mark = sd_arena_get_mark(ctx.keep);
    sd_tensor *z0 = sd_new4(&ctx, 4, 1, 4, 32, 32);
    memcpy(sd_f32(z0), sd_f32(want), (size_t)plane * sizeof(float));
    sd_tensor *latents[51];
    assert_sd_ok(sd_ddim_invert(&ctx, &model, &s, z0, sd_upload(&ctx, context), latents));
    double worst = 0.0;
    for (int k = 0; k <= 50; k++) {
        double err = testutil_max_rel_err(sd_f32(latents[k]), sd_f32(want) + k * plane, plane);
        if (err > worst) worst = err;
        if (!(err <= 1e-4)) fail_msg("inversion latent %d: relative error %g", k, err);
    }
    print_message("    inversion trajectory, 51 latents: worst max rel err %.3g\n", worst);
    sd_arena_reset(ctx.arena, mark);
    sd_arena_reset(ctx.keep, keep_mark);
    sd_tensor_free(context);
    sd_tensor_free(want);
}

/* A DDIM inversion with fp16 UNet activations (the CPU twins of fast mode's storage): close to
 * the F32 trajectory; and a latent that overflows fp16 stops the loop with a message saying so. */
static void test_inversion_fp16_activations(void **state) {
    (void)state;
    sd_ddim s;
    assert_sd_ok(sd_ddim_init(&s, 10));
    sd_tensor *context = testutil_fixture("tiny_invert", "context");
    sd_tensor *want = testutil_fixture("tiny_invert", "latents");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena), keep_mark = sd_arena_get_mark(ctx.keep);
    sd_tensor *z0 = sd_new4(&ctx, 4, 1, 4, 32, 32);
    memcpy(sd_f32(z0), sd_f32(want), (size_t)sd_numel(z0) * sizeof(float));
    sd_tensor *cond = sd_upload(&ctx, context);
    sd_tensor *f32[11], *f16[11];
    assert_sd_ok(sd_ddim_invert(&ctx, &model, &s, z0, cond, f32));
    ctx.activations = SD_F16;
    assert_sd_ok(sd_ddim_invert(&ctx, &model, &s, z0, cond, f16));
    const double err = testutil_max_rel_err(sd_f32(f16[10]), sd_f32(f32[10]), sd_numel(z0));
    print_message("    10-step inversion, fp16 vs F32 activations: z_T max rel err %.3g\n", err);
    assert_true(err > 0.0 && err <= 1e-2);

    for (int64_t i = 0; i < sd_numel(z0); i++) sd_f32(z0)[i] *= 1e7f; /* past fp16's 65504 */
    assert_int_equal(sd_ddim_invert(&ctx, &model, &s, z0, cond, f16), SD_ERR_NUMERIC);
    assert_non_null(strstr(sd_last_error(), "fp16 UNet activations"));
    ctx.activations = SD_F32;
    ctx.status = SD_OK;
    sd_clear_error();
    sd_arena_reset(ctx.arena, mark);
    sd_arena_reset(ctx.keep, keep_mark);
    sd_tensor_free(context);
    sd_tensor_free(want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_three_guided_sampling_steps),
        cmocka_unit_test(test_inversion_trajectory),
        cmocka_unit_test(test_inversion_fp16_activations),
    };
    return cmocka_run_group_tests_name("ddim vs oracle", tests, setup, teardown);
}
