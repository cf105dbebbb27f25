import math

import pytest
import torch
from torch import nn

from seglab.backbones.mit import EfficientSelfAttention, MixVisionTransformer, mit_b0
from seglab.book.profile import count_parameters
from seglab.heads.segformer import SegformerHead


def mmseg_mit_b0():
    """mmseg's MixVisionTransformer at segformer_mit-b0, rebuilt module for module from torch.nn (mmcv's
    MultiheadAttention wraps nn.MultiheadAttention with bias=qkv_bias; MixFFN is Conv2d 1x1, depthwise 3x3, Conv2d
    1x1; PatchEmbed is a Conv2d with bias and a LayerNorm; every stage ends in a LayerNorm)."""
    layers, c_in = nn.ModuleList(), 3
    for d, heads, patch, sr in zip((32, 64, 160, 256), (1, 2, 5, 8), (7, 3, 3, 3), (8, 4, 2, 1)):
        blocks = nn.ModuleList()
        for _ in range(2):
            attn = nn.ModuleDict({"attn": nn.MultiheadAttention(d, heads, bias=True)})
            if sr > 1:
                attn["sr"], attn["norm"] = nn.Conv2d(d, d, sr, sr), nn.LayerNorm(d)
            ffn = nn.Sequential(nn.Conv2d(d, 4 * d, 1), nn.Conv2d(4 * d, 4 * d, 3, padding=1, groups=4 * d),
                                nn.Conv2d(4 * d, d, 1))
            blocks.append(nn.ModuleList([nn.LayerNorm(d), attn, nn.LayerNorm(d), ffn]))
        layers.append(nn.ModuleList([nn.Conv2d(c_in, d, patch, 4 if patch == 7 else 2, patch // 2), nn.LayerNorm(d),
                                     blocks, nn.LayerNorm(d)]))
        c_in = d
    return layers


def test_parameter_count_matches_mmsegmentations_mit_b0():
    assert count_parameters(mit_b0()) == count_parameters(mmseg_mit_b0()) == 3_319_392
    # the whole segformer_mit-b0 model with 21 classes
    assert count_parameters(mit_b0()) + count_parameters(SegformerHead()) == 3_720_565


def test_shapes_of_a_512_image_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = mit_b0()
    feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 160, 4, 4), (1, 256, 2, 2)]
    sum(f.square().mean() for f in feats).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in model.eval()(torch.randn(1, 3, 512, 512))]
    assert shapes == [(1, 32, 128, 128), (1, 64, 64, 64), (1, 160, 32, 32), (1, 256, 16, 16)]
    assert model.strides == (4, 8, 16, 32)


def test_bad_images_are_refused():
    model = mit_b0()
    for bad in (torch.randn(3, 64, 64), torch.randn(1, 1, 64, 64), [torch.randn(1, 3, 64, 64)]):
        with pytest.raises(ValueError, match=r"takes images \(batch, 3, height, width\)"):
            model(bad)


@pytest.mark.parametrize("sr_ratio,heads", [(8, 1), (4, 2), (2, 5), (1, 8)])
def test_efficient_self_attention_is_full_attention_on_pooled_keys(sr_ratio, heads):
    # SDPA over the spatially reduced tokens against softmax(q k^T / sqrt(e)) v written out, per head, with the keys
    # and values made from the reduced map by hand: a conv of kernel and stride sr_ratio, then the LayerNorm.
    torch.manual_seed(0)
    d, (h, w) = 8 * heads, (16, 8)
    attn = EfficientSelfAttention(d, heads, sr_ratio).eval()
    x = torch.randn(2, h * w, d)
    with torch.no_grad():
        got = attn(x, (h, w))
        pooled = x.transpose(1, 2).reshape(2, d, h, w)
        if sr_ratio > 1:
            pooled = attn.norm(attn.sr(pooled).flatten(2).transpose(1, 2))
        else:
            pooled = x
        assert pooled.shape[1] == h * w // sr_ratio ** 2
        q, kv = attn.q(x), attn.kv(pooled)
        k, v = kv[..., :d], kv[..., d:]
        e = d // heads
        outs = []
        for i in range(heads):
            part = slice(i * e, (i + 1) * e)
            weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(e), dim=-1)  # (b, n, m)
            outs.append(weights @ v[..., part])
        torch.testing.assert_close(got, attn.proj(torch.cat(outs, dim=-1)), atol=1e-5, rtol=1e-4)


def test_stages_must_agree_in_length():
    with pytest.raises(ValueError, match="one num_layers"):
        MixVisionTransformer(num_layers=(2, 2, 2))
