"""The ``triton`` backend of ``gated_delta_scan``: fla's chunked gated-delta-rule kernel
(``fla.ops.gated_delta_rule.chunk_gated_delta_rule``, Triton, forward and backward). Importing this
module imports fla (the ``fla-core`` package) and fails without it."""

from __future__ import annotations

import torch
from fla.ops.gated_delta_rule import chunk_gated_delta_rule

__all__ = ["gated_delta_scan"]


def gated_delta_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     S0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, S_T)`` of the gated delta rule by fla's kernel: ``scale=1`` (the caller scales ``q``),
    the state ``[B, H, K, V]`` in fp32."""
    return chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=S0, output_final_state=True)
