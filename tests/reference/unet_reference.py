"""unet_reference.py — the PyTorch twins of knnd's reference backbones (core/nn/unet.c,
core/nn/transformer.c): guided-diffusion's UNetModel with GLIDE's encoder_kv cross-attention,
and VQ-Diffusion's selfcross transformer Block. Same module tree, so state-dict names match
knnd's 1:1. Used by gen_unet_fixture.py (the parity fixture) and tests/bench/gpu/
torch_models_peer.py (the GPU benchmark peer).

Two deliberate details, mirrored in knnd: the sinusoid frequencies are computed in float64 and
rounded to float32 (knnd_nn_sinusoid), and t·4000/num_steps is one multiplication."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoid(t, dim, t_scale, freq_div, sin_first):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / freq_div)
    freqs = freqs.to(torch.float32).to(t.device)
    tf = t.to(torch.float32)
    if t_scale != 1.0:
        tf = tf * t_scale
    args = tf[:, None] * freqs[None]
    parts = [torch.sin(args), torch.cos(args)] if sin_first else [torch.cos(args), torch.sin(args)]
    if dim % 2:
        parts.append(torch.zeros_like(args[:, :1]))
    return torch.cat(parts, dim=-1)


def zero_module(m):
    for p in m.parameters():
        p.detach().zero_()
    return m


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, dropout, out_ch, scale_shift, groups, zero):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        conv = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, out_ch), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(conv) if zero else conv)
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        e = self.emb_layers(emb)[..., None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def heads_of(p, heads, S, s):
    """[B, L, H·S·ch] (QKVAttentionLegacy's channel layout) -> part s as [B, H, L, ch]"""
    B, L, _ = p.shape
    return p.reshape(B, L, heads, S, -1)[:, :, :, s].permute(0, 2, 1, 3)


class AttentionBlock(nn.Module):
    def __init__(self, ch, heads, context_dim, separate, groups, zero):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        if context_dim and not separate:
            self.encoder_kv = nn.Conv1d(context_dim, 2 * ch, 1)
        self.proj_out = zero_module(nn.Conv1d(ch, ch, 1)) if zero else nn.Conv1d(ch, ch, 1)
        self.separate = bool(context_dim and separate)
        if self.separate:
            self.cross_norm = nn.GroupNorm(groups, ch)
            self.cross_q = nn.Conv1d(ch, ch, 1)
            self.cross_kv = nn.Conv1d(context_dim, 2 * ch, 1)
            self.cross_proj_out = zero_module(nn.Conv1d(ch, ch, 1)) if zero else nn.Conv1d(ch, ch, 1)

    def attend(self, x, ctx, norm, q, ctx_kv, proj, self_kv):
        B, C, H, W = x.shape
        tok = norm(x).reshape(B, C, H * W).transpose(1, 2)
        p = F.linear(tok, q.weight[:, :, 0], q.bias)
        S = 3 if self_kv else 1
        qh = heads_of(p, self.heads, S, 0)
        k = v = None
        if self_kv:
            k, v = heads_of(p, self.heads, S, 1), heads_of(p, self.heads, S, 2)
        if ctx is not None and ctx_kv is not None:
            e = F.linear(ctx, ctx_kv.weight[:, :, 0], ctx_kv.bias)
            ek, ev = heads_of(e, self.heads, 2, 0), heads_of(e, self.heads, 2, 1)
            k = ek if k is None else torch.cat([ek, k], dim=2)
            v = ev if v is None else torch.cat([ev, v], dim=2)
        a = F.scaled_dot_product_attention(qh, k, v)
        a = a.permute(0, 2, 1, 3).reshape(B, H * W, C)
        o = F.linear(a, proj.weight[:, :, 0], proj.bias)
        return x + o.transpose(1, 2).reshape(B, C, H, W)

    def forward(self, x, context):
        h = self.attend(x, None if self.separate else context, self.norm, self.qkv,
                        getattr(self, "encoder_kv", None), self.proj_out, True)
        if self.separate and context is not None:
            h = self.attend(h, context, self.cross_norm, self.cross_q, self.cross_kv, self.cross_proj_out, False)
        return h


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetModel(nn.Module):
    """the knnd_unet_opts fields, same defaults"""

    def __init__(self, in_channels, out_channels, model_channels, channel_mult=(1, 2, 2), num_res_blocks=2,
                 image_size=0, attention_resolutions=(), num_heads=1, num_head_channels=0, dropout=0.0,
                 use_scale_shift_norm=False, context_dim=0, separate_cross_attention=False, cond_embed=False,
                 norm_groups=32, skip_zero_init=False):
        super().__init__()
        zero = not skip_zero_init
        base, temb = model_channels, 4 * model_channels
        self.model_channels = base
        self.time_embed = nn.Sequential(nn.Linear(base, temb), nn.SiLU(), nn.Linear(temb, temb))
        if cond_embed:
            self.cond_embed = nn.Linear(context_dim, temb)

        def heads(ch):
            return ch // num_head_channels if num_head_channels > 0 else num_heads

        def attn(ch):
            return AttentionBlock(ch, heads(ch), context_dim, separate_cross_attention, norm_groups, zero)

        def res(ch, oc):
            return ResBlock(ch, temb, dropout, oc, use_scale_shift_norm, norm_groups, zero)

        def has_attn(ds):
            return image_size // ds in attention_resolutions

        ch = channel_mult[0] * base
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * base)]
                ch = mult * base
                if has_attn(ds):
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), base * mult)]
                ch = base * mult
                if has_attn(ds):
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        conv = nn.Conv2d(ch, out_channels, 3, padding=1)
        self.out = nn.Sequential(nn.GroupNorm(norm_groups, ch), nn.SiLU(), zero_module(conv) if zero else conv)

    def forward(self, x, t, context=None):
        emb = self.time_embed(sinusoid(t, self.model_channels, 1.0, self.model_channels // 2, False))
        if hasattr(self, "cond_embed"):
            emb = emb + self.cond_embed(context[:, 0])
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


class AdaLayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x, sin):
        scale, shift = torch.chunk(self.linear(F.silu(sin))[:, None], 2, dim=2)
        return F.layer_norm(x, x.shape[-1:], eps=1e-5) * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, dim, heads, kv_dim, dropout):
        super().__init__()
        self.heads = heads
        self.key = nn.Linear(kv_dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(kv_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x, kv=None):
        kv = x if kv is None else kv
        B, L, C = x.shape

        def split(p):
            return p.reshape(p.shape[0], p.shape[1], self.heads, -1).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(kv)), split(self.value(kv)))
        return self.resid_drop(self.proj(a.transpose(1, 2).reshape(B, L, C)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, context_dim, mlp_ratio=4, dropout=0.0, diffusion_steps=100):
        super().__init__()
        self.dim, self.steps = dim, diffusion_steps
        self.ln1 = AdaLayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_heads, dim, dropout)
        self.attn2 = Attention(dim, num_heads, context_dim, dropout)
        self.ln1_1 = AdaLayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x, t, context):
        sin = sinusoid(t, self.dim, 4000.0 / self.steps, self.dim // 2 - 1, True)
        x = x + self.attn1(self.ln1(x, sin))
        x = x + self.attn2(self.ln1_1(x, sin), context)
        return x + self.mlp(self.ln2(x))


class TransformerStack(nn.Module):
    def __init__(self, num_blocks=1, **kw):
        super().__init__()
        self.blocks = nn.ModuleList([Block(**kw) for _ in range(num_blocks)])

    def forward(self, x, t, context):
        for b in self.blocks:
            x = b(x, t, context)
        return x


# The configurations the C tests and the GPU benchmarks use (knnd_unet_opts / knnd_transformer_opts
# with the same values are written out in tests/core/test_unet.c and tests/bench/gpu/bench_gpu_models.c).
TINY_UNET_A = dict(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                   image_size=8, attention_resolutions=(4,), num_head_channels=4, use_scale_shift_norm=True,
                   context_dim=12, cond_embed=True, norm_groups=4, skip_zero_init=True)
TINY_UNET_B = dict(in_channels=2, out_channels=4, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                   image_size=8, attention_resolutions=(8, 4), num_heads=2, context_dim=12,
                   separate_cross_attention=True, norm_groups=4, skip_zero_init=True)
TINY_TRANSFORMER = dict(num_blocks=2, dim=16, num_heads=2, context_dim=12)
BENCH_UNET = dict(in_channels=3, out_channels=3, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                  image_size=32, attention_resolutions=(16, 8), num_head_channels=64, use_scale_shift_norm=True,
                  context_dim=512, cond_embed=True)
BENCH_TRANSFORMER = dict(num_blocks=8, dim=512, num_heads=8, context_dim=512)
