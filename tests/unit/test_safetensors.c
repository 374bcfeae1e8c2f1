/* test_safetensors.c: the safetensors reader and writer.
 *
 *  - a file written by the Python `safetensors` package (tests/fixtures/st_python.safetensors, from
 *    tests/oracle/gen_40_st_python.py) reads back with the right dtypes, shapes and values, and our
 *    writer reproduces it byte for byte;
 *  - round trips of every dtype, metadata with characters JSON must escape, alignment; every F16 /
 *    BF16 bit pattern converts as the core scalar conversions do;
 *  - hostile files: each fails with the right status and a message naming the file (and the
 *    tensor where there is one), never a crash. Run under ASan/UBSan (make test-asan). */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sd/io.h"

#define PY_FIXTURE "tests/fixtures/st_python.safetensors"

static char tmp_dir[64];

static int setup_tmp(void **state) {
    (void)state;
    return testutil_make_tmpdir(tmp_dir, sizeof tmp_dir, "sd_test_st");
}

static int teardown_tmp(void **state) {
    (void)state;
    return testutil_remove_tree(tmp_dir);
}

static const char *tmp_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", tmp_dir, name);
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* A file with the given declared header length, header text and data bytes. */
static void write_st(const char *path, uint64_t declared_len, const char *header, const void *data,
                     size_t data_len) {
    size_t hl = strlen(header);
    uint8_t *buf = malloc(8 + hl + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(declared_len >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data_len) memcpy(buf + 8 + hl, data, data_len);
    write_bytes(path, buf, 8 + hl + data_len);
    free(buf);
}

/* A file whose header length is right. */
static const char *make_st(const char *name, const char *header, size_t data_len) {
    static char path[256];
    tmp_path(path, sizeof path, name);
    uint8_t *data = calloc(1, data_len + 1);
    write_st(path, strlen(header), header, data, data_len);
    free(data);
    return path;
}

/* ------------------------------------------------------------------------------------------------ */

static void test_python_fixture_values(void **state) {
    (void)state;
    sd_safetensors st;
    assert_sd_ok(sd_safetensors_open(PY_FIXTURE, &st));
    assert_int_equal(st.n_entries, 10);
    for (int i = 1; i < st.n_entries; i++) assert_true(strcmp(st.entries[i - 1].name, st.entries[i].name) < 0);
    assert_int_equal(st.n_meta, 1);
    assert_string_equal(sd_safetensors_meta(&st, "format"), "pt");
    assert_null(sd_safetensors_meta(&st, "nothing"));
    assert_null(sd_safetensors_find(&st, "absent"));

    sd_tensor *t;
    const sd_st_entry *e = sd_safetensors_find(&st, "weights.f32");
    assert_non_null(e);
    assert_int_equal(e->dtype, SD_F32);
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->shape[0], 2);
    assert_int_equal(e->shape[1], 3);
    assert_sd_ok(sd_safetensors_load_f32(&st, e, &t));
    for (int i = 0; i < 6; i++) assert_true(sd_f32(t)[i] == i * 0.25f - 0.5f);
    assert_string_equal(t->name, "weights.f32");
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "weights.f16");
    assert_int_equal(e->dtype, SD_F16);
    assert_sd_ok(sd_safetensors_load_f32(&st, e, &t));
    const float f16_want[4] = {1.0f, -2.5f, 65504.0f, ldexpf(1.0f, -24)};
    for (int i = 0; i < 4; i++) assert_true(sd_f32(t)[i] == f16_want[i]);
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "weights.bf16");
    assert_int_equal(e->dtype, SD_BF16);
    assert_sd_ok(sd_safetensors_load_f32(&st, e, &t));
    const float bf16_want[4] = {1.0f, -3.140625f, 256.0f, 0.0078125f};
    for (int i = 0; i < 4; i++) assert_true(sd_f32(t)[i] == bf16_want[i]);
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "weights.f64");
    assert_sd_ok(sd_safetensors_load_f32(&st, e, &t));
    assert_true(sd_f32(t)[0] == (float)0.1 && sd_f32(t)[1] == -2.5f);
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "ids.i64");
    assert_int_equal(e->dtype, SD_I64);
    assert_sd_fails(sd_safetensors_load_f32(&st, e, &t), SD_ERR_SHAPE, "'ids.i64' has dtype I64");
    assert_null(t);
    assert_sd_ok(sd_safetensors_load_raw(&st, e, &t));
    const int64_t ids[3] = {49406, -1, (int64_t)1 << 40};
    assert_memory_equal(t->data, ids, sizeof ids);
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "count.i32");
    assert_sd_ok(sd_safetensors_load_raw(&st, e, &t));
    assert_int_equal(((int32_t *)t->data)[0], -7);
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "bytes.u8");
    assert_sd_ok(sd_safetensors_load_raw(&st, e, &t));
    assert_int_equal(((uint8_t *)t->data)[1], 255);
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "mask.bool");
    assert_int_equal(e->dtype, SD_BOOL);
    assert_sd_ok(sd_safetensors_load_raw(&st, e, &t));
    const uint8_t mask[3] = {1, 0, 1};
    assert_memory_equal(t->data, mask, 3);
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "scalar.f32");
    assert_int_equal(e->ndim, 0);
    assert_sd_ok(sd_safetensors_load_f32(&st, e, &t));
    assert_int_equal(sd_numel(t), 1);
    assert_true(sd_f32(t)[0] == 7.0f);
    sd_tensor_free(t);

    e = sd_safetensors_find(&st, "empty.f32");
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->shape[0], 0);
    assert_int_equal(e->begin, e->end);
    assert_sd_ok(sd_safetensors_load_f32(&st, e, &t));
    assert_int_equal(sd_numel(t), 0);
    sd_tensor_free(t);
    sd_safetensors_close(&st);
}

/* Our writer, given the fixture's tensors and metadata, writes the very same bytes. */
static void test_writer_matches_python_bytes(void **state) {
    (void)state;
    sd_safetensors st;
    assert_sd_ok(sd_safetensors_open(PY_FIXTURE, &st));
    const sd_tensor *tensors[16];
    const char *names[16];
    int n = st.n_entries;
    /* Hand them over in reverse name order: the writer must impose the reference order itself. */
    for (int i = 0; i < n; i++) {
        sd_tensor *t;
        assert_sd_ok(sd_safetensors_load_raw(&st, &st.entries[n - 1 - i], &t));
        tensors[i] = t;
        names[i] = st.entries[n - 1 - i].name;
    }
    const char *meta[2] = {st.meta_keys[0], st.meta_values[0]};
    char path[256];
    assert_sd_ok(sd_safetensors_write(tmp_path(path, sizeof path, "mine.safetensors"), tensors, names, n, meta, 1));

    char *want, *got;
    size_t want_len, got_len;
    assert_sd_ok(sd_read_file(PY_FIXTURE, &want, &want_len));
    assert_sd_ok(sd_read_file(path, &got, &got_len));
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
    free(want);
    free(got);
    for (int i = 0; i < n; i++) sd_tensor_free((sd_tensor *)tensors[i]);
    sd_safetensors_close(&st);
}

static void test_roundtrip_all_dtypes(void **state) {
    (void)state;
    const sd_dtype dtypes[] = {SD_F32, SD_F16, SD_BF16, SD_F64, SD_I64, SD_I32, SD_U8, SD_BOOL};
    const int n = 8;
    sd_tensor *tensors[8];
    char names[8][32];
    const char *name_ptrs[8];
    for (int i = 0; i < n; i++) {
        int64_t shape[3] = {2 + i % 3, 3, 1 + i};
        tensors[i] = sd_tensor_new(dtypes[i], 3, shape);
        uint8_t *bytes = tensors[i]->data;
        for (size_t b = 0; b < sd_nbytes(tensors[i]); b++) bytes[b] = (uint8_t)(b * 37 + i);
        if (dtypes[i] == SD_BOOL)
            for (size_t b = 0; b < sd_nbytes(tensors[i]); b++) bytes[b] &= 1;
        snprintf(names[i], sizeof names[i], "t%d.%s", 7 - i, sd_dtype_name(dtypes[i]));
        name_ptrs[i] = names[i];
    }
    /* Metadata that needs escaping: quotes, backslashes, control characters, UTF-8. */
    const char *meta[6] = {"format", "pt", "quote\"back\\slash", "line\nfeed\ttab\x01", "utf8", "caf\xc3\xa9 \xe2\x9c\x93"};
    char path[256];
    tmp_path(path, sizeof path, "roundtrip.safetensors");
    assert_sd_ok(sd_safetensors_write(path, (const sd_tensor *const *)tensors, name_ptrs, n, meta, 3));

    sd_safetensors st;
    assert_sd_ok(sd_safetensors_open(path, &st));
    assert_int_equal(st.n_entries, n);
    assert_int_equal(st.n_meta, 3);
    for (int m = 0; m < 3; m++) {
        assert_string_equal(st.meta_keys[m], meta[2 * m]); /* order kept */
        assert_string_equal(sd_safetensors_meta(&st, meta[2 * m]), meta[2 * m + 1]);
    }
    /* Header padded to 8 bytes, every tensor aligned to its element size. */
    assert_int_equal(((const uint8_t *)st.data - (const uint8_t *)st.map) % 8, 0);
    for (int i = 0; i < n; i++) {
        const sd_st_entry *e = sd_safetensors_find(&st, names[i]);
        assert_non_null(e);
        assert_int_equal(e->dtype, dtypes[i]);
        assert_int_equal(e->ndim, 3);
        assert_int_equal(e->begin % sd_dtype_size(e->dtype), 0);
        sd_tensor *t;
        assert_sd_ok(sd_safetensors_load_raw(&st, e, &t));
        assert_true(sd_same_shape(t, tensors[i]));
        assert_memory_equal(t->data, tensors[i]->data, sd_nbytes(t));
        sd_tensor_free(t);
    }
    sd_safetensors_close(&st);

    /* No temporary file is left behind. */
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_false(sd_file_exists(tmp));

    /* No tensors at all is a valid file too. */
    assert_sd_ok(sd_safetensors_write(path, NULL, NULL, 0, NULL, 0));
    assert_sd_ok(sd_safetensors_open(path, &st));
    assert_int_equal(st.n_entries, 0);
    sd_safetensors_close(&st);
    for (int i = 0; i < n; i++) sd_tensor_free(tensors[i]);
}

static void test_writer_rejects_bad_input(void **state) {
    (void)state;
    int64_t shape[1] = {2};
    sd_tensor *a = sd_tensor_new(SD_F32, 1, shape), *b = sd_tensor_new(SD_F16, 1, shape);
    const sd_tensor *ts[2] = {a, b};
    char path[256];
    tmp_path(path, sizeof path, "bad.safetensors");
    const char *dup[2] = {"same", "same"};
    assert_sd_fails(sd_safetensors_write(path, ts, dup, 2, NULL, 0), SD_ERR_ARG, "'same' is used twice");
    const char *empty[2] = {"ok", ""};
    assert_sd_fails(sd_safetensors_write(path, ts, empty, 2, NULL, 0), SD_ERR_ARG, "has no name");
    const char *reserved[2] = {"ok", "__metadata__"};
    assert_sd_fails(sd_safetensors_write(path, ts, reserved, 2, NULL, 0), SD_ERR_ARG, "reserved");
    const sd_tensor *with_null[2] = {a, NULL};
    const char *names[2] = {"a", "b"};
    assert_sd_fails(sd_safetensors_write(path, with_null, names, 2, NULL, 0), SD_ERR_ARG, "'b' is NULL");
    assert_sd_fails(sd_safetensors_write("/nonexistent-dir/x.safetensors", ts, names, 2, NULL, 0), SD_ERR_IO,
                    "/nonexistent-dir/x.safetensors");
    assert_false(sd_file_exists(path));
    sd_tensor_free(a);
    sd_tensor_free(b);
}

/* Loading converts every F16 and BF16 bit pattern exactly as the core scalar conversions do (the
 * loader uses a lookup table and a shift for speed). Compared bit for bit, NaN payloads included. */
static void test_conversion_exhaustive(void **state) {
    (void)state;
    int64_t shape[1] = {65536};
    sd_tensor *h = sd_tensor_new(SD_F16, 1, shape), *b = sd_tensor_new(SD_BF16, 1, shape);
    for (uint32_t i = 0; i < 65536; i++) ((uint16_t *)h->data)[i] = ((uint16_t *)b->data)[i] = (uint16_t)i;
    const sd_tensor *ts[2] = {h, b};
    const char *names[2] = {"half", "bfloat"};
    char path[256];
    assert_sd_ok(sd_safetensors_write(tmp_path(path, sizeof path, "all_halves.safetensors"), ts, names, 2, NULL, 0));
    sd_safetensors st;
    assert_sd_ok(sd_safetensors_open(path, &st));
    sd_tensor *hf, *bf;
    assert_sd_ok(sd_safetensors_load_f32(&st, sd_safetensors_find(&st, "half"), &hf));
    assert_sd_ok(sd_safetensors_load_f32(&st, sd_safetensors_find(&st, "bfloat"), &bf));
    for (uint32_t i = 0; i < 65536; i++) {
        float want_h = sd_f16_to_f32((uint16_t)i), want_b = sd_bf16_to_f32((uint16_t)i);
        if (memcmp(&sd_f32(hf)[i], &want_h, 4) != 0) fail_msg("F16 0x%04x converts differently", i);
        if (memcmp(&sd_f32(bf)[i], &want_b, 4) != 0) fail_msg("BF16 0x%04x converts differently", i);
    }
    sd_tensor_free(hf);
    sd_tensor_free(bf);
    sd_tensor_free(h);
    sd_tensor_free(b);
    sd_safetensors_close(&st);
}

/* Offsets need not be aligned: an F16 tensor at an odd offset still converts (UBSan checks). */
static void test_unaligned_offsets(void **state) {
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "unaligned.safetensors");
    const char *header = "{\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                         "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[1,5]},"
                         "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[5,13]}}";
    uint8_t data[13] = {9, 0x00, 0x3c, 0x00, 0xc0};
    double minus_half = -0.5;
    memcpy(data + 5, &minus_half, 8);
    write_st(path, strlen(header), header, data, sizeof data);
    sd_safetensors st;
    assert_sd_ok(sd_safetensors_open(path, &st));
    sd_tensor *t;
    assert_sd_ok(sd_safetensors_load_f32(&st, sd_safetensors_find(&st, "h"), &t));
    assert_true(sd_f32(t)[0] == 1.0f && sd_f32(t)[1] == -2.0f);
    sd_tensor_free(t);
    assert_sd_ok(sd_safetensors_load_f32(&st, sd_safetensors_find(&st, "d"), &t));
    assert_true(sd_f32(t)[0] == -0.5f);
    sd_tensor_free(t);
    sd_safetensors_close(&st);
}

/* ------------------------------------------------------------------------------------------------
 * Hostile inputs
 * --------------------------------------------------------------------------------------------- */

/* Opens `path`, expects `code` and a message with the path and `needle`. */
static void expect_open_fails(const char *path, sd_status code, const char *needle) {
    sd_safetensors st;
    sd_status s = sd_safetensors_open(path, &st);
    if (s != code)
        fail_msg("%s: expected %s, got %s (%s)", path, sd_status_name(code), sd_status_name(s), sd_last_error());
    if (!testutil_contains(sd_last_error(), path))
        fail_msg("message \"%s\" does not name the file %s", sd_last_error(), path);
    if (!testutil_contains(sd_last_error(), needle))
        fail_msg("message \"%s\" does not mention \"%s\"", sd_last_error(), needle);
    assert_null(st.map);
    assert_null(st.entries);
}

static void test_hostile_lengths(void **state) {
    (void)state;
    char path[256];
    write_bytes(tmp_path(path, sizeof path, "empty.safetensors"), "", 0);
    expect_open_fails(path, SD_ERR_FORMAT, "empty");

    write_bytes(tmp_path(path, sizeof path, "short.safetensors"), "\x05\0\0", 3);
    expect_open_fails(path, SD_ERR_FORMAT, "too short");

    /* 2^60: must be refused before anything of that size is allocated (ASan would abort). */
    write_st(tmp_path(path, sizeof path, "huge.safetensors"), (uint64_t)1 << 60, "{}", NULL, 0);
    expect_open_fails(path, SD_ERR_FORMAT, "header length 1152921504606846976");

    write_st(tmp_path(path, sizeof path, "maxlen.safetensors"), UINT64_MAX, "{}", NULL, 0);
    expect_open_fails(path, SD_ERR_FORMAT, "runs past the end");

    write_st(tmp_path(path, sizeof path, "past.safetensors"), 3, "{}", NULL, 0); /* one past the end */
    expect_open_fails(path, SD_ERR_FORMAT, "runs past the end");

    write_st(tmp_path(path, sizeof path, "zero.safetensors"), 0, "", NULL, 0);
    expect_open_fails(path, SD_ERR_FORMAT, "header is empty");

    /* A pickle (.ckpt renamed): the first 8 bytes read as a length far past the end. */
    static const char pickle[] = "\x80\x02}q\0(X\x0b\0\0\0state_dict";
    write_bytes(tmp_path(path, sizeof path, "pickle.safetensors"), pickle, sizeof pickle - 1);
    expect_open_fails(path, SD_ERR_FORMAT, "past the end");

    /* A directory, a missing file. */
    tmp_path(path, sizeof path, "a_dir.safetensors");
    assert_int_equal(mkdir(path, 0755), 0);
    expect_open_fails(path, SD_ERR_IO, "is a directory");
    tmp_path(path, sizeof path, "missing.safetensors");
    expect_open_fails(path, SD_ERR_IO, "cannot open");
}

static void test_hostile_headers(void **state) {
    (void)state;
    expect_open_fails(make_st("invalid.safetensors", "{\"a\": {\"dtype\": ", 0), SD_ERR_FORMAT, "not valid JSON");
    expect_open_fails(make_st("array.safetensors", "[1, 2, 3]", 0), SD_ERR_FORMAT, "not a JSON object");
    expect_open_fails(make_st("string.safetensors", "\"hello\"", 0), SD_ERR_FORMAT, "not a JSON object");
    expect_open_fails(make_st("trailing.safetensors", "{} xx", 0), SD_ERR_FORMAT, "unexpected bytes");
    expect_open_fails(make_st("entry_number.safetensors", "{\"w\": 5}", 0), SD_ERR_FORMAT, "'w'");
    expect_open_fails(make_st("no_dtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w': missing or non-string \"dtype\"");
    expect_open_fails(make_st("bad_dtype.safetensors", "{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w': unknown dtype \"F33\"");
    expect_open_fails(make_st("i8.safetensors", "{\"w\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4),
                      SD_ERR_UNSUPPORTED, "'w' has dtype I8");
    expect_open_fails(make_st("no_shape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w': missing or non-array \"shape\"");
    expect_open_fails(make_st("neg_dim.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w': dimension 0");
    expect_open_fails(make_st("frac_dim.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2, 1.5],\"data_offsets\":[0,12]}}", 12),
                      SD_ERR_FORMAT, "tensor 'w': dimension 1");
    expect_open_fails(make_st("str_dim.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}}", 16),
                      SD_ERR_FORMAT, "tensor 'w': dimension 0");
    expect_open_fails(make_st("inf_dim.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1e400],\"data_offsets\":[0,4]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w'");
    expect_open_fails(make_st("7dims.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4),
                      SD_ERR_UNSUPPORTED, "'w' has 7 dimensions");
    /* (2^32)^2 * 4 bytes = 2^66 wraps to 0 in 64 bits: with offsets [0, 0] an unchecked product
     * would "match". */
    expect_open_fails(make_st("wrap.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0),
                      SD_ERR_FORMAT, "tensor 'w': shape is too large");
    expect_open_fails(make_st("huge_dims.safetensors", "{\"w\":{\"dtype\":\"F64\",\"shape\":[9007199254740992,9007199254740992,9007199254740992],\"data_offsets\":[0,8]}}", 8),
                      SD_ERR_FORMAT, "tensor 'w': shape is too large");
    expect_open_fails(make_st("big_dim.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1e17],\"data_offsets\":[0,4]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w': dimension 0");
    expect_open_fails(make_st("no_offsets.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w': \"data_offsets\"");
    expect_open_fails(make_st("three_offsets.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8),
                      SD_ERR_FORMAT, "tensor 'w': \"data_offsets\"");
    expect_open_fails(make_st("neg_offset.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w': \"data_offsets\" are not non-negative integers");
    expect_open_fails(make_st("reversed.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8),
                      SD_ERR_FORMAT, "tensor 'w': data_offsets [8, 4] end before they begin");
    expect_open_fails(make_st("past_end.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12),
                      SD_ERR_FORMAT, "tensor 'w': data_offsets [0, 16] run past the end");
    expect_open_fails(make_st("far_past_end.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[18446744073709551612,18446744073709551616]}}", 4),
                      SD_ERR_FORMAT, "tensor 'w': \"data_offsets\"");
    expect_open_fails(make_st("size_mismatch.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24),
                      SD_ERR_FORMAT, "tensor 'w': data_offsets span 20 bytes but shape (2, 3) of F32 needs 24");
    expect_open_fails(make_st("overlap.safetensors",
                              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20),
                      SD_ERR_FORMAT, "tensors 'a' [0, 16] and 'b' [12, 20] overlap");
    expect_open_fails(make_st("alias.safetensors",
                              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                              "\"b\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16),
                      SD_ERR_FORMAT, "overlap");
    expect_open_fails(make_st("duplicate.safetensors",
                              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                              "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
                      SD_ERR_FORMAT, "tensor 'w' appears twice");
    expect_open_fails(make_st("meta_array.safetensors", "{\"__metadata__\":[1]}", 0), SD_ERR_FORMAT,
                      "\"__metadata__\" is not a JSON object");
    expect_open_fails(make_st("meta_number.safetensors", "{\"__metadata__\":{\"format\":1}}", 0), SD_ERR_FORMAT,
                      "metadata value of \"format\" is not a string");
    expect_open_fails(make_st("meta_twice.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0),
                      SD_ERR_FORMAT, "\"__metadata__\" appears twice");

    /* Legitimate corner cases still open: padding, an empty tensor inside another's range, gaps. */
    sd_safetensors st;
    const char *ok = make_st("corners.safetensors",
                             "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                             "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]},"
                             "\"g\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[20,22]}}      ", 22);
    assert_sd_ok(sd_safetensors_open(ok, &st));
    assert_int_equal(st.n_entries, 3);
    sd_safetensors_close(&st);
}

/* Every truncation of a valid file is rejected, and random corruption of its header never crashes
 * (whatever opens must load in bounds; ASan checks). */
static void test_truncation_and_corruption(void **state) {
    (void)state;
    char *good;
    size_t good_len;
    assert_sd_ok(sd_read_file(PY_FIXTURE, &good, &good_len));
    char path[256];
    tmp_path(path, sizeof path, "cut.safetensors");
    for (size_t len = 0; len < good_len; len++) {
        write_bytes(path, good, len);
        sd_safetensors st;
        sd_status s = sd_safetensors_open(path, &st);
        if (s == SD_OK) fail_msg("a file cut to %zu of %zu bytes opened", len, good_len);
        assert_true(testutil_contains(sd_last_error(), path));
    }

    uint64_t rng = 0x9e3779b97f4a7c15ull;
    char *bad = malloc(good_len);
    int opened = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(bad, good, good_len);
        int flips = 1 + iter % 4;
        for (int f = 0; f < flips; f++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            size_t at = (size_t)(rng % 700); /* the length field and the JSON header */
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            static const char pool[] = "0123456789{}[]\",:-.eE \x00\xff";
            bad[at] = (rng & 1) ? pool[(rng >> 8) % (sizeof pool - 1)] : (char)(rng >> 16);
        }
        write_bytes(path, bad, good_len);
        sd_safetensors st;
        if (sd_safetensors_open(path, &st) != SD_OK) continue;
        opened++;
        for (int i = 0; i < st.n_entries; i++) {
            sd_tensor *t;
            sd_status s = sd_safetensors_load_raw(&st, &st.entries[i], &t);
            assert_int_equal(s, SD_OK);
            sd_tensor_free(t);
        }
        sd_safetensors_close(&st);
    }
    print_message("corruption: %d of 3000 mutated files still valid\n", opened);
    free(bad);
    free(good);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_fixture_values),
        cmocka_unit_test(test_writer_matches_python_bytes),
        cmocka_unit_test(test_roundtrip_all_dtypes),
        cmocka_unit_test(test_writer_rejects_bad_input),
        cmocka_unit_test(test_conversion_exhaustive),
        cmocka_unit_test(test_unaligned_offsets),
        cmocka_unit_test(test_hostile_lengths),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_truncation_and_corruption),
    };
    return cmocka_run_group_tests_name("safetensors", tests, setup_tmp, teardown_tmp);
}
