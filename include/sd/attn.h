/* attn.h: the attention hook (design.md, "three mechanisms").
 *
 * Every attention layer of the UNet calls one hook with a description of itself (the site). A
 * controller implements the hook to capture maps (AttentionStore), substitute the value input
 * (StyleDiffusion), or replace and reweight maps (Prompt-to-Prompt, P2Plus). One mechanism serves
 * every method; the UNet never knows which controller runs. */
#ifndef SD_ATTN_H
#define SD_ATTN_H

#include "sd/nn.h"

typedef enum sd_unet_place { SD_PLACE_DOWN = 0, SD_PLACE_MID = 1, SD_PLACE_UP = 2 } sd_unet_place;

const char *sd_place_name(sd_unet_place p); /* "down", "mid", "up" */

/* Where an attention call sits. `layer` counts the attention calls of one UNet forward in call
 * order (each Transformer2D calls self-attention, then cross-attention): 0..31 for SD v1. */
typedef struct sd_attn_site {
    int layer;
    int is_cross;
    sd_unet_place place;
    int64_t res_h, res_w;   /* spatial size of the query grid; q_len = res_h·res_w */
    int heads;
    int64_t batch, q_len, kv_len;
} sd_attn_site;

typedef struct sd_attn_hook sd_attn_hook;
struct sd_attn_hook {
    /* Called once per attention site of a call, before its value projection: a self-attention's
     * as it runs, every cross-attention's at the start of the UNet call, in layer order (their keys
     * and values are projected together there, before the first block). So it must answer from
     * the pass's state alone, without side effects (a gradient step may also ask again). Returns
     * the tensor whose projection becomes V (same shape as `context`), or NULL to keep the
     * context. Keys always use the original context. Under fp16 activations (sd_ctx.activations) `context` is the
     * stored fp16 tensor; the substitute may be F32 or fp16 (it is converted to the storage).
     * May be NULL. */
    sd_tensor *(*value_input)(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *context);
    /* Nonzero when this site's probability map must be materialised and passed to edit_probs.
     * May be NULL (never). */
    int (*wants_probs)(sd_attn_hook *h, const sd_attn_site *s);
    /* Receives the softmax probabilities [B·heads, q_len, kv_len] (row b·heads + h). Returns the
     * map to multiply with V: the same tensor (captured, or edited in place) or a new one built
     * with nn calls. NULL means failure (the context's status says why). */
    sd_tensor *(*edit_probs)(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *probs);
};

#endif
