"""Seed-to-seed spread: retrain chapters' heads with other seeds on the same data, and write a record per run.

    python -m seglab.seeds fcn pspnet --seeds 1 2     # heads named by their records' files (fcn.quick.json)

Each head is rebuilt from its chapter's record (its class and the keyword arguments it was trained with), so the
command needs the chapters to have run first. The records go to ``<results>/seeds/<name>.seed<k>.<mode>.json`` and
the head-to-head chapter reads them: a difference between two heads smaller than the spread between seeds of one
head is a tie.
"""

import argparse
import json

from seglab import chapter, results
from seglab import mode as modes


def seed_dir():
    return results.results_dir() / "seeds"


def rerun(name, seeds, data):
    """Train the head of record ``<name>.<mode>.json`` once per seed; returns the paths of the records written."""
    mode = data.mode
    source = results.results_dir() / f"{name}.{mode.name}.json"
    if not source.is_file():
        raise FileNotFoundError(f"No record {source.name} in the results folder: run its chapter first "
                                "(python -m seglab.execute chapters/...).")
    rec = json.loads(source.read_text())
    head_class = chapter.build(rec)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in rec["config"]["trained"].items()}
    paths = []
    for seed in seeds:
        run = chapter.fit(head_class, data, seed=seed, name=f"{rec['head']} (seed {seed})", progress=False, **config)
        out = {"head": rec["head"], "chapter": rec["chapter"], "seed": seed, "miou": run.metrics["miou"],
               "pixel_acc": run.metrics["pixel_acc"], "iou": run.metrics["iou"], "mode": mode.as_dict(),
               "device": mode.device, "train_seconds": run.history["time"][-1]}
        paths.append(results.save(out, name=f"{name}.seed{seed}", folder=seed_dir()))
    return paths


def load(mode_name):
    """Every seed record of a mode, as a list of dicts."""
    return [json.loads(p.read_text()) for p in sorted(seed_dir().glob(f"*.seed*.{mode_name}.json"))]


def spread(mode_name):
    """The seed-to-seed spread of a mode: for each head with at least 3 seeds (its chapter's run and the seed
    records), max - min of its mIoU in points. Returns ({head: (spread, [mIoU per seed])}, the largest spread), or
    ({}, None) when no head has 3 seeds yet."""
    per_head = {r["head"]: {r["seed"]: 100 * r["miou"]} for r in results.load_all(mode_name)}
    for r in load(mode_name):
        per_head.setdefault(r["head"], {})[r["seed"]] = 100 * r["miou"]
    measured = {head: (max(v.values()) - min(v.values()), [v[s] for s in sorted(v)])
                for head, v in per_head.items() if len(v) >= 3}
    return measured, max((s for s, _ in measured.values()), default=None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heads", nargs="+", help="record names, e.g. fcn pspnet")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args(argv)
    data = chapter.prepare(modes.current())
    for name in args.heads:
        for path in rerun(name, args.seeds, data):
            print("wrote", path.relative_to(results.results_dir().parent))


if __name__ == "__main__":
    main()
