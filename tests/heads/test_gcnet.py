import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.gcnet import ContextBlock, GCHead
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features, features


def wake(module):
    """Random weights for the zero-initialised last conv of the bottleneck: at zero the block is the identity."""
    for m in module.modules():
        if isinstance(m, ContextBlock):
            torch.nn.init.normal_(m.channel_add[-1].weight, std=0.1)
            torch.nn.init.normal_(m.channel_add[-1].bias, std=0.1)
    return module


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/_base_/models/gcnet_r50-d8.py (+ the VOC config: 21 classes): GCHead, in_channels=2048,
    # channels=512, ratio=1/4, pooling_type='att', fusion_types=('channel_add',), num_convs=2, concat_input=True
    fcn = 2048 * 512 * 9 + 2 * 512 + 512 * 512 * 9 + 2 * 512 + 2560 * 512 * 9 + 2 * 512 + 512 * 21 + 21
    block = (512 + 1) + (512 * 128 + 128) + 2 * 128 + (128 * 512 + 512)  # conv_mask, conv, LayerNorm, conv
    assert fcn + block == 23_739_286
    assert count_parameters(GCHead(2048, 512, 21, ratio=1 / 4, pooling_type="att",
                                   fusion_types=("channel_add",))) == 23_739_286


@pytest.mark.parametrize("explicit", [False, True])
def test_output_shape_and_gradients(explicit):
    torch.manual_seed(0)
    head = wake(GCHead(in_channels=64, channels=16, num_classes=3, explicit=explicit)).train()
    out = head(features())
    assert out.shape == (2, 3, 2, 2)
    out.square().mean().backward()
    grads = dict(head.named_parameters())
    bias = grads.pop("gc_block.conv_mask.bias")  # a constant added to every logit: the softmax cancels it
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in grads.values()), \
        [n for n, p in grads.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert bias.grad is None if not explicit else bias.grad.abs().max() < 1e-6


def test_contract_errors_and_num_classes():
    assert_refuses_bad_features(GCHead(in_channels=CHANNELS[-1], channels=16, num_classes=3).eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        GCHead(in_channels=64, channels=16, num_classes=0)
    with pytest.raises(ValueError, match="pooling_type"):
        ContextBlock(16, pooling_type="max")


def test_sdpa_and_explicit_agree_on_the_same_weights():
    torch.manual_seed(0)
    head = wake(GCHead(in_channels=64, channels=16, num_classes=3, explicit=False)).eval()
    explicit = GCHead(in_channels=64, channels=16, num_classes=3).eval()  # explicit by default
    assert explicit.gc_block.explicit
    explicit.load_state_dict(head.state_dict())
    feats = [torch.randn(2, c, 8, 8) for c in CHANNELS]
    with torch.no_grad():
        assert torch.allclose(head(feats), explicit(feats), atol=1e-5)


def test_context_block_against_the_formula():
    # c = sum_j softmax_j(w . x_j + b) x_j; z_i = x_i + W2 relu(LN(W1 c + b1)) + b2, the same for every i
    torch.manual_seed(0)
    block = wake(ContextBlock(8, ratio=1 / 2)).eval()
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        flat = x.flatten(2)  # (b, c, n)
        logits = torch.einsum("c,bcn->bn", block.conv_mask.weight.flatten(), flat) + block.conv_mask.bias
        weights = torch.softmax(logits, dim=-1)
        context = (weights[:, None] * flat).sum(-1)  # (b, c)
        conv1, norm, _, conv2 = block.channel_add
        hidden = torch.relu(norm(conv1(context[:, :, None, None])))
        expected = x + conv2(hidden)
        assert torch.allclose(block.context_mask(x), weights, atol=1e-6)
        assert torch.allclose(block(x), expected, atol=1e-5)
        block.explicit = True
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_starts_as_the_identity_and_other_variants_run():
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(ContextBlock(8).eval()(x), x)
    both = wake(ContextBlock(8, pooling_type="avg", fusion_types=("channel_mul", "channel_add"))).eval()
    with torch.no_grad():
        assert both(x).shape == x.shape
    assert count_parameters(both) == 2 * ((8 * 2 + 2) + 2 * 2 + (2 * 8 + 8))
