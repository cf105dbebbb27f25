"""Every head chapter has the same furniture in the same place: one "Paper, MMSegmentation and this book" box, directly
before its reference check, saying what the paper specifies, what MMSegmentation does and what the book builds."""

import nbformat
import pytest

from seglab.book.export import notebooks

BOX = "```{admonition} Paper, MMSegmentation and this book"
BULLETS = ("- **Paper.**", "- **MMSegmentation.**", "- **This book.**")


def head_chapters():
    """The chapters that build a head: those with a reference check against MMSegmentation."""
    return [nb for nb in notebooks() if "## Reference check" in nb.read_text()]


def test_every_chapter_but_the_pipeline_and_the_comparison_is_a_head_chapter():
    assert [nb.name for nb in head_chapters()] == [nb.name for nb in notebooks() if nb.name[:2] not in ("01", "90")]


@pytest.mark.parametrize("notebook", head_chapters(), ids=lambda p: p.name)
def test_paper_against_implementation_box_sits_before_the_reference_check(notebook):
    cells = nbformat.read(notebook, as_version=4).cells
    boxes = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith(BOX)]
    assert len(boxes) == 1, f"{notebook.name}: {len(boxes)} paper-against-implementation boxes, not one"
    box = cells[boxes[0]].source
    following = cells[boxes[0] + 1]
    assert following.cell_type == "markdown" and following.source.lstrip().startswith("## Reference check"), \
        f"{notebook.name}: the box must sit directly before the reference check"
    lines = [line for line in box.splitlines() if line.startswith("- ")]
    assert [line.split(" ", 2)[1] for line in lines] == [b.split(" ", 2)[1] for b in BULLETS], \
        f"{notebook.name}: the box needs exactly the bullets {BULLETS}"
    assert "{cite}" in box, f"{notebook.name}: the box cites no paper"
    assert box.rstrip().endswith("```"), f"{notebook.name}: the box is not closed"
