/* p2p_align.h: the prompt-side arrays of Prompt-to-Prompt and P2Plus (stylediffusion.md §4.3-§4.7).
 *
 * Everything here is computed once per edit, on the CPU, from the prompts alone: which token of the
 * source prompt feeds which token of a target prompt (replacement and refinement mappers), which
 * target tokens get reweighted (equalizer), in which diffusion steps each target token's cross
 * attention is replaced (cross alpha) and self-attention is injected (step ranges), and which
 * tokens LocalBlend reads its mask from. The attention controllers only index these arrays.
 *
 * Each function mirrors one reference function of google/prompt-to-prompt (`seq_aligner.py`,
 * `ptp_utils.py`; byte-identical copies in sen-mao/StyleDiffusion) and reproduces its quirks: the
 * comment of each says which, and tests/unit/test_p2p_align.c checks every array against the
 * reference run on transformers 4.25.1's CLIPTokenizer (tests/oracle/gen_50_p2p_align.py).
 *
 * Conventions:
 *  - `prompts[0]` is the source prompt, `prompts[1..n_prompts)` the targets; 2 <= n_prompts <=
 *    SD_P2P_MAX_PROMPTS (the reference's B, with B - 1 targets).
 *  - Prompts and words are UTF-8 (invalid UTF-8 is refused: the reference compares Python strings,
 *    which a byte comparison only reproduces for valid text). "Words" are the pieces of
 *    prompt.split(" "): split on single spaces, compared exactly (case and punctuation count).
 *  - Token positions count BOS as 0, so the first word starts at 1, as in the text encoder input.
 *    A position the 77-token window cannot hold (a long prompt) is SD_ERR_ARG wherever the
 *    reference would index out of range; the message names the prompt.
 *  - Failures return SD_ERR_ARG (SD_ERR_OOM for memory) with a message naming the prompt, word or
 *    argument. Outputs are left in an unspecified state on failure.
 */
#ifndef SD_P2P_ALIGN_H
#define SD_P2P_ALIGN_H

#include <stdbool.h>
#include <stddef.h>

#include "sd/core.h"
#include "sd/text.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SD_P2P_TOKENS SD_CLIP_MAX_LEN /* 77: the reference's max_len / MAX_NUM_WORDS */
#define SD_P2P_MAX_PROMPTS 9          /* source + up to 8 targets */
#define SD_P2P_MAX_TARGETS (SD_P2P_MAX_PROMPTS - 1)

/* ------------------------------------------------------------------------------------------------
 * Word swap: AttentionReplace (§4.4, §4.5)
 * --------------------------------------------------------------------------------------------- */

/* seq_aligner.get_replacement_mapper_(source, target): mapper[w][n] (77 x 77), the weight of source
 * token w in target token n, so that R[h,p,n] = sum_w base[h,p,w] * mapper[w][n].
 *
 * The prompts must have the same number of words. Words that differ (by position) are "replaced":
 * their source tokens map to their target tokens, pairwise when the token counts are equal, else
 * every source token to every target token with weight 1/len(target tokens) (a float64 quotient
 * rounded to float32, as torch.from_numpy(...).float() does). The other tokens map along a
 * diagonal that walks both prompts in step, starting at BOS.
 * Quirks reproduced:
 *  - after the last replaced word the reference writes M[j][j] instead of M[i][j]: when a replaced
 *    word changes its token count, the trailing tokens map onto themselves, not onto their
 *    shifted counterparts (stylediffusion.md §8 item 8);
 *  - the walk stops when either prompt reaches token 77, so the diagonal is cut short after a
 *    word that gained tokens;
 *  - a replaced word whose first source token lies at 77 or later is never reached: the walk
 *    maps the tail diagonally and ignores it.
 * Errors (SD_ERR_ARG): different word counts (the reference raises ValueError; the message quotes
 * both prompts and both counts); a replaced word with no tokens of its own in either prompt
 * (e.g. "" from a double space: the reference raises IndexError or ZeroDivisionError); a replaced
 * word reached by the walk whose tokens reach past position 76 (IndexError). */
sd_status sd_p2p_replacement_mapper(const sd_tokenizer *tok, const char *source, const char *target,
                                    float mapper[SD_P2P_TOKENS][SD_P2P_TOKENS]);

/* seq_aligner.get_replacement_mapper(prompts): one mapper per target, mappers[t] for
 * prompts[t + 1]; mappers has n_prompts - 1 entries of 77 x 77. A failing target is named in the
 * message by its index. */
sd_status sd_p2p_replacement_mappers(const sd_tokenizer *tok, const char *const *prompts, int n_prompts,
                                     float (*mappers)[SD_P2P_TOKENS][SD_P2P_TOKENS]);

/* ------------------------------------------------------------------------------------------------
 * Added or removed words: AttentionRefine (§4.4, §4.5)
 * --------------------------------------------------------------------------------------------- */

/* seq_aligner.global_align + get_aligned_sequences on two id sequences: Needleman-Wunsch with
 * gap 0, match +1, mismatch -1. Writes y_to_x[0..ny): the x position aligned with each y
 * position, or -1 for a y element aligned with a gap. Reference details reproduced:
 *  - ties while filling the traceback prefer left (a gap in x: y[j-1] is new) over up (x[i-1] is
 *    dropped) over diagonal; with gap 0 a mismatch is therefore never aligned, and among equally
 *    good alignments the one chosen is the reference's;
 *  - the traceback starts at (nx, ny), row 0 always moves left and column 0 always moves up.
 * nx and ny may be 0. Needs (nx + 1)(ny + 1) ints of scratch memory (SD_ERR_OOM). */
sd_status sd_p2p_align_tokens(const int *x, int nx, const int *y, int ny, int *y_to_x);

/* seq_aligner.get_mapper(source, target) (per target of get_refinement_mapper): aligns
 * tokenizer.encode(source) with tokenizer.encode(target) (BOS + tokens + EOS, unpadded and
 * untruncated, so BOS aligns with BOS and EOS with EOS) and writes
 *   mapper[k] = the source token that target token k copies, or -1 for a new token;
 *   alphas[k] = 1 where mapper[k] != -1, else 0;
 * for k < len(target ids), and mapper[k] = k, alphas[k] = 1 (identity: the padding) past it. The
 * controller computes R = base[..., mapper] * alphas + target * (1 - alphas); the -1 entries
 * wrap to token 76 there but are multiplied by 0.
 * Errors (SD_ERR_ARG): a target longer than 77 ids (the reference fails on the slice), or a mapper
 * entry >= 77 (the reference builds it, then its controller indexes out of range at the first
 * step). EOS always aligns with EOS, so every source over 77 ids (75 tokens) is refused. */
sd_status sd_p2p_refinement_mapper(const sd_tokenizer *tok, const char *source, const char *target,
                                   int mapper[SD_P2P_TOKENS], float alphas[SD_P2P_TOKENS]);

/* seq_aligner.get_refinement_mapper(prompts): mappers[t], alphas[t] for prompts[t + 1]
 * (n_prompts - 1 rows of 77 each). */
sd_status sd_p2p_refinement_mappers(const sd_tokenizer *tok, const char *const *prompts, int n_prompts,
                                    int (*mappers)[SD_P2P_TOKENS], float (*alphas)[SD_P2P_TOKENS]);

/* ------------------------------------------------------------------------------------------------
 * Reweighting: AttentionReweight (§4.4)
 * --------------------------------------------------------------------------------------------- */

/* get_equalizer(prompt, words, values) (stylediffusion.py / the NTI notebook): equalizer[77] = 1,
 * then, for each word in order, values[k] (rounded to float32, as the torch tensor stores it) at
 * every token position of every occurrence of words[k] in `prompt`. A later word overwrites an
 * earlier one where they share tokens. make_controller passes prompts[1], the first target, and
 * the one equalizer then scales every target.
 * Errors (SD_ERR_ARG): a word that is not one of the prompt's words, or one without tokens (the
 * reference indexes with an empty array and silently changes nothing; here a typo must not
 * silently switch the reweighting off), a position past 76 (the reference raises IndexError), a
 * non-finite value, n_words < 1. The reference's integer word positions are not supported (no
 * script uses them). */
sd_status sd_p2p_equalizer(const sd_tokenizer *tok, const char *prompt, const char *const *words,
                           const double *values, int n_words, float equalizer[SD_P2P_TOKENS]);

/* ------------------------------------------------------------------------------------------------
 * Step windows (§4.3, §4.6)
 * --------------------------------------------------------------------------------------------- */

/* A window as a fraction of the steps: the reference's (start, end) pair. A plain float tau means
 * (0, tau): use sd_p2p_window_until(tau). */
typedef struct sd_p2p_window {
    double start, end;
} sd_p2p_window;

static inline sd_p2p_window sd_p2p_window_until(double tau) {
    sd_p2p_window w = {0.0, tau};
    return w;
}

/* Steps [begin, end): step s is inside when begin <= s < end. */
typedef struct sd_p2p_steps {
    int begin, end;
} sd_p2p_steps;

static inline bool sd_p2p_steps_contain(sd_p2p_steps r, int step) { return r.begin <= step && step < r.end; }

/* AttentionControlEdit.__init__'s num_self_replace / num_uncond_self_replace:
 * (int(num_steps * start), int(num_steps * end)), truncated toward zero as Python's int() does.
 * N = 30, tau 0.8 -> [0, 24); N = 50, tau 0.6 -> [0, 30); tau 0 -> [0, 0) (never). Used for tau_s
 * (conditional self-attention) and tau_u (P2Plus's unconditional self-attention) alike.
 * Errors: num_steps < 1, a non-finite bound, or a product outside the int range. */
sd_status sd_p2p_replace_steps(int num_steps, sd_p2p_window window, sd_p2p_steps *out);

/* One per-word entry of the dict form of cross_replace_steps: word -> (start, end). */
typedef struct sd_p2p_word_window {
    const char *word;
    sd_p2p_window window;
} sd_p2p_word_window;

/* cross_replace_steps. The float form tau_c is {sd_p2p_window_until(tau_c), NULL, 0}; the dict form
 * sets word_windows too, and a dict without "default_" has default_window (0, 1) (all steps). */
typedef struct sd_p2p_cross_steps {
    sd_p2p_window default_window;
    const sd_p2p_word_window *word_windows; /* applied in order, after the default */
    int n_word_windows;
} sd_p2p_cross_steps;

/* Floats in the (num_steps + 1, n_prompts - 1, 77) cross alpha. */
size_t sd_p2p_cross_alpha_count(int num_steps, int n_prompts);

/* ptp_utils.get_time_words_attention_alpha(prompts, num_steps, cross_replace_steps):
 * alpha[step][t][token] (flat, (num_steps + 1) x (n_prompts - 1) x 77) is 1 where the
 * cross-attention of target t at that token is replaced in that step, else 0. The controller
 * reads row cur_step.
 * For a window (s, e) the reference (update_alpha_time_word) writes, with L = num_steps + 1 rows,
 *   alpha[:int(s*L)] = 0;  alpha[int(s*L):int(e*L)] = 1;  alpha[int(e*L):] = 0
 * with Python slice semantics, reproduced: bounds past L clamp (e = 1.0 gives all L rows), a
 * negative bound counts from the end (s = -0.1, N = 30: int(-3.1) = -3 -> rows 28..30 only), and
 * e <= s gives no step. The default window covers all 77 tokens of every target; then each word
 * window overwrites, in every target whose words include it, exactly the rows of that word's
 * tokens (in targets without the word it does nothing, as in the reference).
 * N = 30, tau_c 0.6 -> int(18.6) = 18 rows (steps 0..17); 0.2 -> steps 0..5; N = 50, 0.8 ->
 * int(40.8): steps 0..39.
 * Errors (SD_ERR_ARG): num_steps < 1, a non-finite bound, a word window whose word is in none of
 * the targets (the reference silently ignores it; here it is taken for a typo), a word token past
 * position 76. */
sd_status sd_p2p_cross_alpha(const sd_tokenizer *tok, const char *const *prompts, int n_prompts, int num_steps,
                             const sd_p2p_cross_steps *steps, float *alpha);

/* ------------------------------------------------------------------------------------------------
 * LocalBlend (§4.7)
 * --------------------------------------------------------------------------------------------- */

/* The blend words of one prompt: LocalBlend's words[i], a str or a list of str. */
typedef struct sd_p2p_word_list {
    const char *const *words;
    int n_words;
} sd_p2p_word_list;

/* LocalBlend.__init__'s alpha_layers (len(prompts), 1, 1, 1, 1, 77) as alpha_layers[prompt][77]:
 * 1 at the tokens of every occurrence of each of word_lists[i]'s words in prompts[i], else 0. As
 * the reference's zip(prompts, words), prompts beyond the n_lists word lists keep all-zero rows
 * (n_lists may be 0..n_prompts; more lists than prompts is SD_ERR_ARG). The same function gives
 * substruct_layers from substruct_words.
 * Errors (SD_ERR_ARG): a word that is not one of its prompt's words, or one without tokens (the
 * reference silently leaves the row at 0, which would switch the blend off for that prompt), a
 * position past 76 (the reference raises IndexError). */
sd_status sd_p2p_blend_alpha_layers(const sd_tokenizer *tok, const char *const *prompts, int n_prompts,
                                    const sd_p2p_word_list *word_lists, int n_lists,
                                    float (*alpha_layers)[SD_P2P_TOKENS]);

#ifdef __cplusplus
}
#endif

#endif
