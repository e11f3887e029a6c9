"""Checkpoints: each one step's directory in a run's ``ckpt/``, written whole under a temporary
name and made visible by one atomic rename; ``Checkpointer`` finds, verifies, restores, saves and
prunes them.

    ckpt/step-000600/
        model.safetensors   the model's state dict: the weights to evaluate/ship (Schedule-Free's
                            average x). A tied ``head.weight`` is stored once, as ``embed.weight``
                            (metadata ``tied=1``), and re-tied on load; metadata records the step.
        state.pt            everything else needed to continue bit-exactly, loadable with
                            ``torch.load(weights_only=True)``: optimizer and scheduler state,
                            Schedule-Free's training point y, step/tokens/times, the last train
                            losses, the last evaluation and the RNG states. State that evolves in
                            training without being a parameter (E1's ``spectral_u``) is a buffer,
                            so it is in the weights file.
        manifest.json       {"format": 2, "step": 600, "complete": false,
                             "files": {"model.safetensors": {"bytes": ..., "sha256": ...}, ...}}

Writing (rank 0): ``ckpt/.tmp-<pid>-<thread>-step-000600/`` receives the weights, the state and the
manifest, each fsync'd, then the folder itself; one ``rename`` makes it ``step-000600`` and
``ckpt/`` is fsync'd (at a process's first checkpoint the run folder too, for the entries of
``ckpt/`` and the logs). A kill or a power loss at any moment leaves the new checkpoint whole or
absent and the older ones untouched; Ctrl-C is held back over the rename and its bookkeeping
(``interrupts_deferred``). A write error (disk full) removes the temporary folder and raises
``CheckpointWriteError``. Then only the newest ``keep`` checkpoints stay, plus every one whose
step is a multiple of ``keep_every``.

Reading: newest first, a checkpoint is used when its manifest is readable and every file has
the size and sha256 it lists; a damaged one is reported by the caller and the next older one
tried (``Checkpointer.find``). Loading also refuses non-finite weights.

Old run folders (before manifests) hold ``ckpt/model.safetensors`` + ``ckpt/state.pt``
directly: they are read as one more checkpoint (``legacy``), by step, and never deleted. They
carry no checksums, so their damage is found only when a file does not parse, the two files
disagree on the step, or the weights are not finite.

Test hook: with the environment variable ``RNNLAB_TEST_CHECKPOINT_PAUSE_S`` set to a number of
seconds, the writer sleeps that long between its stages (after each file, before and after the
rename), so a test can kill it inside a write (tests/test_crash.py). Nothing else reads it.

Under torchrun the files hold FULL state dicts (``rnnlab.train.distributed``), written by rank 0
in this same format whatever the wrapper (DDP or FSDP2) and world size, and loaded on every rank:
a checkpoint from 2 ranks resumes on 1 and vice versa. With FSDP2, gathering the state is a
collective, so every rank calls ``Checkpointer.save`` (only rank 0 writes).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnlab.errors import counted
from rnnlab.train.distributed import (
    context,
    full_optimizer_state_dict,
    full_state_dict,
    is_fsdp,
    load_full_optimizer_state_dict,
    load_full_state_dict,
)
from rnnlab.train.durable import (fsync_dir, fsync_file, interrupts_deferred, remove_tree, temporary_name,
                                  write_synced)
from rnnlab.train.optim import eval_weights, in_order, is_schedulefree, load_train_point, train_point

STATE_FORMAT = 1  # the content of state.pt
MANIFEST_FORMAT = 2  # a step directory with a manifest (1: the two files directly in ckpt/)
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST = "manifest.json"
STEP_PREFIX = "step-"
DAMAGED_PREFIX = "damaged-"
PAUSE_ENV = "RNNLAB_TEST_CHECKPOINT_PAUSE_S"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, or made for another model."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, I/O error); the older checkpoints are intact."""


def unless_committed(awaited: Checkpoint) -> str:
    """The hedge of a rank other than 0 whose save ended before it learnt whether rank 0 commits
    ``awaited`` (``Checkpointer.awaited``): its messages say which checkpoint is kept only so far."""
    return (f"unless rank 0 commits the checkpoint of step {awaited.step} that it was writing ({awaited.path}): "
            "rank 0's line says which")


def _cause(e: OSError) -> str:
    """The OS's words and code for a failed write: ``No space left on device (ENOSPC)``."""
    return f"{e.strerror or e}" + (f" ({errno.errorcode[e.errno]})" if e.errno in errno.errorcode else "")


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


def parse_step_dir(name: str) -> int | None:
    """The step of a checkpoint directory's name (``step-000600`` -> 600), else None."""
    digits = name[len(STEP_PREFIX):]
    return int(digits) if name.startswith(STEP_PREFIX) and digits.isdigit() else None


def _reason(e: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    text = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass(frozen=True)
class Checkpoint:
    """One committed checkpoint: the directory holding its files and its step (``legacy``: an
    old run's files directly in ckpt/, without a manifest; its step None when unreadable)."""

    path: Path
    step: int | None
    legacy: bool = False

    @property
    def weights(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def __str__(self) -> str:
        return f"{self.path} (step {'unknown' if self.step is None else f'{self.step:,}'})"

    def verify(self) -> None:
        """Raise ``CheckpointError`` saying what is wrong unless the checkpoint is as written."""
        if self.legacy:
            state = read_state(self.state_file)
            weights_step = read_weights_metadata(self.weights).get("step")
            if weights_step is not None and int(weights_step) != int(state["progress"]["step"]):
                raise CheckpointError(f"{self.path} is inconsistent: weights at step {weights_step}, state at "
                                      f"step {state['progress']['step']} (interrupted while saving)")
            return
        manifest = self.manifest()
        for name, entry in manifest["files"].items():
            path = self.path / name
            try:
                size = path.stat().st_size
            except OSError:
                raise CheckpointError(f"{path} is missing") from None
            if size != entry["bytes"]:
                raise CheckpointError(f"{path} has {counted(size, 'byte')}, its manifest says {entry['bytes']:,}")
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != entry["sha256"]:
                    raise CheckpointError(f"{path} does not match the sha256 in its manifest (corrupted)")

    def manifest(self) -> dict[str, Any]:
        """The checkpoint's manifest, checked to describe this step and both files."""
        path = self.path / MANIFEST
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is unreadable ({_reason(e)})") from None
        files = m.get("files") if isinstance(m, dict) else None
        if (not isinstance(files, dict) or m.get("format") != MANIFEST_FORMAT or m.get("step") != self.step
                or set(files) != {MODEL_FILE, STATE_FILE}
                or not all(isinstance(e, dict) and {"bytes", "sha256"} <= set(e) and isinstance(e["bytes"], int)
                           for e in files.values())):
            raise CheckpointError(f"{path} does not describe a format-{MANIFEST_FORMAT} checkpoint of step {self.step}")
        return m


# ------------------------------------------------------------------------------ reading files
def read_state(path: Path) -> dict[str, Any]:
    """``state.pt`` as saved (pickle-free), or ``CheckpointError`` naming what is wrong."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except Exception as e:  # a truncated or corrupt file fails in many ways: EOFError, RuntimeError, ...
        raise CheckpointError(f"{path} is damaged ({_reason(e)})") from None
    if (not isinstance(state, dict) or state.get("format") != STATE_FORMAT
            or not isinstance(state.get("progress"), dict)):
        raise CheckpointError(f"{path} is not a format-{STATE_FORMAT} rnnlab training state")
    return state


def read_weights_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except Exception as e:  # SafetensorError and friends: a damaged header
        raise CheckpointError(f"{path} is damaged ({_reason(e)})") from None


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


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load a ``model.safetensors`` into ``model`` (strict, re-tying the head); returns its
    metadata. ``CheckpointError`` when the file is missing, damaged, for another model (or another
    shape of it) or holds non-finite values."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_weights_metadata(path)
    try:
        sd = load_file(str(path), device=str(next(model.parameters()).device))
    except Exception as e:  # SafetensorError: truncated or corrupt tensor data
        raise CheckpointError(f"{path} is damaged ({_reason(e)})") from None
    bad = [k for k, t in sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite values in {bad[0]} (damaged, or saved from a diverged run)")
    if _tied(model):
        sd.pop("head.weight", None)
    try:
        missing, unexpected = load_full_state_dict(model, sd, strict=False)
    except RuntimeError as e:  # a tensor of another shape: the run's config.json and weights disagree
        mismatch = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        if not mismatch:
            raise
        raise CheckpointError(f"weights in {path} do not fit the model: {mismatch[0]}") from None
    missing = [k for k in missing if not (_tied(model) and k == "head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"weights in {path} do not fit the model: missing {missing}, unexpected {unexpected}")
    return meta


def load_checkpoint(checkpoint: Checkpoint, model: nn.Module, opt=None, sched=None) -> dict[str, Any]:
    """Restore ``model`` (and ``opt``/``sched`` when given, with the RNG states) from
    ``checkpoint``; returns its progress. With ``opt=None`` the model gets the shipped weights
    (x for Schedule-Free), for eval/sampling."""
    meta = load_weights(model, checkpoint.weights)
    state = read_state(checkpoint.state_file)
    step = int(state["progress"]["step"])
    if (meta.get("step") is not None and int(meta["step"]) != step) or checkpoint.step not in (None, step):
        raise CheckpointError(f"{checkpoint.path} is inconsistent: weights at step {meta.get('step')}, state at "
                              f"step {step} (interrupted while saving?)")
    if opt is not None:
        load_full_optimizer_state_dict(model, opt, state["optimizer"])
        if is_schedulefree(opt):
            tp = state.get("train_point")
            if tp is None:
                raise CheckpointError(f"{checkpoint.path} has no Schedule-Free train point")
            load_train_point(in_order(opt.param_groups), tp)
            for g in opt.param_groups:
                g["train_mode"] = True
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
            # the LR function is this config's (a larger --steps moves the cosine's end): the next
            # step takes its LR, not the one the old budget left in the optimizer (0 at its end);
            # for the same budget this is the very value LambdaLR stored
            for g, base, fn in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                g["lr"] = base * fn(sched.last_epoch)
            sched._last_lr = [g["lr"] for g in opt.param_groups]
        set_rng_state(state["rng"])
    return state["progress"]


def load_train_point_weights(checkpoint: Checkpoint, model: nn.Module, order: list[nn.Parameter]) -> None:
    """Put Schedule-Free's training point y of ``checkpoint`` into ``model`` (instead of the
    shipped average x). ``order``: the model's parameters in the optimizer's order (the order
    ``state.pt`` stores y in: ``optim.in_order``)."""
    tensors = read_state(checkpoint.state_file).get("train_point")
    if tensors is None:
        raise CheckpointError(f"{checkpoint.path} holds no Schedule-Free train point: the run's optimizer keeps "
                              "one set of weights (drop --at train-point)")
    try:
        load_train_point(order, tensors)
    except ValueError as e:
        raise CheckpointError(f"{checkpoint.path}: {e}") from None


# ------------------------------------------------------------------------------ RNG states
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


# ------------------------------------------------------------------------------ writing
def training_state(model: nn.Module, opt, sched, progress: dict[str, Any]) -> dict[str, Any]:
    """``state.pt``'s content (taken with the optimizer in train mode; a collective under FSDP2)."""
    state = {
        "format": STATE_FORMAT,
        "progress": progress,
        "optimizer": full_optimizer_state_dict(model, opt),
        "scheduler": sched.state_dict() if sched is not None else None,
        "train_point": train_point(opt),
        "rng": rng_state(),
    }
    if state["scheduler"] is not None:  # the LR function is rebuilt from the config on resume
        state["scheduler"]["lr_lambdas"] = [None] * len(state["scheduler"].get("lr_lambdas", [None]))
    return state


def _pause() -> None:
    """The test hook (module docstring): sleep ``RNNLAB_TEST_CHECKPOINT_PAUSE_S`` seconds if set."""
    seconds = float(os.environ.get(PAUSE_ENV) or 0)
    if seconds > 0:
        time.sleep(seconds)


def _file_entry(path: Path) -> dict[str, Any]:
    """Make a written file durable and describe it for the manifest."""
    fsync_file(path)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _os_error(e: Exception) -> OSError | None:
    """The ``OSError`` a library's error reports in its message (safetensors': "... (os error 28)"), or None."""
    m = re.search(r"\(os error (\d+)\)", str(e))
    return OSError(int(m[1]), os.strerror(int(m[1]))) if m else None


class _KeepsWriteError:
    """The file ``torch.save`` writes to, keeping the ``OSError`` of a failed write: torch reports it
    as a ``RuntimeError`` that names no cause ("unexpected pos ..."), where a full disk must be said."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


class Checkpointer:
    """The checkpoints in ``directory`` (a run's ckpt/): finds the newest usable one, restores a
    trainer's ``TrainState`` from it, saves new ones (keeping the newest ``keep`` and every step
    that is a multiple of ``keep_every``), and knows which one is the last good one."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2, keep_every: int = 0):
        self.directory = Path(directory)
        self.keep, self.keep_every = keep, keep_every
        self.last: Checkpoint | None = None  # the newest checkpoint this process restored or saved
        # a rank other than 0, from the start of a save until it returns: the checkpoint rank 0 is writing
        # (set still after a second Ctrl-C that ended the save on this rank: kept() says what that means)
        self.awaited: Checkpoint | None = None
        # set while rank 0 writes one, its state gathered (LostPeerWatch lets the write finish)
        self.writing = threading.Event()
        self.entries_synced = False  # whether the run folder's entries (ckpt/, the logs) are on the disk

    @property
    def saved_step(self) -> int | None:
        return self.last.step if self.last is not None else None

    # ------------------------------------------------------------------ finding
    def checkpoints(self) -> list[Checkpoint]:
        """The committed checkpoints, newest first (not verified; an old-format one by its step)."""
        if not self.directory.is_dir():
            return []
        found = [Checkpoint(p, parse_step_dir(p.name)) for p in self.directory.iterdir()
                 if parse_step_dir(p.name) is not None and p.is_dir()]
        legacy = Checkpoint(self.directory, None, legacy=True)
        if legacy.weights.exists() or legacy.state_file.exists():
            try:
                step = read_weights_metadata(legacy.weights).get("step")
            except CheckpointError:
                step = None
            found.append(Checkpoint(self.directory, int(step) if step is not None else None, legacy=True))
        return sorted(found, key=lambda c: (-1 if c.step is None else c.step, not c.legacy), reverse=True)

    def find(self) -> tuple[Checkpoint | None, list[tuple[Checkpoint, str]]]:
        """``(the newest checkpoint that verifies or None, [(each damaged newer one, why)])``."""
        damaged = []
        for c in self.checkpoints():
            try:
                c.verify()
                return c, damaged
            except CheckpointError as e:
                damaged.append((c, str(e)))
        return None, damaged

    def quarantine(self, checkpoint: Checkpoint) -> Path:
        """Rename a damaged step directory to ``damaged-step-...`` (kept for inspection, never
        read again); only the holder of the run folder's lock may call this."""
        target = checkpoint.path.with_name(DAMAGED_PREFIX + checkpoint.path.name)
        if target.exists():
            remove_tree(target)
        os.rename(checkpoint.path, target)
        fsync_dir(self.directory)
        return target

    def kept(self) -> str:
        """Which checkpoint survives a failure now, for messages. A rank other than 0 that a failure
        (a second Ctrl-C) ended inside a save, while rank 0 wrote the checkpoint (``awaited``), does not
        know whether rank 0 commits it: the checkpoint is named once its folder is there (one rename
        made it whole), else the last one, with rank 0's write beside it. That rank's second Ctrl-C
        is handled only once the barrier after the write returns or fails (its wait is in C++),
        often after rank 0 committed; ``last`` alone named the checkpoint before."""
        awaited, committed = self.awaited, False
        with contextlib.suppress(OSError):  # a message being built (a Ctrl-C's): an unreadable folder is no error
            committed = awaited is not None and awaited.path.is_dir()
        if committed:
            return f"last good checkpoint kept at {awaited}"
        kept = ("no checkpoint was written" if self.last is None
                else f"last good checkpoint kept at {self.last}")
        if awaited is None:
            return kept
        return f"{kept}, {unless_committed(awaited)}"

    def newest(self) -> Checkpoint | None:
        """For a message after a failure: ``last``, or a newer checkpoint committed in the folder (by
        rank 0 just before the failure, seen from a rank that waited for it). Not verified: a rename
        made it whole."""
        newest = self.last
        with contextlib.suppress(OSError):
            found = next((c for c in self.checkpoints() if c.step is not None), None)
            if found is not None and (newest is None or newest.step is None or found.step > newest.step):
                newest = found
        return newest

    # ------------------------------------------------------------------ restoring
    def restore(self, state, checkpoint: Checkpoint) -> None:
        state.load_progress(load_checkpoint(checkpoint, state.model, state.optimizer, state.scheduler))
        self.last = checkpoint

    # ------------------------------------------------------------------ saving
    def save(self, state, complete: bool) -> None:
        """Write ``state`` as the checkpoint of its step (rank 0 writes; under FSDP2 every rank
        must call, the gathers are collectives); all ranks wait for it."""
        ctx = context()
        final = Checkpoint(self.directory / step_dir_name(state.step), state.step)
        if not ctx.is_main:
            self.awaited = final
        if ctx.is_main or is_fsdp(state.model):
            try:
                staged = self._stage(state, complete)
                if staged is not None:
                    self._commit(staged, state.step)
            except OSError as e:
                raise CheckpointWriteError(f"could not write the checkpoint of step {state.step} to "
                                           f"{self.directory}: {_cause(e)}; {self.kept()}") from e
            finally:
                self.writing.clear()
            if staged is not None:
                self._prune()
        ctx.barrier()
        # every rank, not only the one that wrote it: the trainer skips a second save of a saved
        # step (a Ctrl-C on a checkpoint step), and a rank that did not would wait in it alone
        self.last, self.awaited = final, None

    def _stage(self, state, complete: bool) -> Path | None:
        """Write the checkpoint into a temporary directory and return it (rank 0). Under FSDP2
        the other ranks call it too, to take part in gathering the state, and get None."""
        main, step = context().is_main, state.step
        tmp = temporary_name(self.directory / step_dir_name(step))
        try:
            contents = training_state(state.model, state.optimizer, state.scheduler, state.progress(complete))
            with eval_weights(state.model, state.optimizer):  # the shipped weights: Schedule-Free's x
                weights = model_state_dict(state.model)  # under FSDP2 the last gather
                if main:
                    from safetensors.torch import save_file

                    self.writing.set()  # from here rank 0 writes, waiting for no other rank (LostPeerWatch)
                    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process with this pid
                    tmp.mkdir(parents=True)
                    _pause()
                    meta = {"format": "rnnlab", "tied": "1" if _tied(state.model) else "0", "step": str(step)}
                    try:
                        save_file(weights, str(tmp / MODEL_FILE), metadata=meta)
                    except Exception as e:  # SafetensorError: "... No space left on device (os error 28)"
                        raise _os_error(e) or e
            if not main:
                return None
            _pause()
            with open(tmp / STATE_FILE, "wb") as f:
                writer = _KeepsWriteError(f)
                try:
                    torch.save(contents, writer)
                except RuntimeError as e:  # torch's "unexpected pos 704 vs 598": the cause is the write's
                    raise writer.error or e
            # safetensors creates its file 0600; give it the mode open() gives (the state file's)
            os.chmod(tmp / MODEL_FILE, (tmp / STATE_FILE).stat().st_mode & 0o777)
            _pause()
            files = {name: _file_entry(tmp / name) for name in (MODEL_FILE, STATE_FILE)}
            manifest = {"format": MANIFEST_FORMAT, "step": step, "complete": complete, "files": files}
            write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
            fsync_dir(tmp)
            _pause()
            return tmp
        except BaseException:  # a write error or Ctrl-C: the older checkpoints are untouched
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _commit(self, staged: Path, step: int) -> None:
        """Make the staged directory the checkpoint of ``step`` with one rename; Ctrl-C waits."""
        final = self.directory / step_dir_name(step)
        with interrupts_deferred():
            try:
                if final.exists():  # a damaged copy of this step: the new one replaces it
                    remove_tree(final)
                os.rename(staged, final)
            except OSError:  # a full disk (ENOSPC, EDQUOT) or I/O error: the staged copy goes as a failed write's does
                shutil.rmtree(staged, ignore_errors=True)
                raise
            _pause()
            try:
                fsync_dir(self.directory)
                if not self.entries_synced:  # once: ckpt/ itself, and the logs made before it, as the run folder's
                    fsync_dir(self.directory.parent)
                    self.entries_synced = True
            except OSError as e:  # the rename is done: the line must not say this checkpoint is lost
                before = ("none before it" if self.last is None
                          else f"the one before it: {self.last.path}, step {self.last.step}")
                raise CheckpointWriteError(
                    f"the checkpoint of step {step} is written ({final}), but the disk did not confirm its "
                    f"folder's rename: {_cause(e)}; a resume takes it unless the machine loses power first "
                    f"({before})") from e
            # here, not only in save(): a second Ctrl-C held back by this block is raised as it
            # ends, skipping save()'s own update, and its message (kept()) must name this checkpoint
            self.last = Checkpoint(final, step)

    def _prune(self) -> None:
        """Delete step directories beyond the newest ``keep``, except multiples of ``keep_every``
        (an old-format checkpoint is never deleted). One that cannot be deleted is said and left:
        the new checkpoint is committed, so the run goes on."""
        for c in [c for c in self.checkpoints() if not c.legacy][self.keep:]:
            if not (self.keep_every and c.step % self.keep_every == 0):
                try:
                    remove_tree(c.path)
                except OSError as e:
                    print(f"rnnlab: warning: could not delete the old checkpoint {c.path} ({e.strerror or e}); it "
                          f"stays on disk (or as a .trash-* folder, removed at the next start) and training goes on",
                          file=sys.stderr, flush=True)
