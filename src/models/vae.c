/* vae.c: AutoencoderKL encoder (posterior mean) and decoder for SD v1.x (stylediffusion.md §1.6). */
#include <stdio.h>
#include <string.h>

#include "layers.h"

#define NAME_CAP 256
#define VAE_EPS 1e-6f /* every VAE GroupNorm */

/* The mid block (resnet, single-head self-attention, resnet) of encoder or decoder. */
static sd_status bind_mid(sd_weights *w, const char *prefix, int64_t C, int groups, sd_resnet res[2],
                          sd_norm_w *attn_norm, sd_attention_w *attn) {
    char name[NAME_CAP];
    snprintf(name, sizeof name, "%s.resnets.0", prefix);
    SD_TRY(sd_bind_resnet(w, name, C, C, 0, groups, VAE_EPS, &res[0]));
    snprintf(name, sizeof name, "%s.attentions.0.group_norm", prefix);
    SD_TRY(sd_bind_norm(w, name, C, attn_norm));
    snprintf(name, sizeof name, "%s.attentions.0", prefix);
    SD_TRY(sd_bind_attention(w, name, C, C, 1, 1, attn));
    snprintf(name, sizeof name, "%s.resnets.1", prefix);
    return sd_bind_resnet(w, name, C, C, 0, groups, VAE_EPS, &res[1]);
}

sd_status sd_vae_bind(sd_vae *v, const sd_vae_config *cfg, sd_weights *w) {
    char name[NAME_CAP];
    memset(v, 0, sizeof *v);
    v->cfg = *cfg;
    const int n = cfg->n_blocks, L = cfg->layers_per_block, G = cfg->norm_num_groups;
    const int64_t C0 = cfg->block_out_channels[0], C_last = cfg->block_out_channels[n - 1];
    const int64_t Z = cfg->latent_channels;
    if (n < 1 || n > SD_MAX_BLOCKS || L < 1 || L + 1 > SD_MAX_LAYERS)
        return sd_fail(SD_ERR_UNSUPPORTED, "%s: VAE with %d blocks of %d layers is not supported",
                       sd_weights_source(w), n, L);

    SD_TRY(sd_bind_conv(w, "encoder.conv_in", C0, cfg->in_channels, 3, &v->enc_conv_in));
    int64_t out_ch = C0;
    for (int i = 0; i < n; i++) {
        const int64_t in_ch = out_ch;
        out_ch = cfg->block_out_channels[i];
        for (int j = 0; j < L; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            SD_TRY(sd_bind_resnet(w, name, j == 0 ? in_ch : out_ch, out_ch, 0, G, VAE_EPS,
                                  &v->enc_down[i].resnets[j]));
        }
        if (i < n - 1) {
            v->enc_down[i].has_downsampler = 1;
            snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            SD_TRY(sd_bind_conv(w, name, out_ch, out_ch, 3, &v->enc_down[i].downsampler));
        }
    }
    SD_TRY(bind_mid(w, "encoder.mid_block", C_last, G, v->enc_mid_resnets, &v->enc_mid_attn_norm,
                    &v->enc_mid_attn));
    SD_TRY(sd_bind_norm(w, "encoder.conv_norm_out", C_last, &v->enc_norm_out));
    SD_TRY(sd_bind_conv(w, "encoder.conv_out", 2 * Z, C_last, 3, &v->enc_conv_out));
    SD_TRY(sd_bind_conv(w, "quant_conv", 2 * Z, 2 * Z, 1, &v->quant_conv));

    SD_TRY(sd_bind_conv(w, "post_quant_conv", Z, Z, 1, &v->post_quant_conv));
    SD_TRY(sd_bind_conv(w, "decoder.conv_in", C_last, Z, 3, &v->dec_conv_in));
    SD_TRY(bind_mid(w, "decoder.mid_block", C_last, G, v->dec_mid_resnets, &v->dec_mid_attn_norm,
                    &v->dec_mid_attn));
    out_ch = C_last;
    for (int i = 0; i < n; i++) {
        const int64_t prev_out = out_ch;
        out_ch = cfg->block_out_channels[n - 1 - i];
        for (int j = 0; j < L + 1; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            SD_TRY(sd_bind_resnet(w, name, j == 0 ? prev_out : out_ch, out_ch, 0, G, VAE_EPS,
                                  &v->dec_up[i].resnets[j]));
        }
        if (i < n - 1) {
            v->dec_up[i].has_upsampler = 1;
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            SD_TRY(sd_bind_conv(w, name, out_ch, out_ch, 3, &v->dec_up[i].upsampler));
        }
    }
    SD_TRY(sd_bind_norm(w, "decoder.conv_norm_out", C0, &v->dec_norm_out));
    SD_TRY(sd_bind_conv(w, "decoder.conv_out", cfg->out_channels, C0, 3, &v->dec_conv_out));

    const char *unused_name = NULL;
    int unused = sd_weights_unused(w, &unused_name);
    if (unused > 0)
        sd_warn("%s: %d VAE tensors were not used (first: '%s')", sd_weights_source(w), unused,
                unused_name);
    return SD_OK;
}

static sd_tensor *mid_forward(sd_ctx *c, const sd_vae *v, const sd_resnet res[2],
                              const sd_norm_w *attn_norm, const sd_attention_w *attn, sd_tensor *h) {
    h = sd_resnet_checkpointed(c, &res[0], h, NULL);
    if (c->status != SD_OK) return NULL;
    const int64_t H = h->shape[2], W = h->shape[3];
    sd_tensor *a = sd_group_norm(c, h, attn_norm, v->cfg.norm_num_groups, VAE_EPS, 0);
    a = sd_nchw_to_tokens(c, a);
    a = sd_attention_block(c, attn, a, NULL, NULL); /* single head, not hooked */
    a = sd_tokens_to_nchw(c, a, H, W);
    h = sd_add(c, a, h);
    return sd_resnet_checkpointed(c, &res[1], h, NULL);
}

sd_tensor *sd_vae_encode(sd_ctx *c, const sd_vae *v, sd_tensor *image, sd_tensor **logvar) {
    if (c->status != SD_OK) return NULL;
    const sd_vae_config *cfg = &v->cfg;
    const int n = cfg->n_blocks;
    const int64_t factor = (int64_t)1 << (n - 1);
    char a[96];
    if (!image || image->ndim != 4 || image->shape[1] != cfg->in_channels ||
        image->shape[2] % factor || image->shape[3] % factor)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "vae encode: image %s must be (B, %d, H, W) with H, W multiples of %lld",
                           image ? sd_shape_str(image->ndim, image->shape, a, sizeof a) : "missing",
                           cfg->in_channels, (long long)factor);
    sd_tensor *h = sd_conv2d(c, image, &v->enc_conv_in, 1, 1);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < cfg->layers_per_block; j++)
            h = sd_resnet_checkpointed(c, &v->enc_down[i].resnets[j], h, NULL);
        if (v->enc_down[i].has_downsampler) /* pad right and bottom by one, stride 2, no padding */
            h = sd_conv2d_pad4(c, h, &v->enc_down[i].downsampler, 2, 0, 0, 1, 1);
    }
    h = mid_forward(c, v, v->enc_mid_resnets, &v->enc_mid_attn_norm, &v->enc_mid_attn, h);
    h = sd_group_norm(c, h, &v->enc_norm_out, cfg->norm_num_groups, VAE_EPS, 1);
    h = sd_conv2d(c, h, &v->enc_conv_out, 1, 1);
    sd_tensor *moments = sd_conv2d(c, h, &v->quant_conv, 1, 0); /* [B, 2Z, h, w] */
    if (c->status != SD_OK) return NULL;

    const int64_t B = moments->shape[0], Z = cfg->latent_channels;
    const int64_t hh = moments->shape[2], ww = moments->shape[3], plane = Z * hh * ww;
    sd_tensor *mean = sd_new4(c, 4, B, Z, hh, ww);
    sd_tensor *lv = logvar ? sd_new4(c, 4, B, Z, hh, ww) : NULL;
    if (!mean || (logvar && !lv)) return NULL;
    for (int64_t b = 0; b < B; b++) {
        sd_ctx_check(c, c->be->copy(sd_f32(mean) + b * plane, sd_f32(moments) + b * 2 * plane, plane));
        if (lv) sd_ctx_check(c, c->be->copy(sd_f32(lv) + b * plane, sd_f32(moments) + (2 * b + 1) * plane, plane));
    }
    if (lv) *logvar = sd_clamp(c, lv, -30.0f, 20.0f); /* reported only; the methods use the mean */
    return c->status == SD_OK ? mean : NULL;
}

sd_tensor *sd_vae_decode(sd_ctx *c, const sd_vae *v, sd_tensor *z) {
    if (c->status != SD_OK) return NULL;
    const sd_vae_config *cfg = &v->cfg;
    char a[96];
    if (!z || z->ndim != 4 || z->shape[1] != cfg->latent_channels)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "vae decode: latent %s must be (B, %d, h, w)",
                           z ? sd_shape_str(z->ndim, z->shape, a, sizeof a) : "missing",
                           cfg->latent_channels);
    sd_tensor *h = sd_conv2d(c, z, &v->post_quant_conv, 1, 0);
    h = sd_conv2d(c, h, &v->dec_conv_in, 1, 1);
    h = mid_forward(c, v, v->dec_mid_resnets, &v->dec_mid_attn_norm, &v->dec_mid_attn, h);
    for (int i = 0; i < cfg->n_blocks; i++) {
        for (int j = 0; j < cfg->layers_per_block + 1; j++)
            h = sd_resnet_checkpointed(c, &v->dec_up[i].resnets[j], h, NULL);
        if (v->dec_up[i].has_upsampler && c->status == SD_OK) {
            h = sd_upsample_nearest(c, h, 2 * h->shape[2], 2 * h->shape[3]);
            h = sd_conv2d(c, h, &v->dec_up[i].upsampler, 1, 1);
        }
    }
    h = sd_group_norm(c, h, &v->dec_norm_out, cfg->norm_num_groups, VAE_EPS, 1);
    return sd_conv2d(c, h, &v->dec_conv_out, 1, 1);
}
