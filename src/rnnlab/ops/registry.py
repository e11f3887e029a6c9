"""The op registry: every recurrence in rnnlab is one :class:`Op`, run with one backend vocabulary.

``backend`` of every op:

* ``"naive"``: the op's reference, a readable pure-PyTorch loop over time (any device). It defines
  the op; every other implementation is tested against it.
* ``"triton"``: the op's GPU kernel module (the one its :class:`Op` names: ``rnnlab.ops.<pkg>.triton``,
  or e.g. ``rnnlab.ops.elman.selective``; Triton, or CUDA C++ where that module says so),
  imported on first use; CUDA tensors only.
* ``"auto"``: ``"triton"`` for CUDA tensors when the kernel imports (a one-time warning when it
  does not), else ``"naive"``.
* named PyTorch alternatives an op adds (``"heinsen"``: the log-space parallel linear scan;
  ``"chunked"``: the chunked SSD form).

An explicit backend that cannot run raises. ``Op.backends`` lists the words an op accepts (layer
configs validate their ``backend`` field against it).

torch.compile: Dynamo traces :meth:`Op.__call__` itself (the choice is plain Python; a kernel
module's availability is a trace-time constant) and then either

* keeps the op inside the graph, when the chosen function is marked :func:`traced`: its body calls
  only torch ops and ``torch.library`` custom ops, which Inductor treats as opaque extern calls
  with a registered autograd formula (E1's Elman scans, E16's diagonal scan, the linear /
  minGRU / minLSTM scans); a model made of such layers compiles to one graph, with no graph
  break; or
* calls it as one opaque call (:func:`opaque`, a graph break around it): the reference loops
  (tracing would unroll ``T`` steps and take minutes) and the other kernels' autograd Functions
  (E88's, mamba_ssm's SSD). Inductor fuses everything between the breaks.

Letting Dynamo trace an autograd Function and its Triton kernels is not the same: minGRU's and
minLSTM's scans traced that way trained at 0.961x / 0.930x the speed of the opaque calls and kept
their graph breaks (results/fair-baselines-h200); as custom ops they compile into one graph at
1.009x / 1.021x (results/mingru-one-graph-h200), E16's at 1.000x (results/e16-one-graph-h200),
losses within bf16 rounding. Mark an entry point ``traced`` only with a measurement that it
trains the same and no slower.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from typing import Callable, Iterator

import torch

from rnnlab.ops.dtypes import compute_dtype
from rnnlab.signals import is_ctrl_c

BACKENDS = ("auto", "naive", "triton")


def assume_constant(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result(fn)``: under ``torch.compile`` a call of ``fn`` is
    run once at trace time and its answer kept as a constant. That function imports
    ``torch._dynamo`` (about two seconds at every ``rnnlab`` command's start) only to mark ``fn``;
    this marks it the same way (``tests/test_ops.py`` checks the mark is torch's)."""
    fn._dynamo_marked_constant = True
    return fn


class LazyKernel:
    """The GPU kernel module ``module``, imported once on first use; ``get()`` returns None when
    it cannot be imported (no Triton, no GPU toolchain), keeping the error for messages."""

    def __init__(self, module: str):
        self.module = module
        self._mod = None
        self.error: str | None = None
        self.warned = False

    def get(self):
        if self._mod is None and self.error is None:
            try:
                self._mod = importlib.import_module(self.module)
            except Exception as e:  # noqa: BLE001 - any import failure means "not available"
                if is_ctrl_c(e):  # a Ctrl-C that pybind11 made an ImportError: not a missing kernel
                    raise
                self.error = f"{type(e).__name__}: {e}"
        return self._mod

    def available(self) -> bool:
        return self.get() is not None

    @contextlib.contextmanager
    def replaced(self, module) -> Iterator[None]:
        """Inside the block, ``module`` (another copy of this kernel module, e.g. an earlier
        commit's) runs in its place: a benchmark times two versions of a kernel in one process
        (``bench_models.py --scan-against``). A compiled model re-guards on the module (Dynamo
        recompiles); a CUDA graph captured in the block replays its kernels after it."""
        saved = self._mod, self.error
        self._mod, self.error = module, None
        try:
            yield
        finally:
            self._mod, self.error = saved

    # Under torch.compile the import runs once at trace time and its answer is a constant.
    available = assume_constant(available)


class FallibleBuild:
    """A kernel compiled on first use that may fail to build (no nvcc or ninja, a compile error):
    :meth:`attempt` runs what needs it; the first failure is kept in ``error`` with one warning
    (``name`` unavailable, using ``instead``), and every later attempt returns None at once,
    without building again, so the caller runs its other kernel. :meth:`failures` lists the builds
    that failed in this process (the GPU tests fail on any: after one, a test of the kernel would
    check its fallback)."""

    _every: list[FallibleBuild] = []  # each build made, for failures()

    def __init__(self, name: str, instead: str):
        self.name, self.instead = name, instead
        self.error: str | None = None
        FallibleBuild._every.append(self)

    @classmethod
    def failures(cls) -> list[str]:
        """``"name: error"`` for each build that failed in this process."""
        return [f"{b.name}: {b.error}" for b in cls._every if b.error is not None]

    def attempt(self, fn: Callable, *args):
        """``fn(*args)``, or None once a build has failed (this one or an earlier one)."""
        if self.error is not None:
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - any build failure: the caller's other kernel runs
            if is_ctrl_c(e):
                raise
            self.error = f"{type(e).__name__}: {e}"
            warnings.warn(f"{self.name} unavailable, using {self.instead} ({e})")
            return None


def opaque(fn: Callable) -> Callable:
    """``fn`` as one opaque call under ``torch.compile``: Dynamo neither traces nor compiles it
    (or anything it calls) and breaks the graph around it; outside compilation it is ``fn``.

    This is ``torch.compiler.disable(fn)``, built through ``torch._disable_dynamo`` where it exists
    (the form torch.optim uses): it imports ``torch._dynamo`` (about a second) only on the first
    call instead of when rnnlab is imported."""
    lazy = getattr(torch, "_disable_dynamo", None)
    return lazy(fn, recursive=True) if lazy is not None else torch.compiler.disable(fn, recursive=True)


def traced(fn: Callable) -> Callable:
    """Mark a kernel-module entry point that torch.compile may trace (it calls only torch ops and
    registered custom ops): :class:`Op` then keeps it in the graph instead of breaking."""
    fn.traced = True
    return fn


@opaque
def _run_opaque(fn: Callable, *args):
    """``fn(*args)`` as one opaque call under torch.compile."""
    return fn(*args)


@opaque
def _warn_unavailable(op: str, kernel: LazyKernel) -> None:
    """Warn, once per op (each :class:`Op` has its own :class:`LazyKernel`, also where ops share a
    module), that ``auto`` runs ``op``'s reference on CUDA tensors because its kernel does not
    import (outside the graph under torch.compile)."""
    if not kernel.warned:
        warnings.warn(f"{op}: GPU kernel unavailable ({kernel.error}); using the slow reference loop")
        kernel.warned = True


class Op:
    """One recurrence: its reference ``naive`` (the definition), its GPU kernel module
    ``kernel_module`` (a function named ``name`` in it; None = no kernel yet) and named PyTorch
    ``alternatives``. ``op(*args, backend=...)`` runs the chosen implementation on ``args``; the
    first argument's device decides ``auto``. Every implementation returns
    ``(outputs, final_state)`` (see :func:`final_state`), ``elman_scan_beside_linear`` its
    projection after them; ``spectral_norm`` (no scan) ``(scaled weight, its vector u)``."""

    def __init__(self, name: str, naive: Callable, kernel_module: str | None = None,
                 alternatives: dict[str, Callable] | None = None):
        self.name = name
        self.naive = naive
        self.kernel = LazyKernel(kernel_module) if kernel_module else None
        self.alternatives = dict(alternatives or {})
        self.backends = (*BACKENDS, *self.alternatives)

    def kernel_available(self) -> bool:
        return self.kernel is not None and self.kernel.available()

    def implementation(self, backend: str, x: torch.Tensor) -> Callable:
        """The function ``backend`` picks for inputs on ``x``'s device (raises when it cannot run)."""
        if backend not in self.backends:
            raise ValueError(f"backend must be one of {self.backends}, got {backend!r}")
        if backend in self.alternatives:
            return self.alternatives[backend]
        if backend == "triton" and not x.is_cuda:
            raise RuntimeError(f"{self.name} backend='triton' needs CUDA tensors, got device "
                               f"{x.device}; use 'naive' or 'auto'")
        if backend == "naive" or not x.is_cuda:  # "auto" off CUDA: the kernel is not even imported
            return self.naive
        if self.kernel_available():  # "triton" or "auto" on CUDA
            return getattr(self.kernel.get(), self.name)
        if backend == "triton":
            why = "it has no GPU kernel yet" if self.kernel is None else \
                f"cannot import the kernel ({self.kernel.error})"
            raise RuntimeError(f"{self.name} backend='triton' is unavailable: {why}")
        if self.kernel is not None:  # "auto" on CUDA without the kernel it has
            _warn_unavailable(self.name, self.kernel)
        return self.naive

    def __call__(self, *args, backend: str = "auto"):
        fn = self.implementation(backend, args[0])
        return fn(*args) if getattr(fn, "traced", False) else _run_opaque(fn, *args)


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    """Add ``op`` to :data:`OPS` (by name) and return it."""
    OPS[op.name] = op
    return op


def check_time_offsets(op: str, T: int, width: int) -> None:
    """Refuse, in one line, a sequence too long for a kernel that offsets time step ``t`` by
    ``t * width`` in 32-bit integers (Triton's loop counters; the batch offset of the ``[B, T, ...]``
    tensors is 64-bit, that of the ``[B, width]`` states only overflows past ~10^5 batch rows): the
    offset, up to 16 steps past the end for loads issued ahead, must stay below 2**31."""
    most = (2**31 - 1) // max(width, 1) - 16
    if T > most:
        raise ValueError(f"{op}: {T:,} steps of {width:,} elements each overflow its GPU kernel's 32-bit "
                         f"time offsets (at most {most:,} steps at this width): run the sequence in "
                         f"pieces, each piece's final state the next one's h0")


def aligned(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` contiguous and starting on a 16-byte boundary (None stays None): itself, or a copy
    where it is a view starting inside its storage (``x.view(-1)[1:]``). For the CUDA C++ kernels,
    which load 16 bytes at a time from each row and would refuse, or read amiss, anything else;
    every tensor torch allocates starts on such a boundary."""
    if t is None:
        return None
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def final_state(h: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """The state after the last step of all states ``h: [B, T, ...]`` from ``h0`` (None = zeros),
    in the compute dtype: ``h[:, -1]`` (``h0`` when T = 0). For kernels that store their states in
    the input dtype; the references return the exact state of their loop instead."""
    dt = compute_dtype(h.dtype)
    if h.shape[1] > 0:
        return h[:, -1].to(dt)
    return h.new_zeros(h.shape[:1] + h.shape[2:], dtype=dt) if h0 is None else h0.to(dt)
