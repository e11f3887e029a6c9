"""GPU: gradient accumulation on CUDA under ``torch.compile`` (E1's custom-op kernels, the official
Mamba2 traced into the graph) gives the losses and gradient norms of the whole batch; the CUDA
graph step trains like the uncaptured one; rnnlab's compile (``rnnlab.train.inductor``) generates
persistent row reductions up to its limit.

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("start", [0, 718])  # k = 723 with beta2 = 0.999: x / bc2 != x * (1 / bc2) in bf16
def test_fused_schedulefree_step_equals_schedulefrees_on_cuda(dtype, start):
    """The fused Schedule-Free AdamW step (one Triton launch per group, rnnlab.train.sf_adamw)
    leaves y, z and the second moment as schedulefree's foreach step does, over a warm-up and
    after it (``start``: the step count both begin at), two param groups (one without weight
    decay), an empty parameter and sizes across the kernel's blocks: bit for bit in bf16 (the
    reference study's pure-bf16 numerics, rounded after each of the ten operations), to fp32
    rounding in fp32."""
    import schedulefree

    from rnnlab.train import sf_adamw

    torch.manual_seed(0)
    shapes = [(1,), (0,), (37,), (sf_adamw.BLOCK + 5,), (257, 129), (1024, 1024)]
    init = [torch.randn(s, device="cuda").to(dtype) for s in shapes]
    opts = []
    for cls in (schedulefree.AdamWScheduleFree, sf_adamw.AdamWScheduleFree):
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        opt = cls([{"params": ps[:4]}, {"params": ps[4:], "weight_decay": 0.0}], lr=3e-3, weight_decay=0.1,
                  warmup_steps=4)
        opt.train()
        for group in opt.param_groups:
            group["k"] = start
        opts.append((opt, ps))
    (ref, pr), (ours, po) = opts
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(12):
        for a, b in zip(pr, po):
            grad = torch.randn(a.shape, device="cuda", generator=g).to(dtype) * 1e-2
            a.grad, b.grad = grad.clone(), grad.clone()
        assert ours._fused_applies()
        ref.step()
        ours.step()
    tol = dict(rtol=0, atol=0) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=1e-7)
    for a, b in zip(pr, po):
        pairs = {"y": (b, a), "z": (ours.state[b]["z"], ref.state[a]["z"]),
                 "exp_avg_sq": (ours.state[b]["exp_avg_sq"], ref.state[a]["exp_avg_sq"])}
        print(f"{dtype} {tuple(a.shape)} from k={start}: elements that differ",
              {k: int((x != y).sum()) for k, (x, y) in pairs.items()})
        for name, (x, y) in pairs.items():
            torch.testing.assert_close(x, y, **tol, msg=lambda m, name=name: f"{name}: {m}")


def _bench_models():
    """``benchmarks/bench_models.py`` as a module (a script, not in the package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_models", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_models.py")
    bm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bm)
    return bm


@pytest.mark.parametrize("cfgd", [dict(model="e1", dim=64, depth=2), dict(model="mamba2", dim=64, depth=2,
                                  layer={"headdim": 32}), dict(model="mingru", dim=64, depth=2)])
def test_a_step_replayed_as_a_cuda_graph_trains_like_the_step(cfgd):
    """bench_models.py --graph: the forward and backward captured once and replayed, the optimizer
    outside the graph, give every step's loss as the uncaptured step does (same weights, same
    batches, compiled); and the host time of a step behind a busy GPU is far below the spin's, so
    no step synchronises inside (the measure would be meaningless)."""
    bm = _bench_models()
    plain, graphed = (bm.bench("tiny", cfgd, 4, 64, steps=6, warmup=3, mode=bm.DEFAULT, graphed=g) for g in (False, True))
    assert graphed["mode"] == "default + graph"
    replayed = graphed["losses"][3:]  # after the 3 warm-up steps (uncaptured in both rows)
    assert replayed == pytest.approx(plain["losses"][3:], rel=5e-3)
    assert replayed[4] < replayed[0]  # the replays train: step 7 sees step 3's batch again (4 batches)
    for row in (plain, graphed):
        assert not row["host_blocked"] and row["host_ms"] < row["spin_ms"] / 4, row


def test_a_graphed_rows_peak_memory_counts_its_activations():
    """bench_models.py --graph: a graphed row's peak allocated memory is the step's, activations
    included, about the uncaptured row's: the capture allocates them and its replays allocate
    nothing, so a peak counted from after the capture (as before) read as little as the weights,
    gradients and optimizer state (3.2 against 12.8 GiB for Mamba2 in results/scoreboard-h200-1204)."""
    bm = _bench_models()
    cfgd = dict(model="mingru", dim=512, depth=4)  # activations (~0.4 GiB at 32 x 512) far above the weights'
    plain, graphed = (bm.bench("tiny", cfgd, 32, 512, steps=2, warmup=1, mode=bm.OFF, graphed=g) for g in (False, True))
    assert plain["peak_mem_gib"] >= 0.1, plain
    assert graphed["peak_mem_gib"] >= 0.75 * plain["peak_mem_gib"], (plain["peak_mem_gib"], graphed["peak_mem_gib"])


@pytest.mark.parametrize("precision, rel", [("fp32", 1e-4), ("bf16", 2e-2)])
@pytest.mark.parametrize("model, layer, compiled", [
    ("e1", {}, True), ("e1", {"heads": 2}, True), ("mamba2", {"headdim": 32}, True), ("mingru", {}, True),
    ("e88", {"heads": 4, "n_state": 16}, True), ("gdn", {"head_dim": 32, "heads": 2}, False)])
def test_cuda_graph_trains_like_the_uncaptured_step(tmp_path, model, layer, compiled, precision, rel):
    """``--cuda-graph`` (the forward and backward captured at the first step and replayed): the
    losses and gradient norms of every step, clipping and an evaluation between steps included,
    are those of the uncaptured step (compiled, or eager as the race runs Gated DeltaNet; in fp32
    to rounding, in pure bf16, the race's precision and E1's persistent kernel, to bf16's; E1's
    spectral-norm vector moves once per step either way), and the run's held-out score is the
    same. E1 with heads captures its gate's GEMMs on a second stream beside the scan."""
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.trainer import Trainer

    if model == "gdn":
        pytest.importorskip("fla")
        from rnnlab.ops.delta import fla_backward_refusal

        if fla_backward_refusal():
            pytest.skip(f"fla refuses its backward here: {fla_backward_refusal()}")

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes((b"the quick brown fox jumps over the lazy dog. " * 400)[:16000])
    records, summaries = {}, {}
    for graphed in (False, True):
        run = tmp_path / f"graph{graphed}"
        cfg = TrainConfig.from_dict({"model": {"model": model, "dim": 64, "depth": 2, "layer": layer},
                                     "data": str(corpus), "batch_size": 8, "seq_len": 64, "steps": 6,
                                     "precision": precision, "lr": 3e-3, "grad_clip": 0.5, "eval_every": 3,
                                     "compile": compiled, "cuda_graph": graphed, "eval_bytes": 4096, "device": "cuda",
                                     "out": str(run)})
        trainer = Trainer(cfg, progress=False)
        summaries[graphed] = trainer.train()
        assert (trainer.graphed is not None) == graphed  # the replayed graph trained this run
        records[graphed] = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in records[True]] == pytest.approx([r[key] for r in records[False]], rel=rel), key
    assert records[True][-1]["loss"] < records[True][0]["loss"]
    assert summaries[True]["val_bpb"] == pytest.approx(summaries[False]["val_bpb"], rel=rel)


# In a fresh process, so that the plain torch.compile below is surely each thread's first compile.
ROWS_SCRIPT = r"""
import torch, torch._dynamo, torch.nn.functional as F
from torch._inductor.utils import run_and_get_code
from rnnlab.train.inductor import INDUCTOR_ROWS, PERSISTENT_ROWS, compile_model

d = 3520
g = torch.Generator(device="cuda").manual_seed(0)
x, r = (torch.randn(256, d, device="cuda", generator=g, requires_grad=True) for _ in range(2))
w, b = (torch.randn(d, device="cuda", generator=g, requires_grad=True) for _ in range(2))

def f(x, r, w, b):
    return F.layer_norm(x + r, (d,), w, b)

def run(fn):
    out = fn(x, r, w, b)
    return out, torch.autograd.grad(out.square().sum(), (x, r, w, b))

ref = run(f)
run(torch.compile(f))  # Inductor's own choices object in this thread and in autograd's, first
for limit, persistent in ((INDUCTOR_ROWS, False), (PERSISTENT_ROWS, True)):
    torch._dynamo.reset()
    (out, grads), codes = run_and_get_code(run, compile_model(f, rows=limit))
    kernels = [k for code in codes for k in code.split("async_compile.triton(")[1:] if f"r0_numel = {d}" in k]
    kinds = ["persistent" if "@triton_heuristics.persistent_reduction" in k else "looped" for k in kernels]
    print(limit, len(codes), kinds)
    assert len(codes) == 2 and len(kernels) >= 2, (len(codes), kinds)  # the forward's and the backward's
    assert set(kinds) == {"persistent" if persistent else "looped"}, (limit, kinds)
    torch.testing.assert_close(out, ref[0], rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref[1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
"""


def test_compiled_row_reductions_persistent_up_to_the_limit(tmp_path):
    """rnnlab.train.inductor on a GPU: a residual add + LayerNorm over rows of 3520 channels
    (minGRU 400M's width) compiles to looped row reductions with Inductor's own limit (1024) and
    to persistent ones with the package's (4096), forward and backward (the backward compiles in
    autograd's thread), in that order in one process after a plain torch.compile (which leaves
    Inductor's own choices in both threads: compile_model replaces them; the limit is the
    compile's, and the compile cache must not hand one limit's kernels to the other); both give
    eager's values (fp32; tolerances for reordered sums over 3520 and 256 rows)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path))  # every compile generates its code
    done = subprocess.run([sys.executable, "-c", ROWS_SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
