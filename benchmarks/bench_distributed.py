"""Data-parallel scaling of ``rnnlab train``: tok/s on 1 GPU vs N GPUs (DDP, FSDP2).

    python benchmarks/bench_distributed.py [--gpus 2] [--steps 40] [--compile] [--json results/distributed_h200x2.json]

Weak scaling: 1 GPU runs batch B per step, N GPUs run the global batch N*B (B per GPU), so each
GPU does the same work; efficiency = tok/s(N) / (N * tok/s(1)). Every run is a real
``rnnlab train`` (pure bf16, Schedule-Free AdamW, T=512, checkpoints and mid-run evals off);
tok/s is the median of the per-step values after ``--warmup`` steps (global tokens). Eager, as
``rnnlab train``'s default, unless ``--compile`` (every run, 1 GPU and N, ``rnnlab train --compile``;
warm-up steps enough to leave the compilation out). NCCL runs with NVLink multicast off
(``NCCL_NVLS_ENABLE=0``, set by rnnlab.train.distributed).
Prints a markdown table for docs/distributed.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = [  # the 400M seed configurations (E1 d26, official Mamba2 d22 with d_state 64)
    ("e1", dict(model="e1", dim=1760, depth=26)),
    ("mamba2", dict(model="mamba2", dim=1728, depth=22)),
    ("transformer", dict(model="transformer", dim=1024, depth=32)),
]


def run(cfg: dict, batch: int, gpus: int, mode: str | None, steps: int, seq_len: int, out: Path,
        compile: bool = False) -> dict:
    cmd = [sys.executable, "-m", "rnnlab", "train", "--model", cfg["model"], "--dim", str(cfg["dim"]),
           "--depth", str(cfg["depth"]), "--batch-size", str(batch), "--seq-len", str(seq_len),
           "--steps", str(steps), "--precision", "bf16", "--checkpoint-every", "0", "--eval-bytes", "65536",
           "--no-progress", "--out", str(out)] + (["--compile"] if compile else [])
    if gpus > 1:
        cmd += ["--gpus", str(gpus)] + (["--distributed", mode] if mode else [])
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stdout + r.stderr)[-2000:]}
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return {"params": summary["params"], "peak_mem_gib": summary["peak_mem_gib"], "loss": summary["loss"],
            "tok_per_s": recs, "steps": steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="per-GPU batch B")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--models", nargs="*", help="subset of: " + " ".join(n for n, _ in CONFIGS))
    ap.add_argument("--dim", type=int, help="override every model's width (smoke tests)")
    ap.add_argument("--depth", type=int, help="override every model's depth")
    ap.add_argument("--compile", action="store_true", help="every run with rnnlab train --compile (default: eager)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    import torch

    if torch.cuda.device_count() < a.gpus and not (a.dim and a.depth):  # 400M models on a CPU: hours a step
        ap.exit(2, f"bench_distributed.py: error: needs {a.gpus} CUDA GPUs (torch sees {torch.cuda.device_count()}); "
                   "a CPU smoke run shrinks the models: --dim 64 --depth 2\n")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in CONFIGS:
            if a.models and name not in a.models:
                continue
            cfg = dict(cfg, **{k: getattr(a, k) for k in ("dim", "depth") if getattr(a, k)})
            row = {"model": name, **cfg, "batch_per_gpu": a.batch, "seq_len": a.seq_len, "gpus": a.gpus,
                   "compile": a.compile}
            for key, gpus, mode in (("1gpu", 1, None), ("ddp", a.gpus, "ddp"), ("fsdp2", a.gpus, "fsdp2")):
                r = run(cfg, a.batch * gpus, gpus, mode, a.steps, a.seq_len, Path(tmp) / f"{name}-{key}", a.compile)
                if "error" not in r:
                    r["tok_per_s"] = statistics.median(x["tok_per_s"] for x in r["tok_per_s"][a.warmup:])
                row[key] = r
                print(name, key, r.get("tok_per_s", r.get("error")), file=sys.stderr, flush=True)
            base = row["1gpu"].get("tok_per_s")
            for key in ("ddp", "fsdp2"):
                v = row[key].get("tok_per_s")
                row[key]["efficiency"] = v / (a.gpus * base) if v and base else None
            results.append(row)
    print(f"| model | params | precision, mode | seq x batch/GPU | 1 GPU tok/s | {a.gpus} GPU DDP tok/s | eff. | "
          f"{a.gpus} GPU FSDP2 tok/s | eff. |")
    print("|---|---|---|---|---|---|---|---|---|")

    def f(r, k, spec):
        v = r.get(k)
        return format(v, spec) if isinstance(v, (int, float)) else "error"

    for row in results:
        params = row["1gpu"].get("params")
        mode = "bf16, compiled" if row["compile"] else "bf16, eager"
        print(f"| {row['model']} | {f'{params:,}' if params else '-'} | {mode} | "
              f"{row['seq_len']} x {row['batch_per_gpu']} | "
              f"{f(row['1gpu'], 'tok_per_s', ',.0f')} | {f(row['ddp'], 'tok_per_s', ',.0f')} | "
              f"{f(row['ddp'], 'efficiency', '.2f')} | {f(row['fsdp2'], 'tok_per_s', ',.0f')} | "
              f"{f(row['fsdp2'], 'efficiency', '.2f')} |")
    if a.json:
        import torch

        from rnnlab.train.runtime import git_commit_label

        gpus = torch.cuda.device_count()  # none in a CPU smoke run (--dim, --depth)
        meta = dict(device=f"{gpus} x {torch.cuda.get_device_name()}" if gpus else "cpu",
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    git_commit=git_commit_label(), torch=torch.__version__, command=" ".join(sys.argv),
                    steps=a.steps, warmup=a.warmup, compile=a.compile)
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(dict(meta=meta, rows=results), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
