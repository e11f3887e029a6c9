"""SSD scan (Mamba2's selective state-space recurrence), see ``naive.py`` for the math.

``ssd_scan(x, dt, A, B, C, chunk_size=256, initial_state=None, backend="auto") -> (y, S_T)`` with
``x [B,T,H,P]``, ``dt [B,T,H]`` (already softplus'ed), ``A [H]``, ``B, C [B,T,G,N]``,
``initial_state [B,H,P,N]``; ``y`` like ``x``, ``S_T`` the final state in the compute dtype.

Backends (``rnnlab.ops.registry``): ``"naive"`` (the sequential reference loop), ``"chunked"``
(the chunked pure-PyTorch form: no loop over time, one graph under torch.compile; the reference
Mamba2 layer's forward), ``"triton"`` (``mamba_ssm``'s ``mamba_chunk_scan_combined``, CUDA only)
and ``"auto"``.

The Mamba2 layer's own ``backend`` ("official" / "reference") is a layer-level choice of the whole
implementation (mamba_ssm's fused module vs ``rnnlab.layers.mamba2``), not an op backend; the
reference layer runs this op ("chunked" forward, "naive" step).
"""

from __future__ import annotations

import torch

from rnnlab.ops.registry import Op, register, traced
from rnnlab.ops.ssd import naive

__all__ = ["ssd_scan", "import_mamba_ssm", "mamba_ssm_error", "BACKENDS"]

SSD_SCAN = register(Op("ssd_scan", naive.ssd_scan, "rnnlab.ops.ssd.triton",
                       {"chunked": traced(naive.ssd_chunked)}))
BACKENDS = SSD_SCAN.backends


def import_mamba_ssm():
    """The ``mamba_ssm`` package, or None when it does not import (see ``triton.py``)."""
    kernels = SSD_SCAN.kernel.get()
    return None if kernels is None else kernels.mamba_ssm


def mamba_ssm_error() -> str | None:
    """Why ``mamba_ssm`` did not import (None when it did or was not tried)."""
    return SSD_SCAN.kernel.error


def _check(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
           initial_state: torch.Tensor | None) -> None:
    """Each argument's shape against ``x``'s (that the groups of ``B``/``C`` divide the heads is
    checked where they are spread over them, ``naive._heads``)."""
    if x.dim() != 4 or dt.shape != x.shape[:3]:
        raise ValueError(f"x must be [B,T,H,P] and dt [B,T,H], got {tuple(x.shape)} and {tuple(dt.shape)}")
    b, T, h, p = x.shape
    if A.shape != (h,):
        raise ValueError(f"A must be [H] = {(h,)}, got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, T) or C.shape != B.shape:
        raise ValueError(f"B and C must be [B,T,G,N] of one shape with B,T = {(b, T)}, got {tuple(B.shape)} "
                         f"and {tuple(C.shape)}")
    state = (b, h, p, B.shape[3])
    if initial_state is not None and initial_state.shape != state:
        raise ValueError(f"initial_state must be [B,H,P,N] = {state}, got {tuple(initial_state.shape)}")


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y [B,T,H,P], final_state [B,H,P,N])`` of the SSD recurrence from ``initial_state``
    (zeros when None); ``y`` in ``x``'s dtype. ``chunk_size`` (>= 1) changes the chunked forms'
    work, not the result."""
    _check(x, dt, A, B, C, initial_state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return SSD_SCAN(x, dt, A, B, C, chunk_size, initial_state, backend=backend)
