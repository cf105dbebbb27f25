"""Training and evaluation for both protocols (a head on cached features, or a whole segmentor end to end): one
loop (SGD or AdamW, poly schedule, AMP on CUDA), confusion-matrix scores, and single-image prediction."""

import math
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from seglab.data.augment import epoch_batches, eval_batches, normalize, train_batches
from seglab.data.features import check_finite
from seglab.metrics import VOCScorer, confusion_matrix, scores
from seglab.model import head_losses
from seglab.nn.blocks import resize


def seed_everything(seed=0):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def poly_lr(base_lr, it, iters, power=0.9, min_lr=1e-4):
    """mmsegmentation's poly schedule: decays from base_lr to min_lr over ``iters`` iterations."""
    return (base_lr - min_lr) * (1 - it / iters) ** power + min_lr


def make_optimizer(model, name, lr, weight_decay=None):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4 if weight_decay is None else weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01 if weight_decay is None else weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}.")


def train(model, split, mode, seed=0, optimizer=None, lr=None, progress=True):
    """End-to-end training (brief mode): ``model`` (a ``Segmentor``) on ``mode.iters`` batches of ``mode.batch``
    random crops of ``split``. Returns the history: per iteration the losses, learning rate, elapsed seconds and
    images per second."""
    check_batch(mode.batch)
    check_finite([split.images], "the train images")
    model.to(mode.device).train()
    batches = train_batches(split, mode.batch, mode.iters, mode.crop, mode.device, seed)
    return fit(model, batches, lambda batch: model.losses(*batch), mode, optimizer, lr, progress)


def train_head(head, features, mode, seed=0, optimizer=None, lr=None, progress=True):
    """The quick protocol: ``head`` alone, trained on cached backbone ``features`` (a ``FeatureSet``) for
    ``mode.iters`` batches of ``mode.batch`` samples, drawn in seeded epochs, each a random ``mode.crop`` window
    (whole canvases if ``mode.crop`` is None). Same history as ``train``."""
    check_batch(mode.batch)
    features.check_finite("the train features")
    head.to(mode.device).train()
    generator = torch.Generator().manual_seed(seed)
    batches = (features.batch(index, mode.device) if mode.crop is None
               else features.crops(index, mode.crop, generator, mode.device)
               for index in epoch_batches(len(features), mode.batch, mode.iters, generator))
    return fit(head, batches, lambda batch: head_losses(head, *batch), mode, optimizer, lr, progress)


def check_batch(batch):
    if batch < 2:
        raise ValueError(f"Training needs a batch of at least 2 (got {batch}): BatchNorm cannot normalise the "
                         "single value per channel of pooled branches (PPM, ASPP's image pool) at batch 1. Use "
                         "dataclasses.replace(MODE, batch=2) or more.")


def fit(module, batches, losses_of, mode, optimizer=None, lr=None, progress=True):
    """The loop shared by both protocols: poly schedule, AMP on CUDA, a finite-loss check, clear OOM errors."""
    lr = lr or mode.lr
    opt = make_optimizer(module, optimizer or mode.optimizer, lr)
    amp = mode.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history = {"loss": [], "lr": [], "time": [], "images_per_s": [], "terms": {}}
    start = time.perf_counter()
    bar = tqdm(batches, total=mode.iters, desc="training", disable=not progress)
    for it, batch in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = poly_lr(lr, it, mode.iters)
        tick = time.perf_counter()
        try:
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                losses = losses_of(batch)
                loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"The loss became {loss.item()} at iteration {it + 1} of {mode.iters} "
                                         f"(lr {opt.param_groups[0]['lr']:.2e}); training stopped. Try a smaller "
                                         "learning rate, or check the inputs for NaN.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(
                f"CUDA ran out of memory at iteration {it + 1} with batch {mode.batch}"
                + (f" and crop {mode.crop}x{mode.crop}" if mode.crop else "") + ". Lower the batch size"
                + (" or the crop (the two knobs of the mode)" if mode.crop else "") + ", e.g. "
                f"MODE = dataclasses.replace(MODE, batch={max(2, mode.batch // 2)}).") from error
        if amp:
            torch.cuda.synchronize()
        now = time.perf_counter()
        history["loss"].append(loss.item())
        for name, value in losses.items():
            history["terms"].setdefault(name, []).append(value.item())
        history["lr"].append(opt.param_groups[0]["lr"])
        history["time"].append(now - start)
        history["images_per_s"].append(mode.batch / (now - tick))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return history


@torch.no_grad()
def evaluate(model, split, mode, num_classes=21, progress=True):
    """End-to-end evaluation of ``mode.val_images`` validation images (all if None): see ``confusion_scores``, with
    the class map of each image (on its padded canvas, uint8) under ``predictions``."""
    model.to(mode.device).eval()
    n = len(split) if mode.val_images is None else min(mode.val_images, len(split))
    check_finite([split.images[:n]], "the val images")
    batches = eval_batches(split, mode.eval_batch, mode.device, limit=n)
    boxes = [(0, 0, h, w) for h, w in split.sizes[:n].tolist()]  # the image sits top-left on its canvas
    return confusion_scores(lambda images: model(images), batches, n, mode, num_classes, progress,
                            scorer=voc_scorer(split, num_classes), boxes=boxes)


@torch.no_grad()
def evaluate_head(head, features, mode, num_classes=21, progress=True):
    """Evaluation on cached features: the head's logits resized to the canvas, scored like ``evaluate``."""
    head.to(mode.device).eval()
    n = len(features) if mode.val_images is None else min(mode.val_images, len(features))
    features.check_finite("the val features")
    batches = (features.batch(slice(s, min(s + mode.eval_batch, n)), mode.device)
               for s in range(0, n, mode.eval_batch))
    size = features.masks.shape[-2:]  # the canvas: logits are resized to it, as the Segmentor does to the image
    return confusion_scores(lambda f: resize(head(f), size), batches, n, mode, num_classes, progress,
                            scorer=voc_scorer(features, num_classes), boxes=features.boxes[:n].tolist())


def voc_scorer(samples, num_classes):
    """A ``VOCScorer`` over the original masks ``samples`` carry (a val ``VOCSplit`` or ``FeatureSet`` that
    ``chapter.prepare`` gave them), or None: then scores are of the masks on the canvas (train-set checks)."""
    originals = getattr(samples, "originals", None)
    return None if originals is None else VOCScorer(originals, num_classes, bands=samples.bands)


def confusion_scores(logits_of, batches, n, mode, num_classes, progress, scorer=None, boxes=None):
    """mIoU, per-class IoU and pixel accuracy of the first ``n`` samples. With a ``scorer`` (val samples that carry
    their original masks) these are VOC's scores: every prediction resized to its image's original size and
    compared with its original mask, plus the confusion matrix, the boundary mIoU and per-image counts (see
    ``seglab.metrics.VOCScorer``). Without one, on the masks as they lie on the canvas."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    predictions, k = [], 0
    for inputs, masks in tqdm(batches, total=math.ceil(n / mode.eval_batch), desc="evaluating",
                              disable=not progress):
        try:
            with torch.autocast("cuda", dtype=torch.float16, enabled=mode.device.startswith("cuda")):
                logits = logits_of(inputs)  # (b, classes, S, S) on the canvas
                pred = logits.max(1).indices  # max().indices: much faster than argmax on CPU
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(
                f"CUDA ran out of memory evaluating batches of {mode.eval_batch}. Lower the evaluation batch, e.g. "
                f"MODE = dataclasses.replace(MODE, eval_batch={max(1, mode.eval_batch // 2)}).") from error
        if scorer is None:
            confusion += confusion_matrix(pred, masks, num_classes)
        else:
            for one in logits.cpu():
                scorer.add(k, one, boxes[k])
                k += 1
        predictions.append(pred.to(torch.uint8).cpu())
    found = scores(confusion) if scorer is None else scorer.result()
    return {**found, "images": n, "predictions": torch.cat(predictions)}


@torch.no_grad()
def predict(model, image, device=None):
    """Class map (H, W) for one uint8 image (3, H, W)."""
    device = device or next(model.parameters()).device
    model.eval()
    return model(normalize(image[None].to(device)))[0].max(0).indices.cpu()
