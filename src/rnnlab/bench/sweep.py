"""``rnnlab sweep``: the Cartesian product of ``--set KEY=V1,V2,...`` axes over one base model.

Keys: any config field a run may set on its own (``lr``, ``weight_decay``, ``batch_size``,
``optimizer``, ``grad_clip``, ...; a model field ``model``, ``dim``, ``depth``, ``mlp_ratio``, ...)
or a mixer option as ``layer.NAME`` (``layer.heads=1,4,8``). The fields one sweep shares (the
corpus, the budget, the device, held-out bytes: ``SUITE_KEYS``) and those of the run folder
(``RUNNER_KEYS``) are set by flag, not swept; both lists come from the config's declarations.
A swept key is not also set by its flag (``--lr`` beside ``--set lr=...``), nor swept twice: both
are refused, as one of the two values would be dropped. ``distributed`` is refused too: every point
trains in one process (``--gpus N`` runs N points at once, one GPU each), where it does nothing.
With ``--target-params`` every point's width is solved at its depth for that many parameters (so
``--set depth=6,12`` trades width for depth at a fixed budget).

Each point is a normal run in ``OUT/<key>-<value>_...``; the sweep is run and reported by the
suite machinery (``rnnlab.bench.suite``, ``rnnlab.bench.runner``), so an interrupted sweep
resumes the same way. A point an earlier sweep into OUT already named keeps that folder
(:func:`keep_earlier_names`), whatever the order of the axes or the spelling of its values.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import typing
from pathlib import Path

from rnnlab.bench.suite import SUITE_FILE, RunSpec, Suite, sweep_description
from rnnlab.models.config import ModelConfig
from rnnlab.models.params import parse_count
from rnnlab.options import flag_name, parse_value
from rnnlab.train.config import FIELDS, MODEL_KEYS, RUNNER_KEYS, SUITE_KEYS, comparable, stored_value
from rnnlab.train.rundir import read_json

MODEL_AXES = tuple(k for k in MODEL_KEYS if k != "layer")  # mixer options are swept as layer.NAME
FORBIDDEN = SUITE_KEYS + RUNNER_KEYS + ("layer",)
# a point is one process (in this one, or one rnnlab train per GPU under --gpus N), where --distributed does nothing
ONE_PROCESS = ("distributed",)


def parse_set(item: str) -> tuple[str, list[str], list]:
    """``"lr=1e-4,3e-4"`` -> ``("lr", ["1e-4", "3e-4"], [0.0001, 0.0003])`` (values as ``--layer``
    reads them, ``rnnlab.options.parse_value``: ``null`` is None, ``none`` a string). A comma inside
    brackets belongs to a list value: ``betas=[0.9,0.99],[0.9,0.95]`` is two values."""
    key, sep, values = item.partition("=")
    key = key.strip().replace("-", "_") if not key.startswith("layer.") else key.strip()
    if not sep or not key:
        raise ValueError(f"--set {item!r} must look like KEY=V1,V2,... (e.g. lr=1e-4,3e-4)")
    raw = [v.strip() for v in re.split(r",(?![^\[]*\])", values) if v.strip()]
    if not raw:
        raise ValueError(f"--set {item!r} lists no values")
    parsed = [parse_value(v) for v in raw]
    same = next(((a, b) for i, a in enumerate(raw) for j, b in enumerate(raw[:i]) if parsed[i] == parsed[j]), None)
    if same:  # 1e-3 and 0.001 too: two folders training the same point
        raise ValueError(f"--set {item!r} repeats a value ({same[1]} and {same[0]})" if same[0] != same[1]
                         else f"--set {item!r} repeats a value ({same[0]})")
    return key, raw, parsed


def _check_key(key: str) -> None:
    if key.startswith("layer."):
        if not key[6:]:
            raise ValueError("--set layer.NAME needs a mixer option name, e.g. layer.heads=1,4")
        return
    if key == "layer":
        raise ValueError("--set cannot sweep 'layer' whole: sweep one mixer option, layer.NAME (e.g. layer.heads=1,4)")
    if key in ("resume", "overwrite"):  # no flag of rnnlab sweep: its runner sets them per point
        raise ValueError(f"--set cannot sweep {key!r}: rnnlab sweep sets it per point (a partial point resumes, "
                         f"a complete one is skipped; to train a point afresh, delete its folder)")
    if key in ONE_PROCESS:
        raise ValueError(f"--set cannot sweep {key!r}: each point of a sweep trains in one process (--gpus N runs "
                         f"N points at once, one GPU each), where --{key} does nothing")
    if key in FORBIDDEN:  # the corpus, the budget, the scoring, where and how the runs are kept
        raise ValueError(f"--set cannot sweep {key!r}: every point of a sweep shares it, so that the points "
                         f"compare (set it once with --{key.replace('_', '-')})")
    if key not in FIELDS:
        raise ValueError(f"--set: unknown key {key!r}; use a config field "
                         f"({', '.join(sorted(set(FIELDS) - set(FORBIDDEN) - set(ONE_PROCESS)))}) or layer.NAME")


def _check_unset(key: str, model: dict, defaults: dict) -> None:
    """An axis is every point's value of its key: the base (the config flags) must not set it too,
    or one of the two would be dropped without a word (the axis replaced ``--lr``'s value)."""
    if key.startswith("layer."):
        given, flag = key[6:] in (model.get("layer") or {}), f"--layer {key[6:]}=..."
    else:
        value = (model if key in MODEL_AXES else defaults).get(key)
        given = value is not None
        flag = flag_name(key if value is not False else f"no_{key}")  # a bool flag as typed: --no-compile
    if given:
        raise ValueError(f"{flag} sets {key} for every point, and --set {key}=... sweeps it: "
                         f"give one of them, not both")


def _slug(key: str, raw: str) -> str:
    """``lr-1e-3``; a list value's items apart (``betas-0.9-0.99``)."""
    short = key[6:] if key.startswith("layer.") else key
    return re.sub(r"[^A-Za-z0-9._+-]", "", f"{short}-{raw.replace(',', '-')}")


def parse_axes(sets: list[str]) -> list[tuple[str, list[str], list]]:
    """The ``--set`` items as ``(key, raw texts, values)``, each key checked and given once."""
    if not sets:
        raise ValueError("give at least one --set KEY=V1,V2,...")
    axes = []
    for item in sets:
        key, raw, vals = parse_set(item)
        _check_key(key)
        if key in FIELDS and typing.get_origin(FIELDS[key][1].type) is tuple and not any(isinstance(v, list)
                                                                                          for v in vals):
            raise ValueError(f"--set {item!r} gives {key} single values, and each of its values is a list, in "
                             f"brackets: --set {key}=[{','.join(raw)}] is one")
        if any(key == a[0] for a in axes):
            raise ValueError(f"--set {key} given twice: list all its values in one --set {key}=V1,V2,...")
        axes.append((key, raw, vals))
    return axes


def build_sweep(model: dict, sets: list[str], *, target_params: str | int | None = None,
                defaults: dict | None = None, name: str | None = None) -> Suite:
    """A Suite with one run per point of the product of the ``--set`` axes over the base
    ``model`` (model fields by key: ``{"model": "e1", "depth": 6, "dim": 512, "layer": {...}}``);
    ``defaults`` sets other config fields for every point."""
    axes = parse_axes(sets)
    keys = [a[0] for a in axes]
    for key in keys:
        _check_unset(key, model, defaults or {})
    target = parse_count(target_params) if target_params is not None else None
    if target is not None and "dim" in keys:
        raise ValueError("--set dim conflicts with --target-params (the width is solved per point)")
    if target is not None and "dim" in model:
        raise ValueError("give --dim or --target-params, not both (the width is solved per point)")
    if "depth" not in model and "depth" not in keys:
        raise ValueError("give --depth (or --set depth=...)")
    if target is None and "dim" not in model and "dim" not in keys:
        raise ValueError("give --dim (or --target-params, or --set dim=...)")
    base = RunSpec(name="base", model={"layer": {}, **copy.deepcopy(model)}, target_params=target)
    runs = []
    for combo in itertools.product(*[list(zip(a[1], a[2])) for a in axes]):
        run = copy.deepcopy(base)
        run.point = {}
        for key, (raw, val) in zip(keys, combo):
            run.point[key] = val
            if key.startswith("layer."):
                run.model["layer"][key[6:]] = val
            elif key in MODEL_AXES:
                run.model[key] = val
            else:
                run.overrides[key] = val
        run.name = "_".join(_slug(key, raw) for key, (raw, _) in zip(keys, combo))
        runs.append(run)
    kind = model.get("model", ModelConfig().model)
    return Suite(name=name or f"sweep-{kind}", runs=runs, defaults=dict(defaults or {}),
                 description=sweep_description(kind, {k: r for k, r, _ in axes}),
                 sweep={"axes": {k: v for k, _, v in axes}})


def sweep_name(out: Path) -> str:
    """The name of the sweep in ``out``: ``sweep-FOLDER`` (``--out .`` or ``..`` too: the folder's
    own name), or the name of the sweep ``out`` already holds (a sweep folder moved or renamed since
    is continued as the sweep it is, its earlier commands kept)."""
    earlier = read_json(out / SUITE_FILE) or {}
    if earlier.get("sweep") is not None and isinstance(earlier.get("suite"), str):
        return earlier["suite"]
    return f"sweep-{Path(os.path.abspath(out)).name}"


def keep_earlier_names(suite: Suite, out: Path) -> Suite:
    """Each point named as an earlier sweep into ``out`` named the same point (``suite.json``'s
    runs and their values): a rerun with its ``--set`` axes in another order, or a value spelt
    otherwise (``lr=0.001`` for ``1e-3``, ``grad_clip=1`` for ``1.0``, ``null`` for ``0``), finds that point's folder
    (complete: skipped; stopped: resumed) instead of training the point again in a new one."""
    def key(point) -> str:  # 1 and 1.0 one value, and each as its field stores it (grad_clip 0 is null)
        return json.dumps(comparable({k: stored_value(k, v) for k, v in point.items()}), sort_keys=True, default=str)

    earlier = read_json(Path(out) / SUITE_FILE) or {}
    names = {key(r["point"]): r["name"] for r in earlier.get("runs") or []
             if isinstance(r, dict) and r.get("point") and r.get("name")}
    for run in suite.runs:
        run.name = names.get(key(run.point), run.name)
    return suite
