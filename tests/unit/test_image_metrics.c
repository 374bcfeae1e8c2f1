/* test_image_metrics.c: reconstruction PSNR and SSIM against scikit-image
 * (tests/oracle/gen_52_image_metrics.py -> tests/fixtures/image_metrics.safetensors): a photo crop
 * against a noisy, a shifted and an identical copy, and a 37x23 random pair. Tolerance 1e-9
 * relative (both sides in double; only the order of the window sums differs). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sd/image_metrics.h"
#include "sd/io.h"
#include "testutil.h"

static sd_safetensors fixture;

static int setup(void **state) {
    (void)state;
    return sd_safetensors_open("tests/fixtures/image_metrics.safetensors", &fixture) == SD_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    sd_safetensors_close(&fixture);
    return 0;
}

static sd_tensor *entry(const char *name, sd_dtype dtype) {
    const sd_st_entry *e = sd_safetensors_find(&fixture, name);
    if (!e) fail_msg("fixture has no %s", name);
    sd_tensor *t = NULL;
    assert_sd_ok(sd_safetensors_load_raw(&fixture, e, &t));
    assert_int_equal(t->dtype, dtype);
    return t;
}

/* An (H, W, 3) U8 entry as an sd_image sharing its data. */
static sd_image image_of(const sd_tensor *t) {
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->shape[2], 3);
    sd_image img = {(int)t->shape[1], (int)t->shape[0], t->data};
    return img;
}

static void check_case(const char *name) {
    char key[64];
    snprintf(key, sizeof key, "image_a_%s", name);
    sd_tensor *ta = entry(key, SD_U8);
    snprintf(key, sizeof key, "image_b_%s", name);
    sd_tensor *tb = entry(key, SD_U8);
    snprintf(key, sizeof key, "psnr_%s", name);
    sd_tensor *want_psnr = entry(key, SD_F64);
    snprintf(key, sizeof key, "ssim_%s", name);
    sd_tensor *want_ssim = entry(key, SD_F64);
    const sd_image a = image_of(ta), b = image_of(tb);
    double ssim = 0;
    const double psnr = sd_image_psnr(&a, &b);
    assert_sd_ok(sd_image_ssim(&a, &b, name, &ssim));
    const double wp = ((double *)want_psnr->data)[0], ws = ((double *)want_ssim->data)[0];
    print_message("    %-8s PSNR %.9f (skimage %.9f)  SSIM %.12f (skimage %.12f)\n", name, psnr, wp, ssim, ws);
    if (isinf(wp)) assert_true(isinf(psnr) && psnr > 0);
    else if (!(fabs(psnr - wp) <= 1e-9 * fabs(wp))) fail_msg("%s: PSNR %.12f, skimage %.12f", name, psnr, wp);
    if (!(fabs(ssim - ws) <= 1e-9 * fabs(ws))) fail_msg("%s: SSIM %.15f, skimage %.15f", name, ssim, ws);
    sd_tensor_free(ta);
    sd_tensor_free(tb);
    sd_tensor_free(want_psnr);
    sd_tensor_free(want_ssim);
}

static void test_against_skimage(void **state) {
    (void)state;
    const char *cases[] = {"noisy", "shifted", "same", "odd"};
    for (int i = 0; i < 4; i++) check_case(cases[i]);
}

static void test_bad_sizes(void **state) {
    (void)state;
    uint8_t pix[8 * 8 * 3] = {0};
    sd_image a = {8, 8, pix}, b = {8, 7, pix}, tiny = {6, 6, pix};
    double v;
    assert_true(isnan(sd_image_psnr(&a, &b)));
    assert_int_equal(sd_image_ssim(&a, &b, "recon.png", &v), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "recon.png: images of different sizes (8x8 and 8x7)"));
    assert_int_equal(sd_image_ssim(&tiny, &tiny, "small.png", &v), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "small.png: SSIM needs images of at least 7x7"));
    sd_clear_error();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_skimage),
        cmocka_unit_test(test_bad_sizes),
    };
    return cmocka_run_group_tests_name("image_metrics", tests, setup, teardown);
}
