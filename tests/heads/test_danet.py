import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.danet import CAM, PAM, DAHead, channel_weights
from seglab.model import head_losses
from seglab.nn.losses import seg_loss
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features


def small(**kw):
    return DAHead(**{**dict(in_channels=64, channels=16, num_classes=5, pam_channels=4), **kw})


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg danet_r50-d8 (VOC, 21 classes): DAHead(in_channels=2048, channels=512, pam_channels=64); four 3x3
    # ConvModules, PAM's q/k/v 1x1 convs with bias, two Scale(0), conv_seg + pam_conv_seg + cam_conv_seg
    head = DAHead(in_channels=2048, channels=512, num_classes=21, pam_channels=64)
    assert count_parameters(head) == 23_957_697
    assert count_parameters(head.pam) == 2 * (512 * 64 + 64) + 512 * 512 + 512 + 1
    assert count_parameters(head.cam) == 1


def test_shapes_losses_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = small()
    for g in (head.pam.gamma, head.cam.gamma):  # at gamma = 0 no gradient reaches PAM's projections yet
        torch.nn.init.constant_(g, 0.5)
    feats = [torch.randn(2, 64, 8, 8)]
    masks = torch.randint(0, 5, (2, 32, 32))
    head.eval()
    assert head(feats).shape == (2, 5, 8, 8)
    head.train()
    losses = head_losses(head, feats, masks)
    assert set(losses) == {"pam_cam", "pam", "cam"}
    sum(losses.values()).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_the_main_loss_is_the_cross_entropy_of_the_logits():
    torch.manual_seed(0)
    head = small(dropout=0.0).train()
    feats, masks = [torch.randn(2, 64, 8, 8)], torch.randint(0, 5, (2, 8, 8))
    losses = head.losses(feats, masks)
    assert torch.isclose(losses["pam_cam"], seg_loss(head(feats), masks))
    assert small(branch_loss_weight=0.0).losses(feats, masks)["pam"].item() == 0.0


def test_contract_errors_and_num_classes():
    head = DAHead(in_channels=CHANNELS[-1], channels=16, num_classes=3, pam_channels=4).eval()
    assert_refuses_bad_features(head)
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        DAHead(in_channels=64, channels=16, num_classes=0)


@pytest.mark.parametrize("module", ["pam", "cam"])
def test_sdpa_and_explicit_agree(module):
    torch.manual_seed(0)
    fast = PAM(16, 4) if module == "pam" else CAM()
    torch.nn.init.constant_(fast.gamma, 1.0)
    slow = PAM(16, 4, explicit=True) if module == "pam" else CAM(explicit=True)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 5, 7) * 0.3
    torch.testing.assert_close(fast(x), slow(x), rtol=1e-4, atol=1e-5)
    head, explicit = small(), small(explicit=True)
    explicit.load_state_dict(head.state_dict())
    feats = [torch.randn(2, 64, 6, 6)]
    torch.testing.assert_close(head.eval()(feats), explicit.eval()(feats), rtol=1e-4, atol=1e-5)


def test_cam_is_the_mmseg_formula_written_as_loops():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(1, 5, 3, 4)) * 0.5
    cam = CAM()
    torch.nn.init.constant_(cam.gamma, 0.7)
    flat = x[0].reshape(5, -1)
    expected = torch.empty_like(flat)
    for c in range(5):
        energy = [float(sum(flat[c, n] * flat[k, n] for n in range(12))) for k in range(5)]
        new = [max(energy) - e for e in energy]
        weights = [torch.exp(torch.tensor(v)) for v in new]
        total = sum(weights)
        expected[c] = sum(weights[k] / total * flat[k] for k in range(5))
    expected = 0.7 * expected.reshape(5, 3, 4) + x[0]
    for explicit in (False, True):
        cam.explicit = explicit
        torch.testing.assert_close(cam(x)[0], expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(channel_weights(x).sum(-1), torch.ones(1, 5))


def test_pam_map_is_softmax_of_query_key_products_without_scaling():
    torch.manual_seed(0)
    pam = PAM(8, 2)
    x = torch.randn(1, 8, 3, 3)
    q = pam.query(x).flatten(2)[0].T  # (hw, d)
    k = pam.key(x).flatten(2)[0].T
    torch.testing.assert_close(pam.weights(x)[0], torch.softmax(q @ k.T, dim=-1))
