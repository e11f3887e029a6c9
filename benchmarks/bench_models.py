"""Whole-model training throughput (tok/s) and peak memory at the 400M seed configurations.

    python benchmarks/bench_models.py [--all] [--batches 16 32] [--compile MODE ...]
                                      [--json results/models_h100.json]

Pure bf16 weights, Schedule-Free AdamW (lr 3e-4, wd 0.1), T=512, the same random bytes for every
model, ``--warmup`` steps excluded, median step time of ``--steps`` timed steps (CUDA-synchronised
wall clock per step). Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps
("peak GiB") and ``max_memory_reserved`` ("reserved"): under ``reduce-overhead`` the CUDA graphs'
private memory pool, set up in the warm-up, is reserved but not counted as allocated, so only
the reserved figure is comparable there.
Models are built with ``rnnlab.models.LM`` / ``ModelConfig`` (the real configs, default backends:
Triton kernels for the recurrences, official mamba_ssm for Mamba2).

``--compile`` times ``torch.compile(model)``: each MODE is ``off`` (eager), ``default`` (``on``,
also a bare ``--compile``) or ``reduce-overhead`` (Inductor plus CUDA graphs), ``both`` = ``off
default``; every configuration runs once per mode, rows side by side (compiled names end in
" +compile" or " +compile(reduce-overhead)"; JSON rows have ``compile`` and ``compile_mode``).
E1's scan is a custom op that compiles into the graph; the other recurrences stay opaque calls
with graph breaks around them (``rnnlab.ops.dispatch``). Compilation happens in the warm-up steps
(at least 3 when compiling), so it is not timed; each row records ``first_step_s``, the first
step's wall time (compilation for a compiled row, Triton autotuning for both).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time

import torch

BASE = [
    ("E1 d26 (dense, seed)", dict(model="e1", dim=1760, depth=26)),
    ("Mamba2 d22 (official)", dict(model="mamba2", dim=1728, depth=22, layer={"d_state": 64})),
]
EXTRA = [
    ("E1 heads 14x128 d31", dict(model="e1", dim=1792, depth=31, layer={"heads": 14})),
    ("minGRU 3520x16 (fused gate+scan)", dict(model="mingru", dim=3520, depth=16)),
    ("minLSTM 2880x16 (fused gate+scan)", dict(model="minlstm", dim=2880, depth=16)),
    ("minGRU 3520x16 (Heinsen, seed's scan)", dict(model="mingru", dim=3520, depth=16, layer={"backend": "heinsen"})),
    ("minLSTM 2880x16 (Heinsen, seed's scan)", dict(model="minlstm", dim=2880, depth=16, layer={"backend": "heinsen"})),
    ("E16 s4 1024x10 e2", dict(model="e16", dim=1024, depth=10,
                               layer={"expansion": 2.0, "state_expansion": 4})),
]


COMPILE_MODES = {"off": [None], "on": ["default"], "default": ["default"], "both": [None, "default"],
                 "reduce-overhead": ["reduce-overhead"]}
MIN_COMPILE_WARMUP = 3  # step 1 compiles forward and backward; keep later steps out of it too


def _row_name(name: str, mode: str | None) -> str:
    return name + ("" if mode is None else " +compile" if mode == "default" else f" +compile({mode})")


def bench(name, cfgd, B, T, steps, warmup, data_seed=0, compile=None):
    """One configuration; ``compile``: None (eager) or a torch.compile mode."""
    import schedulefree

    from rnnlab.models import LM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(**cfgd)
    model = LM(cfg).to("cuda", torch.bfloat16)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    fwd = model
    if compile:
        torch._dynamo.reset()  # fresh caches (and recompile budget) for every configuration
        fwd = torch.compile(model, mode=compile)
        warmup = max(warmup, MIN_COMPILE_WARMUP)
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=3e-4, weight_decay=0.1)
    opt.train()
    g = torch.Generator(device="cuda").manual_seed(data_seed)
    batches = [torch.randint(0, 256, (B, T + 1), device="cuda", generator=g) for _ in range(4)]
    times, losses = [], []
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        x = batches[i % len(batches)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = fwd(x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i == 0:
            first = dt
        if i >= warmup:
            times.append(dt)
        losses.append(loss.item())
    peak = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    med = statistics.median(times)
    res = dict(name=_row_name(name, compile), config=cfgd, compile=compile is not None,
               compile_mode=compile, params=params,
               B=B, T=T, warmup=warmup, step_ms=round(med * 1e3, 2), tok_per_s=round(B * T / med),
               peak_mem_gib=round(peak, 2), peak_reserved_gib=round(reserved, 2), first_step_s=round(first, 2),
               loss_first=round(losses[0], 4), loss_last=round(losses[-1], 4))
    del model, fwd, opt, batches
    if compile:
        torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    return res


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--all", action="store_true")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    p.add_argument("--T", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3,
                   help=f"untimed steps (at least {MIN_COMPILE_WARMUP} with --compile on/both)")
    p.add_argument("--compile", choices=list(COMPILE_MODES), nargs="*", default=None, metavar="MODE",
                   help="off (default), default/on (bare --compile), reduce-overhead, both = off default; "
                        "several modes run each configuration once per mode")
    p.add_argument("--only", nargs="+", default=None, help="keep models whose name contains any of these")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import triton

    todo = BASE + (EXTRA if args.all else [])
    if args.only:
        todo = [t for t in todo if any(o.lower() in t[0].lower() for o in args.only)]
    chosen = ["off"] if args.compile is None else args.compile or ["on"]  # [] = a bare --compile
    modes = list(dict.fromkeys(m for c in chosen for m in COMPILE_MODES[c]))
    warmup = args.warmup if modes == [None] else max(args.warmup, MIN_COMPILE_WARMUP)  # same for all
    rows = []
    for name, cfgd in todo:
        for B in args.batches:
            for comp in modes:
                try:
                    r = bench(name, cfgd, B, args.T, args.steps, warmup, compile=comp)
                except Exception as e:  # noqa: BLE001 - report and continue with the next model
                    r = dict(name=_row_name(name, comp), config=cfgd, compile=comp is not None,
                             compile_mode=comp, B=B, T=args.T, error=f"{type(e).__name__}: {e}")
                    if comp is not None:
                        torch._dynamo.reset()
                    gc.collect()
                    torch.cuda.empty_cache()
                rows.append(r)
                print(json.dumps(r), flush=True)
    meta = dict(device=torch.cuda.get_device_name(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, triton=triton.__version__, command=" ".join(sys.argv),
                optimizer="schedulefree.AdamWScheduleFree lr 3e-4 wd 0.1", weights="bf16",
                steps=args.steps, warmup=warmup, compile=modes)
    print(f"\n{meta['device']}  {meta['date']}  torch {meta['torch']}  triton {meta['triton']}")
    w = max([26] + [len(r["name"]) for r in rows])
    print(f"{'model':{w}s} {'params':>12s} {'B':>3s} {'tok/s':>9s} {'step ms':>9s} {'peak GiB':>9s} "
          f"{'reserved':>9s} {'1st step s':>10s}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:{w}s} {'':>12s} {r['B']:3d} ERROR {r['error'][:80]}")
        else:
            print(f"{r['name']:{w}s} {r['params']:12,d} {r['B']:3d} {r['tok_per_s']:9,d} {r['step_ms']:9.1f} "
                  f"{r['peak_mem_gib']:9.2f} {r['peak_reserved_gib']:9.2f} {r['first_step_s']:10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
