"""Reference Elman scans in plain PyTorch (CPU or GPU; autograd through the loop is the reference
backward): E1's plain recurrence and its two selective variants, and E1's spectral norm of ``w_h``.

    elman_scan          h_t = tanh(wx_t + h_{t-1} @ w_h.T)
    elman_decay_scan    h_t = tanh(wx_t + a_t * (h_{t-1} @ w_h.T))                      a: [B, T, H]
    elman_lowrank_scan  h_t = tanh(wx_t + h_{t-1} @ w_h.T + ((h_{t-1} @ V) * s_t) @ U.T)
                                                          U, V: [H, r], s: [B, T, r]
    spectral_norm       w_h * radius / sigma(w_h)         (sigma per head, by power iteration)

``w_h`` is dense ``[H, H]`` or block-diagonal heads ``[nh, hd, hd]`` (H = nh*hd; head n of
``h @ w_h.T`` is ``h[n] @ w_h[n].T``); the low-rank term spans the whole state. ``wx`` already
holds ``x_t @ W_x.T + b``. The loop runs in the compute dtype (fp32; fp64 stays fp64, so gradcheck
works); the states come back in the input dtype, the final state in the compute dtype.
"""

from __future__ import annotations

import torch

from rnnlab.ops.dtypes import compute_dtype, loop_over_time
from rnnlab.ops.registry import traced


def recur(h: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
    """The recurrent term ``h @ w_h.T`` for dense ``[H, H]`` or block-diagonal ``[nh, hd, hd]``.

    ``h: [B, H]`` -> ``[B, H]``. For heads, head n of the result is ``h[:, n] @ w_h[n].T``.
    """
    if w_h.dim() == 2:
        return h @ w_h.T
    nh, hd, _ = w_h.shape
    hh = h.reshape(h.shape[0], nh, hd).transpose(0, 1)  # [nh, B, hd]
    return torch.bmm(hh, w_h.transpose(1, 2)).transpose(0, 1).reshape(h.shape[0], nh * hd)


def elman_scan(wx: torch.Tensor, w_h: torch.Tensor, h0: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h [B, T, H], h_T [B, H])`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)``."""
    w = w_h.to(compute_dtype(wx.dtype))
    return loop_over_time(wx, h0, lambda t, x, h: torch.tanh(x + recur(h, w)))


def elman_scan_beside_linear(wx: torch.Tensor, w_h: torch.Tensor, x: torch.Tensor, wl: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h, h_T, x @ wl.T)``: :func:`elman_scan` from zeros and a projection independent of it."""
    return (*elman_scan(wx, w_h), torch.nn.functional.linear(x, wl))


def elman_decay_scan(wx: torch.Tensor, w_h: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of ``h_t = tanh(wx_t + a_t * (h_{t-1} @ w_h.T))`` (E1 ``selective="decay"``)."""
    dt = compute_dtype(wx.dtype)
    w, a = w_h.to(dt), a.to(dt)
    return loop_over_time(wx, h0, lambda t, x, h: torch.tanh(x + a[:, t] * recur(h, w)))


def elman_lowrank_scan(wx: torch.Tensor, w_h: torch.Tensor, U: torch.Tensor, V: torch.Tensor, s: torch.Tensor,
                       h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T + ((h_{t-1} @ V) * s_t) @ U.T)`` (E1
    ``selective="lowrank"``: the recurrent matrix plus an input-dependent rank-r term)."""
    dt = compute_dtype(wx.dtype)
    w, U, V, s = w_h.to(dt), U.to(dt), V.to(dt), s.to(dt)
    return loop_over_time(wx, h0, lambda t, x, h: torch.tanh(x + recur(h, w) + ((h @ V) * s[:, t]) @ U.t()))


def unit(v: torch.Tensor) -> torch.Tensor:
    """``v`` scaled to unit length along its last dimension (``+ 1e-8``: a zero vector stays zero)."""
    return v / (v.norm(dim=-1, keepdim=True) + 1e-8)


@traced  # a few small products, no loop over time: torch.compile traces it, as it did inside E1
def spectral_norm(w_h: torch.Tensor, u: torch.Tensor, radius: float, iters: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_eff, u_new)``: ``w_h`` (dense ``[H, H]``, or heads ``[nh, hd, hd]``, each on its own)
    rescaled to spectral norm ``radius`` (E1's ``norm="spectral"``). ``iters`` power iterations
    from ``u`` (``[H]`` or ``[nh, hd]``) estimate the top singular vectors ``u``, ``v`` without
    gradient; ``sigma = |u^T W v|`` with gradient, and ``W_eff = W * radius / (sigma + 1e-8)``: W is
    always rescaled, never clamped. The arithmetic is at least fp32, as the kernels' (bf16 would
    round sigma, and so the radius, to 1 part in 256); ``W_eff`` comes back in ``w_h``'s dtype and
    ``u_new`` in ``u``'s, as the kernels return them; the caller stores ``u_new``."""
    W = w_h.to(torch.promote_types(w_h.dtype, torch.float32))
    with torch.no_grad():
        u_new = u.to(W.dtype)
        for _ in range(iters):
            if W.dim() == 2:
                v = unit(W.t() @ u_new)
                u_new = unit(W @ v)
            else:
                v = unit(torch.einsum("ned,ne->nd", W, u_new))
                u_new = unit(torch.einsum("ned,nd->ne", W, v))
    if W.dim() == 2:
        sigma = (u_new @ W @ v).abs()
    else:
        sigma = torch.einsum("ne,ned,nd->n", u_new, W, v).abs()[:, None, None]
    return (W * radius / (sigma + 1e-8)).to(w_h.dtype), u_new.to(u.dtype)
