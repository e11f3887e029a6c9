"""``rnnlab.train.peers``: how a rank tells that a peer's process on its machine has ended, and the
watch that ends a rank left waiting for such a peer (its end-to-end test, a rank stuck in a wait
that never notices, is in test_distributed.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from rnnlab.signals import proc_stat
from rnnlab.train import peers
from rnnlab.train.peers import LostPeerWatch, ended, local_peers, process_identity, watchable

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture
def fast(monkeypatch):
    """The watch looks every 20 ms and gives a dead peer's rank 0.2 s."""
    monkeypatch.setattr(peers, "POLL_S", 0.02)
    monkeypatch.setattr(peers, "GRACE_S", 0.2)


@pytest.fixture
def peer():
    """A process standing for a peer rank: ``(Popen, (pid, start time))``; killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc, (proc.pid, proc_stat(proc.pid)[1])
    finally:
        proc.kill()
        proc.wait()


def test_this_process_is_identified_by_its_machine_pid_and_start_time(monkeypatch):
    machine, pid, start = process_identity()
    assert pid == os.getpid() and start == proc_stat(os.getpid())[1] > 0
    assert machine.startswith(open("/proc/sys/kernel/random/boot_id").read().strip())
    assert machine.endswith(os.readlink("/proc/self/ns/pid"))  # pids compare within one namespace only
    # a /proc mounted for another pid namespace (``unshare -pf`` without its own /proc) shows this
    # process under another pid: nothing there can be watched by the pids the ranks know
    real = os.readlink
    monkeypatch.setattr(peers.os, "readlink", lambda p: "4242" if p == "/proc/self" else real(p))
    assert process_identity() is None


def test_a_processs_stat_is_its_state_and_start_time_whatever_its_name(peer):
    """The start time is field 22 of /proc/PID/stat (clock ticks after boot: this peer started
    within seconds of now), counted after the name's last ")", which a name may hold too."""
    proc, (pid, start) = peer
    boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime "))
    assert abs(boot + start / os.sysconf("SC_CLK_TCK") - time.time()) < 30
    renamed = subprocess.Popen([sys.executable, "-c", "import ctypes, time; "
                                "ctypes.CDLL(None).prctl(15, b'x) Z 1 2 3', 0, 0, 0); print(1, flush=True); time.sleep(60)"],
                               stdout=subprocess.PIPE, text=True)  # PR_SET_NAME
    try:
        renamed.stdout.readline()
        assert open(f"/proc/{renamed.pid}/comm").read().strip() == "x) Z 1 2 3"
        state, started = proc_stat(renamed.pid)
        assert state in "SR" and started >= start
    finally:
        renamed.kill()
        renamed.wait()


def test_a_process_has_ended_once_it_is_a_zombie_or_gone_or_its_pid_is_reused(peer):
    proc, (pid, start) = peer
    assert not ended(pid, start)
    assert ended(pid, start + 1)  # another process that got the pid since
    proc.kill()
    deadline = time.monotonic() + 10
    while proc_stat(pid)[0] != "Z":  # killed, not reaped yet: its parent has not waited for it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert ended(pid, start)
    proc.wait()
    assert proc_stat(pid) is None and ended(pid, start)


def test_peers_are_watched_only_when_all_of_them_read_as_running(peer):
    """Read just after they answered, every peer runs: one that reads as ended then means this
    machine's /proc does not show them as they see themselves, and none is watched."""
    _, ident = peer
    me = (os.getpid(), proc_stat(os.getpid())[1])
    assert watchable({1: me, 2: ident}) == {1: me, 2: ident}
    assert watchable({1: me, 2: (ident[0], ident[1] + 1)}) == {}
    assert watchable({}) == {}


def test_the_local_peers_are_the_other_ranks_on_this_machine():
    here, there = "boot-a pid:[1]", "boot-b pid:[1]"
    identities = [(here, 10, 100), (there, 11, 101), None, (here, 13, 103), (here, 14, 104)]
    assert local_peers(identities, 0) == {3: (13, 103), 4: (14, 104)}
    assert local_peers(identities, 3) == {0: (10, 100), 4: (14, 104)}
    assert local_peers(identities, 1) == {}  # alone on its machine
    assert local_peers(identities, 2) == {}  # a rank that cannot tell (not Linux) watches none


def _ends(watch_peers, busy=lambda: False, hold: threading.Event | None = None):
    """A watch whose ``end`` records the rank it names and whether its thread called it, then
    returns (once ``hold`` is set, if given), where the real one ends the process."""
    calls: list[tuple[int, bool]] = []

    def end(rank):
        calls.append((rank, threading.current_thread() is watch._thread))
        if hold is not None:
            hold.wait(10)

    watch = LostPeerWatch(watch_peers, end, busy)
    return watch, calls


def _wait_for(calls, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_peer_that_ended_ends_this_rank_after_the_grace(fast, peer):
    proc, ident = peer
    watch, calls = _ends({1: (os.getpid(), proc_stat(os.getpid())[1]), 3: ident})
    with watch:
        time.sleep(0.1)
        assert calls == []  # every peer runs
        proc.kill()
        killed = time.monotonic()
        _wait_for(calls)
        assert calls == [(3, True)] and time.monotonic() - killed >= peers.GRACE_S
        time.sleep(0.1)
        assert calls == [(3, True)]  # once


def test_a_checkpoint_being_written_is_let_finish_first(fast, peer):
    proc, ident = peer
    writing = threading.Event()
    writing.set()
    watch, calls = _ends({1: ident}, busy=writing.is_set)
    with watch:
        proc.kill()
        time.sleep(peers.GRACE_S + 0.3)
        assert calls == []
        writing.clear()
        _wait_for(calls)
        assert calls == [(1, True)]


def test_leaving_the_block_stops_the_watch(fast, peer):
    """A rank that ends on its own (the block's exit: a failure it records, or the run's end)
    is not ended again by the watch, even when its peer ends within the grace."""
    proc, ident = peer
    watch, calls = _ends({1: ident})
    with watch:
        proc.kill()
        time.sleep(peers.GRACE_S / 4)
    time.sleep(peers.GRACE_S + 0.3)
    assert calls == [] and not watch._thread.is_alive()


def test_no_peers_on_this_machine_start_no_thread():
    watch, calls = _ends({})
    with watch:
        assert watch._thread is None


def test_once_the_thread_ends_the_rank_leaving_the_block_waits_for_that_end(fast, peer):
    """The thread began to end the rank (its ``end`` has not returned: the process is going): the
    block's exit, a failure of the rank's own that it would record, waits instead of going on."""
    proc, ident = peer
    hold = threading.Event()
    watch, calls = _ends({1: ident}, hold=hold)
    watch.__enter__()
    proc.kill()
    _wait_for(calls)
    exiting = threading.Thread(target=watch.__exit__, args=(None, None, None), daemon=True)
    exiting.start()
    exiting.join(0.3)
    assert calls == [(1, True)] and exiting.is_alive()
    hold.set()  # the end is over (in a rank: the process is gone)
    exiting.join(5)
    assert not exiting.is_alive()


def test_once_the_block_is_left_the_thread_does_not_end_the_rank(fast, peer):
    """The block's exit and the thread's decision at the same moment: the thread finds the block
    has claimed the end (here the exit runs inside the thread's last look at ``busy``)."""
    proc, ident = peer
    left = []

    def busy():
        if not left:
            left.append(True)
            watch.__exit__(None, None, None)
        return False

    watch, calls = _ends({1: ident}, busy=busy)
    watch.__enter__()
    proc.kill()
    watch._thread.join(5)
    assert left and calls == [] and not watch._thread.is_alive()


@pytest.fixture
def closing(monkeypatch):
    """A 2-rank context whose process group reads as up, its teardown and ``end_lost_rank``
    recorded: ``(ctx, ends, destroyed)``."""
    from rnnlab.train import distributed

    ends, destroyed = [], []
    monkeypatch.setattr(distributed.DistContext, "initialized", property(lambda self: not destroyed))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: destroyed.append(True))
    monkeypatch.setattr(distributed, "end_lost_rank", lambda rank, message: ends.append((rank, message)))
    return distributed.DistContext(rank=1, world_size=2, backend="gloo"), ends, destroyed


def test_a_peer_gone_at_the_closing_barrier_ends_the_rank_in_one_line(closing, monkeypatch):
    """``DistContext.close``: a closing barrier that fails because a peer is gone (gloo's error)
    ends the rank through ``end_lost_rank`` with one line saying training had ended, not with
    gloo's traceback; any other error is raised, after the teardown."""
    ctx, ends, destroyed = closing
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                        "[127.0.0.1]:2994: Connection reset by peer. This is typically caused by ...")
    monkeypatch.setattr(ctx, "barrier", lambda: (_ for _ in ()).throw(gloo))
    ctx.close()
    assert ends == [(1, "another rank ended at the closing barrier, after this rank's training ended "
                        "(Read error [127.0.0.1]:2994: Connection reset by peer)")]
    monkeypatch.setattr(ctx, "barrier", lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: an illegal memory access")))
    destroyed.clear()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        ctx.close()
    assert destroyed == [True] and len(ends) == 1


def test_a_peer_that_ends_while_the_closing_barrier_waits_ends_the_rank(fast, peer, closing, monkeypatch):
    """A closing barrier that never notices its peer is gone (NCCL's waits until the timeout) is
    watched: the peer's process ending ends this rank after the grace, with its line; a barrier
    that every rank reaches closes without a word."""
    ctx, ends, destroyed = closing
    proc, ident = peer
    ctx.local_peers = {0: ident}
    monkeypatch.setattr(ctx, "barrier", lambda: None)
    ctx.close()
    assert ends == [] and destroyed == [True]
    destroyed.clear()

    def waits():  # until the watch has ended the rank (end_lost_rank returns here)
        proc.kill()
        _wait_for(ends)

    monkeypatch.setattr(ctx, "barrier", waits)
    ctx.close()
    assert ends == [(1, "another rank ended at the closing barrier, after this rank's training ended "
                        "(rank 0's process has ended)")] and destroyed == [True]
