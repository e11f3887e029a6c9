"""Triton linear scan ``h_t = a_t * h_{t-1} + b_t`` (minGRU, minLSTM), forward and backward.

One program per (batch row, block of ``BLOCK`` channels); each walks T sequentially with fp32
state, loads and stores coalesced along H, 4 time steps per loop iteration (all their loads
issued before the first dependent update, so several HBM round trips are in flight; 8 measured
slower, docs/kernels.md). The backward is the reverse scan

    dh_t  = g_t + a_{t+1} * dh_{t+1}      (g = dL/dh from above)
    db_t  = dh_t,   da_t = dh_t * h_{t-1},   dh0 = a_0 * dh_0

reading the saved outputs ``h`` (input dtype) and ``a``. No fp32 [B, T, H] intermediates.

``chunks`` > 1 splits T into up to that many chunks (lengths a multiple of the 4-step unroll)
scanned in parallel: more programs, so more loads in flight per SM. A first kernel reduces each
chunk a later one depends on (forward: its end state from zero and the product of its ``a``;
backward, from the right: its carry and the product) into a ``[2, chunks, B, H]`` fp32 buffer;
then each chunk's program combines the chunks before it (backward: after it) into its entering
state (carry) and scans its own steps, as one chunk does for all of T. Each input is read twice;
the states agree with one chunk's up to fp32 rounding (not bit for bit).

Besides the contract op ``linear_scan(a, b, h0)``, two fused ops take a layer's raw input
projection ``p`` and compute the gates inside the kernel (and recompute them in the backward),
so the layer keeps only ``p`` and ``h`` (both in the input dtype) per layer:

* ``mingru_scan(p, h0=None)``, ``p = [h~ | k]`` ``[B, T, 2H]``:
  ``a = sigmoid(-k)``, ``b = sigmoid(k) * g(h~)``;
* ``minlstm_scan(p, h0=None)``, ``p = [h~ | f | i]`` ``[B, T, 3H]``:
  ``d = softplus(-f) - softplus(-i)``, ``a = sigmoid(-d)``, ``b = sigmoid(d) * g(h~)``;

with ``g(x) = x + 0.5`` (x >= 0) else ``sigmoid(x)``; the same maths as ``naive.mingru_gates``
/ ``naive.minlstm_gates``. Each entry point returns ``(h, h_T)``, the final state being
``h[:, -1]`` in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnlab.ops.registry import final_state

__all__ = ["linear_scan", "mingru_scan", "minlstm_scan"]

BLOCK = 256
NUM_WARPS = 4
CHUNKS = 1  # chunks of T per (row, channel block); bench_kernels.py --sections scan-launch sweeps it


@triton.jit
def _gact(x):
    return tl.where(x >= 0, x + 0.5, tl.sigmoid(x))


@triton.jit
def _gact_grad(x):
    s = tl.sigmoid(x)
    return tl.where(x >= 0, 1.0, s * (1.0 - s))


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _ld(x0_ptr, x1_ptr, x2_ptr, q, m, MODE: tl.constexpr):
    x0 = tl.load(x0_ptr + q, mask=m, other=0.0).to(tl.float32)
    x1 = tl.load(x1_ptr + q, mask=m, other=0.0).to(tl.float32)
    if MODE == 2:
        x2 = tl.load(x2_ptr + q, mask=m, other=0.0).to(tl.float32)
    else:
        x2 = x0
    return x0, x1, x2


@triton.jit
def _coef(x0, x1, x2, MODE: tl.constexpr):
    if MODE == 0:
        a = x0
        b = x1
    elif MODE == 1:
        a = tl.sigmoid(-x1)
        b = tl.sigmoid(x1) * _gact(x0)
    else:
        d = _softplus(-x1) - _softplus(-x2)
        a = tl.sigmoid(-d)
        b = tl.sigmoid(d) * _gact(x0)
    return a, b


@triton.jit
def _coef_bwd(x0, x1, x2, dh, hp, MODE: tl.constexpr):
    """(a, grad wrt x0, x1, x2) given dh = dL/dh_t and hp = h_{t-1}."""
    if MODE == 0:
        a = x0
        d0 = dh * hp
        d1 = dh
        d2 = dh
    elif MODE == 1:
        s = tl.sigmoid(x1)
        a = tl.sigmoid(-x1)
        d0 = dh * s * _gact_grad(x0)
        d1 = dh * s * a * (_gact(x0) - hp)
        d2 = d1
    else:
        d = _softplus(-x1) - _softplus(-x2)
        s = tl.sigmoid(d)
        a = tl.sigmoid(-d)
        d0 = dh * s * _gact_grad(x0)
        dd = dh * s * a * (_gact(x0) - hp)
        d1 = -dd * tl.sigmoid(-x1)
        d2 = dd * tl.sigmoid(-x2)
    return a, d0, d1, d2


@triton.jit
def _ld4(x0_ptr, x1_ptr, x2_ptr, q, RS, mask, t0, T, MODE: tl.constexpr):
    """The inputs of time steps t0 .. t0 + 3 (masked past T), all their loads issued together."""
    u0, v0, w0 = _ld(x0_ptr, x1_ptr, x2_ptr, q, mask, MODE)
    u1, v1, w1 = _ld(x0_ptr, x1_ptr, x2_ptr, q + RS, mask & (t0 + 1 < T), MODE)
    u2, v2, w2 = _ld(x0_ptr, x1_ptr, x2_ptr, q + 2 * RS, mask & (t0 + 2 < T), MODE)
    u3, v3, w3 = _ld(x0_ptr, x1_ptr, x2_ptr, q + 3 * RS, mask & (t0 + 3 < T), MODE)
    return (u0, v0, w0), (u1, v1, w1), (u2, v2, w2), (u3, v3, w3)


@triton.jit
def _fwd4(h, xs, h_ptr, o, H, mask, t0, T, MODE: tl.constexpr):
    """Steps t0 .. t0 + 3 of ``h = a * h + b`` from ``_ld4``'s inputs, each state stored."""
    for k in tl.static_range(4):
        a, b = _coef(xs[k][0], xs[k][1], xs[k][2], MODE)
        h = a * h + b
        tl.store(h_ptr + o + k * H, h.to(h_ptr.dtype.element_ty), mask=mask & (t0 + k < T) if k else mask)
    return h


@triton.jit
def _sum4(h, A, xs, t0, te, MODE: tl.constexpr):
    """``_fwd4`` without stores, for steps before ``te``, also multiplying up their ``a``."""
    for k in tl.static_range(4):
        a, b = _coef(xs[k][0], xs[k][1], xs[k][2], MODE)
        live = t0 + k < te
        h = tl.where(live, a * h + b, h)
        A = tl.where(live, a * A, A)
    return h, A


@triton.jit
def _summary(S_ptr, c, NC, H, offs):
    """Pointers into the chunks' ``[2, NC, B, H]`` fp32 buffer at this program's batch row and
    channels: chunk c's product of ``a`` (S[0, c]) and its end state or carry (S[1, c])."""
    B = tl.num_programs(0)
    o = (c * B + tl.program_id(0)).to(tl.int64) * H + offs
    return S_ptr + o, S_ptr + (NC * B).to(tl.int64) * H + o


@triton.jit
def _chunk_fwd(x0_ptr, x1_ptr, x2_ptr, RS, S_ptr, T, H, L, NC,
               MODE: tl.constexpr, BLOCK: tl.constexpr):
    """Chunk c of T (steps c*L .. c*L + L - 1) reduced from a zero state: the product of its
    ``a`` -> S[0, c], its end state -> S[1, c] (fp32)."""
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    c = tl.program_id(2)
    offs = pid_h * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    xb = pid_b.to(tl.int64) * T * RS + offs
    ts = c * L
    te = tl.minimum(ts + L, T)
    h = tl.zeros([BLOCK], dtype=tl.float32)
    A = tl.full([BLOCK], 1.0, dtype=tl.float32)
    for t0 in tl.range(ts, te, 4):
        xs = _ld4(x0_ptr, x1_ptr, x2_ptr, xb + t0 * RS, RS, mask, t0, te, MODE)
        h, A = _sum4(h, A, xs, t0, te, MODE)
    prod, state = _summary(S_ptr, c, NC, H, offs)
    tl.store(prod, A, mask=mask)
    tl.store(state, h, mask=mask)


@triton.jit
def _scan_fwd(x0_ptr, x1_ptr, x2_ptr, RS, h0_ptr, h_ptr, T, H, S_ptr, L, NC,
              MODE: tl.constexpr, HAS_H0: tl.constexpr, BLOCK: tl.constexpr, CHUNKED: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs = pid_h * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    xb = pid_b.to(tl.int64) * T * RS + offs
    hb = pid_b.to(tl.int64) * T * H + offs
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * H + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK], dtype=tl.float32)
    if CHUNKED:  # this program's chunk, entered with the chunks before it applied to h0
        c = tl.program_id(2)
        ts = c * L
        te = tl.minimum(ts + L, T)
        for j in range(0, c):
            prod, state = _summary(S_ptr, j, NC, H, offs)
            h = tl.load(prod, mask=mask, other=0.0) * h + tl.load(state, mask=mask, other=0.0)
    else:
        ts = 0
        te = T
    for t0 in tl.range(ts, te, 4):
        xs = _ld4(x0_ptr, x1_ptr, x2_ptr, xb + t0 * RS, RS, mask, t0, te, MODE)
        h = _fwd4(h, xs, h_ptr, hb + t0 * H, H, mask, t0, te, MODE)


@triton.jit
def _ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t, lo, H, mask,
            MODE: tl.constexpr, HAS_H0: tl.constexpr):
    m = mask & (t >= lo)
    x0, x1, x2 = _ld(x0_ptr, x1_ptr, x2_ptr, xb + t * RS, m, MODE)
    g = tl.load(g_ptr + hb + t * H, mask=m, other=0.0).to(tl.float32)
    hp = tl.load(h_ptr + hb + (t - 1) * H, mask=m & (t > 0), other=0.0).to(tl.float32)
    if HAS_H0:
        hp += tl.load(h0_ptr + h0o, mask=m & (t == 0), other=0.0).to(tl.float32)
    return x0, x1, x2, g, hp


@triton.jit
def _ld4_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t, lo, H, mask,
             MODE: tl.constexpr, HAS_H0: tl.constexpr):
    """What the backward of steps t, t - 1, t - 2, t - 3 (those >= lo) reads, all loads issued together."""
    return (_ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t, lo, H, mask, MODE, HAS_H0),
            _ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t - 1, lo, H, mask, MODE, HAS_H0),
            _ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t - 2, lo, H, mask, MODE, HAS_H0),
            _ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t - 3, lo, H, mask, MODE, HAS_H0))


@triton.jit
def _st_bwd(d0_ptr, d1_ptr, d2_ptr, RS, q, m, d0, d1, d2, MODE: tl.constexpr):
    tl.store(d0_ptr + q, d0.to(d0_ptr.dtype.element_ty), mask=m)
    tl.store(d1_ptr + q, d1.to(d1_ptr.dtype.element_ty), mask=m)
    if MODE == 2:
        tl.store(d2_ptr + q, d2.to(d2_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd4(carry, xs, d0_ptr, d1_ptr, d2_ptr, RS, xb, t, lo, mask, MODE: tl.constexpr):
    """The reverse scan over steps t, t - 1, t - 2, t - 3 (t >= lo) from ``_ld4_bwd``'s inputs;
    ``carry`` = a_{t+1} * dh_{t+1}, returned for step t - 4. Steps before lo leave it as it is."""
    for k in tl.static_range(4):
        u, v, w, g, hp = xs[k]
        a, d0, d1, d2 = _coef_bwd(u, v, w, g + carry, hp, MODE)
        if k == 0:
            _st_bwd(d0_ptr, d1_ptr, d2_ptr, RS, xb + t * RS, mask, d0, d1, d2, MODE)
            carry = a * (g + carry)
        else:
            _st_bwd(d0_ptr, d1_ptr, d2_ptr, RS, xb + (t - k) * RS, mask & (t >= lo + k), d0, d1, d2, MODE)
            carry = tl.where(t >= lo + k, a * (g + carry), carry)
    return carry


@triton.jit
def _chunk_bwd(x0_ptr, x1_ptr, x2_ptr, RS, g_ptr, S_ptr, T, H, L, NC,
               MODE: tl.constexpr, BLOCK: tl.constexpr):
    """Chunk c of T reduced from the right from a zero carry: the product of its ``a`` -> S[0, c],
    the carry it passes to step c*L - 1 -> S[1, c] (fp32). Launched for chunks 1 .. NC - 1."""
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    c = tl.program_id(2) + 1
    offs = pid_h * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    xb = pid_b.to(tl.int64) * T * RS + offs
    hb = pid_b.to(tl.int64) * T * H + offs
    ts = c * L
    te = tl.minimum(ts + L, T)
    carry = tl.zeros([BLOCK], dtype=tl.float32)
    P = tl.full([BLOCK], 1.0, dtype=tl.float32)
    for i0 in tl.range(0, te - ts, 4):
        for k in tl.static_range(4):
            t = te - 1 - i0 - k
            live = mask & (t >= ts)
            x0, x1, x2 = _ld(x0_ptr, x1_ptr, x2_ptr, xb + t * RS, live, MODE)
            g = tl.load(g_ptr + hb + t * H, mask=live, other=0.0).to(tl.float32)
            a, _ = _coef(x0, x1, x2, MODE)
            carry = tl.where(t >= ts, a * (g + carry), carry)
            P = tl.where(t >= ts, a * P, P)
    prod, state = _summary(S_ptr, c, NC, H, offs)
    tl.store(prod, P, mask=mask)
    tl.store(state, carry, mask=mask)


@triton.jit
def _scan_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, d0_ptr, d1_ptr, d2_ptr, dh0_ptr,
              T, H, S_ptr, L, NC, MODE: tl.constexpr, HAS_H0: tl.constexpr, BLOCK: tl.constexpr,
              CHUNKED: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs = pid_h * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    xb = pid_b.to(tl.int64) * T * RS + offs
    hb = pid_b.to(tl.int64) * T * H + offs
    h0o = pid_b * H + offs
    carry = tl.zeros([BLOCK], dtype=tl.float32)  # a_{t+1} * dh_{t+1}
    if CHUNKED:  # this program's chunk, entered with the carry of the chunks after it
        c = tl.program_id(2)
        ts = c * L
        te = tl.minimum(ts + L, T)
        for i in range(0, NC - 1 - c):
            prod, state = _summary(S_ptr, NC - 1 - i, NC, H, offs)
            carry = tl.load(prod, mask=mask, other=0.0) * carry + tl.load(state, mask=mask, other=0.0)
    else:
        c = 0
        ts = 0
        te = T
    for i0 in tl.range(0, te - ts, 4):
        t = te - 1 - i0
        xs = _ld4_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t, ts, H, mask, MODE, HAS_H0)
        carry = _bwd4(carry, xs, d0_ptr, d1_ptr, d2_ptr, RS, xb, t, ts, mask, MODE)
    tl.store(dh0_ptr + h0o, carry, mask=mask & (c == 0))


def _views(x: torch.Tensor, groups: int, H: int):
    return [x[..., k * H:(k + 1) * H] for k in range(groups)] + [x] * (3 - groups)


def _chunking(T: int, chunks: int) -> tuple[int, int]:
    """``(L, NC)``: chunk length (a multiple of the 4-step unroll) and the number of chunks."""
    L = -(-T // max(chunks, 1))
    L = -(-L // 4) * 4
    return L, -(-T // L)


def launch_forward(ptrs, RS: int, h0c, h: torch.Tensor, mode: int, has_h0: bool,
                   block: int = BLOCK, warps: int = NUM_WARPS, chunks: int = CHUNKS) -> None:
    """``_scan_fwd`` over ``h: [B, T, H]`` (one program per batch row, ``block`` channels and
    chunk of T); ``block``, ``warps`` and ``chunks`` other than the defaults only for
    ``bench_kernels.py``'s sweep and the tests."""
    B, T, H = h.shape
    L, NC = _chunking(T, chunks)
    grid = (B, triton.cdiv(H, block))
    S = ptrs[0]
    if NC > 1:
        S = torch.empty(2, NC, B, H, device=h.device, dtype=torch.float32)
        _chunk_fwd[grid + (NC - 1,)](*ptrs, RS, S, T, H, L, NC, MODE=mode, BLOCK=block, num_warps=warps)
    _scan_fwd[grid + (NC,)](*ptrs, RS, h0c, h, T, H, S, L, NC, MODE=mode, HAS_H0=has_h0, BLOCK=block,
                            CHUNKED=NC > 1, num_warps=warps)


def launch_backward(ptrs, RS: int, h: torch.Tensor, h0c, g: torch.Tensor, outs, dh0: torch.Tensor, mode: int,
                    has_h0: bool, block: int = BLOCK, warps: int = NUM_WARPS, chunks: int = CHUNKS) -> None:
    """``_scan_bwd``, launched as :func:`launch_forward`."""
    B, T, H = h.shape
    L, NC = _chunking(T, chunks)
    grid = (B, triton.cdiv(H, block))
    S = h
    if NC > 1:
        S = torch.empty(2, NC, B, H, device=h.device, dtype=torch.float32)
        _chunk_bwd[grid + (NC - 1,)](*ptrs, RS, g, S, T, H, L, NC, MODE=mode, BLOCK=block, num_warps=warps)
    _scan_bwd[grid + (NC,)](*ptrs, RS, h, h0c, g, *outs, dh0, T, H, S, L, NC, MODE=mode, HAS_H0=has_h0,
                            BLOCK=block, CHUNKED=NC > 1, num_warps=warps)


class _Scan(torch.autograd.Function):
    """MODE 0: inputs (a, b); MODE 1/2: input p = [B, T, G*H] (G = 2, 3)."""

    @staticmethod
    def forward(ctx, mode, chunks, h0, *xs):
        if mode == 0:
            a, b = (x.contiguous() for x in xs)
            B, T, H = b.shape
            ptrs, RS, dt = [a, b, b], H, b.dtype
        else:
            (p,) = xs
            p = p.contiguous()
            G = mode + 1
            B, T, GH = p.shape
            H = GH // G
            ptrs, RS, dt = _views(p, G, H), GH, p.dtype
        has_h0 = h0 is not None
        h0c = h0.contiguous() if has_h0 else ptrs[0]
        h = torch.empty(B, T, H, device=ptrs[0].device, dtype=dt)
        if T > 0 and B > 0 and H > 0:
            launch_forward(ptrs, RS, h0c, h, mode, has_h0, chunks=chunks)
        ctx.mode, ctx.chunks, ctx.has_h0, ctx.H, ctx.RS = mode, chunks, has_h0, H, RS
        ctx.h0_dtype = h0.dtype if has_h0 else None
        if mode == 0:
            ctx.save_for_backward(a, h, h0 if has_h0 else None)  # b is not needed
        else:
            ctx.save_for_backward(p, h, h0 if has_h0 else None)
        return h

    @staticmethod
    def backward(ctx, g):
        x, h, h0 = ctx.saved_tensors
        mode, H, RS = ctx.mode, ctx.H, ctx.RS
        B, T, _ = h.shape
        g = g.contiguous()
        if mode == 0:
            ptrs = [x, x, x]  # only a (x0) is read in mode 0
            da, db = torch.empty_like(x), torch.empty_like(h)
            outs = [da, db, db]
        else:
            G = mode + 1
            ptrs = _views(x, G, H)
            dp = torch.empty_like(x)
            outs = _views(dp, G, H)
        dh0 = torch.zeros(B, H, device=h.device, dtype=torch.float32)
        h0c = h0.contiguous() if ctx.has_h0 else h
        if T > 0 and B > 0 and H > 0:
            launch_backward(ptrs, RS, h, h0c, g, outs, dh0, mode, ctx.has_h0, chunks=ctx.chunks)
        elif mode == 0:
            da.zero_(), db.zero_()
        else:
            dp.zero_()
        dh0 = dh0.to(ctx.h0_dtype) if ctx.has_h0 else None
        if mode == 0:
            return None, None, dh0, da, db
        return None, None, dh0, dp


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunks: int = CHUNKS
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)``: all states ``[B, T, H]`` of ``h_t = a_t * h_{t-1} + b_t`` (fp32 state), in
    ``b``'s dtype; ``chunks``: T split into up to that many chunks scanned in parallel (module docstring)."""
    if a.dtype != b.dtype:
        a = a.to(b.dtype)
    h = _Scan.apply(0, chunks, h0, a, b)
    return h, final_state(h, h0)


def mingru_scan(p: torch.Tensor, h0: torch.Tensor | None = None, chunks: int = CHUNKS
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of minGRU from the raw projection ``p = [h~ | k]`` ``[B, T, 2H]``: h
    ``[B, T, H]`` in ``p``'s dtype (gates computed in fp32 inside the kernel)."""
    h = _Scan.apply(1, chunks, h0, p)
    return h, final_state(h, h0)


def minlstm_scan(p: torch.Tensor, h0: torch.Tensor | None = None, chunks: int = CHUNKS
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of minLSTM from the raw projection ``p = [h~ | f | i]`` ``[B, T, 3H]``: h
    ``[B, T, H]`` in ``p``'s dtype (gates computed in fp32 inside the kernel)."""
    h = _Scan.apply(2, chunks, h0, p)
    return h, final_state(h, h0)
