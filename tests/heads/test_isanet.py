import pytest
import torch
import torch.nn.functional as F

from seglab.book.profile import count_parameters
from seglab.heads.isanet import ISAHead, SelfAttentionBlock, interlaced_masks
from tests.heads.test_fcn import assert_gradients_reach_every_parameter
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features


def small(**kw):
    torch.manual_seed(0)
    return ISAHead(**{"in_channels": 64, "channels": 16, "num_classes": 3, "isa_channels": 8,
                      "down_factor": (4, 4), **kw})


def test_reference_parameter_count_matches_mmsegmentation():
    # isanet_r50-d8 (VOC): in 2048, channels 512, isa_channels 256, 21 classes. in_conv 3x3 ConvModule; two
    # SelfAttentionBlocks (query, key: 2 ConvModules each; value: conv with bias; output_project ConvModule);
    # out_conv 1x1 ConvModule on 1024; conv_seg
    block = 2 * (512 * 256 + 2 * 256 + 256 * 256 + 2 * 256) + (512 * 512 + 512) + (512 * 512 + 2 * 512)
    expected = (9 * 2048 * 512 + 2 * 512) + 2 * block + (1024 * 512 + 2 * 512) + (512 * 21 + 21)
    assert expected == 11_816_469
    assert count_parameters(ISAHead(2048, 512, 21, isa_channels=256, down_factor=(8, 8))) == 11_816_469


@pytest.mark.parametrize("size", [(16, 16), (13, 10)])
def test_shapes_and_gradients(size):
    head = small()
    feats = [torch.randn(2, 64, *size)]
    assert head(feats).shape == (2, 3, *size)
    assert_gradients_reach_every_parameter(head, feats)


def test_contract():
    assert_refuses_bad_features(ISAHead(in_channels=CHANNELS[-1], channels=16, num_classes=3, isa_channels=8,
                                        down_factor=(2, 2)))
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        ISAHead(in_channels=64, channels=16, num_classes=0)


def test_sdpa_and_explicit_agree():
    head = small(explicit=False).eval()
    explicit = small().eval()  # explicit by default: groups of few positions
    assert explicit.global_relation.explicit and explicit.local_relation.explicit
    explicit.load_state_dict(head.state_dict())
    feats = [torch.randn(2, 64, 12, 12)]
    with torch.no_grad():
        torch.testing.assert_close(head(feats), explicit(feats), atol=1e-5, rtol=1e-4)


def loop_reference(block, x, groups):
    """Attention of ``block`` run separately on each group of positions (a list of lists of flat indices) of the
    whole map x (b, c, h, w): the naive form of a block-sparse attention."""
    b, c, h, w = x.shape
    q, k = (rearr(m(x)) for m, rearr in [(block.query, flat), (block.key, flat)])
    v = flat(block.value(x))
    out = torch.zeros_like(v)
    for members in groups:
        idx = torch.tensor(members)
        weights = torch.softmax(q[:, idx] @ k[:, idx].transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        out[:, idx] = weights @ v[:, idx]
    return block.out(out.transpose(1, 2).reshape(b, c, h, w))


def flat(t):
    return t.flatten(2).transpose(1, 2)  # (b, c, h, w) -> (b, h*w, c)


@pytest.mark.parametrize("size,factor", [((16, 16), (4, 4)), ((12, 8), (4, 2)), ((13, 10), (4, 4))])
def test_interlaced_attention_equals_its_block_form(size, factor):
    head = small(down_factor=factor).eval()
    x = torch.randn(2, 16, *size)
    ph, pw = factor
    left, _, top, _ = pad = head.padding(*size)
    padded = F.pad(x, pad)
    H, W = padded.shape[-2:]
    long = [[y * W + x_ for y in range(H) for x_ in range(W) if (y % ph, x_ % pw) == (a, c)]
            for a in range(ph) for c in range(pw)]  # one group per place in a block
    short = [[y * W + x_ for y in range(H) for x_ in range(W) if (y // ph, x_ // pw) == (a, c)]
             for a in range(H // ph) for c in range(W // pw)]  # one group per block
    with torch.no_grad():
        naive = loop_reference(head.local_relation, loop_reference(head.global_relation, padded, long), short)
        torch.testing.assert_close(head.interlaced(x), naive[:, :, top:top + size[0], left:left + size[1]],
                                   atol=1e-5, rtol=1e-4)
        # the masks used by the explorer describe the same groups
        m_long, m_short = interlaced_masks(H, W, factor)
        torch.testing.assert_close(head.global_relation.masked(padded, m_long),
                                   loop_reference(head.global_relation, padded, long), atol=1e-5, rtol=1e-4)
        assert m_long.sum() == sum(len(g) ** 2 for g in long) and m_short.sum() == sum(len(g) ** 2 for g in short)


def test_two_stages_connect_every_pair_and_maps_are_distributions():
    long, short = interlaced_masks(16, 16, (4, 4))
    assert ((short.float() @ long.float()) > 0).all()
    head = small().eval()
    maps = head.attention_maps([torch.randn(2, 64, 16, 16)], (5, 6))
    for name, m in maps.items():
        assert m.shape == (2, 16, 16)
        torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(2), atol=1e-5, rtol=0)
    assert (maps["long range"][0] > 0).sum() == 16 and (maps["short range"][0] > 0).sum() == 16
    assert (maps["both stages"][0] > 0).all()


def test_block_is_mmsegmentations_configuration():
    block = SelfAttentionBlock(32, 8)
    assert block.value.bias is not None and len(block.query) == len(block.key) == 2
    assert block.query[0][0].bias is None and block.out[0].bias is None
