# Generated from chapters/16_ann.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Asymmetric non-local head (Zhu et al., ICCV 2019), configured as mmsegmentation's ANNHead."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seglab.nn.attention import attend, attention_weights
from seglab.nn.blocks import ConvBNReLU, classifier, select


class PyramidPool(nn.Module):
    """mmseg's PPMConcat: average-pool a map to s x s cells for each scale s and concatenate all cells,
    (b, c, h, w) -> (b, c, sum of s^2): 1 + 9 + 36 + 64 = 110 cells for scales (1, 3, 6, 8)."""

    def __init__(self, scales=(1, 3, 6, 8)):
        super().__init__()
        self.scales = tuple(scales)

    def forward(self, x):  # (b, c, h, w)
        return torch.cat([rearrange(F.adaptive_avg_pool2d(x, s), "b c i j -> b c (i j)") for s in self.scales],
                         dim=2)  # (b, c, m)


class PyramidAttention(nn.Module):
    """ANN's attention block: queries at every position of ``query_feats``; keys and values from ``key_feats``,
    projected and then pooled to the pyramid's m cells, so the map is (h*w) x m. Query and key projections are
    1x1 Conv-BN-ReLU (shared when ``share_key_query``), the value a 1x1 conv with bias; softmax(q k^T / sqrt(d)) v
    goes through a 1x1 output conv (with bias), initialised to zero as in mmseg: the block starts by returning 0."""

    def __init__(self, key_in_channels, query_in_channels, channels, out_channels, share_key_query=False,
                 key_pool_scales=(1, 3, 6, 8), explicit=False):
        super().__init__()
        self.key = ConvBNReLU(key_in_channels, channels, 1)
        self.query = None if share_key_query else ConvBNReLU(query_in_channels, channels, 1)
        self.value = nn.Conv2d(key_in_channels, channels, 1)
        self.out = nn.Conv2d(channels, out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.pool = PyramidPool(key_pool_scales)
        self.explicit = explicit

    def qkv(self, query_feats, key_feats):
        query = self.key if self.query is None else self.query
        q = rearrange(query(query_feats), "b d h w -> b (h w) d").contiguous()  # (b, n, d): every position
        k = rearrange(self.pool(self.key(key_feats)), "b d m -> b m d").contiguous()  # (b, m, d): pooled cells
        v = rearrange(self.pool(self.value(key_feats)), "b d m -> b m d").contiguous()  # (b, m, d)
        return q, k, v

    def forward(self, query_feats, key_feats):
        q, k, v = self.qkv(query_feats, key_feats)
        context = attend(q, k, v, explicit=self.explicit)  # (b, n, d); scale 1/sqrt(d) (mmseg's matmul_norm)
        return self.out(rearrange(context, "b (h w) d -> b d h w", h=query_feats.shape[-2]))

    def weights(self, query_feats, key_feats):
        """The (b, h*w, m) attention map: row n is how position n spreads its attention over the m pooled cells."""
        q, k, _ = self.qkv(query_feats, key_feats)
        return attention_weights(q, k)


class AFNB(nn.Module):
    """Asymmetric fusion non-local block: the high-level map (C5) queries the pooled low-level map (C4); the
    context, concatenated with C5, goes through a 1x1 Conv-BN (no ReLU) back to ``out_channels``."""

    def __init__(self, low_in_channels, high_in_channels, channels, out_channels, key_pool_scales=(1, 3, 6, 8),
                 explicit=False):
        super().__init__()
        self.attention = PyramidAttention(low_in_channels, high_in_channels, channels, out_channels,
                                          key_pool_scales=key_pool_scales, explicit=explicit)
        self.bottleneck = ConvBNReLU(out_channels + high_in_channels, out_channels, 1, relu=False)

    def forward(self, low, high):  # (b, low_in, h', w'), (b, high_in, h, w)
        context = self.attention(high, low)  # (b, out_channels, h, w)
        return self.bottleneck(torch.cat([context, high], dim=1))  # (b, out_channels, h, w)


class APNB(nn.Module):
    """Asymmetric pyramid non-local block: self-attention of a map over its own pooled cells (query and key
    projections shared), concatenated with the map, then a 1x1 Conv-BN-ReLU."""

    def __init__(self, in_channels, channels, out_channels, key_pool_scales=(1, 3, 6, 8), explicit=False):
        super().__init__()
        self.attention = PyramidAttention(in_channels, in_channels, channels, out_channels, share_key_query=True,
                                          key_pool_scales=key_pool_scales, explicit=explicit)
        self.bottleneck = ConvBNReLU(2 * in_channels, out_channels, 1)

    def forward(self, x):  # (b, in_channels, h, w)
        return self.bottleneck(torch.cat([self.attention(x, x), x], dim=1))  # (b, out_channels, h, w)


class ANNHead(nn.Module):
    """AFNB fuses C4 into C5, dropout, a 3x3 Conv-BN-ReLU to ``channels``, APNB, classifier. mmseg's
    ``query_scales=(1,)`` (one attention stage, queries at full resolution) is the configuration built here."""

    def __init__(self, in_channels=(1024, 2048), channels=512, num_classes=21, project_channels=256,
                 key_pool_scales=(1, 3, 6, 8), in_index=(2, 3), dropout=0.1, explicit=False):
        super().__init__()
        low, high = in_channels
        self.in_channels, self.in_index = tuple(in_channels), tuple(in_index)
        self.fusion = AFNB(low, high, project_channels, high, key_pool_scales, explicit)
        self.dropout = nn.Dropout2d(dropout)
        self.bottleneck = ConvBNReLU(high, channels, 3)
        self.context = APNB(channels, project_channels, channels, key_pool_scales, explicit)
        self.cls = classifier(channels, num_classes, dropout)

    def fused(self, features):
        low, high = select(features, self.in_index, self.in_channels)  # C4, C5, checked
        return self.bottleneck(self.dropout(self.fusion(low, high)))  # (b, channels, h, w)

    def forward(self, features):
        return self.cls(self.context(self.fused(features)))  # (b, num_classes, h, w)

    def attention_maps(self, features):
        """(AFNB's map of C5 queries over C4's pooled cells, APNB's map of the fused features over their own
        pooled cells), each (b, h*w, m), for explorers (call in eval mode)."""
        low, high = select(features, self.in_index, self.in_channels)
        return self.fusion.attention.weights(high, low), self.context.attention.weights(*[self.fused(features)] * 2)
