#!/usr/bin/env bash
# The test command: unit tests, every chapter under nbval (quick mode, no network), the book build with Sphinx
# warnings as errors, and the built site in headless Chromium.
# Data: SEGLAB_DATA defaults to ../shared/data/VOCdevkit beside the checkout (the CI layout).
set -euo pipefail
cd "$(dirname "$0")/.."

export SEGLAB_DATA="${SEGLAB_DATA:-$(cd .. && pwd)/shared/data/VOCdevkit}"
export SEGLAB_MODE="${SEGLAB_MODE:-quick}"
export MPLBACKEND=Agg
# results written by the notebooks go to a scratch copy, so a test run never rewrites the book's records
export SEGLAB_RESULTS="$(mktemp -d)"
cp -r book/results/. "$SEGLAB_RESULTS"/

python -m pytest tests --ignore=tests/site -q -p no:cacheprovider
for notebook in chapters/*.ipynb; do  # one at a time, to report the seconds each chapter takes
  start=$(date +%s)
  python -m pytest --nbval-lax --nbval-cell-timeout=600 "$notebook" -q -p no:cacheprovider
  echo "nbval: $notebook took $(( $(date +%s) - start )) s"
done
bash scripts/build_book.sh
python -m pytest tests/site -q -p no:cacheprovider
