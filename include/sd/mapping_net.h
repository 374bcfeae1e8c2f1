/* mapping_net.h: StyleDiffusion's per-timestep mapping network M_i (stylediffusion.md §3.3).
 *
 * The 197 CLIP image tokens are channels and their feature width L the length axis, so every
 * Conv1d with kernel 1 is a token-mixing matrix applied to each feature column:
 *   X (1, 197, L) -> conv_start 197->154 -> [conv 154->154 -> BatchNorm -> LeakyReLU(0.01)]
 *                 -> conv_end 154->154 -> O (1, 154, L);  S = O[:, :77], B = O[:, 77:]
 * and the value input of the conditional pass's cross-attention layers is c ⊙ S + B.
 * BatchNorm always uses the statistics of the one sample over L (the reference never leaves
 * train mode), i.e. a GroupNorm with one channel per group. */
#ifndef SD_MAPPING_NET_H
#define SD_MAPPING_NET_H

#include "sd/autograd.h"

#define SD_MAP_CHANNELS 154   /* 2 x 77: scale rows, then shift rows */
#define SD_MAP_PROMPT_TOKENS 77
#define SD_MAP_N_PARAMS 8

/* Parameters on the context's device, trainable (requires_grad). Conv weights are stored
 * (out, in, 1, 1); the reference's Conv1d weights (out, in, 1) have the same memory layout. */
typedef struct sd_mapping_net {
    sd_tensor *params[SD_MAP_N_PARAMS];
} sd_mapping_net;

/* Parameter order and the reference's names (nn.ModuleDict keys of one timestep's network). */
enum {
    SD_MAP_START_W, SD_MAP_START_B, SD_MAP_BLOCK_W, SD_MAP_BLOCK_B,
    SD_MAP_BN_W, SD_MAP_BN_B, SD_MAP_END_W, SD_MAP_END_B,
};
extern const char *const sd_mapping_param_names[SD_MAP_N_PARAMS];

/* A network for `tokens` image tokens (197 for ViT-B/16) initialised like PyTorch's defaults:
 * conv weights and biases uniform in ±1/sqrt(fan_in), BatchNorm γ = 1, β = 0. */
sd_status sd_mapping_net_init(sd_ctx *c, sd_mapping_net *m, int tokens, sd_rng *rng);
/* A network whose parameters are copied from host tensors given in sd_mapping_param_names order
 * (Conv1d weights (out, in) or (out, in, 1) or (out, in, 1, 1)). */
sd_status sd_mapping_net_from_host(sd_ctx *c, sd_mapping_net *m, sd_tensor *const host[SD_MAP_N_PARAMS]);
/* dst <- src (the warm start M_i <- M_{i-1}). */
sd_status sd_mapping_net_copy(sd_ctx *c, sd_mapping_net *dst, const sd_mapping_net *src);
void sd_mapping_net_free(sd_mapping_net *m);

/* O = M(X): features (1, tokens, L) -> (154, L) */
sd_tensor *sd_mapping_forward(sd_ctx *c, const sd_mapping_net *m, sd_tensor *features);
/* The value input c ⊙ S + B for a text embedding (1, 77, L), from O (154, L). */
sd_tensor *sd_mapping_value_input(sd_ctx *c, sd_tensor *o, sd_tensor *text);

#endif
