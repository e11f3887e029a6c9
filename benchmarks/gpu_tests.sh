#!/usr/bin/env bash
# Run GPU tests on a GPU machine that received `.gpu/` from `benchmarks/stage_gpu.sh SHARED --tests`, so that a call
# cut short still says what passed and why a test failed: one line per test (-v) in
# OUTDIR/gpu_tests.txt as it runs, each test's time in OUTDIR/test_times.tsv and each failure's
# traceback in OUTDIR/failures.txt as soon as it ends (tests/conftest.py), a per-test time limit (a
# hung or endlessly autotuning test fails with its traceback instead of eating the call).
# Usage: bash benchmarks/gpu_tests.sh OUTDIR [pytest args, e.g. -k "persistent"]
# OUTDIR gets up to 7 files (these, commit.txt, date.txt, device.txt, the compile cache) and a call
# brings back 8 files: when the call writes other files too, tar OUTDIR (a gpu_tests.txt left out
# is the record lost).
# GPU_TEST_WORKERS (default 4; the float64 CPU references dominate, so workers share a GPU well; on a
# machine with several GPUs the workers spread over them, tests/conftest.py),
# GPU_TEST_TIMEOUT (seconds per test, default 240). The whole `pytest -m gpu` (~720 tests) ran in one
# call on one H200 with 8 workers: 458 s, cold (results/gpu-tests-h200-1203-full-5aed91e; OMP_NUM_THREADS
# is a share of the cores per worker). If a call cannot hold it, split it, e.g. -k "persistent" and
# -k "not persistent", or pass the node ids not yet run. Needs pytest-xdist and pytest-timeout (the
# GPU image has both).
set -uo pipefail
out=$1; shift
mkdir -p "$out"
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh >/dev/null 2>&1
workers=${GPU_TEST_WORKERS:-4}
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the machine's, not an OMP limit already set
# the workers share the CPU cores (the float64 references run there): a share each, not every core each
case $workers in
  ''|*[!0-9]*) share=1 ;;  # xdist's auto / logical: as many workers as cores
  *) share=$(( cores / (workers > 0 ? workers : 1) )) ;;
esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( share > 0 ? share : 1 ))}
# what the record is of: the commit (gpu_env.sh), the date, the GPUs and cores
echo "${RNNLAB_GIT_COMMIT:-unknown (stage with benchmarks/stage_gpu.sh after committing)}" > "$out/commit.txt"
date -u > "$out/date.txt"
{ nvidia-smi -L; echo "$cores CPU cores"; } > "$out/device.txt" 2>&1
export RNNLAB_TEST_RECORD=$out  # test_times.tsv and failures.txt, written as each test ends (tests/conftest.py)
: > "$out/test_times.tsv"; : > "$out/failures.txt"  # this run's only
python3 -m pytest -m gpu -v -p no:cacheprovider -n "$workers" \
  --timeout "${GPU_TEST_TIMEOUT:-240}" -rfE --tb=short --durations=10 "$@" > "$out/gpu_tests.txt" 2>&1
rc=$?
save_compile_cache "$out"
grep -E "FAILED|ERROR|passed|failed" "$out/gpu_tests.txt" | tail -40
exit $rc
