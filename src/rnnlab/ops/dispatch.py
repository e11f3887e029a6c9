"""Backend selection shared by every op: the Triton kernel module is imported on first use, and
``backend="auto" | "naive" | "triton"`` picks the kernel or the pure-PyTorch reference.

torch.compile: every recurrence is one opaque call (:func:`opaque`). Dynamo does not trace into
``dispatch`` (nor the fused gate+scan kernels, the official Mamba2 forward or E1's selective
loop, which use the same wrapper): a compiled model graph-breaks just around each recurrence,
Inductor fuses everything between them (LayerNorm, projections, gates, residuals, loss), and the
Triton/CUDA kernels (their autograd Functions, CUDA-graph caches, ...) or the reference loop
run eagerly with ordinary autograd. Tracing the reference loops would unroll ``T`` steps and make
compilation take minutes.
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


def opaque(fn: Callable) -> Callable:
    """``fn`` as one opaque call under ``torch.compile``: Dynamo neither traces nor compiles it
    (or anything it calls) and breaks the graph around it; outside compilation it is ``fn``.

    This is ``torch.compiler.disable(fn)``, built through ``torch._disable_dynamo`` where it exists
    (the form torch.optim uses): it imports ``torch._dynamo`` (about a second) only on the first
    call instead of when rnnlab is imported."""
    lazy = getattr(torch, "_disable_dynamo", None)
    return lazy(fn, recursive=True) if lazy is not None else torch.compiler.disable(fn, recursive=True)


@opaque
def dispatch(op: str, backend: str, x: torch.Tensor, kernel: LazyKernel, naive_fn: Callable, *args):
    """Run ``op`` on ``args`` with the chosen backend. ``auto`` = the kernel for CUDA tensors when it
    imports (else the reference, with a one-time warning on CUDA); an explicit ``triton`` that
    cannot run raises. Opaque to torch.compile (see the module docstring)."""
    if backend == "naive":
        return naive_fn(*args)
    if backend == "triton":
        if not x.is_cuda:
            raise RuntimeError(f"{op} backend='triton' needs CUDA tensors, got device {x.device}; "
                               "use 'naive' or 'auto'")
        mod = kernel.get()
        if mod is None:
            raise RuntimeError(f"{op} backend='triton' is unavailable: cannot import the kernel ({kernel.error})")
        return getattr(mod, op)(*args)
    if backend == "auto":
        if x.is_cuda:
            mod = kernel.get()
            if mod is not None:
                return getattr(mod, op)(*args)
            if not kernel._warned:
                warnings.warn(f"{op}: Triton kernel unavailable ({kernel.error}); using the slow reference loop")
                kernel._warned = True
        return naive_fn(*args)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
