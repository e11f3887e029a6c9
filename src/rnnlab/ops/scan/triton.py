"""Triton linear scan ``h_t = a_t * h_{t-1} + b_t`` (minGRU, minLSTM), forward and backward.

One program per (batch row, block of ``BLOCK`` channels); each walks T sequentially with fp32
state, loads and stores coalesced along H, 4 time steps per loop iteration, the next 4 steps'
loads issued before this iteration's updates (two groups of HBM round trips in flight: the
scans are latency-bound, docs/kernels.md; 8 steps a group measured slower). On Hopper the
forward instead takes its inputs through tensor descriptors (``_scan_fwd_tma``: tiles of 16
steps copied into shared memory, ``TMA_STAGES - 2`` in flight; 0.89x / 0.92x the pointer
kernel's time for minGRU / minLSTM on an H200, results/tma-scans-h200; the pointer kernel
remains for inputs the tensor memory accelerator cannot take, and computes the same states bit
for bit). The backward's TMA twin was slower (1.06x / 1.42x) and is not kept. The backward is
the reverse scan

    dh_t  = g_t + a_{t+1} * dh_{t+1}      (g = dL/dh from above)
    db_t  = dh_t,   da_t = dh_t * h_{t-1},   dh0 = a_0 * dh_0

reading the saved outputs ``h`` (input dtype) and ``a``. No fp32 [B, T, H] intermediates.

Besides the contract op ``linear_scan(a, b, h0)``, two fused ops take a layer's raw input
projection ``p`` and compute the gates inside the kernel (and recompute them in the backward),
so the layer keeps only ``p`` and ``h`` (both in the input dtype) per layer:

* ``mingru_scan(p, h0=None)``, ``p = [h~ | k]`` ``[B, T, 2H]``:
  ``a = sigmoid(-k)``, ``b = sigmoid(k) * g(h~)``;
* ``minlstm_scan(p, h0=None)``, ``p = [h~ | f | i]`` ``[B, T, 3H]``:
  ``d = softplus(-f) - softplus(-i)``, ``a = sigmoid(-d)``, ``b = sigmoid(d) * g(h~)``
  (computed as a ratio of exponentials, without logarithms: ``_minlstm_terms``);

with ``g(x) = x + 0.5`` (x >= 0) else ``sigmoid(x)``; the same maths as ``naive.mingru_gates``
/ ``naive.minlstm_gates``. Each entry point returns ``(h, h_T)``, the final state being
``h[:, -1]`` in fp32.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from rnnlab.ops.registry import check_time_offsets, final_state, traced

__all__ = ["linear_scan", "mingru_scan", "minlstm_scan"]

# One warp of 2 channels a thread: the fastest launch in total of the prefetching fused kernels at
# the 400M widths, through the forward; the backwards tie (results/scan-prefetch-h200: 3.7% / 5.3%
# faster than 256 channels, 4 warps). The plain linear_scan, which no model trains with, shares it
# (not timed at it).
BLOCK = 64
NUM_WARPS = 1
# The scans' tiles of 16 steps in flight through the tensor memory accelerator (Hopper on):
# Triton keeps TMA_STAGES - 1 buffers a tensor, so TMA_STAGES - 2 tiles are in flight while one is
# scanned (docs/kernels.md, "the scans' inputs by TMA"); 3 and 4 timed within 1% of each other on
# an H200, 2 and 6 slower (results/tma-scans-h200).
TMA_STAGES = 4


@triton.jit
def _gact(x):
    return tl.where(x >= 0, x + 0.5, tl.sigmoid(x))


@triton.jit
def _gact_grad(x):
    s = tl.sigmoid(x)
    return tl.where(x >= 0, 1.0, s * (1.0 - s))


@triton.jit
def _ld(x0_ptr, x1_ptr, x2_ptr, q, m, MODE: tl.constexpr):
    """One step's inputs as stored (converted to fp32 where used, so that a load issued ahead
    of the steps before it is not waited for early)."""
    x0 = tl.load(x0_ptr + q, mask=m, other=0.0)
    x1 = tl.load(x1_ptr + q, mask=m, other=0.0)
    if MODE == 2:
        x2 = tl.load(x2_ptr + q, mask=m, other=0.0)
    else:
        x2 = x0
    return x0, x1, x2


@triton.jit
def _minlstm_terms(x1, x2):
    """``(u_f, u_i, w_f, w_i, r)``: with ``m = max(-f, -i, 0)``, ``w = exp(-x - m)`` and
    ``u = exp(-m) + w`` (``u`` is ``1 + exp(-x)`` scaled by ``exp(-m)``), ``r = 1 / (u_f + u_i)``.
    Then ``a = sigmoid(-d) = u_i r`` and ``sigmoid(d) = u_f r`` for ``d = softplus(-f) -
    softplus(-i)`` = ``log(u_f / u_i)``: three exponentials of non-positive arguments and one
    reciprocal (``u_f + u_i >= 1``), no logarithm (docs/kernels.md: fewer instructions in the
    gates). Finite inputs: a pre-activation of -inf gives NaN (``inf - inf``)."""
    m = tl.maximum(tl.maximum(-x1, -x2), 0.0)
    e0 = tl.exp(-m)
    w1 = tl.exp(-x1 - m)
    w2 = tl.exp(-x2 - m)
    u1 = e0 + w1
    u2 = e0 + w2
    return u1, u2, w1, w2, 1.0 / (u1 + u2)


@triton.jit
def _coef(x0, x1, x2, MODE: tl.constexpr):
    if MODE == 0:
        a = x0
        b = x1
    elif MODE == 1:
        s = tl.sigmoid(x1)
        a = 1.0 - s  # sigmoid(-k), one exponential and division fewer; its error absolute (<= 1e-7)
        b = s * _gact(x0)
    else:
        u1, u2, w1, w2, r = _minlstm_terms(x1, x2)
        a = u2 * r
        b = (u1 * r) * _gact(x0)
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
        a = 1.0 - s
        d0 = dh * s * _gact_grad(x0)
        d1 = dh * s * a * (_gact(x0) - hp)
        d2 = d1
    else:
        # dL/dd = dh * s * a * (g - hp) with s = sigmoid(d) = u_f r, a = u_i r; dd/df =
        # -sigmoid(-f) = -w_f / u_f and dd/di = sigmoid(-i) = w_i / u_i, so the u's cancel
        u1, u2, w1, w2, r = _minlstm_terms(x1, x2)
        a = u2 * r
        d0 = dh * (u1 * r) * _gact_grad(x0)
        dd = dh * (r * r) * (_gact(x0) - hp)
        d1 = -dd * (u2 * w1)
        d2 = dd * (u1 * w2)
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
def _h_start(h0_ptr, pid_b, H, offs, mask, HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    """The state before step 0 of a forward program's channels: h0's, or zeros (fp32)."""
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * H + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK], dtype=tl.float32)
    return h


@triton.jit
def _step(h, x0, x1, x2, h_at, mask, MODE: tl.constexpr):
    """One step of ``h = a * h + b`` from the step's inputs (``_coef``), the new state stored at
    ``h_at`` where ``mask``: the forward kernels' one step, whichever way their inputs came."""
    a, b = _coef(x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), MODE)
    h = a * h + b
    tl.store(h_at, h.to(h_at.dtype.element_ty), mask=mask)
    return h


@triton.jit
def _fwd4(h, xs, h_ptr, o, H, mask, t0, T, MODE: tl.constexpr):
    """Steps t0 .. t0 + 3 of ``h = a * h + b`` from ``_ld4``'s inputs, each state stored."""
    for k in tl.static_range(4):
        h = _step(h, xs[k][0], xs[k][1], xs[k][2], h_ptr + o + k * H, mask & (t0 + k < T) if k else mask, MODE)
    return h


@triton.jit
def _scan_fwd(x0_ptr, x1_ptr, x2_ptr, RS, h0_ptr, h_ptr, T, H,
              MODE: tl.constexpr, HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs = pid_h * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    xb = pid_b.to(tl.int64) * T * RS + offs
    hb = pid_b.to(tl.int64) * T * H + offs
    h = _h_start(h0_ptr, pid_b, H, offs, mask, HAS_H0, BLOCK)
    xs = _ld4(x0_ptr, x1_ptr, x2_ptr, xb, RS, mask, 0, T, MODE)
    for t0 in tl.range(0, T, 4):
        # the next 4 steps' loads go out before this group's updates (two groups in flight)
        nxt = _ld4(x0_ptr, x1_ptr, x2_ptr, xb + (t0 + 4) * RS, RS, mask & (t0 + 4 < T), t0 + 4, T, MODE)
        h = _fwd4(h, xs, h_ptr, hb + t0 * H, H, mask, t0, T, MODE)
        xs = nxt


@triton.jit
def _evens_odds(x):
    """``x: [BLOCK, n]`` -> its even and odd columns, ``[BLOCK, n // 2]`` each."""
    return tl.split(x.reshape(x.shape[0], x.shape[1] // 2, 2))


@triton.jit
def _rows16(x):
    """The 16 rows of ``x: [16, BLOCK]``, each ``[BLOCK]``, in order (splits, so that each thread
    ends with its channels' 16 steps in registers: no shuffles)."""
    e, o = _evens_odds(tl.permute(x, (1, 0)))
    ee, eo = _evens_odds(e)
    oe, oo = _evens_odds(o)
    eee, eeo = _evens_odds(ee)
    eoe, eoo = _evens_odds(eo)
    oee, oeo = _evens_odds(oe)
    ooe, ooo = _evens_odds(oo)
    r0, r8 = tl.split(eee)
    r4, r12 = tl.split(eeo)
    r2, r10 = tl.split(eoe)
    r6, r14 = tl.split(eoo)
    r1, r9 = tl.split(oee)
    r5, r13 = tl.split(oeo)
    r3, r11 = tl.split(ooe)
    r7, r15 = tl.split(ooo)
    return r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, r14, r15


@triton.jit
def _scan_fwd_tma(x0_desc, x1_desc, x2_desc, h0_ptr, h_ptr, T, H,
                  MODE: tl.constexpr, HAS_H0: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """``_scan_fwd`` with its inputs brought by the tensor memory accelerator: tiles of
    16 steps x ``BLOCK`` channels copied into shared memory, ``STAGES - 2`` in flight
    (Triton pipelines the descriptor loads), so that many more bytes are in flight than the
    registers of the pointer kernel hold; rows past T and channels past H arrive as zeros."""
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    col = pid_h * BLOCK
    offs = col + tl.arange(0, BLOCK)
    mask = offs < H
    hb = pid_b.to(tl.int64) * T * H + offs
    h = _h_start(h0_ptr, pid_b, H, offs, mask, HAS_H0, BLOCK)
    for t0 in tl.range(0, T, 16, num_stages=STAGES):
        x0 = _rows16(x0_desc.load([pid_b, t0, col]).reshape(16, BLOCK))
        x1 = _rows16(x1_desc.load([pid_b, t0, col]).reshape(16, BLOCK))
        if MODE == 2:
            x2 = _rows16(x2_desc.load([pid_b, t0, col]).reshape(16, BLOCK))
        else:
            x2 = x0
        for k in tl.static_range(16):  # the gates a row at a time: no layout change through shared memory
            h = _step(h, x0[k], x1[k], x2[k], h_ptr + hb + (t0 + k) * H, mask & (t0 + k < T), MODE)


@triton.jit
def _ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t, H, mask,
            MODE: tl.constexpr, HAS_H0: tl.constexpr):
    m = mask & (t >= 0)
    x0, x1, x2 = _ld(x0_ptr, x1_ptr, x2_ptr, xb + t * RS, m, MODE)
    g = tl.load(g_ptr + hb + t * H, mask=m, other=0.0)
    hp = tl.load(h_ptr + hb + (t - 1) * H, mask=m & (t > 0), other=0.0)
    if HAS_H0:
        hp = hp.to(tl.float32) + tl.load(h0_ptr + h0o, mask=m & (t == 0), other=0.0).to(tl.float32)
    return x0, x1, x2, g, hp


@triton.jit
def _ld4_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t, H, mask,
             MODE: tl.constexpr, HAS_H0: tl.constexpr):
    """What the backward of steps t, t - 1, t - 2, t - 3 reads, all loads issued together."""
    return (_ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t, H, mask, MODE, HAS_H0),
            _ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t - 1, H, mask, MODE, HAS_H0),
            _ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t - 2, H, mask, MODE, HAS_H0),
            _ld_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t - 3, H, mask, MODE, HAS_H0))


@triton.jit
def _st_bwd(d0_ptr, d1_ptr, d2_ptr, RS, q, m, d0, d1, d2, MODE: tl.constexpr):
    tl.store(d0_ptr + q, d0.to(d0_ptr.dtype.element_ty), mask=m)
    tl.store(d1_ptr + q, d1.to(d1_ptr.dtype.element_ty), mask=m)
    if MODE == 2:
        tl.store(d2_ptr + q, d2.to(d2_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd4(carry, xs, d0_ptr, d1_ptr, d2_ptr, RS, xb, t, mask, MODE: tl.constexpr):
    """The reverse scan over steps t, t - 1, t - 2, t - 3 (t >= 0) from ``_ld4_bwd``'s inputs;
    ``carry`` = a_{t+1} * dh_{t+1}, returned for step t - 4. Steps before 0 leave it as it is."""
    for k in tl.static_range(4):
        u, v, w, g, hp = xs[k]
        a, d0, d1, d2 = _coef_bwd(u.to(tl.float32), v.to(tl.float32), w.to(tl.float32),
                                  g.to(tl.float32) + carry, hp.to(tl.float32), MODE)
        if k == 0:
            _st_bwd(d0_ptr, d1_ptr, d2_ptr, RS, xb + t * RS, mask, d0, d1, d2, MODE)
            carry = a * (g + carry)
        else:
            _st_bwd(d0_ptr, d1_ptr, d2_ptr, RS, xb + (t - k) * RS, mask & (t >= k), d0, d1, d2, MODE)
            carry = tl.where(t >= k, a * (g + carry), carry)
    return carry


@triton.jit
def _scan_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, d0_ptr, d1_ptr, d2_ptr, dh0_ptr,
              T, H, MODE: tl.constexpr, HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs = pid_h * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    xb = pid_b.to(tl.int64) * T * RS + offs
    hb = pid_b.to(tl.int64) * T * H + offs
    h0o = pid_b * H + offs
    carry = tl.zeros([BLOCK], dtype=tl.float32)  # a_{t+1} * dh_{t+1}
    xs = _ld4_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, T - 1, H, mask, MODE, HAS_H0)
    for i0 in tl.range(0, T, 4):
        t = T - 1 - i0
        # the next 4 steps' loads (masked before step 0) go out before this group's updates
        nxt = _ld4_bwd(x0_ptr, x1_ptr, x2_ptr, RS, h_ptr, h0_ptr, g_ptr, xb, hb, h0o, t - 4, H, mask, MODE, HAS_H0)
        carry = _bwd4(carry, xs, d0_ptr, d1_ptr, d2_ptr, RS, xb, t, mask, MODE)
        xs = nxt
    tl.store(dh0_ptr + h0o, carry, mask=mask)


def _views(x: torch.Tensor, groups: int, H: int):
    return [x[..., k * H:(k + 1) * H] for k in range(groups)] + [x] * (3 - groups)


@functools.cache
def _has_tma(device: torch.device) -> bool:
    """Whether ``device`` has the tensor memory accelerator: an NVIDIA GPU from Hopper on (CPU tensors
    reach the kernels only in Triton's interpreter, which emulates it)."""
    if device.type != "cuda":
        return True
    return torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 9


def _tma_descriptors(ptrs, RS: int, shape, block: int, used: int = 3):
    """Tensor descriptors of ``ptrs``, each ``shape = [B, T, H]`` with row stride ``RS``, in tiles of
    ``[1, 16, block]`` (the first ``used`` built, the others the first again: a kernel does not
    read them), or None where the tensor memory accelerator cannot take them: no TMA, a row or a
    base not 16-byte aligned, dtypes that differ, more than 128 channels a tile (at 256 the
    forward spills registers)."""
    x = ptrs[0]
    if not _has_tma(x.device) or block > 128 or any(p.dtype != x.dtype for p in ptrs):
        return None
    B, T, H = shape
    es = x.element_size()
    if block * es < 16 or (RS * es) % 16 or any(p.data_ptr() % 16 for p in ptrs):
        return None
    descs = [TensorDescriptor(p, [B, T, H], [T * RS, RS, 1], [1, 16, block]) for p in ptrs[:used]]
    return descs + descs[:1] * (len(ptrs) - used)


def launch_forward(ptrs, RS: int, h0c, h: torch.Tensor, mode: int, has_h0: bool,
                   block: int = BLOCK, warps: int = NUM_WARPS) -> None:
    """``_scan_fwd_tma`` over ``h: [B, T, H]`` where the inputs allow it, else ``_scan_fwd`` (one
    program per batch row and ``block`` channels either way); ``block`` and ``warps`` other than
    the defaults only for ``bench_kernels.py``'s sweep."""
    B, T, H = h.shape
    grid = (B, triton.cdiv(H, block))
    descs = _tma_descriptors(ptrs, RS, h.shape, block, used=3 if mode == 2 else 2)
    if descs is not None:
        _scan_fwd_tma[grid](*descs, h0c, h, T, H, MODE=mode, HAS_H0=has_h0, BLOCK=block, STAGES=TMA_STAGES,
                            num_warps=warps)
    else:
        _scan_fwd[grid](*ptrs, RS, h0c, h, T, H, MODE=mode, HAS_H0=has_h0, BLOCK=block, num_warps=warps)


def launch_backward(ptrs, RS: int, h: torch.Tensor, h0c, g: torch.Tensor, outs, dh0: torch.Tensor, mode: int,
                    has_h0: bool, block: int = BLOCK, warps: int = NUM_WARPS) -> None:
    """``_scan_bwd``, launched as :func:`launch_forward`."""
    B, T, H = h.shape
    _scan_bwd[(B, triton.cdiv(H, block))](*ptrs, RS, h, h0c, g, *outs, dh0, T, H, MODE=mode, HAS_H0=has_h0,
                                          BLOCK=block, num_warps=warps)


# ------------------------------------------------------------------------ torch.library ops
# The scans are a pair of custom ops with an autograd formula, like E1's and E16's: under
# torch.compile a minGRU / minLSTM model stays in one graph (each op one opaque extern call, no
# graph break), so Inductor fuses what lies between the layers across them (results/mingru-one-graph-h200).
# mode 0: linear_scan's (a, b); mode 1 / 2: minGRU's / minLSTM's projection p = [B, T, G*H] (G = 2, 3).
# A copy of this file that a benchmark imports beside the package's (bench_kernels.py's
# scan_module_from) registers its ops in a namespace of its own.
_NS = "rnnlab" if __name__ == "rnnlab.ops.scan.triton" else __name__.replace(".", "_")


@torch.library.custom_op(f"{_NS}::linear_scan_fwd", mutates_args=(),
                         schema="(int mode, Tensor x, Tensor? b, Tensor? h0) -> Tensor")
def _scan_fwd_op(mode, x, b, h0):
    """All states ``h: [B, T, H]`` in the input dtype: of ``(a, b) = (x, b)`` (mode 0) or of the
    projection ``p = x`` (modes 1, 2; ``b`` None)."""
    # the last input is b ([B, T, H]) or p ([B, T, G*H]): a step's row width either way
    last = x if b is None else b
    check_time_offsets(("linear_scan", "mingru_scan", "minlstm_scan")[mode], last.shape[1], last.shape[2])
    x = x.contiguous()
    if mode == 0:
        b = b.contiguous()
        B, T, H = b.shape
        ptrs, RS = [x, b, b], H
    else:
        B, T, GH = x.shape
        H = GH // (mode + 1)
        ptrs, RS = _views(x, mode + 1, H), GH
    h = torch.empty(B, T, H, device=x.device, dtype=last.dtype)
    if T > 0 and B > 0 and H > 0:
        launch_forward(ptrs, RS, ptrs[0] if h0 is None else h0.contiguous(), h, mode, h0 is not None)
    return h


@_scan_fwd_op.register_fake
def _(mode, x, b, h0):
    B, T, W = x.shape
    return x.new_empty(B, T, W // (mode + 1), dtype=(x if b is None else b).dtype)


@torch.library.custom_op(f"{_NS}::linear_scan_bwd", mutates_args=(),
                         schema="(int mode, Tensor g, Tensor x, Tensor h, Tensor? h0) -> (Tensor, Tensor, Tensor)")
def _scan_bwd_op(mode, g, x, h, h0):
    """``(dx, db, dh0)``: mode 0 ``(da, db)`` of ``a = x``; modes 1, 2 ``dp`` of the projection
    ``p = x`` and an empty ``db``; ``dh0 [B, H]`` fp32 (zeros without ``h0``)."""
    h, g, x = h.contiguous(), g.contiguous(), x.contiguous()
    B, T, H = h.shape
    if mode == 0:
        ptrs, RS = [x, x, x], H  # only a (x0) is read in mode 0
        dx, db = torch.empty_like(x), torch.empty_like(h)  # (x and h are contiguous here)
        outs = [dx, db, db]
    else:
        ptrs, RS = _views(x, mode + 1, H), x.shape[2]
        dx, db = torch.empty_like(x), h.new_empty(0)
        outs = _views(dx, mode + 1, H)
    dh0 = torch.zeros(B, H, device=h.device, dtype=torch.float32)
    if T > 0 and B > 0 and H > 0:
        launch_backward(ptrs, RS, h, h if h0 is None else h0.contiguous(), g, outs, dh0, mode, h0 is not None)
    else:
        dx.zero_(), db.zero_()
    return dx, db, dh0


@_scan_bwd_op.register_fake
def _(mode, g, x, h, h0):
    B, _, H = h.shape
    # contiguous, as the real op's (it makes x contiguous first), whatever the strides of x
    db = torch.empty_like(h, memory_format=torch.contiguous_format) if mode == 0 else h.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), db, h.new_empty(B, H, dtype=torch.float32)


def _scan_setup(ctx, inputs, output):
    mode, x, _, h0 = inputs
    ctx.mode = mode
    ctx.save_for_backward(x, output, h0)  # mode 0: a (b is not needed)


def _scan_grads(ctx, g):
    x, h, h0 = ctx.saved_tensors
    dx, db, dh0 = _scan_bwd_op(ctx.mode, g, x, h, h0)
    return None, dx, db if ctx.mode == 0 else None, None if h0 is None else dh0.to(h0.dtype)


_scan_fwd_op.register_autograd(_scan_grads, setup_context=_scan_setup)


@traced
def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)``: all states ``[B, T, H]`` of ``h_t = a_t * h_{t-1} + b_t`` (fp32 state), in
    ``b``'s dtype. ``a`` is read in its own dtype, as the reference reads it (an fp32 decay beside
    bf16 ``b`` is not rounded to bf16: 0.9999 would become 1); a pair of dtypes that differ runs
    the pointer kernel (tensor descriptors take one dtype)."""
    h = _scan_fwd_op(0, a, b, h0)
    return h, final_state(h, h0)


@traced
def mingru_scan(p: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of minGRU from the raw projection ``p = [h~ | k]`` ``[B, T, 2H]``: h
    ``[B, T, H]`` in ``p``'s dtype (gates computed in fp32 inside the kernel)."""
    h = _scan_fwd_op(1, p, None, h0)
    return h, final_state(h, h0)


@traced
def minlstm_scan(p: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of minLSTM from the raw projection ``p = [h~ | f | i]`` ``[B, T, 3H]``: h
    ``[B, T, H]`` in ``p``'s dtype (gates computed in fp32 inside the kernel)."""
    h = _scan_fwd_op(2, p, None, h0)
    return h, final_state(h, h0)
