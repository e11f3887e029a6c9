"""One line per profiled kernel launch from Nsight Compute's raw metrics (``ncu --page raw --csv``,
as ``benchmarks/ncu_kernels.sh`` writes them): time, grid, warps active an SM, how often a
scheduler had a warp to issue, memory throughput, and the largest stall reasons (shares of the
warp-state samples). Given ncu's per-instruction view instead (``--page source --print-source
sass --csv``), where each launch's warps stalled: its hottest SASS instructions and, with
``--ranges``, the share of samples in stretches of instructions (a loop, a wait). No GPU needed:
read a profile brought back from the device.

    python benchmarks/ncu_summary.py OUT/ncu_scans_raw.csv [--stalls 3]
    python benchmarks/ncu_summary.py OUT/ncu_e1-dense_source.csv [--launch 2] [--top 12] [--ranges 425:452,780:806]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

STALL = "smsp__pcsamp_warps_issue_stalled_"
COLUMNS = {  # what a line shows: (header, metric, format)
    "us": ("gpu__time_duration.sum", "{:.1f}"),
    "grid": ("launch__grid_size", "{:.0f}"),
    "block": ("launch__block_size", "{:.0f}"),
    "regs": ("launch__registers_per_thread", "{:.0f}"),
    "warps/SM": ("sm__warps_active.avg.per_cycle_active", "{:.1f}"),
    "eligible": ("smsp__warps_eligible.avg.per_cycle_active", "{:.2f}"),
    "issuing %": ("smsp__issue_active.avg.pct_of_peak_sustained_active", "{:.0f}"),
    "memory %": ("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed", "{:.0f}"),
}


def number(text: str) -> float:
    return float(text.replace(",", "")) if text.strip() not in ("", "n/a") else 0.0


TIME_UNITS = {"ns": 1e-3, "usecond": 1.0, "us": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}


def read(rows: list[list[str]]) -> tuple[list[str], list[str], list[list[str]]]:
    """``(header, units, rows)`` of ncu's raw CSV, given its rows (its second line holds each
    metric's unit: ncu scales them, e.g. a kernel's time in us or ms)."""
    start = next((i for i, row in enumerate(rows) if "Kernel Name" in row), None)  # past ncu's ==WARNING== lines
    if start is None or len(rows) < start + 3:
        raise ValueError("not ncu's raw CSV (ncu --page raw --csv): no 'Kernel Name' column")
    header, units, launches = rows[start], rows[start + 1], rows[start + 2:]
    if any(len(row) != len(header) for row in [units, *launches]):
        raise ValueError(f"a row whose fields differ in number from the header's {len(header)}: not ncu's raw CSV")
    return header, units, launches


def summarize(header: list[str], units: list[str], rows: list[list[str]], stalls: int = 3) -> list[str]:
    """A header line, then one line per launch in profiling order (times in microseconds)."""
    col = {h: i for i, h in enumerate(header)}
    time_col = col.get(COLUMNS["us"][0])
    to_us = TIME_UNITS.get(units[time_col].strip(), 1.0) if time_col is not None and time_col < len(units) else 1.0
    reasons = [h for h in header if h.startswith(STALL) and not h.endswith("_not_issued")]
    shown = {k: v for k, v in COLUMNS.items() if v[0] in col}
    lines = ["  ".join(["#", "kernel", *shown, "top stalls (share of samples)"])]
    for n, row in enumerate(rows):
        cells = [fmt.format(number(row[col[metric]]) * (to_us if col[metric] == time_col else 1.0))
                 for metric, fmt in shown.values()]
        samples = {h[len(STALL):]: number(row[col[h]]) for h in reasons}
        total = sum(samples.values()) or 1.0
        top = sorted(samples.items(), key=lambda kv: -kv[1])[:stalls]
        lines.append("  ".join([str(n), row[col["Kernel Name"]], *cells,
                                ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top)]))
    return lines


SAMPLES = "Warp Stall Sampling (All Samples)"
SOURCE_STALL = "stall_"  # the source view's per-instruction stall columns ("... (Not Issued)" left out)


def is_source_view(rows: list[list[str]]) -> bool:
    """Whether CSV rows are ncu's source view (``--page source``): "Kernel Name" lines open its
    launches; the raw view has that name in its header instead."""
    return any(row[:1] == ["Kernel Name"] for row in rows)


def read_source(rows: list[list[str]]) -> list[tuple[str, list[dict[str, str]]]]:
    """``(kernel name, instruction rows)`` per launch of ncu's source CSV, given its rows, in
    profiling order (ncu prints a CUDA C++ launch's view twice, one after the other: kept once)."""
    launches: list[tuple[str, list[dict[str, str]]]] = []
    header: list[str] = []
    for row in rows:
        if row[:1] == ["Kernel Name"] and len(row) > 1:
            launches.append((row[1], []))
        elif row[:1] == ["Address"]:
            header = row
        elif row and launches and header:  # (ncu's own ==WARNING== lines come before any launch)
            if len(row) != len(header):
                raise ValueError(f"a row of {len(row)} fields under a header of {len(header)}: not ncu's source CSV")
            launches[-1][1].append(dict(zip(header, row)))
    if not launches or SAMPLES not in header or "Source" not in header:
        raise ValueError(f"not ncu's source CSV (ncu --page source --csv): no '{SAMPLES}' column")
    return [x for i, x in enumerate(launches) if i == 0 or x != launches[i - 1]]


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """``"425:452,780:806"`` -> [(425, 452), (780, 806)]: instruction indices, end excluded."""
    try:
        ranges = [tuple(int(x) for x in part.split(":")) for part in text.split(",")]
    except ValueError:
        ranges = []
    if not ranges or any(len(r) != 2 or not 0 <= r[0] < r[1] for r in ranges):
        raise ValueError(f"--ranges takes START:END instruction indices separated by commas, not {text!r}")
    return ranges


def hotspots(name: str, rows: list[dict[str, str]], top: int = 12, ranges=(), stalls: int = 3) -> list[str]:
    """One launch's view: its hottest instructions by samples (index, share, times executed, SASS,
    the instruction's own largest stall reasons), then each range's share of the samples (a range
    past the launch's last instruction is refused)."""
    if any(b > len(rows) for _, b in ranges):
        raise ValueError(f"--ranges: {name} has {len(rows)} instructions; a range ends past them")
    samples = [number(r[SAMPLES]) for r in rows]
    total = sum(samples) or 1.0
    reasons = [k for k in rows[0] if k.startswith(SOURCE_STALL) and "Not Issued" not in k] if rows else []
    lines = [f"{name}: {total:.0f} samples, {len(rows)} instructions"]
    for i in sorted(range(len(rows)), key=lambda i: -samples[i])[:top]:
        own = sorted(((number(rows[i][k]), k[len(SOURCE_STALL):]) for k in reasons), reverse=True)[:stalls]
        why = ", ".join(f"{k} {100 * v / (samples[i] or 1.0):.0f}%" for v, k in own if v)
        lines.append(f"{i:6d}  {100 * samples[i] / total:5.1f}%  {rows[i].get('Instructions Executed', ''):>10}  "
                     f"{rows[i]['Source'].strip()}  ({why})")
    for a, b in ranges:
        lines.append(f"instructions {a}:{b}: {100 * sum(samples[a:b]) / total:.1f}% of samples")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", type=Path, help="ncu's raw CSV (a line a launch) or its source CSV (hot instructions)")
    p.add_argument("--stalls", type=int, default=3, help="how many stall reasons a line lists")
    p.add_argument("--launch", type=int, default=None, help="source CSV: only this launch (0 = the first profiled)")
    p.add_argument("--top", type=int, default=None, help="source CSV: how many instructions a launch lists (12)")
    p.add_argument("--ranges", default=None, help="source CSV: START:END,... instruction stretches to total")
    args = p.parse_args(argv)
    try:
        with args.csv.open(newline="") as f:
            rows = list(csv.reader(f))
        source_view = is_source_view(rows)
        if not source_view and (args.launch, args.top, args.ranges) != (None, None, None):
            raise ValueError("--launch, --top and --ranges read ncu's source CSV (--page source), not its raw CSV")
        if (args.top is not None and args.top < 0) or args.stalls < 0:
            raise ValueError("--top and --stalls take counts, 0 or more")
        if source_view:
            ranges = parse_ranges(args.ranges) if args.ranges else []
            launches = read_source(rows)
            if args.launch is not None and not 0 <= args.launch < len(launches):
                raise ValueError(f"--launch {args.launch}: the file holds launches 0 to {len(launches) - 1}")
            chosen = range(len(launches)) if args.launch is None else [args.launch]
            lines = [line for k in chosen for line in
                     [f"launch {k}", *hotspots(*launches[k], 12 if args.top is None else args.top, ranges,
                                               args.stalls), ""]]
        else:
            lines = summarize(*read(rows), args.stalls)
    except (OSError, ValueError) as e:
        print(f"ncu_summary.py: {args.csv}: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(lines).rstrip("\n"))


if __name__ == "__main__":
    main()
