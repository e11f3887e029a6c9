"""Diagonal Elman recurrence ``h_t = tanh(a * h_{t-1} + u_t)`` (E16).

``diag_elman_scan(u, a, h0=None, backend="auto") -> h`` with ``u, h: [B, T, S]``, ``a: [S]``,
``h0: [B, S]`` or None (zeros).

Backends: ``"naive"`` (sequential fp32 loop), ``"triton"`` (fused GPU kernel in ``triton.py``,
imported lazily), ``"auto"`` = Triton on CUDA tensors when it imports, else naive. An explicit
backend that cannot run raises.
"""

from __future__ import annotations

import torch

from rnnlab.ops.diag import naive
from rnnlab.ops.dispatch import BACKENDS, LazyKernel, dispatch

__all__ = ["diag_elman_scan", "triton_available", "BACKENDS"]

_kernel = LazyKernel("rnnlab.ops.diag.triton")


def triton_available() -> bool:
    return _kernel.available()


def _check(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be [B, T, S], got shape {tuple(u.shape)}")
    if a.shape != (u.shape[2],):
        raise ValueError(f"a must be [S] = {(u.shape[2],)}, got {tuple(a.shape)}")
    if h0 is not None and h0.shape != (u.shape[0], u.shape[2]):
        raise ValueError(f"h0 must be [B, S] = {(u.shape[0], u.shape[2])}, got {tuple(h0.shape)}")


def diag_elman_scan(
    u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """All states of ``h_t = tanh(a * h_{t-1} + u_t)``, ``[B, T, S]``, in ``u``'s dtype."""
    _check(u, a, h0)
    return dispatch("diag_elman_scan", backend, u, _kernel, naive.diag_elman_scan, u, a, h0)
