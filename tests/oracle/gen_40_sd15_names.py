#!/usr/bin/env python3
"""gen_40_sd15_names.py: the tensor names and shapes of Stable Diffusion v1.5, in both layouts.

Writes (run from the repository root with the project venv; CI never runs this, the outputs are
committed):

  tests/fixtures/sd15_names_diffusers.json
      {"unet": [[name, shape], ...], "vae": [...], "text": [...]}
      Every parameter of the full SD v1.5 UNet2DConditionModel, AutoencoderKL and CLIPTextModel as
      diffusers / transformers name them, in module order. The models are built on the meta device
      (accelerate.init_empty_weights), so nothing is allocated. Text names carry the "text_model."
      level that every published SD v1.x text_encoder/model.safetensors has; transformers >= 5.6
      dropped that level from CLIPTextModel's own state_dict, so it is added back here (the C loader
      accepts both spellings and normalises to "text_model.*").

  tests/fixtures/sd15_names_ldm.json
      {"tensors": [[ldm_name, ldm_shape, part, diffusers_name], ...],
       "ignored": [[ldm_name, shape, dtype], ...]}
      The same tensors under the names of the original single-file (LDM / CompVis) checkpoint, and
      the extra entries real single files carry that a loader must skip (EMA copies, the DDPM
      schedule buffers, the CLIP position_ids buffer).

  tests/fixtures/tiny_ldm_names.json
      {"unet": [[diffusers_name, ldm_name, ldm_shape], ...], "vae": [...], "text": [...]}
      The LDM name of every tensor of the tiny test model (models/tiny/, built by gen_20_tiny_model.py)
      from configs/tiny/{unet,vae,text_encoder}.json when present, otherwise from the same tiny
      configs defined below.

The LDM names come from an inverse mapping written here (diffusers -> LDM). It is validated with
diffusers' own single-file converters: the LDM-named dict (meta tensors of the LDM shapes, plus the
ignorable extras) is converted back with convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint /
convert_ldm_clip_checkpoint, and the result must be exactly the diffusers names and shapes, and
must load into the real modules with strict=True.
"""
import json
import os
import sys

import accelerate
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

# The published runwayml/stable-diffusion-v1-5 (and CompVis v1-4) config.json contents; the same as
# configs/sd-v1.5/*.json, which main() checks.
SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}
SD15_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_TEXT_CONFIG = {
    "_name_or_path": "openai/clip-vit-large-patch14",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": "4.22.0.dev0",
    "vocab_size": 49408,
}

# The tiny test model (see the brief for models/tiny/); used only when configs/tiny/ is absent.
TINY_UNET_CONFIG = {
    "attention_head_dim": 8,
    "block_out_channels": [32, 32, 64, 64],
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "sample_size": 8,
}
TINY_VAE_CONFIG = {
    "block_out_channels": [16, 16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
TINY_TEXT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
}


def model_kwargs(config):
    """A config.json dict without the bookkeeping keys, ready for the model constructor."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_models(unet_cfg, vae_cfg, text_cfg):
    """The three models on the meta device; returns {part: (module, [(name, shape)])}."""
    with accelerate.init_empty_weights():
        unet = UNet2DConditionModel(**model_kwargs(unet_cfg))
        vae = AutoencoderKL(**model_kwargs(vae_cfg))
        text_keys = {"architectures", "torch_dtype", "transformers_version", "model_type"}
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in model_kwargs(text_cfg).items()
                                               if k not in text_keys and k != "dtype"}))
    out = {}
    for part, module in (("unet", unet), ("vae", vae), ("text", text)):
        names = []
        for name, tensor in module.state_dict().items():
            if part == "text" and not name.startswith("text_model."):
                name = "text_model." + name  # the layout of every published SD v1.x checkpoint
            names.append((name, list(tensor.shape)))
        out[part] = (module, names)
    return out


# ------------------------------------------------------------------------------------------------
# Inverse mapping: diffusers name -> LDM single-file name (and LDM shape).
# ------------------------------------------------------------------------------------------------

UNET_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_name_to_ldm(name, cfg):
    """diffusers UNet name -> LDM name (without the model.diffusion_model. prefix)."""
    per_block = cfg["layers_per_block"] + 1  # resnets (+ attentions) + the resampler slot
    up_has_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    p = name.split(".")
    simple = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0",
              "conv_out": "out.2"}
    for head, ldm in simple.items():
        if name.startswith(head + ".") and name.count(".") == head.count(".") + 1:
            return ldm + "." + p[-1]
    if p[0] == "down_blocks":
        i, kind = int(p[1]), p[2]
        if kind == "resnets":
            j = int(p[3])
            return f"input_blocks.{1 + i * per_block + j}.0.{UNET_RESNET_TO_LDM[p[4]]}.{p[5]}"
        if kind == "attentions":
            j = int(p[3])
            return f"input_blocks.{1 + i * per_block + j}.1." + ".".join(p[4:])
        if kind == "downsamplers":
            assert p[3] == "0" and p[4] == "conv"
            return f"input_blocks.{1 + i * per_block + per_block - 1}.0.op.{p[5]}"
    if p[0] == "mid_block":
        if p[1] == "resnets":
            return f"middle_block.{2 * int(p[2])}.{UNET_RESNET_TO_LDM[p[3]]}.{p[4]}"
        if p[1] == "attentions":
            assert p[2] == "0"
            return "middle_block.1." + ".".join(p[3:])
    if p[0] == "up_blocks":
        i, kind = int(p[1]), p[2]
        if kind == "resnets":
            j = int(p[3])
            return f"output_blocks.{i * per_block + j}.0.{UNET_RESNET_TO_LDM[p[4]]}.{p[5]}"
        if kind == "attentions":
            j = int(p[3])
            return f"output_blocks.{i * per_block + j}.1." + ".".join(p[4:])
        if kind == "upsamplers":
            assert p[3] == "0" and p[4] == "conv"
            slot = 2 if up_has_attn[i] else 1
            return f"output_blocks.{i * per_block + per_block - 1}.{slot}.conv.{p[5]}"
    raise ValueError(f"no LDM name for UNet tensor {name}")


def vae_name_to_ldm(name, shape, cfg):
    """diffusers VAE name -> (LDM name without first_stage_model., LDM shape)."""
    n_blocks = len(cfg["block_out_channels"])
    p = name.split(".")
    coder = p[0]  # encoder / decoder, or quant_conv / post_quant_conv
    if coder in ("quant_conv", "post_quant_conv"):
        return name, shape
    rest = p[1:]
    if rest[0] in ("conv_in", "conv_out"):
        return name, shape
    if rest[0] == "conv_norm_out":
        return f"{coder}.norm_out.{rest[1]}", shape
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{coder}.mid.block_{int(rest[2]) + 1}.{rest[3]}.{rest[4]}", shape
        if rest[1] == "attentions":
            assert rest[2] == "0"
            layer = ".".join(rest[3:-1])
            ldm_shape = shape
            if layer != "group_norm" and rest[-1] == "weight":
                ldm_shape = shape + [1, 1]  # LDM keeps these as 1x1 convs
            return f"{coder}.mid.attn_1.{VAE_ATTN_TO_LDM[layer]}.{rest[-1]}", ldm_shape
    if rest[0] in ("down_blocks", "up_blocks"):
        i = int(rest[1])
        ldm_block = i if rest[0] == "down_blocks" else n_blocks - 1 - i  # decoder order is reversed
        stage = "down" if rest[0] == "down_blocks" else "up"
        if rest[2] == "resnets":
            layer = "nin_shortcut" if rest[4] == "conv_shortcut" else rest[4]
            return f"{coder}.{stage}.{ldm_block}.block.{rest[3]}.{layer}.{rest[5]}", shape
        if rest[2] in ("downsamplers", "upsamplers"):
            sampler = "downsample" if rest[2] == "downsamplers" else "upsample"
            return f"{coder}.{stage}.{ldm_block}.{sampler}.conv.{rest[5]}", shape
    raise ValueError(f"no LDM name for VAE tensor {name}")


def text_name_to_ldm(name):
    assert name.startswith("text_model.")
    return name  # cond_stage_model.transformer.text_model.* in SD v1 single files


def ldm_layout(models, unet_cfg, vae_cfg):
    """[(part, diffusers_name, diffusers_shape, ldm_name_with_prefix, ldm_shape)]"""
    rows = []
    for name, shape in models["unet"][1]:
        rows.append(("unet", name, shape, UNET_PREFIX + unet_name_to_ldm(name, unet_cfg), shape))
    for name, shape in models["vae"][1]:
        ldm, ldm_shape = vae_name_to_ldm(name, shape, vae_cfg)
        rows.append(("vae", name, shape, VAE_PREFIX + ldm, ldm_shape))
    for name, shape in models["text"][1]:
        rows.append(("text", name, shape, TEXT_PREFIX + text_name_to_ldm(name), shape))
    return rows


def ignored_extras(rows):
    """Entries real SD v1.x single files carry besides the three models: (name, shape, dtype)."""
    extras = []
    # The DDPM schedule buffers of ldm.models.diffusion.ddpm.DDPM (1000 training timesteps).
    for buf in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        extras.append((buf, [1000], "F32"))
    extras.append(("model_ema.decay", [], "F32"))
    extras.append(("model_ema.num_updates", [], "I32"))
    # The EMA copy of the UNet in non-pruned checkpoints: LitEma flattens the names by deleting
    # every dot after "model." (diffusers' convert_ldm_unet_checkpoint builds them the same way).
    for part, _, _, ldm, ldm_shape in rows:
        if part == "unet":
            extras.append(("model_ema." + "".join(ldm.split(".")[1:]), ldm_shape, "F32"))
    # transformers < 4.31 saved CLIP's position_ids buffer.
    extras.append((TEXT_PREFIX + "text_model.embeddings.position_ids", [1, 77], "I64"))
    return extras


# ------------------------------------------------------------------------------------------------
# Validation with diffusers' converters.
# ------------------------------------------------------------------------------------------------

def meta(shape, dtype="F32"):
    torch_dtype = {"F32": torch.float32, "I32": torch.int32, "I64": torch.int64}[dtype]
    return torch.empty(shape, dtype=torch_dtype, device="meta")


def check_same(part, converted, expected):
    got = {k: list(v.shape) for k, v in converted.items()}
    want = dict(expected)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or extra or wrong:
        sys.exit(f"{part}: inverse mapping disagrees with diffusers: missing {missing[:5]}, "
                 f"extra {extra[:5]}, wrong shape {[(k, got[k], want[k]) for k in wrong[:5]]}")


def validate(models, rows, extras, unet_cfg, vae_cfg):
    checkpoint = {ldm: meta(shape) for _, _, _, ldm, shape in rows}
    for name, shape, dtype in extras:
        checkpoint[name] = meta(shape, dtype)
    assert len(checkpoint) == len(rows) + len(extras), "LDM names collide"

    unet_module, unet_names = models["unet"]
    unet = sfu.convert_ldm_unet_checkpoint(checkpoint, dict(unet_module.config))
    check_same("unet", unet, unet_names)

    vae_module, vae_names = models["vae"]
    vae_config = dict(vae_module.config)
    vae = sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config)
    check_same("vae", vae, vae_names)

    text_module, text_names = models["text"]
    text = sfu.convert_ldm_clip_checkpoint(checkpoint)
    # The converter keeps every cond_stage_model.transformer.* key; position_ids is a buffer that
    # diffusers then drops when it loads the dict. It must be the only extra.
    assert "text_model.embeddings.position_ids" in text
    del text["text_model.embeddings.position_ids"]
    check_same("text", text, text_names)

    # And the converted dicts load into the real modules with every name and shape matching.
    unet_module.load_state_dict(unet, strict=True, assign=True)
    vae_module.load_state_dict(vae, strict=True, assign=True)
    flat = not hasattr(text_module, "text_model")
    text_module.load_state_dict({(k[len("text_model."):] if flat else k): v for k, v in text.items()},
                                strict=True, assign=True)


def read_config(path, fallback):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f), os.path.relpath(path, ROOT)
    return dict(fallback), "gen_40_sd15_names.py built-in tiny config"


def dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # One entry per line: readable, diffable, and small enough for cJSON.
    with open(path, "w") as f:
        f.write("{\n")
        keys = list(obj.keys())
        for ki, key in enumerate(keys):
            value = obj[key]
            if isinstance(value, list):
                f.write(f"  {json.dumps(key)}: [\n")
                for i, row in enumerate(value):
                    f.write("    " + json.dumps(row) + ("," if i + 1 < len(value) else "") + "\n")
                f.write("  ]")
            else:
                f.write(f"  {json.dumps(key)}: {json.dumps(value)}")
            f.write(",\n" if ki + 1 < len(keys) else "\n")
        f.write("}\n")
    print(f"wrote {os.path.relpath(path, ROOT)}")


def main():
    torch.manual_seed(0)
    # SD v1.5, full size. The committed configs/sd-v1.5/*.json must say the same.
    for part, cfg in (("unet", SD15_UNET_CONFIG), ("vae", SD15_VAE_CONFIG),
                      ("text_encoder", SD15_TEXT_CONFIG)):
        path = os.path.join(ROOT, "configs", "sd-v1.5", part + ".json")
        if os.path.exists(path):
            with open(path) as f:
                if json.load(f) != cfg:
                    sys.exit(f"{path} differs from the SD v1.5 config in this script")
    models = build_models(SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_CONFIG)
    rows = ldm_layout(models, SD15_UNET_CONFIG, SD15_VAE_CONFIG)
    extras = ignored_extras(rows)
    validate(models, rows, extras, SD15_UNET_CONFIG, SD15_VAE_CONFIG)

    note = ("generated by tests/oracle/gen_40_sd15_names.py (diffusers %s, transformers %s); "
            "LDM names validated with diffusers' convert_ldm_*_checkpoint"
            % (__import__("diffusers").__version__, __import__("transformers").__version__))
    dump(os.path.join(FIXTURES, "sd15_names_diffusers.json"),
         {"generated_by": note, "unet": models["unet"][1], "vae": models["vae"][1],
          "text": models["text"][1]})
    dump(os.path.join(FIXTURES, "sd15_names_ldm.json"),
         {"generated_by": note,
          "tensors": [[ldm, ldm_shape, part, name] for part, name, _, ldm, ldm_shape in rows],
          "ignored": [list(e) for e in extras]})
    # The tiny model.
    tiny_dir = os.path.join(ROOT, "configs", "tiny")
    unet_cfg, unet_src = read_config(os.path.join(tiny_dir, "unet.json"), TINY_UNET_CONFIG)
    vae_cfg, vae_src = read_config(os.path.join(tiny_dir, "vae.json"), TINY_VAE_CONFIG)
    text_cfg, text_src = read_config(os.path.join(tiny_dir, "text_encoder.json"), TINY_TEXT_CONFIG)
    tiny = build_models(unet_cfg, vae_cfg, text_cfg)
    tiny_rows = ldm_layout(tiny, unet_cfg, vae_cfg)
    validate(tiny, tiny_rows, ignored_extras(tiny_rows), unet_cfg, vae_cfg)
    out = {"generated_by": note, "configs": [unet_src, vae_src, text_src]}
    for part in ("unet", "vae", "text"):
        out[part] = [[name, ldm, ldm_shape] for p, name, _, ldm, ldm_shape in tiny_rows if p == part]
    dump(os.path.join(FIXTURES, "tiny_ldm_names.json"), out)
    print(f"sd15: unet {len(models['unet'][1])}, vae {len(models['vae'][1])}, "
          f"text {len(models['text'][1])} tensors, {len(extras)} ignorable extras; "
          f"tiny: {len(tiny_rows)} tensors")


if __name__ == "__main__":
    main()
