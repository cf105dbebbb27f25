"""Architecture figures: tensors as boxes drawn to scale, layers as labelled arrows, on one matplotlib axis.

Everything is in data coordinates; ``finish(ax)`` keeps the boxes' proportions and hides the axes. One palette
for every chapter: backbone features, the head's own (context) modules, the classifier and its logits."""

import math

import matplotlib.pyplot as plt

BACKBONE, HEAD, LOGITS, OP = "#c9d8ef", "#f6d6a8", "#f0b8b8", "white"
CHANNEL_SCALE, SIDE_SCALE = 0.075, 0.1  # tensor box: height per doubling of channels, width per doubling of the side


def box(ax, x, y, w, h, text="", color=OP, fontsize=7.5):
    """A w x h rectangle centred at (x, y), with ``text`` in its middle. Returns the patch."""
    patch = ax.add_patch(plt.Rectangle((x - w / 2, y - h / 2), w, h, facecolor=color, edgecolor="0.3", lw=0.9))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return patch


def tensor(ax, x, y, shape, name, color=BACKBONE, label="below", sep="\n", fontsize=7.5):
    """A tensor of ``shape`` (b, c, h, w), or (b, c, n) for n points, as a box centred at (x, y): height
    CHANNEL_SCALE * log2(c), width SIDE_SCALE * (log2(edge) + 1), edge = sqrt(positions) (w for a square map; a 1x1
    map stays visible), with "name<sep>shape" on its ``label`` side ("below", "above", "left", "right"). Returns the
    patch."""
    edge = math.sqrt(math.prod(shape[2:]))  # the side of a square with as many positions
    height, width = CHANNEL_SCALE * math.log2(shape[1]), SIDE_SCALE * (math.log2(edge) + 1)
    patch = box(ax, x, y, width, height, color=color)
    dx, dy = width / 2 + 0.06, height / 2 + 0.05
    x, y, ha, va = {"below": (x, y - dy, "center", "top"), "above": (x, y + dy, "center", "bottom"),
                    "left": (x - dx, y, "right", "center"), "right": (x + dx, y, "left", "center")}[label]
    ax.text(x, y, f"{name}{sep}{tuple(shape)}", ha=ha, va=va, fontsize=fontsize)
    return patch


def side(patch, where):
    """The middle of the ``where`` ("left", "right", "top" or "bottom") edge of a rectangle, as (x, y)."""
    x, y, w, h = patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()
    return {"left": (x, y + h / 2), "right": (x + w, y + h / 2), "top": (x + w / 2, y + h),
            "bottom": (x + w / 2, y)}[where]


def arrow(ax, start, end, text="", color="0.25", offset=(0, 0.04), fontsize=7, style="->"):
    """An arrow from ``start`` to ``end`` with ``text`` above its middle, shifted by ``offset``. Returns the
    annotation (``style="-"`` draws a plain line)."""
    props = dict(arrowstyle=style, color=color, lw=1, shrinkA=0, shrinkB=0)
    annotation = ax.annotate("", end, start, arrowprops=props)
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, ha="center",
                va="bottom", fontsize=fontsize, color=color)
    return annotation


def legend(ax, **kw):
    """The palette as a legend (three columns), titled with the scale of the tensor boxes."""
    entries = [(BACKBONE, "backbone features"), (HEAD, "head: context modules"), (LOGITS, "classifier: logits")]
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="0.3", lw=0.9) for c, _ in entries]
    return ax.legend(handles, [text for _, text in entries], ncol=3, fontsize=7.5, frameon=False, title_fontsize=7.5,
                     title="box height ∝ log2(channels), width ∝ log2(side) + 1", **kw)


def finish(ax, xlim, ylim, equal=True):
    """The diagram's extent, equal scales on both axes (boxes keep their proportions) and no axes."""
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    if equal:
        ax.set_aspect("equal")
    ax.set_axis_off()
