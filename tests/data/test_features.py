import errno
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from seglab.data import features as fc
from seglab.data.voc import split_files


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
    files = split_files("train", 64)
    split = files.load(progress=False)
    first = fc.cached(Probe(), files, flip=True, progress=True)
    assert "computed" in capsys.readouterr().out
    assert len(first) == 2 * len(split) and first.flipped.sum() == len(split)
    assert first.channels == [2, 2, 2, 2] and first.levels[0].dtype == torch.float16
    again = fc.cached(Probe(), files, flip=True, progress=True)
    assert "loaded" in capsys.readouterr().out
    assert torch.equal(again.levels[3], first.levels[3]) and torch.equal(again.masks, first.masks)
    k = len(split)  # the first mirrored sample: its mask is the first image's mask, mirrored on the canvas
    assert torch.equal(first.masks[k], split.masks[0].flip(-1))
    h, w = split.sizes[0].tolist()
    assert first.boxes[k].tolist() == [0, 64 - w, h, w] and first.boxes[0].tolist() == [0, 0, h, w]
    assert not list((fc.cache_dir() / "features").glob(".*.tmp")), "a temporary file was left behind"


def test_stale_and_corrupt_caches_are_said_and_rebuilt(devkit, capsys):
    files = split_files("val", 64)
    split = files.load(progress=False)
    fc.cached(Probe(), files, progress=False)
    path = fc.cache_path(Probe(), files)
    changed = Probe()
    with torch.no_grad():
        changed.scale.fill_(2.0)  # other weights: the key's weight digest changes
    rebuilt = fc.cached(changed, files, progress=False)
    out = capsys.readouterr().out
    assert "stale" in out and "weights changed" in out
    assert rebuilt.levels[0].float().max() == 2 * fc.compute(Probe(), split, flip=False, progress=False).levels[0].float().max()
    fc.cached(Probe(), files, progress=False)  # back to Probe's features
    stored = torch.load(path, weights_only=True)
    stored["levels"][0][0, 0, 0, 0] += 1  # damaged contents, the recorded digest unchanged
    torch.save(stored, path)
    fc.cached(Probe(), files, progress=False)
    assert "corrupt" in capsys.readouterr().out
    path.write_bytes(path.read_bytes()[:100])  # truncated
    again = fc.cached(Probe(), files, progress=False)
    assert "does not load" in capsys.readouterr().out and len(again) == len(split)


def test_the_cache_keeps_the_channel_statistics_of_its_features(devkit, capsys):
    """The per-channel statistics travel with the features: a loaded set has exactly ``channel_stats`` of its levels
    (so reading them gives the same standardized features as computing them), and a damaged statistic is caught."""
    files = split_files("val", 64)
    built = fc.cached(Probe(), files, progress=False)
    loaded = fc.cached(Probe(), files, progress=False)
    for got in (built.stats, loaded.stats):
        assert len(got) == len(loaded.levels)
        for (mean, std), (want_mean, want_std) in zip(got, fc.channel_stats(loaded)):
            assert torch.equal(mean, want_mean) and torch.equal(std, want_std)
    assert fc.standardized(loaded, loaded.stats).stats is None  # standardized features are not those of the stats
    path = fc.cache_path(Probe(), files)
    stored = torch.load(path, weights_only=True)
    stored["stats"][0][1][0] += 1  # a damaged standard deviation, the recorded digest unchanged
    torch.save(stored, path)
    fc.cached(Probe(), files, progress=False)
    assert "corrupt" in capsys.readouterr().out


def test_stale_cache_names_what_changed(devkit, capsys):
    files = split_files("val", 64)
    fc.cached(Probe(), files, progress=False)
    fc.cached(Probe(), files, flip=True, progress=False)
    out = capsys.readouterr().out
    assert "stale" in out and "flip" in out


def test_an_interrupted_write_leaves_no_cache(devkit, monkeypatch):
    files = split_files("val", 64)

    def interrupted(payload, file):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(fc.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fc.cached(Probe(), files, progress=False)
    folder = fc.cache_dir() / "features"
    assert not any(folder.iterdir()), "an interrupted write must leave neither a cache file nor a temporary one"


def test_crops_cut_every_level_and_the_mask_at_the_same_place(devkit):
    files = split_files("train", 64)
    features = fc.cached(Probe(), files, flip=True, progress=False)
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


def test_an_edited_mask_makes_the_cache_stale(devkit, capsys):
    """The key holds the files' sizes and modification times: edited masks with the same ids are not trained on
    from the old cache."""
    files = split_files("val", 64)
    fc.cached(Probe(), files, progress=False)
    mask = devkit / "VOC2012" / "SegmentationClass" / f"{files.ids[0]}.png"
    data = mask.read_bytes()
    mask.write_bytes(data)  # the same bytes, written again: a new modification time
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    fc.cached(Probe(), split_files("val", 64), progress=False)
    out = capsys.readouterr().out
    assert "stale" in out and "files changed" in out


def test_an_unwritable_cache_is_said_before_computing(devkit, monkeypatch):
    files = split_files("val", 64)
    computed = []
    monkeypatch.setattr(fc, "compute", lambda *a, **k: computed.append(1))
    (fc.cache_dir()).mkdir(parents=True, exist_ok=True)
    (fc.cache_dir() / "features").write_text("a file where the folder should be")
    with pytest.raises(OSError, match="not writable.*SEGLAB_CACHE"):
        fc.cached(Probe(), files, progress=False)
    assert not computed, "the features were computed before the cache folder was checked"


def test_a_full_disk_is_said_and_leaves_no_temporary_file(devkit, monkeypatch):
    files = split_files("val", 64)

    def full(payload, file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fc.torch, "save", full)
    with pytest.raises(OSError, match="feature cache .* failed .*No space left.*SEGLAB_CACHE"):
        fc.cached(Probe(), files, progress=False)
    assert not any((fc.cache_dir() / "features").iterdir())


def test_orphan_temporary_files_of_dead_processes_are_removed(devkit):
    files = split_files("val", 64)
    folder = fc.cache_dir() / "features"
    folder.mkdir(parents=True)
    path = fc.cache_path(Probe(), files)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphan = folder / f".{path.name}.{dead}.tmp"
    orphan.write_bytes(b"left by a killed process")
    fc.cached(Probe(), files, progress=False)
    assert not orphan.exists() and path.is_file()


def test_features_are_built_at_the_fixed_thread_count(devkit):
    """The cache's bytes depend on the threads that build it (the CPU kernels split their sums by thread), so every
    build runs at ``BUILD_THREADS`` whatever the process runs at, and gives the process its own count back."""
    seen = []

    class Counting(Probe):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return super().forward(x)

    split = split_files("val", 64).load(progress=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1 if fc.BUILD_THREADS != 1 else 3)
    try:
        running = torch.get_num_threads()
        fc.compute(Counting(), split, flip=False, progress=False)
        assert set(seen) == {fc.BUILD_THREADS}
        assert torch.get_num_threads() == running
    finally:
        torch.set_num_threads(before)
