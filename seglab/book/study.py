"""The protocol study: which quick protocol tells heads apart, within the budget of a 2-core machine?

    python -m seglab.book.study                       # every setting, 6 heads x 3 seeds; resumes where it stopped
    python -m seglab.book.study --settings today      # one setting

Each setting is a variant of quick mode. On it, six heads that span the book's designs (the linear probe, FCN,
PSPNet, Non-local, Semantic FPN, DeepLabV3+) are trained with 3 seeds each, and scored as VOC scores them. The
study's question is statistical: is the spread of the head means large against the spread between seeds of one
head? Its measure, the *discrimination*, is the standard deviation of the head means divided by the pooled
seed-to-seed standard deviation. A protocol whose discrimination is near 1 cannot rank heads at all. Heads that
end below the linear probe (its mean minus its standard deviation) are *failures* of the setting: they would
inflate the spread of the means, so they are left out of it, and a setting with failures is not chosen.

The study also measures what each setting costs: the seconds to train a head, and the seconds and bytes of its
one-time feature cache (built afresh, in a scratch cache folder, so that the time is measured, not remembered).
Results go to ``<results>/study/protocol.json`` after every run, so an interrupted study resumes.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from seglab import mode as modes
from seglab.book import results
from seglab.data.atomic import write_text

# Each setting, as the fields of quick mode it changes. "today" is the protocol before the study; "fixed" one
# learning rate for every head; "lr by training loss" (quick mode as it is) lets each head's seed 0 choose between
# 1e-2 and 3e-2 by its training loss, and its other seeds train at the choice.
SETTINGS = {
    "today": dict(lr=0.01, floor=8, standardize=False, lr_candidates=()),
    "fixed": dict(lr=0.03, floor=64, standardize=True, lr_candidates=()),
    "lr by training loss": dict(lr=0.03, floor=64, standardize=True, lr_candidates=(0.01, 0.03)),
    "lr by training loss, Lite2": dict(backbone="efficientnet_lite2", lr=0.03, floor=64, standardize=True,
                                       lr_candidates=(0.01, 0.03)),
}
SEEDS = (0, 1, 2)
BUDGET = {"train_seconds": 60, "cache_seconds": 300, "cache_bytes": 2 * 2**30}  # the bounds, 2 cores


def study_mode(setting, device="cpu"):
    """Quick mode with the fields of ``SETTINGS[setting]``."""
    return replace(modes.quick(device), **SETTINGS[setting])


def heads(mode, data):
    """The six heads of the study as (name, class, keyword arguments), built as their chapters build them."""
    from seglab.heads.deeplabv3plus import DeepLabV3PlusHead
    from seglab.heads.fcn import FCNHead
    from seglab.heads.fpn import SemanticFPN
    from seglab.heads.linear import LinearHead
    from seglab.heads.nonlocal_net import NonLocalHead
    from seglab.heads.psp import PSPHead
    c5 = data.channels[-1]
    scale = 64 // data.val_features.levels[-1].shape[-1]  # chapter 7: the reference's C5 side over this one
    return [
        ("Linear probe", LinearHead, dict(in_channels=c5)),
        ("FCN", FCNHead, dict(in_channels=c5, channels=mode.head_channels(512))),
        ("PSPNet", PSPHead, dict(in_channels=c5, channels=mode.head_channels(512), pool_scales=(1, 2, 3, 6))),
        ("Non-local", NonLocalHead, dict(in_channels=c5, channels=mode.head_channels(512))),
        ("Semantic FPN", SemanticFPN, dict(in_channels=data.channels, neck_channels=mode.channels(256),
                                          channels=mode.head_channels(128), feature_strides=data.strides)),
        ("DeepLabV3+", DeepLabV3PlusHead, dict(in_channels=c5, channels=mode.head_channels(512),
                                                dilations=tuple(1 if r == 1 else r // scale for r in (1, 12, 24, 36)),
                                                c1_in_channels=data.channels[0], c1_channels=mode.channels(48))),
    ]


def study_path():
    """``study/protocol.json`` in the results folder (a subfolder: every top-level ``*.json`` there is a record)."""
    return results.results_dir() / "study" / "protocol.json"


def load(path=None):
    """The study's results: {"settings": {name: {"mode", "cache", "runs": [...]}}}, or an empty study."""
    path = Path(path or study_path())
    if not path.is_file():
        return {"settings": {}}
    return json.loads(path.read_text())


def save(study, path=None):
    path = Path(path or study_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(study, indent=1, sort_keys=True) + "\n")
    return path


def prepare_timed(mode):
    """``chapter.prepare`` with its feature cache built afresh in a scratch folder: the data, and the cache's
    seconds and bytes."""
    from seglab.book import chapter
    scratch = Path(tempfile.mkdtemp(prefix="seglab-study-cache-"))
    before = os.environ.get("SEGLAB_CACHE")
    os.environ["SEGLAB_CACHE"] = str(scratch)
    try:
        start = time.perf_counter()
        data = chapter.prepare(mode, progress=False)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in scratch.rglob("*.pt"))
    finally:
        if before is None:
            os.environ.pop("SEGLAB_CACHE", None)
        else:
            os.environ["SEGLAB_CACHE"] = before
        shutil.rmtree(scratch, ignore_errors=True)
    return data, {"seconds": seconds, "bytes": size}


def run(settings=tuple(SETTINGS), seeds=SEEDS, path=None):
    """Train every head of the study on every setting with every seed, skipping runs already in the file."""
    from seglab.book import chapter
    study = load(path)
    for setting in settings:
        mode = study_mode(setting)
        entry = study["settings"].get(setting)
        if entry is None or results.protocol({"mode": entry["mode"]})["mode"] != \
                results.protocol({"mode": mode.as_dict()})["mode"]:
            entry = study["settings"][setting] = {"mode": mode.as_dict(), "runs": []}  # a changed setting: anew
        data, entry["cache"] = prepare_timed(mode)
        done = {(r["head"], r["seed"]) for r in entry["runs"]}
        todo = [(h, s) for h in heads(mode, data) for s in seeds if (h[0], s) not in done]
        for (name, head_class, config), seed in tqdm(todo, desc=f"study: {setting}"):
            start = time.perf_counter()
            recorded = [r for r in entry["runs"] if r["head"] == name]  # the head's seeds done so far
            first = min(recorded, key=lambda r: r["seed"], default=None)
            # a later seed trains at the rate its head's lowest seed chose; the lowest seed chooses (sweeps)
            lr = first.get("lr") if first is not None and seed > first["seed"] else None
            fitted = chapter.fit(head_class, data, seed=seed, name=name, progress=False, lr=lr, **config)
            m = fitted.metrics
            entry["runs"].append({"head": name, "seed": seed, "miou": m["miou"], "boundary_miou": m["boundary_miou"],
                                  "train_seconds": fitted.history["time"][-1], "lr": fitted.lr,
                                  "lr_sweep": fitted.lr_sweep,
                                  "seconds": time.perf_counter() - start, "data": data.identity})
            save(study, path)
    return study


PROBE = "Linear probe"


def summary(setting_entry):
    """Per head: mean and standard deviation of mIoU over seeds (points); the *failures*, heads whose mean is below
    the linear probe's mean minus its standard deviation (a protocol that cannot train a head is not telling heads
    apart, it is breaking them); and the setting's discrimination over the other heads: the standard deviation of
    their means over their pooled seed standard deviation (each from n - 1)."""
    per_head = {}
    for r in setting_entry["runs"]:
        per_head.setdefault(r["head"], []).append(100 * r["miou"])
    means = {h: statistics.mean(v) for h, v in per_head.items()}
    sds = {h: statistics.stdev(v) for h, v in per_head.items() if len(v) >= 2}
    probe = PROBE in means and PROBE in sds
    failures = [h for h in means if probe and h != PROBE and means[h] < means[PROBE] - sds[PROBE]]
    kept = [h for h in means if h not in failures]
    pooled = statistics.mean(sds[h] ** 2 for h in kept if h in sds) ** 0.5 if sds else float("nan")
    spread = statistics.stdev(means[h] for h in kept) if len(kept) >= 2 else float("nan")
    seconds = max((r["train_seconds"] for r in setting_entry["runs"]), default=float("nan"))
    first = min((r["seed"] for r in setting_entry["runs"]), default=0)
    whole = max((r["seconds"] for r in setting_entry["runs"] if r["seed"] == first), default=float("nan"))
    return {"means": means, "sds": sds, "failures": failures, "pooled_sd": pooled, "spread_of_means": spread,
            "discrimination": spread / pooled if pooled else float("nan"), "slowest_train_seconds": seconds,
            "slowest_first_seed_seconds": whole}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = parser.parse_args(argv)
    study = run(args.settings, args.seeds)
    for name in args.settings:
        s = summary(study["settings"][name])
        print(f"{name}: discrimination {s['discrimination']:.2f} (head means spread {s['spread_of_means']:.2f}, "
              f"pooled seed sd {s['pooled_sd']:.2f} points); slowest head {s['slowest_train_seconds']:.0f} s")


if __name__ == "__main__":
    main()


def within_budget(setting_entry):
    """Whether a setting's measured costs keep inside ``BUDGET``: its slowest head's training, and its cache."""
    s, cache = summary(setting_entry), setting_entry.get("cache", {})
    return (s["slowest_train_seconds"] <= BUDGET["train_seconds"] and cache.get("seconds", 0) <= BUDGET["cache_seconds"]
            and cache.get("bytes", 0) <= BUDGET["cache_bytes"])


def choose(study):
    """The setting with the best discrimination among those within the budget where no head fails (every head
    with all its seeds); None if there is none."""
    complete = {name: e for name, e in study["settings"].items()
                if len(e["runs"]) == len(SEEDS) * 6 and within_budget(e) and not summary(e)["failures"]}
    if not complete:
        return None
    return max(complete, key=lambda name: summary(complete[name])["discrimination"])


def table(study):
    """One row per setting: what it changes, its discrimination and its costs (a pandas table)."""
    import pandas as pd
    rows = []
    for name, entry in study["settings"].items():
        s, cache = summary(entry), entry.get("cache", {})
        changed = ", ".join(f"{k}={v}" for k, v in SETTINGS.get(name, {}).items())
        rows.append({"setting": name, "settings": changed, "runs": len(entry["runs"]),
                     "heads below the probe": ", ".join(s["failures"]) or "none",
                     "discrimination": s["discrimination"], "spread of head means": s["spread_of_means"],
                     "pooled seed sd": s["pooled_sd"], "slowest head (s)": s["slowest_train_seconds"],
                     "slowest seed 0, sweep and evaluation (s)": s["slowest_first_seed_seconds"],
                     "cache (s)": cache.get("seconds"), "cache (MB)": cache.get("bytes", 0) / 1e6,
                     "within budget": within_budget(entry)})
    return pd.DataFrame(rows).set_index("setting")
