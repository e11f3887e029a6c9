"""Rebuild the bundled registry-pile sample in ``rnnlab/data/sample/``.

Not run at import. Usage::

    python -m rnnlab.data.make_sample /path/to/registry-pile            # writes into the package
    python -m rnnlab.data.make_sample /path/to/registry-pile --out DIR

(registry-pile: a folder of ``train/<source>.train.txt.xz`` and ``val/<source>.val.txt.xz`` shards;
see ``sample/README.md``.)

Rule (deterministic; the shards read with the standard library's lzma): for every shard, in sorted file-name order,
decompress from the start and keep the longest prefix that ends at a blank line (``b"\\n\\n"``)
and is at most ``per_shard`` bytes. A blank line ends each document, but documents hold blank
lines too (code files, e-mails, manuals), so a prefix may end inside a document: the held-out
file stays disjoint from training at document level all the same, since the val shards' documents
are not in the train shards. If the first blank line ends after ``per_shard`` bytes, the prefix up
to it (included) is kept. A shard shorter than ``per_shard`` is kept whole. The kept prefixes are
concatenated.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
from pathlib import Path

from rnnlab.data.prepare import AtomicFile

TRAIN_PER_SHARD = 140_000
VAL_PER_SHARD = 14_000
SEP = b"\n\n"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


def cut_prefix(path: str | Path, per_shard: int, chunk: int = 1 << 16) -> bytes:
    """Longest prefix of the xz file ``path`` that ends at a blank line and has at most ``per_shard`` bytes."""
    buf = bytearray()
    with lzma.open(path, "rb") as f:
        buf += f.read(per_shard + 1)  # one byte more, to see whether the whole shard fits
        if len(buf) <= per_shard:  # whole shard fits
            return bytes(buf)
        cut = buf.rfind(SEP, 0, per_shard)  # the boundary must end at or before per_shard
        if cut >= 0:
            return bytes(buf[: cut + 2])
        while True:  # first document is longer than per_shard: keep it whole
            cut = buf.find(SEP)
            if cut >= 0:
                return bytes(buf[: cut + 2])
            more = f.read(chunk)
            if not more:
                return bytes(buf)
            buf += more


def make_sample(
    corpus_dir: str | Path,
    out_dir: str | Path = SAMPLE_DIR,
    train_per_shard: int = TRAIN_PER_SHARD,
    val_per_shard: int = VAL_PER_SHARD,
) -> dict:
    """Write ``registry_pile_train.txt`` and ``registry_pile_val.txt`` under ``out_dir``.

    ``corpus_dir`` is the folder holding ``train/*.train.txt.xz`` and ``val/*.val.txt.xz``.
    Returns ``{split: {"file", "bytes", "md5", "shards": [(shard, bytes), ...]}}``.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {}
    for split, pattern, per_shard in (
        ("train", "train/*.train.txt.xz", train_per_shard),
        ("val", "val/*.val.txt.xz", val_per_shard),
    ):
        shards = sorted(corpus_dir.glob(pattern))
        if not shards:
            raise FileNotFoundError(f"no shards matching {corpus_dir / pattern}")
        md5, total, rows = hashlib.md5(), 0, []
        out = out_dir / f"registry_pile_{split}.txt"
        with AtomicFile(out) as w:  # an interrupted run leaves the sample it found, not half a new one
            for s in shards:
                piece = cut_prefix(s, per_shard)
                w.write(piece)
                md5.update(piece)
                total += len(piece)
                rows.append((s.name, len(piece)))
        info[split] = {"file": str(out), "bytes": total, "md5": md5.hexdigest(), "shards": rows}
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus_dir", help="folder with train/ and val/ xz shards")
    p.add_argument("--out", default=str(SAMPLE_DIR))
    p.add_argument("--train-per-shard", type=int, default=TRAIN_PER_SHARD)
    p.add_argument("--val-per-shard", type=int, default=VAL_PER_SHARD)
    a = p.parse_args(argv)
    info = make_sample(a.corpus_dir, a.out, a.train_per_shard, a.val_per_shard)
    for split, d in info.items():
        print(f"{split}: {d['file']} {d['bytes']:,} B md5 {d['md5']}")
        for name, n in d["shards"]:
            print(f"  {name}\t{n}")


if __name__ == "__main__":
    main()
