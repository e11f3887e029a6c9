"""The Elman scan used by E1: ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)``, all states returned.

``w_h`` is dense ``[H, H]`` or block-diagonal heads ``[nh, hd, hd]`` (H = nh*hd; each head only
sees its own slice of h). Backends: ``"naive"`` (PyTorch loop, any device, reference),
``"triton"`` (fused GPU kernel in ``rnnlab.ops.elman.triton``, imported lazily) and ``"auto"``
(Triton for CUDA tensors when that module imports, else naive).
"""

from __future__ import annotations

import importlib
import warnings

import torch

from rnnlab.ops.elman import naive

__all__ = ["elman_scan", "triton_available"]

BACKENDS = ("auto", "naive", "triton")
_triton_mod = None
_triton_err: str | None = None
_warned = False


def _load_triton():
    """The Triton module, or None (the import error is kept for the message)."""
    global _triton_mod, _triton_err
    if _triton_mod is None and _triton_err is None:
        try:
            _triton_mod = importlib.import_module("rnnlab.ops.elman.triton")
        except ImportError as e:  # no triton installed, or the kernel module is missing
            _triton_err = f"{type(e).__name__}: {e}"
    return _triton_mod


def triton_available() -> bool:
    return torch.cuda.is_available() and _load_triton() is not None


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
    global _warned
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check(wx, w_h, h0)
    if backend == "naive":
        return naive.elman_scan(wx, w_h, h0)
    if backend == "triton":
        if not wx.is_cuda:
            raise RuntimeError("elman_scan backend='triton' needs CUDA tensors; use 'naive' or 'auto'")
        mod = _load_triton()
        if mod is None:
            raise RuntimeError(f"elman_scan backend='triton' is not available ({_triton_err})")
        return mod.elman_scan(wx, w_h, h0)
    # auto
    if wx.is_cuda:
        mod = _load_triton()
        if mod is not None:
            return mod.elman_scan(wx, w_h, h0)
        if not _warned:
            warnings.warn(f"elman_scan: Triton kernel unavailable ({_triton_err}); using the slow naive loop")
            _warned = True
    return naive.elman_scan(wx, w_h, h0)
