"""Linear recurrence ``h_t = a_t * h_{t-1} + b_t`` and the minGRU / minLSTM recurrences built on it.

Three ops, each returning ``(h, h_T)`` (all states in the input dtype, the final state in the
compute dtype):

* ``linear_scan(a, b, h0=None, backend="auto")`` with ``a, b, h: [B, T, H]``, ``h0: [B, H]``;
* ``mingru_scan(p, h0=None, backend="auto")`` from minGRU's raw projection ``p = [h~ | k]``
  ``[B, T, 2H]``: ``a = 1 - sigmoid(k)``, ``b = sigmoid(k) * g(h~)``;
* ``minlstm_scan(p, h0=None, backend="auto")`` from ``p = [h~ | f | i]`` ``[B, T, 3H]``:
  ``a = f'``, ``b = i' * g(h~)`` (normalised forget/input gates).

Backends (``rnnlab.ops.registry``): ``"naive"`` (gates, then the sequential fp32 loop),
``"triton"`` (GPU kernels in ``triton.py``; the minGRU/minLSTM ones compute the gates inside the
kernel and keep no fp32 gate tensors, which holds their memory at or below Mamba2's), ``"heinsen"``
(the log-space parallel scan the reference study trained minGRU/minLSTM with; needs ``a > 0``; one graph
under torch.compile) and ``"auto"``.
"""

from __future__ import annotations

import torch

from rnnlab.ops.registry import Op, register, traced
from rnnlab.ops.scan import naive

__all__ = ["linear_scan", "mingru_scan", "minlstm_scan", "BACKENDS"]

_KERNELS = "rnnlab.ops.scan.triton"
LINEAR_SCAN = register(Op("linear_scan", naive.linear_scan, _KERNELS,
                          {"heinsen": traced(naive.heinsen_scan)}))
MINGRU_SCAN = register(Op("mingru_scan", naive.mingru_scan, _KERNELS,
                          {"heinsen": traced(naive.heinsen_mingru_scan)}))
MINLSTM_SCAN = register(Op("minlstm_scan", naive.minlstm_scan, _KERNELS,
                           {"heinsen": traced(naive.heinsen_minlstm_scan)}))
BACKENDS = LINEAR_SCAN.backends


def _check_h0(h0: torch.Tensor | None, B: int, H: int) -> None:
    if h0 is not None and h0.shape != (B, H):
        raise ValueError(f"h0 must be [B, H] = {(B, H)}, got {tuple(h0.shape)}")


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of ``h_t = a_t * h_{t-1} + b_t``: all states ``[B, T, H]`` in ``b``'s dtype."""
    if b.dim() != 3:
        raise ValueError(f"b must be [B, T, H], got shape {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"a must have b's shape {tuple(b.shape)}, got {tuple(a.shape)}")
    _check_h0(h0, b.shape[0], b.shape[2])
    return LINEAR_SCAN(a, b, h0, backend=backend)


def _check_projection(p: torch.Tensor, parts: int, h0: torch.Tensor | None) -> None:
    if p.dim() != 3 or p.shape[2] % parts:
        raise ValueError(f"p must be [B, T, {parts}H], got shape {tuple(p.shape)}")
    _check_h0(h0, p.shape[0], p.shape[2] // parts)


def mingru_scan(
    p: torch.Tensor, h0: torch.Tensor | None = None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of minGRU from its raw projection ``p = [h~ | k]`` ``[B, T, 2H]``; ``h`` in
    ``p``'s dtype."""
    _check_projection(p, 2, h0)
    return MINGRU_SCAN(p, h0, backend=backend)


def minlstm_scan(
    p: torch.Tensor, h0: torch.Tensor | None = None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of minLSTM from its raw projection ``p = [h~ | f | i]`` ``[B, T, 3H]``; ``h``
    in ``p``'s dtype."""
    _check_projection(p, 3, h0)
    return MINLSTM_SCAN(p, h0, backend=backend)
