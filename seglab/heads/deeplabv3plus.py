# Generated from chapters/07_deeplabv3plus.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""DeepLabV3+ head (Chen et al., ECCV 2018), configured as mmsegmentation's DepthwiseSeparableASPPHead."""

import torch
from torch import nn

from seglab.nn.blocks import ConvBNReLU, DepthwiseSeparableConv, classifier, one_level, resize, select
from seglab.heads.aspp import ASPP


class DeepLabV3PlusHead(nn.Module):
    """Separable ASPP on the deep level (C5), then a light decoder that fuses the shallow level (C2): logits at
    C2's stride. ``c1_in_channels=0`` drops the C2 projection (mmsegmentation allows this only with
    ``c1_channels=0`` too): the refinement convs then run on the ASPP output, and the logits stay at C5's stride."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, dilations=(1, 12, 24, 36),
                 c1_in_channels=256, c1_channels=48, in_index=3, c1_index=0, dropout=0.1):
        super().__init__()
        if c1_in_channels and c1_channels < 1:
            raise ValueError(f"c1_channels must be at least 1 when C2 is fused (c1_in_channels={c1_in_channels}), "
                             f"got {c1_channels}.")
        self.in_channels, self.in_index = in_channels, in_index
        self.c1_in_channels, self.c1_index = c1_in_channels, c1_index
        self.aspp = ASPP(in_channels, channels, dilations, separable=True)  # (b, 5 * channels, h, w)
        self.bottleneck = ConvBNReLU(self.aspp.out_channels, channels, 3)  # a plain 3x3 conv, as in mmseg
        self.c1_bottleneck = ConvBNReLU(c1_in_channels, c1_channels, 1) if c1_in_channels else None
        fused = channels + (c1_channels if c1_in_channels else 0)
        self.sep_bottleneck = nn.Sequential(DepthwiseSeparableConv(fused, channels, 3),
                                            DepthwiseSeparableConv(channels, channels, 3))
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        if self.c1_bottleneck is None:
            out = self.bottleneck(self.aspp(one_level(features, self.in_index, self.in_channels)))  # (b, channels, h, w)
        else:
            c1, x = select(features, (self.c1_index, self.in_index), (self.c1_in_channels, self.in_channels))
            deep = self.bottleneck(self.aspp(x))  # (b, channels, h, w), stride 8 on a D8 backbone
            low = self.c1_bottleneck(c1)  # (b, c1_in_channels, H, W) -> (b, c1_channels, H, W), stride 4
            out = torch.cat([resize(deep, low.shape[-2:]), low], dim=1)  # (b, channels + c1_channels, H, W)
        return self.cls(self.sep_bottleneck(out))  # (b, channels, H, W) -> (b, num_classes, H, W)
