"""python -m seglab.book.compare: a reader's own head, checked against the contract, trained on the book's protocol with
several seeds, and ranked beside the book's records, which it never writes to."""

import json
import re
import sys

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from seglab import mode as modes  # noqa: E402
from seglab.book import chapter, compare, results  # noqa: E402
from seglab.book.profile import Profile  # noqa: E402
from seglab.heads.fcn import FCNHead  # noqa: E402

HEADS = '''
import torch
from torch import nn


class TinyHead(nn.Module):
    """A 1x1 conv on C5, then the classifier: the smallest head that keeps the contract."""

    def __init__(self, in_channels=320, channels=8, num_classes=21, levels=(24, 40, 112, 320), widths=[1]):
        super().__init__()
        self.levels, self.widths = levels, widths
        self.conv = nn.Conv2d(in_channels, channels, 1)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features):
        return self.cls(torch.relu(self.conv(features[-1])))


class ThreeClasses(TinyHead):
    def __init__(self, in_channels=320):
        super().__init__(in_channels=in_channels, num_classes=3)


class Flat(TinyHead):
    def forward(self, features):
        return super().forward(features).flatten(2)


class NotAHead:
    pass


def not_a_class():
    pass
'''


@pytest.fixture
def heads(tmp_path, monkeypatch):
    """Modules of the reader's own, in a folder on sys.path: compare_heads (heads good and bad) and compare_broken
    (raises on import). Forgotten by sys.modules afterwards."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "compare_heads.py").write_text(HEADS)
    (folder / "compare_broken.py").write_text("import torch\n\nraise RuntimeError('no GPU here, says the module')\n")
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in ("compare_heads", "compare_broken"):
        sys.modules.pop(name, None)


@pytest.fixture
def ci(devkit, tmp_path, monkeypatch):
    """ci mode on the tiny devkit, records and caches in temporary folders."""
    monkeypatch.setenv("SEGLAB_MODE", "ci")
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    return modes.current()


def test_load_class_checks_what_it_imports(heads):
    assert compare.load_class("compare_heads:TinyHead").__name__ == "TinyHead"
    with pytest.raises(compare.CompareError, match="not a subclass of torch.nn.Module"):
        compare.load_class("compare_heads:NotAHead")
    with pytest.raises(compare.CompareError, match="function, not a class"):
        compare.load_class("compare_heads:not_a_class")
    with pytest.raises(compare.CompareError, match=r"compare_heads has no 'Missing'.*Flat, ThreeClasses, TinyHead"):
        compare.load_class("compare_heads:Missing")
    with pytest.raises(compare.CompareError, match=r"Importing compare_broken .*failed: RuntimeError: no GPU here, "
                                                   r"says the module \(compare_broken.py, line 3\)"):
        compare.load_class("compare_broken:Head")
    with pytest.raises(compare.CompareError, match="No module named 'nowhere_to_be_found'"):
        compare.load_class("nowhere_to_be_found:Head")
    with pytest.raises(compare.CompareError, match="write module:Class"):
        compare.load_class("compare_heads.TinyHead")
    with pytest.raises(compare.CompareError, match="name the module instead, compare_heads:TinyHead"):
        compare.load_class("compare_heads.py:TinyHead")


def test_channel_placeholders_follow_the_backbone(heads):
    head_class = compare.load_class("compare_heads:TinyHead")
    lite0, resnet = [24, 40, 112, 320], [256, 512, 1024, 2048]
    given = {"in_channels": "C5", "levels": "levels", "widths": ["C2", 3], "channels": 8}
    assert compare.resolve_kwargs(given, lite0, head_class) == {
        "in_channels": 320, "levels": (24, 40, 112, 320), "widths": [24, 3], "channels": 8}  # tuple: its default is
    assert compare.resolve_kwargs({"in_channels": "C4", "levels": "levels"}, resnet, head_class) == {
        "in_channels": 1024, "levels": (256, 512, 1024, 2048)}
    assert compare.resolve_kwargs(None, lite0, head_class) == {}
    with pytest.raises(compare.CompareError, match="JSON object"):
        compare.resolve_kwargs([1, 2], lite0, head_class)
    with pytest.raises(compare.CompareError, match="--kwargs must be a JSON object"):
        compare.parse_kwargs("[64]")
    with pytest.raises(compare.CompareError, match="not JSON"):
        compare.parse_kwargs("{channels: 64}")


def test_check_contract_says_what_was_expected(heads):
    module = __import__("compare_heads")
    features = [torch.randn(2, c, s, s) for c, s in zip((24, 40, 112, 320), (16, 8, 4, 4))]
    assert compare.check_contract(module.TinyHead(), features) == (2, 21, 4, 4)
    with pytest.raises(compare.CompareError, match=r"shape \(2, 3, 4, 4\) in training mode: 3 channels, not one per "
                                                   r"class \(21\); expected .*\(2, 21, h, w\)"):
        compare.check_contract(module.ThreeClasses(), features)
    with pytest.raises(compare.CompareError, match="3-d tensor of shape .* not 4-d logits"):
        compare.check_contract(module.Flat(), features)
    with pytest.raises(compare.CompareError, match=r"failed on the protocol's features in training mode: "
                                                   r"RuntimeError: .*\[C2, C3, C4, C5\]"):
        compare.check_contract(module.TinyHead(in_channels=64), features)


def test_a_head_is_compared_with_the_books_records(heads, ci, tmp_path, capsys):
    # first, no records: the head's own numbers, and what to do
    out = compare.main(["compare_heads:TinyHead", "--kwargs", '{"in_channels": "C5", "levels": "levels"}',
                        "--seeds", "0", "1", "--save", str(tmp_path / "mine_saved")])
    printed = capsys.readouterr().out
    assert [r["seed"] for r in out["runs"]] == [0, 1] and out["config"]["in_channels"] == 320
    assert out["config"]["levels"] == (24, 40, 112, 320)
    assert re.search(r"TinyHead in ci mode \(full split\), 2 seed\(s\):\n  mIoU +\d+\.\d ± \d+\.\d% \(mean ± sd",
                     printed)
    assert "boundary mIoU" in printed and "parameters" in printed and "run the chapters first" in printed
    saved = sorted(p.name for p in (tmp_path / "mine_saved").iterdir())
    assert saved == ["tinyhead.seed0.ci-full.json", "tinyhead.seed1.ci-full.json"]
    rec = json.loads((tmp_path / "mine_saved" / saved[1]).read_text())
    assert rec["head"] == "TinyHead" and rec["seed"] == 1 and rec["data"] == out["runs"][1]["data"]
    assert {"miou", "boundary_miou", "per_image", "trained_profile"} <= rec.keys()
    assert not results.results_dir().exists()  # nothing went to the results folder

    # then beside a book's FCN record, in the same mode
    data = chapter.prepare(ci, progress=False)
    fcn = chapter.fit(FCNHead, data, progress=False, in_channels=320, channels=8)
    chapter.record(fcn, "FCN", chapter=2, profile=Profile(params=1, flops=1, activation_bytes=1, latency_ms=1.0,
                                                          device="cpu"), reference={})
    capsys.readouterr()
    out = compare.run(compare.load_class("compare_heads:TinyHead"), {"in_channels": "C5"}, seeds=[0, 1],
                      name="Tiny", data=data)
    printed = capsys.readouterr().out
    means = [r["mIoU (%)"] for r in out["rows"]]
    assert sorted(r["head"] for r in out["rows"]) == ["FCN", "Tiny"] and means == sorted(means, reverse=True)
    assert re.search(r"^->\s+\d Tiny ", printed, re.M) and re.search(r"^\s+\d FCN\s+2 ", printed, re.M)
    assert re.search(r"vs FCN \(the book's best, \d+\.\d% over 1 seed\(s\)\): [+-]\d+\.\d points, "
                     r"(a real difference|not told apart)", printed)
    assert out["tests"][0]["test"] is not None and out["paths"] == []
    assert sorted(p.name for p in results.results_dir().iterdir()) == ["fcn.ci-full.json"]  # only the book's


def test_a_head_that_breaks_the_contract_fails_before_training(heads, ci, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained a head that breaks the contract")

    monkeypatch.setattr(chapter, "fit", no_training)
    with pytest.raises(SystemExit, match=r"ThreeClasses returned logits of shape \(2, 3, \d+, \d+\).*3 channels, not "
                                         r"one per class \(21\)"):
        compare.main(["compare_heads:ThreeClasses", "--kwargs", '{"in_channels": "C5"}'])


def test_the_books_results_are_never_written(heads, tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "book" / "results").mkdir(parents=True)
    (checkout / "_toc.yml").write_text("root: intro\n")
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(chapter, "prepare", lambda *a, **k: pytest.fail("prepared the data before refusing"))
    for folder in (checkout / "book" / "results", checkout / "book" / "results" / "mine", tmp_path / "results"):
        with pytest.raises(SystemExit, match="results folder"):
            compare.main(["compare_heads:TinyHead", "--save", str(folder)])
    with pytest.raises(SystemExit, match="compare_broken"):
        compare.main(["compare_broken:Head"])
    with pytest.raises(SystemExit, match="given more than once"):
        compare.main(["compare_heads:TinyHead", "--seeds", "1", "1"])
    assert not any((checkout / "book" / "results").iterdir())
