"""Reference (pure PyTorch) gated delta rule, the recurrence of Gated DeltaNet (Yang et al. 2025).

Per head, with ``S [K, V]`` (zeros or ``S0``), a decay ``a_t = exp(g_t)`` and a write strength
``beta_t``::

    S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T
    o_t = S_t^T q_t

(fla's ``naive_recurrent_gated_delta_rule`` with ``scale=1``: the layer scales ``q`` itself.)
Shapes: ``q, k [B, T, H, K]``, ``v [B, T, H, V]``, ``g, beta [B, T, H]``, ``S0 [B, H, K, V]`` or
None. Returns ``(o [B, T, H, V], S_T [B, H, K, V])``: outputs in ``q``'s dtype, the final state in
the compute dtype; the loop runs in fp32 (float64 stays float64, for gradcheck).
"""

from __future__ import annotations

import torch

from rnnlab.ops.dtypes import compute_dtype


def gated_delta_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     S0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence above one time step at a time: ``(o, S_T)``."""
    dtype = q.dtype
    ct = compute_dtype(dtype)
    q, k, v, g, beta = (t.to(ct) for t in (q, k, v, g, beta))
    B, T, H, K = k.shape
    S = k.new_zeros(B, H, K, v.shape[-1]) if S0 is None else S0.to(ct)
    outs = []
    for t in range(T):
        k_t = k[:, t]
        S = torch.exp(g[:, t])[..., None, None] * S
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k_t))
        S = S + k_t[..., None] * u[..., None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    return o.to(dtype), S
