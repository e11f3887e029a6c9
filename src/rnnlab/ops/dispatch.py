"""Backend selection shared by every op: the Triton kernel module is imported on first use, and
``backend="auto" | "naive" | "triton"`` picks the kernel or the pure-PyTorch reference.

torch.compile: Dynamo traces ``dispatch`` itself (the choice is plain Python; a kernel module's
availability is a trace-time constant) and then either

* keeps the op inside the graph, when the chosen function is marked :func:`traced`: its body calls
  only torch ops and ``torch.library`` custom ops, which Inductor treats as opaque extern calls
  with a registered autograd formula (E1's Elman scan); a model made of such layers compiles to
  one graph, with no graph break; or
* calls it as one opaque call (:func:`opaque`, a graph break around it): the reference loops
  (tracing would unroll ``T`` steps and take minutes), the other Triton autograd Functions, the
  official Mamba2 forward and E1's selective loop. Inductor fuses everything between the breaks.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Callable

import torch

BACKENDS = ("auto", "naive", "triton")


class LazyKernel:
    """The GPU kernel module ``module``, imported once on first use; ``get()`` returns None when
    it cannot be imported (no Triton, no GPU toolchain), keeping the error for messages."""

    def __init__(self, module: str):
        self.module = module
        self._mod = None
        self.error: str | None = None
        self._warned = False

    def get(self):
        if self._mod is None and self.error is None:
            try:
                self._mod = importlib.import_module(self.module)
            except Exception as e:  # noqa: BLE001 - any import failure means "not available"
                self.error = f"{type(e).__name__}: {e}"
        return self._mod

    def available(self) -> bool:
        return self.get() is not None

    # Under torch.compile the import runs once at trace time and its answer is a constant.
    available = torch.compiler.assume_constant_result(available)


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
    registered custom ops): :func:`dispatch` then keeps it in the graph instead of breaking."""
    fn.traced = True
    return fn


@opaque
def _eager(fn: Callable, *args):
    """``fn(*args)`` as one opaque call under torch.compile."""
    return fn(*args)


@opaque
def _warn_unavailable(op: str, kernel: LazyKernel) -> None:
    if not kernel._warned:
        warnings.warn(f"{op}: Triton kernel unavailable ({kernel.error}); using the slow reference loop")
        kernel._warned = True


def dispatch(op: str, backend: str, x: torch.Tensor, kernel: LazyKernel, naive_fn: Callable, *args):
    """Run ``op`` on ``args`` with the chosen backend. ``auto`` = the kernel for CUDA tensors when it
    imports (else the reference, with a one-time warning on CUDA); an explicit ``triton`` that
    cannot run raises. Under torch.compile see the module docstring."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        if not x.is_cuda:
            raise RuntimeError(f"{op} backend='triton' needs CUDA tensors, got device {x.device}; "
                               "use 'naive' or 'auto'")
        if not kernel.available():
            raise RuntimeError(f"{op} backend='triton' is unavailable: cannot import the kernel ({kernel.error})")
    use_kernel = backend == "triton" or (backend == "auto" and x.is_cuda and kernel.available())
    if backend == "auto" and x.is_cuda and not use_kernel:
        _warn_unavailable(op, kernel)
    fn = getattr(kernel.get(), op) if use_kernel else naive_fn
    return fn(*args) if getattr(fn, "traced", False) else _eager(fn, *args)
