# Generated from chapters/13_dnl.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Disentangled non-local head (Yin et al., ECCV 2020), configured as mmsegmentation's DNLHead."""

import math

import torch
from einops import einsum, rearrange, reduce
from torch import nn

from seglab.nn.attention import attend, attention_weights
from seglab.nn.blocks import one_level
from seglab.heads.fcn import FCNHead


class DisentangledNonLocal(nn.Module):
    """x + conv_out(pairwise) + conv_out(unary): the non-local block with whitened query and key (the pairwise
    term, a softmax at ``temperature``) and a separate unary term (one softmax map over positions per image, from a
    1x1 conv), as mmseg's ``DisentangledNonLocal2d`` (embedded Gaussian). ``explicit=True`` writes the pairwise
    attention out with einsum and softmax instead of SDPA."""

    def __init__(self, channels=512, reduction=2, use_scale=True, temperature=0.05, explicit=False):
        super().__init__()
        inner = channels // reduction
        self.query = nn.Conv2d(channels, inner, 1)  # mmcv's theta (a ConvModule without norm: conv with bias)
        self.key = nn.Conv2d(channels, inner, 1)  # phi
        self.value = nn.Conv2d(channels, inner, 1)  # g
        self.conv_out = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.conv_mask = nn.Conv2d(channels, 1, 1)  # the unary term's logits, one per position
        for conv in (self.query, self.key, self.value):  # mmcv's init: normal(0.01), zero bias
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_out[1].weight)  # zero-initialised BN: the block starts as the identity
        self.scale = (1 / math.sqrt(inner) if use_scale else 1.0) / temperature
        self.explicit = explicit

    def embed(self, x):
        """Whitened query and key, and the value: (b, c, h, w) -> three (b, h*w, inner)."""
        # contiguous: SDPA's memory-lean CPU kernel needs the channel axis last in memory, else it falls back
        q, k, v = (rearrange(conv(x), "b c h w -> b (h w) c").contiguous() for conv in (self.query, self.key,
                                                                                        self.value))
        q = q - reduce(q, "b n c -> b 1 c", "mean")  # whitening: subtract the mean query ...
        k = k - reduce(k, "b n c -> b 1 c", "mean")  # ... and the mean key, over positions
        return q, k, v

    def unary_weights(self, x):
        """softmax over positions of the 1x1 conv_mask: (b, c, h, w) -> (b, h*w), one map per image."""
        return torch.softmax(rearrange(self.conv_mask(x), "b 1 h w -> b (h w)"), dim=-1)

    def attention_maps(self, x):
        """(pairwise (b, n, n), unary (b, n)) weights over the n = h*w positions, for explorers."""
        q, k, _ = self.embed(x)
        return attention_weights(q, k, self.scale), self.unary_weights(x)

    def forward(self, x):  # (b, c, h, w)
        h = x.shape[-2]
        q, k, v = self.embed(x)  # (b, n, inner) each
        pairwise = attend(q, k, v, self.scale, self.explicit)  # softmax(q k^T * scale) v: (b, n, inner)
        unary = einsum(self.unary_weights(x), v, "b n, b n c -> b c")  # (b, inner): the same for every query
        pairwise = rearrange(pairwise, "b (h w) c -> b c h w", h=h)
        unary = rearrange(unary, "b c -> b c 1 1")
        # mmseg applies conv_out (conv + BN) to each term separately; the unary one broadcasts over positions
        return x + self.conv_out(pairwise) + self.conv_out(unary)  # (b, c, h, w)


class DNLHead(FCNHead):
    """FCN's two 3x3 Conv-BN-ReLU with a disentangled non-local block between them, then (``concat_input``)
    concatenation with the input and a 3x3 fusion, dropout and the 1x1 classifier."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, reduction=2, use_scale=True,
                 temperature=0.05, concat_input=True, in_index=-1, dropout=0.1, explicit=False):
        super().__init__(in_channels, channels, num_classes, num_convs=2, kernel_size=3, concat_input=concat_input,
                         in_index=in_index, dropout=dropout)
        self.dnl_block = DisentangledNonLocal(channels, reduction, use_scale, temperature, explicit)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # the level read, checked: (b, in_channels, h, w)
        out = self.convs[1](self.dnl_block(self.convs[0](x)))  # (b, channels, h, w)
        if self.concat_input:  # FCN's fusion: (b, in_channels + channels, h, w) -> (b, channels, h, w)
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls(out)  # logits (b, num_classes, h, w)

    def attention_maps(self, features):
        """The block's (pairwise (b, n, n), unary (b, n)) weights on ``features``, n = positions of the level."""
        x = one_level(features, self.in_index, self.in_channels)
        return self.dnl_block.attention_maps(self.convs[0](x))
