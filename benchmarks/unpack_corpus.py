"""Concatenate xz-compressed text shards (sorted by name) into one raw byte file, the form every
rnnlab corpus takes. Used on GPU machines, which receive the registry-pile shards compressed.

    python benchmarks/unpack_corpus.py OUT.txt shard1.txt.xz shard2.txt.xz ...
"""

import lzma
import sys
from pathlib import Path


def unpack(out: Path, shards: list[Path]) -> int:
    total = 0
    with open(out, "wb") as f:
        for shard in sorted(shards):
            data = lzma.open(shard).read()
            f.write(data)
            total += len(data)
    return total


if __name__ == "__main__":
    out, *shards = map(Path, sys.argv[1:])
    print(f"{out}: {unpack(out, shards):,} bytes from {len(shards)} shards")
