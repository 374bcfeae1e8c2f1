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
/* h + attn(ln1(h)), then + mlp(ln2(h)); causal masks later tokens (text tower). */
sd_tensor *sd_clip_layer_forward(sd_ctx *c, const sd_clip_layer *L, sd_tensor *h, int heads,
                                 int causal, sd_unary_op act, float eps);

/* h = conv2(silu(gn2(conv1(silu(gn1(x))) + proj(temb_silu)))) + shortcut(x).
 * temb_silu: SiLU(time embedding) [B, T], shared by every resnet of a UNet call; NULL in the VAE. */
sd_tensor *sd_resnet_forward(sd_ctx *c, const sd_resnet *r, sd_tensor *x, sd_tensor *temb_silu);
/* Attention over tokens x[B, S, C]; context[B, Sk, Dc] or NULL for self-attention. `site` NULL
 * bypasses the hook (VAE). */
sd_tensor *sd_attention_block(sd_ctx *c, const sd_attention_w *a, sd_tensor *x, sd_tensor *context,
                              const sd_attn_site *site);
/* Transformer2DModel on x[B, C, H, W]. *layer is the running attention-call counter of the UNet
 * forward (incremented twice). */
sd_tensor *sd_transformer_forward(sd_ctx *c, const sd_transformer *t, sd_tensor *x,
                                  sd_tensor *context, int *layer, sd_unet_place place);

#endif
