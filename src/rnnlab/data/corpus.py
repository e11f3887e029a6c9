"""Byte corpora as memory maps, train/held-out splits, seeded training windows, eval windows.

Nothing here reads a whole file: a corpus is an ``np.memmap`` of uint8, splits are
(offset, length) views of it, and batches gather only the bytes of their windows.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from rnnlab.errors import counted

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


def default_train_path() -> Path:
    """The bundled registry-pile training sample (about 2.9 MB, see sample/README.md)."""
    return SAMPLE_DIR / "registry_pile_train.txt"


def default_val_path() -> Path:
    """The bundled registry-pile held-out sample (about 0.36 MB, from the val/ shards)."""
    return SAMPLE_DIR / "registry_pile_val.txt"


# The first bytes of the compressed files `rnnlab data prepare` unpacks, which a corpus must not be
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "Zstandard"}
# the name's ending that makes `rnnlab data prepare` unpack each compressed format
SUFFIX_OF = {"gzip": ".gz", "xz": ".xz", "Zstandard": ".zst", "bzip2": ".bz2"}
UTF8_BOM = b"\xef\xbb\xbf"
MAGIC_BYTES = 10  # what compression_of reads: bzip2's magic and first block's (or end's) is the longest
# bzip2: "BZh", the block size 1-9, then a block's magic (pi) or, for an empty stream, the end's (sqrt(pi))
_BZIP2 = re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)")
# a Zstandard skippable frame (magic 0x184D2A50 to 0x184D2A5F, little-endian)
_ZSTD_SKIPPABLE = re.compile(rb"[\x50-\x5f]\x2a\x4d\x18")
# a zip archive (a local file header, or an empty archive's end record): prepare does not open archives
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# a tar archive (POSIX or GNU) says "ustar" at byte 257 of its first header: its headers and NUL
# padding around each file's bytes are no text
TAR_MAGIC, TAR_MAGIC_AT = b"ustar", 257
TAR_HEAD = TAR_MAGIC_AT + len(TAR_MAGIC)  # the bytes is_tar needs


def is_tar(head: bytes) -> bool:
    """Whether a file's first ``TAR_HEAD`` bytes are a tar archive's first header."""
    return head[TAR_MAGIC_AT:TAR_HEAD] == TAR_MAGIC


def compression_of(head: bytes) -> str | None:
    """The compressed format (a name of ``COMPRESSED_MAGIC``, or "bzip2") a file's first ``MAGIC_BYTES``
    bytes announce, or None."""
    if _BZIP2.match(head):
        return "bzip2"
    if _ZSTD_SKIPPABLE.match(head):  # pzstd writes one before each frame
        return "Zstandard"
    return next((kind for magic, kind in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


class ByteCorpus:
    """Any raw file as a read-only ``np.memmap`` of uint8 (one token per byte).

    ``len(c)`` is the file size; ``c[a:b]`` (or ``c[i]``) returns numpy data without
    reading the rest of the file; ``c.data`` is the memmap itself; ``c.path`` the path.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"corpus file not found: {self.path}")
        if self.path.is_dir():
            raise IsADirectoryError(f"corpus file {self.path} is a directory, expected a raw byte file")
        if not self.path.is_file():  # a pipe (--data <(zcat ...), /dev/stdin) stats as 0 bytes: not "empty"
            raise ValueError(f"corpus file {self.path} is not a regular file (a pipe or a device?): rnnlab "
                             f"memory-maps its data; write the bytes to a file first")
        size = self.path.stat().st_size
        if size == 0:
            raise ValueError(f"corpus file {self.path} is empty")
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(size,))
        head = bytes(self.data[:MAGIC_BYTES])
        if kind := compression_of(head):
            suffix = SUFFIX_OF[kind]  # the name's ending that makes prepare unpack it
            how = (f"`rnnlab data prepare {self.path} --out FILE`" if self.path.name.endswith(suffix) else
                   f"rename it to end in {suffix} (NAME.txt{suffix} for text, NAME.jsonl{suffix} for JSON lines), then "
                   f"`rnnlab data prepare NEW_NAME --out FILE`")
            raise ValueError(f"corpus file {self.path} is {kind}-compressed, and rnnlab reads raw bytes: "
                             f"unpack it first ({how} for text or JSON lines)")
        # a tar archive's headers and NUL padding around the files' bytes are no text either
        archive = "zip" if head.startswith(ZIP_MAGIC) else "tar" if is_tar(bytes(self.data[:TAR_HEAD])) else None
        if archive:
            raise ValueError(f"corpus file {self.path} is a {archive} archive, and rnnlab reads raw bytes: extract "
                             f"its files first, then `rnnlab data prepare FILES --out FILE` joins them")
        # its text would be read with the JSON around it (prepare reads JSON lines after a BOM or blank lines)
        if self.path.suffix == ".jsonl" and bytes(self.data[:4096]).removeprefix(UTF8_BOM).lstrip().startswith(b"{"):
            raise ValueError(f"corpus file {self.path} is JSON lines, and rnnlab reads raw bytes: extract its "
                             f"text first (`rnnlab data prepare {self.path} --out FILE`)")

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, idx):
        out = self.data[idx]
        return np.asarray(out) if isinstance(out, np.ndarray) else out

    def __getstate__(self):  # pickle by path (e.g. DataLoader workers), never the bytes
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"ByteCorpus({str(self.path)!r}, {len(self):,} bytes)"


@dataclass(frozen=True)
class Split:
    """A contiguous view ``[offset, offset+length)`` of a ``ByteCorpus``; no copy is made.

    Indexing is relative to the split: ``s[0]`` is ``corpus[offset]``; slices are clipped
    to the split, so a split never exposes bytes outside itself.
    """

    corpus: ByteCorpus
    offset: int
    length: int
    name: str = "train"

    def __post_init__(self):
        n = len(self.corpus)
        if not (0 <= self.offset and self.length >= 0 and self.offset + self.length <= n):
            raise ValueError(
                f"split {self.name!r} [{self.offset}, {self.offset + self.length}) "
                f"is outside corpus {self.corpus.path} ({counted(n, 'byte')})"
            )

    @property
    def path(self) -> Path:
        return self.corpus.path

    @property
    def array(self) -> np.ndarray:
        """The split as a numpy view of the memmap (no copy)."""
        return np.asarray(self.corpus.data[self.offset : self.offset + self.length])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx):
        return self.array[idx]

    def fingerprint(self, blocks: int = 64, block: int = 4096) -> str:
        """A SHA-1 (16 hex digits) of ``blocks`` blocks of ``block`` bytes spread evenly over the
        split (the whole split when it is shorter): another file of the same size tells itself
        apart at the cost of reading 256 KB, not the corpus (an edit of the same size between the
        blocks goes unseen)."""
        data, digest = self.array, hashlib.sha1()
        if self.length <= blocks * block:
            digest.update(data.tobytes())
        else:
            for start in np.linspace(0, self.length - block, blocks).astype(np.int64):
                digest.update(data[start:start + block].tobytes())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Split({self.name!r}, {str(self.path)!r}, offset={self.offset}, length={self.length:,})"

    def described(self) -> str:
        """The split in an error's words: a whole file by its path, a part by the file it is part of."""
        kind = "training" if self.name == "train" else "held-out"
        if self.length == len(self.corpus) and self.offset == 0:
            return f"{kind} file {self.path}"
        return f"the {kind} split of {self.path}"


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split

    def __iter__(self):  # allows `train, val = load_splits(...)`
        return iter((self.train, self.val))


def load_splits(
    data: str | os.PathLike | None = None,
    val_data: str | os.PathLike | None = None,
    val_fraction: float = 0.01,
    min_len: int = 2,
) -> Splits:
    """Train and held-out splits.

    - ``data=None``: the bundled sample (``default_train_path()``), with ``default_val_path()``
      as held-out unless ``val_data`` is given.
    - ``val_data`` given: train is all of ``data``, held-out is all of ``val_data``.
    - otherwise the held-out split is the fixed tail of ``data``:
      ``max(ceil(len * val_fraction), min_len)`` bytes; train is the head before it.
      Training windows (``BatchStream``) never reach past the end of the train split, so
      held-out bytes are never trained on.

    Each split must hold at least ``min_len`` bytes (ValueError otherwise).
    """
    if min_len < 1:
        raise ValueError(f"min_len must be >= 1, got {min_len}")
    if data is None:
        data = default_train_path()
        if val_data is None:
            val_data = default_val_path()
    corpus = ByteCorpus(data)
    n = len(corpus)
    if val_data is not None:
        train = Split(corpus, 0, n, "train")
        val = file_split(val_data, "val")
    else:
        if not (0.0 < val_fraction < 1.0):
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_val = max(math.ceil(n * val_fraction), min_len)
        if n - n_val < min_len:
            raise ValueError(
                f"corpus {corpus.path} ({counted(n, 'byte')}) is too small to split: held-out tail of "
                f"{counted(n_val, 'byte')} (val_fraction={val_fraction}, min_len={min_len}) leaves "
                f"{counted(max(n - n_val, 0), 'byte')} for training; use a larger file or give a held-out file "
                f"(--val-data)"
            )
        train = Split(corpus, 0, n - n_val, "train")
        val = Split(corpus, n - n_val, n_val, "val")
    for s in (train, val):
        if len(s) < min_len:
            raise ValueError(f"{s.described()} ({counted(len(s), 'byte')}) is shorter than "
                             f"min_len = {counted(min_len, 'byte')}")
    return Splits(train, val)


def heldout_split(data: str | os.PathLike | None = None, val_data: str | os.PathLike | None = None,
                  val_fraction: float = 0.01) -> Split:
    """:func:`load_splits`' held-out split alone: a ``val_data`` file is read without opening
    ``data``, so a run whose training file has moved can still be scored (``eval``, ``gradflow``)."""
    if val_data is not None:
        return file_split(val_data, "val")
    return load_splits(data, None, val_fraction).val


def file_split(path: str | os.PathLike, name: str = "eval") -> Split:
    """All of the raw file ``path`` as one split: a held-out text of its own (e.g. WikiText-2)."""
    corpus = ByteCorpus(path)
    return Split(corpus, 0, len(corpus), name)


def _check_len(split: Split, seq_len: int) -> None:
    if len(split) < seq_len + 1:
        raise ValueError(
            f"{split.described()} ({counted(len(split), 'byte')}) is shorter than "
            f"seq_len+1 = {seq_len + 1} bytes; use a larger file or a smaller --seq-len"
        )


def _check_pos(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


# --- counter-based RNG: SplitMix64 finalizer over (seed, step, global index) -----------------
_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 / Stafford variant 13 finalizer; a bijection of uint64 with full avalanche."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_offsets(seed: int, step: int, index: np.ndarray, n_choices: int) -> np.ndarray:
    """Offsets in ``[0, n_choices)`` for global sample indices ``index`` at ``step``.

    A pure function of (seed, step, index), in uint64 arithmetic (mod 2**64) with ``mix`` the
    SplitMix64 finalizer (``_mix64``) and ``G = 0x9E3779B97F4A7C15``::

        hash = mix(mix(mix(seed + G) ^ (step * G)) ^ ((index + 1) * G))

    then ``hash % n_choices`` (modulo bias < n_choices / 2**64, negligible).
    """
    idx = np.asarray(index, dtype=np.uint64)
    with np.errstate(over="ignore"):
        k = _mix64(np.array([(int(seed) & _M64)], dtype=np.uint64) + _GOLDEN)
        k = _mix64(k ^ (np.uint64(int(step) & _M64) * _GOLDEN))
        h = _mix64(k ^ (idx * _GOLDEN + _GOLDEN))
    return (h % np.uint64(n_choices)).astype(np.int64)


class BatchStream:
    """Seeded random training windows from a split.

    ``batch(step)`` returns a ``torch.LongTensor [batch_size, seq_len + 1]`` (inputs
    ``x = b[:, :-1]``, targets ``y = b[:, 1:]``). Global sample ``g`` of a step starts at
    ``sample_offsets(seed, step, g, len - seq_len)``, uniform in ``[0, len - seq_len - 1]``,
    so the stream is the same for every model, does not depend on call order, and resuming
    needs only the step. With ``world_size = N`` rank ``r`` takes global samples
    ``[r*B, (r+1)*B)`` of a global batch of ``N*B``: N ranks with batch B together see exactly
    what one process with batch ``N*B`` sees.
    """

    def __init__(self, split: Split, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        _check_pos("batch_size", batch_size)
        _check_pos("seq_len", seq_len)
        _check_pos("world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        _check_len(split, seq_len)
        self.split, self.batch_size, self.seq_len = split, int(batch_size), int(seq_len)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.n_choices = len(split) - self.seq_len  # valid starts: 0 .. len - seq_len - 1
        self._arange = np.arange(self.seq_len + 1, dtype=np.int64)

    def offsets(self, step: int) -> np.ndarray:
        """Start offsets of this rank's windows at ``step``, relative to the split."""
        if int(step) < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        g = np.arange(self.rank * self.batch_size, (self.rank + 1) * self.batch_size, dtype=np.uint64)
        return sample_offsets(self.seed, step, g, self.n_choices)

    def batch(self, step: int) -> torch.Tensor:
        starts = self.offsets(step) + self.split.offset
        idx = starts[:, None] + self._arange[None, :]
        win = self.split.corpus.data[idx]  # gathers only these bytes from the memmap
        return torch.from_numpy(np.asarray(win, dtype=np.int64))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches()

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1


def eval_windows(split: Split, seq_len: int, batch_size: int, max_bytes: int | None = None) -> Iterator[torch.Tensor]:
    """Deterministic non-overlapping windows over the split (or its first ``max_bytes``), in order.

    Window ``i`` is bytes ``[i*seq_len, i*seq_len + seq_len + 1)`` of the split: it predicts the
    ``seq_len`` targets ``i*seq_len+1 .. (i+1)*seq_len``, so every target byte after the first
    is predicted exactly once. There are ``(L - 1) // seq_len`` windows for ``L`` usable bytes;
    a final remainder of fewer than ``seq_len`` targets is dropped, so all windows have the same
    length and the mean of per-window mean losses is the exact per-byte mean. Yields
    ``LongTensor [b, seq_len + 1]`` with ``b = batch_size`` except possibly the last batch.
    """
    _check_pos("seq_len", seq_len)
    _check_pos("batch_size", batch_size)
    L = len(split)
    if max_bytes is not None:
        _check_pos("max_bytes", max_bytes)
        L = min(L, int(max_bytes))
    if L < seq_len + 1:  # the cap is the fix where the split holds a window, else the file
        window = f"one evaluation window, seq_len+1 = {seq_len + 1} bytes"
        if len(split) >= seq_len + 1:
            raise ValueError(f"--eval-bytes {L:,} is less than {window}; raise it to at least {seq_len + 1}")
        raise ValueError(f"{split.described()} ({counted(len(split), 'byte')}) is shorter than {window}; "
                         "use a larger file")
    n_win = eval_num_windows(L, seq_len)
    ar = np.arange(seq_len + 1, dtype=np.int64)
    for i in range(0, n_win, batch_size):
        starts = split.offset + np.arange(i, min(i + batch_size, n_win), dtype=np.int64) * seq_len
        win = split.corpus.data[starts[:, None] + ar[None, :]]
        yield torch.from_numpy(np.asarray(win, dtype=np.int64))


def eval_num_windows(n_bytes: int, seq_len: int) -> int:
    """Number of eval windows for ``n_bytes`` usable bytes (targets = this * seq_len)."""
    return max(0, (int(n_bytes) - 1) // int(seq_len))
