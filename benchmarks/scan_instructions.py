"""What the fused minGRU / minLSTM scans issue per channel and time step, read from their sm_90 PTX
compiled here (Triton; no GPU needed): the counts behind docs/kernels.md's issue-time model of
those kernels ("fewer instructions in the gates").

    python benchmarks/scan_instructions.py [--against FILE] [--json OUT]

Each kernel is compiled as the package launches it at the 400M widths: H, the row stride, T and
the pointers divisible by 16 (Triton specialises such arguments), ``BLOCK`` channels and
``NUM_WARPS`` warps a program, no initial state. The time loop's body (between its header label
and the branch back to it) runs 4 time steps of ``BLOCK / (32 * NUM_WARPS)`` channels a thread;
its PTX instructions, and of them the special-function (MUFU) ones (``ex2``, ``lg2``, ``rcp``,
``div.full`` / ``div.approx``, ``tanh``, ``sin``, ``cos``, ``sqrt`` / ``rsqrt`` approximations), are
divided by that to give counts per channel-step. PTX is not SASS (ptxas expands some instructions,
folds others): compare versions by these counts, not against the hardware's issue rate exactly.
``--against FILE``: the same counts for another copy of ``rnnlab/ops/scan/triton.py`` (an earlier
commit's, ``git show REV:src/rnnlab/ops/scan/triton.py > FILE``), beside the package's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_kernels  # noqa: E402  (scan_module_from: --against)

SM90 = GPUTarget("cuda", 90, 32)
STEPS_PER_ITERATION = 4
MUFU = re.compile(r"^(ex2|lg2|rcp|tanh|sin|cos|sqrt\.approx|rsqrt|div\.(full|approx))\b")
MODES = {"minGRU": 1, "minLSTM": 2}
_FWD = ["x0_ptr", "x1_ptr", "x2_ptr", "RS", "h0_ptr", "h_ptr", "T", "H"]
_BWD = ["x0_ptr", "x1_ptr", "x2_ptr", "RS", "h_ptr", "h0_ptr", "g_ptr", "d0_ptr", "d1_ptr", "d2_ptr",
        "dh0_ptr", "T", "H"]


def _signature(names: list[str]) -> dict[str, str]:
    types = {n: "i32" if n in ("RS", "T", "H") else "*fp32" if n == "dh0_ptr" else "*bf16" for n in names}
    return {**types, "MODE": "constexpr", "HAS_H0": "constexpr", "BLOCK": "constexpr"}


def loop_body(ptx: str) -> list[str]:
    """The instructions of the PTX's time loop: from the label a later branch jumps back to, up
    to and with that branch (labels, comments and directives left out)."""
    lines = [line.split("//")[0].strip() for line in ptx.splitlines()]
    for end, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$\w+);", line)
        if m and f"{m.group(1)}:" in lines[:end]:
            start = lines.index(f"{m.group(1)}:")
            return [x for x in lines[start + 1:end + 1] if x and not x.startswith((".", "$", "{", "}"))]
    raise ValueError("no backward branch in the PTX: not a kernel with a time loop")


def counts(module, mode: int, backward: bool) -> dict[str, float]:
    """Instructions and MUFU instructions per channel-step of ``module``'s fused scan kernel."""
    names = _BWD if backward else _FWD
    fn = module._scan_bwd if backward else module._scan_fwd
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n != "dh0_ptr"}
    kernel = triton.compile(ASTSource(fn, _signature(names), dict(MODE=mode, HAS_H0=False, BLOCK=module.BLOCK),
                                      attrs=aligned), target=SM90, options={"num_warps": module.NUM_WARPS})
    body = loop_body(kernel.asm["ptx"])
    ops = [x.split()[1] if x.startswith("@") else x.split()[0] for x in body]
    per = STEPS_PER_ITERATION * module.BLOCK / (32 * module.NUM_WARPS)
    return {"instructions": len(ops) / per, "mufu": sum(bool(MUFU.match(op)) for op in ops) / per,
            "lg2": sum(op.startswith("lg2") for op in ops) / per}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", metavar="FILE", help="another copy of rnnlab/ops/scan/triton.py")
    p.add_argument("--json", metavar="OUT", help="also write the counts here")
    args = p.parse_args(argv)
    from rnnlab.ops.scan import triton as package

    versions = {"package": package}
    if args.against:
        versions[args.against] = bench_kernels.scan_module_from(args.against, "scan_instructions.py: --against")
    rows = []
    for version, module in versions.items():
        for name, mode in MODES.items():
            for backward in (False, True):
                c = counts(module, mode, backward)
                rows.append({"version": version, "kernel": name, "pass": "bwd" if backward else "fwd", **c})
                print(f"{version:24s} {name:8s} {rows[-1]['pass']}: {c['instructions']:6.1f} instructions, "
                      f"{c['mufu']:4.1f} MUFU ({c['lg2']:.1f} lg2) a channel-step", flush=True)
    if args.json:
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "triton": triton.__version__, "target": "sm_90", "command": " ".join(sys.argv)}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
