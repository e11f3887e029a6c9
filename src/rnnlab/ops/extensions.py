"""CUDA C++ kernels built on first use by torch's extension loader, so that a build stopped half-way
cannot hang every later run.

``torch.utils.cpp_extension.load`` marks a build in progress with a file ``lock`` in the build
folder (created exclusively, removed when the build ends) and makes any other process loading the
same extension wait while that file exists, with no time limit. A build killed before it removes
the file (``kill -9``, or a SIGTERM with Python's default handler, as a time limit sends, during
the minute a first build takes; a Ctrl-C lets torch remove it) leaves it behind, and every later
run that needs the kernel on that machine waits forever without a word.

:func:`load` first takes an OS lock (``fcntl.flock``, which the kernel releases when its holder
dies) on a file beside the build folder. While it holds that lock no other rnnlab process is
building or loading the extension, so a ``lock`` found in the build folder then was left by a
build that died: it is removed with a one-line warning, and ninja finishes the build. A load that
has to build, or waits for another process's build, says so first, in one line: the run seems to
stand still for that minute otherwise. Where the build folder's file system takes no ``flock``
(some NFS or Lustre mounts), the load goes on as torch's own would, with a warning, instead of
failing (which would switch the kernel off for the run).
"""

from __future__ import annotations

import errno
import fcntl
import sys
import warnings
from pathlib import Path

__all__ = ["load"]


def load(name: str, **kwargs):
    """``torch.utils.cpp_extension.load(name=name, **kwargs)``, one process at a time per extension
    name on this machine, after clearing a dead build's ``lock`` (module docstring)."""
    from torch.utils import cpp_extension

    build = Path(kwargs.get("build_directory") or cpp_extension._get_build_directory(name, verbose=False))
    with open(build.parent / f"{build.name}.rnnlab-lock", "a") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes or this process dies
        except BlockingIOError:
            print(f"rnnlab: waiting for another process building or loading the CUDA kernel {name} "
                  f"(in {build.parent})", file=sys.stderr, flush=True)
            fcntl.flock(held, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            warnings.warn(f"{name}: {build.parent} takes no file lock ({e}); loading without one, as torch "
                          f"does (a build stopped half-way there can hang later loads)")
            return cpp_extension.load(name=name, **kwargs)
        left = build / "lock"
        if left.exists():
            warnings.warn(f"{name}: removing {left}, left by a build of this kernel that was stopped before "
                          f"it finished (otherwise this run would wait for it forever); building it again")
            left.unlink(missing_ok=True)
        if not (build / f"{name}.so").exists():  # torch's library file: none yet, so ninja builds it
            print(f"rnnlab: building the CUDA kernel {name} (its first use here: about a minute, then kept "
                  f"in {build.parent})", file=sys.stderr, flush=True)
        return cpp_extension.load(name=name, **kwargs)
