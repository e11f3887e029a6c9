"""Which weights train in pure bf16: a short run of each model, the share of each parameter's
elements that changed, beside the note ``rnnlab train`` prints (``rnnlab.train.optim.rounded_away``).

In pure bf16 (weights, gradients and optimizer state in bf16, the reference study's protocol) an
update of about the learning rate rounds away on every weight where half the spacing of bf16
numbers is larger (from 0.125 at lr 3e-4): this measures which weights that leaves untrained.

    python benchmarks/bf16_frozen.py [--steps 30] [--dim 64] [--lr 3e-4] [--device cpu] [--race-shapes] > OUT.md

``--race-shapes``: also the weights the note names for the race's 400M Mamba2 and E1 heads (built,
not trained).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from rnnlab.train.config import TrainConfig
from rnnlab.train.optim import bf16_rounds_away_at, rounded_away
from rnnlab.train.runtime import build_model
from rnnlab.train.trainer import Trainer

MODELS = {  # model -> layer options (Mamba2's reference backend runs anywhere)
    "e1": {"heads": 4},
    "mamba2": {"headdim": 16, "d_state": 16, "backend": "reference"},
}
RACE_SHAPES = (("mamba2", 1728, 22, {"d_state": 64}), ("e1", 1792, 31, {"heads": 14}))  # bench/suites/race-400m.toml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--race-shapes", action="store_true")
    args = p.parse_args()
    print(f"pure bf16, Schedule-Free AdamW lr {args.lr:g}, {args.steps} steps of 4 x 64 bytes (the bundled sample), "
          f"dim {args.dim}, depth 2; weights of {bf16_rounds_away_at(args.lr):g} or more cannot move by ~lr\n")
    print("| model | parameter | shape | mean abs at start | elements changed |")
    print("|---|---|---|---|---|")
    for model, layer in MODELS.items():
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig.from_dict({"model": {"model": model, "dim": args.dim, "depth": 2, "layer": layer},
                                         "seq_len": 64, "batch_size": 4, "steps": args.steps, "precision": "bf16",
                                         "lr": args.lr, "eval_bytes": 4096, "device": args.device, "out": out})
            trainer = Trainer(cfg, progress=False)
            before = {n: p.detach().clone() for n, p in trainer.state.model.named_parameters()}
            trainer.train()
            for name, param in trainer.state.model.named_parameters():
                changed = (param.detach() != before[name]).float().mean().item()
                start = before[name].float().abs().mean().item()
                print(f"| {model} | {name} | {list(param.shape)} | {start:.3g} | {changed:.0%} |")
    if args.race_shapes:
        print("\nWhat the note names at the race's 400M shapes (built in bf16, seed 42, not trained):\n")
        for model, dim, depth, layer in RACE_SHAPES:
            torch.manual_seed(42)
            cfg = TrainConfig.from_dict({"model": {"model": model, "dim": dim, "depth": depth, "layer": layer},
                                         "precision": "bf16"})
            built = build_model(cfg, torch.device(args.device))
            print(f"- {model} {dim} x {depth} ({sum(p.numel() for p in built.parameters()):,} parameters): "
                  + ", ".join(rounded_away(built, args.lr)))
            del built


if __name__ == "__main__":
    main()
