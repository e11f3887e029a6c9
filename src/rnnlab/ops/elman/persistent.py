"""Persistent CUDA kernel for the dense Elman scan (``persistent.cu``): one cooperative launch per
direction instead of one kernel per time step.

Triton cannot express a cooperative launch (which guarantees that all blocks are resident, so they
may wait for each other), so this one kernel is CUDA C++ built on first use by
``torch.utils.cpp_extension.load`` (needs nvcc and ninja; about a minute, then cached; through
``rnnlab.ops.extensions.load``, so that a build stopped half-way cannot hang later runs). Each block
keeps its rows of ``W`` (forward) or ``W^T`` (backward) in shared memory for all T steps; per step
it waits only for the blocks that produced the state columns it reads (per-block step flags);
see the .cu file. Built for sm_90a (on Hopper by default, :func:`arch_flags`), a launch that covers the batch in
one pass runs in thread-block clusters of up to :attr:`Plan.max_cluster` CTAs, each CTA staging a
slice of the state into all of its cluster with multicast bulk copies (one L2 read feeds the
cluster); :func:`multicast_available` says whether the loaded build has that path,
:func:`last_cluster_size` what the last launch used. Outputs are the same bit for bit either way.

Used by ``rnnlab.ops.elman.triton`` for dense bf16/fp16 scans, plain, with E1's decay
(``selective="decay"``: ``a_t`` one more epilogue operand) or with its low-rank term
(``selective="lowrank"``, rank 1 to 16: one more MMA per K tile and a block sum per step; a build
of its own, so plain E1 does not pay for it; ``ElmanKernelOptions.persistent_lowrank``), when
:func:`make_plan` finds a launch (H a multiple of 8, the blocks co-resident); otherwise the Triton
per-step kernel (``dense_step.py``, CUDA-graphed) runs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnlab.ops.registry import aligned

__all__ = ["SHAPES", "SHAPES_W_IN_SHARED", "W_IN_REGISTERS_MAX_H", "MAX_RANK", "SOURCE", "Plan", "default_shapes",
           "make_plan", "forward", "backward", "multicast_available", "last_cluster_size"]

# Launch shapes in order of preference (measured on an H200 at H = 1760, B = 32; see
# docs/kernels.md): warps per block (the K range of a step is split over them) and the tile
# (output columns, batch rows) per block. The first that fits in shared memory and co-residency
# runs (``ElmanKernelOptions.persistent_shape`` forces one). At 8 warps and 32 columns W's
# fragments stay in registers (0.84x the 16-warp layer) up to H = W_IN_REGISTERS_MAX_H
# (persistent.cu's 14 K tiles a warp); where they cannot (the low-rank build, wider layers)
# 16 warps come first (SHAPES_W_IN_SHARED).
SHAPES = ((8, (32, 16)), (16, (32, 16)), (16, (16, 32)), (8, (16, 32)))
SHAPES_W_IN_SHARED = (SHAPES[1], SHAPES[0], *SHAPES[2:])
W_IN_REGISTERS_MAX_H = 8 * 14 * 16
MAX_RANK = 16  # the low-rank term is one 16-wide MMA tile (persistent.cu's LR)
SOURCE = Path(__file__).with_name("persistent.cu")


@dataclass(frozen=True)
class Plan:
    """One launch of the kernel: warps per block, the tile (output columns x batch rows per block)
    and the batch groups (independent recurrences on their own blocks: fewer state bytes per block
    per step; a block loops over its rows if needed)."""

    warps: int
    cols: int
    rows: int
    groups: int
    lowrank: bool = False  # launched from the low-rank build
    # the largest thread-block cluster the launch may use (1: never; the kernel picks the size
    # that keeps every block resident, and clusters only in an sm_90a build, one pass over the batch)
    max_cluster: int = 8
    # the kernel's source: the package's, or another copy of persistent.cu, built under a name of
    # its own, so that a benchmark times two versions side by side (bench_kernels.py --persistent-against)
    source: Path = SOURCE


EXT_FLAGS = ["-O3", "-std=c++17"]


def ext_flags(lowrank: bool = False) -> list[str]:
    """nvcc's flags for the plain-and-decay build, or (``lowrank``) the low-rank term's, its target
    aside (:func:`arch_flags`)."""
    return EXT_FLAGS + (["-DRNNLAB_LOWRANK"] if lowrank else [])


HOPPER_ARCH = ["-gencode=arch=compute_90a,code=sm_90a"]  # what TORCH_CUDA_ARCH_LIST=9.0a gives


def arch_flags(capabilities: list[tuple[int, int]] | None = None) -> list[str]:
    """nvcc's target: sm_90a (Hopper's arch-specific instructions: the cluster path's multicast
    copies) when every visible GPU has compute capability 9.0 (``capabilities``, default the
    visible GPUs'), TORCH_CUDA_ARCH_LIST is not set and torch is built with CUDA 12 or later (its
    extensions need an nvcc of the same major version; CUDA 11.8 has no sm_90a); else none, and
    torch's extension loader picks the target as for any extension (an arch flag given here
    replaces its choice): a set TORCH_CUDA_ARCH_LIST keeps the cluster path only if it names 9.0a."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or int((torch.version.cuda or "0").split(".")[0]) < 12:
        return []
    if capabilities is None:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        capabilities = [torch.cuda.get_device_capability(i) for i in range(n)]
    return HOPPER_ARCH if capabilities and all(c == (9, 0) for c in capabilities) else []


def build_flags(lowrank: bool = False) -> list[str]:
    """All of nvcc's flags for the extension: :func:`ext_flags` and :func:`arch_flags`."""
    return ext_flags(lowrank) + arch_flags()


@functools.cache
def _ext(lowrank: bool = False, source: Path = SOURCE):
    """The extension built from ``source`` (plain and decay; or, ``lowrank``, the low-rank term's
    build), named by :func:`_ext_name`."""
    from rnnlab.ops.extensions import load

    flags = build_flags(lowrank)
    return load(_ext_name(source.read_bytes(), flags), sources=[str(source)], extra_cuda_cflags=flags,
                verbose=False)


def _ext_name(source: bytes, flags: list[str], kernel: str = "persistent") -> str:
    """The extension's name: ``rnnlab_elman_<kernel>_`` and a hash of its source, its flags and the
    torch, CUDA and Python versions, so a build folder kept across machines (benchmarks/gpu_env.sh carries it between GPU
    jobs; with TORCH_EXTENSIONS_DIR set, torch files every version's build in one folder) never
    serves another build's binary: torch's own check of the sources lasts only as long as the process."""
    versions = f"{torch.__version__} {torch.version.cuda} {sys.version_info[:2]}"
    if arch := os.environ.get("TORCH_CUDA_ARCH_LIST"):  # e.g. 9.0a: another binary from the same source
        versions += f" {arch}"
    digest = hashlib.sha1(source + " ".join(flags).encode() + versions.encode()).hexdigest()[:12]
    return f"rnnlab_elman_{kernel}_{digest}"


@functools.cache
def _capacity(device_index: int, H: int, warps: int, tile: tuple[int, int], lowrank: bool) -> int:
    with torch.cuda.device(device_index):
        return int(_ext(lowrank).capacity(H, warps, *tile))


def default_shapes(H: int, rank: int = 0) -> tuple:
    """The launch shapes in order of preference for width ``H`` (and a low-rank term of ``rank``):
    :data:`SHAPES`, whose first keeps W's fragments in registers, or :data:`SHAPES_W_IN_SHARED`
    where it cannot (a low-rank term, or H padded to 16 over :data:`W_IN_REGISTERS_MAX_H`)."""
    return SHAPES_W_IN_SHARED if rank or -(-H // 16) * 16 > W_IN_REGISTERS_MAX_H else SHAPES


def make_plan(x: torch.Tensor, shapes=None, rank: int = 0) -> Plan | None:
    """The launch for the dense scan of ``x: [B, T, H]`` (with a low-rank term of ``rank`` > 0)
    with the first of ``shapes`` that fits (default :func:`default_shapes`), or None when the
    kernel cannot run it. CPU tensors, dtypes other than bf16/fp16, H not a multiple of 8 and ranks above
    :data:`MAX_RANK` are declined without building the extension."""
    if not x.is_cuda or x.dtype not in (torch.bfloat16, torch.float16) or x.shape[-1] % 8 != 0:
        return None
    if not 0 <= rank <= MAX_RANK:
        return None
    B, H = x.shape[0], x.shape[-1]
    for warps, (nc, rb) in default_shapes(H, rank) if shapes is None else shapes:
        cap = _capacity(x.device.index or 0, H, warps, (nc, rb), rank > 0)
        groups = min(-(-B // rb), cap // -(-H // nc))
        if groups >= 1:
            return Plan(warps, nc, rb, groups, rank > 0)
    return None


def _lowrank_operands(lowrank: tuple | None) -> tuple:
    """The extension's ``(lr_in, lr_out, s)`` for ``lowrank = (state side, epilogue side, s)``:
    the ``[H, r]`` matrices zero-padded to ``[Hp, 16]`` (Hp = H rounded up to 16; the MMA's K
    tiles) and ``[H, 16]``, and ``s`` in fp32; three Nones without a low-rank term."""
    if lowrank is None:
        return None, None, None
    state_side, epilogue_side, s = lowrank
    H, r = state_side.shape
    lr_in = state_side.new_zeros(-(-H // 16) * 16, MAX_RANK)
    lr_in[:H, :r] = state_side
    lr_out = epilogue_side.new_zeros(H, MAX_RANK)
    lr_out[:, :r] = epilogue_side
    return lr_in, lr_out, aligned(s.float())


def _launch(ext, plan: Plan) -> tuple:
    """The launch arguments of ``plan`` for ``ext``: ``max_cluster`` only for a build that takes it
    (an older copy of persistent.cu, timed with ``--persistent-against``, does not)."""
    launch = (plan.warps, plan.cols, plan.rows, plan.groups)
    return (*launch, plan.max_cluster) if hasattr(ext, "last_cluster_size") else launch


def multicast_available(lowrank: bool = False, source: Path = SOURCE) -> bool:
    """Whether the build of ``source`` loaded on the current CUDA device has the cluster path (an
    sm_90a build: the default on Hopper, :func:`arch_flags`); builds the extension if needed."""
    return bool(_ext(lowrank, source).multicast_available())


def last_cluster_size(lowrank: bool = False, source: Path = SOURCE) -> int:
    """The cluster size of that build's last launch (1: no clusters; 0: no launch yet)."""
    return int(_ext(lowrank, source).last_cluster_size())


def forward(wx: torch.Tensor, w: torch.Tensor, h0: torch.Tensor | None, plan: Plan,
            a: torch.Tensor | None = None, lowrank: tuple | None = None) -> torch.Tensor:
    """``h_t = tanh(wx_t + a_t * (h_{t-1} @ w.T))`` for all t (``a = 1`` when None), or with
    ``lowrank = (V, U, s)`` (a plan made with its rank) ``h_t = tanh(wx_t + h_{t-1} @ w.T +
    ((h_{t-1} @ V) * s_t) @ U.T)``; contiguous ``wx, a: [B, T, H]``, ``w: [H, H]``, ``h0: [B, H]``
    (None = zeros), ``U, V: [H, r]``, all of one 16-bit dtype, ``s: [B, T, r]`` any float dtype."""
    ext = _ext(plan.lowrank, plan.source)
    wx, w, h0, a = map(aligned, (wx, w, h0, a))
    return ext.forward(wx, None, w, h0, a, None, *_lowrank_operands(lowrank), *_launch(ext, plan))


def backward(g: torch.Tensor, h: torch.Tensor, w: torch.Tensor, plan: Plan, a: torch.Tensor | None = None,
             lowrank: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dpre, q)``: ``dpre_t = (g_t + q_{t+1} @ w) * (1 - h_t^2)`` backwards over t
    (``q_T = 0``) with ``q_t = a_t * dpre_t`` (``q`` is ``dpre`` itself when ``a`` is None); with
    ``lowrank = (U, V, s)`` (note the order: U first) the bracket also holds
    ``((dpre_{t+1} @ U) * s_{t+1}) @ V.T``."""
    wt = w.t().contiguous()
    g, h, a = map(aligned, (g, h, a))
    ext = _ext(plan.lowrank, plan.source)
    launch = _launch(ext, plan)
    if a is None:
        dpre = ext.backward(g, h, wt, None, None, None, *_lowrank_operands(lowrank), *launch)
        return dpre, dpre
    dpre = torch.empty_like(g)
    q = ext.backward(g, h, wt, None, a, dpre, None, None, None, *launch)
    return dpre, q
