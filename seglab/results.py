"""Results records: one small JSON file per chapter run, read back by the comparison tables.

Records go to ``$SEGLAB_RESULTS``, else ``book/results`` of the checkout the notebook runs in, else
``./seglab_results``. A record holds what is needed to compare and to rerun: the head and its configuration,
profile, mIoU, mode (crop, iterations, batch, seed), device, whether ImageNet weights were used, and the code
version."""

import json
import os
import subprocess
import warnings
from datetime import datetime, timezone
from pathlib import Path

import seglab
from seglab.atomic import write_text


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
    return {"mode": mode, "data": record.get("data")}


def record(head, chapter, config, profile, metrics, mode, pretrained, history, seed, data=None):
    """Assemble a record from what a chapter measured; ``data`` is the identity of its train and val images."""
    return {"head": head, "chapter": chapter, "config": config, "profile": profile.as_dict(),
            "miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"], "iou": metrics["iou"],
            "val_images": metrics["images"], "mode": mode.as_dict(), "device": mode.device,
            "pretrained": bool(pretrained), "seed": seed, "data": data,
            "train_seconds": history["time"][-1], "final_loss": history["loss"][-1]}


def comparison_frame(mode, up_to=None, split="book"):
    """A pandas table of the records of ``mode`` on ``split`` (one row per head, in chapter order), of chapters up to
    ``up_to`` if given, so that a chapter compares itself with the heads before it, whatever else is on disk.
    Records on another split are never ranked beside them."""
    import pandas as pd
    records = [r for r in load_all(mode=mode, split=split) if up_to is None or r.get("chapter", 0) <= up_to]
    return pd.DataFrame(comparison_table(records)).set_index("head")


def comparison_table(records):
    """Rows for a comparison: params (M), GFLOPs, activation MiB, latency (ms and device), mIoU, mode."""
    rows = []
    for r in records:
        p = r["profile"]
        rows.append({"head": r["head"], "params (M)": round(p["params"] / 1e6, 2),
                     "GFLOPs": round(p["flops"] / 1e9, 1), "activations (MiB)": round(p["activation_bytes"] / 2**20),
                     "latency (ms)": round(p["latency_ms"], 1), "latency device": p["device"],
                     "mIoU (%)": round(100 * r["miou"], 1), "mode": r["mode"]["name"],
                     "pretrained": r["pretrained"]})
    return rows
