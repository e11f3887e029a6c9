#!/usr/bin/env bash
# Stage what a GPU call needs under .gpu/ (git-ignored; carry it with the call): the wheels (flashrnn
# only for benchmarks/bench_peers.py) and either the registry-pile shards of
# benchmarks/registry_pile_subset.txt, compressed (for suites and benchmarks), or, with --tests, the
# transformers version rnnlab.hf needs (the GPU image's is older) for the whole `pytest -m gpu`,
# or, with --tilelang, fla's TileLang kernels for Gated DeltaNet's backward on Hopper (below).
# No two fit one call's 64 MiB. Usage: bash benchmarks/stage_gpu.sh SHARED_DIR [--tests|--tilelang]
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
  # its needs (huggingface-hub >= 1.31, tokenizers 0.23) are in the GPU image; zstandard (`.zst`
  # shards, tests/test_data_prepare.py) is a core dependency the image lacks (5.5 MB: the suites,
  # which unpack xz shards, go without it to keep their corpus within a call)
  python3 -m pip download -q --no-deps -d .gpu/wheels transformers==5.24.0
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .gpu/wheels zstandard==0.25.0
elif [ "${2:-}" = --tilelang ]; then
  # Gated DeltaNet on Hopper: with Triton in [3.4, 3.7.1) (torch 2.11 pins 3.6) fla refuses its own
  # gated backward (fla #640) and runs its TileLang kernel instead when tilelang is installed. As
  # wheels tilelang and its needs are ~82 MB, over a call's 64 MiB: unpacked, without z3's
  # command-line binary, and xz'd they are ~38 MB, so this set has fla and its TileLang stack only
  # (no Mamba2, no corpus): enough for the GDN GPU tests. gpu_env.sh unpacks it into /tmp/site.
  rm -f .gpu/wheels/{causal_conv1d,mamba_ssm,ninja,flashrnn}*.whl
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp/wheels" \
    tilelang==0.1.15 apache-tvm-ffi==0.1.12 z3-solver==4.15.4.0 torch-c-dlpack-ext==0.1.5
  for w in "$tmp"/wheels/*.whl; do unzip -qo "$w" -d "$tmp/site"; done
  rm -rf "$tmp"/site/z3_solver-*.data
  tar cf - -C "$tmp/site" . | xz -T0 -9 > .gpu/tilelang-site.tar.xz
else
  mkdir -p .gpu/data/train .gpu/data/val
  for s in $(grep -v '^#' benchmarks/registry_pile_subset.txt); do
    cp "$shared/data/train/$s.train.txt.xz" .gpu/data/train/
    [ ! -f "$shared/data/val/$s.val.txt.xz" ] || cp "$shared/data/val/$s.val.txt.xz" .gpu/data/val/
  done
  xz -kc "$shared/data/eval/wikitext2_raw_test.txt" > .gpu/data/wikitext2_raw_test.txt.xz
fi
# the commit of the tree sent (the GPU machine's copy of .git is stale): HEAD, every tracked file's
# hash and the list of files; gpu_env.sh there checks both and records the commit in each run's
# env.json (RNNLAB_GIT_COMMIT). Stage after committing: a tree with uncommitted changes or untracked
# files (they travel too) records none.
if [ -z "$(git status --porcelain)" ]; then
  git rev-parse --short=12 HEAD > .gpu/commit
  git ls-files -z | xargs -0 sha1sum > .gpu/tree.sha1
else
  echo "stage_gpu.sh: uncommitted changes or untracked files: commit first, or the runs record no commit" >&2
fi
du -sh .gpu
