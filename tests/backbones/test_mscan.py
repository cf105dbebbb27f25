import torch

from seglab.backbones.mscan import MSCA, MSCAN, MSCANBlock, SpatialAttention
from seglab.book.profile import count_parameters


def test_msca_parameter_count_matches_mmsegmentation():
    # mmseg AttentionModule: conv0 5x5 depthwise, conv{0,1,2}_{1,2} strip pairs 1x7/7x1, 1x11/11x1, 1x21/21x1
    # (depthwise, with biases), conv3 1x1: c^2 + 111 c.
    for c in (32, 64, 160, 256):
        by_hand = (25 * c + c) + sum(2 * (k * c + c) for k in (7, 11, 21)) + (c * c + c)
        assert count_parameters(MSCA(c)) == by_hand == c * c + 111 * c
    assert count_parameters(MSCA(32)) == 4_576


def test_msca_multiplies_its_input():
    torch.manual_seed(0)
    msca = MSCA(8)
    x = torch.randn(2, 8, 24, 24)
    assert msca(x).shape == x.shape
    assert torch.count_nonzero(msca(torch.zeros_like(x))) == 0  # attention times a zero input is zero


def test_strip_convs_reach_as_far_as_21_pixels():
    msca = MSCA(1)
    x = torch.zeros(1, 1, 41, 41, requires_grad=True)
    msca(x + 1)[0, 0, 20, 20].backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    # the 5x5 conv, then a 1x21 and a 21x1 strip: 2 + 10 pixels on each side
    assert int(cols.max() - cols.min()) == 24 and int(rows.max() - rows.min()) == 24


def test_mscan_block_and_backbone():
    c, hidden = 32, 256
    block = MSCANBlock(c, mlp_ratio=8)
    attn = 2 * (c * c + c) + c * c + 111 * c
    mlp = (c * hidden + hidden) + (9 * hidden + hidden) + (hidden * c + c)
    assert count_parameters(SpatialAttention(c)) == attn
    assert count_parameters(block) == 2 * c + attn + 2 * c + mlp + 2 * c
    backbone = MSCAN().eval()
    with torch.no_grad():
        levels = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in levels] == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 160, 4, 4), (1, 256, 2, 2)]
    assert count_parameters(backbone) == 3_903_584
