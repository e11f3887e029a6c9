#!/usr/bin/env bash
# A build of dense E1's CUDA kernel killed (kill -9) half-way, then the kernel loaded again: by
# torch's own loader (which waits for the dead build's `lock` forever: the hang that lost a run on
# 2026-12-05) and by rnnlab.ops.extensions.load (which clears it and builds). One GPU machine, a
# fresh build folder. Usage: bash results/extension-lock-h200/kill_build.sh OUTDIR
set -u
out=$1; mkdir -p "$out"
source benchmarks/gpu_env.sh >/dev/null 2>&1
export TORCH_EXTENSIONS_DIR=$(mktemp -d)  # no build yet
{ echo "${RNNLAB_GIT_COMMIT:-unknown}"; date -u; nvidia-smi -L; } > "$out/env.txt" 2>&1
LOAD='import sys, time; from rnnlab.ops.elman import persistent as p
if sys.argv[1] == "torch":  # torch loader, the same name, sources and flags
    from torch.utils import cpp_extension
    import rnnlab.ops.extensions as e; e.load = lambda name, **kw: cpp_extension.load(name=name, **kw)
t = time.time(); p._ext(); print(f"loaded in {time.time() - t:.1f} s", flush=True)'
{
  echo "== 1. rnnlab's load, killed (kill -9) 20 s into its build"
  python3 -c "$LOAD" rnnlab & pid=$!; sleep 20; kill -9 $pid; wait $pid; echo "exit status $?"
  echo "== what the build folder holds"; find "$TORCH_EXTENSIONS_DIR" -maxdepth 2 | sed "s|$TORCH_EXTENSIONS_DIR|EXT|"
  echo "== 2. torch's own loader, 60 s limit"
  start=$(date +%s); timeout 60 python3 -c "$LOAD" torch; echo "exit status $? after $(( $(date +%s) - start )) s"
  echo "== 3. rnnlab's load"
  start=$(date +%s); timeout 300 python3 -c "$LOAD" rnnlab; echo "exit status $? after $(( $(date +%s) - start )) s"
  echo "== 4. rnnlab's load again (built: no build, no warning)"
  start=$(date +%s); timeout 120 python3 -c "$LOAD" rnnlab; echo "exit status $? after $(( $(date +%s) - start )) s"
} > "$out/kill_build.txt" 2>&1
cat "$out/kill_build.txt"
