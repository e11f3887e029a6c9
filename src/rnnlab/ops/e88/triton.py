"""Triton E88 scan, forward and backward, with each head's state on chip and checkpointed.

One program per (batch row, head) holds the state ``S [n, m]`` in fp32 registers (padded to
powers of two; padded rows and columns stay 0) and walks T sequentially, loading step t+1's
inputs while it computes step t:

    r = S^T k;   S = tanh(d S + k (v - r)^T);   y = S^T q

The forward keeps S only every ``C = options.checkpoint_every`` steps (``[B, H, ceil(T/C), n, m]`` fp32, not
all T states) and the final state. The backward walks the segments from the last: it recomputes
the segment's states from its checkpoint, writing each step's S_{t-1} to the program's own
scratch (``C`` states, fp32), then runs the reverse recurrence, reading S_{t-1} back and carrying
S_t down in registers (one state written and one read per step):

    dS  += q dy^T              dq = S_t dy
    dP   = dS * (1 - S_t^2)    dd = <dP, S_{t-1}>
    dv   = dP^T k              dk = dP (v - r) - S_{t-1} dv
    dS_{t-1} = d dP - k dv^T

starting from the gradient of the final state when it has one. The tanh is the exact exp form,
or the MUFU approximation for 16-bit inputs on a GPU (as E1's kernels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from rnnlab.ops.dtypes import compute_dtype
from rnnlab.ops.tanh import fast_tanh_applies, tanh

__all__ = ["e88_scan", "E88KernelOptions"]


@dataclass(frozen=True)
class E88KernelOptions:
    """How the kernels run (speed, not maths: every setting computes the same scan). The defaults
    are what the layer uses; benchmarks/bench_kernels.py times others (results/e88-kernel-h200).

    - ``checkpoint_every``: the forward keeps S every C steps, the backward recomputes a segment of
      C states into a per-program scratch (16: the reference study's interval).
    - ``fwd_warps`` / ``bwd_warps``: warps per program; None = one per 1024 state elements forward (a
      column of S per lane: its sums over n stay in registers) and one per 512 backward (its sums
      over m need fewer shuffles with the rows split over two warps), measured at n = m = 32.
    - ``fwd_maxnreg`` / ``bwd_maxnreg``: a cap on each thread's registers (None: the compiler's
      choice), so that more programs fit an SM at once (the forward's 132 registers at n = m = 32
      allow 12 programs per SM, 1584 on an H200: at B = 32, 50 heads leave a second wave of 16).
    - ``bwd_stages``: software pipelining of the backward's loads (Triton's ``tl.range``
      ``num_stages``: the next steps' inputs and scratch states copied ahead into shared memory,
      ``cp.async``); 1 = none, each step waits for its loads (the forward prefetches one step ahead
      in registers).
    """

    checkpoint_every: int = 16
    fwd_warps: int | None = None
    bwd_warps: int | None = None
    fwd_maxnreg: int | None = None
    bwd_maxnreg: int | None = None
    bwd_stages: int = 1

    def __post_init__(self):
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not 1 <= self.bwd_stages <= 4:
            raise ValueError(f"bwd_stages must be in [1, 4], got {self.bwd_stages}")
        for name in ("fwd_warps", "bwd_warps"):
            w = getattr(self, name)
            if w is not None and (w < 1 or w & (w - 1)):
                raise ValueError(f"{name} must be a power of two >= 1, got {w}")
        for name in ("fwd_maxnreg", "bwd_maxnreg"):
            r = getattr(self, name)
            if r is not None and not 32 <= r <= 255:
                raise ValueError(f"{name} must be in [32, 255], got {r}")

    def launch(self, n: int, m: int, backward: bool) -> dict:
        """The launch arguments of one pass for states ``[n, m]`` (padded to powers of two)."""
        BN, BM = triton.next_power_of_2(n), triton.next_power_of_2(m)
        warps = self.bwd_warps if backward else self.fwd_warps
        out = dict(BN=BN, BM=BM, num_warps=warps or max(1, min(8, BN * BM // (512 if backward else 1024))))
        if backward:
            out["STAGES"] = self.bwd_stages
        maxnreg = self.bwd_maxnreg if backward else self.fwd_maxnreg
        return out if maxnreg is None else dict(out, maxnreg=maxnreg)


@triton.jit
def _load_step(q_ptr, k_ptr, v_ptr, d_ptr, row, rn, rm, mn, mm, N: tl.constexpr, M: tl.constexpr, valid):
    """Step inputs at ``row`` (= (b*T + t)*H + h) as fp32; zeros where ``valid`` is false."""
    k = tl.load(k_ptr + row * N + rn, mask=mn & valid, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + row * M + rm, mask=mm & valid, other=0.0).to(tl.float32)
    q = tl.load(q_ptr + row * N + rn, mask=mn & valid, other=0.0).to(tl.float32)
    d = tl.load(d_ptr + row, mask=valid, other=0.0).to(tl.float32)
    return q, k, v, d


@triton.jit
def _program(T, H, N: tl.constexpr, M: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    """This program's ``b * H + h``, its row of (b, t=0, h) in ``[B*T*H]`` (step t adds t*H), the
    state's lanes and masks and the offsets of a ``[n, m]`` state."""
    bh = tl.program_id(0).to(tl.int64)
    row0 = (bh // H) * T * H + bh % H
    rn = tl.arange(0, BN)
    rm = tl.arange(0, BM)
    mn = rn < N
    mm = rm < M
    return bh, row0, rn, rm, mn, mm, rn[:, None] * M + rm[None, :], mn[:, None] & mm[None, :]


@triton.jit
def _e88_fwd(q_ptr, k_ptr, v_ptr, d_ptr, s0_ptr, y_ptr, ck_ptr, sT_ptr, T, H, N: tl.constexpr, M: tl.constexpr,
             HAS_S0: tl.constexpr, SAVE: tl.constexpr, C: tl.constexpr, BN: tl.constexpr,
             BM: tl.constexpr, FAST: tl.constexpr):
    bh, row0, rn, rm, mn, mm, s_off, s_mask = _program(T, H, N, M, BN, BM)
    if HAS_S0:
        S = tl.load(s0_ptr + bh * N * M + s_off, mask=s_mask, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BN, BM], dtype=tl.float32)
    n_ck = tl.cdiv(T, C)
    q, k, v, d = _load_step(q_ptr, k_ptr, v_ptr, d_ptr, row0, rn, rm, mn, mm, N, M, T > 0)
    for t in range(0, T):
        if SAVE:
            if t % C == 0:
                tl.store(ck_ptr + (bh * n_ck + t // C) * N * M + s_off, S, mask=s_mask)
        q_t, k_t, v_t, d_t = q, k, v, d
        q, k, v, d = _load_step(q_ptr, k_ptr, v_ptr, d_ptr, row0 + (t + 1) * H, rn, rm, mn, mm, N, M,
                                t + 1 < T)
        r = tl.sum(S * k_t[:, None], axis=0)
        S = tanh(d_t * S + k_t[:, None] * (v_t - r)[None, :], FAST)
        y = tl.sum(S * q_t[:, None], axis=0)
        tl.store(y_ptr + (row0 + t * H) * M + rm, y.to(y_ptr.dtype.element_ty), mask=mm)
    tl.store(sT_ptr + bh * N * M + s_off, S, mask=s_mask)


@triton.jit
def _e88_bwd(q_ptr, k_ptr, v_ptr, d_ptr, ck_ptr, dy_ptr, dsT_ptr, ws_ptr,
             dq_ptr, dk_ptr, dv_ptr, dd_ptr, ds0_ptr, T, H, N: tl.constexpr, M: tl.constexpr,
             HAS_DST: tl.constexpr, C: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
             FAST: tl.constexpr, STAGES: tl.constexpr):
    bh, row0, rn, rm, mn, mm, s_off, s_mask = _program(T, H, N, M, BN, BM)
    ws = ws_ptr + bh * C * N * M  # scratch slot j = the state before the segment's step j
    if HAS_DST:
        dS = tl.load(dsT_ptr + bh * N * M + s_off, mask=s_mask, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros([BN, BM], dtype=tl.float32)
    n_ck = tl.cdiv(T, C)
    for i in range(0, n_ck):
        t0 = (n_ck - 1 - i) * C
        S = tl.load(ck_ptr + (bh * n_ck + t0 // C) * N * M + s_off, mask=s_mask, other=0.0)
        tl.debug_barrier()  # every thread is done reading the previous segment's scratch
        # recompute the segment (steps past T see zeros and are never used)
        for j in tl.range(0, C, num_stages=STAGES):
            tl.store(ws + j * N * M + s_off, S, mask=s_mask)
            _, k, v, d = _load_step(q_ptr, k_ptr, v_ptr, d_ptr, row0 + (t0 + j) * H, rn, rm, mn, mm, N, M,
                                    t0 + j < T)
            r = tl.sum(S * k[:, None], axis=0)
            S = tanh(d * S + k[:, None] * (v - r)[None, :], FAST)
        tl.debug_barrier()  # the recomputed states are visible to every thread
        S_t = S  # the state after step t, carried down: step t's S_{t-1} is step t-1's S_t
        for j in tl.range(0, C, num_stages=STAGES):
            t = t0 + C - 1 - j
            valid = t < T
            row = row0 + t * H
            q, k, v, d = _load_step(q_ptr, k_ptr, v_ptr, d_ptr, row, rn, rm, mn, mm, N, M, valid)
            dy = tl.load(dy_ptr + row * M + rm, mask=mm & valid, other=0.0).to(tl.float32)
            S_p = tl.load(ws + (C - 1 - j) * N * M + s_off, mask=s_mask, other=0.0)
            dS += q[:, None] * dy[None, :]
            dP = dS * (1.0 - S_t * S_t)
            r = tl.sum(S_p * k[:, None], axis=0)
            dv = tl.sum(dP * k[:, None], axis=0)
            dq = tl.sum(S_t * dy[None, :], axis=1)
            dk = tl.sum(dP * (v - r)[None, :] - S_p * dv[None, :], axis=1)
            dd = tl.sum(dP * S_p)
            tl.store(dq_ptr + row * N + rn, dq.to(dq_ptr.dtype.element_ty), mask=mn & valid)
            tl.store(dk_ptr + row * N + rn, dk.to(dk_ptr.dtype.element_ty), mask=mn & valid)
            tl.store(dv_ptr + row * M + rm, dv.to(dv_ptr.dtype.element_ty), mask=mm & valid)
            tl.store(dd_ptr + row, dd, mask=valid)
            dS = tl.where(valid, d * dP - k[:, None] * dv[None, :], dS)
            S_t = S_p
    tl.store(ds0_ptr + bh * N * M + s_off, dS, mask=s_mask)


class _E88Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, decay, S0, option_values, save):
        options = E88KernelOptions(*option_values)
        q, k, v, decay = (t.contiguous() for t in (q, k, v, decay))
        B, T, H, N = q.shape
        M, C = v.shape[-1], options.checkpoint_every
        y = v.new_empty(B, T, H, M, dtype=q.dtype)
        S_T = q.new_empty(B, H, N, M, dtype=torch.float32)
        ckpt = q.new_empty(B, H, triton.cdiv(T, C), N, M, dtype=torch.float32) if save else S_T
        s0 = S_T if S0 is None else S0.contiguous()
        if B * H > 0:
            _e88_fwd[(B * H,)](q, k, v, decay, s0, y, ckpt, S_T, T, H, N, M, HAS_S0=S0 is not None,
                               SAVE=save, C=C, FAST=fast_tanh_applies(q), **options.launch(N, M, backward=False))
        if save:
            ctx.save_for_backward(q, k, v, decay, ckpt)
            ctx.options = options
            ctx.s0_dtype = None if S0 is None else S0.dtype
        return y, S_T

    @staticmethod
    def backward(ctx, dy, dS_T):
        q, k, v, decay, ckpt = ctx.saved_tensors
        B, T, H, N = q.shape
        M, C = v.shape[-1], ctx.options.checkpoint_every
        dy = torch.zeros_like(v, dtype=q.dtype) if dy is None else dy.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dd = torch.empty_like(decay, dtype=torch.float32)
        dS0 = q.new_empty(B, H, N, M, dtype=torch.float32)
        scratch = q.new_empty(B * H, C, N, M, dtype=torch.float32)
        dsT = dS0 if dS_T is None else dS_T.float().contiguous()
        if B * H > 0:
            _e88_bwd[(B * H,)](q, k, v, decay, ckpt, dy, dsT, scratch, dq, dk, dv, dd, dS0, T, H, N, M,
                               HAS_DST=dS_T is not None, C=C, FAST=fast_tanh_applies(q),
                               **ctx.options.launch(N, M, backward=True))
        dS0 = None if ctx.s0_dtype is None else dS0.to(ctx.s0_dtype)
        return dq, dk, dv, dd.to(decay.dtype), dS0, None, None


def e88_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor,
             S0: torch.Tensor | None = None, options: E88KernelOptions = E88KernelOptions()
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, S_T)``: outputs ``[B, T, H, m]`` in ``q``'s dtype and the final state in the compute
    dtype (fp32; fp64 for fp64 inputs, whose state the kernel keeps in fp32), as every op returns
    it. The checkpoints for the backward are kept only when autograd will need them."""
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, decay, S0))
    # the options as a tuple of plain values: what torch.compile takes as a constant argument
    y, S_T = _E88Scan.apply(q, k, v, decay, S0, dataclasses.astuple(options), save)
    return y, S_T.to(compute_dtype(q.dtype))
