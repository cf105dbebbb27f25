"""Re-execute chapters in a fresh kernel and store their outputs, stamped with a hash of their code.

    python -m seglab.book.execute                        # every chapter
    python -m seglab.book.execute chapters/02_fcn.ipynb  # one chapter
"""

import hashlib
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from seglab.book.export import notebooks, write_notebook


def code_hash(nb):
    """sha256 of the notebook's code cells, in order: changes when any code changes, not when outputs do."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def check_mode():
    """Stored outputs are the book's pages: refuse the ci mode, whose numbers check the code and measure nothing."""
    from seglab.mode import current
    if current().name == "ci":
        raise SystemExit("The chapters would run in ci mode (CI or SEGLAB_MODE=ci is set): its numbers measure "
                         "nothing and must not become the book's stored outputs. Run with SEGLAB_MODE=quick.")


def execute(path, timeout=1800):
    check_mode()
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    os.environ.pop("MPLBACKEND", None)  # a non-interactive backend (Agg) would store no figures in the book
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nb.metadata.setdefault("seglab", {})["code_hash"] = code_hash(nb)
    write_notebook(nb, path)  # atomic: a failed write (a full disk) leaves the notebook as it was
    print(f"{path}: executed in {seconds:.0f} s")
    return seconds


if __name__ == "__main__":
    check_mode()
    start = time.perf_counter()
    for notebook in [Path(p) for p in sys.argv[1:]] or notebooks():
        execute(notebook)
    print(f"executed in {time.perf_counter() - start:.0f} s in all")
