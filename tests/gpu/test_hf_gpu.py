"""GPU: an exported bf16 model loads through the Auto classes and runs its CUDA paths (E1's
kernels, the official Mamba2 module) with the logits and greedy bytes of rnnlab's own model.

Run with ``pytest -m gpu tests/gpu/test_hf_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from rnnlab.hf import transformers_problem

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
transformers = pytest.importorskip("transformers")
if transformers_problem() is not None:  # e.g. an older transformers in the GPU image: nothing is registered
    pytest.skip(transformers_problem(), allow_module_level=True)


@pytest.mark.parametrize("model, layer", [("e1", {}), ("mamba2", {"headdim": 32})])
def test_exported_model_on_cuda(tmp_path, model, layer):
    from rnnlab.eval.sampling import generate
    from rnnlab.hf.export import export_run
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.rundir import RunDir
    from rnnlab.train.trainer import run_training

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes((b"the quick brown fox jumps over the lazy dog. " * 400)[:16000])
    run = tmp_path / "run"
    cfg = TrainConfig.from_dict({"model": {"model": model, "dim": 64, "depth": 2, "layer": layer},
                                 "data": str(corpus), "batch_size": 4, "seq_len": 64, "steps": 3,
                                 "precision": "bf16", "eval_bytes": 4096, "device": "cuda", "out": str(run)})
    run_training(cfg, progress=False)
    export_run(run, tmp_path / "hf")

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").to("cuda")
    assert hf.dtype == torch.bfloat16
    if model == "mamba2":
        assert hf.model.blocks[0].mixer.backend == "official"
    _, ref, _ = RunDir(run).load("cuda")
    ids = torch.tensor([list(b"the quick brown fox")], device="cuda")
    a, b = hf(ids).logits.float(), ref(ids).float()
    assert ((a - b).norm() / b.norm()).item() < 1e-3
    out = hf.generate(ids, max_new_tokens=32, do_sample=False)
    assert bytes(out[0, ids.shape[1]:].tolist()) == generate(ref, b"the quick brown fox", 32, temperature=0)

    # left padding on the CUDA step paths (the official Mamba2's updates its state in place on a copy):
    # the short row's state is the one its bytes alone give, its pads skipped, to bf16's rounding
    short = torch.tensor([list(b"lazy dog")], device="cuda")
    ids2 = torch.cat([ids, torch.cat([torch.zeros(1, ids.shape[1] - short.shape[1], dtype=ids.dtype,
                                                  device="cuda"), short], 1)])
    mask = (torch.arange(ids.shape[1], device="cuda") >= ids.shape[1] - short.shape[1]).long()
    batch = hf(ids2, attention_mask=torch.stack([torch.ones_like(mask), mask]), use_cache=True).cache.layers
    alone = hf(short, use_cache=True).cache.layers
    flat = lambda s: [s] if isinstance(s, torch.Tensor) else [t for x in s for t in flat(x)]  # noqa: E731
    for got, want in zip(flat(batch), flat(alone), strict=True):
        assert ((got[1].float() - want[0].float()).norm() / want[0].float().norm().clamp_min(1e-6)).item() < 2e-2
