# Generated from chapters/05_fpn.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Semantic FPN (Kirillov et al., CVPR 2019): the FPN neck (Lin et al., CVPR 2017) and the FPN head of Panoptic
FPN, configured as mmsegmentation's ``FPN`` neck and ``FPNHead``."""

import math

import torch.nn.functional as F
from torch import nn

from seglab.nn.blocks import ConvBNReLU, check_features, classifier, resize, select


def top_down(laterals, mode="nearest"):
    """The top-down path, in place on the list ``laterals`` (maps ordered fine to coarse, equal channels): from
    the coarsest level down, level i is upsampled to the size of level i-1 and added to it. Returns the list.

    ``mode`` is "nearest" (mmsegmentation's FPN neck) or "bilinear" with ``align_corners=False`` (UPerHead)."""
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"top_down upsamples with mode 'nearest' or 'bilinear', got {mode!r}.")
    for i in range(len(laterals) - 1, 0, -1):
        size = tuple(laterals[i - 1].shape[-2:])
        up = resize(laterals[i], size) if mode == "bilinear" else F.interpolate(laterals[i], size=size, mode="nearest")
        # a new tensor, not +=: with norm=True the lateral is a ReLU output that autograd keeps for backward
        laterals[i - 1] = laterals[i - 1] + up  # (b, c, h_{i-1}, w_{i-1})
    return laterals


class FPN(nn.Module):
    """Feature pyramid network: a 1x1 lateral conv per level, the top-down path, a 3x3 conv per level.

    ``norm=False``: plain convs with a bias and no activation (mmsegmentation's FPN neck, as in its Semantic FPN
    config); ``norm=True``: Conv-BN-ReLU (the FPN inside UPerHead). ``forward(features, top=None)`` returns one map
    of ``out_channels`` per level, fine to coarse. A ``top`` map, if given, joins as the coarsest lateral as it is
    (no lateral conv): the top-down path starts from it, and it is returned, unchanged, as the last output."""

    def __init__(self, in_channels=(256, 512, 1024, 2048), out_channels=256, norm=False, upsample="nearest"):
        super().__init__()
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}.")
        self.in_channels, self.out_channels, self.upsample = tuple(in_channels), out_channels, upsample

        def conv(c_in, kernel_size):
            if norm:
                return ConvBNReLU(c_in, out_channels, kernel_size)
            plain = nn.Conv2d(c_in, out_channels, kernel_size, padding=kernel_size // 2)
            nn.init.xavier_uniform_(plain.weight)  # mmseg's FPN neck initialisation
            nn.init.zeros_(plain.bias)
            return plain

        self.lateral_convs = nn.ModuleList([conv(c, 1) for c in self.in_channels])
        self.fpn_convs = nn.ModuleList([conv(out_channels, 3) for _ in self.in_channels])

    def forward(self, features, top=None):
        check_features(features)
        if len(features) != len(self.in_channels):
            raise ValueError(f"This FPN was built for {len(self.in_channels)} levels (in_channels="
                             f"{self.in_channels}) and was given {len(features)}.")
        features = select(features, range(len(features)), self.in_channels)  # checks each level's channels
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]  # (b, out_channels, h_i, w_i)
        if top is not None:
            laterals.append(top)  # the coarsest lateral, used as it is
        top_down(laterals, self.upsample)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]  # zip stops before `top`
        if top is not None:
            outs.append(laterals[-1])
        return outs


class FPNHead(nn.Module):
    """The semantic branch of Panoptic FPN: per level, Conv-BN-ReLU 3x3 blocks, each followed by a 2x bilinear
    upsampling, until the level reaches the finest stride (one block for the finest level, no upsampling);
    the levels are summed there, then dropout and a 1x1 classification conv."""

    def __init__(self, in_channels=(256,) * 4, channels=128, feature_strides=(4, 8, 16, 32), num_classes=21,
                 dropout=0.1):
        super().__init__()
        if len(feature_strides) != len(in_channels):
            raise ValueError(f"feature_strides {tuple(feature_strides)} needs one stride per input level "
                             f"(in_channels {tuple(in_channels)}).")
        if min(feature_strides) != feature_strides[0]:
            raise ValueError(f"The first level must be the finest; got feature_strides {tuple(feature_strides)}.")
        self.in_channels, self.feature_strides = tuple(in_channels), tuple(feature_strides)
        self.scale_heads = nn.ModuleList()
        for c, stride in zip(self.in_channels, self.feature_strides):
            length = max(1, int(math.log2(stride) - math.log2(self.feature_strides[0])))  # 2x steps to the finest
            layers = []
            for k in range(length):
                layers.append(ConvBNReLU(c if k == 0 else channels, channels, 3))
                if stride != self.feature_strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        x = select(features, range(len(self.in_channels)), self.in_channels)  # neck outputs, fine to coarse
        out = self.scale_heads[0](x[0])  # (b, channels, h_0, w_0)
        for scale_head, level in zip(self.scale_heads[1:], x[1:]):
            y = scale_head(level)  # (b, channels, h_0, w_0) when the strides are right
            out = out + (y if y.shape[-2:] == out.shape[-2:] else resize(y, out.shape[-2:]))
        return self.cls(out)  # (b, num_classes, h_0, w_0)


class SemanticFPN(nn.Module):
    """Semantic FPN as one decode head: the FPN neck on the backbone's [C2, C3, C4, C5], then the FPN head."""

    def __init__(self, in_channels=(256, 512, 1024, 2048), neck_channels=256, channels=128, num_classes=21,
                 dropout=0.1, feature_strides=(4, 8, 16, 32)):
        super().__init__()
        self.neck = FPN(in_channels, neck_channels)
        self.head = FPNHead((neck_channels,) * len(in_channels), channels, feature_strides, num_classes, dropout)

    def forward(self, features):
        return self.head(self.neck(features))  # (b, num_classes, H/4, W/4)
