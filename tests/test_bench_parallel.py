"""``rnnlab bench --gpus N``: up to N runs at once, one process per GPU (CPU, fake devices)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from rnnlab.bench import parallel
from rnnlab.bench.runner import run_plan
from rnnlab.bench.suite import load_suite, plan_suite
from rnnlab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


class FakeProc:
    """A training process that finishes after ``polls`` polls, writing a complete summary (and a
    checkpoint, with ``checkpoint``)."""

    live: list["FakeProc"] = []
    max_live = 0

    def __init__(self, pr, gpu, code=0, polls=3, complete=None, checkpoint=False, **summary):
        self.pr, self.gpu, self.code, self.polls, self.returncode = pr, gpu, code, polls, None
        self.checkpoint = checkpoint
        self.complete = code == 0 if complete is None else complete  # what its summary.json says
        self.summary = summary  # more summary.json keys
        FakeProc.live.append(self)
        FakeProc.max_live = max(FakeProc.max_live, len(FakeProc.live))

    def send_signal(self, signum):  # a stop: the run saves a checkpoint and exits 130
        self.signals = [*getattr(self, "signals", []), signum]
        self.code, self.complete, self.checkpoint, self.polls = 130, False, True, 0

    def wait(self):
        return self.poll()

    def poll(self):
        self.polls -= 1
        if self.polls <= 0 and self.returncode is None:
            self.returncode = self.code
            FakeProc.live.remove(self)
            d = self.pr.dir
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.json").write_text(json.dumps(self.pr.cfg.to_dict()))
            (d / "summary.json").write_text(json.dumps({"complete": self.complete, "loss": 1.0, "steps": 2,
                                                        "budget": {"steps": 2}, "model": self.pr.cfg.model.model,
                                                        **self.summary}))
            if self.checkpoint:
                (d / "ckpt" / "step-000001").mkdir(parents=True)
        return self.returncode


@pytest.fixture
def fake_launch(monkeypatch, tmp_path):
    FakeProc.live, FakeProc.max_live = [], 0
    launched: list[tuple[str, str, bool]] = []

    def launch(pr, gpu, out, resume, progress):
        launched.append((pr.label, gpu, resume))
        log = out / "logs" / f"{pr.label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("step 1\nCUDA error: out of memory\n\n" if pr.label == "mamba2" else "ok\n")  # its last line
        return FakeProc(pr, gpu, code=1 if pr.label == "mamba2" else 0), log

    monkeypatch.setattr(parallel, "launch", launch)
    monkeypatch.setattr(parallel, "POLL_S", 0.0)
    return launched


def test_scheduler_runs_at_most_one_run_per_gpu(tmp_path, fake_launch):
    suite = load_suite("tiny")
    out = tmp_path / "s"
    res = run_plan(suite, plan_suite(suite, out, steps=2), out, gpus=["3", "5"], log=lambda m: None)
    assert FakeProc.max_live == 2  # both GPUs busy, never more than one run on either
    assert sorted(label for label, _, _ in fake_launch) == sorted(r.name for r in suite.runs)
    assert {gpu for _, gpu, _ in fake_launch} == {"3", "5"}
    assert res["failed"] == {"mamba2": "exit 1: CUDA error: out of memory"}
    assert len(res["trained"]) == len(suite.runs) - 1 and not res["stopped"]
    plan = json.loads((out / "suite.json").read_text())
    assert {r["dir"]: r["gpu"] for r in plan["runs"]} == {label: gpu for label, gpu, _ in fake_launch}

    fake_launch.clear()  # again: complete runs are skipped, the failed one is retried
    res = run_plan(suite, plan_suite(suite, out, steps=2), out, gpus=["3", "5"], log=lambda m: None)
    assert [label for label, _, _ in fake_launch] == ["mamba2"] and len(res["skipped"]) == len(suite.runs) - 1


def test_a_ctrl_c_as_a_run_starts_stops_that_run_too(tmp_path, fake_launch, monkeypatch):
    """A Ctrl-C that lands while a run's process starts (after it exists, before the bench holds it)
    waits until the bench holds it: that run gets the stop too, saves its checkpoint and is recorded,
    not left training unseen until the bench's exit kills it."""
    import signal

    started = []

    def launch(pr, gpu, out, status, progress):
        started.append(FakeProc(pr, gpu, polls=10**6))
        signal.raise_signal(signal.SIGINT)  # the Ctrl-C, the process started
        return started[-1], out / "log"

    monkeypatch.setattr(parallel, "launch", launch)  # (Python's own Ctrl-C handler: conftest's autouse fixture)
    suite = load_suite("tiny")
    out = tmp_path / "s"
    lines = []
    res = run_plan(suite, plan_suite(suite, out, steps=2), out, gpus=["0"], log=lines.append)
    assert len(started) == 1 and started[0].signals == [parallel.STOP]
    assert res["stopped"] and res["trained"] == [suite.runs[0].name]
    assert lines[-1].endswith(f"interrupted; checkpoint kept ({parallel.RESUME_HINT})"), lines


def test_a_ctrl_c_while_the_stopped_runs_are_recorded_waits_for_their_records(tmp_path, fake_launch, monkeypatch):
    """A further Ctrl-C that lands while the bench records a run it stopped (``stop_running``) waits
    until that run is recorded, then goes to the runs still going as an abort: every run is recorded and
    the suite's result comes back for its report, where the Ctrl-C escaped from the record, leaving the
    other run unrecorded and the report unwritten."""
    import signal

    started, record, ctrl_c = [], parallel.finish, [signal.SIGINT]

    def launch(pr, gpu, out, status, progress):
        started.append(FakeProc(pr, gpu, polls=10**6))
        if len(started) == 2:
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C, both runs going
        return started[-1], out / "log"

    def finish(*args):
        if ctrl_c:
            signal.raise_signal(ctrl_c.pop())  # the next, as the first run stopped is recorded
        record(*args)

    monkeypatch.setattr(parallel, "launch", launch)
    monkeypatch.setattr(parallel, "finish", finish)
    suite = load_suite("tiny")
    out = tmp_path / "s"
    lines = []
    try:
        res = run_plan(suite, plan_suite(suite, out, steps=2, runs="e1,mingru"), out, gpus=["0", "1"], log=lines.append)
    except KeyboardInterrupt:
        pytest.fail(f"the Ctrl-C escaped the bench as it recorded its runs: {lines}")
    assert not ctrl_c and [p.signals for p in started] == [[parallel.STOP]] * 2
    assert res["stopped"] and res["trained"] == ["e1", "mingru"]
    assert sum(line.endswith(f"interrupted; checkpoint kept ({parallel.RESUME_HINT})") for line in lines) == 2, lines


def test_a_bench_that_fails_launching_a_run_stops_the_running_ones_first(tmp_path, monkeypatch):
    """A failure of the bench itself while runs are going (disk full as it writes the next run's log)
    is raised only after the running runs were stopped, saved their checkpoints and were recorded:
    left running, the bench's exit would have killed them unsaved."""
    FakeProc.live = []
    started = []

    def launch(pr, gpu, out, status, progress):
        if started:
            raise OSError(28, "No space left on device")
        started.append(FakeProc(pr, gpu, polls=10**6))
        return started[-1], out / "log"

    monkeypatch.setattr(parallel, "launch", launch)
    monkeypatch.setattr(parallel, "POLL_S", 0.0)
    suite = load_suite("tiny")
    out = tmp_path / "s"
    lines = []
    with pytest.raises(OSError, match="No space left"):
        run_plan(suite, plan_suite(suite, out, steps=2), out, gpus=["0", "1"], log=lines.append)
    assert len(started) == 1 and started[0].signals == [parallel.STOP] and started[0].returncode == 130
    assert (started[0].pr.dir / "ckpt").is_dir() and not FakeProc.live
    assert any("the bench failed (OSError" in line for line in lines)
    assert lines[-1].endswith(f"interrupted; checkpoint kept ({parallel.RESUME_HINT})"), lines


def test_a_sigterm_as_a_run_starts_stops_the_suite_where_the_benchs_ctrl_c_is_ignored(tmp_path, monkeypatch):
    """A bench started where Ctrl-C is ignored (``cmd &`` in a script) takes a SIGTERM as its stop
    (``stops_as_ctrl_c``) also when it lands as a run starts, inside the block that holds Ctrl-C
    back (``interrupts_deferred``): the stop waits for the block's end, then the run gets it and the
    suite stops. The block's own handler stood where the ignore was, so the stop came as a SIGINT,
    held and then raised again into the ignore: lost, the suite trained on."""
    import signal

    from rnnlab import signals

    monkeypatch.setattr(parallel, "POLL_S", 0.0)
    FakeProc.live, started = [], []

    def launch(pr, gpu, out, status, progress):
        started.append(FakeProc(pr, gpu, polls=50))
        signal.raise_signal(signal.SIGTERM)  # `kill BENCH`, the process started
        return started[-1], out / "log"

    monkeypatch.setattr(parallel, "launch", launch)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.stops_as_ctrl_c():
            suite = load_suite("tiny")
            out = tmp_path / "s"
            res = run_plan(suite, plan_suite(suite, out, steps=2, runs="e1,mingru"), out, gpus=["0"], log=print)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(started) == 1 and getattr(started[0], "signals", None) == [parallel.STOP]
    assert res["stopped"] and res["trained"] == ["e1"]


def test_visible_gpus_respects_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3,,7,")  # spaces and empty entries, as a script may write it
    assert parallel.visible_gpus(2) == ["2", "3"] and parallel.visible_gpus(3) == ["2", "3", "7"]
    with pytest.raises(ValueError, match="more GPUs than the 3 visible"):
        parallel.visible_gpus(4)


def test_a_gpu_named_twice_in_cuda_visible_devices_is_refused_not_given_two_runs(tmp_path, fake_launch, monkeypatch,
                                                                                 capsys):
    """``CUDA_VISIBLE_DEVICES=0,0 rnnlab bench --gpus 2``: one line, exit 2, nothing trained. Taken as
    two GPUs, GPU 0 trained two runs at once, and the bench lost the first (its process replaced in
    the bench's table of running runs): never recorded, never stopped by a Ctrl-C, killed unsaved at
    the bench's exit."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 0")
    code = main(["bench", "tiny", "--steps", "2", "--out", str(tmp_path / "s"), "--gpus", "2", "--no-plots"])
    assert code == 2 and fake_launch == []
    assert "CUDA_VISIBLE_DEVICES names GPU 0 twice" in capsys.readouterr().err


def test_bench_gpus_end_to_end(tmp_path, monkeypatch, capsys):
    """Two real `rnnlab train` processes at once (on the CPU; the device list is faked), then
    the report names the GPU each run used."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two tiny trainings share the cores
    suite = tmp_path / "two.toml"
    suite.write_text('name = "two"\ndescription = "two tiny runs"\n[defaults]\nbatch_size = 2\nseq_len = 16\n'
                     'steps = 3\nprecision = "fp32"\nlr = 1e-3\n'
                     '[[runs]]\nname = "a"\nmodel = "mingru"\ndim = 16\ndepth = 1\n'
                     '[[runs]]\nname = "b"\nmodel = "e16"\ndim = 16\ndepth = 1\n')
    out = tmp_path / "out"
    rc = main(["bench", str(suite), "--out", str(out), "--gpus", "2", "--device", "cpu", "--eval-bytes", "1024",
               "--no-plots"])
    assert rc == 0, capsys.readouterr().err
    for name in ("a", "b"):
        assert json.loads((out / name / "summary.json").read_text())["complete"]
    gpus = {r["dir"]: r["gpu"] for r in json.loads((out / "suite.json").read_text())["runs"]}
    assert sorted(gpus.values()) == ["0", "1"]
    md = (out / "report.md").read_text()
    assert "| GPU |" in md and f"| {gpus['a']} |" in md


def _completed_on_gpu_3(tmp_path, runs: str):
    """The tiny suite's ``runs`` trained complete (2 steps, fake processes on GPU 3) into
    ``tmp_path/s``, e1 with a checkpoint, and a new --extra-val-data file: ``(suite, out, extra)``."""
    suite = load_suite("tiny")
    out = tmp_path / "s"
    run_plan(suite, plan_suite(suite, out, steps=2, runs=runs), out, gpus=["3"], log=lambda m: None)
    (out / "e1" / "ckpt" / "step-000002").mkdir(parents=True)
    extra = tmp_path / "extra.txt"
    extra.write_bytes(b"x" * 1000)
    return suite, out, extra


def test_complete_runs_lacking_a_new_extra_file_are_rescored_on_a_gpu_keeping_the_one_they_trained_on(
        tmp_path, fake_launch):
    """``--gpus N`` with a new --extra-val-data over complete runs: one with a checkpoint is launched
    as a resume ("rescore": its process trains no step, scores the file) and keeps in suite.json the
    GPU it trained on; one without is skipped and named as lacking the file."""
    suite, out, extra = _completed_on_gpu_3(tmp_path, "e1,mingru")
    fake_launch.clear()
    said: list[str] = []
    res = run_plan(suite, plan_suite(suite, out, steps=2, runs="e1,mingru", extra_val_data=str(extra)), out,
                   gpus=["5"], log=said.append)
    assert fake_launch == [("e1", "5", "rescore")]
    assert (res["rescored"], res["trained"], res["skipped"]) == (["e1"], [], ["mingru"])
    assert res["stale"] == {"mingru": ["no score on extra.txt"]}
    assert any(m.startswith("[1/2] e1: complete; scoring its final evaluation again from its checkpoint, no training "
                            "step (no score on extra.txt) on GPU 5") for m in said), said
    assert said[-1].startswith("rnnlab bench: 1 complete run keeps final scores that do not cover this command")
    doc = json.loads((out / "suite.json").read_text())
    assert {r["dir"]: r.get("gpu") for r in doc["runs"]} == {"e1": "3", "mingru": "3"}


def test_a_suite_continued_by_later_commands_keeps_every_run_and_command(tmp_path, fake_launch):
    """``--runs a,b``, then ``--runs c``, then more ``--seeds`` into one folder (a suite split over
    GPU jobs): suite.json keeps every run, in the suite's order, with the GPU each used, and every
    command; the report shows them all and the seeds, the unsuffixed run's included."""
    from rnnlab.bench.report import write_report
    from rnnlab.bench.suite import write_plan

    suite = load_suite("tiny")
    out = tmp_path / "s"
    for i, (runs, seeds, gpus) in enumerate((("mingru,e1", None, ["3", "5"]), ("minlstm", None, ["5"]),
                                             ("mingru", "7,8", ["3", "5"]))):
        run_plan(suite, plan_suite(suite, out, steps=2, runs=runs, seeds=seeds), out, gpus=gpus,
                 command=f"rnnlab bench tiny #{i}", log=lambda m: None)
    doc = json.loads((out / "suite.json").read_text())
    assert [r["dir"] for r in doc["runs"]] == ["e1", "mingru", "mingru-s7", "mingru-s8", "minlstm"]
    assert {r["dir"]: r["gpu"] for r in doc["runs"]} == {label: gpu for label, gpu, _ in fake_launch}
    assert [c["command"] for c in doc["invocations"]] == [f"rnnlab bench tiny #{i}" for i in range(3)]
    md = write_report(out, plots=False)["md"].read_text()
    assert "- **Commands** (3, one after another into this folder, oldest first):" in md
    assert all(f"  - `rnnlab bench tiny #{i}`" in md for i in range(3))
    seed = plan_suite(suite, out, steps=2)[0].cfg.run.seed
    assert f"- **Seeds:** {', '.join(map(str, sorted({7, 8, seed})))} (mean ± sample std over seeds)" in md
    table = md.split("| Model | Params | Loss")[1].split("\n\n")[0].splitlines()[2:]
    assert [line.split("|")[1].strip() for line in table] == ["e1", "mingru", "minlstm"]  # the suite's order

    # a run trained again keeps no GPU from before (it may train elsewhere, or in this process); a
    # run folder deleted since leaves the plan; the same command twice is listed once
    (out / "e1" / "summary.json").unlink()
    shutil.rmtree(out / "mingru-s8")
    for _ in range(2):
        write_plan(suite, plan_suite(suite, out, steps=2, runs="e1"), out, "rnnlab bench tiny #3", {})
    doc = json.loads((out / "suite.json").read_text())
    used = {label: gpu for label, gpu, _ in fake_launch}
    assert {r["dir"]: r.get("gpu") for r in doc["runs"]} == {
        "e1": None, **{d: used[d] for d in ("mingru", "mingru-s7", "minlstm")}}
    assert [c["command"] for c in doc["invocations"]] == [f"rnnlab bench tiny #{i}" for i in range(4)]


def test_a_suite_json_from_before_continued_suites_is_continued(tmp_path):
    """A suite.json written before suites kept their parts (one command at its top level) is read
    as that one command, and continued; a folder holding one of another suite is refused."""
    from rnnlab.bench.report import protocol_overrides
    from rnnlab.bench.suite import invocations, write_plan

    suite = load_suite("tiny")
    out = tmp_path / "s"
    out.mkdir()
    legacy = {"suite": "tiny", "command": "rnnlab bench tiny --steps 2", "options": {"steps": 2},
              "written": "2026-11-01T00:00:00Z", "runs": []}
    (out / "suite.json").write_text(json.dumps(legacy))
    write_plan(suite, plan_suite(suite, out, steps=3, runs="e1"), out, "rnnlab bench tiny --steps 3", {"steps": 3})
    doc = json.loads((out / "suite.json").read_text())
    assert [c["command"] for c in invocations(doc)] == ["rnnlab bench tiny --steps 2", "rnnlab bench tiny --steps 3"]
    assert protocol_overrides(doc) == {"steps": [2, 3]}  # two commands, two budgets: both named
    (out / "suite.json").write_text(json.dumps({**legacy, "suite": "other"}))
    with pytest.raises(ValueError, match="is suite other's folder"):
        plan_suite(suite, out, steps=3, runs="e1")


def test_a_process_that_exits_0_with_its_run_incomplete_is_not_counted_done(tmp_path, monkeypatch):
    """A training process that exits 0 while its summary.json says the run is incomplete is a
    failed run, named with its log's last line, not a trained one; the next command trains it
    again."""
    monkeypatch.setattr(parallel, "POLL_S", 0.0)
    FakeProc.live, FakeProc.max_live = [], 0

    launched: list[str] = []

    def launch(pr, gpu, out, status, progress):  # mingru's first process stops early, exiting 0
        launched.append(pr.label)
        log = out / "logs" / f"{pr.label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("stopped early\n")
        return FakeProc(pr, gpu, code=0, complete=launched.count("mingru") != 1), log

    monkeypatch.setattr(parallel, "launch", launch)
    suite = load_suite("tiny")
    out = tmp_path / "s"
    logged: list[str] = []
    res = run_plan(suite, plan_suite(suite, out, steps=2, runs="e1,mingru"), out, gpus=["0", "1"], log=logged.append)
    assert res["trained"] == ["e1"] and res["failed"] == {"mingru": "exit 0: stopped early"} and not res["stopped"]
    assert any("mingru (GPU" in line and "FAILED (exit 0)" in line for line in logged)
    res = run_plan(suite, plan_suite(suite, out, steps=2, runs="e1,mingru"), out, gpus=["0", "1"], log=logged.append)
    assert res["skipped"] == ["e1"] and res["trained"] == ["mingru"] and launched == ["e1", "mingru", "mingru"]


@pytest.mark.parametrize("at_end", [True, False])
def test_a_process_interrupted_is_trained_and_stops_the_suite(tmp_path, monkeypatch, at_end):
    """A training process that exits 130 because of a Ctrl-C counts as trained, not failed, and
    stops the suite: no further run starts. ``at_end``: the Ctrl-C came after its budget was spent,
    its run complete (summary.json says so, with interrupted_at_end), logged with its outcome;
    else it saved a checkpoint mid-run, which the next command resumes."""
    monkeypatch.setattr(parallel, "POLL_S", 0.0)
    FakeProc.live, FakeProc.max_live = [], 0
    launched: list[str] = []

    def launch(pr, gpu, out, status, progress):
        launched.append(pr.label)
        log = out / "logs" / f"{pr.label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("ok\n")
        return FakeProc(pr, gpu, code=130, complete=at_end, checkpoint=not at_end,
                        **({"interrupted_at_end": True} if at_end else {})), log

    monkeypatch.setattr(parallel, "launch", launch)
    suite = load_suite("tiny")
    out = tmp_path / "s"
    logged: list[str] = []
    res = run_plan(suite, plan_suite(suite, out, steps=2, runs="e1,mingru"), out, gpus=["0"], log=logged.append)
    assert launched == ["e1"] and res["trained"] == ["e1"] and res["stopped"] and not res["failed"]
    if at_end:
        assert "e1 (GPU 0" in logged[-2] and logged[-2].endswith("loss 1.0000")
        assert "Ctrl-C at its end; stopping the suite" in logged[-1]
    else:
        assert "e1 (GPU 0" in logged[-1] and "interrupted; checkpoint kept (run the same" in logged[-1]


def test_a_run_the_benchs_stop_ends_as_it_starts_is_stopped_not_failed(tmp_path):
    """The bench's stop (a SIGTERM, ``parallel.STOP``) can reach a run before rnnlab handles stops
    (Python still starting), which then ends by it with nothing written: logged as stopped, not
    FAILED; the same exit when the bench did not stop is a failure."""
    import signal
    from types import SimpleNamespace

    run = SimpleNamespace(label="e1", rundir=SimpleNamespace(summary=lambda: None))
    for stopped in (True, False):
        log_path = tmp_path / "e1.log"
        log_path.write_text("")
        job = parallel.Job(1, run, "0", SimpleNamespace(returncode=-signal.SIGTERM), log_path, 0.0)
        result, logged = {"trained": [], "failed": {}, "stopped": stopped}, []
        parallel.finish(job, result, logged.append, 1)
        if stopped:
            assert not result["failed"] and not result["trained"] and "stopped as it started" in logged[0]
        else:
            assert result["failed"] == {"e1": "exit -15: (no output)"} and "FAILED" in logged[0]


def test_an_interrupted_run_that_saved_no_checkpoint_is_not_said_to_keep_one(tmp_path):
    """A run that ends in 130 without a checkpoint in its folder (the bench's stop reached it while
    it set up, or a second stop abandoned its only checkpoint) is logged as stopped, saying that no
    checkpoint was saved, not "checkpoint kept"; one with a checkpoint keeps that line."""
    from rnnlab.bench.suite import RESUME_HINT
    from rnnlab.train.rundir import RunDir

    run_dir = tmp_path / "e1"
    run = type("Run", (), {"label": "e1", "rundir": RunDir(run_dir)})()
    log_path = tmp_path / "e1.log"
    log_path.write_text("rnnlab train: aborted by Ctrl-C before training started\n")
    for saved in (False, True):
        if saved:
            (run_dir / "ckpt" / "step-000002").mkdir(parents=True)
        job = parallel.Job(1, run, "0", type("P", (), {"returncode": 130})(), log_path, 0.0)
        result, logged = {"trained": [], "failed": {}, "stopped": True}, []
        parallel.finish(job, result, logged.append, 1)
        assert result["stopped"] and not result["failed"] and len(logged) == 1
        kept = "checkpoint kept" if saved else "no checkpoint was saved"
        assert logged[0].endswith(f": interrupted; {kept} ({RESUME_HINT})"), logged[0]


@pytest.mark.parametrize("change", ["extend", "rescore"])
def test_a_complete_run_stopped_before_its_process_rewrote_its_summary_is_interrupted_not_done(
        tmp_path, fake_launch, monkeypatch, change):
    """A complete run extended (a larger budget) or re-scored (a new --extra-val-data) whose process
    exits 130 before it rewrote summary.json (a Ctrl-C as it set up) still has its old complete
    summary.json: it is logged as interrupted, keeping its checkpoint, and stops the suite, not
    logged as done at its old outcome."""
    from types import SimpleNamespace

    from rnnlab.bench.suite import RESUME_HINT

    suite, out, extra = _completed_on_gpu_3(tmp_path, "e1")
    statuses: list[str] = []

    def launch(pr, gpu, out, status, progress):
        statuses.append(status)
        log = out / "logs" / f"{pr.label}.log"
        log.write_text("rnnlab train: aborted by Ctrl-C before training started\n")
        return SimpleNamespace(returncode=130, poll=lambda: 130), log

    monkeypatch.setattr(parallel, "launch", launch)
    opts = {"steps": 3} if change == "extend" else {"steps": 2, "extra_val_data": str(extra)}
    logged: list[str] = []
    res = run_plan(suite, plan_suite(suite, out, runs="e1", **opts), out, gpus=["5"], log=logged.append)
    assert statuses == [change]
    if change == "extend":  # a complete run, not a partial one: the line says what it holds and what it trains to
        assert any(line.startswith("[1/1] e1: extending on GPU 5 (") and line.endswith(
            ": complete at step 2 (steps=2); trained on from its checkpoint to steps=3") for line in logged), logged
    assert res["stopped"] and not res["failed"] and not any("loss 1.0000" in line for line in logged), logged
    assert (res["trained"], res["rescored"]) == ((["e1"], []) if change == "extend" else ([], ["e1"]))
    assert "e1 (GPU 5" in logged[-1] and logged[-1].endswith(f": interrupted; checkpoint kept ({RESUME_HINT})")


def test_bench_processes_get_the_data_path_resolved_at_launch(tmp_path, monkeypatch):
    """``rnnlab bench --data corpus.txt --gpus N``: each training process reads a config whose data
    path is absolute (resolved against the directory the suite was started in), whatever
    directory it runs in; it runs on its GPU, without a progress bar, in a session of its own."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the quick brown fox. " * 500)
    monkeypatch.chdir(tmp_path)
    [pr] = plan_suite(load_suite("tiny"), "out", steps=2, runs="e1", data="corpus.txt", val_data="corpus.txt")
    started = []

    class Popen:
        def __init__(self, cmd, **kw):
            started.append((cmd, kw))

    monkeypatch.setattr(parallel.subprocess, "Popen", Popen)
    _, log = parallel.launch(pr, "3", Path("out"), "new", progress=False)
    [(cmd, kw)] = started
    assert cmd[-3:] == ["--config", str(Path("out") / "logs" / "e1.json"), "--no-progress"]
    assert kw["env"]["CUDA_VISIBLE_DEVICES"] == "3" and log == Path("out") / "logs" / "e1.log"
    assert kw["start_new_session"]  # a terminal's Ctrl-C reaches it once, through the bench, not twice
    assert kw["preexec_fn"] is parallel.hears_ctrl_c
    cfg = json.loads((tmp_path / "out" / "logs" / "e1.json").read_text())
    assert cfg["data"] == cfg["val_data"] == str(corpus.resolve())
    assert (cfg["resume"], cfg["overwrite"]) == (False, False)


def test_a_run_hears_the_benchs_ctrl_c_where_the_bench_ignores_it():
    """A bench started where Ctrl-C is ignored (``cmd &`` in a script) starts its runs with Python's
    Ctrl-C handler, not the ignore it would pass on (which lost the Ctrl-C it forwards on a stop
    while a run was still starting: the run then trained its whole budget)."""
    import signal
    import subprocess

    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, preexec_fn=pre)
                for pre in (None, parallel.hears_ctrl_c)]
    finally:
        signal.signal(signal.SIGINT, before)
    assert [r.stdout.strip() for r in runs] == ["False", "True"]


def _bench_two_long_runs(tmp_path, **popen):
    """``rnnlab bench --gpus 2`` (on the CPU; the device list faked) of two tiny runs that would
    train for hours, once both have logged a step: ``(the bench's process, its --out)``."""
    import os
    import subprocess
    import time

    suite = tmp_path / "two.toml"
    suite.write_text('name = "two"\ndescription = "two long tiny runs"\n[defaults]\nbatch_size = 2\nseq_len = 16\n'
                     'steps = 100000\nprecision = "fp32"\nlr = 1e-3\ncheckpoint_every = 0\n'
                     '[[runs]]\nname = "a"\nmodel = "mingru"\ndim = 16\ndepth = 1\n'
                     '[[runs]]\nname = "b"\nmodel = "e16"\ndim = 16\ndepth = 1\n')
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "1"}
    bench = subprocess.Popen([sys.executable, "-m", "rnnlab", "bench", str(suite), "--out", str(out), "--gpus", "2",
                              "--device", "cpu", "--eval-bytes", "1024", "--no-plots", "--no-progress"],
                             env=env, **popen)
    deadline = time.time() + 120
    while not all((out / r / "metrics.jsonl").exists() and (out / r / "metrics.jsonl").stat().st_size for r in "ab"):
        if time.time() > deadline or bench.poll() is not None:
            bench.kill()
            raise AssertionError("the runs did not start")
        time.sleep(0.2)
    return bench, out


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm-to-every-process"])
def test_one_stop_to_the_bench_saves_every_running_run(tmp_path, descendants, stop):
    """`rnnlab bench --gpus 2` with two real training processes (on the CPU; the device list is
    faked): one Ctrl-C to the bench's whole process group, as a terminal sends it, reaches each
    run once (through the bench: each runs in a session of its own), so each finishes its step,
    saves a checkpoint and stops; none takes a second delivery as "abort". So does a scheduler's
    SIGTERM to every process of the job (Slurm's scancel), which reaches each run directly and
    through the bench: one stop, where the bench's passing it on as a SIGINT was a second Ctrl-C
    that aborted the run. (A SIGTERM to a bench started where Ctrl-C is ignored, `cmd &` in a
    script, is the same first stop: test_cli_train's
    test_a_sigterm_where_ctrl_c_is_ignored_is_a_keyboard_interrupt and
    test_a_run_hears_the_benchs_ctrl_c_where_the_bench_ignores_it below.)"""
    import os
    import signal
    import subprocess

    bench, out = _bench_two_long_runs(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    try:
        if stop == "ctrl-c":
            os.killpg(bench.pid, signal.SIGINT)  # the terminal's Ctrl-C: the bench's whole group
        else:  # a scheduler's stop: every process of the job
            for pid in descendants(bench.pid) + [bench.pid]:
                os.kill(pid, signal.SIGTERM)
        output = bench.communicate(timeout=120)[0].decode()
        assert bench.returncode == 130 and "FAILED" not in output, output
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
    for r in "ab":
        summary = json.loads((out / r / "summary.json").read_text())
        log = (out / "logs" / f"{r}.log").read_text()
        assert summary["complete"] is False and "error" not in summary, (r, log, output)
        assert "checkpoint saved to" in log and "aborted" not in log, (r, log)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the runs end with the bench through prctl")
def test_a_kill_9_of_the_bench_ends_its_runs(tmp_path, descendants, run_lock_free):
    """``kill -9`` of ``rnnlab bench --gpus 2``, which cannot forward it, ends its two training
    processes with it (each in a session of its own): neither trains on alone, holding its run
    folder's lock against the suite's next command."""
    import os
    import subprocess
    import time

    bench, out = _bench_two_long_runs(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs: list[int] = []
    try:
        runs = descendants(bench.pid)
        bench.kill()
        bench.wait()
        held, deadline = set("ab"), time.time() + 20
        while held and time.time() < deadline:
            held = {r for r in held if not run_lock_free(out / r)}  # still held by its training process
            time.sleep(0.2)
        assert not held, f"runs {sorted(held)} still train after the bench's kill -9"
    finally:
        for pid in runs:  # (only where the test failed)
            try:
                os.kill(pid, 9)
            except OSError:
                pass
