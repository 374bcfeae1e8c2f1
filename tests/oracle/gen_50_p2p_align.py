#!/usr/bin/env python3
"""gen_50_p2p_align.py: the prompt-side arrays of Prompt-to-Prompt / P2Plus, as the reference
computes them -> tests/fixtures/p2p_align_cases.json, read by tests/unit/test_p2p_align.c.

The reference is google/prompt-to-prompt's seq_aligner.py and ptp_utils.py (byte-identical in
sen-mao/StyleDiffusion), run with transformers 4.25.1's slow CLIPTokenizer and ftfy, the tokenizer
StyleDiffusion ran. The functions below restate that code's behaviour from
../shared/spec/stylediffusion.md §4.3-§4.7 (the names in brackets are the reference functions),
including its quirks; they are not a copy of it. Each returns what the reference returns as plain
numbers (float32 where the reference holds torch float32 tensors).

Needs the reference tokenizer in .venv/tf425-reference (gen_30_tokenizer_fixtures.py installs it)
and the vocabulary in models/tiny/tokenizer (gen_10_vocab.py). Run from the repository root:

    .venv/bin/python tests/oracle/gen_50_p2p_align.py

Fixture layout (JSON). "prompts" lists the source first, then the targets. A case whose reference
call raises has "error" (the Python exception's type) and "mentions" (strings the C message must
contain) instead of the arrays.
  replacement[]:  name, prompts, mappers: per target the 77 rows w of the 77x77 mapper, each
                  either an int n (M[w, n] = 1, the rest of the row 0) or a list of its nonzero
                  entries [n, value] (value as a float32 number; [] for an all-zero row)
  refinement[]:   name, prompts, ids (tokenizer.encode of each prompt), mappers (per target 77
                  ints), alphas (per target a 77-character string of '0'/'1')
  align[]:        x, y, y_to_x: Needleman-Wunsch on plain integer sequences
  equalizer[]:    name, prompt, words, values, equalizer (77 float32 numbers)
  cross_alpha[]:  name, prompts, num_steps, default ([start, end]), default_form ("float",
                  "pair" or "absent": how the reference was called), words ([[word, start, end]]
                  in dict order), alpha: per step, per target a 77-character '0'/'1' string
  replace_steps[]: num_steps, window ([start, end]), steps ([begin, end])
  blend[]:        name, prompts, words (per prompt a list of words; may be shorter than prompts),
                  alpha_layers (per prompt a 77-character '0'/'1' string)
"""
import json
import os
import random
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_DIR = os.path.join(REPO, "models", "tiny", "tokenizer")
OUT = os.path.join(REPO, "tests", "fixtures", "p2p_align_cases.json")
TF425 = os.environ.get("TF425", os.path.join(REPO, ".venv", "tf425-reference"))

sys.path.insert(0, TF425)
import transformers  # noqa: E402

if transformers.__version__ != "4.25.1":
    sys.exit(f"gen_50: need transformers 4.25.1 in {TF425} (got {transformers.__version__}); "
             "run tests/oracle/gen_30_tokenizer_fixtures.py first, it installs it")
from transformers import CLIPTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()  # the over-77-token warning of the long cases is expected

tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
assert tok.fix_text is not None, "ftfy is not importable: the reference path needs it"

MAX_LEN = 77  # the reference's max_len / MAX_NUM_WORDS


class ReferenceError_(Exception):
    """Stands for an exception the reference raises; `kind` is the Python exception it raises."""

    def __init__(self, kind, message, mentions):
        super().__init__(message)
        self.kind = kind
        self.mentions = mentions


# ------------------------------------------------------------------------------------------------
# Word -> token positions [ptp_utils.get_word_inds]
# ------------------------------------------------------------------------------------------------

def encode(text):
    """tokenizer.encode(text): BOS, tokens, EOS; no padding, no truncation."""
    return tok.encode(text)


def token_positions(text, selector):
    """Positions (BOS = 0) of the tokens of the selected words of text.split(" "). `selector` is a
    word (every equal word is selected) or a word index. Tokens are given to words by adding up
    the lengths of their individually decoded, '#'-stripped texts until the word's length is
    reached. Returns a list (the reference returns a numpy array; empty when nothing matches)."""
    words = text.split(" ")
    if isinstance(selector, str):
        chosen = {k for k, w in enumerate(words) if w == selector}
    else:
        chosen = {selector}
    positions = []
    if not chosen:
        return positions
    pieces = [tok.decode([t]).strip("#") for t in encode(text)][1:-1]
    word, filled = 0, 0
    for k, piece in enumerate(pieces):
        filled += len(piece)
        if word in chosen:
            positions.append(k + 1)
        if filled >= len(words[word]):  # IndexError when tokens outrun words, as the reference
            word += 1
            filled = 0
    return positions


# ------------------------------------------------------------------------------------------------
# Word swap [seq_aligner.get_replacement_mapper_, get_replacement_mapper]
# ------------------------------------------------------------------------------------------------

def replacement_mapper(source, target):
    src_words, tgt_words = source.split(" "), target.split(" ")
    if len(src_words) != len(tgt_words):
        raise ReferenceError_("ValueError", "different word counts",
                              [source, target, f"{len(src_words)} words", f"{len(tgt_words)} words"])
    changed = [k for k in range(len(tgt_words)) if src_words[k] != tgt_words[k]]
    src_pos = [token_positions(source, k) for k in changed]
    tgt_pos = [token_positions(target, k) for k in changed]
    m = np.zeros((MAX_LEN, MAX_LEN))  # float64, like the reference's numpy buffer
    i = j = 0  # source and target token being mapped
    cur = 0    # next changed word
    while i < MAX_LEN and j < MAX_LEN:
        if cur < len(changed):
            if not src_pos[cur]:
                raise ReferenceError_("IndexError", "changed word without source tokens",
                                      [source, target, "no tokens"])
            if src_pos[cur][0] == i:
                s, t = src_pos[cur], tgt_pos[cur]
                if not t:
                    raise ReferenceError_("ZeroDivisionError", "changed word without target tokens",
                                          [source, target, "no tokens"])
                if max(s + t) >= MAX_LEN:
                    raise ReferenceError_("IndexError", "changed word past the window",
                                          [source, target, "past position 76"])
                if len(s) == len(t):
                    for a, b in zip(s, t):
                        m[a, b] = 1
                else:
                    for a in s:
                        for b in t:
                            m[a, b] = 1 / len(t)
                i += len(s)
                j += len(t)
                cur += 1
                continue
            m[i, j] = 1
        else:
            m[j, j] = 1  # sic: after the last changed word the reference uses (j, j)
        i += 1
        j += 1
    return m.astype(np.float32)  # torch.from_numpy(...).float()


def replacement_mappers(prompts):
    return [replacement_mapper(prompts[0], p) for p in prompts[1:]]


# ------------------------------------------------------------------------------------------------
# Added / removed words [seq_aligner.global_align, get_aligned_sequences, get_mapper]
# ------------------------------------------------------------------------------------------------

LEFT, UP, DIAGONAL, ORIGIN = 1, 2, 3, 4
GAP, MATCH, MISMATCH = 0, 1, -1


def align(x, y):
    """Needleman-Wunsch; returns for each y element the aligned x index or -1."""
    nx, ny = len(x), len(y)
    score = [[0] * (ny + 1) for _ in range(nx + 1)]
    trace = [[0] * (ny + 1) for _ in range(nx + 1)]
    for j in range(1, ny + 1):
        score[0][j] = j * GAP
        trace[0][j] = LEFT
    for i in range(1, nx + 1):
        score[i][0] = i * GAP
        trace[i][0] = UP
    trace[0][0] = ORIGIN
    for i in range(1, nx + 1):
        for j in range(1, ny + 1):
            from_left = score[i][j - 1] + GAP
            from_up = score[i - 1][j] + GAP
            from_diag = score[i - 1][j - 1] + (MATCH if x[i - 1] == y[j - 1] else MISMATCH)
            best = max(from_left, from_up, from_diag)
            score[i][j] = best
            # the first of left, up, diagonal that reaches the best score
            trace[i][j] = LEFT if best == from_left else UP if best == from_up else DIAGONAL
    pairs = []  # (y index, x index or -1), collected backwards
    i, j = nx, ny
    while i > 0 or j > 0:
        step = trace[i][j]
        if step == DIAGONAL:
            i, j = i - 1, j - 1
            pairs.append((j, i))
        elif step == LEFT:
            j -= 1
            pairs.append((j, -1))
        elif step == UP:
            i -= 1
        else:
            break
    pairs.reverse()
    assert [p[0] for p in pairs] == list(range(ny))
    return [p[1] for p in pairs]


def refinement_mapper(source, target):
    x, y = encode(source), encode(target)
    if len(y) > MAX_LEN:
        raise ReferenceError_("RuntimeError", "target longer than the window",
                              [target, f"{len(y)} tokens"])
    y_to_x = align(x, y)
    mapper = list(y_to_x) + list(range(len(y), MAX_LEN))
    alphas = [1 if v != -1 else 0 for v in y_to_x] + [1] * (MAX_LEN - len(y))
    if max(mapper) >= MAX_LEN:
        # get_mapper itself succeeds; the controller's base[:, :, mapper] fails at the first step
        raise ReferenceError_("IndexError", "mapper entry past the window", [target, source])
    return mapper, alphas


# ------------------------------------------------------------------------------------------------
# Reweighting [get_equalizer], LocalBlend words [LocalBlend.__init__]
# ------------------------------------------------------------------------------------------------

def checked_row_positions(prompt, word):
    """get_word_inds as used to index a 77-wide row. An absent word (or one without tokens) gives
    the reference an empty index, which changes nothing; the C API refuses it (a typo would
    silently disable the edit), so the fixture records an error. Past 76 the reference raises."""
    pos = token_positions(prompt, word)
    if not pos:
        raise ReferenceError_("silent no-op", "word selects no token", [word, prompt])
    if max(pos) >= MAX_LEN:
        raise ReferenceError_("IndexError", "word past the window", [word, prompt])
    return pos


def equalizer(prompt, words, values):
    eq = np.ones(MAX_LEN, dtype=np.float32)
    for word, value in zip(words, values):
        eq[checked_row_positions(prompt, word)] = value
    return eq


def blend_alpha_layers(prompts, words_per_prompt):
    layers = np.zeros((len(prompts), MAX_LEN), dtype=np.float32)
    for p, (prompt, words) in enumerate(zip(prompts, words_per_prompt)):
        if isinstance(words, str):
            words = [words]
        for word in words:
            layers[p, checked_row_positions(prompt, word)] = 1
    return layers


# ------------------------------------------------------------------------------------------------
# Step windows [ptp_utils.update_alpha_time_word, get_time_words_attention_alpha,
# AttentionControlEdit.__init__]
# ------------------------------------------------------------------------------------------------

def window_of(bounds):
    """A float tau means (0, tau); the reference tests `type(bounds) is float`."""
    return (0, bounds) if type(bounds) is float else bounds


def set_window(alpha, bounds, target, token_positions_=None):
    rows = alpha.shape[0]
    start, end = window_of(bounds)
    first, stop = int(start * rows), int(end * rows)
    cols = list(range(alpha.shape[2])) if token_positions_ is None else token_positions_
    # three numpy slice assignments, so negative and oversized bounds behave as Python slices
    alpha[:first, target, cols] = 0
    alpha[first:stop, target, cols] = 1
    alpha[stop:, target, cols] = 0


def cross_alpha(prompts, num_steps, cross_replace_steps):
    steps = dict(cross_replace_steps) if isinstance(cross_replace_steps, dict) else {"default_": cross_replace_steps}
    steps.setdefault("default_", (0.0, 1.0))
    alpha = np.zeros((num_steps + 1, len(prompts) - 1, MAX_LEN), dtype=np.float32)
    for t in range(len(prompts) - 1):
        set_window(alpha, steps["default_"], t)
    used = {}
    for word, bounds in steps.items():
        if word == "default_":
            continue
        used[word] = False
        for t, prompt in enumerate(prompts[1:]):
            pos = token_positions(prompt, word)
            if pos:  # a target without the word is skipped
                if max(pos) >= MAX_LEN:
                    raise ReferenceError_("IndexError", "word past the window", [word, prompt])
                set_window(alpha, bounds, t, pos)
                used[word] = True
    for word, hit in used.items():
        if not hit:
            # the reference ignores it; the C API refuses a word that selects nothing
            raise ReferenceError_("silent no-op", "word in no target", [word])
    return alpha


def replace_steps(num_steps, bounds):
    start, end = window_of(bounds)
    return int(num_steps * start), int(num_steps * end)


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------

def float32_list(a):
    return [float(v) for v in np.asarray(a, dtype=np.float32).ravel()]


def bits(row):
    return "".join("1" if v else "0" for v in row)


def attempt(entry, compute):
    try:
        compute(entry)
    except ReferenceError_ as e:
        entry["error"] = e.kind
        entry["mentions"] = e.mentions
    return entry


def replacement_case(name, prompts):
    def row(m, w):
        cols = [int(n) for n in np.nonzero(m[w])[0]]
        if len(cols) == 1 and m[w, cols[0]] == 1:
            return cols[0]
        return [[n, float(m[w, n])] for n in cols]

    def compute(e):
        e["mappers"] = [[row(m, w) for w in range(MAX_LEN)] for m in replacement_mappers(prompts)]
    return attempt({"name": name, "prompts": prompts}, compute)


def refinement_case(name, prompts):
    def compute(e):
        e["ids"] = [encode(p) for p in prompts]
        out = [refinement_mapper(prompts[0], p) for p in prompts[1:]]
        e["mappers"] = [m for m, _ in out]
        e["alphas"] = [bits(a) for _, a in out]
    return attempt({"name": name, "prompts": prompts}, compute)


def equalizer_case(name, prompt, words, values):
    def compute(e):
        e["equalizer"] = float32_list(equalizer(prompt, words, values))
    return attempt({"name": name, "prompt": prompt, "words": list(words), "values": list(values)}, compute)


def cross_alpha_case(name, prompts, num_steps, steps):
    if isinstance(steps, dict):
        words = [[w, *window_of(b)] for w, b in steps.items() if w != "default_"]
        form = ("float" if type(steps["default_"]) is float else "pair") if "default_" in steps else "absent"
        default = list(window_of(steps.get("default_", (0.0, 1.0))))
    else:
        words, form, default = [], "float", [0.0, steps]

    def compute(e):
        a = cross_alpha(prompts, num_steps, steps)
        e["alpha"] = [[bits(a[r, t]) for t in range(a.shape[1])] for r in range(a.shape[0])]
    return attempt({"name": name, "prompts": prompts, "num_steps": num_steps, "default": default,
                    "default_form": form, "words": words}, compute)


def blend_case(name, prompts, words):
    def compute(e):
        e["alpha_layers"] = [bits(r) for r in blend_alpha_layers(prompts, words)]
    return attempt({"name": name, "prompts": prompts, "words": [[w] if isinstance(w, str) else list(w) for w in words]},
                   compute)


CAT_MIRROR = "a cat sitting next to a mirror"
TIGER_MIRROR = "a tiger sitting next to a mirror"
DOG_CARPET = "black and white dog playing red ball on black carpet"
TIGER_CARPET = "black and white tiger playing red ball on black carpet"
CAT_FLOOR = "black and white cat on floor"
DOG_FLOOR = "black and white dog on floor"
COW_FIELD = "a black and white cow is eating the grass in a field"
ELEPHANT_FIELD = "a black and white elephant is eating the grass in a field"
BIKE = "a red mountain bike parked on top of a grass covered mountain hill"
MOTORCYCLE = "a red mountain motorcycle parked on top of a grass covered mountain hill"
TENT = "a tent in forest"
TIGER_FOREST = "a tiger in forest"
SILVER = "a silver cat sculpture sitting next to a mirror"
WATERCOLOR = "watercolor painting of a cat sitting next to a mirror"

# Words that the real CLIP vocabulary splits into several BPE tokens (checked below).
MULTI_TOKEN = {"pangolin": 2, "bulldozer": 2, "hippopotamus": 3, "stegosaurus": 3, "capybara": 3, "axolotl": 4}
for word, count in MULTI_TOKEN.items():
    assert len(encode(word)) - 2 == count, (word, encode(word))

replacement = [
    replacement_case("spec_cat_tiger_mirror", [CAT_MIRROR, TIGER_MIRROR]),
    replacement_case("spec_dog_tiger_carpet", [DOG_CARPET, TIGER_CARPET]),
    replacement_case("spec_cat_dog_floor", [CAT_FLOOR, DOG_FLOOR]),
    replacement_case("spec_cow_elephant", [COW_FIELD, ELEPHANT_FIELD]),
    replacement_case("spec_bike_motorcycle", [BIKE, MOTORCYCLE]),
    replacement_case("spec_tent_tiger_forest", [TENT, TIGER_FOREST]),
    replacement_case("identical", [CAT_MIRROR, CAT_MIRROR]),
    # 1 -> 2, 1 -> 3, 1 -> 4 tokens: 1/len(tgt) spreading and the M[j, j] tail
    replacement_case("one_to_two_tokens", [CAT_MIRROR, "a pangolin sitting next to a mirror"]),
    replacement_case("one_to_three_tokens", [TENT, "a hippopotamus in forest"]),
    replacement_case("one_to_four_tokens", ["a cat", "a axolotl"]),
    # 2 -> 1, 3 -> 1: the tail shifts the other way
    replacement_case("two_to_one_token", ["a pangolin sitting next to a mirror", CAT_MIRROR]),
    replacement_case("three_to_one_token", ["a stegosaurus in forest", TENT]),
    replacement_case("two_to_two_tokens", ["a pangolin on grass", "a bulldozer on grass"]),
    replacement_case("three_to_three_tokens", ["a hippopotamus on grass", "a stegosaurus on grass"]),
    replacement_case("two_to_three_tokens", ["a pangolin on grass", "a capybara on grass"]),
    replacement_case("last_word_changes_count", ["a photo of a cat", "a photo of a hippopotamus"]),
    replacement_case("first_word_changes_count", ["cat sitting on grass", "axolotl sitting on grass"]),
    # several replaced words, with and without count changes before the last one
    replacement_case("two_words_same_counts", [CAT_MIRROR, "a dog sitting next to a window"]),
    replacement_case("two_words_count_change_first", [CAT_MIRROR, "a hippopotamus sitting next to a window"]),
    replacement_case("two_words_count_change_both", [CAT_MIRROR, "a pangolin sitting next to a stegosaurus"]),
    replacement_case("adjacent_words", ["a black cat on grass", "a hippopotamus dog on grass"]),
    replacement_case("every_word", ["a cat", "one axolotl"]),
    # several targets at once (B = 3, 4)
    replacement_case("three_prompts", [CAT_MIRROR, TIGER_MIRROR, "a dog sitting next to a mirror"]),
    replacement_case("three_prompts_multi_token", [CAT_MIRROR, "a pangolin sitting next to a mirror",
                                                   "a hippopotamus sitting next to a window"]),
    replacement_case("four_prompts", [TENT, TIGER_FOREST, "a house in forest", "a capybara in jungle"]),
    # repeated words: positions are compared, not word strings
    replacement_case("repeated_word_first", ["a cat and a cat", "a dog and a cat"]),
    replacement_case("repeated_word_second", ["a cat and a cat", "a cat and a hippopotamus"]),
    replacement_case("repeated_word_both", ["a cat and a cat", "a dog and a dog"]),
    # punctuation glued to words makes them multi-token words
    replacement_case("punctuation_comma", ["a cat, sitting next to a mirror", "a tiger, sitting next to a mirror"]),
    replacement_case("punctuation_change", ["a cat sitting.", "a cat sitting!!"]),
    replacement_case("punctuation_word_to_plain", ["a cat, on grass", "a dog on grass"]),
    replacement_case("parentheses", ["a (cat) on grass", "a (hippopotamus) on grass"]),
    replacement_case("case_differs", ["a Cat on grass", "a cat on grass"]),
    # errors and degenerate prompts
    replacement_case("word_count_mismatch", [CAT_MIRROR, "a big tiger sitting next to a mirror"]),
    replacement_case("word_count_mismatch_second_target",
                     [CAT_MIRROR, TIGER_MIRROR, "a tiger sitting by the mirror on the wall"]),
    replacement_case("empty_word_not_replaced", ["a  cat", "a dog cat"]),
    replacement_case("empty_source_word", ["a cat ", "a cat dog"]),
    replacement_case("empty_target_word", ["a cat", "a "]),
]

# Long prompts: replaced words near and past token 76.
filler = " ".join(["red"] * 72)
replacement += [
    replacement_case("long_change_at_73", [filler + " cat on grass", filler + " dog on grass"]),
    replacement_case("long_change_at_76_grows", [filler + " red red red cat", filler + " red red red pangolin"]),
    replacement_case("long_change_grows_past_76", [filler + " cat on grass", filler + " hippopotamus on grass"]),
    replacement_case("long_change_straddles_76", [filler + " red red cat sits", filler + " red red axolotl sits"]),
    replacement_case("long_change_beyond_window",
                     [filler + " red red red red red cat", filler + " red red red red red dog"]),
]

# Seeded fuzz over a vocabulary mixing one- and many-token words and punctuation.
VOCAB = ["a", "the", "cat", "dog", "tiger", "photo", "of", "on", "in", "red", "black", "and", "white", "grass",
         "mirror", "sitting", "painting", "forest", "pangolin", "bulldozer", "hippopotamus", "stegosaurus",
         "capybara", "axolotl", "dog,", "cat.", "(red)", "mirror!", "watercolor", "sculpture", "silver", "big"]
rng = random.Random(5050)
for n in range(48):
    length = rng.randint(1, 10)
    source = [rng.choice(VOCAB) for _ in range(length)]
    targets = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        t = list(source)
        for _ in range(rng.randint(1, 3)):
            t[rng.randrange(length)] = rng.choice(VOCAB)
        targets.append(" ".join(t))
    replacement.append(replacement_case(f"fuzz_{n:02d}", [" ".join(source)] + targets))

refinement = [
    refinement_case("spec_a_dog_sitting", ["a dog", "a sitting dog"]),
    refinement_case("spec_silver_sculpture", [CAT_MIRROR, SILVER]),
    refinement_case("spec_watercolor", [CAT_MIRROR, WATERCOLOR]),
    refinement_case("spec_both_targets", [CAT_MIRROR, SILVER, WATERCOLOR]),
    refinement_case("identical", [CAT_MIRROR, CAT_MIRROR]),
    refinement_case("insert_start", [CAT_MIRROR, "photo of " + CAT_MIRROR]),
    refinement_case("insert_middle", [CAT_MIRROR, "a cat happily sitting next to a mirror"]),
    refinement_case("insert_end", [CAT_MIRROR, CAT_MIRROR + " in the sun"]),
    refinement_case("insert_multi_token", [CAT_MIRROR, "a cat sitting next to a hippopotamus mirror"]),
    refinement_case("delete_start", [CAT_MIRROR, "cat sitting next to a mirror"]),
    refinement_case("delete_middle", [CAT_MIRROR, "a cat next to a mirror"]),
    refinement_case("delete_end", [CAT_MIRROR, "a cat sitting next to"]),
    refinement_case("delete_all_but_one", [CAT_MIRROR, "mirror"]),
    refinement_case("substitute_is_new_token", [CAT_MIRROR, TIGER_MIRROR]),
    refinement_case("repeated_tokens_ambiguous", ["a cat and a dog", "a cat and a dog and a cat"]),
    refinement_case("repeated_tokens_shift", ["a a a", "a a a a a"]),
    refinement_case("reorder", ["a red cat", "a cat red"]),
    refinement_case("empty_source", ["", "a cat"]),
    refinement_case("empty_target", [CAT_MIRROR, ""]),
    refinement_case("punctuation", ["a cat, sitting", "a cat, quietly sitting."]),
    refinement_case("target_75_tokens", ["red", " ".join(["red"] * 75)]),
    refinement_case("target_76_tokens", ["red", " ".join(["red"] * 76)]),
    refinement_case("source_76_tokens", [" ".join(["red"] * 76), "red cat"]),
    refinement_case("source_long", [" ".join(["cat"] + ["red"] * 80), "cat"]),
]
for n in range(40):
    source = [rng.choice(VOCAB) for _ in range(rng.randint(0, 9))]
    targets = []
    for _ in range(rng.choice([1, 1, 2])):
        t = list(source)
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(["insert", "insert", "delete", "substitute"])
            if op == "insert" or not t:
                t.insert(rng.randint(0, len(t)), rng.choice(VOCAB))
            elif op == "delete":
                del t[rng.randrange(len(t))]
            else:
                t[rng.randrange(len(t))] = rng.choice(VOCAB)
        targets.append(" ".join(t))
    refinement.append(refinement_case(f"fuzz_{n:02d}", [" ".join(source)] + targets))

align_cases = [{"x": [], "y": [], "y_to_x": []}, {"x": [1, 2], "y": [], "y_to_x": []},
               {"x": [], "y": [3, 4], "y_to_x": align([], [3, 4])}]
for n in range(150):
    alphabet = rng.randint(1, 5)
    x = [rng.randrange(alphabet) for _ in range(rng.randint(0, 12))]
    y = [rng.randrange(alphabet) for _ in range(rng.randint(0, 12))]
    align_cases.append({"x": x, "y": y, "y_to_x": align(x, y)})

equalizer_cases = [
    equalizer_case("spec_tiger_x2", TIGER_MIRROR, ["tiger"], [2]),
    equalizer_case("spec_dog_x2", DOG_FLOOR, ["dog"], [2]),
    equalizer_case("spec_sitting_x8", "a sitting dog", ["sitting"], [8]),
    equalizer_case("spec_motorcycle_x2", MOTORCYCLE, ["motorcycle"], [2]),
    equalizer_case("spec_silver_sculpture_x2", SILVER, ["silver", "sculpture"], [2, 2]),
    equalizer_case("spec_watercolor_x5", WATERCOLOR, ["watercolor"], [5]),
    equalizer_case("multi_token_word", "a hippopotamus in forest", ["hippopotamus"], [3]),
    equalizer_case("repeated_word", "a cat and a cat", ["cat"], [2]),
    equalizer_case("several_values", "a red cat on black grass", ["red", "black", "grass"], [0.5, -1, 1.7]),
    equalizer_case("fraction_rounds_to_float32", "a red cat", ["red"], [0.1]),
    equalizer_case("later_word_wins", "a red cat", ["cat", "cat"], [2, 3]),
    equalizer_case("punctuated_word", "a cat, sitting", ["cat,"], [4]),
    equalizer_case("absent_word", TIGER_MIRROR, ["cat"], [2]),
    equalizer_case("absent_second_word", TIGER_MIRROR, ["tiger", "lion"], [2, 2]),
    equalizer_case("bare_word_of_punctuated", "a cat, sitting", ["cat"], [2]),
    equalizer_case("word_past_window", filler + " red red red red red cat", ["cat"], [2]),
]

cross_alpha_cases = [
    cross_alpha_case("n30_tau0.6", [DOG_CARPET, TIGER_CARPET], 30, {"default_": 0.6}),
    cross_alpha_case("n30_tau0.2", [CAT_FLOOR, DOG_FLOOR], 30, {"default_": 0.2}),
    cross_alpha_case("n30_tau0.8", [CAT_MIRROR, TIGER_MIRROR], 30, 0.8),
    cross_alpha_case("n30_tau1.0", [CAT_MIRROR, TIGER_MIRROR], 30, 1.0),
    cross_alpha_case("n50_tau0.8", [CAT_MIRROR, TIGER_MIRROR], 50, {"default_": 0.8}),
    cross_alpha_case("n50_tau0.6", [TENT, TIGER_FOREST], 50, {"default_": 0.6}),
    cross_alpha_case("n50_tau0.2", [TENT, TIGER_FOREST], 50, 0.2),
    cross_alpha_case("n50_tau1.0_b3", [CAT_MIRROR, SILVER, WATERCOLOR], 50, 1.0),
    cross_alpha_case("n50_tau0.0", [CAT_MIRROR, TIGER_MIRROR], 50, 0.0),
    cross_alpha_case("n30_pair", [CAT_MIRROR, TIGER_MIRROR], 30, {"default_": (0.2, 0.7)}),
    cross_alpha_case("n30_word_override", [CAT_MIRROR, TIGER_MIRROR], 30, {"default_": 0.8, "tiger": 0.4}),
    cross_alpha_case("n50_word_override_pair", [CAT_MIRROR, TIGER_MIRROR], 50,
                     {"default_": 0.6, "tiger": (0.1, 0.9), "mirror": 0.2}),
    cross_alpha_case("n50_override_without_default", [TENT, "a hippopotamus in forest"], 50, {"hippopotamus": 0.3}),
    cross_alpha_case("n30_override_some_targets", [CAT_MIRROR, SILVER, WATERCOLOR], 30,
                     {"default_": 0.6, "silver": 0.2, "cat": (0.5, 1.0)}),
    cross_alpha_case("n30_override_repeated_word", ["a cat and a cat", "a dog and a dog"], 30,
                     {"default_": 0.6, "dog": 0.3}),
    cross_alpha_case("n30_later_override_wins", [CAT_MIRROR, TIGER_MIRROR], 30, {"default_": 0.5, "tiger": 0.2,
                                                                                 "sitting": 0.9}),
    cross_alpha_case("n30_negative_start_wraps", [CAT_MIRROR, TIGER_MIRROR], 30, {"default_": (-0.1, 1.0)}),
    cross_alpha_case("n30_negative_end_wraps", [CAT_MIRROR, TIGER_MIRROR], 30, {"default_": (0.0, -0.5)}),
    cross_alpha_case("n30_end_before_start", [CAT_MIRROR, TIGER_MIRROR], 30, {"default_": (0.7, 0.3)}),
    cross_alpha_case("n30_end_past_one", [CAT_MIRROR, TIGER_MIRROR], 30, {"default_": (0.5, 1.5)}),
    cross_alpha_case("n25_tau0.6", [CAT_MIRROR, TIGER_MIRROR], 25, 0.6),
    cross_alpha_case("n1_tau0.5", [CAT_MIRROR, TIGER_MIRROR], 1, 0.5),
    cross_alpha_case("override_word_in_no_target", [CAT_MIRROR, TIGER_MIRROR], 30, {"default_": 0.6, "cat": 0.2}),
]

replace_steps_cases = []
for num_steps in (1, 25, 30, 50, 100):
    for window in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, (0.2, 0.6), (0.5, 0.3), (-0.1, 0.5),
                   (0.35, 1.5), (0.15, 0.85)):
        replace_steps_cases.append({"num_steps": num_steps, "window": list(window_of(window)),
                                    "steps": list(replace_steps(num_steps, window))})

blend = [
    blend_case("spec_cat_tiger", [CAT_MIRROR, TIGER_MIRROR], [("cat",), ("tiger",)]),
    blend_case("spec_dog_tiger", [DOG_CARPET, TIGER_CARPET], [("dog",), ("tiger",)]),
    blend_case("spec_cat_cat_refine", [CAT_MIRROR, SILVER], [("cat",), ("cat",)]),
    blend_case("spec_bike_motorcycle", [BIKE, MOTORCYCLE], [("bike",), ("motorcycle",)]),
    blend_case("spec_tent_tiger", [TENT, TIGER_FOREST], ["tent", "tiger"]),
    blend_case("several_words", [CAT_MIRROR, SILVER], [("cat", "mirror"), ("silver", "cat", "sculpture")]),
    blend_case("multi_token_and_repeated", ["a cat and a cat", "a hippopotamus and a hippopotamus"],
               [("cat",), ("hippopotamus",)]),
    blend_case("fewer_lists_than_prompts", [CAT_MIRROR, TIGER_MIRROR, SILVER], [("cat",), ("tiger",)]),
    blend_case("three_prompts", [CAT_MIRROR, TIGER_MIRROR, SILVER], [("cat",), ("tiger",), ("cat", "silver")]),
    blend_case("absent_word", [CAT_MIRROR, TIGER_MIRROR], [("cat",), ("dog",)]),
    blend_case("word_past_window", [filler + " red red red red red cat", "a cat"], [("cat",), ("cat",)]),
]

fixture = {
    "versions": {"transformers": transformers.__version__, "numpy": np.__version__,
                 "python": sys.version.split()[0]},
    "replacement": replacement,
    "refinement": refinement,
    "align": align_cases,
    "equalizer": equalizer_cases,
    "cross_alpha": cross_alpha_cases,
    "replace_steps": replace_steps_cases,
    "blend": blend,
}
text = json.dumps(fixture, ensure_ascii=True, separators=(",", ":"))
assert len(text) < 300_000, len(text)
with open(OUT, "w", encoding="ascii") as f:
    f.write(text)
    f.write("\n")

counts = {k: len(v) for k, v in fixture.items() if isinstance(v, list)}
errors = sum(1 for k, v in fixture.items() if isinstance(v, list) for e in v if isinstance(e, dict) and "error" in e)
print(f"gen_50: wrote {OUT} ({len(text)} bytes): {counts}, {errors} error cases")
