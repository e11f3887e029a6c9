"""Shared test fixtures (kept small).

Without a GPU the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set before
any kernel module is imported), so the CPU suite checks them too (tests/test_kernels_interpreted.py).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def tiny_train():
    """Keyword args for a tiny, fast CPU training run (fp32, 2 layers, 32-byte windows)."""
    from rnnlab.train.config import TrainConfig

    def make(out, model="e1", dim=32, depth=2, **kw):
        """``kw``: any config fields by their flat keys (``steps=30``, ``optimizer="adamw"``)."""
        base = dict(batch_size=4, seq_len=32, steps=10, precision="fp32", lr=3e-3, eval_bytes=4096,
                    device="cpu", out=str(out))
        base.update(kw)
        return TrainConfig.from_dict({"model": {"model": model, "dim": dim, "depth": depth}, **base})

    return make


@pytest.fixture
def small_corpus(tmp_path):
    """A 20 kB text file (enough for seq_len 32 and a 1% held-out tail of 200 bytes)."""
    p = tmp_path / "corpus.txt"
    p.write_bytes((b"the quick brown fox jumps over the lazy dog. " * 500)[:20000])
    return p


@contextmanager
def _single_threaded():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP spin-waits make them 10x slower
    when other processes compete for the cores; run such tests single-threaded."""
    with _single_threaded():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """``one_thread`` for module-scoped fixtures that train (they are set up before it)."""
    with _single_threaded():
        yield
