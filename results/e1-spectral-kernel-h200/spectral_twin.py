"""E1 heads d31's training step with its spectral norm on rnnlab.ops.elman.spectral's kernels (the
package) beside a twin whose layers take the PyTorch reference (``naive.spectral_norm``),
compiled + CUDA graph, same weights and batches, one process: ``bench_models.bench`` twice, the
twin inside ``LazyKernel.replaced`` with a stand-in kernel module that runs the op's reference. Run on the device after
``source benchmarks/gpu_env.sh``:

    python3 results/e1-spectral-kernel-h200/spectral_twin.py --json OUT/twin.json
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_models import DEFAULT, MIN_COMPILE_WARMUP, MODELS, bench, run_meta  # noqa: E402

from rnnlab.ops import OPS  # noqa: E402
from rnnlab.ops.elman import naive  # noqa: E402

REFERENCE = types.SimpleNamespace(spectral_norm=naive.spectral_norm)  # every layer takes the PyTorch reference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="E1 heads 14x128 d31")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json")
    p.add_argument("--commit")
    p.add_argument("--reference-first", action="store_true", help="time the twin first (the order's effect)")
    args = p.parse_args()
    cfgd = next(c for name, c, _ in MODELS if name == args.only)

    def row(spectral):
        return dict(bench(args.only, cfgd, 32, 512, args.steps, MIN_COMPILE_WARMUP, DEFAULT, graphed=True),
                    spectral=spectral)

    rows = []
    for first in ([True, False] if args.reference_first else [False, True]):
        if first:
            with OPS["spectral_norm"].kernel.replaced(REFERENCE):
                rows.append(row("reference"))
        else:
            rows.append(row("kernels"))
    rows.sort(key=lambda r: r["spectral"] != "kernels")  # kernels, then reference
    for r in rows:
        print(f"{r['name']:22s} {r['spectral']:10s} step {r['step_ms']:8.2f} ms (synced {r['synced_step_ms']:.2f})  "
              f"{r['tok_per_s']:,} tok/s  {r['sm_mhz']} MHz {r['power_w']} W  first losses {r['losses'][:3]}  "
              f"last {r['losses'][-3:]}", flush=True)
    a, b = rows
    print(f"kernels / reference: {b['step_ms'] / a['step_ms']:.3f}x the tok/s; "
          f"max |dloss| {max(abs(x - y) for x, y in zip(a['losses'], b['losses'])):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=run_meta(None, args.commit, steps=args.steps), rows=rows),
                                              indent=1))


if __name__ == "__main__":
    main()
