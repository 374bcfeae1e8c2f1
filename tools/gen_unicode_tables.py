#!/usr/bin/env python3
"""gen_unicode_tables.py: generates src/text/unicode_tables.{h,c}, the character data the C tokenizer
needs to give the same ids as transformers 4.25.1's slow CLIPTokenizer with ftfy installed.

Every table is measured from the Python libraries the reference itself runs, not typed in by hand:

  * the `regex` module (the tokenizer's split pattern and whitespace_clean use it):
      [\\p{L}], [\\p{N}], [^\\s\\p{L}\\p{N}] under IGNORECASE, \\s, and which characters match each
      letter of the pattern's literals ('s, 't, ..., <|startoftext|>) case-insensitively;
  * Python's str (unicodedata): lower() including its full mappings, the Cased / Case_Ignorable
    properties lower() consults for the final sigma, isspace() (str.strip);
  * unicodedata: canonical combining classes, canonical decompositions and compositions (NFC);
  * the `re` module: \\s, \\w, \\d as ftfy's regexes see them;
  * ftfy (the installed version): its single-byte codecs, ligature and width maps, HTML entities, the
    character classes of its mojibake detector (BADNESS_RE, parsed with re's own parser) and of
    UTF8_DETECTOR_RE;
  * the html module: the numeric character reference fix-ups html.unescape applies.

The Unicode versions that result are printed into the generated header. Run from the repository
root with the project venv:

    .venv/bin/python tools/gen_unicode_tables.py
"""
import codecs
import html
import os
import sys
import unicodedata

import regex

import ftfy
import ftfy.bad_codecs  # noqa: F401  (registers the sloppy-windows-125x codecs)
from ftfy import chardata
from ftfy.badness import BADNESS_RE

try:
    from re import _parser as sre_parse
    from re import _constants as sre_constants
except ImportError:  # Python < 3.11
    import sre_parse
    import sre_constants
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_C = os.path.join(REPO, "src", "text", "unicode_tables.c")
OUT_H = os.path.join(REPO, "src", "text", "unicode_tables.h")
MAX_CP = 0x110000


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


ALL_CHARS = "".join(chr(c) for c in range(MAX_CP) if not is_surrogate(c))


def index_to_cp(i):
    return i if i < 0xD800 else i + 0x800


def membership_from_pattern(compiled):
    """Bytearray over all code points: 1 where `compiled` (a one-character pattern) matches."""
    flags = bytearray(MAX_CP)
    for m in compiled.finditer(ALL_CHARS):
        for i in range(m.start(), m.end()):
            flags[index_to_cp(i)] = 1
    return flags


def ranges_from_flags(flags):
    out = []
    start = None
    for cp in range(MAX_CP + 1):
        on = cp < MAX_CP and flags[cp]
        if on and start is None:
            start = cp
        elif not on and start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def ranges_from_set(cps):
    flags = bytearray(MAX_CP)
    for c in cps:
        flags[c] = 1
    return ranges_from_flags(flags)


# ------------------------------------------------------------------------------------------------
# Output helpers
# ------------------------------------------------------------------------------------------------

c_parts = []
h_parts = []


def emit_set(name, ranges, doc):
    h_parts.append(f"/* {doc} */\nextern const sd_uc_set {name};\n")
    body = ",".join(f"{{0x{lo:X},0x{hi:X}}}" for lo, hi in ranges)
    c_parts.append(
        f"static const sd_uc_range {name}_ranges[{max(len(ranges), 1)}] = {{{body}}};\n"
        f"const sd_uc_set {name} = {{{name}_ranges, {len(ranges)}}};\n"
    )


def emit_map(name, mapping, doc):
    """mapping: {cp: [cp, ...]} (the value may be empty: the character is deleted)."""
    pool = []
    entries = []
    for cp in sorted(mapping):
        seq = mapping[cp]
        entries.append((cp, len(pool), len(seq)))
        pool.extend(seq)
    h_parts.append(f"/* {doc} */\nextern const sd_uc_map {name};\n")
    ent = ",".join(f"{{0x{cp:X},{off},{n}}}" for cp, off, n in entries)
    pl = ",".join(f"0x{c:X}" for c in pool) or "0"
    c_parts.append(
        f"static const sd_uc_map_entry {name}_entries[{max(len(entries), 1)}] = {{{ent}}};\n"
        f"static const uint32_t {name}_pool[{max(len(pool), 1)}] = {{{pl}}};\n"
        f"const sd_uc_map {name} = {{{name}_entries, {len(entries)}, {name}_pool}};\n"
    )


def c_string(s):
    """A C string literal holding the UTF-8 bytes of s."""
    out = []
    for b in s.encode("utf-8"):
        if 0x20 <= b < 0x7F and b not in (ord('"'), ord("\\"), ord("?")):
            out.append(chr(b))
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


# ------------------------------------------------------------------------------------------------
# 1. The tokenizer's split pattern and whitespace_clean (regex module)
# ------------------------------------------------------------------------------------------------

IGN = regex.IGNORECASE
rx_letter = ranges_from_flags(membership_from_pattern(regex.compile(r"[\p{L}]", IGN)))
rx_number = ranges_from_flags(membership_from_pattern(regex.compile(r"[\p{N}]", IGN)))
rx_other = ranges_from_flags(membership_from_pattern(regex.compile(r"[^\s\p{L}\p{N}]", IGN)))
rx_space = ranges_from_flags(membership_from_pattern(regex.compile(r"\s")))
def as_set(ranges):
    return {c for lo, hi in ranges for c in range(lo, hi + 1)}


for a, b in ((rx_letter, rx_number), (rx_letter, rx_other), (rx_number, rx_other)):
    assert not (as_set(a) & as_set(b)), "the split pattern's classes overlap; tokenizer.c assumes they do not"
emit_set("sd_uc_rx_letter", rx_letter, "regex module: [\\p{L}] with IGNORECASE (the tokenizer's letter runs)")
emit_set("sd_uc_rx_number", rx_number, "regex module: [\\p{N}] with IGNORECASE (one token per number character)")
emit_set("sd_uc_rx_other", rx_other, "regex module: [^\\s\\p{L}\\p{N}] with IGNORECASE (symbol runs)")
emit_set("sd_uc_rx_space", rx_space, "regex module: \\s (whitespace_clean collapses runs of these)")

# Characters that match each literal character of the pattern case-insensitively. With simple case
# folding (regex's default), 's' also matches U+017F LONG S, 'k' the KELVIN SIGN, and so on.
literal_chars = sorted(set("<|>'startoftextendofsvmld"))
fold_pairs = []
for ch in literal_chars:
    pat = regex.compile(regex.escape(ch), IGN)
    for m in pat.finditer(ALL_CHARS):
        fold_pairs.append((ord(ch), index_to_cp(m.start())))
h_parts.append(
    "/* (pattern character, input character) pairs: the input character matches that literal character\n"
    " * of the split pattern under the regex module's IGNORECASE, sorted. */\n"
    "extern const uint32_t sd_uc_rx_literal_fold[][2];\nextern const int sd_uc_rx_literal_fold_count;\n"
)
c_parts.append(
    "const uint32_t sd_uc_rx_literal_fold[][2] = {"
    + ",".join(f"{{0x{a:X},0x{b:X}}}" for a, b in sorted(fold_pairs))
    + f"}};\nconst int sd_uc_rx_literal_fold_count = {len(fold_pairs)};\n"
)

# ------------------------------------------------------------------------------------------------
# 2. Python str: lower(), isspace(), Cased / Case_Ignorable (final sigma)
# ------------------------------------------------------------------------------------------------

lower_map = {}
for cp in range(MAX_CP):
    if is_surrogate(cp):
        continue
    low = chr(cp).lower()
    if low != chr(cp):
        lower_map[cp] = [ord(c) for c in low]
emit_map("sd_uc_lower", lower_map, "str.lower() per character (full mappings; U+03A3 gives the non-final sigma)")

py_space = [cp for cp in range(MAX_CP) if not is_surrogate(cp) and chr(cp).isspace()]
emit_set("sd_uc_py_space", ranges_from_set(py_space), "str.isspace(): what str.strip() removes")


def lowers_to_final_sigma(s):
    return s.lower()[-1] == "\u03c2"


case_ignorable = []
cased = []
for cp in range(MAX_CP):
    if is_surrogate(cp):
        continue
    ch = chr(cp)
    # CPython's final-sigma rule skips Case_Ignorable characters and then asks whether the
    # character it stopped at is Cased. Probing lower() on "A?Σ" and "1?Σ" recovers both
    # properties without reaching into CPython's private tables: "1" is neither cased nor ignorable.
    after_cased = lowers_to_final_sigma("A" + ch + "\u03a3")
    after_digit = lowers_to_final_sigma("1" + ch + "\u03a3")
    if after_cased and not after_digit:
        case_ignorable.append(cp)
    elif after_digit:
        cased.append(cp)
# "A" itself: cased; "1": neither (checked so the probe's assumptions hold).
assert ord("A") in cased and 0x3A3 in cased and ord("1") not in cased and ord("1") not in case_ignorable
emit_set("sd_uc_py_case_ignorable", ranges_from_set(case_ignorable), "Case_Ignorable as CPython's str.lower() sees it")
emit_set("sd_uc_py_cased", ranges_from_set(cased), "Cased (and not Case_Ignorable) as CPython's str.lower() sees it")

# ------------------------------------------------------------------------------------------------
# 3. NFC (unicodedata)
# ------------------------------------------------------------------------------------------------

ccc_ranges = []
for cp in range(MAX_CP):
    c = unicodedata.combining(chr(cp)) if not is_surrogate(cp) else 0
    if c:
        if ccc_ranges and ccc_ranges[-1][1] == cp - 1 and ccc_ranges[-1][2] == c:
            ccc_ranges[-1][1] = cp
        else:
            ccc_ranges.append([cp, cp, c])
h_parts.append("/* Canonical combining classes (non-zero only), as ranges. */\n"
               "extern const sd_uc_ccc_range sd_uc_ccc[];\nextern const int sd_uc_ccc_count;\n")
c_parts.append("const sd_uc_ccc_range sd_uc_ccc[] = {"
               + ",".join(f"{{0x{a:X},0x{b:X},{c}}}" for a, b, c in ccc_ranges)
               + f"}};\nconst int sd_uc_ccc_count = {len(ccc_ranges)};\n")

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
nfd_map = {}
pairs = []
for cp in range(MAX_CP):
    if is_surrogate(cp) or HANGUL_FIRST <= cp <= HANGUL_LAST:
        continue
    ch = chr(cp)
    d = unicodedata.normalize("NFD", ch)
    if d != ch:
        nfd_map[cp] = [ord(c) for c in d]
    dec = unicodedata.decomposition(ch)
    if dec and not dec.startswith("<"):
        parts = [int(x, 16) for x in dec.split()]
        # A primary composite: a two-character canonical decomposition that NFC puts back together.
        if len(parts) == 2 and unicodedata.normalize("NFC", ch) == ch:
            pairs.append((parts[0], parts[1], cp))
emit_map("sd_uc_nfd", nfd_map, "Full canonical decomposition (NFD of one character), Hangul syllables excluded")
pairs.sort()
h_parts.append("/* Canonical composition pairs (first, second) -> composite, sorted; Hangul excluded. */\n"
               "extern const sd_uc_pair sd_uc_compose[];\nextern const int sd_uc_compose_count;\n")
c_parts.append("const sd_uc_pair sd_uc_compose[] = {"
               + ",".join(f"{{0x{a:X},0x{b:X},0x{c:X}}}" for a, b, c in pairs)
               + f"}};\nconst int sd_uc_compose_count = {len(pairs)};\n")

# ------------------------------------------------------------------------------------------------
# 4. The `re` module's categories, as ftfy's patterns use them
# ------------------------------------------------------------------------------------------------

re_space = ranges_from_flags(membership_from_pattern(re.compile(r"\s")))
re_word = ranges_from_flags(membership_from_pattern(re.compile(r"\w")))
re_digit = ranges_from_flags(membership_from_pattern(re.compile(r"\d")))
emit_set("sd_uc_re_digit", re_digit, "re module: \\d (ftfy's terminal-escape pattern)")

# ------------------------------------------------------------------------------------------------
# 5. ftfy: codecs, ligatures, widths, control characters, HTML entities
# ------------------------------------------------------------------------------------------------

CHARMAPS = chardata.CHARMAP_ENCODINGS
# ftfy.c refers to these two by position.
assert CHARMAPS[0] == "latin-1" and CHARMAPS[1] == "sloppy-windows-1252", CHARMAPS
charmap_rows = []
for enc in CHARMAPS:
    table = [ord(c) for c in bytes(range(256)).decode(enc)]
    assert len(table) == 256, enc
    assert len(set(table)) == 256, f"{enc} is not one-to-one"
    # ftfy's possible_encoding() regex accepts exactly the characters of this table.
    allowed = set(range(0x00, 0x1A)) | set(range(0x1B, 0x80)) | set(table[0x80:]) | {table[0x1A]}
    assert allowed == set(table), enc
    assert all(table[b] == b for b in range(0x80) if b != 0x1A), enc
    charmap_rows.append(table)
cp1252_strict = []
for b in range(256):
    try:
        cp1252_strict.append(ord(bytes([b]).decode("windows-1252")))
    except UnicodeDecodeError:
        cp1252_strict.append(0xFFFFFFFF)
h_parts.append(
    f"/* ftfy.chardata.CHARMAP_ENCODINGS, in ftfy's order, and what each byte decodes to. */\n"
    f"#define SD_FTFY_N_CHARMAPS {len(CHARMAPS)}\n"
    "extern const char *const sd_ftfy_charmap_names[SD_FTFY_N_CHARMAPS];\n"
    "extern const uint32_t sd_ftfy_charmaps[SD_FTFY_N_CHARMAPS][256];\n"
    "/* Python's strict windows-1252 codec (0xFFFFFFFF: the byte is undefined there). */\n"
    "extern const uint32_t sd_ftfy_cp1252_strict[256];\n"
)
c_parts.append(
    "const char *const sd_ftfy_charmap_names[SD_FTFY_N_CHARMAPS] = {"
    + ",".join(f'"{n}"' for n in CHARMAPS) + "};\n"
    "const uint32_t sd_ftfy_charmaps[SD_FTFY_N_CHARMAPS][256] = {"
    + ",".join("{" + ",".join(f"0x{c:X}" for c in row) + "}" for row in charmap_rows) + "};\n"
    "const uint32_t sd_ftfy_cp1252_strict[256] = {" + ",".join(f"0x{c:X}" for c in cp1252_strict) + "};\n"
)

emit_map("sd_ftfy_ligatures", {cp: [ord(c) for c in s] for cp, s in chardata.LIGATURES.items()},
         "ftfy fix_latin_ligatures")
emit_map("sd_ftfy_width", {cp: [ord(c) for c in s] for cp, s in chardata.WIDTH_MAP.items()},
         "ftfy fix_character_width (fullwidth / halfwidth forms, U+3000)")
emit_set("sd_ftfy_control", ranges_from_set(chardata.CONTROL_CHARS.keys()),
         "ftfy remove_control_chars: characters deleted")

entities = sorted(chardata.HTML_ENTITIES.items())
h_parts.append(
    "/* ftfy's HTML entity table (\"&name;\" -> UTF-8), sorted by name with strcmp. */\n"
    "typedef struct { const char *name; const char *utf8; } sd_ftfy_entity;\n"
    "extern const sd_ftfy_entity sd_ftfy_entities[];\nextern const int sd_ftfy_entity_count;\n"
)
assert [k for k, _ in entities] == sorted((k for k, _ in entities), key=lambda s: s.encode())
c_parts.append(
    "const sd_ftfy_entity sd_ftfy_entities[] = {\n"
    + ",\n".join(f"{{{c_string(k)},{c_string(v)}}}" for k, v in entities)
    + f"}};\nconst int sd_ftfy_entity_count = {len(entities)};\n"
)
invalid_charrefs = sorted(html._invalid_charrefs.items())
h_parts.append(
    "/* html.unescape's numeric reference fix-ups: number -> replacement character, and numbers that\n"
    " * decode to nothing. */\n"
    "extern const uint32_t sd_html_invalid_charrefs[][2];\nextern const int sd_html_invalid_charref_count;\n"
    "extern const sd_uc_set sd_html_invalid_codepoints;\n"
)
c_parts.append(
    "const uint32_t sd_html_invalid_charrefs[][2] = {"
    + ",".join(f"{{0x{k:X},0x{ord(v):X}}}" for k, v in invalid_charrefs)
    + f"}};\nconst int sd_html_invalid_charref_count = {len(invalid_charrefs)};\n"
)
emit_set("sd_html_invalid_codepoints", ranges_from_set(html._invalid_codepoints),
         "html._invalid_codepoints")

# ------------------------------------------------------------------------------------------------
# 6. ftfy's mojibake detectors, from the compiled patterns themselves
# ------------------------------------------------------------------------------------------------

CATEGORY_RANGES = {
    "CATEGORY_SPACE": re_space,
    "CATEGORY_WORD": re_word,
    "CATEGORY_DIGIT": re_digit,
}


def complement(ranges):
    out = []
    prev = 0
    for lo, hi in ranges:
        if lo > prev:
            out.append((prev, lo - 1))
        prev = hi + 1
    if prev < MAX_CP:
        out.append((prev, MAX_CP - 1))
    return out


def normalize_ranges(rs):
    rs = sorted(rs)
    out = []
    for lo, hi in rs:
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def ranges_of_in(items):
    rs = []
    negate = False
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            rs.append((av, av))
        elif name == "RANGE":
            rs.append((av[0], av[1]))
        elif name == "CATEGORY":
            rs.extend(CATEGORY_RANGES[str(av)])
        else:
            sys.exit(f"gen_unicode_tables: unexpected set item {name}")
    rs = normalize_ranges(rs)
    return complement(rs) if negate else rs


def atom_ranges(op, av):
    name = str(op)
    if name == "IN":
        return ranges_of_in(av)
    if name == "LITERAL":
        return [(av, av)]
    if name == "ANY":
        return complement([(0x0A, 0x0A)])
    if name == "CATEGORY":
        return CATEGORY_RANGES[str(av)]
    sys.exit(f"gen_unicode_tables: unexpected atom {name}")


ANCHOR = "ANCHOR"


def expand(items):
    """All fixed-length alternatives of a parsed pattern: lists of range-lists or ANCHOR."""
    seqs = [[]]
    for op, av in items:
        name = str(op)
        if name == "BRANCH":
            alts = []
            for sub in av[1]:
                alts.extend(expand(sub.data))
            seqs = [s + a for s in seqs for a in alts]
        elif name == "SUBPATTERN":
            sub = av[-1]
            alts = expand(sub.data)
            seqs = [s + a for s in seqs for a in alts]
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, hi, sub = av
            assert hi != sre_constants.MAXREPEAT and hi <= 4, "unbounded repeat in a detector pattern"
            sub_alts = expand(sub.data)
            new = []
            for count in range(lo, hi + 1):
                reps = [[]]
                for _ in range(count):
                    reps = [r + a for r in reps for a in sub_alts]
                new.extend(s + r for s in seqs for r in reps)
            seqs = new
        elif name == "AT":
            assert str(av) == "AT_BEGINNING", av
            seqs = [s + [ANCHOR] for s in seqs]
        else:
            seqs = [s + [atom_ranges(op, av)] for s in seqs]
    return seqs


class_ids = {}
class_list = []


def class_id(ranges):
    key = tuple(ranges)
    if key not in class_ids:
        class_ids[key] = len(class_list)
        class_list.append(key)
    return class_ids[key]


badness_alts = expand(sre_parse.parse(BADNESS_RE.pattern, BADNESS_RE.flags).data)
patterns = []
for alt in badness_alts:
    anchored = bool(alt) and alt[0] is ANCHOR
    body = alt[1:] if anchored else alt
    assert ANCHOR not in body and 1 <= len(body) <= 8
    patterns.append((anchored, [class_id(r) for r in body]))


def clue_class(name):
    parsed = sre_parse.parse("[" + chardata.UTF8_CLUES[name] + "]", re.VERBOSE)
    (op, av), = parsed.data
    return class_id(ranges_of_in(av))


clues = {name: clue_class(name) for name in
         ["utf8_first_of_2", "utf8_first_of_3", "utf8_first_of_4", "utf8_continuation", "utf8_continuation_strict"]}
# The hand-written C matcher for UTF8_DETECTOR_RE assumes its shape (a negative lookbehind, then
# a repeated group); fail loudly if a new ftfy changes it.
sample = sre_parse.parse(chardata.UTF8_DETECTOR_RE.pattern, chardata.UTF8_DETECTOR_RE.flags)
assert [str(op) for op, _ in sample.data] == ["ASSERT_NOT", "MAX_REPEAT"], "UTF8_DETECTOR_RE changed shape"

h_parts.append(
    "/* ftfy's mojibake detector BADNESS_RE, expanded into fixed-length alternatives: a match is any\n"
    " * alternative whose classes match consecutive characters (anchored ones only at the start). */\n"
    "typedef struct { uint8_t anchored; uint8_t len; uint8_t cls[8]; } sd_ftfy_pattern;\n"
    "extern const sd_uc_set sd_ftfy_classes[];\nextern const int sd_ftfy_class_count;\n"
    "extern const sd_ftfy_pattern sd_ftfy_badness[];\nextern const int sd_ftfy_badness_count;\n"
    "/* Class ids of ftfy.chardata.UTF8_CLUES (used by the UTF8_DETECTOR_RE matcher). */\n"
    + "".join(f"#define SD_FTFY_{n.upper()} {i}\n" for n, i in clues.items())
)
cls_defs = []
for i, rs in enumerate(class_list):
    body = ",".join(f"{{0x{lo:X},0x{hi:X}}}" for lo, hi in rs)
    cls_defs.append(f"static const sd_uc_range sd_ftfy_class_{i}[{max(len(rs), 1)}] = {{{body}}};\n")
c_parts.append("".join(cls_defs))
c_parts.append("const sd_uc_set sd_ftfy_classes[] = {"
               + ",".join(f"{{sd_ftfy_class_{i},{len(rs)}}}" for i, rs in enumerate(class_list))
               + f"}};\nconst int sd_ftfy_class_count = {len(class_list)};\n")
c_parts.append("const sd_ftfy_pattern sd_ftfy_badness[] = {"
               + ",".join("{%d,%d,{%s}}" % (int(a), len(c), ",".join(map(str, c))) for a, c in patterns)
               + f"}};\nconst int sd_ftfy_badness_count = {len(patterns)};\n")

# ------------------------------------------------------------------------------------------------
# Write
# ------------------------------------------------------------------------------------------------

try:
    import importlib.metadata as md

    regex_version = md.version("regex")
except Exception:  # pragma: no cover
    regex_version = "?"
versions = (f"Python {sys.version.split()[0]} (unicodedata {unicodedata.unidata_version}), "
            f"regex {regex_version}, ftfy {ftfy.__version__}")

header = f"""/* unicode_tables.h: GENERATED by tools/gen_unicode_tables.py from {versions}.
 * Do not edit; rerun the script. Internal to src/text. */
#ifndef SD_TEXT_UNICODE_TABLES_H
#define SD_TEXT_UNICODE_TABLES_H

#include <stdint.h>

#define SD_UC_TABLES_SOURCE "{versions}"

typedef struct {{ uint32_t lo, hi; }} sd_uc_range;
/* A set of code points as sorted, disjoint, inclusive ranges. */
typedef struct {{ const sd_uc_range *ranges; int count; }} sd_uc_set;
typedef struct {{ uint32_t cp; uint32_t offset; uint32_t length; }} sd_uc_map_entry;
/* A map code point -> sequence of code points (entries sorted by cp; sequences in pool). */
typedef struct {{ const sd_uc_map_entry *entries; int count; const uint32_t *pool; }} sd_uc_map;
typedef struct {{ uint32_t lo, hi; uint8_t ccc; }} sd_uc_ccc_range;
typedef struct {{ uint32_t first, second, composite; }} sd_uc_pair;

{"".join(h_parts)}
#endif
"""
source = (f"/* unicode_tables.c: GENERATED by tools/gen_unicode_tables.py from {versions}.\n"
          " * Do not edit; rerun the script. */\n#include \"unicode_tables.h\"\n\n" + "".join(c_parts))
with open(OUT_H, "w", encoding="utf-8") as f:
    f.write(header)
with open(OUT_C, "w", encoding="utf-8") as f:
    f.write(source)
print(f"gen_unicode_tables: wrote {os.path.relpath(OUT_H, REPO)} and {os.path.relpath(OUT_C, REPO)} "
      f"({len(badness_alts)} badness alternatives, {len(class_list)} classes) from {versions}")
