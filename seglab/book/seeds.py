"""Seed-to-seed spread: retrain chapters' heads with other seeds on the same data, and write a record per run.

    python -m seglab.book.seeds fcn pspnet --seeds 1 2     # heads named by their records' files (fcn.quick.json)
    python -m seglab.book.seeds --all                      # every head chapter's record, seeds 1 and 2

Each head is rebuilt from its chapter's record (its class and the keyword arguments it was trained with), so the
command needs the chapters to have run first. The records go to ``<results>/seeds/<name>.seed<k>.<mode>.json`` and
the head-to-head chapter reads them: a difference between two heads smaller than the spread between seeds of one
head is a tie.
"""

import argparse
import re

from seglab import mode as modes
from seglab.book import chapter, results


def source(name, mode):
    """The chapter record ``name`` of ``mode`` and the head class it names, checked (``results.build``): (record, class,
    the keyword arguments it was trained with). Raises before anything is trained."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name):
        raise ValueError(f"{name!r} is not a record name: use the name of a chapter's record file, e.g. fcn for "
                         "fcn.quick.json (letters, digits, _ and -).")
    path = results.results_dir() / results.file_name(name, mode.as_dict())
    if not path.is_file():
        raise FileNotFoundError(f"No record {path.name} in the results folder: run its chapter first "
                                "(python -m seglab.book.execute chapters/...).")
    rec = results.read(path)
    if rec is None or not isinstance(rec.get("config"), dict) or not isinstance(rec["config"].get("trained"), dict):
        raise ValueError(f"The record {path.name} cannot be read as a chapter's record with the head's trained "
                         "configuration (config.trained): restore it from git or re-run its chapter.")
    head_class = results.build(rec)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in rec["config"]["trained"].items()}
    return rec, head_class, config


def rerun(name, seeds, data):
    """Train the head of record ``<name>.<mode>.json`` once per seed; returns the paths of the records written.
    ``data`` must hold the features the record was trained on (``chapter.prepare(mode, tokens=...)``)."""
    results.check_seeds(seeds)  # before the record is read, as before: bad seeds are refused first
    rec, head_class, config = source(name, data.mode)
    if rec.get("features", "levels") != data.features:
        raise ValueError(f"The record {name} was trained on the {rec.get('features', 'levels')!r} features, and the "
                         f"data given holds {data.features!r}: prepare it with tokens={rec.get('features') == 'taps'}.")
    return chapter.train_seeds(head_class, config, data, seeds, rec["head"], rec["chapter"], name, rec.get("lr"))


def all_names(mode):
    """The record names of every head chapter (1 to 89) of ``mode``, in chapter order: ``fcn`` for fcn.quick.json."""
    suffix = "." + results.file_name("", mode.as_dict()).lstrip(".")
    names = []
    for path in sorted(results.results_dir().glob("*" + suffix)):
        rec = results.read(path)
        if rec is not None and 0 < rec.get("chapter", 0) < 90 and isinstance(rec.get("config"), dict):
            names.append((rec["chapter"], path.name[:-len(suffix)]))
    return [name for _, name in sorted(names)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heads", nargs="*", help="record names, e.g. fcn pspnet")
    parser.add_argument("--all", action="store_true", help="every chapter record of the mode (chapters 1-89)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args(argv)
    mode = modes.current()
    if args.all:
        args.heads = args.heads + all_names(mode)
    if not args.heads:
        parser.error("name the heads' records (e.g. fcn pspnet) or give --all")
    results.check_seeds(args.seeds)  # every name and seed is checked before the data, which takes minutes to prepare
    repeated = sorted({h for h in args.heads if args.heads.count(h) > 1})
    if repeated:
        raise ValueError(f"Record name(s) {repeated} given more than once.")
    kinds = {name: source(name, mode)[0].get("features", "levels") for name in args.heads}
    for kind in sorted(set(kinds.values())):  # C2..C5 ("levels"), then the ViT heads' token maps ("taps")
        data = chapter.prepare(mode, tokens=kind == "taps")
        for name in (n for n in args.heads if kinds[n] == kind):
            for path in rerun(name, args.seeds, data):
                print("wrote", path.relative_to(results.results_dir().parent))


if __name__ == "__main__":
    main()
