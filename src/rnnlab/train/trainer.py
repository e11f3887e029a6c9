"""The training loop. ``run_training(cfg)`` trains one model and returns its summary dict.

Read top to bottom: resolve the config, prepare the run dir (fresh or resumed), seed, build the
model at the requested precision, build the optimizer, open the data stream, restore the
checkpoint when resuming, then loop until the budget (steps, minutes or tokens) is spent:

    batch = stream.batch(step)          # a pure function of (seed, step): resume needs only step
    loss  = train_step(...)             # forward, backward, (clip), optimizer step
    log metrics / evaluate / checkpoint

Protocol defaults follow the seed's Table A (spec §2.1): pure bf16 weights, Schedule-Free
AdamW lr 3e-4 wd 0.1 in one group, no clipping, seed 42, batch 16 x 512; the reported ``loss``
is the mean of the last 100 training losses (taken at the optimizer's train point y).

Run folder: config.json, env.json, metrics.jsonl (every step), eval.jsonl, summary.json,
ckpt/{model.safetensors,state.pt}, tb/ (TensorBoard). Only the main process (rank 0) writes.

Under torchrun (``WORLD_SIZE`` > 1, see ``rnnlab.train.distributed`` and docs/distributed.md)
every rank runs this loop on its ``batch_size / world_size`` share of each GLOBAL batch; the
logged loss is the mean over ranks, tok/s counts global tokens, and rank 0 alone logs,
evaluates and writes checkpoints while the others wait (under FSDP2 every rank takes part in
evaluation and in gathering the checkpoint, as the weights are sharded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnlab.data import BatchStream, load_splits
from rnnlab.eval.bpb import evaluate
from rnnlab.models.lm import LM
from rnnlab.models.params import count_params
from rnnlab.train import distributed as dist
from rnnlab.train.checkpoint import ckpt_dir, has_checkpoint, load_checkpoint, save_checkpoint
from rnnlab.train.config import TrainConfig, resume_mismatch
from rnnlab.train.metrics import RunLogger, truncate_jsonl, write_json
from rnnlab.train.optim import build_optimizer, current_lr, eval_weights

LOSS_WINDOW = 100  # summary loss = mean of the last 100 train losses (spec §2.1)
WARMUP_STEPS = 3  # steps per process left out of the summary tok/s (compilation, autotuning)


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss). The last good checkpoint is left untouched."""


# ---------------------------------------------------------------------------- hook points
def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (torchrun's RANK / WORLD_SIZE; 0, 1 otherwise)."""
    ctx = dist.context()
    return ctx.rank, ctx.world_size


def is_main_process() -> bool:
    return dist_info()[0] == 0


def wrap_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The module the training step calls (DDP-wrapped and/or compiled); ``model`` stays the
    plain LM used for eval, sampling and checkpoints. Under FSDP2 ``model`` itself is sharded in
    place, so call this before building the optimizer. ``cfg.run.compile`` compiles the whole step's
    forward and loss (README "torch.compile": which recurrences join the graph)."""
    fwd = model
    if dist.context().world_size > 1:
        fwd = dist.wrap_model(model, cfg.run.distributed or "ddp")
    if cfg.run.compile:
        return torch.compile(fwd)
    return fwd


def reduce_mean(value: float) -> float:
    """Mean of a scalar over ranks (identity for one process)."""
    return dist.all_reduce_mean(value)


# ---------------------------------------------------------------------------- setup helpers
def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg.resolve()`` plus what depends on the process layout (the global batch must split
    over the ranks; ddp is the default wrapper)."""
    cfg = cfg.resolve()
    world = dist.context().world_size
    if world > 1:
        dist.per_rank_batch(cfg.data.batch_size, world)  # the global batch must split evenly
        cfg.run.distributed = cfg.run.distributed or "ddp"
    return cfg


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available (use --device cpu)")
    return dev


def param_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "bf16-mixed" else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_memory(cfg: TrainConfig, params: int, device: torch.device) -> None:
    """Refuse a model whose weights + grads + optimizer state cannot fit the device at all."""
    bytes_per = 2 if cfg.run.precision == "bf16" else 4
    need = params * bytes_per * 4  # weights, grads, two optimizer moments (z/exp_avg, exp_avg_sq)
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        raise ValueError(
            f"model {cfg.model.model} dim={cfg.model.dim} depth={cfg.model.depth} has {params:,} "
            f"parameters: weights, grads and optimizer state need ~{need / 2**30:,.1f} GiB at "
            f"precision {cfg.run.precision}, more than the {have / 2**30:,.1f} GiB of {device}")


def build_model(cfg: TrainConfig, device: torch.device) -> LM:
    model = LM(cfg.model)
    return model.to(device=device, dtype=param_dtype(cfg.run.precision))


def load_run(run_dir: str | os.PathLike, device: str = "auto") -> tuple[TrainConfig, LM, dict[str, Any]]:
    """A finished (or checkpointed) run's config and model with its shipped weights, in eval mode;
    also returns the checkpoint's progress dict (step, tokens, ...)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run dir not found: {run}")
    cfg_file = run / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{run} is not a run dir (no config.json)")
    cfg = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
    dev = pick_device(device)
    model = build_model(cfg, dev)
    progress = load_checkpoint(run, model)
    model.eval()
    return cfg, model, progress


def prepare_run_dir(cfg: TrainConfig) -> bool:
    """Check the run dir; returns True when it holds a checkpoint to resume from."""
    run = Path(cfg.run.out)
    if run.exists() and not run.is_dir():
        raise ValueError(f"--out {run} exists and is not a directory")
    holds_run = run.is_dir() and any((run / f).exists() for f in ("config.json", "ckpt", "metrics.jsonl"))
    if not cfg.run.resume:
        if holds_run:
            raise ValueError(f"run dir {run} already holds a run; pass --resume to continue it "
                             f"or choose another --out")
        return False
    if not has_checkpoint(run):
        return False
    cfg_file = run / "config.json"
    if not cfg_file.exists():
        raise ValueError(f"run dir {run} has a checkpoint but no config.json; cannot check it matches")
    saved = json.loads(cfg_file.read_text())
    diff = resume_mismatch(saved, cfg)
    if diff is not None:
        field, old, new = diff
        raise ValueError(f"run dir {run} was made with a different config: field {field} is "
                         f"{json.dumps(old)}, not {json.dumps(new)}")
    return True


def env_info(device: torch.device) -> dict[str, Any]:
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {p: version(p) for p in ("rnnlab", "torch", "numpy", "schedulefree", "safetensors",
                                             "triton", "mamba-ssm", "causal-conv1d")},
        "device": str(device),
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    info["git_sha"], info["git_dirty"] = _git_state()
    return info


def _git_state() -> tuple[str | None, bool | None]:
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = res.stdout.strip() if res.returncode == 0 else None
        if not sha:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _peak_mem_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StopOnInterrupt:
    """First Ctrl-C (SIGINT): finish the current step, save a checkpoint, return cleanly.
    A second Ctrl-C aborts at once (KeyboardInterrupt; the last checkpoint is kept)."""

    def __init__(self):
        self.requested = False
        self._prev = None

    def __enter__(self) -> "StopOnInterrupt":
        try:
            self._prev = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling here
            self._prev = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nrnnlab train: stopping after this step to save a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)


def _weights_finite(model: nn.Module) -> bool:
    return dist.local_all_finite(model)  # this rank's shard under FSDP2


# ---------------------------------------------------------------------------- the step
def train_step(fwd: nn.Module, model: nn.Module, opt, sched, batch: torch.Tensor, cfg: TrainConfig,
               device: torch.device) -> tuple[float, float]:
    """One optimizer step on ``batch`` ([B, T+1]); returns ``(loss, lr)``.

    The loss is read (one sync) after backward and before ``opt.step()``: a non-finite loss
    raises ``NonFiniteLossError`` with the weights untouched.
    """
    batch = batch.to(device, non_blocking=True)
    x, y = batch[:, :-1], batch[:, 1:]
    amp = autocast_dtype(cfg.run.precision)
    ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    with ctx:
        loss = fwd(x, y)
    loss.backward()
    value = reduce_mean(loss.item())
    if not math.isfinite(value):
        opt.zero_grad(set_to_none=True)
        raise NonFiniteLossError(str(value))
    if cfg.optim.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    lr = current_lr(opt)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    return value, lr


def run_eval(model: nn.Module, opt, split, cfg: TrainConfig) -> dict[str, float]:
    """Held-out loss at the weights one ships (Schedule-Free's x); training is not perturbed."""
    with eval_weights(model, opt):
        return evaluate(model, split, cfg.data.seq_len, cfg.run.eval_batch_size or cfg.data.batch_size, cfg.run.eval_bytes or None,
                        autocast_dtype=autocast_dtype(cfg.run.precision))


# ---------------------------------------------------------------------------- the run
def run_training(cfg: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    started = time.perf_counter()  # wall clock: start-up, compilation, eval and checkpoints included
    cfg = resolve_config(cfg)
    run = Path(cfg.run.out)
    ctx = dist.context()
    rank, world = ctx.rank, ctx.world_size
    main = rank == 0
    device = pick_device(cfg.run.device) if world == 1 else dist.init_distributed(cfg.run.device)[1]
    sharded = world > 1 and cfg.run.distributed == "fsdp2"  # every rank takes part in eval and checkpoints
    resuming = prepare_run_dir(cfg)
    ctx.barrier()  # every rank has looked at the run dir before rank 0 writes into it

    # data first: a bad corpus should fail before any model is built
    splits = load_splits(cfg.data.path, cfg.data.val_path, cfg.data.val_fraction)
    stream = BatchStream(splits.train, dist.per_rank_batch(cfg.data.batch_size, world), cfg.data.seq_len, cfg.run.seed,
                         rank, world)
    if len(splits.val) < cfg.data.seq_len + 1:
        raise ValueError(f"held-out split of {splits.val.path} has {len(splits.val)} bytes, fewer than "
                         f"seq_len+1 = {cfg.data.seq_len + 1}; use a smaller --seq-len or a larger --val-data")

    n_params = count_params(cfg.model)
    check_memory(cfg, n_params, device)
    seed_everything(cfg.run.seed)
    model = build_model(cfg, device)
    fwd = wrap_model(model, cfg)  # before the optimizer: FSDP2 replaces the parameters
    opt, sched = build_optimizer(model, cfg)

    step, tokens, elapsed, wall_before = 0, 0, 0.0, 0.0
    losses: deque[float] = deque(maxlen=LOSS_WINDOW)
    last_eval: dict[str, Any] | None = None
    if resuming:
        state = load_checkpoint(run, model, opt, sched)
        step, tokens, elapsed = int(state["step"]), int(state["tokens"]), float(state["elapsed_s"])
        losses.extend(state["losses"])
        wall_before = float(state.get("wall_s", elapsed))  # wall time of the earlier sessions
        last_eval = state.get("last_eval")
        if main:
            truncate_jsonl(run / "metrics.jsonl", step)
            truncate_jsonl(run / "eval.jsonl", step)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        if not resuming:
            for name in ("metrics.jsonl", "eval.jsonl", "summary.json"):
                (run / name).unlink(missing_ok=True)
        write_json(run / "config.json", cfg.to_dict())
        write_json(run / "env.json", env_info(device))

    kind, budget = cfg.budget.chosen()
    max_steps = cfg.max_steps()
    tokens_per_step = cfg.tokens_per_step()  # global: batch_size is the global batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log = RunLogger(run, cfg, step, max_steps, progress, enabled=main)
    model.train()
    saved_step = step if resuming else -1

    def progress_state(complete: bool) -> dict[str, Any]:
        return {"step": step, "tokens": tokens, "elapsed_s": elapsed, "losses": list(losses),
                "wall_s": wall_before + time.perf_counter() - started,
                "last_eval": last_eval, "complete": complete}

    def checkpoint(complete: bool) -> None:
        nonlocal saved_step
        if saved_step == step:
            return
        if not ctx.all_true(_weights_finite(model)):  # never replace a good checkpoint with a broken one
            raise NonFiniteLossError(
                f"non-finite weights at step {step}; lower --lr or use --precision bf16-mixed; "
                + (f"last good checkpoint kept at {ckpt_dir(run)} (step {saved_step})"
                   if saved_step >= 0 else "no checkpoint was written"))
        save_checkpoint(run, model, opt, sched, progress_state(complete))  # rank 0 writes
        saved_step = step
        ctx.barrier()

    def budget_spent() -> bool:
        if kind == "minutes":
            return elapsed >= budget * 60
        return step >= max_steps

    def do_eval() -> None:
        nonlocal last_eval
        if main or sharded:
            r = run_eval(model, opt, splits.val, cfg)
            last_eval = {"step": step, "tokens": tokens, "val_loss": r["loss"], "val_bpb": r["bpb"],
                         "bytes": r["bytes"]}
            log.eval(last_eval)
        last_eval = ctx.broadcast_object(last_eval)  # the others wait here for rank 0's result

    def summary(complete: bool, error: str | None = None) -> dict[str, Any]:
        m = cfg.model
        wall = wall_before + time.perf_counter() - started
        out = {
            "model": m.model, "params": n_params, "steps": step, "tokens": tokens,
            "loss": (sum(losses) / len(losses)) if losses else None,
            "val_loss": last_eval["val_loss"] if last_eval else None,
            "val_bpb": last_eval["val_bpb"] if last_eval else None,
            # steady-state throughput: the first WARMUP_STEPS of each process (kernel compilation,
            # autotuning, allocator growth) are left out, as the seed left out its warm-up steps
            "tok_per_s": (steady[0] / steady[1]) if steady[1] > 0 else (tokens / elapsed if elapsed > 0 else None),
            "peak_mem_gib": _peak_mem_gib(device), "time_s": elapsed, "complete": complete,
            # tokens over the whole wall clock of the run (start-up, compilation, evaluation and
            # checkpoints included), beside the steady-state tok_per_s above
            "wall_s": wall, "tok_per_wall_s": tokens / wall,
            "dim": m.dim, "depth": m.depth, "layer": m.layer, "mlp_ratio": m.resolved_mlp_ratio(),
            "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len, "optimizer": cfg.optim.optimizer,
            "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay, "precision": cfg.run.precision, "seed": cfg.run.seed,
            "budget": {kind: budget}, "device": str(device), "run_dir": str(run),
            "world_size": world, "distributed": cfg.run.distributed if world > 1 else None,
        }
        if error is not None:
            out["error"] = error
        if main:
            write_json(run / "summary.json", out)
        return out

    steps_here, steady = 0, [0, 0.0]  # steps run by this process; (tokens, seconds) after warm-up
    stop = StopOnInterrupt()
    try:
        with stop:
            while not budget_spent() and not stop.requested:
                batch = stream.batch(step)
                _sync(device)
                t0 = time.perf_counter()
                try:
                    loss, lr = train_step(fwd, model, opt, sched, batch, cfg, device)
                except NonFiniteLossError as e:
                    where = (f"last good checkpoint kept at {ckpt_dir(run)} (step {saved_step})"
                             if saved_step >= 0 else "no checkpoint was written")
                    raise NonFiniteLossError(
                        f"non-finite loss ({e}) at step {step + 1}; lower --lr or use --precision "
                        f"bf16-mixed; {where}") from None
                dt = time.perf_counter() - t0  # loss.item() inside the step already synchronised
                if world > 1:  # ranks agree on the time (minutes budget) and on a Ctrl-C
                    dt, stop.requested = ctx.agree(dt, stop.requested)
                step += 1
                tokens += tokens_per_step
                elapsed += dt
                steps_here += 1
                if steps_here > WARMUP_STEPS:
                    steady[0] += tokens_per_step
                    steady[1] += dt
                losses.append(loss)
                log.step({"step": step, "tokens": tokens, "loss": loss, "lr": lr,
                          "tok_per_s": tokens_per_step / dt if dt > 0 else None,
                          "peak_mem_gib": _peak_mem_gib(device), "elapsed_s": elapsed})
                if cfg.run.eval_every and step % cfg.run.eval_every == 0 and not budget_spent():
                    do_eval()
                if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and not budget_spent():
                    checkpoint(False)
    except (NonFiniteLossError, KeyboardInterrupt) as e:
        log.close()
        summary(False, error=str(e) or "aborted by a second Ctrl-C")
        raise
    interrupted = stop.requested and not budget_spent()

    try:
        if interrupted:
            checkpoint(False)
            print(f"\nrnnlab train: interrupted at step {step}; checkpoint saved to {ckpt_dir(run)} "
                  f"(continue with --resume --out {run})", file=sys.stderr)
            return summary(False)
        try:
            if last_eval is None or last_eval["step"] != step:
                do_eval()
        finally:
            checkpoint(True)  # saved even if the final evaluation fails
        return summary(True)
    finally:
        log.close()
