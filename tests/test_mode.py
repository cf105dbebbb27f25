"""ci mode: chosen by CI or SEGLAB_MODE=ci, the quick protocol on a budget, and records that never reach the book."""


from dataclasses import replace

import pytest
import torch
from torch import nn

from seglab import mode as modes
from seglab.book import results
from seglab.book.chapter import shown_ids
from seglab.book.profile import latency_ms
from seglab.data.voc import VOCSplit


@pytest.mark.parametrize("ci, chosen, expected", [("true", "", "ci"), ("1", "", "ci"), ("false", "", "quick"),
                                                  ("", "", "quick"), ("true", "quick", "quick"), ("", "ci", "ci")])
def test_ci_is_chosen_by_the_environment(monkeypatch, ci, chosen, expected):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("SEGLAB_MODE", chosen)
    monkeypatch.delenv("SEGLAB_SPLIT", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modes.current().name == expected


def test_ci_is_the_quick_protocol_on_a_budget():
    quick, ci = modes.quick(), modes.ci()
    same = ("backbone", "output_stride", "frozen", "width", "image_size", "crop", "lr", "optimizer", "split",
            "lr_candidates", "floor", "standardize")
    assert all(getattr(quick, k) == getattr(ci, k) for k in same)  # the same cache and code path
    assert ci.iters < quick.iters and ci.val_images < 220 and ci.latency_repeats == 1
    assert "measure nothing" in ci.describe()


def test_quick_mode_sweeps_and_brief_mode_does_not():
    assert modes.quick().sweeps() and "1e-2 and 3e-2" in modes.quick().describe()
    assert not modes.brief().sweeps() and not replace(modes.quick(), lr_candidates=(0.03,)).sweeps()
    assert modes.quick().as_dict()["lr_candidates"] == [0.01, 0.03]  # as a JSON record holds it


def test_records_from_before_the_sweep_keep_their_protocol():
    old = replace(modes.quick(), lr_candidates=()).as_dict()
    del old["lr_candidates"]
    assert results.protocol({"mode": old}) == results.protocol({"mode": replace(modes.quick(),
                                                                                lr_candidates=()).as_dict()})
    assert results.protocol({"mode": old}) != results.protocol({"mode": modes.quick().as_dict()})


def record(mode):
    return {"head": "FCN", "mode": mode.as_dict(), "miou": 0.1}


def test_ci_records_never_reach_the_book(tmp_path):
    book = tmp_path / "checkout"
    (book / "book" / "results" / "seeds").mkdir(parents=True)
    (book / "_toc.yml").write_text("root: intro\n")
    for folder in (book / "book" / "results", book / "book" / "results" / "seeds"):
        with pytest.raises(ValueError, match="ci-mode record .* SEGLAB_RESULTS"):
            results.save(record(modes.ci()), folder=folder)
    assert not list((book / "book").rglob("*.json"))
    assert results.save(record(modes.quick()), folder=book / "book" / "results").name == "FCN.quick.json"
    assert results.save(record(modes.ci()), folder=tmp_path / "scratch").name == "FCN.ci.json"


def test_one_latency_repeat_is_one_pass():
    calls = []

    class Counted(nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    assert latency_ms(Counted(), (torch.zeros(1),), repeats=1) >= 0 and len(calls) == 1


def test_shown_ids_come_from_the_evaluated_images():
    n = 12
    masks = torch.zeros(n, 4, 4, dtype=torch.uint8)
    for i in range(n):
        masks[i, 0, 0] = 1 + i  # each image adds a class
    split = VOCSplit([f"id{i}" for i in range(n)], torch.zeros(n, 3, 4, 4, dtype=torch.uint8), masks,
                     torch.full((n, 2), 4))
    assert len(shown_ids(split)) == 8 and max(shown_ids(split)) >= 5
    assert sorted(shown_ids(split, limit=5)) == [0, 1, 2, 3, 4]




def test_stored_outputs_never_come_from_ci_mode(monkeypatch):
    from seglab.book import execute
    monkeypatch.setenv("SEGLAB_MODE", "ci")
    with pytest.raises(SystemExit, match="ci mode.*SEGLAB_MODE=quick"):
        execute.execute("chapters/02_fcn.ipynb")
