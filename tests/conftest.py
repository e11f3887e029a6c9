"""Shared test fixtures (kept small).

Without a GPU the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set before
any kernel module is imported), so the CPU suite checks them too (tests/test_kernels_interpreted.py),
a quarter faster with tests/triton_interpreter.py's patch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch


def _one_gpu_per_xdist_worker() -> None:
    """Under pytest-xdist (``-n N``) on a machine with several GPUs, worker ``gwK`` sees only GPU
    ``K mod count`` (benchmarks/gpu_tests.sh), so the workers spread over the GPUs. It must run
    before anything starts CUDA (``torch.cuda.is_available`` below does): CUDA reads
    ``CUDA_VISIBLE_DEVICES`` once. ``device_count`` asks NVML and starts nothing."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        count = torch.cuda.device_count()
        if count > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker[2:]) % count)


_one_gpu_per_xdist_worker()
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    from triton_interpreter import patch_the_language_once_per_launch

    patch_the_language_once_per_launch()


@pytest.fixture(autouse=True)
def _ctrl_c_as_in_a_terminal():
    """Every test starts with Python's own Ctrl-C handler, as in a terminal: a pytest launched with
    SIGINT ignored (``nohup``, ``cmd &`` in a script, some CI runners) would otherwise hand the
    interrupt tests an ignored SIGINT, which the trainer restores once its run ends."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def ctrl_c_on_call(monkeypatch):
    """``ctrl_c_on_call(owner, name, call, presses=1)`` patches ``owner.name`` so that its
    ``call``-th call first presses Ctrl-C (SIGINT to this process) ``presses`` times, then runs:
    a Ctrl-C arriving during that training step, evaluation or write (one press = stop and save,
    two = abort). Returns the list whose item counts the calls."""
    import signal

    def patch(owner, name: str, call: int, presses: int = 1) -> list[int]:
        real, calls = getattr(owner, name), [0]

        def pressed(*args, **kwargs):
            calls[0] += 1
            if calls[0] == call:
                for _ in range(presses):
                    signal.raise_signal(signal.SIGINT)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, pressed)
        return calls

    return patch


def pytest_runtest_logreport(report) -> None:
    """With ``RNNLAB_TEST_RECORD=DIR`` (benchmarks/gpu_tests.sh), each test's outcome and time go to
    DIR/test_times.tsv and each failure's traceback to DIR/failures.txt as soon as it ends, so a
    device call cut by its time limit still says why a test failed and which tests are slow. Written
    by the main process only (under xdist it receives every worker's reports)."""
    record = os.environ.get("RNNLAB_TEST_RECORD")
    if not record or "PYTEST_XDIST_WORKER" in os.environ:
        return
    if report.when == "call" or report.outcome != "passed":  # set-up/tear-down lines only when not passed
        with open(os.path.join(record, "test_times.tsv"), "a") as f:
            f.write(f"{report.nodeid}\t{report.when}\t{report.outcome}\t{report.duration:.1f}\n")
    if report.failed:
        with open(os.path.join(record, "failures.txt"), "a") as f:
            f.write(f"=== {report.nodeid} ({report.when}, {report.duration:.1f} s)\n{report.longreprtext}\n\n")


@pytest.fixture
def tiny_train():
    """Keyword args for a tiny, fast CPU training run (fp32, 2 layers, 32-byte windows)."""
    from rnnlab.train.config import TrainConfig

    def make(out, model="e1", dim=32, depth=2, **kw):
        """``kw``: any config fields by their flat keys (``steps=30``, ``optimizer="adamw"``)."""
        base = dict(batch_size=4, seq_len=32, steps=10, precision="fp32", lr=3e-3, eval_bytes=4096,
                    device="cpu", out=str(out))
        base.update(kw)
        return TrainConfig.from_dict({"model": {"model": model, "dim": dim, "depth": depth}, **base})

    return make


@pytest.fixture
def official_would_run(monkeypatch):
    """Make this CPU machine look like one where a Mamba2 or Gated DeltaNet layer on backend auto
    or official picks the official implementation: CUDA visible, mamba_ssm and fla's layer
    importable (as far as the choice goes). The official layers themselves are not stubbed (mamba_ssm
    does not import without its CUDA extension; fla's layer builds, and its forward refuses CPU
    tensors), so a test that builds one unasked fails. The returned function sets whether
    causal_conv1d imports (Mamba2's fused path; True unless set)."""
    import rnnlab.layers.gdn as gdn
    import rnnlab.layers.mamba2 as mamba2

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mamba2, "import_mamba_ssm", lambda: object())
    monkeypatch.setattr(gdn.FLA_LAYER, "available", lambda: True)
    monkeypatch.setattr(mamba2, "causal_conv1d_available", lambda: True)

    def fused(available: bool) -> None:
        monkeypatch.setattr(mamba2, "causal_conv1d_available", lambda: available)

    return fused


@pytest.fixture
def assert_xavier_uniform():
    """``check(w, what, near)``: ``w`` was drawn by xavier_uniform, i.e. lies within its bound
    sqrt(6 / (fan_in + fan_out)) and, over the hundreds of draws of a layer's matrix, its largest
    entry comes above ``near`` of it (a normal or a smaller init would not)."""

    def check(w: torch.Tensor, what: str = "", near: float = 0.9) -> None:
        bound = (6 / sum(w.shape)) ** 0.5
        largest = w.detach().abs().max().item()
        assert near * bound < largest <= bound, (what, largest, bound)

    return check


@pytest.fixture
def small_corpus(tmp_path):
    """A 20 kB text file (enough for seq_len 32 and a 1% held-out tail of 200 bytes)."""
    p = tmp_path / "corpus.txt"
    p.write_bytes((b"the quick brown fox jumps over the lazy dog. " * 500)[:20000])
    return p


@pytest.fixture
def run_lock_free():
    """``free(run)``: whether the writer lock of run folder ``run`` can be taken now (taken and let
    go at once; ``ValueError``: another process holds it). The kill -9 tests poll it: a process
    killed with its parent no longer holds its run's lock."""
    from rnnlab.train.rundir import RunDir

    def free(run) -> bool:
        lock = RunDir(run).lock
        try:
            lock.acquire()
        except ValueError:
            return False
        lock.release()
        return True

    return free


@pytest.fixture
def descendants():
    """``descendants(pid)``: ``pid``'s children, their children, ... (Linux: /proc/PID/task/TID/children);
    a process that ends while it is read is passed over. The kill -9 tests name the processes that
    must end with the one they kill (and end them themselves if the test fails)."""
    from pathlib import Path

    def tree(pid: int) -> list[int]:
        found, todo = [], [pid]
        while todo:
            p = todo.pop()
            for task in Path(f"/proc/{p}/task").glob("*"):
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue
            found.append(p)
        return found[1:]

    return tree


@contextmanager
def _single_threaded():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and OpenMP spin-waits make them 10x slower
    when other processes compete for the cores; run such tests single-threaded."""
    with _single_threaded():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """``one_thread`` for module-scoped fixtures that train (they are set up before it)."""
    with _single_threaded():
        yield
