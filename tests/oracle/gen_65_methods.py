"""The first timesteps of StyleDiffusion and Null-text inversion on the tiny model, in torch.

Writes tests/fixtures/tiny_methods.safetensors, for tests/unit/test_inversion.c. Both methods
start from the same photo: data/images/chelsea.png through the reference load_512 at 256 px
(PIL bicubic; the C loader is pixel-exact with it), the tiny VAE's posterior mean times 0.18215,
the prompt "a cat sitting on a wooden floor" (ids hard-coded below, BOS ... EOS pad).

The step counts are shortened (N = 10 for both) to keep the C test quick; the algorithms do not
depend on N beyond the schedule.

StyleDiffusion (stylediffusion.md §3.5, §3.6), N = 10, inner = 5 iterations (ceil(5 e^(-0.1 i))),
lr 0.001 (1 - i/100), both losses, two timesteps. (The reference's lr 0.01 moves every weight of
this random-weight network by ~lr per Adam step — the first update is lr·sign(g) — which makes
the losses jump and float32 rounding differences grow ~100x per iteration, as between any two
implementations; at 0.001 five iterations compare to 1e-4.)
  sd_features (1,197,32)   post_layernorm(last_hidden_state) of the tiny CLIP vision tower on the
                           reference preprocessing of the 256 px image;
  map_<param>              M_0's initial weights (torch default init after manual_seed(7));
  sd_losses (2, 5)         the loss of every iteration of timesteps 0 and 1 (before each update);
  sd_after0_<param>, sd_after1_<param>   M_0 and M_1 after training.
Null-text (§5), N = 10, 10 iterations, lr 0.01 (1 - i/100), early stop 1e-5 + i 2e-5, two
timesteps:
  nt_losses (2, 10)        the loss of every iteration (before each update);
  nt_null0, nt_null1 (1,77,32)   the optimised null embedding of timesteps 0 and 1.
  z0 (1,4,32,32)           the encoded image, for diagnosis.
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PROMPT_IDS = [49406, 320, 2368, 4919, 525, 320, 9057, 4125, 49407]  # "a cat sitting on a wooden floor"
GUIDANCE = 7.5
SIZE = 256


def load_512(path, size):
    """The reference load_512 with zero offsets: centre square, PIL resize (bicubic)."""
    image = np.array(Image.open(path))[:, :, :3]
    h, w, _ = image.shape
    if h < w:
        offset = (w - h) // 2
        image = image[:, offset:offset + h]
    elif w < h:
        offset = (h - w) // 2
        image = image[offset:offset + w]
    return np.array(Image.fromarray(image).resize((size, size)))


def clip_features(image_u8):
    """E(x): Trainer.preprocess on the [-1, 1] image, then ln_post on every token."""
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(os.path.join(common.ROOT, "models", "tiny-clip-vision"),
                                            dtype=torch.float32, attn_implementation="eager").float().eval()
    x = torch.from_numpy(image_u8).float().permute(2, 0, 1)[None] / 127.5 - 1
    x = (x + 1) / 2
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = (x - mean) / std
    with torch.no_grad():
        hidden = model(pixel_values=x).last_hidden_state
        return getattr(model, "vision_model", model).post_layernorm(hidden)  # transformers 5 dropped the level


def main():
    common.setup_determinism()
    unet = common.load_tiny_unet()
    state = {"value": None, "capture": None, "q_len": 0}
    unet.set_attn_processor(common.ValueSubstitutionProcessor(state))
    for p in unet.parameters():
        p.requires_grad_(False)
    vae = common.load_tiny_vae()
    te = common.load_tiny_text_encoder()

    image = load_512(os.path.join(common.ROOT, "data", "images", "chelsea.png"), SIZE)
    x = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist.mean * common.SCALING_FACTOR
        ids = torch.tensor([PROMPT_IDS + [49407] * (77 - len(PROMPT_IDS)),
                            [49406] + [49407] * 76], dtype=torch.int64)
        hidden = te(ids).last_hidden_state
    cond, uncond = hidden[0:1], hidden[1:2]
    sched = common.ddim_scheduler()
    alphas = sched.alphas_cumprod
    final_alpha = sched.final_alpha_cumprod

    def move(eps, z, a_from, a_to):
        x0 = (z - (1 - a_from) ** 0.5 * eps) / a_from ** 0.5
        return a_to ** 0.5 * x0 + (1 - a_to) ** 0.5 * eps

    def alpha(t):
        return alphas[t] if t >= 0 else final_alpha

    def unet_eps(z, t, context, value=None, capture=None, q_len=0):
        state["value"], state["capture"], state["q_len"] = value, capture, q_len
        out = unet(z, t, encoder_hidden_states=context).sample
        state["value"], state["capture"] = None, None
        return out

    def ddim_invert(n_steps, q_len=0):
        delta = 1000 // n_steps
        timesteps = [(n_steps - 1 - i) * delta + 1 for i in range(n_steps)]
        latents, maps = [z0], []
        with torch.no_grad():
            for k in range(n_steps):
                t = timesteps[n_steps - 1 - k]
                cap = [] if q_len else None
                eps = unet_eps(latents[k], t, cond, capture=cap, q_len=q_len)
                latents.append(move(eps, latents[k], alpha(min(t - delta, 999)), alpha(t)))
                maps.append(cap)
        return timesteps, latents, maps, delta

    fx = {"z0": z0}

    # StyleDiffusion: two timesteps, inner 5
    n = 10
    sd_lr = 0.001
    timesteps, latents, maps, delta = ddim_invert(n, q_len=(32 // 4) ** 2)
    maps.append(maps[-1])
    features = clip_features(image)
    fx["sd_features"] = features
    torch.manual_seed(7)
    net = common.MappingNet().train()
    for name, p in net.named_parameters():
        fx["map_" + name] = p.detach().clone()
    z = latents[n]
    losses = torch.zeros(2, 5)
    for i in range(2):
        t = timesteps[i]
        opt = torch.optim.Adam(net.parameters(), lr=sd_lr * (1 - i / 100))
        with torch.no_grad():
            eps_u = unet_eps(z, t, uncond)
        for j in range(math.ceil(5 * math.exp(-0.1 * i))):
            out = net(features)
            value = cond * out[:, :77] + out[:, 77:]
            cap = []
            eps_c = unet_eps(z, t, cond, value=value, capture=cap, q_len=64)
            eps = eps_u + GUIDANCE * (eps_c - eps_u)
            loss = torch.mean((move(eps, z, alpha(t), alpha(t - delta)) - latents[n - 1 - i]) ** 2)
            assert len(cap) == len(maps[n - i]) == 5
            for gt, got in zip(maps[n - i], cap):
                loss = loss + torch.mean((gt - got) ** 2)
            losses[i, j] = loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for name, p in net.named_parameters():
            fx["sd_after%d_%s" % (i, name)] = p.detach().clone()
        with torch.no_grad():
            out = net(features)
            eps_c = unet_eps(z, t, cond, value=cond * out[:, :77] + out[:, 77:])
            z = move(eps_u + GUIDANCE * (eps_c - eps_u), z, alpha(t), alpha(t - delta))
    fx["sd_losses"] = losses
    print("  stylediffusion losses:", losses.tolist())

    # Null-text: two timesteps, 10 iterations
    n = 10
    timesteps, latents, _, delta = ddim_invert(n)
    null = uncond.clone()
    z = latents[n]
    losses = torch.zeros(2, 10)
    for i in range(2):
        t = timesteps[i]
        null = null.detach().requires_grad_(True)
        opt = torch.optim.Adam([null], lr=0.01 * (1 - i / 100))
        with torch.no_grad():
            eps_c = unet_eps(z, t, cond)
        for j in range(10):
            eps_u = unet_eps(z, t, null)
            eps = eps_u + GUIDANCE * (eps_c - eps_u)
            loss = torch.mean((move(eps, z, alpha(t), alpha(t - delta)) - latents[n - 1 - i]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[i, j] = loss.item()
            if loss.item() < 1e-5 + i * 2e-5:
                break
        fx["nt_null%d" % i] = null.detach().clone()
        with torch.no_grad():
            eps = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([null, cond])).sample
            eps_u, eps_c = eps.chunk(2)
            z = move(eps_u + GUIDANCE * (eps_c - eps_u), z, alpha(t), alpha(t - delta))
    fx["nt_losses"] = losses
    print("  null-text losses:", losses.tolist())
    common.save_fixture("tiny_methods.safetensors", fx,
                        "first two timesteps of StyleDiffusion and Null-text inversion on chelsea.png",
                        generator="tests/oracle/gen_65_methods.py")


if __name__ == "__main__":
    main()
