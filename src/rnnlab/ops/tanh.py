"""The tanh inside the Triton kernels of E1, E16 and E88: the exact exp form, or (``FAST``, 16-bit
inputs on a GPU only, :func:`fast_tanh_applies`; E1's and E88's kernels) the sm_75+ MUFU
approximation."""

import os

import torch
import triton
import triton.language as tl


def fast_tanh_applies(x: torch.Tensor) -> bool:
    """Whether a kernel on ``x`` may use the MUFU tanh: 16-bit inputs on a real GPU (not fp32,
    whose tests hold kernels to ~1e-6, nor fp64, computed in fp32, nor Triton's interpreter)."""
    return x.dtype in (torch.bfloat16, torch.float16) and x.is_cuda and not _interpreting()


def _interpreting() -> bool:
    """Whether Triton runs its interpreter, as Triton reads ``TRITON_INTERPRET`` (``0`` / ``false``: it
    compiles for the GPU)."""
    knobs = getattr(triton, "knobs", None)  # Triton 3.4+
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"  # earlier Triton's own test


@triton.jit
def tanh(x, FAST: tl.constexpr = False):
    if FAST:  # sm_75+ MUFU tanh, ~1e-3 relative error: only for 16-bit inputs
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:  # exact to fp32 rounding in absolute terms; saturates cleanly at +-1
        e = tl.exp(2.0 * x)
        return 1.0 - 2.0 / (e + 1.0)
