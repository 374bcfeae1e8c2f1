"""Shared helpers for the PyTorch oracle scripts (tests/oracle/gen_*.py).

Everything here exists to make the generated files deterministic and to keep the
numerics identical to the reference (StyleDiffusion / Prompt-to-Prompt run SD v1.x
in fp32 with an explicit softmax attention, see docs in tests/oracle/README.md):

  * CPU only, fp32, one intra-op thread, torch.use_deterministic_algorithms(True);
  * every random input comes from its own seeded torch.Generator, so adding a new
    fixture never shifts the values of the existing ones;
  * attention uses diffusers' explicit AttnProcessor (softmax(QK^T * scale) V),
    never SDPA / xformers;
  * the text encoder uses transformers' "eager" attention.
"""

import os
import sys

import torch
from safetensors.torch import save_file

# Repository root (this file lives in <root>/tests/oracle/).
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY_DIR = os.path.join(ROOT, "models", "tiny")
FIXTURE_DIR = os.path.join(ROOT, "tests", "fixtures")
CONFIG_DIR = os.path.join(ROOT, "configs")

# SD v1 constants (stylediffusion.md §1.2-§1.4).
SCALING_FACTOR = 0.18215
BOS_ID = 49406
EOS_ID = 49407
PAD_ID = 49407  # SD v1.4/v1.5 pad with <|endoftext|>
MAX_LEN = 77


def setup_determinism():
    """Pin everything that could make two runs differ."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # identical reduction order on any machine
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)


def randn(shape, seed):
    """Standard normal tensor from a private generator (fp32, CPU)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def uniform(shape, seed, lo, hi):
    """Uniform [lo, hi) tensor from a private generator (fp32, CPU)."""
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float32)


def ddim_scheduler():
    """The scheduler every reference script builds, with the steps_offset=1 that
    StableDiffusionPipeline forces onto it (stylediffusion.md §1.2)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )


def load_tiny_unet():
    """Tiny UNet from models/tiny, upcast from the stored F16 to fp32."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    unet = UNet2DConditionModel.from_pretrained(
        os.path.join(TINY_DIR, "unet"), torch_dtype=torch.float32
    ).float().eval()
    unet.set_attn_processor(AttnProcessor())
    return unet


def load_tiny_vae():
    from diffusers import AutoencoderKL
    from diffusers.models.attention_processor import AttnProcessor

    vae = AutoencoderKL.from_pretrained(
        os.path.join(TINY_DIR, "vae"), torch_dtype=torch.float32
    ).float().eval()
    vae.set_attn_processor(AttnProcessor())
    return vae


def load_tiny_text_encoder():
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(
        os.path.join(TINY_DIR, "text_encoder"),
        dtype=torch.float32,
        attn_implementation="eager",
    ).float().eval()
    return te


def save_fixture(name, tensors, description, generator="tests/oracle/gen_30_model_fixtures.py"):
    """Write tests/fixtures/<name> with contiguous CPU tensors (F32 / I64 only)."""
    out = {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        assert t.dtype in (torch.float32, torch.int64), (key, t.dtype)
        out[key] = t
    os.makedirs(FIXTURE_DIR, exist_ok=True)
    path = os.path.join(FIXTURE_DIR, name)
    # One metadata entry only: safetensors serialises the metadata map in hash
    # order, so two or more entries make the header bytes differ between runs.
    save_file(out, path, metadata={"description": description + " (" + generator + ")"})
    os.chmod(path, 0o644)
    print(f"  wrote {os.path.relpath(path, ROOT)}  ({os.path.getsize(path):,} bytes, "
          f"{len(out)} tensors)")
    return path


def check_close(name, got, want, atol=0.0, rtol=0.0):
    """Assert two tensors agree; exact by default. Prints the max abs difference."""
    diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    ok = torch.allclose(got.double(), want.double(), atol=atol, rtol=rtol)
    print(f"  check {name:<40s} max|diff| = {diff:.3e}  {'ok' if ok else 'FAIL'}")
    if not ok:
        sys.exit(f"oracle self-check failed: {name}")
