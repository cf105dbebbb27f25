"""DMNet's head: shapes, gradients, the reference parameter count, the contract, and the dynamic depthwise
convolution (one grouped conv over the batch) against a per-sample loop."""

import pytest
import torch
import torch.nn.functional as F

from seglab.book.profile import count_parameters
from seglab.heads.dmnet import DCM, DMHead, dynamic_depthwise_conv, same_padding
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features, features


def small_head(num_classes=3, **kw):
    return DMHead(in_channels=CHANNELS[-1], channels=8, num_classes=num_classes, **kw)


def test_output_shape_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = small_head(fusion=True)
    feats = features()
    out = head(feats)
    assert out.shape == (2, 3, 2, 2)
    out.square().mean().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
    assert any(p.grad.abs().sum() > 0 for p in head.parameters())
    assert head.dcm_modules[3].filter_gen_conv.weight.grad.abs().sum() > 0  # the filters are trained through


def test_reference_parameter_count_matches_mmsegmentation():
    # configs/_base_/models/dmnet_r50-d8.py: in_channels 2048, channels 512, filter_sizes (1, 3, 5, 7), fusion
    # False (DMHead's default), dropout 0.1, BN; 21 classes
    assert count_parameters(DMHead(2048, 512, 21, filter_sizes=(1, 3, 5, 7))) == 27_285_013
    dcm = 2048 * 512 + 512 + 2048 * 512 + 2 * 512 + 2 * 512
    assert 4 * dcm + 4096 * 512 * 9 + 2 * 512 + 512 * 21 + 21 == 27_285_013
    assert count_parameters(DMHead(2048, 512, 21, fusion=True)) == 27_285_013 + 4 * (512 * 512 + 2 * 512)


def test_contract_errors_and_num_classes():
    assert_refuses_bad_features(small_head().eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        small_head(num_classes=0)


def naive(x, filters):
    """Cross-correlation written out: out[b, c, y, x] = sum_ij filters[b, c, i, j] * padded[b, c, y + i, x + j]."""
    k = filters.shape[-1]
    padded = F.pad(x, same_padding(k))
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for i in range(k):
        for j in range(k):
            out += filters[:, :, i, j, None, None] * padded[:, :, i:i + h, j:j + w]
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
def test_grouped_conv_equals_per_sample_loop_and_naive_sum(k):
    torch.manual_seed(k)
    x = torch.randn(3, 5, 9, 11, dtype=torch.float64)
    filters = torch.randn(3, 5, k, k, dtype=torch.float64)
    grouped = dynamic_depthwise_conv(x, filters)
    loop = torch.cat([F.conv2d(F.pad(x[i:i + 1], same_padding(k)), filters[i][:, None], groups=5) for i in range(3)])
    assert grouped.shape == x.shape
    torch.testing.assert_close(grouped, loop)
    torch.testing.assert_close(grouped, naive(x, filters))


def test_padding_is_mmsegmentations():
    # odd k: symmetric; even k: one more on the left and top, (pad + 1, pad, pad + 1, pad), pad = (k - 1) // 2
    assert [same_padding(k) for k in (1, 2, 3, 4, 7)] == [(0, 0, 0, 0), (1, 0, 1, 0), (1, 1, 1, 1), (2, 1, 2, 1),
                                                           (3, 3, 3, 3)]


def test_filters_depend_on_the_input_and_on_each_sample_only():
    torch.manual_seed(0)
    dcm = DCM(16, 8, 3).eval()
    x = torch.randn(2, 16, 10, 10)
    with torch.no_grad():
        filters = dcm.filters(x)
        assert filters.shape == (2, 8, 3, 3)
        pooled = F.adaptive_avg_pool2d(x, 3)
        expected = torch.einsum("oc,bcij->boij", dcm.filter_gen_conv.weight[:, :, 0, 0], pooled)
        torch.testing.assert_close(filters, expected + dcm.filter_gen_conv.bias[:, None, None])
        alone = dcm(x[1:])  # sample 1 alone gives what it gives in the batch: no mixing across samples
        torch.testing.assert_close(alone, dcm(x)[1:])
