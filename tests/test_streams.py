"""``rnnlab.ops.streams`` without a GPU: the order of a ``beside`` call's stream operations, the
carveout and BLAS library around its side work and their restoration, and when it runs the two one
after the other instead; torch.cuda's streams and PyTorch's process-wide settings are replaced by
recorders."""

from __future__ import annotations

import contextlib
import types
import warnings

import pytest
import torch

from rnnlab.ops import streams

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

GPU = torch.device("cuda", 0)


class Recorder:
    """A stream that logs its waits."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def wait_stream(self, other: Recorder) -> None:
        self.log.append(f"{self.name} waits for {other.name}")


@pytest.fixture
def gpu(monkeypatch):
    """A fake Hopper with 132 SMs: ``(log, settings)``, the carveout 8 and cuBLAS before a call."""
    log, settings = [], {"carveout": 8, "library": "cublas"}
    main, side = Recorder("main", log), Recorder("side", log)

    @contextlib.contextmanager
    def stream(s):
        log.append(f"on {s.name}")
        yield
        log.append(f"off {s.name}")

    def library(lib=None):
        if lib is None:
            return settings["library"]
        settings["library"] = lib

    monkeypatch.setattr(streams, "_CARVEOUT", True)
    monkeypatch.setattr(streams, "_hopper_sms", lambda index: 132)
    monkeypatch.setattr(streams, "_side_stream", lambda index: side)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch._C, "_get_sm_carveout_experimental", lambda: settings["carveout"], raising=False)
    monkeypatch.setattr(torch._C, "_set_sm_carveout_experimental", lambda n: settings.update(carveout=n), raising=False)
    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", library)
    return log, settings


def _work(log, settings):
    scan = lambda: log.append("scan") or "h"  # noqa: E731
    side = lambda: log.append(f"side work, carveout {settings['carveout']}, {settings['library']}") or "z"  # noqa: E731
    return scan, side


@pytest.mark.parametrize("scan_sms", [32, 66])  # 66 of 132: the scan leaves half the SMs, not fewer
def test_beside_queues_the_scan_first_and_the_side_work_sized_for_the_sms_left(gpu, scan_sms):
    log, settings = gpu
    assert streams.beside(*_work(log, settings), scan_sms, GPU) == ("h", "z")
    assert log == ["side waits for main", "scan", "on side", f"side work, carveout {scan_sms}, cublaslt",
                   "off side", "main waits for side"]
    assert settings == {"carveout": 8, "library": "cublas"}  # as before the call


def test_beside_joins_and_restores_when_the_side_work_raises(gpu):
    log, settings = gpu

    def side():
        raise RuntimeError("side work failed")

    with pytest.raises(RuntimeError, match="^side work failed$"):
        streams.beside(lambda: log.append("scan"), side, 32, GPU)
    assert log[-1] == "main waits for side" and settings == {"carveout": 8, "library": "cublas"}


BLAS_WARNING = ("torch.backends.cuda.preferred_blas_library is an experimental feature. If you see any error or "
                "unexpected behavior when this flag is set please file an issue on GitHub.")
CARVEOUT_WARNING = ("Setting the SM carveout for matmuls is a temporary experimental mitigation for performance "
                    "issues, while more robust solutions are developed. It may be removed at any moment without notice.")


def test_beside_keeps_pytorchs_experimental_warnings_out_of_the_log(gpu, monkeypatch):
    """PyTorch warns (once a process, from C++) when the BLAS library or the carveout is read or
    set, the side work's GEMM launches included: those two are silenced, any other warning of the
    side work is not."""
    log, settings = gpu
    library = torch.backends.cuda.preferred_blas_library

    def warning_library(lib=None):
        warnings.warn(BLAS_WARNING, UserWarning)
        return library(lib)

    def side():
        warnings.warn(CARVEOUT_WARNING, UserWarning)
        warnings.warn("a warning of the side work's own", UserWarning)
        return "z"

    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", warning_library)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert streams.beside(lambda: "h", side, 32, GPU) == ("h", "z")
    assert [str(w.message) for w in caught] == ["a warning of the side work's own"]
    assert settings == {"carveout": 8, "library": "cublas"}


def test_carveout_leaves_warnings_shown_once_shown_once(gpu):
    """A warning Python shows once a location stays shown once when the carveout runs between
    its calls (each layer's forward and backward): the filters are not changed at every call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            with streams.sm_carveout(8):
                pass
            warnings.warn("a warning of the training step's", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning of the training step's"]


@pytest.mark.parametrize("case", ["no scan SMs", "a scan holding over half", "a CPU", "no carveout", "not Hopper"])
def test_beside_runs_one_after_the_other(gpu, monkeypatch, case):
    log, settings = gpu
    scan_sms, device = {"no scan SMs": None, "a scan holding over half": 67}.get(case, 32), GPU
    if case == "a CPU":
        device = torch.device("cpu")
    if case == "no carveout":
        monkeypatch.setattr(streams, "_CARVEOUT", False)
    if case == "not Hopper":
        monkeypatch.setattr(streams, "_hopper_sms", lambda index: None)
    assert streams.beside(*_work(log, settings), scan_sms, device) == ("h", "z")
    assert log == ["scan", "side work, carveout 8, cublas"]


@pytest.mark.parametrize("major,sms", [(9, 132), (8, None), (10, None)])
def test_only_a_hopper_gpu_runs_the_side_work_beside(monkeypatch, major, sms):
    """The carveout was measured on Hopper (compute capability 9.x) only: an Ampere (8.x) or a
    Blackwell (10.x) GPU runs the two one after the other (no SM count)."""
    props = types.SimpleNamespace(major=major, minor=0, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    streams._hopper_sms.cache_clear()
    try:
        assert streams._hopper_sms(0) == sms
    finally:
        streams._hopper_sms.cache_clear()  # the next caller asks the real device
