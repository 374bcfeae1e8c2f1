/* test_image.c: PNG/JPEG decoding, Pillow-exact bicubic resize, load_512, tensor conversions,
 * PNG writing, PSNR, and hostile files.
 *
 * Expected pixels come from tests/oracle/gen_30_image_fixtures.py (Pillow / numpy / torch),
 * listed in tests/fixtures/image_cases.txt; every comparison is exact. Run from the repository
 * root. */
#include "testutil.h"

#include "sd/image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURES "tests/fixtures/"
#define MANIFEST FIXTURES "image_cases.txt"

/* ------------------------------------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------------------------------- */

/* A private scratch folder for files the tests create, removed at the end. */
static char scratch_dir[64];

static int make_scratch(void **state) {
    (void)state;
    snprintf(scratch_dir, sizeof scratch_dir, "/tmp/sd_test_imageXXXXXX");
    return mkdtemp(scratch_dir) ? 0 : -1;
}

static int remove_scratch(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *scratch_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", scratch_dir, name);
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot create %s", path);
    if (n && fwrite(data, 1, n, f) != n) fail_msg("cannot write %s", path);
    fclose(f);
}

static void read_bytes(const char *path, char **data, size_t *n) {
    assert_sd_ok(sd_read_file(path, data, n));
}

/* Compares an image with the manifest's expectation: a PNG path or "fnv64:<hex>". On mismatch it
 * saves what it got under /tmp and fails with the first differing pixel. */
static void assert_image_matches(const sd_image *got, const char *expected, const char *what) {
    if (strncmp(expected, "fnv64:", 6) == 0) {
        uint64_t want = strtoull(expected + 6, NULL, 16);
        uint64_t hash = sd_hash64(got->data, (size_t)got->width * got->height * 3);
        if (hash != want) {
            char keep[256];
            snprintf(keep, sizeof keep, "/tmp/sd_test_image_mismatch_%016llx.png",
                     (unsigned long long)want);
            sd_image_save_png(keep, got);
            fail_msg("%s: hash %016llx, expected %016llx (output saved to %s)", what,
                     (unsigned long long)hash, (unsigned long long)want, keep);
        }
        return;
    }
    sd_image want = {0};
    assert_sd_ok(sd_image_load(expected, &want));
    if (got->width != want.width || got->height != want.height)
        fail_msg("%s: size %d x %d, expected %d x %d", what, got->width, got->height, want.width,
                 want.height);
    size_t n = (size_t)want.width * want.height * 3, wrong = 0, first = 0;
    int max_diff = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got->data[i] - (int)want.data[i]);
        if (d) {
            if (!wrong) first = i;
            wrong++;
            if (d > max_diff) max_diff = d;
        }
    }
    if (wrong) {
        size_t px = first / 3;
        fail_msg("%s: %zu of %zu samples differ (max %d); first at x=%zu y=%zu c=%zu: got %d, "
                 "expected %d",
                 what, wrong, n, max_diff, px % (size_t)want.width, px / (size_t)want.width,
                 first % 3, got->data[first], want.data[first]);
    }
    sd_image_free(&want);
}

/* Visits the manifest lines that start with `kind`, passing the rest of the line's fields. */
typedef void (*case_fn)(char **fields, int nfields, const char *line);
static int for_each_case(const char *kind, case_fn fn) {
    FILE *f = fopen(MANIFEST, "r");
    if (!f) fail_msg("cannot open %s (run from the repository root)", MANIFEST);
    char line[1024];
    int count = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char copy[1024];
        snprintf(copy, sizeof copy, "%s", line);
        char *fields[16];
        int n = 0;
        /* The "fail" message substring is the rest of the line and may contain spaces. */
        for (char *tok = strtok(copy, " "); tok && n < 16; tok = strtok(NULL, " ")) {
            fields[n++] = tok;
            if (n == 3 && strcmp(fields[0], "fail") == 0) {
                fields[n++] = strtok(NULL, "");
                break;
            }
        }
        if (n == 0 || strcmp(fields[0], kind) != 0) continue;
        fn(fields + 1, n - 1, line);
        count++;
    }
    fclose(f);
    return count;
}

static sd_status status_from_name(const char *name) {
    static const struct { const char *name; sd_status status; } known[] = {
        {"SD_ERR_IO", SD_ERR_IO},     {"SD_ERR_FORMAT", SD_ERR_FORMAT},
        {"SD_ERR_ARG", SD_ERR_ARG},   {"SD_ERR_UNSUPPORTED", SD_ERR_UNSUPPORTED},
        {"SD_ERR_OOM", SD_ERR_OOM},
    };
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strcmp(known[i].name, name) == 0) return known[i].status;
    fail_msg("unknown status name %s in %s", name, MANIFEST);
    return SD_ERR_INTERNAL;
}

/* ------------------------------------------------------------------------------------------------
 * Fixture-driven cases
 * --------------------------------------------------------------------------------------------- */

static void run_resize_case(char **f, int n, const char *line) {
    assert_int_equal(n, 4);
    sd_image src = {0}, out = {0};
    assert_sd_ok(sd_image_load(f[0], &src));
    assert_sd_ok(sd_image_resize_bicubic(&src, atoi(f[1]), atoi(f[2]), &out));
    assert_int_equal(out.width, atoi(f[1]));
    assert_int_equal(out.height, atoi(f[2]));
    assert_image_matches(&out, f[3], line);
    sd_image_free(&src);
    sd_image_free(&out);
}

static void test_resize_matches_pillow(void **state) {
    (void)state;
    int n = for_each_case("resize", run_resize_case);
    print_message("    %d resize cases bit-exact with Pillow BICUBIC\n", n);
    assert_true(n >= 20);
}

static void run_load512_case(char **f, int n, const char *line) {
    assert_int_equal(n, 7);
    sd_image out = {0};
    assert_sd_ok(sd_image_load_512(f[0], atoi(f[1]), atoi(f[2]), atoi(f[3]), atoi(f[4]),
                                   atoi(f[5]), &out));
    assert_image_matches(&out, f[6], line);
    sd_image_free(&out);
}

static void test_load512_matches_reference(void **state) {
    (void)state;
    int n = for_each_case("load512", run_load512_case);
    print_message("    %d load_512 cases bit-exact with the reference\n", n);
    assert_true(n >= 5);
}

static void run_decode_case(char **f, int n, const char *line) {
    assert_int_equal(n, 2);
    sd_image img = {0};
    assert_sd_ok(sd_image_load(f[0], &img));
    assert_image_matches(&img, f[1], line);
    sd_image_free(&img);
}

static void test_decode_matches_pillow(void **state) {
    (void)state;
    int n = for_each_case("decode", run_decode_case);
    print_message("    %d PNG/JPEG kinds decode to Pillow's pixels\n", n);
    assert_true(n >= 20);
}

static void run_fail_case(char **f, int n, const char *line) {
    assert_int_equal(n, 3);
    sd_image img = {.width = 7, .height = 7, .data = NULL};
    sd_status want = status_from_name(f[1]);
    assert_sd_fails(sd_image_load(f[0], &img), want, f[2]);
    if (!testutil_contains(sd_last_error(), f[0]))
        fail_msg("%s: message \"%s\" does not name the file", line, sd_last_error());
    assert_null(img.data);
    assert_int_equal(img.width, 0);
}

static void test_crafted_files_fail_cleanly(void **state) {
    (void)state;
    int n = for_each_case("fail", run_fail_case);
    print_message("    %d crafted files refused with the right status\n", n);
    assert_true(n >= 6);
}

/* ------------------------------------------------------------------------------------------------
 * Hostile files made here
 * --------------------------------------------------------------------------------------------- */

static void expect_load_failure(const char *path, sd_status code, const char *needle) {
    sd_image img = {0};
    assert_sd_fails(sd_image_load(path, &img), code, needle);
    if (!testutil_contains(sd_last_error(), path))
        fail_msg("message \"%s\" does not name %s", sd_last_error(), path);
    assert_null(img.data);
    /* load_512 reports the same failure. */
    assert_sd_fails(sd_image_load_512(path, 0, 0, 0, 0, 512, &img), code, path);
}

static void test_missing_directory_empty_text(void **state) {
    (void)state;
    char p[256];
    expect_load_failure("/nonexistent/dir/cat.png", SD_ERR_IO, "cannot open");
    expect_load_failure(scratch_dir, SD_ERR_IO, "not a regular file");
    write_bytes(scratch_path(p, sizeof p, "empty.png"), "", 0);
    expect_load_failure(p, SD_ERR_FORMAT, "empty file");
    const char *text = "This is not an image, just some text.\n";
    write_bytes(scratch_path(p, sizeof p, "notes.jpg"), text, strlen(text));
    expect_load_failure(p, SD_ERR_FORMAT, "not a PNG or JPEG");
    write_bytes(scratch_path(p, sizeof p, "magic_only.png"), "\x89PNG\r\n\x1a\n", 8);
    expect_load_failure(p, SD_ERR_FORMAT, "truncated");
    write_bytes(scratch_path(p, sizeof p, "soi_only.jpg"), "\xff\xd8\xff", 3);
    expect_load_failure(p, SD_ERR_FORMAT, "corrupt JPEG");
}

/* Every prefix of a real file that ends inside the image data must fail as truncated. */
static void check_truncations(const char *source, const char *name, const int *cuts, int ncuts) {
    char *data;
    size_t size;
    read_bytes(source, &data, &size);
    char p[256];
    scratch_path(p, sizeof p, name);
    for (int i = 0; i < ncuts; i++) {
        size_t keep = cuts[i] >= 0 ? (size_t)cuts[i] : size - (size_t)(-cuts[i]);
        write_bytes(p, data, keep);
        sd_image img = {0};
        sd_status st = sd_image_load(p, &img);
        if (st != SD_ERR_FORMAT)
            fail_msg("%s cut to %zu of %zu bytes: expected SD_ERR_FORMAT, got %s (%s)", source,
                     keep, size, sd_status_name(st), sd_last_error());
        if (!testutil_contains(sd_last_error(), p) ||
            !(testutil_contains(sd_last_error(), "truncated") ||
              testutil_contains(sd_last_error(), "corrupt")))
            fail_msg("%s cut to %zu bytes: unhelpful message \"%s\"", source, keep,
                     sd_last_error());
        assert_null(img.data);
    }
    free(data);
}

static void test_truncated_png_and_jpeg(void **state) {
    (void)state;
    /* PNG: inside the signature's follow-up, the IHDR, the first IDAT, mid-data, near the end of
     * the image data. (A PNG missing only its IEND chunk still decodes, as in Pillow.) */
    const int png_cuts[] = {9, 20, 33, 40, 200, 1000, 4000, -400};
    check_truncations("data/images/chelsea.png", "cut.png", png_cuts, 8);
    /* JPEG: in the headers, in the scan, and missing only the final EOI marker, which Pillow
     * also refuses ("image file is truncated"). */
    const int jpeg_cuts[] = {4, 100, 400, 2000, -500, -2, -1};
    check_truncations(FIXTURES "image_jpeg_q90_420.jpg", "cut.jpg", jpeg_cuts, 7);
    check_truncations(FIXTURES "image_jpeg_q90_420_progressive.jpg", "cut_prog.jpg", jpeg_cuts, 7);
}

static void test_png_without_iend_still_loads(void **state) {
    (void)state;
    char *data;
    size_t size;
    read_bytes(FIXTURES "image_synth_37x53.png", &data, &size);
    char p[256];
    write_bytes(scratch_path(p, sizeof p, "no_iend.png"), data, size - 12);
    sd_image a = {0}, b = {0};
    assert_sd_ok(sd_image_load(p, &a));
    assert_sd_ok(sd_image_load(FIXTURES "image_synth_37x53.png", &b));
    assert_true(isinf(sd_image_psnr(&a, &b)));
    sd_image_free(&a);
    sd_image_free(&b);
    free(data);
}

/* Random byte corruption: whatever the decoders make of it, the call returns a status (OK or a
 * format error) and never crashes; ASan/UBSan builds check the memory side. */
static void test_corrupted_bytes_never_crash(void **state) {
    (void)state;
    const char *sources[] = {FIXTURES "image_synth_37x53.png", FIXTURES "image_png_palette4.png",
                             FIXTURES "image_png_rgb16_interlaced.png",
                             FIXTURES "image_jpeg_q90_420.jpg",
                             FIXTURES "image_jpeg_q90_420_progressive.jpg"};
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    char p[256];
    scratch_path(p, sizeof p, "fuzz.bin");
    int outcomes[SD_ERR_INTERNAL + 1] = {0};
    for (size_t s = 0; s < sizeof sources / sizeof *sources; s++) {
        char *data;
        size_t size;
        read_bytes(sources[s], &data, &size);
        char *mutated = malloc(size);
        for (int iter = 0; iter < 120; iter++) {
            memcpy(mutated, data, size);
            int flips = 1 + iter % 8;
            for (int k = 0; k < flips; k++) {
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                size_t at = 8 + (size_t)(rng % (size - 8)); /* keep the magic: reach the decoder */
                mutated[at] = (char)(rng >> 40);
            }
            write_bytes(p, mutated, size);
            sd_image img = {0};
            sd_status st = sd_image_load(p, &img);
            if (st != SD_OK && st != SD_ERR_FORMAT && st != SD_ERR_UNSUPPORTED)
                fail_msg("%s mutation %d: unexpected %s (%s)", sources[s], iter,
                         sd_status_name(st), sd_last_error());
            if (st == SD_OK) assert_true(img.width > 0 && img.height > 0 && img.data);
            else assert_null(img.data);
            outcomes[st]++;
            sd_image_free(&img);
        }
        free(mutated);
        free(data);
    }
    print_message("    corrupted files: %d decoded, %d format errors, %d unsupported\n",
                  outcomes[SD_OK], outcomes[SD_ERR_FORMAT], outcomes[SD_ERR_UNSUPPORTED]);
}

/* ------------------------------------------------------------------------------------------------
 * Resize and load_512 edge cases
 * --------------------------------------------------------------------------------------------- */

static void test_resize_same_size_is_a_copy(void **state) {
    (void)state;
    sd_image src = {0}, out = {0};
    assert_sd_ok(sd_image_load(FIXTURES "image_synth_37x53.png", &src));
    assert_sd_ok(sd_image_resize_bicubic(&src, 37, 53, &out));
    assert_ptr_not_equal(out.data, src.data);
    assert_memory_equal(out.data, src.data, 37 * 53 * 3);
    sd_image_free(&out);
    sd_image_free(&src);
}

static void test_resize_constant_image_stays_constant(void **state) {
    (void)state;
    /* Weights sum to 1 in fixed point only up to rounding; Pillow's half-unit offset still keeps
     * a flat image flat, for every scale. */
    sd_image src = {0}, out = {0};
    assert_sd_ok(sd_image_alloc(&src, 19, 11));
    for (int v = 0; v < 256; v += 51) {
        memset(src.data, v, 19 * 11 * 3);
        const int sizes[][2] = {{1, 1}, {5, 3}, {19, 40}, {64, 64}, {7, 11}};
        for (int i = 0; i < 5; i++) {
            assert_sd_ok(sd_image_resize_bicubic(&src, sizes[i][0], sizes[i][1], &out));
            for (int j = 0; j < sizes[i][0] * sizes[i][1] * 3; j++)
                if (out.data[j] != v) fail_msg("flat %d -> %d at %d", v, out.data[j], j);
            sd_image_free(&out);
        }
    }
    sd_image_free(&src);
}

static void test_resize_bad_arguments(void **state) {
    (void)state;
    sd_image src = {0}, out = {0};
    assert_sd_ok(sd_image_alloc(&src, 4, 4));
    memset(src.data, 9, 48);
    assert_sd_fails(sd_image_resize_bicubic(&src, 0, 5, &out), SD_ERR_ARG, "0 x 5");
    assert_sd_fails(sd_image_resize_bicubic(&src, 5, -1, &out), SD_ERR_ARG, "must be positive");
    assert_sd_fails(sd_image_resize_bicubic(&src, 100000, 4, &out), SD_ERR_ARG, "100000 x 4");
    assert_null(out.data);
    sd_image empty = {0};
    assert_sd_fails(sd_image_resize_bicubic(&empty, 5, 5, &out), SD_ERR_ARG, "empty");
    sd_image_free(&src);
}

static void test_load512_bad_arguments(void **state) {
    (void)state;
    sd_image out = {0};
    assert_sd_fails(sd_image_load_512("data/images/chelsea.png", 0, 0, 0, 0, 0, &out), SD_ERR_ARG,
                    "data/images/chelsea.png");
    /* left = 450 pushes the quirky top clamp to -151 (rows 149..), and bottom = 200 ends the rows
     * at 100: numpy yields an empty crop, which the reference cannot resize either. */
    assert_sd_fails(sd_image_load_512("data/images/chelsea.png", 450, 0, 0, 200, 512, &out),
                    SD_ERR_ARG, "crop the 451 x 300 image to nothing");
    assert_null(out.data);
    /* Offsets beyond the image are clamped as in the reference, not rejected. */
    assert_sd_ok(sd_image_load_512("data/images/chelsea.png", 5000, 5000, 5000, 5000, 8, &out));
    assert_int_equal(out.width, 8);
    sd_image_free(&out);
}

/* ------------------------------------------------------------------------------------------------
 * Tensor conversions
 * --------------------------------------------------------------------------------------------- */

static void test_to_tensor_matches_torch(void **state) {
    (void)state;
    char *table;
    size_t n;
    read_bytes(FIXTURES "image_to_tensor_table.bin", &table, &n);
    assert_int_equal(n, 256 * sizeof(float));
    const float *want = (const float *)table;
    /* A 256 x 1 image holding every value in R, reversed in G, a constant in B. */
    sd_image img = {0};
    assert_sd_ok(sd_image_alloc(&img, 256, 1));
    for (int v = 0; v < 256; v++) {
        img.data[3 * v + 0] = (uint8_t)v;
        img.data[3 * v + 1] = (uint8_t)(255 - v);
        img.data[3 * v + 2] = 128;
    }
    sd_tensor *t = sd_tensor_new4(SD_F32, 4, 1, 3, 1, 256);
    assert_sd_ok(sd_image_to_tensor(&img, t));
    const float *x = sd_f32(t);
    for (int v = 0; v < 256; v++) {
        if (memcmp(&x[v], &want[v], 4) != 0)
            fail_msg("to_tensor(%d) = %.9g, torch gives %.9g", v, (double)x[v], (double)want[v]);
        assert_true(memcmp(&x[256 + v], &want[255 - v], 4) == 0);
        assert_true(memcmp(&x[512 + v], &want[128], 4) == 0);
    }
    sd_tensor *wrong = sd_tensor_new4(SD_F32, 4, 1, 3, 256, 1);
    assert_sd_fails(sd_image_to_tensor(&img, wrong), SD_ERR_SHAPE, "image tensor");
    sd_tensor_free(wrong);
    sd_tensor_free(t);
    sd_image_free(&img);
    free(table);
}

static void test_from_tensor_truncation_boundaries(void **state) {
    (void)state;
    char *blob;
    size_t size;
    read_bytes(FIXTURES "image_from_tensor_cases.bin", &blob, &size);
    uint32_t n;
    memcpy(&n, blob, 4);
    assert_int_equal(size, 4 + (size_t)n * 5);
    assert_int_equal(n % 3, 0);
    const uint8_t *want = (const uint8_t *)blob + 4 + (size_t)n * 4;
    /* Lay the inputs out as planes of a (1, 3, 1, n/3) tensor; the image interleaves them. */
    const int m = (int)(n / 3);
    sd_tensor *t = sd_tensor_new4(SD_F32, 4, 1, 3, 1, m);
    memcpy(t->data, blob + 4, (size_t)n * 4);
    sd_image img = {0};
    assert_sd_ok(sd_image_from_tensor(t, 0, &img));
    assert_int_equal(img.width, m);
    assert_int_equal(img.height, 1);
    int wrong = 0;
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < m; i++) {
            size_t k = (size_t)c * m + i;
            if (img.data[3 * i + c] != want[k] && wrong++ < 5) {
                float x;
                memcpy(&x, blob + 4 + 4 * k, 4);
                print_message("    x = %.9g (%a): got %d, reference %d\n", (double)x, (double)x,
                              img.data[3 * i + c], want[k]);
            }
        }
    if (wrong) fail_msg("%d of %u latent2image samples differ from torch/numpy", wrong, n);
    print_message("    %u boundary values truncate exactly as torch + numpy float32\n", n);
    sd_image_free(&img);
    sd_tensor_free(t);
    free(blob);
}

static void test_from_tensor_batch_and_errors(void **state) {
    (void)state;
    sd_tensor *t = sd_tensor_new4(SD_F32, 4, 2, 3, 2, 2);
    float *x = sd_f32(t);
    for (int i = 0; i < 24; i++) x[i] = i < 12 ? -1.0f : 1.0f; /* image 0 black, image 1 white */
    sd_image img = {0};
    assert_sd_ok(sd_image_from_tensor(t, 1, &img));
    for (int i = 0; i < 12; i++) assert_int_equal(img.data[i], 255);
    sd_image_free(&img);
    assert_sd_ok(sd_image_from_tensor(t, 0, &img));
    for (int i = 0; i < 12; i++) assert_int_equal(img.data[i], 0);
    sd_image_free(&img);
    assert_sd_fails(sd_image_from_tensor(t, 2, &img), SD_ERR_ARG, "batch index 2");
    x[13] = NAN;
    assert_sd_fails(sd_image_from_tensor(t, 1, &img), SD_ERR_NUMERIC, "NaN");
    assert_null(img.data);
    sd_tensor_free(t);

    /* (3, H, W) is accepted with batch index 0. */
    t = sd_tensor_new4(SD_F32, 3, 3, 1, 2, 0);
    assert_sd_ok(sd_image_from_tensor(t, 0, &img));
    assert_int_equal(img.data[0], 127); /* 0 -> 0.5 * 255 = 127.5, truncated */
    sd_image_free(&img);
    sd_tensor_free(t);

    t = sd_tensor_new4(SD_F32, 4, 1, 4, 2, 2);
    assert_sd_fails(sd_image_from_tensor(t, 0, &img), SD_ERR_SHAPE, "(1, 4, 2, 2)");
    sd_tensor_free(t);
    t = sd_tensor_new4(SD_F16, 4, 1, 3, 2, 2);
    assert_sd_fails(sd_image_from_tensor(t, 0, &img), SD_ERR_SHAPE, "F16");
    sd_tensor_free(t);
}

/* ------------------------------------------------------------------------------------------------
 * Saving and PSNR
 * --------------------------------------------------------------------------------------------- */

static void test_save_png_roundtrip_atomic(void **state) {
    (void)state;
    sd_image img = {0}, back = {0};
    assert_sd_ok(sd_image_load("data/images/chelsea.png", &img));
    char p[256];
    scratch_path(p, sizeof p, "saved.png");
    write_bytes(p, "old contents", 12); /* replaced whole */
    assert_sd_ok(sd_image_save_png(p, &img));
    assert_sd_ok(sd_image_load(p, &back));
    assert_int_equal(back.width, 451);
    assert_int_equal(back.height, 300);
    assert_memory_equal(back.data, img.data, 451 * 300 * 3);
    /* No temporary file is left beside it. */
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    assert_false(sd_file_exists(tmp));
    assert_sd_fails(sd_image_save_png("/nonexistent-dir/out.png", &img), SD_ERR_IO,
                    "/nonexistent-dir/out.png");
    sd_image empty = {0};
    assert_sd_fails(sd_image_save_png(p, &empty), SD_ERR_ARG, p);
    sd_image_free(&back);
    sd_image_free(&img);
}

static void test_psnr(void **state) {
    (void)state;
    sd_image a = {0}, b = {0};
    assert_sd_ok(sd_image_alloc(&a, 4, 2));
    assert_sd_ok(sd_image_alloc(&b, 4, 2));
    memset(a.data, 100, 24);
    memset(b.data, 100, 24);
    assert_true(isinf(sd_image_psnr(&a, &b)) && sd_image_psnr(&a, &b) > 0);
    b.data[0] = 110; /* MSE = 100 / 24 */
    double want = 10.0 * log10(255.0 * 255.0 / (100.0 / 24.0));
    assert_true(fabs(sd_image_psnr(&a, &b) - want) < 1e-12);
    sd_image c = {0};
    assert_sd_ok(sd_image_alloc(&c, 2, 4));
    assert_true(isnan(sd_image_psnr(&a, &c)));
    sd_image_free(&a);
    sd_image_free(&b);
    sd_image_free(&c);
}

static void test_alloc_limits(void **state) {
    (void)state;
    sd_image img = {0};
    assert_sd_fails(sd_image_alloc(&img, 0, 10), SD_ERR_ARG, "0 x 10");
    assert_sd_fails(sd_image_alloc(&img, SD_IMAGE_MAX_SIDE + 1, 1), SD_ERR_ARG, "20001 x 1");
    assert_sd_fails(sd_image_alloc(&img, 15000, 15000), SD_ERR_ARG, "100000000 pixels");
    assert_null(img.data);
    sd_image_free(&img); /* freeing an empty image is fine */
    sd_image_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resize_matches_pillow),
        cmocka_unit_test(test_load512_matches_reference),
        cmocka_unit_test(test_decode_matches_pillow),
        cmocka_unit_test(test_crafted_files_fail_cleanly),
        cmocka_unit_test(test_missing_directory_empty_text),
        cmocka_unit_test(test_truncated_png_and_jpeg),
        cmocka_unit_test(test_png_without_iend_still_loads),
        cmocka_unit_test(test_corrupted_bytes_never_crash),
        cmocka_unit_test(test_resize_same_size_is_a_copy),
        cmocka_unit_test(test_resize_constant_image_stays_constant),
        cmocka_unit_test(test_resize_bad_arguments),
        cmocka_unit_test(test_load512_bad_arguments),
        cmocka_unit_test(test_to_tensor_matches_torch),
        cmocka_unit_test(test_from_tensor_truncation_boundaries),
        cmocka_unit_test(test_from_tensor_batch_and_errors),
        cmocka_unit_test(test_save_png_roundtrip_atomic),
        cmocka_unit_test(test_psnr),
        cmocka_unit_test(test_alloc_limits),
    };
    return cmocka_run_group_tests_name("image", tests, make_scratch, remove_scratch);
}
