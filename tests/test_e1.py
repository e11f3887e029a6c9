"""E1 layer: seed parity (defaults), the selective variants against their formulas, parameter
counts, init and spectral-norm behaviour, config validation. Shapes, causality, step == forward and
gradcheck of E1's variants: tests/test_layer_contract.py."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from rnnlab.layers.e1 import E1, E1Config
from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def make(dtype=torch.float32, randomize=True, seed=0, **kw):
    """A small E1 in eval mode; ``randomize`` perturbs every parameter so zero-initialised parts
    (U, b, b_a offsets) are exercised too."""
    torch.manual_seed(seed)
    layer = E1(E1Config(dim=kw.pop("dim", 8), **kw)).to(dtype).eval()
    if randomize:
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return layer


# ------------------------------------------------------------------ seed parity / defaults
def seed_e1(layer, x):
    """The seed's E1 forward written out (spec §1.2), using the layer's weights and ``u``."""
    xr, z = F.linear(x, layer.in_proj.weight).chunk(2, dim=-1)
    xr = F.silu(xr)
    W, u = layer.W_h, layer.spectral_u.clone()
    with torch.no_grad():
        for _ in range(3):
            v = W.t() @ u
            v = v / (v.norm(dim=-1, keepdim=True) + 1e-8)
            u = W @ v
            u = u / (u.norm(dim=-1, keepdim=True) + 1e-8)
    sigma = (u @ W @ v).abs()
    Wh = W * 0.99 / (sigma + 1e-8)
    pre = F.linear(xr, layer.W_x, layer.b)
    h = torch.zeros(x.shape[0], W.shape[0])
    hs = []
    for t in range(x.shape[1]):
        h = torch.tanh(pre[:, t] + h @ Wh.T)
        hs.append(h)
    return F.linear(torch.stack(hs, 1) * F.silu(z), layer.out_proj.weight)


def test_defaults_are_the_seed_e1():
    a = make(randomize=False, seed=3)
    b = make(randomize=False, seed=3, expansion=1.0, conv=0, heads=1, selective="none",
             state_expansion=1, init="xavier", norm="spectral", spectral_radius=0.99, power_iters=3)
    names = [n for n, _ in a.named_parameters()]
    assert sorted(names) == sorted(["in_proj.weight", "W_x", "W_h", "b", "out_proj.weight"])
    assert a.W_h.shape == (8, 8) and a.b.abs().sum() == 0
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    assert torch.equal(a.spectral_u, b.spectral_u)
    x = torch.randn(2, 6, 8)
    ya = a(x)
    assert torch.equal(ya, b(x))
    assert torch.equal(ya, seed_e1(a, x))  # bitwise the plain seed path


@pytest.mark.parametrize("selective", ["decay", "lowrank"])
@pytest.mark.parametrize("heads", [1, 2])
def test_selective_variants_match_their_formulas(selective, heads):
    """The selective forms written out with the layer's weights (module docstring), no norm."""
    layer = make(selective=selective, heads=heads, norm="none", selective_rank=3)
    x = torch.randn(2, 6, 8)
    xr, z = F.linear(x, layer.in_proj.weight).chunk(2, dim=-1)
    xr = F.silu(xr)
    W = layer.W_h if heads == 1 else torch.block_diag(*layer.W_h)
    h = torch.zeros(2, 8)
    hs = []
    for t in range(6):
        rec = h @ W.T
        if selective == "decay":
            rec = torch.sigmoid(xr[:, t] @ layer.W_a.T + layer.b_a) * rec
        else:
            rec = rec + ((h @ layer.V) * (xr[:, t] @ layer.W_s.T)) @ layer.U.T
        h = torch.tanh(xr[:, t] @ layer.W_x.T + layer.b + rec)
        hs.append(h)
    want = F.linear(torch.stack(hs, 1) * F.silu(z), layer.out_proj.weight)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_conv_rms_norm_and_state_expansion_match_their_formulas():
    """conv, norm="rms" and state_expansion written out (module docstring): the causal depthwise
    conv before the silu, the raw W_h in the recurrence, RMSNorm (eps 1e-5) over the K-wide state,
    then W_r, before the gate."""
    layer = make(conv=3, norm="rms", state_expansion=2, heads=2)
    x = torch.randn(2, 6, 8)
    xr, z = F.linear(x, layer.in_proj.weight).chunk(2, dim=-1)
    w = layer.conv1d.weight[:, 0]  # [di, 3]: tap j multiplies x_{t-2+j}
    padded = F.pad(xr, (0, 0, 2, 0))
    xr = F.silu(sum(padded[:, j:j + 6] * w[:, j] for j in range(3)) + layer.conv1d.bias)
    W = torch.block_diag(*layer.W_h)  # [K, K], K = 16
    h = torch.zeros(2, 16)
    hs = []
    for t in range(6):
        h = torch.tanh(xr[:, t] @ layer.W_x.T + layer.b + h @ W.T)
        hs.append(h)
    h = torch.stack(hs, 1)
    normed = h / torch.sqrt(h.square().mean(-1, keepdim=True) + 1e-5) * layer.h_norm.weight
    want = F.linear((normed @ layer.W_r.T) * F.silu(z), layer.out_proj.weight)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_rms_norm_under_bf16_mixed_runs_fused_with_the_same_values():
    """A bf16 state with fp32 norm weights (bf16-mixed): torch's rms_norm warns and falls back to its
    unfused path when the dtypes differ; the readout normalises in the weight's dtype instead, and
    returns the state's dtype with the values the unfused path gives (bit for bit)."""
    layer = make(norm="rms", heads=2, state_expansion=2)
    h = torch.randn(2, 5, layer.h_norm.weight.numel()).bfloat16()
    z = torch.randn(2, 5, layer.cfg.d_inner)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer.readout(h, z)
    hf = h.float()
    unfused = (hf * torch.rsqrt(hf.square().mean(-1, keepdim=True) + 1e-5) * layer.h_norm.weight).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = layer.out_proj(F.linear(unfused, layer.W_r) * F.silu(z))
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kw", [dict(heads=2), dict(heads=2, norm="none"), dict(heads=4, state_expansion=2, norm="rms")])
def test_heads_forward_with_the_gate_beside_the_scan(kw):
    """Plain heads without a conv: ``forward`` splits in_proj and gets the gate's projection from
    ``elman_scan_beside_linear`` (a GPU runs it beside the scan); the written-out formula, and the
    gradients of the unsplit path (``inputs`` -> ``recurrence().scan`` -> ``readout``). The other
    variants keep the unsplit path."""
    layer = make(**kw)
    assert layer._gate_beside_scan
    assert not any(make(**{**kw, **other})._gate_beside_scan
                   for other in (dict(conv=2), dict(selective="decay"), dict(heads=1)))
    x = torch.randn(2, 6, 8, requires_grad=True)
    xr, z = F.linear(x, layer.in_proj.weight).chunk(2, dim=-1)
    W = torch.block_diag(*layer.recurrent_weight())
    pre = F.linear(F.silu(xr), layer.W_x, layer.b)
    h = torch.zeros(2, W.shape[0])
    hs = []
    for t in range(6):
        h = torch.tanh(pre[:, t] + h @ W.T)
        hs.append(h)
    want = layer.readout(torch.stack(hs, 1), z)
    got = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    xr, z = layer.inputs(x)
    unsplit = layer.readout(layer.recurrence(xr).scan()[0], z)
    g = torch.randn_like(got)
    leaves = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(unsplit, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_param_names_with_features():
    names = lambda **kw: {n for n, _ in make(randomize=False, **kw).named_parameters()}
    base = {"in_proj.weight", "W_x", "W_h", "b", "out_proj.weight"}
    assert names(conv=4) == base | {"conv1d.weight", "conv1d.bias"}
    assert names(selective="decay") == base | {"W_a", "b_a"}
    assert names(selective="lowrank") == base | {"W_s", "U", "V"}
    assert names(state_expansion=2) == base | {"W_r"}
    assert names(norm="rms") == base | {"h_norm.weight"}
    layer = make(randomize=False, dim=8, expansion=1.5, heads=3, state_expansion=2)
    assert layer.W_x.shape == (24, 12) and layer.W_h.shape == (3, 8, 8) and layer.W_r.shape == (12, 24)


@pytest.mark.parametrize("model_dim,depth,layer,expected", [
    (1760, 26, {}, 403_279_360),
    (3584, 6, {}, 386_340_864),
    (1024, 19, {"expansion": 2.5}, 398_810_624),
])
def test_param_counts(model_dim, depth, layer, expected):
    assert count_params(ModelConfig(model="e1", dim=model_dim, depth=depth, layer=layer)) == expected


def test_all_parameters_get_gradients():
    layer = make(conv=2, heads=2, selective="lowrank", selective_rank=2, state_expansion=2, norm="rms").train()
    layer(torch.randn(2, 5, 8)).square().sum().backward()
    for n, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_bf16_runs_close_to_fp32():
    layer = make(selective="decay")
    x = torch.randn(2, 6, 8)
    y = layer(x)
    yb = layer.to(torch.bfloat16)(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y, rtol=0.05, atol=0.05)


# ------------------------------------------------------------ spectral norm and init
@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("init", ["mamba2", "xavier"])
def test_spectral_norm_radius_and_u_updates(heads, init):
    """After converging, one power iteration from the stored u (what a training step runs) gives
    every block spectral norm ``spectral_radius``. The default (xavier) init, perturbed, has
    distinct singular values, so a wrong power iteration or a wrong vector stored shows; the
    orthogonal mamba2 init (every singular value 0.999) would hide both."""
    kw = dict(dim=16, heads=heads, spectral_radius=0.9, **({"init": "mamba2"} if init == "mamba2" else {}))
    layer = make(randomize=init != "mamba2", **kw)
    u0 = layer.spectral_u.clone()
    layer(torch.randn(1, 2, 16))  # eval: u unchanged
    assert torch.equal(layer.spectral_u, u0)
    layer.train()(torch.randn(1, 2, 16))  # training: u advanced
    assert not torch.equal(layer.spectral_u, u0)
    layer.converge_spectral(500)
    W = layer.recurrent_weight(update=False)
    blocks = [W] if heads == 1 else list(W)
    for blk in blocks:
        torch.testing.assert_close(torch.linalg.matrix_norm(blk, ord=2), torch.tensor(0.9), rtol=1e-4, atol=1e-4)
    # u is saved, so a reloaded model computes the same Wh_eff (exact resume)
    fresh = make(randomize=init != "mamba2", **kw)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 16)
    assert torch.equal(fresh(x), layer(x))


def test_one_power_iteration_written_out():
    """``recurrent_weight(update=True, iters=1)``: exactly one iteration from the stored u (module
    docstring: v = normalize(W^T u), u = normalize(W v), normalize adding 1e-8), u stored, and
    Wh_eff = W * r / (|u^T W v| + 1e-8)."""
    layer = make(dim=8, spectral_radius=0.9).double()
    W, u = layer.W_h.detach(), layer.spectral_u.clone()
    v = W.T @ u
    v = v / (v.norm() + 1e-8)
    u = W @ v
    u = u / (u.norm() + 1e-8)
    got = layer.recurrent_weight(update=True, iters=1)
    torch.testing.assert_close(layer.spectral_u, u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, W * 0.9 / ((u @ W @ v).abs() + 1e-8), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("iters", [2, 3])
def test_converge_spectral_runs_exactly_iters_power_iterations(iters):
    """``converge_spectral(k)`` (``recurrent_weight(update=True, iters=k)``) runs exactly k power
    iterations from the stored u and keeps it, for k > 1 too; the perturbed W_h has distinct
    singular values, so one iteration fewer or more gives another u."""
    layer = make(dim=8, spectral_radius=0.9).double()
    W, u = layer.W_h.detach(), layer.spectral_u.clone()
    for _ in range(iters):
        v = W.T @ u
        v = v / (v.norm() + 1e-8)
        u = W @ v
        u = u / (u.norm() + 1e-8)
    layer.converge_spectral(iters)
    torch.testing.assert_close(layer.spectral_u, u, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("heads", [1, 2])
def test_a_triton_backend_layer_steps_and_weighs_on_the_cpu(heads):
    """A layer configured with ``backend="triton"`` (trained on a GPU) still decodes on the CPU:
    ``step`` runs the reference scan, and its spectral norm the reference too (the op's
    ``triton`` backend would refuse CPU tensors), equal to the ``naive`` layer's."""
    layer, ref = make(dim=8, heads=heads, backend="triton"), make(dim=8, heads=heads, backend="naive")
    assert torch.equal(layer.recurrent_weight(update=False), ref.recurrent_weight(update=False))
    x, state = torch.randn(2, 8), layer.init_state(2, torch.device("cpu"), torch.float32)
    (y, _), (want, _) = layer.step(x, state), ref.step(x, state)
    assert torch.equal(y, want)


def test_power_iters_sets_a_training_forwards_iterations():
    """``power_iters=2``: a training forward runs two power iterations from the stored u (module
    docstring), stores that u and scans with Wh_eff = W * r / (|u^T W v| + 1e-8) from it; the
    perturbed W_h has distinct singular values, so the default 3 would give another u and Wh_eff."""
    layer = make(dim=8, power_iters=2).double().train()
    W, u = layer.W_h.detach().clone(), layer.spectral_u.clone()
    for _ in range(2):
        v = W.T @ u
        v = v / (v.norm() + 1e-8)
        u = W @ v
        u = u / (u.norm() + 1e-8)
    Wh = W * 0.99 / ((u @ W @ v).abs() + 1e-8)
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    xr, z = F.linear(x, layer.in_proj.weight.detach()).chunk(2, dim=-1)
    pre = F.linear(F.silu(xr), layer.W_x.detach(), layer.b.detach())
    h, hs = torch.zeros(2, 8, dtype=torch.float64), []
    for t in range(4):
        h = torch.tanh(pre[:, t] + h @ Wh.T)
        hs.append(h)
    want = F.linear(torch.stack(hs, 1) * F.silu(z), layer.out_proj.weight.detach())
    got = layer(x)
    torch.testing.assert_close(layer.spectral_u, u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)


def test_step_never_stores_u_even_in_training_mode():
    """``step`` runs the power iterations from the current u and discards their result (module
    docstring), in training mode too: u is left as it was (a training forward would advance it)
    and the step's output is the eval step's."""
    layer = make(dim=8).train()
    u0 = layer.spectral_u.clone()
    x_t = torch.randn(2, 8)
    y_train, _ = layer.step(x_t, layer.init_state(2, x_t.device, x_t.dtype))
    assert torch.equal(layer.spectral_u, u0)
    y_eval, _ = layer.eval().step(x_t, layer.init_state(2, x_t.device, x_t.dtype))
    assert torch.equal(y_train, y_eval)


@pytest.mark.parametrize("heads", [1, 4])
def test_spectral_norm_gradient_flows_through_sigma(heads):
    """The gradient of Wh_eff = r * W / sigma(W) reaches W_h through sigma too (sigma = u W v
    with the converged vectors held fixed, which is the exact spectral norm's gradient): it
    equals autograd through ``torch.linalg.matrix_norm(ord=2)`` per block."""
    layer = make(dim=16, heads=heads, spectral_radius=0.9).double()
    layer.converge_spectral(500)
    G = torch.randn_like(layer.W_h)
    (layer.recurrent_weight(update=False) * G).sum().backward()
    W = layer.W_h.detach().clone().requires_grad_()
    blocks = [W] if heads == 1 else list(W)
    want = torch.stack([0.9 * blk / torch.linalg.matrix_norm(blk, ord=2) for blk in blocks])
    (want.reshape(G.shape) * G).sum().backward()
    torch.testing.assert_close(layer.W_h.grad, W.grad, rtol=1e-6, atol=1e-8)


def test_inits():
    m = make(randomize=False, dim=64, heads=2, init="mamba2")
    for blk in m.W_h:
        torch.testing.assert_close(blk @ blk.T, torch.eye(32) * 0.999**2, rtol=0, atol=1e-5)
    for w in (m.W_x, m.in_proj.weight, m.out_proj.weight):  # N(0, 0.02): over 4096+ draws the std is within ~2e-4
        assert abs(w.std().item() - 0.02) < 0.0006
    i = make(randomize=False, dim=8, init="identity", init_scale=0.7)
    assert torch.equal(i.W_h.detach(), torch.eye(8) * 0.7)
    x = make(randomize=False, dim=64, heads=4)  # xavier gain 0.1 per 16x16 block: bound 0.1*sqrt(6/32)
    bound = 0.1 * (6 / 32) ** 0.5
    assert 0.97 * bound < x.W_h.abs().max() <= bound  # 1024 uniform draws: the largest is near the bound
    d = make(randomize=False, selective="decay")
    assert torch.equal(d.b_a.detach(), torch.full((8,), 3.0))
    lr = make(randomize=False, selective="lowrank")
    assert lr.U.abs().sum() == 0  # starts as plain E1


@pytest.mark.parametrize("heads", [1, 4])
def test_spectral_u_starts_as_a_unit_vector_per_head(heads):
    """The power-iteration vector ``spectral_u`` starts randn-normalised (module docstring), one unit
    vector per head: W_eff hardly depends on its length (each iteration normalises), so only this
    sees an unnormalised start, which a checkpoint of a fresh model would store."""
    u = make(randomize=False, dim=16, heads=heads).spectral_u
    assert u.shape == ((16,) if heads == 1 else (heads, 16 // heads))
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(u.shape[:-1]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", ["xavier", "mamba2", "identity"])
def test_every_projection_follows_the_init_rule(init, assert_xavier_uniform):
    """``init`` draws W_in, W_out, W_x and the extra matrices (W_a, W_s, V, W_r) by one rule
    (module docstring): xavier_uniform for "xavier" and "identity", N(0, 0.02) for "mamba2"."""
    layers = [make(randomize=False, dim=64, init=init, selective=s, state_expansion=2) for s in ("decay", "lowrank")]
    mats = {f"{s}:{n}": p for layer, s in zip(layers, ("decay", "lowrank")) for n, p in layer.named_parameters()
            if p.dim() == 2 and n != "W_h" and n != "U"}
    assert {n.split(":")[1] for n in mats} == {"in_proj.weight", "out_proj.weight", "W_x", "W_a", "W_s", "V", "W_r"}
    for name, w in mats.items():
        if init == "mamba2":  # >= 512 draws: the std is within ~6e-4 of 0.02; xavier's would be >= 0.07
            assert abs(w.std().item() - 0.02) < 0.003, name
        else:
            assert_xavier_uniform(w, name)


# ------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw,msg", [
    (dict(expansion=-1), "expansion must be a positive finite number (at most 64), got -1"),
    (dict(expansion=float("nan")), "expansion must be a positive finite number (at most 64), got nan"),
    (dict(dim=0), "dim must be a positive integer, got 0"),
    (dict(conv=-2), "conv must be an integer >= 0 (at most 65,536), got -2"),
    (dict(heads=3), "heads must divide the state width int(dim*expansion)*state_expansion = 8, got 3"),
    (dict(heads=0), "heads must be a positive integer (at most 65,536), got 0"),
    (dict(selective="gate"), "selective must be one of none, decay, lowrank, got 'gate'"),
    (dict(selective_rank=0), "selective_rank must be a positive integer (at most 65,536), got 0"),
    (dict(state_expansion=1.5), "state_expansion must be a positive integer (at most 64), got 1.5"),
    (dict(init="kaiming"), "init must be one of xavier, mamba2, identity, got 'kaiming'"),
    (dict(init_scale=0), "init_scale must be a positive finite number, got 0"),
    (dict(norm="layer"), "norm must be one of spectral, none, rms, got 'layer'"),
    (dict(spectral_radius=0.0), "spectral_radius must be a positive finite number, got 0"),
    (dict(power_iters=0), "power_iters must be a positive integer (at most 65,536), got 0"),
    (dict(power_iters=True), "power_iters must be a positive integer (at most 65,536), got True"),
    (dict(backend="cuda"), "backend must be one of auto, naive, triton, got 'cuda'"),
    (dict(expansion=0.01), "expansion must give at least one inner unit (int(dim*expansion) >= 1), got 0.01 (dim 8)"),
])
def test_validation_messages(kw, msg):
    with pytest.raises(ValueError) as e:
        E1(E1Config(**{"dim": 8, **kw}))
    assert str(e.value) == msg


def test_model_config_rejects_unknown_option():
    with pytest.raises(ValueError, match="unknown e1 layer option"):
        ModelConfig(model="e1", layer={"head": 2}).validate()
