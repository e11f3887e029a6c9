"""The ``triton`` backend of ``ssd_scan``: ``mamba_ssm``'s Triton chunked SSD kernel
(``mamba_chunk_scan_combined``). Importing this module imports ``mamba_ssm`` (and fails without
it); the official Mamba2 layer needs the same package, so ``rnnlab.ops.ssd.import_mamba_ssm``
goes through here.

``mamba_ssm/__init__`` imports the Mamba-1 extension ``selective_scan_cuda`` unguarded, which a
CPU / Triton-only build does not have (docs/dependencies.md): an empty stub module stands in there,
and only there (a full build's extension stays what Mamba-1's ``selective_scan_fn`` calls).
"""

from __future__ import annotations

import sys
import types

import torch

try:
    import selective_scan_cuda  # noqa: F401 - mamba_ssm's CUDA build has it
except ImportError:
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))

import mamba_ssm  # noqa: E402
import mamba_ssm.modules.mamba2  # noqa: E402, F401
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: E402

__all__ = ["ssd_scan", "mamba_ssm"]


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunk_size: int = 256, initial_state: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, final_state)`` of the SSD recurrence by mamba_ssm's kernel (its autograd Function)."""
    return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=chunk_size, initial_states=initial_state,
                                     return_final_states=True)
