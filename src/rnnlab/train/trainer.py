"""The training loop: ``Trainer(cfg).train()`` trains one model and returns its summary dict
(``run_training(cfg)`` does both).

``Trainer.train`` reads top to bottom: until the budget (steps, minutes or tokens) is spent or
Ctrl-C is pressed, take the batch of this step (a pure function of seed and step, so resuming
needs only the step), run ``train_step`` (forward, backward, optional clipping, optimizer step),
log it, and evaluate / checkpoint on their cadence; at the end evaluate and checkpoint once
more and write the summary. Everything the loop changes is one ``TrainState``, exactly what a
checkpoint saves; the other parts are the ``Checkpointer``, the held-out ``evaluate`` and the
``RunLogger``, and the run folder is a ``RunDir``.

Protocol defaults follow the reference study's Table A (rnnlab.train.config, README): pure bf16 weights,
Schedule-Free AdamW lr 3e-4 wd 0.1 (but not on the parameters layers mark ``_no_weight_decay``
unless ``decay_marked``; rnnlab.train.optim), no clipping, seed 42, batch 16 x 512; the
reported ``loss`` is the mean of the last 100 training losses (at the optimizer's train point y).

Under torchrun (``WORLD_SIZE`` > 1, see ``rnnlab.train.distributed`` and docs/distributed.md)
every rank runs this loop on its ``batch_size / world_size`` share of each GLOBAL batch; the
logged loss is the mean over ranks, tok/s counts global tokens, and rank 0 alone logs,
evaluates and writes checkpoints while the others wait (under FSDP2 every rank takes part in
evaluation and in gathering the checkpoint, as the weights are sharded).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

import torch
from torch import nn

from rnnlab.data import BatchStream, file_split, load_splits
from rnnlab.errors import amount, counted
from rnnlab.models.config import model_options_off_default
from rnnlab.models.params import count_params
from rnnlab.ops.dtypes import autocast
from rnnlab.signals import closed_pipe_stops, ctrl_c_unwrapped, reclaim_handlers, take_swallowed_ctrl_c
from rnnlab.train import distributed as dist
from rnnlab.train.checkpoint import CheckpointWriteError, unless_committed
from rnnlab.train.config import DataConfig, TrainConfig, budget_clock
from rnnlab.train.cuda_graph import GraphedForwardBackward
from rnnlab.train.metrics import RunLogger, Throughput, import_wandb
from rnnlab.train.optim import (bf16_rounds_away_at, build_optimizer, current_lr, decay_rates, eval_weights,
                                is_schedulefree, rounded_away)
from rnnlab.train.peers import LostPeerWatch, end_lost_rank
from rnnlab.train.rundir import RunDir, corpus_record, warn
from rnnlab.train.runtime import (build_model, check_memory, check_trainable, env_info, eval_batch, evaluate_run,
                                  final_scores_lacking, grad_accum_can_rise, is_out_of_memory, peak_mem_gib,
                                  pick_device, seed_everything, sync, wrap_model)

# what a summary measures of the sessions that trained, kept by a session that trains no step
SESSION_RATES = ("tok_per_s", "wall_s", "tok_per_wall_s")  # of the steps: a checkpoint's progress gives them too
SESSION_DEVICE = ("peak_mem_gib", "device", "world_size", "distributed")  # of the processes that trained
SESSION_MEASURED = SESSION_RATES + SESSION_DEVICE
LOSS_WINDOW = 100  # summary loss = mean of the last 100 train losses (the reference's)
# a model this large that --device auto put on the CPU (no GPU found) gets a note: a 400M suite
# started on a laptop would otherwise just train, days long, without a word
CPU_NOTE_PARAMS = 50_000_000


class StepResult(NamedTuple):
    """What one optimizer step reports: the batch's mean loss (over ranks), the LR it used, the
    gradient norm before clipping, and its time in seconds."""

    loss: float
    lr: float
    grad_norm: float
    seconds: float


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss or weights). The last good checkpoint is left untouched."""


class OutOfMemory(ValueError):
    """A step or an evaluation ran out of device memory; the message names the knobs to lower."""


class LostRank(RuntimeError):
    """Under torchrun, a collective (a step's gradients, the ranks' agreement, a checkpoint's
    gathering or its barrier, a start-up collective) failed: another rank ended (killed, crashed)
    or cannot be reached. Nothing more can be saved; the message names the checkpoint kept."""


class EvaluationFailed(NamedTuple):
    """What rank 0 sends the ranks waiting for its evaluation (DDP) in place of the record when the
    evaluation failed there (``interrupted``: by a Ctrl-C), so that they go on with it (the final
    checkpoint, written even so, is a collective) instead of waiting for an answer that never comes."""

    interrupted: bool
    cause: str


class PeerEvaluationFailed(RuntimeError):
    """Raised on the ranks other than 0 (DDP) when rank 0's evaluation failed (``EvaluationFailed``)."""


def collective_failure_phrase(failed: tuple[str, bool]) -> str:
    """``dist.collective_failure``'s answer as the start of a message (what ``LostRank`` says)."""
    cause, gone = failed
    return f"another rank ended ({cause})" if gone else f"a collective with the other ranks failed ({cause})"


@dataclass
class TrainState:
    """Everything a checkpoint saves, and nothing else: the model, optimizer and LR schedule, and
    how far training got (the RNG states are saved with it; they live in torch/numpy/random)."""

    model: nn.Module
    optimizer: Any
    scheduler: Any | None
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0  # training time (eval and checkpoints not counted)
    wall_s: float = 0.0  # wall-clock time of the run (start-up, compilation, eval, checkpoints included)
    warmup_s: float = 0.0  # training time of each process's first steps (compilation): outside --minutes
    warmup_tokens: int | None = 0  # their tokens (None: resumed from a checkpoint that did not count them)
    losses: deque = field(default_factory=lambda: deque(maxlen=LOSS_WINDOW))
    last_eval: dict[str, Any] | None = None

    def advance(self, loss: float, tokens: int, seconds: float, warmup: bool = False) -> None:
        """One step done; ``warmup``: it was one of this process's first steps (compilation,
        autotuning), whose time a ``--minutes`` budget leaves out."""
        self.step += 1
        self.tokens += tokens
        self.elapsed_s += seconds
        self.warmup_s += seconds if warmup else 0.0
        if warmup and self.warmup_tokens is not None:
            self.warmup_tokens += tokens
        self.losses.append(loss)

    def steady_tok_per_s(self) -> float | None:
        """Tokens per second of training time with every process's first steps left out, over
        all the run's sessions; None before any step past them, or when a checkpoint from before
        ``warmup_tokens`` leaves their tokens unknown."""
        seconds = self.elapsed_s - self.warmup_s
        if self.warmup_tokens is None or seconds <= 0:
            return None
        return (self.tokens - self.warmup_tokens) / seconds

    def progress(self, complete: bool) -> dict[str, Any]:
        """The plain-data part, as ``state.pt`` stores it."""
        return {"step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed_s, "wall_s": self.wall_s,
                "warmup_s": self.warmup_s, "warmup_tokens": self.warmup_tokens,
                "losses": list(self.losses), "last_eval": self.last_eval, "complete": complete}

    def load_progress(self, p: dict[str, Any]) -> None:
        self.step, self.tokens, self.elapsed_s = int(p["step"]), int(p["tokens"]), float(p["elapsed_s"])
        self.wall_s = float(p.get("wall_s", self.elapsed_s))  # checkpoints before wall_s: training time
        self.warmup_s = float(p.get("warmup_s", 0.0))
        self.warmup_tokens = p.get("warmup_tokens")
        self.losses.extend(p["losses"])
        self.last_eval = p.get("last_eval")


# what a first Ctrl-C says while a failure or an abort that ends the run is being recorded (Trainer.train)
ENDING = "the run is ending (its line follows): recording how first"


class StopOnInterrupt:
    """First Ctrl-C (SIGINT): finish the current step, save a checkpoint, return cleanly; once
    the budget is spent (``finishing``), finish the final evaluation and checkpoint; while a
    failure or an abort is recorded (``ending``), record it. ``notice`` is the line a first Ctrl-C prints
    for each. A second Ctrl-C aborts at once (KeyboardInterrupt; the last checkpoint is kept). A stop
    that came before and that a library swallowed (``rnnlab.signals.take_swallowed_ctrl_c``) is a first
    Ctrl-C from the start. ``says``: whether the stop's and the spent budget's notices are printed
    (under torchrun rank 0 alone says them, for a terminal's Ctrl-C reaches every rank); a failure's
    is printed by every rank, each recording its own."""

    def __init__(self, says: bool = True):
        self.requested = False
        self.notice = "stopping after this step to save a checkpoint"
        self.says = says
        self.unheard = False  # a stop no one pressed (the output's pipe closed): the first Ctrl-C is its echo
        self._prev = None

    def __enter__(self) -> "StopOnInterrupt":
        try:
            self._prev = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling here
            self._prev = None
        if take_swallowed_ctrl_c(self._prev):  # a stop as the run started that a library swallowed
            self._first()
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and not self.unheard:
            raise KeyboardInterrupt
        self.unheard = False
        self._first()

    def _first(self) -> None:
        if not self.requested:
            self.requested = True
            if self.says:
                print(f"\nrnnlab train: {self.notice} (Ctrl-C again to abort)", file=sys.stderr)

    def output_closed(self) -> None:
        """The pipe the run's output went to lost its reader (``| head``, or ``| tee`` killed by the
        terminal's Ctrl-C before it reached the run): a first Ctrl-C, said on whichever output is
        left; the next Ctrl-C is a first one too (no one saw "Ctrl-C again to abort"), not an abort."""
        if not self.requested:
            self.notice = f"the reader of its output has gone: {self.notice}"
            self.unheard = True
        self._first()

    def finishing(self) -> None:
        """The budget is spent: a first Ctrl-C from here on lets the run finish, not lose its end;
        one pressed during the step that spent the budget is told so now."""
        self.notice = "the budget is spent: finishing the final evaluation and checkpoint first"
        if self.requested and self.says:
            print(f"\nrnnlab train: {self.notice}", file=sys.stderr)

    def ending(self) -> None:
        """The run ends on a failure or an abort: a stop from here on (torchrun's SIGTERM after a peer's
        end, even after an earlier Ctrl-C) is a first one again, noted while the ending is recorded."""
        self.requested = False
        self.notice = ENDING
        self.says = True

    def __exit__(self, *exc) -> None:
        # the handler before comes back unless this one was replaced since (ignore_stops: a peer is gone)
        if self._prev is not None and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._prev)


def resolve_config(cfg: TrainConfig, world: int | None = None) -> TrainConfig:
    """``cfg.resolve()`` plus what depends on the process layout: the global batch must split
    evenly over the ranks, and ddp is the default wrapper. ``world``: the number of processes
    (default: this process's torchrun world; ``--gpus N`` checks its N before launching)."""
    cfg = cfg.resolve()
    world = dist.context().world_size if world is None else world
    if world > 1:
        per_rank = dist.per_rank_batch(cfg.data.batch_size, world)
        if per_rank % cfg.data.grad_accum:
            raise ValueError(f"grad_accum ({cfg.data.grad_accum}) must divide the batch of each process "
                             f"(batch_size {cfg.data.batch_size} / {world} processes = {per_rank})")
        cfg.run.distributed = cfg.run.distributed or "ddp"
        if cfg.run.cuda_graph:
            raise ValueError(f"cuda_graph runs in one process, not in {world} (torchrun); drop --cuda-graph")
    return cfg


def open_data(cfg: TrainConfig, ctx: dist.DistContext):
    """``(held-out split, the extra held-out file's split or None, this rank's BatchStream)``;
    fails on a corpus too short for seq_len."""
    splits = load_splits(cfg.data.path, cfg.data.val_path, cfg.data.val_fraction)
    stream = BatchStream(splits.train, dist.per_rank_batch(cfg.data.batch_size, ctx.world_size),
                         cfg.data.seq_len, cfg.run.seed, ctx.rank, ctx.world_size)
    extra = file_split(cfg.data.extra_val_path, "extra_val") if cfg.data.extra_val_path else None
    # what makes each held-out split larger: its own file, or the share of --data held out
    larger = ("a larger --val-data" if cfg.data.val_path else "your own --data FILE" if cfg.data.path is None
              else "a larger --val-fraction or --val-data FILE")  # the bundled sample's held-out file is fixed
    for split, fix in ((splits.val, larger), (extra, "a larger --extra-val-data")):
        if split is not None and len(split) < cfg.data.seq_len + 1:
            raise ValueError(f"{split.described()} has {counted(len(split), 'byte')}, fewer than "
                             f"seq_len+1 = {cfg.data.seq_len + 1}; use a smaller --seq-len or {fix}")
    unsplit = ("--val-data gives the held-out split" if cfg.data.val_path else
               "the bundled sample has its own held-out file" if cfg.data.path is None else None)
    if unsplit and cfg.data.val_fraction != DataConfig().val_fraction and ctx.rank == 0:
        warn(f"--val-fraction {cfg.data.val_fraction:g} has no effect: {unsplit} (it splits a --data file "
             "given without --val-data)")
    for flag, path in (("--val-data", cfg.data.val_path), ("--extra-val-data", cfg.data.extra_val_path)):
        if path and ctx.rank == 0 and os.path.samefile(path, splits.train.path):
            warn(f"{flag} {path} is the training file itself: its held-out scores are of bytes the model "
                 "trains on, not held out")
    return splits.val, extra, stream


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``grads`` as one vector, a float32 scalar (a DTensor under FSDP2): one
    fused norm a dtype, each accumulated and returned in float32, so pure bf16's 16-bit gradients
    are not measured in bf16 (``get_total_norm`` rounds each tensor's norm and the total to the
    gradients' dtype: ~0.4% off, in the logged norm and the clipping scale)."""
    if not grads:
        return torch.zeros(())
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    norms = [n for group in by_dtype.values() for n in torch._foreach_norm(group, 2, dtype=torch.float32)]
    return torch.linalg.vector_norm(torch.stack(norms))


class Trainer:
    """One training run: built from a config (checking the data and memory, taking the run folder,
    restoring the checkpoint when resuming), then ``train()``, which lets go of the folder.
    ``progress``: a progress bar when stderr is a terminal; without it, or when stderr is a file
    or pipe, plain log lines (``RunLogger``)."""

    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        self.started = time.perf_counter()  # this session's wall clock starts with its set-up
        self.cfg = cfg = resolve_config(cfg)
        if cfg.run.wandb:
            import_wandb()  # a missing package fails before the run folder is touched
        self.ctx = ctx = dist.context()
        # a rank of several has nothing to save before its first step: a stop ends it at once, where
        # a Python handler would wait for a collective that waits for a dead peer (stops_end_at_once)
        with dist.stops_end_at_once(ctx):
            try:
                self._start(progress)
            except RuntimeError as e:
                failed = self.lost_peers_ignoring_stops(e)
                if failed is None:
                    raise
                raise LostRank(f"{collective_failure_phrase(failed)} while the run started, before its first step: "
                               "nothing to save") from e

    def lost_peers_ignoring_stops(self, e: RuntimeError) -> tuple[str, bool] | None:
        """``dist.collective_failure(e)`` for a rank of several, except for an out-of-memory error
        (its own message names the knobs). When ``e`` is a failed collective, this also makes the
        rank ignore stops from here on (``dist.ignore_stops``): torchrun's, close behind a peer's
        death, would come as a Ctrl-C with nothing left to save."""
        failed = dist.collective_failure(e) if self.ctx.enabled and not is_out_of_memory(e) else None
        if failed is not None:
            dist.ignore_stops()
        return failed

    def _start(self, progress: bool) -> None:
        """``__init__``'s body: the process group, the data, the run folder, the model."""
        cfg, ctx = self.cfg, self.ctx
        self.device = pick_device(cfg.run.device) if ctx.world_size == 1 else dist.init_distributed(cfg.run.device)
        if cfg.run.cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device; this run's device is {self.device} "
                             "(use --no-cuda-graph)")
        self.sharded = ctx.world_size > 1 and cfg.run.distributed == "fsdp2"  # all ranks evaluate/checkpoint
        # a bad corpus fails before the folder is touched
        self.val_split, self.extra_val_split, self.stream = open_data(cfg, ctx)
        check_trainable(cfg, self.device)  # before counting builds the model (an official layer warns off CUDA)
        self.n_params = count_params(cfg.model.on_device(self.device))  # the layers build_model builds
        check_memory(cfg, self.n_params, self.device, ctx.world_size)
        self.rundir = RunDir(cfg.run.out)
        # rank 0's alone: it checks the folder against it and records it (the fingerprints read each split)
        self.corpus = corpus_record(self.stream.split, self.val_split) if ctx.is_main else None
        # rank 0 locks the folder
        resume_from = ctx.broadcast_object(self.rundir.prepare(cfg, self.corpus) if ctx.is_main else None)
        try:
            self._build(progress, resume_from)
        except BaseException as e:
            if resume_from is None and ctx.is_main:  # nothing trained: leave no half-started run behind
                self.rundir.abandon_fresh()
            else:
                self.rundir.release()
            if is_out_of_memory(e):
                raise OutOfMemory(f"out of memory building the model on {self.device}: lower --dim or --depth, "
                                  f"or use --precision bf16 or several GPUs (--gpus N --distributed fsdp2)") from None
            raise

    def _build(self, progress: bool, resume_from) -> None:
        """Model, optimizer and state (restored from ``resume_from`` when given), run records."""
        cfg, ctx = self.cfg, self.ctx
        seed_everything(cfg.run.seed)
        model = build_model(cfg, self.device)
        self.forward = wrap_model(model, cfg)  # before the optimizer: FSDP2 replaces the parameters
        self.graphed: GraphedForwardBackward | None = None  # --cuda-graph: captured at this process's first step
        self.state = TrainState(model, *build_optimizer(model, cfg))
        self.checkpointer = self.rundir.checkpointer(cfg)
        if resume_from is not None:
            self.checkpointer.restore(self.state, resume_from)
            if ctx.is_main:
                print(f"rnnlab train: resuming {self.rundir.path} at step {self.state.step:,} "
                      f"({resume_from.path.name})", file=sys.stderr, flush=True)
        if resume_from is not None:
            # eval.jsonl's final evaluation of this step is what the checkpoint has, or newer: a later
            # session's re-score (new --extra-val-data or --eval-bytes), or the one a session scored
            # for a checkpoint that lacked it (a second Ctrl-C cut it), which cannot write this
            # step's checkpoint again; either way an evaluation of these very weights
            logged = (self.rundir.evals() or [None])[-1] if ctx.is_main else None
            logged = ctx.broadcast_object(logged if logged and logged.get("step") == self.state.step
                                          and logged.get("final") else None)
            if logged is not None:
                self.state.last_eval = logged
        self.wall_before = self.state.wall_s  # the earlier sessions' wall time
        if cfg.run.distributed and ctx.world_size == 1:
            print(f"rnnlab train: note: --distributed {cfg.run.distributed} spreads a run over the processes "
                  f"of --gpus N (or torchrun); this is one process, trained as without it", file=sys.stderr, flush=True)
        if ctx.is_main and self.device.type == "cpu" and cfg.run.device == "auto" and self.n_params >= CPU_NOTE_PARAMS:
            print(f"rnnlab train: note: no GPU found, so these {self.n_params:,} parameters train on the CPU "
                  "(--device auto): a step at this size takes seconds to minutes, not milliseconds",
                  file=sys.stderr, flush=True)
        if ctx.is_main and self.device.type == "cpu" and cfg.run.precision == "bf16":
            print("rnnlab train: note: pure bf16 on a CPU is several times slower than fp32 (most CPUs have "
                  "no bf16 matrix units); --precision fp32 (in a suite file: precision = \"fp32\") for experiments "
                  "on a CPU", file=sys.stderr, flush=True)
        # rank 0 alone looks (its shard under FSDP2): the reference study's protocol (docs/findings.md, A problem
        # of the protocol)
        stuck = (rounded_away(model, cfg.optim.lr) if ctx.is_main and cfg.run.precision == "bf16"
                 and resume_from is None else [])
        if stuck:
            print(f"rnnlab train: note: in pure bf16 an update of lr {cfg.optim.lr:g} rounds away on weights of "
                  f"{bf16_rounds_away_at(cfg.optim.lr):g} or more, so most elements of these do not train: "
                  f"{', '.join(stuck)} (--precision bf16-mixed keeps fp32 master weights, which do)",
                  file=sys.stderr, flush=True)
        resumed, spent = resume_from is not None, self.budget_spent()
        # a session that takes no step (a finished run resumed to re-score its final evaluation)
        # keeps what its summary says of the training sessions (speed, memory, device)
        self.trained_before = (self.rundir.summary() or {}) if resumed and spent and ctx.is_main else None
        # a complete run resumed within its budget, its final evaluation as asked and its summary of this
        # step written (not one killed before it): the session writes nothing
        before = self.trained_before or {}
        self.nothing_left = ctx.broadcast_object(  # rank 0's folder decides: every rank takes its answer
            resumed and spent and not self.final_eval_due() and before.get("complete") is True
            and before.get("steps") == self.state.step)
        if ctx.is_main:
            # a checkpoint of the budget's end without its final evaluation (a second Ctrl-C cut it)
            # is evaluated below; one with a final evaluation that lacks what this session asks for
            # (a new --extra-val-data or --eval-bytes) is scored again below, its old record kept
            # until the new one is logged (closing: keep_last_final_eval)
            env = {**env_info(self.device), "corpus": self.corpus, "world_size": ctx.world_size}
            redone = resumed and spent and self.final_eval_due()
            if redone:
                why = ("; ".join(text for _, text in self.final_eval_lacks()) if self.final_eval_done()
                       else "it has no final evaluation yet")
                print(f"rnnlab train: {self.rundir.path} is complete at step {self.state.step:,}; scoring its final "
                      f"evaluation {'again ' if self.final_eval_done() else ''}from its checkpoint, no training step "
                      f"({why})", file=sys.stderr, flush=True)
            elif resumed and spent and not redone:  # the summary printed next is the run's as it was: say why
                kind, value = cfg.budget.chosen()
                print(f"rnnlab train: {self.rundir.path} is complete at step {self.state.step:,} "
                      f"({kind} {amount(value)}): nothing to train or score; a larger --{kind} extends it",
                      file=sys.stderr, flush=True)
            if not self.nothing_left:
                self.rundir.start(cfg, env, self.state.step if resumed else None, trains_on=not spent,
                                  scores_only=resumed and spent)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.logger = RunLogger(self.rundir, cfg, self.device, self.state.progress(complete=False),
                                cfg.max_steps(), progress, enabled=ctx.is_main and not self.nothing_left)
        self.throughput = Throughput()
        self.evaluating = False  # while an evaluation runs: an out-of-memory error then names its knob
        self.saving = False  # while a checkpoint is gathered and written: an out-of-memory error then says so

    # ------------------------------------------------------------------------- the loop
    def train(self) -> dict[str, Any]:
        """Train until the budget is spent (then evaluate and checkpoint) or Ctrl-C (then
        checkpoint); returns the summary, also written to summary.json. A failure that stops
        the run (divergence, a checkpoint write error, out of memory, a second Ctrl-C, under
        torchrun another rank's end: ``LostRank``) is recorded in summary.json and raised with a
        message naming the checkpoint kept; any other error is recorded as ``TypeName: message``
        and raised as it came. Under torchrun, ``LostPeerWatch`` ends the rank with
        ``LostRank``'s line when a peer on this machine died and a collective never says so."""
        # StopOnInterrupt spans the failure handling too (a stop that arrives then, torchrun's SIGTERM
        # close behind a peer's death before lost_peers_ignoring_stops ignores stops, is a first
        # Ctrl-C, not a KeyboardInterrupt in place of the failure being recorded), and ends before
        # the logs close
        with (self.closing(), StopOnInterrupt(says=self.ctx.rank == 0) as stop,
              closed_pipe_stops(stop.output_closed)):  # `| head`: a stop, not a failure on the next line
            try:
                with (LostPeerWatch(self.ctx.local_peers, self.end_on_lost_peer, busy=self.checkpointer.writing.is_set),
                      ctrl_c_unwrapped()):  # a library's wrapped Ctrl-C (a kernel's first import) is one too
                    if self.nothing_left:  # the run as it was: its summary, its files untouched
                        return self.rundir.summary() or {}
                    return self.loop(stop)
            except (NonFiniteLossError, CheckpointWriteError) as e:
                stop.ending()
                self.record_failure(str(e))
                raise
            except KeyboardInterrupt:
                # a stop close behind the abort (torchrun's SIGTERM once another rank ended on its own
                # Ctrl-C, pending with it) is a first one: it must not replace the abort's line
                stop.ending()
                message = f"aborted by Ctrl-C at step {self.state.step:,}; {self.checkpointer.kept()}"
                self.record_failure(message, aborted=True)
                raise KeyboardInterrupt(message) from None
            except PeerEvaluationFailed as e:  # rank 0 ends on its own failure, which it records
                stop.ending()
                raise LostRank(self.lost_rank_message((str(e), True))) from e
            except RuntimeError as e:
                stop.ending()
                if (failed := self.lost_peers_ignoring_stops(e)) is not None:
                    message = self.lost_rank_message(failed)
                    self.record_failure(message)
                    raise LostRank(message) from e
                if not is_out_of_memory(e):
                    self.record_crash(e)
                    raise
                cfg = self.cfg
                graph = " or drop --cuda-graph (its graph keeps the step's memory through evaluations)"
                if self.saving:  # the state gathered (FSDP2) or copied to the CPU: no step's knob helps
                    message = (f"out of memory while saving the checkpoint of step {self.state.step:,} on "
                               f"{self.device}; {self.checkpointer.kept()}")
                elif self.evaluating:
                    message = (f"out of memory in the evaluation at step {self.state.step:,} on {self.device}: "
                               f"lower --eval-batch-size ({eval_batch(cfg)})"
                               f"{graph if cfg.run.cuda_graph else ''}; {self.checkpointer.kept()}")
                else:
                    accum = (graph if cfg.run.cuda_graph else f" or raise --grad-accum ({cfg.data.grad_accum})"
                             if grad_accum_can_rise(cfg, self.ctx.world_size) else "")
                    message = (f"out of memory at step {self.state.step + 1:,} on {self.device}: lower --batch-size "
                               f"({cfg.data.batch_size}) or --seq-len ({cfg.data.seq_len}){accum}; "
                               f"{self.checkpointer.kept()}")
                self.record_failure(message)
                raise OutOfMemory(message) from None
            except Exception as e:  # anything else (a kernel's error, a log's write): recorded, raised as it came
                stop.ending()
                self.record_crash(e)
                raise

    @contextlib.contextmanager
    def closing(self):
        """Close the run's logs and let go of its folder as training ends, however it ends. A Ctrl-C
        while the logs close (W&B's finish can take minutes) cuts the close; after a finished run it
        says what it cut, and where the run is already ending on an error or an abort (a stop close
        behind it: torchrun's SIGTERM once another rank ended) that ending goes on, its line kept."""
        ending = None
        try:
            yield
        except BaseException as e:
            ending = e
            raise
        finally:
            try:
                try:
                    self.logger.close()
                    # a session of no step (rank 0): a re-scored final evaluation's record replaces the one before
                    if self.trained_before is not None and self.final_eval_done() and not self.nothing_left:
                        self.rundir.keep_last_final_eval(self.state.step)
                finally:
                    self.rundir.release()
            except KeyboardInterrupt:
                if ending is None:
                    raise KeyboardInterrupt("aborted by Ctrl-C while the run's logs closed; its summary.json "
                                            "says how the run ended") from None

    def loop(self, stop: StopOnInterrupt) -> dict[str, Any]:
        """``train``'s body: steps, evaluations and checkpoints until the budget or Ctrl-C (``stop``),
        then the run's end (``end_interrupted`` or ``end_budget_spent``); returns the summary."""
        state, run_cfg, tokens_per_step = self.state, self.cfg.run, self.cfg.tokens_per_step()
        state.model.train()
        agreed = False  # under torchrun: whether any rank had a Ctrl-C, as all agreed after the last step

        def stopping() -> bool:
            # One process: its own Ctrl-C. Under torchrun only the agreed answer: a Ctrl-C that
            # reaches one rank after a step's agreement is acted on by all after the next step
            # (a rank leaving on its own flag would leave the others inside a collective).
            return stop.requested if self.ctx.world_size == 1 else agreed

        while not self.budget_spent() and not stopping():
            result = self.train_step(self.stream.batch(state.step))
            reclaim_handlers()  # a compile in the step (Triton's LLVM) may have put its own in the kernel
            if self.ctx.world_size > 1:  # ranks agree on the time (minutes budget) and on a Ctrl-C
                seconds, agreed = self.ctx.agree(result.seconds, stop.requested)
                result = result._replace(seconds=seconds)
            warmup = self.throughput.add(tokens_per_step, result.seconds)
            state.advance(result.loss, tokens_per_step, result.seconds, warmup)
            self.logger.step(state, result, last=self.budget_spent() or stopping())
            if self.due(run_cfg.eval_every):
                self.evaluate()
            if self.due(run_cfg.checkpoint_every):
                self.checkpoint(complete=False)
        if not self.budget_spent():  # stopped by Ctrl-C
            return self.end_interrupted()
        return self.end_budget_spent(stop)

    def end_interrupted(self) -> dict[str, Any]:
        """The end of a run stopped by Ctrl-C before its budget: its checkpoint, a line saying where
        it is, and the summary (not complete)."""
        self.logger.stopped()
        self.checkpoint(complete=False)
        if self.ctx.is_main:  # the rank that wrote it (every rank under FSDP2: one line is enough)
            print(f"\nrnnlab train: interrupted at step {self.state.step:,}; checkpoint saved to "
                  f"{self.checkpointer.last.path} (continue with --resume --out {self.rundir.path})",
                  file=sys.stderr)
        return self.finish(complete=False)

    def end_budget_spent(self, stop: StopOnInterrupt) -> dict[str, Any]:
        """The end of a run whose budget is spent: the final evaluation (when ``final_eval_due``)
        and the final checkpoint, which a first Ctrl-C from here on lets finish (docs/reliability.md,
        guarantee 3b), then the summary, ``interrupted_at_end`` when a Ctrl-C came (the ranks agree)."""
        stop.finishing()
        try:
            if self.final_eval_due():
                self.evaluate(final=True)
        except BaseException:
            # saved even if the final evaluation fails; not under FSDP2, where every rank evaluates
            # and the others may wait in one of its collectives, which the checkpoint's would meet
            # (a hang until the process group's timeout): this rank ends, and they hear of it
            if not self.sharded:
                self.checkpoint(complete=True)
            raise
        self.checkpoint(complete=True)
        interrupted = self.ctx.agree(0.0, stop.requested)[1]  # every rank gets here: one answer
        summary = self.finish(complete=True, interrupted=interrupted)
        if stop.requested and not interrupted:  # pressed while the summary was being written
            summary = self.finish(complete=True, interrupted=True)
        return summary

    def train_step(self, batch: torch.Tensor) -> StepResult:
        """One optimizer step on ``batch`` ([B, T+1]).

        The loss and the gradient norm are read together (one sync) after backward and before
        ``optimizer.step()``: a non-finite loss, or a non-finite gradient beside a finite loss (its
        update would make the weights non-finite), raises ``NonFiniteLossError`` with the weights
        untouched. The gradient norm is measured once, before clipping, and clipping reuses it;
        its fused (foreach) norm costs ~0.2% of a CPU step of a 1.4M-parameter model. The step's
        time runs from an idle device to the end of the optimizer's work on it (a sync at each
        end), so tok/s and a ``--minutes`` budget count the optimizer too.
        """
        state, optimizer = self.state, self.state.optimizer
        sync(self.device)
        start = time.perf_counter()
        if self.cfg.run.cuda_graph and self.graphed is None:  # inside a warm-up step's time
            self.graphed = GraphedForwardBackward(self.forward_backward, state.model, batch)
        loss = self.graphed(batch) if self.graphed is not None else self.forward_backward(batch)
        norm = grad_norm([p.grad for p in state.model.parameters() if p.grad is not None])
        loss_value, norm_value = torch.stack([loss.detach().float(), dist.full_tensor(norm).float()]).tolist()
        loss_value = self.ctx.all_reduce_mean(loss_value)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):  # the norm is every rank's
            if self.graphed is None:
                optimizer.zero_grad(set_to_none=True)
            what = (f"non-finite loss ({loss_value})" if not math.isfinite(loss_value) else
                    f"non-finite gradient (norm {norm_value}) of a finite loss ({loss_value:.4f})")
            raise NonFiniteLossError(f"{what} at step {state.step + 1:,}; {self.divergence_hint()}; "
                                     f"{self.checkpointer.kept()}")
        if self.cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(state.model.parameters(), self.cfg.optim.grad_clip, norm)
        lr = current_lr(optimizer)
        optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        if self.graphed is None:  # a replayed graph rewrites its gradients, which must stay where it put them
            optimizer.zero_grad(set_to_none=True)
        sync(self.device)  # the optimizer's kernels are part of this step's time
        return StepResult(loss_value, lr, norm_value, time.perf_counter() - start)

    def forward_backward(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross-entropy of ``batch`` ([B, T+1]), backpropagated; returns the loss.

        With ``--grad-accum N`` the rows are split into N equal micro-batches, each run forward
        and backward with its loss divided by N, so the accumulated gradient and the returned
        loss are the whole batch's mean, as with N = 1. Every micro-batch starts from the
        model's buffers as they were at the start of the step (E1's spectral-norm vector moves
        on each training forward), as the one forward of N = 1 does. Under DDP/FSDP2 all but the
        last micro-batch run in ``no_grad_sync``: gradients cross ranks once per step.
        """
        batch = batch.to(self.device, non_blocking=True)
        micro_batches = batch.chunk(self.cfg.data.grad_accum)
        buffers = list(self.state.model.buffers())
        at_start = [b.clone() for b in buffers] if len(micro_batches) > 1 else []
        total = torch.zeros((), device=self.device)
        for i, micro in enumerate(micro_batches):
            if i:
                with torch.no_grad():
                    for b, saved in zip(buffers, at_start):
                        b.copy_(saved)
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last else dist.no_grad_sync(self.forward):
                with autocast(self.device, self.cfg.run.precision):
                    loss = self.forward(micro[:, :-1], micro[:, 1:]) / len(micro_batches)
                loss.backward()
            total += loss.detach()
        return total

    # ------------------------------------------------------------------------- around the loop
    def budget_spent(self) -> bool:
        kind, value = self.cfg.budget.chosen()
        if kind == "minutes":  # compilation (the warm-up steps) is not part of the race
            return budget_clock(self.state.elapsed_s, self.state.warmup_s) >= value * 60
        return self.state.step >= self.cfg.max_steps()

    def due(self, every: int) -> bool:
        """Whether a cadence of ``every`` steps (0 = never) falls on this step, before the last."""
        return bool(every) and self.state.step % every == 0 and not self.budget_spent()

    def final_eval_done(self) -> bool:
        """Whether the last evaluation is this step's final one (not a curve evaluation, which
        scored fewer bytes)."""
        last = self.state.last_eval
        return last is not None and last["step"] == self.state.step and bool(last.get("final"))

    def final_eval_due(self) -> bool:
        """No final evaluation at this step yet, or it lacks what this session asks for (a finished
        run resumed with a new ``--extra-val-data`` or ``--eval-bytes``: ``final_eval_lacks``)."""
        return not self.final_eval_done() or bool(self.final_eval_lacks())

    def final_eval_lacks(self) -> list[tuple[str, str]]:
        """``final_scores_lacking`` of this step's final evaluation under this session's config."""
        last = self.state.last_eval or {}
        return final_scores_lacking(last.get("bytes"), last.get("extra_data"), self.cfg, len(self.val_split),
                                    last.get("extra_bytes"))

    def evaluate(self, final: bool = False) -> None:
        """Held-out loss at the weights one ships (Schedule-Free's average x); for Schedule-Free
        also at its training point y, where the training loss is measured (``*_train_point``):
        in pure bf16 the averaging into x is partly lost to rounding and x can score far worse
        than y (docs/findings.md). Evaluations during training score ``curve_eval_bytes`` of the
        split; the final one (``final``: true in its record) ``eval_bytes`` and, for a curve of
        other bytes, the curve's bytes too (keys ``curve_*``), and the extra held-out file whole
        (``--extra-val-data``, keys ``extra_*``); when this step has its final evaluation already
        (a finished run resumed with a new extra file) only that file is scored and added.
        Training is not perturbed. Rank 0 evaluates (every rank under FSDP2); the others receive
        its result."""
        record = self.state.last_eval
        self.evaluating = True  # left set by a failure, which train() reads
        if self.ctx.is_main or self.sharded:
            try:
                record = self.scored_record(final)
            except BaseException as e:
                # DDP: the other ranks wait for this record; they hear of the failure and go on with
                # rank 0 (the final checkpoint, still written, is a collective) instead of waiting
                # in the broadcast while rank 0 waits in the checkpoint's, until the timeout
                if self.ctx.initialized and not self.sharded:
                    cause = " ".join(str(e).split())[:200] or type(e).__name__
                    failed = EvaluationFailed(isinstance(e, KeyboardInterrupt), cause)
                    with contextlib.suppress(RuntimeError):  # the others gone: the failure stays this one
                        self.ctx.broadcast_object(failed)
                raise
        record = self.ctx.broadcast_object(record)
        if isinstance(record, EvaluationFailed):  # rank 0's evaluation failed (a rank other than 0)
            if record.interrupted:
                raise KeyboardInterrupt
            raise PeerEvaluationFailed(f"rank 0's evaluation failed: {record.cause}")
        self.state.last_eval = record
        self.evaluating = False

    def scored_record(self, final: bool) -> dict[str, Any]:
        """This rank's evaluation record (``evaluate`` says what it scores), logged."""
        state, run_cfg = self.state, self.cfg.run
        # a finished run's final evaluation, resumed: what it lacks is scored again, the rest kept
        kept = state.last_eval if final and self.final_eval_done() else None
        lacking = {kind for kind, _ in self.final_eval_lacks()} if kept is not None else set()
        if kept is not None and "held-out" not in lacking:
            record = {k: v for k, v in kept.items() if not k.startswith("extra_")}
        else:
            curve = run_cfg.curve_eval_bytes
            record = {"step": state.step, "tokens": state.tokens,
                      **self.score(self.val_split, max_bytes=None if final else curve)}
            if final and run_cfg.eval_every and curve is not None and curve != run_cfg.eval_bytes:
                record.update({f"curve_{k}": v for k, v in self.score(self.val_split, max_bytes=curve).items()})
        if final:
            record["final"] = True
            if kept is not None and "extra" not in lacking:  # scored already (or not asked for now): kept
                record.update({k: v for k, v in kept.items() if k.startswith("extra_")})
            elif self.extra_val_split is not None:
                extra = self.score(self.extra_val_split, max_bytes=0)
                record.update({"extra_data": str(self.extra_val_split.path)},
                              **{f"extra_{key}": value for key, value in extra.items()})
        self.logger.eval(record)
        reclaim_handlers()  # as after a step: evaluation may compile too
        return record

    def score(self, split, max_bytes: int | None = None) -> dict[str, Any]:
        """``val_loss``, ``val_bpb`` and ``bytes`` of ``split`` at x, and for Schedule-Free the
        ``*_train_point`` pair at y (``max_bytes``: as ``evaluate_run``'s, 0 = all)."""
        state = self.state
        with eval_weights(state.model, state.optimizer):
            r = evaluate_run(state.model, split, self.cfg, max_bytes=max_bytes)
        out = {"val_loss": r["loss"], "val_bpb": r["bpb"], "bytes": r["bytes"]}
        if is_schedulefree(state.optimizer):  # the parameters hold y while training
            y = evaluate_run(state.model, split, self.cfg, max_bytes=max_bytes)
            out.update(val_loss_train_point=y["loss"], val_bpb_train_point=y["bpb"])
        return out

    def divergence_hint(self) -> str:
        """What to try after a non-finite loss or weights: a lower lr; in pure bf16 also mixed
        precision (fp32 weights)."""
        return "lower --lr" + (" or use --precision bf16-mixed" if self.cfg.run.precision == "bf16" else "")

    def checkpoint(self, complete: bool) -> None:
        """Save the state unless this step is saved already; broken weights never replace a good
        checkpoint. The logs reach the disk first, so a resumed run finds every step up to its
        checkpoint in them."""
        if self.checkpointer.saved_step == self.state.step:
            return
        if not self.ctx.all_true(dist.local_all_finite(self.state.model)):  # this rank's shard under FSDP2
            raise NonFiniteLossError(f"non-finite weights at step {self.state.step:,}; {self.divergence_hint()}; "
                                     f"{self.checkpointer.kept()}")
        self.clock()
        self.logger.sync()
        self.saving = True  # left set by a failure, which train() reads
        self.checkpointer.save(self.state, complete)
        self.saving = False

    def clock(self) -> None:
        """Bring ``state.wall_s`` up to now (before it is saved or reported)."""
        self.state.wall_s = self.wall_before + time.perf_counter() - self.started

    def finish(self, complete: bool, error: str | None = None, interrupted: bool = False,
               aborted: bool = False) -> dict[str, Any]:
        """The run's summary (written to summary.json by rank 0); ``interrupted``: a Ctrl-C came
        after the budget was spent and the run finished anyway (``interrupted_at_end``: callers
        that run several stop after this one); ``aborted``: a Ctrl-C stopped it, ``error`` saying
        where (a stop, not a failure: ``RunDir.status`` calls the run incomplete)."""
        cfg, state, m = self.cfg, self.state, self.cfg.model
        kind, budget = cfg.budget.chosen()
        self.clock()
        last = state.last_eval or {}
        summary = {
            "model": m.model, "params": self.n_params, "steps": state.step, "tokens": state.tokens,
            "loss": (sum(state.losses) / len(state.losses)) if state.losses else None,
            "val_loss": last.get("val_loss"), "val_bpb": last.get("val_bpb"), "val_bytes": last.get("bytes"),
            "val_step": last.get("step"),  # an interrupted run's last evaluation may be of an earlier step
            "val_loss_train_point": last.get("val_loss_train_point"),
            "val_bpb_train_point": last.get("val_bpb_train_point"),
            # --extra-val-data scored whole at the end: {data, val_loss, val_bpb, bytes, *_train_point}
            "extra_val": {key.removeprefix("extra_"): value for key, value in last.items()
                          if key.startswith("extra_")} or None,
            # None for a run of only warm-up steps (compilation): tok_per_wall_s is its rate
            "tok_per_s": (state.steady_tok_per_s() if state.warmup_tokens is not None
                          else self.throughput.tok_per_s()),
            "peak_mem_gib": peak_mem_gib(self.device), "time_s": state.elapsed_s, "complete": complete,
            "warmup_s": state.warmup_s,  # of time_s: the first steps of each process (compilation)
            # tokens over the whole wall clock of the run (start-up, compilation, evaluation and
            # checkpoints included), beside the steady-state tok_per_s above
            "wall_s": state.wall_s, "tok_per_wall_s": state.tokens / state.wall_s,
            "dim": m.dim, "depth": m.depth, "layer": m.layer, "mlp_ratio": m.resolved_mlp_ratio(),
            "model_options": model_options_off_default(m.to_dict()),  # e.g. {"norm": "rmsnorm"}
            "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len, "optimizer": cfg.optim.optimizer,
            "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay, "decay_rates": decay_rates(state.model, cfg),
            "precision": cfg.run.precision,
            "seed": cfg.run.seed, "budget": {kind: budget}, "device": str(self.device),
            "run_dir": str(self.rundir.path), "world_size": self.ctx.world_size,
            "distributed": cfg.run.distributed if self.ctx.world_size > 1 else None,
        }
        if self.trained_before:  # a session of no step: its device and rates say nothing of the training
            kept = SESSION_MEASURED
            if self.trained_before.get("steps") != state.step:
                # a summary of an earlier step (killed after the budget's last checkpoint, before its
                # summary): its rates are of fewer steps; the checkpoint's (above, and its wall time) are not
                kept = SESSION_DEVICE
                summary.update({"wall_s": self.wall_before, "tok_per_wall_s": state.tokens / self.wall_before})
            summary.update({k: self.trained_before[k] for k in kept if k in self.trained_before})
        if error is not None:
            summary["error"] = error
        if interrupted:
            summary["interrupted_at_end"] = True
        if aborted:
            summary["aborted"] = True
        if self.ctx.is_main:
            self.rundir.write_summary(summary)
        return summary

    def lost_rank_message(self, failed: tuple[str, bool], lost: int | None = None) -> str:
        """What a rank says when a collective failed in training (``LostRank``): the steps not
        saved and the checkpoint ``--resume`` continues from. A rank other than 0 that failed
        inside a save (a third rank lost while rank 0 wrote: ``Checkpointer.awaited``) cannot know
        whether rank 0, whose write waits for no other rank, still commits it, and says so; of two
        ranks, the one lost is rank 0 itself, as it is where ``lost`` (the rank whose process
        ``LostPeerWatch`` saw end) is 0."""
        step, last, what = self.state.step, self.checkpointer.newest(), collective_failure_phrase(failed)
        if last is not None and last.step == step:
            return f"{what} after step {step:,}, whose checkpoint is saved: {last}; --resume continues from it"
        awaited = self.checkpointer.awaited
        unless = (f" {unless_committed(awaited)}"
                  if awaited is not None and awaited.step == step and self.ctx.world_size > 2 and lost != 0 else "")
        if last is None:
            return f"{what} after step {step:,}, which is not saved{unless}; no checkpoint was written"
        return (f"{what} after step {step:,}, which is not saved{unless}; the last checkpoint is {last}: "
                "--resume continues from it")

    def end_on_lost_peer(self, peer: int) -> NoReturn:
        """``LostPeerWatch``'s end of this rank, from its thread, when the process of rank ``peer``
        on this machine has ended and this rank still waits (in a collective that did not notice):
        what a failed collective's ``LostRank`` records and says, then exit status 1."""
        message = self.lost_rank_message((f"rank {peer}'s process has ended; this rank was still waiting for it",
                                          True), lost=peer)
        with contextlib.suppress(Exception):  # nothing the bar meets may keep the line back
            self.logger.close_bar()

        def record() -> None:
            self.record_failure(message)
            self.logger.sync()  # the lines logged since the last checkpoint, as the logs' close would

        end_lost_rank(self.ctx.rank, message, then=record)

    def record_crash(self, e: Exception) -> None:
        """``record_failure`` for an error the trainer has no message of its own for (``TypeName:
        message``); a second error while recording it is dropped, so that ``e`` is what propagates."""
        with contextlib.suppress(Exception):
            self.record_failure(f"{type(e).__name__}: {e}")

    def record_failure(self, error: str, aborted: bool = False) -> None:
        """summary.json for a run that stopped with ``error`` (``aborted``: by Ctrl-C), if the disk
        still takes it. A Ctrl-C that aborts the recording (a second one) says ``error`` too, not
        only that it came."""
        try:
            with contextlib.suppress(OSError):
                self.finish(complete=False, error=error, aborted=aborted)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"aborted by Ctrl-C while recording how the run ended: {error}") from None


def run_training(cfg: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train one model (``Trainer(cfg).train()``); returns the summary dict. A Ctrl-C that a library
    wrapped (``rnnlab.signals.is_ctrl_c``) comes out as the KeyboardInterrupt it is."""
    with ctrl_c_unwrapped():
        return Trainer(cfg, progress=progress).train()
