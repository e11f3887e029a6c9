set -u
source benchmarks/gpu_env.sh >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version --format=csv; date -u; echo "commit ${RNNLAB_GIT_COMMIT:-?}"; nproc
  python3 -c "import torch; from torch._inductor import config as c; from rnnlab.train.inductor import cache_keys_choices; print(torch.__version__, 'inductor_choices_class' in dir(c), cache_keys_choices())"; } > $OUT/meta.txt 2>&1
mkdir -p /tmp/t
GPU_TEST_TIMEOUT=300 timeout 200 bash benchmarks/gpu_tests.sh /tmp/t -k "row_reductions or mamba2_official_compiled"
cp /tmp/t/gpu_tests.txt $OUT/run1_gpu_tests.txt; cp /tmp/t/failures.txt $OUT/run1_failures.txt
echo "tests done at $SECONDS s" >> $OUT/meta.txt
timeout 340 python3 benchmarks/bench_models.py --graph --compile default --only "minGRU 3520x16" "minLSTM 2880x16" --rows-against 1024 --json $OUT/run1_models.json > $OUT/run1_models.txt 2>&1
echo "bench done at $SECONDS s" >> $OUT/meta.txt
