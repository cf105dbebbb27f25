"""Segmentation metrics from a confusion matrix; pixels labelled 255 (void) are left out everywhere."""

import torch

from seglab.voc import IGNORE


def confusion_matrix(pred, target, num_classes, ignore=IGNORE):
    """(num_classes, num_classes) counts: row = true class, column = predicted class, void pixels dropped."""
    keep = target != ignore
    target, pred = target[keep].long(), pred[keep].long()
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
