"""The tanh inside the Elman Triton kernels: the exact exp form, or (``FAST``, 16-bit inputs on a
GPU only, see ``ElmanKernelOptions.use_fast_tanh``) the sm_75+ MUFU approximation."""

import triton
import triton.language as tl


@triton.jit
def tanh(x, FAST: tl.constexpr = False):
    if FAST:  # sm_75+ MUFU tanh, ~1e-3 relative error: only for 16-bit inputs
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        e = tl.exp(2.0 * x)
        return 1.0 - 2.0 / (e + 1.0)
