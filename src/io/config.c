/* config.c: model configurations from diffusers / transformers config.json files.
 *
 * A key that is absent takes the default the Python class gives it (UNet2DConditionModel,
 * AutoencoderKL, CLIPTextConfig), so a config written by any diffusers version means here what it
 * means there. Keys that select an architecture stylediff does not implement are rejected by name
 * instead of being silently ignored: running a different network with SD v1 code would give wrong
 * images with no error. */
#include "sd/config.h"
#include "sd/json_util.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------
 * SD v1.4 / v1.5 configurations (the same as the files in configs/sd-v1.5/)
 * --------------------------------------------------------------------------------------------- */

void sd_unet_config_sd15(sd_unet_config *c) {
    memset(c, 0, sizeof *c);
    c->in_channels = 4;
    c->out_channels = 4;
    c->sample_size = 64;
    c->n_blocks = 4;
    const int channels[4] = {320, 640, 1280, 1280};
    for (int i = 0; i < 4; i++) {
        c->block_out_channels[i] = channels[i];
        c->down_has_attn[i] = i < 3; /* CrossAttnDownBlock2D x3, DownBlock2D */
        c->up_has_attn[i] = i > 0;   /* UpBlock2D, CrossAttnUpBlock2D x3 */
        c->heads[i] = 8;
    }
    c->layers_per_block = 2;
    c->mid_has_attn = 1;
    c->cross_attention_dim = 768;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0;
    c->use_linear_projection = 0;
    c->downsample_padding = 1;
    c->only_cross_attention = 0;
    c->upcast_attention = 0;
}

void sd_vae_config_sd15(sd_vae_config *c) {
    memset(c, 0, sizeof *c);
    c->in_channels = 3;
    c->out_channels = 3;
    c->latent_channels = 4;
    c->n_blocks = 4;
    const int channels[4] = {128, 256, 512, 512};
    for (int i = 0; i < 4; i++) c->block_out_channels[i] = channels[i];
    c->layers_per_block = 2;
    c->norm_num_groups = 32;
    c->sample_size = 512;
    c->scaling_factor = 0.18215f;
    c->mid_block_add_attention = 1;
}

void sd_clip_text_config_sd15(sd_clip_text_config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 49408;
    c->hidden_size = 768;
    c->intermediate_size = 3072;
    c->num_hidden_layers = 12;
    c->num_attention_heads = 12;
    c->max_position_embeddings = 77;
    c->quick_gelu = 1;
    c->layer_norm_eps = 1e-5f;
    c->eos_token_id = 2; /* the published file's value (openai/clip-vit-large-patch14's legacy id) */
}

/* ------------------------------------------------------------------------------------------------
 * JSON helpers: every failure names the file and the key
 * --------------------------------------------------------------------------------------------- */

const char *sd_json_kind(const cJSON *v) {
    if (!v) return "nothing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

/* 1-based line and column of byte `offset` of `text`, for error messages. */
static void line_and_column(const char *text, size_t offset, int *line, int *column) {
    *line = 1;
    *column = 1;
    for (size_t i = 0; i < offset && text[i]; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *column = 1;
        } else {
            (*column)++;
        }
    }
}

sd_status sd_json_parse_object(const char *json, const char *path, cJSON **out) {
    *out = NULL;
    if (!json) return sd_fail(SD_ERR_ARG, "%s: no JSON text", path);
    size_t len = strlen(json);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    int line, column;
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        line_and_column(json, at, &line, &column);
        return sd_fail(SD_ERR_FORMAT, "%s: malformed JSON at line %d, column %d", path, line, column);
    }
    for (const char *p = end; p && *p; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            line_and_column(json, (size_t)(p - json), &line, &column);
            cJSON_Delete(root);
            return sd_fail(SD_ERR_FORMAT, "%s: unexpected text after the JSON object at line %d, column %d",
                           path, line, column);
        }
    if (!cJSON_IsObject(root)) {
        const char *kind = sd_json_kind(root);
        cJSON_Delete(root);
        return sd_fail(SD_ERR_FORMAT, "%s: expected a JSON object at the top level, got %s", path, kind);
    }
    *out = root;
    return SD_OK;
}

static const cJSON *get(const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

static int is_present(const cJSON *obj, const char *key) {
    const cJSON *v = get(obj, key);
    return v && !cJSON_IsNull(v);
}

static int json_is_int(const cJSON *v) {
    return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && v->valuedouble >= INT_MIN &&
           v->valuedouble <= INT_MAX;
}

static sd_status wrong_type(const char *path, const char *key, const char *expected, const cJSON *v) {
    return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\": expected %s, got %s", path, key, expected, sd_json_kind(v));
}

/* An integer key; absent: `def`. */
static sd_status get_int(const cJSON *obj, const char *path, const char *key, int def, int *out) {
    const cJSON *v = get(obj, key);
    if (!v) {
        *out = def;
        return SD_OK;
    }
    if (!json_is_int(v)) return wrong_type(path, key, "an integer", v);
    *out = (int)v->valuedouble;
    return SD_OK;
}

/* An integer key that must be positive. */
static sd_status get_positive_int(const cJSON *obj, const char *path, const char *key, int def, int *out) {
    SD_TRY(get_int(obj, path, key, def, out));
    if (*out <= 0) return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\" must be positive, got %d", path, key, *out);
    return SD_OK;
}

static sd_status get_float(const cJSON *obj, const char *path, const char *key, float def, float *out) {
    const cJSON *v = get(obj, key);
    if (!v) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return wrong_type(path, key, "a number", v);
    *out = (float)v->valuedouble;
    return SD_OK;
}

static sd_status get_bool(const cJSON *obj, const char *path, const char *key, int def, int *out) {
    const cJSON *v = get(obj, key);
    if (!v) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsBool(v)) return wrong_type(path, key, "true or false", v);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return SD_OK;
}

/* A string key (the pointer lives as long as the parsed JSON); absent: `def`. */
static sd_status get_string(const cJSON *obj, const char *path, const char *key, const char *def,
                            const char **out) {
    const cJSON *v = get(obj, key);
    if (!v) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsString(v)) return wrong_type(path, key, "a string", v);
    *out = v->valuestring;
    return SD_OK;
}

/* A non-empty list of positive integers, at most SD_MAX_BLOCKS long. */
static sd_status get_channel_list(const cJSON *v, const char *path, const char *key, int *values, int *n) {
    if (!cJSON_IsArray(v)) return wrong_type(path, key, "a list of integers", v);
    int count = cJSON_GetArraySize(v);
    if (count == 0) return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\" is an empty list", path, key);
    if (count > SD_MAX_BLOCKS)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%s\" has %d blocks (stylediff supports up to %d)",
                       path, key, count, SD_MAX_BLOCKS);
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, v) {
        if (!json_is_int(item))
            return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\": entry %d: expected an integer, got %s", path,
                           key, i, sd_json_kind(item));
        values[i] = (int)item->valuedouble;
        if (values[i] <= 0)
            return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\": entry %d must be positive, got %d", path, key,
                           i, values[i]);
        i++;
    }
    *n = count;
    return SD_OK;
}

/* A list of `n` strings, each mapped through `names` to a flag (index in names: 0 or 1). */
static sd_status get_block_types(const cJSON *obj, const char *path, const char *key, int n,
                                 const char *const *names, int n_names, const int *flag_of_name,
                                 const char *const *defaults, int *flags) {
    const cJSON *v = get(obj, key);
    if (!v) {
        /* The Python default list has its own length; it must match the block count. */
        int count = 0;
        while (defaults[count]) count++;
        if (count != n)
            return sd_fail(SD_ERR_FORMAT,
                           "%s: key \"%s\" is missing and its default has %d entries, but "
                           "\"block_out_channels\" has %d",
                           path, key, count, n);
        for (int i = 0; i < n; i++)
            for (int k = 0; k < n_names; k++)
                if (strcmp(defaults[i], names[k]) == 0) flags[i] = flag_of_name[k];
        return SD_OK;
    }
    if (!cJSON_IsArray(v)) return wrong_type(path, key, "a list of block type names", v);
    int count = cJSON_GetArraySize(v);
    if (count != n)
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\" has %d entries but \"block_out_channels\" has %d",
                       path, key, count, n);
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, v) {
        if (!cJSON_IsString(item))
            return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\": entry %d: expected a string, got %s", path,
                           key, i, sd_json_kind(item));
        int found = 0;
        for (int k = 0; k < n_names && !found; k++)
            if (strcmp(item->valuestring, names[k]) == 0) {
                flags[i] = flag_of_name[k];
                found = 1;
            }
        if (!found)
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%s\": block type \"%.64s\" is not supported "
                           "(stylediff runs SD v1.x blocks: %s%s%s)",
                           path, key, item->valuestring, names[0], n_names > 1 ? ", " : "",
                           n_names > 1 ? names[1] : "");
        i++;
    }
    return SD_OK;
}

/* A key that would select a feature stylediff does not implement: absent or null is fine. */
static sd_status require_null(const cJSON *obj, const char *path, const char *key) {
    if (is_present(obj, key))
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%s\" is set, which stylediff does not support "
                       "(SD v1.x leaves it null)", path, key);
    return SD_OK;
}

static sd_status require_false(const cJSON *obj, const char *path, const char *key) {
    int value;
    SD_TRY(get_bool(obj, path, key, 0, &value));
    if (value)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%s\" is true, which stylediff does not support",
                       path, key);
    return SD_OK;
}

static sd_status require_string(const cJSON *obj, const char *path, const char *key, const char *want) {
    const char *value = want;
    SD_TRY(get_string(obj, path, key, want, &value));
    if (strcmp(value, want) != 0)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%s\" is \"%.64s\"; stylediff supports only \"%s\"",
                       path, key, value, want);
    return SD_OK;
}

static sd_status require_number(const cJSON *obj, const char *path, const char *key, double want) {
    float value = 0;
    SD_TRY(get_float(obj, path, key, (float)want, &value));
    if (value != (float)want)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%s\" is %g; stylediff supports only %g", path, key,
                       (double)value, want);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * UNet2DConditionModel
 * --------------------------------------------------------------------------------------------- */

/* "attention_head_dim" / "num_attention_heads": an int for every block or a list per block. */
static sd_status get_heads(const cJSON *v, const char *path, const char *key, int n_blocks, int *heads) {
    if (json_is_int(v)) {
        int h = (int)v->valuedouble;
        if (h <= 0) return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\" must be positive, got %d", path, key, h);
        for (int i = 0; i < n_blocks; i++) heads[i] = h;
        return SD_OK;
    }
    if (!cJSON_IsArray(v)) return wrong_type(path, key, "an integer or a list of integers", v);
    int values[SD_MAX_BLOCKS], n = 0;
    if (cJSON_GetArraySize(v) != n_blocks)
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\" has %d entries but \"block_out_channels\" has %d",
                       path, key, cJSON_GetArraySize(v), n_blocks);
    SD_TRY(get_channel_list(v, path, key, values, &n));
    for (int i = 0; i < n_blocks; i++) heads[i] = values[i];
    return SD_OK;
}

static sd_status parse_unet(const cJSON *root, const char *path, sd_unet_config *c) {
    memset(c, 0, sizeof *c);

    /* Architecture switches SD v1 never sets. */
    static const char *const must_be_null[] = {
        "class_embed_type", "addition_embed_type", "addition_time_embed_dim", "num_class_embeds",
        "encoder_hid_dim", "encoder_hid_dim_type", "time_cond_proj_dim",
        "projection_class_embeddings_input_dim", "timestep_post_act", "time_embedding_act_fn",
        "cross_attention_norm", "reverse_transformer_layers_per_block"};
    for (size_t i = 0; i < sizeof must_be_null / sizeof must_be_null[0]; i++)
        SD_TRY(require_null(root, path, must_be_null[i]));
    static const char *const must_be_false[] = {"dual_cross_attention", "resnet_skip_time_act",
                                                "center_input_sample", "class_embeddings_concat"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof must_be_false[0]; i++)
        SD_TRY(require_false(root, path, must_be_false[i]));
    SD_TRY(require_string(root, path, "act_fn", "silu"));
    SD_TRY(require_string(root, path, "resnet_time_scale_shift", "default"));
    SD_TRY(require_string(root, path, "time_embedding_type", "positional"));
    SD_TRY(require_string(root, path, "attention_type", "default"));
    SD_TRY(require_number(root, path, "conv_in_kernel", 3));
    SD_TRY(require_number(root, path, "conv_out_kernel", 3));
    SD_TRY(require_number(root, path, "mid_block_scale_factor", 1));
    SD_TRY(require_number(root, path, "resnet_out_scale_factor", 1));
    if (is_present(root, "mid_block_only_cross_attention"))
        SD_TRY(require_false(root, path, "mid_block_only_cross_attention"));

    SD_TRY(get_positive_int(root, path, "in_channels", 4, &c->in_channels));
    SD_TRY(get_positive_int(root, path, "out_channels", 4, &c->out_channels));

    /* sample_size: null by default in diffusers (then 64 for SD v1), an int, or [height, width]. */
    const cJSON *sample = get(root, "sample_size");
    c->sample_size = 64;
    if (sample && !cJSON_IsNull(sample)) {
        if (cJSON_IsArray(sample) && cJSON_GetArraySize(sample) == 2 && json_is_int(sample->child))
            sample = sample->child;
        if (!json_is_int(sample) || sample->valuedouble <= 0)
            return wrong_type(path, "sample_size", "a positive integer or [height, width]", sample);
        c->sample_size = (int)sample->valuedouble;
    }

    const cJSON *channels = get(root, "block_out_channels");
    if (channels) {
        SD_TRY(get_channel_list(channels, path, "block_out_channels", c->block_out_channels, &c->n_blocks));
    } else {
        const int defaults[4] = {320, 640, 1280, 1280};
        c->n_blocks = 4;
        memcpy(c->block_out_channels, defaults, sizeof defaults);
    }
    const int n = c->n_blocks;

    static const char *const down_names[] = {"CrossAttnDownBlock2D", "DownBlock2D"};
    static const char *const up_names[] = {"CrossAttnUpBlock2D", "UpBlock2D"};
    static const int attn_flags[] = {1, 0};
    static const char *const down_defaults[] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                "CrossAttnDownBlock2D", "DownBlock2D", NULL};
    static const char *const up_defaults[] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                              "CrossAttnUpBlock2D", NULL};
    SD_TRY(get_block_types(root, path, "down_block_types", n, down_names, 2, attn_flags, down_defaults,
                           c->down_has_attn));
    SD_TRY(get_block_types(root, path, "up_block_types", n, up_names, 2, attn_flags, up_defaults,
                           c->up_has_attn));

    const cJSON *mid = get(root, "mid_block_type");
    if (mid && !cJSON_IsString(mid) && !cJSON_IsNull(mid))
        return wrong_type(path, "mid_block_type", "a string", mid);
    if (mid && (cJSON_IsNull(mid) || strcmp(mid->valuestring, "UNetMidBlock2DCrossAttn") != 0))
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"mid_block_type\": \"%.64s\" is not supported "
                       "(stylediff runs UNetMidBlock2DCrossAttn)",
                       path, cJSON_IsNull(mid) ? "null" : mid->valuestring);
    c->mid_has_attn = 1;

    const cJSON *layers = get(root, "layers_per_block");
    if (layers && cJSON_IsArray(layers))
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"layers_per_block\": a per-block list is not "
                       "supported (SD v1.x uses one integer)", path);
    SD_TRY(get_positive_int(root, path, "layers_per_block", 2, &c->layers_per_block));

    const cJSON *depth = get(root, "transformer_layers_per_block");
    if (depth) {
        int ok = json_is_int(depth) && depth->valuedouble == 1;
        if (cJSON_IsArray(depth)) {
            ok = 1;
            const cJSON *item;
            cJSON_ArrayForEach(item, depth) ok = ok && json_is_int(item) && item->valuedouble == 1;
        }
        if (!ok)
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"transformer_layers_per_block\": stylediff "
                           "supports one transformer layer per attention block (SD v1.x)", path);
    }

    const cJSON *only_cross = get(root, "only_cross_attention");
    if (only_cross) {
        int any = cJSON_IsTrue(only_cross);
        if (cJSON_IsArray(only_cross)) {
            const cJSON *item;
            cJSON_ArrayForEach(item, only_cross) {
                if (!cJSON_IsBool(item))
                    return wrong_type(path, "only_cross_attention", "true/false or a list of them", item);
                any = any || cJSON_IsTrue(item);
            }
        } else if (!cJSON_IsBool(only_cross)) {
            return wrong_type(path, "only_cross_attention", "true/false or a list of them", only_cross);
        }
        if (any)
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"only_cross_attention\" is true; stylediff needs "
                           "the self-attention layers of SD v1.x", path);
    }
    c->only_cross_attention = 0;

    /* Heads: SD v1 configs call the head count "attention_head_dim" (a diffusers naming slip);
     * "num_attention_heads", when present and not null, says the same thing correctly and wins. */
    const cJSON *num_heads = get(root, "num_attention_heads");
    const cJSON *head_dim = get(root, "attention_head_dim");
    if (num_heads && !cJSON_IsNull(num_heads))
        SD_TRY(get_heads(num_heads, path, "num_attention_heads", n, c->heads));
    else if (head_dim)
        SD_TRY(get_heads(head_dim, path, "attention_head_dim", n, c->heads));
    else
        for (int i = 0; i < n; i++) c->heads[i] = 8;

    const cJSON *cross = get(root, "cross_attention_dim");
    if (cross && cJSON_IsArray(cross))
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"cross_attention_dim\": a per-block list is not "
                       "supported (SD v1.x uses one integer)", path);
    SD_TRY(get_positive_int(root, path, "cross_attention_dim", 1280, &c->cross_attention_dim));

    const cJSON *groups = get(root, "norm_num_groups");
    if (groups && cJSON_IsNull(groups))
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"norm_num_groups\" is null (no group norm), which "
                       "stylediff does not support", path);
    SD_TRY(get_positive_int(root, path, "norm_num_groups", 32, &c->norm_num_groups));
    SD_TRY(get_float(root, path, "norm_eps", 1e-5f, &c->norm_eps));
    if (!(c->norm_eps > 0)) return sd_fail(SD_ERR_FORMAT, "%s: key \"norm_eps\" must be positive", path);

    SD_TRY(get_bool(root, path, "flip_sin_to_cos", 1, &c->flip_sin_to_cos));
    SD_TRY(get_int(root, path, "freq_shift", 0, &c->freq_shift));
    SD_TRY(get_bool(root, path, "use_linear_projection", 0, &c->use_linear_projection));
    SD_TRY(get_int(root, path, "downsample_padding", 1, &c->downsample_padding));
    if (c->downsample_padding < 0)
        return sd_fail(SD_ERR_FORMAT, "%s: key \"downsample_padding\" must not be negative", path);
    SD_TRY(get_bool(root, path, "upcast_attention", 0, &c->upcast_attention));

    const cJSON *temb_dim = get(root, "time_embedding_dim");
    if (temb_dim && !cJSON_IsNull(temb_dim) &&
        !(json_is_int(temb_dim) && temb_dim->valuedouble == 4.0 * c->block_out_channels[0]))
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"time_embedding_dim\": stylediff supports only "
                       "4 x block_out_channels[0] (the default)", path);

    /* Shapes the layers need: GroupNorm splits every block's channels into norm_num_groups groups,
     * and attention splits them into heads. */
    for (int i = 0; i < n; i++) {
        const int ch = c->block_out_channels[i];
        if (ch % c->norm_num_groups != 0)
            return sd_fail(SD_ERR_FORMAT, "%s: key \"block_out_channels\": %d channels of block %d are not "
                           "divisible by \"norm_num_groups\" %d", path, ch, i, c->norm_num_groups);
        const int has_attn = c->down_has_attn[i] || c->up_has_attn[n - 1 - i] || (i == n - 1 && c->mid_has_attn);
        if (has_attn && ch % c->heads[i] != 0)
            return sd_fail(SD_ERR_FORMAT, "%s: key \"block_out_channels\": %d channels of block %d are not "
                           "divisible by its %d attention heads", path, ch, i, c->heads[i]);
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * AutoencoderKL
 * --------------------------------------------------------------------------------------------- */

static sd_status parse_vae(const cJSON *root, const char *path, sd_vae_config *c) {
    memset(c, 0, sizeof *c);
    SD_TRY(require_string(root, path, "act_fn", "silu"));
    SD_TRY(require_null(root, path, "latents_mean"));
    SD_TRY(require_null(root, path, "latents_std"));
    if (is_present(root, "shift_factor")) SD_TRY(require_number(root, path, "shift_factor", 0));
    int quant, post_quant;
    SD_TRY(get_bool(root, path, "use_quant_conv", 1, &quant));
    SD_TRY(get_bool(root, path, "use_post_quant_conv", 1, &post_quant));
    if (!quant || !post_quant)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%s\" is false; SD v1.x VAEs have that 1x1 conv", path,
                       quant ? "use_post_quant_conv" : "use_quant_conv");

    SD_TRY(get_positive_int(root, path, "in_channels", 3, &c->in_channels));
    SD_TRY(get_positive_int(root, path, "out_channels", 3, &c->out_channels));
    SD_TRY(get_positive_int(root, path, "latent_channels", 4, &c->latent_channels));

    const cJSON *channels = get(root, "block_out_channels");
    if (channels) {
        SD_TRY(get_channel_list(channels, path, "block_out_channels", c->block_out_channels, &c->n_blocks));
    } else {
        c->n_blocks = 1;
        c->block_out_channels[0] = 64;
    }
    static const char *const down_names[] = {"DownEncoderBlock2D"};
    static const char *const up_names[] = {"UpDecoderBlock2D"};
    static const int flags[] = {0};
    static const char *const down_defaults[] = {"DownEncoderBlock2D", NULL};
    static const char *const up_defaults[] = {"UpDecoderBlock2D", NULL};
    int unused[SD_MAX_BLOCKS];
    SD_TRY(get_block_types(root, path, "down_block_types", c->n_blocks, down_names, 1, flags,
                           down_defaults, unused));
    SD_TRY(get_block_types(root, path, "up_block_types", c->n_blocks, up_names, 1, flags, up_defaults,
                           unused));

    const cJSON *layers = get(root, "layers_per_block");
    if (layers && cJSON_IsArray(layers))
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"layers_per_block\": a per-block list is not supported",
                       path);
    SD_TRY(get_positive_int(root, path, "layers_per_block", 1, &c->layers_per_block));
    SD_TRY(get_positive_int(root, path, "norm_num_groups", 32, &c->norm_num_groups));

    const cJSON *sample = get(root, "sample_size");
    c->sample_size = 32;
    if (sample && !cJSON_IsNull(sample)) {
        if (cJSON_IsArray(sample) && cJSON_GetArraySize(sample) == 2 && json_is_int(sample->child))
            sample = sample->child;
        if (!json_is_int(sample) || sample->valuedouble <= 0)
            return wrong_type(path, "sample_size", "a positive integer or [height, width]", sample);
        c->sample_size = (int)sample->valuedouble;
    }
    SD_TRY(get_float(root, path, "scaling_factor", 0.18215f, &c->scaling_factor));
    if (!(c->scaling_factor > 0))
        return sd_fail(SD_ERR_FORMAT, "%s: key \"scaling_factor\" must be positive", path);
    SD_TRY(get_bool(root, path, "mid_block_add_attention", 1, &c->mid_block_add_attention));

    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out_channels[i] % c->norm_num_groups != 0)
            return sd_fail(SD_ERR_FORMAT, "%s: key \"block_out_channels\": %d channels of block %d are not "
                           "divisible by \"norm_num_groups\" %d",
                           path, c->block_out_channels[i], i, c->norm_num_groups);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * CLIPTextModel
 * --------------------------------------------------------------------------------------------- */

static sd_status parse_clip_text(const cJSON *root, const char *path, sd_clip_text_config *c) {
    memset(c, 0, sizeof *c);
    /* A full CLIPConfig (text + vision) nests the text tower's settings. */
    const cJSON *nested = get(root, "text_config");
    if (nested && cJSON_IsObject(nested)) root = nested;

    const char *model_type = "clip_text_model";
    SD_TRY(get_string(root, path, "model_type", "clip_text_model", &model_type));
    if (strcmp(model_type, "clip_text_model") != 0 && strcmp(model_type, "clip") != 0)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"model_type\" is \"%.64s\"; stylediff runs the CLIP "
                       "text encoder (clip_text_model)", path, model_type);

    /* Defaults are CLIPTextConfig's (the ViT-B/32 text tower), not SD's ViT-L/14 values. */
    SD_TRY(get_positive_int(root, path, "vocab_size", 49408, &c->vocab_size));
    SD_TRY(get_positive_int(root, path, "hidden_size", 512, &c->hidden_size));
    SD_TRY(get_positive_int(root, path, "intermediate_size", 2048, &c->intermediate_size));
    SD_TRY(get_positive_int(root, path, "num_hidden_layers", 12, &c->num_hidden_layers));
    SD_TRY(get_positive_int(root, path, "num_attention_heads", 8, &c->num_attention_heads));
    SD_TRY(get_positive_int(root, path, "max_position_embeddings", 77, &c->max_position_embeddings));
    SD_TRY(get_float(root, path, "layer_norm_eps", 1e-5f, &c->layer_norm_eps));
    if (!(c->layer_norm_eps > 0))
        return sd_fail(SD_ERR_FORMAT, "%s: key \"layer_norm_eps\" must be positive", path);
    /* CLIPTextConfig's default; transformers 5 also allows a list, which CLIP configs never use. */
    SD_TRY(get_int(root, path, "eos_token_id", 49407, &c->eos_token_id));
    const char *act = "quick_gelu";
    SD_TRY(get_string(root, path, "hidden_act", "quick_gelu", &act));
    if (strcmp(act, "quick_gelu") == 0)
        c->quick_gelu = 1;
    else if (strcmp(act, "gelu") == 0)
        c->quick_gelu = 0;
    else
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"hidden_act\" is \"%.64s\"; stylediff supports "
                       "\"quick_gelu\" and \"gelu\"", path, act);
    if (c->hidden_size % c->num_attention_heads != 0)
        return sd_fail(SD_ERR_FORMAT, "%s: key \"hidden_size\" %d is not divisible by "
                       "\"num_attention_heads\" %d", path, c->hidden_size, c->num_attention_heads);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Entry points
 * --------------------------------------------------------------------------------------------- */

#define DEFINE_CONFIG_PARSE(fn_parse, fn_load, type, parser)                                       \
    sd_status fn_parse(const char *json, const char *path, type *out) {                            \
        if (!path) path = "(config)";                                                              \
        cJSON *root;                                                                               \
        SD_TRY(sd_json_parse_object(json, path, &root));                                              \
        type parsed;                                                                               \
        sd_status status = parser(root, path, &parsed);                                            \
        cJSON_Delete(root);                                                                        \
        if (status == SD_OK) *out = parsed;                                                        \
        return status;                                                                             \
    }                                                                                              \
    sd_status fn_load(const char *path, type *out) {                                               \
        char *text;                                                                                \
        SD_TRY(sd_read_file(path, &text, NULL));                                                   \
        sd_status status = fn_parse(text, path, out);                                              \
        free(text);                                                                                \
        return status;                                                                             \
    }

DEFINE_CONFIG_PARSE(sd_unet_config_parse, sd_unet_config_load, sd_unet_config, parse_unet)
DEFINE_CONFIG_PARSE(sd_vae_config_parse, sd_vae_config_load, sd_vae_config, parse_vae)
DEFINE_CONFIG_PARSE(sd_clip_text_config_parse, sd_clip_text_config_load, sd_clip_text_config,
                    parse_clip_text)
