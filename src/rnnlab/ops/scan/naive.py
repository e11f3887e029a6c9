"""Reference (pure PyTorch) linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

``a, b: [B, T, H]``, ``h0: [B, H]`` or None (zeros). All functions return every state
``h: [B, T, H]`` in the input dtype; the arithmetic runs in fp32 (fp64 stays fp64).

- ``linear_scan``: the readable sequential loop over time (the reference).
- ``linear_scan_parallel``: the same recurrence without a loop over time.
  ``method="log"`` is the log-space (Heinsen) scan of Feng et al. 2024 / the seed's minGRU/minLSTM
  training path: with ``a* = cumsum(log a)``,
  ``h_t = exp(a*_t) * (h0 + sum_{s<=t} b_s exp(-a*_s))``, evaluated as
  ``exp(a*_t + logcumsumexp(log b_s - a*_s))``; signed ``b`` is handled by scanning its positive
  and negative parts separately. Needs ``a > 0`` (values are clamped to the smallest normal).
  ``method="doubling"`` is the Hillis-Steele associative scan over pairs
  ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)`` in ``ceil(log2 T)`` steps; any ``a``.
"""

from __future__ import annotations

import torch

from rnnlab.ops.dtypes import compute_dtype


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Sequential ``h_t = a_t * h_{t-1} + b_t`` (fp32 loop), returns ``[B, T, H]``."""
    dtype = b.dtype
    ct = compute_dtype(dtype)
    a, b = a.to(ct), b.to(ct)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.to(ct)
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    if not out:
        return b.to(dtype)
    return torch.stack(out, dim=1).to(dtype)


def _signed_log(x: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log of the positive part, log of the negative part)``; zero parts map to ``floor``
    (a large negative finite number, so gradients stay finite)."""
    pos, neg = x > 0, x < 0
    one = torch.ones_like(x)
    log_pos = torch.where(pos, torch.log(torch.where(pos, x, one)), floor)
    log_neg = torch.where(neg, torch.log(torch.where(neg, -x, one)), floor)
    return log_pos, log_neg


def _log_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    tiny = torch.finfo(a.dtype).tiny
    floor = -1e30
    a_star = torch.cumsum(torch.log(a.clamp_min(tiny)), dim=1)  # [B, T, H]
    if h0 is not None:  # h0 enters as a term at "time -1" with a* = 0
        b = torch.cat([h0.unsqueeze(1), b], dim=1)
        a_star = torch.cat([torch.zeros_like(a_star[:, :1]), a_star], dim=1)
    log_pos, log_neg = _signed_log(b, floor)
    h = torch.exp(a_star + torch.logcumsumexp(log_pos - a_star, dim=1)) - torch.exp(
        a_star + torch.logcumsumexp(log_neg - a_star, dim=1)
    )
    return h[:, 1:] if h0 is not None else h


def _doubling_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    if h0 is not None:  # fold h0 into the first step: h_0' = a_0 h0 + b_0
        b = torch.cat([(a[:, 0] * h0 + b[:, 0]).unsqueeze(1), b[:, 1:]], dim=1)
    T = b.shape[1]
    shift = 1
    while shift < T:
        # combine element t with element t - shift: (A, B)_t <- (A_t A_{t-s}, A_t B_{t-s} + B_t)
        b = torch.cat([b[:, :shift], a[:, shift:] * b[:, :-shift] + b[:, shift:]], dim=1)
        a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], dim=1)
        shift *= 2
    return b


def linear_scan_parallel(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, method: str = "log"
) -> torch.Tensor:
    """Parallel-form ``h_t = a_t * h_{t-1} + b_t`` (no loop over time); see the module docstring."""
    dtype = b.dtype
    ct = compute_dtype(dtype)
    a, b = a.to(ct), b.to(ct)
    h0 = None if h0 is None else h0.to(ct)
    if b.shape[1] == 0:
        return b.to(dtype)
    if method == "log":
        h = _log_scan(a, b, h0)
    elif method == "doubling":
        h = _doubling_scan(a, b, h0)
    else:
        raise ValueError(f"method must be 'log' or 'doubling', got {method!r}")
    return h.to(dtype)
