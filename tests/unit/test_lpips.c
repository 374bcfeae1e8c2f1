/* test_lpips.c: LPIPS (AlexNet, v0.1) and NS-LPIPS against the oracle (tests/oracle/gen_50_lpips.py,
 * the `lpips` 0.1.4 package and the reference's eval_metrics/ns_lpips.py):
 *   - the weights file in the converter's layout (torchvision "features.*" + lpips "lin*.model.1.*"),
 *     built here from the oracle's hash-formula trunk and the real lin layers of the lpips wheel,
 *     loaded through sd_lpips_load;
 *   - the trunk's relu1..relu5 on a batch of 67x67 inputs (odd sizes: conv and pool floors);
 *   - distances of three pairs (random, identical = exactly 0, near-identical), their per-layer
 *     values, and forward(normalize=True);
 *   - Pillow BILINEAR resize, bit-exact (hashes of the outputs);
 *   - NS-LPIPS of a source / edited / mask triple of different sizes: the soft grey mask and the
 *     distance as the reference computes it ([0, 1] inputs), and with the [-1, 1] range fix;
 *   - bad input: missing file, missing or wrong-shaped tensor, unreadable image, tiny inputs.
 * Tolerances (max |got - want| / max |want|): features 1e-5 (measured 1.7e-6), distances 1e-5
 * (measured <= 7e-7: float convolutions summed in another order, the head's sums in double),
 * per-layer values 1e-5, except 1e-4 for the near-identical pair (see TOL_NEAR_LAYER); the grey
 * mask and the resizes exact. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/backend.h"
#include "sd/image.h"
#include "sd/io.h"
#include "sd/lpips.h"
#include "testutil.h"

#define FIXTURE "lpips"
#define LIN_FIXTURE "tests/fixtures/lpips_alex_lin.safetensors"
#define TOL_FEATURES 1e-5
#define TOL_DISTANCE 1e-5
/* One layer's value for two nearly identical images squares differences of features that agree
 * to ~2e-3 of their size, so the ~1e-6 rounding differences of the convolutions (another
 * summation order than torch's) come out ~1e3 times larger relative to it: measured 1.6e-5 on
 * relu3. The sum over the layers (the distance) stays within TOL_DISTANCE. */
#define TOL_NEAR_LAYER 1e-4

static char tmp_root[128];
static char weights_path[256];
static sd_lpips model;
static sd_ctx ctx;

/* The oracle's TRUNK: features.<index> (out, in, kernel) and the weight exponent e: a weight is
 * (k - 1000)·2^-(10 + e), a bias (k - 1000)·2^-(13 + e), with k from the hash below. */
static const struct {
    int index, c_out, c_in, kernel, exponent;
} TRUNK[5] = {{0, 64, 3, 11, 4}, {3, 192, 64, 5, 5}, {6, 384, 192, 3, 5}, {8, 256, 384, 3, 5}, {10, 256, 256, 3, 5}};

/* gen_50_lpips.py's hash_weights: uint32 mixing of (index, salt), k = h mod 2001. */
static sd_tensor *hash_weights(uint32_t salt, int ndim, const int64_t *shape, int exponent) {
    sd_tensor *t = sd_tensor_new(SD_F32, ndim, shape);
    const int64_t n = sd_numel(t);
    for (int64_t i = 0; i < n; i++) {
        uint32_t h = (uint32_t)i * 2654435761u ^ salt * 0x9E3779B9u;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        h ^= h >> 15;
        const int k = (int)(h % 2001u) - 1000;
        sd_f32(t)[i] = ldexpf((float)k, -(10 + exponent));
    }
    return t;
}

/* Writes the converter's layout: hash trunk + the wheel's lin layers. `drop` omits a tensor and
 * `grow` adds one to the first dimension of one; `extra` adds an unrelated tensor. */
static void write_weights(const char *path, const char *drop, const char *grow, int extra) {
    sd_tensor *tensors[16];
    char names[16][64];
    const char *name_ptrs[16];
    int n = 0;
    for (int k = 0; k < 5; k++) {
        const int64_t ws[4] = {TRUNK[k].c_out, TRUNK[k].c_in, TRUNK[k].kernel, TRUNK[k].kernel};
        const int64_t bs[1] = {TRUNK[k].c_out};
        snprintf(names[n], sizeof names[n], "features.%d.weight", TRUNK[k].index);
        tensors[n++] = hash_weights((uint32_t)(2 * k + 1), 4, ws, TRUNK[k].exponent);
        snprintf(names[n], sizeof names[n], "features.%d.bias", TRUNK[k].index);
        tensors[n++] = hash_weights((uint32_t)(2 * k + 2), 1, bs, TRUNK[k].exponent + 3);
    }
    sd_safetensors lin;
    assert_sd_ok(sd_safetensors_open(LIN_FIXTURE, &lin));
    for (int k = 0; k < 5; k++) {
        snprintf(names[n], sizeof names[n], "lin%d.model.1.weight", k);
        const sd_st_entry *e = sd_safetensors_find(&lin, names[n]);
        assert_non_null(e);
        assert_sd_ok(sd_safetensors_load_f32(&lin, e, &tensors[n]));
        n++;
    }
    sd_safetensors_close(&lin);
    if (extra) {
        snprintf(names[n], sizeof names[n], "classifier.1.weight");
        tensors[n++] = sd_tensor_new4(SD_F32, 2, 4, 9216, 0, 0);
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        if (drop && !strcmp(names[i], drop)) {
            sd_tensor_free(tensors[i]);
            continue;
        }
        if (grow && !strcmp(names[i], grow)) {
            int64_t shape[SD_MAX_DIMS];
            memcpy(shape, tensors[i]->shape, sizeof shape);
            shape[0] += 1;
            sd_tensor *bigger = sd_tensor_new(SD_F32, tensors[i]->ndim, shape);
            sd_tensor_free(tensors[i]);
            tensors[i] = bigger;
        }
        tensors[kept] = tensors[i];
        name_ptrs[kept] = names[i];
        kept++;
    }
    assert_sd_ok(sd_safetensors_write(path, (const sd_tensor *const *)tensors, name_ptrs, kept, NULL, 0));
    for (int i = 0; i < kept; i++) sd_tensor_free(tensors[i]);
}

static const char *tmp(const char *name) {
    static char buf[4][320];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", tmp_root, name);
    return b;
}

static int setup(void **state) {
    (void)state;
    if (testutil_make_tmpdir(tmp_root, sizeof tmp_root, "sd_lpips_") != 0) return -1;
    snprintf(weights_path, sizeof weights_path, "%s/lpips_alex.safetensors", tmp_root);
    write_weights(weights_path, NULL, NULL, 0);
    if (sd_lpips_load(weights_path, &model) || sd_ctx_init_cpu(&ctx)) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    sd_lpips_release(&model);
    return testutil_remove_tree(tmp_root);
}

/* ------------------------------------------------------------------------------------------------
 * Model
 * --------------------------------------------------------------------------------------------- */

static void test_features_match_oracle(void **state) {
    (void)state;
    sd_tensor *x = testutil_fixture(FIXTURE, "feat_in");
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *features[SD_LPIPS_LAYERS];
    assert_sd_ok(sd_lpips_features(&ctx, &model, x, SD_LPIPS_INPUT_AS_IS, features));
    static const char *const names[5] = {"feat_relu1", "feat_relu2", "feat_relu3", "feat_relu4", "feat_relu5"};
    static const int64_t sides[5] = {16, 7, 3, 3, 3};
    for (int k = 0; k < SD_LPIPS_LAYERS; k++) {
        sd_tensor *want = testutil_fixture(FIXTURE, names[k]);
        assert_int_equal(features[k]->shape[1], SD_LPIPS_CHANNELS[k]);
        assert_int_equal(features[k]->shape[2], sides[k]);
        testutil_assert_close(features[k], want, TOL_FEATURES, names[k]);
        sd_tensor_free(want);
    }
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(x);
}

static void check_rel(double got, double want, double tol, const char *what) {
    const double err = fabs(got - want) / fmax(fabs(want), 1e-30);
    print_message("    %-44s got %.9g want %.9g rel err %.2e\n", what, got, want, err);
    if (!(err <= tol)) fail_msg("%s: got %.9g, want %.9g (rel err %.3g > %.1g)", what, got, want, err, tol);
}

static void test_distances_match_oracle(void **state) {
    (void)state;
    sd_tensor *in0 = testutil_fixture(FIXTURE, "pair_in0"), *in1 = testutil_fixture(FIXTURE, "pair_in1");
    sd_tensor *want = testutil_fixture(FIXTURE, "dist"), *want_layers = testutil_fixture(FIXTURE, "dist_layers");
    sd_tensor *want_norm = testutil_fixture(FIXTURE, "dist_normalize");
    double dist[3], layers[3 * SD_LPIPS_LAYERS];
    assert_sd_ok(sd_lpips_distance(&ctx, &model, in0, in1, SD_LPIPS_INPUT_AS_IS, dist, layers));
    static const char *const what[3] = {"random pair", "identical pair", "near-identical pair"};
    for (int b = 0; b < 3; b++) {
        if (b == 1) {
            /* identical inputs: every difference is exactly zero, as in the package */
            assert_true(dist[1] == 0.0);
            assert_true(sd_f32(want)[1] == 0.0f);
            continue;
        }
        check_rel(dist[b], sd_f32(want)[b], TOL_DISTANCE, what[b]);
        double sum = 0.0;
        for (int k = 0; k < SD_LPIPS_LAYERS; k++) {
            char label[64];
            snprintf(label, sizeof label, "%s, layer %d", what[b], k);
            check_rel(layers[b * 5 + k], sd_f32(want_layers)[b * 5 + k], b == 2 ? TOL_NEAR_LAYER : TOL_DISTANCE,
                      label);
            sum += layers[b * 5 + k];
        }
        assert_true(fabs(sum - dist[b]) <= 1e-12 * dist[b]);
    }
    /* normalize=True: the oracle passed (x + 1) / 2, which the option maps back with 2t - 1 */
    for (int64_t i = 0; i < sd_numel(in0); i++) {
        sd_f32(in0)[i] = (sd_f32(in0)[i] + 1.0f) / 2.0f;
        sd_f32(in1)[i] = (sd_f32(in1)[i] + 1.0f) / 2.0f;
    }
    assert_sd_ok(sd_lpips_distance(&ctx, &model, in0, in1, SD_LPIPS_INPUT_UNIT, dist, NULL));
    check_rel(dist[0], sd_f32(want_norm)[0], TOL_DISTANCE, "normalize=True, random pair");
    assert_true(dist[1] == 0.0);
    check_rel(dist[2], sd_f32(want_norm)[2], TOL_DISTANCE, "normalize=True, near-identical pair");
    sd_tensor *all[] = {in0, in1, want, want_layers, want_norm};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

/* ------------------------------------------------------------------------------------------------
 * Pillow BILINEAR resize
 * --------------------------------------------------------------------------------------------- */

static void test_bilinear_resize_is_pillow_exact(void **state) {
    (void)state;
    static const struct {
        const char *input;
        int width, height;
    } cases[] = {
        {"image_synth_37x53.png", 20, 100},   {"image_synth_37x53.png", 100, 20},
        {"image_synth_37x53.png", 256, 256},  {"image_synth_600x400.png", 256, 256},
        {"image_synth_600x400.png", 77, 51},  {"image_synth_600x400.png", 600, 133},
        {"image_synth_7x5.png", 13, 2},       {"image_synth_7x5.png", 1, 1},
        {"image_astronaut_crop_128x128.png", 256, 256}, {"image_coffee_crop_200x150.png", 256, 256},
    };
    sd_tensor *hashes = testutil_fixture(FIXTURE, "bilinear_hash");
    assert_int_equal(sd_numel(hashes), (int64_t)(sizeof cases / sizeof cases[0]));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/fixtures/%s", cases[i].input);
        sd_image in, out;
        assert_sd_ok(sd_image_load(path, &in));
        assert_sd_ok(sd_image_resize_bilinear(&in, cases[i].width, cases[i].height, &out));
        const uint64_t got = sd_hash64(out.data, (size_t)out.width * out.height * 3);
        const uint64_t want = (uint64_t)((const int64_t *)hashes->data)[i];
        if (got != want)
            fail_msg("%s -> %dx%d: hash %016llx, Pillow's %016llx", cases[i].input, cases[i].width,
                     cases[i].height, (unsigned long long)got, (unsigned long long)want);
        sd_image_free(&in);
        sd_image_free(&out);
    }
    sd_tensor_free(hashes);
}

/* ------------------------------------------------------------------------------------------------
 * NS-LPIPS
 * --------------------------------------------------------------------------------------------- */

#define NS_SOURCE "tests/fixtures/lpips_ns_source.png"
#define NS_EDITED "tests/fixtures/lpips_ns_edited.png"
#define NS_MASK "tests/fixtures/lpips_ns_mask.png"

static void test_ns_lpips_matches_reference(void **state) {
    (void)state;
    sd_image src, edit, mask;
    assert_sd_ok(sd_image_load(NS_SOURCE, &src));
    assert_sd_ok(sd_image_load(NS_EDITED, &edit));
    assert_sd_ok(sd_image_load(NS_MASK, &mask));
    /* three different sizes: each takes its own resize to 256 */
    assert_true(src.width != edit.width && mask.width != src.width);

    /* the soft grey mask, exactly torchvision's */
    sd_tensor *src_bg = sd_tensor_new4(SD_F32, 4, 1, 3, 256, 256), *edit_bg = sd_tensor_new4(SD_F32, 4, 1, 3, 256, 256);
    sd_tensor *gray = sd_tensor_new4(SD_F32, 2, 256, 256, 0, 0);
    assert_sd_ok(sd_ns_lpips_prepare(&src, &edit, &mask, 256, src_bg, edit_bg, gray));
    sd_tensor *want_gray = testutil_fixture(FIXTURE, "ns_mask_gray");
    testutil_assert_close(gray, want_gray, 0.0, "NS-LPIPS grey mask 256x256");
    int soft = 0;
    for (int64_t i = 0; i < sd_numel(gray); i++) soft |= sd_f32(gray)[i] > 0.01f && sd_f32(gray)[i] < 0.99f;
    assert_true(soft); /* the fixture's mask really is soft: the discarded threshold would show */

    sd_tensor *want = testutil_fixture(FIXTURE, "ns_lpips"), *want_fix = testutil_fixture(FIXTURE, "ns_lpips_correct");
    double d;
    assert_sd_ok(sd_ns_lpips_files(&ctx, &model, NS_SOURCE, NS_EDITED, NS_MASK, NULL, &d));
    check_rel(d, sd_f32(want)[0], TOL_DISTANCE, "NS-LPIPS (reference: [0, 1] inputs)");
    const sd_ns_lpips_options fix = {.size = 256, .range_fix = 1};
    assert_sd_ok(sd_ns_lpips_files(&ctx, &model, NS_SOURCE, NS_EDITED, NS_MASK, &fix, &d));
    check_rel(d, sd_f32(want_fix)[0], TOL_DISTANCE, "NS-LPIPS with the [-1, 1] range fix");
    /* the same through decoded images */
    assert_sd_ok(sd_ns_lpips_images(&ctx, &model, &src, &edit, &mask, NULL, &d));
    check_rel(d, sd_f32(want)[0], TOL_DISTANCE, "NS-LPIPS from decoded images");
    /* an image against itself: 0 whatever the mask */
    assert_sd_ok(sd_ns_lpips_images(&ctx, &model, &src, &src, &mask, NULL, &d));
    assert_true(d == 0.0);

    sd_image_free(&src);
    sd_image_free(&edit);
    sd_image_free(&mask);
    sd_tensor *all[] = {src_bg, edit_bg, gray, want_gray, want, want_fix};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

/* ------------------------------------------------------------------------------------------------
 * Bad input
 * --------------------------------------------------------------------------------------------- */

static void test_loader_errors_name_file_and_tensor(void **state) {
    (void)state;
    sd_lpips m;
    assert_sd_fails(sd_lpips_load(tmp("absent.safetensors"), &m), SD_ERR_MISSING,
                    "absent.safetensors: missing (the LPIPS AlexNet weights");
    write_weights(tmp("no_lin3.safetensors"), "lin3.model.1.weight", NULL, 0);
    assert_sd_fails(sd_lpips_load(tmp("no_lin3.safetensors"), &m), SD_ERR_MISSING,
                    "no_lin3.safetensors: missing tensor 'lin3.model.1.weight' (expected shape (1, 256, 1, 1))");
    write_weights(tmp("no_conv.safetensors"), "features.6.bias", NULL, 0);
    assert_sd_fails(sd_lpips_load(tmp("no_conv.safetensors"), &m), SD_ERR_MISSING,
                    "no_conv.safetensors: missing tensor 'features.6.bias'");
    write_weights(tmp("wide.safetensors"), NULL, "features.3.weight", 0);
    assert_sd_fails(sd_lpips_load(tmp("wide.safetensors"), &m), SD_ERR_SHAPE,
                    "wide.safetensors: tensor 'features.3.weight': expected shape (192, 64, 5, 5), got (193, 64, 5, 5)");
    /* not a safetensors file */
    static const char junk[] = "this is not a safetensors file";
    assert_sd_ok(sd_write_file_atomic(tmp("junk.safetensors"), junk, sizeof junk - 1));
    assert_sd_fails(sd_lpips_load(tmp("junk.safetensors"), &m), SD_ERR_FORMAT, "junk.safetensors");
    /* a whole AlexNet checkpoint merged in: extra tensors are ignored (with a warning) */
    write_weights(tmp("extra.safetensors"), NULL, NULL, 1);
    assert_sd_ok(sd_lpips_load(tmp("extra.safetensors"), &m));
    sd_lpips_release(&m);
    sd_lpips_release(&m); /* twice is harmless */
}

static void test_bad_inputs_fail_cleanly(void **state) {
    (void)state;
    double d = -1.0;
    sd_ctx c;
    /* an unreadable image names the file and its role */
    assert_sd_ok(sd_ctx_init_cpu(&c));
    assert_int_equal(sd_ns_lpips_files(&c, &model, NS_SOURCE, tmp("nope.png"), NS_MASK, NULL, &d), SD_ERR_IO);
    assert_true(testutil_contains(sd_last_error(), "NS-LPIPS edited image: "));
    assert_true(testutil_contains(sd_last_error(), "nope.png"));
    sd_ctx_free(&c);
    assert_sd_ok(sd_ctx_init_cpu(&c));
    static const char not_png[] = "\x89PNG but not really";
    assert_sd_ok(sd_write_file_atomic(tmp("broken.png"), not_png, sizeof not_png - 1));
    assert_int_equal(sd_ns_lpips_files(&c, &model, NS_SOURCE, NS_EDITED, tmp("broken.png"), NULL, &d), SD_ERR_FORMAT);
    assert_true(testutil_contains(sd_last_error(), "NS-LPIPS mask image: "));
    assert_true(testutil_contains(sd_last_error(), "broken.png"));
    sd_ctx_free(&c);
    /* inputs too small for AlexNet, wrong channel count, different shapes */
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *small = sd_tensor_new4(SD_F32, 4, 1, 3, 30, 64), *rgba = sd_tensor_new4(SD_F32, 4, 1, 4, 64, 64);
    sd_tensor *a = sd_tensor_new4(SD_F32, 4, 1, 3, 64, 64), *b = sd_tensor_new4(SD_F32, 4, 1, 3, 64, 65);
    assert_int_equal(sd_lpips_distance(&c, &model, small, small, SD_LPIPS_INPUT_AS_IS, &d, NULL), SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "(1, 3, 30, 64)"));
    assert_true(testutil_contains(sd_last_error(), "H, W >= 31"));
    sd_ctx_free(&c);
    assert_sd_ok(sd_ctx_init_cpu(&c));
    assert_int_equal(sd_lpips_distance(&c, &model, a, rgba, SD_LPIPS_INPUT_AS_IS, &d, NULL), SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "second input (1, 4, 64, 64)"));
    sd_ctx_free(&c);
    assert_sd_ok(sd_ctx_init_cpu(&c));
    assert_int_equal(sd_lpips_distance(&c, &model, a, b, SD_LPIPS_INPUT_AS_IS, &d, NULL), SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "differ in shape"));
    /* a failed context stays failed */
    assert_int_equal(sd_ns_lpips_files(&c, &model, NS_SOURCE, NS_EDITED, NS_MASK, NULL, &d), SD_ERR_SHAPE);
    sd_ctx_free(&c);
    /* the smallest side the trunk takes works: 31 -> 7 -> 3 -> 1 */
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *min0 = sd_tensor_new4(SD_F32, 4, 1, 3, 31, 31), *min1 = sd_tensor_new4(SD_F32, 4, 1, 3, 31, 31);
    testutil_fill_uniform(sd_f32(min0), sd_numel(min0), 3, -1.0f, 1.0f);
    testutil_fill_uniform(sd_f32(min1), sd_numel(min1), 4, -1.0f, 1.0f);
    assert_sd_ok(sd_lpips_distance(&c, &model, min0, min1, SD_LPIPS_INPUT_AS_IS, &d, NULL));
    assert_true(isfinite(d) && d > 0.0);
    sd_ctx_free(&c);
    /* an empty image and a bad size in the preprocessing */
    sd_image empty = {0}, src;
    assert_sd_ok(sd_image_load(NS_SOURCE, &src));
    sd_tensor *t3 = sd_tensor_new4(SD_F32, 4, 1, 3, 8, 8);
    assert_sd_fails(sd_ns_lpips_prepare(&src, &src, &empty, 8, t3, t3, NULL), SD_ERR_ARG, "the mask image is empty");
    assert_sd_fails(sd_ns_lpips_prepare(&src, &src, &src, 0, t3, t3, NULL), SD_ERR_ARG, "size 0");
    assert_sd_fails(sd_ns_lpips_prepare(&src, &src, &src, 16, t3, t3, NULL), SD_ERR_ARG, "masked source");
    sd_image_free(&src);
    sd_tensor *all[] = {small, rgba, a, b, min0, min1, t3};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

/* ------------------------------------------------------------------------------------------------
 * CUDA (skips without a GPU): the same model on cuda:0 against the CPU and the oracle
 * --------------------------------------------------------------------------------------------- */

#define TOL_GPU 1e-4 /* cuDNN convolutions sum in yet another order; exact (fp32) mode */

static void test_cuda_matches_cpu(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    const sd_backend *be = sd_backend_cuda(0);
    if (!be) fail_msg("cuda:0: %s", sd_last_error());
    sd_lpips gm;
    sd_ctx g;
    assert_sd_ok(sd_lpips_load(weights_path, &gm));
    assert_sd_ok(sd_ctx_init(&g, be, 0));
    assert_sd_ok(sd_ctx_adopt_weights(&g, gm.owned));

    sd_tensor *x = testutil_fixture(FIXTURE, "feat_in");
    sd_tensor *features[SD_LPIPS_LAYERS];
    assert_sd_ok(sd_lpips_features(&g, &gm, x, SD_LPIPS_INPUT_AS_IS, features));
    static const char *const names[5] = {"feat_relu1", "feat_relu2", "feat_relu3", "feat_relu4", "feat_relu5"};
    for (int k = 0; k < SD_LPIPS_LAYERS; k++) {
        sd_tensor *got = sd_download_new(&g, features[k]), *want = testutil_fixture(FIXTURE, names[k]);
        testutil_assert_close(got, want, TOL_GPU, names[k]);
        sd_tensor_free(got);
        sd_tensor_free(want);
    }
    sd_tensor *want = testutil_fixture(FIXTURE, "ns_lpips");
    double d;
    assert_sd_ok(sd_ns_lpips_files(&g, &gm, NS_SOURCE, NS_EDITED, NS_MASK, NULL, &d));
    check_rel(d, sd_f32(want)[0], TOL_GPU, "NS-LPIPS on cuda:0");
    sd_tensor_free(want);
    sd_tensor_free(x);
    sd_ctx_free(&g);
    sd_lpips_release(&gm);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features_match_oracle),
        cmocka_unit_test(test_distances_match_oracle),
        cmocka_unit_test(test_bilinear_resize_is_pillow_exact),
        cmocka_unit_test(test_ns_lpips_matches_reference),
        cmocka_unit_test(test_loader_errors_name_file_and_tensor),
        cmocka_unit_test(test_bad_inputs_fail_cleanly),
        cmocka_unit_test(test_cuda_matches_cpu),
    };
    return cmocka_run_group_tests_name("LPIPS (AlexNet v0.1) and NS-LPIPS vs the lpips package", tests, setup,
                                       teardown);
}
