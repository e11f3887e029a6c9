#!/bin/bash
# N runs of `rnnlab train` on a CPU, each sent one SIGINT 2.2-3.0 s in (a random moment in the
# start-up: torch, the model, Triton, torch._dynamo load), with two busy loops taking the CPUs.
# Run from the repository's root: W=results/ctrl-c-swallowed-at-start-cpu/after_fix.py N=24 bash results/ctrl-c-swallowed-at-start-cpu/loop.sh
# Each run's output: OUT/oI.txt (OUT default /tmp/ctrl-c-start).
out=${OUT:-/tmp/ctrl-c-start}; mkdir -p "$out"
( while :; do :; done ) & b1=$!
( while :; do :; done ) & b2=$!
for i in $(seq 1 "${N:-24}"); do
  t=$(python3 -c "import random; print(round(random.uniform(2.2,3.0),2))")
  rm -rf "$out/r$i"
  timeout -s INT "$t" .venv/bin/python "$W" train --dim 32 --depth 2 --seq-len 32 --batch-size 4 --steps 100000 \
    --device cpu --out "$out/r$i" > "$out/o$i.txt" 2>&1
  echo "$i t=$t"
  rm -rf "$out/r$i"
done
kill $b1 $b2
