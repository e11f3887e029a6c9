"""Run records: metrics.jsonl (one JSON per step), eval.jsonl, TensorBoard scalars in tb/ and the
tqdm bar (``RunLogger``, main process only), and the steady-state throughput (``Throughput``)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

from rnnlab.train.rundir import EVALS, METRICS, TB, RunDir
from rnnlab.train.runtime import peak_mem_gib

WARMUP_STEPS = 3  # steps per process left out of the steady-state tok/s (compilation, autotuning)


class Throughput:
    """Tokens per second of this process after its first ``WARMUP_STEPS`` steps (kernel
    compilation, autotuning, allocator growth), as the seed left out its warm-up steps."""

    def __init__(self):
        self.steps, self.tokens, self.seconds = 0, 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.steps += 1
        if self.steps > WARMUP_STEPS:
            self.tokens += tokens
            self.seconds += seconds

    def tok_per_s(self, tokens: int, seconds: float) -> float | None:
        """Steady-state tok/s; ``tokens / seconds`` (the whole run) before the warm-up is over."""
        if self.seconds > 0:
            return self.tokens / self.seconds
        return tokens / seconds if seconds > 0 else None


class RunLogger:
    """metrics.jsonl / eval.jsonl lines, TensorBoard scalars and the tqdm bar (main process only)."""

    def __init__(self, run: RunDir, cfg, device: torch.device, start_step: int, total: int | None,
                 progress: bool, enabled: bool = True):
        self.enabled = enabled
        self.log_every = cfg.run.log_every
        self.tokens_per_step = cfg.tokens_per_step()
        self.device = device
        self.metrics = open(run.file(METRICS), "a") if enabled else None
        self.evals = open(run.file(EVALS), "a") if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run.file(TB)), purge_step=start_step + 1 if start_step else None)
            except Exception as e:  # TensorBoard is a convenience; never fail a run over it
                print(f"rnnlab train: TensorBoard disabled ({e})", file=sys.stderr)
        self.bar = None
        if enabled and progress:
            from tqdm.auto import tqdm

            m = cfg.model
            self.bar = tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True,
                            desc=f"{m.model} d{m.dim}x{m.depth}")

    def step(self, state, loss: float, lr: float, seconds: float) -> None:
        """Record the step ``state`` just finished (``loss``, the ``lr`` it used, its time)."""
        if not self.enabled:
            return
        rec = {"step": state.step, "tokens": state.tokens, "loss": loss, "lr": lr,
               "tok_per_s": self.tokens_per_step / seconds if seconds > 0 else None,
               "peak_mem_gib": peak_mem_gib(self.device), "elapsed_s": state.elapsed_s}
        self.metrics.write(json.dumps(rec) + "\n")
        s = rec["step"]
        if s % self.log_every == 0 or s == 1:
            self.metrics.flush()
            if self.tb is not None:
                for k in ("loss", "lr", "tok_per_s"):
                    self.tb.add_scalar(f"train/{k}", rec[k], s)
                if rec["peak_mem_gib"] is not None:
                    self.tb.add_scalar("train/peak_mem_gib", rec["peak_mem_gib"], s)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tok_per_s']:,.0f}", refresh=False)
        if self.bar is not None:
            self.bar.update(1)

    def eval(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.evals.write(json.dumps(rec) + "\n")
        self.evals.flush()
        if self.tb is not None:
            self.tb.add_scalar("eval/loss", rec["val_loss"], rec["step"])
            self.tb.add_scalar("eval/bpb", rec["val_bpb"], rec["step"])
        if self.bar is not None:
            self.bar.write(f"step {rec['step']}: val_loss {rec['val_loss']:.4f}  val_bpb {rec['val_bpb']:.4f}")

    def sync(self) -> None:
        """Put every line written so far on the disk; called before each checkpoint, so a resumed
        run finds every step up to its checkpoint in the logs."""
        if not self.enabled:
            return
        for f in (self.metrics, self.evals):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        for f in (self.metrics, self.evals):
            f.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()
