"""diag_elman_scan (the reference against its definition, argument checks) and the E16 layer
(the seed's formula, parameters, config). The op and layer contracts: tests/test_ops.py,
tests/test_layer_contract.py."""

from __future__ import annotations

import pytest
import torch

from rnnlab.layers.e16 import E16, E16Config
from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_params
from rnnlab.ops.diag import diag_elman_scan
from rnnlab.ops.diag import naive as diag_naive

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def _inputs(B=2, T=5, S=3, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, S, generator=gen, dtype=dtype)
    a = torch.rand(S, generator=gen, dtype=dtype)
    h0 = torch.randn(B, S, generator=gen, dtype=dtype) * 0.5
    return u, a, h0


def test_naive_matches_definition():
    u, a, h0 = _inputs()
    h = h0
    ref = []
    for t in range(u.shape[1]):
        h = torch.tanh(a * h + u[:, t])
        ref.append(h)
    out, h_last = diag_naive.diag_elman_scan(u, a, h0)
    torch.testing.assert_close(out, torch.stack(ref, 1))
    assert torch.equal(h_last, out[:, -1])
    torch.testing.assert_close(
        diag_naive.diag_elman_scan(u, a), diag_naive.diag_elman_scan(u, a, torch.zeros_like(h0))
    )


def test_argument_checks():
    u, a, h0 = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        diag_elman_scan(u, a, h0, backend="heinsen")
    with pytest.raises(ValueError, match=r"a must be \[S\]"):
        diag_elman_scan(u, a[:2], h0)
    with pytest.raises(ValueError, match="h0 must be"):
        diag_elman_scan(u, a, h0[:, :2])


def _layer(dim=8, expansion=1.5, s=2, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return E16(E16Config(dim=dim, expansion=expansion, state_expansion=s)).to(dtype)


def test_shapes_and_params():
    layer = _layer()
    assert layer(torch.randn(2, 7, 8)).shape == (2, 7, 8)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {
        "in_proj.weight": (24, 8),
        "B": (12, 24),
        "C": (24, 12),
        "log_A": (24,),
        "out_proj.weight": (8, 12),
    }
    assert torch.all(layer.log_A == 0)


def test_forward_is_the_seed_formula():
    """The module docstring written out with the layer's weights (the seed's E16), with log_A
    perturbed off its init (at 0, sigmoid(log_A) = sigmoid(-log_A) would hide a sign error)."""
    layer = _layer()
    with torch.no_grad():
        layer.log_A.normal_(0.0, 1.0)
    x = torch.randn(2, 5, 8)
    xr, z = (x @ layer.in_proj.weight.T).chunk(2, dim=-1)
    u = torch.nn.functional.silu(xr) @ layer.B
    A = torch.sigmoid(layer.log_A)
    h = torch.zeros(2, 24)
    ys = []
    for t in range(5):
        h = torch.tanh(A * h + u[:, t])
        ys.append((h @ layer.C) * torch.nn.functional.silu(z[:, t]))
    want = torch.stack(ys, 1) @ layer.out_proj.weight.T
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_init_is_xavier_uniform_and_half_decay(assert_xavier_uniform):
    """The seed's init: in_proj, B, C, out_proj xavier_uniform, A = sigmoid(0) = 0.5."""
    layer = _layer(dim=32)
    for name, p in layer.named_parameters():
        if p.dim() == 2:
            assert_xavier_uniform(p, name)
    assert torch.all(layer.log_A == 0)


def test_seed_param_count():
    cfg = ModelConfig(model="e16", dim=1024, depth=10, layer={"expansion": 2.0, "state_expansion": 4})
    assert count_params(cfg) == 398_825_472


@pytest.mark.parametrize("e,s", [(1.0, 2), (2.0, 4), (1.5, 3)])
def test_param_formula(e, s):
    D, L = 64, 3
    di = int(D * e)
    expected = L * (3 * D * di + 2 * s * di * di + s * di + 2 * D) + 256 * D + 2 * D
    cfg = ModelConfig(model="e16", dim=D, depth=L, layer={"expansion": e, "state_expansion": s})
    assert count_params(cfg) == expected


def test_config_validation():
    E16Config(dim=8).validate()
    for kw, msg in [(dict(dim=-1), "dim must be a positive integer, got -1"),
                    (dict(dim=8.0), "dim must be a positive integer, got 8.0"),
                    (dict(expansion=0), "expansion must be a positive finite number (at most 64), got 0"),
                    (dict(expansion=0.1), "expansion must give at least one inner unit (int(dim*expansion) >= 1), "
                                          "got 0.1 (dim 8)"),
                    (dict(state_expansion=0), "state_expansion must be a positive integer (at most 64), got 0"),
                    (dict(state_expansion=1.5), "state_expansion must be a positive integer (at most 64), got 1.5"),
                    (dict(backend="heinsen"), "backend must be one of auto, naive, triton, got 'heinsen'")]:
        with pytest.raises(ValueError) as e:
            E16Config(**{"dim": 8, **kw}).validate()
        assert str(e.value) == msg
