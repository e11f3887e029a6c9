"""How often Schedule-Free's training point y moves in pure bf16, by the size of the weight: the output
projection (out_proj) of the race's 400M Mamba2 and E1 heads as their layers draw it, and divided by
sqrt(depth) as mamba_ssm's LM does (``rescale_prenorm_residual``), each trained alone by rnnlab's
optimizer with the race's settings (Schedule-Free AdamW, lr 3e-4, a 100-step warm-up, wd 0.1) on
synthetic gradients, fresh N(0, 1) draws each step (Adam's step is about lr whatever their scale;
uncorrelated draws make it smaller than real gradients', so moves are if anything under-counted).

In bf16 a step smaller than half the spacing of bf16 numbers around a weight rounds away. The
averaging pulls y's own step down to about 0.1 lr within tens of steps (docs/findings.md, A problem
of the protocol), so on larger weights y stops moving; this counts, at a few steps, the share of
out_proj's elements whose y changed in that step, and in fp32 (bf16-mixed's master weights) for
comparison.

    python benchmarks/bf16_stall.py [--steps 1000] [--elements 262144] > OUT.md
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from rnnlab.models.config import ModelConfig
from rnnlab.models.lm import LM
from rnnlab.train.config import TrainConfig
from rnnlab.train.optim import build_optimizer

SHAPES = (("mamba2", 1728, 22, {"d_state": 64, "backend": "reference"}), ("e1", 1792, 31, {"heads": 14}))
REPORTED = (10, 100, 300, 1000)  # steps whose moves the table shows (those within --steps)
WINDOW = 50  # the last steps: the share of elements that moved at all in them


def out_proj_sample(model: str, dim: int, layer: dict, n: int) -> torch.Tensor:
    """The first ``n`` elements of one 400M block's output projection as rnnlab draws it (seed 0)."""
    torch.manual_seed(0)
    block = LM(ModelConfig(model=model, dim=dim, depth=1, layer=layer)).blocks[0]
    weight = getattr(block.mixer, type(block.mixer).output_projection).weight
    return weight.detach().flatten()[:n].clone()


def moves(start: torch.Tensor, dtype: torch.dtype, steps: int) -> tuple[dict[int, float], float]:
    """Train ``start`` (cast to ``dtype``) for ``steps`` steps: the share of elements whose value
    changed at each step of :data:`REPORTED`, and in any of the last :data:`WINDOW` steps."""
    holder = nn.Module()
    holder.w = nn.Parameter(start.to(dtype, copy=True))  # start itself stays as drawn
    cfg = TrainConfig.from_dict({"optimizer": "schedulefree-adamw", "lr": 3e-4, "warmup_steps": 100,
                                 "weight_decay": 0.1})
    opt, _ = build_optimizer(holder, cfg)
    g = torch.Generator().manual_seed(1)
    shares, moved_late = {}, torch.zeros_like(start, dtype=torch.bool)
    for step in range(1, steps + 1):
        before = holder.w.detach().clone()
        holder.w.grad = torch.randn(start.shape, generator=g).to(dtype)
        opt.step()
        changed = holder.w.detach() != before
        if step in REPORTED:
            shares[step] = changed.float().mean().item()
        if step > steps - WINDOW:
            moved_late |= changed
    return shares, moved_late.float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--elements", type=int, default=262144)
    args = p.parse_args()
    shown = [s for s in REPORTED if s <= args.steps]
    print(f"Schedule-Free AdamW lr 3e-4, warm-up 100, wd 0.1, synthetic N(0, 1) gradients, {args.steps} steps, "
          f"the first {args.elements:,} elements of one block's out_proj (seed 0)\n")
    print("| weight | dtype | largest element | elements of 0.008 or more | "
          + " | ".join(f"y moved at step {s}" for s in shown) + f" | moved in the last {WINDOW} steps |")
    print("|---|---|---|---|" + "---|" * (len(shown) + 1))
    for model, dim, depth, layer in SHAPES:
        w = out_proj_sample(model, dim, layer, args.elements)
        for label, start in ((f"{model} {dim} out_proj, the layer's init", w),
                             (f"{model} {dim} out_proj / sqrt({depth})", w / math.sqrt(depth))):
            for dtype in (torch.bfloat16, torch.float32):
                shares, late = moves(start, dtype, args.steps)
                print(f"| {label} | {str(dtype).removeprefix('torch.')} | {start.abs().max().item():.4f} | "
                      f"{(start.abs() >= 0.008).float().mean().item():.0%} | "
                      + " | ".join(f"{shares[s]:.1%}" for s in shown) + f" | {late:.1%} |")


if __name__ == "__main__":
    main()
