"""Building blocks shared by the heads, and the survey's three input transforms."""

import numbers

import torch
import torch.nn.functional as F
from torch import nn


def check_count(value, name, what="a head's width"):
    """Refuse a count (channels, classes) that is not an integer of at least 1, naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); it is {what}.")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}; it is {what}.")
    return int(value)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, the ``ConvModule`` of mmsegmentation, initialised as it is (Kaiming
    normal, fan-out)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1, groups=1, relu=True):
        what = "the width of a conv layer, set by a head's in_channels and channels, which must be positive integers"
        in_channels, out_channels = check_count(in_channels, "in_channels", what), check_count(out_channels,
                                                                                               "out_channels", what)
        padding = dilation * (kernel_size - 1) // 2
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
                  nn.BatchNorm2d(out_channels)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise kxk ConvBNReLU per channel, then a pointwise 1x1 ConvBNReLU that mixes channels."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1):
        super().__init__(
            ConvBNReLU(in_channels, in_channels, kernel_size, stride, dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )


def classifier(channels, num_classes, dropout=0.1):
    """The final decode step of every head: dropout, then a 1x1 conv to one logit per class."""
    check_count(num_classes, "num_classes", "the number of classes the head predicts")
    check_count(channels, "channels", "the width of the features the head classifies (its channels)")
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)  # mmseg's conv_seg initialisation: small logits at the start
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.Dropout2d(dropout), conv)


def resize(x, size):
    """Bilinear resize of a (b, c, h, w) tensor to ``size`` = (h, w), with ``align_corners=False``."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# --- the three input transforms: a list of feature maps in, what the head decodes out ---

def check_features(features):
    """Refuse, with a message that says what is wrong, anything but a non-empty list of 4D maps of one batch."""
    if not isinstance(features, (list, tuple)):
        raise TypeError(f"A head takes the backbone's list of feature maps [C2, C3, C4, C5], got a "
                        f"{type(features).__name__}{' of shape ' + str(tuple(features.shape)) if torch.is_tensor(features) else ''}; "
                        "wrap a single map in a list.")
    if len(features) == 0:
        raise ValueError("A head was given an empty list of feature maps; expected [C2, C3, C4, C5].")
    for i, f in enumerate(features):
        if not torch.is_tensor(f) or f.dim() != 4:
            shape = tuple(f.shape) if torch.is_tensor(f) else type(f).__name__
            raise ValueError(f"Feature level {i} is {shape}; every level must be 4D (batch, channels, height, width).")
        if f.dtype != torch.float32 and not _autocast_dtype(f):
            raise TypeError(f"Feature level {i} is {f.dtype}; a head takes float32 feature maps (its weights are "
                            "float32): convert them first, [f.float() for f in features] (the feature cache's float16 "
                            "levels come out of FeatureSet.batch as float32), or run under torch.autocast.")
    batches = [int(f.shape[0]) for f in features]  # int(): under jit tracing (fvcore) sizes are tensors
    if len(set(batches)) > 1:
        raise ValueError(f"The feature levels disagree on the batch size: {batches}; they must come from one batch.")
    if batches and batches[0] == 0:
        raise ValueError("The features hold a batch of 0 images; a head takes a batch of at least one.")
    return features


def _autocast_dtype(f):
    """Whether ``f`` has the lower precision that autocast (AMP) computes in on its device: a backbone under
    ``torch.autocast`` hands the head float16 (or bfloat16) maps, and the head's layers run in it too."""
    device = f.device.type
    try:
        return torch.is_autocast_enabled(device) and f.dtype == torch.get_autocast_dtype(device)
    except (RuntimeError, TypeError, AttributeError):  # torch before 2.4, or a device type autocast does not know
        return device == "cuda" and torch.is_autocast_enabled() and f.dtype in (torch.float16, torch.bfloat16)


def _level(features, index, channels=None):
    n = len(features)
    if not -n <= index < n:
        raise IndexError(f"The head reads feature level {index}, but it was given {n} level(s); expected the "
                         "backbone's four levels [C2, C3, C4, C5].")
    x = features[index]
    if channels is not None and int(x.shape[1]) != channels:
        raise ValueError(f"Feature level {index % n} of the {n} level(s) given has {x.shape[1]} channels, but the "
                         f"head was built for {channels} (its in_channels); build it with in_channels={x.shape[1]} or "
                         "feed the matching backbone's levels [C2, C3, C4, C5].")
    return x


def one_level(features, index=-1, channels=None):
    """One level: the head sees a single feature map, e.g. C5. ``channels`` checks its width."""
    return _level(check_features(features), index, channels)


def resize_concat(features, indices=(0, 1, 2, 3), channels=None):
    """Resize-and-concat: upsample the chosen levels to the first one's size and stack their channels."""
    chosen = select(features, indices, channels)
    size = chosen[0].shape[-2:]
    return torch.cat([chosen[0]] + [resize(f, size) for f in chosen[1:]], dim=1)  # (b, sum c, h, w)


def select(features, indices=(0, 1, 2, 3), channels=None):
    """Select several: the head gets a list of levels and fuses them itself (FPN, UPerNet)."""
    check_features(features)
    channels = [None] * len(indices) if channels is None else list(channels)
    return [_level(features, i, c) for i, c in zip(indices, channels)]
