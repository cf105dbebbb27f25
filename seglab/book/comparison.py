"""The comparison table every chapter shows and the head-to-head chapter ranks: one row per head, from its records
(the chapter's run and its seed runs), its two profiles and the bench table.

- **Accuracy**: VOC's mIoU and the boundary mIoU, the mean over the head's seeds, with their standard deviation.
- **Cost as trained**: parameters, FLOPs per image and activation memory of the head as the protocol trained it,
  on the features it was trained on (``trained_profile``): the cost that goes with the accuracy beside it.
- **Cost at the reference setting**: the same three at the literature's width on ResNet-50-D8 features of a
  512x512 image (``profile``): the numbers a paper quotes and mmsegmentation's configs give. The heads written for a
  plain ViT (SETR, DPT, Segmenter) read no C2..C5: theirs are on their reference ViT's tokens (the record's
  ``profiled["shapes"]``, ``profile.VIT_B16_SHAPES``).
- **Latency**: from ``python -m seglab.book.bench``, every head timed in one process (median of at least 10 calls),
  never from a chapter's own profile cell.
"""

from seglab.book import bench, stats

COLUMNS = ("mIoU (%)", "± sd", "seeds", "boundary mIoU (%)", "trained params (k)", "trained MFLOPs",
           "trained activations (MiB)", "trained latency (ms)", "params (M)", "GFLOPs", "activations (MiB)",
           "latency (ms)")


def rows(mode_name, split="book", up_to=None):
    """Rows of the comparison, exact values (rounding is the display's job), chapter order."""
    table = bench.load(mode_name, split)
    out = []
    for head, head_runs in stats.runs(mode_name, split).items():
        chapter_record = next((r for r in head_runs if r.get("profile")), None)
        if chapter_record is None or (up_to is not None and chapter_record.get("chapter", 0) > up_to):
            continue
        accuracy, boundary = stats.summary(head_runs), stats.summary(head_runs, "boundary_miou")
        p, t = chapter_record["profile"], chapter_record.get("trained_profile") or {}
        out.append({
            "head": head, "chapter": chapter_record["chapter"],
            "mIoU (%)": accuracy["mean"], "± sd": accuracy["sd"], "seeds": accuracy["n"],
            "boundary mIoU (%)": None if boundary is None else boundary["mean"],
            "trained params (k)": t["params"] / 1e3 if t else None,
            "trained MFLOPs": t["flops"] / 1e6 if t else None,
            "trained activations (MiB)": t["activation_bytes"] / 2**20 if t else None,
            "trained latency (ms)": bench.latency(table, head, "trained") if table else None,
            "params (M)": p["params"] / 1e6, "GFLOPs": p["flops"] / 1e9,
            "activations (MiB)": p["activation_bytes"] / 2**20,
            "latency (ms)": bench.latency(table, head, "standard") if table else None})
    return sorted(out, key=lambda r: (r["chapter"], r["head"]))


DECIMALS = {"mIoU (%)": 1, "± sd": 1, "boundary mIoU (%)": 1, "trained params (k)": 1, "trained MFLOPs": 1,
            "trained activations (MiB)": 1, "trained latency (ms)": 2, "params (M)": 2, "GFLOPs": 1,
            "activations (MiB)": 0, "latency (ms)": 0}


LATENCY = ("trained latency (ms)", "latency (ms)")


def frame(mode_name, split="book", up_to=None, latency=True):
    """The comparison as a pandas table indexed by head, each column rounded for reading (see ``DECIMALS``).
    ``latency=False`` leaves out the bench's columns: a chapter's table is stored when the chapter runs, before the
    bench times the heads of the chapters after it, so only the head-to-head chapter shows latencies."""
    import pandas as pd
    columns = COLUMNS if latency else tuple(c for c in COLUMNS if c not in LATENCY)
    table = pd.DataFrame(rows(mode_name, split, up_to), columns=("head", "chapter") + COLUMNS).set_index("head")
    return table[["chapter", *columns]].astype({"seeds": "Int64"}).round(DECIMALS)
