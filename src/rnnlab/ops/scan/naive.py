"""Reference (pure PyTorch) linear recurrence ``h_t = a_t * h_{t-1} + b_t`` and the minGRU /
minLSTM gates that feed it.

``a, b: [B, T, H]``, ``h0: [B, H]`` or None (zeros). Every function returns ``(h, h_T)``: all
states ``[B, T, H]`` in the input dtype and the final state ``[B, H]`` in the compute dtype; the
arithmetic runs in fp32 (fp64 stays fp64).

- ``linear_scan``: the readable sequential loop over time (the reference).
- ``heinsen_scan``: the same recurrence without a loop over time (backend ``"heinsen"``): the
  log-space scan of Feng et al. 2024 / the reference study's minGRU/minLSTM training path: with
  ``a* = cumsum(log a)``, ``h_t = exp(a*_t) * (h0 + sum_{s<=t} b_s exp(-a*_s))``, evaluated as
  ``exp(a*_t + logcumsumexp(log b_s - a*_s))``; signed ``b`` is handled by scanning its positive
  and negative parts separately. Needs ``a > 0`` (values are clamped to the smallest normal). An
  entry of ``b`` that is exactly 0 gets a zero gradient, where the loop's is not (its log is a
  constant floor): minGRU's and minLSTM's gates never give one, but zero padding or a mask
  handed to ``linear_scan(backend="heinsen")`` would (use the loop or the kernel there).
- ``mingru_scan`` / ``minlstm_scan``: the recurrence of minGRU / minLSTM from the raw input
  projection ``p`` (gates by ``mingru_gates`` / ``minlstm_gates``, then ``linear_scan``), with
  ``heinsen_*`` twins that run ``heinsen_scan`` instead (the reference study's training path).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rnnlab.ops.dtypes import compute_dtype, loop_over_time

Scan = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential ``h_t = a_t * h_{t-1} + b_t`` (fp32 loop): ``(h [B, T, H], h_T [B, H])``."""
    a = a.to(compute_dtype(b.dtype))
    return loop_over_time(b, h0, lambda t, b_t, h: a[:, t] * h + b_t)


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


def heinsen_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear_scan`` by the log-space parallel scan (no loop over time; needs ``a > 0``): backend
    "heinsen"; see the module docstring."""
    dtype = b.dtype
    ct = compute_dtype(dtype)
    a, b = a.to(ct), b.to(ct)
    h0 = None if h0 is None else h0.to(ct)
    if b.shape[1] == 0:
        return b.to(dtype), b.new_zeros(b.shape[0], b.shape[2]) if h0 is None else h0
    h = _log_scan(a, b, h0)
    return h.to(dtype), h[:, -1]


# ------------------------------------------------------------------ minGRU / minLSTM gates
def g(x: torch.Tensor) -> torch.Tensor:
    """minGRU's positive activation: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` otherwise."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def mingru_gates(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b) = (1 - z, z * g(h~))`` with ``z = sigmoid(k)``, from ``p = [h~ | k]``
    ``[..., 2H]``, in the compute dtype."""
    h_tilde, k = p.to(compute_dtype(p.dtype)).chunk(2, dim=-1)
    return torch.sigmoid(-k), torch.sigmoid(k) * g(h_tilde)


def minlstm_gates(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b) = (f', i' * g(h~))`` from ``p = [h~ | f | i]`` ``[..., 3H]``, in the compute dtype:
    ``f' = s(f) / (s(f) + s(i))``, ``i' = s(i) / (s(f) + s(i))`` (s = sigmoid), in log space."""
    h_tilde, f, i = p.to(compute_dtype(p.dtype)).chunk(3, dim=-1)
    diff = F.softplus(-f) - F.softplus(-i)  # log s(i) - log s(f)
    log_f = -F.softplus(diff)
    log_i = -F.softplus(-diff)
    return torch.exp(log_f), torch.exp(log_i) * g(h_tilde)


def _gated(gates: Callable, scan: Scan) -> Scan:
    """The recurrence ``scan(gates(p))`` from a raw projection ``p``, states in ``p``'s dtype."""

    def gated_scan(p: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h, h_last = scan(*gates(p), h0)
        return h.to(p.dtype), h_last

    gated_scan.__doc__ = f"``(h, h_T)`` of ``{scan.__name__}`` over ``{gates.__name__}(p)``."
    return gated_scan


mingru_scan = _gated(mingru_gates, linear_scan)
minlstm_scan = _gated(minlstm_gates, linear_scan)
heinsen_mingru_scan = _gated(mingru_gates, heinsen_scan)
heinsen_minlstm_scan = _gated(minlstm_gates, heinsen_scan)
