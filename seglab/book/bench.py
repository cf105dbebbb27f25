"""Latency of every trained head, timed in one process at two settings, written as one table.

    python -m seglab.book.bench                        # every head of the current mode's records, 10 timed calls each
    python -m seglab.book.bench --repeats 30 --threads 2
    python -m seglab.book.bench --heads FCN "Linear probe"

The chapters' own latencies are each taken in a different process, at a different time, with two repeats (quick
mode): fine for a chapter, too noisy to rank heads by. This command rebuilds every head from its chapter's record
(``results.build``: only classes of ``seglab.heads``) and times all of them one after the other, on the same
device and thread count, at two settings:

- ``standard``: the head at its reference configuration (a record's ``standard`` kwargs where the chapter profiled
  another configuration than the reference, e.g. DSConv FCN; the reference with the record's ``profiled`` overrides
  otherwise, e.g. LR-ASPP's ResNet-50 input channels), 21 classes, on ``profile.standard_features()``: ResNet-50-D8
  features of one 512x512 image;
- ``trained``: the head as it was trained (``config.trained``) on features of the shapes the mode's backbone gives
  for one image at the mode's image size (seeded random values: only the shapes matter).

The heads written for a plain ViT (SETR, DPT, Segmenter) have no C2..C5: their records name the features they were
trained on (``features``: "taps", ``seglab.backbones.taps``) and the token shapes of their reference profile
(``profiled["shapes"]``, e.g. ``profile.VIT_B16_SHAPES``); they are timed on those, and the table keeps their
shapes under the head's ``shapes``.

Each head, at each setting: eval mode, no autograd, two warm-up calls, then ``repeats`` single calls timed with
``time.perf_counter`` (CUDA synchronised); the table holds the median and the 25th and 75th percentiles in ms.
Heads with a separate inference path (PointRend's subdivision) are timed through ``forward`` in eval mode, which is
what predicting an image calls. The table goes to ``<results>/bench/bench.<mode>.json`` (a subfolder, as the seed
records: every ``*.json`` at the top of the results folder is read as a chapter's record).
"""

import argparse
import functools
import json
import platform
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from seglab import mode as modes
from seglab.backbones import create
from seglab.book import results
from seglab.book.profile import STANDARD_CLASSES, STANDARD_SHAPES, standard_features
from seglab.data.atomic import write_text

MIN_REPEATS = 10  # the fewest timed calls per head and setting of a table the book reads
WARMUP = 2  # untimed calls before timing: the first call allocates, the second settles the caches
SETTINGS = ("standard", "trained")


def table_dir(folder=None):
    """Where the tables go: ``bench/`` in the results folder (``folder`` if given)."""
    return Path(folder or results.results_dir()) / "bench"


def table_path(mode_dict, folder=None):
    """``bench.<mode>.json`` (``bench.<mode>-full.json`` on the full split), ``mode_dict`` as ``Mode.as_dict()``."""
    return table_dir(folder) / results.file_name("bench", mode_dict)


def check_repeats(repeats, quick_check=False):
    """The number of timed calls, checked: at least ``MIN_REPEATS`` for the book's table; fewer (at least 1) only
    with ``quick_check``, which checks that the code runs and measures nothing."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer; got {repeats!r}.")
    if repeats < MIN_REPEATS and not quick_check:
        raise ValueError(f"--repeats {repeats} is too few: the latency table needs at least {MIN_REPEATS} timed calls "
                         f"per head and setting for its median and quartiles to mean something. Use --repeats "
                         f"{MIN_REPEATS} or more, or add --quick-check to only check that the code runs (such a "
                         "table never goes to the book's results).")
    return repeats


def check_folder(mode, quick_check, folder):
    """Refuse to write a ci-mode or quick-check table into the book's results, as ``results.save`` refuses ci
    records: they check the code and measure nothing."""
    if not results.in_book_results(folder):
        return
    if mode.name == "ci":
        raise ValueError("A ci-mode latency table would be written to the book's results folder: ci runs check that "
                         "the code runs and must never sit beside the book's tables. Point SEGLAB_RESULTS at a "
                         "scratch folder (scripts/test.sh does), or run in quick mode.")
    if quick_check:
        raise ValueError(f"A --quick-check table (fewer than {MIN_REPEATS} timed calls allowed) would be written to "
                         "the book's results folder. Point SEGLAB_RESULTS at a scratch folder, or drop --quick-check.")


def as_kwargs(config):
    """A record's stored keyword arguments as the head takes them: lists (JSON's tuples) back to tuples."""
    def restore(value):
        return tuple(restore(v) for v in value) if isinstance(value, list) else value
    return {k: restore(v) for k, v in config.items()}


def _config(record, key):
    config = record.get("config")
    value = config.get(key) if isinstance(config, dict) else None
    if not isinstance(value, dict):
        raise ValueError(f"The record of {record.get('head', '?')!r} has no config.{key} (the head's keyword "
                         "arguments): re-run its chapter to write a complete record.")
    return value


def standard_config(record):
    """Keyword arguments of the standard setting: the record's ``standard`` kwargs when its chapter profiled a
    configuration other than the reference (DSConv FCN: the reference is Fast-SCNN's, 128 channels in), else the
    reference with the record's ``profiled`` overrides (LR-ASPP's ResNet-50 channels, FPN's D8 strides); always
    21 classes (``profile.STANDARD_CLASSES``)."""
    if isinstance(record.get("standard"), dict):
        kwargs = dict(record["standard"])
    else:
        profiled = record.get("profiled") or {}
        shapes = profiled.get("shapes", "standard (D8)")
        if shapes != "standard (D8)" and not token_shapes(shapes):
            raise ValueError(f"The record of {record.get('head', '?')!r} was profiled on {shapes!r}, neither the "
                             "standard (D8) features nor a list of token shapes: its standard configuration is "
                             "unknown. Re-run its chapter.")
        kwargs = {**_config(record, "reference"), **{k: v for k, v in profiled.items() if k != "shapes"}}
    return as_kwargs({**kwargs, "num_classes": STANDARD_CLASSES})


def trained_config(record):
    """Keyword arguments the head was trained with (``config.trained``)."""
    return as_kwargs(_config(record, "trained"))


def token_shapes(shapes):
    """Whether ``shapes`` (a record's ``profiled["shapes"]``) is a list of (1, c, h, w) shapes."""
    return (isinstance(shapes, (list, tuple)) and len(shapes) > 0
            and all(isinstance(s, (list, tuple)) and len(s) == 4 and all(isinstance(n, int) for n in s) for s in shapes))


def record_shapes(record, standard, trained, mode):
    """{setting: shapes} a record's head is timed on: ``standard`` and ``trained`` (the table's), except for a head
    profiled on token shapes (its ``profiled["shapes"]``) or trained on the token maps (``features`` "taps")."""
    shapes = (record.get("profiled") or {}).get("shapes")
    return {"standard": tuple(map(tuple, shapes)) if token_shapes(shapes) else standard,
            "trained": trained_shapes(mode, "taps") if record.get("features") == "taps" else trained}


@functools.lru_cache(maxsize=None)  # one zero image through the backbone per mode and features, not one per head
def trained_shapes(mode, features="levels"):
    """Shapes of the mode's backbone levels for one image of ``mode.image_size``: (1, channels, h, w) per level,
    measured by running a zero image through the backbone (random weights: only the shapes are needed).
    ``features="taps"``: of the ViT heads' token maps (``seglab.backbones.taps.StrideTaps`` of Lite0 at stride 16)."""
    if features == "taps":
        from seglab.backbones.taps import lite0_taps
        backbone = lite0_taps().eval()
    else:
        backbone = create(mode.backbone, output_stride=mode.output_stride, pretrained=False).eval()
    with torch.no_grad():
        levels = backbone(torch.zeros(1, 3, mode.image_size, mode.image_size))
    return tuple(tuple(int(n) for n in level.shape) for level in levels)


def device_name(device):
    """The device in words: the GPU's name on CUDA, else the CPU model (``/proc/cpuinfo``, else ``platform``)."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def time_calls(head, features, repeats, device="cpu", warmup=WARMUP):
    """Median and quartiles, in ms, of ``repeats`` single inference calls ``head(features)`` after ``warmup``
    untimed ones; eval mode, no autograd, CUDA synchronised around each call."""
    cuda = str(device).startswith("cuda")
    head.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            head(features)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(median), "q25_ms": float(q25), "q75_ms": float(q75)}


def head_records(mode, heads=None, folder=None):
    """The chapter records of ``mode`` (one per head, chapter order) whose head class is named; only those of
    ``heads`` (head names as in the records, any case) when given. Every class is checked (``results.build``)
    before anything is timed: a record naming a class outside ``seglab.heads`` stops the run."""
    found = {}
    for rec in results.load_all(mode.name, folder=folder, split=mode.split):
        if isinstance(rec.get("config"), dict) and rec["config"].get("class"):
            found.setdefault(rec["head"], rec)
    if heads:
        by_lower = {name.lower(): name for name in found}
        unknown = [h for h in heads if h.lower() not in by_lower]
        if unknown:
            raise ValueError(f"No {mode.name}-mode record of head(s) {unknown}; the heads with records are "
                             f"{sorted(found)} (run a head's chapter first to time it).")
        found = {by_lower[h.lower()]: found[by_lower[h.lower()]] for h in dict.fromkeys(heads)}
    if not found:
        raise ValueError(f"No {mode.name}-mode records with a head class in the results folder: run the chapters "
                         "first (python -m seglab.book.execute chapters/...).")
    for rec in found.values():
        results.build(rec)
        standard_config(rec), trained_config(rec)  # both configurations are present and readable
    return list(found.values())


def build_head(record, kwargs, device, seed=0):
    """The record's head class built with ``kwargs`` (seeded initialisation), on ``device``, in eval mode."""
    torch.manual_seed(seed)
    return results.build(record)(**kwargs).to(device).eval()


def time_head(record, features, repeats, device="cpu"):
    """{setting: {median_ms, q25_ms, q75_ms}} of one record's head; ``features`` is {setting: list of levels}."""
    configs = {"standard": standard_config(record), "trained": trained_config(record)}
    timed = {}
    for setting in SETTINGS:
        head = build_head(record, configs[setting], device)
        try:
            timed[setting] = time_calls(head, features[setting], repeats, device)
        except Exception as error:
            raise RuntimeError(f"{record['head']} failed at the {setting} setting ({configs[setting]}) on "
                               f"{[tuple(f.shape) for f in features[setting]]}: {type(error).__name__}: {error}") \
                from error
        del head
    return timed


def run(repeats=MIN_REPEATS, heads=None, threads=None, quick_check=False, mode=None, folder=None,
        standard_shapes=STANDARD_SHAPES, shapes_trained=None, progress=True):
    """Time every head of the mode's records at both settings in this process and write the table; returns its
    path. ``threads`` sets torch's CPU threads for the run (torch's current number by default). The shapes of the
    standard setting and of the trained one (the mode's backbone's by default) can be given, for tests."""
    mode = mode or modes.current()
    check_repeats(repeats, quick_check)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer; got {threads!r}.")
    folder = Path(folder or results.results_dir())
    check_folder(mode, quick_check, folder)
    records = head_records(mode, heads, folder)
    with modes.torch_threads(threads):
        shapes = {"standard": tuple(map(tuple, standard_shapes)),
                  "trained": tuple(map(tuple, shapes_trained or trained_shapes(mode)))}
        made = {}  # seeded random features per tuple of shapes, made once

        def features_of(levels):
            if levels not in made:
                made[levels] = standard_features(mode.device, levels, seed=0)
            return made[levels]

        timed = {}
        bar = tqdm(records, desc="timing heads", unit="head", disable=not progress)
        for rec in bar:
            bar.set_postfix_str(rec["head"])
            own = record_shapes(rec, shapes["standard"], shapes["trained"], mode)
            timed[rec["head"]] = time_head(rec, {s: features_of(own[s]) for s in SETTINGS}, repeats, mode.device)
            if own != shapes:  # a ViT head's token shapes, kept beside its times
                timed[rec["head"]]["shapes"] = {s: [list(x) for x in own[s]] for s in SETTINGS}
        table = {"mode": mode.as_dict(), "device": device_name(mode.device), "threads": torch.get_num_threads(),
                 "repeats": repeats, "warmup": WARMUP, "quick_check": bool(quick_check),
                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "version": results.code_version(),
                 "shapes": {s: [list(x) for x in shapes[s]] for s in SETTINGS}, "heads": timed}
    return write(table, folder)


def write(table, folder=None):
    """Write ``table`` atomically to its path; says which heads of a table it replaces were not timed again."""
    path = table_path(table["mode"], folder)
    old = read(path) if path.is_file() else None
    dropped = sorted(set(old["heads"]) - set(table["heads"])) if old else []
    if dropped:
        print(f"NOTE: {path.name} held {', '.join(dropped)}, not timed in this run: the new table holds only the heads "
              "timed together in this process. Run without --heads to time every head.")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(table, indent=1) + "\n")  # heads in chapter order; a failed write keeps the old table
    return path


def read(path):
    """The table at ``path``, or None with a warning that names the file when it cannot be read as a table."""
    try:
        table = json.loads(Path(path).read_text())
        if not isinstance(table, dict) or not isinstance(table.get("heads"), dict):
            raise ValueError("not a latency table (it lacks heads)")
    except (OSError, ValueError) as error:
        warnings.warn(f"Skipped the latency table {Path(path).name} ({type(error).__name__}: {error}); re-run "
                      "python -m seglab.book.bench.", stacklevel=3)
        return None
    return table


def load(mode_name, split="book", folder=None):
    """The latency table of a mode (and split), or None when it has not been measured (or cannot be read)."""
    path = table_path({"name": mode_name, "split": split}, folder)
    return read(path) if path.is_file() else None


def latency(table, head, setting="standard"):
    """The median latency in ms of ``head`` at ``setting`` (``standard`` or ``trained``) in ``table`` (from
    ``load``), or None when the table or the head is missing."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}; got {setting!r}.")
    if table is None:
        return None
    return table["heads"].get(head, {}).get(setting, {}).get("median_ms")


def format_table(table):
    """The table as readable text: per head, the median and the interquartile range at each setting."""
    def cell(t):
        return f"{t['median_ms']:9.2f} ({t['q25_ms']:.2f}-{t['q75_ms']:.2f})"
    width = max([len("head")] + [len(h) for h in table["heads"]])
    lines = [f"{table['mode']['name']} mode, {table['device']}, {table['threads']} thread(s), median of "
             f"{table['repeats']} calls in ms (25th-75th percentile)"
             + ("; --quick-check: measures nothing" if table.get("quick_check") else ""),
             f"{'head':{width}s}  {'standard (ResNet-50-D8, 512 px)':>32s}  {'trained':>32s}"]
    for head, timed in table["heads"].items():
        lines.append(f"{head:{width}s}  {cell(timed['standard']):>32s}  {cell(timed['trained']):>32s}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m seglab.book.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS,
                        help=f"timed calls per head and setting (default and minimum {MIN_REPEATS})")
    parser.add_argument("--heads", nargs="+", metavar="NAME", help="head names as in the records, e.g. FCN")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's current number)")
    parser.add_argument("--quick-check", action="store_true",
                        help=f"allow fewer than {MIN_REPEATS} repeats, to check that the code runs (tests)")
    args = parser.parse_args(argv)
    try:
        check_repeats(args.repeats, args.quick_check)
    except ValueError as error:
        parser.error(str(error))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1; got {args.threads}.")
    path = run(args.repeats, args.heads, args.threads, args.quick_check)
    print("wrote", path.name)
    print(format_table(read(path)))


if __name__ == "__main__":
    main()
