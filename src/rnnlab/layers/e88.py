"""E88, the reference study's nonlinear matrix-state cell (ekg/elman's ``E88FLAHybrid`` as its
~480M runs used it: no short convolution, silu output gate, no output norm), our own code.

Per layer, with ``H`` heads, key size ``n`` and value size ``m = int(n * expansion)``::

    [q | k | v] = silu(x W_qkv^T)             qkv_proj: [2Hn + Hm, D]; q, k: [H, n], v: [H, m]
    q, k       <- q / (|q| + 1e-6), k / (|k| + 1e-6)          per head
    d_t         = exp(-exp(A_log) * softplus(x_t W_a^T + dt_bias))      a_proj: [H, D]; fp32
    S_t         = tanh(d_t S_{t-1} + k_t (v_t - S_{t-1}^T k_t)^T)       per head, S: [n, m], S_0 = 0
    y_t         = (S_t^T q_t) * silu(x_t W_g^T)                          g_proj: [Hm, D]
    out         = concat_heads(y) W_o^T                                  o_proj: [D, Hm]

Like E1 the state is nonlinear (tanh), so the recurrence is a sequential scan (the op
``rnnlab.ops.e88_scan``); many heads with small states keep every SM busy. The reference's
shape is "balanced", ``H * n ~ dim`` (its 480M config: dim 1792, depth 31, 49 heads, n 32);
``heads`` defaults to ``dim // n_state``.

Init: ``qkv_proj`` (one matrix, as the reference), ``a_proj``, ``g_proj`` and ``o_proj``
xavier_uniform; ``A_log = log U(0, 16)`` and ``dt_bias`` as in Mamba2 (``rnnlab.layers.decay``).
Per layer ``D (2Hn + 3Hm + H) + 2H`` parameters. ``step`` runs the op's reference on one token
and keeps the state ``[B, H, n, m]`` in the compute dtype.

Against the reference (ekg/elman ``e88_fla_hybrid.py``, ``E88FLAHybrid(use_conv=False, use_gate=True,
gate_activation="silu", use_output_norm=False)``, its PyTorch path): the same forward and parameter
count (checked at float64 with the same weights). Where it differs: the reference rounds the decay
to the activations' dtype before the scan (bf16 in its pure-bf16 runs; here it stays fp32) and its
``A_log`` path is fp32 even for fp64 inputs; it takes only ``n_state`` a multiple of 4 and its own
default is 8 heads, not balanced ones; weights follow its init rules but not its order of random draws. Its 480M runs
wrapped E88 in its later ``LadderLM``, with RMSNorm blocks and an fp32 residual, where rnnlab's LM
uses LayerNorm by default (``rnnlab.models.lm``; ``--norm rmsnorm --residual-in-fp32`` builds that one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.layers.base import MAX_FACTOR, MAX_SIZE, State, check_options, op_backend_option
from rnnlab.layers.decay import a_log_init, dt_bias_init, log_decay
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.ops.e88 import BACKENDS, e88_scan
from rnnlab.options import option, positive


@dataclass
class E88Config:
    """E88 options (the reference's: n 32, expansion 1, balanced heads)."""

    dim: int = 256
    n_state: int = option(32, help="key/query size n per head: the rows of each head's state",
                          bounds=positive(MAX_SIZE))
    expansion: float = option(1.0, help="value size per head m = int(n_state * expansion): the state's columns",
                              bounds=positive(MAX_FACTOR))
    heads: int | None = option(None, help="number of heads (default: balanced, max(1, dim // n_state))",
                               bounds=positive(MAX_SIZE))
    backend: str = op_backend_option(BACKENDS)

    @property
    def n_heads(self) -> int:
        return self.heads if self.heads is not None else max(1, self.dim // self.n_state)

    @property
    def head_v_dim(self) -> int:
        return int(self.n_state * self.expansion)

    def validate(self) -> None:
        check_options(self)
        if self.head_v_dim < 1:
            raise ValueError(f"expansion must give int(n_state*expansion) >= 1, got {self.expansion!r}")


def _unit(t: torch.Tensor) -> torch.Tensor:
    """``t / (|t| + 1e-6)`` over the last dimension, computed in the compute dtype."""
    u = t.to(compute_dtype(t.dtype))
    return (u / (u.norm(dim=-1, keepdim=True) + 1e-6)).to(t.dtype)


class E88(nn.Module):
    """E88 mixer, ``[B, T, dim] -> [B, T, dim]`` (see the module docstring)."""

    output_projection = "o_proj"  # what writes into the residual stream (rnnlab.layers.base)

    def __init__(self, cfg: E88Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        H, n, m = cfg.n_heads, cfg.n_state, cfg.head_v_dim
        self.qkv_proj = nn.Linear(cfg.dim, H * (2 * n + m), bias=False)
        self.a_proj = nn.Linear(cfg.dim, H, bias=False)
        self.A_log = a_log_init(H, 0, 16)
        self.dt_bias = dt_bias_init(H)
        self.g_proj = nn.Linear(cfg.dim, H * m, bias=False)
        self.o_proj = nn.Linear(H * m, cfg.dim, bias=False)
        for proj in (self.qkv_proj, self.a_proj, self.g_proj, self.o_proj):
            nn.init.xavier_uniform_(proj.weight)

    def _inputs(self, x: torch.Tensor):
        """The op's inputs for ``x [..., dim]``: ``q, k`` (unit rows) ``[..., H, n]`` and ``v
        [..., H, m]`` in ``x``'s dtype, the decay ``[..., H]`` in the compute dtype."""
        H, n, m = self.cfg.n_heads, self.cfg.n_state, self.cfg.head_v_dim
        q, k, v = F.silu(self.qkv_proj(x)).split([H * n, H * n, H * m], dim=-1)
        q, k = _unit(q.unflatten(-1, (H, n))), _unit(k.unflatten(-1, (H, n)))
        decay = torch.exp(log_decay(self.a_proj(x), self.A_log, self.dt_bias))
        return q, k, v.unflatten(-1, (H, m)), decay

    def _out(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``o_proj`` of the heads' readouts ``y [..., H, m]`` gated by ``silu(x W_g^T)``."""
        return self.o_proj(y.flatten(-2) * F.silu(self.g_proj(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = e88_scan(*self._inputs(x), None, backend=self.cfg.backend)
        return self._out(y, x)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        """``(S,)``: zeros ``[batch, H, n, m]`` in the compute dtype (like the op's final state)."""
        shape = (batch, self.cfg.n_heads, self.cfg.n_state, self.cfg.head_v_dim)
        return (torch.zeros(shape, device=device, dtype=compute_dtype(dtype)),)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token: the op's reference on a length-1 sequence from the carried state."""
        q, k, v, decay = (t.unsqueeze(1) for t in self._inputs(x_t))
        y, S = e88_scan(q, k, v, decay, state[0], backend="naive")
        return self._out(y[:, 0], x_t), (S,)
