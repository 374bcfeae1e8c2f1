"""A plain-PyTorch UNet2DConditionModel for SD v1.x configs, used when diffusers is not installed.

Same module tree and parameter names as diffusers (so a diffusers state dict loads with
strict=True), same arithmetic as diffusers' eager path: GroupNorm/SiLU ResNet blocks with a time
embedding, Transformer2D blocks (GroupNorm eps 1e-6, proj_in/out as 1x1 convs or linears,
LayerNorm eps 1e-5, self- and cross-attention, GEGLU feed-forward), stride-2 conv downsamplers,
nearest x2 + conv upsamplers. Attention is either F.scaled_dot_product_attention ("sdpa", what
diffusers' AttnProcessor2_0 calls) or softmax(Q Kᵀ · scale) V written out ("explicit", what
diffusers' AttnProcessor and the reference code compute).

Only the SD v1 block types are supported: CrossAttnDownBlock2D / DownBlock2D,
UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D, one transformer layer per block.
`python3 sd_unet_torch.py --check` compares it with diffusers on the tiny config (needs diffusers).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION_MODE = {"mode": "sdpa"}  # "sdpa" or "explicit", switched by set_attention_mode


def set_attention_mode(mode):
    assert mode in ("sdpa", "explicit")
    ATTENTION_MODE["mode"] = mode


def timestep_embedding(t, dim, flip_sin_to_cos, shift):
    """diffusers.models.embeddings.get_timestep_embedding (max_period 10000, scale 1)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=t.device)
    exponent = exponent / (half - shift)
    emb = torch.exp(exponent)
    emb = t[:, None].float() * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.linear_1 = nn.Linear(c_in, c_out)
        self.linear_2 = nn.Linear(c_out, c_out)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, c_in, c_out, temb, groups, eps):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    def __init__(self, dim, ctx_dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(ctx_dim, dim, bias=False)
        self.to_v = nn.Linear(ctx_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        B, S, C = x.shape
        h, d = self.heads, C // self.heads
        q = self.to_q(x).view(B, S, h, d).transpose(1, 2)
        k = self.to_k(ctx).view(B, ctx.shape[1], h, d).transpose(1, 2)
        v = self.to_v(ctx).view(B, ctx.shape[1], h, d).transpose(1, 2)
        if ATTENTION_MODE["mode"] == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v)
        else:  # AttnProcessor: baddbmm(scale) -> softmax -> bmm
            qb, kb, vb = (t.reshape(B * h, -1, d) for t in (q, k, v))
            scores = torch.baddbmm(torch.empty(qb.shape[0], qb.shape[1], kb.shape[1], dtype=qb.dtype, device=qb.device),
                                   qb, kb.transpose(1, 2), beta=0, alpha=d ** -0.5)
            o = torch.bmm(scores.softmax(dim=-1).to(vb.dtype), vb).view(B, h, S, d)
        o = o.transpose(1, 2).reshape(B, S, C)
        return self.to_out[0](o)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, ctx_dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, ctx_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, ctx):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), ctx) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    def __init__(self, dim, ctx_dim, heads, groups, linear_projection):
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        if linear_projection:
            self.proj_in, self.proj_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, ctx_dim, heads)])

    def forward(self, x, ctx):
        B, C, H, W = x.shape
        h = self.norm(x)
        if self.linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(B, H * W, C))
        else:
            h = self.proj_in(h).permute(0, 2, 3, 1).reshape(B, H * W, C)
        for blk in self.transformer_blocks:
            h = blk(h, ctx)
        if self.linear_projection:
            h = self.proj_out(h).reshape(B, H, W, C).permute(0, 3, 1, 2)
        else:
            h = self.proj_out(h.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous())
        return h + x


class Downsample2D(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, size=None):
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class DownBlock(nn.Module):
    def __init__(self, c_in, c_out, temb, layers, attn, ctx_dim, heads, groups, eps, linear_proj, downsample):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(c_in if i == 0 else c_out, c_out, temb, groups, eps) for i in range(layers)])
        self.attentions = nn.ModuleList(
            [Transformer2DModel(c_out, ctx_dim, heads, groups, linear_proj) for _ in range(layers)]) if attn else None
        self.downsamplers = nn.ModuleList([Downsample2D(c_out)]) if downsample else None

    def forward(self, x, temb, ctx):
        skips = []
        for i, r in enumerate(self.resnets):
            x = r(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(self, c_in, c_prev, c_out, temb, layers, attn, ctx_dim, heads, groups, eps, linear_proj, upsample):
        super().__init__()
        res = []
        for i in range(layers + 1):
            skip_ch = c_in if i == layers else c_out
            res_in = c_prev if i == 0 else c_out
            res.append(ResnetBlock2D(res_in + skip_ch, c_out, temb, groups, eps))
        self.resnets = nn.ModuleList(res)
        self.attentions = nn.ModuleList(
            [Transformer2DModel(c_out, ctx_dim, heads, groups, linear_proj) for _ in range(layers + 1)]) if attn else None
        self.upsamplers = nn.ModuleList([Upsample2D(c_out)]) if upsample else None

    def forward(self, x, skips, temb, ctx, size=None):
        for i, r in enumerate(self.resnets):
            x = r(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    def __init__(self, c, temb, ctx_dim, heads, groups, eps, linear_proj):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, groups, eps), ResnetBlock2D(c, c, temb, groups, eps)])
        self.attentions = nn.ModuleList([Transformer2DModel(c, ctx_dim, heads, groups, linear_proj)])

    def forward(self, x, temb, ctx):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, ctx)
        return self.resnets[1](x, temb)


class SDUNet(nn.Module):
    """UNet2DConditionModel(**config) for SD v1.x configs; forward(sample, t, ctx) -> eps."""

    def __init__(self, cfg):
        super().__init__()
        ch = list(cfg["block_out_channels"])
        n = len(ch)
        L = cfg.get("layers_per_block", 2)
        groups = cfg.get("norm_num_groups", 32)
        eps = cfg.get("norm_eps", 1e-5)
        ctx_dim = cfg["cross_attention_dim"]
        heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
        heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * n
        linear_proj = cfg.get("use_linear_projection", False)
        self.flip = cfg.get("flip_sin_to_cos", True)
        self.shift = cfg.get("freq_shift", 0)
        temb = ch[0] * 4
        self.conv_in = nn.Conv2d(cfg.get("in_channels", 4), ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        down_types = cfg["down_block_types"]
        up_types = cfg["up_block_types"]
        self.down_blocks = nn.ModuleList()
        c_out = ch[0]
        for i, bt in enumerate(down_types):
            c_in, c_out = c_out, ch[i]
            self.down_blocks.append(DownBlock(c_in, c_out, temb, L, bt.startswith("CrossAttn"), ctx_dim, heads[i], groups,
                                              eps, linear_proj, i < n - 1))
        self.mid_block = MidBlock(ch[-1], temb, ctx_dim, heads[-1], groups, eps, linear_proj)
        rch = ch[::-1]
        rheads = heads[::-1]
        self.up_blocks = nn.ModuleList()
        c_out = rch[0]
        for i, bt in enumerate(up_types):
            c_prev, c_out = c_out, rch[i]
            c_in = rch[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock(c_in, c_prev, c_out, temb, L, bt.startswith("CrossAttn"), ctx_dim, rheads[i],
                                          groups, eps, linear_proj, i < n - 1))
        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.get("out_channels", 4), 3, padding=1)

    def forward(self, sample, t, ctx):
        if not torch.is_tensor(t):
            t = torch.tensor([t], device=sample.device)
        t = t.reshape(-1).expand(sample.shape[0])
        temb = timestep_embedding(t, self.conv_in.out_channels, self.flip, self.shift).to(sample.dtype)
        temb = self.time_embedding(temb)
        x = self.conv_in(sample)
        skips = [x]
        for blk in self.down_blocks:
            x, s = blk(x, temb, ctx)
            skips += s
        x = self.mid_block(x, temb, ctx)
        for blk in self.up_blocks:
            n_res = len(blk.resnets)
            block_skips = skips[-n_res:]
            skips = skips[:-n_res]
            size = skips[-1].shape[2:] if (blk.upsamplers is not None and skips) else None
            x = blk(x, block_skips, temb, ctx, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def _check():
    """Compares SDUNet with diffusers' UNet2DConditionModel on the tiny config (CPU, fp32)."""
    import json
    import os
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    cfg = json.load(open(os.path.join(root, "configs", "tiny", "unet.json")))
    torch.manual_seed(0)
    ref = UNet2DConditionModel.from_config(cfg).eval()
    ref.set_attn_processor(AttnProcessor())
    ours = SDUNet(cfg).eval()
    missing = ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 4, 32, 32)
    ctx = torch.randn(2, 77, cfg["cross_attention_dim"])
    with torch.no_grad():
        want = ref(x, 981, encoder_hidden_states=ctx).sample
        for mode in ("explicit", "sdpa"):
            set_attention_mode(mode)
            got = ours(x, 981, ctx)
            err = ((got - want).abs().max() / want.abs().max()).item()
            print(f"SDUNet ({mode}) vs diffusers on the tiny config: max rel err {err:.3g}")
            assert err < 1e-5, err
    print("ok", missing)


if __name__ == "__main__":
    import sys
    if "--check" in sys.argv:
        _check()
