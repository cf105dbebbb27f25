import pytest
import torch

from seglab.book.profile import count_flops, count_parameters
from seglab.heads.aspp import ASPP
from seglab.heads.deeplabv3plus import DeepLabV3PlusHead
from seglab.nn.blocks import ConvBNReLU, DepthwiseSeparableConv
from tests.heads.test_fcn import assert_gradients_reach_every_parameter, features


def small_head(**kwargs):
    config = dict(in_channels=512, channels=32, num_classes=5, dilations=(1, 2, 3), c1_in_channels=64,
                  c1_channels=8)
    return DeepLabV3PlusHead(**{**config, **kwargs})


def test_deeplabv3plus_reference_parameter_count_matches_mmsegmentation():
    # mmseg deeplabv3plus_r50-d8 (VOC): DepthwiseSeparableASPPHead, in_channels=2048, channels=512,
    # dilations=(1, 12, 24, 36), c1_in_channels=256, c1_channels=48, 21 classes, BN
    head = DeepLabV3PlusHead(2048, 512, 21, (1, 12, 24, 36), c1_in_channels=256, c1_channels=48)
    assert count_parameters(head) == 17_698_949


def test_deeplabv3plus_logits_at_c2_resolution_and_gradients():
    head, feats = small_head(), features()  # C2 is 16x16, C5 8x8
    assert head(feats).shape == (2, 5, 16, 16)
    assert_gradients_reach_every_parameter(head, feats)


def test_deeplabv3plus_without_decoder_predicts_at_c5_resolution():
    head, feats = small_head(c1_in_channels=0), features()
    assert head.c1_bottleneck is None
    assert head(feats).shape == (2, 5, 8, 8)
    assert_gradients_reach_every_parameter(head, feats)


def test_deeplabv3plus_reads_c2_and_c5():
    head = small_head()
    feats = features()
    with torch.no_grad():
        reference = head.eval()(feats)
        changed = [f.clone() for f in feats]
        changed[0] += 1.0  # C2 drives the decoder
        assert not torch.allclose(head(changed), reference)
        changed = [f.clone() for f in feats]
        changed[1] += 1.0  # C3 and C4 are not read
        changed[2] += 1.0
        assert torch.equal(head(changed), reference)


def test_separable_aspp_branches_follow_mmseg():
    head = DeepLabV3PlusHead(in_channels=64, channels=16, num_classes=3, dilations=(1, 6, 12), c1_in_channels=8)
    aspp = head.aspp
    assert isinstance(aspp, ASPP)
    assert isinstance(aspp.branches[0], ConvBNReLU) and aspp.branches[0][0].kernel_size == (1, 1)
    for branch, rate in zip(aspp.branches[1:], (6, 12)):
        assert isinstance(branch, DepthwiseSeparableConv)
        depthwise, pointwise = branch[0][0], branch[1][0]
        assert depthwise.groups == 64 and depthwise.dilation == (rate, rate) and depthwise.padding == (rate, rate)
        assert pointwise.kernel_size == (1, 1) and pointwise.dilation == (1, 1)
    assert head.bottleneck[0].in_channels == 4 * 16 and head.bottleneck[0].kernel_size == (3, 3)  # plain 3x3
    assert aspp(torch.randn(2, 64, 9, 7)).shape == (2, 4 * 16, 9, 7)


def test_separable_branch_flops_follow_the_formula():
    x = torch.randn(1, 256, 6, 6)
    plain = count_flops(ConvBNReLU(256, 64, 3, dilation=2).eval(), (x,))[1]["conv"]
    separable = count_flops(DepthwiseSeparableConv(256, 64, 3, dilation=2).eval(), (x,))[1]["conv"]
    assert plain == 256 * 64 * 9 * 36
    assert separable == (256 * 9 + 256 * 64) * 36


def test_deeplabv3plus_names_a_channel_mismatch():
    with pytest.raises(ValueError, match="has 64 channels, but the head was built for 256"):
        small_head(c1_in_channels=256)(features())
    with pytest.raises(ValueError, match="c1_channels must be at least 1"):
        small_head(c1_channels=0)
