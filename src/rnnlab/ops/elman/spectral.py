"""E1 heads' spectral norm in one GPU launch each way (Triton): the ``triton`` backend of
``spectral_norm`` (its reference, ``naive.spectral_norm``, runs what these kernels do not take).

E1 divides each head of its block-diagonal recurrent weight ``W: [n, hd, hd]`` by the head's largest
singular value ``sigma``, estimated by a few power iterations from a stored vector ``u``. In PyTorch every half-iteration is a batched matrix-vector
product, a norm and a division, so a layer's spectral norm is ~20 small kernels a training step
with its backward: ~600 launches in E1 heads d31's step, with the GPU idle between them
(``results/bound-h200`` call 15). Here one program a head holds the head's ``W`` in registers and
runs every iteration, ``sigma`` and the rescaling ``W_eff = r W / (sigma + 1e-8)``; the backward
(``W``'s gradient through ``W_eff``, with ``u`` and ``v`` constants as in the reference) is one
launch too. The arithmetic is fp32, as rnnlab's PyTorch reference's (the reference study's own
cell iterates in ``W``'s dtype, bf16 in its pure-bf16 runs: ``rnnlab.layers.e1``); outputs are
rounded to ``W``'s and ``u``'s dtypes. Heads of up to :data:`MAX_HEAD` channels.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from rnnlab.ops.elman import naive
from rnnlab.ops.registry import traced

__all__ = ["MAX_HEAD", "takes", "spectral_norm", "spectral_norm_heads"]

MAX_HEAD = 128  # channels a head: the head's W (up to 128 x 128 fp32) in one program's registers
EPS = 1e-8  # the reference's, in each normalisation and in r / (sigma + eps)


def takes(w: torch.Tensor) -> bool:
    """Whether the kernels run the spectral norm of ``w``: a CUDA ``[n, hd, hd]`` of a float dtype,
    ``hd <= MAX_HEAD``."""
    return w.is_cuda and w.dim() == 3 and w.shape[1] == w.shape[2] <= MAX_HEAD and w.dtype in (
        torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _head_tile(n, HD: tl.constexpr, BLOCK: tl.constexpr):
    """Head ``n``'s ``[BLOCK, BLOCK]`` tile of a contiguous ``[heads, HD, HD]``: row and column indices
    ``e``, ``d``, their masks, the tile's offsets and its mask."""
    e = tl.arange(0, BLOCK)  # rows of W
    d = tl.arange(0, BLOCK)  # columns
    me, md = e < HD, d < HD
    return e, d, me, md, n * HD * HD + e[:, None] * HD + d[None, :], me[:, None] & md[None, :]


@triton.jit
def _power(w, u, w_eff, u_out, uv_out, x_out, radius, iters, EPS: tl.constexpr, HD: tl.constexpr,
           BLOCK: tl.constexpr):
    """Head ``program_id``: ``iters`` power iterations ``v = W^T u / |.|``, ``u = W v / |.|``, then
    ``x = u^T W v`` (``sigma = |x|``) and ``W_eff = W r / (sigma + eps)``; stores ``W_eff``, the new
    ``u`` (``u``'s dtype), ``u`` and ``v`` in fp32 for the backward, and ``x``."""
    n = tl.program_id(0)
    e, d, me, md, offs, mask = _head_tile(n, HD, BLOCK)
    W = tl.load(w + offs, mask=mask, other=0.0).to(tl.float32)
    uu = tl.load(u + n * HD + e, mask=me, other=0.0).to(tl.float32)
    vv = tl.zeros([BLOCK], tl.float32)
    for _ in range(iters):
        vv = tl.sum(W * uu[:, None], axis=0)
        vv = vv / (tl.sqrt(tl.sum(vv * vv, axis=0)) + EPS)
        uu = tl.sum(W * vv[None, :], axis=1)
        uu = uu / (tl.sqrt(tl.sum(uu * uu, axis=0)) + EPS)
    x = tl.sum(uu * tl.sum(W * vv[None, :], axis=1), axis=0)
    scale = radius / (tl.abs(x) + EPS)
    tl.store(w_eff + offs, (W * scale).to(w_eff.dtype.element_ty), mask=mask)
    tl.store(u_out + n * HD + e, uu.to(u_out.dtype.element_ty), mask=me)
    tl.store(uv_out + n * 2 * HD + e, uu, mask=me)
    tl.store(uv_out + n * 2 * HD + HD + d, vv, mask=md)
    tl.store(x_out + n, x)


@triton.jit
def _power_bwd(g, w, uv, x_in, dw, radius, EPS: tl.constexpr, HD: tl.constexpr, BLOCK: tl.constexpr):
    """Head ``program_id``: ``dW = s G - r <G, W> / (sigma + eps)^2 sign(x) u v^T`` with ``s = r /
    (sigma + eps)``: the gradient of ``W_eff = W s`` where ``sigma = |u^T W v|`` depends on ``W``."""
    n = tl.program_id(0)
    e, d, me, md, offs, mask = _head_tile(n, HD, BLOCK)
    G = tl.load(g + offs, mask=mask, other=0.0).to(tl.float32)
    W = tl.load(w + offs, mask=mask, other=0.0).to(tl.float32)
    uu = tl.load(uv + n * 2 * HD + e, mask=me, other=0.0)
    vv = tl.load(uv + n * 2 * HD + HD + d, mask=md, other=0.0)
    x = tl.load(x_in + n)
    den = tl.abs(x) + EPS
    sign = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))
    c = tl.sum(tl.sum(G * W, axis=1), axis=0) * radius / (den * den) * sign
    grad = G * (radius / den) - c * (uu[:, None] * vv[None, :])
    tl.store(dw + offs, grad.to(dw.dtype.element_ty), mask=mask)


def _launch_args(w: torch.Tensor) -> dict:
    hd = w.shape[-1]
    return dict(EPS=EPS, HD=hd, BLOCK=max(16, triton.next_power_of_2(hd)), num_warps=8 if hd > 64 else 4)


@torch.library.custom_op("rnnlab::spectral_heads_fwd", mutates_args=(),
                         schema="(Tensor w, Tensor u, float radius, int iters) -> (Tensor, Tensor, Tensor, Tensor)")
def _fwd(w, u, radius, iters):
    """``(W_eff, u_new, uv, x)``: ``w: [n, hd, hd]``, ``u: [n, hd]``; ``uv: [n, 2, hd]`` fp32 (u, v),
    ``x: [n]`` fp32 (``u^T W v``)."""
    w, u = w.contiguous(), u.contiguous()
    n = w.shape[0]
    w_eff, u_new = torch.empty_like(w), torch.empty_like(u)
    uv = w.new_empty(n, 2, w.shape[-1], dtype=torch.float32)
    x = w.new_empty(n, dtype=torch.float32)
    if n:
        with torch.cuda.device(w.device) if w.is_cuda else contextlib.nullcontext():
            _power[(n,)](w, u, w_eff, u_new, uv, x, float(radius), int(iters), **_launch_args(w))
    return w_eff, u_new, uv, x


@_fwd.register_fake
def _(w, u, radius, iters):
    return (torch.empty_like(w, memory_format=torch.contiguous_format),
            torch.empty_like(u, memory_format=torch.contiguous_format),
            w.new_empty(w.shape[0], 2, w.shape[-1], dtype=torch.float32), w.new_empty(w.shape[0], dtype=torch.float32))


@torch.library.custom_op("rnnlab::spectral_heads_bwd", mutates_args=(),
                         schema="(Tensor g, Tensor w, Tensor uv, Tensor x, float radius) -> Tensor")
def _bwd(g, w, uv, x, radius):
    """``W``'s gradient (``w``'s dtype) from ``g = dL/dW_eff``."""
    g, w = g.contiguous(), w.contiguous()
    dw = torch.empty_like(w)
    if w.shape[0]:
        with torch.cuda.device(w.device) if w.is_cuda else contextlib.nullcontext():
            _power_bwd[(w.shape[0],)](g, w, uv, x, dw, float(radius), **_launch_args(w))
    return dw


@_bwd.register_fake
def _(g, w, uv, x, radius):
    return torch.empty_like(w, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    w, _, radius, _ = inputs
    ctx.radius = radius
    ctx.save_for_backward(w, output[2], output[3])


def _grads(ctx, g, *_):
    w, uv, x = ctx.saved_tensors
    return _bwd(g, w, uv, x, ctx.radius), None, None, None


_fwd.register_autograd(_grads, setup_context=_setup)


def spectral_norm_heads(w: torch.Tensor, u: torch.Tensor, radius: float, iters: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_eff, u_new)``: each head of ``w: [n, hd, hd]`` scaled to spectral norm ``radius`` by
    ``iters`` power iterations from ``u: [n, hd]`` (as ``naive.spectral_norm``), differentiable in
    ``w``; ``u_new`` in ``u``'s dtype (the caller stores it)."""
    w_eff, u_new, _, _ = _fwd(w, u, radius, iters)
    return w_eff, u_new


@traced  # custom ops and, for the rest, the reference's few products: one graph under torch.compile
def spectral_norm(w: torch.Tensor, u: torch.Tensor, radius: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's GPU entry point: the kernels for what they :func:`take <takes>`, else the reference
    (dense ``[H, H]``, heads over :data:`MAX_HEAD`, fp64)."""
    if takes(w):
        return spectral_norm_heads(w, u, radius, iters)
    return naive.spectral_norm(w, u, radius, iters)
