"""Work beside a latency-bound scan: a second CUDA stream, and GEMMs sized for the SMs the scan leaves.

E1 heads' scans run one program per head and batch tile, 28 of an H200's 132 SMs at 14 heads and
B = 32, for ~0.17 ms forward and ~0.29 ms backward a layer. A GEMM that does not wait on the scan
(E1's gate projection ``z = x W_z^T``) can run on the other SMs at the same time, but only when it
is sized for them: cuBLAS sizes its persistent GEMMs for every SM, so beside the scan their last
tiles wait for the scan's SMs and nothing is saved (``results/heads-overlap-h200``: −0.006 ms a
layer forward). PyTorch's experimental SM carveout (2.7+), which cuBLASLt honours, sizes them for
the rest: there 0.168 ms saved a layer forward, 0.214 backward (with out_proj's weight gradient
among the GEMMs). Measured on Hopper only; other GPUs, and PyTorch without the carveout, run the
two one after the other. The carveout and the preferred BLAS library are process-wide settings:
:func:`beside` assumes no other thread of the process launches GEMMs meanwhile (rnnlab's training
runs one thread a process).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable, Iterator

import torch

_CARVEOUT = all(hasattr(torch._C, f"_{op}_sm_carveout_experimental") for op in ("get", "set"))  # PyTorch 2.7+


# PyTorch's warnings that the BLAS library and the SM carveout are experimental features (given
# when either is read or set, a GEMM's launch included)
EXPERIMENTAL = r".*(preferred_blas_library|SM carveout).*experimental"


def _silence_experimental() -> None:
    """Keep PyTorch's two "experimental" warnings out of the user's log: a filter first in the
    process's list, added only when it is not there already. Not ``warnings.catch_warnings`` at
    each call: every change of the filters makes Python show again, at each step, the other
    warnings it shows once."""
    first = warnings.filters[0] if warnings.filters else None
    if not (first and first[0] == "ignore" and first[1] is not None and first[1].pattern == EXPERIMENTAL):
        warnings.filterwarnings("ignore", message=EXPERIMENTAL)


@contextlib.contextmanager
def sm_carveout(n: int) -> Iterator[None]:
    """GEMMs launched inside the block run on cuBLASLt sized for all SMs but ``n`` (PyTorch's
    experimental carveout, read when a GEMM is launched); the previous carveout and BLAS library
    are restored after, also on an error. PyTorch's warnings that both are experimental are kept
    out of the user's log (:func:`_silence_experimental`)."""
    _silence_experimental()
    library, carveout = torch.backends.cuda.preferred_blas_library(), torch._C._get_sm_carveout_experimental()
    try:
        torch.backends.cuda.preferred_blas_library("cublaslt")
        torch._C._set_sm_carveout_experimental(n)
        yield
    finally:
        torch._C._set_sm_carveout_experimental(carveout)
        torch.backends.cuda.preferred_blas_library(library)


@functools.cache
def _side_stream(device: int) -> torch.cuda.Stream:
    """One second stream a GPU, the same for every call (and so for a CUDA graph's warm-up and
    capture)."""
    return torch.cuda.Stream(device)


@functools.cache
def _hopper_sms(device: int) -> int | None:
    """The GPU's SM count if it is a Hopper (where the carveout was measured), else None."""
    props = torch.cuda.get_device_properties(device)
    return props.multi_processor_count if props.major == 9 else None


def beside(scan: Callable, side: Callable, scan_sms: int | None, device: torch.device) -> tuple:
    """``(scan(), side())`` on ``device``: the scan on the current stream, then ``side`` on a second
    stream that waits only for the work queued before the scan, its GEMMs sized for all SMs but
    ``scan_sms``; work queued after this returns waits for both (also when ``side`` raises). The
    scan is queued first so that it takes its SMs before the GEMMs fill the rest. ``side`` should
    write into tensors allocated before the call (on the current stream). One after the other on
    the current stream instead: ``scan_sms`` None, not a Hopper GPU, PyTorch without the
    carveout, or a scan that leaves fewer than half the SMs."""
    sms = _hopper_sms(device.index) if scan_sms is not None and device.type == "cuda" and _CARVEOUT else None
    if sms is None or 2 * scan_sms > sms:
        return scan(), side()
    main = torch.cuda.current_stream(device)
    other = _side_stream(device.index)
    other.wait_stream(main)
    first = scan()
    try:
        with torch.cuda.stream(other), sm_carveout(scan_sms):
            second = side()
    finally:
        main.wait_stream(other)
    return first, second
