# Generated from chapters/04_aspp.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Atrous spatial pyramid pooling and the DeepLabV3 head (Chen et al., 2017), configured as mmsegmentation's
ASPPHead."""

import torch
from einops import reduce
from torch import nn

from seglab.nn.blocks import ConvBNReLU, DepthwiseSeparableConv, classifier, one_level, resize


class ImagePool(nn.Module):
    """The image-level branch: global average pool, 1x1 Conv-BN-ReLU, bilinear upsampling to the input's size."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels, 1)

    def forward(self, x):  # (b, in_channels, h, w)
        pooled = reduce(x, "b c h w -> b c 1 1", "mean")  # global average pool
        return resize(self.conv(pooled), x.shape[-2:])  # (b, channels, 1, 1) -> (b, channels, h, w)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel branches on one feature map, concatenated along channels.

    One branch per rate in ``dilations``: a 1x1 Conv-BN-ReLU for rate 1, a 3x3 Conv-BN-ReLU with that dilation
    otherwise (a depthwise separable one if ``separable``, as in DeepLabV3+); the image-pooling branch first if
    ``image_pool``. Output: (b, out_channels, h, w), out_channels = channels x number of branches."""

    def __init__(self, in_channels, channels, dilations=(1, 12, 24, 36), image_pool=True, separable=False):
        super().__init__()
        self.dilations = tuple(dilations)
        if not self.dilations and not image_pool:
            raise ValueError("ASPP needs at least one branch: give dilations or set image_pool=True.")
        self.image_pool = ImagePool(in_channels, channels) if image_pool else None
        self.branches = nn.ModuleList()
        for rate in self.dilations:
            if rate == 1:
                self.branches.append(ConvBNReLU(in_channels, channels, 1))
            elif separable:
                self.branches.append(DepthwiseSeparableConv(in_channels, channels, 3, dilation=rate))
            else:
                self.branches.append(ConvBNReLU(in_channels, channels, 3, dilation=rate))
        self.out_channels = channels * (len(self.branches) + int(image_pool))

    def forward(self, x):  # (b, in_channels, h, w)
        outs = [self.image_pool(x)] if self.image_pool is not None else []
        outs += [branch(x) for branch in self.branches]  # each (b, channels, h, w)
        return torch.cat(outs, dim=1)  # (b, out_channels, h, w)


class ASPPHead(nn.Module):
    """DeepLabV3's head: ASPP on one feature level, a 3x3 Conv-BN-ReLU bottleneck that fuses the branches, then
    dropout and a 1x1 classification conv."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, dilations=(1, 12, 24, 36), image_pool=True,
                 in_index=-1, dropout=0.1):
        super().__init__()
        self.in_channels, self.in_index = in_channels, in_index
        self.aspp = ASPP(in_channels, channels, dilations, image_pool)
        self.bottleneck = ConvBNReLU(self.aspp.out_channels, channels, 3)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        out = self.bottleneck(self.aspp(x))  # (b, branches * channels, h, w) -> (b, channels, h, w)
        return self.cls(out)  # (b, num_classes, h, w)
