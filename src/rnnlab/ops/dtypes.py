"""The one precision rule of every recurrence: state and arithmetic in at least fp32."""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a recurrence computes (and keeps its state) in for inputs of ``dtype``: fp32 for
    bf16/fp16/fp32, fp64 stays fp64 (so gradcheck works)."""
    return torch.promote_types(dtype, torch.float32)
