"""The layer contract (rnnlab.layers.base), checked for every registered model and its main
variants: shapes, causality, ``init_state``, stepping token by token equals the full forward (fp64
and bf16, layer and whole LM), and exact input gradients (gradcheck)."""

from __future__ import annotations

import typing

import pytest
import torch

from rnnlab import options
from rnnlab.models import LM, ModelConfig
from rnnlab.models.registry import MODELS, get_spec
from rnnlab.ops.dtypes import compute_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 8

# model -> layer options of the variants checked (the first is also run as a whole LM)
VARIANTS = {
    "e1": [{}, {"heads": 2, "conv": 3}, {"selective": "decay", "state_expansion": 2, "norm": "rms"},
           {"selective": "lowrank", "selective_rank": 3, "heads": 2, "conv": 2},
           {"init": "mamba2", "norm": "none", "expansion": 1.5},
           {"selective": "decay", "heads": 2, "state_expansion": 2, "init": "identity", "conv": 2}],
    "e16": [{"expansion": 1.5, "state_expansion": 2}],
    "mingru": [{"expansion": 1.5}, {}],
    "minlstm": [{"expansion": 1.5}, {}],
    "mamba2": [{"d_state": 4, "headdim": 4, "chunk_size": 4}, {"d_state": 4, "headdim": 4, "chunk_size": 3, "ngroups": 2}],
    "transformer": [{"head_dim": 4}],
    "e88": [{"n_state": 4}, {"n_state": 3, "expansion": 1.5, "heads": 3}],
    "gdn": [{"head_dim": 4, "conv_size": 3}, {"head_dim": 3, "heads": 2, "expand_v": 1.0, "conv_size": 1}],
}
CASES = [(m, kw) for m, variants in VARIANTS.items() for kw in variants]
_id = lambda case: f"{case[0]}-" + "-".join(f"{k}={v}" for k, v in case[1].items())  # noqa: E731


def make_layer(model: str, layer: dict, dtype=torch.float32, dim: int = DIM, seed: int = 0):
    """The mixer in eval mode with every parameter perturbed, so zero-initialised parts (biases,
    E1's U) take part."""
    spec = get_spec(model)
    torch.manual_seed(seed)
    mixer = spec.layer_cls(spec.config_cls(dim=dim, **layer)).to(dtype).eval()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return mixer


def run_steps(mixer, x):
    state = mixer.init_state(x.shape[0], x.device, x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y, state = mixer.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


def test_every_registered_model_is_covered():
    missing, stale = sorted(set(MODELS) - set(VARIANTS)), sorted(set(VARIANTS) - set(MODELS))
    assert not missing, f"add {missing} to VARIANTS here: model -> the --layer options of the variants to check"
    assert not stale, f"{stale} in VARIANTS are not registered (rnnlab/models/registry.py)"


def test_a_broken_registry_entry_names_itself():
    """A registry path that does not load (a typo in the module or class) is an error naming the
    model and the path, not a bare import error from deep inside importlib."""
    from rnnlab.models.registry import ModelSpec

    for layer_path, config_path, field, why in [
            ("rnnlab.layers.nope:X", "rnnlab.layers.e16:E16Config", "layer_path", "ModuleNotFoundError"),
            ("rnnlab.layers.e16:E16", "rnnlab.layers.e16:E16Konfig", "config_path", "AttributeError")]:
        spec = ModelSpec("probe", layer_path, config_path, "a broken entry")
        path = layer_path if field == "layer_path" else config_path
        with pytest.raises(ImportError, match=f"model 'probe': its registry entry's {field} '{path}' does not "
                                              f"load \\({why}: "):
            spec.layer_cls if field == "layer_path" else spec.config_cls  # noqa: B018
    with pytest.raises(ValueError, match="model 'probe': config_path must be 'module:Class', got 'rnnlab.layers.e16'"):
        ModelSpec("probe", "rnnlab.layers.e16:E16", "rnnlab.layers.e16", "no class")


def test_every_layer_option_is_declared_with_help():
    """``rnnlab layers`` documents the ``--layer`` options from their declarations: every field
    of a mixer's config but ``dim`` must be ``rnnlab.options.option(default, help=...)``."""
    for spec in MODELS.values():
        missing = spec.undeclared_options()
        assert not missing, f"{spec.config_path}: declare {missing} with rnnlab.options.option(default, help=...)"


def test_a_backend_option_names_every_backend_of_its_op():
    """``op_backend_option`` declares a layer's ``backend`` from its op's words, each said in the
    help; an alternative backend it is not told about is refused where the config is declared."""
    from rnnlab.layers.base import op_backend_option
    from rnnlab.ops.scan import BACKENDS

    opt = next(o for o in get_spec("mingru").layer_options() if o.key == "backend")
    assert opt.choices == BACKENDS
    assert all(f"{word} (" in opt.meta.help for word in BACKENDS)
    with pytest.raises(ValueError, match=r"describe the op's alternative backends \['heinsen'\]"):
        op_backend_option(BACKENDS)


def _bad_values(opt) -> list:
    """Values the declaration of a ``--layer`` option refuses: text for a number, an unknown
    choice, and a number just outside its bounds (either end)."""
    if opt.choices:
        return ["bogus"]
    base = opt.type if opt.type in (int, float) else typing.get_args(opt.type)[0]  # int | None -> int
    b = opt.meta.bounds
    past_top = [] if b.hi is None else [base(b.hi * 2 if base is float else b.hi + 1)]
    return ["two", base(b.lo if b.lo_open else b.lo - 1), *past_top]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_bad_layer_option_is_one_clear_error(model):
    """Each declared option of every mixer is checked against its declaration (type, choices,
    bounds; a number without bounds is a missing declaration), and a bad value is one error
    naming the model and the option, as ``--layer`` reports it."""
    ModelConfig(model=model, dim=64).validate()  # the defaults pass
    for opt in get_spec(model).layer_options():
        assert opt.choices or opt.meta.bounds, f"{model} layer option {opt.key}: declare its choices or bounds"
        for bad in _bad_values(opt):
            with pytest.raises(ValueError) as e:
                ModelConfig(model=model, dim=64, layer={opt.key: bad}).validate()
            what = options.describe(opt.type, opt.choices, opt.meta.bounds)
            shown = str(int(bad)) if isinstance(bad, float) and bad.is_integer() else repr(bad)  # 0.0 as typed: 0
            assert str(e.value) == f"{model} layer option {opt.key} must be {what}, got {shown}"


# the numeric --layer options that size nothing (a scale, a rate), so need no top
SCALES = {"init_scale", "spectral_radius", "rope_base"}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_largest_sizes_build_or_are_refused_in_one_line(model):
    """Every size and factor a ``--layer`` option takes has a top (``MAX_SIZE``, ``MAX_FACTOR``):
    at it (a factor at the widest dim) the model is counted (far past any GPU's, on the meta
    device) or refused by a rule between options, never a torch traceback (``expansion=1e300``
    overflowed a weight's size)."""
    from rnnlab.layers.base import MAX_FACTOR, MAX_SIZE
    from rnnlab.models.config import MAX_DIM
    from rnnlab.models.params import count_params

    numeric = [o for o in get_spec(model).layer_options() if o.meta.bounds is not None]
    tops = {o.key: o.meta.bounds.hi for o in numeric}
    assert set(tops.values()) <= {None, MAX_SIZE, MAX_FACTOR}
    unbounded = {o.key for o in numeric if o.meta.bounds.hi is None}
    assert unbounded <= SCALES, f"{model}: give {sorted(unbounded - SCALES)} a top (MAX_SIZE or MAX_FACTOR)"
    for key, top in tops.items():
        if top is None:
            continue
        cfg = ModelConfig(model=model, dim=MAX_DIM if top == MAX_FACTOR else 64, depth=1, layer={key: top})
        try:
            cfg.validate()
        except ValueError as e:
            assert str(e).startswith(f"{model} layer option "), e
            continue
        assert count_params(cfg) > 0


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.bfloat16, 0.05)], ids=["fp64", "bf16"])
def test_step_matches_forward(case, dtype, tol):
    mixer = make_layer(*case, dtype=dtype)
    x = torch.randn(2, 9, DIM, dtype=dtype)
    with torch.no_grad():
        y = mixer(x)
        ys, _ = run_steps(mixer, x)
    assert y.shape == x.shape and y.dtype == ys.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(ys, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_init_state(case):
    """A tuple of tensors on the device; a recurrent state keeps the batch first and stays in the
    compute dtype; stepping keeps the structure (recurrent: fixed shapes)."""
    mixer = make_layer(*case, dtype=torch.bfloat16)
    state = mixer.init_state(3, torch.device("cpu"), torch.bfloat16)
    assert isinstance(state, tuple) and all(isinstance(s, torch.Tensor) and s.shape[0] == 3 for s in state)
    _, stepped = run_steps(mixer, torch.randn(3, 2, DIM, dtype=torch.bfloat16))
    assert [s.dtype for s in stepped] == [s.dtype for s in state]
    if not getattr(mixer, "state_grows", False):  # else a key/value cache, longer by the tokens seen
        assert [s.shape for s in stepped] == [s.shape for s in state]
        assert state[-1 if case[0] == "mamba2" else 0].dtype == compute_dtype(torch.bfloat16)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_step_leaves_the_state_it_was_given(case):
    """``step`` returns a new state and leaves the one passed in as it was: the Hugging Face wrapper
    keeps a left-padded row's old state at its pads (``torch.where(fed, new, old)``), which an update
    in place would already have overwritten."""
    mixer = make_layer(*case, dtype=torch.float32)
    state = mixer.init_state(2, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 3, DIM)
    with torch.no_grad():
        for t in range(3):
            before = [s.clone() for s in state]
            _, new = mixer.step(x[:, t], state)
            assert all(torch.equal(s, b) for s, b in zip(state, before, strict=True))
            state = new


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_causal(case):
    """Output t depends on inputs up to t only; a zero-length input gives a zero-length output (the
    causal convolutions included: torch's convolution refuses an empty input)."""
    mixer = make_layer(*case)
    x = torch.randn(2, 9, DIM)
    x2 = x.clone()
    x2[:, 5:] += torch.randn(2, 4, DIM)
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
        assert mixer(x[:, :0]).shape == (2, 0, DIM)
    torch.testing.assert_close(y2[:, :5], y[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(y2[:, 5:], y[:, 5:])


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_gradcheck(case):
    mixer = make_layer(*case, dtype=torch.float64, dim=4)
    x = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mixer, (x,))


@pytest.mark.parametrize("model", sorted(VARIANTS))
def test_lm_step_matches_forward(model):
    """The whole LM stepped byte by byte equals its forward (fp64), with every parameter perturbed
    off its init: the LayerNorms start as identities, all alike, so a step that ran a block's MLP
    through the mixer's norm (or skipped a norm's weight) would match a fresh model's forward."""
    torch.manual_seed(0)
    lm = LM(ModelConfig(model=model, dim=16, depth=2, layer=VARIANTS[model][0])).double().eval()
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    idx = torch.randint(0, 256, (2, 6))
    logits = lm(idx)
    state = lm.init_state(2)
    outs = []
    for t in range(idx.shape[1]):
        lt, state = lm.step(idx[:, t], state)
        outs.append(lt)
    torch.testing.assert_close(torch.stack(outs, 1), logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_parameter_gets_a_gradient(case):
    """Every parameter of every variant receives a nonzero gradient in training mode: one cut off
    from the loss (a stray ``detach``, a decay rate the forward never reads) would never train,
    and nothing else would say so."""
    model, layer = case
    mixer = make_layer(model, layer, torch.float64).train()
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    (mixer(x) * torch.randn(2, 6, DIM, dtype=torch.float64)).sum().backward()
    dead = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"{model} {layer}: no gradient for {dead}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_the_output_projection_writes_into_the_residual_stream(case):
    """The class's ``output_projection`` names the linear map that produces the layer's output (what
    ``rescale_prenorm_residual`` scales): the layer's output is that map's, exactly. None only where
    the layer has none (minGRU and minLSTM at expansion 1)."""
    model, layer = case
    mixer = make_layer(model, layer, torch.float64)
    out = getattr(mixer, type(mixer).output_projection)
    if out is None:
        assert model in ("mingru", "minlstm") and layer.get("expansion", 1) == 1
        return
    assert isinstance(out, torch.nn.Linear) and out.out_features == DIM
    seen = []
    out.register_forward_hook(lambda module, args, y: seen.append(y))
    y = mixer(torch.randn(2, 5, DIM, dtype=torch.float64))
    assert len(seen) == 1 and torch.equal(y, seen[0])
