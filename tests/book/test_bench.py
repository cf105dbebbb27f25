"""The latency table: every head of the records timed in one process at two settings, written as one JSON file."""

import json
from pathlib import Path

import pytest
import torch

from seglab import mode
from seglab.book import bench

BOOK_RESULTS = Path(__file__).resolve().parents[2] / "book" / "results"
# The standard setting's levels, shrunk so that the reference-width heads run in milliseconds
SMALL_STANDARD = ((1, 256, 8, 8), (1, 512, 4, 4), (1, 1024, 4, 4), (1, 2048, 4, 4))


@pytest.fixture
def records(tmp_path, monkeypatch):
    """A results folder holding copies of the FCN and linear-probe records (quick mode); SEGLAB_RESULTS points to it."""
    folder = tmp_path / "results"
    folder.mkdir()
    for name in ("fcn", "linear"):
        (folder / f"{name}.quick.json").write_text((BOOK_RESULTS / f"{name}.quick.json").read_text())
    monkeypatch.setenv("SEGLAB_RESULTS", str(folder))
    monkeypatch.setenv("SEGLAB_MODE", "quick")
    monkeypatch.delenv("SEGLAB_SPLIT", raising=False)
    return folder


def test_table(records):
    path = bench.run(repeats=2, quick_check=True, threads=1, standard_shapes=SMALL_STANDARD, progress=False)
    assert path == records / "bench" / "bench.quick.json"
    table = json.loads(path.read_text())
    assert table["mode"] == mode.quick().as_dict() and table["threads"] == 1 and table["repeats"] == 2
    assert table["quick_check"] is True and table["device"] and table["version"].startswith("seglab")
    assert table["shapes"]["standard"] == [list(s) for s in SMALL_STANDARD]
    # the trained setting: Lite0's levels at output stride 16 for one 256-px image
    assert table["shapes"]["trained"] == [[1, 24, 64, 64], [1, 40, 32, 32], [1, 112, 16, 16], [1, 320, 16, 16]]
    assert list(table["heads"]) == ["Linear probe", "FCN"]  # chapter order
    for timed in table["heads"].values():
        assert set(timed) == {"standard", "trained"}
        for t in timed.values():
            assert set(t) == {"median_ms", "q25_ms", "q75_ms"}
            assert 0 < t["q25_ms"] <= t["median_ms"] <= t["q75_ms"]
    assert bench.load("quick") == table and bench.load("ci") is None
    assert bench.latency(table, "FCN", "trained") == table["heads"]["FCN"]["trained"]["median_ms"]
    assert bench.latency(table, "PSPNet") is None and bench.latency(None, "FCN") is None
    assert "Linear probe" in bench.format_table(table)


def test_threads_restored_and_heads_selected(records):
    before = torch.get_num_threads()
    bench.run(repeats=1, heads=["linear PROBE"], threads=1, quick_check=True, standard_shapes=SMALL_STANDARD,
              shapes_trained=((1, 320, 4, 4),), progress=False)
    assert torch.get_num_threads() == before
    assert list(bench.load("quick")["heads"]) == ["Linear probe"]
    with pytest.raises(ValueError, match="No quick-mode record of head"):
        bench.run(repeats=1, heads=["PSPNet"], quick_check=True, progress=False)


def test_standard_configuration():
    dsconv = json.loads((BOOK_RESULTS / "dsconv_fcn.quick.json").read_text())
    assert dsconv["config"]["reference"]["num_classes"] == 19  # Fast-SCNN's Cityscapes head
    assert bench.standard_config(dsconv) == {"channels": 512, "concat_input": True, "in_channels": 2048,
                                             "num_classes": 21, "num_convs": 2}
    lraspp = json.loads((BOOK_RESULTS / "lraspp.quick.json").read_text())
    standard = bench.standard_config(lraspp)
    assert standard["in_channels"] == (256, 512, 2048) and standard["in_index"] == (0, 1, 3)
    assert "shapes" not in standard and standard["pool_stride"] == (16, 20)
    assert bench.trained_config(lraspp)["branch_channels"] == (8, 8)  # lists back to tuples


def test_foreign_class_refused(records):
    evil = json.loads((records / "fcn.quick.json").read_text())
    evil["head"], evil["config"]["class"] = "Evil", "subprocess.Popen"
    (records / "evil.quick.json").write_text(json.dumps(evil))
    with pytest.raises(ValueError, match="seglab.heads"):
        bench.run(repeats=1, quick_check=True, standard_shapes=SMALL_STANDARD, progress=False)
    assert not (records / "bench").exists()  # refused before anything was timed or written


def test_ci_and_quick_check_never_in_book_results(tmp_path, monkeypatch):
    (tmp_path / "_toc.yml").write_text("")
    book = tmp_path / "book" / "results"
    book.mkdir(parents=True)
    monkeypatch.setenv("SEGLAB_RESULTS", str(book))
    monkeypatch.delenv("SEGLAB_SPLIT", raising=False)
    with pytest.raises(ValueError, match="ci-mode latency table"):
        bench.run(repeats=10, mode=mode.ci(), progress=False)
    with pytest.raises(ValueError, match="--quick-check table"):
        bench.run(repeats=1, quick_check=True, mode=mode.quick(), progress=False)
    assert not (book / "bench").exists()


def test_too_few_repeats_refused(records, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "3"])
    error = capsys.readouterr().err
    assert "--repeats 3 is too few" in error and "at least 10" in error and "--quick-check" in error
    with pytest.raises(ValueError, match="too few"):
        bench.run(repeats=3, progress=False)
    assert not (records / "bench").exists()


def test_cli_quick_check(records, capsys):
    bench.main(["--repeats", "1", "--quick-check", "--heads", "Linear probe", "--threads", "1"])
    out = capsys.readouterr().out
    assert "wrote bench.quick.json" in out and "Linear probe" in out
    table = bench.load("quick")
    assert table["shapes"]["standard"][-1] == [1, 2048, 64, 64]  # the real standard setting
    assert bench.latency(table, "Linear probe", "standard") > 0


def test_a_vit_head_is_timed_on_its_token_shapes(records):
    # an FCN record dressed as a ViT head's: profiled on token shapes, trained on the stride-16 taps
    rec = json.loads((records / "fcn.quick.json").read_text())
    rec.update(head="FCN on tokens", chapter=24, features="taps", profiled={"shapes": [[1, 2048, 4, 4]] * 4})
    (records / "fcn_tokens.quick.json").write_text(json.dumps(rec))
    table = json.loads(bench.run(repeats=1, quick_check=True, threads=1, standard_shapes=SMALL_STANDARD,
                                 progress=False).read_text())
    assert "shapes" not in table["heads"]["FCN"]
    assert table["heads"]["FCN on tokens"]["shapes"] == {
        "standard": [[1, 2048, 4, 4]] * 4,
        "trained": [[1, 80, 16, 16], [1, 112, 16, 16], [1, 192, 16, 16], [1, 320, 16, 16]]}
    rec["profiled"] = {"shapes": "somewhere"}
    with pytest.raises(ValueError, match="neither the standard"):
        bench.standard_config(rec)
