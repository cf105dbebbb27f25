#!/usr/bin/env bash
# The test command: unit tests, every chapter under nbval (ci mode: the quick protocol on a budget that checks the
# code, see seglab/mode.py; no network), the book build with Sphinx warnings as errors, and the built site in
# headless Chromium. Prints the seconds of each phase and of each notebook, and the total.
# Data: SEGLAB_DATA defaults to ../shared/data/VOCdevkit beside the checkout (the CI layout).
set -euo pipefail
cd "$(dirname "$0")/.."

export SEGLAB_DATA="${SEGLAB_DATA:-$(cd .. && pwd)/shared/data/VOCdevkit}"
export SEGLAB_MODE="${SEGLAB_MODE:-ci}"
export MPLBACKEND=Agg
# results written by the notebooks go to a scratch copy, so a test run never rewrites the book's records
export SEGLAB_RESULTS="$(mktemp -d)"
cp -r book/results/. "$SEGLAB_RESULTS"/

start=$(date +%s)
phase_start=$start
phase() {  # phase NAME: the seconds since the previous phase ended
  local now; now=$(date +%s)
  echo "phase: $1 took $(( now - phase_start )) s"
  phase_start=$now
}

# two pytest workers at one torch thread each: both cores, without oversubscribing them
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m pytest tests --ignore=tests/site -q -p no:cacheprovider -n 2
phase "unit tests"
python -m seglab.book.chapter  # the data and the feature cache, once, before the notebooks share it
phase "feature cache"
python scripts/run_notebooks.py --workers 2
phase "nbval of every notebook"
bash scripts/build_book.sh
phase "book build"
python -m pytest tests/site -q -p no:cacheprovider -n 2
phase "browser tests"
echo "total: $(( $(date +%s) - start )) s"
