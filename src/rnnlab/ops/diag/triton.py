"""Triton diagonal Elman scan ``h_t = tanh(a * h_{t-1} + u_t)`` (E16), forward and backward.

One program per (batch row, block of ``BLOCK`` channels), sequential over T with fp32 state
(4 steps per loop iteration, their loads issued first),
coalesced along S. Backward (reverse scan, reading the saved outputs ``h``):

    dh_t   = g_t + a * dpre_{t+1}
    dpre_t = dh_t * (1 - h_t^2)          -> du_t
    da    += dpre_t * h_{t-1}            (per program in registers, then summed over B in torch)
    dh0    = a * dpre_0
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnlab.ops.registry import final_state

__all__ = ["diag_elman_scan"]

BLOCK = 256
NUM_WARPS = 4


@triton.jit
def _tanh(x):
    # exp form, exact to fp32 rounding in absolute terms; saturates cleanly at +-1
    e = tl.exp(2.0 * x)
    return 1.0 - 2.0 / (e + 1.0)


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
        h = _tanh(a * h + u0)
        tl.store(h_ptr + p, h.to(h_ptr.dtype.element_ty), mask=mask)
        h = _tanh(a * h + u1)
        tl.store(h_ptr + p + S, h.to(h_ptr.dtype.element_ty), mask=m1)
        h = _tanh(a * h + u2)
        tl.store(h_ptr + p + 2 * S, h.to(h_ptr.dtype.element_ty), mask=m2)
        h = _tanh(a * h + u3)
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


class _DiagElman(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, a, h0):
        u = u.contiguous()
        a = a.contiguous()
        B, T, S = u.shape
        has_h0 = h0 is not None
        h0c = h0.contiguous() if has_h0 else u
        h = torch.empty_like(u)
        grid = (B, triton.cdiv(S, BLOCK))
        if T > 0 and B > 0:
            _diag_fwd[grid](u, a, h0c, h, T, S, HAS_H0=has_h0, BLOCK=BLOCK, num_warps=NUM_WARPS)
        ctx.save_for_backward(a, h, h0 if has_h0 else None)
        ctx.has_h0 = has_h0
        ctx.h0_dtype = h0.dtype if has_h0 else None
        return h

    @staticmethod
    def backward(ctx, g):
        a, h, h0 = ctx.saved_tensors
        B, T, S = h.shape
        g = g.contiguous()
        du = torch.empty_like(h)
        da_part = torch.zeros(B, S, device=h.device, dtype=torch.float32)
        dh0 = torch.zeros(B, S, device=h.device, dtype=torch.float32)
        h0c = h0.contiguous() if ctx.has_h0 else h
        grid = (B, triton.cdiv(S, BLOCK))
        if T > 0 and B > 0:
            _diag_bwd[grid](a, h, h0c, g, du, da_part, dh0, T, S, HAS_H0=ctx.has_h0, BLOCK=BLOCK,
                            num_warps=NUM_WARPS)
        da = da_part.sum(0).to(a.dtype)
        return du, da, (dh0.to(ctx.h0_dtype) if ctx.has_h0 else None)


def diag_elman_scan(u: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)``: all states ``[B, T, S]`` of ``h_t = tanh(a * h_{t-1} + u_t)`` (fp32 state)
    in ``u``'s dtype, and ``h[:, -1]`` in fp32."""
    h = _DiagElman.apply(u, a, h0)
    return h, final_state(h, h0)
