#!/usr/bin/env bash
# Run benchmark suites on a GPU machine that received the registry-pile shards compressed under
# .gpu/data (train/*.xz, val/*.xz, wikitext2_raw_test.txt.xz) and wheels under .gpu/wheels.
# Usage: bash benchmarks/run_suites_gpu.sh OUTDIR "SUITE ARGS" ["SUITE ARGS" ...]
# Each "SUITE ARGS" is passed to `rnnlab bench`; afterwards every run is evaluated on WikiText-2
# and a tarball per suite of the reports, summaries and metrics (no checkpoints) goes to OUTDIR.
set -euo pipefail
out=$1; shift
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
python3 benchmarks/unpack_corpus.py /tmp/train.txt .gpu/data/train/*.xz
python3 benchmarks/unpack_corpus.py /tmp/val.txt .gpu/data/val/*.xz
python3 benchmarks/unpack_corpus.py /tmp/wikitext2.txt .gpu/data/wikitext2_raw_test.txt.xz
python3 -m rnnlab doctor
if [ -n "${GPU_TESTS:-}" ]; then  # e.g. GPU_TESTS="-k layer": a selection of `pytest -m gpu`
  # shellcheck disable=SC2086
  timeout 300 python3 -m pytest -m gpu tests/gpu -q $GPU_TESTS 2>&1 | tail -15 || true
fi
for args in "$@"; do
  suite=${args%% *}
  # shellcheck disable=SC2086
  python3 -m rnnlab bench $args --data /tmp/train.txt --val-data /tmp/val.txt --out /tmp/runs/$suite --no-progress || true
  for run in /tmp/runs/$suite/*/; do
    [ -f "$run/summary.json" ] || continue
    python3 -m rnnlab eval --run "$run" --data /tmp/wikitext2.txt --json > "$run/wikitext2.json" 2>&1 || true
  done
  tar czf "$out/$suite.tgz" --exclude=ckpt --exclude=tb -C /tmp/runs "$suite"
done
