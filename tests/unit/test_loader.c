/* test_loader.c: the weight store, the LDM -> diffusers name mapping and the checkpoint front door.
 *
 *  - weight store: lookups, shape checks and their messages, duplicates, usage tracking, growth;
 *  - full-size SD v1.5 mapping without a 4 GB file: every single-file (LDM) name of
 *    tests/fixtures/sd15_names_ldm.json maps to exactly its diffusers name (and the 1x1 reshape
 *    gives the diffusers shape), every diffusers tensor of sd15_names_diffusers.json is hit exactly
 *    once, and the extras real files carry (EMA, schedule buffers, position_ids) map to no part.
 *    The fixtures come from tests/oracle/gen_40_sd15_names.py, validated there with diffusers' own
 *    converters, so this is not the C code checking itself;
 *  - the numbering follows the config (other block and layer counts);
 *  - end to end with the tiny model (models/tiny/): a single-file checkpoint written here under the
 *    LDM names of tests/fixtures/tiny_ldm_names.json opens to exactly the tensors of the diffusers
 *    folder; so do a folder in the old diffusers / transformers spellings and a sharded one;
 *  - the front door's failures: missing paths, incomplete folders, pickles, malformed configs,
 *    SD 2.x / SDXL files. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sd/io.h"

#define TINY_DIR "models/tiny"
#define REGENERATE "regenerate tests/fixtures/tiny_ldm_names.json (python tests/oracle/gen_40_sd15_names.py)"

static char tmp_dir[64];

static int setup_tmp(void **state) {
    (void)state;
    return testutil_make_tmpdir(tmp_dir, sizeof tmp_dir, "sd_test_loader");
}

static int teardown_tmp(void **state) {
    (void)state;
    return testutil_remove_tree(tmp_dir);
}

/* tmp_dir/<fmt...> into a rotating static buffer: valid for the next few calls only, so callers
 * that keep a path copy it. */
static const char *tmp(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *tmp(const char *fmt, ...) {
    static char bufs[8][512];
    static int next = 0;
    char *b = bufs[next++ % 8];
    int n = snprintf(b, 512, "%s/", tmp_dir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, 512 - (size_t)n, fmt, ap);
    va_end(ap);
    return b;
}

static void write_text(const char *path, const char *text) {
    assert_sd_ok(sd_write_file_atomic(path, text, strlen(text)));
}

static void copy_file(const char *from, const char *to) {
    char *data;
    size_t n;
    assert_sd_ok(sd_read_file(from, &data, &n));
    assert_sd_ok(sd_write_file_atomic(to, data, n));
    free(data);
}

static cJSON *read_json(const char *path) {
    char *text;
    assert_sd_ok(sd_read_file(path, &text, NULL));
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) fail_msg("%s: cannot parse", path);
    return root;
}

static int json_shape(const cJSON *array, int64_t *shape) {
    int n = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, array) shape[n++] = (int64_t)d->valuedouble;
    return n;
}

static int have_tiny(void) {
    if (sd_file_exists(TINY_DIR "/model_index.json")) return 1;
    print_message("[   SKIP   ] %s not built yet (python tests/oracle/gen_20_tiny_model.py)\n", TINY_DIR);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Weight store
 * --------------------------------------------------------------------------------------------- */

static sd_tensor *tensor2(int64_t a, int64_t b) {
    int64_t shape[2] = {a, b};
    return sd_tensor_new(SD_F32, 2, shape);
}

static void test_weights_store(void **state) {
    (void)state;
    sd_weights *w = sd_weights_new("ckpt/unet.safetensors");
    assert_string_equal(sd_weights_source(w), "ckpt/unet.safetensors");
    assert_sd_ok(sd_weights_add(w, "conv_in.weight", tensor2(320, 4)));
    assert_sd_ok(sd_weights_add(w, "conv_in.bias", tensor2(1, 320)));
    assert_sd_fails(sd_weights_add(w, "conv_in.weight", tensor2(1, 1)), SD_ERR_FORMAT,
                    "ckpt/unet.safetensors: tensor 'conv_in.weight' appears twice");
    assert_sd_fails(sd_weights_add(w, "", tensor2(1, 1)), SD_ERR_ARG, "missing name");
    assert_int_equal(sd_weights_count(w), 2);
    assert_string_equal(sd_weights_name_at(w, 0), "conv_in.weight");
    assert_string_equal(sd_weights_name_at(w, 1), "conv_in.bias");
    assert_null(sd_weights_name_at(w, 2));
    assert_string_equal(sd_weights_tensor_at(w, 0)->name, "conv_in.weight");
    assert_non_null(sd_weights_find(w, "conv_in.bias"));
    assert_null(sd_weights_find(w, "conv_in"));

    const char *first;
    assert_int_equal(sd_weights_unused(w, &first), 2);
    assert_string_equal(first, "conv_in.weight");

    sd_tensor *t;
    const int64_t want[2] = {320, 4}, wrong[2] = {320, 5}, any[2] = {-1, 4};
    const int64_t want4[4] = {320, 320, 1, 1};
    assert_sd_ok(sd_weights_get(w, "conv_in.weight", 2, want, &t));
    assert_ptr_equal(t, sd_weights_find(w, "conv_in.weight"));
    assert_sd_fails(sd_weights_get(w, "conv_in.weight", 2, wrong, &t), SD_ERR_SHAPE,
                    "ckpt/unet.safetensors: tensor 'conv_in.weight': expected shape (320, 5), got (320, 4)");
    assert_null(t);
    assert_sd_ok(sd_weights_get(w, "conv_in.weight", 2, any, &t));
    assert_sd_fails(sd_weights_get(w, "down_blocks.0.attentions.0.proj_in.weight", 4, want4, &t), SD_ERR_MISSING,
                    "ckpt/unet.safetensors: missing tensor 'down_blocks.0.attentions.0.proj_in.weight' "
                    "(expected shape (320, 320, 1, 1))");
    assert_int_equal(sd_weights_unused(w, &first), 1);
    assert_string_equal(first, "conv_in.bias");

    /* A non-F32 tensor is found but refused by get. */
    int64_t one[1] = {3};
    assert_sd_ok(sd_weights_add(w, "ids", sd_tensor_new(SD_I64, 1, one)));
    assert_sd_fails(sd_weights_get(w, "ids", 1, one, &t), SD_ERR_SHAPE, "'ids': expected dtype F32, got I64");
    sd_weights_free(w);
    sd_weights_free(NULL);
}

static void test_weights_store_many(void **state) {
    (void)state;
    sd_weights *w = sd_weights_new("many");
    char name[64];
    const int n = 5000; /* several table growths */
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "blocks.%d.weight", i);
        int64_t shape[1] = {1 + i % 7};
        assert_sd_ok(sd_weights_add(w, name, sd_tensor_new(SD_F32, 1, shape)));
    }
    assert_int_equal(sd_weights_count(w), n);
    for (int i = 0; i < n; i += 2) {
        snprintf(name, sizeof name, "blocks.%d.weight", i);
        int64_t shape[1] = {1 + i % 7};
        sd_tensor *t;
        assert_sd_ok(sd_weights_get(w, name, 1, shape, &t));
        assert_string_equal(t->name, name);
    }
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "blocks.%d.weight", i);
        assert_string_equal(sd_weights_name_at(w, i), name);
    }
    const char *first;
    assert_int_equal(sd_weights_unused(w, &first), n / 2);
    assert_string_equal(first, "blocks.1.weight");
    assert_null(sd_weights_find(w, "blocks.5000.weight"));
    sd_weights_free(w);
}

static void test_weights_load_file(void **state) {
    (void)state;
    int64_t s2[2] = {2, 2}, s1[1] = {3};
    sd_tensor *a = sd_tensor_new(SD_F16, 2, s2), *b = sd_tensor_new(SD_F32, 1, s1), *c = sd_tensor_new(SD_BF16, 1, s1);
    for (int i = 0; i < 4; i++) ((uint16_t *)a->data)[i] = sd_f32_to_f16((float)i + 0.5f);
    for (int i = 0; i < 3; i++) sd_f32(b)[i] = -(float)i;
    for (int i = 0; i < 3; i++) ((uint16_t *)c->data)[i] = sd_f32_to_bf16(2.0f * (float)i);
    const sd_tensor *ts[3] = {a, b, c};
    const char *names[3] = {"unet.conv.weight", "unet.conv.bias", "vae.x"};
    char path[512];
    snprintf(path, sizeof path, "%s", tmp("weights.safetensors"));
    assert_sd_ok(sd_safetensors_write(path, ts, names, 3, NULL, 0));

    sd_weights *w = sd_weights_new(path);
    assert_sd_ok(sd_weights_load_file(w, path, "unet."));
    assert_int_equal(sd_weights_count(w), 2);
    sd_tensor *t;
    assert_sd_ok(sd_weights_get(w, "conv.weight", 2, s2, &t));
    assert_int_equal(t->dtype, SD_F32);
    for (int i = 0; i < 4; i++) assert_true(sd_f32(t)[i] == (float)i + 0.5f);
    assert_sd_ok(sd_weights_get(w, "conv.bias", 1, s1, &t));
    assert_true(sd_f32(t)[2] == -2.0f);
    /* Loading again collides with what is there. */
    assert_sd_fails(sd_weights_load_file(w, path, "unet."), SD_ERR_FORMAT, "appears twice");
    sd_weights_free(w);

    w = sd_weights_new("all");
    assert_sd_ok(sd_weights_load_file(w, path, ""));
    assert_int_equal(sd_weights_count(w), 3);
    assert_true(sd_f32(sd_weights_find(w, "vae.x"))[2] == 4.0f);
    assert_sd_fails(sd_weights_load_file(w, tmp("nope.safetensors"), ""), SD_ERR_IO, "nope.safetensors");
    sd_weights_free(w);
    sd_tensor_free(a);
    sd_tensor_free(b);
    sd_tensor_free(c);
}

/* ------------------------------------------------------------------------------------------------
 * LDM -> diffusers names
 * --------------------------------------------------------------------------------------------- */

static sd_model_part part_from_string(const char *s) {
    if (strcmp(s, "unet") == 0) return SD_PART_UNET;
    if (strcmp(s, "vae") == 0) return SD_PART_VAE;
    if (strcmp(s, "text") == 0) return SD_PART_TEXT;
    return SD_PART_NONE;
}

typedef struct {
    sd_model_part part;
    const char *name;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    int hits;
} expected_tensor;

static int compare_expected(const void *a, const void *b) {
    const expected_tensor *x = a, *y = b;
    if (x->part != y->part) return (int)x->part - (int)y->part;
    return strcmp(x->name, y->name);
}

/* Maps every LDM row; checks part, name, reshape and shape against the diffusers table. */
static void check_ldm_rows(const cJSON *rows, const sd_unet_config *unet, const sd_vae_config *vae,
                           expected_tensor *table, int n_table, const char *(*rewrite)(const char *),
                           int *n_reshaped) {
    const cJSON *row;
    cJSON_ArrayForEach(row, rows) {
        const char *ldm = cJSON_GetArrayItem(row, 0)->valuestring;
        if (rewrite) ldm = rewrite(ldm);
        int64_t ldm_shape[SD_MAX_DIMS];
        int ldm_ndim = json_shape(cJSON_GetArrayItem(row, 1), ldm_shape);
        expected_tensor key = {part_from_string(cJSON_GetArrayItem(row, 2)->valuestring),
                               cJSON_GetArrayItem(row, 3)->valuestring, 0, {0}, 0};
        char out[256];
        int reshape = -1;
        sd_model_part part = sd_ldm_to_diffusers_name(unet, vae, ldm, out, sizeof out, &reshape);
        if (part != key.part || strcmp(out, key.name) != 0)
            fail_msg("'%s' -> part %d '%s'; expected part %d '%s'", ldm, part, out, key.part, key.name);
        expected_tensor *hit = bsearch(&key, table, (size_t)n_table, sizeof *table, compare_expected);
        if (!hit) fail_msg("'%s' -> '%s', which is not a diffusers tensor", ldm, out);
        hit->hits++;
        /* The shape the loader produces: the LDM shape, or (C, C) after the 1x1 reshape. */
        int ndim = ldm_ndim;
        if (reshape) {
            (*n_reshaped)++;
            assert_int_equal(ldm_ndim, 4);
            assert_true(ldm_shape[2] == 1 && ldm_shape[3] == 1);
            ndim = 2;
        }
        if (ndim != hit->ndim) fail_msg("'%s': %d dims, diffusers '%s' has %d", ldm, ndim, out, hit->ndim);
        for (int d = 0; d < ndim; d++)
            if (ldm_shape[d] != hit->shape[d]) fail_msg("'%s': dim %d is %lld, diffusers has %lld", ldm, d,
                                                        (long long)ldm_shape[d], (long long)hit->shape[d]);
    }
}

static int load_expected(const cJSON *diffusers, expected_tensor *table, int cap) {
    static const char *const parts[3] = {"unet", "vae", "text"};
    int n = 0;
    for (int p = 0; p < 3; p++) {
        const cJSON *row;
        cJSON_ArrayForEach(row, cJSON_GetObjectItem(diffusers, parts[p])) {
            assert_true(n < cap);
            table[n].part = (sd_model_part)p;
            table[n].name = cJSON_GetArrayItem(row, 0)->valuestring;
            table[n].ndim = json_shape(cJSON_GetArrayItem(row, 1), table[n].shape);
            table[n].hits = 0;
            n++;
        }
    }
    qsort(table, (size_t)n, sizeof *table, compare_expected);
    return n;
}

static void assert_each_hit_once(const expected_tensor *table, int n) {
    for (int i = 0; i < n; i++)
        if (table[i].hits != 1) fail_msg("diffusers tensor '%s' (part %d) was produced %d times", table[i].name,
                                         table[i].part, table[i].hits);
}

/* cond_stage_model.transformer.text_model.X -> cond_stage_model.transformer.X */
static const char *drop_text_model_level(const char *ldm) {
    static char buf[256];
    const char *prefix = "cond_stage_model.transformer.text_model.";
    if (strncmp(ldm, prefix, strlen(prefix)) != 0) return ldm;
    snprintf(buf, sizeof buf, "cond_stage_model.transformer.%s", ldm + strlen(prefix));
    return buf;
}

static void test_sd15_ldm_names_map_exactly(void **state) {
    (void)state;
    cJSON *ldm = read_json("tests/fixtures/sd15_names_ldm.json");
    cJSON *diffusers = read_json("tests/fixtures/sd15_names_diffusers.json");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(diffusers, "unet")), 686);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(diffusers, "vae")), 248);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(diffusers, "text")), 196);
    static expected_tensor table[2000];
    int n = load_expected(diffusers, table, 2000);
    assert_int_equal(n, 686 + 248 + 196);

    sd_unet_config unet;
    sd_vae_config vae;
    sd_unet_config_sd15(&unet);
    sd_vae_config_sd15(&vae);
    const cJSON *rows = cJSON_GetObjectItem(ldm, "tensors");
    assert_int_equal(cJSON_GetArraySize(rows), n);
    int reshaped = 0;
    check_ldm_rows(rows, &unet, &vae, table, n, NULL, &reshaped);
    assert_each_hit_once(table, n);
    assert_int_equal(reshaped, 8); /* q, k, v, proj_out weights of the encoder and decoder attention */

    /* NULL configs mean SD v1.5; text names without the text_model level map the same. */
    for (int i = 0; i < n; i++) table[i].hits = 0;
    reshaped = 0;
    check_ldm_rows(rows, NULL, NULL, table, n, drop_text_model_level, &reshaped);
    assert_each_hit_once(table, n);

    /* The extras of real single files belong to no part. */
    const cJSON *row;
    int n_ignored = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItem(ldm, "ignored")) {
        const char *name = cJSON_GetArrayItem(row, 0)->valuestring;
        char out[256];
        int reshape = 7;
        sd_model_part part = sd_ldm_to_diffusers_name(&unet, &vae, name, out, sizeof out, &reshape);
        if (part != SD_PART_NONE) fail_msg("'%s' should be ignored but maps to part %d '%s'", name, part, out);
        assert_string_equal(out, "");
        assert_int_equal(reshape, 0);
        n_ignored++;
    }
    assert_int_equal(n_ignored, 686 + 15); /* the EMA UNet, 12 schedule buffers, decay, num_updates, position_ids */
    print_message("sd15: %d LDM names mapped, %d extras ignored\n", n, n_ignored);
    cJSON_Delete(ldm);
    cJSON_Delete(diffusers);
}

static void expect_name(const sd_unet_config *u, const sd_vae_config *v, const char *ldm, sd_model_part part,
                        const char *want, int want_reshape) {
    char out[256];
    int reshape;
    sd_model_part got = sd_ldm_to_diffusers_name(u, v, ldm, out, sizeof out, &reshape);
    if (got != part || strcmp(out, want) != 0 || reshape != want_reshape)
        fail_msg("'%s' -> part %d '%s' reshape %d; expected part %d '%s' reshape %d", ldm, got, out, reshape, part,
                 want, want_reshape);
}

/* Another block / layer layout: three blocks of one layer, attention on the top two levels, a VAE
 * with three stages of one layer. Names worked out by hand from openaimodel.py's construction. */
static void test_ldm_numbering_follows_config(void **state) {
    (void)state;
    sd_unet_config u;
    sd_vae_config v;
    assert_sd_ok(sd_unet_config_parse(
        "{\"block_out_channels\": [64, 128, 128], \"layers_per_block\": 1, "
        "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"], "
        "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}", "u.json", &u));
    assert_sd_ok(sd_vae_config_parse(
        "{\"block_out_channels\": [32, 64, 64], \"layers_per_block\": 1, "
        "\"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], "
        "\"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}", "v.json", &v));
    const sd_model_part U = SD_PART_UNET, V = SD_PART_VAE;
    expect_name(&u, &v, "model.diffusion_model.input_blocks.0.0.weight", U, "conv_in.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.input_blocks.1.0.in_layers.0.weight", U, "down_blocks.0.resnets.0.norm1.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.input_blocks.1.1.proj_in.weight", U, "down_blocks.0.attentions.0.proj_in.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.input_blocks.2.0.op.weight", U, "down_blocks.0.downsamplers.0.conv.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.input_blocks.3.0.skip_connection.bias", U, "down_blocks.1.resnets.0.conv_shortcut.bias", 0);
    expect_name(&u, &v, "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight", U,
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.input_blocks.4.0.op.bias", U, "down_blocks.1.downsamplers.0.conv.bias", 0);
    expect_name(&u, &v, "model.diffusion_model.input_blocks.5.0.emb_layers.1.weight", U, "down_blocks.2.resnets.0.time_emb_proj.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.middle_block.2.out_layers.3.weight", U, "mid_block.resnets.1.conv2.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.output_blocks.0.0.in_layers.2.weight", U, "up_blocks.0.resnets.0.conv1.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.output_blocks.1.0.out_layers.0.bias", U, "up_blocks.0.resnets.1.norm2.bias", 0);
    expect_name(&u, &v, "model.diffusion_model.output_blocks.1.1.conv.weight", U, "up_blocks.0.upsamplers.0.conv.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.output_blocks.2.1.norm.weight", U, "up_blocks.1.attentions.0.norm.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.output_blocks.3.2.conv.bias", U, "up_blocks.1.upsamplers.0.conv.bias", 0);
    expect_name(&u, &v, "model.diffusion_model.output_blocks.5.1.proj_out.weight", U, "up_blocks.2.attentions.1.proj_out.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.out.2.weight", U, "conv_out.weight", 0);
    /* The last up block has no upsampler; a slot the layout lacks keeps its name. */
    expect_name(&u, &v, "model.diffusion_model.output_blocks.5.2.conv.weight", U, "output_blocks.5.2.conv.weight", 0);
    expect_name(&u, &v, "model.diffusion_model.input_blocks.6.0.op.weight", U, "input_blocks.6.0.op.weight", 0);
    /* VAE: the decoder's up.0 is the last diffusers up block. */
    expect_name(&u, &v, "first_stage_model.decoder.up.0.block.1.conv2.weight", V, "decoder.up_blocks.2.resnets.1.conv2.weight", 0);
    expect_name(&u, &v, "first_stage_model.decoder.up.2.upsample.conv.weight", V, "decoder.up_blocks.0.upsamplers.0.conv.weight", 0);
    expect_name(&u, &v, "first_stage_model.decoder.up.1.block.0.nin_shortcut.bias", V, "decoder.up_blocks.1.resnets.0.conv_shortcut.bias", 0);
    expect_name(&u, &v, "first_stage_model.encoder.down.1.downsample.conv.bias", V, "encoder.down_blocks.1.downsamplers.0.conv.bias", 0);
    expect_name(&u, &v, "first_stage_model.encoder.mid.attn_1.proj_out.weight", V, "encoder.mid_block.attentions.0.to_out.0.weight", 1);
    expect_name(&u, &v, "first_stage_model.encoder.mid.attn_1.proj_out.bias", V, "encoder.mid_block.attentions.0.to_out.0.bias", 0);
    expect_name(&u, &v, "first_stage_model.decoder.mid.attn_1.norm.weight", V, "decoder.mid_block.attentions.0.group_norm.weight", 0);
    /* encoder.down.2 is the last stage: no downsampler; decoder stage 3 does not exist. */
    expect_name(&u, &v, "first_stage_model.encoder.down.2.downsample.conv.weight", V, "encoder.down.2.downsample.conv.weight", 0);
    expect_name(&u, &v, "first_stage_model.decoder.up.3.block.0.conv1.weight", V, "decoder.up.3.block.0.conv1.weight", 0);
}

static void test_ldm_edge_names(void **state) {
    (void)state;
    const sd_model_part U = SD_PART_UNET, T = SD_PART_TEXT, N = SD_PART_NONE;
    /* Unknown layouts under a part prefix stay in that part under their own name. */
    expect_name(NULL, NULL, "model.diffusion_model.input_blocks.99.0.in_layers.0.weight", U,
                "input_blocks.99.0.in_layers.0.weight", 0);
    expect_name(NULL, NULL, "model.diffusion_model.input_blocks.01.0.in_layers.0.weight", U,
                "input_blocks.01.0.in_layers.0.weight", 0);
    expect_name(NULL, NULL, "model.diffusion_model.input_blocks.1.0.in_layers.1.weight", U,
                "input_blocks.1.0.in_layers.1.weight", 0);
    expect_name(NULL, NULL, "model.diffusion_model.label_emb.0.0.weight", U, "label_emb.0.0.weight", 0);
    expect_name(NULL, NULL, "cond_stage_model.transformer.text_projection.weight", T, "text_projection.weight", 0);
    /* Not ours at all. */
    expect_name(NULL, NULL, "model_ema.diffusion_modeltime_embed0weight", N, "", 0);
    expect_name(NULL, NULL, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", N, "", 0);
    expect_name(NULL, NULL, "model.diffusion_modelx", N, "", 0);
    expect_name(NULL, NULL, "", N, "", 0);
    expect_name(NULL, NULL, "cond_stage_model.transformer.embeddings.position_ids", N, "", 0);
    expect_name(NULL, NULL, "lvlb_weights", N, "", 0);

    /* An output buffer too small for the name gives no part (and an empty name), not a truncation. */
    char small[16];
    int reshape = 5;
    assert_int_equal(sd_ldm_to_diffusers_name(NULL, NULL, "model.diffusion_model.input_blocks.1.0.in_layers.0.weight", small,
                                              sizeof small, &reshape), SD_PART_NONE);
    assert_string_equal(small, "");
    assert_int_equal(reshape, 0);
    assert_int_equal(sd_ldm_to_diffusers_name(NULL, NULL, "model.diffusion_model.out.2.bias", small, sizeof small, NULL),
                     SD_PART_UNET);
    assert_string_equal(small, "conv_out.bias");
    assert_int_equal(sd_ldm_to_diffusers_name(NULL, NULL, NULL, small, sizeof small, NULL), SD_PART_NONE);
}

static void test_vae_modern_name(void **state) {
    (void)state;
    char out[128];
    assert_int_equal(sd_vae_modern_name("encoder.mid_block.attentions.0.query.weight", out, sizeof out), 1);
    assert_string_equal(out, "encoder.mid_block.attentions.0.to_q.weight");
    assert_int_equal(sd_vae_modern_name("decoder.mid_block.attentions.0.key.bias", out, sizeof out), 1);
    assert_string_equal(out, "decoder.mid_block.attentions.0.to_k.bias");
    assert_int_equal(sd_vae_modern_name("decoder.mid_block.attentions.0.value.weight", out, sizeof out), 1);
    assert_string_equal(out, "decoder.mid_block.attentions.0.to_v.weight");
    assert_int_equal(sd_vae_modern_name("encoder.mid_block.attentions.0.proj_attn.bias", out, sizeof out), 1);
    assert_string_equal(out, "encoder.mid_block.attentions.0.to_out.0.bias");
    assert_int_equal(sd_vae_modern_name("encoder.mid_block.attentions.0.group_norm.weight", out, sizeof out), 0);
    assert_string_equal(out, "encoder.mid_block.attentions.0.group_norm.weight");
    assert_int_equal(sd_vae_modern_name("encoder.mid_block.attentions.0.to_q.weight", out, sizeof out), 0);
    assert_int_equal(sd_vae_modern_name("decoder.conv_in.weight", out, sizeof out), 0);
    assert_string_equal(out, "decoder.conv_in.weight");
    char small[8];
    assert_int_equal(sd_vae_modern_name("decoder.conv_in.weight", small, sizeof small), -1);
    assert_string_equal(small, "");
}

/* The tiny model's LDM names (tests/fixtures/tiny_ldm_names.json) under the tiny configs. */
static void test_tiny_ldm_names_map(void **state) {
    (void)state;
    sd_unet_config u;
    sd_vae_config v;
    assert_sd_ok(sd_unet_config_load("configs/tiny/unet.json", &u));
    assert_sd_ok(sd_vae_config_load("configs/tiny/vae.json", &v));
    cJSON *fx = read_json("tests/fixtures/tiny_ldm_names.json");
    static const char *const parts[3] = {"unet", "vae", "text"};
    int total = 0, reshaped = 0;
    for (int p = 0; p < 3; p++) {
        const cJSON *row;
        cJSON_ArrayForEach(row, cJSON_GetObjectItem(fx, parts[p])) {
            const char *name = cJSON_GetArrayItem(row, 0)->valuestring;
            const char *ldm = cJSON_GetArrayItem(row, 1)->valuestring;
            char out[256];
            int reshape;
            sd_model_part part = sd_ldm_to_diffusers_name(&u, &v, ldm, out, sizeof out, &reshape);
            if (part != (sd_model_part)p || strcmp(out, name) != 0)
                fail_msg("'%s' -> part %d '%s'; expected part %d '%s'", ldm, part, out, p, name);
            reshaped += reshape;
            total++;
        }
    }
    assert_int_equal(total, 684 + 180 + 36);
    assert_int_equal(reshaped, 8);
    cJSON_Delete(fx);
}

/* ------------------------------------------------------------------------------------------------
 * End to end with the tiny model
 * --------------------------------------------------------------------------------------------- */

/* Every tensor of `want` is in `got` under the same name with the same shape and bits. */
static void assert_same_store(const sd_weights *got, const sd_weights *want, const char *what) {
    if (sd_weights_count(got) != sd_weights_count(want))
        fail_msg("%s: %d tensors, expected %d", what, sd_weights_count(got), sd_weights_count(want));
    for (int i = 0; i < sd_weights_count(want); i++) {
        const char *name = sd_weights_name_at(want, i);
        const sd_tensor *a = sd_weights_find(got, name), *b = sd_weights_tensor_at(want, i);
        if (!a) fail_msg("%s: tensor '%s' is missing", what, name);
        if (!sd_same_shape(a, b) || a->dtype != SD_F32) {
            char sa[64], sb[64];
            fail_msg("%s: tensor '%s' has shape %s, expected %s", what, name, sd_shape_str(a->ndim, a->shape, sa, 64),
                     sd_shape_str(b->ndim, b->shape, sb, 64));
        }
        if (memcmp(a->data, b->data, sd_nbytes(b)) != 0) fail_msg("%s: tensor '%s' differs", what, name);
    }
}

typedef struct {
    int n, cap;
    sd_tensor **tensors; /* owned */
    char **names;        /* owned */
} tensor_list;

static void list_add(tensor_list *l, const char *name, sd_tensor *t) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->tensors = realloc(l->tensors, (size_t)l->cap * sizeof *l->tensors);
        l->names = realloc(l->names, (size_t)l->cap * sizeof *l->names);
    }
    l->tensors[l->n] = t;
    l->names[l->n] = strdup(name);
    l->n++;
}

static void list_write(const tensor_list *l, const char *path) {
    assert_sd_ok(sd_safetensors_write(path, (const sd_tensor *const *)l->tensors, (const char *const *)l->names, l->n,
                                      NULL, 0));
}

static void list_free(tensor_list *l) {
    for (int i = 0; i < l->n; i++) {
        sd_tensor_free(l->tensors[i]);
        free(l->names[i]);
    }
    free(l->tensors);
    free(l->names);
    memset(l, 0, sizeof *l);
}

/* A copy of `t` with another shape of the same size, in `dtype` (F32 or F16). */
static sd_tensor *copy_as(const sd_tensor *t, int ndim, const int64_t *shape, sd_dtype dtype) {
    assert_int_equal(sd_shape_numel(ndim, shape), sd_numel(t));
    sd_tensor *c = sd_tensor_new(dtype, ndim, shape);
    for (int64_t i = 0; i < sd_numel(t); i++) {
        if (dtype == SD_F16)
            ((uint16_t *)c->data)[i] = sd_f32_to_f16(sd_f32(t)[i]);
        else
            sd_f32(c)[i] = sd_f32(t)[i];
    }
    return c;
}

/* The tiny model as an original-layout single file, names from the fixture. The UNet goes in as
 * F16 (the tiny weights are F16 values, so exactly), the rest as F32; plus the extras real files
 * carry. `rewrite` may change LDM names. */
static void write_tiny_single_file(const sd_model_files *folder, const char *path, const char *(*rewrite)(const char *)) {
    cJSON *fx = read_json("tests/fixtures/tiny_ldm_names.json");
    static const char *const parts[3] = {"unet", "vae", "text"};
    const sd_weights *stores[3] = {folder->unet, folder->vae, folder->text};
    tensor_list l = {0};
    for (int p = 0; p < 3; p++) {
        const cJSON *rows = cJSON_GetObjectItem(fx, parts[p]), *row;
        if (cJSON_GetArraySize(rows) != sd_weights_count(stores[p]))
            fail_msg("%s: the fixture lists %d tensors, the folder has %d: %s", parts[p], cJSON_GetArraySize(rows),
                     sd_weights_count(stores[p]), REGENERATE);
        cJSON_ArrayForEach(row, rows) {
            const char *name = cJSON_GetArrayItem(row, 0)->valuestring;
            const char *ldm = cJSON_GetArrayItem(row, 1)->valuestring;
            int64_t shape[SD_MAX_DIMS];
            int ndim = json_shape(cJSON_GetArrayItem(row, 2), shape);
            const sd_tensor *t = sd_weights_find(stores[p], name);
            if (!t) fail_msg("%s: the folder has no tensor '%s': %s", parts[p], name, REGENERATE);
            if (sd_shape_numel(ndim, shape) != sd_numel(t)) fail_msg("'%s': size differs from the fixture: %s", name, REGENERATE);
            list_add(&l, rewrite ? rewrite(ldm) : ldm, copy_as(t, ndim, shape, p == 0 ? SD_F16 : SD_F32));
        }
    }
    int64_t n1000[1] = {1000}, pos[2] = {1, 77};
    list_add(&l, "betas", sd_tensor_new(SD_F32, 1, n1000));
    list_add(&l, "alphas_cumprod", sd_tensor_new(SD_F32, 1, n1000));
    list_add(&l, "model_ema.decay", sd_tensor_new(SD_F32, 0, NULL));
    list_add(&l, "model_ema.num_updates", sd_tensor_new(SD_I32, 0, NULL));
    list_add(&l, "cond_stage_model.transformer.text_model.embeddings.position_ids", sd_tensor_new(SD_I64, 2, pos));
    const sd_tensor *conv_in = sd_weights_find(folder->unet, "conv_in.weight");
    list_add(&l, "model_ema.diffusion_modelinput_blocks00weight", copy_as(conv_in, conv_in->ndim, conv_in->shape, SD_F32));
    list_write(&l, path);
    list_free(&l);
    cJSON_Delete(fx);
}

static void test_tiny_single_file_end_to_end(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    sd_model_files folder;
    assert_sd_ok(sd_model_files_open(TINY_DIR, NULL, &folder));
    assert_int_equal(folder.single_file, 0);
    assert_int_equal(sd_weights_count(folder.unet), 684);
    assert_int_equal(sd_weights_count(folder.vae), 180);
    assert_int_equal(sd_weights_count(folder.text), 36);
    assert_int_equal(folder.unet_config.block_out_channels[0], 32);
    assert_int_equal(folder.vae_config.layers_per_block, 1);
    assert_int_equal(folder.text_config.hidden_size, 32);
    assert_string_equal(folder.tokenizer_dir, TINY_DIR "/tokenizer");
    for (int i = 0; i < sd_weights_count(folder.text); i++)
        assert_true(strncmp(sd_weights_name_at(folder.text, i), "text_model.", 11) == 0);
    const int64_t linear[2] = {32, 32};
    sd_tensor *t;
    assert_sd_ok(sd_weights_get(folder.vae, "decoder.mid_block.attentions.0.to_q.weight", 2, linear, &t));

    /* With the tiny configs. */
    char path[512];
    snprintf(path, sizeof path, "%s", tmp("tiny_ldm.safetensors"));
    write_tiny_single_file(&folder, path, NULL);
    sd_model_files single;
    assert_sd_ok(sd_model_files_open_single(path, &folder.unet_config, &folder.vae_config, &folder.text_config,
                                            folder.tokenizer_dir, &single));
    assert_int_equal(single.single_file, 1);
    assert_memory_equal(&single.unet_config, &folder.unet_config, sizeof single.unet_config);
    assert_string_equal(sd_weights_source(single.unet), path);
    assert_same_store(single.unet, folder.unet, "unet");
    assert_same_store(single.vae, folder.vae, "vae");
    assert_same_store(single.text, folder.text, "text");
    sd_model_files_close(&single);

    /* Through the front door: SD v1.5 configs, whose numbering the tiny model shares. */
    assert_sd_ok(sd_model_files_open(path, folder.tokenizer_dir, &single));
    assert_int_equal(single.single_file, 1);
    assert_int_equal(single.unet_config.block_out_channels[0], 320);
    assert_int_equal(single.text_config.hidden_size, 768);
    assert_same_store(single.unet, folder.unet, "unet (front door)");
    assert_same_store(single.vae, folder.vae, "vae (front door)");
    assert_same_store(single.text, folder.text, "text (front door)");
    sd_model_files_close(&single);

    /* A checkpoint whose text encoder lacks the text_model level. */
    char flat[512];
    snprintf(flat, sizeof flat, "%s", tmp("tiny_ldm_flat_text.safetensors"));
    write_tiny_single_file(&folder, flat, drop_text_model_level);
    assert_sd_ok(sd_model_files_open_single(flat, &folder.unet_config, &folder.vae_config, &folder.text_config,
                                            folder.tokenizer_dir, &single));
    assert_same_store(single.text, folder.text, "text (no text_model level)");
    sd_model_files_close(&single);
    sd_model_files_close(&folder);
}

/* A diffusers folder in older spellings: VAE attention named query/key/value/proj_attn with 1x1
 * conv weights and stored in two shards, a text encoder without the text_model level and with the
 * position_ids buffer, the UNet under the .fp16 file name, no tokenizer folder. */
static void test_legacy_diffusers_folder(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    sd_model_files folder;
    assert_sd_ok(sd_model_files_open(TINY_DIR, NULL, &folder));
    char root[512];
    snprintf(root, sizeof root, "%s", tmp("legacy"));
    assert_int_equal(mkdir(root, 0755), 0);
    static const char *const parts[3] = {"unet", "vae", "text_encoder"};
    for (int p = 0; p < 3; p++) {
        char from[256];
        assert_int_equal(mkdir(tmp("legacy/%s", parts[p]), 0755), 0);
        snprintf(from, sizeof from, TINY_DIR "/%s/config.json", parts[p]);
        copy_file(from, tmp("legacy/%s/config.json", parts[p]));
    }
    copy_file(TINY_DIR "/model_index.json", tmp("legacy/model_index.json"));
    char real_unet[512];
    assert_non_null(realpath(TINY_DIR "/unet/diffusion_pytorch_model.safetensors", real_unet));
    assert_int_equal(symlink(real_unet, tmp("legacy/unet/diffusion_pytorch_model.fp16.safetensors")), 0);

    tensor_list shard[2] = {{0}, {0}};
    cJSON *index = cJSON_CreateObject(), *map = cJSON_AddObjectToObject(index, "weight_map");
    for (int i = 0; i < sd_weights_count(folder.vae); i++) {
        const char *name = sd_weights_name_at(folder.vae, i);
        const sd_tensor *t = sd_weights_tensor_at(folder.vae, i);
        char old[256];
        snprintf(old, sizeof old, "%s", name);
        static const char *const renames[4][2] = {
            {"to_q.", "query."}, {"to_k.", "key."}, {"to_v.", "value."}, {"to_out.0.", "proj_attn."}};
        char *leaf = strstr(old, "mid_block.attentions.0.");
        int conv = 0;
        if (leaf) {
            leaf += strlen("mid_block.attentions.0.");
            const char *orig_leaf = name + (leaf - old);
            for (int r = 0; r < 4; r++)
                if (strncmp(orig_leaf, renames[r][0], strlen(renames[r][0])) == 0) {
                    snprintf(leaf, sizeof old - (size_t)(leaf - old), "%s%s", renames[r][1], orig_leaf + strlen(renames[r][0]));
                    conv = t->ndim == 2;
                }
        }
        int64_t shape4[4] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 1, 1, 1};
        int s = i % 2;
        list_add(&shard[s], old, conv ? copy_as(t, 4, shape4, SD_F32) : copy_as(t, t->ndim, t->shape, SD_F32));
        cJSON_AddStringToObject(map, old, s ? "diffusion_pytorch_model-00002-of-00002.safetensors"
                                            : "diffusion_pytorch_model-00001-of-00002.safetensors");
    }
    list_write(&shard[0], tmp("legacy/vae/diffusion_pytorch_model-00001-of-00002.safetensors"));
    list_write(&shard[1], tmp("legacy/vae/diffusion_pytorch_model-00002-of-00002.safetensors"));
    list_free(&shard[0]);
    list_free(&shard[1]);
    char *index_text = cJSON_Print(index);
    write_text(tmp("legacy/vae/diffusion_pytorch_model.safetensors.index.json"), index_text);
    free(index_text);
    cJSON_Delete(index);

    tensor_list text = {0};
    for (int i = 0; i < sd_weights_count(folder.text); i++) {
        const sd_tensor *t = sd_weights_tensor_at(folder.text, i);
        list_add(&text, sd_weights_name_at(folder.text, i) + strlen("text_model."), copy_as(t, t->ndim, t->shape, SD_F32));
    }
    int64_t pos[2] = {1, 77};
    list_add(&text, "embeddings.position_ids", sd_tensor_new(SD_I64, 2, pos));
    list_write(&text, tmp("legacy/text_encoder/model.safetensors"));
    list_free(&text);

    sd_model_files legacy;
    assert_sd_fails(sd_model_files_open(root, NULL, &legacy), SD_ERR_MISSING, "no tokenizer");
    assert_null(legacy.unet);
    assert_sd_ok(sd_model_files_open(root, TINY_DIR "/tokenizer", &legacy));
    assert_string_equal(legacy.tokenizer_dir, TINY_DIR "/tokenizer");
    assert_same_store(legacy.unet, folder.unet, "unet (fp16 file name)");
    assert_same_store(legacy.vae, folder.vae, "vae (old names, 1x1 convs, shards)");
    assert_same_store(legacy.text, folder.text, "text (no text_model level)");
    sd_model_files_close(&legacy);
    sd_model_files_close(&folder);
}

/* ------------------------------------------------------------------------------------------------
 * Front door failures
 * --------------------------------------------------------------------------------------------- */

static void expect_open_fails(const char *path, const char *tokenizer, sd_status code, const char *needle) {
    sd_model_files m;
    sd_status s = sd_model_files_open(path, tokenizer, &m);
    if (s != code)
        fail_msg("%s: expected %s, got %s (%s)", path, sd_status_name(code), sd_status_name(s), sd_last_error());
    if (!testutil_contains(sd_last_error(), needle))
        fail_msg("message \"%s\" does not mention \"%s\"", sd_last_error(), needle);
    assert_null(m.unet);
    assert_null(m.vae);
    assert_null(m.text);
}

static void test_front_door_errors(void **state) {
    (void)state;
    expect_open_fails("/nonexistent/model", NULL, SD_ERR_MISSING, "/nonexistent/model: no such file or folder");
    expect_open_fails("", NULL, SD_ERR_ARG, "no model path");

    char root[512];
    snprintf(root, sizeof root, "%s", tmp("broken"));
    assert_int_equal(mkdir(root, 0755), 0);
    expect_open_fails(root, NULL, SD_ERR_MISSING, "no model_index.json");
    write_text(tmp("broken/model_index.json"), "{\"_class_name\": \"StableDiffusionPipeline\",");
    expect_open_fails(root, NULL, SD_ERR_FORMAT, "broken/model_index.json: malformed JSON");
    write_text(tmp("broken/model_index.json"), "{\"_class_name\": \"StableDiffusionPipeline\"}");
    expect_open_fails(root, NULL, SD_ERR_MISSING, "broken/unet: missing");
    assert_int_equal(mkdir(tmp("broken/unet"), 0755), 0);
    expect_open_fails(root, NULL, SD_ERR_MISSING, "broken/unet/config.json: missing");
    write_text(tmp("broken/unet/config.json"), "{\n  \"layers_per_block\": 2,\n}");
    expect_open_fails(root, NULL, SD_ERR_FORMAT, "broken/unet/config.json: malformed JSON at line 3");
    write_text(tmp("broken/unet/config.json"), "{\"only_cross_attention\": true}");
    expect_open_fails(root, NULL, SD_ERR_UNSUPPORTED, "broken/unet/config.json: key \"only_cross_attention\"");
    write_text(tmp("broken/unet/config.json"), "{}"); /* valid: every key takes its default */
    expect_open_fails(root, NULL, SD_ERR_MISSING, "broken/unet: no weights (expected diffusion_pytorch_model.safetensors)");
    write_text(tmp("broken/unet/diffusion_pytorch_model.bin"), "PK pickle");
    expect_open_fails(root, NULL, SD_ERR_UNSUPPORTED, "convert to safetensors");
    assert_true(testutil_contains(sd_last_error(), "diffusion_pytorch_model.bin"));
    /* A corrupt weights file is named. */
    write_text(tmp("broken/unet/diffusion_pytorch_model.safetensors"), "garbage!garbage!");
    expect_open_fails(root, NULL, SD_ERR_FORMAT, "broken/unet/diffusion_pytorch_model.safetensors");
    if (have_tiny()) {
        unlink(tmp("broken/unet/diffusion_pytorch_model.safetensors"));
        char real_unet[512];
        assert_non_null(realpath(TINY_DIR "/unet/diffusion_pytorch_model.safetensors", real_unet));
        assert_int_equal(symlink(real_unet, tmp("broken/unet/diffusion_pytorch_model.safetensors")), 0);
        /* The UNet is complete now; the next part is missing. */
        copy_file(TINY_DIR "/unet/config.json", tmp("broken/unet/config.json"));
        expect_open_fails(root, NULL, SD_ERR_MISSING, "broken/vae: missing");
    }

    /* Files. */
    write_text(tmp("model.ckpt"), "pickle");
    expect_open_fails(tmp("model.ckpt"), NULL, SD_ERR_UNSUPPORTED, "convert to safetensors");
    write_text(tmp("notes.txt"), "hello");
    expect_open_fails(tmp("notes.txt"), NULL, SD_ERR_ARG, "not a diffusers model folder or a .safetensors file");

    /* Single files that are not SD v1 checkpoints. */
    char tok[512];
    snprintf(tok, sizeof tok, "%s", tmp("tok"));
    assert_int_equal(mkdir(tok, 0755), 0);
    write_text(tmp("tok/vocab.json"), "{}");
    write_text(tmp("tok/merges.txt"), "#version: 0.2\n");
    int64_t s4[1] = {4};
    tensor_list l = {0};
    list_add(&l, "conv_in.weight", sd_tensor_new(SD_F32, 1, s4));
    list_write(&l, tmp("diffusers_unet.safetensors"));
    expect_open_fails(tmp("diffusers_unet.safetensors"), tok, SD_ERR_FORMAT, "no 'model.diffusion_model.*' tensors");
    list_add(&l, "model.diffusion_model.input_blocks.0.0.bias", sd_tensor_new(SD_F32, 1, s4));
    list_write(&l, tmp("unet_only.safetensors"));
    expect_open_fails(tmp("unet_only.safetensors"), NULL, SD_ERR_MISSING, "carries no tokenizer");
    expect_open_fails(tmp("unet_only.safetensors"), tok, SD_ERR_MISSING, "no VAE tensors (first_stage_model.*)");
    list_add(&l, "first_stage_model.quant_conv.bias", sd_tensor_new(SD_F32, 1, s4));
    list_write(&l, tmp("no_text.safetensors"));
    expect_open_fails(tmp("no_text.safetensors"), tok, SD_ERR_MISSING, "no text encoder tensors");
    list_add(&l, "cond_stage_model.transformer.text_model.final_layer_norm.bias", sd_tensor_new(SD_F32, 1, s4));
    list_add(&l, "cond_stage_model.transformer.final_layer_norm.bias", sd_tensor_new(SD_F32, 1, s4));
    list_write(&l, tmp("both_spellings.safetensors"));
    expect_open_fails(tmp("both_spellings.safetensors"), tok, SD_ERR_FORMAT,
                      "maps to 'text_model.final_layer_norm.bias', which another tensor of the file already provides");
    list_free(&l);
    list_add(&l, "model.diffusion_model.input_blocks.0.0.bias", sd_tensor_new(SD_I64, 1, s4));
    list_write(&l, tmp("int_weight.safetensors"));
    expect_open_fails(tmp("int_weight.safetensors"), tok, SD_ERR_SHAPE, "'model.diffusion_model.input_blocks.0.0.bias' has dtype I64");
    list_add(&l, "cond_stage_model.model.transformer.resblocks.0.ln_1.weight", sd_tensor_new(SD_F32, 1, s4));
    list_write(&l, tmp("sd2.safetensors"));
    expect_open_fails(tmp("sd2.safetensors"), tok, SD_ERR_UNSUPPORTED, "SD 2.x");
    list_free(&l);
    list_add(&l, "model.diffusion_model.input_blocks.0.0.bias", sd_tensor_new(SD_F32, 1, s4));
    list_add(&l, "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias", sd_tensor_new(SD_F32, 1, s4));
    list_write(&l, tmp("sdxl.safetensors"));
    expect_open_fails(tmp("sdxl.safetensors"), tok, SD_ERR_UNSUPPORTED, "SDXL");
    list_free(&l);
    assert_sd_ok(sd_write_file_atomic(tmp("truncated.safetensors"), "\x10\0\0\0\0\0\0\0{}", 10));
    expect_open_fails(tmp("truncated.safetensors"), tok, SD_ERR_FORMAT, "truncated.safetensors: header length 16");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weights_store),
        cmocka_unit_test(test_weights_store_many),
        cmocka_unit_test(test_weights_load_file),
        cmocka_unit_test(test_sd15_ldm_names_map_exactly),
        cmocka_unit_test(test_ldm_numbering_follows_config),
        cmocka_unit_test(test_ldm_edge_names),
        cmocka_unit_test(test_vae_modern_name),
        cmocka_unit_test(test_tiny_ldm_names_map),
        cmocka_unit_test(test_tiny_single_file_end_to_end),
        cmocka_unit_test(test_legacy_diffusers_folder),
        cmocka_unit_test(test_front_door_errors),
    };
    return cmocka_run_group_tests_name("loader", tests, setup_tmp, teardown_tmp);
}
