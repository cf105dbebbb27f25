"""The segmentor: backbone -> decode head (-> optional auxiliary head), logits resized to the image."""

from torch import nn

from seglab.nn.blocks import resize
from seglab.nn.losses import seg_loss


def head_losses(head, features, masks):
    """A head's training losses, by name. A head that trains with more than its logits' cross-entropy (PointRend's
    point loss, EncNet's SE-loss, DANet's extra heads) defines ``losses(features, masks)`` returning such a dict;
    any other head is trained with the cross-entropy of its logits resized to the masks."""
    if hasattr(head, "losses"):
        return head.losses(features, masks)
    return {"ce": seg_loss(resize(head(features), masks.shape[-2:]), masks)}


class Segmentor(nn.Module):
    """``forward(images)`` gives logits (b, classes, H, W) at the image size.

    Heads follow one contract: they take the backbone's list of feature maps [C2, C3, C4, C5] and return logits
    at their own resolution; resizing to the image happens here, once."""

    def __init__(self, backbone, head, aux_head=None, aux_weight=0.4):
        super().__init__()
        self.backbone, self.head, self.aux_head, self.aux_weight = backbone, head, aux_head, aux_weight

    def forward(self, images):  # (b, 3, H, W)
        return resize(self.head(self.backbone(self.check(images))), images.shape[-2:])

    def check(self, images):
        """Refuse inputs the backbone cannot take, saying what was expected."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Images must be (batch, 3, height, width), got {tuple(images.shape)}.")
        stride = getattr(self.backbone, "output_stride", 1)
        if min(images.shape[-2:]) < stride:
            raise ValueError(f"The image is {tuple(images.shape[-2:])} pixels, smaller than the backbone's output "
                             f"stride {stride}: it would vanish before the head. Use images of at least "
                             f"{stride}x{stride} (in practice much larger).")
        return images

    def losses(self, images, masks):
        """Training losses by name: the head's (see ``head_losses``) and ``aux_weight`` times the auxiliary head's."""
        if masks.shape[-2:] != images.shape[-2:] or masks.shape[0] != images.shape[0]:
            raise ValueError(f"Masks {tuple(masks.shape)} do not match images {tuple(images.shape)}.")
        features = self.backbone(self.check(images))
        losses = head_losses(self.head, features, masks)
        if self.aux_head is not None:
            losses["aux"] = self.aux_weight * seg_loss(resize(self.aux_head(features), images.shape[-2:]), masks)
        return losses

    def loss(self, images, masks):
        """The total training loss."""
        return sum(self.losses(images, masks).values())


def auxiliary_head(backbone, num_classes):
    """The FCN auxiliary head of mmsegmentation's configs: one 3x3 conv on C4 (256 channels at ResNet-50 width)."""
    from seglab.heads.fcn import FCNHead
    in_channels = backbone.channels[2]
    return FCNHead(in_channels=in_channels, channels=in_channels // 4, num_classes=num_classes, num_convs=1,
                   concat_input=False, in_index=2)
