"""Per-layer recurrence timings (forward, backward) of each implementation at the seed shapes, and
the Schedule-Free AdamW step over a 400M model's parameters (schedulefree's vs rnnlab's fused).

    python benchmarks/bench_kernels.py [--json results/kernels_h100.json] [--quick]

``--sections heads-floor`` measures what bounds the E1 heads kernels' time step (the limiting
resource, not an estimate): the forward's loop rebuilt here with each part switchable
(``_heads_chain``): the dependent chain alone (MMA, tanh), then with the step's input load, its
store, and the backward's second MMA (dW) beside the chain; then whether the backward scan and
a layer's weight-gradient GEMMs overlap on two streams. ``--sections dense-floor`` does the same
for dense E1's persistent kernel: the package's beside copies of ``persistent.cu`` with parts of
the step left out (``DENSE_FLOOR_CUTS``: the wait for the state's producers, its staging, the MMAs,
their reads of W or of the state, the sum of the warps' partial sums; or half or twice the MMAs),
with and without thread-block clusters, at the launch shapes of ``--dense-floor-shapes``; the copy
with only the waits left is the step's handshake between SMs and its fixed work (barriers, the
partial sums' reduction, the epilogue): the floor of this design's dependent chain.
``--sections dense-wgmma`` times a step of the next design, wgmma with K split over a
thread-block cluster, without its handshake between clusters (``dense_wgmma_probe.cu``: the state's
staging, the MMAs, the partial sums' reduction over distributed shared memory, the epilogue, alone
and together), beside the package's kernel and its handshake-and-fixed-work copies, one run.
``--sections scan-launch`` sweeps the fused minGRU / minLSTM scans' launch (channels per
program, warps; :data:`SCAN_LAUNCHES`); with it, ``--scan-against FILE`` also times the fused
scans of another copy of ``rnnlab.ops.scan.triton`` (an earlier commit's: ``git show
REV:src/rnnlab/ops/scan/triton.py > FILE``) at that copy's own launch (its ``BLOCK``,
``NUM_WARPS``), row beside row in the same run, so that a kernel change is measured as a ratio
of one run. ``--sections scan-overlap`` times their backward scans, and dense E1's wgmma one,
beside their layer's weight-gradient GEMMs on two streams, as heads-floor does for E1 heads;
``--sections heads-overlap`` E1 heads d31's forward and backward scans beside the GEMMs of their
layer that do not wait on them (the gate half of in_proj, out_proj's weight gradient).
``--persistent-against FILE [FILE ...]`` (with ``--sections dense`` or ``persistent``, the persistent kernel's rows
alone) times dense E1's persistent kernels built from other copies of ``persistent.cu`` beside
the package's, each launch shape, after checking their outputs agree; ``--persistent-candidates
NAME`` does the same for a candidate change written as exact edits of the package's source
(``PERSISTENT_CANDIDATES``), and ``--wgmma-candidates NAME`` for the wgmma kernel's
(``WGMMA_CANDIDATES``): the kernels alone, forward and backward, beside the package's.
``--wgmma-timeline`` splits the wgmma kernel's step into its parts (a copy of it with clock reads
at each: the wait for the producers' flags, the slice's copy, the MMAs, the reduction, the
epilogue; ``WGMMA_TIMELINE``), µs a step, forward and backward.

B=32, T=512, bf16 inputs, random data (never zeros). Each entry: median of ``--reps`` timed
repetitions (CUDA events) after warm-up; forward alone is timed with autograd recording (as in
training), "bwd" = median(fwd+bwd) - median(fwd). The E1 heads rows are the kernels alone
(``heads_kernels``: their launch through autograd from Python takes longer than they do).
Also prints the two floors: HBM bytes over the measured copy bandwidth, and (E1) the recurrent
FLOPs over the measured bf16 GEMM rate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from rnnlab.ops.elman.persistent import SHAPES
from rnnlab.ops.tanh import tanh

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import write_json  # noqa: E402


def timeit(fn, reps: int, warmup: int = 2, back_to_back: int = 1) -> float:
    """Median ms of ``fn`` over ``reps`` timings. With ``back_to_back = n`` each timing queues
    ``fn`` n times between its events and counts a n-th: while the GPU runs one call the host
    queues the next, so the host's launch time between calls (tens of µs, ~0.1 ms for a single
    kernel launched from Python) is left out, as in a training step that keeps the GPU busy."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(back_to_back):
            fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / back_to_back)
    return statistics.median(ts)


def fwd_bwd(make, reps):
    """make() -> (fn, inputs list, grad_out); fn returns an op's ``(h, h_T)``. Returns (fwd_ms,
    bwd_ms, total_ms)."""
    fn, ins, g = make()

    def f():
        return fn(*ins)

    def fb():
        y, _ = fn(*ins)
        torch.autograd.backward(y, g)
        for x in ins:
            if x is not None and x.grad is not None:
                x.grad = None

    tf = timeit(f, reps)
    tt = timeit(fb, reps)
    return tf, tt - tf, tt


@triton.jit
def _heads_chain(wx_ptr, w_ptr, h_ptr, dw_ptr, B, T, H, HD, BT: tl.constexpr, HDP: tl.constexpr,
                 LOAD: tl.constexpr, STORE: tl.constexpr, DW: tl.constexpr, IEEE: tl.constexpr,
                 FAST: tl.constexpr, STAGES: tl.constexpr):
    """The E1 heads forward's loop (rnnlab/ops/elman/heads.py, same grid and tiles) with its parts
    switchable: ``h_t = tanh(x_t + h_{t-1} @ W^T)``, where x_t is loaded each step (``LOAD``) or is
    step 0's input throughout; h_t stored each step (``STORE``) or only the last; ``DW`` adds
    the backward's off-chain MMA, ``sum_t h_t^T h_{t-1}``, stored per batch tile. Without LOAD
    and STORE what is left is the dependent chain: its time is the step's floor on this GPU."""
    head = tl.program_id(0)
    pid_b = tl.program_id(1)
    rb = pid_b * BT + tl.arange(0, BT)
    rk = tl.arange(0, HDP)
    mk = rk < HD
    m2 = (rb < B)[:, None] & mk[None, :]
    wt = tl.load(w_ptr + head * HD * HD + rk[None, :] * HD + rk[:, None], mask=mk[:, None] & mk[None, :], other=0.0)
    offs = rb[:, None].to(tl.int64) * T * H + head * HD + rk[None, :]
    x = tl.load(wx_ptr + offs, mask=m2, other=0.0).to(tl.float32)
    h = tl.zeros([BT, HDP], dtype=tl.float32)
    dw = tl.zeros([HDP, HDP], dtype=tl.float32)
    for t in tl.range(0, T, num_stages=STAGES):
        if LOAD:
            x = tl.load(wx_ptr + offs + t * H, mask=m2, other=0.0).to(tl.float32)
        if IEEE:
            hn = tanh(x + tl.dot(h, wt, input_precision="ieee"), FAST)
        else:
            hn = tanh(x + tl.dot(h.to(wt.dtype), wt), FAST)
        if DW:
            if IEEE:
                dw += tl.dot(tl.trans(hn), h, input_precision="ieee")
            else:
                dw += tl.dot(tl.trans(hn.to(wt.dtype)), h.to(wt.dtype))
        h = hn
        if STORE:
            tl.store(h_ptr + offs + t * H, h.to(h_ptr.dtype.element_ty), mask=m2)
    if not STORE:
        tl.store(h_ptr + offs + (T - 1) * H, h.to(h_ptr.dtype.element_ty), mask=m2)
    if DW:
        tl.store(dw_ptr + (pid_b * (H // HD) + head) * HD * HD + rk[:, None] * HD + rk[None, :], dw,
                 mask=mk[:, None] & mk[None, :])


def heads_chain(wx, w, load=True, store=True, dw=False, bt=16, warps=8, stages=3, out=None):
    """Run :func:`_heads_chain` on ``wx: [B, T, H]``, ``w: [nh, hd, hd]``; returns ``(h, dW)``
    (h: every step's state with ``store``, else only the last step's slot written; dW per batch
    tile ``[tiles, nh, hd, hd]`` or None; h written into ``out`` when given). Launch as the package's
    heads kernels (BT 16, 8 warps, 3 stages)."""
    B, T, H = wx.shape
    nh, hd = w.shape[0], w.shape[1]
    h = torch.empty_like(wx) if out is None else out  # no memset in the timed call
    tiles = triton.cdiv(B, bt)
    dws = torch.zeros(tiles, nh, hd, hd, device=wx.device, dtype=torch.float32) if dw else h
    _heads_chain[(nh, tiles)](wx, w, h, dws, B, T, H, hd, BT=bt, HDP=max(16, triton.next_power_of_2(hd)),
                              LOAD=load, STORE=store, DW=dw, IEEE=wx.dtype == torch.float32,
                              FAST=wx.dtype != torch.float32 and wx.is_cuda, STAGES=stages, num_warps=warps)
    return h, (dws if dw else None)


BACK_TO_BACK = 20  # calls per timing (timeit) of heads, heads-floor, overlaps: a ~0.3-ms kernel, not its launch


HEADS_VARIANTS = (  # (row, kernel options, tanh, dW): E1 heads' kernel sets, the package's first
    ("E1 heads (package: gluon)", {}, "tanh.approx", True),
    ("E1 heads gluon, ring 2", {"heads_gluon_ring": 2}, "tanh.approx", True),
    ("E1 heads gluon, ring 3", {"heads_gluon_ring": 3}, "tanh.approx", True),
    ("E1 heads gluon, dW in its loop", {"heads_dw_rows": 0}, "tanh.approx", True),  # at 64 the package's
    ("E1 heads gluon, no dW", {}, "tanh.approx", False),  # the backward scan alone
    ("E1 heads triton", {"heads_gluon": False}, "tanh.approx", True),
    ("E1 heads triton", {"fast_tanh": False}, "exp-tanh", True),  # the exact tanh: Gluon's kernels lack it
)


def worst_relative_difference(got, want) -> float:
    """The largest ``|a - b| / |b|`` (Frobenius norms) of the tensors of ``got`` against those of
    ``want``, pairwise; nan where any is not finite (``max`` would pass over a nan after the first
    pair, and a row whose gradients are nan would read "bit for bit")."""
    diffs = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, want)]
    return math.nan if not all(math.isfinite(d) for d in diffs) else max(diffs)


def heads_kernels(add, B, T, reps, dt, el, bw, fl):
    """E1 heads' scan kernels alone at the 14 × 128 and 28 × 64 layers: forward (h) and backward
    (dpre, dW, dh0) of each of :data:`HEADS_VARIANTS`, called directly (not through autograd,
    whose launch from Python is longer than these ~0.3-ms kernels) in five interleaved rounds of
    :data:`BACK_TO_BACK` launches, so the rows compare GPU time in one run. The backward's dW
    comes from the scan's loop or, at 128 channels by default, a kernel after it
    (``heads_dw_rows``), or is left out (the scan's own cost). Each row's note says how its
    outputs compare with the package's (bit for bit, or their largest relative difference)."""
    from rnnlab.ops.elman import heads
    from rnnlab.ops.elman.options import ElmanKernelOptions

    for nh, hd in ((14, 128), (28, 64)):
        H = nh * hd
        floor = max(3 * B * T * H * el / bw, 3 * 2 * B * T * hd * hd * nh / fl) * 1e3
        wx = (torch.randn(B, T, H, device="cuda") * 0.5).to(dt)
        w = (torch.randn(nh, hd, hd, device="cuda") * (0.9 / hd**0.5)).to(dt)
        g = torch.randn(B, T, H, device="cuda").to(dt)
        h = heads.forward(wx, w, None, ElmanKernelOptions())
        want = (h, *heads.backward(g, w, h, None, True, ElmanKernelOptions())[:2])
        rows, notes = [], {}
        for i, (name, options, tanh_kind, need_dw) in enumerate(HEADS_VARIANTS):
            opts = ElmanKernelOptions(**options)
            got = (heads.forward(wx, w, None, opts), *heads.backward(g, w, h, None, need_dw, opts)[:2])
            worst = worst_relative_difference(got[:3 if need_dw else 2], want)
            notes[i] = f"{tanh_kind}, " + ("bit for bit" if worst == 0 else f"outputs within {worst:.1e}")
            rows.append((i, lambda o=opts: heads.forward(wx, w, None, o),
                         lambda o=opts, d=need_dw: heads.backward(g, w, h, None, d, o)))
        times = timed_in_rounds(rows, reps, rounds=5, back_to_back=BACK_TO_BACK)
        for i, (name, *_) in enumerate(HEADS_VARIANTS):
            f, b = times[i]
            add(name, f"B{B} T{T} {nh}x{hd}", (f, b, f + b), floor, notes[i])


def heads_floor(add, B, T, reps, dt):
    """E1 heads' forward and backward against the forward's loop with parts removed
    (``_heads_chain``), one run, each call timed back to back with the next (the kernels' own
    time, as in training): the chain alone is the step's floor; each row's note gives µs per
    time step."""
    from rnnlab.ops.elman import heads
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    for nh, hd in ((14, 128), (28, 64)):
        wx = torch.randn(B, T, nh * hd, device="cuda", dtype=dt)
        w = (torch.randn(nh, hd, hd, device="cuda") * (0.9 / hd**0.5)).to(dt)
        hs, g = et.elman_scan(wx, w, None)[0], torch.randn_like(wx)
        triton_only = ElmanKernelOptions(heads_gluon=False)  # the chain below is Triton's loop
        variants = [("E1 heads forward (rnnlab)", lambda: et.elman_scan(wx, w, None)),
                    ("E1 heads backward (rnnlab)", lambda: heads.backward(g, w, hs, None, True, ElmanKernelOptions())),
                    ("E1 heads forward (Triton)", lambda: et.elman_scan(wx, w, None, triton_only)),
                    ("E1 heads backward (Triton)", lambda: heads.backward(g, w, hs, None, True, triton_only))]
        for load, store, dw in ((True, True, False), (False, False, False), (True, False, False),
                                (False, True, False), (False, False, True), (True, True, True)):
            parts = ["chain"] + [n for n, on in (("load", load), ("store", store), ("dW MMA", dw)) if on]
            variants.append((" + ".join(parts), lambda load=load, store=store, dw=dw: heads_chain(wx, w, load, store, dw)))
        for warps in (4, 16):  # the chain's length per warp against the layout exchange between warps
            for load in (False, True):
                variants.append((("chain + load + store" if load else "chain") + f", {warps} warps",
                                 lambda load=load, warps=warps: heads_chain(wx, w, load, load, warps=warps)))
        with torch.no_grad():
            for name, fn in variants:
                t = timeit(fn, reps, back_to_back=BACK_TO_BACK)
                add(f"heads floor: {name}", f"B{B} T{T} {nh}x{hd}", (t, 0.0, t), 0.0, f"{t / T * 1e3:.3f} us/step")
    with torch.no_grad():
        scan_beside_weight_gradients(add, B, T, reps, dt)


def time_beside(add, shape, scan, gemms, reps, what=("backward scan", "the layer's weight-gradient GEMMs")):
    """Whether a scan (``scan()``) and GEMMs that do not wait on it (``gemms()``) overlap when
    issued on two streams, the scan first: each alone, then both at once. The time both save
    against the sum is what running those GEMMs on a second stream could save per layer in
    training (an upper bound: nothing else runs beside them). ``what`` names the two rows."""
    side = torch.cuda.Stream()

    def both():
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        scan()
        with torch.cuda.stream(side):
            gemms()
        main.wait_stream(side)

    ts, tg, tb = (timeit(fn, reps, back_to_back=BACK_TO_BACK) for fn in (scan, gemms, both))
    add(f"overlap: {what[0]}", shape, (ts, 0.0, ts), 0.0, "alone")
    add(f"overlap: {what[1]}", shape, (tg, 0.0, tg), 0.0, f"alone (the {what[0]}'s pair)")
    add("overlap: both, two streams", shape, (tb, 0.0, tb), 0.0,
        f"{what[0]} and the GEMMs: saves {ts + tg - tb:.3f} ms of {ts + tg:.3f} per layer ({(ts + tg) / tb:.2f}x)")


def gemms_sized(carveout: int | None):
    """The GEMMs launched inside on cuBLASLt sized for all SMs but ``carveout``
    (``rnnlab.ops.streams.sm_carveout``); None: PyTorch's default GEMMs."""
    from rnnlab.ops.streams import sm_carveout

    return contextlib.nullcontext() if carveout is None else sm_carveout(carveout)


def carveout_mark(carveout: int | None) -> str:
    """The shape column's mark of rows timed with :func:`gemms_sized` (``carveout``)."""
    return "" if carveout is None else f" Lt-{carveout}SM"


def weight_gradients_beside(add, name, shape, scan, pairs, reps, carveout=None):
    """:func:`time_beside` for a backward scan and a layer's weight-gradient GEMMs ``dW = dY^T X``,
    one for each ``(dY, X)`` of ``pairs``: what putting weight gradients on a second stream could
    save; with ``carveout``, the GEMMs on cuBLASLt sized for all SMs but that many
    (``rnnlab.ops.streams.sm_carveout``)."""

    def gemms():
        with gemms_sized(carveout):
            for dy, inputs in pairs:
                torch.mm(dy.t(), inputs)

    time_beside(add, shape + carveout_mark(carveout), scan, gemms, reps,
                (f"{name} backward scan", "the layer's weight-gradient GEMMs"))


def e1_weight_gradient_operands(n, D, H, dt) -> list:
    """Random ``(dY, X)`` of an E1 layer's weight gradients ``dW = dY^T X`` over ``n`` rows, model
    width D, state width H: in_proj ``[2H, D]``, W_x ``[H, H]``, out_proj ``[D, H]``."""
    x, xr, y = (torch.randn(n, k, device="cuda", dtype=dt) for k in (D, H, H))
    d_in, d_pre, d_out = (torch.randn(n, k, device="cuda", dtype=dt) for k in (2 * H, H, D))
    return [(d_in, x), (d_pre, xr), (d_out, y)]


def scan_beside_weight_gradients(add, B, T, reps, dt):
    """:func:`weight_gradients_beside` for the latency-bound heads backward scan (14 x 128: 28
    programs on the GPU's SMs; its dW in the loop, as when the overlap was first measured, not
    summed after it on every SM) and an E1 heads layer's weight-gradient GEMMs (in_proj, W_x,
    out_proj at dim 1792, B*T rows)."""
    from rnnlab.ops.elman import heads
    from rnnlab.ops.elman.options import ElmanKernelOptions

    nh, hd, D = 14, 128, 1792
    H, n = nh * hd, B * T
    w = (torch.randn(nh, hd, hd, device="cuda") * (0.9 / hd**0.5)).to(dt)
    h = torch.randn(B, T, H, device="cuda", dtype=dt).tanh()
    g = torch.randn(B, T, H, device="cuda", dtype=dt)
    opts = ElmanKernelOptions(heads_dw_rows=0)
    pairs = e1_weight_gradient_operands(n, D, H, dt)
    weight_gradients_beside(add, "heads", f"B{B} T{T} {nh}x{hd} D{D}",
                            lambda: heads.backward(g, w, h, None, True, opts), pairs, reps)


def fused_scans_beside_weight_gradients(add, B, T, reps, dt):
    """:func:`weight_gradients_beside` for the fused minGRU / minLSTM backward scans at the 400M
    widths (``FUSED_SCANS``; the package's launch) and their layer's one weight-gradient GEMM
    (in_proj, ``[G*H, D]`` with D = H, B*T rows)."""
    from rnnlab.ops.scan import triton as stri

    n = B * T
    for name, mode, H in FUSED_SCANS:
        G = mode + 1
        x0 = torch.randn(B, T, G * H, device="cuda", dtype=dt)
        g = torch.randn(B, T, H, device="cuda", dtype=dt)
        (_, _, _, backward), = scan_launch_sweep(x0, mode, g, [(stri.BLOCK, stri.NUM_WARPS)])
        pairs = [(torch.randn(n, G * H, device="cuda", dtype=dt), torch.randn(n, H, device="cuda", dtype=dt))]
        weight_gradients_beside(add, name, f"B{B} T{T} H{H}", backward, pairs, reps)


def heads_scans_beside_gate_branch(add, B, T, reps, dt, carveouts=(0, 28, 32)):
    """:func:`time_beside` for E1 heads d31's scans (14 x 128, the package's kernels and options: 28
    programs) and the GEMMs of the layer that do not wait on them: in the forward the gate's half
    of in_proj (``z = x W_z^T``), in the backward out_proj's weight gradient (``dy`` and ``y`` are
    known before the backward scan) and the gate half's ``dW_z = dz^T x`` and ``dx = dz W_z``
    (``dz = dy h silu'(z)`` needs no scan either). What running them on a second stream could save
    per layer: the bound of splitting in_proj (docs/kernels.md, E1 heads). The backward scan twice:
    with W_h's gradient (the package's: at 128 channels a split-K sum after the scan) and without
    it, so that the two "both" rows show what that sum costs once the GEMMs run beside it. A pair of rows with
    PyTorch's default GEMMs, then one for each carveout of ``carveouts``
    (``rnnlab.ops.streams.sm_carveout``): the GEMMs on cuBLASLt sized for all SMs but that many."""
    from rnnlab.ops.elman import heads
    from rnnlab.ops.elman.options import ElmanKernelOptions

    nh, hd, D = 14, 128, 1792
    H, n = nh * hd, B * T
    opts = ElmanKernelOptions()
    w = (torch.randn(nh, hd, hd, device="cuda") * (0.9 / hd**0.5)).to(dt)
    wx, g = (torch.randn(B, T, H, device="cuda", dtype=dt) for _ in range(2))
    h = heads.forward(wx, w, None, opts)
    x, y, dz = (torch.randn(n, k, device="cuda", dtype=dt) for k in (D, H, H))
    dout = torch.randn(n, D, device="cuda", dtype=dt)
    w_z = torch.randn(H, D, device="cuda", dtype=dt) / D**0.5
    for carve in (None, *carveouts):
        shape = f"B{B} T{T} {nh}x{hd} D{D}" + carveout_mark(carve)

        def forward_gemm(carve=carve):
            with gemms_sized(carve):
                torch.mm(x, w_z.t())

        def backward_gemms(carve=carve):
            with gemms_sized(carve):
                torch.mm(dout.t(), y)
                torch.mm(dz.t(), x)
                torch.mm(dz, w_z)

        time_beside(add, shape, lambda: heads.forward(wx, w, None, opts), forward_gemm, reps,
                    ("E1 heads forward scan", "in_proj's gate half (z = x W_z^T)"))
        time_beside(add, shape, lambda: heads.backward(g, w, h, None, True, opts), backward_gemms, reps,
                    ("E1 heads backward scan", "out_proj's dW, the gate half's dW and dx"))
        time_beside(add, shape, lambda: heads.backward(g, w, h, None, False, opts), backward_gemms, reps,
                    ("E1 heads backward scan without dW_h", "out_proj's dW, the gate half's dW and dx"))


def dense_scan_beside_weight_gradients(add, B, T, reps, dt):
    """:func:`weight_gradients_beside` for dense E1's wgmma backward scan at E1 d26's width (112 of
    the GPU's SMs, one CTA each: the rest idle) and the weight-gradient GEMMs of an E1 d26 layer
    (in_proj ``[2H, D]``, W_x and W_h ``[H, H]``, out_proj ``[D, H]``, D = H = 1760, B*T rows): what
    the idle SMs could take of them (docs/kernels.md, dense E1); then out_proj's and W_h's alone,
    sized for every SM and for the SMs the scan leaves. The scan is issued first, as a side
    stream's GEMM holding every SM would make its cooperative launch wait. Skipped where the wgmma
    kernel does not run."""
    from rnnlab.ops.elman import wgmma

    H = D = 1760
    n = B * T
    h = torch.randn(B, T, H, device="cuda", dtype=dt).tanh()
    if not wgmma.supported(h):
        print("bench_kernels.py: scan-overlap: the wgmma kernel does not run here; its row is skipped", file=sys.stderr)
        return
    w = (torch.randn(H, H, device="cuda") * (0.9 / H**0.5)).to(dt)
    g = torch.randn(B, T, H, device="cuda", dtype=dt)
    pairs = e1_weight_gradient_operands(n, D, H, dt)
    pairs.append((pairs[1][0], h.view(n, H)))  # W_h's: dpre^T h (dpre as W_x's)
    shape = f"B{B} T{T} H{H} D{D}"
    weight_gradients_beside(add, "dense wgmma", shape, lambda: wgmma.backward(g, h, w), pairs, reps)
    # what the 20 SMs the scan leaves can take in its time: out_proj's and W_h's (~0.13 ms each on
    # every SM), sized for every SM and then for those SMs
    ctas = 4 * -(-H // 64)  # the scan's CTAs: a cluster of 4 for each 64 output columns (112 at H = 1760)
    for carveout in (None, ctas):
        weight_gradients_beside(add, "dense wgmma", shape + " out_proj+W_h", lambda: wgmma.backward(g, h, w),
                                pairs[2:], reps, carveout)


# dense-floor: the parts of dense E1's persistent step that a copy of persistent.cu leaves out, each
# as exact edits of the package's source (an edit that no longer matches exactly once fails before
# any build: tests/test_bench.py holds them to the current source). Results are wrong; only time counts.
DENSE_FLOOR_CUTS = {
    # the wait for the producers of the previous state (the flags' release/acquire across SMs):
    # the cluster path's warp 0, then the per-warp path's warps
    "wait": (("if (s > 0) wait_producers(myflags, sp0, sp1, s, lane);", ""),
             ("if (s > 0 && b0 == first_b0) wait_producers(myflags, kt0 / NT, (kt1 - 1) / NT, s, lane);", "")),
    # staging the previous state into shared memory: the cluster path's multicast copies (its
    # mbarrier then expects no bytes), the per-warp path's cp.async loop
    "stage": (("mbar_arrive_expect_tx(bar, static_cast<unsigned>(nb * H * sizeof(T)))", "mbar_arrive_expect_tx(bar, 0u)"),
              ("for (int r = lane; r < nb; r += 32)", "for (int r = lane; r < 0; r += 32)"),
              ("for (int r = r0, j = j0; r < nb;) {", "for (int r = r0, j = j0; r < 0;) {")),
    # the recurrent product's MMAs (the partial sums stay zero)
    "mma": (("for (int kt = kt0; kt < kt1; ++kt) {", "for (int kt = kt0; kt < kt0; ++kt) {"),
            ("if (kt0 + i < kt1) tile(kt0 + i, wf[i]);", "if (kt0 + i < kt0) tile(kt0 + i, wf[i]);")),
    # the MMAs' reads of W from shared memory where the kernel reads them every step (launches
    # without W's fragments in registers: 16 warps): its fragments of the warp's first K tile,
    # loaded once a step, stand for every K tile (the state's fragments are still read; not with "mma")
    "wread": (("#pragma unroll 2\n          for (int kt = kt0; kt < kt1; ++kt) {\n"
               "            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf[NT];\n"
               "#pragma unroll\n"
               "            for (int j = 0; j < NT; ++j) wmma::load_matrix_sync(bf[j], ws + j * 16 * ld + kt * 16, ld);\n",
               "          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf[NT];\n"
               "#pragma unroll\n"
               "          for (int j = 0; j < NT; ++j) wmma::load_matrix_sync(bf[j], ws + j * 16 * ld + kt0 * 16, ld);\n"
               "#pragma unroll 2\n          for (int kt = kt0; kt < kt1; ++kt) {\n"),),
    # the sum of the warps' partial sums: warp 0's alone goes to the epilogue
    "reduce": (("#pragma unroll\n        for (int w = 0; w < WARPS; ++w) a += part[(w * RB + r) * NC + n];",
                "a += part[r * NC + n];"),),
    # the MMAs' reads of the state from shared memory: the warp's first K tile's fragment stands for
    # every K tile (the same address each time; the MMAs still run)
    "sread": (("wmma::load_matrix_sync(af, hs + i * 16 * ld + kt * 16, ld);",
               "wmma::load_matrix_sync(af, hs + i * 16 * ld + kt0 * 16, ld);"),),
    # W in registers (8 warps) only: every other K tile's MMAs (half the chain and the HMMAs; the
    # skipped tiles' W fragments then need no registers), or each K tile's MMAs twice (double)
    "mma-half": (("if (kt0 + i < kt1) tile(kt0 + i, wf[i]);", "if (i % 2 == 0 && kt0 + i < kt1) tile(kt0 + i, wf[i]);"),),
    "mma-twice": (("if (kt0 + i < kt1) tile(kt0 + i, wf[i]);",
                   "if (kt0 + i < kt1) {\n              tile(kt0 + i, wf[i]);\n              tile(kt0 + i, wf[i]);\n            }"),),
}
# the copies timed, by the parts each leaves out
DENSE_FLOOR_VARIANTS = (("wait",), ("stage",), ("mma",), ("stage", "mma"), ("wait", "mma"), ("wait", "stage"),
                        ("wait", "stage", "mma"), ("wread",), ("reduce",), ("wait", "stage", "wread"), ("sread",),
                        ("mma-half",), ("mma-twice",))


def edited_source(source: str, edits, what: str, file: str = "persistent.cu") -> str:
    """``source`` (the text of ``file``, a kernel's source) with each ``(old, new)`` of ``edits``
    made; ValueError, naming ``what``, if an ``old`` does not match exactly once."""
    for old, new in edits:
        if source.count(old) != 1:
            raise ValueError(f"{what} matches {file} {source.count(old)} times, not once: {old!r} "
                             "(update it to the kernel)")
        source = source.replace(old, new)
    return source


def dense_floor_source(cuts: tuple[str, ...], source: str) -> str:
    """``source`` (persistent.cu's text) without the step's parts named in ``cuts``
    (:data:`DENSE_FLOOR_CUTS`)."""
    for cut in cuts:
        source = edited_source(source, DENSE_FLOOR_CUTS[cut], f"dense-floor's cut {cut!r}")
    return source


# Candidate changes to dense E1's persistent kernel, as exact edits of the package's source (held to
# it by tests/test_bench.py), timed with ``--persistent-candidates NAME`` beside the package's kernel
# at every launch shape, their outputs checked against it (``persistent_pairs``): a change measured
# before it is made in the package, whatever becomes of the session that wrote it.
# None is open now: each one measured is in docs/kernels.md (dense E1), its edits in the commit
# that timed it (w-registers, landed; empty-barriers and slice-barriers, not kept: 8d115f9, cb9a4a5).
PERSISTENT_CANDIDATES: dict[str, tuple[tuple[str, str], ...]] = {}


def persistent_candidate(name: str) -> Path:
    """The package's persistent.cu with the edits of :data:`PERSISTENT_CANDIDATES` ``[name]``, written
    to a temporary file (named after the candidate) for ``--persistent-against``'s timing."""
    from rnnlab.ops.elman import persistent

    return _candidate_file(persistent.SOURCE, PERSISTENT_CANDIDATES[name], "persistent", name)


def _candidate_file(source: Path, edits, kernel: str, name: str) -> Path:
    """``source`` with ``edits`` made, in a temporary file ``<kernel>_<name>.cu``."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"{kernel}-candidate-")) / f"{kernel}_{name.replace('-', '_')}.cu"
    path.write_text(edited_source(source.read_text(), edits, f"{kernel} candidate {name!r}", source.name))
    return path


# Candidate changes to dense E1's wgmma kernel (wgmma.cu), as for the persistent kernel above, timed
# with ``--wgmma-candidates NAME`` (the dense or persistent section) beside the package's kernel,
# their outputs checked against it (``wgmma_rows``), each row timed in three interleaved rounds
# (``timed_in_rounds``, as the persistent kernel's copies are).
# Tried and dropped (docs/kernels.md, dense E1, has each prediction and measurement): v4-reduce
# (st.async of four floats) and bulk-reduce (one bulk copy a warp), slower than the package's
# two-float st.async (their edits in commit 7b462cc); producer-chunks (each producer cluster's chunk
# of the slice copied and multiplied as its flags arrive), 0.83 ms slower (commit 88732ff);
# relaxed-poll, early-barrier, two-chains, packed-stores, slower or equal, and slot-a-step (the
# exchange buffer before its ring), equal (commit d9dde90). Kept:
#   control: the package's code under another name, timed as a copy: what a copy's own build and
#   its place among the rows do to its time (within 0.3% of the package's in run 5)
WGMMA_CANDIDATES: dict[str, tuple[tuple[str, str], ...]] = {
    "control": (  # the package's code under another name: what a copy's build and its place in the run do
        ("// Dense E1 scan on Hopper's warpgroup MMA", "// (control copy) Dense E1 scan on Hopper's warpgroup MMA"),
    ),
}


# --wgmma-timeline: the package's wgmma.cu with a clock read at each part of a step, thread 0 of
# every CTA, kept in shared memory (16 KB; stores to global memory would hold back the flag's
# release) and copied out after the loop, with each CTA's clock64 and global timer at its start and
# end (the SM clock's rate). Stamps a step: 0 its start, 1 its producers' flags seen, 2 the slice
# landed, 3 the MMAs done, 4 the partial sums received, 5 the exchange buffer's stores done (the
# barrier before the release), 6 the flag released, 7 the outputs stored and the next operands'
# copies issued.
WGMMA_TIMELINE_STEPS = 512
WGMMA_TIMELINE_PHASES = ("wait for the producers' flags", "the slice's bulk copy", "the MMAs",
                         "the reduction (send, receive)", "the epilogue, to the barrier before the release",
                         "the release (its fence)", "outputs and next operands, after the release")
WGMMA_TIMELINE = (
    ("constexpr int MAX_KS = 28;     // H <= 64 * 28 = 1792",
     f"""constexpr int MAX_KS = 28;     // H <= 64 * 28 = 1792
constexpr int STAMP_STEPS = {WGMMA_TIMELINE_STEPS}, STAMPS = 8;
__device__ unsigned stamp_buf[4 * MAX_KS][STAMP_STEPS][STAMPS];
__device__ unsigned long long stamp_clock[4 * MAX_KS][4];  // clock64, global timer: start, end
__device__ __forceinline__ unsigned long long global_ns() {{
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}}"""),
    ("  __shared__ __align__(8) unsigned long long bars[3];     // the receive buffers' (0, 1), the staging's (2)",
     """  __shared__ __align__(8) unsigned long long bars[3];     // the receive buffers' (0, 1), the staging's (2)
  __shared__ unsigned stamps[STAMP_STEPS][STAMPS];
  if (threadIdx.x == 0) stamp_clock[blockIdx.x][0] = clock64(), stamp_clock[blockIdx.x][2] = global_ns();"""),
    ("    const int buf = s & 1, t = BWD ? Tn - 1 - s : s;",
     "    const int buf = s & 1, t = BWD ? Tn - 1 - s : s;\n    unsigned stp[8] = {static_cast<unsigned>(clock())};"),
    ("      if (s > 0) wait_producers(flags, rank * KS, KS, static_cast<unsigned>(s), lane);",
     "      if (s > 0) wait_producers(flags, rank * KS, KS, static_cast<unsigned>(s), lane);\n"
     "      stp[1] = static_cast<unsigned>(clock());"),
    ("    mbar_wait(bar0 + 16, s & 1);", "    mbar_wait(bar0 + 16, s & 1);\n    stp[2] = static_cast<unsigned>(clock());"),
    ('    asm volatile("wgmma.wait_group.sync.aligned 0;\\n" ::: "memory");',
     '    asm volatile("wgmma.wait_group.sync.aligned 0;\\n" ::: "memory");\n    stp[3] = static_cast<unsigned>(clock());'),
    ("    mbar_wait(bar0 + 8 * buf, (s >> 1) & 1);",
     "    mbar_wait(bar0 + 8 * buf, (s >> 1) & 1);\n    stp[4] = static_cast<unsigned>(clock());"),
    ("    if (threadIdx.x == 0) st_release(flags + blockIdx.x, static_cast<unsigned>(s + 1));",
     "    stp[5] = static_cast<unsigned>(clock());\n"
     "    if (threadIdx.x == 0) st_release(flags + blockIdx.x, static_cast<unsigned>(s + 1));\n"
     "    stp[6] = static_cast<unsigned>(clock());"),
    ("    if (s + 1 < Tn) prefetch(s + 1);",
     """    if (s + 1 < Tn) prefetch(s + 1);
    stp[7] = static_cast<unsigned>(clock());
    if (threadIdx.x == 0 && s < STAMP_STEPS)
      for (int i = 0; i < STAMPS; ++i) stamps[s][i] = stp[i];"""),
    ("  cluster_sync();  // no CTA leaves while a peer may still store into its shared memory",
     """  __syncthreads();
  for (int i = threadIdx.x; i < min(Tn, STAMP_STEPS) * STAMPS; i += THREADS)
    stamp_buf[blockIdx.x][i / STAMPS][i % STAMPS] = stamps[i / STAMPS][i % STAMPS];
  if (threadIdx.x == 0) stamp_clock[blockIdx.x][1] = clock64(), stamp_clock[blockIdx.x][3] = global_ns();
  cluster_sync();  // no CTA leaves while a peer may still store into its shared memory"""),
    ("}  // namespace\n\nPYBIND11_MODULE",
     """// the last launch's stamps [CTAs, steps, 8] and clocks [CTAs, 4], on the CPU
std::vector<torch::Tensor> stamps() {
  auto st = torch::empty({4 * MAX_KS, STAMP_STEPS, STAMPS}, torch::kInt32);
  auto cl = torch::empty({4 * MAX_KS, 4}, torch::kInt64);
  C10_CUDA_CHECK(cudaDeviceSynchronize());
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(st.data_ptr(), stamp_buf, st.nbytes()));
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(cl.data_ptr(), stamp_clock, cl.nbytes()));
  return {st, cl};
}

}  // namespace

PYBIND11_MODULE"""),
    ('  mod.def("fits", &fits,', '  mod.def("stamps", &stamps, "the last launch\'s stamps and clocks");\n  mod.def("fits", &fits,'),
)


def timeline_phases(stamps: torch.Tensor, clocks: torch.Tensor, ctas: int, steps: int, skip: int = 4) -> dict:
    """µs a step of each of :data:`WGMMA_TIMELINE_PHASES` (mean and median over the first ``ctas``
    CTAs and the steps but the first and last ``skip``), and the step's own period ("step"), from
    the timeline copy's ``stamps [CTAs, steps, 8]`` (32-bit SM clocks, in order) and ``clocks [CTAs, 4]``
    (clock64 and global-timer ns at each CTA's start and end: each SM's clock rate)."""
    steps = min(steps, stamps.shape[1])
    if steps <= 2 * skip + 1:
        raise ValueError(f"timeline: {steps} steps leave none between the {skip} skipped at each end")
    st = stamps[:ctas, :steps].to(torch.int64) & 0xFFFFFFFF
    cl = clocks[:ctas].to(torch.float64)
    per_us = ((cl[:, 1] - cl[:, 0]) / (cl[:, 3] - cl[:, 2]) * 1e3)[:, None]  # clocks a µs, each CTA
    middle = slice(skip, steps - skip)
    parts = ((st[:, middle, 1:] - st[:, middle, :-1]) & 0xFFFFFFFF).to(torch.float64) / per_us[..., None]
    period = ((st[:, skip + 1:steps - skip, 0] - st[:, skip:steps - skip - 1, 0]) & 0xFFFFFFFF).to(torch.float64) / per_us
    out = {name: (parts[..., i].mean().item(), parts[..., i].median().item())
           for i, name in enumerate(WGMMA_TIMELINE_PHASES)}
    out["step"] = (period.mean().item(), period.median().item())
    return out


def wgmma_timeline_source() -> Path:
    """The package's wgmma.cu with the clock reads of :data:`WGMMA_TIMELINE`, in a temporary file."""
    from rnnlab.ops.elman import wgmma

    return _candidate_file(wgmma.SOURCE, WGMMA_TIMELINE, "wgmma", "timeline")


def wgmma_timeline(wx, w, g, source: Path) -> dict:
    """Dense E1's wgmma kernel's step by its parts (:func:`timeline_phases`), forward and backward:
    ``{direction: {phase: (mean, median) µs}}``, from ``source`` (:func:`wgmma_timeline_source`),
    its states checked against the package's first."""
    from rnnlab.ops.elman import wgmma

    ext = wgmma._ext(source)
    h = wgmma.forward(wx, w, None)
    torch.testing.assert_close(wgmma.forward(wx, w, None, source), h, rtol=0, atol=0)
    ctas = 4 * next(k for k in wgmma.KS_CHOICES if 64 * k >= wx.shape[2])
    out = {}
    for direction, run in (("forward", lambda: wgmma.forward(wx, w, None, source)),
                           ("backward", lambda: wgmma.backward(g, h, w, source))):
        run()
        out[direction] = timeline_phases(*ext.stamps(), ctas, wx.shape[1])
    return out


def agreement(label: str, same: bool) -> str:
    """How a candidate kernel's row says its outputs compare with the package's kernel (label "")."""
    if not label:
        return "the package's"
    return f"{label}, outputs bit for bit" if same else f"{label}, outputs within bf16"


def timed_in_rounds(rows, reps, rounds=3, back_to_back=1) -> dict:
    """``{key: (forward ms, backward ms)}`` for ``rows`` of ``(key, forward, backward)``: each timed
    once a round for ``rounds`` rounds, the median of each, so the rows' order favours none (run 4 of
    results/dense-wgmma-h200 found order alone moving a copy of a kernel by 0.2-0.3 ms)."""
    fwd, bwd = ({key: [] for key, *_ in rows} for _ in range(2))
    for _ in range(rounds):
        for key, forward, backward in rows:
            fwd[key].append(timeit(forward, reps, back_to_back=back_to_back))
            bwd[key].append(timeit(backward, reps, back_to_back=back_to_back))
    return {key: (statistics.median(fwd[key]), statistics.median(bwd[key])) for key in fwd}


def build_in_parallel(build, sources) -> None:
    """``build(source)`` for each of ``sources`` at once (each extension ~1.5 minutes of nvcc on
    one core), so a run with several copies waits for the slowest build, not their sum."""
    from concurrent.futures import ThreadPoolExecutor

    sources = list(sources)
    with ThreadPoolExecutor(max(1, len(sources))) as pool:
        list(pool.map(build, sources))


def wgmma_candidate(name: str) -> Path:
    """The package's wgmma.cu with the edits of :data:`WGMMA_CANDIDATES` ``[name]``, in a temporary file."""
    from rnnlab.ops.elman import wgmma

    return _candidate_file(wgmma.SOURCE, WGMMA_CANDIDATES[name], "wgmma", name)


def wgmma_rows(wx, w, g, sources: dict[str, Path]):
    """Dense E1's wgmma kernel alone (no autograd, no dW GEMM), the package's and those built from
    each of ``sources`` (label -> file): yields ``(label, forward, backward, same)``, the package's
    first (label ""), each copy's after checking its states and ``dpre`` against the package's
    (``same``: bit for bit, else within bf16 rounding)."""
    from rnnlab.ops.elman import wgmma

    h = wgmma.forward(wx, w, None)
    dpre = wgmma.backward(g, h, w)
    yield "", lambda: wgmma.forward(wx, w, None), lambda: wgmma.backward(g, h, w), True
    for label, source in sources.items():
        h2, dpre2 = wgmma.forward(wx, w, None, source), wgmma.backward(g, h, w, source)
        same = torch.equal(h, h2) and torch.equal(dpre, dpre2)
        for what, got, want in (("states", h2, h), ("dpre", dpre2, dpre)):
            torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2, msg=lambda m, what=what: (
                f"{label}: its {what} differ from the package's beyond bf16 rounding: {m}"))
        yield label, lambda s=source: wgmma.forward(wx, w, None, s), lambda s=source: wgmma.backward(g, h, w, s), same


def dense_floor(add, B, T, reps, dt, shapes=(0,), variants=DENSE_FLOOR_VARIANTS, without_clusters=True):
    """Dense E1's persistent kernels (H 1760, at each launch shape of ``shapes``, indices of
    ``persistent.SHAPES``: the first is the package's at B 32; each with its thread-block clusters
    and, ``without_clusters``, with ``max_cluster = 1``) against copies with parts of the step left
    out (``variants``, default :data:`DENSE_FLOOR_VARIANTS`), forward and backward, one run: what
    each part costs a step, and what the step costs with only the handshake between SMs left (its
    waits, the barriers, the partial sums' reduction and the epilogue), the floor of this design's
    dependent chain. The copies are built in parallel first (~1 minute each)."""
    import tempfile

    from rnnlab.ops.elman import persistent

    H = 1760
    wx = torch.randn(B, T, H, device="cuda", dtype=dt)
    w = (torch.randn(H, H, device="cuda") * (0.9 / H**0.5)).to(dt)
    g = torch.randn_like(wx)
    plans = [persistent.make_plan(wx, (persistent.SHAPES[i],)) for i in shapes]
    if None in plans:
        print(f"bench_kernels.py: --dense-floor-shapes {' '.join(map(str, shapes))}: a shape that does not "
              f"fit B {B}, H {H} on this GPU", file=sys.stderr)
        raise SystemExit(2)
    text = persistent.SOURCE.read_text()
    folder = Path(tempfile.mkdtemp(prefix="dense-floor-"))
    sources = {(): persistent.SOURCE}
    for cuts in variants:
        sources[cuts] = folder / f"persistent_no_{'_'.join(cuts)}.cu"
        sources[cuts].write_text(dense_floor_source(cuts, text))
    build_in_parallel(lambda src: persistent._ext(False, src), sources.values())
    h = persistent.forward(wx, w, None, plans[0])
    shape = f"B{B} T{T} H{H}"
    for plan, max_cluster in ((plan, m) for plan in plans for m in (plan.max_cluster, 1)[:1 + without_clusters]):
        for cuts, src in sources.items():
            p = dataclasses.replace(plan, source=src, max_cluster=max_cluster)
            tf = timeit(lambda: persistent.forward(wx, w, None, p), reps)
            cl = persistent.last_cluster_size(p.lowrank, src)
            tb = timeit(lambda: persistent.backward(g, h, w, p), reps)
            name = "without " + " + ".join(cuts) if cuts else "the package"
            add(f"dense floor: {name}", shape, (tf, tb, tf + tb), 0.0,
                f"{p.warps} warps, tile {p.cols} x {p.rows}, clusters of {cl}; "
                f"{tf / T * 1e3:.2f} / {tb / T * 1e3:.2f} us a step fwd / bwd")


# dense-wgmma: a step of the "2-D split" wgmma design for dense E1 without its handshake between
# clusters (dense_wgmma_probe.cu; docs/kernels.md), by its parts (the probe's Part bits: 1 the MMAs,
# 2 the cluster's reduction, 4 the epilogue, 8 the reduction by st.async and mbarriers instead of a
# cluster barrier, 16 the state's staging each step, 32 that staging by one bulk copy of a slice
# already in wgmma's layout, 64 st.async of four floats instead of two, 128 the reduction by one bulk
# copy a warp instead of st.async), each timed for a layer's 2T steps beside the package's kernel in
# the same run
WGMMA_PROBE = Path(__file__).with_name("dense_wgmma_probe.cu")
WGMMA_PROBE_PARTS = (("the MMAs alone", 1), ("the staging alone", 16), ("staging + MMAs", 17),
                     ("MMAs + reduction, cluster barrier", 3), ("MMAs + reduction + epilogue, cluster barrier", 7),
                     ("MMAs + reduction, st.async", 11), ("MMAs + reduction + epilogue, st.async", 15),
                     ("reduction + epilogue, st.async", 14),
                     ("staging + MMAs + reduction + epilogue, cluster barrier", 23),
                     ("staging + MMAs + reduction + epilogue, st.async", 31), ("the bulk staging alone", 48),
                     ("bulk staging + MMAs + reduction + epilogue, cluster barrier", 55),
                     ("bulk staging + MMAs + reduction + epilogue, st.async", 63),
                     ("MMAs + reduction, st.async v4", 75), ("MMAs + reduction, bulk copies", 131),
                     ("bulk staging + MMAs + reduction + epilogue, st.async v4", 127),
                     ("bulk staging + MMAs + reduction + epilogue, bulk copies", 183))
# wgmma's descriptor offsets (bytes) for the probe's state layout: core matrices adjacent in K 128
# bytes apart, in N 56 x 128; the swapped order is tried too, so the check says which reading of
# the descriptor's two fields holds
WGMMA_PROBE_OFFSETS = ((128, 56 * 128), (56 * 128, 128))


def wgmma_probe_tiles(state: torch.Tensor, slices: int = 4) -> torch.Tensor:
    """The state ``[32, H]`` as the probe's bulk staging reads it: its K slices one after another,
    each as 8 x 8 core matrices (8 rows of 8 elements, 128 bytes), K-adjacent ones next to each
    other, then the next 8 rows: element (b, k) of slice s at ``((b // 8) * KC / 8 + k // 8) * 64 +
    b % 8 * 8 + k % 8`` of it (KC = H / slices)."""
    b, h = state.shape
    kc = h // slices
    return state.view(b // 8, 8, slices, kc // 8, 8).permute(2, 0, 3, 1, 4).contiguous().view(-1)


def dense_wgmma_probe(add, B, T, reps, dt):
    """The wgmma design's step without its handshake between clusters (``dense_wgmma_probe.cu``: H
    1792, B 32, clusters of 4 CTAs splitting K) by its parts (:data:`WGMMA_PROBE_PARTS`), each run
    with the MMAs and the epilogue first checked against ``tanh(wx + S W^T)`` in fp32 over three
    steps; beside it, one run, the package's kernel and its copies with only the handshake and
    the fixed work, and the fixed work alone (``dense_floor``), so the design's step is
    bounded by measurements: this probe's time plus the package's handshake."""
    import hashlib

    from rnnlab.ops.elman import persistent
    from rnnlab.ops.extensions import load

    dense_floor(add, B, T, reps, dt, variants=(("stage", "mma"), ("wait", "stage", "mma")), without_clusters=False)
    from rnnlab.ops.elman import wgmma

    source = WGMMA_PROBE.read_bytes() + wgmma.HEADER.read_bytes()  # the probe includes the kernel's PTX wrappers
    ext = load(f"rnnlab_dense_wgmma_probe_{hashlib.sha1(source).hexdigest()[:12]}", sources=[str(WGMMA_PROBE)],
               extra_cuda_cflags=persistent.EXT_FLAGS + persistent.HOPPER_ARCH,
               extra_include_paths=[str(wgmma.HEADER.parent)], verbose=False)
    hp, nb, steps = 1792, 32, 2 * T
    w = (torch.randn(hp, hp, device="cuda") * (0.9 / hp**0.5)).to(dt)
    state = torch.rand(nb, hp, device="cuda").mul_(2).sub_(1).to(dt)
    tiled = wgmma_probe_tiles(state)
    wx = torch.randn(steps, nb, hp, device="cuda", dtype=dt)
    h = torch.empty_like(wx)
    ref = torch.tanh(wx[:3].float() + state.float() @ w.float().T)

    def error(parts, offsets):  # the max error over three steps of a run with the MMAs and the epilogue
        h.zero_()
        ext.probe(w, state, tiled, wx, h, 3, parts, *offsets)
        return (h[:3].float() - ref).abs().max().item()

    # the descriptor's reading: the offsets under which the plain runs (7, 15) agree with fp32
    readings = {o: max(error(7, o), error(15, o)) for o in WGMMA_PROBE_OFFSETS}
    print("dense wgmma probe: max error of runs 7 and 15 by descriptor offsets:",
          {str(o): round(e, 4) for o, e in readings.items()}, flush=True)
    offsets = min(readings, key=readings.get)
    for name, parts in WGMMA_PROBE_PARTS:
        checked = ""
        if parts & 5 == 5:  # with the MMAs and the epilogue: its outputs against fp32
            e = error(parts, offsets)
            checked = f"; {'outputs within 1e-2 of fp32' if e < 1e-2 else 'OUTPUTS WRONG'} (max error {e:.1e})"
        ms = timeit(lambda: ext.probe(w, state, tiled, wx, h, steps, parts, *offsets), reps)
        add(f"dense wgmma probe: {name}", f"B{nb} {steps} steps H{hp}", (ms, 0.0, ms), 0.0,
            f"{ms / steps * 1e3:.3f} us a step{checked}; descriptor offsets {offsets}")


# the fused gate + scan kernels at the 400M widths: (name, mode of rnnlab.ops.scan.triton, H)
FUSED_SCANS = (("minGRU", 1, 3520), ("minLSTM", 2, 2880))


def fused_scan_passes(mode: int) -> tuple[int, int]:
    """``(forward, backward)``: the fused scan's passes over ``[B, T, H]`` tensors at least: the
    forward reads the G = mode + 1 gate inputs and writes h; the backward reads them, h and g and
    writes their G gradients."""
    G = mode + 1
    return G + 1, G + 2 + G


def fused_scan_floor_ms(mode: int, B: int, T: int, H: int, el: int, bw: float) -> float:
    """The fused scan's bytes (``fused_scan_passes``) over the copy bandwidth."""
    return sum(fused_scan_passes(mode)) * B * T * H * el / bw * 1e3


_SCAN_COPIES = itertools.count()


def scan_module_from(path: str, option: str = "bench_kernels.py: --scan-against"):
    """``rnnlab.ops.scan.triton`` as another file holds it (``--scan-against``), imported under a
    name of its own so that both versions' kernels compile side by side; a file that is not such
    a copy stops the script in one line (``option path: why``, exit 2) before anything runs."""
    def refuse(why):
        print(f"{option} {path}: {why}", file=sys.stderr)
        raise SystemExit(2)

    if not (path.endswith(".py") and os.path.isfile(path)):
        refuse("needs an existing Python file (a copy of rnnlab/ops/scan/triton.py)")
    # a module name of its own each time: a copy registers its custom ops in a namespace named
    # after its module, and a second copy under the same name would silently replace the first's
    spec = importlib.util.spec_from_file_location(f"scan_triton_against_{next(_SCAN_COPIES)}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile imports a custom op's module by its name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # any failure of the user's file, reported in one line
        del sys.modules[spec.name]
        refuse(f"does not import ({type(e).__name__}: {e})")
    missing = [n for n in ("launch_forward", "launch_backward", "_views", "BLOCK", "NUM_WARPS", "linear_scan",
                           "mingru_scan", "minlstm_scan") if not hasattr(module, n)]
    if missing:
        refuse(f"has no {', '.join(missing)} (not a copy of rnnlab/ops/scan/triton.py)")
    return module


# (channels per program, warps) for the fused minGRU / minLSTM scans (the package's:
# rnnlab.ops.scan.triton.BLOCK, NUM_WARPS). Swept on an H200: results/scan-launch-h200 (none beat
# the then package's 256 / 4 by more than 3.6%), results/scan-prefetch-h200 (64 / 1 did by 4-5%).
# On Hopper the forwards up to 128 channels a program are the TMA kernel, wider ones the pointer
# kernel (rnnlab.ops.scan.triton.launch_forward); the backwards are the pointer kernel throughout.
SCAN_LAUNCHES = [(64, 1), (64, 2), (128, 1), (128, 2), (128, 4), (256, 2), (256, 4), (256, 8), (512, 4), (512, 8)]


def fused_scan_outputs(x0: torch.Tensor, mode: int, g: torch.Tensor, module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, dp)``: the states of ``module``'s fused minGRU (``mode`` 1) / minLSTM (2) scan of the
    raw projection ``x0: [B, T, G*H]`` at its own launch, and the projection's gradient from ``g``."""
    G = mode + 1
    B, T, GH = x0.shape
    H = GH // G
    ptrs = module._views(x0, G, H)
    h = torch.empty(B, T, H, device=x0.device, dtype=x0.dtype)
    module.launch_forward(ptrs, GH, ptrs[0], h, mode, False)
    dp, dh0 = torch.empty_like(x0), torch.zeros(B, H, device=x0.device, dtype=torch.float32)
    module.launch_backward(ptrs, GH, h, h, g, module._views(dp, G, H), dh0, mode, False)
    return h, dp


def scan_launch_sweep(x0: torch.Tensor, mode: int, g: torch.Tensor, launches=SCAN_LAUNCHES, module=None,
                      expect=None):
    """The fused minGRU (``mode`` 1) / minLSTM (2) scan on the raw projection ``x0: [B, T, G*H]``
    with each ``(block, warps)`` of ``launches``: yields ``(block, warps, forward, backward)``, two
    callables each running one launch, after checking that the launch's states and gradients
    equal the module's own launch's bit for bit (each channel is its own recurrence: the launch may
    change the time, never a value). ``module``: another copy of ``rnnlab.ops.scan.triton``
    (``--scan-against``) instead of the package's; ``expect``: the package's
    :func:`fused_scan_outputs`, which its own launch must then match within bf16 rounding (another
    copy may compute the same maths in another order)."""
    stri = module
    if stri is None:
        from rnnlab.ops.scan import triton as stri

    G = mode + 1
    B, T, GH = x0.shape
    H = GH // G
    h_ref, dp_ref = fused_scan_outputs(x0, mode, g, stri)
    if expect is not None:
        torch.testing.assert_close(h_ref, expect[0], rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(dp_ref, expect[1], rtol=2e-2, atol=2e-2)
    ptrs = stri._views(x0, G, H)
    dh0 = torch.zeros(B, H, device=x0.device, dtype=torch.float32)
    for block, warps in launches:
        h, dp = torch.empty_like(h_ref), torch.empty_like(x0)
        outs = stri._views(dp, G, H)

        def forward(block=block, warps=warps, h=h):
            stri.launch_forward(ptrs, GH, ptrs[0], h, mode, False, block, warps)

        def backward(block=block, warps=warps, outs=outs):
            stri.launch_backward(ptrs, GH, h_ref, h_ref, g, outs, dh0, mode, False, block, warps)

        forward()
        backward()
        assert torch.equal(h, h_ref) and torch.equal(dp, dp_ref), (block, warps)
        yield block, warps, forward, backward


def scan_launches(add, B, T, reps, dt, bw, against=None):
    """The fused minGRU / minLSTM scans at the 400M widths with each launch of
    :data:`SCAN_LAUNCHES`, forward and backward each timed back to back (the kernels' own time);
    with ``against`` (``--scan-against``'s module) also its kernels at its own launch."""
    from rnnlab.ops.scan import triton as stri

    el = torch.finfo(dt).bits // 8
    for name, mode, H in FUSED_SCANS:
        floor = fused_scan_floor_ms(mode, B, T, H, el, bw)
        x0 = torch.randn(B, T, (mode + 1) * H, device="cuda", dtype=dt)
        g = torch.randn(B, T, H, device="cuda", dtype=dt)
        sweeps = [("", scan_launch_sweep(x0, mode, g))]
        if against is not None:
            own = [(against.BLOCK, against.NUM_WARPS)]  # that copy's own launch
            expect = fused_scan_outputs(x0, mode, g, stri)
            sweeps.append((" (--scan-against)", scan_launch_sweep(x0, mode, g, own, against, expect)))
        for label, sweep in sweeps:
            for block, warps, forward, backward in sweep:
                tf, tb = (timeit(fn, reps, back_to_back=BACK_TO_BACK) for fn in (forward, backward))
                note = "the package's" if (block, warps) == (stri.BLOCK, stri.NUM_WARPS) and not label else ""
                add(f"scan launch: {name} BLOCK {block}, {warps} warps{label}", f"B{B} T{T} H{H}",
                    (tf, tb, tf + tb), floor, note)


def persistent_source(path: str) -> Path:
    """``--persistent-against``'s file: an existing copy of rnnlab/ops/elman/persistent.cu, else one
    line (``bench_kernels.py: --persistent-against path: why``, exit 2) before anything runs."""
    if not (path.endswith(".cu") and os.path.isfile(path)):
        print(f"bench_kernels.py: --persistent-against {path}: needs an existing CUDA file (a copy of "
              "rnnlab/ops/elman/persistent.cu)", file=sys.stderr)
        raise SystemExit(2)
    return Path(path).resolve()


def persistent_pairs(wx, w, g, sources: list[Path]):
    """Dense E1's persistent kernels, the package's and those built from each of ``sources``, at
    each launch shape of ``persistent.SHAPES`` that fits ``wx: [B, T, H]``: yields ``(shape, label,
    forward, backward, same)``, the package's first (label ""), then each copy's (label: its file
    name) after checking that its states and ``dpre`` equal the package's (``same``: bit for bit)
    or agree within bf16 rounding."""
    from rnnlab.ops.elman import persistent

    for shape in persistent.SHAPES:
        plan = persistent.make_plan(wx, (shape,))
        if plan is None:
            continue
        h = persistent.forward(wx, w, None, plan)
        dpre, _ = persistent.backward(g, h, w, plan)
        runs = [("", plan, True)]
        for source in sources:
            other = dataclasses.replace(plan, source=source)
            h2 = persistent.forward(wx, w, None, other)
            dpre2, _ = persistent.backward(g, h, w, other)
            same = torch.equal(h, h2) and torch.equal(dpre, dpre2)
            if not same:
                for name, got, want in (("states", h2, h), ("dpre", dpre2, dpre)):
                    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2, msg=lambda m, name=name: (
                        f"{source.name} at {shape}: its {name} differ from the package's beyond bf16 rounding: {m}"))
            runs.append((source.name, other, same))
        for label, p, same in runs:
            yield (shape, label, lambda p=p: persistent.forward(wx, w, None, p),
                   lambda p=p: persistent.backward(g, h, w, p), same)


def ceilings():
    n = 256 * 2**20
    a = torch.randn(n // 4, device="cuda")
    b = torch.empty_like(a)
    t = timeit(lambda: b.copy_(a), 20)
    bw = 2 * a.numel() * 4 / (t * 1e-3)  # bytes/s (read + write)
    m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = timeit(lambda: m @ m, 10)
    fl = 2 * 8192**3 / (t * 1e-3)
    return bw, fl


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="write the rows, the device and the command here")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions of each kernel (the median is kept)")
    p.add_argument("--quick", action="store_true", help="skip the slow naive E1 loop")
    p.add_argument("--best-out", default=None, help="write the fastest dense per-step tile BN,BK,warps,stages")
    p.add_argument("--B", type=int, default=32, help="batch size of every shape")
    p.add_argument("--T", type=int, default=512, help="sequence length of every shape")
    p.add_argument("--sections", nargs="+", default=["scan", "diag", "heads", "cells", "optim", "dense"],
                   choices=["scan", "scan-launch", "scan-overlap", "diag", "heads", "heads-floor", "heads-overlap", "cells", "optim",
                            "dense", "persistent", "dense-floor", "dense-wgmma"],
                   help="which kernel families to time (default all but heads-floor, heads-overlap, dense-floor, dense-wgmma, "
                        "scan-launch, scan-overlap and persistent: dense E1's persistent kernel alone, a part of dense)")
    p.add_argument("--scan-against", default=None, metavar="FILE",
                   help="another copy of rnnlab/ops/scan/triton.py (e.g. an earlier commit's): the "
                        "scan-launch section times its fused scans at its own launch beside the package's")
    p.add_argument("--persistent-against", nargs="+", default=[], metavar="FILE",
                   help="other copies of rnnlab/ops/elman/persistent.cu: the dense / persistent section "
                        "times their kernels beside the package's, each launch shape")
    p.add_argument("--persistent-candidates", nargs="+", default=[], choices=list(PERSISTENT_CANDIDATES),
                   metavar="NAME", help="candidate changes to the persistent kernel (PERSISTENT_CANDIDATES: "
                   f"{', '.join(PERSISTENT_CANDIDATES) or 'none now'}), built from the package's source and timed as "
                   "--persistent-against copies")
    p.add_argument("--wgmma-candidates", nargs="+", default=[], choices=list(WGMMA_CANDIDATES), metavar="NAME",
                   help="candidate changes to the wgmma kernel (WGMMA_CANDIDATES: "
                   f"{', '.join(WGMMA_CANDIDATES) or 'none now'}), "
                   "timed beside the package's in the dense or persistent section")
    p.add_argument("--wgmma-timeline", action="store_true",
                   help="the wgmma kernel's step by its parts (clock reads in a copy of it, WGMMA_TIMELINE), "
                        "in the dense or persistent section")
    p.add_argument("--dense-floor-shapes", type=int, nargs="+", default=[0], metavar="I",
                   choices=range(len(SHAPES)), help="the dense-floor section's launch shapes: indices of "
                   "rnnlab.ops.elman.persistent.SHAPES (default 0, the package's first choice)")
    p.add_argument("--heads-carveouts", type=int, nargs="+", default=[0, 28, 32], metavar="N",
                   help="the heads-overlap section's GEMMs on cuBLASLt sized for all SMs but N, one row pair "
                        "each after the pair with PyTorch's default GEMMs (default: 0 28 32)")
    p.add_argument("--e88-heads", type=int, nargs="+", default=[50, 49],
                   help="head counts of E88's layer (n = m = 32) in the cells section; the launch and "
                        "checkpoint variants run at 50 (49, the race's, ran ~1.3x faster than 50: "
                        "results/e88-kernel-h200)")
    args = p.parse_args(argv)
    if args.scan_against and "scan-launch" not in args.sections:
        p.error("--scan-against times in the scan-launch section: add it to --sections")
    against = scan_module_from(args.scan_against) if args.scan_against else None
    for option, given in (("--persistent-against", args.persistent_against),
                          ("--persistent-candidates", args.persistent_candidates),
                          ("--wgmma-candidates", args.wgmma_candidates),
                          ("--wgmma-timeline", args.wgmma_timeline)):
        if given and not {"dense", "persistent"} & set(args.sections):
            p.error(f"{option} times in the dense or persistent section: add one to --sections")
    # the other persistent kernels, by how the command named them: a file, or "candidate NAME"
    copies = {f: persistent_source(f) for f in args.persistent_against}
    copies |= {f"candidate {name}": persistent_candidate(name) for name in args.persistent_candidates}
    persistent_copies = list(copies.values())
    wgmma_copies = {f"candidate {name}": wgmma_candidate(name) for name in args.wgmma_candidates}
    timeline = wgmma_timeline_source() if args.wgmma_timeline else None
    if not torch.cuda.is_available():
        p.exit(2, "bench_kernels.py: error: needs a CUDA GPU (torch sees none)\n")

    from rnnlab.ops.diag import diag_elman_scan
    from rnnlab.ops.elman import elman_scan
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions
    from rnnlab.ops.scan import linear_scan

    B, T = args.B, args.T
    dt = torch.bfloat16
    dev = "cuda"
    torch.manual_seed(0)
    bw, fl = ceilings()
    rows = []
    partial = kernels_meta(args, bw, fl, complete=False)  # the record while rows come (the commit asked of git once)

    def add(name, shape, res, floor_ms, note=""):
        f, b, tot = res
        rows.append(dict(name=name, shape=shape, fwd_ms=round(f, 4), bwd_ms=round(b, 4),
                         total_ms=round(tot, 4), floor_ms=round(floor_ms, 4), note=note))
        print(f"{name:34s} {shape:22s} fwd {f:8.3f}  bwd {b:8.3f}  total {tot:8.3f} ms  "
              f"floor {floor_ms:6.3f}  {note}", flush=True)
        if args.json:  # after each row, so that a call cut short keeps what it measured; finish() completes it
            write_json(args.json, dict(meta=partial, rows=rows))

    el = 2  # bf16 bytes

    # ---- linear scan (minGRU / minLSTM)
    scans = "scan" in args.sections
    for H in (1760, 3520) if scans else ():
        n = B * T * H
        floor = (3 + 5) * n * el / bw * 1e3

        def mk(H=H):
            a = torch.rand(B, T, H, device=dev, dtype=dt).mul_(0.5).add_(0.5).requires_grad_()
            b = torch.randn(B, T, H, device=dev, dtype=dt, requires_grad=True)
            return (lambda a, b: linear_scan(a, b, None, backend="triton")), [a, b], torch.randn_like(b)

        add("scan triton", f"B{B} T{T} H{H}", fwd_bwd(mk, args.reps), floor)

        def mkn(H=H):
            fn, ins, g = mk()
            return (lambda a, b: linear_scan(a, b, None, backend="naive")), ins, g

        add("scan naive (torch loop)", f"B{B} T{T} H{H}", fwd_bwd(mkn, max(3, args.reps // 3)), floor)

        def mkh(H=H):
            fn, ins, g = mk()
            return (lambda a, b: linear_scan(a, b, None, backend="heinsen")), ins, g

        add("scan heinsen (log-space torch)", f"B{B} T{T} H{H}", fwd_bwd(mkh, max(3, args.reps // 3)), floor)

    from rnnlab.ops.scan import triton as stri

    # fused gate + scan (reads p once, writes h; backward reads p, h, g, writes dp)
    for name, mode, H in FUSED_SCANS if scans else ():
        def mkf(fn={1: stri.mingru_scan, 2: stri.minlstm_scan}[mode], G=mode + 1, H=H):
            pp = torch.randn(B, T, G * H, device=dev, dtype=dt, requires_grad=True)
            return fn, [pp], torch.randn(B, T, H, device=dev, dtype=dt)

        add(f"{name} fused gates+scan", f"B{B} T{T} H{H}", fwd_bwd(mkf, args.reps),
            fused_scan_floor_ms(mode, B, T, H, el, bw))

    # ---- diag Elman (E16 s4: di 2048 -> S 8192)
    S = 8192
    n = B * T * S
    floor = (2 + 4) * n * el / bw * 1e3

    def mkd():
        u = torch.randn(B, T, S, device=dev, dtype=dt, requires_grad=True)
        a = torch.rand(S, device=dev, dtype=dt, requires_grad=True)
        return (lambda u, a: diag_elman_scan(u, a, None, backend="triton")), [u, a], torch.randn_like(u)

    def mkdn():
        fn, ins, g = mkd()
        return (lambda u, a: diag_elman_scan(u, a, None, backend="naive")), ins, g

    if "diag" in args.sections:
        add("diag triton", f"B{B} T{T} S{S}", fwd_bwd(mkd, args.reps), floor)
        add("diag naive (torch loop)", f"B{B} T{T} S{S}", fwd_bwd(mkdn, 3), floor)

    if "heads" in args.sections:
        heads_kernels(add, B, T, args.reps, dt, el, bw, fl)

    if "scan-launch" in args.sections:
        scan_launches(add, B, T, args.reps, dt, bw, against)
    if "scan-overlap" in args.sections:
        with torch.no_grad():
            fused_scans_beside_weight_gradients(add, B, T, args.reps, dt)
            dense_scan_beside_weight_gradients(add, B, T, args.reps, dt)
    if "heads-overlap" in args.sections:
        with torch.no_grad():
            heads_scans_beside_gate_branch(add, B, T, args.reps, dt, args.heads_carveouts)
    if "heads-floor" in args.sections:
        heads_floor(add, B, T, args.reps, dt)
    if "dense-floor" in args.sections:
        dense_floor(add, B, T, args.reps, dt, args.dense_floor_shapes)
    if "dense-wgmma" in args.sections:
        dense_wgmma_probe(add, B, T, args.reps, dt)

    if "cells" in args.sections:
        matrix_state_cells(add, B, T, args.reps, bw, args.e88_heads)

    if "optim" in args.sections:
        schedulefree_steps(add, args.reps, bw)

    # ---- E1 dense 1760
    H = 1760
    rec_flops = 3 * 2 * B * T * H * H
    floor = max(3 * B * T * H * el / bw, rec_flops / fl) * 1e3

    def mke(opts=ElmanKernelOptions()):
        wx = torch.randn(B, T, H, device=dev, dtype=dt, requires_grad=True)
        w = (torch.randn(H, H, device=dev) * (0.9 / H**0.5)).to(dt).requires_grad_()
        return (lambda x, w: et.elman_scan(x, w, None, opts)), [wx, w], torch.randn_like(wx)

    if not {"dense", "persistent"} & set(args.sections):
        return finish(args, rows, bw, fl, None, copies)
    from rnnlab.ops.elman import dense_step, persistent

    for i, (warps, tile) in enumerate(persistent.SHAPES):
        add("E1 dense persistent CUDA", f"B{B} T{T} H{H}",
            fwd_bwd(lambda: mke(ElmanKernelOptions(persistent_shape=i, dense_wgmma=False)), args.reps), floor,
            f"cooperative, {warps} warps, tile {tile[0]} cols x {tile[1]} rows")
    from rnnlab.ops.elman import wgmma

    if wgmma.supported(torch.empty(B, 1, H, device=dev, dtype=dt)):  # same run: its ratio to the rows above
        add("E1 dense wgmma CUDA", f"B{B} T{T} H{H}",
            fwd_bwd(lambda: mke(ElmanKernelOptions()), args.reps), floor,
            "cooperative, clusters of 4 splitting K, wgmma from W's fragments in registers")
        build_in_parallel(wgmma._ext, [*wgmma_copies.values(), *([timeline] if timeline else [])])
        if wgmma_copies:  # the kernels alone, the package's and each candidate's; floor as below
            _, (wx, w), g = mke()
            timed = list(wgmma_rows(wx.detach(), w.detach(), g, wgmma_copies))
            times = timed_in_rounds([(label, forward, backward) for label, forward, backward, _ in timed], args.reps)
            for label, _, _, same in timed:
                tf, tb = times[label]
                add("E1 dense wgmma kernels", f"B{B} T{T} H{H}", (tf, tb, tf + tb),
                    max(5 * B * T * H * el / bw, 2 / 3 * rec_flops / fl) * 1e3, agreement(label, same))
        if args.wgmma_timeline:  # µs a step of each part, forward and backward: a row each, as ms a layer
            _, (wx, w), g = mke()
            parts = wgmma_timeline(wx.detach(), w.detach(), g, timeline)
            for phase, (fm, fmed) in parts["forward"].items():
                bm, bmed = parts["backward"][phase]
                add(f"E1 dense wgmma timeline: {phase}", f"B{B} T{T} H{H}", (fm * T / 1e3, bm * T / 1e3, (fm + bm) * T / 1e3),
                    0.0, f"us a step, mean (median): fwd {fm:.3f} ({fmed:.3f}), bwd {bm:.3f} ({bmed:.3f})")
    if persistent_copies:  # the kernels alone (no autograd, no dW GEMM), the package's and each copy's
        # their floor: two recurrent products a step (no dW), wx and h, then g, h and dpre in bytes
        kernels_floor = max(5 * B * T * H * el / bw, 2 / 3 * rec_flops / fl) * 1e3
        _, (wx, w), g = mke()
        pairs = list(persistent_pairs(wx.detach(), w.detach(), g, persistent_copies))
        times = timed_in_rounds([((shape, label), forward, backward) for shape, label, forward, backward, _ in pairs],
                                args.reps)
        for (warps, tile), label, _, _, same in pairs:
            tf, tb = times[((warps, tile), label)]
            add("E1 dense persistent kernels", f"B{B} T{T} H{H}", (tf, tb, tf + tb), kernels_floor,
                f"{warps} warps, tile {tile[0]} x {tile[1]}: {agreement(label, same)}")
    if "dense" not in args.sections:  # the persistent kernel alone
        return finish(args, rows, bw, fl, None, copies)
    best = None
    # the per-step kernel (persistent off), CUDA-graphed, per tile (BN, BK, warps, stages)
    for tile in ((16, 128, 4, 3), (16, 256, 4, 3), (16, 64, 4, 3), (32, 128, 4, 3), (32, 64, 4, 3),
                 (64, 64, 4, 3), (16, 64, 2, 3), (32, 64, 4, 2)):
        opts = ElmanKernelOptions(persistent=False, dense_bn=tile[0], dense_bk=tile[1],
                                  dense_warps=tile[2], dense_stages=tile[3])
        r = fwd_bwd(lambda: mke(opts), args.reps)
        add("E1 dense triton step+graph", f"B{B} T{T} H{H}", r, floor, "BN={} BK={} w={} st={}".format(*tile))
        if best is None or r[2] < best[0]:
            best = (r[2], opts)
    dense_step.GRAPHS.clear()
    print("best dense per-step options", best)
    if args.best_out:
        with open(args.best_out, "w") as f:
            o = best[1]
            f.write(f"{o.dense_bn},{o.dense_bk},{o.dense_warps},{o.dense_stages}")
    add("E1 dense triton step, eager", f"B{B} T{T} H{H}",
        fwd_bwd(lambda: mke(dataclasses.replace(best[1], cuda_graph=False)), 3), floor, "best tile")
    if not args.quick:
        def mken():
            fn, ins, g = mke()
            return (lambda x, w: elman_scan(x, w, None, backend="naive")), ins, g

        add("E1 dense naive (torch loop)", f"B{B} T{T} H{H}", fwd_bwd(mken, 3), floor)

    # cuBLAS chain floor for one GEMM per step (anchor 2.45 ms)
    h = torch.randn(B, H, device=dev, dtype=dt)
    wt = (torch.randn(H, H, device=dev) * 0.02).to(dt)
    out = torch.empty(T, B, H, device=dev, dtype=dt)

    def chain():
        x = h
        for t in range(T):
            torch.mm(x, wt, out=out[t])
            x = out[t]

    chain()
    torch.cuda.synchronize()
    gph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gph):
        chain()
    tc = timeit(gph.replay, args.reps)
    print(f"{'cuBLAS GEMM chain (graph)':34s} {'':22s} {tc:8.3f} ms ({tc / T * 1e3:.2f} us/step)")
    return finish(args, rows, bw, fl, tc, copies)


def matrix_state_cells(add, B, T, reps, bw, e88_heads):
    """E88's kernel at ``e88_heads`` heads of n = m = 32 (default 50, the width `rnnlab params`
    solves for 400M at depth 31, and 49, the race's; at 50 also other launches and checkpoint
    intervals), and fla's gated delta rule at the race's GDN layer (13 heads, K 128, V 256): one
    layer's recurrence, decay / log decay and beta in fp32 as their layers pass them. Floor: the
    HBM bytes the kernels must move (inputs and outputs of forward and backward, once each)."""
    from rnnlab.ops.delta import gated_delta_scan
    from rnnlab.ops.e88 import e88_scan

    dev, dt, el = "cuda", torch.bfloat16, 2

    def inputs(H, K, V, lo, hi):  # the third input: E88's decay / GDN's log decay, uniform in [lo, hi)
        q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).to(dt) for _ in range(2))
        v = torch.randn(B, T, H, V, device=dev, dtype=dt)
        g = torch.empty(B, T, H, device=dev).uniform_(lo, hi)
        return [t.requires_grad_() for t in (q, k, v, g)], torch.randn(B, T, H, V, device=dev, dtype=dt)

    from rnnlab.ops.e88 import triton as e88_kernel

    for H in e88_heads:
        def mk(H=H):
            ins, gy = inputs(H, 32, 32, 0.8, 1.0)
            return (lambda q, k, v, d: e88_scan(q, k, v, d, None, backend="triton")), ins, gy

        floor = B * T * H * (2 * (3 * 32 + 32) * el + 2 * 4 + 2 * (3 * 32 + 32) * el) / bw * 1e3
        add("E88 triton", f"B{B} T{T} {H}x32x32", fwd_bwd(mk, reps), floor, "default options")
        if H != 50:
            continue
        # the launch and checkpoint choices at 50 heads, beside the default: warps per
        # program (forward 1 and backward 2 by default; 1: a column of S per lane; more warps split
        # the rows further: fewer registers per thread, fewer programs per SM), a cap on the
        # registers (more programs per SM: the default forward fits 1584 at once, the 1600 of 50
        # heads leave a second wave) and the checkpoint interval (the backward's per-program scratch
        # is C states: 8 halves its L2 footprint and doubles the checkpoints' memory)
        # (ptxas at n = m = 32: forward 132 registers, 128 with 16 bytes of spills; backward with 2
        # warps 245, 168 without spills: 6 programs per SM instead of 4; with 4 warps 125, 96 without
        # spills; with 1 warp 226, 168 with 4 bytes), and the backward's loads pipelined (cp.async)
        variants = [dict(fwd_warps=2, bwd_warps=2), dict(bwd_warps=1), dict(bwd_warps=4), dict(bwd_warps=8),
                    dict(fwd_maxnreg=128), dict(bwd_maxnreg=168), dict(bwd_warps=4, bwd_maxnreg=96),
                    dict(bwd_warps=1, bwd_maxnreg=168), dict(bwd_stages=2), dict(bwd_stages=3),
                    dict(checkpoint_every=8), dict(checkpoint_every=4)]
        for kw in variants:
            def mkv(opts=e88_kernel.E88KernelOptions(**kw)):
                ins, gy = inputs(50, 32, 32, 0.8, 1.0)
                return (lambda q, k, v, d: e88_kernel.e88_scan(q, k, v, d, None, opts)), ins, gy

            note = " ".join(f"{k}={v}" for k, v in kw.items())
            try:
                add("E88 triton", f"B{B} T{T} 50x32x32", fwd_bwd(mkv, reps), floor, note)
            except Exception as e:  # noqa: BLE001 - a launch this Triton refuses; the other rows still count
                print(f"E88 triton {note}: failed: {type(e).__name__}: {str(e)[:200]}", flush=True)

    from rnnlab.ops.delta import GATED_DELTA_SCAN, fla_backward_refusal

    if not GATED_DELTA_SCAN.kernel_available():
        print(f"gated delta (fla chunk): skipped, fla does not import: {GATED_DELTA_SCAN.kernel.error}")
        return
    refusal = fla_backward_refusal()  # Hopper with Triton 3.6 and no TileLang: fla refuses its backward
    if refusal:
        print(f"gated delta (fla chunk): skipped: {refusal}")
        return

    def mkg():
        ins, gy = inputs(13, 128, 256, -0.3, 0.0)
        beta = torch.rand(B, T, 13, device=dev, requires_grad=True)
        return (lambda q, k, v, g, b: gated_delta_scan(q, k, v, g, b, None, backend="triton")), ins + [beta], gy

    floor = B * T * 13 * (2 * (2 * 128 + 2 * 256) * el + 4 * 4) / bw * 1e3
    add("gated delta (fla chunk)", f"B{B} T{T} 13x128x256", fwd_bwd(mkg, reps), floor)


def schedulefree_steps(add, reps, bw):
    """One Schedule-Free AdamW step over minGRU 3520 x 16's parameters (397.5M, bf16, one tensor per
    weight as the model has them), schedulefree's foreach step and rnnlab's fused one, from the
    same state. Floor: the fused step's bytes (read y, z, second moment, gradient; write three) over
    the copy bandwidth; "fwd" is the step."""
    import schedulefree

    from rnnlab.train import sf_adamw

    D, L = 3520, 16
    shapes = [(256, D)] + [(2 * D, D), (D,), (D,)] * L + [(D,), (D,)]
    g = torch.Generator(device="cuda").manual_seed(0)
    init = [torch.randn(s, device="cuda", generator=g).to(torch.bfloat16) for s in shapes]
    grads = [torch.randn(s, device="cuda", generator=g).to(torch.bfloat16) * 1e-2 for s in shapes]
    n = sum(t.numel() for t in init)
    floor = 7 * n * 2 / bw * 1e3
    for name, cls in (("schedulefree step (foreach)", schedulefree.AdamWScheduleFree),
                      ("schedulefree step (rnnlab fused)", sf_adamw.AdamWScheduleFree)):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        for p, gr in zip(params, grads):  # (the foreach step divides them in place: values drift, bytes do not)
            p.grad = gr.clone()
        opt = cls(params, lr=3e-4, weight_decay=0.1)
        opt.train()
        t = timeit(opt.step, reps)
        add(name, f"{n / 1e6:.1f}M bf16", (t, 0.0, t), floor)
        del opt, params


def kernels_meta(args, bw, fl, complete: bool, **more) -> dict:
    """The record's device, date, commit, versions, command, shapes and ceilings (``complete``:
    False while rows are still to come)."""
    from rnnlab.train.runtime import git_commit_label

    return dict(device=torch.cuda.get_device_name(), date=datetime.datetime.now(datetime.timezone.utc)
                .isoformat(timespec="seconds"), git_commit=git_commit_label(),
                torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), command=" ".join(sys.argv), B=args.B, T=args.T,
                dtype="bf16", copy_bw_GBs=round(bw / 1e9, 1), gemm_bf16_TFLOPs=round(fl / 1e12, 1),
                complete=complete, **more)


def finish(args, rows, bw, fl, tc, copies: dict[str, Path]):
    """Print the run's record and write ``--json``; ``copies``: the other persistent kernels timed,
    recorded by their names in the command and the extension names their sources give them."""
    from rnnlab.ops.elman import persistent

    copies = {label: persistent._ext_name(path.read_bytes(), persistent.build_flags()) for label, path in copies.items()}
    meta = kernels_meta(args, bw, fl, complete=True, cublas_chain_ms=None if tc is None else round(tc, 4),
                    persistent_against=copies or None)
    print(json.dumps(meta))
    if args.json:
        write_json(args.json, dict(meta=meta, rows=rows))


if __name__ == "__main__":
    main()
