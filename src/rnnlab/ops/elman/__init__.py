"""The Elman scan used by E1: ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)``, all states returned.

``w_h`` is dense ``[H, H]`` or block-diagonal heads ``[nh, hd, hd]`` (H = nh*hd; each head only
sees its own slice of h). Backends: ``"naive"`` (PyTorch loop, any device, reference),
``"triton"`` (fused GPU kernel in ``rnnlab.ops.elman.triton``, imported lazily) and ``"auto"``
(Triton for CUDA tensors when that module imports, else naive).
"""

from __future__ import annotations

import torch

from rnnlab.ops.dispatch import BACKENDS, LazyKernel, dispatch
from rnnlab.ops.elman import naive

__all__ = ["elman_scan", "triton_available", "BACKENDS"]

_kernel = LazyKernel("rnnlab.ops.elman.triton")


def triton_available() -> bool:
    return torch.cuda.is_available() and _kernel.available()


def _check(wx: torch.Tensor, w_h: torch.Tensor, h0: torch.Tensor | None) -> None:
    if wx.dim() != 3:
        raise ValueError(f"wx must be [B, T, H], got shape {tuple(wx.shape)}")
    B, _, H = wx.shape
    if w_h.dim() == 2:
        if tuple(w_h.shape) != (H, H):
            raise ValueError(f"w_h must be [H, H] = [{H}, {H}], got shape {tuple(w_h.shape)}")
    elif w_h.dim() == 3:
        nh, hd, hd2 = w_h.shape
        if hd != hd2 or nh * hd != H:
            raise ValueError(
                f"w_h heads must be [nh, hd, hd] with nh*hd = H = {H}, got shape {tuple(w_h.shape)}"
            )
    else:
        raise ValueError(f"w_h must be [H, H] or [nh, hd, hd], got shape {tuple(w_h.shape)}")
    if h0 is not None and tuple(h0.shape) != (B, H):
        raise ValueError(f"h0 must be [B, H] = [{B}, {H}], got shape {tuple(h0.shape)}")


def elman_scan(
    wx: torch.Tensor,
    w_h: torch.Tensor,
    h0: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """All states ``[B, T, H]`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)`` from ``h_{-1} = h0``
    (zeros when None). ``wx: [B, T, H]`` already includes the bias. Returns ``wx.dtype``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check(wx, w_h, h0)
    return dispatch("elman_scan", backend, wx, _kernel, naive.elman_scan, wx, w_h, h0)
