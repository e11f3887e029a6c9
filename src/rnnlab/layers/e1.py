"""E1, the reference study's gated Elman mixer, plus variants of it as config switches.

Default path (every switch at its default reproduces the reference E1 exactly)::

    x, z = split(x @ W_in^T)                     W_in: [2*di, D], no bias; di = int(D*expansion)
    x    = silu(causal_depthwise_conv(x))        conv = kernel size; 0 (default) = no conv
    h_t  = tanh(x_t @ W_x^T + h_{t-1} @ Wh_eff^T + b)     W_x, W_h: [di, di], b: [di]; h_{-1} = 0
    y_t  = h_t * silu(z_t)
    out  = y @ W_out^T                           W_out: [D, di], no bias

Spectral norm (``norm="spectral"``, default): ``power_iters`` (3) power iterations under no_grad,
``v = normalize(W_h^T u)``, ``u = normalize(W_h v)`` (normalize adds 1e-8), then
``sigma = |u^T W_h v|`` WITH grad and ``Wh_eff = W_h * spectral_radius / (sigma + 1e-8)``: W_h is
always rescaled to spectral norm ~0.99 (not clamped). ``u`` is the buffer ``spectral_u``
(saved with checkpoints, so a resumed model computes the same Wh_eff; the reference kept it unsaved),
initialised randn-normalised. It is updated only by ``forward`` in training mode; in eval mode and
in ``step`` the iterations start from the current ``u`` and their result is discarded, so
``step`` and an eval ``forward`` use the same Wh_eff.

Against the reference (ekg/elman ``mamba_gated_elman.py``, ``MambaGatedElman`` as its ``LadderLM`` builds
it: ``r_h_mode="spectral_norm"``, ``r_h_init_gain=0.1``): the same forward, gradient and parameter count
(checked at float64 with the same weights and ``u``). Where the spectral norm differs: the reference
runs its 3 iterations on every forward, eval included, so its eval Wh_eff moves with each call; it
computes them and sigma in W_h's dtype (bf16 in its pure-bf16 runs; here at least fp32, Wh_eff rounded
to W_h's dtype); and it draws ``u`` at the first forward, not at construction. Weights follow the
reference's init rules, not its order of random draws: the same seed gives other weights.

Variants, all in this one layer; K = di * state_expansion is the state width:

* ``heads=n``: block-diagonal ``W_h: [n, K/n, K/n]``; head i evolves with its own block,
  ``h_t[i] = tanh((x_t W_x^T + b)[i] + h_{t-1}[i] W_h[i]^T)``. W_x stays dense, out_proj mixes
  heads. Spectral norm is taken per head (u: [n, K/n]). This is rnnlab's own variant, not the
  reference's later E1H (``e1_multihead.py``, February 2026, after the January reports), which has
  per-head ``W_x: [n, N, N]`` (no dense W_x; N = its ``n_state``, di = n*N whatever the expansion),
  ``b: [n, N]``, ``h_{t-1}[i] W_h[i]`` (no transpose), no spectral norm, and by default W_h
  orthogonal x 0.9 and W_x xavier, per head.
* ``selective="decay"``: ``h_t = tanh(x_t W_x^T + b + a_t * (h_{t-1} Wh_eff^T))`` with
  ``a_t = sigmoid(x_t W_a^T + b_a)``, ``W_a: [K, di]``, ``b_a: [K]`` init +3 (a ~ 0.95).
* ``selective="lowrank"``: input-dependent recurrence ``W_h,t = Wh_eff + U diag(s_t) V^T`` with
  ``s_t = x_t W_s^T`` (``W_s: [r, di]``, ``U, V: [K, r]``, r = ``selective_rank``), i.e.
  ``h_t = tanh(x_t W_x^T + b + h_{t-1} Wh_eff^T + ((h_{t-1} V) * s_t) U^T)``. U starts at zero
  (so the layer starts as plain E1); the rank-r term spans the full state (it couples heads) and
  is not spectrally normalised.
  Both selective forms are ops of their own (``rnnlab.ops.elman_decay_scan`` /
  ``elman_lowrank_scan``) with GPU kernels beside their references (the selective terms computed
  in the same fused programs as the plain scan; ``rnnlab.ops.elman.selective``); like the plain
  scan's, they are custom ops that compile into the graph.
* ``state_expansion=k``: state of width K = k*di (``W_x: [K, di]``, ``W_h: [K, K]``, ``b: [K]``)
  read out by ``W_r: [di, K]`` before the gate: ``y_t = (h_t W_r^T) * silu(z_t)``.
* ``init``: ``"xavier"`` (the reference's: xavier_uniform W_in, W_out, W_x; W_h xavier_uniform gain 0.1,
  per head block), ``"mamba2"`` (W_in, W_out, W_x ~ N(0, 0.02); W_h orthogonal x 0.999 per
  block), ``"identity"`` (W_h = init_scale * I per block; the rest as xavier). Extra matrices
  (W_a, W_s, V, W_r) follow the W_x rule; b = 0.
* ``norm``: ``"spectral"`` (above), ``"none"`` (Wh_eff = W_h), ``"rms"`` (no spectral norm;
  RMSNorm over the K-wide state on the output path, ``y_t = RMSNorm(h_t) [W_r^T] * silu(z_t)``;
  the recurrence itself uses the raw W_h).

Parameter names: ``in_proj.weight, W_x, W_h, b, out_proj.weight`` (+ ``conv1d.weight/bias``,
``W_a, b_a``, ``W_s, U, V``, ``W_r``, ``h_norm.weight`` when switched on).

Code: the switches are resolved once, at construction, into small pieces: an init rule
(``_INIT_RULES``), a selective mode (``_SELECTIVE_MODES``: its parameters, their init and its
input-dependent terms), and optional modules (conv1d, W_r, h_norm). The recurrence of an input is
a :class:`Recurrence` (public: ``analysis.gradflow`` reads it), scanned by its op; ``forward`` and
``step`` are ``inputs`` -> ``recurrence(...).scan`` -> ``readout``; with heads (no conv, no
selective term) ``forward`` splits in_proj and scans with ``elman_scan_beside_linear`` instead, so
that on a GPU the gate's half of in_proj runs beside the scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.layers.base import (MAX_FACTOR, MAX_SIZE, InnerWidth, State, causal_conv, causal_conv_step, check_options,
                                op_backend_option)
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.ops.elman import (BACKENDS, elman_decay_scan, elman_lowrank_scan, elman_scan, elman_scan_beside_linear,
                              spectral_norm)
from rnnlab.ops.elman.naive import unit
from rnnlab.options import at_least, option, positive

# ------------------------------------------------------------------ init rules (``init``)
def _normal_002(w: torch.Tensor) -> None:
    nn.init.normal_(w, std=0.02)


def _xavier_gain_01(block: torch.Tensor, cfg: E1Config) -> None:
    nn.init.xavier_uniform_(block, gain=0.1)


def _orthogonal_0999(block: torch.Tensor, cfg: E1Config) -> None:
    nn.init.orthogonal_(block)
    block.mul_(0.999)


def _scaled_identity(block: torch.Tensor, cfg: E1Config) -> None:
    block.copy_(torch.eye(block.shape[0], device=block.device, dtype=block.dtype) * cfg.init_scale)


@dataclass(frozen=True)
class _InitRule:
    """How ``init`` draws E1's weights: ``proj`` for W_in, W_out, W_x and the extra matrices
    (W_a, W_s, V, W_r), ``w_h_block`` for each (head) block of W_h."""

    proj: Callable[[torch.Tensor], object]
    w_h_block: Callable[[torch.Tensor, E1Config], None]


_INIT_RULES = {
    "xavier": _InitRule(nn.init.xavier_uniform_, _xavier_gain_01),
    "mamba2": _InitRule(_normal_002, _orthogonal_0999),
    "identity": _InitRule(nn.init.xavier_uniform_, _scaled_identity),
}
INITS = tuple(_INIT_RULES)


# ------------------------------------------------------------ selective modes (``selective``)
class _Plain:
    """``selective="none"``: no input-dependent term (the reference E1)."""

    def add_parameters(self, layer: E1) -> None:
        pass

    def reset_parameters(self, layer: E1, proj: Callable) -> None:
        pass

    def terms(self, layer: E1, xr: torch.Tensor) -> dict:
        """The :class:`Recurrence` fields this mode adds for the (post-silu) input ``xr``."""
        return {}


class _Decay(_Plain):
    """``selective="decay"``: ``a_t = sigmoid(x_t W_a^T + b_a)`` scales the recurrent term;
    ``W_a: [K, di]``, ``b_a: [K]`` initialised to +3 (a ~ 0.95)."""

    def add_parameters(self, layer: E1) -> None:
        layer.W_a = nn.Parameter(torch.empty(layer.cfg.d_state, layer.cfg.d_inner))
        layer.b_a = nn.Parameter(torch.empty(layer.cfg.d_state))

    def reset_parameters(self, layer: E1, proj: Callable) -> None:
        proj(layer.W_a)
        layer.b_a.fill_(3.0)

    def terms(self, layer: E1, xr: torch.Tensor) -> dict:
        return {"decay": torch.sigmoid(F.linear(xr, layer.W_a, layer.b_a))}


class _LowRank(_Plain):
    """``selective="lowrank"``: the recurrent matrix plus ``U diag(s_t) V^T`` with
    ``s_t = x_t W_s^T``; ``W_s: [r, di]``, ``U, V: [K, r]``, U initialised to zero (plain E1)."""

    def add_parameters(self, layer: E1) -> None:
        r, K = layer.cfg.selective_rank, layer.cfg.d_state
        layer.W_s = nn.Parameter(torch.empty(r, layer.cfg.d_inner))
        layer.U = nn.Parameter(torch.empty(K, r))
        layer.V = nn.Parameter(torch.empty(K, r))

    def reset_parameters(self, layer: E1, proj: Callable) -> None:
        proj(layer.W_s)
        proj(layer.V)
        layer.U.zero_()

    def terms(self, layer: E1, xr: torch.Tensor) -> dict:
        return {"lowrank": (layer.U, layer.V, F.linear(xr, layer.W_s))}


_SELECTIVE_MODES = {"none": _Plain(), "decay": _Decay(), "lowrank": _LowRank()}
SELECTIVE = tuple(_SELECTIVE_MODES)
NORMS = ("spectral", "none", "rms")  # one branch each: recurrent_weight, the h_norm module


@dataclass
class E1Config(InnerWidth):
    """E1 options; every default reproduces the reference E1 (see the module docstring)."""

    dim: int
    expansion: float = option(1.0, help="inner width di = int(dim * expansion)", bounds=positive(MAX_FACTOR))
    conv: int = option(0, help="kernel size of a causal depthwise conv before the silu (0 = no conv)",
                       bounds=at_least(0, MAX_SIZE))
    heads: int = option(1, help="block-diagonal W_h with this many heads (must divide the state width)",
                        bounds=positive(MAX_SIZE))
    selective: str = option("none", choices=SELECTIVE,
                            help="input-dependent recurrence: none, decay (a sigmoid gate a_t scales W_h h) "
                                 "or lowrank (W_h + U diag(s_t) V^T)")
    selective_rank: int = option(8, help="rank r of the lowrank selective term", bounds=positive(MAX_SIZE))
    state_expansion: int = option(1, help="state width K = di * state_expansion, read out by W_r: [di, K]",
                                  bounds=positive(MAX_FACTOR))
    init: str = option("xavier", choices=INITS,
                       help="initialisation: xavier (the reference's), mamba2 (N(0, 0.02), W_h orthogonal "
                            "x 0.999) or identity (W_h = init_scale * I)")
    init_scale: float = option(0.9, help="W_h = init_scale * I for init=identity", bounds=positive())
    norm: str = option("spectral", choices=NORMS,
                       help="spectral (W_h rescaled to spectral norm spectral_radius), none, or rms "
                            "(RMSNorm on the state before the output gate)")
    spectral_radius: float = option(0.99, help="the spectral norm W_h is rescaled to (norm=spectral)",
                                    bounds=positive())
    power_iters: int = option(3, help="power iterations per forward estimating W_h's spectral norm (their "
                                      "result kept in training only)", bounds=positive(MAX_SIZE))
    backend: str = op_backend_option(BACKENDS)

    @property
    def d_state(self) -> int:
        return self.d_inner * self.state_expansion

    def validate(self) -> None:
        check_options(self)
        self.check_inner_width()
        if self.d_state % self.heads:
            raise ValueError(
                f"heads must divide the state width int(dim*expansion)*state_expansion = "
                f"{self.d_state}, got {self.heads}"
            )


# ------------------------------------------------------------ the recurrence of one input
@dataclass
class Recurrence:
    """E1's recurrence on one input sequence, ready to scan from a state ``h0``::

        h_t = tanh(wx_t + a_t * (h_{t-1} w_h^T) + ((h_{t-1} V) * s_t) U^T)

    where the decay ``a_t`` is present only for ``selective="decay"`` and the low-rank term only
    for ``"lowrank"``. ``wx: [B, T, K]`` (bias included), ``w_h``: Wh_eff, dense ``[K, K]`` or
    heads ``[n, K/n, K/n]``, ``decay: [B, T, K]``, ``lowrank = (U [K, r], V [K, r], s [B, T, r])``.
    """

    wx: torch.Tensor
    w_h: torch.Tensor
    decay: torch.Tensor | None = None
    lowrank: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def scan(self, h0: torch.Tensor | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """``(h [B, T, K], h_T [B, K])`` by the op of this recurrence (``rnnlab.ops.elman``)."""
        if self.decay is not None:
            return elman_decay_scan(self.wx, self.w_h, self.decay, h0, backend)
        if self.lowrank is not None:
            return elman_lowrank_scan(self.wx, self.w_h, *self.lowrank, h0, backend)
        return elman_scan(self.wx, self.w_h, h0, backend)


class E1(nn.Module):
    """E1 gated Elman layer ``[B, T, dim] -> [B, T, dim]`` (see the module docstring)."""

    output_projection = "out_proj"  # what writes into the residual stream (rnnlab.layers.base)

    def __init__(self, cfg: E1Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self._init_rule = _INIT_RULES[cfg.init]
        self._selective = _SELECTIVE_MODES[cfg.selective]
        D, di, K, n = cfg.dim, cfg.d_inner, cfg.d_state, cfg.heads
        # registration order = state_dict order and the order the RNG is drawn in: keep it
        self.in_proj = nn.Linear(D, 2 * di, bias=False)
        self.conv1d = (
            nn.Conv1d(di, di, cfg.conv, groups=di, padding=cfg.conv - 1, bias=True)
            if cfg.conv > 0 else None
        )
        self.W_x = nn.Parameter(torch.empty(K, di))
        self.W_h = nn.Parameter(torch.empty(K, K) if n == 1 else torch.empty(n, K // n, K // n))
        self.b = nn.Parameter(torch.zeros(K))
        self._selective.add_parameters(self)
        self.W_r = nn.Parameter(torch.empty(di, K)) if cfg.state_expansion > 1 else None
        self.h_norm = nn.RMSNorm(K, eps=1e-5) if cfg.norm == "rms" else None
        self.out_proj = nn.Linear(di, D, bias=False)
        # plain heads without a conv: the gate's projection runs beside the scan, forward and backward
        self._gate_beside_scan = n > 1 and cfg.conv == 0 and cfg.selective == "none"
        self.reset_parameters()
        if cfg.norm == "spectral":  # the power-iteration vector u, saved with checkpoints
            self.register_buffer("spectral_u", unit(torch.randn(self.W_h.shape[:-1], device=self.W_h.device)))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        proj = self._init_rule.proj
        proj(self.in_proj.weight)
        proj(self.W_x)
        proj(self.out_proj.weight)
        for block in [self.W_h] if self.W_h.dim() == 2 else self.W_h.unbind(0):
            self._init_rule.w_h_block(block, self.cfg)
        self.b.zero_()
        self._selective.reset_parameters(self, proj)
        if self.W_r is not None:
            proj(self.W_r)

    # ------------------------------------------------------------ recurrence
    def recurrent_weight(self, update: bool | None = None, iters: int | None = None) -> torch.Tensor:
        """Wh_eff: W_h spectrally normalised (per head), or W_h itself for norm "none"/"rms".

        ``update`` (default: ``self.training``) stores the new power-iteration vector ``u``;
        ``iters`` overrides ``power_iters``. Computed by the op ``rnnlab.ops.elman.spectral_norm``:
        on a GPU with the layer's ``backend`` (heads run its kernels, one launch each way instead
        of ~20 small ones), elsewhere by its reference (a layer configured with ``backend="triton"``
        still steps on the CPU)."""
        c = self.cfg
        if c.norm != "spectral":
            return self.W_h
        if update is None:
            update = self.training
        iters = c.power_iters if iters is None else max(1, iters)
        backend = c.backend if self.W_h.is_cuda else "naive"  # "triton" would refuse CPU tensors
        W_eff, u = spectral_norm(self.W_h, self.spectral_u, c.spectral_radius, iters, backend=backend)
        if update:
            with torch.no_grad():
                self.spectral_u.copy_(u)
        return W_eff

    @torch.no_grad()
    def converge_spectral(self, iters: int = 100) -> None:
        """Run many power iterations and keep ``u`` (sharpens sigma, e.g. before an analysis)."""
        self.recurrent_weight(update=True, iters=iters)

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """in_proj, split, optional causal conv, silu: ``[B, T, D] -> (x, z)``, each ``[B, T, di]``."""
        xr, z = self.in_proj(x).chunk(2, dim=-1)
        if self.conv1d is not None:
            xr = causal_conv(self.conv1d, xr)
        return F.silu(xr), z

    def recurrence(self, xr: torch.Tensor, update: bool | None = None) -> Recurrence:
        """The :class:`Recurrence` for the (post-silu) input ``xr: [B, T, di]``; ``update`` as in
        :meth:`recurrent_weight`."""
        wx = F.linear(xr, self.W_x, self.b)
        return Recurrence(wx, self.recurrent_weight(update), **self._selective.terms(self, xr))

    def readout(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``out_proj((RMSNorm(h) W_r^T) * silu(z))`` (norm and W_r when switched on)."""
        if self.h_norm is not None:  # in its weight's dtype: torch's fused kernel (bf16-mixed: fp32), the same values
            h = self.h_norm(h.to(self.h_norm.weight.dtype)).to(h.dtype)
        if self.W_r is not None:
            h = F.linear(h, self.W_r)
        return self.out_proj(h * F.silu(z))

    # ------------------------------------------------------------- interface
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, T, dim] -> [B, T, dim]``, causal, zero initial state."""
        if self._gate_beside_scan:
            return self._forward_gate_beside_scan(x)
        xr, z = self.inputs(x)
        h, _ = self.recurrence(xr).scan(None, self.cfg.backend)
        return self.readout(h, z)

    def _forward_gate_beside_scan(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with in_proj as its two halves, the gate's ``z = x W_z^T`` computed
        beside the heads scan (on a GPU, on a second stream: ``elman_scan_beside_linear``); the
        same maths."""
        w_in, w_z = self.in_proj.weight.chunk(2)
        rec = self.recurrence(F.silu(F.linear(x, w_in)))
        h, _, z = elman_scan_beside_linear(rec.wx, rec.w_h, x, w_z, self.cfg.backend)
        return self.readout(h, z)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        """``(h,)`` or ``(h, conv_buf)``: h ``[B, K]`` kept in the compute dtype (like the scan's),
        conv_buf ``[B, di, conv-1]`` holds the last pre-conv inputs."""
        h = torch.zeros(batch, self.cfg.d_state, device=device, dtype=compute_dtype(dtype))
        if self.conv1d is None:
            return (h,)
        return (h, torch.zeros(batch, self.cfg.d_inner, self.cfg.conv - 1, device=device, dtype=dtype))

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token ``x_t: [B, dim]``: ``forward`` on a length-1 sequence from the carried state
        (the op's reference; eval mode: the spectral norm uses the current ``u`` without updating
        it)."""
        xr, z = self.in_proj(x_t).chunk(2, dim=-1)
        conv_state: tuple = ()
        if self.conv1d is not None:
            window = torch.cat([state[1], xr.unsqueeze(-1)], dim=-1)  # [B, di, conv]
            xr = causal_conv_step(self.conv1d, window)
            conv_state = (window[..., 1:],)
        rec = self.recurrence(F.silu(xr).unsqueeze(1), update=False)
        h_t, h = rec.scan(state[0], "naive")
        return self.readout(h_t[:, 0], z), (h, *conv_state)

    def extra_repr(self) -> str:
        return repr(self.cfg)
