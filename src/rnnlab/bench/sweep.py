"""``rnnlab sweep``: the Cartesian product of ``--set KEY=V1,V2,...`` axes over one base model.

Keys: any TrainConfig field (``lr``, ``weight_decay``, ``batch_size``, ``seq_len``, ``optimizer``,
``warmup_steps``, ``grad_clip``, ...), a model field (``model``, ``dim``, ``depth``, ``mlp_ratio``)
or a mixer option as ``layer.NAME`` (``layer.heads=1,4,8``). With ``--target-params`` every point's
width is solved at its depth for that many parameters (so ``--set depth=6,12`` trades width for
depth at a fixed budget).

Each point is a normal run in ``OUT/<key>-<value>_...``; the sweep is run and reported by the
suite machinery (``rnnlab.bench.suite``), so an interrupted sweep resumes the same way.
"""

from __future__ import annotations

import copy
import itertools
import json
import re

from rnnlab.bench.suite import RunSpec, Suite
from rnnlab.models.params import parse_count

MODEL_AXES = ("model", "dim", "depth", "mlp_ratio")
FORBIDDEN = ("out", "resume", "data", "val_data", "device", "steps", "minutes", "tokens", "layer")


def parse_value(text: str):
    text = text.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set(item: str) -> tuple[str, list[str], list]:
    """``"lr=1e-4,3e-4"`` -> ``("lr", ["1e-4", "3e-4"], [0.0001, 0.0003])``."""
    key, sep, values = item.partition("=")
    key = key.strip().replace("-", "_") if not key.startswith("layer.") else key.strip()
    if not sep or not key:
        raise ValueError(f"--set {item!r} must look like KEY=V1,V2,... (e.g. lr=1e-4,3e-4)")
    raw = [v.strip() for v in values.split(",") if v.strip()]
    if not raw:
        raise ValueError(f"--set {item!r} lists no values")
    if len(set(raw)) != len(raw):
        raise ValueError(f"--set {item!r} repeats a value")
    return key, raw, [parse_value(v) for v in raw]


def _check_key(key: str) -> None:
    from rnnlab.train.config import FIELDS

    if key.startswith("layer."):
        if not key[6:]:
            raise ValueError("--set layer.NAME needs a mixer option name, e.g. layer.heads=1,4")
        return
    if key in FORBIDDEN:
        raise ValueError(f"--set cannot sweep {key!r} (use the --{key.replace('_', '-')} flag, or "
                         f"layer.NAME for mixer options)")
    known = set(FIELDS) | set(MODEL_AXES)
    if key not in known:
        raise ValueError(f"--set: unknown key {key!r}; use a TrainConfig field ({', '.join(sorted(known - set(FORBIDDEN)))}) "
                         f"or layer.NAME")


def _slug(key: str, raw: str) -> str:
    short = key[6:] if key.startswith("layer.") else key
    return re.sub(r"[^A-Za-z0-9._+-]", "", f"{short}-{raw}")


def build_sweep(model: str, depth: int | None, sets: list[str], *, dim: int | None = None,
                target_params: str | int | None = None, layer: dict | None = None,
                mlp_ratio: float | None = None, defaults: dict | None = None,
                name: str | None = None) -> Suite:
    """A Suite with one run per point of the product of the ``--set`` axes."""
    if not sets:
        raise ValueError("give at least one --set KEY=V1,V2,...")
    axes = []
    for item in sets:
        key, raw, vals = parse_set(item)
        _check_key(key)
        if any(key == a[0] for a in axes):
            raise ValueError(f"--set {key} given twice")
        axes.append((key, raw, vals))
    keys = [a[0] for a in axes]
    target = parse_count(target_params) if target_params is not None else None
    if target is not None and "dim" in keys:
        raise ValueError("--set dim conflicts with --target-params (the width is solved per point)")
    if depth is None and "depth" not in keys:
        raise ValueError("give --depth (or --set depth=...)")
    if target is None and dim is None and "dim" not in keys:
        raise ValueError("give --dim (or --target-params, or --set dim=...)")
    base = RunSpec(name="base", model=model, depth=depth, dim=dim, layer=dict(layer or {}),
                   mlp_ratio=mlp_ratio, target_params=target)
    runs = []
    for combo in itertools.product(*[list(zip(a[1], a[2])) for a in axes]):
        run = copy.deepcopy(base)
        point, parts = {}, []
        for key, (raw, val) in zip(keys, combo):
            point[key] = val
            parts.append(_slug(key, raw))
            if key.startswith("layer."):
                run.layer[key[6:]] = val
            elif key in MODEL_AXES:
                setattr(run, key, val)
            else:
                run.overrides[key] = val
        run.name = "_".join(parts)
        run.point = point
        runs.append(run)
    return Suite(name=name or f"sweep-{model}", runs=runs, defaults=dict(defaults or {}),
                 description=f"{model} sweep over " + ", ".join(f"{k} in {r}" for k, r, _ in axes),
                 sweep={"axes": {k: v for k, _, v in axes}})
