"""torch.randn on the CPU generator, for the C port of torch's Mersenne Twister + normal fill.

Writes tests/fixtures/rng_randn.safetensors: `randn_seed{S}_{shape}` = torch.randn(shape) right after
torch.manual_seed(S), float32. Shapes cover a multiple of 16 (the SD latent) and sizes whose last
block torch redraws.
"""
import os

import torch
from safetensors.torch import save_file

CASES = [(0, (1, 4, 64, 64)), (42, (1, 4, 64, 64)), (1, (3, 5, 7)), (123, (1, 4, 8, 8)), (7, (17,))]


def main():
    out = {}
    for seed, shape in CASES:
        torch.manual_seed(seed)
        name = "randn_seed%d_%s" % (seed, "x".join(str(d) for d in shape))
        out[name] = torch.randn(shape, dtype=torch.float32).contiguous()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
    os.makedirs(root, exist_ok=True)
    save_file(out, os.path.join(root, "rng_randn.safetensors"), metadata={"torch": torch.__version__})


if __name__ == "__main__":
    main()
