"""E88's recurrence (the reference study's nonlinear matrix-state cell), see ``naive.py`` for the math.

``e88_scan(q, k, v, decay, S0=None, backend="auto") -> (y, S_T)`` with ``q, k [B, T, H, n]``,
``v [B, T, H, m]``, ``decay [B, T, H]`` (in (0, 1), any float dtype; the layer passes the compute dtype),
``S0 [B, H, n, m]`` or None (zeros); ``y [B, T, H, m]`` in ``q``'s dtype, ``S_T`` in the compute
dtype. Implementations: ``naive.py`` (the reference loop) and ``triton.py`` (the GPU kernel:
one program per (batch row, head) holding its state on chip, the backward recomputing states
from checkpoints); backends as in ``rnnlab.ops.registry``.
"""

from __future__ import annotations

import torch

from rnnlab.ops.e88 import naive
from rnnlab.ops.registry import Op, register

__all__ = ["e88_scan", "BACKENDS"]

E88_SCAN = register(Op("e88_scan", naive.e88_scan, "rnnlab.ops.e88.triton"))
BACKENDS = E88_SCAN.backends


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor,
           S0: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must be [B, T, H, n] of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, m] = {tuple(q.shape[:3])} + (m,), got {tuple(v.shape)}")
    if decay.shape != q.shape[:3]:
        raise ValueError(f"decay must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(decay.shape)}")
    state = (q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    if S0 is not None and S0.shape != state:
        raise ValueError(f"S0 must be [B, H, n, m] = {state}, got {tuple(S0.shape)}")


def e88_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor,
             S0: torch.Tensor | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, S_T)`` of ``S_t = tanh(d_t S_{t-1} + k_t (v_t - S_{t-1}^T k_t)^T)``, ``y_t = S_t^T q_t``."""
    _check(q, k, v, decay, S0)
    return E88_SCAN(q, k, v, decay, S0, backend=backend)
