"""ResNet-18/50 with torchvision's parameter names, dilated to output stride 8 ("D8") or plain (stride 32).

``forward`` returns the four stage outputs C2..C5 (strides 4, 8, 16, 32, or 4, 8, 8, 8 with D8).
"""

import hashlib
import os
import socket
import warnings

import torch
from torch import nn

from seglab.backbones.base import Freezable

WEIGHTS = {  # torchvision's ImageNet weights; the hex in the file name is the sha256 prefix check_hash verifies
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
HUB_TIMEOUT = 30  # seconds without an answer before the download is given up (torch.hub sets none of its own)


class PretrainedWeightsUnavailable(UserWarning):
    """ImageNet weights were asked for but could not be loaded; the backbone keeps its random initialisation."""


warnings.simplefilter("always", PretrainedWeightsUnavailable)  # never shown only once, never silently


def conv_bn(in_channels, out_channels, kernel_size, stride=1, dilation=1):
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation * (kernel_size // 2), dilation, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, channels, stride=1, dilation=1):
        super().__init__()
        # only the first 3x3 conv is dilated, as in mmseg's BasicBlock (torchvision's refuses dilation)
        self.conv1, self.bn1 = conv_bn(in_channels, channels, 3, stride, dilation)
        self.conv2, self.bn2 = conv_bn(channels, channels, 3, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as torchvision's."""

    expansion = 4

    def __init__(self, in_channels, channels, stride=1, dilation=1):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, channels, 1)
        self.conv2, self.bn2 = conv_bn(channels, channels, 3, stride, dilation)
        self.conv3, self.bn3 = conv_bn(channels, channels * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_channels, channels * self.expansion, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def shortcut(in_channels, out_channels, stride):
    """1x1 projection on the residual path when the shape changes (torchvision's ``downsample``)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))


class ResNet(Freezable, nn.Module):
    def __init__(self, block, depths, output_stride=8, name="resnet", multi_grid=None):
        super().__init__()
        if output_stride not in (8, 32):
            raise ValueError(f"output_stride must be 8 (dilated, 'D8') or 32, got {output_stride}.")
        self.name, self.output_stride, self.pretrained = name, output_stride, False
        self.conv1, self.bn1 = conv_bn(3, 64, 7, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        # D8 keeps stages 3 and 4 at stride 8 and dilates their 3x3 convs by 2 and 4 instead (each stage's first
        # block by half that: mmseg's contract_dilation, and torchvision's replace_stride_with_dilation for ResNet-50)
        strides, dilations = ((1, 2, 1, 1), (1, 1, 2, 4)) if output_stride == 8 else ((1, 2, 2, 2), (1, 1, 1, 1))
        in_channels, self.channels = 64, []
        for i, (depth, stride, dilation) in enumerate(zip(depths, strides, dilations)):
            channels = 64 * 2**i
            blocks = []
            grid = multi_grid if (i == 3 and multi_grid) else (1,) * depth  # DeepLabV3's multi-grid, last stage
            if len(grid) != depth:
                raise ValueError(f"multi_grid needs one rate per block of the last stage ({depth}), got {grid}.")
            for j in range(depth):
                rate = dilation * grid[j]
                if j == 0 and grid == (1,) * depth:  # the first block bridges the rates (torchvision, mmseg)
                    rate = max(1, dilation // 2)
                blocks.append(block(in_channels, channels, stride if j == 0 else 1, rate))
                in_channels = channels * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.channels.append(in_channels)
        self.frozen = False
        for m in self.modules():  # torchvision's initialisation, which matters when training from scratch
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # (b, 3, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (b, 64, H/4, W/4)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features  # [C2, C3, C4, C5]

    def load_imagenet(self):
        """Load torchvision's ImageNet weights through torch.hub (honours TORCH_HOME). Returns True on success;
        on failure it warns loudly and keeps the random initialisation.

        torch.hub checks the sha256 only when it downloads; a file already in its cache is checked here on every
        load against the sha256 prefix in its name, so a corrupt or replaced checkpoint is never taken for
        ImageNet weights."""
        url = WEIGHTS[self.name]
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(HUB_TIMEOUT)  # a stalled network fails after HUB_TIMEOUT s instead of hanging
        mismatch = ""
        try:
            mismatch = cached_hash_mismatch(cached)
            if mismatch:
                raise RuntimeError(mismatch)
            state = torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is not used
            own = self.state_dict()  # check before loading: a failed strict load leaves some tensors overwritten
            misfit = sorted(set(own) ^ set(state)) + [k for k in own if k in state and state[k].shape != own[k].shape]
            if misfit:
                raise RuntimeError(f"the checkpoint does not fit {self.name}: {len(misfit)} tensors missing, extra "
                                   f"or of another shape (e.g. {misfit[0]})")
            self.load_state_dict(state, strict=True)
        except Exception as error:  # offline, blocked, stalled, or a corrupt/mismatched file
            text = str(error).strip() or type(error).__name__  # e.g. EOFError() of a truncated file says nothing
            if mismatch:
                reason = mismatch
            elif "hash" in text.lower():
                reason = f"the file's sha256 does not match its name ({text})"
            else:
                reason = text if text != type(error).__name__ else f"{text} while reading the checkpoint"
            if os.path.isfile(cached):
                reason += f"; the cached file {cached} may be corrupt: delete it to download it again"
            message = (f"ImageNet weights for {self.name} could not be loaded from {url} ({reason}). "
                       "Continuing from RANDOM initialisation: numbers from this run are trained from scratch.")
            warnings.warn(message, PretrainedWeightsUnavailable, stacklevel=2)
            self.pretrained = False
            return False
        finally:
            socket.setdefaulttimeout(previous)
        self.pretrained = True
        return True


def cached_hash_mismatch(path):
    """Why the torch.hub checkpoint ``path`` does not match the sha256 prefix in its name (``name-<hex>.pth``),
    or ``""`` when it matches, has no such prefix, or is not there (then torch.hub downloads and checks it)."""
    match = torch.hub.HASH_REGEX.search(os.path.basename(path))
    if not match or not match.group(1) or not os.path.isfile(path):
        return ""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    got, expected = digest.hexdigest(), match.group(1)
    if got.startswith(expected):
        return ""
    return (f"the cached file's sha256 ({got[:12]}...) does not start with {expected}, the hash in its name: it is "
            "truncated, corrupt or not torchvision's file")


def resnet18(output_stride=8, pretrained=False, frozen=False, multi_grid=None):
    return build(BasicBlock, (2, 2, 2, 2), "resnet18", output_stride, pretrained, frozen, multi_grid)


def resnet50(output_stride=8, pretrained=False, frozen=False, multi_grid=None):
    return build(Bottleneck, (3, 4, 6, 3), "resnet50", output_stride, pretrained, frozen, multi_grid)


def build(block, depths, name, output_stride, pretrained, frozen, multi_grid=None):
    """``multi_grid`` (e.g. (1, 2, 4) for ResNet-50) multiplies the dilation of each block of the last stage."""
    net = ResNet(block, depths, output_stride, name, multi_grid)
    if pretrained:
        net.load_imagenet()
    if frozen:
        net.freeze()
    return net
