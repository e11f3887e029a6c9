"""Triton per-step kernel of the dense Elman scan (design a+), ``w_h: [H, H]``: the path for
fp32 and for shapes the persistent kernel does not take, and for E1's selective scans (every
dtype): the decay ``h_t = tanh(wx_t + a_t * (h_{t-1} @ W^T))`` and the low-rank term
``h_t = tanh(wx_t + h_{t-1} @ W^T + ((h_{t-1} @ V) * s_t) @ U^T)``.

Per time step ONE fused kernel (``h_{t-1} @ W^T + wx_t``, tanh, store), in a Python loop over T
that is captured once per shape in a CUDA graph (``ElmanKernelOptions.cuda_graph``; static buffers
keyed by shape and options) and replayed. Backward: per step one fused kernel
``dpre_t = (g_t + q_{t+1} @ W) * (1 - h_t^2)`` with ``q = dpre`` (plain) or ``q_t = a_t * dpre_t``
(decay, stored beside dpre); ``dW_h`` and ``dh0`` are single GEMMs after the loop
(``rnnlab.ops.elman.triton``, ``rnnlab.ops.elman.selective``).

The selective terms live in the same program: the decay is one more operand of the epilogue;
the low-rank term reads one more ``[BK, r]`` tile per K chunk (``X @ V`` shares the loads of
``X @ W^T``; every program computes the whole rank-r row, since it needs all of K) and adds
``(p * s_t) @ U[cols]^T`` before the epilogue. The backward step is the same kernel with the
roles swapped (``dpre_{t+1} @ W + ((dpre_{t+1} @ U) * s_{t+1}) @ V^T``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from rnnlab.ops.elman.options import ElmanKernelOptions
from rnnlab.ops.tanh import tanh


@triton.jit
def _mma(acc, x, m, IEEE: tl.constexpr):
    """``acc + x @ m``: fp32 operands in IEEE mode, else ``m``'s (16-bit) dtype, fp32 accumulation."""
    if IEEE:
        acc += tl.dot(x.to(tl.float32), m.to(tl.float32), input_precision="ieee")
    else:
        acc += tl.dot(x.to(m.dtype), m)
    return acc


@triton.jit
def _tile_dot(x_ptr, stride_x, m_ptr, v_ptr, rb, rn, mb, mn, H, R, BB: tl.constexpr, BN: tl.constexpr,
              BK: tl.constexpr, RP: tl.constexpr, LOWRANK: tl.constexpr, IEEE: tl.constexpr,
              STAGES: tl.constexpr):
    """``(X[rb, :] @ M[:, rn], X[rb, :] @ V)`` in fp32 (M row-major [H, H], V row-major [H, R]; the
    second only with LOWRANK, else zeros)."""
    acc = tl.zeros([BB, BN], dtype=tl.float32)
    accv = tl.zeros([BB, RP], dtype=tl.float32)
    rr = tl.arange(0, RP)
    for k0 in tl.range(0, H, BK, num_stages=STAGES):
        rk = k0 + tl.arange(0, BK)
        mk = rk < H
        xk = tl.load(x_ptr + rb[:, None].to(tl.int64) * stride_x + rk[None, :],
                     mask=mb[:, None] & mk[None, :], other=0.0)
        mm = tl.load(m_ptr + rk[:, None] * H + rn[None, :], mask=mk[:, None] & mn[None, :], other=0.0)
        acc = _mma(acc, xk, mm, IEEE)
        if LOWRANK:
            vv = tl.load(v_ptr + rk[:, None] * R + rr[None, :], mask=mk[:, None] & (rr < R)[None, :], other=0.0)
            accv = _mma(accv, xk, vv, IEEE)
    return acc, accv


@triton.jit
def _lowrank_term(acc, accv, u_ptr, s_ptr, stride_s, rb, rn, mb, mn, R, RP: tl.constexpr, IEEE: tl.constexpr):
    """``acc + (accv * s) @ U[rn, :]^T`` (s rows of stride ``stride_s``, U row-major [H, R])."""
    rr = tl.arange(0, RP)
    mr = rr < R
    s = tl.load(s_ptr + rb[:, None].to(tl.int64) * stride_s + rr[None, :], mask=mb[:, None] & mr[None, :],
                other=0.0).to(tl.float32)
    ut = tl.load(u_ptr + rn[None, :] * R + rr[:, None], mask=mr[:, None] & mn[None, :], other=0.0)
    return _mma(acc, accv * s, ut, IEEE)


@triton.jit
def _step_epilogue(acc, e1_ptr, e2_ptr, out_ptr, a_ptr, q_ptr, stride_e, rb, rn, m2, MODE: tl.constexpr,
                   DECAY: tl.constexpr, FAST: tl.constexpr):
    """MODE 0: ``out = tanh(e1 + a * acc)``; MODE 1: ``out = (acc + e1) * (1 - e2^2)`` and, with
    DECAY, ``q = a * out`` (``a = 1`` without DECAY)."""
    eo = rb[:, None].to(tl.int64) * stride_e + rn[None, :]
    e1 = tl.load(e1_ptr + eo, mask=m2, other=0.0).to(tl.float32)
    if DECAY:
        a = tl.load(a_ptr + eo, mask=m2, other=0.0).to(tl.float32)
    if MODE == 0:
        if DECAY:
            acc = a * acc
        out = tanh(acc + e1, FAST)
    else:
        e2 = tl.load(e2_ptr + eo, mask=m2, other=0.0).to(tl.float32)
        out = (acc + e1) * (1.0 - e2 * e2)
        if DECAY:
            tl.store(q_ptr + eo, (a * out).to(q_ptr.dtype.element_ty), mask=m2)
    tl.store(out_ptr + eo, out.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _dense_step(x_ptr, stride_x, m_ptr, e1_ptr, e2_ptr, out_ptr, stride_e, a_ptr, q_ptr, v_ptr, u_ptr, s_ptr,
                stride_s, B, H, R, MODE: tl.constexpr, DECAY: tl.constexpr, LOWRANK: tl.constexpr,
                BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RP: tl.constexpr, IEEE: tl.constexpr,
                FAST: tl.constexpr, STAGES: tl.constexpr):
    """acc = X[b, :] @ M[:, cols] (M row-major [H, H]) (+ the low-rank term); epilogue by MODE:
    0: out = tanh(e1 + a * acc)                     (forward;  X = h_{t-1}, M = W^T, e1 = wx_t)
    1: out = (acc + e1) * (1 - e2^2), q = a * out   (backward; X = q_{t+1}, M = W, e1 = g_t, e2 = h_t)
    LOWRANK: acc += ((X @ V) * s) @ U[cols]^T (forward V, U, s_t; backward U, V, s_{t+1}).
    X rows have stride ``stride_x``; e1, e2, a, out, q rows ``stride_e``; s rows ``stride_s``."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    rb = pid_b * BB + tl.arange(0, BB)
    rn = pid_n * BN + tl.arange(0, BN)
    mb = rb < B
    mn = rn < H
    acc, accv = _tile_dot(x_ptr, stride_x, m_ptr, v_ptr, rb, rn, mb, mn, H, R, BB, BN, BK, RP, LOWRANK, IEEE,
                          STAGES)
    if LOWRANK:
        acc = _lowrank_term(acc, accv, u_ptr, s_ptr, stride_s, rb, rn, mb, mn, R, RP, IEEE)
    _step_epilogue(acc, e1_ptr, e2_ptr, out_ptr, a_ptr, q_ptr, stride_e, rb, rn, mb[:, None] & mn[None, :], MODE,
                   DECAY, FAST)


def _launch_step(x, sx, m, e1, e2, out, mode, ieee, fast, opts: ElmanKernelOptions, a=None, q=None,
                 lowrank=None):
    """One step on ``[B, H]`` row views (rows of stride ``e1.stride(0)``): ``x`` (row stride ``sx``),
    ``m``, the epilogue operands, the decay ``a`` (forward and backward) and the backward's second
    output ``q``, ``lowrank = (v, u, s_step)``."""
    B, H = e1.shape
    v, u, s = (e1, e1, e1) if lowrank is None else lowrank
    R = 1 if lowrank is None else v.shape[1]
    BB = min(64, max(16, triton.next_power_of_2(B)))  # batch rows per program
    _dense_step[(triton.cdiv(H, opts.dense_bn), triton.cdiv(B, BB))](
        x, sx, m, e1, e2, out, e1.stride(0), e1 if a is None else a, e1 if q is None else q, v, u, s, s.stride(0),
        B, H, R, MODE=mode, DECAY=a is not None, LOWRANK=lowrank is not None, BB=BB, BN=opts.dense_bn,
        BK=opts.dense_bk, RP=max(16, triton.next_power_of_2(R)), IEEE=ieee, FAST=fast, STAGES=opts.dense_stages,
        num_warps=opts.dense_warps)


def _at(x: torch.Tensor | None, t: int) -> torch.Tensor | None:
    return None if x is None else x[:, t]


def _fwd_loop(ieee, opts, wx, wt, h0, a, v, u, s, h):
    """h[:, t] = tanh(wx[:, t] + a[:, t] * (h[:, t-1] @ wt) [+ low-rank term]) for all t; h0: [B, H]
    (zeros allowed); a, v, u, s None when absent."""
    T, H = wx.shape[1], wx.shape[2]
    fast = opts.use_fast_tanh(wx)
    for t in range(T):
        xp, sx = (h0, H) if t == 0 else (h[:, t - 1], T * H)
        _launch_step(xp, sx, wt, wx[:, t], wx[:, t], h[:, t], 0, ieee, fast, opts, a=_at(a, t),
                     lowrank=None if v is None else (v, u, s[:, t]))


def _bwd_loop(ieee, opts, w, h, g, zeros, a, v, u, s, dpre, q=None):
    """dpre[:, t] = (g[:, t] + q[:, t+1] @ w [+ low-rank term]) * (1 - h[:, t]^2), backwards over
    t, with q = a * dpre (given with ``a``; ``dpre`` itself without)."""
    T, H = h.shape[1], h.shape[2]
    state = dpre if q is None else q
    for t in range(T - 1, -1, -1):
        nxt = min(t + 1, T - 1)  # at t = T-1 the state is zeros and s is not used
        xp, sx = (zeros, H) if t == T - 1 else (state[:, t + 1], T * H)
        _launch_step(xp, sx, w, g[:, t], h[:, t], dpre[:, t], 1, ieee, False, opts, a=_at(a, t), q=_at(q, t),
                     lowrank=None if v is None else (v, u, s[:, nxt]))


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


def _run(tag: str, loop, inputs: tuple, make_outputs, opts: ElmanKernelOptions) -> tuple:
    """``loop(*inputs, *outputs)`` with ``outputs = make_outputs()`` (inputs may hold None), run
    eagerly or, on CUDA with ``opts.cuda_graph``, replayed from the graph captured once per (tag,
    input shapes and dtypes, device, options) on static copies of the inputs; returns the outputs."""
    first = inputs[0]
    if not (opts.cuda_graph and first.is_cuda and not torch.cuda.is_current_stream_capturing()):
        outs = make_outputs()
        loop(*inputs, *outs)
        return outs
    key = (tag, *(None if x is None else (*x.shape, x.dtype) for x in inputs), first.device, opts)
    graph, bufs = GRAPHS.get(
        key, lambda: (*(None if x is None else torch.zeros_like(x) for x in inputs), *make_outputs()), loop)
    for buf, x in zip(bufs, inputs):
        if x is not None:
            buf.copy_(x)
    graph.replay()
    return tuple(buf.clone() for buf in bufs[len(inputs):])


def forward(wx: torch.Tensor, wt: torch.Tensor, h0: torch.Tensor, opts: ElmanKernelOptions,
            a: torch.Tensor | None = None, lowrank: tuple | None = None) -> torch.Tensor:
    """All states of the scan: contiguous ``wx: [B, T, H]`` (T, B > 0), ``wt = W^T`` and ``h0``, one
    dtype; the decay ``a: [B, T, H]`` or ``lowrank = (V, U, s)`` (contiguous) when given."""
    loop = functools.partial(_fwd_loop, wx.dtype == torch.float32, opts)
    (h,) = _run("fwd", loop, (wx, wt, h0, a, *(lowrank or (None,) * 3)), lambda: (torch.empty_like(wx),), opts)
    return h


def backward(w: torch.Tensor, h: torch.Tensor, g: torch.Tensor, opts: ElmanKernelOptions,
             a: torch.Tensor | None = None, lowrank: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dpre, q)``: dpre (= dL/dwx) from the states ``h`` and their gradient ``g`` (contiguous, T,
    B > 0), and ``q = a * dpre`` (the gradient of the recurrent term; ``dpre`` itself without the
    decay ``a``). ``lowrank = (U, V, s)`` as in :func:`forward` (note the order: U first)."""
    loop = functools.partial(_bwd_loop, h.dtype == torch.float32, opts)
    zeros = h.new_zeros(h.shape[0], h.shape[2])  # the state after the last step
    outs = _run("bwd", loop, (w, h, g, zeros, a, *(lowrank or (None,) * 3)),
                lambda: tuple(torch.empty_like(h) for _ in range(1 if a is None else 2)), opts)
    return outs[0], outs[-1]
