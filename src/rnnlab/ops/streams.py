"""Work beside a latency-bound scan: a second CUDA stream, and GEMMs sized for the SMs the scan leaves.

E1 heads' scans run one program per head and batch tile, 28 of an H200's 132 SMs at 14 heads and
B = 32, for ~0.17 ms forward and ~0.29 ms backward a layer. A GEMM that does not wait on the scan
(E1's gate projection ``z = x W_z^T``) can run on the other SMs at the same time, but only when it
is sized for them: cuBLAS sizes its persistent GEMMs for every SM, so beside the scan their last
tiles wait for the scan's SMs and nothing is saved (``results/heads-overlap-h200``: −0.006 ms a
layer forward). PyTorch's experimental SM carveout, which cuBLASLt honours, sizes them for the rest:
0.168 ms saved a layer forward and 0.214 backward there.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def sm_carveout(n: int) -> Iterator[None]:
    """GEMMs launched inside the block run on cuBLASLt sized for all SMs but ``n`` (PyTorch's
    experimental carveout, read when a GEMM is launched); both settings restored after."""
    library = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library("cublaslt")
    torch._C._set_sm_carveout_experimental(n)
    try:
        yield
    finally:
        torch._C._set_sm_carveout_experimental(None)
        torch.backends.cuda.preferred_blas_library(library)


@functools.cache
def _side_stream(device: int) -> torch.cuda.Stream:
    """One second stream a GPU, the same for every call (and so for a CUDA graph's warm-up and
    capture)."""
    return torch.cuda.Stream(device)


def beside(scan: Callable, side: Callable, scan_sms: int | None, device: torch.device) -> tuple:
    """``(scan(), side())`` on ``device``: the scan on the current stream, then ``side`` on a second
    stream that waits only for the work queued before the scan, its GEMMs sized for all SMs but
    ``scan_sms``; work queued after this returns waits for both. The scan is queued first so that
    it takes its SMs before the GEMMs fill the rest. ``scan_sms`` None, a device that is not a
    GPU, or a scan that leaves fewer than half the SMs: one after the other on the current stream."""
    if scan_sms is None or device.type != "cuda" or \
            2 * scan_sms > torch.cuda.get_device_properties(device).multi_processor_count:
        return scan(), side()
    main = torch.cuda.current_stream(device)
    other = _side_stream(main.device.index)
    other.wait_stream(main)
    first = scan()
    with torch.cuda.stream(other), sm_carveout(scan_sms):
        second = side()
    main.wait_stream(other)
    return first, second
