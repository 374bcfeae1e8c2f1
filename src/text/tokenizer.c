/* tokenizer.c: the CLIP byte-level BPE tokenizer, giving the ids of transformers 4.25.1's slow
 * CLIPTokenizer in the StyleDiffusion reference environment (ftfy installed), and P2P's
 * get_word_inds (stylediffusion.md §1.4, §4.5).
 *
 * The reference pipeline, and where each step lives:
 *
 *   1. The prompt arrives as UTF-8 bytes; invalid bytes become U+FFFD exactly as Python's
 *      bytes.decode("utf-8", "replace") would (unicode.c).
 *   2. PreTrainedTokenizer.tokenize splits the raw text on the special tokens (bos, eos, unk, pad:
 *      "<|startoftext|>", "<|endoftext|>"), exact and case-sensitive; those map straight to their
 *      ids. Neighbouring text is stripped only for special tokens that are plain strings in the
 *      config (not AddedToken), as 4.25.1 does.
 *   3. Every other piece goes through CLIPTokenizer._tokenize:
 *        text = whitespace_clean(ftfy.fix_text(text)).lower()
 *      ftfy.fix_text is ported in ftfy.c; whitespace_clean collapses runs of the regex module's \s
 *      into one space and str.strip()s; lower() is CPython's (full mappings, final sigma).
 *   4. The split regex (IGNORECASE)
 *        <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 *      is matched by hand below, alternative by alternative, with character classes measured from
 *      the regex module (unicode_tables.c), including its case-insensitive literals ('ſ' matches
 *      the s of "'s").
 *   5. Each piece's UTF-8 bytes are mapped to CLIP's byte-level alphabet and BPE-merged, "</w>" on
 *      the last symbol; a piece that is exactly "<|startoftext|>" / "<|endoftext|>" skips BPE (the
 *      reference's pre-seeded cache). Symbols missing from vocab.json map to the unk id.
 *   6. encode() adds BOS/EOS; padding="max_length", max_length=77, truncation=True keeps the
 *      first 75 tokens and EOS, then pads with the pad id.
 *
 * BPE is the reference's algorithm (take the lowest-ranked adjacent pair, merge all its
 * occurrences left to right, repeat) implemented with a heap of candidate pairs so that a
 * pathological 100 KB "word" costs O(n log n) instead of O(n^2). Both give the same result: all
 * occurrences of one pair are merged in one left-to-right batch before any pair formed by those
 * merges is considered, as in the reference.
 *
 * ftfy.fix_text (ftfy 6.3.1, default configuration; details in ftfy.c):
 *   implemented: unescape_html ("auto": off from the first line holding "<"), the whole
 *     fix_encoding mojibake repair (BADNESS_RE detector, the 10 single-byte codecs incl. the sloppy
 *     windows-125x ones, restore_byte_a0, replace_lossy_sequences, utf-8-variants / CESU-8,
 *     decode_inconsistent_utf8, latin-1 -> windows-1252, C1 controls), fix_latin_ligatures,
 *     fix_character_width, uncurl_quotes, fix_line_breaks, remove_terminal_escapes,
 *     remove_control_chars, NFC, the per-line segmentation and the repeat-until-stable loops.
 *   left out: fix_surrogates, which cannot fire (decoded UTF-8 holds no surrogates).
 * Checked against the reference on the fixture (tests/fixtures/tokenizer_cases.json) and, during
 * development, on about 47,000 seeded random prompts (mojibake in every ftfy codec, entities,
 * combining sequences, Hangul, final sigma, long BPE words, special tokens across lines), 12,000
 * get_word_inds calls and all 49,408 single-token decodes: no difference (apart from the two
 * tokens of byte 0x00, whose U+0000 a C string cannot carry).
 *
 * Unicode data comes from the venv's copies of the reference's libraries: Python 3.11's
 * unicodedata (Unicode 14.0: NFC, lower(), isspace()), regex 2026.11.19 (Unicode 17: \p{L},
 * \p{N}, \s) and ftfy 6.3.1 (see unicode_tables.h). The StyleDiffusion environment ran Python 3.8
 * (Unicode 12.1) with the regex and ftfy releases of its day (ftfy 6.3 needs Python 3.9, so at most
 * 6.2 there), so characters assigned after Unicode 12.1 (newer emoji, recent scripts) can split or
 * normalise differently there, and borderline mojibake that ftfy's retuned heuristics judge
 * differently can be fixed differently. Ordinary prompts are unaffected. */
#include "sd/text.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "text_internal.h"

/* CLIP reads at most this many merges from merges.txt: 49152 - 256 - 2 (its vocabulary budget). */
#define CLIP_MAX_MERGES (49152 - 256 - 2)
#define MAX_VOCAB_ID (1 << 24)
#define MAX_SPECIALS 4
#define MAX_SPECIAL_LEN 64

/* ------------------------------------------------------------------------------------------------
 * Hash maps
 * --------------------------------------------------------------------------------------------- */

typedef struct {
    char *data; /* all symbol strings, back to back */
    size_t len, cap;
} string_pool;

typedef struct {
    uint32_t offset, length; /* in the pool */
    int32_t id;              /* output id: its vocab id, or the unk id for symbols vocab lacks */
} symbol;

/* Open-addressing map: symbol string -> symbol index. */
typedef struct {
    int32_t *slots; /* -1 when empty */
    size_t mask;
} symbol_map;

typedef struct {
    uint64_t key; /* (left symbol << 32) | right symbol; UINT64_MAX when empty */
    int32_t rank;
    int32_t merged;
} merge_slot;

typedef struct {
    merge_slot *slots;
    size_t mask;
    size_t count;
} merge_map;

typedef struct {
    uint32_t text[MAX_SPECIAL_LEN];
    int length;
    int id;
    bool strip_left, strip_right; /* strip whitespace of the text before / after it */
} special_token;

struct sd_tokenizer {
    string_pool pool;
    symbol *symbols;
    int n_symbols, cap_symbols;
    symbol_map symbol_of;
    merge_map merges;
    int32_t *id_to_symbol; /* decoder: vocab id -> symbol, -1 where no token has that id */
    int max_id;
    int byte_symbol[256], byte_symbol_final[256]; /* a byte's symbol, without / with "</w>" */
    uint32_t byte_char[256];                        /* bytes_to_unicode */
    int16_t char_byte[0x144];                        /* its inverse (-1: not a byte character) */
    int bos, eos, pad, unk;
    int start_symbol, end_symbol; /* the two special strings the split pattern can yield */
    special_token specials[MAX_SPECIALS];
    int n_specials;
    uint8_t ascii_class[128];
};

enum { CLASS_NONE = 0, CLASS_LETTER = 1, CLASS_NUMBER = 2, CLASS_OTHER = 3 };

static uint64_t hash_bytes(const void *p, size_t n) { return sd_hash64(p, n); }

static uint64_t hash_pair(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ULL;
    key ^= key >> 33;
    return key;
}

static const char *symbol_text(const sd_tokenizer *tok, int s) { return tok->pool.data + tok->symbols[s].offset; }

/* Index of the symbol spelled s[0..n), or -1. */
static int find_symbol(const sd_tokenizer *tok, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & tok->symbol_of.mask;
    for (;;) {
        int32_t k = tok->symbol_of.slots[i];
        if (k < 0) return -1;
        if (tok->symbols[k].length == n && memcmp(symbol_text(tok, k), s, n) == 0) return k;
        i = (i + 1) & tok->symbol_of.mask;
    }
}

static sd_status symbol_map_grow(sd_tokenizer *tok) {
    size_t cap = tok->symbol_of.slots ? (tok->symbol_of.mask + 1) * 2 : 1 << 17;
    int32_t *slots = malloc(cap * sizeof *slots);
    if (!slots) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory for the vocabulary map");
    for (size_t i = 0; i < cap; i++) slots[i] = -1;
    for (int k = 0; k < tok->n_symbols; k++) {
        size_t i = hash_bytes(symbol_text(tok, k), tok->symbols[k].length) & (cap - 1);
        while (slots[i] >= 0) i = (i + 1) & (cap - 1);
        slots[i] = k;
    }
    free(tok->symbol_of.slots);
    tok->symbol_of.slots = slots;
    tok->symbol_of.mask = cap - 1;
    return SD_OK;
}

/* The symbol spelled s[0..n), added (with output id `id`) when new. With `overwrite`, an existing
 * symbol takes the new id (vocab.json: the last of duplicate keys wins, as in json.load). */
static sd_status intern_symbol(sd_tokenizer *tok, const char *s, size_t n, int id, bool overwrite, int *out) {
    int k = find_symbol(tok, s, n);
    if (k >= 0) {
        if (overwrite) tok->symbols[k].id = id;
        *out = k;
        return SD_OK;
    }
    if ((size_t)(tok->n_symbols + 1) * 2 > tok->symbol_of.mask + 1) SD_TRY(symbol_map_grow(tok));
    if (tok->n_symbols == tok->cap_symbols) {
        int cap = tok->cap_symbols ? tok->cap_symbols * 2 : 65536;
        symbol *p = realloc(tok->symbols, (size_t)cap * sizeof *p);
        if (!p) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory for the vocabulary");
        tok->symbols = p;
        tok->cap_symbols = cap;
    }
    string_pool *pool = &tok->pool;
    if (pool->len + n + 1 > pool->cap) {
        size_t cap = pool->cap ? pool->cap : 1 << 20;
        while (cap < pool->len + n + 1) cap *= 2;
        char *p = realloc(pool->data, cap);
        if (!p) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory for the vocabulary");
        pool->data = p;
        pool->cap = cap;
    }
    memcpy(pool->data + pool->len, s, n);
    pool->data[pool->len + n] = 0;
    k = tok->n_symbols++;
    tok->symbols[k] = (symbol){(uint32_t)pool->len, (uint32_t)n, id};
    pool->len += n + 1;
    size_t i = hash_bytes(s, n) & tok->symbol_of.mask;
    while (tok->symbol_of.slots[i] >= 0) i = (i + 1) & tok->symbol_of.mask;
    tok->symbol_of.slots[i] = k;
    *out = k;
    return SD_OK;
}

static const merge_slot *find_merge(const merge_map *m, int left, int right) {
    if (!m->slots) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = hash_pair(key) & m->mask;
    for (;;) {
        const merge_slot *s = &m->slots[i];
        if (s->key == UINT64_MAX) return NULL;
        if (s->key == key) return s;
        i = (i + 1) & m->mask;
    }
}

static sd_status merge_map_init(merge_map *m, size_t expected) {
    size_t cap = 1024;
    while (cap < expected * 2) cap *= 2;
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory for the merge table");
    for (size_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->count = 0;
    return SD_OK;
}

/* Sets the rank of (left, right); a repeated pair takes the later rank, as dict(zip(...)) does. */
static void merge_map_put(merge_map *m, int left, int right, int rank, int merged) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = hash_pair(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & m->mask;
    if (m->slots[i].key == UINT64_MAX) m->count++;
    m->slots[i] = (merge_slot){key, rank, merged};
}

/* ------------------------------------------------------------------------------------------------
 * Loading
 * --------------------------------------------------------------------------------------------- */

void sd_tokenizer_free(sd_tokenizer *tok) {
    if (!tok) return;
    free(tok->pool.data);
    free(tok->symbols);
    free(tok->symbol_of.slots);
    free(tok->merges.slots);
    free(tok->id_to_symbol);
    free(tok);
}

int sd_tokenizer_bos(const sd_tokenizer *tok) { return tok->bos; }
int sd_tokenizer_eos(const sd_tokenizer *tok) { return tok->eos; }
int sd_tokenizer_pad(const sd_tokenizer *tok) { return tok->pad; }

/* CLIP's bytes_to_unicode: the printable Latin-1 bytes stand for themselves; the other 68 bytes
 * (controls, space, DEL, NBSP, soft hyphen...) become U+0100 onwards, in byte order. */
static void build_byte_alphabet(sd_tokenizer *tok) {
    int shifted = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        tok->byte_char[b] = printable ? (uint32_t)b : (uint32_t)(256 + shifted++);
    }
    for (int c = 0; c < 0x144; c++) tok->char_byte[c] = -1;
    for (int b = 0; b < 256; b++) tok->char_byte[tok->byte_char[b]] = (int16_t)b;
}

static bool valid_utf8(const char *s, size_t n) { return sd_utf8_valid((const uint8_t *)s, n); }

static sd_status load_vocab(sd_tokenizer *tok, const char *path) {
    char *text = NULL;
    size_t len = 0;
    SD_TRY(sd_read_file(path, &text, &len));
    if (!valid_utf8(text, len)) {
        free(text);
        return sd_fail(SD_ERR_FORMAT, "%s: not valid UTF-8", path);
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return sd_fail(SD_ERR_FORMAT, "%s: malformed JSON", path);
    sd_status st = SD_OK;
    if (!cJSON_IsObject(root) || !root->child) {
        st = sd_fail(SD_ERR_FORMAT, "%s: expected a JSON object mapping tokens to ids", path);
        goto out;
    }
    int max_id = -1;
    for (cJSON *item = root->child; item; item = item->next) {
        double v = item->valuedouble;
        if (!cJSON_IsNumber(item) || !(v >= 0 && v < MAX_VOCAB_ID) || v != (double)(int)v) {
            st = sd_fail(SD_ERR_FORMAT, "%s: token \"%.40s\" has id %s; ids must be integers in [0, %d)", path,
                         item->string ? item->string : "?", cJSON_IsNumber(item) ? "out of range" : "that is not a number",
                         MAX_VOCAB_ID);
            goto out;
        }
        int id = (int)v, k;
        st = intern_symbol(tok, item->string, strlen(item->string), id, true, &k);
        if (st != SD_OK) goto out;
        if (id > max_id) max_id = id;
    }
    tok->max_id = max_id;
    tok->id_to_symbol = malloc(((size_t)max_id + 1) * sizeof *tok->id_to_symbol);
    if (!tok->id_to_symbol) {
        st = sd_fail(SD_ERR_OOM, "%s: out of memory for %d ids", path, max_id + 1);
        goto out;
    }
    for (int i = 0; i <= max_id; i++) tok->id_to_symbol[i] = -1;
    /* {v: k for k, v in encoder.items()}: a repeated id keeps the token listed last. */
    for (int k = 0; k < tok->n_symbols; k++) tok->id_to_symbol[tok->symbols[k].id] = k;
out:
    cJSON_Delete(root);
    return st;
}

/* The special token named `key` in a tokenizer_config.json / special_tokens_map.json object: a
 * string, or an AddedToken object with "content" (and lstrip / rstrip). */
static sd_status read_special(const cJSON *root, const char *key, const char *path, char *content, size_t n,
                              bool *is_added_token, bool *lstrip, bool *rstrip) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return SD_OK;
    const char *s = NULL;
    if (cJSON_IsString(v)) {
        s = v->valuestring;
        *is_added_token = false;
        *lstrip = *rstrip = false;
    } else if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (!cJSON_IsString(c)) return sd_fail(SD_ERR_FORMAT, "%s: \"%s\" has no string \"content\"", path, key);
        s = c->valuestring;
        *is_added_token = true;
        *lstrip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "lstrip"));
        *rstrip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "rstrip"));
    } else {
        return sd_fail(SD_ERR_FORMAT, "%s: \"%s\" must be a string or an object with \"content\"", path, key);
    }
    if (strlen(s) == 0 || strlen(s) >= n)
        return sd_fail(SD_ERR_FORMAT, "%s: \"%s\" is empty or longer than %zu bytes", path, key, n - 1);
    strcpy(content, s);
    return SD_OK;
}

typedef struct {
    const char *key;
    char content[MAX_SPECIAL_LEN];
    bool is_added_token, lstrip, rstrip;
} special_config;

/* bos, eos, unk, pad: CLIPTokenizer's defaults, then tokenizer_config.json, then
 * special_tokens_map.json (which from_pretrained lets override the config). */
static sd_status load_special_config(const char *dir, special_config cfg[4]) {
    const char *files[2] = {"tokenizer_config.json", "special_tokens_map.json"};
    for (int f = 0; f < 2; f++) {
        char path[4096];
        sd_path_join(path, sizeof path, dir, files[f]);
        if (!sd_file_exists(path)) continue;
        char *text = NULL;
        size_t len = 0;
        SD_TRY(sd_read_file(path, &text, &len));
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        if (!root || !cJSON_IsObject(root)) {
            cJSON_Delete(root);
            return sd_fail(SD_ERR_FORMAT, "%s: malformed JSON (expected an object)", path);
        }
        sd_status st = SD_OK;
        for (int k = 0; k < 4 && st == SD_OK; k++)
            st = read_special(root, cfg[k].key, path, cfg[k].content, sizeof cfg[k].content, &cfg[k].is_added_token,
                              &cfg[k].lstrip, &cfg[k].rstrip);
        cJSON_Delete(root);
        SD_TRY(st);
    }
    return SD_OK;
}

static sd_status token_id(const sd_tokenizer *tok, const char *text, const char *what, const char *vocab_path,
                          int *id) {
    int k = find_symbol(tok, text, strlen(text));
    if (k < 0) return sd_fail(SD_ERR_FORMAT, "%s: the %s \"%s\" is not in the vocabulary", vocab_path, what, text);
    *id = tok->symbols[k].id;
    return SD_OK;
}

/* Splits s on Python's whitespace (str.split() with no argument) into at most `max` parts. */
static int split_whitespace(const uint32_t *s, size_t n, size_t starts[], size_t ends[], int max) {
    int parts = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && sd_uc_py_isspace(s[i])) i++;
        if (i == n) break;
        size_t j = i;
        while (j < n && !sd_uc_py_isspace(s[j])) j++;
        if (parts < max) {
            starts[parts] = i;
            ends[parts] = j;
        }
        parts++;
        i = j;
    }
    return parts;
}

static sd_status intern_cps(sd_tokenizer *tok, const uint32_t *cp, size_t n, int unk_id, int *out) {
    sd_bytes b = {0};
    sd_status st = sd_utf8_encode(cp, n, &b);
    if (st == SD_OK) st = intern_symbol(tok, (const char *)b.b, b.len, unk_id, false, out);
    sd_bytes_free(&b);
    return st;
}

/* merges.txt as CLIPTokenizer reads it: read().strip().split("\n")[1 : 48895], each line split on
 * whitespace into a pair. Pairs whose parts or result are not vocabulary entries still take part
 * in BPE, as the reference's string-based BPE lets them (they would end as the unk id). */
static sd_status load_merges(sd_tokenizer *tok, const char *path, int *n_unknown) {
    char *text = NULL;
    size_t len = 0;
    SD_TRY(sd_read_file(path, &text, &len));
    if (!valid_utf8(text, len)) {
        free(text);
        return sd_fail(SD_ERR_FORMAT, "%s: not valid UTF-8", path);
    }
    sd_u32str all = {0};
    sd_status st = sd_utf8_decode_replace((const uint8_t *)text, len, &all);
    free(text);
    if (st != SD_OK) return st;
    size_t begin = 0, end = all.len;
    while (begin < end && sd_uc_py_isspace(all.cp[begin])) begin++;
    while (end > begin && sd_uc_py_isspace(all.cp[end - 1])) end--;
    st = merge_map_init(&tok->merges, CLIP_MAX_MERGES);
    *n_unknown = 0;
    size_t pos = begin;
    int line_no = 0, rank = 0;
    while (st == SD_OK && pos < end && rank < CLIP_MAX_MERGES) {
        size_t eol = pos;
        while (eol < end && all.cp[eol] != '\n') eol++;
        line_no++;
        if (line_no > 1) { /* the first line is the "#version" header, skipped unread */
            size_t starts[3], ends[3];
            int parts = split_whitespace(all.cp + pos, eol - pos, starts, ends, 3);
            if (parts != 2) {
                st = sd_fail(SD_ERR_FORMAT, "%s: line %d should hold two symbols separated by a space, has %d", path,
                             line_no, parts);
                break;
            }
            const uint32_t *line = all.cp + pos;
            int left, right, merged;
            st = intern_cps(tok, line + starts[0], ends[0] - starts[0], tok->unk, &left);
            if (st == SD_OK) st = intern_cps(tok, line + starts[1], ends[1] - starts[1], tok->unk, &right);
            if (st == SD_OK) {
                sd_u32str joined = {0};
                st = sd_u32_append(&joined, line + starts[0], ends[0] - starts[0]);
                if (st == SD_OK) st = sd_u32_append(&joined, line + starts[1], ends[1] - starts[1]);
                if (st == SD_OK) {
                    int before = tok->n_symbols;
                    st = intern_cps(tok, joined.cp, joined.len, tok->unk, &merged);
                    if (tok->n_symbols != before) ++*n_unknown;
                }
                sd_u32_free(&joined);
            }
            if (st == SD_OK) merge_map_put(&tok->merges, left, right, rank++, merged);
        }
        pos = eol + 1;
    }
    sd_u32_free(&all);
    if (st == SD_OK && rank == 0) st = sd_fail(SD_ERR_FORMAT, "%s: no merges after the header line", path);
    return st;
}

static sd_status utf8_to_cps(const char *s, uint32_t *out, int cap, int *n) {
    sd_u32str tmp = {0};
    SD_TRY(sd_utf8_decode_replace((const uint8_t *)s, strlen(s), &tmp));
    if ((int)tmp.len > cap) {
        sd_u32_free(&tmp);
        return sd_fail(SD_ERR_FORMAT, "special token \"%s\" is too long", s);
    }
    memcpy(out, tmp.cp, tmp.len * sizeof *out);
    *n = (int)tmp.len;
    sd_u32_free(&tmp);
    return SD_OK;
}

static sd_status setup(sd_tokenizer *tok, const char *dir) {
    char vocab_path[4096], merges_path[4096];
    sd_path_join(vocab_path, sizeof vocab_path, dir, "vocab.json");
    sd_path_join(merges_path, sizeof merges_path, dir, "merges.txt");
    if (!sd_file_exists(vocab_path)) return sd_fail(SD_ERR_MISSING, "%s: tokenizer vocabulary not found", vocab_path);
    if (!sd_file_exists(merges_path)) return sd_fail(SD_ERR_MISSING, "%s: tokenizer merges not found", merges_path);

    special_config cfg[4] = {{"bos_token", "<|startoftext|>", true, false, false},
                             {"eos_token", "<|endoftext|>", true, false, false},
                             {"unk_token", "<|endoftext|>", true, false, false},
                             {"pad_token", "<|endoftext|>", false, false, false}};
    SD_TRY(load_special_config(dir, cfg));
    SD_TRY(symbol_map_grow(tok));
    SD_TRY(load_vocab(tok, vocab_path));
    SD_TRY(token_id(tok, cfg[0].content, "bos_token", vocab_path, &tok->bos));
    SD_TRY(token_id(tok, cfg[1].content, "eos_token", vocab_path, &tok->eos));
    SD_TRY(token_id(tok, cfg[2].content, "unk_token", vocab_path, &tok->unk));
    SD_TRY(token_id(tok, cfg[3].content, "pad_token", vocab_path, &tok->pad));

    build_byte_alphabet(tok);
    for (int b = 0; b < 256; b++) {
        uint8_t buf[8];
        int n = sd_utf8_put(tok->byte_char[b], buf);
        SD_TRY(intern_symbol(tok, (const char *)buf, (size_t)n, tok->unk, false, &tok->byte_symbol[b]));
        memcpy(buf + n, "</w>", 4);
        SD_TRY(intern_symbol(tok, (const char *)buf, (size_t)n + 4, tok->unk, false, &tok->byte_symbol_final[b]));
    }
    tok->start_symbol = find_symbol(tok, "<|startoftext|>", 15);
    tok->end_symbol = find_symbol(tok, "<|endoftext|>", 13);

    int n_unknown = 0;
    SD_TRY(load_merges(tok, merges_path, &n_unknown));
    if (n_unknown)
        sd_warn("%s: %d merge results are not in vocab.json; they will come out as the unk id", merges_path, n_unknown);

    /* The no-split tokens: every distinct special string. The strip rule comes from an AddedToken
     * with that content (4.25.1 looks them up by string, AddedTokens only); a token only ever given
     * as a plain string strips the whitespace on both sides. */
    for (int k = 0; k < 4; k++) {
        uint32_t cps[MAX_SPECIAL_LEN];
        int n = 0;
        SD_TRY(utf8_to_cps(cfg[k].content, cps, MAX_SPECIAL_LEN, &n));
        special_token *sp = NULL;
        for (int j = 0; j < tok->n_specials; j++)
            if (n == tok->specials[j].length && memcmp(cps, tok->specials[j].text, (size_t)n * sizeof *cps) == 0)
                sp = &tok->specials[j];
        if (!sp) {
            sp = &tok->specials[tok->n_specials++];
            memcpy(sp->text, cps, (size_t)n * sizeof *cps);
            sp->length = n;
            SD_TRY(token_id(tok, cfg[k].content, cfg[k].key, vocab_path, &sp->id));
            sp->strip_left = sp->strip_right = !cfg[k].is_added_token;
        }
        if (cfg[k].is_added_token) {
            sp->strip_left = cfg[k].lstrip;
            sp->strip_right = cfg[k].rstrip;
        }
    }

    for (uint32_t c = 0; c < 128; c++) {
        tok->ascii_class[c] = sd_uc_in(&sd_uc_rx_letter, c)   ? CLASS_LETTER
                              : sd_uc_in(&sd_uc_rx_number, c) ? CLASS_NUMBER
                              : sd_uc_in(&sd_uc_rx_other, c)  ? CLASS_OTHER
                                                              : CLASS_NONE;
    }
    return SD_OK;
}

sd_status sd_tokenizer_load(const char *dir, sd_tokenizer **out) {
    *out = NULL;
    if (!dir) return sd_fail(SD_ERR_ARG, "sd_tokenizer_load: no tokenizer folder given");
    sd_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory");
    sd_status st = setup(tok, dir);
    if (st != SD_OK) {
        sd_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Text cleanup: whitespace_clean(ftfy.fix_text(text)).lower()
 * --------------------------------------------------------------------------------------------- */

/* The regex module's \s. Unlike str.isspace() it excludes U+001C..U+001F (ftfy deletes those
 * anyway). */
static bool is_rx_space(uint32_t c) {
    if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
    return sd_uc_in(&sd_uc_rx_space, c);
}

static sd_status clean_text(const uint32_t *text, size_t n, sd_u32str *out) {
    sd_u32str fixed = {0}, spaced = {0};
    sd_status st = sd_ftfy_fix_text(text, n, &fixed);
    /* re.sub(r"\s+", " ", text).strip() */
    if (st == SD_OK) st = sd_u32_reserve(&spaced, fixed.len);
    if (st == SD_OK) {
        for (size_t i = 0; i < fixed.len;) {
            if (is_rx_space(fixed.cp[i])) {
                while (i < fixed.len && is_rx_space(fixed.cp[i])) i++;
                spaced.cp[spaced.len++] = ' ';
            } else {
                spaced.cp[spaced.len++] = fixed.cp[i++];
            }
        }
        size_t b = 0, e = spaced.len;
        while (b < e && sd_uc_py_isspace(spaced.cp[b])) b++;
        while (e > b && sd_uc_py_isspace(spaced.cp[e - 1])) e--;
        st = sd_uc_str_lower(spaced.cp + b, e - b, out);
    }
    sd_u32_free(&fixed);
    sd_u32_free(&spaced);
    return st;
}

sd_status sd_clip_clean_text(const char *text, char **out) {
    *out = NULL;
    if (!text) return sd_fail(SD_ERR_ARG, "sd_clip_clean_text: text is NULL");
    sd_u32str raw = {0}, clean = {0};
    sd_bytes bytes = {0};
    sd_status st = sd_utf8_decode_replace((const uint8_t *)text, strlen(text), &raw);
    if (st == SD_OK) st = clean_text(raw.cp, raw.len, &clean);
    if (st == SD_OK) st = sd_utf8_encode(clean.cp, clean.len, &bytes);
    if (st == SD_OK) st = sd_bytes_push(&bytes, 0);
    sd_u32_free(&raw);
    sd_u32_free(&clean);
    if (st != SD_OK) {
        sd_bytes_free(&bytes);
        return st;
    }
    *out = (char *)bytes.b;
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * The split pattern
 * --------------------------------------------------------------------------------------------- */

static int char_class(const sd_tokenizer *tok, uint32_t c) {
    if (c < 128) return tok->ascii_class[c];
    if (sd_uc_in(&sd_uc_rx_letter, c)) return CLASS_LETTER;
    if (sd_uc_in(&sd_uc_rx_number, c)) return CLASS_NUMBER;
    if (sd_uc_in(&sd_uc_rx_other, c)) return CLASS_OTHER;
    return CLASS_NONE;
}

/* Whether input character c matches pattern character p under the regex module's IGNORECASE. */
static bool literal_matches(uint32_t p, uint32_t c) {
    if (c == p) return true;
    for (int k = 0; k < sd_uc_rx_literal_fold_count; k++)
        if (sd_uc_rx_literal_fold[k][0] == p && sd_uc_rx_literal_fold[k][1] == c) return true;
    return false;
}

static size_t literal_at(const uint32_t *t, size_t n, size_t i, const char *lit) {
    size_t m = strlen(lit);
    if (n - i < m) return 0;
    for (size_t k = 0; k < m; k++)
        if (!literal_matches((uint8_t)lit[k], t[i + k])) return 0;
    return m;
}

/* Length of the split pattern's match at t[i] (0: none, the character is skipped). Besides
 * whitespace, one character matches no alternative: U+0345 COMBINING GREEK YPOGEGRAMMENI, which
 * IGNORECASE keeps out of [^\s\p{L}\p{N}] (it case-folds to a letter) yet not in [\p{L}]; the
 * reference drops it silently, and so do we. */
static size_t piece_at(const sd_tokenizer *tok, const uint32_t *t, size_t n, size_t i) {
    static const char *const literals[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    if (t[i] == '<' || t[i] == '\'') {
        for (size_t k = 0; k < sizeof literals / sizeof *literals; k++) {
            size_t m = literal_at(t, n, i, literals[k]);
            if (m) return m;
        }
    }
    int cls = char_class(tok, t[i]);
    if (cls == CLASS_NUMBER) return 1;
    if (cls == CLASS_NONE) return 0;
    size_t j = i + 1;
    while (j < n && char_class(tok, t[j]) == cls) j++;
    return j - i;
}

/* ------------------------------------------------------------------------------------------------
 * BPE
 * --------------------------------------------------------------------------------------------- */

typedef struct {
    int32_t rank;
    int32_t pos;   /* index of the pair's left symbol */
    int32_t left;  /* symbols it was pushed for (a stale entry no longer matches) */
    int32_t right;
    int32_t merged;
} pair_entry;

typedef struct {
    int32_t *sym, *next, *prev;
    pair_entry *heap;
    size_t heap_len, cap, heap_cap;
} bpe_work;

static void bpe_work_free(bpe_work *w) {
    free(w->sym);
    free(w->next);
    free(w->prev);
    free(w->heap);
    memset(w, 0, sizeof *w);
}

static sd_status bpe_work_reserve(bpe_work *w, size_t n) {
    if (n <= w->cap) return SD_OK;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(w->sym, cap * sizeof *a);
    if (a) w->sym = a;
    int32_t *b = a ? realloc(w->next, cap * sizeof *b) : NULL;
    if (b) w->next = b;
    int32_t *c = b ? realloc(w->prev, cap * sizeof *c) : NULL;
    if (c) w->prev = c;
    pair_entry *h = c ? realloc(w->heap, 3 * cap * sizeof *h) : NULL;
    if (h) w->heap = h;
    if (!h) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory for a %zu-byte word", n);
    w->cap = cap;
    w->heap_cap = 3 * cap;
    return SD_OK;
}

static bool entry_less(const pair_entry *a, const pair_entry *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(bpe_work *w, pair_entry e) {
    /* Capacity: n-1 initial pairs plus two per merge (at most n-1 merges) stay below 3n. */
    size_t i = w->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!entry_less(&e, &w->heap[parent])) break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = e;
}

static pair_entry heap_pop(bpe_work *w) {
    pair_entry top = w->heap[0];
    pair_entry last = w->heap[--w->heap_len];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= w->heap_len) break;
        if (child + 1 < w->heap_len && entry_less(&w->heap[child + 1], &w->heap[child])) child++;
        if (!entry_less(&w->heap[child], &last)) break;
        w->heap[i] = w->heap[child];
        i = child;
    }
    if (w->heap_len) w->heap[i] = last;
    return top;
}

static void push_pair(const sd_tokenizer *tok, bpe_work *w, int pos) {
    int nx = w->next[pos];
    if (pos < 0 || nx < 0) return;
    const merge_slot *m = find_merge(&tok->merges, w->sym[pos], w->sym[nx]);
    if (m) heap_push(w, (pair_entry){m->rank, pos, w->sym[pos], w->sym[nx], m->merged});
}

static sd_status push_id_raw(int **ids, size_t *n_ids, size_t *cap_ids, int id) {
    if (*n_ids == *cap_ids) {
        size_t cap = *cap_ids ? *cap_ids * 2 : 64;
        int *p = realloc(*ids, cap * sizeof *p);
        if (!p) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory for %zu token ids", cap);
        *ids = p;
        *cap_ids = cap;
    }
    (*ids)[(*n_ids)++] = id;
    return SD_OK;
}

/* BPE of one piece (its UTF-8 bytes, at least one); appends output ids. */
static sd_status bpe_piece(const sd_tokenizer *tok, const uint8_t *bytes, size_t n, bpe_work *w, int **ids,
                           size_t *n_ids, size_t *cap_ids) {
    /* The reference's BPE cache is seeded with the two special strings: they come out whole. */
    bool is_start = n == 15 && memcmp(bytes, "<|startoftext|>", 15) == 0;
    bool is_end = n == 13 && memcmp(bytes, "<|endoftext|>", 13) == 0;
    if (is_start || is_end) {
        int k = is_start ? tok->start_symbol : tok->end_symbol;
        return push_id_raw(ids, n_ids, cap_ids, k >= 0 ? tok->symbols[k].id : tok->unk);
    }
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = i + 1 < n ? tok->byte_symbol[bytes[i]] : tok->byte_symbol_final[bytes[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    w->heap_len = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(tok, w, (int)i);
    while (w->heap_len) {
        /* One reference iteration: the lowest rank present, merged everywhere left to right.
         * Entries of one rank all name the same pair; the heap hands them out by position. */
        int32_t rank = w->heap[0].rank;
        while (w->heap_len && w->heap[0].rank == rank) {
            pair_entry e = heap_pop(w);
            int pos = e.pos, nx = w->next[pos];
            if (w->sym[pos] != e.left || nx < 0 || w->sym[nx] != e.right) continue; /* stale */
            w->sym[pos] = e.merged;
            w->sym[nx] = -1;
            w->next[pos] = w->next[nx];
            if (w->next[nx] >= 0) w->prev[w->next[nx]] = pos;
            /* New pairs: their rank differs from `rank` (a pair containing the merged symbol
             * cannot be the pair that made it), so they wait for a later iteration. */
            if (w->prev[pos] >= 0) push_pair(tok, w, w->prev[pos]);
            push_pair(tok, w, pos);
        }
    }
    /* Position 0 always survives: merges remove the right-hand symbol. */
    for (int i = 0; i >= 0; i = w->next[i]) SD_TRY(push_id_raw(ids, n_ids, cap_ids, tok->symbols[w->sym[i]].id));
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Whole-text tokenisation
 * --------------------------------------------------------------------------------------------- */

typedef struct {
    int *ids;
    size_t n, cap;
} id_list;

static sd_status push_id(id_list *l, int id) { return push_id_raw(&l->ids, &l->n, &l->cap, id); }

/* CLIPTokenizer._tokenize on one piece of text between special tokens. */
static sd_status tokenize_segment(const sd_tokenizer *tok, const uint32_t *text, size_t n, id_list *out) {
    sd_u32str clean = {0};
    sd_bytes bytes = {0};
    bpe_work w = {0};
    sd_status st = clean_text(text, n, &clean);
    for (size_t i = 0; st == SD_OK && i < clean.len;) {
        size_t m = piece_at(tok, clean.cp, clean.len, i);
        if (!m) {
            i++;
            continue;
        }
        bytes.len = 0;
        st = sd_utf8_encode(clean.cp + i, m, &bytes);
        if (st == SD_OK) st = bpe_work_reserve(&w, bytes.len);
        if (st == SD_OK) st = bpe_piece(tok, bytes.b, bytes.len, &w, &out->ids, &out->n, &out->cap);
        i += m;
    }
    sd_u32_free(&clean);
    sd_bytes_free(&bytes);
    bpe_work_free(&w);
    return st;
}

/* Index of the special token starting at t[i], or -1 (longest match, as the trie takes). */
static int special_at(const sd_tokenizer *tok, const uint32_t *t, size_t n, size_t i) {
    int best = -1;
    for (int k = 0; k < tok->n_specials; k++) {
        const special_token *sp = &tok->specials[k];
        if ((size_t)sp->length <= n - i && memcmp(t + i, sp->text, (size_t)sp->length * sizeof *t) == 0 &&
            (best < 0 || sp->length > tok->specials[best].length))
            best = k;
    }
    return best;
}

/* tokenizer.tokenize(text) -> ids, no BOS/EOS, no length limit. */
static sd_status tokenize_all(const sd_tokenizer *tok, const char *text, id_list *out) {
    sd_u32str raw = {0};
    SD_TRY(sd_utf8_decode_replace((const uint8_t *)text, strlen(text), &raw));
    const uint32_t *t = raw.cp;
    size_t n = raw.len;
    sd_status st = SD_OK;
    size_t seg = 0;            /* start of the pending text segment */
    bool strip_next = false;   /* the previous special token strips this segment's left side */
    size_t i = 0;
    while (st == SD_OK && i <= n) {
        int k = i < n ? special_at(tok, t, n, i) : -1;
        if (k < 0 && i < n) {
            i++;
            continue;
        }
        size_t b = seg, e = i;
        if (strip_next)
            while (b < e && sd_uc_py_isspace(t[b])) b++;
        if (k >= 0 && tok->specials[k].strip_left)
            while (e > b && sd_uc_py_isspace(t[e - 1])) e--;
        if (e > b) st = tokenize_segment(tok, t + b, e - b, out);
        if (k < 0) break;
        if (st == SD_OK) st = push_id(out, tok->specials[k].id);
        strip_next = tok->specials[k].strip_right;
        i += (size_t)tok->specials[k].length;
        seg = i;
    }
    sd_u32_free(&raw);
    return st;
}

sd_status sd_tokenize(const sd_tokenizer *tok, const char *text, int *ids, int cap, int *n) {
    *n = 0;
    if (!tok || !text) return sd_fail(SD_ERR_ARG, "sd_tokenize: %s is NULL", tok ? "text" : "tokenizer");
    if (cap < 0 || (cap > 0 && !ids)) return sd_fail(SD_ERR_ARG, "sd_tokenize: bad output buffer (cap %d)", cap);
    id_list l = {0};
    sd_status st = tokenize_all(tok, text, &l);
    if (st == SD_OK && ids && l.n > (size_t)cap)
        st = sd_fail(SD_ERR_ARG, "sd_tokenize: the prompt has %zu tokens but the buffer holds %d", l.n, cap);
    if (st == SD_OK) {
        if (ids && l.n) memcpy(ids, l.ids, l.n * sizeof *ids);
        *n = (int)l.n;
    }
    free(l.ids);
    return st;
}

sd_status sd_tokenize_padded(const sd_tokenizer *tok, const char *text, int ids[SD_CLIP_MAX_LEN], int *n_tokens) {
    if (n_tokens) *n_tokens = 0;
    if (!tok || !text) return sd_fail(SD_ERR_ARG, "sd_tokenize_padded: %s is NULL", tok ? "text" : "tokenizer");
    id_list l = {0};
    sd_status st = tokenize_all(tok, text, &l);
    if (st != SD_OK) {
        free(l.ids);
        return st;
    }
    const size_t room = SD_CLIP_MAX_LEN - 2;
    size_t kept = l.n < room ? l.n : room;
    if (l.n > room) {
        sd_warn("prompt has %zu tokens but CLIP reads %zu (plus start/end): the last %zu are dropped (prompt starts "
                "\"%.60s\")",
                l.n, room, l.n - room, text);
    }
    ids[0] = tok->bos;
    if (kept) memcpy(ids + 1, l.ids, kept * sizeof *ids);
    ids[kept + 1] = tok->eos;
    for (size_t i = kept + 2; i < SD_CLIP_MAX_LEN; i++) ids[i] = tok->pad;
    if (n_tokens) *n_tokens = (int)l.n;
    free(l.ids);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Decoding
 * --------------------------------------------------------------------------------------------- */

/* Replaces every occurrence of `from` by `to` (Python str.replace, left to right). */
static sd_status replace_all(sd_u32str *s, const char *from, const char *to) {
    size_t nf = strlen(from), nt = strlen(to);
    sd_u32str out = {0};
    SD_TRY(sd_u32_reserve(&out, s->len + 1));
    sd_status st = SD_OK;
    for (size_t i = 0; st == SD_OK && i < s->len;) {
        bool hit = i + nf <= s->len;
        for (size_t k = 0; hit && k < nf; k++) hit = s->cp[i + k] == (uint8_t)from[k];
        if (hit) {
            for (size_t k = 0; st == SD_OK && k < nt; k++) st = sd_u32_push(&out, (uint8_t)to[k]);
            i += nf;
        } else {
            st = sd_u32_push(&out, s->cp[i++]);
        }
    }
    if (st == SD_OK) sd_u32_swap(s, &out);
    sd_u32_free(&out);
    return st;
}

/* tokenizer.decode([id]) in 4.25.1: byte-decode the token's string, "</w>" -> " ", strip(), then
 * clean_up_tokenization. An id no token has decodes to "". */
static sd_status decode_token(const sd_tokenizer *tok, int id, sd_u32str *out) {
    out->len = 0;
    if (id < 0 || id > tok->max_id || tok->id_to_symbol[id] < 0) return SD_OK;
    int k = tok->id_to_symbol[id];
    const symbol *sym = &tok->symbols[k];
    sd_u32str chars = {0};
    sd_bytes bytes = {0};
    sd_status st = sd_utf8_decode_replace((const uint8_t *)symbol_text(tok, k), sym->length, &chars);
    for (size_t i = 0; st == SD_OK && i < chars.len; i++) {
        uint32_t c = chars.cp[i];
        if (c < 0x144 && tok->char_byte[c] >= 0) {
            st = sd_bytes_push(&bytes, (uint8_t)tok->char_byte[c]);
        } else { /* not a byte-level character (only in foreign vocabularies): keep its UTF-8 */
            uint8_t buf[4];
            st = sd_bytes_append(&bytes, buf, (size_t)sd_utf8_put(c, buf));
        }
    }
    if (st == SD_OK) st = sd_utf8_decode_replace(bytes.b, bytes.len, out);
    if (st == SD_OK) st = replace_all(out, "</w>", " ");
    if (st == SD_OK) {
        size_t b = 0, e = out->len;
        while (b < e && sd_uc_py_isspace(out->cp[b])) b++;
        while (e > b && sd_uc_py_isspace(out->cp[e - 1])) e--;
        if (e > b) memmove(out->cp, out->cp + b, (e - b) * sizeof *out->cp);
        out->len = e - b;
    }
    static const char *const cleanup[][2] = {{" .", "."},   {" ?", "?"},     {" !", "!"},     {" ,", ","},
                                             {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},   {" 's", "'s"},
                                             {" 've", "'ve"}, {" 're", "'re"}};
    for (size_t c = 0; st == SD_OK && c < sizeof cleanup / sizeof *cleanup; c++)
        st = replace_all(out, cleanup[c][0], cleanup[c][1]);
    sd_u32_free(&chars);
    sd_bytes_free(&bytes);
    return st;
}

const char *sd_token_decode(const sd_tokenizer *tok, int id, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    buf[0] = 0;
    if (!tok) return buf;
    sd_u32str s = {0};
    if (decode_token(tok, id, &s) == SD_OK) {
        size_t used = 0;
        for (size_t i = 0; i < s.len; i++) {
            uint8_t tmp[4];
            int m = sd_utf8_put(s.cp[i], tmp);
            if (used + (size_t)m + 1 > n) break; /* truncate at a character boundary */
            memcpy(buf + used, tmp, (size_t)m);
            used += (size_t)m;
        }
        buf[used] = 0;
    }
    sd_u32_free(&s);
    return buf;
}

/* ------------------------------------------------------------------------------------------------
 * get_word_inds
 * --------------------------------------------------------------------------------------------- */

/* text.split(" "): the [start, end) of each word in *starts / *ends (malloc'd). */
static sd_status split_on_spaces(const sd_u32str *t, size_t **starts, size_t **ends, size_t *count) {
    size_t words = 1;
    for (size_t i = 0; i < t->len; i++) words += t->cp[i] == ' ';
    *starts = malloc(words * sizeof **starts);
    *ends = malloc(words * sizeof **ends);
    if (!*starts || !*ends) {
        free(*starts);
        free(*ends);
        return sd_fail(SD_ERR_OOM, "get_word_inds: out of memory for %zu words", words);
    }
    size_t w = 0, b = 0;
    for (size_t i = 0; i <= t->len; i++) {
        if (i == t->len || t->cp[i] == ' ') {
            (*starts)[w] = b;
            (*ends)[w] = i;
            w++;
            b = i + 1;
        }
    }
    *count = words;
    return SD_OK;
}

/* The reference loop, for the word positions flagged in `selected`. */
static sd_status word_indices(const sd_tokenizer *tok, const char *text, const size_t *starts, const size_t *ends,
                              size_t n_words, const bool *selected, int *inds, int cap, int *n) {
    id_list l = {0};
    sd_u32str piece = {0};
    sd_status st = tokenize_all(tok, text, &l);
    size_t cur_len = 0, ptr = 0;
    int found = 0;
    for (size_t i = 0; st == SD_OK && i < l.n; i++) {
        st = decode_token(tok, l.ids[i], &piece);
        if (st != SD_OK) break;
        /* .strip("#") */
        size_t b = 0, e = piece.len;
        while (b < e && piece.cp[b] == '#') b++;
        while (e > b && piece.cp[e - 1] == '#') e--;
        cur_len += e - b;
        if (ptr < n_words && selected[ptr]) {
            if (found == cap) {
                st = sd_fail(SD_ERR_ARG, "get_word_inds: more than %d token positions for the word in \"%s\"", cap,
                             text);
                break;
            }
            inds[found++] = (int)i + 1;
        }
        if (ptr >= n_words) {
            st = sd_fail(SD_ERR_ARG,
                         "get_word_inds: the tokens of \"%s\" outrun its %zu space-separated words (ftfy or the "
                         "tokenizer changed the text's length); the reference raises IndexError here",
                         text, n_words);
            break;
        }
        if (cur_len >= ends[ptr] - starts[ptr]) {
            ptr++;
            cur_len = 0;
        }
    }
    if (st == SD_OK) *n = found;
    sd_u32_free(&piece);
    free(l.ids);
    return st;
}

static sd_status word_lookup(const sd_tokenizer *tok, const char *text, const char *word, int word_pos, int *inds,
                             int cap, int *n) {
    *n = 0;
    if (!tok || !text) return sd_fail(SD_ERR_ARG, "get_word_inds: %s is NULL", tok ? "text" : "tokenizer");
    if (cap < 0 || (cap > 0 && !inds)) return sd_fail(SD_ERR_ARG, "get_word_inds: bad output buffer (cap %d)", cap);
    sd_u32str raw = {0}, target = {0};
    size_t *starts = NULL, *ends = NULL, n_words = 0;
    bool *selected = NULL;
    sd_status st = sd_utf8_decode_replace((const uint8_t *)text, strlen(text), &raw);
    if (st == SD_OK && word) st = sd_utf8_decode_replace((const uint8_t *)word, strlen(word), &target);
    if (st == SD_OK) st = split_on_spaces(&raw, &starts, &ends, &n_words);
    if (st == SD_OK && !(selected = calloc(n_words, sizeof *selected)))
        st = sd_fail(SD_ERR_OOM, "get_word_inds: out of memory");
    if (st == SD_OK) {
        size_t hits = 0;
        if (word) {
            for (size_t w = 0; w < n_words; w++) {
                size_t len = ends[w] - starts[w];
                if (len == target.len && memcmp(raw.cp + starts[w], target.cp, len * sizeof *raw.cp) == 0) {
                    selected[w] = true;
                    hits++;
                }
            }
            if (!hits) st = sd_fail(SD_ERR_ARG, "word \"%s\" is not one of the space-separated words of prompt \"%s\"", word, text);
        } else if (word_pos < 0 || (size_t)word_pos >= n_words) {
            st = sd_fail(SD_ERR_ARG, "word position %d is outside prompt \"%s\" (%zu words)", word_pos, text, n_words);
        } else {
            selected[word_pos] = true;
        }
    }
    if (st == SD_OK) st = word_indices(tok, text, starts, ends, n_words, selected, inds, cap, n);
    sd_u32_free(&raw);
    sd_u32_free(&target);
    free(starts);
    free(ends);
    free(selected);
    return st;
}

sd_status sd_word_token_indices(const sd_tokenizer *tok, const char *text, const char *word, int *inds, int cap,
                                int *n) {
    if (!word) return sd_fail(SD_ERR_ARG, "get_word_inds: word is NULL");
    return word_lookup(tok, text, word, -1, inds, cap, n);
}

sd_status sd_word_pos_token_indices(const sd_tokenizer *tok, const char *text, int word_pos, int *inds, int cap,
                                    int *n) {
    return word_lookup(tok, text, NULL, word_pos, inds, cap, n);
}
