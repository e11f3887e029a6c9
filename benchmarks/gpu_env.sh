# Source on a GPU machine that received the wheels under .gpu/wheels (benchmarks/stage_gpu.sh): installs
# them into /tmp/site (no internet needed) and puts rnnlab, the wheels and ninja on the paths.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl
# fla's TileLang stack, when staged (stage_gpu.sh --tilelang): unpacked wheels, so no pip step
[ ! -f .gpu/tilelang-site.tar.xz ] || [ -d /tmp/site/tilelang ] || tar xJf .gpu/tilelang-site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
# 9.0a: Hopper with its arch-specific instructions (E1's persistent kernel's cluster path needs them;
# with a list lacking 9.0a it builds without that path: rnnlab.ops.elman.persistent.arch_flags)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-8}
# one folder for the compilers' caches (Inductor's graphs and kernels, Triton's, TileLang's, and the
# torch extensions built with nvcc: E1's persistent kernel, ~1 minute to build), started from an
# earlier call's when staged (stage_gpu.sh --compile-cache): warm caches cut a 400M E1 run's
# warm-up from ~119 s to ~6 s. save_compile_cache OUTDIR (the scripts call it last) brings it back.
# Caches are keyed by the code and compiler versions: a stale entry is a miss. Triton's autotuners
# (Mamba2's and fla's kernels try many launches on first use, most of a deep Mamba2's ~100 s
# warm-up) keep their choices in the cache too (TRITON_CACHE_AUTOTUNING).
export RNNLAB_COMPILE_CACHE=/tmp/compile-cache
mkdir -p "$RNNLAB_COMPILE_CACHE"
if [ -f .gpu/compile-cache.tar.xz ] && [ ! -f "$RNNLAB_COMPILE_CACHE/.from-staging" ]; then
  tar xJf .gpu/compile-cache.tar.xz -C "$RNNLAB_COMPILE_CACHE" && touch "$RNNLAB_COMPILE_CACHE/.from-staging"
fi
# ninja rebuilds an extension whose source is newer than its objects, and this copy of the tree is
# fresh: date the CUDA sources back (an extension's name carries its source's hash, so a kept build
# is always of this very source, rnnlab/ops/elman/persistent.py)
find src -name '*.cu' -exec touch -d '2000-01-01 00:00:00' {} +
export TORCHINDUCTOR_CACHE_DIR=$RNNLAB_COMPILE_CACHE/inductor TRITON_CACHE_DIR=$RNNLAB_COMPILE_CACHE/triton \
  TILELANG_CACHE_DIR=$RNNLAB_COMPILE_CACHE/tilelang TORCH_EXTENSIONS_DIR=$RNNLAB_COMPILE_CACHE/torch_extensions \
  TRITON_CACHE_AUTOTUNING=1
unpack_corpus() {
  # the staged corpus (stage_gpu.sh) as raw byte files: /tmp/train.txt, /tmp/val.txt and WikiText-2's
  # raw test text /tmp/wikitext2.txt; one line each on stdout with its size
  python3 benchmarks/unpack_corpus.py /tmp/train.txt .gpu/data/train/*.xz
  python3 benchmarks/unpack_corpus.py /tmp/val.txt .gpu/data/val/*.xz
  python3 benchmarks/unpack_corpus.py /tmp/wikitext2.txt .gpu/data/wikitext2_raw_test.txt.xz
}
save_compile_cache() {
  # OUTDIR/compile-cache.tar.xz, when it is within what a call brings back (at most 8 files, 16 MiB
  # each: it is left out when OUTDIR already holds 8 other files). Never fails the caller.
  local raw size others
  others=$(find "$1" -maxdepth 3 -type f ! -name compile-cache.tar.xz ! -name '.*' | wc -l)
  if [ "$others" -ge 8 ]; then
    echo "compile cache: not brought back, OUTDIR already holds $others files (a call brings back 8)"; return 0
  fi
  raw=$(du -sm "$RNNLAB_COMPILE_CACHE" 2>/dev/null | cut -f1) || return 0
  if [ "${raw:-0}" -gt 400 ]; then  # would not compress to 16 MiB, and compressing it would eat the call
    echo "compile cache: $raw MiB unpacked, not brought back"; return 0
  fi
  # (a torch extension's build lock left by a killed build would make the next call wait forever;
  # Triton loads a cached kernel from its cubin and metadata: its text IRs, 2/3 of the bytes, are left out)
  XZ_OPT="-6 -T0" tar cJf "$1/.compile-cache.tmp" --exclude=.from-staging --exclude='torch_extensions/*/lock' \
    --exclude='*.llir' --exclude='*.ttir' --exclude='*.ttgir' --exclude='*.ptx' --exclude='*.source' \
    -C "$RNNLAB_COMPILE_CACHE" . || { rm -f "$1/.compile-cache.tmp"; return 0; }
  size=$(stat -c %s "$1/.compile-cache.tmp")
  if [ "$size" -le $(( 15 * 1048576 )) ]; then
    mv -f "$1/.compile-cache.tmp" "$1/compile-cache.tar.xz"
    echo "compile cache: $raw MiB unpacked, $(( size / 1048576 )) MiB xz'd: OUTDIR/compile-cache.tar.xz"
  else
    rm -f "$1/.compile-cache.tmp"
    echo "compile cache: $raw MiB unpacked, $(( size / 1048576 )) MiB xz'd, over 15 MiB: not brought back"
  fi
}
# the commit staged by stage_gpu.sh, claimed only while the code is the code staged (else none:
# git_state then reports the stale copy's, dirty)
RNNLAB_GIT_COMMIT=$(bash benchmarks/staged_commit.sh)
if [ -n "$RNNLAB_GIT_COMMIT" ]; then export RNNLAB_GIT_COMMIT; else unset RNNLAB_GIT_COMMIT; fi
