/* edit.h: editing an inverted image with a new prompt (Prompt-to-Prompt with P2Plus, driven by
 * any inversion: stylediffusion.md §3.7 for StyleDiffusion, §5 for Null-text).
 *
 * Two rows run side by side from the inversion's z_T: row 0 with the source prompt (it
 * reproduces the inversion's reconstruction) and row 1 with the target prompt, whose attention the
 * P2P controller ties to row 0's. Each step makes two UNet calls at batch 2 (the reference's
 * LOW_RESOURCE mode): the unconditional one (P2Plus injects self-attention there for steps below
 * τ_u·N) and the conditional one (cross-attention replacement below τ_c·N, self-attention below
 * τ_s·N, LocalBlend after each step). The unconditional embeddings are the inversion's: "" for
 * StyleDiffusion and DDIM, the optimised ∅_i for Null-text, the source prompt for NPI.
 * StyleDiffusion feeds c ⊙ S_i + B_i to the value projections of the conditional pass: the source
 * row always, the target row (with c_tgt) while i < τ_v·N. */
#ifndef SD_EDIT_H
#define SD_EDIT_H

#include "sd/inversion.h"
#include "sd/p2p.h"

#define SD_EDIT_MAX_WORDS 8

typedef struct sd_edit_options {
    const char *target;          /* the target prompt (required) */
    sd_p2p_edit edit;            /* word replacement (equal word counts) or refinement */
    float tau_v, tau_c, tau_s, tau_u;
    /* LocalBlend words: the source prompt's and the target prompt's (none: no LocalBlend) */
    const char *blend_source[SD_EDIT_MAX_WORDS];
    int n_blend_source;
    const char *blend_target[SD_EDIT_MAX_WORDS];
    int n_blend_target;
    /* reweighting (equalizer) of target-prompt words */
    const char *reweight_words[SD_EDIT_MAX_WORDS];
    double reweight_values[SD_EDIT_MAX_WORDS];
    int n_reweight;
    const char *heatmap_dir;     /* write per-token cross-attention heatmaps here (NULL: no) */
    const sd_image *heatmap_background;
} sd_edit_options;

/* Fills the windows from the preset of the inversion's method; everything else empty. */
void sd_edit_options_default(sd_invert_method method, sd_edit_options *o);

typedef struct sd_edit_result {
    sd_tensor *latents;  /* (2, 4, h, w) z_0 of both rows, host: row 0 source, row 1 edit */
    double seconds;      /* the editing loop */
} sd_edit_result;

sd_status sd_edit(sd_ctx *c, const sd_model *m, const sd_inversion *inv, const sd_edit_options *o,
                  sd_edit_result *out);
void sd_edit_result_free(sd_edit_result *r);

#endif
