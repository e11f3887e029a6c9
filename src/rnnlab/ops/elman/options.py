"""How the E1 GPU kernels run: one frozen options object, passed explicitly (never module globals).

The defaults are what every layer uses (measured choices, docs/kernels.md); benchmarks and tests
pass other values to ``rnnlab.ops.elman.triton.elman_scan(..., options=...)``. The options ride
through the ``rnnlab::elman_scan_*`` custom ops as a list of ints (:meth:`to_ints`), so the
backward of a call runs with the same options as its forward, and they key the CUDA-graph cache.
Options change speed, not the maths: up to rounding (``fast_tanh``, tile sizes) every setting
computes the same scan.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from rnnlab.ops.elman.persistent import SHAPES as PERSISTENT_SHAPES
from rnnlab.ops.tanh import fast_tanh_applies


HEADS_DW_BLOCK = 32  # heads.weight_gradient's rows a step: heads_dw_rows is a multiple of it


@dataclass(frozen=True)
class ElmanKernelOptions:
    persistent: bool = True  # dense 16-bit scans: a persistent CUDA kernel when the shape fits
    # force persistent.SHAPES[i] (warps, tile); -1 = the first that fits. Scans the wgmma kernel takes
    # run there instead unless dense_wgmma is off
    persistent_shape: int = -1
    # E1's low-rank term in the persistent kernel's epilogue (ranks 1-16; a build of its own)
    persistent_lowrank: bool = True
    # with `persistent`: plain dense bf16 scans with B <= 32, H <= 1792 on Hopper run the wgmma
    # kernel (wgmma.cu, 0.81x the persistent kernel's time at E1 d26) instead of persistent.cu
    dense_wgmma: bool = True
    cuda_graph: bool = True  # capture the dense per-step loop in a CUDA graph (one per shape)
    fast_tanh: bool = True  # tanh.approx.f32 for 16-bit inputs on the GPU (never fp32 / interpreter)
    dense_bn: int = 16  # dense per-step kernel: output columns per program
    dense_bk: int = 128  # dense per-step kernel: reduction chunk
    dense_warps: int = 4
    dense_stages: int = 3
    # 16-bit heads scans of 64 or 128 channels a head without decay on sm_80+: the Gluon kernels
    # (heads_gluon.py: one barrier a step) instead of the Triton ones the heads_* options below tune
    heads_gluon: bool = True
    heads_gluon_ring: int = 6  # tiles in those kernels' input rings, 2, 3 or 6: inputs copied ring - 1 steps ahead
    # those kernels at 128 channels a head: dW_h summed after the backward scan by heads.weight_gradient,
    # this many flat rows a program; 0: by a second MMA in each step of the scan's loop (as everywhere else)
    heads_dw_rows: int = 1024
    # E1 heads' gate projection z = x W_z^T on a second stream beside the heads scan (and its two GEMMs
    # beside the backward scan), sized for all SMs but the scan's programs + heads_beside_spare
    # (rnnlab.ops.streams; results/heads-overlap-h200); off: one after the other
    heads_beside: bool = True
    heads_beside_spare: int = 4
    heads_bt: int = 16  # heads kernel: batch rows per program
    heads_warps: int = 8
    heads_stages: int = 3

    def __post_init__(self):
        if self.heads_dw_rows < 0 or self.heads_dw_rows % HEADS_DW_BLOCK:
            raise ValueError(f"heads_dw_rows must be 0 or a positive multiple of {HEADS_DW_BLOCK} (the kernel's row "
                             f"block), got {self.heads_dw_rows}")
        if not -1 <= self.persistent_shape < len(PERSISTENT_SHAPES):  # else the build would fail, silently
            raise ValueError(f"persistent_shape must be -1 (the first that fits) or an index of the persistent "
                             f"kernel's {len(PERSISTENT_SHAPES)} launch shapes, got {self.persistent_shape}")
        if self.heads_beside_spare < 0:
            raise ValueError(f"heads_beside_spare must be >= 0 (SMs), got {self.heads_beside_spare}")

    def to_ints(self) -> list[int]:
        """The options as the ``int[]`` argument of the custom ops."""
        return [int(getattr(self, f.name)) for f in dataclasses.fields(self)]

    @staticmethod
    def from_ints(values: list[int]) -> ElmanKernelOptions:
        """Inverse of :meth:`to_ints`."""
        return _from_ints(tuple(values))

    def use_fast_tanh(self, x: torch.Tensor) -> bool:
        """Whether a kernel on ``x`` uses the MUFU tanh (16-bit inputs on a real GPU only)."""
        return self.fast_tanh and fast_tanh_applies(x)


@functools.cache
def _from_ints(values: tuple[int, ...]) -> ElmanKernelOptions:
    fields = dataclasses.fields(ElmanKernelOptions)
    return ElmanKernelOptions(*(type(f.default)(v) for f, v in zip(fields, values, strict=True)))


DEFAULT = ElmanKernelOptions()
