"""Reference (pure PyTorch) diagonal Elman recurrence ``h_t = tanh(a * h_{t-1} + u_t)`` (E16).

``u: [B, T, S]``, ``a: [S]`` (constant over time), ``h0: [B, S]`` or None (zeros). Returns
``(h, h_T)``: every state ``[B, T, S]`` in ``u``'s dtype and the final state ``[B, S]`` in the
compute dtype; the loop runs in fp32 (fp64 stays fp64).
"""

from __future__ import annotations

import torch

from rnnlab.ops.dtypes import compute_dtype


def diag_elman_scan(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential ``h_t = tanh(a * h_{t-1} + u_t)``: ``(h [B, T, S], h_T [B, S])``."""
    dtype = u.dtype
    ct = compute_dtype(dtype)
    u, a = u.to(ct), a.to(ct)
    h = u.new_zeros(u.shape[0], u.shape[2]) if h0 is None else h0.to(ct)
    out = []
    for t in range(u.shape[1]):
        h = torch.tanh(a * h + u[:, t])
        out.append(h)
    if not out:
        return u.to(dtype), h
    return torch.stack(out, dim=1).to(dtype), h
