"""Run records: metrics.jsonl (one JSON per step), eval.jsonl, TensorBoard scalars in tb/, the
tqdm bar, and atomic JSON writes. Only the main process logs (``RunLogger(enabled=...)``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rnnlab.train.config import TrainConfig


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop records past ``max_step`` (steps logged after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)



class RunLogger:
    """metrics.jsonl / eval.jsonl lines, TensorBoard scalars and the tqdm bar (main process only)."""

    def __init__(self, run: Path, cfg: TrainConfig, start_step: int, total: int | None, progress: bool,
                 enabled: bool = True):
        self.enabled = enabled
        self.cfg = cfg
        self.metrics = open(run / "metrics.jsonl", "a") if enabled else None
        self.evals = open(run / "eval.jsonl", "a") if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tb"), purge_step=start_step + 1 if start_step else None)
            except Exception as e:  # TensorBoard is a convenience; never fail a run over it
                print(f"rnnlab train: TensorBoard disabled ({e})", file=sys.stderr)
        self.bar = None
        if enabled and progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True,
                            desc=f"{cfg.model.model} d{cfg.model.dim}x{cfg.model.depth}")

    def step(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.metrics.write(json.dumps(rec) + "\n")
        s = rec["step"]
        if s % self.cfg.run.log_every == 0 or s == 1:
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
