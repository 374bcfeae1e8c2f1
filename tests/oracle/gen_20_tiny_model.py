"""Build the tiny random-weight Stable Diffusion v1 model (models/tiny/).

The tiny model is the project's built-in default model: it has exactly the SD v1.x
module tree (4 down blocks: 3 CrossAttnDownBlock2D + DownBlock2D, a
UNetMidBlock2DCrossAttn, UpBlock2D + 3 CrossAttnUpBlock2D, layers_per_block 2,
so 16 self- and 16 cross-attention layers with 8 heads; a 4-stage AutoencoderKL
with an 8x spatial factor; a CLIP text transformer with the real 49408 vocabulary
and 77 positions) but with tiny widths, so that every code path of the C
implementation runs in milliseconds against numbers computed by diffusers.

Writes (diffusers layout; models/tiny/tokenizer/ belongs to gen_10 and is not touched):
  models/tiny/model_index.json
  models/tiny/unet/{config.json, diffusion_pytorch_model.safetensors}      (F16)
  models/tiny/vae/{config.json, diffusion_pytorch_model.safetensors}       (F16)
  models/tiny/text_encoder/{config.json, model.safetensors}                (F16)
  models/tiny/scheduler/scheduler_config.json
  configs/tiny/{unet,vae,text_encoder}.json   (copies of the three config.json)
and checks configs/sd-v1.5/*.json against the published parameter counts.

Weights: torch.manual_seed(s) then the library's default init (s = 0 UNet, 1 VAE,
2 text encoder); then every GroupNorm/LayerNorm gets weight 1 + 0.1*randn and bias
0.1*randn, and the text encoder's Linear biases (zero-initialised by transformers'
CLIP init) get 0.02*randn, so that every affine/bias path is exercised. Finally
every weight is rounded to fp16 and stored as F16. All fixtures are computed in
fp32 from these rounded weights.
"""

import copy
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import CONFIG_DIR, TINY_DIR  # noqa: E402

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

# ---------------------------------------------------------------------------
# Tiny configurations (SD v1 structure, tiny widths).
# ---------------------------------------------------------------------------
UNET_CONFIG = dict(
    # 32 (256 px) rather than SD's 64 (512 px): the built-in model's default image size. Its
    # 64x64 self-attention costs about as much as SD's on a CPU (8 heads, 4096 positions), so at
    # 512 px a demo would take minutes; the fixtures still exercise 64x64 latents explicitly.
    sample_size=32,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=8,
    norm_eps=1e-5,
    cross_attention_dim=32,
    # SD v1 semantics: diffusers reads attention_head_dim as the NUMBER of heads
    # (num_attention_heads = num_attention_heads or attention_head_dim), so this
    # is 8 heads of width C/8 = 4 (32 channels) or 8 (64 channels).
    attention_head_dim=8,
    use_linear_projection=False,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 16, 32, 32),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=8,
    sample_size=256,
    scaling_factor=common.SCALING_FACTOR,
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    projection_dim=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    bos_token_id=common.BOS_ID,
    eos_token_id=common.EOS_ID,
    pad_token_id=common.PAD_ID,
)

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# Published SD v1.5 parameter counts (diffusers / transformers, fp32 checkpoint).
SD15_PARAM_COUNTS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def perturb_affine(model, seed, linear_bias_std=0.0):
    """Give every norm layer a non-trivial affine part (and optionally every Linear
    a non-zero bias), from a private generator, in named_modules() order."""
    g = torch.Generator().manual_seed(seed)
    for _, mod in model.named_modules():
        if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            if mod.weight is not None:
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
            if mod.bias is not None:
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
        elif linear_bias_std > 0 and isinstance(mod, torch.nn.Linear) and mod.bias is not None:
            mod.bias.copy_(linear_bias_std * torch.randn(mod.bias.shape, generator=g))


@torch.no_grad()
def round_to_fp16(model):
    """Round every parameter to the nearest fp16 value, keep fp32 storage."""
    for p in model.parameters():
        p.copy_(p.half().float())
    return model


def zero_tensors(model):
    """Names of parameters that are identically zero (there should be none)."""
    return [n for n, p in model.named_parameters() if not p.detach().abs().any()]


def build_models():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    perturb_affine(unet, seed=1000)

    torch.manual_seed(1)
    vae = AutoencoderKL(**VAE_CONFIG)
    perturb_affine(vae, seed=1001)

    torch.manual_seed(2)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    perturb_affine(text, seed=1002, linear_bias_std=0.02)

    for m in (unet, vae, text):
        round_to_fp16(m.float().eval())
        zeros = zero_tensors(m)
        assert not zeros, f"{type(m).__name__}: all-zero parameters {zeros}"
    return unet, vae, text


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def save_text_encoder(text16, folder):
    """transformers 5 save_pretrained() writes CLIPTextModel keys without the
    "text_model." prefix (it strips it on load with a PrefixChange rule and does not
    add it back). Published SD v1.x checkpoints use "text_model.embeddings...", so
    write that naming ourselves; from_pretrained() accepts both. The non-persistent
    buffer text_model.embeddings.position_ids (present in old checkpoints) is not
    stored: positions are always 0..76."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    text16.config.architectures = ["CLIPTextModel"]
    text16.config.dtype = torch.float16  # what save_pretrained() would record
    text16.config.save_pretrained(folder)
    sd = {"text_model." + k: v.contiguous() for k, v in text16.state_dict().items()
          if not k.endswith("position_ids")}
    save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def save_models(unet, vae, text):
    os.makedirs(TINY_DIR, exist_ok=True)
    # Start from clean component folders (never the tokenizer folder).
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        shutil.rmtree(os.path.join(TINY_DIR, sub), ignore_errors=True)

    # Save in fp16 (F16 safetensors); deep copies so the fp32 models stay usable.
    copy.deepcopy(unet).half().save_pretrained(os.path.join(TINY_DIR, "unet"),
                                               safe_serialization=True)
    copy.deepcopy(vae).half().save_pretrained(os.path.join(TINY_DIR, "vae"),
                                              safe_serialization=True)
    save_text_encoder(copy.deepcopy(text).half(), os.path.join(TINY_DIR, "text_encoder"))
    common.ddim_scheduler().save_pretrained(os.path.join(TINY_DIR, "scheduler"))
    write_json(os.path.join(TINY_DIR, "model_index.json"), MODEL_INDEX)

    os.makedirs(os.path.join(CONFIG_DIR, "tiny"), exist_ok=True)
    for sub, name in (("unet", "unet"), ("vae", "vae"), ("text_encoder", "text_encoder")):
        shutil.copyfile(os.path.join(TINY_DIR, sub, "config.json"),
                        os.path.join(CONFIG_DIR, "tiny", name + ".json"))


@torch.no_grad()
def verify_reload(unet, vae, text):
    """Reload with from_pretrained: weights must be F16 on disk and bit-identical to
    the in-memory rounded model once upcast, and forwards must agree exactly."""
    from safetensors import safe_open

    for sub, fname in (("unet", "diffusion_pytorch_model.safetensors"),
                       ("vae", "diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "model.safetensors")):
        path = os.path.join(TINY_DIR, sub, fname)
        os.chmod(path, 0o644)  # save_pretrained creates 0600 files
        with safe_open(path, "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
            if sub == "text_encoder":
                assert all(k.startswith("text_model.") for k in f.keys())
        assert dtypes == {"F16"}, (sub, dtypes)

    u2, v2, t2 = common.load_tiny_unet(), common.load_tiny_vae(), common.load_tiny_text_encoder()
    for name, a, b in (("unet", unet, u2), ("vae", vae, v2), ("text_encoder", text, t2)):
        sa, sb = a.state_dict(), b.state_dict()
        sa = {k: v for k, v in sa.items() if not k.endswith("position_ids")}
        sb = {k: v for k, v in sb.items() if not k.endswith("position_ids")}
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert torch.equal(sa[k].float(), sb[k]), (name, k)
        print(f"  reload {name}: {len(sa)} tensors bit-identical")

    from diffusers.models.attention_processor import AttnProcessor
    unet.set_attn_processor(AttnProcessor())
    x = common.randn((1, 4, 16, 16), 1)
    c = common.randn((1, 77, 32), 2)
    common.check_close("reload unet forward", u2(x, 500, c).sample, unet(x, 500, c).sample)
    ids = torch.tensor([[common.BOS_ID] + [320, 2368] + [common.EOS_ID] * 74])
    text.config._attn_implementation = "eager"
    common.check_close("reload text forward", t2(ids).last_hidden_state,
                       text(ids).last_hidden_state, atol=1e-6)


def check_sd15_configs():
    """configs/sd-v1.5/*.json must instantiate and give the published parameter counts."""
    with torch.device("meta"):
        u = UNet2DConditionModel.from_config(
            json.load(open(os.path.join(CONFIG_DIR, "sd-v1.5", "unet.json"))))
        v = AutoencoderKL.from_config(
            json.load(open(os.path.join(CONFIG_DIR, "sd-v1.5", "vae.json"))))
        t = CLIPTextModel(CLIPTextConfig.from_json_file(
            os.path.join(CONFIG_DIR, "sd-v1.5", "text_encoder.json")))
    for name, m in (("unet", u), ("vae", v), ("text_encoder", t)):
        n = n_params(m)
        print(f"  sd-v1.5 {name:<12s} {n:>13,d} parameters")
        assert n == SD15_PARAM_COUNTS[name], (name, n)


def main():
    common.setup_determinism()
    print("gen_20_tiny_model: building models/tiny")
    unet, vae, text = build_models()
    for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        print(f"  tiny {name:<12s} {n_params(m):>10,d} parameters")
    save_models(unet, vae, text)
    verify_reload(unet, vae, text)
    check_sd15_configs()
    print("gen_20_tiny_model: done")


if __name__ == "__main__":
    main()
