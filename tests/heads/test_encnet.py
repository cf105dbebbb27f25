import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.encnet import EncHead, Encoding, aggregate, presence, soft_assignment
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features
from tests.heads.test_contract import features as contract_features


def small_head(**kw):
    return EncHead(in_channels=CHANNELS[1:], channels=16, num_classes=5, num_codes=4, **kw)


def encoding_by_loops(x, codewords, scale):
    """x (n, d) -> (k, d): e_k = sum_n a_nk (x_n - c_k), a_nk = softmax_k(s_k |x_n - c_k|^2), one term at a time."""
    e = torch.zeros(codewords.shape, dtype=x.dtype)
    for i in range(x.shape[0]):
        logits = torch.stack([scale[j] * ((x[i] - codewords[j]) ** 2).sum() for j in range(codewords.shape[0])])
        weights = torch.softmax(logits, 0)
        for j in range(codewords.shape[0]):
            e[j] += weights[j] * (x[i] - codewords[j])
    return e


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg encnet_r50-d8 (VOC): in_channels [512, 1024, 2048], channels 512, num_codes 32, use_se_loss, 21 classes:
    # bottleneck 3x3 + encoding_project 1x1 + codewords/scale + BN1d + fc + se_layer + conv_seg
    by_hand = (2048 * 512 * 9 + 1024) + (512 * 512 + 1024) + (32 * 512 + 32) + 64 + (512 * 512 + 512) + 2 * (512 * 21 + 21)
    head = EncHead(in_channels=(512, 1024, 2048), channels=512, num_classes=21, num_codes=32)
    assert count_parameters(head) == by_hand == 10_002_058
    assert count_parameters(EncHead(use_se_loss=False)) == 10_002_058 - (512 * 21 + 21)


def test_encoding_matches_the_formula_computed_with_loops():
    torch.manual_seed(0)
    layer = Encoding(channels=5, num_codes=3).double()
    with torch.no_grad():
        layer.codewords.normal_()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    expected = torch.stack([encoding_by_loops(s, layer.codewords.detach(), layer.scale.detach())
                            for s in x.flatten(2).transpose(1, 2)])
    with torch.no_grad():
        lean = layer(x)
        layer.explicit = True
        explicit = layer(x)
    assert lean.shape == (2, 3, 5)
    torch.testing.assert_close(lean, expected)
    torch.testing.assert_close(explicit, expected)


def test_one_codeword_is_the_global_sum_minus_the_codeword():
    x = torch.randn(1, 7, 3)
    c = torch.randn(1, 3)
    e = aggregate(soft_assignment(x, c, torch.tensor([-0.5])), x, c)
    torch.testing.assert_close(e[0, 0], 7 * (x[0].mean(0) - c[0]), rtol=1e-5, atol=1e-5)


def test_presence_target_ignores_void():
    masks = torch.tensor([[[0, 2], [255, 2]], [[255, 255], [4, 4]]])
    assert presence(masks, 5).tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]]


@pytest.mark.parametrize("explicit", [False, True])
def test_shapes_losses_and_gradients(explicit):
    torch.manual_seed(0)
    head = small_head(explicit=explicit).train()
    feats = contract_features()
    assert head(feats).shape == (2, 5, 2, 2)  # at C5, stride 32 of the 64-px input
    assert head.presence_logits(feats).shape == (2, 5)
    assert head.assignment_maps(feats).shape == (2, 4, 2, 2)
    masks = torch.randint(0, 5, (2, 64, 64))
    losses = head.losses(feats, masks)
    assert set(losses) == {"ce", "se"}
    sum(losses.values()).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_without_se_loss_there_is_no_se_branch_and_one_loss():
    head = small_head(use_se_loss=False).train()
    assert not hasattr(head, "se_layer")
    assert set(head.losses(contract_features(), torch.randint(0, 5, (2, 64, 64)))) == {"ce"}


def test_se_loss_is_weighted_binary_cross_entropy():
    torch.manual_seed(0)
    head = small_head(se_weight=0.2).eval()  # eval: dropout and BatchNorm fixed, so two calls agree
    feats, masks = contract_features(), torch.randint(0, 5, (2, 64, 64))
    expected = 0.2 * torch.nn.functional.binary_cross_entropy_with_logits(head.presence_logits(feats),
                                                                          presence(masks, 5))
    torch.testing.assert_close(head.losses(feats, masks)["se"], expected)


def test_lateral_fusion_shapes():
    head = small_head(add_lateral=True).eval()
    assert head(contract_features()).shape == (2, 5, 2, 2)
    assert count_parameters(head) - count_parameters(small_head()) == (
        (16 * 16 + 32) + (32 * 16 + 32) + (3 * 16 * 16 * 9 + 32))


def test_contract_errors():
    assert_refuses_bad_features(small_head().eval())
    with pytest.raises(ValueError, match="num_classes"):
        EncHead(in_channels=CHANNELS[1:], channels=16, num_classes=0)
