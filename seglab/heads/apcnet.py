# Generated from chapters/22_apcnet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""APCNet (He et al., CVPR 2019): Adaptive Context Modules at several pooling scales, configured as mmsegmentation's
APCHead."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, one_level


def adaptive_context(affinity, pooled):
    """z[c, y, x] = sum over the s x s cells (i, j) of affinity[(i j), y, x] * pooled[c, i, j]: affinity
    (b, s*s, h, w), pooled (b, c, s, s) -> (b, c, h, w). No normalisation: the weights are independent sigmoids."""
    scale = pooled.shape[-1]
    affinity = rearrange(affinity, "b (i j) y x -> b i j y x", i=scale)  # mmseg's order: cell index i * s + j
    return torch.einsum("bijyx,bcij->bcyx", affinity, pooled)


class ACM(nn.Module):
    """Adaptive Context Module at one pooling scale s: the input pooled to s x s cells (1x1 Conv-BN-ReLU); at every
    position, s*s sigmoid weights from its reduced feature plus a global one (``gla``, a 1x1 conv); the weighted sum
    of the cells, a 1x1 Conv-BN-ReLU, the reduced input added back, relu, and with ``fusion`` one more 1x1 conv."""

    def __init__(self, pool_scale, in_channels=2048, channels=512, fusion=True):
        super().__init__()
        self.pool_scale, self.fusion = pool_scale, fusion
        self.pooled_redu_conv = ConvBNReLU(in_channels, channels, 1)
        self.input_redu_conv = ConvBNReLU(in_channels, channels, 1)
        self.global_info = ConvBNReLU(channels, channels, 1)
        self.gla = nn.Conv2d(channels, pool_scale**2, 1)
        self.residual_conv = ConvBNReLU(channels, channels, 1)
        if fusion:
            self.fusion_conv = ConvBNReLU(channels, channels, 1)

    def affinity(self, x):
        """(local (b, c, h, w), pooled (b, c, s, s), affinity (b, s*s, h, w)) for the input x (b, in, h, w)."""
        pooled = self.pooled_redu_conv(F.adaptive_avg_pool2d(x, self.pool_scale))  # (b, c, s, s)
        local = self.input_redu_conv(x)  # (b, c, h, w)
        global_ = self.global_info(F.adaptive_avg_pool2d(local, 1))  # (b, c, 1, 1)
        # mmseg resizes the 1x1 global map to (h, w) bilinearly: a constant map, the same as broadcasting it
        return local, pooled, torch.sigmoid(self.gla(local + global_))  # (b, s*s, h, w)

    def forward(self, x):
        local, pooled, affinity = self.affinity(x)
        z = F.relu(self.residual_conv(adaptive_context(affinity, pooled)) + local)  # (b, c, h, w)
        return self.fusion_conv(z) if self.fusion else z


class APCHead(nn.Module):
    """ACMs at ``pool_scales`` on one level (C5), concatenated with it, a 3x3 Conv-BN-ReLU bottleneck, dropout and
    the 1x1 classifier: PSPNet's head with each pooled branch replaced by an ACM."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, pool_scales=(1, 2, 3, 6), fusion=True,
                 in_index=-1, dropout=0.1):
        super().__init__()
        self.in_channels, self.in_index = in_channels, in_index
        self.acm_modules = nn.ModuleList(ACM(s, in_channels, channels, fusion) for s in pool_scales)
        self.bottleneck = ConvBNReLU(in_channels + len(pool_scales) * channels, channels, 3)
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        context = torch.cat([x, *(acm(x) for acm in self.acm_modules)], dim=1)  # (b, in + n * channels, h, w)
        return self.cls(self.bottleneck(context))  # (b, num_classes, h, w)

    def affinity_maps(self, features):
        """Per pooling scale s, the weights of every position over the s x s cells: a list of (b, s, s, h, w)."""
        x = one_level(features, self.in_index, self.in_channels)
        return [rearrange(acm.affinity(x)[2], "b (i j) y x -> b i j y x", i=acm.pool_scale) for acm in self.acm_modules]
