import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.book.profile import count_parameters
from seglab.heads.aspp import ASPP, ASPPHead, ImagePool
from seglab.nn.blocks import ConvBNReLU, DepthwiseSeparableConv, resize
from tests.heads.test_fcn import assert_gradients_reach_every_parameter, features


def test_aspp_reference_parameter_count_matches_mmsegmentation():
    # mmseg deeplabv3_r50-d8 (VOC): in_channels=2048, channels=512, dilations=(1, 12, 24, 36), 21 classes, BN
    head = ASPPHead(in_channels=2048, channels=512, num_classes=21, dilations=(1, 12, 24, 36))
    image_pool = 2048 * 512 + 2 * 512
    rate_1 = 2048 * 512 + 2 * 512
    atrous = 3 * (2048 * 512 * 9 + 2 * 512)
    bottleneck = 5 * 512 * 512 * 9 + 2 * 512
    cls = 512 * 21 + 21
    assert count_parameters(head) == image_pool + rate_1 + atrous + bottleneck + cls == 42_222_101


def test_separable_aspp_matches_mmsegmentation_depthwise_separable_aspp_module():
    # mmseg DepthwiseSeparableASPPModule: rate 1 stays a 1x1 ConvModule; the others are depthwise 3x3 (BN, ReLU)
    # followed by pointwise 1x1 (BN, ReLU). The image pool is unchanged.
    aspp = ASPP(2048, 512, (1, 12, 24, 36), separable=True)
    pointwise_1x1 = 2048 * 512 + 2 * 512
    separable = 2048 * 9 + 2 * 2048 + 2048 * 512 + 2 * 512
    assert count_parameters(aspp) == 2 * pointwise_1x1 + 3 * separable
    assert all(isinstance(b, DepthwiseSeparableConv) for b in aspp.branches[1:])


@pytest.mark.parametrize("dilations,image_pool", [((1, 12, 24, 36), True), ((1, 2), False), ((3,), True), ((), True)])
def test_aspp_shapes_and_gradients(dilations, image_pool):
    head = ASPPHead(in_channels=512, channels=16, num_classes=5, dilations=dilations, image_pool=image_pool)
    feats = features()
    assert head.aspp(feats[-1]).shape == (2, 16 * (len(dilations) + int(image_pool)), 8, 8)
    assert head(feats).shape == (2, 5, 8, 8)
    assert_gradients_reach_every_parameter(head, feats)


def test_aspp_keeps_non_square_sizes():
    head = ASPPHead(in_channels=32, channels=8, num_classes=3, dilations=(1, 2, 3)).eval()
    assert head([torch.randn(1, 32, 7, 11)]).shape == (1, 3, 7, 11)


def test_aspp_branch_kernels_follow_mmsegmentation():
    aspp = ASPP(64, 8, (1, 6, 12))
    conv1, conv6, conv12 = (branch[0] for branch in aspp.branches)
    assert (conv1.kernel_size, conv1.padding, conv1.dilation) == ((1, 1), (0, 0), (1, 1))
    assert (conv6.kernel_size, conv6.padding, conv6.dilation) == ((3, 3), (6, 6), (6, 6))
    assert (conv12.kernel_size, conv12.padding, conv12.dilation) == ((3, 3), (12, 12), (12, 12))
    assert aspp.out_channels == 4 * 8


def test_aspp_needs_a_branch():
    with pytest.raises(ValueError, match="at least one branch"):
        ASPP(64, 8, (), image_pool=False)


def reference_image_pool(pool, x):
    """mmseg's image_pool: AdaptiveAvgPool2d(1) -> ConvModule(1x1) -> bilinear resize, with ``pool``'s weights."""
    return resize(pool.conv(nn.functional.adaptive_avg_pool2d(x, 1)), x.shape[-2:])


@pytest.mark.parametrize("training", [True, False])
def test_image_pool_equals_mmsegmentation_for_batches_of_two(training):
    torch.manual_seed(0)
    ours, theirs = ImagePool(16, 8), ImagePool(16, 8)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 5, 7)
    ours.train(training), theirs.train(training)
    out = ours(x)
    assert out.shape == (2, 8, 5, 7)
    torch.testing.assert_close(out, reference_image_pool(theirs, x))
    torch.testing.assert_close(out, out[:, :, :1, :1].expand_as(out))  # one vector per image, at every position
    if training:  # the running statistics move the same way
        torch.testing.assert_close(ours.conv[1].running_mean, theirs.conv[1].running_mean)


def test_image_pool_is_mmsegmentation_exactly_and_profiles_at_batch_one():
    pool = ImagePool(16, 8).train()
    x = torch.randn(1, 16, 4, 4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # as in mmseg: train with batch > 1
        pool(x)
    from seglab.book.profile import activation_bytes
    assert activation_bytes(ASPPHead(in_channels=512, channels=8, num_classes=3, dilations=(1, 2)),
                            (features(batch=1),)) > 0  # the profiler's batch of one is fine


def test_a_rate_as_large_as_the_map_degenerates_to_a_1x1_conv():
    torch.manual_seed(0)
    branch = ConvBNReLU(8, 4, 3, dilation=6).eval()
    x = torch.randn(1, 8, 6, 5)  # every off-centre tap falls into the padding
    centre = F.conv2d(x, branch[0].weight[:, :, 1:2, 1:2])
    torch.testing.assert_close(branch(x), branch[2](branch[1](centre)))
    smaller = ConvBNReLU(8, 4, 3, dilation=2).eval()
    smaller.load_state_dict(branch.state_dict())
    assert not torch.allclose(smaller(x), branch(x)), "at rate 2 the off-centre taps must count"


def test_aspp_names_a_channel_mismatch():
    with pytest.raises(ValueError, match="has 512 channels, but the head was built for 2048"):
        ASPPHead(in_channels=2048, channels=16)(features())
