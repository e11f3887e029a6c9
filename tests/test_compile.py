"""torch.compile of the whole LM (CPU, backend "aot_eager" to keep it fast): the same loss,
gradients and buffers as eager, graph breaks only at the opaque recurrences, and the head and loss
still inside a compiled graph; rnnlab's Inductor heuristic (rnnlab.train.inductor) and its options."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from rnnlab.models import LM, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# aot_eager runs the same aten ops as eager, so the match is exact in practice; the tolerance
# leaves room for reordered reductions (the default inductor backend differs by ~1e-6 relative).
TOL = dict(rtol=1e-5, atol=1e-6)

CASES = {
    # the op elman_scan (reference loop, opaque), spectral-norm buffer updated in training
    "e1": dict(model="e1", layer={}),
    # the op mingru_scan (gates and reference loop, opaque)
    "mingru": dict(model="mingru", layer={}),
    # reference Mamba2: the op ssd_scan's "chunked" form is traced, no opaque call at all, one graph
    "mamba2": dict(model="mamba2", layer={"d_state": 16, "headdim": 16, "chunk_size": 8}),
    # the same in mamba_ssm's wrapper (RMSNorm and the rescale; in fp32 the residual's casts do nothing): one graph
    "mamba2-mixermodel": dict(model="mamba2", layer={"d_state": 16, "headdim": 16, "chunk_size": 8},
                              norm="rmsnorm", residual_in_fp32=True, rescale_prenorm_residual=True),
    # the op e88_scan (reference loop, opaque) between the traced projections, norms and gates
    "e88": dict(model="e88", layer={"n_state": 8}),
    # reference Gated DeltaNet: convolutions traced, the op gated_delta_scan opaque
    "gdn": dict(model="gdn", layer={"head_dim": 8}),
}


def _loss_grads(fn, model, x):
    model.zero_grad(set_to_none=True)
    loss = fn(x[:, :-1], x[:, 1:])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    return loss.detach(), grads, bufs


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_lm_matches_eager(name):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = LM(ModelConfig(dim=32, depth=2, **CASES[name])).train()
    x = torch.randint(0, 256, (2, 17))
    start = {k: v.clone() for k, v in model.state_dict().items()}

    graphs = []

    def backend(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    compiled = torch.compile(model, backend=backend)
    for _ in range(2):  # the second step reuses the compiled graphs (and a moved spectral u)
        ref = _loss_grads(model, model, x)
        model.load_state_dict(start)
        got = _loss_grads(compiled, model, x)
        torch.testing.assert_close(got[0], ref[0], **TOL)
        for part_got, part_ref in zip(got[1:], ref[1:]):
            assert part_got.keys() == part_ref.keys()
            for k in part_ref:
                torch.testing.assert_close(part_got[k], part_ref[k], **TOL, msg=f"{name} {k}")
        start = {k: v.clone() for k, v in model.state_dict().items()}

    breaks = counters["graph_break"]  # reason -> count; each names the opaque function
    assert all("_run_opaque" in reason for reason in breaks), dict(breaks)
    one_graph = CASES[name]["model"] == "mamba2"
    assert bool(breaks) != one_graph
    # the head and loss are compiled (the block loop's graph breaks do not drop forward to eager)
    assert any(any("cross_entropy" in op for op in ops) for ops in graphs)
    if one_graph:
        assert len(graphs) == 1


@pytest.mark.parametrize("shape", [(6, 6), (2, 4, 4)])
def test_spectral_norm_reference_is_traced_not_opaque(shape):
    """E1's spectral norm (the op ``spectral_norm``) is no loop over time: its reference compiles
    into the caller's graph (``fullgraph=True`` refuses an opaque call), dense and heads, with the
    eager result, the weight's gradient included."""
    from rnnlab.ops.elman import spectral_norm

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g).requires_grad_()
    u = torch.randn(*shape[:-1], generator=g)
    fn = torch.compile(lambda w, u: spectral_norm(w, u, 0.9, 2), backend="aot_eager", fullgraph=True)
    (got, got_u), (want, want_u) = fn(w, u), spectral_norm(w, u, 0.9, 2)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_u, want_u, **TOL)
    G = torch.randn(shape, generator=g)
    torch.testing.assert_close(torch.autograd.grad(got, w, G)[0], torch.autograd.grad(want, w, G)[0], **TOL)


def _persistent(hint, numel: int, cooperative: bool = False) -> bool:
    """What ``RowChoices`` decides for a reduction of ``numel`` elements with ``hint``, in the
    compile under way (Inductor's config as that compile patched it)."""
    import sympy
    from torch._inductor.sizevars import SizeVarAllocator
    from torch._inductor.virtualized import V

    from rnnlab.train.inductor import RowChoices

    features = SimpleNamespace(get_reduction_hint=lambda: hint, reduction_numel=sympy.Integer(numel),
                               numel=sympy.Integer(64))
    with V.set_graph_handler(SimpleNamespace(sizevars=SizeVarAllocator())):
        return RowChoices.should_use_persistent_reduction(features, cooperative)


def test_row_reductions_persistent_up_to_the_limit_of_the_compile_under_way():
    """rnnlab's Inductor heuristic (rnnlab.train.inductor): a row (inner) reduction is persistent
    up to the limit the compile was given, 1024 being Inductor's own; other reductions, cooperative
    ones, and compiles that did not come through compile_model are left to Inductor. The limit is
    the one of the compile under way (its options, built in any order), not one held anywhere else."""
    from torch._inductor import config as inductor_config
    from torch._inductor.runtime.hints import ReductionHint

    from rnnlab.train.inductor import INDUCTOR_ROWS, PERSISTENT_ROWS, compile_options

    inner, outer = ReductionHint.INNER, ReductionHint.OUTER
    package, inductors = compile_options(rows=PERSISTENT_ROWS), compile_options(rows=INDUCTOR_ROWS)
    with inductor_config.patch(package):
        assert [_persistent(inner, n) for n in (1024, 2880, 3520, 4096, 4097)] == [True] * 4 + [False]
        assert not _persistent(inner, 3520, cooperative=True) and not _persistent(outer, 3520)
        with inductor_config.patch({"triton.persistent_reductions": False}):
            assert not _persistent(inner, 1024)
    with inductor_config.patch(inductors):
        assert [_persistent(inner, n) for n in (1024, 1025, 3520)] == [True, False, False]
    assert [_persistent(inner, n) for n in (1024, 3520)] == [True, False]  # no rnnlab compile under way


def test_compile_model_puts_its_choices_in_the_thread_and_keys_the_cache_by_limit():
    """compile_model in a thread that already holds Inductor's own choices object (as after a plain
    torch.compile there): its compile puts RowChoices in the thread; a compile with another row
    limit misses the compile cache, with the same limit hits it. CPU Inductor on a graph of one
    view (no kernel to build, so the test stays fast); the options keep the mode's own."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.utils import fresh_cache
    from torch._inductor.virtualized import V

    from rnnlab.train.inductor import RowChoices, compile_model, compile_options

    x = torch.randn(4, 8, requires_grad=True)
    with fresh_cache(), V.set_choices_handler(InductorChoices()):
        for limit, cached in ((1024, "miss"), (4096, "miss"), (1024, "hit")):
            torch._dynamo.reset()
            counters.clear()
            out = compile_model(lambda v: v.view(2, 16), rows=limit)(x)
            out.backward(torch.ones(2, 16))
            assert isinstance(V.choices, RowChoices), limit
            assert counters["inductor"][f"fxgraph_cache_{cached}"] == 1, (limit, dict(counters["inductor"]))
    torch._dynamo.reset()
    options = compile_options("reduce-overhead", rows=2048)
    assert options["triton.cudagraphs"] is True and options["post_grad_custom_post_pass"].limit == 2048


def test_the_trainer_compiles_through_compile_model(monkeypatch):
    """``rnnlab train --compile`` (runtime.wrap_model) compiles as every model is compiled."""
    from rnnlab.train import inductor
    from rnnlab.train.config import TrainConfig
    from rnnlab.train.runtime import wrap_model

    model = LM(ModelConfig(model="mingru", dim=32, depth=1))
    monkeypatch.setattr(inductor, "compile_model", lambda m: ("compiled", m))
    assert wrap_model(model, TrainConfig.from_dict({"compile": True})) == ("compiled", model)
    assert wrap_model(model, TrainConfig.from_dict({"compile": False})) is model
