"""Persistent CUDA kernel for the dense Elman scan (``persistent.cu``): one cooperative launch per
direction instead of one kernel per time step.

Triton cannot express a cooperative launch (which guarantees that all blocks are resident, so they
may wait for each other), so this one kernel is CUDA C++ built on first use by
``torch.utils.cpp_extension.load`` (needs nvcc and ninja; about a minute, then cached). Each block
keeps its rows of ``W`` (forward) or ``W^T`` (backward) in shared memory for all T steps; per step
it waits only for the blocks that produced the state columns it reads (per-block step flags);
see the .cu file.

Used by ``rnnlab.ops.elman.triton`` for dense bf16/fp16 scans when :func:`supported` says the
shape fits (H a multiple of 8, the blocks co-resident); otherwise the Triton per-step kernel
(CUDA-graphed) runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["supported", "forward", "backward", "SHAPES"]

# Launch shapes in order of preference (measured on an H100 at H = 1760, B = 16 and 32; see
# docs/kernels.md): warps per block (the K range of a step is split over them) and the tile
# (output columns, batch rows) per block. The first that fits in shared memory and co-residency runs.
SHAPES = ((16, (32, 16)), (8, (32, 16)), (16, (16, 32)), (8, (16, 32)))
WARPS: int | None = None  # force the warps (8 or 16); None = by SHAPES
TILE: tuple[int, int] | None = None  # force the tile, (16, 32) or (32, 16); None = by SHAPES
MAX_GROUPS: int | None = None  # cap the batch groups (so the grid leaves SMs free); None = no cap
DEBUG = 0  # timing decomposition (bench_kernels.py) only, results are wrong when set: bit 1 = skip
# the inter-block waits, 2 = skip staging the state, 4 = skip the epilogue-operand prefetch


@functools.cache
def _ext():
    from torch.utils.cpp_extension import load

    src = Path(__file__).with_name("persistent.cu")
    return load(name="rnnlab_elman_persistent", sources=[str(src)],
                extra_cuda_cflags=["-O3", "-std=c++17"], verbose=False)


@functools.cache
def _capacity(device_index: int, H: int, warps: int, tile: tuple[int, int]) -> int:
    with torch.cuda.device(device_index):
        return int(_ext().capacity(H, warps, *tile))


def _plan(x: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(warps, columns per block, batch rows per block, batch groups) for ``x: [B, T, H]``, or None
    when the persistent kernel cannot run it. Batch groups are independent recurrences on their
    own blocks (fewer state bytes per block per step); a block loops over its rows if needed."""
    if not x.is_cuda or x.dtype not in (torch.bfloat16, torch.float16) or x.shape[-1] % 8 != 0:
        return None
    B, H = x.shape[0], x.shape[-1]
    for warps, (nc, rb) in SHAPES:
        warps, nc, rb = WARPS or warps, *(TILE or (nc, rb))
        cap = _capacity(x.device.index or 0, H, warps, (nc, rb))
        groups = min(-(-B // rb), cap // -(-H // nc), MAX_GROUPS or B)
        if groups >= 1:
            return warps, nc, rb, groups
    return None


def supported(x: torch.Tensor) -> bool:
    """True when the persistent kernel can run the dense scan of ``x: [B, T, H]``."""
    return _plan(x) is not None


def forward(wx: torch.Tensor, w: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """``h_t = tanh(wx_t + h_{t-1} @ w.T)`` for all t; contiguous ``wx: [B, T, H]``, ``w: [H, H]``
    and ``h0: [B, H]`` (None = zeros), all of one 16-bit dtype."""
    return _ext().forward(wx, None, w, h0, *_plan(wx), DEBUG)


def backward(g: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``dpre_t = (g_t + dpre_{t+1} @ w) * (1 - h_t^2)`` backwards over t (``dpre_T = 0``)."""
    return _ext().backward(g, h, w.t().contiguous(), None, *_plan(g), DEBUG)
