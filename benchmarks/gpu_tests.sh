#!/usr/bin/env bash
# Run GPU tests on a GPU machine that received `.gpu/` from `benchmarks/stage_gpu.sh SHARED --tests`, so that a call
# cut short still says what passed: one line per test (-v) in OUTDIR/gpu_tests.txt as it runs, a
# per-test time limit (a hung or endlessly autotuning test fails with its traceback instead of
# eating the call), failures' tracebacks and the slowest tests at the end.
# Usage: bash benchmarks/gpu_tests.sh OUTDIR [pytest args, e.g. -k "persistent"]
# GPU_TEST_WORKERS (default 4; the float64 CPU references dominate, so workers share a GPU well; on a
# machine with several GPUs the workers spread over them, tests/conftest.py),
# GPU_TEST_TIMEOUT (seconds per test, default 240). The whole `pytest -m gpu` (~440 tests) was ~70%
# done after 540 s on one H200 with 4 workers (results/gpu-tests-h200-1130): split it over calls, e.g.
# -k "persistent" and -k "not persistent". Needs pytest-xdist and pytest-timeout (the GPU image has both).
set -uo pipefail
out=$1; shift
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh >/dev/null 2>&1
python3 -m pytest -m gpu -v -p no:cacheprovider -n "${GPU_TEST_WORKERS:-4}" \
  --timeout "${GPU_TEST_TIMEOUT:-240}" -rfE --tb=short --durations=10 "$@" > "$out/gpu_tests.txt" 2>&1
rc=$?
grep -E "FAILED|ERROR|passed|failed" "$out/gpu_tests.txt" | tail -40
exit $rc
