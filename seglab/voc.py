"""PASCAL VOC 2012 segmentation: where it is, how it is read, and a deterministic subset held in memory.

The dataset is looked for in this order: the ``root`` argument, the ``SEGLAB_DATA`` environment variable,
then the cache directory (``$SEGLAB_CACHE`` or ``~/.cache/seglab``), where it is downloaded if missing.
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor")
IGNORE = 255  # "void": object boundaries and difficult regions, left out of the loss and the metrics


def voc_palette():
    """The standard VOC colour map (256 x RGB): the bits of a class index spread over the high bits of R, G, B."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        palette[i] = rgb
    return palette


PALETTE = voc_palette()


class DatasetNotFound(FileNotFoundError):
    pass


def cache_dir():
    return Path(os.environ.get("SEGLAB_CACHE", Path.home() / ".cache" / "seglab"))


def _devkit_in(path):
    """The folder holding ``VOC2012`` for a path that names VOCdevkit, VOC2012 itself, or their parent."""
    path = Path(path).expanduser()
    for candidate in (path, path / "VOCdevkit"):
        if (candidate / "VOC2012").is_dir():
            return candidate
    if path.name == "VOC2012" and path.is_dir():
        return path.parent
    return None


def find_voc(root=None, download=True):
    """Return the ``VOCdevkit`` folder, downloading VOC 2012 into the cache only when no copy is given or found."""
    for source, given in (("the root argument", root), ("SEGLAB_DATA", os.environ.get("SEGLAB_DATA"))):
        if given:
            if not Path(given).expanduser().exists():
                raise DatasetNotFound(f"{source} points to {given}, which does not exist. Point it at the folder "
                                      "that holds VOCdevkit/VOC2012 (or at VOCdevkit itself).")
            found = _devkit_in(given)
            if found is None:
                raise DatasetNotFound(f"{source} points to {given}, but there is no VOC2012 folder in it (looked "
                                      f"for {Path(given) / 'VOC2012'} and {Path(given) / 'VOCdevkit' / 'VOC2012'}).")
            return found
    cached = _devkit_in(cache_dir())
    if cached is not None:
        return cached
    if not download:
        raise DatasetNotFound(not_found_message())
    from seglab.download import fetch_voc
    return fetch_voc(cache_dir())


def not_found_message(reason=""):
    return (f"PASCAL VOC 2012 was not found{': ' + reason if reason else ''}.\n"
            f"  Looked at: the root argument, SEGLAB_DATA={os.environ.get('SEGLAB_DATA')!r}, and {cache_dir()}.\n"
            "  To download it (about 2 GB) run:  python -m seglab.download\n"
            "  To use a local copy, set SEGLAB_DATA to the folder that holds VOCdevkit/VOC2012, "
            "e.g. export SEGLAB_DATA=/data/VOCdevkit")


def read_ids(devkit, split):
    """The ids of an official split file (``train`` or ``val``)."""
    path = Path(devkit) / "VOC2012" / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise DatasetNotFound(f"The split file {path} is missing; the devkit layout expects "
                              "VOC2012/ImageSets/Segmentation/{train,val}.txt.")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"The split file {path} is empty: it should list one image id per line (e.g. 2007_000032). "
                         "Restore it from the VOC 2012 archive (python -m seglab.download).")
    return ids


def image_path(devkit, id_):
    return Path(devkit) / "VOC2012" / "JPEGImages" / f"{id_}.jpg"


def mask_path(devkit, id_):
    return Path(devkit) / "VOC2012" / "SegmentationClass" / f"{id_}.png"


def read_image(path):
    """An RGB JPEG as uint8 (3, H, W)."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetNotFound(f"The image {path} is listed in the split file but missing.") from None
    except OSError as error:
        raise ValueError(f"The image {path} cannot be decoded ({error}); it is corrupt or truncated. "
                         "Delete it and download the dataset again.") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def read_mask(path):
    """A VOC class mask (palette PNG) as int64 (H, W) with values 0..20 and 255.

    An RGB-coloured mask is converted back through the VOC palette, with a warning; any colour outside the
    palette is refused."""
    try:
        with Image.open(path) as im:
            mode, array = im.mode, np.asarray(im)
    except FileNotFoundError:
        raise DatasetNotFound(f"The mask {path} is listed in the split file but missing.") from None
    except OSError as error:
        raise ValueError(f"The mask {path} cannot be decoded ({error}).") from None
    if mode == "RGB":
        array = rgb_to_index(array, path)
    elif mode not in ("P", "L"):
        raise ValueError(f"The mask {path} has PIL mode {mode!r}; expected a palette ('P') PNG of class indices.")
    bad = np.setdiff1d(np.unique(array), list(range(len(CLASSES))) + [IGNORE])
    if bad.size:
        raise ValueError(f"The mask {path} holds values {bad.tolist()[:10]} outside 0..{len(CLASSES) - 1} and "
                         f"{IGNORE}; it is not a VOC class mask.")
    return torch.from_numpy(array.astype(np.int64))


def rgb_to_index(array, path):
    import warnings
    codes = {tuple(int(v) for v in PALETTE[c]): c for c in list(range(len(CLASSES))) + [IGNORE]}
    flat = array.reshape(-1, 3)
    colours, inverse = np.unique(flat, axis=0, return_inverse=True)
    unknown = [tuple(int(v) for v in c) for c in colours if tuple(int(v) for v in c) not in codes]
    if unknown:
        raise ValueError(f"The mask {path} is an RGB image with colours {unknown[:5]} that are not VOC palette "
                         "colours; save masks as palette PNGs of class indices.")
    warnings.warn(f"The mask {path} is an RGB colour PNG; converted it to class indices through the VOC palette.")
    lookup = np.array([codes[tuple(int(v) for v in c)] for c in colours], dtype=np.uint8)
    return lookup[inverse.reshape(-1)].reshape(array.shape[:2])


def read_sample(devkit, id_):
    """One sample: (image uint8 (3, H, W), mask int64 (H, W))."""
    image, mask = read_image(image_path(devkit, id_)), read_mask(mask_path(devkit, id_))
    if image.shape[1:] != mask.shape:
        raise ValueError(f"Sample {id_}: the image is {tuple(image.shape[1:])} (H, W) but its mask is "
                         f"{tuple(mask.shape)}; they must match.")
    return image, mask


def local_ids(devkit, split):
    """The ids of a split whose image and mask are present on disk (the default subset). A listed id with neither
    file is simply not in this copy; an id with only one of the two means a damaged copy, and is refused."""
    listed, ids = read_ids(devkit, split), []
    for i in listed:
        image, mask = image_path(devkit, i).is_file(), mask_path(devkit, i).is_file()
        if image != mask:
            missing = mask_path(devkit, i) if image else image_path(devkit, i)
            raise DatasetNotFound(f"{missing} is listed in the split file but missing, while its "
                                  f"{'image' if image else 'mask'} is there: the copy is damaged. Restore the file, "
                                  f"or remove {i} from {split}.txt.")
        if image:
            ids.append(i)
    if ids and len(ids) < len(listed):  # a partial copy: say so, never shrink the data silently
        print(f"{split}: {len(ids)} of the {len(listed)} ids in {split}.txt have files under {devkit}; using those.")
    return ids


def _rank(id_, seed):
    return hashlib.sha256(f"{seed}:{id_}".encode()).hexdigest()


def balanced_subset(devkit, split, size, seed=0):
    """A deterministic, class-balanced subset of ``size`` ids: round-robin over the classes, rarest first, each
    taking its next image in a seeded hash order. The same files and seed always give the same ids."""
    ids = sorted(local_ids(devkit, split), key=lambda i: _rank(i, seed))
    if size >= len(ids):
        return sorted(ids)
    present = {c: [] for c in range(1, len(CLASSES))}
    for i in ids:
        for c in torch.unique(read_mask(mask_path(devkit, i))).tolist():
            if c in present:
                present[c].append(i)
    chosen, order = [], sorted(present, key=lambda c: (len(present[c]), c))
    while len(chosen) < size:
        progress = False
        for c in order:
            while present[c] and present[c][0] in chosen:
                present[c].pop(0)
            if present[c] and len(chosen) < size:
                chosen.append(present[c].pop(0))
                progress = True
        if not progress:  # images with background only
            chosen += [i for i in ids if i not in chosen][: size - len(chosen)]
    return sorted(chosen)


@dataclass
class VOCSplit:
    """A split decoded once and held in memory: images and masks padded onto a square canvas.

    ``images`` uint8 (n, 3, S, S) zero-padded, ``masks`` uint8 (n, S, S) padded with 255, ``sizes`` (n, 2)."""

    ids: list
    images: torch.Tensor
    masks: torch.Tensor
    sizes: torch.Tensor

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        """Sample i without padding: (image uint8 (3, h, w), mask int64 (h, w))."""
        h, w = self.sizes[i].tolist()
        return self.images[i, :, :h, :w], self.masks[i, :h, :w].long()


def load_split(split, image_size, root=None, size=None, seed=0, progress=True):
    """Decode a split once into a :class:`VOCSplit`, each image resized so its long side is at most
    ``image_size``. ``size=None`` keeps every id present locally; an integer picks a balanced subset."""
    devkit = find_voc(root)
    ids = local_ids(devkit, split) if size is None else balanced_subset(devkit, split, size, seed)
    if not ids:
        raise DatasetNotFound(f"No {split} image has both its JPEG and its mask under {devkit}.")
    images = torch.zeros(len(ids), 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.full((len(ids), image_size, image_size), IGNORE, dtype=torch.uint8)
    sizes = torch.zeros(len(ids), 2, dtype=torch.long)

    def decode(k):
        image, mask = _fit(*read_sample(devkit, ids[k]), image_size)
        h, w = mask.shape
        images[k, :, :h, :w], masks[k, :h, :w], sizes[k] = image, mask, torch.tensor([h, w])

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(decode, range(len(ids))), total=len(ids), desc=f"decoding VOC {split}",
                  disable=not progress))
    return VOCSplit(ids, images, masks, sizes)


def _fit(image, mask, image_size):
    """Shrink (never enlarge) so that the long side is at most ``image_size``: bilinear image, nearest mask."""
    h, w = mask.shape
    scale = image_size / max(h, w)
    if scale >= 1:
        return image, mask.to(torch.uint8)
    size = (round(w * scale), round(h * scale))
    image = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size, Image.BILINEAR)
    mask = Image.fromarray(mask.numpy().astype(np.uint8)).resize(size, Image.NEAREST)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), torch.from_numpy(np.asarray(mask).copy())
