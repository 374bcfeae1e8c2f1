#!/usr/bin/env python3
"""gen_58_blend_mask.py: the NS-LPIPS masks of StyleDiffusion's eval_metrics/storemask.py
(stylediffusion.md §6.1 "Mask generation") on the tiny model, for tests/unit/test_blend_mask.c.

What storemask.py does for one CSV row, reproduced step by step:
  1. DDIM inversion of the photo, conditional on the source prompt (guidance 1, batch 1), with an
     AttentionStore registered and LOW_RESOURCE = False: every cross-attention call passes
     attn[h//2:] to the store, h = attn.shape[0] = batch x heads = heads, so only the second half
     of the heads is stored (the quirk of §4.1). The store sums the maps over the steps and
     get_average_attention divides by the number of steps.
  2. aggregate_attention(res = side/4, from = ["up", "down"], cross): the stored maps with
     (side/4)^2 queries (the 16x16 layers at 512 px: two down, three up), each reshaped to
     (-1, res, res, 77) and concatenated, then summed and divided by their count.
  3. token = prompt.split(' ').index(word) + 1 (one token per preceding word assumed).
  4. img = 255 * map / map.max() (float32), to 3 channels, astype(uint8) (truncation), PIL
     Image.fromarray(img).resize((256, 256)) (bicubic, Pillow's default), the foreground mask;
     the background mask is 255 - img.
The tiny model stands in for SD v1.4 and the steps are shortened (N = 10 instead of 50: the
aggregation does not depend on N beyond the average).

Writes tests/fixtures/tiny_blend_mask.safetensors:
  attention (8, 8, 77) F32   the aggregated map (res = 32/4 = 8 at 256 px)
  foreground (256, 256, 3) U8   (the background mask is 255 minus it)
Photo: data/images/chelsea.png through load_512 at 256 px; prompt "a cat sitting on a wooden
floor", word "cat".

Run from the repository root: .venv/bin/python tests/oracle/gen_58_blend_mask.py"""
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from gen_65_methods import PROMPT_IDS, SIZE, load_512  # noqa: E402

PROMPT = "a cat sitting on a wooden floor"
WORD = "cat"
N_STEPS = 10


class StoreProcessor:
    """diffusers AttnProcessor arithmetic; cross-attention maps with q_len queries: rows h//2: kept."""

    def __init__(self):
        self.q_len = 0
        self.step = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        is_cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if is_cross else hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)
        if is_cross and probs.shape[1] == self.q_len:
            h = probs.shape[0]
            self.step.append(probs[h // 2:].clone())
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def main():
    common.setup_determinism()
    unet = common.load_tiny_unet()
    store = StoreProcessor()
    unet.set_attn_processor(store)
    vae = common.load_tiny_vae()
    te = common.load_tiny_text_encoder()
    image = load_512(os.path.join(common.ROOT, "data", "images", "chelsea.png"), SIZE)
    x = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist.mean * common.SCALING_FACTOR
        ids = torch.tensor([PROMPT_IDS + [49407] * (77 - len(PROMPT_IDS))], dtype=torch.int64)
        cond = te(ids).last_hidden_state
    sched = common.ddim_scheduler()
    alphas, final_alpha = sched.alphas_cumprod, sched.final_alpha_cumprod
    side = z0.shape[-1]
    res = side // 4
    store.q_len = res * res
    delta = 1000 // N_STEPS
    timesteps = [(N_STEPS - 1 - i) * delta + 1 for i in range(N_STEPS)]
    total = None
    z = z0
    with torch.no_grad():
        for k in range(N_STEPS):
            t = timesteps[N_STEPS - 1 - k]
            store.step = []
            eps = unet(z, t, encoder_hidden_states=cond).sample
            a_from = alphas[min(t - delta, 999)] if t - delta >= 0 else final_alpha
            a_to = alphas[t]
            x0 = (z - (1 - a_from) ** 0.5 * eps) / a_from ** 0.5
            z = a_to ** 0.5 * x0 + (1 - a_to) ** 0.5 * eps
            total = store.step if total is None else [a + b for a, b in zip(total, store.step)]
    average = [m / N_STEPS for m in total]
    maps = torch.cat([m.reshape(-1, res, res, 77) for m in average], dim=0)
    attention = maps.sum(0) / maps.shape[0]
    token = PROMPT.split(" ").index(WORD) + 1
    img = attention[:, :, token]
    img = 255 * img / img.max()
    img = img.unsqueeze(-1).expand(*img.shape, 3).numpy().astype(np.uint8)
    fg = np.array(Image.fromarray(img).resize((256, 256)))
    bg = 255 - fg
    assert (bg == 255 - fg).all()
    out = {"attention": attention.numpy().astype(np.float32), "foreground": np.ascontiguousarray(fg)}
    path = os.path.join(common.ROOT, "tests", "fixtures", "tiny_blend_mask.safetensors")
    save_file(out, path)
    print(f"{len(total)} maps per step, {maps.shape[0]} aggregated; token {token}; mask mean {fg.mean():.2f}; wrote {path}")


if __name__ == "__main__":
    main()
