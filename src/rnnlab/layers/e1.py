"""E1, the seed's gated Elman mixer (spec §1.2), plus the issue-7 variants as config switches.

Default path (every switch at its default reproduces the seed's E1 exactly)::

    x, z = split(x @ W_in^T)                     W_in: [2*di, D], no bias; di = int(D*expansion)
    x    = silu(causal_depthwise_conv(x))        conv = kernel size; 0 (default) = no conv
    h_t  = tanh(x_t @ W_x^T + h_{t-1} @ Wh_eff^T + b)     W_x, W_h: [di, di], b: [di]; h_{-1} = 0
    y_t  = h_t * silu(z_t)
    out  = y @ W_out^T                           W_out: [D, di], no bias

Spectral norm (``norm="spectral"``, default): ``power_iters`` (3) power iterations under no_grad,
``v = normalize(W_h^T u)``, ``u = normalize(W_h v)`` (normalize adds 1e-8), then
``sigma = |u^T W_h v|`` WITH grad and ``Wh_eff = W_h * spectral_radius / (sigma + 1e-8)``: W_h is
always rescaled to spectral norm ~0.99 (not clamped). ``u`` is a plain attribute (not saved),
initialised randn-normalised. It is updated only by ``forward`` in training mode; in eval mode and
in ``step`` the iterations start from the current ``u`` and their result is discarded, so
``step`` and an eval ``forward`` use the same Wh_eff.

Variants (issue 7), all in this one layer; K = di * state_expansion is the state width:

* ``heads=n``: block-diagonal ``W_h: [n, K/n, K/n]``; head i evolves with its own block,
  ``h_t[i] = tanh((x_t W_x^T + b)[i] + h_{t-1}[i] W_h[i]^T)``. W_x stays dense, out_proj mixes
  heads. Spectral norm is taken per head (u: [n, K/n]).
* ``selective="decay"``: ``h_t = tanh(x_t W_x^T + b + a_t * (h_{t-1} Wh_eff^T))`` with
  ``a_t = sigmoid(x_t W_a^T + b_a)``, ``W_a: [K, di]``, ``b_a: [K]`` init +3 (a ~ 0.95).
* ``selective="lowrank"``: input-dependent recurrence ``W_h,t = Wh_eff + U diag(s_t) V^T`` with
  ``s_t = x_t W_s^T`` (``W_s: [r, di]``, ``U, V: [K, r]``, r = ``selective_rank``), i.e.
  ``h_t = tanh(x_t W_x^T + b + h_{t-1} Wh_eff^T + ((h_{t-1} V) * s_t) U^T)``. U starts at zero
  (so the layer starts as plain E1); the rank-r term spans the full state (it couples heads) and
  is not spectrally normalised.
  Both selective forms run as a PyTorch loop in the layer (any device), not through the op; the
  loop is one opaque call under torch.compile (``rnnlab.ops.dispatch.opaque``); the plain scan is a
  custom op that compiles into the graph on CUDA.
* ``state_expansion=k``: state of width K = k*di (``W_x: [K, di]``, ``W_h: [K, K]``, ``b: [K]``)
  read out by ``W_r: [di, K]`` before the gate: ``y_t = (h_t W_r^T) * silu(z_t)``.
* ``init``: ``"xavier"`` (seed: xavier_uniform W_in, W_out, W_x; W_h xavier_uniform gain 0.1,
  per head block), ``"mamba2"`` (W_in, W_out, W_x ~ N(0, 0.02); W_h orthogonal x 0.999 per
  block), ``"identity"`` (W_h = init_scale * I per block; the rest as xavier). Extra matrices
  (W_a, W_s, V, W_r) follow the W_x rule; b = 0.
* ``norm``: ``"spectral"`` (above), ``"none"`` (Wh_eff = W_h), ``"rms"`` (no spectral norm;
  RMSNorm over the K-wide state on the output path, ``y_t = RMSNorm(h_t) [W_r^T] * silu(z_t)``;
  the recurrence itself uses the raw W_h).

Parameter names: ``in_proj.weight, W_x, W_h, b, out_proj.weight`` (+ ``conv1d.weight/bias``,
``W_a, b_a``, ``W_s, U, V``, ``W_r``, ``h_norm.weight`` when switched on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.layers.base import State, check_positive
from rnnlab.ops.registry import opaque
from rnnlab.ops.elman import BACKENDS, elman_scan
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.ops.elman.naive import recur

SELECTIVE = ("none", "decay", "lowrank")
INITS = ("xavier", "mamba2", "identity")
NORMS = ("spectral", "none", "rms")


@dataclass
class E1Config:
    """E1 options; every default reproduces the seed's E1 (see the module docstring)."""

    dim: int
    expansion: float = 1.0  # di = int(dim * expansion)
    conv: int = 0  # causal depthwise conv kernel before silu; 0 = off (seed: off)
    heads: int = 1  # block-diagonal W_h heads
    selective: str = "none"  # "none" | "decay" | "lowrank"
    selective_rank: int = 8  # r for selective="lowrank"
    state_expansion: int = 1  # state width K = di * state_expansion, read out by W_r
    init: str = "xavier"  # "xavier" | "mamba2" | "identity"
    init_scale: float = 0.9  # W_h = init_scale * I for init="identity"
    norm: str = "spectral"  # "spectral" | "none" | "rms"
    spectral_radius: float = 0.99
    power_iters: int = 3
    backend: str = "auto"  # elman_scan backend for the plain path: "auto" | "naive" | "triton"

    @property
    def d_inner(self) -> int:
        return int(self.dim * self.expansion)

    @property
    def d_state(self) -> int:
        return self.d_inner * self.state_expansion

    def validate(self) -> None:
        for name in ("dim", "conv", "heads", "selective_rank", "state_expansion", "power_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        for name in ("expansion", "init_scale", "spectral_radius"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        for name in ("dim", "expansion", "heads", "selective_rank", "state_expansion",
                     "init_scale", "spectral_radius", "power_iters"):
            check_positive(name, getattr(self, name))
        if self.conv < 0:
            raise ValueError(f"conv must be >= 0 (0 = off), got {self.conv!r}")
        if self.d_inner < 1:
            raise ValueError(
                f"expansion must give int(dim*expansion) >= 1, got {self.expansion!r} (dim {self.dim})"
            )
        if self.d_state % self.heads:
            raise ValueError(
                f"heads must divide the state width int(dim*expansion)*state_expansion = "
                f"{self.d_state}, got {self.heads}"
            )
        for name, choices in (("selective", SELECTIVE), ("init", INITS), ("norm", NORMS),
                              ("backend", BACKENDS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm(dim=-1, keepdim=True) + 1e-8)


class E1(nn.Module):
    """E1 gated Elman layer ``[B, T, dim] -> [B, T, dim]`` (see the module docstring)."""

    def __init__(self, cfg: E1Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        D, di, K, n = cfg.dim, cfg.d_inner, cfg.d_state, cfg.heads
        self.in_proj = nn.Linear(D, 2 * di, bias=False)
        self.conv1d = (
            nn.Conv1d(di, di, cfg.conv, groups=di, padding=cfg.conv - 1, bias=True)
            if cfg.conv > 0 else None
        )
        self.W_x = nn.Parameter(torch.empty(K, di))
        self.W_h = nn.Parameter(torch.empty(K, K) if n == 1 else torch.empty(n, K // n, K // n))
        self.b = nn.Parameter(torch.zeros(K))
        if cfg.selective == "decay":
            self.W_a = nn.Parameter(torch.empty(K, di))
            self.b_a = nn.Parameter(torch.empty(K))
        elif cfg.selective == "lowrank":
            r = cfg.selective_rank
            self.W_s = nn.Parameter(torch.empty(r, di))
            self.U = nn.Parameter(torch.empty(K, r))
            self.V = nn.Parameter(torch.empty(K, r))
        self.W_r = nn.Parameter(torch.empty(di, K)) if cfg.state_expansion > 1 else None
        self.h_norm = nn.RMSNorm(K, eps=1e-5) if cfg.norm == "rms" else None
        self.out_proj = nn.Linear(di, D, bias=False)
        self.reset_parameters()
        # Power-iteration vector. The seed kept it as an unsaved attribute; here it is a buffer
        # (saved with checkpoints) so that a resumed or reloaded model computes the same Wh_eff.
        if cfg.norm == "spectral":
            self.register_buffer("spectral_u", _normalize(torch.randn(self.W_h.shape[:-1], device=self.W_h.device)))

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        c = self.cfg
        if c.init == "mamba2":
            def proj(w):
                nn.init.normal_(w, std=0.02)
        else:
            proj = nn.init.xavier_uniform_
        proj(self.in_proj.weight)
        proj(self.W_x)
        proj(self.out_proj.weight)
        blocks = [self.W_h] if self.W_h.dim() == 2 else list(self.W_h.unbind(0))
        for blk in blocks:
            if c.init == "xavier":
                nn.init.xavier_uniform_(blk, gain=0.1)
            elif c.init == "mamba2":
                nn.init.orthogonal_(blk)
                blk.mul_(0.999)
            else:
                blk.copy_(torch.eye(blk.shape[0], device=blk.device, dtype=blk.dtype) * c.init_scale)
        self.b.zero_()
        if c.selective == "decay":
            proj(self.W_a)
            self.b_a.fill_(3.0)
        elif c.selective == "lowrank":
            proj(self.W_s)
            proj(self.V)
            self.U.zero_()
        if self.W_r is not None:
            proj(self.W_r)

    # ------------------------------------------------------------ recurrence
    def recurrent_weight(self, update: bool | None = None, iters: int | None = None) -> torch.Tensor:
        """Wh_eff: W_h spectrally normalised (per head), or W_h itself for norm "none"/"rms".

        ``update`` (default: ``self.training``) stores the new power-iteration vector ``u``;
        ``iters`` overrides ``power_iters``."""
        c = self.cfg
        W = self.W_h
        if c.norm != "spectral":
            return W
        if update is None:
            update = self.training
        u = self.spectral_u.to(W.dtype)
        with torch.no_grad():
            for _ in range(c.power_iters if iters is None else max(1, iters)):
                if W.dim() == 2:
                    v = _normalize(W.t() @ u)
                    u = _normalize(W @ v)
                else:
                    v = _normalize(torch.einsum("ned,ne->nd", W, u))
                    u = _normalize(torch.einsum("ned,nd->ne", W, v))
        if update:
            self.spectral_u.copy_(u)
        if W.dim() == 2:
            sigma = (u @ W @ v).abs()
        else:
            sigma = torch.einsum("ne,ned,nd->n", u, W, v).abs()[:, None, None]
        return W * c.spectral_radius / (sigma + 1e-8)

    @torch.no_grad()
    def converge_spectral(self, iters: int = 100) -> None:
        """Run many power iterations and keep ``u`` (sharpens sigma, e.g. before an analysis)."""
        self.recurrent_weight(update=True, iters=iters)

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """in_proj, split, optional causal conv, silu: ``[B, T, D] -> x, z`` each ``[B, T, di]``."""
        xr, z = self.in_proj(x).chunk(2, dim=-1)
        if self.conv1d is not None:
            T = xr.shape[1]
            xr = self.conv1d(xr.transpose(1, 2))[..., :T].transpose(1, 2)
        return F.silu(xr), z

    def _gates(self, xr: torch.Tensor) -> torch.Tensor | None:
        """The input-dependent part of a selective recurrence: a_t (decay) or s_t (lowrank)."""
        if self.cfg.selective == "decay":
            return torch.sigmoid(F.linear(xr, self.W_a, self.b_a))
        if self.cfg.selective == "lowrank":
            return F.linear(xr, self.W_s)
        return None

    def _cell(self, pre: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
              g: torch.Tensor | None) -> torch.Tensor:
        """One step ``h_{t-1} -> h_t`` in the accumulation dtype (all arguments already cast)."""
        sel = self.cfg.selective
        if sel == "decay":
            return torch.tanh(pre + g * recur(h, w))
        if sel == "lowrank":
            U, V = self.U.to(h.dtype), self.V.to(h.dtype)
            return torch.tanh(pre + recur(h, w) + ((h @ V) * g) @ U.t())
        return torch.tanh(pre + recur(h, w))

    @opaque  # a T-step Python loop: torch.compile would unroll it
    def _selective_scan(self, xr: torch.Tensor, pre: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(pre.dtype)
        g = self._gates(xr).to(dt)
        p, w = pre.to(dt), w_h.to(dt)
        h = p.new_zeros(p.shape[0], p.shape[2])
        out = []
        for t in range(p.shape[1]):
            h = self._cell(p[:, t], h, w, g[:, t])
            out.append(h)
        return torch.stack(out, dim=1).to(pre.dtype)

    def _output(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.h_norm is not None:
            h = self.h_norm(h)
        if self.W_r is not None:
            h = F.linear(h, self.W_r)
        return self.out_proj(h * F.silu(z))

    # ------------------------------------------------------------- interface
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, T, dim] -> [B, T, dim]``, causal, zero initial state."""
        xr, z = self._inputs(x)
        pre = F.linear(xr, self.W_x, self.b)
        w_h = self.recurrent_weight()
        if self.cfg.selective == "none":
            h, _ = elman_scan(pre, w_h, None, backend=self.cfg.backend)
        else:
            h = self._selective_scan(xr, pre, w_h)
        return self._output(h, z)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        """``(h,)`` or ``(h, conv_buf)``: h ``[B, K]`` kept in fp32 (like the scan's carry),
        conv_buf ``[B, di, conv-1]`` holds the last pre-conv inputs."""
        h = torch.zeros(batch, self.cfg.d_state, device=device, dtype=compute_dtype(dtype))
        if self.conv1d is None:
            return (h,)
        return (h, torch.zeros(batch, self.cfg.d_inner, self.cfg.conv - 1, device=device, dtype=dtype))

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token ``x_t: [B, dim]``; equals ``forward`` position by position (eval mode: the
        spectral norm uses the current ``u`` without updating it)."""
        h = state[0]
        xr, z = self.in_proj(x_t).chunk(2, dim=-1)
        new_state: tuple = ()
        if self.conv1d is not None:
            win = torch.cat([state[1], xr.unsqueeze(-1)], dim=-1)  # [B, di, conv]
            xr = (win * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias
            new_state = (win[..., 1:],)
        xr = F.silu(xr)
        pre = F.linear(xr, self.W_x, self.b)
        w = self.recurrent_weight(update=False)
        if self.cfg.selective == "none":
            h_t, h = elman_scan(pre.unsqueeze(1), w, h, backend="naive")
            return self._output(h_t[:, 0], z), (h, *new_state)
        dt = h.dtype
        w = w.to(dt)
        g = self._gates(xr)
        h = self._cell(pre.to(dt), h, w, None if g is None else g.to(dt))
        y = self._output(h.to(x_t.dtype), z)
        return y, (h, *new_state)

    def extra_repr(self) -> str:
        return repr(self.cfg)
