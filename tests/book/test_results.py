import json
import re
import subprocess
from importlib import metadata

from seglab import mode
from seglab.book import comparison, results
from seglab.book.profile import Profile


def test_record_round_trip_carries_what_a_rerun_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path))
    p = Profile(params=10, flops=2_000_000_000, activation_bytes=2**20, latency_ms=1.5, device="cpu")
    rec = results.record("FCN", chapter=2, config={"channels": 8}, profile=p,
                         metrics={"miou": 0.25, "pixel_acc": 0.7, "iou": [0.25], "images": 4}, mode=mode.quick(),
                         pretrained=False, history={"time": [1.0, 2.0], "loss": [3.0, 2.0]}, seed=7)
    path = results.save(rec, name="fcn")
    assert path == tmp_path / "fcn.quick.json"
    saved = json.loads(path.read_text())
    for key in ("head", "config", "profile", "miou", "device", "pretrained", "seed", "version", "mode"):
        assert key in saved
    assert {"crop", "iters", "batch", "backbone"} <= set(saved["mode"])
    assert re.match(r"seglab \d+\.\d+\.\d+ @ [0-9a-f]{7}", saved["version"]), saved["version"]  # the commit
    rows = comparison.rows("quick")
    assert rows[0]["head"] == "FCN" and rows[0]["GFLOPs"] == 2.0 and rows[0]["mIoU (%)"] == 25.0
    assert rows[0]["seeds"] == 1 and rows[0]["± sd"] is None and rows[0]["latency (ms)"] is None  # no bench table
    assert results.load_all("brief") == []


def test_comparison_frame_keeps_the_chapters_up_to_the_current_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path))
    p = Profile(params=10, flops=10, activation_bytes=1, latency_ms=1.0, device="cpu")
    for chapter, head in ((2, "FCN"), (3, "PSPNet"), (9, "PointRend")):
        results.save(results.record(head, chapter=chapter, config={}, profile=p,
                                    metrics={"miou": 0.1, "pixel_acc": 0.5, "iou": [], "images": 1}, mode=mode.quick(),
                                    pretrained=False, history={"time": [1.0], "loss": [1.0]}, seed=0))
    assert list(comparison.frame("quick", up_to=3).index) == ["FCN", "PSPNet"]
    assert list(comparison.frame("quick").index) == ["FCN", "PSPNet", "PointRend"]


def test_code_version_says_when_the_commit_is_unknown(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(metadata, "distribution", not_installed)
    assert results.code_version().endswith("@ unknown commit (not a git checkout)")


def test_a_failed_weight_load_reaches_the_record_as_not_pretrained(tmp_path, monkeypatch):
    import warnings

    from seglab import backbones
    from seglab.backbones import resnet as bb
    monkeypatch.setitem(bb.WEIGHTS, "resnet18", (tmp_path / "absent-12345678.pth").as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = backbones.create("resnet18", pretrained=True)
    p = Profile(params=1, flops=1, activation_bytes=1, latency_ms=1.0, device="cpu")
    rec = results.record("FCN", chapter=2, config={}, profile=p, metrics={"miou": 0.1, "pixel_acc": 0.5, "iou": [],
                         "images": 1}, mode=mode.quick(), pretrained=net.pretrained,
                         history={"time": [1.0], "loss": [1.0]}, seed=0)
    assert rec["pretrained"] is False


def test_an_unreadable_record_is_named_and_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path))
    good = {"head": "FCN", "chapter": 2, "mode": {"name": "quick"}, "miou": 0.4}
    (tmp_path / "fcn.quick.json").write_text(json.dumps(good))
    (tmp_path / "pspnet.quick.json").write_text(json.dumps(good)[:20])  # truncated by a failed write
    (tmp_path / "odd.quick.json").write_text("[1, 2]")  # JSON, but not a record
    import pytest
    with pytest.warns(UserWarning) as caught:
        assert results.load_all("quick") == [good]
    said = " ".join(str(w.message) for w in caught)
    assert "odd.quick.json" in said and "pspnet.quick.json" in said and "re-run its chapter" in said
