/* mapping_net.c: StyleDiffusion's mapping network (see mapping_net.h), built from nn ops so the
 * tape differentiates it: 1x1 convolutions, a one-channel-per-group GroupNorm (BatchNorm with
 * batch statistics of a single sample), leaky ReLU. */
#include "sd/mapping_net.h"

#include <math.h>
#include <string.h>

const char *const sd_mapping_param_names[SD_MAP_N_PARAMS] = {
    "conv_start.weight",   "conv_start.bias",   "conv_block.0.weight", "conv_block.0.bias",
    "conv_block.1.weight", "conv_block.1.bias", "conv_end.weight",     "conv_end.bias",
};

#define BN_EPS 1e-5f
#define LEAKY_SLOPE 0.01f

/* Shapes of the parameters for `tokens` input channels. */
static void param_shape(int i, int tokens, int *ndim, int64_t shape[4]) {
    const int64_t in = (i == SD_MAP_START_W) ? tokens : SD_MAP_CHANNELS;
    if (i == SD_MAP_START_W || i == SD_MAP_BLOCK_W || i == SD_MAP_END_W) {
        *ndim = 4;
        shape[0] = SD_MAP_CHANNELS;
        shape[1] = in;
        shape[2] = shape[3] = 1;
    } else {
        *ndim = 1;
        shape[0] = SD_MAP_CHANNELS;
    }
}

sd_status sd_mapping_net_init(sd_ctx *c, sd_mapping_net *m, int tokens, sd_rng *rng) {
    memset(m, 0, sizeof *m);
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) {
        int ndim;
        int64_t shape[4];
        param_shape(i, tokens, &ndim, shape);
        sd_tensor *host = sd_tensor_new(SD_F32, ndim, shape);
        if (!host) {
            sd_mapping_net_free(m);
            return SD_ERR_OOM;
        }
        float *x = sd_f32(host);
        const int64_t n = sd_numel(host);
        if (i == SD_MAP_BN_W) {
            for (int64_t j = 0; j < n; j++) x[j] = 1.0f;
        } else if (i != SD_MAP_BN_B) {
            /* kaiming_uniform(a = sqrt 5) for weights and the bias rule both give ±1/sqrt(fan_in) */
            const int64_t fan_in = (i == SD_MAP_START_W || i == SD_MAP_START_B) ? tokens : SD_MAP_CHANNELS;
            const float bound = 1.0f / sqrtf((float)fan_in);
            for (int64_t j = 0; j < n; j++)
                x[j] = bound * (2.0f * (float)(sd_rng_u32(rng) >> 8) * (1.0f / 16777216.0f) - 1.0f);
        }
        m->params[i] = sd_param_new(c, host, sd_mapping_param_names[i]);
        sd_tensor_free(host);
        if (!m->params[i]) {
            sd_mapping_net_free(m);
            return c->status ? c->status : SD_ERR_OOM;
        }
    }
    return SD_OK;
}

sd_status sd_mapping_net_from_host(sd_ctx *c, sd_mapping_net *m, sd_tensor *const host[SD_MAP_N_PARAMS]) {
    memset(m, 0, sizeof *m);
    const int tokens = host[SD_MAP_START_W] ? (int)host[SD_MAP_START_W]->shape[1] : 0;
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) {
        int ndim;
        int64_t shape[4];
        param_shape(i, tokens, &ndim, shape);
        const sd_tensor *h = host[i];
        char want[64], got[64];
        if (!h || sd_numel(h) != sd_shape_numel(ndim, shape) || h->dtype != SD_F32 || h->shape[0] != shape[0]) {
            sd_mapping_net_free(m);
            return sd_fail(SD_ERR_SHAPE, "mapping network '%s': expected %s values shaped %s, got %s",
                           sd_mapping_param_names[i], "F32", sd_shape_str(ndim, shape, want, sizeof want),
                           h ? sd_shape_str(h->ndim, h->shape, got, sizeof got) : "nothing");
        }
        sd_tensor view = sd_view(h, ndim, shape);
        m->params[i] = sd_param_new(c, &view, sd_mapping_param_names[i]);
        if (!m->params[i]) {
            sd_mapping_net_free(m);
            return c->status ? c->status : SD_ERR_OOM;
        }
    }
    return SD_OK;
}

sd_status sd_mapping_net_copy(sd_ctx *c, sd_mapping_net *dst, const sd_mapping_net *src) {
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) SD_TRY(sd_param_copy(c, dst->params[i], src->params[i]));
    return SD_OK;
}

void sd_mapping_net_free(sd_mapping_net *m) {
    for (int i = 0; i < SD_MAP_N_PARAMS; i++) {
        sd_tensor_free(m->params[i]);
        m->params[i] = NULL;
    }
}

sd_tensor *sd_mapping_forward(sd_ctx *c, const sd_mapping_net *m, sd_tensor *features) {
    if (c->status != SD_OK) return NULL;
    const int64_t tokens = m->params[SD_MAP_START_W]->shape[1];
    if (!features || features->ndim != 3 || features->shape[0] != 1 || features->shape[1] != tokens)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "mapping network: features must be (1, %lld, L)", (long long)tokens);
    const int64_t L = features->shape[2];
    /* (1, tokens, L) as an NCHW map (1, tokens, L, 1): each Conv1d(k=1) is a 1x1 convolution */
    sd_tensor *x = sd_reshape4(c, features, 4, 1, tokens, L, 1);
    const sd_conv_w start = {m->params[SD_MAP_START_W], m->params[SD_MAP_START_B], 0};
    const sd_conv_w block = {m->params[SD_MAP_BLOCK_W], m->params[SD_MAP_BLOCK_B], 0};
    const sd_conv_w end = {m->params[SD_MAP_END_W], m->params[SD_MAP_END_B], 0};
    const sd_norm_w bn = {m->params[SD_MAP_BN_W], m->params[SD_MAP_BN_B]};
    sd_tensor *h = sd_conv2d(c, x, &start, 1, 0);
    h = sd_conv2d(c, h, &block, 1, 0);
    h = sd_group_norm(c, h, &bn, SD_MAP_CHANNELS, BN_EPS, 0); /* = BatchNorm1d, batch statistics */
    h = sd_unary_param(c, SD_UNARY_LEAKY_RELU, h, LEAKY_SLOPE);
    h = sd_conv2d(c, h, &end, 1, 0);
    return sd_reshape4(c, h, 2, SD_MAP_CHANNELS, L, 0, 0);
}

sd_tensor *sd_mapping_value_input(sd_ctx *c, sd_tensor *o, sd_tensor *text) {
    if (c->status != SD_OK) return NULL;
    if (!o || !text || text->ndim != 3 || text->shape[0] != 1 || text->shape[1] != SD_MAP_PROMPT_TOKENS ||
        o->ndim != 2 || o->shape[0] != SD_MAP_CHANNELS || o->shape[1] != text->shape[2])
        return sd_ctx_fail(c, SD_ERR_SHAPE, "mapping value input: text (1, 77, L) and output (154, L) must agree");
    const int64_t L = text->shape[2];
    sd_tensor *scale = sd_reshape4(c, sd_slice0(c, o, 0, SD_MAP_PROMPT_TOKENS), 3, 1, SD_MAP_PROMPT_TOKENS, L, 0);
    sd_tensor *shift = sd_reshape4(c, sd_slice0(c, o, SD_MAP_PROMPT_TOKENS, SD_MAP_PROMPT_TOKENS), 3, 1,
                                   SD_MAP_PROMPT_TOKENS, L, 0);
    return sd_add(c, sd_mul(c, text, scale), shift);
}
