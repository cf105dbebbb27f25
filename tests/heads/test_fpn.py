import pytest
import torch
from torch import nn

from seglab.book.profile import count_parameters
from seglab.heads.fpn import FPN, FPNHead, SemanticFPN, top_down
from seglab.nn.blocks import ConvBNReLU


def pyramid(channels=(16, 24, 32, 40), size=16, batch=2):
    """Features at strides 4, 8, 16, 32 of a (4 * size)-pixel image."""
    return [torch.randn(batch, c, size // 2**i, size // 2**i) for i, c in enumerate(channels)]


def assert_gradients_reach_every_parameter(module, output):
    output.square().mean().backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_reference_parameter_counts_match_mmsegmentation():
    # mmseg sem_fpn fpn_r50 (VOC: num_classes=21): FPN neck [256, 512, 1024, 2048] -> 256, no norm, convs with bias;
    # FPNHead in_channels [256] * 4, channels 128, feature_strides [4, 8, 16, 32], BN
    model = SemanticFPN(in_channels=(256, 512, 1024, 2048), neck_channels=256, channels=128, num_classes=21)
    neck = (256 + 512 + 1024 + 2048) * 256 + 4 * 256 + 4 * (256 * 256 * 9 + 256)
    head = (4 * (256 * 128 * 9 + 2 * 128) + 3 * (128 * 128 * 9 + 2 * 128)) + 128 * 21 + 21
    assert count_parameters(model.neck) == neck == 3_344_384
    assert count_parameters(model.head) == head == 1_626_517
    assert count_parameters(model) == 4_970_901
    assert count_parameters(FPN()) == 3_344_384 and count_parameters(FPNHead()) == 1_626_517


def test_top_down_adds_every_coarser_level_in_place_on_the_list():
    laterals = [torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), 2.0)]
    coarsest = laterals[-1]
    assert top_down(laterals) is laterals
    assert torch.equal(laterals[0], torch.full((1, 1, 4, 4), 3.0))
    assert torch.equal(laterals[1], torch.full((1, 1, 2, 2), 3.0))
    assert laterals[2] is coarsest


def test_top_down_modes():
    ramp = torch.tensor([[0.0, 1.0], [2.0, 3.0]])[None, None]
    nearest = top_down([torch.zeros(1, 1, 4, 4), ramp.clone()], "nearest")[0]
    assert torch.equal(nearest[0, 0], ramp[0, 0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    bilinear = top_down([torch.zeros(1, 1, 4, 4), ramp.clone()], "bilinear")[0]
    expected = torch.nn.functional.interpolate(ramp, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(bilinear, expected) and not torch.equal(bilinear, nearest)
    # odd sizes: upsampled to the size of the finer level, not by a fixed factor
    odd = top_down([torch.zeros(1, 1, 5, 7), torch.ones(1, 1, 3, 4)])
    assert odd[0].shape == (1, 1, 5, 7) and torch.equal(odd[0], torch.ones(1, 1, 5, 7))
    with pytest.raises(ValueError, match="nearest"):
        top_down([torch.zeros(1, 1, 2, 2)], "bicubic")


def test_fpn_shapes_and_gradients():
    neck = FPN(in_channels=(16, 24, 32, 40), out_channels=8)
    feats = pyramid()
    outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)]
    assert_gradients_reach_every_parameter(neck, sum(o.mean() for o in outs))


def test_fpn_plain_convs_without_norm_and_conv_bn_relu_with_norm():
    plain = FPN(in_channels=(16, 24), out_channels=8)
    assert all(type(m) is nn.Conv2d and m.bias is not None for m in [*plain.lateral_convs, *plain.fpn_convs])
    assert [m.kernel_size for m in plain.lateral_convs] == [(1, 1)] * 2
    assert [m.kernel_size for m in plain.fpn_convs] == [(3, 3)] * 2
    normed = FPN(in_channels=(16, 24), out_channels=8, norm=True, upsample="bilinear")
    assert all(isinstance(m, ConvBNReLU) for m in [*normed.lateral_convs, *normed.fpn_convs])
    outs = normed([torch.randn(2, 16, 8, 8), torch.randn(2, 24, 4, 4)])
    assert_gradients_reach_every_parameter(normed, sum(o.mean() for o in outs))  # no in-place error with ReLU


def test_fpn_top_is_the_coarsest_lateral_and_comes_back_unchanged():
    neck = FPN(in_channels=(16, 24, 32), out_channels=8, norm=True, upsample="bilinear").eval()
    feats = pyramid()[:3]
    top = torch.randn(2, 8, 2, 2)
    outs = neck(feats, top=top)
    assert len(outs) == 4 and outs[-1] is top
    assert [tuple(o.shape) for o in outs[:3]] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]
    with torch.no_grad():  # the top-down path used it: a different top changes the finer outputs
        other = neck(feats, top=top + 1.0)
    assert not torch.allclose(other[0], outs[0])
    # and the same computation by hand
    with torch.no_grad():
        laterals = [conv(x) for conv, x in zip(neck.lateral_convs, feats)] + [top]
        top_down(laterals, "bilinear")
        assert torch.allclose(outs[0], neck.fpn_convs[0](laterals[0]))


def test_fpn_refuses_the_wrong_number_of_levels_and_channels():
    with pytest.raises(ValueError, match="built for 3 levels"):
        FPN(in_channels=(16, 24, 32), out_channels=8)(pyramid())
    with pytest.raises(ValueError, match="has 16 channels, but the head was built for 17"):
        FPN(in_channels=(17, 24, 32, 40), out_channels=8)(pyramid())
    with pytest.raises(ValueError, match="upsample"):
        FPN(upsample="area")


def test_fpn_head_scale_heads_reach_the_finest_stride():
    head = FPNHead(in_channels=(8,) * 4, channels=6, feature_strides=(4, 8, 16, 32), num_classes=5)
    convs = [sum(isinstance(m, nn.Conv2d) for m in h.modules()) for h in head.scale_heads]
    ups = [sum(isinstance(m, nn.Upsample) for m in h.modules()) for h in head.scale_heads]
    assert convs == [1, 1, 2, 3] and ups == [0, 1, 2, 3]
    feats = pyramid(channels=(8,) * 4)
    assert head(feats).shape == (2, 5, 16, 16)
    head.train()
    assert_gradients_reach_every_parameter(head, head(feats))
    d8 = FPNHead(in_channels=(8,) * 4, channels=6, feature_strides=(4, 8, 8, 8), num_classes=5)
    assert [sum(isinstance(m, nn.Conv2d) for m in h.modules()) for h in d8.scale_heads] == [1, 1, 1, 1]


def test_fpn_head_validates_strides():
    with pytest.raises(ValueError, match="one stride per input level"):
        FPNHead(in_channels=(8,) * 4, feature_strides=(4, 8, 16))
    with pytest.raises(ValueError, match="finest"):
        FPNHead(in_channels=(8,) * 4, feature_strides=(8, 4, 16, 32))


def test_semantic_fpn_shapes_gradients_and_stride_4_output():
    model = SemanticFPN(in_channels=(16, 24, 32, 40), neck_channels=8, channels=6, num_classes=3)
    feats = pyramid(size=32)
    out = model(feats)
    assert out.shape == (2, 3, 32, 32)  # the stride-4 level's size
    assert_gradients_reach_every_parameter(model, out)
    with pytest.raises(TypeError, match="list of feature maps"):
        model(feats[0])
