/* models.h: the Stable Diffusion v1.x networks, their weights bound by diffusers name.
 *
 * Each model struct mirrors the checkpoint's module tree (down_blocks[i].resnets[j].conv1 ...), so
 * binding is a lookup by name with a shape check (sd_weights_get) and a missing or wrong-shaped
 * tensor is reported by its checkpoint name. Forward passes allocate from the context's arena and
 * return NULL on failure (the context's status and sd_last_error() say why). */
#ifndef SD_MODELS_H
#define SD_MODELS_H

#include "sd/attn.h"
#include "sd/config.h"
#include "sd/io.h"
#include "sd/nn.h"

#define SD_MAX_LAYERS 4 /* layers_per_block + 1 resnets per up block */

/* ResnetBlock2D. */
typedef struct sd_resnet {
    sd_norm_w norm1, norm2;
    sd_conv_w conv1, conv2;
    sd_conv_w conv_shortcut;   /* 1x1, present iff in != out channels */
    sd_linear_w time_emb_proj; /* present in the UNet, absent in the VAE */
    int has_shortcut, has_temb;
    int groups;
    float eps;
} sd_resnet;

/* diffusers Attention (CrossAttention in 0.8.0): to_q / to_k / to_v / to_out.0. */
typedef struct sd_attention_w {
    sd_linear_w to_q, to_k, to_v, to_out;
    int heads;
} sd_attention_w;

/* Transformer2DModel with one BasicTransformerBlock (SD v1). */
typedef struct sd_transformer {
    sd_norm_w norm;               /* GroupNorm, eps 1e-6 */
    sd_linear_w proj_in, proj_out; /* 1x1 convs (C, C, 1, 1) or linears (C, C) */
    sd_norm_w norm1, norm2, norm3; /* LayerNorms, eps 1e-5 */
    sd_attention_w attn1, attn2;  /* self, cross */
    sd_linear_w ff_in, ff_out;    /* GEGLU proj (C -> 8C), out (4C -> C) */
    int groups;
} sd_transformer;

typedef struct sd_unet {
    sd_unet_config cfg;
    sd_linear_w time_linear_1, time_linear_2;
    sd_conv_w conv_in, conv_out;
    sd_norm_w conv_norm_out;
    struct {
        sd_resnet resnets[SD_MAX_LAYERS];
        sd_transformer attentions[SD_MAX_LAYERS];
        sd_conv_w downsampler; /* stride-2 3x3, absent in the last block */
        int has_attn, has_downsampler;
    } down[SD_MAX_BLOCKS];
    struct {
        sd_resnet resnets[2];
        sd_transformer attention;
    } mid;
    struct {
        sd_resnet resnets[SD_MAX_LAYERS];
        sd_transformer attentions[SD_MAX_LAYERS];
        sd_conv_w upsampler; /* nearest x2 then 3x3, absent in the last block */
        int has_attn, has_upsampler;
    } up[SD_MAX_BLOCKS];
} sd_unet;

/* Binds every UNet tensor from `w` (diffusers names); fails naming the first missing or
 * wrong-shaped tensor. Warns about tensors left unused. */
sd_status sd_unet_bind(sd_unet *u, const sd_unet_config *cfg, sd_weights *w);
/* eps = UNet(x[B, C_in, H, W], t, context[B, S, D_ctx]) for one timestep t shared by the batch.
 * H and W must be multiples of 2^(blocks-1). Attention calls go through c->hook. */
sd_tensor *sd_unet_forward(sd_ctx *c, const sd_unet *u, sd_tensor *x, float t, sd_tensor *context);
/* The same with the timestep read from a device tensor tvec[B] (F32, one value per batch row)
 * when the work runs: a CUDA graph of it replays with whatever timestep was written there. */
sd_tensor *sd_unet_forward_tvec(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *tvec,
                                sd_tensor *context);

/* What a UNet call computes before its text context first enters: the time embedding and every
 * resnet's projection of it, the maps from conv_in up to the first transformer (with the skips
 * kept on the way), and that transformer's self-attention half: its residual stream before the
 * cross-attention. An inversion's inner iterations call the UNet many times with one latent and
 * timestep, changing only the context (Null-text's ∅) or the cross-attention's value input
 * (StyleDiffusion's): they make this once per timestep and start every iteration from it
 * (sd_unet_forward_from). SD v1.5 at 64x64: conv_in, a resnet at 64x64 and the 4096-token
 * self-attention, 41 of a call's 803 GFLOP at batch 1 and more of its time (that attention is the
 * call's slowest per FLOP); the backward never reaches it (nothing in it depends on the context). Tensors are held by value: a CUDA graph's replay rewrites their data where the
 * capture put it, as the graph of the iteration that reads it expects. */
#define SD_UNET_MAX_RESNETS (2 * SD_MAX_BLOCKS * SD_MAX_LAYERS + 2)
#define SD_UNET_MAX_SKIPS (SD_MAX_BLOCKS * (SD_MAX_LAYERS + 1) + 1)
#define SD_UNET_MAX_TRANSFORMERS (2 * SD_MAX_BLOCKS * SD_MAX_LAYERS + 1) /* down, mid and up */
typedef struct sd_unet_prefix {
    int ready;          /* set by sd_unet_prefix_compute */
    int next_unit;      /* where the forward goes on (unet.c's walk: the first transformer's unit) */
    int n_resnets;      /* resnets the prefix ran */
    int n_projections;  /* time projections in call order, every resnet's */
    int n_skips;
    sd_dtype storage;   /* the maps' storage: a call from the prefix must store the same */
    sd_tensor temb_proj[SD_UNET_MAX_RESNETS]; /* [B, C_out] per resnet */
    sd_tensor skips[SD_UNET_MAX_SKIPS];
    sd_tensor h;        /* the first transformer's input [B, C, H, W] */
    sd_tensor stream;   /* its residual stream after the self-attention [B, HW, C] */
} sd_unet_prefix;
/* The prefix of UNet(x, tvec, ·) into *p. It records nothing on a tape (nothing in it may need a
 * gradient: x and tvec are refused if they do), but computes as a call under the context's current
 * state would: a gradient step's prefix is made with the step's tape set, so that it stores what
 * the step stores. The attention hook sees the first self-attention here, not in the calls. */
sd_status sd_unet_prefix_compute(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *tvec, sd_unet_prefix *p);
/* sd_unet_prefix_compute with `tape` attached for the time (and the context's own restored after):
 * the prefix the gradient steps recorded on that tape read. Fails if it recorded anything. */
struct sd_tape;
sd_status sd_unet_prefix_for_tape(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *tvec, struct sd_tape *tape,
                                  sd_unet_prefix *p);
/* UNet(x, tvec, context) from a prefix of (x, tvec): bit for bit sd_unet_forward_tvec's result.
 * Fails if the hook wants the first self-attention (the prefix ran it already; the hook is asked
 * through wants_probs and value_input, which must therefore have no side effects, as in gradient
 * steps), or if the call would store its maps in another dtype than the prefix did. */
sd_tensor *sd_unet_forward_from(sd_ctx *c, const sd_unet *u, sd_unet_prefix *p, sd_tensor *context);
/* 1 when the context's hook (none: 1) leaves alone the first self-attention of a call on latent x
 * [B, C, H, W], so that the call may start from a prefix made without the hook: P2P editing's two
 * passes of a timestep share one where the controller injects no self-attention at that size (SD
 * v1.5 at 512 px: 4096 queries, over its 32x32 limit). Asks wants_probs and value_input, the
 * latter with a header of the site's input (its shape, dtype and device; no data: nothing has run). */
int sd_unet_hook_spares_prefix(sd_ctx *c, const sd_unet *u, const sd_tensor *x);

typedef struct sd_vae {
    sd_vae_config cfg;
    /* encoder */
    sd_conv_w enc_conv_in, enc_conv_out, quant_conv;
    sd_norm_w enc_norm_out;
    struct {
        sd_resnet resnets[SD_MAX_LAYERS];
        sd_conv_w downsampler;
        int has_downsampler;
    } enc_down[SD_MAX_BLOCKS];
    sd_resnet enc_mid_resnets[2];
    sd_norm_w enc_mid_attn_norm;
    sd_attention_w enc_mid_attn;
    /* decoder */
    sd_conv_w post_quant_conv, dec_conv_in, dec_conv_out;
    sd_norm_w dec_norm_out;
    sd_resnet dec_mid_resnets[2];
    sd_norm_w dec_mid_attn_norm;
    sd_attention_w dec_mid_attn;
    struct {
        sd_resnet resnets[SD_MAX_LAYERS];
        sd_conv_w upsampler;
        int has_upsampler;
    } dec_up[SD_MAX_BLOCKS];
} sd_vae;

sd_status sd_vae_bind(sd_vae *v, const sd_vae_config *cfg, sd_weights *w);
/* image[B, 3, H, W] in [-1, 1] -> posterior mean [B, latent, H/8, W/8] (not scaled); logvar
 * (clamped to [-30, 20]) into *logvar when logvar != NULL. */
sd_tensor *sd_vae_encode(sd_ctx *c, const sd_vae *v, sd_tensor *image, sd_tensor **logvar);
/* z[B, latent, h, w] (already divided by the scaling factor) -> image [B, 3, 8h, 8w]. */
sd_tensor *sd_vae_decode(sd_ctx *c, const sd_vae *v, sd_tensor *z);

typedef struct sd_clip_layer {
    sd_norm_w layer_norm1, layer_norm2;
    sd_linear_w q_proj, k_proj, v_proj, out_proj;
    sd_linear_w fc1, fc2;
} sd_clip_layer;

typedef struct sd_clip_text {
    sd_clip_text_config cfg;
    sd_tensor *token_embedding;    /* (vocab, hidden) */
    sd_tensor *position_embedding; /* (max_positions, hidden) */
    sd_clip_layer *layers;         /* num_hidden_layers */
    sd_norm_w final_layer_norm;
    sd_linear_w text_projection; /* (projection_dim, hidden), no bias; NULL weight when the file has none */
} sd_clip_text;

/* Binds "text_model.*" (and "text_projection.weight" when the store holds it: a CLIPModel or
 * CLIPTextModelWithProjection checkpoint). */
sd_status sd_clip_text_bind(sd_clip_text *m, const sd_clip_text_config *cfg, sd_weights *w);
void sd_clip_text_release(sd_clip_text *m);
/* Fills `w` with the text tower of a CLIPModel safetensors file: "text_model.*" and
 * "text_projection.weight", converted to F32; the vision tower, "visual_projection.weight" and
 * "logit_scale" are skipped. A file without any "text_model." tensor fails naming it. */
sd_status sd_clip_text_weights_load(sd_weights *w, const char *safetensors_path);
/* ids: I32 host tensor [B, S] (S <= max positions) -> last_hidden_state [B, S, hidden]. */
sd_tensor *sd_clip_text_forward(sd_ctx *c, const sd_clip_text *m, const sd_tensor *ids);
/* transformers' CLIPTextTransformer pooler_output: row `p_b` of hidden[b] ([B, S, hidden] ->
 * [B, hidden]), where p_b is, as transformers picks it,
 *   eos_token_id == 2 (the original openai configs): argmax of the ids (first maximum);
 *   otherwise: the first position whose id is eos_token_id, or 0 when there is none.
 * For ids from the CLIP tokenizer both give the first EOS (49407, the largest id), and for a
 * sequence cut before its EOS both give the BOS row (argmax finds 49406, the next largest). */
sd_tensor *sd_clip_text_pooled(sd_ctx *c, const sd_clip_text *m, const sd_tensor *ids, sd_tensor *hidden);
/* CLIPModel.get_text_features: text_projection(pooled(forward(ids))) -> [B, projection_dim].
 * Fails naming "text_projection.weight" when the checkpoint had none. Padding positions after the
 * EOS never reach the pooled row (causal attention), so no attention mask is needed. */
sd_tensor *sd_clip_text_features(sd_ctx *c, const sd_clip_text *m, const sd_tensor *ids);

#endif
