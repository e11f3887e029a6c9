"""minLSTM (Feng et al. 2024; the seed's ``min_rnn_baseline.py``, spec §1.5).

    [h~, f, i] = x W^T            in_proj.weight: [3*di, D], no bias;  di = int(D * expansion)
    f'_t = s(f)/(s(f)+s(i)),  i'_t = s(i)/(s(f)+s(i))    (s = sigmoid), computed in log space:
        log f' = -softplus(softplus(-f) - softplus(-i)),  log i' = -softplus(softplus(-i) - softplus(-f))
    h_t = f'_t * h_{t-1} + i'_t * g(h~_t),   h_0 = 0,   g as in minGRU
    y = h W_out^T                 out_proj.weight: [D, di], only when expansion != 1 (else y = h)

The recurrence is ``linear_scan(a=f', b=i'*g(h~))``; gates and scan run in fp32 (fp64 stays fp64)
and the result is cast back to the input dtype. No output gate; xavier_uniform projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.layers.base import State
from rnnlab.layers.mingru import MinRNNConfig, compute_dtype, g
from rnnlab.ops.scan import fused_gate_scan, linear_scan


class MinLSTMConfig(MinRNNConfig):
    """minLSTM: ``in_proj`` D -> 3*di (h~, f, i)."""


class MinLSTM(nn.Module):
    """minLSTM mixer: ``h_t = f'_t h_{t-1} + i'_t g(h~_t)``; see the module docstring."""

    def __init__(self, cfg: MinLSTMConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        di = cfg.d_inner
        self.in_proj = nn.Linear(cfg.dim, 3 * di, bias=False)
        self.out_proj = nn.Linear(di, cfg.dim, bias=False) if cfg.expansion != 1 else None
        nn.init.xavier_uniform_(self.in_proj.weight)
        if self.out_proj is not None:
            nn.init.xavier_uniform_(self.out_proj.weight)

    def _coeffs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b) = (f', i' * g(h~))`` in the compute dtype, for ``x: [..., D]``."""
        h_tilde, f, i = self.in_proj(x).to(compute_dtype(x.dtype)).chunk(3, dim=-1)
        diff = F.softplus(-f) - F.softplus(-i)  # log s(i) - log s(f)
        log_f = -F.softplus(diff)
        log_i = -F.softplus(-diff)
        return torch.exp(log_f), torch.exp(log_i) * g(h_tilde)

    def _out(self, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h = h.to(dtype)
        return h if self.out_proj is None else self.out_proj(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = fused_gate_scan("minlstm", x, self.cfg.backend)
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
