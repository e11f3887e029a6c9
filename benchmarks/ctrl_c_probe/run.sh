#!/usr/bin/env bash
# A time limit's Ctrl-C during a compiled + captured Mamba2's final evaluation with a cold compile
# cache, sent as benchmarks/run_suites_gpu.sh's BENCH_TIMEOUT sent it before --foreground
# (`timeout -s INT`: one SIGINT to the run, a second to its process group), to see that the run now
# finishes as docs/reliability.md's 3b says (the silent end seen once: "A native library's signal handler").
# Stage `bash benchmarks/stage_gpu.sh ../shared --models mamba2 --subset benchmarks/registry_pile_subset_small.txt`
# without --compile-cache (the final evaluation then compiles cold, as in the case seen), carry .gpu; on the device
#   bash benchmarks/ctrl_c_probe/run.sh OUTDIR      (INT_DELAY=S: seconds after the budget's last step line, 2)
# OUTDIR/probe.log: the run's log with watch_sigint.py's lines and the probe's; OUTDIR/summary.json if written.
set -u
out=$1 here=benchmarks/ctrl_c_probe
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
unpack_corpus >/dev/null
log=$out/probe.log
timeout --preserve-status -s INT -k 60 900 python3 "$here"/watch_sigint.py bench "$here"/suite.toml --gpus 1 --data /tmp/train.txt \
  --val-data /tmp/val.txt --extra-val-data /tmp/wikitext2.txt --eval-bytes all --out /tmp/probe --no-progress >"$log" 2>&1 &
limit=$!
until grep -q "eta 0:00:00" "$log" || ! kill -0 "$limit" 2>/dev/null; do sleep 0.2; done
sleep "${INT_DELAY:-2}"
echo "[probe $(date -u +%T)] the time limit fires: SIGALRM to timeout, which sends SIGINT to the run's group" >>"$log"
kill -ALRM "$limit"
wait "$limit"
rc=$?  # before the line's $(date): a command substitution would set $? to date's
echo "[probe $(date -u +%T)] the run's exit status $rc (130: rnnlab's own after a Ctrl-C, or killed by SIGINT; 128 + N: killed by signal N)" >>"$log"
ls -la /tmp/probe/m2 >>"$log" 2>&1
cp /tmp/probe/m2/summary.json "$out"/ 2>/dev/null
grep -v " step [0-9]*0 " "$log" | tail -40
