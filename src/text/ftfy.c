/* ftfy.c: ftfy.fix_text() with its default configuration, as transformers' CLIPTokenizer calls it
 * on every prompt when ftfy is installed (it is in the reference environment).
 *
 * Port of ftfy 6.3.1 (`fix_text`, `fix_and_explain`, `fix_encoding`), step for step:
 *
 *   fix_text           splits the text into segments after each "\n" (and every 1,000,000 code
 *                      points); unescape_html="auto" is switched off for the segment holding the
 *                      first "<" and every segment after it, as ftfy's loop does.
 *   fix_and_explain    per segment, repeated until nothing changes:
 *     unescape_html          "&name;" entities from ftfy's table (html5 names ending in ";" plus
 *                            the all-caps Latin forms ftfy adds), "&#NNN;" / "&#xHHH;" with
 *                            html.unescape's fix-ups (C1 numbers as windows-1252, surrogates and
 *                            numbers above U+10FFFF as U+FFFD, html's "invalid" numbers deleted,
 *                            and ftfy's rule that a result containing ";" keeps the entity).
 *     fix_encoding           the whole mojibake repair, repeated until stable:
 *                            - ASCII text and text the BADNESS_RE heuristic does not flag stay;
 *                            - for each of ftfy's 10 single-byte encodings (latin-1,
 *                              sloppy-windows-1252/1251/1250/1253/1254/1257, iso-8859-2,
 *                              macroman, cp437) the text can be encoded in: restore_byte_a0 (not for macroman), then
 *                              replace_lossy_sequences (sloppy codecs only), then decode as UTF-8
 *                              or ftfy's utf-8-variants (CESU-8, C0 80); the first that decodes wins;
 *                            - decode_inconsistent_utf8 (UTF8_DETECTOR_RE runs, fixed one by one,
 *                              recursively);
 *                            - latin-1 text re-read as strict windows-1252 (ftfy's test for
 *                              "windows-1252" in its list never matches the "sloppy-" names, so
 *                              this branch always runs when latin-1 fits: reproduced);
 *                            - fix_c1_controls.
 *     fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks,
 *     remove_terminal_escapes, remove_control_chars, then NFC.
 *
 * Not ported, because it cannot change anything here: fix_surrogates (our text comes from UTF-8,
 * so it never holds surrogate code points; html.unescape maps surrogate numbers to U+FFFD, and
 * utf-8-variants only yields whole pairs). Everything else in ftfy's default path is covered.
 *
 * All character classes, codec tables and the entity table are generated from the installed ftfy
 * by tools/gen_unicode_tables.py; the regexes that are not plain character classes (ALTERED_UTF8_RE,
 * A_GRAVE_WORD_RE, LOSSY_UTF8_RE, UTF8_DETECTOR_RE, ANSI_RE) are transcribed below as matchers.
 * Both fixed-point loops stop after SD_FTFY_MAX_ROUNDS rounds as a guard against a cycle (ftfy
 * itself would loop forever; no input is known to need more than a few rounds). */
#include "text_internal.h"

#include <stdlib.h>
#include <string.h>

#define SD_FTFY_MAX_ROUNDS 64
#define SD_FTFY_MAX_SEGMENT 1000000

/* Positions in ftfy's CHARMAP_ENCODINGS (tools/gen_unicode_tables.py checks them). */
enum { CHARMAP_LATIN1 = 0, CHARMAP_SLOPPY_1252 = 1 };

static bool in_class(int cls, uint32_t c) { return sd_uc_in(&sd_ftfy_classes[cls], c); }

static bool all_ascii(const uint32_t *t, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (t[i] >= 0x80) return false;
    return true;
}

/* ------------------------------------------------------------------------------------------------
 * is_bad: does BADNESS_RE match anywhere in t[0..n)?
 * --------------------------------------------------------------------------------------------- */

static bool is_bad(const uint32_t *t, size_t n) {
    for (size_t i = 0; i < n; i++) {
        for (int p = 0; p < sd_ftfy_badness_count; p++) {
            const sd_ftfy_pattern *pat = &sd_ftfy_badness[p];
            if (pat->anchored && i != 0) continue;
            if (i + pat->len > n) continue;
            bool ok = true;
            for (int k = 0; k < pat->len && ok; k++) ok = in_class(pat->cls[k], t[i + (size_t)k]);
            if (ok) return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------------------------------------
 * unescape_html
 * --------------------------------------------------------------------------------------------- */

static bool is_ascii_alnum(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int entity_cmp(const void *key, const void *elem) {
    return strcmp((const char *)key, ((const sd_ftfy_entity *)elem)->name);
}

/* html.unescape of "&#<body>;" as ftfy uses it. Returns false when the reference keeps the text
 * unchanged; else the replacement (possibly empty) in out. */
static sd_status numeric_reference(const uint32_t *body, size_t n, sd_u32str *out, bool *replaced) {
    *replaced = false;
    bool hex = body[0] == 'x' || body[0] == 'X';
    size_t start = hex ? 1 : 0;
    if (start >= n) return SD_OK;
    uint64_t value = 0;
    for (size_t i = start; i < n; i++) {
        uint32_t c = body[i];
        int digit;
        if (c >= '0' && c <= '9') digit = (int)(c - '0');
        else if (hex && c >= 'a' && c <= 'f') digit = (int)(c - 'a' + 10);
        else if (hex && c >= 'A' && c <= 'F') digit = (int)(c - 'A' + 10);
        else return SD_OK; /* html.unescape decodes only a prefix: the ";" survives, ftfy keeps all */
        value = value * (hex ? 16 : 10) + (uint64_t)digit;
        if (value > 0x110000) value = 0x110000; /* any larger number behaves the same */
    }
    uint32_t result = 0;
    bool have_result = true;
    for (int k = 0; k < sd_html_invalid_charref_count; k++)
        if (sd_html_invalid_charrefs[k][0] == value) {
            result = sd_html_invalid_charrefs[k][1];
            goto done;
        }
    if ((value >= 0xD800 && value <= 0xDFFF) || value > 0x10FFFF) result = 0xFFFD;
    else if (sd_uc_in(&sd_html_invalid_codepoints, (uint32_t)value)) have_result = false;
    else result = (uint32_t)value;
done:
    if (have_result && result == ';') return SD_OK; /* "&#59;": the result holds a ";" */
    *replaced = true;
    return have_result ? sd_u32_push(out, result) : SD_OK;
}

/* HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24}; substituted with ftfy's _unescape_fixup. */
static sd_status unescape_html(const sd_u32str *in, sd_u32str *out) {
    out->len = 0;
    SD_TRY(sd_u32_reserve(out, in->len));
    const uint32_t *t = in->cp;
    size_t n = in->len;
    size_t i = 0;
    while (i < n) {
        if (t[i] != '&') {
            SD_TRY(sd_u32_push(out, t[i++]));
            continue;
        }
        size_t j = i + 1;
        bool numeric = j < n && t[j] == '#';
        if (numeric) j++;
        size_t body = j;
        while (j < n && j - body < 25 && is_ascii_alnum(t[j])) j++;
        size_t body_len = j - body;
        if (body_len < 1 || body_len > 24 || j >= n || t[j] != ';') {
            SD_TRY(sd_u32_push(out, t[i++]));
            continue;
        }
        size_t end = j + 1; /* one past the ';' */
        bool replaced = false;
        char key[32];
        size_t k = 0;
        for (size_t p = i; p < end; p++) key[k++] = (char)t[p];
        key[k] = 0;
        const sd_ftfy_entity *e =
            bsearch(key, sd_ftfy_entities, (size_t)sd_ftfy_entity_count, sizeof *e, entity_cmp);
        if (e) {
            SD_TRY(sd_utf8_decode_replace((const uint8_t *)e->utf8, strlen(e->utf8), out));
            replaced = true;
        } else if (numeric) {
            SD_TRY(numeric_reference(t + body, body_len, out, &replaced));
        }
        if (!replaced) SD_TRY(sd_u32_append(out, t + i, end - i));
        i = end;
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Byte-level transcoders used inside fix_encoding
 * --------------------------------------------------------------------------------------------- */

static bool is_cont(uint8_t b) { return b >= 0x80 && b <= 0xBF; }
/* [\x80-\x84\x86-\x9f\xa1-\xbf]: a continuation byte other than 85 and A0. */
static bool is_cont_not_85_a0(uint8_t b) { return is_cont(b) && b != 0x85 && b != 0xA0; }

/* Length of an ALTERED_UTF8_RE match at b[i], or 0. */
static size_t altered_utf8_at(const uint8_t *b, size_t n, size_t i) {
    uint8_t x = b[i];
    if ((x == 0xC2 || x == 0xC3 || x == 0xC5 || x == 0xCE || x == 0xD0 || x == 0xD9) && i + 1 < n &&
        b[i + 1] == ' ')
        return 2;
    if ((x == 0xE2 || x == 0xE3) && i + 2 < n && b[i + 1] == ' ' && is_cont_not_85_a0(b[i + 2])) return 3;
    if (x >= 0xE0 && x <= 0xE3 && i + 2 < n && is_cont_not_85_a0(b[i + 1]) && b[i + 2] == ' ') return 3;
    if (x == 0xF0 && i + 3 < n) {
        const uint8_t *p = b + i + 1;
        if (p[0] == ' ' && is_cont(p[1]) && is_cont(p[2])) return 4;
        if (is_cont(p[0]) && p[1] == ' ' && is_cont(p[2])) return 4;
        if (is_cont(p[0]) && is_cont(p[1]) && p[2] == ' ') return 4;
    }
    return 0;
}

static bool altered_utf8_search(const sd_bytes *s) {
    for (size_t i = 0; i < s->len; i++)
        if (altered_utf8_at(s->b, s->len, i)) return true;
    return false;
}

static bool starts_with(const uint8_t *b, size_t n, size_t i, const char *lit) {
    size_t m = strlen(lit);
    return i + m <= n && memcmp(b + i, lit, m) == 0;
}

/* ftfy.fixes.restore_byte_a0: A_GRAVE_WORD_RE first, then ALTERED_UTF8_RE with spaces -> A0. */
static sd_status restore_byte_a0(sd_bytes *s) {
    sd_bytes t = {0};
    sd_status st = sd_bytes_reserve(&t, s->len + 16);
    /* A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )" -> b"\xc3\xa0 " */
    for (size_t i = 0; st == SD_OK && i < s->len;) {
        const uint8_t *b = s->b;
        size_t n = s->len;
        if (b[i] == 0xC3 && i + 1 < n && b[i + 1] == ' ' && !starts_with(b, n, i + 2, " ") &&
            !starts_with(b, n, i + 2, "quele") && !starts_with(b, n, i + 2, "quela") &&
            !starts_with(b, n, i + 2, "quilo") && !starts_with(b, n, i + 2, "s ")) {
            st = sd_bytes_append(&t, "\xc3\xa0 ", 3);
            i += 2;
        } else {
            st = sd_bytes_push(&t, b[i++]);
        }
    }
    sd_bytes u = {0};
    if (st == SD_OK) st = sd_bytes_reserve(&u, t.len);
    for (size_t i = 0; st == SD_OK && i < t.len;) {
        size_t m = altered_utf8_at(t.b, t.len, i);
        if (m) {
            for (size_t k = 0; k < m; k++) u.b[u.len++] = t.b[i + k] == ' ' ? 0xA0 : t.b[i + k];
            i += m;
        } else {
            u.b[u.len++] = t.b[i++];
        }
    }
    sd_bytes_free(&t);
    if (st != SD_OK) {
        sd_bytes_free(&u);
        return st;
    }
    sd_bytes_free(s);
    *s = u;
    return SD_OK;
}

static bool is_sub_or_q(uint8_t b) { return b == 0x1A || b == '?'; }
static bool is_sub_or_cont(uint8_t b) { return b == 0x1A || is_cont(b); }
static bool is_sub_q_or_cont(uint8_t b) { return b == 0x1A || b == '?' || is_cont(b); }

/* Length of a LOSSY_UTF8_RE match at b[i], or 0 (alternatives in the pattern's order). */
static size_t lossy_utf8_at(const uint8_t *b, size_t n, size_t i) {
    uint8_t x = b[i];
    size_t left = n - i;
    if (x >= 0xC2 && x <= 0xDF && left >= 2 && b[i + 1] == 0x1A) return 2;
    if ((x == 0xC2 || x == 0xC3) && left >= 2 && b[i + 1] == '?') return 2;
    if (x == 0xED && left >= 6) {
        const uint8_t *p = b + i;
        bool hi_ok = p[1] >= 0xA0 && p[1] <= 0xAF && p[3] == 0xED && p[4] >= 0xB0 && p[4] <= 0xBF;
        if (hi_ok && is_sub_or_q(p[2]) && is_sub_q_or_cont(p[5])) return 6;
        if (hi_ok && is_sub_q_or_cont(p[2]) && is_sub_or_q(p[5])) return 6;
    }
    if (x >= 0xE0 && x <= 0xEF && left >= 3) {
        if (is_sub_or_q(b[i + 1]) && is_sub_or_cont(b[i + 2])) return 3;
        if (is_sub_or_cont(b[i + 1]) && is_sub_or_q(b[i + 2])) return 3;
    }
    if (x >= 0xF0 && x <= 0xF4 && left >= 4) {
        const uint8_t *p = b + i + 1;
        if (is_sub_or_q(p[0]) && is_sub_or_cont(p[1]) && is_sub_or_cont(p[2])) return 4;
        if (is_sub_or_cont(p[0]) && is_sub_or_q(p[1]) && is_sub_or_cont(p[2])) return 4;
        if (is_sub_or_cont(p[0]) && is_sub_or_cont(p[1]) && is_sub_or_q(p[2])) return 4;
    }
    if (x == 0x1A) return 1;
    return 0;
}

/* ftfy.fixes.replace_lossy_sequences: each LOSSY_UTF8_RE match -> the UTF-8 of U+FFFD. */
static sd_status replace_lossy_sequences(sd_bytes *s) {
    sd_bytes t = {0};
    SD_TRY(sd_bytes_reserve(&t, s->len * 3 + 1));
    for (size_t i = 0; i < s->len;) {
        size_t m = lossy_utf8_at(s->b, s->len, i);
        if (m) {
            memcpy(t.b + t.len, "\xef\xbf\xbd", 3);
            t.len += 3;
            i += m;
        } else {
            t.b[t.len++] = s->b[i++];
        }
    }
    sd_bytes_free(s);
    *s = t;
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Single-byte codecs
 * --------------------------------------------------------------------------------------------- */

/* The byte that character c encodes to in charmap `enc`, or -1 when it has none. */
static int charmap_byte(int enc, uint32_t c) {
    const uint32_t *table = sd_ftfy_charmaps[enc];
    if (c < 0x80 && c != 0x1A) return (int)c; /* all ten are ASCII-compatible (checked by the generator) */
    if (table[0x1A] == c) return 0x1A;
    for (int b = 0x80; b < 256; b++)
        if (table[b] == c) return b;
    return -1;
}

static bool charmap_possible(int enc, const uint32_t *t, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (charmap_byte(enc, t[i]) < 0) return false;
    return true;
}

static sd_status charmap_encode(int enc, const uint32_t *t, size_t n, sd_bytes *out) {
    SD_TRY(sd_bytes_reserve(out, n));
    for (size_t i = 0; i < n; i++) out->b[out->len++] = (uint8_t)charmap_byte(enc, t[i]);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * fix_encoding
 * --------------------------------------------------------------------------------------------- */

static sd_status fix_encoding(const uint32_t *t, size_t n, sd_u32str *out);

/* UTF8_DETECTOR_RE at t[i] (i after a character that is not utf8_continuation_strict): the length
 * of the run of UTF-8-looking sequences, or 0. */
static size_t utf8_detector_at(const uint32_t *t, size_t n, size_t i) {
    size_t p = i;
    for (;;) {
        size_t left = n - p;
        if (left >= 2 && in_class(SD_FTFY_UTF8_FIRST_OF_2, t[p]) && in_class(SD_FTFY_UTF8_CONTINUATION, t[p + 1])) {
            p += 2;
        } else if (left >= 3 && in_class(SD_FTFY_UTF8_FIRST_OF_3, t[p]) &&
                   in_class(SD_FTFY_UTF8_CONTINUATION, t[p + 1]) && in_class(SD_FTFY_UTF8_CONTINUATION, t[p + 2])) {
            p += 3;
        } else if (left >= 4 && in_class(SD_FTFY_UTF8_FIRST_OF_4, t[p]) &&
                   in_class(SD_FTFY_UTF8_CONTINUATION, t[p + 1]) && in_class(SD_FTFY_UTF8_CONTINUATION, t[p + 2]) &&
                   in_class(SD_FTFY_UTF8_CONTINUATION, t[p + 3])) {
            p += 4;
        } else {
            return p - i;
        }
    }
}

static bool detector_allowed_at(const uint32_t *t, size_t i) {
    return i == 0 || !in_class(SD_FTFY_UTF8_CONTINUATION_STRICT, t[i - 1]);
}

static bool utf8_detector_search(const uint32_t *t, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (detector_allowed_at(t, i) && utf8_detector_at(t, n, i)) return true;
    return false;
}

/* ftfy.fixes.decode_inconsistent_utf8. */
static sd_status decode_inconsistent_utf8(const uint32_t *t, size_t n, sd_u32str *out) {
    out->len = 0;
    size_t i = 0;
    while (i < n) {
        size_t m = detector_allowed_at(t, i) ? utf8_detector_at(t, n, i) : 0;
        if (!m) {
            SD_TRY(sd_u32_push(out, t[i++]));
            continue;
        }
        if (m < n && is_bad(t + i, m)) {
            sd_u32str fixed = {0};
            sd_status st = fix_encoding(t + i, m, &fixed);
            if (st == SD_OK) st = sd_u32_append(out, fixed.cp, fixed.len);
            sd_u32_free(&fixed);
            SD_TRY(st);
        } else {
            SD_TRY(sd_u32_append(out, t + i, m));
        }
        i += m;
    }
    return SD_OK;
}

/* One step of ftfy's _fix_encoding_one_step_and_explain; out receives the (possibly unchanged)
 * text. */
static sd_status fix_encoding_step(const uint32_t *t, size_t n, sd_u32str *out) {
    out->len = 0;
    if (n == 0 || all_ascii(t, n) || !is_bad(t, n)) return sd_u32_append(out, t, n);

    bool possible[SD_FTFY_N_CHARMAPS] = {false};
    for (int enc = 0; enc < SD_FTFY_N_CHARMAPS; enc++) {
        if (!charmap_possible(enc, t, n)) continue;
        possible[enc] = true;
        const char *name = sd_ftfy_charmap_names[enc];
        sd_bytes bytes = {0};
        sd_status st = charmap_encode(enc, t, n, &bytes);
        if (st == SD_OK && strcmp(name, "macroman") != 0 && altered_utf8_search(&bytes))
            st = restore_byte_a0(&bytes);
        if (st == SD_OK && strncmp(name, "sloppy", 6) == 0) st = replace_lossy_sequences(&bytes);
        if (st == SD_OK) {
            st = sd_utf8_decode_variants(bytes.b, bytes.len, out);
            if (st == SD_ERR_FORMAT) { /* not UTF-8 in this encoding: try the next one */
                out->len = 0;
                sd_bytes_free(&bytes);
                continue;
            }
        }
        sd_bytes_free(&bytes);
        return st;
    }

    if (utf8_detector_search(t, n)) {
        SD_TRY(decode_inconsistent_utf8(t, n, out));
        if (!(out->len == n && memcmp(out->cp, t, n * sizeof *t) == 0)) return SD_OK;
        out->len = 0;
    }

    if (possible[CHARMAP_LATIN1]) {
        /* latin-1 -> strict windows-1252; undefined bytes make Python's decode fail. */
        bool decodes = true, changed = false;
        for (size_t i = 0; i < n && decodes; i++) {
            uint32_t c = sd_ftfy_cp1252_strict[t[i]];
            if (c == 0xFFFFFFFFu) decodes = false;
            else if (c != t[i]) changed = true;
        }
        if (decodes && changed) {
            SD_TRY(sd_u32_reserve(out, n));
            for (size_t i = 0; i < n; i++) out->cp[i] = sd_ftfy_cp1252_strict[t[i]];
            out->len = n;
            return SD_OK;
        }
    }

    /* fix_c1_controls on what is left (sloppy windows-1252 for U+0080..U+009F). */
    SD_TRY(sd_u32_append(out, t, n));
    for (size_t i = 0; i < n; i++)
        if (out->cp[i] >= 0x80 && out->cp[i] <= 0x9F) out->cp[i] = sd_ftfy_charmaps[CHARMAP_SLOPPY_1252][out->cp[i]];
    return SD_OK;
}

static sd_status fix_encoding(const uint32_t *t, size_t n, sd_u32str *out) {
    sd_u32str cur = {0}, next = {0};
    sd_status st = sd_u32_append(&cur, t, n);
    for (int round = 0; st == SD_OK; round++) {
        st = fix_encoding_step(cur.cp, cur.len, &next);
        if (st != SD_OK || sd_u32_equal(&cur, &next)) break;
        sd_u32_swap(&cur, &next);
        if (round == SD_FTFY_MAX_ROUNDS) {
            sd_warn("ftfy: fix_encoding did not settle after %d rounds; keeping the last result",
                    SD_FTFY_MAX_ROUNDS);
            break;
        }
    }
    out->len = 0;
    if (st == SD_OK) st = sd_u32_append(out, cur.cp, cur.len);
    sd_u32_free(&cur);
    sd_u32_free(&next);
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * The character-level fixers
 * --------------------------------------------------------------------------------------------- */

/* Applies a translate-style map (ligatures, widths) in place via out. */
static sd_status translate(const sd_u32str *in, const sd_uc_map *map, uint32_t min_cp, sd_u32str *out) {
    out->len = 0;
    SD_TRY(sd_u32_reserve(out, in->len));
    for (size_t i = 0; i < in->len; i++) {
        uint32_t c = in->cp[i], n;
        const uint32_t *rep = c >= min_cp ? sd_uc_map_get(map, c, &n) : NULL;
        SD_TRY(rep ? sd_u32_append(out, rep, n) : sd_u32_push(out, c));
    }
    return SD_OK;
}

static void fix_c1_controls(sd_u32str *s) {
    for (size_t i = 0; i < s->len; i++)
        if (s->cp[i] >= 0x80 && s->cp[i] <= 0x9F) s->cp[i] = sd_ftfy_charmaps[CHARMAP_SLOPPY_1252][s->cp[i]];
}

static void uncurl_quotes(sd_u32str *s) {
    for (size_t i = 0; i < s->len; i++) {
        uint32_t c = s->cp[i];
        if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) s->cp[i] = '\'';
        else if (c >= 0x201C && c <= 0x201F) s->cp[i] = '"';
    }
}

/* "\r\n" -> "\n", then "\r", U+2028, U+2029, U+0085 -> "\n". */
static void fix_line_breaks(sd_u32str *s) {
    size_t o = 0;
    for (size_t i = 0; i < s->len; i++) {
        uint32_t c = s->cp[i];
        if (c == '\r' && i + 1 < s->len && s->cp[i + 1] == '\n') continue;
        if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        s->cp[o++] = c;
    }
    s->len = o;
}

static bool is_re_digit(uint32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    return sd_uc_in(&sd_uc_re_digit, c);
}

/* ANSI_RE = \033\[((?:\d|;)*)([a-zA-Z]) -> "" (\d is re's Unicode decimal digit). */
static void remove_terminal_escapes(sd_u32str *s) {
    size_t o = 0;
    for (size_t i = 0; i < s->len;) {
        if (s->cp[i] == 0x1B && i + 1 < s->len && s->cp[i + 1] == '[') {
            size_t j = i + 2;
            while (j < s->len && (s->cp[j] == ';' || is_re_digit(s->cp[j]))) j++;
            if (j < s->len && ((s->cp[j] >= 'a' && s->cp[j] <= 'z') || (s->cp[j] >= 'A' && s->cp[j] <= 'Z'))) {
                i = j + 1;
                continue;
            }
        }
        s->cp[o++] = s->cp[i++];
    }
    s->len = o;
}

static void remove_control_chars(sd_u32str *s) {
    size_t o = 0;
    for (size_t i = 0; i < s->len; i++)
        if (!sd_uc_in(&sd_ftfy_control, s->cp[i])) s->cp[o++] = s->cp[i];
    s->len = o;
}

/* ------------------------------------------------------------------------------------------------
 * fix_and_explain / fix_text
 * --------------------------------------------------------------------------------------------- */

static sd_status fix_segment(const uint32_t *seg, size_t n, bool unescape, sd_u32str *out) {
    sd_u32str text = {0}, tmp = {0}, orig = {0};
    sd_status st = sd_u32_append(&text, seg, n);
    for (int round = 0; st == SD_OK; round++) {
        orig.len = 0;
        st = sd_u32_append(&orig, text.cp, text.len);
        if (st == SD_OK && unescape) {
            st = unescape_html(&text, &tmp);
            sd_u32_swap(&text, &tmp);
        }
        if (st == SD_OK) {
            st = fix_encoding(text.cp, text.len, &tmp);
            sd_u32_swap(&text, &tmp);
        }
        if (st != SD_OK) break;
        fix_c1_controls(&text);
        st = translate(&text, &sd_ftfy_ligatures, 0x132, &tmp);
        sd_u32_swap(&text, &tmp);
        if (st == SD_OK) {
            st = translate(&text, &sd_ftfy_width, 0x3000, &tmp);
            sd_u32_swap(&text, &tmp);
        }
        if (st != SD_OK) break;
        uncurl_quotes(&text);
        fix_line_breaks(&text);
        remove_terminal_escapes(&text);
        remove_control_chars(&text);
        st = sd_uc_nfc(&text);
        if (st != SD_OK || sd_u32_equal(&text, &orig)) break;
        if (round == SD_FTFY_MAX_ROUNDS) {
            sd_warn("ftfy: fix_text did not settle after %d rounds; keeping the last result", SD_FTFY_MAX_ROUNDS);
            break;
        }
    }
    if (st == SD_OK) st = sd_u32_append(out, text.cp, text.len);
    sd_u32_free(&text);
    sd_u32_free(&tmp);
    sd_u32_free(&orig);
    return st;
}

sd_status sd_ftfy_fix_text(const uint32_t *text, size_t n, sd_u32str *out) {
    bool unescape = true; /* "auto", until a segment contains "<" */
    size_t pos = 0;
    while (pos < n) {
        size_t end = pos;
        while (end < n && text[end] != '\n') end++;
        end = end < n ? end + 1 : n; /* the segment keeps its "\n" */
        if (end - pos > SD_FTFY_MAX_SEGMENT) end = pos + SD_FTFY_MAX_SEGMENT;
        for (size_t i = pos; i < end && unescape; i++)
            if (text[i] == '<') unescape = false;
        SD_TRY(fix_segment(text + pos, end - pos, unescape, out));
        pos = end;
    }
    return SD_OK;
}
