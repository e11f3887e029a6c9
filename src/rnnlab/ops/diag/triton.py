"""Triton diagonal Elman scan ``h_t = tanh(a * h_{t-1} + u_t)`` (E16), forward and backward.

One program per (batch row, block of ``BLOCK`` channels), sequential over T with fp32 state
(4 steps per loop iteration, their loads issued first),
coalesced along S. Backward (reverse scan, reading the saved outputs ``h``):

    dh_t   = g_t + a * dpre_{t+1}
    dpre_t = dh_t * (1 - h_t^2)          -> du_t
    da    += dpre_t * h_{t-1}            (per program in registers, then summed over B in torch)
    dh0    = a * dpre_0

Under torch.compile the scan is the custom op pair ``rnnlab::diag_elman_fwd`` / ``diag_elman_bwd``
(opaque extern calls with a registered autograd formula), so an E16 model compiles to one graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnlab.ops.registry import check_time_offsets, final_state, traced
from rnnlab.ops.tanh import tanh

__all__ = ["diag_elman_scan"]

BLOCK = 256
NUM_WARPS = 4


@triton.jit
def _diag_fwd(u_ptr, a_ptr, h0_ptr, h_ptr, T, S, HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs = pid_s * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    base = pid_b.to(tl.int64) * T * S + offs
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * S + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK], dtype=tl.float32)
    # 4 steps per iteration, loads first (several HBM round trips in flight)
    for t0 in tl.range(0, T, 4):
        p = base + t0 * S
        m1 = mask & (t0 + 1 < T)
        m2 = mask & (t0 + 2 < T)
        m3 = mask & (t0 + 3 < T)
        u0 = tl.load(u_ptr + p, mask=mask, other=0.0).to(tl.float32)
        u1 = tl.load(u_ptr + p + S, mask=m1, other=0.0).to(tl.float32)
        u2 = tl.load(u_ptr + p + 2 * S, mask=m2, other=0.0).to(tl.float32)
        u3 = tl.load(u_ptr + p + 3 * S, mask=m3, other=0.0).to(tl.float32)
        h = tanh(a * h + u0)
        tl.store(h_ptr + p, h.to(h_ptr.dtype.element_ty), mask=mask)
        h = tanh(a * h + u1)
        tl.store(h_ptr + p + S, h.to(h_ptr.dtype.element_ty), mask=m1)
        h = tanh(a * h + u2)
        tl.store(h_ptr + p + 2 * S, h.to(h_ptr.dtype.element_ty), mask=m2)
        h = tanh(a * h + u3)
        tl.store(h_ptr + p + 3 * S, h.to(h_ptr.dtype.element_ty), mask=m3)


@triton.jit
def _ld_bwd(h_ptr, h0_ptr, g_ptr, base, h0o, t, S, mask, HAS_H0: tl.constexpr):
    m = mask & (t >= 0)
    g = tl.load(g_ptr + base + t * S, mask=m, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + base + t * S, mask=m, other=0.0).to(tl.float32)
    hp = tl.load(h_ptr + base + (t - 1) * S, mask=m & (t > 0), other=0.0).to(tl.float32)
    if HAS_H0:
        hp += tl.load(h0_ptr + h0o, mask=m & (t == 0), other=0.0).to(tl.float32)
    return g, h, hp


@triton.jit
def _diag_bwd(a_ptr, h_ptr, h0_ptr, g_ptr, du_ptr, da_part_ptr, dh0_ptr, T, S,
              HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs = pid_s * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    base = pid_b.to(tl.int64) * T * S + offs
    h0o = pid_b * S + offs
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    carry = tl.zeros([BLOCK], dtype=tl.float32)  # a * dpre_{t+1}
    da = tl.zeros([BLOCK], dtype=tl.float32)
    for i0 in tl.range(0, T, 4):
        t = T - 1 - i0
        g0, h0v, p0 = _ld_bwd(h_ptr, h0_ptr, g_ptr, base, h0o, t, S, mask, HAS_H0)
        g1, h1v, p1 = _ld_bwd(h_ptr, h0_ptr, g_ptr, base, h0o, t - 1, S, mask, HAS_H0)
        g2, h2v, p2 = _ld_bwd(h_ptr, h0_ptr, g_ptr, base, h0o, t - 2, S, mask, HAS_H0)
        g3, h3v, p3 = _ld_bwd(h_ptr, h0_ptr, g_ptr, base, h0o, t - 3, S, mask, HAS_H0)
        # invalid steps (t < 0) load zeros: g = h = hp = 0 -> dpre = carry, which must not
        # propagate: keep carry unchanged there; their da term is carry * 0 = 0
        dpre = (g0 + carry) * (1.0 - h0v * h0v)
        tl.store(du_ptr + base + t * S, dpre.to(du_ptr.dtype.element_ty), mask=mask)
        da += dpre * p0
        carry = a * dpre
        dpre = (g1 + carry) * (1.0 - h1v * h1v)
        tl.store(du_ptr + base + (t - 1) * S, dpre.to(du_ptr.dtype.element_ty), mask=mask & (t >= 1))
        da += dpre * p1
        carry = tl.where(t >= 1, a * dpre, carry)
        dpre = (g2 + carry) * (1.0 - h2v * h2v)
        tl.store(du_ptr + base + (t - 2) * S, dpre.to(du_ptr.dtype.element_ty), mask=mask & (t >= 2))
        da += dpre * p2
        carry = tl.where(t >= 2, a * dpre, carry)
        dpre = (g3 + carry) * (1.0 - h3v * h3v)
        tl.store(du_ptr + base + (t - 3) * S, dpre.to(du_ptr.dtype.element_ty), mask=mask & (t >= 3))
        da += dpre * p3
        carry = tl.where(t >= 3, a * dpre, carry)
    tl.store(dh0_ptr + h0o, carry, mask=mask)
    tl.store(da_part_ptr + h0o, da, mask=mask)


# ------------------------------------------------------------------------ torch.library ops
# The scan is a pair of custom ops with an autograd formula, like E1's: under torch.compile E16
# stays in one compiled graph (each op one opaque extern call, no graph break).
@torch.library.custom_op("rnnlab::diag_elman_fwd", mutates_args=(), schema="(Tensor u, Tensor a, Tensor? h0) -> Tensor")
def _scan_fwd(u, a, h0):
    """All states ``h`` in ``u``'s dtype (the length checked here, at run time: a check in the traced
    entry point would be traced, and a symbolic length cannot format its message)."""
    check_time_offsets("diag_elman_scan", u.shape[1], u.shape[2])
    u, a = u.contiguous(), a.contiguous()
    B, T, S = u.shape
    h = torch.empty_like(u)
    if T > 0 and B > 0:
        _diag_fwd[(B, triton.cdiv(S, BLOCK))](u, a, u if h0 is None else h0.contiguous(), h, T, S,
                                               HAS_H0=h0 is not None, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return h


@_scan_fwd.register_fake
def _(u, a, h0):
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("rnnlab::diag_elman_bwd", mutates_args=(),
                         schema="(Tensor g, Tensor a, Tensor h, Tensor? h0) -> (Tensor, Tensor, Tensor)")
def _scan_bwd(g, a, h, h0):
    """``(du, da, dh0)``: du in ``h``'s dtype, da in ``a``'s (summed over the batch), dh0 ``[B, S]``
    fp32 (zeros without ``h0``)."""
    h = h.contiguous()
    B, T, S = h.shape
    du = torch.empty_like(h)
    da_part = torch.zeros(B, S, device=h.device, dtype=torch.float32)
    dh0 = torch.zeros(B, S, device=h.device, dtype=torch.float32)
    if T > 0 and B > 0:
        _diag_bwd[(B, triton.cdiv(S, BLOCK))](a.contiguous(), h, h if h0 is None else h0.contiguous(),
                                               g.contiguous(), du, da_part, dh0, T, S, HAS_H0=h0 is not None,
                                               BLOCK=BLOCK, num_warps=NUM_WARPS)
    return du, da_part.sum(0).to(a.dtype), dh0


@_scan_bwd.register_fake
def _(g, a, h, h0):
    return (torch.empty_like(h, memory_format=torch.contiguous_format), torch.empty_like(a),
            h.new_empty(h.shape[0], h.shape[2], dtype=torch.float32))


def _scan_setup(ctx, inputs, output):
    _, a, h0 = inputs
    ctx.save_for_backward(a, output, h0)


def _scan_grads(ctx, g):
    a, h, h0 = ctx.saved_tensors
    du, da, dh0 = _scan_bwd(g, a, h, h0)
    return du, da, None if h0 is None else dh0.to(h0.dtype)


_scan_fwd.register_autograd(_scan_grads, setup_context=_scan_setup)


@traced
def diag_elman_scan(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)``: all states ``[B, T, S]`` of ``h_t = tanh(a * h_{t-1} + u_t)`` (fp32 state)
    in ``u``'s dtype, and ``h[:, -1]`` in fp32. torch.compile traces it (``traced``): only the
    custom op and the final state."""
    h = _scan_fwd(u, a, h0)
    return h, final_state(h, h0)
