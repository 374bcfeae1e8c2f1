/* test_blend_mask.c: NS-LPIPS masks (sd_blend_word_mask, eval_metrics/storemask.py) on the tiny
 * model against torch (tests/oracle/gen_58_blend_mask.py -> tests/fixtures/tiny_blend_mask):
 * chelsea.png at 256 px, "a cat sitting on a wooden floor", word "cat", 10 DDIM steps.
 *  - the aggregated (8, 8, 77) attention map: max relative error <= 1e-5 (float sums in another
 *    order; measured below);
 *  - the 256x256 foreground mask: the 8-bit truncation can flip a value sitting on an integer
 *    boundary, so at most 1 level apart and on at most 1% of the samples (measured: see output);
 *    the background mask is exactly 255 minus the foreground;
 *  - a word that is not in the prompt fails naming both. */
#include <stdlib.h>
#include <string.h>

#include "sd/blend_mask.h"
#include "sd/io.h"
#include "testutil.h"

#define SIZE 256
#define PROMPT "a cat sitting on a wooden floor"

static sd_model model;
static sd_ctx ctx;
static sd_tensor *image;

static int setup(void **state) {
    (void)state;
    setenv("STYLEDIFF_HOME", ".", 1);
    sd_set_quiet(1);
    sd_image u8 = {0};
    if (sd_model_load("models/tiny", &model) || sd_ctx_init_cpu(&ctx) ||
        sd_image_load_512("data/images/chelsea.png", 0, 0, 0, 0, SIZE, &u8)) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    image = sd_keep(&ctx, sd_image_upload(&ctx, &u8));
    sd_image_free(&u8);
    return image ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    sd_model_free(&model);
    return 0;
}

static void test_against_storemask(void **state) {
    (void)state;
    sd_image fg = {0}, bg = {0};
    sd_tensor *attention = NULL;
    assert_sd_ok(sd_blend_word_mask(&ctx, &model, image, PROMPT, "cat", 10, &fg, &bg, &attention));
    sd_tensor *want_attn = testutil_fixture("tiny_blend_mask", "attention");
    testutil_assert_close(attention, want_attn, 1e-5, "aggregated attention (8, 8, 77)");
    sd_tensor *want_fg = NULL;
    {
        sd_safetensors f;
        assert_sd_ok(sd_safetensors_open("tests/fixtures/tiny_blend_mask.safetensors", &f));
        assert_sd_ok(sd_safetensors_load_raw(&f, sd_safetensors_find(&f, "foreground"), &want_fg));
        sd_safetensors_close(&f);
    }
    assert_int_equal(fg.width, 256);
    assert_int_equal(fg.height, 256);
    const size_t n = 256 * 256 * 3;
    size_t differ = 0;
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        const int d = abs((int)fg.data[i] - (int)((uint8_t *)want_fg->data)[i]);
        differ += d != 0;
        if (d > worst) worst = d;
        assert_int_equal(bg.data[i], 255 - fg.data[i]);
    }
    print_message("    foreground mask: %zu of %zu samples differ, by at most %d\n", differ, n, worst);
    assert_true(worst <= 1);
    assert_true(differ <= n / 100);
    sd_tensor_free(want_fg);
    sd_tensor_free(want_attn);
    sd_tensor_free(attention);
    sd_image_free(&fg);
    sd_image_free(&bg);
}

static void test_word_not_in_prompt(void **state) {
    (void)state;
    sd_image fg = {0}, bg = {0};
    assert_int_equal(sd_blend_word_mask(&ctx, &model, image, PROMPT, "dog", 2, &fg, &bg, NULL), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "mask word \"dog\" is not one of the space-separated words of prompt"));
    assert_null(fg.data);
    sd_clear_error();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_storemask),
        cmocka_unit_test(test_word_not_in_prompt),
    };
    return cmocka_run_group_tests_name("blend_mask", tests, setup, teardown);
}
