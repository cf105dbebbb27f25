# Generated from chapters/09_pointrend.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""PointRend (Kirillov et al., CVPR 2020) for semantic segmentation, configured as mmsegmentation's
``pointrend_r50``: a Semantic FPN coarse head, and a point head that re-predicts the most uncertain points."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from seglab.nn.blocks import resize
from seglab.heads.fpn import FPN, FPNHead
from seglab.nn.losses import seg_loss
from seglab.data.voc import IGNORE


def uncertainty(logits):
    """(b, k, ...) -> (b, ...): the second-largest logit minus the largest. Never positive; the closer to 0,
    the closer the top two classes, the more uncertain the point."""
    top2 = logits.topk(2, dim=1).values  # (b, 2, ...)
    return top2[:, 1] - top2[:, 0]


def point_sample(maps, points, mode="bilinear"):
    """The values of ``maps`` (b, c, h, w) at ``points`` (b, n, 2), given as (x, y) in [0, 1] image coordinates,
    -> (b, c, n). ``align_corners=False``: (0, 0) is the outer corner of the top-left pixel, whose centre is at
    (0.5 / w, 0.5 / h)."""
    grid = rearrange(2 * points - 1, "b n xy -> b n 1 xy")  # grid_sample wants [-1, 1]
    return rearrange(F.grid_sample(maps, grid, mode=mode, align_corners=False), "b c n 1 -> b c n")


class PointHead(nn.Module):
    """A shared MLP over points (1x1 ``Conv1d`` layers with ReLU): it reads the fine-grained features of each point
    concatenated with the coarse prediction there, and, with ``coarse_pred_each_layer``, concatenates the coarse
    prediction again after every layer. A last ``Conv1d`` gives the point's class logits."""

    def __init__(self, in_channels=256, channels=256, num_classes=21, num_fcs=3, coarse_pred_each_layer=True):
        super().__init__()
        self.coarse_pred_each_layer = coarse_pred_each_layer
        self.fcs = nn.ModuleList()
        c_in = in_channels + num_classes
        for _ in range(num_fcs):
            self.fcs.append(nn.Sequential(nn.Conv1d(c_in, channels, 1), nn.ReLU()))
            c_in = channels + (num_classes if coarse_pred_each_layer else 0)
        self.fc_seg = nn.Conv1d(c_in, num_classes, 1)
        for fc in self.fcs:  # mmseg's initialisation: Kaiming for the MLP (ConvModule), small normal for fc_seg
            nn.init.kaiming_normal_(fc[0].weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc[0].bias)
        nn.init.normal_(self.fc_seg.weight, std=0.01)
        nn.init.zeros_(self.fc_seg.bias)

    def forward(self, fine, coarse):  # (b, c, n) fine-grained features and (b, k, n) coarse logits at n points
        x = torch.cat([fine, coarse], dim=1)  # (b, c + k, n)
        for fc in self.fcs:
            x = fc(x)  # (b, channels, n)
            if self.coarse_pred_each_layer:
                x = torch.cat([x, coarse], dim=1)  # (b, channels + k, n)
        return self.fc_seg(x)  # (b, k, n)


class PointRend(nn.Module):
    """Semantic FPN (neck + FPN head) as the coarse head, and a ``PointHead`` on the finest FPN level.

    ``forward(features)``: in training mode, the coarse logits at stride 4 (training calls ``losses``, which needs
    the masks); in eval mode, the coarse logits refined by ``subdivision_steps`` rounds of
    2x upsampling and re-predicting the ``subdivision_points`` most uncertain points."""

    def __init__(self, in_channels=(256, 512, 1024, 2048), neck_channels=256, channels=128, point_channels=256,
                 num_classes=21, num_fcs=3, dropout=0.0, feature_strides=(4, 8, 16, 32), train_points=2048,
                 oversample_ratio=3, importance_ratio=0.75, subdivision_steps=2, subdivision_points=8196,
                 scale_factor=2):
        super().__init__()
        self.neck = FPN(in_channels, neck_channels)
        self.coarse_head = FPNHead((neck_channels,) * len(in_channels), channels, feature_strides, num_classes,
                                   dropout)
        self.point_head = PointHead(neck_channels, point_channels, num_classes, num_fcs)
        self.train_points, self.oversample_ratio, self.importance_ratio = train_points, oversample_ratio, importance_ratio
        self.subdivision_steps, self.subdivision_points, self.scale_factor = (subdivision_steps, subdivision_points,
                                                                              scale_factor)

    def coarse(self, features):
        """(fine, coarse): the finest FPN level (b, neck_channels, H/4, W/4) and the coarse logits (b, k, H/4, W/4)."""
        pyramid = self.neck(features)
        return pyramid[0], self.coarse_head(pyramid)

    def forward(self, features):
        fine, coarse = self.coarse(features)
        return coarse if self.training else self.subdivide(fine, coarse)

    def subdivide(self, fine, coarse, trace=None):
        """Inference: upsample 2x, re-predict the most uncertain points, write them back; ``subdivision_steps``
        times. ``trace``, if a list, receives (points (b, n, 2), logits after the step) for each step."""
        logits = coarse
        for _ in range(self.subdivision_steps):
            logits = F.interpolate(logits, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
            b, k, h, w = logits.shape
            n = min(self.subdivision_points, h * w)
            index = uncertainty(logits).flatten(1).topk(n, dim=1).indices  # (b, n) cells, most uncertain first
            points = torch.stack([(index % w + 0.5) / w, (index // w + 0.5) / h], dim=-1)  # (b, n, 2) cell centres
            point_logits = self.point_head(point_sample(fine, points), point_sample(coarse, points))  # (b, k, n)
            flat = rearrange(logits, "b k h w -> b k (h w)")
            flat = flat.scatter(2, index[:, None].expand(-1, k, -1), point_logits.to(flat.dtype))
            logits = rearrange(flat, "b k (h w) -> b k h w", h=h)
            if trace is not None:
                trace.append((points, logits))
        return logits

    def training_points(self, coarse):
        """Training: ``oversample_ratio`` x ``train_points`` uniform random candidates; the ``importance_ratio``
        most uncertain of them (uncertainty of the *interpolated* logits), and the rest uniform random. (b, n, 2)"""
        b, n = coarse.shape[0], self.train_points
        candidates = torch.rand(b, n * self.oversample_ratio, 2, device=coarse.device)
        important = int(self.importance_ratio * n)
        index = uncertainty(point_sample(coarse, candidates)).topk(important, dim=1).indices  # (b, important)
        chosen = torch.gather(candidates, 1, index[..., None].expand(-1, -1, 2))  # (b, important, 2)
        return torch.cat([chosen, torch.rand(b, n - important, 2, device=coarse.device)], dim=1)

    def point_loss(self, fine, coarse, masks):
        """Cross-entropy of the point head at training points; labels are the masks' nearest pixels (255 ignored)."""
        with torch.no_grad():
            points = self.training_points(coarse)
        point_logits = self.point_head(point_sample(fine, points), point_sample(coarse, points))  # (b, k, n)
        labels = point_sample(masks[:, None].float(), points, mode="nearest")[:, 0].long()  # (b, n)
        if not (labels != IGNORE).any():  # every point on void: nothing to learn, and no NaN
            return point_logits.sum() * 0
        return seg_loss(point_logits, labels)

    def losses(self, features, masks):
        """Training losses by name (``seglab.model.head_losses`` calls this instead of the plain cross-entropy): the
        coarse logits' cross-entropy on the whole image, and the point head's at the training points."""
        fine, coarse = self.coarse(features)
        return {"coarse": seg_loss(resize(coarse, masks.shape[-2:]), masks),
                "points": self.point_loss(fine, coarse, masks)}
