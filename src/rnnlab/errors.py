"""How a failed write reads in rnnlab's one-line errors (``rnnlab.cli.error_line``: "<reason>: <file>")."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def name_file(e: BaseException | None, path: str | os.PathLike) -> None:
    """Give an OS error that names no file (a full disk's write: "[Errno 28] No space left on device")
    ``path``'s name, so its line says which file could not be written. One without an errno
    (``OSError("Not a gzipped file")``) keeps its message as it is."""
    if isinstance(e, OSError) and e.filename is None and e.strerror:
        e.filename = str(path)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """``name_file`` for an OS error raised inside the block."""
    try:
        yield
    except OSError as e:
        name_file(e, path)
        raise
