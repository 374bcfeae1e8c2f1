/* p2p_align.c: the prompt-side arrays of Prompt-to-Prompt / P2Plus (see include/sd/p2p_align.h).
 *
 * Each function follows one reference function of google/prompt-to-prompt's seq_aligner.py /
 * ptp_utils.py step by step, because the attention edits are only reproducible when these arrays
 * are identical to the reference's, quirks included. Word -> token lookups go through the
 * tokenizer's get_word_inds (sd_word_token_indices / sd_word_pos_token_indices), which already
 * reproduces the reference's length-counting assignment of tokens to words. */
#include "sd/p2p_align.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define T SD_P2P_TOKENS

/* ------------------------------------------------------------------------------------------------
 * Argument checks and words
 * --------------------------------------------------------------------------------------------- */

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). The reference compares
 * Python strings; comparing bytes is the same thing only for valid UTF-8, so anything else is
 * refused rather than silently compared differently. */
static bool utf8_valid(const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    while (*s) {
        unsigned c = *s;
        int extra;
        unsigned min;
        if (c < 0x80) {
            s++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            extra = 1, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3, min = 0x10000;
        } else {
            return false;
        }
        unsigned cp = c & (0x3F >> extra);
        for (int k = 1; k <= extra; k++) {
            if ((s[k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        s += extra + 1;
    }
    return true;
}

static sd_status check_text(const char *text, const char *what, const char *func) {
    if (!text) return sd_fail(SD_ERR_ARG, "%s: %s is NULL", func, what);
    if (!utf8_valid(text)) return sd_fail(SD_ERR_ARG, "%s: %s \"%s\" is not valid UTF-8", func, what, text);
    return SD_OK;
}

static sd_status check_prompts(const sd_tokenizer *tok, const char *const *prompts, int n_prompts, const char *func) {
    if (!tok) return sd_fail(SD_ERR_ARG, "%s: tokenizer is NULL", func);
    if (!prompts) return sd_fail(SD_ERR_ARG, "%s: prompts is NULL", func);
    if (n_prompts < 2 || n_prompts > SD_P2P_MAX_PROMPTS)
        return sd_fail(SD_ERR_ARG, "%s: %d prompts; an edit needs a source and 1 to %d targets", func, n_prompts,
                       SD_P2P_MAX_TARGETS);
    for (int p = 0; p < n_prompts; p++) {
        char what[32];
        snprintf(what, sizeof what, "prompts[%d]", p);
        SD_TRY(check_text(prompts[p], what, func));
    }
    return SD_OK;
}

/* len(text.split(" ")): single spaces separate words, so "a  b" has an empty middle word. */
static int count_words(const char *text) {
    int n = 1;
    for (const char *c = text; *c; c++) n += *c == ' ';
    return n;
}

/* The start and byte length of word `k` of text.split(" "); k must be < count_words(text). */
static void word_at(const char *text, int k, const char **start, size_t *len) {
    const char *s = text;
    for (int w = 0; w < k; w++) s = strchr(s, ' ') + 1;
    const char *e = strchr(s, ' ');
    *start = s;
    *len = e ? (size_t)(e - s) : strlen(s);
}

static bool prompt_has_word(const char *text, const char *word) {
    size_t word_len = strlen(word);
    int n = count_words(text);
    for (int k = 0; k < n; k++) {
        const char *s;
        size_t len;
        word_at(text, k, &s, &len);
        if (len == word_len && memcmp(s, word, len) == 0) return true;
    }
    return false;
}

/* get_word_inds(prompt, word) (word != NULL) or get_word_inds(prompt, word_pos): token positions
 * (BOS = 0) in *inds (malloc'd, caller frees; may hold positions >= 77 for long prompts). A word
 * that is not in the prompt is SD_ERR_ARG, from the tokenizer, naming both. */
static sd_status word_token_positions(const sd_tokenizer *tok, const char *prompt, const char *word, int word_pos,
                                      int **inds, int *n) {
    *inds = NULL;
    *n = 0;
    int n_tokens = 0;
    SD_TRY(sd_tokenize(tok, prompt, NULL, 0, &n_tokens));
    /* A word's positions are distinct tokens of the prompt, so n_tokens bounds their count. */
    int cap = n_tokens > 0 ? n_tokens : 1;
    int *buf = malloc((size_t)cap * sizeof *buf);
    if (!buf) return sd_fail(SD_ERR_OOM, "get_word_inds: out of memory for %d positions", cap);
    sd_status st = word ? sd_word_token_indices(tok, prompt, word, buf, cap, n)
                        : sd_word_pos_token_indices(tok, prompt, word_pos, buf, cap, n);
    if (st != SD_OK) {
        free(buf);
        *n = 0;
        return st;
    }
    *inds = buf;
    return SD_OK;
}

/* Index of the first position >= 77 among inds, or -1. */
static int first_outside_window(const int *inds, int n) {
    for (int k = 0; k < n; k++)
        if (inds[k] < 0 || inds[k] >= T) return k;
    return -1;
}

/* tokenizer.encode(text): BOS, the tokens, EOS, with no padding and no truncation. */
static sd_status encode_with_specials(const sd_tokenizer *tok, const char *text, int **ids, int *n) {
    *ids = NULL;
    int n_tokens = 0;
    SD_TRY(sd_tokenize(tok, text, NULL, 0, &n_tokens));
    int *buf = malloc(((size_t)n_tokens + 2) * sizeof *buf);
    if (!buf) return sd_fail(SD_ERR_OOM, "tokenizer.encode: out of memory for %d tokens", n_tokens + 2);
    int got = 0;
    sd_status st = n_tokens > 0 ? sd_tokenize(tok, text, buf + 1, n_tokens, &got) : SD_OK;
    if (st != SD_OK) {
        free(buf);
        return st;
    }
    buf[0] = sd_tokenizer_bos(tok);
    buf[got + 1] = sd_tokenizer_eos(tok);
    *ids = buf;
    *n = got + 2;
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Replacement mapper (get_replacement_mapper_, get_replacement_mapper)
 * --------------------------------------------------------------------------------------------- */

/* The token positions of one word that differs between the prompts. */
typedef struct {
    int word;          /* position in split(" ") */
    int *src, n_src;   /* get_word_inds(source, word) */
    int *tgt, n_tgt;   /* get_word_inds(target, word) */
} replaced_word;

static sd_status replaced_word_error(const replaced_word *r, const char *source, const char *target,
                                     const char *problem) {
    const char *s, *t;
    size_t sl, tl;
    word_at(source, r->word, &s, &sl);
    word_at(target, r->word, &t, &tl);
    return sd_fail(SD_ERR_ARG, "replacement mapper: replaced word %d (\"%.*s\" -> \"%.*s\") of \"%s\" -> \"%s\" %s",
                   r->word, (int)sl, s, (int)tl, t, source, target, problem);
}

sd_status sd_p2p_replacement_mapper(const sd_tokenizer *tok, const char *source, const char *target,
                                    float mapper[T][T]) {
    static const char *func = "replacement mapper";
    if (!tok) return sd_fail(SD_ERR_ARG, "%s: tokenizer is NULL", func);
    if (!mapper) return sd_fail(SD_ERR_ARG, "%s: mapper is NULL", func);
    SD_TRY(check_text(source, "source prompt", func));
    SD_TRY(check_text(target, "target prompt", func));

    int n_words = count_words(source), n_target_words = count_words(target);
    if (n_words != n_target_words)
        return sd_fail(SD_ERR_ARG,
                       "%s: a word swap needs prompts with the same number of words, but source \"%s\" has %d "
                       "words and target \"%s\" has %d words",
                       func, source, n_words, target, n_target_words);

    replaced_word *diff = calloc((size_t)n_words, sizeof *diff);
    if (!diff) return sd_fail(SD_ERR_OOM, "%s: out of memory for %d words", func, n_words);
    int n_diff = 0;
    sd_status st = SD_OK;
    for (int w = 0; w < n_words && st == SD_OK; w++) {
        const char *a, *b;
        size_t al, bl;
        word_at(source, w, &a, &al);
        word_at(target, w, &b, &bl);
        if (al == bl && memcmp(a, b, al) == 0) continue;
        replaced_word *r = &diff[n_diff++];
        r->word = w;
        st = word_token_positions(tok, source, NULL, w, &r->src, &r->n_src);
        if (st == SD_OK) st = word_token_positions(tok, target, NULL, w, &r->tgt, &r->n_tgt);
    }

    for (int i = 0; i < T; i++)
        for (int j = 0; j < T; j++) mapper[i][j] = 0.0f;

    /* Walk source token i and target token j together from BOS. Replaced words are consumed whole
     * (i and j advance by their token counts), every other token maps one to one. */
    int i = 0, j = 0, cur = 0;
    while (st == SD_OK && i < T && j < T) {
        const replaced_word *r = cur < n_diff ? &diff[cur] : NULL;
        if (r && r->n_src == 0) {
            st = replaced_word_error(r, source, target,
                                     "has no tokens in the source (the reference raises IndexError)");
        } else if (r && r->src[0] == i) {
            if (r->n_tgt == 0) {
                st = replaced_word_error(r, source, target,
                                         "has no tokens in the target (the reference divides by zero)");
            } else if (first_outside_window(r->src, r->n_src) >= 0 || first_outside_window(r->tgt, r->n_tgt) >= 0) {
                st = replaced_word_error(r, source, target,
                                         "has tokens past position 76 (the reference raises IndexError)");
            } else if (r->n_src == r->n_tgt) {
                for (int k = 0; k < r->n_src; k++) mapper[r->src[k]][r->tgt[k]] = 1.0f;
            } else {
                /* 1 / len(tgt) in float64, stored as float32 by torch's .float(). */
                float ratio = (float)(1.0 / r->n_tgt);
                for (int a = 0; a < r->n_src; a++)
                    for (int b = 0; b < r->n_tgt; b++) mapper[r->src[a]][r->tgt[b]] = ratio;
            }
            i += r->n_src;
            j += r->n_tgt;
            cur++;
        } else if (r) {
            mapper[i][j] = 1.0f;
            i++;
            j++;
        } else {
            /* The reference writes [j, j] here, not [i, j]: kept, see the header. */
            mapper[j][j] = 1.0f;
            i++;
            j++;
        }
    }

    for (int k = 0; k < n_diff; k++) {
        free(diff[k].src);
        free(diff[k].tgt);
    }
    free(diff);
    return st;
}

sd_status sd_p2p_replacement_mappers(const sd_tokenizer *tok, const char *const *prompts, int n_prompts,
                                     float (*mappers)[T][T]) {
    SD_TRY(check_prompts(tok, prompts, n_prompts, "replacement mappers"));
    if (!mappers) return sd_fail(SD_ERR_ARG, "replacement mappers: mappers is NULL");
    for (int t = 1; t < n_prompts; t++) {
        sd_status st = sd_p2p_replacement_mapper(tok, prompts[0], prompts[t], mappers[t - 1]);
        if (st != SD_OK) return sd_fail_context(st, "target prompts[%d]: ", t);
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Refinement mapper (global_align, get_aligned_sequences, get_mapper, get_refinement_mapper)
 * --------------------------------------------------------------------------------------------- */

enum { FROM_LEFT = 1, FROM_UP = 2, FROM_DIAGONAL = 3, FROM_ORIGIN = 4 }; /* the reference's codes */

sd_status sd_p2p_align_tokens(const int *x, int nx, const int *y, int ny, int *y_to_x) {
    if (nx < 0 || ny < 0) return sd_fail(SD_ERR_ARG, "align tokens: negative length (nx %d, ny %d)", nx, ny);
    if ((nx > 0 && !x) || (ny > 0 && (!y || !y_to_x)))
        return sd_fail(SD_ERR_ARG, "align tokens: NULL sequence or output");
    const int gap = 0, match = 1, mismatch = -1;
    size_t cols = (size_t)ny + 1, cells = ((size_t)nx + 1) * cols;
    if (cells / cols != (size_t)nx + 1 || cells > SIZE_MAX / sizeof(int))
        return sd_fail(SD_ERR_ARG, "align tokens: %d x %d is too large", nx, ny);
    int *score = malloc(cells * sizeof *score);      /* (nx+1, ny+1) */
    unsigned char *trace = malloc(cells);             /* (nx+1, ny+1) reference codes */
    if (!score || !trace) {
        free(score);
        free(trace);
        return sd_fail(SD_ERR_OOM, "align tokens: out of memory for a %d x %d alignment", nx + 1, ny + 1);
    }
#define AT(m, i, j) (m)[(size_t)(i) * cols + (size_t)(j)]
    AT(score, 0, 0) = 0;
    AT(trace, 0, 0) = FROM_ORIGIN;
    for (int j = 1; j <= ny; j++) AT(score, 0, j) = j * gap, AT(trace, 0, j) = FROM_LEFT;
    for (int i = 1; i <= nx; i++) AT(score, i, 0) = i * gap, AT(trace, i, 0) = FROM_UP;
    for (int i = 1; i <= nx; i++) {
        for (int j = 1; j <= ny; j++) {
            int left = AT(score, i, j - 1) + gap;
            int up = AT(score, i - 1, j) + gap;
            int diag = AT(score, i - 1, j - 1) + (x[i - 1] == y[j - 1] ? match : mismatch);
            int best = left > up ? left : up;
            if (diag > best) best = diag;
            AT(score, i, j) = best;
            /* Ties: left, then up, then diagonal, in the reference's order of comparison. */
            AT(trace, i, j) = best == left ? FROM_LEFT : best == up ? FROM_UP : FROM_DIAGONAL;
        }
    }
    /* Every step that consumes a y element emits its partner, so each y_to_x[j - 1] is written
     * exactly once (the reference's list, reversed, is already ordered by j). */
    int i = nx, j = ny;
    while (i > 0 || j > 0) {
        int code = AT(trace, i, j);
        if (code == FROM_DIAGONAL) {
            y_to_x[j - 1] = i - 1;
            i--, j--;
        } else if (code == FROM_LEFT) {
            y_to_x[j - 1] = -1;
            j--;
        } else if (code == FROM_UP) {
            i--;
        } else {
            break;
        }
    }
#undef AT
    free(score);
    free(trace);
    return SD_OK;
}

sd_status sd_p2p_refinement_mapper(const sd_tokenizer *tok, const char *source, const char *target,
                                   int mapper[T], float alphas[T]) {
    static const char *func = "refinement mapper";
    if (!tok) return sd_fail(SD_ERR_ARG, "%s: tokenizer is NULL", func);
    if (!mapper || !alphas) return sd_fail(SD_ERR_ARG, "%s: mapper or alphas is NULL", func);
    SD_TRY(check_text(source, "source prompt", func));
    SD_TRY(check_text(target, "target prompt", func));

    int *x = NULL, *y = NULL, nx = 0, ny = 0;
    int y_to_x[T];
    sd_status st = encode_with_specials(tok, source, &x, &nx);
    if (st == SD_OK) st = encode_with_specials(tok, target, &y, &ny);
    if (st == SD_OK && ny > T)
        st = sd_fail(SD_ERR_ARG,
                     "%s: target \"%s\" has %d tokens with BOS/EOS, more than %d (the reference cannot fill its "
                     "%d-long mapper)",
                     func, target, ny, T, T);
    if (st == SD_OK) st = sd_p2p_align_tokens(x, nx, y, ny, y_to_x);
    for (int k = 0; st == SD_OK && k < ny; k++) {
        if (y_to_x[k] >= T)
            st = sd_fail(SD_ERR_ARG,
                         "%s: target token %d of \"%s\" copies token %d of source \"%s\", past the %d tokens the "
                         "text encoder sees",
                         func, k, target, y_to_x[k], source, T);
        mapper[k] = y_to_x[k];
        alphas[k] = y_to_x[k] != -1 ? 1.0f : 0.0f;
    }
    /* Past the target's EOS (the padding) every token keeps its own attention. */
    for (int k = ny; st == SD_OK && k < T; k++) {
        mapper[k] = k;
        alphas[k] = 1.0f;
    }
    free(x);
    free(y);
    return st;
}

sd_status sd_p2p_refinement_mappers(const sd_tokenizer *tok, const char *const *prompts, int n_prompts,
                                    int (*mappers)[T], float (*alphas)[T]) {
    SD_TRY(check_prompts(tok, prompts, n_prompts, "refinement mappers"));
    if (!mappers || !alphas) return sd_fail(SD_ERR_ARG, "refinement mappers: mappers or alphas is NULL");
    for (int t = 1; t < n_prompts; t++) {
        sd_status st = sd_p2p_refinement_mapper(tok, prompts[0], prompts[t], mappers[t - 1], alphas[t - 1]);
        if (st != SD_OK) return sd_fail_context(st, "target prompts[%d]: ", t);
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Equalizer and LocalBlend words
 * --------------------------------------------------------------------------------------------- */

/* Positions of `word` in `prompt` that index a 77-wide row. The word must be there and have
 * tokens: the reference indexes with the empty get_word_inds result and silently changes nothing,
 * which turns a typo into an edit that quietly does not happen. The positions must stay inside
 * the window (the reference raises IndexError past it). */
static sd_status row_positions(const sd_tokenizer *tok, const char *prompt, const char *word, const char *func,
                               int **inds, int *n) {
    SD_TRY(check_text(word, "word", func));
    sd_status st = word_token_positions(tok, prompt, word, -1, inds, n);
    if (st != SD_OK) return sd_fail_context(st, "%s: ", func);
    if (*n == 0) {
        free(*inds);
        *inds = NULL;
        return sd_fail(SD_ERR_ARG, "%s: word \"%s\" of prompt \"%s\" has no tokens",
                       func, word, prompt);
    }
    int bad = first_outside_window(*inds, *n);
    if (bad >= 0) {
        int pos = (*inds)[bad];
        free(*inds);
        *inds = NULL;
        return sd_fail(SD_ERR_ARG,
                       "%s: word \"%s\" sits at token %d of prompt \"%s\", past the %d the text encoder sees", func,
                       word, pos, prompt, T);
    }
    return SD_OK;
}

sd_status sd_p2p_equalizer(const sd_tokenizer *tok, const char *prompt, const char *const *words,
                           const double *values, int n_words, float equalizer[T]) {
    static const char *func = "equalizer";
    if (!tok) return sd_fail(SD_ERR_ARG, "%s: tokenizer is NULL", func);
    if (!equalizer) return sd_fail(SD_ERR_ARG, "%s: equalizer is NULL", func);
    SD_TRY(check_text(prompt, "prompt", func));
    if (n_words < 1 || !words || !values)
        return sd_fail(SD_ERR_ARG, "%s: needs at least one word and value (got %d)", func, n_words);
    for (int k = 0; k < T; k++) equalizer[k] = 1.0f;
    for (int w = 0; w < n_words; w++) {
        /* Beyond FLT_MAX the float32 conversion is undefined in C (torch would store inf). */
        if (!isfinite(values[w]) || fabs(values[w]) > FLT_MAX)
            return sd_fail(SD_ERR_ARG, "%s: value %g of word \"%s\" is not a finite float32", func, values[w],
                           words[w] ? words[w] : "(null)");
        int *inds, n;
        SD_TRY(row_positions(tok, prompt, words[w], func, &inds, &n));
        for (int k = 0; k < n; k++) equalizer[inds[k]] = (float)values[w];
        free(inds);
    }
    return SD_OK;
}

sd_status sd_p2p_blend_alpha_layers(const sd_tokenizer *tok, const char *const *prompts, int n_prompts,
                                    const sd_p2p_word_list *word_lists, int n_lists, float (*alpha_layers)[T]) {
    static const char *func = "LocalBlend words";
    SD_TRY(check_prompts(tok, prompts, n_prompts, func));
    if (!alpha_layers) return sd_fail(SD_ERR_ARG, "%s: alpha_layers is NULL", func);
    if (n_lists < 0 || n_lists > n_prompts || (n_lists > 0 && !word_lists))
        return sd_fail(SD_ERR_ARG, "%s: %d word lists for %d prompts", func, n_lists, n_prompts);
    for (int p = 0; p < n_prompts; p++)
        for (int k = 0; k < T; k++) alpha_layers[p][k] = 0.0f;
    for (int p = 0; p < n_lists; p++) {
        const sd_p2p_word_list *list = &word_lists[p];
        if (list->n_words < 0 || (list->n_words > 0 && !list->words))
            return sd_fail(SD_ERR_ARG, "%s: bad word list for prompts[%d] (%d words)", func, p, list->n_words);
        for (int w = 0; w < list->n_words; w++) {
            int *inds, n;
            SD_TRY(row_positions(tok, prompts[p], list->words[w], func, &inds, &n));
            for (int k = 0; k < n; k++) alpha_layers[p][inds[k]] = 1.0f;
            free(inds);
        }
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Step windows (num_self_replace, get_time_words_attention_alpha)
 * --------------------------------------------------------------------------------------------- */

sd_status sd_p2p_replace_steps(int num_steps, sd_p2p_window window, sd_p2p_steps *out) {
    if (!out) return sd_fail(SD_ERR_ARG, "replace steps: out is NULL");
    if (num_steps < 1) return sd_fail(SD_ERR_ARG, "replace steps: num_steps %d < 1", num_steps);
    double bounds[2] = {window.start, window.end};
    int steps[2];
    for (int k = 0; k < 2; k++) {
        /* int(num_steps * bound): truncation toward zero, as Python's int() of a float. */
        double v = trunc((double)num_steps * bounds[k]);
        if (!isfinite(v) || v < INT32_MIN || v > INT32_MAX)
            return sd_fail(SD_ERR_ARG, "replace steps: window %s %g is not a usable fraction of %d steps",
                           k ? "end" : "start", bounds[k], num_steps);
        steps[k] = (int)v;
    }
    out->begin = steps[0];
    out->end = steps[1];
    return SD_OK;
}

size_t sd_p2p_cross_alpha_count(int num_steps, int n_prompts) {
    if (num_steps < 0 || n_prompts < 2) return 0;
    return ((size_t)num_steps + 1) * (size_t)(n_prompts - 1) * T;
}

/* The rows [*begin, *end) that update_alpha_time_word sets to 1 for a window over `rows` rows:
 * int(bound * rows), then Python's slice normalisation (negative counts from the end, clamp to
 * [0, rows]). Doubles hold every value involved exactly, so huge bounds clamp without overflow. */
static sd_status window_rows(sd_p2p_window w, int rows, const char *what, int *begin, int *end) {
    double bounds[2] = {w.start, w.end};
    int out[2];
    for (int k = 0; k < 2; k++) {
        double v = trunc(bounds[k] * (double)rows);
        if (!isfinite(v))
            return sd_fail(SD_ERR_ARG, "cross alpha: %s window %s %g is not finite", what, k ? "end" : "start",
                           bounds[k]);
        if (v < 0) v += rows;
        if (v < 0) v = 0;
        if (v > rows) v = rows;
        out[k] = (int)v;
    }
    *begin = out[0];
    *end = out[1];
    return SD_OK;
}

sd_status sd_p2p_cross_alpha(const sd_tokenizer *tok, const char *const *prompts, int n_prompts, int num_steps,
                             const sd_p2p_cross_steps *steps, float *alpha) {
    static const char *func = "cross alpha";
    SD_TRY(check_prompts(tok, prompts, n_prompts, func));
    if (!steps || !alpha) return sd_fail(SD_ERR_ARG, "%s: steps or alpha is NULL", func);
    if (num_steps < 1) return sd_fail(SD_ERR_ARG, "%s: num_steps %d < 1", func, num_steps);
    if (steps->n_word_windows < 0 || (steps->n_word_windows > 0 && !steps->word_windows))
        return sd_fail(SD_ERR_ARG, "%s: bad word windows (%d)", func, steps->n_word_windows);

    const int rows = num_steps + 1, targets = n_prompts - 1;
    /* alpha: (rows, targets, 77) */
#define ALPHA(r, t, k) alpha[((size_t)(r) * (size_t)targets + (size_t)(t)) * T + (size_t)(k)]
    int begin, end;
    SD_TRY(window_rows(steps->default_window, rows, "default", &begin, &end));
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < targets; t++)
            for (int k = 0; k < T; k++) ALPHA(r, t, k) = (r >= begin && r < end) ? 1.0f : 0.0f;

    for (int w = 0; w < steps->n_word_windows; w++) {
        const sd_p2p_word_window *ww = &steps->word_windows[w];
        SD_TRY(check_text(ww->word, "cross_replace_steps word", func));
        SD_TRY(window_rows(ww->window, rows, ww->word, &begin, &end));
        bool used = false;
        for (int t = 0; t < targets; t++) {
            const char *prompt = prompts[t + 1];
            /* The reference skips a target whose get_word_inds is empty. */
            if (!prompt_has_word(prompt, ww->word)) continue;
            int *inds, n;
            SD_TRY(word_token_positions(tok, prompt, ww->word, -1, &inds, &n));
            int bad = first_outside_window(inds, n);
            if (bad >= 0) {
                int pos = inds[bad];
                free(inds);
                return sd_fail(SD_ERR_ARG, "%s: word \"%s\" sits at token %d of target \"%s\", past the %d the text "
                               "encoder sees", func, ww->word, pos, prompt, T);
            }
            for (int r = 0; r < rows; r++)
                for (int k = 0; k < n; k++) ALPHA(r, t, inds[k]) = (r >= begin && r < end) ? 1.0f : 0.0f;
            used |= n > 0;
            free(inds);
        }
        if (!used)
            return sd_fail(SD_ERR_ARG,
                           "%s: cross_replace_steps word \"%s\" selects no token of any target prompt (first "
                           "target \"%s\"); the reference would ignore it silently",
                           func, ww->word, prompts[1]);
    }
#undef ALPHA
    return SD_OK;
}
