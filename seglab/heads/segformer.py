# Generated from chapters/27_segformer.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""SegFormer's all-MLP head (Xie et al., NeurIPS 2021), configured as mmsegmentation's ``SegformerHead``: a 1x1
projection of every level to ``channels``, all resized to the first (stride-4) level, concatenated, fused by a 1x1
conv, then dropout and the classifier."""

import torch
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, resize, select


class SegformerHead(nn.Module):
    """Per level a 1x1 Conv-BN-ReLU to ``channels`` (the paper's Linear(C_i, C); mmseg adds BN and ReLU), bilinear
    resize to the first level's grid, concatenation, a 1x1 Conv-BN-ReLU from ``len(in_channels) * channels`` to
    ``channels`` (the paper's Linear(4C, C)), dropout and a 1x1 classifier (Linear(C, N_cls))."""

    def __init__(self, in_channels=(32, 64, 160, 256), channels=256, num_classes=21, in_index=(0, 1, 2, 3),
                 dropout=0.1):
        super().__init__()
        if len(in_channels) != len(in_index) or len(in_channels) < 1:
            raise ValueError(f"SegformerHead needs one in_channels entry per level of in_index; got "
                             f"in_channels={tuple(in_channels)}, in_index={tuple(in_index)}.")
        self.in_channels, self.in_index = tuple(in_channels), tuple(in_index)
        self.convs = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in in_channels])
        self.fusion_conv = ConvBNReLU(len(in_channels) * channels, channels, 1)
        self.cls = classifier(channels, num_classes, dropout)

    def projections(self, features):
        """Every level projected to ``channels`` and resized to the first level's grid: a list of (b, channels, h, w)."""
        levels = select(features, self.in_index, self.in_channels)  # channels checked
        size = levels[0].shape[-2:]
        return [resize(conv(x), size) for conv, x in zip(self.convs, levels)]

    def forward(self, features):
        fused = self.fusion_conv(torch.cat(self.projections(features), dim=1))  # (b, channels, h, w)
        return self.cls(fused)  # (b, num_classes, h, w) at the first level's stride
