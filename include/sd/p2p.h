/* p2p.h: the Prompt-to-Prompt / P2Plus attention controller, LocalBlend and cross-attention
 * heatmaps (stylediffusion.md §4.1-§4.4, §4.7, §8).
 *
 * One controller edits one batch of prompts: row 0 is the source prompt (the reconstruction), rows
 * 1.. the targets. It is an attention hook (attn.h) plus per-step state, driven by an editing loop
 * that makes two UNet calls per diffusion step, as the reference does with LOW_RESOURCE = True:
 *
 *     sd_p2p_create(tok, prompts, B, N, latent_h, latent_w, &cfg, &p);
 *     c->hook = sd_p2p_hook(p);
 *     for (i = 0; i < N; i++) {
 *         sd_p2p_begin_pass(p, i, SD_BRANCH_UNCOND);  eps_u = UNet(z, t_i, uncond)   (batch B)
 *         sd_p2p_begin_pass(p, i, SD_BRANCH_COND);    eps_c = UNet(z, t_i, cond)     (batch B)
 *         z = ddim_prev_step(eps_u + w (eps_c - eps_u));
 *         z = sd_p2p_end_step(p, c, z);                                (LocalBlend)
 *     }
 *
 * Each UNet call must carry exactly the B prompts (batch B): the reference's one batched
 * [uncond; cond] call (LOW_RESOURCE = False) is not supported, and P2Plus needs the two calls
 * anyway. A map of another batch fails naming the layer.
 *
 * What the hook does, per pass (maps are [B·heads, q_len, kv_len], row b·heads + h):
 *  - conditional pass, every cross-attention layer (all resolutions), every step:
 *        attn[1:] = R(base, attn[1:])·α_step + (1 − α_step)·attn[1:]
 *    with base = attn[0], α_step the cross alpha row of the step (sd_p2p_cross_alpha), R the
 *    replacement (einsum with the 77x77 word-swap mapper) or the refinement (base gathered through
 *    the alignment mapper, blended with the refinement alphas), then multiplied token-wise by the
 *    equalizer when one is configured (AttentionReweight; never renormalised);
 *  - conditional pass, self-attention with q_len <= sd_store_max_q_len, steps in the τ_s range:
 *        attn[1:] = base;
 *  - unconditional pass (P2Plus replace_uncond), self-attention with q_len <= sd_store_max_q_len,
 *    steps in the τ_u range: attn[1:] = base. Nothing else in that pass (no store, no cross edit).
 * Row 0 is never written, so the source row reproduces the plain (unedited) trajectory.
 *
 * The attention store. The reference (AttentionStore) keeps a running sum over steps of every
 * conditional map with q_len <= 32² (post-edit: it stores the live tensor that the edit then
 * overwrites in place). The only readers are LocalBlend (down_cross[2:4] + up_cross[0:3], the five
 * cross maps at 16² for 512 px) and the heatmaps (aggregate_attention at 16²), so this controller
 * stores only the cross maps with q_len == sd_loss_map_q_len, in call order (down, then up), as the
 * same running sum of post-edit maps. At 512 px that is B·8·256·77 floats per layer (1.3 MB at
 * B = 2; 6.3 MB for the 5 layers), in device memory owned by the controller.
 *
 * Materialised maps. wants_probs is nonzero only where the controller edits or stores: every
 * cross layer of the conditional pass whose step has a nonzero α for some target, plus the
 * loss-resolution cross layers of every conditional pass (the store); self layers up to the
 * store size inside the active window of the pass's branch. Everything else stays on the fused
 * attention path. (A cross edit whose α row is all zero is the identity, R·0 + 1·attn, so skipping
 * it changes nothing.)
 *
 * Device work. Edits are nn ops on the context's device: the cross edit is two 77x77 linears per
 * target (the mapper, equalizer and α folded into the weights, uploaded once per distinct α row)
 * and an add; the self injection is a copy of row blocks. LocalBlend reduces the stored maps over
 * the blend tokens on the device (a 1x77 linear), downloads that small result (B·layers·heads·P
 * floats, 80 KB at 512 px: one sync per step), builds the mask on the host and blends the latents
 * with nn ops. No backend op beyond the existing table is needed.
 *
 * Gradients: the controller edits maps in place, so it refuses to run while a tape is attached to
 * the context (editing never needs gradients). A controller binds to the backend and device of the
 * first context it runs on; using it with another device fails. */
#ifndef SD_P2P_H
#define SD_P2P_H

#include "sd/control.h"
#include "sd/image.h"
#include "sd/p2p_align.h"

typedef enum sd_p2p_edit {
    SD_P2P_REPLACE = 0, /* AttentionReplace: word swap, the prompts have equal word counts */
    SD_P2P_REFINE = 1,  /* AttentionRefine: words added or removed */
} sd_p2p_edit;

typedef struct sd_p2p_config {
    sd_p2p_edit edit;
    sd_p2p_cross_steps cross;    /* τ_c (float form: {sd_p2p_window_until(tau_c), NULL, 0}) */
    sd_p2p_window self_window;   /* τ_s: conditional self-attention injection */
    sd_p2p_window uncond_window; /* τ_u: P2Plus unconditional injection; {0, 0} = off */
    /* LocalBlend: blend_words[b] are prompt b's words (make_controller's blend_words); NULL or
     * n_blend_lists == 0 switches LocalBlend off. */
    const sd_p2p_word_list *blend_words;
    int n_blend_lists;
    double blend_threshold; /* LocalBlend th: 0.3 */
    double blend_start;     /* LocalBlend start_blend: active once the step counter > int(start·N) */
    /* AttentionReweight: words of the FIRST target prompt (prompts[1]) and their factors; the one
     * equalizer scales every target, as make_controller builds it. n_eq_words == 0: none. */
    const char *const *eq_words;
    const double *eq_values;
    int n_eq_words;
} sd_p2p_config;

/* StyleDiffusion's argparse defaults (§4.8): replace, τ_c 0.6, τ_s 0.8, τ_u 0.5, LocalBlend
 * threshold 0.3 from 0.2·N, no blend words, no equalizer. */
sd_p2p_config sd_p2p_config_default(void);

typedef struct sd_p2p sd_p2p;

/* Builds the controller for n_prompts prompts (2..SD_P2P_MAX_PROMPTS, source first) edited over
 * n_steps diffusion steps at latent size latent_h x latent_w (which fixes the store resolution,
 * sd_loss_map_q_len, and the injection limit, sd_store_max_q_len). All prompt-side arrays come from
 * p2p_align.h; their errors (a word not in its prompt, different word counts for a replacement,
 * ...) are returned with the message naming the prompt or word. No device work happens here.
 * Errors: SD_ERR_ARG (arguments, prompts, words, windows), SD_ERR_OOM. */
sd_status sd_p2p_create(const sd_tokenizer *tok, const char *const *prompts, int n_prompts, int n_steps,
                        int64_t latent_h, int64_t latent_w, const sd_p2p_config *cfg, sd_p2p **out);
void sd_p2p_free(sd_p2p *p);

/* The hook to install as c->hook (owned by the controller). */
sd_attn_hook *sd_p2p_hook(sd_p2p *p);

/* Call before each UNet call: the step index (0..n_steps-1, the reference's cur_step, shared by
 * the step's two passes) and the branch. SD_ERR_ARG for a step outside the range or an unknown
 * branch; then the hook fails at its next map until a valid pass begins. */
sd_status sd_p2p_begin_pass(sd_p2p *p, int step, sd_branch branch);

/* Call after each scheduler step with the latents [B, C, latent_h, latent_w]: counts the step
 * and applies LocalBlend when it is configured and active (counter > int(blend_start·N)):
 *   m = mean over stored layers and heads of Σ_tokens store·alpha_layers      [B, res_h, res_w]
 *   m = maxpool3x3(m, stride 1, pad 1); m = nearest resize to latent_h x latent_w;
 *   m = m / max(m) per sample; mask = m > threshold; mask[b] |= mask[0];
 *   z = z[0:1] + mask·(z − z[0:1])
 * Returns the blended latents (a new arena tensor) or `latents` itself when blending is off or not
 * yet active; NULL when the context has failed (the status says why: e.g. no conditional pass
 * stored yet). */
sd_tensor *sd_p2p_end_step(sd_p2p *p, sd_ctx *c, sd_tensor *latents);

/* StyleDiffusion's value substitution: the hook forwards value_input to fn (NULL: keep the
 * context), since a context has one hook. */
typedef sd_tensor *(*sd_p2p_value_fn)(void *user, sd_ctx *c, const sd_attn_site *s, sd_tensor *context);
void sd_p2p_set_value_input(sd_p2p *p, sd_p2p_value_fn fn, void *user);

/* ---- inspection ------------------------------------------------------------------------------ */

/* The LocalBlend mask of the last step it was applied at, as host floats (0/1) [B][latent_h]
 * [latent_w], or NULL before the first blend. Valid until the next sd_p2p_end_step. */
const float *sd_p2p_blend_mask(const sd_p2p *p);
/* Conditional passes accumulated in the store (the reference's cur_step when every step ran). */
int sd_p2p_stored_passes(const sd_p2p *p);
/* Layers in the store (5 for SD v1 at any size, 5 for the tiny model). */
int sd_p2p_stored_layers(const sd_p2p *p);

/* The reference's aggregate_attention(res, ["up", "down"], is_cross=True, select=prompt) over the
 * store: for prompt `prompt`, the maps divided by the number of stored passes (get_average_
 * attention), then averaged over the stored layers (up first, then down, as from_where lists them)
 * and heads. out receives res_h·res_w·77 floats, position-major ([y][x][token]); *res_h, *res_w
 * (may be NULL) the grid. SD_ERR_ARG when nothing is stored or prompt is out of range. */
sd_status sd_p2p_average_cross_maps(sd_p2p *p, sd_ctx *c, int prompt, float *out, int64_t *res_h,
                                    int64_t *res_w);

/* show_cross_attention for every prompt: one PNG per token of tokenizer.encode(prompt) (BOS, the
 * words' tokens, EOS; at most 77), the averaged map of that token as gray 255·map/max(map)
 * (truncated to uint8 as numpy's astype does), upscaled to 256x256 with Pillow's bicubic resize
 * (PIL Image.resize's default). Named "p{prompt}_{index:02d}_{token}.png" in `dir` (created when
 * missing, one level), the token's decoded text reduced to [A-Za-z0-9._-] ("<|startoftext|>" ->
 * "startoftext"). When `background` is given it is resized to 256x256 (bicubic) and dimmed by the
 * map instead of written in gray: pixel = bg·(64 + 191·heat/255)/255, so the attended region stays
 * bright and the rest falls to a quarter. The reference prints the token under each tile instead;
 * here the file name carries it. Files are written atomically. */
sd_status sd_p2p_save_heatmaps(sd_p2p *p, sd_ctx *c, const sd_tokenizer *tok, const char *dir,
                               const sd_image *background);

#endif
