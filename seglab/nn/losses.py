"""The loss every head trains with (heads with extra terms add their own, see ``seglab.model.head_losses``)."""

import torch.nn.functional as F

from seglab.data.voc import IGNORE


def seg_loss(logits, masks):
    """Pixel-wise cross-entropy; void pixels (255) contribute nothing, and the mean is over the other pixels
    (mmsegmentation's ``avg_non_ignore=True``; its older default divided by every pixel, void included)."""
    return F.cross_entropy(logits, masks, ignore_index=IGNORE)
