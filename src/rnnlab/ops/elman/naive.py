"""Reference Elman scan in plain PyTorch (CPU or GPU; autograd through the loop is the reference
backward).

    h_t = tanh(wx_t + h_{t-1} @ w_h.T)                          dense   w_h: [H, H]
    h_t[n] = tanh(wx_t[n] + h_{t-1}[n] @ w_h[n].T)  per head n   heads   w_h: [nh, hd, hd], H = nh*hd

``wx`` already holds ``x_t @ W_x.T + b``. The loop runs in the compute dtype (fp32; fp64 stays
fp64, so gradcheck works); the states come back in the input dtype, the final state in the
compute dtype.
"""

from __future__ import annotations

import torch

from rnnlab.ops.dtypes import compute_dtype


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
    """``(h [B, T, H], h_T [B, H])`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)`` (see module doc)."""
    B, T, H = wx.shape
    dt = compute_dtype(wx.dtype)
    wx32 = wx.to(dt)
    w = w_h.to(dt)
    h = wx32.new_zeros(B, H) if h0 is None else h0.to(dt)
    out = []
    for t in range(T):
        h = torch.tanh(wx32[:, t] + recur(h, w))
        out.append(h)
    if not out:
        return wx.new_zeros(B, 0, H), h
    return torch.stack(out, dim=1).to(wx.dtype), h
