"""The trainer's step beside bench_models.py's, same model, batch and optimizer step, one process:
what `rnnlab train` itself costs a model, and why.

In the race (results/race-400m-h200) Mamba2 d22 ran 82.4K tok/s, a median step of ~199 ms with
steps from 132 to 498 ms, while `bench_models.py` times the same model, batch and optimizer step
at ~139.5 ms (results/sf-adamw-fused-h200); E16's steps were ~4-5% slower than its benchmark. This
script measures, in one process on one GPU, each model's step in `bench_models.bench` and in the
trainer (the race's settings, on the bundled sample corpus, without evaluations during training),
then, for Mamba2, the trainer with one thing changed at a time: every parameter in one
weight-decay group (the tables' `decay_marked`), TensorBoard off, Python's cyclic garbage collector
off, the CUDA allocator's expandable segments (fewer cudaMalloc / cudaFree, which synchronise,
when the cache fragments), no torch.compile (Mamba2's steps in the race, ~199 ms, were near its
eager benchmark, 205.8 ms in results/fair-baselines-h200), and ``--cuda-graph`` (the forward and
backward replayed as one CUDA graph: no launching left on the host; for E16 and Gated DeltaNet
too; its first call, results/mamba2-trainer-steps-h200, found the trainer not at fault and the step
partly host-bound). Gated DeltaNet (eager, its fastest mode; staged with fla's TileLang stack) is
here because its race steps (median 161.6 ms, p10-p90 147-179) were slower and less steady than
its benchmark's (146.9 ms; results/gdn-graph-h200).
Each trainer row gives the median and spread of its steps after the first 10, its last step
profiled (the GPU's busy time against that step's wall time: host-bound or not), how many graphs
torch.compile made (more than bench_models' would mean recompiles) and the allocator's retries and
device allocations (CUDA: from `torch.cuda.memory_stats`). Each row
also runs its final evaluation (4K bytes) and writes its final checkpoint (~2.4 GB at 400M) to a
temporary folder.

    python3 benchmarks/bench_trainer.py OUT.json [--models mamba2 e16 gdn] [--steps 60]
    python3 benchmarks/bench_trainer.py OUT.json --smoke   # CPU: tiny models, trainer rows only
"""

import argparse
import contextlib
import gc
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402

from rnnlab.bench.collect import spread  # noqa: E402
from rnnlab.data.corpus import default_train_path, default_val_path  # noqa: E402
from rnnlab.train import metrics  # noqa: E402
from rnnlab.train.config import TrainConfig  # noqa: E402
from rnnlab.train.trainer import Trainer  # noqa: E402

MODELS = {"mamba2": bm.MAMBA2, "e16": next(c for n, c, _ in bm.MODELS if n.startswith("E16 s4")),
          "gdn": next(c for n, c, _ in bm.MODELS if n.startswith("GDN"))}
SMOKE = {"mamba2": dict(model="mamba2", dim=64, depth=2, layer={"d_state": 16}),
         "e16": dict(model="e16", dim=32, depth=2, layer={"state_expansion": 2}),
         "gdn": dict(model="gdn", dim=32, depth=2, layer={"heads": 2, "head_dim": 16})}
EAGER = {"gdn"}  # its fastest mode (fla's layer is fused kernels already; results/e88-gdn-speed-h200)


CHANGES = ["none", "one weight-decay group", "no TensorBoard", "no gc", "expandable segments", "not compiled",
           "CUDA graph"]
GPU_ONLY = {"CUDA graph"}  # not in --smoke's CPU rows
MIN_STEPS = 13  # 10 left out, at least 2 timed, the last profiled (on the GPU)


class NoTensorBoard:
    """Stands in for rnnlab's TensorBoard tracker: refuses to start, so the run goes without it."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("off for this row")


def set_allocator(settings: str) -> None:
    """The CUDA allocator's settings, through the call torch 2.11 wants (its older name warns)."""
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setter(settings)


@contextlib.contextmanager
def variant(change: str):
    """The trainer with ``change`` (see CHANGES) while inside; undone after."""
    kept_tb, gc_was_on = metrics.TensorBoard, gc.isenabled()
    if change == "no TensorBoard":
        metrics.TensorBoard = NoTensorBoard
    if change == "no gc":
        gc.collect()
        gc.disable()
    if change == "expandable segments":
        torch.cuda.empty_cache()
        set_allocator("expandable_segments:True")
    try:
        yield
    finally:
        metrics.TensorBoard = kept_tb
        if gc_was_on:
            gc.enable()
        if change == "expandable segments":
            torch.cuda.empty_cache()
            set_allocator("expandable_segments:False")


def trainer_row(kind: str, cfgd: dict, change: str, steps: int, smoke: bool) -> dict:
    """``steps`` steps of ``rnnlab train`` (the race's settings) with ``change``: the times
    (``StepResult.seconds``) of the steps after the 10th but the last, and on the GPU the last
    step's GPU-busy time under ``torch.profiler``; which trackers ran and whether the garbage
    collector was on while training."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig.from_dict({
            "model": cfgd, "data": str(default_train_path()), "val_data": str(default_val_path()),
            "batch_size": 4 if smoke else 32, "seq_len": 32 if smoke else 512, "steps": steps,
            "optimizer": "schedulefree-adamw", "lr": 3e-4, "weight_decay": 0.1, "warmup_steps": 0,
            "precision": "fp32" if smoke else "bf16", "seed": 42,
            "compile": not smoke and kind not in EAGER and change != "not compiled",
            "eval_every": 0, "eval_bytes": "4K", "checkpoint_every": 0, "out": out, "cuda_graph": change == "CUDA graph",
            "decay_marked": change == "one weight-decay group", "device": "cpu" if smoke else "cuda"})
        torch._dynamo.reset()  # fresh caches and recompile budget, counters from zero
        torch._dynamo.utils.counters.clear()
        if not smoke:
            torch.cuda.empty_cache()
            torch.cuda.reset_accumulated_memory_stats()
        with variant(change):
            trainer = Trainer(cfg, progress=False)
            trackers = [type(t).__name__ for t in trainer.logger.trackers]
            times, busy, gc_on = [], [], []
            real_step = trainer.train_step

            def timed(batch):
                gc_on.append(gc.isenabled())
                if trainer.state.step == steps - 1 and not smoke:  # the last step, profiled
                    from torch.profiler import ProfilerActivity, profile
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        result = real_step(batch)
                    busy.extend([sum(ms for _, ms, _ in bm.cuda_kernels(prof)), result.seconds * 1e3])
                    return result
                result = real_step(batch)
                times.append(result.seconds)
                return result

            trainer.train_step = timed
            trainer.train()
            # train_step -> timed -> trainer is a cycle: collect it, so that the model and any CUDA
            # graph's memory are freed before the next row
            del trainer, timed, real_step
            gc.collect()
    steady = [t * 1e3 for t in times[10:]]
    s = spread(steady, min_steps=2)  # MIN_STEPS leaves at least 2
    row = dict(model=kind, where="rnnlab train", change=change, steps=len(steady), trackers=trackers,
               gc_on_while_training=all(gc_on), median_ms=s["median"], p10_ms=s["p10"], p90_ms=s["p90"],
               min_ms=round(min(steady), 2), max_ms=round(max(steady), 2), step_ms=[round(t, 2) for t in steady])
    if busy:
        row.update(profiled_gpu_busy_ms=round(busy[0], 2), profiled_step_ms=round(busy[1], 2))
    row.update(bm.graph_stats())
    if not smoke:
        stats = torch.cuda.memory_stats()
        row.update(alloc_retries=stats["num_alloc_retries"], device_allocs=stats["num_device_alloc"],
                   device_frees=stats["num_device_free"])
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=60, help=f"per trainer row (at least {MIN_STEPS})")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, no compile, no bench rows")
    args = p.parse_args()
    if args.steps < MIN_STEPS:
        p.error(f"--steps must be at least {MIN_STEPS} (10 left out, 2 timed, 1 profiled)")
    if not args.smoke:  # the profiled steps then see the kernels a replayed CUDA graph runs
        from torch.profiler._utils import _init_for_cuda_graphs

        _init_for_cuda_graphs()
    rows = []
    for kind in args.models:
        cfgd = SMOKE[kind] if args.smoke else MODELS[kind]
        if not args.smoke:
            r = bm.bench(f"{kind} [bench_models]", cfgd, 32, 512, 8, 3, bm.OFF if kind in EAGER else bm.DEFAULT)
            # the synced steps: the trainer synchronises at each step too
            rows.append(dict(model=kind, where="bench_models", change="-", median_ms=r["synced_step_ms"],
                             graph_breaks=r.get("graph_breaks"), graphs=r.get("graphs")))
            print(json.dumps(rows[-1]), flush=True)
            bm.write_json(args.out, rows)
        for change in CHANGES if kind == "mamba2" else [CHANGES[0], "CUDA graph"]:
            if args.smoke and change in GPU_ONLY:
                continue
            rows.append(trainer_row(kind, cfgd, change, args.steps, args.smoke))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "step_ms"}), flush=True)
            bm.write_json(args.out, rows)
    for r in rows:
        extra = (f"  p10 {r['p10_ms']:7.2f}  p90 {r['p90_ms']:7.2f}  max {r['max_ms']:7.2f}" if "p10_ms" in r else "")
        busy = (f"  profiled: GPU busy {r['profiled_gpu_busy_ms']:.1f} of {r['profiled_step_ms']:.1f} ms"
                if "profiled_gpu_busy_ms" in r else "")
        print(f"{r['model']:7s} {r['where']:13s} {r['change']:24s} median {r['median_ms']:8.2f} ms{extra}{busy}"
              f"  graphs {r.get('graphs')} (breaks {r.get('graph_breaks')})")


if __name__ == "__main__":
    main()
