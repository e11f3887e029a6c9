"""E88: the op's reference and the layer against the cell's definition written out one number at a
time, its init, config checks and parameter counts. The layer contract (step == forward,
causality, gradcheck): tests/test_layer_contract.py; the op contract: tests/test_ops.py; the
Triton kernel: tests/test_kernels_interpreted.py and tests/gpu."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from rnnlab.cli import main
from rnnlab.layers.e88 import E88, E88Config
from rnnlab.models import ModelConfig, count_params
from rnnlab.ops.e88 import e88_scan

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def definition(q, k, v, decay, S0):
    """``S_t = tanh(d_t S_{t-1} + k_t (v_t - S_{t-1}^T k_t)^T)``, ``y_t = S_t^T q_t`` per (batch,
    head), element by element in Python floats: ``(y, S_T)`` as float64 tensors."""
    B, T, H, n = q.shape
    m = v.shape[-1]
    y = torch.zeros(B, T, H, m, dtype=torch.float64)
    S_T = torch.zeros(B, H, n, m, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            S = S0[b, h].tolist()
            for t in range(T):
                qt, kt, vt, d = q[b, t, h].tolist(), k[b, t, h].tolist(), v[b, t, h].tolist(), float(decay[b, t, h])
                r = [sum(S[i][j] * kt[i] for i in range(n)) for j in range(m)]
                S = [[math.tanh(d * S[i][j] + kt[i] * (vt[j] - r[j])) for j in range(m)] for i in range(n)]
                y[b, t, h] = torch.tensor([sum(S[i][j] * qt[i] for i in range(n)) for j in range(m)],
                                          dtype=torch.float64)
            S_T[b, h] = torch.tensor(S, dtype=torch.float64)
    return y, S_T


def _inputs(B=2, T=4, H=2, n=3, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (F.normalize(torch.randn(B, T, H, n, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(B, T, H, m, generator=g, dtype=torch.float64) * 2
    decay = torch.rand(B, T, H, generator=g, dtype=torch.float64) * 0.5 + 0.5
    return q, k, v, decay, torch.randn(B, H, n, m, generator=g, dtype=torch.float64).tanh()


def test_op_reference_is_the_definition():
    q, k, v, decay, S0 = _inputs()
    y, S_T = e88_scan(q, k, v, decay, S0, backend="naive")
    want_y, want_S = definition(q, k, v, decay, S0)
    torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S_T, want_S, rtol=1e-12, atol=1e-12)


def _perturbed(cfg: E88Config) -> E88:
    torch.manual_seed(0)
    layer = E88(cfg).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer


def test_layer_is_the_definition():
    """The layer's forward equals its docstring's equations on the layer's own weights."""
    layer = _perturbed(E88Config(dim=6, n_state=3, expansion=2 / 3, heads=2, backend="naive"))
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    H, n, m = 2, 3, 2
    with torch.no_grad():
        qkv = F.silu(x @ layer.qkv_proj.weight.T)
        q, k, v = qkv[..., :H * n], qkv[..., H * n:2 * H * n], qkv[..., 2 * H * n:]
        q, k = (t.reshape(2, 5, H, n) for t in (q, k))
        q, k = (t / (t.norm(dim=-1, keepdim=True) + 1e-6) for t in (q, k))
        a = x @ layer.a_proj.weight.T
        decay = torch.exp(-torch.exp(layer.A_log) * F.softplus(a + layer.dt_bias))
        y, _ = definition(q, k, v.reshape(2, 5, H, m), decay, torch.zeros(2, H, n, m))
        gate = F.silu(x @ layer.g_proj.weight.T)
        want = (y.reshape(2, 5, H * m) * gate) @ layer.o_proj.weight.T
        torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-10)


def test_init(assert_xavier_uniform):
    torch.manual_seed(0)
    layer = E88(E88Config(dim=256, n_state=32))
    assert layer.cfg.n_heads == 8  # balanced: dim // n_state
    A = layer.A_log.exp()
    assert A.min() > 0 and A.max() < 16 and A.max() > 8 and layer.A_log.dtype == torch.float32
    dt = F.softplus(layer.dt_bias)
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 0.1 + 1e-7
    assert layer.A_log._no_weight_decay and layer.dt_bias._no_weight_decay
    for proj in (layer.qkv_proj, layer.a_proj, layer.g_proj, layer.o_proj):
        assert_xavier_uniform(proj.weight, str(proj), near=0.95)


def test_decay_rate_init_spans_u_0_16():
    """``A = exp(A_log) ~ U(0, 16)`` (Mamba2 draws U(1, 16)): over many heads, its whole range."""
    torch.manual_seed(0)
    A = E88(E88Config(dim=4, n_state=1, heads=4096)).A_log.exp()
    assert A.min() < 0.05 and A.max() > 15.95 and A.max() < 16
    assert abs(A.mean().item() - 8) < 0.3  # std of the mean: 16 / sqrt(12 * 4096) = 0.07


def test_head_sizes():
    """``heads`` defaults to ``max(1, dim // n_state)`` (at least one head when dim < n_state) and the
    value size is ``m = int(n_state * expansion)``, rounded down (5 * 1.5 = 7.5 -> 7)."""
    layer = E88(E88Config(dim=16, n_state=32))
    assert layer.cfg.n_heads == 1 and layer.qkv_proj.weight.shape == (3 * 32, 16)
    layer = E88(E88Config(dim=24, n_state=5, expansion=1.5))
    H, n, m = 4, 5, 7
    assert (layer.cfg.n_heads, layer.cfg.head_v_dim) == (H, m)
    assert layer.qkv_proj.weight.shape == (H * (2 * n + m), 24) and layer.o_proj.weight.shape == (24, H * m)
    assert layer.init_state(2, torch.device("cpu"), torch.float32)[0].shape == (2, H, n, m)


@pytest.mark.parametrize("kw, msg", [
    (dict(n_state=0), "n_state must be a positive integer (at most 65,536), got 0"),
    (dict(heads=0), "heads must be a positive integer (at most 65,536), got 0"),
    (dict(heads=2.5), "heads must be a positive integer (at most 65,536), got 2.5"),
    (dict(expansion=0.01), "expansion must give int(n_state*expansion) >= 1, got 0.01"),
    (dict(expansion=float("inf")), "expansion must be a positive finite number (at most 64), got inf"),
    (dict(backend="cuda"), "backend must be one of auto, naive, triton, got 'cuda'"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError) as e:
        E88Config(dim=64, **kw).validate()
    assert str(e.value) == msg


@pytest.mark.parametrize("dim, depth, layer", [(1792, 31, {"heads": 49}), (96, 3, {"n_state": 8, "expansion": 1.5})])
def test_parameter_count(dim, depth, layer):
    """Per layer ``D (2Hn + 3Hm + H) + 2H`` plus its LayerNorm; the tied embedding and final norm.
    (1792 x 31, 49 heads of 32: the reference study's ~480M config, its "~439M" parameters.)"""
    cfg = E88Config(dim=dim, **layer)
    H, n, m = cfg.n_heads, cfg.n_state, cfg.head_v_dim
    per_layer = dim * (2 * H * n + 3 * H * m + H) + 2 * H + 2 * dim
    assert count_params(ModelConfig("e88", dim, depth, layer=layer)) == depth * per_layer + 256 * dim + 2 * dim


def test_params_cli_solves_a_width(capsys):
    assert main(["params", "--model", "e88", "--target", "400M", "--depth", "31", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dim"] % 32 == 0 and abs(out["params"] - 4e8) < 0.01 * 4e8


def test_unit_rows_of_bf16_are_computed_in_fp32():
    """q and k are normalised in fp32 and rounded once: ``_unit`` of a bf16 tensor is that of its
    upcast, rounded to bf16 (a norm summed in bf16 would be off by up to ~1%)."""
    from rnnlab.layers.e88 import _unit

    t = torch.randn(4, 6, 3, 32).bfloat16() * 3
    assert torch.equal(_unit(t), _unit(t.float()).bfloat16())
