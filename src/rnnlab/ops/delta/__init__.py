"""The gated delta rule (Gated DeltaNet's recurrence), see ``naive.py`` for the math.

``gated_delta_scan(q, k, v, g, beta, S0=None, backend="auto") -> (o, S_T)`` with
``q, k [B, T, H, K]`` (k unit-norm for a stable rule), ``v [B, T, H, V]``, ``g [B, T, H]`` (log
decay, <= 0), ``beta [B, T, H]`` (in (0, 1)), ``S0 [B, H, K, V]`` or None (zeros); ``o`` in
``q``'s dtype, ``S_T`` in the compute dtype. Backends (``rnnlab.ops.registry``): ``"naive"`` (the
sequential reference loop), ``"triton"`` (fla's chunked kernel, CUDA only, from the ``fla-core``
package) and ``"auto"``.

The official Gated DeltaNet layer (fla's own module, ``GatedDeltaNetConfig.backend="official"``)
calls fla's kernels itself; this op is what the reference layer and every layer's ``step`` run.
Both train through fla's chunked backward, which fla itself refuses on some GPU and Triton
combinations: ``fla_backward_refusal()`` says why, before a run starts.
"""

from __future__ import annotations

import importlib
import os

import torch

from rnnlab.ops.delta import naive
from rnnlab.ops.registry import Op, register
from rnnlab.signals import is_ctrl_c

__all__ = ["gated_delta_scan", "fla_backward_refusal", "BACKENDS"]

GATED_DELTA_SCAN = register(Op("gated_delta_scan", naive.gated_delta_scan, "rnnlab.ops.delta.triton"))
BACKENDS = GATED_DELTA_SCAN.backends


def gated_delta_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     S0: torch.Tensor | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, S_T)`` of ``S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T``, ``a_t = exp(g_t)``,
    ``o_t = S_t^T q_t``."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be [B, T, H, K] and v [B, T, H, V], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if g.shape != q.shape[:3] or beta.shape != q.shape[:3]:
        raise ValueError(f"g and beta must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(g.shape)} "
                         f"and {tuple(beta.shape)}")
    state = (q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    if S0 is not None and S0.shape != state:
        raise ValueError(f"S0 must be [B, H, K, V] = {state}, got {tuple(S0.shape)}")
    return GATED_DELTA_SCAN(q, k, v, g, beta, S0, backend=backend)


def fla_backward_refusal() -> str | None:
    """Why fla's chunked gated delta rule refuses its backward on this machine, or None (it trains,
    or fla is not installed).

    fla 0.6 raises at the first backward on Hopper GPUs (H100, H200) with Triton >= 3.4 and < 3.7.1:
    Triton miscompiles its ``chunk_bwd_dqkwg`` kernel into wrong gradients (fla issue #640), unless
    its TileLang kernel stands in (package ``tilelang``, with nvcc; not with fla's
    ``FLA_DISABLE_BACKEND_DISPATCH=1``). fla's own flags decide, so this answer follows fla's check;
    ``tests/gpu`` asserts that fla raises exactly when it says so.
    """
    try:
        import triton
        from fla.ops.common.backends.tilelang import CommonTileLangBackend
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    except ImportError:
        return None
    if not (IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1):
        return None
    tilelang = CommonTileLangBackend()  # the kernel fla dispatches to instead, when usable and enabled
    dispatch = os.environ.get("FLA_DISABLE_BACKEND_DISPATCH") != "1"
    if dispatch and tilelang.is_available() and tilelang.is_enabled():
        try:  # fla only looks for the package: a broken install would fail at the first backward
            importlib.import_module("tilelang")
        except Exception as e:  # any import failure, whatever its kind (not a Ctrl-C pybind11 made one)
            if is_ctrl_c(e):
                raise
            return f"fla would run its TileLang kernel here (fla issue #640), but tilelang does not import: {e!r}"
        return None
    return (f"fla refuses the gated delta rule's backward on Hopper GPUs with Triton {triton.__version__} "
            "(a Triton miscompile gives wrong gradients, fla issue #640): install tilelang (fla then runs "
            "its TileLang kernel"
            + ("" if dispatch else "; unset FLA_DISABLE_BACKEND_DISPATCH") + ") or Triton >= 3.7.1")
