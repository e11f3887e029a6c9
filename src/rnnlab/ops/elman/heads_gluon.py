"""The heads Elman scan (plain, no decay) in Gluon, Triton's dialect with explicit layouts, for
16-bit inputs on sm_80+ GPUs: the maths of :mod:`rnnlab.ops.elman.heads`, laid out so that a time
step costs one barrier and no layout conversion.

Why (docs/kernels.md, "E1 heads"): Triton's heads loop re-reads W from shared memory every step and
moves ``x_t`` and ``h_t`` between the MMA's layout and a coalesced one through shared memory, four
barriers a step. Here a program (one head, 16 batch rows, 8 warps splitting the head's columns)
keeps W as the MMA's operand in registers for all T. The new state (bf16) goes through two shared
tiles in turn, one barrier a step (a tile is rewritten only after every warp passed the barrier
behind its last read); ``x_t`` arrives by ``cp.async`` in 16-byte copies into a ring of RING tiles,
RING - 1 steps ahead (6 by default: results/e1-heads-rings-h200), and ``h_{t-1}`` leaves from its
exchange tile in 16-byte stores, one step late. The loop is unrolled by six (a multiple of the
ring's and the tiles' periods), so each tile is an allocation of its own and Gluon's barrier
analysis adds none inside the loop.

The backward runs in reverse the same way: ``carry = dpre_{t+1} @ W``,
``dpre_t = (g_t + carry) (1 - h_t^2)``, ``dW += dpre_{t+1}^T h_t`` (a second MMA off the chain, an
fp32 partial per batch tile, summed in torch; at 128 channels the package asks for no dW here
and sums it after the scan, ``heads.weight_gradient``), ``dh0`` the carry at ``t = -1``;
``g_t`` and ``h_t`` arrive as ``x_t`` does and ``dpre`` leaves as ``h`` does. Both loops run past
the sequence to a multiple of six steps (masked copies and stores), the backward through
``t = -1``; there dpre is held at zero (``t < 0``), so the extra steps add nothing to dW and cannot
overflow (in fp16 the carry, no longer damped by ``1 - h^2``, would). The backward relies on a
masked-off ``cp.async`` writing zeros (Triton 3.6 copies 0 source bytes, which fills the 16
destination bytes with zeros): ``h_{-1}`` without ``h0``, and the batch rows past B, whose dpre
then stays 0.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from rnnlab.ops.tanh import fast_tanh_applies

BT = gl.constexpr(16)  # batch rows a program: the MMA's M
WARPS = gl.constexpr(8)  # they split a head's columns, 8 at the least each: heads of 64 or more
HEAD_DIMS = (64, 128)  # 128: W^T's [128, 128] operand is 32 registers a thread
RINGS = (2, 3, 6)  # tiles in an input ring (inputs copied RING - 1 steps ahead): divisors of the loop's 6
# the layouts: the state's MMA (warps split the columns) and its operands; the backward's dW MMA
# (warps split dW's rows) and its operands; a [16, hd] tile in shared memory
_MMA = gl.constexpr(gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, WARPS.value], instr_shape=[16, 8]))
_A = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=_MMA.value, k_width=2))
_B = gl.constexpr(gl.DotOperandLayout(operand_index=1, parent=_MMA.value, k_width=2))
_MMA_W = gl.constexpr(gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS.value, 1], instr_shape=[16, 8]))
_AW = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=_MMA_W.value, k_width=2))
_BW = gl.constexpr(gl.DotOperandLayout(operand_index=1, parent=_MMA_W.value, k_width=2))
_SHARED = gl.constexpr(gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0]))
# Gluon's API moves between Triton releases: these kernels run on the one they were written and
# tested against (3.6); another release gets the Triton kernels until they are checked on it
_GLUON_OK = tuple(int(v) for v in triton.__version__.split(".")[:2]) == (3, 6)


def supported(x: torch.Tensor, hd: int, *others: torch.Tensor | None) -> bool:
    """Whether these kernels take a heads scan on ``x`` (contiguous, like ``others``): 16-bit on an
    sm_80+ GPU (``cp.async``, ``mma.sync``; never Triton's interpreter), heads of
    :data:`HEAD_DIMS` channels, every tensor of ``x``'s dtype and 16-byte aligned (the copies move
    16 bytes), and Triton 3.6 (its Gluon). The caller checks the rest (no decay, the MUFU tanh: the
    only tanh these kernels have)."""
    tensors = [x, *(t for t in others if t is not None)]
    return (fast_tanh_applies(x) and hd in HEAD_DIMS and _GLUON_OK
            and torch.cuda.get_device_capability(x.device) >= (8, 0)
            and all(t.dtype == x.dtype and t.is_contiguous() and t.data_ptr() % 16 == 0 for t in tensors))


@gluon.constexpr_function
def _io(hd):
    """A [16, hd] tile's coalesced layout: each thread's hd / 16 contiguous elements (16 bytes at
    hd 128) for the copies in and the stores out."""
    return gl.BlockedLayout([1, hd // 16], [2, 16], [WARPS.value, 1], [1, 0])


@gluon.jit
def _tanh(x):
    return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=gl.float32,
                                     is_pure=True, pack=1)


@gluon.jit
def _ring(dt: gl.constexpr, HD: gl.constexpr):
    """Six shared tiles, each an allocation of its own (Gluon's barrier analysis sees them apart;
    slices of one allocation would cost a barrier a step): an input ring uses the first RING."""
    return (gl.allocate_shared_memory(dt, [BT, HD], _SHARED), gl.allocate_shared_memory(dt, [BT, HD], _SHARED),
            gl.allocate_shared_memory(dt, [BT, HD], _SHARED), gl.allocate_shared_memory(dt, [BT, HD], _SHARED),
            gl.allocate_shared_memory(dt, [BT, HD], _SHARED), gl.allocate_shared_memory(dt, [BT, HD], _SHARED))


@gluon.jit
def _fwd_step(prev, nxt, xcur, xdst, wt, x_src, x_mask, out_ptrs, out_mask, RING: gl.constexpr):
    """One step after the previous step's barrier: ``h_{t-1}`` in ``prev``, ``x_t`` in ``xcur``."""
    a = prev.load(_A)
    x = xcur.load(_MMA)
    gl.store(out_ptrs, prev.load(_io(prev.shape[1])), mask=out_mask)  # h_{t-1}, from the exchange tile
    cp.async_copy_global_to_shared(xdst, x_src, mask=x_mask)  # x_{t+RING-1}
    cp.commit_group()
    nxt.store(_tanh(mma_v2(a, wt, x.to(gl.float32))).to(nxt.dtype))
    cp.wait_group(RING - 2)  # this thread's copies of x_{t+1} have landed; the barrier shares them
    gl.thread_barrier()


@gluon.jit
def _fwd(wx_ptr, w_ptr, h0_ptr, h_ptr, B, T, H, HD: gl.constexpr, HAS_H0: gl.constexpr, RING: gl.constexpr):
    io: gl.constexpr = _io(HD)
    dt: gl.constexpr = h_ptr.dtype.element_ty
    head = gl.program_id(0)
    rk = gl.arange(0, HD, layout=gl.SliceLayout(1, io))
    rn = gl.arange(0, HD, layout=gl.SliceLayout(0, io))
    w_sm = gl.allocate_shared_memory(dt, [HD, HD], _SHARED, gl.load(w_ptr + head * HD * HD + rk[:, None] + rn[None, :] * HD))
    wt = w_sm.load(_B)  # wt[k, n] = W[head, n, k]: h_t = tanh(x_t + h_{t-1} @ wt)
    ha = gl.allocate_shared_memory(dt, [BT, HD], _SHARED)  # the state's two exchange tiles
    hb = gl.allocate_shared_memory(dt, [BT, HD], _SHARED)
    xs = _ring(dt, HD)  # x_t's ring: its first RING tiles
    rb = gl.program_id(1) * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, io))
    m = (rb < B)[:, None] & (rn < HD)[None, :]
    cols = head * HD + rn[None, :]
    offs = rb[:, None].to(gl.int64) * T * H + cols
    if HAS_H0:
        hb.store(gl.load(h0_ptr + rb[:, None] * H + cols, mask=m, other=0.0))
    else:
        hb.store(gl.zeros([BT, HD], dt, io))
    for i in gl.static_range(RING - 1):  # x_0 .. x_{RING-2}, a copy group each
        cp.async_copy_global_to_shared(xs[i], wx_ptr + offs + i * H, mask=m & (T > i))
        cp.commit_group()
    cp.wait_group(RING - 2)
    gl.thread_barrier()
    hs = (ha, hb)
    for t in range(0, T, 6):  # h_t into ha at even t, hb at odd t; x_t in ring slot t % RING
        for k in gl.static_range(6):
            s = t + k
            out_ok = m & (s - 1 < T)  # h_{s-1} exists
            if k == 0:
                out_ok = out_ok & (t >= 1)
            _fwd_step(hs[(k + 1) % 2], hs[k % 2], xs[k % RING], xs[(k + RING - 1) % RING], wt,
                      wx_ptr + offs + (s + RING - 1) * H, m & (s + RING - 1 < T), h_ptr + offs + (s - 1) * H,
                      out_ok, RING)
    cp.wait_group(0)
    # h_{T-1} is still in its tile when T is a multiple of 6 (the loop stored every earlier one)
    gl.store(h_ptr + offs + (T - 1) * H, hb.load(io), mask=m & (T % 6 == 0) & (T > 0))


@gluon.jit
def _bwd_step(dp_prev, dp_next, g_sm, h_sm, g_dst, h_dst, w, dw, dh0, t, g_src, h_src, g_mask, h_mask,
              out_ptrs, out_mask, RING: gl.constexpr, DW: gl.constexpr):
    """Step t after the previous step's barrier: ``dpre_{t+1}`` in ``dp_prev``, ``g_t`` and
    ``h_t`` in ``g_sm`` / ``h_sm``."""
    carry = mma_v2(dp_prev.load(_A), w, gl.zeros([BT, w.shape[1]], gl.float32, _MMA))  # dpre_{t+1} @ W
    if DW:
        dw = mma_v2(dp_prev.permute([1, 0]).load(_AW), h_sm.load(_BW), dw)  # += dpre_{t+1}^T h_t
    gl.store(out_ptrs, dp_prev.load(_io(dp_prev.shape[1])), mask=out_mask)  # dpre_{t+1}, from the exchange tile
    cp.async_copy_global_to_shared(g_dst, g_src, mask=g_mask)  # g_{t-RING+1}
    cp.async_copy_global_to_shared(h_dst, h_src, mask=h_mask)  # h_{t-RING+1}
    cp.commit_group()
    dh0 = gl.where(t == -1, carry, dh0)
    hh = h_sm.load(_MMA).to(gl.float32)
    inside = (t >= 0).to(gl.float32)  # dpre is 0 before the sequence (a product keeps the packed bf16 stores)
    dp_next.store(((g_sm.load(_MMA).to(gl.float32) + carry) * (1.0 - hh * hh) * inside).to(dp_next.dtype))
    cp.wait_group(RING - 2)
    gl.thread_barrier()
    return dw, dh0


@gluon.jit
def _h_at(h_ptr, h0_ptr, offs, offs0, s, H, m, HAS_H0: gl.constexpr):
    """Where ``h_s`` is and whether to load it: ``h0`` at ``s = -1`` (zeros without it)."""
    if HAS_H0:
        return gl.where(s >= 0, h_ptr + offs + s * H, h0_ptr + offs0), m & (s >= -1)
    else:
        return h_ptr + offs + s * H, m & (s >= 0)


@gluon.jit
def _bwd(w_ptr, h_ptr, h0_ptr, g_ptr, dpre_ptr, dh0_ptr, dw_ptr, B, T, H, HD: gl.constexpr,
         HAS_H0: gl.constexpr, RING: gl.constexpr, DW: gl.constexpr):
    io: gl.constexpr = _io(HD)
    dt: gl.constexpr = h_ptr.dtype.element_ty
    head = gl.program_id(0)
    pid_b = gl.program_id(1)
    rk = gl.arange(0, HD, layout=gl.SliceLayout(1, io))
    rn = gl.arange(0, HD, layout=gl.SliceLayout(0, io))
    w_sm = gl.allocate_shared_memory(dt, [HD, HD], _SHARED, gl.load(w_ptr + head * HD * HD + rk[:, None] * HD + rn[None, :]))
    w = w_sm.load(_B)  # W[head, n, k] as [n, k]: carry = dpre @ W
    dpa = gl.allocate_shared_memory(dt, [BT, HD], _SHARED)  # dpre's two exchange tiles
    dpb = gl.allocate_shared_memory(dt, [BT, HD], _SHARED)
    gs = _ring(dt, HD)  # the rings of g_t and h_t: their first RING tiles
    hrs = _ring(dt, HD)
    rb = pid_b * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, io))
    m = (rb < B)[:, None] & (rn < HD)[None, :]
    cols = head * HD + rn[None, :]
    offs = rb[:, None].to(gl.int64) * T * H + cols
    offs0 = rb[:, None] * H + cols
    dpb.store(gl.zeros([BT, HD], dt, io))  # "dpre_T": no carry into t = T - 1
    for i in gl.static_range(RING - 1):  # t = T - 1 .. T - RING + 1, a copy group each
        cp.async_copy_global_to_shared(gs[i], g_ptr + offs + (T - 1 - i) * H, mask=m & (T - 1 - i >= 0))
        h_src, h_ok = _h_at(h_ptr, h0_ptr, offs, offs0, T - 1 - i, H, m, HAS_H0)
        cp.async_copy_global_to_shared(hrs[i], h_src, mask=h_ok)
        cp.commit_group()
    cp.wait_group(RING - 2)
    gl.thread_barrier()
    dw = gl.zeros([HD, HD], gl.float32, _MMA_W)
    dh0 = gl.zeros([BT, HD], gl.float32, _MMA)
    dps = (dpa, dpb)
    for p in range(0, T + 1, 6):  # t = T - 1 - p down to T - 6 - p; the last pass reaches t = -1
        for k in gl.static_range(6):  # dpre_t into dpa at even k, dpb at odd; g_t, h_t in slot k % RING
            t = T - 1 - p - k
            r = t - RING + 1  # the step whose inputs this one copies
            h_src, h_ok = _h_at(h_ptr, h0_ptr, offs, offs0, r, H, m, HAS_H0)
            dw, dh0 = _bwd_step(dps[(k + 1) % 2], dps[k % 2], gs[k % RING], hrs[k % RING], gs[(k + RING - 1) % RING],
                                hrs[(k + RING - 1) % RING], w, dw, dh0, t, g_ptr + offs + r * H, h_src, m & (r >= 0),
                                h_ok, dpre_ptr + offs + (t + 1) * H, m & (t + 1 < T) & (t + 1 >= 0), RING, DW)
    cp.wait_group(0)
    rbm = pid_b * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, _MMA))
    rcm = gl.arange(0, HD, layout=gl.SliceLayout(0, _MMA))
    gl.store(dh0_ptr + rbm[:, None] * H + head * HD + rcm[None, :], dh0, mask=(rbm < B)[:, None] & (rcm < HD)[None, :])
    ri = gl.arange(0, HD, layout=gl.SliceLayout(1, _MMA_W))
    rj = gl.arange(0, HD, layout=gl.SliceLayout(0, _MMA_W))
    if DW:
        tile = (pid_b * (H // HD) + head).to(gl.int64)
        gl.store(dw_ptr + tile * HD * HD + ri[:, None] * HD + rj[None, :], dw)


def _check_ring(ring: int) -> None:
    if ring not in RINGS:
        raise ValueError(f"heads_gluon_ring must be one of {RINGS} (it divides the loops' six steps), got {ring}")


def forward(wx: torch.Tensor, w: torch.Tensor, h0: torch.Tensor | None, ring: int = 6) -> torch.Tensor:
    """All states ``h`` (``wx``'s dtype) of the heads scan, ``x_t`` copied ``ring - 1`` steps
    ahead; the inputs as :func:`supported` takes them."""
    _check_ring(ring)
    B, T, H = wx.shape
    nh, hd, _ = w.shape
    h = torch.empty_like(wx)
    if T > 0 and B > 0:
        _fwd[(nh, triton.cdiv(B, BT.value))](wx, w.to(wx.dtype).contiguous(), wx if h0 is None else h0, h, B, T, H,
                                       HD=hd, HAS_H0=h0 is not None, RING=ring, num_warps=WARPS.value)
    return h


def backward(g: torch.Tensor, w: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, need_dw: bool = True,
             ring: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dpre, dW, dh0)`` of the heads scan: dpre in ``h``'s dtype, dW in ``w``'s (zeros unless
    ``need_dw``), dh0 ``[B, H]`` fp32; ``g_t`` and ``h_t`` copied ``ring - 1`` steps ahead; the
    inputs as :func:`supported` takes them."""
    _check_ring(ring)
    B, T, H = h.shape
    nh, hd, _ = w.shape
    nbt = triton.cdiv(B, BT.value)
    dpre = torch.empty_like(h)
    dh0 = torch.zeros(B, H, device=h.device, dtype=torch.float32)
    # dW: a partial per batch tile, summed here
    dw = torch.zeros((nbt if need_dw else 1), nh, hd, hd, device=h.device, dtype=torch.float32)
    if T > 0 and B > 0:
        _bwd[(nh, nbt)](w.to(h.dtype).contiguous(), h, h if h0 is None else h0, g, dpre, dh0, dw, B, T, H,
                        HD=hd, HAS_H0=h0 is not None, RING=ring, DW=need_dw, num_warps=WARPS.value)
    return dpre, dw.sum(0).to(w.dtype), dh0
