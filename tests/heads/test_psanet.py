import pytest
import torch

from seglab.book.profile import count_flops, count_parameters
from seglab.heads.psanet import PSAHead, psa_mask, shrunk_size
from tests.heads.test_fcn import assert_gradients_reach_every_parameter
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features


def psamask_loops(mask, mask_size, direction):
    """mmcv/ops/csrc/common/cuda/psamask_cuda_kernel.cuh (psamask_{collect,distribute}_forward), transcribed."""
    n_, _, h_feature, w_feature = mask.shape
    h_mask, w_mask = mask_size
    half_h, half_w = (h_mask - 1) // 2, (w_mask - 1) // 2
    buffer = torch.zeros(n_, h_feature * w_feature, h_feature, w_feature, dtype=mask.dtype)
    for n in range(n_):
        for h in range(h_feature):
            for w in range(w_feature):
                for hidx in range(max(0, half_h - h), min(h_mask, h_feature + half_h - h)):
                    for widx in range(max(0, half_w - w), min(w_mask, w_feature + half_w - w)):
                        value = mask[n, hidx * w_mask + widx, h, w]
                        if direction == "collect":
                            buffer[n, (hidx + h - half_h) * w_feature + (widx + w - half_w), h, w] = value
                        else:
                            buffer[n, h * w_feature + w, hidx + h - half_h, widx + w - half_w] = value
    return buffer


@pytest.mark.parametrize("direction", ["collect", "distribute"])
@pytest.mark.parametrize("feature,mask_size", [((5, 4), (9, 7)), ((5, 4), (13, 11)), ((6, 6), (5, 3)),
                                               ((3, 7), (7, 13)), ((1, 1), (3, 3))])
def test_psa_mask_equals_the_reference_kernel(direction, feature, mask_size):
    torch.manual_seed(0)
    mask = torch.randn(2, mask_size[0] * mask_size[1], *feature)
    assert torch.equal(psa_mask(mask, mask_size, direction), psamask_loops(mask, mask_size, direction))


def test_psa_mask_backward_is_the_kernels_copy_back():
    # mmcv's backward copies the buffer's gradient back to the mask cells it read (zeros elsewhere)
    torch.manual_seed(0)
    mask = torch.randn(1, 9 * 9, 4, 4, requires_grad=True)
    grad = torch.randn(1, 16, 4, 4)
    (psa_mask(mask, (9, 9), "collect") * grad).sum().backward()
    expected = torch.zeros_like(mask)
    for h in range(4):
        for w in range(4):
            for y in range(4):
                for x in range(4):
                    expected[0, (y - h + 4) * 9 + (x - w + 4), h, w] = grad[0, y * 4 + x, h, w]
    assert torch.equal(mask.grad, expected)


def test_reference_parameter_count_matches_mmsegmentation():
    # psanet_r50-d8 (VOC): in 2048, channels 512, mask 97x97, bi-direction, 21 classes
    direction = (2048 * 512 + 2 * 512) + (512 * 512 + 2 * 512) + 512 * 97 * 97  # reduce, attention (mask conv: no bias)
    expected = 2 * direction + (1024 * 2048 + 2 * 2048) + (9 * 4096 * 512 + 2 * 512) + (512 * 21 + 21)
    assert expected == 33_247_765
    assert count_parameters(PSAHead(2048, 512, 21, mask_size=(97, 97))) == 33_247_765


def small(**kw):
    torch.manual_seed(0)
    return PSAHead(**{"in_channels": 64, "channels": 16, "num_classes": 3, "mask_size": (15, 15), **kw})


@pytest.mark.parametrize("psa_type", ["bi-direction", "collect", "distribute"])
@pytest.mark.parametrize("size", [(16, 16), (15, 15), (12, 10)])
def test_shapes_and_gradients(psa_type, size):
    head = small(psa_type=psa_type)
    feats = [torch.randn(2, 64, *size)]
    assert head(feats).shape == (2, 3, *size)
    if size == (16, 16):
        assert_gradients_reach_every_parameter(head, feats)


def test_contract():
    assert_refuses_bad_features(PSAHead(in_channels=CHANNELS[-1], channels=16, num_classes=3, mask_size=(3, 3)))
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        PSAHead(in_channels=64, channels=16, num_classes=0, mask_size=(3, 3))
    with pytest.raises(ValueError, match="psa_type"):
        PSAHead(in_channels=64, channels=16, psa_type="both", mask_size=(3, 3))


def test_shrink_follows_mmsegmentation():
    assert shrunk_size(64, 64, 2) == ((32, 32), False)  # even: halve, align_corners False
    assert shrunk_size(97, 97, 2) == ((49, 49), True)  # odd (769-px crop): keep the corners
    assert shrunk_size(16, 16, 1) == ((16, 16), False)


def test_aggregation_against_dense_loops():
    # collect: z_i = sum_j softmax_j(a_i[j - i]) x_j; distribute: z_j = sum_i softmax_i(a_i[j - i]) x_i
    head = small(mask_size=(15, 15)).eval()
    feats = [torch.randn(1, 64, 12, 12)]  # shrunk to 6x6: the 15x15 mask is over-complete
    with torch.no_grad():
        maps = head.point_wise_maps(feats[0])
        for direction in ("collect", "distribute"):
            z, m = maps[direction]
            h, w = z.shape[-2:]
            logits = head.attention[1](head.attention[0](z)) if direction == "collect" else \
                head.attention_p[1](head.attention_p[0](z))
            a = logits[0].reshape(15, 15, h, w)  # a_i[dy + 7, dx + 7] at position i
            dense = torch.empty(h * w, h * w)  # [source j, target i]
            for i in range(h * w):
                for j in range(h * w):
                    (iy, ix), (jy, jx) = divmod(i, w), divmod(j, w)
                    if direction == "collect":  # predicted at the target i for source j
                        dense[j, i] = a[jy - iy + 7, jx - ix + 7, iy, ix]
                    else:  # predicted at the source j for target i
                        dense[j, i] = a[iy - jy + 7, ix - jx + 7, jy, jx]
            torch.testing.assert_close(m[0].reshape(h * w, h * w), dense.softmax(dim=0))


def test_flops_count_the_gather():
    head = small().eval()
    _, by_op, _ = count_flops(head, ([torch.randn(1, 64, 16, 16)],))
    assert by_op["gather"] == 2 * 64 * 64  # two (8*8) x (8*8) maps written


def test_attention_maps_are_distributions():
    head = small().eval()
    maps = head.attention_maps([torch.randn(2, 64, 16, 16)], (3, 4))
    assert set(maps) == {"collect: gathers from", "distribute: receives from", "distribute: sends to"}
    for name in ("collect: gathers from", "distribute: receives from"):
        torch.testing.assert_close(maps[name].sum(dim=(1, 2)), torch.ones(2))
