import json

from seglab import mode, results
from seglab.profile import Profile


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
    assert saved["version"].startswith("seglab ")
    rows = results.comparison_table(results.load_all("quick"))
    assert rows[0]["head"] == "FCN" and rows[0]["GFLOPs"] == 2.0 and rows[0]["mIoU (%)"] == 25.0
    assert results.load_all("brief") == []


def test_comparison_frame_keeps_the_chapters_up_to_the_current_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path))
    p = Profile(params=10, flops=10, activation_bytes=1, latency_ms=1.0, device="cpu")
    for chapter, head in ((2, "FCN"), (3, "PSPNet"), (9, "PointRend")):
        results.save(results.record(head, chapter=chapter, config={}, profile=p,
                                    metrics={"miou": 0.1, "pixel_acc": 0.5, "iou": [], "images": 1}, mode=mode.quick(),
                                    pretrained=False, history={"time": [1.0], "loss": [1.0]}, seed=0))
    assert list(results.comparison_frame("quick", up_to=3).index) == ["FCN", "PSPNet"]
    assert list(results.comparison_frame("quick").index) == ["FCN", "PSPNet", "PointRend"]
