"""The byte-level language model shared by every mixer (the reference study's LadderLM).

    x = embed(bytes)                                  # [256, D], N(0, 0.02)
    for each layer i:  x = x + mixer_i(norm_i(x))      # norm: LayerNorm (default) or RMSNorm
                       x = x + mlp_i(norm'_i(x))       # only when mlp_ratio > 0 (Transformer)
    logits = head(norm_f(x))                          # head tied to the embedding, no bias

Pre-norm LayerNorm (weight and bias, eps 1e-5) as in the reference's January 2026 runs (its
``LadderLM`` for E1/E16, ``MinGRULM``, ``MinLSTMLM``, ``Mamba2LM``: the parameter counts it logged include
the LayerNorms' biases, ``tests/test_params.py``); cross-entropy over every position. From 2026-01-11
(ekg/elman 8e4459f1) the reference's ``LadderLM`` (E1, E16, E88) pre-normalises with mamba_ssm's RMSNorm
(weight only) and keeps the residual stream in fp32, so its later E88 runs (the ~480M reports) had
those blocks, while its Mamba2 there kept ``Mamba2LM``'s LayerNorm: the reference compared them in
two wrappers. rnnlab's default is LayerNorm and a residual in the model's dtype for every model;
``ModelConfig.norm = "rmsnorm"`` with ``residual_in_fp32`` builds that later ``LadderLM``, and with
``rescale_prenorm_residual`` too mamba_ssm's own LM (``MixerModel``: RMSNorm eps 1e-5, the residual in
fp32, each norm computed on it in fp32 and rounded once to the weights' dtype, as its fused add-and-norm
kernel does), for layers without an MLP (the recurrent models' default; ``MixerModel``'s MLP is gated).

Under ``torch.compile`` E1, E16, minGRU and minLSTM on CUDA (their scans are custom ops), attention
and the Mamba2 reference compile to one graph; every other recurrence is an opaque call
(``rnnlab.ops.registry``), so such a model compiles to a few graphs per block around it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.models.config import ModelConfig
from rnnlab.models.registry import get_spec


class MLP(nn.Module):
    """GELU MLP, ``dim -> hidden -> dim``, no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The pre-norm of a block (and the final one): ``cfg.norm``'s, eps 1e-5."""
    return nn.RMSNorm(cfg.dim, eps=1e-5) if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.dim, eps=1e-5)


def normed(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` in the norm's weight dtype. A residual kept in fp32 under pure bf16
    (``residual_in_fp32``) is normed in fp32 and rounded once, at the output, as mamba_ssm's fused
    add-and-norm kernel does (its default, and the reference's ``LadderLM`` on a GPU)."""
    w = norm.weight
    if x.dtype == w.dtype:
        return norm(x)
    wide = torch.promote_types(x.dtype, w.dtype)  # computed in the wider of the two
    if isinstance(norm, nn.RMSNorm):
        y = F.rms_norm(x.to(wide), norm.normalized_shape, w.to(wide), norm.eps)
    else:
        y = F.layer_norm(x.to(wide), norm.normalized_shape, w.to(wide), norm.bias.to(wide), norm.eps)
    return y.to(w.dtype)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = make_norm(cfg)
        self.mixer = get_spec(cfg.model).layer_cls(cfg.layer_config())
        hidden = cfg.mlp_width()
        self.mlp_norm = make_norm(cfg) if hidden > 0 else None
        self.mlp = MLP(cfg.dim, hidden) if hidden > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(normed(self.norm, x))
        if self.mlp is not None:
            x = x + self.mlp(normed(self.mlp_norm, x))
        return x

    def step(self, x: torch.Tensor, state):
        y, state = self.mixer.step(normed(self.norm, x), state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(normed(self.mlp_norm, x))
        return x, state


class LM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        if cfg.rescale_prenorm_residual:
            self.rescale_residual_projections()
        self.norm_f = make_norm(cfg)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    @torch.no_grad()
    def rescale_residual_projections(self) -> None:
        """mamba_ssm's ``rescale_prenorm_residual`` (``MixerModel._init_weights``; GPT-2's rule): each
        weight that writes into the residual stream (the mixer's ``output_projection``, the MLP's
        ``proj``) divided by sqrt(such weights per block x depth), so the stream's variance does not
        grow with depth. The layer's own init is kept and scaled (for Mamba2 it is the distribution
        mamba_ssm re-draws, nn.Linear's default); the other weights are unchanged."""
        for block in self.blocks:
            name = getattr(type(block.mixer), "output_projection", None)
            if name is None:  # a layer registered from outside that does not follow the contract
                raise ValueError(f"rescale_prenorm_residual: the {self.cfg.model} layer declares no "
                                 "output_projection (rnnlab.layers.base: the layer contract)")
            out = getattr(block.mixer, name)
            if out is None:
                raise ValueError(f"rescale_prenorm_residual: this {self.cfg.model} layer has no output projection "
                                 f"to rescale ({type(block.mixer).__name__}'s scan writes into the residual "
                                 f"stream itself; minGRU and minLSTM have one at expansion other than 1)")
            weights = [out.weight] + ([block.mlp.proj.weight] if block.mlp is not None else [])
            for w in weights:
                w.div_(math.sqrt(len(weights) * self.cfg.depth))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """``idx: [B, T]`` bytes -> logits ``[B, T, 256]``, or the mean cross-entropy (nats,
        computed in fp32) when ``targets`` is given."""
        x = self._run_blocks(self.embedded(idx))
        logits = self.head(normed(self.norm_f, x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))

    def embedded(self, idx: torch.Tensor) -> torch.Tensor:
        """The residual stream's start: the bytes' embeddings, in fp32 (at least) with ``residual_in_fp32``."""
        x = self.embed(idx)
        return x.to(torch.promote_types(x.dtype, torch.float32)) if self.cfg.residual_in_fp32 else x

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        # A frame of its own for torch.compile: most recurrences are opaque calls (graph breaks,
        # rnnlab.ops.registry), and Dynamo gives up on a whole frame whose graph break falls
        # inside a for loop. Only this loop then runs uncompiled; each Block and forward's
        # embedding, final norm, head and loss are still compiled.
        for block in self.blocks:
            x = block(x)
        return x

    @torch.no_grad()
    def init_state(self, batch: int) -> list:
        p = self.embed.weight
        return [b.mixer.init_state(batch, p.device, p.dtype) for b in self.blocks]

    @torch.no_grad()
    def step(self, idx_t: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """One byte per sequence (``idx_t: [B]``) -> next-byte logits ``[B, 256]`` and new state."""
        x = self.embedded(idx_t)
        new_state = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            new_state.append(s)
        return self.head(normed(self.norm_f, x)), new_state
