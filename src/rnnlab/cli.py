"""The ``rnnlab`` command. Each subcommand lives with the code it drives; this file only wires them.

    rnnlab params   count parameters / solve a width for a target        (rnnlab.models.cli)
    rnnlab layers   the model kinds and their --layer options             (rnnlab.models.cli)
    rnnlab train    train one model                                       (rnnlab.train.cli)
    rnnlab eval     held-out loss and bits per byte of a run              (rnnlab.train.cli)
    rnnlab sample   generate text from a run                              (rnnlab.train.cli)
    rnnlab bench    run a benchmark suite and write its report            (rnnlab.bench.cli)
    rnnlab sweep    sweep any config field                                (rnnlab.bench.cli)
    rnnlab report   (re)write a suite's report from its run folders       (rnnlab.bench.cli)
    rnnlab analyze  gradient-flow analysis of a run                       (rnnlab.analysis.cli)
    rnnlab data prepare  text / JSON-lines shards -> one raw byte corpus  (rnnlab.data.cli)
    rnnlab export   a run as a Hugging Face model folder                  (rnnlab.hf.cli)
    rnnlab doctor   versions and which fast paths load                    (rnnlab.doctor)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from rnnlab import __version__
from rnnlab.signals import ctrl_c_unwrapped, discard_output, stops_as_ctrl_c

COMMAND_MODULES = (
    "rnnlab.models.cli",
    "rnnlab.train.cli",
    "rnnlab.bench.cli",
    "rnnlab.analysis.cli",
    "rnnlab.data.cli",
    "rnnlab.hf.cli",
    "rnnlab.doctor",
)


# What a command raises for bad input or an unusable file or folder: one line, exit status 2.
# ``--debug`` shows the traceback instead; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)

DESCRIPTION = """\
rnnlab trains byte-level language models built from recurrent layers (E1 gated Elman, E16, E88,
minGRU, minLSTM, Mamba2, Gated DeltaNet) and a Transformer on the same data stream, and compares
their loss, held-out bits per byte, tokens/s and memory side by side.

Start with `rnnlab bench tiny` (every model kind in about a minute on a CPU), then
`rnnlab train --help`. `rnnlab layers` lists the model kinds and their options."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``rnnlab train: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rnnlab", description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_debug_flag(parser)
    return parser


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on every (sub)command, so it may follow the command's name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                     help="show the traceback of an error")
                _add_debug_flag(command)


def error_line(e: BaseException) -> str:
    """An error as one line: an OS error as "<reason>: <file>", anything else by its message. An
    output folder that cannot be made because a file is in the way (``--out FILE``, ``--out FILE/x``)
    says so: the system's "File exists" / "Not a directory" named the path, not the problem."""
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename is not None:
        path = Path(e.filename)
        files = [p for p in (path, *path.parents) if p.is_file()]
        if files:  # the path itself once, a path below a file with the file named
            where = "" if files[0] == path else f"{e.filename}: "
            return f"{where}{files[0]} is a file; a folder is wanted there"
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.strerror}: {e.filename}"
    return " ".join(str(e).split()) or type(e).__name__


# a config field as the config's checks name one: the line's subject ("eval_bytes must be ...",
# "warmup_steps (50) must not exceed ...", "cuda_graph needs ...") or, anywhere, a field with its
# number after it ("... must divide batch_size (4)"; not "No space left on device (os error 28)", nor a
# path's last name, "/tmp/data (3 bytes)", nor a flag already written, "--seed (3)")
FIELD_NAMED = re.compile(r"^([a-z][a-z0-9_]*)(?= must | needs | \()|(?<![\w./-])([a-z][a-z0-9_]*)(?= \(-?\d)")


def named_by_flag(line: str, args: argparse.Namespace) -> str:
    """``line`` (an error's one line) with each config field it names that this command line set by
    its flag written as that flag: ``--eval-bytes must be ...``, not ``eval_bytes must be ...``;
    ``--grad-accum (3) must divide --batch-size (4)``. The value in effect is the flag's (flags
    override a config file and a resumed run's config), so it is what the user typed that is named,
    whichever check refused it: its field's declaration, a rule between fields or the device's. A
    field the flags left alone keeps its key (a config file's or a suite's value), as does
    ``layer``, whose ``--layer`` options are added to a file's table rather than replacing it; a
    line whose subject is a key that the ``--config`` file sets begins with that file's name
    (``config file run.toml: steps must be ...``), as the file's other errors do, and so does one
    whose subject is a layer option the file's layer table sets and no ``--layer`` flag."""
    from rnnlab.options import flag_name
    from rnnlab.train.config import FIELDS

    def named(m: re.Match) -> str:
        key = m[1] or m[2]
        flagged = key in FIELDS and key != "layer" and getattr(args, key, None) is not None
        return flag_name(key) if flagged else key

    line = FIELD_NAMED.sub(named, line)
    fields, options = _config_file_keys(getattr(args, "config", None))
    subject, option = FIELD_NAMED.match(line), LAYER_OPTION_NAMED.match(line)
    flagged = {item.partition("=")[0].strip() for item in getattr(args, "layer", None) or []}
    if (subject and subject[1] in fields) or (option and option[1] in options - flagged):
        line = f"config file {args.config}: {line}"
    return line


# a layer option as its checks name one: "e1 layer option expansion must be ..."
LAYER_OPTION_NAMED = re.compile(r"^[a-z0-9]+ layer option ([a-z][a-z0-9_]*)")


def _config_file_keys(path: str | None) -> tuple[set[str], set[str]]:
    """The config fields a ``--config`` file sets (its ``model`` table's too) and the layer options
    (its ``layer`` table's or ``model.layer``'s); none when there is no file or it cannot be read
    (its own error names it)."""
    from rnnlab.train.config import read_config_file

    try:
        values = read_config_file(path) if path is not None else {}
    except (OSError, ValueError):
        return set(), set()
    model = values.get("model") if isinstance(values.get("model"), dict) else {}
    tables = [t for t in (values.get("layer"), model.get("layer")) if isinstance(t, dict)]
    return ({k.replace("-", "_") for k in [*values, *model]}, {str(k) for t in tables for k in t})


# a negative number in exponent form or with a count's suffix, or -inf / -nan, which argparse takes
# for a flag (it knows -1 and -0.5)
NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+|[kKmMbBgG])|-(?i:inf|infinity|nan)")


def attach_negative_numbers(argv: list[str]) -> list[str]:
    """``--lr -1e-3`` as ``--lr=-1e-3`` (and ``--tokens -5M``, ``--lr -inf`` likewise), so the value
    reaches the flag's own check ("lr must be a positive finite number") instead of argparse's
    "expected one argument"."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and NEGATIVE_NUMBER.fullmatch(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def leave(code: int | None) -> NoReturn:
    """Exit with ``code``, every object alive now frozen (``gc.freeze``): the interpreter's exit then
    skips its collections over all that torch's import made, about 0.4 s of every command's end.
    An object still reachable in a reference cycle is then not finalized at exit (Python promises
    no finalizer for what is alive at exit; atexit handlers still run): rnnlab closes its files,
    logs and writers before it returns (``Trainer.closing``). A Ctrl-C from here on (a second one
    just after a stopped run saved and said so) has nothing left to stop: it is noted, not raised
    (Python would print a KeyboardInterrupt traceback from wherever it lands, the collection's next
    line or an object's finalizer), and the command exits 130, or with its own failing status; a
    further one interrupts as usual (an atexit handler that hangs)."""
    import gc
    import signal
    import threading

    late: list[int] = []

    def noted(signum, frame):
        late.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, noted)
    gc.collect()  # garbage already there is finalized, as at any exit
    gc.freeze()
    raise SystemExit((code or 130) if late else code)


def command() -> NoReturn:
    """The ``rnnlab`` command (its console script and ``python -m rnnlab``): :func:`main`, left
    through :func:`leave`, each line on standard error written whole (:func:`whole_lines`)."""
    whole_lines(sys.stderr)
    leave(main())


def whole_lines(stream) -> None:
    """Write each line of ``stream`` (a text file) in one ``write(2)``, where unbuffered Python
    (``python -u``, as torchrun starts its workers; ``PYTHONUNBUFFERED=1``) writes a ``print``'s
    text and its newline in two: under ``rnnlab train --gpus N`` the ranks and torchrun share one
    standard error, and a line of theirs could land inside one of ours (a rank's one-line end after
    a lost peer, read whole by scripts). A partial line waits for its newline, a carriage return (a
    progress bar) or a flush. A stream that cannot be reconfigured (not a file) is left as it is."""
    with contextlib.suppress(AttributeError, ValueError):
        stream.reconfigure(line_buffering=True, write_through=False)


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` None: the process's own, and a SIGTERM or SIGHUP handled as a
    Ctrl-C)."""
    own = argv is None
    argv = sys.argv[1:] if own else list(argv)
    with stops_as_ctrl_c() if own else contextlib.nullcontext(), warnings_of_rnnlab_in_one_line():
        try:
            with ctrl_c_unwrapped():
                return _main(argv)
        except KeyboardInterrupt:  # while torch and the commands import (the first second or two), before
            # _main's own handling: nothing was started, so nothing to keep
            if "--debug" in argv:
                raise
            print("rnnlab: interrupted (Ctrl-C) before the command started", file=sys.stderr)
            return 130


@contextlib.contextmanager
def warnings_of_rnnlab_in_one_line():
    """Inside the block, a UserWarning raised in rnnlab's own code shows as one line, ``rnnlab:
    warning: ...`` (Python's default adds the file, the line number, the category and the line of
    source that raised it); other warnings show as Python shows them."""
    shown = warnings.showwarning
    package = str(Path(__file__).resolve().parent) + os.sep

    def show(message, category, filename, lineno, file=None, line=None):
        if category is UserWarning and str(Path(filename).resolve()).startswith(package):
            print(f"rnnlab: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _main(argv: list[str]) -> int:
    argv = attach_negative_numbers(argv)
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # argparse would blame the top-level parser; name the command instead
        print(f"rnnlab {args.command}: error: unrecognized arguments: {' '.join(unknown)} "
              f"(see rnnlab {args.command} --help)", file=sys.stderr)
        return 2
    try:
        with ctrl_c_unwrapped():  # one that a library wrapped, as a KeyboardInterrupt (below)
            return int(args.func(args) or 0)
    except BrokenPipeError:  # `rnnlab layers | head`: the reader has what it wanted
        if args.debug:
            raise
        discard_output(sys.stdout)
        return 141  # a shell's status for a writer stopped by SIGPIPE, as `git log | head` ends
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"rnnlab {args.command}: error: {named_by_flag(error_line(e), args)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from rnnlab.train.runtime import is_out_of_memory

        if args.debug or not is_out_of_memory(e):
            raise
        hint = getattr(args, "oom_hint", "lower --batch-size (and --seq-len where the command has it)")
        print(f"rnnlab {args.command}: error: out of memory ({error_line(e)[:120]}): {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train and bench save and say what they kept; the rest have nothing to keep
        if args.debug:
            raise
        print(f"rnnlab {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
