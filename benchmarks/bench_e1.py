"""Dense E1 against the official Mamba2 in one run on one GPU: every E1 recurrence implementation
per layer (``bench_kernels.py --sections dense`` at B = 16 and 32) and whole-model 400M training
tok/s and peak memory of E1 d26 against Mamba2 d22 at 16x512 and 32x512 (``bench_models.py``, each
in its candidate fastest modes, the standalone Mamba2 too), same optimizer and precision.

    python benchmarks/bench_e1.py --out results/e1-dense [--compile off default reduce-overhead]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kernels  # noqa: E402
import bench_models  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for kernels_b16.json, kernels_b32.json, models.json")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per model")
    ap.add_argument("--compile", nargs="+", default=None, help="passed to bench_models.py --compile")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for B in (16, 32):  # the naive loop (slow) only once
        bench_kernels.main(["--sections", "dense", "--B", str(B), "--json", str(out / f"kernels_b{B}.json")]
                           + (["--quick"] if B == 16 else []))
    bench_models.main(["--batches", "16", "32", "--steps", str(a.steps), "--json", str(out / "models.json"),
                       "--only", "E1 d26 dense", "Mamba2 d22"] + (["--compile", *a.compile] if a.compile else []))


if __name__ == "__main__":
    main()
