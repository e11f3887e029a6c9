"""The Elman scans of E1, three ops (math in ``naive.py``):

* ``elman_scan``: ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)``; implementations ``naive.py`` (the
  reference loop) and ``triton.py`` (the GPU kernels: heads, dense per-step, persistent dense or
  wgmma; its docstring says which runs when);
* ``elman_scan_beside_linear``: ``elman_scan`` from zeros and a projection ``x @ wl.T`` that does
  not wait on it (E1 heads' gate), which the GPU kernels run on a second stream beside a heads
  scan (``rnnlab.ops.streams``); it returns ``(h, h_T, x @ wl.T)``;
* ``elman_decay_scan`` (``selective="decay"``) and ``elman_lowrank_scan``
  (``selective="lowrank"``): ``naive.py`` and ``selective.py`` (the same GPU kernels with the
  selective terms inside: the decay in the heads or dense kernels, low-rank in the per-step one);
* ``spectral_norm``: ``w_h`` rescaled to a given spectral norm (E1's ``norm="spectral"``),
  ``naive.py`` and ``spectral.py`` (heads of up to 128 channels in one launch each way; the
  reference runs dense ``w_h``).

``w_h`` is dense ``[H, H]`` or block-diagonal heads ``[nh, hd, hd]`` (H = nh*hd; each head only
sees its own slice of h). Backends as in ``rnnlab.ops.registry``; every scan returns ``(h, h_T)``.
"""

from __future__ import annotations

import torch

from rnnlab.ops.elman import naive
from rnnlab.ops.registry import Op, register

__all__ = ["elman_scan", "elman_scan_beside_linear", "elman_decay_scan", "elman_lowrank_scan", "spectral_norm",
           "BACKENDS"]

ELMAN_SCAN = register(Op("elman_scan", naive.elman_scan, "rnnlab.ops.elman.triton"))
ELMAN_SCAN_BESIDE_LINEAR = register(Op("elman_scan_beside_linear", naive.elman_scan_beside_linear,
                                        "rnnlab.ops.elman.triton"))
ELMAN_DECAY_SCAN = register(Op("elman_decay_scan", naive.elman_decay_scan, "rnnlab.ops.elman.selective"))
ELMAN_LOWRANK_SCAN = register(Op("elman_lowrank_scan", naive.elman_lowrank_scan, "rnnlab.ops.elman.selective"))
SPECTRAL_NORM = register(Op("spectral_norm", naive.spectral_norm, "rnnlab.ops.elman.spectral"))
BACKENDS = ELMAN_SCAN.backends


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)``: all states ``[B, T, H]`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)`` from
    ``h_{-1} = h0`` (zeros when None) in ``wx``'s dtype, and the final state ``[B, H]`` in the
    compute dtype. ``wx: [B, T, H]`` already includes the bias."""
    _check(wx, w_h, h0)
    return ELMAN_SCAN(wx, w_h, h0, backend=backend)


def elman_scan_beside_linear(wx: torch.Tensor, w_h: torch.Tensor, x: torch.Tensor, wl: torch.Tensor,
                             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h, h_T, z)``: :func:`elman_scan` of ``wx`` from zeros and ``z = x @ wl.T`` (``x: [B, T, D]``,
    ``wl: [N, D]``), computed beside the scan on a GPU when ``w_h`` has heads."""
    _check(wx, w_h, None)
    if x.shape[:-1] != wx.shape[:-1] or wl.dim() != 2 or wl.shape[1] != x.shape[-1]:
        raise ValueError(f"x must be [B, T, D] with wx's B, T = {tuple(wx.shape[:2])} and wl [N, D], got "
                         f"{tuple(x.shape)} and {tuple(wl.shape)}")
    return ELMAN_SCAN_BESIDE_LINEAR(wx, w_h, x, wl, backend=backend)


def elman_decay_scan(wx: torch.Tensor, w_h: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None,
                     backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of ``h_t = tanh(wx_t + a_t * (h_{t-1} @ w_h.T))`` with the decay
    ``a: [B, T, H]``; otherwise as :func:`elman_scan`."""
    _check(wx, w_h, h0)
    if a.shape != wx.shape:
        raise ValueError(f"a must have wx's shape {tuple(wx.shape)}, got {tuple(a.shape)}")
    return ELMAN_DECAY_SCAN(wx, w_h, a, h0, backend=backend)


def elman_lowrank_scan(wx: torch.Tensor, w_h: torch.Tensor, U: torch.Tensor, V: torch.Tensor, s: torch.Tensor,
                       h0: torch.Tensor | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T + ((h_{t-1} @ V) * s_t) @ U.T)`` with
    ``U, V: [H, r]`` and ``s: [B, T, r]``; otherwise as :func:`elman_scan`."""
    _check(wx, w_h, h0)
    B, T, H = wx.shape
    r = s.shape[-1] if s.dim() else 0  # a 0-d s is refused below, in the same line
    if U.shape != (H, r) or V.shape != (H, r) or s.shape != (B, T, r):
        raise ValueError(f"U, V must be [H, r] and s [B, T, r] (H = {H}), got {tuple(U.shape)}, "
                         f"{tuple(V.shape)}, {tuple(s.shape)}")
    return ELMAN_LOWRANK_SCAN(wx, w_h, U, V, s, h0, backend=backend)


def spectral_norm(w_h: torch.Tensor, u: torch.Tensor, radius: float, iters: int, backend: str = "auto"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_eff, u_new)``: ``w_h`` (``[H, H]`` or heads ``[nh, hd, hd]``, each head on its own)
    rescaled to spectral norm ``radius``, estimated by ``iters`` (>= 1) power iterations from ``u``
    (``w_h``'s shape less its last dimension); differentiable in ``w_h``. ``u_new`` is the vector
    the iterations end at, for the caller to store (``naive.spectral_norm`` has the maths)."""
    if w_h.dim() not in (2, 3) or w_h.shape[-1] != w_h.shape[-2]:
        raise ValueError(f"w_h must be [H, H] or [nh, hd, hd], got shape {tuple(w_h.shape)}")
    if u.shape != w_h.shape[:-1]:
        raise ValueError(f"u must be {list(w_h.shape[:-1])} (w_h's shape less its last dimension), got "
                         f"{list(u.shape)}")
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    return SPECTRAL_NORM(w_h, u, radius, iters, backend=backend)
