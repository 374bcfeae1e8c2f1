#!/usr/bin/env python3
"""gen_50_lpips.py: the LPIPS (AlexNet, v0.1) and NS-LPIPS oracle for tests/unit/test_lpips.c.

The metric is the `lpips` PyPI package (0.1.4) as StyleDiffusion's eval_metrics/ns_lpips.py calls
it (stylediffusion.md §6.1): lpips.LPIPS(net='alex') with forward(in0, in1) at normalize=False.

Weights. The published AlexNet trunk (torchvision's ImageNet checkpoint) cannot be downloaded
here, and its 2.47 M parameters would take 5 MB even in fp16, over the fixture budget. So:
  * the model is built as lpips.LPIPS(net='alex', pretrained=True, pnet_rand=True): pnet_rand
    makes torchvision build AlexNet with weights=None (no download); pretrained=True loads the
    real lin layers shipped inside the wheel (lpips/weights/v0.1/alex.pth);
  * the trunk's weights are then replaced by a hash formula (hash_weights below) that the C test
    evaluates identically: every value is an 11-bit integer times a power of two, exact in
    float32 on both sides, so no weight needs to be stored;
  * the lin weights are exported, as the converter names them, to lpips_alex_lin.safetensors.
The architecture, every constant and every op are the package's; only the trunk's numbers are
synthetic. tools/convert_lpips.py builds the real file from torchvision's checkpoint.

Files written (tests/fixtures/):
  lpips_alex_lin.safetensors  lin{0..4}.model.1.weight (1, C, 1, 1) F32 from the wheel
  lpips.safetensors           F32 / I64 tensors:
    feat_in          (2, 3, 67, 67)  input of the trunk check, uniform [-1, 1) (seed 5000)
    feat_relu{1..5}  (2, C, h, w)    net.forward(scaling_layer(feat_in)): relu1..relu5 (67 -> 16,
                                     7, 3, 3, 3: odd sizes exercise the floor of conv and pool)
    pair_in0/in1     (3, 3, 64, 64)  three pairs: random/random, identical, x vs x + noise
    dist             (3,)            LPIPS(in0, in1), normalize=False (the default)
    dist_layers      (3, 5)          each layer's spatially averaged lin output (retPerLayer)
    dist_normalize   (3,)            LPIPS(in0, in1, normalize=True): inputs taken in [0, 1]
    ns_mask_gray     (256, 256)      NS-LPIPS mask: Grayscale() of ToTensor(Resize(mask))
    ns_lpips         (1,)            NS-LPIPS of lpips_ns_{source,edited,mask}.png, as the
                                     reference computes it ([0, 1] inputs, normalize=False)
    ns_lpips_correct (1,)            the same with normalize=True (inputs mapped to [-1, 1])
    bilinear_hash    (K,) I64        sd_hash64 (FNV-1a) of PIL's BILINEAR resize of the cases
                                     in BILINEAR_CASES (RGB bytes), as signed int64
  lpips_ns_source.png, lpips_ns_edited.png, lpips_ns_mask.png: the NS-LPIPS triple, written here
    (a crop of data/images/chelsea.png, an "edit" of it at another size, a soft background mask).

Run from the repository root: .venv/bin/python tests/oracle/gen_50_lpips.py
(lpips 0.1.4, torchvision 0.29, Pillow 13.0, torch 2.15 for the committed files.)
"""
import os
import warnings
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from common import FIXTURE_DIR, ROOT, save_fixture, setup_determinism, uniform  # noqa: E402

GEN = "tests/oracle/gen_50_lpips.py"

# features.<index> of torchvision's AlexNet: (conv index, out, in, kernel, weight exponent). A weight
# is (k - 1000) * 2^-(10 + e) with k in [0, 2000]; the bias uses e + 3. The exponents keep each
# layer's output on the scale of its input (about sqrt(fan_in) * 2^-e / sqrt(3) per layer).
TRUNK = [(0, 64, 3, 11, 4), (3, 192, 64, 5, 5), (6, 384, 192, 3, 5), (8, 256, 384, 3, 5),
         (10, 256, 256, 3, 5)]

BILINEAR_CASES = [  # (input PNG under tests/fixtures, width, height)
    ("image_synth_37x53.png", 20, 100),
    ("image_synth_37x53.png", 100, 20),
    ("image_synth_37x53.png", 256, 256),
    ("image_synth_600x400.png", 256, 256),
    ("image_synth_600x400.png", 77, 51),
    ("image_synth_600x400.png", 600, 133),
    ("image_synth_7x5.png", 13, 2),
    ("image_synth_7x5.png", 1, 1),
    ("image_astronaut_crop_128x128.png", 256, 256),
    ("image_coffee_crop_200x150.png", 256, 256),
]


def hash_weights(salt, count, exponent):
    """The C test's lpips_hash_weights: uint32 mixing of (index, salt), an 11-bit integer k in
    [0, 2000], value (k - 1000) * 2^-(10 + exponent), exact in float32."""
    i = np.arange(count, dtype=np.uint64)
    h = ((i * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) ^ np.uint64((salt * 0x9E3779B9) & 0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0x5BD1E995)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    k = (h % np.uint64(2001)).astype(np.int64) - 1000
    return torch.from_numpy(np.ldexp(k.astype(np.float64), -(10 + exponent)).astype(np.float32))


def build_model():
    # torchvision warns that `pretrained` is deprecated: lpips 0.1.4 still passes it.
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
    try:
        import lpips
    except ImportError:
        sys.exit("gen_50_lpips.py: the lpips package is missing: .venv/bin/pip install lpips==0.1.4")

    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    features = torch.nn.Sequential(*[m for s in (model.net.slice1, model.net.slice2, model.net.slice3,
                                                 model.net.slice4, model.net.slice5) for m in s])
    with torch.no_grad():
        for layer, (index, c_out, c_in, k, e) in enumerate(TRUNK):
            conv = features[index]
            assert isinstance(conv, torch.nn.Conv2d) and conv.weight.shape == (c_out, c_in, k, k), index
            conv.weight.copy_(hash_weights(2 * layer + 1, conv.weight.numel(), e).view_as(conv.weight))
            conv.bias.copy_(hash_weights(2 * layer + 2, conv.bias.numel(), e + 3))
    # The architecture the C code assumes, checked rather than trusted.
    expect = ["Conv2d(3, 64, kernel_size=(11, 11), stride=(4, 4), padding=(2, 2))", "ReLU(inplace=True)",
              "MaxPool2d(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False)",
              "Conv2d(64, 192, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))", "ReLU(inplace=True)",
              "MaxPool2d(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False)",
              "Conv2d(192, 384, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))", "ReLU(inplace=True)",
              "Conv2d(384, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))", "ReLU(inplace=True)",
              "Conv2d(256, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))", "ReLU(inplace=True)"]
    assert [repr(m) for m in features] == expect, [repr(m) for m in features]
    assert [len(s) for s in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                             model.net.slice5)] == [2, 3, 3, 2, 2]
    return model


def ns_lpips_triple():
    """Writes the NS-LPIPS inputs: a source crop, an edited version of another size, a soft mask."""
    cat = Image.open(os.path.join(ROOT, "data", "images", "chelsea.png")).convert("RGB")
    source = cat.crop((100, 20, 340, 200)).resize((96, 72), Image.BICUBIC)
    # The "edit": the centre recoloured and blurred, the background slightly changed, saved at
    # another size so every image takes its own resize path to 256.
    src = np.asarray(source).astype(np.int32)
    edited = src.copy()
    edited[18:54, 30:70] = edited[18:54, 30:70][:, :, ::-1] // 2 + 90
    edited = np.clip(edited + (np.arange(96)[None, :, None] % 7) - 3, 0, 255).astype(np.uint8)
    edited = Image.fromarray(edited, "RGB").resize((80, 104), Image.BICUBIC)
    # storemask.py's kind of mask: a 16x16 map scaled to 0..255, bicubic-upscaled, inverted
    # (background = 255 - foreground), stored as 3 channels; here a blob in the centre.
    yy, xx = np.mgrid[0:16, 0:16]
    fg = np.exp(-(((yy - 7.5) / 4.0) ** 2 + ((xx - 8.0) / 5.0) ** 2))
    fg = np.uint8(255 * fg / fg.max())
    fg = Image.fromarray(np.stack([fg] * 3, axis=-1), "RGB").resize((40, 40), Image.BICUBIC)
    mask = Image.fromarray(255 - np.asarray(fg), "RGB")
    paths = {}
    for name, img in (("source", source), ("edited", edited), ("mask", mask)):
        path = os.path.join(FIXTURE_DIR, f"lpips_ns_{name}.png")
        img.save(path, "PNG")
        os.chmod(path, 0o644)
        paths[name] = path
        print(f"  wrote {os.path.relpath(path, ROOT)}  ({os.path.getsize(path):,} bytes)")
    return paths


def reference_ns_lpips(model, paths, normalize):
    """eval_metrics/ns_lpips.py line for line (to_tensor, get_mask, the masked LPIPS)."""
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((256, 256)), transforms.ToTensor()])

    def to_tensor(path):
        return transform(Image.open(path).convert("RGB"))

    gray = transforms.Grayscale()(to_tensor(paths["mask"]))
    binary = (gray > 0.5).float()  # computed, then discarded by the reference
    binary = gray
    mask = binary.repeat(3, 1, 1)
    src_bg = torch.stack([to_tensor(paths["source"])]) * torch.stack([mask])
    tgt_bg = torch.stack([to_tensor(paths["edited"])]) * torch.stack([mask])
    d = model(src_bg, tgt_bg, normalize=normalize)
    return d.mean().reshape(1), gray[0]


def fnv1a64_signed(data):
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= (1 << 63) else h


def main():
    setup_determinism()
    model = build_model()
    out = {}

    # Trunk features (the ScalingLayer applied first, as LPIPS.forward does).
    feat_in = uniform((2, 3, 67, 67), 5000, -1.0, 1.0)
    with torch.no_grad():
        feats = model.net(model.scaling_layer(feat_in))
    out["feat_in"] = feat_in
    for k, f in enumerate(feats):
        out[f"feat_relu{k + 1}"] = f.clone()
        print(f"  relu{k + 1}: {tuple(f.shape)}  mean {f.mean().item():.4g}  zero {(f == 0).float().mean().item():.2f}")

    # Distances: random pair, identical pair, a pair differing by small noise.
    in0 = uniform((3, 3, 64, 64), 5001, -1.0, 1.0)
    in1 = uniform((3, 3, 64, 64), 5002, -1.0, 1.0)
    in1[1] = in0[1]
    in1[2] = (in0[2] + uniform((3, 64, 64), 5003, -0.05, 0.05)).clamp(-1, 1)
    with torch.no_grad():
        dist, layers = model(in0, in1, retPerLayer=True)
        dist_norm = model((in0 + 1) / 2, (in1 + 1) / 2, normalize=True)
    out["pair_in0"], out["pair_in1"] = in0, in1
    out["dist"] = dist.reshape(3)
    out["dist_layers"] = torch.cat([r.reshape(3, 1) for r in layers], dim=1)
    out["dist_normalize"] = dist_norm.reshape(3)
    assert out["dist"][1].item() == 0.0, "identical images must give exactly 0"
    print(f"  dist {out['dist'].tolist()}  normalize=True {out['dist_normalize'].tolist()}")

    # NS-LPIPS on the triple.
    paths = ns_lpips_triple()
    with torch.no_grad():
        ns, gray = reference_ns_lpips(model, paths, normalize=False)
        ns_correct, _ = reference_ns_lpips(model, paths, normalize=True)
    out["ns_mask_gray"] = gray.contiguous()
    out["ns_lpips"] = ns
    out["ns_lpips_correct"] = ns_correct
    print(f"  NS-LPIPS {ns.item():.9g} (reference, [0, 1] inputs), {ns_correct.item():.9g} ([-1, 1])")

    # PIL BILINEAR resize (torchvision Resize on a PIL image) of fixed inputs, as hashes.
    hashes = []
    for name, w, h in BILINEAR_CASES:
        img = Image.open(os.path.join(FIXTURE_DIR, name)).convert("RGB")
        res = np.ascontiguousarray(np.asarray(img.resize((w, h), Image.BILINEAR)))
        hashes.append(fnv1a64_signed(res.tobytes()))
    out["bilinear_hash"] = torch.tensor(hashes, dtype=torch.int64)

    lin = {f"lin{k}.model.1.weight": model.lins[k].model[1].weight.detach().clone() for k in range(5)}
    for k, c in enumerate((64, 192, 384, 256, 256)):
        assert lin[f"lin{k}.model.1.weight"].shape == (1, c, 1, 1)
    save_fixture("lpips_alex_lin.safetensors", lin, "lpips 0.1.4 weights/v0.1/alex.pth lin layers", GEN)
    save_fixture("lpips.safetensors", out, "LPIPS alex v0.1 with hash trunk weights, NS-LPIPS", GEN)
    total = sum(os.path.getsize(os.path.join(FIXTURE_DIR, f)) for f in os.listdir(FIXTURE_DIR)
                if f.startswith("lpips"))
    print(f"  lpips fixtures: {total:,} bytes")
    assert total < 3_000_000


if __name__ == "__main__":
    main()
