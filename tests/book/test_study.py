"""The protocol study: its statistics (failures, discrimination), its choice within the budget, and its runs (resumed
where they stopped; a head's later seeds at the learning rate its first seed chose)."""

import types

import pytest

from seglab import mode as modes
from seglab.book import chapter, results, study


def entry(means_by_head, seeds=(0, 1, 2), seconds=10.0, cache=None):
    """A setting's record with one run per head and seed: mIoU = the head's mean + (seed - 1) points."""
    runs = [{"head": h, "seed": s, "miou": (m + (s - 1)) / 100, "boundary_miou": 0.1, "train_seconds": seconds,
             "seconds": 2 * seconds} for h, m in means_by_head.items() for s in seeds]
    return {"mode": modes.quick().as_dict(), "runs": runs,
            "cache": cache or {"seconds": 60.0, "bytes": 10**9}}


SIX = {"Linear probe": 32.0, "FCN": 39.0, "PSPNet": 40.0, "Non-local": 38.0, "Semantic FPN": 37.0, "DeepLabV3+": 33.0}


def test_summary_flags_heads_below_the_probe_and_leaves_them_out_of_the_spread():
    s = study.summary(entry({**SIX, "Semantic FPN": 20.0}))
    assert s["failures"] == ["Semantic FPN"]  # below 32 - 1 (the probe's sd over seeds 31, 32, 33)
    assert s["pooled_sd"] == pytest.approx(1.0)
    kept = [32.0, 39.0, 40.0, 38.0, 33.0]
    mean = sum(kept) / 5
    spread = (sum((v - mean) ** 2 for v in kept) / 4) ** 0.5
    assert s["spread_of_means"] == pytest.approx(spread) and s["discrimination"] == pytest.approx(spread)
    assert s["slowest_train_seconds"] == 10.0 and s["slowest_first_seed_seconds"] == 20.0


def test_choose_takes_the_best_discrimination_without_failures_within_the_budget():
    wide = {**SIX, "PSPNet": 45.0}  # more spread: a higher discrimination
    found = {"settings": {"narrow": entry(SIX), "wide but failing": entry({**wide, "FCN": 10.0}),
                         "wide but slow": entry(wide, seconds=61.0), "wide": entry(wide),
                         "wide, big cache": entry(wide, cache={"seconds": 60.0, "bytes": 3 * 2**30})}}
    assert study.choose(found) == "wide"
    del found["settings"]["wide"]
    assert study.choose(found) == "narrow"
    assert study.choose({"settings": {"incomplete": entry(SIX, seeds=(0, 1))}}) is None
    table = study.table(found)
    assert list(table.index) == list(found["settings"])
    assert table.loc["wide but failing", "heads below the probe"] == "FCN"
    assert not table.loc["wide but slow", "within budget"] and table.loc["narrow", "within budget"]


def test_the_settings_are_quick_mode_variants_and_today_and_fixed_train_at_one_rate():
    assert all(field in modes.Mode.__dataclass_fields__ for s in study.SETTINGS.values() for field in s)
    assert not study.study_mode("today").sweeps() and not study.study_mode("fixed").sweeps()
    assert study.study_mode("lr by training loss") == modes.quick()  # quick mode is this setting


def test_run_resumes_and_later_seeds_train_at_the_first_seeds_rate(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path))
    data = types.SimpleNamespace(identity={"train": "t", "val": "v"})
    monkeypatch.setattr(study, "prepare_timed", lambda mode: (data, {"seconds": 1.0, "bytes": 2}))
    monkeypatch.setattr(study, "heads", lambda mode, data: [("Linear probe", object, {}), ("FCN", object, {})])
    calls = []

    def fake_fit(head_class, data, seed=0, name=None, progress=True, lr=None, **config):
        calls.append((name, seed, lr))
        chosen = lr if lr is not None else {"Linear probe": 0.03, "FCN": 0.01}[name]
        return types.SimpleNamespace(metrics={"miou": 0.3 + seed / 100, "boundary_miou": 0.2},
                                     history={"time": [5.0]}, lr=chosen, lr_sweep=None if lr else {"0.01": {}})

    monkeypatch.setattr(chapter, "fit", fake_fit)
    found = study.run(settings=("lr by training loss",), seeds=(0, 1))
    assert calls == [("Linear probe", 0, None), ("Linear probe", 1, 0.03), ("FCN", 0, None), ("FCN", 1, 0.01)]
    runs = found["settings"]["lr by training loss"]["runs"]
    assert [(r["head"], r["seed"], r["lr"]) for r in runs] == [("Linear probe", 0, 0.03), ("Linear probe", 1, 0.03),
                                                              ("FCN", 0, 0.01), ("FCN", 1, 0.01)]
    assert study.load(study.study_path()) == found  # saved after every run
    calls.clear()
    study.run(settings=("lr by training loss",), seeds=(0, 1, 2))  # resumes: only the missing seed is trained
    assert calls == [("Linear probe", 2, 0.03), ("FCN", 2, 0.01)]
    calls.clear()
    study.run(settings=("lr by training loss",), seeds=(3,))  # seed 0 is recorded: seed 3 takes its rate, not a sweep
    assert calls == [("Linear probe", 3, 0.03), ("FCN", 3, 0.01)]


def test_a_setting_whose_mode_changed_is_run_anew(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLAB_RESULTS", str(tmp_path))
    stale = {"settings": {"fixed": {**entry(SIX), "mode": {**modes.quick().as_dict(), "lr": 0.5}}}}
    study.save(stale)
    data = types.SimpleNamespace(identity={})
    monkeypatch.setattr(study, "prepare_timed", lambda mode: (data, {"seconds": 1.0, "bytes": 2}))
    monkeypatch.setattr(study, "heads", lambda mode, data: [("FCN", object, {})])
    monkeypatch.setattr(chapter, "fit", lambda *a, seed=0, lr=None, **k: types.SimpleNamespace(
        metrics={"miou": 0.3, "boundary_miou": 0.2}, history={"time": [1.0]}, lr=0.03, lr_sweep=None))
    found = study.run(settings=("fixed",), seeds=(0,))
    assert [r["head"] for r in found["settings"]["fixed"]["runs"]] == ["FCN"]
    assert results.protocol({"mode": found["settings"]["fixed"]["mode"]}) == results.protocol(
        {"mode": study.study_mode("fixed").as_dict()})
