"""Triton Elman scan ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)`` (E1), forward and backward.

Two paths, chosen by the shape of ``w_h``:

* **heads** ``w_h: [nh, hd, hd]`` (block-diagonal): one program per (head, batch tile of 16 rows)
  keeps W_head on chip for all T and walks time sequentially (fp32 state, one
  ``[16, hd] x [hd, hd]`` MMA per step). The backward runs the same way in reverse with W_head:
  ``dpre_t = (g_t + dpre_{t+1} @ W) * (1 - h_t^2)``, and accumulates ``dW = sum_t dpre_t^T h_{t-1}``
  on chip in the same loop (one more ``[hd, 16] x [16, hd]`` MMA per step, fp32, one partial per
  batch tile summed in torch: no [B, T, H] copy of the shifted states, no extra GEMM);
  ``dwx = dpre``.
* **dense persistent** ``w_h: [H, H]``, bf16/fp16 (``DENSE_PERSISTENT``): one cooperative CUDA
  kernel per direction runs all T steps with W resident in shared memory, the blocks handing each
  step's state to each other through per-block step flags (``rnnlab.ops.elman.persistent``); used
  whenever the shape fits, else:
* **dense** ``w_h: [H, H]`` (design a+): per time step ONE fused Triton kernel
  (``h_{t-1} @ W^T + wx_t``, tanh, store), in a Python loop over T that is captured once per
  shape in a CUDA graph (``USE_GRAPH``; static buffers keyed by shape) and replayed. Backward:
  per step one fused kernel ``dpre_t = (g_t + dpre_{t+1} @ W) * (1 - h_t^2)``; ``dW_h``,
  ``dh0`` as single GEMMs after the loop. ``DENSE_SPLIT > 1`` splits each step's reduction over
  several programs (fp32 atomics; the last program of a tile runs the epilogue): tested, but no
  faster on H100 (docs/kernels.md), so off by default.

Both paths sit behind one pair of ``torch.library`` custom ops (``rnnlab::elman_scan_fwd`` /
``_bwd``) with a registered autograd formula, so ``torch.compile`` keeps an E1 model in one graph.

Inputs bf16/fp16/fp32 (fp64 is computed in fp32); matrix products take fp32 operands in IEEE
mode for fp32 inputs and 16-bit operands (fp32 accumulation) for 16-bit inputs.
"""

from __future__ import annotations

import os
import warnings

import torch
import triton
import triton.language as tl

from rnnlab.ops.registry import final_state, traced

__all__ = ["elman_scan", "DENSE_PERSISTENT", "USE_GRAPH", "DENSE_BN", "DENSE_BK", "DENSE_SPLIT"]

DENSE_PERSISTENT = True  # dense 16-bit scans: the persistent CUDA kernel when the shape fits
USE_GRAPH = True  # capture the dense per-step loop in a CUDA graph (per shape)
FAST_TANH = True  # tanh.approx.f32 for 16-bit inputs on the GPU (never for fp32 / the interpreter)
DENSE_BN = 16  # output columns per program in the dense step kernel
DENSE_BK = 128  # reduction chunk
DENSE_WARPS = 4
DENSE_STAGES = 3
DENSE_SPLIT = 1  # >1: split the reduction over K across programs (fp32 atomics, last one finishes)
HEAD_BT = 16  # batch rows per program in the heads kernel
HEAD_WARPS = 8
HEAD_STAGES = 3


@triton.jit
def _tanh(x, FAST: tl.constexpr = False):
    if FAST:  # sm_75+ MUFU tanh, ~1e-3 relative error: only for 16-bit inputs
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        e = tl.exp(2.0 * x)
        return 1.0 - 2.0 / (e + 1.0)


# --------------------------------------------------------------------------------------- heads
@triton.jit
def _heads_fwd(wx_ptr, w_ptr, h0_ptr, h_ptr, B, T, H, HD,
               HAS_H0: tl.constexpr, BT: tl.constexpr, HDP: tl.constexpr, IEEE: tl.constexpr,
               STAGES: tl.constexpr, FAST: tl.constexpr):
    head = tl.program_id(0)
    pid_b = tl.program_id(1)
    rb = pid_b * BT + tl.arange(0, BT)
    rk = tl.arange(0, HDP)
    mb = rb < B
    mk = rk < HD
    # wt[k, n] = W[head, n, k]
    wt = tl.load(w_ptr + head * HD * HD + rk[None, :] * HD + rk[:, None],
                 mask=mk[:, None] & mk[None, :], other=0.0)
    cols = head * HD + rk
    m2 = mb[:, None] & mk[None, :]
    offs = rb[:, None].to(tl.int64) * T * H + cols[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + rb[:, None] * H + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BT, HDP], dtype=tl.float32)
    for t in tl.range(0, T, num_stages=STAGES):
        x = tl.load(wx_ptr + offs + t * H, mask=m2, other=0.0).to(tl.float32)
        if IEEE:
            r = tl.dot(h, wt, input_precision="ieee")
        else:
            r = tl.dot(h.to(wt.dtype), wt)
        h = _tanh(x + r, FAST)
        tl.store(h_ptr + offs + t * H, h.to(h_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _heads_bwd(w_ptr, h_ptr, h0_ptr, g_ptr, dpre_ptr, dh0_ptr, dw_ptr, B, T, H, HD,
               HAS_H0: tl.constexpr, DW: tl.constexpr, BT: tl.constexpr, HDP: tl.constexpr,
               IEEE: tl.constexpr, STAGES: tl.constexpr):
    head = tl.program_id(0)
    pid_b = tl.program_id(1)
    rb = pid_b * BT + tl.arange(0, BT)
    rk = tl.arange(0, HDP)
    mb = rb < B
    mk = rk < HD
    mw = mk[:, None] & mk[None, :]
    # w[n, k] = W[head, n, k]
    w = tl.load(w_ptr + head * HD * HD + rk[:, None] * HD + rk[None, :], mask=mw, other=0.0)
    cols = head * HD + rk
    m2 = mb[:, None] & mk[None, :]
    offs = rb[:, None].to(tl.int64) * T * H + cols[None, :]
    if HAS_H0:
        hfirst = tl.load(h0_ptr + rb[:, None] * H + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    hh = tl.load(h_ptr + offs + (T - 1) * H, mask=m2, other=0.0).to(tl.float32)  # h_t
    carry = tl.zeros([BT, HDP], dtype=tl.float32)  # dpre_{t+1} @ W
    dw = tl.zeros([HDP, HDP], dtype=tl.float32)  # sum_t dpre_t^T h_{t-1}, this batch tile
    for i in tl.range(0, T, num_stages=STAGES):
        t = T - 1 - i
        g = tl.load(g_ptr + offs + t * H, mask=m2, other=0.0).to(tl.float32)
        hp = tl.load(h_ptr + offs + (t - 1) * H, mask=m2 & (t > 0), other=0.0).to(tl.float32)
        if HAS_H0:
            hp = tl.where(t > 0, hp, hfirst)
        dpre = (g + carry) * (1.0 - hh * hh)
        tl.store(dpre_ptr + offs + t * H, dpre.to(dpre_ptr.dtype.element_ty), mask=m2)
        if IEEE:
            carry = tl.dot(dpre, w, input_precision="ieee")
            if DW:
                dw += tl.dot(tl.trans(dpre), hp, input_precision="ieee")
        else:
            dq = dpre.to(w.dtype)
            carry = tl.dot(dq, w)
            if DW:
                dw += tl.dot(tl.trans(dq), hp.to(w.dtype))
        hh = hp
    tl.store(dh0_ptr + rb[:, None] * H + cols[None, :], carry, mask=m2)
    if DW:
        tl.store(dw_ptr + (pid_b * (H // HD) + head) * HD * HD + rk[:, None] * HD + rk[None, :], dw, mask=mw)


def _fast(x: torch.Tensor) -> bool:
    return FAST_TANH and x.dtype != torch.float32 and x.is_cuda and not os.environ.get("TRITON_INTERPRET")


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def _heads_forward(wx: torch.Tensor, w: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    B, T, H = wx.shape
    nh, hd, _ = w.shape
    wx = wx.contiguous()
    wk = w.to(wx.dtype).contiguous()
    h = torch.empty_like(wx)
    if T > 0 and B > 0:
        _heads_fwd[(nh, triton.cdiv(B, HEAD_BT))](
            wx, wk, wx if h0 is None else h0.contiguous(), h, B, T, H, hd, HAS_H0=h0 is not None,
            BT=HEAD_BT, HDP=_pow2(hd), IEEE=wx.dtype == torch.float32, STAGES=HEAD_STAGES,
            FAST=_fast(wx), num_warps=HEAD_WARPS)
    return h


def _heads_backward(g, w, h, h0, need_dw: bool):
    B, T, H = h.shape
    nh, hd, _ = w.shape
    dpre = torch.empty_like(h)
    dh0 = torch.zeros(B, H, device=h.device, dtype=torch.float32)
    nbt = triton.cdiv(B, HEAD_BT)
    dw = torch.zeros(nbt, nh, hd, hd, device=h.device, dtype=torch.float32)  # per batch tile
    if T > 0 and B > 0:
        _heads_bwd[(nh, nbt)](
            w.to(h.dtype).contiguous(), h, h if h0 is None else h0.contiguous(), g.contiguous(), dpre,
            dh0, dw, B, T, H, hd, HAS_H0=h0 is not None, DW=need_dw, BT=HEAD_BT, HDP=_pow2(hd),
            IEEE=h.dtype == torch.float32, STAGES=HEAD_STAGES, num_warps=HEAD_WARPS)
    return dpre, dw.sum(0).to(w.dtype), dh0


def _dw_dense(dpre: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """``dW = sum_{b,t} dpre[b, t]^T h[b, t-1]`` (``h[b, -1] = h0[b]`` or 0) as ONE GEMM without a
    shifted copy of ``h``: over the flat ``[B*T, H]`` rows, row r of dpre meets row r-1 of h; the
    B-1 pairs that straddle two sequences are subtracted and the t = 0 terms with h0 added through
    addmm's C operand (one rounding of the result)."""
    B, T, H = h.shape
    d, hf = dpre.reshape(B * T, H), h.reshape(B * T, H)
    corr = -(dpre[1:, 0].t() @ h[:-1, -1])
    if h0 is not None:
        corr += dpre[:, 0].t() @ h0
    return torch.addmm(corr, d[1:].t(), hf[:-1])


# --------------------------------------------------------------------------------------- dense
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
        out = _tanh(acc + e1, FAST)
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


@triton.jit
def _dense_step_split(x_ptr, stride_x, m_ptr, e1_ptr, e2_ptr, out_ptr, stride_e, acc_ptr, cnt_ptr,
                      B, H, KCH, MODE: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, IEEE: tl.constexpr, FAST: tl.constexpr,
                      STAGES: tl.constexpr, SPLIT: tl.constexpr):
    """As ``_dense_step`` with the K reduction split over SPLIT programs (axis 1): each adds its
    partial tile into the fp32 workspace ``acc`` [B, H] with atomics; the last program of a tile
    (per-tile counter) reads the sum, re-zeroes the workspace and the counter, and runs the
    epilogue."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_b = tl.program_id(2)
    rb = pid_b * BB + tl.arange(0, BB)
    rn = pid_n * BN + tl.arange(0, BN)
    mb = rb < B
    mn = rn < H
    k_lo = pid_k * KCH
    acc = _tile_dot(x_ptr, stride_x, m_ptr, rb, rn, mb, mn, k_lo, tl.minimum(k_lo + KCH, H), H,
                    BB, BN, BK, IEEE, STAGES)
    m2 = mb[:, None] & mn[None, :]
    ws = acc_ptr + rb[:, None] * H + rn[None, :]
    tl.atomic_add(ws, acc, mask=m2, sem="relaxed")
    tl.debug_barrier()
    tile = pid_b * tl.num_programs(0) + pid_n
    cnt = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
    if cnt == SPLIT - 1:
        # read the sum at L2 (an atomic add of 0), then re-zero the workspace and counter for the
        # next launch (stream order makes plain stores enough)
        tot = tl.atomic_add(ws, tl.zeros([BB, BN], dtype=tl.float32), mask=m2, sem="acq_rel")
        tl.store(ws, tl.zeros([BB, BN], dtype=tl.float32), mask=m2)
        tl.store(cnt_ptr + tile, 0)
        _step_epilogue(tot, e1_ptr, e2_ptr, out_ptr, stride_e, rb, rn, m2, MODE, FAST)


_WS: dict = {}


def _split_ws(B: int, H: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-cleaning workspace for the split-K step (zeros between launches), kept per shape."""
    key = (B, H, str(device))
    if key not in _WS:
        _WS[key] = (torch.zeros(B, H, device=device, dtype=torch.float32),
                    torch.zeros(triton.cdiv(H, 16) * triton.cdiv(B, 16), device=device, dtype=torch.int32))
    return _WS[key]


def _launch_step(xp, sx, m, e1, e2, out, sT, B, H, mode, ieee, fast):
    BB, nb = _dense_cfg(B)
    if DENSE_SPLIT <= 1:
        _dense_step[(triton.cdiv(H, DENSE_BN), nb)](
            xp, sx, m, e1, e2, out, sT, B, H, MODE=mode, BB=BB, BN=DENSE_BN, BK=DENSE_BK, IEEE=ieee,
            FAST=fast, STAGES=DENSE_STAGES, num_warps=DENSE_WARPS)
    else:
        acc, cnt = _split_ws(B, H, out.device)
        kch = triton.cdiv(triton.cdiv(H, DENSE_SPLIT), DENSE_BK) * DENSE_BK
        split = triton.cdiv(H, kch)
        _dense_step_split[(triton.cdiv(H, DENSE_BN), split, nb)](
            xp, sx, m, e1, e2, out, sT, acc, cnt, B, H, kch, MODE=mode, BB=BB, BN=DENSE_BN,
            BK=DENSE_BK, IEEE=ieee, FAST=fast, STAGES=DENSE_STAGES, SPLIT=split, num_warps=DENSE_WARPS)


def _dense_cfg(B: int):
    BB = min(64, _pow2(B))
    return BB, (triton.cdiv(B, BB))


def _dense_fwd_loop(wx, wt, h0, h, ieee):
    """h[:, t] = tanh(wx[:, t] + h[:, t-1] @ wt) for all t; h0: [B, H] (zeros allowed)."""
    B, T, H = wx.shape
    sT = T * H
    fast = _fast(wx)
    for t in range(T):
        if t == 0:
            xp, sx = h0, H
        else:
            xp, sx = h[:, t - 1], sT
        _launch_step(xp, sx, wt, wx[:, t], wx[:, t], h[:, t], sT, B, H, 0, ieee, fast)


def _dense_bwd_loop(w, h, g, zeros, dpre, ieee):
    """dpre[:, t] = (g[:, t] + dpre[:, t+1] @ w) * (1 - h[:, t]^2), backwards over t."""
    B, T, H = h.shape
    sT = T * H
    for t in range(T - 1, -1, -1):
        if t == T - 1:
            xp, sx = zeros, H
        else:
            xp, sx = dpre[:, t + 1], sT
        _launch_step(xp, sx, w, g[:, t], h[:, t], dpre[:, t], sT, B, H, 1, ieee, False)


class _GraphCache:
    """One captured CUDA graph per (kind, shape, dtype, device, tiles) with its static buffers."""

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


_GRAPHS = _GraphCache()


def _use_graph(t: torch.Tensor) -> bool:
    return USE_GRAPH and t.is_cuda and not torch.cuda.is_current_stream_capturing()


_PERSISTENT_ERROR: list[str] = []


def _persistent(x: torch.Tensor):
    """The persistent-kernel module when it should run the dense scan of ``x``, else None (it is
    off, the shape does not fit, or it failed to build: then a one-time warning)."""
    if not DENSE_PERSISTENT or _PERSISTENT_ERROR or not x.is_cuda:
        return None
    try:
        from rnnlab.ops.elman import persistent

        return persistent if persistent.supported(x) else None
    except Exception as e:  # noqa: BLE001 - no nvcc / ninja / build error: keep the Triton path
        _PERSISTENT_ERROR.append(f"{type(e).__name__}: {e}")
        warnings.warn(f"persistent Elman kernel unavailable, using the per-step Triton kernel ({e})")
        return None


def _dense_forward(wx: torch.Tensor, w: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    B, T, H = wx.shape
    dt = wx.dtype
    ieee = dt == torch.float32
    wx = wx.contiguous()
    wk = w.to(dt).contiguous()
    h0c = None if h0 is None else h0.to(dt).contiguous()
    if T == 0 or B == 0:
        return torch.empty_like(wx)
    if (pk := _persistent(wx)) is not None:
        return pk.forward(wx, wk, h0c)
    if h0c is None:  # the per-step kernels read the previous state from a tensor
        h0c = torch.zeros(B, H, device=wx.device, dtype=dt)
    wt = wk.t().contiguous()
    if _use_graph(wx):
        key = ("fwd", B, T, H, dt, wx.device, DENSE_BN, DENSE_BK, DENSE_WARPS, DENSE_STAGES,
               DENSE_SPLIT, _fast(wx))
        graph, (swx, swt, sh0, sh) = _GRAPHS.get(
            key,
            lambda: (torch.zeros_like(wx), torch.zeros_like(wt), torch.zeros_like(h0c),
                     torch.empty_like(wx)),
            lambda a, b, c, d: _dense_fwd_loop(a, b, c, d, ieee),
        )
        swx.copy_(wx)
        swt.copy_(wt)
        sh0.copy_(h0c)
        graph.replay()
        return sh.clone()
    h = torch.empty_like(wx)
    _dense_fwd_loop(wx, wt, h0c, h, ieee)
    return h


def _dense_backward(g, w, h, h0, need_dw: bool):
    B, T, H = h.shape
    dt = h.dtype
    ieee = dt == torch.float32
    wk = w.to(dt).contiguous()
    g = g.contiguous()
    if T == 0 or B == 0:
        dpre = torch.zeros_like(h)
    elif (pk := _persistent(h)) is not None:
        dpre = pk.backward(g, h, wk)
    elif _use_graph(h):
        key = ("bwd", B, T, H, dt, h.device, DENSE_BN, DENSE_BK, DENSE_WARPS, DENSE_STAGES,
               DENSE_SPLIT)
        graph, (sw, shh, sg, sz, sd) = _GRAPHS.get(
            key,
            lambda: (torch.zeros_like(wk), torch.zeros_like(h), torch.zeros_like(g),
                     torch.zeros(B, H, device=h.device, dtype=dt), torch.empty_like(h)),
            lambda a, b, c, d, e: _dense_bwd_loop(a, b, c, d, e, ieee),
        )
        sw.copy_(wk)
        shh.copy_(h)
        sg.copy_(g)
        graph.replay()
        dpre = sd.clone()
    else:
        dpre = torch.empty_like(h)
        _dense_bwd_loop(wk, h, g, torch.zeros(B, H, device=h.device, dtype=dt), dpre, ieee)
    h0c = None if h0 is None else h0.to(dt)
    dW = _dw_dense(dpre, h, h0c) if T > 0 and need_dw else torch.zeros_like(wk)
    if h0 is not None and T > 0:
        dh0 = dpre[:, 0].float() @ wk.float()
    else:
        dh0 = torch.zeros(B, H, device=h.device, dtype=torch.float32)
    return dpre, dW.to(w.dtype), dh0


# ------------------------------------------------------------------------ torch.library ops
# The scan is a pair of custom ops with an autograd formula: under torch.compile E1 stays in the
# compiled graph (each op one opaque extern call, no graph break) and can be CUDA-graphed with it.
@torch.library.custom_op("rnnlab::elman_scan_fwd", mutates_args=(),
                         schema="(Tensor wx, Tensor w, Tensor? h0) -> Tensor")
def _scan_fwd(wx, w, h0):
    """All states ``h`` (``wx``'s dtype); ``w`` dense ``[H, H]`` or heads ``[nh, hd, hd]``."""
    return (_heads_forward if w.dim() == 3 else _dense_forward)(wx, w, h0)


@_scan_fwd.register_fake
def _(wx, w, h0):
    return torch.empty_like(wx, memory_format=torch.contiguous_format)


@torch.library.custom_op("rnnlab::elman_scan_bwd", mutates_args=(),
                         schema="(Tensor g, Tensor w, Tensor h, Tensor? h0, bool need_dw) -> (Tensor, Tensor, Tensor)")
def _scan_bwd(g, w, h, h0, need_dw):
    """``(dpre, dW, dh0)``: dpre = dL/dwx (``h``'s dtype), dW in ``w``'s dtype (zeros unless
    ``need_dw``), dh0 ``[B, H]`` fp32 (zeros without ``h0``)."""
    return (_heads_backward if w.dim() == 3 else _dense_backward)(g, w, h, h0, need_dw)


@_scan_bwd.register_fake
def _(g, w, h, h0, need_dw):
    return (torch.empty_like(h, memory_format=torch.contiguous_format), torch.empty_like(w),
            h.new_empty(h.shape[0], h.shape[2], dtype=torch.float32))


def _scan_setup(ctx, inputs, output):
    _, w, h0 = inputs
    ctx.save_for_backward(w, output, h0)


def _scan_grads(ctx, g):
    w, h, h0 = ctx.saved_tensors
    need_dw = ctx.needs_input_grad[1]
    dpre, dw, dh0 = _scan_bwd(g, w, h, h0, need_dw)
    return dpre, dw if need_dw else None, None if h0 is None else dh0.to(h0.dtype)


_scan_fwd.register_autograd(_scan_grads, setup_context=_scan_setup)


@traced
def elman_scan(wx: torch.Tensor, w_h: torch.Tensor, h0: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)``: all states ``[B, T, H]`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)`` (dense or
    heads ``w_h``) and the final state (``h[:, -1]`` in the compute dtype). torch.compile traces
    it (``traced``): only dtype handling and the custom op."""
    dtype = wx.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        wx = wx.float()
        h0 = None if h0 is None else h0.float()
        w_h = w_h.float()
    h = _scan_fwd(wx, w_h, h0).to(dtype)
    return h, final_state(h, h0)
