"""Mamba2: the SSD op's forms, the pure-PyTorch layer, and its equivalence with mamba_ssm (CPU).
The layer contract (step == forward, causality): tests/test_layer_contract.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnlab.layers.mamba2 import Mamba2, Mamba2Config
from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_params
from rnnlab.ops.ssd import import_mamba_ssm, naive, ssd_scan

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

needs_mamba = pytest.mark.skipif(import_mamba_ssm() is None, reason="mamba_ssm not importable")


def _ssd_inputs(b=2, T=37, h=4, p=3, g=2, n=5, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, h, p, generator=gen, dtype=dtype)
    dt = torch.rand(b, T, h, generator=gen, dtype=dtype) * 0.5 + 0.01
    A = -torch.rand(h, generator=gen, dtype=dtype) * 2 - 0.1
    B = torch.randn(b, T, g, n, generator=gen, dtype=dtype)
    C = torch.randn(b, T, g, n, generator=gen, dtype=dtype)
    return x, dt, A, B, C


def _tiny(**kw) -> Mamba2Config:
    base = dict(dim=32, d_state=8, d_conv=4, expand=2, headdim=16, chunk_size=8, backend="reference")
    base.update(kw)
    return Mamba2Config(**base)


# ----------------------------------------------------------------------------- op
@pytest.mark.parametrize("T,chunk", [(37, 8), (16, 16), (5, 256), (1, 4)])
def test_chunked_matches_sequential(T, chunk):
    x, dt, A, B, C = _ssd_inputs(T=T)
    s0 = torch.randn(2, 4, 3, 5)
    y1, f1 = naive.ssd_chunked(x, dt, A, B, C, chunk, initial_state=s0)
    y2, f2 = naive.ssd_scan(x, dt, A, B, C, initial_state=s0)
    torch.testing.assert_close(y1, y2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(f1, f2, atol=1e-4, rtol=1e-4)


def test_backends_and_dtype():
    x, dt, A, B, C = _ssd_inputs(T=20)
    assert all(torch.equal(a, b) for a, b in zip(ssd_scan(x, dt, A, B, C, 8), naive.ssd_scan(x, dt, A, B, C)))
    assert all(torch.equal(a, b) for a, b in zip(ssd_scan(x, dt, A, B, C, 8, backend="chunked"),
                                                 naive.ssd_chunked(x, dt, A, B, C, 8)))
    for backend in ("naive", "chunked"):
        y, s = ssd_scan(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), 8, backend=backend)
        assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    with pytest.raises(RuntimeError, match="CUDA"):
        ssd_scan(x, dt, A, B, C, 8, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        ssd_scan(x, dt, A, B, C, 8, backend="nope")
    for backend in ("naive", "chunked"):  # 4 heads cannot share 3 groups of B and C evenly
        with pytest.raises(ValueError, match=r"nheads \(4\) must be a multiple of ngroups \(3\)"):
            ssd_scan(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1), 8, backend=backend)


def test_argument_shapes_are_checked():
    """ssd_scan refuses A, B, C and the initial state of shapes other than x's, in one line each, on
    both backends (the reference broadcast a batch-1 B or initial state silently)."""
    x, dt, A, B, C = _ssd_inputs(T=5)
    s0 = torch.zeros(2, 4, 3, 5)
    for args, msg in [((x, dt, A[:2], B, C), r"A must be \[H\] = \(4,\), got \(2,\)"),
                      ((x, dt, A, B[:1], C), r"B and C must be \[B,T,G,N\] of one shape with B,T = \(2, 5\)"),
                      ((x, dt, A, B, C[..., :2]), r"B and C must be"),
                      ((x, dt, A, B[:, :4], C[:, :4]), r"B and C must be")]:
        for backend in ("naive", "chunked"):
            with pytest.raises(ValueError, match=msg):
                ssd_scan(*args, 4, s0, backend=backend)
    for backend in ("naive", "chunked"):
        with pytest.raises(ValueError, match=r"initial_state must be \[B,H,P,N\] = \(2, 4, 3, 5\), got \(1, 4, 3, 5\)"):
            ssd_scan(x, dt, A, B, C, 4, s0[:1], backend=backend)
        for bad in (0, -4, 2.5):  # the chunked form clamped 0 and -4 to 1, the reference ignored them
            with pytest.raises(ValueError, match=rf"chunk_size must be a positive integer, got {bad}"):
                ssd_scan(x, dt, A, B, C, bad, s0, backend=backend)


@needs_mamba
def test_matches_ssd_minimal_discrete():
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete

    x, dt, A, B, C = _ssd_inputs(T=32, g=2, h=4)
    y_ref, s_ref = ssd_minimal_discrete(
        x * dt[..., None], A * dt, B.repeat_interleave(2, 2), C.repeat_interleave(2, 2), 8
    )
    y, s = naive.ssd_chunked(x, dt, A, B, C, 8)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)


@needs_mamba
def test_mamba_ssm_keeps_its_own_selective_scan_extension(tmp_path):
    """The empty ``selective_scan_cuda`` stub stands in only where mamba_ssm's CUDA build is absent: an
    installed extension (here a module of that name on the path) is what mamba_ssm's Mamba-1 calls
    after rnnlab imports mamba_ssm, not the stub (whose ``fwd`` would be missing). A fresh process:
    this one imported mamba_ssm already."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import rnnlab

    (tmp_path / "selective_scan_cuda.py").write_text("fwd = bwd = 'the extension'\n")
    path = os.pathsep.join([str(tmp_path), str(Path(rnnlab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    code = ("import rnnlab.ops.ssd.triton\n"
            "from mamba_ssm.ops import selective_scan_interface as s\n"
            "print(getattr(s.selective_scan_cuda, 'fwd', 'the stub'))\n")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": path},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "the extension"


def test_gradcheck_ssd_chunked():
    x, dt, A, B, C = _ssd_inputs(b=1, T=6, h=2, p=2, g=1, n=3, dtype=torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (x, dt, A, B, C))
    assert torch.autograd.gradcheck(lambda *a: naive.ssd_chunked(*a, chunk_size=4), args)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw,msg", [
    (dict(headdim=24), "headdim must divide d_inner = expand*dim = 64, got 24"),
    (dict(ngroups=3), "ngroups must divide the number of heads (4), got 3"),
    (dict(d_state=0), "d_state must be a positive integer (at most 65,536), got 0"),
    (dict(d_conv=1.5), "d_conv must be a positive integer (at most 65,536), got 1.5"),
    (dict(expand=0), "expand must be a positive integer (at most 64), got 0"),
    (dict(backend="cuda"), "backend must be one of auto, official, reference, got 'cuda'"),
    (dict(chunk_size=-1), "chunk_size must be a positive integer (at most 65,536), got -1"),
])
def test_validate_messages(kw, msg):
    with pytest.raises(ValueError) as e:
        _tiny(**kw).validate()
    assert str(e.value) == msg


def test_defaults_are_the_seeds():
    cfg = Mamba2Config(dim=1728)
    assert (cfg.d_state, cfg.d_conv, cfg.expand, cfg.headdim, cfg.ngroups, cfg.chunk_size) == (64, 4, 2, 64, 1, 256)
    assert cfg.nheads == 54


# ----------------------------------------------------------------------------- layer
@pytest.mark.parametrize("ngroups", [1, 2])
def test_init_state_layout(ngroups):
    """(conv_state [B, di+2GN, d_conv] in the model dtype, ssm_state [B, H, headdim, N] fp32)."""
    layer = Mamba2(_tiny(ngroups=ngroups))
    conv, ssm = layer.init_state(2, torch.device("cpu"), torch.bfloat16)
    assert conv.shape == (2, 64 + 2 * ngroups * 8, 4) and conv.dtype == torch.bfloat16
    assert ssm.shape == (2, 4, 16, 8) and ssm.dtype == torch.float32


def test_bf16_forward_runs():
    layer = Mamba2(_tiny()).bfloat16()
    y = layer(torch.randn(1, 10, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_param_counts_match_the_seed():
    assert count_params(ModelConfig(model="mamba2", dim=1728, depth=22)) == 402_064_492
    assert count_params(ModelConfig(model="mamba2", dim=1728, depth=22, layer={"d_state": 128})) == 406_944_620


def test_init_ranges():
    torch.manual_seed(0)
    layer = Mamba2(Mamba2Config(dim=256))  # 8 heads
    A = torch.exp(layer.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    dt = F.softplus(layer.dt_bias)
    assert ((dt >= 1e-3 - 1e-6) & (dt <= 0.1 + 1e-6)).all()
    assert (layer.D == 1).all() and (layer.norm.weight == 1).all()


def test_forward_is_the_formula_written_out():
    """The reference layer's forward written out in float64 from its own weights, without mamba_ssm
    (the comparisons with mamba_ssm below skip where it does not import): in_proj split into
    [z | x B C | dt], the causal depthwise conv with its bias then silu, dt = softplus(dt + dt_bias),
    A = -exp(A_log), the state loop per head (head h reads group h // (H/G)), the D skip, and the
    gated RMSNorm over each group of di/G channels of y * silu(z) (eps 1e-5), then out_proj. Every
    parameter is perturbed off its init (D = 1 and norm weight = 1 would hide a dropped term);
    ngroups = 2 so a norm over all di channels differs from the per-group one."""
    torch.manual_seed(0)
    layer = Mamba2(_tiny(dim=8, d_state=3, d_conv=3, headdim=4, ngroups=2, chunk_size=4)).double()
    di, G, N, H, P, T = 16, 2, 3, 4, 4, 6  # T = 6: one full chunk of 4 and a partial one
    x = torch.randn(2, T, 8, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        proj = x @ layer.in_proj.weight.T
        z, xBC, dt = proj[..., :di], proj[..., di:2 * di + 2 * G * N], proj[..., 2 * di + 2 * G * N:]
        w = layer.conv1d.weight[:, 0]  # [C, 3]: tap j multiplies the input at t - 2 + j
        padded = F.pad(xBC, (0, 0, 2, 0))
        xBC = F.silu(sum(padded[:, j:j + T] * w[:, j] for j in range(3)) + layer.conv1d.bias)
        xs, Bm, Cm = xBC[..., :di], xBC[..., di:di + G * N], xBC[..., di + G * N:]
        dt = torch.log1p(torch.exp(dt + layer.dt_bias))
        A = -torch.exp(layer.A_log)
        y = torch.zeros(2, T, di, dtype=torch.float64)
        for b in range(2):
            for h in range(H):
                g, S = h // (H // G), torch.zeros(P, N, dtype=torch.float64)
                for t in range(T):
                    xh = xs[b, t, h * P:(h + 1) * P]
                    S = torch.exp(dt[b, t, h] * A[h]) * S + dt[b, t, h] * torch.outer(xh, Bm[b, t, g * N:(g + 1) * N])
                    y[b, t, h * P:(h + 1) * P] = S @ Cm[b, t, g * N:(g + 1) * N] + layer.D[h] * xh
        groups = (y * F.silu(z)).unflatten(-1, (G, di // G))
        normed = (groups / torch.sqrt(groups.square().mean(-1, keepdim=True) + 1e-5)).flatten(-2) * layer.norm.weight
        want = normed @ layer.out_proj.weight.T
        torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-12)  # all in fp64, the gated norm too


# ----------------------------------------------------------------------------- vs mamba_ssm
def _official(cfg: Mamba2Config):
    from mamba_ssm.modules.mamba2 import Mamba2 as Official

    return Official(
        d_model=cfg.dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
        headdim=cfg.headdim, ngroups=cfg.ngroups, chunk_size=cfg.chunk_size, use_mem_eff_path=False,
    )


@needs_mamba
@pytest.mark.parametrize("ngroups", [1, 2])
def test_state_dict_and_init_match_official(ngroups):
    cfg = _tiny(ngroups=ngroups)
    torch.manual_seed(0)
    off = _official(cfg).state_dict()
    torch.manual_seed(0)
    ref = Mamba2(cfg).state_dict()
    assert list(ref) == list(off)
    for k in off:
        assert ref[k].shape == off[k].shape, k
        torch.testing.assert_close(ref[k], off[k], msg=k)  # same RNG order -> same init


@needs_mamba
def test_official_backend_adopts_module_on_cpu(monkeypatch):
    import rnnlab.layers.mamba2 as m

    monkeypatch.setattr(m.CAUSAL_CONV1D, "warned", False)
    cfg = _tiny(backend="official")
    if m.causal_conv1d_available():
        layer = Mamba2(cfg)
    else:
        with pytest.warns(UserWarning, match="causal_conv1d"):
            layer = Mamba2(cfg)
    assert layer.backend == "official"
    ref = Mamba2(_tiny())
    assert [(k, v.shape) for k, v in layer.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert not any(k.startswith("inner") for k, _ in layer.named_parameters())
    ref.load_state_dict(layer.state_dict())  # checkpoints move between backends
    layer.load_state_dict(ref.state_dict())
    with pytest.raises(RuntimeError, match="CUDA"):
        layer(torch.randn(1, 4, 32))


@needs_mamba
def test_forward_matches_mamba_ssm_reference_ops():
    """Official forward (use_mem_eff_path=False) with mamba_ssm's own CPU references substituted."""
    from mamba_ssm.ops.triton.layernorm_gated import rms_norm_ref
    from mamba_ssm.ops.triton.ssd_combined import ssd_chunk_scan_combined_ref

    cfg = _tiny(ngroups=2)
    torch.manual_seed(0)
    off = _official(cfg)
    layer = Mamba2(cfg)
    layer.load_state_dict(off.state_dict())
    x = torch.randn(2, 24, 32)  # the ref needs T % chunk_size == 0
    with torch.no_grad():
        z, xBC, dt = torch.split(off.in_proj(x), [64, 64 + 2 * 2 * 8, 4], dim=-1)
        xBC = F.silu(off.conv1d(xBC.transpose(1, 2)).transpose(1, 2)[:, :-3])
        xs, B, C = torch.split(xBC, [64, 16, 16], dim=-1)
        y = ssd_chunk_scan_combined_ref(
            xs.unflatten(-1, (4, 16)), dt, -torch.exp(off.A_log), B.unflatten(-1, (2, 8)),
            C.unflatten(-1, (2, 8)), cfg.chunk_size, D=off.D, dt_bias=off.dt_bias, dt_softplus=True,
        )
        y = rms_norm_ref(y.flatten(-2), off.norm.weight, None, z=z, eps=1e-5, group_size=32, norm_before_gate=False)
        expect = off.out_proj(y)
        torch.testing.assert_close(layer(x), expect, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the official kernels' limits
LIMITS = [  # (options, causal_conv1d imports, the limit named)
    (dict(d_conv=5), True, "causal_conv1d's CUDA kernel takes d_conv 2 to 4, got 5"),
    (dict(d_conv=1), True, "causal_conv1d's CUDA kernel takes d_conv 2 to 4, got 1"),
    (dict(d_conv=1), False, "mamba_ssm's Mamba2 takes d_conv of at least 2 (it trims d_conv - 1 conv steps), got 1"),
    (dict(dim=12, expand=1, headdim=4, d_state=3), True,
     "causal_conv1d's fused path takes conv channels expand*dim + 2*ngroups*d_state in multiples of 8, "
     "got 12 + 2*1*3 = 18"),
]


@pytest.mark.parametrize("backend", ["official", "auto"])
@pytest.mark.parametrize("opts,fused,limit", LIMITS)
def test_options_the_official_kernels_refuse_are_one_line_at_build(official_would_run, backend, opts, fused, limit):
    """Where the official layer would be built (backend official, or auto with CUDA and mamba_ssm),
    options its kernels refuse (mamba_ssm 2.3.2, causal_conv1d 1.7.0: read from their source) raise
    one line naming the limit and backend=reference when the layer is built, not deep inside the
    kernel at the first forward on the GPU; the reference takes them, on any device."""
    official_would_run(fused)
    chosen = "backend=official" if backend == "official" else "backend=auto (the official implementation on CUDA)"
    with pytest.raises(ValueError) as e:
        Mamba2(_tiny(backend=backend, **opts))
    assert str(e.value) == f"Mamba2 {chosen}: {limit}; use backend=reference (--layer backend=reference; in a " \
                           "Hugging Face export, the config's layer dict) (the PyTorch reference: any device, same " \
                           "weights; a trained run's eval or sample: --device cpu)"
    layer = Mamba2(_tiny(backend="reference", **opts))
    assert layer(torch.randn(1, 5, layer.d_model)).shape == (1, 5, layer.d_model)


@pytest.mark.parametrize("opts,fused", [(dict(d_conv=5), False), (dict(d_conv=2), True), (dict(d_conv=4), True),
                                        (dict(dim=12, expand=1, headdim=4, d_state=3), False),
                                        (dict(dim=12, expand=1, headdim=4, d_state=2), True),
                                        (dict(d_state=256, headdim=128, dim=64), True)])
def test_options_the_official_kernels_take_choose_official(official_would_run, opts, fused):
    """Within the limits (a wide conv or odd channels without causal_conv1d, whose unfused path is
    nn.Conv1d; any d_state and headdim: the SSD kernels loop over their blocks) official is chosen."""
    import rnnlab.layers.mamba2 as m

    official_would_run(fused)
    cfg = _tiny(**opts)
    assert m.official_limit(cfg) is None
    assert m.resolve_backend("auto", cfg) == m.resolve_backend("official", cfg) == "official"


def test_the_limits_apply_only_where_official_is_chosen(monkeypatch):
    """Without CUDA, auto is the reference and takes every option; an explicit official without
    mamba_ssm says that first."""
    import rnnlab.layers.mamba2 as m

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(m, "causal_conv1d_available", lambda: True)
    assert Mamba2(_tiny(backend="auto", d_conv=5)).backend == "reference"
    monkeypatch.setattr(m, "import_mamba_ssm", lambda: None)
    with pytest.raises(ValueError, match="backend='official' needs mamba_ssm"):
        Mamba2(_tiny(backend="official", d_conv=5))


# ----------------------------------------------------------------------------- GPU (pytest -m gpu)
def gpu_official(fn):
    """GPU test of the official backend: needs CUDA and mamba_ssm."""
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(fn)
    return pytest.mark.gpu(needs_mamba(fn))


def _pair(dim=256, **kw):
    """(official, reference) layers on CUDA with the same weights, fp32."""
    torch.manual_seed(0)
    off = Mamba2(Mamba2Config(dim=dim, chunk_size=64, backend="official", **kw)).cuda()
    ref = Mamba2(Mamba2Config(dim=dim, chunk_size=64, backend="reference", **kw)).cuda()
    ref.load_state_dict(off.state_dict())
    return off, ref


@gpu_official
@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("T", [100, 128])
def test_gpu_official_matches_reference(ngroups, T):
    off, ref = _pair(ngroups=ngroups)
    x = torch.randn(2, T, 256, device="cuda", requires_grad=True)
    y_off = off(x)
    y_ref = ref(x)
    torch.testing.assert_close(y_off, y_ref, atol=2e-3, rtol=2e-3)
    g = torch.randn_like(y_off)
    (gx_off,) = torch.autograd.grad(y_off, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(gx_off, gx_ref, atol=5e-3, rtol=5e-3)
    y_b = off.bfloat16()(x.detach().bfloat16())
    assert (y_b.float() - y_ref).abs().max() < 0.05 * y_ref.abs().max()


@gpu_official
def test_gpu_official_step_matches_forward():
    off, ref = _pair()
    x = torch.randn(2, 20, 256, device="cuda")
    with torch.no_grad():
        y = off(x)
        s_off = off.init_state(2, x.device, x.dtype)
        s_ref = ref.init_state(2, x.device, x.dtype)
        outs, outs_ref = [], []
        for t in range(x.shape[1]):
            y_t, s_off = off.step(x[:, t], s_off)
            r_t, s_ref = ref.step(x[:, t], s_ref)
            outs.append(y_t)
            outs_ref.append(r_t)
    torch.testing.assert_close(torch.stack(outs, 1), y, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(torch.stack(outs_ref, 1), y, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(s_off[1], s_ref[1], atol=1e-3, rtol=1e-3)



def test_bf16_gated_norm_and_dt_are_computed_in_fp32():
    """The gate-then-RMSNorm and dt = softplus(dt + dt_bias) run in fp32 for bf16 inputs: the norm's
    result is that of the upcast inputs rounded once, and dt reaches the scan in fp32 unrounded."""
    from rnnlab.layers.mamba2 import GateThenRMSNorm

    x, z = (torch.randn(2, 5, 32).bfloat16() * 3 for _ in range(2))
    norm = GateThenRMSNorm(32, group_size=16)
    with torch.no_grad():
        norm.weight.normal_()
        assert torch.equal(norm(x, z), norm(x.float(), z.float()).bfloat16())
    torch.manual_seed(0)
    layer = Mamba2(Mamba2Config(dim=16, d_state=4, headdim=8, backend="reference")).bfloat16()
    xBC = torch.randn(2, 5, 32 + 2 * 4).bfloat16()
    dt = torch.randn(2, 5, 4).bfloat16() * 3
    _, got, A, _, _ = layer._ssm_inputs(xBC, dt)
    assert got.dtype == A.dtype == torch.float32
    assert torch.equal(got, F.softplus(dt.float() + layer.dt_bias.float()))
