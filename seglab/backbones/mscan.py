# Generated from chapters/28_hamburger.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""SegNeXt's backbone block (Guo et al., NeurIPS 2022): multi-scale convolutional attention (MSCA) and the MSCAN
block and backbone built from it, as mmsegmentation's ``mmseg/models/backbones/mscan.py`` (``AttentionModule``,
``SpatialAttention``, ``Block``, ``MSCAN``)."""

import torch
from torch import nn

STRIPS = (7, 11, 21)  # MSCAN's strip kernels: 1 x k then k x 1, depthwise, one pair per scale


def depthwise(channels, kernel):
    """A depthwise conv (one filter per channel, with a bias) of ``kernel`` = (kh, kw), padded to keep the size."""
    kh, kw = kernel
    return nn.Conv2d(channels, channels, (kh, kw), padding=(kh // 2, kw // 2), groups=channels)


class MSCA(nn.Module):
    """Multi-scale convolutional attention (mmseg's ``AttentionModule``): a 5x5 depthwise conv, three branches of
    strip convs (1 x k then k x 1, depthwise, k = 7, 11, 21) on its output, the sum of the 5x5 output and the three
    branches, a 1x1 conv across channels; the result multiplies the input element by element."""

    def __init__(self, channels, kernel=5, strips=STRIPS):
        super().__init__()
        self.local = depthwise(channels, (kernel, kernel))
        self.strips = nn.ModuleList(nn.Sequential(depthwise(channels, (1, k)), depthwise(channels, (k, 1)))
                                    for k in strips)
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        attn = self.local(x)
        attn = attn + sum(branch(attn) for branch in self.strips)
        return self.mix(attn) * x  # (b, c, h, w): the attention weights every channel of every pixel


class SpatialAttention(nn.Module):
    """MSCA between two 1x1 convs with a GELU, plus a shortcut (mmseg's ``SpatialAttention``)."""

    def __init__(self, channels):
        super().__init__()
        self.proj_1, self.activation = nn.Conv2d(channels, channels, 1), nn.GELU()
        self.msca = MSCA(channels)
        self.proj_2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.proj_2(self.msca(self.activation(self.proj_1(x)))) + x


class MSCANBlock(nn.Module):
    """One MSCAN block (mmseg's ``Block``): BN, spatial attention, layer scale, residual; BN, the MLP (1x1 conv,
    3x3 depthwise conv, GELU, 1x1 conv), layer scale, residual. Layer scales start at 1e-2. (No drop path: the
    book does not train the backbone.)"""

    def __init__(self, channels, mlp_ratio=4):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.norm1, self.attn = nn.BatchNorm2d(channels), SpatialAttention(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), depthwise(hidden, (3, 3)), nn.GELU(),
                                 nn.Conv2d(hidden, channels, 1))
        self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(channels, 1, 1))
        self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(channels, 1, 1))

    def forward(self, x):
        x = x + self.layer_scale_1 * self.attn(self.norm1(x))
        return x + self.layer_scale_2 * self.mlp(self.norm2(x))


class MSCAN(nn.Module):
    """The MSCAN backbone: a stem of two stride-2 3x3 convs (BN, GELU between them, BN after), then per stage a
    stride-2 3x3 patch embedding with BN (not for the first), ``depths[i]`` blocks and a LayerNorm over channels.
    Returns the four levels [C2, C3, C4, C5] at strides 4, 8, 16, 32. Defaults: MSCAN-T."""

    def __init__(self, dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4), in_channels=3):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_channels, dims[0] // 2, 3, 2, 1), nn.BatchNorm2d(dims[0] // 2), nn.GELU(),
                             nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))
        self.embeds = nn.ModuleList([stem] + [nn.Sequential(nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1),
                                                            nn.BatchNorm2d(dims[i])) for i in range(1, len(dims))])
        self.stages = nn.ModuleList(nn.Sequential(*[MSCANBlock(d, r) for _ in range(n)])
                                    for d, n, r in zip(dims, depths, mlp_ratios))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)

    def forward(self, x):
        levels = []
        for embed, stage, norm in zip(self.embeds, self.stages, self.norms):
            x = stage(embed(x))
            x = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()  # LayerNorm over the channels
            levels.append(x)
        return levels
