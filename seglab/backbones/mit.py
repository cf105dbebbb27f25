# Generated from chapters/27_segformer.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""MiT, the Mix Transformer encoder of SegFormer (Xie et al., NeurIPS 2021), configured as mmsegmentation's
``MixVisionTransformer``; MiT-B0 by default. Four stages, each an overlapping patch embedding (a strided conv and a
LayerNorm), transformer blocks of efficient self-attention (keys and values from a spatially reduced map) and
Mix-FFN (a 3x3 depthwise conv between the two 1x1 layers: no position embedding), and a LayerNorm."""

import torch
from einops import rearrange
from torch import nn

from seglab.nn.attention import attend

EPS = 1e-6  # mmseg's MixVisionTransformer: norm_cfg=dict(type='LN', eps=1e-6), for every LayerNorm of the encoder


def tokens(x):
    """A map (b, d, h, w) as tokens (b, h*w, d)."""
    return rearrange(x, "b d h w -> b (h w) d")


def grid(x, hw):
    """Tokens (b, h*w, d) as a map (b, d, h, w)."""
    return rearrange(x, "b (h w) d -> b d h w", h=hw[0], w=hw[1])


class OverlapPatchEmbed(nn.Module):
    """A ``patch_size`` x ``patch_size`` conv with ``stride`` < ``patch_size`` and padding ``patch_size // 2``: the
    patches overlap. Then a LayerNorm over the channels of every token."""

    def __init__(self, in_channels, dims, patch_size, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dims, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(dims, eps=EPS)

    def forward(self, x):
        x = self.proj(x)  # (b, d, h, w)
        return self.norm(tokens(x)), tuple(x.shape[-2:])  # (b, n, d), (h, w)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the map reduced ``sr_ratio`` times along each side
    (an ``sr_ratio`` x ``sr_ratio`` conv of stride ``sr_ratio``, then a LayerNorm): n queries, n / sr_ratio^2 keys.
    softmax(q k^T / sqrt(d_head)) v through SDPA, then the output projection."""

    def __init__(self, dims, heads, sr_ratio=1):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr_ratio
        self.q = nn.Linear(dims, dims)
        self.kv = nn.Linear(dims, 2 * dims)
        self.proj = nn.Linear(dims, dims)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dims, dims, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dims, eps=EPS)

    def reduce(self, x, hw):
        """The tokens the keys and values are made of: (b, n, d) -> (b, m, d), m = n / sr_ratio^2."""
        if self.sr_ratio == 1:
            return x
        return self.norm(tokens(self.sr(grid(x, hw))))

    def qkv(self, x, hw):
        """q (b, heads, n, e), k and v (b, heads, m, e), e = d / heads."""
        q = rearrange(self.q(x), "b n (heads e) -> b heads n e", heads=self.heads)
        k, v = rearrange(self.kv(self.reduce(x, hw)), "b m (two heads e) -> two b heads m e", two=2, heads=self.heads)
        return q, k, v

    def forward(self, x, hw):
        out = attend(*self.qkv(x, hw))  # SDPA, scale 1/sqrt(e)
        return self.proj(rearrange(out, "b heads n e -> b n (heads e)"))


class MixFFN(nn.Module):
    """1x1 conv to ``hidden`` channels, 3x3 depthwise conv, GELU, 1x1 conv back: mmseg's ``MixFFN`` (its 1x1 convs
    are the paper's Linear layers; the depthwise conv gives the position information)."""

    def __init__(self, dims, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dims, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dims, 1)

    def forward(self, x, hw):
        return tokens(self.fc2(self.act(self.dwconv(self.fc1(grid(x, hw))))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + Mix-FFN(LN(x))."""

    def __init__(self, dims, heads, mlp_ratio=4, sr_ratio=1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dims, eps=EPS)
        self.attn = EfficientSelfAttention(dims, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dims, eps=EPS)
        self.ffn = MixFFN(dims, mlp_ratio * dims)

    def forward(self, x, hw):
        x = x + self.attn(self.norm1(x), hw)
        return x + self.ffn(self.norm2(x), hw)


class Stage(nn.Module):
    """Overlapping patch embedding, ``depth`` blocks, a LayerNorm; returns the stage's map (b, d, h, w)."""

    def __init__(self, in_channels, dims, heads, depth, patch_size, stride, sr_ratio, mlp_ratio=4):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dims, patch_size, stride)
        self.blocks = nn.ModuleList([Block(dims, heads, mlp_ratio, sr_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dims, eps=EPS)

    def forward(self, x):
        x, hw = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, hw)
        return grid(self.norm(x), hw)


class MixVisionTransformer(nn.Module):
    """mmseg's ``MixVisionTransformer``: stage i has ``embed_dims * num_heads[i]`` channels. The defaults are
    MiT-B0 (``configs/_base_/models/segformer_mit-b0.py``): 32, 64, 160, 256 channels at strides 4, 8, 16, 32.
    Returns the four stages' maps [C2, C3, C4, C5]. (Drop path, rate 0.1 in the config, is left out: no parameters,
    and this encoder is measured, not trained.)"""

    def __init__(self, in_channels=3, embed_dims=32, num_layers=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
                 patch_sizes=(7, 3, 3, 3), strides=(4, 2, 2, 2), sr_ratios=(8, 4, 2, 1), mlp_ratio=4):
        super().__init__()
        if not len(num_layers) == len(num_heads) == len(patch_sizes) == len(strides) == len(sr_ratios):
            raise ValueError("MixVisionTransformer needs one num_layers, num_heads, patch_sizes, strides and sr_ratios "
                             "entry per stage.")
        self.in_channels = in_channels
        self.dims = tuple(embed_dims * h for h in num_heads)
        self.strides = tuple(int(torch.tensor(strides[:i + 1]).prod()) for i in range(len(strides)))
        self.stages = nn.ModuleList()
        for dims, heads, depth, patch, stride, sr in zip(self.dims, num_heads, num_layers, patch_sizes, strides,
                                                         sr_ratios):
            self.stages.append(Stage(in_channels, dims, heads, depth, patch, stride, sr, mlp_ratio))
            in_channels = dims

    def forward(self, images):
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != self.in_channels:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"MixVisionTransformer takes images (batch, {self.in_channels}, height, width), got "
                             f"{shape}.")
        features = []
        for stage in self.stages:
            images = stage(images)
            features.append(images)
        return features  # [C2, C3, C4, C5]


def mit_b0():
    """MiT-B0 at mmseg's configuration, randomly initialised (no pretrained MiT weights ship with seglab)."""
    return MixVisionTransformer()
