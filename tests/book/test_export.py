import shutil

import nbformat
import pytest

from seglab.book import export


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


def export_cell(root, source, index=1):
    """Replace cell ``index`` of the toy book's notebook (cell 1 exports seglab/heads/toy.py)."""
    path = root / "chapters" / "01_toy.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[index].source = source
    nbformat.write(nb, path)


@pytest.mark.parametrize("target,message", [
    ("../victim.py", "resolves to .*, outside"),
    ("../../victim.txt", "resolves to .*, outside"),
    ("seglab/../victim.py", "resolves to .*, outside"),
    ("seglab/heads/../../victim.py", "resolves to .*, outside"),
    ("chapters/victim.py", "resolves to .*, outside"),
    ("seglab", "resolves to .*, outside"),
    ("{victim}", "absolute path"),
    ("seglab/heads/toy.txt", "not a .py file"),
])
def test_export_targets_outside_the_package_are_refused(tmp_path, target, message):
    root = make_book(tmp_path)
    victim = tmp_path / "victim.py"
    victim.write_text("precious\n")
    export_cell(root, f"#| export {target.format(victim=victim)}\nX = 1")
    pattern = rf"chapters/01_toy.ipynb, cell 2 exports .*{message}.*must be a .py file under seglab/"
    with pytest.raises(export.ExportError, match=pattern):
        export.write(root)
    problems = export.drift(root)  # --check reports it, and does not crash
    assert len(problems) == 1 and __import__("re").search(pattern, problems[0])
    assert victim.read_text() == "precious\n" and not (tmp_path / "victim.txt").exists()
    assert not (root / "seglab/heads/toy.py").exists()  # nothing at all was written


def test_export_through_a_symbolic_link_out_of_the_package_is_refused(tmp_path):
    root = make_book(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "seglab" / "heads").symlink_to(outside, target_is_directory=True)
    with pytest.raises(export.ExportError, match=r"cell 2 exports to seglab/heads/toy.py, which resolves to .*outside"):
        export.write(root)
    assert list(outside.iterdir()) == []
    (root / "seglab" / "heads").unlink()
    (root / "seglab" / "heads").mkdir()
    (root / "seglab" / "heads" / "toy.py").symlink_to(tmp_path / "victim.py")  # a link file out of the package
    with pytest.raises(export.ExportError, match="resolves to .*outside"):
        export.write(root)
    assert not (tmp_path / "victim.py").exists()


def test_a_module_that_does_not_compile_fails_export_and_check(tmp_path):
    root = make_book(tmp_path)
    export.write(root)
    good = (root / "seglab/heads/toy.py").read_text()
    export_cell(root, "#| export seglab/heads/toy.py\nY = (2", index=3)
    message = (r"seglab/heads/toy.py does not compile: .* at its line \d+, from chapters/01_toy.ipynb, cell 4")
    with pytest.raises(export.ExportError, match="Nothing was exported: " + message):
        export.write(root)
    assert (root / "seglab/heads/toy.py").read_text() == good  # left as it was
    problems = export.drift(root)
    assert __import__("re").match(message, problems[0]) and len(problems) == 2  # and it differs from the cells
    (root / "seglab/heads/toy.py").write_text(export.exported_files(root)[root / "seglab/heads/toy.py"])
    assert [p for p in export.drift(root) if "does not compile" in p] == problems[:1]  # even when "in sync"
    export_cell(root, "#| export seglab/heads/toy.py\ndef f(:\n    pass", index=1)  # the first cell's fault
    assert "from chapters/01_toy.ipynb, cell 2" in export.drift(root)[0]


def test_the_commands_exit_1_on_an_unsafe_target_or_a_syntax_error(tmp_path, capsys):
    root = make_book(tmp_path)
    export_cell(root, "#| export ../victim.py\nX = 1")
    for argv in (["--check"], []):
        assert export.main(argv, root) == 1
        assert "outside" in capsys.readouterr().out
    assert not (tmp_path / "victim.py").exists()
    export_cell(root, "#| export seglab/heads/toy.py\nX = (")
    assert export.main([], root) == 1 and "does not compile" in capsys.readouterr().out
    assert export.main(["--check"], root) == 1 and "does not compile" in capsys.readouterr().out
    export_cell(root, "#| export seglab/heads/toy.py\nX = 1")
    assert export.main([], root) == 0 and export.main(["--check"], root) == 0
    assert capsys.readouterr().out.endswith("seglab is in sync with the notebooks\n")
