import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.ann import AFNB, APNB, ANNHead, PyramidAttention, PyramidPool
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features


def small(**kw):
    return ANNHead(**{**dict(in_channels=(24, 40), channels=16, num_classes=5, project_channels=8), **kw})


def feats(batch=2, size=8):
    return [torch.randn(batch, c, size, size) for c in (8, 16, 24, 40)]


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg ann_r50-d8 (VOC, 21 classes): in_channels [1024, 2048], channels 512, project_channels 256
    head = ANNHead(in_channels=(1024, 2048), channels=512, num_classes=21, project_channels=256)
    assert count_parameters(head) == 20_337_685
    afnb_attention = (1024 * 256 + 2 * 256) + (2048 * 256 + 2 * 256) + (1024 * 256 + 256) + (256 * 2048 + 2048)
    assert count_parameters(head.fusion) == afnb_attention + 4096 * 2048 + 2 * 2048
    apnb_attention = (512 * 256 + 2 * 256) + (512 * 256 + 256) + (256 * 512 + 512)  # query shares the key's conv
    assert count_parameters(head.context) == apnb_attention + 1024 * 512 + 2 * 512


def test_pyramid_has_110_cells_and_each_is_a_window_mean():
    x = torch.randn(2, 3, 16, 16)
    pooled = PyramidPool((1, 3, 6, 8))(x)
    assert pooled.shape == (2, 3, 1 + 9 + 36 + 64)
    torch.testing.assert_close(pooled[..., 0], x.mean((2, 3)))
    torch.testing.assert_close(pooled[..., 1 + 9 + 36], x[..., :2, :2].mean((2, 3)))  # first 8x8 cell: 2x2 window


def test_shapes_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = small()
    for block in (head.fusion, head.context):  # the zero-initialised output conv blocks gradients at step 0
        torch.nn.init.normal_(block.attention.out.weight, std=0.1)
    head.eval()
    assert head(feats()).shape == (2, 5, 8, 8)
    head.train()
    head(feats()).square().mean().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_blocks_start_as_their_bottleneck_of_the_input():
    block = APNB(16, 8, 16).eval()
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(block.attention(x, x), torch.zeros(2, 16, 6, 6))  # zero-initialised output conv


def test_contract_errors_and_num_classes():
    head = ANNHead(in_channels=CHANNELS[2:], channels=16, num_classes=3, project_channels=8).eval()
    assert_refuses_bad_features(head)
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        small(num_classes=0)


def test_sdpa_and_explicit_agree():
    torch.manual_seed(0)
    head, explicit = small(), small(explicit=True)
    for block in (head.fusion, head.context):
        torch.nn.init.normal_(block.attention.out.weight, std=0.1)
    explicit.load_state_dict(head.state_dict())
    f = feats()
    torch.testing.assert_close(head.eval()(f), explicit.eval()(f), rtol=1e-4, atol=1e-5)


def test_pyramid_attention_is_attention_over_the_concatenated_pooled_keys():
    torch.manual_seed(0)
    block = PyramidAttention(6, 10, 4, 5).eval()
    torch.nn.init.normal_(block.out.weight)
    low, high = torch.randn(1, 6, 12, 12), torch.randn(1, 10, 9, 9)
    with torch.no_grad():
        q = block.query(high).flatten(2)[0].T  # (81, 4): every position
        keys, values = block.key(low), block.value(low)
        k = torch.cat([torch.nn.functional.adaptive_avg_pool2d(keys, s).flatten(2) for s in (1, 3, 6, 8)], 2)[0].T
        v = torch.cat([torch.nn.functional.adaptive_avg_pool2d(values, s).flatten(2) for s in (1, 3, 6, 8)], 2)[0].T
        assert k.shape == (110, 4)
        weights = torch.softmax(q @ k.T / 2, dim=-1)  # 1/sqrt(4)
        expected = block.out((weights @ v).T.reshape(1, 4, 9, 9))
        torch.testing.assert_close(block(high, low), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(block.weights(high, low)[0], weights)


def test_fusion_queries_with_the_high_level_map_at_its_own_size():
    block = AFNB(6, 10, 4, 10).eval()
    out = block(torch.randn(2, 6, 12, 12), torch.randn(2, 10, 5, 7))
    assert out.shape == (2, 10, 5, 7)
