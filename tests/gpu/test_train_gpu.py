"""GPU: gradient accumulation on CUDA under ``torch.compile`` (E1's custom-op kernels, the official
Mamba2 traced into the graph) gives the losses and gradient norms of the whole batch.

Run with ``pytest -m gpu tests/gpu/test_train_gpu.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("model, layer", [("e1", {}), ("mamba2", {"headdim": 32})])
def test_grad_accum_compiled_on_cuda_equals_the_whole_batch(tmp_path, model, layer):
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.trainer import run_training

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes((b"the quick brown fox jumps over the lazy dog. " * 400)[:16000])
    records = {}
    for n in (1, 4):
        run = tmp_path / f"accum{n}"
        cfg = TrainConfig.from_dict({"model": {"model": model, "dim": 64, "depth": 2, "layer": layer},
                                     "data": str(corpus), "batch_size": 8, "seq_len": 64, "steps": 5,
                                     "precision": "fp32", "lr": 3e-4, "grad_clip": 0.5, "grad_accum": n,
                                     "compile": True, "eval_bytes": 4096, "device": "cuda", "out": str(run)})
        run_training(cfg, progress=False)
        records[n] = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in records[4]] == pytest.approx([r[key] for r in records[1]], rel=1e-4), key
