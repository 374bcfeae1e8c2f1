/* text.h: the CLIP byte-level BPE tokenizer, identical in its ids to transformers' CLIPTokenizer
 * (with ftfy installed, as the reference environment has it), and the word -> token index lookup
 * Prompt-to-Prompt uses (stylediffusion.md §1.4, §4.5). */
#ifndef SD_TEXT_H
#define SD_TEXT_H

#include "sd/core.h"

#define SD_CLIP_MAX_LEN 77

typedef struct sd_tokenizer sd_tokenizer;

/* Loads vocab.json and merges.txt from `dir` (an SD tokenizer/ folder). Reads the bos / eos / unk /
 * pad tokens from tokenizer_config.json, then special_tokens_map.json (which wins, as in
 * from_pretrained), when present (SD v1 pad: "<|endoftext|>" = 49407; SD 2: "!"), else CLIP's
 * defaults. Missing files give SD_ERR_MISSING, malformed ones SD_ERR_FORMAT; the message names the
 * file (and the line, for merges.txt). Takes about 50 ms. The tokenizer is read-only afterwards, so
 * one may be shared by threads. */
sd_status sd_tokenizer_load(const char *dir, sd_tokenizer **out);
void sd_tokenizer_free(sd_tokenizer *tok);
int sd_tokenizer_bos(const sd_tokenizer *tok);
int sd_tokenizer_eos(const sd_tokenizer *tok);
int sd_tokenizer_pad(const sd_tokenizer *tok);

/* The text CLIPTokenizer._tokenize feeds to its split pattern: whitespace_clean(ftfy.fix_text(text))
 * .lower(), as UTF-8 in a malloc'd string (*out; the caller frees it). Special tokens are not split
 * out first, so this is what one piece of text between special tokens becomes. */
sd_status sd_clip_clean_text(const char *text, char **out);

/* Tokens of `text` (UTF-8) without BOS/EOS, no length limit: tokenizer.tokenize() then
 * convert_tokens_to_ids(). Invalid UTF-8 is first replaced as bytes.decode("utf-8", "replace")
 * would. *n receives the number of tokens, all written to ids[0..*n). With ids NULL and cap 0 it
 * only counts; a non-NULL buffer smaller than the count gives SD_ERR_ARG naming both numbers. */
sd_status sd_tokenize(const sd_tokenizer *tok, const char *text, int *ids, int cap, int *n);

/* The 77 ids the pipeline feeds the text encoder, as tokenizer(text, padding="max_length",
 * max_length=77, truncation=True) gives them: BOS, tokens, EOS, then pad. A prompt over 75 tokens
 * keeps its first 75 (EOS still last) and sd_warn names how many were dropped. `n_tokens` (may be
 * NULL) receives the number of text tokens before truncation (BOS/EOS not counted). */
sd_status sd_tokenize_padded(const sd_tokenizer *tok, const char *text, int ids[SD_CLIP_MAX_LEN],
                             int *n_tokens);

/* Decoded text of a single token id ("cat</w>" -> "cat"), as tokenizer.decode([id]) gives it in
 * 4.25.1: the token's bytes decoded as UTF-8 (errors="replace"), "</w>" -> " ", strip(), then
 * clean_up_tokenization. Writes into buf (NUL-terminated, cut at a character boundary when n is too
 * small); returns buf. An id no token has gives "", and so does the token of byte 0x00 (its
 * U+0000 cannot live in a C string). */
const char *sd_token_decode(const sd_tokenizer *tok, int id, char *buf, size_t n);

/* P2P get_word_inds (stylediffusion.md §4.5), quirks included: the token positions (+1 for BOS)
 * of every occurrence of `word` among text.split(" "). Words match exactly (case-sensitive, raw
 * text); tokens are assigned to words by adding up the lengths of decode([id]).strip("#") until a
 * word's length is reached, so text that ftfy or the tokenizer lengthens or shortens (ligatures,
 * "#", double spaces) shifts the result exactly as in the reference. The prompt is not truncated,
 * so positions past 76 can come back for long prompts: callers index 77-wide arrays, so check.
 * Returns the count in *n (0 is possible: the reference then returns an empty array).
 * SD_ERR_ARG: the word is not in the prompt (the message names both; the reference silently
 * returns an empty array), the tokens outrun the words (the reference raises IndexError), or
 * more than `cap` positions. */
sd_status sd_word_token_indices(const sd_tokenizer *tok, const char *text, const char *word,
                                int *inds, int cap, int *n);
/* The same for the word at position `word_pos` of text.split(" "); a position outside the words
 * gives SD_ERR_ARG. */
sd_status sd_word_pos_token_indices(const sd_tokenizer *tok, const char *text, int word_pos,
                                    int *inds, int cap, int *n);

#endif
