/* layers.h: building blocks shared by the UNet and the VAE (binding by name, and forward). */
#ifndef SD_MODELS_LAYERS_H
#define SD_MODELS_LAYERS_H

#include "sd/models.h"

/* Binders: `prefix` is the module path ("down_blocks.0.resnets.1"); shapes are the ones diffusers
 * creates. bias = 0 means the layer has no bias tensor. */
sd_status sd_bind_linear(sd_weights *w, const char *prefix, int64_t out, int64_t in, int bias,
                         sd_linear_w *l);
/* A projection diffusers stores either as a (out, in) linear or as a (out, in, 1, 1) conv. */
sd_status sd_bind_linear_or_1x1(sd_weights *w, const char *prefix, int64_t out, int64_t in,
                                sd_linear_w *l);
sd_status sd_bind_conv(sd_weights *w, const char *prefix, int64_t out, int64_t in, int k,
                       sd_conv_w *cw);
sd_status sd_bind_norm(sd_weights *w, const char *prefix, int64_t channels, sd_norm_w *n);
/* temb_dim = 0: no time embedding (VAE). */
sd_status sd_bind_resnet(sd_weights *w, const char *prefix, int64_t in, int64_t out,
                         int64_t temb_dim, int groups, float eps, sd_resnet *r);
/* q_dim: query channels; ctx_dim: key/value input channels; qkv_bias: VAE-style biases. */
sd_status sd_bind_attention(sd_weights *w, const char *prefix, int64_t q_dim, int64_t ctx_dim,
                            int heads, int qkv_bias, sd_attention_w *a);
sd_status sd_bind_transformer(sd_weights *w, const char *prefix, int64_t channels, int64_t ctx_dim,
                              int heads, int groups, sd_transformer *t);

/* One pre-LN CLIP transformer layer ("<prefix>.self_attn.q_proj", "<prefix>.mlp.fc1", ...), shared
 * by the text and the vision towers. */
sd_status sd_bind_clip_layer(sd_weights *w, const char *prefix, int64_t width, int64_t mlp_width,
                             sd_clip_layer *L);
/* The same pre-LN block under transformers' ViTLayer names: the arithmetic is CLIP's, so it binds
 * into the same struct and runs with sd_clip_layer_forward. Published checkpoints (the hub's
 * facebook/dino-vitb8, prefix "encoder.layer.N") use "layernorm_before",
 * "attention.attention.{query,key,value}", "attention.output.dense", "layernorm_after",
 * "intermediate.dense", "output.dense"; transformers >= 5 saves (prefix "layers.N", v5_names = 1)
 * use "attention.{q,k,v,o}_proj" and "mlp.fc1" / "mlp.fc2" instead. qkv_bias = 0 for a config with
 * "qkv_bias": false. */
sd_status sd_bind_vit_layer(sd_weights *w, const char *prefix, int64_t width, int64_t mlp_width,
                            int qkv_bias, int v5_names, sd_clip_layer *L);
/* h + attn(ln1(h)), then + mlp(ln2(h)); causal masks later tokens (text tower). */
sd_tensor *sd_clip_layer_forward(sd_ctx *c, const sd_clip_layer *L, sd_tensor *h, int heads,
                                 int causal, sd_unary_op act, float eps);

/* ViT patch embedding shared by the CLIP vision tower and DINO: pixels[B, 3, S_h, S_w] -> a stride-P
 * conv (patch_conv's bias may be NULL) -> [B, grid, D] tokens, the class row cls[1, D] prepended
 * and pos[N, D] added (N = 1 + grid_h·grid_w) -> [B, N, D]. */
sd_tensor *sd_vit_embed(sd_ctx *c, sd_tensor *pixels, const sd_conv_w *patch_conv, int patch,
                        sd_tensor *cls, sd_tensor *pos);

/* h = conv2(silu(gn2(conv1(silu(gn1(x))) + temb_proj))) + shortcut(x).
 * temb_proj: the resnet's time_emb_proj(SiLU(time embedding)) [B, C_out], NULL in the VAE. It depends
 * on the timestep only, so a UNet call makes all of them before its first block, in one product per
 * weight shape (and a prefix keeps them: sd_unet_prefix). */
sd_tensor *sd_resnet_forward(sd_ctx *c, const sd_resnet *r, sd_tensor *x, sd_tensor *temb_proj);
/* The same through sd_checkpoint: its activations live in the scratch arena while it runs (no
 * gradient) or are recomputed in the backward (c->recompute). What the UNet and VAE call. */
sd_tensor *sd_resnet_checkpointed(sd_ctx *c, const sd_resnet *r, sd_tensor *x, sd_tensor *temb_proj);
/* Self-attention over tokens x[B, S, C]. `site` NULL bypasses the hook (VAE); else the hook may
 * substitute the value projection's input. `residual`, when set, is added to the output in
 * to_out's GEMM (sd_linear_add): the transformer's skip connection. */
sd_tensor *sd_attention_block(sd_ctx *c, const sd_attention_w *a, sd_tensor *x, const sd_attn_site *site,
                              sd_tensor *residual);
/* Cross-attention of tokens x[B, S, C] over keys k and values v [B, Sk, C] already projected
 * (sd_cross_attention_kv); `site`, `residual` as above. */
sd_tensor *sd_cross_attention_block(sd_ctx *c, const sd_attention_w *a, sd_tensor *x, sd_tensor *k, sd_tensor *v,
                                    const sd_attn_site *site, sd_tensor *residual);
/* The keys and values of n cross-attentions of one call: k[i] = attn[i].to_k(context) and
 * v[i] = attn[i].to_v(values[i]) (values NULL, or values[i] NULL: the context), [B, Sk, C_i]. The
 * projections of one input and one weight shape go in one batched product where the storage
 * allows (sd_linear_many): SD v1.5's 32 become 3 with a single input (Null-text's context) and 6
 * with StyleDiffusion's value input beside the prompt. */
sd_status sd_cross_attention_kv(sd_ctx *c, const sd_attention_w *const *attn, int n, sd_tensor *context,
                                sd_tensor *const *values, sd_tensor **k, sd_tensor **v);
/* The first half of a transformer block, which reads no context: GroupNorm, proj_in and the
 * self-attention with its skip, x[B, C, H, W] -> the block's residual stream [B, HW, C] that the
 * cross-attention adds to. `self_site`: the self-attention's hook site; `whole_block`: the half is
 * a checkpointed block of its own (a UNet prefix's), whose result goes straight to the caller's arena. */
sd_tensor *sd_transformer_self_half(sd_ctx *c, const sd_transformer *t, sd_tensor *x, const sd_attn_site *self_site,
                                    int whole_block);
/* Transformer2DModel on x[B, C, H, W]. *layer is the running attention-call counter of the UNet
 * forward (incremented twice). `stream`: NULL, or the block's residual stream after its
 * self-attention, sd_transformer_self_half(x) computed beforehand (a UNet prefix's): the block
 * then runs from its cross-attention on. `cross_k`, `cross_v`: its cross-attention's keys and
 * values, projected at the start of the call (sd_cross_attention_kv). */
sd_tensor *sd_transformer_forward(sd_ctx *c, const sd_transformer *t, sd_tensor *x, sd_tensor *stream,
                                  sd_tensor *cross_k, sd_tensor *cross_v, int *layer, sd_unet_place place);
/* The two attention sites (self, cross) of a transformer block whose first call is `layer`;
 * `context` (or the keys) gives the cross-attention's key count, NULL none. */
void sd_transformer_sites(const sd_transformer *t, const sd_tensor *x, const sd_tensor *context, int layer,
                          sd_unet_place place, sd_attn_site sites[2]);

/* Typed config.json keys, shared by the CLIP vision and the DINO ViT config readers (defined in
 * clip_vision.c). A key is looked up in `override` (an old CLIPModel config's
 * "vision_config_dict") first, then in `main` (the file itself, or its nested "vision_config");
 * `where` prefixes key names in messages ("vision_config.") so the user finds the key that is
 * wrong. An absent key takes `def`; a wrong-typed or non-positive one fails naming `path` and the
 * key. */
struct cJSON;
typedef struct sd_config_keys {
    const struct cJSON *main, *override;
    const char *where, *override_where;
    const char *path;
} sd_config_keys;
const struct cJSON *sd_config_find_key(const sd_config_keys *k, const char *key, const char **where);
sd_status sd_config_key_int(const sd_config_keys *k, const char *key, int def, int *out);
sd_status sd_config_key_float(const sd_config_keys *k, const char *key, float def, float *out);
sd_status sd_config_key_string(const sd_config_keys *k, const char *key, const char *def,
                               const char **out, const char **where_out);

/* The transformer geometry every ViT-style config shares (CLIPVisionConfig, ViTConfig): the keys
 * hidden_size (768), intermediate_size (3072), num_hidden_layers (12), num_attention_heads (12),
 * num_channels (3), image_size (224), patch_size and layer_norm_eps (defaults differ per config:
 * the caller's), then checked: RGB input, heads dividing the width, a patch that fits the image.
 * Messages name k->path and the key. */
typedef struct sd_vit_geometry {
    int hidden_size, intermediate_size, num_hidden_layers, num_attention_heads;
    int num_channels, image_size, patch_size;
    float layer_norm_eps;
} sd_vit_geometry;
sd_status sd_config_vit_geometry(const sd_config_keys *k, int default_patch, float default_eps,
                                 sd_vit_geometry *out);
/* Copies a geometry into a config struct that has the same field names (sd_clip_vision_config,
 * sd_vit_config): the two public configs keep flat fields, the parsing lives in one place. */
#define SD_VIT_GEOMETRY_ASSIGN(cfg, g)                                                             \
    do {                                                                                           \
        (cfg)->hidden_size = (g).hidden_size;                                                      \
        (cfg)->intermediate_size = (g).intermediate_size;                                          \
        (cfg)->num_hidden_layers = (g).num_hidden_layers;                                          \
        (cfg)->num_attention_heads = (g).num_attention_heads;                                      \
        (cfg)->num_channels = (g).num_channels;                                                    \
        (cfg)->image_size = (g).image_size;                                                        \
        (cfg)->patch_size = (g).patch_size;                                                        \
        (cfg)->layer_norm_eps = (g).layer_norm_eps;                                                \
    } while (0)

/* Parses a config file's JSON object with `parse` (root, path, out); a malformed file fails
 * naming the path. sd_config_load_file reads the file first. `out` is written only on success. */
typedef sd_status (*sd_config_parse_fn)(const struct cJSON *root, const char *path, void *out);
sd_status sd_config_parse_text(const char *json, const char *path, sd_config_parse_fn parse, void *out,
                               size_t out_size);
sd_status sd_config_load_file(const char *path, sd_config_parse_fn parse, void *out, size_t out_size);

#endif
