# Generated from chapters/14_ccnet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Criss-cross attention and the CCNet head (Huang et al., ICCV 2019), configured as mmsegmentation's CCHead."""

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from seglab.nn.blocks import one_level
from seglab.heads.fcn import FCNHead


def criss_cross_mask(h, w, device=None):
    """(h*w, h*w) boolean: key m is in the row or the column of query n (the query itself included, once)."""
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    row = rearrange(rows, "h -> h 1").expand(h, w).flatten()  # (n,) the row of each position
    col = rearrange(cols, "w -> 1 w").expand(h, w).flatten()
    return (rearrange(row, "n -> n 1") == row) | (rearrange(col, "n -> n 1") == col)


class CrissCrossAttention(nn.Module):
    """x + gamma * (criss-cross attention of x), as mmcv's ``CrissCrossAttention``: each position attends to the
    h + w - 1 positions of its column and its row, with one softmax over both; no 1/sqrt(d) scale; gamma starts at 0.

    ``explicit=True`` (the default, mmcv's form) computes the (b, h, w, h + w) energies with einsum, O(hw(h + w));
    ``explicit=False`` computes the same thing as full attention masked to the cross, through SDPA, O((hw)^2)."""

    def __init__(self, channels=512, explicit=True):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))  # mmcv's Scale(0.): the block starts as the identity
        self.explicit = explicit

    def weights(self, x):
        """(b, c, h, w) -> (b, h, w, h + w): the weights of query (h, w) over its column (first h) and its row (w).
        The query's own position is in both; like mmcv, the column copy gets -inf, so it is counted once."""
        h = x.shape[-2]
        q, k = self.query(x), self.key(x)  # (b, c', h, w)
        column = einsum(q, k, "b c h w, b c i w -> b h w i")  # query (h, w) . key (i, w): same column
        row = einsum(q, k, "b c h w, b c h j -> b h w j")  # query (h, w) . key (h, j): same row
        self_position = rearrange(torch.eye(h, dtype=torch.bool, device=x.device), "h i -> h 1 i")  # i == h
        column = column.masked_fill(self_position, float("-inf"))
        return torch.softmax(torch.cat([column, row], dim=-1), dim=-1)  # one softmax over h + w

    def dense_weights(self, x):
        """The same weights scattered to a full (b, h, w, h, w) map (zero off the cross), for explorers and checks."""
        h, w = x.shape[-2:]
        a = self.weights(x)
        column, row = a[..., :h], a[..., h:]  # (b, h, w, i), (b, h, w, j)
        eye_h, eye_w = torch.eye(h, device=x.device), torch.eye(w, device=x.device)
        return (einsum(column, eye_w, "b h w i, w j -> b h w i j")  # key (i, w): column of the query
                + einsum(row, eye_h, "b h w j, h i -> b h w i j"))  # key (h, j): row of the query

    def forward(self, x):  # (b, c, h, w)
        h, w = x.shape[-2:]
        v = self.value(x)  # (b, c, h, w)
        if self.explicit:
            a = self.weights(x)  # (b, h, w, h + w)
            out = (einsum(v, a[..., :h], "b c i w, b h w i -> b c h w")  # gather along the column
                   + einsum(v, a[..., h:], "b c h j, b h w j -> b c h w"))  # and along the row
        else:  # full attention over the h*w positions, masked to the cross: same result, quadratic cost
            # SDPA's memory-lean CPU kernel needs contiguous q, k, v of one width: v is split into groups of
            # q's width that share q and k (expanded views, no copies)
            q, k = (rearrange(t(x), "b c h w -> b 1 (h w) c").contiguous() for t in (self.query, self.key))
            groups = v.shape[1] // q.shape[-1]
            v = rearrange(v, "b (g c) h w -> b g (h w) c", g=groups).contiguous()  # (b, groups, n, c')
            q, k = (t.expand(-1, groups, -1, -1) for t in (q, k))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=criss_cross_mask(h, w, x.device), scale=1.0)
            out = rearrange(out, "b g (h w) c -> b (g c) h w", h=h)
        return x + self.gamma * out


class CCHead(FCNHead):
    """FCN's two 3x3 Conv-BN-ReLU with ``recurrence`` passes of one criss-cross attention block (shared weights)
    between them, then (``concat_input``) concatenation with the input, a 3x3 fusion, dropout, 1x1 classifier."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, recurrence=2, concat_input=True, in_index=-1,
                 dropout=0.1, explicit=True):
        super().__init__(in_channels, channels, num_classes, num_convs=2, kernel_size=3, concat_input=concat_input,
                         in_index=in_index, dropout=dropout)
        self.cca = CrissCrossAttention(channels, explicit)
        self.recurrence = recurrence

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # the level read, checked: (b, in_channels, h, w)
        out = self.convs[0](x)  # (b, channels, h, w)
        for _ in range(self.recurrence):  # the same block, applied again to its own output
            out = self.cca(out)
        out = self.convs[1](out)
        if self.concat_input:  # FCN's fusion: (b, in_channels + channels, h, w) -> (b, channels, h, w)
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls(out)  # logits (b, num_classes, h, w)

    def attention_maps(self, features):
        """Per pass, the dense (b, h*w, h*w) criss-cross weights, and the effective map of all passes so far (their
        product: where a query's output gathers from, through the chain of weights): a list of (weights, effective)."""
        x = self.convs[0](one_level(features, self.in_index, self.in_channels))
        maps, effective = [], None
        for _ in range(self.recurrence):
            a = rearrange(self.cca.dense_weights(x), "b h w i j -> b (h w) (i j)")
            effective = a if effective is None else einsum(a, effective, "b n m, b m k -> b n k")
            maps.append((a, effective))
            x = self.cca(x)
        return maps
