"""Mamba2 mixer as the reference study trained it: ``mamba_ssm`` Mamba2 with d_state=64,
d_conv=4, expand=2, headdim=64 and the library defaults (ngroups=1, chunk_size=256, gated RMSNorm
with norm_before_gate=False, A_init_range=(1,16), dt in [1e-3, 0.1] floor 1e-4, conv bias, no
linear biases).

Backends (``Mamba2Config.backend``):

- ``"official"``: ``mamba_ssm.modules.mamba2.Mamba2`` (Triton SSD, causal_conv1d when installed).
  Needs mamba_ssm; its forward/step need CUDA tensors. Its kernels take d_conv 2 to 4 (at least 2
  without causal_conv1d) and, with causal_conv1d, conv channels ``expand*dim + 2*ngroups*d_state``
  in multiples of 8: other values raise one line when the layer is built (:func:`official_limit`),
  for "auto" too where it would pick official; the reference takes them.
- ``"reference"``: pure PyTorch (this module with the op ``rnnlab.ops.ssd_scan``: its
  "chunked" form in ``forward``, its sequential reference in ``step``), runs anywhere.
- ``"auto"``: official when mamba_ssm imports and CUDA is available, else reference.

These words choose the whole layer implementation, not an op backend: "official" replaces the
projections, conv, scan and gated norm by mamba_ssm's fused module.

Checkpoints move freely between the two: both register the same parameters, in the same order,
directly on this layer (no ``inner.`` prefix)::

    dt_bias [H]  A_log [H]  D [H]  in_proj.weight [2di+2GN+H, D]
    conv1d.weight [di+2GN, 1, d_conv]  conv1d.bias [di+2GN]  norm.weight [di]  out_proj.weight [D, di]

(di = expand*dim, H = di/headdim, G = ngroups, N = d_state.) In the official backend the layer
*adopts* a freshly built ``mamba_ssm`` module: its parameters, submodules and attributes are moved
onto ``self`` and its ``forward``/``step`` are called with ``self``, so the official code runs
unchanged. Both backends draw the initial values in the same order, so the same seed gives the
same weights. The LM around it (``rnnlab.models.lm``) re-draws only the embedding, as the reference
study's ``Mamba2LM`` did: mamba_ssm's own LM (``MixerModel._init_weights``) also divides each
``out_proj`` by sqrt(depth), which rnnlab does for any model with ``ModelConfig.rescale_prenorm_residual``
(off by default, as in the reference study; scale-1b's init arm turns it on for both models).

torch.compile: Dynamo traces the official forward (mamba_ssm's autograd Functions and their
Triton kernels become part of the graph), so Inductor fuses the projections' elementwise work
around them. Measured on one H200 (results/fair-baselines-h200/): the traced official Mamba2 LM
trains to the same losses as eager and ~1.4x faster than when the forward was one opaque call.
The reference backend has no loop over time and is traced like any other module.

State for ``step``: ``(conv_state [B, di+2GN, d_conv] in the model dtype, ssm_state [B, H, headdim,
N] in fp32, float64 for float64)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.layers.base import (MAX_FACTOR, MAX_SIZE, REFERENCE_WAY_OUT, OfficialOrReference, State, adopt,
                               causal_conv, causal_conv_step, check_options, official_backend_option, resolve_official)
from rnnlab.layers.decay import a_log_init, dt_bias_init, no_weight_decay
from rnnlab.ops.dtypes import compute_dtype
from rnnlab.ops.registry import LazyKernel
from rnnlab.ops.ssd import import_mamba_ssm, mamba_ssm_error, ssd_scan
from rnnlab.options import option, positive


@dataclass
class Mamba2Config:
    """Mamba2 options (mamba_ssm's, with the reference's d_state 64)."""

    dim: int
    d_state: int = option(64, help="SSM state size N per head", bounds=positive(MAX_SIZE))
    d_conv: int = option(4, help="kernel size of the causal depthwise conv", bounds=positive(MAX_SIZE))
    expand: int = option(2, help="inner width di = expand * dim", bounds=positive(MAX_FACTOR))
    headdim: int = option(64, help="width of each SSM head (must divide di)", bounds=positive(MAX_SIZE))
    ngroups: int = option(1, help="groups of heads sharing B and C (must divide the number of heads)",
                         bounds=positive(MAX_SIZE))
    chunk_size: int = option(256, help="chunk length of the SSD scan", bounds=positive(MAX_SIZE))
    backend: str = official_backend_option("mamba_ssm's module and kernels")

    @property
    def d_inner(self) -> int:
        return self.expand * self.dim

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    def validate(self) -> None:
        check_options(self)
        if self.d_inner % self.headdim:
            raise ValueError(
                f"headdim must divide d_inner = expand*dim = {self.d_inner}, got {self.headdim}"
            )
        if self.nheads % self.ngroups:
            raise ValueError(
                f"ngroups must divide the number of heads ({self.nheads}), got {self.ngroups}"
            )


CAUSAL_CONV1D = LazyKernel("causal_conv1d")  # the fused conv the official layer's fast path needs


def causal_conv1d_available() -> bool:
    """Whether ``causal_conv1d`` imports (then the official layer runs its memory-efficient path)."""
    return CAUSAL_CONV1D.available()


def official_limit(cfg: Mamba2Config) -> str | None:
    """Which of ``cfg``'s options mamba_ssm's Mamba2 (2.3) does not run on the GPU, with the way
    out, or None. Its unfused path trims ``d_conv - 1`` steps off nn.Conv1d's output (none left at
    d_conv 1); with causal_conv1d (1.7) installed it runs the fused path, whose CUDA conv takes
    widths 2 to 4 only ("causal_conv1d only supports width between 2 and 4") and, in
    ``mamba_split_conv1d_scan_combined``, conv channels ``expand*dim + 2*ngroups*d_state`` in
    multiples of 8. The SSD kernels loop over blocks of headdim and d_state: no limit there."""
    fused = causal_conv1d_available()
    channels = cfg.d_inner + 2 * cfg.ngroups * cfg.d_state
    if fused and not 2 <= cfg.d_conv <= 4:
        limit = f"causal_conv1d's CUDA kernel takes d_conv 2 to 4, got {cfg.d_conv}"
    elif cfg.d_conv < 2:
        limit = f"mamba_ssm's Mamba2 takes d_conv of at least 2 (it trims d_conv - 1 conv steps), got {cfg.d_conv}"
    elif fused and channels % 8:
        limit = (f"causal_conv1d's fused path takes conv channels expand*dim + 2*ngroups*d_state in multiples of 8, "
                 f"got {cfg.d_inner} + 2*{cfg.ngroups}*{cfg.d_state} = {channels}")
    else:
        return None
    return (f"{limit}; use {REFERENCE_WAY_OUT} (the PyTorch reference: any device, same weights; a trained run's "
            "eval or sample: --device cpu)")


def resolve_backend(backend: str, cfg: Mamba2Config | None = None) -> str:
    """``"official"`` or ``"reference"``; an explicit ``"official"`` without mamba_ssm raises, and
    so does official chosen for options ``cfg`` its kernels do not take (:func:`official_limit`)."""
    return resolve_official(backend, "Mamba2", lambda: None if import_mamba_ssm() is not None
                            else f"mamba_ssm: {mamba_ssm_error()}",
                            lambda: None if cfg is None else official_limit(cfg))


class GateThenRMSNorm(nn.Module):
    """``rmsnorm(x * silu(z)) * weight`` per group of ``group_size`` channels: the gate before the
    norm (mamba_ssm's ``RMSNormGated`` with norm_before_gate=False; Gated DeltaNet's norm is the
    other way round); in the compute dtype (fp32, fp64 for fp64), returns ``x``'s dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size or hidden_size
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype, ct = x.dtype, compute_dtype(x.dtype)
        x = x.to(ct) * F.silu(z.to(ct))
        g = x.unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.square().mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * self.weight.to(ct)).to(dtype)


class Mamba2(OfficialOrReference):
    """Mamba2 mixer, ``[B, T, dim] -> [B, T, dim]`` (see the module docstring)."""

    output_projection = "out_proj"  # what writes into the residual stream (rnnlab.layers.base)

    def __init__(self, cfg: Mamba2Config):
        cfg.validate()
        super().__init__(cfg, resolve_backend(cfg.backend, cfg))

    # ---------------------------------------------------------------- construction
    def _adopt_official(self, cfg: Mamba2Config) -> None:
        from mamba_ssm.modules.mamba2 import Mamba2 as Official

        fused = causal_conv1d_available()
        if not fused and not CAUSAL_CONV1D.warned:
            CAUSAL_CONV1D.warned = True
            warnings.warn(
                f"causal_conv1d does not import ({CAUSAL_CONV1D.error}): official Mamba2 runs with "
                "use_mem_eff_path=False (nn.Conv1d + Triton SSD + Triton gated RMSNorm; same math, more memory)",
                stacklevel=3,
            )
        inner = Official(
            d_model=cfg.dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
            headdim=cfg.headdim, ngroups=cfg.ngroups, chunk_size=cfg.chunk_size,
            use_mem_eff_path=fused,
        )
        adopt(self, inner)
        self._official = Official

    def _build_reference(self, cfg: Mamba2Config) -> None:
        # Same attribute names, registration order and RNG order as mamba_ssm's Mamba2.__init__.
        self.d_model, self.d_state, self.d_conv = cfg.dim, cfg.d_state, cfg.d_conv
        self.expand, self.headdim, self.ngroups = cfg.expand, cfg.headdim, cfg.ngroups
        self.d_inner = self.d_ssm = cfg.d_inner
        self.nheads = cfg.nheads
        self.chunk_size = cfg.chunk_size
        di, G, N, H = self.d_inner, self.ngroups, self.d_state, self.nheads
        self.in_proj = nn.Linear(cfg.dim, 2 * di + 2 * G * N + H, bias=False)
        conv_dim = di + 2 * G * N
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, cfg.d_conv, groups=conv_dim, padding=cfg.d_conv - 1)
        self.act = nn.SiLU()
        self.dt_bias = dt_bias_init(H)
        self.A_log = a_log_init(H, 1, 16)
        self.D = no_weight_decay(nn.Parameter(torch.ones(H)))
        self.norm = GateThenRMSNorm(di, eps=1e-5, group_size=di // G)
        self.out_proj = nn.Linear(di, cfg.dim, bias=False)

    # ---------------------------------------------------------------- helpers
    def _split(self, zxbcdt: torch.Tensor):
        di, GN = self.d_inner, self.ngroups * self.d_state
        return torch.split(zxbcdt, [di, di + 2 * GN, self.nheads], dim=-1)

    def _ssm_inputs(self, xBC: torch.Tensor, dt: torch.Tensor):
        di, GN = self.d_inner, self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [di, GN, GN], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))
        B = B.unflatten(-1, (self.ngroups, self.d_state))
        C = C.unflatten(-1, (self.ngroups, self.d_state))
        ct = compute_dtype(dt.dtype)
        dt = F.softplus(dt.to(ct) + self.dt_bias.to(ct))
        A = -torch.exp(self.A_log.to(ct))
        return x, dt, A, B, C

    # ---------------------------------------------------------------- contract
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "official":
            self._check_official_input(x)
            return self._official.forward(self, x)
        z, xBC, dt = self._split(self.in_proj(x))
        xBC = self.act(causal_conv(self.conv1d, xBC))
        xs, dt, A, B, C = self._ssm_inputs(xBC, dt)
        y, _ = ssd_scan(xs, dt, A, B, C, self.chunk_size, None, backend="chunked")
        y = y + xs * self.D.to(y.dtype)[:, None]
        return self.out_proj(self.norm(y.flatten(-2), z))

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        # [B, d_conv, C].transpose: the layout mamba_ssm allocates (causal_conv1d_update accepts it)
        conv = torch.zeros(batch, self.d_conv, conv_dim, device=device, dtype=dtype).transpose(1, 2)
        sdt = compute_dtype(dtype)
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=sdt)
        return conv, ssm

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        conv, ssm = state
        if self.backend == "official":
            self._check_official_input(x_t)
            conv, ssm = conv.clone(), ssm.clone()  # official step updates in place
            y, conv, ssm = self._official.step(self, x_t.unsqueeze(1), conv, ssm)
            return y.squeeze(1), (conv, ssm)
        z, xBC, dt = self._split(self.in_proj(x_t))
        conv = torch.cat([conv[..., 1:], xBC.unsqueeze(-1).to(conv.dtype)], dim=-1)
        xBC = causal_conv_step(self.conv1d, conv)
        xBC = self.act(xBC).to(x_t.dtype)
        xs, dt, A, B, C = self._ssm_inputs(xBC, dt)
        # the op's sequential reference on a length-1 sequence from the carried state
        y, ssm = ssd_scan(xs[:, None], dt[:, None], A, B[:, None], C[:, None], 1, ssm, backend="naive")
        y = y[:, 0] + xs * self.D.to(y.dtype)[:, None]
        return self.out_proj(self.norm(y.flatten(-2), z)), (conv, ssm)
