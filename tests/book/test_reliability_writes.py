"""Writes that fail halfway (a full disk, a file-size limit) leave the old file intact and no temporary file: the
atomic helper, the exported modules and the executed notebooks. The failure is real: a child process whose file-size
limit (RLIMIT_FSIZE) is smaller than what it writes."""

import json
import os
import subprocess
import sys
import textwrap

import nbformat
import pytest

from seglab.book import export
from seglab.data import atomic

LIMIT = 20_000  # bytes a child process may write into one file

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs RLIMIT_FSIZE")


def run_limited(code, cwd):
    """Run ``code`` in a child Python whose writes beyond LIMIT bytes fail with EFBIG (SIGXFSZ ignored)."""
    prelude = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                                                       "SEGLAB_MODE": "quick"})  # execute refuses ci mode


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_the_file_and_keeps_its_permissions(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o640)
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o640
    atomic.write_text(tmp_path / "b.txt", "fresh")
    assert (tmp_path / "b.txt").read_text() == "fresh" and leftovers(tmp_path) == []


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("the old record\n")
    done = run_limited(f"""
        from seglab.data.atomic import write_text
        limit()
        try:
            write_text({str(target)!r}, "x" * {4 * LIMIT})
        except OSError as error:
            print("failed:", error.errno)
    """, tmp_path)
    assert "failed: 27" in done.stdout, done.stderr  # EFBIG: the limit was hit, for real
    assert target.read_text() == "the old record\n" and leftovers(tmp_path) == []


def test_a_failed_export_leaves_the_module_intact(tmp_path):
    root = tmp_path / "book"
    (root / "chapters").mkdir(parents=True)
    (root / "seglab" / "heads").mkdir(parents=True)
    (root / "_config.yml").write_text((export.ROOT / "_config.yml").read_text())
    old = "# Generated from chapters/01_toy.ipynb by `python -m seglab.book.export`. Edit the notebook, not this file.\n"
    (root / "seglab/heads/toy.py").write_text(old)
    nb = nbformat.v4.new_notebook(metadata=dict(export.COLAB_METADATA))
    big = "\n".join(f"X{i} = {i}" for i in range(4 * LIMIT // 8))  # a module larger than the limit
    nb.cells = [nbformat.v4.new_code_cell(export.setup_cell_source(), metadata={"tags": export.SETUP_TAGS}),
                nbformat.v4.new_code_cell("#| export seglab/heads/toy.py\n" + big)]
    nbformat.write(nb, root / "chapters" / "01_toy.ipynb")
    done = run_limited(f"""
        from pathlib import Path
        from seglab.book import export
        limit()
        try:
            export.write(Path({str(root)!r}))
        except OSError as error:
            print("failed:", error.errno)
    """, tmp_path)
    assert "failed: 27" in done.stdout, done.stderr
    assert (root / "seglab/heads/toy.py").read_text() == old and leftovers(root / "seglab/heads") == []


def test_a_failed_write_of_an_executed_notebook_leaves_the_notebook_intact(tmp_path):
    path = tmp_path / "01_toy.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('hello')")]
    nbformat.write(nb, path)
    before = path.read_bytes()
    done = run_limited(f"""
        import nbformat
        from seglab.book import execute

        class Client:  # "executes" the notebook: an output larger than the file-size limit
            def __init__(self, nb, **kwargs):
                self.nb = nb
            def execute(self):
                self.nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="y" * {4 * LIMIT})]

        execute.NotebookClient = Client
        limit()
        try:
            execute.execute({str(path)!r})
        except OSError as error:
            print("failed:", error.errno)
    """, tmp_path)
    assert "failed: 27" in done.stdout, done.stderr
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_write_notebook_writes_what_nbformat_writes(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "a.ipynb")
    export.write_notebook(nb, tmp_path / "b.ipynb")
    assert (tmp_path / "a.ipynb").read_bytes() == (tmp_path / "b.ipynb").read_bytes()


def test_a_failed_results_save_leaves_the_old_record_readable(tmp_path):
    """The reported case: a write failure left fcn.quick.json truncated, and every page that read records crashed."""
    old = {"head": "FCN", "mode": {"name": "quick"}, "miou": 0.4}
    (tmp_path / "fcn.quick.json").write_text(json.dumps(old))
    done = run_limited(f"""
        from pathlib import Path
        from seglab.book import results
        limit()
        try:
            results.save({{"head": "FCN", "mode": {{"name": "quick"}}, "miou": 0.5, "big": "x" * {4 * LIMIT}}},
                         name="fcn", folder=Path({str(tmp_path)!r}))
        except OSError as error:
            print("failed:", error.errno)
    """, tmp_path)
    assert "failed: 27" in done.stdout, done.stderr
    assert json.loads((tmp_path / "fcn.quick.json").read_text()) == old and leftovers(tmp_path) == []
