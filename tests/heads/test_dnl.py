import math

import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.dnl import DisentangledNonLocal, DNLHead
from tests.heads.test_fcn import assert_gradients_reach_every_parameter, features
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/_base_/models/dnl_r50-d8.py with 21 classes: DNLHead (FCNHead, num_convs=2, concat_input=True,
    # in 2048, channels 512) + DisentangledNonLocal2d(512, reduction 2): g, theta, phi 1x1 convs with bias,
    # conv_out 1x1 conv + BN, conv_mask 1x1 conv to one channel with bias
    fcn = (2048 * 9 * 512 + 2 * 512) + (512 * 9 * 512 + 2 * 512) + (2560 * 9 * 512 + 2 * 512) + 512 * 21 + 21
    block = 3 * (512 * 256 + 256) + (256 * 512 + 2 * 512) + (512 + 1)
    assert fcn + block == 24_133_398
    head = DNLHead(in_channels=2048, channels=512, num_classes=21, reduction=2, use_scale=True, temperature=0.05)
    assert count_parameters(head) == 24_133_398


def test_shapes_and_gradients():
    head = DNLHead(in_channels=512, channels=32, num_classes=5)
    torch.nn.init.ones_(head.dnl_block.conv_out[1].weight)  # zero at init: nothing would reach the block's convs
    feats = features()
    assert head(feats).shape == (2, 5, 8, 8)
    assert_gradients_reach_every_parameter(head, feats)


def test_the_block_starts_as_the_identity():
    block = DisentangledNonLocal(16).eval()
    x = torch.randn(2, 16, 5, 6)
    torch.testing.assert_close(block(x), x)


def test_contract_errors_and_num_classes():
    assert_refuses_bad_features(DNLHead(in_channels=CHANNELS[-1], channels=16, num_classes=3).eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        DNLHead(in_channels=64, channels=16, num_classes=0)


def test_sdpa_and_explicit_agree_on_the_same_weights():
    torch.manual_seed(0)
    lean = DNLHead(in_channels=512, channels=32, num_classes=5)
    for p in lean.dnl_block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    explicit = DNLHead(in_channels=512, channels=32, num_classes=5, explicit=True)
    explicit.load_state_dict(lean.state_dict())
    feats = features()
    torch.testing.assert_close(lean.eval()(feats), explicit.eval()(feats), rtol=1e-4, atol=1e-5)


def test_block_against_mmseg_written_naively():
    """mmseg's DisentangledNonLocal2d.forward, transcribed with matmul and a loop-free softmax."""
    torch.manual_seed(0)
    block = DisentangledNonLocal(16, reduction=2, temperature=0.05)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    block.eval()
    x = torch.randn(2, 16, 4, 5)
    n, c = x.shape[0], 8
    g_x = block.value(x).view(n, c, -1).permute(0, 2, 1)
    theta_x = block.query(x).view(n, c, -1).permute(0, 2, 1)
    phi_x = block.key(x).view(n, c, -1)
    theta_x = theta_x - theta_x.mean(dim=-2, keepdim=True)
    phi_x = phi_x - phi_x.mean(dim=-1, keepdim=True)
    pairwise = (torch.matmul(theta_x, phi_x) / c**0.5 / 0.05).softmax(dim=-1)
    y = torch.matmul(pairwise, g_x).permute(0, 2, 1).reshape(n, c, 4, 5)
    unary_mask = block.conv_mask(x).view(n, 1, -1).softmax(dim=-1)
    unary_x = torch.matmul(unary_mask, g_x).permute(0, 2, 1).reshape(n, c, 1, 1)
    expected = x + block.conv_out(y) + block.conv_out(unary_x)
    torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)
    maps_pairwise, maps_unary = block.attention_maps(x)
    torch.testing.assert_close(maps_pairwise, pairwise)
    torch.testing.assert_close(maps_unary, unary_mask[:, 0])


def test_whitening_removes_the_query_independent_part():
    # softmax_j(q_i . k_j) = softmax_j(qw_i . kw_j + mean(q) . kw_j): the second term is the same for every query
    torch.manual_seed(0)
    q, k = torch.randn(30, 8) + 2, torch.randn(40, 8) - 1
    qw, kw = q - q.mean(0), k - k.mean(0)
    plain = torch.softmax(q @ k.T, dim=-1)
    split = torch.softmax(qw @ kw.T + q.mean(0) @ kw.T, dim=-1)
    torch.testing.assert_close(plain, split)
    assert math.isclose(float((qw @ kw.T).sum(0).abs().max()), 0, abs_tol=1e-3)  # whitened logits: zero mean over queries
