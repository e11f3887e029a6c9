"""GPU scans of E1's selective variants, forward and backward: the ``triton`` backend of
``elman_decay_scan`` (``h_t = tanh(wx_t + a_t * (h_{t-1} @ W^T))``) and ``elman_lowrank_scan``
(``h_t = tanh(wx_t + h_{t-1} @ W^T + ((h_{t-1} @ V) * s_t) @ U^T)``). The selective terms are
computed inside the same fused programs as E1's plain scan (no loop over time in Python but the
CUDA-graphed per-step launches):

* **decay, heads** ``w_h: [nh, hd, hd]``: ``heads.py`` (W_head on chip for all T; the decay is
  one more operand per step; the backward recomputes ``h_{t-1} @ W^T`` on chip for ``da``); heads
  wider than 128 channels as their block-diagonal matrix on the dense kernels (next).
* **decay, dense**: the persistent CUDA kernel (bf16/fp16, when the shape fits; ``a_t`` one more
  epilogue operand, the backward's exchanged state ``q = a * dpre``), else the per-step kernel of
  ``dense_step.py`` with the decay in its epilogue.
* **low-rank** (dense or heads): the persistent CUDA kernel's low-rank build (bf16/fp16, ranks
  1-16, when the shape fits: ``h_{t-1} @ V`` beside W's product in the same K tiles, the term
  added in the epilogue), else the per-step kernel (the rank-r product in the same K loop).
  Heads run it as their block-diagonal dense matrix: the rank-r term couples every head at every
  step, so one head's program cannot compute ``h_{t-1} @ V`` alone (docs/kernels.md: the
  predicted cost of each path).

The rest of the backward is parallel over time, one GEMM or elementwise pass each, with
``q_t = a_t * dpre_t`` the gradient of the recurrent term (decay) and, for the low-rank term,
``p_t = h_{t-1} @ V``, ``e_t = dpre_t @ U``:
decay ``dW = sum q_t^T h_{t-1}``, ``dh0 = q_0 @ W``, ``da_t = dpre_t * (h_{t-1} @ W^T)``;
low-rank ``dW = sum dpre_t^T h_{t-1}``, ``dU = sum dpre_t^T (p_t * s_t)``,
``dV = sum h_{t-1}^T (e_t * s_t)``, ``ds_t = e_t * p_t``, ``dh0 = dpre_0 @ W + (e_0 * s_0) @ V^T``.

Both variants sit behind one pair of ``torch.library`` custom ops (``rnnlab::elman_selective_fwd``
/ ``_bwd``, the decay ``a`` or the low-rank ``U, V, s`` given) with a registered autograd
formula, so torch.compile keeps a selective E1 model in one graph, as for the plain scan. Kernel
options, dtypes and precision as in ``rnnlab.ops.elman.triton``.
"""

from __future__ import annotations

import functools

import torch

from rnnlab.ops.elman import heads
from rnnlab.ops.elman.options import DEFAULT, ElmanKernelOptions
from rnnlab.ops.elman.triton import dense_dpre, dense_forward, dw_dense, kernel_dtype
from rnnlab.ops.registry import final_state, traced

__all__ = ["elman_decay_scan", "elman_lowrank_scan"]


def _previous(x: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    """``x: [B, T, D]`` one step later in time: ``out[:, t] = x[:, t-1]``, ``out[:, 0] = first``
    (zeros when None)."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if first is None else first[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


def _lowrank_operands(U, V, s, dt):
    return U.to(dt).contiguous(), V.to(dt).contiguous(), s.contiguous()


def _forward(wx, w, a, U, V, s, h0, opts: ElmanKernelOptions) -> torch.Tensor:
    dt = wx.dtype
    if U is None and heads.runs(w):
        return heads.forward(wx, w, h0, opts, a=a)
    lowrank = None
    if U is not None:
        U, V, s = _lowrank_operands(U, V, s, dt)
        lowrank = (V, U, s)
    a = None if a is None else a.to(dt).contiguous()
    return dense_forward(wx, heads.block_diagonal(w), h0, opts, a=a, lowrank=lowrank)


def _decay_backward(g, w, a, h, h0, opts: ElmanKernelOptions):
    """``(dwx, dW, dh0, da)`` of the decay scan (T, B > 0)."""
    if heads.runs(w):
        return heads.backward(g, w, h, h0, True, opts, a=a)
    wk = heads.block_diagonal(w).to(h.dtype).contiguous()
    dpre, q = dense_dpre(g.contiguous(), wk, h, opts, a=a.to(h.dtype).contiguous())
    h0c = None if h0 is None else h0.to(h.dtype)
    r = _previous(h @ wk.t(), None if h0c is None else h0c @ wk.t())  # r_t = h_{t-1} @ W^T
    dh0 = q[:, 0].float() @ wk.float()
    return dpre, heads.head_blocks(dw_dense(q, h, h0c), w).to(w.dtype), dh0, (dpre * r).to(a.dtype)


def _lowrank_backward(g, w, U, V, s, h, h0, opts: ElmanKernelOptions):
    """``(dwx, dW, dh0, dU, dV, ds)`` of the low-rank scan (T, B > 0)."""
    dt = h.dtype
    wk = heads.block_diagonal(w).to(dt).contiguous()
    Uk, Vk, s = _lowrank_operands(U, V, s, dt)
    dpre, _ = dense_dpre(g.contiguous(), wk, h, opts, lowrank=(Uk, Vk, s))
    h0c = None if h0 is None else h0.to(dt)
    p = _previous(h @ Vk, None if h0c is None else h0c @ Vk).float()  # p_t = h_{t-1} @ V
    e = (dpre @ Uk).float()  # dL/d(p_t * s_t)
    sf = s.float()
    es = e * sf
    dW = dw_dense(dpre, h, h0c)
    dU = dpre.reshape(-1, dpre.shape[-1]).t() @ (p * sf).to(dt).reshape(-1, p.shape[-1])
    dV = dw_dense(es.to(dt), h, h0c).t().contiguous()  # the fake kernel promises contiguous grads
    dh0 = dpre[:, 0].float() @ wk.float() + es[:, 0] @ Vk.float().t()
    return (dpre, heads.head_blocks(dW, w).to(w.dtype), dh0, dU.to(U.dtype), dV.to(V.dtype),
            (e * p).to(s.dtype))


def _zero_grads(g, w, a, U, V, s, h0):
    """The backward's outputs for an empty sequence or batch (nothing flows), contiguous as the fake
    kernel promises."""
    B, _, H = g.shape
    zeros = functools.partial(torch.zeros_like, memory_format=torch.contiguous_format)
    return (zeros(g), zeros(w), g.new_zeros(B, H, dtype=torch.float32),
            *(g.new_empty(0) if x is None else zeros(x) for x in (a, U, V, s)))


# ------------------------------------------------------------------------ torch.library ops
@torch.library.custom_op("rnnlab::elman_selective_fwd", mutates_args=(),
                         schema="(Tensor wx, Tensor w, Tensor? a, Tensor? U, Tensor? V, Tensor? s, Tensor? h0, "
                                "int[] options) -> Tensor")
def _scan_fwd(wx, w, a, U, V, s, h0, options):
    """All states ``h`` (``wx``'s dtype) of the decay scan (``a`` given) or the low-rank scan
    (``U, V, s`` given); ``options`` = ``ElmanKernelOptions.to_ints()``."""
    return _forward(wx, w, a, U, V, s, h0, ElmanKernelOptions.from_ints(options))


@_scan_fwd.register_fake
def _(wx, w, a, U, V, s, h0, options):
    return torch.empty_like(wx, memory_format=torch.contiguous_format)


@torch.library.custom_op("rnnlab::elman_selective_bwd", mutates_args=(),
                         schema="(Tensor g, Tensor w, Tensor? a, Tensor? U, Tensor? V, Tensor? s, Tensor h, "
                                "Tensor? h0, int[] options) "
                                "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
def _scan_bwd(g, w, a, U, V, s, h, h0, options):
    """``(dwx, dW, dh0, da, dU, dV, ds)``: dwx in ``h``'s dtype, dh0 ``[B, H]`` fp32 (zeros without
    ``h0``), the others in their input's dtype; those of absent inputs are empty."""
    B, T, _ = h.shape
    if T == 0 or B == 0:
        return _zero_grads(g, w, a, U, V, s, h0)
    h = h.contiguous()  # the kernels read it so
    opts = ElmanKernelOptions.from_ints(options)
    if a is not None:
        return (*_decay_backward(g, w, a, h, h0, opts), *(h.new_empty(0) for _ in range(3)))
    dwx, dW, dh0, dU, dV, ds = _lowrank_backward(g, w, U, V, s, h, h0, opts)
    return dwx, dW, dh0, h.new_empty(0), dU, dV, ds


@_scan_bwd.register_fake
def _(g, w, a, U, V, s, h, h0, options):
    return (torch.empty_like(h, memory_format=torch.contiguous_format),
            torch.empty_like(w, memory_format=torch.contiguous_format),
            h.new_empty(h.shape[0], h.shape[2], dtype=torch.float32),
            *(h.new_empty(0) if x is None else torch.empty_like(x, memory_format=torch.contiguous_format)
              for x in (a, U, V, s)))


def _scan_setup(ctx, inputs, output):
    _, w, a, U, V, s, h0, options = inputs
    ctx.options = options
    ctx.save_for_backward(w, a, U, V, s, output, h0)


def _scan_grads(ctx, g):
    w, a, U, V, s, h, h0 = ctx.saved_tensors
    dwx, dW, dh0, *extra = _scan_bwd(g, w, a, U, V, s, h, h0, ctx.options)
    da, dU, dV, ds = (None if x is None else dx for x, dx in zip((a, U, V, s), extra))
    return dwx, dW, da, dU, dV, ds, None if h0 is None else dh0.to(h0.dtype), None


_scan_fwd.register_autograd(_scan_grads, setup_context=_scan_setup)


def _scan(wx, w_h, a, U, V, s, h0, options: ElmanKernelOptions) -> tuple[torch.Tensor, torch.Tensor]:
    h = _scan_fwd(*kernel_dtype(wx, w_h, a, U, V, s, h0), options.to_ints()).to(wx.dtype)
    return h, final_state(h, h0)


@traced
def elman_decay_scan(wx: torch.Tensor, w_h: torch.Tensor, a: torch.Tensor, h0: torch.Tensor | None = None,
                     options: ElmanKernelOptions = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of ``h_t = tanh(wx_t + a_t * (h_{t-1} @ w_h.T))`` (dense or heads ``w_h``), run
    with ``options``; traced by torch.compile (only dtype handling and the custom op)."""
    return _scan(wx, w_h, a, None, None, None, h0, options)


@traced
def elman_lowrank_scan(wx: torch.Tensor, w_h: torch.Tensor, U: torch.Tensor, V: torch.Tensor, s: torch.Tensor,
                       h0: torch.Tensor | None = None, options: ElmanKernelOptions = DEFAULT
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, h_T)`` of ``h_t = tanh(wx_t + h_{t-1} @ w_h.T + ((h_{t-1} @ V) * s_t) @ U.T)``, run with
    ``options``; traced by torch.compile."""
    return _scan(wx, w_h, None, U, V, s, h0, options)
