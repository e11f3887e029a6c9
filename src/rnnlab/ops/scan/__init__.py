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

from rnnlab.ops.dispatch import BACKENDS as DISPATCH_BACKENDS
from rnnlab.ops.dispatch import LazyKernel, dispatch, opaque
from rnnlab.ops.scan import naive
from rnnlab.ops.scan.naive import linear_scan_parallel

__all__ = ["linear_scan", "linear_scan_parallel", "fused_gate_scan", "triton_available", "BACKENDS"]

BACKENDS = (*DISPATCH_BACKENDS, "heinsen")

_kernel = LazyKernel("rnnlab.ops.scan.triton")


def triton_available() -> bool:
    return _kernel.available()


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
    if backend == "heinsen":
        return linear_scan_parallel(a, b, h0, method="log")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return dispatch("linear_scan", backend, b, _kernel, naive.linear_scan, a, b, h0)


@opaque
def _mingru_scan(p: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    return _kernel.get().mingru_scan(p, h0)


@opaque
def _minlstm_scan(p: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    return _kernel.get().minlstm_scan(p, h0)


def fused_gate_scan(kind: str, x: torch.Tensor, backend: str):
    """The fused GPU kernel that computes minGRU/minLSTM gates from the raw projection inside the
    scan (``kind`` = "mingru" or "minlstm"), or None when ``x``/``backend`` call for another path.
    The returned function ``(p, h0=None) -> h`` takes the raw projection ``p``; like
    ``dispatch`` it is opaque to torch.compile.

    It keeps no fp32 gate tensors, which is what holds minGRU/minLSTM memory at or below Mamba2's
    (results/kernels_h100.md); the layers fall back to ``linear_scan`` over explicit gates."""
    mod = _kernel.get() if backend in ("auto", "triton") and x.is_cuda else None
    if mod is None:
        return None
    return _mingru_scan if kind == "mingru" else _minlstm_scan
