#!/usr/bin/env python3
"""Times the reference inversion loops (DDIM, Null-text, StyleDiffusion) in PyTorch eager.

The PyTorch side of `bench/invert_side_by_side.sh`: the same work `stylediff bench invert` does,
written the way the reference code runs it (stylediffusion.md §2, §3.6, §5; the NTI notebook's
NullInversion, StyleDiffusion's VaeInversion.optimization), fp32 with TF32 off:

  ddim      DDIM inversion of a latent: N UNet calls (conditional, guidance 1), next_step; whole time.
  nulltext  one Null-text timestep: a new Adam on the null embedding, 1 conditional forward (no
            grad), K x (unconditional forward, CFG 7.5, prev_step, MSE, zero_grad, backward, Adam
            step, loss.item()), then 1 batched CFG forward (batch 2) to advance z. K = --inner (10),
            no early stop unless --early-stop. Consecutive timed units are consecutive timesteps
            (i = 0, 1, ...; lr 1e-2 (1 - i/100); the null embedding warm-starts from the last one).
  sd        one StyleDiffusion inner step at timestep 0 (t = 981 for 30 steps): mapping net M(E(x))
            -> value input c * S + B of all 16 cross-attention layers of the conditional pass (keys
            read c), CFG 7.5 with eps_u computed once beforehand (not timed), L_rec + L_att (MSE on
            the cross maps at (latent/4)^2 queries: the five 16x16 layers at 512 px), backward to the
            mapping net, Adam step, loss.item(). E(x) is computed once (random (1, 197, D) features:
            the reference re-encodes the image with CLIP in each of the 16 layers; we do not time that).

Attention: "explicit" = diffusers' AttnProcessor arithmetic (baddbmm(scale) -> softmax -> bmm), what
the reference installs; "sdpa" = F.scaled_dot_product_attention (the captured loss maps are still
computed explicitly). By default the UNet parameters require grad, as in the reference code (its
pipelines never freeze them): every backward also computes and accumulates the UNet's weight
gradients. A mode ending in "-frozen" freezes them (activation gradients only, as stylediff does).

Models: --model DIR, a diffusers-layout folder (models/tiny, or the folder --make-model writes), or
--config unet.json [--weights W.safetensors] (the weights `stylediff bench unet --save-weights`
writes). The UNet is diffusers' UNet2DConditionModel when diffusers imports, else
bench/reference/sd_unet_torch.SDUNet (the same module tree and arithmetic in plain PyTorch).

Timing: --warmup untimed units, then --reps timed units (--reps-ddim for the DDIM row); median and
minimum; CUDA events on a GPU, time.perf_counter (after a synchronize) on the CPU. Peak memory:
torch.cuda.max_memory_allocated over the section (weights included); "-" on the CPU.

Output (--tsv): invert_ref<TAB>what<TAB>model<TAB>device<TAB>mode<TAB>median_ms<TAB>min_ms<TAB>peak_MiB
with what = ddim | nulltext | sd. Without --tsv, the same rows as a table.

Other jobs of this script:
  --make-model DIR --from-config configs/sd-v1.5 --unet-weights W [--clip-out DIR2]
        writes a diffusers-layout model folder stylediff and this script both load: the UNet from W
        (reshaped to diffusers' shapes), random VAE and CLIP text weights (seeded), the tiny model's
        tokenizer/scheduler, and (--clip-out) a random CLIP ViT-B/16 vision tower folder.
  --reconstruct DIR   (needs --model with text_encoder/ and transformers) full inversions with the
        reference algorithms (early stop on) from the z0, prompt and image features stylediff saved
        with `bench invert --save DIR`; prints invert_ref_quality rows (method, latent MSE of the
        reconstruction, total seconds, iterations) and parity rows against stylediff's own z_T.
  --grad-io FILE   one gradient step through the UNet (`stylediff bench grad --save-io FILE`):
        stylediff's losses and gradients vs torch autograd (grad_parity rows), then PyTorch's forward,
        context step (Null-text's) and value step (StyleDiffusion's) timed per --modes (grad_ref rows).
  --check   this script's attention processor vs tests/oracle/common.py's ValueSubstitutionProcessor
        and diffusers' AttnProcessor, and the plain UNet vs diffusers (needs diffusers).
"""
import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Attention: one function for diffusers' Attention and sd_unet_torch.Attention (both have heads,
# scale or dim, to_q/to_k/to_v and to_out[0]); the arithmetic of tests/oracle/common.py's
# ValueSubstitutionProcessor (diffusers AttnProcessor + StyleDiffusion's value substitution, §3.4).
# ------------------------------------------------------------------------------------------------
class AttnState:
    def __init__(self):
        self.mode = "explicit"  # or "sdpa"
        self.value = None       # value input of every cross-attention layer (None: the context)
        self.capture = None     # list: cross maps with q_len queries are appended
        self.q_len = 0


STATE = AttnState()


def attention(attn, x, ctx=None):
    import torch
    import torch.nn.functional as F
    is_cross = ctx is not None
    kv = ctx if is_cross else x
    vin = STATE.value if (is_cross and STATE.value is not None) else kv
    B, S, C = x.shape
    h = attn.heads
    d = C // h
    q = attn.to_q(x)
    k = attn.to_k(kv)
    v = attn.to_v(vin)
    want = is_cross and STATE.capture is not None and S == STATE.q_len
    if STATE.mode == "sdpa" and not want:
        qh, kh, vh = (t.view(B, -1, h, d).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(B, S, C)
    else:  # diffusers head_to_batch_dim / get_attention_scores / batch_to_head_dim
        qb, kb, vb = (t.reshape(B, -1, h, d).permute(0, 2, 1, 3).reshape(B * h, -1, d) for t in (q, k, v))
        scale = getattr(attn, "scale", d ** -0.5)
        scores = torch.baddbmm(torch.empty(qb.shape[0], qb.shape[1], kb.shape[1], dtype=qb.dtype, device=qb.device),
                               qb, kb.transpose(-1, -2), beta=0, alpha=scale)
        probs = scores.softmax(dim=-1).to(q.dtype)
        if want:
            STATE.capture.append(probs)
        o = torch.bmm(probs, vb).reshape(B, h, S, d).permute(0, 2, 1, 3).reshape(B, S, C)
    return attn.to_out[0](o)


class DiffusersProcessor:
    """diffusers attention-processor interface around attention()."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        return attention(attn, hidden_states, encoder_hidden_states)


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def build_unet(cfg, impl):
    """(model, impl name, call(model, x, t, ctx) -> eps) with attention routed through attention()."""
    if impl in ("auto", "diffusers"):
        try:
            from diffusers import UNet2DConditionModel
            from diffusers.utils import logging as diffusers_logging
            import diffusers
            diffusers_logging.set_verbosity_error()
            model = UNet2DConditionModel.from_config(cfg)
            model.set_attn_processor(DiffusersProcessor())
            return model, "pytorch-diffusers-" + diffusers.__version__, \
                lambda m, x, t, c: m(x, t, encoder_hidden_states=c).sample
        except ImportError as e:
            if impl == "diffusers":
                raise
            log(f"invert_torch: diffusers is not importable ({e}); using the plain-PyTorch UNet "
                "(bench/reference/sd_unet_torch.py, same module tree and arithmetic)")
    sys.path.insert(0, HERE)
    import sd_unet_torch
    sd_unet_torch.Attention.forward = attention  # route every attention through attention()
    return sd_unet_torch.SDUNet(cfg), "pytorch-plain", lambda m, x, t, c: m(x, t, c)


def load_state(model, path):
    import torch
    from safetensors.torch import load_file
    sd = load_file(path)
    own = model.state_dict()
    fixed = {}
    for name, t in sd.items():
        if name in own and own[name].shape != t.shape and own[name].numel() == t.numel():
            t = t.reshape(own[name].shape)  # 1x1 convs stylediff stores as matrices
        fixed[name] = t.float()
    missing, unexpected = model.load_state_dict(fixed, strict=False)
    if missing or unexpected:
        raise SystemExit(f"invert_torch: {path} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for p in model.parameters():
            if not torch.isfinite(p).all():
                raise SystemExit(f"invert_torch: non-finite weights in {path}")


def unet_files(args):
    """(config dict, weights path or None, label)."""
    if args.model:
        d = os.path.join(args.model, "unet")
        w = os.path.join(d, "diffusion_pytorch_model.safetensors")
        label = args.label or os.path.basename(os.path.abspath(args.model))
        return json.load(open(os.path.join(d, "config.json"))), (w if os.path.exists(w) else None), label
    label = args.label or os.path.basename(os.path.dirname(os.path.abspath(args.config)))
    return json.load(open(args.config)), args.weights, label


def mapping_net_class():
    """MappingNet from tests/oracle/common.py (stylediffusion.md §3.3)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "oracle"))
    from common import MappingNet
    return MappingNet


# ------------------------------------------------------------------------------------------------
# DDIM (stylediffusion.md §1.2, §2): scaled-linear betas in fp32, steps_offset 1, set_alpha_to_one
# False; arithmetic on 0-d fp32 tensors as diffusers' scheduler and the reference's prev/next_step.
# ------------------------------------------------------------------------------------------------
class DDIM:
    def __init__(self, n_steps, device):
        import torch
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
        self.ac = torch.cumprod(1.0 - betas, dim=0).to(device)
        self.final = self.ac[0]
        self.n = n_steps
        self.delta = 1000 // n_steps
        self.timesteps = [int(v) for v in (torch.arange(0, n_steps) * self.delta).flip(0) + 1]

    def prev_step(self, eps, t, z):
        t_prev = t - self.delta
        a_t = self.ac[t]
        a_prev = self.ac[t_prev] if t_prev >= 0 else self.final
        x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps

    def next_step(self, eps, t, z):
        t_cur = min(t - self.delta, 999)
        a_cur = self.ac[t_cur] if t_cur >= 0 else self.final
        a_next = self.ac[t]
        x0 = (z - (1 - a_cur) ** 0.5 * eps) / a_cur ** 0.5
        return a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps


def sd_inner_steps(inner, i):
    return int(math.ceil(inner * math.exp(-0.1 * i)))


def set_mode(bench, mode):
    """Applies a mode: fp32-explicit | fp32-sdpa, optionally -frozen (UNet parameters without grad)."""
    parts = mode.split("-")
    if parts[0] != "fp32" or len(parts) < 2 or parts[1] not in ("explicit", "sdpa") or \
            any(p != "frozen" for p in parts[2:]):
        raise SystemExit(f"invert_torch: mode '{mode}': expected fp32-explicit|fp32-sdpa[-frozen]")
    STATE.mode = parts[1]
    for p in bench.model.parameters():
        p.requires_grad_("frozen" not in parts[2:])


# ------------------------------------------------------------------------------------------------
# The timed work
# ------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, model, call, dev):
        import torch
        self.args, self.model, self.call, self.dev = args, model, call, dev
        self.on_gpu = dev.type == "cuda"
        self.torch = torch

    def unet(self, z, t, c):
        return self.call(self.model, z, self.torch.tensor(t, device=self.dev), c)

    def sync(self):
        if self.on_gpu:
            self.torch.cuda.synchronize()

    def timed(self, fn, n):
        """Runs fn() n times; milliseconds per call."""
        torch = self.torch
        out = []
        for _ in range(n):
            if self.on_gpu:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                out.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                out.append(1e3 * (time.perf_counter() - t0))
        return out

    def begin_section(self):
        for p in self.model.parameters():
            p.grad = None
        self.sync()
        if self.on_gpu:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self):
        if not self.on_gpu:
            return "-"
        return f"{self.torch.cuda.max_memory_allocated() / 2 ** 20:.0f}"

    # -- DDIM inversion (ddim_loop: conditional, guidance 1, no grad) --
    def ddim_invert(self, sched, z0, c, capture_q_len=0):
        torch = self.torch
        latents, maps = [z0], []
        with torch.no_grad():
            z = z0
            for i in range(sched.n):
                t = sched.timesteps[sched.n - 1 - i]
                if capture_q_len:
                    STATE.capture, STATE.q_len = [], capture_q_len
                eps = self.unet(z, t, c)
                if capture_q_len:
                    maps.append(STATE.capture)
                    STATE.capture = None
                z = sched.next_step(eps, t, z)
                latents.append(z)
        return latents, maps

    # -- Null-text: one timestep of NullInversion.null_optimization --
    def nulltext_step(self, sched, latents, state, i, inner, guidance, early_stop):
        torch = self.torch
        N = sched.n
        t = sched.timesteps[i]
        z = state["z"]
        uncond = state["uncond"].clone().detach()
        uncond.requires_grad = True
        opt = torch.optim.Adam([uncond], lr=1e-2 * (1.0 - i / 100.0))
        target = latents[N - 1 - i]
        c = state["cond"]
        with torch.no_grad():
            eps_c = self.unet(z, t, c)
        iters = 0
        for j in range(inner):
            eps_u = self.unet(z, t, uncond)
            eps = eps_u + guidance * (eps_c - eps_u)
            loss = torch.nn.functional.mse_loss(sched.prev_step(eps, t, z), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            iters = j + 1
            if early_stop and value < 1e-5 + i * 2e-5:
                break
        with torch.no_grad():
            out = self.unet(torch.cat([z, z]), t, torch.cat([uncond, c]))
            e_u, e_c = out.chunk(2)
            state["z"] = sched.prev_step(e_u + guidance * (e_c - e_u), t, z)
        state["uncond"] = uncond.detach()
        return iters

    # -- StyleDiffusion: the conditional pass with the mapped value input --
    def sd_cond_eps(self, net, features, z, t, c, capture_q_len):
        STATE.value = None
        out = net(features)                        # (1, 154, D)
        S, Bv = out[:, :77], out[:, 77:]
        STATE.value = c * S + Bv
        if capture_q_len:
            STATE.capture, STATE.q_len = [], capture_q_len
        try:
            eps = self.unet(z, t, c)
            maps = STATE.capture
        finally:
            STATE.value, STATE.capture = None, None
        return eps, maps

    def sd_iteration(self, net, opt, features, z, t, c, eps_u, target, gt, sched, guidance, q_len):
        torch = self.torch
        eps_c, maps = self.sd_cond_eps(net, features, z, t, c, q_len if gt is not None else 0)
        eps = eps_u + guidance * (eps_c - eps_u)
        loss = torch.nn.functional.mse_loss(sched.prev_step(eps, t, z), target)
        if gt is not None:
            if len(maps) != len(gt):
                raise SystemExit(f"invert_torch: {len(maps)} maps captured, {len(gt)} in the ground truth")
            for a, g in zip(maps, gt):
                loss = loss + torch.nn.functional.mse_loss(a, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()


def run_timing(args, bench, cfg, label, impl):
    torch = bench.torch
    dev = bench.dev
    side = (args.size // 8) if args.size else cfg.get("sample_size", 64)
    D = cfg["cross_attention_dim"]
    q_len = (side // 4) * (side // 4)
    gen = torch.Generator(device="cpu").manual_seed(1)
    z0 = torch.randn(1, cfg.get("in_channels", 4), side, side, generator=gen).to(dev)
    cond = torch.randn(1, 77, D, generator=gen).to(dev)
    uncond = torch.randn(1, 77, D, generator=gen).to(dev)
    features = torch.randn(1, 197, D, generator=gen).to(dev)
    whats = args.what.split(",")
    rows = []

    def emit(what, mode, times, peak):
        row = ("invert_ref", what, label, dev.type, mode, f"{statistics.median(times):.3f}", f"{min(times):.3f}", peak)
        rows.append(row)
        if args.tsv:
            print("\t".join(str(x) for x in row), flush=True)
        else:
            print(f"{what:9s} {label:10s} {dev.type:5s} {mode:22s} median {statistics.median(times):10.1f} ms  "
                  f"min {min(times):10.1f} ms  peak {peak} MiB  ({len(times)} timed)", flush=True)

    for mode in args.modes.split(","):
        set_mode(bench, mode)

        # ---- DDIM inversion, whole ----
        sched = DDIM(args.steps, dev)
        latents = None
        if "ddim" in whats:
            bench.begin_section()
            res = {}

            def ddim_unit():
                res["latents"] = bench.ddim_invert(sched, z0, cond)[0]
            bench.timed(ddim_unit, args.warmup_ddim)
            times = bench.timed(ddim_unit, args.reps_ddim)
            emit("ddim", mode, times, bench.peak())
            latents = res["latents"]

        # ---- Null-text, one timestep ----
        if "nulltext" in whats:
            if latents is None:
                latents = bench.ddim_invert(sched, z0, cond)[0]
            bench.begin_section()
            state = {"z": latents[args.steps], "uncond": uncond, "cond": cond}
            counter = {"i": 0}

            def nt_unit():
                i = counter["i"]
                if i == args.steps:  # wrapped: start the trajectory again
                    i = counter["i"] = 0
                    state["z"], state["uncond"] = latents[args.steps], uncond
                bench.nulltext_step(sched, latents, state, i, args.inner, args.guidance, args.early_stop)
                counter["i"] += 1
            bench.timed(nt_unit, args.warmup)
            times = bench.timed(nt_unit, args.reps)
            emit("nulltext", mode, times, bench.peak())

        # ---- StyleDiffusion, one inner iteration (timestep 0 of steps_sd) ----
        if "sd" in whats:
            sched_sd = DDIM(args.steps_sd, dev)
            t = sched_sd.timesteps[0]
            torch.manual_seed(0)
            net = mapping_net_class()(tokens=features.shape[1], channels=154).to(dev).train()
            opt = torch.optim.Adam(net.parameters(), lr=1e-2)
            gen2 = torch.Generator(device="cpu").manual_seed(2)
            z = torch.randn(z0.shape, generator=gen2).to(dev)
            target = torch.randn(z0.shape, generator=gen2).to(dev)
            with torch.no_grad():
                STATE.capture, STATE.q_len = [], q_len
                bench.unet(target, sched_sd.timesteps[1], cond)  # ground-truth maps: a capture pass
                gt = [m.detach() for m in STATE.capture]
                STATE.capture = None
                if not gt:
                    raise SystemExit(f"invert_torch: no cross-attention layer at {q_len} queries for L_att")
                eps_u = bench.unet(z, t, uncond)
            bench.begin_section()

            def sd_unit():
                bench.sd_iteration(net, opt, features, z, t, cond, eps_u, target, gt, sched_sd, args.guidance, q_len)
            bench.timed(sd_unit, args.warmup)
            times = bench.timed(sd_unit, args.reps)
            emit("sd", mode, times, bench.peak())
    return rows


# ------------------------------------------------------------------------------------------------
# One gradient step through the UNet (--grad-io, from `stylediff bench grad --save-io`)
# ------------------------------------------------------------------------------------------------
def run_grad(args, bench, cfg, label):
    """Parity of stylediff's losses and gradients (context: Null-text's step, value: StyleDiffusion's
    value input in all 16 cross-attention layers), then PyTorch timings of forward / context / value
    per --modes. Rows: grad_parity<TAB>what<TAB>model<TAB>device<TAB>mode<TAB>grad max rel err<TAB>loss
    rel err, and grad_ref<TAB>what<TAB>model<TAB>device<TAB>mode<TAB>median_ms<TAB>min_ms<TAB>peak_MiB."""
    torch = bench.torch
    from safetensors.torch import load_file
    dev = bench.dev
    io = {k: v.to(dev) for k, v in load_file(args.grad_io).items()}
    z, c, u, target = io["sample"], io["context"], io["uncond_context"], io["target"]
    t = int(io["timestep"].item())
    w = float(io["guidance"].item())
    with torch.no_grad():
        eps_c0 = bench.unet(z, t, c)
        eps_u0 = bench.unet(z, t, u)

    def step(what):
        """One step; returns (loss, leaf)."""
        if what == "forward":
            with torch.no_grad():
                bench.unet(z, t, c)
            return None, None
        if what == "context":
            leaf = u.clone().requires_grad_(True)
            eps_u = bench.unet(z, t, leaf)
            eps = eps_u + w * (eps_c0 - eps_u)
        else:
            leaf = c.clone().requires_grad_(True)
            STATE.value = leaf
            try:
                eps_c = bench.unet(z, t, c)
            finally:
                STATE.value = None
            eps = eps_u0 + w * (eps_c - eps_u0)
        loss = torch.nn.functional.mse_loss(eps, target)
        loss.backward()
        return loss, leaf

    def emit(row):
        print("\t".join(str(x) for x in row) if args.tsv else "  ".join(str(x) for x in row), flush=True)

    for mode in args.modes.split(","):
        set_mode(bench, mode)
        for what in ("context", "value"):
            bench.begin_section()
            loss, leaf = step(what)
            want = io["grad_" + what]
            gerr = ((leaf.grad - want).abs().max() / want.abs().max()).item()
            lerr = abs(loss.item() - io["loss_" + what].item()) / abs(io["loss_" + what].item())
            emit(("grad_parity", what, label, dev.type, mode, f"{gerr:.3g}", f"{lerr:.3g}"))
        for what in args.grad_what.split(","):
            bench.begin_section()
            bench.timed(lambda: step(what), args.warmup)
            times = bench.timed(lambda: step(what), args.reps)
            emit(("grad_ref", what, label, dev.type, mode, f"{statistics.median(times):.3f}", f"{min(times):.3f}",
                  bench.peak()))


# ------------------------------------------------------------------------------------------------
# Full inversions and reconstruction quality (--reconstruct)
# ------------------------------------------------------------------------------------------------
def encode_prompts(model_dir, prompt, dev):
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer
    tok_dir = os.path.join(model_dir, "tokenizer")
    tok = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    te = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"), dtype=torch.float32,
                                       attn_implementation="eager").float().eval().to(dev)
    out = []
    with torch.no_grad():
        for p in ("", prompt):
            ids = tok([p], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            out.append(te(ids.to(dev))[0].float())
    return out


def run_reconstruct(args, bench, cfg, label):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    dev = bench.dev
    d = args.reconstruct
    files = {m: os.path.join(d, m + ".safetensors") for m in ("ddim", "npi", "nulltext", "stylediffusion")}
    have = {m: p for m, p in files.items() if os.path.exists(p)}
    if not have:
        raise SystemExit(f"invert_torch: --reconstruct {d}: no <method>.safetensors (stylediff bench invert --save)")
    first = next(iter(have.values()))
    with safe_open(first, "pt") as f:
        prompt = f.metadata()["prompt"]
    z0 = load_file(first)["z0"].to(dev)
    if not args.model or not os.path.isdir(os.path.join(args.model, "text_encoder")):
        raise SystemExit("invert_torch: --reconstruct needs --model DIR with text_encoder/ and tokenizer/")
    uncond, cond = encode_prompts(args.model, prompt, dev)
    side = z0.shape[-1]
    q_len = (side // 4) * (side // 4)
    mode = args.modes.split(",")[0]
    set_mode(bench, mode)
    rows = []

    def emit(method, mse, seconds, iters):
        row = ("invert_ref_quality", method, label, dev.type, mode, f"{mse:.6g}", f"{seconds:.3f}", str(iters))
        rows.append(row)
        print("\t".join(row) if args.tsv else
              f"quality {method:15s} latent MSE {mse:.6g}  total {seconds:.1f} s  iterations {iters}", flush=True)

    def parity(what, got, want):
        err = ((got - want).abs().max() / want.abs().max()).item()
        row = ("parity", what, label, dev.type, mode, f"{err:.3g}", "", "")
        print("\t".join(row) if args.tsv else f"parity {what}: max rel err {err:.3g}", flush=True)

    if "npi" in have:  # stylediff's NPI stores the source prompt's embedding as its null embedding
        parity("cond-embedding-vs-stylediff", cond, load_file(have["npi"])["null_embedding.000"].to(dev))

    def cfg_eps(z, t, u, c):
        with torch.no_grad():
            e_u, e_c = bench.unet(torch.cat([z, z]), t, torch.cat([u, c])).chunk(2)
        return e_u + args.guidance * (e_c - e_u)

    # DDIM: inversion, then CFG sampling with "" (what stylediff's ddim row reconstructs)
    sched = DDIM(args.steps, dev)
    bench.sync()
    t0 = time.perf_counter()
    latents, _ = bench.ddim_invert(sched, z0, cond)
    bench.sync()
    sec = time.perf_counter() - t0
    if "ddim" in have:
        parity("ddim-z_T-vs-stylediff", latents[-1], load_file(have["ddim"])["z_T"].to(dev))
    z = latents[-1]
    for t in sched.timesteps:
        z = sched.prev_step(cfg_eps(z, t, uncond, cond), t, z)
    emit("ddim", torch.mean((z - z0) ** 2).item(), sec, 0)

    methods = args.recon_methods.split(",")
    if "nulltext" not in methods:
        return rows
    # Null-text, all N timesteps, early stop as the reference
    state = {"z": latents[-1], "uncond": uncond, "cond": cond}
    nulls, iters = [], 0
    bench.sync()
    t0 = time.perf_counter()
    for i in range(args.steps):
        iters += bench.nulltext_step(sched, latents, state, i, args.inner, args.guidance, True)
        nulls.append(state["uncond"])
    bench.sync()
    sec += time.perf_counter() - t0
    z = latents[-1]
    for i, t in enumerate(sched.timesteps):
        z = sched.prev_step(cfg_eps(z, t, nulls[i], cond), t, z)
    emit("nulltext", torch.mean((z - z0) ** 2).item(), sec, iters)

    # StyleDiffusion, all steps_sd timesteps (needs the image features stylediff saved)
    if "stylediffusion" not in methods:
        return rows
    if "stylediffusion" not in have:
        log("invert_torch: no stylediffusion.safetensors (image features) to reconstruct StyleDiffusion from")
        return rows
    features = load_file(have["stylediffusion"])["image_features"].to(dev)
    sched = DDIM(args.steps_sd, dev)
    N = sched.n
    bench.sync()
    t0 = time.perf_counter()
    latents, maps = bench.ddim_invert(sched, z0, cond, capture_q_len=q_len)
    maps.append(maps[-1])
    torch.manual_seed(0)
    net = mapping_net_class()(tokens=features.shape[1], channels=154).to(dev).train()
    saved, iters = [], 0
    z = latents[N]
    for i in range(N):
        t = sched.timesteps[i]
        opt = torch.optim.Adam(net.parameters(), lr=1e-2 * (1.0 - i / 100.0))
        with torch.no_grad():
            eps_u = bench.unet(z, t, uncond)
        for j in range(sd_inner_steps(args.inner_sd, i)):
            value = bench.sd_iteration(net, opt, features, z, t, cond, eps_u, latents[N - 1 - i], maps[N - i],
                                       sched, args.guidance, q_len)
            iters += 1
            if value < 1e-5 + i * 2e-5:
                break
        saved.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        with torch.no_grad():
            eps_c, _ = bench.sd_cond_eps(net, features, z, t, cond, 0)
            z = sched.prev_step(eps_u + args.guidance * (eps_c - eps_u), t, z)
    bench.sync()
    sec = time.perf_counter() - t0
    z = latents[N]
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            net.load_state_dict(saved[i])
            eps_u = bench.unet(z, t, uncond)
            eps_c, _ = bench.sd_cond_eps(net, features, z, t, cond, 0)
            z = sched.prev_step(eps_u + args.guidance * (eps_c - eps_u), t, z)
    emit("stylediffusion", torch.mean((z - z0) ** 2).item(), sec, iters)
    return rows


# ------------------------------------------------------------------------------------------------
# --make-model: a diffusers-layout SD folder with random weights (the UNet's from stylediff)
# ------------------------------------------------------------------------------------------------
def _resnet(p, cin, cout, out):
    out[p + "norm1.weight"], out[p + "norm1.bias"] = ("one", [cin]), ("zero", [cin])
    out[p + "conv1.weight"], out[p + "conv1.bias"] = ("w", [cout, cin, 3, 3]), ("zero", [cout])
    out[p + "norm2.weight"], out[p + "norm2.bias"] = ("one", [cout]), ("zero", [cout])
    out[p + "conv2.weight"], out[p + "conv2.bias"] = ("w", [cout, cout, 3, 3]), ("zero", [cout])
    if cin != cout:
        out[p + "conv_shortcut.weight"], out[p + "conv_shortcut.bias"] = ("w", [cout, cin, 1, 1]), ("zero", [cout])


def _vae_mid(p, c, out):
    _resnet(p + "resnets.0.", c, c, out)
    _resnet(p + "resnets.1.", c, c, out)
    a = p + "attentions.0."
    out[a + "group_norm.weight"], out[a + "group_norm.bias"] = ("one", [c]), ("zero", [c])
    for n in ("to_q", "to_k", "to_v", "to_out.0"):
        out[a + n + ".weight"], out[a + n + ".bias"] = ("w", [c, c]), ("zero", [c])


def vae_shapes(cfg):
    """Names and shapes of diffusers' AutoencoderKL (SD v1 block types) state dict."""
    ch = list(cfg["block_out_channels"])
    L = cfg.get("layers_per_block", 2)
    lat = cfg.get("latent_channels", 4)
    out = {}
    out["encoder.conv_in.weight"], out["encoder.conv_in.bias"] = ("w", [ch[0], cfg.get("in_channels", 3), 3, 3]), \
        ("zero", [ch[0]])
    c = ch[0]
    for i, co in enumerate(ch):
        for j in range(L):
            _resnet(f"encoder.down_blocks.{i}.resnets.{j}.", c if j == 0 else co, co, out)
        c = co
        if i < len(ch) - 1:
            out[f"encoder.down_blocks.{i}.downsamplers.0.conv.weight"] = ("w", [co, co, 3, 3])
            out[f"encoder.down_blocks.{i}.downsamplers.0.conv.bias"] = ("zero", [co])
    _vae_mid("encoder.mid_block.", ch[-1], out)
    out["encoder.conv_norm_out.weight"], out["encoder.conv_norm_out.bias"] = ("one", [ch[-1]]), ("zero", [ch[-1]])
    out["encoder.conv_out.weight"], out["encoder.conv_out.bias"] = ("w", [2 * lat, ch[-1], 3, 3]), ("zero", [2 * lat])
    out["quant_conv.weight"], out["quant_conv.bias"] = ("w", [2 * lat, 2 * lat, 1, 1]), ("zero", [2 * lat])
    out["post_quant_conv.weight"], out["post_quant_conv.bias"] = ("w", [lat, lat, 1, 1]), ("zero", [lat])
    rch = ch[::-1]
    out["decoder.conv_in.weight"], out["decoder.conv_in.bias"] = ("w", [rch[0], lat, 3, 3]), ("zero", [rch[0]])
    _vae_mid("decoder.mid_block.", rch[0], out)
    c = rch[0]
    for i, co in enumerate(rch):
        for j in range(L + 1):
            _resnet(f"decoder.up_blocks.{i}.resnets.{j}.", c if j == 0 else co, co, out)
        c = co
        if i < len(rch) - 1:
            out[f"decoder.up_blocks.{i}.upsamplers.0.conv.weight"] = ("w", [co, co, 3, 3])
            out[f"decoder.up_blocks.{i}.upsamplers.0.conv.bias"] = ("zero", [co])
    out["decoder.conv_norm_out.weight"], out["decoder.conv_norm_out.bias"] = ("one", [ch[0]]), ("zero", [ch[0]])
    out["decoder.conv_out.weight"] = ("w", [cfg.get("out_channels", 3), ch[0], 3, 3])
    out["decoder.conv_out.bias"] = ("zero", [cfg.get("out_channels", 3)])
    return out


def _clip_layers(prefix, D, I, n, out):
    for l in range(n):
        p = f"{prefix}encoder.layers.{l}."
        for nm in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{nm}.weight"], out[p + f"self_attn.{nm}.bias"] = ("w", [D, D]), ("zero", [D])
        for nm in ("layer_norm1", "layer_norm2"):
            out[p + nm + ".weight"], out[p + nm + ".bias"] = ("one", [D]), ("zero", [D])
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = ("w", [I, D]), ("zero", [I])
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = ("w", [D, I]), ("zero", [D])


def clip_text_shapes(cfg):
    """transformers CLIPTextModel state dict (text_model.*)."""
    D, I = cfg["hidden_size"], cfg["intermediate_size"]
    out = {"text_model.embeddings.token_embedding.weight": ("emb", [cfg["vocab_size"], D]),
           "text_model.embeddings.position_embedding.weight": ("emb", [cfg["max_position_embeddings"], D])}
    _clip_layers("text_model.", D, I, cfg["num_hidden_layers"], out)
    out["text_model.final_layer_norm.weight"], out["text_model.final_layer_norm.bias"] = ("one", [D]), ("zero", [D])
    return out


def clip_vision_shapes(cfg):
    """transformers CLIPVisionModel state dict (vision_model.*)."""
    D, I, P = cfg["hidden_size"], cfg["intermediate_size"], cfg["patch_size"]
    n_pos = (cfg["image_size"] // P) ** 2 + 1
    out = {"vision_model.embeddings.class_embedding": ("emb", [D]),
           "vision_model.embeddings.patch_embedding.weight": ("w", [D, cfg.get("num_channels", 3), P, P]),
           "vision_model.embeddings.position_embedding.weight": ("emb", [n_pos, D])}
    out["vision_model.pre_layrnorm.weight"], out["vision_model.pre_layrnorm.bias"] = ("one", [D]), ("zero", [D])
    _clip_layers("vision_model.", D, I, cfg["num_hidden_layers"], out)
    out["vision_model.post_layernorm.weight"], out["vision_model.post_layernorm.bias"] = ("one", [D]), ("zero", [D])
    return out


def random_weights(shapes, seed):
    """Weights ~ N(0, 1/fan_in), embeddings ~ N(0, 0.02^2), norm scales 1, biases 0; one generator."""
    import torch
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        kind, shape = shapes[name]
        if kind == "one":
            out[name] = torch.ones(shape)
        elif kind == "zero":
            out[name] = torch.zeros(shape)
        elif kind == "emb":
            out[name] = 0.02 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            out[name] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return out


CLIP_VIT_B16 = {"architectures": ["CLIPVisionModel"], "attention_dropout": 0.0, "dropout": 0.0,
                "hidden_act": "quick_gelu", "hidden_size": 768, "image_size": 224, "initializer_factor": 1.0,
                "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
                "model_type": "clip_vision_model", "num_attention_heads": 12, "num_channels": 3,
                "num_hidden_layers": 12, "patch_size": 16, "projection_dim": 512, "torch_dtype": "float32"}


def make_model(args):
    import torch
    from safetensors.torch import load_file, save_file
    src, dst = args.from_config, args.make_model
    tiny = os.path.join(ROOT, "models", "tiny")
    unet_cfg = json.load(open(os.path.join(src, "unet.json")))
    for sub in ("unet", "vae", "text_encoder"):
        os.makedirs(os.path.join(dst, sub), exist_ok=True)
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(os.path.join(tiny, sub), os.path.join(dst, sub), dirs_exist_ok=True)
    shutil.copy(os.path.join(tiny, "model_index.json"), os.path.join(dst, "model_index.json"))
    # UNet: stylediff's weights, reshaped to diffusers' shapes (taken from a meta-device module)
    sys.path.insert(0, HERE)
    import sd_unet_torch
    with torch.device("meta"):
        want = {k: v.shape for k, v in sd_unet_torch.SDUNet(unet_cfg).state_dict().items()}
    w = load_file(args.unet_weights)
    if set(w) != set(want):
        raise SystemExit(f"invert_torch: {args.unet_weights} does not hold the UNet of {src}: "
                         f"missing {sorted(set(want) - set(w))[:5]}, unexpected {sorted(set(w) - set(want))[:5]}")
    w = {k: v.reshape(want[k]).contiguous() for k, v in w.items()}
    save_file(w, os.path.join(dst, "unet", "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    del w
    json.dump(unet_cfg, open(os.path.join(dst, "unet", "config.json"), "w"), indent=2)
    vae_cfg = json.load(open(os.path.join(src, "vae.json")))
    save_file(random_weights(vae_shapes(vae_cfg), 1), os.path.join(dst, "vae", "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    json.dump(vae_cfg, open(os.path.join(dst, "vae", "config.json"), "w"), indent=2)
    te_cfg = json.load(open(os.path.join(src, "text_encoder.json")))
    save_file(random_weights(clip_text_shapes(te_cfg), 2), os.path.join(dst, "text_encoder", "model.safetensors"),
              metadata={"format": "pt"})
    json.dump(te_cfg, open(os.path.join(dst, "text_encoder", "config.json"), "w"), indent=2)
    if args.clip_out:
        os.makedirs(args.clip_out, exist_ok=True)
        save_file(random_weights(clip_vision_shapes(CLIP_VIT_B16), 3), os.path.join(args.clip_out, "model.safetensors"),
                  metadata={"format": "pt"})
        json.dump(CLIP_VIT_B16, open(os.path.join(args.clip_out, "config.json"), "w"), indent=2)
    log(f"invert_torch: wrote {dst}" + (f" and {args.clip_out}" if args.clip_out else ""))
    return 0


# ------------------------------------------------------------------------------------------------
# --check
# ------------------------------------------------------------------------------------------------
def run_check():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    sys.path.insert(0, os.path.join(ROOT, "tests", "oracle"))
    from common import ValueSubstitutionProcessor
    ok = True
    for name in ("tiny", "sd-v1.5"):
        cfg = json.load(open(os.path.join(ROOT, "configs", name, "vae.json")))
        ref = {k: list(v.shape) for k, v in AutoencoderKL.from_config(cfg).state_dict().items()}
        mine = {k: s for k, (_, s) in vae_shapes(cfg).items()}
        same = ref == mine
        ok &= same
        print(f"vae_shapes({name}) vs diffusers AutoencoderKL: {'same' if same else 'DIFFERENT'} ({len(ref)} tensors)")
    for name in ("tiny", "sd-v1.5"):
        from transformers import CLIPTextConfig, CLIPTextModel
        cfg = json.load(open(os.path.join(ROOT, "configs", name, "text_encoder.json")))
        with torch.device("meta"):
            ref = {k: list(v.shape) for k, v in CLIPTextModel(CLIPTextConfig(**cfg)).state_dict().items()
                   if not k.endswith("position_ids")}
        ref = {k if k.startswith("text_model.") else "text_model." + k: s for k, s in ref.items()}  # transformers 5
        mine = {k: s for k, (_, s) in clip_text_shapes(cfg).items()}
        same = ref == mine
        ok &= same
        print(f"clip_text_shapes({name}) vs transformers CLIPTextModel: {'same' if same else 'DIFFERENT'}")
    from transformers import CLIPVisionConfig, CLIPVisionModel
    with torch.device("meta"):
        ref = {k: list(v.shape) for k, v in CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_B16)).state_dict().items()
               if not k.endswith("position_ids")}
    ref = {k if k.startswith("vision_model.") else "vision_model." + k: s for k, s in ref.items()}
    mine = {k: s for k, (_, s) in clip_vision_shapes(CLIP_VIT_B16).items()}
    ok &= ref == mine
    print(f"clip_vision_shapes(ViT-B/16) vs transformers CLIPVisionModel: {'same' if ref == mine else 'DIFFERENT'}")

    # attention: ours vs common.ValueSubstitutionProcessor / AttnProcessor; plain UNet vs diffusers
    cfg = json.load(open(os.path.join(ROOT, "models", "tiny", "unet", "config.json")))
    torch.manual_seed(0)
    ref = UNet2DConditionModel.from_config(cfg).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    c = torch.randn(1, 77, 32, generator=g)
    value = torch.randn(1, 77, 32, generator=g)
    q_len = 64
    with torch.no_grad():
        st = {"value": value, "capture": [], "q_len": q_len}
        ref.set_attn_processor(ValueSubstitutionProcessor(st))
        want = ref(x, 981, encoder_hidden_states=c).sample
        want_maps = st["capture"]
        ref.set_attn_processor(AttnProcessor())
        want_plain = ref(x, 981, encoder_hidden_states=c).sample
        ref.set_attn_processor(DiffusersProcessor())
        sys.path.insert(0, HERE)
        import sd_unet_torch
        sd_unet_torch.Attention.forward = attention
        plain = sd_unet_torch.SDUNet(cfg).eval()
        plain.load_state_dict(ref.state_dict(), strict=True)
        for mode in ("explicit", "sdpa"):
            STATE.mode = mode
            for which, m, call in (("diffusers", ref, lambda m: m(x, 981, encoder_hidden_states=c).sample),
                                   ("plain", plain, lambda m: m(x, 981, c))):
                STATE.value, STATE.capture, STATE.q_len = value, [], q_len
                got = call(m)
                maps = STATE.capture
                STATE.value, STATE.capture = None, None
                err = ((got - want).abs().max() / want.abs().max()).item()
                merr = max(((a - b).abs().max().item() for a, b in zip(maps, want_maps)), default=1.0)
                good = err < (1e-6 if mode == "explicit" else 1e-5) and len(maps) == len(want_maps) == 5 and merr < 1e-6
                ok &= good
                print(f"{which:9s} {mode:8s} substituted eps vs ValueSubstitutionProcessor: max rel err {err:.3g}; "
                      f"{len(maps)} maps (want {len(want_maps)}), max abs err {merr:.3g}  {'ok' if good else 'FAIL'}")
                got = call(m)
                err = ((got - want_plain).abs().max() / want_plain.abs().max()).item()
                good = err < (1e-6 if mode == "explicit" else 1e-5)
                ok &= good
                print(f"{which:9s} {mode:8s} plain eps vs AttnProcessor: max rel err {err:.3g}  {'ok' if good else 'FAIL'}")
    print("check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="diffusers-layout model folder (models/tiny, or one --make-model wrote)")
    ap.add_argument("--config", help="UNet config.json (instead of --model)")
    ap.add_argument("--weights", help="UNet weights for --config (`stylediff bench unet --save-weights`)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--what", default="ddim,nulltext,sd", help="comma-separated: ddim, nulltext, sd")
    ap.add_argument("--modes", default="fp32-explicit",
                    help="comma-separated fp32-explicit | fp32-sdpa, each optionally -frozen (default fp32-explicit)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of DDIM/Null-text (default 50)")
    ap.add_argument("--steps-sd", type=int, default=30, help="DDIM steps of StyleDiffusion (default 30)")
    ap.add_argument("--inner", type=int, default=10, help="Null-text iterations per timestep (default 10)")
    ap.add_argument("--inner-sd", type=int, default=100,
                    help="StyleDiffusion iterations at timestep 0 (--reconstruct only; default 100)")
    ap.add_argument("--early-stop", action="store_true", help="Null-text timing: stop early as the reference")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--size", type=int, default=0, help="image side in pixels (latent = size/8); default: config")
    ap.add_argument("--reps", type=int, default=10, help="timed units of nulltext and sd (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed units first (default 2)")
    ap.add_argument("--reps-ddim", type=int, default=None, help="timed DDIM inversions (default: --reps)")
    ap.add_argument("--warmup-ddim", type=int, default=1, help="untimed DDIM inversions (default 1)")
    ap.add_argument("--impl", choices=("auto", "diffusers", "plain"), default="auto")
    ap.add_argument("--label", help="model name in the rows")
    ap.add_argument("--threads", type=int, default=0, help="CPU: torch.set_num_threads (default: torch's)")
    ap.add_argument("--tsv", action="store_true")
    ap.add_argument("--reconstruct", metavar="DIR", help="full inversions + reconstruction MSE (see above)")
    ap.add_argument("--recon-methods", default="ddim,nulltext,stylediffusion",
                    help="--reconstruct: which methods (default ddim,nulltext,stylediffusion)")
    ap.add_argument("--make-model", metavar="DIR", help="write a random-weight model folder (see above)")
    ap.add_argument("--from-config", metavar="DIR", default=os.path.join(ROOT, "configs", "sd-v1.5"))
    ap.add_argument("--unet-weights", metavar="W", help="--make-model: the UNet weights stylediff wrote")
    ap.add_argument("--clip-out", metavar="DIR", help="--make-model: also write a random CLIP ViT-B/16 folder")
    ap.add_argument("--check", action="store_true", help="self-check (needs diffusers)")
    ap.add_argument("--grad-io", metavar="FILE", help="one gradient step: parity and timing (see run_grad)")
    ap.add_argument("--grad-what", default="forward,context,value", help="--grad-io: steps to time")
    args = ap.parse_args()
    if args.reps_ddim is None:
        args.reps_ddim = args.reps

    import torch
    if args.check:
        return run_check()
    if args.make_model:
        if not args.unet_weights:
            raise SystemExit("invert_torch: --make-model needs --unet-weights")
        return make_model(args)
    if not args.model and not args.config:
        raise SystemExit("invert_torch: pass --model DIR or --config unet.json")
    if args.device == "cuda" and not torch.cuda.is_available():
        log("invert_torch: torch sees no CUDA device; nothing to time")
        return 0
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, weights, label = unet_files(args)
    torch.manual_seed(0)
    with torch.device(dev):
        model, impl, call = build_unet(cfg, args.impl)
    if weights:
        load_state(model, weights)
    else:
        log("invert_torch: no UNet weights: PyTorch's own random init (not the weights stylediff runs)")
    model = model.to(dev).float().eval()
    log(f"invert_torch: {impl}, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name(0) if dev.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'}, "
        f"UNet {sum(p.numel() for p in model.parameters()):,} parameters, model {label}")
    bench = Bench(args, model, call, dev)
    if args.reconstruct:
        run_reconstruct(args, bench, cfg, label)
        return 0
    if args.grad_io:
        run_grad(args, bench, cfg, label)
        return 0
    run_timing(args, bench, cfg, label, impl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
