"""Stored outputs must come from the current code (`python -m seglab.execute` stamps a hash of the code cells), and
must not leak the machine that produced them: no local paths, nothing on stderr."""

import re

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


# An absolute path under a home, work or temporary directory, or into an installed package: the machine that ran
# the notebook leaking into the book. Preceded by neither a word character nor a URL or base64 character, so that
# "https://host/tmp/x" and image data do not count.
LOCAL_PATH = re.compile(
    r"(?<![\w.+/=-])/(?:home|Users|root|work|tmp|var/tmp|var/folders|private/var/folders)/"  # POSIX
    r"|\b[A-Za-z]:[\\/]+Users[\\/]"  # Windows home folders
    r"|site-packages[\\/]")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes in tracebacks


def stored_texts(nb):
    """(cell index, kind, text) of every textual output: streams, text/plain, text/html, text/markdown, errors."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream":
                yield index, f"stream {output.get('name')}", output.get("text", "")
            elif kind == "error":
                text = "\n".join([f"{output.get('ename')}: {output.get('evalue')}", *output.get("traceback", [])])
                yield index, "error", ANSI.sub("", text)
            for mime in ("text/plain", "text/html", "text/markdown"):
                value = output.get("data", {}).get(mime)
                if value is not None:
                    yield index, mime, value if isinstance(value, str) else "".join(value)


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.name)
def test_stored_outputs_hold_no_local_paths(notebook):
    """No stored output names a path on the machine that executed the notebook (a home, work or temporary folder,
    or site-packages): warnings, download messages and tracebacks carry them."""
    nb = nbformat.read(notebook, as_version=4)
    found = [f"cell {index} ({kind}): ...{text[max(0, m.start() - 40): m.end() + 40]!r}..."
             for index, kind, text in stored_texts(nb) for m in [LOCAL_PATH.search(text)] if m]
    assert not found, f"{notebook.name}: stored outputs hold local paths:\n" + "\n".join(found)


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.name)
def test_no_stray_stderr_in_stored_outputs(notebook):
    """No stored stream output is on stderr: a warning or log line there is noise in the book. There is no
    exception for progress bars: the stored notebooks show tqdm as widgets (display data), not as stderr text."""
    nb = nbformat.read(notebook, as_version=4)
    found = [f"cell {index}: {text.strip().splitlines()[0][:160]!r}" for index, kind, text in stored_texts(nb)
             if kind == "stream stderr" and text.strip()]
    assert not found, f"{notebook.name}: stored outputs on stderr:\n" + "\n".join(found)


def test_output_checks_catch_paths_and_stderr_and_spare_urls():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="https://example.org/tmp/a.pth\n"),
                    nbformat.v4.new_output("display_data", data={"text/plain": "C:\\Users\\me\\x.py"}),
                    nbformat.v4.new_output("stream", name="stderr", text="/home/me/seglab/x.py:1: Warning\n"),
                    nbformat.v4.new_output("error", ename="E", evalue="",
                                           traceback=["\x1b[0;32m/tmp/ipykernel_1/x.py\x1b[0m"])]
    nb.cells = [cell]
    hits = [(kind, bool(LOCAL_PATH.search(text))) for _, kind, text in stored_texts(nb)]
    assert hits == [("stream stdout", False), ("text/plain", True), ("stream stderr", True), ("error", True)]
