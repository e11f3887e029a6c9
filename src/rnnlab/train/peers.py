"""A rank whose peer on the same machine died while it waits for that peer in a collective.

A collective does not always notice that the other end is gone: gloo at times waits on (rank 0 of
a 2-rank CPU run, inside DDP's gradient all-reduce after rank 1's ``kill -9``: 1 run in 31 under
the test suite's load), and NCCL waits until the process group's timeout. The rank then sits in
C++, where no Python signal handler runs: torchrun's SIGTERM, which follows the peer's death, is
never acted on, and torchrun kills the rank 30 s later without a word. ``LostPeerWatch`` is a
thread that looks at the other ranks' processes on this machine while the rank trains; once one
has ended and this rank is still here ``GRACE_S`` later, it ends the rank with the line a failed
collective would have given (``end_lost_rank``); rank 0 writing a checkpoint (its state gathered)
finishes the write first. Ranks on other machines cannot be seen from here; Linux only, with a
``/proc`` of the ranks' own pid namespace (``process_identity``)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Callable, NoReturn

from rnnlab.signals import ENDED_STATES, proc_stat

# how often the watch looks at the peers, and how long a peer's death gives this rank to end on
# its own (its collective's error then names the cause) before the watch ends it
POLL_S = 0.5
GRACE_S = 3.0


def process_identity() -> tuple[str, int, int] | None:
    """This process as its peers will look for it: ``(machine, pid, start time)``, where the
    machine is the boot and the pid namespace (pids compare only within one), and the start time
    tells a pid reused since from this process. None off Linux."""
    try:
        machine = Path("/proc/sys/kernel/random/boot_id").read_text().strip() + os.readlink("/proc/self/ns/pid")
        if os.readlink("/proc/self") != str(os.getpid()):  # a /proc of another pid namespace: pids not found there
            return None
    except OSError:
        return None
    stat = proc_stat("self")
    return None if stat is None else (machine, os.getpid(), stat[1])


def local_peers(identities: list, rank: int) -> dict[int, tuple[int, int]]:
    """``{rank: (pid, start time)}`` of the other ranks on this machine, from every rank's
    ``process_identity`` (in rank order)."""
    mine = identities[rank]
    if mine is None:
        return {}
    return {r: (ident[1], ident[2]) for r, ident in enumerate(identities)
            if r != rank and ident is not None and ident[0] == mine[0]}


def watchable(peers: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """``peers`` when every one of them runs, read just after they answered; else none (this
    machine's ``/proc`` does not show them as they see themselves: nothing to watch by)."""
    return {} if any(ended(pid, start) for pid, start in peers.values()) else peers


def ended(pid: int, start: int) -> bool:
    """Whether the process ``(pid, start time)`` has ended: gone, a zombie, or its pid reused."""
    stat = proc_stat(pid)
    return stat is None or stat[0] in ENDED_STATES or stat[1] != start


class LostPeerWatch:
    """Inside the block, a thread ends this rank through ``end(peer)`` (which does not return: it
    ends the process) once the peer rank ``peer`` of ``peers`` (``local_peers``) has ended and this
    rank has not, ``GRACE_S`` later, ended on its own; while ``busy()`` (a checkpoint being
    written, which the dead peer does not hold up) it waits. One of the two ends the rank: leaving
    the block stops the watch, unless the thread has begun to end the rank; then the exit waits
    for that end (a failure that ends the block is recorded by the rank itself otherwise). No
    peers: nothing is watched."""

    def __init__(self, peers: dict[int, tuple[int, int]], end: Callable[[int], None],
                 busy: Callable[[], bool] = lambda: False):
        self.peers, self.end, self.busy = peers, end, busy
        self._stopped = threading.Event()
        self._ending = threading.Lock()  # taken once, never blocking: by the block's exit or by the thread
        self._ended = threading.Event()  # the thread's end is over (only where ``end`` returns: tests)
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LostPeerWatch":
        if self.peers:
            self._thread = threading.Thread(target=self._watch, name="rnnlab-lost-peer-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        if self._ending.acquire(blocking=False):
            return
        while not self._ended.is_set():  # the thread is ending the rank; a Ctrl-C meanwhile changes nothing
            try:
                self._ended.wait()
            except KeyboardInterrupt:
                continue

    def _watch(self) -> None:
        while not self._stopped.wait(POLL_S):
            gone = next((rank for rank, (pid, start) in self.peers.items() if ended(pid, start)), None)
            if gone is None:
                continue
            if self._stopped.wait(GRACE_S):
                return
            while self.busy():
                if self._stopped.wait(POLL_S):
                    return
            if self._ending.acquire(blocking=False):
                try:
                    self.end(gone)
                finally:
                    self._ended.set()
            return


def end_lost_rank(rank: int, message: str, then: Callable[[], None] | None = None) -> NoReturn:
    """The end of a rank whose peer is gone: its one line, then ``then()`` if given (what the watch
    records after the line, so that a disk that hangs cannot keep the line back), then exit status
    1 at once, whatever came before failed: without leaving the process group (its teardown can
    wait for the dead peer, NCCL's can hang) nor meeting torchrun's SIGTERM, which follows the
    peer's death, in the interpreter's exit."""
    try:
        try:
            print(f"rnnlab train: rank {rank}: {message}", file=sys.stderr)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        finally:
            if then is not None:
                then()
    finally:
        os._exit(1)
