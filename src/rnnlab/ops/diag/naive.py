"""Reference (pure PyTorch) diagonal Elman recurrence ``h_t = tanh(a * h_{t-1} + u_t)`` (E16).

``u: [B, T, S]``, ``a: [S]`` (constant over time), ``h0: [B, S]`` or None (zeros). Returns
``(h, h_T)``: every state ``[B, T, S]`` in ``u``'s dtype and the final state ``[B, S]`` in the
compute dtype; the loop runs in fp32 (fp64 stays fp64).
"""

from __future__ import annotations

import torch

from rnnlab.ops.dtypes import compute_dtype, loop_over_time


def diag_elman_scan(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential ``h_t = tanh(a * h_{t-1} + u_t)``: ``(h [B, T, S], h_T [B, S])``."""
    a = a.to(compute_dtype(u.dtype))
    return loop_over_time(u, h0, lambda t, u_t, h: torch.tanh(a * h + u_t))
