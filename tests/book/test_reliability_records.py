"""A results record is data, not code: it may only name a head class of seglab.heads to be rebuilt, and the seed
command checks every record and seed before it spends minutes preparing the data."""

import json
import sys
import time
import types
from types import SimpleNamespace

import pytest
import torch

from seglab import mode as modes
from seglab.book import chapter, results, seeds
from seglab.heads.fcn import FCNHead


def record(class_path, trained=None, head="Evil", mode=None):
    mode = mode or modes.quick("cpu")
    return {"head": head, "chapter": 2, "miou": 0.5, "mode": mode.as_dict(),
            "config": {"class": class_path, "trained": trained or {}}}


@pytest.fixture
def plain_class_module(monkeypatch):
    """A module of seglab.heads that defines a class that is not a torch.nn.Module."""
    module = types.ModuleType("seglab.heads.toy_plain")
    module.Plain = type("Plain", (), {"__module__": "seglab.heads.toy_plain"})
    monkeypatch.setitem(sys.modules, "seglab.heads.toy_plain", module)
    return module


@pytest.mark.parametrize("class_path,message", [
    ("subprocess.Popen", "names the head class 'subprocess.Popen': only a torch.nn.Module class defined in a module "
                         "of seglab.heads"),
    ("os.system", "names the head class 'os.system': only a torch.nn.Module class"),
    ("builtins.eval", "only a torch.nn.Module class defined in a module of seglab.heads"),
    ("seglab.headsx.fcn.FCNHead", "only a torch.nn.Module class"),
    ("seglab.heads.FCNHead", "only a torch.nn.Module class"),  # seglab.heads itself is not a head module
    ("seglab.heads.fcn.FCNHead; import os", "only a torch.nn.Module class"),
    ("seglab.heads.fcn.torch", "'seglab.heads.fcn.torch', which is not a torch.nn.Module class defined in "
                               "seglab.heads.fcn"),
    ("seglab.heads.fcn.ConvBNReLU", "not a torch.nn.Module class defined in seglab.heads.fcn"),  # imported there
    ("seglab.heads.toy_plain.Plain", "not a torch.nn.Module class defined in seglab.heads.toy_plain"),
    ("seglab.heads.no_such_module.Head", "seglab.heads.no_such_module cannot be imported"),
    ("seglab.heads.fcn.nn.Conv2d", "cannot be imported"),
])
def test_build_refuses_anything_but_a_head_class_of_seglab_heads(class_path, message, plain_class_module):
    with pytest.raises(ValueError, match="The record of 'Evil' " + ".*" + message.replace("(", r"\(").replace(")", r"\)")):
        results.build(record(class_path))


@pytest.mark.parametrize("bad", [None, 42, {"class": ["subprocess", "Popen"]}])
def test_build_refuses_a_record_without_a_class_name(bad):
    with pytest.raises(ValueError, match="only a torch.nn.Module class"):
        results.build({"head": "Evil", "config": bad})


def test_build_imports_nothing_outside_seglab_heads(capsys):
    sys.modules.pop("this", None)  # importing `this` prints the Zen of Python: a visible side effect
    with pytest.raises(ValueError, match="only a torch.nn.Module class"):
        results.build(record("this.s"))
    assert "this" not in sys.modules and capsys.readouterr().out == ""


def test_build_accepts_an_exported_head_class():
    assert results.build(record("seglab.heads.fcn.FCNHead")) is FCNHead
    from seglab.heads.psp import PSPHead
    assert results.build(record("seglab.heads.psp.PSPHead")) is PSPHead


def write_record(folder, name, rec):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / results.file_name(name, rec["mode"])
    path.write_text(json.dumps(rec))
    return path


@pytest.mark.parametrize("trained", [
    lambda victim: {"args": ["touch", str(victim)]},
    lambda victim: {"args": f"touch {victim}", "shell": True},
])
def test_a_record_naming_popen_runs_nothing_through_the_seed_command(tmp_path, monkeypatch, trained):
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path / "results"))
    victim = tmp_path / "victim.txt"
    mode = modes.quick("cpu")
    write_record(tmp_path / "results", "evil", record("subprocess.Popen", trained(victim), mode=mode))
    monkeypatch.setattr(chapter, "seed_everything", lambda seed: None)  # nothing else stands in the way
    with pytest.raises(ValueError, match="'subprocess.Popen': only a torch.nn.Module class"):
        seeds.rerun("evil", [1], SimpleNamespace(mode=mode))
    time.sleep(0.5)  # a started process would have touched the file by now
    assert not victim.exists()
    assert not (tmp_path / "results" / "seeds").exists()  # and no seed record was written


@pytest.fixture
def no_prepare(tmp_path, monkeypatch):
    """SEGLAB_RESULTS in a temporary folder holding a good FCN record; chapter.prepare fails if called."""
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SEGLAB_MODE", "quick")
    monkeypatch.delenv("SEGLAB_SPLIT", raising=False)
    mode = modes.current()
    write_record(tmp_path / "results", "fcn", record("seglab.heads.fcn.FCNHead", {"in_channels": 8, "channels": 4},
                                                     head="FCN", mode=mode))
    write_record(tmp_path / "results", "evil", record("os.system", {"command": "touch x"}, mode=mode))

    class Prepared(Exception):
        pass

    def prepare(*args, **kwargs):
        raise Prepared("chapter.prepare was called")

    monkeypatch.setattr(chapter, "prepare", prepare)
    return Prepared


@pytest.mark.parametrize("argv,error,message", [
    (["fcn", "evil"], ValueError, "'os.system': only a torch.nn.Module class"),
    (["fcn", "pspnet"], FileNotFoundError, "No record pspnet.quick.json"),
    (["../results/fcn"], ValueError, "not a record name"),
    (["fcn", "--seeds", "1", "2", "1"], ValueError, r"Seed\(s\) \[1\] given more than once"),
    (["fcn", "--seeds", "-1"], ValueError, "integers from 0 to 2\\*\\*32 - 1"),
    (["fcn", "--seeds", str(2**32)], ValueError, "integers from 0 to 2\\*\\*32 - 1"),
    (["fcn", "fcn"], ValueError, "given more than once"),
])
def test_the_seed_command_checks_names_and_seeds_before_preparing_the_data(no_prepare, argv, error, message):
    with pytest.raises(error, match=message):
        seeds.main(argv)


def test_the_seed_command_refuses_non_integer_seeds_before_preparing_the_data(no_prepare):
    with pytest.raises(SystemExit):  # argparse: "invalid int value"
        seeds.main(["fcn", "--seeds", "1.5"])


def test_good_names_and_seeds_go_on_to_prepare_the_data(no_prepare):
    with pytest.raises(no_prepare, match="chapter.prepare was called"):
        seeds.main(["fcn", "--seeds", "3", "4"])


def test_rerun_checks_its_seeds_too(no_prepare):
    with pytest.raises(ValueError, match="given more than once"):
        seeds.rerun("fcn", [1, 1], SimpleNamespace(mode=modes.current()))
    with pytest.raises(ValueError, match="integers"):
        seeds.rerun("fcn", [1.5], SimpleNamespace(mode=modes.current()))
    with pytest.raises(ValueError, match="integers"):
        seeds.rerun("fcn", [torch.tensor(1)], SimpleNamespace(mode=modes.current()))
