/* unet.c: UNet2DConditionModel for SD v1.x (stylediffusion.md §1.5), block layout from the config. */
#include <stdio.h>
#include <string.h>

#include "layers.h"

#define NAME_CAP 256
#define MAX_SKIPS (SD_MAX_BLOCKS * (SD_MAX_LAYERS + 1) + 1)

static int time_embed_dim(const sd_unet_config *cfg) { return cfg->block_out_channels[0] * 4; }

sd_status sd_unet_bind(sd_unet *u, const sd_unet_config *cfg, sd_weights *w) {
    char name[NAME_CAP];
    memset(u, 0, sizeof *u);
    u->cfg = *cfg;
    const int n = cfg->n_blocks, L = cfg->layers_per_block, G = cfg->norm_num_groups;
    const float eps = cfg->norm_eps;
    const int64_t T = time_embed_dim(cfg), C0 = cfg->block_out_channels[0];
    const int64_t Dc = cfg->cross_attention_dim;
    if (n < 1 || n > SD_MAX_BLOCKS || L < 1 || L + 1 > SD_MAX_LAYERS)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: UNet with %d blocks of %d layers is not supported",
                       sd_weights_source(w), n, L);

    SD_TRY(sd_bind_linear(w, "time_embedding.linear_1", T, C0, 1, &u->time_linear_1));
    SD_TRY(sd_bind_linear(w, "time_embedding.linear_2", T, T, 1, &u->time_linear_2));
    SD_TRY(sd_bind_conv(w, "conv_in", C0, cfg->in_channels, 3, &u->conv_in));

    int64_t out_ch = C0;
    for (int i = 0; i < n; i++) {
        const int64_t in_ch = out_ch;
        out_ch = cfg->block_out_channels[i];
        u->down[i].has_attn = cfg->down_has_attn[i];
        for (int j = 0; j < L; j++) {
            snprintf(name, sizeof name, "down_blocks.%d.resnets.%d", i, j);
            SD_TRY(sd_bind_resnet(w, name, j == 0 ? in_ch : out_ch, out_ch, T, G, eps,
                                  &u->down[i].resnets[j]));
            if (u->down[i].has_attn) {
                snprintf(name, sizeof name, "down_blocks.%d.attentions.%d", i, j);
                SD_TRY(sd_bind_transformer(w, name, out_ch, Dc, cfg->heads[i], G,
                                           &u->down[i].attentions[j]));
            }
        }
        if (i < n - 1) {
            u->down[i].has_downsampler = 1;
            snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0.conv", i);
            SD_TRY(sd_bind_conv(w, name, out_ch, out_ch, 3, &u->down[i].downsampler));
        }
    }

    const int64_t C_last = cfg->block_out_channels[n - 1];
    SD_TRY(sd_bind_resnet(w, "mid_block.resnets.0", C_last, C_last, T, G, eps, &u->mid.resnets[0]));
    SD_TRY(sd_bind_transformer(w, "mid_block.attentions.0", C_last, Dc, cfg->heads[n - 1], G,
                               &u->mid.attention));
    SD_TRY(sd_bind_resnet(w, "mid_block.resnets.1", C_last, C_last, T, G, eps, &u->mid.resnets[1]));

    out_ch = C_last;
    for (int i = 0; i < n; i++) {
        const int64_t prev_out = out_ch;
        out_ch = cfg->block_out_channels[n - 1 - i];
        const int64_t in_ch = cfg->block_out_channels[n - 1 - (i + 1 < n ? i + 1 : n - 1)];
        u->up[i].has_attn = cfg->up_has_attn[i];
        for (int j = 0; j < L + 1; j++) {
            const int64_t skip_ch = (j == L) ? in_ch : out_ch;
            const int64_t res_in = (j == 0) ? prev_out : out_ch;
            snprintf(name, sizeof name, "up_blocks.%d.resnets.%d", i, j);
            SD_TRY(sd_bind_resnet(w, name, res_in + skip_ch, out_ch, T, G, eps, &u->up[i].resnets[j]));
            if (u->up[i].has_attn) {
                snprintf(name, sizeof name, "up_blocks.%d.attentions.%d", i, j);
                SD_TRY(sd_bind_transformer(w, name, out_ch, Dc, cfg->heads[n - 1 - i], G,
                                           &u->up[i].attentions[j]));
            }
        }
        if (i < n - 1) {
            u->up[i].has_upsampler = 1;
            snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0.conv", i);
            SD_TRY(sd_bind_conv(w, name, out_ch, out_ch, 3, &u->up[i].upsampler));
        }
    }

    SD_TRY(sd_bind_norm(w, "conv_norm_out", C0, &u->conv_norm_out));
    SD_TRY(sd_bind_conv(w, "conv_out", cfg->out_channels, C0, 3, &u->conv_out));

    /* every UNet convolution may run on its fp16 copy in fast mode's F32 forwards (the VAE's stay
     * F32: its decoder's maps are not known to fit fp16) */
    sd_conv_w *convs[2 + 2 * SD_MAX_BLOCKS + 3 * (2 * SD_MAX_LAYERS + 2) * SD_MAX_BLOCKS];
    int n_convs = 0;
    convs[n_convs++] = &u->conv_in;
    convs[n_convs++] = &u->conv_out;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < L + 1; j++) {
            sd_resnet *rs[2] = {j < L ? &u->down[i].resnets[j] : NULL, &u->up[i].resnets[j]};
            for (int k = 0; k < 2; k++)
                if (rs[k]) {
                    convs[n_convs++] = &rs[k]->conv1;
                    convs[n_convs++] = &rs[k]->conv2;
                    convs[n_convs++] = &rs[k]->conv_shortcut;
                }
        }
        convs[n_convs++] = &u->down[i].downsampler;
        convs[n_convs++] = &u->up[i].upsampler;
    }
    for (int k = 0; k < 2; k++) {
        convs[n_convs++] = &u->mid.resnets[k].conv1;
        convs[n_convs++] = &u->mid.resnets[k].conv2;
        convs[n_convs++] = &u->mid.resnets[k].conv_shortcut;
    }
    for (int k = 0; k < n_convs; k++) convs[k]->f16_in_f32 = 1;

    const char *unused_name = NULL;
    int unused = sd_weights_unused(w, &unused_name);
    if (unused > 0)
        sd_warn("%s: %d UNet tensors were not used (first: '%s')", sd_weights_source(w), unused,
                unused_name);
    return SD_OK;
}

/* ---- blocks that a gradient step may recompute (sd_checkpoint) ---- */

typedef struct transformer_call {
    const sd_transformer *t;
    int layer; /* the attention-call counter at its first layer */
    sd_unet_place place;
} transformer_call;

/* The block with its cross-attention's value input given (resolved from the hook beforehand), the
 * hook set aside: a rerun must neither ask it again nor let it see the calls twice. */
static sd_tensor *transformer_block(sd_ctx *c, const void *block, sd_tensor *x, sd_tensor *context,
                                    sd_tensor *value) {
    const transformer_call *call = block;
    int layer = call->layer;
    struct sd_attn_hook *hook = c->hook;
    c->hook = NULL;
    sd_tensor *y = sd_transformer_forward(c, call->t, x, context, value, &layer, call->place);
    c->hook = hook;
    return y;
}

/* A transformer block goes through sd_checkpoint (scratch activations, recomputation):
 *  - always without an attention hook;
 *  - with one, only in a gradient step that recomputes, and unless the hook needs the block's maps
 *    (side outputs that must outlive it: the attention loss's) or substitutes a self-attention
 *    value; a cross-attention value substitution (StyleDiffusion's) is resolved here, before the
 *    block, and passed to it as an input. Hooks used in gradient steps must therefore answer
 *    wants_probs and value_input without side effects (the value-capture hook does). A hooked
 *    forward without a gradient (P2P editing, whose controllers count their calls) is left as is. */
static sd_tensor *transformer(sd_ctx *c, const sd_transformer *t, sd_tensor *x, sd_tensor *context, int *layer,
                              sd_unet_place place) {
    if (c->status != SD_OK) return NULL;
    sd_tensor *value = context;
    struct sd_attn_hook *hook = c->hook;
    if (hook && !(c->recompute && c->tape)) return sd_transformer_forward(c, t, x, context, NULL, layer, place);
    if (hook) {
        sd_attn_site sites[2];
        sd_transformer_sites(t, x, context, *layer, place, sites);
        const int maps = hook->wants_probs && (hook->wants_probs(hook, &sites[0]) || hook->wants_probs(hook, &sites[1]));
        const int self_value = hook->value_input && hook->value_input(hook, c, &sites[0], x) != NULL;
        if (maps || self_value) return sd_transformer_forward(c, t, x, context, NULL, layer, place);
        sd_tensor *sub = hook->value_input ? hook->value_input(hook, c, &sites[1], context) : NULL;
        if (c->status != SD_OK) return NULL;
        if (sub) value = sub;
    }
    transformer_call *call = sd_arena_alloc_host(c->arena, sizeof *call); /* lives until the step's backward */
    if (!call) return sd_ctx_fail(c, SD_ERR_OOM, "out of memory");
    *call = (transformer_call){t, *layer, place};
    *layer += 2; /* its self- and cross-attention */
    return sd_checkpoint(c, transformer_block, call, x, context, value);
}

sd_tensor *sd_unet_forward(sd_ctx *c, const sd_unet *u, sd_tensor *x, float t, sd_tensor *context) {
    if (c->status != SD_OK) return NULL;
    sd_tensor *tvec = x ? sd_new4(c, 1, x->shape[0], 0, 0, 0) : NULL;
    if (tvec) sd_ctx_check(c, c->be->fill(sd_f32(tvec), t, sd_numel(tvec)));
    return sd_unet_forward_tvec(c, u, x, tvec, context);
}

sd_tensor *sd_unet_forward_tvec(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *tvec,
                                sd_tensor *context) {
    if (c->status != SD_OK) return NULL;
    const sd_unet_config *cfg = &u->cfg;
    char a[96], b[96];
    if (!x || !context || x->ndim != 4 || x->shape[1] != cfg->in_channels || context->ndim != 3 ||
        context->shape[0] != x->shape[0] || context->shape[2] != cfg->cross_attention_dim)
        return sd_ctx_fail(c, SD_ERR_SHAPE,
                           "unet: latent %s and context %s do not fit (expected (B, %d, H, W) and (B, S, %d))",
                           x ? sd_shape_str(x->ndim, x->shape, a, sizeof a) : "missing",
                           context ? sd_shape_str(context->ndim, context->shape, b, sizeof b) : "missing",
                           cfg->in_channels, cfg->cross_attention_dim);
    const int n = cfg->n_blocks, L = cfg->layers_per_block;
    const int64_t B = x->shape[0];
    if (!tvec || tvec->dtype != SD_F32 || sd_numel(tvec) != B || tvec->device != c->device)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "unet: the timestep tensor must hold %lld F32 values (one per "
                                            "batch row) on the context's device", (long long)B);

    /* Time embedding: sinusoid -> linear -> SiLU -> linear; every resnet projects SiLU(emb). */
    sd_tensor *temb = sd_timestep_embedding(c, tvec, cfg->block_out_channels[0], cfg->flip_sin_to_cos,
                                            (float)cfg->freq_shift);
    temb = sd_linear(c, temb, &u->time_linear_1);
    temb = sd_linear(c, sd_silu(c, temb), &u->time_linear_2);
    sd_tensor *temb_silu = sd_silu(c, temb);

    /* fp16 storage (fast mode, no tape): the latent and the text context are
     * converted once here, the time embedding stays F32 (a bias each resnet adds), the output
     * returns to F32 below */
    const int lowp = sd_ctx_stores_f16(c);
    if (lowp) {
        x = sd_to_channels_last(c, sd_to_dtype(c, x, SD_F16)); /* NCHW where the context keeps it */
        context = sd_to_dtype(c, context, SD_F16);
    }

    int layer = 0; /* attention-call counter handed to the hook */
    sd_tensor *skips[MAX_SKIPS];
    int n_skips = 0;
    sd_tensor *h = sd_conv2d(c, x, &u->conv_in, 1, 1);
    skips[n_skips++] = h;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < L; j++) {
            h = sd_resnet_checkpointed(c, &u->down[i].resnets[j], h, temb_silu);
            if (u->down[i].has_attn)
                h = transformer(c, &u->down[i].attentions[j], h, context, &layer, SD_PLACE_DOWN);
            skips[n_skips++] = h;
        }
        if (u->down[i].has_downsampler) {
            h = sd_conv2d(c, h, &u->down[i].downsampler, 2, 1);
            skips[n_skips++] = h;
        }
    }

    h = sd_resnet_checkpointed(c, &u->mid.resnets[0], h, temb_silu);
    h = transformer(c, &u->mid.attention, h, context, &layer, SD_PLACE_MID);
    h = sd_resnet_checkpointed(c, &u->mid.resnets[1], h, temb_silu);

    for (int i = 0; i < n; i++) {
        for (int j = 0; j < L + 1; j++) {
            if (n_skips <= 0) return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: skip connections exhausted");
            h = sd_concat_channels(c, h, skips[--n_skips]);
            h = sd_resnet_checkpointed(c, &u->up[i].resnets[j], h, temb_silu);
            if (u->up[i].has_attn)
                h = transformer(c, &u->up[i].attentions[j], h, context, &layer, SD_PLACE_UP);
        }
        if (u->up[i].has_upsampler && c->status == SD_OK) {
            /* Upsample to the next skip's size: x2 for latents divisible by 2^(blocks-1), and the
             * same as diffusers' forward_upsample_size path otherwise. */
            const sd_tensor *next = skips[n_skips - 1];
            h = sd_upsample_nearest(c, h, next->shape[2], next->shape[3]);
            h = sd_conv2d(c, h, &u->up[i].upsampler, 1, 1);
        }
    }

    h = sd_group_norm(c, h, &u->conv_norm_out, cfg->norm_num_groups, cfg->norm_eps, 1);
    h = sd_conv2d(c, h, &u->conv_out, 1, 1);
    return lowp ? sd_to_dtype(c, h, SD_F32) : h;
}
