/* unicode.c: code point strings, UTF-8 as Python decodes it, NFC and str.lower().
 *
 * Each function reproduces one CPython behaviour the reference tokenizer depends on, using the
 * tables tools/gen_unicode_tables.py measured from that same Python (see unicode_tables.h for the
 * versions). */
#include "text_internal.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------
 * Growable strings
 * --------------------------------------------------------------------------------------------- */

/* Always leaves a buffer behind (even for cap 0), so that `s->cp + i` is never arithmetic on NULL. */
sd_status sd_u32_reserve(sd_u32str *s, size_t cap) {
    if (cap <= s->cap && s->cp) return SD_OK;
    size_t want = s->cap ? s->cap : 16;
    while (want < cap) want *= 2;
    uint32_t *p = realloc(s->cp, want * sizeof *p);
    if (!p) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory for a %zu-character string", cap);
    s->cp = p;
    s->cap = want;
    return SD_OK;
}

sd_status sd_u32_push(sd_u32str *s, uint32_t c) {
    if (s->len == s->cap) SD_TRY(sd_u32_reserve(s, s->len + 1));
    s->cp[s->len++] = c;
    return SD_OK;
}

sd_status sd_u32_append(sd_u32str *s, const uint32_t *c, size_t n) {
    if (n == 0) return SD_OK;
    SD_TRY(sd_u32_reserve(s, s->len + n));
    memcpy(s->cp + s->len, c, n * sizeof *c);
    s->len += n;
    return SD_OK;
}

void sd_u32_free(sd_u32str *s) {
    free(s->cp);
    memset(s, 0, sizeof *s);
}

void sd_u32_swap(sd_u32str *a, sd_u32str *b) {
    sd_u32str t = *a;
    *a = *b;
    *b = t;
}

bool sd_u32_equal(const sd_u32str *a, const sd_u32str *b) {
    return a->len == b->len && (a->len == 0 || memcmp(a->cp, b->cp, a->len * sizeof *a->cp) == 0);
}

sd_status sd_bytes_reserve(sd_bytes *s, size_t cap) {
    if (cap <= s->cap && s->b) return SD_OK;
    size_t want = s->cap ? s->cap : 32;
    while (want < cap) want *= 2;
    uint8_t *p = realloc(s->b, want);
    if (!p) return sd_fail(SD_ERR_OOM, "tokenizer: out of memory for a %zu-byte string", cap);
    s->b = p;
    s->cap = want;
    return SD_OK;
}

sd_status sd_bytes_push(sd_bytes *s, uint8_t b) {
    if (s->len == s->cap) SD_TRY(sd_bytes_reserve(s, s->len + 1));
    s->b[s->len++] = b;
    return SD_OK;
}

sd_status sd_bytes_append(sd_bytes *s, const void *data, size_t n) {
    if (n == 0) return SD_OK;
    SD_TRY(sd_bytes_reserve(s, s->len + n));
    memcpy(s->b + s->len, data, n);
    s->len += n;
    return SD_OK;
}

void sd_bytes_free(sd_bytes *s) {
    free(s->b);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------------------------------
 * UTF-8
 * --------------------------------------------------------------------------------------------- */

/* For a lead byte: how many continuation bytes follow, and the allowed range of the first one
 * (narrower than 80..BF for E0, ED, F0 and F4, which is what excludes overlong forms, surrogates
 * and code points above U+10FFFF). Returns -1 for bytes that cannot start a sequence. */
static int utf8_lead(uint8_t b, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) return 1;
    if (b >= 0xE0 && b <= 0xEF) {
        if (b == 0xE0) *lo = 0xA0;
        if (b == 0xED) *hi = 0x9F;
        return 2;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (b == 0xF0) *lo = 0x90;
        if (b == 0xF4) *hi = 0x8F;
        return 3;
    }
    return -1;
}

/* Length of the valid sequence at s[0..n) (0 when invalid); its code point in *cp. When invalid,
 * *prefix receives the length of the longest valid prefix (at least 1): CPython replaces exactly
 * that many bytes with one U+FFFD. */
static size_t utf8_sequence(const uint8_t *s, size_t n, uint32_t *cp, size_t *prefix) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    uint8_t lo, hi;
    int need = utf8_lead(b, &lo, &hi);
    *prefix = 1;
    if (need < 0) return 0;
    uint32_t c = b & (need == 1 ? 0x1F : need == 2 ? 0x0F : 0x07);
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n) return 0;
        uint8_t x = s[k];
        if (x < lo || x > hi) return 0;
        lo = 0x80;
        hi = 0xBF;
        c = (c << 6) | (x & 0x3F);
        *prefix = (size_t)k + 1;
    }
    *cp = c;
    return (size_t)need + 1;
}

sd_status sd_utf8_decode_replace(const uint8_t *s, size_t n, sd_u32str *out) {
    SD_TRY(sd_u32_reserve(out, out->len + n));
    size_t i = 0;
    while (i < n) {
        uint32_t c;
        size_t prefix = 1;
        size_t len = utf8_sequence(s + i, n - i, &c, &prefix);
        if (len) {
            out->cp[out->len++] = c;
            i += len;
        } else {
            out->cp[out->len++] = 0xFFFD;
            i += prefix;
        }
    }
    return SD_OK;
}

bool sd_utf8_valid(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t prefix;
        size_t len = utf8_sequence(s + i, n - i, &c, &prefix);
        if (!len) return false;
        i += len;
    }
    return true;
}

sd_status sd_utf8_decode_variants(const uint8_t *s, size_t n, sd_u32str *out) {
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        /* ftfy's pattern for the Java null is \xc0(\x80|$), and a bytes-regex "$" also matches
         * before a final newline, so C0 followed by the last byte "\n" decodes to U+0000 too
         * (consuming the newline). */
        if (b == 0xC0) {
            if (i + 1 < n && (s[i + 1] == 0x80 || (s[i + 1] == '\n' && i + 2 == n))) {
                SD_TRY(sd_u32_push(out, 0));
                i += 2;
                continue;
            }
            return SD_ERR_FORMAT;
        }
        if (b == 0xED && i + 1 < n && s[i + 1] >= 0xA0) {
            /* A UTF-16 surrogate encoded as UTF-8: only a complete high + low pair decodes. The last
             * byte may again be the "$ before a final newline" match. */
            if (n - i < 6) return SD_ERR_FORMAT;
            const uint8_t *p = s + i;
            bool last_ok = (p[5] >= 0x80 && p[5] <= 0xBF) || (p[5] == '\n' && i + 6 == n);
            if (p[1] <= 0xAF && p[2] >= 0x80 && p[2] <= 0xBF && p[3] == 0xED && p[4] >= 0xB0 &&
                p[4] <= 0xBF && last_ok) {
                uint32_t c = (((uint32_t)p[1] & 0x0F) << 16) + (((uint32_t)p[2] & 0x3F) << 10) +
                             (((uint32_t)p[4] & 0x0F) << 6) + ((uint32_t)p[5] & 0x3F) + 0x10000;
                SD_TRY(sd_u32_push(out, c));
                i += 6;
                continue;
            }
            return SD_ERR_FORMAT;
        }
        uint32_t c;
        size_t prefix;
        size_t len = utf8_sequence(s + i, n - i, &c, &prefix);
        if (!len) return SD_ERR_FORMAT;
        SD_TRY(sd_u32_push(out, c));
        i += len;
    }
    return SD_OK;
}

int sd_utf8_put(uint32_t c, uint8_t *buf) {
    if (c < 0x80) {
        buf[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        buf[0] = (uint8_t)(0xC0 | (c >> 6));
        buf[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        buf[0] = (uint8_t)(0xE0 | (c >> 12));
        buf[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        buf[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    buf[0] = (uint8_t)(0xF0 | (c >> 18));
    buf[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    buf[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    buf[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

sd_status sd_utf8_encode(const uint32_t *c, size_t n, sd_bytes *out) {
    SD_TRY(sd_bytes_reserve(out, out->len + 4 * n));
    for (size_t i = 0; i < n; i++) out->len += (size_t)sd_utf8_put(c[i], out->b + out->len);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Sets and maps
 * --------------------------------------------------------------------------------------------- */

bool sd_uc_in(const sd_uc_set *set, uint32_t c) {
    if (set->count == 0 || c < set->ranges[0].lo || c > set->ranges[set->count - 1].hi) return false;
    int lo = 0, hi = set->count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const sd_uc_range *r = &set->ranges[mid];
        if (c < r->lo) hi = mid - 1;
        else if (c > r->hi) lo = mid + 1;
        else return true;
    }
    return false;
}

const uint32_t *sd_uc_map_get(const sd_uc_map *map, uint32_t c, uint32_t *n) {
    int lo = 0, hi = map->count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const sd_uc_map_entry *e = &map->entries[mid];
        if (c < e->cp) hi = mid - 1;
        else if (c > e->cp) lo = mid + 1;
        else {
            *n = e->length;
            return map->pool + e->offset;
        }
    }
    return NULL;
}

bool sd_uc_py_isspace(uint32_t c) {
    if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
    return sd_uc_in(&sd_uc_py_space, c);
}

/* ------------------------------------------------------------------------------------------------
 * NFC (UAX #15: full canonical decomposition, canonical ordering, canonical composition)
 * --------------------------------------------------------------------------------------------- */

enum {
    HANGUL_S_BASE = 0xAC00, HANGUL_L_BASE = 0x1100, HANGUL_V_BASE = 0x1161, HANGUL_T_BASE = 0x11A7,
    HANGUL_L_COUNT = 19, HANGUL_V_COUNT = 21, HANGUL_T_COUNT = 28,
    HANGUL_N_COUNT = HANGUL_V_COUNT * HANGUL_T_COUNT, HANGUL_S_COUNT = HANGUL_L_COUNT * HANGUL_N_COUNT,
};

static uint8_t ccc_of(uint32_t c) {
    if (c < 0x300) return 0;
    int lo = 0, hi = sd_uc_ccc_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < sd_uc_ccc[mid].lo) hi = mid - 1;
        else if (c > sd_uc_ccc[mid].hi) lo = mid + 1;
        else return sd_uc_ccc[mid].ccc;
    }
    return 0;
}

/* The composite of (a, b), or 0 when they do not compose. */
static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L_BASE && a < HANGUL_L_BASE + HANGUL_L_COUNT && b >= HANGUL_V_BASE &&
        b < HANGUL_V_BASE + HANGUL_V_COUNT)
        return HANGUL_S_BASE + ((a - HANGUL_L_BASE) * HANGUL_V_COUNT + (b - HANGUL_V_BASE)) * HANGUL_T_COUNT;
    if (a >= HANGUL_S_BASE && a < HANGUL_S_BASE + HANGUL_S_COUNT && (a - HANGUL_S_BASE) % HANGUL_T_COUNT == 0 &&
        b > HANGUL_T_BASE && b < HANGUL_T_BASE + HANGUL_T_COUNT)
        return a + (b - HANGUL_T_BASE);
    int lo = 0, hi = sd_uc_compose_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const sd_uc_pair *p = &sd_uc_compose[mid];
        if (a < p->first || (a == p->first && b < p->second)) hi = mid - 1;
        else if (a > p->first || b > p->second) lo = mid + 1;
        else return p->composite;
    }
    return 0;
}

/* Whether s is trivially NFC: nothing that decomposes, composes or reorders can occur below
 * U+0300, so an all-Latin-1 string is already normalised. */
static bool below_combining_range(const sd_u32str *s) {
    for (size_t i = 0; i < s->len; i++)
        if (s->cp[i] >= 0x300) return false;
    return true;
}

sd_status sd_uc_nfc(sd_u32str *s) {
    if (below_combining_range(s)) return SD_OK;
    sd_u32str d = {0};
    sd_status st = sd_u32_reserve(&d, s->len + 8);
    for (size_t i = 0; st == SD_OK && i < s->len; i++) {
        uint32_t c = s->cp[i];
        if (c >= HANGUL_S_BASE && c < HANGUL_S_BASE + HANGUL_S_COUNT) {
            uint32_t k = c - HANGUL_S_BASE;
            st = sd_u32_push(&d, HANGUL_L_BASE + k / HANGUL_N_COUNT);
            if (st == SD_OK) st = sd_u32_push(&d, HANGUL_V_BASE + (k % HANGUL_N_COUNT) / HANGUL_T_COUNT);
            if (st == SD_OK && k % HANGUL_T_COUNT) st = sd_u32_push(&d, HANGUL_T_BASE + k % HANGUL_T_COUNT);
            continue;
        }
        uint32_t n;
        const uint32_t *dec = c >= 0xC0 ? sd_uc_map_get(&sd_uc_nfd, c, &n) : NULL;
        st = dec ? sd_u32_append(&d, dec, n) : sd_u32_push(&d, c);
    }
    if (st != SD_OK) {
        sd_u32_free(&d);
        return st;
    }
    /* Canonical ordering: a stable sort of each run of non-starters by combining class. Runs are
     * short, so insertion sort. */
    for (size_t i = 1; i < d.len; i++) {
        uint8_t cc = ccc_of(d.cp[i]);
        if (cc == 0) continue;
        size_t j = i;
        uint32_t c = d.cp[i];
        while (j > 0) {
            uint8_t prev = ccc_of(d.cp[j - 1]);
            if (prev == 0 || prev <= cc) break;
            d.cp[j] = d.cp[j - 1];
            j--;
        }
        d.cp[j] = c;
    }
    /* Canonical composition, in place: `out` never runs ahead of the read position. */
    size_t out = 0;
    long starter = -1;   /* index in the output of the last starter */
    uint8_t last_cc = 0; /* combining class of the last character written after it */
    for (size_t i = 0; i < d.len; i++) {
        uint32_t c = d.cp[i];
        uint8_t cc = ccc_of(c);
        if (starter >= 0) {
            bool adjacent = (size_t)starter == out - 1;
            bool blocked = !adjacent && (last_cc == 0 || last_cc >= cc);
            if (!blocked) {
                uint32_t comp = compose_pair(d.cp[starter], c);
                if (comp) {
                    d.cp[starter] = comp;
                    continue;
                }
            }
        }
        if (cc == 0) starter = (long)out;
        last_cc = cc;
        d.cp[out++] = c;
    }
    d.len = out;
    sd_u32_swap(s, &d);
    sd_u32_free(&d);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * str.lower()
 * --------------------------------------------------------------------------------------------- */

static bool case_ignorable(uint32_t c) { return sd_uc_in(&sd_uc_py_case_ignorable, c); }
static bool cased(uint32_t c) { return sd_uc_in(&sd_uc_py_cased, c); }

/* CPython's Final_Sigma test for U+03A3 at s[i]: a cased letter before it (skipping case-ignorable
 * characters) and none after it. */
static bool final_sigma(const uint32_t *s, size_t n, size_t i) {
    size_t j = i;
    uint32_t c = 0;
    bool found = false;
    while (j > 0) {
        c = s[--j];
        if (!case_ignorable(c)) {
            found = true;
            break;
        }
    }
    if (!found || !cased(c)) return false;
    for (j = i + 1; j < n; j++) {
        c = s[j];
        if (!case_ignorable(c)) return !cased(c);
    }
    return true;
}

sd_status sd_uc_str_lower(const uint32_t *s, size_t n, sd_u32str *out) {
    SD_TRY(sd_u32_reserve(out, out->len + n));
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c < 0x80) {
            SD_TRY(sd_u32_push(out, (c >= 'A' && c <= 'Z') ? c + 32 : c));
            continue;
        }
        if (c == 0x3A3) {
            SD_TRY(sd_u32_push(out, final_sigma(s, n, i) ? 0x3C2 : 0x3C3));
            continue;
        }
        uint32_t len;
        const uint32_t *low = sd_uc_map_get(&sd_uc_lower, c, &len);
        SD_TRY(low ? sd_u32_append(out, low, len) : sd_u32_push(out, c));
    }
    return SD_OK;
}
