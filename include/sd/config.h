/* config.h: model configurations, read from the same JSON keys diffusers / transformers write
 * (unet/config.json, vae/config.json, text_encoder/config.json), so any SD v1.x-shaped model,
 * tiny or full, is described by its own files. */
#ifndef SD_CONFIG_H
#define SD_CONFIG_H

#include "sd/core.h"

#define SD_MAX_BLOCKS 8

/* UNet2DConditionModel (diffusers). */
typedef struct sd_unet_config {
    int in_channels;                          /* "in_channels", SD v1: 4 */
    int out_channels;                         /* "out_channels", 4 */
    int sample_size;                          /* "sample_size", 64 (latent side) */
    int n_blocks;                             /* len("block_out_channels"), 4 */
    int block_out_channels[SD_MAX_BLOCKS];    /* (320, 640, 1280, 1280) */
    int layers_per_block;                     /* 2 */
    int down_has_attn[SD_MAX_BLOCKS];         /* "down_block_types": CrossAttnDownBlock2D=1, DownBlock2D=0 */
    int up_has_attn[SD_MAX_BLOCKS];           /* "up_block_types": CrossAttnUpBlock2D=1, UpBlock2D=0 */
    int mid_has_attn;                         /* "mid_block_type" UNetMidBlock2DCrossAttn (default) = 1 */
    /* Heads per down block i ("attention_head_dim" in SD v1 configs is the number of heads: an int
     * for every block or a list per block; "num_attention_heads" wins when present and not null).
     * Up block j uses heads[n_blocks-1-j]; the mid block uses heads[n_blocks-1]. */
    int heads[SD_MAX_BLOCKS];
    int cross_attention_dim;                  /* 768 */
    int norm_num_groups;                      /* 32 */
    float norm_eps;                           /* 1e-5 */
    int flip_sin_to_cos;                      /* true */
    int freq_shift;                           /* 0 */
    int use_linear_projection;                /* false for v1: proj_in/proj_out are 1x1 convs */
    int downsample_padding;                   /* 1 */
    int only_cross_attention;                 /* must be false (v1) */
    int upcast_attention;                     /* ignored in fp32 */
} sd_unet_config;

/* AutoencoderKL (diffusers). */
typedef struct sd_vae_config {
    int in_channels;                          /* 3 */
    int out_channels;                         /* 3 */
    int latent_channels;                      /* 4 */
    int n_blocks;
    int block_out_channels[SD_MAX_BLOCKS];    /* (128, 256, 512, 512) */
    int layers_per_block;                     /* 2 */
    int norm_num_groups;                      /* 32 */
    int sample_size;                          /* 512 (image side; informational) */
    float scaling_factor;                     /* 0.18215 ("scaling_factor", default when absent) */
    int mid_block_add_attention;              /* default true */
} sd_vae_config;

/* CLIPTextModel (transformers). */
typedef struct sd_clip_text_config {
    int vocab_size;                           /* 49408 */
    int hidden_size;                          /* 768 */
    int intermediate_size;                    /* 3072 */
    int num_hidden_layers;                    /* 12 */
    int num_attention_heads;                  /* 12 */
    int max_position_embeddings;              /* 77 */
    int quick_gelu;                           /* "hidden_act": "quick_gelu"=1, "gelu"=0 */
    float layer_norm_eps;                     /* 1e-5 */
    int eos_token_id;                         /* "eos_token_id": where the pooled output is read
                                                 (sd_clip_text_pooled); 2 in the original openai
                                                 configs (argmax of the ids, transformers' quirk),
                                                 49407 in newer ones; default 49407 */
} sd_clip_text_config;

/* The published SD v1.4 / v1.5 configurations (identical architectures). Used for single-file
 * checkpoints, which carry no config of their own. */
void sd_unet_config_sd15(sd_unet_config *c);
void sd_vae_config_sd15(sd_vae_config *c);
void sd_clip_text_config_sd15(sd_clip_text_config *c);

/* Parse a config.json. Unknown keys are ignored; missing keys take the diffusers/transformers
 * default; a malformed file, a wrong-typed key or an architecture stylediff cannot run (e.g.
 * only_cross_attention, a block type it does not know) fails with a message naming the file and
 * the key. `path` is used for messages (and for reading, in the *_load variants). */
sd_status sd_unet_config_parse(const char *json, const char *path, sd_unet_config *out);
sd_status sd_vae_config_parse(const char *json, const char *path, sd_vae_config *out);
sd_status sd_clip_text_config_parse(const char *json, const char *path, sd_clip_text_config *out);
sd_status sd_unet_config_load(const char *path, sd_unet_config *out);
sd_status sd_vae_config_load(const char *path, sd_vae_config *out);
sd_status sd_clip_text_config_load(const char *path, sd_clip_text_config *out);

#endif
