"""The op contract, checked for every registered op (rnnlab.ops.registry.OPS): each returns (states
or outputs, final state) with the documented dtypes, the final state continues the scan exactly
(what every layer's ``step`` relies on), a zero-length sequence returns its initial state, the
named alternative backends agree with the reference, the reference has exact gradients
(gradcheck), and the backend vocabulary is enforced."""

from __future__ import annotations

import ast
import importlib
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rnnlab.ops
from rnnlab.ops import OPS
from rnnlab.ops.dtypes import compute_dtype

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

B, T, H, R = 2, 7, 6, 3  # T differs from every other size: the time axis is unambiguous


def _elman(g, dtype, heads=False):
    w = torch.randn(2, H // 2, H // 2, generator=g) if heads else torch.randn(H, H, generator=g)
    return [torch.randn(B, T, H, generator=g), (w * 0.4).to(dtype)]


def _ssd(g, dtype):  # x [B,T,h,p], dt [B,T,h], A [h], B/C [B,T,G,N], chunk size
    return [torch.randn(B, T, 4, 3, generator=g), torch.rand(B, T, 4, generator=g) * 0.5 + 0.01,
            -torch.rand(4, generator=g) - 0.1, torch.randn(B, T, 2, 5, generator=g),
            torch.randn(B, T, 2, 5, generator=g), 4]


def _matrix_state(g, dtype, gated=False):  # q, k [B,T,h,n] (unit rows), v [B,T,h,m], decay or (g, beta)
    q, k = (F.normalize(torch.randn(B, T, 2, 3, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(B, T, 2, 2, generator=g)
    if gated:  # gated delta rule: log decay g <= 0 and write strength beta
        return [q, k, v, -torch.rand(B, T, 2, generator=g), torch.rand(B, T, 2, generator=g)]
    return [q, k, v, torch.rand(B, T, 2, generator=g) * 0.5 + 0.5]


# op name -> (inputs(generator, dtype) without the initial state, initial-state shape, positions
# of the per-time [B, T, ...] inputs). Every op is called as op(*inputs, h0).
CASES = {
    "elman_scan": (lambda g, dt: _elman(g, dt), (B, H), (0,)),
    "elman_decay_scan": (lambda g, dt: [*_elman(g, dt, heads=True), torch.rand(B, T, H, generator=g)], (B, H), (0, 2)),
    "elman_lowrank_scan": (lambda g, dt: [*_elman(g, dt), torch.randn(H, R, generator=g) * 0.3,
                                          torch.randn(H, R, generator=g) * 0.3, torch.randn(B, T, R, generator=g)],
                           (B, H), (0, 4)),
    "linear_scan": (lambda g, dt: [torch.rand(B, T, H, generator=g) * 0.9 + 0.05, torch.randn(B, T, H, generator=g)],
                    (B, H), (0, 1)),
    "mingru_scan": (lambda g, dt: [torch.randn(B, T, 2 * H, generator=g)], (B, H), (0,)),
    "minlstm_scan": (lambda g, dt: [torch.randn(B, T, 3 * H, generator=g)], (B, H), (0,)),
    "diag_elman_scan": (lambda g, dt: [torch.randn(B, T, H, generator=g), torch.rand(H, generator=g)], (B, H), (0,)),
    "ssd_scan": (_ssd, (B, 4, 3, 5), (0, 1, 3, 4)),
    "e88_scan": (_matrix_state, (B, 2, 3, 2), (0, 1, 2, 3)),
    "gated_delta_scan": (lambda g, dt: _matrix_state(g, dt, gated=True), (B, 2, 3, 2), (0, 1, 2, 3, 4)),
}
# ops outside this contract, tested where named: E1 heads' scan with its gate projection beside it
# starts from zeros and returns (h, h_T, x @ wl.T); E1's spectral norm is no scan: (W_eff, u_new)
ELSEWHERE = {"elman_scan_beside_linear": "tests/test_kernels_interpreted.py, tests/test_e1.py",
             "spectral_norm": "tests/test_kernels_interpreted.py, tests/test_ops.py, tests/test_e1.py"}
# the matrix-state ops' outputs are readouts (y = S C, y = S^T q), not the state
STATE_IS_LAST_OUTPUT = set(CASES) - {"ssd_scan", "e88_scan", "gated_delta_scan"}


def _alternatives(name) -> tuple[str, ...]:
    """The op's named alternative backends (none for a name in CASES that is no registered op:
    test_every_registered_op_has_a_case says so, instead of a KeyError while collecting)."""
    return tuple(OPS[name].alternatives) if name in OPS else ()


def _case(name, dtype=torch.float32, seed=0):
    make, h0_shape, time_args = CASES[name]
    g = torch.Generator().manual_seed(seed)
    args = [a.to(dtype) if isinstance(a, torch.Tensor) else a for a in make(g, dtype)]
    return args, torch.randn(*h0_shape, generator=g).to(dtype), time_args


def _window(args, time_args, lo, hi):
    return [a[:, lo:hi] if i in time_args else a for i, a in enumerate(args)]


def test_every_op_package_is_imported_by_rnnlab_ops():
    """An op is in OPS once its package (``rnnlab/ops/<op>/``) is imported; ``rnnlab/ops/__init__.py``
    imports every one, so OPS, which these tests and ``rnnlab doctor`` read, holds every op whatever
    else was imported first (an op only a layer imports would go unchecked here)."""
    ops_dir = Path(rnnlab.ops.__file__).parent
    packages = {p.parent.name for p in ops_dir.glob("*/__init__.py")}
    imported = {node.module.split(".")[2] for node in ast.walk(ast.parse((ops_dir / "__init__.py").read_text()))
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnnlab.ops.")}
    assert not packages - imported, f"import {sorted(packages - imported)} in rnnlab/ops/__init__.py"


def test_every_registered_op_has_a_case():
    missing = sorted(set(OPS) - set(CASES) - set(ELSEWHERE))
    assert not missing, f"add {missing} to CASES here: op name -> (inputs, initial-state shape, time axes)"
    stale = sorted(set(CASES) - set(OPS))
    assert not stale, f"{stale} in CASES are not registered ops (is their package imported in rnnlab/ops/__init__.py?)"
    assert set(OPS) == set(CASES) | set(ELSEWHERE) and not set(CASES) & set(ELSEWHERE)
    tests = Path(__file__).parent
    for name, files in ELSEWHERE.items():
        assert all(name in (tests.parent / f).read_text() for f in files.split(", ")), name


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_returns_outputs_and_final_state(name, dtype):
    args, h0, _ = _case(name, dtype)
    h, h_last = OPS[name].naive(*args, h0)
    assert h.dtype == dtype and h_last.dtype == compute_dtype(dtype) == torch.float32
    assert h.shape[:2] == (B, T) and h_last.shape == h0.shape
    if name in STATE_IS_LAST_OUTPUT:
        assert torch.equal(h[:, -1], h_last.to(dtype))


@pytest.mark.parametrize("name", sorted(CASES))
def test_final_state_continues_the_scan(name):
    """Scanning [0, T) equals scanning [0, k), then [k, T) from the first part's final state: a
    layer's ``step`` (the op on one token from the carried state) equals its forward. To a few
    fp32 ulps, not bit for bit: torch's vectorised exp / softplus (the gates) can round an element
    differently in a vector lane and in a loop's scalar tail, and the split moves elements between
    them (measured: 1 ulp on an AVX2 CPU, none on AVX-512)."""
    args, h0, time_args = _case(name)
    op = OPS[name]
    whole, whole_last = op(*args, h0, backend="naive")
    first, mid = op(*_window(args, time_args, 0, 3), h0, backend="naive")
    second, last = op(*_window(args, time_args, 3, T), mid, backend="naive")
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(last, whole_last, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_empty_sequence_returns_the_initial_state(name):
    args, h0, time_args = _case(name)
    h, h_last = OPS[name](*_window(args, time_args, 0, 0), h0, backend="naive")
    assert h.shape[:2] == (B, 0) and torch.equal(h_last, h0)
    _, zero = OPS[name](*_window(args, time_args, 0, 0), None, backend="naive")
    assert torch.equal(zero, torch.zeros_like(h0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_initial_state_of_another_shape_is_refused(name):
    """The public function of every op refuses an initial state of another batch or width in one
    ValueError, on every backend alike (ssd_scan's reference once broadcast a batch-1 state over
    the batch, where its chunked form raised a RuntimeError from deep inside)."""
    args, h0, _ = _case(name)
    public = getattr(rnnlab.ops, name)
    for bad in (h0[:1], h0[..., :-1]):
        for backend in set(OPS[name].backends) - {"triton"}:
            with pytest.raises(ValueError, match="must be"):
                public(*args, bad, backend=backend)


@pytest.mark.parametrize("name", sorted(CASES))
def test_16bit_inputs_meet_fp32_weights_and_state_at_compute_precision(name):
    """As under autocast: bf16 per-time inputs, fp32 weights and initial state (values bf16 cannot
    hold). The reference equals itself on the inputs upcast to fp32, neither the weights nor the
    state ever rounded to bf16, at every length: T = 0 returns the state exactly (in the compute
    dtype), and its empty outputs have the full run's shape ([B, 0, ...] with the output's
    trailing sizes, not the state's)."""
    args, h0, time_args = _case(name)
    low = [a.bfloat16() if i in time_args else a for i, a in enumerate(args)]
    up = [a.bfloat16().float() if i in time_args else a for i, a in enumerate(args)]
    h, h_last = OPS[name].naive(*low, h0)
    want, want_last = OPS[name].naive(*up, h0)
    assert h_last.dtype == torch.float32 and torch.equal(h_last, want_last)
    assert h.dtype == torch.bfloat16 and torch.equal(h, want.bfloat16())
    empty, empty_last = OPS[name].naive(*_window(low, time_args, 0, 0), h0)
    assert empty.dtype == torch.bfloat16 and empty.shape == (B, 0, *h.shape[2:])
    assert empty_last.dtype == torch.float32 and torch.equal(empty_last, h0)
    _, last = OPS[name].naive(*_window(low, time_args, 0, 0), h0.bfloat16())  # a bf16 state comes back upcast
    assert last.dtype == torch.float32 and torch.equal(last, h0.bfloat16().float())


# per-time inputs the layers hand over in the compute dtype beside 16-bit activations (E88's decay,
# Gated DeltaNet's log decay and beta, Mamba2's dt): their positions in the op's inputs
GATES_IN_FP32 = {"e88_scan": (3,), "gated_delta_scan": (3, 4), "ssd_scan": (1,)}


@pytest.mark.parametrize("name", sorted(GATES_IN_FP32))
def test_fp32_gates_beside_16bit_activations_are_not_rounded(name):
    """bf16 activations with fp32 gates (as the layers pass them under autocast): the reference
    equals itself on the activations upcast, the gates as given, never rounded to bf16 (E88's
    docstring: the decay "stays fp32", where the reference study's rounds it)."""
    args, h0, time_args = _case(name)
    acts = set(time_args) - set(GATES_IN_FP32[name])
    low = [a.bfloat16() if i in acts else a for i, a in enumerate(args)]
    up = [a.bfloat16().float() if i in acts else a for i, a in enumerate(args)]
    for run in (OPS[name].naive, *(OPS[name].alternatives[b] for b in _alternatives(name))):
        assert torch.equal(run(*low, h0)[1], run(*up, h0)[1]), run


@pytest.mark.parametrize("name,backend", [(n, b) for n in sorted(CASES) for b in _alternatives(n)])
def test_alternative_backends_match_the_reference(name, backend):
    args, h0, _ = _case(name)
    for init in (h0, None):
        got = OPS[name](*args, init, backend=backend)
        want = OPS[name](*args, init, backend="naive")
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,backend", [(n, b) for n in sorted(CASES) for b in _alternatives(n)])
def test_alternative_backends_keep_the_contract(name, backend):
    """What the reference guarantees (the tests above), the alternatives too: 16-bit inputs give
    states in that dtype and the final state in the compute dtype; a zero-length sequence returns
    its initial state (zeros without one)."""
    args, h0, time_args = _case(name, torch.bfloat16)
    h, h_last = OPS[name](*args, h0, backend=backend)
    assert h.dtype == torch.bfloat16 and h_last.dtype == torch.float32 and h_last.shape == h0.shape
    args, h0, time_args = _case(name)
    h, h_last = OPS[name](*_window(args, time_args, 0, 0), h0, backend=backend)
    assert h.shape[:2] == (B, 0) and torch.equal(h_last, h0)
    _, zero = OPS[name](*_window(args, time_args, 0, 0), None, backend=backend)
    assert torch.equal(zero, torch.zeros_like(h0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_gradcheck(name):
    args, h0, _ = _case(name, torch.float64)
    leaves = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in (*args, h0.requires_grad_())]
    tensors = [i for i, a in enumerate(leaves) if isinstance(a, torch.Tensor)]

    def fn(*ts):
        full = list(leaves)
        for i, t in zip(tensors, ts):
            full[i] = t
        return OPS[name].naive(*full)

    assert torch.autograd.gradcheck(fn, [leaves[i] for i in tensors])


@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_vocabulary(name):
    """auto on CPU is the reference; triton needs CUDA tensors; unknown words are refused."""
    args, h0, _ = _case(name)
    op = OPS[name]
    assert op.backends[:3] == ("auto", "naive", "triton")
    for a, b in zip(op(*args, h0, backend="auto"), op(*args, h0, backend="naive")):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match=f"{name} backend='triton'"):
        op(*args, h0, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        op(*args, h0, backend="cuda")


class _CudaInput:
    """A stand-in for a CUDA tensor on a machine without one (``Op.implementation`` reads only
    ``is_cuda`` and ``device``)."""

    is_cuda, device = True, torch.device("cuda", 0)


def test_backend_choice_on_cuda_inputs(monkeypatch):
    """On CUDA inputs ``auto`` runs the kernel module's function when the module imports, and the
    reference with one warning naming the import error when it does not (the import tried and the
    warning given once, not at each call: a layer calls its op at every step); ``triton`` then
    raises saying why. On CPU inputs ``auto`` is the
    reference even where the kernel imports; a named alternative runs itself on any device."""
    from rnnlab.ops.registry import Op

    kernels = types.ModuleType("rnnlab_test_kernels")
    kernels.scan = lambda x: x
    monkeypatch.setitem(sys.modules, "rnnlab_test_kernels", kernels)

    def naive(x):
        return x

    def heinsen(x):
        return x

    cuda, cpu = _CudaInput(), torch.zeros(1)
    op = Op("scan", naive, "rnnlab_test_kernels", alternatives={"heinsen": heinsen})
    assert op.implementation("auto", cuda) is kernels.scan and op.implementation("triton", cuda) is kernels.scan
    assert op.implementation("auto", cpu) is naive and op.implementation("naive", cuda) is naive
    assert op.implementation("heinsen", cpu) is heinsen and op.implementation("heinsen", cuda) is heinsen

    missing, none = Op("scan", naive, "rnnlab_no_such_module"), Op("scan", naive)
    error = "ModuleNotFoundError: No module named 'rnnlab_no_such_module'"
    imports, import_module = [], importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name: imports.append(name) or import_module(name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [missing.implementation("auto", cuda) for _ in range(3)] == [naive] * 3
        assert none.implementation("auto", cuda) is naive  # no kernel yet: nothing to warn about
    assert imports == ["rnnlab_no_such_module"]  # tried once, not at every call
    assert [str(w.message) for w in caught] == [
        f"scan: GPU kernel unavailable ({error}); using the slow reference loop"]
    for op, why in ((missing, f"cannot import the kernel ({error})"), (none, "it has no GPU kernel yet")):
        with pytest.raises(RuntimeError) as err:
            op.implementation("triton", cuda)
        assert str(err.value) == f"scan backend='triton' is unavailable: {why}"


def test_final_state_of_stored_states_is_in_the_compute_dtype():
    """``registry.final_state``, the final state of a kernel that stores its states in the input
    dtype: the last state in fp32 for bf16 states (as the references return it, and as a layer's
    ``step`` continues from it); for T = 0 the initial state (zeros when None), in fp32 too."""
    from rnnlab.ops.registry import final_state

    h = torch.randn(2, 3, 4).to(torch.bfloat16)
    last = final_state(h, None)
    assert last.dtype == torch.float32 and torch.equal(last, h[:, -1].float())
    h0 = torch.randn(2, 4).to(torch.bfloat16)
    assert torch.equal(final_state(h[:, :1], h0), h[:, 0].float())  # one step: its state, not h0
    empty = h[:, :0]
    assert final_state(empty, h0).dtype == torch.float32 and torch.equal(final_state(empty, h0), h0.float())
    assert final_state(empty, None).dtype == torch.float32 and torch.equal(final_state(empty, None), torch.zeros(2, 4))


def test_spectral_norm_refuses_bad_shapes_in_one_line():
    """``rnnlab.ops.elman.spectral_norm``: a weight that is not ``[H, H]`` / ``[nh, hd, hd]``, a
    vector ``u`` of another shape and fewer than one iteration are each refused, naming what it
    wanted; a good call runs the reference on the CPU."""
    from rnnlab.ops.elman import naive, spectral_norm

    w, u = torch.randn(2, 4, 4), F.normalize(torch.randn(2, 4), dim=-1)
    for args, msg in [((torch.randn(2, 4, 3), u, 0.9, 1), r"w_h must be \[H, H\] or \[nh, hd, hd\], got shape \(2, 4, 3\)"),
                      ((torch.randn(4), u, 0.9, 1), r"w_h must be"),
                      ((w, torch.randn(4), 0.9, 1), r"u must be \[2, 4\] \(w_h's shape less its last dimension\), got \[4\]"),
                      ((w, u, 0.9, 0), r"iters must be at least 1, got 0")]:
        with pytest.raises(ValueError, match=msg):
            spectral_norm(*args)
    got, got_u = spectral_norm(w, u, 0.9, 2)
    want, want_u = naive.spectral_norm(w, u, 0.9, 2)
    assert torch.equal(got, want) and torch.equal(got_u, want_u)
    # u_new comes back in u's dtype (the kernels' contract), whatever w_h's
    for w_dt, u_dt in [(torch.float64, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)]:
        assert spectral_norm(w.to(w_dt), u.to(u_dt), 0.9, 2)[1].dtype == u_dt


@pytest.mark.parametrize("shape", [(48, 48), (3, 16, 16)])
def test_spectral_norm_of_a_bf16_weight_runs_in_fp32(shape):
    """The reference's power iterations, sigma and rescaling run in fp32 for a bf16 weight, as the
    Triton kernels do (dense E1 under pure bf16 runs the reference): the result is the fp32
    computation's rounded to bf16, and the weight's gradient is the fp32 one's rounded."""
    from rnnlab.ops.elman import naive

    g = torch.Generator().manual_seed(11)
    w = (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(torch.bfloat16).requires_grad_()
    u = F.normalize(torch.randn(shape[:-1], generator=g), dim=-1)
    w32 = w.detach().float().requires_grad_()
    got, got_u = naive.spectral_norm(w, u, 0.9, 3)
    want, want_u = naive.spectral_norm(w32, u, 0.9, 3)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16))
    assert torch.equal(got_u, want_u)
    grad = torch.randn(shape, generator=g)
    got_g, = torch.autograd.grad(got, w, grad.to(torch.bfloat16))
    want_g, = torch.autograd.grad(want, w32, grad.to(torch.bfloat16).float())
    assert torch.equal(got_g, want_g.to(torch.bfloat16))



def test_assume_constant_marks_a_function_as_torch_compiler_does():
    """``registry.assume_constant`` stands in for ``torch.compiler.assume_constant_result`` (which
    imports torch._dynamo at every command's start): the mark it leaves must be torch's own."""
    from rnnlab.ops.registry import LazyKernel, assume_constant

    def ours():
        return True

    def torchs():
        return True

    assert assume_constant(ours) is ours
    assert torch.compiler.assume_constant_result(torchs) is torchs
    assert torchs.__dict__ and ours.__dict__ == torchs.__dict__
    assert LazyKernel.available.__dict__ == torchs.__dict__


def test_a_ctrl_c_as_a_kernel_loads_is_not_a_missing_kernel(tmp_path, monkeypatch):
    """A Ctrl-C while a kernel module imports, which pybind11 turns into ``ImportError: initialization
    failed`` as a C++ extension loads, goes on up (the command ends on it) and leaves the kernel
    unjudged: the next ``get`` imports it. Taken for a missing kernel, it would have been swallowed and
    the process would have run the other kernel from then on. A build (``FallibleBuild``) alike."""
    from rnnlab.ops.registry import FallibleBuild, LazyKernel

    (tmp_path / "rnnlab_kernel_probe.py").write_text(
        "import os\n"
        "if os.environ.pop('PROBE_CTRL_C', None):\n"
        "    raise ImportError('initialization failed') from KeyboardInterrupt()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PROBE_CTRL_C", "1")
    kernel = LazyKernel("rnnlab_kernel_probe")
    with pytest.raises(ImportError, match="initialization failed"):
        kernel.get()
    assert kernel.error is None and kernel.get() is not None
    monkeypatch.delitem(sys.modules, "rnnlab_kernel_probe")

    def interrupted():
        raise ImportError("initialization failed") from KeyboardInterrupt()

    build = FallibleBuild("probe build", "the other kernel")
    try:
        with pytest.raises(ImportError):
            build.attempt(interrupted)
        assert build.error is None and build.attempt(lambda: 7) == 7
    finally:
        FallibleBuild._every.remove(build)


def test_aligned_copies_only_what_starts_off_a_16_byte_boundary():
    """``registry.aligned``, which the CUDA C++ kernels' wrappers pass every operand through: a
    contiguous tensor on a 16-byte boundary is itself, a view starting inside its storage is
    copied to one (same values), a transposed one made contiguous, None stays None."""
    from rnnlab.ops.registry import aligned

    base = torch.arange(65, dtype=torch.bfloat16)
    assert aligned(None) is None and base.data_ptr() % 16 == 0 and aligned(base) is base
    off = base[1:].view(8, 8)  # 2 bytes in
    a = aligned(off)
    assert a.data_ptr() % 16 == 0 and a.data_ptr() != off.data_ptr() and torch.equal(a, off)
    on = base[8:64].view(8, 7)  # 16 bytes in: kept
    assert aligned(on) is on
    t = base[:64].view(8, 8).t()
    assert aligned(t).is_contiguous() and torch.equal(aligned(t), t)
