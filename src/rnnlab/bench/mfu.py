"""Model-FLOPs utilisation (MFU): the share of a GPU's dense bf16 peak that a training throughput
uses, counting 6 FLOPs per parameter and token (2 forward, 4 backward). Those are the FLOPs of the
projections' matrix products, which every model kind spends whatever its recurrence is, so MFU
compares kernels across kinds; a recurrence's own FLOPs are not counted."""

from __future__ import annotations

# Dense bf16 tensor-core peak in TFLOP/s (no sparsity), by a substring of the GPU's name
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
ASSUMED_PEAK_TFLOPS = 989.0  # what the benchmark scripts assume for a GPU not in the table (and say so)


def peak_tflops(gpu_name: str | None) -> float | None:
    """The dense bf16 peak of the GPU named ``gpu_name`` (``torch.cuda.get_device_name``), or None
    for a GPU not in :data:`PEAK_BF16_TFLOPS` or no GPU."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu_name and k in gpu_name), None)


def benchmark_peak(gpu_name: str | None, given: float | None = None) -> tuple[float, bool]:
    """``(peak TFLOP/s, assumed)`` for a benchmark script: ``given`` (its ``--peak-tflops``), else
    the table's, else :data:`ASSUMED_PEAK_TFLOPS` with ``assumed`` True (recorded beside the MFU)."""
    known = given or peak_tflops(gpu_name)
    return (known, False) if known else (ASSUMED_PEAK_TFLOPS, True)


def mfu(params: float, tok_per_s: float, peak: float, gpus: int = 1) -> float:
    """``6 * params * tok_per_s`` over ``gpus`` GPUs of ``peak`` TFLOP/s each, a fraction."""
    return 6 * params * tok_per_s / (gpus * peak * 1e12)
