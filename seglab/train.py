"""A small training loop (SGD or AdamW, poly schedule, AMP on CUDA), evaluation and single-image prediction."""

import math
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from seglab.augment import eval_batches, normalize, train_batches
from seglab.metrics import confusion_matrix, scores


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


def train(model, split, mode, seed=0, optimizer="sgd", lr=None, progress=True):
    """Train ``model`` on ``split`` for ``mode.iters`` iterations of ``mode.batch`` random crops.

    Returns the history: per iteration the loss, learning rate, elapsed seconds and images per second."""
    device, lr = mode.device, lr or mode.lr
    if mode.batch < 2:
        raise ValueError(f"Training needs a batch of at least 2 (got {mode.batch}): BatchNorm cannot normalise the "
                         "single value per channel of pooled branches (PPM, ASPP's image pool) at batch 1. Use "
                         "dataclasses.replace(MODE, batch=2) or more.")
    model.to(device).train()
    opt = make_optimizer(model, optimizer, lr)
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history = {"loss": [], "lr": [], "time": [], "images_per_s": []}
    start = time.perf_counter()
    batches = train_batches(split, mode.batch, mode.iters, mode.crop, device, seed)
    bar = tqdm(batches, total=mode.iters, desc="training", disable=not progress)
    for it, (images, masks) in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = poly_lr(lr, it, mode.iters)
        tick = time.perf_counter()
        try:
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                loss = model.loss(images, masks)
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
                f"CUDA ran out of memory at iteration {it + 1} with batch {mode.batch} and crop "
                f"{mode.crop}x{mode.crop}. Lower the batch size or the crop (the two knobs of the mode), e.g. "
                f"MODE = dataclasses.replace(MODE, batch={max(2, mode.batch // 2)}).") from error
        if amp:
            torch.cuda.synchronize()
        now = time.perf_counter()
        history["loss"].append(loss.item())
        history["lr"].append(opt.param_groups[0]["lr"])
        history["time"].append(now - start)
        history["images_per_s"].append(mode.batch / (now - tick))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return history


@torch.no_grad()
def evaluate(model, split, mode, num_classes=21, progress=True):
    """mIoU, per-class IoU and pixel accuracy over ``mode.val_images`` validation images (all if None)."""
    model.to(mode.device).eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    n = len(split) if mode.val_images is None else min(mode.val_images, len(split))
    batches = eval_batches(split, mode.eval_batch, mode.device, limit=n)
    for images, masks in tqdm(batches, total=math.ceil(n / mode.eval_batch), desc="evaluating",
                              disable=not progress):
        try:
            with torch.autocast("cuda", dtype=torch.float16, enabled=mode.device.startswith("cuda")):
                pred = model(images).max(1).indices  # max().indices: much faster than argmax on CPU
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(
                f"CUDA ran out of memory evaluating batches of {mode.eval_batch} images of "
                f"{images.shape[-2]}x{images.shape[-1]}. Lower the evaluation batch, e.g. "
                f"MODE = dataclasses.replace(MODE, eval_batch={max(1, mode.eval_batch // 2)}).") from error
        confusion += confusion_matrix(pred, masks, num_classes)
    return {**scores(confusion), "images": n}


@torch.no_grad()
def predict(model, image, device=None):
    """Class map (H, W) for one uint8 image (3, H, W)."""
    device = device or next(model.parameters()).device
    model.eval()
    return model(normalize(image[None].to(device)))[0].max(0).indices.cpu()
