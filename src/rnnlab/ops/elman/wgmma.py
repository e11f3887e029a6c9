"""Dense E1 scan on Hopper's warpgroup MMA (``wgmma.cu``): the "2-D split" of docs/kernels.md.

One cooperative launch a direction, in thread-block clusters of 4 CTAs that split the reduction
(K) dimension: each CTA keeps its 64 x KC block of ``W`` (forward) or ``W^T`` (backward) as wgmma
register fragments for all T steps, copies its K slice of the previous state with one bulk copy
a step, and the cluster sums its four partial products over distributed shared memory (see the
.cu file). For bf16, B <= 32 and H <= 1792 (a multiple of 8) on a compute-capability 9.0 GPU (an
sm_90a build: wgmma, clusters and bulk copies are Hopper's arch-specific instructions); other
scans run on ``persistent.cu``. Chosen by ``ElmanKernelOptions.dense_wgmma``; its outputs agree
with the persistent kernel's up to fp32 summation order (tested against the float64 reference).

CUDA C++ because Triton expresses none of a cooperative launch (CTAs that wait for each other),
distributed shared memory or ``st.async``. Built on first use by ``rnnlab.ops.extensions.load``
(nvcc and ninja, a minute or two, then cached under a name that hashes the source, its header
``sm90.cuh``, flags and versions).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from rnnlab.ops.elman import persistent
from rnnlab.ops.registry import aligned

__all__ = ["SOURCE", "HEADER", "KS_CHOICES", "MAX_BATCH", "MAX_WIDTH", "supported", "forward", "backward"]

SOURCE = Path(__file__).with_name("wgmma.cu")
HEADER = Path(__file__).with_name("sm90.cuh")  # its PTX wrappers, shared with benchmarks/dense_wgmma_probe.cu
MAX_BATCH = 32  # wgmma's N: the batch rows of one pass
KS_CHOICES = (4, 8, 16, 28)  # wgmma.cu's kernels: 16 KS K columns a CTA, H padded to 64 KS (pick_ks)
MAX_WIDTH = 64 * KS_CHOICES[-1]  # the widest: 28 clusters of 4 CTAs, 64 output columns a cluster


@functools.cache
def _ext(source: Path = SOURCE):
    """The extension built from ``source`` (the package's, or a benchmark's copy: built under a
    name of its own), always for sm_90a (it has no other target), in the C++ standard torch picks
    for its extensions."""
    from rnnlab.ops.extensions import load

    flags = ["-O3", *persistent.HOPPER_ARCH]
    return load(persistent._ext_name(source.read_bytes() + HEADER.read_bytes(), flags, "wgmma"),
                sources=[str(source)], extra_cuda_cflags=flags, extra_include_paths=[str(HEADER.parent)],
                verbose=False)


@functools.cache
def _fits(device_index: int, H: int) -> bool:
    with torch.cuda.device(device_index):
        return bool(_ext().fits(H))


def _takes(x: torch.Tensor) -> bool:
    """Whether the kernel takes ``x``'s shape and dtype: bf16 ``[B, T, H]``, B <= :data:`MAX_BATCH`,
    H a multiple of 8 up to :data:`MAX_WIDTH` (what both :func:`supported` and :func:`_check` ask)."""
    return x.dim() == 3 and x.dtype == torch.bfloat16 and x.shape[0] <= MAX_BATCH and x.shape[2] % 8 == 0 \
        and 0 < x.shape[2] <= MAX_WIDTH


def supported(x: torch.Tensor) -> bool:
    """Whether the kernel runs the dense scan of ``x: [B, T, H]``: a bf16 CUDA tensor with B <=
    :data:`MAX_BATCH` and H a multiple of 8 up to :data:`MAX_WIDTH`, on a compute-capability 9.0
    GPU where every cluster of the launch can be resident. Anything else is declined without
    building the extension (the residency check builds it)."""
    if not x.is_cuda or not _takes(x):
        return False
    if torch.cuda.get_device_capability(x.device) != (9, 0) or int((torch.version.cuda or "0").split(".")[0]) < 12:
        return False
    return _fits(x.device.index or 0, x.shape[2])


def _check(x: torch.Tensor, w: torch.Tensor, *like_x: torch.Tensor) -> None:
    """One line (ValueError) for operands the kernel does not take, before they reach it: on the
    H200 (torch 2.11) a check raised inside the extension crashed the process instead of raising
    (results/dense-wgmma-h200), so the operands are checked here (``like_x``: the backward's g,
    of x's shape and dtype)."""
    H = x.shape[-1] if x.dim() else 0
    if not (_takes(x) and w.shape == (H, H) and w.dtype == x.dtype):
        raise ValueError(f"wgmma Elman scan: needs bf16 [B, T, H] with B <= {MAX_BATCH} and H a multiple of 8 up to "
                         f"{MAX_WIDTH}, and W [H, H] of that dtype; got {x.dtype} {tuple(x.shape)}, W {w.dtype} {tuple(w.shape)}")
    if not all(y.shape == x.shape and y.dtype == x.dtype for y in like_x):
        raise ValueError(f"wgmma Elman scan: the gradient must match h, {x.dtype} {tuple(x.shape)}; got "
                         + ", ".join(f"{y.dtype} {tuple(y.shape)}" for y in like_x))
    if not all(y.is_contiguous() for y in (x, *like_x)):
        raise ValueError("wgmma Elman scan: the [B, T, H] operands must be contiguous")


def forward(wx: torch.Tensor, w: torch.Tensor, h0: torch.Tensor | None, source: Path = SOURCE) -> torch.Tensor:
    """All states ``h_t = tanh(wx_t + h_{t-1} @ w.T)``: contiguous bf16 ``wx: [B, T, H]``, ``w: [H,
    H]``, ``h0: [B, H]`` (None = zeros); ``source``: the kernel's (a benchmark times copies)."""
    _check(wx, w)
    return _ext(source).forward(aligned(wx), None, aligned(w), aligned(h0))


def backward(g: torch.Tensor, h: torch.Tensor, w: torch.Tensor, source: Path = SOURCE) -> torch.Tensor:
    """``dpre_t = (g_t + dpre_{t+1} @ w) * (1 - h_t^2)`` backwards over t (``dpre_T = 0``)."""
    _check(h, w, g)
    return _ext(source).backward(aligned(g), aligned(h), aligned(w), None)  # the kernel reads W transposed
