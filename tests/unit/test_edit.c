/* test_edit.c: the editing loop (sd_edit, stylediffusion.md §3.7, §4, §5) end to end on the tiny
 * model against torch (tests/oracle/gen_70_edit.py -> tests/fixtures/tiny_edit.safetensors).
 *
 *  - Null-text: an inversion built in memory from the fixture (z_T, six per-step null embeddings),
 *    word swap cat -> tiger, τ_c 0.8, τ_s 0.5, τ_u 0.5 (P2Plus), LocalBlend cat / tiger, equalizer
 *    tiger x2, N = 6 steps;
 *  - StyleDiffusion: six mapping networks and image features from the fixture, refinement
 *    -> "a fluffy cat ...", τ_v 0.5, τ_c 0.6, τ_s 0.8, τ_u 0.5, equalizer fluffy x2, N = 6.
 *    Both rows of the final latents must match torch (max relative error <= 1e-4; measured ~1.5e-6),
 *    and row 0 must equal sd_inversion_reconstruct of the same inversion (the source row
 *    reproduces it; measured ~1e-6);
 *  - the effect of each self-attention injection (P2Plus's τ_u, the conditional τ_s): the Null-text
 *    edit minus the same edit with that τ = 0, against torch's (it moves the latents by only
 *    ~1e-4..1e-3 of their size on the random model, so the plain comparison cannot see a window
 *    that is one step off; the effect comparison can). On this model LocalBlend's mask is all ones
 *    at every step (flat cross maps, see gen_70_edit.py): its partial-mask arithmetic is tested in
 *    test_p2p.c;
 *  - bad input through sd_edit and `stylediff edit`: a word swap between prompts of different
 *    word counts, a blend word missing from its prompt, a reweighted word missing from the target,
 *    a tau outside [0, 1], an inversion file made with another model: each fails with a message
 *    naming the prompt / word / argument / file (and, for the CLI, a non-zero exit). */
#include <math.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sd/device.h"
#include "sd/edit.h"
#include "testutil.h"

#define FIXTURE "tiny_edit"
#define N_STEPS 6
#define TOL 1e-4
/* row 0 of the batch-2 edit against the batch-1 reconstruction: float noise only (the controller
 * never writes row 0), amplified by the guidance over six steps */
#define RECON_TOL 1e-5
/* the effect of one injection (a difference of two runs, ~1e-4 to ~1e-3 of max|z|), relative to
 * its own largest entry */
#define EFFECT_TOL 2e-2

#define SOURCE "a cat sitting on a wooden floor"
#define NT_TARGET "a tiger sitting on a wooden floor"
#define SD_TARGET "a fluffy cat sitting on a wooden floor"

static sd_model model;
static sd_ctx ctx;
static char tmp_dir[64];
static char stylediff[PATH_MAX];
static sd_tensor *nt_full; /* the Null-text edit's final latents, kept for the injection effects */

static int setup(void **state) {
    (void)state;
    setenv("STYLEDIFF_HOME", ".", 1);
    if (sd_model_load("models/tiny", &model) || sd_ctx_init_cpu(&ctx) ||
        testutil_make_tmpdir(tmp_dir, sizeof tmp_dir, "sd_edit_")) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    sd_set_quiet(1);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    sd_tensor_free(nt_full);
    sd_ctx_free(&ctx);
    sd_model_free(&model);
    return testutil_remove_tree(tmp_dir);
}

static int reset_status(void **state) {
    (void)state;
    ctx.status = SD_OK;
    ctx.hook = NULL;
    ctx.tape = NULL;
    return 0;
}

/* The fixture's inversion of one method, as sd_invert would leave it (heap tensors, freed by
 * sd_inversion_free). z0 is unused by editing: zeros. */
static void fixture_inversion(sd_invert_method method, sd_inversion *inv) {
    memset(inv, 0, sizeof *inv);
    inv->method = method;
    inv->n_steps = N_STEPS;
    inv->guidance = 7.5f;
    inv->prompt = strdup(SOURCE);
    inv->z_T = testutil_fixture(FIXTURE, "z_T");
    inv->z0 = sd_tensor_clone(inv->z_T);
    memset(inv->z0->data, 0, sd_nbytes(inv->z0));
    inv->stats = calloc(N_STEPS, sizeof *inv->stats);
    snprintf(inv->model_id, sizeof inv->model_id, "models/tiny");
    inv->model_fingerprint = model.fingerprint;
    if (method == SD_INVERT_NULLTEXT) {
        sd_tensor *all = testutil_fixture(FIXTURE, "nt_null"); /* (6, 1, 77, D) */
        const int64_t per = sd_numel(all) / N_STEPS;
        inv->null_embeddings = calloc(N_STEPS, sizeof *inv->null_embeddings);
        for (int i = 0; i < N_STEPS; i++) {
            inv->null_embeddings[i] = sd_tensor_new4(SD_F32, 3, 1, all->shape[2], all->shape[3], 0);
            memcpy(inv->null_embeddings[i]->data, sd_f32(all) + i * per, (size_t)per * sizeof(float));
        }
        sd_tensor_free(all);
    } else {
        /* the three conv weight matrices are shared by the six networks (fixture size), the five
         * small tensors are per step */
        inv->image_features = testutil_fixture(FIXTURE, "features");
        inv->mapping = calloc(N_STEPS, sizeof *inv->mapping);
        for (int i = 0; i < N_STEPS; i++)
            for (int p = 0; p < SD_MAP_N_PARAMS; p++) {
                const int shared = p == SD_MAP_START_W || p == SD_MAP_BLOCK_W || p == SD_MAP_END_W;
                char name[96];
                if (shared)
                    snprintf(name, sizeof name, "map_%s", sd_mapping_param_names[p]);
                else
                    snprintf(name, sizeof name, "map%d_%s", i, sd_mapping_param_names[p]);
                inv->mapping[i][p] = testutil_fixture(FIXTURE, name);
            }
    }
}

static void nulltext_options(sd_edit_options *o) {
    sd_edit_options_default(SD_INVERT_NULLTEXT, o);
    o->target = NT_TARGET;
    o->edit = SD_P2P_REPLACE;
    o->tau_c = 0.8f;
    o->tau_s = 0.5f;
    o->tau_u = 0.5f;
    o->blend_source[0] = "cat";
    o->n_blend_source = 1;
    o->blend_target[0] = "tiger";
    o->n_blend_target = 1;
    o->reweight_words[0] = "tiger";
    o->reweight_values[0] = 2.0;
    o->n_reweight = 1;
}

static void stylediffusion_options(sd_edit_options *o) {
    sd_edit_options_default(SD_INVERT_STYLEDIFFUSION, o);
    o->target = SD_TARGET;
    o->edit = SD_P2P_REFINE;
    o->tau_v = 0.5f;
    o->tau_c = 0.6f;
    o->tau_s = 0.8f;
    o->tau_u = 0.5f;
    o->reweight_words[0] = "fluffy";
    o->reweight_values[0] = 2.0;
    o->n_reweight = 1;
}

/* Runs the edit, compares each row with torch and row 0 with the reconstruction. */
static void check_edit(const char *what, sd_invert_method method, const sd_edit_options *o, const char *key) {
    sd_inversion inv;
    fixture_inversion(method, &inv);
    sd_edit_result res = {0};
    assert_sd_ok(sd_edit(&ctx, &model, &inv, o, &res));
    if (method == SD_INVERT_NULLTEXT && !nt_full) nt_full = sd_tensor_clone(res.latents);
    assert_int_equal(res.latents->ndim, 4);
    assert_int_equal(res.latents->shape[0], 2);
    char name[64];
    snprintf(name, sizeof name, "%s_final", key);
    sd_tensor *want = testutil_fixture(FIXTURE, name);
    assert_int_equal(sd_numel(res.latents), sd_numel(want));
    const int64_t row = sd_numel(want) / 2;
    double err[2], diff_rows = 0.0;
    for (int r = 0; r < 2; r++) err[r] = testutil_max_rel_err(sd_f32(res.latents) + r * row, sd_f32(want) + r * row, row);
    /* the edit must have done something: the target row departs from the source row */
    diff_rows = testutil_max_rel_err(sd_f32(res.latents) + row, sd_f32(res.latents), row);

    sd_tensor *z = sd_inversion_reconstruct(&ctx, &model, &inv);
    assert_non_null(z);
    sd_tensor *recon = sd_download_new(&ctx, z);
    assert_sd_ok(sd_ctx_status(&ctx));
    const double err_recon = testutil_max_rel_err(sd_f32(res.latents), sd_f32(recon), row);
    print_message("    %s (%.2f s): final latents vs torch: row 0 (source) max rel err %.2e, row 1 (edit) %.2e; "
                  "row 0 vs sd_inversion_reconstruct %.2e; rows differ by %.2f (relative)\n",
                  what, res.seconds, err[0], err[1], err_recon, diff_rows);
    if (!(err[0] <= TOL)) fail_msg("%s: source row differs from torch: max rel err %.3g > %g", what, err[0], TOL);
    if (!(err[1] <= TOL)) fail_msg("%s: edited row differs from torch: max rel err %.3g > %g", what, err[1], TOL);
    if (!(err_recon <= RECON_TOL))
        fail_msg("%s: source row differs from the reconstruction: max rel err %.3g > %g", what, err_recon, RECON_TOL);
    assert_true(diff_rows > 0.01);
    sd_tensor_free(recon);
    sd_tensor_free(want);
    sd_edit_result_free(&res);
    sd_inversion_free(&inv);
}

static void test_nulltext_edit_matches_torch(void **state) {
    (void)state;
    sd_edit_options o;
    nulltext_options(&o);
    check_edit("null-text, cat -> tiger (replace, P2Plus, LocalBlend, tiger x2)", SD_INVERT_NULLTEXT, &o, "nt");
}

static void test_stylediffusion_edit_matches_torch(void **state) {
    (void)state;
    sd_edit_options o;
    stylediffusion_options(&o);
    check_edit("stylediffusion, + fluffy (refine, tau_v 0.5, P2Plus, fluffy x2)", SD_INVERT_STYLEDIFFUSION, &o, "sd");
}

/* The last error also names these (the word's prompt, the other prompt ...). */
static void expect_named(const char *a, const char *b) {
    if (!testutil_contains(sd_last_error(), a) || (b && !testutil_contains(sd_last_error(), b)))
        fail_msg("message \"%s\" does not mention %s%s%s", sd_last_error(), a, b ? " and " : "", b ? b : "");
    print_message("    ok: %s\n", sd_last_error());
}

/* What one injection does to the edited row, in C and in torch: (full run − run with the injection
 * off), compared relative to its largest entry. A one-step error in the τ_u or τ_s window changes
 * this effect by ~15 % (the latents by only ~2e-5 of max|z|, below the 1e-4 above). */
static void check_effect(const char *what, sd_edit_options *ablated, const char *key, double *err_out) {
    sd_inversion inv;
    fixture_inversion(SD_INVERT_NULLTEXT, &inv);
    sd_edit_result res = {0};
    assert_sd_ok(sd_edit(&ctx, &model, &inv, ablated, &res));
    char name[64];
    snprintf(name, sizeof name, "%s_final", key);
    sd_tensor *want_ablated = testutil_fixture(FIXTURE, name);
    sd_tensor *want_full = testutil_fixture(FIXTURE, "nt_final");
    const int64_t row = sd_numel(want_full) / 2;
    float *got = malloc((size_t)row * sizeof *got), *want = malloc((size_t)row * sizeof *want);
    for (int64_t k = 0; k < row; k++) {
        got[k] = sd_f32(nt_full)[row + k] - sd_f32(res.latents)[row + k];
        want[k] = sd_f32(want_full)[row + k] - sd_f32(want_ablated)[row + k];
    }
    double size = 0.0;
    for (int64_t k = 0; k < row; k++) size = fmax(size, fabs(want[k]));
    const double err = testutil_max_rel_err(got, want, row);
    /* the ablated run on its own must match torch too; row 0 is untouched by either injection */
    const double err_row1 = testutil_max_rel_err(sd_f32(res.latents) + row, sd_f32(want_ablated) + row, row);
    const double err_row0 = testutil_max_rel_err(sd_f32(res.latents), sd_f32(nt_full), row);
    print_message("    %s: moves the edited row by up to %.3g; C vs torch max rel err of that effect %.2e "
                  "(ablated run's row 1 vs torch %.2e; row 0 unchanged: %.1e)\n",
                  what, size, err, err_row1, err_row0);
    if (!(err <= EFFECT_TOL)) fail_msg("%s: effect differs from torch: max rel err %.3g > %g", what, err, EFFECT_TOL);
    if (!(err_row1 <= TOL)) fail_msg("%s off: edited row differs from torch: %.3g > %g", what, err_row1, TOL);
    if (!(err_row0 <= RECON_TOL)) fail_msg("%s: the source row changed: %.3g", what, err_row0);
    *err_out = err;
    free(got);
    free(want);
    sd_tensor_free(want_full);
    sd_tensor_free(want_ablated);
    sd_edit_result_free(&res);
    sd_inversion_free(&inv);
}

/* The same two edits (P2Plus, LocalBlend, reweighting, StyleDiffusion's value substitution) with
 * fp16 activations (fast mode's storage, here through the CPU twins): the controllers' sites run in
 * F32, everything else stores fp16. Both rows stay within F16_EDIT_TOL of torch, and further from
 * it than the F32 edit's 1e-5 (the storage really was fp16). */
#define F16_EDIT_TOL 2e-2
static void check_edit_fp16(const char *what, sd_invert_method method, const sd_edit_options *o, const char *key) {
    sd_inversion inv;
    fixture_inversion(method, &inv);
    sd_edit_result res = {0};
    ctx.activations = SD_F16;
    const sd_status st = sd_edit(&ctx, &model, &inv, o, &res);
    ctx.activations = SD_F32;
    assert_sd_ok(st);
    char name[64];
    snprintf(name, sizeof name, "%s_final", key);
    sd_tensor *want = testutil_fixture(FIXTURE, name);
    const int64_t row = sd_numel(want) / 2;
    double err[2];
    for (int r = 0; r < 2; r++) err[r] = testutil_max_rel_err(sd_f32(res.latents) + r * row, sd_f32(want) + r * row, row);
    print_message("    %s (%.2f s), fp16 activations: vs torch row 0 %.2e, row 1 %.2e\n", what, res.seconds, err[0],
                  err[1]);
    for (int r = 0; r < 2; r++) {
        if (!(err[r] <= F16_EDIT_TOL)) fail_msg("%s (fp16): row %d max rel err %.3g > %g", what, r, err[r], F16_EDIT_TOL);
        assert_true(err[r] > 1e-5);
    }
    sd_tensor_free(want);
    sd_edit_result_free(&res);
    sd_inversion_free(&inv);
}

static void test_edits_with_fp16_activations(void **state) {
    (void)state;
    sd_edit_options o;
    nulltext_options(&o);
    check_edit_fp16("null-text replace", SD_INVERT_NULLTEXT, &o, "nt");
    stylediffusion_options(&o);
    check_edit_fp16("stylediffusion refine", SD_INVERT_STYLEDIFFUSION, &o, "sd");
}

/* A timestep's two passes (unconditional, conditional) read the same latent and timestep, and the
 * controller injects no self-attention at the first level (its limit is (side/2)² queries): they
 * share one UNet prefix (conv_in, the first resnet, the first self-attention), so each step runs 3
 * convolutions and 1 attention fewer than two whole calls, with the same result (the fixture tests
 * above compare it with torch; test_models' test_unet_prefix the prefix with the whole call). */
static void test_passes_share_the_prefix(void **state) {
    (void)state;
    sd_inversion inv;
    fixture_inversion(SD_INVERT_NULLTEXT, &inv);
    sd_edit_options o;
    nulltext_options(&o);
    const sd_backend *inner = ctx.be;
    sd_profile prof;
    /* one whole call of the edit's shape (batch 2) */
    const sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *z = sd_upload(&ctx, inv.z_T), *cond = sd_encode_prompt(&ctx, &model, SOURCE);
    sd_tensor *z2 = sd_concat0(&ctx, z, z), *cond2 = sd_concat0(&ctx, cond, cond);
    ctx.be = sd_backend_profiled(inner, &prof);
    assert_non_null(sd_unet_forward(&ctx, &model.unet, z2, 500.0f, cond2));
    const int64_t call_convs = prof.calls[SD_PROF_CONV];
    ctx.be = inner;
    sd_arena_reset(ctx.arena, mark);
    ctx.be = sd_backend_profiled(inner, &prof);
    sd_edit_result res = {0};
    const sd_status st = sd_edit(&ctx, &model, &inv, &o, &res);
    ctx.be = inner;
    assert_sd_ok(st);
    print_message("    %d steps: %lld convolutions (a whole call: %lld)\n", N_STEPS,
                  (long long)prof.calls[SD_PROF_CONV], (long long)call_convs);
    assert_int_equal(prof.calls[SD_PROF_CONV], N_STEPS * (2 * call_convs - 3));
    sd_edit_result_free(&res);
    sd_inversion_free(&inv);
}

static void test_injection_effects_match_torch(void **state) {
    (void)state;
    if (!nt_full) {
        sd_inversion inv;
        fixture_inversion(SD_INVERT_NULLTEXT, &inv);
        sd_edit_options o;
        nulltext_options(&o);
        sd_edit_result res = {0};
        assert_sd_ok(sd_edit(&ctx, &model, &inv, &o, &res));
        nt_full = sd_tensor_clone(res.latents);
        sd_edit_result_free(&res);
        sd_inversion_free(&inv);
    }
    double err;
    sd_edit_options o;
    nulltext_options(&o);
    o.tau_u = 0.0f;
    check_effect("P2Plus unconditional self-attention injection (tau_u 0.5 vs 0)", &o, "nt_nop2plus", &err);
    nulltext_options(&o);
    o.tau_s = 0.0f;
    check_effect("conditional self-attention injection (tau_s 0.5 vs 0)", &o, "nt_noself", &err);
}

static void test_bad_options_are_named(void **state) {
    (void)state;
    sd_inversion inv;
    fixture_inversion(SD_INVERT_NULLTEXT, &inv);
    sd_edit_result res = {0};
    sd_edit_options o;

    nulltext_options(&o);
    o.target = "a big tiger sitting on a wooden floor";
    assert_sd_fails(sd_edit(&ctx, &model, &inv, &o, &res), SD_ERR_ARG, "same number of words");
    expect_named("a big tiger sitting on a wooden floor", "\"" SOURCE "\"");
    assert_null(res.latents);

    nulltext_options(&o);
    o.blend_source[0] = "dog";
    assert_sd_fails(sd_edit(&ctx, &model, &inv, &o, &res), SD_ERR_ARG, "\"dog\"");
    expect_named("LocalBlend", "\"" SOURCE "\"");

    nulltext_options(&o);
    o.blend_target[0] = "cat";
    assert_sd_fails(sd_edit(&ctx, &model, &inv, &o, &res), SD_ERR_ARG, "\"cat\"");
    expect_named("LocalBlend", "\"" NT_TARGET "\"");

    nulltext_options(&o);
    o.reweight_words[0] = "lion";
    assert_sd_fails(sd_edit(&ctx, &model, &inv, &o, &res), SD_ERR_ARG, "\"lion\"");
    expect_named("\"" NT_TARGET "\"", NULL);

    nulltext_options(&o);
    o.tau_c = 1.5f;
    assert_sd_fails(sd_edit(&ctx, &model, &inv, &o, &res), SD_ERR_ARG, "--tau-c 1.5: must lie in [0, 1]");
    nulltext_options(&o);
    o.tau_u = -0.25f;
    assert_sd_fails(sd_edit(&ctx, &model, &inv, &o, &res), SD_ERR_ARG, "--tau-u -0.25");

    nulltext_options(&o);
    o.target = "";
    assert_sd_fails(sd_edit(&ctx, &model, &inv, &o, &res), SD_ERR_ARG, "--target is empty");

    inv.model_fingerprint ^= 1;
    assert_sd_fails(sd_inversion_check_model(&inv, &model, "other.safetensors"), SD_ERR_ARG,
                    "other.safetensors: made with another model");
    sd_inversion_free(&inv);
}

/* ---- the command line -------------------------------------------------------------------------- */

typedef testutil_run run_result;

static void run(run_result *r, const char *args) { testutil_run_cli(r, stylediff, args); }

static void expect_failure(const char *args, const char *needle, const char *needle2) {
    run_result *r = malloc(sizeof *r);
    run(r, args);
    if (r->status == 0 || r->status >= 128)
        fail_msg("stylediff %s: expected a clean failure, got status %d:\n%s", args, r->status, r->out);
    if (!strstr(r->out, needle) || (needle2 && !strstr(r->out, needle2)))
        fail_msg("stylediff %s: message does not mention \"%s\" and \"%s\":\n%s", args, needle, needle2 ? needle2 : "",
                 r->out);
    const char *line = strstr(r->out, "stylediff");
    if (!line) line = r->out;
    const char *end = strchr(line, '\n');
    print_message("    ok (exit %d): %.*s\n", r->status, (int)(end ? end - line : (long)strlen(line)), line);
    free(r);
}

static void test_cli_refuses_bad_input(void **state) {
    (void)state;
    if (access(stylediff, X_OK) != 0) fail_msg("%s is missing: build it first (make NVCC=)", stylediff);
    sd_inversion inv;
    fixture_inversion(SD_INVERT_NULLTEXT, &inv);
    char good[PATH_MAX], other[PATH_MAX], args[4 * PATH_MAX + 256], out_png[PATH_MAX];
    snprintf(good, sizeof good, "%s/nulltext.safetensors", tmp_dir);
    snprintf(other, sizeof other, "%s/other_model.safetensors", tmp_dir);
    snprintf(out_png, sizeof out_png, "%s/edit.png", tmp_dir);
    assert_sd_ok(sd_inversion_save(&inv, good));
    inv.model_fingerprint ^= 1;
    assert_sd_ok(sd_inversion_save(&inv, other));
    sd_inversion_free(&inv);

    snprintf(args, sizeof args, "edit %s --replace --target \"a big tiger sitting on a wooden floor\" -o %s", good, out_png);
    expect_failure(args, "\"" SOURCE "\" has 7 words", "\"a big tiger sitting on a wooden floor\" has 8 words");
    snprintf(args, sizeof args, "edit %s --target \"" NT_TARGET "\" --blend dog,tiger -o %s", good, out_png);
    expect_failure(args, "\"dog\"", "\"" SOURCE "\"");
    snprintf(args, sizeof args, "edit %s --target \"" NT_TARGET "\" --reweight lion=2 -o %s", good, out_png);
    expect_failure(args, "\"lion\"", "\"" NT_TARGET "\"");
    snprintf(args, sizeof args, "edit %s --target \"" NT_TARGET "\" --tau-c 1.5 -o %s", good, out_png);
    expect_failure(args, "--tau-c: expected a number in [0, 1], got '1.5'", NULL);
    snprintf(args, sizeof args, "edit %s --target \"" NT_TARGET "\" --tau-s -0.1 -o %s", good, out_png);
    expect_failure(args, "--tau-s: expected a number in [0, 1], got '-0.1'", NULL);
    snprintf(args, sizeof args, "edit %s --target \"" NT_TARGET "\" -o %s", other, out_png);
    expect_failure(args, "other_model.safetensors: made with another model", NULL);
    assert_int_equal(access(out_png, F_OK), -1); /* nothing written on failure */

    /* and the same file edits fine */
    snprintf(args, sizeof args, "edit -q %s --target \"" NT_TARGET "\" --blend cat,tiger --reweight tiger=2 -o %s", good,
             out_png);
    run_result *r = malloc(sizeof *r);
    run(r, args);
    if (r->status) fail_msg("stylediff %s: status %d\n%s", args, r->status, r->out);
    assert_int_equal(access(out_png, F_OK), 0);
    free(r);
}

int main(int argc, char **argv) {
    (void)argc;
    testutil_stylediff_path(stylediff, sizeof stylediff, argv[0]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_nulltext_edit_matches_torch, reset_status),
        cmocka_unit_test_setup(test_stylediffusion_edit_matches_torch, reset_status),
        cmocka_unit_test_setup(test_injection_effects_match_torch, reset_status),
        cmocka_unit_test_setup(test_passes_share_the_prefix, reset_status),
        cmocka_unit_test_setup(test_edits_with_fp16_activations, reset_status),
        cmocka_unit_test_setup(test_bad_options_are_named, reset_status),
        cmocka_unit_test_setup(test_cli_refuses_bad_input, reset_status),
    };
    return cmocka_run_group_tests_name("edit", tests, setup, teardown);
}
