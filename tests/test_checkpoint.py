"""Checkpoints that cannot be lost (issue 16): step directories committed by one rename after
fsync, a manifest that catches damage in any file (the previous checkpoint is then used, loudly),
old-format run folders, pruning, write errors, Ctrl-C during the commit, the folder lock and
--overwrite. Kills at random moments: tests/test_crash.py."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.cli import main
from rnnlab.train import checkpoint
from rnnlab.train.config import TrainConfig
from rnnlab.train.optim import build_optimizer
from rnnlab.train.rundir import LOCK, RunDir, RunLock
from rnnlab.train.runtime import build_model
from rnnlab.train.trainer import Trainer, TrainState, run_training

pytestmark = pytest.mark.usefixtures("one_thread")

LEGACY = Path(__file__).parent / "data" / "legacy-run"  # written by commit 4ce17db (before manifests)
TINY = ["--model", "e1", "--dim", "32", "--depth", "2", "--seq-len", "32", "--batch-size", "4", "--precision", "fp32",
        "--eval-bytes", "4096", "--device", "cpu", "--no-progress", "--lr", "3e-3"]


def _steps(run: Path, name: str = "metrics.jsonl") -> list[int]:
    return [json.loads(line)["step"] for line in (run / name).read_text().splitlines()]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK}


# training's own lines: its log lines (LogLines) and the line saying where a resumed run resumes
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (eval )?step |rnnlab train: resuming )")


def _one_line(capsys) -> str:
    """What a command said on stderr besides training's log lines: one line, no traceback."""
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if not LOG_LINE.match(line)).strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _tiny_state(step: int) -> TrainState:
    """A freshly initialised tiny model and its optimizer, as a trainer's state at ``step`` (to
    save checkpoints without training)."""
    cfg = TrainConfig.from_dict({"model": {"model": "e1", "dim": 16, "depth": 1}, "batch_size": 2, "seq_len": 8,
                                 "steps": 10, "precision": "fp32", "device": "cpu"})
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"))
    return TrainState(model, *build_optimizer(model, cfg), step=step)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, one_thread_module):
    """The losses of an uninterrupted 6-step run (the reference for resumed ones)."""
    from rnnlab.train.config import TrainConfig

    run = tmp_path_factory.mktemp("straight") / "r"
    cfg = {"model": {"model": "e1", "dim": 32, "depth": 2}, "batch_size": 4, "seq_len": 32, "steps": 6,
           "precision": "fp32", "lr": 3e-3, "eval_bytes": 4096, "device": "cpu", "out": str(run)}
    run_training(TrainConfig.from_dict(cfg), progress=False)
    return _losses(run)


# ------------------------------------------------------------------------------ layout
def test_step_directories_manifest_and_pruning(tiny_train, tmp_path):
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=7, checkpoint_every=2, keep_checkpoints=2, keep_checkpoint_every=4),
                 progress=False)
    # saved at 2, 4, 6 and 7; the newest two stay, and 4 as a multiple of keep_checkpoint_every
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-000004", "step-000006", "step-000007"]
    for step in (4, 6, 7):
        d = run / "ckpt" / f"step-{step:06d}"
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["step"] == step and manifest["complete"] is (step == 7) and manifest["format"] == 2
        for name, entry in manifest["files"].items():
            assert entry == {"bytes": (d / name).stat().st_size,
                             "sha256": hashlib.sha256((d / name).read_bytes()).hexdigest()}
        # every file with the mode a new file gets (safetensors alone would create the weights 0600)
        (tmp_path / "probe").write_text("")
        assert {(d / f).stat().st_mode & 0o777 for f in ("model.safetensors", "state.pt", "manifest.json")} \
            == {(tmp_path / "probe").stat().st_mode & 0o777}
    assert RunDir(run).checkpoint().step == 7 and not list(run.rglob(".tmp-*"))


def _record_fs_calls(monkeypatch, move: str) -> list[tuple]:
    """Record, in order, every ``os.fsync`` as ``("fsync", path, is a folder)`` and every
    ``os.<move>`` (rename or replace) as ``(move, src, dst)``; the calls still happen."""
    events, real_fsync, real_move = [], os.fsync, getattr(os, move)

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real_fsync(fd)

    def moved(src, dst):
        events.append((move, str(src), str(dst)))
        return real_move(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, move, moved)
    return events


def test_commit_fsyncs_every_file_before_the_rename(tiny_train, tmp_path, monkeypatch):
    """The protocol that makes a checkpoint survive a power loss: each file and the staging folder
    reach the disk before the rename makes the checkpoint visible, and ckpt/ after it."""
    events = _record_fs_calls(monkeypatch, "rename")
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=1), progress=False)
    commit = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2].endswith("ckpt/step-000001"))
    staged = events[commit][1]
    synced_before = {e[1] for e in events[:commit] if e[0] == "fsync"}
    assert {f"{staged}/{f}" for f in ("model.safetensors", "state.pt", "manifest.json")} | {staged} <= synced_before
    assert ("fsync", str((run / "ckpt").resolve()), True) in events[commit:]
    assert {str((run / f).resolve()) for f in ("metrics.jsonl", "eval.jsonl")} <= synced_before  # logs first


def test_two_threads_replacing_one_file_at_once_both_succeed(tmp_path, monkeypatch):
    """write_atomic from two threads of one process (a rank's lost-peer watch and its main thread
    both write summary.json): each writes its own temporary file, so the second's write and rename
    cannot take the first's from under it; the file ends with the last rename's content."""
    from rnnlab.train import durable

    real, first_written, second_done = durable.write_synced, threading.Event(), threading.Event()

    def write_synced(path, data):
        real(path, data)
        if data == "first":  # the first writer pauses between its write and its rename
            first_written.set()
            second_done.wait(10)

    monkeypatch.setattr(durable, "write_synced", write_synced)
    target, errors = tmp_path / "summary.json", []

    def first_writer():
        try:
            durable.write_atomic(target, "first")
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    first = threading.Thread(target=first_writer)
    first.start()
    assert first_written.wait(10)
    durable.write_atomic(target, "second")
    second_done.set()
    first.join(10)
    assert errors == [] and target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_saving_a_step_whose_directory_exists_replaces_it(tmp_path):
    """A damaged copy of the step being saved (one never resumed from, so never renamed aside) is
    replaced by the new checkpoint in the commit."""
    ckpt = tmp_path / "ckpt"
    (ckpt / "step-000005").mkdir(parents=True)
    (ckpt / "step-000005" / "state.pt").write_bytes(b"damaged")
    saver = checkpoint.Checkpointer(ckpt)
    saver.save(_tiny_state(5), complete=True)
    assert saver.find() == (checkpoint.Checkpoint(ckpt / "step-000005", 5), [])
    assert sorted(p.name for p in (ckpt / "step-000005").iterdir()) == ["manifest.json", "model.safetensors", "state.pt"]


def test_a_staging_folder_left_under_this_writers_name_is_replaced(tmp_path):
    """A staging folder already under the name this process and thread stage into (left by an earlier
    process with the same pid, as a container's restarted process gets, or by a save whose cleanup
    failed) is cleared first: the save succeeds, and nothing of the stale folder enters the checkpoint."""
    from rnnlab.train.durable import temporary_name

    ckpt = tmp_path / "ckpt"
    stale = temporary_name(ckpt / "step-000005")
    stale.mkdir(parents=True)
    (stale / "leftover.bin").write_bytes(b"old")
    saver = checkpoint.Checkpointer(ckpt)
    saver.save(_tiny_state(5), complete=True)
    assert saver.find() == (checkpoint.Checkpoint(ckpt / "step-000005", 5), [])
    files = sorted(p.name for p in (ckpt / "step-000005").iterdir())
    assert files == ["manifest.json", "model.safetensors", "state.pt"]
    assert [p.name for p in ckpt.iterdir()] == ["step-000005"]  # the stale folder's name is gone


# ------------------------------------------------------------------------------ damage
def test_a_checkpoint_deleted_while_it_is_read_gives_way_to_the_newest(tiny_train, tmp_path, monkeypatch):
    """eval / sample / export of a run still training: the checkpoint found may be deleted (the
    run keeps its newest keep_checkpoints) before its files are read; the load then takes the
    newest checkpoint there is, not "... is missing". A damaged one still raises."""
    from rnnlab.train import checkpoint as ck

    run = tmp_path / "r"
    run_training(tiny_train(run, steps=4, checkpoint_every=2), progress=False)
    original, calls = ck.load_checkpoint, []

    def pruned_first(checkpoint, model, *a, **kw):  # the newest is deleted between find and read
        calls.append(checkpoint.step)
        if len(calls) == 1:
            shutil.rmtree(checkpoint.path)
        return original(checkpoint, model, *a, **kw)

    monkeypatch.setattr(ck, "load_checkpoint", pruned_first)
    assert RunDir(run).load("cpu")[2] == 2 and calls == [4, 2]
    monkeypatch.setattr(ck, "load_checkpoint", original)
    (run / "ckpt" / "step-000002" / "model.safetensors").write_bytes(b"damaged")
    monkeypatch.setattr(ck.Checkpoint, "verify", lambda self: None)  # damaged past the checksums: read, and raise
    with pytest.raises(ck.CheckpointError, match="model.safetensors is damaged"):
        RunDir(run).load("cpu")


@pytest.mark.parametrize("name, how", [("model.safetensors", "flip"), ("state.pt", "flip"),
                                       ("manifest.json", "flip"), ("state.pt", "truncate"),
                                       ("model.safetensors", "delete")])
def test_damaged_newest_checkpoint_falls_back_loudly(name, how, tiny_train, tmp_path, capsys, straight):
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=4, checkpoint_every=2), progress=False)
    path = run / "ckpt" / "step-000004" / name
    data = bytearray(path.read_bytes())
    if how == "flip":
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    capsys.readouterr()
    _, _, step = RunDir(run).load("cpu")  # eval, sample, export and gradflow load this way
    assert step == 2
    warning = _one_line(capsys)
    assert warning.startswith(f"rnnlab: warning: checkpoint {run}/ckpt/step-000004 is damaged: ") and \
        warning.endswith(f"; using {run}/ckpt/step-000002 (step 2) instead"), warning

    s = run_training(tiny_train(run, steps=6, resume=True), progress=False)
    warning = _one_line(capsys)
    assert f"resuming from {run}/ckpt/step-000002 (step 2) instead; it is kept as damaged-step-000004" in warning
    assert (run / "ckpt" / "damaged-step-000004" / "manifest.json").exists()  # kept for inspection
    assert s["complete"] and _steps(run) == list(range(1, 7)) and _losses(run) == straight


def test_no_usable_checkpoint_is_a_clear_error(tiny_train, tmp_path, capsys):
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    (run / "ckpt" / "step-000002" / "state.pt").write_bytes(b"not a checkpoint")
    before = _digests(run)
    assert main(["eval", "--run", str(run)]) == 2
    err = _one_line(capsys)
    size = json.loads((run / "ckpt/step-000002/manifest.json").read_text())["files"]["state.pt"]["bytes"]
    assert err == (f"rnnlab eval: error: no usable checkpoint in {run}/ckpt ({run}/ckpt/step-000002/state.pt has "
                   f"16 bytes, its manifest says {size:,})")
    assert main(["train", "--resume", "--out", str(run), "--steps", "4", "--no-progress"]) == 2
    assert "nothing was changed (start over with --overwrite, which deletes this run)" in _one_line(capsys)
    assert _digests(run) == before


def test_config_that_disagrees_with_the_weights_is_one_line(tiny_train, tmp_path, capsys):
    """A run whose config.json was edited to another width: its weights no longer fit the model.
    One line naming a tensor and both shapes, for eval and resume here (sample and export load
    the weights through the same ``load_weights``)."""
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["dim"] = 48
    (run / "config.json").write_text(json.dumps(cfg))
    for argv in (["eval", "--run", str(run)], ["train", "--resume", "--out", str(run), "--steps", "4", "--no-progress"]):
        assert main(argv) == 2
        err = _one_line(capsys)
        assert re.search(rf"weights in {run}/ckpt/step-000002/model.safetensors do not fit the model: size "
                         r"mismatch for \S+: copying a param with shape torch.Size\(\[\d+(, \d+)*\]\) from "
                         r"checkpoint, the shape in current model is torch.Size", err), err


def test_manifest_must_list_exactly_the_two_files_with_their_sizes_and_digests(tmp_path):
    """A manifest that leaves a file out (which would then go unchecked), adds one, or gives an
    entry without its size or digest does not describe a checkpoint: the step is damaged."""
    checkpoint.Checkpointer(tmp_path).save(_tiny_state(3), complete=False)
    c = checkpoint.Checkpoint(tmp_path / "step-000003", 3)
    c.verify()
    good = json.loads((c.path / "manifest.json").read_text())
    files = good["files"]
    for bad in ({"model.safetensors": files["model.safetensors"]},
                {**files, "extra.bin": files["state.pt"]},
                {**files, "state.pt": {"bytes": files["state.pt"]["bytes"]}}):
        (c.path / "manifest.json").write_text(json.dumps({**good, "files": bad}))
        with pytest.raises(checkpoint.CheckpointError, match="does not describe a format-2 checkpoint of step 3"):
            c.verify()


def test_a_manifest_of_other_json_is_damage_not_a_crash(tmp_path):
    """A manifest that parses but is no object (``null``, a list) or gives a size that is no number
    is reported as damage, so the previous checkpoint is used, not an AttributeError or ValueError."""
    checkpoint.Checkpointer(tmp_path).save(_tiny_state(3), complete=False)
    c = checkpoint.Checkpoint(tmp_path / "step-000003", 3)
    good = json.loads((c.path / "manifest.json").read_text())
    entry = {**good["files"]["state.pt"], "bytes": "12"}
    for bad in (None, [], 3, {**good, "files": {**good["files"], "state.pt": entry}}):
        (c.path / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(checkpoint.CheckpointError, match="does not describe a format-2 checkpoint of step 3"):
            c.verify()


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_weights_with_any_non_finite_value_are_refused(tmp_path, value):
    from safetensors.torch import save_file

    model = _tiny_state(0).model
    sd = checkpoint.model_state_dict(model)
    name = next(iter(sd))
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] = value
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match=f"holds non-finite values in {name} "):
        checkpoint.load_weights(model, tmp_path / "w.safetensors")


def test_weights_missing_a_tensor_or_with_an_extra_one_do_not_fit(tmp_path):
    from safetensors.torch import save_file

    model = _tiny_state(0).model
    sd = checkpoint.model_state_dict(model)  # the tied head stored once, as embed.weight
    dropped = sorted(sd)[-1]
    save_file({k: v for k, v in sd.items() if k != dropped}, str(tmp_path / "less.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match=rf"do not fit the model: missing \['{dropped}'\], unexpected \[\]"):
        checkpoint.load_weights(model, tmp_path / "less.safetensors")
    save_file({**sd, "extra.weight": torch.zeros(2)}, str(tmp_path / "more.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match=r"missing \[\], unexpected \['extra.weight'\]"):
        checkpoint.load_weights(model, tmp_path / "more.safetensors")
    save_file(sd, str(tmp_path / "same.safetensors"))
    checkpoint.load_weights(model, tmp_path / "same.safetensors")  # the tied head.weight is no missing key


def test_a_step_damaged_twice_is_renamed_aside_over_the_older_copy(tmp_path):
    ckpt = tmp_path / "ckpt"
    saver = checkpoint.Checkpointer(ckpt)
    for attempt in ("first", "second"):
        saver.save(_tiny_state(2), complete=False)
        (ckpt / "step-000002" / "note.txt").write_text(attempt)
        target = saver.quarantine(checkpoint.Checkpoint(ckpt / "step-000002", 2))
        assert target == ckpt / "damaged-step-000002" and (target / "note.txt").read_text() == attempt
    assert sorted(p.name for p in ckpt.iterdir()) == ["damaged-step-000002"]


def _rewrite_manifest(folder: Path, step: int) -> None:
    """Make ``folder``'s manifest describe its files as they now are, as the checkpoint of ``step``
    (so that only the files' own steps can disagree)."""
    files = {name: {"bytes": (folder / name).stat().st_size,
                    "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
             for name in ("model.safetensors", "state.pt")}
    (folder / "manifest.json").write_text(json.dumps({"format": 2, "step": step, "complete": False, "files": files}))


def test_checkpoint_whose_parts_disagree_on_the_step_is_refused(tiny_train, tmp_path, capsys):
    """The weights, the state, the manifest and the directory name each record the step; a
    checkpoint where two of them disagree (files copied between checkpoints, a legacy folder
    interrupted while saving) is refused with an error naming both steps, never loaded."""
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2, checkpoint_every=1), progress=False)
    ckpt = run / "ckpt"
    model = RunDir(run).load("cpu")[1]

    moved = ckpt / "step-000005"  # step 1's files under the name (and manifest) of step 5
    shutil.copytree(ckpt / "step-000001", moved)
    _rewrite_manifest(moved, 5)
    with pytest.raises(checkpoint.CheckpointError, match=r"step-000005 is inconsistent: .*state at step 1"):
        checkpoint.load_checkpoint(checkpoint.Checkpoint(moved, 5), model)
    shutil.rmtree(moved)

    shutil.copytree(ckpt / "step-000001", ckpt / "step-000007")  # with step 1's manifest
    with pytest.raises(checkpoint.CheckpointError, match="does not describe a format-2 checkpoint of step 7"):
        checkpoint.Checkpoint(ckpt / "step-000007", 7).verify()
    assert RunDir(run).checkpoint().step == 2 and "step-000007 is damaged" in capsys.readouterr().err
    shutil.rmtree(ckpt / "step-000007")

    mixed = ckpt / "step-000002"  # step 1's weights beside step 2's state, the manifest matching both
    shutil.copy(ckpt / "step-000001" / "model.safetensors", mixed / "model.safetensors")
    _rewrite_manifest(mixed, 2)
    with pytest.raises(checkpoint.CheckpointError, match=r"step-000002 is inconsistent: weights at step 1, state at "
                                                         r"step 2"):
        RunDir(run).load("cpu")

    legacy = tmp_path / "legacy" / "ckpt"  # an old run folder: the files directly in ckpt/, no manifest
    legacy.mkdir(parents=True)
    shutil.copy(ckpt / "step-000001" / "model.safetensors", legacy / "model.safetensors")
    shutil.copy(ckpt / "step-000002" / "state.pt", legacy / "state.pt")
    with pytest.raises(checkpoint.CheckpointError, match="inconsistent: weights at step 1, state at step 2"):
        checkpoint.Checkpoint(legacy, 1, legacy=True).verify()
    with pytest.raises(checkpoint.CheckpointError, match="inconsistent: weights at step 1, state at step 2"):
        checkpoint.load_checkpoint(checkpoint.Checkpoint(legacy, None, legacy=True), model)


def test_resume_restores_the_random_generators(tiny_train, tmp_path, monkeypatch):
    """A checkpoint saves the torch, numpy and Python RNG states and a resumed run restores them:
    a step that draws random numbers draws after resuming what an uninterrupted run draws at that
    step, not the seed's first numbers again."""
    real, draws = Trainer.train_step, []

    def train_step(self, batch):
        draws.append((torch.rand(2).tolist(), np.random.rand(2).tolist(), [random.random(), random.random()]))
        return real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    run_training(tiny_train(tmp_path / "a", steps=4), progress=False)
    straight = draws[:]
    draws.clear()
    run_training(tiny_train(tmp_path / "b", steps=2), progress=False)
    run_training(tiny_train(tmp_path / "b", steps=4, resume=True), progress=False)
    assert len(set(map(str, straight))) == 4  # each step drew new numbers
    assert draws == straight

# ------------------------------------------------------------------------------ old run folders
def test_old_format_run_loads_evaluates_and_resumes(tmp_path, capsys):
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY, run)
    legacy_files = _digests(run / "ckpt")
    summary = json.loads((run / "summary.json").read_text())
    # batches of the run's batch_size, as its evaluation was written (later rnnlab evaluates in
    # larger batches by default, which changes the float summation order)
    assert main(["eval", "--run", str(run), "--json", "--batch-size", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    # the same weights, the same number up to the CPU's float rounding (the fixture was written on
    # another machine: its vectorised kernels may round differently by a few ulps)
    assert r["step"] == 3 and r["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)
    assert main(["sample", "--run", str(run), "--tokens", "5", "--device", "cpu"]) == 0

    assert main(["train", "--resume", "--out", str(run), "--steps", "5", "--no-progress"]) == 0
    assert _steps(run) == [1, 2, 3, 4, 5] and _steps(run, "eval.jsonl") == [3, 5]
    assert _digests(run / "ckpt") == {**legacy_files, **_digests(run / "ckpt")}  # the old files are untouched
    assert RunDir(run).checkpoint().path == run / "ckpt" / "step-000005"
    assert [p.parent.name for p in RunDir(run).weight_files()] == ["ckpt", "step-000005"]  # steps 3 and 5


def test_a_step_directory_comes_before_an_old_format_checkpoint_of_the_same_step(tmp_path):
    ckpt = tmp_path / "ckpt"
    checkpoint.Checkpointer(ckpt).save(_tiny_state(4), complete=False)
    for name in ("model.safetensors", "state.pt"):  # the same step as an old run folder's files
        shutil.copy(ckpt / "step-000004" / name, ckpt / name)
    found = checkpoint.Checkpointer(ckpt).checkpoints()
    assert [(c.path.name, c.step, c.legacy) for c in found] == [("step-000004", 4, False), ("ckpt", 4, True)]


def test_a_folder_named_like_a_step_but_no_number_is_no_checkpoint(tmp_path):
    """A copy beside the checkpoints (``step-000006.bak``, ``step-latest``) is not read as one, and
    neither stops the listing nor is pruned."""
    checkpoint.Checkpointer(tmp_path).save(_tiny_state(4), complete=False)
    for name in ("step-000006.bak", "step-latest"):
        (tmp_path / name).mkdir()
    saver = checkpoint.Checkpointer(tmp_path, keep=1)
    assert [c.step for c in saver.checkpoints()] == [4] and saver.find()[0].step == 4
    saver.save(_tiny_state(5), complete=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005", "step-000006.bak", "step-latest"]


def test_pruning_never_deletes_an_old_format_checkpoint(tmp_path):
    """With --keep-checkpoints 1 the step directories beyond the newest go; an old run folder's
    checkpoint (its files directly in ckpt/, step 3) stays whatever its age, and so does ckpt/."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(LEGACY / "ckpt", ckpt)
    saver = checkpoint.Checkpointer(ckpt, keep=1)
    for step in (5, 6):
        saver.save(_tiny_state(step), complete=False)
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "state.pt", "step-000006"]
    assert [(c.step, c.legacy) for c in saver.checkpoints()] == [(6, False), (3, True)]


def test_a_damaged_old_format_checkpoint_is_never_renamed_aside(tmp_path, capsys):
    """Resuming past a damaged newer checkpoint renames a step directory aside; an old run
    folder's checkpoint lives in ckpt/ itself, so it is reported and left where it is."""
    run = RunDir(tmp_path / "r")
    for step in (2, 3):
        checkpoint.Checkpointer(run.ckpt_dir).save(_tiny_state(step), complete=False)
    for name in ("model.safetensors", "state.pt"):  # step 3 as an old-format checkpoint ...
        shutil.copy(run.ckpt_dir / "step-000003" / name, run.ckpt_dir / name)
    shutil.rmtree(run.ckpt_dir / "step-000003")
    (run.ckpt_dir / "state.pt").write_bytes(b"damaged")  # ... whose state is damaged
    usable = run._usable_checkpoint(run.checkpointer(), resuming=True)
    assert usable.path == run.ckpt_dir / "step-000002"
    assert sorted(p.name for p in run.ckpt_dir.iterdir()) == ["model.safetensors", "state.pt", "step-000002"]
    err = capsys.readouterr().err
    assert f"checkpoint {run.ckpt_dir} is damaged" in err and "resuming from" in err and "kept as" not in err


# ------------------------------------------------------------------------------ write errors, Ctrl-C
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, straight):
    run = tmp_path / "r"
    real_save, calls = torch.save, [0]

    def full_disk(obj, f, *args, **kw):
        calls[0] += 1
        if calls[0] == 2:  # the checkpoint of step 4
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    assert main(["train", *TINY, "--steps", "6", "--checkpoint-every", "2", "--out", str(run)]) == 1
    assert _one_line(capsys) == (f"rnnlab train: error: could not write the checkpoint of step 4 to {run}/ckpt: No space "
                                 f"left on device (ENOSPC); last good checkpoint kept at {run}/ckpt/step-000002 "
                                 f"(step 2)")
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-000002"]  # nothing half-written left
    assert "No space left on device" in json.loads((run / "summary.json").read_text())["error"]
    monkeypatch.undo()
    assert main(["train", "--resume", *TINY, "--steps", "6", "--out", str(run)]) == 0
    assert _steps(run) == list(range(1, 7)) and _losses(run) == straight


@pytest.mark.parametrize("limit, fails", [(10_000, "model.safetensors"), (30_000, "state.pt")])
def test_a_real_write_error_in_either_library_is_a_checkpoint_write_error_naming_its_cause(tmp_path, limit, fails):
    """A write that the OS refuses (here: RLIMIT_FSIZE, EFBIG; a full disk is ENOSPC) inside safetensors or
    torch.save, which report it as their own errors (torch: "unexpected pos ..." with no cause), is a
    ``CheckpointWriteError`` naming the OS's cause and the checkpoint kept, as guarantee 8 says."""
    import resource

    saver = checkpoint.Checkpointer(tmp_path / "ckpt")
    saver.save(_tiny_state(1), complete=False)
    state = _tiny_state(2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)  # Python ignores SIGXFSZ: the write fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(checkpoint.CheckpointWriteError) as e:
            saver.save(state, complete=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert (tmp_path / "ckpt" / "step-000001" / fails).stat().st_size > limit  # the file that cannot be written
    assert str(e.value) == (f"could not write the checkpoint of step 2 to {tmp_path}/ckpt: File too large (EFBIG); "
                            f"last good checkpoint kept at {tmp_path}/ckpt/step-000001 (step 1)")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-000001"]


def test_a_commit_whose_rename_fails_leaves_no_staged_copy(tmp_path, monkeypatch):
    """The rename that commits a staged checkpoint can fail too (ENOSPC for a new directory entry,
    EDQUOT, EIO): the staged copy, a whole checkpoint's size on a full disk, goes as a failed write's
    does, not only at the next start."""
    saver = checkpoint.Checkpointer(tmp_path / "ckpt")
    saver.save(_tiny_state(1), complete=False)
    real = os.rename

    def full_disk(src, dst):
        if Path(dst).name == "step-000002":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "rename", full_disk)
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
        saver.save(_tiny_state(2), complete=False)
    assert str(e.value) == (f"could not write the checkpoint of step 2 to {tmp_path}/ckpt: No space left on device "
                            f"(ENOSPC); last good checkpoint kept at {tmp_path}/ckpt/step-000001 (step 1)")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-000001"]


def test_a_checkpoint_whose_rename_the_disk_did_not_confirm_is_named_as_written(tmp_path, monkeypatch):
    """The rename is done when ``ckpt/``'s fsync fails (EIO): the line says the new checkpoint is
    there and what a power loss would leave (the one before it), not that it could not be written;
    a resume takes it."""
    saver = checkpoint.Checkpointer(tmp_path / "ckpt")
    saver.save(_tiny_state(1), complete=False)
    real = checkpoint.fsync_dir

    def fails_on_ckpt(path):
        if path == tmp_path / "ckpt":
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(checkpoint, "fsync_dir", fails_on_ckpt)
    with pytest.raises(checkpoint.CheckpointWriteError) as e:
        saver.save(_tiny_state(2), complete=False)
    ckpt = tmp_path / "ckpt"
    assert str(e.value) == (f"the checkpoint of step 2 is written ({ckpt}/step-000002), but the disk did not confirm "
                            "its folder's rename: Input/output error (EIO); a resume takes it unless the machine "
                            f"loses power first (the one before it: {ckpt}/step-000001, step 1)")
    newest, damaged = checkpoint.Checkpointer(ckpt).find()
    assert (newest.step, damaged) == (2, [])


def test_the_run_folder_is_synced_once_for_its_entries_after_its_logs(tmp_path, monkeypatch):
    """A power loss after a checkpoint keeps the run folder's entries: ``ckpt/`` itself and the logs
    made before it. The folder is fsync'd at the process's first checkpoint, after the logs' own
    fsync, and not again at later checkpoints (each of which fsyncs ``ckpt/``)."""
    import rnnlab.train.metrics as metrics

    run, events, real_dir, real_sync = tmp_path / "r", [], checkpoint.fsync_dir, metrics.JsonlFiles.sync

    def fsync_dir(path):
        events.append(path)
        real_dir(path)

    def sync(self):
        events.append("logs")
        real_sync(self)

    monkeypatch.setattr(checkpoint, "fsync_dir", fsync_dir)
    monkeypatch.setattr(metrics.JsonlFiles, "sync", sync)
    assert main(["train", *TINY, "--steps", "4", "--checkpoint-every", "2", "--out", str(run), "--no-progress"]) == 0
    synced = [e for e in events if e == "logs" or e in (run, run / "ckpt")]
    assert synced == ["logs", run / "ckpt", run, "logs", run / "ckpt"]


def test_an_old_checkpoint_that_cannot_be_deleted_is_said_and_training_goes_on(tmp_path, capsys, monkeypatch):
    """Pruning runs after the new checkpoint is committed: an old one that cannot be deleted is a
    warning, not a failure (the run completes, every checkpoint it could not delete stays)."""
    run = tmp_path / "r"

    def refuse(path):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint, "remove_tree", refuse)
    assert main(["train", *TINY, "--steps", "6", "--checkpoint-every", "2", "--keep-checkpoints", "1",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"rnnlab: warning: could not delete the old checkpoint {run}/ckpt/step-000002 (Permission denied)" in err
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-000002", "step-000004", "step-000006"]
    assert json.loads((run / "summary.json").read_text())["complete"] is True


def test_a_rank_that_writes_no_checkpoint_deletes_none(tmp_path, monkeypatch):
    """Under FSDP2 every rank takes part in a save (the gathers), but only rank 0 writes and
    prunes: another rank deleting old checkpoints too would race rank 0 over the same folders."""
    import types

    for step in (2, 4):
        checkpoint.Checkpointer(tmp_path).save(_tiny_state(step), complete=False)
    monkeypatch.setattr(checkpoint, "context", lambda: types.SimpleNamespace(is_main=False, barrier=lambda: None))
    monkeypatch.setattr(checkpoint, "is_fsdp", lambda model: True)
    rank_1 = checkpoint.Checkpointer(tmp_path, keep=1)
    rank_1.save(_tiny_state(6), complete=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000004"] and rank_1.saved_step == 6


@pytest.mark.parametrize("stage, kept", [(2, 2), (5, 3)])  # the writer's pauses: 2 = after the weights, 5 = in the commit
def test_second_ctrl_c_during_the_interrupt_checkpoint(stage, kept, tmp_path, capsys, monkeypatch, ctrl_c_on_call):
    """Ctrl-C stops after step 3 and saves; a second Ctrl-C while that checkpoint is written
    abandons it (the one of step 2 stays), or, inside the commit, takes effect once the commit is
    done: either way the message names the checkpoint that really is on disk."""
    run = tmp_path / "r"
    ctrl_c_on_call(Trainer, "train_step", call=3)
    ctrl_c_on_call(checkpoint, "_pause", call=5 + stage)  # the first checkpoint (step 2) passes its 5 pauses
    assert main(["train", *TINY, "--steps", "6", "--checkpoint-every", "2", "--out", str(run)]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"rnnlab train: aborted by Ctrl-C at step 3; last good checkpoint kept at "
                   f"{run}/ckpt/step-{kept:06d} (step {kept})")
    assert RunDir(run).checkpoint().step == kept and not list(run.rglob(".tmp-*"))
    assert json.loads((run / "summary.json").read_text())["error"] == err.removeprefix("rnnlab train: ")
    monkeypatch.undo()
    assert main(["train", "--resume", *TINY, "--steps", "6", "--out", str(run)]) == 0
    assert _steps(run) == list(range(1, 7))


@pytest.mark.parametrize("stage", [2, 5])  # the writer's pauses: 2 = after the weights, 5 = in the commit
def test_first_ctrl_c_during_the_final_checkpoint_lets_it_finish(stage, tmp_path, capsys, ctrl_c_on_call):
    """The budget spent and the final evaluation done, a first Ctrl-C while the final checkpoint
    is written no longer abandons it: the checkpoint is committed, the run is complete (so it is
    neither retrained nor resumed), summary.json says it was interrupted at its end, exit 130."""
    run = tmp_path / "r"
    ctrl_c_on_call(checkpoint, "_pause", call=stage)  # the only checkpoint: the final one
    assert main(["train", *TINY, "--steps", "3", "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "finishing the final evaluation and checkpoint first (Ctrl-C again to abort)" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is True and summary["interrupted_at_end"] is True and "error" not in summary
    assert RunDir(run).checkpoint().step == 3 and RunDir(run).status() == "complete"
    assert not list(run.rglob(".tmp-*"))


def test_write_atomic_syncs_the_folder_and_leaves_no_temporary(tmp_path, monkeypatch):
    """``durable.write_atomic`` (summary.json, config.json, env.json): the new content is fsync'ed
    under a temporary name, renamed over the file, then the folder is fsync'ed so the rename
    survives a power loss; when the write fails (an I/O error, Ctrl-C) the old content stays and
    no temporary file is left behind."""
    from rnnlab.train import durable

    target = tmp_path / "summary.json"
    target.write_text("old")
    events = _record_fs_calls(monkeypatch, "replace")
    durable.write_atomic(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["summary.json"]
    (i,) = [i for i, e in enumerate(events) if e[0] == "replace"]
    # under a name of this process's and thread's own (two writers never share one) that clear_temporaries knows
    tmp = f".tmp-{os.getpid()}-{threading.get_native_id()}-summary.json"
    assert events[i][1:] == (str(tmp_path / tmp), str(target))
    assert ("fsync", str(Path(events[i][1]).resolve()), False) in events[:i]  # the data before the rename
    assert events[i + 1:] == [("fsync", str(tmp_path.resolve()), True)]  # the folder after it

    for error in (OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()):
        def failing(src, dst, error=error):
            raise error

        monkeypatch.setattr(os, "replace", failing)
        with pytest.raises(type(error)):
            durable.write_atomic(target, "newer")
        assert target.read_text() == "new" and os.listdir(tmp_path) == ["summary.json"]


def test_new_file_mode_is_the_mode_open_gives_under_the_umask(tmp_path):
    """``durable.new_file_mode`` (the exported weights' permissions, which a library writes owner-only):
    the mode a file ``open`` creates gets under the process's umask, which it leaves as it was."""
    from rnnlab.train import durable

    before = os.umask(0o027)
    try:
        for umask in (0o027, 0o002):
            os.umask(umask)
            made = tmp_path / f"made-{umask:o}"
            made.write_text("x")
            assert durable.new_file_mode() == made.stat().st_mode & 0o777 == 0o666 & ~umask
            assert os.umask(umask) == umask
    finally:
        os.umask(before)


def test_remove_tree_makes_the_folder_vanish_durably_before_deleting_it(tmp_path, monkeypatch):
    """``durable.remove_tree`` (pruning, --overwrite): one rename to a trash name, the parent
    folder fsync'ed (the folder is gone after a power loss), then the trash deleted."""
    from rnnlab.train import durable

    events, real_rmtree = _record_fs_calls(monkeypatch, "rename"), shutil.rmtree
    monkeypatch.setattr(durable.shutil, "rmtree", lambda p: (events.append(("rmtree", str(p))), real_rmtree(p))[1])
    folder = tmp_path / "step-000002"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"x")
    durable.remove_tree(folder)
    trash = str(tmp_path / f".trash-{os.getpid()}-step-000002")
    assert events == [("rename", str(folder), trash), ("fsync", str(tmp_path.resolve()), True), ("rmtree", trash)]
    assert os.listdir(tmp_path) == []


def test_two_ctrl_cs_held_back_by_a_commit_are_one_stop():
    """Two SIGINTs inside ``interrupts_deferred`` (a time limit's ``timeout -s INT`` reaches the
    process and its group) are handled once as the block ends: one stop (a first Ctrl-C saves and
    returns), not a first Ctrl-C and then an abort."""
    import signal

    from rnnlab.train.durable import interrupts_deferred

    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            assert seen == []
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_clear_temporaries_removes_only_temporaries_and_never_follows_a_link(tmp_path):
    """``durable.clear_temporaries``: ``.tmp-*`` and ``.trash-*`` files and folders go, whatever
    process's they were; a temporary name that is a link to a folder goes as a link (the folder it
    points to, elsewhere, is kept); everything else stays."""
    from rnnlab.train import durable

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "kept").mkdir(parents=True)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".tmp-123-summary.json").write_text("x")
    (folder / ".trash-123-step-000002").mkdir()
    (folder / ".trash-123-step-000002" / "state.pt").write_bytes(b"x")
    (folder / ".tmp-123-link").symlink_to(elsewhere, target_is_directory=True)
    (folder / "summary.json").write_text("x")
    (folder / "tmp-not-ours").mkdir()
    durable.clear_temporaries(folder)
    assert sorted(os.listdir(folder)) == ["summary.json", "tmp-not-ours"]
    assert (elsewhere / "kept").is_dir()


# ------------------------------------------------------------------------------ the folder
def test_lock_names_its_holder(tmp_path):
    a, b = RunLock(tmp_path / LOCK), RunLock(tmp_path / LOCK)
    a.acquire()
    with pytest.raises(ValueError, match=rf"run dir {tmp_path} is in use by pid {os.getpid()} on .+ \(started "
                                         r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\): one process at a time"):
        b.acquire()
    a.release()
    b.acquire()  # free again once released (the kernel also frees it when the holder dies)
    b.release()


def test_a_lock_holder_yet_to_record_itself_is_another_process(tmp_path):
    """A holder that has locked the file but not yet written its pid (the file still empty) is
    named as such, not a JSON error's traceback."""
    import fcntl

    (tmp_path / LOCK).write_text("")
    fd = os.open(tmp_path / LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError) as e:
            RunLock(tmp_path / LOCK).acquire()
        assert str(e.value) == (f"run dir {tmp_path} is in use by another process (which has not recorded itself "
                                f"yet): one process at a time trains into a run folder")
    finally:
        os.close(fd)


def test_the_lock_holder_replaces_what_an_earlier_holder_recorded(tmp_path):
    """A longer record left by an earlier holder (another host's name) is replaced whole, so the
    next process names the current holder."""
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "h" * 300, "started": "2026-01-01T00:00:00Z"}) + "\n")
    a, b = RunLock(tmp_path / LOCK), RunLock(tmp_path / LOCK)
    a.acquire()
    try:
        with pytest.raises(ValueError, match=rf"is in use by pid {os.getpid()} on "):
            b.acquire()
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    finally:
        a.release()


def test_a_refused_start_takes_away_the_lock_file_it_made_and_only_that(tmp_path):
    """``release(undo=True)`` (a refused ``--resume``) removes a lock file this process made, and
    leaves one that was there before."""
    made = RunLock(tmp_path / LOCK)
    made.acquire()
    made.release(undo=True)
    assert not (tmp_path / LOCK).exists()
    (tmp_path / LOCK).write_text("")
    found = RunLock(tmp_path / LOCK)
    found.acquire()
    found.release(undo=True)
    assert (tmp_path / LOCK).exists()


def test_a_lock_whose_holder_cannot_be_recorded_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """A full disk as the lock's holder writes its pid into the new ``.lock`` ends the start as any
    refusal does, in one line naming the file: the lock file and the folders made for --out go."""
    import rnnlab.train.rundir as rundir

    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "pwrite", pwrite)
    run = tmp_path / "new" / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"rnnlab train: error: No space left on device: {run / LOCK}\n"
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_without_flock_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """Where the run folder's file system refuses ``flock`` (some network mounts), the start ends in
    one line saying so, and the lock file and the folders made for --out go with it."""
    import rnnlab.train.rundir as rundir

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", flock)
    run = tmp_path / "new" / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"rnnlab train: error: cannot lock run dir {run} (No locks available); "
                                       f"a run folder needs a file system with flock\n")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_on_a_file_taken_away_before_the_flock_is_not_kept(tmp_path, monkeypatch):
    """A process that opened the lock file just before a refusal took it away (``release(undo=True)``)
    must not hold its lock on the unlinked file, which would exclude no one: it takes the new one."""
    import rnnlab.train.rundir as rundir

    real_flock, calls = rundir.fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            (tmp_path / LOCK).unlink()  # the refusing process's undo, between this one's open and flock
        return real_flock(fd, op)

    (tmp_path / LOCK).write_text("")
    lock = RunLock(tmp_path / LOCK)
    monkeypatch.setattr(rundir.fcntl, "flock", flock)
    lock.acquire()
    try:
        assert len(calls) == 2 and os.fstat(lock.fd).st_ino == os.stat(tmp_path / LOCK).st_ino
        with pytest.raises(ValueError, match="is in use by pid"):
            RunLock(tmp_path / LOCK).acquire()  # the lock excludes the next process
    finally:
        lock.release()


def test_status_tells_complete_failed_and_incomplete(tmp_path):
    """A Ctrl-C's abort records where it stopped as the error, but the run is stopped, not failed
    (the flag, or, in summaries from before it, the error's words)."""
    run = RunDir(tmp_path)
    for summary, status in (({"complete": True}, "complete"), ({"complete": False, "error": "boom"}, "failed"),
                            ({"complete": False}, "incomplete"),
                            ({"complete": False, "error": "at step 3", "aborted": True}, "incomplete"),
                            ({"complete": False, "error": "aborted by Ctrl-C at step 3; no checkpoint"}, "incomplete")):
        run.write_summary(summary)
        assert run.status() == status
    (tmp_path / "summary.json").write_text('["complete"]')  # JSON, but not the object a summary is
    assert run.summary() is None and run.status() == "incomplete"


def test_a_resumed_archived_run_gets_its_logs_back_as_plain_files(tiny_train, tmp_path):
    """Resuming a run whose logs were archived (``.xz``, results/) writes them back plain, cut back
    to the checkpoint's step, and deletes the archives, so that one copy of each record remains; a
    plain file, where there is one, is what is read, not an archive beside it."""
    import lzma

    from rnnlab.train.rundir import read_jsonl

    def lines(steps):
        return "".join(json.dumps({"step": s}) + "\n" for s in steps)

    run = RunDir(tmp_path)
    for name in ("metrics.jsonl", "eval.jsonl"):
        (tmp_path / f"{name}.xz").write_bytes(lzma.compress(lines([1, 2, 3]).encode()))
    run.start(tiny_train(tmp_path), {}, resumed_step=2)
    for name in ("metrics.jsonl", "eval.jsonl"):
        assert not (tmp_path / f"{name}.xz").exists() and (tmp_path / name).read_text() == lines([1, 2])
    (tmp_path / "metrics.jsonl.xz").write_bytes(lzma.compress(lines([7]).encode()))
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_each_run_file_alone_holds_a_run(tmp_path):
    """config.json, summary.json, metrics.jsonl (a run killed before its first checkpoint, its
    config.json lost) or ckpt/, any one alone, make a folder hold a run that a fresh run must not
    train over; a lock or a TensorBoard folder alone do not."""
    for name in ("config.json", "summary.json", "metrics.jsonl", "ckpt"):
        run = RunDir(tmp_path / name)
        run.path.mkdir()
        (run.path / name).mkdir() if name == "ckpt" else (run.path / name).write_text("{}\n")
        assert run.holds_run() and run.status() == "incomplete", name
    other = RunDir(tmp_path / "other")
    (other.path / "tb").mkdir(parents=True)
    (other.path / LOCK).write_text("")
    assert not other.holds_run() and other.status() == "empty"


def test_a_folder_holding_only_checkpoints_holds_a_run(tiny_train, tmp_path):
    """ckpt/ alone (config.json and the logs deleted) is a run: a fresh run there is refused, not
    trained beside another run's checkpoints that a later --resume would continue from, and
    --overwrite deletes them."""
    run = RunDir(tmp_path / "r")
    checkpoint.Checkpointer(run.ckpt_dir).save(_tiny_state(5), complete=False)
    assert run.holds_run() and run.status() == "incomplete"
    with pytest.raises(ValueError, match="already holds an incomplete run; pass --resume"):
        run.prepare(tiny_train(run.path, steps=2))
    assert run.checkpoint().step == 5
    assert run.prepare(tiny_train(run.path, steps=2, overwrite=True)) is None
    run.release()
    assert not run.ckpt_dir.exists()


def _weights_copy(src: Path, dst: Path, step: int | None) -> Path:
    """A copy of a weights file whose metadata gives ``step`` (None: no step)."""
    from safetensors.torch import load_file, save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(src)), str(dst), metadata={} if step is None else {"step": str(step)})
    return dst


def test_weight_files_lists_each_step_once_and_every_copy_of_unknown_step(tmp_path):
    """``RunDir.weight_files``: the usable checkpoints' weights and the copies elsewhere in the
    folder, by step; a copy of a step a checkpoint has is left out (the checkpoint's own listed),
    copies of unknown step all listed, last; the weights of a damaged checkpoint not at all."""
    run = RunDir(tmp_path / "r")
    for step in (2, 4):
        checkpoint.Checkpointer(run.ckpt_dir).save(_tiny_state(step), complete=False)
    own2 = run.ckpt_dir / "step-000002" / "model.safetensors"
    _weights_copy(own2, run.path / "aaa" / "model.safetensors", 2)  # sorts before ckpt/ by path
    copy3 = _weights_copy(own2, run.path / "old3" / "model.safetensors", 3)
    unknown = [_weights_copy(own2, run.path / d / "model.safetensors", None) for d in ("x", "y")]
    (run.ckpt_dir / "step-000004" / "state.pt").write_bytes(b"damaged")
    assert run.weight_files() == [own2, copy3, *unknown]


def test_weight_files_leave_out_a_hugging_face_export_in_the_run_folder(tmp_path):
    """``rnnlab export --out RUN/hf`` writes a ``model.safetensors`` (format "pt", keys ``model.*``)
    that is no copy of the run's weights: listed, it made ``analyze gradflow`` fail on loading it."""
    from safetensors.torch import load_file, save_file

    run = RunDir(tmp_path / "r")
    checkpoint.Checkpointer(run.ckpt_dir).save(_tiny_state(2), complete=False)
    own2 = run.ckpt_dir / "step-000002" / "model.safetensors"
    (run.path / "hf").mkdir()
    save_file({f"model.{k}": v for k, v in load_file(str(own2)).items()}, str(run.path / "hf" / "model.safetensors"),
              metadata={"format": "pt"})  # as transformers' save_pretrained writes it
    assert run.weight_files() == [own2]


def test_overwrite_replaces_only_the_run(tiny_train, tmp_path):
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=3, checkpoint_every=1), progress=False)
    (run / "notes.txt").write_text("mine")
    s = run_training(tiny_train(run, steps=2, overwrite=True), progress=False)
    assert s["complete"] and s["steps"] == 2 and _steps(run) == [1, 2]
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-000002"]
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "config.json").read_text())["overwrite"] is False  # reusing it deletes nothing


def test_overwrite_deletes_every_file_a_run_writes(tiny_train, tmp_path):
    """--overwrite deletes each file and folder of the run (archived logs, TensorBoard's and W&B's
    folders and wandb-id.txt among them: a file left behind would join the new run, wandb-id.txt
    continuing the old W&B run), what rnnlab wrote into it about that run alone (`analyze gradflow`'s
    folder, `report RUN`'s report and the plots its report.json names) and nothing else: a report
    of other runs written there (`report A B --out RUN`), a folder or a file outside the run folder
    that report.json names, and another run's gradflow/ stay."""
    def fill(report_runs, gradflow_run):
        run.path.mkdir(exist_ok=True)
        for name in ("config.json", "env.json", "metrics.jsonl", "metrics.jsonl.xz", "eval.jsonl", "summary.json",
                     "wandb-id.txt", "notes.txt", "report.md", "loss_and_bpb.png", "mine.png"):
            (run.path / name).write_text("{}\n")
        (run.path / "report.json").write_text(json.dumps({
            "runs": [{"dir": d} for d in report_runs], "plots": ["loss_and_bpb.png", "../notes.txt", "dir.png"]}))
        for name in ("ckpt", "tb", "wandb", "gradflow", "dir.png"):
            (run.path / name / "inside").mkdir(parents=True, exist_ok=True)
        (run.path / "gradflow" / "gradflow.json").write_text(json.dumps({"records": [{"run": gradflow_run}]}))

    run = RunDir(tmp_path / "r")
    fill(["r"], "runs/r/")
    assert run.prepare(tiny_train(run.path, steps=2, overwrite=True)) is None
    run.release()
    assert sorted(p.name for p in run.path.iterdir()) == [LOCK, "dir.png", "mine.png", "notes.txt"]
    fill(["a/x", "b/y"], "runs/other")  # a comparison of other runs, another run's analysis: not the run's
    assert run.prepare(tiny_train(run.path, steps=2, overwrite=True)) is None
    run.release()
    assert sorted(p.name for p in run.path.iterdir()) == [
        LOCK, "dir.png", "gradflow", "loss_and_bpb.png", "mine.png", "notes.txt", "report.json", "report.md"]


def test_a_fresh_run_that_fails_at_its_start_leaves_what_was_in_its_folder(tiny_train, tmp_path):
    """``abandon_fresh`` removes only what the failed start wrote: a report already in the folder
    (``rnnlab report ... --out`` there before) stays, whatever runs it names."""
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    (run.path / "report.md").write_text("# a report\n")
    (run.path / "report.json").write_text(json.dumps({"runs": [{"dir": "r"}], "plots": []}))
    assert run.prepare(tiny_train(run.path, steps=2)) is None
    run.abandon_fresh()
    assert sorted(p.name for p in run.path.iterdir()) == [LOCK, "report.json", "report.md"]


def test_a_folder_of_runs_names_up_to_eight_of_them(tmp_path):
    """Loading a folder that holds runs instead of being one names them, eight at most, then "...",
    and how to name the first."""
    for i in range(9):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "config.json").write_text("{}")
        names = ", ".join(f"r{j}" for j in range(min(i + 1, 8))) + (", ..." if i == 8 else "")
        with pytest.raises(FileNotFoundError) as e:
            RunDir(tmp_path).config()
        assert str(e.value) == (f"{tmp_path} is not a run dir (no readable config.json); it holds runs: {names} "
                                f"(--run {tmp_path / 'r0'})")


def test_an_export_folder_is_no_run_of_a_folder_of_runs(tiny_train, tmp_path):
    """An ``rnnlab export`` output (a Hugging Face config.json, naming its ``model_type``) is no run
    (``RunDir.is_hf_export``): a folder holding only one takes a fresh run rather than being refused as
    "a folder of runs", and beside runs it is not named among them."""
    root = tmp_path / "root"
    (root / "r-hf").mkdir(parents=True)
    hf_config = {"model_type": "rnnlab", "architectures": ["RnnlabForCausalLM"]}
    (root / "r-hf" / "config.json").write_text(json.dumps(hf_config))
    assert RunDir(root / "r-hf").is_hf_export() and RunDir(root).runs_inside() == []
    run = RunDir(root)
    assert run.prepare(tiny_train(root, steps=2)) is None
    run.release()
    (root / "r").mkdir()
    (root / "r" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as e:
        RunDir(root).config()
    assert str(e.value) == f"{root} is not a run dir (no readable config.json); it holds runs: r (--run {root / 'r'})"


def test_resume_clears_what_killed_writers_left(tiny_train, tmp_path):
    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    leftovers = [run / "ckpt" / ".tmp-99-step-000003", run / "ckpt" / ".trash-99-step-000001",
                 run / ".tmp-99-summary.json"]
    leftovers[0].mkdir()
    (leftovers[0] / "model.safetensors").write_bytes(b"half")
    leftovers[1].mkdir()
    leftovers[2].write_text("{")
    run_training(tiny_train(run, steps=3, resume=True), progress=False)
    assert not any(p.exists() for p in leftovers)


def test_a_leftover_that_will_not_go_is_said_and_the_run_resumes(tiny_train, tmp_path, monkeypatch, capsys):
    """An old checkpoint that pruning could not delete (its files made read-only: ``rmtree`` of its
    trash fails with EACCES) stays as a ``.trash-*`` folder; the next start's clearing fails the same
    way, and that ended every later ``--resume`` with ``Permission denied: model.safetensors``. It is
    said in one warning and the run goes on."""
    from rnnlab.train import durable

    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    stuck = run / "ckpt" / ".trash-99-step-000001"
    stuck.mkdir()
    (stuck / "model.safetensors").write_bytes(b"kept")
    real = shutil.rmtree

    def read_only(path, *args, **kw):
        if Path(path) == stuck:
            raise PermissionError(errno.EACCES, "Permission denied", "model.safetensors")
        real(path, *args, **kw)

    monkeypatch.setattr(durable.shutil, "rmtree", read_only)
    capsys.readouterr()
    assert run_training(tiny_train(run, steps=3, resume=True), progress=False)["complete"]
    assert capsys.readouterr().err.count(f"rnnlab: warning: could not remove {stuck}, left by an interrupted write or "
                                         "an old checkpoint's deletion (Permission denied); it stays") == 1
    assert stuck.exists() and _steps(run) == [1, 2, 3]


def test_the_checkpointer_says_while_it_writes(tmp_path, monkeypatch):
    """``Checkpointer.writing`` is set from the first file written to the commit, once the state
    is gathered (under FSDP2 the gathers are collectives, which a dead peer holds up), and clear
    before and after, a failed write included: ``LostPeerWatch`` lets a write that a dead peer
    does not hold up finish before it ends the rank."""
    import safetensors.torch

    saver = checkpoint.Checkpointer(tmp_path)
    seen = []

    def noting(name, real):
        return lambda *a, **k: (seen.append((name, saver.writing.is_set())), real(*a, **k))[1]

    monkeypatch.setattr(checkpoint, "model_state_dict", noting("gather", checkpoint.model_state_dict))
    monkeypatch.setattr(safetensors.torch, "save_file", noting("weights", safetensors.torch.save_file))
    monkeypatch.setattr(saver, "_commit", noting("commit", saver._commit))
    saver.save(_tiny_state(3), complete=False)
    assert seen == [("gather", False), ("weights", True), ("commit", True)] and not saver.writing.is_set()
    monkeypatch.setattr(saver, "_commit", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(checkpoint.CheckpointWriteError, match="No space left on device"):
        saver.save(_tiny_state(6), complete=False)
    assert not saver.writing.is_set()


# ------------------------------------------------------------------------------ names, formats, RNG
def test_step_directory_names_round_trip_past_six_digits():
    assert checkpoint.step_dir_name(600) == "step-000600"
    for step in (0, 7, 600, 999_999, 1_234_567):
        assert checkpoint.parse_step_dir(checkpoint.step_dir_name(step)) == step
    assert [checkpoint.parse_step_dir(n) for n in ("step-", "step-12a", "stop-000600", "damaged-step-000600")] == \
           [None, None, None, None]


def test_a_reason_is_the_first_line_of_the_message_cut_at_200_characters():
    assert checkpoint._reason(EOFError("x" * 300 + "\nsecond line")) == "EOFError: " + "x" * 200
    assert checkpoint._reason(EOFError()) == "EOFError"


def test_a_file_larger_than_its_manifest_says_is_damaged_by_its_size(tmp_path):
    checkpoint.Checkpointer(tmp_path).save(_tiny_state(3), complete=False)
    c = checkpoint.Checkpoint(tmp_path / "step-000003", 3)
    size = (c.path / "state.pt").stat().st_size
    with open(c.path / "state.pt", "ab") as f:
        f.write(b"xyz")
    with pytest.raises(checkpoint.CheckpointError, match=f"has {size + 3:,} bytes, its manifest says {size:,}"):
        c.verify()


def test_a_state_file_of_another_format_is_refused(tmp_path):
    torch.save({"format": checkpoint.STATE_FORMAT + 1, "progress": {"step": 1}}, tmp_path / "state.pt")
    with pytest.raises(checkpoint.CheckpointError, match="is not a format-1 rnnlab training state"):
        checkpoint.read_state(tmp_path / "state.pt")


def test_a_step_directory_holding_another_steps_files_is_refused(tmp_path):
    """Loading checks the directory's step against the state's, not only the files' steps
    against each other (a step directory copied under another name)."""
    checkpoint.Checkpointer(tmp_path).save(_tiny_state(3), complete=False)
    os.rename(tmp_path / "step-000003", tmp_path / "step-000004")
    with pytest.raises(checkpoint.CheckpointError, match="inconsistent"):
        checkpoint.load_checkpoint(checkpoint.Checkpoint(tmp_path / "step-000004", 4), _tiny_state(0).model)


def test_rng_state_round_trips_numpys_cached_gaussian():
    """numpy's legacy generator keeps the second of each pair of normal draws (``has_gauss``,
    ``cached_gaussian``): after one draw the restored state gives the same next draws."""
    np.random.seed(0)
    np.random.standard_normal()  # leaves the pair's second value cached
    state = checkpoint.rng_state()
    want = (np.random.standard_normal(3).tolist(), torch.rand(2).tolist(), random.random())
    checkpoint.set_rng_state(state)
    assert (np.random.standard_normal(3).tolist(), torch.rand(2).tolist(), random.random()) == want


def test_an_old_format_checkpoint_of_unreadable_step_comes_last(tmp_path):
    (tmp_path / "step-000002").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    found = checkpoint.Checkpointer(tmp_path).checkpoints()
    assert [(c.path.name, c.step, c.legacy) for c in found] == [("step-000002", 2, False), (tmp_path.name, None, True)]


def test_newest_is_a_newer_step_committed_after_the_last_one_this_process_knew(tmp_path):
    saver = checkpoint.Checkpointer(tmp_path)
    saver.last = checkpoint.Checkpoint(tmp_path / "step-000002", 2)
    for name in ("step-000002", "step-000004"):
        (tmp_path / name).mkdir()
    assert saver.newest() == checkpoint.Checkpoint(tmp_path / "step-000004", 4)
    saver.last = checkpoint.Checkpoint(tmp_path / "step-000006", 6)
    assert saver.newest() == saver.last


def test_the_weights_metadata_says_the_format_the_tying_and_the_step(tmp_path):
    state = _tiny_state(3)
    tied = state.model.head.weight is state.model.embed.weight
    checkpoint.Checkpointer(tmp_path).save(state, complete=False)
    meta = checkpoint.read_weights_metadata(tmp_path / "step-000003" / "model.safetensors")
    assert meta == {"format": "rnnlab", "tied": "1" if tied else "0", "step": "3"}


def test_a_manifest_of_another_format_is_damage(tmp_path):
    """A manifest naming another format (a later rnnlab's, or none) is not read as this one's."""
    checkpoint.Checkpointer(tmp_path).save(_tiny_state(3), complete=False)
    c = checkpoint.Checkpoint(tmp_path / "step-000003", 3)
    good = json.loads((c.path / "manifest.json").read_text())
    for bad in ({**good, "format": 3}, {k: v for k, v in good.items() if k != "format"}):
        (c.path / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(checkpoint.CheckpointError, match="does not describe a format-2 checkpoint of step 3"):
            c.verify()


def test_a_file_named_like_a_step_is_no_checkpoint(tmp_path):
    """Only a directory is a checkpoint: a file ``step-000006`` beside them is neither listed (so
    neither reported as damaged nor renamed aside by a resume) nor pruned."""
    checkpoint.Checkpointer(tmp_path).save(_tiny_state(4), complete=False)
    (tmp_path / "step-000006").write_text("a note")
    saver = checkpoint.Checkpointer(tmp_path, keep=1)
    assert [c.step for c in saver.checkpoints()] == [4] and saver.find() == (saver.checkpoints()[0], [])


def test_an_old_format_checkpoint_missing_one_file_is_damaged_not_absent(tmp_path):
    """An old run folder's ckpt/ that lost state.pt (or its weights) still holds a checkpoint: it is
    reported as damaged, naming the missing file, not as "there is none"."""
    for keep in ("model.safetensors", "state.pt"):
        ckpt = tmp_path / keep / "ckpt"
        checkpoint.Checkpointer(ckpt).save(_tiny_state(4), complete=False)
        shutil.copy(ckpt / "step-000004" / keep, ckpt / keep)
        shutil.rmtree(ckpt / "step-000004")
        found, damaged = checkpoint.Checkpointer(ckpt).find()
        assert found is None and [c.legacy for c, _ in damaged] == [True]
        assert re.search(r"(state\.pt|model\.safetensors) is missing", damaged[0][1])


def test_newest_is_none_where_only_an_old_format_checkpoint_of_unreadable_step_is(tmp_path):
    """``newest`` names a checkpoint for a message ("the last checkpoint is ... (step N)"): one whose step
    cannot be read is none to name."""
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    assert checkpoint.Checkpointer(tmp_path).newest() is None


def test_logs_read_back_skip_lines_holding_no_json_object(tmp_path):
    """Every record of a run's logs is an object: a line holding other JSON (a number, a list, a
    string) is left out like a line a crash cut short, not handed on to crash a reader."""
    from rnnlab.train.rundir import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n3\n[1, 2]\n"x"\nnull\n{"step": 2, "lo\n{"step": 2}\n')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_a_resume_keeps_the_curve_evaluation_of_its_step_and_the_last_final_one(tmp_path):
    """A resumed run's eval.jsonl, cut back to its checkpoint's step, keeps that step's curve
    evaluation (a run stopped there, resumed with that step as its budget) and the last of its
    final evaluations (a re-score appended beside the one it replaces); records past it go."""
    path = tmp_path / "eval.jsonl"
    records = [{"step": 2, "val_loss": 1.0}, {"step": 2, "val_loss": 0.9, "final": True},
               {"step": 2, "val_loss": 0.8, "final": True}, {"step": 3, "val_loss": 0.7}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    RunDir._truncate(path, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [records[0], records[2]]


def test_resume_calls_a_folder_holding_only_its_lock_file_empty(tiny_train, tmp_path):
    """A fresh run that failed before its first step in a folder that was there before leaves only
    ``.lock`` behind (``RunDir.abandon_fresh``; one it made goes): ``--resume`` there says the folder
    is empty, not that it holds other files."""
    run = tmp_path / "r"
    run.mkdir()
    (run / LOCK).write_text("")
    with pytest.raises(ValueError, match=r"holds no run to resume \(an empty folder; check --out\)"):
        RunDir(run).prepare(tiny_train(run, resume=True))


def test_an_untied_models_weights_without_the_head_do_not_fit(tmp_path):
    """Only a tied head is stored once (as embed.weight): a model with its own head needs head.weight."""
    from safetensors.torch import save_file

    cfg = TrainConfig.from_dict({"model": {"model": "e1", "dim": 16, "depth": 1, "tie_embeddings": False},
                                 "device": "cpu", "precision": "fp32"})
    model = build_model(cfg, torch.device("cpu"))
    sd = checkpoint.model_state_dict(model)
    assert "head.weight" in sd
    save_file({k: v for k, v in sd.items() if k != "head.weight"}, str(tmp_path / "headless.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match=r"missing \['head.weight'\]"):
        checkpoint.load_weights(model, tmp_path / "headless.safetensors")


def test_a_checkpoint_that_keeps_vanishing_as_it_is_read_is_a_clear_error(tiny_train, tmp_path, monkeypatch):
    """``RunDir.load`` tries the newest checkpoint three times while a run deletes old ones; the third
    failure is raised as the CheckpointError it is."""
    from rnnlab.train import checkpoint as ck

    run = tmp_path / "r"
    run_training(tiny_train(run, steps=2), progress=False)
    monkeypatch.setattr(RunDir, "checkpoint", lambda self: ck.Checkpoint(run / "ckpt" / "step-000009", 9))
    with pytest.raises(ck.CheckpointError, match="step-000009/model.safetensors is missing"):
        RunDir(run).load("cpu")


def test_a_json_file_the_disk_cannot_take_is_named_and_no_temporary_stays(tmp_path, monkeypatch):
    """config.json, summary.json and the logs cut back at a resume are written by ``write_atomic``: a
    full disk's error (which names no file) names the file being replaced, and its temporary goes."""
    from rnnlab.cli import error_line
    from rnnlab.train import durable

    def full(path, data):
        open(path, "wb").close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "write_synced", full)
    with pytest.raises(OSError) as e:
        durable.write_atomic(tmp_path / "summary.json", "{}")
    assert error_line(e.value) == f"No space left on device: {tmp_path / 'summary.json'}"
    assert list(tmp_path.iterdir()) == []


def test_an_os_error_without_an_errno_keeps_its_message():
    """``errors.naming`` names a system error that names no file, and leaves one made of a message
    alone (naming it would print "[Errno None] None: 'FILE'", the message lost)."""
    import errno

    from rnnlab.errors import naming

    for raised, want in ((OSError(errno.ENOSPC, "No space left on device"), "[Errno 28] No space left on device: 'f'"),
                         (OSError("Not a gzipped file"), "Not a gzipped file")):
        with pytest.raises(OSError) as e, naming("f"):
            raise raised
        assert str(e.value) == want

