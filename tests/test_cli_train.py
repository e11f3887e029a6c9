"""``rnnlab train`` / ``eval`` / ``sample`` through the real entry point (in-process). Bad inputs:
tests/test_bad_inputs.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from rnnlab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--dim", "32", "--depth", "2", "--seq-len", "32", "--batch-size", "4", "--precision", "fp32",
        "--eval-bytes", "4096", "--device", "cpu", "--no-progress", "--lr", "3e-3"]


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    return err


def test_train_eval_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "6", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "loss (last 6)" in out and "val loss / bpb" in out  # 6 steps: their mean
    assert re.search(r"^complete +True$", out, re.M)
    summary = json.loads((run / "summary.json").read_text())

    assert main(["eval", "--run", str(run), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["val_loss"] == summary["val_loss"] and r["step"] == 6 and r["weights"] == "average"

    data = tmp_path / "other.txt"
    data.write_bytes(b"hello world, " * 100)
    assert main(["eval", "--run", str(run), "--data", str(data), "--eval-bytes", "all"]) == 0
    text = capsys.readouterr().out
    assert "val_bpb" in text and f"{(1300 - 1) // 32 * 32:,} bytes" in text

    argv = ["sample", "--run", str(run), "--prompt", "The ", "--tokens", "30", "--seed", "3", "--device", "cpu"]
    assert main(argv) == 0
    a = capsys.readouterr().out
    assert main(argv) == 0
    assert a == capsys.readouterr().out and a.startswith("The ")
    # a prompt of bytes that are no UTF-8, as a shell passes them (Python's surrogate escapes): the
    # bytes themselves, not "'utf-8' codec can't encode ... surrogates not allowed"
    raw = os.fsdecode(b"\xff\xfeab")
    assert main(["sample", "--run", str(run), "--prompt", raw, "--tokens", "3", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("\ufffd\ufffdab")
    # a stdout that cannot encode U+FFFD or any byte above ASCII (PYTHONIOENCODING=ascii, a C
    # locale): each such character prints as ?, not "'ascii' codec can't encode ..." ending the sample
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    with contextlib.redirect_stdout(ascii_out):
        prompt = os.fsdecode("é".encode() + b"\xffab")  # é, then a byte that is no UTF-8
        assert main(["sample", "--run", str(run), "--prompt", prompt, "--tokens", "3", "--device", "cpu"]) == 0
    ascii_out.flush()
    assert ascii_out.buffer.getvalue().startswith(b"??ab")


def test_config_file_with_flag_overrides(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('steps = 50\noptimizer = "adamw"\nwarmup_steps = 2\n[model]\nmodel = "mingru"\n'
                   'dim = 16\ndepth = 1\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), *TINY, "--steps", "4", "--layer", "expansion=2",
                 "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == {**saved["model"], "model": "mingru", "dim": 32, "depth": 2,
                              "layer": {"expansion": 2}}
    assert saved["steps"] == 4 and saved["optimizer"] == "adamw" and saved["warmup_steps"] == 2
    assert saved["lr"] == 3e-3
    assert re.search(r"^model +mingru dim=32 depth=2 expansion=2$", capsys.readouterr().out, re.M)  # the summary
    # --resume with no config: the run's own config is the base; the budget may grow
    assert main(["train", "--resume", "--out", str(run), "--steps", "6", "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    capsys.readouterr()
    err = _err(capsys, ["train", "--resume", "--out", str(run), "--steps", "8", "--lr", "0.1", "--no-progress"])
    assert "was made with a different config: field lr is 0.003, not 0.1" in err


def test_model_too_big_for_memory(tmp_path, capsys):
    # 64 layers of width 65536: 1.4 trillion parameters, ~10 TiB of weights, grads and optimizer
    # state, far past any machine's memory (counting 1024 layers on the meta device took 1.7 s)
    err = _err(capsys, ["train", "--model", "e1", "--dim", "65536", "--depth", "64", "--device", "cpu",
                        "--out", str(tmp_path / "r")])
    assert "parameters: weights, grads and optimizer state need" in err


def test_nan_exits_nonzero(tmp_path, capsys):
    rc = main(["train", "--model", "mingru", *TINY, "--steps", "30", "--optimizer", "adamw", "--lr", "1e30",
               "--out", str(tmp_path / "r")])
    assert rc == 1
    assert "non-finite loss" in capsys.readouterr().err


@pytest.mark.parametrize("rank", [0, 1])
def test_a_non_finite_loss_under_several_processes_is_said_once(rank, tmp_path, capsys, monkeypatch):
    """Every rank finds the same non-finite loss (it is all-reduced) and exits 1; rank 0 alone prints
    the line, not one copy per process."""
    from rnnlab.train import distributed, trainer

    def diverges(cfg, progress):
        raise trainer.NonFiniteLossError("non-finite loss (nan) at step 3; lower --lr; no checkpoint was written")

    monkeypatch.setattr(distributed, "context", lambda: distributed.DistContext(rank=rank, world_size=2))
    monkeypatch.setattr(trainer, "run_training", diverges)
    assert main(["train", *TINY, "--steps", "3", "--out", str(tmp_path / "r")]) == 1
    said = "rnnlab train: error: non-finite loss (nan) at step 3; lower --lr; no checkpoint was written\n"
    assert capsys.readouterr().err == (said if rank == 0 else "")


def test_every_config_field_has_a_flag():
    """The train flags are generated from the config: a new field cannot be left without one."""
    from rnnlab.cli import build_parser
    from rnnlab.options import flag_name
    from rnnlab.train.config import FIELDS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = {o for a in sub._actions for o in a.option_strings}
    expected = {flag_name(k) for k, (_, spec) in FIELDS.items() if spec.meta.flag}
    assert expected <= flags and "--vocab-size" not in flags
    assert {"--layer", "--eval-bytes", "--no-compile", "--tie-embeddings", "--betas"} <= flags


def test_flags_override_a_config_file(tmp_path, capsys, small_corpus):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("eval_bytes: 64\nbetas: [0.9, 0.95]\nlayer: {expansion: 2.0}\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), *TINY, "--steps", "2", "--eval-bytes", "all", "--betas", "0.8",
                 "0.9", "--layer", "conv=2", "--data", str(small_corpus), "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["eval_bytes"] == 0 and saved["betas"] == [0.8, 0.9]
    assert saved["model"]["layer"] == {"expansion": 2.0, "conv": 2}  # --layer adds to the file's options
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_bytes"] == (200 - 1) // 32 * 32  # the whole 200-byte held-out split, not 64 bytes
    assert f"({summary['val_bytes']:,} held-out bytes)" in capsys.readouterr().out


def test_a_layer_flag_overrides_the_config_files_option(tmp_path):
    """``--layer`` adds to the file's options and, for an option both give, wins (flags over the file)."""
    from rnnlab.cli import build_parser
    from rnnlab.train.cli import config_from_args

    cfg = tmp_path / "exp.yaml"
    cfg.write_text("layer: {conv: 4, expansion: 2.0}\n")
    args = build_parser().parse_args(["train", "--config", str(cfg), "--layer", "conv=2"])
    assert config_from_args(args).model.layer == {"conv": 2, "expansion": 2.0}


def test_a_resume_whose_config_file_names_other_data_does_not_ask_for_the_old_file(tmp_path, small_corpus):
    """A resumed run needs the corpus paths its config.json names, unless a flag or the --config file
    names its own: then the old path may be gone."""
    from rnnlab.cli import build_parser
    from rnnlab.train.cli import config_from_args
    from rnnlab.train.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    saved = TrainConfig.from_dict({"data": str(tmp_path / "gone.txt"), "out": str(run)}).to_dict()
    (run / "config.json").write_text(json.dumps(saved))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"data: {small_corpus}\n")
    args = build_parser().parse_args(["train", "--resume", "--out", str(run), "--config", str(cfg)])
    assert config_from_args(args).data.path == str(small_corpus)


def test_resume_true_in_a_config_file_keeps_the_runs_settings_as_the_flag_does(tmp_path, capsys, small_corpus):
    """``resume = true`` in the --config file resumes as --resume does: the run's config.json is kept
    where the file is silent (it was read only for the flag: the run was refused as "made with a
    different config: field batch_size is 4, not 16", a setting the user never changed)."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(small_corpus), "--steps", "2", "--out", str(run)]) == 0
    exp = tmp_path / "more.toml"
    exp.write_text("resume = true\nsteps = 3\n")
    capsys.readouterr()
    assert main(["train", "--config", str(exp), "--out", str(run), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["steps"], summary["dim"], summary["complete"]) == (3, 32, True)
    # --no-resume overrides the file: a fresh run, refused over the complete one
    assert "already holds a complete run" in _err(capsys, ["train", "--config", str(exp), "--no-resume", "--out",
                                                           str(run), "--no-progress"])


def test_top_level_help_and_version(capsys):
    from rnnlab import __version__

    for argv in (["--help"], ["--version"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "rnnlab trains byte-level language models" in out.split("\n\n")[1]  # right after the usage line
    assert out.rstrip().endswith(f"rnnlab {__version__}")
    for command in ("train", "layers", "bench", "report", "export", "data"):
        assert re.search(rf"^    {command} ", out, re.M)


def test_negative_numbers_reach_their_flag():
    """argparse reads ``-1e-3`` and ``-5M`` as flags; rnnlab hands them to the flag before it
    (``-2`` and ``--x=-1e-3`` argparse takes as they are; ``-M`` stays a flag)."""
    from rnnlab.cli import attach_negative_numbers

    assert attach_negative_numbers(["train", "--lr", "-1e-3", "--steps", "-2", "--dim", "-.5E2", "--x=-1e-3",
                                    "--tokens", "-5M", "--params", "-1.5b", "--y", "-M"]) == [
        "train", "--lr=-1e-3", "--steps", "-2", "--dim=-.5E2", "--x=-1e-3", "--tokens=-5M", "--params=-1.5b",
        "--y", "-M"]
    # a flag that already has its value (--x=V) takes no other: -5M stays a stray argument argparse names
    assert attach_negative_numbers(["--lr=1e-3", "-5M"]) == ["--lr=1e-3", "-5M"]


def test_gpus_1_trains_in_this_process(monkeypatch):
    """``--gpus 1`` is one process: ``rnnlab train`` trains in itself, with no torchrun re-launch."""
    from rnnlab.cli import build_parser
    from rnnlab.train import cli

    argv = ["train", "--gpus", "1", "--device", "cpu", "--steps", "2"]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["rnnlab", *argv])
    monkeypatch.setattr(cli, "_check_before_launch", lambda cfg, n: None)
    monkeypatch.setattr(cli, "run_passing_signals", lambda *a, **k: pytest.fail("re-launched through torchrun"))
    assert cli._launch(build_parser().parse_args(argv)) is None


def test_a_reader_that_leaves_early_is_no_error(monkeypatch, capsys):
    """``rnnlab layers | head -1``: writing to the closed pipe ends the command quietly with a
    shell's SIGPIPE status, not an "error: [Errno 32] Broken pipe" line."""

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["layers"]) == 141
    assert capsys.readouterr().err == ""
    monkeypatch.undo()
    # a real pipe whose reader has gone: also the interpreter's last flush at exit stays quiet
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "rnnlab", "params", "--dim", "64", "--depth", "2"], stdout=write,
                           stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert (r.returncode, r.stderr) == (141, b"")


def test_bench_help_names_no_train_defaults(capsys):
    """``rnnlab train --help`` gives each flag's default; ``rnnlab bench --help`` does not (a suite
    sets the steps, lr, ...: train's 1000 steps would be wrong for every shipped suite), nor does
    ``rnnlab sweep --help`` (it asks for the model's size instead of train's 256 x 4)."""
    helps = {}
    for command in ("train", "bench", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    assert "optimizer steps (default: 1000)" in helps["train"] and "model width (default: 256)" in helps["train"]
    assert "optimizer steps" in helps["bench"] and "(default: 1000)" not in helps["bench"]
    assert "not given: the suite's, else rnnlab train's default" in helps["bench"]
    # a sweep takes train's defaults but for the model's size, which it asks for
    assert "model width" in helps["sweep"] and "(default: 256)" not in helps["sweep"]
    assert "except the model's size: give --depth and --dim (or --target-params), or sweep them" in helps["sweep"]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # fla's import on CPU
def test_doctor_lists_every_kernel_in_one_column(capsys):
    from rnnlab.ops.registry import OPS
    from rnnlab.train import sf_adamw

    main(["doctor"])
    lines = capsys.readouterr().out.splitlines()
    assert "spectral_norm" in OPS  # E1's, registered with the scans
    assert {f"kernel {name}" for name in OPS} <= {line.split("  ")[0].rstrip() for line in lines}
    step = next(line for line in lines if line.startswith("schedule-free step")).split("  ", 1)[1].strip()
    assert step == sf_adamw.status()
    assert step.startswith("fused" if torch.cuda.is_available() else "schedulefree's foreach step (the fused one needs")
    starts = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in lines}
    assert len(starts) == 1, lines  # every value starts in the same column


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # fla's import on CPU
def test_doctor_gives_each_dependencys_version(monkeypatch):
    """``rnnlab doctor`` ("versions; which fast paths load"): each dependency that imports shows its
    version, the installed distribution's where the module has no ``__version__`` (schedulefree,
    mamba_ssm, fla's layers), and rnnlab's own."""
    from importlib import metadata

    from rnnlab import doctor

    report = doctor.report()
    assert report["rnnlab"] == metadata.version("rnnlab")
    for key, dist in (("numpy", "numpy"), ("schedulefree", "schedulefree"), ("safetensors", "safetensors"),
                      ("mamba_ssm", "mamba-ssm"), ("fla layers", "flash-linear-attention"),
                      ("transformers (rnnlab export)", "transformers")):
        if report[key].startswith("ok"):
            assert report[key] == f"ok {metadata.version(dist)}", (key, report[key])
    assert report["schedulefree"] != "ok"  # installed with the package: its version shows
    real = metadata.version  # a transformers that rnnlab.hf refuses imports, but is no "ok"
    monkeypatch.setattr(metadata, "version", lambda d: "4.57.1" if d == "transformers" else real(d))
    assert doctor.report()["transformers (rnnlab export)"] == (
        "unavailable (transformers 4.57.1 is installed; rnnlab.hf needs transformers>=5.24,<6 (pip install "
        "'rnnlab[hf]'))")
    monkeypatch.setattr(metadata, "version", lambda d: (_ for _ in ()).throw(metadata.PackageNotFoundError(d)))
    assert doctor.report()["rnnlab"] == "not installed (run from its source tree)"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # fla's import on CPU
def test_doctor_says_an_op_without_a_kernel_has_none_on_any_machine(monkeypatch):
    """A new cell's op registered with no kernel module (docs/architecture.md, Adding a cell) reads
    "none yet (the reference runs)" in ``rnnlab doctor``, with or without CUDA: not "needs CUDA",
    which would say a GPU runs a kernel that does not exist."""
    from rnnlab import doctor
    from rnnlab.ops.registry import OPS, Op

    monkeypatch.setitem(OPS, "probe_scan", Op("probe_scan", lambda x, h0=None: (x, h0), None))
    report = doctor.report()
    assert report["kernel probe_scan"] == "none yet (the reference runs)"
    if not torch.cuda.is_available():
        assert report["kernel diag_elman_scan"] == "needs CUDA"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # fla's import on CPU
def test_doctor_says_whether_a_rank_left_waiting_for_a_dead_peer_is_watched(monkeypatch):
    """On Linux with this pid namespace's /proc, ``rnnlab doctor`` says the lost-peer watch is on;
    where the ranks cannot be told by their pids (another namespace's /proc, not Linux), off and why."""
    from rnnlab import doctor
    from rnnlab.train import peers

    key = "lost-peer watch (--gpus N)"
    if sys.platform.startswith("linux"):
        assert doctor.report()[key] == "on"
    monkeypatch.setattr(peers, "process_identity", lambda: None)
    assert doctor.report()[key].startswith("off: no /proc of this pid namespace")


def test_eval_of_an_adamw_run_names_no_averaged_weights(tmp_path, capsys):
    """AdamW keeps one set of weights: ``eval --json`` says null, not Schedule-Free's "average"."""
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "2", "--optimizer", "adamw", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] is None


def test_doctor_says_what_loads_and_why_not(tmp_path, monkeypatch):
    """``rnnlab doctor``'s values: a kernel module that imports, one that does not (its error), an
    op without a kernel; a package's version, or the first line of why it does not import (its
    import-time warnings, which that line is about, not printed too); Mamba2's official path,
    fused or not."""
    import warnings

    from rnnlab import doctor
    from rnnlab.ops.registry import LazyKernel

    missing = "ModuleNotFoundError: No module named 'rnnlab_no_such_module'"
    assert doctor._kernel_status(LazyKernel("json")) == "ok (json)"
    assert doctor._kernel_status(LazyKernel("rnnlab_no_such_module")) == f"unavailable ({missing})"
    assert doctor._kernel_status(None) == "none yet (the reference runs)"
    assert doctor._try("json") == f"ok {json.__version__}"
    assert doctor._try("rnnlab_no_such_module") == f"unavailable ({missing})"
    (tmp_path / "rnnlab_test_warns.py").write_text('import warnings\nwarnings.warn("no GPU found")\n')
    (tmp_path / "rnnlab_test_breaks.py").write_text('raise ImportError("libcuda.so.1: cannot open\\nsee the guide")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert doctor._try("rnnlab_test_warns") == "ok" and caught == []
        assert doctor._try("rnnlab_test_breaks") == "unavailable (ImportError: libcuda.so.1: cannot open)"
    finally:
        sys.modules.pop("rnnlab_test_warns", None)
    cases = (("official", True), ("official", False), ("reference", True))
    assert [doctor._mamba2_backend(backend, fused) for backend, fused in cases] == [
        "official (fused path)", "official (non-fused: causal_conv1d missing)", "reference"]


def test_eval_scores_the_val_data_file_the_run_was_trained_with(tmp_path, capsys, small_corpus):
    """``rnnlab eval --run`` of a run trained with ``--val-data FILE`` scores FILE (the run's
    held-out split), not the tail of ``--data``; ``eval --data OTHER`` scores OTHER instead."""
    val = tmp_path / "val.txt"
    val.write_bytes(b"0123456789" * 200)  # 2,000 bytes of digits; the tail of --data is 200 bytes
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "2", "--data", str(small_corpus), "--val-data",
                 str(val), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_bytes"] == (2000 - 1) // 32 * 32
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["data"], r["bytes"], r["val_loss"]) == (str(val.resolve()), summary["val_bytes"], summary["val_loss"])
    assert (r["heldout_tail"], r["capped"]) == (False, False)  # --val-data: that file, every window of it
    assert main(["eval", "--run", str(run), "--data", str(small_corpus), "--eval-bytes", "all", "--json"]) == 0
    out = capsys.readouterr()
    r = json.loads(out.out)
    assert (r["data"], r["bytes"], r["heldout_tail"], r["capped"]) == (str(small_corpus), (20000 - 1) // 32 * 32,
                                                                       False, False)
    assert f"--data {small_corpus} is the file this run trained on: its scores are of bytes" in out.err
    assert main(["eval", "--run", str(run), "--data", str(val), "--eval-bytes", "100"]) == 0  # no warning, capped
    out = capsys.readouterr()
    assert out.err == "" and out.out.endswith("(the first 96 bytes of 2,000; --eval-bytes all scores the whole file)\n")
    from rnnlab.data import default_train_path  # a run on the bundled sample: that file is its training file

    sample = tmp_path / "sample"
    assert main(["train", "--model", "e1", *TINY, "--steps", "1", "--out", str(sample)]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(sample), "--data", str(default_train_path()), "--eval-bytes", "100"]) == 0
    assert f"--data {default_train_path()} is the file this run trained on" in capsys.readouterr().err
    tail = tmp_path / "tail"  # no --val-data: the held-out split is --data's last 1%, which --json says too
    assert main(["train", "--model", "e1", *TINY, "--steps", "2", "--data", str(small_corpus), "--out", str(tail)]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(tail), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["data"], r["heldout_tail"], r["bytes"]) == (str(small_corpus.resolve()), True, 200 // 32 * 32)


def test_eval_warns_when_the_held_out_data_changed_since_training(tmp_path, capsys, small_corpus):
    """A data file grown (or shortened, replaced) since training moves its held-out tail: ``eval``
    scores other bytes than the run's and says so in a warning (it said nothing); ``--data`` does
    not warn (it names its file)."""
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "2", "--data", str(small_corpus), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 0
    assert capsys.readouterr().err == ""
    with open(small_corpus, "ab") as f:  # 50 bytes more: the held-out tail moves along
        f.write(b"x" * 50)
    assert main(["eval", "--run", str(run)]) == 0
    assert capsys.readouterr().err == (f"rnnlab: warning: the training split is now 19,849 bytes, but the run in {run} "
                                       f"trained with 19,800: the data changed since, so this scores other held-out "
                                       f"bytes than the run's, perhaps some it trained on\n")
    copy = tmp_path / "copy.txt"  # not the training file itself, of which --data warns (the test above)
    copy.write_bytes(small_corpus.read_bytes())
    assert main(["eval", "--run", str(run), "--data", str(copy)]) == 0
    assert capsys.readouterr().err == ""
    text = small_corpus.read_bytes()[:-50]  # the size it trained with, and the last byte of its held-out tail changed
    small_corpus.write_bytes(text[:-1] + bytes([text[-1] ^ 1]))
    assert main(["eval", "--run", str(run)]) == 0
    err, fingerprint = capsys.readouterr().err, json.loads((run / "env.json").read_text())["corpus"]["heldout_fingerprint"]
    assert err.startswith(f"rnnlab: warning: the held-out split holds other bytes than the run in {run} trained with "
                          f"(the same 200 bytes, fingerprint "), err
    assert f", not {fingerprint}): the data changed since, so this scores other held-out bytes" in err, err


def test_eval_of_a_run_without_checkpoints_says_so_before_asking_for_its_corpus(tmp_path, capsys, small_corpus):
    """A run folder without weights (archived in results/: its records, no ckpt/) whose corpus is gone
    too: eval says there is nothing to score, where it asked for the corpus back "or score another
    file with --data FILE", and with --data then said there were no weights."""
    import shutil

    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "2", "--data", str(small_corpus), "--out", str(run)]) == 0
    shutil.rmtree(run / "ckpt")
    small_corpus.unlink()
    capsys.readouterr()
    err = _err(capsys, ["eval", "--run", str(run)])
    assert err == f"rnnlab eval: error: no usable checkpoint in {run / 'ckpt'} (there is none)"


def test_a_run_trained_with_a_cuda_only_backend_evaluates_on_cpu(tmp_path, capsys, small_corpus):
    """A run whose config names a CUDA-only layer backend (trained on a GPU with backend=triton)
    loads on the CPU with backend auto: ``eval`` gives the run's own held-out loss there."""
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "2", "--data", str(small_corpus), "--out", str(run),
                 "--layer", "backend=naive"]) == 0
    config = json.loads((run / "config.json").read_text())
    config["model"]["layer"]["backend"] = "triton"
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--device", "cpu", "--json"]) == 0, capsys.readouterr().err
    r = json.loads(capsys.readouterr().out)
    assert r["val_loss"] == json.loads((run / "summary.json").read_text())["val_loss"]


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_gpu_index_past_the_visible_ones_is_one_line(command, tmp_path, capsys, monkeypatch):
    """``--device cuda:1`` on a machine showing one GPU: one line naming the GPUs there are, not
    torch's "invalid device ordinal" traceback at the model's first move there."""
    from rnnlab.train.config import TrainConfig

    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig.from_dict({"model": "e1", "dim": 32, "depth": 2}).to_dict()
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = _err(capsys, [command, "--run", str(run), "--device", "cuda:1"])
    assert err == (f"rnnlab {command}: error: device 'cuda:1' requested but this machine shows 1 GPU(s): "
                   "cuda:0 to cuda:0")


def test_a_run_trained_with_a_cuda_only_backend_loads_with_auto_on_a_gpu_too(tmp_path, monkeypatch, tiny_train):
    """On a GPU the run's backend=triton (or official) may not run either (a machine without the
    kernel or library: a RuntimeError traceback at the first forward): eval and sample build the
    model with auto, which runs that backend where it can (CUDA stubbed; the model built on the CPU)."""
    from rnnlab.train import runtime
    from rnnlab.train.rundir import RunDir
    from rnnlab.train.trainer import run_training

    run = tmp_path / "run"
    run_training(tiny_train(run, steps=1, layer={"backend": "naive"}), progress=False)
    config = json.loads((run / "config.json").read_text())
    config["model"]["layer"]["backend"] = "triton"
    (run / "config.json").write_text(json.dumps(config))
    built = []
    build_model = runtime.build_model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(runtime, "build_model", lambda cfg, dev: built.append(dict(cfg.model.layer)) or
                        build_model(cfg, torch.device("cpu")))
    RunDir(run).load("cuda")
    assert built == [{"backend": "auto"}]


def test_relative_data_paths_are_resolved_against_the_launch_directory(tmp_path, capsys, monkeypatch, small_corpus):
    """A relative ``--data`` / ``--val-data`` names a file of the working directory at launch;
    config.json records its absolute path, so the run resumes and evaluates from any directory."""
    val = tmp_path / "val.txt"
    val.write_bytes(b"held-out text of its own. " * 40)
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--steps", "2", "--data", "corpus.txt", "--val-data", "val.txt", "--out", "run"]) == 0
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert (saved["data"], saved["val_data"]) == (str(small_corpus.resolve()), str(val.resolve()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no corpus.txt or val.txt here
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--steps", "3", "--no-progress"]) == 0, capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert json.loads((run / "config.json").read_text())["data"] == str(small_corpus.resolve())
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == str(val.resolve())


def test_ctrl_c_in_training_exits_130_after_saving(tmp_path, capsys, ctrl_c_on_call):
    """One Ctrl-C during ``rnnlab train`` finishes the step, saves a checkpoint and exits 130
    (not 0: the run is incomplete), saying where to resume; no traceback."""
    from rnnlab.train.trainer import Trainer

    ctrl_c_on_call(Trainer, "train_step", call=2)
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "5", "--out", str(run)]) == 130
    captured = capsys.readouterr()
    assert f"interrupted at step 2; checkpoint saved to {run}/ckpt/step-000002" in captured.err
    assert "Traceback" not in captured.err and re.search(r"^complete +False$", captured.out, re.M)
    assert json.loads((run / "summary.json").read_text())["complete"] is False


def test_gpus_refuses_a_taken_run_folder_before_launching(tmp_path, capsys, monkeypatch):
    """``--gpus N`` checks the config, corpus and run folder before starting torchrun: a folder
    holding a finished run is one error line and exit 2, not N ranks' tracebacks."""
    run = tmp_path / "run"
    assert main(["train", "--model", "mingru", *TINY, "--steps", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    argv = ["train", "--model", "mingru", *TINY, "--steps", "1", "--gpus", "2", "--out", str(run)]
    monkeypatch.setattr(sys, "argv", ["rnnlab", *argv])
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rnnlab train: error: run dir {run} already holds a complete run") and err.count("\n") == 1


@pytest.mark.parametrize("extra, message", [
    ([], "--batch-size (the global batch) must be divisible by the number of processes: 4 is not divisible by 3"),
    (["--batch-size", "6", "--grad-accum", "3"],  # 6 rows divide by 3, but each process's 2 rows do not
     "--grad-accum (3) must divide the batch of each process (batch_size 6 / 3 processes = 2)"),
])
def test_gpus_refuses_a_batch_that_does_not_split_before_launching(extra, message, tmp_path, capsys, monkeypatch):
    """``--gpus 3`` with a global batch of 4 (or a --grad-accum that does not divide each process's
    share) is one error line and exit 2 before torchrun starts, not each rank's line amid
    torchrun's traceback and exit 1."""
    argv = ["train", "--model", "mingru", *TINY, *extra, "--steps", "1", "--gpus", "3", "--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["rnnlab", *argv])
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"rnnlab train: error: {message}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, size, message", [
    ("--data", 2000, "the held-out split of {f} has 20 bytes, fewer than seq_len+1 = 33"),
    ("--extra-val-data", 10, "held-out file {f} has 10 bytes, fewer than seq_len+1 = 33"),
])
def test_gpus_refuses_a_corpus_too_short_for_seq_len_before_launching(flag, size, message, tmp_path, capsys,
                                                                         monkeypatch):
    """``--gpus 2`` with a held-out split (or --extra-val-data file) shorter than one window is one
    error line and exit 2 before torchrun starts, as one process refuses it, not each rank's line
    amid torchrun's report of failed workers."""
    f = tmp_path / "short.txt"
    f.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    argv = ["train", "--model", "mingru", *TINY, "--steps", "1", "--gpus", "2", flag, str(f),
            "--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["rnnlab", *argv])
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun was started"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rnnlab train: error: {message.format(f=f)}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_pure_bf16_on_a_cpu_gets_a_note(precision, tmp_path, capsys):
    """Pure bf16 (the default) on a CPU trains several times slower than fp32: one note says so
    and names the option; fp32 gets none."""
    argv = [a if a != "fp32" else precision for a in TINY]
    assert main(["train", "--model", "mingru", *argv, "--steps", "1", "--out", str(tmp_path / "r")]) == 0
    note = "rnnlab train: note: pure bf16 on a CPU is several times slower than fp32"
    assert (note in capsys.readouterr().err) == (precision == "bf16")


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_a_large_model_that_auto_puts_on_the_cpu_gets_a_note(device, tmp_path, capsys, monkeypatch):
    """With no GPU, --device auto trains on the CPU: a model of at least CPU_NOTE_PARAMS parameters
    (lowered here to the tiny model's size) gets a note saying so; an explicit --device cpu none."""
    from rnnlab.train import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["train", "--model", "mingru", *TINY, "--steps", "1", "--out", str(tmp_path / "r")]
    assert main(["params", "--model", "mingru", "--dim", "32", "--depth", "2", "--json"]) == 0
    n = json.loads(capsys.readouterr().out)["params"]
    monkeypatch.setattr(trainer, "CPU_NOTE_PARAMS", n)
    assert main([*argv, "--device", device]) == 0
    note = f"rnnlab train: note: no GPU found, so these {n:,} parameters train on the CPU (--device auto)"
    assert (note in capsys.readouterr().err) == (device == "auto")
    monkeypatch.setattr(trainer, "CPU_NOTE_PARAMS", n + 1)  # one parameter short of the note
    assert main([*argv[:-1], str(tmp_path / "r2")]) == 0
    assert "no GPU found" not in capsys.readouterr().err


def test_distributed_in_one_process_gets_a_note(tmp_path, capsys):
    """--distributed without --gpus N or torchrun trains one process: a note says so."""
    assert main(["train", "--model", "mingru", *TINY, "--steps", "1", "--distributed", "ddp",
                 "--out", str(tmp_path / "r")]) == 0
    assert ("rnnlab train: note: --distributed ddp spreads a run over the processes of --gpus N (or torchrun); "
            "this is one process") in capsys.readouterr().err


def _train_until(signum, run, output=subprocess.PIPE) -> tuple[int, str | None, str | None]:
    """Start a long ``rnnlab train`` into ``run`` (its standard output and error to ``output``),
    send it ``signum`` once its first metrics line is written; ``(exit status, stdout, stderr)``,
    the texts where piped."""
    import time

    proc = subprocess.Popen([sys.executable, "-m", "rnnlab", "train", "--model", "mingru", *TINY, "--steps", "1000000",
                             "--checkpoint-every", "0", "--out", str(run)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=output, stderr=output, text=True)
    try:
        deadline = time.time() + 120
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size):
            assert time.time() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def test_sigterm_is_a_ctrl_c_for_the_rnnlab_command(tmp_path):
    """``kill`` (SIGTERM: also ``timeout``, a scheduler's stop, ``docker stop``) on a running
    ``rnnlab train`` saves a checkpoint after the step as a Ctrl-C does and exits 130, saying so
    and where to resume, with no traceback."""
    import signal

    run = tmp_path / "run"
    code, out, err = _train_until(signal.SIGTERM, run)
    assert code == 130, err
    assert "rnnlab: SIGTERM received: handled as a Ctrl-C" in err and "Traceback" not in err
    step = json.loads((run / "summary.json").read_text())["steps"]
    assert f"interrupted at step {step}; checkpoint saved to {run}/ckpt/step-{step:06d}" in err
    assert (run / "ckpt" / f"step-{step:06d}").is_dir() and re.search(r"^complete +False$", out, re.M)


def _kernel_handler(signum: int) -> int:
    """The address of the handler the kernel holds for ``signum`` (0: the default action), which a
    native library can change under Python's ``signal.getsignal``."""
    import ctypes

    class Sigaction(ctypes.Structure):  # glibc's struct sigaction
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                    ("restorer", ctypes.c_void_p)]

    action = Sigaction()
    assert ctypes.CDLL(None).sigaction(signum, None, ctypes.byref(action)) == 0
    return action.handler or 0


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's sigaction")
def test_a_native_librarys_stop_handlers_are_replaced_after_each_step(tmp_path, monkeypatch):
    """A native library that puts its own SIGINT / SIGTERM handling in the kernel during a step or
    an evaluation (LLVM does at Triton's first compile: one that lets a second signal close behind
    the first kill the run unsaved, ``benchmarks/ctrl_c_probe/double_sigint.py``) has Python's
    handlers put back after it, so what follows runs under them again."""
    import ctypes
    import signal

    from rnnlab.signals import stops_as_ctrl_c
    from rnnlab.train.trainer import Trainer

    libc = ctypes.CDLL(None)
    libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_void_p]
    seen = []

    def replaced_in(method):  # records the kernel's handlers, runs it, then puts the library's in
        def wrapper(self, *args, **kwargs):
            seen.append((method.__name__, [_kernel_handler(s) for s in (signal.SIGINT, signal.SIGTERM)]))
            out = method(self, *args, **kwargs)
            if method.__name__ != "checkpoint":
                for s in (signal.SIGINT, signal.SIGTERM):
                    libc.signal(s, 0)  # the library's own: here the default action, behind Python's back
            return out
        return wrapper

    for name in ("train_step", "score", "checkpoint"):  # score: the evaluation's part that compiles
        monkeypatch.setattr(Trainer, name, replaced_in(getattr(Trainer, name)))
    with stops_as_ctrl_c():  # SIGTERM handled, as the rnnlab command's own command line has it
        assert main(["train", "--model", "e1", *TINY, "--steps", "3", "--out", str(tmp_path / "run")]) == 0
    python = seen[0][1]
    assert 0 not in python and [name for name, _ in seen] == ["train_step"] * 3 + ["score", "checkpoint"]
    assert all(handlers == python for _, handlers in seen)  # Python's at every step, and after the evaluation


def test_sigterms_close_together_are_one_stop(monkeypatch):
    """A scheduler that signals every process of a job reaches a torchrun worker directly and again
    through torchrun: SIGTERMs within ``SAME_STOP_S`` of the first are that one stop (one Ctrl-C,
    the run saves), not a second Ctrl-C that aborts it; a later one is a second Ctrl-C."""
    import signal

    from rnnlab import signals

    ctrl_c = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.append(signum))
    try:
        with signals.stops_as_ctrl_c():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert ctrl_c == [signal.SIGINT]
            monkeypatch.setattr(signals, "SAME_STOP_S", 0.0)
            signal.raise_signal(signal.SIGTERM)
            assert ctrl_c == [signal.SIGINT, signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_sigterm_where_ctrl_c_is_ignored_is_a_keyboard_interrupt(monkeypatch):
    """Where Ctrl-C is ignored (``cmd &`` in a script) a SIGTERM is the KeyboardInterrupt a Ctrl-C
    would raise, once for stops close together, again for a later one; SIGINT stays ignored.
    Ending the process by the signal instead took a bench's runs with it unsaved."""
    import signal

    from rnnlab import signals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the autouse fixture puts Python's handler back
    try:
        with signals.stops_as_ctrl_c():
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # the same stop, delivered twice
            monkeypatch.setattr(signals, "SAME_STOP_S", 0.0)
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_hang_up_stays_ignored():
    """Under ``nohup`` (SIGHUP ignored) ``stops_as_ctrl_c`` leaves SIGHUP ignored and takes SIGTERM
    alone; otherwise it takes both. The handlers before are back after the block."""
    import signal

    from rnnlab import signals

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for hup in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signal.SIGHUP, hup)
            with signals.stops_as_ctrl_c():
                term, got = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
                assert callable(term) and (got is signal.SIG_IGN if hup is signal.SIG_IGN else got is term)
            assert signal.getsignal(signal.SIGHUP) is hup and signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
    finally:
        for s, h in before.items():
            signal.signal(s, h)

def test_output_survives_a_hung_up_terminal(tmp_path):
    """``SurvivingHangUp``: a write or flush that fails because the terminal hung up (EIO) points
    the stream's file descriptor at /dev/null and carries on; any other error is raised."""
    import errno

    from rnnlab.signals import SurvivingHangUp

    class Terminal:  # a stream whose terminal has hung up, on a file descriptor of a real file
        def __init__(self, fd, code):
            self.fd, self.code = fd, code

        def fileno(self):
            return self.fd

        def write(self, text):
            raise OSError(self.code, os.strerror(self.code))

        flush = lambda self: self.write("")  # noqa: E731

    path = tmp_path / "out"
    with open(path, "w") as f:
        stream = SurvivingHangUp(Terminal(f.fileno(), errno.EIO))
        assert stream.write("lost\n") == 5 and stream.fileno() == f.fileno()
        stream.flush()
        os.write(f.fileno(), b"after")  # the descriptor now writes to /dev/null
        with pytest.raises(BrokenPipeError):
            SurvivingHangUp(Terminal(f.fileno(), errno.EPIPE)).write("x")
    assert path.read_bytes() == b""


def test_terminal_output_wraps_only_terminals_and_puts_them_back(monkeypatch):
    """``terminal_output``: standard output or error that is a terminal is ``SurvivingHangUp``
    inside the block (once, also in a nested block) and itself again after it; output to a file
    or a pipe is left as it is, so a disk's error is not hidden; a stream that someone else put in
    place during the block (a redirection) is left in place."""
    from rnnlab.signals import SurvivingHangUp, terminal_output

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    terminal, log = Stream(True), Stream(False)
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", log)
    with terminal_output() as outer:
        assert isinstance(sys.stdout, SurvivingHangUp) and sys.stdout._stream is terminal and sys.stderr is log
        assert outer == [sys.stdout]
        with terminal_output() as inner:
            assert inner == outer and sys.stdout._stream is terminal
        assert outer == [sys.stdout]
    assert sys.stdout is terminal and sys.stderr is log
    with terminal_output():
        sys.stdout = redirected = Stream(False)
    assert sys.stdout is redirected and sys.stderr is log


def test_a_hang_up_discards_terminal_output_and_a_sigterm_does_not(tmp_path, monkeypatch):
    """Under ``stops_as_ctrl_c`` a SIGHUP (the terminal closed) points the terminal's file
    descriptor at /dev/null; a SIGTERM leaves it writing, so that the run's last lines (saved at
    step N, where to resume) still reach a terminal that is open."""
    import io
    import signal

    from rnnlab import signals

    class Terminal:
        def __init__(self, fd):
            self.fd = fd

        def isatty(self):
            return True

        def fileno(self):
            return self.fd

    path, ctrl_c = tmp_path / "terminal", []
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.append(signum)),
                signal.SIGHUP: signal.signal(signal.SIGHUP, signal.SIG_DFL)}  # taken only where not ignored
    try:
        with open(path, "wb") as f:
            monkeypatch.setattr(sys, "stdout", Terminal(f.fileno()))
            monkeypatch.setattr(sys, "stderr", io.StringIO())
            with signals.stops_as_ctrl_c():
                signal.raise_signal(signal.SIGTERM)
                os.write(f.fileno(), b"still shown ")
                signal.raise_signal(signal.SIGHUP)  # the same stop (within SAME_STOP_S), its output discarded
                os.write(f.fileno(), b"lost")
        assert path.read_bytes() == b"still shown " and ctrl_c == [signal.SIGINT]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's sigaction")
def test_an_ignored_stop_signal_is_put_back_in_the_kernel(monkeypatch):
    """``reclaim_handlers`` puts an ignored stop signal (SIGHUP under ``nohup``) back in the kernel
    as ignored, where a native library had put its own action: else a hang-up would end a run that
    was started to survive one."""
    import ctypes
    import signal

    from rnnlab.signals import reclaim_handlers

    libc = ctypes.CDLL(None)
    libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_void_p]
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        libc.signal(signal.SIGHUP, 0)  # the default action, behind Python's back
        assert _kernel_handler(signal.SIGHUP) == 0
        reclaim_handlers()
        assert _kernel_handler(signal.SIGHUP) == 1  # SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_hang_up_keeps_output_that_goes_to_a_file(tmp_path):
    """``rnnlab train ... > log 2>&1`` from a shell that then closes (bash passes its SIGHUP to its
    jobs): the run saves as on a Ctrl-C, and its log keeps every line, the interrupt's among them:
    only output to a terminal goes to /dev/null after a hang-up."""
    import signal

    run, log = tmp_path / "run", tmp_path / "log"
    with open(log, "w") as f:
        assert _train_until(signal.SIGHUP, run, output=f)[0] == 130, log.read_text()
    text, step = log.read_text(), json.loads((run / "summary.json").read_text())["steps"]
    assert "rnnlab: SIGHUP received: handled as a Ctrl-C" in text
    assert f"interrupted at step {step}; checkpoint saved" in text and "Traceback" not in text


def test_a_closed_standard_output_is_no_error():
    """``rnnlab layers >&-``: with standard output closed (Python's sys.stdout is None) the command
    still ends in 0."""
    r = subprocess.run([sys.executable, "-m", "rnnlab", "layers"], stderr=subprocess.PIPE, text=True,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 0, r.stderr


def test_a_command_freezes_what_is_alive_before_it_exits():
    """``python -m rnnlab`` and the ``rnnlab`` script (each worker of ``--gpus N`` and its torchrun
    too) exit through ``leave``: the objects alive at its end frozen, so the interpreter's exit skips
    collecting them (about 0.4 s of each command's end, torch's import makes so many), with the
    command's exit status."""
    import gc
    from importlib.metadata import entry_points

    assert entry_points(group="console_scripts", name="rnnlab")["rnnlab"].value == "rnnlab.cli:command"

    from rnnlab.cli import leave

    code = ("import atexit, gc, runpy, sys; atexit.register(lambda: print(gc.get_freeze_count() > 0)); "
            "sys.argv = ['rnnlab', 'layers']; runpy.run_module('rnnlab', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (r.returncode, r.stdout.splitlines()[-1]) == (0, "True"), r.stderr
    try:
        with pytest.raises(SystemExit) as e:
            leave(3)
    finally:
        gc.unfreeze()
    assert e.value.code == 3


@pytest.mark.parametrize("code, status", [(0, 130), (130, 130), (2, 2)])
def test_a_ctrl_c_after_the_command_ended_exits_quietly(monkeypatch, capsys, code, status):
    """A second Ctrl-C that lands just after a stopped run saved its checkpoint and said so (on a
    CPU a small run's save takes milliseconds) meets ``leave``, where Python's own handler is back:
    it ends the command with 130 (or the command's own failing status), not with a KeyboardInterrupt
    traceback. A real SIGINT, raised as ``gc.freeze`` runs (the signal's handler runs at the next
    line, after any ``try`` around the collection), and a second one interrupts as usual."""
    import gc
    import signal

    from rnnlab.cli import leave

    freeze = gc.freeze

    def interrupted():
        signal.raise_signal(signal.SIGINT)
        freeze()

    monkeypatch.setattr(gc, "freeze", interrupted)
    try:
        leave(code)
    except SystemExit as e:
        assert e.code == status
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C left leave as a KeyboardInterrupt (a traceback)")
    finally:
        gc.unfreeze()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a further one interrupts
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_a_command_writes_each_line_on_standard_error_in_one_write(monkeypatch):
    """Under ``--gpus N`` torchrun and the ranks share one standard error, and unbuffered Python
    (``python -u``, as torchrun starts its workers) writes a ``print``'s text and its newline in two
    writes: torchrun's log line once landed between them, inside a rank's one-line end
    (test_distributed's lost-rank test). ``command`` makes each line one write; a progress bar's
    carriage return still goes out at once."""
    import rnnlab.cli as cli

    class Raw(io.RawIOBase):
        def __init__(self):
            self.writes = []

        def writable(self):
            return True

        def write(self, b):
            self.writes.append(bytes(b))
            return len(b)

    raw = Raw()
    err = io.TextIOWrapper(raw, write_through=True)  # as unbuffered Python's sys.stderr
    print("x" * 300, file=err)
    assert raw.writes == [b"x" * 300, b"\n"]  # the two writes a line can be split between
    raw.writes.clear()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(cli, "main", lambda: print("rnnlab train: rank 0: " + "y" * 300, "z", file=sys.stderr))
    monkeypatch.setattr(cli, "leave", lambda code: sys.stderr.write("50%\r"))
    cli.command()
    assert raw.writes == [b"rnnlab train: rank 0: " + b"y" * 300 + b" z\n", b"50%\r"]



CLOSED_TERMINAL = """
import fcntl, os, select, subprocess, sys, termios, threading, time
from pathlib import Path
cmd, metrics = sys.argv[2:], Path(sys.argv[1])
master, slave = os.openpty()


def controlling_terminal():  # the child leads a session whose terminal is the pty, as in a shell
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_terminal)
os.close(slave)
seen, done = [], threading.Event()


def read():  # what the terminal shows, until it closes
    while not done.is_set():
        if select.select([master], [], [], 0.1)[0]:
            try:
                seen.append(os.read(master, 65536))
            except OSError:
                return


reader = threading.Thread(target=read, daemon=True)
reader.start()
deadline = time.monotonic() + 120
while not (metrics.exists() and metrics.read_text().count("\\n") >= 3):
    assert time.monotonic() < deadline and proc.poll() is None, b"".join(seen).decode(errors="replace")
    time.sleep(0.1)
done.set()
reader.join()
os.close(master)  # the terminal closes: its session gets a SIGHUP, and writes to it fail
print(proc.wait(timeout=120))
"""


@pytest.mark.parametrize("gpus", [1, 2])
def test_a_closed_terminal_stops_a_run_with_its_checkpoint(gpus, tmp_path):
    """The terminal a run was started in closes (SIGHUP; a write to it then fails): the run stops
    after its step and saves, as on a Ctrl-C, its output going to /dev/null, and ends in 130.
    ``--gpus 2``: the launcher passes the SIGHUP to torchrun, which passes it to the workers."""
    if sys.platform != "linux":
        pytest.skip("a pseudo-terminal as a controlling terminal: Linux")
    run, script = tmp_path / "run", tmp_path / "terminal.py"
    script.write_text(CLOSED_TERMINAL)
    cmd = [sys.executable, "-m", "rnnlab", "train", "--model", "mingru", *TINY, "--steps", "1000000",
           "--checkpoint-every", "0", "--out", str(run), "--gpus", str(gpus)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script), str(run / "metrics.jsonl"), *cmd], env=env,
                       capture_output=True, text=True, timeout=240)
    assert (r.returncode, r.stdout) == (0, "130\n"), r.stdout + r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and summary["world_size"] == gpus
    assert (run / "ckpt" / f"step-{summary['steps']:06d}").is_dir()


@pytest.mark.parametrize("gpus", [1, 2])
def test_a_log_pipe_whose_reader_leaves_stops_a_run_with_its_checkpoint(gpus, tmp_path):
    """``rnnlab train ... 2>&1 | head``: once the reader has gone, the run's next line meets a closed
    pipe; the run stops after its step and saves, as on a closed terminal, its output going to
    /dev/null, and ends in 130 (it had failed on that line, BrokenPipeError, with no checkpoint).
    ``--gpus 2``: every rank meets it, and they stop together."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnlab", "train", "--model", "mingru", *TINY, "--steps", "1000000",
           "--checkpoint-every", "0", "--log-every", "1", "--no-progress", "--out", str(run), "--gpus", str(gpus)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # as `grep -m1 "step 3"` reads
            if " step 3" in line:
                break
        proc.stdout.close()
        assert proc.wait(timeout=180) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and "error" not in summary and summary["world_size"] == gpus
    assert (run / "ckpt" / f"step-{summary['steps']:06d}").is_dir()


def test_a_ctrl_c_after_the_output_pipe_closed_is_still_a_first_one(capsys):
    """A stop the closed pipe made (``| tee log``, tee killed by the terminal's Ctrl-C before it reached the
    run) is not a pressed Ctrl-C: the one that follows is a first stop (the run still saves), not the
    second that aborts; a Ctrl-C after that aborts as usual."""
    import signal

    from rnnlab.train.trainer import StopOnInterrupt

    with StopOnInterrupt() as stop:
        stop.output_closed()
        assert stop.requested
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    err = capsys.readouterr().err
    assert err.count("rnnlab train: the reader of its output has gone: stopping after this step to save a checkpoint "
                     "(Ctrl-C again to abort)") == 1, err


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_in_the_final_evaluation(presses, tmp_path, capsys, monkeypatch):
    """Once the budget is spent, a first Ctrl-C lets the final evaluation and checkpoint finish:
    the run is complete (summary, checkpoint, held-out score), the summary says it was interrupted
    at its end, and ``rnnlab train`` exits 130 saying so; a second Ctrl-C still aborts at once."""
    import signal

    from rnnlab.train.trainer import Trainer

    real = Trainer.evaluate

    def evaluate(self, final=False):
        if final:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
        return real(self, final=final)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "3", "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "the budget is spent: finishing the final evaluation and checkpoint first (Ctrl-C again to abort)" in err
    summary = json.loads((run / "summary.json").read_text())
    if presses == 1:
        assert summary["complete"] is True and summary["interrupted_at_end"] is True
        assert summary["val_bpb"] is not None and (run / "ckpt" / "step-000003").is_dir()
        assert err.strip().splitlines()[-1] == ("rnnlab train: Ctrl-C came at the end of the budget; the run "
                                                "finished first (complete)")
    else:
        assert summary["complete"] is False and summary["error"].startswith("aborted by Ctrl-C at step 3")


def test_ctrl_c_while_the_summary_is_written(tmp_path, capsys, ctrl_c_on_call):
    """A first Ctrl-C that comes while summary.json is being written (the final evaluation and
    checkpoint done) is not lost: the summary is written again saying the run was interrupted at
    its end, and ``rnnlab train`` exits 130, as for a Ctrl-C in the final evaluation, so a caller
    running several runs stops after this one."""
    from rnnlab.train.rundir import RunDir

    calls = ctrl_c_on_call(RunDir, "write_summary", call=1)
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "3", "--out", str(run)]) == 130
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is True and summary["interrupted_at_end"] is True and "error" not in summary
    assert calls[0] == 2 and (run / "ckpt" / "step-000003").is_dir()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "rnnlab train: Ctrl-C came at the end of the budget; the run finished first (complete)")


def test_ctrl_c_before_training_starts_exits_130_in_one_line(tmp_path, capsys, monkeypatch):
    """A Ctrl-C while ``rnnlab train`` sets up (before the first step) exits 130 with one short
    line and no traceback, and leaves no run folder."""
    from rnnlab.train import trainer

    def interrupted(cfg, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "open_data", interrupted)
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "5", "--out", str(run)]) == 130
    assert capsys.readouterr().err.strip() == "rnnlab train: aborted by Ctrl-C before training started"
    assert not run.exists()


def test_a_bare_stop_behind_an_abort_keeps_the_aborts_line(tmp_path, capsys, monkeypatch, ctrl_c_on_call):
    """A stop that comes as a second Ctrl-C's abort unwinds, after the trainer's Ctrl-C handler is
    gone (here as it is given back: under torchrun the SIGTERM a rank gets once another ended), raises
    a bare KeyboardInterrupt in the abort's place; the line still names the step and the checkpoint
    (the abort is its context), not "before training started"."""
    import signal

    from rnnlab.train import trainer

    leave = trainer.StopOnInterrupt.__exit__

    def a_stop_as_the_handler_goes(self, *exc):
        leave(self, *exc)
        if exc[0] is KeyboardInterrupt:
            signal.raise_signal(signal.SIGINT)  # Python's own handler is back: a bare KeyboardInterrupt

    ctrl_c_on_call(trainer.Trainer, "train_step", call=3, presses=2)  # step 3 aborted
    monkeypatch.setattr(trainer.StopOnInterrupt, "__exit__", a_stop_as_the_handler_goes)
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "6", "--checkpoint-every", "2", "--out", str(run)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"rnnlab train: aborted by Ctrl-C at step 2; last good checkpoint kept at {run / 'ckpt' / 'step-000002'} "
        "(step 2)")


def test_ctrl_c_in_any_other_command_exits_130_in_one_line(capsys, monkeypatch):
    """A Ctrl-C in a command without its own handling (here ``rnnlab params``) exits 130 with one
    line, no traceback."""
    from rnnlab.models import cli as models_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models_cli, "count_params", interrupted)
    assert main(["params", "--model", "e1", "--dim", "64", "--depth", "2"]) == 130
    assert capsys.readouterr().err.strip() == "rnnlab params: interrupted (Ctrl-C)"


def test_bench_and_sweep_help_of_their_own_flags_names_only_flags_they_take():
    """The flags bench and sweep add beside the config's (--seeds, --no-progress, ...) are described
    with flags the command takes: bench has no --log-every (a suite file sets log_every), so its
    --no-progress help must not send a reader to one (sweep's own --log-every is named as sweep's)."""
    import argparse

    from rnnlab.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("bench", "sweep"):
        parser = commands[command]
        flags = {o for a in parser._actions for o in a.option_strings}
        runs = next(g for g in parser._action_groups if g.title == "runs")
        for action in runs._group_actions:
            named = set(re.findall(r"(?<!sweep's )(--[a-z][a-z0-9-]*)", action.help or ""))
            assert named <= flags, (command, action.option_strings, named - flags)


def test_gpus_n_on_cpu_counts_a_config_file_device(tmp_path, capsys, monkeypatch):
    """``device = "cpu"`` in a ``--config`` file is ``--device cpu``: ``--gpus 2`` starts 2 CPU
    processes on a machine with one GPU, where it was refused as asking for more GPUs than visible
    (only the flag was looked at)."""
    config = tmp_path / "c.toml"
    config.write_text('device = "cpu"\n')
    tiny = [a for a in TINY if a not in ("--device", "cpu")]
    argv = ["train", "--config", str(config), "--model", "mingru", *tiny, "--steps", "1", "--gpus", "2",
            "--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["rnnlab", *argv])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    started = []

    class Torchrun:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Torchrun)
    assert main(argv) == 0, capsys.readouterr().err
    assert "--nproc-per-node=2" in started[0]


def test_resuming_a_complete_run_within_its_budget_says_nothing_is_left(tmp_path, capsys):
    """``--resume`` of a complete run with its own budget (or none given) trains and scores nothing: a line says
    so, and how to extend it, instead of the bare "resuming ... at step N" and an unchanged summary; and
    it changes nothing in the folder (no session added to env.json, no empty TensorBoard file)."""
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()

    def files():  # each file's bytes, inode and modification time: not even rewritten alike (but the lock's)
        return {p.relative_to(run): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
                for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}

    before = files()
    for extra in ([], ["--steps", "2"]):
        assert main(["train", "--resume", "--out", str(run), "--no-progress", *extra]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"rnnlab train: resuming {run} at step 2 (step-000002)",
                       f"rnnlab train: {run} is complete at step 2 (steps 2): nothing to train or score; a larger "
                       f"--steps extends it"], err
        after = files()
        assert after.keys() == before.keys() and [p for p in after if after[p] != before[p]] == []


def test_ctrl_c_that_a_library_wraps_is_one_line(monkeypatch, capsys):
    """A Ctrl-C inside a class body that a lazy import runs (torch._dynamo's dataclasses, imported as the
    optimizer is built) reaches Python 3.11's caller as ``RuntimeError: Error calling __set_name__``
    whose cause is the KeyboardInterrupt (seen with a SIGINT 2.5 s into a CPU run), and one as a C++
    extension loads as pybind11's ``ImportError: initialization failed``: one line and exit 130 as any
    Ctrl-C, not a traceback; ``--debug`` raises it as the KeyboardInterrupt it is, the wrapper its cause."""
    import rnnlab.train.trainer

    for wrapped in (RuntimeError("Error calling __set_name__ on 'Field' instance 'scalar'"),
                    ImportError("initialization failed")):  # pybind11's, for one as a C++ extension loads
        def interrupted(*args, wrapped=wrapped, **kwargs):
            raise wrapped from KeyboardInterrupt()

        monkeypatch.setattr(rnnlab.train.trainer, "run_training", interrupted)
        assert main(["train", *TINY, "--steps", "1", "--out", "x"]) == 130
        assert capsys.readouterr().err == "rnnlab train: interrupted (Ctrl-C)\n"
        with pytest.raises(KeyboardInterrupt) as raised:  # the wrapper kept as its cause
            main(["train", *TINY, "--steps", "1", "--out", "x", "--debug"])
        assert raised.value.__cause__ is wrapped


def test_is_ctrl_c_follows_the_causes():
    """``is_ctrl_c``: a KeyboardInterrupt anywhere down the ``raise ... from`` chain (a kernel registry that
    re-raises an import's error as its own, ``from`` it), not one that was merely being handled when another
    error came (``__context__``); a chain that loops ends."""
    from rnnlab.signals import is_ctrl_c

    def chained(*kinds):
        e = None
        for kind in kinds:
            new = kind("x")
            new.__cause__ = e
            e = new
        return e

    assert is_ctrl_c(chained(KeyboardInterrupt, ImportError, ValueError))
    assert not is_ctrl_c(chained(ImportError, ValueError))
    other = ValueError("x")
    other.__context__ = KeyboardInterrupt()
    assert not is_ctrl_c(other)
    loop = ImportError("x")
    loop.__cause__ = ValueError("y")
    loop.__cause__.__cause__ = loop
    assert not is_ctrl_c(loop)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm-where-ctrl-c-is-ignored"])
def test_a_ctrl_c_that_a_library_swallows_as_the_run_starts_stops_it(tmp_path, monkeypatch, capsys, stop):
    """A Ctrl-C that a library swallows as the run starts still stops it. pybind11 makes one raised while
    Triton's C++ extension loads an ImportError, and torch, importing Triton lazily as the model is built
    (``has_triton_package``), took that for "no Triton" and went on: the run trained its whole budget (8
    of 36 CPU runs given a SIGINT 2.2-3.0 s in, under load). The rnnlab command remembers a stop it raises
    as a KeyboardInterrupt (``stops_as_ctrl_c``): a Ctrl-C under Python's own handler, or a SIGTERM where
    Ctrl-C is ignored (``cmd &`` in a script). The trainer, taking Ctrl-C over, acts on one that came: a
    checkpoint at step 0, nothing trained, as for one that comes just after."""
    import signal

    import rnnlab.train.trainer
    from rnnlab.signals import stops_as_ctrl_c

    counted = rnnlab.train.trainer.count_params
    signum = signal.SIGINT if stop == "ctrl-c" else signal.SIGTERM

    def swallowing(*args, **kwargs):  # the library's import: the stop lands and is swallowed
        try:
            signal.raise_signal(signum)
        except KeyboardInterrupt as e:
            with contextlib.suppress(ImportError):
                raise ImportError("initialization failed") from e
        return counted(*args, **kwargs)

    monkeypatch.setattr(rnnlab.train.trainer, "count_params", swallowing)
    if stop != "ctrl-c":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the autouse fixture puts Python's handler back
    before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    with stops_as_ctrl_c():  # as the rnnlab command's own command line has it
        main(["train", "--model", "e1", *TINY, "--steps", "50", "--out", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert "stopping after this step to save a checkpoint" in err and "interrupted at step 0;" in err, err
    assert json.loads((run / "summary.json").read_text())["steps"] == 0
    assert signal.getsignal(signal.SIGINT) is before  # the handler before the block, again


@pytest.mark.parametrize("command", ["eval", "sample", "export"])
def test_a_ctrl_c_that_a_library_swallows_as_a_command_loads_its_run_stops_it(command, tmp_path, monkeypatch, capsys):
    """The commands that train nothing stop on a Ctrl-C that a library swallowed as they built their model
    (Triton loading, as above): ``RunDir.load`` looks once the model is built. Without it the command
    ran to its end through the Ctrl-C: a whole evaluation, a whole sample, a complete export."""
    import signal

    import rnnlab.train.runtime
    from rnnlab.signals import stops_as_ctrl_c

    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "2", "--out", str(run), "--no-progress"]) == 0
    built = rnnlab.train.runtime.build_model

    def swallowing(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what torch's has_triton_package does with the ImportError pybind11 makes of it
        return built(*args, **kwargs)

    monkeypatch.setattr(rnnlab.train.runtime, "build_model", swallowing)
    args = {"eval": ["--run", str(run)], "sample": ["--run", str(run), "--tokens", "8"],
            "export": ["--run", str(run), "--out", str(tmp_path / "hf")]}[command]
    capsys.readouterr()
    with stops_as_ctrl_c():
        assert main([command, *args]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == f"rnnlab {command}: interrupted (Ctrl-C)", captured.err
    assert captured.out == "" and not (tmp_path / "hf").exists(), captured.out  # no score, no sample, no export


def test_a_ctrl_c_that_a_library_wraps_in_training_is_an_abort_not_a_crash(tmp_path, monkeypatch, capsys):
    """A second Ctrl-C that lands as a kernel module first loads mid-run reaches the trainer wrapped (pybind11's
    ImportError): the run is recorded and named as aborted by Ctrl-C with its checkpoint, as for a bare one,
    not as a crash with "ImportError: initialization failed"."""
    from rnnlab.train.trainer import Trainer

    real = Trainer.train_step

    def step(self, *args, **kwargs):
        if self.state.step == 2:
            raise ImportError("initialization failed") from KeyboardInterrupt()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", step)
    run = tmp_path / "run"
    assert main(["train", "--model", "e1", *TINY, "--steps", "5", "--checkpoint-every", "1", "--out", str(run),
                 "--no-progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rnnlab train: aborted by Ctrl-C at step 2; "), err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["aborted"] is True and summary["error"].startswith("aborted by Ctrl-C at step 2"), summary


def test_ctrl_c_while_the_commands_import_is_one_line(monkeypatch, capsys):
    """A Ctrl-C in the first second or two, while torch and the commands import (``build_parser``), ends
    in one line and exit 130, not a traceback through importlib; ``--debug`` keeps the traceback."""
    import rnnlab.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(rnnlab.cli, "build_parser", interrupted)
    assert main(["eval", "--run", "x"]) == 130
    assert capsys.readouterr().err == "rnnlab: interrupted (Ctrl-C) before the command started\n"
    with pytest.raises(KeyboardInterrupt):
        main(["eval", "--run", "x", "--debug"])

    for wrapped in (RuntimeError("Error calling __set_name__"),  # Python 3.11: inside a dataclass field's __set_name__
                    ImportError("initialization failed")):  # pybind11: as a C++ extension loads
        def wrapping(wrapped=wrapped):
            raise wrapped from KeyboardInterrupt()

        monkeypatch.setattr(rnnlab.cli, "build_parser", wrapping)
        assert main(["eval", "--run", "x"]) == 130
        assert capsys.readouterr().err == "rnnlab: interrupted (Ctrl-C) before the command started\n"
