#!/usr/bin/env python3
"""Times PyTorch on the same UNet, the same weights and the same card as `stylediff bench unet`.

Same weights: `stylediff bench unet --save-weights W.safetensors` writes the exact UNet weights it
times (a checkpoint's, or the random weights it synthesized for a config) under their diffusers
names; this script loads them into diffusers' UNet2DConditionModel (or, when diffusers is not
installed, into sd_unet_torch.SDUNet, the same module tree in plain PyTorch). 1x1-conv weights that
stylediff synthesized as matrices are reshaped.

Same numbers first: with --io IO.safetensors (from `stylediff bench unet --save-io`) the model runs
once in fp32 (TF32 off) on stylediff's sample, context and timestep and prints the max relative
error against stylediff's eps, for explicit attention and for SDPA.

Then every --modes entry is timed: dtype fp32 | fp16 | bf16, attention sdpa (AttnProcessor2_0,
F.scaled_dot_product_attention) | explicit (AttnProcessor, softmax(QKᵀ)V as the reference code
runs it); warm-up calls, then CUDA events around each of --iters calls, median and minimum. fp32
modes run with TF32 off (torch.backends.cuda.matmul / cudnn .allow_tf32 = False).

Output: a table, or with --tsv one tab-separated row per mode in the format bench/gpu_check.sh
reads (impl, model, device, precision, mode, batch, latent, median ms, min ms, peak MiB), and a
"parity" row per attention kind.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_model(cfg, impl):
    """(model, impl name, set_attention(mode)) with diffusers when available (and asked for)."""
    if impl in ("auto", "diffusers"):
        try:
            from diffusers import UNet2DConditionModel
            from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
            from diffusers.utils import logging as diffusers_logging
            diffusers_logging.set_verbosity_error()  # no notice on every dtype change
            model = UNet2DConditionModel.from_config(cfg)

            def set_attention(mode):
                model.set_attn_processor(AttnProcessor2_0() if mode == "sdpa" else AttnProcessor())

            import diffusers
            return model, "pytorch-diffusers-" + diffusers.__version__, set_attention
        except ImportError as e:
            if impl == "diffusers":
                raise
            log(f"reference: diffusers is not importable ({e}); using the plain-PyTorch UNet "
                "(bench/reference/sd_unet_torch.py, same module tree and arithmetic)")
    sys.path.insert(0, HERE)
    import sd_unet_torch
    model = sd_unet_torch.SDUNet(cfg)
    return model, "pytorch-plain", sd_unet_torch.set_attention_mode


def load_weights(model, path):
    import torch
    from safetensors.torch import load_file
    sd = load_file(path)
    own = model.state_dict()
    fixed = {}
    for name, t in sd.items():
        if name in own and own[name].shape != t.shape and own[name].numel() == t.numel():
            t = t.reshape(own[name].shape)  # e.g. proj_in stored (C, C), a 1x1 conv (C, C, 1, 1) here
        fixed[name] = t
    missing, unexpected = model.load_state_dict(fixed, strict=False)
    if missing or unexpected:
        raise SystemExit(f"reference: weights {path} do not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for p in model.parameters():
            if not torch.isfinite(p).all():
                raise SystemExit("reference: non-finite weights")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="UNet config.json (e.g. configs/sd-v1.5/unet.json)")
    ap.add_argument("--weights", help="safetensors written by `stylediff bench unet --save-weights`")
    ap.add_argument("--io", action="append", default=[], metavar="[TAG=]FILE",
                    help="safetensors written by `stylediff bench unet --save-io` (parity check); repeatable, "
                         "TAG names the row (e.g. exact=io_exact.safetensors)")
    ap.add_argument("--batch", default="2", help="batch size, or a comma-separated list (one model, several rows)")
    ap.add_argument("--size", type=int, default=0, help="image side in pixels (latent = size/8); default: config")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default="fp32-sdpa,fp32-explicit,fp16-sdpa,fp16-explicit,bf16-sdpa",
                    help="comma-separated DTYPE-ATTENTION entries, or 'none' (parity only)")
    ap.add_argument("--impl", choices=("auto", "diffusers", "plain"), default="auto")
    ap.add_argument("--label", default=None, help="model name printed in the rows")
    ap.add_argument("--tsv", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to try the script without a GPU)")
    args = ap.parse_args()

    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        log("reference: torch sees no CUDA device; nothing to time")
        return 0
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    cfg = json.load(open(args.config))
    torch.manual_seed(0)
    with torch.device(dev):  # parameters are created (and randomly initialised) on the GPU: seconds, not minutes
        model, impl, set_attention = build_model(cfg, "plain" if args.impl == "plain" else args.impl)
    if args.weights:
        load_weights(model, args.weights)
    else:
        log("reference: no --weights: PyTorch's own random init (not the weights stylediff timed)")
    model = model.to(dev).eval()
    label = args.label or os.path.basename(os.path.dirname(os.path.abspath(args.config)))
    log(f"reference: {impl}, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name(0) if on_gpu else 'cpu'}")

    rows = []

    def emit(row):
        rows.append(row)
        if args.tsv:
            print("\t".join(str(x) for x in row), flush=True)

    # ---- parity on stylediff's own inputs ----
    for spec in args.io:
        tag, path = spec.split("=", 1) if "=" in spec else ("stylediff", spec)
        from safetensors.torch import load_file
        io = load_file(path)
        x = io["sample"].to(dev)
        ctx = io["encoder_hidden_states"].to(dev)
        t = io["timestep"].to(dev)
        want = io["eps"].to(dev)
        with torch.inference_mode():
            for attn in ("explicit", "sdpa"):
                set_attention(attn)
                got = model(x, t, encoder_hidden_states=ctx).sample if impl.startswith("pytorch-diffusers") \
                    else model(x, t, ctx)
                err = ((got.float() - want).abs().max() / want.abs().max()).item()
                lat = f"{x.shape[2]}x{x.shape[3]}"
                emit(("parity", label, dev.type, f"fp32-{attn}", f"vs-stylediff-{tag}", x.shape[0], lat, f"{err:.3g}",
                      "", ""))
                if not args.tsv:
                    print(f"parity: stylediff {tag} eps vs PyTorch fp32 {attn}: max rel err {err:.3g}")

    # ---- timing ----
    side = (args.size // 8) if args.size else cfg.get("sample_size", 64)
    t = torch.tensor(981, device=dev)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    modes = [] if args.modes == "none" else args.modes.split(",")
    for batch, mode in ((int(b), m) for b in args.batch.split(",") for m in modes):
        gen = torch.Generator(device="cpu").manual_seed(1)
        x32 = torch.randn(batch, cfg.get("in_channels", 4), side, side, generator=gen).to(dev)
        c32 = torch.randn(batch, 77, cfg["cross_attention_dim"], generator=gen).to(dev)
        prec, attn = mode.split("-")
        dt = dtypes[prec]
        model = model.to(dt)
        set_attention(attn)
        x, c = x32.to(dt), c32.to(dt)

        def call():
            if impl.startswith("pytorch-diffusers"):
                return model(x, t, encoder_hidden_states=c).sample
            return model(x, t, c)

        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.inference_mode():
            for _ in range(args.warmup):
                call()
            if on_gpu:
                torch.cuda.synchronize()
            for _ in range(args.iters):
                if on_gpu:
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    call()
                    b.record()
                    b.synchronize()
                    times.append(a.elapsed_time(b))
                else:
                    t0 = time.perf_counter()
                    call()
                    times.append(1e3 * (time.perf_counter() - t0))
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if on_gpu else 0.0
        row = (impl, label, dev.type, mode, "eager", batch, f"{side}x{side}", f"{statistics.median(times):.3f}",
               f"{min(times):.3f}", f"{peak:.0f}")
        emit(row)
        if not args.tsv:
            print(f"{impl:28s} {label:14s} {mode:14s} batch {batch} {side}x{side}: median "
                  f"{statistics.median(times):8.2f} ms  min {min(times):8.2f} ms  peak {peak:8.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
