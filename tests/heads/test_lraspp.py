"""LR-ASPP: shapes, gradients, the reference parameter count, the contract, and the gate (a sigmoid of a 1x1 conv
of average-pooled windows, mmsegmentation's AvgPool2d(49, stride=(16, 20))) against a naive computation."""

import pytest
import torch
import torch.nn.functional as F

from seglab.book.profile import count_parameters
from seglab.heads.lraspp import LRASPPHead
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features, features


def small_head(num_classes=3, **kw):
    # C2, C3, C5 of the contract's small backbone (strides 4, 8, 32 of a 64x64 image: C5 is 2x2)
    return LRASPPHead(in_channels=(CHANNELS[0], CHANNELS[1], CHANNELS[3]), in_index=(0, 1, 3), channels=8,
                      num_classes=num_classes, branch_channels=(4, 6), pool_kernel=kw.pop("pool_kernel", None), **kw)


def test_output_shape_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = small_head()
    out = head(features())
    assert out.shape == (2, 3, 16, 16)  # the first level read, C2
    out.square().mean().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
    assert head.gate_conv.weight.grad.abs().sum() > 0


def test_reference_parameter_count_matches_mmsegmentation():
    # configs/_base_/models/lraspp_m-v3-d8.py: in_channels (16, 24, 960), channels 128, branch_channels (32, 64),
    # BN, ReLU; 21 classes (the config has 19)
    head = LRASPPHead(in_channels=(16, 24, 960), in_index=(0, 1, 2), channels=128, num_classes=21,
                      branch_channels=(32, 64))
    by_hand = (16 * 32 + 24 * 64 + (160 * 128 + 256) + (192 * 128 + 256) + (128 * 128 + 128) + (960 * 128 + 256)
               + 960 * 128 + (128 * 21 + 21))
    assert count_parameters(head) == by_hand == 312_853


def test_contract_errors_and_num_classes():
    assert_refuses_bad_features(small_head().eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        small_head(num_classes=0)
    with pytest.raises(ValueError, match="one level per branch"):
        LRASPPHead(in_channels=(8, 16, 64), in_index=(0, 1, 3), branch_channels=(4,))


def test_pool_larger_than_the_map_is_refused_with_a_message():
    head = small_head(pool_kernel=3, pool_stride=(1, 1)).eval()
    with pytest.raises(ValueError, match="average pool does not fit"):
        head(features())  # C5 is 2x2


def test_gate_is_the_sigmoid_of_pooled_windows_naive():
    torch.manual_seed(0)
    head = LRASPPHead(in_channels=(4, 4, 6), channels=5, branch_channels=(2, 2), pool_kernel=5, pool_stride=(3, 4))
    x = torch.randn(2, 6, 11, 13)
    rows, cols = (11 - 5) // 3 + 1, (13 - 5) // 4 + 1
    weight = head.gate_conv.weight[:, :, 0, 0]  # (channels, in)
    expected = torch.empty(2, 5, rows, cols)
    for i in range(rows):
        for j in range(cols):
            window = x[:, :, 3 * i:3 * i + 5, 4 * j:4 * j + 5].mean(dim=(2, 3))  # (b, in)
            expected[:, :, i, j] = torch.sigmoid(window @ weight.T)
    with torch.no_grad():
        torch.testing.assert_close(head.gate(x), expected)
        # mmseg's window at the standard 512x512: a 64x64 map gives one cell, the mean of the top-left 49x49
        ref = LRASPPHead(in_channels=(4, 4, 6), channels=5, branch_channels=(2, 2))
        y = torch.randn(1, 6, 64, 64)
        gate = ref.gate(y)
        assert gate.shape == (1, 5, 1, 1)
        top_left = y[:, :, :49, :49].mean(dim=(2, 3))
        torch.testing.assert_close(gate[:, :, 0, 0], torch.sigmoid(top_left @ ref.gate_conv.weight[:, :, 0, 0].T))


def test_global_pool_and_forward_against_a_naive_composition():
    torch.manual_seed(0)
    head = small_head().eval()
    feats = features()
    c2, c3, c5 = feats[0], feats[1], feats[3]
    with torch.no_grad():
        gate = torch.sigmoid(F.conv2d(c5.mean(dim=(2, 3), keepdim=True), head.gate_conv.weight))
        x = head.conv_up_input(head.aspp_conv(c5) * gate)
        x = F.interpolate(x, size=c3.shape[-2:], mode="bilinear", align_corners=False)
        x = head.conv_ups[1](torch.cat([x, head.convs[1](c3)], dim=1))
        x = F.interpolate(x, size=c2.shape[-2:], mode="bilinear", align_corners=False)
        x = head.conv_ups[0](torch.cat([x, head.convs[0](c2)], dim=1))
        torch.testing.assert_close(head(feats), head.cls(x))
