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


# ---------------------------------------------------------------------------
# StyleDiffusion pieces shared by gen_60_autograd.py and gen_65_methods.py
# ---------------------------------------------------------------------------
class MappingNet(torch.nn.Module):
    """stylediffusion.md §3.3: Conv1d(197->154) -> [Conv1d(154->154) -> BatchNorm1d -> LeakyReLU]
    -> Conv1d(154->154); train mode, so BatchNorm uses the sample's statistics."""

    def __init__(self, tokens=197, channels=154):
        super().__init__()
        self.conv_start = torch.nn.Conv1d(tokens, channels, 1)
        self.conv_block = torch.nn.Sequential(torch.nn.Conv1d(channels, channels, 1),
                                              torch.nn.BatchNorm1d(channels),
                                              torch.nn.LeakyReLU(0.01))
        self.conv_end = torch.nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        return self.conv_end(self.conv_block(self.conv_start(x)))


class ValueSubstitutionProcessor:
    """diffusers' AttnProcessor (explicit softmax) with StyleDiffusion's injection (§3.4): in
    cross-attention the value projection reads state["value"] when set (keys read the context);
    when state["capture"] is a list, cross-attention maps with state["q_len"] queries are
    appended to it."""

    def __init__(self, state):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        is_cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if is_cross else hidden_states
        value = self.state.get("value")
        value_in = value if (is_cross and value is not None) else ctx
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(value_in))
        probs = attn.get_attention_scores(q, k, None)
        capture = self.state.get("capture")
        if is_cross and capture is not None and probs.shape[1] == self.state.get("q_len"):
            capture.append(probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))
