"""File operations that survive a crash: what the run folder and its checkpoints are written with.

- ``write_atomic``: a file appears whole or not at all (a temporary name private to this
  process, fsync, rename, fsync of the folder), so a kill or power loss leaves the old content
  or the new, never a mix.
- ``write_synced``, ``fsync_file`` / ``fsync_dir``: data and directory entries on the disk
  before anything that depends on them is made visible.
- ``remove_tree``: a folder disappears at once (renamed to a ``.trash-*`` name, then deleted);
  a kill mid-way leaves only that trash, which ``clear_temporaries`` removes later.
- ``interrupts_deferred``: Ctrl-C arriving inside the block takes effect when it ends, so a
  commit and the bookkeeping that records it are never split.
- ``new_file_mode``: the permissions a new file gets under the process's umask, for files a
  library wrote owner-only (the exported weights).

Temporary names start with ``.tmp-`` or ``.trash-`` and carry the writer's pid, so two processes
never share one; only the holder of a run folder's lock removes them (``clear_temporaries``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from rnnlab.errors import naming

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


def temporary_name(path: Path) -> Path:
    """A sibling of ``path`` that no other process or thread uses (a rank's lost-peer watch writes
    summary.json beside its main thread) and ``clear_temporaries`` recognises."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{threading.get_native_id()}-{path.name}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: str | bytes) -> None:
    """Write ``path`` and put it on the disk (a file in a folder no one else sees yet)."""
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def new_file_mode() -> int:
    """The mode ``open`` gives a new file under the process's umask (0o644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` in one step: the old content or the new survives a crash. A full
    disk's error names ``path``."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with naming(path):
            write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Delete the folder ``path``: it vanishes in one rename, then its contents are deleted."""
    trash = path.with_name(f"{TRASH_PREFIX}{os.getpid()}-{path.name}")
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash)


def clear_temporaries(folder: Path) -> list[tuple[Path, OSError]]:
    """Remove what interrupted writes left in ``folder`` (``.tmp-*`` and ``.trash-*`` entries); returns
    those that would not go, with why (an old checkpoint that pruning could not delete, whose files a
    user made read-only): no part of the run, so the caller goes on. Only the holder of the run
    folder's lock may call this."""
    left = []
    for entry in folder.iterdir():
        if not entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as e:
            left.append((entry, e))
    return left


@contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C (SIGINT) for the duration of the block; one that arrived meanwhile is
    handled as the block ends, by the handler installed before it. Several held back count as
    one: the block lasts milliseconds (a commit's renames), and two SIGINTs inside it are a pair
    sent together (a time limit's ``timeout -s INT`` reaches the process and its group), which is
    one stop, not a first Ctrl-C and an abort. Where Ctrl-C is ignored (``cmd &`` in a script) it
    stays ignored, and what stops the process there instead is held back: a SIGTERM or SIGHUP that
    Python handles (``rnnlab.signals.stops_as_ctrl_c`` makes it a KeyboardInterrupt there). Holding
    SIGINT there put a handler in place of the ignore, and such a stop, passed on as a SIGINT, was
    held and then raised again into the ignore: lost. Only the main thread can install handlers;
    elsewhere the block runs unprotected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = [signal.SIGINT]
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        held = [s for s in (signal.SIGTERM, signal.SIGHUP) if callable(signal.getsignal(s))]
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
        for s in dict.fromkeys(caught):  # in the order they came, each signal once
            signal.raise_signal(s)
