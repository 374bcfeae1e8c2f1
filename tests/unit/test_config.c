/* test_config.c: config.json parsing (UNet, VAE, CLIP text).
 *
 *  - the committed SD v1.5 configs (configs/sd-v1.5/) parse to exactly the sd15 constructors;
 *  - the tiny configs (configs/tiny/, and models/tiny/ when present) parse to the tiny values;
 *  - missing keys take the diffusers / transformers defaults;
 *  - malformed, wrong-typed and unsupported configs fail naming the file and the key. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd/config.h"

static void test_sd15_files_match_constructors(void **state) {
    (void)state;
    sd_unet_config unet, unet_want;
    sd_vae_config vae, vae_want;
    sd_clip_text_config text, text_want;
    assert_sd_ok(sd_unet_config_load("configs/sd-v1.5/unet.json", &unet));
    assert_sd_ok(sd_vae_config_load("configs/sd-v1.5/vae.json", &vae));
    assert_sd_ok(sd_clip_text_config_load("configs/sd-v1.5/text_encoder.json", &text));
    sd_unet_config_sd15(&unet_want);
    sd_vae_config_sd15(&vae_want);
    sd_clip_text_config_sd15(&text_want);
    /* Both sides zero the structs before filling them, so whole-struct comparison is exact. */
    assert_memory_equal(&unet, &unet_want, sizeof unet);
    assert_memory_equal(&vae, &vae_want, sizeof vae);
    assert_memory_equal(&text, &text_want, sizeof text);

    /* And the published values themselves (stylediffusion.md §1.4-1.6). */
    assert_int_equal(unet.n_blocks, 4);
    assert_int_equal(unet.block_out_channels[0], 320);
    assert_int_equal(unet.block_out_channels[3], 1280);
    assert_int_equal(unet.layers_per_block, 2);
    assert_int_equal(unet.heads[0], 8);
    assert_int_equal(unet.heads[3], 8);
    assert_int_equal(unet.cross_attention_dim, 768);
    assert_int_equal(unet.norm_num_groups, 32);
    assert_true(unet.norm_eps == 1e-5f);
    assert_int_equal(unet.down_has_attn[0] + unet.down_has_attn[1] + unet.down_has_attn[2], 3);
    assert_int_equal(unet.down_has_attn[3], 0);
    assert_int_equal(unet.up_has_attn[0], 0);
    assert_int_equal(unet.up_has_attn[1] + unet.up_has_attn[2] + unet.up_has_attn[3], 3);
    assert_int_equal(unet.mid_has_attn, 1);
    assert_int_equal(unet.flip_sin_to_cos, 1);
    assert_int_equal(unet.freq_shift, 0);
    assert_int_equal(unet.use_linear_projection, 0);
    assert_int_equal(unet.sample_size, 64);
    assert_int_equal(vae.block_out_channels[0], 128);
    assert_int_equal(vae.block_out_channels[3], 512);
    assert_int_equal(vae.layers_per_block, 2);
    assert_int_equal(vae.latent_channels, 4);
    assert_true(vae.scaling_factor == 0.18215f); /* absent from the file: the default */
    assert_int_equal(vae.mid_block_add_attention, 1);
    assert_int_equal(text.hidden_size, 768);
    assert_int_equal(text.num_hidden_layers, 12);
    assert_int_equal(text.num_attention_heads, 12);
    assert_int_equal(text.intermediate_size, 3072);
    assert_int_equal(text.vocab_size, 49408);
    assert_int_equal(text.max_position_embeddings, 77);
    assert_int_equal(text.quick_gelu, 1);
}

static void check_tiny(const char *unet_path, const char *vae_path, const char *text_path) {
    sd_unet_config unet;
    sd_vae_config vae;
    sd_clip_text_config text;
    assert_sd_ok(sd_unet_config_load(unet_path, &unet));
    assert_sd_ok(sd_vae_config_load(vae_path, &vae));
    assert_sd_ok(sd_clip_text_config_load(text_path, &text));
    const int unet_channels[4] = {32, 32, 64, 64}, vae_channels[4] = {16, 16, 32, 32};
    assert_int_equal(unet.n_blocks, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(unet.block_out_channels[i], unet_channels[i]);
        assert_int_equal(unet.heads[i], 8);
        assert_int_equal(unet.down_has_attn[i], i < 3);
        assert_int_equal(unet.up_has_attn[i], i > 0);
        assert_int_equal(vae.block_out_channels[i], vae_channels[i]);
    }
    assert_int_equal(unet.layers_per_block, 2);
    assert_int_equal(unet.cross_attention_dim, 32);
    assert_int_equal(unet.norm_num_groups, 8);
    assert_int_equal(unet.in_channels, 4);
    assert_int_equal(unet.out_channels, 4);
    assert_int_equal(vae.n_blocks, 4);
    assert_int_equal(vae.layers_per_block, 1);
    assert_int_equal(vae.norm_num_groups, 8);
    assert_true(vae.scaling_factor == 0.18215f);
    assert_int_equal(text.hidden_size, 32);
    assert_int_equal(text.num_hidden_layers, 2);
    assert_int_equal(text.num_attention_heads, 4);
    assert_int_equal(text.intermediate_size, 64);
    assert_int_equal(text.vocab_size, 49408);
    assert_int_equal(text.max_position_embeddings, 77);
    assert_int_equal(text.quick_gelu, 1);
}

static void test_tiny_configs(void **state) {
    (void)state;
    check_tiny("configs/tiny/unet.json", "configs/tiny/vae.json", "configs/tiny/text_encoder.json");
    if (access("models/tiny/model_index.json", F_OK) == 0)
        check_tiny("models/tiny/unet/config.json", "models/tiny/vae/config.json",
                   "models/tiny/text_encoder/config.json");
}

static void test_defaults(void **state) {
    (void)state;
    sd_unet_config unet;
    assert_sd_ok(sd_unet_config_parse("{}", "unet.json", &unet));
    /* UNet2DConditionModel's defaults: SD v1 layout but cross_attention_dim 1280. */
    assert_int_equal(unet.n_blocks, 4);
    assert_int_equal(unet.block_out_channels[1], 640);
    assert_int_equal(unet.cross_attention_dim, 1280);
    assert_int_equal(unet.heads[2], 8);
    assert_int_equal(unet.layers_per_block, 2);
    assert_int_equal(unet.down_has_attn[0], 1);
    assert_int_equal(unet.up_has_attn[0], 0);
    assert_int_equal(unet.sample_size, 64);
    assert_int_equal(unet.downsample_padding, 1);

    sd_vae_config vae;
    assert_sd_ok(sd_vae_config_parse("{}", "vae.json", &vae));
    assert_int_equal(vae.n_blocks, 1);
    assert_int_equal(vae.block_out_channels[0], 64);
    assert_int_equal(vae.layers_per_block, 1);
    assert_int_equal(vae.latent_channels, 4);
    assert_int_equal(vae.sample_size, 32);

    sd_clip_text_config text;
    assert_sd_ok(sd_clip_text_config_parse("{}", "text.json", &text));
    assert_int_equal(text.hidden_size, 512); /* CLIPTextConfig's defaults (ViT-B/32 text tower) */
    assert_int_equal(text.intermediate_size, 2048);
    assert_int_equal(text.num_attention_heads, 8);
    assert_int_equal(text.num_hidden_layers, 12);
    assert_int_equal(text.quick_gelu, 1);

    /* A full CLIPConfig nests the text settings. */
    assert_sd_ok(sd_clip_text_config_parse(
        "{\"model_type\": \"clip\", \"text_config\": {\"hidden_size\": 64, \"num_attention_heads\": 2, "
        "\"hidden_act\": \"gelu\"}, \"vision_config\": {}}", "clip.json", &text));
    assert_int_equal(text.hidden_size, 64);
    assert_int_equal(text.quick_gelu, 0);
}

static void test_heads_and_variants(void **state) {
    (void)state;
    sd_unet_config c;
    assert_sd_ok(sd_unet_config_parse("{\"attention_head_dim\": [5, 10, 20, 20]}", "u.json", &c));
    assert_int_equal(c.heads[0], 5);
    assert_int_equal(c.heads[1], 10);
    assert_int_equal(c.heads[3], 20);
    assert_sd_ok(sd_unet_config_parse("{\"attention_head_dim\": 8, \"num_attention_heads\": 16}", "u.json", &c));
    assert_int_equal(c.heads[0], 16);
    assert_sd_ok(sd_unet_config_parse("{\"attention_head_dim\": 4, \"num_attention_heads\": null}", "u.json", &c));
    assert_int_equal(c.heads[0], 4);
    assert_sd_ok(sd_unet_config_parse("{\"use_linear_projection\": true, \"upcast_attention\": true}", "u.json", &c));
    assert_int_equal(c.use_linear_projection, 1);
    assert_int_equal(c.upcast_attention, 1);
    assert_sd_ok(sd_unet_config_parse("{\"only_cross_attention\": [false, false, false, false], "
                                      "\"transformer_layers_per_block\": [1, 1, 1, 1], \"sample_size\": [96, 96], "
                                      "\"class_embed_type\": null, \"mid_block_only_cross_attention\": false}",
                                      "u.json", &c));
    assert_int_equal(c.sample_size, 96);
    /* Three blocks of one layer, no attention at the lowest resolution. */
    assert_sd_ok(sd_unet_config_parse(
        "{\"block_out_channels\": [64, 128, 128], \"layers_per_block\": 1, "
        "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"], "
        "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}", "u.json", &c));
    assert_int_equal(c.n_blocks, 3);
    assert_int_equal(c.layers_per_block, 1);
    assert_int_equal(c.down_has_attn[2], 0);
    assert_int_equal(c.up_has_attn[0], 0);
}

/* Parses `json` as a UNet config and expects `code` and a message naming the file and `needle`. */
#define UNET_FAILS(json, code, needle)                                                             \
    do {                                                                                           \
        sd_unet_config c_;                                                                         \
        assert_sd_fails(sd_unet_config_parse(json, "dir/unet/config.json", &c_), code, needle);    \
        assert_true(testutil_contains(sd_last_error(), "dir/unet/config.json"));                   \
    } while (0)
#define VAE_FAILS(json, code, needle)                                                              \
    do {                                                                                           \
        sd_vae_config c_;                                                                          \
        assert_sd_fails(sd_vae_config_parse(json, "dir/vae/config.json", &c_), code, needle);      \
        assert_true(testutil_contains(sd_last_error(), "dir/vae/config.json"));                    \
    } while (0)
#define TEXT_FAILS(json, code, needle)                                                             \
    do {                                                                                           \
        sd_clip_text_config c_;                                                                    \
        assert_sd_fails(sd_clip_text_config_parse(json, "dir/text_encoder/config.json", &c_), code, \
                        needle);                                                                   \
        assert_true(testutil_contains(sd_last_error(), "dir/text_encoder/config.json"));           \
    } while (0)

static void test_malformed_json(void **state) {
    (void)state;
    UNET_FAILS("{\n  \"in_channels\": 4,\n  oops\n}", SD_ERR_FORMAT, "malformed JSON at line 3, column");
    UNET_FAILS("", SD_ERR_FORMAT, "malformed JSON at line 1");
    UNET_FAILS("{\"in_channels\": 4", SD_ERR_FORMAT, "malformed JSON");
    UNET_FAILS("{} {}", SD_ERR_FORMAT, "unexpected text after the JSON object at line 1, column 4");
    UNET_FAILS("[1, 2]", SD_ERR_FORMAT, "expected a JSON object at the top level, got an array");
    VAE_FAILS("null", SD_ERR_FORMAT, "got null");
    TEXT_FAILS("{\"hidden_size\": }", SD_ERR_FORMAT, "malformed JSON at line 1, column 17");
}

static void test_wrong_types(void **state) {
    (void)state;
    UNET_FAILS("{\"layers_per_block\": \"2\"}", SD_ERR_FORMAT, "key \"layers_per_block\": expected an integer, got a string");
    UNET_FAILS("{\"in_channels\": 4.5}", SD_ERR_FORMAT, "key \"in_channels\": expected an integer, got a number");
    UNET_FAILS("{\"block_out_channels\": [320, \"640\", 1280, 1280]}", SD_ERR_FORMAT,
               "key \"block_out_channels\": entry 1: expected an integer, got a string");
    UNET_FAILS("{\"block_out_channels\": 320}", SD_ERR_FORMAT, "key \"block_out_channels\": expected a list");
    UNET_FAILS("{\"flip_sin_to_cos\": 1}", SD_ERR_FORMAT, "key \"flip_sin_to_cos\": expected true or false, got a number");
    UNET_FAILS("{\"norm_eps\": \"1e-5\"}", SD_ERR_FORMAT, "key \"norm_eps\": expected a number");
    UNET_FAILS("{\"attention_head_dim\": \"8\"}", SD_ERR_FORMAT, "key \"attention_head_dim\": expected an integer or a list");
    UNET_FAILS("{\"down_block_types\": \"CrossAttnDownBlock2D\"}", SD_ERR_FORMAT, "key \"down_block_types\"");
    UNET_FAILS("{\"down_block_types\": [1, 2, 3, 4]}", SD_ERR_FORMAT, "key \"down_block_types\": entry 0: expected a string");
    UNET_FAILS("{\"cross_attention_dim\": null}", SD_ERR_FORMAT, "key \"cross_attention_dim\": expected an integer, got null");
    UNET_FAILS("{\"only_cross_attention\": \"no\"}", SD_ERR_FORMAT, "key \"only_cross_attention\"");
    UNET_FAILS("{\"sample_size\": \"64\"}", SD_ERR_FORMAT, "key \"sample_size\"");
    VAE_FAILS("{\"scaling_factor\": \"0.18\"}", SD_ERR_FORMAT, "key \"scaling_factor\": expected a number");
    VAE_FAILS("{\"mid_block_add_attention\": \"yes\"}", SD_ERR_FORMAT, "key \"mid_block_add_attention\"");
    TEXT_FAILS("{\"hidden_size\": [768]}", SD_ERR_FORMAT, "key \"hidden_size\": expected an integer, got an array");
    TEXT_FAILS("{\"hidden_act\": 1}", SD_ERR_FORMAT, "key \"hidden_act\": expected a string");
}

static void test_invalid_values(void **state) {
    (void)state;
    UNET_FAILS("{\"block_out_channels\": [320, 0, 1280, 1280]}", SD_ERR_FORMAT, "entry 1 must be positive, got 0");
    UNET_FAILS("{\"block_out_channels\": [320, -640, 1280, 1280]}", SD_ERR_FORMAT, "entry 1 must be positive");
    UNET_FAILS("{\"block_out_channels\": []}", SD_ERR_FORMAT, "\"block_out_channels\" is an empty list");
    UNET_FAILS("{\"layers_per_block\": 0}", SD_ERR_FORMAT, "key \"layers_per_block\" must be positive");
    UNET_FAILS("{\"in_channels\": -4}", SD_ERR_FORMAT, "key \"in_channels\" must be positive");
    UNET_FAILS("{\"block_out_channels\": [320, 650, 1280, 1280]}", SD_ERR_FORMAT,
               "650 channels of block 1 are not divisible by \"norm_num_groups\" 32");
    UNET_FAILS("{\"attention_head_dim\": 7, \"norm_num_groups\": 8, \"block_out_channels\": [64, 64, 64, 64]}",
               SD_ERR_FORMAT, "not divisible by its 7 attention heads");
    UNET_FAILS("{\"attention_head_dim\": [8, 8, 8]}", SD_ERR_FORMAT, "key \"attention_head_dim\" has 3 entries");
    UNET_FAILS("{\"attention_head_dim\": 0}", SD_ERR_FORMAT, "key \"attention_head_dim\" must be positive");
    UNET_FAILS("{\"block_out_channels\": [32, 64, 128]}", SD_ERR_FORMAT,
               "key \"down_block_types\" is missing and its default has 4 entries");
    UNET_FAILS("{\"block_out_channels\": [32, 64, 128], \"down_block_types\": [\"DownBlock2D\", \"DownBlock2D\"]}",
               SD_ERR_FORMAT, "key \"down_block_types\" has 2 entries but \"block_out_channels\" has 3");
    VAE_FAILS("{\"block_out_channels\": [128, 250], \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], "
              "\"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}", SD_ERR_FORMAT, "250 channels of block 1");
    VAE_FAILS("{\"latent_channels\": 0}", SD_ERR_FORMAT, "key \"latent_channels\" must be positive");
    TEXT_FAILS("{\"hidden_size\": 100, \"num_attention_heads\": 12}", SD_ERR_FORMAT,
               "key \"hidden_size\" 100 is not divisible by \"num_attention_heads\" 12");
    TEXT_FAILS("{\"num_hidden_layers\": 0}", SD_ERR_FORMAT, "key \"num_hidden_layers\" must be positive");
}

static void test_unsupported_architectures(void **state) {
    (void)state;
    UNET_FAILS("{\"block_out_channels\": [32, 32, 32, 32, 32, 32, 32, 32, 32]}", SD_ERR_UNSUPPORTED,
               "key \"block_out_channels\" has 9 blocks (stylediff supports up to 8)");
    UNET_FAILS("{\"down_block_types\": [\"SimpleCrossAttnDownBlock2D\", \"DownBlock2D\", \"DownBlock2D\", \"DownBlock2D\"]}",
               SD_ERR_UNSUPPORTED, "key \"down_block_types\": block type \"SimpleCrossAttnDownBlock2D\" is not supported");
    UNET_FAILS("{\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"AttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}",
               SD_ERR_UNSUPPORTED, "block type \"AttnUpBlock2D\"");
    UNET_FAILS("{\"only_cross_attention\": true}", SD_ERR_UNSUPPORTED, "key \"only_cross_attention\" is true");
    UNET_FAILS("{\"only_cross_attention\": [false, true, false, false]}", SD_ERR_UNSUPPORTED, "\"only_cross_attention\"");
    UNET_FAILS("{\"mid_block_type\": null}", SD_ERR_UNSUPPORTED, "key \"mid_block_type\": \"null\" is not supported");
    UNET_FAILS("{\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"}", SD_ERR_UNSUPPORTED, "\"mid_block_type\"");
    UNET_FAILS("{\"class_embed_type\": \"timestep\"}", SD_ERR_UNSUPPORTED, "key \"class_embed_type\" is set");
    UNET_FAILS("{\"addition_embed_type\": \"text_time\"}", SD_ERR_UNSUPPORTED, "key \"addition_embed_type\"");
    UNET_FAILS("{\"transformer_layers_per_block\": 2}", SD_ERR_UNSUPPORTED, "key \"transformer_layers_per_block\"");
    UNET_FAILS("{\"transformer_layers_per_block\": [1, 2, 10, 1]}", SD_ERR_UNSUPPORTED, "transformer_layers_per_block");
    UNET_FAILS("{\"layers_per_block\": [2, 2, 2, 2]}", SD_ERR_UNSUPPORTED, "key \"layers_per_block\": a per-block list");
    UNET_FAILS("{\"cross_attention_dim\": [768, 768, 768, 768]}", SD_ERR_UNSUPPORTED, "key \"cross_attention_dim\"");
    UNET_FAILS("{\"act_fn\": \"gelu\"}", SD_ERR_UNSUPPORTED, "key \"act_fn\" is \"gelu\"");
    UNET_FAILS("{\"resnet_time_scale_shift\": \"scale_shift\"}", SD_ERR_UNSUPPORTED, "resnet_time_scale_shift");
    UNET_FAILS("{\"time_embedding_type\": \"fourier\"}", SD_ERR_UNSUPPORTED, "time_embedding_type");
    UNET_FAILS("{\"conv_in_kernel\": 7}", SD_ERR_UNSUPPORTED, "key \"conv_in_kernel\" is 7");
    UNET_FAILS("{\"dual_cross_attention\": true}", SD_ERR_UNSUPPORTED, "dual_cross_attention");
    UNET_FAILS("{\"center_input_sample\": true}", SD_ERR_UNSUPPORTED, "center_input_sample");
    UNET_FAILS("{\"norm_num_groups\": null}", SD_ERR_UNSUPPORTED, "key \"norm_num_groups\" is null");
    UNET_FAILS("{\"time_embedding_dim\": 512}", SD_ERR_UNSUPPORTED, "time_embedding_dim");
    UNET_FAILS("{\"encoder_hid_dim\": 768}", SD_ERR_UNSUPPORTED, "encoder_hid_dim");
    VAE_FAILS("{\"down_block_types\": [\"DownBlock2D\"]}", SD_ERR_UNSUPPORTED,
              "key \"down_block_types\": block type \"DownBlock2D\" is not supported");
    VAE_FAILS("{\"use_quant_conv\": false}", SD_ERR_UNSUPPORTED, "key \"use_quant_conv\" is false");
    VAE_FAILS("{\"latents_mean\": [0.1, 0.2, 0.3, 0.4]}", SD_ERR_UNSUPPORTED, "key \"latents_mean\"");
    VAE_FAILS("{\"shift_factor\": 0.1159}", SD_ERR_UNSUPPORTED, "key \"shift_factor\"");
    VAE_FAILS("{\"act_fn\": \"relu\"}", SD_ERR_UNSUPPORTED, "act_fn");
    TEXT_FAILS("{\"hidden_act\": \"gelu_new\"}", SD_ERR_UNSUPPORTED, "key \"hidden_act\" is \"gelu_new\"");
    TEXT_FAILS("{\"model_type\": \"t5\"}", SD_ERR_UNSUPPORTED, "key \"model_type\" is \"t5\"");
}

static void test_load_names_the_file(void **state) {
    (void)state;
    sd_unet_config c;
    assert_sd_fails(sd_unet_config_load("/nonexistent/unet/config.json", &c), SD_ERR_IO, "/nonexistent/unet/config.json");
    char path[] = "/tmp/sd_test_configXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_sd_ok(sd_write_file_atomic(path, "{\"layers_per_block\": true}", 26));
    assert_sd_fails(sd_unet_config_load(path, &c), SD_ERR_FORMAT, "layers_per_block");
    assert_true(testutil_contains(sd_last_error(), path));
    sd_vae_config v;
    assert_sd_fails(sd_vae_config_load(path, &v), SD_ERR_FORMAT, path);
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15_files_match_constructors),
        cmocka_unit_test(test_tiny_configs),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_heads_and_variants),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_invalid_values),
        cmocka_unit_test(test_unsupported_architectures),
        cmocka_unit_test(test_load_names_the_file),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
