"""Mamba2's per-head decay, shared by the layers that gate a matrix state with it (E88, Gated
DeltaNet; Mamba2 itself draws ``dt_bias`` the same way)::

    log a_t = -exp(A_log) * softplus(x_t W_a^T + dt_bias)          (one scalar per head)

Init (mamba_ssm / fla): ``dt`` log-uniform in [1e-3, 0.1], floored at 1e-4, ``dt_bias`` its
inverse softplus; ``A_log = log A`` with ``A ~ U(low, high)``. Both are marked
``_no_weight_decay`` as in mamba_ssm and fla: rnnlab's optimizers then give them no weight decay
(``rnnlab.train.optim.param_groups``; ``decay_marked`` decays them too, as the reference study did).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.ops.dtypes import compute_dtype


def dt_bias_init(heads: int) -> nn.Parameter:
    """``dt_bias [heads]``: the inverse softplus of ``dt`` log-uniform in [1e-3, 0.1] (floor 1e-4)."""
    dt_min, dt_max = 1e-3, 0.1
    dt = torch.exp(torch.rand(heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = torch.clamp(dt, min=1e-4)
    return no_weight_decay(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))


def a_log_init(heads: int, low: float, high: float) -> nn.Parameter:
    """``A_log [heads] = log A`` with ``A ~ U(low, high)``."""
    return no_weight_decay(nn.Parameter(torch.log(torch.empty(heads, dtype=torch.float32).uniform_(low, high))))


def no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    p._no_weight_decay = True
    return p


def log_decay(a: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """``-exp(A_log) * softplus(a + dt_bias)`` for the per-head projection ``a [..., H]``, in the
    compute dtype (fp32, or float64 for float64)."""
    ct = compute_dtype(a.dtype)
    return -torch.exp(A_log.to(ct)) * F.softplus(a.to(ct) + dt_bias.to(ct))
