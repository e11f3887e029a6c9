# Source on a GPU machine that received the wheels under .gpu/wheels (benchmarks/stage_gpu.sh): installs
# them into /tmp/site (no internet needed) and puts rnnlab, the wheels and ninja on the paths.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl
# fla's TileLang stack, when staged (stage_gpu.sh --tilelang): unpacked wheels, so no pip step
[ ! -f .gpu/tilelang-site.tar.xz ] || [ -d /tmp/site/tilelang ] || tar xJf .gpu/tilelang-site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-8}
# the commit staged by stage_gpu.sh, claimed only while the tree is the one staged: every tracked file
# unchanged and no file added to the code (else none: git_state then reports the stale copy's, dirty)
unset RNNLAB_GIT_COMMIT
if [ -f .gpu/commit ]; then
  if sha1sum --quiet --strict -c .gpu/tree.sha1 >/dev/null 2>&1 && [ -z "$(
      find src tests benchmarks -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*' | sort |
      comm -23 - <(cut -c43- .gpu/tree.sha1 | sort))" ]; then
    RNNLAB_GIT_COMMIT=$(cat .gpu/commit); export RNNLAB_GIT_COMMIT
  else
    echo "gpu_env.sh: the tree differs from the staged commit $(cat .gpu/commit): no commit recorded (stage again)" >&2
  fi
fi
