#!/usr/bin/env bash
# Continue a suite kept in results/ over GPU calls, within a call's 64 MiB (docs/gpu-runs.md).
#   bash benchmarks/suite_carry.sh out RESULTS_DIR RUNS_DIR
#       a slim copy of the suite for the call to carry (carry RUNS_DIR, e.g. runs/seed-400m-sf):
#       suite.json and each run's config.json, summary.json and env.json, all `rnnlab bench` needs to skip
#       the complete runs and to keep their record in suite.json (a whole Table A is ~4 MB of
#       metrics, which with the corpus and the wheels would not fit)
#   bash benchmarks/suite_carry.sh in SUITE.tgz RESULTS_DIR
#       bring the call's runs back (benchmarks/run_suites_gpu.sh's tarball) into RESULTS_DIR (made
#       if new): the call's suite.json merged into the kept one (benchmarks/merge_suite_json.py: no
#       command or run of another call is lost), its corpus.txt and logs (call logs xz'd), and each run folder it
#       trained (it has metrics.jsonl), run locks left behind and metrics.jsonl xz'd (~8x smaller; every reader
#       takes metrics.jsonl.xz, rundir.read_jsonl: results/ travels with every call); then
#       `rnnlab report RESULTS_DIR` redraws the report from every run
set -euo pipefail
die() { echo "suite_carry.sh: $*" >&2; exit 2; }
suite_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["suite"])' "$1"; }
case ${1:-} in
  out)
    [ $# -eq 3 ] || die "usage: out RESULTS_DIR RUNS_DIR"
    results=$2 runs=$3
    [ -f "$results/suite.json" ] || die "$results holds no suite (no suite.json)"
    [ -z "$(find "$runs" -name 'metrics.jsonl*' -print -quit 2>/dev/null)" ] ||
      die "$runs holds run records (metrics.jsonl): not a slim copy to replace"
    rm -rf "$runs"
    mkdir -p "$runs"
    cp "$results/suite.json" "$runs/"
    for config in "$results"/*/config.json; do
      [ -f "$config" ] || continue
      run=$(basename "$(dirname "$config")")
      mkdir -p "$runs/$run"
      cp "$config" "$runs/$run/"  # without summary.json a run is restarted, and keeps its record
      [ ! -f "$results/$run/summary.json" ] || cp "$results/$run/summary.json" "$runs/$run/"
      [ ! -f "$results/$run/env.json" ] || cp "$results/$run/env.json" "$runs/$run/"  # its GPU: the report's MFU
    done
    du -sh "$runs"
    ;;
  in)
    [ $# -eq 3 ] || die "usage: in SUITE.tgz RESULTS_DIR"
    tgz=$2 results=$3
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar xzf "$tgz" -C "$tmp"
    [ "$(find "$tmp" -mindepth 1 -maxdepth 1 | wc -l)" -eq 1 ] || die "$tgz does not hold one suite folder"
    src=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d)
    [ -f "$src/suite.json" ] || die "$tgz holds no suite.json"
    if [ -f "$results/suite.json" ] && [ "$(suite_of "$src/suite.json")" != "$(suite_of "$results/suite.json")" ]; then
      die "$tgz is suite $(suite_of "$src/suite.json"), $results holds $(suite_of "$results/suite.json")"
    fi
    mkdir -p "$results/logs"
    python3 "$(dirname "$0")/merge_suite_json.py" "$results/suite.json" "$src/suite.json"
    [ ! -f "$src/corpus.txt" ] || cp "$src/corpus.txt" "$results/"
    [ ! -d "$src/logs" ] || cp -r "$src/logs/." "$results/logs/"
    find "$results/logs" -name 'call-*.log' -exec xz -9 -f {} +  # run_suites_gpu.sh's call logs
    for metrics in "$src"/*/metrics.jsonl; do
      [ -f "$metrics" ] || continue
      run=$(basename "$(dirname "$metrics")")
      rm -rf "${results:?}/$run"
      cp -r "$src/$run" "$results/"
      rm -f "$results/$run/.lock"
      xz -9 "$results/$run/metrics.jsonl"
      echo "brought back: $run"
    done
    ;;
  *)
    die "usage: out RESULTS_DIR RUNS_DIR | in SUITE.tgz RESULTS_DIR"
    ;;
esac
