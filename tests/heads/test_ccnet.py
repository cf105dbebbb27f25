import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.ccnet import CCHead, CrissCrossAttention, criss_cross_mask
from tests.heads.test_fcn import assert_gradients_reach_every_parameter, features
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/ccnet/ccnet_r50-d8_4xb4-20k_voc12aug-512x512.py (_base_ ccnet_r50-d8.py, 21 classes): CCHead
    # (FCNHead, num_convs=2, concat_input=True, in 2048, channels 512) + mmcv CrissCrossAttention(512): query and
    # key 1x1 convs to 64 channels with bias, value 1x1 conv to 512 with bias, gamma (one scalar)
    fcn = (2048 * 9 * 512 + 2 * 512) + (512 * 9 * 512 + 2 * 512) + (2560 * 9 * 512 + 2 * 512) + 512 * 21 + 21
    cca = 2 * (512 * 64 + 64) + (512 * 512 + 512) + 1
    assert fcn + cca == 23_935_126
    assert count_parameters(CCHead(in_channels=2048, channels=512, num_classes=21, recurrence=2)) == 23_935_126


def test_shapes_and_gradients():
    head = CCHead(in_channels=512, channels=32, num_classes=5)
    torch.nn.init.constant_(head.cca.gamma, 0.5)  # zero at init: nothing would reach query, key and value
    feats = features()
    assert head(feats).shape == (2, 5, 8, 8)
    assert_gradients_reach_every_parameter(head, feats)


def test_the_block_starts_as_the_identity():
    x = torch.randn(2, 16, 5, 6)
    torch.testing.assert_close(CrissCrossAttention(16)(x), x)


def test_contract_errors_and_num_classes():
    assert_refuses_bad_features(CCHead(in_channels=CHANNELS[-1], channels=16, num_classes=3).eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        CCHead(in_channels=64, channels=16, num_classes=0)


def naive_masked_attention(block, x):
    """Full (hw x hw) attention, -inf outside the query's row and column (the query itself once), no scale."""
    b, c, h, w = x.shape
    q = block.query(x).flatten(2).transpose(1, 2)  # (b, n, c')
    k = block.key(x).flatten(2).transpose(1, 2)
    v = block.value(x).flatten(2).transpose(1, 2)  # (b, n, c)
    allowed = torch.zeros(h * w, h * w, dtype=torch.bool)
    for n in range(h * w):
        for m in range(h * w):
            allowed[n, m] = n // w == m // w or n % w == m % w
    energy = (q @ k.transpose(1, 2)).masked_fill(~allowed, float("-inf"))
    out = torch.softmax(energy, dim=-1) @ v  # (b, n, c)
    return x + block.gamma * out.transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("size", [(5, 7), (6, 6), (1, 4)])
def test_criss_cross_is_masked_full_attention(explicit, size):
    torch.manual_seed(0)
    block = CrissCrossAttention(16, explicit=explicit)
    torch.nn.init.constant_(block.gamma, 0.7)
    x = torch.randn(2, 16, *size)
    torch.testing.assert_close(block(x), naive_masked_attention(block, x), rtol=1e-4, atol=1e-5)
    assert criss_cross_mask(*size).sum(-1).tolist() == [size[0] + size[1] - 1] * (size[0] * size[1])


def test_sdpa_and_explicit_heads_agree_on_the_same_weights():
    torch.manual_seed(0)
    explicit = CCHead(in_channels=512, channels=32, num_classes=5)
    torch.nn.init.constant_(explicit.cca.gamma, 0.5)
    lean = CCHead(in_channels=512, channels=32, num_classes=5, explicit=False)
    lean.load_state_dict(explicit.state_dict())
    feats = features()
    torch.testing.assert_close(lean.eval()(feats), explicit.eval()(feats), rtol=1e-4, atol=1e-5)


def test_weights_are_one_softmax_over_the_cross_and_two_passes_reach_everything():
    torch.manual_seed(0)
    head = CCHead(in_channels=512, channels=32, num_classes=5).eval()
    torch.nn.init.constant_(head.cca.gamma, 0.5)
    for conv in (head.cca.query, head.cca.key):  # small energies: no weight underflows to 0
        torch.nn.init.normal_(conv.weight, std=0.01)
    with torch.no_grad():
        (first, effective1), (second, effective2) = head.attention_maps(features())
    n = 8 * 8
    torch.testing.assert_close(first.sum(-1), torch.ones(2, n))
    assert ((first > 0) == criss_cross_mask(8, 8)).all()  # exactly the cross: h + w - 1 positions
    torch.testing.assert_close(effective1, first)
    assert (effective2 > 0).all()  # two passes: every position reaches every other
    torch.testing.assert_close(effective2, second @ first)
