import math

import pytest
import torch

from seglab.book.profile import count_parameters, saved_bytes
from seglab.heads.emanet import EMAHead, EMAModule, em_step
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/_base_/models/emanet_r50-d8.py: EMAHead in_channels=2048, channels=256, ema_channels=512,
    # num_bases=64, num_stages=3, concat_input=True (default), BN; 21 classes. The bases are a buffer.
    head = EMAHead(in_channels=2048, channels=256, ema_channels=512, num_classes=21, num_bases=64, num_stages=3)
    by_hand = (2048 * 512 * 9 + 2 * 512  # ema_in_conv
               + 512 * 512 + 512  # ema_mid_conv (bias, no norm, frozen)
               + 512 * 512 + 2 * 512  # ema_out_conv
               + 512 * 256 * 9 + 2 * 256  # bottleneck
               + (2048 + 256) * 256 * 9 + 2 * 256  # conv_cat
               + 256 * 21 + 21)  # conv_seg
    assert count_parameters(head) == by_hand == 16_458_517
    assert "ema_module.bases" in dict(head.named_buffers())
    assert not any("bases" in n for n, _ in head.named_parameters())


def test_shape_and_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    head = EMAHead(in_channels=64, channels=16, ema_channels=24, num_classes=5, num_bases=6).train()
    feats = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip(CHANNELS, (4, 8, 16, 32))]
    feats[-1] = torch.randn(2, 64, 6, 6)
    out = head(feats)
    assert out.shape == (2, 5, 6, 6)
    out.square().mean().backward()
    trainable = {n: p for n, p in head.named_parameters() if p.requires_grad}
    assert set(dict(head.named_parameters())) - set(trainable) == {"ema_mid_conv.weight", "ema_mid_conv.bias"}
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"
    assert head.ema_mid_conv.weight.grad is None


def test_contract_errors():
    head = EMAHead(in_channels=CHANNELS[-1], channels=16, ema_channels=16, num_classes=3, num_bases=4).eval()
    assert_refuses_bad_features(head)
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        EMAHead(in_channels=64, channels=16, ema_channels=16, num_classes=0)
    with pytest.raises(ValueError, match="num_stages must be at least 1"):
        EMAModule(16, 4, num_stages=0)


def naive_em_step(x, mu):
    """x (c, n), mu (c, k): one EM step with explicit sums, one base and one pixel at a time."""
    c, n = x.shape
    k = mu.shape[1]
    z = torch.zeros(n, k, dtype=x.dtype)
    for i in range(n):
        scores = [sum(x[ch, i] * mu[ch, j] for ch in range(c)) for j in range(k)]
        total = sum(math.exp(s) for s in scores)
        for j in range(k):
            z[i, j] = math.exp(scores[j]) / total
    new = torch.zeros(c, k, dtype=x.dtype)
    for j in range(k):
        weight = sum(z[i, j] for i in range(n))
        mean = [sum(z[i, j] * x[ch, i] for i in range(n)) / weight for ch in range(c)]
        norm = math.sqrt(sum(v * v for v in mean))
        for ch in range(c):
            new[ch, j] = mean[ch] / norm
    return z, new


def test_em_matches_a_naive_em_with_explicit_sums():
    torch.manual_seed(0)
    module = EMAModule(channels=5, num_bases=3, num_stages=3).eval()
    feats = torch.randn(1, 5, 3, 4, dtype=torch.float64)
    module.bases = module.bases.double()
    x, mu = feats.reshape(5, 12), module.bases[0].clone()
    for _ in range(3):
        z, mu = naive_em_step(x, mu)
    z_fast, mu_fast = module.em(feats.reshape(1, 5, 12))
    torch.testing.assert_close(z_fast[0], z)
    torch.testing.assert_close(mu_fast[0], mu)
    torch.testing.assert_close(module(feats)[0].reshape(5, 12), mu @ z.T)  # reconstruction mu z^T
    z1, mu1 = em_step(x[None], module.bases)
    torch.testing.assert_close(mu1.norm(dim=1), torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(z1.sum(-1), torch.ones(1, 12, dtype=torch.float64))


def test_bases_move_by_a_moving_average_in_training_only():
    torch.manual_seed(0)
    module = EMAModule(channels=8, num_bases=4, num_stages=2, momentum=0.1)
    feats = torch.randn(3, 8, 5, 5)
    before = module.bases.clone()
    module.eval()(feats)
    assert torch.equal(module.bases, before)
    _, final = module.em(feats.reshape(3, 8, 25))
    module.train()(feats)
    target = torch.nn.functional.normalize(final.mean(0, keepdim=True), dim=1)
    torch.testing.assert_close(module.bases, 0.9 * before + 0.1 * target)


def test_no_gradient_flows_through_the_em():
    module = EMAModule(channels=8, num_bases=4).eval()
    feats = torch.randn(2, 8, 5, 5, requires_grad=True)
    assert not module(feats).requires_grad
    assert saved_bytes(module, feats) == 0
