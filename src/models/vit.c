/* vit.c: transformers' ViTModel (the Hugging Face layout of facebook/dino-vitb8) and the
 * Structure-dist metric built on its keys (stylediffusion.md §6.2; Splice's
 * LossG.calculate_global_ssim_loss, models/extractor.py::VitExtractor, util/util.py::attn_cosine_sim).
 *
 * The transformer block is the CLIP one (pre-LN, multi-head attention, MLP): the ViT names bind
 * into sd_clip_layer (sd_bind_vit_layer) and the embedding is the shared sd_vit_embed, so only
 * the config, the names, the position-table interpolation and the metric itself live here.
 *
 * Differences from the original DINO repo (torch.hub facebookresearch/dino, what Splice loads),
 * which an HF-layout user does not get and which are therefore not reproduced:
 *   - LayerNorm eps: DINO's VisionTransformer uses 1e-6; the HF config of facebook/dino-vitb8 says
 *     1e-12 (read from config.json here, so a config with 1e-6 reproduces DINO's);
 *   - interpolate_pos_encoding: DINO calls F.interpolate with scale_factor = ((h0 + 0.1) / √N,
 *     (w0 + 0.1) / √N), so PyTorch maps output to input coordinates with 1 / scale_factor, not
 *     in / out as transformers' size=(h0, w0) does: the interpolated table differs slightly.
 *     Both keep the table unchanged for the trained square size. */
#include "sd/eval_models.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "sd/autograd.h"
#include "sd/json_util.h"

#define NAME_CAP 256

/* torchvision's ImageNet normalisation, as torch.as_tensor(..., dtype=float32) rounds it. */
static const double IMAGENET_MEAN[3] = {0.485, 0.456, 0.406};
static const double IMAGENET_STD[3] = {0.229, 0.224, 0.225};

/* Splice's global transform: Resize(dino_global_patch_size = 224, max_size=480). */
enum { STRUCTURE_SHORT_SIDE = 224, STRUCTURE_MAX_SIDE = 480 };

/* ================================================================================================
 * Configuration
 * ============================================================================================= */

/* An sd_config_parse_fn: `out` is the sd_vit_config to fill. */
static sd_status parse_vit_config(const cJSON *root, const char *path, void *out) {
    sd_vit_config *c = out;
    memset(c, 0, sizeof *c);
    sd_config_keys keys = {root, NULL, "", "", path};
    const char *model_type = "vit", *where = "";
    SD_TRY(sd_config_key_string(&keys, "model_type", "vit", &model_type, &where));
    if (strcmp(model_type, "vit") != 0)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"model_type\" is \"%.64s\"; expected \"vit\" (a transformers "
                       "ViTModel such as facebook/dino-vitb8)", path, model_type);
    /* Defaults are ViTConfig's (ViT-B/16). */
    sd_vit_geometry g;
    SD_TRY(sd_config_vit_geometry(&keys, 16, 1e-12f, &g));
    SD_VIT_GEOMETRY_ASSIGN(c, g);
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "qkv_bias");
    if (bias && !cJSON_IsBool(bias))
        return sd_fail(SD_ERR_FORMAT, "%s: key \"qkv_bias\": expected true or false, got %s", path, sd_json_kind(bias));
    c->qkv_bias = bias ? cJSON_IsTrue(bias) : 1;
    const char *act = "gelu";
    SD_TRY(sd_config_key_string(&keys, "hidden_act", "gelu", &act, &where));
    if (strcmp(act, "gelu") != 0)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: key \"hidden_act\" is \"%.64s\"; stylediff's ViT supports \"gelu\" "
                       "(exact erf GELU)", path, act);
    return SD_OK;
}

sd_status sd_vit_config_parse(const char *json, const char *path, sd_vit_config *out) {
    return sd_config_parse_text(json, path, parse_vit_config, out, sizeof *out);
}

sd_status sd_vit_config_load(const char *path, sd_vit_config *out) {
    return sd_config_load_file(path, parse_vit_config, out, sizeof *out);
}

/* ================================================================================================
 * Weights
 * ============================================================================================= */

static sd_status bind_all(sd_vit *m, sd_weights *w) {
    const sd_vit_config *cfg = &m->cfg;
    const int64_t D = cfg->hidden_size, F = cfg->intermediate_size, P = cfg->patch_size;
    const int64_t grid = cfg->image_size / cfg->patch_size;
    const int64_t cls_shape[3] = {1, 1, D}, pos_shape[3] = {1, grid * grid + 1, D};
    SD_TRY(sd_weights_get(w, "embeddings.cls_token", 3, cls_shape, &m->cls_token));
    sd_status s = sd_weights_get(w, "embeddings.position_embeddings", 3, pos_shape, &m->position_embeddings);
    if (s == SD_ERR_SHAPE)
        return sd_fail_context(s, "config image_size %d / patch_size %d gives %lld positions: ", cfg->image_size,
                               cfg->patch_size, (long long)(grid * grid + 1));
    SD_TRY(s);
    SD_TRY(sd_bind_conv(w, "embeddings.patch_embeddings.projection", D, 3, (int)P, &m->patch_embedding));
    /* The hub's layout ("encoder.layer.N.attention.attention.query") or a transformers >= 5 save
     * ("layers.N.attention.q_proj"), told apart by the first layer's LayerNorm. */
    const int v5_names = !sd_weights_find(w, "encoder.layer.0.layernorm_before.weight") &&
                         sd_weights_find(w, "layers.0.layernorm_before.weight");
    for (int i = 0; i < cfg->num_hidden_layers; i++) {
        char prefix[NAME_CAP];
        snprintf(prefix, sizeof prefix, v5_names ? "layers.%d" : "encoder.layer.%d", i);
        SD_TRY(sd_bind_vit_layer(w, prefix, D, F, cfg->qkv_bias, v5_names, &m->layers[i]));
    }
    SD_TRY(sd_bind_norm(w, "layernorm", D, &m->layernorm));
    /* Heads and buffers a ViT checkpoint may carry that the keys never read: accept them. */
    const int64_t any[SD_MAX_DIMS] = {-1, -1, -1, -1, -1, -1};
    for (int i = 0; i < sd_weights_count(w); i++) {
        const char *name = sd_weights_name_at(w, i);
        if (strncmp(name, "pooler.", 7) == 0 || strncmp(name, "classifier.", 11) == 0 ||
            strcmp(name, "embeddings.mask_token") == 0) {
            sd_tensor *t = sd_weights_tensor_at(w, i);
            SD_TRY(sd_weights_get(w, name, t->ndim, any, &t));
        }
    }
    return SD_OK;
}

sd_status sd_vit_bind(sd_vit *m, const sd_vit_config *cfg, sd_weights *w) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (cfg->num_hidden_layers < 1 || cfg->num_attention_heads < 1 || cfg->patch_size < 1 ||
        cfg->hidden_size % cfg->num_attention_heads || cfg->image_size < cfg->patch_size || cfg->num_channels != 3)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: ViT with %d layers, %d heads, width %d, %d channels, image %d, "
                       "patch %d", sd_weights_source(w), cfg->num_hidden_layers, cfg->num_attention_heads,
                       cfg->hidden_size, cfg->num_channels, cfg->image_size, cfg->patch_size);
    m->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return sd_fail(SD_ERR_OOM, "out of host memory binding the ViT");
    sd_status status = bind_all(m, w);
    if (status != SD_OK) {
        free(m->layers);
        m->layers = NULL;
        return status;
    }
    const char *unused_name = NULL;
    const int unused = sd_weights_unused(w, &unused_name);
    if (unused > 0)
        sd_warn("%s: %d ViT tensors were not used (first: '%s')", sd_weights_source(w), unused, unused_name);
    return SD_OK;
}

/* Whether any tensor name of the file starts with "vit." (a ViT under a task head). */
static sd_status has_vit_prefix(const char *path, int *prefixed) {
    sd_safetensors st;
    SD_TRY(sd_safetensors_open(path, &st));
    *prefixed = 0;
    for (int i = 0; i < st.n_entries; i++)
        if (strncmp(st.entries[i].name, "vit.", 4) == 0) *prefixed = 1;
    sd_safetensors_close(&st);
    return SD_OK;
}

sd_status sd_vit_load(const char *dir, sd_vit *m) {
    memset(m, 0, sizeof *m);
    char config_path[1024], weights_path[1024], other[1024];
    if (!sd_dir_exists(dir))
        return sd_fail(SD_ERR_MISSING, "%s: not a folder (a ViT model is a folder with config.json and "
                       "model.safetensors)", dir);
    sd_path_join(config_path, sizeof config_path, dir, "config.json");
    if (!sd_file_exists(config_path))
        return sd_fail(SD_ERR_MISSING, "%s: missing (a ViT model folder holds config.json and model.safetensors)",
                       config_path);
    sd_vit_config cfg;
    SD_TRY(sd_vit_config_load(config_path, &cfg));
    sd_path_join(weights_path, sizeof weights_path, dir, "model.safetensors");
    if (!sd_file_exists(weights_path)) {
        if (sd_file_exists(sd_path_join(other, sizeof other, dir, "pytorch_model.bin")))
            return sd_fail(SD_ERR_UNSUPPORTED, "%s: only pickle weights (pytorch_model.bin); stylediff reads "
                           "safetensors: convert them to %s", other, weights_path);
        return sd_fail(SD_ERR_MISSING, "%s: missing (the ViT weights)", weights_path);
    }
    int prefixed = 0;
    SD_TRY(has_vit_prefix(weights_path, &prefixed));
    sd_weights *w = sd_weights_new(weights_path);
    if (!w) return sd_fail(SD_ERR_OOM, "out of host memory opening %s", weights_path);
    /* With a "vit." prefix, the head's own tensors (classifier.*) are left in the file. */
    sd_status status = sd_weights_load_file(w, weights_path, prefixed ? "vit." : "");
    if (status == SD_OK) {
        status = sd_vit_bind(m, &cfg, w);
        if (status != SD_OK && prefixed) sd_fail_context(status, "(names under the file's 'vit.' prefix) ");
    }
    if (status != SD_OK) {
        sd_weights_free(w);
        return status;
    }
    m->owned = w;
    return SD_OK;
}

void sd_vit_release(sd_vit *m) {
    free(m->layers);
    m->layers = NULL;
    sd_weights_free(m->owned);
    m->owned = NULL;
}

/* ================================================================================================
 * Forward to the keys
 * ============================================================================================= */

sd_tensor *sd_vit_position_table(sd_ctx *c, const sd_vit *m, int64_t pixel_h, int64_t pixel_w) {
    if (c->status != SD_OK) return NULL;
    const int64_t P = m->cfg.patch_size, D = m->cfg.hidden_size;
    const int64_t trained = m->cfg.image_size / P, gh = pixel_h / P, gw = pixel_w / P;
    sd_tensor *table = m->position_embeddings; /* (1, 1 + trained², D) */
    if (gh * gw == trained * trained && pixel_h == pixel_w)
        return sd_reshape4(c, table, 2, 1 + trained * trained, D, 0, 0);

    /* The trained grid as D planes of trained x trained, resized to gh x gw with PyTorch's bicubic
     * (align_corners=False, no antialias); computed on the host once per image size, like any
     * other weight preparation. */
    sd_tensor *host = table->device == SD_DEVICE_CPU ? NULL : sd_download_new(c, table);
    const float *src = host ? sd_f32(host) : sd_f32(table);
    const int64_t n_in = trained * trained, n_out = gh * gw;
    float *planes = malloc((size_t)(D * n_in) * sizeof(float));
    float *resized = malloc((size_t)(D * n_out) * sizeof(float));
    float *rows = malloc((size_t)((1 + n_out) * D) * sizeof(float));
    sd_status st = (!planes || !resized || !rows || (table->device != SD_DEVICE_CPU && !host))
                       ? sd_fail(SD_ERR_OOM, "ViT position interpolation: out of host memory")
                       : SD_OK;
    if (st == SD_OK) {
        for (int64_t p = 0; p < n_in; p++) /* (grid², D) -> (D, grid²), skipping the class row */
            for (int64_t d = 0; d < D; d++) planes[d * n_in + p] = src[(1 + p) * D + d];
        st = sd_clip_vision_resize_bicubic(planes, resized, D, trained, trained, gh, gw);
    }
    if (st == SD_OK) {
        memcpy(rows, src, (size_t)D * sizeof(float)); /* the class position, unchanged */
        for (int64_t p = 0; p < n_out; p++)
            for (int64_t d = 0; d < D; d++) rows[(1 + p) * D + d] = resized[d * n_out + p];
    }
    sd_tensor *out = NULL;
    if (st == SD_OK) {
        const int64_t shape[2] = {1 + n_out, D};
        sd_tensor wrapped = sd_tensor_wrap(rows, SD_F32, 2, shape);
        out = sd_upload(c, &wrapped); /* [1 + gh·gw, D] */
    } else {
        sd_ctx_check(c, st);
    }
    free(planes);
    free(resized);
    free(rows);
    sd_tensor_free(host);
    return out;
}

sd_tensor *sd_vit_keys(sd_ctx *c, const sd_vit *m, sd_tensor *pixels, int layer) {
    if (c->status != SD_OK) return NULL;
    const sd_vit_config *cfg = &m->cfg;
    const int64_t P = cfg->patch_size;
    if (layer < 0) layer = cfg->num_hidden_layers - 1;
    if (layer >= cfg->num_hidden_layers)
        return sd_ctx_fail(c, SD_ERR_ARG, "ViT keys: layer %d of a %d-layer model", layer, cfg->num_hidden_layers);
    if (!pixels || pixels->ndim != 4 || pixels->shape[1] != 3 || pixels->shape[2] < P || pixels->shape[3] < P) {
        char buf[96] = "(none)";
        if (pixels) sd_shape_str(pixels->ndim, pixels->shape, buf, sizeof buf);
        return sd_ctx_fail(c, SD_ERR_SHAPE, "ViT keys: pixels %s, expected (B, 3, H, W) with H, W >= %lld", buf,
                           (long long)P);
    }
    sd_tensor *pos = sd_vit_position_table(c, m, pixels->shape[2], pixels->shape[3]); /* [T, D] */
    sd_tensor *h = sd_vit_embed(c, pixels, &m->patch_embedding, (int)P, m->cls_token, pos); /* [B, T, D] */
    for (int i = 0; i < layer; i++)
        h = sd_clip_layer_forward(c, &m->layers[i], h, cfg->num_attention_heads, 0, SD_UNARY_GELU,
                                  cfg->layer_norm_eps);
    /* The key projection of the block's own input LayerNorm: what Splice's hook on blocks[11].attn.qkv
     * reads as the k third of qkv (heads side by side, channel = head·head_dim + d). */
    sd_tensor *n = sd_layer_norm(c, h, &m->layers[layer].layer_norm1, cfg->layer_norm_eps);
    return sd_linear(c, n, &m->layers[layer].k_proj); /* [B, T, D] */
}

/* ================================================================================================
 * Structure-dist
 * ============================================================================================= */

sd_tensor *sd_structure_dist_preprocess(sd_ctx *c, const sd_image *image, const char *what) {
    if (c->status != SD_OK) return NULL;
    if (!what) what = "image";
    if (!image || !image->data || image->width < 1 || image->height < 1)
        return sd_ctx_fail(c, SD_ERR_ARG, "Structure-dist preprocessing: %s is empty", what);
    /* torchvision's _compute_resized_output_size(size=[224], max_size=480) */
    const int64_t H = image->height, W = image->width;
    const int64_t shorter = W <= H ? W : H, longer = W <= H ? H : W;
    int64_t new_short = STRUCTURE_SHORT_SIDE, new_long = (int64_t)((double)(STRUCTURE_SHORT_SIDE * longer) / (double)shorter);
    if (new_long > STRUCTURE_MAX_SIDE) {
        new_short = (int64_t)((double)(STRUCTURE_MAX_SIDE * new_short) / (double)new_long);
        new_long = STRUCTURE_MAX_SIDE;
    }
    const int64_t new_w = W <= H ? new_short : new_long, new_h = W <= H ? new_long : new_short;
    if (new_short < 1)
        return sd_ctx_fail(c, SD_ERR_ARG, "Structure-dist preprocessing: %s (%lldx%lld) is too elongated to resize",
                           what, (long long)W, (long long)H);
    /* torchvision returns the image itself when the size is unchanged; PIL's resize would copy it. */
    sd_image resized = {0};
    sd_status st = sd_image_resize_bilinear(image, (int)new_w, (int)new_h, &resized); /* PIL BILINEAR */
    if (st != SD_OK) {
        sd_fail_context(st, "Structure-dist preprocessing, %s: ", what);
        sd_ctx_check(c, st);
        return NULL;
    }
    float *out = malloc((size_t)(3 * new_h * new_w) * sizeof(float));
    if (!out) {
        sd_image_free(&resized);
        return sd_ctx_fail(c, SD_ERR_OOM, "Structure-dist preprocessing: out of host memory for %s", what);
    }
    /* ToTensor: float32(v) / 255; Normalize: (x - mean) / std in float32 */
    for (int ch = 0; ch < 3; ch++) {
        const float mean = (float)IMAGENET_MEAN[ch], std = (float)IMAGENET_STD[ch];
        for (int64_t i = 0; i < new_h * new_w; i++)
            out[ch * new_h * new_w + i] = ((float)resized.data[i * 3 + ch] / 255.0f - mean) / std;
    }
    sd_image_free(&resized);
    const int64_t shape[4] = {1, 3, new_h, new_w};
    sd_tensor host = sd_tensor_wrap(out, SD_F32, 4, shape);
    sd_tensor *pixels = sd_upload(c, &host); /* [1, 3, h, w] on the context's device */
    free(out);
    return pixels;
}

sd_tensor *sd_key_self_similarity(sd_ctx *c, sd_tensor *keys) {
    if (c->status != SD_OK) return NULL;
    if (!keys || !(keys->ndim == 2 || (keys->ndim == 3 && keys->shape[0] == 1))) {
        char buf[96] = "(none)";
        if (keys) sd_shape_str(keys->ndim, keys->shape, buf, sizeof buf);
        return sd_ctx_fail(c, SD_ERR_SHAPE, "key self-similarity: keys %s, expected (T, D) or (1, T, D)", buf);
    }
    const int64_t T = keys->shape[keys->ndim - 2], D = keys->shape[keys->ndim - 1];
    sd_tensor *k = sd_reshape4(c, keys, 2, T, D, 0, 0);
    /* Gram matrix k kᵀ through the op table: a linear layer whose weight is k itself. */
    const sd_linear_w as_weight = {k, NULL, 0};
    sd_tensor *gram = sd_linear(c, k, &as_weight); /* [T, T] */

    /* 1 / max(|k_i| |k_j|, 1e-8) = min(r_i r_j, 1e8) with r = 1 / |k|: the T norms are computed on
     * the host (in double, then rounded as torch's float32 norm), the outer product and the clamp
     * on the device. A zero row gets a huge r, which the clamp turns into 1e8 as Splice's clamp does. */
    sd_tensor *host = sd_download_new(c, k);
    float *recip = malloc((size_t)T * sizeof(float));
    if (!host || !recip) {
        sd_tensor_free(host);
        free(recip);
        return sd_ctx_fail(c, SD_ERR_OOM, "key self-similarity: out of host memory for %lld keys", (long long)T);
    }
    for (int64_t t = 0; t < T; t++) {
        double sq = 0;
        for (int64_t d = 0; d < D; d++) sq += (double)sd_f32(host)[t * D + d] * sd_f32(host)[t * D + d];
        const float norm = (float)sqrt(sq);
        recip[t] = norm > 0 ? 1.0f / norm : 1e30f;
    }
    const int64_t r_shape[2] = {T, 1};
    sd_tensor wrapped = sd_tensor_wrap(recip, SD_F32, 2, r_shape);
    sd_tensor *r = sd_upload(c, &wrapped); /* [T, 1] */
    sd_tensor_free(host);
    free(recip);
    const sd_linear_w r_weight = {r, NULL, 0};
    sd_tensor *inv_factor = sd_clamp(c, sd_linear(c, r, &r_weight), 0.0f, 1e8f); /* [T, T] */
    return sd_mul(c, gram, inv_factor);                                          /* [T, T] */
}

/* S of one image: preprocess, last-layer keys, self-similarity. */
static sd_tensor *self_similarity_of(sd_ctx *c, const sd_vit *m, const sd_image *image, const char *what) {
    sd_tensor *pixels = sd_structure_dist_preprocess(c, image, what);
    return sd_key_self_similarity(c, sd_vit_keys(c, m, pixels, -1));
}

sd_status sd_structure_dist(sd_ctx *c, const sd_vit *m, const sd_image *source, const sd_image *edited,
                            double *dist) {
    if (c->status != SD_OK) return c->status;
    sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_tensor *s_src = self_similarity_of(c, m, source, "the source image");
    sd_tensor *s_edit = self_similarity_of(c, m, edited, "the edited image");
    sd_status st = c->status;
    if (st == SD_OK && sd_numel(s_src) != sd_numel(s_edit))
        st = sd_fail(SD_ERR_ARG, "Structure-dist: the source image (%dx%d) and the edited image (%dx%d) give %lld and "
                     "%lld tokens; resize them to the same size first", source->width, source->height,
                     edited->width, edited->height, (long long)s_src->shape[0], (long long)s_edit->shape[0]);
    if (st == SD_OK) {
        sd_tensor *mse = sd_mse(c, s_edit, s_src); /* one value, F.mse_loss(S_edit, S_src) */
        float value = 0;
        const int64_t one[1] = {1};
        sd_tensor host = sd_tensor_wrap(&value, SD_F32, 1, one);
        st = c->status != SD_OK ? c->status : sd_download(c, mse, &host);
        if (st == SD_OK) *dist = value;
    }
    sd_arena_reset(c->arena, mark);
    return st;
}

sd_status sd_structure_dist_files(sd_ctx *c, const sd_vit *m, const char *source_path, const char *edited_path,
                                  double *dist) {
    sd_image source = {0}, edited = {0};
    SD_TRY(sd_image_load(source_path, &source)); /* names the path */
    sd_status st = sd_image_load(edited_path, &edited);
    if (st == SD_OK) st = sd_structure_dist(c, m, &source, &edited, dist);
    sd_image_free(&source);
    sd_image_free(&edited);
    return st;
}
