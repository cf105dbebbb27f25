# Generated from chapters/15_danet.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""DANet's dual-attention head (Fu et al., CVPR 2019), configured as mmsegmentation's DAHead."""

import torch
from einops import rearrange
from torch import nn

from seglab.nn.attention import attend, attention_weights
from seglab.nn.blocks import ConvBNReLU, classifier, one_level, resize
from seglab.nn.losses import seg_loss


class PAM(nn.Module):
    """Position attention: each of the h*w positions attends to all h*w positions. Queries and keys are 1x1 convs
    to ``channels`` (mmseg's pam_channels), values a 1x1 conv to the input's width, all with bias; no 1/sqrt(d)
    scaling. The result, times ``gamma`` (a learned scalar that starts at 0), is added to the input."""

    def __init__(self, in_channels=512, channels=64, explicit=False):
        super().__init__()
        self.query = nn.Conv2d(in_channels, channels, 1)
        self.key = nn.Conv2d(in_channels, channels, 1)
        self.value = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.explicit = explicit

    def qkv(self, x):  # x (b, c, h, w)
        # contiguous: SDPA's lean CPU kernel needs unit stride along the feature axis
        q, k = (rearrange(proj(x), "b d h w -> b (h w) d").contiguous() for proj in (self.query, self.key))
        v = rearrange(self.value(x), "b c h w -> b (h w) c").contiguous()
        return q, k, v  # (b, hw, d), (b, hw, d), (b, hw, c)

    def forward(self, x):  # (b, c, h, w)
        q, k, v = self.qkv(x)
        out = attend(q, k, v, scale=1.0, explicit=self.explicit)  # (b, hw, c): softmax(q k^T) v
        return self.gamma * rearrange(out, "b (h w) c -> b c h w", h=x.shape[-2]) + x

    def weights(self, x):
        """The (b, hw, hw) attention map of ``x``: row n is where position n reads from."""
        q, k, _ = self.qkv(x)
        return attention_weights(q, k, scale=1.0)


def channel_weights(x):
    """CAM's (b, c, c) map as mmseg writes it: energy E = X X^T over positions, softmax_k(max_k E - E)."""
    t = rearrange(x, "b c h w -> b c (h w)")
    energy = torch.einsum("bcn,bkn->bck", t, t)  # (b, c, c)
    return torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)


class CAM(nn.Module):
    """Channel attention: each of the c channels, seen as an h*w vector, attends to all c channels (a c x c map),
    with no projections; the only parameter is ``gamma`` (starts at 0), which scales the result into a residual.
    softmax(max - E) = softmax(-E), so the SDPA form is attention with q = k = v = X and scale -1."""

    def __init__(self, explicit=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.explicit = explicit

    def forward(self, x):  # (b, c, h, w)
        t = rearrange(x, "b c h w -> b c (h w)")  # channels are the tokens, positions their features
        if self.explicit:
            out = torch.einsum("bck,bkn->bcn", channel_weights(x), t)  # (b, c, hw)
        else:
            out = attend(t, t, t, scale=-1.0)  # (b, c, hw)
        return self.gamma * rearrange(out, "b c (h w) -> b c h w", h=x.shape[-2]) + x


class DAHead(nn.Module):
    """Two branches on one level (C5), each a 3x3 Conv-BN-ReLU, an attention module and a 3x3 Conv-BN-ReLU:
    position attention (PAM) and channel attention (CAM). Their sum is classified. In training each branch also
    has its own classifier, and ``losses`` adds their cross-entropies, times ``branch_loss_weight`` (mmseg: 1)."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, pam_channels=64, in_index=-1, dropout=0.1,
                 branch_loss_weight=1.0, explicit=False):
        super().__init__()
        self.in_channels, self.in_index, self.branch_loss_weight = in_channels, in_index, branch_loss_weight
        self.pam_in_conv = ConvBNReLU(in_channels, channels, 3)
        self.pam = PAM(channels, pam_channels, explicit)
        self.pam_out_conv = ConvBNReLU(channels, channels, 3)
        self.pam_cls = classifier(channels, num_classes, dropout)  # training only: the PAM branch's own logits
        self.cam_in_conv = ConvBNReLU(in_channels, channels, 3)
        self.cam = CAM(explicit)
        self.cam_out_conv = ConvBNReLU(channels, channels, 3)
        self.cam_cls = classifier(channels, num_classes, dropout)  # training only: the CAM branch's own logits
        self.cls = classifier(channels, num_classes, dropout)

    def branches(self, features):
        x = one_level(features, self.in_index, self.in_channels)  # (b, in_channels, h, w), checked
        pam = self.pam_out_conv(self.pam(self.pam_in_conv(x)))  # (b, channels, h, w)
        cam = self.cam_out_conv(self.cam(self.cam_in_conv(x)))  # (b, channels, h, w)
        return pam, cam

    def forward(self, features):
        pam, cam = self.branches(features)
        return self.cls(pam + cam)  # (b, num_classes, h, w)

    def losses(self, features, masks):
        """Cross-entropy of the summed branches' logits ("pam_cam") and of each branch's own ("pam", "cam")."""
        pam, cam = self.branches(features)
        size, w = masks.shape[-2:], self.branch_loss_weight
        return {"pam_cam": seg_loss(resize(self.cls(pam + cam), size), masks),
                "pam": w * seg_loss(resize(self.pam_cls(pam), size), masks),
                "cam": w * seg_loss(resize(self.cam_cls(cam), size), masks)}

    def attention_maps(self, features):
        """(PAM's (b, hw, hw) map, CAM's (b, c, c) map) on ``features``, for explorers (call in eval mode)."""
        x = one_level(features, self.in_index, self.in_channels)
        return self.pam.weights(self.pam_in_conv(x)), channel_weights(self.cam_in_conv(x))
