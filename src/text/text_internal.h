/* text_internal.h: pieces shared by the files of src/text (not part of the public API).
 *
 * Text moves between the stages as arrays of Unicode code points (sd_u32str), because every
 * stage the reference applies (ftfy, str.lower(), the split regex) is defined on Python str, i.e.
 * on code points; byte strings (sd_bytes) appear only where the reference encodes to bytes. */
#ifndef SD_TEXT_INTERNAL_H
#define SD_TEXT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sd/core.h"
#include "unicode_tables.h"

/* A growable code point string. Zero-initialise before use; sd_u32_free releases it. */
typedef struct {
    uint32_t *cp;
    size_t len;
    size_t cap;
} sd_u32str;

/* A growable byte string. Zero-initialise before use. */
typedef struct {
    uint8_t *b;
    size_t len;
    size_t cap;
} sd_bytes;

sd_status sd_u32_reserve(sd_u32str *s, size_t cap);
sd_status sd_u32_push(sd_u32str *s, uint32_t c);
sd_status sd_u32_append(sd_u32str *s, const uint32_t *c, size_t n);
void sd_u32_free(sd_u32str *s);
/* Swaps the contents of two strings (used to replace a string by a freshly built one). */
void sd_u32_swap(sd_u32str *a, sd_u32str *b);
bool sd_u32_equal(const sd_u32str *a, const sd_u32str *b);

sd_status sd_bytes_reserve(sd_bytes *s, size_t cap);
sd_status sd_bytes_push(sd_bytes *s, uint8_t b);
sd_status sd_bytes_append(sd_bytes *s, const void *data, size_t n);
void sd_bytes_free(sd_bytes *s);

/* ---- UTF-8 -------------------------------------------------------------------------------- */

/* Appends the code points of n bytes, decoded as Python's bytes.decode("utf-8", "replace") does:
 * each maximal invalid subsequence becomes one U+FFFD. */
sd_status sd_utf8_decode_replace(const uint8_t *s, size_t n, sd_u32str *out);
/* ftfy's "utf-8-variants" codec, strict: UTF-8 plus CESU-8 surrogate pairs and the Java-style
 * C0 80 for U+0000. Returns SD_OK, or SD_ERR_FORMAT (no message set) when the bytes do not decode;
 * SD_ERR_OOM on allocation failure. */
sd_status sd_utf8_decode_variants(const uint8_t *s, size_t n, sd_u32str *out);
/* Whether the bytes are strict UTF-8 (what Python's open(..., encoding="utf-8") accepts). */
bool sd_utf8_valid(const uint8_t *s, size_t n);
/* Appends the UTF-8 encoding of the code points (all must be scalar values). */
sd_status sd_utf8_encode(const uint32_t *c, size_t n, sd_bytes *out);
/* Bytes of one code point's UTF-8 encoding in buf[4]; returns the count. */
int sd_utf8_put(uint32_t c, uint8_t *buf);

/* ---- Unicode data ------------------------------------------------------------------------- */

bool sd_uc_in(const sd_uc_set *set, uint32_t c);
/* The mapped sequence of c (and its length in *n), or NULL when c is not in the map. */
const uint32_t *sd_uc_map_get(const sd_uc_map *map, uint32_t c, uint32_t *n);

/* unicodedata.normalize("NFC", s), in place. */
sd_status sd_uc_nfc(sd_u32str *s);
/* str.lower() of s, appended to out (full mappings and the final-sigma rule). */
sd_status sd_uc_str_lower(const uint32_t *s, size_t n, sd_u32str *out);
/* Python str.isspace() (what str.strip() removes). */
bool sd_uc_py_isspace(uint32_t c);

/* ---- ftfy ---------------------------------------------------------------------------------- */

/* ftfy.fix_text(text) with the default configuration (see ftfy.c for what is covered). */
sd_status sd_ftfy_fix_text(const uint32_t *text, size_t n, sd_u32str *out);

#endif
