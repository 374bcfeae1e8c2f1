"""Gradients through the tiny UNet with torch autograd, for the C tape (issue "Autodiff-lite").

Writes tests/fixtures/tiny_autograd.safetensors. One classifier-free-guidance step at t = 958
(the first of N = 30) on a (1, 4, 32, 32) latent, loss = mean((eps_cfg - target)^2) with
eps_cfg = eps_u + 7.5 (eps_c - eps_u), differentiated with respect to:

  (a) the unconditional context (Null-text inversion's variable),
  (b) a value input substituted into all 16 cross-attention layers of the conditional pass
      (keys keep the text embedding: StyleDiffusion's injection, stylediffusion.md §3.4),
  (c) the parameters of a StyleDiffusion mapping network (§3.3, BatchNorm with batch statistics)
      whose output feeds (b) as c * S + B.

Plus 10 Adam steps (torch defaults; lr 1e-2 for (a), 1e-3 for (c), see LR_MAPPING) for (a) and (c): the loss before each step and the
final variables. Tensor names:

  z, target (1,4,32,32); context_cond, context_uncond (1,77,32); timestep (1,) I64;
  features (1,197,32) (the image features X the mapping network reads);
  a_loss (1,), a_grad (1,77,32);
  b_value_input (1,77,32), b_loss (1,), b_grad (1,77,32);
  map_<name> (initial mapping-network parameters), c_loss (1,), c_grad_<name>;
  a_adam_losses (10,), a_adam_final (1,77,32); c_adam_losses (10,), c_adam_final_<name>.
Mapping parameter names: conv_start.weight (154,197,1), conv_start.bias (154,),
conv_block.0.weight (154,154,1), conv_block.0.bias, conv_block.1.weight (BN gamma, 154),
conv_block.1.bias (BN beta), conv_end.weight (154,154,1), conv_end.bias.
"""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

GUIDANCE = 7.5
N_STEPS = 30
T_INDEX = 0
ADAM_STEPS = 10
LR = 1e-2
# The mapping network's first Adam steps move every weight by about lr (Adam's first update is
# lr·sign(g)); at 1e-2 this random-weight setting is unstable (losses jump 1.9 -> 1.2 -> 2.2) and
# float32 rounding differences grow ~100x per step, as between any two implementations. At 1e-3
# the trajectory is smooth enough to compare 10 steps to 5 significant digits.
LR_MAPPING = 1e-3


def value_from_mapping(net, features, cond):
    out = net(features)            # (1, 154, L)
    scale, shift = out[:, :77], out[:, 77:]
    return cond * scale + shift


def main():
    common.setup_determinism()
    unet = common.load_tiny_unet()
    state = {"value": None}
    unet.set_attn_processor(common.ValueSubstitutionProcessor(state))
    for p in unet.parameters():
        p.requires_grad_(False)

    te = common.load_tiny_text_encoder()
    ids = load_file(os.path.join(common.FIXTURE_DIR, "tiny_text.safetensors"))["input_ids"][:2]
    with torch.no_grad():
        hidden = te(ids).last_hidden_state
    c_uncond, c_cond = hidden[0:1].clone(), hidden[1:2].clone()

    sched = common.ddim_scheduler()
    sched.set_timesteps(N_STEPS)
    t = int(sched.timesteps[T_INDEX])
    z = common.randn((1, 4, 32, 32), 601)
    target = common.randn((1, 4, 32, 32), 602)
    features = common.randn((1, 197, 32), 603)

    def eps(context, value=None):
        state["value"] = value
        out = unet(z, t, encoder_hidden_states=context).sample
        state["value"] = None
        return out

    def loss_of(eps_u, eps_c):
        guided = eps_u + GUIDANCE * (eps_c - eps_u)
        return torch.mean((guided - target) ** 2)

    fx = {"z": z, "target": target, "context_cond": c_cond, "context_uncond": c_uncond,
          "timestep": torch.tensor([t], dtype=torch.int64), "features": features}

    # (a) unconditional context
    with torch.no_grad():
        eps_c_plain = eps(c_cond)
        eps_u_plain = eps(c_uncond)
    null = c_uncond.clone().requires_grad_(True)
    loss = loss_of(eps(null), eps_c_plain)
    loss.backward()
    fx["a_loss"] = loss.detach().reshape(1)
    fx["a_grad"] = null.grad.detach().clone()

    # (b) value input of every cross-attention layer of the conditional pass
    value = (c_cond + 0.1 * common.randn((1, 77, 32), 604)).requires_grad_(True)
    loss = loss_of(eps_u_plain, eps(c_cond, value))
    loss.backward()
    fx["b_value_input"] = value.detach().clone()
    fx["b_loss"] = loss.detach().reshape(1)
    fx["b_grad"] = value.grad.detach().clone()

    # (c) mapping-network parameters (train-mode BatchNorm: batch statistics)
    torch.manual_seed(1234)
    net = common.MappingNet().train()
    init = {name: p.detach().clone() for name, p in net.named_parameters()}
    for name, p in init.items():
        fx["map_" + name] = p
    loss = loss_of(eps_u_plain, eps(c_cond, value_from_mapping(net, features, c_cond)))
    loss.backward()
    fx["c_loss"] = loss.detach().reshape(1)
    for name, p in net.named_parameters():
        fx["c_grad_" + name] = p.grad.detach().clone()

    # 10 Adam steps on (a)
    null = c_uncond.clone().requires_grad_(True)
    opt = torch.optim.Adam([null], lr=LR)
    losses = []
    for _ in range(ADAM_STEPS):
        loss = loss_of(eps(null), eps_c_plain)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    fx["a_adam_losses"] = torch.tensor(losses, dtype=torch.float32)
    fx["a_adam_final"] = null.detach().clone()

    # 10 Adam steps on (c), from the same initial weights
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(init[name])
    opt = torch.optim.Adam(net.parameters(), lr=LR_MAPPING)
    losses = []
    for _ in range(ADAM_STEPS):
        loss = loss_of(eps_u_plain, eps(c_cond, value_from_mapping(net, features, c_cond)))
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    fx["c_adam_losses"] = torch.tensor(losses, dtype=torch.float32)
    for name, p in net.named_parameters():
        fx["c_adam_final_" + name] = p.detach().clone()

    print("  losses (a):", ", ".join("%.6g" % v for v in fx["a_adam_losses"].tolist()))
    print("  losses (c):", ", ".join("%.6g" % v for v in fx["c_adam_losses"].tolist()))
    common.save_fixture("tiny_autograd.safetensors", fx,
                        "gradients of a CFG eps MSE through the tiny UNet (a: uncond context, "
                        "b: value input, c: mapping network) and 10 Adam steps",
                        generator="tests/oracle/gen_60_autograd.py")


if __name__ == "__main__":
    main()
