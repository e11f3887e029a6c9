"""``rnnlab params``: count parameters for a config, or solve the width for a target count.
The model flags are generated from ``ModelConfig``'s field declarations, as for ``rnnlab train``.

``rnnlab layers [MODEL]``: every model kind with its ``--layer`` options, defaults and meanings,
generated from the layers' config declarations (``ModelSpec.layer_options``)."""

from __future__ import annotations

import json

from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_arg, count_params, nearest_width, parse_count, solve_dim
from rnnlab.models.registry import MODELS, get_spec
from rnnlab.options import add_flags, checked, flag_values, positive


def register(sub) -> None:
    p = sub.add_parser("params", help="count parameters or solve a width for a target count",
                       description="Count a model's parameters (--model, --dim, --depth, --layer), or solve the "
                                   "width that comes nearest a target count (--target 400M), as suites with "
                                   "target_params do. Nothing is trained.")
    add_flags(p.add_argument_group("model"), ModelConfig)
    p.add_argument("--target", type=count_arg, metavar="N",
                   help="solve the width for this many parameters (e.g. 400M) instead of --dim")
    p.add_argument("--multiple", type=checked(int, positive()), default=None, metavar="N",
                   help=f"width step for --target (default: the model's, {_default_multiples()})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)

    lay = sub.add_parser("layers", help="list the model kinds and their --layer options",
                         description="Every model kind (--model) with its --layer KEY=VALUE options, their "
                                     "defaults and what they do.")
    lay.add_argument("model", nargs="?", help="only this model kind")
    lay.set_defaults(func=run_layers)


def _default_multiples() -> str:
    """``64 for transformer, 32 for the others``: each model's ``dim_multiple``, for the help."""
    steps = {name: spec.dim_multiple for name, spec in MODELS.items()}
    common = max(set(steps.values()), key=list(steps.values()).count)
    odd = [f"{step} for {name}" for name, step in steps.items() if step != common]
    return ", ".join([*odd, f"{common} for the others" if odd else str(common)])


def run(args) -> int:
    values = flag_values(args, ModelConfig)
    if args.target is not None and "dim" in values:
        raise ValueError("give --dim or --target, not both")
    if args.multiple is not None and args.target is None:  # it steps the solved width only
        raise ValueError("--multiple is the width step for --target; give --target with it")
    cfg = ModelConfig(**values)  # the model section's keys are its field names
    if args.target is None:  # else solve_dim checks each width it tries (not the default dim, 256)
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
        if target is not None and abs(params - target) > 0.1 * target:
            step, where = nearest_width(cfg.model, args.multiple)
            smaller = "a smaller --multiple or " if step > 1 else ""
            extra += f": the nearest {where}; {smaller}another --depth may come closer"
        print(f"{cfg.model} dim={cfg.dim} depth={cfg.depth}: {params:,} parameters{extra}")
    return 0


def run_layers(args) -> int:
    names = [get_spec(args.model).name] if args.model is not None else list(MODELS)
    for i, name in enumerate(names):
        spec = get_spec(name)
        print(("\n" if i else "") + f"{name}: {spec.description}")
        options = spec.layer_options()
        if not options:
            print("  (no --layer options)")
        # an option whose default is worked out from others (None) shows no value: its help says how
        shown = [s.key if s.default is None else f"{s.key}={s.default}" for s in options]
        width = max(map(len, shown), default=0)
        for text, s in zip(shown, options):
            choices = f" [{' | '.join(map(str, s.choices))}]" if s.choices else ""
            print(f"  --layer {text:<{width}}  {s.meta.help}{choices}")
    return 0
