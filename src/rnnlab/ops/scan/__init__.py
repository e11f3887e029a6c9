"""Linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (minGRU, minLSTM).

``linear_scan(a, b, h0=None, backend="auto") -> h`` with ``a, b, h: [B, T, H]``, ``h0: [B, H]``
or None (zeros).

Backends: ``"naive"`` (sequential fp32 loop, ``naive.linear_scan``), ``"triton"`` (fused GPU kernel
in ``triton.py``, imported lazily), ``"heinsen"`` (the log-space parallel scan the seed trained
minGRU/minLSTM with, ``naive.linear_scan_parallel``; needs ``a > 0``), and ``"auto"`` = Triton on
CUDA tensors when it imports, else naive. An explicit backend that cannot run raises.
"""

from __future__ import annotations

import torch

from rnnlab.ops.scan import naive
from rnnlab.ops.scan.naive import linear_scan_parallel

__all__ = ["linear_scan", "linear_scan_parallel", "fused_gate_scan", "triton_available", "BACKENDS"]

BACKENDS = ("auto", "naive", "triton", "heinsen")

_triton_fn = None
_triton_error: BaseException | None = None


def _load_triton():
    """The Triton ``linear_scan``, or None when it does not import (the error is kept)."""
    global _triton_fn, _triton_error
    if _triton_fn is None and _triton_error is None:
        try:
            from rnnlab.ops.scan import triton as mod

            _triton_fn = mod.linear_scan
        except Exception as e:  # noqa: BLE001 - any import failure means "not available"
            _triton_error = e
    return _triton_fn


def triton_available() -> bool:
    return _load_triton() is not None


def _check(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> None:
    if b.dim() != 3:
        raise ValueError(f"b must be [B, T, H], got shape {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"a must have b's shape {tuple(b.shape)}, got {tuple(a.shape)}")
    if h0 is not None and h0.shape != (b.shape[0], b.shape[2]):
        raise ValueError(f"h0 must be [B, H] = {(b.shape[0], b.shape[2])}, got {tuple(h0.shape)}")


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t``, ``[B, T, H]``, in ``b``'s dtype."""
    _check(a, b, h0)
    if backend == "auto":
        fn = _load_triton() if b.is_cuda else None
        return fn(a, b, h0) if fn is not None else naive.linear_scan(a, b, h0)
    if backend == "naive":
        return naive.linear_scan(a, b, h0)
    if backend == "heinsen":
        return linear_scan_parallel(a, b, h0, method="log")
    if backend == "triton":
        fn = _load_triton()
        if fn is None:
            raise RuntimeError(f"backend='triton' is unavailable: cannot import the kernel ({_triton_error!r})")
        if not b.is_cuda:
            raise RuntimeError(f"backend='triton' needs CUDA tensors, got device {b.device}")
        return fn(a, b, h0)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def fused_gate_scan(kind: str, x: torch.Tensor, backend: str):
    """The fused GPU kernel that computes minGRU/minLSTM gates from the raw projection inside the
    scan (``kind`` = "mingru" or "minlstm"), or None when ``x``/``backend`` call for another path.

    It keeps no fp32 gate tensors, which is what holds minGRU/minLSTM memory at or below Mamba2's
    (results/kernels_h100.md); the layers fall back to ``linear_scan`` over explicit gates."""
    if backend not in ("auto", "triton") or not x.is_cuda or _load_triton() is None:
        return None
    from rnnlab.ops.scan import triton as mod

    return mod.mingru_scan if kind == "mingru" else mod.minlstm_scan
