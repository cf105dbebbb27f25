import hashlib
import warnings

import pytest
import torch

from seglab import backbones
from seglab.backbones import resnet as bb


def torchvision_resnet_keys(depths, bottleneck):
    """Parameter and buffer names of torchvision's resnet18/resnet50 without ``fc``, written out independently."""
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var",
                                                    "num_batches_tracked")]
    convs = 3 if bottleneck else 2
    for stage, depth in enumerate(depths, start=1):
        for block in range(depth):
            prefix = f"layer{stage}.{block}"
            for c in range(1, convs + 1):
                keys.append(f"{prefix}.conv{c}.weight")
                keys += [f"{prefix}.bn{c}.{s}" for s in ("weight", "bias", "running_mean", "running_var",
                                                         "num_batches_tracked")]
            if block == 0 and (bottleneck or stage > 1):
                keys.append(f"{prefix}.downsample.0.weight")
                keys += [f"{prefix}.downsample.1.{s}" for s in ("weight", "bias", "running_mean", "running_var",
                                                                "num_batches_tracked")]
    return keys


@pytest.mark.parametrize("name,depths,bottleneck,params", [
    ("resnet18", (2, 2, 2, 2), False, 11_689_512 - 512 * 1000 - 1000),  # torchvision's count minus fc
    ("resnet50", (3, 4, 6, 3), True, 25_557_032 - 2048 * 1000 - 1000),
])
def test_state_dict_matches_torchvision_naming_and_size(name, depths, bottleneck, params):
    for stride in (8, 32):
        net = backbones.create(name, output_stride=stride)
        assert list(net.state_dict()) == torchvision_resnet_keys(depths, bottleneck)
        assert sum(p.numel() for p in net.parameters()) == params
    sd = backbones.create(name).state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    if bottleneck:
        assert sd["layer4.0.conv2.weight"].shape == (512, 512, 3, 3)
        assert sd["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
        assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    else:
        assert sd["layer4.0.downsample.0.weight"].shape == (512, 256, 1, 1)


@pytest.mark.parametrize("name,channels", [("resnet18", (64, 128, 256, 512)), ("resnet50", (256, 512, 1024, 2048))])
def test_feature_shapes_at_output_stride_8_and_32(name, channels):
    x = torch.zeros(1, 3, 64, 96)
    for stride, sizes in ((8, [(16, 24), (8, 12), (8, 12), (8, 12)]), (32, [(16, 24), (8, 12), (4, 6), (2, 3)])):
        net = backbones.create(name, output_stride=stride).eval()
        with torch.no_grad():
            features = net(x)
        assert [tuple(f.shape) for f in features] == [(1, c, *s) for c, s in zip(channels, sizes)]
        assert tuple(net.channels) == channels


def test_dilation_is_used_at_output_stride_8():
    net = backbones.create("resnet50", output_stride=8)
    # stage 3 at rate 2 and stage 4 at rate 4; each stage's first block at half the rate (torchvision, mmseg)
    assert [b.conv2.dilation[0] for b in net.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in net.layer4] == [2, 4, 4]
    assert net.layer4[0].conv2.stride == (1, 1)
    assert all(b.conv2.dilation == (1, 1) for b in backbones.create("resnet50", output_stride=32).layer4)
    with pytest.raises(ValueError, match="output_stride must be 8"):
        backbones.create("resnet18", output_stride=16)


def test_resnet18_dilates_only_the_first_conv_of_each_block_as_mmseg():
    net = backbones.create("resnet18", output_stride=8)
    assert [b.conv1.dilation[0] for b in (*net.layer3, *net.layer4)] == [1, 2, 2, 4]
    assert all(b.conv2.dilation == (1, 1) for b in (*net.layer3, *net.layer4))


def test_initialisation_is_torchvisions_for_the_backbone_and_mmsegs_for_the_classifier():
    torch.manual_seed(0)
    conv = backbones.create("resnet50").layer4[0].conv2.weight  # (512, 512, 3, 3): kaiming normal, fan-out
    assert abs(conv.std().item() - (2 / (512 * 9)) ** 0.5) < 0.002
    from seglab.nn.blocks import classifier
    cls = classifier(512, 21)[1]
    assert abs(cls.weight.std().item() - 0.01) < 0.002 and torch.all(cls.bias == 0)


def test_multi_grid_multiplies_the_last_stage_dilation():
    net = backbones.create("resnet50", output_stride=8, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation for b in net.layer4] == [(4, 4), (8, 8), (16, 16)]
    assert net.layer3[0].conv2.dilation == (1, 1) and net.layer3[1].conv2.dilation == (2, 2)
    with pytest.raises(ValueError, match="one rate per block"):
        backbones.create("resnet50", multi_grid=(1, 2))


def write_weights(tmp_path, name):
    """A state dict named like torchvision's (sha256 prefix in the name), with an fc to be dropped."""
    state = backbones.create(name).state_dict()
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    good = tmp_path / "srv" / f"{name}-{digest[:8]}.pth"
    good.parent.mkdir()
    raw.rename(good)
    return good


def test_pretrained_loads_through_torch_hub_into_torch_home(tmp_path, monkeypatch):
    path = write_weights(tmp_path, "resnet18")
    monkeypatch.setitem(bb.WEIGHTS, "resnet18", path.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    net = bb.resnet18(pretrained=True)
    assert net.pretrained is True
    assert torch.all(net.layer4[1].bn2.weight == 0.5)
    assert (tmp_path / "home" / "hub" / "checkpoints" / path.name).is_file()


def test_hash_mismatch_is_reported_and_falls_back(tmp_path, monkeypatch):
    path = write_weights(tmp_path, "resnet18")
    wrong = path.with_name("resnet18-00000000.pth")
    path.rename(wrong)
    monkeypatch.setitem(bb.WEIGHTS, "resnet18", wrong.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    with pytest.warns(bb.PretrainedWeightsUnavailable, match="sha256 does not match.*RANDOM initialisation"):
        net = bb.resnet18(pretrained=True)
    assert net.pretrained is False


def test_offline_fallback_is_visible(tmp_path, monkeypatch):
    monkeypatch.setitem(bb.WEIGHTS, "resnet18", (tmp_path / "absent-12345678.pth").as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    with pytest.warns(bb.PretrainedWeightsUnavailable, match="could not be loaded"):
        net = bb.resnet18(pretrained=True)
    assert net.pretrained is False


def test_a_stalled_download_times_out_and_falls_back(tmp_path, monkeypatch):
    import socket
    import time

    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    port = silent.getsockname()[1]
    monkeypatch.setitem(bb.WEIGHTS, "resnet18", f"http://127.0.0.1:{port}/resnet18-f37072fd.pth")
    monkeypatch.setattr(bb, "HUB_TIMEOUT", 1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    start = time.perf_counter()
    try:
        with pytest.warns(bb.PretrainedWeightsUnavailable, match="timed out.*RANDOM initialisation"):
            net = bb.resnet18(pretrained=True)
    finally:
        silent.close()
    assert net.pretrained is False and time.perf_counter() - start < 20
    assert socket.getdefaulttimeout() is None  # the process-wide default is restored


def test_a_corrupt_cached_file_is_named(tmp_path, monkeypatch):
    path = write_weights(tmp_path, "resnet18")
    monkeypatch.setitem(bb.WEIGHTS, "resnet18", path.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cached = tmp_path / "home" / "hub" / "checkpoints" / path.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.warns(bb.PretrainedWeightsUnavailable, match=f"cached file {cached} may be corrupt: delete it"):
        assert bb.resnet18(pretrained=True).pretrained is False


def test_weights_are_loaded_with_weights_only(tmp_path, monkeypatch):
    calls = {}

    def fake(url, **kwargs):
        calls.update(kwargs)
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb.resnet18(pretrained=True)
    assert calls["weights_only"] is True and calls["check_hash"] is True


def test_frozen_backbone_has_no_gradients_and_keeps_bn_in_eval():
    net = bb.resnet18(frozen=True)
    net.train()
    assert not any(p.requires_grad for p in net.parameters())
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = net.bn1.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, net.bn1.running_mean)
