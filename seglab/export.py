"""Notebooks are the source of truth for head code; this tool writes their exported cells into the package.

A code cell whose first line is ``#| export seglab/heads/fcn.py`` is written, in notebook order, into that file.
Every chapter's first cell is the Colab setup cell built here from the repository URL in ``_config.yml``, and its
metadata asks Colab for a GPU.

    python -m seglab.export          # write seglab/ from chapters/*.ipynb and refresh the setup cells
    python -m seglab.export --check  # exit 1 if the package or a setup cell has drifted from the notebooks
"""

import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^#\|\s*export\s+(\S+)\s*$")
HEADER = "# Generated from {notebook} by `python -m seglab.export`. Edit the notebook, not this file.\n"


def repository():
    """(url, branch) of the book's repository: the one place it is configured."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"], config["repository"].get("branch", "main")


def setup_cell_source():
    url, branch = repository()
    return (
        "# Setup: in Colab, install seglab from the book's repository; locally and in CI this installs nothing.\n"
        "import sys\n"
        "\n"
        "IN_COLAB = \"google.colab\" in sys.modules\n"
        "if IN_COLAB:\n"
        f"    %pip install -q \"seglab @ git+{url}@{branch}\"\n"
        "\n"
        "import torch\n"
        "\n"
        "print(\"GPU:\", torch.cuda.get_device_name(0) if torch.cuda.is_available() else\n"
        "      \"none (chapters run in quick mode; in Colab: Runtime > Change runtime type > T4 GPU)\")")


SETUP_TAGS = ["remove-cell"]  # it runs first in Colab and CI; the online book starts with the chapter's title


COLAB_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}  # Colab opens it on a GPU


def setup_cell_ok(nb):
    return bool(nb.cells) and nb.cells[0].source == setup_cell_source() and \
        nb.cells[0].metadata.get("tags") == SETUP_TAGS and \
        all(nb.metadata.get(k) == v for k, v in COLAB_METADATA.items())


def notebooks(root=ROOT):
    return sorted((root / "chapters").glob("*.ipynb"))


def exported_files(root=ROOT):
    """{target path: generated text} for every export cell in the chapters."""
    files = {}
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            lines = cell.source.splitlines()
            match = MARKER.match(lines[0]) if cell.cell_type == "code" and lines else None
            if match:
                target = root / match.group(1)
                body = "\n".join(lines[1:]).strip("\n") + "\n"
                files.setdefault(target, HEADER.format(notebook=path.relative_to(root).as_posix()))
                files[target] += "\n\n" + body
    return files


def drift(root=ROOT):
    """Human-readable list of what differs between the notebooks and the package."""
    problems = []
    for target, text in exported_files(root).items():
        if not target.is_file():
            problems.append(f"{target.relative_to(root)} is missing")
        elif target.read_text() != text:
            problems.append(f"{target.relative_to(root)} differs from its notebook cells")
    generated = {p for p in (root / "seglab").rglob("*.py") if p.read_text().startswith("# Generated from ")}
    for stale in sorted(generated - set(exported_files(root))):
        problems.append(f"{stale.relative_to(root)} is generated but no notebook exports it any more")
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        if not setup_cell_ok(nb):
            problems.append(f"{path.relative_to(root)}: the first cell is not the current setup cell, or Colab's "
                            "GPU metadata is missing")
    return problems


def write(root=ROOT):
    for target, text in exported_files(root).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print("wrote", target.relative_to(root))
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        if nb.cells and not setup_cell_ok(nb):
            nb.cells[0].source = setup_cell_source()
            nb.cells[0].metadata["tags"] = SETUP_TAGS
            nb.metadata.update(COLAB_METADATA)
            nbformat.write(nb, path)
            print("refreshed the setup cell and Colab metadata of", path.relative_to(root))


if __name__ == "__main__":
    if "--check" in sys.argv:
        found = drift()
        print("\n".join(found) or "seglab is in sync with the notebooks")
        sys.exit(1 if found else 0)
    write()
