"""Run a suite's planned runs several at a time, one process per GPU (``rnnlab bench --gpus N``).

Each run is an ordinary ``rnnlab train --config ...`` process whose ``CUDA_VISIBLE_DEVICES`` names
one GPU, so every kernel, allocator and compile cache stays on that device and a crash takes
down one run only. At most one run per GPU at a time; a GPU takes the next pending run as soon
as its run ends. As in the one-process path (``runner.run_sequential``), complete runs are skipped,
partial runs resumed from their checkpoints (complete ones given a larger budget extended from
them), and complete runs whose final evaluation lacks what
the command asks for re-scored from theirs; the GPU each run trained on is recorded in
``OUT/suite.json`` (``runs[].gpu``) and shown in the report. Each process's output goes to
``OUT/logs/<run>.log``. Each process runs in a session of its own, so a Ctrl-C (in a terminal, or
a time limit's signal to the bench's process group) reaches it once, passed on by the bench (as a
SIGTERM, see ``STOP``), and it saves its checkpoint instead of taking a second delivery as
"abort"; a ``kill -9`` of the bench, which it cannot pass on, ends them with it (Linux), so none
trains on alone holding its folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rnnlab.bench.suite import (LOGS, RESUME_HINT, SUITE_FILE, VERBS, PlannedRun, budget_change, new_result,
                                outcome_line, rescore_line, run_status, skip_line, train_config)
from rnnlab.signals import ended_with_this_process
from rnnlab.train.durable import interrupts_deferred
from rnnlab.train.rundir import read_json, write_json

POLL_S = 0.2


def visible_gpus(n: int) -> list[str]:
    """The first ``n`` GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (a user's
    own ``CUDA_VISIBLE_DEVICES=2,3`` is respected: ``--gpus 2`` then uses 2 and 3; one naming a GPU
    twice is refused)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        twice = next((d for i, d in enumerate(ids) if d in ids[:i]), None)
        if twice is not None:  # one GPU taken as two would train two runs at once, the bench holding one
            raise ValueError(f"CUDA_VISIBLE_DEVICES names GPU {twice} twice ({env}): name each GPU once")
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    if n > len(ids):
        raise ValueError(f"--gpus {n} asks for more GPUs than the {len(ids)} visible")
    return ids[:n]


@dataclass
class Job:
    """One training process: the planned run, its GPU, the process and its log file."""

    index: int
    run: PlannedRun
    gpu: str
    proc: subprocess.Popen
    log_path: Path
    started: float
    status: str = "new"  # its folder's run_status when launched ("rescore": re-scored, no step trained)
    before: dict[str, Any] | None = None  # its folder's summary.json when launched (None: none)


def launch(pr: PlannedRun, gpu: str, out: Path, status: str, progress: bool) -> tuple[subprocess.Popen, Path]:
    """Start ``rnnlab train`` for ``pr`` (its folder's ``run_status``) on ``gpu``; its config goes
    to ``OUT/logs/<run>.json``."""
    logs = out / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    cfg = train_config(pr, status)
    cfg_path = logs / f"{pr.label}.json"
    cfg_path.write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    cmd = [sys.executable, "-m", "rnnlab", "train", "--config", str(cfg_path)]
    cmd += [] if progress else ["--no-progress"]
    log_path = logs / f"{pr.label}.log"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu,
           **ended_with_this_process()}  # a kill -9 of the bench ends its runs (signals.ends_with_parent)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=hears_ctrl_c)
    return proc, log_path


def hears_ctrl_c() -> None:
    """In a run's process before it starts: Ctrl-C (SIGINT) at its default, so that Python gives
    the run its Ctrl-C handler. A bench started where Ctrl-C is ignored (``cmd &`` in a script)
    would pass the ignore on, and the Ctrl-C it forwards on a stop would be lost on a run still
    starting (before the trainer takes SIGINT), which then trained its whole budget."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def record_gpu(out: Path, label: str, gpu: str) -> None:
    """Write the GPU a run used into ``OUT/suite.json``."""
    path = out / SUITE_FILE
    doc = read_json(path) or {}
    for entry in doc.get("runs", []):
        if entry.get("dir") == label:
            entry["gpu"] = gpu
    write_json(path, doc)


def last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"


def finish(job: Job, result: dict[str, Any], log: Callable[[str], None], total: int) -> None:
    """Record a finished process in ``result`` (trained / failed / stopped) and log one line. A run
    stopped (exit 130) finished only if this process wrote its complete summary.json, as the
    one-process path (``runner.run_sequential``) takes the summary its training returns: a complete
    run extended or re-scored keeps its old complete summary.json until its process rewrites it, so
    one stopped before then is interrupted, not done at its old outcome."""
    tag = f"[{job.index}/{total}] {job.run.label} (GPU {job.gpu}, {time.time() - job.started:.0f} s)"
    code = job.proc.returncode
    written = job.run.rundir.summary()
    summary = written or {}
    if summary.get("complete") and (code == 0 or code == 130 and written != job.before):
        result["rescored" if job.status == "rescore" else "trained"].append(job.run.label)
        log(outcome_line(tag, summary))
        if summary.get("interrupted_at_end"):  # a Ctrl-C at its end, after which it finished
            result["stopped"] = True
            log(f"{tag}: Ctrl-C at its end; stopping the suite ({RESUME_HINT})")
    elif code == 130:
        result["rescored" if job.status == "rescore" else "trained"].append(job.run.label)
        result["stopped"] = True
        # none where the stop came as it set up, or a second one abandoned its only checkpoint
        kept = "checkpoint kept" if job.run.rundir.has_checkpoint() else "no checkpoint was saved"
        log(f"{tag}: interrupted; {kept} ({RESUME_HINT})")
    elif code == -STOP and result["stopped"]:  # the bench's stop reached it before rnnlab handled stops
        log(f"{tag}: stopped as it started, before it trained; nothing to save ({RESUME_HINT})")
    else:
        result["failed"][job.run.label] = f"exit {code}: {last_line(job.log_path)}"
        log(f"{tag}: FAILED (exit {code}): {last_line(job.log_path)}; log {job.log_path}")


def next_run(pending: list[tuple[int, PlannedRun]], result: dict[str, Any], log: Callable[[str], None],
             total: int) -> tuple[int, PlannedRun, str] | None:
    """The next pending run that still needs training or re-scoring (complete ones are skipped and
    logged, as ``suite.skip_line`` says)."""
    while pending:
        i, pr = pending.pop(0)
        status = run_status(pr)
        skipped = skip_line(f"[{i}/{total}] {pr.label}", pr, status, result)
        if skipped is None:
            return i, pr, status
        log(skipped)
    return None


def run_parallel(plan: list[PlannedRun], out: Path, gpus: list[str], *, progress: bool = False,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Train every planned run that is not complete, up to ``len(gpus)`` at once. A Ctrl-C stops
    launching, lets the running processes save their checkpoints, and marks the suite stopped; a
    failure of the bench itself stops them the same way before it is raised."""
    result = new_result()
    pending = list(enumerate(plan, 1))
    running: dict[str, Job] = {}
    try:
        while True:
            for gpu in [g for g in gpus if g not in running and not result["stopped"]]:
                nxt = next_run(pending, result, log, len(plan))
                if nxt is None:
                    break
                i, pr, status = nxt
                before, change = pr.rundir.summary(), budget_change(pr, status)  # read before the run rewrites it
                with interrupts_deferred():  # a Ctrl-C as it starts waits until it is known, then stops it
                    proc, log_path = launch(pr, gpu, out, status, progress)
                    running[gpu] = Job(i, pr, gpu, proc, log_path, time.time(), status, before)
                if status == "rescore":  # the run keeps the GPU it trained on
                    log(f"{rescore_line(f'[{i}/{len(plan)}] {pr.label}', pr)} on GPU {gpu} (log {log_path})")
                    continue
                record_gpu(out, pr.label, gpu)
                log(f"[{i}/{len(plan)}] {pr.label}: {VERBS.get(status, 'training')} "
                    f"on GPU {gpu} ({pr.params:,} params; log {log_path})"
                    + (f": {change}" if change else ""))
            if not running:
                break
            time.sleep(POLL_S)
            for gpu, job in list(running.items()):
                if job.proc.poll() is not None:
                    with interrupts_deferred():  # an ended run is recorded, whenever a Ctrl-C comes
                        del running[gpu]
                        finish(job, result, log, len(plan))
    except KeyboardInterrupt:
        result["stopped"] = True
        log("interrupted: waiting for the running runs to save their checkpoints (Ctrl-C again to abort them)")
        stop_running(running, result, log, len(plan))
    except BaseException as e:  # the bench itself failed (disk full writing logs/): its runs save first
        if running:
            log(f"the bench failed ({type(e).__name__}: {e}): stopping the running runs, which save their "
                f"checkpoints (Ctrl-C again to abort them)")
            stop_running(running, result, log, len(plan))
        raise
    return result


def stop_running(running: dict[str, Job], result: dict[str, Any], log: Callable[[str], None], total: int) -> None:
    """Stop the running runs (each saves its checkpoint), wait for them and record each as it ends; a
    Ctrl-C meanwhile is passed on as an abort (the runs keep their last checkpoint). One that comes while
    a run is recorded waits until it is (as in ``run_parallel``), then is passed on the same way: none
    escapes with runs unrecorded and the suite's report unwritten."""
    signal_each(running.values(), STOP)
    while running:
        try:
            for gpu, job in list(running.items()):
                job.proc.wait()
                with interrupts_deferred():  # an ended run is recorded, whenever a Ctrl-C comes
                    del running[gpu]
                    finish(job, result, log, total)
        except KeyboardInterrupt:  # a second Ctrl-C: the runs still going abort, keeping their last checkpoint
            signal_each(running.values(), ABORT)


# What the bench passes on to its runs. A first stop is a SIGTERM, which a run takes as its first
# Ctrl-C (rnnlab.signals.stops_as_ctrl_c): a scheduler that signals every process of a job (Slurm's
# scancel, a cgroup's stop) reaches each run with a SIGTERM of its own too, and two SIGTERMs close
# together are one stop, where the SIGINT passed on before was a second Ctrl-C that aborted the run.
# A second stop is a SIGINT: a second Ctrl-C, whatever the first was, aborts the run.
STOP, ABORT = signal.SIGTERM, signal.SIGINT


def signal_each(jobs, signum: int) -> None:
    """Send ``signum`` to each training process still running (each has a session of its own)."""
    for job in jobs:
        if job.proc.poll() is None:
            job.proc.send_signal(signum)
