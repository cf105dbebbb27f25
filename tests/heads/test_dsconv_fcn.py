import pytest
import torch
from torch import nn

from seglab.book.profile import count_flops, count_parameters
from seglab.heads.dsconv_fcn import DSConvFCNHead, dsconv
from seglab.heads.fcn import FCNHead
from tests.heads.test_fcn import assert_gradients_reach_every_parameter, features


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/_base_/models/fast_scnn.py decode head: DepthwiseSeparableFCNHead, in_channels=128,
    # channels=128, concat_input=False, num_convs=2 (FCNHead default), kernel_size=3, 19 classes, BN
    head = DSConvFCNHead(in_channels=128, channels=128, num_classes=19, num_convs=2, concat_input=False)
    assert count_parameters(head) == 38_547


def test_standard_setting_parameter_count():
    # C5 of ResNet-50 (2048), channels 512, concat_input=True, 21 classes; by hand:
    def ds(c_in, c_out, k=3):
        return k * k * c_in + 2 * c_in + c_in * c_out + 2 * c_out
    expected = ds(2048, 512) + ds(512, 512) + ds(2560, 512) + 512 * 21 + 21
    assert expected == 2_691_605
    assert count_parameters(DSConvFCNHead(2048, 512, 21, num_convs=2, concat_input=True)) == expected


@pytest.mark.parametrize("concat_input,num_convs", [(True, 2), (False, 1), (True, 3)])
def test_shapes_and_gradients(concat_input, num_convs):
    head = DSConvFCNHead(in_channels=512, channels=32, num_classes=5, num_convs=num_convs, concat_input=concat_input)
    feats = features()
    assert head(feats).shape == (2, 5, 8, 8)
    assert_gradients_reach_every_parameter(head, feats)


def test_without_convs_it_is_a_classifier_on_the_input():
    head = DSConvFCNHead(in_channels=512, channels=512, num_classes=5, num_convs=0, concat_input=False)
    assert count_parameters(head) == 512 * 5 + 5
    assert head(features()).shape == (2, 5, 8, 8)


@pytest.mark.parametrize("concat_input", [True, False])
def test_every_spatial_conv_is_depthwise_and_every_other_conv_pointwise(concat_input):
    head = DSConvFCNHead(in_channels=64, channels=16, num_classes=3, concat_input=concat_input, kernel_size=5)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    spatial = [m for m in convs if m.kernel_size != (1, 1)]
    assert len(spatial) == 2 + concat_input
    for m in spatial:
        assert m.kernel_size == (5, 5) and m.padding == (2, 2) and m.dilation == (1, 1)
        assert m.groups == m.in_channels == m.out_channels and m.bias is None
    assert [m.in_channels for m in spatial] == [64, 16] + ([64 + 16] if concat_input else [])
    assert all(m.groups == 1 for m in convs if m.kernel_size == (1, 1))


def test_depthwise_half_is_linear_unless_asked():
    # mmseg's head passes dw_act_cfg=None: depthwise Conv-BN (no ReLU), pointwise Conv-BN-ReLU
    linear, relu = dsconv(8, 4), dsconv(8, 4, dw_relu=True)
    assert not any(isinstance(m, nn.ReLU) for m in linear[0]) and isinstance(linear[1][-1], nn.ReLU)
    assert isinstance(relu[0][-1], nn.ReLU) and isinstance(relu[1][-1], nn.ReLU)
    assert linear.state_dict().keys() == relu.state_dict().keys()
    assert count_parameters(linear) == count_parameters(relu)
    x = torch.randn(2, 8, 6, 6)
    assert (linear[0].eval()(x) < 0).any()  # negative values reach the pointwise conv
    head = DSConvFCNHead(in_channels=64, channels=16, num_classes=3, dw_relu=True)
    assert sum(isinstance(m, nn.ReLU) for m in head.modules()) == 2 * 3


def test_flops_ratio_against_fcn_is_the_factorisation():
    # per block: (k^2 C_in + C_in C_out) / (k^2 C_in C_out) = 1/C_out + 1/k^2, BatchNorm aside
    x = torch.randn(1, 64, 8, 8)
    plain = FCNHead(64, 32, 3, num_convs=1, concat_input=False).convs[0][0]
    block = dsconv(64, 32)
    separable = nn.Sequential(block[0][0], block[1][0])
    assert count_flops(plain, (x,))[0] == 9 * 64 * 32 * 64
    assert count_flops(separable, (x,))[0] == (9 * 64 + 64 * 32) * 64


def test_reads_the_level_it_is_told_and_names_a_channel_mismatch():
    assert DSConvFCNHead(in_channels=256, channels=16, num_classes=3, in_index=2)(features()).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="has 512 channels, but the head was built for 2048"):
        DSConvFCNHead(in_channels=2048, channels=16)(features())
