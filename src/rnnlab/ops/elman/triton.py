"""GPU Elman scan ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)`` (E1), forward and backward: the ``triton``
backend of ``elman_scan``. Three kinds of kernel, chosen by ``w_h``, the dtype, the shape and the GPU:

* **heads** ``w_h: [nh, hd, hd]`` (block-diagonal): ``heads.py``, one Triton program per (head,
  batch tile) with W_head on chip for all T, dW accumulated in the backward loop; 16-bit heads of
  64 or 128 channels on sm_80+ (``ElmanKernelOptions.heads_gluon``, on by default) run
  ``heads_gluon.py``'s Gluon kernels instead (``heads.py`` chooses). Heads wider than 128 channels
  (whose W_head outgrows an SM's shared memory) run on the dense kernels as their block-diagonal matrix.
* **dense persistent** ``w_h: [H, H]``, bf16/fp16, when the shape fits: ``persistent.py`` (CUDA
  C++), one cooperative launch per direction with W resident in shared memory; for plain bf16
  scans of B <= 32, H <= 1792 on Hopper (``ElmanKernelOptions.dense_wgmma``, on by default)
  ``wgmma.py`` instead (CUDA C++: one cooperative launch on warpgroup MMAs, K split over clusters).
* **dense per step** ``w_h: [H, H]`` otherwise (fp32, or shapes the persistent kernel declines):
  ``dense_step.py``, one fused Triton kernel per step in a CUDA-graphed loop.

The dense paths share the rest of the backward here: ``dW_h`` as ONE GEMM (:func:`dw_dense`)
and ``dh0`` as one product. E1's selective scans (``selective.py``) run on the same kernels
through :func:`dense_forward` / :func:`dense_dpre` (dense) and ``heads.py`` (decay with heads). The plain scan sits behind a pair of ``torch.library`` custom ops
(``rnnlab::elman_scan_fwd`` / ``_bwd``) with a registered autograd formula, so ``torch.compile``
keeps an E1 model in one graph; a second pair (``rnnlab::elman_scan_beside_fwd`` / ``_bwd``) runs
the scan from zeros with a projection beside it on a second stream (E1 heads' gate:
:func:`elman_scan_beside_linear`). How the kernels run (which dense kernel, tiles, CUDA graphs, fast
tanh, the second stream) is an explicit :class:`~rnnlab.ops.elman.options.ElmanKernelOptions`,
passed through the ops.

Inputs bf16/fp16/fp32 (fp64 is computed in fp32); matrix products take fp32 operands in IEEE
mode for fp32 inputs and 16-bit operands (fp32 accumulation) for 16-bit inputs.
"""

from __future__ import annotations

import functools

import torch

from rnnlab.ops.elman import dense_step, heads
from rnnlab.ops.elman.options import DEFAULT, ElmanKernelOptions
from rnnlab.ops.registry import FallibleBuild, final_state, traced
from rnnlab.ops.streams import beside

__all__ = ["elman_scan", "elman_scan_beside_linear", "ElmanKernelOptions"]

# the persistent kernel's two builds (keyed by "with a low-rank term") and the wgmma kernel's: a
# failed build is one warning and never retried
PERSISTENT_BUILDS = {lowrank: FallibleBuild("persistent Elman kernel", "the per-step Triton kernel")
                     for lowrank in (False, True)}
WGMMA_BUILD = FallibleBuild("wgmma Elman kernel", "the persistent kernel")


def _persistent_plan(x: torch.Tensor, opts: ElmanKernelOptions, rank: int = 0):
    """``(persistent module, launch plan)`` when the persistent kernel should run the dense scan of
    ``x`` (with a low-rank term of ``rank`` > 0), else None (switched off, the shape or rank does
    not fit, or its build failed: then a one-time warning, and the other build still runs)."""
    if not opts.persistent or not x.is_cuda or (rank > 0 and not opts.persistent_lowrank):
        return None

    def plan():
        from rnnlab.ops.elman import persistent

        shapes = None if opts.persistent_shape < 0 else (persistent.SHAPES[opts.persistent_shape],)
        found = persistent.make_plan(x, shapes, rank)
        return None if found is None else (persistent, found)

    return PERSISTENT_BUILDS[rank > 0].attempt(plan)


def _wgmma(x: torch.Tensor, opts: ElmanKernelOptions, *selective):
    """The ``wgmma`` module when it should run the plain dense scan of ``x`` (``selective``: the
    decay and low-rank operands, all None), else None (switched off, with ``dense_wgmma`` or with
    the persistent kernels, a selective term, a shape or GPU it declines, or its build failed: then
    a one-time warning, and persistent.cu runs)."""
    if not (opts.persistent and opts.dense_wgmma) or not x.is_cuda or any(t is not None for t in selective):
        return None

    def supported():
        from rnnlab.ops.elman import wgmma

        return wgmma if wgmma.supported(x) else None

    return WGMMA_BUILD.attempt(supported)


def dw_dense(dpre: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """``dW = sum_{b,t} dpre[b, t]^T h[b, t-1]`` (``h[b, -1] = h0[b]`` or 0; ``dpre: [B, T, D]``,
    ``h: [B, T, H]`` -> ``[D, H]``) as ONE GEMM without a shifted copy of ``h``: over the flat
    ``[B*T, .]`` rows, row r of dpre meets row r-1 of h; the B-1 pairs that straddle two sequences
    are subtracted and the t = 0 terms with h0 added through addmm's C operand (one rounding of
    the result). At T = 1 every pair straddles, and in 16-bit the subtraction of a rounded product
    would leave its rounding (one unit in the last place a weight) where dW is h0's terms alone."""
    B, T, H = h.shape
    if T == 1:
        return dpre[:, 0].t() @ h0 if h0 is not None else dpre.new_zeros(dpre.shape[-1], H)
    d, hf = dpre.reshape(B * T, dpre.shape[-1]), h.reshape(B * T, H)
    corr = -(dpre[1:, 0].t() @ h[:-1, -1])
    if h0 is not None:
        corr += dpre[:, 0].t() @ h0
    return torch.addmm(corr, d[1:].t(), hf[:-1])


def _rank(lowrank: tuple | None) -> int:
    """The low-rank term's rank (its matrices are ``[H, r]``), 0 without it."""
    return 0 if lowrank is None else lowrank[0].shape[1]


def dense_forward(wx: torch.Tensor, w: torch.Tensor, h0: torch.Tensor | None, opts: ElmanKernelOptions,
                  a: torch.Tensor | None = None, lowrank: tuple | None = None) -> torch.Tensor:
    """All states of the dense scan (``w: [H, H]``), with E1's selective terms when given (the
    decay ``a``, ``lowrank = (V, U, s)``: contiguous, ``wx``'s dtype): the wgmma kernel when asked
    for and it runs the shape, else the persistent kernel when it does (with the rank), else the
    per-step kernel."""
    B, T, H = wx.shape
    dt = wx.dtype
    wx = wx.contiguous()
    wk = w.to(dt).contiguous()
    h0c = None if h0 is None else h0.to(dt).contiguous()
    if T == 0 or B == 0:
        return torch.empty_like(wx)
    if (wgmma := _wgmma(wx, opts, a, lowrank)) is not None:
        return wgmma.forward(wx, wk, h0c)
    if (found := _persistent_plan(wx, opts, _rank(lowrank))) is not None:
        persistent, plan = found
        return persistent.forward(wx, wk, h0c, plan, a, lowrank)
    if h0c is None:  # the per-step kernels read the previous state from a tensor
        h0c = torch.zeros(B, H, device=wx.device, dtype=dt)
    return dense_step.forward(wx, wk.t().contiguous(), h0c, opts, a, lowrank)


def dense_dpre(g: torch.Tensor, wk: torch.Tensor, h: torch.Tensor, opts: ElmanKernelOptions,
               a: torch.Tensor | None = None, lowrank: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential part of the dense backward, ``(dpre, q)`` with ``q = a * dpre`` (``dpre``
    without the decay ``a``; ``lowrank = (U, V, s)``), by the kernel :func:`dense_forward` chose;
    contiguous operands of ``h``'s dtype, T, B > 0."""
    if (wgmma := _wgmma(h, opts, a, lowrank)) is not None:
        dpre = wgmma.backward(g, h, wk)
        return dpre, dpre
    if (found := _persistent_plan(h, opts, _rank(lowrank))) is not None:
        persistent, plan = found
        return persistent.backward(g, h, wk, plan, a, lowrank)
    return dense_step.backward(wk, h, g, opts, a, lowrank)


def _dense_backward(g, w, h, h0, need_dw: bool, opts: ElmanKernelOptions):
    B, T, H = h.shape
    dt = h.dtype
    wk = w.to(dt).contiguous()
    g = g.contiguous()
    if T == 0 or B == 0:
        dpre = torch.zeros_like(h)
    else:
        dpre, _ = dense_dpre(g, wk, h, opts)
    h0c = None if h0 is None else h0.to(dt)
    dW = dw_dense(dpre, h, h0c) if T > 0 and need_dw else torch.zeros_like(wk)
    if h0 is not None and T > 0:
        dh0 = dpre[:, 0].float() @ wk.float()
    else:
        dh0 = torch.zeros(B, H, device=h.device, dtype=torch.float32)
    return dpre, dW.to(w.dtype), dh0


def kernel_dtype(*xs: torch.Tensor | None) -> tuple:
    """``xs`` as the kernels take them: unchanged when the first is bf16/fp16/fp32, else (fp64)
    all in fp32 (None stays None)."""
    if xs[0].dtype in (torch.float32, torch.bfloat16, torch.float16):
        return xs
    return tuple(None if x is None else x.float() for x in xs)


def _forward(wx, w, h0, opts: ElmanKernelOptions) -> torch.Tensor:
    """All states of the scan: the heads kernels for ``w: [nh, hd, hd]`` where they run it
    (:func:`heads.runs`), else the dense ones (wider heads as their block-diagonal matrix)."""
    if heads.runs(w):
        return heads.forward(wx, w, h0, opts)
    return dense_forward(wx, heads.block_diagonal(w), h0, opts)


def _backward(g, w, h, h0, need_dw: bool, opts: ElmanKernelOptions):
    """``(dpre, dW, dh0)`` of the scan, heads or dense kernels as :func:`_forward` (which read ``h``
    as contiguous)."""
    h = h.contiguous()
    if heads.runs(w):
        return heads.backward(g, w, h, h0, need_dw, opts)[:3]
    dpre, dw, dh0 = _dense_backward(g, heads.block_diagonal(w), h, h0, need_dw, opts)
    return dpre, heads.head_blocks(dw, w), dh0


# ------------------------------------------------------------------------ torch.library ops
# The scan is a pair of custom ops with an autograd formula: under torch.compile E1 stays in the
# compiled graph (each op one opaque extern call, no graph break) and can be CUDA-graphed with it.
@torch.library.custom_op("rnnlab::elman_scan_fwd", mutates_args=(),
                         schema="(Tensor wx, Tensor w, Tensor? h0, int[] options) -> Tensor")
def _scan_fwd(wx, w, h0, options):
    """All states ``h`` (``wx``'s dtype); ``w`` dense ``[H, H]`` or heads ``[nh, hd, hd]``;
    ``options`` = ``ElmanKernelOptions.to_ints()``."""
    return _forward(wx, w, h0, ElmanKernelOptions.from_ints(options))


@_scan_fwd.register_fake
def _(wx, w, h0, options):
    return torch.empty_like(wx, memory_format=torch.contiguous_format)


@torch.library.custom_op("rnnlab::elman_scan_bwd", mutates_args=(),
                         schema="(Tensor g, Tensor w, Tensor h, Tensor? h0, bool need_dw, int[] options) "
                                "-> (Tensor, Tensor, Tensor)")
def _scan_bwd(g, w, h, h0, need_dw, options):
    """``(dpre, dW, dh0)``: dpre = dL/dwx (``h``'s dtype), dW in ``w``'s dtype (zeros unless
    ``need_dw``), dh0 ``[B, H]`` fp32 (zeros without ``h0``)."""
    return _backward(g, w, h, h0, need_dw, ElmanKernelOptions.from_ints(options))


@_scan_bwd.register_fake
def _(g, w, h, h0, need_dw, options):
    return (torch.empty_like(h, memory_format=torch.contiguous_format),
            torch.empty_like(w, memory_format=torch.contiguous_format),
            h.new_empty(h.shape[0], h.shape[2], dtype=torch.float32))


def _scan_setup(ctx, inputs, output):
    _, w, h0, options = inputs
    ctx.options = options
    ctx.save_for_backward(w, output, h0)


def _scan_grads(ctx, g):
    w, h, h0 = ctx.saved_tensors
    need_dw = ctx.needs_input_grad[1]
    dpre, dw, dh0 = _scan_bwd(g, w, h, h0, need_dw, ctx.options)
    return dpre, dw if need_dw else None, None if h0 is None else dh0.to(h0.dtype), None


_scan_fwd.register_autograd(_scan_grads, setup_context=_scan_setup)


@traced
def elman_scan(wx: torch.Tensor, w_h: torch.Tensor, h0: torch.Tensor | None = None,
               options: ElmanKernelOptions = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)``: all states ``[B, T, H]`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T)`` (dense or
    heads ``w_h``) and the final state (``h[:, -1]`` in the compute dtype), run with ``options``.
    torch.compile traces it (``traced``): only dtype handling and the custom op."""
    h = _scan_fwd(*kernel_dtype(wx, w_h, h0), options.to_ints()).to(wx.dtype)
    return h, final_state(h, h0)


# ------------------------------------------ the heads scan with a projection beside it (E1 heads)
def _beside_sms(x: torch.Tensor, w: torch.Tensor, opts: ElmanKernelOptions) -> int | None:
    """The SMs a heads scan of ``x: [B, T, H]`` holds (one program a head and batch tile:
    :func:`heads.programs`) plus ``heads_beside_spare``: what the GEMMs beside it leave; None: no
    second stream (dense scans and heads on the dense kernels, which hold most SMs, or ``heads_beside`` off)."""
    if not (heads.runs(w) and opts.heads_beside):
        return None
    return heads.programs(x, w, opts) + opts.heads_beside_spare


@torch.library.custom_op("rnnlab::elman_scan_beside_fwd", mutates_args=(),
                         schema="(Tensor wx, Tensor w, Tensor x, Tensor wl, int[] options) -> (Tensor, Tensor)")
def _beside_fwd(wx, w, x, wl, options):
    """``(h, x @ wl.T)``: the scan's states (as ``rnnlab::elman_scan_fwd`` from zeros) and the
    projection (``x`` and ``wl`` of one dtype), the projection on a second stream beside a heads
    scan (:func:`rnnlab.ops.streams.beside`)."""
    opts = ElmanKernelOptions.from_ints(options)
    z = x.new_empty(*x.shape[:-1], wl.shape[0])  # on this stream: the side stream only writes it
    rows = x.reshape(-1, x.shape[-1])

    def projection():
        with torch.autocast(x.device.type, enabled=False):
            torch.mm(rows, wl.t(), out=z.view(-1, wl.shape[0]))

    h, _ = beside(functools.partial(_forward, wx, w, None, opts), projection, _beside_sms(wx, w, opts), wx.device)
    return h, z


@_beside_fwd.register_fake
def _(wx, w, x, wl, options):
    return torch.empty_like(wx, memory_format=torch.contiguous_format), x.new_empty(*x.shape[:-1], wl.shape[0])


@torch.library.custom_op("rnnlab::elman_scan_beside_bwd", mutates_args=(),
                         schema="(Tensor g, Tensor w, Tensor h, Tensor x, Tensor wl, Tensor gl, bool need_dw, "
                                "bool need_dx, bool need_dwl, int[] options) -> (Tensor, Tensor, Tensor, Tensor)")
def _beside_bwd(g, w, h, x, wl, gl, need_dw, need_dx, need_dwl, options):
    """``(dpre, dW, dx, dwl)``: the scan's backward (as ``rnnlab::elman_scan_bwd`` without h0) and
    the projection's ``dx = gl @ wl`` and ``dwl = gl^T x`` (empty unless needed), those two beside
    a heads scan."""
    opts = ElmanKernelOptions.from_ints(options)
    dx, dwl = _beside_grads_like(x, wl, need_dx, need_dwl)
    flat, rows = gl.reshape(-1, gl.shape[-1]), x.reshape(-1, x.shape[-1])

    def projection():
        with torch.autocast(x.device.type, enabled=False):
            if need_dx:
                torch.mm(flat, wl, out=dx.view(-1, x.shape[-1]))
            if need_dwl:
                torch.mm(flat.t(), rows, out=dwl)

    (dpre, dw, _), _ = beside(functools.partial(_backward, g, w, h, None, need_dw, opts), projection,
                              _beside_sms(h, w, opts), h.device)
    return dpre, dw, dx, dwl


def _beside_grads_like(x, wl, need_dx, need_dwl):
    """``(dx, dwl)`` as the backward op returns them: contiguous, or empty when not needed."""
    return x.new_empty(x.shape if need_dx else (0,)), wl.new_empty(wl.shape if need_dwl else (0,))


@_beside_bwd.register_fake
def _(g, w, h, x, wl, gl, need_dw, need_dx, need_dwl, options):
    return (torch.empty_like(h, memory_format=torch.contiguous_format),
            torch.empty_like(w, memory_format=torch.contiguous_format), *_beside_grads_like(x, wl, need_dx, need_dwl))


def _beside_setup(ctx, inputs, output):
    _, w, x, wl, options = inputs
    ctx.options = options
    ctx.save_for_backward(w, output[0], x, wl)


def _beside_grads(ctx, g, gl):
    w, h, x, wl = ctx.saved_tensors
    need_dw, need_dx, need_dwl = ctx.needs_input_grad[1:4]
    dpre, dw, dx, dwl = _beside_bwd(g, w, h, x, wl, gl, need_dw, need_dx, need_dwl, ctx.options)
    return dpre, dw if need_dw else None, dx if need_dx else None, dwl if need_dwl else None, None


_beside_fwd.register_autograd(_beside_grads, setup_context=_beside_setup)


@traced
def elman_scan_beside_linear(wx: torch.Tensor, w_h: torch.Tensor, x: torch.Tensor, wl: torch.Tensor,
                             options: ElmanKernelOptions = DEFAULT
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h, h_T, x @ wl.T)``: :func:`elman_scan` from zeros and a projection that does not wait on
    it, which for heads ``w_h`` runs on a second stream beside the scan, forward and backward
    (``options.heads_beside``): E1 heads' gate projection. Under autocast the projection's
    operands are cast to its dtype first, as ``F.linear``'s would be."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dt = torch.get_autocast_dtype(device)
        x, wl = x.to(dt), wl.to(dt)
    wx_k, w_k = kernel_dtype(wx, w_h)
    h, z = _beside_fwd(wx_k, w_k, x, wl, options.to_ints())
    h = h.to(wx.dtype)
    return h, final_state(h, None), z
