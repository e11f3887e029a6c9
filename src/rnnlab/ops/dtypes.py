"""Number formats: the one precision rule of every recurrence (state and arithmetic in at least
fp32) and the reference loop over time that follows it, and what a run's ``precision`` setting
means for the weights and the forward (used by training and by held-out evaluation alike)."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a recurrence computes (and keeps its state) in for inputs of ``dtype``: fp32 for
    bf16/fp16/fp32, fp64 stays fp64 (so gradcheck works)."""
    return torch.promote_types(dtype, torch.float32)


def loop_over_time(x: torch.Tensor, h0: torch.Tensor | None, cell: Callable
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h [B, T, H], h_T [B, H])`` of ``h_t = cell(t, x_t, h_{t-1})`` over ``x: [B, T, H]``, one
    step at a time in the compute dtype (``x_t`` and ``h0`` cast; zeros when ``h0`` is None): the
    reference loop of every recurrence with a vector state. The states come back in ``x``'s
    dtype, the final state in the compute dtype."""
    B, T, H = x.shape
    xc = x.to(compute_dtype(x.dtype))
    h = xc.new_zeros(B, H) if h0 is None else h0.to(xc.dtype)
    out = []
    for t in range(T):
        h = cell(t, xc[:, t], h)
        out.append(h)
    if not out:
        return x.new_zeros(B, 0, H), h
    return torch.stack(out, dim=1).to(x.dtype), h


def param_dtype(precision: str) -> torch.dtype:
    """The weights' dtype: bf16 for pure ``bf16``, else fp32 (``bf16-mixed`` keeps fp32 masters)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward's autocast context: bf16 autocast for ``bf16-mixed``, none otherwise."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
