/* clip_vision.c: StyleDiffusion's image encoder E (stylediffusion.md §3.2) on the CPU.
 *
 * openai-CLIP's VisionTransformer as clip_util.py patches it: conv1 (patch embedding, no bias),
 * the class embedding prepended, the positional embedding added, ln_pre, pre-LN residual blocks
 * (bidirectional multi-head attention, QuickGELU MLP), then ln_post on *every* token and no
 * projection. Weights come in the transformers CLIPVisionModel layout; the forward equals
 * post_layernorm(CLIPVisionModel(x).last_hidden_state), which tests/oracle/gen_50_clip_vision.py
 * checks against a direct re-implementation of openai-CLIP's forward.
 *
 * Everything is fp32. The reference runs this tower in fp16 on CUDA (clip.load), so its features
 * carry fp16 rounding that these do not.
 *
 * The bicubic resize of the preprocessing is a plain CPU routine at the end of this file, to be
 * moved into the backend op table (see clip_vision.h). */
#include "sd/clip_vision.h"
#include "sd/image.h"
#include "sd/json_util.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"

#define NAME_CAP 256
#define VISION_PREFIX "vision_model."
#define PROJECTION_NAME "visual_projection.weight"

/* Trainer.preprocess's Normalize, as torch.as_tensor(..., dtype=float32) rounds the Python
 * doubles: double literal first, then float, so the constants are the bits torch uses. */
static const double CLIP_MEAN[3] = {0.48145466, 0.4578275, 0.40821073};
static const double CLIP_STD[3] = {0.26862954, 0.26130258, 0.27577711};

/* ================================================================================================
 * Configuration
 * ============================================================================================= */

void sd_clip_vision_config_vit_b16(sd_clip_vision_config *c) {
    memset(c, 0, sizeof *c);
    c->hidden_size = 768;
    c->intermediate_size = 3072;
    c->num_hidden_layers = 12;
    c->num_attention_heads = 12;
    c->num_channels = 3;
    c->image_size = 224;
    c->patch_size = 16;
    c->projection_dim = 512;
    c->quick_gelu = 1;
    c->layer_norm_eps = 1e-5f;
}

int sd_clip_vision_num_tokens(const sd_clip_vision_config *c) {
    const int grid = c->image_size / c->patch_size; /* the stride-patch conv drops a remainder */
    return grid * grid + 1;
}


/* The typed config.json key readers (sd_config_keys, declared in layers.h) live here, where they
 * were first needed; the DINO ViT config (dino_vit.c) reads its keys with them too. */

const cJSON *sd_config_find_key(const sd_config_keys *k, const char *key, const char **where) {
    const cJSON *v = k->override ? cJSON_GetObjectItemCaseSensitive(k->override, key) : NULL;
    if (v) {
        *where = k->override_where;
        return v;
    }
    *where = k->where;
    return k->main ? cJSON_GetObjectItemCaseSensitive(k->main, key) : NULL;
}

sd_status sd_config_key_int(const sd_config_keys *k, const char *key, int def, int *out) {
    const char *where;
    const cJSON *v = sd_config_find_key(k, key, &where);
    if (!v) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble > INT_MAX ||
        v->valuedouble < INT_MIN)
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%s%s\": expected an integer, got %s", k->path, where,
                       key, sd_json_kind(v));
    if (v->valuedouble <= 0)
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%s%s\" must be positive, got %d", k->path, where, key,
                       (int)v->valuedouble);
    *out = (int)v->valuedouble;
    return SD_OK;
}

sd_status sd_config_key_float(const sd_config_keys *k, const char *key, float def, float *out) {
    const char *where;
    const cJSON *v = sd_config_find_key(k, key, &where);
    if (!v) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%s%s\": expected a number, got %s", k->path, where, key,
                       sd_json_kind(v));
    if (!(v->valuedouble > 0))
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%s%s\" must be positive", k->path, where, key);
    *out = (float)v->valuedouble;
    return SD_OK;
}

sd_status sd_config_key_string(const sd_config_keys *k, const char *key, const char *def, const char **out,
                            const char **where_out) {
    const char *where;
    const cJSON *v = sd_config_find_key(k, key, &where);
    *where_out = where;
    if (!v) {
        *out = def;
        return SD_OK;
    }
    if (!cJSON_IsString(v))
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%s%s\": expected a string, got %s", k->path, where, key,
                       sd_json_kind(v));
    *out = v->valuestring;
    return SD_OK;
}

sd_status sd_config_vit_geometry(const sd_config_keys *k, int default_patch, float default_eps,
                                 sd_vit_geometry *g) {
    SD_TRY(sd_config_key_int(k, "hidden_size", 768, &g->hidden_size));
    SD_TRY(sd_config_key_int(k, "intermediate_size", 3072, &g->intermediate_size));
    SD_TRY(sd_config_key_int(k, "num_hidden_layers", 12, &g->num_hidden_layers));
    SD_TRY(sd_config_key_int(k, "num_attention_heads", 12, &g->num_attention_heads));
    SD_TRY(sd_config_key_int(k, "num_channels", 3, &g->num_channels));
    SD_TRY(sd_config_key_int(k, "image_size", 224, &g->image_size));
    SD_TRY(sd_config_key_int(k, "patch_size", default_patch, &g->patch_size));
    SD_TRY(sd_config_key_float(k, "layer_norm_eps", default_eps, &g->layer_norm_eps));
    const char *w = k->where;
    if (g->num_channels != 3)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%snum_channels\" is %d; the preprocessing is for RGB "
                       "images (3 channels)", k->path, w, g->num_channels);
    if (g->hidden_size % g->num_attention_heads != 0)
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%shidden_size\" %d is not divisible by "
                       "\"num_attention_heads\" %d", k->path, w, g->hidden_size, g->num_attention_heads);
    if (g->image_size < g->patch_size)
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%simage_size\" %d is smaller than \"patch_size\" %d "
                       "(no patch would fit)", k->path, w, g->image_size, g->patch_size);
    return SD_OK;
}

sd_status sd_config_parse_text(const char *json, const char *path, sd_config_parse_fn parse, void *out,
                               size_t out_size) {
    if (!path) path = "(config)";
    cJSON *root = NULL;
    SD_TRY(sd_json_parse_object(json, path, &root));
    void *parsed = calloc(1, out_size);
    sd_status status = parsed ? parse(root, path, parsed) : sd_fail(SD_ERR_OOM, "%s: out of memory", path);
    cJSON_Delete(root);
    if (status == SD_OK) memcpy(out, parsed, out_size);
    free(parsed);
    return status;
}

sd_status sd_config_load_file(const char *path, sd_config_parse_fn parse, void *out, size_t out_size) {
    char *text;
    SD_TRY(sd_read_file(path, &text, NULL));
    sd_status status = sd_config_parse_text(text, path, parse, out, out_size);
    free(text);
    return status;
}

/* An optional nested object ("vision_config"): absent or null gives NULL. */
static sd_status nested_object(const cJSON *root, const char *path, const char *key, const cJSON **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return SD_OK;
    if (!cJSON_IsObject(v))
        return sd_fail(SD_ERR_FORMAT, "%s: key \"%s\": expected an object, got %s", path, key, sd_json_kind(v));
    *out = v;
    return SD_OK;
}

/* An sd_config_parse_fn: `out` is the sd_clip_vision_config to fill. */
static sd_status parse_vision_config(const cJSON *root, const char *path, void *out) {
    sd_clip_vision_config *c = out;
    memset(c, 0, sizeof *c);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (type && !cJSON_IsString(type))
        return sd_fail(SD_ERR_FORMAT, "%s: key \"model_type\": expected a string, got %s", path, sd_json_kind(type));
    const char *model_type = type ? type->valuestring : NULL;

    const cJSON *vision_config = NULL, *vision_config_dict = NULL;
    SD_TRY(nested_object(root, path, "vision_config", &vision_config));
    SD_TRY(nested_object(root, path, "vision_config_dict", &vision_config_dict));
    const int full_clip = (model_type && strcmp(model_type, "clip") == 0) || vision_config || vision_config_dict;

    sd_config_keys keys = {root, NULL, "", "", path};
    if (full_clip) {
        /* CLIPModel: the vision settings are nested; a missing "vision_config" means
         * CLIPVisionConfig's defaults, as transformers reads it. Old files (transformers <= 4.2x)
         * also carry "vision_config_dict", whose values win. */
        if (model_type && strcmp(model_type, "clip") != 0)
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"model_type\" is \"%.64s\" but the file has a "
                           "\"vision_config\"; stylediff reads CLIP (\"clip\") configs", path, model_type);
        keys.main = vision_config;
        keys.where = "vision_config.";
        keys.override = vision_config_dict;
        keys.override_where = "vision_config_dict.";
        const char *where;
        const cJSON *inner = sd_config_find_key(&keys, "model_type", &where);
        if (inner && (!cJSON_IsString(inner) || strcmp(inner->valuestring, "clip_vision_model") != 0))
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%smodel_type\" is %s%.64s%s; stylediff runs the "
                           "CLIP vision tower (clip_vision_model)", path, where,
                           cJSON_IsString(inner) ? "\"" : "", cJSON_IsString(inner) ? inner->valuestring : sd_json_kind(inner),
                           cJSON_IsString(inner) ? "\"" : "");
    } else if (model_type && strcmp(model_type, "clip_vision_model") != 0) {
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"model_type\" is \"%.64s\"; stylediff runs the CLIP "
                       "vision tower (clip_vision_model, or a clip config with a vision_config)",
                       path, model_type);
    }

    /* Defaults are CLIPVisionConfig's (ViT-B/32: patch_size 32), not ViT-B/16's. */
    sd_vit_geometry g;
    SD_TRY(sd_config_vit_geometry(&keys, 32, 1e-5f, &g));
    SD_VIT_GEOMETRY_ASSIGN(c, g);
    SD_TRY(sd_config_key_int(&keys, "projection_dim", 512, &c->projection_dim));

    const char *act = "quick_gelu", *where = "";
    SD_TRY(sd_config_key_string(&keys, "hidden_act", "quick_gelu", &act, &where));
    if (strcmp(act, "quick_gelu") == 0)
        c->quick_gelu = 1;
    else if (strcmp(act, "gelu") == 0)
        c->quick_gelu = 0;
    else
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"%shidden_act\" is \"%.64s\"; stylediff supports "
                       "\"quick_gelu\" and \"gelu\"", path, where, act);

    return SD_OK;
}

sd_status sd_clip_vision_config_parse(const char *json, const char *path, sd_clip_vision_config *out) {
    return sd_config_parse_text(json, path, parse_vision_config, out, sizeof *out);
}

sd_status sd_clip_vision_config_load(const char *path, sd_clip_vision_config *out) {
    return sd_config_load_file(path, parse_vision_config, out, sizeof *out);
}

/* ================================================================================================
 * Weights
 * ============================================================================================= */

/* Entries of a CLIP checkpoint that are not the vision tower, or that the vision tower never
 * reads (the position_ids buffer is always 0..N-1). visual_projection belongs to the tower: it is
 * kept under its own name (CLIPModel and CLIPVisionModelWithProjection files hold it). */
static int is_other_tower(const char *name) {
    static const char *const skipped[] = {"text_model.", "text_projection.", "logit_scale"};
    for (size_t i = 0; i < sizeof skipped / sizeof skipped[0]; i++)
        if (strncmp(name, skipped[i], strlen(skipped[i])) == 0) return 1;
    const size_t n = strlen(name), tail = strlen("position_ids");
    return n >= tail && strcmp(name + n - tail, "position_ids") == 0;
}

sd_status sd_clip_vision_weights_load(sd_weights *w, const char *path) {
    if (!w) return sd_fail(SD_ERR_ARG, "%s: sd_clip_vision_weights_load: no weight store", path);
    sd_safetensors st;
    SD_TRY(sd_safetensors_open(path, &st));
    const size_t prefix_len = strlen(VISION_PREFIX);
    int prefixed = 0;
    for (int i = 0; i < st.n_entries; i++)
        if (strncmp(st.entries[i].name, VISION_PREFIX, prefix_len) == 0) prefixed = 1;

    sd_status status = SD_OK;
    int loaded = 0;
    for (int i = 0; i < st.n_entries && status == SD_OK; i++) {
        const sd_st_entry *e = &st.entries[i];
        if (is_other_tower(e->name)) continue;
        /* With "vision_model." keys present, anything else is not ours; without, the file is a
         * transformers >= 5 save of CLIPVisionModel and every remaining key is. */
        const int projection = strcmp(e->name, PROJECTION_NAME) == 0;
        if (prefixed && !projection && strncmp(e->name, VISION_PREFIX, prefix_len) != 0) continue;
        char name[NAME_CAP];
        int n = snprintf(name, sizeof name, "%s%s", prefixed || projection ? "" : VISION_PREFIX, e->name);
        if (n < 0 || (size_t)n >= sizeof name) {
            status = sd_fail(SD_ERR_FORMAT, "%s: tensor name '%.80s...' is too long", path, e->name);
            break;
        }
        sd_tensor *t;
        status = sd_safetensors_load_f32(&st, e, &t);
        if (status != SD_OK) break;
        sd_tensor_set_name(t, name);
        status = sd_weights_add(w, name, t);
        loaded++;
    }
    sd_safetensors_close(&st);
    if (status == SD_OK && loaded == 0)
        status = sd_fail(SD_ERR_MISSING, "%s: no CLIP vision tensors (expected 'vision_model.*' names, "
                         "e.g. 'vision_model.embeddings.patch_embedding.weight')", path);
    return status;
}

static sd_status bind_all(sd_clip_vision *m, sd_weights *w) {
    const sd_clip_vision_config *cfg = &m->cfg;
    const int64_t D = cfg->hidden_size, F = cfg->intermediate_size, P = cfg->patch_size;
    const int64_t N = sd_clip_vision_num_tokens(cfg);

    const int64_t class_shape[1] = {D}, patch_shape[4] = {D, cfg->num_channels, P, P};
    const int64_t pos_shape[2] = {N, D};
    SD_TRY(sd_weights_get(w, VISION_PREFIX "embeddings.class_embedding", 1, class_shape, &m->class_embedding));
    SD_TRY(sd_weights_get(w, VISION_PREFIX "embeddings.patch_embedding.weight", 4, patch_shape,
                          &m->patch_embedding.weight));
    m->patch_embedding.bias = NULL; /* conv1 has bias=False */
    sd_status s = sd_weights_get(w, VISION_PREFIX "embeddings.position_embedding.weight", 2, pos_shape,
                                 &m->position_embedding);
    if (s == SD_ERR_SHAPE)
        return sd_fail_context(s, "config image_size %d / patch_size %d gives %lld tokens: ", cfg->image_size,
                               cfg->patch_size, (long long)N);
    SD_TRY(s);
    SD_TRY(sd_bind_norm(w, VISION_PREFIX "pre_layrnorm", D, &m->pre_layernorm));

    for (int i = 0; i < cfg->num_hidden_layers; i++) {
        char prefix[NAME_CAP];
        snprintf(prefix, sizeof prefix, VISION_PREFIX "encoder.layers.%d", i);
        SD_TRY(sd_bind_clip_layer(w, prefix, D, F, &m->layers[i]));
    }
    SD_TRY(sd_bind_norm(w, VISION_PREFIX "post_layernorm", D, &m->post_layernorm));
    /* Optional: CLIPModel.get_image_features needs it, StyleDiffusion's E does not. Its output
     * width is the CLIPModel's top-level projection_dim, which a CLIPVisionConfig need not carry,
     * so any row count is accepted here and checked by the user of the features. */
    if (sd_weights_find(w, PROJECTION_NAME)) {
        const int64_t proj_shape[2] = {-1, D};
        SD_TRY(sd_weights_get(w, PROJECTION_NAME, 2, proj_shape, &m->visual_projection.weight));
        m->visual_projection.bias = NULL; /* nn.Linear(..., bias=False) */
    }

    /* A store filled by other code may hold the position_ids buffer: accept it, never use it. */
    sd_tensor *pos_ids = sd_weights_find(w, VISION_PREFIX "embeddings.position_ids");
    if (pos_ids) {
        const int64_t any[SD_MAX_DIMS] = {-1, -1, -1, -1, -1, -1};
        SD_TRY(sd_weights_get(w, VISION_PREFIX "embeddings.position_ids", pos_ids->ndim, any, &pos_ids));
    }
    return SD_OK;
}

sd_status sd_clip_vision_bind(sd_clip_vision *m, const sd_clip_vision_config *cfg, sd_weights *w) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (cfg->num_hidden_layers < 1 || cfg->num_attention_heads < 1 || cfg->patch_size < 1 ||
        cfg->hidden_size % cfg->num_attention_heads || cfg->image_size < cfg->patch_size || cfg->num_channels != 3)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: CLIP vision tower with %d layers, %d heads, width %d, %d "
                       "channels, image %d, patch %d", sd_weights_source(w), cfg->num_hidden_layers,
                       cfg->num_attention_heads, cfg->hidden_size, cfg->num_channels, cfg->image_size,
                       cfg->patch_size);
    m->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return sd_fail(SD_ERR_OOM, "out of host memory binding the CLIP vision tower");
    sd_status status = bind_all(m, w);
    if (status != SD_OK) {
        free(m->layers);
        m->layers = NULL;
        return status;
    }
    const char *unused_name = NULL;
    int unused = sd_weights_unused(w, &unused_name);
    if (unused > 0)
        sd_warn("%s: %d CLIP vision tensors were not used (first: '%s')", sd_weights_source(w), unused,
                unused_name);
    return SD_OK;
}

sd_status sd_clip_vision_load(const char *dir, sd_clip_vision *m) {
    memset(m, 0, sizeof *m);
    char config_path[1024], weights_path[1024], other[1024];
    if (!sd_dir_exists(dir))
        return sd_fail(SD_ERR_MISSING, "%s: not a folder (a CLIP vision model is a folder with "
                       "config.json and model.safetensors)", dir);
    sd_path_join(config_path, sizeof config_path, dir, "config.json");
    if (!sd_file_exists(config_path))
        return sd_fail(SD_ERR_MISSING, "%s: missing (a CLIP vision model folder holds config.json and "
                       "model.safetensors)", config_path);
    sd_clip_vision_config cfg;
    SD_TRY(sd_clip_vision_config_load(config_path, &cfg));

    sd_path_join(weights_path, sizeof weights_path, dir, "model.safetensors");
    if (!sd_file_exists(weights_path)) {
        if (sd_file_exists(sd_path_join(other, sizeof other, dir, "model.safetensors.index.json")))
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: sharded checkpoints are not supported for the CLIP "
                           "vision tower; save it as one model.safetensors", other);
        if (sd_file_exists(sd_path_join(other, sizeof other, dir, "pytorch_model.bin")))
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: only pickle weights (pytorch_model.bin); stylediff "
                           "reads safetensors: convert them to %s", other, weights_path);
        return sd_fail(SD_ERR_MISSING, "%s: missing (the CLIP vision weights)", weights_path);
    }
    sd_weights *w = sd_weights_new(weights_path);
    if (!w) return sd_fail(SD_ERR_OOM, "out of host memory opening %s", weights_path);
    sd_status status = sd_clip_vision_weights_load(w, weights_path);
    if (status == SD_OK) status = sd_clip_vision_bind(m, &cfg, w);
    if (status != SD_OK) {
        sd_weights_free(w);
        return status;
    }
    m->owned = w;
    return SD_OK;
}

void sd_clip_vision_release(sd_clip_vision *m) {
    free(m->layers);
    m->layers = NULL;
    sd_weights_free(m->owned);
    m->owned = NULL;
}

/* ================================================================================================
 * Preprocessing (Trainer.preprocess)
 * ============================================================================================= */

/* Python's round() of k + 0.5 and of k: half to even, as torchvision's CenterCrop rounds the
 * offset (side - S) / 2. */
/* torchvision Resize(S) of an H x W image: the short side becomes S, the long side int(S·long/short)
 * (Python's true division of two integers, then truncation, which double division reproduces). */
static void short_side_resize(int64_t S, int64_t H, int64_t W, int64_t *new_h, int64_t *new_w) {
    if (W <= H) {
        *new_w = S;
        *new_h = (int64_t)((double)(S * H) / (double)W);
    } else {
        *new_h = S;
        *new_w = (int64_t)((double)(S * W) / (double)H);
    }
}

static int64_t half_of_rounded_to_even(int64_t d) {
    const int64_t k = d / 2;
    if (d % 2 == 0) return k;
    return (k % 2 == 0) ? k : k + 1;
}

sd_tensor *sd_clip_vision_preprocess(sd_ctx *c, const sd_clip_vision_config *cfg, const sd_tensor *image) {
    if (c->status != SD_OK) return NULL;
    if (!image || image->dtype != SD_F32 || image->ndim != 4 || image->shape[1] != 3 || image->shape[0] < 1 ||
        image->shape[2] < 1 || image->shape[3] < 1) {
        char buf[96] = "(none)";
        if (image) sd_shape_str(image->ndim, image->shape, buf, sizeof buf);
        return sd_ctx_fail(c, SD_ERR_SHAPE, "CLIP vision preprocessing: image '%s' %s %s, expected an F32 "
                           "(B, 3, H, W) tensor in [-1, 1]", image ? image->name : "", buf,
                           image ? sd_dtype_name(image->dtype) : "");
    }
    const int64_t B = image->shape[0], H = image->shape[2], W = image->shape[3], S = cfg->image_size;
    const int64_t planes = B * 3;
    if (S < 1) return sd_ctx_fail(c, SD_ERR_ARG, "CLIP vision preprocessing: image_size %lld", (long long)S);

    int64_t new_h, new_w;
    short_side_resize(S, H, W, &new_h, &new_w);
    const int64_t top = half_of_rounded_to_even(new_h - S), left = half_of_rounded_to_even(new_w - S);

    /* Host scratch: the preprocessing runs on the CPU whatever the context's device. */
    const size_t in_count = (size_t)(planes * H * W), resized_count = (size_t)(planes * new_h * new_w);
    float *shifted = malloc(in_count * sizeof(float));
    float *resized = (new_h == H && new_w == W) ? shifted : malloc(resized_count * sizeof(float));
    float *out = malloc((size_t)(planes * S * S) * sizeof(float));
    if (!shifted || !resized || !out) {
        free(shifted);
        if (resized != shifted) free(resized);
        free(out);
        return sd_ctx_fail(c, SD_ERR_OOM, "CLIP vision preprocessing: out of host memory for a %lldx%lld image",
                           (long long)H, (long long)W);
    }
    sd_tensor host_in = sd_tensor_wrap(shifted, SD_F32, 4, image->shape);
    if (image->device == SD_DEVICE_CPU) {
        memcpy(shifted, image->data, in_count * sizeof(float));
    } else if (sd_download(c, image, &host_in) != SD_OK) {
        free(shifted);
        if (resized != shifted) free(resized);
        free(out);
        return sd_ctx_fail(c, SD_ERR_DEVICE, "CLIP vision preprocessing: cannot copy the image to the host");
    }

    /* (x + 1) / 2: the reference's Normalize(mean=-1, std=2), i.e. (x - (-1)) / 2. */
    for (size_t i = 0; i < in_count; i++) shifted[i] = (shifted[i] + 1.0f) / 2.0f;

    sd_status status = SD_OK;
    if (resized != shifted) status = sd_clip_vision_resize_bicubic(shifted, resized, planes, H, W, new_h, new_w);

    /* CenterCrop(S), then Normalize: (v - mean[c]) / std[c], rounded as torch does in float. */
    for (int64_t p = 0; p < planes && status == SD_OK; p++) {
        const float mean = (float)CLIP_MEAN[p % 3], std = (float)CLIP_STD[p % 3];
        for (int64_t y = 0; y < S; y++) {
            const float *src = resized + (p * new_h + top + y) * new_w + left;
            float *dst = out + (p * S + y) * S;
            for (int64_t x = 0; x < S; x++) dst[x] = (src[x] - mean) / std;
        }
    }
    free(shifted);
    if (resized != shifted) free(resized);
    if (status != SD_OK) {
        free(out);
        sd_ctx_check(c, status);
        return NULL;
    }
    const int64_t out_shape[4] = {B, 3, S, S};
    sd_tensor host_out = sd_tensor_wrap(out, SD_F32, 4, out_shape);
    sd_tensor *pixels = sd_upload(c, &host_out); /* [B, 3, S, S] on the context's device */
    free(out);
    return pixels;
}

/* ================================================================================================
 * Forward
 * ============================================================================================= */

sd_tensor *sd_clip_vision_forward(sd_ctx *c, const sd_clip_vision *m, sd_tensor *pixels) {
    if (c->status != SD_OK) return NULL;
    const sd_clip_vision_config *cfg = &m->cfg;
    const int64_t S = cfg->image_size, P = cfg->patch_size;
    if (!pixels || pixels->ndim != 4 || pixels->shape[1] != 3 || pixels->shape[2] != S || pixels->shape[3] != S) {
        char buf[96] = "(none)";
        if (pixels) sd_shape_str(pixels->ndim, pixels->shape, buf, sizeof buf);
        return sd_ctx_fail(c, SD_ERR_SHAPE, "CLIP vision tower: pixels %s, expected (B, 3, %lld, %lld) "
                           "(preprocess the image first)", buf, (long long)S, (long long)S);
    }
    /* Patch embedding (a stride-P conv without bias), [CLS; patches] + position embedding. */
    sd_tensor *h = sd_vit_embed(c, pixels, &m->patch_embedding, (int)P, m->class_embedding,
                                m->position_embedding); /* [B, N, D] */
    h = sd_layer_norm(c, h, &m->pre_layernorm, cfg->layer_norm_eps);

    const sd_unary_op act = cfg->quick_gelu ? SD_UNARY_QUICK_GELU : SD_UNARY_GELU;
    /* no mask: vision tokens attend to each other in both directions */
    for (int i = 0; i < cfg->num_hidden_layers; i++)
        h = sd_clip_layer_forward(c, &m->layers[i], h, cfg->num_attention_heads, 0, act, cfg->layer_norm_eps);
    /* ln_post on every token (clip_util.py), not just CLS as openai-CLIP's stock forward does. */
    return sd_layer_norm(c, h, &m->post_layernorm, cfg->layer_norm_eps); /* [B, N, D] */
}

sd_tensor *sd_clip_vision_encode(sd_ctx *c, const sd_clip_vision *m, const sd_tensor *image) {
    return sd_clip_vision_forward(c, m, sd_clip_vision_preprocess(c, &m->cfg, image));
}

sd_tensor *sd_clip_vision_image_features(sd_ctx *c, const sd_clip_vision *m, sd_tensor *pixels) {
    if (c->status != SD_OK) return NULL;
    if (!m->visual_projection.weight)
        return sd_ctx_fail(c, SD_ERR_MISSING, "CLIP image features: the model has no tensor '%s' (load a "
                           "full CLIPModel or a CLIPVisionModelWithProjection checkpoint)", PROJECTION_NAME);
    sd_tensor *tokens = sd_clip_vision_forward(c, m, pixels); /* [B, N, D], post_layernorm on every row */
    if (!tokens) return NULL;
    const int64_t B = tokens->shape[0], N = tokens->shape[1], D = tokens->shape[2];
    /* pooler_output = post_layernorm(CLS): row 0 of each image (views, no copy) */
    sd_tensor *rows = sd_reshape4(c, tokens, 2, B * N, D, 0, 0);
    sd_tensor *cls = NULL;
    for (int64_t b = 0; b < B; b++) {
        sd_tensor *row = sd_slice0(c, rows, b * N, 1); /* [1, D] */
        cls = b == 0 ? row : sd_concat0(c, cls, row);
    }
    return sd_linear(c, cls, &m->visual_projection); /* [B, projection_dim] */
}

/* ================================================================================================
 * CLIPProcessor preprocessing of an 8-bit image (transformers' PIL backend)
 * ============================================================================================= */

sd_tensor *sd_clip_vision_processor(sd_ctx *c, const sd_clip_vision_config *cfg, const sd_image *image,
                                    const char *what) {
    if (c->status != SD_OK) return NULL;
    if (!what) what = "image";
    if (!image || !image->data || image->width < 1 || image->height < 1)
        return sd_ctx_fail(c, SD_ERR_ARG, "CLIP image processor: %s is empty", what);
    const int64_t S = cfg->image_size, H = image->height, W = image->width;
    /* resize(shortest_edge=S): transformers' get_resize_output_image_size(default_to_square=False),
     * the same arithmetic as torchvision's Resize(S) */
    int64_t new_h, new_w;
    short_side_resize(S, H, W, &new_h, &new_w);
    sd_image resized = {0};
    sd_status st = sd_image_resize_bicubic(image, (int)new_w, (int)new_h, &resized); /* PIL BICUBIC */
    if (st != SD_OK) {
        sd_fail_context(st, "CLIP image processor, %s: ", what);
        sd_ctx_check(c, st);
        return NULL;
    }
    /* center_crop: transformers floors the offsets ((side - S) // 2), where torchvision's
     * CenterCrop rounds them; only the long side can be cropped here. */
    const int64_t top = (new_h - S) / 2, left = (new_w - S) / 2;
    float *out = malloc((size_t)(3 * S * S) * sizeof(float));
    if (!out) {
        sd_image_free(&resized);
        return sd_ctx_fail(c, SD_ERR_OOM, "CLIP image processor: out of host memory for %s", what);
    }
    /* rescale: uint8 -> float64 · (1/255) -> float32 (np_rescale upcasts, then casts down);
     * normalize: (x - mean) / std in float32, mean and std rounded to float32 as numpy does. */
    const double rescale_factor = 1.0 / 255.0;
    for (int ch = 0; ch < 3; ch++) {
        const float mean = (float)CLIP_MEAN[ch], std = (float)CLIP_STD[ch];
        for (int64_t y = 0; y < S; y++)
            for (int64_t x = 0; x < S; x++) {
                const uint8_t v = resized.data[((top + y) * new_w + left + x) * 3 + ch];
                const float scaled = (float)((double)v * rescale_factor);
                out[(ch * S + y) * S + x] = (scaled - mean) / std;
            }
    }
    sd_image_free(&resized);
    const int64_t shape[4] = {1, 3, S, S};
    sd_tensor host = sd_tensor_wrap(out, SD_F32, 4, shape);
    sd_tensor *pixels = sd_upload(c, &host); /* [1, 3, S, S] on the context's device */
    free(out);
    return pixels;
}

/* ================================================================================================
 * CPU bicubic resize, PyTorch's upsample_bicubic2d for float tensors (align_corners=False, no
 * antialias). TO MOVE into the backend op table (sd_backend) once that file is free to edit.
 *
 * PyTorch computes the taps per axis (HelperInterpCubic::compute_indices_weights) in float and
 * its x86-64 build fuses some of the multiply-adds: the source coordinate scale·(i + 0.5) - 0.5,
 * and the inner two steps of the outer-tap polynomial. Which ones was found by reading the weights
 * of impulse images back from torch 2.15's CPU F.interpolate; the explicit fmaf() calls below
 * reproduce them bit for bit. A non-fused version differs in the last bits of some weights, which
 * moves outputs by up to ~1e-6 on noisy images (the coordinate feeds a steep polynomial). The
 * remaining steps must NOT be fused: the Makefile's -std=c11 keeps the compiler from contracting
 * them (GCC's ISO modes default to -ffp-contract=off).
 * ============================================================================================= */

typedef struct cubic_taps {
    int64_t index[4]; /* source indices i0-1 .. i0+2, each clamped into [0, in - 1] */
    float weight[4];
} cubic_taps;

/* Keys' cubic convolution kernel with A = -0.75 (PyTorch's and OpenCV's choice):
 *   |x| <= 1:     ((A + 2)|x| - (A + 3))·x² + 1
 *   1 < |x| < 2:  ((A|x| - 5A)|x| + 8A)|x| - 4A */
static float cubic_inner(float x) {
    const float p = fmaf(1.25f, x, -2.25f); /* (A + 2)x - (A + 3) */
    return p * x * x + 1.0f;
}

static float cubic_outer(float x) {
    const float p = fmaf(fmaf(-0.75f, x, 3.75f), x, -6.0f); /* (Ax - 5A)x + 8A, fused twice */
    return p * x + 3.0f;                                    /* ... x - 4A, not fused */
}

static void cubic_axis_taps(int64_t in, int64_t out, cubic_taps *taps) {
    const float scale = (float)in / (float)out;
    for (int64_t i = 0; i < out; i++) {
        /* align_corners=False source coordinate; cubic mode does not clamp it at 0. */
        const float src = fmaf(scale, (float)i + 0.5f, -0.5f);
        int64_t i0 = (int64_t)floorf(src);
        if (i0 > in - 1) i0 = in - 1;
        float t = src - (float)i0;
        t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
        const float u = 1.0f - t;
        taps[i].weight[0] = cubic_outer(t + 1.0f);
        taps[i].weight[1] = cubic_inner(t);
        taps[i].weight[2] = cubic_inner(u);
        taps[i].weight[3] = cubic_outer(u + 1.0f);
        for (int j = 0; j < 4; j++) {
            int64_t k = i0 - 1 + j;
            taps[i].index[j] = k < 0 ? 0 : (k > in - 1 ? in - 1 : k); /* border: repeat the edge */
        }
    }
}

sd_status sd_clip_vision_resize_bicubic(const float *x, float *y, int64_t N, int64_t H, int64_t W,
                                        int64_t Ho, int64_t Wo) {
    if (N < 0 || H < 1 || W < 1 || Ho < 1 || Wo < 1)
        return sd_fail(SD_ERR_ARG, "bicubic resize: %lld planes of %lldx%lld to %lldx%lld", (long long)N,
                       (long long)H, (long long)W, (long long)Ho, (long long)Wo);
    cubic_taps *rows = malloc((size_t)Ho * sizeof *rows), *cols = malloc((size_t)Wo * sizeof *cols);
    if (!rows || !cols) {
        free(rows);
        free(cols);
        return sd_fail(SD_ERR_OOM, "bicubic resize: out of host memory");
    }
    cubic_axis_taps(H, Ho, rows);
    cubic_axis_taps(W, Wo, cols);
#pragma omp parallel for schedule(static)
    for (int64_t plane_row = 0; plane_row < N * Ho; plane_row++) {
        const int64_t n = plane_row / Ho, oy = plane_row % Ho;
        const float *plane = x + n * H * W;
        const cubic_taps *ry = &rows[oy];
        float *dst = y + plane_row * Wo;
        for (int64_t ox = 0; ox < Wo; ox++) {
            const cubic_taps *cx = &cols[ox];
            /* Along W within each of the four source rows, then along H, accumulating in this
             * order as PyTorch's kernel does (float sums are order-sensitive). */
            float acc = 0.0f;
            for (int k = 0; k < 4; k++) {
                const float *src = plane + ry->index[k] * W;
                float along_w = src[cx->index[0]] * cx->weight[0];
                along_w += src[cx->index[1]] * cx->weight[1];
                along_w += src[cx->index[2]] * cx->weight[2];
                along_w += src[cx->index[3]] * cx->weight[3];
                acc = k == 0 ? along_w * ry->weight[0] : acc + along_w * ry->weight[k];
            }
            dst[ox] = acc;
        }
    }
    free(rows);
    free(cols);
    return SD_OK;
}
