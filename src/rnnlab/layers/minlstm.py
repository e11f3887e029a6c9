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

from rnnlab.layers.mingru import MinRNN, MinRNNConfig, g
from rnnlab.ops.dtypes import compute_dtype


class MinLSTMConfig(MinRNNConfig):
    """minLSTM: ``in_proj`` D -> 3*di (h~, f, i)."""


class MinLSTM(MinRNN):
    """minLSTM mixer: ``h_t = f'_t h_{t-1} + i'_t g(h~_t)``; see the module docstring."""

    KIND = "minlstm"
    PARTS = 3

    def _coeffs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b) = (f', i' * g(h~))`` in the compute dtype, for ``x: [..., D]``."""
        h_tilde, f, i = self.in_proj(x).to(compute_dtype(x.dtype)).chunk(3, dim=-1)
        diff = F.softplus(-f) - F.softplus(-i)  # log s(i) - log s(f)
        log_f = -F.softplus(diff)
        log_i = -F.softplus(-diff)
        return torch.exp(log_f), torch.exp(log_i) * g(h_tilde)
