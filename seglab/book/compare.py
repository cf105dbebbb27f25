"""How does my head compare? Train your own decode head on the book's protocol and see where it stands.

    python -m seglab.book.compare my_module:MyHead --kwargs '{"in_channels": "C5", "channels": 64}'
    python -m seglab.book.compare my_module:MyHead --seeds 0 1 2 --name "My head" --save my_results/

``my_module`` is imported from the current directory (or anywhere on ``sys.path``); ``MyHead`` must be a
``torch.nn.Module`` class that keeps the book's contract: ``forward`` takes the backbone's list of feature maps
[C2, C3, C4, C5] (float (b, c_i, h_i, w_i)) and returns logits (b, 21, h, w) at its own resolution (the protocol
resizes them). A head that trains with more than the cross-entropy of its logits may define
``losses(features, masks)`` returning a dict of losses, as the book's heads do.

``--kwargs`` is a JSON object of the constructor's keyword arguments. The strings "C2", "C3", "C4" and "C5" stand
for the channel count of that level of the protocol's backbone, "levels" for the list of all four, so that one
command line works in every mode (Lite0's [24, 40, 112, 320] in quick mode, ResNet-50's [256, 512, 1024, 2048] in
brief mode); inside a list too (["C4", "C5"]). A list becomes a tuple where the constructor's default is a tuple.

The head is built once on the CPU and run on a batch of the protocol's features before anything trains; then it is
trained with each seed (``chapter.fit``, the mode of ``seglab.mode.current()``), profiled as trained, and compared
with the book's records of the same mode and split: the table of ``seglab.book.comparison`` with your head in it, and a
paired bootstrap test (``seglab.book.stats``) against the book's best head and against FCN. Nothing is written unless
``--save DIR`` is given, and never into the book's results folder.
"""

import argparse
import importlib
import inspect
import json
import os
import re
import sys
import traceback
from pathlib import Path

import torch

from seglab import mode as modes
from seglab.book import chapter, comparison
from seglab.book import profile as profiling
from seglab.book import results, stats
from seglab.data.voc import CLASSES

NUM_CLASSES = len(CLASSES)  # 21: VOC's 20 object classes and the background
LEVELS = ("C2", "C3", "C4", "C5")
CONTRACT = ("a torch.nn.Module whose forward takes the backbone's list of feature maps [C2, C3, C4, C5] (float "
            f"(b, c_i, h_i, w_i)) and returns logits (b, {NUM_CLASSES}, h, w) at its own resolution")
WORD = r"[A-Za-z_][A-Za-z0-9_]*"


class CompareError(ValueError):
    """A problem with what the command line named (the class, its arguments, the folder): said, not a traceback."""


def load_class(spec):
    """The class ``module:Class`` names (``Class`` may be dotted: ``Outer.Inner``), checked to be a subclass of
    ``torch.nn.Module``. The module is imported from the current directory or ``sys.path`` (the current directory
    first, as ``python -m`` does). Raises :class:`CompareError` with the module's name and the original error."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise CompareError(f"{spec!r} does not name a head class: write module:Class, e.g. my_module:MyHead for the "
                           "class MyHead in my_module.py.")
    module_name, class_name = spec.split(":")
    if module_name.endswith(".py"):
        raise CompareError(f"{spec!r} names a file: name the module instead, {Path(module_name).stem}:{class_name} "
                           f"(run from the folder that holds {Path(module_name).name}).")
    if not re.fullmatch(rf"{WORD}(\.{WORD})*", module_name) or not re.fullmatch(rf"{WORD}(\.{WORD})*", class_name):
        raise CompareError(f"{spec!r} does not name a head class: write module:Class, with Python names on both "
                           "sides (e.g. my_module:MyHead or my_package.heads:MyHead).")
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise CompareError(f"No module named {module_name!r} (in {spec!r}) can be imported from {cwd} or "
                               "sys.path: run the command from the folder that holds it, or add that folder to "
                               "PYTHONPATH.") from error
        raise CompareError(f"Importing {module_name} (named in {spec!r}) failed: {_described(error)}") from error
    except Exception as error:  # the user's module raised while it was imported
        raise CompareError(f"Importing {module_name} (named in {spec!r}) failed: {_described(error)}") from error
    found = module
    for part in class_name.split("."):
        if not hasattr(found, part):
            classes = sorted(n for n, v in vars(module).items() if isinstance(v, type)
                             and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__)
            raise CompareError(f"{module_name} has no {class_name!r} (in {spec!r}); the torch.nn.Module classes it "
                               f"defines: {', '.join(classes) or 'none'}.")
        found = getattr(found, part)
    if not isinstance(found, type):
        raise CompareError(f"{spec!r} is a {type(found).__name__}, not a class: name the head's class, {CONTRACT}.")
    if not issubclass(found, torch.nn.Module):
        raise CompareError(f"{spec!r} is a class but not a subclass of torch.nn.Module: a head is {CONTRACT}.")
    return found


def _described(error):
    """``Type: message (file, line n)``: the error and where it was raised, for errors from the user's code."""
    where = traceback.extract_tb(error.__traceback__)
    place = f" ({Path(where[-1].filename).name}, line {where[-1].lineno})" if where else ""
    return f"{type(error).__name__}: {error}{place}"


def resolve_kwargs(kwargs, channels, head_class):
    """The keyword arguments for ``head_class``: the strings "C2".."C5" replaced by that level's channel count in
    ``channels`` (the backbone's four levels), "levels" by the list of all four, also inside lists; a list becomes
    a tuple where the constructor's default for that argument is a tuple."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CompareError(f"The keyword arguments must be a JSON object of names to values, e.g. "
                           f"'{{\"channels\": 64}}'; got {kwargs!r}.")
    channels = [int(c) for c in channels]
    if len(channels) != len(LEVELS):
        raise CompareError(f"The backbone gives {len(channels)} levels ({channels}), not the four C2..C5.")
    names = dict(zip(LEVELS, channels))

    def substituted(value):
        if isinstance(value, str) and value in names:
            return names[value]
        if value == "levels":
            return list(channels)
        return value

    try:
        defaults = {k: p.default for k, p in inspect.signature(head_class).parameters.items()}
    except (TypeError, ValueError):  # no signature to read: leave the lists as they are
        defaults = {}
    out = {}
    for key, value in kwargs.items():
        value = substituted(value)
        if isinstance(value, list):
            value = [substituted(v) for v in value]
            if isinstance(defaults.get(key), tuple):
                value = tuple(value)
        out[key] = value
    return out


def build_head(head_class, config):
    """``head_class(**config)``, on the CPU; a failure (an unknown argument, a wrong value) said with the call."""
    call = f"{head_class.__name__}(" + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ")"
    try:
        return head_class(**config).cpu()
    except Exception as error:
        raise CompareError(f"Building the head failed: {call} raised {_described(error)}. Check --kwargs "
                           "(\"C2\"..\"C5\" stand for the levels' channel counts, \"levels\" for all four).") from error


def check_contract(head, features, num_classes=NUM_CLASSES):
    """Run ``head`` on ``features`` (the list [C2..C5] of one batch), in training mode then in eval mode, without
    autograd, and check that it returns logits (b, ``num_classes``, h, w): a finite float 4-d tensor. Raises
    :class:`CompareError` saying what was expected and what came back; returns the output's shape."""
    shapes = ", ".join(str(tuple(f.shape)) for f in features)
    expected = (f"expected {CONTRACT}; the protocol's features of this batch are [{shapes}], so the logits should "
                f"be ({features[0].shape[0]}, {num_classes}, h, w)")
    name = type(head).__name__
    was_training = head.training
    try:
        for training in (True, False):
            head.train(training)
            what = "in training mode" if training else "in eval mode"
            try:
                with torch.no_grad():
                    out = head([f.clone() for f in features])
            except Exception as error:
                raise CompareError(f"{name} failed on the protocol's features {what}: {_described(error)}; "
                                   f"{expected}.") from error
            if not isinstance(out, torch.Tensor):
                raise CompareError(f"{name} returned a {type(out).__name__} {what}, not a tensor; {expected}.")
            if out.dim() != 4:
                raise CompareError(f"{name} returned a {out.dim()}-d tensor of shape {tuple(out.shape)} {what}, not "
                                   f"4-d logits; {expected}.")
            b, c, h, w = out.shape
            if b != features[0].shape[0] or c != num_classes or h == 0 or w == 0:
                raise CompareError(f"{name} returned logits of shape {tuple(out.shape)} {what}: "
                                   + (f"{c} channels, not one per class ({num_classes}); " if c != num_classes else "")
                                   + f"{expected}.")
            if not out.is_floating_point() or not torch.isfinite(out).all():
                bad = "non-float" if not out.is_floating_point() else "NaN or infinite"
                raise CompareError(f"{name} returned {bad} logits {what}; {expected}.")
    finally:
        head.train(was_training)
    return tuple(out.shape)


def protocol_batches(data, batch=2):
    """Feature batches the protocol feeds a head, on the CPU: in quick mode a training batch of random crops of the
    cached train features and a batch of whole val canvases; in brief mode the backbone's features of val images."""
    mode = data.mode
    if mode.frozen:
        index = torch.arange(min(batch, len(data.train_features)))
        if mode.crop is None:
            train = data.train_features.batch(index)[0]
        else:
            train = data.train_features.crops(index, mode.crop, torch.Generator().manual_seed(0))[0]
        val = data.val_features.batch(torch.arange(min(batch, len(data.val_features))))[0]
        return [[f.float().cpu() for f in train], [f.float().cpu() for f in val]]
    from seglab.data.augment import normalize
    images = data.val_split.images[:batch]
    with torch.no_grad():
        return [[f.float().cpu() for f in data.backbone.cpu().eval()(normalize(images))]]


def check_save_folder(folder):
    """A folder ``--save`` may write to: never the book's results (``results.in_book_results``) nor the results
    folder the comparison reads (``results.results_dir()``) or a folder inside it."""
    if folder is None:
        return None
    folder = Path(folder)
    book = results.results_dir().resolve()
    inside = folder.resolve() == book or book in folder.resolve().parents
    if results.in_book_results(folder) or inside:
        which = "the book's results folder" if results.in_book_results(folder) else f"the results folder ({book})"
        raise CompareError(f"--save {folder}: that is {which} or a folder inside it, whose records the book's "
                           "comparisons read; a head compared from the command line never writes there. Save to a "
                           "folder of your own.")
    if folder.exists() and not folder.is_dir():
        raise CompareError(f"--save {folder}: it exists and is not a folder.")
    return folder


def record_name(name):
    """A file name stem for a head's name: ``My head`` -> ``my_head``."""
    return re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_") or "head"


def run_record(run, name, data, spec, config):
    """A run as a seed record holds it (``seglab.book.seeds``), plus how the head was built: what ``stats`` reads."""
    mode = data.mode
    return {"head": name, "seed": run.seed, **results.scores_of(run.metrics), "mode": mode.as_dict(),
            "device": mode.device, "data": data.identity, "train_seconds": run.history["time"][-1], "lr": run.lr,
            "config": {"class": spec,
                       "trained": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}}


def run(head_class, kwargs=None, seeds=(0, 1, 2), name=None, save=None, data=None, mode=None, spec=None):
    """Check, train (one run per seed), profile and compare ``head_class``; prints the report and returns a dict:
    name, config, runs (records), summary, boundary, profile, rows (the book's and this head's), tests, paths,
    report (the text printed)."""
    try:
        seeds = results.check_seeds(seeds)
    except ValueError as error:
        raise CompareError(str(error)) from None
    save = check_save_folder(save)
    name = name or head_class.__name__
    spec = spec or f"{head_class.__module__}:{head_class.__qualname__}"
    mode = mode or (data.mode if data is not None else modes.current())
    data = data or chapter.prepare(mode)
    config = resolve_kwargs(kwargs, data.channels, head_class)
    head = build_head(head_class, config)
    for features in protocol_batches(data):
        check_contract(head, features)
    del head
    print(f"{name} keeps the contract; training it with seed(s) {', '.join(map(str, seeds))}.")
    runs, records = [], []
    for seed in seeds:
        lr = runs[0].lr if runs else None  # the first seed chooses the learning rate (where the mode sweeps)
        one = chapter.fit(head_class, data, seed=seed, name=f"{name} (seed {seed})", progress=False, lr=lr, **config)
        runs.append(one)
        records.append(run_record(one, name, data, spec, config))
    profile = profiling.trained_profile(runs[0].head, chapter.val_features(runs[0], [0]))
    paths = []
    if save is not None:
        for one, rec in zip(runs, records):
            paths.append(results.save({**rec, "trained_profile": profile}, name=f"{record_name(name)}.seed{one.seed}",
                                      folder=save))
    outcome = compare_with_book(name, records, profile, data.mode)
    outcome.update(name=name, config=config, runs=records, profile=profile, paths=paths)
    text = report(outcome, data.mode)
    if paths:
        text += "\n\nSaved " + ", ".join(str(p) for p in paths)
    print(text)
    outcome["report"] = text
    return outcome


def _protocol(record):
    return json.loads(json.dumps(results.protocol(record)))  # tuples and lists alike, as in a record read back


def differences(mine, theirs):
    """What differs between two protocols (``results.protocol``), in a few words, or '' when they are equal."""
    if mine == theirs:
        return ""
    keys = sorted(set(mine["mode"]) | set(theirs["mode"]))
    said = [f"{k} {theirs['mode'].get(k)} vs {mine['mode'].get(k)}" for k in keys
            if mine["mode"].get(k) != theirs["mode"].get(k)]
    if mine["data"] != theirs["data"]:
        said.append("other train or val images")
    return ", ".join(said)


def compare_with_book(name, records, profile, mode):
    """This head's numbers beside the book's records of ``mode``: summary, boundary, rows (sorted by mean mIoU, this
    head's marked ``mine``), tests against the book's best head and FCN, and ``problem`` when the book has none."""
    summary, boundary = stats.summary(records), stats.summary(records, "boundary_miou")
    mine = {"head": name, "chapter": None, "mine": True, "other_protocol": "",
            "mIoU (%)": summary["mean"], "± sd": summary["sd"], "seeds": summary["n"],
            "boundary mIoU (%)": None if boundary is None else boundary["mean"],
            "trained params (k)": profile["params"] / 1e3, "trained MFLOPs": profile["flops"] / 1e6,
            "trained activations (MiB)": profile["activation_bytes"] / 2**20}
    outcome = {"summary": summary, "boundary": boundary, "rows": [mine], "tests": [], "problem": None}
    try:
        book = stats.runs(mode.name, mode.split)
        rows = comparison.rows(mode.name, mode.split)
    except ValueError as error:  # seed records of another protocol: the book's own comparison refuses them too
        outcome["problem"] = f"The book's records cannot be compared: {error}"
        return outcome
    if not rows:
        outcome["problem"] = (f"The book has no records of {mode.name} mode on the {mode.split} split in "
                              f"{results.results_dir()}: run the chapters first (python -m seglab.book.execute "
                              "chapters/...), then compare again.")
        return outcome
    protocol = _protocol(records[0])
    for row in rows:
        chapter_record = next(r for r in book[row["head"]] if r.get("profile"))
        row.update(mine=False, other_protocol=differences(protocol, _protocol(chapter_record)))
    outcome["rows"] = sorted(rows + [mine], key=lambda r: -r["mIoU (%)"])
    best = max(rows, key=lambda r: r["mIoU (%)"])
    against = [(best, "the book's best")] + [(r, "") for r in rows if r["head"] == "FCN" and r is not best]
    for row, role in against:
        theirs = stats.summary(book[row["head"]])
        test = None if row["other_protocol"] else stats.paired_bootstrap(records, book[row["head"]])
        outcome["tests"].append({"head": row["head"], "role": role, "theirs": theirs, "test": test,
                                 "difference": summary["mean"] - theirs["mean"],
                                 "other_protocol": row["other_protocol"]})
    if not any(r["head"] == "FCN" for r in rows):
        outcome["tests"].append({"head": "FCN", "missing": True})
    return outcome


def _number(value, decimals):
    return "—" if value is None else f"{value:.{decimals}f}"


TABLE = (("mIoU (%)", "mIoU", 1), ("± sd", "± sd", 1), ("seeds", "seeds", 0), ("boundary mIoU (%)", "boundary", 1),
         ("trained params (k)", "params (k)", 1), ("trained MFLOPs", "MFLOPs", 0),
         ("trained activations (MiB)", "act. (MiB)", 1))


def table_text(rows):
    """The rows as a plain-text table: rank, head (``->`` marks this head, ``*`` another protocol), chapter, mIoU
    and spread over seeds, boundary mIoU, and the cost as trained."""
    heads = [r["head"] + (" *" if r.get("other_protocol") else "") for r in rows]
    width = max(len(h) for h in heads + ["head"])
    lines = ["      " + "head".ljust(width) + "  ch." + "".join(f"{label:>12s}" for _, label, _ in TABLE)]
    for rank, (row, head) in enumerate(zip(rows, heads), 1):
        marker = "->" if row.get("mine") else "  "
        chapter_number = "" if row.get("chapter") is None else str(row["chapter"])
        lines.append(f"{marker}{rank:>3d} " + head.ljust(width) + f"  {chapter_number:>3s}"
                     + "".join(f"{_number(row.get(key), d):>12s}" for key, _, d in TABLE))
    return "\n".join(lines)


def report(outcome, mode):
    """The text ``run`` prints: this head's numbers, the table beside the book's heads, the paired tests."""
    s, b, p, name = outcome["summary"], outcome["boundary"], outcome["profile"], outcome["name"]
    spread = "" if s["sd"] is None else f" ± {s['sd']:.1f}"
    lines = [f"{name} in {mode.name} mode ({mode.split} split), {s['n']} seed(s):",
             f"  mIoU           {s['mean']:.1f}{spread}% (mean{' ± sd' if spread else ''} over seeds; each seed: "
             + ", ".join(f"{v:.1f}" for v in s["values"]) + ")",
             f"  boundary mIoU  {'—' if b is None else format(b['mean'], '.1f') + '% (mean over seeds)'}",
             f"  as trained     {p['params']:,} parameters, {p['flops'] / 1e6:,.1f} MFLOPs per image, "
             f"{p['activation_bytes'] / 2**20:.2f} MiB of activations (training batch of {p['activation_batch']})"]
    if p.get("uncounted"):
        lines.append("                 FLOPs not counted for: " + ", ".join(sorted(p["uncounted"])))
    if mode.name == "ci":
        lines.append("  (ci mode: a budget that checks the code runs; these numbers measure nothing)")
    if outcome["problem"]:
        return "\n".join(lines + ["", outcome["problem"]])
    rows = outcome["rows"]
    rank = next(i for i, r in enumerate(rows, 1) if r.get("mine"))
    lines += ["", f"Beside the book's heads ({mode.name} mode, {mode.split} split), by mean mIoU over seeds: {name} "
              f"ranks {rank} of {len(rows)} (-> marks it). Cost as trained, on the protocol's features.",
              table_text(rows)]
    foreign = [r for r in rows if r.get("other_protocol")]
    if foreign:
        lines.append("  * trained under another protocol than this run (" + "; ".join(
            f"{r['head']}: {r['other_protocol']}" for r in foreign) + "): not like for like; re-run its chapter.")
    lines += ["", "Paired bootstrap test (val images resampled together, each head's seeds resampled):"]
    for t in outcome["tests"]:
        if t.get("missing"):
            lines.append("  vs FCN: no FCN record in this mode (run chapter 2 first).")
            continue
        role = f"{t['role']}, " if t["role"] else ""
        head = f"  vs {t['head']} ({role}{t['theirs']['mean']:.1f}% over {t['theirs']['n']} seed(s)): "
        if t["other_protocol"]:
            lines.append(head + f"not tested: trained under another protocol ({t['other_protocol']}).")
        else:
            lines.append(head + f"{t['difference']:+.1f} points, {stats.verdict(t['test'])}.")
    return "\n".join(lines)


def parse_kwargs(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CompareError(f"--kwargs is not JSON ({error}): write a JSON object in single quotes, e.g. --kwargs "
                           "'{\"in_channels\": \"C5\", \"channels\": 64}'.") from None
    if not isinstance(value, dict):
        raise CompareError(f"--kwargs must be a JSON object (names to values), e.g. '{{\"channels\": 64}}'; "
                           f"got {text}.")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m seglab.book.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("head", help="the head class, module:Class (e.g. my_module:MyHead)")
    parser.add_argument("--kwargs", default="{}", help="its keyword arguments, a JSON object; \"C2\"..\"C5\" and "
                        "\"levels\" stand for the backbone's channel counts")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds to train with (default 0 1 2)")
    parser.add_argument("--name", help="the name in the report and records (default: the class name)")
    parser.add_argument("--save", metavar="DIR", help="write each seed's record to DIR (never the book's results)")
    args = parser.parse_args(argv)
    try:
        # everything the command line says is checked before the data, which can take minutes to prepare
        kwargs = parse_kwargs(args.kwargs)
        try:
            results.check_seeds(args.seeds)
        except ValueError as error:
            raise CompareError(str(error)) from None
        check_save_folder(args.save)
        head_class = load_class(args.head)
        return run(head_class, kwargs, seeds=args.seeds, name=args.name, save=args.save, spec=args.head)
    except CompareError as error:
        raise SystemExit(f"seglab.book.compare: {error}") from None


if __name__ == "__main__":
    main()
