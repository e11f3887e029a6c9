"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"; the reference's ``min_rnn_baseline.py``).

    [h~, k] = x W^T              in_proj.weight: [2*di, D], no bias;  di = int(D * expansion)
    z_t = sigmoid(k_t)
    h_t = (1 - z_t) * h_{t-1} + z_t * g(h~_t),   h_0 = 0
    g(x) = x + 0.5 if x >= 0 else sigmoid(x)
    y = h W_out^T                 out_proj.weight: [D, di], only when expansion != 1 (else y = h)

The gates and the recurrence are the op ``rnnlab.ops.mingru_scan`` over the raw projection (fp32
math, fp64 stays fp64; on CUDA one fused kernel computes the gates inside the scan). No output
gate; xavier_uniform projections.

Against the reference (ekg/elman ``min_rnn_baseline.py``, ``minGRU`` / ``minLSTM``): the same
forward and parameter count (checked at float64 with the same weights, to the ~1e-7 of its fp32
scan). Where it differs: it trains with the log-space (Heinsen) scan (here the backend
``heinsen``; the default runs the loop or its kernel, the same recurrence), takes the logs of its
gates in the projection's dtype (bf16 in its pure-bf16 runs; here the gates are fp32) and scans in
fp32 whatever the input (fp64 included); its one-token path, unused in training, adds 1e-6 to
minLSTM's gate sum. Its LMs (``MinGRULM``, ``MinLSTMLM``) use LayerNorm blocks, as rnnlab's does by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from rnnlab.layers.base import MAX_FACTOR, InnerWidth, State, check_options, op_backend_option
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.ops.scan import BACKENDS, mingru_scan
from rnnlab.options import option, positive


@dataclass
class MinRNNConfig(InnerWidth):
    """Config shared by minGRU and minLSTM (they differ only in their gates)."""

    dim: int = 256
    expansion: float = option(1.0, help="inner width di = int(dim * expansion); an output projection "
                                        "di -> dim is added when it is not 1", bounds=positive(MAX_FACTOR))
    backend: str = op_backend_option(BACKENDS, heinsen="the log-space parallel scan the reference trained with")

    def validate(self) -> None:
        check_options(self)
        self.check_inner_width()


class MinRNN(nn.Module):
    """What minGRU and minLSTM share: ``in_proj`` D -> PARTS*di (h~ and the gates), the
    recurrence op ``SCAN`` over that projection, the optional ``out_proj``, and ``step`` (the
    same op on one token). Subclasses set ``PARTS`` and ``SCAN``."""

    output_projection = "out_proj"  # None at expansion 1: the scan writes into the residual stream itself

    PARTS: int
    SCAN: Callable[..., tuple[torch.Tensor, torch.Tensor]]

    def __init__(self, cfg: MinRNNConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        di = cfg.d_inner
        self.in_proj = nn.Linear(cfg.dim, self.PARTS * di, bias=False)
        self.out_proj = nn.Linear(di, cfg.dim, bias=False) if cfg.expansion != 1 else None
        nn.init.xavier_uniform_(self.in_proj.weight)
        if self.out_proj is not None:
            nn.init.xavier_uniform_(self.out_proj.weight)

    def _out(self, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h = h.to(dtype)
        return h if self.out_proj is None else self.out_proj(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.SCAN(self.in_proj(x), None, backend=self.cfg.backend)
        return self._out(h, x.dtype)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        """``(h,)`` with ``h: [batch, di]`` zeros, kept in the compute dtype (like the scan's)."""
        return (torch.zeros(batch, self.cfg.d_inner, device=device, dtype=compute_dtype(dtype)),)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token: the op's reference on a length-1 sequence from the carried state."""
        h_t, h = self.SCAN(self.in_proj(x_t).unsqueeze(1), state[0], backend="naive")
        return self._out(h_t[:, 0], x_t.dtype), (h,)


class MinGRUConfig(MinRNNConfig):
    """minGRU: ``in_proj`` D -> 2*di (h~, gate)."""


class MinGRU(MinRNN):
    """minGRU mixer: ``h_t = (1 - z_t) h_{t-1} + z_t g(h~_t)``; see the module docstring."""

    PARTS = 2
    SCAN = staticmethod(mingru_scan)
