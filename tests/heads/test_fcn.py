import pytest
import torch

from seglab.book.profile import count_parameters
from seglab.heads.fcn import FCNHead


def features(channels=(64, 128, 256, 512), size=8, batch=2):
    return [torch.randn(batch, c, size * 2 if i == 0 else size, size * 2 if i == 0 else size)
            for i, c in enumerate(channels)]


def assert_gradients_reach_every_parameter(head, feats):
    head.train()
    head(feats).square().mean().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_fcn_reference_parameter_count_matches_mmsegmentation():
    # mmseg fcn_r50-d8 (VOC): in_channels=2048, channels=512, num_convs=2, concat_input=True, 21 classes, BN
    assert count_parameters(FCNHead(2048, 512, 21, num_convs=2, concat_input=True)) == 23_606_805
    # its auxiliary head: in_channels=1024, channels=256, num_convs=1, concat_input=False
    assert count_parameters(FCNHead(1024, 256, 21, num_convs=1, concat_input=False)) == 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21  # 2,365,205


@pytest.mark.parametrize("concat_input,num_convs", [(True, 2), (False, 1), (False, 0)])
def test_fcn_shapes_and_gradients(concat_input, num_convs):
    channels = 512 if num_convs == 0 else 32
    head = FCNHead(in_channels=512, channels=channels, num_classes=5, num_convs=num_convs, concat_input=concat_input)
    feats = features()
    assert head(feats).shape == (2, 5, 8, 8)
    assert_gradients_reach_every_parameter(head, feats)


def test_fcn_reads_the_level_it_is_told():
    head = FCNHead(in_channels=256, channels=16, num_classes=3, in_index=2)
    assert head(features()).shape == (2, 3, 8, 8)


def test_fcn_names_a_channel_mismatch():
    with pytest.raises(ValueError, match="has 512 channels, but the head was built for 2048"):
        FCNHead(in_channels=2048, channels=16)(features())
