/* blend_mask.h: the region masks NS-LPIPS reads, made as StyleDiffusion's
 * eval_metrics/storemask.py makes them (stylediffusion.md §6.1 "Mask generation"):
 *
 *   1. DDIM inversion of the photo with its source prompt (conditional, guidance 1, batch 1; 50
 *      steps), storing every step's cross-attention maps with (side/4)² queries (the five 16x16
 *      layers at 512 px) — only the second half of the heads, the reference's attn[h//2:] quirk
 *      with a batch of 1 (§4.1) — summed over the steps and divided by their number;
 *   2. the mean of those (layers x stored heads) maps: (side/4, side/4, 77);
 *   3. the word's token: its index among the prompt's space-separated words + 1 (storemask.py
 *      assumes one token per word; a word split into several tokens, or preceded by one, selects
 *      another token there too: reproduced, not fixed);
 *   4. 255·map/max in float32, truncated to 8 bits, grey RGB, resized to 256x256 with Pillow's
 *      bicubic filter: the foreground mask; the background mask is 255 minus it.
 * NS-LPIPS compares source and edit inside the background mask (sd/lpips.h). */
#ifndef SD_BLEND_MASK_H
#define SD_BLEND_MASK_H

#include "sd/image.h"
#include "sd/model.h"

#define SD_BLEND_MASK_STEPS 50 /* storemask.py's NUM_DDIM_STEPS */
#define SD_BLEND_MASK_SIDE 256

/* `image` (1, 3, S, S) in [-1, 1] on the context's device. `word` must be one of the prompt's
 * space-separated words (SD_ERR_ARG naming both otherwise). Fills foreground and background
 * (256x256 grey RGB); `attention` (may be NULL) receives the aggregated map as a host tensor
 * (side/4, side/4, 77). */
sd_status sd_blend_word_mask(sd_ctx *c, const sd_model *m, sd_tensor *image, const char *prompt,
                             const char *word, int n_steps, sd_image *foreground, sd_image *background,
                             sd_tensor **attention);

#endif
