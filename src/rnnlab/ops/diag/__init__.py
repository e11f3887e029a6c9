"""Diagonal Elman recurrence ``h_t = tanh(a * h_{t-1} + u_t)`` (E16).

``diag_elman_scan(u, a, h0=None, backend="auto") -> (h, h_T)`` with ``u, h: [B, T, S]``,
``a: [S]``, ``h0: [B, S]`` or None (zeros). Implementations: ``naive.py`` (the reference loop)
and ``triton.py`` (the GPU kernel); backends as in ``rnnlab.ops.registry``.
"""

from __future__ import annotations

import torch

from rnnlab.ops.diag import naive
from rnnlab.ops.registry import Op, register

__all__ = ["diag_elman_scan", "BACKENDS"]

DIAG_ELMAN_SCAN = register(Op("diag_elman_scan", naive.diag_elman_scan, "rnnlab.ops.diag.triton"))
BACKENDS = DIAG_ELMAN_SCAN.backends


def _check(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be [B, T, S], got shape {tuple(u.shape)}")
    if a.shape != (u.shape[2],):
        raise ValueError(f"a must be [S] = {(u.shape[2],)}, got {tuple(a.shape)}")
    if h0 is not None and h0.shape != (u.shape[0], u.shape[2]):
        raise ValueError(f"h0 must be [B, S] = {(u.shape[0], u.shape[2])}, got {tuple(h0.shape)}")


def diag_elman_scan(
    u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of ``h_t = tanh(a * h_{t-1} + u_t)``: all states ``[B, T, S]`` in ``u``'s
    dtype, the final state ``[B, S]`` in the compute dtype."""
    _check(u, a, h0)
    return DIAG_ELMAN_SCAN(u, a, h0, backend=backend)
