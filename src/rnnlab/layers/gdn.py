"""Gated DeltaNet (Yang, Kautz & Hatamizadeh, ICLR 2025), the linear baseline that beat every cell of
the reference study at 1B: fla's own layer and kernels on CUDA, a pure-PyTorch reference with the
same state_dict elsewhere.

fla's ``GatedDeltaNet`` as the reference study built it (output gate, short convolutions, chunk
kernels), with ``H`` heads, key size ``K = head_dim`` and value size ``V = K * expand_v``::

    q, k, v = silu(conv(x W_q^T)), silu(conv(x W_k^T)), silu(conv(x W_v^T))   causal depthwise, no bias
    q, k   <- q / sqrt(|q|^2 + 1e-6) * K^-1/2,  k / sqrt(|k|^2 + 1e-6)        per head
    g_t     = -exp(A_log) * softplus(x_t W_a^T + dt_bias)                       log decay per head
    beta_t  = sigmoid(x_t W_b^T)
    S_t     = e^g_t S_{t-1} + beta_t k_t (v_t - e^g_t S_{t-1}^T k_t)^T,  o_t = S_t^T q_t   (the op)
    out     = (RMSNorm_V(o) * w * silu(x W_g^T)) W_o^T                          per head, eps 1e-5

Backends (``GatedDeltaNetConfig.backend``), as Mamba2's:

- ``"official"``: ``fla.layers.GatedDeltaNet`` (package flash-linear-attention: fused Triton
  convolution, gate, L2 norm and chunked delta rule, gated RMSNorm). Its forward needs CUDA. fla's
  chunked kernel takes head_dim <= 256: a larger one raises one line when the layer is built
  (:func:`official_limit`), for "auto" too where it would pick official.
- ``"reference"``: this module in PyTorch; the recurrence is the op ``rnnlab.ops.gated_delta_scan``
  with backend "auto" (its reference loop on CPU, fla's chunk kernel on CUDA, so head_dim <= 256
  there too).
- ``"auto"``: official when fla's layer imports and CUDA is available, else reference.

Both register the same parameters under fla's names, drawn in fla's order (same seed, same
weights; ``adopt`` moves the official module's onto this layer)::

    A_log [H]  dt_bias [H]  q_proj, k_proj [HK, D]  v_proj [HV, D]  a_proj, b_proj [H, D]
    q_conv1d, k_conv1d [HK, 1, c]  v_conv1d [HV, 1, c]  g_proj [HV, D]  o_norm.weight [V]  o_proj [D, HV]

Init as fla's layer: nn.Linear / nn.Conv1d defaults, Mamba2's ``A_log`` (A ~ U(0, 16)) and
``dt_bias`` (``rnnlab.layers.decay``), norm weight 1. ``step`` (either backend) runs the
convolutions on their windows and the op's reference on one token: state ``(S [B, H, K, V]`` in
the compute dtype, and the last ``c`` inputs of each convolution ``[B, channels, c]`` in the model
dtype); the official layer's gated norm is fla's kernel, so its ``step`` needs CUDA too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.layers.base import (MAX_FACTOR, MAX_SIZE, REFERENCE_WAY_OUT, OfficialOrReference, State, adopt,
                               causal_conv, causal_conv_step, check_options, official_backend_option, resolve_official)
from rnnlab.layers.decay import a_log_init, dt_bias_init, log_decay
from rnnlab.ops.delta import fla_backward_refusal, gated_delta_scan
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.ops.registry import LazyKernel
from rnnlab.options import option, positive

FLA_LAYER = LazyKernel("fla.layers.gated_deltanet")  # fla's layer module, imported on first use


@dataclass
class GatedDeltaNetConfig:
    """Gated DeltaNet options (fla's layer as the reference study built it: head_dim 128, expand_v 2)."""

    dim: int = 256
    head_dim: int = option(128, help="key/query size K per head", bounds=positive(MAX_SIZE))
    heads: int | None = option(None, help="number of heads (default: max(1, dim // head_dim), key width ~ dim)",
                               bounds=positive(MAX_SIZE))
    expand_v: float = option(2.0, help="value size per head V = head_dim * expand_v", bounds=positive(MAX_FACTOR))
    conv_size: int = option(4, help="kernel size of the causal depthwise convs on q, k, v", bounds=positive(MAX_SIZE))
    backend: str = official_backend_option("fla's layer and kernels")

    @property
    def n_heads(self) -> int:
        return self.heads if self.heads is not None else max(1, self.dim // self.head_dim)

    @property
    def head_v_dim(self) -> int:
        return int(self.head_dim * self.expand_v)

    def validate(self) -> None:
        check_options(self)
        # fla's rule, so both backends take the same values: int() of the product, within 1e-5 of it
        # (head_dim 100, expand_v 0.07: 7.000000000000001 is V = 7)
        if self.head_v_dim < 1 or not math.isclose(self.head_dim * self.expand_v, self.head_v_dim, rel_tol=1e-5):
            raise ValueError(f"expand_v must make head_dim*expand_v a positive integer, got {self.expand_v!r}")


# the largest head_dim (key size K) fla's chunked gated delta rule takes: fla-core 0.6's
# fla/ops/common/chunk_delta_h.py asserts "current kernel does not support head dimension larger than 256"
FLA_MAX_HEAD_DIM = 256


def official_limit(cfg: GatedDeltaNetConfig) -> str | None:
    """Which of ``cfg``'s options fla's layer does not run on the GPU, with the way out, or None:
    a ``head_dim`` above :data:`FLA_MAX_HEAD_DIM`. Its short convolutions (fla's Triton kernel)
    take any ``conv_size``."""
    if cfg.head_dim <= FLA_MAX_HEAD_DIM:
        return None
    return (f"fla's chunked kernel takes head_dim at most {FLA_MAX_HEAD_DIM}, got {cfg.head_dim}: use head_dim "
            f"<= {FLA_MAX_HEAD_DIM} (more heads for the same width), or {REFERENCE_WAY_OUT} on a CPU device (on "
            "CUDA the reference's scan is that same kernel)")


def resolve_backend(backend: str, cfg: GatedDeltaNetConfig | None = None) -> str:
    """``"official"`` or ``"reference"``; an explicit ``"official"`` without fla's layer raises, and
    so does official chosen for options ``cfg`` its kernels do not take (:func:`official_limit`)."""
    return resolve_official(backend, "GatedDeltaNet", lambda: None if FLA_LAYER.available() else
                            f"fla's layer (pip install flash-linear-attention): {FLA_LAYER.error}",
                            lambda: None if cfg is None else official_limit(cfg))


def _l2_normalize(t: torch.Tensor) -> torch.Tensor:
    """fla's ``l2norm``: ``t / sqrt(|t|^2 + 1e-6)`` over the last dimension, in the compute dtype."""
    u = t.to(compute_dtype(t.dtype))
    return u * torch.rsqrt(u.square().sum(-1, keepdim=True) + 1e-6)


class RMSNormThenGate(nn.Module):
    """fla's ``FusedRMSNormGated`` (swish) in PyTorch: ``o / rms(o) * weight * silu(gate)`` over the
    last dimension (``size``), the norm before the gate (Mamba2's is the other way round), in the
    compute dtype; returns ``o``'s dtype."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        ct = compute_dtype(o.dtype)
        x = o.to(ct)
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight.to(ct)
        return (x * F.silu(gate.to(ct))).to(o.dtype)


class GatedDeltaNet(OfficialOrReference):
    """Gated DeltaNet mixer, ``[B, T, dim] -> [B, T, dim]`` (see the module docstring)."""

    output_projection = "o_proj"  # what writes into the residual stream (rnnlab.layers.base)

    def __init__(self, cfg: GatedDeltaNetConfig):
        cfg.validate()
        super().__init__(cfg, resolve_backend(cfg.backend, cfg))

    @staticmethod
    def training_blocker(device: torch.device) -> str | None:
        """Why this layer cannot train on ``device``, or None: on CUDA both backends train through
        fla's chunked backward, which fla refuses on some GPU and Triton versions."""
        return fla_backward_refusal() if device.type == "cuda" else None

    # ---------------------------------------------------------------- construction
    def _adopt_official(self, cfg: GatedDeltaNetConfig) -> None:
        Official = FLA_LAYER.get().GatedDeltaNet
        inner = Official(hidden_size=cfg.dim, expand_v=cfg.expand_v, head_dim=cfg.head_dim, num_heads=cfg.n_heads,
                         mode="chunk", use_gate=True, use_short_conv=True, conv_size=cfg.conv_size)
        adopt(self, inner, methods=("_use_fused_qkv_conv",))
        self._official = Official

    def _build_reference(self, cfg: GatedDeltaNetConfig) -> None:
        # fla's names, registration order and RNG order (GatedDeltaNet.__init__, use_gate=True)
        D, H, K, V = cfg.dim, cfg.n_heads, cfg.head_dim, cfg.head_v_dim
        self.q_proj = nn.Linear(D, H * K, bias=False)
        self.k_proj = nn.Linear(D, H * K, bias=False)
        self.v_proj = nn.Linear(D, H * V, bias=False)
        self.a_proj = nn.Linear(D, H, bias=False)
        self.b_proj = nn.Linear(D, H, bias=False)
        self.A_log = a_log_init(H, 0, 16)
        self.dt_bias = dt_bias_init(H)
        self.q_conv1d, self.k_conv1d, self.v_conv1d = (
            nn.Conv1d(c, c, cfg.conv_size, groups=c, padding=cfg.conv_size - 1, bias=False)
            for c in (H * K, H * K, H * V))
        self.g_proj = nn.Linear(D, H * V, bias=False)
        self.o_norm = RMSNormThenGate(V)
        self.o_proj = nn.Linear(H * V, D, bias=False)

    # ---------------------------------------------------------------- the reference
    def _scan_inputs(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """The op's inputs from the convolved ``q, k, v [..., HK|HV]`` and the layer input ``x``:
        ``q, k`` normalised (q scaled by K^-1/2) and ``v`` per head in ``x``'s dtype, the log decay
        and ``beta [..., H]`` in the compute dtype."""
        H, K = self.cfg.n_heads, self.cfg.head_dim
        q, k = _l2_normalize(q.unflatten(-1, (H, K))), _l2_normalize(k.unflatten(-1, (H, K)))
        g = log_decay(self.a_proj(x), self.A_log, self.dt_bias)
        beta = torch.sigmoid(self.b_proj(x).to(g.dtype))
        return (q * K ** -0.5).to(x.dtype), k.to(x.dtype), v.unflatten(-1, (H, -1)), g, beta

    def _out(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate = self.g_proj(x).unflatten(-1, (self.cfg.n_heads, -1))
        return self.o_proj(self.o_norm(o, gate).flatten(-2))

    def _conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """``silu`` of the causal depthwise convolution of ``x [B, T, C]``."""
        return F.silu(causal_conv(conv, x))

    # ---------------------------------------------------------------- contract
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "official":
            self._check_official_input(x)
            return self._official.forward(self, x)[0]
        q, k, v = (self._conv(conv, proj(x)) for conv, proj in
                   ((self.q_conv1d, self.q_proj), (self.k_conv1d, self.k_proj), (self.v_conv1d, self.v_proj)))
        o, _ = gated_delta_scan(*self._scan_inputs(x, q, k, v), None, backend="auto")
        return self._out(o, x)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        H, K, V, c = self.cfg.n_heads, self.cfg.head_dim, self.cfg.head_v_dim, self.cfg.conv_size
        S = torch.zeros(batch, H, K, V, device=device, dtype=compute_dtype(dtype))
        return (S, *(torch.zeros(batch, width, c, device=device, dtype=dtype) for width in (H * K, H * K, H * V)))

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token: each convolution on its window of the last ``conv_size`` inputs, then the
        op's reference from the carried state."""
        if self.backend == "official":  # its gated norm (o_norm) is fla's Triton kernel
            self._check_official_input(x_t)
        S, *windows = state
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        windows = [torch.cat([w[..., 1:], proj(x_t).unsqueeze(-1).to(w.dtype)], dim=-1)
                   for w, proj in zip(windows, (self.q_proj, self.k_proj, self.v_proj))]
        q, k, v = (F.silu(causal_conv_step(conv, w)).to(x_t.dtype) for w, conv in zip(windows, convs))
        q, k, v, g, beta = (t.unsqueeze(1) for t in self._scan_inputs(x_t, q, k, v))
        o, S = gated_delta_scan(q, k, v, g, beta, S, backend="naive")
        return self._out(o[:, 0], x_t), (S, *windows)
