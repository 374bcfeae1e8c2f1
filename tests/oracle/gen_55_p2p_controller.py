#!/usr/bin/env python3
"""gen_55_p2p_controller.py: the Prompt-to-Prompt / P2Plus attention controller and LocalBlend as
the reference runs them -> tests/fixtures/p2p_controller.safetensors, read by
tests/unit/test_p2p.c.

The reference is the controller family of sen-mao/StyleDiffusion's stylediffusion.py (the same
logic as the Null-text notebook of google/prompt-to-prompt plus P2Plus's replace_uncond):
AttentionStore, AttentionControlEdit, AttentionReplace / AttentionRefine / AttentionReweight and
the NTI-style LocalBlend. The class below restates that behaviour from
../shared/spec/stylediffusion.md §4.1-§4.7 in torch, with the reference's own tensor operations
(einsum with the mapper, gather through the refinement mapper, in-place writes through a reshape
view, the running-sum store, max_pool2d / interpolate / gt on the blend maps), so the C code is
compared with what torch computes. It is not a copy of the reference code.

The two resolutions the reference hard-codes for 512 px images (self-attention injection and the
store up to 32², LocalBlend and heatmaps at 16²) are written as (side/2)² and side/4, as
include/sd/control.h states them; every case here uses a 32x32 latent (16² and 8²), which is what
the tiny model sees in the C smoke test.

Inputs are synthetic, and both sides generate them bit for bit (the C test has the same
generator): splitmix64 hashes give integer weights in [1, 2^20], a few tokens get a spatial blob
(+2^22 inside a disc) so that LocalBlend sees structure, and each row is divided by its exactly
computed integer sum in float64, then rounded to float32 (a softmax-normalised map). Latents are
24-bit integers scaled to [-1, 1) exactly.

Fixture layout (all F32):
  Edit cases, per configuration X (A..G, see CONFIGS), cases in the order
      for step in steps: for branch in (uncond, cond): for site in SITES
  X_flags          [n_cases]  0: the reference leaves the maps unchanged, 1: it edits them,
                              2: it edits them and the case's data is stored:
  X_s{step}_{u|c}{site}_sum   [B, 8, kv]  Σ over queries of the output (float64 sum -> float32)
  X_s{step}_{u|c}{site}_rows  [B-1, 8, 3, kv]  target rows at queries 0, q/2+1, q-1 (cross only)
  LocalBlend flows, per flow X in FLOWS: steps 0..7 of conditional passes over the 11 cross
  layers with q_len <= 256 (the reference's store order down 16², 8², mid, up 8², 16²), each
  followed by the step callback on generated latents:
  flowX_s{step}_latents [B, 4, 32, 32]  blended latents (steps where LocalBlend is active)
  flowX_s{step}_mask    [B, 32, 32]     its mask (0/1)
  flowX_avg_p{b}        [64, 77]        aggregate_attention(8, ["up", "down"], cross, select=b)
  flowX_heat_p{b}       [n_tokens, 2]   per token of prompt b: Σ gray and Σ gray over pixels with
                                        even x + y of show_cross_attention's 256x256 tile

Needs transformers 4.25.1 in .venv/tf425-reference (gen_30_tokenizer_fixtures.py installs it),
the vocabulary in models/tiny/tokenizer, and torch / numpy / Pillow / safetensors in .venv:

    .venv/bin/python tests/oracle/gen_55_p2p_controller.py
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TF425 = os.environ.get("TF425", os.path.join(REPO, ".venv", "tf425-reference"))
sys.path.insert(0, HERE)
sys.path.insert(0, TF425)

import torch  # noqa: E402
import torch.nn.functional as nnf  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

import common  # noqa: E402

if transformers.__version__ != "4.25.1":
    sys.exit(f"gen_55: need transformers 4.25.1 in {TF425} (got {transformers.__version__})")
from transformers import CLIPTokenizer  # noqa: E402

tok = CLIPTokenizer.from_pretrained(os.path.join(REPO, "models", "tiny", "tokenizer"))
assert tok.fix_text is not None, "ftfy is not importable: the reference tokenizer path needs it"

T = 77
HEADS = 8
LATENT = 32
MAX_Q = (LATENT // 2) ** 2  # 256: the reference's 32**2 at a 64 latent
LOSS_SIDE = LATENT // 4     # 8: the reference's 16 at a 64 latent

# ------------------------------------------------------------------------------------------------
# Prompt-side arrays (stylediffusion.md §4.4-§4.6), restated for the simple prompts used here
# ------------------------------------------------------------------------------------------------


def word_positions(text, word):
    """get_word_inds(text, word): positions (BOS = 0) of the tokens of every word equal to `word`,
    tokens given to words by adding up the lengths of their decoded, '#'-stripped texts."""
    words = text.split(" ")
    chosen = {k for k, w in enumerate(words) if w == word}
    pieces = [tok.decode([t]).strip("#") for t in tok.encode(text)][1:-1]
    out, current, filled = [], 0, 0
    for k, piece in enumerate(pieces):
        filled += len(piece)
        if current in chosen:
            out.append(k + 1)
        if filled >= len(words[current]):
            current, filled = current + 1, 0
    return out


def word_swap_mapper(source, target):
    """get_replacement_mapper_: the (77, 77) weights of source token w in target token n."""
    sw, tw = source.split(" "), target.split(" ")
    assert len(sw) == len(tw)
    changed = [k for k in range(len(sw)) if sw[k] != tw[k]]
    src = [word_positions(source, sw[k]) for k in changed]
    dst = [word_positions(target, tw[k]) for k in changed]
    m = np.zeros((T, T))
    i = j = cur = 0
    while i < T and j < T:
        if cur < len(changed) and src[cur][0] == i:
            s, d = src[cur], dst[cur]
            if len(s) == len(d):
                m[s, d] = 1
            else:
                for a in s:
                    m[a, d] = 1 / len(d)
            i, j, cur = i + len(s), j + len(d), cur + 1
        elif cur < len(changed):
            m[i, j] = 1
            i, j = i + 1, j + 1
        else:
            m[j, j] = 1  # sic (stylediffusion.md §8 item 8)
            i, j = i + 1, j + 1
    return torch.from_numpy(m).float()


def needleman_wunsch(x, y):
    """y position -> aligned x position or -1; gap 0, match 1, mismatch -1; ties left > up > diag."""
    nx, ny = len(x), len(y)
    score = np.zeros((nx + 1, ny + 1), dtype=np.int64)
    move = np.zeros((nx + 1, ny + 1), dtype=np.int64)
    score[0, :] = 0
    score[:, 0] = 0
    move[0, 1:] = 1
    move[1:, 0] = 2
    for i in range(1, nx + 1):
        for j in range(1, ny + 1):
            left, up = score[i, j - 1], score[i - 1, j]
            diag = score[i - 1, j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            best = max(left, up, diag)
            score[i, j] = best
            move[i, j] = 1 if best == left else 2 if best == up else 3
    out = []
    i, j = nx, ny
    while i > 0 or j > 0:
        if move[i, j] == 3:
            i, j = i - 1, j - 1
            out.append(i)
        elif move[i, j] == 1:
            j -= 1
            out.append(-1)
        else:
            i -= 1
    return out[::-1]


def refine_mapper(source, target):
    x, y = tok.encode(source), tok.encode(target)
    y_to_x = needleman_wunsch(x, y)
    mapper = y_to_x + list(range(len(y), T))
    alphas = [0.0 if v == -1 else 1.0 for v in y_to_x] + [1.0] * (T - len(y))
    return mapper, alphas


def equalizer(prompt, words, values):
    eq = torch.ones(1, T)
    for word, value in zip(words, values):
        eq[:, word_positions(prompt, word)] = value
    return eq


def time_alpha(prompts, n_steps, default, word_windows):
    """get_time_words_attention_alpha: (N+1, B-1, 1, 1, 77) of 0/1."""
    rows = n_steps + 1
    alpha = torch.zeros(rows, len(prompts) - 1, T)

    def put(bounds, t, cols):
        first, stop = int(bounds[0] * rows), int(bounds[1] * rows)
        alpha[:first, t, cols] = 0
        alpha[first:stop, t, cols] = 1
        alpha[stop:, t, cols] = 0

    for t in range(len(prompts) - 1):
        put(default, t, list(range(T)))
    for word, bounds in word_windows:
        for t, prompt in enumerate(prompts[1:]):
            pos = word_positions(prompt, word)
            if pos:
                put(bounds, t, pos)
    return alpha.reshape(rows, len(prompts) - 1, 1, 1, T)


def step_range(n_steps, window):
    return int(n_steps * window[0]), int(n_steps * window[1])


# ------------------------------------------------------------------------------------------------
# The controller, as the reference's AttentionStore / AttentionControlEdit behave (LOW_RESOURCE)
# ------------------------------------------------------------------------------------------------


class ReferenceController:
    def __init__(self, cfg):
        self.prompts = cfg["prompts"]
        self.B = len(self.prompts)
        self.N = cfg["steps"]
        self.replace = cfg["edit"] == "replace"
        self.cross_alpha = time_alpha(self.prompts, self.N, cfg["cross"], cfg.get("word_windows", []))
        self.self_range = step_range(self.N, cfg["self"])
        self.uncond_range = step_range(self.N, cfg["uncond"])
        if self.replace:
            self.mapper = torch.stack([word_swap_mapper(self.prompts[0], p) for p in self.prompts[1:]])
        else:
            pairs = [refine_mapper(self.prompts[0], p) for p in self.prompts[1:]]
            self.mapper = torch.tensor([m for m, _ in pairs], dtype=torch.int64)
            self.ref_alphas = torch.tensor([a for _, a in pairs]).reshape(self.B - 1, 1, 1, T)
        self.eq = equalizer(self.prompts[1], *cfg["eq"]) if cfg.get("eq") else None
        self.step_store = self.empty_store()
        self.store = {}
        self.cur_step = 0
        if cfg.get("blend"):
            layers = torch.zeros(self.B, 1, 1, 1, 1, T)
            for b, (prompt, words) in enumerate(zip(self.prompts, cfg["blend"])):
                for word in words:
                    layers[b, :, :, :, :, word_positions(prompt, word)] = 1
            self.alpha_layers = layers
            self.start_blend = int(0.2 * self.N)
            self.counter = 0

    @staticmethod
    def empty_store():
        return {f"{place}_{kind}": [] for place in ("down", "mid", "up") for kind in ("cross", "self")}

    # R of the edit types (AttentionReplace / AttentionRefine, wrapped by AttentionReweight)
    def cross_replacement(self, base, target):
        if self.replace:
            r = torch.einsum("hpw,bwn->bhpn", base, self.mapper)
        else:
            r = base[:, :, self.mapper].permute(2, 0, 1, 3)
            r = r * self.ref_alphas + target * (1 - self.ref_alphas)
        if self.eq is not None:
            r = r[None, :, :, :] * self.eq[:, None, None, :]
        return r

    def self_replacement(self, base, target):
        if target.shape[2] <= MAX_Q:
            return base.unsqueeze(0).expand(target.shape[0], *base.shape)
        return target

    def conditional(self, attn, is_cross, place):
        """AttentionStore.forward (keeps the live tensor), then the in-place edit."""
        if attn.shape[1] <= MAX_Q:
            self.step_store[f"{place}_{'cross' if is_cross else 'self'}"].append(attn)
        if is_cross or self.self_range[0] <= self.cur_step < self.self_range[1]:
            view = attn.reshape(self.B, attn.shape[0] // self.B, *attn.shape[1:])
            base, target = view[0], view[1:]
            if is_cross:
                alpha = self.cross_alpha[self.cur_step]
                view[1:] = self.cross_replacement(base, target) * alpha + (1 - alpha) * target
            else:
                view[1:] = self.self_replacement(base, target)
        return attn

    def unconditional(self, attn, is_cross, place):
        """P2Plus replace_uncond."""
        if not is_cross and self.uncond_range[0] <= self.cur_step < self.uncond_range[1]:
            view = attn.reshape(self.B, attn.shape[0] // self.B, *attn.shape[1:])
            view[1:] = self.self_replacement(view[0], view[1:])
        return attn

    def between_steps(self):
        if not self.store:
            self.store = self.step_store
        else:
            for key in self.store:
                for i in range(len(self.store[key])):
                    self.store[key][i] += self.step_store[key][i]
        self.step_store = self.empty_store()

    def local_blend(self, x_t):
        """LocalBlend.__call__ with th (0.3, 0.3), pooling, no substruct words."""
        self.counter += 1
        if self.counter <= self.start_blend:
            return x_t, None, None
        maps = self.store["down_cross"][2:4] + self.store["up_cross"][:3]
        maps = [m.reshape(self.B, -1, 1, LOSS_SIDE, LOSS_SIDE, T) for m in maps]
        maps = torch.cat(maps, dim=1)
        m = (maps * self.alpha_layers).sum(-1).mean(1)
        m = nnf.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1))
        m = nnf.interpolate(m, size=(LATENT, LATENT))
        m = m / m.max(2, keepdims=True)[0].max(3, keepdims=True)[0]
        mask = m.gt(0.3)
        mask = mask[:1] + mask
        mask = mask.float()
        return x_t[:1] + mask * (x_t - x_t[:1]), mask, m

    def average(self):
        return {key: [item / self.cur_step for item in items] for key, items in self.store.items()}

    def aggregate(self, select):
        """aggregate_attention(res, ["up", "down"], is_cross=True, select)."""
        out = []
        maps = self.average()
        for place in ("up", "down"):
            for item in maps[f"{place}_cross"]:
                if item.shape[1] == LOSS_SIDE ** 2:
                    out.append(item.reshape(self.B, -1, LOSS_SIDE, LOSS_SIDE, item.shape[-1])[select])
        out = torch.cat(out, dim=0)
        return out.sum(0) / out.shape[0]


# ------------------------------------------------------------------------------------------------
# Synthetic inputs (tests/unit/test_p2p.c generates the same bits)
# ------------------------------------------------------------------------------------------------

M64 = (1 << 64) - 1


def splitmix(seed, n):
    z = (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) + np.uint64(seed & M64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def attention_maps(seed, B, res_h, res_w, kv, cross):
    """[B·8, q, kv] rows summing to 1; cross maps give tokens 1..12 a disc per prompt row."""
    q = res_h * res_w
    v = (splitmix(seed, B * HEADS * q * kv) >> np.uint64(44)).astype(np.int64) + 1
    v = v.reshape(B, HEADS, q, kv)
    if cross:
        ys, xs = np.divmod(np.arange(q), res_w)
        radius2 = max(1, (res_w // 4) ** 2)
        for token in range(1, 13):
            for b in range(B):
                cy, cx = (5 * token + b) % res_h, (7 * token + 3 * b) % res_w
                inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius2
                v[b, :, inside, token] += 1 << 22
    total = v.sum(-1, keepdims=True)
    out = (v.astype(np.float64) / total.astype(np.float64)).astype(np.float32)
    return torch.from_numpy(out.reshape(B * HEADS, q, kv))


def latents(seed, B):
    u = (splitmix(seed, B * 4 * LATENT * LATENT) >> np.uint64(40)).astype(np.float64)
    return torch.from_numpy((u / 8388608.0 - 1.0).astype(np.float32).reshape(B, 4, LATENT, LATENT))


def case_seed(config_index, step, branch, site):
    return 1_000_003 * (config_index + 1) + 10_007 * step + 101 * branch + site


def flow_seed(flow_index, step, site):
    return 7_000_001 * (flow_index + 1) + 10_007 * step + site


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------

# (place, is_cross, side, layer) of the edit-case sites, in the tiny UNet's call order at 32x32
SITES = [
    ("down", False, 32, 0), ("down", True, 32, 1),
    ("down", False, 16, 4), ("down", True, 16, 5),
    ("down", False, 8, 8), ("down", True, 8, 9),
    ("mid", False, 4, 12), ("mid", True, 4, 13),
]

# The cross layers with q <= 256 of one conditional pass, in call order (the LocalBlend flows)
FLOW_SITES = [
    ("down", 16, 5), ("down", 16, 7), ("down", 8, 9), ("down", 8, 11), ("mid", 4, 13),
    ("up", 8, 15), ("up", 8, 17), ("up", 8, 19), ("up", 16, 21), ("up", 16, 23), ("up", 16, 25),
]
FLOW_STEPS = 8

DOG = "black and white dog playing red ball on black carpet"
TIGER = "black and white tiger playing red ball on black carpet"
MIRROR_CAT = "a cat sitting next to a mirror"

CONFIGS = [  # the spec's §4.8 rows, plus B = 3 and a word window; keep in step with test_p2p.c
    dict(name="A", prompts=[DOG, TIGER], steps=30, edit="replace", cross=(0, .6), self=(0, .8),
         uncond=(0, .5), eq=(["tiger"], [2.0]), blend=[["dog"], ["tiger"]], case_steps=[3, 16, 20, 25]),
    dict(name="B", prompts=["a tent in forest", "a tiger in forest"], steps=50, edit="replace",
         cross=(0, .6), self=(0, .6), uncond=(0, .6), case_steps=[10, 29, 30, 45]),
    dict(name="C", prompts=["a dog", "a sitting dog"], steps=30, edit="refine", cross=(0, .2), self=(0, .2),
         uncond=(0, 0.0), eq=(["sitting"], [8.0]), blend=[["dog"], ["dog"]], case_steps=[0, 5, 6, 12]),
    dict(name="D", prompts=[MIRROR_CAT, "a silver cat sculpture sitting next to a mirror"], steps=50,
         edit="refine", cross=(0, .8), self=(0, .6), uncond=(0, 0.0),
         eq=(["silver", "sculpture"], [2.0, 2.0]), case_steps=[1, 35, 44]),
    dict(name="E", prompts=[MIRROR_CAT, "a tiger sitting next to a mirror", "a dog sitting next to a mirror"],
         steps=30, edit="replace", cross=(0, .6), self=(0, .8), uncond=(0, .5), eq=(["tiger"], [2.0]),
         blend=[["cat"], ["tiger"], ["dog"]], case_steps=[2, 16, 21, 27]),
    dict(name="F", prompts=["a dog", "a sitting dog", "a dog on the grass"], steps=30, edit="refine",
         cross=(0, .4), self=(0, .3), uncond=(0, .2), case_steps=[4, 7, 10, 14]),
    dict(name="G", prompts=["a cat on a sofa", "a gnochi on a sofa"], steps=30, edit="replace",
         cross=(0, .8), word_windows=[("gnochi", (0, .3))], self=(0, .5), uncond=(.1, .3),
         eq=(["gnochi"], [3.0]), case_steps=[2, 5, 12, 26]),
]
FLOWS = ["A", "C", "E"]


def sample_rows(q):
    return [0, q // 2 + 1, q - 1]


def edit_cases(ci, cfg, out):
    ctl = ReferenceController(cfg)
    B = ctl.B
    flags = []
    seen = set()
    for step in cfg["case_steps"]:
        ctl.cur_step = step
        for branch in (0, 1):  # 0: unconditional, 1: conditional
            for si, (place, is_cross, side, _layer) in enumerate(SITES):
                q = side * side
                if not is_cross and q > MAX_Q:
                    flags.append(0)  # never stored, never injected: the reference leaves it as is
                    continue
                kv = T if is_cross else q
                inp = attention_maps(case_seed(ci, step, branch, si), B, side, side, kv, is_cross)
                got = inp.clone()
                got = ctl.conditional(got, is_cross, place) if branch else ctl.unconditional(got, is_cross, place)
                if torch.equal(got, inp):
                    flags.append(0)
                    continue
                assert torch.equal(got[:HEADS], inp[:HEADS]), "the source row must never change"
                key = (branch, si)
                keep = key not in seen or (is_cross and q == LOSS_SIDE ** 2)
                seen.add(key)
                flags.append(2 if keep else 1)
                if not keep:
                    continue
                name = f"{cfg['name']}_s{step}_{'c' if branch else 'u'}{si}"
                view = got.reshape(B, HEADS, q, kv)
                out[name + "_sum"] = view.double().sum(2).float()
                if is_cross:
                    out[name + "_rows"] = view[1:, :, sample_rows(q), :].clone()
        ctl.step_store = ctl.empty_store()
    out[cfg["name"] + "_flags"] = torch.tensor(flags, dtype=torch.float32)
    return sum(1 for f in flags if f == 2)


def heat_sums(avg, prompt):
    """show_cross_attention's tiles for every token of the prompt: (Σ gray, Σ gray at even x + y)."""
    ids = tok.encode(prompt)
    parity = (np.add.outer(np.arange(256), np.arange(256)) % 2) == 0
    rows = []
    for i in range(len(ids)):
        image = avg[:, :, i]
        image = 255 * image / image.max()
        image = image.unsqueeze(-1).expand(*image.shape, 3)
        image = image.numpy().astype(np.uint8)
        image = np.array(Image.fromarray(image).resize((256, 256)))
        gray = image[:, :, 0].astype(np.int64)
        rows.append([float(gray.sum()), float(gray[parity].sum())])
    return torch.tensor(rows, dtype=torch.float32)


def blend_flow(fi, cfg, out):
    ctl = ReferenceController(cfg)
    B = ctl.B
    margin = 1.0
    for step in range(FLOW_STEPS):
        ctl.cur_step = step
        for si, (place, side, _layer) in enumerate(FLOW_SITES):
            maps = attention_maps(flow_seed(fi, step, si), B, side, side, T, True)
            ctl.conditional(maps, True, place)
        ctl.between_steps()
        ctl.cur_step = step + 1
        x = latents(flow_seed(fi, step, 999), B)
        blended, mask, normalised = ctl.local_blend(x.clone())
        if mask is None:
            assert step < ctl.start_blend
            continue
        margin = min(margin, (normalised - 0.3).abs().min().item())
        name = f"flow{cfg['name']}_s{step}"
        out[name + "_latents"] = blended
        out[name + "_mask"] = mask.reshape(B, LATENT, LATENT)
    # the threshold must not sit within float rounding of any normalised value
    assert margin > 1e-4, f"flow {cfg['name']}: a blend value lies {margin:.2e} from the threshold"
    for b in range(B):
        avg = ctl.aggregate(b)
        out[f"flow{cfg['name']}_avg_p{b}"] = avg.reshape(LOSS_SIDE * LOSS_SIDE, T).clone()
        out[f"flow{cfg['name']}_heat_p{b}"] = heat_sums(avg, ctl.prompts[b])
    return margin


def main():
    common.setup_determinism()
    out = {}
    by_name = {cfg["name"]: (ci, cfg) for ci, cfg in enumerate(CONFIGS)}
    for ci, cfg in enumerate(CONFIGS):
        n = edit_cases(ci, cfg, out)
        print(f"  config {cfg['name']}: {len(cfg['prompts'])} prompts, {n} stored cases")
    for fi, name in enumerate(FLOWS):
        _, cfg = by_name[name]
        margin = blend_flow(fi, cfg, out)
        print(f"  flow {name}: LocalBlend threshold margin {margin:.3e}")
    common.save_fixture("p2p_controller.safetensors", out,
                        "P2P / P2Plus controller edits and LocalBlend on synthetic maps",
                        generator="tests/oracle/gen_55_p2p_controller.py")


if __name__ == "__main__":
    main()
