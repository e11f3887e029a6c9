"""Model-FLOPs utilisation (MFU): the share of a GPU's dense bf16 peak that a training throughput
uses, counting 6 FLOPs per parameter and token (2 forward, 4 backward). Every parameter counts
once (a head tied to the embedding is one matrix, whose product with the final states is the
head's FLOPs; norms, biases, a scan's decay rates and an untied embedding, whose lookup multiplies
nothing, count too: an excess of about 256 x dim, 0.1% at 400M): those are the
FLOPs of the matrix products with weights, which every model kind spends whatever its recurrence
is, so MFU compares kernels across kinds. A recurrence's FLOPs beyond its weights' (Mamba2's
chunked scan, E88's state updates) are not counted; E1's recurrent weight W_h is a weight, so its
products are."""

from __future__ import annotations

import re

# Dense bf16 tensor-core peak in TFLOP/s (no sparsity) by the GPU's name (``torch.cuda.get_device_name``),
# first match wins: the PCIe and NVL boards of a chip run lower clocks and power than its SXM board
# (NVIDIA's datasheets: H100 PCIe 1,513 and H100 / H200 NVL 1,671 TFLOP/s with sparsity, SXM 1,979)
PEAK_BF16_TFLOPS = (
    (r"\bH[18]00\b.*\bPCIe\b", 756.0),  # H100 PCIe, H800 PCIe
    (r"\bH[12]00\b.*\bNVL\b", 835.0),  # H100 NVL, H200 NVL
    (r"\bG?H[128]00\b", 989.0),  # H100 SXM, H200 SXM, GH200, H800 SXM
    (r"\bA100\b", 312.0),  # A100 SXM and PCIe (not the RTX A1000)
)
# a MIG slice has a part of the GPU's SMs: no peak of the whole GPU is its peak
NO_PEAK = re.compile(r"\bMIG\b")
ASSUMED_PEAK_TFLOPS = 989.0  # what the benchmark scripts assume for a GPU not in the table (and say so)


def peak_tflops(gpu_name: str | None) -> float | None:
    """The dense bf16 peak of the GPU named ``gpu_name`` (``torch.cuda.get_device_name``), or None
    for a GPU not in :data:`PEAK_BF16_TFLOPS`, a MIG slice of one, or no GPU."""
    if not gpu_name or NO_PEAK.search(gpu_name):
        return None
    return next((v for pattern, v in PEAK_BF16_TFLOPS if re.search(pattern, gpu_name, re.IGNORECASE)), None)


def benchmark_peak(gpu_name: str | None, given: float | None = None) -> tuple[float, bool]:
    """``(peak TFLOP/s, assumed)`` for a benchmark script: ``given`` (its ``--peak-tflops``), else
    the table's, else :data:`ASSUMED_PEAK_TFLOPS` with ``assumed`` True (recorded beside the MFU)."""
    known = given or peak_tflops(gpu_name)
    return (known, False) if known else (ASSUMED_PEAK_TFLOPS, True)


def peak_note(meta: dict) -> str:
    """The line a benchmark prints under its table for the peak its MFU is over (``meta``'s
    ``peak_tflops`` and ``peak_assumed``, from :func:`benchmark_peak`): a warning when assumed."""
    if meta.get("peak_assumed"):
        return (f"MFU is over an ASSUMED peak of {meta['peak_tflops']:g} TFLOP/s: {meta.get('device')} is not in "
                "rnnlab.bench.mfu's table (give its dense bf16 peak with --peak-tflops)")
    return f"MFU is over a dense bf16 peak of {meta['peak_tflops']:g} TFLOP/s ({meta.get('device')})"


def mfu(params: float, tok_per_s: float, peak: float, gpus: int = 1) -> float:
    """``6 * params * tok_per_s`` over ``gpus`` GPUs of ``peak`` TFLOP/s each, a fraction."""
    return 6 * params * tok_per_s / (gpus * peak * 1e12)
