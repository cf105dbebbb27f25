import pytest
import torch

from seglab.backbones import create
from seglab.backbones.taps import StrideTaps


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return create("efficientnet_lite0", output_stride=16).eval()


def test_the_taps_are_the_last_block_of_every_stage_at_the_output_stride(lite0):
    taps = StrideTaps(lite0).eval()
    assert taps.stages == [4, 5, 6, 7] and taps.channels == [80, 112, 192, 320]
    assert taps.name == "efficientnet_lite0-taps" and taps.output_stride == 16
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps, levels = taps(x), lite0(x)
    assert [tuple(m.shape) for m in maps] == [(2, c, 4, 4) for c in (80, 112, 192, 320)]  # all at stride 16
    assert torch.equal(maps[1], levels[2]) and torch.equal(maps[3], levels[3])  # taps 2 and 4 are C4 and C5


def test_the_taps_follow_the_output_stride():
    assert StrideTaps(create("efficientnet_lite0", output_stride=32)).stages == [6, 7]  # stride 32: stages 6 and 7
    assert StrideTaps(create("efficientnet_lite0", output_stride=8)).channels == [40, 80, 112, 192, 320]


def test_block_outputs_stop_after_the_last_wanted_block(lite0, monkeypatch):
    calls = []
    for i, block in enumerate(lite0._blocks):
        monkeypatch.setattr(block, "forward", lambda x, i=i, f=block.forward: calls.append(i) or f(x))
    with torch.no_grad():
        out = lite0.block_outputs(torch.randn(1, 3, 32, 32), [2, 4])
    assert len(out) == 2 and calls == [0, 1, 2, 3, 4]
