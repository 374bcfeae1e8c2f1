"""The two model-based editing metrics of stylediffusion.md §6 on tiny random-weight models.

Writes
  models/tiny-clip/            a tiny transformers CLIPModel (config.json, model.safetensors, F16):
                               text hidden 8 (the real 49408-token vocabulary, so its tokenizer is
                               models/tiny/tokenizer), vision hidden 32 / patch 16 / image_size 224,
                               projection_dim 16, the openai configs' eos_token_id 2
  models/tiny-dino/            a tiny transformers ViTModel in facebook/dino-vitb8's layout
                               (config.json, model.safetensors, F16): hidden 32, 2 layers, 4 heads,
                               patch 8, image_size 32 (a 4x4 position grid, so every real input
                               interpolates it), qkv_bias, gelu, layer_norm_eps 1e-12
  tests/fixtures/eval_*.png    the test images (real photos from ../shared/data/images, made small
                               with PIL): clip_a 96x72, clip_b 60x80, struct_src/struct_edit 80x60,
                               struct_wide 150x40
  tests/fixtures/eval_models.safetensors   the expected values, each from the real library code:

CLIPScore (torchmetrics 1.9 functional/multimodal/clip_score.py, with transformers' PIL-backend
CLIPImageProcessor at its real size 224 and CLIPModel.get_image_features / get_text_features):
  clip_pixels_a_rows      CLIPProcessor(eval_clip_a.png) channel 0 rows 0, 1, 111, 223  (4, 224)
  clip_image_features     get_image_features of clip_a, clip_b                           (2, 16)
  clip_text_ids_<i>       the ids torchmetrics feeds for caption i (I64)
  clip_text_features      get_text_features of the 3 captions                            (3, 16)
  clip_cosine             cos of the pairs (a, caption 0), (b, caption 1), (a, caption 2)  (3,)
  clip_score_torchmetrics 100·max(cos, 0) per pair (torchmetrics' clip_score of that pair)  (3,)
  clip_score_hessel       2.5·max(cos, 0) per pair                                          (3,)
  clip_score_mean_torchmetrics   torchmetrics CLIPScore over the first two pairs (clamps the mean)
  clip_score_mean_hessel         mean of the first two pairs' Hessel scores
Captions: two short ones and one of 80 tokens, which torchmetrics cuts to 77 ids without EOS.

Structure-dist (Splice's LossG.calculate_global_ssim_loss on transformers' ViTModel with
interpolate_pos_encoding=True; keys hooked from the last layer's attention.attention.key):
  struct_pixels_src_rows  Resize(224, max_size=480) + ToTensor + ImageNet Normalize of
                          struct_src, channel 0 rows 0, 100, 223                  (3, 298)
  struct_keys_src         last-layer keys of struct_src                           (1037, 32)
  struct_sim_rows_src / _edit   self-similarity rows 0, 1, 500, 1036              (4, 1037)
  struct_sim_diag_src     the diagonal of S(src)                                  (1037,)
  struct_dist             mean((S(edit) - S(src))²)                               (1,)
  struct_keys_wide_rows   keys of struct_wide (150x40 -> 480x128, the max_size branch) rows
                          0..7 and the last 8                                     (16, 32)
  struct_wide_tokens      its token count (I64)

Preprocessing note: transformers 5's default CLIPImageProcessor is the torchvision backend; the
reference here is the PIL backend (CLIPImageProcessorPil, transformers 4.x's default and what
torchmetrics' CLIPScore ran with; torchmetrics 1.9 does not run with transformers 5, whose
get_*_features return output objects). The script prints how far the torchvision backend's
features are from the PIL ones.

torchmetrics itself is used when importable (installed with
`pip install --target .venv/torchmetrics-reference --no-deps torchmetrics==1.9.0 lightning-utilities`);
otherwise its arithmetic, copied below, is used alone.
"""
import json
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

GENERATOR = "tests/oracle/gen_eval_models.py"
ROOT = common.ROOT
CLIP_DIR = os.path.join(ROOT, "models", "tiny-clip")
DINO_DIR = os.path.join(ROOT, "models", "tiny-dino")
TOKENIZER_DIR = os.path.join(ROOT, "models", "tiny", "tokenizer")
IMAGES = os.path.join(ROOT, "..", "shared", "data", "images")
if not os.path.isdir(IMAGES):
    IMAGES = os.path.join(ROOT, "data", "images")

TM_REF = os.path.join(ROOT, ".venv", "torchmetrics-reference")
if os.path.isdir(TM_REF):
    sys.path.insert(0, TM_REF)

CLIP_CONFIG = {
    "architectures": ["CLIPModel"],
    "model_type": "clip",
    "projection_dim": 16,
    "logit_scale_init_value": 2.6592,
    "text_config": {
        "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "projection_dim": 16,
        # openai/clip-vit-large-patch14's published ids: eos 2 selects transformers' argmax rule
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    },
    "vision_config": {
        "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_channels": 3, "image_size": 224,
        "patch_size": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "projection_dim": 16,
    },
}

DINO_CONFIG = {
    "architectures": ["ViTModel"],
    "model_type": "vit",
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_channels": 3, "image_size": 32, "patch_size": 8, "qkv_bias": True,
    "hidden_act": "gelu", "layer_norm_eps": 1e-12,
}

CAPTIONS = [
    "a photo of an astronaut",
    "a cup of coffee on a table",
    # 80 tokens: torchmetrics cuts the ids to 77, dropping the EOS
    " ".join(["cat"] * 80),
]
PAIRS = [(0, 0), (1, 1), (0, 2)]  # (image, caption)
SIM_ROWS = [0, 1, 500, 1036]


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------

def write_images():
    from PIL import Image, ImageFilter

    def small(name, size):
        return Image.open(os.path.join(IMAGES, name)).convert("RGB").resize(size, Image.BICUBIC)

    out = {
        "clip_a": small("astronaut.png", (96, 72)),
        "clip_b": small("coffee.png", (60, 80)),
        "struct_src": small("chelsea.png", (80, 60)),
        # an "edit": the same cat, blurred and with its colours shifted
        "struct_edit": Image.eval(small("chelsea.png", (80, 60)).filter(ImageFilter.GaussianBlur(2)),
                                  lambda v: min(255, v + 40)),
        "struct_wide": small("coffee.png", (150, 40)),
    }
    for name, img in out.items():
        path = os.path.join(common.FIXTURE_DIR, f"eval_{name}.png")
        img.save(path)
        os.chmod(path, 0o644)
    # read back, as the C side will
    return {k: Image.open(os.path.join(common.FIXTURE_DIR, f"eval_{k}.png")).convert("RGB") for k in out}


def to_uint8_chw(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

def randomise_norms_and_biases(model, seed):
    """LayerNorm weight 1 + 0.1·randn, bias 0.1·randn; Linear/conv biases 0.02·randn (zero biases would
    hide a missing bias add); everything rounded to fp16 so the F16 file is exact."""
    g = torch.Generator().manual_seed(seed)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.LayerNorm):
            mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
            mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
        elif isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
            mod.bias.copy_(0.02 * torch.randn(mod.bias.shape, generator=g))
    for p in model.parameters():
        p.copy_(p.half().float())
    zeros = [n for n, p in model.named_parameters() if not p.abs().any()]
    assert not zeros, f"all-zero parameters {zeros}"


# transformers 5 names its ViT modules differently from the published checkpoints: its
# conversion_mapping.py renames hub names on load ("encoder.layer." -> "layers.", ...). The tiny DINO
# is written under the hub's names (what facebook/dino-vitb8 holds), i.e. that mapping inverted.
V5_TO_HUB_VIT = [
    (r"^layers\.", "encoder.layer."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def hub_vit_name(name):
    import re

    for pattern, repl in V5_TO_HUB_VIT:
        name = re.sub(pattern, repl, name)
    return name


def save_model(model, folder, config, rename=None):
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    sd = {(rename(k) if rename else k): v.half().contiguous()
          for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    path = os.path.join(folder, "model.safetensors")
    save_file(sd, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)
    print(f"  wrote {os.path.relpath(path, ROOT)}  ({os.path.getsize(path):,} bytes, {len(sd)} tensors)")
    return sd


@torch.no_grad()
def build_clip():
    from transformers import CLIPConfig, CLIPModel

    # Seed 8 gives the pairs cosines of both signs (-0.18, 0.52, -0.15), so the clamp and the two
    # ways of averaging (clamp the mean / mean of clamped) are both exercised.
    torch.manual_seed(8)
    keys = {k: v for k, v in CLIP_CONFIG.items() if k not in ("architectures", "model_type")}
    model = CLIPModel(CLIPConfig(**keys)).float().eval()
    randomise_norms_and_biases(model, 1008)
    sd = save_model(model, CLIP_DIR, CLIP_CONFIG)
    assert "visual_projection.weight" in sd and "text_projection.weight" in sd
    assert any(k.startswith("text_model.") for k in sd) and any(k.startswith("vision_model.") for k in sd)
    loaded = CLIPModel.from_pretrained(CLIP_DIR, dtype=torch.float32, attn_implementation="eager").eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.text_model.eos_token_id == 2
    return loaded


@torch.no_grad()
def build_dino():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(6)
    keys = {k: v for k, v in DINO_CONFIG.items() if k not in ("architectures", "model_type")}
    model = ViTModel(ViTConfig(**keys), add_pooling_layer=False).float().eval()
    randomise_norms_and_biases(model, 1006)
    with torch.no_grad():  # a visible class token and position table (ViT initialises them small)
        g = torch.Generator().manual_seed(1106)
        model.embeddings.cls_token.copy_(torch.randn(model.embeddings.cls_token.shape, generator=g).half().float())
        model.embeddings.position_embeddings.copy_(
            torch.randn(model.embeddings.position_embeddings.shape, generator=g).half().float())
    sd = save_model(model, DINO_DIR, DINO_CONFIG, rename=hub_vit_name)
    assert "embeddings.cls_token" in sd and "encoder.layer.1.attention.attention.key.weight" in sd, list(sd)
    assert "encoder.layer.0.output.dense.weight" in sd and "encoder.layer.0.intermediate.dense.bias" in sd
    loaded = ViTModel.from_pretrained(DINO_DIR, dtype=torch.float32, attn_implementation="eager",
                                      add_pooling_layer=False).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    return loaded


# ------------------------------------------------------------------------------------------------
# CLIPScore
# ------------------------------------------------------------------------------------------------

class FeaturesAsTensors(nn.Module):
    """transformers 5's get_*_features return output objects; torchmetrics 1.9 expects tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    def get_text_features(self, input_ids, attention_mask=None):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def processor_pil():
    from transformers import CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR))


def processor_torchvision():
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    return CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR))


def torchmetrics_ids(processor, caption, limit):
    """torchmetrics' _get_features text branch: processor(padding=True), then cut to max positions."""
    ids = processor(text=[caption], return_tensors="pt", padding=True)["input_ids"]
    return ids[..., :limit]


@torch.no_grad()
def clip_fixtures(model, images, fixtures):
    proc = processor_pil()
    limit = model.config.text_config.max_position_embeddings
    wrapped = FeaturesAsTensors(model)

    pix = {k: proc(images=[to_uint8_chw(images[k])], return_tensors="pt")["pixel_values"] for k in ("clip_a", "clip_b")}
    assert pix["clip_a"].shape == (1, 3, 224, 224)
    fixtures["clip_pixels_a_rows"] = pix["clip_a"][0, 0, [0, 1, 111, 223]]
    img_feats = torch.cat([wrapped.get_image_features(pix[k]) for k in ("clip_a", "clip_b")])
    fixtures["clip_image_features"] = img_feats

    txt_feats, txt_feats_new_eos = [], []
    for i, caption in enumerate(CAPTIONS):
        ids = torchmetrics_ids(proc, caption, limit)
        fixtures[f"clip_text_ids_{i}"] = ids[0].to(torch.int64)
        txt_feats.append(wrapped.get_text_features(ids, torch.ones_like(ids)))
        model.text_model.eos_token_id = 49407
        txt_feats_new_eos.append(wrapped.get_text_features(ids, torch.ones_like(ids)))
        model.text_model.eos_token_id = 2
    assert fixtures["clip_text_ids_2"].numel() == 77 and 49407 not in fixtures["clip_text_ids_2"].tolist()
    fixtures["clip_text_features"] = torch.cat(txt_feats)
    # The two pooling rules pick the same row for every id sequence the CLIP tokenizer makes: with the
    # EOS present it is the first maximum, without it (the cut caption) argmax finds the BOS (49406,
    # larger than every text token) and the first-EOS rule falls back to position 0, the BOS too.
    assert torch.equal(fixtures["clip_text_features"], torch.cat(txt_feats_new_eos))

    # torchmetrics' arithmetic (_clip_score_update, clip_score)
    def tm_cos(i, t):
        a = img_feats[i:i + 1] / img_feats[i:i + 1].norm(p=2, dim=-1, keepdim=True)
        b = txt_feats[t] / txt_feats[t].norm(p=2, dim=-1, keepdim=True)
        return (a * b).sum(axis=-1)

    cos = torch.cat([tm_cos(i, t) for i, t in PAIRS])
    fixtures["clip_cosine"] = cos
    fixtures["clip_score_torchmetrics"] = torch.clamp(100 * cos, min=0)
    fixtures["clip_score_hessel"] = 2.5 * torch.clamp(cos, min=0)
    mean_tm = torch.clamp((100 * cos[:2]).sum() / 2, min=0)
    fixtures["clip_score_mean_torchmetrics"] = mean_tm.reshape(1)
    fixtures["clip_score_mean_hessel"] = fixtures["clip_score_hessel"][:2].mean().reshape(1)
    print(f"  cosines {cos.tolist()}")

    # torchmetrics itself, when installed, on the same model and processor
    try:
        from torchmetrics.functional.multimodal.clip_score import clip_score
        from torchmetrics.multimodal.clip_score import CLIPScore
    except ImportError as e:
        print(f"  torchmetrics not importable ({e}): its arithmetic above is used alone")
        return
    loader = lambda: (wrapped, proc)  # noqa: E731
    for k, (i, t) in enumerate(PAIRS):
        img = to_uint8_chw(images[("clip_a", "clip_b")[i]])
        got = clip_score(img, CAPTIONS[t], loader)
        common.check_close(f"torchmetrics clip_score pair {k}", got.reshape(1),
                           fixtures["clip_score_torchmetrics"][k:k + 1], atol=1e-5)
    metric = CLIPScore(model_name_or_path=loader)
    metric.update([to_uint8_chw(images["clip_a"]), to_uint8_chw(images["clip_b"])], CAPTIONS[:2])
    common.check_close("torchmetrics CLIPScore over 2 pairs", metric.compute().reshape(1), mean_tm.reshape(1),
                       atol=1e-5)

    # how far transformers 5's default (torchvision) image processor is from the PIL one
    tv = processor_torchvision()
    for k in ("clip_a", "clip_b"):
        p = tv(images=[to_uint8_chw(images[k])], return_tensors="pt")["pixel_values"]
        f = wrapped.get_image_features(p)
        ref = img_feats[0 if k == "clip_a" else 1]
        print(f"  note: torchvision-backend CLIPImageProcessor vs PIL on {k}: pixels max|diff| "
              f"{(p - pix[k]).abs().max():.3e}, features max rel diff "
              f"{((f[0] - ref).abs().max() / ref.abs().max()):.3e}")


# ------------------------------------------------------------------------------------------------
# Structure-dist
# ------------------------------------------------------------------------------------------------

def structure_transform():
    import torchvision.transforms as T

    return T.Compose([T.Resize(224, max_size=480), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def attn_cosine_sim(x, eps=1e-08):
    """Splice util/util.py."""
    x = x[0]
    norm1 = x.norm(dim=2, keepdim=True)
    factor = torch.clamp(norm1 @ norm1.permute(0, 2, 1), min=eps)
    return (x @ x.permute(0, 2, 1)) / factor


@torch.no_grad()
def last_layer_keys(model, pixels):
    """The key projection of the last layer (k_proj, the hub's attention.attention.key, on layernorm_before(h))."""
    captured = {}
    hook = model.layers[-1].attention.k_proj.register_forward_hook(  # hub name: attention.attention.key
        lambda mod, inp, out: captured.__setitem__("k", out))
    model(pixel_values=pixels, interpolate_pos_encoding=True)
    hook.remove()
    return captured["k"]  # (1, T, D): heads side by side, as Splice concatenates them


@torch.no_grad()
def structure_fixtures(model, images, fixtures):
    tf = structure_transform()
    pix = {k: tf(images[k])[None] for k in ("struct_src", "struct_edit", "struct_wide")}
    assert pix["struct_src"].shape == (1, 3, 224, 298), pix["struct_src"].shape
    assert pix["struct_wide"].shape == (1, 3, 128, 480), pix["struct_wide"].shape
    fixtures["struct_pixels_src_rows"] = pix["struct_src"][0, 0, [0, 100, 223]]

    keys = {k: last_layer_keys(model, p) for k, p in pix.items()}
    sims = {k: attn_cosine_sim(keys[k][None]) [0] for k in ("struct_src", "struct_edit")}  # (T, T)
    T_ = keys["struct_src"].shape[1]
    assert T_ == 1 + 28 * 37 == 1037
    fixtures["struct_keys_src"] = keys["struct_src"][0]
    fixtures["struct_sim_rows_src"] = sims["struct_src"][SIM_ROWS]
    fixtures["struct_sim_rows_edit"] = sims["struct_edit"][SIM_ROWS]
    fixtures["struct_sim_diag_src"] = torch.diagonal(sims["struct_src"]).contiguous()
    dist = torch.nn.functional.mse_loss(sims["struct_edit"], sims["struct_src"])
    fixtures["struct_dist"] = dist.reshape(1)
    kw = keys["struct_wide"][0]
    fixtures["struct_keys_wide_rows"] = torch.cat([kw[:8], kw[-8:]])
    fixtures["struct_wide_tokens"] = torch.tensor([kw.shape[0]], dtype=torch.int64)
    print(f"  structure-dist {dist.item():.6g}; S(src) mean {sims['struct_src'].mean():.4f}; "
          f"wide image {kw.shape[0]} tokens")


# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def main():
    common.setup_determinism()
    print("gen_eval_models: models/tiny-clip, models/tiny-dino and tests/fixtures/eval_models.safetensors")
    images = write_images()
    clip = build_clip()
    dino = build_dino()
    fixtures = {}
    clip_fixtures(clip, images, fixtures)
    structure_fixtures(dino, images, fixtures)
    path = common.save_fixture("eval_models.safetensors", fixtures,
                               "CLIPScore and Structure-dist on models/tiny-clip and models/tiny-dino",
                               generator=GENERATOR)
    assert os.path.getsize(path) < 400_000, os.path.getsize(path)
    print("gen_eval_models: done")


if __name__ == "__main__":
    main()
