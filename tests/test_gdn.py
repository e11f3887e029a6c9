"""Gated DeltaNet: the op's reference against its definition and fla's own PyTorch reference, the
reference layer against fla's formulas, the state_dict and init of fla's layer (built on CPU),
backend choice, config checks and parameter counts. fla's kernels need CUDA (tests/gpu); the layer
contract (step == forward, causality, gradcheck): tests/test_layer_contract.py."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from rnnlab.cli import main
from rnnlab.layers import gdn
from rnnlab.layers.gdn import GatedDeltaNet, GatedDeltaNetConfig
from rnnlab.models import ModelConfig, count_params
from rnnlab.ops.delta import fla_backward_refusal, gated_delta_scan
from rnnlab.train.config import TrainConfig
from rnnlab.train.runtime import check_trainable

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention



def _fla(module: str):
    return pytest.importorskip(module, reason="fla not installed (pip install flash-linear-attention)")


def _inputs(B=2, T=5, H=2, K=3, V=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    log_a = -torch.rand(B, T, H, generator=g, dtype=dtype)
    beta = torch.rand(B, T, H, generator=g, dtype=dtype)
    return q, k, v, log_a, beta, torch.randn(B, H, K, V, generator=g, dtype=dtype)


def definition(q, k, v, log_a, beta, S0):
    """``S_t = a S_{t-1} + beta k (v - a S_{t-1}^T k)^T``, ``o_t = S_t^T q_t`` element by element."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    o = torch.zeros(B, T, H, V, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            S = S0[b, h].tolist()
            for t in range(T):
                a, bt = float(log_a[b, t, h].exp()), float(beta[b, t, h])
                qt, kt, vt = q[b, t, h].tolist(), k[b, t, h].tolist(), v[b, t, h].tolist()
                u = [bt * (vt[j] - sum(a * S[i][j] * kt[i] for i in range(K))) for j in range(V)]
                S = [[a * S[i][j] + kt[i] * u[j] for j in range(V)] for i in range(K)]
                o[b, t, h] = torch.tensor([sum(S[i][j] * qt[i] for i in range(K)) for j in range(V)],
                                          dtype=torch.float64)
    return o


def test_op_reference_is_the_definition():
    q, k, v, log_a, beta, S0 = _inputs()
    o, _ = gated_delta_scan(q, k, v, log_a, beta, S0, backend="naive")
    torch.testing.assert_close(o, definition(q, k, v, log_a, beta, S0), rtol=1e-12, atol=1e-12)


def test_op_reference_matches_fla_naive():
    """fla's own PyTorch recurrence (fp32 inside) with ``scale=1``: outputs and final state."""
    naive = _fla("fla.ops.gated_delta_rule.naive")
    q, k, v, log_a, beta, S0 = _inputs(T=9, H=3, K=4, V=5, dtype=torch.float32)
    o, S_T = gated_delta_scan(q, k, v, log_a, beta, S0, backend="naive")
    want_o, want_S = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, log_a, scale=1.0, initial_state=S0,
                                                            output_final_state=True)
    torch.testing.assert_close(o, want_o, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(S_T, want_S, rtol=1e-6, atol=1e-6)


def _reference(seed=0, **kw) -> GatedDeltaNet:
    torch.manual_seed(seed)
    return GatedDeltaNet(GatedDeltaNetConfig(**{"dim": 16, "head_dim": 4, "backend": "reference", **kw}))


def test_layer_follows_fla_formulas():
    """The reference layer equals the layer written with fla's PyTorch gate and recurrence
    (``naive_gdn_gate``, ``naive_recurrent_gated_delta_rule`` with its default q scale K^-1/2)."""
    gate = _fla("fla.ops.gated_delta_rule.gate")
    naive = _fla("fla.ops.gated_delta_rule.naive")
    layer = _reference(heads=3, expand_v=1.5)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        x = torch.randn(2, 7, 16)
        q, k, v = (F.silu(F.conv1d(proj(x).transpose(1, 2), conv.weight, padding=3, groups=conv.weight.shape[0])
                          [..., :7].transpose(1, 2))
                   for proj, conv in ((layer.q_proj, layer.q_conv1d), (layer.k_proj, layer.k_conv1d),
                                      (layer.v_proj, layer.v_conv1d)))
        q, k = (F.normalize(t.unflatten(-1, (3, 4)), dim=-1, eps=0) for t in (q, k))  # |x| >> 1e-3 here
        g = gate.naive_gdn_gate(layer.a_proj(x), layer.A_log, layer.dt_bias)
        o, _ = naive.naive_recurrent_gated_delta_rule(q, k, v.unflatten(-1, (3, 6)), layer.b_proj(x).sigmoid(), g)
        gate_in = layer.g_proj(x).unflatten(-1, (3, 6))
        o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-5) * layer.o_norm.weight * F.silu(gate_in)
        torch.testing.assert_close(layer(x), layer.o_proj(o.flatten(-2)), rtol=1e-4, atol=1e-5)


def test_layer_is_the_module_docstring_written_out():
    """The reference layer against its module docstring's formulas, written out in float64 without
    fla (the fla comparison above skips where fla does not import): causal depthwise convs then
    silu, q and k over sqrt(|.|^2 + 1e-6) with q also times K^-1/2, g = -exp(A_log) softplus(a + dt_bias),
    beta = sigmoid(x W_b^T), the recurrence by ``definition`` from zeros, then RMSNorm per head (eps
    1e-5) times its weight and silu(x W_g^T), and o_proj. Every parameter is perturbed off its init."""
    layer = _reference(heads=2, expand_v=1.5).double()  # dim 16, K = 4, V = 6, conv 4
    H, K, V, T = 2, 4, 6, 5
    x = torch.randn(2, T, 16, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.2)

        def conv_silu(proj, conv):  # tap j multiplies the input at t - 3 + j
            u, w = F.pad(proj(x), (0, 0, 3, 0)), conv.weight[:, 0]
            return F.silu(sum(u[:, j:j + T] * w[:, j] for j in range(4)))

        q, k, v = (conv_silu(proj, conv) for proj, conv in ((layer.q_proj, layer.q_conv1d),
                                                           (layer.k_proj, layer.k_conv1d),
                                                           (layer.v_proj, layer.v_conv1d)))
        q, k = (t.unflatten(-1, (H, K)) / torch.sqrt(t.unflatten(-1, (H, K)).square().sum(-1, keepdim=True) + 1e-6)
                for t in (q, k))
        g = -torch.exp(layer.A_log) * torch.log1p(torch.exp(x @ layer.a_proj.weight.T + layer.dt_bias))
        beta = 1 / (1 + torch.exp(-(x @ layer.b_proj.weight.T)))
        o = definition(q * K ** -0.5, k, v.unflatten(-1, (H, V)), g, beta, torch.zeros(2, H, K, V, dtype=torch.float64))
        o = o / torch.sqrt(o.square().mean(-1, keepdim=True) + 1e-5) * layer.o_norm.weight
        o = o * F.silu((x @ layer.g_proj.weight.T).unflatten(-1, (H, V)))
        torch.testing.assert_close(layer(x), o.flatten(-2) @ layer.o_proj.weight.T, rtol=1e-10, atol=1e-10)


def test_bf16_layer_computes_its_gates_in_fp32():
    """In a bf16 layer the log decay g and beta reach the op in fp32, computed from the bf16
    projections upcast (the docstring's compute dtype), not evaluated or rounded in bf16."""
    layer = _reference(heads=2).bfloat16()
    x = torch.randn(2, 5, 16).bfloat16()
    qkv = [torch.randn(2, 5, 8).bfloat16(), torch.randn(2, 5, 8).bfloat16(), torch.randn(2, 5, 16).bfloat16()]
    with torch.no_grad():
        *_, g, beta = layer._scan_inputs(x, *qkv)
        a, b = layer.a_proj(x).float(), layer.b_proj(x).float()
    assert g.dtype == beta.dtype == torch.float32
    assert torch.equal(beta, torch.sigmoid(b))
    assert torch.equal(g, -torch.exp(layer.A_log.float()) * F.softplus(a + layer.dt_bias.float()))


def test_reference_has_fla_state_dict_and_init():
    """fla's layer (built on CPU, where its forward cannot run) and the reference: the same names,
    shapes, order and, from the same seed, the same initial values."""
    _fla("fla.layers.gated_deltanet")
    cfg = dict(dim=48, head_dim=8, heads=3, expand_v=2.0, conv_size=4)
    torch.manual_seed(3)
    official = GatedDeltaNet(GatedDeltaNetConfig(**cfg, backend="official")).state_dict()
    reference = _reference(seed=3, **cfg).state_dict()
    assert list(official) == list(reference)
    for name in official:
        torch.testing.assert_close(reference[name], official[name], rtol=0, atol=0, msg=name)


def test_official_forward_needs_cuda():
    _fla("fla.layers.gated_deltanet")
    layer = GatedDeltaNet(GatedDeltaNetConfig(dim=16, head_dim=4, backend="official"))
    assert layer.backend == "official" and layer._use_fused_qkv_conv(None, False, None)
    with pytest.raises(RuntimeError, match="only on CUDA"):
        layer(torch.randn(1, 3, 16))
    # step too (its gated norm is fla's Triton kernel): one line, not a Triton driver traceback
    with pytest.raises(RuntimeError, match="GatedDeltaNet backend='official' runs only on CUDA tensors"):
        layer.step(torch.randn(1, 16), layer.init_state(1, torch.device("cpu"), torch.float32))


def test_backend_choice(monkeypatch, capsys):
    assert gdn.resolve_backend("auto") == ("official" if torch.cuda.is_available() and gdn.FLA_LAYER.available()
                                           else "reference")
    monkeypatch.setattr(gdn, "FLA_LAYER", gdn.LazyKernel("rnnlab_no_such_module"))
    assert gdn.resolve_backend("auto") == "reference"
    with pytest.raises(ValueError, match="needs fla's layer"):
        gdn.resolve_backend("official")
    # a user error, as a missing optional package is elsewhere: one line, not a traceback
    assert main(["params", "--model", "gdn", "--layer", "backend=official"]) == 2
    assert capsys.readouterr().err == ("rnnlab params: error: GatedDeltaNet backend='official' needs fla's layer "
                                       "(pip install flash-linear-attention): ModuleNotFoundError: No module named "
                                       "'rnnlab_no_such_module'\n")


@pytest.mark.parametrize("backend", ["official", "auto"])
def test_a_head_dim_over_fla_s_limit_is_one_line_at_build(official_would_run, backend):
    """Where fla's layer would be built (backend official, or auto with CUDA and fla), a head_dim
    over 256 (fla-core 0.6's chunk_delta_h asserts it, at the first forward on the GPU) raises one
    line when the layer is built; the reference takes it on the CPU; 256 itself chooses official."""
    chosen = "backend=official" if backend == "official" else "backend=auto (the official implementation on CUDA)"
    with pytest.raises(ValueError) as e:
        GatedDeltaNet(GatedDeltaNetConfig(dim=16, head_dim=257, backend=backend))
    assert str(e.value) == (
        f"GatedDeltaNet {chosen}: fla's chunked kernel takes head_dim at most 256, got 257: use head_dim <= 256 "
        "(more heads for the same width), or backend=reference (--layer backend=reference; in a Hugging Face export, "
        "the config's layer dict) on a CPU device (on CUDA the reference's "
        "scan is that same kernel)")
    assert gdn.resolve_backend(backend, GatedDeltaNetConfig(dim=16, head_dim=256, backend=backend)) == "official"
    layer = GatedDeltaNet(GatedDeltaNetConfig(dim=16, head_dim=257, expand_v=1.0, heads=1, backend="reference"))
    assert layer(torch.randn(1, 3, 16)).shape == (1, 3, 16)


def test_fla_backward_refusal_follows_fla_flags(monkeypatch):
    """fla 0.6 refuses the gated backward on Hopper with Triton in [3.4, 3.7.1) unless its TileLang
    kernel is usable and enabled (tests/gpu checks that fla raises exactly when this says so)."""
    _fla("fla.ops.common.backends.tilelang")
    import fla.utils as fu
    from fla.ops.common.backends.tilelang import CommonTileLangBackend

    def refusal(hopper=True, above_3_4=True, above_3_7_1=False, tilelang=False, imports=True):
        """``tilelang``: fla finds the package; ``imports``: importing it works."""
        for name, value in (("IS_NVIDIA_HOPPER", hopper), ("TRITON_ABOVE_3_4_0", above_3_4),
                            ("TRITON_ABOVE_3_7_1", above_3_7_1)):
            monkeypatch.setattr(fu, name, value)
        monkeypatch.setattr(CommonTileLangBackend, "is_available", classmethod(lambda cls: tilelang))
        monkeypatch.setitem(sys.modules, "tilelang", types.ModuleType("tilelang") if imports else None)
        return fla_backward_refusal()

    monkeypatch.setenv("FLA_TILELANG", "1")
    assert "wrong gradients, fla issue #640): install tilelang" in refusal()
    assert refusal(hopper=False) is None and refusal(above_3_4=False) is None
    assert refusal(above_3_7_1=True) is None and refusal(tilelang=True) is None
    monkeypatch.setenv("FLA_DISABLE_BACKEND_DISPATCH", "1")  # fla then never dispatches to TileLang
    assert "unset FLA_DISABLE_BACKEND_DISPATCH" in refusal(tilelang=True)
    monkeypatch.delenv("FLA_DISABLE_BACKEND_DISPATCH")
    monkeypatch.setenv("FLA_TILELANG", "0")  # TileLang installed but switched off: still refused
    assert refusal(tilelang=True) is not None
    monkeypatch.setenv("FLA_TILELANG", "1")
    assert "tilelang does not import" in refusal(tilelang=True, imports=False)  # found by fla, import fails


def test_training_refused_in_one_line_where_fla_refuses(monkeypatch):
    monkeypatch.setattr(gdn, "fla_backward_refusal", lambda: "fla refuses (test)")
    cfg = TrainConfig.from_dict({"model": "gdn"})
    with pytest.raises(ValueError) as e:
        check_trainable(cfg, torch.device("cuda"))
    assert str(e.value) == "model gdn cannot train on cuda: fla refuses (test)"
    check_trainable(cfg, torch.device("cpu"))  # the reference loop trains anywhere
    check_trainable(TrainConfig.from_dict({"model": "e1"}), torch.device("cuda"))


def test_refused_training_touches_no_folder(monkeypatch, tmp_path, capsys):
    """Through ``rnnlab train`` (a blocker made to fire on the CPU): exit 2, one line, no run folder."""
    monkeypatch.setattr(GatedDeltaNet, "training_blocker", staticmethod(lambda device: "fla refuses (test)"))
    out = tmp_path / "run"
    rc = main(["train", "--model", "gdn", "--dim", "32", "--depth", "1", "--layer", "head_dim=8", "--steps", "2",
               "--batch-size", "2", "--seq-len", "16", "--device", "cpu", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert (rc, err) == (2, "rnnlab train: error: model gdn cannot train on cpu: fla refuses (test)")
    assert not out.exists()


@pytest.mark.parametrize("kw, msg", [
    (dict(head_dim=0), "head_dim must be a positive integer (at most 65,536), got 0"),
    (dict(heads=0), "heads must be a positive integer (at most 65,536), got 0"),
    (dict(expand_v=0.3), "expand_v must make head_dim*expand_v a positive integer, got 0.3"),
    (dict(expand_v=-2.0), "expand_v must be a positive finite number (at most 64), got -2"),
    (dict(conv_size=2.0), "conv_size must be a positive integer (at most 65,536), got 2.0"),
    (dict(backend="naive"), "backend must be one of auto, official, reference, got 'naive'"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError) as e:
        GatedDeltaNetConfig(dim=64, **kw).validate()
    assert str(e.value) == msg


def test_expand_v_is_taken_as_fla_takes_it():
    """V = int(head_dim * expand_v) where the product is within 1e-5 of it, fla's own rule, so the
    reference takes what the official layer takes: 100 * 0.07 = 7.000000000000001 is V = 7 (it was
    refused, as an exact comparison of floats); 100 * 0.29 = 28.999999999999996, which fla refuses
    (int() makes it 28), is refused too."""
    cfg = GatedDeltaNetConfig(dim=64, head_dim=100, expand_v=0.07, heads=1)
    cfg.validate()
    assert cfg.head_v_dim == 7
    with pytest.raises(ValueError, match="expand_v must make head_dim\\*expand_v a positive integer, got 0.29"):
        GatedDeltaNetConfig(dim=64, head_dim=100, expand_v=0.29, heads=1).validate()


@pytest.mark.parametrize("dim, depth, layer", [(1920, 17, {"heads": 24, "head_dim": 80}), (256, 2, {"conv_size": 2})])
def test_parameter_count(dim, depth, layer):
    """Per layer ``D (2HK + 3HV + 2H) + c (2HK + HV) + 2H + V`` plus its LayerNorm; the tied
    embedding and final norm (1920 x 17, 24 heads of 80: the reference study's ~480M config)."""
    cfg = GatedDeltaNetConfig(dim=dim, **layer)
    H, K, V, c = cfg.n_heads, cfg.head_dim, cfg.head_v_dim, cfg.conv_size
    per_layer = dim * (2 * H * K + 3 * H * V + 2 * H) + c * (2 * H * K + H * V) + 2 * H + V + 2 * dim
    assert count_params(ModelConfig("gdn", dim, depth, layer=layer)) == depth * per_layer + 256 * dim + 2 * dim


def test_params_cli_solves_a_width(capsys):
    assert main(["params", "--model", "gdn", "--target", "400M", "--depth", "17", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dim"] % 32 == 0 and abs(out["params"] - 4e8) < 0.01 * 4e8


def test_bf16_l2_norm_and_gated_rms_norm_are_computed_in_fp32():
    """q/k's L2 normalisation and the output's RMSNorm-then-gate run in fp32 for bf16 inputs: their
    results are those of the upcast inputs (the norm returns fp32; the gated norm rounds once)."""
    t, o, gate = (torch.randn(3, 5, 2, 16).bfloat16() * 3 for _ in range(3))
    assert torch.equal(gdn._l2_normalize(t), gdn._l2_normalize(t.float()))
    norm = gdn.RMSNormThenGate(16)
    with torch.no_grad():
        norm.weight.normal_()
        assert torch.equal(norm(o, gate), norm(o.float(), gate.float()).bfloat16())
