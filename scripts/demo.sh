#!/usr/bin/env bash
# The main job: a small side-by-side comparison (the `tiny` suite: E1, Mamba2, minGRU, minLSTM,
# E16, Transformer, E88, Gated DeltaNet) on the bundled corpus, CPU or GPU. Prints the table;
# report in runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/rnnlab bench tiny --out runs/demo "$@"
