"""``rnnlab params``: count parameters for a config, or solve the width for a target count."""

from __future__ import annotations

import json

from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_params, parse_count, solve_dim


def parse_layer_options(items: list[str] | None) -> dict:
    """``["expansion=2.5", "spectral_norm=false"]`` -> ``{"expansion": 2.5, "spectral_norm": False}``
    (values read as JSON where possible, else kept as strings)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"layer option {item!r} must look like key=value")
        try:
            out[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def register(sub) -> None:
    p = sub.add_parser("params", help="count parameters or solve a width for a target count")
    p.add_argument("--model", required=True)
    p.add_argument("--depth", type=int, required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dim", type=int, help="count parameters at this width")
    g.add_argument("--target", help="solve the width for this many parameters (e.g. 400M)")
    p.add_argument("--multiple", type=int, default=None, help="width step for --target")
    p.add_argument("--mlp-ratio", type=float, default=None)
    p.add_argument("--layer", action="append", metavar="KEY=VALUE",
                   help="a mixer option, e.g. --layer expansion=2.5 (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = ModelConfig(model=args.model, dim=args.dim if args.dim is not None else 64, depth=args.depth,
                      mlp_ratio=args.mlp_ratio, layer=parse_layer_options(args.layer))
    if args.target is not None:
        target = parse_count(args.target)
        dim, params = solve_dim(cfg, target, args.multiple)
        cfg.dim = dim
    else:
        params = count_params(cfg)
        target = None
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
