#!/usr/bin/env python3
"""gen_50_clip_vision.py: StyleDiffusion's image encoder E (stylediffusion.md §3.2), tiny and full.

E is the CLIP ViT-B/16 visual tower of openai-CLIP, patched to return ln_post applied to *every*
token (CLS + 14x14 patches = 197 tokens), without the 768 -> 512 projection, fed with the image
tensor preprocessed by Trainer.preprocess. In transformers terms that is
    CLIPVisionModel(x).last_hidden_state -> vision_model.post_layernorm
(transformers' last_hidden_state stops *before* post_layernorm; its pooler_output applies it to the
CLS token only). This script checks that equivalence against a direct re-implementation of
openai-CLIP's VisionTransformer.forward (nn.MultiheadAttention with packed in_proj, QuickGELU,
ln_pre/ln_post), then writes:

  models/tiny-clip-vision/{config.json, model.safetensors}
      A random-weight CLIPVisionModel with the real token layout (image 224, patch 16, so 197 tokens,
      which the mapping networks M_i require) but tiny widths: hidden 32, intermediate 64, 2 layers,
      4 heads, quick_gelu, layer_norm_eps 1e-5. Weights: torch.manual_seed(3) and transformers'
      init; then every LayerNorm gets weight 1 + 0.1·randn and bias 0.1·randn and every Linear bias
      0.02·randn (generator seed 1003, named_modules() order), so the affine parts and biases are
      exercised; finally every weight is rounded to fp16 and stored as F16 under the published
      "vision_model." names (transformers 5 save_pretrained would drop that level).

  tests/fixtures/tiny_clip_vision.safetensors   (all F32, < 600 KB)
      pre512_c0        (224, 224)      channel 0 of preprocess(hash_image(1, 512, 512, salt 1), 224)
      pre512_rows      (3, 8, 224)     rows PRE512_ROWS of all three channels of the same
      pre512_moments   (3, 2)          per channel: mean and mean square of all 224² values (float64
                                       sums, stored as F32), a loose check of every value; the
                                       whole (3, 224, 224) tensor would take 602 KB on its own
      pre_{a..e}       (B, 3, S, S)    SMALL_CASES: preprocess(hash_image(B, H, W, salt), S)
      tokens_512       (1, 197, 32)    E(x) of the 512x512 image: post_layernorm(last_hidden_state)
      tokens_224       (2, 197, 32)    E(x) of hash_image(2, 224, 224, salt 2): no resize, batch 2
      tokens_300x200   (1, 197, 32)    E(x) of hash_image(1, 300, 200, salt 3): 336x224, crop top 56

  tests/fixtures/clip_vit_b16_names.json
      Every tensor name and shape of CLIPVisionModel for openai/clip-vit-base-patch16, built on the
      meta device from its config (no download), under the published "vision_model." names, plus
      the other top-level tensors of the full CLIPModel checkpoint that a loader must skip.

Test images come from an integer recipe (hash_image) that tests/unit/test_clip_vision.c repeats
bit for bit, so the 512x512 inputs need not be stored. Every value k/1024 - 1 is exact in float32.

Preprocessing (Trainer.preprocess, torchvision 0.13 on a tensor):
  (x + 1) / 2                     Normalize(mean=-1, std=2)
  Resize(S, BICUBIC)              short side -> S, long side int(S·long/short); on a tensor
                                  torchvision 0.13 calls F.interpolate(mode="bicubic",
                                  align_corners=False) without antialiasing
  CenterCrop(S)                   top = int(round((h - S) / 2)), Python's half-to-even round
  Normalize(CLIP mean, CLIP std)
The script cross-checks its F.interpolate path against the installed torchvision's transforms
(antialias=False) bit for bit.

Run from anywhere with the project venv; deterministic (byte-identical outputs on re-runs).
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import FIXTURE_DIR, ROOT  # noqa: E402

from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModel  # noqa: E402

MODEL_DIR = os.path.join(ROOT, "models", "tiny-clip-vision")
GENERATOR = "tests/oracle/gen_50_clip_vision.py"

# config.json of the tiny model: the keys a transformers CLIPVisionModel config.json carries.
TINY_CONFIG = {
    "architectures": ["CLIPVisionModel"],
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 32,
    "image_size": 224,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 4,
    "num_channels": 3,
    "num_hidden_layers": 2,
    "patch_size": 16,
    "projection_dim": 32,
    "torch_dtype": "float16",
}

# openai/clip-vit-base-patch16: the vision_config of its published CLIPModel config.json.
VIT_B16_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "projection_dim": 512,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
}
VIT_B16_TEXT_CONFIG = {  # only needed to list the full CLIPModel's other tensors
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 512,
}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Rows of the 512 -> 224 preprocessed image stored for all three channels (channel 0 is stored
# whole): both borders, where the source indices are clamped, and the middle.
PRE512_ROWS = [0, 1, 2, 3, 111, 112, 222, 223]

# Small preprocessing cases: (name, batch, height, width, salt, target size S). They run the same
# code with the config's image_size replaced by S, to cover what 512 -> 224 does not:
#   a 37x53 -> 24:  landscape, short side 37 -> 24, long 53 -> int(24·53/37) = 34, crop left 5
#   b 45x31 -> 16:  portrait, 31 -> 16, 45 -> 23, crop top round(3.5) = 4 (half to even)
#   c 32x42 -> 16:  landscape, 32 -> 16, 42 -> 21, crop left round(2.5) = 2 (half to even)
#   d 20x20 -> 32:  upsampling (source indices below 0 at the top-left), batch of 2
#   e 16x16 -> 16:  already the target size: torchvision returns the image untouched
SMALL_CASES = [
    ("a", 1, 37, 53, 4, 24),
    ("b", 1, 45, 31, 5, 16),
    ("c", 1, 32, 42, 6, 16),
    ("d", 2, 20, 20, 7, 32),
    ("e", 1, 16, 16, 8, 16),
]


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def hash_image(batch, height, width, salt):
    """(batch, 3, height, width) float32 in [-1, 1): a ramp plus hashed noise, from integers only.

    value = k / 1024 - 1 with k = ramp + noise in 0..2047, where
      ramp  = (4x + 2y + 300c + 50b) mod 1792
      h     = (73856093x) ^ (19349663y) ^ (83492791c) ^ (2654435761b) ^ (40503·salt)   (mod 2^32)
      h     = h ^ (h >> 13);  h = h · 0x5bd1e995 (mod 2^32);  h = h ^ (h >> 15)
      noise = h mod 257
    test_clip_vision.c computes the same with uint32_t arithmetic."""
    mask = np.uint64(0xFFFFFFFF)
    b, c, y, x = np.meshgrid(np.arange(batch, dtype=np.uint64), np.arange(3, dtype=np.uint64),
                             np.arange(height, dtype=np.uint64), np.arange(width, dtype=np.uint64),
                             indexing="ij")
    h = ((x * np.uint64(73856093)) & mask) ^ ((y * np.uint64(19349663)) & mask) \
        ^ ((c * np.uint64(83492791)) & mask) ^ ((b * np.uint64(2654435761)) & mask) \
        ^ np.uint64((40503 * salt) & 0xFFFFFFFF)
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0x5BD1E995)) & mask
    h = h ^ (h >> np.uint64(15))
    noise = h % np.uint64(257)
    ramp = (x * np.uint64(4) + y * np.uint64(2) + c * np.uint64(300) + b * np.uint64(50)) % np.uint64(1792)
    k = (ramp + noise).astype(np.float32)
    out = k / np.float32(1024.0) - np.float32(1.0)
    assert out.dtype == np.float32 and out.min() >= -1 and out.max() < 1
    return torch.from_numpy(np.ascontiguousarray(out))


# ------------------------------------------------------------------------------------------------
# Preprocessing (Trainer.preprocess)
# ------------------------------------------------------------------------------------------------

def resized_size(height, width, size):
    """torchvision Resize(int): the short side becomes `size`, the long one int(size·long/short)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)  # (h, w)


def preprocess(image, size):
    """image (B, 3, H, W) in [-1, 1] -> (B, 3, size, size), exactly the torchvision 0.13 ops."""
    x = (image + 1) / 2
    h, w = x.shape[-2:]
    new_h, new_w = resized_size(h, w, size)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=[new_h, new_w], mode="bicubic", align_corners=False,
                          antialias=False)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).contiguous()


def preprocess_torchvision(image, size):
    """The same with torchvision's own transforms (as Trainer.preprocess composes them)."""
    import torchvision.transforms as T

    chain = T.Compose([
        T.Normalize(mean=[-1.0, -1.0, -1.0], std=[2.0, 2.0, 2.0]),
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=False),
        T.CenterCrop(size),
        T.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
    ])
    return chain(image.clone())


def check_preprocess_against_torchvision():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("  torchvision not installed: preprocessing cross-check skipped")
        return
    cases = [(1, 512, 512, 1, 224), (1, 300, 200, 3, 224)] + [c[1:] for c in SMALL_CASES]
    for batch, h, w, salt, size in cases:
        img = hash_image(batch, h, w, salt)
        common.check_close(f"preprocess {h}x{w}->{size} vs torchvision", preprocess(img, size),
                           preprocess_torchvision(img, size))


# ------------------------------------------------------------------------------------------------
# The encoder, two ways
# ------------------------------------------------------------------------------------------------

def vision_root(model):
    """The module holding embeddings / encoder / post_layernorm: transformers 4 nests it in
    .vision_model, transformers 5 dropped that level."""
    return getattr(model, "vision_model", model)


def encode_hf(model, pixels):
    """post_layernorm(last_hidden_state): ln_post on all tokens, as the patched reference does."""
    out = model(pixel_values=pixels)
    tokens = vision_root(model).post_layernorm(out.last_hidden_state)
    # pooler_output is post_layernorm of the CLS token: the same module, so row 0 must agree.
    common.check_close("pooler_output == tokens[:, 0]", out.pooler_output, tokens[:, 0])
    return tokens


class OpenAIVisionTransformer(nn.Module):
    """openai-CLIP clip/model.py VisionTransformer with clip_util.py's forward (ln_post on every
    token, no proj), in fp32, with weights copied from a transformers CLIPVisionModel."""

    def __init__(self, hf):
        super().__init__()
        cfg = hf.config
        width, heads = cfg.hidden_size, cfg.num_attention_heads
        vm = vision_root(hf)
        emb = vm.embeddings
        self.conv1 = nn.Conv2d(3, width, cfg.patch_size, cfg.patch_size, bias=False)
        self.conv1.weight.data.copy_(emb.patch_embedding.weight)
        self.class_embedding = nn.Parameter(emb.class_embedding.detach().clone())
        self.positional_embedding = nn.Parameter(emb.position_embedding.weight.detach().clone())
        self.ln_pre = self._layer_norm(vm.pre_layrnorm)
        self.blocks = nn.ModuleList()
        for layer in vm.encoder.layers:
            block = nn.Module()
            block.ln_1 = self._layer_norm(layer.layer_norm1)
            block.attn = nn.MultiheadAttention(width, heads)
            sa = layer.self_attn
            block.attn.in_proj_weight.data.copy_(
                torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight]))
            block.attn.in_proj_bias.data.copy_(torch.cat([sa.q_proj.bias, sa.k_proj.bias, sa.v_proj.bias]))
            block.attn.out_proj.weight.data.copy_(sa.out_proj.weight)
            block.attn.out_proj.bias.data.copy_(sa.out_proj.bias)
            block.ln_2 = self._layer_norm(layer.layer_norm2)
            block.c_fc = self._linear(layer.mlp.fc1)
            block.c_proj = self._linear(layer.mlp.fc2)
            self.blocks.append(block)
        self.ln_post = self._layer_norm(vm.post_layernorm)

    @staticmethod
    def _layer_norm(src):
        ln = nn.LayerNorm(src.normalized_shape, eps=1e-5)  # openai-CLIP's LayerNorm default
        ln.weight.data.copy_(src.weight)
        ln.bias.data.copy_(src.bias)
        return ln

    @staticmethod
    def _linear(src):
        lin = nn.Linear(src.in_features, src.out_features)
        lin.weight.data.copy_(src.weight)
        lin.bias.data.copy_(src.bias)
        return lin

    def forward(self, x):
        x = self.conv1(x)                                    # (B, width, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)   # (B, grid², width)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding   # (B, grid²+1, width)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)                               # NLD -> LND, as nn.MultiheadAttention wants
        for b in self.blocks:
            h = b.ln_1(x)
            x = x + b.attn(h, h, h, need_weights=False)[0]   # no mask: every token sees every token
            h = b.c_fc(b.ln_2(x))
            x = x + b.c_proj(h * torch.sigmoid(1.702 * h))   # QuickGELU
        x = x.permute(1, 0, 2)
        return self.ln_post(x)                               # every token, no proj


# ------------------------------------------------------------------------------------------------
# The tiny model
# ------------------------------------------------------------------------------------------------

def model_config(cfg_dict):
    keys = {k: v for k, v in cfg_dict.items() if k not in ("architectures", "torch_dtype", "model_type")}
    return CLIPVisionConfig(**keys)


@torch.no_grad()
def build_tiny():
    torch.manual_seed(3)
    model = CLIPVisionModel(model_config(TINY_CONFIG)).float().eval()
    g = torch.Generator().manual_seed(1003)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.LayerNorm):
            mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
            mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
        elif isinstance(mod, nn.Linear) and mod.bias is not None:
            mod.bias.copy_(0.02 * torch.randn(mod.bias.shape, generator=g))
    for p in model.parameters():
        p.copy_(p.half().float())
    zeros = [n for n, p in model.named_parameters() if not p.abs().any()]
    assert not zeros, f"all-zero parameters {zeros}"
    return model


def published_state_dict(model):
    """state_dict under the published names ("vision_model.embeddings...")."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("position_ids"):
            continue  # a non-persistent buffer in current transformers; always arange
        out[k if k.startswith("vision_model.") else "vision_model." + k] = v
    return out


def save_tiny(model):
    from safetensors.torch import save_file

    os.makedirs(MODEL_DIR, exist_ok=True)
    with open(os.path.join(MODEL_DIR, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f, indent=2, sort_keys=True)
        f.write("\n")
    sd = {k: v.half().contiguous() for k, v in published_state_dict(model).items()}
    path = os.path.join(MODEL_DIR, "model.safetensors")
    save_file(sd, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)
    print(f"  wrote {os.path.relpath(path, ROOT)}  ({os.path.getsize(path):,} bytes, {len(sd)} tensors)")
    assert os.path.getsize(path) < 1_000_000


@torch.no_grad()
def load_tiny():
    """The tiny model through from_pretrained (fp32, eager attention), as a user would load it."""
    return CLIPVisionModel.from_pretrained(MODEL_DIR, dtype=torch.float32,
                                           attn_implementation="eager").float().eval()


# ------------------------------------------------------------------------------------------------
# Full-size layout
# ------------------------------------------------------------------------------------------------

def write_vit_b16_names():
    with torch.device("meta"):
        vision = CLIPVisionModel(CLIPVisionConfig(**VIT_B16_CONFIG))
        full = CLIPModel_meta()
    names = [[k, list(v.shape)] for k, v in published_state_dict(vision).items()]
    n_params = sum(int(np.prod(s)) for _, s in names)
    full_sd = {k: list(v.shape) for k, v in full.state_dict().items() if not k.endswith("position_ids")}
    # The full CLIPModel checkpoint holds exactly the vision tensors under the same names...
    vision_in_full = {k: s for k, s in full_sd.items() if k.startswith("vision_model.")}
    assert vision_in_full == dict((k, s) for k, s in names), "CLIPModel vision names differ"
    # ...plus the text tower and the projections, which the loader skips.
    others = [[k, s] for k, s in full_sd.items()
              if not k.startswith("vision_model.") and not k.startswith("text_model.")]
    n_text = sum(1 for k in full_sd if k.startswith("text_model."))
    doc = {
        "generated_by": f"{GENERATOR} (transformers {__import__('transformers').__version__}); "
                        "CLIPVisionModel on the meta device from the openai/clip-vit-base-patch16 "
                        "vision config, published 'vision_model.' names",
        "config": VIT_B16_CONFIG,
        "parameters": n_params,
        "clip_model_text_tensors": n_text,
        "clip_model_other_tensors": others,
        "vision": names,
    }
    path = os.path.join(FIXTURE_DIR, "clip_vit_b16_names.json")
    with open(path, "w") as f:
        f.write("{\n")
        keys = list(doc)
        for i, key in enumerate(keys):
            value = doc[key]
            if key in ("vision", "clip_model_other_tensors"):
                f.write(f"  {json.dumps(key)}: [\n")
                for j, row in enumerate(value):
                    f.write("    " + json.dumps(row) + ("," if j + 1 < len(value) else "") + "\n")
                f.write("  ]")
            else:
                f.write(f"  {json.dumps(key)}: {json.dumps(value)}")
            f.write(",\n" if i + 1 < len(keys) else "\n")
        f.write("}\n")
    print(f"  wrote {os.path.relpath(path, ROOT)}  ({len(names)} tensors, {n_params:,} parameters; "
          f"CLIPModel adds {n_text} text tensors and {[k for k, _ in others]})")


def CLIPModel_meta():
    from transformers import CLIPModel

    return CLIPModel(CLIPConfig(text_config=VIT_B16_TEXT_CONFIG, vision_config=VIT_B16_CONFIG,
                                projection_dim=512))


# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def main():
    common.setup_determinism()
    print("gen_50_clip_vision: models/tiny-clip-vision and its fixtures")
    check_preprocess_against_torchvision()

    built = build_tiny()
    save_tiny(built)
    model = load_tiny()
    sa, sb = published_state_dict(built), published_state_dict(model)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    print(f"  reload: {len(sa)} tensors bit-identical")
    n_params = sum(v.numel() for v in sa.values())
    print(f"  tiny CLIPVisionModel: {n_params:,} parameters")
    direct = OpenAIVisionTransformer(model).eval()

    fixtures = {}
    # 512 x 512 -> 224: the reference's case. Channel 0 whole, all channels on PRE512_ROWS, and
    # per-channel mean and mean square (computed in float64) as a loose check of every value.
    img512 = hash_image(1, 512, 512, 1)
    pre512 = preprocess(img512, 224)
    fixtures["pre512_c0"] = pre512[0, 0]
    fixtures["pre512_rows"] = pre512[0][:, PRE512_ROWS, :]
    p64 = pre512[0].double().reshape(3, -1)
    fixtures["pre512_moments"] = torch.stack([p64.mean(1), (p64 * p64).mean(1)], dim=1).float()
    for name, batch, h, w, salt, size in SMALL_CASES:
        fixtures[f"pre_{name}"] = preprocess(hash_image(batch, h, w, salt), size)

    # The encoder: HF (the oracle) and the direct openai-style forward must agree.
    cases = [("512", hash_image(1, 512, 512, 1)),      # the reference's input size
             ("224", hash_image(2, 224, 224, 2)),      # no resize; batch of two
             ("300x200", hash_image(1, 300, 200, 3))]  # portrait: resize to 336x224, crop top 56
    for tag, img in cases:
        pixels = preprocess(img, 224)
        tokens = encode_hf(model, pixels)
        common.check_close(f"HF vs openai-style forward, {tag}", tokens, direct(pixels), atol=2e-6)
        assert tokens.shape == (img.shape[0], 197, 32)
        fixtures[f"tokens_{tag}"] = tokens

    path = common.save_fixture("tiny_clip_vision.safetensors", fixtures,
                               "CLIP vision tower (StyleDiffusion image encoder) on models/tiny-clip-vision",
                               generator=GENERATOR)
    assert os.path.getsize(path) < 600_000, os.path.getsize(path)

    write_vit_b16_names()
    print("gen_50_clip_vision: done")


if __name__ == "__main__":
    main()
