# Generated from chapters/11_nonlocal.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Non-local head (Wang et al., CVPR 2018), configured as mmsegmentation's NLHead: FCN's head with an embedded-Gaussian
non-local block between its two convolutions."""

import math

import torch
from einops import rearrange
from torch import nn

from seglab.nn.attention import attend, attention_weights
from seglab.nn.blocks import ConvBNReLU, one_level
from seglab.heads.fcn import FCNHead


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block: every position attends to every position of the same map.

    theta, phi, g are 1x1 convs with bias (no norm) to ``channels // reduction`` channels; the attention output goes
    through ``conv_out``, a 1x1 Conv-BN whose BatchNorm weight starts at zero, and is added to the input, so the block
    is the identity at initialisation (mmcv's ``NonLocal2d``)."""

    def __init__(self, channels, reduction=2, use_scale=True, explicit=False):
        super().__init__()
        self.inter_channels, self.use_scale, self.explicit = channels // reduction, use_scale, explicit
        self.theta, self.phi, self.g = (nn.Conv2d(channels, self.inter_channels, 1) for _ in range(3))
        for conv in (self.theta, self.phi, self.g):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.conv_out = ConvBNReLU(self.inter_channels, channels, 1, relu=False)
        nn.init.zeros_(self.conv_out[1].weight)  # zero-init BN: the residual branch starts at 0

    @property
    def scale(self):
        return 1 / math.sqrt(self.inter_channels) if self.use_scale else 1.0

    def qkv(self, x):
        """Queries, keys and values of every position: (b, c, h, w) -> three contiguous (b, h*w, d). Contiguous,
        because on strided views SDPA's CPU kernel falls back to the math path, which keeps the (n, m) weights."""
        return (rearrange(conv(x), "b d h w -> b (h w) d").contiguous() for conv in (self.theta, self.phi, self.g))

    def attention(self, x):
        """The (b, h*w, h*w) affinity softmax(theta^T phi * scale): row i is where position i reads from."""
        q, k, _ = self.qkv(x)
        return attention_weights(q, k, self.scale)

    def forward(self, x):
        h, w = x.shape[-2:]
        q, k, v = self.qkv(x)  # (b, hw, d) each
        y = attend(q, k, v, scale=self.scale, explicit=self.explicit)  # (b, hw, d)
        y = rearrange(y, "b (h w) d -> b d h w", h=h, w=w)
        return x + self.conv_out(y)  # (b, c, h, w)


class NonLocalHead(FCNHead):
    """FCN's head with two 3x3 Conv-BN-ReLU blocks and a non-local block between them; ``concat_input`` fuses the
    result with the input, as in FCN; then dropout and a 1x1 classifier. ``explicit=True`` computes the attention
    with an explicit einsum and softmax instead of ``F.scaled_dot_product_attention``: same numbers, more memory."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, reduction=2, use_scale=True, kernel_size=3,
                 concat_input=True, dilation=1, in_index=-1, dropout=0.1, explicit=False):
        super().__init__(in_channels, channels, num_classes, num_convs=2, kernel_size=kernel_size,
                         concat_input=concat_input, dilation=dilation, in_index=in_index, dropout=dropout)
        self.nl_block = NonLocal2d(channels, reduction, use_scale, explicit)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        out = self.convs[1](self.nl_block(self.convs[0](x)))  # (b, channels, h, w)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))  # (b, in_channels + channels, h, w) -> (b, channels, h, w)
        return self.cls(out)  # (b, num_classes, h, w)

    def attention_maps(self, features):
        """The non-local block's attention, (b, h*w, h*w), for the given features (call under no_grad, in eval)."""
        x = one_level(features, self.in_index, self.in_channels)
        return self.nl_block.attention(self.convs[0](x))
