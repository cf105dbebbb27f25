"""Run every chapter under nbval, each in a fresh kernel, on a pool of workers; print the seconds of each.

    python scripts/run_notebooks.py [--workers 2] [notebook ...]

Each notebook is its own ``pytest --nbval-lax`` process with its own kernel: nothing is shared between them but the
feature cache on disk (built before, by ``python -m seglab.book.chapter``). Every worker runs at one torch thread, so two
workers use the two cores without oversubscribing them. Notebooks start longest first (by the execution times
stored in them) so that the pool finishes together; the head-to-head chapter (90), which reads the records the
others write, is queued last (records are written atomically, so it never reads half a file). Exits non-zero when
any notebook fails, and prints its report.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT = 120  # seconds: no cell of the CI setting may need more


def stored_seconds(path):
    """The seconds the notebook's cells took when its outputs were stored (a guess at its share of the work)."""
    total = 0.0
    for cell in json.loads(Path(path).read_text())["cells"]:
        timing = cell.get("metadata", {}).get("execution", {})
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if start and end:
            total += (datetime.fromisoformat(end.replace("Z", "+00:00"))
                      - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    return total


def run(path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", f"--nbval-cell-timeout={CELL_TIMEOUT}",
                           str(path), "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    status = "passed" if done.returncode == 0 else "FAILED"
    print(f"nbval: {path.name:28s} {seconds:6.0f} s  {status}", flush=True)
    return path, seconds, done


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "chapters").glob("*.ipynb"))
    last = [p for p in paths if p.name.startswith("90_")]  # reads the other chapters' records: queued last
    queue = sorted((p for p in paths if p not in last), key=stored_seconds, reverse=True) + last
    start = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        outcomes = list(pool.map(run, queue))
    failed = [(p, done) for p, _, done in outcomes if done.returncode != 0]
    for path, done in failed:
        print(f"\n===== {path.name} failed =====\n{done.stdout[-8000:]}\n{done.stderr[-4000:]}")
    slowest = sorted(outcomes, key=lambda o: -o[1])[:5]
    print(f"nbval: every notebook in {time.perf_counter() - start:.0f} s on {args.workers} workers; slowest: "
          + ", ".join(f"{p.stem} {s:.0f} s" for p, s, _ in slowest))
    print(f"nbval: {len(outcomes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
