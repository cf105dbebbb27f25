"""Seed-to-seed spread: retrain chapters' heads with other seeds on the same data, and write a record per run.

    python -m seglab.seeds fcn pspnet --seeds 1 2     # heads named by their records' files (fcn.quick.json)

Each head is rebuilt from its chapter's record (its class and the keyword arguments it was trained with), so the
command needs the chapters to have run first. The records go to ``<results>/seeds/<name>.seed<k>.<mode>.json`` and
the head-to-head chapter reads them: a difference between two heads smaller than the spread between seeds of one
head is a tie.
"""

import argparse
import re

from seglab import chapter, results
from seglab import mode as modes


def seed_dir():
    return results.results_dir() / "seeds"


def source(name, mode):
    """The chapter record ``name`` of ``mode`` and the head class it names, checked (``chapter.build``): (record, class,
    the keyword arguments it was trained with). Raises before anything is trained."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name):
        raise ValueError(f"{name!r} is not a record name: use the name of a chapter's record file, e.g. fcn for "
                         "fcn.quick.json (letters, digits, _ and -).")
    path = results.results_dir() / results.file_name(name, mode.as_dict())
    if not path.is_file():
        raise FileNotFoundError(f"No record {path.name} in the results folder: run its chapter first "
                                "(python -m seglab.execute chapters/...).")
    rec = results.read(path)
    if rec is None or not isinstance(rec.get("config"), dict) or not isinstance(rec["config"].get("trained"), dict):
        raise ValueError(f"The record {path.name} cannot be read as a chapter's record with the head's trained "
                         "configuration (config.trained): restore it from git or re-run its chapter.")
    head_class = chapter.build(rec)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in rec["config"]["trained"].items()}
    return rec, head_class, config


def check_seeds(seeds):
    """Seeds must be distinct integers in 0..2**32 - 1 (what numpy's and torch's generators take)."""
    seeds = list(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32]
    if not seeds or bad:
        raise ValueError(f"Seeds must be integers from 0 to 2**32 - 1, at least one; got {seeds}.")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"Seed(s) {repeated} given more than once: each seed's record would overwrite the other's.")
    return seeds


def rerun(name, seeds, data):
    """Train the head of record ``<name>.<mode>.json`` once per seed; returns the paths of the records written."""
    mode = data.mode
    seeds = check_seeds(seeds)
    rec, head_class, config = source(name, mode)
    paths = []
    for seed in seeds:
        run = chapter.fit(head_class, data, seed=seed, name=f"{rec['head']} (seed {seed})", progress=False, **config)
        out = {"head": rec["head"], "chapter": rec["chapter"], "seed": seed, "miou": run.metrics["miou"],
               "pixel_acc": run.metrics["pixel_acc"], "iou": run.metrics["iou"], "mode": mode.as_dict(),
               "device": mode.device, "data": data.identity, "train_seconds": run.history["time"][-1]}
        paths.append(results.save(out, name=f"{name}.seed{seed}", folder=seed_dir()))
    return paths


def load(mode_name, split="book"):
    """Every readable seed record of a mode and split, as a list of (path, dict)."""
    found = [(p, results.read(p)) for p in sorted(seed_dir().glob(f"*.seed*.{mode_name}*.json"))]
    return [(p, r) for p, r in found if r is not None and r["mode"]["name"] == mode_name
            and results.split_of(r) == split]


def spread(mode_name, split="book"):
    """The seed-to-seed spread of a mode: for each head with at least 3 seeds (its chapter's run and the seed
    records), max - min of its mIoU in points. Returns ({head: (spread, [mIoU per seed])}, the largest spread), or
    ({}, None) when no head has 3 seeds yet. A seed record whose protocol (training settings and data identity,
    ``results.protocol``) differs from its head's chapter record is refused: it would measure another experiment."""
    chapters = results.load_all(mode_name, split=split)
    expected = {r["head"]: results.protocol(r) for r in chapters}
    per_head = {r["head"]: {r["seed"]: 100 * r["miou"]} for r in chapters}
    foreign = []
    for path, r in load(mode_name, split):
        if expected.setdefault(r["head"], results.protocol(r)) != results.protocol(r):
            foreign.append(path.name)
            continue
        per_head.setdefault(r["head"], {})[r["seed"]] = 100 * r["miou"]
    if foreign:
        raise ValueError(f"Seed records of another protocol or data than their head's chapter record: "
                         f"{', '.join(foreign)} (in {seed_dir().name}/). Their spread would measure another "
                         "experiment: move them out, or retrain them (python -m seglab.seeds).")
    measured = {head: (max(v.values()) - min(v.values()), [v[s] for s in sorted(v)])
                for head, v in per_head.items() if len(v) >= 3}
    return measured, max((s for s, _ in measured.values()), default=None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heads", nargs="+", help="record names, e.g. fcn pspnet")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args(argv)
    mode = modes.current()
    check_seeds(args.seeds)  # every name and seed is checked before the data, which takes minutes to prepare
    repeated = sorted({h for h in args.heads if args.heads.count(h) > 1})
    if repeated:
        raise ValueError(f"Record name(s) {repeated} given more than once.")
    for name in args.heads:
        source(name, mode)
    data = chapter.prepare(mode)
    for name in args.heads:
        for path in rerun(name, args.seeds, data):
            print("wrote", path.relative_to(results.results_dir().parent))


if __name__ == "__main__":
    main()
