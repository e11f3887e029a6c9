#!/usr/bin/env bash
# Stage what a GPU call needs under .gpu/ (git-ignored; carry it with the call).
# Usage: bash benchmarks/stage_gpu.sh SHARED_DIR [--tests | --tilelang] [--subset FILE] [--compile-cache FILE]
#                                     [--models KINDS]
# (SHARED_DIR: the folder holding wheels/ and data/)
#   (default)        the wheels (flashrnn only for benchmarks/bench_peers.py) and the registry-pile
#                    shards of --subset FILE (default benchmarks/registry_pile_subset.txt), compressed,
#                    with their held-out shards and WikiText-2's raw test text: suites and benchmarks
#   --tests          the wheels and what the whole `pytest -m gpu` needs beyond them; no corpus
#   --tilelang       fla with its TileLang stack for Gated DeltaNet's backward on Hopper (below), no
#                    Mamba2 wheels; with --subset also that corpus (GDN's suite runs: only a small
#                    subset fits beside the stack, benchmarks/registry_pile_subset_small.txt)
#   --compile-cache FILE  an earlier call's compile-cache.tar.xz (gpu_env.sh), kept outside .gpu/ (a
#                    path relative to the repository's root): the compilers start warm
#   --models KINDS   only the wheels these model kinds need (comma-separated, e.g. e1 or mamba2):
#                    Mamba2 mamba_ssm + causal_conv1d (23 MB), Gated DeltaNet fla; schedulefree
#                    always (and ninja, but for --tilelang); flashrnn never: room for a compile
#                    cache beside the corpus. A Mamba2 run in a call staged without Mamba2's
#                    wheels would train on the slow SSD reference: name every kind the call trains
# A call carries at most 64 MiB with the tree: the script says when the staged set does not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=$1; shift
mode=data subset=benchmarks/registry_pile_subset.txt corpus= cache= models=
while [ $# -gt 0 ]; do
  case $1 in
    --tests|--tilelang) mode=${1#--} ;;
    --subset) [ $# -ge 2 ] || { echo "stage_gpu.sh: --subset needs a file" >&2; exit 2; }
              subset=$2 corpus=1; shift ;;
    --compile-cache) [ $# -ge 2 ] && [ -f "$2" ] || { echo "stage_gpu.sh: --compile-cache needs a file" >&2; exit 2; }
                     case $(realpath "$2") in "$PWD"/.gpu/*)
                       echo "stage_gpu.sh: keep the compile cache outside .gpu/ (it is emptied first)" >&2; exit 2 ;;
                     esac
                     cache=$2; shift ;;
    --models) [ $# -ge 2 ] && [[ $2 =~ ^[a-z0-9]+(,[a-z0-9]+)*$ ]] ||
                { echo "stage_gpu.sh: --models needs model kinds separated by commas, e.g. e1,mamba2" >&2; exit 2; }
              kinds=$(sed -n 's/^register(ModelSpec("\([a-z0-9]*\)".*/\1/p' src/rnnlab/models/registry.py | xargs)
              IFS=, read -ra wanted <<< "$2"
              for m in "${wanted[@]}"; do
                case " $kinds " in *" $m "*) ;; *) echo "stage_gpu.sh: unknown model kind $m (known: $kinds)" >&2; exit 2 ;; esac
              done
              models=,$2,; shift ;;
    *) echo "stage_gpu.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$mode" != data ] || corpus=1
[ "$mode" != tests ] || [ -z "$models" ] || { echo "stage_gpu.sh: --tests needs every wheel: no --models" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/wheels
cp "$shared"/wheels/{causal_conv1d,mamba_ssm,schedulefree,ninja,fla_core,flashrnn}*.whl .gpu/wheels/
# fla's layers (Gated DeltaNet's official layer): a pure wheel, from PyPI when the shared folder lacks it
cp "$shared"/wheels/flash_linear_attention-0.6.0-*.whl .gpu/wheels/ 2>/dev/null ||
  python3 -m pip download -q --no-deps -d .gpu/wheels flash-linear-attention==0.6.0
if [ -n "$models" ]; then  # keep what the model kinds need
  rm -f .gpu/wheels/flashrnn*.whl
  case $models in *,mamba2,*) ;; *) rm -f .gpu/wheels/{causal_conv1d,mamba_ssm}*.whl ;; esac
  case $models in *,gdn,*) ;; *) rm -f .gpu/wheels/{fla_core,flash_linear_attention}*.whl ;; esac
fi
# causal_conv1d's library carries 10 MB of debug sections: stripped, the same code (strip_wheel.py)
for w in .gpu/wheels/causal_conv1d*.whl; do
  [ ! -f "$w" ] || { chmod u+w "$w"; python3 benchmarks/strip_wheel.py "$w"; }
done
if [ "$mode" = tests ]; then
  # its needs (huggingface-hub >= 1.31, tokenizers 0.23) are in the GPU image. zstandard, a core
  # dependency the image lacks, stays behind: only `rnnlab data prepare` imports it, and no GPU test
  # runs that (with it, 5.5 MB, the tree and this set no longer fit a call)
  python3 -m pip download -q --no-deps -d .gpu/wheels transformers==5.24.0
elif [ "$mode" = tilelang ]; then
  # Gated DeltaNet on Hopper: with Triton in [3.4, 3.7.1) (torch 2.11 pins 3.6) fla refuses its own
  # gated backward (fla #640) and runs its TileLang kernel instead when tilelang is installed. As
  # wheels tilelang and its needs are ~82 MB, over a call's 64 MiB: unpacked, without z3's
  # command-line binary, and xz'd they are ~38 MB (stripping the libraries saves nothing), built
  # once into a cache. gpu_env.sh unpacks it into /tmp/site.
  rm -f .gpu/wheels/{causal_conv1d,mamba_ssm,ninja,flashrnn}*.whl
  pins="tilelang==0.1.15 apache-tvm-ffi==0.1.12 z3-solver==4.15.4.0 torch-c-dlpack-ext==0.1.5"
  pack=${XDG_CACHE_HOME:-$HOME/.cache}/rnnlab/tilelang-site-$(echo "$pins" | sha1sum | cut -c1-12).tar.xz
  if [ ! -f "$pack" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp/wheels" $pins
    for w in "$tmp"/wheels/*.whl; do unzip -qo "$w" -d "$tmp/site"; done
    rm -rf "$tmp"/site/z3_solver-*.data
    mkdir -p "$(dirname "$pack")"
    tar cf - -C "$tmp/site" . | xz -T0 -9 > "$pack.tmp"
    mv "$pack.tmp" "$pack"
  fi
  cp "$pack" .gpu/tilelang-site.tar.xz
fi
if [ -n "$corpus" ]; then
  mkdir -p .gpu/data/train .gpu/data/val
  for s in $(grep -v '^#' "$subset"); do
    cp "$shared/data/train/$s.train.txt.xz" .gpu/data/train/
    [ ! -f "$shared/data/val/$s.val.txt.xz" ] || cp "$shared/data/val/$s.val.txt.xz" .gpu/data/val/
  done
  xz -kc "$shared/data/eval/wikitext2_raw_test.txt" > .gpu/data/wikitext2_raw_test.txt.xz
  cp "$subset" .gpu/data/SUBSET  # which shards, for the record
fi
[ -z "$cache" ] || cp "$cache" .gpu/compile-cache.tar.xz
# the commit of the tree sent (the GPU machine's copy of .git is stale): HEAD, every code file's
# hash and the list of them; gpu_env.sh there checks both and records the commit in each run's
# env.json (RNNLAB_GIT_COMMIT). Only the code counts (uncommitted results or docs, e.g. run folders
# brought back from the last call, change no measurement; results/ may be moved out of the tree
# for a call, before or after staging); uncommitted or untracked code (it travels too) is recorded
# as HEAD-dirty, with the files named in .gpu/dirty.
read -ra code <<< "$(bash benchmarks/staged_commit.sh --paths)"
git ls-files -z --cached --others --exclude-standard -- "${code[@]}" | xargs -0 sha1sum > .gpu/tree.sha1
dirty=$(git status --porcelain -- "${code[@]}")
if [ -z "$dirty" ]; then
  git rev-parse --short=12 HEAD > .gpu/commit
else
  echo "$(git rev-parse --short=12 HEAD)-dirty" > .gpu/commit
  echo "$dirty" > .gpu/dirty
  echo "stage_gpu.sh: uncommitted code (.gpu/dirty): the runs record $(cat .gpu/commit); commit first" >&2
fi
# what a call carries: the tracked and untracked-not-ignored files, plus .gpu (and any other carry).
# Counted in bytes and in the disk they take (whole blocks): the device refused a set of 62.9 MiB of
# bytes (66.8 MiB on disk) and took one of 60.1 (63.9 on disk); which count it uses is not known.
carried() {  # du's total of the tree and .gpu; $1: -b for bytes, --block-size=1 for disk
  echo $(( $(git ls-files -z --cached --others --exclude-standard | du -c "$1" --files0-from=- 2>/dev/null |
             tail -1 | cut -f1) + $(du -s "$1" .gpu | cut -f1) ))
}
bytes=$(carried -b) disk=$(carried --block-size=1)
echo ".gpu: $(( $(du -sb .gpu | cut -f1) / 1048576 )) MiB; with the tree: $(( bytes / 1048576 )) MiB of a call's 64" \
     "($(( disk / 1048576 )) MiB on disk)"
[ "$bytes" -le $(( 64 * 1048576 )) ] || { echo "stage_gpu.sh: over a call's 64 MiB" >&2; exit 1; }
[ "$disk" -le $(( 64 * 1048576 )) ] || echo "stage_gpu.sh: over 64 MiB on disk: the call may be refused" >&2
