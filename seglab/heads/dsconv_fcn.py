# Generated from chapters/08_dsconv_fcn.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.


"""Depthwise-separable FCN head (Fast-SCNN's classifier), configured as mmsegmentation's DepthwiseSeparableFCNHead."""

from torch import nn

from seglab.nn.blocks import DepthwiseSeparableConv
from seglab.heads.fcn import FCNHead


def dsconv(in_channels, out_channels, kernel_size=3, dw_relu=False):
    """Depthwise kxk Conv-BN(-ReLU) then pointwise 1x1 Conv-BN-ReLU. Without ``dw_relu`` the depthwise half stays
    linear, as in mmsegmentation's head (``dw_act_cfg=None``)."""
    block = DepthwiseSeparableConv(in_channels, out_channels, kernel_size)  # [depthwise CBR, pointwise CBR]
    if not dw_relu:
        block[0][2] = nn.Identity()  # drop the depthwise ReLU; Identity keeps the block's indexing
    return block


class DSConvFCNHead(FCNHead):
    """The FCN head with every kxk Conv-BN-ReLU (``convs`` and ``conv_cat``) replaced by a depthwise-separable conv;
    the 1x1 classifier and the forward pass are FCN's."""

    def __init__(self, in_channels=2048, channels=512, num_classes=21, num_convs=2, kernel_size=3,
                 concat_input=True, in_index=-1, dropout=0.1, dw_relu=False):
        # Like mmsegmentation: build the FCN head, then overwrite its kxk blocks (a DSConv has no dilation).
        super().__init__(in_channels, channels, num_classes, num_convs, kernel_size, concat_input,
                         in_index=in_index, dropout=dropout)
        for i in range(num_convs):
            self.convs[i] = dsconv(in_channels if i == 0 else channels, channels, kernel_size, dw_relu)
        if concat_input:
            self.conv_cat = dsconv(in_channels + channels, channels, kernel_size, dw_relu)
