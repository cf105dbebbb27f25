import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.fcn import FCNHead
from seglab.heads.ocrnet import OCRHead, object_regions
from tests.heads.test_fcn import assert_gradients_reach_every_parameter
from tests.heads.test_contract import CHANNELS, assert_refuses_bad_features


def conv_bn(c_in, c_out, k=1):
    return c_in * c_out * k * k + 2 * c_out


def test_reference_parameter_count_matches_mmsegmentation():
    # mmseg configs/_base_/models/ocrnet_r50-d8.py, 21 classes: FCNHead(in 1024, channels 256, num_convs 1,
    # concat_input False) and OCRHead(in 2048, channels 512, ocr_channels 256); ObjectAttentionBlock with
    # key_query_num_convs=2, value and out projections of one ConvModule, bottleneck 1x1 on the concatenation.
    head = OCRHead(in_channels=(1024, 2048), channels=512, ocr_channels=256, fcn_channels=256, num_classes=21)
    fcn = conv_bn(1024, 256, 3) + 256 * 21 + 21
    ocr = (conv_bn(2048, 512, 3)  # bottleneck
           + 2 * (conv_bn(512, 256) + conv_bn(256, 256))  # query and key projections
           + conv_bn(512, 256) + conv_bn(256, 512)  # value and out projections
           + conv_bn(1024, 512)  # the object attention block's bottleneck
           + 512 * 21 + 21)  # conv_seg
    assert count_parameters(head.soft_regions) == fcn == 2_365_205
    assert count_parameters(FCNHead(1024, 256, 21, num_convs=1, concat_input=False)) == fcn
    assert count_parameters(head) - fcn == ocr == 10_633_237
    assert count_parameters(head) == 12_998_442


def small(**kw):
    return OCRHead(in_channels=CHANNELS[2:], channels=16, ocr_channels=8, fcn_channels=8, num_classes=5, **kw)


def features(batch=2):
    return [torch.randn(batch, c, 64 // s, 64 // s) for c, s in zip(CHANNELS, (4, 8, 16, 32))]


def test_shape_gradients_and_losses():
    torch.manual_seed(0)
    head, feats = small(), features()
    assert head(feats).shape == (2, 5, 2, 2)  # at C5's grid; the regions of C4's grid are resized to it
    assert_gradients_reach_every_parameter(head, feats)
    masks = torch.randint(0, 5, (2, 64, 64))
    losses = head.train().losses(feats, masks)
    assert set(losses) == {"ocr", "soft regions"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.soft_regions.parameters())


def test_contract_errors():
    assert_refuses_bad_features(small().eval())
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        OCRHead(in_channels=CHANNELS[2:], channels=16, ocr_channels=8, fcn_channels=8, num_classes=0)


def test_sdpa_and_explicit_agree_on_the_same_weights():
    torch.manual_seed(0)
    sdpa = small(explicit=False).eval()
    explicit = small().eval()  # explicit by default: K regions are fewer than the channels
    assert explicit.object_attention.explicit
    explicit.load_state_dict(sdpa.state_dict())
    feats = [torch.randn(2, c, 8, 8) for c in CHANNELS]
    with torch.no_grad():
        torch.testing.assert_close(sdpa(feats), explicit(feats), atol=1e-5, rtol=1e-4)


def test_spatial_gather_matches_the_direct_formula():
    torch.manual_seed(0)
    feats, logits = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5)
    got = object_regions(feats, logits, scale=2.0)  # (b, k, c)
    for b in range(2):
        for k in range(6):
            w = torch.exp(2.0 * logits[b, k]) / torch.exp(2.0 * logits[b, k]).sum()  # softmax over the 20 pixels
            for c in range(3):
                torch.testing.assert_close(got[b, k, c], (w * feats[b, c]).sum())


def test_pixel_to_region_attention_sums_to_one_over_regions():
    head = small().eval()
    regions, attention = head.maps([torch.randn(1, c, 8, 8) for c in CHANNELS])
    assert regions.shape == (1, 5, 8, 8) and attention.shape == (1, 8, 8, 5)
    torch.testing.assert_close(regions.sum((-2, -1)), torch.ones(1, 5))
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 8, 8))
