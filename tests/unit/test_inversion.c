/* test_inversion.c: the inversion methods on the tiny model.
 *  - the first two timesteps of StyleDiffusion (both losses, warm start, trajectory advance) and
 *    of Null-text inversion against torch (tests/oracle/gen_65_methods.py): every iteration's loss,
 *    the trained mapping networks and null embeddings;
 *  - a whole (shortened) inversion per method: save, load, reconstruct; DDIM / NPI reconstruct
 *    within float noise of the DDIM round trip;
 *  - bad input: a NaN stops the optimisation naming the timestep and iteration; a file from
 *    another model is refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd/clip_vision.h"
#include "sd/inversion.h"
#include "sd/presets.h"
#include "testutil.h"

#define SIZE 256
/* Trained variables after 5-10 Adam steps: Adam divides by sqrt(v), so in the few entries whose
 * gradient is near zero, float rounding becomes a visible update difference (measured up to 8e-4
 * of the largest entry), while every loss along the way agrees with torch to ~1e-6. */
#define TRAINED_TOL 2e-3

static sd_model model;
static sd_clip_vision clip;
static sd_ctx ctx;
static sd_tensor *image;       /* (1, 3, 256, 256) in [-1, 1], keep arena */
static sd_image image_u8;
static char tmp_dir[64];

static int setup(void **state) {
    (void)state;
    setenv("STYLEDIFF_HOME", ".", 1);
    if (sd_model_load("models/tiny", &model) || sd_clip_vision_load("models/tiny-clip-vision", &clip) ||
        sd_ctx_init_cpu(&ctx) || sd_image_load_512("data/images/chelsea.png", 0, 0, 0, 0, SIZE, &image_u8) ||
        testutil_make_tmpdir(tmp_dir, sizeof tmp_dir, "sd_inversion_")) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    image = sd_keep(&ctx, sd_new4(&ctx, 4, 1, 3, SIZE, SIZE));
    return image && sd_image_to_tensor(&image_u8, image) == SD_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    sd_clip_vision_release(&clip);
    sd_model_free(&model);
    sd_image_free(&image_u8);
    return testutil_remove_tree(tmp_dir);
}

static int reset_status(void **state) {
    (void)state;
    ctx.status = SD_OK;
    ctx.hook = NULL;
    ctx.tape = NULL;
    return 0;
}

static void expect_loss(float got, float want, double tol, const char *what, int i, int j) {
    const double rel = fabs((double)got - want) / fabs(want);
    print_message("    %s timestep %d iteration %d: %.7g vs torch %.7g (rel %.2g)\n", what, i, j, got, want, rel);
    if (!(rel <= tol)) fail_msg("%s timestep %d iteration %d: loss %.7g, torch %.7g", what, i, j, got, want);
}

static void test_stylediffusion_first_timesteps(void **state) {
    (void)state;
    sd_tensor *want_features = testutil_fixture("tiny_methods", "sd_features");
    sd_tensor *features = sd_keep(&ctx, sd_clip_vision_encode(&ctx, &clip, image));
    assert_sd_ok(sd_ctx_status(&ctx));
    testutil_assert_close(features, want_features, 1e-4, "CLIP image features E(x)");

    sd_tensor *init[SD_MAP_N_PARAMS];
    for (int p = 0; p < SD_MAP_N_PARAMS; p++) {
        char name[96];
        snprintf(name, sizeof name, "map_%s", sd_mapping_param_names[p]);
        init[p] = testutil_fixture("tiny_methods", name);
    }
    sd_invert_options o;
    sd_invert_options_default(SD_INVERT_STYLEDIFFUSION, &o);
    o.n_steps = 10;   /* the oracle's shortened schedule */
    o.lr = 1e-3;      /* see tests/oracle/gen_65_methods.py for why not the reference's 1e-2 */
    o.inner_steps = 5;
    o.stop_after = 2;
    o.mapping_init = init;
    sd_inversion inv;
    assert_sd_ok(sd_invert(&ctx, &model, &o, image, "a cat sitting on a wooden floor", features, &inv));

    sd_tensor *losses = testutil_fixture("tiny_methods", "sd_losses"); /* (2, 5) */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(inv.stats[i].iterations, 5);
        expect_loss(inv.stats[i].first_loss, sd_f32(losses)[i * 5], 1e-4, "stylediffusion", i, 0);
        expect_loss(inv.stats[i].last_loss, sd_f32(losses)[i * 5 + 4], 1e-4, "stylediffusion", i, 4);
        for (int p = 0; p < SD_MAP_N_PARAMS; p++) {
            /* the biases before BatchNorm have zero gradients up to rounding, so Adam moves them
             * by noise (see test_autograd.c): they do not change the network's output */
            if (p == SD_MAP_START_B || p == SD_MAP_BLOCK_B) continue;
            char name[96];
            snprintf(name, sizeof name, "sd_after%d_%s", i, sd_mapping_param_names[p]);
            sd_tensor *want = testutil_fixture("tiny_methods", name);
            sd_tensor view = sd_view(inv.mapping[i][p], want->ndim, want->shape);
            testutil_assert_close(&view, want, TRAINED_TOL, name);
            sd_tensor_free(want);
        }
    }
    sd_tensor_free(losses);
    for (int p = 0; p < SD_MAP_N_PARAMS; p++) sd_tensor_free(init[p]);
    sd_tensor_free(want_features);
    sd_inversion_free(&inv);
}

static void test_nulltext_first_timesteps(void **state) {
    (void)state;
    sd_invert_options o;
    sd_invert_options_default(SD_INVERT_NULLTEXT, &o);
    o.n_steps = 10; /* the oracle's shortened schedule */
    o.stop_after = 2;
    sd_inversion inv;
    assert_sd_ok(sd_invert(&ctx, &model, &o, image, "a cat sitting on a wooden floor", NULL, &inv));
    sd_tensor *losses = testutil_fixture("tiny_methods", "nt_losses"); /* (2, 10) */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(inv.stats[i].iterations, 10);
        expect_loss(inv.stats[i].first_loss, sd_f32(losses)[i * 10], 1e-4, "nulltext", i, 0);
        expect_loss(inv.stats[i].last_loss, sd_f32(losses)[i * 10 + 9], 1e-4, "nulltext", i, 9);
        char name[32];
        snprintf(name, sizeof name, "nt_null%d", i);
        sd_tensor *want = testutil_fixture("tiny_methods", name);
        testutil_assert_close(inv.null_embeddings[i], want, TRAINED_TOL, name);
        sd_tensor_free(want);
    }
    sd_tensor_free(losses);
    /* the phases are timed apart and add up: the encoders, the DDIM inversion, then each optimised
     * timestep (what `invert` reports per timestep and `bench invert` sets beside PyTorch's loops) */
    assert_true(inv.seconds_encode > 0.0 && inv.seconds_ddim > 0.0);
    const double phases = inv.seconds_encode + inv.seconds_ddim + inv.stats[0].seconds + inv.stats[1].seconds;
    print_message("    encode %.3f s + DDIM inversion %.3f s + 2 timesteps %.3f s <= total %.3f s\n", inv.seconds_encode,
                  inv.seconds_ddim, inv.stats[0].seconds + inv.stats[1].seconds, inv.seconds_total);
    assert_true(phases <= inv.seconds_total + 1e-6);
    sd_inversion_free(&inv);
}

/* A short run of a method: invert, save, load, reconstruct; returns the latent MSE vs z0. */
static double roundtrip(sd_invert_method method, int steps, int inner, sd_inversion *loaded) {
    sd_invert_options o;
    sd_invert_options_default(method, &o);
    o.n_steps = steps;
    o.inner_steps = inner;
    sd_tensor *features = method == SD_INVERT_STYLEDIFFUSION ? sd_keep(&ctx, sd_clip_vision_encode(&ctx, &clip, image)) : NULL;
    sd_inversion inv;
    assert_sd_ok(sd_invert(&ctx, &model, &o, image, "a cat sitting on a wooden floor", features, &inv));
    inv.image_hash = 42;
    inv.image_size = SIZE;
    char path[128];
    snprintf(path, sizeof path, "%s/%s.safetensors", tmp_dir, sd_invert_method_name(method));
    assert_sd_ok(sd_inversion_save(&inv, path));
    assert_sd_ok(sd_inversion_load(path, loaded));
    assert_int_equal(loaded->method, method);
    assert_int_equal(loaded->n_steps, steps);
    assert_string_equal(loaded->prompt, inv.prompt);
    assert_true(loaded->image_hash == 42);
    assert_sd_ok(sd_inversion_check_model(loaded, &model, path));
    testutil_assert_close(loaded->z_T, inv.z_T, 0.0, "z_T after save/load");
    sd_tensor *z = sd_inversion_reconstruct(&ctx, &model, loaded);
    assert_non_null(z);
    sd_tensor *host = sd_download_new(&ctx, z);
    double mse = 0.0;
    for (int64_t i = 0; i < sd_numel(host); i++) mse += pow(sd_f32(host)[i] - sd_f32(inv.z0)[i], 2);
    mse /= (double)sd_numel(host);
    sd_tensor_free(host);
    sd_inversion_free(&inv);
    return mse;
}

static void test_every_method_saves_loads_and_reconstructs(void **state) {
    (void)state;
    sd_inversion loaded;
    const double ddim = roundtrip(SD_INVERT_DDIM, 6, 0, &loaded);
    sd_inversion_free(&loaded);
    const double npi = roundtrip(SD_INVERT_NPI, 6, 0, &loaded);
    sd_inversion_free(&loaded);
    const double nulltext = roundtrip(SD_INVERT_NULLTEXT, 6, 3, &loaded);
    sd_inversion_free(&loaded);
    const double style = roundtrip(SD_INVERT_STYLEDIFFUSION, 4, 2, &loaded);
    assert_non_null(loaded.mapping);
    assert_non_null(loaded.image_features);
    sd_inversion_free(&loaded);
    print_message("    latent MSE of the reconstruction: ddim (cfg 7.5) %.4g, npi %.4g, nulltext %.4g, stylediffusion %.4g\n",
                  ddim, npi, nulltext, style);
    /* NPI samples with the prompt as its negative: CFG collapses to the conditional DDIM round
     * trip, so it must beat plain DDIM at cfg 7.5, and the optimised methods must too. */
    assert_true(npi < ddim);
    assert_true(nulltext < ddim);
    assert_true(isfinite(style));
}

static void test_nan_stops_with_timestep_and_iteration(void **state) {
    (void)state;
    sd_invert_options o;
    sd_invert_options_default(SD_INVERT_NULLTEXT, &o);
    o.n_steps = 4;
    o.inner_steps = 2;
    o.lr = NAN; /* poisons the first update: the second iteration's loss is NaN */
    sd_inversion inv;
    assert_sd_fails(sd_invert(&ctx, &model, &o, image, "a cat", NULL, &inv), SD_ERR_NUMERIC,
                    "timestep 0 (t = 751), iteration 1");
    sd_inversion_free(&inv);
}

static void test_file_from_another_model_is_refused(void **state) {
    (void)state;
    sd_inversion inv;
    char path[128];
    snprintf(path, sizeof path, "%s/npi.safetensors", tmp_dir);
    assert_sd_ok(sd_inversion_load(path, &inv));
    inv.model_fingerprint ^= 1;
    assert_sd_fails(sd_inversion_check_model(&inv, &model, path), SD_ERR_ARG, "made with another model");
    sd_inversion_free(&inv);
    assert_sd_fails(sd_inversion_load("tests/fixtures/tiny_unet.safetensors", &inv), SD_ERR_FORMAT,
                    "not a stylediff inversion");
}

static void test_presets_match_defaults(void **state) {
    (void)state;
    for (int m = SD_INVERT_DDIM; m <= SD_INVERT_STYLEDIFFUSION; m++) {
        sd_method_preset builtin, file;
        sd_method_preset_default((sd_invert_method)m, &builtin);
        sd_method_preset_default((sd_invert_method)m, &file);
        char path[128];
        snprintf(path, sizeof path, "configs/methods/%s.json", sd_invert_method_name((sd_invert_method)m));
        assert_sd_ok(sd_method_preset_load(path, &file));
        assert_memory_equal(&builtin, &file, sizeof builtin);
    }
    char bad[160];
    snprintf(bad, sizeof bad, "%s/bad.json", tmp_dir);
    FILE *f = fopen(bad, "w");
    fputs("{\"steps\": 30, \"tau_x\": 1}", f);
    fclose(f);
    sd_method_preset p;
    sd_method_preset_default(SD_INVERT_NULLTEXT, &p);
    assert_sd_fails(sd_method_preset_load(bad, &p), SD_ERR_FORMAT, "unknown key \"tau_x\"");
    f = fopen(bad, "w");
    fputs("{\"tau_c\": 1.5}", f);
    fclose(f);
    assert_sd_fails(sd_method_preset_load(bad, &p), SD_ERR_FORMAT, "\"tau_c\" must be a number in [0, 1]");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_stylediffusion_first_timesteps, reset_status),
        cmocka_unit_test_setup(test_nulltext_first_timesteps, reset_status),
        cmocka_unit_test_setup(test_every_method_saves_loads_and_reconstructs, reset_status),
        cmocka_unit_test_setup(test_nan_stops_with_timestep_and_iteration, reset_status),
        cmocka_unit_test_setup(test_file_from_another_model_is_refused, reset_status),
        cmocka_unit_test_setup(test_presets_match_defaults, reset_status),
    };
    return cmocka_run_group_tests_name("inversion", tests, setup, teardown);
}
