/* test_eval_models.c: the model-based editing metrics (stylediffusion.md §6.2, §6.3) against the
 * PyTorch oracle (tests/oracle/gen_eval_models.py):
 *   - CLIPScore on models/tiny-clip (a tiny transformers CLIPModel with the openai configs'
 *     eos_token_id 2): the CLIPProcessor pixels (PIL backend, real size 224), get_image_features,
 *     the ids torchmetrics feeds (incl. an 80-token caption cut to 77 ids), get_text_features, the
 *     cosines and both definitions' scores (torchmetrics 100·max(cos, 0), Hessel 2.5·max(cos, 0))
 *     and their different dataset means; the oracle checked these against torchmetrics 1.9 itself;
 *   - Structure-dist on models/tiny-dino (a tiny ViTModel in facebook/dino-vitb8's hub layout,
 *     patch 8, a 4x4 trained position grid that every input interpolates): the Resize(224,
 *     max_size=480) + ImageNet preprocessing, the last layer's keys, Splice's self-similarity and
 *     the distance, plus an image wide enough to take the max_size branch;
 *   - the other layouts (a "vit."-prefixed ViT, transformers 5 ViT names) and bad input: a missing
 *     tensor, a wrong config key, an unreadable image, images of different sizes.
 * Tolerances (max |got - want| / max |want|): pixels 1e-6, features, keys and similarities 1e-5,
 * scores and the distance 1e-5 relative. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sd/eval_models.h"
#include "sd/io.h"
#include "testutil.h"

#define CLIP_DIR "models/tiny-clip"
#define DINO_DIR "models/tiny-dino"
#define TOKENIZER_DIR "models/tiny/tokenizer"
#define FIXTURE "eval_models"
#define FIXTURE_IMAGE(name) "tests/fixtures/eval_" name ".png"
#define TOL_PIXELS 1e-6
#define TOL_FEATURES 1e-5
#define TOL_SCORE 1e-5

static sd_clip_score_model clip;
static sd_vit dino;
static sd_ctx ctx;

static const char *const CAPTIONS[3] = {
    "a photo of an astronaut",
    "a cup of coffee on a table",
    NULL, /* "cat" x 80, built in setup */
};
static char long_caption[80 * 4 + 1];
static const int PAIRS[3][2] = {{0, 0}, {1, 1}, {0, 2}}; /* (image, caption) */
static const char *const CLIP_IMAGES[2] = {FIXTURE_IMAGE("clip_a"), FIXTURE_IMAGE("clip_b")};

static int setup(void **state) {
    (void)state;
    long_caption[0] = '\0';
    for (int i = 0; i < 80; i++) strcat(long_caption, i ? " cat" : "cat");
    if (sd_clip_score_load(CLIP_DIR, TOKENIZER_DIR, &clip) || sd_vit_load(DINO_DIR, &dino) || sd_ctx_init_cpu(&ctx)) {
        fprintf(stderr, "setup: %s\n", sd_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    sd_ctx_free(&ctx);
    sd_clip_score_release(&clip);
    sd_vit_release(&dino);
    return 0;
}

static const char *caption(int i) { return i == 2 ? long_caption : CAPTIONS[i]; }

static double rel_err(double got, double want) { return fabs(got - want) / fmax(fabs(want), 1e-30); }

/* ------------------------------------------------------------------------------------------------
 * CLIPScore
 * --------------------------------------------------------------------------------------------- */

static void test_clip_config_and_layout(void **state) {
    (void)state;
    assert_int_equal(clip.projection_dim, 16);
    assert_int_equal(clip.text.cfg.eos_token_id, 2); /* the openai configs' legacy id */
    assert_int_equal(clip.text.cfg.hidden_size, 8);
    assert_int_equal(clip.vision.cfg.hidden_size, 32);
    assert_int_equal(clip.vision.cfg.image_size, 224);
    assert_non_null(clip.vision.visual_projection.weight);
    assert_non_null(clip.text.text_projection.weight);
}

static void test_clip_processor_pixels(void **state) {
    (void)state;
    sd_image img;
    assert_sd_ok(sd_image_load(CLIP_IMAGES[0], &img));
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *px = sd_clip_vision_processor(&ctx, &clip.vision.cfg, &img, CLIP_IMAGES[0]);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_int_equal(px->shape[2], 224);
    assert_int_equal(px->shape[3], 224);
    static const int rows[4] = {0, 1, 111, 223};
    sd_tensor *want = testutil_fixture(FIXTURE, "clip_pixels_a_rows");
    sd_tensor *got = sd_tensor_new(SD_F32, 2, want->shape);
    for (int r = 0; r < 4; r++) memcpy(sd_f32(got) + r * 224, sd_f32(px) + rows[r] * 224, 224 * sizeof(float));
    testutil_assert_close(got, want, TOL_PIXELS, "CLIPProcessor 96x72 -> 224, channel 0 rows");
    sd_arena_reset(ctx.arena, mark);
    sd_tensor_free(got);
    sd_tensor_free(want);
    sd_image_free(&img);
}

static void test_clip_features_and_scores(void **state) {
    (void)state;
    /* image features */
    sd_tensor *want_img = testutil_fixture(FIXTURE, "clip_image_features"); /* (2, 16) */
    for (int i = 0; i < 2; i++) {
        sd_image img;
        assert_sd_ok(sd_image_load(CLIP_IMAGES[i], &img));
        sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
        sd_tensor *f = sd_clip_score_image_features(&ctx, &clip, &img, CLIP_IMAGES[i]);
        assert_sd_ok(sd_ctx_status(&ctx));
        sd_tensor want_row = sd_tensor_wrap(sd_f32(want_img) + i * 16, SD_F32, 2, f->shape);
        testutil_assert_close(f, &want_row, TOL_FEATURES, i ? "image features, coffee 60x80" : "image features, astronaut 96x72");
        sd_arena_reset(ctx.arena, mark);
        sd_image_free(&img);
    }
    /* ids and text features, with both pooling rules (they agree for CLIP tokenizer output) */
    sd_tensor *want_txt = testutil_fixture(FIXTURE, "clip_text_features"); /* (3, 16) */
    for (int t = 0; t < 3; t++) {
        char name[32];
        snprintf(name, sizeof name, "clip_text_ids_%d", t);
        sd_tensor *want_ids = testutil_fixture(FIXTURE, name);
        int ids[128], n = 0;
        assert_sd_ok(sd_clip_score_tokenize(&clip, caption(t), ids, 128, &n));
        assert_int_equal(n, want_ids->shape[0]);
        for (int i = 0; i < n; i++) assert_int_equal(ids[i], ((const int64_t *)want_ids->data)[i]);
        sd_tensor_free(want_ids);
        for (int rule = 0; rule < 2; rule++) {
            clip.text.cfg.eos_token_id = rule ? 49407 : 2;
            sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
            sd_tensor *f = sd_clip_score_text_features(&ctx, &clip, caption(t));
            assert_sd_ok(sd_ctx_status(&ctx));
            sd_tensor want_row = sd_tensor_wrap(sd_f32(want_txt) + t * 16, SD_F32, 2, f->shape);
            snprintf(name, sizeof name, "text features %d, eos %d", t, clip.text.cfg.eos_token_id);
            testutil_assert_close(f, &want_row, TOL_FEATURES, name);
            sd_arena_reset(ctx.arena, mark);
        }
        clip.text.cfg.eos_token_id = 2;
    }
    /* cosines and both definitions, per pair and over the first two pairs */
    sd_tensor *want_cos = testutil_fixture(FIXTURE, "clip_cosine");
    sd_tensor *want_tm = testutil_fixture(FIXTURE, "clip_score_torchmetrics");
    sd_tensor *want_hessel = testutil_fixture(FIXTURE, "clip_score_hessel");
    double cos[3];
    for (int p = 0; p < 3; p++) {
        assert_sd_ok(sd_clip_score_cosine_file(&ctx, &clip, CLIP_IMAGES[PAIRS[p][0]], caption(PAIRS[p][1]), &cos[p]));
        const double tm = sd_clip_score_pair(cos[p], SD_CLIP_SCORE_WEIGHT_TORCHMETRICS);
        const double he = sd_clip_score_pair(cos[p], SD_CLIP_SCORE_WEIGHT_HESSEL);
        print_message("    pair %d: cos %.9f (oracle %.9f, rel err %.2e); torchmetrics %.6f, Hessel %.6f\n", p, cos[p],
                      sd_f32(want_cos)[p], rel_err(cos[p], sd_f32(want_cos)[p]), tm, he);
        assert_true(rel_err(cos[p], sd_f32(want_cos)[p]) < TOL_SCORE);
        assert_true(fabs(tm - sd_f32(want_tm)[p]) <= TOL_SCORE * fmax(1.0, fabs(sd_f32(want_tm)[p])));
        assert_true(fabs(he - sd_f32(want_hessel)[p]) <= TOL_SCORE * fmax(1.0, fabs(sd_f32(want_hessel)[p])));
    }
    assert_true(cos[0] < 0 && cos[1] > 0); /* the oracle chose a model with both signs */
    sd_tensor *want_mean_tm = testutil_fixture(FIXTURE, "clip_score_mean_torchmetrics");
    sd_tensor *want_mean_he = testutil_fixture(FIXTURE, "clip_score_mean_hessel");
    const double mean_tm = sd_clip_score_mean_torchmetrics(cos, 2);
    const double mean_he = sd_clip_score_mean_hessel(cos, 2, SD_CLIP_SCORE_WEIGHT_HESSEL);
    print_message("    means over 2 pairs: torchmetrics %.6f (oracle %.6f), Hessel %.6f (oracle %.6f)\n", mean_tm,
                  sd_f32(want_mean_tm)[0], mean_he, sd_f32(want_mean_he)[0]);
    assert_true(rel_err(mean_tm, sd_f32(want_mean_tm)[0]) < TOL_SCORE);
    assert_true(rel_err(mean_he, sd_f32(want_mean_he)[0]) < TOL_SCORE);
    assert_true(isnan(sd_clip_score_mean_torchmetrics(cos, 0)));
    sd_tensor *all[] = {want_img, want_txt, want_cos, want_tm, want_hessel, want_mean_tm, want_mean_he};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

/* ------------------------------------------------------------------------------------------------
 * Structure-dist
 * --------------------------------------------------------------------------------------------- */

static void test_structure_preprocess_and_keys(void **state) {
    (void)state;
    sd_image src, wide;
    assert_sd_ok(sd_image_load(FIXTURE_IMAGE("struct_src"), &src));
    assert_sd_ok(sd_image_load(FIXTURE_IMAGE("struct_wide"), &wide));
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);

    sd_tensor *px = sd_structure_dist_preprocess(&ctx, &src, "struct_src");
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_int_equal(px->shape[2], 224);
    assert_int_equal(px->shape[3], 298);
    sd_tensor *want_px = testutil_fixture(FIXTURE, "struct_pixels_src_rows"); /* (3, 298) */
    sd_tensor *got_px = sd_tensor_new(SD_F32, 2, want_px->shape);
    static const int rows[3] = {0, 100, 223};
    for (int r = 0; r < 3; r++) memcpy(sd_f32(got_px) + r * 298, sd_f32(px) + rows[r] * 298, 298 * sizeof(float));
    testutil_assert_close(got_px, want_px, TOL_PIXELS, "Resize(224) bilinear + ImageNet norm, channel 0 rows");

    sd_tensor *keys = sd_vit_keys(&ctx, &dino, px, -1); /* (1, 1037, 32) */
    assert_sd_ok(sd_ctx_status(&ctx));
    sd_tensor *want_keys = testutil_fixture(FIXTURE, "struct_keys_src");
    sd_tensor got_keys = sd_tensor_wrap(keys->data, SD_F32, 2, want_keys->shape);
    testutil_assert_close(&got_keys, want_keys, TOL_FEATURES, "last-layer keys (1037, 32), 28x37 grid from 4x4");

    /* self-similarity rows and diagonal */
    sd_tensor *sim = sd_key_self_similarity(&ctx, keys); /* (1037, 1037) */
    assert_sd_ok(sd_ctx_status(&ctx));
    static const int sim_rows[4] = {0, 1, 500, 1036};
    sd_tensor *want_rows = testutil_fixture(FIXTURE, "struct_sim_rows_src");
    sd_tensor *got_rows = sd_tensor_new(SD_F32, 2, want_rows->shape);
    for (int r = 0; r < 4; r++)
        memcpy(sd_f32(got_rows) + r * 1037, sd_f32(sim) + (int64_t)sim_rows[r] * 1037, 1037 * sizeof(float));
    testutil_assert_close(got_rows, want_rows, TOL_FEATURES, "self-similarity rows of S(src)");
    sd_tensor *want_diag = testutil_fixture(FIXTURE, "struct_sim_diag_src");
    sd_tensor *got_diag = sd_tensor_new(SD_F32, 1, want_diag->shape);
    for (int64_t i = 0; i < 1037; i++) sd_f32(got_diag)[i] = sd_f32(sim)[i * 1037 + i];
    testutil_assert_close(got_diag, want_diag, TOL_FEATURES, "diagonal of S(src)");

    /* the max_size branch: 150x40 -> 480x128, 1 + 16·60 tokens */
    sd_tensor *pw = sd_structure_dist_preprocess(&ctx, &wide, "struct_wide");
    sd_tensor *kw = sd_vit_keys(&ctx, &dino, pw, -1);
    assert_sd_ok(sd_ctx_status(&ctx));
    sd_tensor *want_tokens = testutil_fixture(FIXTURE, "struct_wide_tokens");
    assert_int_equal(kw->shape[1], ((const int64_t *)want_tokens->data)[0]);
    assert_int_equal(pw->shape[2], 128);
    assert_int_equal(pw->shape[3], 480);
    sd_tensor *want_wide = testutil_fixture(FIXTURE, "struct_keys_wide_rows"); /* (16, 32) */
    sd_tensor *got_wide = sd_tensor_new(SD_F32, 2, want_wide->shape);
    const int64_t T = kw->shape[1];
    memcpy(sd_f32(got_wide), sd_f32(kw), 8 * 32 * sizeof(float));
    memcpy(sd_f32(got_wide) + 8 * 32, sd_f32(kw) + (T - 8) * 32, 8 * 32 * sizeof(float));
    testutil_assert_close(got_wide, want_wide, TOL_FEATURES, "keys of the 480x128 image, first and last 8");

    sd_arena_reset(ctx.arena, mark);
    sd_tensor *all[] = {want_px, got_px, want_keys, want_rows, got_rows, want_diag, got_diag, want_tokens, want_wide,
                        got_wide};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
    sd_image_free(&src);
    sd_image_free(&wide);
}

static void test_structure_dist(void **state) {
    (void)state;
    double dist = -1;
    assert_sd_ok(sd_structure_dist_files(&ctx, &dino, FIXTURE_IMAGE("struct_src"), FIXTURE_IMAGE("struct_edit"), &dist));
    sd_tensor *want = testutil_fixture(FIXTURE, "struct_dist");
    print_message("    structure-dist %.9g (oracle %.9g, rel err %.2e)\n", dist, sd_f32(want)[0],
                  rel_err(dist, sd_f32(want)[0]));
    assert_true(rel_err(dist, sd_f32(want)[0]) < TOL_SCORE);
    /* an image against itself: exactly 0 */
    assert_sd_ok(sd_structure_dist_files(&ctx, &dino, FIXTURE_IMAGE("struct_src"), FIXTURE_IMAGE("struct_src"), &dist));
    assert_true(dist == 0.0);
    sd_tensor_free(want);
}

/* ------------------------------------------------------------------------------------------------
 * Layouts and bad input
 * --------------------------------------------------------------------------------------------- */

static char tmp_root[128];

static const char *tmp(const char *fmt, const char *name) {
    static char buf[4][512];
    static int next;
    char *out = buf[next++ % 4], rel[256];
    snprintf(rel, sizeof rel, fmt, name);
    snprintf(out, 512, "%s/%s", tmp_root, rel);
    return out;
}

static void write_text(const char *path, const char *text) {
    assert_sd_ok(sd_write_file_atomic(path, text, strlen(text)));
}

/* Copies a model folder's safetensors to `path`, renaming every tensor with `rename` (NULL keeps a
 * name) and dropping those it maps to "". */
typedef void (*rename_fn)(const char *in, char *out, size_t n);
static void copy_weights(const char *src_path, const char *path, rename_fn rename) {
    sd_weights *w = sd_weights_new(src_path);
    assert_sd_ok(sd_weights_load_file(w, src_path, ""));
    const int n = sd_weights_count(w);
    const sd_tensor **ts = calloc((size_t)n, sizeof *ts);
    char **names = calloc((size_t)n, sizeof *names);
    int kept = 0;
    for (int i = 0; i < n; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s", sd_weights_name_at(w, i));
        if (rename) rename(sd_weights_name_at(w, i), name, sizeof name);
        if (!name[0]) continue;
        ts[kept] = sd_weights_tensor_at(w, i);
        names[kept++] = strdup(name);
    }
    assert_sd_ok(sd_safetensors_write(path, ts, (const char *const *)names, kept, NULL, 0));
    for (int i = 0; i < kept; i++) free(names[i]);
    free(names);
    free(ts);
    sd_weights_free(w);
}

static void drop_text_projection(const char *in, char *out, size_t n) {
    snprintf(out, n, "%s", strcmp(in, "text_projection.weight") ? in : "");
}
static void add_vit_prefix(const char *in, char *out, size_t n) { snprintf(out, n, "vit.%s", in); }
/* the hub names back to the ones transformers 5 saves (its conversion_mapping.py for ViTModel) */
static void to_v5_names(const char *in, char *out, size_t n) {
    static const char *const map[][2] = {
        {"attention.attention.query", "attention.q_proj"}, {"attention.attention.key", "attention.k_proj"},
        {"attention.attention.value", "attention.v_proj"}, {"attention.output.dense", "attention.o_proj"},
        {"intermediate.dense", "mlp.fc1"},                 {"output.dense", "mlp.fc2"},
    };
    char buf[256];
    snprintf(buf, sizeof buf, "%s", in);
    if (!strncmp(buf, "encoder.layer.", 14)) snprintf(buf, sizeof buf, "layers.%s", in + 14);
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        char *at = strstr(buf, map[i][0]);
        if (at) {
            char rest[256];
            snprintf(rest, sizeof rest, "%s", at + strlen(map[i][0]));
            *at = '\0';
            char joined[256];
            snprintf(joined, sizeof joined, "%s%s%s", buf, map[i][1], rest);
            snprintf(buf, sizeof buf, "%s", joined);
            break;
        }
    }
    snprintf(out, n, "%s", buf);
}

static char *read_text(const char *path) {
    char *text;
    assert_sd_ok(sd_read_file(path, &text, NULL));
    return text;
}

/* A ViT folder variant gives the same keys as models/tiny-dino. */
static void expect_same_keys(const char *dir) {
    sd_vit m;
    assert_sd_ok(sd_vit_load(dir, &m));
    sd_image src;
    assert_sd_ok(sd_image_load(FIXTURE_IMAGE("struct_src"), &src));
    sd_arena_mark mark = sd_arena_get_mark(ctx.arena);
    sd_tensor *px = sd_structure_dist_preprocess(&ctx, &src, "struct_src");
    sd_tensor *a = sd_vit_keys(&ctx, &dino, px, -1), *b = sd_vit_keys(&ctx, &m, px, -1);
    assert_sd_ok(sd_ctx_status(&ctx));
    assert_memory_equal(a->data, b->data, (size_t)sd_numel(a) * sizeof(float));
    sd_arena_reset(ctx.arena, mark);
    sd_image_free(&src);
    sd_vit_release(&m);
}

static void test_layouts_and_bad_input(void **state) {
    (void)state;
    assert_int_equal(testutil_make_tmpdir(tmp_root, sizeof tmp_root, "sd_evalm_"), 0);
    char *dino_config = read_text(DINO_DIR "/config.json"), *clip_config = read_text(CLIP_DIR "/config.json");

    /* a ViT under a task head: "vit."-prefixed names */
    assert_int_equal(mkdir(tmp("%s", "vitprefix"), 0755), 0);
    write_text(tmp("%s/config.json", "vitprefix"), dino_config);
    copy_weights(DINO_DIR "/model.safetensors", tmp("%s/model.safetensors", "vitprefix"), add_vit_prefix);
    expect_same_keys(tmp("%s", "vitprefix"));
    /* a transformers 5 save: "layers.N.attention.q_proj", "layers.N.mlp.fc1" */
    assert_int_equal(mkdir(tmp("%s", "v5"), 0755), 0);
    write_text(tmp("%s/config.json", "v5"), dino_config);
    copy_weights(DINO_DIR "/model.safetensors", tmp("%s/model.safetensors", "v5"), to_v5_names);
    expect_same_keys(tmp("%s", "v5"));

    sd_vit v;
    /* a wrong config key: named with the file */
    assert_int_equal(mkdir(tmp("%s", "badcfg"), 0755), 0);
    write_text(tmp("%s/config.json", "badcfg"), "{\"model_type\": \"vit\", \"hidden_size\": 32, \"patch_size\": \"8\"}");
    copy_weights(DINO_DIR "/model.safetensors", tmp("%s/model.safetensors", "badcfg"), NULL);
    assert_sd_fails(sd_vit_load(tmp("%s", "badcfg"), &v), SD_ERR_FORMAT,
                    "badcfg/config.json: key \"patch_size\": expected an integer, got a string");
    write_text(tmp("%s/config.json", "badcfg"), "{\"model_type\": \"vit\", \"qkv_bias\": 1}");
    assert_sd_fails(sd_vit_load(tmp("%s", "badcfg"), &v), SD_ERR_FORMAT, "badcfg/config.json: key \"qkv_bias\"");
    write_text(tmp("%s/config.json", "badcfg"), "{\"model_type\": \"vit\", \"hidden_act\": \"gelu_new\"}");
    assert_sd_fails(sd_vit_load(tmp("%s", "badcfg"), &v), SD_ERR_UNSUPPORTED, "key \"hidden_act\" is \"gelu_new\"");
    write_text(tmp("%s/config.json", "badcfg"), "{\"model_type\": \"clip\"}");
    assert_sd_fails(sd_vit_load(tmp("%s", "badcfg"), &v), SD_ERR_UNSUPPORTED, "key \"model_type\" is \"clip\"");
    /* a config whose grid disagrees with the position table */
    write_text(tmp("%s/config.json", "badcfg"), "{\"model_type\": \"vit\", \"hidden_size\": 32, \"intermediate_size\": 64, "
               "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"image_size\": 64, \"patch_size\": 8}");
    assert_sd_fails(sd_vit_load(tmp("%s", "badcfg"), &v), SD_ERR_SHAPE,
                    "config image_size 64 / patch_size 8 gives 65 positions");
    assert_sd_fails(sd_vit_load(tmp("%s", "absent"), &v), SD_ERR_MISSING, "absent: not a folder");

    /* a CLIPModel without its text projection: the tensor is named with the file */
    sd_clip_score_model m;
    assert_int_equal(mkdir(tmp("%s", "noproj"), 0755), 0);
    write_text(tmp("%s/config.json", "noproj"), clip_config);
    copy_weights(CLIP_DIR "/model.safetensors", tmp("%s/model.safetensors", "noproj"), drop_text_projection);
    assert_sd_fails(sd_clip_score_load(tmp("%s", "noproj"), TOKENIZER_DIR, &m), SD_ERR_MISSING,
                    "noproj/model.safetensors: missing tensor 'text_projection.weight'");
    /* no tokenizer files in the folder and none given */
    assert_int_equal(mkdir(tmp("%s", "notok"), 0755), 0);
    write_text(tmp("%s/config.json", "notok"), clip_config);
    copy_weights(CLIP_DIR "/model.safetensors", tmp("%s/model.safetensors", "notok"), NULL);
    assert_sd_fails(sd_clip_score_load(tmp("%s", "notok"), NULL, &m), SD_ERR_MISSING, "notok/vocab.json");
    /* a wrong text_config key */
    write_text(tmp("%s/config.json", "notok"), "{\"model_type\": \"clip\", \"text_config\": {\"eos_token_id\": \"2\"}, "
               "\"vision_config\": {\"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2, "
               "\"num_attention_heads\": 4, \"patch_size\": 16}}");
    assert_sd_fails(sd_clip_score_load(tmp("%s", "notok"), TOKENIZER_DIR, &m), SD_ERR_FORMAT, "eos_token_id");

    /* unreadable images are named */
    double value;
    assert_sd_fails(sd_clip_score_cosine_file(&ctx, &clip, tmp("%s/missing.png", "notok"), "a cat", &value), SD_ERR_IO,
                    "missing.png");
    write_text(tmp("%s/not_an_image.png", "notok"), "plain text");
    assert_sd_fails(sd_structure_dist_files(&ctx, &dino, FIXTURE_IMAGE("struct_src"),
                                            tmp("%s/not_an_image.png", "notok"), &value), SD_ERR_FORMAT,
                    "not_an_image.png");
    /* images of different sizes give different token counts */
    assert_sd_fails(sd_structure_dist_files(&ctx, &dino, FIXTURE_IMAGE("struct_src"), FIXTURE_IMAGE("struct_wide"),
                                            &value), SD_ERR_ARG, "(80x60) and the edited image (150x40)");
    sd_ctx_free(&ctx); /* the failure is sticky: start a fresh context for later tests */
    assert_sd_ok(sd_ctx_init_cpu(&ctx));

    free(dino_config);
    free(clip_config);
    assert_int_equal(testutil_remove_tree(tmp_root), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip_config_and_layout),
        cmocka_unit_test(test_clip_processor_pixels),
        cmocka_unit_test(test_clip_features_and_scores),
        cmocka_unit_test(test_structure_preprocess_and_keys),
        cmocka_unit_test(test_structure_dist),
        cmocka_unit_test(test_layouts_and_bad_input),
    };
    return cmocka_run_group_tests_name("editing metrics (CLIPScore, Structure-dist) vs oracle", tests, setup, teardown);
}
