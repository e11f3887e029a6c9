"""Multi-process (multi-GPU) training through ``torchrun``: process group, model wrapping, and
full (unsharded) state dicts so checkpoints move freely between world sizes and wrappers.

    torchrun --standalone --nproc-per-node 2 -m rnnlab train ... --distributed ddp
    rnnlab train --gpus 2 ...                      # re-launches itself through torchrun

The process layout comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
``WORLD_SIZE`` unset or 1 means one ordinary process: nothing here initialises anything then,
and every helper is the identity / a local call.

Backend: NCCL on CUDA, gloo on CPU. ``NCCL_NVLS_ENABLE=0`` is set (``setdefault``, so an
explicit value wins) before the process group starts: NVLink SHARP / multicast stays off.

Modes (``wrap_model``):
- ``"ddp"``: ``DistributedDataParallel``: every rank holds the whole model and optimizer state;
  gradients are all-reduced (averaged) in buckets during backward.
- ``"fsdp2"``: ``torch.distributed.fsdp.fully_shard`` on every block, then on the root (embedding,
  final norm, tied head): parameters, gradients and optimizer state are sharded over ranks (dim 0);
  each block's weights are all-gathered just in time for its forward/backward.

Checkpoints are always written as FULL state dicts by rank 0, in the same format as a single
process (``full_state_dict``, ``full_optimizer_state_dict``), and loaded on every rank
(``load_full_state_dict``, ``load_full_optimizer_state_dict``), so a run saved on 2 ranks resumes
on 1 and vice versa, with DDP or FSDP2. With FSDP2, gathering a full state dict is a collective:
every rank must call these helpers (only rank 0 receives the tensors).

Per-rank batch: ``--batch-size`` is the GLOBAL batch; each of N ranks takes ``batch/N`` samples
(``per_rank_batch``), so N ranks see exactly the samples one process with the global batch sees
(``BatchStream(rank, world_size)``), and the averaged gradient is the same. With
``--grad-accum N`` each rank runs its share as N micro-batches, all but the last inside
``no_grad_sync`` (gradients are averaged over ranks once per optimizer step).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

from rnnlab.signals import STOP_SIGNALS
from rnnlab.train.config import DISTRIBUTED
from rnnlab.train.peers import LostPeerWatch, end_lost_rank, local_peers, process_identity, watchable

DEFAULT_TIMEOUT_MIN = 60  # barriers wait while rank 0 evaluates / checkpoints; NCCL's 10 min is short
TIMEOUT_ENV = "RNNLAB_DIST_TIMEOUT_MIN"  # another process-group timeout, in minutes


def _env_int(env, name: str, default: int) -> int:
    v = env.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {v!r}") from None


def timeout_minutes(env=None) -> float:
    """The process-group timeout in minutes: ``RNNLAB_DIST_TIMEOUT_MIN`` (unset or empty: 60), a
    positive number that a ``timedelta`` holds, else a ValueError naming the variable (``inf`` was
    an OverflowError's traceback, ``0`` or a negative number a timeout of no time)."""
    env = os.environ if env is None else env
    v = env.get(TIMEOUT_ENV)
    if v is None or v.strip() == "":
        return DEFAULT_TIMEOUT_MIN
    try:
        minutes = float(v)
        if minutes > 0:
            datetime.timedelta(minutes=minutes)
            return minutes
    except (ValueError, OverflowError):  # not a number, nan, inf, beyond a timedelta
        pass
    raise ValueError(f"environment variable {TIMEOUT_ENV} must be a positive number of minutes (the process "
                     f"group's timeout; default {DEFAULT_TIMEOUT_MIN}), got {v!r}")


@dataclass
class DistContext:
    """Where this process sits in a torchrun job. ``backend`` is None until ``init``;
    ``local_peers``: the other ranks' processes on this machine (``peers.local_peers``), known
    once ``init`` has started the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    local_peers: dict[int, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env=None) -> "DistContext":
        env = os.environ if env is None else env
        world = _env_int(env, "WORLD_SIZE", 1)
        rank = _env_int(env, "RANK", 0)
        local = _env_int(env, "LOCAL_RANK", rank)
        if world < 1:
            raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
        if not 0 <= rank < world:
            raise ValueError(f"RANK must be in [0, WORLD_SIZE={world}), got {rank}")
        if local < 0:
            raise ValueError(f"LOCAL_RANK must be >= 0, got {local}")
        return cls(rank=rank, world_size=world, local_rank=local)

    # ---------------------------------------------------------------- properties
    @property
    def enabled(self) -> bool:
        """True when several processes train together (a process group is or will be used)."""
        return self.world_size > 1

    @property
    def initialized(self) -> bool:
        """True once the process group is up (the collectives run only then)."""
        return self.enabled and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- setup
    def device(self, requested: str = "auto") -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` for auto/cuda/cuda:N when distributed
        (each rank owns one GPU), else ``requested`` resolved as usual."""
        req = str(requested)
        if not self.enabled:
            if req == "auto":
                return torch.device("cuda" if torch.cuda.is_available() else "cpu")
            return torch.device(req)
        if req == "auto":
            req = "cuda" if torch.cuda.is_available() else "cpu"
        if req.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(f"device {requested!r} requested but CUDA is not available (use --device cpu)")
            n = torch.cuda.device_count()
            if self.local_rank >= n:
                raise ValueError(f"LOCAL_RANK {self.local_rank} has no GPU: this host has {n} "
                                 f"(start at most {n} processes per node)")
            return torch.device("cuda", self.local_rank)
        if req == "cpu":
            return torch.device("cpu")
        raise ValueError(f"distributed training runs on cuda or cpu, not {requested!r}")

    def init(self, device: torch.device) -> "DistContext":
        """Start the process group (NCCL on CUDA, gloo on CPU); no-op for one process."""
        if not self.enabled:
            return self
        if dist.is_initialized():
            self.backend = dist.get_backend()
            return self
        timeout = datetime.timedelta(minutes=timeout_minutes())
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast (NVLS)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            self.backend = "nccl"
            dist.init_process_group("nccl", rank=self.rank, world_size=self.world_size, timeout=timeout,
                                    device_id=device)
        else:
            self.backend = "gloo"
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=timeout)
        identities: list = [None] * self.world_size
        dist.all_gather_object(identities, process_identity())
        self.local_peers = watchable(local_peers(identities, self.rank))
        return self

    def close(self, sync: bool = True) -> None:
        """Leave the process group. ``sync`` (after a normal finish): a barrier first, so no rank
        tears down while another is still inside a collective (gloo can abort at exit otherwise);
        pass False on an error path, where the other ranks may never arrive. A peer that ended
        before the barrier (its collective fails, or a peer on this machine is seen gone while the
        barrier waits: ``LostPeerWatch``) ends this rank with one line saying that its training had
        ended (``end_lost_rank``: exit status 1, no teardown that could wait for the peer)."""
        if self.initialized and sync:
            try:
                with LostPeerWatch(self.local_peers, lambda peer: self._end_at_close(f"rank {peer}'s process has ended")):
                    self.barrier()
            except RuntimeError as e:
                if (failure := collective_failure(e)) is None:
                    dist.destroy_process_group()
                    raise
                self._end_at_close(failure[0])
        if self.initialized:
            dist.destroy_process_group()
        self.backend = None

    def _end_at_close(self, cause: str) -> NoReturn:
        end_lost_rank(self.rank, f"another rank ended at the closing barrier, after this rank's training ended ({cause})")

    # ---------------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.initialized:
            if self.backend == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()

    def _reduce_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_mean(self, value: float) -> float:
        """Mean of a Python float over ranks (float64 on the wire); identity for one process."""
        if not self.initialized:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._reduce_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank."""
        if not self.initialized:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._reduce_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def agree(self, dt: float, stop: bool) -> tuple[float, bool]:
        """One small all-reduce per step so every rank takes the same decisions: the slowest
        rank's step time (for a ``--minutes`` budget) and whether any rank saw a Ctrl-C."""
        if not self.initialized:
            return float(dt), bool(stop)
        t = torch.tensor([float(dt), 1.0 if stop else 0.0], dtype=torch.float64, device=self._reduce_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t[0].item()), bool(t[1].item() > 0)

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` from rank ``src`` on every rank (pickled)."""
        if not self.initialized:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self._reduce_device())
        return box[0]


# ------------------------------------------------------------------------- process-wide context
_CTX: DistContext | None = None


def context() -> DistContext:
    """This process's context (read from the environment on first use; not initialised)."""
    global _CTX
    if _CTX is None:
        _CTX = DistContext.from_env()
    return _CTX


def init_distributed(device: str = "auto") -> torch.device:
    """Read torchrun's environment, pick this rank's device and start the process group; returns
    the device."""
    ctx = context()
    dev = ctx.device(device)
    ctx.init(dev)
    return dev


@contextlib.contextmanager
def stops_end_at_once(ctx: DistContext):
    """Inside the block, a rank of several (``ctx.enabled``) ends at once on a SIGTERM, SIGINT or
    SIGHUP (their default action, as a ``kill -9`` would: safe, docs/reliability.md); for the
    trainer's start-up, before the rank has trained a step of its own and so has nothing to save.
    A Python handler (a stop handled as a Ctrl-C) runs only once the main thread is back in Python,
    and a rank waiting in ``init_process_group`` (or a first collective) for a peer that died waits
    in C++ for as long as the process-group timeout: torchrun, stopping it after the peer's death,
    killed it only after its grace (30 s, whatever ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` says: torch
    2.13 waits that long after a worker failed). Signals this process ignores (``nohup``, ``cmd &``
    in a script) stay ignored; one process, or another thread: nothing."""
    if not ctx.enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_DFL) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, before in previous.items():
            if signal.getsignal(s) is signal.SIG_DFL:  # not ignored since (ignore_stops: a peer is gone)
                signal.signal(s, before)


# what a collective's error says when the rank at the other end is gone (gloo's socket errors)
_PEER_GONE = ("closed by peer", "reset by peer", "broken pipe", "connection refused", "end of file",
              "remote process exited")


def collective_failure(e: BaseException) -> tuple[str, bool] | None:
    """``(its cause, whether it says that another rank is gone)`` when ``e`` is a failed
    collective between ranks, else None: a ``torch.distributed`` error (``DistError``:
    ``DistBackendError``, ``DistNetworkError``, ``DistStoreError``; NCCL's errors and timeouts), or
    a RuntimeError from gloo or NCCL (gloo raises a plain one: "[.../pair.cc:537] Read error
    [127.0.0.1]:2994: Connection reset by peer. This is typically caused by ..."). The cause is
    shortened only where a peer is gone (its own log says why): any other failure may be this
    rank's own (NCCL's "unhandled cuda error ... Last error: Cuda failure 'out of memory'") and its
    line, with no traceback, is all that is left of it."""
    text = " ".join(str(e).split())
    if not isinstance(e, getattr(dist, "DistError", ())):  # (torch < 2.3 has none)
        if not isinstance(e, RuntimeError) or not re.search(r"gloo|nccl|process ?group", text, re.IGNORECASE):
            return None
    cause = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's [file.cc:line] prefix
    cause = cause.split(". This is typically")[0].split(" Check the logs")[0].rstrip(". ")
    gone = any(p in cause.lower() for p in _PEER_GONE)
    if gone and len(cause) > 160:
        cause = cause[:157] + "..."
    return cause or type(e).__name__, gone


def ignore_stops() -> None:
    """A rank whose peers are gone ignores SIGTERM, SIGINT and SIGHUP from here on (main thread
    only): there is nothing left to save, and torchrun's stop, which follows a peer's death
    closely, would otherwise come as a Ctrl-C while the rank says so and ends. SIGINT last: a
    SIGTERM or SIGHUP still pending runs its handler as ``signal.signal`` starts (CPython), and
    with SIGINT ignored by then ``stops_as_ctrl_c`` would take this for a process whose Ctrl-C is
    ignored and raise a KeyboardInterrupt in the rank's ending."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """The per-rank batch for a GLOBAL batch; the global batch must divide evenly."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if global_batch % world_size:
        raise ValueError(f"batch_size (the global batch) must be divisible by the number of processes: "
                         f"{global_batch} is not divisible by {world_size}")
    return global_batch // world_size


# ------------------------------------------------------------------------- wrapping
def is_fsdp(model: nn.Module) -> bool:
    """True for a module sharded with FSDP2's ``fully_shard`` (also under ``torch.compile``)."""
    model = getattr(model, "_orig_mod", model)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(model, FSDPModule)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` / DDP (an FSDP2 module is its own plain module)."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def wrap_model(model: nn.Module, mode: str = "ddp", device: torch.device | None = None,
               ctx: DistContext | None = None) -> nn.Module:
    """Wrap ``model`` for data-parallel training; returns the module the training step calls.

    ``"ddp"``: a DistributedDataParallel wrapper (``model`` stays the plain module inside it).
    ``"fsdp2"``: ``fully_shard`` each of ``model.blocks`` then the root, IN PLACE: ``model``
    itself becomes the sharded module (its parameters are DTensors) and is returned.
    One process (or no process group): ``model`` unchanged.
    """
    ctx = ctx or context()
    if mode not in DISTRIBUTED:
        raise ValueError(f"distributed must be one of {', '.join(DISTRIBUTED)}, got {mode!r}")
    if not ctx.initialized:
        return model
    if device is None:
        device = next(model.parameters()).device
    if mode == "ddp":
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (ctx.world_size,))
    marked = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for n, p in model.named_parameters():  # sharding replaced the parameters, dropping the marks
        if n in marked:
            p._no_weight_decay = True  # read by rnnlab.train.optim.param_groups
    return model


@contextlib.contextmanager
def no_grad_sync(module: nn.Module):
    """Backward passes inside keep their gradients local (accumulated, not averaged over ranks):
    DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)``; nothing for one process.
    Gradient accumulation runs every micro-batch but the last of a step inside it, so gradients
    cross the network once per optimizer step."""
    module = getattr(module, "_orig_mod", module)  # under torch.compile
    if isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    elif is_fsdp(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def reshard(model: nn.Module) -> None:
    """Put FSDP2 modules back in their sharded state. After a forward without backward (eval)
    the root stays unsharded and its parameters are then not the optimizer's (sharded) ones."""
    if not is_fsdp(model):
        return
    from torch.distributed.fsdp import FSDPModule

    for m in getattr(model, "_orig_mod", model).modules():
        if isinstance(m, FSDPModule):
            m.reshard()


# ------------------------------------------------------------------------- full state dicts
def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict (plain keys, no ``module.`` prefix), as a single process has it.

    Plain / DDP: the local state dict (every rank has it all). FSDP2: gathered to rank 0 on the
    CPU (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``); a COLLECTIVE that every
    rank must call; ranks other than 0 get ``{}``.
    """
    if not is_fsdp(model):
        return unwrap(model).state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    return get_model_state_dict(getattr(model, "_orig_mod", model),
                                options=_options(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                         strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a full state dict (every rank passes the whole dict) into a plain, DDP or FSDP2 model;
    returns ``(missing, unexpected)`` keys like ``load_state_dict``."""
    if not is_fsdp(model):
        r = unwrap(model).load_state_dict(state_dict, strict=strict)
        return list(r.missing_keys), list(r.unexpected_keys)
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    reshard(model)
    r = set_model_state_dict(getattr(model, "_orig_mod", model), state_dict,
                             options=_options(full_state_dict=True, strict=strict))
    return list(r.missing_keys), list(r.unexpected_keys)


def _param_names(model: nn.Module, opt) -> list[str]:
    """Parameter names in the optimizer's order, the indices of ``opt.state_dict()`` (not the
    model's order where a second group takes the parameters spared from weight decay)."""
    names = {id(p): n for n, p in getattr(model, "_orig_mod", model).named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def _fqn_to_index(osd: dict, model: nn.Module, opt) -> dict:
    """``get_optimizer_state_dict``'s name-keyed form -> ``torch.optim``'s index-keyed form."""
    index = {n: i for i, n in enumerate(_param_names(model, opt))}
    groups = []
    for g in osd["param_groups"]:
        g = dict(g)
        g["params"] = [index[n] for n in g["params"]]
        groups.append(g)
    return {"state": {index[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def _index_to_fqn(osd: dict, model: nn.Module, opt) -> dict:
    names = _param_names(model, opt)
    groups = []
    for g in osd["param_groups"]:
        g = dict(g)
        g["params"] = [names[int(i)] for i in g["params"]]
        groups.append(g)
    return {"state": {names[int(i)]: s for i, s in osd["state"].items()}, "param_groups": groups}


def full_optimizer_state_dict(model: nn.Module, opt) -> dict:
    """The optimizer's full state in ``opt.state_dict()`` form (parameter indices), whatever the
    wrapper: a checkpoint taken on N ranks with FSDP2 loads with ``opt.load_state_dict`` in one
    process. FSDP2: a collective (``get_optimizer_state_dict(full_state_dict=True,
    cpu_offload=True)``); ranks other than 0 get ``{}``."""
    if not is_fsdp(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(model)
    osd = get_optimizer_state_dict(getattr(model, "_orig_mod", model), opt,
                                   options=_options(full_state_dict=True, cpu_offload=True))
    if not osd or not osd.get("param_groups"):
        return {}
    return _fqn_to_index(osd, model, opt)


def load_full_optimizer_state_dict(model: nn.Module, opt, osd: dict) -> None:
    """Load a full ``opt.state_dict()``-form state (every rank passes the whole dict)."""
    if not is_fsdp(model):
        opt.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    reshard(model)
    # set_optimizer_state_dict first materialises the state with a zero-LR step, but only when
    # opt.state is empty; Schedule-Free's train()/eval() leave empty per-parameter entries behind.
    for p in [p for p, st in opt.state.items() if not st]:
        del opt.state[p]
    set_optimizer_state_dict(getattr(model, "_orig_mod", model), opt, _index_to_fqn(osd, model, opt),
                             options=_options(full_state_dict=True))


# ------------------------------------------------------------------------- DTensor helpers
def is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter gathered to a plain tensor (collective); others unchanged."""
    return t.full_tensor() if is_dtensor(t) else t


def copy_full_into(param: torch.Tensor, full: torch.Tensor) -> None:
    """``param.copy_(full)`` where ``param`` may be a sharded DTensor and ``full`` the whole tensor."""
    with torch.no_grad():
        if is_dtensor(param):
            from torch.distributed.tensor import distribute_tensor

            src = full.detach().to(device=param.device, dtype=param.dtype)
            local = distribute_tensor(src, param.device_mesh, param.placements, src_data_rank=None).to_local()
            param.to_local().copy_(local)
        else:
            param.copy_(full)


def local_all_finite(model: nn.Module) -> bool:
    """Whether this rank's (shard of the) parameters is finite (combine with ``all_true``)."""
    for p in model.parameters():
        t = p.to_local() if is_dtensor(p) else p
        if not bool(torch.isfinite(t).all()):
            return False
    return True
