"""Segmentation metrics from a confusion matrix; pixels labelled 255 (void) are left out everywhere."""

import numbers

import torch
import torch.nn.functional as F

from seglab.data.voc import IGNORE


def confusion_matrix(pred, target, num_classes, ignore=IGNORE):
    """(num_classes, num_classes) counts: row = true class, column = predicted class, void pixels dropped. A
    prediction or a (non-void) label outside 0..num_classes-1 is refused: it would be counted in a wrong cell."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if pred.shape != target.shape:
        raise ValueError(f"Predictions {tuple(pred.shape)} and targets {tuple(target.shape)} must have one shape.")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError(f"Predictions and targets must be integer class maps, got {pred.dtype} and {target.dtype}; "
                         "take the class of each pixel first (logits.max(1).indices).")
    keep = target != ignore
    target, pred = target[keep].long(), pred[keep].long()
    if pred.numel():
        low, high = torch.aminmax(pred)
        if low < 0 or high >= num_classes:
            raise ValueError(f"Predicted classes range over {int(low)}..{int(high)}, outside 0..{num_classes - 1} "
                             f"for num_classes={num_classes}: the head predicts another number of classes than it is "
                             f"scored with (build it with num_classes={num_classes}, or score it with its own).")
        low, high = torch.aminmax(target)
        if low < 0 or high >= num_classes:
            raise ValueError(f"Target labels range over {int(low)}..{int(high)} (void {ignore} left out), outside "
                             f"0..{num_classes - 1} for num_classes={num_classes}: the masks are of another label set.")
    index = target * num_classes + pred
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def scores(confusion):
    """mIoU, per-class IoU and pixel accuracy. A class absent from both truth and prediction has IoU NaN and
    does not enter the mean (as in mmsegmentation)."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp / union  # NaN where union == 0
    total = confusion.sum()
    return {"miou": float(iou.nanmean()) if total else float("nan"),
            "iou": iou.tolist(),
            "pixel_acc": float(tp.sum() / total) if total else float("nan")}


# --- VOC's own scoring: predictions at each image's original size, against its original mask -----------------------

BOUNDARY_RADIUS = 5  # px: the band of ``boundary_miou``, chapter 7's trimap band


def boundary_rings(mask, radii):
    """(h, w) int64: index of the first radius r in ``radii`` (ascending, px) with the pixel within chessboard
    distance r of a label change, or len(radii) for pixels farther away than all of them. Void counts as a label,
    so its borders (VOC draws a void line around every object) are boundaries too."""
    m = mask[None, None]  # (1, 1, h, w)
    edge = torch.zeros(m.shape, dtype=torch.bool)
    horizontal, vertical = m[..., :, 1:] != m[..., :, :-1], m[..., 1:, :] != m[..., :-1, :]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    band, grown = edge.float(), 0
    ring = torch.full(mask.shape, len(radii))
    for i, r in enumerate(radii):  # grow the band from the previous radius: separable max pooling = dilation
        k = 2 * (r - grown) + 1
        band = F.max_pool2d(F.max_pool2d(band, (1, k), 1, (0, k // 2)), (k, 1), 1, (k // 2, 0))
        grown = r
        ring[(band[0, 0] > 0) & (ring == len(radii))] = i
    return ring


def boundary_band(mask, radius=BOUNDARY_RADIUS):
    """(h, w) bool: the pixels within ``radius`` px of a label change of ``mask``."""
    return boundary_rings(mask, (radius,)) == 0


class VOCScorer:
    """Scores predictions as the VOC benchmark does: each image's logits, on the padded canvas the head saw, are
    cropped to the image, resized (bilinear) to the image's original size, and compared with its original mask,
    void (255) left out; as mmsegmentation does (resize to the padded input, crop, resize to ``ori_shape``).

    ``masks`` are the original masks (uint8 (H, W) each, in the order of the val samples); ``bands`` a list beside
    them where each image's boundary band is kept once computed (None entries until then). Accumulates the
    dataset-level confusion matrix, that of the pixels within ``BOUNDARY_RADIUS`` px of a class boundary, and each
    image's per-class true positives and unions (for paired bootstrap tests)."""

    def __init__(self, masks, num_classes=21, bands=None):
        self.masks, self.num_classes = masks, num_classes
        self.bands = [None] * len(masks) if bands is None else bands  # computed once, kept in a shared list
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.boundary = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.tp, self.union = [], []

    def add(self, k, logits, box):
        """Image ``k``: ``logits`` (classes, S, S) on its canvas, ``box`` (top, left, height, width) where the
        (shrunk) image sits on the canvas."""
        top, left, h, w = (int(v) for v in box)
        truth = self.masks[k].long()  # (H, W): VOC's mask as released
        crop = logits[None, :, top:top + h, left:left + w].float()  # (1, classes, h, w)
        pred = F.interpolate(crop, size=tuple(truth.shape), mode="bilinear", align_corners=False)[0].max(0).indices
        if self.bands[k] is None:
            self.bands[k] = boundary_band(truth)
        mine = confusion_matrix(pred, truth, self.num_classes)
        self.confusion += mine
        band = self.bands[k]
        self.boundary += confusion_matrix(pred[band], truth[band], self.num_classes)
        tp = mine.diag()
        self.tp.append(tp)
        self.union.append(mine.sum(0) + mine.sum(1) - tp)

    def result(self):
        """``scores`` of the whole images, plus ``confusion`` (21x21 ints), ``boundary_miou``, ``boundary_iou`` and
        ``per_image`` ({"tp", "union"}: (images, classes) int tensors)."""
        boundary = scores(self.boundary)
        return {**scores(self.confusion), "confusion": self.confusion.tolist(),
                "boundary_miou": boundary["miou"], "boundary_iou": boundary["iou"],
                "per_image": {"tp": torch.stack(self.tp), "union": torch.stack(self.union)}}
