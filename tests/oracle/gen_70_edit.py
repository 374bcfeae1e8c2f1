#!/usr/bin/env python3
"""gen_70_edit.py: the whole editing loop (Prompt-to-Prompt with P2Plus, stylediffusion.md §3.7,
§4, §5) on the tiny model, in torch -> tests/fixtures/tiny_edit.safetensors, read by
tests/unit/test_edit.c.

The loop is the reference's text2image_ldm_stable with LOW_RESOURCE = True, restated from the
spec: two prompts (row 0 source, row 1 target) start from one z_T; every step makes two UNet
calls at batch 2,
    the unconditional pass (both rows get the step's unconditional embedding), whose attention
        maps go to the controller's replace_uncond (P2Plus self-attention injection, steps < τ_u·N);
    the conditional pass ([c_src; c_tgt]), whose maps go to the controller's forward (store,
        cross-attention replacement with the equalizer, self-attention injection, steps < τ_s·N);
        StyleDiffusion feeds the value projections of its cross-attention layers with
        c ⊙ S_i + B_i from the step's mapping network: row 0 always, row 1 while i < τ_v·N;
then ε = ε_u + 7.5 (ε_c − ε_u), the DDIM prev_step (§2), and the step callback (LocalBlend, §4.7).
The controller is gen_55_p2p_controller.py's ReferenceController (AttentionStore /
AttentionControlEdit / Replace / Refine / Reweight / LocalBlend as the reference runs them); the
attention processor below hands it the live softmax maps [2·8, q, kv] of every layer, with the
reference's place labels (down / mid / up), and multiplies the edited maps with V.

The schedule is shortened to N = 6 DDIM steps (timesteps 831, 665, 499, 333, 167, 1: steps_offset
1), on 32x32 latents. Two variants:
  nt_*  Null-text: per-step unconditional embeddings E("") + 0.1·randn (stored, nt_null), word
        swap "a cat sitting on a wooden floor" -> "a tiger sitting on a wooden floor", τ_c 0.8,
        τ_s 0.5, τ_u 0.5, LocalBlend cat / tiger (threshold 0.3, blending from the step whose
        counter exceeds int(0.2·6) = 1), equalizer tiger x2.
  sd_*  StyleDiffusion: per-step mapping networks (random), CLIP features (1, 197, 32) random,
        uncond E(""), refinement -> "a fluffy cat sitting on a wooden floor", τ_v 0.5 (3 steps),
        τ_c 0.6, τ_s 0.8, τ_u 0.5, no LocalBlend, equalizer fluffy x2.
The six mapping networks share their three conv weight matrices (map_conv_start.weight,
map_conv_block.0.weight, map_conv_end.weight: the size limit of a fixture) and differ in their
five small tensors (map{i}_conv_start.bias, ..._conv_block.0.bias, ..._conv_block.1.weight,
..._conv_block.1.bias, ..._conv_end.bias); conv_end is scaled so that S ≈ 1 ± 0.1 and B ≈ ±0.1
(a trained network's mild modulation of c) and the per-step biases make every step's S, B differ.

Fixture (all F32):
  z_T (1, 4, 32, 32), features (1, 197, 32), nt_null (6, 1, 77, 32), the mapping tensors above;
  {nt,sd}_step0 (2, 4, 32, 32)  both rows after the first step (after its LocalBlend call);
  {nt,sd}_final (2, 4, 32, 32)  both rows after the last step;
  nt_nop2plus_final, nt_noself_final (2, 4, 32, 32)  the Null-text run with τ_u = 0 (no P2Plus)
                                resp. τ_s = 0 (no conditional self-attention injection).
LocalBlend on the random tiny model: its cross maps hardly depend on the position (normalised
map ≥ 0.86 everywhere at every step), so every mask is all ones and the blend leaves the latents
as they are (up to rounding): this fixture checks that the blend keeps them, not the arithmetic of
a partial mask, which tests/unit/test_p2p.c covers on synthetic maps.
Self-checks: the DDIM step equals diffusers' DDIMScheduler.step; row 0 equals a plain batch-1
reconstruction with the inversion's own variables (no controller); no LocalBlend value lies within
1e-3 of the threshold (so float noise cannot flip a mask pixel).

Module isolation: gen_55 needs transformers 4.25.1 (.venv/tf425-reference, the reference
tokenizer), diffusers and the text encoder need the .venv's transformers 5. gen_55 is imported
first and both controllers are built (the only place the tokenizer is used), then the 4.25.1
packages are taken out of sys.modules / sys.path so that diffusers imports its own.

    .venv/bin/python tests/oracle/gen_70_edit.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import common  # noqa: E402

N = 6
GUIDANCE = 7.5
LATENT = 32
SOURCE = "a cat sitting on a wooden floor"
NT_TARGET = "a tiger sitting on a wooden floor"
SD_TARGET = "a fluffy cat sitting on a wooden floor"
TAU_V = 0.5
NT_CFG = dict(name="nt", prompts=[SOURCE, NT_TARGET], steps=N, edit="replace", cross=(0, .8), self=(0, .5),
              uncond=(0, .5), eq=(["tiger"], [2.0]), blend=[["cat"], ["tiger"]])
SD_CFG = dict(name="sd", prompts=[SOURCE, SD_TARGET], steps=N, edit="refine", cross=(0, .6), self=(0, .8),
              uncond=(0, .5), eq=(["fluffy"], [2.0]))
# Null-text runs with one injection switched off (τ = 0): the C test compares the EFFECT of the
# injection (full run minus ablated run) with torch's. On the random tiny model row 1's attention
# maps stay close to row 0's (both rows start from one z_T), so injecting them moves the result by
# only ~1e-4 to ~1e-3 of max|z|, and a one-step error in the τ_u or τ_s window by ~2e-5: too little
# for a 1e-4 comparison of the latents, plenty for a comparison of the effects.
ABLATIONS = {"nt_nop2plus": "uncond", "nt_noself": "self"}
SHARED = ("conv_start.weight", "conv_block.0.weight", "conv_end.weight")
PER_STEP = ("conv_start.bias", "conv_block.0.bias", "conv_block.1.weight", "conv_block.1.bias", "conv_end.bias")


def reference_controllers():
    """Imports gen_55 (transformers 4.25.1), builds the two controllers and their prompts' token
    ids, then removes the 4.25.1 packages from the import system."""
    tf425 = os.environ.get("TF425", os.path.join(common.ROOT, ".venv", "tf425-reference"))
    import gen_55_p2p_controller as ref

    assert ref.LATENT == LATENT
    controllers = {cfg["name"]: ref.ReferenceController(cfg) for cfg in (NT_CFG, SD_CFG)}
    for key, window in ABLATIONS.items():
        controllers[key] = ref.ReferenceController(dict(NT_CFG, name=key, **{window: (0, 0.0)}))
    ids = {p: ref.tok.encode(p) for p in (SOURCE, NT_TARGET, SD_TARGET, "")}
    for name in list(sys.modules):
        if name.split(".")[0] in ("transformers", "huggingface_hub", "tokenizers"):
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != os.path.abspath(tf425)]
    return controllers, ids


def place_of(processor_name):
    return processor_name.split("_")[0]  # down_blocks.* / mid_block.* / up_blocks.*


class EditProcessor:
    """Explicit softmax attention whose maps pass through the controller (in place, as the
    reference's ca_forward hands them over), with StyleDiffusion's value substitution."""

    def __init__(self, state, place):
        self.state = state
        self.place = place

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        s = self.state
        is_cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if is_cross else hidden_states
        value_in = s["value"] if (is_cross and s["value"] is not None) else ctx
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(value_in))
        probs = attn.get_attention_scores(q, k, None)
        ctl = s["controller"]
        if ctl is not None:
            if s["branch"] == "uncond":
                probs = ctl.unconditional(probs, is_cross, self.place)
            else:
                probs = ctl.conditional(probs, is_cross, self.place)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def main():
    controllers, ids = reference_controllers()
    common.setup_determinism()
    unet = common.load_tiny_unet()
    state = {"controller": None, "branch": None, "value": None}
    unet.set_attn_processor({name: EditProcessor(state, place_of(name)) for name in unet.attn_processors})
    for p in unet.parameters():
        p.requires_grad_(False)
    te = common.load_tiny_text_encoder()

    def embed(prompt):
        tokens = ids[prompt]
        tokens = tokens + [common.PAD_ID] * (common.MAX_LEN - len(tokens))
        with torch.no_grad():
            return te(torch.tensor([tokens], dtype=torch.int64)).last_hidden_state

    c_src, c_nt, c_sd, empty = embed(SOURCE), embed(NT_TARGET), embed(SD_TARGET), embed("")

    sched = common.ddim_scheduler()
    sched.set_timesteps(N)
    timesteps = [int(t) for t in sched.timesteps]
    delta = 1000 // N
    assert timesteps == [(N - 1 - i) * delta + 1 for i in range(N)], timesteps

    def alpha(t):
        return sched.alphas_cumprod[t] if t >= 0 else sched.final_alpha_cumprod

    def prev_step(eps, t, z):
        a_t, a_prev = alpha(t), alpha(t - delta)
        x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps

    fx = {}
    z_T = common.randn((1, 4, LATENT, LATENT), 7001)
    fx["z_T"] = z_T
    nt_null = empty[None] + 0.1 * common.randn((N, 1, common.MAX_LEN, empty.shape[-1]), 7002)
    fx["nt_null"] = nt_null

    # StyleDiffusion's per-step networks and image features
    features = common.randn((1, 197, empty.shape[-1]), 7003)
    fx["features"] = features
    shared = {
        "conv_start.weight": common.uniform((154, 197, 1), 7010, -197 ** -0.5, 197 ** -0.5),
        "conv_block.0.weight": common.uniform((154, 154, 1), 7011, -154 ** -0.5, 154 ** -0.5),
        "conv_end.weight": common.uniform((154, 154, 1), 7012, -0.3 * 154 ** -0.5, 0.3 * 154 ** -0.5),
    }
    nets = []
    for i in range(N):
        seed = 7100 + 10 * i
        small = {
            "conv_start.bias": common.uniform((154,), seed, -197 ** -0.5, 197 ** -0.5),
            "conv_block.0.bias": common.uniform((154,), seed + 1, -154 ** -0.5, 154 ** -0.5),
            "conv_block.1.weight": 1 + 0.1 * common.randn((154,), seed + 2),
            "conv_block.1.bias": 0.1 * common.randn((154,), seed + 3),
            "conv_end.bias": torch.cat([1 + 0.05 * common.randn((77,), seed + 4),
                                        0.05 * common.randn((77,), seed + 5)]),
        }
        net = common.MappingNet().train()  # BatchNorm on the sample's statistics, as the reference
        params = dict(net.named_parameters())
        assert set(params) == set(shared) | set(small)
        with torch.no_grad():
            for name, value in {**shared, **small}.items():
                params[name].copy_(value)
        nets.append(net)
        for name, value in small.items():
            fx[f"map{i}_{name}"] = value
    for name, value in shared.items():
        fx["map_" + name] = value

    def value_rows(i, c_tgt):
        with torch.no_grad():
            o = nets[i](features)
        s, b = o[:, :77], o[:, 77:]
        target = c_tgt * s + b if i < N * TAU_V else c_tgt
        return torch.cat([c_src * s + b, target]), c_src * s + b

    def unet_eps(z, t, context, controller=None, branch=None, value=None):
        state["controller"], state["branch"], state["value"] = controller, branch, value
        with torch.no_grad():
            out = unet(z, t, encoder_hidden_states=context).sample
        state["controller"], state["branch"], state["value"] = None, None, None
        return out

    def edit(name, c_tgt, uncond_of_step, mapped, diagnose=True):
        ctl = controllers[name]
        z = torch.cat([z_T, z_T])
        cond = torch.cat([c_src, c_tgt])
        margin = float("inf")
        for i, t in enumerate(timesteps):
            ctl.cur_step = i
            u = uncond_of_step(i)
            eps_u = unet_eps(z, t, torch.cat([u, u]), ctl, "uncond")
            value = value_rows(i, c_tgt)[0] if mapped else None
            eps_c = unet_eps(z, t, cond, ctl, "cond", value)
            ctl.between_steps()  # the 64th hook call of the step: cur_step += 1, between_steps
            ctl.cur_step = i + 1
            eps = eps_u + GUIDANCE * (eps_c - eps_u)
            if i == 0 and diagnose:
                ref = sched.step(eps, t, z, eta=0.0).prev_sample
            z = prev_step(eps, t, z)
            if i == 0 and diagnose:
                common.check_close(f"{name} DDIM step vs DDIMScheduler.step", z, ref, atol=1e-6, rtol=1e-6)
            if hasattr(ctl, "alpha_layers"):
                z, mask, m = ctl.local_blend(z)
                if mask is not None:
                    margin = min(margin, (m - 0.3).abs().min().item())
                if mask is not None and diagnose:
                    print(f"  {name} step {i}: LocalBlend mask covers {int(mask[1].sum())} of "
                          f"{LATENT * LATENT} (source {int(mask[0].sum())})")
            if i == 0 and diagnose:
                fx[name + "_step0"] = z.clone()
        fx[name + "_final"] = z.clone()
        if margin != float("inf"):
            print(f"  {name}: LocalBlend threshold margin {margin:.3e}")
            assert margin > 1e-3, f"{name}: a blend value lies {margin:.2e} from the threshold"
        return z

    def reconstruct(uncond_of_step, mapped):
        z = z_T
        for i, t in enumerate(timesteps):
            eps_u = unet_eps(z, t, uncond_of_step(i))
            eps_c = unet_eps(z, t, c_src, value=value_rows(i, c_src)[1] if mapped else None)
            z = prev_step(eps_u + GUIDANCE * (eps_c - eps_u), t, z)
        return z

    nt = edit("nt", c_nt, lambda i: nt_null[i], mapped=False)
    # batch 2 against batch 1: float noise, amplified by the guidance (measured ~1.2e-6 of max|z|)
    common.check_close("nt row 0 vs plain reconstruction", nt[:1], reconstruct(lambda i: nt_null[i], False),
                       atol=1e-5 * nt.abs().max().item())
    sd = edit("sd", c_sd, lambda i: empty, mapped=True)
    common.check_close("sd row 0 vs plain reconstruction", sd[:1], reconstruct(lambda i: empty, True),
                       atol=1e-5 * sd.abs().max().item())
    for key in ABLATIONS:
        z = edit(key, c_nt, lambda i: nt_null[i], mapped=False, diagnose=False)
        effect = (nt[1] - z[1]).abs().max().item()
        print(f"  {key}: the injection moves row 1 by {effect:.3e} ({effect / nt.abs().max().item():.2e} of max|z|)")
    for name, z in (("nt", nt), ("sd", sd)):
        d0 = (fx[name + "_step0"][1] - fx[name + "_step0"][0]).abs().max().item()
        d = (z[1] - z[0]).abs().max().item()
        print(f"  {name}: max|row1 - row0| after step 0 {d0:.3e}, final {d:.3e}; max|z| {z.abs().max().item():.3f}")
    common.save_fixture("tiny_edit.safetensors", fx,
                        "P2P/P2Plus editing loop, Null-text and StyleDiffusion, N = 6, tiny model",
                        generator="tests/oracle/gen_70_edit.py")


if __name__ == "__main__":
    main()
