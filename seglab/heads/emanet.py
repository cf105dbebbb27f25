# Generated from chapters/19_emanet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""EMANet's head (Li et al., ICCV 2019): attention through a few bases found by expectation-maximisation,
configured as mmsegmentation's EMAHead."""

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, one_level


def em_step(x, bases):
    """One EM iteration on pixels x (b, c, n) with bases (b, c, k). E-step: responsibilities z (b, n, k), a softmax
    over the bases of x . mu. M-step: each base becomes the mean of the pixels weighted by its responsibilities
    (normalised to sum 1 over the pixels), L2-normalised over channels. Returns (z, new bases)."""
    z = torch.softmax(torch.einsum("bcn,bck->bnk", x, bases), dim=-1)  # E-step: (b, n, k), sums to 1 over k
    weights = F.normalize(z, p=1, dim=1)  # (b, n, k), sums to 1 over n
    bases = F.normalize(torch.einsum("bcn,bnk->bck", x, weights), p=2, dim=1)  # M-step: (b, c, k), unit columns
    return z, bases


class EMAModule(nn.Module):
    """``num_stages`` EM iterations from the stored bases, without gradient, then the reconstruction mu z^T. In
    training, the batch's final bases update the stored ones by a moving average (``momentum``): the bases are a
    buffer, never trained by gradient."""

    def __init__(self, channels=512, num_bases=64, num_stages=3, momentum=0.1):
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be at least 1, got {num_stages}.")
        self.num_stages, self.momentum = num_stages, momentum
        bases = torch.randn(1, channels, num_bases) * math.sqrt(2.0 / num_bases)  # mmseg's initialisation
        self.register_buffer("bases", F.normalize(bases, p=2, dim=1))  # (1, c, k)

    def em(self, x):
        """The EM iterations on x (b, c, n): the last responsibilities z (b, n, k) and the final bases (b, c, k)."""
        bases = self.bases.expand(x.shape[0], -1, -1)  # (b, c, k): every image starts from the stored bases
        with torch.no_grad():  # as in mmseg and the authors' code: no gradient flows through the EM
            for _ in range(self.num_stages):
                z, bases = em_step(x, bases)
        return z, bases

    def forward(self, feats):
        h, w = feats.shape[-2:]
        z, bases = self.em(rearrange(feats, "b c h w -> b c (h w)"))
        recon = torch.einsum("bck,bnk->bcn", bases, z)  # x_hat = mu z^T: (b, c, n)
        if self.training:
            with torch.no_grad():
                update = F.normalize(reduce(bases, "b c k -> 1 c k", "mean"), p=2, dim=1)
                self.bases = (1 - self.momentum) * self.bases + self.momentum * update.float()
        return rearrange(recon, "b c (h w) -> b c h w", h=h, w=w)


class EMAHead(nn.Module):
    """3x3 Conv-BN-ReLU to ``ema_channels``, a frozen 1x1 conv (features of any sign), the EM attention module,
    ReLU, 1x1 Conv-BN, a residual sum with ReLU, a 3x3 bottleneck to ``channels``, optionally fused with the input
    by a 3x3 Conv-BN-ReLU (``concat_input``), then dropout and a 1x1 classifier."""

    def __init__(self, in_channels=2048, channels=256, ema_channels=512, num_classes=21, num_bases=64,
                 num_stages=3, momentum=0.1, concat_input=True, in_index=-1, dropout=0.1):
        super().__init__()
        self.in_channels, self.in_index, self.concat_input = in_channels, in_index, concat_input
        self.ema_in_conv = ConvBNReLU(in_channels, ema_channels, 3)
        self.ema_mid_conv = nn.Conv2d(ema_channels, ema_channels, 1)  # with a bias, no norm, frozen at its init
        nn.init.kaiming_normal_(self.ema_mid_conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.ema_mid_conv.bias)
        self.ema_mid_conv.requires_grad_(False)
        self.ema_module = EMAModule(ema_channels, num_bases, num_stages, momentum)
        self.ema_out_conv = ConvBNReLU(ema_channels, ema_channels, 1, relu=False)
        self.bottleneck = ConvBNReLU(ema_channels, channels, 3)
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, 3) if concat_input else None
        self.cls = classifier(channels, num_classes, dropout)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        feats = self.ema_in_conv(x)  # (b, e, h, w), non-negative
        recon = self.ema_module(self.ema_mid_conv(feats))  # (b, e, h, w): mu z^T, constant for autograd
        out = F.relu(feats + self.ema_out_conv(F.relu(recon)))  # (b, e, h, w)
        out = self.bottleneck(out)  # (b, channels, h, w)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))  # (b, in_channels + channels, h, w) -> (b, channels, h, w)
        return self.cls(out)  # (b, num_classes, h, w)

    @torch.no_grad()
    def responsibilities(self, features):
        """The last E-step's responsibilities (b, k, h, w) of every base for every pixel, without updating the
        stored bases (for explorers)."""
        x = one_level(features, self.in_index, self.in_channels)
        feats = self.ema_mid_conv(self.ema_in_conv(x))
        z, _ = self.ema_module.em(rearrange(feats, "b c h w -> b c (h w)"))
        return rearrange(z, "b (h w) k -> b k h w", h=x.shape[-2], w=x.shape[-1])
