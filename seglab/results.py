"""Results records: one small JSON file per chapter run, read back by the comparison tables.

Records go to ``$SEGLAB_RESULTS``, else ``book/results`` of the checkout the notebook runs in, else
``./seglab_results``. A record holds what is needed to compare and to rerun: the head and its configuration,
profile, mIoU, mode (crop, iterations, batch, seed), device, whether ImageNet weights were used, and the code
version."""

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import seglab


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


def save(record, name=None, folder=None):
    """Write ``record`` as ``<name or head>.<mode>.json`` in ``folder`` (the results folder by default), stamped with
    the code version and the date; returns the path."""
    folder = folder or results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    record = {**record, "version": code_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = folder / f"{name or record['head']}.{record['mode']['name']}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def load_all(mode=None):
    """Every record in the results folder (optionally of one mode), ordered by chapter."""
    records = [json.loads(p.read_text()) for p in sorted(results_dir().glob("*.json"))]
    records = [r for r in records if mode is None or r["mode"]["name"] == mode]
    return sorted(records, key=lambda r: (r.get("chapter", 99), r["head"]))


def record(head, chapter, config, profile, metrics, mode, pretrained, history, seed):
    """Assemble a record from what a chapter measured."""
    return {"head": head, "chapter": chapter, "config": config, "profile": profile.as_dict(),
            "miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"], "iou": metrics["iou"],
            "val_images": metrics["images"], "mode": mode.as_dict(), "device": mode.device,
            "pretrained": bool(pretrained), "seed": seed,
            "train_seconds": history["time"][-1], "final_loss": history["loss"][-1]}


def comparison_frame(mode, up_to=None):
    """A pandas table of the records of ``mode`` (one row per head, in chapter order), of chapters up to ``up_to``
    if given, so that a chapter compares itself with the heads before it, whatever else is on disk."""
    import pandas as pd
    records = [r for r in load_all(mode=mode) if up_to is None or r.get("chapter", 0) <= up_to]
    return pd.DataFrame(comparison_table(records)).set_index("head")


def comparison_table(records):
    """Rows for a comparison: params (M), GFLOPs, activation MiB, latency (ms and device), mIoU, mode."""
    rows = []
    for r in records:
        p = r["profile"]
        rows.append({"head": r["head"], "params (M)": round(p["params"] / 1e6, 2),
                     "GFLOPs": round(p["flops"] / 1e9, 1), "activations (MiB)": round(p["activation_bytes"] / 2**20),
                     f"latency (ms)": round(p["latency_ms"], 1), "latency device": p["device"],
                     "mIoU (%)": round(100 * r["miou"], 1), "mode": r["mode"]["name"],
                     "pretrained": r["pretrained"]})
    return rows
