"""Training loop, checkpoint/resume, evaluation and sampling (CPU, tiny models)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil

import pytest
import torch

from rnnlab.data import load_splits
from rnnlab.models.registry import MODELS
from rnnlab.train import trainer
from rnnlab.train.config import TrainConfig, apply_overrides, load_config, resume_mismatch
from rnnlab.train.rundir import LOCK, SESSION_KEYS, RunDir
from rnnlab.train.trainer import NonFiniteLossError, Trainer, run_training

pytestmark = pytest.mark.usefixtures("one_thread")

SUMMARY_KEYS = {"model", "params", "steps", "tokens", "loss", "val_loss", "val_bpb", "tok_per_s",
                "peak_mem_gib", "time_s", "complete", "dim", "depth", "batch_size", "seq_len",
                "optimizer", "lr", "precision", "seed", "decay_rates", "model_options"}
METRIC_KEYS = {"step", "tokens", "loss", "lr", "grad_norm", "tok_per_s", "peak_mem_gib", "elapsed_s", "warmup_s"}


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(folder) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- learning
# Gated DeltaNet's default head_dim (128) makes a dim-32 model one head wider than the model, a
# 128 x 256 state per step of the reference loop (5 s, twice the other seven models together);
# head_dim 16, as in the tiny bench suite, gives two heads of 16 and learns as plainly.
TINY_LAYER = {"gdn": {"head_dim": 16}}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_learns(name, tiny_train, tmp_path):
    dim = 64 if name == "transformer" else 32
    cfg = tiny_train(tmp_path / name, model=name, dim=dim, steps=30, batch_size=8, lr=3e-3,
                     layer=TINY_LAYER.get(name, {}))
    s = run_training(cfg, progress=False)
    losses = _losses(tmp_path / name)
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1, (name, first, last)
    assert s["complete"] and s["steps"] == 30 and s["model"] == name
    assert math.isfinite(s["val_loss"]) and s["val_bpb"] == pytest.approx(s["val_loss"] / math.log(2))


def test_train_state_keeps_the_last_100_losses():
    """The summary's loss is the mean of ``TrainState.losses``: the last 100 training losses (the
    reference's window), restored with a checkpoint's progress."""
    state = trainer.TrainState(None, None, None)
    for i in range(150):
        state.advance(float(i), tokens=10, seconds=0.1)
    assert list(state.losses) == [float(i) for i in range(50, 150)]
    restored = trainer.TrainState(None, None, None)
    restored.load_progress(state.progress(complete=False))
    assert list(restored.losses) == list(state.losses) and (restored.step, restored.tokens) == (150, 1500)


def test_bf16_and_mixed_precision_run(tiny_train, tmp_path):
    from rnnlab.data import load_splits
    from rnnlab.train.runtime import evaluate_run

    for prec in ("bf16", "bf16-mixed"):
        s = run_training(tiny_train(tmp_path / prec, precision=prec, steps=5), progress=False)
        assert s["complete"] and math.isfinite(s["loss"]) and s["precision"] == prec
    _, model, _ = RunDir(tmp_path / "bf16").load("cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    # bf16-mixed keeps fp32 weights and evaluates under bf16 autocast: fp32 evaluation differs
    rcfg, model, _ = RunDir(tmp_path / "bf16-mixed").load("cpu")
    assert next(model.parameters()).dtype == torch.float32
    mixed = evaluate_run(model, load_splits().val, rcfg)["loss"]
    assert mixed == s["val_loss"]
    rcfg.run.precision = "fp32"
    assert abs(evaluate_run(model, load_splits().val, rcfg)["loss"] - mixed) > 1e-6


# ----------------------------------------------------------------------------- run folder
def test_run_folder_contents(tiny_train, tmp_path):
    run = tmp_path / "run"
    s = run_training(tiny_train(run, steps=12, eval_every=5, checkpoint_every=4), progress=False)
    assert {p.name for p in run.iterdir()} >= {"config.json", "env.json", "metrics.jsonl", "eval.jsonl",
                                               "summary.json", "ckpt", "tb"}
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert all(set(r) == METRIC_KEYS for r in recs)
    assert recs[-1]["tokens"] == 12 * 4 * 32 and recs[0]["peak_mem_gib"] is None
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [5, 10, 12]
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary == json.loads(json.dumps(s))
    assert summary["loss"] == pytest.approx(sum(r["loss"] for r in recs) / 12)
    assert summary["val_loss"] == evals[-1]["val_loss"] and summary["complete"] is True
    assert summary["model_options"] == {}  # every model setting at its default
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["dim"] == 32 and cfg["steps"] == 12 and cfg["optimizer"] == "schedulefree-adamw"
    env = json.loads((run / "env.json").read_text())
    assert env["versions"]["torch"] and env["device"] == "cpu"
    assert {"flash-linear-attention", "fla-core", "transformers", "wrapt", "mamba-ssm"} <= set(env["versions"])
    assert env["cpu_count"] >= 1 and len(env["load_avg"]) == 3  # the machine's load as the run started
    # tied head stored once; the checkpoint's weights reproduce the final held-out loss exactly
    from safetensors import safe_open

    ckpt = RunDir(run).checkpoint()
    assert ckpt.path == run / "ckpt" / "step-000012"
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-000008", "step-000012"]  # keep 2
    with safe_open(str(ckpt.weights), "pt") as f:
        keys = set(f.keys())
    assert "embed.weight" in keys and "head.weight" not in keys
    rcfg, model, step = RunDir(run).load("cpu")
    assert step == 12 and model.head.weight is model.embed.weight
    from rnnlab.data import load_splits
    from rnnlab.train.runtime import evaluate_run

    r = evaluate_run(model, load_splits().val, rcfg)  # the run's eval settings (windows, batch, cap)
    assert r["loss"] == summary["val_loss"] and r["bytes"] == (4096 - 1) // 32 * 32


def test_one_process_run_records_no_distributed_mode(tiny_train, tmp_path):
    """A run in one process records ``world_size`` 1 and ``distributed`` None in its summary, also
    when ``--distributed ddp`` was asked for: it trained as a plain run (a note says so), and its
    records must not claim a wrapper that never ran."""
    run = tmp_path / "run"
    s = run_training(tiny_train(run, steps=1, distributed="ddp"), progress=False)
    for summary in (s, json.loads((run / "summary.json").read_text())):
        assert summary["world_size"] == 1 and "distributed" in summary and summary["distributed"] is None


def test_config_file_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('steps = 7\nlr = 1e-3\nbatch_size = 8\n[model]\nmodel = "mingru"\ndim = 48\n'
                    'depth = 3\n[model.layer]\nexpansion = 2.0\n')
    cfg = load_config(toml, {"lr": 5e-4, "minutes": 2.0, "dim": 64, "seq_len": None})
    assert cfg.model.model == "mingru" and cfg.model.dim == 64 and cfg.model.depth == 3
    assert cfg.model.layer == {"expansion": 2.0} and cfg.data.batch_size == 8 and cfg.data.seq_len == 512
    assert cfg.optim.lr == 5e-4 and cfg.budget.minutes == 2.0 and cfg.budget.steps is None  # one budget: flag wins
    yml = tmp_path / "c.yaml"
    yml.write_text("model: e1\ndim: 40\ndepth: 2\ntokens: 1000\nbetas: [0.9, 0.95]\n")
    cfg = load_config(yml).validate()
    assert (cfg.model.model, cfg.model.dim, cfg.budget.tokens, cfg.optim.betas) == ("e1", 40, 1000, (0.9, 0.95))
    assert cfg.max_steps() == math.ceil(1000 / (16 * 512))
    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 3\n")
    with pytest.raises(ValueError, match="unknown config file .*stepz"):
        load_config(bad)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kw, msg", [
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(seq_len=10**9), "seq_len must be"),
    (dict(batch_size=65536, seq_len=65536), "tokens per step"),
    (dict(optimizer="sgd"), "optimizer must be one of"),
    (dict(precision="fp16"), "precision must be one of"),
    (dict(lr=-1.0), "lr must be a positive"),
    (dict(lr=float("nan")), "lr must be a positive"),
    (dict(steps=5, minutes=1.0), "give one budget"),
    (dict(steps=None, minutes=1.0, optimizer="adamw"), "adamw decays its LR"),
    (dict(steps=5, warmup_steps=10), "warmup_steps"),
    (dict(betas=(0.9, 1.5)), "betas must be"),
    (dict(grad_clip=-1.0), "grad_clip must be"),
    (dict(device="tpu"), "device must be"),
    (dict(data="/nonexistent/corpus.txt"), "data file not found"),
])
def test_validate_messages(kw, msg):
    """Each bad setting is refused with its message, where the value is read or at validation."""
    with pytest.raises((ValueError, FileNotFoundError), match=msg):
        apply_overrides(TrainConfig(), kw).validate()


def test_resume_mismatch_ignores_budget_and_logging():
    a = TrainConfig.from_dict({"steps": 10})
    b = TrainConfig.from_dict({"steps": 20, "eval_every": 5, "out": "x", "log_every": 3, "checkpoint_every": 7})
    assert resume_mismatch(a.to_dict(), b) is None
    c = TrainConfig.from_dict({"steps": 10, "lr": 1e-3})
    assert resume_mismatch(a.to_dict(), c) == ("lr", 3e-4, 1e-3)
    d = TrainConfig.from_dict({"steps": 10, "dim": 128})
    assert resume_mismatch(a.to_dict(), d) == ("model.dim", 256, 128)


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("optimizer", ["schedulefree-adamw", "adamw"])
def test_resume_is_bit_exact(optimizer, tiny_train, tmp_path, monkeypatch, ctrl_c_on_call):
    # E1 is the hard case: its spectral-norm vector u is a plain attribute that evolves in training.
    kw = dict(steps=20, optimizer=optimizer, warmup_steps=3, lr=3e-3)
    straight = run_training(tiny_train(tmp_path / "a", eval_every=4, checkpoint_every=7, **kw),
                            progress=False)

    ctrl_c_on_call(Trainer, "train_step", call=10)
    part = run_training(tiny_train(tmp_path / "b", eval_every=4, **kw), progress=False)
    assert part["complete"] is False and part["steps"] == 10  # Ctrl-C in step 10: finish it, save
    assert part["val_step"] == 8  # its scores are step 8's evaluation's, which the summary says
    monkeypatch.undo()
    resumed = run_training(tiny_train(tmp_path / "b", eval_every=4, resume=True, **kw), progress=False)

    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(la) == len(lb) == 20 and la == lb  # bitwise: same floats
    assert resumed["loss"] == straight["loss"] and resumed["val_loss"] == straight["val_loss"]
    assert resumed["steps"] == resumed["val_step"] == 20 and resumed["complete"] is True
    from safetensors.torch import load_file

    wa, wb = (load_file(RunDir(tmp_path / r).checkpoint().weights) for r in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: an illegal memory access"),
                                   OSError(28, "No space left on device"), ValueError("bad batch")])
def test_an_unexpected_error_in_training_is_recorded_and_raised_as_it_came(tiny_train, tmp_path, monkeypatch, error):
    """An error the trainer has no message of its own for (a kernel's, a log write's) still ends
    the run with summary.json saying so (status "failed"), and propagates unchanged."""
    real, calls = Trainer.train_step, [0]

    def step(self, batch):
        calls[0] += 1
        if calls[0] == 3:
            raise error
        return real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)
    run = tmp_path / "r"
    with pytest.raises(type(error)) as raised:
        run_training(tiny_train(run, steps=8), progress=False)
    assert raised.value is error
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["complete"], summary["steps"], summary["error"]) == (False, 2, f"{type(error).__name__}: {error}")
    assert RunDir(run).status() == "failed"


def test_second_ctrl_c_aborts_and_keeps_checkpoint(tiny_train, tmp_path, monkeypatch, ctrl_c_on_call):
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=4), progress=False)
    ctrl_c_on_call(Trainer, "train_step", call=2, presses=2)
    with pytest.raises(KeyboardInterrupt, match=r"aborted by Ctrl-C at step 5; last good checkpoint kept at "
                                                r".*ckpt/step-000005 \(step 5\)"):
        run_training(tiny_train(run, steps=8, checkpoint_every=1, resume=True), progress=False)
    assert RunDir(run).checkpoint().step == 5  # step 5 was checkpointed, step 6 aborted
    summary = json.loads((run / "summary.json").read_text())
    assert "aborted by Ctrl-C at step 5" in summary["error"] and summary["aborted"] is True
    assert RunDir(run).status() == "incomplete"  # stopped, not failed
    monkeypatch.undo()
    s = run_training(tiny_train(run, steps=8, resume=True), progress=False)
    assert s["complete"] and s["steps"] == 8


def test_a_resumed_run_that_fails_before_its_first_step_keeps_its_files(tiny_train, tmp_path, monkeypatch):
    """A fresh run that fails before its first step takes away what its start wrote; a resumed
    one failing there (out of memory building the optimizer, say) leaves the run it continues whole."""
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    before = sorted(p.name for p in run.iterdir())

    def fails(*args, **kwargs):
        raise RuntimeError("no optimizer here")

    monkeypatch.setattr(trainer, "build_optimizer", fails)
    with pytest.raises(RuntimeError, match="no optimizer here"):
        run_training(tiny_train(run, steps=4, resume=True), progress=False)
    assert sorted(p.name for p in run.iterdir()) == before and RunDir(run).checkpoint().step == 2
    assert RunDir(run).status() == "complete"


def test_a_ctrl_c_in_the_step_that_spends_the_budget_lets_the_run_end(tiny_train, tmp_path, ctrl_c_on_call):
    """Guarantee 3b: a first Ctrl-C during the last step no longer costs the run its end: the final
    evaluation and checkpoint are done, and the summary says complete and interrupted_at_end."""
    run = tmp_path / "r"
    ctrl_c_on_call(Trainer, "train_step", call=2)
    s = run_training(tiny_train(run, steps=2), progress=False)
    assert s["complete"] and s["interrupted_at_end"] and s["steps"] == 2
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1]).get("final") is True
    assert json.loads((run / "ckpt/step-000002/manifest.json").read_text())["complete"] is True


def test_a_ctrl_c_on_a_checkpoint_step_saves_it_once(tiny_train, tmp_path, monkeypatch, ctrl_c_on_call):
    """docs/reliability.md 3d: a stop after a step that was just checkpointed does not write it again."""
    from rnnlab.train.checkpoint import Checkpointer

    saves, real = [], Checkpointer.save

    def counted(self, state, complete):
        saves.append(state.step)
        return real(self, state, complete)

    monkeypatch.setattr(Checkpointer, "save", counted)
    ctrl_c_on_call(Trainer, "train_step", call=2)
    s = run_training(tiny_train(tmp_path / "r", steps=4, checkpoint_every=2), progress=False)
    assert not s["complete"] and s["steps"] == 2 and saves == [2]


def test_resume_extends_budget_exactly(tiny_train, tmp_path):
    run_training(tiny_train(tmp_path / "a", steps=16), progress=False)
    run_training(tiny_train(tmp_path / "b", steps=8), progress=False)
    s = run_training(tiny_train(tmp_path / "b", steps=16, resume=True), progress=False)
    assert s["steps"] == 16 and _losses(tmp_path / "a") == _losses(tmp_path / "b")
    evals = [json.loads(x)["step"] for x in (tmp_path / "b/eval.jsonl").read_text().splitlines()]
    assert evals == [8, 16]
    # config.json records the run, not how this session was started: reused as --config it resumes nothing
    saved = json.loads((tmp_path / "b/config.json").read_text())
    assert saved["resume"] is False and saved["overwrite"] is False and saved["steps"] == 16


def test_resume_extending_a_cosine_takes_the_new_budgets_lr_from_its_first_step(tiny_train, tmp_path):
    """AdamW's cosine ends at 0 on the old budget; extended, every resumed step takes the longer
    cosine's LR (the first one trained at lr 0 before: the old budget's last value)."""
    from rnnlab.train.optim import WarmupCosine

    kw = dict(optimizer="adamw", lr_schedule="cosine", lr=1e-3)
    run_training(tiny_train(tmp_path / "b", steps=8, **kw), progress=False)
    run_training(tiny_train(tmp_path / "b", steps=16, resume=True, **kw), progress=False)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    new = WarmupCosine(0, 16)
    assert lrs[8:] == pytest.approx([1e-3 * new(s) for s in range(8, 16)])


def test_resume_past_a_smaller_budget_is_refused_and_changes_nothing(tiny_train, tmp_path):
    """A run resumed with a budget it has already passed (steps, or minutes of training time)
    trains nothing and keeps its records
    (its config.json still says the budget it ran), with one line saying so; the same budget
    again is allowed (a finished run resumed)."""
    run_training(tiny_train(tmp_path / "r", steps=8), progress=False)
    def records():  # every file of the run but the folder's lock (who holds it, and since when)
        return {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file() and p.name != ".lock"}

    before = records()
    with pytest.raises(ValueError, match=r"is at step 8, past this budget \(steps 4\): nothing to train, "
                                         r"nothing changed \(a larger --steps extends a run\)"):
        run_training(tiny_train(tmp_path / "r", steps=4, resume=True), progress=False)
    assert records() == before
    assert run_training(tiny_train(tmp_path / "r", steps=8, resume=True), progress=False)["steps"] == 8

    before = records()  # a --minutes budget the run's training time had passed before its last step
    trained = RunDir(tmp_path / "r").minutes_trained(7)
    metrics = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert trained == pytest.approx((metrics[6]["elapsed_s"] - metrics[6]["warmup_s"]) / 60) and trained > 0
    with pytest.raises(ValueError, match=rf"is at step 8, and had trained {trained:.4g} minutes by step 7, past this "
                                         r"budget \(minutes 1e-09\): nothing to train, nothing changed \(a larger --minutes"):
        run_training(tiny_train(tmp_path / "r", steps=None, minutes=1e-9, resume=True), progress=False)
    assert records() == before


def test_resume_with_the_minutes_budget_a_run_ended_on_is_allowed(tiny_train, tmp_path):
    """A run that stopped on its --minutes budget ran its last step past it (the trainer starts a
    step while the time is under the budget); resumed with that budget again, also after a
    session with another budget, it is complete and trains nothing."""
    first = run_training(tiny_train(tmp_path / "r", steps=None, minutes=0.002), progress=False)
    assert first["complete"] and RunDir(tmp_path / "r").minutes_trained(first["steps"]) >= 0.002
    again = run_training(tiny_train(tmp_path / "r", steps=None, minutes=0.002, resume=True), progress=False)
    assert again["steps"] == first["steps"]
    run_training(tiny_train(tmp_path / "r", steps=first["steps"], resume=True), progress=False)
    again = run_training(tiny_train(tmp_path / "r", steps=None, minutes=0.002, resume=True), progress=False)
    assert again["steps"] == first["steps"]


def test_resume_is_refused_once_the_training_time_reaches_the_minutes_budget(tiny_train, tmp_path):
    """The trainer starts a step while the training time is under --minutes: a run whose time by
    the step before its checkpoint equals the budget is past it (the same rule, at equality)."""
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=3), progress=False)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    records[1].update(elapsed_s=75.0, warmup_s=15.0)  # step 2: one minute of budget time
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"is at step 3, and had trained 1 minute by step 2, past this budget "
                                         r"\(minutes 1\)"):
        RunDir(run).prepare(tiny_train(run, steps=None, minutes=1, resume=True))
    rundir = RunDir(run)
    assert rundir.prepare(tiny_train(run, steps=None, minutes=1.001, resume=True)).step == 3
    rundir.release()


def test_a_minutes_budget_is_spent_once_the_training_time_reaches_it(tiny_train, tmp_path):
    """The trainer takes no step once the training time (warm-up left out) equals --minutes: the rule
    by which ``RunDir.past_budget`` refuses to resume such a run (the test above), at equality too."""
    import types

    cfg = tiny_train(tmp_path / "r", steps=None, minutes=1)

    def spent(elapsed_s: float) -> bool:
        state = types.SimpleNamespace(step=3, elapsed_s=elapsed_s, warmup_s=15.0)
        return Trainer.budget_spent(types.SimpleNamespace(cfg=cfg, state=state))

    assert spent(75.0) and spent(80.0) and not spent(74.9)


def test_a_finished_run_resumed_keeps_its_tok_per_s(tiny_train, tmp_path):
    """A complete run resumed with its own budget trains nothing and keeps the tok/s its training
    measured (not the whole run's average over a session that only evaluated)."""
    first = run_training(tiny_train(tmp_path / "r", steps=6), progress=False)
    again = run_training(tiny_train(tmp_path / "r", steps=6, resume=True), progress=False)
    assert again["steps"] == 6 and again["tok_per_s"] == first["tok_per_s"]


def test_a_finished_run_resumed_writes_no_checkpoint_again(tiny_train, tmp_path, monkeypatch):
    """Resumed with its own budget, a finished run trains nothing, its checkpoint of that step is
    not written again (the run folder may be an archive), and its final evaluation, restored with
    the checkpoint, is not run again: eval.jsonl keeps one record of that step."""
    from rnnlab.train import checkpoint

    first = run_training(tiny_train(tmp_path / "r", steps=2), progress=False)
    evals = (tmp_path / "r" / "eval.jsonl").read_text()
    commits = []
    monkeypatch.setattr(checkpoint.Checkpointer, "_commit", lambda self, staged, step: commits.append(step))
    s = run_training(tiny_train(tmp_path / "r", steps=2, resume=True), progress=False)
    assert s["complete"] and s["steps"] == 2 and commits == []
    assert (tmp_path / "r" / "eval.jsonl").read_text() == evals and s["val_bpb"] == first["val_bpb"]


def test_a_final_evaluation_cut_by_a_second_ctrl_c_is_scored_by_the_next_resume_only(
        tiny_train, tmp_path, monkeypatch, capsys):
    """A second Ctrl-C in the final evaluation leaves a checkpoint of the last step without it
    (guarantee 3b). ``--resume`` says so and scores it from the checkpoint, whose step it cannot
    write again; a later resume takes that evaluation from eval.jsonl (these very weights') and has
    nothing to train or score. Each resume scored it again before, an entry in env.json's
    ``scoring_sessions`` each time."""
    import signal

    real, run = Trainer.evaluate, tmp_path / "r"

    def evaluate(self, final=False):
        if final:
            for _ in range(2):
                signal.raise_signal(signal.SIGINT)
        return real(self, final=final)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt, match="aborted by Ctrl-C at step 3"):
        run_training(tiny_train(run, steps=3, eval_every=2), progress=False)
    monkeypatch.undo()
    capsys.readouterr()
    finals, said = [], []
    for _ in range(2):
        s = run_training(tiny_train(run, steps=3, eval_every=2, resume=True), progress=False)
        said.append(capsys.readouterr().err)
        records = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
        finals.append([r for r in records if r.get("final")])
        assert [r["step"] for r in records] == [2, 3] and s["complete"] and s["val_bpb"] == finals[-1][0]["val_bpb"]
    assert (f"{run} is complete at step 3; scoring its final evaluation from its checkpoint, no training step "
            "(it has no final evaluation yet)") in said[0]
    assert "nothing to train or score" in said[1] and "scoring" not in said[1]
    assert len(finals[0]) == 1 and finals[1] == finals[0]
    assert len(RunDir(run).env()["scoring_sessions"]) == 1


def test_a_complete_run_resumed_to_train_on_is_incomplete_until_it_ends_again(tiny_train, tmp_path):
    """Resumed with a larger budget, a finished run's summary.json stops saying complete as the
    session starts (a session then killed leaves it incomplete under config.json's new budget, not
    complete at the old one); resumed at its own budget, it stays complete."""
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    for steps, status in ((2, "complete"), (4, "incomplete")):
        trainer = Trainer(tiny_train(run, steps=steps, resume=True), progress=False)  # set up, not trained
        trainer.rundir.release()
        assert RunDir(run).status() == status and RunDir(run).summary()["steps"] == 2
    assert run_training(tiny_train(run, steps=4, resume=True), progress=False)["complete"]
    assert RunDir(run).status() == "complete"


def test_a_failed_run_resumed_is_not_failed_for_the_earlier_cause(tiny_train, tmp_path):
    """A failed run (summary.json records an error: a full disk, say) resumed: its summary loses the
    error as the session starts, so that a session then killed (``kill -9``: no summary of its own)
    leaves it incomplete, not failed for the earlier session's cause (bench's status, the report's
    "Not complete" list)."""
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    summary = RunDir(run).summary()
    RunDir(run).write_summary({**summary, "complete": False, "error": "could not write the checkpoint of step 3"})
    assert RunDir(run).status() == "failed"
    trainer = Trainer(tiny_train(run, steps=4, resume=True), progress=False)  # set up, not trained
    trainer.rundir.release()
    assert RunDir(run).status() == "incomplete" and RunDir(run).summary() == {**summary, "complete": False}


def test_an_aborted_run_resumed_loses_its_aborted_flag(tiny_train, tmp_path):
    """A run aborted by a second Ctrl-C (summary.json: its error and ``"aborted": true``) resumed: the
    summary loses both as the session starts, so that a session then killed (``kill -9``) does not
    leave it saying it was aborted for an earlier session's stop."""
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    summary = RunDir(run).summary()
    RunDir(run).write_summary({**summary, "complete": False, "error": "aborted by Ctrl-C at step 3", "aborted": True})
    trainer = Trainer(tiny_train(run, steps=4, resume=True), progress=False)  # set up, not trained
    trainer.rundir.release()
    assert RunDir(run).summary() == {**summary, "complete": False}


def test_a_run_resumed_on_other_data_is_refused_and_nothing_changes(tiny_train, tmp_path):
    """The corpus file replaced under the same path (same config) would give the resumed run other
    batches: refused in one line naming both sizes, or, sizes equal, both fingerprints; the folder
    untouched; the same file resumes."""
    from rnnlab.data import load_splits

    data, run = tmp_path / "corpus.txt", tmp_path / "r"
    data.write_bytes(bytes(range(256)) * 40)
    run_training(tiny_train(run, steps=2, data=str(data)), progress=False)
    splits = load_splits(str(data), None, 0.01)
    assert json.loads((run / "env.json").read_text())["corpus"] == {
        "train_bytes": len(splits.train), "heldout_bytes": len(splits.val),
        "train_fingerprint": splits.train.fingerprint(), "heldout_fingerprint": splits.val.fingerprint()}
    data.write_bytes(bytes(range(256)) * 41)

    def files():  # the lock file aside: taking the folder's lock records the taker (RunLock)
        return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK}

    before = files()
    with pytest.raises(ValueError, match=rf"--resume: the training split is now 10,391 bytes, but the run in "
                                         rf"{re.escape(str(run))} trained with 10,137: the data changed since"):
        run_training(tiny_train(run, steps=4, data=str(data), resume=True), progress=False)
    assert files() == before
    trained = json.loads((run / "env.json").read_text())["corpus"]["train_fingerprint"]
    data.write_bytes(bytes(range(255, -1, -1)) * 40)  # the same sizes, other bytes
    with pytest.raises(ValueError, match=rf"--resume: the training split holds other bytes than the run in "
                                         rf"{re.escape(str(run))} trained with \(the same 10,137 bytes, fingerprint "
                                         rf"[0-9a-f]{{16}}, not {trained}\): the data changed since"):
        run_training(tiny_train(run, steps=4, data=str(data), resume=True), progress=False)
    assert files() == before
    data.write_bytes(bytes(range(256)) * 40)
    assert run_training(tiny_train(run, steps=4, data=str(data), resume=True), progress=False)["complete"]



def test_heldout_bytes_scored_is_whole_windows_of_the_split_under_the_cap(tiny_train, tmp_path):
    """The bytes ``evaluate_run`` scores: whole ``seq_len`` windows of the first ``min(split, cap)``
    bytes (cap 0 = all). A cap above the split's size scores the whole split, so a run whose
    ``--eval-bytes`` exceeds its held-out split is not found lacking (and rescored) on every resume."""
    from rnnlab.train.runtime import final_scores_lacking, heldout_bytes_scored

    cfg = tiny_train(tmp_path / "r")  # seq_len 32, eval_bytes 4096
    assert heldout_bytes_scored(10_000, cfg) == (4095 // 32) * 32 == 4064
    assert heldout_bytes_scored(1000, cfg) == (999 // 32) * 32 == 992  # the split, not the cap
    assert heldout_bytes_scored(1000, cfg, cap=0) == heldout_bytes_scored(1000, cfg, cap=10**9) == 992
    assert heldout_bytes_scored(1000, cfg, cap=100) == 96
    assert final_scores_lacking(992, None, cfg, 1000) == []
    assert [what for what, _ in final_scores_lacking(4064, None, cfg, 1000)] == ["held-out"]


def test_eval_batch_is_the_larger_of_the_batch_and_the_eval_token_budget(tiny_train, tmp_path):
    """Windows per evaluation batch: ``--eval-batch-size`` when given, else the larger of
    ``--batch-size`` and ``EVAL_TOKENS // seq_len`` (evaluation keeps no activations, so it takes
    bigger batches than training; the mean it computes does not depend on the batching)."""
    from rnnlab.train.runtime import EVAL_TOKENS, eval_batch

    assert eval_batch(tiny_train(tmp_path / "r")) == EVAL_TOKENS // 32 == 512  # batch 4, seq_len 32
    assert eval_batch(tiny_train(tmp_path / "r", batch_size=1024)) == 1024
    assert eval_batch(tiny_train(tmp_path / "r", eval_batch_size=3)) == 3

def test_a_finished_run_resumed_with_new_eval_bytes_rescores_its_final_evaluation(tiny_train, tmp_path, capsys):
    """A complete run resumed at its own budget with a new --eval-bytes trains no step: its final
    evaluation is scored again from the checkpoint on the new cap, replacing the old record in
    eval.jsonl and summary.json (the training's loss, speed and device kept), with a line saying so;
    the same cap again scores nothing; a larger budget extends the run, its new final evaluation
    scoring the new cap. ``rnnlab eval --eval-bytes`` of the run gives the same number."""
    from rnnlab.cli import main

    run = tmp_path / "r"
    first = run_training(tiny_train(run, steps=2), progress=False)
    capsys.readouterr()
    again = run_training(tiny_train(run, steps=2, resume=True, eval_bytes=2048), progress=False)
    assert f"{run} is complete at step 2; scoring its final evaluation again from its checkpoint, no training step " \
           f"(held-out split scored on 4,064 bytes, --eval-bytes 2,048 scores 2,016)" in capsys.readouterr().err
    assert (again["steps"], again["val_bytes"], again["loss"]) == (2, 2016, first["loss"])
    assert again["val_bpb"] != first["val_bpb"]
    assert {k: again[k] for k in trainer.SESSION_MEASURED} == {k: first[k] for k in trainer.SESSION_MEASURED}
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["bytes"], e["val_bpb"]) for e in evals] == [(2, 2016, again["val_bpb"])]
    assert main(["eval", "--run", str(run), "--eval-bytes", "2048", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(again["val_bpb"], rel=1e-6)
    same = run_training(tiny_train(run, steps=2, resume=True, eval_bytes=2048), progress=False)
    assert "scoring its final evaluation again" not in capsys.readouterr().err and same["val_bpb"] == again["val_bpb"]
    longer = run_training(tiny_train(run, steps=3, resume=True, eval_bytes=1024), progress=False)
    assert longer["steps"] == 3 and longer["val_bytes"] == 992


def test_a_session_of_no_step_takes_its_rates_from_the_checkpoint_when_the_summary_is_older(tiny_train, tmp_path):
    """A run killed after its budget's last checkpoint and before its summary keeps the summary of
    an earlier session (here: of step 5). Resumed, it trains no step; its summary's rates and wall
    time are the checkpoint's, of all 8 steps, not the older summary's, while the device and memory
    of the training sessions are kept."""
    run = tmp_path / "r"
    done = run_training(tiny_train(run, steps=8), progress=False)
    older = {**done, "steps": 5, "tokens": 640, "complete": False, "tok_per_s": 123.0, "wall_s": 1.0,
             "tok_per_wall_s": 640.0, "peak_mem_gib": 7.5}
    (run / "summary.json").write_text(json.dumps(older))
    again = run_training(tiny_train(run, steps=8, resume=True), progress=False)
    assert again["complete"] and (again["steps"], again["loss"]) == (8, done["loss"])
    assert again["tok_per_s"] == pytest.approx(done["tok_per_s"])
    assert done["wall_s"] - 1.0 < again["wall_s"] <= done["wall_s"]  # the checkpoint's, written before the summary
    assert again["tok_per_wall_s"] == pytest.approx(done["tokens"] / again["wall_s"])
    assert (again["peak_mem_gib"], again["device"]) == (7.5, done["device"])


def test_new_eval_bytes_for_a_finished_run_train_only_where_a_step_is_left(tiny_train, tmp_path, capsys):
    """What a resume with a new --eval-bytes does reads the checkpoint it starts from, not
    summary.json alone: a run whose last checkpoint is damaged trains its last steps again, and its
    final evaluation scores the new cap; a run that ended on its --minutes budget trains nothing
    more and re-scores, as for a --steps budget."""
    run = tmp_path / "damaged"
    run_training(tiny_train(run, steps=2, checkpoint_every=1), progress=False)
    weights = run / "ckpt" / "step-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    again = run_training(tiny_train(run, steps=2, checkpoint_every=1, resume=True, eval_bytes=2048), progress=False)
    assert "resuming at step 1" in capsys.readouterr().err.replace(f" {run} ", " ")
    assert again["steps"] == 2 and again["val_bytes"] <= 2048
    timed = tmp_path / "timed"
    first = run_training(tiny_train(timed, steps=None, minutes=0.002), progress=False)
    capsys.readouterr()
    rescored = run_training(tiny_train(timed, steps=None, minutes=0.002, resume=True, eval_bytes=2048), progress=False)
    assert "scoring its final evaluation again" in capsys.readouterr().err
    assert (rescored["steps"], rescored["val_bytes"]) == (first["steps"], 2016)


def test_a_rescore_stopped_midway_keeps_the_final_record_it_would_replace(tiny_train, tmp_path, monkeypatch):
    """A second Ctrl-C (or a kill) while a complete run's final evaluation is scored again for a new
    --extra-val-data: eval.jsonl keeps the final record it had (it was dropped as the session began,
    and a later, longer resume then had no final record of that step); a re-score that ends leaves one."""
    run, extra = tmp_path / "r", tmp_path / "extra.txt"
    extra.write_bytes(bytes(range(32, 127)) * 20)
    first = run_training(tiny_train(run, steps=2), progress=False)
    before = (run / "eval.jsonl").read_text()
    evaluate_run = trainer.evaluate_run

    def stopped_on_the_extra_file(model, split, cfg, **kwargs):
        if split.path == extra:
            raise KeyboardInterrupt
        return evaluate_run(model, split, cfg, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_run", stopped_on_the_extra_file)
    with pytest.raises(KeyboardInterrupt, match="aborted by Ctrl-C at step 2"):
        run_training(tiny_train(run, steps=2, resume=True, extra_val_data=str(extra)), progress=False)
    assert (run / "eval.jsonl").read_text() == before
    monkeypatch.setattr(trainer, "evaluate_run", evaluate_run)
    again = run_training(tiny_train(run, steps=2, resume=True, extra_val_data=str(extra)), progress=False)
    finals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["val_bpb"], e.get("extra_val_bpb")) for e in finals] == [
        (2, first["val_bpb"], again["extra_val"]["val_bpb"])]
    longer = run_training(tiny_train(run, steps=3, resume=True, extra_val_data=str(extra)), progress=False)
    finals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["final"]) for e in finals] == [(2, True), (3, True)]
    assert finals[-1]["val_bpb"] == longer["val_bpb"]


def test_a_rescore_keeps_the_trainings_environment_in_env_json(tiny_train, tmp_path, monkeypatch):
    """A session that only scores a finished run again (a new --extra-val-data) keeps env.json's
    environment of the training (its load, device, commit), which the report reads beside the
    training's tok/s kept in summary.json: a busy machine at the re-score marked the training's
    speed as measured busy (a GPU run re-scored elsewhere lost its GPU and MFU). The scoring
    session is listed in ``scoring_sessions``, and kept when the run trains on."""
    from rnnlab.bench.report import cpu_runs_start_load
    from rnnlab.train import runtime

    run, extra = tmp_path / "r", tmp_path / "extra.txt"
    extra.write_bytes(bytes(range(32, 127)) * 20)
    monkeypatch.setattr(runtime, "machine_load", lambda: {"load_avg": [0.5, 0.5, 0.5], "cpu_count": 4})
    run_training(tiny_train(run, steps=2), progress=False)
    trained = json.loads((run / "env.json").read_text())
    monkeypatch.setattr(runtime, "machine_load", lambda: {"load_avg": [99.0, 99.0, 99.0], "cpu_count": 4})
    run_training(tiny_train(run, steps=2, resume=True, extra_val_data=str(extra)), progress=False)
    env = json.loads((run / "env.json").read_text())
    assert {k: v for k, v in env.items() if k != "scoring_sessions"} == trained
    assert [sorted(s) for s in env["scoring_sessions"]] == [sorted(SESSION_KEYS)]
    assert cpu_runs_start_load([{"dir": "r", "env": env}])["busy"] == []
    run_training(tiny_train(run, steps=3, resume=True, extra_val_data=str(extra)), progress=False)
    env = json.loads((run / "env.json").read_text())
    assert env["load_avg"] == [99.0, 99.0, 99.0] and len(env["earlier_sessions"]) == 1
    assert len(env["scoring_sessions"]) == 1


def test_a_step_is_timed_on_an_mps_device_as_on_cuda(monkeypatch):
    """MPS queues its work as CUDA does: the step's timer (tok/s, a --minutes budget) waits for it
    at both ends, or the optimizer's work of a step would be counted in the next one's time."""
    from rnnlab.train import runtime

    waited = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    runtime.sync(torch.device("mps"))
    runtime.sync(torch.device("cpu"))
    assert waited == ["mps"]


def test_steady_tok_per_s_leaves_out_the_warm_up_tokens_and_time():
    state = trainer.TrainState(None, None, None)
    for i in range(5):
        state.advance(1.0, 100, 2.0 if i < 3 else 0.5, warmup=i < 3)
    assert (state.elapsed_s, state.warmup_s, state.warmup_tokens) == (7.0, 6.0, 300)
    assert state.steady_tok_per_s() == 200 / 1.0
    only_warm = trainer.TrainState(None, None, None)
    only_warm.advance(1.0, 100, 2.0, warmup=True)
    assert only_warm.steady_tok_per_s() is None  # no step past the warm-up (and no division by zero)


def test_progress_from_an_older_checkpoint_fills_what_it_lacks():
    """A checkpoint from before wall_s, warmup_s and warmup_tokens were saved: its wall time is
    its training time, no warm-up time, warm-up tokens unknown (so no steady tok/s)."""
    state = trainer.TrainState(None, None, None)
    state.load_progress({"step": 5, "tokens": 640, "elapsed_s": 2.5, "losses": [3.0, 2.0], "last_eval": None})
    assert (state.step, state.tokens, state.elapsed_s, state.wall_s, state.warmup_s, state.warmup_tokens) == \
        (5, 640, 2.5, 2.5, 0.0, None)
    assert list(state.losses) == [3.0, 2.0] and state.steady_tok_per_s() is None
    state.load_progress({**state.progress(False), "wall_s": 9.0})
    assert state.wall_s == 9.0


def test_steady_tok_per_s_counts_every_session(tiny_train, tmp_path):
    """A resumed run's tok/s is over all its sessions' steps but each process's first
    ``WARMUP_STEPS`` (compilation): not the last session's alone."""
    from rnnlab.train.config import WARMUP_STEPS

    first = run_training(tiny_train(tmp_path / "r", steps=6), progress=False)
    resumed = run_training(tiny_train(tmp_path / "r", steps=12, resume=True), progress=False)
    per_step = first["tokens"] // 6
    for s, processes in ((first, 1), (resumed, 2)):
        steady = (s["tokens"] - processes * WARMUP_STEPS * per_step) / (s["time_s"] - s["warmup_s"])
        assert s["tok_per_s"] == pytest.approx(steady)


def test_a_run_of_only_warm_up_steps_has_no_steady_tok_per_s(tiny_train, tmp_path):
    """A run no longer than the warm-up (``WARMUP_STEPS``: compilation) has no steady rate to
    report: its summary's ``tok_per_s`` is None (the report shows "-"), not the whole run's rate
    under the steady rate's name; ``tok_per_wall_s`` still gives its rate. One step more has one."""
    from rnnlab.train.config import WARMUP_STEPS

    short = run_training(tiny_train(tmp_path / "short", steps=WARMUP_STEPS), progress=False)
    assert short["tok_per_s"] is None and short["tok_per_wall_s"] > 0
    longer = run_training(tiny_train(tmp_path / "longer", steps=WARMUP_STEPS + 1), progress=False)
    assert longer["tok_per_s"] > 0


def test_wall_clock_rate_counts_every_session(tiny_train, tmp_path, monkeypatch):
    """``tok_per_wall_s`` is tokens over the run's whole wall clock (set-up, evaluation and
    checkpoints included, so at most the training rate), summed over the sessions of a resumed run:
    the first session's set-up takes 1000 s here (its clock jumps after the session starts), and
    the resumed run's wall time goes on from it."""
    import time
    import types

    reads = []

    def clock() -> float:
        reads.append(None)
        return time.perf_counter() + (1000.0 if len(reads) > 1 else 0.0)

    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=clock))
    first = run_training(tiny_train(tmp_path / "r", steps=4), progress=False)
    monkeypatch.setattr(trainer, "time", time)
    resumed = run_training(tiny_train(tmp_path / "r", steps=8, resume=True), progress=False)
    for s in (first, resumed):
        assert s["tok_per_wall_s"] == pytest.approx(s["tokens"] / s["wall_s"]) and s["wall_s"] >= s["time_s"]
    assert 1000 < first["wall_s"] < resumed["wall_s"] < first["wall_s"] + 100 and first["time_s"] < 100


def test_the_run_seed_draws_the_initial_weights(tiny_train, tmp_path):
    """``seed`` sets the initial weights as well as the data order (the seed-spread studies vary
    both): the same seed gives the same weights, another seed other weights."""
    def initial_weights(seed, name):
        t = Trainer(tiny_train(tmp_path / name, seed=seed), progress=False)
        t.rundir.release()
        return torch.cat([p.detach().flatten() for p in t.state.model.parameters()])

    a, b, c = initial_weights(1, "a"), initial_weights(1, "b"), initial_weights(2, "c")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_resume_refuses_a_different_config(tiny_train, tmp_path):
    run_training(tiny_train(tmp_path / "r", steps=3), progress=False)
    with pytest.raises(ValueError, match=r"was made with a different config: field model.dim is 32, not 48"):
        run_training(tiny_train(tmp_path / "r", dim=48, steps=6, resume=True), progress=False)
    with pytest.raises(ValueError, match="field lr is 0.003, not 0.01 \\(a run continues with the settings it was "
                                         "made with: leave that setting as it was, or start a new run"):
        run_training(tiny_train(tmp_path / "r", lr=1e-2, steps=6, resume=True), progress=False)
    with pytest.raises(ValueError, match="already holds a complete run; pass --resume"):
        run_training(tiny_train(tmp_path / "r", steps=6), progress=False)


def test_non_finite_loss_keeps_last_good_checkpoint(tiny_train, tmp_path, monkeypatch):
    run = tmp_path / "nan"
    run_training(tiny_train(run, steps=6, checkpoint_every=3), progress=False)
    before = _digests(run / "ckpt")
    assert sorted(before) == [f"step-00000{s}/{f}" for s in (3, 6) for f in ("manifest.json", "model.safetensors",
                                                                             "state.pt")]

    real_wrap = trainer.wrap_model

    def poisoned(model, cfg):
        fwd, calls = real_wrap(model, cfg), [0]

        def call(x, y):
            calls[0] += 1
            loss = fwd(x, y)
            return loss * float("nan") if calls[0] == 2 else loss

        return call

    monkeypatch.setattr(trainer, "wrap_model", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 8; lower --lr; "
                                                 r"last good checkpoint kept at .*ckpt/step-000006 \(step 6\)"):
        run_training(tiny_train(run, steps=12, checkpoint_every=2, resume=True), progress=False)
    assert _digests(run / "ckpt") == before
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and "non-finite" in summary["error"] and summary["steps"] == 7
    assert "aborted" not in summary and RunDir(run).status() == "failed"
    # resuming after the failure drops the steps logged past the checkpoint
    monkeypatch.undo()
    s = run_training(tiny_train(run, steps=12, resume=True), progress=False)
    assert s["complete"] and [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] \
        == list(range(1, 13))


def test_a_non_finite_gradient_of_a_finite_loss_stops_the_run_before_its_update(tiny_train, tmp_path, monkeypatch):
    """A gradient that overflows while the loss stays finite: its update would make the weights
    non-finite, and the run stopped only later, at the next step's loss or checkpoint, naming that
    step. It stops at the step itself, the weights untouched."""
    run = tmp_path / "r"
    forward_backward = trainer.Trainer.forward_backward

    def overflow_at_step_3(self, batch):
        loss = forward_backward(self, batch)
        if self.state.step == 2:  # the step being taken is step 3
            next(self.state.model.parameters()).grad.view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(trainer.Trainer, "forward_backward", overflow_at_step_3)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite gradient \(norm inf\) of a finite loss \(\d\.\d{4}\) "
                                                 r"at step 3; lower --lr; .*ckpt/step-000002 \(step 2\)"):
        run_training(tiny_train(run, steps=6, checkpoint_every=2), progress=False)
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    _, model, _ = RunDir(run).load("cpu")  # the last checkpoint's weights, finite
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_weights_are_never_checkpointed(tiny_train, tmp_path, monkeypatch):
    """Weights an optimizer step made non-finite while the step's loss was finite are caught at the
    next checkpoint: the run stops there, and the last good checkpoint is neither replaced nor
    pruned in favour of them."""
    run = tmp_path / "r"
    train_step = trainer.Trainer.train_step

    def poison_step_4(self, batch):
        result = train_step(self, batch)
        if self.state.step == 3:  # the step being taken is step 4
            with torch.no_grad():
                next(self.state.model.parameters()).fill_(float("inf"))
        return result

    monkeypatch.setattr(trainer.Trainer, "train_step", poison_step_4)
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights at step 4; lower --lr; last good checkpoint "
                                                 r"kept at .*ckpt/step-000002 \(step 2\)"):
        run_training(tiny_train(run, steps=6, checkpoint_every=2, keep_checkpoints=1), progress=False)
    assert [p.name for p in (run / "ckpt").iterdir()] == ["step-000002"]
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


@pytest.mark.parametrize("before, during", [(0, 1), (1, 1), (0, 2)])
def test_a_ctrl_c_while_a_failure_is_recorded_does_not_hide_it(before, during, tiny_train, tmp_path, monkeypatch,
                                                                capsys):
    """A stop that arrives while the trainer records a failure that ends the run (under torchrun,
    the SIGTERM that follows a peer's death, handled as a Ctrl-C) is a first Ctrl-C, even after
    one in training (``before``): the failure is still recorded and raised, not replaced by a
    KeyboardInterrupt that hides it. A second one there aborts with a message that names it."""
    import signal

    from rnnlab.train import trainer

    def diverge(self, batch):
        for _ in range(before):
            signal.raise_signal(signal.SIGINT)
        raise NonFiniteLossError("non-finite loss (nan) at step 1")

    finish = trainer.Trainer.finish  # what record_failure calls to write summary.json

    def stops_arrive_first(self, **kw):
        for _ in range(during):
            signal.raise_signal(signal.SIGINT)
        return finish(self, **kw)

    monkeypatch.setattr(trainer.Trainer, "train_step", diverge)
    monkeypatch.setattr(trainer.Trainer, "finish", stops_arrive_first)
    with pytest.raises(BaseException) as raised:  # a KeyboardInterrupt too, to fail this test and not the session
        run_training(tiny_train(tmp_path / "r"), progress=False)
    assert f"rnnlab train: {trainer.ENDING} (Ctrl-C again to abort)" in capsys.readouterr().err
    if during == 2:
        assert raised.type is KeyboardInterrupt and str(raised.value) == (
            "aborted by Ctrl-C while recording how the run ended: non-finite loss (nan) at step 1")
        return
    assert raised.type is NonFiniteLossError, repr(raised.value)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["error"] == "non-finite loss (nan) at step 1"


@pytest.mark.parametrize("where", ["message", "logs", "folder"])
def test_a_stop_close_behind_an_abort_keeps_the_aborts_line(where, tiny_train, tmp_path, monkeypatch, capsys,
                                                            ctrl_c_on_call):
    """A stop that arrives as a second Ctrl-C aborts (under torchrun, the SIGTERM a rank gets when
    another ended on its own Ctrl-C, pending with this rank's) does not replace the abort's line:
    while the abort is recorded (``message``: as its line is built) it is a first Ctrl-C; as the logs
    close or the folder is let go, after the trainer's handler is gone, it cuts that and the abort goes
    on. The KeyboardInterrupt names the step and the checkpoint kept, and summary.json records the
    abort; it once came out bare ("aborted by Ctrl-C before training started")."""
    import signal

    from rnnlab.train import metrics, trainer
    from rnnlab.train.checkpoint import Checkpointer
    from rnnlab.train.rundir import RunDir

    target = {"message": (Checkpointer, "kept"), "logs": (metrics.RunLogger, "close"),
              "folder": (RunDir, "release")}[where]
    original = getattr(*target)

    def a_stop_first(self, *args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)  # raises where the trainer's handler is gone (logs, folder)
        except KeyboardInterrupt:
            original(self, *args, **kwargs)  # the close or the release done, then cut all the same
            raise
        return original(self, *args, **kwargs)

    ctrl_c_on_call(trainer.Trainer, "train_step", call=3, presses=2)  # step 3 aborted
    monkeypatch.setattr(*target, a_stop_first)
    run = tmp_path / "r"
    with pytest.raises(BaseException) as raised:
        run_training(tiny_train(run, steps=6, checkpoint_every=2), progress=False)
    assert raised.type is KeyboardInterrupt and str(raised.value) == (
        f"aborted by Ctrl-C at step 2; last good checkpoint kept at {run / 'ckpt' / 'step-000002'} (step 2)")
    noticed = f"rnnlab train: {trainer.ENDING} (Ctrl-C again to abort)" in capsys.readouterr().err
    assert noticed == (where == "message")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["aborted"] is True and summary["error"] == str(raised.value), summary


def test_a_ctrl_c_while_the_logs_close_reaches_the_caller(tiny_train, tmp_path, monkeypatch):
    """A Ctrl-C after the run's end, while its logs close (W&B's finish can take minutes), reaches
    the caller as a KeyboardInterrupt (``rnnlab bench`` stops the suite there), not a handler that
    nothing reads any more, and its message says what it cut; the finished run's summary stands."""
    import signal

    from rnnlab.train import metrics

    close = metrics.RunLogger.close

    def ctrl_c_first(self):
        try:
            signal.raise_signal(signal.SIGINT)
        finally:
            close(self)

    monkeypatch.setattr(metrics.RunLogger, "close", ctrl_c_first)
    with pytest.raises(BaseException) as raised:
        run_training(tiny_train(tmp_path / "r", steps=2), progress=False)
    assert raised.type is KeyboardInterrupt and str(raised.value) == (
        "aborted by Ctrl-C while the run's logs closed; its summary.json says how the run ended"), repr(raised.value)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["complete"] is True


@pytest.mark.parametrize("precision, hint", [("fp32", "lower --lr;"), ("bf16", "lower --lr or use --precision bf16-mixed;")])
def test_huge_lr_diverges_with_clear_error(precision, hint, tiny_train, tmp_path):
    """Pure bf16 runs are told of mixed precision too; fp32 ones only of the lr."""
    with pytest.raises(NonFiniteLossError, match=f"{re.escape(hint)} no checkpoint was written"):
        run_training(tiny_train(tmp_path / "x", model="mingru", lr=1e30, steps=50, optimizer="adamw",
                                precision=precision), progress=False)


def test_checkpoint_contents(tiny_train, tmp_path):
    from safetensors.torch import load_file

    run_training(tiny_train(tmp_path / "r", steps=3), progress=False)
    ckpt = RunDir(tmp_path / "r").checkpoint()
    state = torch.load(ckpt.state_file, weights_only=True)
    assert state["train_point"] is not None and state["progress"]["step"] == 3
    assert len(state["progress"]["losses"]) == 3 and state["progress"]["complete"] is True
    weights = load_file(ckpt.weights)
    assert "blocks.0.mixer.spectral_u" in weights  # E1's evolving power-iteration vector is saved
    # the shipped weights are Schedule-Free's x, not the training point y
    assert not torch.equal(weights["blocks.0.mixer.W_x"], state["train_point"][3])  # params order: embed, norm.w, norm.b, W_x


class MeanTarget(torch.nn.Module):
    """A stand-in model for ``rnnlab.eval.bpb.evaluate``: its "loss" is the mean of its targets; it
    records its mode and the autocast dtype (None: none) of each forward."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.modes, self.autocasts = [], []

    def forward(self, x, y):
        self.modes.append(self.training)
        self.autocasts.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return y.float().mean() + 0 * self.w


def _val_split(tmp_path):
    """105 held-out bytes (as ``bytes``) and their split: at seq_len 10, 10 windows, targets 1..100."""
    from rnnlab.data import ByteCorpus, Split

    data = bytes((i * 37) % 251 for i in range(105))
    (tmp_path / "val.bin").write_bytes(data)
    return data, Split(ByteCorpus(tmp_path / "val.bin"), 0, len(data), "val")


def test_evaluate_is_the_mean_over_every_predicted_byte(tmp_path):
    """``rnnlab.eval.bpb.evaluate`` with a stand-in model whose "loss" is the mean of its targets:
    the result is the mean over every predicted byte (a short last batch weighs by its bytes, not
    as a whole batch), bpb is that over ln 2, and the model runs in eval mode and comes back in
    the mode it was in."""
    from rnnlab.eval.bpb import evaluate

    data, split = _val_split(tmp_path)
    model = MeanTarget()
    for training in (True, False):
        model.train(training)
        out = evaluate(model, split, seq_len=10, batch_size=4)  # batches of 4, 4, 2 windows
        want = sum(data[1:101]) / 100
        assert out["bytes"] == 100 and out["loss"] == pytest.approx(want, rel=1e-6)  # losses are read as fp32
        assert out["bpb"] == pytest.approx(want / math.log(2), rel=1e-6)
        assert model.modes == [False] * 3 and model.training is training
        model.modes.clear()


def test_evaluate_scores_each_byte_given_the_bytes_before_it(tmp_path):
    """``evaluate`` hands the model each window's bytes but its last as the input and the same
    bytes shifted by one as the targets: target t is the byte after input t. The stand-in above
    ignores its input, so this checks the input itself: a model shown the targets (or the
    window unshifted) would score bytes it had already seen."""
    from rnnlab.eval.bpb import evaluate

    class Recorder(MeanTarget):
        def forward(self, x, y):
            self.seen.append((x.clone(), y.clone()))
            return super().forward(x, y)

    data, split = _val_split(tmp_path)
    model = Recorder()
    model.seen = []
    evaluate(model, split, seq_len=10, batch_size=4)
    x = torch.cat([x for x, _ in model.seen]).tolist()
    y = torch.cat([y for _, y in model.seen]).tolist()
    assert x == [list(data[i:i + 10]) for i in range(0, 100, 10)]  # 11-byte windows, every 10 bytes
    assert y == [list(data[i + 1:i + 11]) for i in range(0, 100, 10)]


@pytest.mark.parametrize("precision,autocast", [("fp32", None), ("bf16", None), ("bf16-mixed", torch.bfloat16)])
def test_evaluate_runs_under_the_autocast_of_the_runs_precision(tmp_path, precision, autocast):
    """The held-out forward runs as training's does: under bf16 autocast for ``bf16-mixed`` (fp32
    weights, bf16 matrix products; not fp16, whose range overflows), under none for ``fp32`` and
    pure ``bf16`` (whose weights are bf16 already)."""
    from rnnlab.eval.bpb import evaluate

    model = MeanTarget()
    evaluate(model, _val_split(tmp_path)[1], seq_len=10, batch_size=4, precision=precision)
    assert model.autocasts == [autocast] * 3 and not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("model", ["e1", "mamba2"])  # Mamba2: two parameter groups (A_log, dt_bias, D spared)
def test_schedulefree_is_evaluated_at_x_and_at_the_train_point(model, tiny_train, tmp_path, capsys):
    """Held-out loss at the shipped average x (val_loss) and at the training point y
    (val_loss_train_point); each equals evaluating those weights from the checkpoint, as
    ``rnnlab eval`` and ``rnnlab eval --at train-point`` do."""
    from rnnlab.cli import main
    from rnnlab.train.runtime import evaluate_run

    cfg = tiny_train(tmp_path / "r", model=model, steps=6)
    s = run_training(cfg, progress=False)
    run = RunDir(cfg.run.out)
    rcfg, model_x, _ = run.load("cpu")
    split = load_splits(rcfg.data.path, rcfg.data.val_path, rcfg.data.val_fraction).val
    assert evaluate_run(model_x, split, rcfg)["loss"] == pytest.approx(s["val_loss"], rel=1e-6)
    _, model_y, _ = run.load("cpu", train_point=True)
    assert evaluate_run(model_y, split, rcfg)["loss"] == pytest.approx(s["val_loss_train_point"], rel=1e-6)
    assert s["val_loss_train_point"] != s["val_loss"]
    assert main(["eval", "--run", str(run.path), "--at", "train-point", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["weights"], out["val_loss"]) == ("train-point", pytest.approx(s["val_loss_train_point"], rel=1e-6))

    adamw = run_training(tiny_train(tmp_path / "a", steps=6, optimizer="adamw"), progress=False)
    assert adamw["val_loss_train_point"] is None  # one point only
    assert main(["eval", "--run", str(tmp_path / "a"), "--at", "train-point"]) == 2
    assert "holds no Schedule-Free train point" in capsys.readouterr().err


@pytest.mark.parametrize("optimizer", ["schedulefree-adamw", "adamw"])
def test_eval_weights_leaves_the_model_in_the_mode_it_found(tiny_train, tmp_path, optimizer):
    from rnnlab.train.optim import build_optimizer, eval_weights
    from rnnlab.train.runtime import build_model

    cfg = tiny_train(tmp_path, optimizer=optimizer, dim=16, depth=1)
    model = build_model(cfg, torch.device("cpu"))
    opt, _ = build_optimizer(model, cfg)
    for training in (False, True):
        model.train(training)
        with eval_weights(model, opt):
            assert not model.training
        assert model.training is training


def test_a_train_point_of_other_shapes_is_refused():
    """Schedule-Free's y from a checkpoint must match the parameters one for one in shape: a
    tensor that would broadcast into its parameter is no match."""
    from rnnlab.train.optim import load_train_point

    params = [torch.zeros(3, 4), torch.zeros(5)]
    with pytest.raises(ValueError, match="2 Schedule-Free train tensors that do not fit the model's 2 parameters"):
        load_train_point(params, [torch.ones(3, 4), torch.ones(1)])
    with pytest.raises(ValueError, match="1 Schedule-Free train tensors"):
        load_train_point(params, [torch.ones(3, 4)])
    with pytest.raises(ValueError, match="2 Schedule-Free train tensors"):  # as many elements, transposed
        load_train_point(params, [torch.ones(4, 3), torch.ones(5)])
    assert all(not p.any() for p in params)
    load_train_point(params, [torch.ones(3, 4), torch.full((5,), 2.0)])
    assert params[0].eq(1).all() and params[1].eq(2).all()


def test_a_train_point_is_taken_in_train_mode_only():
    """``train_point`` stores Schedule-Free's y, the parameters in train mode: in eval mode they
    hold x, which it refuses to store as y (a resume would continue from the wrong point)."""
    from rnnlab.train.optim import train_point
    from rnnlab.train.sf_adamw import AdamWScheduleFree

    p = torch.nn.Parameter(torch.ones(3))
    opt = AdamWScheduleFree([p], lr=1e-2)
    opt.train()
    assert torch.equal(train_point(opt)[0], p.detach())
    opt.eval()
    with pytest.raises(RuntimeError, match=r"^train_point\(\) needs the optimizer in train mode$"):
        train_point(opt)


def test_extra_held_out_file_is_scored_whole_at_the_end(tiny_train, tmp_path, capsys):
    """``--extra-val-data``: a second held-out file scored whole once, at the end, at x and y; its
    scores equal ``rnnlab eval --data FILE --eval-bytes all`` of the run at x and at the train point,
    and intermediate evaluations leave it out."""
    from rnnlab.cli import main

    extra = tmp_path / "extra.txt"
    extra.write_bytes(bytes(range(32, 127)) * 40)  # 3,800 bytes unlike the training text
    cfg = tiny_train(tmp_path / "r", steps=6, eval_every=3, eval_bytes=1024, extra_val_data=str(extra))
    s = run_training(cfg, progress=False)
    evals = [json.loads(line) for line in (tmp_path / "r" / "eval.jsonl").read_text().splitlines()]
    assert [("extra_val_bpb" in e, e["step"]) for e in evals] == [(False, 3), (True, 6)]
    x = s["extra_val"]
    assert x["data"] == str(extra.resolve()) and x["bytes"] == (3800 - 1) // 32 * 32  # every whole window (windows share their edge byte)
    assert x["val_bpb"] != s["val_bpb"]
    for at, key in (("average", "val_bpb"), ("train-point", "val_bpb_train_point")):
        assert main(["eval", "--run", str(tmp_path / "r"), "--data", str(extra), "--eval-bytes", "all",
                     "--at", at, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(x[key], rel=1e-6)
    from rnnlab.train.cli import format_summary
    from rnnlab.train.metrics import eval_line, scalars

    text = format_summary(s)
    assert f"extra.txt loss / bpb  {x['val_loss']:.4f} / {x['val_bpb']:.4f} (3,776 bytes)" in text
    assert "held-out bytes)" in text and "at step" not in text  # its own step's evaluation
    def model_row(text):
        return next(line for line in text.splitlines() if line.startswith("model "))

    assert model_row(text).endswith(f" e1 dim={s['dim']} depth={s['depth']}")  # no setting off its default
    options = format_summary({**s, "model_options": {"norm": "rmsnorm", "rescale_prenorm_residual": True}})
    assert model_row(options).endswith(f" e1 dim={s['dim']} depth={s['depth']} rescale_prenorm_residual=True norm=rmsnorm")
    assert f"held-out bytes, at step {s['steps'] - 1:,})" in format_summary({**s, "val_step": s["steps"] - 1})
    assert f"at train point      {x['val_loss_train_point']:.4f} / {x['val_bpb_train_point']:.4f}\n" in text
    assert f"; extra.txt: val_bpb {x['val_bpb']:.4f}  (3,776 bytes)  at the train point" in eval_line(evals[-1])
    assert "eval/extra_val_bpb" in scalars("eval", evals[-1]) and "eval/extra_bytes" not in scalars("eval", evals[-1])
    with pytest.raises(FileNotFoundError, match="extra_val_data file not found"):
        tiny_train(tmp_path / "m", extra_val_data=str(tmp_path / "missing.txt")).validate()


def test_a_held_out_file_that_is_the_training_file_is_warned_about(tiny_train, tmp_path, capsys):
    """--val-data or --extra-val-data naming the training file (here one through a link) trains on
    every byte it scores: one warning line each; a held-out file of its own, or the tail of --data, none."""
    data, other = tmp_path / "data.txt", tmp_path / "other.txt"
    data.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 100)
    other.write_bytes(b"pack my box with five dozen liquor jugs. " * 20)
    link = tmp_path / "same.txt"
    link.symlink_to(data)
    run_training(tiny_train(tmp_path / "a", steps=1, data=str(data), val_data=str(link), extra_val_data=str(data)),
                 progress=False)
    warned = [line for line in capsys.readouterr().err.splitlines() if "is the training file itself" in line]
    assert warned == [f"rnnlab: warning: {flag} {data.resolve()} is the training file itself: its held-out scores "
                      "are of bytes the model trains on, not held out" for flag in ("--val-data", "--extra-val-data")]
    run_training(tiny_train(tmp_path / "b", steps=1, data=str(data), extra_val_data=str(other)), progress=False)
    run_training(tiny_train(tmp_path / "c", steps=1, data=str(data), val_data=str(other)), progress=False)
    assert "is the training file itself" not in capsys.readouterr().err


def test_finished_run_resumed_with_an_extra_held_out_file_scores_it(tiny_train, tmp_path, capsys):
    """A complete run resumed with a new --extra-val-data (same budget) scores that file and adds it
    to the final record, keeping the held-out split's scores; no training step is taken."""
    from rnnlab.cli import main

    extra = tmp_path / "extra.txt"
    extra.write_bytes(bytes(range(32, 127)) * 20)
    first = run_training(tiny_train(tmp_path / "r", steps=4), progress=False)
    assert first["extra_val"] is None
    again = run_training(tiny_train(tmp_path / "r", steps=4, resume=True, extra_val_data=str(extra)), progress=False)
    assert (again["steps"], again["val_bpb"], again["loss"]) == (4, first["val_bpb"], first["loss"])
    finals = [json.loads(line) for line in (tmp_path / "r" / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["val_bpb"], e["extra_val_bpb"]) for e in finals] == [  # one record: the old one replaced
        (4, first["val_bpb"], again["extra_val"]["val_bpb"])]
    assert main(["eval", "--run", str(tmp_path / "r"), "--data", str(extra), "--eval-bytes", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(again["extra_val"]["val_bpb"], rel=1e-6)


def test_summary_table_tells_step_time_from_wall_time():
    """The printed summary labels ``time_s`` as the steps' time and adds the run's wall time (a
    summary written before ``wall_s`` existed gets no wall row rather than a made-up one)."""
    from pathlib import Path

    from rnnlab.train.cli import format_summary

    s = json.loads((Path(__file__).parent / "data" / "legacy-run" / "summary.json").read_text())
    s["time_s"], s["wall_s"] = 0.04, 4.5  # a 4-step run: its steps take no time, its set-up and eval do
    text = format_summary(s)
    assert re.search(r"^time in steps s +0\.0$", text, re.M) and re.search(r"^wall time s +4\.5$", text, re.M)
    assert not re.search(r"^time s ", text, re.M)
    del s["wall_s"]
    assert "wall time" not in format_summary(s) and "time in steps s" in format_summary(s)


def test_summary_table_says_what_its_rate_and_memory_are():
    """The printed tok/s is the steady rate and says so, and says why it is missing (no step past
    the warm-up ran); a CPU run's memory reads "n/a (CPU)", as the report writes it."""
    from pathlib import Path

    from rnnlab.train.cli import format_summary
    from rnnlab.train.config import WARMUP_STEPS

    s = json.loads((Path(__file__).parent / "data" / "legacy-run" / "summary.json").read_text())
    text = format_summary({**s, "tok_per_s": 1234.4, "device": "cpu", "peak_mem_gib": None})
    assert re.search(r"^tok/s \(steady\) +1,234$", text, re.M) and re.search(r"^peak mem GiB +n/a \(CPU\)$", text, re.M)
    text = format_summary({**s, "tok_per_s": None, "device": "cuda", "peak_mem_gib": 1.5})
    assert re.search(rf"^tok/s \(steady\) +- \(the steady rate leaves out each process's first {WARMUP_STEPS} steps\)$",
                     text, re.M)
    assert re.search(r"^peak mem GiB +1\.50$", text, re.M)


# ----------------------------------------------------------------------------- sampling
def test_sampling_is_deterministic(tiny_train, tmp_path):
    from rnnlab.eval.sampling import generate

    run_training(tiny_train(tmp_path / "s", steps=5), progress=False)
    _, model, _ = RunDir(tmp_path / "s").load("cpu")
    a = generate(model, b"The ", 40, temperature=0.8, top_k=50, seed=1)
    b = generate(model, b"The ", 40, temperature=0.8, top_k=50, seed=1)
    c = generate(model, b"The ", 40, temperature=0.8, top_k=50, seed=2)
    assert isinstance(a, bytes) and len(a) == 40 and a == b and a != c
    g = generate(model, b"ab", 10, temperature=0, seed=0)
    assert len(g) == 10 and g == generate(model, b"ab", 10, temperature=0, seed=5)
    # stepping equals the full forward: greedy first byte matches argmax of the parallel logits
    logits = model(torch.tensor([list(b"ab")]))
    assert g[0] == int(logits[0, -1].argmax())
    assert generate(model, b"x", 0) == b""
    with pytest.raises(ValueError, match="prompt must be"):
        generate(model, b"", 5)


def test_sample_streams_the_text_generate_returns(tiny_train, tmp_path, capsys, monkeypatch):
    """``rnnlab sample`` prints the prompt and each byte as it is sampled: the whole output equals
    ``generate``'s bytes decoded at once (bytes that are no UTF-8 included), and a Ctrl-C after
    the 7th byte leaves the prompt and those 7 bytes printed, ending their line."""
    from rnnlab.cli import main
    from rnnlab.eval import sampling

    run_training(tiny_train(tmp_path / "s", steps=3), progress=False)
    _, model, _ = RunDir(tmp_path / "s").load("cpu")
    prompt = "caf\u00e9 "
    argv = ["sample", "--run", str(tmp_path / "s"), "--prompt", prompt, "--tokens", "60", "--temperature", "5",
            "--top-k", "0", "--seed", "4", "--device", "cpu"]
    new = sampling.generate(model, prompt.encode(), 60, temperature=5, top_k=0, seed=4)
    assert list(sampling.stream(model, prompt.encode(), 60, temperature=5, top_k=0, seed=4)) == [
        bytes((b,)) for b in new]
    expected = (prompt.encode() + new).decode("utf-8", errors="replace") + "\n"
    assert "\ufffd" in expected  # the sample holds invalid UTF-8: decoded byte by byte, it reads the same
    assert main(argv) == 0
    assert capsys.readouterr().out == expected

    pick, picked = sampling._pick, []

    def pick_then_interrupt(*args):
        if len(picked) == 7:
            raise KeyboardInterrupt
        picked.append(pick(*args))
        return picked[-1]

    monkeypatch.setattr(sampling, "_pick", pick_then_interrupt)
    assert main(argv) == 130
    out = capsys.readouterr()
    assert out.out == (prompt.encode() + new[:7]).decode("utf-8", errors="replace") + "\n"
    assert out.err.strip() == "rnnlab sample: interrupted (Ctrl-C)"
    with pytest.raises(ValueError, match="n_tokens must be"):  # checked at the call, not at the first byte
        sampling.stream(model, b"x", -1)


class _FixedLogits(torch.nn.Module):
    """A stand-in LM whose next-byte logits are always ``logits [256]``."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def init_state(self, batch: int) -> None:
        return None

    def step(self, idx_t: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        return self.logits.expand(idx_t.shape[0], -1), state


@pytest.mark.parametrize("temperature,top_k,want", [
    (2.0, None, [1, 3 ** 0.5, math.exp(-0.25)]),  # p ~ exp(logit / temperature)
    (1.0, 2, [1, 3, 0]),  # only the 2 most likely bytes, in proportion
    (0.5, None, [1, 9, math.exp(-1)]),  # a low temperature sharpens, and still samples
])
def test_sampling_draws_from_the_softmax_of_logits_over_temperature_within_top_k(temperature, top_k, want):
    from rnnlab.eval.sampling import generate

    logits = torch.full((256,), -math.inf)
    logits[list(b"abc")] = torch.tensor([0.0, math.log(3), -0.5])
    n = 4000
    out = generate(_FixedLogits(logits), b"x", n, temperature=temperature, top_k=top_k, seed=0)
    counts = [out.count(c) for c in b"abc"]
    assert sum(counts) == n  # no byte outside the three finite logits
    assert [c / n for c in counts] == pytest.approx([w / sum(want) for w in want], abs=0.03)  # 4 sigma


def test_a_temperature_so_small_that_logits_overflow_samples_the_most_likely_byte():
    """``--temperature 1e-40``: logits over it overflow to inf (softmax: nan, multinomial fails);
    scaled from the largest logit down they give the most likely byte every time, as greedy."""
    from rnnlab.eval.sampling import generate

    logits = torch.full((256,), -math.inf)
    logits[list(b"abc")] = torch.tensor([0.0, math.log(3), -0.5])
    assert generate(_FixedLogits(logits), b"x", 20, temperature=1e-40, seed=0) == b"b" * 20


def test_a_temperature_so_small_that_every_finite_logit_overflows_samples_the_most_likely_byte():
    """As above with no logit at -inf: over 1e-40 the largest overflows to +inf and the others
    stay finite (no -inf to give the overflow away); still the most likely byte every time."""
    from rnnlab.eval.sampling import generate

    logits = torch.zeros(256)
    logits[ord("b")] = 1.0
    assert generate(_FixedLogits(logits), b"x", 20, temperature=1e-40, seed=0) == b"b" * 20


def test_a_temperature_so_small_that_every_logit_underflows_to_minus_inf_samples_the_most_likely_byte():
    """Every logit negative (the largest too): over 1e-40 all of them go to -inf, none to +inf
    (softmax: nan, multinomial fails); from the largest logit down, the most likely byte as greedy."""
    from rnnlab.eval.sampling import generate

    logits = torch.full((256,), -2.0)
    logits[ord("b")] = -1.0
    assert generate(_FixedLogits(logits), b"x", 20, temperature=1e-40, seed=0) == b"b" * 20


def test_a_temperature_that_is_0_in_float32_is_greedy():
    """``--temperature 1e-300``: a number >= 0, so accepted, but 0 in the logits' float32, over which
    every logit is inf or nan (multinomial failed, a traceback); greedy, as 0 is."""
    from rnnlab.eval.sampling import generate

    logits = torch.full((256,), -2.0)
    logits[ord("b")] = 1.0
    assert generate(_FixedLogits(logits), b"x", 20, temperature=1e-300, seed=0) == b"b" * 20


def test_top_k_under_a_temperature_so_large_that_every_logit_is_0_still_keeps_the_k_most_likely():
    """``--temperature 1e39 --top-k 2``: every logit over it is 0 in float32, a tie; the k most
    likely bytes are the logits' own (the temperature does not reorder them), so the sample stays
    within them (uniformly, as any temperature that large gives), never all 256 bytes."""
    from rnnlab.eval.sampling import generate

    logits = torch.linspace(-2.0, 2.0, 256)
    assert generate(_FixedLogits(logits), b"x", 20, temperature=1e39, top_k=1, seed=0) == b"\xff" * 20
    out = generate(_FixedLogits(logits), b"x", 400, temperature=1e39, top_k=2, seed=0)
    assert set(out) == {254, 255} and abs(out.count(255) - 200) < 60


def test_a_top_k_above_the_256_bytes_keeps_them_all():
    from rnnlab.eval.sampling import generate

    model = _FixedLogits(torch.linspace(-2.0, 2.0, 256))
    assert generate(model, b"x", 30, top_k=1000, seed=3) == generate(model, b"x", 30, top_k=None, seed=3)


def test_sampling_carries_the_state_from_each_step_to_the_next():
    """Each step starts from the state the previous one returned, the prompt's and the sampled
    bytes' alike: a stand-in whose state counts its steps and whose logits pick byte 'a' + count."""
    from rnnlab.eval.sampling import generate

    class Counter(_FixedLogits):
        def init_state(self, batch):
            return 0

        def step(self, idx_t, state):
            logits = torch.full((idx_t.shape[0], 256), -math.inf)
            logits[:, ord("a") + state + 1] = 0.0
            return logits, state + 1

    assert generate(Counter(torch.zeros(256)), b"xy", 4, temperature=0) == b"cdef"
    assert generate(Counter(torch.zeros(256)), b"xyz", 3, seed=0) == b"def"


def test_sampling_steps_in_eval_mode_and_restores_the_mode():
    """The model steps in eval mode; afterwards (the stream exhausted, or closed early) it is back
    in the mode it was in, training or not."""
    from rnnlab.eval.sampling import generate, stream

    class ModeRecorder(_FixedLogits):
        def step(self, idx_t, state):
            modes.append(self.training)
            return super().step(idx_t, state)

    model, modes = ModeRecorder(torch.zeros(256)), []
    for training in (True, False):
        model.train(training)
        assert len(generate(model, b"ab", 3, seed=0)) == 3
        assert modes == [False] * 4 and model.training is training  # 2 prompt bytes, then 2 more steps
        s = stream(model, b"ab", 5, seed=0)
        next(s)
        assert model.training is False
        s.close()
        assert model.training is training
        modes.clear()


def test_sampling_steps_a_text_prompt_through_its_utf8_bytes():
    """A ``str`` prompt is stepped through as its UTF-8 bytes, one step per byte, the same as
    passing those bytes (``rnnlab sample`` and the Python API take either)."""
    from rnnlab.eval.sampling import generate

    class InputRecorder(_FixedLogits):
        def step(self, idx_t, state):
            fed.append(int(idx_t[0]))
            return super().step(idx_t, state)

    logits = torch.full((256,), -math.inf)
    logits[ord("z")] = 0.0  # every sampled byte is "z"
    model, fed = InputRecorder(logits), []
    assert generate(model, "é€", 2, seed=0) == b"zz"
    assert fed == [0xC3, 0xA9, 0xE2, 0x82, 0xAC, ord("z")]  # é = C3 A9, € = E2 82 AC, then the 1st sample
    fed.clear()
    assert generate(model, "é€".encode(), 2, seed=0) == b"zz" and fed == [0xC3, 0xA9, 0xE2, 0x82, 0xAC, ord("z")]


@pytest.mark.parametrize("kw", [{"temperature": math.nan}, {"temperature": math.inf}, {"temperature": -0.5},
                                {"top_k": -1}])
def test_sampling_refuses_bad_arguments_from_python(kw):
    """The Python API checks what the CLI's argument parser checks: a temperature that is not a
    finite number >= 0 (NaN and inf would make every probability NaN or pick from a flat
    distribution) or a negative top_k is a ValueError at the call, before any byte."""
    from rnnlab.eval.sampling import stream

    with pytest.raises(ValueError, match="temperature must be|top_k must be"):
        stream(_FixedLogits(torch.zeros(256)), b"x", 3, **kw)


# ----------------------------------------------------------------------------- optimizer contract
def _grad_norms_seen_by_optimizer(cfg) -> list[float]:
    """Train ``cfg``; the total gradient norm the optimizer receives at each step."""
    t = Trainer(cfg, progress=False)
    opt, seen, real_step = t.state.optimizer, [], t.state.optimizer.step

    def step(*a, **kw):
        grads = [p.grad for p in t.state.model.parameters() if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(*a, **kw)

    opt.step = step
    t.train()
    return seen


def test_grad_clip_bounds_the_gradient_the_optimizer_sees(tiny_train, tmp_path):
    free = _grad_norms_seen_by_optimizer(tiny_train(tmp_path / "free", steps=4))
    assert max(free) > 0.2  # without clipping the gradients here are larger than the clip below
    clipped = _grad_norms_seen_by_optimizer(tiny_train(tmp_path / "clip", steps=4, grad_clip=0.2))
    assert len(clipped) == 4 and max(clipped) <= 0.2 * (1 + 1e-5)


def test_grad_norm_is_the_l2_norm_clipping_rescales_to(tiny_train, tmp_path, monkeypatch):
    """The logged grad_norm is the L2 norm of the gradients before clipping, and clipping scales
    them to L2 norm min(norm, clip): a norm of another order (L1, inf) would log another number and
    clip to less than the clip without breaking the bound above."""
    pre, real_clip = [], torch.nn.utils.clip_grads_with_norm_

    def clip(params, max_norm, total_norm, *a, **kw):
        params = list(params)
        pre.append(math.sqrt(sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None)))
        return real_clip(params, max_norm, total_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", clip)
    seen = _grad_norms_seen_by_optimizer(tiny_train(tmp_path / "r", steps=3, grad_clip=0.2, depth=1, eval_bytes=256))
    logged = [json.loads(x)["grad_norm"] for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert len(pre) == 3 and max(pre) > 0.2  # some step is clipped
    assert logged == pytest.approx(pre, rel=1e-5)
    assert seen == pytest.approx([min(n, 0.2) for n in pre], rel=1e-5)


def test_pure_bf16_grad_norm_is_measured_in_float32(tiny_train, tmp_path, monkeypatch):
    """Pure bf16 keeps 16-bit gradients; their logged norm, and the one clipping scales by, is the
    exact norm of those gradients to float32's precision, not rounded to bf16 (2^-9 relative) as
    ``get_total_norm`` leaves it."""
    pre, used, real_clip = [], [], torch.nn.utils.clip_grads_with_norm_

    def clip(params, max_norm, total_norm, *a, **kw):
        params = list(params)
        assert {p.grad.dtype for p in params if p.grad is not None} == {torch.bfloat16}
        pre.append(math.sqrt(sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None)))
        used.append((total_norm.dtype, float(total_norm)))
        return real_clip(params, max_norm, total_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", clip)
    run_training(tiny_train(tmp_path / "r", steps=4, grad_clip=100.0, precision="bf16", eval_bytes=256),
                 progress=False)
    logged = [json.loads(x)["grad_norm"] for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert len(pre) == 4 and {d for d, _ in used} == {torch.float32}
    assert logged == pytest.approx(pre, rel=1e-6) and [n for _, n in used] == pytest.approx(pre, rel=1e-6)


def test_adamw_lr_is_linear_warmup_then_cosine(tiny_train, tmp_path):
    run_training(tiny_train(tmp_path / "r", steps=10, optimizer="adamw", warmup_steps=3, lr=1e-3), progress=False)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    # the LR of the update after s completed steps: (s+1)/3 during warmup, then cos from 1 to 0 at step 10
    expected = [1e-3 * ((s + 1) / 3 if s < 3 else 0.5 * (1 + math.cos(math.pi * (s - 3) / 7))) for s in range(10)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_adamw_cosine_ends_at_zero_and_stays_there(tiny_train, tmp_path):
    """The cosine ends at 0 at the step budget and stays at 0: AdamW's real scheduler, stepped past
    its budget, never climbs back up the cosine (progress is clamped at 1) nor goes below 0."""
    from rnnlab.train.optim import build_optimizer

    cfg = tiny_train(tmp_path, optimizer="adamw", steps=6, warmup_steps=2, lr=1e-3)
    opt, sched = build_optimizer(torch.nn.Linear(2, 2), cfg)
    lrs = []  # the LR after s = 1, 2, ... completed steps: the budget (6), then 6 steps beyond it
    for _ in range(12):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[5] == 0.0 and lrs[6:] == [0.0] * 6  # at the budget and past it
    assert min(lrs) >= 0.0 and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # after the peak: never up


def test_adamw_constant_schedule_warms_up_then_stays(tiny_train, tmp_path):
    run_training(tiny_train(tmp_path / "r", steps=8, optimizer="adamw", warmup_steps=3, lr=1e-3,
                            lr_schedule="constant"), progress=False)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3], rel=1e-12)
    with pytest.raises(ValueError, match="budget"):  # a cosine needs a known number of steps
        tiny_train(tmp_path / "m", optimizer="adamw", steps=None, minutes=1.0).validate()
    tiny_train(tmp_path / "m", optimizer="adamw", steps=None, minutes=1.0, lr_schedule="constant").validate()


@pytest.mark.parametrize("optimizer", ["adamw", "schedulefree-adamw"])
def test_warmup_may_span_the_whole_budget(optimizer, tiny_train, tmp_path):
    """warmup_steps == steps is a valid budget: the LR climbs linearly and reaches the peak on the
    last step; the cosine after it has no steps left to span (no division by zero when the
    scheduler steps past the last update)."""
    from rnnlab.train.optim import WarmupCosine

    run_training(tiny_train(tmp_path / "r", steps=3, warmup_steps=3, optimizer=optimizer, lr=1e-3), progress=False)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3], rel=1e-12)
    schedule = WarmupCosine(3, 3)  # the factors of the 3 updates, then the one the scheduler computes after them
    assert [schedule(s) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1], rel=1e-12)
    assert math.isfinite(schedule(3))

def test_schedulefree_lr_warms_up_then_stays(tiny_train, tmp_path):
    run_training(tiny_train(tmp_path / "r", steps=5, warmup_steps=2, lr=1e-3), progress=False)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3], rel=1e-12)


def test_env_records_the_commit_named_for_a_copied_tree(monkeypatch):
    from rnnlab.train.runtime import env_info

    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "0123abcd" * 5)
    info = env_info(torch.device("cpu"))
    assert info["git_sha"] == "0123abcd" * 5 and info["git_dirty"] is None
    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "0123abcd0123-dirty")  # staged with uncommitted code
    info = env_info(torch.device("cpu"))
    assert info["git_sha"] == "0123abcd0123" and info["git_dirty"] is True


# ----------------------------------------------------------------------------- gradient accumulation
def test_grad_accum_equals_the_whole_batch(tiny_train, tmp_path):
    """--grad-accum 2 runs each step's batch as two micro-batches of half its rows: in fp32 the
    losses, gradient norms (clipped to 0.5 here) and final weights equal the whole batch's to
    1e-6. At the default lr: Adam divides by |g| + 1e-8, so where a gradient is near 1e-8 its
    float rounding (the order of the sums differs) moves the weights by up to ~lr * 1e-3."""
    from safetensors.torch import load_file

    runs = {n: tmp_path / f"accum{n}" for n in (1, 2)}
    for n, run in runs.items():
        run_training(tiny_train(run, steps=6, grad_accum=n, grad_clip=0.5, lr=3e-4), progress=False)
    one, two = ([json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in runs.values())
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-6)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-5)
    assert max(r["grad_norm"] for r in one) > 0.5  # clipping was active
    w1, w2 = (load_file(run / "ckpt" / "step-000006" / "model.safetensors") for run in runs.values())
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= 1e-6


def test_a_training_step_predicts_each_byte_from_the_bytes_before_it(tiny_train, tmp_path, monkeypatch):
    """Each training forward gets its windows but their last byte as the input and the same bytes
    shifted by one as the targets (target t = the byte after input t), each micro-batch of
    --grad-accum too. A step that fed the targets as the input would train the model to copy
    it: its loss would fall as fast as a real run's, so no learning test notices."""
    from rnnlab.models.lm import LM

    seen, real = [], LM.forward

    def recording(self, idx, targets=None):
        if self.training:
            seen.append((idx.clone(), targets.clone()))
        return real(self, idx, targets)

    monkeypatch.setattr(LM, "forward", recording)
    run_training(tiny_train(tmp_path / "r", steps=2, grad_accum=2, eval_bytes=256), progress=False)
    assert len(seen) == 4  # 2 steps x 2 micro-batches
    for idx, targets in seen:
        assert idx.shape == targets.shape == (2, 32)
        assert torch.equal(idx[:, 1:], targets[:, :-1]) and not torch.equal(idx, targets)


def test_grad_accum_counts_each_token_once(tiny_train, tmp_path):
    """--grad-accum splits a step's batch into micro-batches, it does not add to it: a step is
    batch_size x seq_len tokens (128 here) in metrics.jsonl, the summary, tok/s and a --tokens
    budget (5 x 128 tokens = 5 steps), as without accumulation."""
    run = tmp_path / "r"
    s = run_training(tiny_train(run, steps=None, tokens=5 * 128, grad_accum=2), progress=False)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in recs] == [128 * i for i in range(1, 6)]
    assert (s["steps"], s["tokens"]) == (5, 5 * 128)
    seconds = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip([{"elapsed_s": 0.0}] + recs, recs)]
    assert [r["tok_per_s"] for r in recs] == pytest.approx([128 / t for t in seconds], rel=1e-6)
    assert s["tok_per_s"] == pytest.approx(2 * 128 / sum(seconds[3:]), rel=1e-6)  # after the 3 warm-up steps

def test_grad_accum_under_ddp_syncs_gradients_once_per_step(tiny_train, tmp_path):
    """Under DDP (a one-rank gloo group in this process) every micro-batch but the last runs in
    ``no_sync``: gradients are all-reduced as often per step with --grad-accum 2 as without it,
    while the model sees two micro-batches of batch_size / 2 rows per step."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        seen = {}
        for n in (1, 2):
            t = Trainer(tiny_train(tmp_path / f"r{n}", steps=2, grad_accum=n), progress=False)
            ddp = torch.nn.parallel.DistributedDataParallel(t.state.model)
            syncs, rows = [], []

            def count(state, bucket, syncs=syncs):
                syncs.append(bucket.index())
                done = torch.futures.Future()
                done.set_result(bucket.buffer())
                return done

            ddp.register_comm_hook(None, count)
            t.state.model.register_forward_pre_hook(lambda m, args, rows=rows: rows.append(args[0].shape[0]))
            t.forward = ddp
            for step in range(2):
                t.train_step(t.stream.batch(step))
            t.logger.close()
            seen[n] = syncs, rows
        assert seen[2][0] == seen[1][0] and len(seen[1][0]) >= 2  # the same all-reduces, once per step
        assert seen[1][1] == [4, 4] and seen[2][1] == [2, 2, 2, 2]
    finally:
        tdist.destroy_process_group()


def test_a_steps_time_ends_after_its_optimizer_step(tiny_train, tmp_path, monkeypatch):
    """On a GPU the optimizer's kernels run after ``optimizer.step()`` returns: the step waits for
    the device after it, so its time (tok/s, the --minutes budget) counts them. Without that sync
    they would fall before the next step's clock starts (the race would give the optimizer's time
    away, most to the models with the most steps)."""
    from rnnlab.train import trainer as trainer_module

    t = Trainer(tiny_train(tmp_path, steps=2), progress=False)
    events = []
    real_step = t.state.optimizer.step
    monkeypatch.setattr(t.state.optimizer, "step", lambda *a, **k: (events.append("optimizer"), real_step(*a, **k))[1])
    monkeypatch.setattr(trainer_module, "sync", lambda device: events.append("sync"))
    real_clock = trainer_module.time.perf_counter
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: (events.append("clock"), real_clock())[1])
    t.train_step(t.stream.batch(0))
    t.logger.close()
    assert events[-3:] == ["optimizer", "sync", "clock"], events
    assert events[:2] == ["sync", "clock"], events


@pytest.mark.parametrize("optimizer", ["adamw", "schedulefree-adamw"])
def test_optimizer_takes_every_hyperparameter_from_the_config(optimizer, tiny_train, tmp_path):
    """lr, betas, eps and weight decay reach the optimizer as configured (none left at a library
    default): Table A's protocol is these numbers."""
    from rnnlab.models import LM
    from rnnlab.train.optim import build_optimizer

    cfg = tiny_train(tmp_path, optimizer=optimizer, lr=2e-3, betas=[0.8, 0.95], eps=1e-6, weight_decay=0.05)
    opt, _ = build_optimizer(LM(cfg.model), cfg)
    group = opt.param_groups[0]
    assert (tuple(group["betas"]), group["eps"], group["weight_decay"]) == ((0.8, 0.95), 1e-6, 0.05)
    assert group.get("initial_lr", group["lr"]) == 2e-3  # AdamW's scheduler keeps the base lr as initial_lr
    if optimizer == "schedulefree-adamw":  # schedulefree's, its step fused on CUDA
        from rnnlab.train import sf_adamw

        assert type(opt) is sf_adamw.AdamWScheduleFree


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(ValueError, match=r"grad_accum \(3\) must divide batch_size \(4\)"):
        TrainConfig.from_dict({"batch_size": 4, "grad_accum": 3}).validate()


def test_memory_check_counts_one_micro_batch_of_activations(tiny_train, tmp_path, monkeypatch):
    from rnnlab.train import runtime

    monkeypatch.setattr(runtime, "device_memory", lambda device: 2**30)  # a 1 GiB device
    cfg = tiny_train(tmp_path / "r", batch_size=64, seq_len=32768)  # ~5 GiB of activations at once
    with pytest.raises(ValueError, match=r"batch_size 64 x seq_len 32768 keeps at least ~5\.\d GiB.*"
                                         r"lower --batch-size or --seq-len, or raise --grad-accum$"):
        runtime.check_memory(cfg, 20_000, torch.device("cpu"))
    runtime.check_memory(apply_overrides(cfg, {"grad_accum": 64}), 20_000, torch.device("cpu"))  # ~0.1 GiB
    # micro-batches of one row already: raising --grad-accum is no way out, not named
    one_row = apply_overrides(cfg, {"grad_accum": 64, "seq_len": 32768 * 64})
    with pytest.raises(ValueError, match=r"grad_accum 64 x seq_len 2097152 .*lower --batch-size or --seq-len$"):
        runtime.check_memory(one_row, 20_000, torch.device("cpu"))


def test_memory_check_counts_each_gpus_share_under_torchrun(tiny_train, tmp_path, monkeypatch):
    """Under torchrun a GPU holds its process's share of the global batch (and under FSDP2 of the
    state): 8 processes of a batch whose whole activations exceed one GPU fit; a CPU run's
    processes share one memory, which holds the whole batch."""
    from rnnlab.train import runtime

    monkeypatch.setattr(runtime, "device_memory", lambda device: 2**30)  # 1 GiB per device
    cfg = tiny_train(tmp_path / "r", batch_size=64, seq_len=32768)  # ~5 GiB of activations in all
    runtime.check_memory(cfg, 20_000, torch.device("cuda", 0), world=8)  # ~0.6 GiB on each GPU
    with pytest.raises(ValueError, match=r"batch_size 64 / 2 processes x seq_len 32768 keeps at least ~2\.\d GiB"):
        runtime.check_memory(cfg, 20_000, torch.device("cuda", 0), world=2)
    with pytest.raises(ValueError, match=r"batch_size 64 x seq_len 32768 keeps at least ~5\.\d GiB"):
        runtime.check_memory(cfg, 20_000, torch.device("cpu"), world=8)
    big = apply_overrides(cfg, {"batch_size": 8, "seq_len": 32})
    with pytest.raises(ValueError, match="optimizer state need ~1.5 GiB"):
        runtime.check_memory(big, 100_000_000, torch.device("cuda", 0), world=4)  # DDP: every GPU holds it all
    runtime.check_memory(apply_overrides(big, {"distributed": "fsdp2"}), 100_000_000, torch.device("cuda", 0), world=4)


def test_memory_check_refuses_only_what_cannot_fit(tiny_train, tmp_path, monkeypatch):
    """The check at its edges, with its sums spelled out: fp32 weights, grads and two moments take
    params x 4 x 4 bytes; the activations of a step, 4 x 32 tokens x (2 x depth 2 x dim 32 x 4 +
    2 x 256 x 4) bytes. Exactly that much memory fits; a byte less is refused, for the activations
    while the state alone fits (exactly too), else for the state."""
    from rnnlab.train import runtime

    cfg = tiny_train(tmp_path / "r")  # batch 4 x seq_len 32, dim 32, depth 2, fp32
    states, activations = 1000 * 4 * 4, 4 * 32 * (2 * 2 * 32 * 4 + 2 * 256 * 4)
    for have, refused in ((states + activations, None), (states + activations - 1, "of activations"),
                          (states, "of activations"), (states - 1, "optimizer state need")):
        monkeypatch.setattr(runtime, "device_memory", lambda device: have)
        if refused is None:
            runtime.check_memory(cfg, 1000, torch.device("cpu"))
        else:
            with pytest.raises(ValueError, match=refused):
                runtime.check_memory(cfg, 1000, torch.device("cpu"))


def test_minutes_budget_leaves_out_the_warm_up_steps(tiny_train, tmp_path, monkeypatch):
    """An equal-time race must not charge compilation to a model: each process's first 3 steps
    (compilation, autotuning) are outside a --minutes budget, and the summary states them."""
    real = Trainer.train_step
    calls = []

    def slow_start(self, batch):
        result = real(self, batch)
        calls.append(1)
        return result._replace(seconds=result.seconds + (0.5 if len(calls) <= 3 else 0.0))

    monkeypatch.setattr(Trainer, "train_step", slow_start)
    s = run_training(tiny_train(tmp_path / "r", steps=None, minutes=0.005), progress=False)  # 0.3 s
    assert s["warmup_s"] >= 1.5 and s["steps"] > 3  # the 1.5 s of "compilation" did not spend the budget
    assert s["time_s"] - s["warmup_s"] >= 0.3


# ----------------------------------------------------------------------------- weight decay
MARKED = {"mamba2": {"A_log", "dt_bias", "D"}, "e88": {"A_log", "dt_bias"}, "gdn": {"A_log", "dt_bias"}, "e1": set()}


@pytest.mark.parametrize("optimizer", ["adamw", "schedulefree-adamw"])
@pytest.mark.parametrize("model", sorted(MARKED))
@pytest.mark.parametrize("decay_marked", [False, True])
def test_weight_decay_spares_the_marked_decay_rates(model, optimizer, decay_marked):
    """With zero gradients a step only applies weight decay: every parameter shrinks except the
    ones a layer marks ``_no_weight_decay`` (Mamba2's A_log, dt_bias, D, E88's and GDN's A_log,
    dt_bias), which stay put unless ``decay_marked`` (the reference study's one group)."""
    from rnnlab.train.optim import build_optimizer, decay_rates
    from rnnlab.train.runtime import build_model

    cfg = apply_overrides(TrainConfig(), {"model": model, "dim": 32, "depth": 1, "optimizer": optimizer,
                                          "lr": 0.5, "weight_decay": 0.5, "decay_marked": decay_marked,
                                          "lr_schedule": "constant", "precision": "fp32"}).validate()
    lm = build_model(cfg, torch.device("cpu"))
    opt, _ = build_optimizer(lm, cfg)
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    for p in lm.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    kept = {n.rsplit(".", 1)[-1] for n, p in lm.named_parameters()
            if torch.equal(p, before[n]) and before[n].any()}  # zeros (biases) stay zeros either way
    marked = {n.rsplit(".", 1)[-1] for n, p in lm.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert marked == MARKED[model]
    assert kept == (set() if decay_marked else MARKED[model])
    assert decay_rates(lm, cfg) == (None if not marked else "decayed" if decay_marked else "spared")  # summary.json


def test_resuming_a_run_from_before_decay_marked_says_how(tiny_train, tmp_path):
    """A run saved before ``decay_marked`` existed decayed every parameter: resuming it under
    today's default is refused, with the setting that continues it."""
    cfg = tiny_train(tmp_path / "r", steps=2)
    run_training(cfg, progress=False)
    path = tmp_path / "r" / "config.json"
    saved = json.loads(path.read_text())
    del saved["decay_marked"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"field decay_marked is true, not false \(runs saved before rnnlab had "
                                         r"decay_marked count as decay_marked = true: set it to continue them\)"):
        run_training(tiny_train(tmp_path / "r", steps=4, resume=True), progress=False)
    s = run_training(tiny_train(tmp_path / "r", steps=4, resume=True, decay_marked=True), progress=False)
    assert s["complete"] and s["steps"] == 4


def test_curve_evals_score_their_bytes_and_the_final_eval_both(tiny_train, tmp_path, capsys):
    """``curve_eval_bytes``: evaluations during training score that many held-out bytes (a cheap
    learning curve), the final one ``eval_bytes`` (here the whole split) and the curve's bytes too
    (``curve_*``), each equal to ``rnnlab eval`` of the finished run with that many bytes; the
    report's curve ends on the curve's bytes. The held-out file is the bundled one's first 6,000
    bytes: the whole split is six times the curve's share, where the bundled 363 KB made each
    whole-split score (every final evaluation's, at x and at y, and ``rnnlab eval``'s) the
    test's cost."""
    from rnnlab.bench.collect import collect
    from rnnlab.bench.plots import held_out_label, run_curves
    from rnnlab.cli import main
    from rnnlab.data.corpus import default_val_path
    from rnnlab.train.metrics import eval_line, scalars

    val = tmp_path / "held_out.txt"
    val.write_bytes(default_val_path().read_bytes()[:6000])
    cfg = tiny_train(tmp_path / "r", steps=6, eval_every=3, eval_bytes="all", curve_eval_bytes="1K",
                     checkpoint_every=3, val_data=str(val))
    s = run_training(cfg, progress=False)
    evals = [json.loads(line) for line in (tmp_path / "r" / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["bytes"], e.get("curve_bytes")) for e in evals] == [(3, 992, None), (6, s["val_bytes"], 992)]
    assert s["val_bytes"] > 4 * 992  # the whole split, not the curve's share
    for cap, key in (("all", "val_bpb"), ("1K", "curve_val_bpb")):
        assert main(["eval", "--run", str(tmp_path / "r"), "--eval-bytes", cap, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(evals[-1][key], rel=1e-6)
    assert evals[-1]["curve_val_bpb"] != evals[-1]["val_bpb"]
    assert f"the curve's 992 bytes: val_bpb {evals[-1]['curve_val_bpb']:.4f}" in eval_line(evals[-1])
    assert "eval/curve_val_bpb" in scalars("eval", evals[-1]) and "eval/curve_bytes" not in scalars("eval", evals[-1])
    curves = run_curves(collect(tmp_path)["records"])
    assert [bpb for _, bpb in curves["r"]["bpb"]] == [evals[0]["val_bpb"], evals[1]["curve_val_bpb"]]
    assert held_out_label(curves) == "held-out bits per byte (992 bytes)"

    # resumed from step 3 with the budget cut to 3 steps: step 3's curve evaluation is no final one
    shutil.rmtree(tmp_path / "r" / "ckpt" / "step-000006")
    cut = run_training(tiny_train(tmp_path / "r", steps=3, eval_every=3, eval_bytes="all", curve_eval_bytes="1K",
                                  checkpoint_every=3, val_data=str(val), resume=True), progress=False)
    assert (cut["steps"], cut["val_bytes"]) == (3, s["val_bytes"])


def test_curve_evals_on_the_eval_bytes_are_not_scored_twice_at_the_end(tiny_train, tmp_path):
    """--curve-eval-bytes equal to --eval-bytes: the final evaluation's one score is the curve's
    too, so it records no separate curve_* keys."""
    run_training(tiny_train(tmp_path / "r", steps=2, eval_every=1, eval_bytes=2048, curve_eval_bytes=2048),
                 progress=False)
    evals = [json.loads(x) for x in (tmp_path / "r" / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e.get("final", False), e["bytes"]) for e in evals] == [(1, False, 2016), (2, True, 2016)]
    assert not [k for k in evals[-1] if k.startswith("curve_")]


def test_resumed_run_keeps_its_earlier_sessions_provenance(tiny_train, tmp_path, monkeypatch):
    """env.json describes the session that wrote it; a resumed run keeps each earlier session's
    start, commit and GPU, and the report names every commit the run trained under and dates it
    from its first start."""
    from rnnlab.bench.collect import collect
    from rnnlab.bench.report import describe_dates, describe_git

    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "aaaaaaa")
    run_training(tiny_train(tmp_path / "r", steps=3, checkpoint_every=3), progress=False)
    first = RunDir(tmp_path / "r").env()
    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "bbbbbbb")
    run_training(tiny_train(tmp_path / "r", steps=5, checkpoint_every=3, resume=True), progress=False)
    env = RunDir(tmp_path / "r").env()
    assert env["git_sha"] == "bbbbbbb" and env["earlier_sessions"] == [
        {"started": first["started"], "git_sha": "aaaaaaa", "git_dirty": None, "gpu": None, "world_size": 1,
         "argv": first["argv"]}]
    env["earlier_sessions"][0]["started"] = "2026-01-01T00:00:00Z"  # a session long before this one
    (tmp_path / "r" / "env.json").write_text(json.dumps(env))
    records = collect(tmp_path)["records"]
    assert describe_git(records) == "aaaaaaa (r); bbbbbbb (r)"
    latest = env["started"].replace("T", " ")[:16]
    assert describe_dates(records).startswith(f"runs started 2026-01-01 00:00 to {latest} UTC")


def test_overwrite_removes_an_archived_runs_metrics(tiny_train, tmp_path):
    """--overwrite deletes a finished run's archived metrics.jsonl.xz too (else its records would
    stand for the new run's until that wrote its first line)."""
    import lzma

    run_training(tiny_train(tmp_path / "r", steps=2), progress=False)
    plain = tmp_path / "r" / "metrics.jsonl"
    (tmp_path / "r" / "metrics.jsonl.xz").write_bytes(lzma.compress(plain.read_bytes()))
    plain.unlink()
    run_training(tiny_train(tmp_path / "r", steps=3, overwrite=True), progress=False)
    assert not (tmp_path / "r" / "metrics.jsonl.xz").exists()
    assert [r["step"] for r in RunDir(tmp_path / "r").metrics()] == [1, 2, 3]


def test_each_resume_adds_the_session_before_it_to_the_earlier_sessions(tiny_train, tmp_path):
    run = RunDir(tmp_path)
    cfg = tiny_train(tmp_path).resolve()
    sessions = [{"started": f"2026-01-0{i}T00:00:00Z", "git_sha": f"{i}" * 7, "git_dirty": None, "gpu": f"gpu{i}",
                 "world_size": i} for i in (1, 2, 3)]
    sessions = [{**s, "argv": [a]} for s, a in zip(sessions, "abc")]
    for i, session in enumerate(sessions):
        run.start(cfg, session, None if i == 0 else 0)
    env = run.env()
    assert env["earlier_sessions"] == sessions[:2] and env["started"] == sessions[2]["started"]


def test_git_state_asks_git_for_the_commit_and_whether_tracked_files_changed(monkeypatch):
    """Without ``RNNLAB_GIT_COMMIT``: the commit ``git rev-parse HEAD`` prints, dirty when ``git status
    --porcelain`` lists a change (the benchmarks' label then ends in ``-dirty``, a clean one's not); a
    rev-parse that fails (a repository without commits prints "HEAD" and fails) is no commit. An
    empty ``RNNLAB_GIT_COMMIT`` names nothing."""
    import subprocess

    from rnnlab.train import runtime

    monkeypatch.setenv("RNNLAB_GIT_COMMIT", "")
    for head, status, state, label, tracked in (
            ((0, "abc123\n"), " M src/x.py\n", ("abc123", True), "abc123-dirty", 0),
            ((0, "abc123\n"), "", ("abc123", False), "abc123", 0),
            ((128, "HEAD\n"), "", (None, None), None, 0),
            ((0, "abc123\n"), "", (None, None), None, 1)):  # the package is not in that repository
        answers = {"rev-parse": head, "status": (0, status), "ls-files": (tracked, "")}
        monkeypatch.setattr(runtime.subprocess, "run",
                            lambda cmd, **kw: subprocess.CompletedProcess(cmd, *answers[cmd[1]], ""))
        assert (runtime.git_state(), runtime.git_commit_label()) == (state, label)


def test_git_state_of_an_untracked_copy_inside_another_repository_is_unknown(tmp_path, monkeypatch):
    """An installed copy of the package inside some other git repository (a virtualenv in a project's
    folder) records no commit: that repository's HEAD is not the code's; once tracked there, it is."""
    import shutil
    import subprocess

    from rnnlab.train import runtime

    if shutil.which("git") is None:
        pytest.skip("no git")
    monkeypatch.delenv("RNNLAB_GIT_COMMIT", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "README").write_text("another project\n")
    subprocess.run(git + ["add", "README"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=tmp_path, check=True)
    pkg = tmp_path / "venv" / "rnnlab"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    assert runtime.git_state(pkg) == (None, None)
    subprocess.run(git + ["add", "venv"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "y"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert runtime.git_state(pkg) == (head, False)


def test_a_cuda_only_backend_is_only_refused_off_cuda():
    """``backend=official`` (or triton) counts as CUDA-only on a CPU, never on a CUDA device."""
    from rnnlab.train.runtime import cuda_only_backend

    cfg = TrainConfig.from_dict({"model": {"model": "mamba2", "layer": {"backend": "official"}}})
    assert cuda_only_backend(cfg, torch.device("cpu")) == "official"
    assert cuda_only_backend(cfg, torch.device("cuda", 0)) is None


def test_git_commit_label_is_the_inverse_of_split_dirty(monkeypatch):
    """The commit the benchmarks record: ``RNNLAB_GIT_COMMIT`` (a staged tree's name) back as one
    string, ``-dirty`` kept; a clean checkout's sha without it."""
    from rnnlab.train.runtime import git_commit_label, split_dirty

    for named in ("0123456789ab", "0123456789ab-dirty"):
        monkeypatch.setenv("RNNLAB_GIT_COMMIT", named)
        assert git_commit_label() == named
        sha, dirty = split_dirty(named)
        assert sha == "0123456789ab" and dirty is (True if named.endswith("-dirty") else None)


@pytest.mark.parametrize("model,layer", [("mamba2", {"headdim": 8, "d_state": 8}), ("gdn", {"head_dim": 8})])
@pytest.mark.parametrize("backend", [None, "auto"])
def test_an_official_layer_on_auto_builds_its_reference_off_cuda_on_a_gpu_machine(tiny_train, tmp_path,
                                                                                  official_would_run, model, layer,
                                                                                  backend):
    """``rnnlab train/eval/sample --device cpu`` on a machine with a GPU: a Mamba2 or Gated DeltaNet
    layer with backend auto (the default, and what a run trained with backend=official loads with
    off CUDA, ``RunDir.load``) builds its PyTorch reference for the CPU model, as check_trainable's
    message and ``RunDir.load`` say ("auto, which runs the PyTorch reference there"); the official
    layer it built before refused every CPU forward."""
    import warnings

    from rnnlab.train.runtime import build_model

    opts = {**layer, **({} if backend is None else {"backend": backend})}
    cfg = tiny_train(tmp_path, model=model, dim=16, depth=1)
    cfg.model.layer = opts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = build_model(cfg, torch.device("cpu"))
    assert {m.backend for m in lm.modules() if hasattr(m, "_build_reference")} == {"reference"}
    assert lm(torch.randint(0, 256, (1, 5))).shape[:2] == (1, 5)
    assert cfg.model.layer == opts  # the run's config is left as it was


@pytest.mark.parametrize("model,layer", [("mamba2", {"headdim": 8, "d_state": 8, "d_conv": 5}),
                                         ("gdn", {"head_dim": 264, "heads": 1, "expand_v": 1.0})])
def test_a_cpu_run_on_a_gpu_machine_takes_options_only_the_official_kernels_refuse(tiny_train, tmp_path,
                                                                                   official_would_run, model, layer):
    """``--device cpu`` on a machine where backend auto would pick the official layer: options its
    kernels refuse (Mamba2 d_conv 5, Gated DeltaNet head_dim over 256) train with the reference,
    the parameter count before the run folder included (it counts the layers build_model builds)."""
    # 256 held-out bytes: the final evaluation of a 264-wide state in the reference scan was most of the time
    cfg = tiny_train(tmp_path / "run", model=model, dim=16, depth=1, steps=2, eval_bytes=256)
    cfg.model.layer = layer
    run_training(cfg, progress=False)
    assert (tmp_path / "run" / "summary.json").exists()


def test_git_state_counts_tracked_changes_only_and_env_json_starts_in_utc(monkeypatch):
    """``git status`` is asked about tracked files only (an untracked file beside the code leaves a
    run clean), and env.json's ``started`` is UTC (it ends in Z) whatever the machine's time zone."""
    import calendar
    import subprocess
    import time

    from rnnlab.train import runtime

    monkeypatch.delenv("RNNLAB_GIT_COMMIT", raising=False)
    asked = []
    monkeypatch.setattr(runtime.subprocess, "run", lambda cmd, **kw: asked.append(cmd) or subprocess.CompletedProcess(
        cmd, 0, "abc123\n" if cmd[1] == "rev-parse" else "", ""))
    assert runtime.git_state() == ("abc123", False)
    assert asked[-1] == ["git", "status", "--porcelain", "--untracked-files=no"]
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9, no daylight saving
    time.tzset()
    try:
        started = runtime.env_info(torch.device("cpu"))["started"]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert started.endswith("Z")
    assert abs(calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ")) - time.time()) < 600


@pytest.mark.parametrize("model,layer,stuck", [
    ("e1", {}, ["blocks.*.norm.weight", "norm_f.weight"]),
    ("mamba2", {"headdim": 16, "d_state": 16, "backend": "reference"},
     ["blocks.*.norm.weight", "blocks.*.mixer.dt_bias", "blocks.*.mixer.A_log", "blocks.*.mixer.D",
      "blocks.*.mixer.conv1d.weight", "blocks.*.mixer.conv1d.bias", "blocks.*.mixer.norm.weight", "norm_f.weight"]),
])
def test_pure_bf16_names_the_weights_an_update_of_lr_cannot_move_and_they_do_not(model, layer, stuck, tmp_path,
                                                                                  capsys):
    """Pure bf16 at lr 3e-4 (the reference study's protocol): a fresh run's note names the weights
    mostly of 0.125 or more, where half the spacing of bf16 numbers exceeds an update of lr (Adam's
    can be a few times lr where a gradient jumps, so those near 0.125 may still move), and training
    leaves every element of 0.5 or more as it was (half the spacing there is 6.5 lr: LayerNorm
    weights at 1, Mamba2's decay rates and skip); the small embedding moves. bf16-mixed (fp32 master
    weights) has no note."""
    cfg = TrainConfig.from_dict({"model": {"model": model, "dim": 64, "depth": 2, "layer": layer}, "seq_len": 32,
                                 "batch_size": 4, "steps": 3, "precision": "bf16", "lr": 3e-4, "eval_bytes": 4096,
                                 "device": "cpu", "out": str(tmp_path / "r")})
    trainer = Trainer(cfg, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.state.model.named_parameters()}
    trainer.train()
    note = [line for line in capsys.readouterr().err.splitlines() if "rounds away" in line]
    assert note == ["rnnlab train: note: in pure bf16 an update of lr 0.0003 rounds away on weights of 0.125 or "
                    f"more, so most elements of these do not train: {', '.join(stuck)} (--precision bf16-mixed "
                    "keeps fp32 master weights, which do)"]
    for name, p in trainer.state.model.named_parameters():
        large = before[name].abs() >= 0.5
        assert torch.equal(p.detach()[large], before[name][large]), name
        if name == "embed.weight":  # small entries (N(0, 0.02)): they train
            assert not torch.equal(p.detach(), before[name])
    mixed = run_training(TrainConfig.from_dict({**cfg.to_dict(), "precision": "bf16-mixed", "steps": 1,
                                                "out": str(tmp_path / "m")}), progress=False)
    assert mixed["complete"] and "rounds away" not in capsys.readouterr().err
