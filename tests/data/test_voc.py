import numpy as np
import pytest
import torch
from PIL import Image

from seglab.data import download, voc
from seglab.data.voc import DatasetNotFound
from tests.conftest import save_mask, write_voc


def test_palette_is_the_standard_voc_colour_map():
    assert voc.PALETTE[0].tolist() == [0, 0, 0]
    assert voc.PALETTE[1].tolist() == [128, 0, 0]
    assert voc.PALETTE[15].tolist() == [192, 128, 128]  # person
    assert voc.PALETTE[255].tolist() == [224, 224, 192]  # void
    assert len(voc.CLASSES) == 21


def test_find_voc_order_argument_then_env_then_cache(tmp_path, monkeypatch):
    a, b, c = write_voc(tmp_path / "a"), write_voc(tmp_path / "b"), write_voc(tmp_path / "c")
    monkeypatch.setenv("SEGLAB_CACHE", str(c.parent))
    monkeypatch.setenv("SEGLAB_DATA", str(b))
    assert download.find_voc(a) == a
    assert download.find_voc() == b
    monkeypatch.delenv("SEGLAB_DATA")
    assert download.find_voc() == c


def test_find_voc_accepts_parent_devkit_or_voc2012(tmp_path):
    devkit = write_voc(tmp_path)
    for given in (tmp_path, devkit, devkit / "VOC2012"):
        assert download.find_voc(given) == devkit


def test_missing_data_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFound, match="SEGLAB_DATA points to .*nowhere, which does not exist"):
        download.find_voc()


def test_folder_without_voc2012_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFound, match="no VOC2012 folder"):
        download.find_voc()


def test_no_data_without_download_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGLAB_DATA", raising=False)
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFound) as error:
        download.find_voc(download=False)
    assert "python -m seglab.data.download" in str(error.value) and "SEGLAB_DATA" in str(error.value)


def test_split_file_missing_or_empty(devkit):
    (devkit / "VOC2012/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DatasetNotFound, match="val.txt is missing"):
        voc.read_ids(devkit, "val")
    (devkit / "VOC2012/ImageSets/Segmentation/train.txt").write_text("\n")
    with pytest.raises(ValueError, match="train.txt is empty"):
        voc.read_ids(devkit, "train")


def test_read_sample_types_and_values(devkit):
    image, mask = voc.read_sample(devkit, "2007_train000")
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 56)
    assert mask.dtype == torch.int64 and mask.shape == (40, 56)
    assert set(mask.unique().tolist()) == {0, 1, 255}


def test_missing_image_or_mask_is_named(devkit):
    (devkit / "VOC2012/JPEGImages/2007_train000.jpg").unlink()
    with pytest.raises(DatasetNotFound, match="2007_train000.jpg is listed in the split file but missing"):
        voc.read_sample(devkit, "2007_train000")
    (devkit / "VOC2012/SegmentationClass/2007_train001.png").unlink()
    with pytest.raises(DatasetNotFound, match="2007_train001.png is listed"):
        voc.read_sample(devkit, "2007_train001")


def test_loading_a_split_with_a_half_missing_id_names_the_file(devkit):
    (devkit / "VOC2012/SegmentationClass/2007_train002.png").unlink()
    with pytest.raises(DatasetNotFound, match=r"2007_train002.png is listed in the split file but missing, while "
                                              r"its image is there.*remove 2007_train002 from train.txt"):
        voc.load_split("train", 32, progress=False)


def test_a_partial_copy_is_used_and_said(devkit, capsys):
    for i in (1, 3):  # both files gone: these ids are simply not in this copy
        (devkit / f"VOC2012/JPEGImages/2007_train00{i}.jpg").unlink()
        (devkit / f"VOC2012/SegmentationClass/2007_train00{i}.png").unlink()
    split = voc.load_split("train", 32, progress=False)
    assert split.ids == ["2007_train000", "2007_train002", "2007_train004", "2007_train005"]
    assert "train: 4 of the 6 ids in train.txt have files under" in capsys.readouterr().out


def test_corrupt_jpeg_is_reported(devkit):
    path = devkit / "VOC2012/JPEGImages/2007_train000.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot be decoded.*corrupt or truncated"):
        voc.read_sample(devkit, "2007_train000")


def test_rgb_mask_is_converted_through_the_palette(devkit):
    path = devkit / "VOC2012/SegmentationClass/2007_train002.png"
    index = np.asarray(Image.open(path))
    Image.fromarray(voc.PALETTE[index]).save(path)  # the same mask, saved as colours
    with pytest.warns(UserWarning, match="RGB colour PNG; converted"):
        mask = voc.read_mask(path)
    assert np.array_equal(mask.numpy(), index)


def test_rgb_mask_with_foreign_colours_is_refused(devkit):
    path = devkit / "VOC2012/SegmentationClass/2007_train002.png"
    Image.fromarray(np.full((40, 56, 3), 7, dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match="not VOC palette colours"):
        voc.read_mask(path)


def test_mask_size_mismatch_is_reported(devkit):
    save_mask(np.zeros((20, 20), dtype=np.uint8), devkit / "VOC2012/SegmentationClass/2007_train000.png")
    with pytest.raises(ValueError, match=r"image is \(40, 56\) .* mask is \(20, 20\)"):
        voc.read_sample(devkit, "2007_train000")


def test_mask_values_outside_the_classes_are_refused(devkit):
    save_mask(np.full((40, 56), 42, dtype=np.uint8), devkit / "VOC2012/SegmentationClass/2007_train000.png")
    with pytest.raises(ValueError, match=r"values \[42\] outside 0..20 and 255"):
        voc.read_sample(devkit, "2007_train000")


def test_load_split_pads_and_keeps_samples_exact(devkit):
    split = voc.load_split("train", 32, progress=False)
    assert len(split) == 6 and split.images.shape == (6, 3, 32, 32) and split.masks.dtype == torch.uint8
    h, w = split.sizes[0].tolist()
    assert (h, w) == (23, 32)  # 40x56 shrunk so the long side is 32
    assert (split.masks[0, h:] == 255).all() and (split.images[0, :, h:] == 0).all()
    image, mask = split[0]
    assert image.shape == (3, h, w) and mask.dtype == torch.int64
    full = voc.load_split("train", 64, progress=False)  # no enlarging
    assert full.sizes[0].tolist() == [40, 56]
    assert torch.equal(full[0][1], voc.read_mask(voc.mask_path(devkit, full.ids[0])))


def test_balanced_subset_is_deterministic_and_spreads_classes(tmp_path):
    devkit = write_voc(tmp_path, train=40, val=2)
    first = voc.balanced_subset(devkit, "train", 10, seed=3)
    assert first == voc.balanced_subset(devkit, "train", 10, seed=3)
    assert len(first) == 10 and len(set(first)) == 10
    classes = {1 + int(i[-3:]) % 20 for i in first}
    assert len(classes) == 10  # ten images, ten different classes
    assert voc.balanced_subset(devkit, "train", 10, seed=4) != first
    assert voc.balanced_subset(devkit, "train", 100) == sorted(voc.local_ids(devkit, "train"))


def test_offline_without_data_gives_one_message_with_every_way_out(tmp_path, monkeypatch):
    from seglab.data import download
    monkeypatch.delenv("SEGLAB_DATA", raising=False)
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "VOC_MIRRORS", ("http://127.0.0.1:9/VOCtrainval_11-May-2012.tar",))
    with pytest.raises(DatasetNotFound) as error:
        voc.load_split("train", 64)
    message = str(error.value)
    for expected in ("Looked at", str(tmp_path / "cache"), "python -m seglab.data.download", "export SEGLAB_DATA",
                     "http://127.0.0.1:9/VOCtrainval_11-May-2012.tar"):
        assert expected in message
