"""GPU test set-up: under pytest-xdist (``-n N``) on a machine with several GPUs, worker ``gwK``
sees only GPU ``K mod count`` (``CUDA_VISIBLE_DEVICES``, set before CUDA starts in that worker), so
the workers spread over the GPUs instead of all sharing the first (benchmarks/gpu_tests.sh)."""

from __future__ import annotations

import os

import torch


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        count = torch.cuda.device_count()  # through NVML when it loads: CUDA not started yet
        if count > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker[2:]) % count)
