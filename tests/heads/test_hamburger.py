import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.book.profile import count_parameters
from seglab.heads.hamburger import NMF, LightHamHead, nmf_step
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features
from tests.heads.test_fcn import assert_gradients_reach_every_parameter

REFERENCE = dict(in_channels=(64, 160, 256), in_index=(1, 2, 3), channels=256, ham_channels=256, num_classes=21,
                 rank=16, train_steps=6, eval_steps=7)


def conv_gn(c_in, c_out):
    return c_in * c_out + 2 * c_out


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py with 21 classes: squeeze ConvModule
    # (480 -> 256, GN, no bias), Hamburger ham_in (1x1 with bias, no norm), NMF2D (no parameters), ham_out (GN),
    # align (GN), conv_seg.
    head = LightHamHead(**REFERENCE)
    by_hand = conv_gn(480, 256) + (256 * 256 + 256) + conv_gn(256, 256) + conv_gn(256, 256) + (256 * 21 + 21)
    assert count_parameters(head) == by_hand == 326_677
    assert count_parameters(head.hamburger.ham) == 0


def small(**kw):
    return LightHamHead(in_channels=CHANNELS[1:], channels=16, ham_channels=16, num_classes=5, num_groups=4,
                        rank=4, **kw)


def features(batch=2):
    return [torch.randn(batch, c, 64 // s, 64 // s) for c, s in zip(CHANNELS, (4, 8, 16, 32))]


@pytest.mark.parametrize("one_step", [False, True])
def test_shape_and_gradients(one_step):
    torch.manual_seed(0)
    head, feats = small(one_step=one_step), features()
    assert head.eval()(feats).shape == (2, 5, 8, 8)  # at C3's grid: stride 8 of the 64x64 image
    assert_gradients_reach_every_parameter(head.train(), feats)


def test_contract_errors():
    assert_refuses_bad_features(small().eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        LightHamHead(in_channels=CHANNELS[1:], channels=16, ham_channels=16, num_classes=0, num_groups=4)
    with pytest.raises(ValueError, match="divisible by 32"):
        LightHamHead(in_channels=CHANNELS[1:], channels=16, ham_channels=16, num_classes=5)
    with pytest.raises(ValueError, match="eval_bases must be"):
        NMF(eval_bases="mean")
    with pytest.raises(ValueError, match="one entry per level"):
        LightHamHead(in_channels=CHANNELS[2:], channels=16, ham_channels=16, num_classes=5, num_groups=4)


def test_nmf_matches_a_direct_multiplicative_update_loop():
    torch.manual_seed(0)
    x = torch.rand(3, 12, 40)  # (b, d, n), non-negative
    start = F.normalize(torch.rand(3, 12, 5), dim=1)
    ham = NMF(rank=5, train_steps=4, eval_steps=6)
    for training, steps in [(True, 4), (False, 6)]:
        bases, coef = ham.train(training).decompose(x, start)
        for b in range(3):
            X, D = x[b].double().numpy(), start[b].double().numpy()
            e = np.exp(X.T @ D)
            C = e / e.sum(1, keepdims=True)
            for _ in range(steps):
                C = C * (X.T @ D) / (C @ (D.T @ D) + 1e-6)
                D = D * (X @ C) / (D @ (C.T @ C) + 1e-6)
            C = C * (X.T @ D) / (C @ (D.T @ D) + 1e-6)
            np.testing.assert_allclose(bases[b].numpy(), D, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(coef[b].numpy(), C, rtol=1e-4, atol=1e-6)


def test_multiplicative_updates_never_increase_the_error():
    torch.manual_seed(0)
    x = torch.rand(1, 32, 200)
    bases = F.normalize(torch.rand(1, 32, 6), dim=1)
    coef = torch.softmax(torch.einsum("bdn,bdr->bnr", x, bases), -1)
    errors = []
    for _ in range(10):
        errors.append(float((x - torch.einsum("bdr,bnr->bdn", bases, coef)).norm()))
        bases, coef = nmf_step(x, bases, coef)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]


def test_one_step_gradient_records_only_the_last_update():
    x = torch.rand(1, 8, 30, requires_grad=True)
    start = F.normalize(torch.rand(1, 8, 3), dim=1)
    full_bases, full_coef = NMF(rank=3).train().decompose(x, start)
    one_bases, one_coef = NMF(rank=3, one_step=True).train().decompose(x, start)
    torch.testing.assert_close(full_coef, one_coef)  # the same forward pass
    assert full_bases.requires_grad and not one_bases.requires_grad  # the bases are constants in the one-step mode
    assert one_coef.requires_grad


def test_eval_is_deterministic_with_fixed_bases_and_random_as_mmseg():
    torch.manual_seed(0)
    head, feats = small().eval(), features()
    with torch.no_grad():
        first = head(feats)
        torch.manual_seed(123)  # the global generator does not matter for the fixed bases
        torch.testing.assert_close(head(feats), first, rtol=0, atol=0)
        torch.testing.assert_close(head([f[:1] for f in feats]), first[:1], atol=1e-5, rtol=1e-4)
        head.hamburger.ham.eval_bases = "random"  # mmseg: new bases at every forward pass
        assert not torch.equal(head(feats), head(feats))


def test_training_is_reproducible_under_a_seed():
    feats = features()
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        head = small().train()
        outs.append(head(feats))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_maps_give_one_coefficient_map_per_basis():
    head = small().eval()
    coef, bases = head.maps(features(1))
    assert coef.shape == (1, 4, 8, 8) and bases.shape == (1, 16, 4)
    assert (coef >= 0).all() and (bases >= 0).all()
