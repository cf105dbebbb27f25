"""Stored outputs must come from the current code: `python -m seglab.execute` stamps a hash of the code cells."""

import nbformat
import pytest

from seglab.execute import code_hash
from seglab.export import notebooks


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.name)
def test_outputs_were_produced_by_the_current_code(notebook):
    nb = nbformat.read(notebook, as_version=4)
    stamped = nb.metadata.get("seglab", {}).get("code_hash")
    assert stamped is not None, f"{notebook.name} has never been executed by `python -m seglab.execute`"
    assert stamped == code_hash(nb), (f"{notebook.name}: code changed after its outputs were produced; run "
                                      f"`python -m seglab.execute {notebook.relative_to(notebook.parents[1])}`")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{notebook.name} has unexecuted cells"


def test_code_hash_ignores_outputs_and_sees_code():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("prose")]
    before = code_hash(nb)
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="1")]
    nb.cells[1].source = "other prose"
    assert code_hash(nb) == before
    nb.cells[0].source = "x = 2"
    assert code_hash(nb) != before


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.name)
def test_every_figure_shown_was_stored(notebook):
    nb = nbformat.read(notebook, as_version=4)
    empty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "plt.show()" in c.source
             and not any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert not empty, (f"{notebook.name}: code cells {empty} show a figure but stored none (executed with "
                       "MPLBACKEND=Agg?); rerun `python -m seglab.execute`")
