# Generated from chapters/21_ocrnet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""OCRNet (Yuan et al., ECCV 2020): object-contextual representations, configured as mmsegmentation's
``ocrnet_r50-d8``: an FCN stage predicts soft object regions, the OCR head pools pixels into one representation
per region and lets every pixel attend to the regions."""


import torch
from einops import rearrange
from torch import nn

from seglab.nn.attention import attend, attention_weights
from seglab.nn.blocks import ConvBNReLU, classifier, resize, select
from seglab.heads.fcn import FCNHead
from seglab.nn.losses import seg_loss


def object_regions(feats, region_logits, scale=1.0):
    """Spatial gather: feats (b, c, h, w) and region logits (b, k, h, w) -> object representations (b, k, c). Each
    region's weights are a softmax of its logits over the pixels; its representation is the weighted sum of the
    pixel features."""
    weights = torch.softmax(scale * rearrange(region_logits, "b k h w -> b k (h w)"), dim=-1)  # (b, k, n)
    return torch.einsum("bkn,bcn->bkc", weights, rearrange(feats, "b c h w -> b c (h w)"))


def projection(in_channels, out_channels, num_convs):
    """``num_convs`` 1x1 Conv-BN-ReLU blocks (mmseg's key/query/value/out projections with ``ConvModule``)."""
    return nn.Sequential(*[ConvBNReLU(in_channels if i == 0 else out_channels, out_channels, 1)
                           for i in range(num_convs)])


class ObjectAttention(nn.Module):
    """Pixel-to-region attention: queries from the pixels, keys and values from the k object representations
    (two 1x1 Conv-BN-ReLU for queries and keys, one for values and for the output), softmax(q k^T / sqrt(d)) v;
    the context is concatenated with the pixel features and fused by a 1x1 Conv-BN-ReLU."""

    def __init__(self, channels=512, key_channels=256, explicit=True):
        super().__init__()
        self.key_channels, self.explicit = key_channels, explicit
        self.query_project = projection(channels, key_channels, 2)
        self.key_project = projection(channels, key_channels, 2)
        self.value_project = projection(channels, key_channels, 1)
        self.out_project = projection(key_channels, channels, 1)
        self.bottleneck = ConvBNReLU(2 * channels, channels, 1)

    def qkv(self, feats, regions):
        """feats (b, c, h, w), regions (b, k, c) -> q (b, n, d), k (b, k, d), v (b, k, d)."""
        q = rearrange(self.query_project(feats), "b d h w -> b (h w) d")
        regions = rearrange(regions, "b k c -> b c k 1")  # the k regions as a k x 1 map for the 1x1 convs
        k = rearrange(self.key_project(regions), "b d k 1 -> b k d")
        v = rearrange(self.value_project(regions), "b d k 1 -> b k d")
        return q, k, v

    def forward(self, feats, regions):
        q, k, v = self.qkv(feats, regions)
        context = attend(q, k, v, scale=self.key_channels ** -0.5, explicit=self.explicit)  # (b, n, d)
        context = rearrange(context, "b (h w) d -> b d h w", h=feats.shape[-2], w=feats.shape[-1])
        return self.bottleneck(torch.cat([self.out_project(context), feats], dim=1))  # (b, c, h, w)


class OCRHead(nn.Module):
    """The cascade of ``ocrnet_r50-d8``. Stage 1, ``soft_regions``: an FCN head on ``in_index[0]`` (one 3x3 conv,
    ``fcn_channels``) whose logits are the soft object regions, trained with weight ``fcn_weight``. Stage 2: a 3x3
    Conv-BN-ReLU on ``in_index[1]`` to ``channels``, the spatial gather into one representation per class region,
    pixel-to-region attention, dropout and a 1x1 classifier."""

    def __init__(self, in_channels=(1024, 2048), channels=512, ocr_channels=256, fcn_channels=256, num_classes=21,
                 in_index=(2, 3), scale=1.0, dropout=0.1, fcn_weight=0.4, explicit=True):
        super().__init__()
        self.in_channels, self.in_index = tuple(in_channels), tuple(in_index)
        self.scale, self.fcn_weight = scale, fcn_weight
        self.soft_regions = FCNHead(in_channels[0], fcn_channels, num_classes, num_convs=1, concat_input=False,
                                    in_index=in_index[0], dropout=dropout)
        self.bottleneck = ConvBNReLU(in_channels[1], channels, 3)
        self.object_attention = ObjectAttention(channels, ocr_channels, explicit)
        self.cls = classifier(channels, num_classes, dropout)

    def stages(self, features):
        """(pixel features (b, c, h, w), region logits (b, k, h, w) on the same grid, the FCN stage's logits)."""
        _, x = select(features, self.in_index, self.in_channels)  # checked: [C4, C5]
        region_logits = self.soft_regions(features)  # (b, num_classes, h4, w4)
        feats = self.bottleneck(x)  # (b, channels, h, w)
        on_grid = region_logits if region_logits.shape[-2:] == feats.shape[-2:] else resize(region_logits, feats.shape[-2:])
        return feats, on_grid, region_logits

    def cascade(self, features):
        """(OCR logits, FCN stage logits)."""
        feats, on_grid, region_logits = self.stages(features)
        regions = object_regions(feats, on_grid, self.scale)  # (b, k, channels)
        return self.cls(self.object_attention(feats, regions)), region_logits

    def forward(self, features):
        return self.cascade(features)[0]  # (b, num_classes, h, w)

    def losses(self, features, masks):
        """The OCR logits' cross-entropy and ``fcn_weight`` times the FCN stage's (mmseg's loss weights 1.0, 0.4)."""
        logits, region_logits = self.cascade(features)
        size = masks.shape[-2:]
        return {"ocr": seg_loss(resize(logits, size), masks),
                "soft regions": self.fcn_weight * seg_loss(resize(region_logits, size), masks)}

    @torch.no_grad()
    def maps(self, features):
        """For explorers: the soft regions (b, k, h, w) (each a softmax over the pixels) and the pixel-to-region
        attention (b, h, w, k) (for every pixel a softmax over the k regions)."""
        feats, on_grid, _ = self.stages(features)
        h, w = feats.shape[-2:]
        block = self.object_attention
        q, k, _ = block.qkv(feats, object_regions(feats, on_grid, self.scale))
        weights = torch.softmax(self.scale * rearrange(on_grid, "b k h w -> b k (h w)"), dim=-1)
        attention = attention_weights(q, k, block.key_channels ** -0.5)  # (b, n, k)
        return (rearrange(weights, "b k (h w) -> b k h w", h=h, w=w),
                rearrange(attention, "b (h w) k -> b h w k", h=h, w=w))
