"""Pictures: palette overlays, image / truth / prediction grids, training curves and a validation browser."""

import matplotlib.pyplot as plt
import numpy as np
import torch

from seglab.data.voc import CLASSES, IGNORE, PALETTE

plt.rcParams["figure.autolayout"] = True  # the book's figures are laid out tightly (no tight_layout() per figure)


def colorize(mask):
    """Class map (H, W) -> RGB uint8 (H, W, 3) in the VOC palette (void is cream-white)."""
    return PALETTE[np.asarray(mask, dtype=np.int64).clip(0, 255)]


def overlay(image, mask, alpha=0.55):
    """Blend the palette colours of ``mask`` over a uint8 (3, H, W) image. Background stays clear; void (255:
    object outlines, unlabelled regions, padding) takes VOC's own cream, so what the loss ignores is visible."""
    rgb = np.asarray(image.permute(1, 2, 0) if torch.is_tensor(image) else image).astype(np.float32)
    mask = np.asarray(mask)
    tint = mask != 0
    rgb[tint] = (1 - alpha) * rgb[tint] + alpha * colorize(mask)[tint]
    return rgb.astype(np.uint8)


def legend(ax, classes_present):
    """Palette swatches for the given class indices (IGNORE is shown as "void")."""
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[c] / 255, ec="0.6", lw=0.5) for c in classes_present]
    names = ["void" if c == IGNORE else CLASSES[c] for c in classes_present]
    ax.legend(handles, names, loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8, frameon=False)


def panel(ax, image, title=None, fontsize=9):
    """An image in a grid of panels (``None``: what is drawn already): no axes, an optional title."""
    if image is not None:
        ax.imshow(image)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize)


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
    legend(axes[0, -1], sorted(c for c in present if c != 0))  # void last: IGNORE = 255 sorts after the classes
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


def prediction_browser(split, predictions, count=16):
    """An ipywidgets slider over validation images showing image, ground truth and prediction. ``predictions`` are
    class maps on the split's padded canvas (n, S, S), as ``evaluate`` returns them.

    Each view is rendered once to a JPEG, and the slider is linked to a ``Stack`` of them in the browser
    (``jslink``): no kernel callback, so it also works in the static book, offline. Without ipywidgets it falls
    back to a static grid of the first four images."""
    count = min(count, len(split), len(predictions))

    def sample(i):  # the image without its canvas padding, its mask and the prediction cropped alike
        h, w = split.sizes[i].tolist()
        return split[i], predictions[i, :h, :w].long()

    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        print("ipywidgets is not installed: showing a static figure instead.")
        shown = [sample(i) for i in range(min(4, count))]
        return show_predictions([s for s, _ in shown], [p for _, p in shown])

    figures = []
    for i in range(count):
        truth, prediction = sample(i)
        fig = show_predictions([truth], [prediction], size=2.6)
        fig.suptitle(f"validation image {split.ids[i]} ({i + 1} of {count})", y=1.0)
        figures.append(fig)
    return figure_slider(figures, "image")


def figure_slider(figures, description):
    """A slider that switches between ``figures`` (closed here), in the browser: each is rendered once to a JPEG
    and the slider is linked to a ``Stack`` of them (``jslink``), so no kernel is needed and it works in the
    static book, offline."""
    import io

    import ipywidgets as widgets
    pictures = []
    for fig in figures:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="jpeg", dpi=72, bbox_inches="tight", pil_kwargs={"quality": 80})
        plt.close(fig)
        pictures.append(widgets.Image(value=buffer.getvalue(), format="jpeg"))
    stack = widgets.Stack(pictures, selected_index=0)
    slider = widgets.IntSlider(min=0, max=len(figures) - 1, value=0, description=description)
    widgets.jslink((slider, "value"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])


def plot_class_iou(iou, title="IoU per class", reference=None, reference_label="reference"):
    """Bars of per-class IoU (%) in the VOC palette; classes absent from truth and prediction (NaN) are marked.
    ``reference`` (another run's per-class IoU) is drawn as black ticks over the bars."""
    values = np.array([np.nan if v is None else v for v in iou], dtype=float) * 100
    fig, ax = plt.subplots(figsize=(12, 3.2))
    x = np.arange(len(CLASSES))
    ax.bar(x, np.nan_to_num(values), color=PALETTE[: len(CLASSES)] / 255, edgecolor="0.3", linewidth=0.5)
    for i in np.flatnonzero(np.isnan(values)):
        ax.annotate("n/a", (i, 1), ha="center", fontsize=7, color="0.4")
    if reference is not None:
        ref = np.array([np.nan if v is None else v for v in reference], dtype=float) * 100
        ax.scatter(x, ref, marker="_", s=250, color="k", linewidths=2, label=reference_label, zorder=3)
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.set_xticks(x, CLASSES, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title} (mean {np.nanmean(values):.1f}%)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_comparison(table, columns=("trained params (k)", "trained MFLOPs", "boundary mIoU (%)", "mIoU (%)"),
                    title=None):
    """Horizontal bars, one panel per column of a ``comparison.frame`` table; the last head is highlighted. The
    mIoU bars carry the seed-to-seed standard deviation as error bars."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 0.45 * len(table) + 1.4), sharey=True)
    colors = ["C7"] * (len(table) - 1) + ["C3"]
    for ax, column in zip(axes, columns):
        error = table["± sd"].astype(float).fillna(0) if column == "mIoU (%)" and "± sd" in table else None
        ax.barh(table.index, table[column], color=colors, xerr=error, error_kw={"elinewidth": 1, "capsize": 2})
        ax.set_xlabel(column)
        for y, value in enumerate(table[column]):
            ax.annotate(f"{value:g}", (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.margins(x=0.25)
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def sortable_table(frame, caption=""):
    """An HTML table whose columns sort on click, self-contained (inline script), so it sorts in the static book."""
    import html
    import uuid

    from IPython.display import HTML
    table_id = f"sortable-{uuid.uuid4().hex[:8]}"
    head = "".join(f"<th style='cursor:pointer' title='click to sort'>{html.escape(str(c))} &#x2195;</th>"
                   for c in [frame.index.name or ""] + list(frame.columns))
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in [index, *row]) + "</tr>"
                   for index, row in zip(frame.index, frame.itertuples(index=False)))
    script = f"""<script>(function() {{
  const table = document.getElementById("{table_id}");
  table.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {{
    const body = table.tBodies[0], rows = Array.from(body.rows);
    const up = th.dataset.dir !== "up"; th.dataset.dir = up ? "up" : "down";
    const key = r => {{ const t = r.cells[col].textContent, n = parseFloat(t); return isNaN(n) ? t : n; }};
    rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
    rows.forEach(r => body.appendChild(r));
  }}));
}})();</script>"""
    caption = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return HTML(f"<table id='{table_id}' class='dataframe'>{caption}<thead><tr>{head}</tr></thead>"
                f"<tbody>{rows}</tbody></table>{script}")


def attention_grid(views, size=2.4, cmap="magma", shared_scale=False):
    """One row per view: the image with its query pixel marked, then each of the view's maps over the image.

    A view is a dict: ``image`` uint8 (3, h, w) (as ``split[i]`` returns it), ``query`` (y, x) in image pixels or
    None (maps that belong to no query, e.g. a global context map), ``maps`` {title: (gh, gw) map on the feature
    grid of the canvas}, optional ``canvas`` (the canvas side the grid covers; default the image's long side) and
    ``label``. Maps are upsampled to the canvas, cropped to the image and drawn with alpha over it.

    Each map has its own colour scale (its min to its max), unless the view's ``shared_scale`` (default: the
    argument) is true: then all maps of the view are drawn on one scale, 0 to the largest value of any of them,
    so that the panels of the row can be compared by colour, and the row's label says so. Use it only for maps in
    the same units (e.g. attention weights), not for a similarity next to a weight."""
    cols = 1 + max(len(v["maps"]) for v in views)
    fig, axes = plt.subplots(len(views), cols, figsize=(size * cols, size * len(views)), squeeze=False)
    for row, view in enumerate(views):
        image = view["image"]
        h, w = image.shape[-2:]
        rgb = image.permute(1, 2, 0).numpy() if torch.is_tensor(image) else np.asarray(image)
        on_canvas = {title: _upsampled(grid, view.get("canvas", max(h, w)))[:h, :w]
                     for title, grid in view["maps"].items()}
        label = view.get("label", "image")
        scale = {}
        if view.get("shared_scale", shared_scale) and on_canvas:
            scale = dict(vmin=0.0, vmax=max(float(m.max()) for m in on_canvas.values()))
            label = f"{label}\n(maps on one scale, 0 to {scale['vmax']:.3g})"
        panel(axes[row, 0], rgb, label)
        for col, (title, m) in enumerate(on_canvas.items(), start=1):
            axes[row, col].imshow(rgb)
            axes[row, col].imshow(m, cmap=cmap, alpha=0.6, **scale)
            panel(axes[row, col], None, title if row == 0 or view.get("titles_each_row") else None)
        for ax in axes[row, : len(view["maps"]) + 1]:
            if view.get("query") is not None:
                ax.plot(view["query"][1], view["query"][0], marker="o", ms=8, mfc="cyan", mec="k", mew=1.5)
        for ax in axes[row, len(view["maps"]) + 1:]:
            ax.set_axis_off()
    return fig


def _upsampled(grid, canvas):
    """A (gh, gw) map -> (canvas, canvas) numpy, nearest-neighbour (each cell of the grid stays visible)."""
    grid = torch.as_tensor(np.asarray(grid, dtype=np.float32))
    return torch.nn.functional.interpolate(grid[None, None], size=(canvas, canvas), mode="nearest")[0, 0].numpy()


def attention_explorer(views, description="query", size=2.4, shared_scale=False):
    """A slider over ``views`` (see :func:`attention_grid`, also for ``shared_scale``): pick a query pixel, see
    where it attends.

    Like the prediction browser, each view is rendered once to a JPEG and the slider is linked to a ``Stack`` in
    the browser (``jslink``), so it works in the static book, offline. Without ipywidgets: the static grid."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        print("ipywidgets is not installed: showing a static figure instead.")
        return attention_grid(views[:4], size=size, shared_scale=shared_scale)
    return figure_slider([attention_grid([dict(view, titles_each_row=True)], size=size, shared_scale=shared_scale)
                          for view in views], description)
