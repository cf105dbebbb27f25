"""The first cell of every chapter: installs seglab in Colab only, from the configured repository."""

import sys
import types

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from seglab.book import export


def run_setup_cell(monkeypatch, in_colab):
    calls = []
    shell = types.SimpleNamespace(run_line_magic=lambda name, line: calls.append((name, line)))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    code = TransformerManager().transform_cell(export.setup_cell_source())  # %pip -> run_line_magic
    namespace = {"get_ipython": lambda: shell}
    exec(compile(code, "<setup cell>", "exec"), namespace)
    return calls, namespace


def test_setup_cell_installs_from_the_repository_in_colab(monkeypatch, capsys):
    calls, namespace = run_setup_cell(monkeypatch, in_colab=True)
    url, branch = export.repository()
    assert namespace["IN_COLAB"] is True
    assert calls == [("pip", f'install -q "seglab @ git+{url}@{branch}"')]
    assert "GPU:" in capsys.readouterr().out


def test_setup_cell_installs_nothing_outside_colab(monkeypatch, capsys):
    calls, namespace = run_setup_cell(monkeypatch, in_colab=False)
    assert calls == [] and namespace["IN_COLAB"] is False
    assert "GPU: none (chapters run in quick mode" in capsys.readouterr().out


@pytest.mark.parametrize("notebook", export.notebooks(), ids=lambda p: p.name)
def test_every_chapter_starts_with_the_setup_cell_and_asks_colab_for_a_gpu(notebook):
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    assert nb.cells[0].source == export.setup_cell_source() and export.setup_cell_ok(nb)
    assert nb.metadata.get("accelerator") == "GPU"
