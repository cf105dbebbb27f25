import math

import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.nonlocal_net import NonLocal2d, NonLocalHead
from seglab.nn.attention import attend
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features, features


def small_head(**kw):
    torch.manual_seed(0)
    return NonLocalHead(in_channels=64, channels=16, num_classes=3, **kw)


def wake(head):
    """Give the zero-initialised BatchNorm weight of conv_out a value: at zero the non-local branch is exactly 0."""
    torch.nn.init.normal_(head.nl_block.conv_out[1].weight)
    return head


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/_base_/models/nonlocal_r50-d8.py (+ the VOC config: 21 classes): NLHead, in_channels=2048,
    # channels=512, reduction=2, num_convs=2, concat_input=True; theta/phi/g 1x1 convs with bias, conv_out Conv-BN
    fcn = 2048 * 512 * 9 + 2 * 512 + 512 * 512 * 9 + 2 * 512 + 2560 * 512 * 9 + 2 * 512 + 512 * 21 + 21
    block = 3 * (512 * 256 + 256) + 256 * 512 + 2 * 512
    assert fcn + block == 24_132_885
    assert count_parameters(NonLocalHead(2048, 512, 21, reduction=2, use_scale=True)) == 24_132_885


def test_output_shape_and_gradients_reach_every_parameter():
    head = wake(small_head()).train()
    feats = features()
    out = head(feats)
    assert out.shape == (2, 3, 2, 2)
    out.square().mean().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(p.grad.abs().sum() > 0 for n, p in head.named_parameters() if n.startswith("nl_block"))


def test_block_starts_as_the_identity():
    block = NonLocal2d(16).eval()
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(block(x), x)


def test_contract_errors_and_num_classes():
    assert_refuses_bad_features(NonLocalHead(in_channels=CHANNELS[-1], channels=16, num_classes=3).eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        NonLocalHead(in_channels=64, channels=16, num_classes=0)


def test_sdpa_and_explicit_agree_on_the_same_weights():
    head = wake(small_head()).eval()
    explicit = NonLocalHead(in_channels=64, channels=16, num_classes=3, explicit=True).eval()
    explicit.load_state_dict(head.state_dict())
    feats = [torch.randn(2, c, 8, 8) for c in CHANNELS]
    with torch.no_grad():
        assert torch.allclose(head(feats), explicit(feats), atol=1e-5)


def test_attention_against_a_naive_loop():
    # y_i = sum_j softmax_j(theta_i . phi_j / sqrt(d)) g_j, z = x + BN(W y), position by position
    block = NonLocal2d(8, reduction=2).eval()
    torch.nn.init.normal_(block.conv_out[1].weight)
    for conv in (block.theta, block.phi, block.g):
        torch.nn.init.normal_(conv.weight)
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(1, 8, 3, 4)
    with torch.no_grad():
        theta, phi, g = (conv(x)[0].flatten(1) for conv in (block.theta, block.phi, block.g))  # (d, n)
        n, d = theta.shape[1], theta.shape[0]
        y = torch.zeros(d, n)
        weights = torch.zeros(n, n)
        for i in range(n):
            logits = torch.tensor([float(theta[:, i] @ phi[:, j]) / math.sqrt(d) for j in range(n)])
            weights[i] = logits.exp() / logits.exp().sum()
            for j in range(n):
                y[:, i] += weights[i, j] * g[:, j]
        expected = x + block.conv_out(y.reshape(1, d, 3, 4))
        assert torch.allclose(block.attention(x)[0], weights, atol=1e-5)
        assert torch.allclose(block(x), expected, atol=1e-5)
        block.explicit = True
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_scale_is_one_over_sqrt_of_the_reduced_width():
    assert NonLocal2d(64, reduction=2).scale == pytest.approx(1 / math.sqrt(32))
    assert NonLocal2d(64, use_scale=False).scale == 1.0
    q, k, v = torch.randn(3, 1, 10, 4).unbind(0)
    assert torch.allclose(attend(q, k, v, scale=1.0), attend(q, k, v, scale=1.0, explicit=True), atol=1e-6)


def test_sdpa_block_does_not_keep_the_affinity_for_backward():
    # on contiguous q, k, v the lean kernel keeps q, k, v and the output, not the (n, m) weights
    from seglab.book.profile import saved_bytes
    x = torch.randn(2, 16, 16, 16, requires_grad=True)
    sdpa, explicit = NonLocal2d(16), NonLocal2d(16, explicit=True)
    n = 16 * 16
    skip = list(sdpa.parameters()) + list(explicit.parameters())
    assert saved_bytes(explicit, x, skip=skip) - saved_bytes(sdpa, x, skip=skip) >= 2 * n * n * 4 * 0.9
