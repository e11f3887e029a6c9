"""How rnnlab's messages read: a failed write names its file (``rnnlab.cli.error_line``: "<reason>: <file>"),
a count agrees with its noun ("1 byte")."""

from __future__ import annotations

import contextlib
import os


def name_file(e: BaseException | None, path: str | os.PathLike) -> None:
    """Give an OS error that names no file (a full disk's write: "[Errno 28] No space left on device")
    ``path``'s name, so its line says which file could not be written. One without an errno
    (``OSError("Not a gzipped file")``) keeps its message as it is."""
    if isinstance(e, OSError) and e.filename is None and e.strerror:
        e.filename = str(path)


def counted(n: int, noun: str) -> str:
    """``1 byte``, ``2 bytes``, ``1,000 bytes``: ``n`` and ``noun``, agreeing in number."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def amount(value: int | float) -> str:
    """A budget's or a setting's value as a message shows it: a whole count in full with separators
    (``1,234,567`` tokens, not ``1.23457e+06``), a float as short as it reads (``1.5`` minutes)."""
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


class naming(contextlib.AbstractContextManager):
    """``name_file`` for an OS error raised inside the block; a plain class, not a generator, as it
    wraps hot paths (each read of ``data prepare``, each step's log lines)."""

    def __init__(self, path: str | os.PathLike):
        self.path = path

    def __exit__(self, exc_type, exc, tb) -> None:
        name_file(exc, self.path)
