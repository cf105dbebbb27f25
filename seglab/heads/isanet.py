# Generated from chapters/17_isanet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""ISANet head: interlaced sparse self-attention, long-range then short-range, as mmsegmentation's ``ISAHead``."""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seglab.nn.attention import attend
from seglab.nn.blocks import ConvBNReLU, classifier, one_level


class SelfAttentionBlock(nn.Module):
    """mmsegmentation's ``SelfAttentionBlock`` as ``ISAHead`` configures it: query and key each two 1x1 Conv-BN-ReLU
    down to ``key_channels`` (not shared), value one 1x1 conv with bias (no norm, ``with_out=False``), softmax(q k^T /
    sqrt(key_channels)) v over all positions of each map of the batch, then a 1x1 Conv-BN-ReLU output projection.
    The attention is written out by default (``explicit=True``): for groups of few positions it keeps less for
    backward than SDPA (``explicit=False``)."""

    def __init__(self, channels, key_channels, explicit=True):
        super().__init__()
        self.query = nn.Sequential(ConvBNReLU(channels, key_channels, 1), ConvBNReLU(key_channels, key_channels, 1))
        self.key = nn.Sequential(ConvBNReLU(channels, key_channels, 1), ConvBNReLU(key_channels, key_channels, 1))
        self.value = nn.Conv2d(channels, channels, 1)
        self.out = ConvBNReLU(channels, channels, 1)
        self.explicit = explicit

    def forward(self, x):  # (B, c, h, w): B independent groups of h*w positions each
        h = x.shape[-2]
        q = rearrange(self.query(x), "B d h w -> B (h w) d")
        k = rearrange(self.key(x), "B d h w -> B (h w) d")
        v = rearrange(self.value(x), "B e h w -> B (h w) e")
        context = attend(q, k, v, explicit=self.explicit)  # (B, h*w, c)
        return self.out(rearrange(context, "B (h w) e -> B e h w", h=h))

    def weights(self, x, mask=None):
        """Attention weights over all positions of x (b, c, h, w) -> (b, h*w, h*w); where ``mask`` (h*w, h*w) is
        False the pair is left out of the softmax (the block form of a sparse attention)."""
        q = rearrange(self.query(x), "b d h w -> b (h w) d")
        k = rearrange(self.key(x), "b d h w -> b (h w) d")
        logits = torch.einsum("bnd,bmd->bnm", q, k) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.softmax(dim=-1)

    def masked(self, x, mask):
        """The block output on the whole map with attention restricted by ``mask``: (b, c, h, w) -> (b, c, h, w)."""
        v = rearrange(self.value(x), "b e h w -> b (h w) e")
        context = torch.einsum("bnm,bme->bne", self.weights(x, mask), v)
        return self.out(rearrange(context, "b (h w) e -> b e h w", h=x.shape[-2]))


def interlaced_masks(h, w, down_factor):
    """The two sparse patterns on an h x w map cut into blocks of ``down_factor`` = (ph, pw), as boolean (h*w, h*w):
    long-range, positions i and j have the same place in their blocks (y mod ph, x mod pw): a lattice of stride
    (ph, pw); short-range, i and j lie in the same block (y div ph, x div pw)."""
    ph, pw = down_factor
    y, x = (t.flatten() for t in torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
    same = lambda a: a[:, None] == a[None, :]  # noqa: E731
    return same(y % ph) & same(x % pw), same(y // ph) & same(x // pw)


class ISAHead(nn.Module):
    """Interlaced sparse self-attention on one level: 3x3 Conv-BN-ReLU, a long-range attention within each group of
    positions one block-stride apart, a short-range attention within each block, then the concatenation with the
    block's input, a 1x1 Conv-BN-ReLU and the classifier. ``down_factor`` = (ph, pw) is the block size; the map is
    zero-padded (centred) to a multiple of it and cropped back, as in mmsegmentation."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, isa_channels=256, down_factor=(8, 8),
                 in_index=-1, dropout=0.1, explicit=True):
        super().__init__()
        self.in_channels, self.in_index, self.down_factor = in_channels, in_index, tuple(down_factor)
        self.in_conv = ConvBNReLU(in_channels, channels, 3)
        self.global_relation = SelfAttentionBlock(channels, isa_channels, explicit)  # long range
        self.local_relation = SelfAttentionBlock(channels, isa_channels, explicit)  # short range
        self.out_conv = ConvBNReLU(2 * channels, channels, 1)
        self.cls = classifier(channels, num_classes, dropout)

    def padding(self, h, w):
        """(left, right, top, bottom) zeros that make h x w a multiple of the block size, split as mmseg does."""
        ph, pw = self.down_factor
        pad_h, pad_w = math.ceil(h / ph) * ph - h, math.ceil(w / pw) * pw - w
        return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2

    def interlaced(self, x):
        """(b, c, h, w) -> (b, c, h, w): long-range attention, then short-range attention."""
        b, _, h, w = x.shape
        left, _, top, _ = pad = self.padding(h, w)
        x = F.pad(x, pad)  # (b, c, qh * ph, qw * pw): qh x qw blocks of ph x pw pixels
        (ph, pw), qh = self.down_factor, x.shape[-2] // self.down_factor[0]
        # long range: one group per place (ph, pw) in a block, holding that place of every block: a lattice
        x = self.global_relation(rearrange(x, "b c (qh ph) (qw pw) -> (b ph pw) c qh qw", ph=ph, pw=pw))
        # short range: one group per block (qh, qw), holding its ph x pw pixels
        x = self.local_relation(rearrange(x, "(b ph pw) c qh qw -> (b qh qw) c ph pw", b=b, ph=ph, pw=pw))
        x = rearrange(x, "(b qh qw) c ph pw -> b c (qh ph) (qw pw)", b=b, qh=qh)  # every pixel back in place
        return x[:, :, top:top + h, left:left + w]  # (b, c, h, w) without the padding

    def forward(self, features):
        x = self.in_conv(one_level(features, self.in_index, self.in_channels))  # (b, channels, h, w)
        return self.cls(self.out_conv(torch.cat([self.interlaced(x), x], dim=1)))  # (b, num_classes, h, w)

    @torch.no_grad()
    def attention_maps(self, features, query):
        """Where the output at ``query`` = (y, x) of the feature grid looks, per image: its long-range weights (on
        its lattice), its short-range weights (in its block) and their product through both stages, the share of
        every position in what reaches the query (the pointwise projections aside). {name: (b, h, w)}."""
        x = self.in_conv(one_level(features, self.in_index, self.in_channels))
        b, _, h, w = x.shape
        left, _, top, _ = pad = self.padding(h, w)
        x = F.pad(x, pad)
        long, short = interlaced_masks(*x.shape[-2:], self.down_factor)
        a_long = self.global_relation.weights(x, long.to(x.device))  # (b, n, n), n = padded positions
        a_short = self.local_relation.weights(self.global_relation.masked(x, long.to(x.device)), short.to(x.device))
        i = (query[0] + top) * x.shape[-1] + query[1] + left
        maps = {"long range": a_long[:, i], "short range": a_short[:, i], "both stages": torch.einsum("bn,bnm->bm", a_short[:, i], a_long)}
        return {k: rearrange(m, "b (h w) -> b h w", h=x.shape[-2])[:, top:top + h, left:left + w]
                for k, m in maps.items()}
