"""Run records: where a run's numbers go (``RunLogger`` and its trackers), and the steady-state
throughput (``Throughput``).

``RunLogger`` (main process only) makes one record per training step and one per held-out
evaluation and hands them to its trackers, each behind the same small interface (``Tracker``):

    JsonlFiles    metrics.jsonl (every step) and eval.jsonl in the run folder
    TensorBoard   scalars in tb/ (``train/loss``, ``train/grad_norm``, ``eval/bpb``, ...) and the
                  run's config as hyperparameters (TensorBoard's HPARAMS tab)
    Wandb         a Weights & Biases run (``--wandb PROJECT``; the optional ``wandb`` package)
    ProgressBar   the tqdm bar, when stderr is a terminal
    LogLines      otherwise (batch jobs, log files, ``--no-progress``): one plain line every
                  ``--log-every`` steps and one per evaluation

Trackers with ``every_step`` see every step; the others see step 1 and every ``--log-every``-th.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from rnnlab.errors import counted, naming
from rnnlab.train.config import WARMUP_STEPS, budget_clock
from rnnlab.train.rundir import EVALS, METRICS, TB, WANDB_ID, RunDir
from rnnlab.train.runtime import peak_mem_gib

# record fields that are no curve
NOT_PLOTTED = ("step", "tokens", "elapsed_s", "warmup_s", "bytes", "extra_bytes", "curve_bytes")
HPARAM_METRICS = ("train/loss", "eval/bpb", "train/tok_per_s")  # the columns of TensorBoard's HPARAMS tab


class Throughput:
    """Tokens per second of this process after its first ``WARMUP_STEPS`` steps (kernel
    compilation, autotuning, allocator growth), as the reference study left out its warm-up steps.
    (The summary's tok/s is the whole run's, over every session: ``TrainState.steady_tok_per_s``;
    this process's stands in for it in a run resumed from a checkpoint without ``warmup_tokens``.)"""

    def __init__(self):
        self.steps, self.tokens, self.seconds = 0, 0, 0.0

    def add(self, tokens: int, seconds: float) -> bool:
        """Count one step; returns whether it was a warm-up step (left out)."""
        self.steps += 1
        if self.steps <= WARMUP_STEPS:
            return True
        self.tokens += tokens
        self.seconds += seconds
        return False

    def tok_per_s(self) -> float | None:
        """Steady-state tok/s; None until a step past the warm-up (nothing steady to measure)."""
        return self.tokens / self.seconds if self.seconds > 0 else None


# ------------------------------------------------------------------------------ the interface
class Tracker:
    """One destination of a run's records. ``log(kind, record)``: ``kind`` is ``"train"`` (a step:
    step, tokens, loss, lr, grad_norm, tok_per_s, peak_mem_gib, elapsed_s, warmup_s) or ``"eval"``
    (step, tokens, val_loss, val_bpb, bytes, ...); ``flush()`` comes every
    ``--log-every`` steps, ``sync()`` before each checkpoint, ``close()`` at the end."""

    every_step = False  # True: every step's record, not only the logged steps'

    def log(self, kind: str, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        """Everything logged so far is on the disk (before a checkpoint); ``flush`` unless the
        tracker's files must survive a crash."""
        self.flush()

    def close(self) -> None:
        pass


def scalars(kind: str, record: dict[str, Any]) -> dict[str, float]:
    """The record's curves by tag, as TensorBoard and W&B name them: ``train/loss``,
    ``train/grad_norm``, ``eval/bpb`` (``val_`` dropped), ...; missing values (None) left out."""
    return {f"{kind}/{key.removeprefix('val_')}": value for key, value in record.items()
            if key not in NOT_PLOTTED and isinstance(value, (int, float)) and not isinstance(value, bool)}


def flat_config(cfg) -> dict[str, bool | int | float | str]:
    """The config as flat ``key: value`` hyperparameters (``model.dim``, ``model.layer.heads``);
    values that are no scalar become text, unset ones are left out."""
    def flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flatten(value, f"{prefix}{key}."))
            elif value is not None:
                out[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
        return out

    return flatten(cfg.to_dict(), "")


# ------------------------------------------------------------------------------ trackers
class JsonlFiles(Tracker):
    """metrics.jsonl (every step; flushed every ``--log-every`` steps) and eval.jsonl (flushed at
    once), appended to (a resumed run's files were cut back to its checkpoint by ``RunDir.start``);
    both fsync'ed before each checkpoint."""

    every_step = True

    def __init__(self, run: RunDir):
        self.files = {"train": open(run.file(METRICS), "a"), "eval": open(run.file(EVALS), "a")}

    def log(self, kind: str, record: dict[str, Any]) -> None:
        f = self.files[kind]
        with naming(f.name):
            f.write(json.dumps(record) + "\n")
            if kind == "eval":
                f.flush()

    def flush(self) -> None:
        f = self.files["train"]
        with naming(f.name):
            f.flush()

    def sync(self) -> None:
        for f in self.files.values():
            with naming(f.name):
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        for f in self.files.values():
            with naming(f.name):
                f.close()


class TensorBoard(Tracker):
    """Scalars in ``tb/`` and, once per session, the config as hyperparameters with
    ``HPARAM_METRICS`` as their metrics. A resumed run purges the events logged after its
    checkpoint. The event file is written by TensorBoard's thread; its write error comes back from the
    writer's next call (a step's scalars, a flush, the close), given the file's name there."""

    def __init__(self, run: RunDir, cfg, start_step: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(str(run.file(TB)), purge_step=start_step + 1 if start_step else None)
        events = self.writer.file_writer.event_writer
        self.file = getattr(events, "_file_name", None) or run.file(TB)  # (private to tensorboard: else the folder)
        # the thread's error is raised again by the writer's next call, so it prints no traceback of its own
        # (a thread's _invoke_excepthook is CPython's; where tensorboard or Python has no such names, it prints)
        worker = getattr(getattr(events, "_async_writer", None), "_worker", None)
        if hasattr(worker, "_invoke_excepthook"):
            worker._invoke_excepthook = lambda thread: None
        for summary in hparams(flat_config(cfg), {tag: 0.0 for tag in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)

    def log(self, kind: str, record: dict[str, Any]) -> None:
        with naming(self.file):
            for tag, value in scalars(kind, record).items():
                self.writer.add_scalar(tag, value, record["step"])

    def flush(self) -> None:
        with naming(self.file):
            self.writer.flush()

    def close(self) -> None:
        with naming(self.file):
            self.writer.close()


class Wandb(Tracker):
    """A Weights & Biases run in project ``cfg.run.wandb``, named after the run folder, with the
    config; W&B keeps its files in the run folder (``wandb/``; ``WANDB_MODE=offline`` logs there
    only). A resumed run continues the same W&B run (its id is kept in ``WANDB_ID``); steps a
    crashed session logged after its last checkpoint stay in W&B's history.

    The curves' x axis is the training step, logged as ``STEP_KEY``, not W&B's own step: W&B drops
    records logged at a step below its last one, which is what a resumed run does from its
    checkpoint on (and a re-score's final evaluation, at the run's last step)."""

    STEP_KEY = "trainer/step"

    def __init__(self, run: RunDir, cfg, resumed: bool):
        wandb = import_wandb()
        id_file = run.file(WANDB_ID)
        run_id = id_file.read_text().strip() if resumed and id_file.exists() else secrets.token_hex(6)
        id_file.write_text(run_id + "\n")
        try:
            self.run = wandb.init(project=cfg.run.wandb, name=run.path.name, id=run_id, resume="allow",
                                  dir=str(run.path), config=cfg.to_dict())
        except wandb.errors.Error as e:  # not logged in, no network, ...
            raise ValueError(f"W&B could not start a run: {e} (WANDB_MODE=offline logs locally; "
                             "--wandb '' trains without W&B, a resumed run too)") from None
        self.run.define_metric(self.STEP_KEY)
        for kind in ("train", "eval"):
            self.run.define_metric(f"{kind}/*", step_metric=self.STEP_KEY)

    def log(self, kind: str, record: dict[str, Any]) -> None:
        self.run.log({**scalars(kind, record), self.STEP_KEY: record["step"]})

    def close(self) -> None:
        self.run.finish()


def import_wandb():
    """The ``wandb`` module, or a one-line error saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs the wandb package: pip install wandb (rnnlab's extra [wandb])") from None
    return wandb


def eval_line(record: dict[str, Any]) -> str:
    """One held-out evaluation as text (the bar and the log lines)."""
    line = (f"eval step {record['step']}: val_loss {record['val_loss']:.4f}  val_bpb {record['val_bpb']:.4f}"
            f"  ({counted(record['bytes'], 'held-out byte')})")
    if record.get("val_bpb_train_point") is not None:
        line += f"  at the train point: val_bpb {record['val_bpb_train_point']:.4f}"
    if record.get("curve_val_bpb") is not None:
        line += f"; the curve's {counted(record['curve_bytes'], 'byte')}: val_bpb {record['curve_val_bpb']:.4f}"
    if record.get("extra_val_bpb") is not None:
        line += (f"; {Path(record['extra_data']).name}: val_bpb {record['extra_val_bpb']:.4f}"
                 f"  ({counted(record['extra_bytes'], 'byte')})")
        if record.get("extra_val_bpb_train_point") is not None:
            line += f"  at the train point: val_bpb {record['extra_val_bpb_train_point']:.4f}"
    return line


class ProgressBar(Tracker):
    """The tqdm bar (loss and tok/s of the last step); evaluations are printed above it."""

    every_step = True

    def __init__(self, cfg, start_step: int, total: int | None):
        from tqdm.auto import tqdm

        m = cfg.model
        self.bar = tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True,
                        desc=f"{m.model} {m.dim}x{m.depth}")  # width x depth, as the run folder's name

    def log(self, kind: str, record: dict[str, Any]) -> None:
        if kind == "eval":
            self.bar.write(eval_line(record))
            return
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tok_per_s']:,.0f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class LogLines(Tracker):
    """One plain, timestamped line every ``--log-every`` steps and one per evaluation, for batch
    jobs and log files (torchtitan's style)::

        2026-01-31 12:00:05 step 120/1000  loss 1.2345  lr 3.00e-04  grad_norm 0.812  tok/s 40,213  mem 12.3 GiB  elapsed 0:02:05  eta 0:14:40

    tok/s is the mean since the previous line over training time (evaluations and checkpoints not
    counted); the ETA assumes the pace of those steps, leaving out this process's first
    ``WARMUP_STEPS`` (compilation, autotuning), for the rest of the step budget (no ETA while only
    those have run), or gives what is left of the --minutes budget; mem is the peak CUDA memory (no
    such column on CPU)."""

    def __init__(self, total_steps: int | None, budget_s: float | None, stream: TextIO | None = None,
                 start: dict[str, Any] | None = None):
        """``start``: the run's progress when this process began (a resumed run's ``step``,
        ``tokens``, ``elapsed_s`` and ``warmup_s``; None: a fresh run): the first line's pace is this
        process's."""
        self.total, self.budget_s = total_steps, budget_s
        self.stream = stream  # None: sys.stderr as each line is written (a closed pipe's stand-in)
        self.previous = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "warmup_s": 0.0, **(start or {})}
        first = self.previous["step"]
        self.warmup = (first, first + WARMUP_STEPS)  # this process's warm-up steps: (first - 1, last]

    def log(self, kind: str, record: dict[str, Any]) -> None:
        line = eval_line(record) if kind == "eval" else self.step_line(record)
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=self.stream or sys.stderr, flush=True)

    def step_line(self, r: dict[str, Any]) -> str:
        prev, self.previous = self.previous, r
        seconds = r["elapsed_s"] - prev["elapsed_s"]
        tok_s = (r["tokens"] - prev["tokens"]) / seconds if seconds > 0 else r["tok_per_s"]
        if self.total is not None:
            lo, hi = self.warmup
            warm_steps = max(0, min(r["step"], hi) - max(prev["step"], lo))
            steady_s = seconds - (r.get("warmup_s", 0.0) - prev.get("warmup_s", 0.0))
            steps = r["step"] - prev["step"] - warm_steps
            eta = (self.total - r["step"]) * steady_s / steps if steps > 0 else None  # at the steady pace
        else:
            spent = budget_clock(r["elapsed_s"], r.get("warmup_s"))
            eta = max(0.0, self.budget_s - spent) if self.budget_s is not None else None
        parts = [f"step {r['step']}" + (f"/{self.total}" if self.total else ""), f"loss {r['loss']:.4f}",
                 f"lr {r['lr']:.2e}", f"grad_norm {r['grad_norm']:#.3g}".rstrip("."), f"tok/s {tok_s:,.0f}"]
        if r["peak_mem_gib"] is not None:
            parts.append(f"mem {r['peak_mem_gib']:.1f} GiB")
        parts.append(f"elapsed {duration(r['elapsed_s'])}")
        if eta is not None:
            parts.append(f"eta {duration(eta)}")
        return "  ".join(parts)


def duration(seconds: float) -> str:
    """``h:mm:ss``."""
    return str(datetime.timedelta(seconds=round(seconds)))


# ------------------------------------------------------------------------------ the logger
class RunLogger:
    """Makes each step's record and hands it, and each evaluation, to the trackers (main process
    only: on the other ranks, ``enabled=False``, it has none). ``progress``: the bar when stderr
    is a terminal; without it, or when stderr is a file or pipe, plain log lines."""

    def __init__(self, run: RunDir, cfg, device: torch.device, start: dict[str, Any], total: int | None,
                 progress: bool, enabled: bool = True):
        """``start``: the run's progress as this process begins (``TrainState.progress``: its
        ``step``, ``tokens``, ``elapsed_s`` and ``warmup_s``; all 0 for a fresh run)."""
        self.log_every = cfg.run.log_every
        self.tokens_per_step = cfg.tokens_per_step()
        self.device = device
        self.trackers: list[Tracker] = build_trackers(run, cfg, start, total, progress) if enabled else []
        self.unlogged: dict[str, Any] | None = None  # the last step's record, when only every-step trackers got it

    def step(self, state, result, last: bool = False) -> None:
        """Record the step ``state`` just finished (``result``: its loss, LR, gradient norm, time);
        logged every ``log_every`` steps, at the first and at the ``last`` (the budget spent or a
        stop asked for)."""
        if not self.trackers:
            return
        record = {"step": state.step, "tokens": state.tokens, "loss": result.loss, "lr": result.lr,
                  "grad_norm": result.grad_norm,
                  "tok_per_s": self.tokens_per_step / result.seconds if result.seconds > 0 else None,
                  "peak_mem_gib": peak_mem_gib(self.device), "elapsed_s": state.elapsed_s,
                  "warmup_s": state.warmup_s}
        logged = state.step % self.log_every == 0 or state.step == 1 or last
        for tracker in self.trackers:
            if tracker.every_step or logged:
                tracker.log("train", record)
        self.unlogged = None if logged else record
        if logged:
            for tracker in self.trackers:
                tracker.flush()

    def stopped(self) -> None:
        """A stop (Ctrl-C) ended the run after the last step: log that step everywhere if ``step``
        did not (the stop came during its evaluation or checkpoint, after it was recorded)."""
        record, self.unlogged = self.unlogged, None
        if record is None:
            return
        for tracker in self.trackers:
            if not tracker.every_step:
                tracker.log("train", record)
                tracker.flush()

    def eval(self, record: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log("eval", record)

    def sync(self) -> None:
        """Put every record so far on the disk; called before each checkpoint, so a resumed run
        finds every step up to its checkpoint in the logs."""
        for tracker in self.trackers:
            tracker.sync()

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()

    def close_bar(self) -> None:
        """Close the progress bar, if any, and keep the other trackers: a line printed next starts
        a line of its own (the end of a rank from ``LostPeerWatch``'s thread, the logs still open)."""
        for bar in [t for t in self.trackers if isinstance(t, ProgressBar)]:
            self.trackers.remove(bar)
            bar.close()


def build_trackers(run: RunDir, cfg, start: dict[str, Any], total: int | None, progress: bool) -> list[Tracker]:
    """W&B when asked, the JSONL files, TensorBoard (skipped with a note when it cannot start),
    and the bar or the log lines."""
    start_step = start["step"]
    trackers: list[Tracker] = [Wandb(run, cfg, resumed=start_step > 0)] if cfg.run.wandb else []
    trackers.append(JsonlFiles(run))
    try:
        trackers.append(TensorBoard(run, cfg, start_step))
    except Exception as e:  # TensorBoard is a convenience; never fail a run over it
        print(f"rnnlab train: TensorBoard disabled ({e})", file=sys.stderr)
    if progress and sys.stderr.isatty():
        trackers.append(ProgressBar(cfg, start_step, total))
    else:
        kind, budget = cfg.budget.chosen()
        since = {k: start[k] for k in ("step", "tokens", "elapsed_s", "warmup_s")}
        trackers.append(LogLines(total, budget * 60 if kind == "minutes" else None, start=since))
    return trackers
