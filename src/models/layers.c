/* layers.c: ResnetBlock2D, Attention and Transformer2DModel (diffusers semantics, SD v1). */
#include "layers.h"

#include <stdio.h>
#include <string.h>

#define NAME_CAP 256

static const char *join(char *buf, const char *prefix, const char *leaf) {
    snprintf(buf, NAME_CAP, "%s.%s", prefix, leaf);
    return buf;
}

sd_status sd_bind_linear(sd_weights *w, const char *prefix, int64_t out, int64_t in, int bias,
                         sd_linear_w *l) {
    char name[NAME_CAP];
    const int64_t ws[2] = {out, in}, bs[1] = {out};
    memset(l, 0, sizeof *l);
    SD_TRY(sd_weights_get(w, join(name, prefix, "weight"), 2, ws, &l->weight));
    if (bias) SD_TRY(sd_weights_get(w, join(name, prefix, "bias"), 1, bs, &l->bias));
    l->frozen = 1;
    return SD_OK;
}

sd_status sd_bind_linear_or_1x1(sd_weights *w, const char *prefix, int64_t out, int64_t in,
                                sd_linear_w *l) {
    char name[NAME_CAP];
    const int64_t bs[1] = {out};
    memset(l, 0, sizeof *l);
    sd_tensor *t = sd_weights_find(w, join(name, prefix, "weight"));
    if (t && t->ndim == 4) {
        const int64_t ws[4] = {out, in, 1, 1};
        SD_TRY(sd_weights_get(w, name, 4, ws, &l->weight));
    } else {
        const int64_t ws[2] = {out, in};
        SD_TRY(sd_weights_get(w, name, 2, ws, &l->weight));
    }
    l->frozen = 1;
    return sd_weights_get(w, join(name, prefix, "bias"), 1, bs, &l->bias);
}

sd_status sd_bind_conv(sd_weights *w, const char *prefix, int64_t out, int64_t in, int k,
                       sd_conv_w *cw) {
    char name[NAME_CAP];
    const int64_t ws[4] = {out, in, k, k}, bs[1] = {out};
    memset(cw, 0, sizeof *cw);
    SD_TRY(sd_weights_get(w, join(name, prefix, "weight"), 4, ws, &cw->weight));
    return sd_weights_get(w, join(name, prefix, "bias"), 1, bs, &cw->bias);
}

sd_status sd_bind_norm(sd_weights *w, const char *prefix, int64_t channels, sd_norm_w *n) {
    char name[NAME_CAP];
    const int64_t s[1] = {channels};
    memset(n, 0, sizeof *n);
    SD_TRY(sd_weights_get(w, join(name, prefix, "weight"), 1, s, &n->weight));
    return sd_weights_get(w, join(name, prefix, "bias"), 1, s, &n->bias);
}

sd_status sd_bind_resnet(sd_weights *w, const char *prefix, int64_t in, int64_t out,
                         int64_t temb_dim, int groups, float eps, sd_resnet *r) {
    char name[NAME_CAP];
    memset(r, 0, sizeof *r);
    r->groups = groups;
    r->eps = eps;
    SD_TRY(sd_bind_norm(w, join(name, prefix, "norm1"), in, &r->norm1));
    SD_TRY(sd_bind_conv(w, join(name, prefix, "conv1"), out, in, 3, &r->conv1));
    SD_TRY(sd_bind_norm(w, join(name, prefix, "norm2"), out, &r->norm2));
    SD_TRY(sd_bind_conv(w, join(name, prefix, "conv2"), out, out, 3, &r->conv2));
    if (temb_dim > 0) {
        r->has_temb = 1;
        SD_TRY(sd_bind_linear(w, join(name, prefix, "time_emb_proj"), out, temb_dim, 1, &r->time_emb_proj));
    }
    if (in != out) {
        r->has_shortcut = 1;
        SD_TRY(sd_bind_conv(w, join(name, prefix, "conv_shortcut"), out, in, 1, &r->conv_shortcut));
    }
    return SD_OK;
}

sd_status sd_bind_attention(sd_weights *w, const char *prefix, int64_t q_dim, int64_t ctx_dim,
                            int heads, int qkv_bias, sd_attention_w *a) {
    char name[NAME_CAP];
    memset(a, 0, sizeof *a);
    a->heads = heads;
    SD_TRY(sd_bind_linear(w, join(name, prefix, "to_q"), q_dim, q_dim, qkv_bias, &a->to_q));
    SD_TRY(sd_bind_linear(w, join(name, prefix, "to_k"), q_dim, ctx_dim, qkv_bias, &a->to_k));
    SD_TRY(sd_bind_linear(w, join(name, prefix, "to_v"), q_dim, ctx_dim, qkv_bias, &a->to_v));
    return sd_bind_linear(w, join(name, prefix, "to_out.0"), q_dim, q_dim, 1, &a->to_out);
}

sd_status sd_bind_transformer(sd_weights *w, const char *prefix, int64_t channels, int64_t ctx_dim,
                              int heads, int groups, sd_transformer *t) {
    char name[NAME_CAP], block[NAME_CAP];
    memset(t, 0, sizeof *t);
    t->groups = groups;
    SD_TRY(sd_bind_norm(w, join(name, prefix, "norm"), channels, &t->norm));
    SD_TRY(sd_bind_linear_or_1x1(w, join(name, prefix, "proj_in"), channels, channels, &t->proj_in));
    SD_TRY(sd_bind_linear_or_1x1(w, join(name, prefix, "proj_out"), channels, channels, &t->proj_out));
    join(block, prefix, "transformer_blocks.0");
    SD_TRY(sd_bind_norm(w, join(name, block, "norm1"), channels, &t->norm1));
    SD_TRY(sd_bind_norm(w, join(name, block, "norm2"), channels, &t->norm2));
    SD_TRY(sd_bind_norm(w, join(name, block, "norm3"), channels, &t->norm3));
    SD_TRY(sd_bind_attention(w, join(name, block, "attn1"), channels, channels, heads, 0, &t->attn1));
    SD_TRY(sd_bind_attention(w, join(name, block, "attn2"), channels, ctx_dim, heads, 0, &t->attn2));
    SD_TRY(sd_bind_linear(w, join(name, block, "ff.net.0.proj"), 8 * channels, channels, 1, &t->ff_in));
    return sd_bind_linear(w, join(name, block, "ff.net.2"), channels, 4 * channels, 1, &t->ff_out);
}

sd_status sd_bind_clip_layer(sd_weights *w, const char *prefix, int64_t width, int64_t mlp_width,
                             sd_clip_layer *L) {
    char name[NAME_CAP];
    const int64_t D = width, F = mlp_width;
    SD_TRY(sd_bind_norm(w, join(name, prefix, "layer_norm1"), D, &L->layer_norm1));
    SD_TRY(sd_bind_linear(w, join(name, prefix, "self_attn.q_proj"), D, D, 1, &L->q_proj));
    SD_TRY(sd_bind_linear(w, join(name, prefix, "self_attn.k_proj"), D, D, 1, &L->k_proj));
    SD_TRY(sd_bind_linear(w, join(name, prefix, "self_attn.v_proj"), D, D, 1, &L->v_proj));
    SD_TRY(sd_bind_linear(w, join(name, prefix, "self_attn.out_proj"), D, D, 1, &L->out_proj));
    SD_TRY(sd_bind_norm(w, join(name, prefix, "layer_norm2"), D, &L->layer_norm2));
    SD_TRY(sd_bind_linear(w, join(name, prefix, "mlp.fc1"), F, D, 1, &L->fc1));
    return sd_bind_linear(w, join(name, prefix, "mlp.fc2"), D, F, 1, &L->fc2);
}

sd_status sd_bind_vit_layer(sd_weights *w, const char *prefix, int64_t width, int64_t mlp_width,
                            int qkv_bias, int v5_names, sd_clip_layer *L) {
    /* published (hub) names, then the names transformers >= 5 saves */
    static const char *const names[2][7] = {
        {"attention.attention.query", "attention.attention.key", "attention.attention.value",
         "attention.output.dense", "intermediate.dense", "output.dense", ""},
        {"attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2", ""},
    };
    const char *const *n = names[v5_names ? 1 : 0];
    char name[NAME_CAP];
    const int64_t D = width, F = mlp_width;
    memset(L, 0, sizeof *L);
    SD_TRY(sd_bind_norm(w, join(name, prefix, "layernorm_before"), D, &L->layer_norm1));
    SD_TRY(sd_bind_linear(w, join(name, prefix, n[0]), D, D, qkv_bias, &L->q_proj));
    SD_TRY(sd_bind_linear(w, join(name, prefix, n[1]), D, D, qkv_bias, &L->k_proj));
    SD_TRY(sd_bind_linear(w, join(name, prefix, n[2]), D, D, qkv_bias, &L->v_proj));
    SD_TRY(sd_bind_linear(w, join(name, prefix, n[3]), D, D, 1, &L->out_proj));
    SD_TRY(sd_bind_norm(w, join(name, prefix, "layernorm_after"), D, &L->layer_norm2));
    SD_TRY(sd_bind_linear(w, join(name, prefix, n[4]), F, D, 1, &L->fc1));
    return sd_bind_linear(w, join(name, prefix, n[5]), D, F, 1, &L->fc2);
}

sd_tensor *sd_vit_embed(sd_ctx *c, sd_tensor *pixels, const sd_conv_w *patch_conv, int patch,
                        sd_tensor *cls, sd_tensor *pos) {
    if (c->status != SD_OK) return NULL;
    sd_tensor *patches = sd_conv2d(c, pixels, patch_conv, patch, 0); /* [B, D, grid_h, grid_w] */
    sd_tensor *tokens = sd_nchw_to_tokens(c, patches);                /* [B, grid_h·grid_w, D] */
    if (!tokens) return NULL;
    const int64_t B = tokens->shape[0], G = tokens->shape[1], D = tokens->shape[2];
    if (cls->shape[cls->ndim - 1] != D || sd_numel(cls) != D || pos->ndim != 2 || pos->shape[0] != G + 1 ||
        pos->shape[1] != D)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "ViT embedding: %lld patches of width %lld, but %lld position rows "
                           "of width %lld", (long long)G, (long long)D, (long long)pos->shape[0],
                           (long long)pos->shape[pos->ndim - 1]);
    sd_tensor *cls_row = sd_reshape4(c, cls, 2, 1, D, 0, 0); /* [1, D] */
    /* [CLS; patches] + position embedding, one image at a time (the position table has no batch
     * axis), stacked back along the batch. */
    sd_tensor *h = NULL;
    for (int64_t b = 0; b < B; b++) {
        sd_tensor *patch_rows = sd_reshape4(c, sd_slice0(c, tokens, b, 1), 2, G, D, 0, 0);
        sd_tensor *rows = sd_add(c, sd_concat0(c, cls_row, patch_rows), pos); /* [N, D] */
        h = b == 0 ? rows : sd_concat0(c, h, rows);
    }
    return sd_reshape4(c, h, 3, B, G + 1, D, 0); /* [B, N, D] */
}

sd_tensor *sd_clip_layer_forward(sd_ctx *c, const sd_clip_layer *L, sd_tensor *h, int heads,
                                 int causal, sd_unary_op act, float eps) {
    sd_tensor *n = sd_layer_norm(c, h, &L->layer_norm1, eps);
    sd_tensor *q = sd_linear(c, n, &L->q_proj);
    sd_tensor *k = sd_linear(c, n, &L->k_proj);
    sd_tensor *v = sd_linear(c, n, &L->v_proj);
    /* no hook site: the attention controllers act on the UNet only */
    sd_tensor *a = sd_attention(c, q, k, v, heads, causal, NULL);
    h = sd_linear_add(c, a, &L->out_proj, h);
    n = sd_layer_norm(c, h, &L->layer_norm2, eps);
    sd_tensor *f = sd_unary(c, act, sd_linear(c, n, &L->fc1));
    return sd_linear_add(c, f, &L->fc2, h);
}

sd_tensor *sd_resnet_forward(sd_ctx *c, const sd_resnet *r, sd_tensor *x, sd_tensor *temb_proj) {
    /* the time embedding and the skip connection ride in the convolutions' epilogues where the
     * storage is fp16 (sd_conv2d_fused) */
    if (c->status == SD_OK && r->has_temb != (temb_proj != NULL))
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "resnet: %s time projection", r->has_temb ? "missing" : "unexpected");
    sd_tensor *h = sd_group_norm(c, x, &r->norm1, r->groups, r->eps, 1);
    h = sd_conv2d_fused(c, h, &r->conv1, 1, 1, temb_proj, NULL);
    h = sd_group_norm(c, h, &r->norm2, r->groups, r->eps, 1);
    sd_tensor *skip = r->has_shortcut ? sd_conv2d(c, x, &r->conv_shortcut, 1, 0) : x;
    sd_block_result(c);
    /* dropout is identity at inference; output_scale_factor is 1 in SD */
    return sd_conv2d_fused(c, h, &r->conv2, 1, 1, NULL, skip);
}

static sd_tensor *resnet_block(sd_ctx *c, const void *block, sd_tensor *x, sd_tensor *temb_proj, sd_tensor *unused) {
    (void)unused;
    return sd_resnet_forward(c, block, x, temb_proj);
}

sd_tensor *sd_resnet_checkpointed(sd_ctx *c, const sd_resnet *r, sd_tensor *x, sd_tensor *temb_proj) {
    return sd_checkpoint(c, resnet_block, r, x, temb_proj, NULL);
}

/* A self-attention up to to_out: the projections and the attention, [B, S, C_v]. The hook may
 * substitute the value projection's input at a site. */
static sd_tensor *self_attention_heads(sd_ctx *c, const sd_attention_w *a, sd_tensor *x, const sd_attn_site *site) {
    sd_tensor *value_in = x;
    if (site && c->hook && c->hook->value_input && c->status == SD_OK) {
        /* the input as stored (no copy per site: no controller reads it); the substitute, in
         * either dtype, is stored like the rest of the forward */
        sd_tensor *sub = c->hook->value_input(c->hook, c, site, x);
        if (sub) value_in = sd_to_dtype(c, sub, x->dtype);
        if (c->status != SD_OK) return NULL;
    }
    /* projections of one input in one batched GEMM where the storage allows (sd_linear_many) */
    sd_tensor *q = NULL, *k = NULL, *v = NULL;
    if (value_in == x) {
        const sd_linear_w *qkv[3] = {&a->to_q, &a->to_k, &a->to_v};
        sd_tensor *outs[3];
        sd_linear_many(c, x, qkv, 3, outs);
        q = outs[0], k = outs[1], v = outs[2];
    } else {
        q = sd_linear(c, x, &a->to_q);
        k = sd_linear(c, x, &a->to_k);
        v = sd_linear(c, value_in, &a->to_v);
    }
    return sd_attention(c, q, k, v, a->heads, 0, site);
}

static sd_tensor *attention_out(sd_ctx *c, const sd_attention_w *a, sd_tensor *o, sd_tensor *residual) {
    return residual ? sd_linear_add(c, o, &a->to_out, residual) : sd_linear(c, o, &a->to_out);
}

sd_tensor *sd_attention_block(sd_ctx *c, const sd_attention_w *a, sd_tensor *x, const sd_attn_site *site,
                              sd_tensor *residual) {
    return attention_out(c, a, self_attention_heads(c, a, x, site), residual);
}

sd_tensor *sd_cross_attention_block(sd_ctx *c, const sd_attention_w *a, sd_tensor *x, sd_tensor *k, sd_tensor *v,
                                    const sd_attn_site *site, sd_tensor *residual) {
    if (c->status == SD_OK && (!k || !v)) return sd_ctx_fail(c, SD_ERR_INTERNAL, "cross-attention: keys or values missing");
    sd_tensor *q = sd_linear(c, x, &a->to_q);
    return attention_out(c, a, sd_attention(c, q, k, v, a->heads, 0, site), residual);
}

sd_status sd_cross_attention_kv(sd_ctx *c, const sd_attention_w *const *attn, int n, sd_tensor *context,
                                sd_tensor *const *values, sd_tensor **k, sd_tensor **v) {
    for (int i = 0; i < n; i++) k[i] = v[i] = NULL;
    if (c->status != SD_OK) return c->status;
    if (n < 0 || n > SD_UNET_MAX_TRANSFORMERS || !context)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "cross-attention projections: %d layers%s", n,
                           context ? "" : ", no context"),
               c->status;
    sd_tensor *xs[2 * SD_UNET_MAX_TRANSFORMERS] = {0}, *outs[2 * SD_UNET_MAX_TRANSFORMERS];
    const sd_linear_w *ls[2 * SD_UNET_MAX_TRANSFORMERS] = {0};
    for (int i = 0; i < n; i++) {
        xs[2 * i] = context, ls[2 * i] = &attn[i]->to_k;
        xs[2 * i + 1] = values && values[i] ? values[i] : context, ls[2 * i + 1] = &attn[i]->to_v;
    }
    if (sd_linear_grouped(c, xs, ls, 2 * n, outs) == SD_OK)
        for (int i = 0; i < n; i++) k[i] = outs[2 * i], v[i] = outs[2 * i + 1];
    return c->status;
}

void sd_transformer_sites(const sd_transformer *t, const sd_tensor *x, const sd_tensor *context, int layer,
                          sd_unet_place place, sd_attn_site sites[2]) {
    const int64_t H = x->shape[2], W = x->shape[3];
    const sd_attn_site base = {.place = place, .res_h = H, .res_w = W, .heads = t->attn1.heads,
                               .batch = x->shape[0], .q_len = H * W};
    sites[0] = sites[1] = base;
    sites[0].layer = layer;
    sites[0].is_cross = 0;
    sites[0].kv_len = H * W;
    sites[1].layer = layer + 1;
    sites[1].is_cross = 1;
    sites[1].kv_len = context ? context->shape[1] : 0;
}

sd_tensor *sd_transformer_self_half(sd_ctx *c, const sd_transformer *t, sd_tensor *x, const sd_attn_site *self_site,
                                    int whole_block) {
    if (c->status != SD_OK || !x) return NULL;
    sd_tensor *h = sd_group_norm(c, x, &t->norm, t->groups, 1e-6f, 0);
    h = sd_linear_of_map(c, h, &t->proj_in); /* the 1x1 conv, applied per token: [B, HW, C] */
    sd_tensor *n = sd_layer_norm(c, h, &t->norm1, 1e-5f);
    sd_tensor *o = self_attention_heads(c, &t->attn1, n, self_site);
    if (whole_block) sd_block_result(c); /* the stream is what sd_checkpoint keeps */
    return attention_out(c, &t->attn1, o, h);
}

sd_tensor *sd_transformer_forward(sd_ctx *c, const sd_transformer *t, sd_tensor *x, sd_tensor *stream,
                                  sd_tensor *cross_k, sd_tensor *cross_v, int *layer, sd_unet_place place) {
    if (c->status != SD_OK || !x) return NULL;
    const int64_t H = x->shape[2], W = x->shape[3];
    sd_attn_site sites[2];
    sd_transformer_sites(t, x, cross_k, *layer, place, sites);
    *layer += 2;
    sd_tensor *h = stream ? stream : sd_transformer_self_half(c, t, x, &sites[0], 0);

    sd_tensor *n = sd_layer_norm(c, h, &t->norm2, 1e-5f);
    h = sd_cross_attention_block(c, &t->attn2, n, cross_k, cross_v, &sites[1], h);

    n = sd_layer_norm(c, h, &t->norm3, 1e-5f);
    sd_tensor *f = sd_geglu(c, sd_linear(c, n, &t->ff_in));
    h = sd_linear_add(c, f, &t->ff_out, h);

    /* fp16 storage: the skip connection rides in proj_out's GEMM epilogue, in token order (a
     * channels-last map's memory; of an NCHW one, a transpose in place of the add). The F32 path
     * keeps the separate add: exact mode's sums stay the oracle's. */
    if (x->dtype == SD_F16 && x->channels_last) {
        sd_block_result(c);
        return sd_linear_add_map(c, h, &t->proj_out, x);
    }
    if (x->dtype == SD_F16) {
        h = sd_linear_add(c, h, &t->proj_out, sd_nchw_to_tokens(c, x));
        sd_block_result(c);
        return sd_tokens_to_nchw(c, h, H, W);
    }
    h = sd_linear(c, h, &t->proj_out);
    h = sd_tokens_to_nchw(c, h, H, W);
    sd_block_result(c);
    return sd_add(c, h, x);
}
