"""The report's numbers: run folders read into records, and records averaged into rows.

Input: a directory of run folders (``RunDir``: ``summary.json``, ``config.json``, ``env.json``,
``metrics.jsonl``, ...), plus ``suite.json`` when the directory was made by ``rnnlab bench`` or
``rnnlab sweep`` (run names, seeds, sweep axes, the suite's reference numbers). Without
``suite.json`` any directory of runs works: folders named ``NAME-sSEED`` are grouped as seeds of
``NAME`` (when their config.json's seed is SEED: ``e16-s4`` trained with seed 42 is a name).

``collect`` gives one record per run folder (its files read once, for the tables and the plots),
``collect_folders`` those of several such directories in one comparison;
``aggregate`` gives one row per suite row: each metric's mean, sample std and count over the
row's seeds, with the row's protocol, step-time spread and MFU. ``rnnlab.bench.report`` formats
both, ``rnnlab.bench.plots`` draws them.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

from rnnlab.bench.mfu import mfu, peak_tflops
from rnnlab.bench.suite import LOGS, SUITE_FILE
from rnnlab.models.config import model_options_off_default
from rnnlab.train.config import BUDGET_KEYS, WARMUP_STEPS
from rnnlab.train.rundir import CONFIG, ENV, SUMMARY, RunDir, read_json, val_step_behind, warn

METRICS = ("loss", "val_loss", "val_bpb", "val_bpb_train_point", "tok_per_s", "tok_per_wall_s", "peak_mem_gib",
           "time_s", "warmup_s")
MIN_TIMED_STEPS = 20  # fewer steady steps than this give no step-time spread
# what must be equal across rows for a like-for-like comparison (config.json keys)
PROTOCOL_KEYS = ("batch_size", "seq_len", "precision", "optimizer", "lr", "warmup_steps", "weight_decay", "betas",
                 "grad_clip")
PROTOCOL_DEFAULTS = {"warmup_steps": 0}  # a config.json from before the key was written trained with this
CORPUS_KEYS = ("data", "val_data", "val_fraction")  # config.json keys: what the runs trained and were scored on
_SEED_DIR = re.compile(r"^(?P<name>.+)-s(?P<seed>\d+)$")


def protocol_value(config: dict[str, Any], key: str) -> Any:
    """A protocol key's value in a run's config.json (its default where an older config lacks it)."""
    return config.get(key, PROTOCOL_DEFAULTS.get(key))


def collect(root: str | Path) -> dict[str, Any]:
    """Everything the report needs: the suite plan (if any) and one record per run folder (with its
    ``metrics`` and ``evals`` records, read once here for the table and the plots)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"report dir not found: {root} (the --out folder of `rnnlab bench`, `sweep` or "
                                "`train`)")
    if not root.is_dir():
        raise NotADirectoryError(f"report dir {root} is a file, not a folder of runs")
    plan = read_json(root / SUITE_FILE) or {}
    planned = {r["dir"]: r for r in plan.get("runs", [])}
    # a suite's logs/ (--gpus N) is no run, though a run named config leaves a logs/config.json
    dirs = [RunDir(root / d) for d in planned] + [RunDir(p) for p in sorted(root.iterdir()) if p.name not in planned
                                                  and not (planned and p.name == LOGS) and _is_run(p)]
    if not dirs and _is_run(root):  # a single run folder
        dirs = [RunDir(root)]
    records = []
    for run in dirs:
        name = run.path.name
        summary, config, env = run.summary(), run.saved_config(), run.env()  # each file read once
        for file, doc in ((CONFIG, config), (SUMMARY, summary), (ENV, env)):
            if doc is None and run.file(file).exists():
                warn(f"{run.file(file)} holds no readable JSON object: the report leaves out what it held")
        entry = planned.get(name)
        if entry is None:
            m = _SEED_DIR.match(name)
            if m and (config or {}).get("seed") not in (None, int(m["seed"])):
                m = None  # a name that ends like a seed (race-400m's e16-s4, trained with seed 42)
            entry = {"name": m["name"] if m else name, "seed": int(m["seed"]) if m else None,
                     "dir": name, "point": None}
        status = run.status()
        metrics, evals = run.metrics(), run.evals()
        records.append({"name": entry["name"], "seed": entry.get("seed"), "dir": name, "path": str(run.path),
                        "metrics": metrics, "evals": evals, "step_ms": step_times_ms(metrics),
                        "gpu": entry.get("gpu"), "val_bytes": evals[-1].get("bytes") if evals else None,
                        "point": entry.get("point"), "status": "missing" if status == "empty" else status,
                        "summary": summary or {}, "config": config or {},
                        "env": env or {}, "planned_params": entry.get("params"), "model": entry.get("model"),
                        "target_params": entry.get("target_params")})
    if not records:  # a folder of suites (runs/bench/) or of sweeps: name those that hold runs
        below = [p for p in sorted(root.iterdir()) if p.is_dir() and any(_is_run(q) for q in p.iterdir() if q.is_dir())]
        hint = (f"; the folders of runs in it: {', '.join(p.name for p in below)} (rnnlab report {below[0]})"
                if below else "")
        raise FileNotFoundError(f"no run folders in {root}{hint}")
    return {"root": root, "plan": plan, "records": records}


def collect_folders(roots: list[str | Path]) -> dict[str, Any]:
    """:func:`collect` of one directory, or of several in one comparison (``rnnlab report A B``): each
    run's name and folder then begin with its directory's name (its path as given where two
    directories share a name), so that rows of different directories never merge as seeds of one
    another; no suite plan (each directory's own run names, seeds and points are kept)."""
    if len(roots) == 1:
        return collect(roots[0])
    paths = [Path(r) for r in roots]
    real = [p.resolve() for p in paths]
    for i, (p, a) in enumerate(zip(paths, real)):
        inside = next((q for q, b in zip(paths, real) if b != a and b in a.parents), None)
        if a in real[:i] or inside is not None:
            raise ValueError(f"{p} is given twice" + (f" (it is inside {inside})" if inside is not None else "")
                             + ": give each folder of runs once")
    names = [a.name for a in real]  # "." and ".." by the folders they are
    labels = [a.name if names.count(a.name) == 1 else str(p).rstrip("/") for p, a in zip(paths, real)]
    records = []
    for label, path, a in zip(labels, paths, real):
        for r in collect(path)["records"]:
            if Path(r["path"]).resolve() == a:  # a run folder given itself: its own name, once
                records.append({**r, "name": r["name"] if label == a.name else label, "dir": label})
            else:
                records.append({**r, "name": f"{label}/{r['name']}", "dir": f"{label}/{r['dir']}"})
    return {"root": None, "label": " + ".join(labels), "plan": {}, "records": records}


def _is_run(path: Path) -> bool:
    """A run folder, not another folder with a config.json beside the runs (an ``rnnlab export``
    output: a Hugging Face config, which names its ``model_type``)."""
    run = RunDir(path)
    return run.holds_run() and not run.is_hf_export()


def step_times_ms(metrics: list[dict[str, Any]]) -> list[float]:
    """Each steady training step's time in ms from a run's ``metrics.jsonl`` records: the
    difference of ``elapsed_s`` between consecutive steps with no warm-up step between them (each
    process's first ``WARMUP_STEPS`` steps add to ``warmup_s``; a resumed run's first steps are
    such; in records from before ``warmup_s`` existed only the run's first steps are known to be),
    records without a loss or a time left out."""
    steps = [m for m in metrics if m.get("loss") is not None and m.get("elapsed_s") is not None]
    return [(b["elapsed_s"] - a["elapsed_s"]) * 1e3 for a, b in zip(steps, steps[1:])
            if b["step"] == a["step"] + 1 and b.get("warmup_s") == a.get("warmup_s")
            and (b.get("warmup_s") is not None or b["step"] > WARMUP_STEPS)]


def spread(ms: list[float], min_steps: int = MIN_TIMED_STEPS) -> dict[str, float] | None:
    """Median, 10th and 90th percentile of step times (None below ``min_steps`` steps)."""
    if len(ms) < max(min_steps, 2):
        return None
    q = statistics.quantiles(ms, n=10, method="inclusive")
    return {"median": round(statistics.median(ms), 2), "p10": round(q[0], 2), "p90": round(q[-1], 2)}


def unsteadiest(spreads: list[dict[str, float] | None]) -> dict[str, float] | None:
    """Of a row's runs' step-time spreads, the widest (90th over 10th percentile): seeds that are
    each steady but ran at different speeds (other GPUs) are not unsteady."""
    known = [s for s in spreads if s is not None]
    return max(known, key=lambda s: s["p90"] / s["p10"]) if known else None


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run name (suite row), in plan order: mean/std of each metric over its seeds
    (completed runs only; partial runs count when no run of the group is complete)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["name"], []).append(r)
    rows = []
    for name, recs in groups.items():
        done = [r for r in recs if r["status"] == "complete"]
        use = done or [r for r in recs if r["summary"]]
        first = (use or recs)[0]
        s, c = first["summary"], first["config"]
        model = c.get("model") or first.get("model") or {}
        model = model if isinstance(model, dict) else {}  # a hand-edited config.json's
        row: dict[str, Any] = {
            "name": name, "model": s.get("model") or model.get("model"),
            "dim": s.get("dim") or model.get("dim"), "depth": s.get("depth") or model.get("depth"),
            "layer": s.get("layer") if s.get("layer") is not None else model.get("layer"),
            "model_options": model_options_off_default(model),  # {"mlp_ratio": 2.0}: the config cell names them
            "params": s.get("params") or first.get("planned_params"),
            "target_params": first.get("target_params"),  # suite.json's: the width was solved for it
            "seeds": [run_seed(r) for r in use],
            "n_runs": len(recs), "n_complete": len(done), "n_used": len(use), "point": first.get("point"),
            "n_failed": sum(r["status"] == "failed" for r in recs),
            # none complete and one failed: "failed", asked before ``use`` (a failed run wrote
            # summary.json, its numbers and error, so it is among them); "missing" when no run was
            # started (a run still training, or killed before its summary, is there: "partial")
            "status": ("complete" if len(done) == len(recs) else
                       "failed" if not done and any(r["status"] == "failed" for r in recs) else
                       "missing" if all(r["status"] == "missing" for r in recs) else "partial"),
            # a --minutes budget's seeds run different step counts: the row shows their mean
            "steps": mean_count([r["summary"].get("steps") for r in use]),
            # an interrupted run's held-out scores may be of an earlier step than its other numbers
            "val_steps_behind": sorted({step for r in use if (step := val_step_behind(r["summary"])) is not None}),
            "tokens": mean_count([r["summary"].get("tokens") for r in use]),
            "dirs": [r["dir"] for r in recs],
            "protocol": {**{k: c.get(k) for k in BUDGET_KEYS}, **{k: protocol_value(c, k) for k in PROTOCOL_KEYS},
                         "decay_rates": run_decay_rates(first)},
            "gpus": [r["gpu"] for r in recs if r.get("gpu") is not None],
            "gpu_name": first["env"].get("gpu"), "device": s.get("device") or first["env"].get("device"),
            "world_size": s.get("world_size") or 1,
            "val_bytes": next((r["val_bytes"] for r in use if r.get("val_bytes")), None),
            "step_ms": unsteadiest([spread(r.get("step_ms", [])) for r in use]),
            "run_setups": [run_setup(r) for r in use],
            "corpus": run_corpus(first),
        }
        for k in METRICS:
            m, sd, n = mean_std([r["summary"].get(k) for r in use])
            row[k] = m
            row[k + "_std"] = sd
            row[k + "_n"] = n
        for k in ("val_bpb", "val_bpb_train_point"):  # --extra-val-data, scored whole at the end
            row[f"extra_{k}"], row[f"extra_{k}_std"], row[f"extra_{k}_n"] = mean_std(
                [(r["summary"].get("extra_val") or {}).get(k) for r in use])
        row["extra_data"] = next((Path(r["summary"]["extra_val"]["data"]).name for r in use
                                  if r["summary"].get("extra_val")), None)
        # one peak for all the row's training (a seed or a resumed session on a GPU of another peak,
        # or on none, mixes rates that no one peak divides), and one number of GPUs (seeds trained on
        # 1 and 2 GPUs, or a run resumed on 1 GPU from a checkpoint of 2, have rates that no one
        # world_size divides; sessions from before env.json recorded it are the summary's): else no MFU
        sessions = [(r, session) for r in use for session in [*r["env"].get("earlier_sessions", []), r["env"]]]
        peaks = {peak_tflops(session.get("gpu")) for _, session in sessions}
        worlds = {session.get("world_size") or r["summary"].get("world_size") or 1 for r, session in sessions}
        row["mfu"] = row_mfu(row) if len(peaks) == len(worlds) == 1 else None
        rows.append(row)
    return rows


def run_seed(record: dict[str, Any]) -> int | None:
    """The seed a run trained with: its ``--seeds`` value, else its config's."""
    return record["seed"] if record["seed"] is not None else record["config"].get("seed", record["summary"].get("seed"))


def run_corpus(record: dict[str, Any]) -> str | None:
    """The data a run trained and was scored on: env.json's fingerprints of its training and held-out
    splits as ``TRAIN/HELDOUT``; None where not recorded."""
    c = record["env"].get("corpus") or {}
    prints = (c.get("train_fingerprint"), c.get("heldout_fingerprint"))
    return None if None in prints else "/".join(prints)


def run_decay_rates(record: dict[str, Any]) -> str | None:
    """``summary.json``'s ``decay_rates`` (``rnnlab.train.optim.decay_rates``: "spared",
    "decayed", or None for a model whose layers mark none); runs from before it decayed every
    parameter (``decay_marked`` is then true in their config)."""
    if "decay_rates" in record["summary"]:
        return record["summary"]["decay_rates"]
    return "decayed" if record["config"].get("decay_marked") else None


def run_setup(record: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a row to average its runs: the budget (not the steps run: seeds of a
    --minutes budget run different step counts), the parameter count, the protocol, the corpus,
    the held-out bytes scored (a seed added with another --data or --eval-bytes is another measure)
    and the number of processes (GPUs) that trained it (its tok/s is all of theirs). The corpus is its
    paths and, where env.json recorded them, its fingerprints (a file changed under the same path)."""
    s, c = record["summary"], record["config"]
    prints = run_corpus(record)
    return {**{k: c.get(k) for k in BUDGET_KEYS}, "params": s.get("params"),
            **{k: protocol_value(c, k) for k in PROTOCOL_KEYS},
            **{k: c.get(k) for k in CORPUS_KEYS},
            **({"corpus_fingerprints": prints} if prints else {}),
            "val_bytes": record.get("val_bytes"),
            "processes": s.get("world_size") or 1}  # tok/s counts every process's tokens


def mean_count(values: list[int | None]) -> int | None:
    """The mean of counts (steps, tokens), rounded to a count; None when none is known."""
    m, _, _ = mean_std(values)
    return None if m is None else round(m)


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None, len(vals)
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var), len(vals)


def row_mfu(row: dict[str, Any]) -> float | None:
    """The row's model-FLOPs utilisation per GPU at its steady tok/s (all its processes' tokens,
    over ``world_size`` GPUs; ``rnnlab.bench.mfu``), or None (no GPU of known peak, or no
    throughput). ``aggregate`` gives none either to a row whose runs trained on GPUs of different
    peaks, or on different numbers of GPUs."""
    peak = peak_tflops(row.get("gpu_name"))
    if peak is None or not row["params"] or row["tok_per_s"] is None:
        return None
    return mfu(row["params"], row["tok_per_s"], peak, gpus=row["world_size"])
