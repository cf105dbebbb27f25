"""Building blocks the heads share: ``blocks`` (Conv-BN-ReLU, the classifier, the three input transforms),
``attention`` (scaled dot-product attention with named axes), ``losses`` (the segmentation loss)."""
