"""E1's Triton kernels on CPU, in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1`` when
there is no GPU): the heads scan (forward; backward with dW accumulated in the kernel), the dense
per-step kernels, and the ``rnnlab::elman_scan_*`` custom ops that carry them through autograd
and torch.compile. fp32 inputs run the kernels' IEEE path; the reference is the float64 loop.
The GPU suite (tests/gpu) covers bf16/fp16, the fast tanh and the persistent kernel."""

from __future__ import annotations

import os

import pytest
import torch

from rnnlab.ops.elman import naive
from rnnlab.ops.elman.options import ElmanKernelOptions

pytestmark = [
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                       reason="runs the Triton interpreter (CPU-only machines)"),
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]

K = pytest.importorskip("rnnlab.ops.elman.triton")
TOL = dict(rtol=1e-5, atol=2e-5)


def _inputs(B, T, H, heads, h0, seed=0):
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(B, T, H, generator=g).requires_grad_()
    if heads:
        hd = H // heads
        w = (torch.randn(heads, hd, hd, generator=g) / hd**0.5).requires_grad_()
    else:
        w = (torch.randn(H, H, generator=g) / H**0.5).requires_grad_()
    hz = torch.randn(B, H, generator=g).requires_grad_() if h0 else None
    return [t for t in (wx, w, hz) if t is not None]


def _check(fn, B, T, H, heads, h0):
    leaves = _inputs(B, T, H, heads, h0)
    args = leaves if h0 else [*leaves, None]
    out = fn(*args)[0]
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, g)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = naive.elman_scan(*(ref_leaves if h0 else [*ref_leaves, None]))[0]
    want = torch.autograd.grad(ref, ref_leaves, g.double())
    torch.testing.assert_close(out, ref.float(), **TOL)
    for name, a, b in zip(("dwx", "dW", "dh0"), got, want):
        torch.testing.assert_close(a, b.float(), **TOL, msg=name)


# B = 17 leaves a partial second batch tile; hd = 24 is padded to 32 lanes; T = 1 has one step.
@pytest.mark.parametrize("B,T,heads,hd,h0", [(3, 6, 2, 16, False), (17, 5, 3, 24, True),
                                             (1, 1, 1, 16, True), (2, 4, 4, 8, False)])
def test_heads_kernel_matches_reference(B, T, heads, hd, h0):
    _check(K.elman_scan, B, T, heads * hd, heads, h0)


@pytest.mark.parametrize("B,T,H,h0", [(3, 5, 40, False), (1, 3, 24, True), (4, 1, 16, True)])
@pytest.mark.parametrize("bk", [16, 128])
def test_dense_step_kernels_match_reference(B, T, H, h0, bk):
    """The per-step kernel with the default options and with 16-wide K chunks (several per step)."""
    opts = ElmanKernelOptions(dense_bk=bk)
    _check(lambda *a: K.elman_scan(*a, options=opts), B, T, H, None, h0)


def test_heads_backward_skips_dw_when_not_needed():
    wx, w = _inputs(2, 3, 32, 2, False)
    (dwx,) = torch.autograd.grad(K.elman_scan(wx, w.detach())[0].sum(), [wx])
    (want,) = torch.autograd.grad(K.elman_scan(wx, w)[0].sum(), [wx])
    torch.testing.assert_close(dwx, want, rtol=0, atol=0)


@pytest.mark.parametrize("heads", [2, None])
def test_custom_ops_pass_opcheck(heads):
    """Schema, fake (meta) implementation and autograd registration agree with the real kernels."""
    wx, w, hz = _inputs(2, 3, 32, heads, True)
    options = ElmanKernelOptions().to_ints()
    torch.library.opcheck(torch.ops.rnnlab.elman_scan_fwd.default, (wx, w, hz, options))
    torch.library.opcheck(torch.ops.rnnlab.elman_scan_fwd.default, (wx, w, None, options))


@pytest.mark.parametrize("heads", [2, None])
def test_compiled_scan_is_one_graph(heads):
    """torch.compile traces the kernel entry point (fullgraph: no graph break) and matches eager."""
    import torch._dynamo

    torch._dynamo.reset()

    def f(wx, w, hz):
        return torch.sin(K.elman_scan(torch.cos(wx), w, hz)[0])

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    leaves = _inputs(2, 3, 32, heads, True)
    g = torch.randn(2, 3, 32)
    outs = []
    for fn in (f, compiled):
        out = fn(*leaves)
        outs.append((out, *torch.autograd.grad(out, leaves, g)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
