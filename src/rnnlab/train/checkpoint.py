"""Checkpoints: a directory (a run's ``ckpt/``, see ``RunDir``) holding ``model.safetensors``
(the weights to evaluate/ship) and ``state.pt``; ``Checkpointer`` saves and restores a trainer's
``TrainState`` there.

- ``model.safetensors``: the model's state dict. For Schedule-Free these are the averaged
  weights x (the optimizer's eval point). A tied ``head.weight`` is stored once, as
  ``embed.weight`` (metadata ``tied=1``), and re-tied on load. Metadata also records the step.
- ``state.pt``: everything else needed to continue bit-exactly, loadable with
  ``torch.load(weights_only=True)``: optimizer and scheduler state, Schedule-Free's training point
  y, step/tokens/elapsed time, the last train losses and the RNG states. State that evolves in
  training without being a parameter (E1's spectral-norm vector ``spectral_u``) is a buffer, so it
  is in the weights file.

Both files are written to a temporary name and moved into place with ``os.replace``; the step
is stored in both and checked on load, so a crash between the two moves is detected.

Under torchrun the files hold FULL state dicts (``rnnlab.train.distributed``), written by rank 0
in this same format whatever the wrapper (DDP or FSDP2) and world size, and loaded on every rank:
a checkpoint from 2 ranks resumes on 1 and vice versa. With FSDP2, gathering the state is a
collective, so every rank calls ``save_checkpoint`` (only rank 0 writes).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnlab.train.distributed import (
    context,
    full_optimizer_state_dict,
    full_state_dict,
    is_fsdp,
    load_full_optimizer_state_dict,
    load_full_state_dict,
)
from rnnlab.train.optim import eval_weights, is_schedulefree, load_train_point, train_point

FORMAT = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"


def has_checkpoint(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    return (d / MODEL_FILE).exists() and (d / STATE_FILE).exists()


def _tied(model: nn.Module) -> bool:
    head, embed = getattr(model, "head", None), getattr(model, "embed", None)
    return head is not None and embed is not None and head.weight is embed.weight


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied ``head.weight`` dropped, contiguous tensors, no shared storage.
    Full (unsharded) under FSDP2, where it is a collective and ranks other than 0 get ``{}``."""
    sd = full_state_dict(model)
    if _tied(model):
        sd.pop("head.weight", None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": "rnnlab", "tied": "1" if _tied(model) else "0", **(metadata or {})}
    sd = model_state_dict(model)
    if not context().is_main:  # distributed: rank 0 writes
        return
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load ``model.safetensors`` into ``model`` (strict, re-tying the head); returns metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    sd = load_file(str(path), device=str(next(model.parameters()).device))
    if _tied(model):
        sd.pop("head.weight", None)
        missing, unexpected = load_full_state_dict(model, sd, strict=False)
        missing = [k for k in missing if k != "head.weight"]
    else:
        missing, unexpected = load_full_state_dict(model, sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights in {path} do not fit the model: missing {missing}, unexpected {unexpected}")
    return meta


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate(_to_tuples(st["python"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, opt, sched, progress: dict[str, Any]) -> Path:
    """Write the checkpoint into ``directory``. ``progress`` holds step, tokens, elapsed_s, losses, ... (plain data).

    Schedule-Free: the state dict and y are taken in train mode; the weights file gets x (via
    ``eval_weights``, which restores y exactly afterwards), so training continues unperturbed.

    Distributed: only rank 0 writes; under FSDP2 every rank must call (the gathers are collectives),
    otherwise the other ranks return at once.
    """
    d = Path(directory)
    main = context().is_main
    if not main and not is_fsdp(model):
        return d
    if main:
        d.mkdir(parents=True, exist_ok=True)
    step = int(progress["step"])
    state = {
        "format": FORMAT,
        "progress": progress,
        "optimizer": full_optimizer_state_dict(model, opt),
        "scheduler": sched.state_dict() if sched is not None else None,
        "train_point": train_point(opt),
        "rng": rng_state(),
    }
    if state["scheduler"] is not None:  # the LR function is rebuilt from the config on resume
        state["scheduler"]["lr_lambdas"] = [None] * len(state["scheduler"].get("lr_lambdas", [None]))
    with eval_weights(model, opt):
        save_weights(model, d / MODEL_FILE, metadata={"step": str(step)})
    if not main:
        return d
    tmp = d / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, d / STATE_FILE)
    return d


def load_checkpoint(directory: str | os.PathLike, model: nn.Module, opt=None, sched=None) -> dict[str, Any]:
    """Restore ``model`` (and ``opt``/``sched`` when given) from ``directory``; returns progress.

    With ``opt=None`` the model gets the shipped weights (x for Schedule-Free), for eval/sampling.
    """
    d = Path(directory)
    if not has_checkpoint(d):
        raise FileNotFoundError(f"no checkpoint in {d} (expected {MODEL_FILE} and {STATE_FILE})")
    meta = load_weights(model, d / MODEL_FILE)
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{d / STATE_FILE} has checkpoint format {state.get('format')!r}, expected {FORMAT}")
    step = int(state["progress"]["step"])
    if meta.get("step") is not None and int(meta["step"]) != step:
        raise ValueError(f"checkpoint in {d} is inconsistent: weights at step {meta['step']}, state at step {step} "
                         f"(interrupted while saving?)")
    if opt is not None:
        load_full_optimizer_state_dict(model, opt, state["optimizer"])
        if is_schedulefree(opt):
            tp = state.get("train_point")
            if tp is None:
                raise ValueError(f"checkpoint in {d} has no Schedule-Free train point")
            load_train_point(opt, tp)
            for g in opt.param_groups:
                g["train_mode"] = True
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    return state["progress"]


class Checkpointer:
    """Saves and restores a trainer's ``TrainState`` (model, optimizer, scheduler, progress) in
    ``directory``; remembers the last step saved, so each step is written once and a failure can
    say which checkpoint is kept."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.saved_step: int | None = None

    def restore(self, state) -> None:
        state.load_progress(load_checkpoint(self.directory, state.model, state.optimizer, state.scheduler))
        self.saved_step = state.step

    def save(self, state, complete: bool) -> None:
        """Write ``state`` (rank 0 writes; under FSDP2 every rank must call); all ranks wait."""
        save_checkpoint(self.directory, state.model, state.optimizer, state.scheduler, state.progress(complete))
        self.saved_step = state.step
        context().barrier()

    def kept(self) -> str:
        """Which checkpoint survives a failure now, for error messages."""
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"last good checkpoint kept at {self.directory} (step {self.saved_step})"
