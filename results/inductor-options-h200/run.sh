source benchmarks/gpu_env.sh >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; cat .gpu/commit; } > $OUT/meta.txt 2>/dev/null
for cfg in base multikernel pdl base2; do
  case $cfg in multikernel) export TORCHINDUCTOR_MULTI_KERNEL=1 ;; pdl) unset TORCHINDUCTOR_MULTI_KERNEL; export TORCHINDUCTOR_ENABLE_PDL=1 ;; base2) unset TORCHINDUCTOR_ENABLE_PDL ;; esac
  echo "== $cfg at $SECONDS s (MULTI_KERNEL=${TORCHINDUCTOR_MULTI_KERNEL:-} PDL=${TORCHINDUCTOR_ENABLE_PDL:-})" | tee -a $OUT/meta.txt
  timeout $((520 - SECONDS)) python3 benchmarks/bench_models.py --graph --compile default --only "minGRU 3520x16" --skip standalone --json /tmp/m_$cfg.json > $OUT/m_$cfg.txt 2>&1
  grep -E "^minGRU|^targets" $OUT/m_$cfg.txt | grep -v rounding
done
nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv >> $OUT/meta.txt
echo "done at $SECONDS s"
