import pytest
import torch

from seglab.book.profile import count_flops, count_parameters
from seglab.heads.fpn import FPN
from seglab.heads.psp import PPM
from seglab.heads.upernet import UPerHead
from tests.heads.test_fcn import assert_gradients_reach_every_parameter, features


def pyramid(channels=(16, 24, 32, 40), size=16, batch=2):
    """Features at strides 4, 8, 16, 32 (the non-dilated backbone UPerNet is built for)."""
    return [torch.randn(batch, c, size // 2**i, size // 2**i) for i, c in enumerate(channels)]


def test_upernet_reference_parameter_count_matches_mmsegmentation():
    # mmseg upernet_r50 (VOC): in_channels=[256, 512, 1024, 2048], channels=512, pool_scales=(1, 2, 3, 6), 21 classes
    def conv_bn(c_in, c_out, k):
        return c_in * c_out * k * k + 2 * c_out

    by_hand = (4 * conv_bn(2048, 512, 1) + conv_bn(4096, 512, 3)  # PPM and its bottleneck
               + sum(conv_bn(c, 512, 1) for c in (256, 512, 1024)) + 3 * conv_bn(512, 512, 3)  # laterals, fpn convs
               + conv_bn(4 * 512, 512, 3) + 512 * 21 + 21)  # fpn_bottleneck, classifier
    head = UPerHead((256, 512, 1024, 2048), 512, 21, pool_scales=(1, 2, 3, 6))
    assert count_parameters(head) == by_hand == 40_524_309


def test_upernet_reuses_ppm_and_a_normed_fpn():
    head = UPerHead((16, 24, 32, 40), 8, 3)
    assert isinstance(head.psp_modules, PPM) and isinstance(head.fpn, FPN)
    assert len(head.fpn.lateral_convs) == len(head.fpn.fpn_convs) == 3  # the top level has neither
    assert not any(isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in head.fpn.modules())


@pytest.mark.parametrize("feats", [pyramid(), features((16, 24, 32, 40))], ids=["os32", "d8"])
def test_upernet_shapes_and_gradients(feats):
    head = UPerHead(in_channels=(16, 24, 32, 40), channels=8, num_classes=5)
    assert head(feats).shape == (2, 5) + tuple(feats[0].shape[-2:])  # logits at the finest level
    assert_gradients_reach_every_parameter(head, feats)


def test_upernet_matches_a_direct_computation():
    """The head against the UPerHead forward written out step by step (bilinear top-down, fuse at C2)."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    head = UPerHead(in_channels=(4, 6, 8, 10), channels=5, num_classes=3, pool_scales=(1, 2)).eval()
    x = pyramid((4, 6, 8, 10), size=16, batch=1)
    up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)
    top = head.bottleneck(torch.cat([x[3]] + [up(b(x[3]), x[3]) for b in head.psp_modules], 1))
    lat = [conv(f) for conv, f in zip(head.fpn.lateral_convs, x[:3])] + [top]
    for i in (3, 2, 1):
        lat[i - 1] = lat[i - 1] + up(lat[i], lat[i - 1])
    outs = [conv(l) for conv, l in zip(head.fpn.fpn_convs, lat[:3])] + [lat[3]]
    fused = torch.cat([outs[0]] + [up(o, outs[0]) for o in outs[1:]], 1)
    expected = head.cls(head.fpn_bottleneck(fused))
    assert torch.allclose(head(x), expected, atol=1e-5)


def test_upernet_fused_bottleneck_dominates_the_native_flops():
    head = UPerHead((256, 512, 1024, 2048), 512, 21).eval()
    shapes = ((1, 256, 128, 128), (1, 512, 64, 64), (1, 1024, 32, 32), (1, 2048, 16, 16))
    total, by_op, _ = count_flops(head, ([torch.zeros(s) for s in shapes],))
    fused = 2048 * 512 * 9 * 128 * 128
    assert fused / total > 0.7 and by_op["conv"] / total > 0.99


def test_upernet_names_a_channel_mismatch_and_bad_config():
    with pytest.raises(ValueError, match="has 40 channels, but the head was built for 2048"):
        UPerHead((16, 24, 32, 2048), 8, 3)(pyramid())
    with pytest.raises(ValueError, match="one in_channels entry per level"):
        UPerHead((16, 24, 32, 40), 8, 3, in_index=(0, 1, 2))
