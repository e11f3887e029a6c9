"""Concatenate xz-compressed text shards (sorted by name) into one raw byte file, the form every
rnnlab corpus takes. Used on GPU machines (benchmarks/run_suites_gpu.sh), which receive the
registry-pile shards compressed and lack zstandard: standard library only.

    python benchmarks/unpack_corpus.py OUT.txt shard1.txt.xz shard2.txt.xz ...
"""

from __future__ import annotations

import argparse
import lzma
import shutil
from pathlib import Path


def unpack(out: Path, shards: list[Path]) -> int:
    """Write the decompressed ``shards``, in name order, to ``out``; the bytes written."""
    with open(out, "wb") as f:
        for shard in sorted(shards):
            with lzma.open(shard) as src:
                shutil.copyfileobj(src, f)
        return f.tell()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the raw byte file to write (replaced if it exists)")
    parser.add_argument("shards", type=Path, nargs="+", help="xz-compressed shards, concatenated in name order")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.shards if not p.is_file()]
    if missing:
        parser.error(f"no such shard: {', '.join(missing)}")
    if args.out.resolve() in {p.resolve() for p in args.shards}:
        parser.error(f"{args.out} is one of the shards")
    try:
        total = unpack(args.out, args.shards)
    except (lzma.LZMAError, EOFError) as e:
        args.out.unlink(missing_ok=True)  # no partial corpus left behind
        parser.error(f"cannot decompress the shards: {e}")
    print(f"{args.out}: {total:,} bytes from {len(args.shards)} shards")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
