"""Every exported head keeps the one contract (a list of feature maps in, logits out) and refuses bad input with a
message that names the problem, not a traceback from deep inside torch."""

import pytest
import torch

from seglab.heads.aspp import ASPPHead
from seglab.heads.deeplabv3plus import DeepLabV3PlusHead
from seglab.heads.dsconv_fcn import DSConvFCNHead
from seglab.heads.fcn import FCNHead
from seglab.heads.fpn import SemanticFPN
from seglab.heads.pointrend import PointRend
from seglab.heads.psp import PSPHead
from seglab.heads.upernet import UPerHead

CHANNELS = (8, 16, 32, 64)  # a small backbone: C2..C5 at strides 4, 8, 16, 32 of a 64x64 image
HEADS = {
    "FCN": lambda k: FCNHead(in_channels=64, channels=16, num_classes=k),
    "PSPNet": lambda k: PSPHead(in_channels=64, channels=16, num_classes=k),
    "DeepLabV3": lambda k: ASPPHead(in_channels=64, channels=16, num_classes=k, dilations=(1, 2)),
    "Semantic FPN": lambda k: SemanticFPN(in_channels=CHANNELS, neck_channels=16, channels=8, num_classes=k),
    "UPerNet": lambda k: UPerHead(in_channels=CHANNELS, channels=16, num_classes=k),
    "DeepLabV3+": lambda k: DeepLabV3PlusHead(in_channels=64, channels=16, num_classes=k, dilations=(1, 2),
                                              c1_in_channels=8, c1_channels=4),
    "DSConv FCN": lambda k: DSConvFCNHead(in_channels=64, channels=16, num_classes=k),
    "PointRend": lambda k: PointRend(in_channels=CHANNELS, neck_channels=16, channels=8, point_channels=16,
                                     num_classes=k, subdivision_points=64),
}


def features(batch=2):
    return [torch.randn(batch, c, 64 // s, 64 // s) for c, s in zip(CHANNELS, (4, 8, 16, 32))]


@pytest.fixture(params=list(HEADS), ids=list(HEADS))
def head(request):
    torch.manual_seed(0)
    return HEADS[request.param](3).eval()


def test_head_returns_logits_for_every_class(head):
    with torch.no_grad():
        out = head(features())
    assert out.dim() == 4 and out.shape[:2] == (2, 3) and torch.isfinite(out).all()


def replace(level, tensor):
    maps = features()
    maps[level] = tensor
    return maps


BAD_FEATURE_LISTS = [  # (name, bad input, error, message); a head built for CHANNELS must refuse each
    ("empty list", lambda: [], ValueError, "empty list"),
    ("a bare tensor", lambda: torch.randn(2, 64, 2, 2), TypeError, "list of feature maps"),
    ("non-4D level", lambda: replace(3, torch.randn(64, 2, 2)), ValueError, "every level must be 4D"),
    ("batch mismatch", lambda: replace(0, torch.randn(3, 8, 16, 16)), ValueError,
     r"disagree on the batch size: \[3, 2, 2, 2\]"),
    ("wrong channels", lambda: replace(3, torch.randn(2, 48, 2, 2)), ValueError,
     r"level 3 of the 4 level\(s\) given has 48 channels, but the head was built for 64"),
    ("two levels of four", lambda: features()[:2], (ValueError, IndexError), r"2 level\(s\)|given 2"),
    ("float64 level", lambda: replace(3, torch.randn(2, 64, 2, 2, dtype=torch.float64)), TypeError,
     r"level 3 is torch.float64; a head takes float32 .*f.float\(\)"),
    ("float16 levels", lambda: [f.half() for f in features()], TypeError,
     r"level 0 is torch.float16; a head takes float32 .*f.float\(\)"),
    ("a batch of 0", lambda: features(batch=0), ValueError, "batch of 0 images"),  # crashed ISANet and DMNet
]


def assert_refuses_bad_features(head):
    """The contract's bad-input errors, for a head built for ``CHANNELS`` (generation-2 test files call this)."""
    for name, bad, error, message in BAD_FEATURE_LISTS:
        with pytest.raises(error, match=message):
            head(bad())


@pytest.mark.parametrize("case", BAD_FEATURE_LISTS, ids=[c[0] for c in BAD_FEATURE_LISTS])
def test_bad_feature_lists_are_refused_with_a_message(head, case):
    _, bad, error, message = case
    with pytest.raises(error, match=message):
        head(bad())


@pytest.mark.parametrize("name", list(HEADS))
def test_num_classes_below_one_is_refused(name):
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        HEADS[name](0)


@pytest.mark.parametrize("name", list(HEADS))
def test_num_classes_that_is_not_an_integer_is_refused(name):
    with pytest.raises(ValueError, match=r"num_classes must be an integer, got 2.5 \(float\)"):
        HEADS[name](2.5)


WIDTHS = {  # the heads built with a width: (in_channels, channels) -> head
    "FCN": lambda i, c: FCNHead(in_channels=i, channels=c, num_classes=3),
    "PSPNet": lambda i, c: PSPHead(in_channels=i, channels=c, num_classes=3),
    "DeepLabV3": lambda i, c: ASPPHead(in_channels=i, channels=c, num_classes=3, dilations=(1, 2)),
    "UPerNet": lambda i, c: UPerHead(in_channels=(8, 16, 32, i), channels=c, num_classes=3),
    "DeepLabV3+": lambda i, c: DeepLabV3PlusHead(in_channels=i, channels=c, num_classes=3, dilations=(1, 2),
                                                 c1_in_channels=8, c1_channels=4),
    "DSConv FCN": lambda i, c: DSConvFCNHead(in_channels=i, channels=c, num_classes=3),
}
NECKED = {  # FPN-necked heads: their decoder's width (the neck's own plain convs are the notebook's code)
    "Semantic FPN": lambda c: SemanticFPN(in_channels=CHANNELS, neck_channels=16, channels=c, num_classes=3),
    "PointRend": lambda c: PointRend(in_channels=CHANNELS, neck_channels=16, channels=c, point_channels=16,
                                     num_classes=3, subdivision_points=64),
}
BAD_WIDTHS = [(0, "channels must be at least 1, got 0"), (-4, "channels must be at least 1, got -4"),
              (16.5, "channels must be an integer, got 16.5")]


@pytest.mark.parametrize("name", list(WIDTHS))
@pytest.mark.parametrize("in_channels,channels,message", [(64, c, m) for c, m in BAD_WIDTHS]
                         + [(0, 16, "in_channels must be at least 1, got 0")])
def test_widths_that_are_not_positive_integers_are_refused(name, in_channels, channels, message):
    assert WIDTHS[name](64, 16) is not None  # the builder itself is right
    with pytest.raises(ValueError, match=message):
        WIDTHS[name](in_channels, channels)


@pytest.mark.parametrize("name", list(NECKED))
@pytest.mark.parametrize("channels,message", BAD_WIDTHS)
def test_decoder_widths_of_necked_heads_are_refused(name, channels, message):
    assert NECKED[name](8) is not None
    with pytest.raises(ValueError, match=message):
        NECKED[name](channels)
