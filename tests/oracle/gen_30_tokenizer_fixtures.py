#!/usr/bin/env python3
"""gen_30_tokenizer_fixtures.py: expected CLIP token ids for tests/unit/test_tokenizer.c, from the
reference tokenizer -> tests/fixtures/tokenizer_cases.json.

The reference is what StyleDiffusion ran: transformers==4.25.1's *slow* CLIPTokenizer with ftfy
installed (openai-CLIP pulls it in), so every prompt goes through
    whitespace_clean(ftfy.fix_text(text)).lower()
before the split regex and BPE. The project venv has transformers 5.x, whose CLIPTokenizer is the
Rust "tokenizers" one; it is not the reference, so 4.25.1 lives beside it in its own folder
($TF425, default .venv/tf425-reference). When that folder lacks it, this script installs it there:

    pip install --target .venv/tf425-reference --no-deps transformers==4.25.1 huggingface_hub==0.11.1 tokenizers==0.13.3

(huggingface_hub and tokenizers only satisfy 4.25.1's import-time checks; the slow tokenizer uses
neither.) ftfy and regex come from the venv. Run from the repository root (or via run_all.sh):

    .venv/bin/python tests/oracle/gen_30_tokenizer_fixtures.py

It also reports (stdout only) where the venv's transformers 5.x tokenizer gives other ids.

Fixture layout (JSON, ASCII with \\u escapes):
  versions                         what produced it
  cases[]:  name, prompt | prompt_hex (raw bytes, for invalid UTF-8: the reference sees
            bytes.decode("utf-8", "replace")), tokens (ids without BOS/EOS, untruncated),
            ids77 (padding="max_length", max_length=77, truncation=True), clean
            (whitespace_clean(ftfy.fix_text(text)).lower(), UTF-8 text)
  fuzz[]:   prompt, tokens, clean: seeded random prompts (mojibake, entities, every script)
  words[]:  prompt, word | pos, inds (get_word_inds, copied below) or error (the reference
            raises, or the word is absent: the C API reports SD_ERR_ARG)
  decode[]: id, text (tokenizer.decode([id]))
  pad_bang: cases for a tokenizer folder whose pad_token is the plain string "!" (SD 2 style)
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_DIR = os.path.join(REPO, "models", "tiny", "tokenizer")
OUT = os.path.join(REPO, "tests", "fixtures", "tokenizer_cases.json")
TF425 = os.environ.get("TF425", os.path.join(REPO, ".venv", "tf425-reference"))
REFERENCE_PACKAGES = ["transformers==4.25.1", "huggingface_hub==0.11.1", "tokenizers==0.13.3"]


def reference_installed():
    init = os.path.join(TF425, "transformers", "__init__.py")
    if not os.path.isfile(init):
        return False
    with open(init, encoding="utf-8") as f:
        return '__version__ = "4.25.1"' in f.read()


if not reference_installed():
    print(f"gen_30: installing the reference tokenizer into {TF425}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", TF425, "--no-deps",
                    *REFERENCE_PACKAGES], check=True)

sys.path.insert(0, TF425)
import transformers  # noqa: E402

if transformers.__version__ != "4.25.1":
    sys.exit(f"gen_30: need transformers 4.25.1 from {TF425} (got {transformers.__version__}); see the docstring")
import ftfy  # noqa: E402
import ftfy.bad_codecs  # noqa: E402,F401
import numpy as np  # noqa: E402
import regex  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402
from transformers.models.clip.tokenization_clip import whitespace_clean  # noqa: E402

tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
assert tok.fix_text is not None, "ftfy is not importable: the reference path needs it"


# get_word_inds exactly as in prompt-to-prompt's ptp_utils.py / StyleDiffusion's ptp_utils_v.py.
def get_word_inds(text: str, word_place: int, tokenizer):
    split_text = text.split(" ")
    if type(word_place) is str:
        word_place = [i for i, word in enumerate(split_text) if word_place == word]
    elif type(word_place) is int:
        word_place = [word_place]
    out = []
    if len(word_place) > 0:
        words_encode = [tokenizer.decode([item]).strip("#") for item in tokenizer.encode(text)][1:-1]
        cur_len, ptr = 0, 0

        for i in range(len(words_encode)):
            cur_len += len(words_encode[i])
            if ptr in word_place:
                out.append(i + 1)
            if cur_len >= len(split_text[ptr]):
                ptr += 1
                cur_len = 0
    return np.array(out)


def tokens_of(text, t=tok):
    return t.convert_tokens_to_ids(t.tokenize(text))


def ids77_of(text, t=tok):
    return t(text, padding="max_length", max_length=77, truncation=True).input_ids


def clean_of(text):
    return whitespace_clean(ftfy.fix_text(text)).lower()


# ------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------

rng = random.Random(20240801)
vocab_words = [w[:-4] for w in tok.encoder if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 6]
long_prompt = " ".join(rng.choice(vocab_words) for _ in range(300))

NAMED = [
    ("spec_cat_mirror", "a cat sitting next to a mirror"),
    ("spec_tiger_mirror", "a tiger sitting next to a mirror"),
    ("spec_dog_carpet", "a black and white dog sitting on a carpet"),
    ("spec_silver_cat", "a silver cat sculpture sitting next to a mirror"),
    ("spec_watercolor", "watercolor painting of a cat sitting next to a mirror"),
    ("empty", ""),
    ("only_spaces", "   \t\n  "),
    ("punctuation", "hello, world! (test) [x] {y} a-b a_b a/b"),
    ("punctuation_runs", "wow!!! ... ?!? --- ''quoted'' \"double\" #hashtag @user $5 100%"),
    ("digits", "1234 3.14 2nd 10x"),
    ("contractions", "it's don't we're I've I'm you'll he'd"),
    ("contraction_edges", "'sam 'tis rock'n'roll o'clock ''s IT'S"),
    ("upper_case", "A PHOTO OF A CAT In The Style Of VAN GOGH"),
    ("whitespace", "  a   cat\t\tsitting\nnext to\r\na mirror  \x0b\x0c "),
    ("accents", "caf\u00e9 na\u00efve r\u00e9sum\u00e9"),
    ("curly_quotes", "\u201ccurly\u201d \u2018quotes\u2019 it\u2019s \u201equote\u201f"),
    ("dashes_ellipsis", "em\u2014dash en\u2013dash wait\u2026 ok"),
    ("emoji", "a cat \U0001F63A on a sofa \U0001F6CB\ufe0f with \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F1EF\U0001F1F5"),
    ("cjk", "\u6771\u4eac\u306e\u732b \uc11c\uc6b8"),
    ("cyrillic", "\u043a\u043e\u0448\u043a\u0430 \u0441\u0438\u0434\u0438\u0442 \u041a\u041e\u0428\u041a\u0410"),
    ("greek_final_sigma", "\u03b3\u03ac\u03c4\u03b1 \u039f\u0394\u039f\u03a3 \u03a3\u039f\u03a6\u0399\u0391 \u03a3"),
    ("fullwidth", "\uff21\uff22\uff23 \uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48\u3000\uff11\uff12\uff13\uff01"),
    ("ligatures", "\ufb01sh \ufb02ower \ufb03ce \u0132sselmeer \u01c6"),
    ("combining", "e\u0301 cafe\u0301 n\u0303 A\u030a o\u0308\u0304"),
    ("nbsp_and_spaces", "a\u00a0cat\u2003sitting\u2028next\u3000to\u202fa\u205fmirror"),
    ("mojibake_latin1", "caf\u00c3\u00a9 na\u00c3\u00afve"),
    ("mojibake_cp1252_quotes", "\u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d and it\u00e2\u20ac\u2122s"),
    ("mojibake_a_grave", "\u00c3\u00a0 la mode \u00c3 la carte"),
    ("mojibake_lossy", "\u00e2\u20ac\u0153 like this \u00e2\u20ac\ufffd"),
    ("mojibake_cyrillic", "\u00d0\u00ba\u00d0\u00be\u00d1\u02c6\u00d0\u00ba\u00d0\u00b0"),
    ("mojibake_embedded", "the caf\u00c3\u00a9 and the \u00e2\u20ac\u201c real \u2014 dash"),
    ("html_entities", "cats &amp; dogs &lt;3 caf&eacute; &#x2019; &#8212; &EACUTE; &nbsp;x &#128; &#59;"),
    ("html_disabled_by_lt", "<b>cats &amp; dogs</b>"),
    ("html_lt_on_later_line", "cats &amp; dogs\n<b> &amp; </b>\nmore &amp;"),
    ("control_chars", "a\x1b[31mred\x1b[0m cat a\x01b\x7fc \ufeffbom a\u200bzero"),
    ("c1_controls", "caf\u0082 na\u0085ve \u0080uro"),
    ("turkish_dotted_i", "\u0130stanbul \u0130I\u0131"),
    ("long_s_contraction", "it'\u017f a test"),
    ("special_literal", "<|startoftext|>a cat<|endoftext|>"),
    ("special_middle", "a photo <|endoftext|> of a cat"),
    ("special_mixed_case", "<|StartOfText|> <|ENDOFTEXT|>"),
    ("special_fullwidth", "\uff1c|startoftext|\uff1e cat"),
    ("special_adjacent", "<|endoftext|><|endoftext|>x<|startoftext|>"),
    ("long_words", "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis"),
    ("repeated_letters", "a" * 120 + " " + "ab" * 40),
    ("url", "https://example.com/a_b?c=d&e=f#frag"),
    ("math_symbols", "x\u00b2 + y\u00b3 = z\u2074 \u00bd \u2153 \u2160 \u2167 \u00b5 \u2211 \u221e"),
    ("ypogegrammeni", "\u1fb3 \u03b1\u0345 \u0345"),
    ("long_300_words", long_prompt),
]

BYTE_CASES = [
    ("invalid_latin1_byte", b"caf\xe9 au lait"),
    ("invalid_bom16", b"\xff\xfe a cat"),
    ("invalid_truncated", b"a \xe2\x82 cat \xf0\x9f\x98"),
    ("invalid_surrogate", b"x\xed\xa0\x80y \xed\xa0\xbd\xed\xb8\x80"),
    ("invalid_overlong", b"\xc0\x80 \xc1\xbf \xe0\x80\x80 \xf0\x80\x80\x80"),
    ("invalid_above_max", b"\xf4\x90\x80\x80 \xf5\x80 \xff"),
    ("invalid_lone_continuations", b"\x80\x81 a \xbf cat"),
]


def case_entry(name, text, raw=None):
    entry = {"name": name}
    if raw is None:
        entry["prompt"] = text
    else:
        entry["prompt_hex"] = raw.hex()
    entry["tokens"] = tokens_of(text)
    entry["ids77"] = ids77_of(text)
    entry["clean"] = clean_of(text)
    return entry


cases = [case_entry(n, p) for n, p in NAMED]
cases += [case_entry(n, raw.decode("utf-8", "replace"), raw) for n, raw in BYTE_CASES]

# ------------------------------------------------------------------------------------------------
# Seeded fuzz: short prompts mixing vocabulary words with characters from many scripts, mojibake
# made with ftfy's codecs, HTML entities and whitespace oddities.
# ------------------------------------------------------------------------------------------------

POOLS = [
    [chr(c) for c in range(0x21, 0x7F)],
    [chr(c) for c in range(0x80, 0x250)],
    [chr(c) for c in range(0x300, 0x370)],
    [chr(c) for c in range(0x370, 0x460)],
    [chr(c) for c in range(0x2000, 0x2070)],
    [chr(c) for c in range(0x3040, 0x3100)] + [chr(c) for c in range(0x4E00, 0x4E40)] + [chr(c) for c in range(0xAC00, 0xAC20)],
    [chr(c) for c in range(0xFF00, 0xFFF0)],
    list("\u0132\u0133\u01c4\u01c5\u01c6\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"),
    ["\U0001F600", "\U0001F44D\U0001F3FD", "\u2764\ufe0f", "\u200d", "\U0001F1FA\U0001F1F8"],
    ["&amp;", "&lt;", "&gt;", "&#x41;", "&#233;", "&#128;", "&eacute;", "&NTILDE;", "&hellip;", "<", "&#0;"],
    [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b", "\u0085"],
]
MOJIBAKE_ENCODINGS = ["latin-1", "sloppy-windows-1252", "windows-1252", "sloppy-windows-1251", "sloppy-windows-1250",
                      "sloppy-windows-1253", "iso-8859-2", "macroman", "cp437"]


def fuzz_prompt():
    parts = []
    for _ in range(rng.randint(1, 10)):
        r = rng.random()
        if r < 0.4:
            parts.append(rng.choice(vocab_words))
        elif r < 0.6:
            parts.append(" ")
        else:
            parts.append(rng.choice(rng.choice(POOLS)))
    text = "".join(parts)
    if rng.random() < 0.4:
        try:
            bad = text.encode("utf-8").decode(rng.choice(MOJIBAKE_ENCODINGS))
            if rng.random() < 0.3:
                bad = bad.replace("\xa0", " ")
            text = rng.choice(vocab_words) + " " + bad
        except UnicodeDecodeError:
            pass
    return text


fuzz = []
for _ in range(250):
    p = fuzz_prompt()
    fuzz.append({"prompt": p, "tokens": tokens_of(p), "clean": clean_of(p)})

# ------------------------------------------------------------------------------------------------
# get_word_inds
# ------------------------------------------------------------------------------------------------

WORD_CASES = [
    ("a cat sitting next to a mirror", "cat"),
    ("a cat sitting next to a mirror", "a"),  # repeated word
    ("a cat sitting next to a mirror", "mirror"),
    ("a tiger sitting next to a mirror", "tiger"),
    ("watercolor painting of a cat sitting next to a mirror", "watercolor"),
    ("a silver cat sculpture sitting next to a mirror", "sculpture"),
    ("a silver cat sculpture sitting next to a mirror", "silver"),
    ("a black and white dog sitting on a carpet", "carpet"),
    ("a photorealistic hyperdetailed portrait of a cat", "hyperdetailed"),
    ("a photorealistic hyperdetailed portrait of a cat", "photorealistic"),
    ("a cat, sitting next to a mirror.", "cat,"),
    ("a cat, sitting next to a mirror.", "mirror."),
    ("A Cat sitting", "Cat"),
    ("A Cat sitting", "cat"),  # absent: the match is case-sensitive
    ("a cat sitting next to a mirror", "tiger"),  # absent
    ("a  cat sitting", "cat"),  # double space: the reference misaligns and returns nothing
    ("#hashtag cat", "cat"),
    ("a \U0001F63A cat", "cat"),
    ("caf\u00e9 cat", "cat"),
    ("\ufb03x cat", "cat"),  # ligature expands: the reference runs past the words (IndexError)
    ("it's a cat", "it's"),
    ("a cat <|endoftext|> dog", "dog"),
    (long_prompt, long_prompt.split(" ")[120]),
    ("a cat sitting next to a mirror", 0),
    ("a cat sitting next to a mirror", 3),
    ("a cat sitting next to a mirror", 6),
    ("a cat sitting next to a mirror", 7),  # out of range
    ("watercolor painting of a cat", 0),
]

words = []
for prompt, place in WORD_CASES:
    entry = {"prompt": prompt}
    entry["word" if isinstance(place, str) else "pos"] = place
    try:
        inds = [int(x) for x in get_word_inds(prompt, place, tok)]
        absent = isinstance(place, str) and place not in prompt.split(" ")
        out_of_range = isinstance(place, int) and not 0 <= place < len(prompt.split(" "))
        if absent or out_of_range:
            entry["error"] = "absent" if absent else "out of range"
            entry["reference_inds"] = inds
        else:
            entry["inds"] = inds
    except IndexError:
        entry["error"] = "reference raises IndexError"
    words.append(entry)

# ------------------------------------------------------------------------------------------------
# decode([id])
# ------------------------------------------------------------------------------------------------

decode_ids = list(range(0, 600)) + [49406, 49407] + sorted(rng.sample(range(600, 49406), 400))
decode = [{"id": i, "text": tok.decode([i])} for i in decode_ids]

# ------------------------------------------------------------------------------------------------
# A tokenizer whose pad token is the plain string "!" (SD 2's): "!" is then split out before
# tokenising, and whitespace around it is stripped.
# ------------------------------------------------------------------------------------------------

pad_dir = tempfile.mkdtemp(prefix="sd_tok_pad_")
try:
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER_DIR, f), pad_dir)
    with open(os.path.join(TOKENIZER_DIR, "special_tokens_map.json")) as f:
        smap = json.load(f)
    smap["pad_token"] = "!"
    with open(os.path.join(pad_dir, "special_tokens_map.json"), "w") as f:
        json.dump(smap, f)
    with open(os.path.join(pad_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["pad_token"] = "!"
    with open(os.path.join(pad_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    tok_bang = CLIPTokenizer.from_pretrained(pad_dir)
    pad_bang = []
    for p in ["hello! world", "wow !!! a cat !", "a cat", "! <|endoftext|> !x"]:
        pad_bang.append({"prompt": p, "tokens": tokens_of(p, tok_bang), "ids77": ids77_of(p, tok_bang)})
finally:
    shutil.rmtree(pad_dir)

# ------------------------------------------------------------------------------------------------
# Write, then compare with the venv's transformers (information only)
# ------------------------------------------------------------------------------------------------

try:
    import importlib.metadata as md

    regex_version = md.version("regex")
except Exception:
    regex_version = "?"
fixture = {
    "versions": {
        "python": sys.version.split()[0],
        "transformers": transformers.__version__,
        "ftfy": ftfy.__version__,
        "regex": regex_version,
    },
    "cases": cases,
    "fuzz": fuzz,
    "words": words,
    "decode": decode,
    "pad_bang": pad_bang,
}
os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w", encoding="ascii") as f:
    json.dump(fixture, f, ensure_ascii=True, separators=(",", ":"))
    f.write("\n")
print(f"gen_30: wrote {len(cases)} cases, {len(fuzz)} fuzz prompts, {len(words)} word lookups, "
      f"{len(decode)} decodes, {len(pad_bang)} pad='!' cases to {os.path.relpath(OUT, REPO)}")

COMPARE = r"""
import json, sys
from transformers import CLIPTokenizer
import transformers
tok = CLIPTokenizer.from_pretrained(sys.argv[1])
prompts = json.load(sys.stdin)
print(json.dumps({"version": transformers.__version__, "class": type(tok).__name__,
                  "ids": [tok(p, padding="max_length", max_length=77, truncation=True).input_ids for p in prompts]}))
"""
prompts = [c["prompt"] if "prompt" in c else bytes.fromhex(c["prompt_hex"]).decode("utf-8", "replace") for c in cases]
prompts += [f["prompt"] for f in fuzz]
want = [c["ids77"] for c in cases] + [ids77_of(f["prompt"]) for f in fuzz]
env = dict(os.environ)
env.pop("PYTHONPATH", None)
try:
    res = subprocess.run([sys.executable, "-c", COMPARE, TOKENIZER_DIR], input=json.dumps(prompts), text=True,
                         capture_output=True, env=env, check=True)
    other = json.loads(res.stdout.strip().splitlines()[-1])
    diffs = [i for i, (a, b) in enumerate(zip(want, other["ids"])) if a != b]
    print(f"gen_30: venv transformers {other['version']} ({other['class']}) differs from 4.25.1 slow+ftfy on "
          f"{len(diffs)} of {len(prompts)} prompts")
    for i in diffs[:25]:
        label = cases[i]["name"] if i < len(cases) else f"fuzz[{i - len(cases)}]"
        print(f"  {label}: {prompts[i][:60]!r}")
except Exception as e:  # the comparison is informational only
    print(f"gen_30: could not compare with the venv's transformers: {e}")
