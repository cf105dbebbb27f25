# Generated from chapters/10_lraspp.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Lite R-ASPP (Howard et al., Searching for MobileNetV3, ICCV 2019), configured as mmsegmentation's LRASPPHead."""

import torch
from einops import reduce
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, resize, select


class LRASPPHead(nn.Module):
    """The lite head of MobileNetV3: on the last level, a 1x1 Conv-BN-ReLU multiplied by a sigmoid gate computed from
    average-pooled windows of the same level; then, from the coarsest skip level to the finest, upsample, concatenate
    a 1x1 projection of the level (``branch_channels``) and fuse with a 1x1 Conv-BN-ReLU; then dropout and a 1x1
    classification conv, at the resolution of the first level read.

    ``pool_kernel`` and ``pool_stride`` are the gate's average pool (mmsegmentation: 49, (16, 20)); with
    ``pool_kernel=None`` the gate pools globally, as torchvision's LRASPP does."""

    def __init__(self, in_channels=(16, 24, 960), channels=128, num_classes=21, branch_channels=(32, 64),
                 in_index=(0, 1, 2), pool_kernel=49, pool_stride=(16, 20), dropout=0.1):
        super().__init__()
        if not len(in_channels) == len(in_index) == len(branch_channels) + 1:
            raise ValueError(f"LR-ASPP reads one level per branch plus the last level: got in_channels {in_channels}, "
                             f"in_index {in_index} and branch_channels {branch_channels}.")
        self.in_channels, self.in_index, self.pool_kernel = tuple(in_channels), tuple(in_index), pool_kernel
        self.convs = nn.ModuleList(nn.Conv2d(c, b, 1, bias=False) for c, b in zip(in_channels[:-1], branch_channels))
        self.conv_ups = nn.ModuleList(ConvBNReLU(channels + b, channels, 1) for b in branch_channels)
        self.conv_up_input = nn.Conv2d(channels, channels, 1)
        self.aspp_conv = ConvBNReLU(in_channels[-1], channels, 1)
        self.pool = nn.Identity() if pool_kernel is None else nn.AvgPool2d(pool_kernel, pool_stride)
        self.gate_conv = nn.Conv2d(in_channels[-1], channels, 1, bias=False)  # no norm: straight into the sigmoid
        self.cls = classifier(channels, num_classes, dropout)

    def gate(self, x):
        """(b, in_channels[-1], h, w) -> (b, channels, gh, gw): sigmoid of a 1x1 conv of the pooled windows."""
        if self.pool_kernel is None:
            pooled = reduce(x, "b c h w -> b c 1 1", "mean")  # a true global pool
        elif min(x.shape[-2:]) < self.pool_kernel:
            raise ValueError(f"The gate's {self.pool_kernel}x{self.pool_kernel} average pool does not fit the "
                             f"{tuple(x.shape[-2:])} map of the last level; use a smaller pool_kernel or None "
                             "(global pooling).")
        else:
            pooled = self.pool(x)  # (b, c, gh, gw): one cell per pooling window
        return torch.sigmoid(self.gate_conv(pooled))

    def forward(self, features):
        levels = select(features, self.in_index, self.in_channels)  # checked: [finest skip, ..., last level]
        x = levels[-1]  # (b, in_channels[-1], h, w)
        x = self.aspp_conv(x) * resize(self.gate(x), x.shape[-2:])  # (b, channels, h, w), gated per channel
        x = self.conv_up_input(x)
        for level, conv, conv_up in reversed(list(zip(levels[:-1], self.convs, self.conv_ups))):
            x = resize(x, level.shape[-2:])  # up to the skip level's resolution
            x = conv_up(torch.cat([x, conv(level)], dim=1))  # (b, channels + branch, ...) -> (b, channels, ...)
        return self.cls(x)  # (b, num_classes, h0, w0) at the first level's resolution
