/* unet.c: UNet2DConditionModel for SD v1.x (stylediffusion.md §1.5), block layout from the config. */
#include <stdio.h>
#include <string.h>

#include "layers.h"
#include "sd/autograd.h"

#define NAME_CAP 256

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
    sd_tensor *stream; /* NULL, or the block's residual stream after its self-attention (a prefix's) */
} transformer_call;

/* The block on its cross-attention's keys and values (projected at the start of the call), the
 * hook set aside: a rerun must neither ask it again nor let it see the calls twice. */
static sd_tensor *transformer_block(sd_ctx *c, const void *block, sd_tensor *x, sd_tensor *k, sd_tensor *v) {
    const transformer_call *call = block;
    int layer = call->layer;
    struct sd_attn_hook *hook = c->hook;
    c->hook = NULL;
    sd_tensor *y = sd_transformer_forward(c, call->t, x, call->stream, k, v, &layer, call->place);
    c->hook = hook;
    return y;
}

/* A transformer block goes through sd_checkpoint (scratch activations, recomputation):
 *  - always without an attention hook;
 *  - with one, only in a gradient step that recomputes, and unless the hook needs the block's maps
 *    (side outputs that must outlive it: the attention loss's) or substitutes a self-attention
 *    value (a cross-attention value substitution, StyleDiffusion's, is already in v: the call's
 *    start resolved it). Hooks used in gradient steps must therefore answer wants_probs and
 *    value_input without side effects (the value-capture hook does). A hooked forward without a
 *    gradient (P2P editing, whose controllers count their calls) is left as is.
 * `stream`: see sd_transformer_forward; k, v: the cross-attention's keys and values. */
static sd_tensor *transformer(sd_ctx *c, const sd_transformer *t, sd_tensor *x, sd_tensor *stream, sd_tensor *k,
                              sd_tensor *v, int *layer, sd_unet_place place) {
    if (c->status != SD_OK) return NULL;
    struct sd_attn_hook *hook = c->hook;
    if (hook && !(c->recompute && c->tape)) return sd_transformer_forward(c, t, x, stream, k, v, layer, place);
    if (hook) {
        sd_attn_site sites[2];
        sd_transformer_sites(t, x, k, *layer, place, sites);
        const int maps = hook->wants_probs && (hook->wants_probs(hook, &sites[0]) || hook->wants_probs(hook, &sites[1]));
        const int self_value = hook->value_input && hook->value_input(hook, c, &sites[0], x) != NULL;
        if (maps || self_value) return sd_transformer_forward(c, t, x, stream, k, v, layer, place);
        if (c->status != SD_OK) return NULL;
    }
    transformer_call *call = sd_arena_alloc_host(c->arena, sizeof *call); /* lives until the step's backward */
    if (!call) return sd_ctx_fail(c, SD_ERR_OOM, "out of memory");
    *call = (transformer_call){t, *layer, place, stream};
    *layer += 2; /* its self- and cross-attention */
    return sd_checkpoint(c, transformer_block, call, x, k, v);
}

/* The self-attention half of the first transformer, for a prefix (no gradient: its activations
 * live in the scratch arena while it runs, only the stream is kept). */
typedef struct self_half_call {
    const sd_transformer *t;
    sd_attn_site site;
} self_half_call;

static sd_tensor *self_half_block(sd_ctx *c, const void *block, sd_tensor *x, sd_tensor *unused, sd_tensor *unused2) {
    (void)unused, (void)unused2;
    const self_half_call *call = block;
    return sd_transformer_self_half(c, call->t, x, &call->site, 1);
}

/* ---- the forward as a walk: a prefix (no context), then the rest ---- */

/* A UNet call in progress. The down path is walked in units: in down block i, unit i(L+1)+j is
 * resnet j with its transformer and skip (j < L), unit i(L+1)+L the downsampler; then the mid
 * block's first resnet with its transformer (unit n(L+1)) and its second resnet. */
typedef struct unet_walk {
    sd_tensor *h;
    sd_tensor *skips[SD_UNET_MAX_SKIPS];
    int n_skips;
    sd_tensor *temb_proj[SD_UNET_MAX_RESNETS]; /* every resnet's, in call order */
    int n_projections, next_resnet;
    int layer;     /* attention-call counter handed to the hook; transformer layer/2 is next */
    int next_unit; /* the down path's next unit */
    /* every transformer's cross-attention keys and values [B, Sk, C] in call order, made at the
     * start of the call, and the map size [H, W] each was made for (where its hook site was asked) */
    sd_tensor *cross_k[SD_UNET_MAX_TRANSFORMERS], *cross_v[SD_UNET_MAX_TRANSFORMERS];
    int64_t cross_hw[SD_UNET_MAX_TRANSFORMERS][2];
    int n_cross;
} unet_walk;

static int mid_unit(const sd_unet *u) { return u->cfg.n_blocks * (u->cfg.layers_per_block + 1); }

/* The transformer of a down-path unit (and where it sits), or NULL. */
static const sd_transformer *unit_transformer(const sd_unet *u, int unit, sd_unet_place *place) {
    const int L = u->cfg.layers_per_block, i = unit / (L + 1), j = unit % (L + 1);
    if (unit == mid_unit(u)) {
        *place = SD_PLACE_MID;
        return &u->mid.attention;
    }
    *place = SD_PLACE_DOWN;
    return unit < mid_unit(u) && j < L && u->down[i].has_attn ? &u->down[i].attentions[j] : NULL;
}

static sd_tensor *walk_resnet(sd_ctx *c, unet_walk *w, const sd_resnet *r) {
    if (w->next_resnet >= w->n_projections) return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: time projections exhausted");
    return sd_resnet_checkpointed(c, r, w->h, w->temb_proj[w->next_resnet++]);
}

/* The next transformer of the walk on w->h (stream: see sd_transformer_forward). */
static sd_tensor *walk_transformer(sd_ctx *c, unet_walk *w, const sd_transformer *t, sd_tensor *stream,
                                   sd_unet_place place) {
    const int i = w->layer / 2;
    if (c->status != SD_OK) return NULL;
    if (i >= w->n_cross) return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: cross-attention projections exhausted");
    if (w->h->shape[2] != w->cross_hw[i][0] || w->h->shape[3] != w->cross_hw[i][1])
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: transformer %d runs on a %lldx%lld map, its cross-attention "
                           "was prepared for %lldx%lld", i, (long long)w->h->shape[2], (long long)w->h->shape[3],
                           (long long)w->cross_hw[i][0], (long long)w->cross_hw[i][1]);
    return transformer(c, t, w->h, stream, w->cross_k[i], w->cross_v[i], &w->layer, place);
}

static void push_skip(sd_ctx *c, unet_walk *w) {
    if (w->n_skips >= SD_UNET_MAX_SKIPS) sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: too many skip connections");
    else w->skips[w->n_skips++] = w->h;
}

/* The down path from w->next_unit on. With `prefix` set it stops at the first transformer, after
 * the resnet before it: w->h is that transformer's input and w->next_unit its unit. Without, it
 * runs every transformer on the call's keys and values. */
static void walk_down(sd_ctx *c, const sd_unet *u, unet_walk *w, int prefix) {
    const int L = u->cfg.layers_per_block, mid = mid_unit(u);
    for (; w->next_unit <= mid + 1 && c->status == SD_OK; w->next_unit++) {
        const int unit = w->next_unit, i = unit / (L + 1), j = unit % (L + 1);
        sd_unet_place place;
        const sd_transformer *t = unit_transformer(u, unit, &place);
        if (unit >= mid) {
            w->h = walk_resnet(c, w, &u->mid.resnets[unit - mid]);
        } else if (j < L) {
            w->h = walk_resnet(c, w, &u->down[i].resnets[j]);
        } else if (u->down[i].has_downsampler) {
            w->h = sd_conv2d(c, w->h, &u->down[i].downsampler, 2, 1);
            push_skip(c, w);
            continue;
        } else {
            continue;
        }
        if (t && prefix) return;
        if (t) w->h = walk_transformer(c, w, t, NULL, place);
        if (unit < mid) push_skip(c, w);
    }
}

/* Validates a call's latent and timesteps (context: NULL, or the call's text context). */
static sd_status check_inputs(sd_ctx *c, const sd_unet *u, const sd_tensor *x, const sd_tensor *tvec,
                              const sd_tensor *context) {
    const sd_unet_config *cfg = &u->cfg;
    char a[96], b[96];
    if (!x || x->ndim != 4 || x->shape[1] != cfg->in_channels ||
        (context && (context->ndim != 3 || context->shape[0] != x->shape[0] ||
                     context->shape[2] != cfg->cross_attention_dim))) {
        sd_ctx_fail(c, SD_ERR_SHAPE, "unet: latent %s and context %s do not fit (expected (B, %d, H, W) and (B, S, %d))",
                    x ? sd_shape_str(x->ndim, x->shape, a, sizeof a) : "missing",
                    context ? sd_shape_str(context->ndim, context->shape, b, sizeof b) : "missing",
                    cfg->in_channels, cfg->cross_attention_dim);
        return c->status;
    }
    const int64_t B = x->shape[0];
    if (!tvec || tvec->dtype != SD_F32 || sd_numel(tvec) != B || tvec->device != c->device)
        sd_ctx_fail(c, SD_ERR_SHAPE, "unet: the timestep tensor must hold %lld F32 values (one per batch row) on "
                                     "the context's device", (long long)B);
    return c->status;
}

/* Every resnet of the UNet in call order. */
static int unet_resnets(const sd_unet *u, const sd_resnet **out) {
    const int n = u->cfg.n_blocks, L = u->cfg.layers_per_block;
    int k = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < L; j++) out[k++] = &u->down[i].resnets[j];
    out[k++] = &u->mid.resnets[0];
    out[k++] = &u->mid.resnets[1];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < L + 1; j++) out[k++] = &u->up[i].resnets[j];
    return k;
}

sd_status sd_unet_prefix_compute(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *tvec, sd_unet_prefix *p) {
    memset(p, 0, sizeof *p);
    if (c->status != SD_OK || check_inputs(c, u, x, tvec, NULL)) return c->status;
    if (sd_tape_needs_grad(c, x) || sd_tape_needs_grad(c, tvec))
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet prefix: the latent or the timestep needs a gradient"),
               c->status;
    const sd_unet_config *cfg = &u->cfg;
    unet_walk w = {0};

    /* Time embedding: sinusoid -> linear -> SiLU -> linear; every resnet projects SiLU(emb). */
    sd_tensor *temb = sd_timestep_embedding(c, tvec, cfg->block_out_channels[0], cfg->flip_sin_to_cos,
                                            (float)cfg->freq_shift);
    temb = sd_linear(c, temb, &u->time_linear_1);
    temb = sd_linear(c, sd_silu(c, temb), &u->time_linear_2);
    sd_tensor *temb_silu = sd_silu(c, temb);
    const sd_resnet *resnets[SD_UNET_MAX_RESNETS];
    w.n_projections = unet_resnets(u, resnets);
    /* in one product per weight shape where the storage allows (sd_linear_grouped; SD v1.5's 22
     * resnets: 3) */
    sd_tensor *xs[SD_UNET_MAX_RESNETS], *projections[SD_UNET_MAX_RESNETS];
    const sd_linear_w *ls[SD_UNET_MAX_RESNETS];
    int n_temb = 0, index[SD_UNET_MAX_RESNETS];
    for (int k = 0; k < w.n_projections; k++) {
        index[k] = resnets[k]->has_temb ? n_temb : -1;
        if (resnets[k]->has_temb) xs[n_temb] = temb_silu, ls[n_temb++] = &resnets[k]->time_emb_proj;
    }
    sd_linear_grouped(c, xs, ls, n_temb, projections);
    for (int k = 0; k < w.n_projections; k++) w.temb_proj[k] = index[k] >= 0 ? projections[index[k]] : NULL;

    /* fp16 storage (fast mode without a tape, or a gradient step that stores fp16): the latent is
     * converted once here (the context in sd_unet_forward_from), the time embedding stays F32 (a
     * bias each resnet adds), the output returns to F32 at the end */
    const int lowp = sd_ctx_stores_f16(c);
    if (lowp) x = sd_to_channels_last(c, sd_to_dtype(c, x, SD_F16)); /* NCHW where the context keeps it */
    w.h = sd_conv2d(c, x, &u->conv_in, 1, 1);
    push_skip(c, &w);
    walk_down(c, u, &w, 1);

    sd_unet_place place;
    const sd_transformer *t = unit_transformer(u, w.next_unit, &place);
    sd_attn_site sites[2];
    if (c->status == SD_OK && !t) sd_ctx_fail(c, SD_ERR_INTERNAL, "unet prefix: no transformer");
    if (c->status != SD_OK) return c->status;
    sd_transformer_sites(t, w.h, NULL, 0, place, sites);
    self_half_call call = {t, sites[0]};
    /* under a hook as transformer() runs a hooked block outside a gradient step: in the caller's
     * arena, where maps a controller keeps outlive the half */
    sd_tensor *stream = c->hook ? self_half_block(c, &call, w.h, NULL, NULL)
                                : sd_checkpoint(c, self_half_block, &call, w.h, NULL, NULL);
    if (c->status != SD_OK) return c->status;

    p->next_unit = w.next_unit;
    p->n_resnets = w.next_resnet;
    p->n_projections = w.n_projections;
    for (int k = 0; k < w.n_projections; k++)
        if (w.temb_proj[k]) p->temb_proj[k] = *w.temb_proj[k];
    p->n_skips = w.n_skips;
    for (int k = 0; k < w.n_skips; k++) p->skips[k] = *w.skips[k];
    p->h = *w.h;
    p->stream = *stream;
    p->storage = lowp ? SD_F16 : SD_F32;
    p->ready = 1;
    return SD_OK;
}

sd_status sd_unet_prefix_for_tape(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *tvec, sd_tape *tape,
                                  sd_unet_prefix *p) {
    sd_tape *outer = c->tape;
    sd_ctx_set_tape(c, tape);
    const int recorded = sd_tape_size(tape);
    sd_unet_prefix_compute(c, u, x, tvec, p);
    if (c->status == SD_OK && sd_tape_size(tape) != recorded)
        sd_ctx_fail(c, SD_ERR_INTERNAL, "unet prefix: %d ops recorded on the steps' tape", sd_tape_size(tape) - recorded);
    sd_ctx_set_tape(c, outer);
    return c->status;
}

/* The map size [H, W] at each level of a call on an H x W latent (conv_in keeps the size; each
 * downsampler is a 3x3 convolution of stride 2 and padding 1). */
static void level_sizes(const sd_unet *u, int64_t h, int64_t w, int64_t hw[SD_MAX_BLOCKS][2]) {
    hw[0][0] = h, hw[0][1] = w;
    for (int l = 1; l < u->cfg.n_blocks; l++)
        for (int d = 0; d < 2; d++) hw[l][d] = (hw[l - 1][d] - 1) / 2 + 1;
}

/* Every transformer of the UNet in call order, with its place and level (0: the latent's
 * resolution, one more after each downsampler; the up path mirrors the down path). */
static int unet_transformers(const sd_unet *u, const sd_transformer **ts, sd_unet_place *places, int *levels) {
    const int n = u->cfg.n_blocks, L = u->cfg.layers_per_block;
    int k = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < L && u->down[i].has_attn; j++, k++)
            ts[k] = &u->down[i].attentions[j], places[k] = SD_PLACE_DOWN, levels[k] = i;
    ts[k] = &u->mid.attention, places[k] = SD_PLACE_MID, levels[k++] = n - 1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < L + 1 && u->up[i].has_attn; j++, k++)
            ts[k] = &u->up[i].attentions[j], places[k] = SD_PLACE_UP, levels[k] = n - 1 - i;
    return k;
}

/* The cross-attentions' keys and values of the whole call into w, before any of them runs: the
 * hook's value substitutes asked at each cross site (value_input has no side effects: attn.h), each
 * distinct one stored like the context once, then the projections grouped by input and weight
 * shape (sd_cross_attention_kv). The site sizes follow from the latent's (conv_in's output,
 * p->skips[0]; level_sizes). */
static sd_status cross_projections(sd_ctx *c, const sd_unet *u, const sd_unet_prefix *p, sd_tensor *context,
                                   unet_walk *w) {
    const sd_transformer *ts[SD_UNET_MAX_TRANSFORMERS];
    sd_unet_place places[SD_UNET_MAX_TRANSFORMERS];
    int levels[SD_UNET_MAX_TRANSFORMERS];
    const int n = unet_transformers(u, ts, places, levels);
    int64_t hw[SD_MAX_BLOCKS][2];
    level_sizes(u, p->skips[0].shape[2], p->skips[0].shape[3], hw);
    const sd_attention_w *attn[SD_UNET_MAX_TRANSFORMERS];
    sd_tensor *values[SD_UNET_MAX_TRANSFORMERS];
    sd_tensor *asked[SD_UNET_MAX_TRANSFORMERS], *stored[SD_UNET_MAX_TRANSFORMERS]; /* substitutes, as stored */
    int n_subs = 0;
    struct sd_attn_hook *hook = c->hook;
    for (int i = 0; i < n && c->status == SD_OK; i++) {
        attn[i] = &ts[i]->attn2;
        values[i] = NULL;
        w->cross_hw[i][0] = hw[levels[i]][0], w->cross_hw[i][1] = hw[levels[i]][1];
        if (!hook || !hook->value_input) continue;
        sd_tensor map = {.ndim = 4, .shape = {p->h.shape[0], ts[i]->attn2.to_q.weight->shape[1], w->cross_hw[i][0],
                                              w->cross_hw[i][1]}}; /* for the site's sizes only */
        sd_attn_site sites[2];
        sd_transformer_sites(ts[i], &map, context, 2 * i, places[i], sites);
        sd_tensor *sub = hook->value_input(hook, c, &sites[1], context);
        if (!sub) continue;
        int s = 0;
        while (s < n_subs && asked[s] != sub) s++;
        if (s == n_subs) {
            asked[n_subs] = sub;
            stored[n_subs++] = sd_to_dtype(c, sub, context->dtype);
        }
        values[i] = stored[s];
    }
    w->n_cross = n;
    return sd_cross_attention_kv(c, attn, n, context, values, w->cross_k, w->cross_v);
}

/* Whether the hook acts on the self-attention of site (wants its map or substitutes its value). */
static int hook_acts_on(sd_ctx *c, struct sd_attn_hook *hook, const sd_attn_site *site, sd_tensor *x) {
    return hook && ((hook->wants_probs && hook->wants_probs(hook, site)) ||
                    (hook->value_input && hook->value_input(hook, c, site, x)));
}

int sd_unet_hook_spares_prefix(sd_ctx *c, const sd_unet *u, const sd_tensor *x) {
    if (!c->hook) return 1;
    const sd_transformer *ts[SD_UNET_MAX_TRANSFORMERS];
    sd_unet_place places[SD_UNET_MAX_TRANSFORMERS];
    int levels[SD_UNET_MAX_TRANSFORMERS];
    unet_transformers(u, ts, places, levels);
    int64_t hw[SD_MAX_BLOCKS][2];
    level_sizes(u, x->shape[2], x->shape[3], hw);
    /* the self-attention's input as a header (shape, dtype and device as the call would store it;
     * no data: the call has not run) */
    sd_tensor map = {.ndim = 4, .shape = {x->shape[0], ts[0]->attn1.to_q.weight->shape[1], hw[levels[0]][0],
                                          hw[levels[0]][1]},
                     .dtype = sd_ctx_stores_f16(c) ? SD_F16 : SD_F32, .device = c->device, .tape_index = -1};
    sd_attn_site sites[2];
    sd_transformer_sites(ts[0], &map, NULL, 0, places[0], sites);
    return !hook_acts_on(c, c->hook, &sites[0], &map);
}

/* The rest of a call from its prefix: `hook_checked` is set where the hook already saw the first
 * self-attention in this call (sd_unet_forward_tvec). */
static sd_tensor *forward_from(sd_ctx *c, const sd_unet *u, sd_unet_prefix *p, sd_tensor *context, int hook_checked) {
    if (c->status != SD_OK) return NULL;
    if (!p || !p->ready) return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: a call from a prefix that was not computed");
    char a[96], b[96];
    const sd_unet_config *cfg = &u->cfg;
    if (!context || context->ndim != 3 || context->shape[0] != p->h.shape[0] ||
        context->shape[2] != cfg->cross_attention_dim)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "unet: context %s does not fit a call of batch %lld (expected (%lld, S, %d))",
                           context ? sd_shape_str(context->ndim, context->shape, a, sizeof a) : "missing",
                           (long long)p->h.shape[0], (long long)p->h.shape[0], cfg->cross_attention_dim);
    const int lowp = sd_ctx_stores_f16(c);
    if ((lowp ? SD_F16 : SD_F32) != p->storage)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: the prefix stores %s maps, this call would store %s (make the "
                           "prefix with the call's tape set)", sd_dtype_name(p->storage), sd_dtype_name(lowp ? SD_F16 : SD_F32));
    sd_unet_place place;
    const sd_transformer *t = unit_transformer(u, p->next_unit, &place);
    if (!hook_checked && c->hook) {
        sd_attn_site sites[2];
        sd_transformer_sites(t, &p->h, context, 0, place, sites);
        if (hook_acts_on(c, c->hook, &sites[0], &p->h))
            return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: the attention hook acts on the first self-attention (%s, "
                               "layer 0), which a prefix computed without it", sd_shape_str(p->h.ndim, p->h.shape, b, sizeof b));
    }
    if (lowp) context = sd_to_dtype(c, context, SD_F16);

    unet_walk w = {0};
    w.n_projections = p->n_projections;
    for (int k = 0; k < p->n_projections; k++) w.temb_proj[k] = p->temb_proj[k].data ? &p->temb_proj[k] : NULL;
    w.next_resnet = p->n_resnets;
    w.n_skips = p->n_skips;
    for (int k = 0; k < p->n_skips; k++) w.skips[k] = &p->skips[k];
    w.next_unit = p->next_unit;
    w.h = &p->h;
    if (cross_projections(c, u, p, context, &w)) return NULL;
    w.h = walk_transformer(c, &w, t, &p->stream, place);
    if (w.next_unit < mid_unit(u)) push_skip(c, &w);
    w.next_unit++;
    walk_down(c, u, &w, 0);

    const int n = cfg->n_blocks, L = cfg->layers_per_block;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < L + 1; j++) {
            if (w.n_skips <= 0) return sd_ctx_fail(c, SD_ERR_INTERNAL, "unet: skip connections exhausted");
            w.h = sd_concat_channels(c, w.h, w.skips[--w.n_skips]);
            w.h = walk_resnet(c, &w, &u->up[i].resnets[j]);
            if (u->up[i].has_attn)
                w.h = walk_transformer(c, &w, &u->up[i].attentions[j], NULL, SD_PLACE_UP);
        }
        if (u->up[i].has_upsampler && c->status == SD_OK) {
            /* Upsample to the next skip's size: x2 for latents divisible by 2^(blocks-1), and the
             * same as diffusers' forward_upsample_size path otherwise. */
            const sd_tensor *next = w.skips[w.n_skips - 1];
            w.h = sd_upsample_nearest(c, w.h, next->shape[2], next->shape[3]);
            w.h = sd_conv2d(c, w.h, &u->up[i].upsampler, 1, 1);
        }
    }

    sd_tensor *h = sd_group_norm(c, w.h, &u->conv_norm_out, cfg->norm_num_groups, cfg->norm_eps, 1);
    h = sd_conv2d(c, h, &u->conv_out, 1, 1);
    return lowp ? sd_to_dtype(c, h, SD_F32) : h;
}

sd_tensor *sd_unet_forward_from(sd_ctx *c, const sd_unet *u, sd_unet_prefix *p, sd_tensor *context) {
    return forward_from(c, u, p, context, 0);
}

sd_tensor *sd_unet_forward(sd_ctx *c, const sd_unet *u, sd_tensor *x, float t, sd_tensor *context) {
    if (c->status != SD_OK) return NULL;
    sd_tensor *tvec = x ? sd_new4(c, 1, x->shape[0], 0, 0, 0) : NULL;
    if (tvec) sd_ctx_check(c, c->be->fill(sd_f32(tvec), t, sd_numel(tvec)));
    return sd_unet_forward_tvec(c, u, x, tvec, context);
}

sd_tensor *sd_unet_forward_tvec(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *tvec,
                                sd_tensor *context) {
    if (c->status != SD_OK || check_inputs(c, u, x, tvec, context)) return NULL;
    /* about 20 KB of tensor headers, in the arena's host memory: the tape's nodes may point at
     * them until the step's backward (as at a transformer_call) */
    sd_unet_prefix *p = sd_arena_alloc_host(c->arena, sizeof *p);
    if (!p) return sd_ctx_fail(c, SD_ERR_OOM, "out of memory");
    return sd_unet_prefix_compute(c, u, x, tvec, p) == SD_OK ? forward_from(c, u, p, context, 1) : NULL;
}
