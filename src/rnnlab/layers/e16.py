"""E16 "diagonal state-expanded Elman" (the reference's ``diagonal_state_elman.py``, ``level=16``).

    [x, z] = x W_in^T             in_proj.weight: [2*di, D], no bias;  di = int(D * expansion)
    x = silu(x)
    u_t = x_t @ B                 B: [di, ds], ds = di * state_expansion
    h_t = tanh(A * h_{t-1} + u_t),  A = sigmoid(log_A) [ds] (not input-dependent), h_0 = 0
    y_t = (h_t @ C) * silu(z_t)   C: [ds, di]
    out = y W_out^T               out_proj.weight: [D, di], no bias

Init: in_proj, out_proj, B, C xavier_uniform; log_A = 0 (A = 0.5). Per layer this is
``3*D*di + 2*s*di^2 + s*di`` parameters. The scan is the op ``diag_elman_scan``
(fp32 internally, fp64 for fp64; returns the input dtype); ``step`` runs the same op on one token
and keeps the state in that compute dtype.

Against the reference (``DiagonalStateElman``, ``selective=False``, no conv, as its ``LadderLM`` builds
it): the same forward and parameter count (checked at float64 with the same weights); weights follow
its init rules but not its order of random draws. Its ``selective`` (input-dependent A), ``use_conv``
and ``mamba2_init`` options are not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.layers.base import MAX_FACTOR, InnerWidth, State, check_options, op_backend_option
from rnnlab.ops.diag import BACKENDS, diag_elman_scan
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.options import option, positive


@dataclass
class E16Config(InnerWidth):
    """E16 options (the reference's Table B E16 used expansion 2)."""

    dim: int = 256
    expansion: float = option(1.0, help="inner width di = int(dim * expansion)", bounds=positive(MAX_FACTOR))
    state_expansion: int = option(2, help="state width ds = di * state_expansion (\"E16 s4\" means 4)",
                                  bounds=positive(MAX_FACTOR))
    backend: str = op_backend_option(BACKENDS)

    @property
    def d_state(self) -> int:
        return self.d_inner * self.state_expansion

    def validate(self) -> None:
        check_options(self)
        self.check_inner_width()


class E16(nn.Module):
    """E16 mixer: ``h_t = tanh(A * h_{t-1} + silu(x_t) B)``, ``y_t = (h_t C) * silu(z_t)``."""

    output_projection = "out_proj"  # what writes into the residual stream (rnnlab.layers.base)

    def __init__(self, cfg: E16Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        di, ds = cfg.d_inner, cfg.d_state
        self.in_proj = nn.Linear(cfg.dim, 2 * di, bias=False)
        self.B = nn.Parameter(torch.empty(di, ds))
        self.C = nn.Parameter(torch.empty(ds, di))
        self.log_A = nn.Parameter(torch.zeros(ds))
        self.out_proj = nn.Linear(di, cfg.dim, bias=False)
        for w in (self.in_proj.weight, self.B, self.C, self.out_proj.weight):
            nn.init.xavier_uniform_(w)

    def _input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, z)``: the scan input ``silu(x) @ B`` and the gate branch."""
        xr, z = self.in_proj(x).chunk(2, dim=-1)
        return F.silu(xr) @ self.B, z

    def _out(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj((h.to(z.dtype) @ self.C) * F.silu(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self._input(x)
        h, _ = diag_elman_scan(u, torch.sigmoid(self.log_A), None, backend=self.cfg.backend)
        return self._out(h, z)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        """``(h,)`` with ``h: [batch, ds]`` zeros, kept in the compute dtype (like the scan's)."""
        return (torch.zeros(batch, self.cfg.d_state, device=device, dtype=compute_dtype(dtype)),)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token: the op's reference on a length-1 sequence from the carried state."""
        u, z = self._input(x_t)
        h_t, h = diag_elman_scan(u.unsqueeze(1), torch.sigmoid(self.log_A), state[0], backend="naive")
        return self._out(h_t[:, 0], z), (h,)
