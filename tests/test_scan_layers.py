"""linear_scan (naive loop, log-space parallel form, argument checks) and the
minGRU/minLSTM layers against their formulas. The op and layer contracts: tests/test_ops.py,
tests/test_layer_contract.py."""

from __future__ import annotations

import pytest
import torch

from rnnlab.layers.mingru import MinGRU, MinGRUConfig
from rnnlab.layers.minlstm import MinLSTM, MinLSTMConfig
from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_params
from rnnlab.ops.scan import linear_scan
from rnnlab.ops.scan import naive as scan_naive
from rnnlab.ops.scan.naive import g, heinsen_scan

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def _inputs(B=2, T=5, H=3, dtype=torch.float64, seed=0, positive_b=False):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(B, T, H, generator=gen, dtype=dtype) * 0.9 + 0.05
    b = torch.randn(B, T, H, generator=gen, dtype=dtype)
    if positive_b:
        b = b.abs() + 0.1
    h0 = torch.randn(B, H, generator=gen, dtype=dtype)
    return a, b, h0


def _explicit(a, b, h0):
    h = h0.clone()
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


# ---------------------------------------------------------------- linear_scan


def test_naive_matches_definition():
    a, b, h0 = _inputs()
    h, h_last = scan_naive.linear_scan(a, b, h0)
    torch.testing.assert_close(h, _explicit(a, b, h0))
    assert torch.equal(h_last, h[:, -1])
    torch.testing.assert_close(scan_naive.linear_scan(a, b)[0], _explicit(a, b, torch.zeros_like(h0)))


@pytest.mark.parametrize("with_h0", [False, True])
def test_parallel_matches_sequential(with_h0):
    a, b, h0 = _inputs(B=3, T=37, H=4, dtype=torch.float32, seed=1)
    h0 = h0 if with_h0 else None
    ref, ref_last = scan_naive.linear_scan(a, b, h0)
    h, h_last = heinsen_scan(a, b, h0)
    torch.testing.assert_close(h, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h_last, ref_last, rtol=1e-4, atol=1e-5)


def test_parallel_log_long_decay_and_positive_b():
    # strong decay over a long sequence: cumsum(log a) reaches about -T*3
    a, b, _ = _inputs(B=2, T=300, H=4, dtype=torch.float32, seed=2, positive_b=True)
    a = a * 0.1
    torch.testing.assert_close(
        heinsen_scan(a, b)[0], scan_naive.linear_scan(a, b)[0], rtol=1e-4, atol=1e-5
    )


def test_parallel_log_near_zero_gates():
    """Gates a_t down to 1e-7 (a minGRU/minLSTM forget gate at large logits): the log scan clamps
    only at the smallest normal float, so it still equals the sequential loop."""
    a, b, h0 = _inputs(B=2, T=12, H=4, dtype=torch.float64, seed=4)
    a = a.clone()
    a[:, 3::4] = 1e-7
    torch.testing.assert_close(heinsen_scan(a, b, h0)[0], scan_naive.linear_scan(a, b, h0)[0],
                               rtol=1e-7, atol=1e-9)



def test_parallel_log_zero_gates_reset_the_state():
    """Gates a_t exactly 0 (minGRU's ``1 - sigmoid(k)`` underflows to 0 in fp32 for k above ~89): the
    state restarts at b_t, as in the loop. log 0 = -inf would make the log scan NaN, so it clamps a
    at the smallest normal float; this checks that clamp."""
    a, b, h0 = _inputs(B=2, T=12, H=4, dtype=torch.float64, seed=6)
    a = a.clone()
    a[:, 2::5] = 0.0
    torch.testing.assert_close(heinsen_scan(a, b, h0)[0], scan_naive.linear_scan(a, b, h0)[0],
                               rtol=1e-7, atol=1e-9)
    p = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(7))
    p[:, 3, 4:] = 100.0  # the gate logits k of step 3: a = 0 exactly in fp32
    assert (torch.sigmoid(-p[:, 3, 4:]) == 0).all()
    torch.testing.assert_close(scan_naive.heinsen_mingru_scan(p)[0], scan_naive.mingru_scan(p)[0],
                               rtol=1e-5, atol=1e-6)

def test_parallel_log_zero_inputs_add_exactly_nothing():
    """With b = 0 the state is h0's pure decay ``h0 * prod a``: the zero (and missing-sign) parts of
    b must contribute exactly 0, not exp(floor). Checked down to ~1e-50, where a floor of e.g.
    -100 (exp ~ 4e-44) would show."""
    a = torch.full((2, 40, 3), 0.05, dtype=torch.float64)
    h0 = torch.tensor([[1.0, -2.0, 0.5], [-0.3, 3.0, -1.0]], dtype=torch.float64)
    h, h_last = heinsen_scan(a, torch.zeros_like(a), h0)
    want = h0[:, None] * torch.cumprod(a, dim=1)
    torch.testing.assert_close(h, want, rtol=1e-10, atol=0)
    torch.testing.assert_close(h_last, want[:, -1], rtol=1e-10, atol=0)


def test_parallel_gradients_match_sequential():
    a, b, h0 = _inputs(T=6, seed=4)
    grads = []
    for fn in (scan_naive.linear_scan, heinsen_scan):
        xs = [t.clone().requires_grad_() for t in (a, b, h0)]
        fn(*xs)[0].pow(2).sum().backward()
        grads.append([x.grad for x in xs])
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2)


def test_parallel_gradients_beside_zero_inputs_are_finite_and_the_sequential_ones():
    """Inputs b exactly 0 (a padded or masked input): the log scan maps their log to a finite floor,
    so its gradients stay finite (log 0 in the graph would make them NaN) and those of a, h0 and
    every nonzero b are the loop's. (Those of the zero b themselves are not: the floor is a
    constant, so they are 0 where the loop's are not.)"""
    a, b, h0 = _inputs(T=6, seed=5)
    b = b.clone()
    b[:, 1::2] = 0.0
    grads = []
    for fn in (scan_naive.linear_scan, heinsen_scan):
        xs = [t.clone().requires_grad_() for t in (a, b, h0)]
        fn(*xs)[0].pow(2).sum().backward()
        grads.append([x.grad for x in xs])
    (da, db, dh0), (pa, pb, ph0) = grads
    assert all(torch.isfinite(g).all() for g in (pa, pb, ph0))
    torch.testing.assert_close(pa, da)
    torch.testing.assert_close(ph0, dh0)
    torch.testing.assert_close(pb[b != 0], db[b != 0])

def test_gradcheck_parallel_linear_scan():
    a, b, h0 = (t.requires_grad_() for t in _inputs())
    assert torch.autograd.gradcheck(heinsen_scan, (a, b, h0))


def test_naive_upcasts_and_returns_input_dtype():
    a, b, h0 = _inputs(dtype=torch.bfloat16)
    h, h_last = scan_naive.linear_scan(a, b, h0)
    assert h.dtype == torch.bfloat16 and h_last.dtype == torch.float32
    ref = _explicit(a.float(), b.float(), h0.float())
    torch.testing.assert_close(h.float(), ref.bfloat16().float())


def test_argument_checks():
    a, b, h0 = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="a must have b's shape"):
        linear_scan(a[:, :-1], b)
    with pytest.raises(ValueError, match="h0 must be"):
        linear_scan(a, b, h0[:1])


# ---------------------------------------------------------------- layers

LAYERS = [(MinGRU, MinGRUConfig), (MinLSTM, MinLSTMConfig)]


def _layer(cls, cfg_cls, expansion=1.0, dim=8, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(cfg_cls(dim=dim, expansion=expansion, **kw)).to(dtype)


@pytest.mark.parametrize("cls,cfg_cls", LAYERS)
def test_projections_are_xavier_uniform(cls, cfg_cls, assert_xavier_uniform):
    layer = _layer(cls, cfg_cls, 1.5, dim=32)
    for name, p in layer.named_parameters():
        if p.dim() == 2:
            assert_xavier_uniform(p, name)


def test_g_activation():
    """minGRU's g: sigmoid below 0, x + 0.5 from 0 on, and so slope 1 at exactly 0 (the kernels' convention,
    a saturated gate's input of 0 is common in bf16), 1/4 just below."""
    x = torch.tensor([-2.0, -1e-9, -0.0, 0.0, 1.5], dtype=torch.float64, requires_grad=True)
    s = torch.sigmoid(x.detach()[:2])
    torch.testing.assert_close(g(x), torch.tensor([s[0], s[1], 0.5, 0.5, 2.0], dtype=torch.float64))
    (grad,) = torch.autograd.grad(g(x).sum(), x)
    torch.testing.assert_close(grad, torch.tensor([s[0] * (1 - s[0]), 0.25, 1, 1, 1], dtype=torch.float64))


@pytest.mark.parametrize("cls,cfg_cls", LAYERS)
@pytest.mark.parametrize("expansion", [1.0, 1.5, 0.5])
def test_layer_shapes_and_out_proj(cls, cfg_cls, expansion):
    """``out_proj`` di -> dim exists exactly when expansion != 1 (module docstring), a narrower
    inner width (0.5) included, so the output is always ``dim`` wide."""
    layer = _layer(cls, cfg_cls, expansion)
    y = layer(torch.randn(2, 7, 8))
    assert y.shape == (2, 7, 8)
    names = {n for n, _ in layer.named_parameters()}
    assert ("out_proj.weight" in names) == (expansion != 1.0)
    assert "in_proj.weight" in names


@pytest.mark.parametrize("cls,cfg_cls", LAYERS)
def test_layer_heinsen_backend_matches_naive(cls, cfg_cls):
    x = torch.randn(2, 33, 8)
    y_naive = _layer(cls, cfg_cls, 1.5, backend="naive")(x)
    y_log = _layer(cls, cfg_cls, 1.5, backend="heinsen")(x)
    torch.testing.assert_close(y_log, y_naive, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("expansion", [1.0, 1.5])
def test_mingru_is_its_formula(expansion):
    """The module docstring written out with the layer's weights (the seed's minGRU)."""
    layer = _layer(MinGRU, MinGRUConfig, expansion)
    x = torch.randn(2, 6, 8)
    h_tilde, k = (x @ layer.in_proj.weight.T).chunk(2, dim=-1)
    z = torch.sigmoid(k)
    h = torch.zeros(2, h_tilde.shape[-1])
    hs = []
    for t in range(6):
        h = (1 - z[:, t]) * h + z[:, t] * g(h_tilde[:, t])
        hs.append(h)
    want = torch.stack(hs, 1)
    want = want if layer.out_proj is None else want @ layer.out_proj.weight.T
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("expansion", [1.0, 1.5])
def test_minlstm_is_its_formula(expansion):
    """The module docstring written out (normalised gates in linear space, the seed's minLSTM)."""
    layer = _layer(MinLSTM, MinLSTMConfig, expansion)
    x = torch.randn(2, 6, 8) * 3  # gates far from 1/2 too
    h_tilde, f, i = (x @ layer.in_proj.weight.T).chunk(3, dim=-1)
    sf, si = torch.sigmoid(f), torch.sigmoid(i)
    h = torch.zeros(2, h_tilde.shape[-1])
    hs = []
    for t in range(6):
        h = sf[:, t] / (sf[:, t] + si[:, t]) * h + si[:, t] / (sf[:, t] + si[:, t]) * g(h_tilde[:, t])
        hs.append(h)
    want = torch.stack(hs, 1)
    want = want if layer.out_proj is None else want @ layer.out_proj.weight.T
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "model,dim,depth,expected",
    [
        ("mingru", 2752, 24, 364_370_304),
        ("mingru", 3520, 16, 397_513_600),
        ("minlstm", 2304, 24, 382_910_976),
        ("minlstm", 2880, 16, 398_966_400),
    ],
)
def test_seed_param_counts(model, dim, depth, expected):
    assert count_params(ModelConfig(model=model, dim=dim, depth=depth)) == expected


@pytest.mark.parametrize("model", ["mingru", "minlstm"])
@pytest.mark.parametrize("e", [1.0, 2.0])
def test_param_formula(model, e):
    D, L = 64, 3
    di = int(D * e)
    k = 2 if model == "mingru" else 3
    per_layer = k * D * di + (di * D if e != 1 else 0) + 2 * D
    expected = L * per_layer + 256 * D + 2 * D
    assert count_params(ModelConfig(model=model, dim=D, depth=L, layer={"expansion": e})) == expected


@pytest.mark.parametrize("cfg_cls", [MinGRUConfig, MinLSTMConfig])
def test_config_validation(cfg_cls):
    cfg_cls(dim=8).validate()
    for kw, msg in [(dict(dim=0), "dim must be a positive integer, got 0"),
                    (dict(expansion=-1.0), "expansion must be a positive finite number (at most 64), got -1"),
                    (dict(expansion=0.01), "expansion must give at least one inner unit (int(dim*expansion) >= 1), "
                                           "got 0.01 (dim 8)"),
                    (dict(backend="fast"), "backend must be one of auto, naive, triton, heinsen, got 'fast'")]:
        with pytest.raises(ValueError) as e:
            cfg_cls(**{"dim": 8, **kw}).validate()
        assert str(e.value) == msg
    with pytest.raises(ValueError, match="unknown mingru layer option"):
        ModelConfig(model="mingru", dim=8, depth=1, layer={"state_expansion": 2}).validate()


