#!/usr/bin/env bash
# The CPU test suite (GPU tests are marked `gpu` and run with `pytest -m gpu` on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the suite starts many Python processes (CLI runs, torchrun launches) and two workers that each collect
# every test module: let them write bytecode once (and pytest its rewritten tests) rather than compile anew
unset PYTHONDONTWRITEBYTECODE
# one worker per core (at most 4: each imports torch); pytest-xdist, see docs/dependencies.md
.venv/bin/python -m pytest -q --numprocesses=auto --maxprocesses=4 "$@"
