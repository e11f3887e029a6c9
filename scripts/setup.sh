#!/usr/bin/env bash
# Create ./.venv if missing and install rnnlab (editable) with its test dependencies.
# CPU machines get torch 2.13.0 (CPU build, pinned by constraints-cpu.txt); machines with an
# NVIDIA driver get pip's default CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
PIP=".venv/bin/python -m pip"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  CONSTRAINTS=()
else
  CONSTRAINTS=(-c constraints-cpu.txt)
fi
$PIP install -q "${CONSTRAINTS[@]}" torch
$PIP install -q "${CONSTRAINTS[@]}" -e ".[dev]" setuptools wheel packaging
# what `import mamba_ssm` itself imports (einops; its __init__ reaches transformers.generation)
$PIP install -q "${CONSTRAINTS[@]}" "einops>=0.7,<1" huggingface_hub "transformers>=5.24,<6"
# mamba-ssm ships only as an sdist; its Mamba2 SSD kernels are Triton, and its CPU references
# (ssd_minimal) back our tests. Build it without the CUDA extension (see docs/dependencies.md),
# last and with --no-deps: its metadata also asks for tilelang, quack-kernels, apache-tvm-ffi and
# ninja (Mamba-3 and CUDA builds only), which pip would otherwise report in red after any later
# install into this environment that touches one of its dependencies.
if ! .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('mamba_ssm') is None)"; then
  MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
    $PIP install -q --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
fi
