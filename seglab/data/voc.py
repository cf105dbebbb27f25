"""PASCAL VOC 2012 segmentation: where it is, how it is read, and a deterministic subset held in memory.

The dataset is looked for in this order: the ``root`` argument, the ``SEGLAB_DATA`` environment variable,
then the cache directory (``$SEGLAB_CACHE`` or ``~/.cache/seglab``), where it is downloaded if missing.
"""

import hashlib
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from seglab.data.download import DatasetNotFound, find_voc

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


def read_ids(devkit, split):
    """The ids of an official split file (``train`` or ``val``), in order; an id listed twice is kept once, with a
    warning."""
    path = Path(devkit) / "VOC2012" / "ImageSets" / "Segmentation" / f"{split}.txt"
    restore = "Restore it from the VOC 2012 archive (python -m seglab.data.download)."
    if path.is_dir():
        raise ValueError(f"The split file {path} is a folder, not a text file of image ids. Remove it and {restore}")
    if not path.is_file():
        raise DatasetNotFound(f"The split file {path} is missing; the devkit layout expects "
                              "VOC2012/ImageSets/Segmentation/{train,val}.txt.")
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise PermissionError(f"The split file {path} cannot be read (permission denied). Make it readable: "
                              f"chmod a+r '{path}'.") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"The split file {path} is not a text file of image ids (byte {error.start} is not UTF-8 "
                         f"text: it is binary or damaged). {restore}") from None
    except OSError as error:
        raise ValueError(f"The split file {path} cannot be read ({error.strerror or error}). {restore}") from None
    if "\x00" in text:
        raise ValueError(f"The split file {path} is not a text file of image ids (it holds NUL bytes: it is binary "
                         f"or damaged). {restore}")
    listed = [line.strip() for line in text.splitlines() if line.strip()]
    ids = list(dict.fromkeys(listed))
    if len(ids) < len(listed):
        counts = Counter(listed)
        twice = [i for i in ids if counts[i] > 1]
        warnings.warn(f"The split file {path} lists {len(twice)} ids more than once ({', '.join(twice[:8])}"
                      f"{', ...' if len(twice) > 8 else ''}); each is used once ({len(ids)} ids, not {len(listed)}).")
    if not ids:
        raise ValueError(f"The split file {path} is empty: it should list one image id per line (e.g. 2007_000032). "
                         "Restore it from the VOC 2012 archive (python -m seglab.data.download).")
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
    except PermissionError:
        raise _unreadable("image", path) from None
    except OSError as error:
        raise ValueError(f"The image {path} cannot be decoded ({error}); it is corrupt or truncated. "
                         "Delete it and download the dataset again.") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def read_mask(path):
    """A VOC class mask (palette PNG) as int64 (H, W) with values 0..20 and 255.

    An RGB-coloured mask is converted back through the VOC palette, with a warning; any colour outside the
    palette is refused. A palette PNG whose used entries are not VOC's colours (re-indexed by an image editor)
    is mapped by colour, with a warning (see ``palette_to_index``)."""
    try:
        with Image.open(path) as im:
            mode, array = im.mode, np.asarray(im)
            palette = im.getpalette() if mode == "P" else None
    except FileNotFoundError:
        raise DatasetNotFound(f"The mask {path} is listed in the split file but missing.") from None
    except PermissionError:
        raise _unreadable("mask", path) from None
    except OSError as error:
        raise ValueError(f"The mask {path} cannot be decoded ({error}).") from None
    if mode == "RGB":
        array = rgb_to_index(array, path)
    elif mode == "P":
        array = palette_to_index(array, palette, path)
    elif mode not in ("P", "L"):
        raise ValueError(f"The mask {path} has PIL mode {mode!r}; expected a palette ('P') PNG of class indices.")
    bad = np.setdiff1d(np.unique(array), list(range(len(CLASSES))) + [IGNORE])
    if bad.size:
        raise ValueError(f"The mask {path} holds values {bad.tolist()[:10]} outside 0..{len(CLASSES) - 1} and "
                         f"{IGNORE}; it is not a VOC class mask.")
    return torch.from_numpy(array.astype(np.int64))


def _unreadable(what, path):
    return PermissionError(f"The {what} {path} cannot be read (permission denied); the file itself may be fine. "
                           f"Make it readable (chmod a+r '{path}', or for the whole copy chmod -R a+rX on the "
                           "VOCdevkit folder) rather than deleting it.")


def palette_to_index(array, palette, path):
    """The class indices of a palette ('P') mask, checked against its own palette.

    VOC's masks store class ``c`` as index ``c`` with colour ``PALETTE[c]``. An image editor may re-quantise the
    palette (e.g. classes 0, 1, 15, 255 stored as 0, 1, 2, 3), so the indices no longer mean classes while the
    colours still do: where a used index's colour is not VOC's colour for it, every used colour must be a VOC
    class or void colour and the mask is mapped by colour, with a warning; otherwise it is refused. A palette
    without those entries, or a grey ramp (index i drawn as (i, i, i)), carries no class colours: the indices are
    taken as they are."""
    used = np.unique(array)
    if palette is None:
        return array
    table = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    defined = [int(u) for u in used if u < len(table)]
    if all((table[u] == PALETTE[u]).all() for u in defined) or all((table[u] == u).all() for u in defined):
        return array
    codes = {tuple(int(v) for v in PALETTE[c]): c for c in list(range(len(CLASSES))) + [IGNORE]}
    colour = {int(u): tuple(int(v) for v in table[u]) if u < len(table) else None for u in used}
    unknown = {u: c for u, c in colour.items() if c not in codes}
    if unknown:
        raise ValueError(f"The mask {path} is a palette PNG whose entries are not VOC's colours (index: colour "
                         f"{dict(list(unknown.items())[:5])}; None: no palette entry), so its values cannot be "
                         "trusted as class indices. Re-save it with the VOC colour map (seglab.data.voc.PALETTE) and class "
                         "indices as pixel values.")
    lookup = np.arange(256, dtype=np.uint8)
    for u, c in colour.items():
        lookup[u] = codes[c]
    moved = {u: int(lookup[u]) for u in colour if lookup[u] != u}
    warnings.warn(f"The mask {path} is a re-indexed palette PNG (its palette does not put VOC's colours at VOC's "
                  f"indices); mapped it by colour to class indices (stored index -> class: {moved}). Re-save it with "
                  "the VOC palette to silence this.")
    return lookup[array]


def rgb_to_index(array, path):
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


def book_ids(split):
    """The ids of the book's VOC subset (``train``: 311, ``val``: 220), shipped with seglab: every stored output of the
    book was produced on exactly these images, so a reader who runs a chapter gets the numbers on its page."""
    return [line.strip() for line in resources.files("seglab.data").joinpath("splits", f"{split}.txt").read_text()
            .splitlines() if line.strip()]


def subset_ids(devkit, split, subset="book"):
    """The ids a run uses. ``book``: the book's subset, all of whose files must be present (a copy that lacks some
    is refused, naming them: a chapter never runs silently on fewer images). ``full``: every id of the devkit's
    official split file that has its files (``local_ids``)."""
    if subset == "full":
        return local_ids(devkit, split)
    if subset != "book":
        raise ValueError(f"subset must be 'book' or 'full', got {subset!r}.")
    ids = book_ids(split)
    missing = [i for i in ids if not (image_path(devkit, i).is_file() and mask_path(devkit, i).is_file())]
    if missing:
        raise DatasetNotFound(
            f"{len(missing)} of the {len(ids)} {split} images of the book's VOC subset are missing under {devkit} "
            f"(an image or its mask): {', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}. Use a complete "
            "VOC 2012 (python -m seglab.data.download fetches it; SEGLAB_DATA points at a local copy), or set "
            "SEGLAB_SPLIT=full to run on every image you have (its numbers are then not the book's).")
    return ids


def check_disjoint(train_ids, val_ids):
    """Warn when train and val share images: val scores would then measure memory, not generalisation."""
    shared = sorted(set(train_ids) & set(val_ids))
    if shared:
        warnings.warn(f"{len(shared)} ids are in both train and val ({', '.join(shared[:5])}"
                      f"{', ...' if len(shared) > 5 else ''}): val scores of this data are not to be trusted. Check "
                      "the split files under ImageSets/Segmentation.")
    return shared


def ids_digest(ids):
    """sha256 of a list of ids (one per line, in order): the identity of a split in records."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


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
    originals: list = None  # val: each image's mask as released (uint8 (H, W)), which VOC scores against
    bands: list = None  # beside them: each one's boundary band, computed once by the scorer

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        """Sample i without padding: (image uint8 (3, h, w), mask int64 (h, w))."""
        h, w = self.sizes[i].tolist()
        return self.images[i, :, :h, :w], self.masks[i, :h, :w].long()


@dataclass(frozen=True)
class SplitFiles:
    """Which files a split is made of, before any is decoded: a feature cache can be checked against them without
    decoding the images (``fingerprint``), and decoded only when it must be built (``load``)."""

    devkit: Path
    name: str  # "train" or "val"
    ids: tuple
    image_size: int
    subset: str  # "book", "full", or "balanced <size> seed <seed>"

    def __len__(self):
        return len(self.ids)

    def fingerprint(self):
        """sha256 over every id with the size and modification time of its image and mask: an edited or replaced
        file changes it, so a cache made from the old files is known to be stale."""
        h = hashlib.sha256()
        for i in self.ids:
            for path in (image_path(self.devkit, i), mask_path(self.devkit, i)):
                stat = path.stat()
                h.update(f"{i}:{path.suffix}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def identity(self):
        """What a record says about its data: the subset, the number of images, the ids' sha256 and the size."""
        return {"subset": self.subset, "images": len(self.ids), "ids_sha256": ids_digest(list(self.ids)),
                "image_size": self.image_size}

    def original_masks(self, progress=True):
        """Every mask at its original size, as VOC scores predictions: a list of uint8 (H, W) tensors."""
        def decode(i):
            return read_mask(mask_path(self.devkit, i)).to(torch.uint8)

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return list(tqdm(pool.map(decode, self.ids), total=len(self.ids), desc=f"reading VOC {self.name} masks",
                             disable=not progress))

    def load(self, progress=True):
        """Decode every image and mask once into a :class:`VOCSplit`, each resized so its long side is at most
        ``image_size``."""
        ids, image_size, devkit = list(self.ids), self.image_size, self.devkit
        images = torch.zeros(len(ids), 3, image_size, image_size, dtype=torch.uint8)
        masks = torch.full((len(ids), image_size, image_size), IGNORE, dtype=torch.uint8)
        sizes = torch.zeros(len(ids), 2, dtype=torch.long)

        def decode(k):
            image, mask = _fit(*read_sample(devkit, ids[k]), image_size)
            h, w = mask.shape
            images[k, :, :h, :w], masks[k, :h, :w], sizes[k] = image, mask, torch.tensor([h, w])

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(tqdm(pool.map(decode, range(len(ids))), total=len(ids), desc=f"decoding VOC {self.name}",
                      disable=not progress))
        return VOCSplit(ids, images, masks, sizes)


def default_subset():
    """``SEGLAB_SPLIT`` if set (``book`` or ``full``), else ``book``: the images a caller that names none gets. (A mode
    has its own default, ``Mode.split``; ``chapter.prepare`` passes it.)"""
    subset = os.environ.get("SEGLAB_SPLIT", "").strip().lower() or "book"
    if subset not in ("book", "full"):
        raise ValueError(f"SEGLAB_SPLIT={subset!r} is not a split; use 'book' (the book's VOC subset) or 'full'.")
    return subset


def split_files(split, image_size, root=None, size=None, seed=0, subset=None):
    """The :class:`SplitFiles` of a split. ``subset`` (``book`` or ``full``; by default ``default_subset()``) chooses
    the ids; an integer ``size`` instead picks a class-balanced subset of the local ids."""
    devkit = find_voc(root)
    if size is not None:
        ids, subset = balanced_subset(devkit, split, size, seed), f"balanced {size} seed {seed}"
    else:
        ids = subset_ids(devkit, split, default_subset() if subset is None else subset)
        subset = default_subset() if subset is None else subset
    if not ids:
        raise DatasetNotFound(f"No {split} image has both its JPEG and its mask under {devkit}.")
    return SplitFiles(Path(devkit), split, tuple(ids), int(image_size), subset)


def load_split(split, image_size, root=None, size=None, seed=0, progress=True, subset=None):
    """Decode a split once into a :class:`VOCSplit`, each image resized so its long side is at most
    ``image_size``: the book's subset by default (``subset``, ``SEGLAB_SPLIT``), or a balanced subset of ``size``."""
    return split_files(split, image_size, root, size, seed, subset).load(progress)


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
