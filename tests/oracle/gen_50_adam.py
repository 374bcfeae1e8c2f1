#!/usr/bin/env python3
"""gen_50_adam.py: ten torch.optim.Adam steps in float32 -> tests/fixtures/adam_torch.safetensors,
read by tests/unit/test_cpu_backward.c (the backend's adam_step).

torch.optim.Adam is run with foreach=False and fused=False, i.e. _single_tensor_adam, the
per-tensor path the C op reproduces operation by operation (lerp for the first moment,
mul + addcmul for the second, bias corrections as Python doubles, addcdiv). Default betas
(0.9, 0.999) and eps 1e-8, no weight decay, no amsgrad. Two learning rates: 1e-2 and 0.0071
(the spec's schedule).

The parameter is small (std 0.01, about the size of one update), so that a wrong update shows up
in the relative error of the parameter instead of drowning in its rounding. Its 37 entries are
not a multiple of a SIMD width, so torch's scalar tail runs too. The gradients mix magnitudes
(1e-9 .. 10, so eps matters for some entries), exact zeros and sign flips between steps.

Tensors (all F32):
  param0                    (37,)     the parameter before the first step
  grads                     (10, 37)  the gradient of step k (k = 0..9)
  param_lr0p01              (10, 37)  the parameter after step k, lr 1e-2
  exp_avg_lr0p01            (10, 37)  Adam's first moment after step k
  exp_avg_sq_lr0p01         (10, 37)  Adam's second moment after step k
  param_lr0p0071, exp_avg_lr0p0071, exp_avg_sq_lr0p0071: the same with lr 0.0071

Run from the repository root: .venv/bin/python tests/oracle/gen_50_adam.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import randn, save_fixture, setup_determinism, uniform  # noqa: E402

N = 37
STEPS = 10


def make_grads():
    """Gradients of mixed magnitude: randn · 10^u, u uniform in [-3, 1), a few tiny and zero."""
    g = randn((STEPS, N), 501) * torch.pow(10.0, uniform((STEPS, N), 502, -3.0, 1.0))
    g[:, 3] = 0.0                     # an entry that never gets a gradient
    g[2, 5] = 0.0                     # one zero in the middle of a history
    g[:, 7] = 1e-9 * randn((STEPS,), 503)   # sqrt(v) near eps
    g[1::2, 11] = -g[0::2, 11]        # sign flips from step to step
    return g.to(torch.float32)


def run(lr, param0, grads):
    p = torch.nn.Parameter(param0.clone())
    opt = torch.optim.Adam([p], lr=lr, foreach=False, fused=False)
    params, avgs, sqs = [], [], []
    for k in range(STEPS):
        opt.zero_grad(set_to_none=False)
        p.grad = grads[k].clone()
        opt.step()
        state = opt.state[p]
        params.append(p.detach().clone())
        avgs.append(state["exp_avg"].clone())
        sqs.append(state["exp_avg_sq"].clone())
    return torch.stack(params), torch.stack(avgs), torch.stack(sqs)


def main():
    setup_determinism()
    param0 = randn((N,), 500) * 0.01
    grads = make_grads()
    tensors = {"param0": param0, "grads": grads}
    for tag, lr in (("lr0p01", 1e-2), ("lr0p0071", 0.0071)):
        params, avgs, sqs = run(lr, param0, grads)
        assert params.dtype == torch.float32
        tensors["param_" + tag] = params
        tensors["exp_avg_" + tag] = avgs
        tensors["exp_avg_sq_" + tag] = sqs
    save_fixture("adam_torch.safetensors", tensors,
                 "torch.optim.Adam (single-tensor path) float32 steps", "tests/oracle/gen_50_adam.py")


if __name__ == "__main__":
    main()
