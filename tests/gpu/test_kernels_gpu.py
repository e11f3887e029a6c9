"""GPU checks: every Triton kernel against its naive reference (forward and ALL gradients), and
every layer's CUDA path against its CPU reference with the same weights.

Run on a GPU machine with ``pytest -m gpu tests/gpu -s`` (``-s`` prints the measured errors).
Errors are ``||a - b|| / ||b||`` against a float64 reference on the same (rounded) inputs; the ops'
checks (``_check_op``) also bound ``max|a - b| / max|b|`` by 5x the tolerance, which one wrong element
(a partial tile's mask, the last time step) moves where the norm hides it among the rest.
Tolerances: fp32 kernels 1e-4 (IEEE fp32 products), bf16/fp16 kernels 2e-2 (16-bit stores of h / grads),
fp32 layers 1e-4 (layers whose CUDA path uses TF32 or fused library kernels have their own,
stated next to them).
"""

from __future__ import annotations

import copy
import os
import re

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

DEV = "cuda"
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``: the largest error of one element, against the reference's scale."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def _check_op(name, fn_fast, fn_ref, inputs, dtype, tol=None, fp32_inputs=(), refused=None):
    """inputs: list of fp32 CPU tensors or None. Fast path gets them in ``dtype`` on CUDA (those at
    the positions ``fp32_inputs`` stay fp32, as their layer passes them); the reference gets the
    same rounded values in float64 on CPU. Both return ``(h, h_T)``: h, the final state and every
    input gradient (through h and through the final state, as when a sequence runs in pieces, each
    piece's final state the next one's h0) are compared. ``refused``: the fast path's library refuses its
    backward on this machine (the reason, e.g. ``fla_backward_refusal()``): the outputs are
    compared and the backward must raise."""
    tol = TOL[dtype] if tol is None else tol
    inputs = [x if x is None or i in fp32_inputs else x.to(dtype) for i, x in enumerate(inputs)]
    fast = [None if x is None else x.to(DEV).requires_grad_() for x in inputs]
    ref = [None if x is None else x.double().requires_grad_() for x in inputs]
    y, y_last = fn_fast(*fast)
    yr, yr_last = fn_ref(*ref)
    assert y.dtype == dtype and y.shape == yr.shape and y_last.dtype == torch.float32
    if refused:
        _assert_backward_refused(name, y, [rel(y, yr), rel(y_last, yr_last)], tol, refused)
        return
    g, g_last = torch.randn(yr.shape).to(dtype), torch.randn(yr_last.shape)  # as the fast path's outputs round
    gf = torch.autograd.grad((y, y_last), [x for x in fast if x is not None], (g.to(DEV), g_last.to(DEV)))
    gr = torch.autograd.grad((yr, yr_last), [x for x in ref if x is not None], (g.double(), g_last.double()))
    pairs = [(y, yr), (y_last, yr_last), *zip(gf, gr)]
    errs, worst = [rel(a, b) for a, b in pairs], [rel_max(a, b) for a, b in pairs]
    print(f"{name} {str(dtype)[6:]}: fwd {errs[0]:.2e} final {errs[1]:.2e} grads "
          + " ".join(f"{e:.2e}" for e in errs[2:]) + "; one element at most " + " ".join(f"{e:.1e}" for e in worst))
    assert max(errs) < tol and max(worst) < 5 * tol, (name, errs, worst)
    return errs


def _assert_backward_refused(name, y, errs, tol, reason):
    """The outputs (``errs``) within ``tol``, and the backward of ``y`` raising as ``reason`` says."""
    print(f"{name}: outputs " + " ".join(f"{e:.2e}" for e in errs) + f"; backward refused: {reason}")
    assert max(errs) < tol, (name, errs)
    with pytest.raises(RuntimeError, match="incorrect results"):
        y.float().sum().backward()


# H not a multiple of 64, B = 1, T = 1 (H = 64 and 200 bf16: the forward by TMA, a 16-step tile past T)
SHAPES = [(2, 33, 100), (1, 17, 64), (3, 64, 200), (3, 1, 200)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_linear_scan(dtype, shape, with_h0):
    from rnnlab.ops.scan import linear_scan, naive

    torch.manual_seed(hash((shape, with_h0)) % 1000)
    B, T, H = shape
    a = torch.rand(B, T, H) * 0.5 + 0.5
    b = torch.randn(B, T, H)
    h0 = torch.randn(B, H) if with_h0 else None
    _check_op("linear_scan", lambda a, b, h: linear_scan(a, b, h, backend="triton"),
              naive.linear_scan, [a, b, h0], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_diag_elman(dtype, shape, with_h0):
    from rnnlab.ops.diag import diag_elman_scan, naive

    torch.manual_seed(hash((shape, with_h0)) % 1000 + 1)
    B, T, S = shape
    u = torch.randn(B, T, S)
    a = torch.rand(S)
    h0 = torch.randn(B, S).tanh() if with_h0 else None
    _check_op("diag_elman", lambda u, a, h: diag_elman_scan(u, a, h, backend="triton"),
              naive.diag_elman_scan, [u, a, h0], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("which", ["mingru", "minlstm"])
def test_fused_min_scan(dtype, shape, with_h0, which):
    """Fused gate + scan kernels (raw projection in, h out) vs the ops' references (gates, then
    the naive scan) in float64."""
    from rnnlab.ops.scan import naive
    from rnnlab.ops.scan import triton as st

    torch.manual_seed(hash((shape, with_h0, which == "mingru")) % 1000 + 3)
    B, T, H = shape
    G = 2 if which == "mingru" else 3
    p = torch.randn(B, T, G * H) * 2
    h0 = torch.randn(B, H) if with_h0 else None
    _check_op(which + "_scan", getattr(st, which + "_scan"), getattr(naive, which + "_scan"), [p, h0], dtype)


@pytest.mark.parametrize("G,H", [(1, 64), (2, 3520), (3, 2880), (3, 100)])
def test_scans_read_by_tma_where_the_gpu_has_it(G, H):
    """On a GPU with the tensor memory accelerator (Hopper on), the scans at the models' layouts
    (minGRU 3520 channels, minLSTM 2880, bf16) take the TMA forward, which the value tests above
    then check (H = 64, 200); a slice not 16-byte aligned (H = 100 bf16) takes the pointer kernel."""
    from rnnlab.ops.scan import triton as st

    x = torch.randn(2, 40, G * H, device=DEV, dtype=torch.bfloat16)
    descs = st._tma_descriptors(st._views(x, G, H) if G > 1 else [x] * 3, G * H, (2, 40, H), st.BLOCK)
    tma = torch.cuda.get_device_capability()[0] >= 9 and torch.version.hip is None and H % 8 == 0
    assert (descs is not None) == tma


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("which", ["mingru", "minlstm"])
def test_fused_min_scan_saturated(dtype, which):
    """The fused gates where they saturate (pre-activations to ~±200, and a minLSTM step with both
    gates at -100): finite, and the float64 reference's values and gradients."""
    from rnnlab.ops.scan import naive
    from rnnlab.ops.scan import triton as st

    torch.manual_seed(11)
    G = 2 if which == "mingru" else 3
    H = 300
    p = torch.randn(3, 37, G * H) * 60
    p[0, 5, H:] = -100.0
    _check_op(which + "_scan", getattr(st, which + "_scan"), getattr(naive, which + "_scan"), [p, None], dtype)


ELMAN_CASES = [
    # (B, T, H, heads)  heads=0 -> dense; T = 1 on the per-step dense kernel and the Triton heads kernel;
    # H = 2560 (race-400m's E1 exp2.5, B = 32): too wide for the persistent kernel, the per-step one in 20 K chunks
    (2, 33, 100, 0), (1, 17, 64, 0), (5, 40, 257, 0), (70, 9, 96, 0), (3, 1, 257, 0), (32, 12, 2560, 0),
    (2, 33, 96, 3), (1, 20, 64, 1), (3, 50, 224, 7), (20, 24, 256, 2), (4, 16, 112, 4), (2, 1, 96, 3),
    (64, 16, 992, 8),  # e1-ablations' e1-heads8 (dim 992, B = 64): heads of 124, the Triton kernels' 128 lanes
    (2, 9, 400, 2),  # heads of 200 (256 lanes): past the heads kernels, on the dense ones as a block-diagonal W
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ELMAN_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_elman(dtype, case, with_h0):
    from rnnlab.ops.elman import elman_scan, naive

    torch.manual_seed(hash((case, with_h0)) % 1000 + 2)
    B, T, H, nh = case
    wx = torch.randn(B, T, H)
    if nh == 0:
        w = torch.randn(H, H) * (0.9 / H**0.5)
    else:
        hd = H // nh
        w = torch.randn(nh, hd, hd) * (0.9 / hd**0.5)
    h0 = torch.randn(B, H).tanh() if with_h0 else None
    _check_op(f"elman{'_heads' if nh else '_dense'}{case}",
              lambda x, w, h: elman_scan(x, w, h, backend="triton"), naive.elman_scan, [wx, w, h0], dtype)


# (B, T, heads, hd): T = 1, T of every remainder by the loops' six steps (1, 5, 3, 2, 0, 0 ...);
# B = 1, partial batch tiles (3, 5, 17) and two tiles (32); both head widths the Gluon kernels take
HEADS_GLUON_CASES = [(32, 64, 14, 128), (3, 37, 2, 128), (1, 1, 1, 128), (5, 50, 3, 64), (2, 12, 1, 128),
                     (4, 5, 2, 64), (5, 9, 3, 64), (2, 18, 2, 64), (17, 300, 4, 128)]


def _check_heads_gluon(monkeypatch, case, with_h0, dtype, **options):
    """The Gluon heads kernels with kernel ``options`` against the float64 reference: outputs,
    final state and every gradient; and the scan did run on them, forward and backward, with dW
    summed after the backward by ``heads.weight_gradient`` exactly at 128 channels a head with
    ``heads_dw_rows`` > 0 (else in the backward's loop)."""
    from rnnlab.ops.elman import heads, heads_gluon, naive
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    ran = []
    for module, name in ((heads_gluon, "forward"), (heads_gluon, "backward"), (heads, "weight_gradient")):
        fn = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _fn=fn, _name=name: ran.append(_name) or _fn(*a))
    torch.manual_seed(hash((case, with_h0, *options.values())) % 1000 + 5)
    B, T, nh, hd = case
    wx = torch.randn(B, T, nh * hd)
    w = torch.randn(nh, hd, hd) * (0.9 / hd**0.5)
    h0 = torch.randn(B, nh * hd).tanh() if with_h0 else None
    opts = ElmanKernelOptions(**options)
    _check_op(f"elman_heads_gluon{options}{case}", lambda x, w, h: et.elman_scan(x, w, h, opts),
              naive.elman_scan, [wx, w, h0], dtype)
    after = hd == 128 and opts.heads_dw_rows > 0
    assert ran == ["forward", "backward"] + (["weight_gradient"] if after else [])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", HEADS_GLUON_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_elman_heads_gluon(dtype, case, with_h0, monkeypatch):
    """The Gluon heads kernels as the package runs them (input rings of 6 tiles), bf16 and fp16."""
    _check_heads_gluon(monkeypatch, case, with_h0, dtype)


@pytest.mark.parametrize("ring", [2, 3])
@pytest.mark.parametrize("case", [(3, 37, 2, 128), (1, 1, 1, 128), (2, 12, 1, 128), (4, 5, 2, 64), (17, 300, 4, 128)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_elman_heads_gluon_rings(ring, case, with_h0, monkeypatch):
    """The Gluon heads kernels with their other input rings (inputs copied 1 or 2 steps ahead), bf16."""
    _check_heads_gluon(monkeypatch, case, with_h0, torch.bfloat16, heads_gluon_ring=ring)


@pytest.mark.parametrize("rows", [0, 32])
@pytest.mark.parametrize("case", [(32, 64, 14, 128), (3, 37, 2, 128), (1, 1, 1, 128), (17, 300, 4, 128)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_elman_heads_gluon_dw_rows(rows, case, with_h0, monkeypatch):
    """The Gluon backward at 128 channels with dW_h summed in its loop (``heads_dw_rows=0``) and
    after it by ``heads.weight_gradient`` in chunks of 32 rows (many partials; the package's 1024
    run in ``test_elman_heads_gluon``), bf16, against the float64 reference."""
    _check_heads_gluon(monkeypatch, case, with_h0, torch.bfloat16, heads_dw_rows=rows)


@pytest.mark.parametrize("case", [(32, 64, 14, 128, 1792), (1, 37, 2, 128, 200), (3, 50, 4, 64, 96), (17, 9, 3, 48, 72)])
@pytest.mark.parametrize("side_stream", [True, False])
def test_elman_scan_beside_linear(case, side_stream, monkeypatch):
    """E1 heads' scan with its gate projection ``x @ wl.T`` beside it (``heads_beside``: a second
    stream, the GEMMs on cuBLASLt sized for the SMs the scan leaves; off: one after the other),
    bf16, against float64: states, final state, projection and every input's gradient; the second
    stream ran, forward and backward, exactly when on; PyTorch's carveout and BLAS library are as
    before."""
    from rnnlab.ops import streams
    from rnnlab.ops.elman import naive
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    used = []
    make_stream = streams._side_stream
    monkeypatch.setattr(streams, "_side_stream", lambda device: used.append(device) or make_stream(device))
    B, T, nh, hd, D = case
    torch.manual_seed(B * 1000 + T)
    inputs = [torch.randn(B, T, nh * hd), torch.randn(nh, hd, hd) * (0.9 / hd**0.5), torch.randn(B, T, D),
              torch.randn(nh * hd, D) / D**0.5]
    fast = [x.to(torch.bfloat16).to(DEV).requires_grad_() for x in inputs]
    ref = [x.to(torch.bfloat16).double().requires_grad_() for x in inputs]
    settings = torch._C._get_sm_carveout_experimental(), torch.backends.cuda.preferred_blas_library()
    got = et.elman_scan_beside_linear(*fast, ElmanKernelOptions(heads_beside=side_stream))
    want = naive.elman_scan_beside_linear(*ref)
    grads = [torch.randn(y.shape, dtype=torch.float64) for y in want]
    errs = [rel(a, b) for a, b in zip(got, want)]
    errs += [rel(a, b) for a, b in zip(torch.autograd.grad(got, fast, [g.to(y.dtype).to(DEV) for g, y in zip(grads, got)]),
                                        torch.autograd.grad(want, ref, grads))]
    print(f"elman_scan_beside_linear{case} side stream {side_stream}: " + " ".join(f"{e:.2e}" for e in errs))
    assert max(errs) < TOL[torch.bfloat16], errs
    assert len(used) == (2 if side_stream else 0)
    assert (torch._C._get_sm_carveout_experimental(), torch.backends.cuda.preferred_blas_library()) == settings


@pytest.mark.parametrize("n, hd, iters", [(14, 128, 3), (28, 64, 3), (3, 24, 1), (5, 100, 7)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_spectral_norm_heads(n, hd, iters, dtype):
    """E1 heads' spectral norm kernels (``rnnlab.ops.elman.spectral``) against the op's reference
    (``naive.spectral_norm`` on the CPU) in float64: the scaled weight, the stored vector u and the
    weight's gradient."""
    from rnnlab.ops.elman import naive, spectral

    torch.manual_seed(n * hd + iters)
    w32, u32 = torch.randn(n, hd, hd) / hd**0.5, torch.nn.functional.normalize(torch.randn(n, hd), dim=-1)
    w = w32.to(dtype).to(DEV).requires_grad_()
    got, got_u = spectral.spectral_norm_heads(w, u32.to(dtype).to(DEV), 0.99, iters)
    ref_w = w32.to(dtype).double().requires_grad_()
    want, want_u = naive.spectral_norm(ref_w, u32.to(dtype).double(), 0.99, iters)
    grad = torch.randn(n, hd, hd, dtype=torch.float64)
    errs = [rel(got, want), rel(got_u, want_u),
            rel(torch.autograd.grad(got, w, grad.to(dtype).to(DEV))[0], torch.autograd.grad(want, ref_w, grad)[0])]
    print(f"spectral_norm_heads({n}, {hd}, {iters}) {dtype}: " + " ".join(f"{e:.2e}" for e in errs))
    assert max(errs) < TOL[dtype], errs


def test_e1_heads_layer_takes_the_spectral_kernels(monkeypatch):
    """On a GPU an E1 heads layer's recurrent weight comes from the spectral kernels (and stores
    their u when training); a dense layer's, and a heads layer's with ``backend="naive"``, from the
    PyTorch reference; the kernels' weight equals the reference's within bf16 rounding."""
    from rnnlab.layers.e1 import E1, E1Config
    from rnnlab.ops.elman import spectral

    calls = []
    fn = spectral.spectral_norm_heads
    monkeypatch.setattr(spectral, "spectral_norm_heads", lambda *a: calls.append(a[0].shape) or fn(*a))
    torch.manual_seed(0)
    heads = E1(E1Config(dim=256, heads=2)).to(DEV, torch.bfloat16).train()
    naive = E1(E1Config(dim=256, heads=2, backend="naive")).to(DEV, torch.bfloat16).train()
    naive.load_state_dict(heads.state_dict())
    u0 = heads.spectral_u.clone()
    got, want = heads.recurrent_weight(), naive.recurrent_weight()
    assert calls == [(2, 128, 128)]
    assert rel(got, want) < TOL[torch.bfloat16] and rel(heads.spectral_u, naive.spectral_u) < TOL[torch.bfloat16]
    assert not torch.equal(heads.spectral_u, u0)  # stored when training
    E1(E1Config(dim=64)).to(DEV, torch.bfloat16).train().recurrent_weight()
    assert calls == [(2, 128, 128)]  # dense: the reference


@pytest.mark.parametrize("T", [6, 7, 12])
@pytest.mark.parametrize("hd", [64, 128])
def test_elman_heads_gluon_equals_triton_where_dpre_grows(T, hd):
    """fp16, a recurrent matrix that expands (norm ~2.5) and large gradients: the Gluon backward's
    dpre, dW and dh0 equal the Triton kernels' bit for bit and are finite (dW by the loop's MMA, as
    theirs; by the package's sum after the scan at 128 channels, within 1e-3). The steps the loop
    runs past t = -1 once carried dpre on, undamped, into an fp16 overflow and dW's inf * 0 = NaN (a
    CPU emulation of that schedule: non-finite dW in 22 of 24 draws of these sizes). Also with an
    fp32 h0 (rounded to fp16 first, as the Triton kernels' MMAs round it) and without dW."""
    from rnnlab.ops.elman import heads, heads_gluon
    from rnnlab.ops.elman.options import DEFAULT, ElmanKernelOptions

    torch.manual_seed(T * hd)
    B, nh = 16, 2
    wx = torch.randn(B, T, nh * hd, device=DEV).half()
    w = (torch.randn(nh, hd, hd, device=DEV) * (2.5 / hd**0.5)).half()
    g = (torch.randn(B, T, nh * hd, device=DEV) * 100).half()  # |dpre| up to ~8e3, finite
    triton_only, in_loop = ElmanKernelOptions(heads_gluon=False), ElmanKernelOptions(heads_dw_rows=0)
    for h0 in (None, torch.randn(B, nh * hd, device=DEV).tanh()):
        h0_16 = None if h0 is None else h0.half()
        assert heads._gluon(DEFAULT, None, wx, hd, h0_16) is heads_gluon
        h = heads.forward(wx, w, h0, DEFAULT)
        assert torch.equal(h, heads.forward(wx, w, h0, triton_only))
        for need_dw in (True, False):
            got = heads.backward(g, w, h, h0, need_dw, in_loop)[:3]
            want = heads.backward(g, w, h, h0, need_dw, triton_only)[:3]
            assert all(x.isfinite().all() for x in want), "the case must stay finite on the Triton kernels"
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (T, hd, h0 is None, need_dw)
        (dpre, dw, dh0), want = heads.backward(g, w, h, h0, True, DEFAULT)[:3], heads.backward(
            g, w, h, h0, True, triton_only)[:3]
        assert torch.equal(dpre, want[0]) and torch.equal(dh0, want[2]) and dw.isfinite().all()
        assert ((dw.float() - want[1].float()).norm() / want[1].float().norm()).item() < 1e-3


def test_elman_heads_gluon_declines():
    """Scans the Gluon kernels do not take run on the Triton ones: 32-channel heads, fp32, the
    decay, a gradient in another dtype, h0 not 16-byte aligned, the option off."""
    from rnnlab.ops.elman import heads
    from rnnlab.ops.elman.options import DEFAULT, ElmanKernelOptions

    x = torch.randn(4, 9, 256, device=DEV, dtype=torch.bfloat16)
    h0 = torch.randn(4, 256, device=DEV, dtype=torch.bfloat16)
    shifted = torch.randn(4 * 256 + 1, device=DEV, dtype=torch.bfloat16)[1:].view(4, 256)  # 2-byte aligned
    assert heads._gluon(DEFAULT, None, x, 128, h0) is not None
    assert heads._gluon(DEFAULT, None, x, 32) is None
    assert heads._gluon(DEFAULT, None, x.float(), 128) is None
    assert heads._gluon(DEFAULT, x, x, 128) is None  # the decay
    assert heads._gluon(DEFAULT, None, x, 128, x.float()) is None  # g in fp32 (h0 is rounded first)
    assert heads._gluon(DEFAULT, None, x, 128, shifted) is None
    assert heads._gluon(ElmanKernelOptions(heads_gluon=False), None, x, 128) is None


# (B, T, H, heads, rank): heads = 0 -> dense: bf16 on the persistent kernel where H is a multiple of
# 8 (64, 96, 128, 200; low-rank on its own build, ranks up to 16), else (H = 100, 257, fp32, rank 20)
# the per-step kernel; decay with heads runs the heads kernel, low-rank with heads the dense kernels
# on the block-diagonal matrix. H = 100 / 257 leave partial column tiles; B = 1; T = 1; B = 70 takes
# two batch tiles (dense) and 5 (heads); hd = 32 / 64 / 128; heads of 200 (256 lanes) decay on the dense
# kernels too; ranks 3 and 5 padded to 16, 16 exactly, 20 (past the persistent build's 16) padded to 32;
# T = 300 a long backward.
SELECTIVE_CASES = [
    (2, 33, 100, 0, 8), (1, 17, 64, 0, 3), (5, 40, 257, 0, 8), (70, 9, 96, 0, 16), (4, 300, 128, 0, 8),
    (2, 33, 96, 3, 8), (1, 20, 64, 1, 5), (3, 50, 224, 7, 8), (70, 24, 256, 2, 8), (2, 16, 1792, 14, 8),
    (3, 1, 96, 0, 8), (5, 12, 200, 0, 20), (2, 9, 400, 2, 8),
]


def _selective_inputs(which, B, T, H, nh, r):
    """fp32 CPU inputs (without h0) of the decay or low-rank scan: ``wx, w[, a | U, V, s]``; the
    decay near its init (sigmoid(3) ~ 0.95), the low-rank term of order 0.5."""
    wx = torch.randn(B, T, H)
    hd = H // nh if nh else H
    w = torch.randn(*((nh, hd, hd) if nh else (H, H))) * (0.9 / hd**0.5)
    if which == "decay":
        return [wx, w, torch.rand(B, T, H) * 0.5 + 0.5]
    return [wx, w, torch.randn(H, r) * (0.5 / r**0.5), torch.randn(H, r) / H**0.5, torch.randn(B, T, r)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", SELECTIVE_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("which", ["decay", "lowrank"])
def test_elman_selective(dtype, case, with_h0, which):
    """E1's selective scans (backend "triton") against their float64 references: forward, final
    state and the gradients of wx, w_h, a (decay) or U, V, s (low-rank) and h0."""
    from rnnlab.ops import elman
    from rnnlab.ops.elman import naive

    torch.manual_seed(hash((case, with_h0, which == "decay")) % 1000 + 11)
    B, T, H, nh, r = case
    inputs = _selective_inputs(which, B, T, H, nh, r)
    h0 = torch.randn(B, H).tanh() if with_h0 else None
    op = getattr(elman, f"elman_{which}_scan")
    _check_op(f"elman_{which}{case}", lambda *a: op(*a, backend="triton"), getattr(naive, f"elman_{which}_scan"),
              [*inputs, h0], dtype)


@pytest.mark.parametrize("which", ["decay", "lowrank"])
def test_elman_selective_graph_matches_eager_and_reuses_buffers(which):
    """The selective per-step loop, CUDA-graphed, equals the eager loop (forward and every
    gradient), and a second call with new inputs of the same shape (the same captured graph, its
    static buffers refilled) gives the new answer."""
    from rnnlab.ops.elman import naive, selective
    from rnnlab.ops.elman.options import ElmanKernelOptions

    fn = getattr(selective, f"elman_{which}_scan")
    for trial in range(2):
        torch.manual_seed(300 + trial)
        inputs = [x.to(DEV) for x in _selective_inputs(which, 4, 24, 160, 0, 8)]
        outs = []
        for graph in (True, False):
            leaves = [x.clone().requires_grad_() for x in inputs]
            y, _ = fn(*leaves, None, options=ElmanKernelOptions(cuda_graph=graph))
            outs.append((y, *torch.autograd.grad(y.square().sum(), leaves)))
        ref, _ = getattr(naive, f"elman_{which}_scan")(*(x.double().cpu() for x in inputs))
        assert rel(outs[0][0], ref) < 1e-4
        for a, b in zip(outs[0], outs[1]):
            assert rel(a, b) < 1e-6


def test_elman_dense_graph_matches_eager_and_reuses_buffers():
    """The CUDA-graphed dense loop equals the eager loop, and a second call with new inputs (same
    shape, so the same captured graph) gives the new answer, not the old one."""
    from rnnlab.ops.elman import naive
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    B, T, H = 4, 24, 160
    for trial in range(2):
        torch.manual_seed(100 + trial)
        wx = torch.randn(B, T, H, device=DEV)
        w = torch.randn(H, H, device=DEV) * (0.9 / H**0.5)
        outs = []
        for graph in (True, False):
            x = wx.clone().requires_grad_()
            ww = w.clone().requires_grad_()
            y, _ = et.elman_scan(x, ww, None, options=ElmanKernelOptions(cuda_graph=graph))
            y.square().sum().backward()
            outs.append((y.detach(), x.grad, ww.grad))
        ref, _ = naive.elman_scan(wx.double().cpu(), w.double().cpu())
        assert rel(outs[0][0], ref) < 1e-4
        for a, b in zip(outs[0], outs[1]):
            assert rel(a, b) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tile", [(16, 64, 4, 3), (32, 64, 4, 3), (16, 128, 4, 3), (32, 128, 8, 2)])
@pytest.mark.parametrize("graph", [True, False])
def test_elman_dense_step_tiles(dtype, tile, graph):
    """The per-step dense kernel (persistent kernel off) with other tiles (BN, BK, warps, stages),
    graphed and eager: three calls in a row (the second reuses the captured graph) all match the
    reference, and the backward runs with the forward's options."""
    from rnnlab.ops.elman import naive
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    bn, bk, warps, stages = tile
    opts = ElmanKernelOptions(persistent=False, cuda_graph=graph, dense_bn=bn, dense_bk=bk,
                              dense_warps=warps, dense_stages=stages)
    for trial, (B, T, H) in enumerate([(5, 30, 300), (5, 30, 300), (33, 12, 200)]):
        torch.manual_seed(200 + trial)
        wx = torch.randn(B, T, H)
        w = torch.randn(H, H) * (0.9 / H**0.5)
        h0 = torch.randn(B, H).tanh()
        _check_op(f"elman_dense_step{tile} graph={graph}",
                  lambda x, w, h: et.elman_scan(x, w, h, options=opts), naive.elman_scan, [wx, w, h0], dtype)


def _record_persistent_launches(monkeypatch) -> list[tuple]:
    """Wrap the persistent kernel's ``forward`` / ``backward`` so each launch is recorded as
    ``(name, plan, a, lowrank)`` (their positional arguments 3-5; absent ones None)."""
    from rnnlab.ops.elman import persistent

    calls = []
    for name in ("forward", "backward"):
        def wrapped(*args, fn=getattr(persistent, name), name=name):
            plan_a_lowrank = list(args[3:6])
            calls.append((name, *plan_a_lowrank, *[None] * (3 - len(plan_a_lowrank))))
            return fn(*args)
        monkeypatch.setattr(persistent, name, wrapped)
    return calls


# (B, T, H): H = 1760 is E1 d26's width; B = 70 takes several batch groups / passes; H = 200 and
# 104 are not multiples of 16 (zero-padded K tile); T = 300 runs many step handshakes.
PERSISTENT_CASES = [(2, 33, 96), (1, 17, 64), (70, 9, 200), (3, 20, 104), (4, 300, 256), (32, 48, 1760)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", PERSISTENT_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("shape", range(4))  # persistent.SHAPES: 8 and 16 warps x both tiles
def test_elman_dense_persistent(dtype, case, with_h0, shape, monkeypatch):
    """The persistent cooperative kernel (the default dense 16-bit path) in each launch shape
    against the float64 reference, forward and all gradients; records its launches to prove it
    ran with the forced shape."""
    from rnnlab.ops.elman import naive, persistent
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    B, T, H = case
    warps, tile = persistent.SHAPES[shape]
    if warps == 16 and H != 1760:
        pytest.skip("16 warps: checked at the E1 width only")
    assert persistent.make_plan(torch.empty(1, 1, H, device=DEV, dtype=dtype)) is not None
    calls = _record_persistent_launches(monkeypatch)
    opts = ElmanKernelOptions(persistent_shape=shape, dense_wgmma=False)
    torch.manual_seed(hash((case, with_h0)) % 1000 + 7)
    wx = torch.randn(B, T, H)
    w = torch.randn(H, H) * (0.9 / H**0.5)
    h0 = torch.randn(B, H).tanh() if with_h0 else None
    _check_op(f"elman_dense_persistent{case} warps={warps} tile={tile}",
              lambda x, w, h: et.elman_scan(x, w, h, options=opts), naive.elman_scan, [wx, w, h0], dtype)
    assert [c[0] for c in calls] == ["forward", "backward"]
    assert all((plan.warps, (plan.cols, plan.rows)) == (warps, tile) for _, plan, _, _ in calls)


# (B, T, H): dense widths past the wgmma kernel's 1792 that the persistent kernel still takes, at its
# default plan (persistent.default_shapes: W's fragments in shared memory past 1792 channels):
# seed-400m-sf's E1 d20 (H = 1984: 16 warps, 62 column blocks) and d16 (H = 2208: only 8 warps fit,
# more K tiles a warp than the 14 it keeps in registers) at that suite's B = 16; B = 3 with an odd T
WIDE_PERSISTENT_CASES = [(16, 24, 1984), (16, 24, 2208), (3, 17, 2208)]


@pytest.mark.parametrize("case", WIDE_PERSISTENT_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_elman_dense_persistent_past_the_wgmma_width(case, with_h0, monkeypatch):
    """Plain dense bf16 scans wider than the wgmma kernel takes, on the persistent kernel at the
    package's plan, against the float64 reference, forward and all gradients; records the launches
    to prove the persistent kernel ran them with that plan (the forced-shape tests above stop at
    1760 channels, where 8 warps keep W in registers)."""
    from rnnlab.ops.elman import naive, persistent
    from rnnlab.ops.elman import triton as et

    B, T, H = case
    plan = persistent.make_plan(torch.empty(B, T, H, device=DEV, dtype=torch.bfloat16))
    assert plan is not None, f"the persistent kernel declines H = {H}"
    calls = _record_persistent_launches(monkeypatch)
    torch.manual_seed(hash((case, with_h0)) % 1000 + 19)
    wx = torch.randn(B, T, H)
    w = torch.randn(H, H) * (0.9 / H**0.5)
    h0 = torch.randn(B, H).tanh() if with_h0 else None
    _check_op(f"elman_dense_persistent{case} warps={plan.warps} tile={(plan.cols, plan.rows)}",
              lambda x, w, h: et.elman_scan(x, w, h), naive.elman_scan, [wx, w, h0], torch.bfloat16)
    assert [c[0] for c in calls] == ["forward", "backward"]
    assert all(p == plan for _, p, _, _ in calls), (plan, calls)


# (B, T, H): E1 d26's width (clusters of 5 at 55 column blocks, two batch groups), and an odd one
# (7 column blocks in one cluster, H not a multiple of 16: the last slice is 24 columns)
# (B, T, H): E1's width; an odd width (7 column blocks: clusters of 7); B = 1 and T = 1; a long
# sequence (many steps of the cluster barrier and the mbarrier's phases)
CLUSTER_CASES = [(32, 48, 1760), (3, 20, 200), (1, 1, 256), (4, 300, 256)]
VARIANTS = ["plain", "decay", "lowrank", "plain fp16"]  # the epilogues and dtypes of that path


def _expects_clusters() -> bool:
    """Whether the loaded build must have the cluster path: a Hopper GPU (compute capability 9.0)
    with TORCH_CUDA_ARCH_LIST unset (the package then builds for sm_90a) or naming 9.0a."""
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    return torch.cuda.get_device_capability() == (9, 0) and (not arch or "9.0a" in re.split(r"[;\s]+", arch))


@pytest.mark.parametrize("case", CLUSTER_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_elman_dense_persistent_stages_through_clusters(case, with_h0, variant, monkeypatch):
    """The persistent kernel's cluster path (an sm_90a build, the default on Hopper; thread-block
    clusters, each CTA staging a slice of the state into its whole cluster by multicast bulk copies)
    at the package's plan, for each epilogue (plain, E1's decay, its low-rank term) and dtype: it ran
    in clusters, its states and gradients equal bit for bit those of the same plan without clusters
    (``max_cluster=1``), and it matches the float64 reference."""
    import dataclasses

    from rnnlab.ops.elman import naive, persistent, selective
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    kind = variant.split()[0]
    dtype = torch.float16 if variant.endswith("fp16") else torch.bfloat16
    if not persistent.multicast_available(lowrank=kind == "lowrank"):
        assert not _expects_clusters(), "this Hopper build (sm_90a) has no cluster path"
        pytest.skip("the loaded build has no cluster path (not Hopper, or TORCH_CUDA_ARCH_LIST without 9.0a)")
    make_plan = persistent.make_plan
    sizes = []  # each launch's cluster size, read right after it from the build that ran it
    for name in ("forward", "backward"):
        def wrapped(*args, fn=getattr(persistent, name), **kwargs):
            out = fn(*args, **kwargs)
            plan = args[3]
            sizes.append(persistent.last_cluster_size(plan.lowrank, plan.source))
            return out
        monkeypatch.setattr(persistent, name, wrapped)

    def with_max_cluster(max_cluster):
        def plan(*args, **kwargs):
            p = make_plan(*args, **kwargs)
            return None if p is None else dataclasses.replace(p, max_cluster=max_cluster)
        monkeypatch.setattr(persistent, "make_plan", plan)

    B, T, H = case
    # the variant by its position: hash() of a str changes with each process's PYTHONHASHSEED
    torch.manual_seed(hash((case, with_h0, VARIANTS.index(variant))) % 1000 + 13)
    if kind == "plain":
        inputs = [torch.randn(B, T, H), torch.randn(H, H) * (0.9 / H**0.5)]
        fast = lambda *a: et.elman_scan(*a, options=ElmanKernelOptions(dense_wgmma=False))  # noqa: E731
        ref = naive.elman_scan
    else:
        opts = ElmanKernelOptions(persistent_lowrank=True)
        inputs = _selective_inputs(kind, B, T, H, 0, 8)
        scan, ref = ((selective.elman_decay_scan, naive.elman_decay_scan) if kind == "decay"
                     else (selective.elman_lowrank_scan, naive.elman_lowrank_scan))
        fast = lambda *a: scan(*a, options=opts)  # noqa: E731
    inputs.append(torch.randn(B, H).tanh() if with_h0 else None)
    g = torch.randn(B, T, H).to(DEV, dtype)

    def run():
        on_gpu = [None if x is None else x.to(DEV, dtype).requires_grad_() for x in inputs]
        y, y_last = fast(*on_gpu)
        return [y, y_last, *torch.autograd.grad(y, [x for x in on_gpu if x is not None], g)]

    clustered = run()  # the package's plan: max_cluster = 8
    assert len(sizes) == 2 and min(sizes) > 1, sizes
    print(f"elman_dense_persistent {variant} {case} h0={with_h0}: clusters of {sizes}")
    with_max_cluster(1)
    sizes.clear()
    plain = run()
    assert sizes == [1, 1]
    for i, (a, b) in enumerate(zip(clustered, plain)):
        assert torch.equal(a, b), f"output {i} (h, h_T, then the gradients): the cluster path differs"
    monkeypatch.setattr(persistent, "make_plan", make_plan)
    sizes.clear()
    _check_op(f"elman_dense_persistent_clusters {variant} {case}", fast, ref, inputs, dtype)
    assert len(sizes) == 2 and min(sizes) > 1, sizes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", PERSISTENT_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("shape", range(4))  # persistent.SHAPES: 8 and 16 warps x both tiles
def test_elman_decay_dense_persistent(dtype, case, with_h0, shape, monkeypatch):
    """E1's decay on the persistent kernel (its default dense 16-bit path: a_t in the epilogue,
    the backward exchanging q = a * dpre) in a launch shape, against the float64 reference,
    forward and the gradients of wx, W, a and h0; records the launches to prove the decay ran
    there with the forced shape."""
    from rnnlab.ops.elman import naive, persistent, selective
    from rnnlab.ops.elman.options import ElmanKernelOptions

    B, T, H = case
    if persistent.SHAPES[shape][0] == 16 and H != 1760:
        pytest.skip("16 warps: checked at the E1 width only")
    calls = _record_persistent_launches(monkeypatch)
    opts = ElmanKernelOptions(persistent_shape=shape)
    torch.manual_seed(hash((case, with_h0)) % 1000 + 13)
    inputs = _selective_inputs("decay", B, T, H, 0, 0)
    h0 = torch.randn(B, H).tanh() if with_h0 else None
    _check_op(f"elman_decay_persistent{case} shape={persistent.SHAPES[shape]}",
              lambda *a: selective.elman_decay_scan(*a, options=opts), naive.elman_decay_scan, [*inputs, h0], dtype)
    assert [c[0] for c in calls] == ["forward", "backward"]
    warps, tile = persistent.SHAPES[shape]
    assert all((plan.warps, (plan.cols, plan.rows)) == (warps, tile) and a is not None for _, plan, a, _ in calls)


# the low-rank term's ranks, one per case: 1 and 16 (its range's ends), odd and even in between;
# (72, 8, 1760): more batch rows than a launch's blocks hold at once (each block loops over rows)
LOWRANK_PERSISTENT_CASES = [(*case, r) for case, r in zip(PERSISTENT_CASES + [(72, 8, 1760)], (1, 16, 5, 8, 3, 16, 4))]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", LOWRANK_PERSISTENT_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("shape", range(4))  # persistent.SHAPES: 8 and 16 warps x both tiles
def test_elman_lowrank_dense_persistent(dtype, case, with_h0, shape, monkeypatch):
    """E1's low-rank term on the persistent kernel (its default dense 16-bit path for ranks 1-16:
    the state times V beside W's product, the block's sum times s_t, the epilogue's product with U;
    the backward with U and V swapped and s_{t+1}) in a launch shape, against the float64
    reference, forward and the gradients of wx, W, U, V, s and h0; records the launches to prove
    the low-rank build ran with the forced shape."""
    from rnnlab.ops.elman import naive, persistent, selective
    from rnnlab.ops.elman.options import ElmanKernelOptions

    B, T, H, r = case
    if persistent.SHAPES[shape][0] == 16 and H != 1760:
        pytest.skip("16 warps: checked at the E1 width only")
    calls = _record_persistent_launches(monkeypatch)
    opts = ElmanKernelOptions(persistent_shape=shape, persistent_lowrank=True)
    torch.manual_seed(hash((case, with_h0)) % 1000 + 17)
    inputs = _selective_inputs("lowrank", B, T, H, 0, r)
    h0 = torch.randn(B, H).tanh() if with_h0 else None
    plan = persistent.make_plan(torch.empty(B, T, H, device=DEV, dtype=dtype), (persistent.SHAPES[shape],), r)
    if plan is None:
        pytest.skip(f"shape {persistent.SHAPES[shape]} does not fit H = {H} with the low-rank term")
    _check_op(f"elman_lowrank_persistent{case} shape={persistent.SHAPES[shape]}",
              lambda *a: selective.elman_lowrank_scan(*a, options=opts), naive.elman_lowrank_scan,
              [*inputs, h0], dtype)
    assert [c[0] for c in calls] == ["forward", "backward"]
    warps, tile = persistent.SHAPES[shape]
    assert all((p.warps, (p.cols, p.rows), p.lowrank) == (warps, tile, True) and lr is not None
               for _, p, _, lr in calls)


def test_elman_lowrank_persistent_declines_ranks_outside_its_range():
    """Ranks above 16 (more than one MMA tile) go to the per-step kernel; 1 and 16 are planned
    on the low-rank build."""
    from rnnlab.ops.elman import persistent

    x = torch.empty(4, 8, 256, device=DEV, dtype=torch.bfloat16)
    assert persistent.make_plan(x, rank=17) is None
    assert all(p is not None and p.lowrank for p in (persistent.make_plan(x, rank=1), persistent.make_plan(x, rank=16)))
    assert not persistent.make_plan(x).lowrank


# (B, T, H): E1 d26's width (28 clusters, H padded to 1792); B = 1 and T = 1; odd widths and
# batches (H padded to the next kernel's width: 200 -> 256, 1000 -> 1024; B = 7); long sequences
# (many steps of the flags and the mbarriers' phases, the exchange buffer's ring of 3 slots
# wrapping around; B = 1, T = 2500 at E1 d26's width was declined while the buffer had a slot a step)
WGMMA_CASES = [(32, 48, 1760), (1, 1, 64), (7, 9, 200), (3, 300, 256), (5, 17, 512), (32, 33, 1000), (1, 2500, 1760)]


@pytest.mark.parametrize("case", WGMMA_CASES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_elman_dense_wgmma(case, with_h0, monkeypatch):
    """The wgmma kernel (``dense_wgmma``, the default) against the float64 reference, forward and
    all gradients, bf16; records its launches to prove it ran (and not persistent.cu)."""
    from rnnlab.ops.elman import naive, persistent, wgmma
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma kernel needs a compute-capability 9.0 GPU")
    B, T, H = case
    calls = []
    for module, name in ((wgmma, "forward"), (wgmma, "backward"), (persistent, "forward"), (persistent, "backward")):
        def wrapped(*args, fn=getattr(module, name), label=f"{module.__name__.rsplit('.', 1)[1]}.{name}"):
            calls.append(label)
            return fn(*args)
        monkeypatch.setattr(module, name, wrapped)
    opts = ElmanKernelOptions()
    torch.manual_seed(hash((case, with_h0)) % 1000 + 11)
    wx = torch.randn(B, T, H)
    w = torch.randn(H, H) * (0.9 / H**0.5)
    h0 = torch.randn(B, H).tanh() if with_h0 else None
    _check_op(f"elman_dense_wgmma{case}", lambda x, w, h: et.elman_scan(x, w, h, options=opts),
              naive.elman_scan, [wx, w, h0], torch.bfloat16)
    assert calls == ["wgmma.forward", "wgmma.backward"]


def test_elman_dense_wgmma_declines_what_it_cannot_run():
    """Wider than 1792, more than 32 rows, fp16, H not a multiple of 8: declined (the persistent
    kernel runs those); called with such operands anyway, the kernel refuses them with one line."""
    from rnnlab.ops.elman import wgmma

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma kernel needs a compute-capability 9.0 GPU")
    assert wgmma.supported(torch.empty(32, 2, 1792, device=DEV, dtype=torch.bfloat16))
    assert wgmma.supported(torch.empty(1, 20000, 1760, device=DEV, dtype=torch.bfloat16))  # any length
    for shape, dtype in (((2, 2, 1800), torch.bfloat16), ((33, 2, 64), torch.bfloat16),
                         ((2, 2, 64), torch.float16), ((2, 2, 100), torch.bfloat16)):
        assert not wgmma.supported(torch.empty(shape, device=DEV, dtype=dtype)), (shape, dtype)
    x = torch.zeros(33, 2, 64, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="needs bf16 .B, T, H. with B <= 32"):
        wgmma.forward(x, torch.zeros(64, 64, device=DEV, dtype=torch.bfloat16), None)


def test_elman_lowrank_default_is_persistent_and_the_option_turns_it_off(monkeypatch):
    """A bf16 dense low-rank scan runs the persistent low-rank build by default, and the per-step
    kernel with ``persistent_lowrank=False``, with the same answer (to bf16 rounding)."""
    from rnnlab.ops.elman import selective
    from rnnlab.ops.elman.options import ElmanKernelOptions

    calls = _record_persistent_launches(monkeypatch)
    torch.manual_seed(3)
    wx, w, U, V, s = (t.to(DEV, torch.bfloat16) for t in _selective_inputs("lowrank", 4, 16, 256, 0, 8))
    on, _ = selective.elman_lowrank_scan(wx, w, U, V, s, None)
    assert [(c[0], c[1].lowrank) for c in calls] == [("forward", True)]
    off, _ = selective.elman_lowrank_scan(wx, w, U, V, s, None, options=ElmanKernelOptions(persistent_lowrank=False))
    assert len(calls) == 1
    assert rel(on.float(), off.float()) < 2e-2


def test_elman_dense_persistent_not_used_when_it_cannot_run():
    """fp32, and H not a multiple of 8, fall back to the Triton per-step kernel."""
    from rnnlab.ops.elman import persistent

    assert persistent.make_plan(torch.empty(1, 1, 256, device=DEV, dtype=torch.float32)) is None
    assert persistent.make_plan(torch.empty(1, 1, 100, device=DEV, dtype=torch.bfloat16)) is None
    assert persistent.make_plan(torch.empty(1, 1, 8192, device=DEV, dtype=torch.bfloat16)) is None


@pytest.mark.parametrize("dense_wgmma", [True, False])
def test_elman_dense_cuda_kernels_take_operands_that_start_off_16_bytes(dense_wgmma, monkeypatch):
    """wx, W and h0 as contiguous views starting 2 bytes into their storage (a direct call can pass
    them; the layers never do), and the gradient too: the wgmma and persistent kernels, which load
    16 bytes at a time, run on copies (``registry.aligned``) and give what they give on aligned
    operands: the states bit for bit, every gradient to bf16 rounding (cuBLAS, which computes dW
    and dh0, may pick other kernels for operands off 16 bytes)."""
    from rnnlab.ops.elman import persistent, wgmma
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    if dense_wgmma and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma kernel needs a compute-capability 9.0 GPU")
    module = wgmma if dense_wgmma else persistent
    calls = []
    for name in ("forward", "backward"):
        monkeypatch.setattr(module, name, lambda *a, _fn=getattr(module, name), _n=name: calls.append(_n) or _fn(*a))

    def off(x):  # x's values in a view 2 bytes into its storage
        view = torch.empty(x.numel() + 1, device=DEV, dtype=torch.bfloat16)[1:].view(x.shape)
        return view.copy_(x)

    torch.manual_seed(17)
    B, T, H = 3, 17, 64
    values = [torch.randn(B, T, H), torch.randn(H, H) * (0.9 / H**0.5), torch.randn(B, H).tanh()]
    gy = torch.randn(B, T, H, device=DEV, dtype=torch.bfloat16)
    opts = ElmanKernelOptions(dense_wgmma=dense_wgmma)
    runs = []
    for place, g in ((off, off(gy)), (lambda x: x.to(DEV, torch.bfloat16), gy)):
        xs = [place(v.to(DEV, torch.bfloat16)).requires_grad_() for v in values]
        assert all((x.data_ptr() % 16 != 0) == (place is off) for x in xs)
        y, _ = et.elman_scan(*xs, options=opts)
        y.backward(g)
        runs.append([y.detach(), *(x.grad for x in xs)])
    assert calls == ["forward", "backward"] * 2
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1:], runs[1][1:]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------- layers
def _check_layer(name, layer_cpu, layer_gpu, dim, tol, B=2, T=40, refused=None, autocast=None):
    """Same weights; CPU reference in float64, CUDA path in fp32 (its forward under ``autocast``'s
    dtype when given, as ``--precision bf16-mixed`` trains: y in that dtype, every gradient fp32).
    Checks y, dx and every parameter gradient (``refused``: as in ``_check_op``)."""
    torch.manual_seed(7)
    x = torch.randn(B, T, dim)
    lc = layer_cpu.double()
    lg = layer_gpu.float().to(DEV)
    xc = x.double().requires_grad_()
    xg = x.float().to(DEV).requires_grad_()
    yc = lc(xc)
    with torch.autocast("cuda", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        yg = lg(xg)
    assert autocast is None or yg.dtype == autocast
    if refused:
        _assert_backward_refused(name, yg, [rel(yg, yc)], tol, refused)
        return
    g = torch.randn(yc.shape, dtype=torch.float64)
    pc = dict(lc.named_parameters())
    pg = dict(lg.named_parameters())
    names = [n for n in pc if pc[n].requires_grad]
    assert set(names) <= set(pg), (set(names) - set(pg))
    gc = torch.autograd.grad(yc, [xc] + [pc[n] for n in names], g, allow_unused=True)
    gg = torch.autograd.grad(yg, [xg] + [pg[n] for n in names], g.to(yg.dtype).to(DEV), allow_unused=True)
    assert autocast is None or all(a is None or a.dtype == torch.float32 for a in gg)
    errs = {"y": rel(yg, yc)}
    for n, a, b in zip(["x"] + names, gg, gc):
        if b is None:
            assert a is None or a.abs().max() == 0, n
            continue
        errs["d" + n] = rel(a, b)
    print(f"{name}: " + " ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, (name, bad)


def _pair(cls, cfg_cls, gpu_overrides=None, **kw):
    torch.manual_seed(0)
    cpu = cls(cfg_cls(**kw))
    gpu = copy.deepcopy(cpu)
    for k, v in (gpu_overrides or {}).items():
        setattr(gpu.cfg, k, v)
    return cpu, gpu


@pytest.mark.parametrize("heads", [1, 4])
def test_e1_layer(heads):
    from rnnlab.layers.e1 import E1, E1Config

    cpu, gpu = _pair(E1, E1Config, {"backend": "triton"}, dim=96, heads=heads, backend="naive")
    # the layer's spectral-norm power iteration updates a buffer in training mode: use eval so both
    # copies see the same u (the math is the same; grads flow through sigma either way)
    cpu.eval(), gpu.eval()
    _check_layer(f"E1 heads={heads}", cpu, gpu, 96, 1e-4)


@pytest.mark.parametrize("heads", [4, 14])
def test_e1_heads_layer_under_autocast(heads):
    """E1 heads (the gate's projection beside the scan) in fp32 weights under bf16 autocast, eager,
    as ``--precision bf16-mixed`` trains: the output (bf16) and every gradient (fp32) within bf16's
    rounding of the float64 CPU reference's (the gate's GEMMs once ran bf16 against fp32 saved
    operands here and the backward failed)."""
    from rnnlab.layers.e1 import E1, E1Config

    cpu, gpu = _pair(E1, E1Config, {"backend": "triton"}, dim=heads * 64, heads=heads, backend="naive")
    cpu.eval(), gpu.eval()
    _check_layer(f"E1 heads={heads} under bf16 autocast", cpu, gpu, heads * 64, TOL[torch.bfloat16],
                 autocast=torch.bfloat16)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("selective", ["decay", "lowrank"])
def test_e1_selective_layer(heads, selective):
    """E1 with a selective switch on its CUDA kernels (fp32) against the float64 CPU reference,
    output and every parameter gradient (W_a, b_a or W_s, U, V included)."""
    from rnnlab.layers.e1 import E1, E1Config

    cpu, gpu = _pair(E1, E1Config, {"backend": "triton"}, dim=96, heads=heads, selective=selective,
                     selective_rank=4, backend="naive")
    with torch.no_grad():  # U starts at zero (plain E1): give the low-rank term a value to check
        for layer in (cpu, gpu):
            if selective == "lowrank":
                layer.U.copy_(torch.randn(layer.U.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    cpu.eval(), gpu.eval()
    _check_layer(f"E1 heads={heads} selective={selective}", cpu, gpu, 96, 1e-4)


def test_e16_layer():
    from rnnlab.layers.e16 import E16, E16Config

    cpu, gpu = _pair(E16, E16Config, {"backend": "triton"}, dim=72, expansion=2.0, state_expansion=4,
                     backend="naive")
    _check_layer("E16 s4", cpu, gpu, 72, 1e-4)


@pytest.mark.parametrize("which", ["mingru", "minlstm"])
def test_min_rnn_layers(which):
    if which == "mingru":
        from rnnlab.layers.mingru import MinGRU as L, MinGRUConfig as C
    else:
        from rnnlab.layers.minlstm import MinLSTM as L, MinLSTMConfig as C
    cpu, gpu = _pair(L, C, {"backend": "triton"}, dim=80, backend="naive")
    _check_layer(which, cpu, gpu, 80, 1e-4)


def test_mamba2_official_vs_reference():
    """Official mamba_ssm kernels (CUDA, fp32 in, Triton SSD with TF32 products inside) against
    the pure-PyTorch reference on CPU (float64) with the SAME state_dict. Tolerance 2e-2 for the
    TF32 matrix products of the SSD kernels (measured values are printed)."""
    from rnnlab.layers.mamba2 import Mamba2, Mamba2Config
    from rnnlab.ops.ssd import import_mamba_ssm

    if import_mamba_ssm() is None:
        pytest.skip("mamba_ssm not importable")
    torch.manual_seed(0)
    ref = Mamba2(Mamba2Config(dim=128, d_state=16, headdim=32, chunk_size=32, backend="reference"))
    off = Mamba2(Mamba2Config(dim=128, d_state=16, headdim=32, chunk_size=32, backend="official"))
    off.load_state_dict(ref.state_dict())
    _check_layer("Mamba2 official", ref, off, 128, 2e-2, B=2, T=80)


@pytest.mark.parametrize("Bsz, T, with_state", [(2, 80, False), (1, 33, True)])
def test_ssd_scan_triton_backend(Bsz, T, with_state):
    """The ``ssd_scan`` op's ``triton`` backend (mamba_ssm's ``mamba_chunk_scan_combined``, which
    ``backend="auto"`` picks on CUDA; the official layer runs mamba_ssm's fused module instead, so
    no other test reaches it) against the sequential reference in float64: fp32 inputs, T not a
    multiple of the chunk, B = 1, an initial state; forward, final state and every gradient.
    Tolerance 2e-2 for the kernel's TF32 products (as the official layer's test)."""
    from rnnlab.ops.ssd import import_mamba_ssm, ssd_scan

    if import_mamba_ssm() is None:
        pytest.skip("mamba_ssm not importable")
    g = torch.Generator().manual_seed(T)
    H, P, G, N = 4, 16, 2, 16
    inputs = [torch.randn(Bsz, T, H, P, generator=g), torch.rand(Bsz, T, H, generator=g) * 0.5 + 0.01,
              -torch.rand(H, generator=g) - 0.1, torch.randn(Bsz, T, G, N, generator=g),
              torch.randn(Bsz, T, G, N, generator=g),
              torch.randn(Bsz, H, P, N, generator=g) if with_state else None]
    _check_op("ssd_scan triton", lambda x, dt, A, B, C, s: ssd_scan(x, dt, A, B, C, 32, s, backend="triton"),
              lambda x, dt, A, B, C, s: ssd_scan(x, dt, A, B, C, 32, s, backend="naive"), inputs, torch.float32,
              tol=2e-2)


def test_transformer_sdpa_cuda():
    from rnnlab.layers.attention import AttentionConfig, CausalSelfAttention

    torch.manual_seed(0)
    cpu = CausalSelfAttention(AttentionConfig(dim=128, head_dim=32))
    gpu = copy.deepcopy(cpu)
    # SDPA on CUDA in fp32 may use the memory-efficient kernel (fp32 math, different summation order)
    _check_layer("Transformer SDPA", cpu, gpu, 128, 1e-4)


def test_lm_bf16_train_step_triton():
    """One bf16 training step per recurrent model on CUDA runs, is finite, and moves the loss."""
    from rnnlab.models import LM, ModelConfig
    from rnnlab.ops.delta import fla_backward_refusal

    # GDN where fla trains it (else tests/gpu/test_reliability_gpu.py checks the one-line refusal)
    gdn = [] if fla_backward_refusal() else [("gdn", {"head_dim": 64})]
    for model, layer in [("e1", {}), ("e1", {"heads": 4}), ("e1", {"selective": "decay"}),
                         ("e1", {"selective": "decay", "heads": 4}), ("e1", {"selective": "lowrank"}),
                         ("e16", {"state_expansion": 2}), ("mingru", {}), ("minlstm", {}), ("e88", {})] + gdn:
        torch.manual_seed(0)
        m = LM(ModelConfig(model=model, dim=128, depth=2, layer=layer)).to(DEV, torch.bfloat16)
        idx = torch.randint(0, 256, (4, 65), device=DEV)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        losses = []
        for _ in range(3):
            loss = m(idx[:, :-1], idx[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        print(model, layer, [f"{v:.4f}" for v in losses])
        assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("model,layer", [("e1", {"heads": 1}), ("e1", {"heads": 4}), ("e1", {"selective": "decay"}),
                                         ("e1", {"selective": "decay", "heads": 4}), ("e1", {"selective": "lowrank"}),
                                         ("e16", {"state_expansion": 2}), ("mingru", {}), ("minlstm", {})])
def test_lm_compiles_to_one_graph(model, layer):
    """E1's, E16's and minGRU's / minLSTM's scans are custom ops: torch.compile(fullgraph=True)
    captures a whole bf16 LM (no graph break; plain dense E1 uses the persistent kernel here, the
    selective variants their own kernels) and its loss and gradients match eager: within 3e-2, or,
    where Inductor's fusions round a gradient further from eager's (minGRU's first LayerNorm
    weight: 3.3e-2), no further from the fp32 model's than twice eager's own distance to it."""
    import torch._dynamo

    from rnnlab.models import LM, ModelConfig

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = LM(ModelConfig(model=model, dim=128, depth=2, layer=layer)).to(DEV, torch.bfloat16)
    idx = torch.randint(0, 256, (4, 65), device=DEV)
    start = copy.deepcopy(m.state_dict())

    def run(fn):
        m.load_state_dict(start)
        m.zero_grad(set_to_none=True)
        loss = fn(idx[:, :-1], idx[:, 1:])
        loss.backward()
        return loss, {n: p.grad for n, p in m.named_parameters()}

    ref = run(m)
    got = run(torch.compile(m, fullgraph=True))
    m32 = copy.deepcopy(m).float()
    m32.load_state_dict(start)
    m32.zero_grad(set_to_none=True)
    m32(idx[:, :-1], idx[:, 1:]).backward()
    assert rel(got[0], ref[0]) < 1e-2
    for n, p in m32.named_parameters():
        assert rel(got[1][n], ref[1][n]) < 3e-2 or rel(got[1][n], p.grad) <= 2 * rel(ref[1][n], p.grad), n


MIXER_MODEL = {"norm": "rmsnorm", "residual_in_fp32": True, "rescale_prenorm_residual": True}


@pytest.mark.parametrize("wrapper", [{}, MIXER_MODEL], ids=["reference-lm", "mixer-model"])
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_mamba2_official_compiled_trains_like_eager(mode, wrapper):
    """The official Mamba2 forward is traced by torch.compile (not an opaque call): 20 training
    steps of a pure-bf16 Mamba2 LM from the same weights on the same batches (4 batches seen 5
    times each, so the loss falls), eager vs compiled as rnnlab compiles (``compile_model``), give
    the same losses; in the reference's LM and in mamba_ssm's (``MixerModel``: RMSNorm, the
    residual in fp32, out_proj rescaled). Tolerance: 2e-2
    nats on every step (bf16 weights; Inductor fuses the elementwise work around mamba_ssm's
    kernels and rounds differently; the first step, before any update, must agree to 1e-2).
    Measured on an H200 (results/fair-baselines-h200/gpu_tests_b.txt, with 20 distinct batches):
    max |dloss| 3.3e-4 in both modes."""
    import torch._dynamo

    from rnnlab.models import LM, ModelConfig
    from rnnlab.ops.ssd import import_mamba_ssm
    from rnnlab.train.inductor import compile_model

    if import_mamba_ssm() is None:
        pytest.skip("mamba_ssm not importable")
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = LM(ModelConfig(model="mamba2", dim=256, depth=4, layer={"d_state": 64}, **wrapper)).to(DEV, torch.bfloat16)
    assert m.blocks[0].mixer.backend == "official"
    start = copy.deepcopy(m.state_dict())
    g = torch.Generator(device=DEV).manual_seed(1)
    batches = torch.randint(0, 256, (4, 8, 257), device=DEV, generator=g).repeat(5, 1, 1)

    def train(fn):
        m.load_state_dict(start)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
        losses = []
        for b in batches:
            loss = fn(b[:, :-1], b[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    eager = train(m)
    compiled = train(compile_model(m, mode))
    diffs = [abs(a - b) for a, b in zip(eager, compiled)]
    print(f"mamba2 {'mixer-model ' if wrapper else ''}compile={mode}: eager {eager[0]:.4f}->{eager[-1]:.4f}, "
          f"max |dloss| {max(diffs):.2e}")
    assert sum(eager[-4:]) < sum(eager[:4]) - 0.2  # it trains: each batch's loss falls on later visits
    assert diffs[0] < 1e-2 and max(diffs) < 2e-2, diffs
    torch._dynamo.reset()


# ------------------------------------------------------------------- E88 and Gated DeltaNet
# (B, T, H, n, m): B = 1; n, m not powers of two (padded lanes) and n != m; T not a multiple of
# the kernel's checkpoint interval (16), and T = 300 for many segments; T = 1 (one step, one
# checkpoint); 49 heads of 32 (the reference's 480M layer).
E88_SHAPES = [(2, 33, 3, 32, 32), (1, 50, 5, 24, 40), (3, 17, 4, 16, 8), (1, 7, 2, 5, 3), (2, 300, 8, 32, 32),
              (4, 64, 49, 32, 32), (3, 1, 4, 32, 32)]


def _e88_inputs(B, T, H, n, m, with_s0):
    q, k = (torch.nn.functional.normalize(torch.randn(B, T, H, n), dim=-1) for _ in range(2))
    v = torch.randn(B, T, H, m)
    decay = torch.rand(B, T, H) * 0.2 + 0.8
    return [q, k, v, decay, torch.randn(B, H, n, m).tanh() if with_s0 else None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", E88_SHAPES)
@pytest.mark.parametrize("with_s0", [False, True])
def test_e88(dtype, shape, with_s0):
    """E88's Triton kernel (checkpointed backward) against the float64 reference: outputs, final
    state, the gradients of q, k, v, the decay (kept fp32, as the layer passes it) and S0."""
    from rnnlab.ops.e88 import e88_scan, naive

    torch.manual_seed(hash((shape, with_s0)) % 1000 + 11)
    _check_op(f"e88{shape}", lambda q, k, v, d, s: e88_scan(q, k, v, d, s, backend="triton"), naive.e88_scan,
              _e88_inputs(*shape, with_s0), dtype, fp32_inputs=(3, 4))


@pytest.mark.parametrize("options", [dict(checkpoint_every=1), dict(checkpoint_every=5), {},
                                     dict(fwd_warps=2, bwd_warps=2), dict(checkpoint_every=5, fwd_warps=4, bwd_warps=4),
                                     dict(fwd_maxnreg=128, bwd_maxnreg=200), dict(bwd_warps=1),
                                     dict(bwd_stages=3), dict(checkpoint_every=5, bwd_stages=2, bwd_maxnreg=168)],
                         ids=["every1", "every5", "default", "warps2", "every5-warps4", "maxnreg", "bwd1warp",
                              "stages3", "every5-stages2-maxnreg"])
def test_e88_final_state_gradient(options):
    """A loss on the outputs and the final state: every gradient, several checkpoint intervals,
    the default launch and others (bench_kernels.py times them)."""
    from rnnlab.ops.e88 import naive
    from rnnlab.ops.e88 import triton as kernel

    torch.manual_seed(len(options))
    inputs = _e88_inputs(2, 37, 3, 32, 16, True)
    fast = [x.to(DEV).requires_grad_() for x in inputs]
    ref = [x.double().requires_grad_() for x in inputs]
    (y, s_T), (yr, s_Tr) = kernel.e88_scan(*fast, options=kernel.E88KernelOptions(**options)), naive.e88_scan(*ref)
    gy, gs = torch.randn(yr.shape, dtype=torch.float64), torch.randn(s_Tr.shape, dtype=torch.float64)
    got = torch.autograd.grad((y * gy.float().to(DEV)).sum() + (s_T * gs.float().to(DEV)).sum(), fast)
    want = torch.autograd.grad((yr * gy).sum() + (s_Tr * gs).sum(), ref)
    errs = [rel(y, yr), rel(s_T, s_Tr)] + [rel(a, b) for a, b in zip(got, want)]
    print(f"e88 {options}: " + " ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < TOL[torch.float32], errs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 70, 3, 32, 64), (1, 33, 2, 80, 160), (2, 130, 4, 64, 64)])
@pytest.mark.parametrize("with_s0", [False, True])
def test_gated_delta_fla(dtype, shape, with_s0):
    """The gated delta op's "triton" backend, fla's chunk kernel, against the float64 reference
    (q scaled, k unit-norm, log decay and beta in fp32 as the reference layer passes them).
    Tolerance 2e-2: fla's chunk kernels multiply in TF32 (measured values are printed). Where fla
    refuses its backward (Hopper with Triton in [3.4, 3.7.1), ``fla_backward_refusal``), the
    outputs are checked and the backward must raise: rnnlab refuses those runs up front."""
    from rnnlab.ops.delta import GATED_DELTA_SCAN, fla_backward_refusal, gated_delta_scan, naive

    if not GATED_DELTA_SCAN.kernel_available():
        pytest.skip(f"fla not importable: {GATED_DELTA_SCAN.kernel.error}")
    torch.manual_seed(hash((shape, with_s0)) % 1000 + 13)
    B, T, H, K, V = shape
    q = torch.randn(B, T, H, K) * K ** -0.5
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
    inputs = [q, k, torch.randn(B, T, H, V), -torch.rand(B, T, H) * 0.3, torch.rand(B, T, H),
              torch.randn(B, H, K, V) * 0.5 if with_s0 else None]
    _check_op(f"gated_delta{shape}", lambda *a: gated_delta_scan(*a, backend="triton"), naive.gated_delta_scan,
              inputs, dtype, tol=2e-2, fp32_inputs=(3, 4, 5), refused=fla_backward_refusal())


@pytest.mark.parametrize("layer", [dict(n_state=32, heads=3), dict(n_state=24, expansion=1.5, heads=4)])
def test_e88_layer(layer):
    from rnnlab.layers.e88 import E88, E88Config

    cpu, gpu = _pair(E88, E88Config, {"backend": "triton"}, dim=96, backend="naive", **layer)
    _check_layer(f"E88 {layer}", cpu, gpu, 96, 1e-4)


def test_gdn_official_vs_reference():
    """fla's GatedDeltaNet (CUDA, fp32 in, TF32 products inside its chunk kernels) against the
    PyTorch reference on CPU (float64) with the SAME state_dict; tolerance 2e-2 as Mamba2's. Where fla
    refuses its backward here (``fla_backward_refusal``), the output is compared and the backward must raise."""
    from rnnlab.layers.gdn import FLA_LAYER, GatedDeltaNet, GatedDeltaNetConfig
    from rnnlab.ops.delta import fla_backward_refusal

    if not FLA_LAYER.available():
        pytest.skip(f"fla's layer not importable: {FLA_LAYER.error}")
    torch.manual_seed(0)
    cfg = dict(dim=128, head_dim=32, heads=4, expand_v=2.0)
    ref = GatedDeltaNet(GatedDeltaNetConfig(**cfg, backend="reference"))
    off = GatedDeltaNet(GatedDeltaNetConfig(**cfg, backend="official"))
    off.load_state_dict(ref.state_dict())
    _check_layer("GDN official", ref, off, 128, 2e-2, B=2, T=80, refused=fla_backward_refusal())


def test_gdn_official_step_matches_forward():
    """Decoding an official (fla) layer token by token (the reference's step on CUDA with fla's
    gated norm) gives its eval forward (fla's fused_recurrent kernel for short sequences)."""
    from rnnlab.layers.gdn import FLA_LAYER, GatedDeltaNet, GatedDeltaNetConfig

    if not FLA_LAYER.available():
        pytest.skip(f"fla's layer not importable: {FLA_LAYER.error}")
    torch.manual_seed(0)
    layer = GatedDeltaNet(GatedDeltaNetConfig(dim=128, head_dim=32, backend="official")).to(DEV).eval()
    x = torch.randn(2, 24, 128, device=DEV)
    with torch.no_grad():
        y = layer(x)
        state = layer.init_state(2, x.device, x.dtype)
        steps = []
        for t in range(x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            steps.append(y_t)
    assert rel(torch.stack(steps, 1), y) < 1e-3
