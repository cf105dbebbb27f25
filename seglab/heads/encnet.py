# Generated from chapters/20_encnet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""EncNet (Zhang et al., CVPR 2018): the Context Encoding Module and its SE-loss, configured as mmsegmentation's
EncHead."""

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from seglab.nn.blocks import ConvBNReLU, classifier, resize, select
from seglab.nn.losses import seg_loss


def soft_assignment(x, codewords, scale):
    """a_nk = softmax over k of s_k ||x_n - c_k||^2: descriptors x (b, n, d), codewords (k, d), smoothing factors
    scale (k,) -> (b, n, k). The squared distance is expanded (||x||^2 - 2 x.c + ||c||^2), so the (b, n, k, d)
    residuals are never formed; with s_k < 0, the nearer the codeword, the larger its weight."""
    distance = (reduce(x.square(), "b n d -> b n 1", "sum") - 2 * torch.einsum("bnd,kd->bnk", x, codewords)
                + reduce(codewords.square(), "k d -> k", "sum"))  # (b, n, k)
    return torch.softmax(scale * distance, dim=-1)


def aggregate(assignment, x, codewords):
    """e_k = sum_n a_nk (x_n - c_k) = sum_n a_nk x_n - (sum_n a_nk) c_k: (b, n, k), (b, n, d), (k, d) -> (b, k, d)."""
    mass = reduce(assignment, "b n k -> b k 1", "sum")  # how much of the image each codeword received
    return torch.einsum("bnk,bnd->bkd", assignment, x) - mass * codewords


class Encoding(nn.Module):
    """The encoding layer: ``num_codes`` learned codewords c_k (k, d) and smoothing factors s_k; (b, d, h, w) ->
    (b, k, d), the aggregated residuals e_k = sum_n a_nk (x_n - c_k). ``explicit=True`` forms the (b, n, k, d)
    residuals as mmsegmentation does (for comparison); the default computes the same with two einsums."""

    def __init__(self, channels, num_codes, explicit=False):
        super().__init__()
        std = 1 / (num_codes * channels) ** 0.5  # mmseg's initialisation
        self.codewords = nn.Parameter(torch.empty(num_codes, channels).uniform_(-std, std))
        self.scale = nn.Parameter(torch.empty(num_codes).uniform_(-1, 0))
        self.explicit = explicit

    def assignment(self, x):  # (b, d, h, w) -> (b, n, k)
        return soft_assignment(rearrange(x, "b d h w -> b (h w) d"), self.codewords, self.scale)

    def forward(self, x):  # (b, d, h, w)
        x = rearrange(x, "b d h w -> b (h w) d")
        if self.explicit:
            residuals = x[:, :, None] - self.codewords  # (b, n, k, d)
            assignment = torch.softmax(self.scale * residuals.square().sum(-1), dim=-1)  # (b, n, k)
            return torch.einsum("bnk,bnkd->bkd", assignment, residuals)
        return aggregate(soft_assignment(x, self.codewords, self.scale), x, self.codewords)  # (b, k, d)


class EncModule(nn.Module):
    """Context Encoding Module: 1x1 Conv-BN-ReLU, encoding, BatchNorm1d over the codewords + ReLU, the mean over
    the codewords: a context vector (b, d); from it a channel gate gamma = sigmoid(fc(context)) that scales the
    input, relu(x + x * gamma)."""

    def __init__(self, channels=512, num_codes=32, explicit=False):
        super().__init__()
        self.encoding_project = ConvBNReLU(channels, channels, 1)
        self.encoding = nn.Sequential(Encoding(channels, num_codes, explicit), nn.BatchNorm1d(num_codes), nn.ReLU())
        self.fc = nn.Linear(channels, channels)

    def gate(self, x):
        """(context (b, d), gamma (b, d)) for x (b, d, h, w)."""
        context = reduce(self.encoding(self.encoding_project(x)), "b k d -> b d", "mean")
        return context, torch.sigmoid(self.fc(context))

    def forward(self, x):  # (b, d, h, w) -> context (b, d), scaled features (b, d, h, w)
        context, gamma = self.gate(x)
        return context, F.relu(x + x * rearrange(gamma, "b d -> b d 1 1"))  # x >= 0 here: the relu is mmseg's


def presence(masks, num_classes):
    """The SE-loss target: (b, h, w) class maps -> (b, num_classes), 1 where the class occurs in the map (void,
    255, is no class), like mmseg's ``_convert_to_onehot_labels``."""
    classes = torch.arange(num_classes, device=masks.device)
    return (rearrange(masks, "b h w -> b 1 (h w)") == classes[:, None]).any(-1).float()


class EncHead(nn.Module):
    """3x3 Conv-BN-ReLU bottleneck on the last selected level (C5), optional lateral fusion of the others, the
    Context Encoding Module, dropout and the 1x1 classifier. With ``use_se_loss``, ``se_layer`` predicts from the
    context vector which classes are present, trained by ``losses`` with binary cross-entropy (``se_weight``)."""

    def __init__(self, in_channels=(512, 1024, 2048), channels=512, num_classes=21, num_codes=32, use_se_loss=True,
                 add_lateral=False, in_index=(1, 2, 3), dropout=0.1, se_weight=0.2, explicit=False):
        super().__init__()
        self.in_channels, self.in_index = tuple(in_channels), tuple(in_index)
        self.num_classes, self.use_se_loss, self.add_lateral, self.se_weight = (num_classes, use_se_loss,
                                                                                add_lateral, se_weight)
        self.bottleneck = ConvBNReLU(self.in_channels[-1], channels, 3)
        if add_lateral:
            self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in self.in_channels[:-1])
            self.fusion = ConvBNReLU(len(self.in_channels) * channels, channels, 3)
        self.enc_module = EncModule(channels, num_codes, explicit)
        self.cls = classifier(channels, num_classes, dropout)
        if use_se_loss:
            self.se_layer = nn.Linear(channels, num_classes)

    def fuse(self, features):
        """The features the module encodes: the bottleneck on C5, fused with the lateral levels if asked."""
        levels = select(features, self.in_index, self.in_channels)  # checked
        x = self.bottleneck(levels[-1])  # (b, channels, h, w)
        if self.add_lateral:
            laterals = [resize(conv(f), x.shape[-2:]) for conv, f in zip(self.lateral_convs, levels)]
            x = self.fusion(torch.cat([x, *laterals], dim=1))
        return x

    def forward(self, features):
        return self.cls(self.enc_module(self.fuse(features))[1])  # (b, num_classes, h, w)

    def presence_logits(self, features):
        """The SE branch: one logit per class, "is it in the image?" (b, num_classes)."""
        return self.se_layer(self.enc_module(self.fuse(features))[0])

    def losses(self, features, masks):
        """Cross-entropy of the logits and, with ``use_se_loss``, ``se_weight`` x the binary cross-entropy of the
        presence logits against the classes present in each mask (mmseg's loss_se_decode, use_sigmoid=True)."""
        context, x = self.enc_module(self.fuse(features))
        losses = {"ce": seg_loss(resize(self.cls(x), masks.shape[-2:]), masks)}
        if self.use_se_loss:
            target = presence(masks, self.num_classes)
            losses["se"] = self.se_weight * F.binary_cross_entropy_with_logits(self.se_layer(context), target)
        return losses

    def assignment_maps(self, features):
        """The encoding layer's soft assignment of every position to each codeword, (b, num_codes, h, w)."""
        x = self.fuse(features)
        assignment = self.enc_module.encoding[0].assignment(self.enc_module.encoding_project(x))  # (b, n, k)
        return rearrange(assignment, "b (h w) k -> b k h w", h=x.shape[-2])
