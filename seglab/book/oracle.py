# Generated from chapters/02_fcn.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""The stride oracle of the FCN chapter: the true mask's one-hot encoding average-pooled at a stride, upsampled
bilinearly, arg max. The best that pooling the truth at that stride and upsampling it can give."""

import torch
import torch.nn.functional as F

from seglab.metrics import confusion_matrix, scores
from seglab.data.voc import CLASSES, IGNORE


def oracle(mask, stride):
    """The stride oracle's prediction for one true mask: (h, w) int64 -> (h, w) int64."""
    present = mask.unique()
    present = present[present != IGNORE]  # only these classes can win the arg max
    onehot = (mask[None] == present[:, None, None]).float()  # (k, h, w), void pixels vote for nothing
    coarse = F.avg_pool2d(onehot[None], stride, ceil_mode=True)  # (1, k, h/s, w/s)
    fine = F.interpolate(coarse, scale_factor=stride, mode="bilinear", align_corners=False)
    return present[fine[0, :, : mask.shape[0], : mask.shape[1]].max(0).indices]


def stride_oracle(split, stride, num_classes=len(CLASSES)):
    """mIoU of the stride oracle over every image of ``split``."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(len(split)):
        mask = split[i][1]  # (h, w) int64, without the canvas padding
        confusion += confusion_matrix(oracle(mask, stride), mask, num_classes)
    return scores(confusion)["miou"]
