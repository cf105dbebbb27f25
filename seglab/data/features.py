"""Cached backbone features, the heart of the quick protocol.

A frozen backbone gives the same features for an image every time, so they are computed once per split (train
images and their mirror images, val images) and kept on disk under the cache directory. Every head then trains
on exactly the same inputs, and a chapter's training takes seconds instead of hours.

A cache file holds its key: backbone, weights hash, output stride, canvas size, the ids, a fingerprint of the image
and mask files (sizes and modification times) and whether mirrors are included. Beside the features it keeps their
per-channel statistics (``channel_stats``), so that standardizing does not read every feature again on each load.
A file made with other settings is *stale*; a file that does not load or whose contents do not match their recorded
SHA-256 is *corrupt*. Either is said and rebuilt. Files are written atomically (a temporary file, then a rename), so
an interrupted run never leaves a half-written cache behind.
"""

import hashlib
import os
import time
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from seglab.data.atomic import remove_orphans, replacing
from seglab.data.augment import normalize
from seglab.data.download import cache_dir
from seglab.mode import torch_threads

FORMAT = 4  # bump when the file layout or the way features are computed changes
# The CPU's convolution kernels split their sums by thread, so features built at another thread count differ in
# their last bits (measured: a one-thread cache moved a chapter's mIoU by 0.3 points). Every cache is therefore
# built at this many threads, whatever the machine: a reader's cache has the bytes the book's pages were made from.
BUILD_THREADS = 2


@dataclass
class FeatureSet:
    """Features of one split: ``levels[i]`` is (n, c_i, h_i, w_i) float16, ``masks`` (n, S, S) uint8 with void and
    canvas padding at 255, ``boxes`` (n, 4) the image's (top, left, height, width) on the canvas. Sample k is image
    ``ids[k]``, mirrored if ``flipped[k]``."""

    ids: list
    flipped: torch.Tensor  # (n,) bool
    levels: list
    masks: torch.Tensor
    boxes: torch.Tensor
    originals: list = None  # val: the original masks VOC scores against (``voc.SplitFiles.original_masks``)
    bands: list = None  # beside them: their boundary bands, computed once
    stats: list = None  # per level, (mean, std) of each channel over this set (``channel_stats``), kept in the cache

    _finite: bool = field(default=False, repr=False, compare=False)  # checked by check_finite, once

    def __len__(self):
        return len(self.ids)

    def check_finite(self, what="the features"):
        """Refuse NaN or infinite values in the levels (see ``check_finite``); checked once per set, since the
        training and evaluation entry points call it each time and the levels do not change."""
        if not self._finite:
            check_finite(self.levels, what)
            self._finite = True

    @property
    def channels(self):
        return [int(level.shape[1]) for level in self.levels]

    def batch(self, index, device="cpu"):
        """(features: list of float32 (b, c, h, w), masks: int64 (b, S, S)) for the samples ``index``."""
        features = [level[index].to(device, non_blocking=True).float() for level in self.levels]
        return features, self.masks[index].to(device, non_blocking=True).long()

    def crops(self, index, crop, generator, device="cpu"):
        """Like ``batch``, but each sample is a random ``crop`` x ``crop`` window (canvas pixels) of its features and
        mask, placed on the grid of the coarsest level so that every level is cut at the same place, and inside
        the image where it can be. The feature-space analogue of training on random crops."""
        canvas, grid = self.masks.shape[-1], self.masks.shape[-1] // self.levels[-1].shape[-1]
        if crop % grid or crop > canvas:
            raise ValueError(f"crop must be a multiple of {grid} (the coarsest stride) and at most {canvas}, got {crop}.")
        features, masks = [[] for _ in self.levels], []
        for k in index.tolist():
            corner = []
            for start, length in (self.boxes[k, [0, 2]].tolist(), self.boxes[k, [1, 3]].tolist()):
                last = (canvas - crop) // grid  # the window must stay on the canvas
                lo = min(start // grid, last)
                hi = max(lo, min(last, -(-(start + length - crop) // grid)))
                corner.append(grid * int(torch.randint(lo, hi + 1, (1,), generator=generator)))
            y, x = corner
            for store, level in zip(features, self.levels):
                s = canvas // level.shape[-1]  # this level's stride on the canvas
                store.append(level[k, :, y // s:(y + crop) // s, x // s:(x + crop) // s])
            masks.append(self.masks[k, y:y + crop, x:x + crop])
        return ([torch.stack(store).to(device).float() for store in features],
                torch.stack(masks).to(device).long())


def channel_stats(features, chunk=64):
    """Per level, the mean and standard deviation of each channel over every position of every sample: a list of
    (mean, std) float32 tensors of shape (c,). Computed in chunks of samples, in float64 sums."""
    stats = []
    for level in features.levels:
        total = torch.zeros(level.shape[1], dtype=torch.float64)
        square = torch.zeros_like(total)
        for start in range(0, len(level), chunk):
            x = level[start:start + chunk].double()
            total += x.sum((0, 2, 3))
            square += (x * x).sum((0, 2, 3))
        count = level.shape[0] * level.shape[2] * level.shape[3]
        mean = total / count
        stats.append((mean.float(), (square / count - mean * mean).clamp_min(1e-12).sqrt().float()))
    return stats


def standardized(features, stats, chunk=64):
    """A copy of ``features`` whose every channel is (x - mean) / std with the train set's ``stats``
    (``channel_stats``): each level then has zero mean and unit variance per channel, whatever the backbone's
    scale (Lite0's stages end in a linear projection whose channels have standard deviations of 2 to 11)."""
    levels = []
    for level, (mean, std) in zip(features.levels, stats):
        out = torch.empty_like(level)
        for start in range(0, len(level), chunk):
            x = level[start:start + chunk].float()
            out[start:start + chunk] = ((x - mean[:, None, None]) / std[:, None, None]).to(level.dtype)
        levels.append(out)
    return replace(features, levels=levels, stats=None, _finite=False)


def check_finite(tensors, what, chunk=2**24):
    """Refuse NaN or infinite values anywhere in ``tensors`` (the levels of a FeatureSet, a split's images), naming
    the level and the samples: a head trained or scored on them would learn or report nonsense without a word.
    Checked once at entry, in chunks of samples (little memory); integer tensors (uint8 images) are always finite."""
    for level, t in enumerate(tensors):
        if not (torch.is_tensor(t) and t.is_floating_point()) or t.numel() == 0:
            continue
        t = t.reshape(len(t), -1) if t.dim() else t.reshape(1, 1)  # (samples, values)
        step = max(1, chunk // t.shape[1])
        for start in range(0, len(t), step):
            finite = torch.isfinite(t[start:start + step]).all(1)
            if not finite.all():
                bad = (start + torch.nonzero(~finite).flatten()).tolist()
                where = f"level {level}, " if len(tensors) > 1 else ""
                raise ValueError(f"{what[0].upper() + what[1:]} hold NaN or infinite values ({where}sample(s) "
                                 f"{bad[:5]}{' ...' if len(bad) > 5 else ''}): training or scoring on them would give "
                                 "meaningless numbers. Rebuild them (delete the feature cache file, or re-decode the "
                                 "images) and check the backbone's weights.")


def cache_key(backbone, files, flip):
    """Everything the features depend on: the backbone and its weights, the canvas, the ids, and the files
    themselves (their sizes and modification times), so that an edited image or mask makes the cache stale."""
    weights = digest([t.detach().cpu() for t in backbone.state_dict().values()])
    return {"format": FORMAT, "backbone": backbone.name, "weights": weights, "output_stride": backbone.output_stride,
            "canvas": int(files.image_size), "ids": list(files.ids), "files": files.fingerprint(), "flip": bool(flip)}


def digest(tensors):
    """SHA-256 of the tensors' bytes, in order: detects a damaged file that still loads."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def contents(features):
    """The tensors of a feature set that its cache file's SHA-256 covers, in order."""
    return [*features.levels, features.masks, features.flipped, features.boxes,
            *(t for pair in features.stats for t in pair)]


def cache_path(backbone, files):
    subset = "" if files.subset == "book" else "-" + files.subset.replace(" ", "")
    name = f"{backbone.name}-os{backbone.output_stride}-{files.image_size}px-{files.name}{subset}.pt"
    return cache_dir() / "features" / name


@torch.no_grad()
@torch_threads(BUILD_THREADS)
def compute(backbone, split, flip, batch=16, device="cpu", progress=True):
    """Run the frozen backbone over a split (and its mirror images), at ``BUILD_THREADS`` threads: a
    :class:`FeatureSet`."""
    backbone = backbone.to(device).eval()
    views = [False, True] if flip else [False]
    levels, masks, flipped, ids, boxes = None, [], [], [], []
    bar = tqdm(total=len(split) * len(views), desc="computing features", unit="image", disable=not progress)
    for mirrored in views:
        for start in range(0, len(split), batch):
            images = split.images[start:start + batch].to(device)  # (b, 3, S, S) uint8
            labels = split.masks[start:start + batch]  # (b, S, S) uint8
            if mirrored:  # mirror the whole canvas: the padding moves to the left, and stays void in the mask
                images, labels = images.flip(-1), labels.flip(-1)
            out = [f.half().cpu() for f in backbone(normalize(images))]
            levels = [[] for _ in out] if levels is None else levels
            for store, f in zip(levels, out):
                store.append(f)
            masks.append(labels)
            ids += split.ids[start:start + batch]
            flipped += [mirrored] * len(labels)
            for h, w in split.sizes[start:start + batch].tolist():  # the image sits top-left, or top-right mirrored
                boxes.append([0, split.images.shape[-1] - w if mirrored else 0, h, w])
            bar.update(len(labels))
    bar.close()
    return FeatureSet(ids, torch.tensor(flipped), [torch.cat(store) for store in levels], torch.cat(masks),
                      torch.tensor(boxes))


def cached(backbone, files, flip=False, device="cpu", progress=True, split=None):
    """The features of the split ``files`` (a ``seglab.data.voc.SplitFiles``) under ``backbone``, from the cache if it
    holds them for exactly these settings and files, else computed now and cached. Says which, and why a cache file
    was rebuilt. The images are decoded only when the cache must be built (or taken from ``split`` if decoded)."""
    path, key = cache_path(backbone, files), cache_key(backbone, files, flip)
    shown = f"{files.name} features of {backbone.name} (seglab cache, features/{path.name})"
    if path.is_file():
        problem = None
        try:
            stored = torch.load(path, weights_only=True)
            if stored.get("key") != key:
                changed = sorted(k for k in key if stored.get("key", {}).get(k) != key[k])
                problem = f"stale: it was made with other settings ({', '.join(changed)} changed)"
            else:
                features = FeatureSet(stored["ids"], stored["flipped"], stored["levels"], stored["masks"],
                                      stored["boxes"], stats=[tuple(pair) for pair in stored["stats"]])
                if stored["sha256"] != digest(contents(features)):
                    problem = "corrupt: its contents do not match their recorded SHA-256"
        except Exception as error:  # truncated, not a torch file, missing fields
            problem = f"corrupt: it does not load ({type(error).__name__})"
        if problem is None:
            if progress:
                print(f"loaded the {shown}: {len(features)} samples")
            return features
        print(f"the cached {shown} is {problem}; rebuilding it")
    check_writable(path.parent)  # before the minutes of computing, not after
    start = time.perf_counter()
    features = compute(backbone, split if split is not None else files.load(progress), flip, device=device,
                       progress=progress)
    features.stats = channel_stats(features)
    seconds = time.perf_counter() - start
    save(path, key, features)
    if progress:
        print(f"computed the {shown} in {seconds:.0f} s: {len(features)} samples"
              + (" (every image and its mirror)" if flip else ""))
    return features


def check_writable(folder):
    """Make ``folder`` and check that a file can be written in it, or say clearly where and how to fix it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OSError(f"The feature cache folder {folder} is not writable ({error.strerror or error}). Point "
                      "SEGLAB_CACHE at a writable folder, e.g. export SEGLAB_CACHE=~/.cache/seglab.") from None


def save(path, key, features):
    """Write atomically (``seglab.data.atomic``). A failed write (a full disk) says what failed and where, and leaves
    neither a partial cache nor its temporary file behind; orphan temporary files of killed processes, about the
    size of the cache each, are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    payload = {"key": key, "ids": features.ids, "flipped": features.flipped, "levels": features.levels,
               "masks": features.masks, "boxes": features.boxes, "stats": [list(pair) for pair in features.stats],
               "sha256": digest(contents(features))}
    try:
        with replacing(path) as file:
            torch.save(payload, file)
    except (OSError, RuntimeError) as error:
        raise OSError(f"Writing the feature cache {path} failed ({error}); the disk may be full. Free "
                      f"{nbytes(features) / 2**20:.0f} MiB there, or point SEGLAB_CACHE at another disk.") from error


def nbytes(features):
    return sum(level.numel() * level.element_size() for level in features.levels) + features.masks.numel()


def describe(features):
    """A short description: samples, level shapes and memory."""
    shapes = ", ".join(f"C{i + 2} {tuple(level.shape[1:])}" for i, level in enumerate(features.levels))
    return f"{len(features)} samples; {shapes}; {nbytes(features) / 2**20:.0f} MiB in float16"

