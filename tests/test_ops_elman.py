"""elman_scan: the reference against an explicit per-element formula, dtypes, argument checks,
the persistent kernel's launch choice and the kernel options (the op contract: tests/test_ops.py)."""

import re
from pathlib import Path

import pytest
import torch

from rnnlab.ops.elman import elman_decay_scan, elman_lowrank_scan, elman_scan
from rnnlab.ops.elman import naive

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def explicit(wx, w_h, h0=None):
    """h_t = tanh(wx_t + W h_{t-1}) element by element, heads expanded to a block-diagonal W."""
    W = w_h if w_h.dim() == 2 else torch.block_diag(*w_h.unbind(0))
    B, T, H = wx.shape
    h = torch.zeros(B, H, dtype=torch.float64) if h0 is None else h0.double()
    out = torch.empty(B, T, H, dtype=torch.float64)
    for t in range(T):
        new = torch.empty(B, H, dtype=torch.float64)
        for b in range(B):
            for i in range(H):
                new[b, i] = torch.tanh(wx[b, t, i].double() + sum(W[i, j].double() * h[b, j] for j in range(H)))
        h = new
        out[:, t] = h
    return out


@pytest.mark.parametrize("heads", [None, 1, 2, 3])
@pytest.mark.parametrize("with_h0", [False, True])
def test_naive_matches_explicit(heads, with_h0):
    g = torch.Generator().manual_seed(0)
    B, T, H = 2, 5, 6
    wx = torch.randn(B, T, H, generator=g)
    w_h = torch.randn(H, H, generator=g) * 0.5 if heads is None else torch.randn(heads, H // heads, H // heads, generator=g) * 0.5
    h0 = torch.randn(B, H, generator=g) if with_h0 else None
    h, h_last = elman_scan(wx, w_h, h0, backend="naive")
    assert h.shape == (B, T, H) and h.dtype == torch.float32 and torch.equal(h_last, h[:, -1])
    torch.testing.assert_close(h.double(), explicit(wx, w_h, h0), rtol=1e-5, atol=1e-6)


def test_heads_equal_block_diagonal_dense():
    g = torch.Generator().manual_seed(1)
    wx = torch.randn(3, 7, 8, generator=g)
    w = torch.randn(4, 2, 2, generator=g)
    torch.testing.assert_close(elman_scan(wx, w, backend="naive"),
                               elman_scan(wx, torch.block_diag(*w), backend="naive"))


@pytest.mark.parametrize("heads", [False, True])
def test_spectral_norm_rescales_to_the_radius(heads):
    """``spectral_norm`` (float64, enough power iterations): W_eff's largest singular value is the
    radius (each head's, for heads), whatever W's own, and W_eff is W times one positive factor."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(*((3, 6, 6) if heads else (6, 6)), generator=gen, dtype=torch.float64) * 2.5
    u = torch.randn(w.shape[:-1], generator=gen, dtype=torch.float64)
    for scale in (1.0, 0.01):  # W's own norm far above the radius, then far below it (scaled up, not clamped)
        w_eff, _ = naive.spectral_norm(w * scale, u, radius=0.5, iters=200)
        torch.testing.assert_close(torch.linalg.matrix_norm(w_eff, 2), torch.full(w.shape[:-2], 0.5,
                                                                                  dtype=torch.float64),
                                   rtol=1e-6, atol=0)
        ratio = w_eff / w
        torch.testing.assert_close(ratio, ratio.flatten(-2)[..., :1, None].expand_as(ratio))


def test_dtypes_and_auto_on_cpu():
    wx = torch.randn(2, 3, 4)
    w = torch.randn(4, 4) * 0.3
    assert all(map(torch.equal, elman_scan(wx, w), naive.elman_scan(wx, w)))  # auto on CPU = naive
    hb, hb_last = elman_scan(wx.bfloat16(), w.bfloat16())
    assert hb.dtype == torch.bfloat16 and hb_last.dtype == torch.float32
    h32, h32_last = elman_scan(wx.bfloat16().float(), w.bfloat16().float())
    torch.testing.assert_close(hb.float(), h32, rtol=0, atol=4e-3)  # fp32 loop inside, one rounding at the end
    assert torch.equal(hb_last, h32_last)  # the final state is the loop's fp32 state, not rounded
    assert elman_scan(wx.double(), w.double())[0].dtype == torch.float64
    assert elman_scan(wx[:, :0], w)[0].shape == (2, 0, 4)


def test_argument_checks():
    wx, w = torch.randn(2, 3, 4), torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"w_h must be \[H, H\]"):
        elman_scan(wx, torch.randn(3, 3))
    with pytest.raises(ValueError, match="nh\\*hd = H = 4"):
        elman_scan(wx, torch.randn(3, 2, 2))
    with pytest.raises(ValueError, match="wx must be"):
        elman_scan(wx[0], w)
    with pytest.raises(ValueError, match="h0 must be"):
        elman_scan(wx, w, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="a must have wx's shape"):
        elman_decay_scan(wx, w, torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match=r"U, V must be \[H, r\] and s \[B, T, r\]"):
        elman_lowrank_scan(wx, w, torch.randn(4, 2), torch.randn(4, 3), torch.randn(2, 3, 2))
    with pytest.raises(ValueError, match=r"U, V must be .* got \(4, 2\), \(4, 2\), \(\)"):  # a 0-d s
        elman_lowrank_scan(wx, w, torch.randn(4, 2), torch.randn(4, 2), torch.tensor(1.0))


def test_persistent_kernel_declines_what_it_cannot_run_without_building():
    """The persistent CUDA kernel is chosen only for CUDA 16-bit inputs with H a multiple of 8;
    anything else is declined before the extension would be built (no nvcc needed)."""
    from rnnlab.ops.elman import persistent

    persistent._ext.cache_clear()
    for x in (torch.zeros(2, 3, 16), torch.zeros(2, 3, 16, dtype=torch.bfloat16)):
        assert persistent.make_plan(x) is None
    assert persistent._ext.cache_info().currsize == 0


def test_wgmma_kernel_declines_what_it_cannot_run_without_building():
    """The wgmma kernel is considered only for bf16 CUDA inputs (B <= 32, H a multiple of 8 up to
    1792): CPU tensors and other dtypes are declined before its extension would be built."""
    from rnnlab.ops.elman import wgmma
    wgmma._ext.cache_clear()
    for x in (torch.zeros(2, 3, 16), torch.zeros(2, 3, 16, dtype=torch.bfloat16)):
        assert not wgmma.supported(x)
    assert wgmma._ext.cache_info().currsize == 0


def test_wgmma_widths_are_the_kernels():
    """wgmma.py's KS_CHOICES (the widths it accepts, 64 KS) are wgmma.cu's kernels."""
    from rnnlab.ops.elman import wgmma

    assert wgmma.KS_CHOICES == tuple(int(k) for k in re.findall(r"\d+", re.search(
        r"for \(int ks : \{([^}]*)\}\)", wgmma.SOURCE.read_text()).group(1).replace("MAX_KS", "28")))
    assert wgmma.MAX_WIDTH == 64 * max(wgmma.KS_CHOICES)


def test_wgmma_kernel_refuses_operands_it_does_not_take_in_one_line():
    """Called directly with operands outside its range, the wgmma kernel raises one ValueError
    naming the range and what it got, before the extension is built or reached."""
    from rnnlab.ops.elman import wgmma

    bf = torch.bfloat16
    wgmma._ext.cache_clear()
    for x, w, got in ((torch.zeros(33, 2, 64, dtype=bf), torch.zeros(64, 64, dtype=bf), r"\(33, 2, 64\)"),
                      (torch.zeros(2, 2, 1800, dtype=bf), torch.zeros(1800, 1800, dtype=bf), r"\(2, 2, 1800\)"),
                      (torch.zeros(2, 2, 64, dtype=bf), torch.zeros(64, 64), r"W torch.float32 \(64, 64\)")):
        for call in (lambda: wgmma.forward(x, w, None), lambda: wgmma.backward(x, x, w)):
            with pytest.raises(ValueError, match=r"^wgmma Elman scan: needs bf16 \[B, T, H\] with B <= 32 .*" + got):
                call()
    h, w = torch.zeros(2, 3, 64, dtype=bf), torch.zeros(64, 64, dtype=bf)
    with pytest.raises(ValueError, match=r"the gradient must match h, torch.bfloat16 \(2, 3, 64\); got torch.float32"):
        wgmma.backward(torch.zeros(2, 3, 64), h, w)
    with pytest.raises(ValueError, match="operands must be contiguous"):
        wgmma.forward(torch.zeros(2, 64, 3, dtype=bf).transpose(1, 2), w, None)
    assert wgmma._ext.cache_info().currsize == 0


def test_wgmma_build_failure_warns_once_and_leaves_the_persistent_kernel(monkeypatch):
    """A failed build of the wgmma kernel (no nvcc, a compile error) is one warning; later scans
    skip it without retrying, and the dense scan's other kernels run."""
    import types

    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman import wgmma
    from rnnlab.ops.elman.options import ElmanKernelOptions

    attempts = []

    def broken(x):
        attempts.append(x)
        raise RuntimeError("Error building extension 'rnnlab_elman_wgmma'")

    monkeypatch.setattr(wgmma, "supported", broken)
    monkeypatch.setattr(et.WGMMA_BUILD, "error", None)
    x, opts = types.SimpleNamespace(is_cuda=True), ElmanKernelOptions()
    for off in (ElmanKernelOptions(dense_wgmma=False), ElmanKernelOptions(persistent=False)):
        assert et._wgmma(x, off, None, None) is None and not attempts  # switched off
    assert et._wgmma(x, opts, torch.ones(1), None) is None and not attempts  # a selective term
    with pytest.warns(UserWarning, match="wgmma Elman kernel unavailable, using the persistent kernel"):
        assert et._wgmma(x, opts, None, None) is None
    assert et._wgmma(x, opts, None, None) is None and len(attempts) == 1
    assert et.WGMMA_BUILD.error == "RuntimeError: Error building extension 'rnnlab_elman_wgmma'"


def test_persistent_build_failure_warns_once_per_build_and_leaves_the_per_step_kernel(monkeypatch):
    """A failed build of the persistent kernel is one warning; later plain scans skip it without
    retrying (the per-step kernel runs), while the low-rank build, its own, is still tried once."""
    import types

    from rnnlab.ops.elman import persistent
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions
    from rnnlab.ops.registry import FallibleBuild

    attempts = []

    def broken(x, shapes, rank):
        attempts.append(rank)
        raise RuntimeError("Error building extension 'rnnlab_elman_persistent'")

    monkeypatch.setattr(persistent, "make_plan", broken)
    for build in et.PERSISTENT_BUILDS.values():
        monkeypatch.setattr(build, "error", None)
    x, opts = types.SimpleNamespace(is_cuda=True), ElmanKernelOptions()
    assert et._persistent_plan(x, ElmanKernelOptions(persistent=False)) is None and not attempts  # off
    with pytest.warns(UserWarning, match="persistent Elman kernel unavailable, using the per-step Triton kernel"):
        assert et._persistent_plan(x, opts) is None
    assert et._persistent_plan(x, opts) is None
    assert attempts == [0]  # the plain build failed once, never retried
    with pytest.warns(UserWarning, match="persistent Elman kernel unavailable"):
        assert et._persistent_plan(x, opts, rank=2) is None
    assert et._persistent_plan(x, opts, rank=2) is None and attempts == [0, 2]
    assert et.PERSISTENT_BUILDS[True].error == "RuntimeError: Error building extension 'rnnlab_elman_persistent'"
    # what the GPU tests' fixture (tests/gpu/conftest.py) fails on
    assert et.PERSISTENT_BUILDS[False].name == "persistent Elman kernel"
    assert FallibleBuild.failures().count(
        "persistent Elman kernel: RuntimeError: Error building extension 'rnnlab_elman_persistent'") == 2


@pytest.mark.parametrize("with_h0", [False, True])
def test_dense_weight_gradient_is_autograds(with_h0):
    """``dw_dense`` (the dense kernels' dW_h: one GEMM over the flat rows, the pairs that straddle
    two sequences subtracted, h0's terms added) equals autograd through the reference, given the
    exact dpre (float64, B = 3 so rows straddle sequences)."""
    from rnnlab.ops.elman.triton import dw_dense

    g = torch.Generator().manual_seed(5)
    B, T, H = 3, 4, 6
    wx = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(H, H, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64) if with_h0 else None
    h, _ = naive.elman_scan(wx, w, h0)
    dpre, dW = torch.autograd.grad(h, [wx, w], torch.randn(B, T, H, generator=g, dtype=torch.float64))
    torch.testing.assert_close(dw_dense(dpre, h.detach(), h0), dW)


@pytest.mark.parametrize("with_h0", [False, True])
def test_dense_weight_gradient_of_one_step_is_h0s_terms_alone_in_bf16(with_h0):
    """At T = 1 every pair of flat rows straddles two sequences: dW_h is exactly ``dpre^T h0`` (zero
    without h0), not the one GEMM minus a bf16-rounded copy of itself (a GPU test's B = 3, H = 257
    left one unit in the last place, up to 0.016, where dW is 0)."""
    from rnnlab.ops.elman.triton import dw_dense

    g = torch.Generator().manual_seed(6)
    B, H = 3, 257
    dpre = (torch.randn(B, 1, H, generator=g) * 3).bfloat16()
    h = torch.randn(B, 1, H, generator=g).tanh().bfloat16()
    h0 = torch.randn(B, H, generator=g).tanh().bfloat16() if with_h0 else None
    want = dpre[:, 0].t() @ h0 if with_h0 else torch.zeros(H, H, dtype=torch.bfloat16)
    assert torch.equal(dw_dense(dpre, h, h0), want)


@pytest.mark.parametrize("hd,rows,need_dw,sums_after", [(128, 1024, True, True), (128, 32, True, True),
                                                       (128, 0, True, False), (64, 1024, True, False),
                                                       (128, 1024, False, False)])
def test_heads_backward_sums_dw_after_the_gluon_scan_at_128_channels(monkeypatch, hd, rows, need_dw, sums_after):
    """Where the Gluon kernels take a heads backward, dW comes from ``weight_gradient`` after the
    scan (the scan asked for none) exactly at 128 channels with ``heads_dw_rows`` > 0 and dW
    needed; else from the scan's loop (as asked). A fake Gluon module stands in (CPU)."""
    from rnnlab.ops.elman import heads
    from rnnlab.ops.elman.options import ElmanKernelOptions

    calls = []

    class FakeGluon:
        @staticmethod
        def backward(g, w, h, h0, need_dw, ring):
            calls.append(("scan", need_dw))
            return torch.zeros_like(h), torch.full_like(w, 7.0), torch.zeros(h.shape[0], h.shape[2])

    def after(dpre, h, h0, n, r):
        calls.append(("after", r))
        return torch.ones(n, hd, hd)

    monkeypatch.setattr(heads, "_gluon", lambda *a: FakeGluon)
    monkeypatch.setattr(heads, "weight_gradient", after)
    w, h = torch.randn(2, hd, hd), torch.randn(1, 3, 2 * hd)
    _, dw, _, da = heads.backward(torch.randn_like(h), w, h, None, need_dw, ElmanKernelOptions(heads_dw_rows=rows))
    assert calls == ([("scan", False), ("after", rows)] if sums_after else [("scan", need_dw)])
    assert torch.equal(dw, torch.ones_like(w) if sums_after else torch.full_like(w, 7.0)) and da is None


def test_gluon_heads_kernels_take_no_decay_and_only_with_the_fast_tanh(monkeypatch):
    """``heads._gluon``: with the Gluon kernels taking the tensors (faked here: CPU), the module is
    picked for a plain heads scan with ``heads_gluon`` and the MUFU tanh on, never for one with E1's
    decay (the Gluon kernels have no decay operand) nor with either switched off."""
    from rnnlab.ops.elman import heads, heads_gluon
    from rnnlab.ops.elman.options import ElmanKernelOptions

    monkeypatch.setattr(heads_gluon, "supported", lambda *args: True)
    monkeypatch.setattr(ElmanKernelOptions, "use_fast_tanh", lambda self, x: self.fast_tanh)
    x = torch.randn(2, 3, 128)
    assert heads._gluon(ElmanKernelOptions(), None, x, 64) is heads_gluon
    assert heads._gluon(ElmanKernelOptions(), torch.rand_like(x), x, 64) is None
    assert heads._gluon(ElmanKernelOptions(heads_gluon=False), None, x, 64) is None
    assert heads._gluon(ElmanKernelOptions(fast_tanh=False), None, x, 64) is None


@pytest.mark.parametrize("rows", [-32, 48])
def test_heads_dw_rows_is_checked(rows):
    from rnnlab.ops.elman.options import ElmanKernelOptions

    with pytest.raises(ValueError, match=rf"^heads_dw_rows must be 0 or a positive multiple of 32 \(the kernel's "
                                         rf"row block\), got {rows}$"):
        ElmanKernelOptions(heads_dw_rows=rows)


@pytest.mark.parametrize("shape", [-2, 4])
def test_persistent_shape_is_checked(shape):
    """An index past the persistent kernel's launch shapes is refused where the options are made: in
    the build it raised IndexError, which switched the persistent kernel off for the process."""
    from rnnlab.ops.elman.options import ElmanKernelOptions
    from rnnlab.ops.elman.persistent import SHAPES

    assert len(SHAPES) == 4
    with pytest.raises(ValueError, match=rf"^persistent_shape must be -1 \(the first that fits\) or an index of the "
                                         rf"persistent kernel's 4 launch shapes, got {shape}$"):
        ElmanKernelOptions(persistent_shape=shape)
    assert ElmanKernelOptions(persistent_shape=3).persistent_shape == 3


def test_gate_beside_the_scan_leaves_the_scans_sms():
    """The GEMMs beside a heads scan are sized for all SMs but the scan's programs (one a head and
    batch tile of ``heads_bt`` rows in the Triton kernels, which run here) and
    ``heads_beside_spare``; no second stream for a dense scan or with ``heads_beside`` off; a
    negative spare is refused."""
    from rnnlab.ops.elman import triton as et
    from rnnlab.ops.elman.options import ElmanKernelOptions

    heads, dense = torch.empty(14, 128, 128), torch.empty(1792, 1792)
    x = torch.empty(32, 5, 1792)
    assert et._beside_sms(x, heads, ElmanKernelOptions()) == 14 * 2 + 4
    assert et._beside_sms(x[:17], heads, ElmanKernelOptions(heads_beside_spare=0, heads_bt=8)) == 14 * 3
    assert et._beside_sms(x, dense, ElmanKernelOptions()) is None
    assert et._beside_sms(x, heads, ElmanKernelOptions(heads_beside=False)) is None
    with pytest.raises(ValueError, match=r"^heads_beside_spare must be >= 0 \(SMs\), got -1$"):
        ElmanKernelOptions(heads_beside_spare=-1)


def test_persistent_default_shapes_keep_w_in_registers_where_the_kernel_can():
    """The launch that keeps W's fragments in registers (8 warps, 32 columns: 14 K tiles a warp)
    comes first only where every warp's K tiles fit (H padded to 16 up to 1792) and without the
    low-rank term; otherwise 16 warps lead, the other shapes in the same order."""
    from rnnlab.ops.elman import persistent

    first = (8, (32, 16))
    assert persistent.default_shapes(1760)[0] == first == persistent.default_shapes(1792)[0]
    assert persistent.default_shapes(64)[0] == first
    for H, rank in ((1793, 0), (1800, 0), (2048, 0), (1760, 1), (64, 16)):
        shapes = persistent.default_shapes(H, rank)
        assert shapes[0] == (16, (32, 16)) and sorted(shapes) == sorted(persistent.SHAPES), (H, rank)


def test_persistent_launches_build_from_the_plans_source(monkeypatch, tmp_path):
    """``persistent.forward`` / ``backward`` run the extension built from their plan's source (the
    package's by default; another copy for a benchmark's A/B), for the plain and the decay
    backward alike."""
    from rnnlab.ops.elman import persistent

    built = []

    class Ext:
        def __init__(self, key):
            self.key = key

        def forward(self, *args):
            return self.key

        def backward(self, *args):
            return self.key

    monkeypatch.setattr(persistent, "_ext", lambda lowrank=False, source=persistent.SOURCE:
                        built.append((lowrank, source)) or Ext(source))
    copy = tmp_path / "persistent_old.cu"
    x = torch.zeros(2, 3, 16)
    for plan, source in ((persistent.Plan(16, 32, 16, 1), persistent.SOURCE),
                         (persistent.Plan(16, 32, 16, 1, source=copy), copy)):
        built.clear()
        assert persistent.forward(x, torch.zeros(16, 16), None, plan) == source
        assert persistent.backward(x, x, torch.zeros(16, 16), plan)[0] == source
        assert persistent.backward(x, x, torch.zeros(16, 16), plan, a=x)[1] == source
        assert built == [(False, source)] * 3


def test_fast_tanh_applies_to_16bit_inputs_on_a_gpu_outside_the_interpreter(monkeypatch):
    """The MUFU tanh (~1e-3 relative error) only where it cannot show: bf16 / fp16 inputs on a real
    GPU; never fp32 inputs (their tests hold the kernels to ~1e-6), fp64 ones (computed in fp32 and
    held to as much), CPU tensors, or Triton's interpreter."""
    from types import SimpleNamespace

    from rnnlab.ops.tanh import fast_tanh_applies

    def x(dtype, cuda=True):  # fast_tanh_applies reads only these two
        return SimpleNamespace(dtype=dtype, is_cuda=cuda)

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dtypes = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    assert [fast_tanh_applies(x(d)) for d in dtypes] == [True, True, False, False]
    assert not fast_tanh_applies(x(torch.bfloat16, cuda=False))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not fast_tanh_applies(x(torch.bfloat16))
    for off in ("0", "false"):  # Triton compiles for the GPU: so does the fast tanh
        monkeypatch.setenv("TRITON_INTERPRET", off)
        assert fast_tanh_applies(x(torch.bfloat16)), off

def test_kernel_options_round_trip_through_the_custom_op_argument():
    """The options travel through the custom ops as ints and come back equal (bools as bools)."""
    from rnnlab.ops.elman.options import ElmanKernelOptions

    opts = ElmanKernelOptions(persistent=False, persistent_shape=2, cuda_graph=False, dense_bk=64, heads_warps=4)
    back = ElmanKernelOptions.from_ints(opts.to_ints())
    assert back == opts and back.persistent is False and isinstance(back.cuda_graph, bool)
    assert ElmanKernelOptions.from_ints(ElmanKernelOptions().to_ints()) == ElmanKernelOptions()


def _fake_torch_load(monkeypatch, calls):
    """torch's extension loader, as far as rnnlab.ops.extensions sees it: the build folder, and a
    ``load`` that would wait forever while the folder's ``lock`` exists (it fails instead)."""
    from torch.utils import cpp_extension

    def load(name, **kwargs):
        build = Path(cpp_extension._get_build_directory(name, verbose=False))
        assert not (build / "lock").exists(), "torch would wait for this lock forever"
        calls.append(name)
        return "ext"

    monkeypatch.setattr(cpp_extension, "load", load)
    return lambda name: Path(cpp_extension._get_build_directory(name, verbose=False))


def test_extension_load_clears_a_dead_builds_lock_with_one_warning(monkeypatch, tmp_path, capsys):
    """A build killed half-way leaves torch's ``lock`` in the build folder, on which every later load
    would wait forever: rnnlab.ops.extensions.load removes it, says so in one warning, and builds;
    without one it warns of nothing. A load that has to build (no library file yet) says so in one
    line; one that finds the library says nothing."""
    import warnings

    from rnnlab.ops import extensions

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    calls = []
    folder = _fake_torch_load(monkeypatch, calls)
    (folder("rnnlab_probe") / "lock").touch()  # what a killed build leaves
    with pytest.warns(UserWarning, match=r"^rnnlab_probe: removing .*/rnnlab_probe/lock, left by a build of this "
                                         r"kernel that was stopped before it finished"):
        assert extensions.load("rnnlab_probe", sources=["x.cu"]) == "ext"
    assert capsys.readouterr().err == (f"rnnlab: building the CUDA kernel rnnlab_probe (its first use here: about a "
                                       f"minute, then kept in {tmp_path})\n")
    (folder("rnnlab_probe") / "rnnlab_probe.so").touch()  # built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extensions.load("rnnlab_probe", sources=["x.cu"]) == "ext"
    assert capsys.readouterr().err == ""
    assert calls == ["rnnlab_probe"] * 2 and not (folder("rnnlab_probe") / "lock").exists()


def test_extension_load_waits_for_a_live_build_and_leaves_its_lock(monkeypatch, tmp_path, capsys):
    """While another process builds the extension (it holds rnnlab's OS lock, torch's ``lock`` in the
    build folder), a load waits for it instead of taking its ``lock`` for a dead build's, saying so
    in one line; it loads once that build has ended, with no warning."""
    import subprocess
    import sys
    import threading
    import time
    import warnings

    from rnnlab.ops import extensions

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    calls = []
    build = _fake_torch_load(monkeypatch, calls)("rnnlab_probe")
    with subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys
held = open({str(build.parent / "rnnlab_probe.rnnlab-lock")!r}, "a")
fcntl.flock(held, fcntl.LOCK_EX)
open({str(build / "lock")!r}, "w").close()
print("building", flush=True)
sys.stdin.readline()  # build until told to stop
os.remove({str(build / "lock")!r})
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as builder:
        try:
            assert builder.stdout.readline() == "building\n"
            caught = []

            def second():
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    caught.append((extensions.load("rnnlab_probe", sources=["x.cu"]), w))

            waiter = threading.Thread(target=second)
            waiter.start()
            time.sleep(0.5)
            assert not calls and (build / "lock").exists()  # still waiting; the live build's lock kept
            assert capsys.readouterr().err == ("rnnlab: waiting for another process building or loading the CUDA "
                                               f"kernel rnnlab_probe (in {tmp_path})\n")
            builder.stdin.write("done\n")
            builder.stdin.flush()
            waiter.join(10)
            assert caught and caught[0][0] == "ext" and not caught[0][1] and calls == ["rnnlab_probe"]
        finally:
            builder.kill()


def test_extension_load_without_file_locks_loads_as_torch_does(monkeypatch, tmp_path):
    """A build folder on a file system that takes no ``flock`` (ENOLCK, EOPNOTSUPP, ENOSYS: some
    NFS or Lustre mounts) loads the extension as torch's own loader would, with one warning, instead
    of failing (which would switch the kernel off for the run); another OSError still raises."""
    import errno
    import fcntl

    from rnnlab.ops import extensions

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    calls = []
    _fake_torch_load(monkeypatch, calls)
    code = [errno.ENOLCK]

    def no_flock(fd, op):
        raise OSError(code[0], "no locks")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    for code[0] in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        with pytest.warns(UserWarning, match=r"^rnnlab_probe: .* takes no file lock"):
            assert extensions.load("rnnlab_probe", sources=["x.cu"]) == "ext"
    code[0] = errno.EACCES
    with pytest.raises(OSError, match="no locks"):
        extensions.load("rnnlab_probe", sources=["x.cu"])
    assert calls == ["rnnlab_probe"] * 3


def test_extension_load_takes_the_callers_build_directory(monkeypatch, tmp_path):
    """``build_directory=`` (torch's own argument) is where the lock is cleared and the library
    looked for, not torch's default folder for the name."""
    from torch.utils import cpp_extension

    from rnnlab.ops import extensions

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "default"))
    own = tmp_path / "own"
    own.mkdir()
    (own / "lock").touch()
    monkeypatch.setattr(cpp_extension, "load", lambda name, **kw: "ext" if not (own / "lock").exists() else "hang")
    with pytest.warns(UserWarning, match=r"removing .*/own/lock"):
        assert extensions.load("rnnlab_probe", sources=["x.cu"], build_directory=str(own)) == "ext"
    assert (tmp_path / "own.rnnlab-lock").exists() and not (tmp_path / "default").exists()


def test_persistent_extension_is_named_by_its_source_and_versions(monkeypatch, tmp_path):
    """The persistent kernel's extension name changes with its source, its flags and the torch
    version (and stays put otherwise), so a build folder kept between machines
    (benchmarks/gpu_env.sh) cannot serve a stale binary; ``_ext`` builds under that name."""
    import torch.utils.cpp_extension

    from rnnlab.ops.elman import persistent

    name = persistent._ext_name
    base = name(b"kernel A", ["-O3"])
    assert base == name(b"kernel A", ["-O3"]) and base.startswith("rnnlab_elman_persistent_")
    assert name(b"kernel A", ["-O3"], "wgmma") == "rnnlab_elman_wgmma_" + base.rsplit("_", 1)[1]
    assert len({base, name(b"kernel B", ["-O3"]), name(b"kernel A", ["-O2"])}) == 3
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert name(b"kernel A", ["-O3"]) != base
    monkeypatch.undo()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "an arch list of its own")  # e.g. 9.0a: the cluster path's build
    assert name(b"kernel A", ["-O3"]) != base
    monkeypatch.undo()
    monkeypatch.setattr(persistent, "arch_flags", lambda: [])  # torch's target (on Hopper: sm_90a's flag too)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))  # rnnlab.ops.extensions' lock files
    calls = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kw: calls.append(kw) or "ext")
    persistent._ext.cache_clear()
    copy = tmp_path / "persistent_old.cu"  # another version (a benchmark's A/B): built under its own name
    copy.write_bytes(persistent.SOURCE.read_bytes() + b"// older\n")
    try:
        assert persistent._ext() == "ext" and persistent._ext(lowrank=True) == "ext"
        assert persistent._ext(False, copy) == "ext"
    finally:
        persistent._ext.cache_clear()
    assert calls[2]["sources"] == [str(copy)] and calls[2]["name"] == name(copy.read_bytes(), persistent.EXT_FLAGS)
    assert calls[2]["name"] != calls[0]["name"]
    src = calls[0]["sources"][0]
    assert src.endswith("persistent.cu") and calls[0]["name"] == name(open(src, "rb").read(), persistent.EXT_FLAGS)
    # the low-rank term's build: the same source with its macro, under a name of its own
    lowrank_flags = persistent.EXT_FLAGS + ["-DRNNLAB_LOWRANK"]
    assert calls[1]["extra_cuda_cflags"] == lowrank_flags and "-DRNNLAB_LOWRANK" not in calls[0]["extra_cuda_cflags"]
    assert calls[1]["name"] == name(open(src, "rb").read(), lowrank_flags) != calls[0]["name"]


def test_persistent_builds_for_sm90a_on_hopper(monkeypatch):
    """The persistent kernel's target: sm_90a (the cluster path's multicast) when every visible GPU
    is compute capability 9.0, TORCH_CUDA_ARCH_LIST is unset and torch's CUDA is 12 or later; else
    torch's own choice (no arch flag: any flag naming an arch replaces torch's); the GPU jobs'
    environment keeps 9.0a in its list."""
    from rnnlab.ops.elman import persistent

    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert persistent.arch_flags([(9, 0)]) == persistent.arch_flags([(9, 0), (9, 0)]) == persistent.HOPPER_ARCH
    assert persistent.HOPPER_ARCH == ["-gencode=arch=compute_90a,code=sm_90a"]
    for other in ([], [(8, 0)], [(9, 0), (8, 6)], [(10, 0)]):
        assert persistent.arch_flags(other) == [], other
    if not torch.cuda.is_available():  # no GPU visible: torch's choice
        assert persistent.arch_flags() == []
    # any flag naming an arch replaces torch's own choice (it adds no -gencode of its own)
    from torch.utils import cpp_extension

    assert cpp_extension._get_cuda_arch_flags(persistent.HOPPER_ARCH) == []
    for cuda in ("11.8", None):  # no sm_90a in CUDA 11; a CPU build of torch
        monkeypatch.setattr(torch.version, "cuda", cuda)
        assert persistent.arch_flags([(9, 0)]) == []
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")  # the user's choice stands
    assert persistent.arch_flags([(9, 0)]) == []
    monkeypatch.setattr(persistent, "arch_flags", lambda: persistent.HOPPER_ARCH)
    assert persistent.build_flags(True) == persistent.EXT_FLAGS + ["-DRNNLAB_LOWRANK"] + persistent.HOPPER_ARCH
    # the GPU jobs' environment sets the list (benchmarks/gpu_env.sh): it must keep the cluster path
    gpu_env = (Path(__file__).parents[1] / "benchmarks" / "gpu_env.sh").read_text()
    default = re.search(r"TORCH_CUDA_ARCH_LIST=\$\{TORCH_CUDA_ARCH_LIST:-([^}]*)\}", gpu_env).group(1)
    assert "9.0a" in default.split(";"), default


def test_gluon_heads_ring_outside_its_choices_is_refused():
    """The Gluon heads kernels' input ring must divide their six unrolled steps: another size is
    refused in one line, before anything is launched (so on a CPU too)."""
    heads_gluon = pytest.importorskip("rnnlab.ops.elman.heads_gluon")
    x, w = torch.zeros(1, 2, 128, dtype=torch.bfloat16), torch.zeros(1, 128, 128, dtype=torch.bfloat16)
    for call in (lambda: heads_gluon.forward(x, w, None, ring=4), lambda: heads_gluon.backward(x, w, x, None, ring=5)):
        with pytest.raises(ValueError, match=r"^heads_gluon_ring must be one of \(2, 3, 6\) \(it divides the loops' six "
                                             r"steps\), got [45]$"):
            call()


def test_elman_scan_beside_linear_checks_its_projection():
    """A projection whose rows are not the scan's (B, T), or whose weight does not take x's width,
    is refused in one line."""
    from rnnlab.ops.elman import elman_scan_beside_linear

    wx, w = torch.randn(2, 3, 4), torch.randn(2, 2, 2)
    for x, wl, shapes in ((torch.randn(2, 4, 5), torch.randn(6, 5), r"\(2, 4, 5\) and \(6, 5\)"),
                          (torch.randn(2, 3, 5), torch.randn(6, 4), r"\(2, 3, 5\) and \(6, 4\)")):
        with pytest.raises(ValueError, match=rf"^x must be \[B, T, D\] with wx's B, T = \(2, 3\) and wl \[N, D\], "
                                             rf"got {shapes}$"):
            elman_scan_beside_linear(wx, w, x, wl)
