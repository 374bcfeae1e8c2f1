/* clip_text.c: CLIPTextModel (transformers) -> last_hidden_state after the final LayerNorm
 * (stylediffusion.md §1.4). Pre-LN transformer with a causal mask and no padding mask, so padded
 * positions carry real features, as the reference pipeline feeds them to the UNet. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"

#define NAME_CAP 256

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
