"""How sure is a comparison? Every head's runs (its chapter's and its seed records), their mean and spread, and a
paired bootstrap test of the difference between two heads.

A run's mIoU comes from sums over the val images, so a resample of the images is a resample of the per-image
counts its record keeps (``per_image``: true positives and unions per class). Two heads were scored on the same
images, so they are resampled *together* (paired); their seeds are resampled too, each head's on its own. The
difference is called only when its 95% interval leaves out zero, on exact values, never on rounded ones.
"""

import numpy as np

from seglab.book import results

BOOTSTRAP = 2000  # resamples: the 95% interval's ends move by well under 0.1 points between bootstrap seeds


def runs(mode_name, split="book"):
    """{head: [record, ...]}: each head's chapter record and seed records, of one protocol (seed records of another
    are refused, see ``checked``), seed order. Heads without a chapter record are left out."""
    chapters, by_head = checked(mode_name, split)
    return {h: [by_head[h][s] for s in sorted(by_head[h])] for h in chapters}


def checked(mode_name, split="book"):
    """The records of a mode and split, read once: (the heads with a chapter record, {head: {seed: record}}), a
    chapter record before a seed record of the same seed. A seed record whose protocol (training settings and data
    identity, ``results.protocol``) differs from its head's chapter record is refused: it would measure another
    experiment."""
    chapters = results.load_all(mode_name, split=split)
    expected = {r["head"]: results.protocol(r) for r in chapters}
    by_head = {r["head"]: {r["seed"]: r} for r in chapters}
    foreign = []
    for path, r in results.load_seeds(mode_name, split):
        if expected.setdefault(r["head"], results.protocol(r)) != results.protocol(r):
            foreign.append(path.name)
            continue
        by_head.setdefault(r["head"], {}).setdefault(r["seed"], r)
    if foreign:
        raise ValueError(f"Seed records of another protocol or data than their head's chapter record: "
                         f"{', '.join(foreign)} (in {results.seed_dir().name}/). Their spread would measure another "
                         "experiment: move them out, or retrain them (python -m seglab.book.seeds).")
    return [r["head"] for r in chapters], by_head


def summary(head_runs, key="miou"):
    """Mean, sample standard deviation (None for one run), min, max and count of ``key`` over the runs, in points."""
    values = [100 * r[key] for r in head_runs if r.get(key) is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def counts(head_runs):
    """(seeds, images, classes) arrays of true positives and unions, from the runs that kept per-image counts."""
    kept = [r["per_image"] for r in head_runs if isinstance(r.get("per_image"), dict)]
    if not kept:
        return None
    return (np.stack([results.unpack(p["tp"]) for p in kept]), np.stack([results.unpack(p["union"]) for p in kept]))


def miou_of(tp, union):
    """mIoU (points) from summed counts (..., classes): classes absent from truth and prediction (union 0) left out."""
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return 100 * np.nanmean(iou, axis=-1)


def paired_bootstrap(runs_a, runs_b, resamples=BOOTSTRAP, seed=0):
    """The difference of mean mIoU, A - B, in points, with a 95% bootstrap interval: images resampled together for
    both heads, seeds resampled for each. Returns {"difference", "low", "high", "p", "differs"}, or None when either
    head lacks per-image counts or the two were scored on different numbers of images."""
    a, b = counts(runs_a), counts(runs_b)
    if a is None or b is None or a[0].shape[1] != b[0].shape[1]:
        return None
    rng = np.random.default_rng(seed)
    n = a[0].shape[1]
    weights = rng.multinomial(n, np.full(n, 1 / n), size=resamples)  # (resamples, images): how often each is drawn

    def resampled(tp, union):  # (resamples,) mean over resampled seeds of the mIoU over resampled images
        per_seed = miou_of(np.einsum("ri,sic->rsc", weights, tp), np.einsum("ri,sic->rsc", weights, union))
        pick = rng.integers(0, tp.shape[0], size=(resamples, tp.shape[0]))
        return np.take_along_axis(per_seed, pick, axis=1).mean(1)

    observed = float(np.mean(miou_of(a[0].sum(1), a[1].sum(1))) - np.mean(miou_of(b[0].sum(1), b[1].sum(1))))
    diffs = resampled(*a) - resampled(*b)
    low, high = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
    p = float(min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())))
    return {"difference": observed, "low": low, "high": high, "p": p, "differs": bool(low > 0 or high < 0)}


def verdict(test):
    """A few words for a comparison: what the paired bootstrap says."""
    if test is None:
        return "not tested (per-image counts missing)"
    interval = f"95% interval {test['low']:+.1f} to {test['high']:+.1f}"
    if test["differs"]:
        return f"a real difference ({interval}, paired bootstrap over images and seeds)"
    return f"not told apart ({interval} includes 0)"


def spread(mode_name, split="book"):
    """The seed-to-seed spread of a mode: for each head with at least 3 seeds (its chapter's run and the seed
    records), max - min of its mIoU in points. Returns ({head: (spread, [mIoU per seed])}, the largest spread), or
    ({}, None) when no head has 3 seeds yet. Refuses seed records of another protocol (``checked``)."""
    _, by_head = checked(mode_name, split)
    measured = {head: (max(v) - min(v), v) for head, v in
                ((h, [100 * seeds[s]["miou"] for s in sorted(seeds)]) for h, seeds in by_head.items()) if len(v) >= 3}
    return measured, max((s for s, _ in measured.values()), default=None)
