#!/usr/bin/env bash
# Run benchmark suites on a GPU machine that received `.gpu/` from benchmarks/stage_gpu.sh (the
# wheels and a registry-pile subset, compressed: registry_pile_subset.txt, or for the comparisons
# with Gated DeltaNet registry_pile_subset_small.txt beside fla's TileLang stack).
# Usage: bash benchmarks/run_suites_gpu.sh OUTDIR "SUITE ARGS" ["SUITE ARGS" ...]
# Each "SUITE ARGS" is passed to `rnnlab bench` (e.g. "seed-400m-sf --gpus 2 --runs a,b"), with the
# held-out split scored whole and WikiText-2's raw test text as the extra held-out file
# (--extra-val-data: scored whole at the end of each run, at x and, for Schedule-Free, at y, inside
# the training process); a tarball per suite of the reports, summaries, metrics and logs (no
# checkpoints) goes to OUTDIR (below). Budget a call: a pair of 400M Table-A runs on two GPUs took
# ~8 minutes. BENCH_TIMEOUT ~ the call's limit - set-up (~40 s) - 60 s (timeout's kill-after) - a few
# seconds for the tarball and the compile cache (xz'd on all cores; up to 400 MiB unpacked is tried:
# allow ~30 s when it is large), e.g. 470 for a 600 s call.
# Runs already complete in runs/<suite>/ are skipped: carry a slim copy of the suite kept in results/
# (`bash benchmarks/suite_carry.sh out results/X runs/<suite>`, carry runs/<suite>) and bring the
# call's runs back with `bash benchmarks/suite_carry.sh in OUTDIR/<suite>.tgz results/X`.
# The compilers' caches come back as OUTDIR/compile-cache.tar.xz (gpu_env.sh): stage the next call
# with `stage_gpu.sh ... --compile-cache FILE` to skip most compilation.
# WARM_ONLY=1 only fills the compile cache: each run trains its first 3 steps (compilation,
# autotuning, E1's extension build) into a scratch folder; only the cache (and corpus.txt) come back. For a
# run too long to fit a call with its warm-up (a deep 400M model at Table A's length): warm it in
# one call, then stage the run's call with `stage_gpu.sh ... --compile-cache $OUT/compile-cache.tar.xz`.
# GPU_TESTS="..." (pytest arguments) runs that selection of the GPU tests after the suites
# (benchmarks/gpu_tests.sh).
# BENCH_TIMEOUT=S stops a suite after S seconds with one Ctrl-C (running runs save a checkpoint).
# Every run's env.json and the reports record the commit stage_gpu.sh staged, when the tree sent is
# still that commit (gpu_env.sh).
set -euo pipefail
out=$1; shift
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
# the corpus, and which shards it is (stage_gpu.sh --subset), in OUTDIR/corpus.txt and each suite's
# folder, for the record
{
  unpack_corpus
  cat .gpu/data/SUBSET 2>/dev/null || echo "(which shards: not recorded by this staging)"
} 2>&1 | tee "$out/corpus.txt"
python3 -m rnnlab doctor
# the suite's tarball OUTDIR/SUITE.tgz when the suite ends, and OUTDIR/SUITE.partial.tgz every minute
# while it runs, so a call cut by its time limit still brings back every run finished before the
# cut (use SUITE.tgz when both came back)
pack() {  # written aside, then renamed: a cut never leaves a half archive under the real name
  tar czf "$out/.$2.tmp" --exclude=ckpt --exclude=tb -C runs "$1" 2>/dev/null || true
  mv -f "$out/.$2.tmp" "$out/$2"
}
bench() {  # `rnnlab bench ARGS` on the staged corpus, stopped by BENCH_TIMEOUT with a Ctrl-C:
  # --foreground sends it to the bench alone, once (without it timeout sends a second to its
  # process group, where a one-GPU suite trains: two Ctrl-Cs close together, docs/reliability.md)
  timeout --foreground -s INT -k 60 "${BENCH_TIMEOUT:-0}" python3 -m rnnlab bench "$@" --data /tmp/train.txt \
    --val-data /tmp/val.txt --no-progress || true
}
for args in "$@"; do
  suite=${args%% *}
  if [ "${WARM_ONLY:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    bench $args --steps 3 --eval-bytes 64K --out /tmp/warm/"$suite" --no-plots
    continue
  fi
  mkdir -p runs/"$suite"
  cp "$out/corpus.txt" runs/"$suite"/  # which corpus, in the suite's tarball (suite_carry.sh in keeps it)
  (while sleep 60; do pack "$suite" "$suite.partial.tgz"; done) >/dev/null 2>&1 &
  packer=$!
  # the call's log in the suite's logs/ (back with its tarball; suite_carry.sh in keeps it, xz'd);
  # tee -i: a Ctrl-C to the script's group must not kill the log's reader before the run saves
  # (the run would die on its next print), and a failing tee must not skip the tarball
  mkdir -p runs/"$suite"/logs
  # shellcheck disable=SC2086
  bench $args --extra-val-data /tmp/wikitext2.txt --eval-bytes all --out runs/"$suite" 2>&1 |
    tee -i runs/"$suite"/logs/call-"$(date -u +%Y%m%dT%H%M%SZ)".log || true
  pkill -P "$packer" 2>/dev/null || true  # its sleep or tar, then the loop itself
  kill "$packer" 2>/dev/null || true
  wait "$packer" 2>/dev/null || true
  pack "$suite" "$suite.tgz"
  rm -f "$out/$suite.partial.tgz"
done
if [ -n "${GPU_TESTS:-}" ]; then
  # shellcheck disable=SC2086
  bash benchmarks/gpu_tests.sh "$out" $GPU_TESTS || true  # it saves the compile cache last
else
  save_compile_cache "$out"
fi
