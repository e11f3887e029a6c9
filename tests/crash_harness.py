"""Fault injection for tests/test_crash.py, run as its own process:
``python tests/crash_harness.py '<json spec>'`` prints a JSON report.

It imports torch and rnnlab once, then runs every ``rnnlab train`` in a forked child (``main(argv)``
in the child: no interpreter start-up per run, so dozens of restarts stay cheap) and kills children
with SIGKILL. Scenarios, all on the same tiny fp32 CPU run:

- ``reference``: one uninterrupted run;
- ``chaos``: the run again, killed at least ``kills`` times, in turn: up to ``max_delay`` s after
  the start (start-up, restoring, the first steps); inside the k-th checkpoint write (the writer
  pauses between its stages through ``RNNLAB_TEST_CHECKPOINT_PAUSE_S``; the harness waits for the
  k-th staging folder ``.tmp-<pid>-*`` to appear, then kills within four pauses), until at least
  ``inside_writes`` kills left a staging folder behind; and up to ``running_delay`` s after the
  first checkpoint began (steps, evaluations, log writes, commits). After each kill it goes on
  with ``--resume`` (``--overwrite`` while no checkpoint was committed), then lets the last
  attempt finish;
- ``concurrent_starts`` / ``concurrent_resumes``: two children started together on one folder
  (a run of ``concurrent_steps``).

Children write their stdout/stderr to ``<root>/<scenario>.log``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import safetensors.torch  # noqa: F401  (what a run imports on first use: once here, not in every child)
import schedulefree  # noqa: F401
import torch
import torch._dynamo  # noqa: F401  (a training run imports it; rnnlab's import no longer does)
import torch.utils.tensorboard  # noqa: F401

from rnnlab.cli import main
from rnnlab.models.registry import get_spec
from rnnlab.train.checkpoint import PAUSE_ENV
from rnnlab.train.rundir import RunDir


def start(argv: list[str], log: Path, pause: float) -> int:
    """Fork a child running ``rnnlab <argv>``; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ[PAUSE_ENV] = str(pause)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def staging(ckpt: Path, pid: int) -> list[str]:
    """The staging folders of child ``pid``'s checkpoint writes (``.tmp-<pid>-<thread>-step-...``)."""
    try:
        return [p.name for p in ckpt.iterdir() if p.name.startswith(f".tmp-{pid}-")]
    except FileNotFoundError:
        return []


def began_checkpoint(pid: int, ckpt: Path, nth: int) -> bool:
    """Wait until child ``pid`` begins writing its ``nth`` checkpoint; False (and the child
    reaped) when it ends first."""
    seen: set[str] = set()
    while len(seen) < nth:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
        seen.update(staging(ckpt, pid))
        time.sleep(0.0005)
    return True


def chaos(base: list[str], run: Path, log: Path, spec: dict, rng: random.Random) -> dict:
    """Kill in turn: at a random moment after the start (start-up, restore, the first steps),
    inside the k-th checkpoint write (k = 1..3), and at a random moment once training runs."""
    kills, inside, pause = 0, 0, spec["pause"]
    while kills < spec["kills"] or inside < spec["inside_writes"]:
        if kills >= 4 * spec["kills"] or RunDir(run).status() == "complete":
            raise RuntimeError(f"{kills} kills, {inside} inside a checkpoint write, and the run "
                               f"{RunDir(run).status()}: give it more steps")
        mode = ["--resume"] if RunDir(run).has_checkpoint() else ["--overwrite"]
        pid, moment = start(base + mode, log, pause), kills % 3
        if moment == 0:
            time.sleep(rng.uniform(0, spec["max_delay"]))
        elif not began_checkpoint(pid, run / "ckpt", rng.randint(1, 3) if moment == 1 else 1):
            continue  # it finished first: no kill
        else:
            time.sleep(rng.uniform(0, 4 * pause) if moment == 1 else rng.uniform(0, spec["running_delay"]))
        os.kill(pid, 9)
        wait(pid)
        inside += moment == 1 and bool(staging(run / "ckpt", pid))
        kills += 1
    progress = RunDir(run).checkpoint().step
    code = wait(start(base + ["--resume"], log, 0.0))
    return {"kills": kills, "inside_writes": inside, "steps_before_the_last_start": progress, "final_exit": code}


def together(argv: list[str], log: Path, pause: float) -> list[int]:
    """Start two children on the same command at once; their exit codes."""
    pids = [start(argv, log, pause) for _ in range(2)]
    return [wait(p) for p in pids]


def run(spec: dict) -> dict:
    root, rng = Path(spec["root"]), random.Random(spec["seed"])
    base = ["train", *spec["args"], "--steps", str(spec["steps"])]
    report = {}
    report["reference"] = wait(start(base + ["--out", str(root / "reference")], root / "reference.log", 0.0))
    report["chaos"] = chaos(base + ["--out", str(root / "chaos")], root / "chaos", root / "chaos.log", spec, rng)
    short = ["train", *spec["args"], "--steps", str(spec["concurrent_steps"])]
    report["concurrent_starts"] = together(short + ["--out", str(root / "starts")], root / "starts.log", spec["pause"])
    partial = ["train", *spec["args"], "--steps", "2", "--out", str(root / "resumes")]  # to resume twice at once
    wait(start(partial, root / "resumes.log", 0.0))
    report["concurrent_resumes"] = together(short + ["--out", str(root / "resumes"), "--resume"],
                                            root / "resumes.log", spec["pause"])
    return report


if __name__ == "__main__":
    torch.set_num_threads(1)
    get_spec("e1").layer_cls  # imports the layer and its ops
    print(json.dumps(run(json.loads(sys.argv[1]))))
