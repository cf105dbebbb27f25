"""Stored outputs must come from the current code (`python -m seglab.book.execute` stamps a hash of the code cells), and
must not leak the machine that produced them: no local paths, nothing on stderr."""

import re

import nbformat
import pytest

from seglab.book.execute import code_hash
from seglab.book.export import notebooks


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.name)
def test_outputs_were_produced_by_the_current_code(notebook):
    nb = nbformat.read(notebook, as_version=4)
    stamped = nb.metadata.get("seglab", {}).get("code_hash")
    assert stamped is not None, f"{notebook.name} has never been executed by `python -m seglab.book.execute`"
    assert stamped == code_hash(nb), (f"{notebook.name}: code changed after its outputs were produced; run "
                                      f"`python -m seglab.book.execute {notebook.relative_to(notebook.parents[1])}`")
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
                       "MPLBACKEND=Agg?); rerun `python -m seglab.book.execute`")


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


# What a checked cell (# NBVAL_CHECK_OUTPUT) must not print, since it differs from one machine to another: rounding
# noise in e-notation (a nonzero value below 1e-4), a duration, a progress rate, an object's memory address.
SMALL_FLOAT = re.compile(r"(?<![\w.])\d(?:\.\d+)?e-\d+\b")
BOUND = re.compile(r"(?:<|<=|≤|below|under|within|tolerance|atol=?|rtol=?)\s*$")
MACHINE_DEPENDENT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|µs|us|s|sec|seconds)\b(?!\w)"  # a duration
                               r"|\d\s?it/s|image/s"  # a rate
                               r"|\bat 0x[0-9a-f]+")  # an address


def machine_dependent(text):
    """The fragments of ``text`` that depend on the machine that printed them."""
    found = [m.group() for m in SMALL_FLOAT.finditer(text) if 0 < float(m.group()) < 1e-4
             and not BOUND.search(text[:m.start()])]  # "< 1e-12", "below 1e-5": the bound a check establishes
    return found + [m.group() for m in MACHINE_DEPENDENT.finditer(text)]


@pytest.mark.parametrize("notebook", notebooks(), ids=lambda p: p.name)
def test_checked_cells_print_nothing_that_depends_on_the_machine(notebook):
    """nbval compares a checked cell's output with the stored one on every machine: it must print what its check
    establishes (``< 1e-12``), never float noise, timings or addresses."""
    nb = nbformat.read(notebook, as_version=4)
    checked = {i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source}
    found = [f"cell {index}: {hit!r}" for index, _, text in stored_texts(nb) if index in checked
             for hit in machine_dependent(text)]
    assert not found, f"{notebook.name}: checked cells print machine-dependent values:\n" + "\n".join(found)


def test_the_machine_dependent_patterns():
    assert machine_dependent("max |difference| 2.2e-16; max difference 1.1e-06") == ["2.2e-16", "1.1e-06"]
    assert machine_dependent("trained in 20 s; 911.1 ms; 12.5it/s; <object at 0x7f3a2b>") == [
        "20 s", "911.1 ms", "5it/s", "at 0x7f3a2b"]
    assert machine_dependent("max |difference| < 1e-12; below 1e-5; lr 1e-2 is 1e-02; 0.0e+00; (1, 512, 64, 64); 3x3 convs; "
                             "C5 (b, 320, 16, 16); 2 seeds") == []
