#!/usr/bin/env bash
# Print the commit benchmarks/stage_gpu.sh staged (.gpu/commit), but only while the code is the code
# staged: every code file it listed in .gpu/tree.sha1 (src/, tests/, benchmarks/, scripts/,
# pyproject.toml) unchanged and no code file added. Results, docs and run folders changed since do
# not count (a suite's runs brought back and carried to the next call change no measurement).
# Otherwise print nothing and say why on stderr. Run in the repository's root; gpu_env.sh exports
# the answer as RNNLAB_GIT_COMMIT, which every run's env.json records.
# --paths: print the code's paths instead (stage_gpu.sh's list of what counts as code).
set -uo pipefail
paths=(src tests benchmarks scripts pyproject.toml)
[ "${1:-}" != --paths ] || { echo "${paths[@]}"; exit 0; }
[ -f .gpu/commit ] && [ -f .gpu/tree.sha1 ] || exit 0
code="^($(IFS='|'; sed 's/\./\\./g' <<< "${paths[*]}"))(/|\$)"  # a path under one of them, or it
# tree.sha1 is sha1sum's output: 40 hex digits, two spaces, the path
listed=$(re=$code awk 'substr($0, 43) ~ ENVIRON["re"]' .gpu/tree.sha1)  # (awk -v would unescape it)
added=$(find "${paths[@]}" -type f -not -path '*/__pycache__/*' \
          -not -path '*.egg-info/*' 2>/dev/null | sort | comm -23 - <(cut -c43- <<< "$listed" | sort))
if ! sha1sum --quiet --strict -c <<< "$listed" >/dev/null 2>&1; then
  echo "staged_commit.sh: code changed since $(cat .gpu/commit) was staged: no commit recorded (stage again)" >&2
elif [ -n "$added" ]; then
  echo "staged_commit.sh: code added since $(cat .gpu/commit) was staged ($(head -1 <<< "$added")): no commit recorded (stage again)" >&2
else
  cat .gpu/commit
fi
