"""SSD scan (Mamba2's selective state-space recurrence), see ``naive.py`` for the math.

``ssd_scan(x, dt, A, B, C, chunk_size=256, backend="auto") -> y`` with ``x [B,T,H,P]``,
``dt [B,T,H]`` (already softplus'ed), ``A [H]``, ``B, C [B,T,G,N]``; ``y`` like ``x``.

Backends: ``"naive"`` (chunked pure PyTorch, ``naive.ssd_scan``), ``"triton"`` (``mamba_ssm``'s
``mamba_chunk_scan_combined``, CUDA only), ``"auto"`` = Triton on CUDA tensors when mamba_ssm
imports, else naive. An explicit backend that cannot run raises. ``naive.ssd_recurrent`` is the
sequential form used in tests.
"""

from __future__ import annotations

import sys
import types

import torch

from rnnlab.ops.dispatch import opaque
from rnnlab.ops.ssd import naive
from rnnlab.ops.ssd.naive import ssd_recurrent

__all__ = ["ssd_scan", "ssd_recurrent", "import_mamba_ssm", "BACKENDS"]

BACKENDS = ("auto", "naive", "triton")

_mamba_error: BaseException | None = None


def import_mamba_ssm():
    """Import ``mamba_ssm`` (returns the package) or None when it does not import.

    Installs an empty ``selective_scan_cuda`` stub first: ``mamba_ssm/__init__`` imports that
    Mamba-1 extension unguarded, and a CPU / Triton-only build does not have it (deps.md §1).
    """
    global _mamba_error
    if _mamba_error is not None:
        return None
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        import mamba_ssm
        import mamba_ssm.modules.mamba2  # noqa: F401
        import mamba_ssm.ops.triton.ssd_combined  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        _mamba_error = e
        return None
    return mamba_ssm


@opaque  # mamba_ssm's Triton autograd Function: one opaque call under torch.compile
def _triton_scan(x, dt, A, B, C, chunk_size):
    import_mamba_ssm()
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=chunk_size)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    backend: str = "auto",
) -> torch.Tensor:
    """Outputs ``y [B,T,H,P]`` of the SSD recurrence (zero initial state), in ``x``'s dtype."""
    if x.dim() != 4 or dt.shape != x.shape[:3]:
        raise ValueError(f"x must be [B,T,H,P] and dt [B,T,H], got {tuple(x.shape)} and {tuple(dt.shape)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "naive" or (backend == "auto" and not (x.is_cuda and import_mamba_ssm())):
        return naive.ssd_scan(x, dt, A, B, C, chunk_size)
    if not x.is_cuda:
        raise RuntimeError("ssd_scan backend='triton' needs CUDA tensors")
    if import_mamba_ssm() is None:
        raise RuntimeError(f"ssd_scan backend='triton' needs mamba_ssm: {_mamba_error!r}")
    return _triton_scan(x, dt, A, B, C, chunk_size)
