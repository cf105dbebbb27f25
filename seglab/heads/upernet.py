# Generated from chapters/06_upernet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""UPerNet head (Xiao et al., ECCV 2018), configured as mmsegmentation's UPerHead: the Pyramid Pooling Module on the
deepest level, an FPN over all levels, and a 3x3 fusion of all FPN outputs at the finest level."""

import torch
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, resize_concat, select
from seglab.heads.fpn import FPN
from seglab.heads.psp import PPM


class UPerHead(nn.Module):
    """PPM + 3x3 bottleneck on the last level; an FPN (Conv-BN-ReLU laterals and outputs, bilinear top-down) on the
    others with the PPM branch as its top; all outputs resized to the finest level, concatenated, fused by a 3x3
    Conv-BN-ReLU; dropout and a 1x1 classifier."""

    def __init__(self, in_channels=(256, 512, 1024, 2048), channels=512, num_classes=21, pool_scales=(1, 2, 3, 6),
                 in_index=(0, 1, 2, 3), dropout=0.1):
        super().__init__()
        if len(in_channels) != len(in_index) or len(in_channels) < 2:
            raise ValueError(f"UPerHead needs one in_channels entry per level of in_index and at least two levels; "
                             f"got in_channels={tuple(in_channels)}, in_index={tuple(in_index)}.")
        self.in_channels, self.in_index = tuple(in_channels), tuple(in_index)
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.fpn = FPN(in_channels[:-1], channels, norm=True, upsample="bilinear")
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        *lower, top = select(features, self.in_index, self.in_channels)  # [C2, C3, C4], C5 (channels checked)
        top = self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1))  # (b, channels, h5, w5)
        outs = self.fpn(lower, top=top)  # fine to coarse: len(in_channels) x (b, channels, h_i, w_i)
        fused = resize_concat(outs, indices=range(len(outs)))  # (b, len(in_channels) * channels, h2, w2)
        return self.cls(self.fpn_bottleneck(fused))  # (b, channels, h2, w2) -> (b, num_classes, h2, w2)
