#!/usr/bin/env bash
# The CPU test suite (GPU tests are marked `gpu` and run with `pytest -m gpu` on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# one worker per core (at most 4: each imports torch); pytest-xdist, see docs/dependencies.md
.venv/bin/python -m pytest -q --numprocesses=auto --maxprocesses=4 "$@"
