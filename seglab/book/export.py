"""Notebooks are the source of truth for head code; this tool writes their exported cells into the package.

A code cell whose first line is ``#| export seglab/heads/fcn.py`` is written, in notebook order, into that file.
Every chapter's first cell is the Colab setup cell built here from the repository URL in ``_config.yml``, and its
metadata asks Colab for a GPU.

    python -m seglab.book.export          # write seglab/ from chapters/*.ipynb and refresh the setup cells
    python -m seglab.book.export --check  # exit 1 if the package or a setup cell has drifted from the notebooks
"""

import re
import sys
from pathlib import Path

import nbformat
import yaml

from seglab.data.atomic import write_text

ROOT = Path(__file__).resolve().parents[2]  # the checkout: seglab/book/export.py
MARKER = re.compile(r"^#\|\s*export\s+(\S+)\s*$")
HEADER = "# Generated from {notebook} by `python -m seglab.book.export`. Edit the notebook, not this file.\n"


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


class ExportError(ValueError):
    """An export cell that cannot be written: a target outside ``seglab/``, or a module that does not compile."""


def write_notebook(nb, path):
    """``nbformat.write``, atomically: a failed write leaves the notebook as it was, and no temporary file."""
    text = nbformat.writes(nb)
    write_text(path, text if text.endswith("\n") else text + "\n")


def check_target(root, name, where):
    """The path of export target ``name`` (relative to the repository), which must be a ``.py`` file inside the
    repository's ``seglab/`` once resolved: no absolute path, no ``..`` or symbolic link that leads out of it."""
    package = (root / "seglab").resolve()
    target = root / name
    rule = "an export target must be a .py file under seglab/ of the repository, e.g. seglab/heads/fcn.py"
    if Path(name).is_absolute():
        raise ExportError(f"{where} exports to the absolute path {name}: {rule}.")
    resolved = target.resolve()
    if resolved == package or package not in resolved.parents:
        raise ExportError(f"{where} exports to {name}, which resolves to {resolved}, outside {package}: {rule}.")
    if target.suffix != ".py":
        raise ExportError(f"{where} exports to {name}, not a .py file: {rule}.")
    return root / "seglab" / resolved.relative_to(package)  # one key per file, however the cell spells it


def exported_files(root=ROOT, origins=None):
    """{target path: generated text} for every export cell in the chapters. ``origins``, when given, is filled with
    {target: [(first line in the text, notebook, cell number), ...]}. Raises ``ExportError`` for a cell whose target
    lies outside the repository's ``seglab/``."""
    files = {}
    origins = {} if origins is None else origins
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        notebook = path.relative_to(root).as_posix()
        for number, cell in enumerate(nb.cells, 1):
            lines = cell.source.splitlines()
            match = MARKER.match(lines[0]) if cell.cell_type == "code" and lines else None
            if match:
                target = check_target(root, match.group(1), f"{notebook}, cell {number}")
                body = "\n".join(lines[1:]).strip("\n") + "\n"
                files.setdefault(target, HEADER.format(notebook=notebook))
                files[target] += "\n\n"
                origins.setdefault(target, []).append((files[target].count("\n") + 1, notebook, number))
                files[target] += body
    return files


def compile_problems(root, files, origins):
    """A line for each generated module that does not compile, naming the notebook and the cell it comes from."""
    problems = []
    for target, text in files.items():
        name = target.relative_to(root).as_posix()
        try:
            compile(text, name, "exec")
        except SyntaxError as error:
            line = error.lineno or 0
            before = [o for o in origins[target] if o[0] <= line]  # the cell the line falls in
            _, notebook, cell = before[-1] if before else origins[target][0]
            problems.append(f"{name} does not compile: {error.msg} at its line {line}, from {notebook}, cell {cell}")
    return problems


def drift(root=ROOT):
    """Human-readable list of what differs between the notebooks and the package."""
    origins = {}
    try:
        files = exported_files(root, origins)
    except ExportError as error:  # the other checks of the exports would only repeat it
        files, problems = None, [str(error)]
    else:
        problems = compile_problems(root, files, origins)
    for target, text in (files or {}).items():
        if not target.is_file():
            problems.append(f"{target.relative_to(root)} is missing")
        elif target.read_text() != text:
            problems.append(f"{target.relative_to(root)} differs from its notebook cells")
    generated = {p for p in (root / "seglab").rglob("*.py") if p.read_text().startswith("# Generated from ")}
    for stale in sorted(generated - set(files)) if files is not None else ():
        problems.append(f"{stale.relative_to(root)} is generated but no notebook exports it any more")
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        if not setup_cell_ok(nb):
            problems.append(f"{path.relative_to(root)}: the first cell is not the current setup cell, or Colab's "
                            "GPU metadata is missing")
    return problems


def write(root=ROOT):
    """Write the exported modules and refresh the setup cells. Every target and module is checked first: if one is
    outside ``seglab/`` or does not compile, ``ExportError`` is raised and nothing is written."""
    origins = {}
    files = exported_files(root, origins)
    problems = compile_problems(root, files, origins)
    if problems:
        raise ExportError("Nothing was exported: " + "; ".join(problems) + ". Fix the notebook cell.")
    for target, text in files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, text)
        print("wrote", target.relative_to(root))
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        if nb.cells and not setup_cell_ok(nb):
            nb.cells[0].source = setup_cell_source()
            nb.cells[0].metadata["tags"] = SETUP_TAGS
            nb.metadata.update(COLAB_METADATA)
            write_notebook(nb, path)
            print("refreshed the setup cell and Colab metadata of", path.relative_to(root))


def main(argv=None, root=ROOT):
    """The command: 0 when done (or in sync, with --check), 1 with the problems said."""
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        found = drift(root)
        print("\n".join(found) or "seglab is in sync with the notebooks")
        return 1 if found else 0
    try:
        write(root)
    except ExportError as error:
        print(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
