"""Optimizers: Schedule-Free AdamW (the reference study's Table A; schedulefree's, with its step in one
Triton launch on CUDA: ``rnnlab.train.sf_adamw``) or AdamW with linear warmup, then cosine decay or a
constant LR (``lr_schedule``).

Weight decay reaches every parameter (LayerNorm weights, biases and the tied embedding too, as in
the reference study) except those a layer marks ``_no_weight_decay`` (the decay rates ``A_log``
and ``dt_bias`` of Mamba2, E88 and Gated DeltaNet, and Mamba2's skip ``D``, as mamba_ssm and fla
train them), which form a second group with weight decay 0; ``decay_marked`` puts them back in
the one group the reference study used.

Schedule-Free keeps two points: the training point y (what forward/backward see after
``opt.train()``) and the average x (what you evaluate and ship, after ``opt.eval()``). Switching
recomputes one from the other with a lerp, which is not bit-exact in floating point. So that
evaluation and checkpointing never perturb training, ``eval_weights`` swaps to x and then puts
the exact y back (rather than calling ``opt.train()``), and checkpoints store y alongside x.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager

import torch
from torch import nn

from rnnlab.train.config import TrainConfig


def is_schedulefree(opt) -> bool:
    return bool(opt is not None and opt.param_groups and "train_mode" in opt.param_groups[0])


def build_optimizer(model: nn.Module, cfg: TrainConfig):
    """``(optimizer, scheduler_or_None)`` for ``cfg.optim.optimizer``; the optimizer starts in train mode."""
    params = param_groups(model, cfg)
    if cfg.optim.optimizer == "schedulefree-adamw":
        from rnnlab.train.sf_adamw import AdamWScheduleFree  # schedulefree's, its step fused on CUDA

        opt = AdamWScheduleFree(
            params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay, warmup_steps=cfg.optim.warmup_steps)
        opt.train()
        return opt, None
    if cfg.optim.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                weight_decay=cfg.optim.weight_decay)
        total = cfg.max_steps() if cfg.optim.lr_schedule == "cosine" else None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=WarmupCosine(cfg.optim.warmup_steps, total))
        return opt, sched
    raise ValueError(f"unknown optimizer {cfg.optim.optimizer!r}")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters as optimizer groups: one, or two when some are marked
    ``_no_weight_decay`` and ``cfg.optim.decay_marked`` is off (the second with weight decay 0)."""
    params = [p for p in model.parameters() if p.requires_grad]
    exempt = [] if cfg.optim.decay_marked else [p for p in params if getattr(p, "_no_weight_decay", False)]
    if not exempt:
        return [{"params": params}]
    ids = {id(p) for p in exempt}
    return [{"params": [p for p in params if id(p) not in ids]}, {"params": exempt, "weight_decay": 0.0}]


def decay_rates(model: nn.Module, cfg: TrainConfig) -> str | None:
    """What weight decay does to the parameters ``model``'s layers mark ``_no_weight_decay``:
    ``"spared"``, ``"decayed"`` (``decay_marked``), or None when it marks none (E1, minGRU...)."""
    if not any(getattr(p, "_no_weight_decay", False) for p in model.parameters()):
        return None
    return "decayed" if cfg.optim.decay_marked else "spared"


class WarmupCosine:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine from 1 to 0 at ``total``
    (``total=None``: constant 1 after the warmup).

    ``lr_lambda(s)`` gives the factor for the update that follows ``s`` completed steps.
    """

    def __init__(self, warmup: int, total: int | None):
        self.warmup, self.total = int(warmup), None if total is None else int(total)

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        if self.total is None:
            return 1.0
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (s - self.warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def current_lr(opt) -> float:
    """The LR of the next optimizer step (call it before ``opt.step()``)."""
    g = opt.param_groups[0]
    if is_schedulefree(opt):  # the LR the next step() will use (its linear warmup on k)
        k, w = g.get("k", 0), g["warmup_steps"]
        return g["lr"] * ((k + 1) / w if k < w else 1.0)
    return g["lr"]


@contextmanager
def eval_weights(model: nn.Module, opt):
    """Evaluate (or save) the weights one should ship, then restore training bit-exactly.

    For Schedule-Free in train mode: keep a copy of y, ``opt.eval()`` (params = x), yield, then
    copy y back and mark the groups as in train mode again. Costs one copy of the weights.
    For other optimizers only ``model.eval()``/``model.train()`` are toggled.
    """
    was_training = model.training
    backup = None
    if is_schedulefree(opt) and opt.param_groups[0]["train_mode"]:
        backup = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]
        opt.eval()
    model.eval()
    try:
        yield
    finally:
        if backup is not None:
            with torch.no_grad():
                for g, saved in zip(opt.param_groups, backup):
                    for p, y in zip(g["params"], saved):
                        p.copy_(y)
                    g["train_mode"] = True
            # FSDP2 leaves the root's weights gathered after a forward without backward: gathered at
            # x, they would be what the next forward (y's evaluation, a training step) computes with
            from rnnlab.train.distributed import reshard

            reshard(model)
        model.train(was_training)


def train_point(opt) -> list[torch.Tensor] | None:
    """Schedule-Free's y (the params while in train mode) copied to the CPU, for exact resume;
    None for other optimizers."""
    if not is_schedulefree(opt):
        return None
    if not opt.param_groups[0]["train_mode"]:
        raise RuntimeError("train_point() needs the optimizer in train mode")
    from rnnlab.train.distributed import full_tensor  # sharded (FSDP2) params: gathered, a collective

    return [full_tensor(p.detach()).to("cpu", copy=True) for p in in_order(opt.param_groups)]


def in_order(groups: list[dict]) -> list[torch.Tensor]:
    """The parameters of optimizer ``groups`` (an optimizer's ``param_groups`` or
    :func:`param_groups`' list) in the optimizer's order: the order ``train_point`` stores y in."""
    return [p for g in groups for p in g["params"]]


def load_train_point(params: list[torch.Tensor], tensors: list[torch.Tensor]) -> None:
    """Copy Schedule-Free's y (``train_point``'s list) into ``params``, the parameters in the
    optimizer's order (:func:`in_order`)."""
    if len(params) != len(tensors) or any(p.shape != y.shape for p, y in zip(params, tensors)):
        raise ValueError(f"checkpoint holds {len(tensors)} Schedule-Free train tensors that do not fit the "
                         f"model's {len(params)} parameters")
    from rnnlab.train.distributed import copy_full_into  # full y into a (possibly sharded) param

    for p, y in zip(params, tensors):
        copy_full_into(p, y)


def bf16_rounds_away_at(lr: float) -> float:
    """The magnitude from which half the spacing of bf16 numbers is larger than ``lr``: an update of
    about ``lr`` rounds away on a bf16 weight that large (0.125 at lr 3e-4), so no step moves it:
    AdamW's step is about ``lr`` a weight, as is Schedule-Free's step of its base point z. (Its
    training point y steps by ``lr * (beta1 * (1 - c) - 1)``, about 0.1 lr once its averaging weight c
    has decayed, plus a pull of c towards z; from about a tenth of this magnitude up y then moves
    mostly in bursts, as z drifts away from it: docs/findings.md, A problem of the protocol.)"""
    return 2.0 ** (math.floor(math.log2(lr)) + 9)


def rounded_away(model: nn.Module, lr: float) -> list[str]:
    """Names of the bf16 parameters (this rank's shards), layer indices as ``*``, most of whose
    elements are at least ``bf16_rounds_away_at(lr)``: in pure bf16 they do not train (at lr 3e-4
    the norms' weights at 1, LayerNorm's or RMSNorm's, and Mamba2's ``A_log``, ``dt_bias`` and ``D``)."""
    from rnnlab.train.distributed import is_dtensor

    threshold = bf16_rounds_away_at(lr)
    names: dict[str, None] = {}
    for name, p in model.named_parameters():
        t = p.to_local() if is_dtensor(p) else p
        if t.dtype == torch.bfloat16 and t.numel() and (t.detach().abs() >= threshold).float().mean() > 0.5:
            names[re.sub(r"\.\d+\.", ".*.", name)] = None
    return list(names)
