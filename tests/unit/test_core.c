/* test_core.c: errors, tensors, half-precision conversion, arena, atomic writes. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_error_message_and_context(void **state) {
    (void)state;
    sd_status s = sd_fail(SD_ERR_SHAPE, "tensor '%s' is wrong", "conv_in.weight");
    assert_int_equal(s, SD_ERR_SHAPE);
    sd_fail_context(s, "unet/model.safetensors: ");
    assert_string_equal(sd_last_error(), "unet/model.safetensors: tensor 'conv_in.weight' is wrong");
}

static void test_f16_roundtrip_exhaustive(void **state) {
    (void)state;
    /* Every finite half converts to float and back to itself; NaNs stay NaN. */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sd_f16_to_f32((uint16_t)h);
        uint16_t back = sd_f32_to_f16(f);
        if (isnan(f)) {
            assert_true(((back >> 10) & 0x1f) == 0x1f && (back & 0x3ff));
            continue;
        }
        if (back != h) fail_msg("half 0x%04x -> %g -> 0x%04x", h, (double)f, back);
    }
    assert_true(sd_f16_to_f32(0x3c00) == 1.0f);
    assert_true(sd_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    assert_int_equal(sd_f32_to_f16(65520.0f), 0x7c00);       /* rounds to inf */
    assert_int_equal(sd_f32_to_f16(65519.0f), 0x7bff);       /* max half */
    assert_int_equal(sd_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00); /* tie to even */
    assert_int_equal(sd_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
}

static void test_bf16(void **state) {
    (void)state;
    assert_true(sd_bf16_to_f32(0x3f80) == 1.0f);
    assert_int_equal(sd_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(sd_f32_to_bf16(1.00390625f), 0x3f80); /* tie to even */
    assert_int_equal(sd_f32_to_bf16(1.01171875f), 0x3f82);
}

static void test_arena_reset_reuses_memory(void **state) {
    (void)state;
    sd_arena *a = sd_arena_create(1 << 16);
    assert_non_null(a);
    sd_arena_mark m = sd_arena_get_mark(a);
    void *p1 = sd_arena_alloc(a, 1000);
    void *big = sd_arena_alloc(a, 1 << 20); /* larger than a chunk */
    assert_non_null(p1);
    assert_non_null(big);
    assert_true(((uintptr_t)p1 % 64) == 0 && ((uintptr_t)big % 64) == 0);
    size_t peak = sd_arena_peak(a);
    sd_arena_reset(a, m);
    assert_int_equal(sd_arena_used(a), 0);
    void *p2 = sd_arena_alloc(a, 1000);
    assert_ptr_equal(p1, p2);
    assert_int_equal(sd_arena_peak(a), peak);
    int64_t shape[2] = {3, 5};
    sd_tensor *t = sd_arena_tensor(a, SD_F32, 2, shape);
    assert_non_null(t);
    assert_int_equal(sd_numel(t), 15);
    sd_arena_destroy(a);
}

static void test_check_shape_message(void **state) {
    (void)state;
    int64_t shape[2] = {4, 8};
    sd_tensor *t = sd_tensor_new(SD_F32, 2, shape);
    int64_t want[2] = {4, 9};
    assert_sd_fails(sd_check_shape(t, "proj.weight", SD_F32, 2, want), SD_ERR_SHAPE,
                    "proj.weight: expected shape (4, 9), got (4, 8)");
    int64_t any[2] = {4, -1};
    assert_sd_ok(sd_check_shape(t, "proj.weight", SD_F32, 2, any));
    sd_tensor_free(t);
}

static void test_atomic_write(void **state) {
    (void)state;
    char path[] = "/tmp/sd_test_atomicXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_sd_ok(sd_write_file_atomic(path, "hello", 5));
    char *buf;
    size_t n;
    assert_sd_ok(sd_read_file(path, &buf, &n));
    assert_int_equal(n, 5);
    assert_string_equal(buf, "hello");
    free(buf);
    unlink(path);
    assert_sd_fails(sd_write_file_atomic("/nonexistent-dir/x", "a", 1), SD_ERR_IO, "/nonexistent-dir/x");
    assert_sd_fails(sd_read_file("/nonexistent-file", &buf, &n), SD_ERR_IO, "/nonexistent-file");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_message_and_context),
        cmocka_unit_test(test_f16_roundtrip_exhaustive),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_arena_reset_reuses_memory),
        cmocka_unit_test(test_check_shape_message),
        cmocka_unit_test(test_atomic_write),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
