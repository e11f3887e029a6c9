"""PNG plots for suite and sweep reports (matplotlib, Agg backend; no display needed).

    loss_vs_step.png   training loss (smoothed) vs step, every run
    loss_vs_time.png   training loss (smoothed) vs training wall-clock
    tok_per_s.png      throughput bar chart (mean ± std over seeds)
    loss_vs_depth.png  final loss vs depth per model, when the suite varies depth
    sweep_<axis>.png   loss and held-out bpb vs the first swept value (sweeps)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlab.train.rundir import RunDir


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: plotting is optional work)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Lay out, write (110 dpi) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (window 1 = raw)."""
    if window <= 1:
        return list(values)
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _colors(names: list[str]) -> dict[str, Any]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def make_plots(out: Path, records: list[dict[str, Any]], rows: list[dict[str, Any]],
               axes: list[str] | None = None) -> list[Path]:
    out = Path(out)
    files = []
    curves = {}
    for r in records:
        m = [x for x in RunDir(r["path"]).metrics() if x.get("loss") is not None]
        if m:
            curves[r["dir"]] = (r["name"], m)
    names = list(dict.fromkeys(r["name"] for r in records))
    colors = _colors(names)
    if curves:
        files.append(_loss_curves(out / "loss_vs_step.png", curves, colors, "step", "step"))
        if any(x.get("elapsed_s") is not None for _, m in curves.values() for x in m):
            files.append(_loss_curves(out / "loss_vs_time.png", curves, colors, "elapsed_s",
                                      "training wall-clock (s)"))
    if any(r["tok_per_s"] is not None for r in rows):
        files.append(_tok_bar(out / "tok_per_s.png", rows, colors))
    depth_models = _depth_varying(rows)
    if depth_models:
        files.append(_loss_vs_depth(out / "loss_vs_depth.png", rows, depth_models))
    if axes:
        files.append(_sweep(out / f"sweep_{_safe(axes[0])}.png", rows, axes))
    return files


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _loss_curves(path: Path, curves, colors, xkey: str, xlabel: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    labelled = set()
    tail = []
    for _, (name, m) in curves.items():
        pts = [(x[xkey], x["loss"]) for x in m if x.get(xkey) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ys = smooth(list(ys), max(1, min(50, len(ys) // 20)))
        ax.plot(xs, ys, color=colors[name], lw=1.2, label=None if name in labelled else name)
        labelled.add(name)
        tail.extend(ys[len(ys) // 10:])  # skip the first 10%: the initial drop swamps the rest
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training loss (nats/byte, smoothed)")
    if tail:
        lo, hi = min(tail), max(tail)
        pad = 0.05 * (hi - lo) + 1e-3
        ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"loss vs {xlabel}")
    return save(fig, path)


def _tok_bar(path: Path, rows, colors) -> Path:
    plt = pyplot()
    rows = [r for r in rows if r["tok_per_s"] is not None]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    err = [r["tok_per_s_std"] or 0 for r in rows]
    ax.bar(xs, [r["tok_per_s"] for r in rows], yerr=err if any(err) else None,
           color=[colors.get(r["name"], "C0") for r in rows], capsize=3)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("training tokens / s")
    ax.set_title("throughput")
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def _depth_varying(rows) -> list[str]:
    depths: dict[str, set] = {}
    for r in rows:
        if r["loss"] is not None and r.get("depth") is not None:
            depths.setdefault(r["model"], set()).add(r["depth"])
    return [m for m, d in depths.items() if len(d) > 1]


def _loss_vs_depth(path: Path, rows, models: list[str]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, model in enumerate(models):
        pts = sorted((r["depth"], r["loss"], r["loss_std"] or 0, r["val_bpb"]) for r in rows
                     if r["model"] == model and r["loss"] is not None)
        d, loss, sd, _ = zip(*pts)
        ax.errorbar(d, loss, yerr=sd, marker="o", capsize=3, color=f"C{i}", label=f"{model} train loss")
    ax.set_xlabel("depth (width solved for the parameter budget)")
    ax.set_ylabel("loss (nats/byte, last-100 mean)")
    ax.set_title("loss vs depth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def _numeric(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _sweep(path: Path, rows, axes: list[str]) -> Path:
    """Loss and held-out bpb vs the first axis; one line per combination of the other axes."""
    plt = pyplot()
    x_axis, rest = axes[0], axes[1:]
    lines: dict[str, list] = {}
    for r in rows:
        p = r.get("point") or {}
        key = ", ".join(f"{a}={p.get(a)}" for a in rest) or "all"
        lines.setdefault(key, []).append(r)
    xs_all = [(r.get("point") or {}).get(x_axis) for r in rows]
    numeric = all(_numeric(x) is not None for x in xs_all)
    cats = list(dict.fromkeys(str(x) for x in xs_all))
    fig, axs = plt.subplots(1, 2, figsize=(11, 4.5))
    for metric, ax, label in (("loss", axs[0], "training loss (last-100 mean)"),
                              ("val_bpb", axs[1], "held-out bits per byte")):
        for i, (key, rs) in enumerate(lines.items()):
            pts = []
            for r in rs:
                x = (r.get("point") or {}).get(x_axis)
                if r[metric] is None:
                    continue
                pts.append((float(x) if numeric else cats.index(str(x)), r[metric], r[metric + "_std"] or 0))
            if not pts:
                continue
            pts.sort()
            xs, ys, sd = zip(*pts)
            ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, color=f"C{i % 10}", label=key)
        if numeric:
            vals = [float(x) for x in xs_all]
            if min(vals) > 0 and max(vals) / min(vals) >= 10:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, rotation=30, ha="right")
        ax.set_xlabel(x_axis)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"sweep over {x_axis}")
    return save(fig, path)
