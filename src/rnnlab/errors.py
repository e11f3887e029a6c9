"""How a failed write reads in rnnlab's one-line errors (``rnnlab.cli.error_line``: "<reason>: <file>")."""

from __future__ import annotations

import contextlib
import os


def name_file(e: BaseException | None, path: str | os.PathLike) -> None:
    """Give an OS error that names no file (a full disk's write: "[Errno 28] No space left on device")
    ``path``'s name, so its line says which file could not be written. One without an errno
    (``OSError("Not a gzipped file")``) keeps its message as it is."""
    if isinstance(e, OSError) and e.filename is None and e.strerror:
        e.filename = str(path)


class naming(contextlib.AbstractContextManager):
    """``name_file`` for an OS error raised inside the block; a plain class, not a generator, as it
    wraps hot paths (each read of ``data prepare``, each step's log lines)."""

    def __init__(self, path: str | os.PathLike):
        self.path = path

    def __exit__(self, exc_type, exc, tb) -> None:
        name_file(exc, self.path)
