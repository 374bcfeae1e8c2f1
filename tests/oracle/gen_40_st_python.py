#!/usr/bin/env python3
"""gen_40_st_python.py: a small safetensors file written by the reference (Python/Rust) writer.

Writes tests/fixtures/st_python.safetensors. tests/unit/test_safetensors.c reads it back, checks
every value (the values below are simple formulas the C test repeats), and writes the same tensors
with stylediff's writer to check the two files are byte-identical (same header layout, padding and
data order as the reference implementation).

Metadata holds a single key so the header is deterministic: the reference writer keeps metadata in
a hash map, so with several keys their order changes from run to run.
"""
import os

import torch
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "st_python.safetensors")


def main():
    tensors = {
        # F32 (2, 3): i * 0.25 - 0.5
        "weights.f32": (torch.arange(6, dtype=torch.float32) * 0.25 - 0.5).reshape(2, 3),
        # F16: exact halves, including the largest normal and the smallest subnormal
        "weights.f16": torch.tensor([1.0, -2.5, 65504.0, 2.0 ** -24], dtype=torch.float16),
        # BF16 (2, 2): exact bfloat16 values
        "weights.bf16": torch.tensor([[1.0, -3.140625], [256.0, 0.0078125]], dtype=torch.bfloat16),
        "weights.f64": torch.tensor([0.1, -2.5], dtype=torch.float64),
        "ids.i64": torch.tensor([49406, -1, 2 ** 40], dtype=torch.int64),
        "count.i32": torch.tensor([-7], dtype=torch.int32),
        "bytes.u8": torch.tensor([0, 255], dtype=torch.uint8),
        "mask.bool": torch.tensor([True, False, True]),
        "scalar.f32": torch.tensor(7.0, dtype=torch.float32),  # shape ()
        "empty.f32": torch.zeros(0, 3, dtype=torch.float32),   # shape (0, 3), no bytes
    }
    save_file(tensors, OUT, metadata={"format": "pt"})
    print(f"wrote {os.path.relpath(OUT, ROOT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
