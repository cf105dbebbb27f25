# Generated from chapters/23_dmnet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""DMNet's head (He, Deng and Qiao, ICCV 2019): dynamic convolutional modules whose depthwise filters are generated
from the input, configured as mmsegmentation's DMHead."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, one_level


def same_padding(filter_size):
    """(left, right, top, bottom) zero padding that keeps h x w under a k x k convolution, as mmsegmentation's DCM
    pads: symmetric for odd k; for even k one more row and column on the top and left."""
    pad = (filter_size - 1) // 2
    extra = 1 - filter_size % 2  # 1 for even sizes
    return (pad + extra, pad, pad + extra, pad)


def dynamic_depthwise_conv(x, filters):
    """Filter every channel of every sample with its own k x k filter: x (b, c, h, w), filters (b, c, k, k) ->
    (b, c, h, w). One grouped convolution over the whole batch: the b * c (sample, channel) pairs are the groups."""
    b, c, h, w = x.shape
    stacked = rearrange(x, "b c h w -> 1 (b c) h w")  # the batch becomes channels
    weight = rearrange(filters, "b c kh kw -> (b c) 1 kh kw")  # one filter per group
    out = F.conv2d(F.pad(stacked, same_padding(filters.shape[-1])), weight, groups=b * c)  # (1, b c, h, w)
    return rearrange(out, "1 (b c) h w -> b c h w", b=b)


class DCM(nn.Module):
    """Dynamic convolutional module: a k x k depthwise filter per channel, generated from the input by adaptive
    average pooling to k x k and a 1x1 conv (with bias), filters the input reduced by a 1x1 Conv-BN-ReLU; then
    BatchNorm and ReLU, and with ``fusion`` one more 1x1 Conv-BN-ReLU."""

    def __init__(self, in_channels, channels, filter_size, fusion=False):
        super().__init__()
        self.filter_size = filter_size
        self.filter_gen_conv = nn.Conv2d(in_channels, channels, 1)
        self.input_redu_conv = ConvBNReLU(in_channels, channels, 1)
        self.norm = nn.BatchNorm2d(channels)
        self.activate = nn.ReLU(inplace=True)
        self.fusion_conv = ConvBNReLU(channels, channels, 1) if fusion else None

    def filters(self, x):
        """(b, in_channels, h, w) -> (b, channels, k, k): the filters this input gets."""
        return self.filter_gen_conv(F.adaptive_avg_pool2d(x, self.filter_size))

    def forward(self, x):  # (b, in_channels, h, w)
        filters = self.filters(x)  # (b, channels, k, k), from this input
        out = dynamic_depthwise_conv(self.input_redu_conv(x), filters)  # (b, channels, h, w)
        out = self.activate(self.norm(out))
        return out if self.fusion_conv is None else self.fusion_conv(out)


class DMHead(nn.Module):
    """DMNet's head: one DCM per filter size on one feature level, concatenated with the level itself, a 3x3
    Conv-BN-ReLU bottleneck, then dropout and a 1x1 classification conv."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, filter_sizes=(1, 3, 5, 7), fusion=False,
                 in_index=-1, dropout=0.1):
        super().__init__()
        self.in_channels, self.in_index = in_channels, in_index
        self.dcm_modules = nn.ModuleList(DCM(in_channels, channels, k, fusion) for k in filter_sizes)
        self.bottleneck = ConvBNReLU(in_channels + len(filter_sizes) * channels, channels, 3)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        outs = [x] + [dcm(x) for dcm in self.dcm_modules]  # the input, then (b, channels, h, w) per filter size
        return self.cls(self.bottleneck(torch.cat(outs, dim=1)))  # (b, num_classes, h, w)
