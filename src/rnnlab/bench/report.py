"""Suite / sweep reports from run folders: ``report.md``, ``report.json`` and PNG plots.

The run folders are read and averaged by ``rnnlab.bench.collect`` (records per run folder, rows
per suite row); this module turns them into the report: the header (suite, protocol, device,
corpus, commit, commands, warnings), the results table, reference vs ours, the sweep table, held-out
bpb at equal training bytes, configs, and report.json beside it.

The main table has the reference study's columns (Model, Params, Loss, held-out bpb, Tok/s, Memory,
Time), each a mean ± sample std over seeds when a run was repeated.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from rnnlab.bench import plots as P
from rnnlab.bench.collect import PROTOCOL_KEYS, aggregate, collect_folders, run_decay_rates, run_seed
from rnnlab.bench.suite import invocations, suite_ref
from rnnlab.errors import amount, counted
from rnnlab.models.config import model_text
from rnnlab.models.params import parse_count
from rnnlab.train.config import (BUDGET_KEYS, FIELDS, RUNNER_KEYS, WARMUP_STEPS, TrainConfig, apply_overrides,
                                 stored_value)
from rnnlab.train.rundir import REPORT_JSON, REPORT_MD, RunDir
from rnnlab.train.runtime import git_state, split_dirty

X_VS_Y_TOL = 0.05  # bpb: Schedule-Free's average x scoring this much worse than its train point y is flagged
JITTER_TOL = 1.15  # a row whose steady steps' 90th-percentile time exceeds its 10th by more than this is flagged
COLUMNS = ("Model", "Params", "Loss", "held-out bpb", "Tok/s (steady)", "Tok/s (wall)", "Memory", "Time")
PARAMS_TOL = 0.05  # rows (and reference rows) within 5% of each other's parameter count compare
_SHA = re.compile(r"[0-9a-f]{7,64}")


# ------------------------------------------------------------------------------------ format
def _mark_bytes(m: int) -> str:
    """A mark the report chose (its runs' evaluation points), to three digits: ``1.02M``, ``16.4K``."""
    return f"{m / 1e6:.2f}M" if m >= 1e5 else fmt_count(m)


def _asked_bytes(m: int) -> str:
    """A mark ``--at-bytes`` asked for, exact in its largest unit: ``3K``, ``1.024M``, ``1.234567M``."""
    from decimal import Decimal

    for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "K")):
        if m >= div:
            return f"{(Decimal(m) / div).normalize():f}{suffix}"
    return str(m)


def fmt_count(n: float | None) -> str:
    """``n`` to three significant digits with a K, M or B suffix (``12.3M``)."""
    if n is None:
        return "-"
    n = float(f"{float(n):.3g}")  # rounded first, so 999,950 is 1.00M, not 1000K
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.0f}{suf}" if v >= 100 else f"{v:.1f}{suf}" if v >= 10 else f"{v:.2f}{suf}"
    return f"{n:.0f}"


def _pm(m, sd, f) -> str:
    if m is None:
        return "-"
    return f(m) if sd is None else f"{f(m)} ± {f(sd)}"


def fmt_loss(v: float) -> str:
    return f"{v:.4f}"


def fmt_time(v: float) -> str:
    return f"{v:.0f} s" if v >= 100 else f"{v:.1f} s"


def fmt_mem(row: dict[str, Any]) -> str:
    if row["peak_mem_gib"] is None:  # a CPU run measures none; a GPU run without one is missing it
        return "n/a (CPU)" if row["device"] == "cpu" else "-"
    return _pm(row["peak_mem_gib"], row["peak_mem_gib_std"], lambda v: f"{v:.1f}") + " GiB"


def config_text(row: dict[str, Any]) -> str:
    """``e1 1024x24 heads=16 rescale_prenorm_residual=True``: the model, its size, its layer options and
    its other settings that differ from their defaults."""
    return model_text(row["model"], f"{row['dim']}x{row['depth']}", row.get("layer"), row.get("model_options"))


def md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def extra_files(rows: list[dict[str, Any]]) -> list[str]:
    """The names of the extra held-out files (``--extra-val-data``) the rows were scored on."""
    return sorted({r["extra_data"] for r in rows if r["extra_data"]})


def metric_cell(row: dict[str, Any], key: str, fmt) -> str:
    """``mean ± std`` of a row's metric, saying over how many of its runs when some lack it (e.g.
    a held-out file scored in only some of the seeds)."""
    text = _pm(row[key], row[key + "_std"], fmt)
    n = row[key + "_n"]
    return text + (f" ({n} of {row['n_used']} runs)" if 0 < n < row["n_used"] else "")


def status_note(row: dict[str, Any]) -> str:
    """What a table adds to a row that is not complete (`` (partial: 1 of 3 runs complete, 2 failed)``), and
    where an interrupted run's held-out scores are of an earlier step than its other numbers
    (``; held-out bpb of step 200``), else ""."""
    if row["status"] == "complete":
        return ""
    behind = row.get("val_steps_behind")
    at = f"; held-out bpb of step {', '.join(f'{s:,}' for s in behind)}" if behind else ""
    n_failed = row.get("n_failed") or 0
    said = row["status"] == "failed" and n_failed == row["n_runs"]  # every run failed: the status says it
    failed = f", {n_failed} failed" if n_failed and not said else ""
    return f" ({row['status']}: {row['n_complete']} of {row['n_runs']} runs complete{failed}{at})"


def main_table(rows: list[dict[str, Any]]) -> str:
    """The results table; a "held-out bpb (train point)" column is added when a row used
    Schedule-Free (its held-out bpb at the training point y, beside the one at the average x), and
    an "MFU" column beside the steady tok/s when a row ran on a GPU of known peak."""
    at_y = any(r["val_bpb_train_point"] is not None for r in rows)
    with_mfu = any(r["mfu"] is not None for r in rows)
    extra = extra_files(rows)
    extra_keys = [k for k in ("extra_val_bpb", "extra_val_bpb_train_point") if any(r[k] is not None for r in rows)]
    body = []
    for r in rows:
        name = r["name"] + status_note(r)
        y = [metric_cell(r, "val_bpb_train_point", fmt_loss)] if at_y else []
        y += [metric_cell(r, k, fmt_loss) for k in extra_keys]
        m = [f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"] if with_mfu else []
        body.append([
            name, fmt_count(r["params"]),
            metric_cell(r, "loss", fmt_loss),
            metric_cell(r, "val_bpb", fmt_loss), *y,
            metric_cell(r, "tok_per_s", fmt_count), *m,
            metric_cell(r, "tok_per_wall_s", fmt_count),
            fmt_mem(r),
            metric_cell(r, "time_s", fmt_time),
        ])
    header = list(COLUMNS)
    if with_mfu:
        header.insert(header.index("Tok/s (steady)") + 1, "MFU")
    label = extra[0] if len(extra) == 1 else "extra held-out file"  # several files: the legend names them
    header[4:4] = (["held-out bpb (train point)"] if at_y else []) + [
        f"{label} bpb" + (" (train point)" if k.endswith("train_point") else "") for k in extra_keys]
    return md_table(header, body)


def above(value: float, threshold: float) -> str:
    """``value`` signed to two decimals, or as many more as it takes to read above ``threshold``
    (0.0504 over 0.05 is "+0.0504", not "+0.05")."""
    return next(f"{value:+.{d}f}" for d in itertools.count(2) if round(value, d) > threshold)


def averaging_warning(rows: list[dict[str, Any]]) -> list[str]:
    """Rows whose Schedule-Free average x scores clearly worse on held-out data than the training
    point y (``X_VS_Y_TOL``); in pure bf16 a sign the averaging was lost to rounding."""
    flagged = [r for r in rows if r["val_bpb"] is not None and r["val_bpb_train_point"] is not None
               and r["val_bpb"] - r["val_bpb_train_point"] > X_VS_Y_TOL]
    if not flagged:
        return []
    bad = [f"{r['name']} ({above(r['val_bpb'] - r['val_bpb_train_point'], X_VS_Y_TOL)} bpb)" for r in flagged]
    if any(r["protocol"].get("precision") == "bf16" for r in flagged):
        why = ("In pure bf16 the averaging step is mostly lost to rounding (docs/findings.md): compare "
               "the train-point column, or train with --precision bf16-mixed.")
    else:
        why = "Compare the train-point column."
    return ["", "> **Warning: Schedule-Free's averaged weights (x, what a checkpoint ships) score worse on "
            "held-out data than its training point (y, where the training loss is measured):** "
            + ", ".join(bad) + ". " + why]


def jitter_warning(rows: list[dict[str, Any]]) -> list[str]:
    """GPU rows whose steady step times spread widely (90th over 10th percentile above
    ``JITTER_TOL``): their tok/s averages fast and slow steps, and a step bound by the host's
    kernel launching moves with the machine's CPU (results/mamba2-trainer-steps-h200). CPU runs'
    steps vary with the machine's load anyway (``load_lines`` says how busy it was)."""
    flagged = [r for r in rows if r["gpu_name"] and r["step_ms"]
               and r["step_ms"]["p90"] > JITTER_TOL * r["step_ms"]["p10"]]
    if not flagged:
        return []
    runs = [f"{r['name']} {r['step_ms']['p10']:.0f}–{r['step_ms']['p90']:.0f} ms (median "
            f"{r['step_ms']['median']:.0f})" for r in flagged]
    return ["", "> **Warning: some runs' steps took unsteady times** (10th–90th percentile of their steady "
            "steps): " + ", ".join(runs) + ". Their tok/s is not the model's speed alone: a step that the CPU's "
            "kernel launching bounds slows with the machine (`benchmarks/bench_models.py`'s host ms says "
            "whether it is; `rnnlab train --cuda-graph` takes the launching out)."]


def repeated_seed_warning(rows: list[dict[str, Any]]) -> list[str]:
    """Rows averaging two runs of one seed (``--seeds 42`` beside the unsuffixed run, whose seed
    is the suite's 42): the same run twice, not a spread."""
    twice = [f"{r['name']} (seed {s} {r['seeds'].count(s)} times)" for r in rows
             for s in sorted({s for s in r["seeds"] if s is not None}) if r["seeds"].count(s) > 1]
    if not twice:
        return []
    return ["", "> **Warning: some rows average runs of the same seed** (the spread is then not over "
            "seeds): " + ", ".join(twice) + "."]


def extra_file_lacking(plan: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``--extra-val-data`` file the latest command that wrote the folder asked for (its options in
    ``suite.json``, else the suite's defaults) and the complete runs whose final scores lack it, by
    folder: ``{"file": name, "runs": [dir, ...], "no_checkpoint": [dir, ...]}``, the latter those kept
    from before with no checkpoint to score it from (``stale_line``); the others were not among that
    command's runs (``--runs``, ``--seeds``). None when none lacks it or no file was asked for. Files
    are told apart by name, as the rows name them."""
    calls = invocations(plan)
    asked = ((calls[-1].get("options") or {}) if calls else {}).get("extra_val_data") \
        or (plan.get("defaults") or {}).get("extra_val_data")
    if not asked:
        return None
    name = Path(str(asked)).name
    lacking = [r["dir"] for r in records if r["status"] == "complete"
               and Path(str((r["summary"].get("extra_val") or {}).get("data") or "")).name != name]
    if not lacking:
        return None
    paths = {r["dir"]: r["path"] for r in records}
    kept = [d for d in lacking if not RunDir(paths[d]).has_checkpoint()]
    return {"file": name, "runs": lacking, "no_checkpoint": kept}


def extra_file_warning(lacking: dict[str, Any] | None) -> list[str]:
    """One line naming the complete runs not scored on the file the latest command asked for
    (``extra_file_lacking``): the table has no column (or a partial one) for it."""
    if not lacking:
        return []
    kept = lacking.get("no_checkpoint", lacking["runs"])
    others = [d for d in lacking["runs"] if d not in kept]
    why = ([f"{', '.join(kept)} (kept from before, with no checkpoint to score it from)"] if kept else []) + (
        [f"{', '.join(others)} (not among its runs; a command that runs them with the file scores them again from "
         "their checkpoints)"] if others else [])
    return ["", f"> **Warning: the latest command asked for --extra-val-data {lacking['file']}, which these complete "
                f"runs were not scored on**: {'; '.join(why)}."]


# run_setup's keys that its warning writes in words (report.json keeps the keys)
SETUP_WORDS = {"corpus_fingerprints": "corpus (training/held-out split fingerprints)", "val_bytes": "held-out bytes"}


def mixed_row_warning(rows: list[dict[str, Any]]) -> list[str]:
    """Rows averaging runs trained differently (e.g. ``--seeds 43 --steps 300`` into a folder whose
    run of that name trained 1000 steps): their mean ± std mixes two protocols, not seeds. A setting
    some runs did not record (corpus fingerprints, before env.json had them) compares among those that did."""
    mixed = []
    for r in rows:
        setups = r.get("run_setups") or []
        diff = []
        for k in dict.fromkeys(k for o in setups for k in o):
            values = [o[k] for o in setups if k in o]
            if any(not _same(values[0], v) for v in values[1:]):
                diff.append(f"{SETUP_WORDS.get(k, k)} " + "/".join(map(str, values)))
        if diff:
            mixed.append(f"{r['name']} ({', '.join(diff)})")
    if not mixed:
        return []
    return ["", "> **Warning: some rows average runs trained differently** (their mean ± std is not a "
            "spread over seeds; give the runs another suite folder, or the same settings): " + ", ".join(mixed) + "."]


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def reference_mismatch(row: dict[str, Any], ref: dict[str, Any], protocol: dict[str, Any]) -> str | None:
    """Why ``row`` cannot be set beside its reference numbers (None when it can): its protocol
    differs from the one the reference ran (the suite's shipped defaults), it is not complete,
    or its parameter count is more than 5% away from the reference's."""
    why = []
    if row["status"] != "complete":
        why.append(f"run {row['status']}")
    for k, want in protocol.items():
        want = stored_value(k, want)  # read as the config reads it: a suite's tokens "50M" is 50000000
        want = list(want) if isinstance(want, tuple) else want  # betas: config.json's list
        got = row["protocol"].get(k)
        if k in row["protocol"] and not _same(got, want):
            why.append(f"{k} {got} (reference {want})")
    if ref.get("params") and row["params"] and abs(row["params"] / ref["params"] - 1) > PARAMS_TOL:
        why.append(f"{fmt_count(row['params'])} params (reference {fmt_count(ref['params'])})")
    return "; ".join(why) or None


def reference_table(rows: list[dict[str, Any]], reference: dict[str, Any],
                    protocol: dict[str, Any]) -> tuple[str, list[dict[str, Any]], list[str]]:
    """Reference vs ours, for the rows the suite's [reference] names whose protocol and parameter
    count match the reference's (``reference_mismatch``); also returns why the others were left
    out. Ours as the results table shows them (mean ± std over seeds); memory in GB (1e9 bytes), as the
    reference reported it."""
    def in_gb(gib):
        return gib * 2**30 / 1e9 if gib is not None else None

    def pair(theirs, f, ours: str) -> str:  # ours: the cell as formatted for the results table
        return f"{f(theirs) if theirs is not None else '-'} / {ours}"

    def fmt_gb(v):
        return f"{v:.1f}"

    refs = reference.get("runs", {}) or {}
    body, out, left_out = [], [], []
    for r in rows:
        ref = refs.get(r["name"])
        if not ref:
            continue
        why = reference_mismatch(r, ref, protocol)
        if why:
            left_out.append(f"{r['name']}: {why}")
            continue
        ours_gb = in_gb(r["peak_mem_gib"])
        d = (r["loss"] - ref["loss"]) if (r["loss"] is not None and ref.get("loss") is not None) else None
        out.append({"name": r["name"], "reference": ref, "ours": {
            "params": r["params"], "loss": r["loss"], "val_bpb": r["val_bpb"], "tok_per_s": r["tok_per_s"],
            "mem_gb": ours_gb, "time_s": r["time_s"]}, "loss_delta": d})
        body.append([
            r["name"], pair(ref.get("params"), fmt_count, fmt_count(r["params"])),
            pair(ref.get("loss"), fmt_loss, metric_cell(r, "loss", fmt_loss)), f"{d:+.4f}" if d is not None else "-",
            pair(ref.get("tok_per_s"), fmt_count, metric_cell(r, "tok_per_s", fmt_count)),
            pair(ref.get("mem_gb"), fmt_gb, _pm(ours_gb, in_gb(r["peak_mem_gib_std"]), fmt_gb)),
            pair(ref.get("time_s"), fmt_time, metric_cell(r, "time_s", fmt_time)),
        ])
    header = ["Model", "Params (reference / ours)", "Loss (reference / ours)", "Δ loss",
              "Tok/s (reference / ours)", "Mem GB (reference / ours)", "Time (reference / ours)"]
    return (md_table(header, body) if body else ""), out, left_out


def protocol_differences(rows: list[dict[str, Any]], swept: Any = ()) -> list[str]:
    """One line per setting that is not the same for every row (the budget, the steps run among
    rows not trained for a time, batch, sequence length, precision, optimizer, lr, weight decay,
    Adam's betas, gradient clipping, the corpus, held-out bytes, the extra held-out file scored
    (``--extra-val-data``), and whether weight decay reached the decay rates A_log, dt_bias, D
    among the rows whose models have them): such rows do not compare like for like. A sweep's
    axes (``swept``) differ by design and are left out. Parameter counts: ``differing_param_counts``.
    Rows trained for the same minutes run different steps by design (the time-matched race): the
    budget says they match. A row none of whose runs started (``missing``) has no protocol to compare."""
    lines = []
    rows = [r for r in rows if r["status"] != "missing"]
    keyed = {"budget": {r["name"]: budget_text(r["protocol"]) for r in rows},
             # a run without its summary.json (killed, still training) has no steps run to compare
             "steps run": {r["name"]: r["steps"] for r in rows
                           if r["protocol"].get("minutes") is None and r["steps"] is not None},
             "held-out bytes scored": {r["name"]: r["val_bytes"] for r in rows if r["val_bytes"]},
             # the data itself (env.json's fingerprints; paths differ from machine to machine)
             "corpus (training/held-out split fingerprints)": {r["name"]: r["corpus"] for r in rows if r["corpus"]},
             # --extra-val-data, where any row has one: a row without it shows "-" (a run kept from before
             # the file was asked for, with no checkpoint to score it from)
             **({"extra held-out file scored": {r["name"]: r["extra_data"] or "none" for r in rows}}
                if any(r["extra_data"] for r in rows) else {}),
             **{k: {r["name"]: r["protocol"].get(k) for r in rows} for k in PROTOCOL_KEYS},
             # weight decay on A_log, dt_bias, D, among the rows whose models have them
             "decay rates": {r["name"]: r["protocol"]["decay_rates"] for r in rows if r["protocol"]["decay_rates"]}}
    for key, values in keyed.items():
        if key in swept or (key == "decay rates" and "decay_marked" in swept):  # the sweep's decay_marked axis
            continue
        groups: list[tuple[Any, list[str]]] = []  # values equal as _same says (floats to rounding)
        for name, v in values.items():
            group = next((g for g in groups if _same(g[0], v)), None)
            if group is None:
                groups.append((v, [name]))
            else:
                group[1].append(name)
        if len(groups) > 1:
            lines.append(f"{key}: " + "; ".join(f"{', '.join(n)} {v}" for v, n in groups))
    return lines


def differing_param_counts(rows: list[dict[str, Any]]) -> str | None:
    """Every row's parameter count (``"e1 57.9K; mingru 33.2K"``) when the counts are more than 10%
    apart (not all within 5% of one middle value), else None. ``header_lines`` decides whether
    that is by design (a note) or a protocol difference (a warning)."""
    params = sorted(r["params"] for r in rows if r["params"])
    if params and params[-1] > params[0] * (1 + 2 * PARAMS_TOL):
        return "; ".join(f"{r['name']} {fmt_count(r['params'])}" for r in rows)
    return None


def sweep_table(rows: list[dict[str, Any]], axes: list[str]) -> str:
    """A row per point: its value on each axis (the last marked when the point is not complete, as the
    results table marks it), params, loss, held-out bpb (and, where a point used Schedule-Free, at
    its training point y: what the sweep's plot draws) and tok/s; a metric some of a point's seeds
    lack says over how many it is."""
    at_y = any(r["val_bpb_train_point"] is not None for r in rows)
    metrics = [("loss", fmt_loss), ("val_bpb", fmt_loss), *([("val_bpb_train_point", fmt_loss)] if at_y else []),
               ("tok_per_s", fmt_count)]
    body = []
    for r in rows:
        p = r.get("point") or {}
        point = [str(p.get(a, "-")) for a in axes]
        point[-1] += status_note(r)
        body.append(point + [fmt_count(r["params"])] + [metric_cell(r, k, f) for k, f in metrics])
    header = ["Params", "Loss", "held-out bpb", *(["held-out bpb (train point)"] if at_y else []), "Tok/s"]
    return md_table(list(axes) + header, body)


# ------------------------------------------------------------------------------------ header
def commands_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every session that wrote the run, oldest first: those that trained (:func:`sessions`) and
    those that only scored it again (``scoring_sessions``)."""
    every = [*sessions(record), *record["env"].get("scoring_sessions", [])]
    return sorted(every, key=lambda s: s.get("started") or "")


def sessions(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The environments a run trained in, oldest first: its earlier sessions' (a resumed run,
    ``rundir.SESSION_KEYS``), then env.json's own."""
    return [*record["env"].get("earlier_sessions", []), record["env"]]


def describe_device(records: list[dict[str, Any]]) -> str:
    seen = []
    for r in records:
        env, s = r["env"], r["summary"]
        dev = env.get("device") or s.get("device")
        if dev is None:
            continue
        if str(dev).startswith("cuda"):
            text = env.get("gpu") or "CUDA GPU"
        elif dev == "cpu":
            threads = env.get("cpu_threads")
            text = f"CPU ({threads} threads)" if threads else "CPU"
        else:
            text = str(dev)
        gpus = [x.get("gpu") for x in sessions(r)[:-1]] if text == env.get("gpu") else []
        for t in [*filter(None, gpus), text]:  # a run resumed on another GPU names both
            if t not in seen:
                seen.append(t)
    if seen:
        return ", ".join(seen)
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    except Exception:  # pragma: no cover - torch always imports here
        return "unknown"


def describe_corpus(records: list[dict[str, Any]]) -> str:
    seen = []
    for r in records:
        c = r["config"]
        if not c:
            continue
        data, val = c.get("data"), c.get("val_data")
        if data is None:
            text = "bundled sample (rnnlab/data/sample)" + (f"; held-out {val}" if val else "")
        elif val:
            text = f"train {data}; held-out {val}"
        else:
            text = f"{data} (held-out: last {c.get('val_fraction', 0.01):g} of the file)"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) or "-"


def describe_git(records: list[dict[str, Any]]) -> str:
    """The commit the runs recorded (env.json), each with its runs when they differ or some runs
    recorded none (a planned run never started records nothing: it is left out); without any, the
    commit of the code writing the report, labelled so."""
    by_commit: dict[str, list[str]] = {}
    for r in records:
        if r.get("status") == "missing":
            continue
        for session in sessions(r):  # a resumed run: each session's
            c = _describe_commit(session.get("git_sha"), session.get("git_dirty")) or "none recorded"
            if r["dir"] not in by_commit.setdefault(c, []):
                by_commit[c].append(r["dir"])
    if list(by_commit) in ([], ["none recorded"]):
        here = _describe_commit(*git_state())
        return f"{here} (the code writing this report; the runs recorded none)" if here else "- (not a git checkout)"
    if len(by_commit) > 1:
        return "; ".join(f"{c} ({', '.join(dirs)})" for c, dirs in by_commit.items())
    return next(iter(by_commit))


def _describe_commit(sha: Any, dirty: bool | None) -> str | None:
    """``"0123456789ab (dirty)"``, or None when ``sha`` is no commit hash. A ``<sha>-dirty`` sha is
    dirty (how runs before runtime.git_state split it recorded a staged tree with changes)."""
    if isinstance(sha, str):
        sha, marked = split_dirty(sha)
        dirty = marked or dirty
    if not (sha and _SHA.fullmatch(str(sha))):
        return None
    return sha[:12] + (" (dirty)" if dirty else "")


def cpu_runs_start_load(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For CPU runs (None without any): the 1-minute load average each started under and the
    cores it had (env.json), and ``busy``: the runs that started with a load above their core
    count. Other processes then competed for the CPU, so their tok/s and time do not compare."""
    cpu = {r["dir"]: r["env"] for r in records if r["env"].get("device") == "cpu" and r["env"].get("load_avg")}
    if not cpu:
        return None
    return {"load_avg_1min": {d: env["load_avg"][0] for d, env in cpu.items()},
            "cores": sorted({env["cpu_count"] for env in cpu.values()}),
            "busy": [d for d, env in cpu.items() if env["load_avg"][0] > env["cpu_count"]]}


def load_lines(load: dict[str, Any] | None) -> list[str]:
    """The machine-load header line of a CPU report, and a warning when a run started busy."""
    if not load:
        return []
    loads = load["load_avg_1min"]
    lo, hi = f"{min(loads.values()):.1f}", f"{max(loads.values()):.1f}"
    md = [f"- **Machine load at start (CPU runs):** 1-minute load average {lo if lo == hi else f'{lo}–{hi}'} "
          f"on {'/'.join(map(str, load['cores']))} cores"]
    if load["busy"]:
        md += ["", f"> **Warning: the machine was busy when {counted(len(load['busy']), 'CPU run')} started** "
               "(1-minute load average above the core count: " + ", ".join(f"{d} {loads[d]:.1f}" for d in load["busy"])
               + "): other processes competed for the CPU, so the tok/s and time of these runs do not compare; "
               "rerun them on an idle machine."]
    return md


def budget_text(config: dict[str, Any]) -> str | None:
    """A run's budget as ``"minutes 5"`` or ``"steps 1,000"`` (its config's, or a row's protocol's),
    None when it has none: whole counts in full, so that budgets differing in any digit differ here
    (``protocol_differences`` compares these texts)."""
    return next((f"{k} {amount(config[k])}" for k in BUDGET_KEYS if config.get(k) is not None), None)


def describe_protocol(records: list[dict[str, Any]]) -> str:
    def one(r):
        c = r["config"]
        budget = budget_text(c) or "-"
        clip = f", clip {c['grad_clip']:g}" if c.get("grad_clip") else ", no clipping"
        betas = f" betas {'/'.join(f'{b:g}' for b in c['betas'])}" if c.get("betas") else ""
        warmup = f" after {c['warmup_steps']:,} warm-up steps" if c.get("warmup_steps") else ""
        return (f"{budget} x batch {c.get('batch_size')} x seq {c.get('seq_len')}, {c.get('optimizer')} "
                f"lr {c.get('lr'):g}{warmup}{betas} wd {c.get('weight_decay'):g}{clip}, {c.get('precision')}")

    texts = []
    for r in records:
        if r["config"]:
            try:
                t = one(r)
            except (TypeError, ValueError):
                continue
            if t not in texts:
                texts.append(t)
    if not texts:
        return "-"
    # said once: only the models that have decay rates can spare them (rows that differ in it get a warning)
    spared = ("; weight decay not on A_log, dt_bias, D (the models' decay rates)"
              if any(run_decay_rates(r) == "spared" for r in records) else "")
    return (texts[0] if len(texts) == 1 else "varies by run: " + "; ".join(texts)) + spared


# ------------------------------------------------------------------------------------ write
# the options that change the protocol
OVERRIDE_KEYS = ("params", "steps", "minutes", "tokens", "eval_bytes", "curve_eval_bytes")
LEGEND = ("Loss = mean of the last 100 training losses (all of them in a shorter run; nats/byte); held-out bpb = "
          "bits per byte on the held-out split at the end of training (bytes scored: {val_bytes}), at the weights "
          "a checkpoint ships (Schedule-Free keeps two: x, the average it ships; \"train point\": y, where gradients "
          "and the training loss are taken); Tok/s (steady) = training "
          "tokens per second of training-step time, the first {warmup_steps} steps of each process (compilation, "
          "autotuning) left out; Tok/s (wall) = tokens / the run's whole wall-clock time (start-up, "
          "compilation, evaluation and checkpoints included); MFU (GPU runs) = 6 x parameters x steady tok/s "
          "over the dense bf16 peak of the GPUs the run used; Memory = peak CUDA memory allocated; Time = training-"
          "step time, the first steps' compilation included, evaluations and checkpoints not.")


def protocol_overrides(plan: dict[str, Any]) -> dict[str, Any]:
    """The command-line options that changed the suite's protocol, over every command that ran in
    the folder: those of ``OVERRIDE_KEYS`` given with a value other than the suite's own, or where
    the suite sets none, the config's default (``--eval-bytes all`` on a suite that scores all is
    none); a key given different values by different commands maps to the list of them. The suite's
    values are read as the config reads them (its ``"256K"`` is the flag's 256000), and its budget
    replaces the default's (a suite of ``minutes`` has no steps, so ``--steps 1000`` departs). A sweep
    ships no suite: its base flags (suite.json's defaults) other than the config's defaults come first."""
    defaults = {k: v for k, v in (plan.get("defaults") or {}).items() if k in FIELDS}
    shipped = apply_overrides(TrainConfig(), defaults, source="suite").to_dict()
    found: dict[str, list[Any]] = {}
    if plan.get("sweep"):
        base = TrainConfig().to_dict()
        found = {k: [shipped[k]] for k in defaults
                 if k not in RUNNER_KEYS and k in shipped and shipped[k] != base.get(k)}  # (model keys: not flat)
    for call in invocations(plan):
        options = call.get("options") or {}
        for k, v in options.items():
            if k == "params" and params_as_shipped(plan, v, options.get("runs")):
                continue
            if k in OVERRIDE_KEYS and (k not in shipped or shipped[k] != v) and v not in found.get(k, []):
                found.setdefault(k, []).append(v)
    return {k: v[0] if len(v) == 1 else v for k, v in found.items()}


def params_as_shipped(plan: dict[str, Any], params: Any, runs: Any = None) -> bool:
    """Whether ``--params`` (with ``--runs``, those rows) asked every row it planned for the parameter
    count the row's suite entry targets already (suite.json's ``suite_target_params``), which plans the
    same runs; a row that sets its dim, or a suite.json from before rows recorded their target, departs."""
    try:
        target = parse_count(params)
    except ValueError:
        return False
    names = {n.strip() for n in runs.split(",")} if isinstance(runs, str) else set(runs or ())
    rows = [r for r in plan.get("runs") or [] if not names or r.get("name") in names]
    return bool(rows) and all(r.get("suite_target_params") == target for r in rows)


def describe_dates(records: list[dict[str, Any]]) -> str:
    """When the runs started (env.json; first to last) and when this report was written."""
    written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    started = sorted(s["started"] for r in records for s in sessions(r) if s.get("started"))
    if not started:
        return f"report written {written}"
    span = [s.replace("T", " ")[:16] for s in (started[0], started[-1])]
    when = span[0] if span[0] == span[1] else f"{span[0]} to {span[1]}"
    return f"runs started {when} UTC; report written {written}"


def report_header(name: str, plan: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    commands = [c["command"] for c in invocations(plan) if c.get("command")]
    names = [r["name"] for r in records]
    repeated = any(names.count(n) > 1 for n in names)
    return {
        "suite": plan.get("suite") or name,
        "description": plan.get("description") or "",
        "date": describe_dates(records),
        "device": describe_device(records),
        "corpus": describe_corpus(records),
        "git_commit": describe_git(records),
        # no suite.json: each run's own commands (a resumed or scored again run's every session's), once each
        "commands": commands or list(dict.fromkeys(" ".join(s["argv"]) for r in records for s in commands_of(r)
                                                   if s.get("argv"))) or ["-"],
        "protocol": describe_protocol(records),
        "machine_load": cpu_runs_start_load(records),
        "overrides": protocol_overrides(plan),
        "extra_file_lacking": extra_file_lacking(plan, records),
        "seeds": sorted({run_seed(r) for r in records if run_seed(r) is not None}) if repeated else [],
    }


def header_lines(header: dict[str, Any], plan: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Title, what ran where (the protocol as run, and how it departs from the suite as shipped),
    and the warnings a reader needs before comparing rows."""
    md = [f"# {'Sweep' if plan.get('sweep') else 'Benchmark'} report: {header['suite']}", ""]
    shipped = f" (`{suite_ref(plan['path'])}`)" if plan.get("path") else ""
    md += [f"- **Suite:** {header['suite']}{shipped}" + (f": {header['description']}" if header["description"] else ""),
           f"- **Protocol as run:** {header['protocol']}"]
    if header["overrides"]:
        md.append(("- **Options beside `rnnlab train`'s defaults:** " if plan.get("sweep") else  # a sweep ships none
                   "- **Departs from the suite as shipped:** ")
                  + ", ".join(f"{k} = {v}" for k, v in header["overrides"].items()))
    md += [f"- **Date:** {header['date']}", f"- **Device:** {header['device']}",
           f"- **Corpus:** {header['corpus']}", f"- **Git commit:** {header['git_commit']}",
           *command_lines(header["commands"], suite=bool(invocations(plan)))]
    if header["seeds"]:
        md.append(f"- **Seeds:** {', '.join(map(str, header['seeds']))} (mean ± sample std over seeds)")
    md += load_lines(header["machine_load"])
    diffs = protocol_differences(rows, swept=(plan.get("sweep") or {}).get("axes") or {})
    sizes = differing_param_counts(rows)
    if sizes and plan.get("runs") and not any(r.get("target_params") for r in plan["runs"]):
        # a suite that sets each model's width, not a parameter budget: by design
        md += ["", "> Note: the parameter counts differ by design (the suite sets each model's width and depth, "
                   f"not a parameter budget): {sizes}"]
    elif sizes:
        diffs.append(f"parameter counts: {sizes}")
    if diffs:
        md += ["", "> **Warning: the rows below were not run under one protocol**; compare them with care:"]
        md += [f"> - {d}" for d in diffs]
    md += averaging_warning(rows) + repeated_seed_warning(rows) + mixed_row_warning(rows) + jitter_warning(rows)
    md += extra_file_warning(header.get("extra_file_lacking"))
    bytes_scored = sorted({r["val_bytes"] for r in rows if r["val_bytes"]})
    legend = LEGEND.format(val_bytes=", ".join(f"{b:,}" for b in bytes_scored) or "-", warmup_steps=WARMUP_STEPS)
    extra = extra_files(rows)
    if extra:
        legend += (f" {' / '.join(extra)} bpb = that file (--extra-val-data), a held-out text of its own, scored "
                   "whole at the end of training at the same weights.")
    return md + ["", legend, ""]


def command_lines(commands: list[str], suite: bool = True) -> list[str]:
    """The command(s) that wrote the folder: a suite's invocations, oldest first, or (``suite``
    False) the commands of runs gathered without one, in the runs' order (a resumed run's sessions
    oldest first)."""
    if len(commands) == 1:
        return [f"- **Command:** `{commands[0]}`"]
    how = ("one after another into this folder, oldest first" if suite
           else "the runs' own, in the runs' order, a resumed run's sessions oldest first")
    return [f"- **Commands** ({len(commands)}, {how}):", *(f"  - `{c}`" for c in commands)]


def reference_lines(rows: list[dict[str, Any]], plan: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    reference = plan.get("reference")
    if not reference:
        return [], []
    # the protocol the reference ran: stated in the suite's [reference], else the suite's defaults
    table, ref_out, left_out = reference_table(rows, reference, reference.get("protocol") or plan.get("defaults") or {})
    md = ["## Reference vs ours", "", f"Reference: {reference.get('source', '-')}."]
    if table:
        md += ["", table]
    if left_out:
        md += ["", "Left out (protocol or parameter count differs from the reference's, or not complete):"]
        md += [f"- {line}" for line in left_out]
    return md + [""], ref_out


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """``points`` (sorted by x) read at ``x``, linearly between the two around it; None outside them."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1] if len(points) == 1 and points[0][0] == x else None


def equal_bytes_lines(records: list[dict[str, Any]], all_curves: dict[str, dict[str, Any]] | None = None,
                      marks: list[int] | None = None) -> list[str]:
    """When the runs read different bytes per step (their batches differ), each run's held-out
    learning curve (at y for Schedule-Free, as the plots draw it) read at the same training bytes:
    the per-token comparison, which the end-of-run table (equal time or equal steps) is not.
    Marks: a quarter, half and all of the bytes every run reached; values interpolated linearly
    between a run's evaluations, "-" outside its curve. ``marks`` (``rnnlab report --at-bytes``):
    read there instead, whatever the runs' bytes per step (a long run against a short one's
    whole curve). A run with fewer than two evaluations has no curve to read: a line under the table
    names it. Points that scored different held-out bytes (``--curve-eval-bytes`` changed between
    runs) are said, with each run's counts. ``all_curves``: ``plots.run_curves(records)`` when the caller has them."""
    per_step = set()
    for r in records:
        last = next((x for x in reversed(r["metrics"]) if x.get("tokens") and x.get("step")), None)
        if last:
            per_step.add(round(last["tokens"] / last["step"]))
    all_curves = P.run_curves(records) if all_curves is None else all_curves
    labels = {d: c["name"] if d == c["name"] else f"{c['name']} ({d})" for d, c in all_curves.items()}
    curves = {d: sorted(c["bpb_y_bytes"] or c["bpb_bytes"]) for d, c in all_curves.items()}
    curves = {d: pts for d, pts in curves.items() if len(pts) >= 2}
    asked = marks is not None
    if asked and not curves:  # --at-bytes asked for a table that no run's curve can fill: say so
        return ["## Held-out bpb at equal training bytes", "",
                "No run has a held-out learning curve to read at the bytes asked for (`--at-bytes`): that "
                "needs two evaluations or more (train with `--eval-every N`).", ""]
    if not curves or (not asked and (len(per_step) < 2 or len(curves) < 2)):
        return []
    if not asked:
        common = min(pts[-1][0] for pts in curves.values())
        marks = [common / 4, common / 2, common]
    scored = P.scored_bytes({d: all_curves[d] for d in curves})  # the table's runs: a left-out one's are not read
    body = []
    for d, pts in curves.items():
        vals = [interpolate(pts, m) for m in marks]
        body.append([labels[d], *("-" if v is None else f"{v:.4f}" for v in vals)])
    no_curve = [labels[d] for d in all_curves if d not in curves]
    lead = ("The runs read different bytes per step, so the table above compares them at equal time or "
            "steps, not at equal data: here " if len(per_step) > 1 else "Here ")
    return ["## Held-out bpb at equal training bytes", "",
            lead + "each run's learning curve (the held-out points of the plots, at y for Schedule-Free) "
            "read at the same training bytes" + (", those asked for (`--at-bytes`; - where a run's curve does "
                                                 "not reach them)" if asked else "")
            + ", linearly between its evaluations"
            + (f" (each point scores {next(iter(scored)):,} held-out bytes)." if len(scored) == 1 else "."
               + (_mixed_bytes(all_curves, curves, labels) if scored else "")), "",
            md_table(["Run", *(f"{_asked_bytes(m) if asked else _mark_bytes(m)} bytes" for m in marks)], body),
            *(["", f"Left out: {', '.join(no_curve)} (fewer than two held-out evaluations, no curve to read; "
                   "train with `--eval-every N`)."] if no_curve else []), ""]


def _mixed_bytes(all_curves: dict[str, dict[str, Any]], shown: dict[str, Any], labels: dict[str, str]) -> str:
    """The sentence for an equal-bytes table whose runs' points scored different held-out bytes
    (``shown``: the table's runs): each run's counts, since a difference between points scored on
    different text is partly the text's."""
    counts = {d: sorted(all_curves[d]["bytes"] - {None}) for d in shown}
    each = "; ".join(f"{labels[d]} {' and '.join(f'{b:,}' for b in c)}" for d, c in counts.items() if c)
    return (f" Not every point scores the same held-out bytes ({each}): a difference between points "
            "that scored different bytes is partly one of the text they read.")


def config_lines(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[str]:
    md = ["## Configs", "", md_table(
        ["Model", "Config", "Params", "Steps", "Tokens", "Warm-up", "Runs", "GPU"],
        [[r["name"], config_text(r), f"{r['params']:,}" if r["params"] else "-",
          f"{r['steps']:,}" if r["steps"] is not None else "-",
          f"{r['tokens']:,}" if r["tokens"] is not None else "-", metric_cell(r, "warmup_s", fmt_time),
          ", ".join(r["dirs"]), ", ".join(map(str, r["gpus"])) or "-"] for r in rows]),
        "", "Steps and Tokens = the mean over the row's runs (seeds of a --minutes budget run different "
            "counts). Warm-up = the training time of each process's first steps (compilation, autotuning): "
            "part of Time, outside a --minutes budget.", ""]
    problems = [r for r in records if r["status"] != "complete"]
    if problems:
        md += ["## Not complete", ""]
        for r in problems:
            err = r["summary"].get("error")
            md.append(f"- `{r['dir']}`: {r['status']}" + (f" ({err})" if err else "")
                      + (f", {r['summary'].get('steps')} steps done" if r["summary"] else ""))
        md.append("")
    return md


def write_report(root: str | Path | list[str | Path], out: str | Path | None = None, plots: bool = True,
                 at_bytes: list[int] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and the plots for the runs under ``root`` (into
    ``out``, default ``root``), or under each of several folders in one comparison (a list: ``out``
    needed, ``collect.collect_folders``); ``at_bytes``: the equal-bytes table's marks (:func:`equal_bytes_lines`).
    Returns the paths written (``md``, ``json``, ``plots``), ``table``: the results table's
    markdown, which ``rnnlab bench`` and ``rnnlab report`` print, and ``equal_bytes``: the
    equal-bytes section's ("" when there is none), which ``rnnlab report --at-bytes`` prints too."""
    roots = root if isinstance(root, list) else [root]
    if len(roots) > 1:
        if out is None:
            raise ValueError("a report of several folders needs --out: a folder of its own to write it in")
        inside = next((r for r in roots if Path(r).resolve() in (Path(out).resolve(), *Path(out).resolve().parents)),
                      None)
        if inside is not None:  # it would replace that folder's (or a run's) own report
            raise ValueError(f"--out {out} is in {inside}, one of the folders reported: a report of several "
                             "folders needs a folder of its own")
    data = collect_folders(roots)
    root = data["root"]
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    plan, records = data["plan"], data["records"]
    rows = aggregate(records)
    sweep = (plan.get("sweep") or {}).get("axes") or {}
    header = report_header(data.get("label") or root.name, plan, records)
    curves = P.run_curves(records)  # the plots' and the equal-bytes table's
    plot_files = P.make_plots(out, records, rows, list(sweep), curves) if plots else []

    table = main_table(rows)
    md = header_lines(header, plan, rows)
    if data.get("label"):  # several folders: what a suite's report has beyond its runs is not merged
        md += [f"Runs of {len(roots)} folders in one comparison, each named by its folder: a suite's reference "
               "numbers, sweep axes and checks against the suite as shipped are in each folder's own report.", ""]
    md += ["## Results", "", table, ""]
    ref_md, ref_out = reference_lines(rows, plan)
    md += ref_md
    if sweep:
        md += ["## Sweep", "", f"Axes: {', '.join(f'{a} = {sweep[a]}' for a in sweep)}", "",
               sweep_table(rows, list(sweep)), ""]
    equal_bytes = equal_bytes_lines(records, curves, at_bytes)
    md += equal_bytes + config_lines(rows, records)
    if plot_files:
        md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plot_files] + [""]

    md_path = out / REPORT_MD
    md_path.write_text("\n".join(md))
    doc = {**header, "sweep_axes": sweep or None, "rows": rows, "reference": ref_out or None,
           "plots": [p.name for p in plot_files],
           "runs": [{k: r[k] for k in ("name", "seed", "dir", "status", "point", "summary")} for r in records]}
    json_path = out / REPORT_JSON
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return {"md": md_path, "json": json_path, "plots": plot_files, "table": table,
            "equal_bytes": "\n".join(equal_bytes).strip()}
