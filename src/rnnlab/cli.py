"""The ``rnnlab`` command. Each subcommand lives with the code it drives; this file only wires them.

    rnnlab params   count parameters / solve a width for a target        (rnnlab.models.cli)
    rnnlab train    train one model                                       (rnnlab.train.cli)
    rnnlab eval     held-out loss and bits per byte of a run              (rnnlab.train.cli)
    rnnlab sample   generate text from a run                              (rnnlab.train.cli)
    rnnlab bench    run a benchmark suite and write its report            (rnnlab.bench.cli)
    rnnlab sweep    sweep any config field                                (rnnlab.bench.cli)
    rnnlab analyze  gradient-flow analysis of a run                       (rnnlab.analysis.cli)
    rnnlab data prepare  text / JSON-lines shards -> one raw byte corpus  (rnnlab.data.cli)
    rnnlab export   a run as a Hugging Face model folder                  (rnnlab.hf.cli)
    rnnlab doctor   versions and which fast paths load                    (rnnlab.doctor)
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "rnnlab.models.cli",
    "rnnlab.train.cli",
    "rnnlab.bench.cli",
    "rnnlab.analysis.cli",
    "rnnlab.data.cli",
    "rnnlab.hf.cli",
    "rnnlab.doctor",
)


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a command module not written yet must not break the rest
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, IsADirectoryError) as e:
        print(f"rnnlab {args.command}: error: {e}", file=sys.stderr)
        return 2
