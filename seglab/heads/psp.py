# Generated from chapters/03_pspnet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Pyramid Pooling Module and PSPNet head (Zhao et al., CVPR 2017), configured as mmsegmentation's PSPHead."""

import torch
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, one_level, resize


class PPM(nn.ModuleList):
    """Pyramid pooling: per scale ``s``, average-pool to an s x s grid, 1x1 Conv-BN-ReLU, bilinear upsampling back.

    ``forward(x)`` returns the list of upsampled branch outputs (not including ``x``), like mmsegmentation's PPM.
    In training mode the 1x1 branch needs a batch of at least 2 (BatchNorm of one value per channel)."""

    def __init__(self, pool_scales=(1, 2, 3, 6), in_channels=2048, channels=512):
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(in_channels, channels, 1))
                         for scale in pool_scales)
        self.pool_scales, self.in_channels, self.channels = tuple(pool_scales), in_channels, channels

    def forward(self, x):  # (b, in_channels, h, w)
        size = x.shape[-2:]
        # each branch: (b, in_channels, h, w) -> pool (b, in_channels, s, s) -> conv (b, channels, s, s)
        return [resize(branch(x), size) for branch in self]  # len(pool_scales) x (b, channels, h, w)


class PSPHead(nn.Module):
    """PPM on one level (C5), concatenated with its input, a 3x3 Conv-BN-ReLU bottleneck, dropout, 1x1 classifier."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, pool_scales=(1, 2, 3, 6), in_index=-1,
                 dropout=0.1):
        super().__init__()
        self.in_channels, self.in_index = in_channels, in_index
        self.psp_modules = PPM(pool_scales, in_channels, channels)
        self.bottleneck = ConvBNReLU(in_channels + len(pool_scales) * channels, channels, 3)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        pyramid = torch.cat([x, *self.psp_modules(x)], dim=1)  # (b, in_channels + n * channels, h, w)
        return self.cls(self.bottleneck(pyramid))  # (b, channels, h, w) -> (b, num_classes, h, w)
