"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"; the seed's ``min_rnn_baseline.py``, spec §1.5).

    [h~, k] = x W^T              in_proj.weight: [2*di, D], no bias;  di = int(D * expansion)
    z_t = sigmoid(k_t)
    h_t = (1 - z_t) * h_{t-1} + z_t * g(h~_t),   h_0 = 0
    g(x) = x + 0.5 if x >= 0 else sigmoid(x)
    y = h W_out^T                 out_proj.weight: [D, di], only when expansion != 1 (else y = h)

The recurrence is ``linear_scan(a=1-z, b=z*g(h~))``; gates and scan run in fp32 (fp64 stays fp64)
and the result is cast back to the input dtype. No output gate; xavier_uniform projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rnnlab.layers.base import State, check_positive
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.ops.scan import BACKENDS, fused_gate_scan, linear_scan


def g(x: torch.Tensor) -> torch.Tensor:
    """minGRU's positive activation: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` otherwise."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


@dataclass
class MinRNNConfig:
    """Config shared by minGRU and minLSTM (they differ only in their gates)."""

    dim: int = 256
    expansion: float = 1.0  # di = int(dim * expansion); the seed's runs all used 1.0
    backend: str = "auto"  # linear_scan backend: auto | naive | triton | heinsen

    @property
    def d_inner(self) -> int:
        return int(self.dim * self.expansion)

    def validate(self) -> None:
        check_positive("dim", self.dim)
        if not isinstance(self.dim, int):
            raise ValueError(f"dim must be an integer, got {self.dim!r}")
        check_positive("expansion", self.expansion)
        if self.d_inner < 1:
            raise ValueError("expansion must give at least one inner unit (int(dim*expansion) >= 1), "
                             f"got {self.expansion!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


class MinRNN(nn.Module):
    """What minGRU and minLSTM share: ``in_proj`` D -> PARTS*di (h~ and the gates), the linear
    recurrence ``h_t = a_t h_{t-1} + b_t`` (fused gate+scan kernel ``KIND`` on CUDA), the optional
    ``out_proj``, and ``step``. Subclasses set ``KIND``, ``PARTS`` and ``_coeffs`` (their gates)."""

    KIND: str
    PARTS: int

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

    def _coeffs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` of the recurrence in the compute dtype, for ``x: [..., D]``."""
        raise NotImplementedError

    def _out(self, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h = h.to(dtype)
        return h if self.out_proj is None else self.out_proj(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = fused_gate_scan(self.KIND, x, self.cfg.backend)
        if fused is not None:  # CUDA: gates computed inside the scan kernel
            return self._out(fused(self.in_proj(x)), x.dtype)
        a, b = self._coeffs(x)
        return self._out(linear_scan(a, b, None, backend=self.cfg.backend), x.dtype)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        """``(h,)`` with ``h: [batch, di]`` zeros, kept in fp32 (fp64 stays fp64)."""
        return (torch.zeros(batch, self.cfg.d_inner, device=device, dtype=compute_dtype(dtype)),)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (h,) = state
        a, b = self._coeffs(x_t)
        h = a * h.to(a.dtype) + b
        return self._out(h, x_t.dtype), (h,)


class MinGRUConfig(MinRNNConfig):
    """minGRU: ``in_proj`` D -> 2*di (h~, gate)."""


class MinGRU(MinRNN):
    """minGRU mixer: ``h_t = (1 - z_t) h_{t-1} + z_t g(h~_t)``; see the module docstring."""

    KIND = "mingru"
    PARTS = 2

    def _coeffs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b) = (1 - z, z * g(h~))`` in the compute dtype, for ``x: [..., D]``."""
        h_tilde, k = self.in_proj(x).to(compute_dtype(x.dtype)).chunk(2, dim=-1)
        return torch.sigmoid(-k), torch.sigmoid(k) * g(h_tilde)
