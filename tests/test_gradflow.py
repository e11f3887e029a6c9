"""``rnnlab analyze gradflow`` (issue 7 item 7): outputs, finiteness, curve lengths, and the
Jacobian estimates against explicit torch.linalg computations."""

from __future__ import annotations

import io
import json
import math
import shutil
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from rnnlab.analysis import gradflow as gf
from rnnlab.cli import main
from rnnlab.models import LM, ModelConfig
from rnnlab.train.trainer import run_training

pytestmark = pytest.mark.usefixtures("one_thread")


def _finite(x) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    if isinstance(x, float):
        return math.isfinite(x)
    return True


@pytest.fixture
def trained_run(tiny_train, small_corpus, tmp_path):
    """A tiny E1 run with a checkpoint history: ``history/step1`` (a copy of step 1, pruned from
    ckpt/), and ckpt/ with steps 2 and 4 (``keep_checkpoints`` 2)."""
    run = tmp_path / "run"
    run_training(tiny_train(run, steps=2, checkpoint_every=1, data=str(small_corpus)), progress=False)
    shutil.copytree(run / "ckpt" / "step-000001", run / "history" / "step1")
    run_training(tiny_train(run, steps=4, data=str(small_corpus), resume=True), progress=False)
    shutil.copytree(run / "ckpt" / "step-000004", run / "history" / "step4")  # a copy of a checkpoint: counted once
    return run


def test_cli_writes_json_and_plots(trained_run, tmp_path, capsys):
    out = tmp_path / "gf"
    assert main(["analyze", "gradflow", "--run", str(trained_run), "--out", str(out), "--batches", "2",
                 "--seq-len", "24"]) == 0
    table = capsys.readouterr().out
    assert "sigma_J" in table and "run@4" in table
    assert "lag<0.1 / lag<0.01 = the first distance back in time" in table  # the columns explained below the table
    for f in ("gradflow.json", "temporal_flow.png", "grad_norms.png", "recurrence.png"):
        assert (out / f).stat().st_size > 0
    res = json.loads((out / "gradflow.json").read_text())
    recs = res["records"]
    assert [r["step"] for r in recs] == [1, 2, 4]  # the history, in step order
    assert recs[0]["weights"].endswith("history/step1/model.safetensors")
    assert recs[2]["weights"].endswith("ckpt/step-000004/model.safetensors")
    for r in recs:
        assert _finite({k: r[k] for k in ("param_grad_norms", "temporal", "recurrence")})
        assert set(r["temporal"]) == {"layer_0", "layer_1"}
        assert all(len(c) == 24 for c in r["temporal"].values())  # one value per time step
        assert r["temporal_normalized"]["layer_0"][-1] == pytest.approx(1.0)
        assert all(v > 0 for v in r["param_grad_norms"]["blocks.1"].values())
        assert {"mixer.W_h", "mixer.W_x", "norm.weight"} <= set(r["param_grad_norms"]["blocks.0"])
        assert "embed.weight" in r["param_grad_norms"]
        for layer in ("layer_0", "layer_1"):
            rc = r["recurrence"][layer]
            assert 0 < rc["spectral_radius"] <= rc["spectral_norm"] + 1e-9
            # W_h is rescaled to sigma ~0.99 by 3 power iterations: early in training the estimate
            # is not converged, so the true spectral norm can exceed 0.99 (seen: ~1.07 at step 2)
            assert 0.5 < rc["spectral_norm"] < 1.5
            assert 0 < rc["jacobian_sigma_mean"] <= rc["spectral_norm"] + 1e-6
            assert len(rc["jacobian_sigma_t"]) == 24
    # gradient reaches the past only through the mixers and decays with the lag
    c = recs[-1]["temporal"]["layer_0"]
    assert c[0] < c[-1]


def test_default_out_and_current_ckpt_only(trained_run, capsys):
    assert main(["analyze", "gradflow", "--run", str(trained_run), "--no-history", "--no-plots",
                 "--batches", "1"]) == 0
    res = json.loads((trained_run / "gradflow" / "gradflow.json").read_text())
    assert [r["step"] for r in res["records"]] == [4]
    assert len(res["records"][0]["temporal"]["layer_1"]) == 32  # the run's seq_len



class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_says_what_is_measured_unless_no_progress(trained_run, tmp_path, monkeypatch):
    """A long --seq-len takes minutes a checkpoint: on a terminal a bar counts the checkpoints, naming the run
    and the windows measured; ``--no-progress`` (and stderr that is no terminal) shows none."""
    argv = ["analyze", "gradflow", "--run", str(trained_run), "--no-plots", "--batches", "1", "--seq-len", "8",
            "--out", str(tmp_path / "gf")]
    for extra, shown in (([], True), (["--no-progress"], False)):
        monkeypatch.setattr(sys, "stderr", _Terminal())
        assert main(argv + extra) == 0
        err = sys.stderr.getvalue()
        assert (f"gradflow {trained_run}: 1 x 8 windows of 9 bytes: 100%" in err and "3/3" in err) is shown, err
        assert shown or err == "", err

def test_a_missing_run_is_refused(trained_run, capsys):  # bad numbers: test_bad_inputs' gradflow_* cases
    assert main(["analyze", "gradflow", "--run", str(trained_run / "nope")]) == 2
    assert "run dir not found" in capsys.readouterr().err


def test_jacobian_sigma_equals_linalg():
    g = torch.Generator().manual_seed(0)
    K, N, r = 7, 5, 2
    W = torch.randn(K, K, generator=g, dtype=torch.float64) * 0.5
    h = torch.tanh(torch.randn(N, K, generator=g, dtype=torch.float64))
    d = 1 - h * h
    a = torch.rand(N, K, generator=g, dtype=torch.float64)
    U, V = torch.randn(K, r, generator=g, dtype=torch.float64), torch.randn(K, r, generator=g, dtype=torch.float64)
    s = torch.randn(N, r, generator=g, dtype=torch.float64)
    plain = torch.stack([torch.linalg.matrix_norm(torch.diag(d[i]) @ W, ord=2) for i in range(N)])
    gated = torch.stack([torch.linalg.matrix_norm(torch.diag(d[i] * a[i]) @ W, ord=2) for i in range(N)])
    low = torch.stack([torch.linalg.matrix_norm(torch.diag(d[i]) @ (W + U @ torch.diag(s[i]) @ V.T), ord=2)
                       for i in range(N)])
    torch.testing.assert_close(gf.jacobian_sigma(d, W, iters=500), plain, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gf.jacobian_sigma(d, W, iters=500, gate=a), gated, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gf.jacobian_sigma(d, W, iters=500, lowrank=(U, V, s)), low, rtol=1e-6, atol=1e-9)
    assert torch.equal(gf.jacobian_sigma(d, W, iters=0), gf.jacobian_sigma(d, W, iters=1))  # at least one iteration
    assert gf.spectral_radius(W) == pytest.approx(float(torch.linalg.eigvals(W).abs().max()))


@pytest.mark.parametrize("layer", [{}, {"heads": 2}, {"selective": "decay"}, {"selective": "lowrank"}])
def test_recurrence_stats_match_explicit_jacobians(layer):
    """The E1 states come from an independent path (the layer's ``step``); J_t is formed
    explicitly (gates from the layer's weights) and its top singular value taken with torch.linalg."""
    torch.manual_seed(0)
    model = LM(ModelConfig(model="e1", dim=8, depth=1, layer=layer)).eval()
    if layer.get("selective") == "lowrank":
        with torch.no_grad():
            model.blocks[0].mixer.U.normal_(std=0.3)  # U starts at zero: make the term count
    idx = torch.randint(0, 256, (3, 6))
    x0 = model.embed(idx).detach()
    stats = gf.recurrence_stats(model, [[x0]], iters=400)["layer_0"]
    mixer, norm = model.blocks[0].mixer, model.blocks[0].norm
    W = gf.dense_recurrence(mixer.recurrent_weight(update=False).detach()).double()
    state = mixer.init_state(3, x0.device, x0.dtype)
    sig = torch.zeros(6, dtype=torch.float64)
    with torch.no_grad():
        for t in range(6):
            xt = norm(x0[:, t])
            _, state = mixer.step(xt, state)
            h = state[0].double()
            xr = F.silu(mixer.in_proj(xt).chunk(2, dim=-1)[0])
            for b in range(3):
                D = torch.diag(1 - h[b] ** 2)
                Wt = W
                if layer.get("selective") == "decay":
                    D = D @ torch.diag(torch.sigmoid(F.linear(xr, mixer.W_a, mixer.b_a))[b].double())
                if layer.get("selective") == "lowrank":
                    s = F.linear(xr, mixer.W_s)[b].double()
                    Wt = W + mixer.U.double() @ torch.diag(s) @ mixer.V.double().T
                sig[t] += torch.linalg.matrix_norm(D @ Wt, ord=2) / 3
    torch.testing.assert_close(torch.tensor(stats["jacobian_sigma_t"], dtype=torch.float64), sig,
                               rtol=1e-4, atol=1e-7)
    assert stats["spectral_radius"] == pytest.approx(float(torch.linalg.eigvals(W).abs().max()), rel=1e-6)


def test_horizon_is_the_first_lag_below_each_threshold():
    """The curve over t, normalised by its value at t = T-1, read backwards from T-1 (lag 0): the
    horizon is the first lag whose value is below 1e-1 / 1e-2 / 1e-3 (equal is not below), None if
    none is."""
    curves = torch.tensor([[1e-4, 0.004, 0.05, 0.2, 0.5, 2.0],  # normalised: 5e-5, 2e-3, 0.025, 0.1, 0.25, 1
                           [3.0, 6.0, 3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    r = gf._temporal_summary(curves)
    assert r["temporal"]["layer_0"] == curves[0].tolist()
    assert r["temporal_normalized"]["layer_0"] == pytest.approx([5e-5, 2e-3, 0.025, 0.1, 0.25, 1.0])
    assert r["temporal_normalized"]["layer_1"] == [1.0, 2.0, 1.0, 1.0, 1.0, 1.0]  # over t = T-1, not the peak
    # lags 0, 1, 2, ...: 1, 0.25, 0.1 (not below 0.1), 0.025, 2e-3, 5e-5
    assert r["horizon"] == {"layer_0": {"0.1": 3, "0.01": 4, "0.001": 5},
                            "layer_1": {"0.1": None, "0.01": None, "0.001": None}}


def test_generic_mixer_has_temporal_flow_but_no_recurrence_stats():
    torch.manual_seed(0)
    model = LM(ModelConfig(model="mingru", dim=16, depth=2)).eval()
    batch = torch.randint(0, 256, (2, 13))
    r = gf.analyze_model(model, [batch], last=2)
    assert r["recurrence"] == {}
    assert [len(c) for c in r["temporal"].values()] == [12, 12]
    assert _finite(r["temporal"]) and _finite(r["param_grad_norms"])


def test_block_inputs_are_the_residual_stream_and_their_gradients():
    """(b) reads each block's input, the residual stream entering it (``x^(l)``), and the loss's
    gradient with respect to it, written out here for a 2-block LM: x^(0) is the embedding,
    x^(1) = x^(0) + mixer_0(LN_0(x^(0)))."""
    torch.manual_seed(0)
    model = LM(ModelConfig(model="mingru", dim=16, depth=2)).eval()
    batch = torch.randint(0, 256, (2, 9))
    x, y = batch[:, :-1], batch[:, 1:]
    per, store = gf._last_loss_input_grads(model, x, y, last=2)
    x0 = model.embed(x).detach().requires_grad_()
    x1 = x0 + model.blocks[0].mixer(model.blocks[0].norm(x0))
    x1.retain_grad()
    x2 = x1 + model.blocks[1].mixer(model.blocks[1].norm(x1))
    logits = model.head(model.norm_f(x2))
    # each window's own loss at its last 2 positions: the sum of the two windows' means
    (2 * F.cross_entropy(logits[:, -2:].reshape(-1, 256), y[:, -2:].reshape(-1))).backward()
    torch.testing.assert_close(store[0], x0)
    torch.testing.assert_close(store[1], x1)
    torch.testing.assert_close(per, torch.stack([x0.grad.norm(dim=-1).mean(0), x1.grad.norm(dim=-1).mean(0)]))


def test_heldout_batches_are_the_first_windows_of_the_held_out_split(tiny_train, small_corpus, tmp_path):
    """``n_batches`` full batches of ``batch_size`` windows of ``seq_len + 1`` bytes: the first
    non-overlapping windows (stride ``seq_len``) of the held-out split, the corpus's 1% tail."""
    cfg = tiny_train(tmp_path / "run", data=str(small_corpus))
    tail = small_corpus.read_bytes()[-200:]  # 1% of 20,000 bytes
    batches = gf.heldout_batches(cfg, 8, 4, 2)
    assert [tuple(b.shape) for b in batches] == [(4, 9), (4, 9)]
    windows = [bytes(w.tolist()) for b in batches for w in b]
    assert windows == [tail[8 * i:8 * i + 9] for i in range(8)]


def test_heldout_batches_come_from_the_runs_own_val_fraction(tiny_train, small_corpus, tmp_path):
    """The held-out windows are read from the tail the run held out, at its ``val_fraction`` (5% of
    20,000 bytes here: the last 1,000), not the default 1%."""
    cfg = tiny_train(tmp_path / "run", data=str(small_corpus), val_fraction=0.05)
    tail = small_corpus.read_bytes()[-1000:]
    [batch] = gf.heldout_batches(cfg, 8, 4, 1)
    assert [bytes(w.tolist()) for w in batch] == [tail[8 * i:8 * i + 9] for i in range(4)]


def test_a_held_out_split_short_of_the_windows_asked_says_how_many_it_gave(tiny_train, small_corpus, tmp_path):
    """A held-out split that holds fewer windows than ``--batches`` x ``--batch-size`` gives those it holds and
    says so in a warning, where the analysis was quietly of fewer windows; one that holds them all says nothing."""
    val = tmp_path / "val.txt"
    val.write_bytes(bytes(range(100)) * 3)  # 300 bytes: 37 windows of 9
    cfg = tiny_train(tmp_path / "run", data=str(small_corpus), val_data=str(val))
    with pytest.warns(UserWarning) as said:
        batches = gf.heldout_batches(cfg, 8, 8, 5)
    assert [len(b) for b in batches] == [8, 8, 8, 8, 5]
    assert [str(w.message) for w in said] == [f"held-out file {val.resolve()} (300 bytes) holds 37 windows "
                                              f"of 9 bytes, fewer than the 5 x 8 asked: measured on those"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(gf.heldout_batches(cfg, 8, 8, 4)) == 4


def test_a_held_out_file_of_seq_len_bytes_is_too_short(tiny_train, small_corpus, tmp_path):
    """A window needs ``seq_len + 1`` bytes: a held-out file of exactly ``seq_len`` is refused with
    the advice that fits an analysis (a smaller --seq-len; the run's file is fixed), one more byte
    gives one window."""
    val = tmp_path / "val.txt"
    val.write_bytes(b"12345678")
    cfg = tiny_train(tmp_path / "run", data=str(small_corpus), val_data=str(val))
    with pytest.raises(ValueError) as e:
        gf.heldout_batches(cfg, 8, 4, 1)
    assert str(e.value) == "held-out split has 8 bytes, fewer than seq_len+1 = 9; use a smaller --seq-len"
    val.write_bytes(b"123456789")
    with pytest.warns(UserWarning, match="holds 1 window"):
        assert [b.tolist() for b in gf.heldout_batches(cfg, 8, 4, 1)] == [[list(b"123456789")]]


def test_gradient_norms_and_curves_are_means_over_the_batches():
    """Over several batches, (a) is the norm of the mean gradient (the gradient of the mean of
    the batches' losses, taken here with autograd) and (b) the mean of each batch's own curve."""
    torch.manual_seed(0)
    model = LM(ModelConfig(model="e1", dim=16, depth=2)).eval()
    b1, b2 = torch.randint(0, 256, (2, 2, 9)).unbind(0)
    r = gf.grad_norms_and_temporal(model, [b1, b2], last=2)
    model.zero_grad(set_to_none=True)
    ((model(b1[:, :-1], b1[:, 1:]) + model(b2[:, :-1], b2[:, 1:])) / 2).backward()
    want = {n: float(p.grad.norm()) for n, p in model.named_parameters()}
    assert r["param_grad_norms"]["embed.weight"] == pytest.approx(want["embed.weight"], rel=1e-5)
    assert r["param_grad_norms"]["blocks.1"]["mixer.W_h"] == pytest.approx(want["blocks.1.mixer.W_h"], rel=1e-5)
    one, two = (gf.grad_norms_and_temporal(model, [b], last=2)["temporal"] for b in (b1, b2))
    for layer in ("layer_0", "layer_1"):
        assert r["temporal"][layer] == pytest.approx([(u + v) / 2 for u, v in zip(one[layer], two[layer])],
                                                     rel=1e-6)


@pytest.mark.parametrize("heads", [1, 2])
def test_recurrence_stats_of_heads_are_those_of_the_block_diagonal_matrix(heads):
    """With block-diagonal heads, W_h_eff's spectral norm and radius are those of the whole
    block-diagonal matrix (the largest over the heads), and the record says how many heads."""
    torch.manual_seed(0)
    model = LM(ModelConfig(model="e1", dim=8, depth=1, layer={"heads": heads})).eval()
    x0 = model.embed(torch.randint(0, 256, (2, 5))).detach()
    stats = gf.recurrence_stats(model, [[x0]], iters=50)["layer_0"]
    w = model.blocks[0].mixer.recurrent_weight(update=False).detach().double()
    dense = torch.block_diag(*w) if w.dim() == 3 else w
    assert stats["heads"] == heads
    assert stats["spectral_norm"] == pytest.approx(float(torch.linalg.matrix_norm(dense, ord=2)), rel=1e-9)
    assert stats["spectral_radius"] == pytest.approx(float(torch.linalg.eigvals(dense).abs().max()), rel=1e-6)


def test_table_columns():
    """The table's |g_mixer| is the norm over the layer's mixer parameters only (3-4-5 here, the
    norm weight left out), the lag columns are the 0.1 and 0.01 horizons in that order, and the
    E1 columns are the radius and the mean Jacobian sigma (``-`` for a layer without them)."""
    rec = {"run": "/x/run", "step": 7,
           "temporal": {"layer_0": [1.0], "layer_1": [1.0]},
           "param_grad_norms": {"blocks.0": {"mixer.W_h": 3.0, "mixer.W_x": 4.0, "norm.weight": 12.0},
                                "blocks.1": {"mixer.W_h": 1.0}},
           "horizon": {"layer_0": {"0.1": 2, "0.01": 9, "0.001": None},
                       "layer_1": {"0.1": None, "0.01": None, "0.001": None}},
           "recurrence": {"layer_0": {"spectral_radius": 0.25, "spectral_norm": 0.5, "jacobian_sigma_mean": 0.125}}}
    rows = [line.split() for line in gf.format_table({"records": [rec]}).splitlines()[1:3]]
    assert rows == [["run@7", "0", "5", "2", "9", "0.2500", "0.1250"],
                    ["run@7", "1", "1", "None", "None", "-", "-"]]


def test_a_bf16_run_is_analysed_in_fp32(tiny_train, small_corpus, tmp_path):
    """The model is analysed in fp32 whatever its training dtype: a pure-bf16 run is analysed, and
    its gradient norms are those of its weights cast to fp32 (left in bf16, the E1 statistics
    would fail on a dtype mismatch). The record states the settings it was measured with."""
    from rnnlab.train.rundir import RunDir

    run = tmp_path / "run"
    run_training(tiny_train(run, steps=1, precision="bf16", data=str(small_corpus)), progress=False)
    rec = gf.analyze([run], tmp_path / "gf", batches=1, batch_size=2, seq_len=8, history=False,
                     plots=False, last=2, power_iters=3)["records"][0]
    assert {k: rec[k] for k in ("seq_len", "batches", "batch_size", "last", "power_iters")} == \
        {"seq_len": 8, "batches": 1, "batch_size": 2, "last": 2, "power_iters": 3}
    cfg, model, _ = RunDir(run).load("cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    model = model.float()
    [batch] = gf.heldout_batches(cfg, 8, 2, 1)
    model(batch[:, :-1], batch[:, 1:]).backward()
    assert rec["param_grad_norms"]["embed.weight"] == pytest.approx(float(model.embed.weight.grad.norm()), rel=1e-5)
    assert rec["param_grad_norms"]["blocks.0"]["mixer.W_h"] == pytest.approx(
        float(model.blocks[0].mixer.W_h.grad.norm()), rel=1e-5)


def test_gradflow_json_is_strict_json_where_a_curve_has_no_reference(trained_run, tmp_path, monkeypatch):
    """A layer whose gradient at the last position is 0 has no normalised curve (NaN): gradflow.json
    writes it as null, not the bare ``NaN`` that strict JSON readers refuse; finite values stay, and
    ``write_plots`` draws the records read back from the file."""
    real = gf._temporal_summary
    monkeypatch.setattr(gf, "_temporal_summary", lambda curves: real(torch.tensor([[1.0, 0.0]])))
    # the run's 200 held-out bytes hold 8 windows of 24: one batch of 8, the batches (and their size)
    # measured, not those asked, and said so
    with pytest.warns(UserWarning, match=r"holds 8 windows of 25 bytes, fewer than the 3 x 16 asked: measured on those"):
        res = gf.analyze([trained_run], tmp_path / "gf", batches=3, batch_size=16, seq_len=24, plots=False)
    assert [(r["batches"], r["batch_size"]) for r in res["records"]] == [(1, 8)] * 3
    text = (tmp_path / "gf" / "gradflow.json").read_text()

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    records = json.loads(text, parse_constant=refuse)["records"]
    rec = records[0]
    assert rec["temporal_normalized"]["layer_0"] == [None, None] and rec["temporal"]["layer_0"] == [1.0, 0.0]
    # the file's records plot again as they are, its nulls as gaps
    assert [p.name for p in gf.write_plots(records, tmp_path / "gf")] == ["temporal_flow.png", "grad_norms.png",
                                                                        "recurrence.png"]


def test_power_iters_reach_the_jacobian_estimate():
    """``analyze_model``'s ``power_iters`` is the number of power iterations behind sigma_max(J_t):
    the record is ``recurrence_stats`` at that count (1 here), not at the default 10."""
    torch.manual_seed(0)
    model = LM(ModelConfig(model="e1", dim=8, depth=1)).eval()
    batch = torch.randint(0, 256, (2, 7))
    r = gf.analyze_model(model, [batch], power_iters=1)
    x0 = model.embed(batch[:, :-1]).detach()
    one, ten = (gf.recurrence_stats(model, [[x0]], iters=n)["layer_0"]["jacobian_sigma_t"] for n in (1, 10))
    assert r["recurrence"]["layer_0"]["jacobian_sigma_t"] == pytest.approx(one, rel=1e-12)
    assert one != pytest.approx(ten, rel=1e-6)


def test_strict_json_turns_every_non_finite_float_to_null():
    """NaN and both infinities become None (JSON has none of them), at any depth; the rest stays."""
    inf = float("inf")
    assert gf._strict_json({"a": [inf, -inf, float("nan"), 1.5], "b": {"c": (2.0, inf)}, "d": "x"}) == \
        {"a": [None, None, None, 1.5], "b": {"c": [2.0, None]}, "d": "x"}


def test_plots_show_the_latest_records(monkeypatch, tmp_path):
    """``write_plots``: the temporal panels are the last four records (the newest checkpoints),
    the gradient-norm bars the last record's, the recurrence plot every record with E1 statistics."""
    seen = {}

    def plot(kind):
        def draw(_plt, recs, path):
            seen[kind] = recs
            return path
        return draw

    monkeypatch.setattr(gf, "pyplot", lambda: None)
    for kind in ("temporal", "grad_norms", "recurrence"):
        monkeypatch.setattr(gf, f"_plot_{kind}", plot(kind))
    records = [{"step": i, "recurrence": {"layer_0": {}} if i % 2 else {}} for i in range(6)]
    assert [p.name for p in gf.write_plots(records, tmp_path)] == ["temporal_flow.png", "grad_norms.png",
                                                                   "recurrence.png"]
    assert seen == {"temporal": records[2:], "grad_norms": records[5], "recurrence": records[1::2]}


def test_a_record_at_step_0_is_labelled_with_its_step():
    """Records are labelled run@step, step 0 included (only a record without a step is the bare name)."""
    recs = [{"run": "/x/run", "step": s} for s in (0, 5, None)]
    assert [gf._label(r, recs) for r in recs] == ["run@0", "run@5", "run"]


def test_runs_of_one_folder_name_are_told_apart(monkeypatch, tmp_path):
    """Runs compared from two suites' folders (runs/a/e1, runs/b/e1) are labelled a/e1 and b/e1 in
    the table, the temporal panels' titles and the recurrence legend, not both e1."""
    figs = []
    monkeypatch.setattr(gf, "save", lambda fig, path: figs.append(fig) or path)
    recs = [{"run": f"/x/runs/{s}/e1", "step": 4, "temporal": {"layer_0": [1.0]},
             "temporal_normalized": {"layer_0": [1.0]}, "param_grad_norms": {"blocks.0": {"mixer.W_h": 1.0}},
             "horizon": {"layer_0": {"0.1": None, "0.01": None, "0.001": None}},
             "recurrence": {"layer_0": {"spectral_radius": 0.5, "spectral_norm": 0.6, "jacobian_sigma_mean": 0.4,
                                        "jacobian_sigma_t": [0.4]}}} for s in ("a", "b")]
    assert [line.split()[0] for line in gf.format_table({"records": recs}).splitlines()[1:3]] == ["a/e1@4", "b/e1@4"]
    gf.write_plots(recs, tmp_path)
    temporal, grads, recurrence = figs
    assert [ax.get_title() for ax in temporal.axes] == ["a/e1@4", "b/e1@4"]
    assert grads.axes[0].get_title() == "parameter gradient norms, e1@4"
    assert [t.get_text() for t in recurrence.axes[0].get_legend().get_texts()] == ["a/e1 layer_0", "b/e1 layer_0"]


def test_a_short_last_batch_weighs_each_window_once():
    """A held-out split whose windows do not fill the last batch (``eval_windows`` yields it short):
    (a) is the gradient of the mean loss over every window, and (b) the mean over the windows of
    each window's own ``||dl/dx_t||`` (l: its mean loss at its last positions), whatever batch a
    window came in; both are taken here window by window with autograd."""
    torch.manual_seed(0)
    model = LM(ModelConfig(model="e1", dim=16, depth=2)).eval()
    windows = torch.randint(0, 256, (3, 9))
    r = gf.grad_norms_and_temporal(model, [windows[:2], windows[2:]], last=2)
    model.zero_grad(set_to_none=True)
    model(windows[:, :-1], windows[:, 1:]).backward()
    assert r["param_grad_norms"]["blocks.1"]["mixer.W_h"] == pytest.approx(
        float(model.blocks[1].mixer.W_h.grad.norm()), rel=1e-5)
    assert r["param_grad_norms"]["embed.weight"] == pytest.approx(float(model.embed.weight.grad.norm()), rel=1e-5)
    curves = []
    for w in windows:
        x, y = w[None, :-1], w[None, 1:]
        x0 = model.embed(x).detach().requires_grad_()
        x1 = x0 + model.blocks[0].mixer(model.blocks[0].norm(x0))
        x1.retain_grad()
        x2 = x1 + model.blocks[1].mixer(model.blocks[1].norm(x1))
        F.cross_entropy(model.head(model.norm_f(x2))[0, -2:], y[0, -2:]).backward()
        curves.append(torch.stack([x0.grad[0].norm(dim=-1), x1.grad[0].norm(dim=-1)]))
    want = torch.stack(curves).mean(0)
    for i, layer in enumerate(("layer_0", "layer_1")):
        assert r["temporal"][layer] == pytest.approx(want[i].tolist(), rel=1e-5)


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_jacobian_sigma_runs_exactly_iters_power_iterations(iters):
    """``iters`` power iterations on J^T J from the seeded start, J formed explicitly: the estimate
    after k of them is ||J v_k||, v_k = (J^T J)^k v_0 normalised (not yet converged at these k)."""
    g = torch.Generator().manual_seed(1)
    K, N = 5, 3
    W = torch.randn(K, K, generator=g, dtype=torch.float64)
    d = torch.rand(N, K, generator=g, dtype=torch.float64)
    v0 = torch.randn(N, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # seed=0's start
    want = []
    for i in range(N):
        J = torch.diag(d[i]) @ W
        u = torch.linalg.matrix_power(J.T @ J, iters) @ v0[i]
        want.append((J @ (u / u.norm())).norm())
    torch.testing.assert_close(gf.jacobian_sigma(d, W, iters=iters, seed=0), torch.stack(want), rtol=1e-10, atol=0)


def test_dense_recurrence_of_heads_is_the_matrix_of_the_recurrent_term():
    """``h @ dense_recurrence(w_h).T`` is the recurrent term: for heads, head n of it is h's head n
    times ``w_h[n].T``, taken here head by head (the Jacobian tests form J with dense_recurrence
    itself, so a transposed block-diagonal matrix would pass them)."""
    g = torch.Generator().manual_seed(0)
    w_h = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    h = torch.randn(5, 12, generator=g, dtype=torch.float64)
    want = torch.cat([h[:, 4 * n:4 * n + 4] @ w_h[n].T for n in range(3)], dim=1)
    torch.testing.assert_close(h @ gf.dense_recurrence(w_h).T, want, rtol=0, atol=1e-12)
    dense = torch.randn(6, 6, generator=g, dtype=torch.float64)
    assert torch.equal(gf.dense_recurrence(dense), dense)


def test_a_last_of_the_whole_window_measures_the_loss_at_every_position():
    """``last`` >= the window's length (a direct call: ``analyze`` refuses it) is every position's
    loss: layer 0's curve is ``||dl/dx_t||`` of the window's mean loss over all its targets."""
    torch.manual_seed(0)
    model = LM(ModelConfig(model="e1", dim=16, depth=1)).eval()
    w = torch.randint(0, 256, (1, 7))
    r = gf.grad_norms_and_temporal(model, [w], last=6)
    x, y = w[:, :-1], w[:, 1:]
    x0 = model.embed(x).detach().requires_grad_()
    x1 = x0 + model.blocks[0].mixer(model.blocks[0].norm(x0))
    F.cross_entropy(model.head(model.norm_f(x1))[0], y[0]).backward()
    assert r["temporal"]["layer_0"] == pytest.approx(x0.grad[0].norm(dim=-1).tolist(), rel=1e-5)
    assert gf.grad_norms_and_temporal(model, [w], last=50)["temporal"] == r["temporal"]
