"""Number formats: the one precision rule of every recurrence (state and arithmetic in at least
fp32), and what a run's ``precision`` setting means for the weights and the forward (used by
training and by held-out evaluation alike)."""

from __future__ import annotations

import contextlib

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a recurrence computes (and keeps its state) in for inputs of ``dtype``: fp32 for
    bf16/fp16/fp32, fp64 stays fp64 (so gradcheck works)."""
    return torch.promote_types(dtype, torch.float32)


def param_dtype(precision: str) -> torch.dtype:
    """The weights' dtype: bf16 for pure ``bf16``, else fp32 (``bf16-mixed`` keeps fp32 masters)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward's autocast context: bf16 autocast for ``bf16-mixed``, none otherwise."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
