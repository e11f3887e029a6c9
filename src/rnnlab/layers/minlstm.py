"""minLSTM (Feng et al. 2024; the reference's ``min_rnn_baseline.py``).

    [h~, f, i] = x W^T            in_proj.weight: [3*di, D], no bias;  di = int(D * expansion)
    f'_t = s(f)/(s(f)+s(i)),  i'_t = s(i)/(s(f)+s(i))    (s = sigmoid), computed in log space:
        log f' = -softplus(softplus(-f) - softplus(-i)),  log i' = -softplus(softplus(-i) - softplus(-f))
    h_t = f'_t * h_{t-1} + i'_t * g(h~_t),   h_0 = 0,   g as in minGRU
    y = h W_out^T                 out_proj.weight: [D, di], only when expansion != 1 (else y = h)

The gates and the recurrence are the op ``rnnlab.ops.minlstm_scan`` over the raw projection (fp32
math, fp64 stays fp64). No output gate; xavier_uniform projections. Against the reference: as
minGRU (``rnnlab.layers.mingru``).
"""

from __future__ import annotations

from rnnlab.layers.mingru import MinRNN, MinRNNConfig
from rnnlab.ops.scan import minlstm_scan


class MinLSTMConfig(MinRNNConfig):
    """minLSTM: ``in_proj`` D -> 3*di (h~, f, i)."""


class MinLSTM(MinRNN):
    """minLSTM mixer: ``h_t = f'_t h_{t-1} + i'_t g(h~_t)``; see the module docstring."""

    PARTS = 3
    SCAN = staticmethod(minlstm_scan)
