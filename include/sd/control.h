/* control.h: attention controllers shared by the methods (design.md: "each method is a small
 * controller, not a fork of the UNet").
 *
 * Resolutions. The reference hard-codes them for 512 px images (64x64 latents): StyleDiffusion's
 * attention loss, LocalBlend and the heatmaps read the 16x16 cross-attention maps; self-attention
 * replacement and the attention store cover maps of up to 32x32. stylediff states them as
 * fractions of the latent side — 1/4 and 1/2 — which are the reference's numbers at 512 px and
 * keep selecting the same UNet layers (down_blocks[2] / up_blocks[1], and everything below the top
 * level) at any image size. */
#ifndef SD_CONTROL_H
#define SD_CONTROL_H

#include "sd/attn.h"

typedef enum sd_branch { SD_BRANCH_UNCOND = 0, SD_BRANCH_COND = 1 } sd_branch;

/* Query count of the maps the attention loss, LocalBlend and heatmaps read: (side/4)^2. */
static inline int64_t sd_loss_map_q_len(int64_t latent_h, int64_t latent_w) {
    return (latent_h / 4) * (latent_w / 4);
}
/* Largest query count whose maps are stored and whose self-attention P2P replaces: (side/2)^2. */
static inline int64_t sd_store_max_q_len(int64_t latent_h, int64_t latent_w) {
    return (latent_h / 2) * (latent_w / 2);
}

#define SD_MAX_CAPTURED 16

/* StyleDiffusion's hook for one conditional UNet call (stylediffusion.md §3.4, §3.5):
 *  - when `value` is set, every cross-attention layer projects it as its value input (keys keep
 *    the text embedding);
 *  - the cross-attention maps with q_len == capture_q_len are captured in call order (down
 *    blocks, then up blocks: the reference's down_cross + up_cross pairing), as the arena tensors
 *    the UNet computed, so a loss on them is differentiated through the tape. */
typedef struct sd_value_capture_hook {
    sd_attn_hook base;
    sd_tensor *value;      /* (B, 77, D) value input, or NULL for the plain context */
    /* `value` in the dtype of the UNet's context (fp16 storage), converted at the first
     * cross-attention of a call and handed to the other 15: one conversion per call, not one per
     * layer (and one node on the tape, whose backward adds once into value's gradient) */
    sd_tensor *value_as_context, *value_converted_from;
    int64_t capture_q_len; /* 0: capture nothing */
    int n_captured;
    sd_tensor *captured[SD_MAX_CAPTURED]; /* (B·heads, q_len, 77) each */
    int captured_layer[SD_MAX_CAPTURED];
} sd_value_capture_hook;

void sd_value_capture_hook_init(sd_value_capture_hook *h, sd_tensor *value, int64_t capture_q_len);
/* Forget the previous call's captures and converted value (the tensors live in the activation
 * arena): before every call. */
void sd_value_capture_hook_clear(sd_value_capture_hook *h);

#endif
