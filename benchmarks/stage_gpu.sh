#!/usr/bin/env bash
# Stage what a GPU call needs under .gpu/ (git-ignored; carry it with the call): the wheels (flashrnn
# only for benchmarks/bench_peers.py) and either the registry-pile shards of
# benchmarks/registry_pile_subset.txt, compressed (for suites and benchmarks), or, with --tests, the
# transformers version rnnlab.hf needs (the GPU image's is older) for the whole `pytest -m gpu`.
# Both do not fit one call's 64 MiB. Usage: bash benchmarks/stage_gpu.sh SHARED_DIR [--tests]
# (SHARED_DIR: the folder holding wheels/ and data/)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=$1
rm -rf .gpu
mkdir -p .gpu/wheels
cp "$shared"/wheels/{causal_conv1d,mamba_ssm,schedulefree,ninja,fla_core,flashrnn}*.whl .gpu/wheels/
# fla's layers (Gated DeltaNet's official layer): a pure wheel, from PyPI when the shared folder lacks it
cp "$shared"/wheels/flash_linear_attention-0.6.0-*.whl .gpu/wheels/ 2>/dev/null ||
  python3 -m pip download -q --no-deps -d .gpu/wheels flash-linear-attention==0.6.0
if [ "${2:-}" = --tests ]; then
  # its needs (huggingface-hub >= 1.31, tokenizers 0.23) are in the GPU image
  python3 -m pip download -q --no-deps -d .gpu/wheels transformers==5.24.0
else
  mkdir -p .gpu/data/train .gpu/data/val
  for s in $(grep -v '^#' benchmarks/registry_pile_subset.txt); do
    cp "$shared/data/train/$s.train.txt.xz" .gpu/data/train/
    [ ! -f "$shared/data/val/$s.val.txt.xz" ] || cp "$shared/data/val/$s.val.txt.xz" .gpu/data/val/
  done
  xz -kc "$shared/data/eval/wikitext2_raw_test.txt" > .gpu/data/wikitext2_raw_test.txt.xz
fi
du -sh .gpu
