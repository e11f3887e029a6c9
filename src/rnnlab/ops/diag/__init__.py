"""Diagonal Elman recurrence ``h_t = tanh(a * h_{t-1} + u_t)`` (E16).

``diag_elman_scan(u, a, h0=None, backend="auto") -> h`` with ``u, h: [B, T, S]``, ``a: [S]``,
``h0: [B, S]`` or None (zeros).

Backends: ``"naive"`` (sequential fp32 loop), ``"triton"`` (fused GPU kernel in ``triton.py``,
imported lazily), ``"auto"`` = Triton on CUDA tensors when it imports, else naive. An explicit
backend that cannot run raises.
"""

from __future__ import annotations

import torch

from rnnlab.ops.diag import naive

__all__ = ["diag_elman_scan", "triton_available", "BACKENDS"]

BACKENDS = ("auto", "naive", "triton")

_triton_fn = None
_triton_error: BaseException | None = None


def _load_triton():
    """The Triton ``diag_elman_scan``, or None when it does not import (the error is kept)."""
    global _triton_fn, _triton_error
    if _triton_fn is None and _triton_error is None:
        try:
            from rnnlab.ops.diag import triton as mod

            _triton_fn = mod.diag_elman_scan
        except Exception as e:  # noqa: BLE001 - any import failure means "not available"
            _triton_error = e
    return _triton_fn


def triton_available() -> bool:
    return _load_triton() is not None


def _check(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be [B, T, S], got shape {tuple(u.shape)}")
    if a.shape != (u.shape[2],):
        raise ValueError(f"a must be [S] = {(u.shape[2],)}, got {tuple(a.shape)}")
    if h0 is not None and h0.shape != (u.shape[0], u.shape[2]):
        raise ValueError(f"h0 must be [B, S] = {(u.shape[0], u.shape[2])}, got {tuple(h0.shape)}")


def diag_elman_scan(
    u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """All states of ``h_t = tanh(a * h_{t-1} + u_t)``, ``[B, T, S]``, in ``u``'s dtype."""
    _check(u, a, h0)
    if backend == "auto":
        fn = _load_triton() if u.is_cuda else None
        return fn(u, a, h0) if fn is not None else naive.diag_elman_scan(u, a, h0)
    if backend == "naive":
        return naive.diag_elman_scan(u, a, h0)
    if backend == "triton":
        fn = _load_triton()
        if fn is None:
            raise RuntimeError(f"backend='triton' is unavailable: cannot import the kernel ({_triton_error!r})")
        if not u.is_cuda:
            raise RuntimeError(f"backend='triton' needs CUDA tensors, got device {u.device}")
        return fn(u, a, h0)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
