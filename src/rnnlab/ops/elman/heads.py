"""Triton kernels of the block-diagonal (heads) Elman scan, ``w_h: [nh, hd, hd]``, plain or with
E1's decay (``selective="decay"``: ``h_t = tanh(wx_t + a_t * (h_{t-1} @ W^T))``).

One program per (head, batch tile of ``heads_bt`` rows) keeps W_head on chip for all T and walks
time sequentially (fp32 state, one ``[16, hd] x [hd, hd]`` MMA per step). The backward runs the
same way in reverse with W_head: ``dpre_t = (g_t + q_{t+1} @ W) * (1 - h_t^2)`` with
``q_t = a_t * dpre_t`` (``q = dpre`` without decay), and accumulates ``dW = sum_t q_t^T h_{t-1}``
on chip in the same loop (one more ``[hd, 16] x [16, hd]`` MMA per step, fp32, one partial per
batch tile summed in torch: no [B, T, H] copy of the shifted states, no extra GEMM);
``dwx = dpre``. With decay the backward also recomputes the recurrent term
``r_t = h_{t-1} @ W^T`` (one more MMA per step, off the dependent chain: h_{t-1} is already
loaded for dW) and stores ``da_t = dpre_t * r_t``, so nothing beyond ``h`` is saved.

Plain 16-bit scans of 64 or 128 channels a head run on the Gluon kernels instead
(``heads_gluon.py``); at 128 channels their backward leaves dW to :func:`weight_gradient`, a
split-K kernel after the scan, which costs less there than the loop's second MMA
(``results/e1-heads-dw-h200``; not at 64 channels, nor in the kernels here).

Heads of up to :data:`MAX_LANES` lanes (128 channels) run here (:func:`runs`); a wider head's W
alone outgrows an SM's shared memory, so such heads run on the dense kernels as their
block-diagonal matrix (:func:`block_diagonal`, the gradient's blocks by :func:`head_blocks`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnlab.ops.elman.options import HEADS_DW_BLOCK, ElmanKernelOptions
from rnnlab.ops.tanh import tanh
from rnnlab.ops.registry import check_time_offsets


@triton.jit
def _batch_tile(B, T, H, HD, BT: tl.constexpr, HDP: tl.constexpr):
    """This program's head and batch tile of ``[B, T, H]``: the head, its lanes ``rk`` and their
    mask, the tile's mask, its offsets at t = 0 (add ``t * H`` for step t) and ``h0``'s offsets."""
    head = tl.program_id(0)
    rb = tl.program_id(1) * BT + tl.arange(0, BT)
    rk = tl.arange(0, HDP)
    mk = rk < HD
    cols = head * HD + rk
    mask = (rb < B)[:, None] & mk[None, :]
    return head, rk, mk, mask, rb[:, None].to(tl.int64) * T * H + cols[None, :], rb[:, None] * H + cols[None, :]


@triton.jit
def _head_weight(w_ptr, head, rk, mk, HD, TRANSPOSED: tl.constexpr):
    """Head ``head``'s ``W[n, k]`` as an ``[HDP, HDP]`` tile, or its transpose ``wt[k, n]``."""
    if TRANSPOSED:
        offs = rk[None, :] * HD + rk[:, None]
    else:
        offs = rk[:, None] * HD + rk[None, :]
    return tl.load(w_ptr + head * HD * HD + offs, mask=mk[:, None] & mk[None, :], other=0.0)


@triton.jit
def _mma(a, b, IEEE: tl.constexpr):
    """``a @ b`` accumulated in fp32: exact fp32 products for fp32 scans (IEEE), else with ``a``
    rounded to ``b``'s 16-bit dtype (the tensor cores' inputs)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a.to(b.dtype), b)


@triton.jit
def _heads_fwd(wx_ptr, w_ptr, h0_ptr, h_ptr, a_ptr, B, T, H, HD,
               HAS_H0: tl.constexpr, DECAY: tl.constexpr, BT: tl.constexpr, HDP: tl.constexpr,
               IEEE: tl.constexpr, STAGES: tl.constexpr, FAST: tl.constexpr):
    head, rk, mk, m2, offs, offs0 = _batch_tile(B, T, H, HD, BT, HDP)
    wt = _head_weight(w_ptr, head, rk, mk, HD, TRANSPOSED=True)  # for h_{t-1} @ W^T
    if HAS_H0:
        h = tl.load(h0_ptr + offs0, mask=m2, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BT, HDP], dtype=tl.float32)
    for t in tl.range(0, T, num_stages=STAGES):
        x = tl.load(wx_ptr + offs + t * H, mask=m2, other=0.0).to(tl.float32)
        r = _mma(h, wt, IEEE)
        if DECAY:
            r = tl.load(a_ptr + offs + t * H, mask=m2, other=0.0).to(tl.float32) * r
        h = tanh(x + r, FAST)
        tl.store(h_ptr + offs + t * H, h.to(h_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _heads_bwd(w_ptr, h_ptr, h0_ptr, g_ptr, dpre_ptr, dh0_ptr, dw_ptr, a_ptr, da_ptr, B, T, H, HD,
               HAS_H0: tl.constexpr, DW: tl.constexpr, DECAY: tl.constexpr, BT: tl.constexpr,
               HDP: tl.constexpr, IEEE: tl.constexpr, STAGES: tl.constexpr):
    head, rk, mk, m2, offs, offs0 = _batch_tile(B, T, H, HD, BT, HDP)
    w = _head_weight(w_ptr, head, rk, mk, HD, TRANSPOSED=False)
    if DECAY:  # for r_t = h_{t-1} @ W^T
        wt = _head_weight(w_ptr, head, rk, mk, HD, TRANSPOSED=True)
    if HAS_H0:
        hfirst = tl.load(h0_ptr + offs0, mask=m2, other=0.0).to(tl.float32)
    hh = tl.load(h_ptr + offs + (T - 1) * H, mask=m2, other=0.0).to(tl.float32)  # h_t
    carry = tl.zeros([BT, HDP], dtype=tl.float32)  # q_{t+1} @ W
    dw = tl.zeros([HDP, HDP], dtype=tl.float32)  # sum_t q_t^T h_{t-1}, this batch tile
    for i in tl.range(0, T, num_stages=STAGES):
        t = T - 1 - i
        g = tl.load(g_ptr + offs + t * H, mask=m2, other=0.0).to(tl.float32)
        hp = tl.load(h_ptr + offs + (t - 1) * H, mask=m2 & (t > 0), other=0.0).to(tl.float32)
        if HAS_H0:
            hp = tl.where(t > 0, hp, hfirst)
        dpre = (g + carry) * (1.0 - hh * hh)
        tl.store(dpre_ptr + offs + t * H, dpre.to(dpre_ptr.dtype.element_ty), mask=m2)
        q = dpre
        if DECAY:
            q = tl.load(a_ptr + offs + t * H, mask=m2, other=0.0).to(tl.float32) * dpre
            r = _mma(hp, wt, IEEE)
            tl.store(da_ptr + offs + t * H, (dpre * r).to(da_ptr.dtype.element_ty), mask=m2)
        if IEEE:
            carry = tl.dot(q, w, input_precision="ieee")
            if DW:
                dw += tl.dot(tl.trans(q), hp, input_precision="ieee")
        else:  # q rounded once for both MMAs
            dq = q.to(w.dtype)
            carry = tl.dot(dq, w)
            if DW:
                dw += tl.dot(tl.trans(dq), hp.to(w.dtype))
        hh = hp
    tl.store(dh0_ptr + offs0, carry, mask=m2)
    if DW:
        tile = (tl.program_id(1) * (H // HD) + head).to(tl.int64)
        tl.store(dw_ptr + tile * HD * HD + rk[:, None] * HD + rk[None, :], dw, mask=mk[:, None] & mk[None, :])


@triton.jit
def _heads_dw(dpre_ptr, h_ptr, h0_ptr, dw_ptr, B, T, H, HD, ROWS: tl.constexpr, BK: tl.constexpr,
              HDP: tl.constexpr, HAS_H0: tl.constexpr, IEEE: tl.constexpr):
    """One head's ``dW = sum_r dpre_r^T h_{r-1}`` over ROWS of the flat ``[B * T]`` rows (one
    partial a program): ``h_{r-1}`` the row before in the same sequence, ``h0`` (or 0) at t = 0."""
    head = tl.program_id(0)
    chunk = tl.program_id(1)
    rk = tl.arange(0, BK)
    rc = tl.arange(0, HDP)
    mc = rc < HD
    cols = head * HD + rc
    acc = tl.zeros([HDP, HDP], dtype=tl.float32)
    for k in range(0, ROWS, BK):
        r = chunk * ROWS + k + rk
        ok = r < B * T
        t = r % T
        d = tl.load(dpre_ptr + r.to(tl.int64)[:, None] * H + cols[None, :], mask=ok[:, None] & mc[None, :], other=0.0)
        hp = tl.load(h_ptr + (r - 1).to(tl.int64)[:, None] * H + cols[None, :],
                     mask=(ok & (t > 0))[:, None] & mc[None, :], other=0.0)
        if HAS_H0:
            hp += tl.load(h0_ptr + (r // T).to(tl.int64)[:, None] * H + cols[None, :],
                          mask=(ok & (t == 0))[:, None] & mc[None, :], other=0.0).to(hp.dtype)
        if IEEE:
            acc = tl.dot(tl.trans(d), hp, acc, input_precision="ieee")
        else:
            acc = tl.dot(tl.trans(d), hp, acc)
    tile = (chunk * (H // HD) + head).to(tl.int64)
    tl.store(dw_ptr + tile * HD * HD + rc[:, None] * HD + rc[None, :], acc, mask=mc[:, None] & mc[None, :])


def weight_gradient(dpre: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, heads: int,
                    rows: int) -> torch.Tensor:
    """``dW_h: [heads, hd, hd]`` (fp32) of the plain heads scan from its ``dpre`` and states ``h``
    (contiguous, one dtype; ``h0`` too): a kernel after the scan, one program a head and ``rows``
    flat rows, the partials summed here, instead of a second MMA in each step of the scan's loop."""
    if rows <= 0 or rows % HEADS_DW_BLOCK:
        raise ValueError(f"heads_dw_rows must be a positive multiple of {HEADS_DW_BLOCK} (the kernel's row block), "
                         f"got {rows}")
    B, T, H = h.shape
    hd = H // heads
    chunks = triton.cdiv(B * T, rows)
    dw = torch.zeros(chunks, heads, hd, hd, device=h.device, dtype=torch.float32)
    if chunks:
        _heads_dw[(heads, chunks)](dpre, h, h if h0 is None else h0, dw, B, T, H, hd, ROWS=rows, BK=HEADS_DW_BLOCK,
                                   HDP=_padded(hd), HAS_H0=h0 is not None, IEEE=h.dtype == torch.float32,
                                   num_warps=8 if hd > 64 else 4)
    return dw.sum(0)


def _padded(hd: int) -> int:
    """Lanes per head: ``hd`` rounded up to a power of two, at least 16 (the MMA minimum)."""
    return max(16, triton.next_power_of_2(hd))


# The widest head a program holds: at 256 lanes (heads of 200 channels) the kernels asked for 262,144
# (bf16) and 311,296 bytes (fp32) of shared memory, against an H100's 232,448 (results/gpu-tests-h100-1206-3d3f8e9)
MAX_LANES = 128


def runs(w: torch.Tensor) -> bool:
    """Whether the scan with ``w_h`` runs on these kernels: heads (``[nh, hd, hd]``) of up to
    :data:`MAX_LANES` lanes. Dense ``w_h`` and wider heads (as :func:`block_diagonal`) take the dense kernels."""
    return w.dim() == 3 and _padded(w.shape[1]) <= MAX_LANES


def block_diagonal(w: torch.Tensor) -> torch.Tensor:
    """``w_h`` as a dense ``[H, H]`` matrix (heads: block-diagonal), for the dense kernels."""
    return w if w.dim() == 2 else torch.block_diag(*w.unbind(0))


def head_blocks(dw: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The gradient of ``w_h`` from that of :func:`block_diagonal`'s matrix: heads keep the diagonal
    blocks (contiguous, as the ops' fake kernels promise)."""
    if w.dim() == 2:
        return dw
    nh, hd, _ = w.shape
    return dw.view(nh, hd, nh, hd).diagonal(dim1=0, dim2=2).permute(2, 0, 1).contiguous()


def _gluon(opts: ElmanKernelOptions, a: torch.Tensor | None, x: torch.Tensor, hd: int, *others):
    """The Gluon kernels' module when they take this scan (:mod:`rnnlab.ops.elman.heads_gluon`),
    else None: ``opts.heads_gluon`` and the MUFU tanh on, no decay, and what
    ``heads_gluon.supported`` asks of the (contiguous) tensors."""
    if not (opts.heads_gluon and a is None and opts.use_fast_tanh(x)):
        return None
    try:  # Triton before 3.4 has no Gluon
        from rnnlab.ops.elman import heads_gluon
    except ImportError:
        return None
    return heads_gluon if heads_gluon.supported(x, hd, *others) else None


def programs(x: torch.Tensor, w: torch.Tensor, opts: ElmanKernelOptions) -> int:
    """The programs (one an SM) of the heads scan of ``x: [B, T, H]`` without decay: one a head and
    batch tile, of 16 rows in the Gluon kernels and ``heads_bt`` in the Triton ones."""
    nh, hd, _ = w.shape
    gluon = _gluon(opts, None, x, hd)
    return nh * triton.cdiv(x.shape[0], gluon.BT.value if gluon else opts.heads_bt)


def forward(wx: torch.Tensor, w: torch.Tensor, h0: torch.Tensor | None, opts: ElmanKernelOptions,
            a: torch.Tensor | None = None) -> torch.Tensor:
    """All states ``h`` (``wx``'s dtype) of the heads scan, with the decay ``a: [B, T, H]`` when
    given."""
    B, T, H = wx.shape
    check_time_offsets("elman_scan (heads)", T, H)
    nh, hd, _ = w.shape
    wx = wx.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    h0_16 = None if h0 is None else h0.to(wx.dtype).contiguous()  # the MMA reads it rounded so anyway
    if gluon := _gluon(opts, a, wx, hd, h0_16):
        return gluon.forward(wx, w, h0_16, opts.heads_gluon_ring)
    wk = w.to(wx.dtype).contiguous()
    h = torch.empty_like(wx)
    if T > 0 and B > 0:
        _heads_fwd[(nh, triton.cdiv(B, opts.heads_bt))](
            wx, wk, wx if h0 is None else h0, h, wx if a is None else a.contiguous(), B, T, H, hd,
            HAS_H0=h0 is not None, DECAY=a is not None, BT=opts.heads_bt, HDP=_padded(hd),
            IEEE=wx.dtype == torch.float32, STAGES=opts.heads_stages, FAST=opts.use_fast_tanh(wx),
            num_warps=opts.heads_warps)
    return h


def backward(g: torch.Tensor, w: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, need_dw: bool,
             opts: ElmanKernelOptions, a: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(dpre, dW, dh0, da)`` of the heads scan (dW zeros unless ``need_dw``; dh0 fp32; da in
    ``a``'s dtype, None without the decay ``a``)."""
    B, T, H = h.shape
    nh, hd, _ = w.shape
    g = g.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    h0_16 = None if h0 is None else h0.to(h.dtype).contiguous()  # as the forward (g keeps its precision)
    if gluon := _gluon(opts, a, h, hd, h0_16, g):
        # at 128 channels dW's MMA in the loop costs more than its sum by a kernel after the scan;
        # at 64, and in the Triton kernels, less (results/e1-heads-dw-h200)
        after = need_dw and hd == 128 and opts.heads_dw_rows > 0
        dpre, dw, dh0 = gluon.backward(g, w, h, h0_16, need_dw and not after, opts.heads_gluon_ring)
        if after:  # h0 rounded as the scan's MMA rounds it
            dw = weight_gradient(dpre, h, h0_16, nh, opts.heads_dw_rows).to(w.dtype)
        return dpre, dw, dh0, None
    dpre = torch.empty_like(h)
    dh0 = torch.zeros(B, H, device=h.device, dtype=torch.float32)
    nbt = triton.cdiv(B, opts.heads_bt)
    dw = torch.zeros(nbt, nh, hd, hd, device=h.device, dtype=torch.float32)  # per batch tile
    da = None if a is None else torch.empty(h.shape, device=h.device, dtype=a.dtype)
    if T > 0 and B > 0:
        _heads_bwd[(nh, nbt)](
            w.to(h.dtype).contiguous(), h, h if h0 is None else h0, g, dpre,
            dh0, dw, h if a is None else a.contiguous(), dpre if da is None else da, B, T, H, hd,
            HAS_H0=h0 is not None, DW=need_dw, DECAY=a is not None, BT=opts.heads_bt, HDP=_padded(hd),
            IEEE=h.dtype == torch.float32, STAGES=opts.heads_stages, num_warps=opts.heads_warps)
    return dpre, dw.sum(0).to(w.dtype), dh0, da
