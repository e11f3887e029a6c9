"""Triton per-step kernel of the dense Elman scan (design a+), ``w_h: [H, H]``: the path for
fp32 and for shapes the persistent kernel does not take.

Per time step ONE fused kernel (``h_{t-1} @ W^T + wx_t``, tanh, store), in a Python loop over T
that is captured once per shape in a CUDA graph (``ElmanKernelOptions.cuda_graph``; static buffers
keyed by shape and options) and replayed. Backward: per step one fused kernel
``dpre_t = (g_t + dpre_{t+1} @ W) * (1 - h_t^2)``; ``dW_h`` and ``dh0`` are single GEMMs after the
loop (``rnnlab.ops.elman.triton``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnlab.ops.elman.options import ElmanKernelOptions
from rnnlab.ops.elman.tanh import tanh


@triton.jit
def _tile_dot(x_ptr, stride_x, m_ptr, rb, rn, mb, mn, k_lo, k_hi, H, BB: tl.constexpr,
              BN: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr, STAGES: tl.constexpr):
    """``X[rb, k_lo:k_hi] @ M[k_lo:k_hi, rn]`` in fp32 (M row-major [H, H])."""
    acc = tl.zeros([BB, BN], dtype=tl.float32)
    for k0 in tl.range(k_lo, k_hi, BK, num_stages=STAGES):
        rk = k0 + tl.arange(0, BK)
        mk = rk < k_hi
        xk = tl.load(x_ptr + rb[:, None].to(tl.int64) * stride_x + rk[None, :],
                     mask=mb[:, None] & mk[None, :], other=0.0)
        mm = tl.load(m_ptr + rk[:, None] * H + rn[None, :], mask=mk[:, None] & mn[None, :], other=0.0)
        if IEEE:
            acc += tl.dot(xk.to(tl.float32), mm.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(xk.to(mm.dtype), mm)
    return acc


@triton.jit
def _step_epilogue(acc, e1_ptr, e2_ptr, out_ptr, stride_e, rb, rn, m2, MODE: tl.constexpr,
                   FAST: tl.constexpr):
    """MODE 0: ``out = tanh(acc + e1)``; MODE 1: ``out = (acc + e1) * (1 - e2^2)``."""
    eo = rb[:, None].to(tl.int64) * stride_e + rn[None, :]
    e1 = tl.load(e1_ptr + eo, mask=m2, other=0.0).to(tl.float32)
    if MODE == 0:
        out = tanh(acc + e1, FAST)
    else:
        e2 = tl.load(e2_ptr + eo, mask=m2, other=0.0).to(tl.float32)
        out = (acc + e1) * (1.0 - e2 * e2)
    tl.store(out_ptr + eo, out.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _dense_step(x_ptr, stride_x, m_ptr, e1_ptr, e2_ptr, out_ptr, stride_e, B, H,
                MODE: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                IEEE: tl.constexpr, FAST: tl.constexpr, STAGES: tl.constexpr):
    """acc = X[b, :] @ M[:, cols] (M row-major [H, H]); epilogue by MODE:
    0: out = tanh(acc + e1)              (forward;  X = h_{t-1}, M = W^T, e1 = wx_t)
    1: out = (acc + e1) * (1 - e2^2)     (backward; X = dpre_{t+1}, M = W, e1 = g_t, e2 = h_t)
    X rows have stride ``stride_x``; e1, e2, out rows have stride ``stride_e``."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    rb = pid_b * BB + tl.arange(0, BB)
    rn = pid_n * BN + tl.arange(0, BN)
    mb = rb < B
    mn = rn < H
    acc = _tile_dot(x_ptr, stride_x, m_ptr, rb, rn, mb, mn, 0, H, H, BB, BN, BK, IEEE, STAGES)
    _step_epilogue(acc, e1_ptr, e2_ptr, out_ptr, stride_e, rb, rn, mb[:, None] & mn[None, :], MODE, FAST)


def _launch_step(xp, sx, m, e1, e2, out, sT, B, H, mode, ieee, fast, opts: ElmanKernelOptions):
    BB = min(64, max(16, triton.next_power_of_2(B)))  # batch rows per program
    _dense_step[(triton.cdiv(H, opts.dense_bn), triton.cdiv(B, BB))](
        xp, sx, m, e1, e2, out, sT, B, H, MODE=mode, BB=BB, BN=opts.dense_bn, BK=opts.dense_bk, IEEE=ieee,
        FAST=fast, STAGES=opts.dense_stages, num_warps=opts.dense_warps)


def _fwd_loop(wx, wt, h0, h, ieee, opts):
    """h[:, t] = tanh(wx[:, t] + h[:, t-1] @ wt) for all t; h0: [B, H] (zeros allowed)."""
    B, T, H = wx.shape
    sT = T * H
    fast = opts.use_fast_tanh(wx)
    for t in range(T):
        if t == 0:
            xp, sx = h0, H
        else:
            xp, sx = h[:, t - 1], sT
        _launch_step(xp, sx, wt, wx[:, t], wx[:, t], h[:, t], sT, B, H, 0, ieee, fast, opts)


def _bwd_loop(w, h, g, zeros, dpre, ieee, opts):
    """dpre[:, t] = (g[:, t] + dpre[:, t+1] @ w) * (1 - h[:, t]^2), backwards over t."""
    B, T, H = h.shape
    sT = T * H
    for t in range(T - 1, -1, -1):
        if t == T - 1:
            xp, sx = zeros, H
        else:
            xp, sx = dpre[:, t + 1], sT
        _launch_step(xp, sx, w, g[:, t], h[:, t], dpre[:, t], sT, B, H, 1, ieee, False, opts)


class GraphCache:
    """One captured CUDA graph per key (direction, shape, dtype, device, options) with its static
    buffers."""

    def __init__(self):
        self.entries: dict = {}

    def get(self, key, make_buffers, body):
        ent = self.entries.get(key)
        if ent is None:
            bufs = make_buffers()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                body(*bufs)  # compile + warm up outside the capture
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                body(*bufs)
            ent = (graph, bufs)
            self.entries[key] = ent
        return ent

    def clear(self):
        self.entries.clear()


GRAPHS = GraphCache()


def _use_graph(t: torch.Tensor, opts: ElmanKernelOptions) -> bool:
    return opts.cuda_graph and t.is_cuda and not torch.cuda.is_current_stream_capturing()


def forward(wx: torch.Tensor, wt: torch.Tensor, h0: torch.Tensor, opts: ElmanKernelOptions) -> torch.Tensor:
    """All states of the scan: contiguous ``wx: [B, T, H]`` (T, B > 0), ``wt = W^T`` and ``h0``, one dtype."""
    ieee = wx.dtype == torch.float32
    if not _use_graph(wx, opts):
        h = torch.empty_like(wx)
        _fwd_loop(wx, wt, h0, h, ieee, opts)
        return h
    key = ("fwd", *wx.shape, wx.dtype, wx.device, opts)
    graph, (swx, swt, sh0, sh) = GRAPHS.get(
        key,
        lambda: (torch.zeros_like(wx), torch.zeros_like(wt), torch.zeros_like(h0), torch.empty_like(wx)),
        lambda a, b, c, d: _fwd_loop(a, b, c, d, ieee, opts),
    )
    swx.copy_(wx)
    swt.copy_(wt)
    sh0.copy_(h0)
    graph.replay()
    return sh.clone()


def backward(w: torch.Tensor, h: torch.Tensor, g: torch.Tensor, opts: ElmanKernelOptions) -> torch.Tensor:
    """``dpre`` (= dL/dwx) from the states ``h`` and their gradient ``g`` (contiguous, T, B > 0)."""
    B, T, H = h.shape
    ieee = h.dtype == torch.float32
    if not _use_graph(h, opts):
        dpre = torch.empty_like(h)
        _bwd_loop(w, h, g, torch.zeros(B, H, device=h.device, dtype=h.dtype), dpre, ieee, opts)
        return dpre
    key = ("bwd", B, T, H, h.dtype, h.device, opts)
    graph, (sw, shh, sg, sz, sd) = GRAPHS.get(
        key,
        lambda: (torch.zeros_like(w), torch.zeros_like(h), torch.zeros_like(g),
                 torch.zeros(B, H, device=h.device, dtype=h.dtype), torch.empty_like(h)),
        lambda a, b, c, d, e: _bwd_loop(a, b, c, d, e, ieee, opts),
    )
    sw.copy_(w)
    shh.copy_(h)
    sg.copy_(g)
    graph.replay()
    return sd.clone()
