import pytest
import torch
import torch.nn.functional as F

from seglab.book.profile import count_parameters
from seglab.heads.psp import PPM, PSPHead
from tests.heads.test_fcn import assert_gradients_reach_every_parameter, features


def test_psp_reference_parameter_count_matches_mmsegmentation():
    # mmseg pspnet_r50-d8 (VOC): in_channels=2048, channels=512, pool_scales=(1, 2, 3, 6), 21 classes, BN
    ppm = 4 * (2048 * 512 + 2 * 512)
    bottleneck = (2048 + 4 * 512) * 512 * 9 + 2 * 512
    assert count_parameters(PSPHead(2048, 512, 21, pool_scales=(1, 2, 3, 6))) == ppm + bottleneck + 512 * 21 + 21
    assert count_parameters(PSPHead(2048, 512, 21)) == 23_084_565
    assert count_parameters(PPM((1, 2, 3, 6), 2048, 512)) == 4_198_400


def test_ppm_returns_one_upsampled_map_per_scale():
    ppm = PPM(pool_scales=(1, 2, 3, 6), in_channels=16, channels=8)
    outs = ppm(torch.randn(2, 16, 13, 11))
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (2, 8, 13, 11) for o in outs)


def test_ppm_global_branch_is_constant_over_the_map():
    ppm = PPM(pool_scales=(1,), in_channels=4, channels=3).eval()
    out = ppm(torch.randn(2, 4, 9, 7))[0]
    assert torch.allclose(out, out[..., :1, :1].expand_as(out))
    # and it equals the branch applied to the global average
    x = torch.randn(2, 4, 9, 7)
    expected = ppm[0][1](x.mean((2, 3), keepdim=True))
    assert torch.allclose(ppm(x)[0], expected.expand(2, 3, 9, 7), atol=1e-6)


def test_ppm_branches_pool_to_their_scale():
    ppm = PPM(pool_scales=(1, 2, 3, 6), in_channels=4, channels=2).eval()
    x = torch.randn(1, 4, 12, 12)
    assert [tuple(branch(x).shape[-2:]) for branch in ppm] == [(1, 1), (2, 2), (3, 3), (6, 6)]
    assert torch.allclose(ppm[2][0](x), F.adaptive_avg_pool2d(x, 3))


@pytest.mark.parametrize("pool_scales", [(1, 2, 3, 6), (1,), (2, 4)])
def test_psp_shapes_and_gradients(pool_scales):
    head = PSPHead(in_channels=512, channels=16, num_classes=5, pool_scales=pool_scales)
    feats = features()
    assert head(feats).shape == (2, 5, 8, 8)
    assert head.bottleneck[0].in_channels == 512 + 16 * len(pool_scales)
    assert_gradients_reach_every_parameter(head, feats)


def test_psp_centre_logit_depends_on_every_position():
    torch.manual_seed(0)
    head = PSPHead(in_channels=8, channels=8, num_classes=3).eval()
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    head([x])[0, :, 8, 8].sum().backward()
    assert (x.grad.abs().sum(1) > 0).all()


def test_psp_reads_the_level_it_is_told_and_names_a_channel_mismatch():
    assert PSPHead(in_channels=256, channels=8, num_classes=3, in_index=2)(features()).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="has 512 channels, but the head was built for 2048"):
        PSPHead(in_channels=2048, channels=8)(features())
