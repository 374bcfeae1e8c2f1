"""Numeric fixtures for the tiny model (tests/fixtures/tiny_*.safetensors).

Reads models/tiny/ (written by gen_20_tiny_model.py) through the public
from_pretrained() entry points, upcasts the F16 weights to fp32, and records what
diffusers / transformers compute on fixed random inputs:

  tiny_text.safetensors    CLIP text encoder: ids -> last_hidden_state
  tiny_unet.safetensors    UNet eps at t=981 / t=1 (batch 2, 64x64), t=500 (32x32),
                           plus time embedding and conv_in intermediates
  tiny_attn.safetensors    attention probabilities captured in the t=981 call
  tiny_vae.safetensors     VAE encode (posterior mean/logvar) and decode
  tiny_ddim.safetensors    DDIM schedule: betas, alphas_cumprod, timesteps
  tiny_sample.safetensors  3 DDIM sampling steps with CFG 7.5 (N=50, 64x64)
  tiny_invert.safetensors  full DDIM inversion trajectory (N=50, 32x32)

Every tensor is documented in tests/oracle/README.md. All math is fp32 on the CPU
with diffusers' explicit AttnProcessor (softmax(QK^T*scale)V) and transformers'
eager attention, one thread, deterministic algorithms. Random inputs come from
private seeded generators (common.randn / common.uniform), so the files are
byte-identical from run to run.

At the end the script re-reads the written files and recomputes the main outputs
with freshly loaded models (verify()); `--verify` runs only that check.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import BOS_ID, EOS_ID, PAD_ID, MAX_LEN, SCALING_FACTOR  # noqa: E402
from common import check_close, randn, save_fixture, uniform  # noqa: E402

from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

GUIDANCE_SCALE = 7.5
# Rows (b*8 + h) of the 16x16 cross-attention maps kept in tiny_attn (see README):
# row 3 = sample 0 head 3, row 12 = sample 1 head 4; a (h*B + b) layout bug would
# put other heads there.
ATTN_KEEP_ROWS = (3, 12)
# Call indices (0..31 within one UNet call, attn1 then attn2 per Transformer2D).
ATTN_CROSS_16 = (9, 11, 15, 17, 19)  # down_blocks.2 (x2), up_blocks.1 (x3) attn2 at 16x16
ATTN_SELF_MID = 12                   # mid_block attn1 at 8x8
EXPECTED_CALL_NAMES = {
    0: "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
    1: "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    9: "down_blocks.2.attentions.0.transformer_blocks.0.attn2",
    11: "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
    12: "mid_block.attentions.0.transformer_blocks.0.attn1",
    13: "mid_block.attentions.0.transformer_blocks.0.attn2",
    15: "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    17: "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    19: "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
    31: "up_blocks.3.attentions.2.transformer_blocks.0.attn2",
}

# Seeds of the random inputs (one private generator each).
SEED_UNET_SAMPLE, SEED_UNET_CONTEXT = 10, 11
SEED_SMALL_SAMPLE, SEED_SMALL_CONTEXT = 12, 13
SEED_VAE_IMAGE, SEED_VAE_LATENT = 20, 21
SEED_SAMPLE_LATENT = 30
SEED_INVERT_Z0 = 40


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
def text_input_ids():
    """(3, 77) int64: "", "a cat sitting on a mat", and a full 75-token prompt.

    Ids of "a cat sitting on a mat" from the CLIP BPE vocabulary:
    a=320, cat=2368, sitting=4919, on=525, a=320, mat=9063 (all with </w>).
    Row 2 uses 75 arbitrary ids spread over the vocabulary (never 49406/49407)
    so that BOS + 75 + EOS fills all 77 positions without padding."""
    rows = [
        [],
        [320, 2368, 4919, 525, 320, 9063],
        [(i * 6007 + 11) % 49406 for i in range(75)],
    ]
    ids = torch.full((len(rows), MAX_LEN), PAD_ID, dtype=torch.int64)
    for r, toks in enumerate(rows):
        seq = [BOS_ID] + toks + [EOS_ID]
        ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return ids


# ---------------------------------------------------------------------------
# Attention capture
# ---------------------------------------------------------------------------
class AttnLog:
    """Records the call order of every UNet attention layer in one forward, and
    keeps the probabilities of the calls listed in `keep`."""

    def __init__(self, keep):
        self.keep = set(keep)
        self.names, self.shapes, self.is_cross, self.probs = [], [], [], {}


class CaptureAttnProcessor:
    """diffusers.AttnProcessor, line for line, plus a copy of the softmax output.

    attn.get_attention_scores() is the explicit softmax(Q K^T * scale) (baddbmm with
    alpha = scale, then softmax over keys), so the forward is bit-identical to
    AttnProcessor (checked in make_attn)."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs):
        assert hidden_states.ndim == 3 and attention_mask is None
        assert attn.group_norm is None and attn.spatial_norm is None and not attn.norm_cross
        is_cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if is_cross else hidden_states

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*h, P, d)
        key = attn.head_to_batch_dim(attn.to_k(ctx))              # (B*h, S, d)
        value = attn.head_to_batch_dim(attn.to_v(ctx))            # (B*h, S, d)
        probs = attn.get_attention_scores(query, key, None)       # (B*h, P, S)

        index = len(self.log.names)
        self.log.names.append(self.name)
        self.log.shapes.append(list(probs.shape))
        self.log.is_cross.append(int(is_cross))
        if index in self.log.keep:
            self.log.probs[index] = probs.detach().clone()

        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        assert not attn.residual_connection and attn.rescale_output_factor == 1.0
        return out


def install_capture(unet, log):
    procs = {}
    for key in unet.attn_processors:  # "<module path>.processor"
        procs[key] = CaptureAttnProcessor(log, key[: -len(".processor")])
    unet.set_attn_processor(procs)


# ---------------------------------------------------------------------------
# DDIM inversion step (stylediffusion.md §2, NullInversion.next_step / ddim_loop)
# ---------------------------------------------------------------------------
def next_step(scheduler, num_steps, model_output, timestep, sample):
    """NullInversion.next_step, verbatim apart from names."""
    timestep, next_timestep = min(timestep - scheduler.config.num_train_timesteps // num_steps,
                                  999), timestep
    alpha_prod_t = (scheduler.alphas_cumprod[timestep] if timestep >= 0
                    else scheduler.final_alpha_cumprod)
    alpha_prod_t_next = scheduler.alphas_cumprod[next_timestep]
    beta_prod_t = 1 - alpha_prod_t
    next_original_sample = (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
    next_sample_direction = (1 - alpha_prod_t_next) ** 0.5 * model_output
    return alpha_prod_t_next ** 0.5 * next_original_sample + next_sample_direction


def prev_step_reference(scheduler, num_steps, eps, t, z):
    """stylediffusion.md §2 prev_step, written independently of DDIMScheduler.step."""
    t_prev = t - scheduler.config.num_train_timesteps // num_steps
    a_t = scheduler.alphas_cumprod[t]
    a_prev = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


# ---------------------------------------------------------------------------
# Fixture builders
# ---------------------------------------------------------------------------
@torch.no_grad()
def make_text(te):
    ids = text_input_ids()
    hidden = te(ids).last_hidden_state
    assert hidden.shape == (3, MAX_LEN, 32)
    return {"input_ids": ids, "last_hidden_state": hidden}


def independent_time_embedding(unet, t, batch):
    """get_timestep_embedding (flip_sin_to_cos, shift 0) + Linear-SiLU-Linear, from
    the formula in stylediffusion.md §1.5, to cross-check the hooked values."""
    dim = unet.config.block_out_channels[0]
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    arg = torch.full((batch,), float(t))[:, None] * freqs[None, :]
    e = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)
    te = unet.time_embedding
    return e, te.linear_2(torch.nn.functional.silu(te.linear_1(e)))


@torch.no_grad()
def unet_call_with_hooks(unet, sample, t, context):
    """UNet forward that also returns the time_proj, time_embedding and conv_in outputs."""
    grabbed = {}
    hooks = [
        unet.time_proj.register_forward_hook(lambda m, i, o: grabbed.__setitem__("time_proj", o)),
        unet.time_embedding.register_forward_hook(lambda m, i, o: grabbed.__setitem__("temb", o)),
        unet.conv_in.register_forward_hook(lambda m, i, o: grabbed.__setitem__("conv_in", o)),
    ]
    try:
        eps = unet(sample, torch.tensor(t, dtype=torch.int64), encoder_hidden_states=context).sample
    finally:
        for h in hooks:
            h.remove()
    return eps, grabbed


@torch.no_grad()
def make_unet(unet):
    sample = randn((2, 4, 64, 64), SEED_UNET_SAMPLE)
    context = randn((2, 77, 32), SEED_UNET_CONTEXT)
    eps981, g981 = unet_call_with_hooks(unet, sample, 981, context)
    eps1, _ = unet_call_with_hooks(unet, sample, 1, context)

    small_sample = randn((1, 4, 32, 32), SEED_SMALL_SAMPLE)
    small_context = randn((1, 77, 32), SEED_SMALL_CONTEXT)
    small_eps, g500 = unet_call_with_hooks(unet, small_sample, 500, small_context)

    # Cross-check the time embedding against the formula.
    e, temb = independent_time_embedding(unet, 981, 2)
    check_close("time_proj t=981 vs formula", g981["time_proj"], e, atol=2e-6)
    check_close("temb t=981 vs formula", g981["temb"], temb, atol=1e-5)
    check_close("conv_in vs F.conv2d", g500["conv_in"],
                torch.nn.functional.conv2d(small_sample, unet.conv_in.weight,
                                           unet.conv_in.bias, padding=1))

    return {
        "sample": sample,
        "context": context,
        "eps_t981": eps981,
        "eps_t1": eps1,
        "time_proj_t981": g981["time_proj"],
        "temb_t981": g981["temb"],
        "small_sample": small_sample,
        "small_context": small_context,
        "small_eps_t500": small_eps,
        "small_time_proj_t500": g500["time_proj"],
        "small_temb_t500": g500["temb"],
        "small_conv_in": g500["conv_in"],
    }


@torch.no_grad()
def make_attn(unet, unet_fx):
    log = AttnLog(keep=ATTN_CROSS_16 + (ATTN_SELF_MID,))
    install_capture(unet, log)
    try:
        eps = unet(unet_fx["sample"], torch.tensor(981), encoder_hidden_states=unet_fx["context"]).sample
    finally:
        unet.set_attn_processor(AttnProcessor())
    check_close("capture-processor eps == AttnProcessor eps", eps, unet_fx["eps_t981"])

    assert len(log.names) == 32, len(log.names)
    assert sum(log.is_cross) == 16
    for i, name in EXPECTED_CALL_NAMES.items():
        assert log.names[i] == name, (i, log.names[i], name)
    for i in ATTN_CROSS_16:
        assert log.shapes[i] == [16, 256, 77] and log.is_cross[i] == 1, (i, log.shapes[i])
    assert log.shapes[ATTN_SELF_MID] == [16, 64, 64] and log.is_cross[ATTN_SELF_MID] == 0
    for i, p in log.probs.items():
        check_close(f"attn_probs_{i:02d} rows sum to 1", p.sum(-1), torch.ones(p.shape[:-1]),
                    atol=1e-5)

    rows = torch.tensor(ATTN_KEEP_ROWS, dtype=torch.int64)
    out = {
        "attn_call_shapes": torch.tensor(log.shapes, dtype=torch.int64),
        "attn_call_is_cross": torch.tensor(log.is_cross, dtype=torch.int64),
        "attn_rows": rows,
        f"attn_probs_{ATTN_SELF_MID:02d}": log.probs[ATTN_SELF_MID],
    }
    for i in ATTN_CROSS_16:
        out[f"attn_probs_{i:02d}"] = log.probs[i][rows]
    return out, log.names


@torch.no_grad()
def make_vae(vae):
    image = uniform((1, 3, 128, 128), SEED_VAE_IMAGE, -1.0, 1.0)
    posterior = vae.encode(image).latent_dist
    z = randn((1, 4, 16, 16), SEED_VAE_LATENT)
    decode_in = z / SCALING_FACTOR  # what latent2image passes to vae.decode
    decode_out = vae.decode(decode_in).sample
    # The posterior mean is the first half of quant_conv(encoder(x)).
    moments = vae.quant_conv(vae.encoder(image))
    check_close("posterior mean == quant_conv chunk 0", posterior.mean, moments[:, :4])
    return {
        "encode_in": image,
        "posterior_mean": posterior.mean,
        "posterior_logvar": posterior.logvar,
        "decode_in": decode_in,
        "decode_out": decode_out,
    }


def make_ddim():
    sch = common.ddim_scheduler()
    ac = sch.alphas_cumprod
    # Plain-number sanity checks (stylediffusion.md §1.2, float64 reference values).
    check_close("alphas_cumprod[0] == 0.99915", ac[0], torch.tensor(0.99915), atol=1e-6)
    check_close("alphas_cumprod[999] ~ 0.0046601", ac[999], torch.tensor(0.0046601), atol=1e-7)
    check_close("alphas_cumprod[981] ~ 0.0057755", ac[981], torch.tensor(0.0057755), atol=1e-7)
    check_close("final_alpha_cumprod == alphas_cumprod[0]", sch.final_alpha_cumprod, ac[0])
    out = {
        "betas": sch.betas.float(),
        "alphas_cumprod": ac.float(),
        # (a view of alphas_cumprod[0] in diffusers: clone, safetensors refuses aliases)
        "final_alpha_cumprod": sch.final_alpha_cumprod.float().reshape(1).clone(),
    }
    for n in (30, 50):
        sch.set_timesteps(n)
        ts = sch.timesteps.to(torch.int64)
        out[f"timesteps_{n}"] = ts
        expect = torch.arange(n - 1, -1, -1, dtype=torch.int64) * (1000 // n) + 1
        assert torch.equal(ts, expect), (n, ts)
    assert out["timesteps_30"][0] == 958 and out["timesteps_30"][-1] == 1
    assert out["timesteps_50"][0] == 981 and out["timesteps_50"][-1] == 1
    return out


@torch.no_grad()
def make_sample(unet, text_fx, num_steps=50, num_run=3):
    """P2P diffusion_step x3: batched [uncond, cond] UNet call, CFG, scheduler.step."""
    sch = common.ddim_scheduler()
    sch.set_timesteps(num_steps)
    context = text_fx["last_hidden_state"][0:2].clone()  # [TE(""), TE("a cat sitting on a mat")]
    latent = randn((1, 4, 64, 64), SEED_SAMPLE_LATENT)
    out = {"context": context, "latent_0": latent,
           "timesteps": sch.timesteps[:num_run].to(torch.int64)}
    for k in range(num_run):
        t = sch.timesteps[k]
        eps_both = unet(torch.cat([latent] * 2), t, encoder_hidden_states=context).sample
        eps_uncond, eps_cond = eps_both.chunk(2)
        eps = eps_uncond + GUIDANCE_SCALE * (eps_cond - eps_uncond)
        new_latent = sch.step(eps, t, latent).prev_sample  # eta = 0
        check_close(f"sample step {k}: scheduler.step == prev_step",
                    new_latent, prev_step_reference(sch, num_steps, eps, int(t), latent), atol=2e-6)
        latent = new_latent
        out[f"eps_uncond_{k}"] = eps_uncond
        out[f"eps_cond_{k}"] = eps_cond
        out[f"eps_{k}"] = eps
        out[f"latent_{k + 1}"] = latent
    return out


@torch.no_grad()
def make_invert(unet, text_fx, num_steps=50):
    """NullInversion.ddim_loop: conditional only (guidance 1), ascending timesteps."""
    sch = common.ddim_scheduler()
    sch.set_timesteps(num_steps)
    cond = text_fx["last_hidden_state"][1:2].clone()  # TE("a cat sitting on a mat")
    latent = randn((1, 4, 32, 32), SEED_INVERT_Z0)
    all_latent = [latent]
    used_t = []
    for i in range(num_steps):
        t = sch.timesteps[len(sch.timesteps) - i - 1]
        eps = unet(latent, t, encoder_hidden_states=cond).sample
        latent = next_step(sch, num_steps, eps, t, latent)
        all_latent.append(latent)
        used_t.append(int(t))
    assert used_t[0] == 1 and used_t[-1] == 981
    return {
        "context": cond,
        "timesteps": torch.tensor(used_t, dtype=torch.int64),
        "latents": torch.stack(all_latent),  # (51, 1, 4, 32, 32)
    }


# ---------------------------------------------------------------------------
# Verification: reload models/tiny and the fixture files, recompute.
# ---------------------------------------------------------------------------
FIXTURE_FILES = ("tiny_text.safetensors", "tiny_unet.safetensors", "tiny_attn.safetensors",
                 "tiny_vae.safetensors", "tiny_ddim.safetensors", "tiny_sample.safetensors",
                 "tiny_invert.safetensors")


def fixture(name):
    return load_file(os.path.join(common.FIXTURE_DIR, name))


@torch.no_grad()
def verify():
    print("verify: recomputing from freshly loaded models/tiny and tests/fixtures")
    te = common.load_tiny_text_encoder()
    unet = common.load_tiny_unet()
    vae = common.load_tiny_vae()

    fx = fixture("tiny_text.safetensors")
    check_close("text last_hidden_state", te(fx["input_ids"]).last_hidden_state,
                fx["last_hidden_state"])
    # Cross-check the hard-coded ids with the real tokenizer when gen_10 has written
    # it (optional: this script must not depend on it).
    tok_dir = os.path.join(common.TINY_DIR, "tokenizer")
    if os.path.exists(os.path.join(tok_dir, "vocab.json")):
        from transformers import CLIPTokenizer
        tok = CLIPTokenizer.from_pretrained(tok_dir)
        ids = tok(["", "a cat sitting on a mat"], padding="max_length", max_length=MAX_LEN,
                  truncation=True, return_tensors="pt").input_ids
        assert torch.equal(ids, fx["input_ids"][:2]), ids
        print("  check input_ids rows 0-1 == CLIPTokenizer(models/tiny/tokenizer)  ok")
    else:
        print("  (models/tiny/tokenizer absent: tokenizer cross-check skipped)")

    fx = fixture("tiny_unet.safetensors")
    check_close("unet eps_t981", unet(fx["sample"], torch.tensor(981),
                                      encoder_hidden_states=fx["context"]).sample, fx["eps_t981"])
    check_close("unet small_eps_t500", unet(fx["small_sample"], torch.tensor(500),
                                            encoder_hidden_states=fx["small_context"]).sample,
                fx["small_eps_t500"])

    fx = fixture("tiny_vae.safetensors")
    check_close("vae posterior_mean", vae.encode(fx["encode_in"]).latent_dist.mean,
                fx["posterior_mean"])
    check_close("vae decode_out", vae.decode(fx["decode_in"]).sample, fx["decode_out"])

    fx = fixture("tiny_sample.safetensors")
    sch = common.ddim_scheduler()
    sch.set_timesteps(50)
    eps_u, eps_c = unet(torch.cat([fx["latent_0"]] * 2), fx["timesteps"][0],
                        encoder_hidden_states=fx["context"]).sample.chunk(2)
    check_close("sample eps_cond_0", eps_c, fx["eps_cond_0"])
    check_close("sample latent_1",
                sch.step(eps_u + GUIDANCE_SCALE * (eps_c - eps_u), fx["timesteps"][0],
                         fx["latent_0"]).prev_sample, fx["latent_1"])

    fx = fixture("tiny_invert.safetensors")
    lat = fx["latents"]
    t = fx["timesteps"][-1]
    eps = unet(lat[-2], t, encoder_hidden_states=fx["context"]).sample
    check_close("invert last step", next_step(sch, 50, eps, t, lat[-2]), lat[-1])

    total = sum(os.path.getsize(os.path.join(common.FIXTURE_DIR, f)) for f in FIXTURE_FILES)
    print(f"verify: ok; the {len(FIXTURE_FILES)} tiny_*.safetensors fixtures total {total:,} bytes")
    assert total < 4_000_000, "fixture budget (4 MB) exceeded"


def main():
    common.setup_determinism()
    if "--verify" in sys.argv[1:]:
        verify()
        return
    print("gen_30_model_fixtures: computing fixtures from models/tiny")
    te = common.load_tiny_text_encoder()
    unet = common.load_tiny_unet()
    vae = common.load_tiny_vae()

    text_fx = make_text(te)
    save_fixture("tiny_text.safetensors", text_fx,
                 "tiny CLIP text encoder: input_ids -> last_hidden_state")

    unet_fx = make_unet(unet)
    save_fixture("tiny_unet.safetensors", unet_fx,
                 "tiny UNet eps at t=981/1 (2x4x64x64) and t=500 (1x4x32x32)")

    attn_fx, names = make_attn(unet, unet_fx)
    save_fixture("tiny_attn.safetensors", attn_fx,
                 "attention probabilities of the tiny_unet t=981 call; rows of attn_probs_09.. "
                 "are attn_rows of the (B*8) axis")

    save_fixture("tiny_vae.safetensors", make_vae(vae),
                 "tiny VAE: encode posterior mean/logvar, decode(decode_in)")
    save_fixture("tiny_ddim.safetensors", make_ddim(),
                 "DDIM scaled_linear 0.00085..0.012, set_alpha_to_one False, steps_offset 1")
    save_fixture("tiny_sample.safetensors", make_sample(unet, text_fx),
                 "3 DDIM steps, N=50, CFG 7.5, eta 0, tiny UNet")
    save_fixture("tiny_invert.safetensors", make_invert(unet, text_fx),
                 "DDIM inversion (ddim_loop/next_step), N=50, conditional only")

    print("  attention call order:")
    for i, n in enumerate(names):
        print(f"    {i:2d} {n}")
    verify()
    print("gen_30_model_fixtures: done")


if __name__ == "__main__":
    main()
