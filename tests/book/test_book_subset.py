"""The book's VOC subset ships with seglab: quick mode uses exactly its ids wherever the images come from, the full
split is one explicit switch, and a copy that lacks some of the subset's images is refused, naming them."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from seglab import mode as modes
from seglab.book import chapter, results, seeds, stats
from seglab.book.profile import Profile
from seglab.data.voc import DatasetNotFound, book_ids, check_disjoint, split_files
from seglab.heads.fcn import FCNHead

from tests.conftest import save_mask


def write_tree(root, extra=3, size=(20, 24)):
    """A full-VOC-style devkit: every id of the book's subset plus ``extra`` more per split, listed in the split
    files in the official (sorted) order."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        ids = sorted(book_ids(split) + [f"2012_{split}{k:03d}" for k in range(extra)])
        for k, id_ in enumerate(ids):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{id_}.jpg")
            mask = np.zeros(size, dtype=np.uint8)
            mask[4:14, 5:18] = 1 + k % 20
            save_mask(mask, voc / "SegmentationClass" / f"{id_}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("voc"))


@pytest.fixture
def env(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_DATA", str(tree))
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path / "results"))
    for name in ("SEGLAB_SPLIT", "SEGLAB_MODE", "CI"):
        monkeypatch.delenv(name, raising=False)
    return tree


def test_the_subset_ships_with_the_package():
    train, val = book_ids("train"), book_ids("val")
    assert (len(train), len(val)) == (311, 220) and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)


def test_quick_mode_trains_and_evaluates_on_the_subset_only(env):
    mode = dataclasses.replace(modes.current(), image_size=32, crop=32, iters=2, batch=2, eval_batch=64)
    assert mode.name == "quick" and mode.split == "book"
    data = chapter.prepare(mode, progress=False)
    assert data.val_split.ids == book_ids("val")
    assert sorted(set(data.train_features.ids)) == book_ids("train")  # each image and its mirror
    run = chapter.fit(FCNHead, data, progress=False, in_channels=320, channels=8)
    assert run.metrics["images"] == 220
    chapter.record(run, "FCN", chapter=2, profile=Profile(1, 1, 1, 1.0, "cpu"), reference={})
    saved = json.loads((results.results_dir() / "fcn.quick.json").read_text())
    assert saved["data"]["val"] == {"subset": "book", "images": 220, "image_size": 32,
                                    "ids_sha256": saved["data"]["val"]["ids_sha256"]}
    assert saved["mode"]["split"] == "book"


def test_the_full_split_is_one_switch_and_kept_apart(env, monkeypatch, capsys):
    monkeypatch.setenv("SEGLAB_SPLIT", "full")
    assert modes.current().split == "full"
    files = split_files("val", 32)
    assert len(files) == 223 and files.identity()["subset"] == "full"
    mode = dataclasses.replace(modes.current(), image_size=32, crop=32, iters=2, batch=2, eval_batch=64)
    data = chapter.prepare(mode, progress=False)
    assert "the full VOC split: 314 train and 223 val images" in capsys.readouterr().out
    run = chapter.fit(FCNHead, data, progress=False, in_channels=320, channels=8)
    chapter.record(run, "FCN", chapter=2, profile=Profile(1, 1, 1, 1.0, "cpu"), reference={})
    assert (results.results_dir() / "fcn.quick-full.json").is_file()  # never over the book's record
    assert results.load_all("quick", split="book") == [] and len(results.load_all("quick", split="full")) == 1
    monkeypatch.setenv("SEGLAB_SPLIT", "all")
    with pytest.raises(ValueError, match="SEGLAB_SPLIT='all' is not a split"):
        modes.current()


def test_brief_mode_defaults_to_the_full_split():
    assert modes.brief("cpu").split == "full" and modes.quick().split == "book" and modes.ci().split == "book"


def test_missing_subset_images_are_named(tmp_path, monkeypatch):
    tree = write_tree(tmp_path, extra=0, size=(8, 8))
    gone = book_ids("val")[5:8]
    for id_ in gone:
        (tree / "VOC2012" / "JPEGImages" / f"{id_}.jpg").unlink()
        (tree / "VOC2012" / "SegmentationClass" / f"{id_}.png").unlink()
    monkeypatch.setenv("SEGLAB_DATA", str(tree))
    monkeypatch.delenv("SEGLAB_SPLIT", raising=False)
    with pytest.raises(DatasetNotFound, match=r"3 of the 220 val images .* " + ", ".join(gone) + ".*SEGLAB_SPLIT=full"):
        split_files("val", 32, subset="book")
    assert len(split_files("val", 32, subset="full")) == 217  # the switch runs on what there is, and says so


def test_train_val_overlap_is_warned():
    with pytest.warns(UserWarning, match="2 ids are in both train and val"):
        assert check_disjoint(["a", "b", "c"], ["b", "c", "d"]) == ["b", "c"]


def test_a_seed_record_of_other_data_is_refused(env, tmp_path):
    """Reproduces a foreign seed record (another data set) mixed into the spread: refused, naming the file."""
    mode = dataclasses.replace(modes.current(), image_size=32, crop=32, iters=2, batch=2, eval_batch=64)
    data = chapter.prepare(mode, progress=False)
    run = chapter.fit(FCNHead, data, progress=False, in_channels=320, channels=8)
    chapter.record(run, "FCN", chapter=2, profile=Profile(1, 1, 1, 1.0, "cpu"), reference={})
    seeds.rerun("fcn", [1, 2], data)
    assert stats.spread(mode.name)[1] is not None
    path = results.seed_dir() / "fcn.seed2.quick.json"
    foreign = json.loads(path.read_text())
    foreign["data"]["val"]["ids_sha256"] = "0" * 64  # trained and scored on other images
    foreign["miou"] = 0.9
    path.write_text(json.dumps(foreign))
    with pytest.raises(ValueError, match="fcn.seed2.quick.json"):
        stats.spread(mode.name)
