import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.segformer import SegformerHead
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features
from tests.heads.test_fcn import assert_gradients_reach_every_parameter


def conv_bn(c_in, c_out, k=1):
    return c_in * c_out * k * k + 2 * c_out


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/_base_/models/segformer_mit-b0.py, 21 classes: SegformerHead(in_channels=[32, 64, 160, 256],
    # channels=256): one 1x1 ConvModule (conv without bias, BN, ReLU) per level, fusion_conv 1x1 ConvModule from
    # 4 * 256 channels, conv_seg 1x1 with bias.
    head = SegformerHead(in_channels=(32, 64, 160, 256), channels=256, num_classes=21)
    by_hand = (sum(conv_bn(c, 256) for c in (32, 64, 160, 256)) + conv_bn(4 * 256, 256) + 256 * 21 + 21)
    assert count_parameters(head) == by_hand == 401_173


def small(**kw):
    return SegformerHead(in_channels=CHANNELS, channels=16, num_classes=5, **kw)


def features(batch=2):
    return [torch.randn(batch, c, 64 // s, 64 // s) for c, s in zip(CHANNELS, (4, 8, 16, 32))]


def test_output_shape_is_the_first_levels_grid_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head, feats = small(), features()
    assert head(feats).shape == (2, 5, 16, 16)  # stride 4 of a 64x64 image
    assert_gradients_reach_every_parameter(head, feats)


def test_a_subset_of_levels_decodes_at_its_first_levels_grid():
    head = SegformerHead(in_channels=CHANNELS[1:], channels=8, num_classes=3, in_index=(1, 2, 3)).eval()
    with torch.no_grad():
        assert head(features()).shape == (2, 3, 8, 8)


def test_contract_errors():
    assert_refuses_bad_features(small().eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        SegformerHead(in_channels=CHANNELS, channels=16, num_classes=0)
    with pytest.raises(ValueError, match="channels must be at least 1, got 0"):
        SegformerHead(in_channels=CHANNELS, channels=0, num_classes=3)
    with pytest.raises(ValueError, match="one in_channels entry per level of in_index"):
        SegformerHead(in_channels=CHANNELS[:3], channels=16, num_classes=3)


def test_projections_are_resized_to_the_first_level():
    head = small().eval()
    with torch.no_grad():
        outs = head.projections(features())
    assert [tuple(o.shape) for o in outs] == [(2, 16, 16, 16)] * 4
