"""Shared fixtures: a tiny VOC-format dataset written by the tests themselves."""

import numpy as np
import pytest
from PIL import Image

from seglab.data.voc import PALETTE


def write_voc(root, train=6, val=4, size=(40, 56), seed=0):
    """Write ``root/VOCdevkit/VOC2012`` with random images and palette masks: a rectangle of one class per image
    on background, a void border around it. Returns the VOCdevkit folder."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    h, w = size
    for split, count in (("train", train), ("val", val)):
        ids = [f"2007_{split}{i:03d}" for i in range(count)]
        for k, id_ in enumerate(ids):
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{id_}.jpg", quality=95)
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[8:30, 10:40] = 255
            mask[10:28, 12:38] = 1 + (k % 20)
            save_mask(mask, voc / "SegmentationClass" / f"{id_}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


def save_mask(mask, path):
    im = Image.fromarray(mask, mode="P")
    im.putpalette(PALETTE.reshape(-1).tolist())
    im.save(path)


@pytest.fixture
def devkit(tmp_path, monkeypatch):
    """A tiny VOC devkit; SEGLAB_DATA points to it and the cache is an empty temporary folder."""
    devkit = write_voc(tmp_path / "data")
    monkeypatch.setenv("SEGLAB_DATA", str(devkit))
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEGLAB_SPLIT", "full")  # its ids are not the book's subset: every local image
    return devkit
