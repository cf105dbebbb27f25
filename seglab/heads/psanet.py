# Generated from chapters/18_psanet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""PSANet head: point-wise spatial attention, collect and distribute, as mmsegmentation's ``PSAHead``, with mmcv's
compiled ``PSAMask`` op written in PyTorch (one gather)."""

from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, one_level


@lru_cache(maxsize=16)
def psa_index(h, w, mask_h, mask_w):
    """For an h x w map and an over-complete mask_h x mask_w mask predicted at every position: ``index`` (j, i), both
    over the h*w positions, the mask channel at which position i holds its weight for position j (the offset j - i,
    moved to the mask's centre), and ``inside`` (j, i), whether that offset falls inside the mask. Cached."""
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    y, x = (t.flatten() for t in torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
    dy = y[:, None] - y[None, :] + half_h  # (j, i): row of the mask
    dx = x[:, None] - x[None, :] + half_w  # (j, i): column of the mask
    inside = (dy >= 0) & (dy < mask_h) & (dx >= 0) & (dx < mask_w)
    return dy.clamp(0, mask_h - 1) * mask_w + dx.clamp(0, mask_w - 1), inside


def psa_mask(mask, mask_size, direction):
    """mmcv's ``PSAMask`` op: over-complete masks (b, mask_h * mask_w, h, w) -> point-wise maps (b, h*w, h, w). Each
    position cuts the h x w window centred on itself out of its mask_h x mask_w mask. ``collect``: out[b, j, i] is
    the weight that position i (on the map axes) gives to position j (the channel axis); ``distribute``: out[b, i, j]
    is the same number, transposed: the weight with which i (channel) sends to j (map). Pairs outside the mask: 0."""
    b, _, h, w = mask.shape
    index, inside = psa_index(int(h), int(w), *mask_size)  # (j, i) each; int(): sizes are tensors when traced
    flat = rearrange(mask, "b m h w -> b m (h w)")  # column i: the mask predicted at position i
    maps = flat.gather(1, index.to(mask.device).expand(b, -1, -1))  # (b, j, i) = flat[b, index[j, i], i]
    if not inside.all():  # only when the mask is smaller than 2h-1 x 2w-1
        maps = maps.masked_fill(~inside.to(mask.device), 0)
    if direction == "distribute":
        maps = rearrange(maps, "b j i -> b i j")
    return rearrange(maps, "b n (h w) -> b n h w", h=h)


def shrunk_size(h, w, factor):
    """mmseg's shrink of an h x w map by ``factor``: ((h', w'), align_corners). When both sides are odd (e.g. 97 of
    a 769-px crop) the corners are kept, (h - 1) / factor + 1; otherwise the sides are divided."""
    if factor == 1:
        return (h, w), False
    if h % factor and w % factor:
        return ((h - 1) // factor + 1, (w - 1) // factor + 1), True
    return (h // factor, w // factor), False


class PSAHead(nn.Module):
    """Point-wise spatial attention on one level, as mmsegmentation's ``PSAHead``: for each direction (collect,
    distribute, or both), a 1x1 Conv-BN-ReLU reduction, a shrink of the map by ``shrink_factor``, a 1x1 Conv-BN-ReLU
    and a 1x1 conv predicting a ``mask_size`` mask per position, cut to an (hw x hw) map by :func:`psa_mask`, a
    softmax over sources and an aggregation; then ``proj`` (1x1 Conv-BN-ReLU back to ``in_channels``, with mmseg's
    ``padding=1``), a resize to the input's size, the concatenation with the input, a 3x3 bottleneck and the
    classifier. The masks must be at least 2h-1 x 2w-1 of the shrunk map to reach every pair of positions."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, mask_size=(97, 97), psa_type="bi-direction",
                 shrink_factor=2, normalization_factor=1.0, psa_softmax=True, in_index=-1, dropout=0.1,
                 proj_padding=1):
        super().__init__()
        if psa_type not in ("collect", "distribute", "bi-direction"):
            raise ValueError(f"psa_type must be 'collect', 'distribute' or 'bi-direction', got {psa_type!r}.")
        self.in_channels, self.in_index, self.mask_size = in_channels, in_index, tuple(mask_size)
        self.shrink_factor, self.normalization_factor, self.psa_softmax = shrink_factor, normalization_factor, psa_softmax
        self.directions = ("collect", "distribute") if psa_type == "bi-direction" else (psa_type,)

        def attention():  # 1x1 Conv-BN-ReLU, then one mask logit per mask cell (no bias)
            return nn.Sequential(ConvBNReLU(channels, channels, 1),
                                 nn.Conv2d(channels, self.mask_size[0] * self.mask_size[1], 1, bias=False))

        self.reduce, self.attention = ConvBNReLU(in_channels, channels, 1), attention()
        if psa_type == "bi-direction":  # the distribute branch (mmseg's names)
            self.reduce_p, self.attention_p = ConvBNReLU(in_channels, channels, 1), attention()
        self.proj = ConvBNReLU(channels * len(self.directions), in_channels, 1)
        self.proj[0].padding = (proj_padding, proj_padding)  # mmseg pads this 1x1 conv: a 1-pixel frame
        self.bottleneck = ConvBNReLU(2 * in_channels, channels, 3)
        self.cls = classifier(channels, num_classes, dropout)

    def branches(self):
        modules = [(self.reduce, self.attention)] + ([(self.reduce_p, self.attention_p)] if len(self.directions) == 2 else [])
        return [(d, r, a) for d, (r, a) in zip(self.directions, modules)]

    def point_wise_maps(self, x):
        """{direction: (reduced map (b, c, h', w'), softmax-normalised map (b, h'w' sources, h', w' targets))}."""
        size, align = shrunk_size(*x.shape[-2:], self.shrink_factor)
        out = {}
        for direction, reduce, attention in self.branches():
            z = F.interpolate(reduce(x), size=size, mode="bilinear", align_corners=align)  # (b, c, h', w')
            maps = psa_mask(attention(z), self.mask_size, direction)  # (b, h'w' sources, h', w' targets)
            out[direction] = (z, maps.softmax(dim=1) if self.psa_softmax else maps)
        return out

    def forward(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, C, H, W)
        (h, w), align = shrunk_size(*x.shape[-2:], self.shrink_factor)
        aggregated = [torch.einsum("bcj,bji->bci", rearrange(z, "b c h w -> b c (h w)"),
                                   rearrange(maps, "b j h w -> b j (h w)"))  # target i: sum over sources j
                      for z, maps in self.point_wise_maps(x).values()]  # each (b, c, h*w)
        out = rearrange(torch.cat(aggregated, dim=1), "b c (h w) -> b c h w", h=h) / self.normalization_factor
        out = F.interpolate(self.proj(out), size=x.shape[-2:], mode="bilinear", align_corners=align)  # (b, C, H, W)
        return self.cls(self.bottleneck(torch.cat([x, out], dim=1)))  # (b, num_classes, H, W)

    @torch.no_grad()
    def attention_maps(self, features, query):
        """For ``query`` = (y, x) on the shrunk grid, per image, {name: (b, h', w')}: the weights with which it
        collects from every position and with which every position distributes to it (each sums to 1), and the
        distribute weights it sends with (a row of the distribute map: not normalised over targets)."""
        maps = {d: m for d, (_, m) in self.point_wise_maps(one_level(features, self.in_index, self.in_channels)).items()}
        (y, x), out = query, {}
        if "collect" in maps:
            h = maps["collect"].shape[-2]
            out["collect: gathers from"] = rearrange(maps["collect"][:, :, y, x], "b (h w) -> b h w", h=h)
        if "distribute" in maps:
            h, w = maps["distribute"].shape[-2:]
            out["distribute: receives from"] = rearrange(maps["distribute"][:, :, y, x], "b (h w) -> b h w", h=h)
            out["distribute: sends to"] = maps["distribute"][:, y * w + x]  # (b, h', w')
        return out
