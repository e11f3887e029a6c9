"""Run records: the plain log lines of batch jobs, TensorBoard scalars and hyperparameters, the
Weights & Biases tracker (offline), and the gradient norm in each of them."""

from __future__ import annotations

import io
import json
import re
import sys
import types

import pytest

from rnnlab.cli import main
from rnnlab.train.metrics import LogLines, scalars

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "e1", "--dim", "32", "--depth", "2", "--seq-len", "32", "--batch-size", "4", "--precision",
        "fp32", "--eval-bytes", "4096", "--device", "cpu", "--lr", "3e-3"]
STEP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step (\d+)/6  loss (\S+)  lr (\S+)  grad_norm (\S+)  "
                       r"tok/s (\S+)  elapsed \d+:\d\d:\d\d(  eta \d+:\d\d:\d\d)?$")


def _records(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("no_progress", [True, False])
def test_batch_job_gets_one_line_per_logged_step_and_eval(no_progress, tmp_path, capsys):
    """``rnnlab train 2>log`` (stderr not a terminal), with or without --no-progress: one line
    at step 1 and every --log-every steps, one per evaluation; the numbers are metrics.jsonl's."""
    run = tmp_path / "run"
    argv = ["train", *TINY, "--steps", "6", "--log-every", "2", "--eval-every", "3", "--out", str(run)]
    assert main(argv + (["--no-progress"] if no_progress else [])) == 0
    err = capsys.readouterr().err.splitlines()
    steps = [STEP_LINE.match(line) for line in err if " step " in line and " eval " not in line]
    assert all(steps) and [int(m[1]) for m in steps] == [1, 2, 4, 6]
    assert [bool(m[6]) for m in steps] == [False, False, True, True]  # no ETA from warm-up steps 1-3 alone
    metrics = {r["step"]: r for r in _records(run / "metrics.jsonl")}
    for m in steps:
        r = metrics[int(m[1])]
        assert (m[2], m[3], m[4]) == (f"{r['loss']:.4f}", f"{r['lr']:.2e}", f"{r['grad_norm']:#.3g}".rstrip("."))
    evals = [line for line in err if " eval step " in line]
    assert [int(re.search(r"eval step (\d+):", e)[1]) for e in evals] == [3, 6]
    assert all(f"val_bpb {r['val_bpb']:.4f}" in e for e, r in zip(evals, _records(run / "eval.jsonl")))
    # each step's tok/s is that step's tokens over its own time (the record's elapsed_s grew by it)
    recs = [metrics[s] for s in sorted(metrics)]
    for a, b in zip(recs, recs[1:]):
        assert b["tok_per_s"] == pytest.approx((b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"]), rel=1e-6)


def test_grad_norm_keeps_three_significant_figures_with_trailing_zeros():
    """A step line's grad_norm has three significant figures whatever its value: 3.50 beside 1.14, not
    3.5, so that the column reads alike from line to line; 150, not "150." (a spike's)."""
    out = io.StringIO()
    lines = LogLines(total_steps=10, budget_s=None, stream=out)
    base = {"loss": 2.5, "lr": 3e-4, "tok_per_s": 999.0, "peak_mem_gib": None, "warmup_s": 0.0}
    for step, norm in ((1, 1.14), (2, 3.5), (3, 12.0), (4, 0.8123), (5, 150.0)):
        lines.log("train", {**base, "step": step, "tokens": step * 100, "elapsed_s": float(step), "grad_norm": norm})
    norms = [line.split("grad_norm ")[1].split()[0] for line in out.getvalue().splitlines()]
    assert norms == ["1.14", "3.50", "12.0", "0.812", "150"]  # not "150."


def test_log_line_pace_and_eta():
    """tok/s is the mean since the previous line; the ETA is the rest of the budget at the pace of
    the steps after this process's warm-up (its first WARMUP_STEPS = 3: compilation), none while
    only warm-up steps have run."""
    out = io.StringIO()
    lines = LogLines(total_steps=100, budget_s=None, stream=out)
    base = {"loss": 2.5, "lr": 3e-4, "grad_norm": 0.8123, "tok_per_s": 999.0, "peak_mem_gib": None}
    lines.log("train", {**base, "step": 1, "tokens": 1_000, "elapsed_s": 9.0, "warmup_s": 9.0})
    lines.log("train", {**base, "step": 10, "tokens": 10_000, "elapsed_s": 34.0, "warmup_s": 20.0})
    lines.log("train", {**base, "step": 20, "tokens": 20_000, "elapsed_s": 74.0, "warmup_s": 20.0,
                        "peak_mem_gib": 12.34})
    first, second, third = (line.split(" ", 2)[2] for line in out.getvalue().splitlines())
    assert first == "step 1/100  loss 2.5000  lr 3.00e-04  grad_norm 0.812  tok/s 111  elapsed 0:00:09"
    assert second == ("step 10/100  loss 2.5000  lr 3.00e-04  grad_norm 0.812  tok/s 360  elapsed 0:00:34  "
                      "eta 0:03:00")  # steps 4-10: 14 s for 7 steps, 2 s each, 90 to go
    assert third == ("step 20/100  loss 2.5000  lr 3.00e-04  grad_norm 0.812  tok/s 250  mem 12.3 GiB  "
                     "elapsed 0:01:14  eta 0:05:20")  # 4 s per step since the last line, 80 to go
    resumed = LogLines(total_steps=100, budget_s=None, stream=out,  # warm-up: steps 51-53
                       start={"step": 50, "tokens": 50_000, "elapsed_s": 100.0, "warmup_s": 20.0})
    resumed.log("train", {**base, "step": 60, "tokens": 60_000, "elapsed_s": 130.0, "warmup_s": 36.0})
    assert out.getvalue().splitlines()[-1].endswith("tok/s 333  elapsed 0:02:10  eta 0:01:20")  # 14 s, 7 steps
    timed = LogLines(total_steps=None, budget_s=600.0, stream=out)
    timed.log("train", {**base, "step": 5, "tokens": 5_000, "elapsed_s": 150.0})
    assert out.getvalue().splitlines()[-1].endswith("step 5  loss 2.5000  lr 3.00e-04  grad_norm 0.812  "
                                                    "tok/s 33  elapsed 0:02:30  eta 0:07:30")
    timed.log("train", {**base, "step": 9, "tokens": 9_000, "elapsed_s": 190.0, "warmup_s": 30.0})
    assert out.getvalue().splitlines()[-1].endswith("elapsed 0:03:10  eta 0:07:20")  # 600 - (190 - 30): warm-up left out
    timed.log("train", {**base, "step": 30, "tokens": 30_000, "elapsed_s": 640.4, "warmup_s": 30.0})
    assert out.getvalue().splitlines()[-1].endswith("elapsed 0:10:40  eta 0:00:00")  # the last step ran past the budget


def test_resumed_run_logs_this_processs_pace(tiny_train, tmp_path, capsys):
    """After --resume a line says where the run resumes; the first log line's tok/s is that of the
    steps since the checkpoint, and there is no ETA until a step after the new process's warm-up
    (steps 5-7 here) has run."""
    run = tmp_path / "run"
    argv = ["train", *TINY, "--log-every", "2", "--out", str(run), "--no-progress"]
    assert main([*argv, "--steps", "4"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "8", "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"rnnlab train: resuming {run} at step 4 (step-000004)" in err, err[:5]
    lines = [line for line in err if re.search(r" step [68]/8 ", line) and " eval " not in line]
    metrics = {r["step"]: r for r in _records(run / "metrics.jsonl")}
    tok_s = (metrics[6]["tokens"] - metrics[4]["tokens"]) / (metrics[6]["elapsed_s"] - metrics[4]["elapsed_s"])
    assert f"tok/s {tok_s:,.0f} " in lines[0] and " eta " not in lines[0], lines
    assert " eta " in lines[1], lines


def test_scalar_tags():
    rec = {"step": 3, "tokens": 96, "val_loss": 1.5, "val_bpb": 2.1, "bytes": 4064, "elapsed_s": 1.0,
           "val_bpb_train_point": 2.0, "peak_mem_gib": None}
    assert scalars("eval", rec) == {"eval/loss": 1.5, "eval/bpb": 2.1, "eval/bpb_train_point": 2.0}


def test_a_steps_curves_are_its_loss_lr_grad_norm_rate_and_memory():
    """A training record's step, tokens, elapsed_s and warmup_s are its x axes and bookkeeping,
    no curve of their own (TensorBoard, W&B)."""
    rec = {"step": 5, "tokens": 640, "loss": 2.5, "lr": 3e-4, "grad_norm": 0.8, "tok_per_s": 1000.0,
           "peak_mem_gib": 1.5, "elapsed_s": 2.0, "warmup_s": 1.0}
    assert scalars("train", rec) == {"train/loss": 2.5, "train/lr": 3e-4, "train/grad_norm": 0.8,
                                     "train/tok_per_s": 1000.0, "train/peak_mem_gib": 1.5}


def test_flat_config_joins_nested_keys_with_dots_and_writes_other_values_as_text():
    from rnnlab.train.metrics import flat_config

    cfg = types.SimpleNamespace(to_dict=lambda: {"model": {"dim": 8, "layer": {"heads": 2, "gate": None}},
                                                 "optim": {"betas": [0.9, 0.95], "lr": 1e-3}, "seed": 0})
    assert flat_config(cfg) == {"model.dim": 8, "model.layer.heads": 2, "optim.betas": "[0.9, 0.95]",
                                "optim.lr": 1e-3, "seed": 0}


def test_only_a_run_resumed_from_a_checkpoint_continues_its_wandb_run(tmp_path, monkeypatch):
    """A fresh start (step 0) in a folder that holds an earlier start's ``wandb-id.txt`` begins a new
    W&B run; a run resumed at step 5 continues the one the file names."""
    from rnnlab.train import metrics

    ids = []
    def init(**kwargs):
        ids.append(kwargs["id"])
        return types.SimpleNamespace(finish=lambda: None, define_metric=lambda *a, **k: None)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, errors=types.SimpleNamespace(Error=OSError)))
    monkeypatch.setattr(metrics, "TensorBoard", None)  # not wanted here: its start fails, with a note
    run = types.SimpleNamespace(file=lambda name: tmp_path / name, path=tmp_path)
    cfg = types.SimpleNamespace(run=types.SimpleNamespace(wandb="p"), to_dict=dict,
                                budget=types.SimpleNamespace(chosen=lambda: ("steps", 10)))
    (tmp_path / metrics.WANDB_ID).write_text("0123456789ab\n")
    for step in (5, 0):
        start = {"step": step, "tokens": 0, "elapsed_s": 0.0, "warmup_s": 0.0}
        for t in metrics.build_trackers(run, cfg, start, 10, progress=False):
            t.close()
    assert ids[0] == "0123456789ab" and ids[1] != ids[0]


def test_wandb_curves_are_plotted_against_the_training_step_not_wandbs_own(tmp_path, monkeypatch):
    """W&B drops a record logged at a step below its last one, which a resumed run's records from its
    checkpoint on are: the tracker logs the training step as a key of its own, the curves' x axis,
    and leaves W&B's step to count records."""
    from rnnlab.train import metrics

    calls = []
    fake_run = types.SimpleNamespace(define_metric=lambda *a, **k: calls.append(("define", a, k)),
                                     log=lambda *a, **k: calls.append(("log", a, k)), finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **k: fake_run,
                                                                   errors=types.SimpleNamespace(Error=OSError)))
    run = types.SimpleNamespace(file=lambda name: tmp_path / name, path=tmp_path)
    cfg = types.SimpleNamespace(run=types.SimpleNamespace(wandb="p"), to_dict=dict)
    tracker = metrics.Wandb(run, cfg, resumed=True)
    tracker.log("train", {"step": 7, "tokens": 896, "loss": 2.5})
    tracker.log("train", {"step": 5, "tokens": 640, "loss": 2.7})  # the resumed session, from step 4's checkpoint
    tracker.log("eval", {"step": 5, "tokens": 640, "val_bpb": 3.1})
    key = metrics.Wandb.STEP_KEY
    assert [c for c in calls if c[0] == "define"] == [
        ("define", (key,), {}), ("define", ("train/*",), {"step_metric": key}),
        ("define", ("eval/*",), {"step_metric": key})]
    assert [c for c in calls if c[0] == "log"] == [
        ("log", ({"train/loss": 2.5, key: 7},), {}),
        ("log", ({"train/loss": 2.7, key: 5},), {}),
        ("log", ({"eval/bpb": 3.1, key: 5},), {})]


def test_durations_are_rounded_to_the_second():
    from rnnlab.train.metrics import duration

    assert (duration(89.6), duration(89.4), duration(3600)) == ("0:01:30", "0:01:29", "1:00:00")


def test_scalars_leave_out_flags_text_and_missing_values():
    """The final evaluation's record carries ``final: true`` and the extra file's name: no curves."""
    rec = {"step": 6, "tokens": 768, "val_bpb": 2.1, "final": True, "extra_data": "/x/wiki.txt",
           "extra_val_bpb": 2.5, "extra_bytes": 1000, "curve_bytes": 500, "val_bpb_train_point": None}
    assert scalars("eval", rec) == {"eval/bpb": 2.1, "eval/extra_val_bpb": 2.5}


def test_log_lines_of_a_minutes_budget_count_down_its_seconds(tiny_train, tmp_path):
    from rnnlab.train.metrics import build_trackers
    from rnnlab.train.rundir import RunDir

    start = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "warmup_s": 0.0}
    trackers = build_trackers(RunDir(tmp_path), tiny_train(tmp_path, steps=None, minutes=2), start, None, False)
    try:
        (lines,) = [t for t in trackers if isinstance(t, LogLines)]
        assert lines.budget_s == 120.0
        lines.stream = io.StringIO()
        lines.log("train", {"step": 10, "tokens": 1280, "loss": 2.0, "lr": 1e-3, "grad_norm": 0.5, "tok_per_s": 100.0,
                            "peak_mem_gib": None, "elapsed_s": 35.0, "warmup_s": 5.0})
        assert lines.stream.getvalue().rstrip().endswith("elapsed 0:00:35  eta 0:01:30")
    finally:
        for tracker in trackers:
            tracker.close()


def test_tensorboard_gets_grad_norm_and_hparams(tiny_train, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnlab.train.trainer import run_training

    run = tmp_path / "run"
    run_training(tiny_train(run, steps=4, log_every=2, grad_clip=0.5), progress=False)
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    metrics = {r["step"]: r for r in _records(run / "metrics.jsonl")}
    norms = acc.Scalars("train/grad_norm")
    assert [e.step for e in norms] == [1, 2, 4]
    assert [e.value for e in norms] == pytest.approx([metrics[e.step]["grad_norm"] for e in norms], rel=1e-6)
    assert max(e.value for e in norms) > 0.5  # the norm before clipping
    assert acc.Scalars("eval/bpb")[-1].step == 4
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")


def test_the_last_step_is_logged_whatever_log_every(tiny_train, tmp_path, capsys):
    """The log lines and TensorBoard get the first step, every ``log_every``-th and the last, also
    when the budget does not end on a multiple of ``log_every``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnlab.train.trainer import run_training

    run = tmp_path / "run"
    run_training(tiny_train(run, steps=5, log_every=2), progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if re.search(r" step \d+/5 ", line)]
    assert [int(re.search(r"step (\d+)/5", line).group(1)) for line in lines] == [1, 2, 4, 5]
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [1, 2, 4, 5]


def test_the_step_a_ctrl_c_stops_at_is_logged(tiny_train, tmp_path, capsys, ctrl_c_on_call):
    """A Ctrl-C ends the run after the step it came in: that step is the run's last, so the log
    lines and TensorBoard get it though it is no multiple of ``log_every`` (here step 3 of 10 at
    ``log_every`` 2): the log ends at the step the run stopped and saved at."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnlab.train.trainer import Trainer, run_training

    ctrl_c_on_call(Trainer, "train_step", call=3)
    run = tmp_path / "run"
    assert run_training(tiny_train(run, steps=10, log_every=2), progress=False)["steps"] == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if re.search(r" step \d+/10 ", line)]
    assert [int(re.search(r"step (\d+)/10", line).group(1)) for line in lines] == [1, 2, 3]
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [1, 2, 3]


def test_the_step_a_ctrl_c_in_its_evaluation_stops_at_is_logged(tiny_train, tmp_path, capsys, ctrl_c_on_call):
    """A Ctrl-C that comes during the evaluation after a step (here step 3 of 10 at ``log_every``
    2, ``eval_every`` 3) also makes that step the run's last: the log lines and TensorBoard get it;
    metrics.jsonl, which had it already, keeps one record of it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rnnlab.train.trainer import Trainer, run_training

    ctrl_c_on_call(Trainer, "evaluate", call=1)
    run = tmp_path / "run"
    assert run_training(tiny_train(run, steps=10, log_every=2, eval_every=3), progress=False)["steps"] == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if re.search(r" step \d+/10 ", line)]
    assert [int(re.search(r"step (\d+)/10", line).group(1)) for line in lines] == [1, 2, 3]
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [1, 2, 3]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


class _RecordingWriter:
    """A stand-in for TensorBoard's ``SummaryWriter`` that keeps what it was given."""

    made: list["_RecordingWriter"] = []

    def __init__(self, log_dir, purge_step=None, **kw):
        self.purge_step, self.steps = purge_step, []
        # the event writer's file and thread, which the tracker names in a write error and keeps quiet
        thread = types.SimpleNamespace(_worker=types.SimpleNamespace())
        events = types.SimpleNamespace(_file_name=log_dir, _async_writer=thread)
        self.file_writer = types.SimpleNamespace(add_summary=lambda summary: None, event_writer=events)
        _RecordingWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.steps.append(step)

    def flush(self):
        pass

    def close(self):
        pass


def test_resumed_run_purges_the_tensorboard_events_after_its_checkpoint(tiny_train, tmp_path, monkeypatch):
    """TensorBoard hides the events a writer's ``purge_step`` names and all later ones: a run
    resumed from its step-2 checkpoint purges from step 3 (what a crashed session logged after the
    checkpoint, logged again now) and keeps step 2's; a fresh run purges nothing."""
    from rnnlab.train.trainer import run_training

    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = _RecordingWriter
    summary = types.ModuleType("torch.utils.tensorboard.summary")
    summary.hparams = lambda hparams, metrics: []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", board)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard.summary", summary)
    monkeypatch.setattr(_RecordingWriter, "made", [])
    run_training(tiny_train(tmp_path / "r", steps=2, log_every=1), progress=False)
    run_training(tiny_train(tmp_path / "r", steps=4, log_every=1, resume=True), progress=False)
    fresh, resumed = _RecordingWriter.made
    assert (fresh.purge_step, resumed.purge_step) == (None, 3)
    assert min(resumed.steps) == 3


def test_eval_record_is_on_disk_as_soon_as_it_is_logged(tiny_train, tmp_path, monkeypatch):
    """eval.jsonl is flushed after each evaluation (metrics.jsonl only every --log-every steps and
    before a checkpoint): another process following a long run sees each evaluation at once."""
    from rnnlab.train.trainer import Trainer, run_training

    run, real, seen = tmp_path / "r", Trainer.train_step, []

    def train_step(self, batch):
        seen.append([r["step"] for r in _records(run / "eval.jsonl")])  # read as another reader would
        return real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    run_training(tiny_train(run, steps=4, eval_every=2, log_every=100, checkpoint_every=0), progress=False)
    assert seen == [[], [], [2], [2]]


def test_wandb_offline_run_is_resumed(tiny_train, tmp_path, monkeypatch):
    """--wandb PROJECT with WANDB_MODE=offline: a W&B run in the run folder gets the config and
    the train/eval curves; resuming continues the same W&B run."""
    wandb = pytest.importorskip("wandb")
    from rnnlab.train.trainer import run_training

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing shared with other W&B users
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    run = tmp_path / "run"
    run_training(tiny_train(run, steps=2, wandb="rnnlab-test"), progress=False)
    wandb.teardown()  # W&B's service writes the run's file in the background; this waits for it
    run_id = (run / "wandb-id.txt").read_text().strip()
    (first,) = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data = first.read_bytes()
    assert all(key in data for key in (b"train/grad_norm", b"train/loss", b"eval/bpb", b"grad_accum", b"trainer/step"))
    # aside: W&B names a run's folder by its start to the second, so a resume within that second
    # would write into the same folder
    first.parent.rename(tmp_path / "first-session")
    run_training(tiny_train(run, steps=3, wandb="rnnlab-test", resume=True), progress=False)
    wandb.teardown()  # the resumed run's file, too
    assert (run / "wandb-id.txt").read_text().strip() == run_id
    (resumed,) = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")  # the same W&B run's id
    assert b"train/loss" in resumed.read_bytes()


def test_wandb_missing_is_a_one_line_error_before_the_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    run = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--wandb", "p", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rnnlab train: error: --wandb needs the wandb package: pip install wandb (rnnlab's extra [wandb])"
    assert not run.exists()


def test_a_wandb_run_that_cannot_start_leaves_the_run_folder_unused(tmp_path, capsys, monkeypatch):
    """W&B failing to start (not logged in, no network) is one line, and the fresh run's folder keeps
    none of what its start wrote (config.json, env.json, wandb-id.txt), nor the folder itself where this
    command made it (and its parents), where a folder of ``.lock`` alone was left; a folder that was
    there before stays: the same command runs again and says the same, not "already holds an
    incomplete run ... pass --overwrite"; without --wandb it trains."""
    class Error(Exception):
        pass

    def init(**kwargs):
        raise Error("api_key not configured (no-tty)")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, errors=types.SimpleNamespace(Error=Error)))
    run = tmp_path / "made" / "run"
    argv = ["train", *TINY, "--steps", "2", "--out", str(run)]
    for _ in range(2):
        assert main([*argv, "--wandb", "p"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["rnnlab train: error: W&B could not start a run: api_key not configured (no-tty) "
                       "(WANDB_MODE=offline logs locally; --wandb '' trains without W&B, a resumed run too)"]
        assert not run.parent.exists()
    run.mkdir(parents=True)  # there before this command: it stays
    (run.parent / "notes.txt").write_text("mine")
    for _ in range(2):
        assert main([*argv, "--wandb", "p"]) == 2
        assert {p.name for p in run.iterdir()} <= {".lock"} and (run.parent / "notes.txt").exists()
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads((run / "summary.json").read_text())["complete"]


def test_steady_throughput_leaves_out_the_warm_up_steps():
    """tok/s counts only the steps after the first WARMUP_STEPS (compilation, autotuning): three
    slow first steps do not lower it; before they are over there is no steady rate (None)."""
    from rnnlab.train.metrics import WARMUP_STEPS, Throughput

    t = Throughput()
    flags = [t.add(100, 10.0) for _ in range(WARMUP_STEPS)]
    assert all(flags) and t.tok_per_s() is None  # only warm-up so far
    assert t.add(100, 0.1) is False and t.add(100, 0.1) is False
    assert t.tok_per_s() == pytest.approx(1000.0)
    assert Throughput().tok_per_s() is None  # no step, no rate


def test_progress_bar_names_the_model_as_its_run_folder_does(tiny_train, tmp_path):
    """The bar reads "e1 32x2" (width x depth, as runs/e1-32x2), not "d32", which the README's
    tables use for a depth."""
    from rnnlab.train.metrics import ProgressBar

    cfg = tiny_train(tmp_path, dim=32, depth=2)
    bar = ProgressBar(cfg, 0, 10)
    try:
        assert bar.bar.desc == "e1 32x2"
    finally:
        bar.bar.close()


def test_closing_the_bar_keeps_the_other_trackers(tiny_train, tmp_path):
    """``RunLogger.close_bar`` (before a line from another thread, ``LostPeerWatch``'s end of a
    rank) closes the progress bar and takes it out; the logs stay open."""
    import torch

    from rnnlab.train.metrics import JsonlFiles, ProgressBar, RunLogger
    from rnnlab.train.rundir import RunDir

    cfg = tiny_train(tmp_path, dim=32, depth=2)
    (tmp_path / "r").mkdir()
    logger = RunLogger(RunDir(tmp_path / "r"), cfg, torch.device("cpu"),
                       {"step": 0, "tokens": 0, "elapsed_s": 0.0, "warmup_s": 0.0}, 10, progress=False)
    bar = ProgressBar(cfg, 0, 10)
    logger.trackers.append(bar)
    kept = [t for t in logger.trackers if t is not bar]
    assert any(isinstance(t, JsonlFiles) for t in kept)
    logger.close_bar()
    assert logger.trackers == kept and bar.bar.disable is True  # tqdm's close disables the bar
    logger.close()


def test_an_eval_line_groups_its_byte_counts_in_thousands():
    from rnnlab.train.metrics import eval_line

    line = eval_line({"step": 5, "val_loss": 1.0, "val_bpb": 1.5, "bytes": 1234567})
    assert line == "eval step 5: val_loss 1.0000  val_bpb 1.5000  (1,234,567 held-out bytes)"


# a child process whose TensorBoard writes fail once they carry a step's curves (its hparams, written
# at the start, have no grad_norm)
FULL_TENSORBOARD = """\
import errno, sys
from tensorboard.compat.tensorflow_stub.io import gfile
append = gfile.LocalFileSystem.append

def full(self, filename, content, binary_mode=False):
    if b"train/grad_norm" in content:
        raise OSError(errno.ENOSPC, "No space left on device")
    append(self, filename, content, binary_mode)

gfile.LocalFileSystem.append = full
from rnnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("full", ["metrics.jsonl", "tb"])
def test_a_log_the_disk_cannot_take_ends_the_run_in_one_line_naming_it(full, tiny_train, tmp_path):
    """A full disk while a resumed run logs (metrics.jsonl past a file-size limit: EFBIG; TensorBoard's
    event file, written by its thread: ENOSPC) ends the run with one line naming the file, no traceback
    of TensorBoard's thread beside it; the checkpoint is kept and a resume continues from it."""
    import resource
    import signal
    import subprocess

    from rnnlab.train.rundir import RunDir
    from rnnlab.train.trainer import run_training

    run = tmp_path / "r"
    run_training(tiny_train(run, steps=20), progress=False)
    limit = (run / "metrics.jsonl").stat().st_size + 500  # a few steps' records (the event file is smaller)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    events = set((run / "tb").iterdir())
    code = FULL_TENSORBOARD if full == "tb" else "import sys; from rnnlab.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "train", "--resume", "--out", str(run), "--steps", "40",
                        "--log-every", "1", "--checkpoint-every", "0", "--no-progress"],
                       preexec_fn=limit_file_size if full == "metrics.jsonl" else None,
                       capture_output=True, text=True, timeout=120)
    if full == "tb":
        (written,) = set((run / "tb").iterdir()) - events  # this session's event file
        line = f"No space left on device: {written}"
    else:
        line = f"File too large: {run / 'metrics.jsonl'}"
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == f"rnnlab train: error: {line}"
    assert RunDir(run).checkpoint().step == 20
    assert run_training(tiny_train(run, steps=24, resume=True), progress=False)["complete"]
