"""Pictures: palette overlays, image / truth / prediction grids, training curves and a validation browser."""

import matplotlib.pyplot as plt
import numpy as np
import torch

from seglab.voc import CLASSES, IGNORE, PALETTE


def colorize(mask):
    """Class map (H, W) -> RGB uint8 (H, W, 3) in the VOC palette (void is cream-white)."""
    return PALETTE[np.asarray(mask, dtype=np.int64).clip(0, 255)]


def overlay(image, mask, alpha=0.55):
    """Blend the palette colours of ``mask`` over a uint8 (3, H, W) image; void and background stay clear."""
    rgb = np.asarray(image.permute(1, 2, 0) if torch.is_tensor(image) else image).astype(np.float32)
    mask = np.asarray(mask)
    tint = (mask != 0) & (mask != IGNORE)
    rgb[tint] = (1 - alpha) * rgb[tint] + alpha * colorize(mask)[tint]
    return rgb.astype(np.uint8)


def legend(ax, classes_present):
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[c] / 255) for c in classes_present]
    ax.legend(handles, [CLASSES[c] for c in classes_present], loc="center left", bbox_to_anchor=(1, 0.5),
              fontsize=8, frameon=False)


def show_predictions(samples, predictions=None, titles=("image", "ground truth", "prediction"), size=2.6):
    """Grid with one row per sample: image, ground-truth overlay and (if given) prediction overlay."""
    cols = 2 if predictions is None else 3
    fig, axes = plt.subplots(len(samples), cols, figsize=(size * cols + 1.5, size * len(samples)), squeeze=False)
    present = set()
    for row, (image, mask) in enumerate(samples):
        panels = [image.permute(1, 2, 0).numpy(), overlay(image, mask)]
        if predictions is not None:
            panels.append(overlay(image, predictions[row]))
            present |= set(np.unique(predictions[row]).tolist())
        present |= set(np.unique(mask).tolist())
        for col, panel in enumerate(panels):
            axes[row, col].imshow(panel)
            axes[row, col].set_axis_off()
            if row == 0:
                axes[0, col].set_title(titles[col])
    legend(axes[0, -1], sorted(c for c in present if c not in (0, IGNORE)))
    fig.tight_layout()
    return fig


def plot_history(history, title="training"):
    """Loss, learning rate and throughput against iteration."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    its = np.arange(1, len(history["loss"]) + 1)
    for ax, key, label in zip(axes, ("loss", "lr", "images_per_s"), ("loss", "learning rate", "images / s")):
        ax.plot(its, history[key])
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
    axes[0].set_title(title)
    fig.tight_layout()
    return fig


def prediction_browser(model, split, count=None, device="cpu"):
    """An ipywidgets slider over validation images showing image, ground truth and prediction.

    Without ipywidgets (or a front end for them) it falls back to a static grid of the first four images."""
    from seglab.train import predict
    count = len(split) if count is None else min(count, len(split))
    predictions = [predict(model, split[i][0], device) for i in range(count)]
    try:
        import ipywidgets as widgets
    except ImportError:
        print("ipywidgets is not installed: showing a static figure instead.")
        return show_predictions([split[i] for i in range(min(4, count))], predictions[:4])

    def show(index):
        fig = show_predictions([split[index]], [predictions[index]], size=3.2)
        fig.suptitle(f"validation image {split.ids[index]}", y=1.02)
        plt.show()

    slider = widgets.IntSlider(min=0, max=count - 1, value=0, description="image", continuous_update=False)
    return widgets.interactive(show, index=slider)
