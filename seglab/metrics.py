"""Segmentation metrics from a confusion matrix; pixels labelled 255 (void) are left out everywhere."""

import numbers

import torch

from seglab.voc import IGNORE


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
