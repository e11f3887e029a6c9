"""Byte-level data: memory-mapped corpora, held-out splits, seeded batch streams, bundled sample."""

from .corpus import (
    BatchStream,
    ByteCorpus,
    Split,
    Splits,
    default_train_path,
    default_val_path,
    eval_num_windows,
    eval_windows,
    file_split,
    heldout_split,
    load_splits,
    sample_offsets,
)

__all__ = [
    "BatchStream",
    "ByteCorpus",
    "Split",
    "Splits",
    "default_train_path",
    "default_val_path",
    "eval_num_windows",
    "eval_windows",
    "file_split",
    "heldout_split",
    "load_splits",
    "sample_offsets",
]
