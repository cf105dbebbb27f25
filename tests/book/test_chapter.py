"""The chapter steps (prepare, fit, record, show, compare), the seed command, and the bound on copied chapter code."""

import collections
import dataclasses
import json

import matplotlib
import nbformat
import pytest
import torch

matplotlib.use("Agg")

from seglab import mode as modes  # noqa: E402
from seglab.book import chapter, results, seeds, stats  # noqa: E402
from seglab.book.export import notebooks  # noqa: E402
from seglab.book.profile import Profile  # noqa: E402
from seglab.heads.fcn import FCNHead  # noqa: E402


def tiny_quick():
    return dataclasses.replace(modes.quick("cpu"), image_size=64, batch=2, iters=3, eval_batch=4, crop=48,
                               split="full")  # the fake devkit's ids are not the book's subset


@pytest.fixture
def prepared(devkit, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path / "results"))
    return chapter.prepare(tiny_quick(), progress=False)


def test_prepare_caches_the_frozen_backbones_features(prepared, capsys):
    data = prepared
    assert data.backbone.name == "efficientnet_lite0" and data.backbone.pretrained and data.backbone.frozen
    assert data.channels == [24, 40, 112, 320] and data.strides == (4, 8, 16, 16)
    assert data.train_split is None  # not decoded: the features came from the backbone, then the cache
    assert len(data.train_features) == 2 * data.identity["train"]["images"]  # every image and its mirror
    assert len(data.val_features) == len(data.val_split)
    chapter.prepare(tiny_quick(), progress=True)
    assert "loaded the train features" in capsys.readouterr().out  # the second time, from the cache


def test_fit_record_and_rebuild(prepared, tmp_path):
    run = chapter.fit(FCNHead, prepared, progress=False, in_channels=320, channels=8)
    assert run.metrics["predictions"].shape == (len(prepared.val_split), 64, 64)
    assert 0 <= run.metrics["miou"] <= 1 and len(run.history["loss"]) == 3
    assert not any(p.requires_grad for p in run.model.backbone.parameters())
    profile = Profile(params=1, flops=1, activation_bytes=1, latency_ms=1.0, device="cpu")
    assert chapter.record(run, "FCN", chapter=2, profile=profile, reference={"channels": 512}) is None  # nothing shown
    saved = json.loads((results.results_dir() / "fcn.quick-full.json").read_text())  # the fake devkit: the full split
    assert saved["config"]["class"] == "seglab.heads.fcn.FCNHead" and saved["config"]["trained"]["channels"] == 8
    assert results.build(saved) is FCNHead and saved["backbone"] == "efficientnet_lite0"
    assert run.name == "FCN"  # the record's name, from then on
    again = chapter.evaluate_run(run, progress=False)
    assert again["miou"] == run.metrics["miou"]
    ids = chapter.shown_ids(prepared.val_split)
    assert sorted(saved["predictions"]) == sorted(prepared.val_split.ids[i] for i in ids)
    first = ids[0]
    h, w = prepared.val_split.sizes[first].tolist()
    stored = chapter.mask_from_base64(saved["predictions"][prepared.val_split.ids[first]])
    assert torch.equal(stored, run.metrics["predictions"][first, :h, :w].long())


def test_the_sweep_keeps_the_learning_rate_of_the_lower_training_loss_and_seeds_reuse_it(prepared, monkeypatch):
    """Seed 0 trains once per candidate rate, from the same seed, and keeps the lower ``end_loss`` (never the val
    score); the other seeds, from the record or from ``repeat``, train at that rate alone."""
    import seglab.book.chapter as chapter_module
    assert prepared.mode.sweeps() and prepared.mode.lr_candidates == (0.01, 0.03)
    rates = []
    real = chapter_module.train_head

    def spy(head, features, mode, seed=0, lr=None, progress=True):
        rates.append(lr)
        history = real(head, features, mode, seed=seed, lr=lr, progress=progress)
        history["loss"] = [lr * 100] * len(history["loss"])  # the lower rate, the lower loss: it must be chosen
        return history

    monkeypatch.setattr(chapter_module, "train_head", spy)
    run = chapter.fit(FCNHead, prepared, progress=False, in_channels=320, channels=8)
    assert rates == [0.01, 0.03] and run.lr == 0.01
    assert run.lr_sweep["0.01"]["loss"] == pytest.approx(1.0) and run.lr_sweep["0.03"]["loss"] == pytest.approx(3.0)
    assert run.lr_sweep["0.01"]["miou"] == run.metrics["miou"]  # the chosen run is the one evaluated and kept
    assert 0 <= run.lr_sweep["0.03"]["miou"] <= 1
    other = run.others[0.03]  # the run not kept stays at hand (a chapter that studies it need not retrain it)
    assert list(run.others) == [0.03] and other.lr == 0.03 and other.metrics["miou"] == run.lr_sweep["0.03"]["miou"]
    assert other.head is not run.head and other.history["loss"] == [3.0] * len(run.history["loss"])
    profile = Profile(params=1, flops=1, activation_bytes=1, latency_ms=1.0, device="cpu")
    chapter.record(run, "FCN", chapter=2, profile=profile, reference={})
    saved = json.loads((results.results_dir() / "fcn.quick-full.json").read_text())
    assert saved["lr"] == 0.01 and saved["lr_sweep"] == json.loads(json.dumps(run.lr_sweep))
    rates.clear()
    chapter.repeat(run, seeds=(1,))
    assert rates == [0.01]  # seed 1 trains at seed 0's choice only
    rates.clear()
    seeds.rerun("fcn", [2], prepared)
    assert rates == [0.01]
    assert [r["lr"] for _, r in results.load_seeds("quick", split="full")] == [0.01, 0.01]
    rates.clear()
    alone = chapter.fit(FCNHead, prepared, progress=False, lr=0.03, in_channels=320, channels=8)
    assert rates == [0.03] and alone.lr == 0.03 and alone.lr_sweep is None and alone.others is None


def test_classes_at_zero_iou_are_never_called_best():
    ranked = [(55.0, "person"), (40.2, "cat"), (10.0, "bus"), (5.0, "dog"), (3.0, "cow"), (0.2, "train"), (0.0, "sofa")]
    line = chapter.classes_line(ranked)
    assert line == ("- Best object classes: person 55%, cat 40%, bus 10%; worst: cow 3%, dog 5%; at 0% IoU: train, "
                    "sofa.")
    assert chapter.classes_line([(0.0, "sofa"), (0.0, "train")]) == ("- Best object classes: none above 0%; at 0% "
                                                                      "IoU: sofa, train.")


def test_end_loss_is_the_mean_of_the_last_tenth():
    assert chapter.end_loss({"loss": list(range(20))}) == pytest.approx(18.5)
    assert chapter.end_loss({"loss": [4.0, 2.0]}) == 2.0  # at least one iteration


def test_val_features_are_what_the_backbone_computes_for_those_images(prepared):
    """Explorers look inside a trained head through ``val_features``: the cached features must be the frozen
    backbone's features of exactly those val images."""
    from seglab.backbones.efficientnet import fold_batchnorm
    from seglab.data.augment import normalize
    run = chapter.fit(FCNHead, prepared, progress=False, in_channels=320, channels=8)
    index = [2, 0]
    cached = chapter.val_features(run, index)
    with torch.no_grad():
        direct = fold_batchnorm(prepared.backbone)(normalize(prepared.val_split.images[index]))
    if prepared.mode.standardize:  # the protocol standardises each channel with the train set's statistics
        direct = [(d - m[:, None, None]) / s[:, None, None] for d, (m, s) in zip(direct, prepared.feature_stats)]
    assert [tuple(f.shape) for f in cached] == [tuple(f.shape) for f in direct]
    for c, d in zip(cached, direct):  # the cache is float16
        torch.testing.assert_close(c, d, rtol=1e-2, atol=2e-2)


def test_a_head_defined_in_a_notebook_is_recorded_by_its_exported_class():
    notebook_copy = type("FCNHead", (FCNHead,), {"__module__": "__main__"})
    assert results.class_path(notebook_copy) == "seglab.heads.fcn.FCNHead"
    stray = type("NotExported", (FCNHead,), {"__module__": "__main__"})
    with pytest.raises(ValueError, match="not exported"):
        results.class_path(stray)


def test_fit_repeats_exactly_with_a_seed(prepared):
    a = chapter.fit(FCNHead, prepared, seed=3, progress=False, in_channels=320, channels=8)
    b = chapter.fit(FCNHead, prepared, seed=3, progress=False, in_channels=320, channels=8)
    assert a.history["loss"] == b.history["loss"] and a.metrics["miou"] == b.metrics["miou"]


def test_show_and_compare_draw_from_the_records(prepared, monkeypatch):
    import ipywidgets as widgets
    run = chapter.fit(FCNHead, prepared, progress=False, in_channels=320, channels=8)
    profile = Profile(params=1, flops=1, activation_bytes=1, latency_ms=1.0, device="cpu")
    chapter.record(run, "FCN", chapter=2, profile=profile, reference={})
    shown = []
    monkeypatch.setattr(matplotlib.pyplot, "show", lambda: shown.append(matplotlib.pyplot.gcf()))
    browser = chapter.show(run, count=2)
    assert isinstance(browser, widgets.VBox) and len(browser.children[1].children) == 2
    assert shown and "IoU per class" in shown[-1].axes[0].get_title()
    monkeypatch.setattr("IPython.display.display", lambda table: shown.append(table))
    chapter.compare(run.data.mode, up_to=2)
    assert list(shown[-2].index) == ["FCN"]


def test_seed_command_rebuilds_the_head_from_its_record(prepared):
    run = chapter.fit(FCNHead, prepared, progress=False, in_channels=320, channels=8)
    profile = Profile(params=1, flops=1, activation_bytes=1, latency_ms=1.0, device="cpu")
    chapter.record(run, "FCN", chapter=2, profile=profile, reference={})
    paths = seeds.rerun("fcn", [1, 2], prepared)
    loaded = [r for _, r in results.load_seeds("quick", split="full")]
    assert [p.name for p in paths] == ["fcn.seed1.quick-full.json", "fcn.seed2.quick-full.json"]
    assert [r["seed"] for r in loaded] == [1, 2] and all(r["head"] == "FCN" for r in loaded)
    assert all(r["data"] == prepared.identity for r in loaded)  # the data they were trained on
    measured, noise = stats.spread("quick", split="full")
    assert list(measured) == ["FCN"] and noise == measured["FCN"][0]
    with pytest.raises(FileNotFoundError, match="run its chapter first"):
        seeds.rerun("pspnet", [1], prepared)


def test_brief_mode_never_trains_from_scratch_silently(monkeypatch):
    from seglab import backbones as backbone
    real = backbone.create

    def offline(name, output_stride=8, pretrained=False, frozen=False, multi_grid=None):
        net = real(name, output_stride=output_stride, pretrained=False, frozen=frozen)
        if name == "efficientnet_lite0" and pretrained:
            net.load_imagenet()
        return net  # ResNet-50 stays without weights, as when the download fails

    monkeypatch.setattr(chapter, "create", offline)
    net, note = chapter.brief_backbone(modes.brief("cpu"))
    assert net.name == "efficientnet_lite0" and net.pretrained and net.output_stride == 8
    assert "could not be downloaded" in note and "EfficientNet-Lite0" in note


SHARED_BOUND = 3  # copied blocks tolerated: head boilerplate (classifier, then forward reading one level)
BLOCK = 3  # consecutive code lines


def code_lines(source):
    """The lines of a code cell that carry code: imports, comments, blank lines, decorators and trailing comments
    are dropped."""
    lines, in_import = [], False
    for line in (raw.strip() for raw in source.splitlines()):
        if in_import or line.startswith("import ") or (line.startswith("from ") and " import " in line):
            in_import = line.count("(") > line.count(")") or (in_import and ")" not in line)
            continue
        if line and not line.startswith(("#", "@")):
            lines.append(line.split("  #")[0].rstrip())
    return lines


def shared_chapter_blocks(block=BLOCK, paths=None):
    """Runs of ``block`` consecutive code lines that appear in more than 3 chapters: copied code. Single lines
    may recur (``plt.show()``, ``DATA = chapter.prepare(MODE)`` in every chapter is the point); a copied block is
    what every chapter does written out instead of one seglab call."""
    where = collections.defaultdict(set)
    for path in paths or notebooks():
        for cell in nbformat.read(path, as_version=4).cells[1:]:
            if cell.cell_type == "code":
                lines = code_lines(cell.source)
                for i in range(len(lines) - block + 1):
                    where[tuple(lines[i:i + block])].add(path.name)
    return {lines: sorted(paths) for lines, paths in where.items() if len(paths) > 3}


def test_chapters_share_no_more_than_a_handful_of_blocks():
    shared = shared_chapter_blocks()
    assert len(shared) <= SHARED_BOUND, ("blocks of code repeated in more than 3 chapters (make them one seglab call):\n"
                                         + "\n\n".join(f"{len(p)}x " + "\n    ".join(lines)
                                                         for lines, p in shared.items()))


def test_the_copied_block_check_catches_a_copied_tail(tmp_path):
    tail = "run = chapter.fit(Head, DATA)\nchapter.record(run, 'Head')\nchapter.show(run)\n"
    for k in range(4):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("setup"),
                                             nbformat.v4.new_code_cell(f"# chapter {k}\nimport torch\n" + tail)])
        nbformat.write(nb, tmp_path / f"{k:02d}.ipynb")
    assert list(shared_chapter_blocks(paths=sorted(tmp_path.glob("*.ipynb")))) == [tuple(tail.strip().splitlines())]


def test_brief_mode_fine_tunes_the_whole_network_with_an_auxiliary_head(devkit, tmp_path, monkeypatch):
    """The end-to-end path, small enough for a CPU: the fallback backbone is fine-tuned with the head."""
    from seglab import backbones as backbone
    real = backbone.create
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path / "results"))

    def offline(name, output_stride=8, pretrained=False, frozen=False, multi_grid=None):
        net = real(name, output_stride=output_stride, pretrained=False, frozen=frozen)
        if name == "efficientnet_lite0" and pretrained:
            net.load_imagenet()
        return net

    monkeypatch.setattr(chapter, "create", offline)
    mode = dataclasses.replace(modes.brief("cpu"), image_size=64, crop=48, batch=2, iters=2, eval_batch=4)
    data = chapter.prepare(mode, progress=False)
    assert data.train_features is None and "could not be downloaded" in data.note
    before = {k: v.clone() for k, v in data.backbone.state_dict().items()}
    run = chapter.fit(FCNHead, data, progress=False, in_channels=data.channels[-1], channels=8)
    assert run.model.aux_head is not None and set(run.history["terms"]) == {"ce", "aux"}
    changed = [k for k, v in run.model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the backbone was not fine-tuned"
    assert all(torch.equal(v, before[k]) for k, v in data.backbone.state_dict().items()), \
        "each run must fine-tune its own copy of the backbone"
    assert run.metrics["predictions"].shape == (len(data.val_split), 64, 64)


def test_the_token_maps_have_their_own_cache_and_records_say_which_features_they_used(prepared, capsys):
    tokens = chapter.prepare(tiny_quick(), progress=False, tokens=True)
    assert tokens.features == "taps" and prepared.features == "levels"
    assert tokens.channels == [80, 112, 192, 320] and tokens.strides == (16, 16, 16, 16)
    assert tokens.backbone.name == "efficientnet_lite0-taps" and tokens.backbone.frozen
    # taps 2 and 4 are the C4 and C5 of the C2..C5 cache, bitwise
    assert torch.equal(tokens.train_features.levels[1], prepared.train_features.levels[2])
    assert torch.equal(tokens.val_features.levels[3], prepared.val_features.levels[3])
    assert "token maps: the last block of each of efficientnet_lite0's stages 4, 5, 6, 7" in capsys.readouterr().out
    run = chapter.fit(FCNHead, tokens, progress=False, in_channels=320, channels=8)
    profile = Profile(params=1, flops=1, activation_bytes=1, latency_ms=1.0, device="cpu")
    chapter.record(run, "FCN", chapter=2, profile=profile, reference={})
    assert results.load_all("quick", split="full")[0]["features"] == "taps"
    with pytest.raises(ValueError, match="trained on the 'taps' features, and the data given holds 'levels'"):
        seeds.rerun("fcn", [1], prepared)
    assert [p.name for p in seeds.rerun("fcn", [1], tokens)] == ["fcn.seed1.quick-full.json"]
