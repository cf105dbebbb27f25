# Generated from chapters/02_fcn.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""FCN head (Long et al., CVPR 2015), configured as mmsegmentation's FCNHead."""

import torch
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, one_level


class FCNHead(nn.Module):
    """``num_convs`` Conv-BN-ReLU blocks on one feature level, optionally concatenated with their input and fused
    by one more Conv-BN-ReLU, then dropout and a 1x1 classification conv."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, num_convs=2, kernel_size=3,
                 concat_input=True, dilation=1, in_index=-1, dropout=0.1):
        super().__init__()
        if num_convs == 0 and in_channels != channels:
            raise ValueError(f"with num_convs=0, in_channels ({in_channels}) must equal channels ({channels}).")
        self.in_channels, self.in_index, self.concat_input = in_channels, in_index, concat_input
        self.convs = nn.Sequential(*[
            ConvBNReLU(in_channels if i == 0 else channels, channels, kernel_size, dilation=dilation)
            for i in range(num_convs)])
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, kernel_size) if concat_input else None
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        out = self.convs(x)  # (b, channels, h, w)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))  # (b, in_channels + channels, h, w) -> (b, channels, h, w)
        return self.cls(out)  # (b, num_classes, h, w)
