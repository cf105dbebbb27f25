"""Token maps for the heads written for a plain ViT (SETR, DPT, Segmenter), taken from a CNN.

A ViT keeps one stride (16) through all its layers, and those heads read several of its layers: SETR's MLA and DPT
four (layers 3, 6, 9 and 12 of ViT-B), SETR's naive and PUP decoders and Segmenter the last. The book's frozen
backbone is a CNN, so ``StrideTaps`` gives its nearest equivalent: the output of the last block of every stage that
runs at the backbone's output stride. For EfficientNet-Lite0 at output stride 16 those are stages 4 to 7 (80, 112,
192 and 320 channels, all at stride 16; the last two are the book's C4 and C5). Unlike a ViT's layers they differ
in width, so the heads get one ``in_channels`` entry per tap. A ViT's CLS token has no counterpart here; a head that
reads it (DPT's readout) takes the spatial mean of its tap instead (see its chapter).
"""

from torch import nn

from seglab.backbones import create
from seglab.backbones.base import Freezable


class StrideTaps(Freezable, nn.Module):
    """The outputs of the last block of each stage of ``net`` (an EfficientNet-Lite) at its output stride: a list
    of (b, c_i, H / s, W / s) maps, all at stride s = ``net.output_stride``."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.name = f"{net.name}-taps"  # names its feature cache, apart from the C2..C5 one
        self.output_stride, self.pretrained = net.output_stride, net.pretrained
        stages = [i for i, s in enumerate(net.stage_strides) if s == net.output_stride]
        self.stages = [i + 1 for i in stages]  # 1-based, as the chapters name them: 4, 5, 6, 7 for Lite0 at OS16
        self.blocks = [net.stage_ends[i] for i in stages]
        self.channels = [net.stage_channels[i] for i in stages]

    def forward(self, x):  # (b, 3, H, W), ImageNet-normalised
        return self.net.block_outputs(x, self.blocks)

    def describe(self):
        return (f"the last block of each of {self.net.name}'s stages {', '.join(map(str, self.stages))} "
                f"({', '.join(map(str, self.channels))} channels, all at stride {self.output_stride})")


def lite0_taps(pretrained=False):
    """``StrideTaps`` of EfficientNet-Lite0 at output stride 16 (with its ImageNet weights if ``pretrained``): the
    token maps the ViT heads train on."""
    return StrideTaps(create("efficientnet_lite0", output_stride=16, pretrained=pretrained))
