"""PNG plots for suite and sweep reports (matplotlib, Agg backend; no display needed).

    loss_and_bpb.png   training loss (smoothed) vs step, beside held-out bits per byte vs training time
    bpb_vs_bytes.png   held-out bits per byte vs training bytes read (per token: runs of different
                       batch sizes side by side)
    loss_vs_time.png   training loss (smoothed) vs training time
    tok_per_s.png      steady throughput bar chart (mean ± std over seeds), each bar labelled with its value
    loss_vs_depth.png  final loss vs depth, one line per model whose runs differ in depth alone
    sweep_<axis>.png   loss and held-out bpb vs the first swept value (sweeps), a point not complete hollow

Each plot is built by a function returning its figure (tests read the figures); ``make_plots``
saves them. Training time is ``elapsed_s``: optimizer steps only, evaluations and checkpoints
not counted, so runs that evaluate more often are not penalised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rnnlab.models.config import model_text
from rnnlab.train.config import budget_clock


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


def colors_for(names: list[str]) -> dict[str, Any]:
    """One colour per row name (tab10, tab20 beyond ten names)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def integer_ticks(axis) -> None:
    """Ticks on whole numbers only (steps, depths)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def time_unit(seconds: float) -> tuple[float, str]:
    """``(divisor, name)`` of a readable unit for a time axis reaching ``seconds``."""
    return (3600, "h") if seconds >= 3 * 3600 else (60, "min") if seconds >= 600 else (1, "s")


TIME_LABEL = "training time, compilation excluded"


def run_curves(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per run folder (``collect.collect``'s records): its row ``name``, its training records
    (``metrics.jsonl``, each with ``clock_s``: its training time without the first steps of each
    process, compilation and autotuning, as the ``--minutes`` budget counts it, so runs start
    together) and its held-out
    points ``(clock_s, bpb)`` at the shipped weights (``bpb``; Schedule-Free: the average x) and,
    for Schedule-Free, at the training point y (``bpb_y``): each evaluation (``eval.jsonl``) at
    the time of its step in ``metrics.jsonl`` (eval records carry no times, so they stay the same
    in every rerun), the same points against the training bytes read by that step (``bpb_bytes``,
    ``bpb_y_bytes``: ``(tokens, bpb)``), and ``bytes``: the byte counts those points scored."""
    curves = {}
    for r in records:
        metrics = [{**x, "clock_s": budget_clock(x.get("elapsed_s"), x.get("warmup_s"))}
                   for x in r["metrics"] if x.get("loss") is not None]
        elapsed = {x["step"]: x["clock_s"] for x in metrics}
        tokens = {x["step"]: x.get("tokens") for x in metrics}
        evals = r["evals"]

        def points(key: str, at: dict) -> list[tuple[float, float]]:  # the final eval's curve_* keys: the curve's bytes
            return [(at[e["step"]], e.get(f"curve_{key}", e[key])) for e in evals
                    if e.get(key) is not None and at.get(e["step"]) is not None]

        bpb, bpb_y = points("val_bpb", elapsed), points("val_bpb_train_point", elapsed)
        scored = {e.get("curve_bytes", e.get("bytes")) for e in evals if e.get("val_bpb") is not None}
        if metrics or bpb:
            curves[r["dir"]] = {"name": r["name"], "metrics": metrics, "bpb": bpb, "bpb_y": bpb_y,
                                "bpb_bytes": points("val_bpb", tokens),
                                "bpb_y_bytes": points("val_bpb_train_point", tokens), "bytes": scored}
    return curves


def make_plots(out: Path, records: list[dict[str, Any]], rows: list[dict[str, Any]],
               axes: list[str] | None = None, curves: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """Write every plot that the runs have data for into ``out``; returns their paths. ``curves``:
    :func:`run_curves` of ``records`` when the caller has them already."""
    out = Path(out)
    curves = run_curves(records) if curves is None else curves
    colors = colors_for(list(dict.fromkeys(r["name"] for r in records)))
    figures = {}
    if any(c["metrics"] for c in curves.values()):
        figures["loss_and_bpb"] = loss_and_bpb_figure(curves, colors)
        if any(x["clock_s"] is not None for c in curves.values() for x in c["metrics"]):
            figures["loss_vs_time"] = loss_vs_time_figure(curves, colors)
    if any(c["bpb_bytes"] for c in curves.values()):
        figures["bpb_vs_bytes"] = bpb_vs_bytes_figure(curves, colors)
    if any(r["tok_per_s"] is not None for r in rows):
        figures["tok_per_s"] = tok_bar_figure(rows, colors)
    depth_series = _depth_series(rows)
    if depth_series:
        figures["loss_vs_depth"] = loss_vs_depth_figure(depth_series)
    if axes:
        figures[f"sweep_{_safe(axes[0])}"] = sweep_figure(rows, axes)
    return [save(fig, out / f"{name}.png") for name, fig in figures.items()]


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _draw_losses(ax, curves, colors, xkey: str, scale: float = 1.0) -> bool:
    """Each run's smoothed training loss against ``xkey`` (divided by ``scale``); the y range
    leaves out the first 10% of every curve (the initial drop swamps the rest) and every value
    above 1.1 x the highest first loss (a run that diverged, at 1e12 before its loss turned NaN,
    would flatten every other curve): returns whether some were."""
    labelled, tail, first = set(), [], []
    for c in curves.values():
        name = c["name"]
        pts = [(x[xkey] / scale, x["loss"]) for x in c["metrics"] if x.get(xkey) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ys = smooth(list(ys), max(1, min(50, len(ys) // 20)))
        ax.plot(xs, ys, color=colors[name], lw=1.2, label=None if name in labelled else name)
        labelled.add(name)
        tail.extend(ys[len(ys) // 10:])
        first.append(ys[0])
    ax.set_ylabel("training loss (nats/byte, smoothed)")
    top = 1.1 * max(first, default=0.0)
    shown = [y for y in tail if y <= top]
    if shown:
        lo, hi = min(shown), max(shown)
        pad = 0.05 * (hi - lo) + 1e-3
        ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return len(shown) < len(tail)


LOSS_CLIPPED = "\n(losses above 1.1 x the highest first loss not shown)"


def loss_and_bpb_figure(curves, colors):
    """Left: training loss vs step. Right: held-out bits per byte vs training time, one point per
    evaluation (a run evaluated only at its end is one point: its result against its cost); for
    Schedule-Free runs solid with filled points at the training point y (where the training loss
    is measured; in pure bf16 the average x can score far worse, docs/findings.md) and dashed with
    hollow points at x."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    clipped = _draw_losses(left, curves, colors, "step")
    left.set_xlabel("step")
    integer_ticks(left.xaxis)
    left.set_title("training loss vs step" + (LOSS_CLIPPED if clipped else ""))
    scale, unit = time_unit(max((t for c in curves.values() for t, _ in c["bpb"]), default=0))
    clipped = _draw_bpb(right, curves, colors, "", scale)
    right.set_xlabel(f"{TIME_LABEL} ({unit})")
    right.set_title("held-out bpb vs training time" + _sf_note(curves, clipped))
    return fig


def bpb_vs_bytes_figure(curves, colors):
    """Held-out bits per byte against the training bytes read (millions), points and styles as
    :func:`loss_and_bpb_figure`'s right panel: the per-token view, where runs of different batch
    sizes (whose steps read different bytes) compare at equal data."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    clipped = _draw_bpb(ax, curves, colors, "_bytes", 1e6)
    ax.set_xlabel("training bytes read (millions)")
    ax.set_title("held-out bpb vs training bytes" + _sf_note(curves, clipped))
    return fig


def _sf_note(curves, clipped: bool) -> str:
    """A held-out panel's title note: which points are y and x, and whether some x are off the axis."""
    note = " (Schedule-Free: filled at y, hollow at x)" if any(c["bpb_y"] for c in curves.values()) else ""
    return note + ("\n(points at x above the axis not shown)" if clipped else "")


def _draw_bpb(ax, curves, colors, which: str, scale: float) -> bool:
    """Each run's held-out points (``bpb{which}``, ``bpb_y{which}`` of :func:`run_curves`, x divided
    by ``scale``): solid with filled points at the training point y and dashed with hollow points
    at x for Schedule-Free runs, else solid at the shipped weights. Points at x far above every
    solid curve (pure bf16 loses the average to rounding: bpb 5-20 where y reads 1.5) are left
    above the axis, so that they do not flatten the curves that matter: returns whether some were."""
    labelled, values = set(), {"-": [], "--": []}
    for c in curves.values():
        solid, dashed = (c["bpb_y" + which], c["bpb" + which]) if c["bpb_y" + which] else (c["bpb" + which], [])
        for pts, style in ((solid, "-"), (dashed, "--")):
            if pts:
                xs, bpb = zip(*sorted(pts))
                ax.plot([x / scale for x in xs], bpb, style, marker="o", color=colors[c["name"]],
                        markerfacecolor=None if style == "-" else "none",  # a lone point shows which
                        lw=1.2 if style == "-" else 0.8, label=None if c["name"] in labelled else c["name"])
                labelled.add(c["name"])
                values[style].extend(bpb)
    top = 1.25 * max(values["-"], default=0.0)
    clipped = bool(values["-"]) and any(v > top for v in values["--"])
    if clipped:
        shown = values["-"] + [v for v in values["--"] if v <= top]
        pad = 0.05 * (max(shown) - min(shown)) + 1e-3
        ax.set_ylim(min(shown) - pad, max(shown) + pad)
    ax.set_ylabel(held_out_label(curves))
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8)
    return clipped


def held_out_label(curves) -> str:
    """The held-out axis label, naming how many bytes each point scored (the same for all: a
    curve drawn on a prefix of the split, ``--curve-eval-bytes``, says so)."""
    scored = scored_bytes(curves)
    if len(scored) == 1:
        return f"held-out bits per byte ({next(iter(scored)):,} bytes)"
    return "held-out bits per byte" + (" (bytes scored vary)" if scored else "")


def scored_bytes(curves) -> set[int]:
    """The held-out byte counts that the points of :func:`run_curves`' curves scored (one when
    every evaluation scored the same bytes)."""
    return set().union(*(c["bytes"] for c in curves.values())) - {None}


def loss_vs_time_figure(curves, colors):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    scale, unit = time_unit(max((x["clock_s"] or 0 for c in curves.values() for x in c["metrics"]), default=0))
    clipped = _draw_losses(ax, curves, colors, "clock_s", scale)
    ax.set_xlabel(f"{TIME_LABEL} ({unit})")
    ax.set_title("training loss vs training time" + (LOSS_CLIPPED if clipped else ""))
    return fig


def tok_bar_figure(rows, colors):
    """Steady training tokens/s per row (the report's Tok/s (steady): the warm-up steps left out;
    mean ± std over seeds), each bar labelled with its value."""
    from matplotlib.ticker import EngFormatter

    plt = pyplot()
    rows = [r for r in rows if r["tok_per_s"] is not None]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    err = [r["tok_per_s_std"] or 0 for r in rows]
    bars = ax.bar(xs, [r["tok_per_s"] for r in rows], yerr=err if any(err) else None,
                  color=[colors.get(r["name"], "C0") for r in rows], capsize=3)
    value = EngFormatter(places=1, sep="")
    ax.bar_label(bars, labels=[value(r["tok_per_s"]) for r in rows], fontsize=8, padding=2)
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    ax.margins(y=0.12)  # room for the labels
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("training tokens / s (steady)")  # the table's Tok/s (steady), not its Tok/s (wall)
    ax.set_title("throughput, warm-up steps left out")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _depth_series(rows) -> dict[str, list[dict]]:
    """Rows that differ in depth (and the width solved for it) alone, as one series each: the same
    model kind, layer options, model settings (``mlp_ratio=2.0``...), protocol (budget, optimizer,
    batch, ...) and other swept values (a sweep's seed, eps, ...) at two or more depths.
    An E1 of 2.5x expansion at 19 layers and an E1 of 14 heads at 31 are two models, not a depth
    curve; a model at two depths and two learning rates is two curves, and so is one at two depths
    and two widths set for them (a sweep over depth and dim)."""
    groups: dict[tuple[str, str], tuple[dict, list[dict]]] = {}
    for r in rows:
        if r["loss"] is not None and r.get("depth") is not None:
            layer = dict(sorted((r.get("layer") or {}).items()))  # one curve whatever order the options came in
            label = model_text(r["model"], "", layer, r.get("model_options"))
            swept = {k: v for k, v in (r.get("point") or {}).items() if k not in ("depth", "dim")}
            settings = {**(r.get("protocol") or {}), **swept}
            key = (label, json.dumps(settings, sort_keys=True, default=str))
            groups.setdefault(key, (settings, []))[1].append(r)
    curves = []
    for (label, _), (settings, rs) in groups.items():
        if len({r["depth"] for r in rs}) < len(rs):  # two rows at one depth: widths set apart (--set dim=.. depth=..)
            dims = dict.fromkeys(r.get("dim") for r in rs)
            parts = {f"{label} dim={d}".strip(): [r for r in rs if r.get("dim") == d] for d in dims}
        else:
            parts = {label: rs}
        curves += [(lab, settings, p) for lab, p in parts.items() if len({r["depth"] for r in p}) > 1]
    series: dict[str, list[dict]] = {}
    for label, mine, rs in curves:  # one model under two protocols: named by the settings apart ("e1 lr=0.001")
        others = [o for lab, o, p in curves if lab == label and p is not rs]
        apart = [k for k in mine if any(o.get(k) != mine[k] for o in others)]
        name = " ".join([label, *(f"{k}={mine[k]}" for k in apart)])
        series[name if name not in series else f"{name} ({len(series) + 1})"] = rs
    return series


def loss_vs_depth_figure(series: dict[str, list[dict]]):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, rs) in enumerate(series.items()):
        d, loss, sd = zip(*sorted((r["depth"], r["loss"], r["loss_std"] or 0) for r in rs))
        ax.errorbar(d, loss, yerr=sd, marker="o", capsize=3, color=f"C{i}", label=f"{label} train loss")
    one_width = all(len({r.get("dim") for r in rs}) == 1 for rs in series.values())  # a sweep at a set --dim
    solved = all(r.get("target_params") for rs in series.values() for r in rs)  # else widths set by hand
    ax.set_xlabel("depth" + (" (width held)" if one_width else " (width solved for the parameter budget)" if solved
                             else " (width set per row)"))
    integer_ticks(ax.xaxis)
    ax.set_ylabel("loss (nats/byte, last-100 mean)")
    ax.set_title("loss vs depth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _numeric(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return None


def sweep_figure(rows, axes: list[str]):
    """Loss and held-out bpb vs the first axis; one line per combination of the other axes. A
    Schedule-Free run's held-out bpb is its training point y's, as the report's other plots draw it
    (its average x is mostly lost to rounding in pure bf16); other runs' at their weights. A point
    not complete (failed or partial: the tables mark it) is hollow, and the title says so."""
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
    at_y = any(r.get("val_bpb_train_point") is not None for r in rows)

    def value(r, metric):  # (value, std)
        if metric == "val_bpb" and r.get("val_bpb_train_point") is not None:
            metric = "val_bpb_train_point"
        return r.get(metric), r.get(metric + "_std")

    fig, axs = plt.subplots(1, 2, figsize=(11, 4.5))
    hollow = False
    for metric, ax, label in (("loss", axs[0], "training loss (last-100 mean)"),
                              ("val_bpb", axs[1], "held-out bits per byte" + (" (Schedule-Free at y)" if at_y else ""))):
        for i, (key, rs) in enumerate(lines.items()):
            pts = []
            for r in rs:
                x = (r.get("point") or {}).get(x_axis)
                v, sd = value(r, metric)
                if v is None:
                    continue
                pts.append((float(x) if numeric else cats.index(str(x)), v, sd or 0, r["status"] == "complete"))
            if not pts:
                continue
            pts.sort()
            xs, ys, sd, done = zip(*pts)
            ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, color=f"C{i % 10}", label=key,
                        markevery=[j for j, d in enumerate(done) if d])
            if not all(done):
                ax.plot([x for x, d in zip(xs, done) if not d], [y for y, d in zip(ys, done) if not d], "o",
                        color=f"C{i % 10}", markerfacecolor="none")
                hollow = True
        if numeric:
            vals = [float(x) for x in xs_all]
            if min(vals) > 0 and max(vals) / min(vals) >= 10:
                ax.set_xscale("log")
            elif all(isinstance(x, int) for x in xs_all):  # depth, heads, ...
                integer_ticks(ax.xaxis)
        else:
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, rotation=30, ha="right")
        ax.set_xlabel(x_axis)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(f"sweep over {x_axis}" + ("\n(hollow: a point not complete, failed or partial)" if hollow else ""))
    return fig
