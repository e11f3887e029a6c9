source benchmarks/gpu_env.sh >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; cat .gpu/commit; } > $OUT/meta.txt 2>/dev/null
for cfg in persistent base; do
  export TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$cfg
  echo "== $cfg at $SECONDS s" | tee -a $OUT/meta.txt
  if [ $cfg = persistent ]; then run="python3 .gpu/persist.py"; else run="python3 benchmarks/bench_models.py"; fi
  timeout 150 $run --graph --compile default --only "minGRU 3520x16" --skip standalone --json /tmp/m_$cfg.json > $OUT/m_$cfg.txt 2>&1
  grep -E "^minGRU" $OUT/m_$cfg.txt | grep -v rounding
  echo "$cfg: persistent LayerNorm kernels of 3520: $(grep -rl '@triton_heuristics.persistent_reduction' /tmp/ind_$cfg 2>/dev/null | xargs -r grep -l 'r0_numel = 3520' | wc -l), looped: $(grep -rl '@triton_heuristics.reduction' /tmp/ind_$cfg 2>/dev/null | xargs -r grep -l 'r0_numel = 3520' | wc -l)" | tee -a $OUT/meta.txt
done
echo "done at $SECONDS s"
