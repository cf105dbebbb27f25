import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.nn.blocks import (ConvBNReLU, DepthwiseSeparableConv, check_features, classifier, one_level, resize,
                              resize_concat, select)

FEATURES = [torch.zeros(2, 8, 16, 16), torch.zeros(2, 16, 8, 8), torch.zeros(2, 32, 8, 8), torch.zeros(2, 64, 8, 8)]


def test_conv_bn_relu_keeps_size_and_has_no_conv_bias():
    block = ConvBNReLU(8, 4, 3, dilation=4)
    assert block(torch.zeros(1, 8, 10, 12)).shape == (1, 4, 10, 12)
    assert count_parameters(block) == 8 * 4 * 9 + 2 * 4
    assert count_parameters(ConvBNReLU(8, 4, 1, relu=False)) == 8 * 4 + 2 * 4


def test_depthwise_separable_conv_parameters():
    block = DepthwiseSeparableConv(16, 32, 3, dilation=2)
    assert block(torch.zeros(1, 16, 9, 9)).shape == (1, 32, 9, 9)
    assert count_parameters(block) == (16 * 9 + 2 * 16) + (16 * 32 + 2 * 32)


def test_classifier_and_resize():
    assert classifier(8, 21)(torch.zeros(1, 8, 4, 4)).shape == (1, 21, 4, 4)
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        classifier(8, 0)
    assert resize(torch.zeros(1, 3, 4, 4), (9, 7)).shape == (1, 3, 9, 7)


def test_input_transforms():
    assert one_level(FEATURES, -1).shape == (2, 64, 8, 8)
    assert resize_concat(FEATURES, (0, 1, 2, 3)).shape == (2, 120, 16, 16)
    assert [f.shape[1] for f in select(FEATURES, (0, 3))] == [8, 64]


@pytest.mark.parametrize("bad,error,message", [
    ([], ValueError, "empty list"),
    (torch.zeros(2, 64, 8, 8), TypeError, "list of feature maps .* got a Tensor of shape"),
    ([torch.zeros(64, 8, 8)], ValueError, r"level 0 is \(64, 8, 8\); every level must be 4D"),
    ([torch.zeros(2, 8, 4, 4), torch.zeros(3, 8, 4, 4)], ValueError, r"batch size: \[2, 3\]"),
])
def test_bad_feature_lists_are_refused_clearly(bad, error, message):
    with pytest.raises(error, match=message):
        check_features(bad)
    with pytest.raises(error, match=message):
        one_level(bad)


def test_wrong_number_of_levels_and_wrong_channels_are_named():
    with pytest.raises(IndexError, match="reads feature level 3, but it was given 2 level"):
        one_level(FEATURES[:2], 3)
    with pytest.raises(ValueError, match=r"level 3 of the 4 level\(s\) given has 64 channels, but .* built for 2048"):
        one_level(FEATURES, -1, channels=2048)
    with pytest.raises(ValueError, match=r"level 1 of the 4 level\(s\) given has 16 channels"):
        select(FEATURES, (0, 1), channels=(8, 512))


def test_checks_work_under_the_jit_tracer_fvcore_uses():
    from torch import nn

    from seglab.book.profile import count_flops

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = nn.Conv2d(64, 3, 1)

        def forward(self, features):
            return self.cls(select(features, (3,), channels=(64,))[0] + one_level(features, -1, channels=64))

    total, _, _ = count_flops(Head(), (FEATURES,))
    assert total == 2 * 64 * 3 * 8 * 8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.uint8])
def test_feature_maps_that_are_not_float32_are_refused_with_what_to_do(dtype):
    bad = [FEATURES[0], FEATURES[1].to(dtype), FEATURES[2], FEATURES[3]]
    with pytest.raises(TypeError, match=rf"level 1 is {dtype}; a head takes float32 .*f\.float\(\)"):
        check_features(bad)
    with pytest.raises(TypeError, match="level 1 is"):
        select(bad, (0, 1))


def test_autocast_features_are_accepted_under_autocast():
    half = [f.bfloat16() for f in FEATURES]  # what a backbone under autocast (AMP) hands the head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert check_features(half) is half
    with pytest.raises(TypeError, match="torch.bfloat16"):
        check_features(half)  # outside autocast they would meet float32 weights


@pytest.mark.parametrize("build,message", [
    (lambda: ConvBNReLU(8, 0), "out_channels must be at least 1, got 0"),
    (lambda: ConvBNReLU(-1, 4), "in_channels must be at least 1, got -1"),
    (lambda: ConvBNReLU(8, 2.5), r"out_channels must be an integer, got 2.5 \(float\)"),
    (lambda: ConvBNReLU(8, True), "out_channels must be an integer, got True"),
    (lambda: DepthwiseSeparableConv(16, 0), "out_channels must be at least 1, got 0"),
    (lambda: classifier(8, 2.5), r"num_classes must be an integer, got 2.5"),
    (lambda: classifier(8, "21"), r"num_classes must be an integer, got '21'"),
    (lambda: classifier(0, 21), "channels must be at least 1, got 0"),
])
def test_widths_and_class_counts_must_be_positive_integers(build, message):
    with pytest.raises(ValueError, match=message):
        build()
