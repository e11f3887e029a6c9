"""Each block's residual add and pre-norm LayerNorm, ``residual = residual + hidden; hidden =
LayerNorm(residual)``, as plain PyTorch ops or as one fused kernel each way.

Run eager on a GPU, the plain ops are two memory-bound kernels forward (the add, LayerNorm) and
three backward (LayerNorm's input and weight gradients, and autograd's sum of the residual
stream's two gradients), each reading or writing ``[B, T, dim]`` two or three times: 7.7 ms of
minGRU's 70-ms step at 400M (``results/step-profile-h200``). ``fused`` runs fla's LayerNorm with
its residual input (``fla.modules.norm.layernorm.layer_norm(..., residual=..., prenorm=True)``,
the fused add-norm of mamba_ssm's and fla's own models): one Triton kernel forward, one backward. ``torch.compile``
fuses the plain ops itself (Inductor), so the option is for models trained eager.

The two forms compute the same residual stream (the sum rounded to the stream's dtype) and
LayerNorm; in 16-bit the fused kernel normalises the sum before that rounding, so its output
may differ from the plain one by the dtype's rounding. Its output takes the sub-block output's
dtype (under bf16-mixed autocast: bf16, where the plain LayerNorm gives fp32); the stream keeps
the stream's.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnlab.ops.registry import LazyKernel, opaque

FLA_LAYER_NORM = LazyKernel("fla.modules.norm.layernorm")


def add_layer_norm(hidden: torch.Tensor | None, residual: torch.Tensor, norm: nn.LayerNorm,
                   fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(norm(residual + hidden), residual + hidden)``; ``hidden=None`` adds nothing (the first
    block). ``fused`` on CUDA tensors: fla's kernel (raises when fla does not import); elsewhere,
    and without ``fused``, the plain ops."""
    if fused and residual.is_cuda:
        return _fla_add_layer_norm(hidden, residual, norm.weight, norm.bias, norm.eps)
    if hidden is not None:
        residual = residual + hidden
    return norm(residual), residual


def fused_add_norm_blocker(device: torch.device) -> str | None:
    """Why ``fused_add_norm`` cannot run on ``device``, or None (off CUDA it runs the plain ops)."""
    return None if device.type != "cuda" or FLA_LAYER_NORM.available() else _needs_fla()


def _needs_fla() -> str:
    return f"fused_add_norm needs fla on CUDA (pip install fla-core; {FLA_LAYER_NORM.error}); or leave it off"


@opaque  # under torch.compile one call (Inductor fuses the plain ops instead)
def _fla_add_layer_norm(hidden, residual, weight, bias, eps):
    fla = FLA_LAYER_NORM.get()
    if fla is None:
        raise RuntimeError(_needs_fla())
    if hidden is None:
        return fla.layer_norm(residual, weight, bias, eps=eps, prenorm=True)
    return fla.layer_norm(hidden, weight, bias, residual=residual, eps=eps, prenorm=True)
