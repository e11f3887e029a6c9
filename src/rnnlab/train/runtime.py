"""What a run is built on: its device, seeds, memory and kernel pre-checks, the model (in its precision's
dtype, plain, then wrapped for data parallelism and ``torch.compile``), held-out evaluation with
the run's settings, and the record of the environment."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnlab.errors import counted
from rnnlab.eval.bpb import evaluate
from rnnlab.layers.base import CUDA_ONLY_BACKENDS
from rnnlab.models.lm import LM
from rnnlab.models.registry import get_spec
from rnnlab.ops.dtypes import param_dtype
from rnnlab.train import distributed as dist
from rnnlab.train.config import check_device


def pick_device(name: str) -> torch.device:
    """``auto`` = cuda if available, else cpu; an explicit device must exist (``cuda:N``: a visible GPU)."""
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
    # a GPU index past the visible ones would fail at first use ("invalid device ordinal", a traceback)
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but this machine shows {torch.cuda.device_count()} "
                         f"GPU(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available (use --device cpu)")
    return dev


EVAL_TOKENS = 16384  # default eval batch: at least this many tokens (evaluation keeps no activations)


def eval_batch(cfg) -> int:
    """The windows per evaluation batch of a run (its TrainConfig): ``--eval-batch-size``, else
    ``--batch-size`` or enough windows for :data:`EVAL_TOKENS` tokens, whichever is more."""
    return cfg.run.eval_batch_size or max(cfg.data.batch_size, EVAL_TOKENS // cfg.data.seq_len)


def evaluate_run(model: nn.Module, split, cfg, *, batch_size: int | None = None,
                 max_bytes: int | None = None) -> dict[str, float]:
    """Held-out ``evaluate`` with a run's settings (its TrainConfig): window length, eval batch,
    byte cap and precision. ``batch_size`` / ``max_bytes`` replace the run's; a cap of 0 = all."""
    batch = batch_size or eval_batch(cfg)
    cap = cfg.run.eval_bytes if max_bytes is None else max_bytes
    return evaluate(model, split, cfg.data.seq_len, batch, cap or None, precision=cfg.run.precision)


def heldout_bytes_scored(split_bytes: int, cfg, cap: int | None = None) -> int:
    """The bytes ``evaluate_run`` scores of a held-out split of ``split_bytes`` bytes under ``cap``
    (default the run's ``eval_bytes``; 0 = all) and the run's window length: every whole window of
    the capped split."""
    from rnnlab.data import eval_num_windows

    cap = cfg.run.eval_bytes if cap is None else cap
    usable = min(split_bytes, cap) if cap else split_bytes
    return eval_num_windows(usable, cfg.data.seq_len) * cfg.data.seq_len


def final_scores_lacking(scored_bytes: int | None, extra_data: str | None, cfg, split_bytes: int | None,
                         extra_bytes: int | None = None) -> list[tuple[str, str]]:
    """What a run's final evaluation (the held-out bytes it scored, and the ``--extra-val-data``
    file it scored, or None, with the bytes it scored there) lacks of what ``cfg`` asks for, as
    ``(kind, text)`` pairs: kind ``"extra"``, an extra held-out file it did not score (the same
    file is the same path, or, for a run folder moved since, the same name scored on the bytes
    this one has); ``"held-out"``, a held-out split scored on other bytes than ``cfg``'s
    ``eval_bytes`` scores (``split_bytes``: the split's size, None when unknown: not checked).
    Empty when it covers them. An extra file scored earlier and not asked for now lacks nothing
    (it stays). The trainer re-scores what is listed (``Trainer.final_eval_due``); ``rnnlab
    bench`` reads it to re-score complete runs."""
    lacking = []
    want = cfg.data.extra_val_path

    def moved_copy() -> bool:  # the same name, scored whole on as many bytes as this file gives
        if extra_data is None or Path(extra_data).name != Path(want).name:
            return False
        try:
            size = os.path.getsize(want)
        except OSError:
            return False
        return extra_bytes == heldout_bytes_scored(size, cfg, cap=0)

    if want is not None and extra_data != str(Path(want)) and not moved_copy():
        name, old = Path(want).name, Path(extra_data).name if extra_data else None
        lacking.append(("extra", f"no score on {name}" if old is None else
                        f"scored {extra_data}, not {want}" if old == name else f"scored {old}, not {name}"))
    if split_bytes is not None and scored_bytes is not None:
        need = heldout_bytes_scored(split_bytes, cfg)
        if scored_bytes != need:
            cap = f"{cfg.run.eval_bytes:,}" if cfg.run.eval_bytes else "all"
            lacking.append(("held-out", f"held-out split scored on {counted(scored_bytes, 'byte')}, --eval-bytes {cap} "
                                        f"scores {need:,}"))
    return lacking


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sync(device: torch.device) -> None:
    """Wait for the device (so a timer measures finished work); CUDA and MPS queue their work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_mem_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def check_memory(cfg, params: int, device: torch.device, world: int = 1) -> None:
    """Refuse a run that cannot fit the device at all: weights + grads + optimizer state, plus a
    lower bound on the activations a step keeps for its backward (each block's input and its
    normalised copy, and the fp32 logits with their gradient, for one micro-batch of
    ``--grad-accum``), so the check never refuses a run that would fit; an out-of-memory error at
    the first step is reported by the trainer. Under torchrun (``world`` processes) a GPU holds
    one process's share of the global batch, and under FSDP2 its share of the state; the
    processes of a CPU run share one memory, which holds the whole batch."""
    have = device_memory(device)
    if have is None:
        return
    shares = world if device.type == "cuda" else 1
    bytes_per = 2 if cfg.run.precision == "bf16" else 4
    states = params * bytes_per * 4  # weights, grads, two optimizer moments (z/exp_avg, exp_avg_sq)
    if cfg.run.distributed == "fsdp2":
        states //= shares
    act_bytes = 4 if cfg.run.precision == "fp32" else 2  # bf16-mixed: bf16 copies under autocast
    tokens = cfg.data.batch_size // shares // cfg.data.grad_accum * cfg.data.seq_len
    activations = tokens * (2 * cfg.model.depth * cfg.model.dim * act_bytes + 2 * cfg.model.vocab_size * 4)
    if states + activations <= have:
        return
    m, gib = cfg.model, 2**30
    if states > have:
        raise ValueError(
            f"model {m.model} dim={m.dim} depth={m.depth} has {params:,} "
            f"parameters: weights, grads and optimizer state need ~{states / gib:,.1f} GiB at "
            f"precision {cfg.run.precision}, more than the {have / gib:,.1f} GiB of {device}")
    raise ValueError(
        f"a step of batch_size {cfg.data.batch_size}"
        + (f" / {shares} processes" if shares > 1 else "")
        + (f" / grad_accum {cfg.data.grad_accum}" if cfg.data.grad_accum > 1 else "")
        + f" x seq_len {cfg.data.seq_len} keeps at least "
        f"~{activations / gib:,.1f} GiB of activations (plus {states / gib:,.1f} GiB of weights and optimizer "
        f"state), more than the {have / gib:,.1f} GiB of {device}: lower --batch-size or --seq-len"
        + (", or raise --grad-accum" if grad_accum_can_rise(cfg, world) else ""))


def grad_accum_can_rise(cfg, world: int) -> bool:
    """Whether a larger ``--grad-accum`` is possible (so an out-of-memory line may name it): each of
    the ``world`` processes' batches has more rows than its micro-batches."""
    return dist.per_rank_batch(cfg.data.batch_size, world) > cfg.data.grad_accum


def cuda_only_backend(cfg, device: torch.device) -> str | None:
    """The run's layer backend when it runs only on CUDA and ``device`` is another, else None."""
    backend = cfg.model.layer.get("backend")
    return backend if backend in CUDA_ONLY_BACKENDS and device.type != "cuda" else None


def check_trainable(cfg, device: torch.device) -> None:
    """Refuse a model whose kernels refuse to train on ``device``, or a layer backend chosen that
    runs only on CUDA (one line naming the cause and the fix), before the run folder is touched
    rather than at the first step."""
    backend = cuda_only_backend(cfg, device)
    if backend:
        raise ValueError(f"{cfg.model.model} layer option backend={backend} runs only on CUDA; this run's device "
                         f"is {device} (use backend=auto, which runs the PyTorch reference there)")
    reason = get_spec(cfg.model.model).training_blocker(device)
    if reason:
        raise ValueError(f"model {cfg.model.model} cannot train on {device}: {reason}")


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on ``device`` (physical RAM for the CPU), None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is the device running out of memory (CUDA's OutOfMemoryError, or the CPU
    allocator's RuntimeError)."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e))


def build_model(cfg, device: torch.device) -> LM:
    """The LM of ``cfg.model`` on ``device`` in the weights' dtype of ``cfg.run.precision``. Off
    CUDA, a layer with an official implementation (Mamba2, Gated DeltaNet) on backend auto builds
    its reference (``ModelConfig.on_device``); ``cfg`` is left as it is."""
    return LM(cfg.model.on_device(device)).to(device=device, dtype=param_dtype(cfg.run.precision))


def wrap_model(model: nn.Module, cfg) -> nn.Module:
    """The module the training step calls (DDP-wrapped and/or compiled); ``model`` stays the
    plain LM used for eval, sampling and checkpoints. Under FSDP2 ``model`` itself is sharded in
    place, so call this before building the optimizer. ``cfg.run.compile`` compiles the whole
    step's forward and loss (README "torch.compile": which recurrences join the graph), as
    ``rnnlab.train.inductor.compile_model`` compiles every model."""
    fwd = model
    if dist.context().world_size > 1:
        fwd = dist.wrap_model(model, cfg.run.distributed or "ddp")
    if cfg.run.compile:
        from rnnlab.train.inductor import compile_model  # imports Inductor (seconds): only when compiling

        return compile_model(fwd)
    return fwd


# the distributions whose versions env.json records (None where not installed): fla ships as two,
# flash-linear-attention over fla-core; transformers and wrapt carry the Hugging Face classes (rnnlab.hf)
VERSIONED = ("rnnlab", "torch", "numpy", "schedulefree", "safetensors", "triton", "mamba-ssm", "causal-conv1d",
             "flash-linear-attention", "fla-core", "transformers", "wrapt")


def command_argv() -> list[str]:
    """``sys.argv`` with the entry point named ``rnnlab`` (not the path of ``__main__.py`` or of
    the console script on this machine), as a user would type it again."""
    argv = list(sys.argv)
    entry = Path(argv[0]) if argv else Path()
    if entry.name == "rnnlab" or (entry.name == "__main__.py" and entry.parent.name == "rnnlab"):
        argv[0] = "rnnlab"
    return argv


def env_info(device: torch.device) -> dict[str, Any]:
    """Versions, host, device, command line, git commit and the machine's load: env.json of a run."""
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
        "argv": command_argv(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {p: version(p) for p in VERSIONED},
        "device": str(device),
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        **machine_load(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    info["git_sha"], info["git_dirty"] = git_state()
    return info


def machine_load() -> dict[str, Any]:
    """``load_avg``: the 1, 5 and 15-minute load averages as the run starts (None where the OS
    has none), and ``cpu_count``: the cores this process may use. A load above the core count
    means other processes compete for the CPU, and a CPU run's tok/s then says little (reports
    warn about it)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # Windows
        load = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"load_avg": load, "cpu_count": cores}


def split_dirty(named: str) -> tuple[str, bool | None]:
    """``(commit, True)`` for ``<sha>-dirty`` (that commit plus uncommitted changes, as
    ``benchmarks/stage_gpu.sh`` names a staged tree), else ``(named, None)``: not known dirty."""
    return (named.removesuffix("-dirty"), True) if named.endswith("-dirty") else (named, None)


def git_state(here: Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the code that runs (the package's folder ``here``, by default this
    file's), ``(None, None)`` where git does not track it: an installed copy inside some other
    repository (a virtualenv in a project's folder) is not that repository's code.
    ``RNNLAB_GIT_COMMIT`` names the commit where the code is a copy whose git metadata is missing
    or stale (e.g. a tree sent to a GPU machine), in :func:`split_dirty`'s form."""
    if os.environ.get("RNNLAB_GIT_COMMIT"):
        return split_dirty(os.environ["RNNLAB_GIT_COMMIT"])
    here = Path(__file__).resolve().parent if here is None else here
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = res.stdout.strip() if res.returncode == 0 else None
        if not sha or subprocess.run(["git", "ls-files", "--error-unmatch", "--", "__init__.py"], cwd=here,
                                     capture_output=True, timeout=5).returncode != 0:  # not this repository's
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def git_commit_label() -> str | None:
    """The code's commit as one string, ``<sha>`` or ``<sha>-dirty`` (:func:`split_dirty`'s form),
    None when unknown: what the benchmarks record."""
    sha, dirty = git_state()
    return sha and sha + ("-dirty" if dirty else "")
