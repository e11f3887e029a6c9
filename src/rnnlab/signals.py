"""How an ``rnnlab`` process takes the signals that stop it: a SIGTERM (``kill``, a scheduler) or a
SIGHUP (the terminal closed) as a Ctrl-C, so that a run saves before it ends, and its output to a
terminal, after a hang-up, sent to /dev/null instead of failing; and a process started by another
of rnnlab's (torchrun and its workers under ``rnnlab train --gpus N``, a run of ``rnnlab bench --gpus
N``) ended with it by a ``kill -9`` (``ends_with_parent``); a Ctrl-C that a library wrapped in its own
error known as one (``is_ctrl_c``, ``ctrl_c_unwrapped``), and one that a library swallowed at start-up
remembered, so the trainer and the commands that load a run stop on it (``RememberedCtrlC``). Used by
the ``rnnlab`` command (``rnnlab.cli``), by ``rnnlab train --gpus N``'s launcher and torchrun
(``rnnlab.train.cli``), and across the package where a stop or a process's end matters (the trainer,
the bench, the kernel registry, export)."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path


def discard_output(*streams) -> None:
    """Point each stream's file descriptor at /dev/null: after a closed pipe (so that the
    interpreter's last flush at exit does not meet it again) or a closed terminal (so that a run
    stopping on its hang-up can still write, to nowhere, and save)."""
    for stream in streams:
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
            continue
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


class SurvivingHangUp:
    """A text stream (standard output or error) whose writes, once the terminal behind it has hung
    up (``EIO``), go to /dev/null instead of failing: a process whose output is a closed terminal
    (a torchrun worker, before the SIGHUP reaches it through its launcher and torchrun) keeps
    running and can save. ``lost=errno.EPIPE``: a pipe whose reader has gone (``| head``), the
    same; ``on_lost`` is called once when it happens (no signal says so: Python ignores SIGPIPE).
    Everything else is the stream's own."""

    def __init__(self, stream, lost: int = errno.EIO, on_lost=None):
        self._stream, self._lost, self._on_lost = stream, lost, on_lost

    def _hung_up(self, e: OSError) -> None:
        if e.errno != self._lost:
            raise e
        discard_output(self._stream)
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost()

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            self._hung_up(e)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            self._hung_up(e)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, OSError, ValueError):  # closed, or not a file
        return False


@contextlib.contextmanager
def _standard_streams_as(wrap):
    """Inside the block, standard output and error each replaced by what ``wrap(stream)`` returns
    (None: left as it is); after it, each wrapper is the stream it wrapped again, unless another
    stream was put in its place during the block (a redirection, which stays)."""
    made = {}
    for name in ("stdout", "stderr"):
        if (wrapper := wrap(getattr(sys, name))) is not None:
            made[name] = wrapper
            setattr(sys, name, wrapper)
    try:
        yield
    finally:
        for name, stream in made.items():
            if getattr(sys, name) is stream:
                setattr(sys, name, stream._stream)


def _survives_hang_up(stream) -> bool:
    return isinstance(stream, SurvivingHangUp) and stream._lost == errno.EIO


@contextlib.contextmanager
def terminal_output():
    """Inside the block, standard output and error, those that are terminals, are
    ``SurvivingHangUp``; yields them (for ``discard_output`` on a SIGHUP), an enclosing block's
    among them. Output to a file or a pipe is left alone, so a hang-up loses none of a log and a
    disk's error is not hidden; a closed stream (None) too. After a hang-up ``isatty`` is False:
    hence at the start."""
    def surviving(stream):
        return SurvivingHangUp(stream) if _is_terminal(stream) and not _survives_hang_up(stream) else None

    with _standard_streams_as(surviving):
        yield [s for s in (sys.stdout, sys.stderr) if _survives_hang_up(s)]


def _pipe(stream) -> tuple[int, int] | None:
    """The pipe or socket (a log shipper's, systemd's journal) ``stream`` writes to, as its device
    and inode; None for anything else (a file, a terminal, a closed stream)."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # closed, or not a file
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode) else None


@contextlib.contextmanager
def closed_pipe_stops(stop):
    """Inside the block, standard output and error that are pipes (or sockets) survive their reader's
    leaving (``rnnlab train ... | head``, or ``| tee log`` when tee is killed: the rest of the output
    goes to /dev/null) and call ``stop`` once, so that a run saves and ends as on a closed terminal,
    not failing on its next line. Outside training a closed pipe stays a quiet end (``rnnlab.cli``:
    a shell's SIGPIPE status)."""
    pipes = {}  # each wrapper: the pipe it writes to

    def lost(pipe) -> None:  # the other stream into the same pipe (2>&1) goes quiet too
        discard_output(*(w for w, p in pipes.items() if p == pipe))
        stop()

    def surviving(stream):
        if (pipe := _pipe(stream)) is None:
            return None
        wrapper = SurvivingHangUp(stream, errno.EPIPE, functools.partial(lost, pipe))
        pipes[wrapper] = pipe
        return wrapper

    with _standard_streams_as(surviving):
        yield


@contextlib.contextmanager
def handled(handler, always=(), unless_ignored=()):
    """Inside the block ``handler`` takes each signal of ``always`` and each of ``unless_ignored``
    that this process does not ignore (``SIG_IGN``: a SIGHUP under ``nohup``, a Ctrl-C under ``cmd
    &`` in a script); yields the signals it took. The handlers before are put back after it."""
    taken = [*always, *(s for s in unless_ignored if signal.getsignal(s) is not signal.SIG_IGN)]
    previous = {s: signal.signal(s, handler) for s in taken}
    try:
        yield taken
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


def is_ctrl_c(e: BaseException) -> bool:
    """Whether ``e`` is a Ctrl-C: a KeyboardInterrupt, or an error a library made of one, with the
    KeyboardInterrupt among its causes (``raise ... from``): Python 3.11's "RuntimeError: Error calling
    __set_name__ ..." (one inside a class body that a lazy import runs, a dataclass field's; 3.12
    raises it as it came), and pybind11's ImportError "initialization failed" (one while a C++
    extension such as Triton's loads)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__
    return False


@contextlib.contextmanager
def ctrl_c_unwrapped():
    """Inside the block, a Ctrl-C that a library wrapped (:func:`is_ctrl_c`) comes out as the
    KeyboardInterrupt it is (the wrapper its cause), so that the handlers of Ctrl-C meet it."""
    try:
        yield
    except Exception as e:
        if is_ctrl_c(e):
            raise KeyboardInterrupt from e
        raise


class RememberedCtrlC:
    """Python's own Ctrl-C handler (it raises KeyboardInterrupt) that also remembers that one came:
    :func:`take_swallowed_ctrl_c` finds one that some library swallowed. One does at start-up:
    pybind11 turns a KeyboardInterrupt raised while Triton's C++ extension loads into an
    ImportError, and torch, importing Triton lazily as the model is built (``has_triton_package``),
    takes that for "Triton is not installed" and goes on; the run then trained as if no Ctrl-C had
    come (on a CPU, a SIGINT 2.2–3.0 s into a run under load: 8 of 36 runs)."""

    def __init__(self):
        self.came = False

    def __call__(self, signum, frame):
        self.came = True
        raise KeyboardInterrupt


def take_swallowed_ctrl_c(previous) -> bool:
    """Whether a stop that :func:`stops_as_ctrl_c` raised as a KeyboardInterrupt (a Ctrl-C, or a SIGTERM
    or SIGHUP passed on as one, where Python's own Ctrl-C handler was in place; a SIGTERM or SIGHUP,
    where Ctrl-C is ignored) came since the last call. Nothing in rnnlab that catches a
    KeyboardInterrupt trains on in the same process, so for the trainer, which calls this as it takes
    Ctrl-C over, it is one that a library swallowed. ``previous``: the Ctrl-C handler that the caller's
    own replaced. The caller acts on it, so it is forgotten here (a second call says False)."""
    for handler in (previous, signal.getsignal(signal.SIGTERM)):
        memory = handler if isinstance(handler, RememberedCtrlC) else getattr(handler, "remembered", None)
        if isinstance(memory, RememberedCtrlC) and memory.came:
            memory.came = False
            return True
    return False


def raise_swallowed_ctrl_c() -> None:
    """Raise, as a KeyboardInterrupt, a stop that a library swallowed since the last look
    (:func:`take_swallowed_ctrl_c`, with the Ctrl-C handler in place now). For the commands that
    train nothing (``eval``, ``sample``, ``export``, ``analyze gradflow``), which look once their
    model is built, as Triton has loaded by then: without it such a command ran to its end through
    the Ctrl-C. Outside the ``rnnlab`` command (no :class:`RememberedCtrlC` in place) it does nothing."""
    if take_swallowed_ctrl_c(signal.getsignal(signal.SIGINT)):
        raise KeyboardInterrupt


# The signals that stop a run: Ctrl-C, and those handled as one (stops_as_ctrl_c)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def reclaim_handlers() -> None:
    """Put this process's Python handlers (or ignores) of the stop signals back in the kernel,
    where a native library may have put its own since. LLVM does, inside Triton's compiler, at the
    process's first compile without a cache: a handler that resets the signal to its default
    action on entry and, after putting the earlier handlers back, raises it again; a second
    signal close behind the first (``timeout`` sends one to the process and one to its process
    group, a scheduler one to every process of a job) then meets the default action and ends the
    run at once, silently and unsaved (on a CPU, 26 of 30 cold-compiled processes given two
    SIGINTs back to back; none after this: results/ctrl-c-llvm-cpu). LLVM registers once a process,
    so after this it stays out. It costs one system call per signal, so the trainer calls it after
    every step and evaluation. Main thread only (elsewhere it does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in STOP_SIGNALS:
        handler = signal.getsignal(s)
        if callable(handler) or handler is signal.SIG_IGN:
            signal.signal(s, handler)


# SIGTERMs (and SIGHUPs) this close together are one stop: a scheduler that signals every process
# of a job reaches a torchrun worker directly and again through torchrun (and its launcher)
SAME_STOP_S = 5.0


@contextlib.contextmanager
def stops_as_ctrl_c():
    """Inside the block a SIGTERM (``kill``, ``timeout``, a batch scheduler's stop, ``docker
    stop``) or a SIGHUP (the terminal closed; output to it then goes to /dev/null) is
    handled as a Ctrl-C: training stops after its step and saves a checkpoint, a suite after its
    runs have saved theirs, and a second one aborts as a second Ctrl-C does (a SIGINT sent to the
    process reaches whichever Ctrl-C handler is in place), unless its handler runs within
    ``SAME_STOP_S`` seconds of the first's (then it is the same stop, delivered twice, and
    ignored). Where Ctrl-C itself is ignored (``cmd &`` in a script) each such stop is the
    KeyboardInterrupt that Python's Ctrl-C handler would raise: ended at once by the signal, a
    ``rnnlab bench`` took its runs with it unsaved (they end with it, ``ends_with_parent``) and
    ``rnnlab data prepare`` left its temporary corpus behind. A SIGHUP that is ignored (``nohup``)
    stays ignored. Output to a terminal survives its hang-up (``terminal_output``). A stop raised as a
    KeyboardInterrupt (a Ctrl-C under Python's own handler, or one of these where Ctrl-C is ignored) is
    remembered (:class:`RememberedCtrlC`), so that the trainer stops on one that a library swallowed as
    the run started (:func:`take_swallowed_ctrl_c`). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    last: float | None = None  # when the last stop signal that counted was handled (time.monotonic)
    remembered = RememberedCtrlC()  # the Ctrl-C handler where Python's own was in place

    def handle(signum, frame):
        nonlocal last
        if signum == signal.SIGHUP:
            discard_output(*terminals)
        now = time.monotonic()
        if last is not None and now - last < SAME_STOP_S:
            return
        last = now
        print(f"\nrnnlab: {signal.Signals(signum).name} received: handled as a Ctrl-C", file=sys.stderr)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # `cmd &` in a script: Python's own Ctrl-C
            remembered(signum, frame)  # raises it
        signal.raise_signal(signal.SIGINT)

    handle.remembered = remembered  # take_swallowed_ctrl_c's way to it where Ctrl-C is ignored
    python_ctrl_c = [signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else []
    with (terminal_output() as terminals, handled(handle, [signal.SIGTERM], [signal.SIGHUP]),
          handled(remembered, python_ctrl_c)):
        yield


# the pid of the process whose death ends this one: ``rnnlab train --gpus N``'s launcher's, in
# torchrun's environment; torchrun's, in its workers'; ``rnnlab bench --gpus N``'s, in its runs'
PARENT_ENV = "RNNLAB_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def ended_with_this_process() -> dict[str, str]:
    """The environment entry to give a child whose ``ends_with_parent`` should end it when this
    process dies (a ``kill -9`` included)."""
    return {PARENT_ENV: str(os.getpid())}


def ends_with_parent() -> None:
    """End this process (SIGKILL) when the process named by ``PARENT_ENV``, its parent, dies, and
    take the variable out of the environment (children are not its children). ``--gpus N``'s
    launcher and torchrun (and ``rnnlab bench --gpus N``) each start their children in a session
    of their own and pass on every stop they can handle; a ``kill -9`` they cannot, and without
    this it ended the launcher alone (or torchrun, or the bench, alone), leaving torchrun and the
    workers (or the workers, or the runs) training on, holding the run folder's lock. A parent
    that died before this call ends this process at once (one between them, a wrapper that did
    not exec, is the parent whose death counts then).
    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere, or without the variable, nothing."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent or not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent) and not process_lives(int(parent)):  # it died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)


# /proc/PID/stat's state letters of a process that has ended: a zombie (Z) or dead (X)
ENDED_STATES = "ZX"


def process_lives(pid: int) -> bool:
    """Whether process ``pid`` lives: not when gone, nor when in an ``ENDED_STATES`` (a zombie: ended,
    its own parent yet to reap it, as a ``kill -9``'ed launcher whose caller waits on pipes this
    process holds)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = proc_stat(pid)
    return stat is None or stat[0] not in ENDED_STATES  # without /proc, kill's answer


def proc_stat(pid: int | str) -> tuple[str, int] | None:
    """``(state, start time)`` of a process from ``/proc/PID/stat`` (Linux): its state letter ("Z"
    for a zombie) and start time in clock ticks after boot; None when there is none to read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold anything
    return fields[0], int(fields[19])  # fields 3 (state) and 22 (start time)
