import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402

from seglab.book import diagram  # noqa: E402


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_box_adds_one_centred_rectangle_and_its_label(ax):
    patch = diagram.box(ax, 2.0, 1.0, 0.8, 0.4, "1×1 conv", diagram.HEAD)
    assert list(ax.patches) == [patch]
    assert (patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()) == pytest.approx((1.6, 0.8, 0.8, 0.4))
    assert patch.get_facecolor() == to_rgba(diagram.HEAD)
    assert [(t.get_text(), t.get_position()) for t in ax.texts] == [("1×1 conv", (2.0, 1.0))]


def test_tensor_is_drawn_to_scale_and_labelled_with_its_shape(ax):
    c5 = diagram.tensor(ax, 0, 0, (1, 2048, 64, 64), "C5")
    c2 = diagram.tensor(ax, 3, 0, (1, 256, 128, 128), "C2", label="left")
    assert c5.get_height() == pytest.approx(11 * diagram.CHANNEL_SCALE)  # log2(2048) = 11
    assert c5.get_width() == pytest.approx(7 * diagram.SIDE_SCALE)  # log2(64) + 1
    assert c2.get_height() - c5.get_height() == pytest.approx(-3 * diagram.CHANNEL_SCALE)  # 8x fewer channels
    assert c2.get_width() - c5.get_width() == pytest.approx(diagram.SIDE_SCALE)  # twice the side
    c5_label, c2_label = ax.texts
    assert c5_label.get_text() == "C5\n(1, 2048, 64, 64)"
    assert c5_label.get_position()[1] < c5.get_y()  # below the box
    assert c2_label.get_text() == "C2\n(1, 256, 128, 128)" and c2_label.get_position()[0] < c2.get_x()


def test_a_tensor_of_points_is_as_wide_as_a_map_with_as_many_positions(ax):
    points = diagram.tensor(ax, 0, 0, (1, 21, 4096), "logits at the points")
    grid = diagram.tensor(ax, 0, 2, (1, 21, 64, 64), "logits")
    assert points.get_width() == pytest.approx(grid.get_width())
    assert points.get_height() == pytest.approx(math.log2(21) * diagram.CHANNEL_SCALE)
    assert ax.texts[0].get_text() == "logits at the points\n(1, 21, 4096)"


def test_side_gives_the_middle_of_each_edge(ax):
    patch = diagram.box(ax, 1.0, 2.0, 2.0, 1.0)
    assert diagram.side(patch, "left") == pytest.approx((0.0, 2.0))
    assert diagram.side(patch, "right") == pytest.approx((2.0, 2.0))
    assert diagram.side(patch, "top") == pytest.approx((1.0, 2.5))
    assert diagram.side(patch, "bottom") == pytest.approx((1.0, 1.5))
    assert len(ax.texts) == 0  # no label asked for, none drawn


def test_arrow_is_an_annotation_between_the_points_with_its_label_at_the_middle(ax):
    annotation = diagram.arrow(ax, (0.0, 1.0), (4.0, 1.0), "2× up", offset=(0, 0.1))
    assert isinstance(annotation, Annotation) and annotation.arrow_patch is not None
    assert annotation.xyann == (0.0, 1.0) and annotation.xy == (4.0, 1.0)  # from start to end
    label = [t for t in ax.texts if not isinstance(t, Annotation)]
    assert [(t.get_text(), t.get_position()) for t in label] == [("2× up", (2.0, 1.1))]


def test_legend_shows_the_three_colours(ax):
    legend = diagram.legend(ax)
    assert [t.get_text() for t in legend.get_texts()] == ["backbone features", "head: context modules",
                                                         "classifier: logits"]
    assert [h.get_facecolor() for h in legend.legend_handles] == [to_rgba(c) for c in
                                                                  (diagram.BACKBONE, diagram.HEAD, diagram.LOGITS)]


def test_finish_makes_a_diagram_of_the_axes():
    fig, ax = plt.subplots()
    diagram.finish(ax, (0, 4), (-1, 2))
    assert ax.get_aspect() == 1.0 and not ax.axison
    assert ax.get_xlim() == (0, 4) and ax.get_ylim() == (-1, 2)
    plt.close(fig)
