"""``rnnlab train``, ``rnnlab eval`` and ``rnnlab sample``.

    rnnlab train --model e1 --dim 512 --depth 6 --steps 2000 --out runs/e1
    rnnlab train --config exp.toml --lr 1e-3            # flags override the file
    rnnlab train --resume --out runs/e1 --steps 4000    # continue (and extend) a run
    rnnlab train --gpus 2 --batch-size 32 ...           # 2 processes via torchrun (global batch 32)
    torchrun --standalone --nproc-per-node 2 -m rnnlab train --distributed fsdp2 ...
    rnnlab eval --run runs/e1 [--data file.txt]
    rnnlab sample --run runs/e1 --prompt "The " --tokens 200

The train flags are generated from the config's field declarations (``add_config_flags``): one
flag per field, named by its key (``--batch-size``), in one help group per config section.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from rnnlab.errors import counted
from rnnlab.models.config import model_text, unknown_layer_options
from rnnlab.models.registry import MODELS
from rnnlab.options import at_least, checked, path_arg, positive
from rnnlab.signals import (closed_pipe_stops, discard_output, ended_with_this_process, ends_with_parent, handled,
                            terminal_output)
from rnnlab.train.config import (TrainConfig, add_config_flags, apply_overrides, config_flag_values,
                                 parse_eval_bytes, read_config_file)
from rnnlab.train.rundir import CORPUS_KEYS, RunDir, corpus_record, val_step_behind, warn


def aligned(rows: Iterable[tuple[str, str]]) -> str:
    """``name  value`` lines, the values in one column (train's summary, ``rnnlab doctor``)."""
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class OneConfigFile(argparse.Action):
    """``--config FILE`` given once: a second one was read in place of the first, silently."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        if before is not None:
            raise argparse.ArgumentError(self, f"given twice ({before!r} and {values!r}): one config file is read; "
                                               f"merge them into one, or give the other's settings as flags")
        setattr(namespace, self.dest, values)


def register(sub) -> None:
    p = sub.add_parser("train", help="train one model",
                       description="Train one model. Defaults follow the reference study's Table A (README: "
                                   "bf16 weights, Schedule-Free AdamW 3e-4, wd 0.1, batch 16x512, seed 42) but "
                                   "for the budget (1000 steps, not 1500) and A_log, dt_bias and Mamba2's D, "
                                   "which get no weight decay unless --decay-marked.")
    p.add_argument("--config", type=path_arg, action=OneConfigFile, metavar="FILE",
                   help="TOML, YAML or JSON config file (flags override it)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one plain line every --log-every steps instead (the default when "
                        "stderr is not a terminal)")
    p.add_argument("--gpus", type=checked(int), metavar="N",
                   help="train on N processes (one GPU each; with --device cpu or no GPU, N CPU processes "
                        "talking through gloo, PyTorch's CPU backend): re-launches this command "
                        "through torchrun (docs/distributed.md)")
    add_config_flags(p)
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="held-out loss and bits per byte of a run",
                       description="Score a run's newest checkpoint: held-out loss (nats/byte) and bits per byte on "
                                   "its held-out split, or on any raw file (--data).")
    e.add_argument("--run", required=True, type=path_arg, metavar="DIR", help="a training run folder")
    e.add_argument("--data", type=path_arg, help="a raw file to score instead of the run's held-out split (its first "
                                  "--eval-bytes: --eval-bytes all for the whole file)")
    e.add_argument("--eval-bytes", help="cap on bytes, e.g. 1M, or all (default: the run's eval_bytes)")
    e.add_argument("--batch-size", type=checked(int, positive()),
                   help="windows per batch (default: the run's eval batch size)")
    e.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    e.add_argument("--at", choices=("average", "train-point"), default="average",
                   help="which weights of a Schedule-Free run: its average x, the weights it ships (default), or "
                        "its training point y, the weights the training loss is measured at")
    e.add_argument("--json", action="store_true", help="print one JSON object (its weights: --at's choice, "
                   "or null for a run whose optimizer keeps one set of weights; heldout_tail: true where the "
                   "bytes scored are the held-out tail of the data file it names; capped: true where the "
                   "--eval-bytes cap left some of them unscored)")
    e.set_defaults(func=run_eval_cmd)

    s = sub.add_parser("sample", help="generate text from a run",
                       description="Generate bytes from a run's newest checkpoint after a prompt, printed as they "
                                   "come (Ctrl-C keeps what was printed).")
    s.add_argument("--run", required=True, type=path_arg, metavar="DIR", help="a training run folder")
    s.add_argument("--prompt", default="\n", type=prompt_arg, help="text to continue (default: a newline)")
    s.add_argument("--tokens", type=checked(int, at_least(0)), default=200, help="bytes to generate (default 200)")
    s.add_argument("--temperature", type=checked(float, at_least(0)), default=0.8,
                   help="default 0.8; 0 = greedy: always the most likely byte (--top-k is then ignored)")
    s.add_argument("--top-k", type=checked(int, at_least(0)), default=50, help="sample among the k most likely "
                                                                              "bytes (0 = all; default 50)")
    s.add_argument("--seed", type=checked(int, at_least(0, 2**63 - 1)), default=0,
                   help="sampling seed (default 0)")
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    # sample has no --batch-size or --seq-len for the usual out-of-memory line to name
    s.set_defaults(func=run_sample, oom_hint="fewer --tokens (a Transformer's key/value cache grows with each "
                                             "byte), or --device cpu")


def prompt_arg(text: str) -> str:
    """``sample --prompt``'s ``type=``: an empty prompt (an unset shell variable) is refused at once,
    before the run's weights load, saying what to give instead."""
    if text == "":
        raise argparse.ArgumentTypeError("must be at least one character, got '' (leave --prompt out to start "
                                         "after a newline)")
    return text


def config_from_args(args) -> TrainConfig:
    """Defaults < with ``--resume`` (or the file's ``resume = true``) the run's config.json <
    ``--config`` file < flags; ``--layer`` options are added to the file's. A resumed run keeps what
    the file leaves out (its budget, say), as it keeps what no flag names."""
    flags = config_flag_values(args)
    layer = flags.pop("layer", {})
    from_file = read_config_file(args.config) if args.config is not None else {}

    def over(base: TrainConfig) -> TrainConfig:  # the file, then the flags, over ``base``
        return apply_overrides(apply_overrides(base, from_file, source=f"config file {args.config}"), flags,
                               source="flag")

    cfg, saved = over(TrainConfig()), None
    if cfg.run.resume:  # --resume, or the file's resume = true (which --no-resume overrides)
        run = RunDir(cfg.out_dir())
        saved = run.saved_config()
        # a flag or the file names its own file
        missing = run.missing_corpus(k for k in CORPUS_KEYS if k not in flags and k not in from_file)
        if missing:
            raise FileNotFoundError(f"{missing}: a resumed run reads the same path, so put the file back there")
        if saved is not None:  # the run's config, then the file and the flags over it
            cfg = over(TrainConfig.from_dict(saved))
    if layer and isinstance(cfg.model.layer, dict):  # otherwise validation names the file's bad value
        cfg.model.layer = {**cfg.model.layer, **layer}
    if from_file and isinstance(cfg.model.layer, dict) and cfg.model.model in MODELS:
        # a misspelt option of the file's layer table names the file, as its other keys do
        model_table = from_file["model"] if isinstance(from_file.get("model"), dict) else {}
        named = {k for t in (from_file.get("layer"), model_table.get("layer")) if isinstance(t, dict) for k in t}
        named -= set(layer)
        if (unknown := unknown_layer_options(cfg.model.model, named)) is not None:
            raise ValueError(f"config file {args.config}: {unknown}")
    if saved is not None:  # another model is named as such before the checks of the settings it inherits from
        run.refuse_other_config(saved, cfg, keys=["model"])  # the run (an e1 run's dim for a transformer's heads)
    return cfg


def torchrun_args(nproc: int, argv: list[str]) -> list[str]:
    """torchrun's arguments for ``--gpus N``: ``--standalone --nproc-per-node N -m rnnlab train ...``
    with ``--gpus`` taken out of ``argv`` (the arguments after ``rnnlab``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            out.append(a)
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "rnnlab", *out]


EARLY_STOP = "rnnlab train: interrupted before torchrun started its workers"
# how ``--gpus N`` runs torchrun: ``python -c TORCHRUN`` and torchrun's arguments. A SIGTERM or SIGHUP
# is a Ctrl-C from the first line, before torch's import (≈ 1 s), until torchrun installs its own handlers.
TORCHRUN = f"""\
import os, signal, sys
for stop in (signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(stop) is not signal.SIG_IGN:
        signal.signal(stop, signal.default_int_handler)
try:
    from rnnlab.signals import ended_with_this_process, ends_with_parent
    ends_with_parent()  # a kill -9 of the launcher ends torchrun, and so its workers
    os.environ.update(ended_with_this_process())  # the workers end with torchrun
    from rnnlab.cli import leave
    from rnnlab.train.cli import torchrun_main
except KeyboardInterrupt:
    try:
        print({EARLY_STOP!r}, file=sys.stderr)
    except OSError:  # the terminal closed
        pass
    sys.exit(130)
leave(torchrun_main(sys.argv[1:]))
"""
# torchrun's wait for its workers after it passes on a stop, before it kills them (torch's own
# default is 30 s, too short for a large model's step and checkpoint); a value already in the
# environment is kept. torch 2.12 and later read it; older versions keep their 30 s.
SHUTDOWN_TIMEOUT_ENV, SHUTDOWN_TIMEOUT_S = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 600


def torchrun_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment ``--gpus N`` starts torchrun with: ``environ``, torchrun's wait for its workers
    to save (``SHUTDOWN_TIMEOUT_S``) and one OpenMP thread a worker, each unless ``environ`` sets it.
    The thread count is what torchrun sets itself for several workers, with a five-line warning
    amid rnnlab's output that this leaves out."""
    return {SHUTDOWN_TIMEOUT_ENV: str(SHUTDOWN_TIMEOUT_S), "OMP_NUM_THREADS": "1", **environ}


def interrupted_workers(exitcodes) -> bool:
    """Whether torchrun's failed workers were all stopped, at least one by an interrupt it saved
    on (exit 130); the others 130 too, or ended by the signal with which torchrun stops the rest
    once one has exited (the signal can come after a rank left its handlers)."""
    codes = list(exitcodes)
    stopped = {130} | {-s for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    return 130 in codes and all(c in stopped for c in codes)


def torchrun_main(argv: list[str]) -> int:
    """torchrun (``torch.distributed.run``) on ``argv`` in this process. A stop ends it with exit
    status 130 and one line, where torchrun itself ends in a traceback: an interrupt that torchrun
    passed on to its workers (its ``SignalException``: each finishes its step and saves; after a
    SIGHUP, the terminal closed, a line meant for it goes to /dev/null), workers stopped by an
    interrupt that reached them and not torchrun (``interrupted_workers``; also their stop on the
    pipe of their output closing, where torchrun's own lines then go to /dev/null), or a Ctrl-C,
    SIGTERM or SIGHUP before torchrun has its own handlers (no worker started yet)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    # a stop is a Ctrl-C until torchrun installs its own handlers
    with handled(signal.default_int_handler, unless_ignored=[signal.SIGTERM, signal.SIGHUP]), \
            terminal_output() as terminals, closed_pipe_stops(lambda: None):  # the workers stop on it themselves
        try:
            main(argv)
        except SignalException as e:
            if e.sigval == signal.SIGHUP:
                discard_output(*terminals)
            print(f"rnnlab train: torchrun stopped its workers on {e.sigval.name}", file=sys.stderr)
            return 130
        except ChildFailedError as e:
            if not interrupted_workers(f.exitcode for f in e.failures.values()):
                raise
            print("rnnlab train: the workers were interrupted (exit 130); rank 0's line above names the "
                  "checkpoint", file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            print(EARLY_STOP, file=sys.stderr)
            return 130
    return 0


def run_passing_signals(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` (torchrun, for ``--gpus N``) in a session of its own and pass on to it each
    Ctrl-C, SIGTERM and SIGHUP this process gets; its exit status, 130 when a signal was passed on
    and it failed.

    In its own session torchrun gets each signal once, from here: a terminal's Ctrl-C would also
    reach it directly, two interrupts, and torchrun passes a second one on to its workers, which
    then abort instead of saving. SIGTERM is passed on even where Ctrl-C is ignored (``rnnlab train
    --gpus 2 ... &`` in a script), so that ``kill`` never leaves torchrun training on its own; a
    SIGHUP (the terminal closed) unless ignored (``nohup``), and this process's output to the
    terminal then goes to /dev/null, as the workers' does when torchrun passes it on
    (``rnnlab.signals.stops_as_ctrl_c``).
    The handlers are in place before the child starts: a signal in between is passed on once it
    has."""
    import subprocess

    proc, passed, pending = None, [], []

    def pass_on(signum, frame):
        if signum == signal.SIGHUP:
            discard_output(*terminals)
        passed.append(signum)
        if proc is None:
            pending.append(signum)
        else:
            proc.send_signal(signum)

    with terminal_output() as terminals, handled(pass_on, [signal.SIGTERM], [signal.SIGINT, signal.SIGHUP]):
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        while pending:  # arrived while it was starting
            proc.send_signal(pending.pop(0))
        code = proc.wait()
    if code < 0:  # ended by a signal (a kill -9): a shell's status for it, not 256 - N
        code = 128 - code
    return 130 if passed and code else code


def _check_before_launch(cfg: TrainConfig, n: int) -> None:
    """Refuse here, in one line, what every rank would refuse after torchrun started them (each
    printing it amid torchrun's report of failed workers): the process group's timeout, the config and
    its split over the ``n`` processes (the global batch, --grad-accum), the corpus, the run folder (taken and let go
    at once, as rank 0 then takes it; left as found, so that rank 0 makes the folder and its lock file itself and a
    fresh run failing before its first step, W&B not starting, removes them as one process does)."""
    from rnnlab.train.distributed import DistContext, timeout_minutes
    from rnnlab.train.trainer import open_data, resolve_config

    timeout_minutes()  # RNNLAB_DIST_TIMEOUT_MIN, which every rank reads
    cfg = resolve_config(cfg, world=n)
    # the corpus as each rank opens it: its files, and every split (held-out, --extra-val-data) long
    # enough for --seq-len; as the last rank, whose check warns of nothing (rank 0 warns once launched)
    heldout, _, stream = open_data(cfg, DistContext(rank=n - 1, world_size=n))
    rundir = RunDir(cfg.run.out)
    rundir.prepare(cfg, corpus_record(stream.split, heldout), clear_leftovers=False)  # rank 0 warns of those that stay
    rundir.release(undo=True)


def _launch(args) -> int | None:
    """Re-launch through torchrun for ``--gpus N`` (N > 1) unless already under torchrun."""
    n = args.gpus
    if n is None or n == 1 or "WORLD_SIZE" in os.environ:
        return None
    if n < 1:
        raise ValueError(f"--gpus must be a positive integer, got {n}")
    import torch

    cfg = config_from_args(args)  # a --config file's (or a resumed run's) device counts too
    if cfg.run.device != "cpu" and torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ValueError(f"--gpus {n} asks for more GPUs than the {torch.cuda.device_count()} visible")
    argv = sys.argv[1:]
    if "train" not in argv:
        raise ValueError("--gpus re-launches the command line; call it as `rnnlab train ... --gpus N`")
    _check_before_launch(cfg, n)
    torchrun = torchrun_args(n, argv)
    print("rnnlab train: re-launching as: " + shlex.join([sys.executable, "-m", "torch.distributed.run", *torchrun]),
          file=sys.stderr)
    env = {**torchrun_env(dict(os.environ)), **ended_with_this_process()}  # torchrun ends with this process
    return run_passing_signals([sys.executable, "-c", TORCHRUN, *torchrun], env)


def ctrl_c_line(e: KeyboardInterrupt) -> str:
    """What the Ctrl-C that ended ``rnnlab train`` says: the trainer's message (the step, the checkpoint
    kept), also where a bare stop close behind its abort took its place as it unwound (torchrun's
    SIGTERM once another rank ended: it carries the abort as its context); with none, training had not
    started."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt) and str(seen):
            return str(seen)
        seen = seen.__context__
    return "aborted by Ctrl-C before training started"


def run_train(args) -> int:
    from rnnlab.train import distributed as dist
    from rnnlab.train.checkpoint import CheckpointWriteError
    from rnnlab.train.peers import end_lost_rank
    from rnnlab.train.trainer import LostRank, NonFiniteLossError, OutOfMemory, run_training

    launched = _launch(args)
    if launched is not None:
        return launched
    ends_with_parent()  # a worker of --gpus N's torchrun ends with it (a kill -9 of torchrun or the launcher)
    cfg = config_from_args(args)
    ctx = dist.context()
    # where every rank prints its own line (a second Ctrl-C, a write error, its device out of memory), each
    # says which rank it is
    rank = f"rank {ctx.rank}: " if ctx.world_size > 1 else ""
    finished = False
    try:
        summary = run_training(cfg, progress=not args.no_progress)
        finished = True
    except (NonFiniteLossError, CheckpointWriteError) as e:
        # the ranks agree on a non-finite loss or weights (all-reduced): rank 0 alone says it
        if ctx.is_main or not isinstance(e, NonFiniteLossError):
            print(f"rnnlab train: {rank if isinstance(e, CheckpointWriteError) else ''}error: {e}", file=sys.stderr)
        return 1
    except OutOfMemory as e:  # one rank's device, not the run's: its line says which rank
        if getattr(args, "debug", False) or not rank:
            raise
        print(f"rnnlab train: {rank}error: {e}", file=sys.stderr)
        return 2
    except LostRank as e:  # another rank ended: one line naming the checkpoint kept, then an end at once
        if getattr(args, "debug", False):
            raise
        end_lost_rank(ctx.rank, str(e))
    except KeyboardInterrupt as e:  # the trainer's message names the checkpoint kept
        print(f"rnnlab train: {rank}{ctrl_c_line(e)}", file=sys.stderr)
        return 130
    finally:
        ctx.close(sync=finished)
    if ctx.is_main:
        print(format_summary(summary))
    if summary.get("interrupted_at_end") and ctx.is_main:
        print("rnnlab train: Ctrl-C came at the end of the budget; the run finished first (complete)",
              file=sys.stderr)
    return 0 if summary["complete"] and not summary.get("interrupted_at_end") else 130


def format_summary(s: dict) -> str:
    """The run's summary as the table ``rnnlab train`` prints at the end."""
    from rnnlab.train.config import WARMUP_STEPS
    from rnnlab.train.trainer import LOSS_WINDOW  # torch is loaded by then

    def fmt(v, spec=""):
        if v is None:
            return "-"
        return format(v, spec) if spec else str(v)

    rows = [
        ("model", model_text(s["model"], f"dim={s['dim']} depth={s['depth']}", s.get("layer"), s.get("model_options"))),
        ("params", fmt(s["params"], ",")),
        ("steps / tokens", f"{s['steps']:,} / {s['tokens']:,}"),
        (f"loss (last {min(LOSS_WINDOW, s['steps']):,})", fmt(s["loss"], ".4f")),  # the mean of the steps' losses
        *score_rows("val", {**s, "bytes": s.get("val_bytes")}, fmt, "held-out bytes"  # an earlier step's: said
                    + (f", at step {behind:,}" if (behind := val_step_behind(s)) is not None else ""),
                    " (Schedule-Free's y, where the training loss is measured)"),
        *(score_rows(Path(s["extra_val"]["data"]).name, s["extra_val"], fmt, "bytes") if s.get("extra_val") else []),
        # the steady rate, each process's first steps (compilation) left out: none when no step past them ran
        ("tok/s (steady)", fmt(s["tok_per_s"], ",.0f") if s["tok_per_s"] is not None
         else f"- (the steady rate leaves out each process's first {WARMUP_STEPS} steps)"),
        ("peak mem GiB", "n/a (CPU)" if s.get("device") == "cpu" else fmt(s["peak_mem_gib"], ".2f")),  # as the report
        # time_s sums the training steps only (warm-up steps included); wall_s is the whole run's
        # clock (start-up, evaluation and checkpoints too); summaries from before wall_s lack it
        ("time in steps s", fmt(s["time_s"], ".1f")),
        *([("wall time s", fmt(s["wall_s"], ".1f"))] if s.get("wall_s") is not None else []),
        ("optimizer", f"{s['optimizer']} lr={s['lr']:g} ({s['precision']}, seed {s['seed']})"),
        ("complete", str(s["complete"])),
        ("run dir", s.get("run_dir", "-")),
    ]
    return aligned(rows)


def score_rows(label: str, scores: dict, fmt, unit: str, y_note: str = "") -> list[tuple[str, str]]:
    """``label loss / bpb`` (and the bytes scored), then Schedule-Free's train-point pair if any."""
    rows = [(f"{label} loss / bpb", f"{fmt(scores['val_loss'], '.4f')} / {fmt(scores['val_bpb'], '.4f')}"
             + (f" ({scores['bytes']:,} {unit})" if scores.get("bytes") else ""))]
    if scores.get("val_bpb_train_point") is not None:
        rows.append(("  at train point", f"{fmt(scores['val_loss_train_point'], '.4f')} / "
                                          f"{fmt(scores['val_bpb_train_point'], '.4f')}{y_note}"))
    return rows


def run_eval_cmd(args) -> int:
    from rnnlab.data import default_train_path, file_split, heldout_split
    from rnnlab.train.runtime import evaluate_run, heldout_bytes_scored

    max_bytes = parse_eval_bytes(args.eval_bytes) if args.eval_bytes is not None else None
    run = RunDir(args.run)
    # the weights first: a run without them (one archived in results/ keeps no checkpoint) is not
    # scored on the corpus put back, nor on --data
    cfg, model, step = run.load(args.device, train_point=args.at == "train-point")
    if args.data and not os.path.exists(args.data):  # as train says it of its --data
        raise FileNotFoundError(f"data file not found: {args.data}")
    missing = None if args.data else run.missing_corpus(heldout=True)
    if missing:  # moved or deleted since training
        raise FileNotFoundError(f"{missing}: put it back there, or score another file with --data FILE")
    split = file_split(args.data) if args.data else heldout_split(cfg.data.path, cfg.data.val_path,
                                                                  cfg.data.val_fraction)
    trained_on = cfg.data.path or default_train_path()  # no data path: the bundled sample
    if not args.data:
        warn_if_data_changed(run, cfg, split)
    elif os.path.exists(trained_on) and os.path.samefile(args.data, trained_on):
        warn(f"--data {args.data} is the file this run trained on: its scores are of bytes the model trained on, "
             "not held out (without --data, eval scores the run's held-out split)")
    r = evaluate_run(model, split, cfg, batch_size=args.batch_size, max_bytes=max_bytes)
    shipped = args.at if cfg.optim.optimizer == "schedulefree-adamw" else None  # AdamW keeps one set of weights
    # heldout_tail: the held-out tail of the training file ("data" names that file, as --data FILE would)
    out = {"run": str(args.run), "step": step, "weights": shipped, "data": str(split.path),
           "heldout_tail": len(split) != len(split.corpus), "val_loss": r["loss"], "val_bpb": r["bpb"],
           "bytes": r["bytes"], "capped": r["bytes"] < heldout_bytes_scored(len(split), cfg, 0)}
    if args.json:
        print(json.dumps(out))
    else:
        at = " at the train point" if args.at == "train-point" else ""
        # a held-out tail of the training file is named as such: "on FILE" is what --data FILE scores
        on = (f"the held-out split of {out['data']} (its last {100 * cfg.data.val_fraction:g}%)"
              if out["heldout_tail"] else out["data"])
        scored = (f"the first {r['bytes']:,} bytes of {len(split):,}; --eval-bytes all scores the whole file"
                  if out["capped"] else counted(r["bytes"], "byte"))
        print(f"{args.run} (step {out['step']}{at}) on {on}: val_loss {r['loss']:.4f}  "
              f"val_bpb {r['bpb']:.4f}  ({scored})")
    return 0


def warn_if_data_changed(run: RunDir, cfg, split) -> None:
    """A warning when the run's held-out split is not the one it trained with (env.json's corpus
    sizes and fingerprints): a data file replaced or grown since moves its held-out tail, and the score would be of
    other bytes, perhaps some the run trained on (``--resume`` refuses such data: ``RunDir.corpus_changed``)."""
    now = {"heldout_bytes": len(split), "heldout_fingerprint": split.fingerprint()}
    if cfg.data.path is not None and cfg.data.val_path is None:  # the tail of the training file, after its train split
        now["train_bytes"] = split.offset
    changed = run.corpus_changed(now)
    if changed is not None:
        warn(f"{changed}: the data changed since, so this scores other held-out bytes than the run's, perhaps some "
             f"it trained on")


def run_sample(args) -> int:
    """The prompt and each new byte printed (and flushed) as it is sampled, so a long sample shows
    as it grows and a Ctrl-C keeps what was printed; the text equals ``generate``'s, decoded whole."""
    import codecs

    from rnnlab.eval.sampling import stream

    _, model, _ = RunDir(args.run).load(args.device)
    prompt = os.fsencode(args.prompt)  # the bytes the shell passed, UTF-8 or not
    new_bytes = stream(model, prompt, args.tokens, args.temperature, args.top_k, args.seed)  # checks first
    # incremental: a character split over bytes prints once whole, an invalid byte as U+FFFD
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    encoding = sys.stdout.encoding or "utf-8"

    def write(data: bytes, final: bool = False) -> None:  # what stdout cannot encode (an ascii locale) prints as ?
        text = decoder.decode(data, final) + ("\n" if final else "")
        sys.stdout.write(text.encode(encoding, "replace").decode(encoding))
        sys.stdout.flush()

    write(prompt)
    try:
        for b in new_bytes:
            write(b)
    except KeyboardInterrupt:  # the text so far ends its line; main() then says "interrupted"
        write(b"", final=True)
        raise
    write(b"", final=True)
    return 0
