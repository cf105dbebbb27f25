import pytest
import torch
from torch import nn

from seglab import features as fc
from seglab.voc import load_split


class Probe(nn.Module):
    """A stand-in backbone: levels at strides 4, 8, 16, 16 whose channel 0 holds the canvas row of each position
    and channel 1 its column, so a test can see where a crop came from."""

    name, output_stride, channels = "probe", 16, [2, 2, 2, 2]

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):  # (b, 3, S, S)
        b, _, size, _ = x.shape
        levels = []
        for stride in (4, 8, 16, 16):
            n = size // stride
            rows = (torch.arange(n) * stride).float().view(1, 1, n, 1).expand(b, 1, n, n)
            cols = (torch.arange(n) * stride).float().view(1, 1, 1, n).expand(b, 1, n, n)
            levels.append(self.scale * torch.cat([rows, cols], 1))
        return levels


def test_features_are_cached_and_reloaded_with_mirrors(devkit, capsys):
    split = load_split("train", 64, progress=False)
    first = fc.cached(Probe(), "train", split, flip=True, progress=True)
    assert "computed" in capsys.readouterr().out
    assert len(first) == 2 * len(split) and first.flipped.sum() == len(split)
    assert first.channels == [2, 2, 2, 2] and first.levels[0].dtype == torch.float16
    again = fc.cached(Probe(), "train", split, flip=True, progress=True)
    assert "loaded" in capsys.readouterr().out
    assert torch.equal(again.levels[3], first.levels[3]) and torch.equal(again.masks, first.masks)
    k = len(split)  # the first mirrored sample: its mask is the first image's mask, mirrored on the canvas
    assert torch.equal(first.masks[k], split.masks[0].flip(-1))
    h, w = split.sizes[0].tolist()
    assert first.boxes[k].tolist() == [0, 64 - w, h, w] and first.boxes[0].tolist() == [0, 0, h, w]
    assert not list((fc.cache_dir() / "features").glob(".*.tmp")), "a temporary file was left behind"


def test_stale_and_corrupt_caches_are_said_and_rebuilt(devkit, capsys):
    split = load_split("val", 64, progress=False)
    fc.cached(Probe(), "val", split, progress=False)
    path = fc.cache_path(Probe(), "val", split)
    changed = Probe()
    with torch.no_grad():
        changed.scale.fill_(2.0)  # other weights: the key's weight digest changes
    rebuilt = fc.cached(changed, "val", split, progress=False)
    out = capsys.readouterr().out
    assert "stale" in out and "weights changed" in out
    assert rebuilt.levels[0].float().max() == 2 * fc.compute(Probe(), split, flip=False, progress=False).levels[0].float().max()
    fc.cached(Probe(), "val", split, progress=False)  # back to Probe's features
    stored = torch.load(path, weights_only=True)
    stored["levels"][0][0, 0, 0, 0] += 1  # damaged contents, the recorded digest unchanged
    torch.save(stored, path)
    fc.cached(Probe(), "val", split, progress=False)
    assert "corrupt" in capsys.readouterr().out
    path.write_bytes(path.read_bytes()[:100])  # truncated
    again = fc.cached(Probe(), "val", split, progress=False)
    assert "does not load" in capsys.readouterr().out and len(again) == len(split)


def test_stale_cache_names_what_changed(devkit, capsys):
    split = load_split("val", 64, progress=False)
    fc.cached(Probe(), "val", split, progress=False)
    fc.cached(Probe(), "val", split, flip=True, progress=False)
    out = capsys.readouterr().out
    assert "stale" in out and "flip" in out


def test_an_interrupted_write_leaves_no_cache(devkit, monkeypatch):
    split = load_split("val", 64, progress=False)

    def interrupted(payload, path):
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(fc.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fc.cached(Probe(), "val", split, progress=False)
    folder = fc.cache_dir() / "features"
    assert not any(folder.iterdir()), "an interrupted write must leave neither a cache file nor a temporary one"


def test_crops_cut_every_level_and_the_mask_at_the_same_place(devkit):
    split = load_split("train", 64, progress=False)
    features = fc.cached(Probe(), "train", split, flip=True, progress=False)
    generator = torch.Generator().manual_seed(0)
    levels, masks = features.crops(torch.arange(len(features)), 48, generator)
    assert [tuple(level.shape[-2:]) for level in levels] == [(12, 12), (6, 6), (3, 3), (3, 3)]
    assert masks.shape == (len(features), 48, 48)
    for k in range(len(features)):
        y, x = int(levels[3][k, 0, 0, 0]), int(levels[3][k, 1, 0, 0])  # the crop's corner, read off C5
        assert y % 16 == 0 and x % 16 == 0
        assert levels[0][k, 0, 0, 0] == y and levels[0][k, 1, 0, 0] == x  # C2 starts at the same corner
        assert torch.equal(masks[k], features.masks[k, y:y + 48, x:x + 48].long())
    with pytest.raises(ValueError, match="multiple of 16"):
        features.crops(torch.arange(2), 24, generator)
