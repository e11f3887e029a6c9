"""TrainConfig: everything a training run depends on, as one plain dataclass.

Sources, lowest priority first: the defaults below (the seed's Table A protocol, spec §2.1), a
TOML or YAML file (``load_config``), then command-line flags (``apply_overrides``). The resolved
config is written to ``<out>/config.json``; ``--resume`` checks a run dir against it
(``resume_mismatch``).

File layout (TOML shown; YAML the same shape)::

    steps = 2000            # one budget: steps, minutes or tokens
    lr = 3e-4
    [model]                 # or: model = "e1" plus top-level dim/depth/mlp_ratio/layer
    model = "e1"
    dim = 512
    depth = 6
    [model.layer]
    expansion = 2.5
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab.models.config import ModelConfig

OPTIMIZERS = ("schedulefree-adamw", "adamw")
PRECISIONS = ("bf16", "bf16-mixed", "fp32")
DISTRIBUTED = ("ddp", "fsdp2")
BUDGET_FIELDS = ("steps", "minutes", "tokens")
DEFAULT_STEPS = 1000

# Fields that may differ when a run is resumed: they change how long it runs and what it
# records, never the trajectory of the weights.
RESUMABLE_FIELDS = frozenset({
    "steps", "minutes", "tokens", "eval_every", "eval_bytes", "eval_batch_size", "log_every",
    "checkpoint_every", "out", "resume", "compile", "device", "distributed",
})

# Absurdity limits: anything beyond these is a typo, not an experiment.
MAX_BATCH = 1 << 16
MAX_SEQ_LEN = 1 << 22
MAX_TOKENS_PER_STEP = 1 << 31
MAX_STEPS = 10**12
MODEL_SHORTCUTS = ("dim", "depth", "mlp_ratio", "layer", "tie_embeddings")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # data (rnnlab.data.load_splits): None = the bundled sample
    data: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.01
    batch_size: int = 16  # the GLOBAL batch: split evenly over the processes of a torchrun job
    seq_len: int = 512
    # budget: exactly one of steps / minutes / tokens (none given = DEFAULT_STEPS steps)
    steps: int | None = None
    minutes: float | None = None
    tokens: int | None = None
    # optimizer (one parameter group, as in the seed)
    optimizer: str = "schedulefree-adamw"
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float | None = None
    # bf16 = weights, grads and optimizer state in bf16 (the seed); bf16-mixed = fp32 master
    # weights + bf16 autocast; fp32 = everything fp32
    precision: str = "bf16"
    seed: int = 42
    # evaluation / logging / checkpoints
    eval_every: int = 0  # 0 = at the end only
    eval_bytes: int | None = 1_000_000  # cap on held-out bytes per evaluation (None or 0 = all)
    eval_batch_size: int | None = None  # None = batch_size
    log_every: int = 10  # progress bar / TensorBoard cadence (metrics.jsonl gets every step)
    checkpoint_every: int = 1000  # 0 = at the end (and on interrupt) only
    out: str | None = None  # None = runs/<model>-d<dim>-l<depth>
    resume: bool = False
    compile: bool = False
    device: str = "auto"  # auto = cuda if available, else cpu
    # multi-process data parallelism under torchrun (WORLD_SIZE > 1): "ddp" or "fsdp2";
    # None = ddp. Ignored for one process. See docs/distributed.md.
    distributed: str | None = None

    # ---- budget -------------------------------------------------------------------------
    def budget(self) -> tuple[str, float]:
        """``("steps"|"minutes"|"tokens", value)``; no budget set means DEFAULT_STEPS steps."""
        given = [(k, getattr(self, k)) for k in BUDGET_FIELDS if getattr(self, k) is not None]
        if len(given) > 1:
            names = ", ".join(f"{k}={v}" for k, v in given)
            raise ValueError(f"give one budget (steps, minutes or tokens), got {names}")
        return given[0] if given else ("steps", DEFAULT_STEPS)

    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def max_steps(self) -> int | None:
        """The step budget when it is known in advance (steps or tokens), else None."""
        kind, value = self.budget()
        if kind == "steps":
            return int(value)
        if kind == "tokens":
            return max(1, math.ceil(value / self.tokens_per_step()))
        return None

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("runs") / f"{self.model.model}-d{self.model.dim}-l{self.model.depth}"

    # ---- checks -------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        self.model.validate()
        _int_in("batch_size", self.batch_size, 1, MAX_BATCH)
        _int_in("seq_len", self.seq_len, 1, MAX_SEQ_LEN)
        if self.batch_size * self.seq_len > MAX_TOKENS_PER_STEP:
            raise ValueError(
                f"batch_size * seq_len must be at most {MAX_TOKENS_PER_STEP:,} tokens per step, "
                f"got {self.batch_size} * {self.seq_len} = {self.batch_size * self.seq_len:,}")
        kind, value = self.budget()
        if kind == "steps":
            _int_in("steps", value, 1, MAX_STEPS)
        elif kind == "tokens":
            _int_in("tokens", value, 1, MAX_STEPS * MAX_TOKENS_PER_STEP)
        else:
            _num_pos("minutes", value)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _num_pos("lr", self.lr)
        if not _is_num(self.weight_decay) or self.weight_decay < 0 or not math.isfinite(self.weight_decay):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else None
        if betas is None or len(betas) != 2 or not all(_is_num(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        _num_pos("eps", self.eps)
        _int_in("warmup_steps", self.warmup_steps, 0, MAX_STEPS)
        steps = self.max_steps()
        if self.optimizer == "adamw" and steps is None:
            raise ValueError("optimizer adamw decays its LR on a cosine over the step budget: give "
                             "--steps or --tokens (or use schedulefree-adamw with --minutes)")
        if steps is not None and self.warmup_steps > steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed the step budget ({steps})")
        if self.grad_clip is not None:
            _num_pos("grad_clip", self.grad_clip)
        _int_in("seed", self.seed, 0, 2**63 - 1)
        if not _is_num(self.val_fraction) or not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        _int_in("eval_every", self.eval_every, 0, MAX_STEPS)
        if self.eval_bytes is not None:
            _int_in("eval_bytes", self.eval_bytes, 0, 1 << 50)
        if self.eval_batch_size is not None:
            _int_in("eval_batch_size", self.eval_batch_size, 1, MAX_BATCH)
        _int_in("log_every", self.log_every, 1, MAX_STEPS)
        _int_in("checkpoint_every", self.checkpoint_every, 0, MAX_STEPS)
        if self.distributed is not None and self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {', '.join(DISTRIBUTED)}, got {self.distributed!r}")
        dev = str(self.device)
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        for name in ("data", "val_data"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"{name} file not found: {path}")
        return self

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        cfg = cls()
        apply_overrides(cfg, d, source="config")
        return cfg


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_in(name: str, v, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise ValueError(f"{name} must be {what} (at most {hi:,}), got {v!r}")


def _num_pos(name: str, v) -> None:
    if not _is_num(v) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], source: str = "override") -> TrainConfig:
    """Set fields from a flat/nested dict (a config file, or flags). ``None`` values are skipped.

    ``model`` may be a dict (ModelConfig fields) or a model name; ``dim``, ``depth``,
    ``mlp_ratio``, ``layer``, ``tie_embeddings`` at top level go to the model. Setting one budget
    field clears the others, so a flag ``--minutes`` overrides a file's ``steps``.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k.replace("-", "_"): v for k, v in values.items() if v is not None}
    unknown = sorted(set(values) - known - set(MODEL_SHORTCUTS))
    if unknown:
        raise ValueError(f"unknown {source} field(s) {unknown}; known: {sorted(known | set(MODEL_SHORTCUTS))}")
    model = values.pop("model", None)
    if isinstance(model, dict):
        mk = {f.name for f in dataclasses.fields(ModelConfig)}
        bad = sorted(set(model) - mk)
        if bad:
            raise ValueError(f"unknown {source} model field(s) {bad}; known: {sorted(mk)}")
        cfg.model = dataclasses.replace(cfg.model, **{k: v for k, v in model.items() if v is not None})
    elif model is not None:
        cfg.model = dataclasses.replace(cfg.model, model=str(model))
    for k in MODEL_SHORTCUTS:
        if k in values:
            setattr(cfg.model, k, values.pop(k))
    if cfg.model.layer is None:
        cfg.model.layer = {}
    budgets = [k for k in BUDGET_FIELDS if k in values]
    if budgets:
        for k in BUDGET_FIELDS:
            setattr(cfg, k, None)
    for k, v in values.items():
        if k == "betas":
            v = tuple(v)
        setattr(cfg, k, v)
    return cfg


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file as a dict."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"config file {p} is a directory")
    suffix = p.suffix.lower()
    text = p.read_text()
    try:
        if suffix == ".toml":
            import tomllib

            d = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text) or {}
        elif suffix == ".json":
            d = json.loads(text)
        else:
            raise ValueError(f"config file {p} must end in .toml, .yaml, .yml or .json")
    except ValueError:
        raise
    except Exception as e:  # yaml.YAMLError and friends
        raise ValueError(f"cannot parse config file {p}: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"config file {p} must hold a table/mapping at top level")
    if isinstance(d.get("model"), dict) and "name" in d["model"] and "model" not in d["model"]:
        d["model"]["model"] = d["model"].pop("name")
    return d


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the file at ``path`` (if any), then ``overrides`` (``None`` values skipped)."""
    cfg = TrainConfig()
    if path is not None:
        apply_overrides(cfg, read_config_file(path), source=f"config file {path}")
    if overrides:
        apply_overrides(cfg, overrides, source="flag")
    return cfg


def resume_mismatch(saved: dict[str, Any], cfg: TrainConfig) -> tuple[str, Any, Any] | None:
    """First field (dotted name, saved value, new value) that differs and matters for resuming."""
    new = cfg.to_dict()
    for key in sorted(set(saved) | set(new)):
        if key in RESUMABLE_FIELDS:
            continue
        a, b = saved.get(key), new.get(key)
        if key == "model" and isinstance(a, dict) and isinstance(b, dict):
            for mk in sorted(set(a) | set(b)):
                if _norm(a.get(mk)) != _norm(b.get(mk)):
                    return f"model.{mk}", a.get(mk), b.get(mk)
        elif _norm(a) != _norm(b):
            return key, a, b
    return None


def _norm(v):
    if isinstance(v, tuple):
        return [_norm(x) for x in v]
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v
