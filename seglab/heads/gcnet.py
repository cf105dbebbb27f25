# Generated from chapters/12_gcnet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""GCNet head (Cao et al., ICCVW 2019), configured as mmsegmentation's GCHead: FCN's head with a global context block
between its two convolutions."""

import torch
from einops import rearrange, reduce
from torch import nn

from seglab.nn.attention import attend
from seglab.nn.blocks import one_level
from seglab.heads.fcn import FCNHead


def bottleneck(channels, planes):
    """1x1 conv to ``planes``, LayerNorm over (planes, 1, 1), ReLU, 1x1 conv back; the last conv starts at zero, so
    the block it feeds starts as the identity."""
    transform = nn.Sequential(nn.Conv2d(channels, planes, 1), nn.LayerNorm([planes, 1, 1]), nn.ReLU(inplace=True),
                              nn.Conv2d(planes, channels, 1))
    nn.init.zeros_(transform[-1].weight)
    nn.init.zeros_(transform[-1].bias)
    return transform


class ContextBlock(nn.Module):
    """Global context block (mmcv's ``ContextBlock``): pool the map into ONE context vector, transform it through a
    bottleneck of ``int(channels * ratio)`` channels, and broadcast it back to every position.

    ``pooling_type``: "att" (softmax attention pooling with a 1x1 conv's logits) or "avg". ``fusion_types``: any of
    "channel_add" (x + transform) and "channel_mul" (x * sigmoid(transform)), mul first, as in mmcv. The pooling
    is written out (``explicit=True``, the leaner path for a single query); ``explicit=False`` runs it through SDPA."""

    def __init__(self, channels, ratio=1 / 4, pooling_type="att", fusion_types=("channel_add",), explicit=True):
        super().__init__()
        if pooling_type not in ("att", "avg"):
            raise ValueError(f"pooling_type must be 'att' or 'avg', got {pooling_type!r}.")
        if not fusion_types or not set(fusion_types) <= {"channel_add", "channel_mul"}:
            raise ValueError(f"fusion_types must be a non-empty subset of ('channel_add', 'channel_mul'), got {fusion_types!r}.")
        self.pooling_type, self.explicit = pooling_type, explicit
        planes = int(channels * ratio)
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(channels, 1, 1)  # one logit per position
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        self.channel_add = bottleneck(channels, planes) if "channel_add" in fusion_types else None
        self.channel_mul = bottleneck(channels, planes) if "channel_mul" in fusion_types else None

    def context_mask(self, x):
        """The attention-pooling weights, softmax over the h*w positions of a 1x1 conv's logits: (b, c, h, w) -> (b, h*w)."""
        return torch.softmax(rearrange(self.conv_mask(x), "b 1 h w -> b (h w)"), dim=-1)

    def pool(self, x):
        """The context vector of each image: (b, c, h, w) -> (b, c, 1, 1)."""
        if self.pooling_type == "avg":
            return reduce(x, "b c h w -> b c 1 1", "mean")
        if self.explicit:
            context = torch.einsum("bn,bcn->bc", self.context_mask(x), rearrange(x, "b c h w -> b c (h w)"))
        else:  # one learned query (the 1x1 conv's weight) over keys = values = the positions; its bias cancels
            tokens = rearrange(x, "b c h w -> b (h w) c")
            query = rearrange(self.conv_mask.weight, "1 c 1 1 -> 1 1 c").expand(x.shape[0], -1, -1)
            context = rearrange(attend(query, tokens, tokens, scale=1.0), "b 1 c -> b c")
        return rearrange(context, "b c -> b c 1 1")

    def forward(self, x):
        context = self.pool(x)  # (b, c, 1, 1)
        out = x
        if self.channel_mul is not None:
            out = out * torch.sigmoid(self.channel_mul(context))
        if self.channel_add is not None:
            out = out + self.channel_add(context)  # broadcast to every position
        return out  # (b, c, h, w)


class GCHead(FCNHead):
    """FCN's head with two 3x3 Conv-BN-ReLU blocks and a global context block between them; ``concat_input`` fuses
    the result with the input, as in FCN; then dropout and a 1x1 classifier."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, ratio=1 / 4, pooling_type="att",
                 fusion_types=("channel_add",), kernel_size=3, concat_input=True, dilation=1, in_index=-1, dropout=0.1,
                 explicit=True):
        super().__init__(in_channels, channels, num_classes, num_convs=2, kernel_size=kernel_size,
                         concat_input=concat_input, dilation=dilation, in_index=in_index, dropout=dropout)
        self.gc_block = ContextBlock(channels, ratio, pooling_type, tuple(fusion_types), explicit)

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        out = self.convs[1](self.gc_block(self.convs[0](x)))  # (b, channels, h, w)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))  # (b, in_channels + channels, h, w) -> (b, channels, h, w)
        return self.cls(out)  # (b, num_classes, h, w)

    def context_maps(self, features):
        """The context block's attention-pooling weights, (b, h*w): one map per image, shared by every position."""
        x = one_level(features, self.in_index, self.in_channels)
        return self.gc_block.context_mask(self.convs[0](x))
