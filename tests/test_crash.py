"""No run is ever lost (issue 16): a tiny fp32 CPU run killed with SIGKILL at 33 random moments
(start-up, steps, evaluations, 10+ inside checkpoint writes), resumed after each, ends bit for bit where an uninterrupted
run ends (weights, optimizer state and Schedule-Free's train point, RNG states, eval log and
every metrics line, each step exactly once); and two processes started together on one folder
never both write it. The kills run in tests/crash_harness.py (forked children, one import)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnlab.train.rundir import RunDir

ARGS = ["--model", "e1", "--dim", "16", "--depth", "1", "--seq-len", "16", "--batch-size", "2", "--precision", "fp32",
        "--lr", "3e-3", "--eval-every", "5", "--eval-bytes", "512", "--checkpoint-every", "1", "--device", "cpu",
        "--no-progress"]
STEPS = 40


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """The harness's report and folders. They live in memory (/dev/shm) where there is one: each
    checkpoint fsyncs its files, which costs real disks ~50 ms and proves nothing against kills
    (a killed process's writes are in the page cache all the same)."""
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="rnnlab-crash-", dir=shm)) if os.access(shm, os.W_OK) \
        else tmp_path_factory.mktemp("crash")
    corpus = root / "corpus.txt"
    corpus.write_bytes((b"the quick brown fox jumps over the lazy dog. " * 500)[:20000])
    spec = {"root": str(root), "args": [*ARGS, "--data", str(corpus)], "steps": STEPS, "concurrent_steps": 10,
            "seed": 16, "kills": 33, "inside_writes": 10, "pause": 0.003, "max_delay": 0.2, "running_delay": 0.06}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("crash_harness.py")), json.dumps(spec)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    yield root, json.loads(res.stdout.strip().splitlines()[-1])
    shutil.rmtree(root, ignore_errors=True)


def _records(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def _state(run: Path) -> dict:
    """state.pt of the run's newest checkpoint, without the wall-clock times and the warm-up
    steps' tokens (each process has its own: a run killed and resumed has more)."""
    state = torch.load(RunDir(run).checkpoint().state_file, weights_only=True)
    for key in ("elapsed_s", "wall_s", "warmup_s", "warmup_tokens"):
        state["progress"].pop(key)
    return state


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_kills_at_random_moments_change_nothing(crashed):
    root, report = crashed
    chaos, ref = root / "chaos", root / "reference"
    assert report["reference"] == 0 and report["chaos"]["final_exit"] == 0, (root / "chaos.log").read_text()[-2000:]
    assert report["chaos"]["kills"] >= 30 and report["chaos"]["inside_writes"] >= 10, report
    log = (root / "chaos.log").read_text()
    assert "Traceback" not in log and "damaged" not in log, log[-2000:]  # no kill ever damaged a checkpoint

    weights = [load_file(RunDir(r).checkpoint().weights) for r in (ref, chaos)]
    assert _equal(*weights)  # the shipped weights, bit for bit
    assert _equal(_state(ref), _state(chaos))  # optimizer, train point y, RNG states, losses, last eval
    assert (chaos / "eval.jsonl").read_text() == (ref / "eval.jsonl").read_text()
    metrics = _records(chaos, "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # every step exactly once
    keys = ("step", "tokens", "loss", "lr")
    assert [[m[k] for k in keys] for m in metrics] == [[m[k] for k in keys] for m in _records(ref, "metrics.jsonl")]
    summary = json.loads((chaos / "summary.json").read_text())
    assert summary["complete"] and summary["steps"] == STEPS
    assert summary["loss"] == json.loads((ref / "summary.json").read_text())["loss"]
    assert not list(chaos.rglob(".tmp-*")) and not list(chaos.rglob(".trash-*"))


@pytest.mark.parametrize("scenario, folder", [("concurrent_starts", "starts"), ("concurrent_resumes", "resumes")])
def test_two_processes_never_share_a_folder(scenario, folder, crashed):
    root, report = crashed
    assert sorted(report[scenario]) == [0, 2], report
    log = (root / f"{folder}.log").read_text()
    refusals = [line for line in log.splitlines() if line.startswith("rnnlab train: error: ")]
    # the holder names itself, or has taken the lock but not yet written its name (a legitimate instant)
    assert len(refusals) == 1 and ("is in use by pid" in refusals[0] or "already holds a complete run" in refusals[0]
                                   or "is in use by another process (which has not recorded itself yet)"
                                   in refusals[0]), refusals
    run = root / folder
    assert [m["step"] for m in _records(run, "metrics.jsonl")] == list(range(1, 11))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["steps"] == 10
