#!/usr/bin/env bash
# Continue a suite kept in results/ over GPU calls, within a call's 64 MiB.
#   bash benchmarks/suite_carry.sh out RESULTS_DIR RUNS_DIR
#       a slim copy of the suite for the call to carry (carry RUNS_DIR, e.g. runs/seed-400m-sf):
#       suite.json and each run's config.json and summary.json, all `rnnlab bench` needs to skip
#       the complete runs and to keep their record in suite.json (a whole Table A is ~4 MB of
#       metrics, which with the corpus and the wheels would not fit)
#   bash benchmarks/suite_carry.sh in SUITE.tgz RESULTS_DIR
#       bring the call's runs back (benchmarks/run_suites_gpu.sh's tarball): each run folder it
#       trained (it has metrics.jsonl), its logs and the call's suite.json go into RESULTS_DIR, run
#       locks left behind and metrics.jsonl xz'd (~8x smaller; every reader takes metrics.jsonl.xz,
#       rundir.read_jsonl: results/ travels with every call); then `rnnlab report RESULTS_DIR`
#       redraws the report from every run
set -euo pipefail
case ${1:-} in
  out)
    results=$2 runs=$3
    rm -rf "$runs"
    mkdir -p "$runs"
    cp "$results/suite.json" "$runs/"
    for summary in "$results"/*/summary.json; do
      run=$(basename "$(dirname "$summary")")
      mkdir -p "$runs/$run"
      cp "$results/$run/config.json" "$summary" "$runs/$run/"
    done
    du -sh "$runs"
    ;;
  in)
    tgz=$2 results=$3
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar xzf "$tgz" -C "$tmp"
    src=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d)
    for metrics in "$src"/*/metrics.jsonl; do
      [ -f "$metrics" ] || continue
      run=$(basename "$(dirname "$metrics")")
      rm -rf "${results:?}/$run"
      cp -r "$src/$run" "$results/"
      rm -f "$results/$run/.lock"
      xz -9 "$results/$run/metrics.jsonl"
      echo "brought back: $run"
    done
    mkdir -p "$results/logs"
    [ ! -d "$src/logs" ] || cp "$src"/logs/* "$results/logs/"
    cp "$src/suite.json" "$results/"
    ;;
  *)
    echo "usage: suite_carry.sh out RESULTS_DIR RUNS_DIR | in SUITE.tgz RESULTS_DIR" >&2
    exit 2
    ;;
esac
