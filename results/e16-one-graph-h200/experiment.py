"""Experiment (issue 19, E16 toward 60% MFU): E16 s4 at 400M, B = 32, T = 512, pure bf16, the
fused Schedule-Free step, in one run: eager; compiled with its scan as an opaque call (a graph
break around each scan, what rnnlab did before the scan became the custom op
``rnnlab::diag_elman_fwd``); compiled with the custom op traced (the whole model one graph).
Same weights, same batches; each compiled row also profiled (GPU time per step vs the step).

    python3 results/e16-one-graph-h200/experiment.py OUT.json
"""

import json
import sys

sys.path.insert(0, "benchmarks")
import bench_models as bm  # noqa: E402

from rnnlab.ops.diag import triton as diag_triton  # noqa: E402

name, cfgd, _ = next(m for m in bm.MODELS if m[0].startswith("E16 s4"))
rows = []
for label, mode, traced in (("eager", bm.OFF, True), ("compiled, scan opaque", bm.DEFAULT, False),
                            ("compiled, one graph", bm.DEFAULT, True)):
    diag_triton.diag_elman_scan.traced = traced  # rnnlab.ops.registry: traced = kept in the graph
    r = bm.bench(f"{name} [{label}]", cfgd, 32, 512, 8, 3, mode, profile=mode is not bm.OFF)
    rows.append(r)
    print(json.dumps({k: v for k, v in r.items() if k not in ("losses", "profile")}), flush=True)
    if "profile" in r:
        print(f"  GPU {r['profile']['gpu_ms_per_step']:.2f} ms of a {r['step_ms']:.2f}-ms step: "
              f"{r['profile']['by_kind_ms']}", flush=True)
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
base = rows[1]
for r in rows:
    d = max(abs(x - y) for x, y in zip(r["losses"], base["losses"]))
    mfu = 6 * r["params"] * r["tok_per_s"] / 989e12
    print(f"{r['name']:50s} {r['tok_per_s']:9,d} tok/s  MFU {mfu:6.1%}  {r['tok_per_s'] / base['tok_per_s']:.3f}x opaque"
          f"  breaks {r.get('graph_breaks')}  graphs {r.get('graphs')}  max|dloss| vs opaque {d:.4f}")
