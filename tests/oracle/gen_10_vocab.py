#!/usr/bin/env python3
"""gen_10_vocab.py: writes the SD v1.x `tokenizer/` folder (vocab.json, merges.txt,
special_tokens_map.json, tokenizer_config.json) into models/tiny/tokenizer/.

SD v1.4/v1.5 ship the tokenizer of openai/clip-vit-large-patch14, which is CLIP's own BPE: the
merges file `bpe_simple_vocab_16e6.txt.gz` that ships inside openai-CLIP and open_clip_torch. We
rebuild the Hugging Face files from it the way CLIP's SimpleTokenizer builds its vocabulary, so the
repository needs no download:

    merges = lines[1 : 49152 - 256 - 2 + 1]            (48894 merges; line 0 is a version comment)
    vocab  = the 256 byte-level characters (bytes_to_unicode order),
             the same 256 with '</w>' appended,
             every merge joined, in rank order,
             '<|startoftext|>', '<|endoftext|>'        -> 49408 entries

The script checks a few ids that are well known from the published tokenizer (e.g. "a</w>" = 320,
"<|startoftext|>" = 49406) and fails loudly if any is off.

Run from the repository root with the project venv:  .venv/bin/python tests/oracle/gen_10_vocab.py
"""
import gzip
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(REPO, "models", "tiny", "tokenizer")


def find_bpe_file():
    """The merges file from the installed open_clip (or openai-CLIP) package."""
    candidates = []
    try:
        import open_clip  # noqa: F401

        candidates.append(os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"))
    except ImportError:
        pass
    try:
        import clip  # noqa: F401

        candidates.append(os.path.join(os.path.dirname(clip.__file__), "bpe_simple_vocab_16e6.txt.gz"))
    except ImportError:
        pass
    for path in candidates:
        if os.path.isfile(path):
            return path
    sys.exit("gen_10_vocab: bpe_simple_vocab_16e6.txt.gz not found (install open_clip_torch or openai-CLIP)")


def byte_level_alphabet():
    """CLIP's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes are
    shifted to U+0100.. so that no BPE symbol is whitespace or a control character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    byte_values = printable[:]
    code_points = printable[:]
    shift = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            code_points.append(256 + shift)
            shift += 1
    return dict(zip(byte_values, [chr(c) for c in code_points]))


def main():
    bpe_path = find_bpe_file()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merge_lines = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in merge_lines]
    assert len(merges) == 48894 and all(len(m) == 2 for m in merges), "unexpected merges file layout"

    alphabet = list(byte_level_alphabet().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == len(tokens) == 49408, f"vocab has {len(vocab)} unique entries of {len(tokens)}"

    # Ids anyone can check against the published openai/clip-vit-large-patch14 tokenizer.
    known = {"!": 0, "a</w>": 320, "cat</w>": 2368, "dog</w>": 1929, "photo</w>": 1125,
             "<|startoftext|>": 49406, "<|endoftext|>": 49407}
    for tok, want in known.items():
        if vocab.get(tok) != want:
            sys.exit(f"gen_10_vocab: {tok!r} -> {vocab.get(tok)}, expected {want}")

    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(OUT_DIR, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")

    def added_token(content):
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    special = {
        "bos_token": added_token("<|startoftext|>"),
        "eos_token": added_token("<|endoftext|>"),
        "pad_token": "<|endoftext|>",
        "unk_token": added_token("<|endoftext|>"),
    }
    with open(os.path.join(OUT_DIR, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
        f.write("\n")

    def typed(tok):
        return dict({"__type": "AddedToken"}, **tok)

    config = {
        "add_prefix_space": False,
        "bos_token": typed(special["bos_token"]),
        "do_lower_case": True,
        "eos_token": typed(special["eos_token"]),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": "<|endoftext|>",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": typed(special["unk_token"]),
    }
    with open(os.path.join(OUT_DIR, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"gen_10_vocab: wrote {len(vocab)} tokens and {len(merges)} merges to {os.path.relpath(OUT_DIR, REPO)}/")


if __name__ == "__main__":
    main()
