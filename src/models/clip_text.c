/* clip_text.c: CLIPTextModel (transformers) -> last_hidden_state after the final LayerNorm
 * (stylediffusion.md §1.4). Pre-LN transformer with a causal mask and no padding mask, so padded
 * positions carry real features, as the reference pipeline feeds them to the UNet. Also
 * CLIPModel.get_text_features (pooled EOS row, text_projection) for CLIPScore (§6.3). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"

#define NAME_CAP 256
#define TEXT_PREFIX "text_model."
#define TEXT_PROJECTION "text_projection.weight"

sd_status sd_clip_text_bind(sd_clip_text *m, const sd_clip_text_config *cfg, sd_weights *w) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const int64_t D = cfg->hidden_size, F = cfg->intermediate_size;
    if (cfg->num_hidden_layers < 1 || cfg->num_attention_heads < 1 || D % cfg->num_attention_heads)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: text encoder with %d layers, %d heads and width %lld",
                       sd_weights_source(w), cfg->num_hidden_layers, cfg->num_attention_heads,
                       (long long)D);
    const int64_t tok_shape[2] = {cfg->vocab_size, D}, pos_shape[2] = {cfg->max_position_embeddings, D};
    SD_TRY(sd_weights_get(w, "text_model.embeddings.token_embedding.weight", 2, tok_shape,
                          &m->token_embedding));
    SD_TRY(sd_weights_get(w, "text_model.embeddings.position_embedding.weight", 2, pos_shape,
                          &m->position_embedding));
    m->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return sd_fail(SD_ERR_OOM, "out of host memory binding the text encoder");
    for (int i = 0; i < cfg->num_hidden_layers; i++) {
        char prefix[NAME_CAP];
        snprintf(prefix, sizeof prefix, "text_model.encoder.layers.%d", i);
        SD_TRY(sd_bind_clip_layer(w, prefix, D, F, &m->layers[i]));
    }
    SD_TRY(sd_bind_norm(w, "text_model.final_layer_norm", D, &m->final_layer_norm));
    if (sd_weights_find(w, TEXT_PROJECTION)) {
        /* Its width is the CLIPModel's top-level projection_dim, not a text-config key. */
        const int64_t proj_shape[2] = {-1, D};
        SD_TRY(sd_weights_get(w, TEXT_PROJECTION, 2, proj_shape, &m->text_projection.weight));
        m->text_projection.bias = NULL; /* nn.Linear(..., bias=False) */
    }
    /* position_ids is a buffer some checkpoints carry (always arange): accept it, never use it. */
    sd_tensor *pos_ids = sd_weights_find(w, "text_model.embeddings.position_ids");
    if (pos_ids) {
        const int64_t any[SD_MAX_DIMS] = {-1, -1, -1, -1, -1, -1};
        SD_TRY(sd_weights_get(w, "text_model.embeddings.position_ids", pos_ids->ndim, any, &pos_ids));
    }
    const char *unused_name = NULL;
    int unused = sd_weights_unused(w, &unused_name);
    if (unused > 0)
        sd_warn("%s: %d text-encoder tensors were not used (first: '%s')", sd_weights_source(w),
                unused, unused_name);
    return SD_OK;
}

void sd_clip_text_release(sd_clip_text *m) {
    free(m->layers);
    m->layers = NULL;
}

sd_tensor *sd_clip_text_forward(sd_ctx *c, const sd_clip_text *m, const sd_tensor *ids) {
    if (c->status != SD_OK) return NULL;
    const sd_clip_text_config *cfg = &m->cfg;
    if (!ids || ids->dtype != SD_I32 || ids->ndim != 2 || ids->shape[1] > cfg->max_position_embeddings)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "text encoder: ids must be I32 (B, S) with S <= %d",
                           cfg->max_position_embeddings);
    const int64_t B = ids->shape[0], S = ids->shape[1];
    /* position ids 0..S-1 for every row, in host memory like every id tensor */
    int32_t *pos = malloc((size_t)(B * S) * sizeof(int32_t));
    if (!pos) return sd_ctx_fail(c, SD_ERR_OOM, "out of host memory for position ids");
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < S; s++) pos[b * S + s] = (int32_t)s;
    const int64_t pos_shape[2] = {B, S};
    sd_tensor pos_ids = sd_tensor_wrap(pos, SD_I32, 2, pos_shape);

    sd_tensor *h = sd_add(c, sd_embedding(c, ids, m->token_embedding),
                          sd_embedding(c, &pos_ids, m->position_embedding));
    free(pos);
    const sd_unary_op act = cfg->quick_gelu ? SD_UNARY_QUICK_GELU : SD_UNARY_GELU;
    for (int i = 0; i < cfg->num_hidden_layers; i++)
        h = sd_clip_layer_forward(c, &m->layers[i], h, cfg->num_attention_heads, 1, act, cfg->layer_norm_eps);
    return sd_layer_norm(c, h, &m->final_layer_norm, cfg->layer_norm_eps);
}

sd_status sd_clip_text_weights_load(sd_weights *w, const char *path) {
    if (!w) return sd_fail(SD_ERR_ARG, "%s: sd_clip_text_weights_load: no weight store", path);
    sd_safetensors st;
    SD_TRY(sd_safetensors_open(path, &st));
    sd_status status = SD_OK;
    int loaded = 0;
    for (int i = 0; i < st.n_entries && status == SD_OK; i++) {
        const sd_st_entry *e = &st.entries[i];
        if (strncmp(e->name, TEXT_PREFIX, strlen(TEXT_PREFIX)) != 0 && strcmp(e->name, TEXT_PROJECTION) != 0)
            continue;
        sd_tensor *t;
        status = sd_safetensors_load_f32(&st, e, &t);
        if (status != SD_OK) break;
        sd_tensor_set_name(t, e->name);
        status = sd_weights_add(w, e->name, t);
        loaded += strcmp(e->name, TEXT_PROJECTION) != 0;
    }
    sd_safetensors_close(&st);
    if (status == SD_OK && loaded == 0)
        status = sd_fail(SD_ERR_MISSING, "%s: no CLIP text tensors (expected 'text_model.*' names, e.g. "
                         "'text_model.embeddings.token_embedding.weight')", path);
    return status;
}

sd_tensor *sd_clip_text_pooled(sd_ctx *c, const sd_clip_text *m, const sd_tensor *ids, sd_tensor *hidden) {
    if (c->status != SD_OK) return NULL;
    if (!ids || ids->dtype != SD_I32 || ids->ndim != 2 || ids->device != SD_DEVICE_CPU || !hidden ||
        hidden->ndim != 3 || hidden->shape[0] != ids->shape[0] || hidden->shape[1] != ids->shape[1])
        return sd_ctx_fail(c, SD_ERR_SHAPE, "text pooling: ids must be host I32 (B, S) matching the hidden "
                           "states (B, S, hidden)");
    const int64_t B = ids->shape[0], S = ids->shape[1], D = hidden->shape[2];
    const int32_t *id = (const int32_t *)ids->data;
    sd_tensor *rows = sd_reshape4(c, hidden, 2, B * S, D, 0, 0);
    sd_tensor *pooled = NULL;
    for (int64_t b = 0; b < B; b++) {
        const int32_t *row = id + b * S;
        int64_t pos = 0;
        if (m->cfg.eos_token_id == 2) {
            /* torch.argmax returns the first maximal index */
            for (int64_t s = 1; s < S; s++)
                if (row[s] > row[pos]) pos = s;
        } else {
            /* (ids == eos).int().argmax(): the first match, 0 when nothing matches */
            for (int64_t s = 0; s < S; s++)
                if (row[s] == m->cfg.eos_token_id) {
                    pos = s;
                    break;
                }
        }
        sd_tensor *r = sd_slice0(c, rows, b * S + pos, 1); /* [1, D], a view */
        pooled = b == 0 ? r : sd_concat0(c, pooled, r);
    }
    return pooled; /* [B, D] */
}

sd_tensor *sd_clip_text_features(sd_ctx *c, const sd_clip_text *m, const sd_tensor *ids) {
    if (c->status != SD_OK) return NULL;
    if (!m->text_projection.weight)
        return sd_ctx_fail(c, SD_ERR_MISSING, "CLIP text features: the model has no tensor '%s' (load a full "
                           "CLIPModel or a CLIPTextModelWithProjection checkpoint)", TEXT_PROJECTION);
    sd_tensor *pooled = sd_clip_text_pooled(c, m, ids, sd_clip_text_forward(c, m, ids));
    return sd_linear(c, pooled, &m->text_projection); /* [B, projection_dim] */
}
