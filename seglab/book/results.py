"""Results records: one small JSON file per chapter run, read back by the comparison tables.

Records go to ``$SEGLAB_RESULTS``, else ``book/results`` of the checkout the notebook runs in, else
``./seglab_results``. A record holds what is needed to compare and to rerun: the head and its configuration,
profile, mIoU, mode (crop, iterations, batch, seed), device, whether ImageNet weights were used, and the code
version."""

import base64
import importlib
import json
import os
import subprocess
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import seglab
from seglab.data.atomic import write_text


def results_dir():
    if os.environ.get("SEGLAB_RESULTS"):
        return Path(os.environ["SEGLAB_RESULTS"])
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "_toc.yml").is_file() and (folder / "book").is_dir():
            return folder / "book" / "results"
    return Path("seglab_results")


def code_version():
    """``seglab <version> @ <commit>``, marked ``(seglab/ modified)`` when the package differs from that commit.
    The commit comes from the git checkout the package lives in, or from pip's record of a ``git+`` install (as in
    Colab); otherwise it is said to be unknown, never left out silently."""
    here = Path(seglab.__file__).resolve().parent
    version = f"seglab {seglab.__version__}"

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=here).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if top and Path(top).resolve() == here.parent:  # the book's own checkout, not a repository around it
            modified = git("status", "--porcelain", "--untracked-files=no", "--", ".")
            return f"{version} @ {git('rev-parse', '--short', 'HEAD')}" + (" (seglab/ modified)" if modified else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib import metadata
        direct = json.loads(metadata.distribution("seglab").read_text("direct_url.json") or "{}")
        commit = direct.get("vcs_info", {}).get("commit_id")
    except Exception:  # not installed as a distribution, or no record
        commit = None
    return f"{version} @ {commit[:7]}" if commit else f"{version} @ unknown commit (not a git checkout)"


def in_book_results(folder):
    """Whether ``folder`` is the book's ``book/results`` (or a folder inside it) of a checkout."""
    folder = Path(folder).resolve()
    return any(f.name == "results" and f.parent.name == "book" and (f.parent.parent / "_toc.yml").is_file()
               for f in (folder, *folder.parents))


def save(record, name=None, folder=None):
    """Write ``record`` as ``<name or head>.<mode>.json`` in ``folder`` (the results folder by default), stamped with
    the code version and the date; returns the path. Records of ci mode never go to the book's results: they check
    the code and measure nothing."""
    folder = Path(folder or results_dir())
    if record["mode"]["name"] == "ci" and in_book_results(folder):
        raise ValueError(f"A ci-mode record ({record['head']}) would be written to the book's results folder: ci "
                         "records check that the code runs and must never sit beside the book's records. Point "
                         "SEGLAB_RESULTS at a scratch folder (scripts/test.sh does), or run in quick mode.")
    folder.mkdir(parents=True, exist_ok=True)
    record = {**record, "version": code_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = folder / file_name(name or record["head"], record["mode"])
    write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")  # a failed write leaves the old record
    return path


def file_name(name, mode):
    """``<name>.<mode>.json`` for a run on the book's subset, ``<name>.<mode>-full.json`` on the full split (``mode``
    as a record holds it, ``Mode.as_dict()``): a reader's full-split run never overwrites the record of the book's."""
    split = mode.get("split", "book")
    return f"{name}.{mode['name']}{'' if split == 'book' else '-' + split}.json"


def split_of(record):
    return record["mode"].get("split", "book")


def read(path):
    """One record, or None with a warning that names the file when it cannot be read as a record."""
    try:
        record = json.loads(Path(path).read_text())
        if not isinstance(record, dict) or not {"head", "mode", "miou"} <= record.keys():
            raise ValueError("not a results record (it lacks head, mode or miou)")
        record["mode"]["name"]
    except (OSError, ValueError, TypeError, KeyError) as error:
        warnings.warn(f"Skipped the results record {Path(path).name} ({type(error).__name__}: {error}); restore it "
                      "from git or re-run its chapter.", stacklevel=3)
        return None
    return record


def load_all(mode=None, folder=None, split=None):
    """Every readable record in the results folder (optionally of one mode, and of one split: ``book`` or
    ``full``), ordered by chapter. An unreadable one is skipped with a warning that names it."""
    records = [r for p in sorted(Path(folder or results_dir()).glob("*.json")) for r in [read(p)] if r is not None]
    records = [r for r in records if (mode is None or r["mode"]["name"] == mode)
               and (split is None or split_of(r) == split)]
    return sorted(records, key=lambda r: (r.get("chapter", 99), r["head"]))


# What a comparison holds fixed: the settings of the mode that change what is trained and evaluated (not the device,
# the evaluation batch or the latency repeats), and the data (``voc.SplitFiles.identity``).
NOT_PROTOCOL = ("device", "eval_batch", "latency_repeats")


def protocol(record):
    """The protocol a record was produced under: the mode's training and evaluation settings and its data identity.
    Two records can be compared only when their protocols are equal."""
    mode = {k: v for k, v in record["mode"].items() if k not in NOT_PROTOCOL}
    mode.setdefault("split", "book")  # records from before the split was a setting were all on the book's subset
    mode.setdefault("lr_candidates", [])  # and those from before the learning-rate sweep trained at ``lr`` alone
    return {"mode": mode, "data": record.get("data")}


def record(head, chapter, config, profile, metrics, mode, pretrained, history, seed, data=None, trained_profile=None):
    """Assemble a record from what a chapter measured; ``data`` is the identity of its train and val images,
    ``profile`` the head at the reference setting (a ``Profile``), ``trained_profile`` as trained (a dict)."""
    return {"head": head, "chapter": chapter, "config": config, "profile": profile.as_dict(),
            "trained_profile": trained_profile, **scores_of(metrics), "mode": mode.as_dict(), "device": mode.device,
            "pretrained": bool(pretrained), "seed": seed, "data": data,
            "train_seconds": history["time"][-1], "final_loss": history["loss"][-1]}


def scores_of(metrics):
    """What a record keeps of an evaluation: VOC's mIoU, per-class IoU, pixel accuracy, the 21x21 confusion matrix,
    the boundary mIoU and per-class IoU, the number of val images, and per-image counts (``pack``)."""
    kept = {"miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"], "iou": metrics["iou"],
            "val_images": metrics["images"]}
    if "confusion" in metrics:
        kept.update(confusion=metrics["confusion"], boundary_miou=metrics["boundary_miou"],
                    boundary_iou=metrics["boundary_iou"],
                    per_image={k: pack(v) for k, v in metrics["per_image"].items()})
    return kept


def pack(counts):
    """An integer (images, classes) tensor as JSON-friendly text: {"shape", "int32_base64"} (little-endian)."""
    array = np.ascontiguousarray(np.asarray(counts, dtype="<i4"))
    return {"shape": list(array.shape), "int32_base64": base64.b64encode(array.tobytes()).decode()}


def unpack(packed):
    """The array ``pack`` wrote, as int64 numpy."""
    raw = base64.b64decode(packed["int32_base64"])
    return np.frombuffer(raw, dtype="<i4").reshape(packed["shape"]).astype(np.int64)


def class_path(head_class):
    """Where a head class can be imported from. A class defined in a chapter's notebook lives in ``__main__``; its
    exported copy in ``seglab.heads`` is the one a later process can import."""
    if head_class.__module__ != "__main__":
        return f"{head_class.__module__}.{head_class.__qualname__}"
    import pkgutil

    import seglab.heads
    for module in pkgutil.iter_modules(seglab.heads.__path__):
        name = f"seglab.heads.{module.name}"
        found = getattr(importlib.import_module(name), head_class.__qualname__, None)
        if found is not None and found.__module__ == name:  # defined there, not imported
            return f"{name}.{head_class.__qualname__}"
    raise ValueError(f"{head_class.__qualname__} is defined in the notebook but not exported to seglab.heads, so "
                     "the record could not say how to rebuild it: export it (#| export seglab/heads/...).")


def build(record_):
    """The head class a record was trained with (seed runs and the bench rebuild heads with it). A record is data,
    not code: only a ``torch.nn.Module`` class defined in a module of ``seglab.heads`` is built; the name is checked
    before anything is imported, so a record cannot make this process import or call anything else."""
    import re
    head = record_.get("head", "?") if isinstance(record_, dict) else "?"
    config = record_.get("config") if isinstance(record_, dict) else None
    path = config.get("class") if isinstance(config, dict) else None
    rule = ("only a torch.nn.Module class defined in a module of seglab.heads (seglab.heads.<module>.<Class>) can be "
            "rebuilt from a record")
    word = r"[A-Za-z_][A-Za-z0-9_]*"
    if not isinstance(path, str) or not re.fullmatch(rf"seglab\.heads(\.{word})+\.{word}", path):
        raise ValueError(f"The record of {head!r} names the head class {path!r}: {rule}. Refused; re-run its "
                         "chapter to write a correct record.")
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as error:
        raise ValueError(f"The record of {head!r} names the head class {path!r}, but {module} cannot be imported "
                         f"({error}): {rule}.") from None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module) and found.__module__ == module):
        raise ValueError(f"The record of {head!r} names {path!r}, which is not a torch.nn.Module class defined in "
                         f"{module}: {rule}. Refused.")
    return found


# --- seed records: the same head with other seeds -------------------------------------------------------------


def seed_dir():
    return results_dir() / "seeds"


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


def load_seeds(mode_name, split="book"):
    """Every readable seed record of a mode and split, as a list of (path, dict)."""
    found = [(p, read(p)) for p in sorted(seed_dir().glob(f"*.seed*.{mode_name}*.json"))]
    return [(p, r) for p, r in found if r is not None and r["mode"]["name"] == mode_name
            and split_of(r) == split]


def save_seed(run, head, chapter, name):
    """Write the seed record of ``run`` (a ``chapter.Run`` of head ``head``, recorded as ``<name>.<mode>.json``):
    ``<results>/seeds/<name>.seed<k>.<mode>.json``, with the scores, the protocol and the data. Returns the path."""
    mode = run.data.mode
    out = {"head": head, "chapter": chapter, "seed": run.seed, **scores_of(run.metrics), "mode": mode.as_dict(),
           "device": mode.device, "data": run.data.identity, "train_seconds": run.history["time"][-1], "lr": run.lr}
    return save(out, name=f"{name}.seed{run.seed}", folder=seed_dir())
