import pytest
import torch
import torch.nn.functional as F

from seglab.book.profile import count_parameters
from seglab.heads.apcnet import ACM, APCHead, adaptive_context
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features
from tests.heads.test_contract import features as contract_features


def small_head(**kw):
    return APCHead(in_channels=CHANNELS[-1], channels=16, num_classes=5, **kw)


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg apcnet_r50-d8 (VOC): in_channels 2048, channels 512, pool_scales (1, 2, 3, 6), fusion True, 21 classes.
    # Per ACM: pooled_redu_conv + input_redu_conv (2048 -> 512), global_info, residual_conv, fusion_conv (512 -> 512),
    # gla (512 -> s^2, bias); then the 3x3 bottleneck on 4096 channels and conv_seg.
    cbr = lambda i, o, k=1: i * o * k * k + 2 * o
    acm = lambda s: 2 * cbr(2048, 512) + 3 * cbr(512, 512) + 512 * s * s + s * s
    by_hand = sum(acm(s) for s in (1, 2, 3, 6)) + cbr(4096, 512, 3) + 512 * 21 + 21
    assert count_parameters(APCHead(2048, 512, 21, pool_scales=(1, 2, 3, 6))) == by_hand == 30_466_631


def test_aggregation_matches_a_naive_loop():
    torch.manual_seed(0)
    b, c, s, h, w = 2, 3, 3, 4, 5
    affinity, pooled = torch.rand(b, s * s, h, w, dtype=torch.float64), torch.randn(b, c, s, s, dtype=torch.float64)
    expected = torch.zeros(b, c, h, w, dtype=torch.float64)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                for i in range(s):
                    for j in range(s):
                        expected[n, :, y, x] += affinity[n, i * s + j, y, x] * pooled[n, :, i, j]
    torch.testing.assert_close(adaptive_context(affinity, pooled), expected)


def test_bilinear_weights_give_pspnet_upsampling():
    pooled = torch.randn(1, 4, 3, 3)
    cells = F.interpolate(torch.eye(9).view(9, 1, 3, 3), size=(6, 6), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(adaptive_context(cells[None], pooled),
                               F.interpolate(pooled, size=(6, 6), mode="bilinear", align_corners=False))


def test_acm_matches_mmsegmentation_forward_written_with_matmul():
    # mmseg: affinity (b, hw, s*s) = sigmoid(gla(x + resize(global))), z = affinity @ pooled (b, s*s, c)
    torch.manual_seed(0)
    acm = ACM(3, in_channels=8, channels=6).eval()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        pooled = acm.pooled_redu_conv(F.adaptive_avg_pool2d(x, 3)).view(2, 6, -1).permute(0, 2, 1)
        local = acm.input_redu_conv(x)
        g = F.interpolate(acm.global_info(F.adaptive_avg_pool2d(local, 1)), size=(5, 7), mode="bilinear",
                          align_corners=False)
        affinity = torch.sigmoid(acm.gla(local + g)).permute(0, 2, 3, 1).reshape(2, -1, 9)
        z = torch.matmul(affinity, pooled).permute(0, 2, 1).reshape(2, 6, 5, 7)
        expected = acm.fusion_conv(F.relu(acm.residual_conv(z) + local))
        torch.testing.assert_close(acm(x), expected)
        weights = acm.affinity(x)[2]
    assert ((weights > 0) & (weights < 1)).all()  # sigmoid weights, not normalised over the cells


@pytest.mark.parametrize("fusion", [True, False])
def test_shapes_and_gradients(fusion):
    torch.manual_seed(0)
    head = small_head(fusion=fusion).train()
    feats = contract_features()
    out = head(feats)
    assert out.shape == (2, 5, 2, 2)
    out.square().mean().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"
    maps = head.eval().affinity_maps(feats)
    assert [tuple(m.shape) for m in maps] == [(2, s, s, 2, 2) for s in (1, 2, 3, 6)]


def test_contract_errors():
    assert_refuses_bad_features(small_head().eval())
    with pytest.raises(ValueError, match="num_classes"):
        APCHead(in_channels=CHANNELS[-1], channels=16, num_classes=0)
