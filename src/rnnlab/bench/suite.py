"""Benchmark suites: a TOML file of shared settings plus a list of runs, each trained as a normal run.

Suite file layout (``src/rnnlab/bench/suites/<name>.toml``, or any path)::

    name = "tiny"
    description = "one line"
    notes = "..."                 # optional free text for readers of the file; rnnlab ignores it
    [defaults]                    # config fields (flat keys) shared by every run; a relative path
                                  # (data = "corpus.txt") is read from the current directory
    batch_size = 8
    steps = 40
    lr = 3e-3
    [[runs]]
    name = "e1"                   # folder name under the suite's out dir
    model = "e1"
    dim = 64                      # or: target_params = "50M" (dim solved at this depth, in steps of
                                  # multiple = N: default the model's, 64 for transformer, else 32;
                                  # beside dim, multiple is refused unless --params re-solves the width)
    depth = 2
    layer = { expansion = 2.5 }   # mixer options (optional)
    lr = 1e-3                     # any other config key overrides that field for this run
    [reference]                   # optional: published numbers, printed beside ours in report.md
    source = "..."
    protocol = { optimizer = "adamw", lr = 1e-4 }  # optional: the config fields the reference ran
                                  # under, when not [defaults]; a row whose own differ is left out
    [reference.runs]
    e1 = { params = 123, loss = 1.5, tok_per_s = 2e4, mem_gb = 8.1, time_s = 515 }

Model fields (``MODEL_KEYS``) belong in ``[[runs]]``; the fields the runner sets per run folder
(``RUNNER_KEYS``: out, resume, overwrite) in neither. Both lists come from the config's field
declarations.

Each planned run trains into ``OUT/<name>`` (or ``OUT/<name>-s<seed>`` with ``seeds``; a seed that
the run in ``OUT/<name>``, trained without ``seeds``, already has is that run, not trained again). A run
that is complete (``RunDir.status``, with the same budget) is skipped, unless its final evaluation
lacks what the command asks for (a new ``--extra-val-data`` file, another ``--eval-bytes``): then it
is resumed from its checkpoint, which trains no step and scores it again, or, without a checkpoint,
skipped and named as lacking it (``scores_lacking``); a run complete under a smaller budget (or one of
another kind) is extended: resumed from its checkpoint, it trains on to the new one (without a checkpoint,
refused: it is never trained afresh over); a partial run is resumed
from its checkpoint, so an interrupted suite picks up where it stopped (one stopped before its
first checkpoint starts over). ``OUT/suite.json`` records the resolved plan for ``rnnlab report``;
a suite run in parts into one folder (``--runs``, ``--seeds``) keeps every part's runs and commands;
another suite's (or a sweep's) folder is refused, its record kept.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shlex
import time
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from rnnlab.errors import amount, counted
from rnnlab.models.config import ModelConfig
from rnnlab.models.params import count_params, parse_count, solve_dim
from rnnlab.options import check, check_value, normalize, unknown_keys_hint
from rnnlab.train.config import (BUDGET_KEYS, FIELDS, MODEL_KEYS, OTHER_NAMES, RUNNER_KEYS, TrainConfig,
                                  apply_overrides, comparable, legacy_hint, resume_mismatch, shown_setting,
                                  training_settings)
from rnnlab.train.rundir import RunDir, read_json, write_json
from rnnlab.data import heldout_split
from rnnlab.train.runtime import command_argv, final_scores_lacking

SUITE_FILE = "suite.json"
# what an interrupted suite says (its interrupted run says how to continue that run alone)
# (rnnlab bench or rnnlab sweep: the same machinery runs both)
RESUME_HINT = "run the same command again to resume the suite and complete its report"
# the verb of a progress line of a run that trains, by its run_status ("training" for the others)
VERBS = {"partial": "resuming", "extend": "extending"}
ROW_KEYS = ("name", "target_params", "multiple")  # a suite row's own keys, beside the config's
TOP_KEYS = ("name", "description", "defaults", "runs", "reference", "notes")  # a suite file's top level


SWEEP_OVER = " sweep over "


def sweep_description(kind: str, axes: dict[str, list]) -> str:
    """A sweep's one line, ``e1 sweep over lr in ['1e-3', '3e-3']``: each axis with its values."""
    return kind + SWEEP_OVER + ", ".join(f"{k} in {v}" for k, v in axes.items())


def below_a_table(keys: list[str], table: str) -> str:
    """``keys`` (of a suite's top level, found in ``table``) said as TOML reads them: a key written
    after a table's heading belongs to that table."""
    return (f"{table} holds {keys}, key(s) of the suite's top level: in TOML a key written below {table} "
            f"belongs to it; write it above the file's first [table]")


@dataclass
class RunSpec:
    """One row of a suite: its model fields (``MODEL_KEYS``; ``dim`` unless ``target_params``)
    plus optional overrides of any other config field for this run."""

    name: str
    model: dict[str, Any]
    target_params: int | None = None  # solve dim at depth for this many parameters
    multiple: int | None = None  # width step for the solver (default: the model's)
    overrides: dict[str, Any] = field(default_factory=dict)
    point: dict[str, Any] | None = None  # sweep coordinates (set by rnnlab sweep)

    def model_config(self, dim: int | None = None) -> ModelConfig:
        fields = {**self.model, **({"dim": dim} if dim is not None else {})}
        return ModelConfig(**copy.deepcopy(fields))


@dataclass
class Suite:
    name: str
    runs: list[RunSpec]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    reference: dict[str, Any] | None = None
    path: str | None = None
    sweep: dict[str, Any] | None = None  # set by rnnlab sweep: {"axes": {key: [values]}}

    @property
    def where(self) -> str:
        """How an error names the suite (``suite_where``), or the sweep (its name, ``sweep-FOLDER``)."""
        return self.name if self.sweep else suite_where(self.name, self.path)

    @property
    def member(self) -> str:
        """What an error calls one of its runs: a sweep's are its points."""
        return "point" if self.sweep else "run"


@dataclass
class PlannedRun:
    """A run ready to train: its group name (the suite row), seed, folder and full config."""

    name: str
    seed: int | None  # the --seeds value, None when the suite was not repeated over seeds
    dir: Path
    cfg: Any  # TrainConfig
    params: int
    target_params: int | None = None
    point: dict[str, Any] | None = None  # sweep coordinates

    @property
    def label(self) -> str:
        return self.dir.name

    @property
    def rundir(self) -> RunDir:
        return RunDir(self.dir)


# ------------------------------------------------------------------------------------------ load
def suites_dir():
    return resources.files("rnnlab.bench") / "suites"


def list_suites() -> list[Suite]:
    out = []
    for entry in sorted(suites_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            out.append(parse_suite(tomllib.loads(entry.read_text()), entry.name[:-5], str(entry)))
    return out


def shown_path(path: str | Path) -> str:
    """``path`` relative to the current directory when under it, else as given: short in a one-line error."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.getcwd()))
    except (ValueError, OSError):  # outside it, or the current directory is gone
        return str(path)


def suite_where(name: Any, path: str | None) -> str:
    """How an error from a suite's content names it: ``suite NAME (PATH)``, its file's path
    (``shown_path``, a shipped suite's too) saying which file to fix; a sweep has no file."""
    return f"suite {name}" + (f" ({shown_path(path)})" if path else "")


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (``tiny``), or a suite file by path (a ``.toml`` name or an existing
    file: a folder named like a suite, such as a run's ``--out tiny``, is not one)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"suite file not found: {p}")
        text, default_name, path = p.read_bytes(), p.stem, str(p)
    else:
        entry = suites_dir() / f"{name_or_path}.toml"
        if not entry.is_file():
            names = ", ".join(s.name for s in list_suites())
            raise ValueError(f"unknown suite {str(name_or_path)!r}; shipped suites: {names} "
                             f"(or give a path to a .toml file)")
        text, default_name, path = entry.read_bytes(), str(name_or_path), str(entry)
    try:
        data = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse suite file {shown_path(path)}: {e}") from None
    return parse_suite(data, default_name, path)


def parse_suite(data: dict[str, Any], default_name: str = "suite", path: str | None = None) -> Suite:
    where = suite_where(data.get("name", default_name), path)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown top-level key(s) {unknown}; known: name, description, "
                         f"defaults, runs, reference, notes")
    check_shape(data, where)
    defaults = {k.replace("-", "_"): v for k, v in data.get("defaults", {}).items()}  # mlp-ratio is mlp_ratio
    check_defaults(defaults, where)
    rows = data.get("runs")
    if not rows:
        raise ValueError(f"{where}: needs at least one [[runs]] entry")
    runs, seen = [], set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{where}, run {i + 1}: not a table (write each run as a [[runs]] entry)")
        run = parse_run(row, f"{where}, run {run_name(row) or i + 1}")  # by its name, as --plan shows it
        if run.name in seen:
            raise ValueError(f"{where}: run name {run.name!r} appears twice")
        seen.add(run.name)
        runs.append(run)
    name = folder_name(data.get("name", default_name), "suite name", where)  # runs/bench/<name> by default
    return Suite(name=name, runs=runs, defaults=defaults,
                 description=str(data.get("description", "")), reference=data.get("reference"), path=path)


def check_shape(data: dict[str, Any], where: str) -> None:
    """The suite file's tables are tables: ``defaults = 3`` or ``runs = 5`` is refused as one line,
    and a malformed ``[reference]`` when the suite loads, not by the report after every run trained."""
    for key, kind, what in (("defaults", dict, "a [defaults] table"), ("runs", list, "a list of [[runs]] tables"),
                            ("reference", dict, "a [reference] table")):
        if key in data and not isinstance(data[key], kind):
            raise ValueError(f"{where}: {key} must be {what}, got {data[key]!r}")
    reference = data.get("reference") or {}
    if not isinstance(reference.get("protocol", {}), dict):
        raise ValueError(f"{where}: reference.protocol must be a table of config fields, got {reference['protocol']!r}")
    runs = reference.get("runs", {})
    if not isinstance(runs, dict):
        raise ValueError(f"{where}: reference.runs must be a table of runs, got {runs!r}")
    for name, numbers in runs.items():
        if not (isinstance(numbers, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in numbers.values())):
            raise ValueError(f"{where}: reference.runs.{name} must be a table of numbers (params, loss, "
                             f"tok_per_s, mem_gb, time_s), got {numbers!r}")


def check_defaults(defaults: dict[str, Any], where: str) -> None:
    """``[defaults]``'s keys, checked when the suite loads and named as its own: a typo there
    (``stps``) is one line listing the keys ``[defaults]`` takes, not an error of the suite's first
    run whose list of known keys holds the model's and the runner's fields, which it refuses. Each
    value is checked against its field's declaration too (``steps = 10.5``), named as [defaults]'s."""
    top = sorted(k for k in defaults if k in TOP_KEYS)  # name = "x" or runs = [] written below [defaults]
    if top:
        raise ValueError(f"{where}: {below_a_table(top, '[defaults]')}")
    unknown = sorted(k for k in defaults if k not in (*ROW_KEYS, *FIELDS))  # a misspelt key first, as parse_run
    if unknown:
        known = sorted(set(FIELDS) - set(MODEL_KEYS) - set(RUNNER_KEYS))
        hint = unknown_keys_hint(unknown, known, cutoff=0.75, aliases=OTHER_NAMES)  # as a config file's typo
        raise ValueError(f"{where}: unknown [defaults] key(s) {unknown}{hint}")
    bad = sorted(set(defaults) & set(ROW_KEYS + MODEL_KEYS + RUNNER_KEYS))
    if bad:
        raise ValueError(f"{where}: [defaults] must not set {bad} (put model fields in [[runs]])")
    for key, value in defaults.items():  # a bad value named as [defaults]'s, not as an error of the first run
        spec = FIELDS[key][1]
        try:
            check_value(key, spec.type, normalize(spec, value), spec.choices, spec.meta.bounds)
        except ValueError as e:
            raise ValueError(f"{where}: [defaults] {e}") from None


LOGS = "logs"  # OUT/logs/: each --gpus N run's log and config, beside the run folders


def folder_name(value: Any, what: str, where: str) -> str:
    """``value`` as the name of a folder inside the suite's (or ``runs/bench/``): a name that climbs
    out of it (``../x``), reaches below it (``a/b``) or hides (``.x``) is refused; a number must be
    written as text, so a typo'd table (``name = 5``) is not a folder ``5``."""
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or value.startswith("."):
        raise ValueError(f"{where}: {what} {value!r} must be a plain folder name (text)")
    return value


def run_name(row: dict[str, Any]) -> Any:
    """A ``[[runs]]`` row's name: its ``name``, else ``<model>-d<depth>``; None where it has neither."""
    if row.get("name"):
        return row["name"]
    return f"{row['model']}-d{row['depth']}" if "model" in row and "depth" in row else None


def parse_run(row: dict[str, Any], where: str) -> RunSpec:
    row = dict(row)
    # unknown keys first: a misspelt key (dpth) is the usual cause of a missing one (depth)
    unknown = sorted(k for k in row if k.replace("-", "_") not in (*ROW_KEYS, *FIELDS))
    top = [k for k in unknown if k in TOP_KEYS]  # description = "..." written below a [[runs]] entry
    if top:
        raise ValueError(f"{where}: {below_a_table(top, '[[runs]]')}")
    if unknown:
        known = sorted(set(ROW_KEYS) | set(FIELDS) - set(RUNNER_KEYS))
        raise ValueError(f"{where}: unknown key(s) {unknown}"
                         f"{unknown_keys_hint(unknown, known, cutoff=0.75, aliases=OTHER_NAMES)}")
    row = {k.replace("-", "_"): v for k, v in row.items()}  # mlp-ratio is the model's mlp_ratio
    for key in ("model", "depth"):
        if key not in row:
            raise ValueError(f"{where}: needs {key!r}")
    if ("dim" in row) == ("target_params" in row):  # both: the solved width would replace dim unsaid
        raise ValueError(f"{where}: needs 'dim' or 'target_params'" + (", not both" if "dim" in row else ""))
    name = folder_name(run_name(row), "run name", where)
    row.pop("name", None)
    if name == LOGS:
        raise ValueError(f"{where}: run name {LOGS!r} is the suite folder's logs/ (--gpus N writes there): "
                         "name the run otherwise")
    target = row.pop("target_params", None)
    multiple = row.pop("multiple", None)
    model = {k: row.pop(k) for k in MODEL_KEYS if k in row}
    bad = sorted(set(row) & set(RUNNER_KEYS))
    if bad:
        raise ValueError(f"{where}: must not set {bad}")
    try:
        target = parse_count(target) if target is not None else None
    except ValueError as e:
        raise ValueError(f"{where}: target_params: {e}") from None
    return RunSpec(name=name, model=model, target_params=target, multiple=multiple, overrides=row)


# ------------------------------------------------------------------------------------------ plan
_SOLVE_CACHE: dict[str, tuple[int, int]] = {}


def resolve_dim(run: RunSpec, target: int | None, device: str | None = None) -> tuple[int, int]:
    """``(dim, params)`` for a run: its explicit dim, or the width solved for ``target``. Counted
    with the layers the trainer builds on ``device`` (the run's ``--device``; None: auto,
    ``ModelConfig.on_device``): a ``--device cpu`` run on a GPU machine takes options only the
    official Mamba2 / Gated DeltaNet kernels refuse, as ``rnnlab train`` does. The row's fields are
    checked first: a suite's ``layer = 3`` is one line, not a traceback from reading its options."""
    cfg = run.model_config()
    check(cfg)
    name = device or "auto"
    on_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if not on_cuda:
        cfg = cfg.on_device(torch.device("cpu"))  # same parameters; device names are checked later
    key = json.dumps([cfg.to_dict(), target, run.multiple], sort_keys=True, default=str)
    if key not in _SOLVE_CACHE:  # a suite's rows often share one model (seeds, learning rates): counted once
        _SOLVE_CACHE[key] = (cfg.dim, count_params(cfg)) if target is None else solve_dim(cfg, target, run.multiple)
    return _SOLVE_CACHE[key]


def parse_seeds(text: str | list[int] | None) -> list[int] | None:
    if text is None or isinstance(text, list):
        return text
    try:
        seeds = [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise ValueError(f"--seeds must be a comma-separated list of integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds must list distinct non-negative integers, got {text!r}")
    return seeds


def plan_suite(suite: Suite, out: str | Path, *, params: str | int | None = None,
               seeds: str | list[int] | None = None, runs: str | list[str] | None = None,
               **overrides: Any) -> list[PlannedRun]:
    """Every run of the suite as a TrainConfig, with the scaling options applied: ``params``
    re-solves each run's width at its depth; ``seeds`` repeats each run per seed; ``runs`` keeps
    only the named runs; ``overrides`` (config fields by key, e.g. ``steps=500``,
    ``device="cpu"``; None = not given) set those fields for every run, last."""
    budgets = [k for k in BUDGET_KEYS if overrides.get(k) is not None]
    if len(budgets) > 1:
        raise ValueError("give at most one of --steps, --minutes, --tokens")
    target_all = parse_count(params) if params is not None else None
    seed_list = parse_seeds(seeds)
    if seed_list and suite.sweep and "seed" in suite.sweep.get("axes", {}):  # every point would train each --seeds seed
        raise ValueError("--seeds sets every point's seed, which would replace the swept seeds: "
                         "give --set seed=... or --seeds, not both")
    if seed_list and suite.sweep and suite.defaults.get("seed") is not None:  # a sweep's defaults are its flags
        raise ValueError("--seeds sets every point's seed, which would replace --seed's: give --seed or --seeds, "
                         "not both")
    out = Path(out)
    if any(p.is_file() for p in (out, *out.parents)):  # refused by --plan too, not first by mkdir
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out))  # cli.error_line says which
    kind = "sweep" if suite.sweep else "suite"
    if RunDir(out).holds_run() and not (out / SUITE_FILE).exists():  # its runs would nest inside another run
        raise ValueError(f"--out {out} is a run folder (it holds a run), not a folder of runs: give the "
                         f"{kind} a folder of its own (another --out)")
    held = read_json(out / SUITE_FILE) or {}
    if held.get("suite") not in (None, suite.name):  # its record (commands, runs) would be replaced by this one's
        theirs = "a sweep's" if held.get("sweep") is not None else f"suite {held['suite']}'s"
        ours = "this sweep's" if suite.sweep else f"suite {suite.name}'s"
        raise ValueError(f"--out {out} is {theirs} folder (its {SUITE_FILE}), not {ours}: give the {kind} a "
                         f"folder of its own (another --out)")
    selected = suite.runs
    if runs is not None:  # --runs "" names no run: refused below, not taken as every run
        names = [n.strip() for n in runs.split(",")] if isinstance(runs, str) else list(runs)  # "e1, mingru" too
        unknown = sorted(set(names) - {r.name for r in suite.runs})
        if unknown:
            raise ValueError(f"{'sweep' if suite.sweep else 'suite'} {suite.name} has no {suite.member}(s) {unknown}; "
                             f"its {suite.member}s: {[r.name for r in suite.runs]}")
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:  # trained once all the same: not the repeat it may have been meant as
            raise ValueError(f"--runs names {twice} twice: each run trains once, in its own folder; to repeat a "
                             f"run, give --seeds S1,S2,.. (one folder NAME-sSEED per seed)")
        selected = [r for r in suite.runs if r.name in names]
    own_seed = [f"{r.name} (seed = {r.overrides['seed']})" for r in selected if r.overrides.get("seed") is not None]
    if seed_list and own_seed:  # e.g. e88-recipe-400m's NAME-seed43 rows would train each --seeds seed instead
        raise ValueError(f"{suite.where}: --seeds would replace the seed these runs set: {', '.join(own_seed)}; "
                         "leave them out with --runs, or give no --seeds")
    plan = []
    for run in selected:
        target = target_all if target_all is not None else run.target_params
        try:
            if target is None and run.multiple is not None:  # as rnnlab params refuses --multiple without --target
                raise ValueError(f"multiple ({run.multiple}) steps only a width solved for a parameter count "
                                 f"(target_params, or --params), and this run sets dim: drop multiple, or give "
                                 f"target_params instead of dim")
            device = next((d for d in (overrides.get("device"), run.overrides.get("device"),
                                       suite.defaults.get("device")) if d is not None), None)
            dim, n_params = resolve_dim(run, target, device)
            cfg = TrainConfig(model=run.model_config(dim))
            apply_overrides(cfg, suite.defaults, source=f"suite {suite.name} [defaults]")
            apply_overrides(cfg, run.overrides, source=f"suite {suite.name} run {run.name}")
            apply_overrides(cfg, overrides, source="flag")
        except ValueError as e:
            raise ValueError(f"{suite.where}, {suite.member} {run.name}: {e}") from None
        for seed in (seed_list or [None]):
            c = copy.deepcopy(cfg)
            if seed is not None:
                c.run.seed = seed
            d = out / (run.name if seed is None else f"{run.name}-s{seed}")
            c.run.out = str(d)
            try:
                c = c.resolve()
            except (ValueError, FileNotFoundError) as e:
                hint = ""
                if c.optim.optimizer == "adamw" and c.budget.minutes is not None:
                    hint = (f" (suite {suite.name} uses AdamW with a cosine schedule; time-matched "
                            f"--minutes needs schedulefree-adamw)")
                elif isinstance(e, FileNotFoundError):
                    hint = relative_path_hint(suite, run, overrides, str(e))
                raise type(e)(f"{suite.where}, {suite.member} {d.name}: {e}{hint}") from None
            pr = PlannedRun(name=run.name, seed=seed, dir=d, cfg=c, params=n_params, target_params=target,
                            point=run.point)
            plan.append(_trained_without_seeds(pr) or pr)
    _refuse_runs_alike(suite, plan)
    return plan


# why two values of a key can train the same run
_SAME_TRAINING = {"grad_clip": "0 and null both mean no clipping", "lr_schedule": "Schedule-Free ignores lr_schedule"}


def _refuse_runs_alike(suite: Suite, plan: list[PlannedRun]) -> None:
    """Two values of a sweep's axis that train the same run at every point (``training_settings``
    equal), as ``--set grad_clip=0,null`` would, refused in one line: folders that train one run
    twice. Values alike at some points only (``lr_schedule`` crossed with ``optimizer``: alike under
    Schedule-Free, not under AdamW) are a sweep's to keep. (A suite may repeat a run on purpose:
    e88-recipe-400m's ``-rerun`` row.)"""
    if not suite.sweep:
        return

    def where(pr: PlannedRun, skip: str = "") -> str:  # a run's point (less one axis) and seed
        return json.dumps([comparable({k: v for k, v in pr.point.items() if k != skip}), pr.seed], sort_keys=True,
                          default=str)

    trains = {id(pr): json.dumps(comparable(training_settings(pr.cfg)), sort_keys=True, default=str) for pr in plan}
    for axis, values in suite.sweep["axes"].items():
        for i, a in enumerate(values):
            for b in values[:i]:
                runs = {}  # each point with the axis at b or a, by the rest of its point and its seed
                for pr in plan:
                    value = comparable(pr.point.get(axis))
                    if value in (comparable(a), comparable(b)):
                        runs.setdefault(where(pr, axis), {})[value == comparable(a)] = pr
                pairs = [(p[False], p[True]) for p in runs.values() if len(p) == 2]
                if pairs and all(trains[id(x)] == trains[id(y)] for x, y in pairs):
                    x, y = pairs[0]
                    why = f" ({_SAME_TRAINING[axis]})" if axis in _SAME_TRAINING else ""
                    every = f", as would every pair apart in {axis} alone" if len(suite.sweep["axes"]) > 1 else ""
                    raise ValueError(f"--set points {x.name} and {y.name} would train the same run{why}{every}: drop "
                                     f"one {axis} value")


def _trained_without_seeds(pr: PlannedRun) -> PlannedRun | None:
    """``pr`` (a ``--seeds`` run, ``NAME-sSEED``) in the folder ``NAME``, where the suite run without
    ``--seeds`` trained the same run with this seed (its config.json's) and it can go on (no
    ``run_conflict``): that run is this seed's, not one to train again beside it. None when
    NAME-sSEED already holds a run, or NAME holds none of this seed that fits the plan."""
    if pr.seed is None or pr.rundir.holds_run():
        return None
    cfg = copy.deepcopy(pr.cfg)
    cfg.run.out = str(pr.dir.parent / pr.name)
    twin = replace(pr, dir=pr.dir.parent / pr.name, cfg=cfg)
    if (twin.rundir.saved_config() or {}).get("seed") != pr.seed or run_conflict(twin) is not None:
        return None
    return twin


def relative_path_hint(suite: Suite, run: RunSpec, flags: dict[str, Any], error: str) -> str:
    """For ``error``, a data file not found: where a relative path that the suite file gives (not a
    flag) was looked for, the current directory, not the suite file's folder, and whether it is there;
    "" for any other error."""
    for key in ("data", "val_data", "extra_val_data"):
        path = run.overrides.get(key, suite.defaults.get(key))
        if (flags.get(key) is None and suite.path and isinstance(path, str) and not Path(path).is_absolute()
                and error == f"{key} file not found: {path}"):
            beside = Path(suite.path).parent / path
            there = f"; {shown_path(beside)} is there" if beside.exists() else ""
            return (f" (a suite file's relative paths are read from the current directory, {os.getcwd()}, not from "
                    f"the suite file's folder{there})")
    return ""


# ------------------------------------------------------------------------------------------ run
def _budget(cfg) -> dict[str, Any]:
    kind, value = cfg.budget.chosen()
    return {kind: value}


def run_conflict(pr: PlannedRun) -> str | None:
    """Why the folder's existing run cannot be reused for this planned run (None if it can)."""
    saved = pr.rundir.saved_config()
    if saved is None:
        return None
    diff = resume_mismatch(saved, pr.cfg)
    if diff is None:
        return _past_budget(pr) or _finished_without_checkpoint(pr)
    key, old, new = diff
    return (f"{pr.dir} holds a run with {key} = {shown_setting(key, old)}, but the suite now asks for "
            f"{shown_setting(key, new)}{legacy_hint(key)}")


def _past_budget(pr: PlannedRun) -> str | None:
    """Why a run cannot serve a smaller budget (``bench tiny``, then ``bench tiny --steps 50`` into
    the same folder): complete past it, or stopped with its newest checkpoint past it (the one
    ``--resume`` continues from, unless it is damaged); resuming it would be refused, by
    ``RunDir.past_budget``'s rule as ``rnnlab train --resume`` refuses it. None otherwise."""
    summary = pr.rundir.summary() or {}
    if summary.get("complete") and isinstance(summary.get("steps"), int):
        step, held = summary["steps"], "complete"
    else:
        newest = next((c for c in pr.rundir.checkpointer().checkpoints() if c.step is not None), None)
        if newest is None:
            return None
        step, held = newest.step, "saved"
    past = pr.rundir.past_budget(step, pr.cfg)
    if past is None:
        return None
    return f"{pr.dir} holds a run {held} at step {step:,}{past}: a suite extends a run, it does not shorten one"


def _finished_without_checkpoint(pr: PlannedRun) -> str | None:
    """Why a run complete under another budget, with no checkpoint to train on from (a slim copy kept in
    results/, ``benchmarks/suite_carry.sh``), cannot serve this one: it could only be trained afresh,
    over a finished run's record. None otherwise."""
    summary = pr.rundir.summary() or {}
    saved = summary.get("budget")
    if (not summary.get("complete") or saved is None or _same_budget(saved, _budget(pr.cfg))
            or pr.rundir.has_checkpoint()):
        return None
    return (f"{pr.dir} holds a run {_completed(summary)} without a checkpoint, so it cannot be extended to "
            f"{budget_label(pr)}: a suite extends a run, it does not train one afresh over a finished one")


def _completed(summary: dict[str, Any]) -> str:
    """``complete at step 3 (steps=3)``: where a complete run's summary says it ended, and its budget."""
    steps = summary.get("steps")
    was = ", ".join(f"{k}={amount(v)}" for k, v in (summary.get("budget") or {}).items())
    return f"complete{f' at step {steps:,}' if isinstance(steps, int) else ''} ({was})"


def budget_label(pr: PlannedRun) -> str:
    """The planned run's budget as ``--plan`` and the bench's lines write it, ``steps=6``."""
    kind, value = pr.cfg.budget.chosen()
    return f"{kind}={amount(value)}"


def run_status(pr: PlannedRun) -> str:
    """``"complete"`` (skip), ``"rescore"`` (complete, but its final evaluation lacks what the plan
    asks for, ``scores_lacking``: resumed from its checkpoint, which trains no step and scores it
    again), ``"stale"`` (the same, without a checkpoint to re-score from: skipped, and said),
    ``"extend"`` (complete under a smaller budget, or one of another kind: resumed from its
    checkpoint, it trains on to this one), ``"partial"`` (resume from its checkpoint), ``"restart"``
    (the folder holds a run stopped before its first checkpoint: nothing to resume, train it afresh),
    ``"new"``, or ``"conflict"`` (the folder holds a run of a different config, one complete or saved
    past this budget, or one complete under another budget without a checkpoint to extend it from)."""
    return status_and_conflict(pr)[0]


def status_and_conflict(pr: PlannedRun) -> tuple[str, str | None]:
    """``(run_status(pr), run_conflict(pr))`` from one read of the folder's config.json (``--plan``
    prints both)."""
    why = run_conflict(pr)
    return ("conflict" if why is not None else _reusable_status(pr)), why


def _reusable_status(pr: PlannedRun) -> str:
    """``run_status`` of a folder without a conflicting run."""
    status = pr.rundir.status()
    if status == "empty":
        return "new"
    if status == "complete":
        saved = (pr.rundir.summary() or {}).get("budget")
        if saved is None or _same_budget(saved, _budget(pr.cfg)):
            if not scores_lacking(pr):
                return "complete"
            return "rescore" if pr.rundir.has_checkpoint() else "stale"
        return "extend"  # complete under another budget, with a checkpoint (run_conflict): trained on to this one
    return "partial" if pr.rundir.has_checkpoint() else "restart"


def scores_lacking(pr: PlannedRun) -> list[str]:
    """What the final evaluation of the run in ``pr``'s folder (its summary.json) lacks of what the
    planned run asks for (``final_scores_lacking``: an ``--extra-val-data`` file it did not score,
    held-out bytes other than ``--eval-bytes`` scores), each as a phrase; [] when it covers them.
    The held-out split's size is env.json's (the data a resume must find again), else the split's."""
    summary = pr.rundir.summary() or {}
    split_bytes = ((pr.rundir.env() or {}).get("corpus") or {}).get("heldout_bytes")
    if split_bytes is None and summary.get("val_bytes") is not None:
        try:
            d = pr.cfg.data
            split_bytes = len(heldout_split(d.path, d.val_path, d.val_fraction))
        except (OSError, ValueError):  # the data is not on this machine (a --plan elsewhere): not checked
            split_bytes = None
    extra = summary.get("extra_val") or {}
    return [text for _, text in final_scores_lacking(summary.get("val_bytes"), extra.get("data"), pr.cfg, split_bytes,
                                                     extra.get("bytes"))]


def outcome_line(tag: str, summary: dict[str, Any]) -> str:
    """The log line of a run that trained (or was re-scored) to the end: ``[i/n] label: loss L, val bpb
    B`` (and ``, FILE bpb E`` for its ``--extra-val-data`` file)."""
    loss, bpb, extra = summary.get("loss"), summary.get("val_bpb"), summary.get("extra_val") or {}
    if loss is None:
        return f"{tag}: done"
    return (f"{tag}: loss {loss:.4f}" + (f", val bpb {bpb:.4f}" if bpb is not None else "")
            + (f", {Path(extra['data']).name} bpb {extra['val_bpb']:.4f}" if extra.get("val_bpb") is not None else ""))


def new_result() -> dict[str, Any]:
    """``run_plan``'s result before any run."""
    return {"trained": [], "rescored": [], "skipped": [], "stale": {}, "failed": {}, "stopped": False}


def skip_line(tag: str, pr: PlannedRun, status: str, result: dict[str, Any]) -> str | None:
    """For a run that is not trained (``status`` complete or stale): record it in ``result`` and
    return its log line; None for a run to train or re-score."""
    if status not in ("complete", "stale"):
        return None
    result["skipped"].append(pr.label)
    if status == "complete":
        return f"{tag}: complete, skipped"
    result["stale"][pr.label] = lacking = scores_lacking(pr)
    return f"{tag}: complete, skipped; its final evaluation lacks what this command asks ({'; '.join(lacking)}) " \
           "and the run has no checkpoint to score it again from"


def budget_change(pr: PlannedRun, status: str) -> str | None:
    """For a run complete under another budget (``status`` ``"extend"``), what its folder holds and what
    training does with it: ``complete at step 3 (steps=3); trained on from its checkpoint to steps=6``
    (it is no partial run); None for any other run."""
    summary = pr.rundir.summary() or {}
    if status != "extend" or not summary.get("complete"):
        return None
    return f"{_completed(summary)}; trained on from its checkpoint to {budget_label(pr)}"


def rescore_line(tag: str, pr: PlannedRun) -> str:
    """The log line of a complete run about to be re-scored from its checkpoint."""
    return (f"{tag}: complete; scoring its final evaluation again from its checkpoint, no training step "
            f"({'; '.join(scores_lacking(pr))})")


def stale_line(stale: dict[str, list[str]], command: str = "bench") -> str | None:
    """One line, under ``rnnlab <command>``'s name, naming the complete runs whose scores lack what
    the command asked for and that have no checkpoint to re-score from (``result["stale"]``); None
    when there are none."""
    if not stale:
        return None
    runs = ", ".join(f"{label} ({'; '.join(lacking)})" for label, lacking in stale.items())
    return (f"rnnlab {command}: {counted(len(stale), 'complete run')} keep{'s' if len(stale) == 1 else ''} final "
            "scores that do not cover this command, "
            f"having no checkpoint to score them again from: {runs}; the report marks the difference (re-score "
            "them where their checkpoints are, or delete their folders to train them again)")


def train_config(pr: PlannedRun, status: str):
    """The planned run's config for its folder's ``status``: ``resume`` a partial run (or one to
    extend or re-score), ``overwrite`` one to restart."""
    cfg = copy.deepcopy(pr.cfg)
    cfg.run.resume = status in ("partial", "extend", "rescore")
    cfg.run.overwrite = status == "restart"
    return cfg


def _same_budget(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all(float(a[k]) == float(b[k]) for k in a)


def suite_ref(path: str) -> str:
    """A shipped suite by its package path (no machine-specific prefix); any other file as given."""
    p = Path(path)
    shipped = (Path(__file__).parent / "suites").resolve()
    return f"rnnlab/bench/suites/{p.name}" if p.resolve().parent == shipped else str(p)


def write_plan(suite: Suite, plan: list[PlannedRun], out: Path, command: str | None,
               options: dict[str, Any]) -> None:
    """Write ``OUT/suite.json``: the suite, its reference, the planned runs and the command. A suite
    continued in the same folder by later commands (``--runs a,b``, then ``--runs c,d``, or more
    ``--seeds``) keeps the earlier commands and runs, with the GPU each complete run used, so the
    report covers every run folder; runs stay in the suite's order. A sweep's axes are those of the
    points listed (a sweep extended by ``--set lr=...`` with new values lists the earlier ones too)."""
    out.mkdir(parents=True, exist_ok=True)
    own = {spec.name: spec.target_params for spec in suite.runs}  # the row's own target (None: it sets dim)
    runs = [{"name": p.name, "seed": p.seed, "dir": p.dir.name, "params": p.params,
             "target_params": p.target_params, "suite_target_params": own.get(p.name), "point": p.point,
             "model": p.cfg.model.to_dict()} for p in plan]
    calls = [{"command": command, "options": {k: v for k, v in options.items() if v is not None},
              "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    old = read_json(out / SUITE_FILE) or {}
    if old.get("suite") == suite.name:
        prior = {r["dir"]: r for r in old.get("runs", [])}
        planned = {p.dir.name for p in plan}
        for r, p in zip(runs, plan):  # a skipped or re-scored run keeps the GPU it trained on
            if "gpu" in prior.get(r["dir"], {}) and run_status(p) in ("complete", "rescore", "stale"):
                r["gpu"] = prior[r["dir"]]["gpu"]
        runs += [r for d, r in prior.items() if d not in planned and RunDir(out / d).holds_run()]
        earlier = invocations(old)
        if earlier and {k: earlier[-1].get(k) for k in ("command", "options")} == {
                k: calls[0][k] for k in ("command", "options")}:
            earlier = earlier[:-1]  # the same command again (a resume): listed once, with its latest date
        calls = earlier + calls
    order = {spec.name: i for i, spec in enumerate(suite.runs)}
    runs.sort(key=lambda r: (order.get(r["name"], len(order)), -1 if r["seed"] is None else r["seed"]))
    sweep, description = suite.sweep, suite.description
    if sweep:  # the axes of the points listed: an extended sweep's earlier points too, only those run with --runs
        axes: dict[str, list] = {k: [] for k in sweep.get("axes", {})}
        for r in runs:
            for k, v in (r.get("point") or {}).items():
                if v not in axes.setdefault(k, []):
                    axes[k].append(v)
        if axes != sweep.get("axes"):  # "e1 sweep over lr in [...]" names the values listed, not this command's
            description = sweep_description(description.partition(SWEEP_OVER)[0], axes)
        sweep = {**sweep, "axes": axes}
    write_json(out / SUITE_FILE, {
        "suite": suite.name, "description": description,
        "path": suite_ref(suite.path) if suite.path else suite.path,
        "invocations": calls,
        "reference": suite.reference, "sweep": sweep,
        "defaults": suite.defaults,  # the suite's protocol as shipped (what its reference ran)
        "runs": runs,
    })


def invocations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The commands that wrote a ``suite.json``, oldest first, each ``{"command", "options",
    "written"}`` (a suite.json from before continued suites kept them holds one, at its top level)."""
    if "invocations" in doc:
        return doc["invocations"]
    return [{k: doc.get(k) for k in ("command", "options", "written")}] if {"command", "options"} & set(doc) else []


def command_line() -> str:
    return shlex.join(command_argv())

