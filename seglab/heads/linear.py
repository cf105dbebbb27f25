# Generated from chapters/01_pipeline.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""The linear probe: the smallest head, the floor every other head must beat."""

from torch import nn

from seglab.nn.blocks import classifier, one_level


class LinearHead(nn.Module):
    """Classify each C5 vector on its own: dropout and a 1x1 conv, no context at all."""

    def __init__(self, in_channels=2048, num_classes=21):
        super().__init__()
        self.in_channels = in_channels
        self.cls = classifier(in_channels, num_classes)

    def forward(self, features):
        return self.cls(one_level(features, -1, self.in_channels))  # (b, classes, h, w) at C5's stride
