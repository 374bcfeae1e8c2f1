#!/usr/bin/env python3
"""convert_lpips.py: builds the LPIPS (AlexNet, v0.1) weights file stylediff reads (include/sd/lpips.h).

NS-LPIPS (stylediffusion.md §6.1) runs lpips.LPIPS(net='alex'), whose weights come from two places:
  * the AlexNet trunk: torchvision's ImageNet checkpoint, alexnet-owt-7be5be79.pth (what
    torchvision.models.alexnet(weights="IMAGENET1K_V1") downloads to ~/.cache/torch/hub/checkpoints/);
  * the five lin layers: weights/v0.1/alex.pth inside the `lpips` package (pip install lpips).
This script copies the trunk's `features.*` tensors (torchvision names: features.0/3/6/8/10
.weight/.bias) and the lin layers (lin0..lin4.model.1.weight, the package's names) into one
float32 safetensors file, checking every name and shape. The classifier is left out.

Usage:
  python tools/convert_lpips.py --alexnet alexnet-owt-7be5be79.pth [--lin alex.pth] -o lpips_alex.safetensors
--lin defaults to the installed lpips package's weights/v0.1/alex.pth. Needs torch and
safetensors (and lpips when --lin is not given). Nothing is downloaded.
"""
import argparse
import os
import sys

# torchvision AlexNet `features` convolutions: index -> (out, in, kernel)
TRUNK = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
LIN_CHANNELS = (64, 192, 384, 256, 256)


def fail(msg):
    sys.exit(f"convert_lpips.py: {msg}")


def load_state_dict(path, what):
    import torch

    if not os.path.isfile(path):
        fail(f"{path}: missing ({what})")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or non-checkpoint file: say which one
        fail(f"{path}: cannot be read as a PyTorch checkpoint ({what}): {e}")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        fail(f"{path}: expected a state dict ({what}), got {type(sd).__name__}")
    # checkpoints saved from a wrapper (lpips.LPIPS, nn.DataParallel) carry a prefix
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def take(sd, path, name, shape, aliases=()):
    for key in (name,) + tuple(aliases):
        if key in sd:
            t = sd[key]
            if tuple(t.shape) != tuple(shape):
                fail(f"{path}: tensor '{key}': expected shape {tuple(shape)}, got {tuple(t.shape)}")
            return t.detach().float().contiguous()
    fail(f"{path}: missing tensor '{name}' (expected shape {tuple(shape)})")


def default_lin_path():
    try:
        import lpips
    except ImportError:
        fail("--lin not given and the lpips package is not installed (pip install lpips, or pass --lin alex.pth)")
    return os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alexnet", required=True, help="torchvision AlexNet checkpoint (alexnet-owt-7be5be79.pth)")
    ap.add_argument("--lin", help="lpips weights/v0.1/alex.pth (default: the installed package's)")
    ap.add_argument("-o", "--output", required=True, help="safetensors file to write")
    args = ap.parse_args()

    from safetensors.torch import save_file

    lin_path = args.lin or default_lin_path()
    trunk = load_state_dict(args.alexnet, "torchvision AlexNet weights")
    lin = load_state_dict(lin_path, "lpips v0.1 alex lin layers")

    out = {}
    for index, (c_out, c_in, k) in TRUNK.items():
        # a checkpoint of lpips' own module (net.sliceN.<index>) is accepted too
        slice_no = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}[index]
        for part, shape in (("weight", (c_out, c_in, k, k)), ("bias", (c_out,))):
            out[f"features.{index}.{part}"] = take(trunk, args.alexnet, f"features.{index}.{part}", shape,
                                                   aliases=(f"net.slice{slice_no}.{index}.{part}",))
    for i, c in enumerate(LIN_CHANNELS):
        out[f"lin{i}.model.1.weight"] = take(lin, lin_path, f"lin{i}.model.1.weight", (1, c, 1, 1))

    tmp = args.output + ".tmp"
    save_file(out, tmp, metadata={"format": "stylediff lpips alex v0.1 (tools/convert_lpips.py)"})
    os.replace(tmp, args.output)
    n = sum(t.numel() for t in out.values())
    print(f"wrote {args.output}: {len(out)} tensors, {n:,} parameters")


if __name__ == "__main__":
    main()
