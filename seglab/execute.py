"""Re-execute chapters in a fresh kernel and store their outputs, stamped with a hash of their code.

    python -m seglab.execute                        # every chapter
    python -m seglab.execute chapters/02_fcn.ipynb  # one chapter
"""

import hashlib
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from seglab.export import notebooks


def code_hash(nb):
    """sha256 of the notebook's code cells, in order: changes when any code changes, not when outputs do."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def execute(path, timeout=1800):
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    os.environ.pop("MPLBACKEND", None)  # a non-interactive backend (Agg) would store no figures in the book
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nb.metadata.setdefault("seglab", {})["code_hash"] = code_hash(nb)
    nbformat.write(nb, path)
    print(f"{path}: executed in {seconds:.0f} s")
    return seconds


if __name__ == "__main__":
    for notebook in [Path(p) for p in sys.argv[1:]] or notebooks():
        execute(notebook)
