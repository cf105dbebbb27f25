import shutil

import nbformat

from seglab import export


def test_package_is_in_sync_with_the_notebooks():
    assert export.drift() == []


def make_book(tmp_path):
    root = tmp_path / "book"
    (root / "chapters").mkdir(parents=True)
    (root / "seglab").mkdir()
    shutil.copy(export.ROOT / "_config.yml", root / "_config.yml")
    nb = nbformat.v4.new_notebook(metadata=dict(export.COLAB_METADATA))
    nb.cells = [nbformat.v4.new_code_cell(export.setup_cell_source(), metadata={"tags": export.SETUP_TAGS}),
                nbformat.v4.new_code_cell("#| export seglab/heads/toy.py\nimport torch\n\nX = 1"),
                nbformat.v4.new_code_cell("print('not exported')"),
                nbformat.v4.new_code_cell("#| export seglab/heads/toy.py\nY = 2")]
    nbformat.write(nb, root / "chapters" / "01_toy.ipynb")
    return root


def test_export_writes_cells_in_order_and_detects_each_kind_of_drift(tmp_path):
    root = make_book(tmp_path)
    assert export.drift(root) == ["seglab/heads/toy.py is missing"]
    export.write(root)
    text = (root / "seglab/heads/toy.py").read_text()
    assert text.startswith("# Generated from chapters/01_toy.ipynb") and text.index("X = 1") < text.index("Y = 2")
    assert "not exported" not in text
    assert export.drift(root) == []
    (root / "seglab/heads/toy.py").write_text(text.replace("Y = 2", "Y = 3"))  # package edited by hand
    assert export.drift(root) == ["seglab/heads/toy.py differs from its notebook cells"]
    export.write(root)
    nb = nbformat.read(root / "chapters/01_toy.ipynb", as_version=4)
    nb.cells[0].source = "import sys"  # the setup cell lost
    nbformat.write(nb, root / "chapters/01_toy.ipynb")
    expected = ["chapters/01_toy.ipynb: the first cell is not the current setup cell, or Colab's GPU metadata is missing"]
    assert export.drift(root) == expected
    export.write(root)  # puts the setup cell back
    assert export.drift(root) == []
    nb = nbformat.read(root / "chapters/01_toy.ipynb", as_version=4)
    del nb.metadata["accelerator"]  # a new notebook that Colab would open without a GPU
    nbformat.write(nb, root / "chapters/01_toy.ipynb")
    assert export.drift(root) == expected
    export.write(root)
    assert nbformat.read(root / "chapters/01_toy.ipynb", as_version=4).metadata["accelerator"] == "GPU"
    (root / "chapters/01_toy.ipynb").unlink()
    assert "seglab/heads/toy.py is generated but no notebook exports it any more" in export.drift(root)


def test_setup_cell_installs_from_the_configured_repository_only_in_colab():
    url, branch = export.repository()
    source = export.setup_cell_source()
    assert f"git+{url}@{branch}" in source and 'if IN_COLAB:' in source
