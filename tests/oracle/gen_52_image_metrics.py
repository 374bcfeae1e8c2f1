#!/usr/bin/env python3
"""gen_52_image_metrics.py: reconstruction PSNR and SSIM as scikit-image computes them
(stylediffusion.md §6.4: uint8 RGB, PSNR = 10 log10(255² / MSE); SSIM with skimage's defaults:
7x7 uniform window, K1 0.01, K2 0.03, sample covariance, data_range 255, mean over channels).

Writes tests/fixtures/image_metrics.safetensors (F64):
  psnr_<case>, ssim_<case>   (1,) for the cases below, each a pair of uint8 RGB images
  image_a_<case>, image_b_<case>   (H, W, 3) U8 the pair itself
Cases: a photo crop vs a noisy copy, vs a shifted copy, vs itself (PSNR inf, SSIM 1), and a
non-square 37x23 random pair (sizes not multiple of the window).

Run from the repository root: .venv/bin/python tests/oracle/gen_52_image_metrics.py
(scikit-image 0.26, numpy, Pillow for the committed file.)"""
import os

import numpy as np
from PIL import Image
from safetensors.numpy import save_file
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "image_metrics.safetensors")

rng = np.random.default_rng(52)
photo = np.asarray(Image.open(os.path.join(ROOT, "data", "images", "chelsea.png")).convert("RGB"))
crop = photo[40:104, 100:164].copy()  # 64x64
noisy = np.clip(crop.astype(np.int32) + rng.integers(-20, 21, crop.shape), 0, 255).astype(np.uint8)
shifted = np.roll(crop, 2, axis=1)
a_rand = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
b_rand = np.clip(a_rand.astype(np.int32) + rng.integers(-60, 61, a_rand.shape), 0, 255).astype(np.uint8)
cases = {"noisy": (crop, noisy), "shifted": (crop, shifted), "same": (crop, crop), "odd": (a_rand, b_rand)}

out = {}
for name, (a, b) in cases.items():
    out[f"image_a_{name}"] = np.ascontiguousarray(a)
    out[f"image_b_{name}"] = np.ascontiguousarray(b)
    with np.errstate(divide="ignore"):
        out[f"psnr_{name}"] = np.array([peak_signal_noise_ratio(a, b, data_range=255)], dtype=np.float64)
    out[f"ssim_{name}"] = np.array([structural_similarity(a, b, channel_axis=-1, data_range=255)], dtype=np.float64)
    print(f"{name:8s} psnr {out[f'psnr_{name}'][0]:.6f} ssim {out[f'ssim_{name}'][0]:.9f}")
save_file(out, OUT)
print("wrote", OUT)
