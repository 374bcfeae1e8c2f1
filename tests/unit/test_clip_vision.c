/* test_clip_vision.c: StyleDiffusion's image encoder E (CLIP vision tower, stylediffusion.md §3.2)
 * against the PyTorch oracle (tests/oracle/gen_50_clip_vision.py):
 *   - the preprocessing (Trainer.preprocess: (x+1)/2, torchvision Resize(bicubic, no antialias),
 *     CenterCrop, CLIP Normalize) on the reference's 512x512 input and on small odd-sized ones;
 *   - the tiny random-weight tower (models/tiny-clip-vision: 197 tokens, width 32) on three images,
 *     = post_layernorm(transformers CLIPVisionModel.last_hidden_state), which the oracle checks
 *     against openai-CLIP's own forward;
 *   - config.json parsing (CLIPVisionModel and CLIPModel layouts) and its error messages;
 *   - the loader on other checkpoint layouts (full CLIPModel, transformers 5 names) and bad folders;
 *   - the full ViT-B/16 layout: every tensor of openai/clip-vit-base-patch16 binds by name and shape.
 * Tolerances: the resize 1e-6 and the tower 1e-4 max relative error (max |got - want| / max |want|). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "sd/clip_vision.h"
#include "sd/io.h"
#include "testutil.h"

#define MODEL_DIR "models/tiny-clip-vision"
#define FIXTURE "tiny_clip_vision"
#define TOL_RESIZE 1e-6
#define TOL_TOWER 1e-4

static sd_clip_vision model;
static sd_ctx ctx;

static int setup(void **state) {
    (void)state;
    if (sd_clip_vision_load(MODEL_DIR, &model) || sd_ctx_init_cpu(&ctx)) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    sd_clip_vision_release(&model);
    return 0;
}

/* The oracle's hash_image: a ramp plus hashed noise, value k/1024 - 1 (exact in float), so the
 * 512x512 inputs are computed here instead of stored. Same recipe, uint32 arithmetic. */
static sd_tensor *hash_image(int64_t B, int64_t H, int64_t W, uint32_t salt) {
    const int64_t shape[4] = {B, 3, H, W};
    sd_tensor *t = sd_tensor_new(SD_F32, 4, shape);
    float *v = sd_f32(t);
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < 3; c++)
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) {
                    uint32_t h = (uint32_t)x * 73856093u ^ (uint32_t)y * 19349663u ^ (uint32_t)c * 83492791u ^
                                 (uint32_t)b * 2654435761u ^ 40503u * salt;
                    h ^= h >> 13;
                    h *= 0x5bd1e995u;
                    h ^= h >> 15;
                    const uint32_t ramp = (uint32_t)((4 * x + 2 * y + 300 * c + 50 * b) % 1792);
                    const uint32_t k = ramp + h % 257u;
                    *v++ = (float)k / 1024.0f - 1.0f;
                }
    return t;
}

/* ------------------------------------------------------------------------------------------------
 * Preprocessing
 * --------------------------------------------------------------------------------------------- */

static void test_preprocess_512(void **state) {
    (void)state;
    sd_tensor *img = hash_image(1, 512, 512, 1);
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *px = sd_clip_vision_preprocess(&ctx, &model.cfg, img);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_int_equal(px->ndim, 4);
    assert_int_equal(px->shape[2], 224);
    assert_int_equal(px->shape[3], 224);

    /* channel 0 in full */
    sd_tensor *want_c0 = testutil_fixture(FIXTURE, "pre512_c0");
    sd_tensor got_c0 = sd_tensor_wrap(px->data, SD_F32, 2, want_c0->shape);
    testutil_assert_close(&got_c0, want_c0, TOL_RESIZE, "512->224 channel 0");

    /* all channels on the stored rows (both borders and the middle) */
    static const int rows[8] = {0, 1, 2, 3, 111, 112, 222, 223};
    sd_tensor *want_rows = testutil_fixture(FIXTURE, "pre512_rows");
    sd_tensor *got_rows = sd_tensor_new(SD_F32, 3, want_rows->shape);
    for (int c = 0; c < 3; c++)
        for (int r = 0; r < 8; r++)
            memcpy(sd_f32(got_rows) + (c * 8 + r) * 224, sd_f32(px) + (c * 224 + rows[r]) * 224,
                   224 * sizeof(float));
    testutil_assert_close(got_rows, want_rows, TOL_RESIZE, "512->224 rows of every channel");

    /* every value, loosely: per-channel mean and mean square against the oracle's (float64) */
    sd_tensor *moments = testutil_fixture(FIXTURE, "pre512_moments");
    for (int c = 0; c < 3; c++) {
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < 224 * 224; i++) {
            const double v = sd_f32(px)[c * 224 * 224 + i];
            sum += v;
            sq += v * v;
        }
        const double mean = sum / (224 * 224), mean_sq = sq / (224 * 224);
        const double want_mean = sd_f32(moments)[c * 2], want_sq = sd_f32(moments)[c * 2 + 1];
        if (fabs(mean - want_mean) > 1e-6 * fmax(1.0, fabs(want_mean)) || fabs(mean_sq - want_sq) > 1e-6 * want_sq)
            fail_msg("channel %d: mean %.9g / mean square %.9g, oracle %.9g / %.9g", c, mean, mean_sq, want_mean,
                     want_sq);
    }
    sd_arena_reset(ctx.arena, mark);
    sd_tensor *all[] = {img, want_c0, want_rows, got_rows, moments};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

/* The oracle's SMALL_CASES: odd sizes and aspect ratios, run with image_size replaced by S. */
static void test_preprocess_small_cases(void **state) {
    (void)state;
    static const struct {
        const char *name, *what;
        int64_t batch, h, w;
        uint32_t salt;
        int size;
    } cases[] = {
        {"pre_a", "37x53 -> 24, crop left 5", 1, 37, 53, 4, 24},
        {"pre_b", "45x31 -> 16, crop top round(3.5) = 4", 1, 45, 31, 5, 16},
        {"pre_c", "32x42 -> 16, crop left round(2.5) = 2", 1, 32, 42, 6, 16},
        {"pre_d", "20x20 -> 32 upsampling, batch 2", 2, 20, 20, 7, 32},
        {"pre_e", "16x16 -> 16, no resize", 1, 16, 16, 8, 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sd_clip_vision_config cfg = model.cfg;
        cfg.image_size = cases[i].size;
        sd_tensor *img = hash_image(cases[i].batch, cases[i].h, cases[i].w, cases[i].salt);
        sd_tensor *want = testutil_fixture(FIXTURE, cases[i].name);
        sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
        sd_tensor *got = sd_clip_vision_preprocess(&ctx, &cfg, img);
        assert_sd_ok(sd_ctx_status(&ctx));
        testutil_assert_close(got, want, TOL_RESIZE, cases[i].what);
        sd_arena_reset(ctx.arena, mark);
        sd_tensor_free(img);
        sd_tensor_free(want);
    }
}

/* The resize routine alone: a constant stays constant (the weights sum to 1 up to rounding), and
 * an unchanged size is the identity. */
static void test_resize_routine(void **state) {
    (void)state;
    const int64_t H = 7, W = 300, Ho = 13, Wo = 41;
    float *x = malloc((size_t)(H * W) * sizeof(float)), *y = malloc((size_t)(Ho * Wo) * sizeof(float));
    for (int64_t i = 0; i < H * W; i++) x[i] = 0.25f;
    assert_sd_ok(sd_clip_vision_resize_bicubic(x, y, 1, H, W, Ho, Wo));
    for (int64_t i = 0; i < Ho * Wo; i++)
        if (fabsf(y[i] - 0.25f) > 1e-6f) fail_msg("constant image: output %lld is %.9g", (long long)i, y[i]);
    testutil_fill_uniform(x, H * W, 5, -1.0f, 1.0f);
    float *same = malloc((size_t)(H * W) * sizeof(float));
    assert_sd_ok(sd_clip_vision_resize_bicubic(x, same, 1, H, W, H, W));
    assert_memory_equal(x, same, (size_t)(H * W) * sizeof(float));
    assert_sd_fails(sd_clip_vision_resize_bicubic(x, y, 1, H, W, 0, Wo), SD_ERR_ARG, "bicubic resize");
    free(x);
    free(y);
    free(same);
}

/* ------------------------------------------------------------------------------------------------
 * The tower
 * --------------------------------------------------------------------------------------------- */

static void check_encode(const sd_clip_vision *m, sd_tensor *img, const char *fixture_name, const char *what) {
    sd_tensor *want = testutil_fixture(FIXTURE, fixture_name);
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *got = sd_clip_vision_encode(&ctx, m, img);
    assert_sd_ok(sd_ctx_status(&ctx));
    testutil_assert_close(got, want, TOL_TOWER, what);
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(want);
}

static void test_encode_matches_oracle(void **state) {
    (void)state;
    assert_int_equal(sd_clip_vision_num_tokens(&model.cfg), 197);
    sd_tensor *img512 = hash_image(1, 512, 512, 1);
    sd_tensor *img224 = hash_image(2, 224, 224, 2);
    sd_tensor *img300 = hash_image(1, 300, 200, 3);
    check_encode(&model, img512, "tokens_512", "E(x) 512x512 -> (1, 197, 32)");
    check_encode(&model, img224, "tokens_224", "E(x) 224x224 batch 2, no resize");
    check_encode(&model, img300, "tokens_300x200", "E(x) 300x200 portrait, cropped");
    sd_tensor_free(img512);
    sd_tensor_free(img224);
    sd_tensor_free(img300);
}

/* image_size / patch_size need not give 197 tokens: the tower runs at any size (the mapping
 * networks of StyleDiffusion are what need 197). Random weights of a 64 / 16 config: 17 tokens. */
static void test_other_token_count(void **state) {
    (void)state;
    sd_clip_vision_config cfg = model.cfg;
    cfg.image_size = 64;
    assert_int_equal(sd_clip_vision_num_tokens(&cfg), 17);
    sd_weights *w = sd_weights_new("synthetic");
    sd_weights_synthesize(w, 7);
    sd_clip_vision m;
    assert_sd_ok(sd_clip_vision_bind(&m, &cfg, w));
    sd_tensor *img = hash_image(1, 100, 80, 9);
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *out = sd_clip_vision_encode(&ctx, &m, img);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_int_equal(out->ndim, 3);
    assert_int_equal(out->shape[0], 1);
    assert_int_equal(out->shape[1], 17);
    assert_int_equal(out->shape[2], 32);
    for (int64_t i = 0; i < sd_numel(out); i++) assert_true(isfinite(sd_f32(out)[i]));
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(img);
    sd_clip_vision_release(&m);
    sd_weights_free(w);
}

static void test_bad_inputs_fail_cleanly(void **state) {
    (void)state;
    sd_ctx c;
    /* four channels */
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *rgba = sd_tensor_new4(SD_F32, 4, 1, 4, 32, 32);
    assert_null(sd_clip_vision_encode(&c, &model, rgba));
    assert_int_equal(c.status, SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "(1, 4, 32, 32)"));
    assert_true(testutil_contains(sd_last_error(), "(B, 3, H, W)"));
    sd_ctx_free(&c);
    /* integer pixels */
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *ints = sd_tensor_new4(SD_I32, 4, 1, 3, 32, 32);
    assert_null(sd_clip_vision_preprocess(&c, &model.cfg, ints));
    assert_int_equal(c.status, SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "I32"));
    sd_ctx_free(&c);
    /* pixels of the wrong size straight into the tower */
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tensor *px = sd_new4(&c, 4, 1, 3, 200, 200);
    assert_null(sd_clip_vision_forward(&c, &model, px));
    assert_true(testutil_contains(sd_last_error(), "expected (B, 3, 224, 224)"));
    /* a failed context stays failed: later calls return NULL without touching anything */
    sd_tensor *img = hash_image(1, 32, 32, 1);
    assert_null(sd_clip_vision_encode(&c, &model, img));
    assert_int_equal(c.status, SD_ERR_SHAPE);
    sd_ctx_free(&c);
    sd_tensor_free(rgba);
    sd_tensor_free(ints);
    sd_tensor_free(img);
}

/* ------------------------------------------------------------------------------------------------
 * Config
 * --------------------------------------------------------------------------------------------- */

static void expect_config(const sd_clip_vision_config *got, const sd_clip_vision_config *want) {
    assert_int_equal(got->hidden_size, want->hidden_size);
    assert_int_equal(got->intermediate_size, want->intermediate_size);
    assert_int_equal(got->num_hidden_layers, want->num_hidden_layers);
    assert_int_equal(got->num_attention_heads, want->num_attention_heads);
    assert_int_equal(got->num_channels, want->num_channels);
    assert_int_equal(got->image_size, want->image_size);
    assert_int_equal(got->patch_size, want->patch_size);
    assert_int_equal(got->projection_dim, want->projection_dim);
    assert_int_equal(got->quick_gelu, want->quick_gelu);
    assert_true(got->layer_norm_eps == want->layer_norm_eps);
}

/* The shape of openai/clip-vit-base-patch16's published config.json (a CLIPModel config written by
 * transformers 4.x, with the old *_config_dict copies), abridged to the keys that matter. */
static const char *const VIT_B16_CLIP_MODEL_JSON =
    "{\"architectures\": [\"CLIPModel\"], \"initializer_factor\": 1.0, \"logit_scale_init_value\": 2.6592,\n"
    " \"model_type\": \"clip\", \"projection_dim\": 512,\n"
    " \"text_config\": {\"hidden_size\": 512, \"intermediate_size\": 2048, \"model_type\": \"clip_text_model\",\n"
    "   \"num_attention_heads\": 8, \"num_hidden_layers\": 12, \"max_position_embeddings\": 77},\n"
    " \"text_config_dict\": {\"hidden_size\": 512, \"intermediate_size\": 2048, \"num_attention_heads\": 8,\n"
    "   \"num_hidden_layers\": 12, \"projection_dim\": 512},\n"
    " \"torch_dtype\": \"float32\", \"transformers_version\": null,\n"
    " \"vision_config\": {\"attention_dropout\": 0.0, \"dropout\": 0.0, \"hidden_act\": \"quick_gelu\",\n"
    "   \"hidden_size\": 768, \"image_size\": 224, \"initializer_factor\": 1.0, \"initializer_range\": 0.02,\n"
    "   \"intermediate_size\": 3072, \"layer_norm_eps\": 1e-05, \"model_type\": \"clip_vision_model\",\n"
    "   \"num_attention_heads\": 12, \"num_channels\": 3, \"num_hidden_layers\": 12, \"patch_size\": 16,\n"
    "   \"projection_dim\": 512, \"torch_dtype\": null},\n"
    " \"vision_config_dict\": {\"hidden_size\": 768, \"intermediate_size\": 3072, \"num_attention_heads\": 12,\n"
    "   \"num_hidden_layers\": 12, \"patch_size\": 16, \"projection_dim\": 512}}\n";

static void test_config_parsing(void **state) {
    (void)state;
    sd_clip_vision_config c, vit;
    sd_clip_vision_config_vit_b16(&vit);

    /* the tiny model's CLIPVisionModel config.json */
    assert_sd_ok(sd_clip_vision_config_load(MODEL_DIR "/config.json", &c));
    assert_int_equal(c.hidden_size, 32);
    assert_int_equal(c.intermediate_size, 64);
    assert_int_equal(c.num_hidden_layers, 2);
    assert_int_equal(c.num_attention_heads, 4);
    assert_int_equal(c.image_size, 224);
    assert_int_equal(c.patch_size, 16);
    assert_int_equal(c.quick_gelu, 1);

    /* a full CLIPModel config: the vision_config is read, the text one ignored */
    assert_sd_ok(sd_clip_vision_config_parse(VIT_B16_CLIP_MODEL_JSON, "clip/config.json", &c));
    expect_config(&c, &vit);
    assert_int_equal(sd_clip_vision_num_tokens(&c), 197);

    /* vision_config_dict wins over vision_config (transformers 4.2x precedence) */
    assert_sd_ok(sd_clip_vision_config_parse("{\"model_type\": \"clip\", \"vision_config\": {\"patch_size\": 32, "
                                             "\"hidden_size\": 96}, \"vision_config_dict\": {\"patch_size\": 16}}",
                                             "c.json", &c));
    assert_int_equal(c.patch_size, 16);
    assert_int_equal(c.hidden_size, 96);

    /* absent keys take CLIPVisionConfig's defaults: ViT-B/32 (patch 32, 50 tokens) */
    assert_sd_ok(sd_clip_vision_config_parse("{}", "empty.json", &c));
    assert_int_equal(c.patch_size, 32);
    assert_int_equal(c.hidden_size, 768);
    assert_int_equal(sd_clip_vision_num_tokens(&c), 50);
    assert_sd_ok(sd_clip_vision_config_parse("{\"model_type\": \"clip\"}", "clip.json", &c));
    assert_int_equal(c.patch_size, 32);
    assert_sd_ok(sd_clip_vision_config_parse("{\"hidden_act\": \"gelu\", \"image_size\": 100, \"patch_size\": 16}",
                                             "g.json", &c));
    assert_int_equal(c.quick_gelu, 0);
    assert_int_equal(sd_clip_vision_num_tokens(&c), 37); /* 100 / 16 = 6 patches a side */

    /* errors name the file and the key */
    assert_sd_fails(sd_clip_vision_config_parse("{\"hidden_size\": 768,\n \"patch_size\": }", "bad.json", &c),
                    SD_ERR_FORMAT, "bad.json: malformed JSON at line 2");
    assert_sd_fails(sd_clip_vision_config_parse("[1, 2]", "arr.json", &c), SD_ERR_FORMAT,
                    "arr.json: expected a JSON object");
    assert_sd_fails(sd_clip_vision_config_parse("{\"hidden_size\": \"768\"}", "t.json", &c), SD_ERR_FORMAT,
                    "t.json: key \"hidden_size\": expected an integer, got a string");
    assert_sd_fails(sd_clip_vision_config_parse("{\"vision_config\": {\"patch_size\": 16.5}}", "n.json", &c),
                    SD_ERR_FORMAT, "n.json: key \"vision_config.patch_size\": expected an integer");
    assert_sd_fails(sd_clip_vision_config_parse("{\"vision_config\": {\"image_size\": 0}}", "z.json", &c),
                    SD_ERR_FORMAT, "key \"vision_config.image_size\" must be positive");
    assert_sd_fails(sd_clip_vision_config_parse("{\"vision_config\": [1]}", "v.json", &c), SD_ERR_FORMAT,
                    "v.json: key \"vision_config\": expected an object, got an array");
    assert_sd_fails(sd_clip_vision_config_parse("{\"model_type\": \"siglip_vision_model\"}", "s.json", &c),
                    SD_ERR_UNSUPPORTED, "s.json: key \"model_type\" is \"siglip_vision_model\"");
    assert_sd_fails(sd_clip_vision_config_parse("{\"model_type\": \"clip_text_model\"}", "ct.json", &c),
                    SD_ERR_UNSUPPORTED, "clip_text_model");
    assert_sd_fails(sd_clip_vision_config_parse("{\"model_type\": \"clip\", \"vision_config\": {\"model_type\": "
                                                "\"clip_text_model\"}}", "x.json", &c),
                    SD_ERR_UNSUPPORTED, "key \"vision_config.model_type\"");
    assert_sd_fails(sd_clip_vision_config_parse("{\"hidden_act\": \"gelu_new\"}", "a.json", &c), SD_ERR_UNSUPPORTED,
                    "a.json: key \"hidden_act\" is \"gelu_new\"");
    assert_sd_fails(sd_clip_vision_config_parse("{\"num_channels\": 1}", "ch.json", &c), SD_ERR_UNSUPPORTED,
                    "ch.json: key \"num_channels\" is 1");
    assert_sd_fails(sd_clip_vision_config_parse("{\"hidden_size\": 100, \"num_attention_heads\": 12}", "h.json", &c),
                    SD_ERR_FORMAT, "h.json: key \"hidden_size\" 100 is not divisible");
    assert_sd_fails(sd_clip_vision_config_parse("{\"image_size\": 8, \"patch_size\": 16}", "i.json", &c),
                    SD_ERR_FORMAT, "i.json: key \"image_size\" 8 is smaller than \"patch_size\" 16");
    assert_sd_fails(sd_clip_vision_config_parse("{\"vision_config_dict\": {\"layer_norm_eps\": \"x\"}}", "d.json", &c),
                    SD_ERR_FORMAT, "key \"vision_config_dict.layer_norm_eps\": expected a number");
    assert_sd_fails(sd_clip_vision_config_load("/nonexistent/config.json", &c), SD_ERR_IO, "/nonexistent/config.json");
}

/* ------------------------------------------------------------------------------------------------
 * Loader
 * --------------------------------------------------------------------------------------------- */

static void write_text(const char *path, const char *text) {
    assert_sd_ok(sd_write_file_atomic(path, text, strlen(text)));
}

/* A safetensors file with the tiny model's tensors (their F16 bytes), renamed by `rename` (NULL
 * keeps the name; a rename returning NULL drops the tensor), plus `n_extra` extra tensors. */
typedef const char *(*rename_fn)(const char *name, char *buf, size_t n);

static void write_tiny_variant(const char *path, rename_fn rename, sd_tensor **extra, const char **extra_names,
                               int n_extra) {
    sd_safetensors st;
    assert_sd_ok(sd_safetensors_open(MODEL_DIR "/model.safetensors", &st));
    const int cap = st.n_entries + n_extra;
    sd_tensor **tensors = calloc((size_t)cap, sizeof *tensors);
    char **names = calloc((size_t)cap, sizeof *names);
    int n = 0;
    for (int i = 0; i < st.n_entries; i++) {
        char buf[256];
        const char *name = rename ? rename(st.entries[i].name, buf, sizeof buf) : st.entries[i].name;
        if (!name) continue;
        assert_sd_ok(sd_safetensors_load_raw(&st, &st.entries[i], &tensors[n]));
        names[n++] = strdup(name);
    }
    for (int i = 0; i < n_extra; i++) {
        tensors[n] = extra[i];
        names[n++] = strdup(extra_names[i]);
    }
    const char *meta[2] = {"format", "pt"};
    assert_sd_ok(sd_safetensors_write(path, (const sd_tensor *const *)tensors, (const char *const *)names, n, meta, 1));
    for (int i = 0; i < n; i++) {
        if (i < n - n_extra) sd_tensor_free(tensors[i]);
        free(names[i]);
    }
    free(tensors);
    free(names);
    sd_safetensors_close(&st);
}

static const char *strip_vision_prefix(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s", name + strlen("vision_model."));
    return buf;
}

static const char *drop_fc2_of_layer_1(const char *name, char *buf, size_t n) {
    (void)buf;
    (void)n;
    return strcmp(name, "vision_model.encoder.layers.1.mlp.fc2.bias") == 0 ? NULL : name;
}

static const char *misname_everything(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "image_encoder.%s", name);
    return buf;
}

static char tmp_root[64];

static const char *tmp(const char *fmt, const char *arg) {
    static char path[4][512];
    static int slot;
    char rel[256];
    snprintf(rel, sizeof rel, fmt, arg);
    slot = (slot + 1) % 4;
    snprintf(path[slot], sizeof path[slot], "%s/%s", tmp_root, rel);
    return path[slot];
}

static void make_dir(const char *name) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tmp("%s", name));
    assert_int_equal(system(cmd), 0);
}

/* The same tokens as the committed tiny model gives on the 224 batch fixture. */
static void expect_same_encoder(const char *dir) {
    sd_clip_vision m;
    assert_sd_ok(sd_clip_vision_load(dir, &m));
    sd_tensor *img = hash_image(2, 224, 224, 2);
    check_encode(&m, img, "tokens_224", dir);
    sd_tensor_free(img);
    sd_clip_vision_release(&m);
}

static void test_loader_layouts(void **state) {
    (void)state;
    assert_int_equal(testutil_make_tmpdir(tmp_root, sizeof tmp_root, "sd_clipvis_"), 0);
    char *tiny_config;
    assert_sd_ok(sd_read_file(MODEL_DIR "/config.json", &tiny_config, NULL));

    /* A full CLIPModel checkpoint: the text tower, projections, logit_scale and the old I64
     * position_ids buffer are skipped; the vision settings come from "vision_config". */
    make_dir("full");
    write_text(tmp("%s/config.json", "full"),
               "{\"architectures\": [\"CLIPModel\"], \"model_type\": \"clip\", \"projection_dim\": 16,\n"
               " \"text_config\": {\"hidden_size\": 8, \"model_type\": \"clip_text_model\"},\n"
               " \"vision_config\": {\"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2,\n"
               "   \"num_attention_heads\": 4, \"image_size\": 224, \"patch_size\": 16, \"hidden_act\": \"quick_gelu\",\n"
               "   \"model_type\": \"clip_vision_model\"}}\n");
    sd_tensor *text_emb = sd_tensor_new4(SD_F16, 2, 10, 8, 0, 0);
    sd_tensor *vis_proj = sd_tensor_new4(SD_F32, 2, 16, 32, 0, 0);
    sd_tensor *txt_proj = sd_tensor_new4(SD_F32, 2, 16, 8, 0, 0);
    const int64_t scalar_shape[1] = {1}; /* unused: a 0-d tensor has no dims */
    sd_tensor *logit_scale = sd_tensor_new(SD_F32, 0, scalar_shape);
    sd_tensor *position_ids = sd_tensor_new4(SD_I64, 2, 1, 197, 0, 0);
    sd_tensor *extra[] = {text_emb, vis_proj, txt_proj, logit_scale, position_ids};
    const char *extra_names[] = {"text_model.embeddings.token_embedding.weight", "visual_projection.weight",
                                 "text_projection.weight", "logit_scale", "vision_model.embeddings.position_ids"};
    write_tiny_variant(tmp("%s/model.safetensors", "full"), NULL, extra, extra_names, 5);
    expect_same_encoder(tmp("%s", "full"));

    /* transformers >= 5 saves CLIPVisionModel without the "vision_model." level */
    make_dir("flat");
    write_text(tmp("%s/config.json", "flat"), tiny_config);
    write_tiny_variant(tmp("%s/model.safetensors", "flat"), strip_vision_prefix, NULL, NULL, 0);
    expect_same_encoder(tmp("%s", "flat"));

    sd_clip_vision m;
    /* no such folder; no config.json; no weights; pickle-only weights; sharded weights */
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "absent"), &m), SD_ERR_MISSING, "absent: not a folder");
    make_dir("empty");
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "empty"), &m), SD_ERR_MISSING, "empty/config.json: missing");
    write_text(tmp("%s/config.json", "empty"), tiny_config);
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "empty"), &m), SD_ERR_MISSING, "empty/model.safetensors: missing");
    write_text(tmp("%s/pytorch_model.bin", "empty"), "not really a pickle");
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "empty"), &m), SD_ERR_UNSUPPORTED, "convert them to");
    write_text(tmp("%s/model.safetensors.index.json", "empty"), "{}");
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "empty"), &m), SD_ERR_UNSUPPORTED, "sharded");
    /* a broken config.json */
    make_dir("badcfg");
    write_text(tmp("%s/config.json", "badcfg"), "{\"hidden_size\": 32, \"patch_size\": [16]}");
    write_tiny_variant(tmp("%s/model.safetensors", "badcfg"), NULL, NULL, NULL, 0);
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "badcfg"), &m), SD_ERR_FORMAT,
                    "badcfg/config.json: key \"patch_size\": expected an integer, got an array");
    /* a truncated weights file */
    make_dir("trunc");
    write_text(tmp("%s/config.json", "trunc"), tiny_config);
    /* a header length of 64 bytes in a 13-byte file */
    static const char truncated[] = "\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":";
    assert_sd_ok(sd_write_file_atomic(tmp("%s/model.safetensors", "trunc"), truncated, sizeof truncated - 1));
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "trunc"), &m), SD_ERR_FORMAT, "trunc/model.safetensors");
    /* a missing tensor, named with the file */
    make_dir("missing");
    write_text(tmp("%s/config.json", "missing"), tiny_config);
    write_tiny_variant(tmp("%s/model.safetensors", "missing"), drop_fc2_of_layer_1, NULL, NULL, 0);
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "missing"), &m), SD_ERR_MISSING,
                    "missing/model.safetensors: missing tensor 'vision_model.encoder.layers.1.mlp.fc2.bias'");
    /* no vision tensor at all */
    make_dir("other");
    write_text(tmp("%s/config.json", "other"), tiny_config);
    write_tiny_variant(tmp("%s/model.safetensors", "other"), misname_everything, NULL, NULL, 0);
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "other"), &m), SD_ERR_MISSING,
                    "missing tensor 'vision_model.embeddings.class_embedding'");
    make_dir("textonly");
    write_text(tmp("%s/config.json", "textonly"), tiny_config);
    {
        const char *only[] = {"text_model.embeddings.token_embedding.weight"};
        sd_tensor *t = sd_tensor_new4(SD_F16, 2, 10, 8, 0, 0);
        sd_tensor *ts[] = {t};
        assert_sd_ok(sd_safetensors_write(tmp("%s/model.safetensors", "textonly"), (const sd_tensor *const *)ts,
                                          only, 1, NULL, 0));
        sd_tensor_free(t);
    }
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "textonly"), &m), SD_ERR_MISSING, "no CLIP vision tensors");
    /* a config whose patch size disagrees with the weights: the token count is explained */
    make_dir("patch32");
    write_text(tmp("%s/config.json", "patch32"), "{\"hidden_size\": 32, \"intermediate_size\": 64, "
               "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"patch_size\": 32}");
    write_tiny_variant(tmp("%s/model.safetensors", "patch32"), NULL, NULL, NULL, 0);
    assert_sd_fails(sd_clip_vision_load(tmp("%s", "patch32"), &m), SD_ERR_SHAPE,
                    "'vision_model.embeddings.patch_embedding.weight': expected shape (32, 3, 32, 32)");

    free(tiny_config);
    sd_tensor *all[] = {text_emb, vis_proj, txt_proj, logit_scale, position_ids};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
    assert_int_equal(testutil_remove_tree(tmp_root), 0);
}

/* A wrong-shaped position table with a matching patch size: the message says why 197. */
static void test_token_count_mismatch_is_explained(void **state) {
    (void)state;
    sd_clip_vision_config cfg = model.cfg;
    cfg.image_size = 160; /* 10 x 10 + 1 = 101 tokens, but the tiny weights hold 197 */
    sd_clip_vision m;
    sd_weights *w = sd_weights_new(MODEL_DIR "/model.safetensors");
    assert_sd_ok(sd_clip_vision_weights_load(w, MODEL_DIR "/model.safetensors"));
    assert_sd_fails(sd_clip_vision_bind(&m, &cfg, w), SD_ERR_SHAPE,
                    "config image_size 160 / patch_size 16 gives 101 tokens");
    assert_true(testutil_contains(sd_last_error(), "'vision_model.embeddings.position_embedding.weight'"));
    assert_true(testutil_contains(sd_last_error(), "got (197, 32)"));
    sd_weights_free(w);
}

/* ------------------------------------------------------------------------------------------------
 * Full ViT-B/16 layout
 * --------------------------------------------------------------------------------------------- */

/* A store holding every tensor transformers' CLIPVisionModel has for openai/clip-vit-base-patch16
 * (names and shapes from the oracle), zero-filled: calloc'd pages are never touched by binding,
 * so its 343 MB cost nothing here. Optionally drops one tensor or grows one's first dimension. */
static sd_weights *vit_b16_store(const cJSON *doc, const char *drop, const char *grow, int64_t *params) {
    sd_weights *w = sd_weights_new("clip-vit-base-patch16");
    const cJSON *row;
    *params = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItem(doc, "vision")) {
        const char *name = cJSON_GetArrayItem(row, 0)->valuestring;
        if (drop && !strcmp(name, drop)) continue;
        const cJSON *dims = cJSON_GetArrayItem(row, 1);
        int64_t shape[SD_MAX_DIMS];
        const int nd = cJSON_GetArraySize(dims);
        for (int i = 0; i < nd; i++) shape[i] = (int64_t)cJSON_GetArrayItem(dims, i)->valuedouble;
        if (grow && !strcmp(name, grow)) shape[0] += 1;
        *params += sd_shape_numel(nd, shape);
        sd_tensor *t = sd_tensor_new(SD_F32, nd, shape);
        assert_non_null(t);
        assert_sd_ok(sd_weights_add(w, name, t));
    }
    return w;
}

static void test_vit_b16_binds_every_tensor(void **state) {
    (void)state;
    char *json;
    assert_sd_ok(sd_read_file("tests/fixtures/clip_vit_b16_names.json", &json, NULL));
    cJSON *doc = cJSON_Parse(json);
    free(json);
    assert_non_null(doc);

    /* the config the oracle built the model from parses to the built-in ViT-B/16 config */
    char *cfg_text = cJSON_PrintUnformatted(cJSON_GetObjectItem(doc, "config"));
    sd_clip_vision_config cfg, vit;
    assert_sd_ok(sd_clip_vision_config_parse(cfg_text, "clip_vit_b16_names.json:config", &cfg));
    free(cfg_text);
    sd_clip_vision_config_vit_b16(&vit);
    expect_config(&cfg, &vit);
    assert_int_equal(sd_clip_vision_num_tokens(&vit), 197);

    int64_t params;
    sd_weights *w = vit_b16_store(doc, NULL, NULL, &params);
    assert_int_equal(sd_weights_count(w), 199); /* 5 embedding/pre-LN + 12 x 16 per layer + 2 post-LN */
    assert_int_equal(params, (int64_t)cJSON_GetObjectItem(doc, "parameters")->valuedouble);
    sd_clip_vision m;
    assert_sd_ok(sd_clip_vision_bind(&m, &vit, w));
    const char *unused = NULL;
    assert_int_equal(sd_weights_unused(w, &unused), 0);
    assert_int_equal(m.position_embedding->shape[0], 197);
    assert_int_equal(m.patch_embedding.weight->shape[3], 16);
    print_message("    ViT-B/16: bound all %d tensors (%lld parameters)\n", sd_weights_count(w), (long long)params);
    sd_clip_vision_release(&m);
    sd_weights_free(w);

    /* a missing tensor and a wrong-shaped one are reported by name */
    w = vit_b16_store(doc, "vision_model.encoder.layers.7.self_attn.v_proj.bias", NULL, &params);
    assert_sd_fails(sd_clip_vision_bind(&m, &vit, w), SD_ERR_MISSING,
                    "clip-vit-base-patch16: missing tensor 'vision_model.encoder.layers.7.self_attn.v_proj.bias'");
    sd_weights_free(w);
    w = vit_b16_store(doc, NULL, "vision_model.encoder.layers.11.mlp.fc1.weight", &params);
    assert_sd_fails(sd_clip_vision_bind(&m, &vit, w), SD_ERR_SHAPE,
                    "'vision_model.encoder.layers.11.mlp.fc1.weight': expected shape (3072, 768), got (3073, 768)");
    sd_weights_free(w);

    /* the full CLIPModel's other top-level tensors are the ones the loader skips */
    const cJSON *row;
    int others = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItem(doc, "clip_model_other_tensors")) {
        const char *name = cJSON_GetArrayItem(row, 0)->valuestring;
        assert_true(!strcmp(name, "logit_scale") || !strcmp(name, "visual_projection.weight") ||
                    !strcmp(name, "text_projection.weight"));
        others++;
    }
    assert_int_equal(others, 3);
    cJSON_Delete(doc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preprocess_512),
        cmocka_unit_test(test_preprocess_small_cases),
        cmocka_unit_test(test_resize_routine),
        cmocka_unit_test(test_encode_matches_oracle),
        cmocka_unit_test(test_other_token_count),
        cmocka_unit_test(test_bad_inputs_fail_cleanly),
        cmocka_unit_test(test_config_parsing),
        cmocka_unit_test(test_loader_layouts),
        cmocka_unit_test(test_token_count_mismatch_is_explained),
        cmocka_unit_test(test_vit_b16_binds_every_tensor),
    };
    return cmocka_run_group_tests_name("CLIP vision tower (StyleDiffusion image encoder) vs oracle", tests, setup,
                                       teardown);
}
