"""Training a suite's plan (``rnnlab bench``, ``rnnlab sweep``): every planned run that is not
complete, one after another in this process (``run_sequential``) or up to one per GPU at once
(``rnnlab.bench.parallel``); complete runs are skipped, partial ones resumed, complete ones given a
larger budget extended from their checkpoints (``suite.budget_change`` says so), and complete runs
whose final evaluation lacks what the command asks for (``suite.scores_lacking``) re-scored from
their checkpoints (a resume that trains no step), or, without one, skipped and listed in one line
(``suite.stale_line``); either way suite.json names the GPU each CUDA run trained on. The caller writes
the report afterwards (``rnnlab.bench.report``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from rnnlab.bench.parallel import record_gpu, run_parallel, visible_gpus
from rnnlab.bench.suite import (RESUME_HINT, VERBS, PlannedRun, Suite, budget_change, new_result, outcome_line,
                                rescore_line, run_conflict, run_status, skip_line, stale_line, train_config, write_plan)
from rnnlab.models.config import model_text


def run_plan(suite: Suite, plan: list[PlannedRun], out: str | Path, *, progress: bool = True,
             command: str | None = None, options: dict[str, Any] | None = None,
             log: Callable[[str], None] | None = None, gpus: list[str] | None = None) -> dict[str, Any]:
    """Train every planned run that is not complete (the caller then writes the report).

    ``gpus`` (``CUDA_VISIBLE_DEVICES`` entries, see ``rnnlab.bench.parallel``): run up to that many
    runs at once, one process per GPU; None trains the runs one after another in this process.
    Returns ``{"trained": [...], "rescored": [...], "skipped": [...], "stale": {label: [lacking]},
    "failed": {label: error}, "stopped": bool}``: "trained" lists every run that trained this time,
    one a first Ctrl-C stopped included ("stopped" then says the suite stopped there), "rescored"
    the complete runs whose final evaluation was scored again, "skipped" the runs already complete
    (with "stale" those among them whose scores lack what was asked, having no checkpoint).
    A run that fails (divergence, OOM, bad config) is recorded and the suite goes on; an
    interrupted run (Ctrl-C) stops the suite after its checkpoint is saved.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    conflicts = [c for c in (run_conflict(pr) for pr in plan) if c]
    if conflicts:
        raise ValueError("; ".join(conflicts) + " (use another --out, or delete those run folders)")
    write_plan(suite, plan, out, command, options or {})
    if gpus:
        result = run_parallel(plan, out, gpus, progress=progress, log=log)
    else:
        result = run_sequential(plan, progress, log)
    if line := stale_line(result["stale"], "sweep" if suite.sweep else "bench"):
        log(line)
    return result


def run_sequential(plan: list[PlannedRun], progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Train the planned runs one after another in this process (see ``run_plan``); a Ctrl-C
    between two runs stops the suite as one during a run does (the report is still written)."""
    result = new_result()
    try:
        for i, pr in enumerate(plan, 1):
            status = run_status(pr)
            tag = f"[{i}/{len(plan)}] {pr.label}"
            skipped = skip_line(tag, pr, status, result)
            if skipped:
                log(skipped)
                continue
            cfg = train_config(pr, status)
            m = cfg.model
            if status == "rescore":
                log(rescore_line(tag, pr))
            else:
                log(f"{tag}: {VERBS.get(status, 'training')} "
                    + model_text(m.model, f"dim={m.dim} depth={m.depth}", m.layer, m.to_dict())
                    + f" ({pr.params:,} params)"
                    + (f": {change}" if (change := budget_change(pr, status)) else ""))
            try:
                summary = _train(cfg, progress)
            except KeyboardInterrupt:
                result["stopped"] = True
                log(f"{tag}: aborted; stopping the suite ({RESUME_HINT})")
                break
            except Exception as e:  # one bad run must not sink the suite
                result["failed"][pr.label] = f"{type(e).__name__}: {e}"
                log(f"{tag}: FAILED: {type(e).__name__}: {e}")
                continue
            result["rescored" if status == "rescore" else "trained"].append(pr.label)
            kind, _, index = str(summary.get("device")).partition(":")
            if kind == "cuda" and status != "rescore":  # as rnnlab.bench.parallel does: the report names each run's
                # GPU (cuda:1: the second); a re-scored run keeps the one it trained on
                i = int(index or 0)
                record_gpu(pr.dir.parent, pr.label, visible_gpus(i + 1)[i])
            complete = summary.get("complete", False)
            if complete:
                log(outcome_line(tag, summary))
            if not complete or summary.get("interrupted_at_end"):  # a Ctrl-C during the run or its end
                result["stopped"] = True
                log(f"{tag}: interrupted; stopping the suite ({RESUME_HINT})")
                break
    except KeyboardInterrupt:  # between runs (the next one's status, its plan): none is training
        result["stopped"] = True
        log(f"interrupted between runs; stopping the suite ({RESUME_HINT})")
    return result


def _train(cfg, progress: bool) -> dict[str, Any]:
    """One run (a Ctrl-C that a library wrapped comes out of ``run_training`` as the KeyboardInterrupt it
    is, which stops the suite, not as a failed run that the suite goes past)."""
    from rnnlab.train import trainer  # looked up at call time so tests can monkeypatch it

    return trainer.run_training(cfg, progress=progress)
