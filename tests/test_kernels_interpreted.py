"""The Triton kernels on CPU, in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1`` when
there is no GPU): every registered op's GPU kernel (E1's heads and dense per-step scans, plain and
with the selective decay / low-rank terms, the linear scan, the fused minGRU/minLSTM gate scans,
E16's diagonal scan, E88's checkpointed scan) against the op's float64 reference, forward, final
state and every input gradient; E1 heads' spectral-norm kernels against E1's own reference; and
E1's ``rnnlab::elman_scan_*`` / ``elman_selective_*`` / ``spectral_heads_*``, E16's
``rnnlab::diag_elman_*`` and the linear / minGRU / minLSTM scans' ``rnnlab::linear_scan_*`` custom
ops under opcheck and torch.compile. fp32 inputs (E1's kernels run their IEEE path; one test runs
their 16-bit path on fp16). The GPU suite (tests/gpu) covers bf16/fp16, the fast tanh, the
persistent E1 kernel and the external kernels behind the ssd and gated-delta ops' "triton"
backends (mamba_ssm's and fla's, which do not run in the interpreter)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops import OPS
from rnnlab.ops.elman.options import ElmanKernelOptions

pytestmark = [
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                       reason="runs the Triton interpreter (CPU-only machines)"),
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]

E = pytest.importorskip("rnnlab.ops.elman.triton")
TOL = dict(rtol=1e-5, atol=2e-5)


def _elman(B, T, H, heads=0):
    def make(g):
        hd = H // heads if heads else H
        w = torch.randn(heads, hd, hd, generator=g) if heads else torch.randn(H, H, generator=g)
        return [torch.randn(B, T, H, generator=g), w / hd**0.5]
    return make


def _decay(B, T, H, heads=0):
    return lambda g: [*_elman(B, T, H, heads)(g), torch.rand(B, T, H, generator=g)]


def _lowrank(B, T, H, r, heads=0):
    return lambda g: [*_elman(B, T, H, heads)(g), *(torch.randn(H, r, generator=g) * 0.5 for _ in "UV"),
                      torch.randn(B, T, r, generator=g)]


def _scan(B, T, H, parts=0):
    if parts:
        return lambda g: [torch.randn(B, T, parts * H, generator=g) * 2]
    return lambda g: [torch.rand(B, T, H, generator=g) * 0.9 + 0.05, torch.randn(B, T, H, generator=g)]


def _diag(B, T, S):
    return lambda g: [torch.randn(B, T, S, generator=g), torch.rand(S, generator=g)]


def _e88(B, T, H, n, m):
    def make(g):
        q, k = (F.normalize(torch.randn(B, T, H, n, generator=g), dim=-1) for _ in range(2))
        return [q, k, torch.randn(B, T, H, m, generator=g), torch.rand(B, T, H, generator=g) * 0.5 + 0.5]
    return make


# (op, inputs(generator) without h0, h0 shape after the batch: an int for vector states). B = 17
# leaves a partial batch tile; hd = 24 (12) is padded to 32 (16) lanes; T = 1, 5, 6, 8 and 9 exercise
# the scans' 4-step unroll masks and the next group's loads issued ahead (masked past T); H = 130
# and 300 take several channel blocks, the last partial; dense H = 20 / 40 leave a
# partial column tile; ranks 3 and 5 are padded to 16. Selective heads: decay runs the heads
# kernel, low-rank the dense one (block-diagonal W).
CASES = [
    ("elman_scan", _elman(3, 6, 32, heads=2), 32), ("elman_scan", _elman(17, 5, 72, heads=3), 72),
    ("elman_scan", _elman(1, 1, 16, heads=1), 16), ("elman_scan", _elman(2, 4, 32, heads=4), 32),
    ("elman_scan", _elman(3, 5, 40), 40), ("elman_scan", _elman(1, 3, 24), 24),
    ("elman_decay_scan", _decay(17, 3, 72, heads=3), 72), ("elman_decay_scan", _decay(1, 4, 24, heads=2), 24),
    ("elman_decay_scan", _decay(3, 4, 40), 40), ("elman_decay_scan", _decay(1, 3, 20), 20),
    ("elman_lowrank_scan", _lowrank(2, 4, 20, 3), 20), ("elman_lowrank_scan", _lowrank(1, 3, 32, 5, heads=2), 32),
    ("linear_scan", _scan(2, 6, 20), 20), ("linear_scan", _scan(3, 5, 300), 300),
    ("mingru_scan", _scan(2, 6, 20, parts=2), 20), ("mingru_scan", _scan(2, 1, 300, parts=2), 300),
    ("mingru_scan", _scan(2, 8, 130, parts=2), 130),
    ("minlstm_scan", _scan(2, 6, 20, parts=3), 20), ("minlstm_scan", _scan(3, 9, 12, parts=3), 12),
    ("diag_elman_scan", _diag(2, 6, 20), 20), ("diag_elman_scan", _diag(3, 5, 300), 300),
    # n, m not powers of two (padded lanes), n != m, B = 1; T = 1 (one decoding step from a state)
    ("e88_scan", _e88(2, 6, 2, 4, 6), (2, 4, 6)), ("e88_scan", _e88(1, 5, 2, 5, 3), (2, 5, 3)),
    ("e88_scan", _e88(2, 1, 1, 3, 4), (1, 3, 4)),
]
_id = lambda case: f"{case[0]}-{case[2]}"  # noqa: E731


def check_kernel(kernel, reference, inputs, h0=None, seed=0):
    """``kernel`` (fp32) against ``reference`` (float64 of the same values), both called as
    ``fn(*inputs, h0)``: outputs, final states and the gradients of every input (and ``h0``)
    through the outputs."""
    g = torch.Generator().manual_seed(seed)
    leaves = [t.requires_grad_() for t in (*inputs, *([] if h0 is None else [h0]))]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    out, out_last = kernel(*leaves) if h0 is not None else kernel(*leaves, None)
    ref, ref_last = reference(*ref_leaves) if h0 is not None else reference(*ref_leaves, None)
    torch.testing.assert_close(out, ref.float(), **TOL)
    assert out_last.dtype == torch.float32
    torch.testing.assert_close(out_last, ref_last.float(), **TOL)
    grad_out = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, leaves, grad_out)
    want = torch.autograd.grad(ref, ref_leaves, grad_out.double())
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b.float(), **TOL, msg=f"grad of input {i}")


def test_every_kernel_op_has_a_case():
    external = {"ssd_scan", "gated_delta_scan"}  # mamba_ssm's and fla's kernels: tests/gpu only
    own_test = {"elman_scan_beside_linear",  # three outputs: test_elman_scan_beside_linear
                "spectral_norm"}  # not a scan: test_spectral_norm_heads
    with_kernel = {name for name, op in OPS.items() if op.kernel is not None} - external - own_test
    assert {case[0] for case in CASES} == with_kernel


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("with_h0", [False, True])
def test_kernel_matches_reference(case, with_h0):
    name, make, width = case
    g = torch.Generator().manual_seed(1)
    inputs = make(g)
    batch = inputs[0].shape[0]
    op = OPS[name]
    shape = width if isinstance(width, tuple) else (width,)
    h0 = torch.randn(batch, *shape, generator=g) if with_h0 else None
    check_kernel(getattr(op.kernel.get(), name), op.naive, inputs, h0)


# one case of each op with a state and B > 1 (E1: heads, dense, heads with decay, low-rank)
STRIDED_H0_CASES = [CASES[i] for i in (0, 4, 6, 10, 12, 14, 17, 19, 21)]


@pytest.mark.parametrize("case", STRIDED_H0_CASES, ids=_id)
def test_kernels_take_an_initial_state_of_other_strides(case):
    """An initial state that is a view of a larger tensor (as the previous chunk's final state ``h[:, -1]``
    of fp32 states is), which the kernels, indexing it as a contiguous ``[B, ...]``, must not read as
    such: outputs and every gradient, that of the state included, equal the float64 reference's."""
    name, make, width = case
    g = torch.Generator().manual_seed(9)
    inputs = make(g)
    shape = width if isinstance(width, tuple) else (width,)
    h0 = torch.randn(inputs[0].shape[0], 2, *shape, generator=g)[:, 1]
    assert inputs[0].shape[0] > 1 and not h0.is_contiguous()
    op = OPS[name]
    check_kernel(getattr(op.kernel.get(), name), op.naive, inputs, h0)


def test_e88_gradient_of_the_initial_state_alone():
    """Only ``S0`` requires a gradient (a learned initial state before frozen inputs): the forward
    keeps its checkpoints all the same, and ``S0``'s gradient is the float64 reference's."""
    g = torch.Generator().manual_seed(10)
    inputs = _e88(2, 5, 2, 3, 4)(g)
    s0 = torch.randn(2, 2, 3, 4, generator=g, requires_grad=True)
    ref_s0 = s0.detach().double().requires_grad_()
    y, _ = OPS["e88_scan"].kernel.get().e88_scan(*inputs, s0)
    ref, _ = OPS["e88_scan"].naive(*(t.double() for t in inputs), ref_s0)
    dy = torch.randn(y.shape, generator=g)
    (got,) = torch.autograd.grad(y, s0, dy)
    (want,) = torch.autograd.grad(ref, ref_s0, dy.double())
    torch.testing.assert_close(got, want.float(), **TOL)


def test_e88_backward_takes_output_gradients_of_other_strides():
    """The gradients of ``y`` and of ``S_T`` in other memory layouts (a loss of ``y.sum()`` or a slice
    passes an expanded or strided one; here both transposed), which the backward kernel, indexing them as
    contiguous, must not read as such: every input's gradient equals the float64 reference's."""
    g = torch.Generator().manual_seed(11)
    leaves = [t.requires_grad_() for t in (*_e88(2, 5, 2, 3, 4)(g), torch.randn(2, 2, 3, 4, generator=g))]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y, s_T = OPS["e88_scan"].kernel.get().e88_scan(*leaves)
    ref, ref_s_T = OPS["e88_scan"].naive(*ref_leaves)
    gy = torch.randn(y.shape[::-1], generator=g).permute(3, 2, 1, 0)
    gs = torch.randn(s_T.shape[::-1], generator=g).permute(3, 2, 1, 0)
    assert not gy.is_contiguous() and not gs.is_contiguous()
    got = torch.autograd.grad((y, s_T), leaves, (gy, gs))
    want = torch.autograd.grad((ref, ref_s_T), ref_leaves, (gy.double(), gs.double()))
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b.float(), **TOL, msg=f"grad of input {i}")


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # g's sigmoid: exp(200) = inf, 1 / inf = 0
@pytest.mark.parametrize("name,parts", [("mingru_scan", 2), ("minlstm_scan", 3)])
def test_fused_gates_saturated(name, parts):
    """The fused minGRU / minLSTM gates where they saturate: pre-activations up to ~±200 (an exp of
    the raw value would overflow fp32 past 88), and a minLSTM step with both gates at -100 (their
    normalised forget gate is then 1/2 + tiny, not 0/0), against float64; and candidates of exactly
    0, where g(x) = x + 0.5 (slope 1) meets sigmoid (slope 1/4): the reference's slope there is 1."""
    H = 12
    g = torch.Generator().manual_seed(5)
    p = torch.randn(2, 5, parts * H, generator=g) * 60
    p[0, 2, H:] = -100.0
    p[1, 3, :H] = 0.0
    op = OPS[name]
    check_kernel(getattr(op.kernel.get(), name), op.naive, [p])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # exp(2x) = inf: tanh's exp form gives 1
@pytest.mark.parametrize("name,make", [("elman_scan", _elman(2, 3, 24, heads=1)), ("elman_decay_scan", _decay(2, 3, 20)),
                                       ("diag_elman_scan", _diag(2, 3, 20))])
def test_tanh_saturated(name, make):
    """The kernels' tanh (``1 - 2 / (exp(2x) + 1)``) where it saturates: pre-activations up to
    ~±200, whose exp(2x) overflows fp32 (inf, or 0 below), against float64: +-1, not inf / inf."""
    g = torch.Generator().manual_seed(8)
    x, *rest = make(g)
    check_kernel(getattr(OPS[name].kernel.get(), name), OPS[name].naive, [x * 60, *rest])


@pytest.mark.parametrize("bk", [16, 128])
@pytest.mark.parametrize("name,make", [("elman_scan", _elman(4, 3, 40)), ("elman_decay_scan", _decay(4, 3, 40)),
                                       ("elman_lowrank_scan", _lowrank(4, 3, 40, 2))])
def test_dense_step_kernel_options(bk, name, make):
    """E1's per-step kernel (plain and selective) with the default options and with 16-wide K
    chunks (several per step, each adding to the low-rank product too)."""
    opts = ElmanKernelOptions(dense_bk=bk, heads_bt=16)
    g = torch.Generator().manual_seed(2)
    kernel = getattr(OPS[name].kernel.get(), name)
    check_kernel(lambda *a: kernel(*a, options=opts), OPS[name].naive, make(g), torch.randn(4, 40, generator=g))


@pytest.mark.parametrize("every", [1, 3, 16])
def test_e88_backward_from_checkpoints(every):
    """E88's backward recomputes each segment of ``every`` steps from its checkpoint (T = 7: a
    partial last segment for 3, one segment longer than T for 16): outputs, final state and the
    gradient of every input through both the outputs and the final state, against the float64
    reference."""
    from rnnlab.ops.e88 import naive
    from rnnlab.ops.e88 import triton as kernel

    g = torch.Generator().manual_seed(5)
    leaves = [t.requires_grad_() for t in (*_e88(2, 7, 2, 3, 5)(g), torch.randn(2, 2, 3, 5, generator=g))]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    opts = kernel.E88KernelOptions(checkpoint_every=every, bwd_stages=1 + every % 3)
    (y, s_T), (ref, ref_s_T) = kernel.e88_scan(*leaves, options=opts), naive.e88_scan(*ref_leaves)
    torch.testing.assert_close(y, ref.float(), **TOL)
    torch.testing.assert_close(s_T, ref_s_T.float(), **TOL)
    gy, gs = torch.randn(y.shape, generator=g), torch.randn(s_T.shape, generator=g)
    got = torch.autograd.grad((y * gy).sum() + (s_T * gs).sum(), leaves)
    want = torch.autograd.grad((ref * gy.double()).sum() + (ref_s_T * gs.double()).sum(), ref_leaves)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b.float(), **TOL, msg=f"grad of input {i}")


def test_e88_inference_forward_equals_training_forward():
    """Without autograd the forward keeps no checkpoints; its outputs are the same bits."""
    from rnnlab.ops.e88 import triton as kernel

    inputs = _e88(2, 5, 2, 4, 4)(torch.Generator().manual_seed(6))
    with torch.no_grad():
        y, s_T = kernel.e88_scan(*inputs)
    y2, s_T2 = kernel.e88_scan(*(t.requires_grad_() for t in inputs))
    assert not y.requires_grad and y2.requires_grad
    assert torch.equal(y, y2) and torch.equal(s_T, s_T2)


def test_e88_final_state_of_fp64_inputs_is_fp64():
    """The final state comes back in the compute dtype, fp64 for fp64 inputs, as every op and the
    reference return it (the kernel keeps it in fp32 and returned that), with the reference's values."""
    from rnnlab.ops.e88 import naive
    from rnnlab.ops.e88 import triton as kernel

    inputs = [t.double() for t in _e88(2, 5, 2, 3, 4)(torch.Generator().manual_seed(7))]
    (y, s_T), (_, ref_s_T) = kernel.e88_scan(*inputs), naive.e88_scan(*inputs)
    assert y.dtype == s_T.dtype == ref_s_T.dtype == torch.float64
    torch.testing.assert_close(s_T, ref_s_T, **TOL)


@pytest.mark.parametrize("name,make", [
    ("elman_scan", _elman(3, 4, 48, heads=3)), ("elman_scan", _elman(2, 3, 40)),
    ("elman_decay_scan", _decay(17, 3, 48, heads=2)), ("elman_decay_scan", _decay(1, 4, 40)),
    ("elman_lowrank_scan", _lowrank(2, 3, 40, 3, heads=2)),
])
def test_elman_kernels_16bit_path(name, make):
    """E1's kernels on 16-bit inputs (16-bit MMA operands, fp32 accumulation and state, 16-bit
    stores) against the float64 reference on the same rounded values: relative error of the
    output and every gradient under 1e-2 (measured ~5e-4). fp16, since the interpreter cannot run
    bf16 (numpy has none); the GPU tests cover bf16."""
    g = torch.Generator().manual_seed(6)
    inputs = [x.half() for x in make(g)]
    h0 = torch.randn(inputs[0].shape[0], inputs[0].shape[2], generator=g).tanh().half()
    leaves = [x.requires_grad_() for x in (*inputs, h0)]
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    out, _ = getattr(OPS[name].kernel.get(), name)(*leaves)
    ref, _ = OPS[name].naive(*ref_leaves)
    grad_out = torch.randn(out.shape, generator=g)
    got = [out, *torch.autograd.grad(out, leaves, grad_out.half())]
    want = [ref, *torch.autograd.grad(ref, ref_leaves, grad_out.double())]
    assert out.dtype == torch.float16
    for i, (a, b) in enumerate(zip(got, want)):
        assert ((a.double() - b).norm() / b.norm()).item() < 1e-2, i


def test_heads_backward_skips_dw_when_not_needed():
    wx, w = _elman(2, 3, 32, heads=2)(torch.Generator().manual_seed(3))
    wx.requires_grad_()
    (dwx,) = torch.autograd.grad(E.elman_scan(wx, w)[0].sum(), [wx])
    (want,) = torch.autograd.grad(E.elman_scan(wx, w.requires_grad_())[0].sum(), [wx])
    torch.testing.assert_close(dwx, want, rtol=0, atol=0)


@pytest.mark.parametrize("heads", [2, 0])
def test_weight_gradient_when_only_the_weight_requires_it(heads):
    """``W_h``'s gradient is computed when ``W_h`` requires it, whether or not ``wx`` does (a frozen
    input projection): the float64 reference's."""
    g = torch.Generator().manual_seed(13)
    wx, w = _elman(2, 5, 32, heads=heads)(g)
    w.requires_grad_()
    ref_w = w.detach().double().requires_grad_()
    dy = torch.randn(2, 5, 32, generator=g)
    (got,) = torch.autograd.grad(E.elman_scan(wx, w)[0], [w], dy)
    (want,) = torch.autograd.grad(OPS["elman_scan"].naive(wx.double(), ref_w)[0], [ref_w], dy.double())
    torch.testing.assert_close(got, want.float(), **TOL)


@pytest.mark.parametrize("B,T,H,heads,rows,with_h0,dtype", [
    (3, 5, 72, 3, 32, True, torch.float32), (2, 33, 32, 2, 64, False, torch.float32),
    (1, 1, 16, 1, 32, True, torch.float32), (3, 37, 256, 2, 1024, True, torch.float16)])
def test_heads_weight_gradient(B, T, H, heads, rows, with_h0, dtype):
    """``heads.weight_gradient`` (the Gluon backward's dW_h at 128 channels, summed after the scan:
    chunks of flat rows that straddle sequences, h0's terms at t = 0; here heads of 24 channels
    padded to 32 too, and the 16-bit MMA path at 128 channels and 1024 rows) equals the float64
    reference's dW_h given its dpre (= the gradient of wx) and states; a row count that is not a
    multiple of the kernel's row block is refused."""
    g = torch.Generator().manual_seed(11)
    wx, w = (x.double().requires_grad_() for x in _elman(B, T, H, heads)(g))
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64) if with_h0 else None
    h = OPS["elman_scan"].naive(wx, w, h0)[0]
    dpre, dw = torch.autograd.grad(h, [wx, w], torch.randn(B, T, H, generator=g, dtype=torch.float64))
    got = E.heads.weight_gradient(dpre.to(dtype), h.detach().to(dtype), None if h0 is None else h0.to(dtype),
                                  heads, rows)
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), dw, **TOL)
    else:  # the inputs rounded to fp16, the sums fp32
        assert ((got.double() - dw).norm() / dw.norm()).item() < 2e-3
    with pytest.raises(ValueError, match=r"^heads_dw_rows must be a positive multiple of 32 \(the kernel's row block\), got 48$"):
        E.heads.weight_gradient(dpre.float(), h.detach().float(), None, heads, 48)


@pytest.mark.parametrize("name,make", [("elman_scan", _elman(2, 3, 272, heads=2)),
                                       ("elman_decay_scan", _decay(2, 3, 272, heads=2))])
def test_heads_wider_than_the_heads_kernels_run_as_their_block_diagonal_matrix(name, make, monkeypatch):
    """Heads of 136 channels (256 lanes: on a GPU the heads kernels asked for more shared memory than
    an SM has) run on the dense kernels with the block-diagonal W_h, and W_h's gradient keeps its
    diagonal blocks: the float64 reference's values, with the heads kernels made to fail."""
    assert E.heads.runs(torch.empty(2, 128, 128)) and not E.heads.runs(torch.empty(2, 136, 136))

    def refused(*args, **kwargs):
        raise AssertionError("the heads kernels ran heads of 256 lanes")

    monkeypatch.setattr(E.heads, "_heads_fwd", refused)
    monkeypatch.setattr(E.heads, "_heads_bwd", refused)
    g = torch.Generator().manual_seed(12)
    check_kernel(getattr(OPS[name].kernel.get(), name), OPS[name].naive, make(g), torch.randn(2, 272, generator=g))


def _elman_leaves(heads):
    g = torch.Generator().manual_seed(4)
    wx, w = _elman(2, 3, 32, heads=heads)(g)
    return [wx.requires_grad_(), w.requires_grad_(), torch.randn(2, 32, generator=g).requires_grad_()]


def _diag_leaves():
    g = torch.Generator().manual_seed(7)
    u, a = _diag(2, 5, 20)(g)
    return [u.requires_grad_(), a.requires_grad_(), torch.randn(2, 20, generator=g).requires_grad_()]


@pytest.mark.parametrize("heads", [2, 0])
def test_custom_ops_pass_opcheck(heads):
    """Schema, fake (meta) implementation and autograd registration agree with the real kernels."""
    wx, w, hz = _elman_leaves(heads)
    options = ElmanKernelOptions().to_ints()
    torch.library.opcheck(torch.ops.rnnlab.elman_scan_fwd.default, (wx, w, hz, options))
    torch.library.opcheck(torch.ops.rnnlab.elman_scan_fwd.default, (wx, w, None, options))


def _beside_leaves(heads):
    """``elman_scan_beside_linear``'s inputs as leaves: ``_elman_leaves``' wx, w (B 2, T 3, H 32)
    and a projection of x ``[2, 3, 24]`` by wl ``[40, 24]``."""
    wx, w, _ = _elman_leaves(heads)
    g = torch.Generator().manual_seed(9)
    return [wx, w, torch.randn(2, 3, 24, generator=g).requires_grad_(),
            (torch.randn(40, 24, generator=g) / 5).requires_grad_()]


@pytest.mark.parametrize("heads", [2, 0])
def test_elman_scan_beside_linear(heads):
    """The kernels' ``elman_scan_beside_linear`` (the heads scan with E1's gate projection, whose
    GEMMs a GPU runs on a second stream; here one after the other) against the float64 reference:
    the states, final state, projection and every input's gradient through all three."""
    leaves = _beside_leaves(heads)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    got = E.elman_scan_beside_linear(*leaves)
    want = OPS["elman_scan_beside_linear"].naive(*ref_leaves)
    g = torch.Generator().manual_seed(4)
    grads_out = [torch.randn(t.shape, generator=g) for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), **TOL)
    got_grads = torch.autograd.grad(got, leaves, grads_out)
    want_grads = torch.autograd.grad(want, ref_leaves, [t.double() for t in grads_out])
    for i, (a, b) in enumerate(zip(got_grads, want_grads)):
        torch.testing.assert_close(a, b.float(), **TOL, msg=f"grad of input {i}")


def test_elman_scan_beside_custom_ops_pass_opcheck():
    """Schema, fake implementation and autograd registration of ``rnnlab::elman_scan_beside_*``
    agree with the real ops: the backward's with a weight transposed in memory (its gradient still
    contiguous) and with the projection's gradients left out."""
    leaves = _beside_leaves(2)
    options = ElmanKernelOptions().to_ints()
    torch.library.opcheck(torch.ops.rnnlab.elman_scan_beside_fwd.default, (*leaves, options))
    wx, w, x, wl = (t.detach() for t in leaves)
    h = E._beside_fwd(wx, w, x, wl, options)[0]
    for need in ((True, True, True), (False, False, False)):
        torch.library.opcheck(torch.ops.rnnlab.elman_scan_beside_bwd.default,
                              (torch.randn_like(h), w, h, x, wl.t().contiguous().t(), torch.randn(2, 3, 40), *need,
                               options))


@pytest.mark.parametrize("frozen", [2, 3])
def test_elman_scan_beside_linear_frozen_input(frozen):
    """An input of the projection that needs no gradient (``x`` or ``wl``) gets none; the others
    theirs, as the reference's."""
    leaves = _beside_leaves(2)
    leaves[frozen].requires_grad_(False)
    ref_leaves = [t.detach().double().requires_grad_(t.requires_grad) for t in leaves]
    grad = [t for t in leaves if t.requires_grad]
    got = torch.autograd.grad(E.elman_scan_beside_linear(*leaves)[2].sum(), grad)
    want = torch.autograd.grad(OPS["elman_scan_beside_linear"].naive(*ref_leaves)[2].sum(),
                               [t for t in ref_leaves if t.requires_grad], allow_unused=True)
    assert len(got) == 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b.float(), **TOL)


def test_elman_scan_beside_linear_under_autocast():
    """Under autocast the projection runs in autocast's dtype, as ``F.linear``'s would (z in bf16),
    and its backward too; the fp32 leaves get fp32 gradients within bf16's rounding of the
    reference's."""
    leaves = _beside_leaves(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, _, z = E.elman_scan_beside_linear(*leaves)
        want = F.linear(leaves[2], leaves[3])
    assert z.dtype == want.dtype == torch.bfloat16 and h.dtype == torch.float32
    torch.testing.assert_close(z, want)
    dx, dwl = torch.autograd.grad(z.float().sum(), leaves[2:])
    want_dx, want_dwl = torch.autograd.grad(want.float().sum(), leaves[2:])
    assert dx.dtype == dwl.dtype == torch.float32
    torch.testing.assert_close(dx, want_dx, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(dwl, want_dwl, rtol=1e-2, atol=1e-2)


def _selective_leaves(name):
    """The selective inputs of op ``name`` at ``_elman_leaves``' shapes (B 2, T 3, H 32): ``[a]``,
    ``[U, V, s]`` (r = 3), or none for the plain scan."""
    g = torch.Generator().manual_seed(5)
    shapes = {"elman_decay_scan": [(2, 3, 32)], "elman_lowrank_scan": [(32, 3), (32, 3), (2, 3, 3)]}
    return [torch.rand(*shape, generator=g).requires_grad_() for shape in shapes.get(name, [])]


@pytest.mark.parametrize("name,heads", [("elman_decay_scan", 2), ("elman_lowrank_scan", 0)])
def test_selective_custom_ops_pass_opcheck(name, heads):
    """The same for the selective scans' op (decay: ``a`` given, with and without h0; low-rank:
    ``U, V, s``, the slower dense kernel in the interpreter, with h0 only)."""
    assert OPS[name].kernel.get() is not None  # importing the kernel module registers the ops
    wx, w, hz = _elman_leaves(heads)
    extra = _selective_leaves(name)
    extra = [*extra, None, None, None] if name == "elman_decay_scan" else [None, *extra]
    options = ElmanKernelOptions().to_ints()
    for h0 in (hz, None) if name == "elman_decay_scan" else (hz,):
        torch.library.opcheck(torch.ops.rnnlab.elman_selective_fwd.default, (wx, w, *extra, h0, options))


@pytest.mark.parametrize("heads", [2, 0])
@pytest.mark.parametrize("T", [3, 0])
def test_backward_ops_pass_opcheck_with_a_weight_transposed_in_memory(heads, T):
    """E1's backward ops (``rnnlab::elman_scan_bwd``, ``elman_scan_beside_bwd``, ``elman_selective_bwd``)
    given W_h transposed in memory (e.g. ``elman_scan(wx, W.t())``): W_h's gradient comes back
    contiguous, as their fake kernels must say (a fake that kept W_h's strides failed Inductor's
    compiled backward: "expected ... stride 16==1"); also for an empty sequence."""
    assert OPS["elman_decay_scan"].kernel.get() is not None  # importing the kernel module registers the ops
    wx, w, hz = (t.detach() for t in _elman_leaves(heads))
    wx = wx[:, :T]
    w = w.transpose(-1, -2).contiguous().transpose(-1, -2)  # W_h's values, strides of its transpose
    options = ElmanKernelOptions().to_ints()
    h = E._scan_fwd(wx, w, hz, options)
    g = torch.randn_like(h)
    torch.library.opcheck(torch.ops.rnnlab.elman_scan_bwd.default, (g, w, h, hz, True, options))
    if heads:
        x, wl = torch.randn(2, T, 5), torch.randn(7, 5)
        torch.library.opcheck(torch.ops.rnnlab.elman_scan_beside_bwd.default,
                              (g, w, h, x, wl, torch.randn(2, T, 7), True, True, True, options))
    a = torch.rand(2, T, 32)
    torch.library.opcheck(torch.ops.rnnlab.elman_selective_bwd.default, (g, w, a, None, None, None, h, hz, options))
    U, V = (torch.randn(3, 32).t() for _ in "UV")  # also transposed in memory
    torch.library.opcheck(torch.ops.rnnlab.elman_selective_bwd.default,
                          (g, w, None, U, V, torch.randn(2, T, 3), h, hz, options))


@pytest.mark.parametrize("heads", [2, 0])
def test_backward_ops_take_states_of_other_strides(heads):
    """E1's backward ops given the states ``h`` in another memory layout (a ``[T, B, H]`` tensor
    transposed) compute what they do from contiguous states (the kernels index ``h`` as contiguous:
    they read other elements, past its end too), and pass opcheck."""
    assert OPS["elman_decay_scan"].kernel.get() is not None  # importing the kernel module registers the ops
    wx, w, hz = (t.detach() for t in _elman_leaves(heads))
    options = ElmanKernelOptions().to_ints()
    h = E._scan_fwd(wx, w, hz, options)
    strided = h.transpose(0, 1).contiguous().transpose(0, 1)
    g, a = torch.randn_like(h), torch.rand_like(h)
    calls = [(torch.ops.rnnlab.elman_scan_bwd.default, lambda h: (g, w, h, hz, True, options)),
             (torch.ops.rnnlab.elman_selective_bwd.default, lambda h: (g, w, a, None, None, None, h, hz, options))]
    if heads:
        x, wl, gl = torch.randn(2, 3, 5), torch.randn(7, 5), torch.randn(2, 3, 7)
        calls.append((torch.ops.rnnlab.elman_scan_beside_bwd.default,
                      lambda h: (g, w, h, x, wl, gl, True, True, True, options)))
    for op, args in calls:
        for want, got in zip(op(*args(h)), op(*args(strided))):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.library.opcheck(op, args(strided))


@pytest.mark.parametrize("name,heads", [("elman_scan", 2), ("elman_scan", 0), ("elman_decay_scan", 2),
                                        ("elman_lowrank_scan", 0), ("diag_elman_scan", None),
                                        ("elman_scan_beside_linear", 2)])
def test_compiled_scan_is_one_graph(name, heads):
    """torch.compile traces the kernel entry points of E1's and E16's custom ops (fullgraph: no
    graph break) and matches eager, outputs and every gradient (through all states and the final
    one) bit for bit."""
    import torch._dynamo

    torch._dynamo.reset()
    kernel = getattr(OPS[name].kernel.get(), name)

    def f(wx, *rest):
        h, h_last, *projection = kernel(torch.cos(wx), *rest)
        return torch.sin(h) + sum(p.sum() for p in projection), h_last

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    if name == "diag_elman_scan":
        leaves = _diag_leaves()  # u, a in [0, 1), h0
    elif name == "elman_scan_beside_linear":
        leaves = _beside_leaves(heads)  # wx, w, x, wl
    else:
        wx, w, hz = _elman_leaves(heads)
        leaves = [wx, w, *_selective_leaves(name), hz]
    outs = []
    for fn in (f, compiled):
        h, h_last = fn(*leaves)
        outs.append((h, h_last, *torch.autograd.grad((h.sum(), h_last.sum()), leaves)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _scan_case(mode):
    """The scan op's inputs (``mode`` 0: a in (0.05, 0.95), b; 1 / 2: minGRU's / minLSTM's
    projection, b None) and ``h0``, as leaves."""
    g = torch.Generator().manual_seed(3 + mode)
    B, T, H = 2, 4, 3
    if mode == 0:
        xs = [torch.rand(B, T, H, generator=g) * 0.9 + 0.05, torch.randn(B, T, H, generator=g)]
    else:
        xs = [torch.randn(B, T, (mode + 1) * H, generator=g) * 2, None]
    return [None if t is None else t.requires_grad_() for t in (*xs, torch.randn(B, H, generator=g))]


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_scan_custom_ops_pass_opcheck(mode):
    """The linear / minGRU / minLSTM scans' op (``rnnlab::linear_scan_fwd``, its backward
    ``linear_scan_bwd``): schema, fake implementation and autograd registration agree with the
    real kernels, with h0 and without, and with inputs of other strides (a ``[B, W, T]`` tensor
    transposed: the ops' outputs are contiguous, and so must their fakes' be, or Inductor's
    compiled backward fails on the strides it was promised)."""
    from rnnlab.ops.scan import triton as kernel

    x, b, start = _scan_case(mode)
    torch.library.opcheck(kernel._scan_fwd_op, (mode, x, b, start))  # (its autograd runs the backward op)
    strided = [None if t is None else t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in (x, b)]
    torch.library.opcheck(kernel._scan_fwd_op, (mode, *strided, None))
    start = start.detach()
    h = kernel._scan_fwd_op(mode, *strided, start)
    g = torch.randn_like(h).transpose(1, 2).contiguous().transpose(1, 2)
    torch.library.opcheck(kernel._scan_bwd_op, (mode, g, strided[0], h, start))
    dx, db, dh0 = kernel._scan_bwd_op(mode, g, strided[0], h, start)
    assert dx.shape == x.shape and db.shape == (h.shape if mode == 0 else (0,)) and dh0.dtype == torch.float32


@pytest.mark.parametrize("name,mode", [("linear_scan", 0), ("mingru_scan", 1), ("minlstm_scan", 2)])
def test_compiled_linear_scans_are_one_graph(name, mode):
    """torch.compile traces the linear / minGRU / minLSTM kernel entry points (their custom op;
    fullgraph: no graph break) and matches eager, outputs and every gradient (through all states and
    the final one) bit for bit."""
    import torch._dynamo

    torch._dynamo.reset()
    kernel = getattr(OPS[name].kernel.get(), name)
    x, b, start = _scan_case(mode)
    leaves = [t for t in (x, b, start) if t is not None]

    def f(*args):
        h, h_last = kernel(torch.cos(args[0]), *args[1:])
        return torch.sin(h), h_last

    outs = []
    for fn in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
        h, h_last = fn(*leaves)
        outs.append((h, h_last, *torch.autograd.grad((h.sum(), h_last.sum()), leaves)))
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_diag_custom_op_passes_opcheck():
    """E16's scan op (``rnnlab::diag_elman_fwd``): schema, fake implementation and autograd
    registration agree with the real kernels, with and without h0."""
    from rnnlab.ops.diag import triton as kernel

    u, a, h0 = _diag_leaves()
    for start in (h0, None):
        torch.library.opcheck(kernel._scan_fwd, (u, a, start))
    # the backward op on its own, 16-bit states beside an fp32 ``a`` (fp16: the interpreter has no
    # bf16): du in h's dtype, da in a's, dh0 fp32
    h = kernel._scan_fwd(u.detach().half(), a.detach(), None)
    g = torch.randn_like(h)
    for start in (h0.detach().half(), None):
        torch.library.opcheck(kernel._scan_bwd, (g, a.detach(), h, start))
        du, da, dh0 = kernel._scan_bwd(g, a.detach(), h, start)
        assert (du.dtype, da.dtype, dh0.dtype) == (torch.float16, torch.float32, torch.float32)


@pytest.mark.parametrize("model", ["e16", "mingru", "minlstm"])
def test_layer_compiles_to_one_graph_on_the_kernel_path(model, monkeypatch):
    """With E16's / minGRU's / minLSTM's op resolved to its kernel (as on CUDA), torch.compile
    captures the whole layer (minGRU's and minLSTM's with their output projection) without a graph
    break, values and gradients as eager."""
    import torch._dynamo

    from rnnlab.layers.e16 import E16, E16Config
    from rnnlab.layers.mingru import MinGRU, MinGRUConfig
    from rnnlab.layers.minlstm import MinLSTM, MinLSTMConfig

    name, make = {"e16": ("diag_elman_scan", lambda: E16(E16Config(dim=16, state_expansion=2))),
                  "mingru": ("mingru_scan", lambda: MinGRU(MinGRUConfig(dim=16, expansion=1.5))),
                  "minlstm": ("minlstm_scan", lambda: MinLSTM(MinLSTMConfig(dim=16, expansion=1.5)))}[model]
    kernel = getattr(OPS[name].kernel.get(), name)
    monkeypatch.setattr(OPS[name], "implementation", lambda backend, x: kernel)
    torch._dynamo.reset()
    torch.manual_seed(0)
    mixer = make()
    x = torch.randn(2, 5, 16, requires_grad=True)
    outs = []
    for fn in (mixer, torch.compile(mixer, backend="aot_eager", fullgraph=True)):
        y = fn(x)
        outs.append((y, *torch.autograd.grad(y.square().sum(), [x, *mixer.parameters()])))
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer", [{}, {"heads": 2, "conv": 2, "state_expansion": 2, "norm": "rms"},
                                   {"selective": "decay", "heads": 2}, {"selective": "lowrank", "selective_rank": 2}])
def test_e1_layer_compiles_to_one_graph_on_the_kernel_path(layer, monkeypatch):
    """With the Elman ops resolved to their kernels (as on CUDA), torch.compile captures a whole E1
    layer (its switches, Recurrence and the op dispatch included) without a graph break."""
    import torch._dynamo

    from rnnlab.layers.e1 import E1, E1Config

    for name in ("elman_scan", "elman_decay_scan", "elman_lowrank_scan"):
        kernel = getattr(OPS[name].kernel.get(), name)
        monkeypatch.setattr(OPS[name], "implementation", lambda backend, x, kernel=kernel: kernel)
    torch._dynamo.reset()
    torch.manual_seed(0)
    mixer = E1(E1Config(dim=16, **layer)).train()  # training: the spectral norm updates its buffer
    start = {k: v.clone() for k, v in mixer.state_dict().items()}
    x = torch.randn(2, 5, 16)
    want, want_state = mixer(x), {k: v.clone() for k, v in mixer.state_dict().items()}
    mixer.load_state_dict(start)
    got = torch.compile(mixer, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for k, v in mixer.state_dict().items():
        torch.testing.assert_close(v, want_state[k], rtol=0, atol=0, msg=k)


def test_e88_kernel_options_refuse_bad_launches():
    from rnnlab.ops.e88.triton import E88KernelOptions

    for kw, msg in [({"fwd_warps": 3}, "fwd_warps must be a power of two >= 1, got 3"),
                    ({"bwd_warps": 0}, "bwd_warps must be a power of two >= 1, got 0"),
                    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1, got 0"),
                    ({"fwd_maxnreg": 300}, r"fwd_maxnreg must be in \[32, 255\], got 300")]:
        with pytest.raises(ValueError, match=msg):
            E88KernelOptions(**kw)
    with pytest.raises(ValueError, match=r"bwd_stages must be in \[1, 4\], got 0"):
        E88KernelOptions(bwd_stages=0)
    launch = E88KernelOptions(bwd_maxnreg=128, bwd_stages=3).launch(24, 40, backward=True)
    assert launch == dict(BN=32, BM=64, num_warps=4, STAGES=3, maxnreg=128)
    assert E88KernelOptions().launch(32, 32, backward=False) == dict(BN=32, BM=32, num_warps=1)


@pytest.mark.parametrize("name,width", [("mingru_scan", 2048), ("minlstm_scan", 3072), ("linear_scan", 2048),
                                        ("diag_elman_scan", 2048), ("elman_scan", 2048)])
def test_a_sequence_past_the_kernels_32_bit_time_offsets_is_refused_in_one_line(name, width):
    """The Triton scans offset step t by t * (row width) in 32-bit integers: a sequence whose
    offsets would overflow is refused before anything is allocated (inputs expanded over T from
    one step, no memory), with how many steps fit; that many pass the check."""
    kernel = getattr(OPS[name].kernel.get(), name)
    limit = (2**31 - 1) // width - 16  # steps that fit at this width

    def inputs(T):
        x = torch.zeros(1, 1, width).expand(1, T, width)
        if name == "linear_scan":
            return [x, x]
        if name == "diag_elman_scan":
            return [x, torch.zeros(width)]
        if name == "elman_scan":  # E1 heads: 16 heads of 128
            return [x, torch.zeros(16, 128, 128)]
        return [x]

    with pytest.raises(ValueError) as err:
        kernel(*inputs(limit + 1))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{name}") and f": {limit + 1:,} steps" in msg
    assert f"at most {limit:,} steps" in msg
    from rnnlab.ops.registry import check_time_offsets

    check_time_offsets(name, limit, width)  # the limit itself passes the check


@pytest.mark.parametrize("mode,H,T,dtype,with_h0", [
    (0, 24, 37, torch.float32, True), (0, 24, 21, torch.float32, False), (1, 40, 20, torch.float32, False),
    (2, 72, 5, torch.float32, True), (1, 72, 17, torch.bfloat16, True), (2, 64, 5, torch.bfloat16, False)])
def test_scans_by_tma_equal_the_pointer_kernels(monkeypatch, mode, H, T, dtype, with_h0):
    """The linear / minGRU / minLSTM forward scans through tensor descriptors (16-step tiles, rows
    past T and channels past H zero-filled) store the same states, bit for bit (signed zeros
    included), as the pointer kernel, so the backward computes the same gradients; inputs the
    tensor memory accelerator cannot take (a slice not 16-byte aligned, a tile over 128
    channels) go to the pointer kernel."""
    from rnnlab.ops.scan import triton as stri

    ran = []
    for name in ("_scan_fwd_tma", "_scan_fwd", "_scan_bwd"):
        kernel = getattr(stri, name)
        monkeypatch.setattr(stri, name, type("Counted", (), {
            "__getitem__": lambda self, grid, kernel=kernel, name=name: (ran.append(name), kernel[grid])[1]})())
    g = torch.Generator().manual_seed(mode)
    G = max(mode + 1, 2)
    B = 3
    if mode == 0:
        a = (torch.rand(B, T, H, generator=g) * 2 - 1).to(dtype)  # negative a: -0.0 states reach da
        b = torch.randn(B, T, H, generator=g).to(dtype)
        b[:, 0] = -0.0  # signed zeros in h (a < 0, h0 = 0): the TMA forward must store the pointer kernel's zeros
        ptrs, RS = [a, b, b], H
    else:
        x = (torch.randn(B, T, G * H, generator=g) * 2).to(dtype)
        ptrs, RS = stri._views(x, G, H), G * H
    h0 = (torch.zeros(B, H) if mode == 0 else torch.randn(B, H, generator=g)).to(dtype) if with_h0 else ptrs[0]
    dy = torch.randn(B, T, H, generator=g).to(dtype)
    runs = []
    for block in (64, 256):  # 256 channels a tile: past the TMA path's 128, the pointer kernels
        h, dh0 = torch.empty(B, T, H, dtype=dtype), torch.zeros(B, H)
        stri.launch_forward(ptrs, RS, h0, h, mode, with_h0, block)
        dx, db = torch.empty(B, T, RS, dtype=dtype), torch.empty(B, T, H, dtype=dtype)
        outs = [dx, db, db] if mode == 0 else stri._views(dx, G, H)
        stri.launch_backward([ptrs[0]] * 3 if mode == 0 else ptrs, RS, h, h0, dy, outs, dh0, mode, with_h0, block)
        runs.append((h, dx, db, dh0) if mode == 0 else (h, dx, dh0))
    assert ran == ["_scan_fwd_tma", "_scan_bwd", "_scan_fwd", "_scan_bwd"]
    for tma, pointer in zip(*runs):
        bits = torch.int16 if tma.element_size() == 2 else torch.int32
        assert torch.equal(tma.view(bits), pointer.view(bits))
    x = torch.randn(B, T, 2 * 26)  # H = 26 fp32: the second slice starts 104 bytes in
    assert stri._tma_descriptors(stri._views(x, 2, 26), 52, (B, T, 26), 32) is None
    assert stri._tma_descriptors([torch.empty(B, T, 26)] * 3, 26, (B, T, 26), 32) is None  # rows of 104 bytes
    assert stri._tma_descriptors([torch.empty(B, T, 28), torch.empty(B, T, 28, dtype=torch.bfloat16)], 28,
                                 (B, T, 28), 32) is None  # dtypes differ (bf16 rows of 56 bytes)


def test_linear_scan_kernel_reads_an_fp32_decay_beside_bf16_inputs_unrounded():
    """``a`` fp32 near 1 beside bf16 ``b`` (a decay computed in fp32 under autocast): the kernel reads
    ``a`` as the reference does, unrounded (bf16 would make 0.99 0.98828 and 0.9999 exactly 1: after
    300 steps of b = 1 a state 13% low); the states equal the reference's in bf16, ``a``'s gradient
    comes back in fp32."""
    g = torch.Generator().manual_seed(15)
    a = (0.99 + torch.rand(2, 300, 8, generator=g) * 0.0099).requires_grad_()
    b = torch.ones(2, 300, 8, dtype=torch.bfloat16, requires_grad=True)
    h, _ = OPS["linear_scan"].kernel.get().linear_scan(a, b)
    want, _ = OPS["linear_scan"].naive(a.detach().double(), b.detach().double())
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.float(), want.float(), rtol=1e-2, atol=0)
    (da,) = torch.autograd.grad(h.float().sum(), a)
    assert da.dtype == torch.float32


def test_scans_by_tma_only_on_nvidia_gpus_from_hopper_on(monkeypatch):
    """The tensor memory accelerator's forward is taken on CUDA devices of compute capability 9 and
    later only (an Ampere GPU has no TMA: its descriptors would fail to launch), never under ROCm; CPU
    tensors (the interpreter, which emulates it) take it too."""
    from types import SimpleNamespace

    from rnnlab.ops.scan import triton as stri

    has_tma = stri._has_tma.__wrapped__  # uncached
    cuda = SimpleNamespace(type="cuda")
    for major, want in [(7, False), (8, False), (9, True), (10, True)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, major=major: (major, 0))
        monkeypatch.setattr(torch.version, "hip", None)
        assert has_tma(cuda) is want, major
        monkeypatch.setattr(torch.version, "hip", "6.2")
        assert has_tma(cuda) is False, major
    assert has_tma(torch.device("cpu")) is True


@pytest.mark.parametrize("name,make,width", [
    ("linear_scan", _scan(3, 0, 20), 20), ("mingru_scan", _scan(3, 0, 20, parts=2), 20),
    ("minlstm_scan", _scan(3, 0, 20, parts=3), 20), ("diag_elman_scan", _diag(3, 0, 20), 20),
    ("elman_scan", _elman(3, 0, 32, heads=2), 32), ("elman_scan", _elman(3, 0, 32), 32),
    ("elman_decay_scan", _decay(3, 0, 32), 32)],
    ids=["linear", "mingru", "minlstm", "diag", "elman_heads", "elman_dense", "elman_decay"])
def test_kernels_of_an_empty_sequence_give_h0_the_final_states_gradient(name, make, width):
    """T = 0: the final state is ``h0``, so ``h0``'s gradient is exactly the final state's; the scan's
    backward, which launches no kernel, adds zeros to it (not an uninitialised buffer: tensors of NaN
    are freed just before, where the allocator may hand them out again)."""
    g = torch.Generator().manual_seed(14)
    inputs = [x.requires_grad_() for x in make(g)]
    h0 = torch.randn(3, width, generator=g, requires_grad=True)
    g_T = torch.randn(3, width, generator=g)
    h, h_T = getattr(OPS[name].kernel.get(), name)(*inputs, h0)
    loss = h.sum() + (h_T * g_T).sum()
    for _ in range(4):
        torch.full((3, width), float("nan"))
    (dh0,) = torch.autograd.grad(loss, [h0])
    assert torch.equal(dh0, g_T)


@pytest.mark.parametrize("name", ["elman_decay_scan", "elman_lowrank_scan"])
def test_selective_kernels_of_an_empty_sequence_return_the_initial_state(name):
    """T = 0: no states, and the final state is the initial one, exactly, in fp32 (zeros without
    one), as the reference's (tests/test_ops.py)."""
    make = _decay(2, 0, 32) if name == "elman_decay_scan" else _lowrank(2, 0, 32, 3)
    inputs = make(torch.Generator().manual_seed(0))
    h0 = torch.randn(2, 32)
    kernel = getattr(OPS[name].kernel.get(), name)
    h, h_last = kernel(*inputs, h0)
    assert h.shape == (2, 0, 32) and h_last.dtype == torch.float32 and torch.equal(h_last, h0)
    assert torch.equal(kernel(*inputs, None)[1], torch.zeros(2, 32))


def test_spectral_kernels_take_square_float_cuda_heads_up_to_max_head():
    """``spectral.takes``: the kernels run a CUDA ``[n, hd, hd]`` of bf16 / fp16 / fp32 with ``hd``
    up to :data:`MAX_HEAD` (128) inclusive, nothing else (E1's PyTorch reference runs the rest)."""
    from types import SimpleNamespace

    from rnnlab.ops.elman import spectral

    def w(*shape, dtype=torch.float32, cuda=True):  # takes reads only these
        return SimpleNamespace(shape=shape, dim=lambda: len(shape), dtype=dtype, is_cuda=cuda)

    assert spectral.MAX_HEAD == 128
    assert all(spectral.takes(w(2, hd, hd, dtype=dt)) for hd in (1, 24, 128)
               for dt in (torch.bfloat16, torch.float16, torch.float32))
    assert not any(spectral.takes(x) for x in (w(2, 129, 129), w(2, 16, 8), w(16, 16), w(2, 16, 16, cuda=False),
                                               w(2, 16, 16, dtype=torch.float64)))

@pytest.mark.parametrize("n, hd, iters", [(3, 24, 3), (2, 128, 1), (4, 40, 5)])
def test_spectral_norm_heads(n, hd, iters):
    """E1 heads' spectral norm kernels (one program a head; hd 24 and 40 padded to 32 and 64 lanes)
    against the op's reference in float64: the scaled weight, the stored power-iteration vector and
    the weight's gradient through the scaled weight."""
    from rnnlab.ops.elman import naive, spectral

    g = torch.Generator().manual_seed(n * hd + iters)
    w = (torch.randn(n, hd, hd, generator=g) / hd**0.5).requires_grad_()
    u = F.normalize(torch.randn(n, hd, generator=g), dim=-1)
    ref_w = w.detach().double().requires_grad_()
    got, got_u = spectral.spectral_norm_heads(w, u, 0.9, iters)
    want, want_u = naive.spectral_norm(ref_w, u.double(), 0.9, iters)
    torch.testing.assert_close(got, want.float(), **TOL)
    torch.testing.assert_close(got_u, want_u.float(), **TOL)
    grad = torch.randn(n, hd, hd, generator=g)
    torch.testing.assert_close(torch.autograd.grad(got, w, grad)[0],
                               torch.autograd.grad(want, ref_w, grad.double())[0].float(), **TOL)


def test_spectral_norm_heads_custom_ops_pass_opcheck():
    """Schema, fake implementations and autograd registration of ``rnnlab::spectral_heads_*``."""
    from rnnlab.ops.elman import spectral

    g = torch.Generator().manual_seed(5)
    w = torch.randn(2, 24, 24, generator=g).requires_grad_()
    u = F.normalize(torch.randn(2, 24, generator=g), dim=-1)
    torch.library.opcheck(torch.ops.rnnlab.spectral_heads_fwd.default, (w, u, 0.99, 3))
    _, _, uv, x = spectral._fwd(w.detach(), u, 0.99, 3)
    torch.library.opcheck(torch.ops.rnnlab.spectral_heads_bwd.default, (torch.randn(2, 24, 24), w.detach(), uv, x, 0.99))
