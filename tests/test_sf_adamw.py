"""The fused Schedule-Free AdamW step (``rnnlab.train.sf_adamw``) against schedulefree's own step:
its Triton kernel in Triton's interpreter on fp32 CPU tensors (the GPU suite checks bf16 on CUDA),
and the fallback to schedulefree's step where the kernel does not apply."""

from __future__ import annotations

import os
import warnings

import pytest
import schedulefree
import torch

from rnnlab.train import sf_adamw

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

# odd sizes, one below and one across a program's block, a matrix, a scalar-like bias
SHAPES = [(37,), (sf_adamw.BLOCK + 5,), (5, 7), (1,), (0,), (3 * sf_adamw.BLOCK,)]


def _pair(monkeypatch=None, weight_decay=0.1, warmup_steps=3, groups=1, **kw):
    """schedulefree's optimizer and ours over equal parameters (``groups`` param groups, the
    second without weight decay), both in train mode; ours forced onto the kernel when
    ``monkeypatch`` is given (CPU tensors: Triton's interpreter)."""
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    opts = []
    for cls in (schedulefree.AdamWScheduleFree, sf_adamw.AdamWScheduleFree):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        pg = [{"params": params}] if groups == 1 else [{"params": params[:2]},
                                                       {"params": params[2:], "weight_decay": 0.0}]
        opt = cls(pg, lr=1e-2, weight_decay=weight_decay, warmup_steps=warmup_steps, **kw)
        opt.train()
        opts.append(opt)
    if monkeypatch is not None:
        monkeypatch.setattr(opts[1], "_fused_applies", lambda: True)
    return opts


def _params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def _steps(ref, ours, n, skip_grad=None, zeros=False):
    """``n`` steps of both on the same random gradients (parameter ``skip_grad`` gets none; with
    ``zeros``, every other entry of each gradient is 0)."""
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        for i, (a, b) in enumerate(zip(_params(ref), _params(ours))):
            grad = None if i == skip_grad else torch.randn(a.shape, generator=g)
            if zeros and grad is not None:
                grad.view(-1)[::2] = 0
            a.grad = None if grad is None else grad.clone()
            b.grad = None if grad is None else grad.clone()
        ref.step()
        ours.step()


def _assert_same_state(ref, ours, **tol):
    for a, b in zip(_params(ref), _params(ours)):
        torch.testing.assert_close(b, a, **tol)
        assert ("z" in ours.state[b]) == ("z" in ref.state[a])
        for key in ("z", "exp_avg_sq") if "z" in ref.state[a] else ():
            torch.testing.assert_close(ours.state[b][key], ref.state[a][key], **tol)
    for ga, gb in zip(ref.param_groups, ours.param_groups):
        assert {k: gb[k] for k in ("k", "lr_max", "weight_sum", "scheduled_lr")} == \
               {k: ga[k] for k in ("k", "lr_max", "weight_sum", "scheduled_lr")}


needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or sf_adamw.triton is None,
                                       reason="runs the Triton interpreter (CPU-only machines)")


@needs_interpreter
@pytest.mark.parametrize("weight_decay", [0.1, 0.0])
@pytest.mark.parametrize("groups", [1, 2])
def test_fused_step_matches_schedulefree(monkeypatch, weight_decay, groups):
    """Through its warm-up and after it, with and without weight decay, over two param groups:
    y, z, the second moment and the bookkeeping scalars as schedulefree's step leaves them (fp32:
    to an ulp or two; CPU torch and the kernel contract different products into FMAs)."""
    ref, ours = _pair(monkeypatch, weight_decay=weight_decay, groups=groups)
    _steps(ref, ours, 6)
    _assert_same_state(ref, ours, rtol=2e-6, atol=1e-7)


@needs_interpreter
def test_fused_step_weighs_by_the_largest_lr_after_the_lr_is_lowered(monkeypatch):
    """The average's weight uses ``lr_max``, the largest LR so far, not the current one: with the
    LR lowered after the warm-up (the two differ only then), the state still follows
    schedulefree's step."""
    ref, ours = _pair(monkeypatch)
    _steps(ref, ours, 4)
    for opt in (ref, ours):
        for group in opt.param_groups:
            group["lr"] /= 4
    _steps(ref, ours, 3)
    assert ours.param_groups[0]["lr_max"] == 1e-2 and ours.param_groups[0]["scheduled_lr"] == 2.5e-3
    _assert_same_state(ref, ours, rtol=2e-6, atol=1e-7)


@needs_interpreter
def test_fused_step_weighs_step_k_by_k_plus_1_to_the_power_r(monkeypatch):
    """With ``r`` other than 0 (the default, where every weight is 1) the average's weights grow
    as ``(k + 1) ** r``, as in schedulefree's step."""
    ref, ours = _pair(monkeypatch, r=1.0)
    _steps(ref, ours, 4)
    _assert_same_state(ref, ours, rtol=2e-6, atol=1e-7)


@needs_interpreter
def test_fused_step_moves_y_towards_z_without_cancellation_for_a_small_weight(monkeypatch):
    """A small weight ``ckp1`` takes torch's lerp formula ``y + ckp1 * (z - y)``: its result,
    much smaller than z, keeps its relative precision (``z - (z - y) * (1 - ckp1)`` would lose
    it to cancellation). A zero gradient and no decay make the step the lerp alone."""
    torch.manual_seed(0)
    y0 = 1e-7 * torch.randn(37)
    p = torch.nn.Parameter(y0.clone())
    opt = sf_adamw.AdamWScheduleFree([p], lr=1e-2, weight_decay=0.0, warmup_steps=0)
    opt.train()  # before the state is set: with a z, train() would move y
    monkeypatch.setattr(opt, "_fused_applies", lambda: True)
    z0 = torch.ones(37)
    opt.state[p].update(z=z0.clone(), exp_avg_sq=torch.zeros(37))
    opt.param_groups[0]["weight_sum"] = (1e6 - 1) * 1e-4  # this step's weight: lr ** 2 = 1e-4
    p.grad = torch.zeros(37)
    opt.step()
    ckp1 = 1e-4 / (1e6 * 1e-4)
    want = (y0.double() + ckp1 * (z0.double() - y0.double())).float()
    torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=0)
    assert torch.equal(opt.state[p]["z"], z0)


@needs_interpreter
def test_fused_step_at_weight_one_half_takes_torchs_upper_lerp_formula(monkeypatch):
    """``ckp1 = 0.5`` exactly (a run's second step without warm-up) is in torch's upper half,
    ``z - (z - y) * (1 - ckp1)``: bit for bit ``y.lerp_(z, 0.5)`` as schedulefree's step computes
    it, where ``y + ckp1 * (z - y)`` differs by an ulp on some elements."""
    torch.manual_seed(0)
    y0 = torch.randn(37) * 10.0 ** torch.randint(-8, 2, (37,)).float()
    z0 = torch.randn(37)
    p = torch.nn.Parameter(y0.clone())
    opt = sf_adamw.AdamWScheduleFree([p], lr=1e-2, weight_decay=0.0, warmup_steps=0)
    opt.train()
    monkeypatch.setattr(opt, "_fused_applies", lambda: True)
    opt.state[p].update(z=z0.clone(), exp_avg_sq=torch.zeros(37))
    opt.param_groups[0]["weight_sum"] = 1e-4  # this step's weight lr ** 2 = 1e-4: ckp1 = 0.5
    p.grad = torch.zeros(37)
    opt.step()
    assert not torch.equal(y0 + 0.5 * (z0 - y0), y0.clone().lerp_(z0, 0.5))  # the two formulas differ here
    assert torch.equal(p.detach(), y0.clone().lerp_(z0, 0.5))


@needs_interpreter
def test_fused_step_writes_only_the_parameters_own_elements(monkeypatch):
    """A tensor's partial last block is masked at its end: a parameter that is the head of a
    larger buffer leaves the bytes after it as they were."""
    buf = torch.full((64,), 7.0)
    p = torch.nn.Parameter(buf[:37])
    opt = sf_adamw.AdamWScheduleFree([p], lr=1e-2, warmup_steps=0)
    opt.train()
    monkeypatch.setattr(opt, "_fused_applies", lambda: True)
    p.grad = torch.ones(37)
    opt.step()
    assert not torch.equal(buf[:37], torch.full((37,), 7.0))  # the step moved the parameter
    assert torch.equal(buf[37:], torch.full((27,), 7.0))


@needs_interpreter
@pytest.mark.parametrize("weight_decay", [0.1, 0.0])
def test_fused_step_where_gradients_are_zero(monkeypatch, weight_decay):
    """Entries whose gradient has been 0 at every step (an embedding's rows of bytes no batch held)
    have a zero second moment: ``eps`` makes their update 0 / eps, as in schedulefree's step, not
    0 / 0 (NaN weights)."""
    ref, ours = _pair(monkeypatch, weight_decay=weight_decay)
    _steps(ref, ours, 3, zeros=True)
    _assert_same_state(ref, ours, rtol=2e-6, atol=1e-7)


@needs_interpreter
def test_fused_step_skips_parameters_without_gradient_and_keeps_the_gradient(monkeypatch):
    """A parameter without a gradient is left alone (no state either); the gradients are not
    overwritten (schedulefree's step divides them in place)."""
    ref, ours = _pair(monkeypatch)
    _steps(ref, ours, 2, skip_grad=1)
    _assert_same_state(ref, ours, rtol=2e-6, atol=1e-7)
    untouched = _params(ours)[1]
    assert "z" not in ours.state[untouched]
    grad = torch.randn(SHAPES[0])
    p = _params(ours)[0]
    p.grad = grad.clone()
    ours.step()
    assert torch.equal(p.grad, grad)


@needs_interpreter
def test_fused_step_then_eval_and_state_dict_round_trip(monkeypatch):
    """The average x (``eval()``) and a state dict loaded into a fresh optimizer continue exactly
    as schedulefree's: the state has schedulefree's keys."""
    ref, ours = _pair(monkeypatch)
    _steps(ref, ours, 3)
    fresh = sf_adamw.AdamWScheduleFree([torch.nn.Parameter(p.detach().clone()) for p in _params(ours)], lr=1e-2,
                                       weight_decay=0.1, warmup_steps=3)
    fresh.load_state_dict(ours.state_dict())
    monkeypatch.setattr(fresh, "_fused_applies", lambda: True)
    _steps(ref, fresh, 2)
    _assert_same_state(ref, fresh, rtol=2e-6, atol=1e-7)
    ref.eval(), fresh.eval()
    for a, b in zip(_params(ref), _params(fresh)):
        torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-7)


class _Subclass(torch.Tensor):
    """A tensor subclass, as FSDP2's DTensor shards are."""


@pytest.mark.parametrize("case", ["fits", "bf16", "fp16", "not contiguous", "not 16-byte aligned",
                                  "a state in another dtype", "a tensor subclass", "without gradient"])
def test_fused_step_takes_only_tensors_its_kernel_can(monkeypatch, case):
    """The kernel reads each tensor as 16-byte vectors of one dtype through a table of addresses:
    it runs only where every parameter with a gradient, the gradient and the state are plain
    tensors (not DTensor shards) of one dtype of ``DTYPES``, contiguous and 16-byte aligned, else
    schedulefree's step runs; a parameter without gradient is left out. CPU tensors stand in for
    CUDA ones (``is_cuda`` patched while the choice is made)."""
    good = torch.nn.Parameter(torch.zeros(8))
    odd = {"bf16": torch.zeros(8, dtype=torch.bfloat16), "fp16": torch.zeros(8, dtype=torch.float16),
           "not contiguous": torch.zeros(2, 4).t(),
           "not 16-byte aligned": torch.zeros(10)[2:]}.get(case, torch.zeros(8))  # 8 bytes in: 8-byte aligned
    p = torch.nn.Parameter(odd)
    opt = sf_adamw.AdamWScheduleFree([good, p], lr=1e-2)
    good.grad = torch.ones(8)
    p.grad = None if case == "without gradient" else torch.ones_like(p)
    if case == "a tensor subclass":
        p.grad = p.grad.as_subclass(_Subclass)
    if case == "a state in another dtype":
        opt.state[p].update(z=p.detach().clone(), exp_avg_sq=torch.zeros(8, dtype=torch.bfloat16))
    why = {"fp16": "a parameter of shape (8,) in torch.float16 (it takes torch.bfloat16 and torch.float32)",
           "not contiguous": "a parameter of shape (4, 2) (or its gradient or state) that is not contiguous",
           "not 16-byte aligned": "a parameter of shape (8,) (or its gradient or state) that is not 16-byte aligned",
           "a state in another dtype": "a parameter of shape (8,) whose gradient or state is not in its dtype, "
                                       "torch.float32",
           "a tensor subclass": ""}.get(case)  # FSDP2's shards: declined by design, without a word
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
        assert opt._fused_applies() is (why is None)
        assert opt._declined() == why
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            opt._say_why_not_fused(), opt._say_why_not_fused()
        assert [str(w.message) for w in said] == ([f"Schedule-Free AdamW's fused step does not take {why}: "
                                                   "schedulefree's slower foreach step runs for this optimizer"]
                                                  if why else [])  # once, and only where not by design
    assert not opt._fused_applies() and opt._declined() == ""  # real CPU tensors: by design


def test_cpu_parameters_run_schedulefrees_step():
    """Where the kernel does not apply (CPU tensors), the step is schedulefree's own, bit for bit."""
    ref, ours = _pair()
    _steps(ref, ours, 4)
    assert not ours._fused_applies()
    _assert_same_state(ref, ours, rtol=0, atol=0)


def test_closure_runs_before_the_path_is_chosen():
    """A closure that makes the gradients runs first, so the choice of path sees them (CPU
    gradients: schedulefree's step), and its loss is returned."""
    ref, ours = _pair()
    for opt in (ref, ours):
        def closure(opt=opt):
            loss = sum((p.float() ** 2).sum() for p in _params(opt))
            loss.backward()
            return loss
        loss = opt.step(closure)
    assert loss.item() > 0
    _assert_same_state(ref, ours, rtol=0, atol=0)


def test_step_in_eval_mode_is_refused(monkeypatch):
    _, ours = _pair(monkeypatch)
    ours.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        ours.step()
