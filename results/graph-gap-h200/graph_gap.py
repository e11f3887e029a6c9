"""Is the ~1 ms idle gap that profiles show once a graphed step (the batch's copy, then the graph's
first kernel) real, or the profiler's? Times a model's graphed training step back to back without
the profiler, in variants that drop the batch's copy and / or the optimizer step, in interleaved
rounds; if the copy -> graph transition costs ~1 ms, "copy + replay" is ~1 ms slower than
"replay". Run on the device after `source benchmarks/gpu_env.sh`:

    python3 results/graph-gap-h200/graph_gap.py --only "minGRU 3520x16" "E1 d26 dense" --json OUT/gap.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_models import DEFAULT, MODELS, build  # noqa: E402

from rnnlab.train import sf_adamw  # noqa: E402
from rnnlab.train.cuda_graph import GraphedForwardBackward  # noqa: E402
from rnnlab.train.inductor import PERSISTENT_ROWS, compile_model  # noqa: E402

VARIANTS = ("copy + replay + opt", "replay + opt", "copy + replay", "replay", "opt")


def timed(fn, steps: int) -> tuple[float, float]:
    """(median GPU ms a step between events, median host ms to queue one) over ``steps`` queued back to back."""
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    host = []
    torch.cuda.synchronize()
    ev[0].record()
    for i in range(steps):
        t0 = time.perf_counter()
        fn()
        host.append(time.perf_counter() - t0)
        ev[i + 1].record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in zip(ev, ev[1:])), statistics.median(host) * 1e3


def run(name: str, cfgd: dict, B: int, T: int, steps: int, rounds: int, warm_s: float) -> list[dict]:
    torch.manual_seed(0)
    model = build(cfgd).to("cuda", torch.bfloat16).train()
    torch._dynamo.reset()
    fwd = compile_model(model, DEFAULT, PERSISTENT_ROWS)
    opt = sf_adamw.AdamWScheduleFree(model.parameters(), lr=3e-4, weight_decay=0.1)
    opt.train()
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = torch.randint(0, 256, (B, T + 1), device="cuda", generator=g)

    def forward_backward(x):
        loss = fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        return loss

    for _ in range(3):  # compile, outside any graph
        opt.zero_grad(set_to_none=True)
        forward_backward(batch)
        opt.step()
    torch.cuda.synchronize()
    graph = GraphedForwardBackward(forward_backward, model, batch)
    fns = {"copy + replay + opt": lambda: (graph(batch), opt.step()),
           "replay + opt": lambda: (graph.graph.replay(), opt.step()),
           "copy + replay": lambda: graph(batch),
           "replay": graph.graph.replay,
           "opt": opt.step}
    end = time.perf_counter() + warm_s  # the board at its power limit
    while time.perf_counter() < end:
        fns["copy + replay + opt"]()
        torch.cuda.synchronize()
    got = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for v in VARIANTS:
            got[v].append(timed(fns[v], steps))
    rows = [dict(name=name, variant=v, step_ms=round(statistics.median(t for t, _ in got[v]), 3),
                 host_ms=round(statistics.median(h for _, h in got[v]), 3),
                 rounds_ms=[round(t, 3) for t, _ in got[v]]) for v in VARIANTS]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", default=["minGRU 3520x16", "E1 d26 dense"])
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--T", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warm-seconds", type=float, default=3.0)
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for name, cfgd, _ in MODELS:
        if name in args.only:
            rows += run(name, cfgd, args.B, args.T, args.steps, args.rounds, args.warm_seconds)
            torch._dynamo.reset()
            torch.cuda.empty_cache()
            for r in rows[-len(VARIANTS):]:
                print(f"{r['name']:20s} {r['variant']:20s} {r['step_ms']:9.3f} ms GPU   {r['host_ms']:7.3f} ms host   "
                      f"rounds {r['rounds_ms']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                                   rows=rows), indent=1))


if __name__ == "__main__":
    main()
