"""Building blocks shared by the heads, and the survey's three input transforms."""

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, the ``ConvModule`` of mmsegmentation."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1, groups=1, relu=True):
        padding = dilation * (kernel_size - 1) // 2
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
                  nn.BatchNorm2d(out_channels)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise kxk ConvBNReLU per channel, then a pointwise 1x1 ConvBNReLU that mixes channels."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1):
        super().__init__(
            ConvBNReLU(in_channels, in_channels, kernel_size, stride, dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )


def classifier(channels, num_classes, dropout=0.1):
    """The final decode step of every head: dropout, then a 1x1 conv to one logit per class."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))


def resize(x, size):
    """Bilinear resize of a (b, c, h, w) tensor to ``size`` = (h, w), with ``align_corners=False``."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# --- the three input transforms: a list of feature maps in, what the head decodes out ---

def one_level(features, index=-1):
    """One level: the head sees a single feature map, e.g. C5."""
    return features[index]


def resize_concat(features, indices=(0, 1, 2, 3)):
    """Resize-and-concat: upsample the chosen levels to the first one's size and stack their channels."""
    chosen = [features[i] for i in indices]
    size = chosen[0].shape[-2:]
    return torch.cat([chosen[0]] + [resize(f, size) for f in chosen[1:]], dim=1)  # (b, sum c, h, w)


def select(features, indices=(0, 1, 2, 3)):
    """Select several: the head gets a list of levels and fuses them itself (FPN, UPerNet)."""
    return [features[i] for i in indices]
