"""Reference (pure PyTorch) diagonal Elman recurrence ``h_t = tanh(a * h_{t-1} + u_t)`` (E16).

``u: [B, T, S]``, ``a: [S]`` (constant over time), ``h0: [B, S]`` or None (zeros). Returns every
state ``h: [B, T, S]`` in ``u``'s dtype; the loop runs in fp32 (fp64 stays fp64).
"""

from __future__ import annotations

import torch

from rnnlab.ops.dtypes import compute_dtype


def diag_elman_scan(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Sequential ``h_t = tanh(a * h_{t-1} + u_t)``, returns ``[B, T, S]``."""
    dtype = u.dtype
    ct = compute_dtype(dtype)
    u, a = u.to(ct), a.to(ct)
    h = torch.zeros_like(u[:, 0]) if h0 is None else h0.to(ct)
    out = []
    for t in range(u.shape[1]):
        h = torch.tanh(a * h + u[:, t])
        out.append(h)
    if not out:
        return u.to(dtype)
    return torch.stack(out, dim=1).to(dtype)
