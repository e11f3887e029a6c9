"""Causal multi-head self-attention with rotary position embeddings (the Transformer baseline).

    q, k, v = split(qkv(x))                 # qkv: Linear(D, 3D, bias=False), heads of head_dim
    q, k = rope(q), rope(k)                 # rotate-half RoPE over the whole head_dim, base rope_base
    y = out(SDPA(q, k, v, is_causal=True))  # out: Linear(D, D, bias=False)

The MLP sub-block is added by the LM (``mlp_ratio``), not here. ``step`` keeps a growing key/value
cache: state = ``(k_cache, v_cache)``, each ``[B, n_heads, t, head_dim]`` (t = tokens seen; keys
stored after RoPE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.layers.base import MAX_SIZE, State, check_options
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.options import option, positive


@dataclass
class AttentionConfig:
    """Transformer attention options."""

    dim: int
    head_dim: int = option(64, help="width of each attention head (must divide dim, and be even for RoPE)",
                           bounds=positive(MAX_SIZE))
    rope_base: float = option(10000.0, help="RoPE base frequency", bounds=positive())

    @property
    def n_heads(self) -> int:
        return self.dim // self.head_dim

    def validate(self) -> None:
        check_options(self)
        if self.dim % self.head_dim:
            fits = max((h for h in range(2, min(self.dim, self.head_dim) + 1, 2) if self.dim % h == 0), default=None)
            hint = (f": --layer head_dim={fits} fits, or another even divisor of {self.dim}" if fits else
                    f": heads need an even divisor of dim, and {self.dim} has none below {self.head_dim}")
            raise ValueError(f"head_dim must divide dim ({self.dim}), got {self.head_dim}{hint}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")


def rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE. ``x: [B, H, T, hd]``, ``pos: [T]`` absolute positions; math in fp32
    (float64 for float64 inputs), result in ``x``'s dtype."""
    hd, ct = x.shape[-1], compute_dtype(x.dtype)
    inv_freq = base ** (-torch.arange(0, hd, 2, device=x.device, dtype=ct) / hd)
    ang = pos.to(ct)[:, None] * inv_freq  # [T, hd/2]
    cos, sin = ang.cos().repeat(1, 2), ang.sin().repeat(1, 2)  # [T, hd]
    xf = x.to(ct)
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Causal SDPA attention with RoPE (see the module docstring)."""

    state_grows = True  # the step state is a key/value cache, a position longer per token (rnnlab.layers.base)
    output_projection = "out"  # what writes into the residual stream (rnnlab.layers.base)

    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def _qkv(self, x: torch.Tensor, pos: torch.Tensor):
        """``x: [B, T, D]`` -> q, k, v ``[B, H, T, hd]`` with RoPE applied to q and k."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        return rope(q, pos, self.cfg.rope_base), rope(k, pos, self.cfg.rope_base), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        q, k, v = self._qkv(x, torch.arange(T, device=x.device))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).flatten(2))

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        empty = torch.zeros(batch, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return empty, empty.clone()

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        k_cache, v_cache = state
        pos = torch.tensor([k_cache.shape[2]], device=x_t.device)
        q, k, v = self._qkv(x_t.unsqueeze(1), pos)
        k_cache = torch.cat([k_cache, k.to(k_cache.dtype)], dim=2)
        v_cache = torch.cat([v_cache, v.to(v_cache.dtype)], dim=2)
        # one query attends to every cached position: no mask (is_causal would align top-left)
        y = F.scaled_dot_product_attention(q, k_cache.to(q.dtype), v_cache.to(q.dtype))
        return self.out(y.transpose(1, 2).flatten(2)).squeeze(1), (k_cache, v_cache)
