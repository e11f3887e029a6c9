"""diag_elman_scan (naive + dispatch) and the E16 layer."""

from __future__ import annotations

import pytest
import torch

from rnnlab.layers.e16 import E16, E16Config
from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_params
from rnnlab.ops.diag import diag_elman_scan
from rnnlab.ops.diag import naive as diag_naive


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


def test_gradcheck_naive():
    u, a, h0 = (t.requires_grad_() for t in _inputs())
    assert torch.autograd.gradcheck(diag_naive.diag_elman_scan, (u, a, h0))


def test_naive_returns_input_dtype():
    u, a, h0 = _inputs(dtype=torch.bfloat16)
    h, h_last = diag_naive.diag_elman_scan(u, a, h0)
    assert h.dtype == torch.bfloat16 and h_last.dtype == torch.float32


def test_dispatch():
    u, a, h0 = _inputs(dtype=torch.float32)
    ref = diag_naive.diag_elman_scan(u, a, h0)
    torch.testing.assert_close(diag_elman_scan(u, a, h0), ref)
    torch.testing.assert_close(diag_elman_scan(u, a, h0, backend="naive"), ref)
    with pytest.raises(RuntimeError, match="backend='triton'"):
        diag_elman_scan(u, a, h0, backend="triton")
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


def test_causal():
    layer = _layer()
    x = torch.randn(2, 10, 8)
    x2 = x.clone()
    x2[:, 4:] += torch.randn(2, 6, 8)
    y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_matches_forward(dtype):
    layer = _layer(dtype=dtype)
    x = torch.randn(3, 9, 8, dtype=dtype)
    y = layer(x)
    state = layer.init_state(3, x.device, dtype)
    outs = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y)


def test_gradcheck_layer():
    layer = _layer(dim=3, expansion=1.0, s=2, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


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
    with pytest.raises(ValueError, match="dim must be positive"):
        E16Config(dim=-1).validate()
    with pytest.raises(ValueError, match="expansion must be positive"):
        E16Config(dim=8, expansion=0).validate()
    with pytest.raises(ValueError, match="expansion must give at least one inner unit"):
        E16Config(dim=8, expansion=0.1).validate()
    with pytest.raises(ValueError, match="state_expansion must be a positive integer"):
        E16Config(dim=8, state_expansion=0).validate()
    with pytest.raises(ValueError, match="state_expansion must be a positive integer"):
        E16Config(dim=8, state_expansion=1.5).validate()
    with pytest.raises(ValueError, match="backend must be one of"):
        E16Config(dim=8, backend="heinsen").validate()


def test_lm_step_matches_forward():
    from rnnlab.models.lm import LM

    torch.manual_seed(0)
    lm = LM(ModelConfig(model="e16", dim=16, depth=2, layer={"expansion": 1.5, "state_expansion": 2})).eval()
    idx = torch.randint(0, 256, (2, 6))
    logits = lm(idx)
    state = lm.init_state(2)
    outs = []
    for t in range(idx.shape[1]):
        lt, state = lm.step(idx[:, t], state)
        outs.append(lt)
    torch.testing.assert_close(torch.stack(outs, 1), logits, rtol=1e-4, atol=1e-4)
