#!/usr/bin/env python3
"""gen_30_image_fixtures.py: writes tests/fixtures/image_* for tests/unit/test_image.c.

Every expected result is what Pillow / numpy / torch compute, because the reference code
(stylediffusion.md §1.3) is exactly those calls:

  load_512:      np.array(Image.open(p))[:, :, :3], offset crop, centre crop,
                 Image.fromarray(x).resize((512, 512))          (default filter = BICUBIC)
  image2latent:  torch.from_numpy(x).float() / 127.5 - 1
  latent2image:  ((x / 2 + 0.5).clamp(0, 1)).numpy() * 255, .astype(np.uint8)

Files written (all small; PNG is lossless, so a PNG written by PIL stores pixels exactly):
  image_cases.txt                 the manifest test_image.c walks (one case per line, see below)
  image_synth_WxH.png             synthetic hard-edged inputs (0/255 edges, 1-pixel lines, noise)
  image_resize_*.png              PIL's BICUBIC resize of an input to a target size
  image_load512_*.png             the reference load_512 (size 512, or smaller with offsets)
  image_png_*.png / image_jpeg_*  decoder inputs of many kinds, and image_expect_*.png: the RGB
                                  pixels Pillow decodes from them
  image_hostile_*                 headers with absurd or zero sizes, CMYK JPEG, GIF
  image_from_tensor_cases.bin     float32 inputs around the uint8 truncation boundaries and the
                                  uint8 latent2image gives for them (torch + numpy, float32)
  image_to_tensor_table.bin       torch's uint8 / 127.5 - 1 for all 256 values

Manifest lines (paths relative to the repository root):
  resize  <input.png> <width> <height> <expected>
  load512 <input> <left> <right> <top> <bottom> <size> <expected>
  decode  <input.png|jpg> <expected>
where <expected> is a PNG path, or fnv64:<hex> (FNV-1a of the raw RGB bytes, sd_hash64) for
outputs whose PNG would be large (upscaled photos and noise do not compress).
  fail    <input> <STATUS> <message substring>

Run from the repository root:  .venv/bin/python tests/oracle/gen_30_image_fixtures.py
Pillow 13.0.0, numpy 2.4, torch 2.x were used for the committed files. CI never runs this.
"""
import io
import warnings
import os
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
CHELSEA = "data/images/chelsea.png"
SHARED_IMAGES = "/work/shared/data/images"  # coffee / astronaut: only small crops are committed
PNG_BUDGET_PER_FILE = 30000  # larger expected outputs are stored as a hash

manifest = []
written = []


def rel(path):
    return os.path.relpath(path, ROOT)


def out_path(name):
    return os.path.join(FIX, name)


def save_png_rgb(name, arr):
    """Lossless RGB PNG via PIL; returns the repository-relative path."""
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, arr.shape
    p = out_path(name)
    Image.fromarray(arr, "RGB").save(p, optimize=True)
    written.append(p)
    return rel(p)


def save_bytes(name, data):
    p = out_path(name)
    with open(p, "wb") as f:
        f.write(data)
    written.append(p)
    return rel(p)


# ------------------------------------------------------------------------------------------------
# The reference, verbatim apart from the `size` parameter (512 in the reference).
# ------------------------------------------------------------------------------------------------

def load_512(image_path, left=0, right=0, top=0, bottom=0, size=512):
    image = np.array(Image.open(image_path))[:, :, :3]
    h, w, c = image.shape
    left = min(left, w - 1)
    right = min(right, w - left - 1)
    top = min(top, h - left - 1)
    bottom = min(bottom, h - top - 1)
    image = image[top:h - bottom, left:w - right]
    h, w, c = image.shape
    if h < w:
        offset = (w - h) // 2
        image = image[:, offset:offset + h]
    elif w < h:
        offset = (h - w) // 2
        image = image[offset:offset + w]
    image = np.array(Image.fromarray(image).resize((size, size)))
    return image


def pil_resize(arr, w, h):
    return np.array(Image.fromarray(arr, "RGB").resize((w, h), Image.BICUBIC))


# ------------------------------------------------------------------------------------------------
# Synthetic inputs: the worst case for rounding is hard 0/255 edges (the kernel's negative lobes
# push sums below 0 and above 255) next to noise and single-pixel lines.
# ------------------------------------------------------------------------------------------------

def synthetic(w, h, seed):
    rng = np.random.RandomState(seed)
    img = np.zeros((h, w, 3), np.uint8)
    # Coarse random blocks of saturated and random colours.
    for _ in range(max(4, (w * h) // 900)):
        x0, y0 = rng.randint(0, w), rng.randint(0, h)
        bw, bh = rng.randint(1, max(2, w // 3)), rng.randint(1, max(2, h // 3))
        colour = rng.choice([0, 255], 3) if rng.rand() < 0.6 else rng.randint(0, 256, 3)
        img[y0:y0 + bh, x0:x0 + bw] = colour
    # A checkerboard patch with period 1 and one with period 3.
    yy, xx = np.mgrid[0:h, 0:w]
    checker1 = ((xx + yy) % 2 == 0) & (xx < w // 4) & (yy < h // 4)
    img[checker1] = 255 - img[checker1]
    checker3 = (((xx // 3) + (yy // 3)) % 2 == 0) & (xx > 3 * w // 4) & (yy > 3 * h // 4)
    img[checker3] = [255, 0, 255]
    # Single-pixel lines, white on black and black on white.
    img[h // 2, :] = 255
    img[:, w // 3] = 0
    img[:, (2 * w) // 3, 1] = 255
    # A noisy band.
    band = slice(h // 3, h // 3 + max(1, h // 25))
    img[band] = rng.randint(0, 256, img[band].shape)
    return img


def fnv1a64(data):
    """sd_hash64 (core.h): FNV-1a 64-bit."""
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def expected(name, arr, force_png=False):
    """A PNG of the expected pixels, or, when that PNG would be large, the FNV-1a hash of the raw
    RGB bytes (`fnv64:<hex>`), still an exact comparison. On a mismatch test_image.c writes what
    it got to /tmp, to be compared with this script's output."""
    arr = np.ascontiguousarray(arr)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG", optimize=True)
    if force_png or len(buf.getvalue()) <= PNG_BUDGET_PER_FILE:
        return save_png_rgb(name, arr)
    return f"fnv64:{fnv1a64(arr.tobytes()):016x}"


def add_resize_case(src_rel, arr, w, h, tag):
    want = pil_resize(arr, w, h)
    exp = expected(f"image_resize_{tag}_{arr.shape[1]}x{arr.shape[0]}_to_{w}x{h}.png", want)
    manifest.append(f"resize {src_rel} {w} {h} {exp}")


def gen_resize():
    synth_specs = [  # (w, h, seed, [targets])
        (451, 300, 1, [(512, 512)]),
        (300, 300, 2, [(512, 512), (290, 100), (300, 137), (411, 300), (64, 300)]),
        (600, 400, 3, [(224, 224), (600, 133), (599, 401)]),
        (37, 53, 4, [(100, 20), (20, 100), (37, 1), (1, 53)]),
        (512, 512, 5, [(64, 64), (63, 65), (512, 13)]),
        (7, 5, 6, [(1, 1), (3, 11), (13, 2)]),
        (1, 1, 7, [(5, 3)]),
        (2, 9, 8, [(9, 2)]),
    ]
    for w, h, seed, targets in synth_specs:
        arr = synthetic(w, h, seed)
        src = save_png_rgb(f"image_synth_{w}x{h}.png", arr)
        for tw, th in targets:
            add_resize_case(src, arr, tw, th, "synth")

    chelsea = np.array(Image.open(os.path.join(ROOT, CHELSEA)))[:, :, :3]
    for tw, th in [(224, 224), (64, 64), (451, 100), (97, 300), (113, 451)]:
        add_resize_case(CHELSEA, chelsea, tw, th, "chelsea")

    # Small crops of the other two photos (the full ones stay out of the repository).
    coffee = np.array(Image.open(os.path.join(SHARED_IMAGES, "coffee.png")))[:, :, :3]
    crop = np.ascontiguousarray(coffee[120:270, 200:400])
    src = save_png_rgb("image_coffee_crop_200x150.png", crop)
    for tw, th in [(512, 384), (77, 51), (200, 31)]:
        add_resize_case(src, crop, tw, th, "coffee")
    astro = np.array(Image.open(os.path.join(SHARED_IMAGES, "astronaut.png")))[:, :, :3]
    crop = np.ascontiguousarray(astro[40:168, 160:288])
    src = save_png_rgb("image_astronaut_crop_128x128.png", crop)
    for tw, th in [(64, 64), (301, 301), (128, 41)]:
        add_resize_case(src, crop, tw, th, "astronaut")


def gen_load512():
    want = load_512(os.path.join(ROOT, CHELSEA))
    assert want.shape == (512, 512, 3)
    exp = expected("image_load512_chelsea.png", want, force_png=True)
    manifest.append(f"load512 {CHELSEA} 0 0 0 0 512 {exp}")
    # Offsets, at a smaller output size to keep the fixtures small. The last cases exercise the
    # `top = min(top, h - left - 1)` quirk: with left > h the clamp goes negative and numpy counts
    # from the bottom edge.
    for (l, r, t, b, size) in [(10, 20, 30, 5, 96), (0, 0, 200, 0, 64), (100, 0, 0, 120, 80),
                               (400, 0, 0, 0, 48), (350, 10, 250, 0, 40), (0, 451, 0, 0, 16),
                               (-50, 0, 0, 0, 32), (0, 0, 0, 0, 300)]:
        want = load_512(os.path.join(ROOT, CHELSEA), l, r, t, b, size)
        exp = expected(f"image_load512_chelsea_{l}_{r}_{t}_{b}_{size}.png", want)
        manifest.append(f"load512 {CHELSEA} {l} {r} {t} {b} {size} {exp}")


# ------------------------------------------------------------------------------------------------
# PNG kinds, written by a small raw encoder so every colour type / bit depth / interlace exists.
# ------------------------------------------------------------------------------------------------

def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def pack_rows(samples, bit_depth):
    """samples: (h, w, channels) integer array -> list of packed scanlines (bytes, no filter)."""
    h, w, ch = samples.shape
    rows = []
    for y in range(h):
        flat = samples[y].reshape(-1)
        if bit_depth == 16:
            rows.append(flat.astype(">u2").tobytes())
        elif bit_depth == 8:
            rows.append(flat.astype(np.uint8).tobytes())
        else:
            per_byte = 8 // bit_depth
            nbytes = (len(flat) + per_byte - 1) // per_byte
            out = bytearray(nbytes)
            for i, v in enumerate(flat):
                out[i // per_byte] |= int(v) << (8 - bit_depth * (i % per_byte + 1))
            rows.append(bytes(out))
    return rows


def encode_png(samples, bit_depth, color_type, interlace=False, plte=None, trns=None):
    h, w, _ = samples.shape
    raw = bytearray()
    if not interlace:
        for row in pack_rows(samples, bit_depth):
            raw += b"\x00" + row  # filter type None; PIL-written fixtures cover the others
    else:
        for x0, y0, dx, dy in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for row in pack_rows(sub, bit_depth):
                raw += b"\x00" + row
    out = b"\x89PNG\r\n\x1a\n"
    out += png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0,
                                          1 if interlace else 0))
    if plte is not None:
        out += png_chunk(b"PLTE", bytes(np.asarray(plte, np.uint8).reshape(-1)))
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    out += png_chunk(b"IDAT", zlib.compress(bytes(raw), 9))
    out += png_chunk(b"IEND", b"")
    return out


def gen_png_kinds():
    rng = np.random.RandomState(42)
    w, h = 23, 17  # odd sizes: partial bytes at low bit depths, every Adam7 pass non-trivial

    def check_pil_rgb(data):
        """What the reference's `np.array(Image.open(p))[:, :, :3]` yields, when it is RGB."""
        a = np.array(Image.open(io.BytesIO(data)))
        assert a.ndim == 3 and a.dtype == np.uint8 and a.shape[2] >= 3, (a.shape, a.dtype)
        return np.ascontiguousarray(a[:, :, :3])

    def grey_to_rgb(g):
        return np.repeat(g[:, :, None], 3, axis=2).astype(np.uint8)

    cases = []
    # Kinds the reference itself handles: RGB / RGBA at 8 and 16 bits, grey+alpha at 16 bits
    # (Pillow opens it as RGBA). Expected = Pillow's array, alpha dropped.
    rgb8 = rng.randint(0, 256, (h, w, 3))
    cases.append(("rgb8", encode_png(rgb8, 8, 2), None))
    cases.append(("rgb8_interlaced", encode_png(rgb8, 8, 2, interlace=True), None))
    rgba8 = rng.randint(0, 256, (h, w, 4))
    cases.append(("rgba8", encode_png(rgba8, 8, 6), None))
    rgb16 = rng.randint(0, 65536, (h, w, 3))
    cases.append(("rgb16", encode_png(rgb16, 16, 2), None))
    cases.append(("rgb16_interlaced", encode_png(rgb16, 16, 2, interlace=True), None))
    rgba16 = rng.randint(0, 65536, (h, w, 4))
    cases.append(("rgba16", encode_png(rgba16, 16, 6), None))
    ga16 = rng.randint(0, 65536, (h, w, 2))
    cases.append(("grey_alpha16", encode_png(ga16, 16, 4), None))
    # RGB with a tRNS colour key: Pillow keeps RGB and ignores it for the pixel values.
    cases.append(("rgb8_trns", encode_png(rgb8, 8, 2, trns=struct.pack(">HHH", *rgb8[0, 0])), None))

    # Kinds the reference cannot use (numpy gives no third axis, or 2 channels); stylediff
    # expands them to RGB. Expected values come from Pillow's own conversion where it defines one.
    grey8 = rng.randint(0, 256, (h, w, 1))
    cases.append(("grey8", encode_png(grey8, 8, 0), grey_to_rgb(grey8[:, :, 0])))
    cases.append(("grey8_interlaced", encode_png(grey8, 8, 0, interlace=True),
                  grey_to_rgb(grey8[:, :, 0])))
    for bits, scale in [(1, 255), (2, 85), (4, 17)]:
        g = rng.randint(0, 1 << bits, (h, w, 1))
        data = encode_png(g, bits, 0)
        want = grey_to_rgb(g[:, :, 0] * scale)
        # Pillow agrees: mode "1" / L;2 / L;4 converted to RGB.
        assert (np.array(Image.open(io.BytesIO(data)).convert("RGB")) == want).all(), bits
        cases.append((f"grey{bits}", data, want))
    grey16 = rng.randint(0, 65536, (h, w, 1))
    # Pillow opens this as I;16 (the reference would crash); we keep the high byte, as Pillow does
    # for every other 16-bit PNG kind.
    cases.append(("grey16", encode_png(grey16, 16, 0), grey_to_rgb(grey16[:, :, 0] >> 8)))
    ga8 = rng.randint(0, 256, (h, w, 2))
    data = encode_png(ga8, 8, 4)
    want = grey_to_rgb(ga8[:, :, 0])
    assert (np.array(Image.open(io.BytesIO(data)).convert("RGB")) == want).all()
    cases.append(("grey_alpha8", data, want))
    for bits in (8, 4, 1):
        n = 1 << bits
        plte = rng.randint(0, 256, (n, 3))
        idx = rng.randint(0, n, (h, w, 1))
        for trns in (None, bytes(rng.randint(0, 256, n // 2 + 1).astype(np.uint8))):
            data = encode_png(idx, bits, 3, plte=plte, trns=trns)
            want = plte[idx[:, :, 0]].astype(np.uint8)
            im = Image.open(io.BytesIO(data))
            assert im.mode == "P"
            assert (np.array(im.convert("RGB")) == want).all()
            cases.append((f"palette{bits}{'_trns' if trns else ''}", data, want))

    for name, data, want in cases:
        src = save_bytes(f"image_png_{name}.png", data)
        if want is None:
            want = check_pil_rgb(data)
        exp = save_png_rgb(f"image_expect_png_{name}.png", np.ascontiguousarray(want))
        manifest.append(f"decode {src} {exp}")


# ------------------------------------------------------------------------------------------------
# JPEG: written by PIL, expected = PIL's decode.
# ------------------------------------------------------------------------------------------------

def gen_jpeg():
    chelsea = Image.open(os.path.join(ROOT, CHELSEA)).convert("RGB")
    crop = chelsea.crop((190, 70, 190 + 97, 70 + 73))  # odd size: partial MCUs on both axes
    variants = [
        ("q90_420", dict(quality=90, subsampling=2)),
        ("q90_422", dict(quality=90, subsampling=1)),
        ("q75_444", dict(quality=75, subsampling=0)),
        ("q90_420_progressive", dict(quality=90, subsampling=2, progressive=True)),
        ("q90_420_restart", dict(quality=90, subsampling=2, restart_marker_blocks=4)),
    ]
    for name, kw in variants:
        buf = io.BytesIO()
        crop.save(buf, "JPEG", **kw)
        data = buf.getvalue()
        src = save_bytes(f"image_jpeg_{name}.jpg", data)
        want = np.array(Image.open(io.BytesIO(data)))[:, :, :3]
        exp = save_png_rgb(f"image_expect_jpeg_{name}.png", np.ascontiguousarray(want))
        manifest.append(f"decode {src} {exp}")
    # The whole photo, quality 90, 4:2:0 (the common camera / web setting).
    buf = io.BytesIO()
    chelsea.save(buf, "JPEG", quality=90, subsampling=2)
    data = buf.getvalue()
    src = save_bytes("image_jpeg_chelsea_q90_420.jpg", data)
    exp = expected("image_expect_jpeg_chelsea_q90_420.png", np.array(Image.open(io.BytesIO(data))))
    manifest.append(f"decode {src} {exp}")
    # Grey JPEG: Pillow gives mode L; we expand to RGB.
    buf = io.BytesIO()
    crop.convert("L").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    src = save_bytes("image_jpeg_grey.jpg", data)
    g = np.array(Image.open(io.BytesIO(data)))
    exp = save_png_rgb("image_expect_jpeg_grey.png", np.repeat(g[:, :, None], 3, axis=2))
    manifest.append(f"decode {src} {exp}")
    # EXIF orientation 6 (rotate 90): Image.open ignores it, so the pixels stay as stored.
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=90, subsampling=2, exif=exif.tobytes())
    data = buf.getvalue()
    src = save_bytes("image_jpeg_exif_rotated.jpg", data)
    want = np.array(Image.open(io.BytesIO(data)))
    assert want.shape == (73, 97, 3)
    exp = save_png_rgb("image_expect_jpeg_exif_rotated.png", want)
    manifest.append(f"decode {src} {exp}")


# ------------------------------------------------------------------------------------------------
# Hostile inputs that need crafting (truncations, empty and text files are made by the C test).
# ------------------------------------------------------------------------------------------------

def gen_hostile():
    tiny = np.zeros((1, 1, 3), np.uint8)

    def png_with_ihdr(w, h):
        out = b"\x89PNG\r\n\x1a\n"
        out += png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        out += png_chunk(b"IDAT", zlib.compress(b"\x00" + tiny.tobytes()))
        out += png_chunk(b"IEND", b"")
        return out

    p = save_bytes("image_hostile_huge.png", png_with_ihdr(100000, 100000))
    manifest.append(f"fail {p} SD_ERR_UNSUPPORTED 100000 x 100000")
    p = save_bytes("image_hostile_wide.png", png_with_ihdr(30000, 2))
    manifest.append(f"fail {p} SD_ERR_UNSUPPORTED 30000 x 2")
    p = save_bytes("image_hostile_zero_width.png", png_with_ihdr(0, 5))
    manifest.append(f"fail {p} SD_ERR_FORMAT corrupt PNG")
    # Bad CRC on IHDR: a critical chunk, so libpng (and Pillow) refuse it.
    good = bytearray(png_with_ihdr(1, 1))
    good[29] ^= 0xFF
    p = save_bytes("image_hostile_bad_crc.png", bytes(good))
    manifest.append(f"fail {p} SD_ERR_FORMAT corrupt PNG")

    # A JPEG whose SOF claims 60000 x 60000.
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)
    p = save_bytes("image_hostile_huge.jpg", bytes(data))
    manifest.append(f"fail {p} SD_ERR_UNSUPPORTED 60000 x 60000")
    struct.pack_into(">HH", data, sof + 5, 0, 8)  # zero height (a DNL marker is not supported)
    p = save_bytes("image_hostile_zero_height.jpg", bytes(data))
    manifest.append(f"fail {p} SD_ERR_FORMAT corrupt JPEG")
    struct.pack_into(">BHH", data, sof + 4, 12, 8, 8)  # 12-bit samples: Pillow refuses them too
    p = save_bytes("image_hostile_12bit.jpg", bytes(data))
    manifest.append(f"fail {p} SD_ERR_UNSUPPORTED unsupported JPEG variant")

    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(buf, "JPEG", quality=90)
    p = save_bytes("image_hostile_cmyk.jpg", buf.getvalue())
    manifest.append(f"fail {p} SD_ERR_UNSUPPORTED CMYK")

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, "GIF")
    p = save_bytes("image_hostile_gif.gif", buf.getvalue())
    manifest.append(f"fail {p} SD_ERR_UNSUPPORTED GIF")


# ------------------------------------------------------------------------------------------------
# Tensor conversions, computed with torch + numpy in float32 exactly as the reference does.
# ------------------------------------------------------------------------------------------------

def gen_tensor_cases():
    xs = []
    for k in range(256):
        x0 = np.float32(2.0 * k / 255.0 - 1.0)
        # The float32 values around the point where (x / 2 + 0.5) * 255 crosses k.
        v = x0
        for _ in range(6):
            v = np.nextafter(v, np.float32(-np.inf))
        for _ in range(13):
            xs.append(v)
            v = np.nextafter(v, np.float32(np.inf))
    xs += [np.float32(s) for s in (-1.0, 1.0, -0.0, 0.0, -1.5, 1.5, -3e38, 3e38, 1e-45, -1e-45,
                                   0.99999994, -0.99999994, np.inf, -np.inf)]
    while len(xs) % 3:
        xs.append(np.float32(0.0))
    x = torch.tensor(np.array(xs, np.float32))
    # latent2image, step by step as in ptp_utils.latent2image (NCHW -> NHWC changes no value).
    image = (x / 2 + 0.5).clamp(0, 1)
    image = image.cpu().numpy()
    image = (image * 255).astype(np.uint8)
    assert image.dtype == np.uint8
    # How many of these a float64 evaluation would get wrong: proof the cases are sharp.
    f64 = (np.clip(np.array(xs, np.float64) / 2 + 0.5, 0, 1) * 255).astype(np.uint8)
    print(f"  from_tensor: {len(xs)} cases, {(f64 != image).sum()} differ if computed in float64")
    data = struct.pack("<I", len(xs)) + np.array(xs, "<f4").tobytes() + image.tobytes()
    save_bytes("image_from_tensor_cases.bin", data)

    u8 = torch.arange(256, dtype=torch.uint8)
    table = (u8.float() / 127.5 - 1).numpy().astype("<f4")
    recip = (np.arange(256, dtype=np.float32) * np.float32(1 / 127.5) - np.float32(1))
    print(f"  to_tensor: {(table != recip).sum()} of 256 differ from a reciprocal multiply")
    save_bytes("image_to_tensor_table.bin", table.tobytes())


def main():
    # Pillow warns that palette images with byte transparency "should be converted to RGBA";
    # those files exist on purpose.
    warnings.filterwarnings("ignore", message="Palette images with Transparency")
    os.makedirs(FIX, exist_ok=True)
    for f in os.listdir(FIX):
        if f.startswith("image_"):
            os.remove(os.path.join(FIX, f))
    gen_resize()
    gen_load512()
    gen_png_kinds()
    gen_jpeg()
    gen_hostile()
    gen_tensor_cases()
    man = save_bytes("image_cases.txt", ("\n".join(manifest) + "\n").encode())
    total = sum(os.path.getsize(p) for p in written)
    print(f"  wrote {len(written)} files under {rel(FIX)}, {total:,} bytes; manifest {man} "
          f"({len(manifest)} cases)")
    if total > 1_500_000:
        sys.exit("image fixtures exceed the 1.5 MB budget")


if __name__ == "__main__":
    main()
