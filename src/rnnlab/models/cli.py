"""``rnnlab params``: count parameters for a config, or solve the width for a target count.
The model flags are generated from ``ModelConfig``'s field declarations, as for ``rnnlab train``."""

from __future__ import annotations

import json

from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_params, parse_count, solve_dim
from rnnlab.options import add_flags, flag_values


def register(sub) -> None:
    p = sub.add_parser("params", help="count parameters or solve a width for a target count")
    add_flags(p.add_argument_group("model"), ModelConfig)
    p.add_argument("--target", help="solve the width for this many parameters (e.g. 400M) instead of --dim")
    p.add_argument("--multiple", type=int, default=None, help="width step for --target")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    values = flag_values(args, ModelConfig)
    if args.target is not None and "dim" in values:
        raise ValueError("give --dim or --target, not both")
    cfg = ModelConfig(**values)  # the model section's keys are its field names
    cfg.validate()
    target = parse_count(args.target) if args.target is not None else None
    if target is not None:
        cfg.dim, params = solve_dim(cfg, target, args.multiple)
    else:
        params = count_params(cfg)
    out = {"model": cfg.model, "dim": cfg.dim, "depth": cfg.depth, "params": params}
    if cfg.layer:
        out["layer"] = cfg.layer
    if target is not None:
        out["target"] = target
    if args.json:
        print(json.dumps(out))
    else:
        extra = f" (target {target:,})" if target is not None else ""
        print(f"{cfg.model} dim={cfg.dim} depth={cfg.depth}: {params:,} parameters{extra}")
    return 0
