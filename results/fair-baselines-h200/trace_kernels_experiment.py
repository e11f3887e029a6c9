"""Experiment (issue 14, "trace an opaque call when tracing is correct and faster"): minGRU,
minLSTM and E16 at 400M, B=32, torch.compile default mode, with their Triton scans as opaque
calls (rnnlab's choice, graph breaks around each scan) vs traced by Dynamo (the
autograd Functions and their Triton kernels inside the graph). Same weights, same batches.

    CUDA_VISIBLE_DEVICES=1 python3 results/fair-baselines-h200/trace_kernels_experiment.py OUT.json
"""

import json
import sys

sys.path.insert(0, "benchmarks")
import bench_models as bm  # noqa: E402

from rnnlab.ops.diag import triton as diag_triton  # noqa: E402
from rnnlab.ops.scan import triton as scan_triton  # noqa: E402

MODELS = [m for m in bm.MODELS if m[0].startswith(("minGRU", "minLSTM", "E16"))]


def set_traced(on: bool) -> None:
    # rnnlab.ops.registry traces a kernel entry point marked `traced` instead of calling it opaquely
    for fn in (scan_triton.mingru_scan, scan_triton.minlstm_scan, diag_triton.diag_elman_scan):
        fn.traced = on


rows = []
for name, cfgd, _ in MODELS:
    for traced in (False, True):
        set_traced(traced)
        try:
            r = bm.bench(name + (" traced" if traced else " opaque"), cfgd, 32, 512, 8, 3, "default")
        except Exception as e:  # noqa: BLE001
            r = dict(name=name, traced=traced, error=f"{type(e).__name__}: {e}")
        r["traced"] = traced
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
        json.dump(rows, open(sys.argv[1], "w"), indent=1)
for a, b in zip(rows[::2], rows[1::2]):
    if "error" in a or "error" in b:
        continue
    d = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
    print(f"{a['name']:34s} {a['tok_per_s']:9,d} -> traced {b['tok_per_s']:9,d} ({b['tok_per_s'] / a['tok_per_s']:.3f}x)"
          f"  breaks {a.get('graph_breaks')} -> {b.get('graph_breaks')}  max|dloss| {d:.4f}")
