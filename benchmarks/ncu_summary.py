"""One line per profiled kernel launch from Nsight Compute's raw metrics (``ncu --page raw --csv``,
as ``benchmarks/ncu_kernels.sh`` writes them): time, grid, warps active an SM, how often a
scheduler had a warp to issue, memory throughput, and the largest stall reasons (shares of the
warp-state samples). No GPU needed: read a profile brought back from the device.

    python benchmarks/ncu_summary.py OUT/ncu_scans_raw.csv [--stalls 3]
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


def read(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """``(header, units, rows)`` of ncu's raw CSV (its second line holds each metric's unit: ncu
    scales them, e.g. a kernel's time in us or ms)."""
    rows = list(csv.reader(path.open(newline="")))
    if len(rows) < 3 or "Kernel Name" not in rows[0]:
        raise ValueError("not ncu's raw CSV (ncu --page raw --csv): no 'Kernel Name' column")
    return rows[0], rows[1], rows[2:]


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw_csv", type=Path)
    p.add_argument("--stalls", type=int, default=3, help="how many stall reasons a line lists")
    args = p.parse_args(argv)
    try:
        header, units, rows = read(args.raw_csv)
    except (OSError, ValueError) as e:
        print(f"ncu_summary.py: {args.raw_csv}: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(summarize(header, units, rows, args.stalls)))


if __name__ == "__main__":
    main()
