"""Reference (pure PyTorch) E88 recurrence: a nonlinear matrix state per head, written by a delta rule.

Per head, with ``S [n, m]`` (zeros or ``S0``) and the step's ``q_t, k_t [n]``, ``v_t [m]`` and
scalar decay ``d_t``::

    S_t = tanh(d_t * S_{t-1} + k_t (v_t - S_{t-1}^T k_t)^T)
    y_t = S_t^T q_t

Shapes: ``q, k [B, T, H, n]``, ``v [B, T, H, m]``, ``decay [B, T, H]``, ``S0 [B, H, n, m]`` or
None. Returns ``(y [B, T, H, m], S_T [B, H, n, m])``: outputs in ``q``'s dtype, the final state
in the compute dtype; the loop runs in fp32 (float64 stays float64, for gradcheck).
"""

from __future__ import annotations

import torch

from rnnlab.ops.dtypes import compute_dtype


def e88_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor,
             S0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence above one time step at a time: ``(y, S_T)``."""
    dtype = q.dtype
    ct = compute_dtype(dtype)
    q, k, v, decay = (t.to(ct) for t in (q, k, v, decay))
    B, T, H, n = k.shape
    S = k.new_zeros(B, H, n, v.shape[-1]) if S0 is None else S0.to(ct)
    ys = []
    for t in range(T):
        k_t = k[:, t]
        retrieved = torch.einsum("bhnm,bhn->bhm", S, k_t)
        S = torch.tanh(decay[:, t, :, None, None] * S + k_t[..., None] * (v[:, t] - retrieved)[..., None, :])
        ys.append(torch.einsum("bhnm,bhn->bhm", S, q[:, t]))
    y = torch.stack(ys, dim=1) if ys else v.new_zeros(B, 0, H, v.shape[-1])
    return y.to(dtype), S
