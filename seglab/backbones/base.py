"""What every backbone shares: freezing (no gradients, BatchNorm statistics kept fixed)."""

from torch import nn


class Freezable:
    """A backbone that can be frozen: ``freeze()`` stops its gradients and keeps its BatchNorm layers in eval mode
    (frozen statistics), also after a later ``train()``."""

    frozen = False

    def freeze(self):
        self.frozen = True
        self.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self
