"""RunDir: one training run's folder. It alone knows the folder's file names, when the folder
holds a run and when that run is complete, and how to load the run back; the trainer, eval and
sample, the benchmark suite and report, and the analyses all go through it.

    config.json     the resolved TrainConfig (flat keys, ``TrainConfig.to_dict``)
    env.json        versions, device, host, git commit, command line
    metrics.jsonl   one JSON object per training step
    eval.jsonl      one JSON object per held-out evaluation
    summary.json    the run's result; ``"complete": true`` once the budget was spent
    ckpt/           the checkpoint: model.safetensors + state.pt (rnnlab.train.checkpoint)
    tb/             TensorBoard events

A folder *holds a run* when any of config.json, summary.json, metrics.jsonl or ckpt/ exists;
the run is *complete* when summary.json says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
EVALS = "eval.jsonl"
SUMMARY = "summary.json"
CKPT = "ckpt"
TB = "tb"
WEIGHTS = "model.safetensors"  # the weights file of a checkpoint (rnnlab.train.checkpoint)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (unreadable lines skipped; [] when missing)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class RunDir:
    """The run folder at ``path`` (which need not exist yet)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of one of the folder's files (``CONFIG``, ``METRICS``, ...)."""
        return self.path / name

    @property
    def ckpt_dir(self) -> Path:
        return self.path / CKPT

    # ------------------------------------------------------------------ what the folder holds
    def holds_run(self) -> bool:
        return self.path.is_dir() and any(self.file(n).exists() for n in (CONFIG, SUMMARY, METRICS, CKPT))

    def summary(self) -> dict[str, Any] | None:
        return read_json(self.file(SUMMARY))

    def saved_config(self) -> dict[str, Any] | None:
        """config.json as written (flat keys), or None."""
        return read_json(self.file(CONFIG))

    def env(self) -> dict[str, Any] | None:
        return read_json(self.file(ENV))

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file(METRICS))

    def evals(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file(EVALS))

    def status(self) -> str:
        """``"empty"`` (no run), ``"complete"``, ``"failed"`` (summary.json records an error) or
        ``"incomplete"`` (started, interrupted, or still running)."""
        if not self.holds_run():
            return "empty"
        s = self.summary() or {}
        return "complete" if s.get("complete") else "failed" if s.get("error") else "incomplete"

    def has_checkpoint(self) -> bool:
        from rnnlab.train.checkpoint import has_checkpoint

        return has_checkpoint(self.ckpt_dir)

    def weight_files(self) -> list[Path]:
        """Every ``model.safetensors`` in the folder (the checkpoint and any copies of older ones),
        ordered by the step in its metadata (unknown last); a step seen twice is listed once,
        the checkpoint's own file first."""
        from safetensors import safe_open

        unknown = 1 << 62

        def step(p: Path) -> int:
            try:
                with safe_open(str(p), framework="pt") as f:
                    s = (f.metadata() or {}).get("step")
                return int(s) if s is not None else unknown
            except Exception:  # an unreadable file sorts last rather than failing the listing
                return unknown

        current = (self.ckpt_dir / WEIGHTS).resolve()
        found = [(step(p), p.resolve() != current, str(p), p) for p in self.path.rglob(WEIGHTS) if p.is_file()]
        out, seen = [], set()
        for s, _, _, p in sorted(found):
            if s not in seen or s == unknown:
                seen.add(s)
                out.append(p)
        return out

    # ------------------------------------------------------------------ loading
    def config(self):
        """The run's TrainConfig (from config.json)."""
        from rnnlab.train.config import TrainConfig

        if not self.path.is_dir():
            raise FileNotFoundError(f"run dir not found: {self.path}")
        saved = self.saved_config()
        if saved is None:
            raise FileNotFoundError(f"{self.path} is not a run dir (no readable {CONFIG})")
        return TrainConfig.from_dict(saved)

    def load(self, device: str = "auto", weights: str | os.PathLike | None = None):
        """``(TrainConfig, LM in eval mode, step)``: the run's model with its checkpoint's shipped
        weights (Schedule-Free's x), or with ``weights`` (another ``model.safetensors`` of the run,
        e.g. from ``weight_files``), at the run's precision on ``device``."""
        from rnnlab.train.checkpoint import load_checkpoint, load_weights
        from rnnlab.train.runtime import build_model, pick_device

        cfg = self.config()
        model = build_model(cfg, pick_device(device))
        step = load_checkpoint(self.ckpt_dir, model)["step"]
        if weights is not None and Path(weights).resolve() != (self.ckpt_dir / WEIGHTS).resolve():
            meta = load_weights(model, weights)
            step = int(meta["step"]) if meta.get("step") is not None else None
        model.eval()
        return cfg, model, step

    # ------------------------------------------------------------------ training
    def prepare(self, cfg) -> bool:
        """Check the folder before training ``cfg`` into it; True when it holds a checkpoint of
        the same config to resume from (``cfg.run.resume``). A fresh run refuses a folder that
        holds a run; a resumed one refuses a folder whose run had another config."""
        from rnnlab.train.config import resume_mismatch

        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {self.path} exists and is not a directory")
        if not cfg.run.resume:
            if self.holds_run():
                raise ValueError(f"run dir {self.path} already holds a run; pass --resume to continue it "
                                 f"or choose another --out")
            return False
        if not self.has_checkpoint():
            return False
        saved = self.saved_config()
        if saved is None:
            raise ValueError(f"run dir {self.path} has a checkpoint but no {CONFIG}; cannot check it matches")
        diff = resume_mismatch(saved, cfg)
        if diff is not None:
            key, old, new = diff
            raise ValueError(f"run dir {self.path} was made with a different config: field {key} is "
                             f"{json.dumps(old)}, not {json.dumps(new)}")
        return True

    def start(self, cfg, env: dict[str, Any], resumed_step: int | None) -> None:
        """Create the folder and record the config and environment. A fresh run clears the logs
        and summary of an earlier attempt; a resumed one cuts its logs back to ``resumed_step``."""
        self.path.mkdir(parents=True, exist_ok=True)
        if resumed_step is None:
            for name in (METRICS, EVALS, SUMMARY):
                self.file(name).unlink(missing_ok=True)
        else:
            for name in (METRICS, EVALS):
                self._truncate(self.file(name), resumed_step)
        write_json(self.file(CONFIG), cfg.to_dict())
        write_json(self.file(ENV), env)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.file(SUMMARY), summary)

    @staticmethod
    def _truncate(path: Path, max_step: int) -> None:
        """Drop records past ``max_step`` (steps logged after the checkpoint resumed from)."""
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
