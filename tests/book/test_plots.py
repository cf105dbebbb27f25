import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from seglab.book import plots  # noqa: E402
from seglab.data.voc import PALETTE  # noqa: E402


def test_colorize_and_overlay_leave_background_clear_and_show_void_in_cream():
    mask = np.array([[0, 1], [15, 255]])
    assert plots.colorize(mask).tolist() == [[PALETTE[0].tolist(), PALETTE[1].tolist()],
                                             [PALETTE[15].tolist(), PALETTE[255].tolist()]]
    assert PALETTE[255].tolist() == [224, 224, 192]
    image = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    out = plots.overlay(image, mask, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100]  # background untouched
    assert out[0, 1].tolist() == [114, 50, 50]  # halfway to aeroplane red (128, 0, 0)
    assert out[1, 1].tolist() == [162, 162, 146]  # halfway to void's cream (224, 224, 192)


def test_legend_names_void():
    fig = plots.show_predictions([(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.tensor([[0, 1, 255, 255]] * 4))])
    names = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert names == ["aeroplane", "void"]


def test_figures_have_the_panels_they_promise():
    sample = (torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.long))
    assert len(plots.show_predictions([sample, sample], [torch.ones(8, 8, dtype=torch.long)] * 2).axes) == 6
    history = {"loss": [2.0, 1.0], "lr": [0.1, 0.05], "images_per_s": [3.0, 4.0], "time": [1.0, 2.0]}
    assert len(plots.plot_history(history).axes) == 3
    table = pd.DataFrame({"trained params (k)": [1.0, 2.0], "trained MFLOPs": [3.0, 4.0],
                          "boundary mIoU (%)": [5.0, 6.0], "mIoU (%)": [7.0, 8.0], "± sd": [0.5, None]},
                         index=pd.Index(["A", "B"], name="head"))
    assert len(plots.plot_comparison(table).axes) == 4


def test_prediction_browser_links_a_slider_to_one_rendered_view_per_image(devkit):
    import ipywidgets as widgets

    from seglab.data.voc import load_split
    split = load_split("val", 32, progress=False)
    predictions = torch.full((len(split), 32, 32), 7, dtype=torch.uint8)  # "car" everywhere, on the canvas
    browser = plots.prediction_browser(split, predictions, count=3)
    slider, stack = browser.children
    assert isinstance(slider, widgets.IntSlider) and (slider.min, slider.max) == (0, 2)
    assert isinstance(stack, widgets.Stack) and len(stack.children) == 3
    assert all(view.format == "jpeg" and view.value[:2] == b"\xff\xd8" for view in stack.children)
    # jslink acts in the browser, not the kernel: the link widget must exist, so the page carries it
    from ipywidgets.widgets.widget_link import Link
    links = [w for w in widgets.Widget.widgets.values() if isinstance(w, Link)]
    assert any(link.source == (slider, "value") and link.target == (stack, "selected_index") for link in links)


def test_class_iou_bars_mark_absent_classes_and_the_reference():
    iou = [0.9, 0.5] + [float("nan")] * 19
    fig = plots.plot_class_iou(iou, reference=[0.8, 0.1] + [None] * 19, reference_label="probe")
    ax = fig.axes[0]
    assert [round(p.get_height()) for p in ax.patches[:3]] == [90, 50, 0]
    assert sum(t.get_text() == "n/a" for t in ax.texts) == 19 and "(mean 70.0%)" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["probe"]


def test_sortable_table_is_self_contained_html():
    table = pd.DataFrame({"GFLOPs": [3.0, 10.0]}, index=pd.Index(["A", "B"], name="head"))
    html = plots.sortable_table(table, caption="heads")._repr_html_()
    assert "<script>" in html and "addEventListener" in html and html.count("<tr>") == 3 and "heads" in html


def attention_views():
    image = torch.zeros(3, 40, 64, dtype=torch.uint8)  # a landscape image on a 64-px canvas
    grid = torch.zeros(4, 4)
    grid[0, 3] = 1  # one hot cell: the top-right 16x16 block of the canvas
    return [dict(image=image, query=(10, 50), maps={"pass 1": grid, "pass 2": grid / 2}, canvas=64, label="q"),
            dict(image=image, query=None, maps={"context": grid}, canvas=64)]


def test_attention_grid_draws_maps_on_the_canvas_cropped_to_the_image():
    fig = plots.attention_grid(attention_views())
    axes = np.array(fig.axes).reshape(2, 3)
    drawn = axes[0, 1].get_images()[-1].get_array()
    assert drawn.shape == (40, 64)  # the canvas map, cropped to the image
    assert drawn[:16, 48:].min() == 1 and drawn[16:].max() == 0 and drawn[:, :48].max() == 0
    assert len(axes[0, 0].lines) == 1 and len(axes[1, 0].lines) == 0  # the query is marked only where there is one
    assert not axes[1, 2].get_images()  # the second view has one map: its last panel stays empty


def test_attention_explorer_links_a_slider_to_one_picture_per_view():
    import ipywidgets
    box = plots.attention_explorer(attention_views())
    slider, stack = box.children
    assert slider.max == 1 and len(stack.children) == 2
    assert all(isinstance(c, ipywidgets.Image) and c.value[:2] == b"\xff\xd8" for c in stack.children)  # JPEGs


def test_attention_grid_shares_one_colour_scale_only_when_asked():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    maps = {"a": torch.tensor([[0.1, 0.2], [0.3, 0.4]]), "b": torch.tensor([[0.0, 0.8], [0.0, 0.0]])}
    view = dict(image=image, query=(2, 2), maps=maps, label="2007_000799: query on horse")

    def limits(fig):
        return [ax.get_images()[-1].get_clim() for ax in fig.axes[1:3]]

    own = limits(plots.attention_grid([view]))
    assert [tuple(np.round(c, 6)) for c in own] == [(0.1, 0.4), (0.0, 0.8)]  # each map its own min..max
    fig = plots.attention_grid([dict(view, shared_scale=True)])
    assert [tuple(np.round(c, 6)) for c in limits(fig)] == [(0.0, 0.8), (0.0, 0.8)]
    assert fig.axes[0].get_title().endswith("\n(maps on one scale, 0 to 0.8)")
    fig = plots.attention_grid([view], shared_scale=True)  # the argument, for every view
    assert [tuple(np.round(c, 6)) for c in limits(fig)] == [(0.0, 0.8), (0.0, 0.8)]
