"""TrainConfig: everything a training run depends on, in five sections (model, data, budget,
optim, run), each a dataclass whose fields declare their help, type, range and whether a
resumed run may change them (``rnnlab.options``). Those declarations generate the ``rnnlab
train`` flags, the validation, the resumable set and the suite/sweep key lists.

Every field has one flat name used everywhere outside Python: flags (``--lr``), config files,
``config.json``, suite files and ``rnnlab sweep --set``. Sources, lowest priority first: the
defaults below (the reference study's Table A protocol, README, but for the budget and
``decay_marked``), a TOML/YAML/JSON file (``load_config``), then flags (``apply_overrides``).
The resolved config is written to ``<out>/config.json`` with flat keys (the model's nested under
"model"), the layout of files written before the sections existed, so those load unchanged;
``--resume`` checks a run folder against it (``resume_mismatch``).

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

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Container, Iterable, Iterator

from rnnlab.models.config import ModelConfig
from rnnlab.models.params import parse_count
from rnnlab.options import (HOME_IS_THE_SHELLS, Bounds, Spec, add_flags, at_least, check, flag_values, normalize,
                            option, positive, specs, unexpanded_home, unknown_keys_hint)

OPTIMIZERS = ("schedulefree-adamw", "adamw")
LR_SCHEDULES = ("cosine", "constant")
PRECISIONS = ("bf16", "bf16-mixed", "fp32")
DISTRIBUTED = ("ddp", "fsdp2")
DEFAULT_STEPS = 1000
WARMUP_STEPS = 3  # steps per process (compilation, autotuning) left out of the steady tok/s and --minutes

# Absurdity limits: anything beyond these is a typo, not an experiment.
MAX_BATCH = 1 << 16
MAX_SEQ_LEN = 1 << 22
MAX_TOKENS_PER_STEP = 1 << 31
MAX_STEPS = 10**12


def check_device(name: str) -> None:
    """Refuse a device name rnnlab does not run on (auto, cpu, cuda, cuda:N, mps), as one line:
    ``torch.device`` takes others (meta, xla, ...) or raises a RuntimeError with a traceback. The
    index is ASCII digits: ``str.isdigit`` also says yes to "٣" and "²", which torch refuses."""
    index = name[5:]
    if not (name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and index.isascii()
                                                       and index.isdigit())):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def _count_text(value: Any, must_be: str) -> Any:
    """A count written as text (``"1M"``, ``"1e9"``) as its int, or the error ``must_be, got
    ...``; a number is left for the field's check."""
    if not isinstance(value, str):
        return value
    try:
        return parse_count(value)
    except ValueError:
        raise ValueError(f"{must_be}, got {value!r}") from None


def parse_eval_bytes(value: Any, key: str = "eval_bytes") -> Any:
    """``"all"`` (or 0) = the whole held-out split, stored as 0; ``"1M"`` = a cap of 1,000,000.
    ``key``: the field named in the error (the command line writes a flag's as the flag typed,
    ``rnnlab.cli.named_by_flag``)."""
    if isinstance(value, str) and value.strip().lower() in ("all", "0"):
        return 0
    return _count_text(value, f"{key} must be a byte count (e.g. 1M, 500000) or all")


def parse_curve_eval_bytes(value: Any) -> Any:
    """:func:`parse_eval_bytes` for ``curve_eval_bytes``, whose errors name it."""
    return parse_eval_bytes(value, "curve_eval_bytes")


def parse_tokens(value: Any) -> Any:
    """A token budget written as text, ``"50M"`` or ``"1e9"``, as its count; a number is left for
    the field's check (an int, positive)."""
    return _count_text(value, "tokens must be a token count (e.g. 50M, 1e9)")


def parse_grad_clip(value: Any) -> Any:
    """0 = no clipping, stored as None: how a suite or config file, which cannot write null,
    switches off clipping that its defaults set. A negative number is refused here, in words that
    name 0 too (the field's bound would say "positive")."""
    refused = ValueError(f"grad_clip must be a positive number, or 0 for no clipping, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise refused from None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise refused
    return None if not isinstance(value, bool) and value == 0 else value


@dataclass
class DataConfig:
    """The corpus and the shape of a batch."""

    path: str | None = option(None, key="data", help="raw training file (default: the bundled sample)",
                              scope="suite")
    val_path: str | None = option(None, key="val_data", scope="suite",
                                  help="raw held-out file (default: the last val_fraction of --data; without "
                                       "--data, the bundled sample's held-out file)")
    extra_val_path: str | None = option(None, key="extra_val_data", scope="suite", resumable=True,
                                        help="another held-out file (e.g. WikiText-2's raw test text), scored "
                                             "whole once at the end of training at the same weights as the "
                                             "held-out split (summary.json's extra_val)")
    val_fraction: float = option(0.01, help="share of --data held out at its end", scope="suite",
                                 bounds=Bounds(0, 1, lo_open=True, hi_open=True))
    batch_size: int = option(16, help="the GLOBAL batch (split over --gpus processes)", bounds=positive(MAX_BATCH))
    seq_len: int = option(512, help="bytes per training window", bounds=positive(MAX_SEQ_LEN))
    grad_accum: int = option(1, help="gradient accumulation: each process runs its batch as N micro-batches "
                                     "(forward+backward each, one optimizer step): the same step with about "
                                     "1/N the activation memory", bounds=positive(MAX_BATCH), resumable=True)


@dataclass
class BudgetConfig:
    """How long to train: exactly one of steps, minutes or tokens (a value given for one clears
    the others, so a flag ``--minutes`` replaces a file's ``steps``)."""

    steps: int | None = option(DEFAULT_STEPS, help="optimizer steps", bounds=positive(MAX_STEPS),
                               resumable=True, scope="suite")
    minutes: float | None = option(None, help="training minutes (not counted: evaluation, checkpoints and each "
                                              f"process's first {WARMUP_STEPS} steps, i.e. compilation and autotuning)",
                                   bounds=positive(), resumable=True, scope="suite")
    tokens: int | None = option(None, help="training tokens, e.g. 50M", parse=parse_tokens,
                                bounds=positive(MAX_STEPS * MAX_TOKENS_PER_STEP), resumable=True, scope="suite")

    def chosen(self) -> tuple[str, float]:
        """``("steps"|"minutes"|"tokens", value)``: the one budget that is set."""
        given = [(s.key, getattr(self, s.name)) for s in specs(BudgetConfig) if getattr(self, s.name) is not None]
        if len(given) != 1:
            names = ", ".join(f"{k}={v}" for k, v in given) or "none"
            raise ValueError(f"give one budget (steps, minutes or tokens), got {names}")
        return given[0]


def budget_clock(elapsed_s: float | None, warmup_s: float | None) -> float | None:
    """Training time as a ``--minutes`` budget counts it: ``elapsed_s`` without each process's
    first steps (``warmup_s``: compilation, autotuning); None without a time."""
    return None if elapsed_s is None else elapsed_s - (warmup_s or 0.0)


@dataclass
class OptimConfig:
    """The optimizer. Parameters a layer marks ``_no_weight_decay`` (Mamba2's ``A_log``, ``dt_bias``,
    ``D``; E88's and Gated DeltaNet's ``A_log``, ``dt_bias``: mamba_ssm's and fla's recipe) get no
    weight decay unless ``decay_marked`` is set, which puts every parameter in one group as the
    reference study did."""

    optimizer: str = option("schedulefree-adamw", help="Schedule-Free AdamW (the reference's) or AdamW with "
                                                       "warmup, then --lr-schedule", choices=OPTIMIZERS)
    lr: float = option(3e-4, help="peak learning rate", bounds=positive())
    weight_decay: float = option(0.1, help="decoupled weight decay", bounds=at_least(0))
    decay_marked: bool = option(False, help="also decay the parameters a layer marks as not to decay (A_log, "
                                            "dt_bias and Mamba2's D), as the reference study did (default: off)")
    betas: tuple[float, float] = option((0.9, 0.999), help="Adam betas (default: 0.9 0.999)",
                                        bounds=Bounds(0, 1, hi_open=True))
    eps: float = option(1e-8, help="Adam epsilon", bounds=positive())
    warmup_steps: int = option(0, help="linear LR warmup steps", bounds=at_least(0, MAX_STEPS))
    lr_schedule: str = option("cosine", choices=LR_SCHEDULES,
                              help="AdamW's LR after the warmup: cosine decay to 0 over the step budget, or "
                                   "constant (Schedule-Free needs no schedule and ignores this)")
    grad_clip: float | None = option(None, help="clip the gradient norm to this (default: no clipping; 0 is the "
                                                "same)",
                                     parse=parse_grad_clip, bounds=positive())


@dataclass
class RunConfig:
    """Numerics, seed, device, the cadence of evaluation/logging/checkpoints, and the run folder."""

    precision: str = option("bf16", choices=PRECISIONS,
                            help="bf16 = weights, grads and optimizer state in bf16 (the reference's; large "
                                 "weights never train: README, Precision); bf16-mixed = fp32 master weights + "
                                 "bf16 autocast (recommended for new studies); fp32")
    seed: int = option(42, help="seeds the initialisation and the batch stream", bounds=at_least(0, 2**63 - 1))
    eval_every: int = option(0, help="steps between held-out evals (0 = at the end only)",
                             bounds=at_least(0, MAX_STEPS), resumable=True)
    eval_bytes: int = option(0, help="held-out bytes read per eval, e.g. 1M (K, M, B: 10^3, 10^6, 10^9), "
                                     "scored in whole windows of --seq-len (default: all = 0, the whole "
                                     "held-out split)", parse=parse_eval_bytes,
                             bounds=at_least(0, 1 << 50),
                             resumable=True, scope="suite")
    curve_eval_bytes: int | None = option(None, help="held-out bytes scored by the evals during training "
                                                     "(--eval-every), e.g. 256K for a cheap learning curve; the "
                                                     "eval at the end scores --eval-bytes and these bytes too "
                                                     "(eval.jsonl's curve_val_bpb), so the curve ends on the "
                                                     "same bytes "
                                                     "(default: --eval-bytes)", parse=parse_curve_eval_bytes,
                                          bounds=at_least(0, 1 << 50), resumable=True, scope="suite")
    eval_batch_size: int | None = option(None, help="windows per eval batch (default: --batch-size, or more "
                                                    "windows to make 16,384 tokens per eval batch)",
                                         bounds=positive(MAX_BATCH), resumable=True)
    log_every: int = option(10, help="steps between log lines and TensorBoard/W&B points (metrics.jsonl gets "
                                     "every step)", bounds=positive(MAX_STEPS), resumable=True)
    wandb: str | None = option(None, help="also log to this Weights & Biases project (the wandb package, "
                                          "rnnlab's extra [wandb]; WANDB_MODE=offline keeps it local)",
                               resumable=True, scope="suite")
    checkpoint_every: int = option(1000, help="steps between checkpoints (0 = at the end and on Ctrl-C or "
                                              "SIGTERM only)",
                                   bounds=at_least(0, MAX_STEPS), resumable=True)
    keep_checkpoints: int = option(2, help="checkpoints kept: the newest N (older ones are deleted after each save)",
                                   bounds=positive(MAX_STEPS), resumable=True)
    keep_checkpoint_every: int = option(0, help="also keep for good every checkpoint whose step is a multiple of N "
                                                "(0 = none)", bounds=at_least(0, MAX_STEPS), resumable=True)
    out: str | None = option(None, help="run folder (default runs/<model>-<dim>x<depth>, width x depth)",
                             resumable=True, scope="runner")
    resume: bool = option(False, help="continue the run in --out from its newest usable checkpoint",
                          resumable=True, scope="runner")
    overwrite: bool = option(False, help="delete the run already in --out and start over", resumable=True,
                             scope="runner")
    compile: bool = option(False, help="torch.compile the training forward+loss: slower first steps, faster "
                                       "ones after on a GPU (default: off; the README's torch.compile section)",
                           resumable=True)
    cuda_graph: bool = option(False, help="replay each step's forward and backward as one CUDA graph, captured at "
                                          "the process's first step: for a model whose GPU waits on the CPU to "
                                          "launch its many small kernels (compiled Mamba2); CUDA, one process, "
                                          "--grad-accum 1",
                              resumable=True)
    device: str = option("auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps",
                         resumable=True, scope="suite")
    distributed: str | None = option(None, choices=DISTRIBUTED, resumable=True,
                                     help="data parallelism under torchrun: ddp (default) or fsdp2 (sharded "
                                          "weights, grads and optimizer state); docs/distributed.md")


@dataclass
class TrainConfig:
    """A training run's whole config, one section per concern; ``to_dict`` / ``from_dict`` give
    the flat ``config.json`` form."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ---- derived quantities -------------------------------------------------------------
    def tokens_per_step(self) -> int:
        return self.data.batch_size * self.data.seq_len

    def max_steps(self) -> int | None:
        """The step budget when it is known in advance (steps or tokens), else None."""
        kind, value = self.budget.chosen()
        if kind == "steps":
            return int(value)
        if kind == "tokens":
            return max(1, -(-int(value) // self.tokens_per_step()))  # the ceiling, exact for any int
        return None

    def out_dir(self) -> Path:
        """The run folder: ``run.out``, or ``runs/<model>-<dim>x<depth>`` (width x depth)."""
        m = self.model
        return Path(self.run.out) if self.run.out else Path("runs") / f"{m.model}-{m.dim}x{m.depth}"

    def resolve(self) -> "TrainConfig":
        """A validated copy as a run records it: the run folder named, data paths absolute (so
        the folder can be evaluated from anywhere)."""
        cfg = copy.deepcopy(self).validate()
        cfg.run.out = str(cfg.out_dir())
        for name in ("path", "val_path", "extra_val_path"):
            if getattr(cfg.data, name) is not None:
                setattr(cfg.data, name, str(Path(getattr(cfg.data, name)).resolve()))
        return cfg

    # ---- checks -------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Every field against its declaration, then the rules between fields."""
        self.model.validate()
        for name, section in self.sections():
            if name != "model":
                check(section)
        if self.tokens_per_step() > MAX_TOKENS_PER_STEP:
            raise ValueError(
                f"batch_size * seq_len must be at most {MAX_TOKENS_PER_STEP:,} tokens per step, "
                f"got {self.data.batch_size} * {self.data.seq_len} = {self.tokens_per_step():,}")
        if self.data.batch_size % self.data.grad_accum:
            raise ValueError(f"grad_accum ({self.data.grad_accum}) must divide batch_size ({self.data.batch_size}): "
                             f"every micro-batch has batch_size / grad_accum rows")
        steps = self.max_steps()
        if steps is not None and steps > MAX_STEPS:  # a token budget over small steps
            raise ValueError(f"tokens ({self.budget.tokens:,}) at batch_size * seq_len = {self.tokens_per_step():,} "
                             f"tokens per step take {steps:,} steps, more than the {MAX_STEPS:,} a step budget may be")
        if self.optim.optimizer == "adamw" and self.optim.lr_schedule == "cosine" and steps is None:
            raise ValueError("optimizer adamw decays its LR on a cosine over the step budget: give "
                             "--steps or --tokens (or --lr-schedule constant, or schedulefree-adamw)")
        if self.optim.optimizer == "schedulefree-adamw" and self.optim.betas[0] == 0:
            raise ValueError("schedulefree-adamw needs betas[0] above 0: its averaged weights x, which evaluations "
                             "and checkpoints use, are recovered from y and z by dividing by betas[0]")
        if steps is not None and self.optim.warmup_steps > steps:
            raise ValueError(f"warmup_steps ({self.optim.warmup_steps}) must not exceed the step budget ({steps})")
        window = self.data.seq_len + 1  # an evaluation scores whole windows: a smaller cap fails only then
        caps = [("eval_bytes", self.run.eval_bytes)]
        if self.run.eval_every:  # curve_eval_bytes is read only by the evaluations during training
            caps.append(("curve_eval_bytes", self.run.curve_eval_bytes))
        for key, cap in caps:
            if cap and cap < window:
                raise ValueError(f"{key} must be all (0) or at least one evaluation window, seq_len+1 = {window:,} "
                                 f"bytes, got {cap:,}")
        dev = self.run.device
        check_device(dev)
        if self.run.cuda_graph and dev in ("cpu", "mps"):
            raise ValueError(f"cuda_graph needs a CUDA device, got device {dev!r} (use --no-cuda-graph)")
        if self.run.cuda_graph and self.data.grad_accum > 1:
            raise ValueError(f"cuda_graph captures one forward and backward per step: it needs grad_accum 1, "
                             f"got {self.data.grad_accum}")
        for key, path in (("data", self.data.path), ("val_data", self.data.val_path),
                          ("extra_val_data", self.data.extra_val_path), ("out", self.run.out)):
            if path == "":  # an unset shell variable: not the current folder (data), not the default run (out)
                raise ValueError(f"{key} must be a path, got '' (omit --{key.replace('_', '-')} for its default)")
            if path is not None and (home := unexpanded_home(path)) is not None:
                raise ValueError(f"{key} {path} starts with ~, {HOME_IS_THE_SHELLS}: write it as {home}")
            if path is not None and key != "out" and not Path(path).exists():
                raise FileNotFoundError(f"{key} file not found: {path}")
            if path is not None and key != "out" and Path(path).is_dir():  # named by key: which file it is
                raise IsADirectoryError(f"{key} file {path} is a directory, expected a raw byte file")
        return self

    # ---- sections and flat keys ---------------------------------------------------------
    def sections(self) -> Iterator[tuple[str, Any]]:
        """``(name, section)`` pairs: model, data, budget, optim, run."""
        for f in dataclasses.fields(self):
            yield f.name, getattr(self, f.name)

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat ``config.json`` form: the model section nested under "model", the rest by key."""
        d: dict[str, Any] = {"model": self.model.to_dict()}
        for name, section in self.sections():
            if name != "model":
                d.update({s.key: getattr(section, s.name) for s in specs(type(section))})
        d["betas"] = list(self.optim.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config of flat keys ``d`` (``to_dict``'s layout, as in ``config.json``); fields it
        lacks keep their defaults (``RunDir.saved_config`` first fills what an old file meant:
        :data:`LEGACY_DEFAULTS`)."""
        return apply_overrides(cls(), d, source="config")


def _fields_by_key() -> dict[str, tuple[str, Spec]]:
    out = {}
    for f in dataclasses.fields(TrainConfig):
        for s in specs(f.default_factory):
            if s.key in out:
                raise TypeError(f"config key {s.key!r} is declared twice")
            out[s.key] = (f.name, s)
    return out


# What a config.json written before a field existed meant by leaving it out, where that differs from
# the field's default: those runs decayed every parameter.
LEGACY_DEFAULTS = {"decay_marked": True}

# Model fields rnnlab no longer has that said how a run was computed, never what its weights are:
# a config.json that has one still loads, without it (fused_add_norm: one fla kernel for each
# residual add and LayerNorm, the same arithmetic; removed 2026-12-02, docs/kernels.md).
RETIRED_MODEL_FIELDS = frozenset({"fused_add_norm"})


def legacy_hint(key: str) -> str:
    """A hint for a resume refused on ``key`` when older runs differ there by design, else ""."""
    if key not in LEGACY_DEFAULTS:
        return ""
    value = json.dumps(LEGACY_DEFAULTS[key])
    return f" (runs saved before rnnlab had {key} count as {key} = {value}: set it to continue them)"


# Every field by its flat key: {key: (section name, Spec)}; the lists below derive from it.
FIELDS = _fields_by_key()
SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))  # model, data, budget, optim, run
MODEL_KEYS = tuple(k for k, (section, _) in FIELDS.items() if section == "model")
BUDGET_KEYS = tuple(k for k, (section, _) in FIELDS.items() if section == "budget")
RESUMABLE = frozenset(k for k, (_, s) in FIELDS.items() if s.meta.resumable)
SUITE_KEYS = tuple(k for k, (_, s) in FIELDS.items() if s.meta.scope == "suite")  # one value per suite
RUNNER_KEYS = tuple(k for k, (_, s) in FIELDS.items() if s.meta.scope == "runner")  # set per run folder


def add_config_flags(parser, keys: Container[str] | None = None, show_defaults: bool = True) -> None:
    """The command-line flags of every field (of those in ``keys`` when given): one argparse
    group per section that has any; ``show_defaults=False`` leaves rnnlab train's defaults out of
    the help (``rnnlab bench``, whose suites set the values)."""
    for f in dataclasses.fields(TrainConfig):
        if keys is not None and not any(s.key in keys for s in specs(f.default_factory)):
            continue
        doc = " ".join((f.default_factory.__doc__ or "").split("\n\n")[0].split()).replace("``", "")
        add_flags(parser.add_argument_group(f.name, description=doc), f.default_factory, keys, show_defaults)


def config_flag_values(args) -> dict[str, Any]:
    """The config flags that were given (``add_config_flags``), as ``{key: value}``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        out.update(flag_values(args, f.default_factory))
    return out


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], source: str = "override") -> TrainConfig:
    """Set fields from a flat dict (a config file, flags, a suite row) by flat key; ``None``
    values are skipped (not given). ``model`` may be a model name or a dict of model fields;
    model fields may also be given at top level (``dim``, ``layer``, ...)."""
    values = {k.replace("-", "_"): v for k, v in values.items() if v is not None}
    model = values.pop("model", None)
    if isinstance(model, dict):
        bad = sorted(set(k.replace("-", "_") for k in model) - set(MODEL_KEYS))
        if bad:
            raise ValueError(f"unknown {source} model field(s) {bad}; known: {sorted(MODEL_KEYS)}")
        values = {**{k.replace("-", "_"): v for k, v in model.items() if v is not None}, **values}
    elif model is not None:
        values["model"] = model
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown {source} field(s) {unknown}"
                         f"{unknown_keys_hint(unknown, FIELDS, cutoff=0.75, aliases=OTHER_NAMES)}")
    if any(FIELDS[k][0] == "budget" for k in values):
        cfg.budget = BudgetConfig(steps=None)
    for key, value in values.items():
        section, spec = FIELDS[key]
        setattr(getattr(cfg, section), spec.name, normalize(spec, value))
    return cfg


# what other trainers call some fields (Hugging Face, nanoGPT, Megatron), for the "did you mean" of an unknown key
OTHER_NAMES = {"learning_rate": "lr", "warmup": "warmup_steps", "max_steps": "steps", "num_steps": "steps",
               "train_steps": "steps", "seq_length": "seq_len", "context_length": "seq_len", "block_size": "seq_len",
               "d_model": "dim", "hidden_size": "dim", "n_layer": "depth", "n_layers": "depth", "num_layers": "depth",
               "gradient_accumulation_steps": "grad_accum", "max_grad_norm": "grad_clip", "dataset": "data"}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON file as a dict."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"config file {p} is a directory")
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"config file {p} must end in .toml, .yaml, .yml or .json")
    try:
        text = p.read_text()
        if suffix == ".toml":
            import tomllib

            d = tomllib.loads(text)
        elif suffix == ".json":
            d = json.loads(text, object_pairs_hook=_pairs_once)
        else:
            d = _yaml_load(text) or {}
    except OSError:
        raise
    except Exception as e:  # TOMLDecodeError, JSONDecodeError, yaml.YAMLError, UnicodeDecodeError
        raise ValueError(f"cannot parse config file {p}: {' '.join(str(e).split())}") from None
    if not isinstance(d, dict):
        raise ValueError(f"config file {p} must hold a table/mapping at top level")
    model_table = d["model"] if isinstance(d.get("model"), dict) else {}
    for layer in (d.get("layer"), model_table.get("layer")):  # YAML's unquoted 1 among the options' names
        bad = [k for k in layer if not isinstance(k, str)] if isinstance(layer, dict) else []
        if bad:
            raise ValueError(f"config file {p}: layer option {bad[0]!r} is not an option name (quote it if it is one; "
                             f"rnnlab layers lists them)")
    for table in (d, model_table):
        bad = [k for k in table if not isinstance(k, str)]  # YAML's unquoted 1, true, null
        if bad:
            raise ValueError(f"config file {p}: key {bad[0]!r} is not a field name (quote it if it is one)")
        # batch_size and batch-size name one field: the later would win without a word
        spellings: dict[str, str] = {}
        for k in table:
            if (first := spellings.setdefault(k.replace("-", "_"), k)) != k:
                raise ValueError(f"config file {p}: keys {first!r} and {k!r} are one field, given twice: keep one")
    # a model field at top level and in [model] ([layer] and [model.layer] too): the top level's won, the other
    # was dropped without a word
    top = {k.replace("-", "_"): k for k in d if k != "model"}
    twice = [k for k in model_table if k != "model" and k.replace("-", "_") in top
             and k.replace("-", "_") in MODEL_KEYS]
    if twice:
        key = twice[0].replace("-", "_")
        where = "[layer] and [model.layer]" if key == "layer" else "at top level and in [model]"
        raise ValueError(f"config file {p}: {key} is given twice, {where}: keep one")
    # a [data] section (the name of a config section, but also the flat key of the corpus path):
    # a --data flag would replace it whole, and the fields in it with it, without a word
    tables = sorted(k for k, v in d.items() if isinstance(v, dict) and k in FIELDS and k not in ("model", "layer"))
    if tables:
        raise ValueError(f"config file {p}: [{tables[0]}] is a table, but {tables[0]} is one value: write the "
                         f"fields in it at top level (only [model] and [layer] hold fields)")
    # [optim], [budget], [run]: the headings that group rnnlab train --help's flags, not tables of the file
    headings = [k for k, v in d.items() if isinstance(v, dict) and k in SECTIONS and k not in FIELDS]
    if headings:
        raise ValueError(f"config file {p}: [{headings[0]}] is a heading of rnnlab train --help, not a table: "
                         f"write the fields in it at top level (only [model] and [layer] hold fields)")
    if isinstance(d.get("model"), dict) and "name" in d["model"] and "model" not in d["model"]:
        d["model"]["model"] = d["model"].pop("name")
    return d


def _pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (``json`` keeps the last without a word;
    TOML refuses it too)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} is given twice")
        out[key] = value
    return out


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load``, but a number in exponent form without a dot (``lr: 3e-4``, ``eps: 1e-8``)
    is a float, as in YAML 1.2 and TOML: PyYAML follows YAML 1.1, which reads it as a string, and
    the field's check then refused what the file wrote as a number. A key given twice in one mapping
    is refused (PyYAML keeps the last without a word), but not one a merge (``<<: *base``) brought in."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool, type(None))):  # others: the base class says
                    if key in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                                key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep)

    exponent = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789"))
    return yaml.load(text, Loader=Loader)


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the file at ``path`` (if any), then ``overrides`` (``None`` values skipped)."""
    cfg = TrainConfig()
    if path is not None:
        apply_overrides(cfg, read_config_file(path), source=f"config file {path}")
    if overrides:
        apply_overrides(cfg, overrides, source="flag")
    return cfg


def ignores_lr_schedule(optimizer: Any) -> bool:
    """Whether ``optimizer`` trains the same whatever ``lr_schedule`` says (Schedule-Free: its
    learning rate needs no schedule)."""
    return optimizer == "schedulefree-adamw"


def training_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What makes ``cfg``'s training what it is, in ``to_dict``'s form: every field but the run's
    folder (``out``) and, under Schedule-Free (which ignores it), ``lr_schedule``. Two runs equal
    here train the same thing."""
    d = {k: v for k, v in cfg.to_dict().items() if k != "out"}
    if ignores_lr_schedule(cfg.optim.optimizer):
        d.pop("lr_schedule")
    return d


def stored_value(key: str, value: Any) -> Any:
    """A value of config key ``key`` as its field stores it (a suite's ``tokens = "50M"`` as 50000000,
    ``grad_clip`` 0 as None); a value the field refuses, or a key that is no config field, as it is."""
    if key not in FIELDS:
        return value
    try:
        return normalize(FIELDS[key][1], value)
    except (ValueError, TypeError):
        return value


def resume_mismatch(saved: dict[str, Any], cfg: TrainConfig,
                    keys: Iterable[str] | None = None) -> tuple[str, Any, Any] | None:
    """First field (dotted name, saved value, new value) that differs and matters for resuming
    (``keys``: among these top-level fields only).
    A field the saved config lacks (one added to rnnlab since) counts as its default; pass
    ``RunDir.saved_config()``, which first fills what old files meant (:data:`LEGACY_DEFAULTS`).
    The layer's ``backend`` does not matter: each computes the same layer (checked against the
    reference), so a run of a CUDA-only backend resumes elsewhere with ``backend=auto``. Layer
    options are compared one by one, one not set counting as its layer's default (``--layer
    heads=1`` resumes an e1 run made without it), and named so (``model.layer.heads``); the model
    kind is compared first. Schedule-Free's ``lr_schedule`` does not matter (it ignores it)."""
    new, defaults = cfg.to_dict(), TrainConfig().to_dict()
    ignores_schedule = ignores_lr_schedule(saved.get("optimizer", defaults["optimizer"])) and ignores_lr_schedule(
        new["optimizer"])
    for key in sorted(set(saved) | set(new) if keys is None else keys):
        if key in RESUMABLE or (key == "lr_schedule" and ignores_schedule):  # Schedule-Free ignores lr_schedule
            continue
        a, b = saved.get(key, defaults.get(key)), new.get(key)
        if key == "model" and isinstance(a, dict) and isinstance(b, dict):
            for mk in sorted(set(a) | set(b), key=lambda k: (k != "model", k)):
                old, now = a.get(mk, defaults["model"].get(mk)), b.get(mk)
                if mk == "layer" and isinstance(old, dict) and isinstance(now, dict):  # its backend aside
                    old, now = {**_layer_defaults(a.get("model")), **old}, {**_layer_defaults(b.get("model")), **now}
                    option = next((k for k in sorted((set(old) | set(now)) - {"backend"})
                                   if comparable(old.get(k)) != comparable(now.get(k))), None)
                    if option is not None:
                        return f"model.layer.{option}", old.get(option), now.get(option)
                elif comparable(old) != comparable(now):
                    return f"model.{mk}", old, now
        elif comparable(a) != comparable(b):
            return key, a, b
    return None


def _layer_defaults(kind: Any) -> dict[str, Any]:
    """Each layer option of model kind ``kind`` with its default ({} for a kind rnnlab does not know)."""
    from rnnlab.models.registry import MODELS

    spec = MODELS.get(kind) if isinstance(kind, str) else None
    return {} if spec is None else {s.key: s.default for s in spec.layer_options()}


# what a setting's None means, as a refused resume writes it
NONE_MEANS = {"data": "the bundled sample", "val_data": "the held-out tail of data", "grad_clip": "no clipping"}


def shown_setting(key: str, value: Any) -> str:
    """A value of ``resume_mismatch``'s as its refusal writes it: JSON, or where it is None what
    that means (``NONE_MEANS``; a layer option's "the layer's default (unset)")."""
    if value is None and key.startswith("model.layer."):
        return "the layer's default (unset)"
    return NONE_MEANS[key] if value is None and key in NONE_MEANS else json.dumps(value)


def comparable(v):
    """A config value as two are compared: tuples and lists as lists, dicts value by value, an int
    as a float (``1`` and ``1.0`` are one value)."""
    if isinstance(v, (tuple, list)):
        return [comparable(x) for x in v]
    if isinstance(v, dict):
        return {k: comparable(x) for k, x in v.items()}
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v
