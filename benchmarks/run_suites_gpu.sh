#!/usr/bin/env bash
# Run benchmark suites on a GPU machine that received `.gpu/` from benchmarks/stage_gpu.sh (the
# wheels and the registry-pile subset of benchmarks/registry_pile_subset.txt, compressed).
# Usage: bash benchmarks/run_suites_gpu.sh OUTDIR "SUITE ARGS" ["SUITE ARGS" ...]
# Each "SUITE ARGS" is passed to `rnnlab bench` (e.g. "seed-400m-sf --gpus 2 --runs a,b");
# afterwards every complete run is evaluated on WikiText-2 (Schedule-Free runs at x and at y), and
# a tarball per suite of the reports, summaries, metrics and logs (no checkpoints) goes to OUTDIR,
# rewritten after each run's evaluations (a call cut short keeps what finished). Budget a call:
# a pair of 400M Table-A runs on two GPUs took ~8 minutes, their four WikiText-2 evaluations ~1 more.
# Runs already complete in runs/<suite>/ (brought back from an earlier call) are skipped.
# GPU_TESTS="..." (pytest arguments) runs that selection of the GPU tests after the suites
# (benchmarks/gpu_tests.sh).
# BENCH_TIMEOUT=S stops a suite after S seconds with a Ctrl-C (running runs save a checkpoint).
# RNNLAB_GIT_COMMIT=SHA: the commit of the tree sent (its copy's git metadata is stale), recorded
# in every run's env.json and the reports.
set -euo pipefail
out=$1; shift
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
python3 benchmarks/unpack_corpus.py /tmp/train.txt .gpu/data/train/*.xz
python3 benchmarks/unpack_corpus.py /tmp/val.txt .gpu/data/val/*.xz
python3 benchmarks/unpack_corpus.py /tmp/wikitext2.txt .gpu/data/wikitext2_raw_test.txt.xz
python3 -m rnnlab doctor
# the suite's tarball, rewritten after the suite and after each run's evaluations, so a call cut
# by its time limit still brings back every run finished before the cut
pack() { tar czf "$out/$1.tgz" --exclude=ckpt --exclude=tb --exclude='*.part' -C runs "$1"; }
# score RUN NAME [eval args]: WikiText-2 whole into RUN/NAME.json (errors kept there), once; written
# under another name first, so a cut evaluation leaves no empty score behind
score() {
  local run=$1 name=$2; shift 2
  [ ! -f "$run/$name.json" ] || return 0
  python3 -m rnnlab eval --run "$run" --data /tmp/wikitext2.txt --eval-bytes all --json "$@" > "$run/$name.json.part" 2>&1 || true
  mv "$run/$name.json.part" "$run/$name.json"
}
for args in "$@"; do
  suite=${args%% *}
  mkdir -p runs/"$suite"
  # shellcheck disable=SC2086
  timeout -s INT -k 60 "${BENCH_TIMEOUT:-0}" python3 -m rnnlab bench $args --data /tmp/train.txt --val-data /tmp/val.txt --eval-bytes all \
    --out runs/"$suite" --no-progress || true
  pack "$suite"
  for run in runs/"$suite"/*/; do
    [ -f "$run/summary.json" ] && [ -d "$run/ckpt" ] || continue  # complete here (brought-back runs have no ckpt)
    score "$run" wikitext2
    # Schedule-Free runs: also at the training point y (the average x can lag in pure bf16)
    if grep -q '"optimizer": "schedulefree-adamw"' "$run/config.json"; then
      score "$run" wikitext2_train_point --at train-point
    fi
    pack "$suite"
  done
done
if [ -n "${GPU_TESTS:-}" ]; then
  # shellcheck disable=SC2086
  bash benchmarks/gpu_tests.sh "$out" $GPU_TESTS || true
fi
